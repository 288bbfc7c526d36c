"""asm.flat_source assembles with plain keystone, and every label offset is right."""

from __future__ import annotations

import re

import capstone
import keystone
import pytest

import asm
from emu.nt.calls import HANDLERS
from emu.win.prototypes import ALLOCATOR_PROTOTYPES

ARCHS = ("x86", "x64")


def disasm(arch: str, code: bytes, address: int) -> list[capstone.CsInsn]:
    md = capstone.Cs(
        capstone.CS_ARCH_X86, capstone.CS_MODE_32 if arch == "x86" else capstone.CS_MODE_64
    )
    return list(md.disasm(code, address))


@pytest.mark.parametrize("arch", ARCHS)
def test_plain_keystone_assembles_flat_source(arch: str) -> None:
    # no sym_resolver, no syntax option: both switch keystone to radix 16
    ks = keystone.Ks(
        keystone.KS_ARCH_X86, keystone.KS_MODE_32 if arch == "x86" else keystone.KS_MODE_64
    )
    code, count = ks.asm(asm.flat_source(arch), 0x10000, as_bytes=True)
    assert code and count > 1000
    assembled = asm.assemble(arch, 0x10000)
    assert assembled.code == code


@pytest.mark.parametrize("arch", ARCHS)
def test_source_is_keystone_friendly(arch: str) -> None:
    src = asm.flat_source(arch)
    assert not re.search(r"\.L\w", src), "assembler-local .L labels left"
    labels = re.findall(r"(?m)^(\S+):", src)
    assert not [name for name in labels if "@" in name or name.startswith("_")]
    assert len(labels) == len(set(labels))
    for export in ALLOCATOR_PROTOTYPES:
        assert f"\n{export}:\n" in src
    assert not re.search(r"\b(memset|memcpy|memmove)\b", src)
    assert not re.search(r"(?m)^\s*\.(section|data|bss|seh_|cv_|cfi_|def|file)", src)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_export_label_resolves(arch: str) -> None:
    a = asm.assemble(arch, 0x400000)
    names = asm.function_labels(arch)
    assert set(ALLOCATOR_PROTOTYPES) <= set(a.labels)
    assert set(asm.SYSCALL_NUMBERS.values()) | {"ntheap_get_peb"} <= set(a.labels)
    offsets = [a.labels[n] for n in names]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert all(0 <= off < len(a.code) for off in offsets)
    assert a.address_of("RtlAllocateHeap") == 0x400000 + a.labels["RtlAllocateHeap"]


@pytest.mark.parametrize("arch", ARCHS)
def test_label_table_matches_the_code(arch: str) -> None:
    """Cross-check the label table: the stubs decode as written, and every direct call in the
    compiled code lands exactly on a function label."""
    a = asm.assemble(arch, 0x10000)
    numbers = {name: number for number, name in asm.SYSCALL_NUMBERS.items()}
    for name, number in numbers.items():
        off = a.labels[name]
        text = [(i.mnemonic, i.op_str) for i in disasm(arch, a.code[off : off + 16], 0)][:4]
        if arch == "x64":
            assert text == [
                ("mov", "r10, rcx"),
                ("mov", f"eax, {number:#x}"),
                ("syscall", ""),
                ("ret", ""),
            ]
        else:
            argc = len(HANDLERS[name].params)
            assert text == [
                ("mov", f"eax, {number:#x}"),
                ("lea", "edx, [esp + 4]"),
                ("int", "0x2e"),
                ("ret", f"{4 * argc:#x}"),
            ]
    peb = disasm(arch, a.code[a.labels["ntheap_get_peb"] :][:16], 0)[0]
    assert peb.op_str == (
        "eax, dword ptr fs:[0x30]" if arch == "x86" else "rax, qword ptr gs:[0x60]"
    )

    starts = {a.address + off for off in a.labels.values()}
    calls = [i for i in disasm(arch, a.code, a.address) if i.mnemonic == "call"]
    assert calls
    for insn in calls:
        assert int(insn.op_str, 16) in starts, f"call at {insn.address:#x} misses every label"


def test_x86_exports_are_stdcall() -> None:
    """Every return of an x86 export pops 4 bytes per argument of its prototype."""
    a = asm.assemble("x86", 0)
    ordered = sorted(a.labels.items(), key=lambda kv: kv[1])
    ends = {
        name: (ordered[i + 1][1] if i + 1 < len(ordered) else len(a.code))
        for i, (name, _) in enumerate(ordered)
    }
    for export, proto in ALLOCATOR_PROTOTYPES.items():
        start = a.labels[export]
        rets = {
            int(i.op_str or "0", 0)
            for i in disasm("x86", a.code[start : ends[export]], start)
            if i.mnemonic == "ret"
        }
        assert rets == {4 * proto.argc}, export


def test_tables_are_consistent() -> None:
    assert set(asm.SYSCALL_NUMBERS.values()) <= set(HANDLERS)
    assert asm.SYSCALL_NUMBERS == {
        0x18: "NtAllocateVirtualMemory",
        0x1E: "NtFreeVirtualMemory",
        0x2A: "NtRaiseException",
    }
    with pytest.raises(ValueError):
        asm.flat_source("arm64")
