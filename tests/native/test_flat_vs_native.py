"""Smoke differential test: the keystone-assembled flat heap, run in a bare Unicorn with a tiny
three-call kernel, gives exactly the native build's results for the same scripts.

This is not the emulator (emu/): it only proves that flat_source runs as the C says, with the
documented ABI (x64 ``syscall`` / x86 ``int 0x2e`` stubs, PEB via gs:[0x60] / fs:[0x30],
stdcall on x86). The bare kernel hands out reservations from 0x10000000 up; the native run is
given the same addresses as answers, so every value, walk entry and system call must be equal.
"""

from __future__ import annotations

import struct

import pytest
from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_MODE_32,
    UC_MODE_64,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_NONE,
    UC_PROT_READ,
    UC_PROT_WRITE,
    Uc,
    UcError,
)
from unicorn.x86_const import (
    UC_X86_INS_SYSCALL,
    UC_X86_REG_EAX,
    UC_X86_REG_EDX,
    UC_X86_REG_ESP,
    UC_X86_REG_GS_BASE,
    UC_X86_REG_R8,
    UC_X86_REG_R9,
    UC_X86_REG_R10,
    UC_X86_REG_RAX,
    UC_X86_REG_RCX,
    UC_X86_REG_RDX,
    UC_X86_REG_RSP,
)

import asm
from emu.win.prototypes import ALLOCATOR_PROTOTYPES

from .nativeheap import NativeRun, VmCall, WalkEntry, run_script
from .scripts import make_script, seed002_script

CODE, STACK, SCRATCH = 0x00400000, 0x00100000, 0x00300000
PEB, TEB, SENTINEL, VM_START = 0x7FFD0000, 0x7FFDE000, 0x7FFF0000, 0x10000000
NAMES = {"create", "alloc", "realloc", "reserve"}


