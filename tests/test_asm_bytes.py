"""Keystone's bytes for flat_source equal the compiler's own object code for the same C.

The same C with the same flags is compiled by zig to a COFF object; its relocations (calls to
the system-call stubs and ntheap_get_peb) are applied with the addresses keystone gave those
labels, and then every function must be byte-identical and at the same offset. The only
tolerated difference is the alignment padding *between* functions (``.p2align 4`` before each
function; ``-falign-loops=1`` leaves none inside them): the assemblers pick different NOP
encodings (x86: the i686 object uses 0x90 runs, keystone long NOPs; x64: different counts of
0x66 prefixes). Padding must decode as NOPs on both sides and end exactly at the next function.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import capstone
import pytest

import asm
from asm import generate

ARCHS = ("x86", "x64")
REL32 = {"x64": 0x0004, "x86": 0x0014}  # IMAGE_REL_AMD64_REL32, IMAGE_REL_I386_REL32
DIR32 = {"x86": 0x0006}  # IMAGE_REL_I386_DIR32
BASE = 0x10000000


@dataclass(frozen=True)
class Symbol:
    name: str
    value: int
    section: int  # 1-based, 0 undefined
    type: int
    storage: int


@dataclass(frozen=True)
class Section:
    name: str
    data: bytes
    relocs: tuple[tuple[int, int, int], ...]  # (offset, symbol index, type)


def read_coff(data: bytes) -> tuple[list[Section], list[Symbol | None]]:
    """Minimal COFF object reader: sections with relocations, and the symbol table."""
    _, nsec, _, symptr, nsym, optsz, _ = struct.unpack_from("<HHIIIHH", data, 0)
    strtab = symptr + 18 * nsym
    sections = []
    for i in range(nsec):
        off = 20 + optsz + 40 * i
        name = data[off : off + 8].rstrip(b"\0").decode()
        _, _, rawsize, rawptr, relptr, _, nrel, _, _ = struct.unpack_from(
            "<IIIIIIHHI", data, off + 8
        )
        relocs = tuple(struct.unpack_from("<IIH", data, relptr + 10 * j) for j in range(nrel))
        sections.append(Section(name, data[rawptr : rawptr + rawsize], relocs))
    symbols: list[Symbol | None] = []
    while len(symbols) < nsym:
        off = symptr + 18 * len(symbols)
        raw = data[off : off + 8]
        if raw[:4] == b"\0\0\0\0":
            start = strtab + struct.unpack_from("<I", raw, 4)[0]
            name = data[start : data.index(b"\0", start)].decode()
        else:
            name = raw.rstrip(b"\0").decode()
        value, secnum, typ, storage, naux = struct.unpack_from("<IhHBB", data, off + 8)
        symbols.append(Symbol(name, value, secnum, typ, storage))
        symbols.extend([None] * naux)
    return sections, symbols


def is_padding(arch: str, code: bytes) -> bool:
    md = capstone.Cs(
        capstone.CS_ARCH_X86, capstone.CS_MODE_32 if arch == "x86" else capstone.CS_MODE_64
    )
    insns = list(md.disasm(code, 0))
    return sum(i.size for i in insns) == len(code) and all(
        i.mnemonic in ("nop", "int3") for i in insns
    )


def body_end(arch: str, code: bytes) -> int:
    """Offset just past the last instruction that is not padding."""
    md = capstone.Cs(
        capstone.CS_ARCH_X86, capstone.CS_MODE_32 if arch == "x86" else capstone.CS_MODE_64
    )
    end = 0
    for insn in md.disasm(code, 0):
        if insn.mnemonic not in ("nop", "int3"):
            end = insn.address + insn.size
    return end


@pytest.mark.parametrize(
    "heap", [h for h in generate.HEAPS if h != "segheap"]
)  # segheap: its own test
@pytest.mark.parametrize("arch", ARCHS)
def test_keystone_bytes_equal_compiler_object(arch: str, heap: str, tmp_path: Path) -> None:
    obj = tmp_path / f"{heap}_{arch}.o"
    generate.compile_to_object(arch, obj, heap)
    sections, symbols = read_coff(obj.read_bytes())
    text_index = next(i for i, s in enumerate(sections) if s.name == ".text")
    text = sections[text_index]
    assert not [s for s in sections if s.name.startswith((".rdata", ".data")) and s.data]

    a = asm.assemble(arch, BASE, unit=heap)
    functions = sorted(
        (s.value, generate.undecorate(s.name, arch))
        for s in symbols
        if s is not None and s.section == text_index + 1 and s.type == 0x20
    )
    assert {name for _, name in functions} == {
        n for n in asm.function_labels(arch, unit=heap) if n in a.labels
    } - {
        *asm.SYSCALL_NUMBERS.values(),
        "ntheap_get_peb",
    }
    start = a.labels[functions[0][1]]
    for value, name in functions:
        assert a.labels[name] - start == value, f"{name} is not at the object's offset"
    compiled = a.code[start:]
    assert len(compiled) == len(text.data)

    linked = bytearray(text.data)
    for offset, index, rtype in text.relocs:
        sym = symbols[index]
        assert sym is not None
        target = a.address_of(generate.undecorate(sym.name, arch))
        addend = struct.unpack_from("<i", linked, offset)[0]
        if rtype == REL32[arch]:
            struct.pack_into("<i", linked, offset, target - (BASE + start + offset + 4) + addend)
        elif rtype == DIR32.get(arch):
            struct.pack_into("<I", linked, offset, target + addend)
        else:
            raise AssertionError(f"unexpected relocation type {rtype:#x} at {offset:#x}")
    assert text.relocs, "expected calls to the system-call stubs"

    padding_differences = 0
    bounds = [v for v, _ in functions] + [len(linked)]
    for (value, name), end in zip(functions, bounds[1:], strict=True):
        ours, theirs = bytes(linked[value:end]), compiled[value:end]
        body = body_end(arch, ours)
        assert ours[:body] == theirs[:body], f"{name} differs from the compiler's code"
        if ours[body:] != theirs[body:]:
            assert is_padding(arch, ours[body:]) and is_padding(arch, theirs[body:]), name
            padding_differences += 1
    print(f"\n{arch}: {len(functions)} functions, {len(text.relocs)} relocations, "
          f"{padding_differences} with differently encoded padding NOPs")  # fmt: skip