class FlatHeap:
    """asm.assemble(arch) in a bare Unicorn; system calls answered by a minimal kernel."""

    def __init__(self, arch: str) -> None:
        self.arch = arch
        self.lay = asm.layout(arch)
        self.ptr = self.lay.pointer_size
        self.code = asm.assemble(arch, CODE)
        self.uc = Uc(UC_ARCH_X86, UC_MODE_32 if arch == "x86" else UC_MODE_64)
        uc = self.uc
        uc.mem_map(CODE, -(-len(self.code.code) // 0x1000) * 0x1000, UC_PROT_READ | UC_PROT_EXEC)
        uc.mem_write(CODE, self.code.code)
        uc.mem_map(STACK, 0x100000)
        uc.mem_map(SCRATCH, 0x10000)
        uc.mem_map(PEB, 0x2000)
        uc.mem_map(TEB, 0x2000)
        uc.mem_map(SENTINEL, 0x1000, UC_PROT_ALL)
        offsets = (0x88, 0x8C, 0x90) if arch == "x86" else (0xE8, 0xEC, 0xF0)
        uc.mem_write(PEB + offsets[1], struct.pack("<I", 16))
        uc.mem_write(PEB + offsets[2], self.pack(PEB + 0x800))
        if arch == "x64":
            uc.reg_write(UC_X86_REG_GS_BASE, TEB)
            uc.mem_write(TEB + 0x60, self.pack(PEB))
            uc.hook_add(UC_HOOK_INSN, self.on_syscall, None, 1, 0, UC_X86_INS_SYSCALL)
        else:  # fs base stays 0 in a bare 32-bit Unicorn: fs:[0x30] is linear 0x30
            uc.mem_map(0, 0x1000)
            uc.mem_write(0x30, self.pack(PEB))
            uc.hook_add(UC_HOOK_INTR, self.on_interrupt)
        self.regions: dict[int, int] = {}
        self.next = VM_START
        self.vm: list[VmCall] = []
        self.raised: int | None = None

    # -- memory helpers
    def pack(self, value: int) -> bytes:
        return value.to_bytes(self.ptr, "little")

    def read_ptr(self, addr: int) -> int:
        return int.from_bytes(self.uc.mem_read(addr, self.ptr), "little")

    # -- the kernel
    def on_syscall(self, uc: Uc, _data: object) -> None:
        sp = uc.reg_read(UC_X86_REG_RSP)
        regs = [
            uc.reg_read(r) for r in (UC_X86_REG_R10, UC_X86_REG_RDX, UC_X86_REG_R8, UC_X86_REG_R9)
        ]
        stack = [self.read_ptr(sp + 0x28 + 8 * i) for i in range(2)]
        uc.reg_write(UC_X86_REG_RAX, self.service(uc.reg_read(UC_X86_REG_RAX), [*regs, *stack]))

    def on_interrupt(self, uc: Uc, intno: int, _data: object) -> None:
        assert intno == 0x2E
        edx = uc.reg_read(UC_X86_REG_EDX)
        args = [self.read_ptr(edx + 4 * i) for i in range(6)]
        uc.reg_write(UC_X86_REG_EAX, self.service(uc.reg_read(UC_X86_REG_EAX), args))

    def service(self, number: int, args: list[int]) -> int:
        name = asm.SYSCALL_NUMBERS[number]
        if name == "NtRaiseException":
            self.raised = int.from_bytes(self.uc.mem_read(args[0], 4), "little")
            self.uc.emu_stop()
            return 0
        if name == "NtFreeVirtualMemory":
            base, size = self.read_ptr(args[1]), self.read_ptr(args[2])
            assert args[3] == 0x8000 and size == 0 and base in self.regions
            self.uc.mem_unmap(base, self.regions.pop(base))
            self.vm.append(VmCall("free", base, size, args[3], 0, 0))
            return 0
        process, pbase, _, psize, kind, protect = args
        assert process == (1 << 8 * self.ptr) - 1
        base, size = self.read_ptr(pbase), self.read_ptr(psize)
        if kind & 0x2000:
            assert base == 0
            new_base, new_size = self.next, -(-size // 0x1000) * 0x1000
            try:
                self.uc.mem_map(new_base, new_size, UC_PROT_NONE)
            except UcError:
                self.vm.append(VmCall("alloc", base, size, kind, protect, 0xC0000017))
                return 0xC0000017
            self.next += -(-new_size // 0x10000) * 0x10000
            self.regions[new_base] = new_size
            if kind & 0x1000:
                self.uc.mem_protect(new_base, new_size, UC_PROT_READ | UC_PROT_WRITE)
        else:
            new_base = base & ~0xFFF
            new_size = -(-(base + size) // 0x1000) * 0x1000 - new_base
            self.uc.mem_protect(new_base, new_size, UC_PROT_READ | UC_PROT_WRITE)
        self.uc.mem_write(pbase, self.pack(new_base))
        self.uc.mem_write(psize, self.pack(new_size))
        self.vm.append(VmCall("alloc", base, size, kind, protect, 0, new_base, new_size))
        return 0

    # -- calls
    def call(self, name: str, *args: int) -> int | None:
        """Calls an export; None when it raised an exception."""
        uc, top = self.uc, STACK + 0xF0000
        self.raised = None
        args = tuple(a & ((1 << 8 * self.ptr) - 1) for a in args)
        if self.arch == "x64":
            for reg, value in zip(
                (UC_X86_REG_RCX, UC_X86_REG_RDX, UC_X86_REG_R8, UC_X86_REG_R9), args, strict=False
            ):
                uc.reg_write(reg, value)
            for i, value in enumerate(args[4:]):
                uc.mem_write(top + 0x20 + 8 * i, self.pack(value))
            uc.mem_write(top - 8, self.pack(SENTINEL))
            uc.reg_write(UC_X86_REG_RSP, top - 8)
        else:
            uc.mem_write(top, b"".join(self.pack(v) for v in (SENTINEL, *args)))
            uc.reg_write(UC_X86_REG_ESP, top)
        uc.emu_start(self.code.address_of(name), SENTINEL)
        if self.raised is not None:
            return None
        if self.arch == "x86":
            assert uc.reg_read(UC_X86_REG_ESP) == top + 4 + 4 * ALLOCATOR_PROTOTYPES[name].argc, (
                "not stdcall"
            )
        return int(uc.reg_read(UC_X86_REG_RAX if self.arch == "x64" else UC_X86_REG_EAX))

    def walk(self, heap: int) -> tuple[list[WalkEntry], int]:
        entry = self.lay.heap_walk_entry
        self.uc.mem_write(SCRATCH, bytes(entry.size))
        entries = []
        while True:
            status = self.call("RtlWalkHeap", heap, SCRATCH)
            assert status is not None
            if status & 0xFFFFFFFF:
                return entries, status & 0xFFFFFFFF
            raw = bytes(self.uc.mem_read(SCRATCH, entry.size))

            def field(name: str, raw: bytes = raw) -> int:
                f = entry.fields[name]
                return int.from_bytes(raw[f.offset : f.offset + f.size], "little")

            flags = field("Flags")
            region = ("CommittedSize", "UnCommittedSize", "FirstEntry", "LastEntry")
            extra = [field(f"Segment.{n}") if flags & 0x2 else 0 for n in region]
            basic = [field(n) for n in ("DataAddress", "DataSize", "OverheadBytes", "SegmentIndex")]
            entries.append(WalkEntry(*basic, flags, *extra))


# script operation -> (export, argument tokens (None: 0 when absent), result is a 32-bit value)
CALLS: dict[str, tuple[str, tuple[int | None, ...], bool]] = {
    "create": ("RtlCreateHeap", (2, 5, 3, 4), False),  # lock and params: 0
    "alloc": ("RtlAllocateHeap", (2, 3, 4), False),
    "realloc": ("RtlReAllocateHeap", (2, 3, 4, 5), False),
    "free": ("RtlFreeHeap", (1, 2, 3), True),
    "size": ("RtlSizeHeap", (1, 2, 3), False),
    "validate": ("RtlValidateHeap", (1, 2, 3), True),
    "destroy": ("RtlDestroyHeap", (1,), False),
}


def run_flat(lines: list[str], arch: str) -> NativeRun:
    """Interpret the driver's script language against FlatHeap, producing a NativeRun."""
    heap = FlatHeap(arch)
    run = NativeRun(lines=[])
    values: dict[str, int] = {}

    def val(tok: str) -> int:
        if tok[0].isdigit() or tok[0] == "-":
            return int(tok, 0)
        for op in "+-":
            if op in tok:
                name, off = tok.split(op)
                return values[name] + int(off, 0) if op == "+" else values[name] - int(off, 0)
        return values[tok]

    for line in lines:
        tok = line.split("#")[0].split()
        if not tok:
            continue
        op = tok[0]
        if op in CALLS:
            name, positions, is_u32 = CALLS[op]
            args = [val(tok[i]) if i < len(tok) else 0 for i in positions]
            args += [0] * (ALLOCATOR_PROTOTYPES[name].argc - len(args))
            if op in NAMES:
                values[tok[1]] = 0
            result = heap.call(name, *args)
            if result is None:
                assert heap.raised is not None
                run.exceptions.append(heap.raised)
                continue
            if is_u32:
                result &= 0xFFFFFFFF
            if op in NAMES:
                values[tok[1]] = run.values[tok[1]] = result
            run.ops.append((op, result))
        elif op == "walk":
            entries, status = heap.walk(val(tok[1]))
            run.walks.append(entries)
            run.walk_status.append(status)
        elif op == "fill":
            p, seed, n = val(tok[1]), val(tok[2]), val(tok[3])
            heap.uc.mem_write(p, bytes((seed + i) & 0xFF for i in range(n)))
        elif op == "check":
            p, seed, n = val(tok[1]), val(tok[2]), val(tok[3])
            run.checks.append(
                bytes(heap.uc.mem_read(p, n)) == bytes((seed + i) & 0xFF for i in range(n))
            )
        else:
            raise ValueError(f"the flat harness does not know {op!r}")
    run.vm = heap.vm
    return run


def assert_same(flat: NativeRun, native: NativeRun) -> None:
    assert flat.exceptions == native.exceptions
    assert flat.values == native.values
    assert flat.ops == native.ops
    assert flat.checks == native.checks
    assert flat.walk_status == native.walk_status
    assert flat.walks == native.walks
    assert flat.vm == native.vm


EXCEPTIONS_SCRIPT = [
    "create h 0x6 0 0",
    "alloc p h 0 0x30",
    "fill p 3 0x30",
    "free h 0 p+8",
    "alloc big h 0 -1",  # (SIZE_T)-1
    "realloc q h 0x10 p 0x100000",
    "size h 0 p",
    "validate h 0",
    "check p 3 0x30",
    "create c 0x62 0x20000 0",  # fixed-size heap with tail and free checking
    "alloc x c 0 0x19",
    "alloc y c 8 0x40",
    "free c 0 x",
    "validate c 0",
    "walk c",
    "destroy c",
    "destroy h",
]


@pytest.mark.parametrize("arch", ["x86", "x64"])
@pytest.mark.parametrize("script", ["seed002", "random", "exceptions"])
def test_flat_code_matches_native(arch: str, script: str) -> None:
    if script == "seed002":
        lines = seed002_script()
    elif script == "random":
        lines = make_script(7, 300)[0].lines
    else:
        lines = EXCEPTIONS_SCRIPT
    flat = run_flat(lines, arch)
    native = run_script(lines, arch=arch, answers=flat.reservations())
    assert_same(flat, native)
    assert flat.walks and flat.ops
