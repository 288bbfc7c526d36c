"""The call gate: the cheapest way from Python into emulated code and back.

A call costs what ``uc_emu_start`` costs plus as little as possible: every C call from Python
(register writes, memory writes, register reads: ~0.5-1 µs each through ctypes) is worth more
than the emulated instructions that could replace it (a few nanoseconds each on the fast core).
So one ``uc_emu_start`` does the whole call:

1. Python packs the callee's address and the arguments into the gate's data page, host memory
   mapped into the guest (one ``struct.pack_into``, no C call);
2. ``uc_emu_start`` runs the layout's stub (per convention and argument count, generated once):
   it sets the stack pointer, resets DF and the FPU/SSE control state the ABI fixes at a
   function's entry (``_reset``: four instructions, cheaper than any C call), copies the stack
   arguments and loads the register arguments from the data page, pushes the common return
   address and jumps to the callee;
3. the callee returns to the gate's tail, which stores rax/eax and the stack pointer into the
   data page, checks the segments and flags the callee left (``checks``) and jumps to the
   sentinel, where the run stops;
4. Python unpacks (result, stack pointer) from the data page: a stack pointer of 0 means the
   callee never returned; otherwise it tells whether the callee popped what its convention says.

The gate's two pages sit just above the highest user address (Windows keeps that 64 KiB free),
outside the process's address space: code cannot allocate over them, views do not list them.
The stub and tail are a handful of instructions (budgets add them: ``overhead``); the sentinel
is not adjacent to the tail, because Unicorn drops the translation holding ``until - 1`` after
every run.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emu.arch import Arch
from emu.cpu.cpu import Cpu
from emu.cpu.segments import (
    SEL64_DATA3,
    SEL64_FS,
    SEL_DATA3,
    SEL_TEB,
    USER_FPCW,
    USER_MXCSR,
)
from emu.win.conventions import Convention
from emu.win.ntdefs import PAGE_EXECUTE_READ, PAGE_SIZE

# data page: result, stack pointer after the return, callee, arguments (pointer-sized slots)
_RESULT, _SP, _TARGET, _ARGS = 0, 1, 2, 3
MAX_ARGS = PAGE_SIZE // 8 - _ARGS
_MXCSR, _FPCW = 0x00, 0x04  # constants the stubs load, at the start of the code page
_FLAGS_LEFT = 0x44000  # AC | NT: flags only popf sets, that no callee may leave set
_TAIL, _SENTINEL, _STUBS = 0x10, 0x80, 0xC0  # offsets in the code page


@dataclass(frozen=True)
class Layout:
    """How one (convention, argument count) is called. ``pack(data, 0, 0, 0, callee, *args)``
    and ``unpack(data, 0)`` -> (result, sp) are bound ``struct`` methods: the caller's hot path
    uses them directly."""

    convention: Convention
    stub: int  # where the run starts
    entry_sp: int  # the stack pointer at the callee's first instruction
    expected_sp: int  # ... and after it returned, if it popped what its convention says
    overhead: int  # instructions of the stub and the tail
    pack: Callable[..., None]  # result slot, sp slot (both cleared), callee, arguments
    unpack: Callable[[Any, int], tuple[Any, ...]]


class CallGate:
    def __init__(self, arch: Arch, cpu: Cpu, top: int, base: int):
        """``top``: frames are laid out below it; ``base``: two free pages for the gate."""
        self.arch = arch
        self.cpu = cpu
        self.top = top & ~0xF
        self.data_base = base
        self.code_base = base + PAGE_SIZE
        # (a memoryview: struct packs into it at half the cost of the ctypes array, whose
        # buffer export builds a format string on every pack)
        self._host = cpu.map_host(self.data_base, PAGE_SIZE)
        self.data = memoryview(self._host).cast("B")
        cpu.map_system(self.code_base, PAGE_SIZE, PAGE_EXECUTE_READ)
        cpu.write(self.code_base, b"\xcc" * PAGE_SIZE)
        cpu.write(self.code_base + _MXCSR, struct.pack("<I", USER_MXCSR))
        cpu.write(self.code_base + _FPCW, struct.pack("<H", USER_FPCW))
        self.return_address = self.code_base + _TAIL  # what every callee returns to
        self.sentinel = self.code_base + _SENTINEL  # `until` of every run
        cpu.end_runs_at(self.sentinel)
        self._next_stub = self.code_base + _STUBS
        c = "Q" if arch.ptr_size == 8 else "I"
        self._slot = c
        self._result = struct.Struct(f"<{c}{c}")
        self._layouts: dict[tuple[str, int], Layout] = {}
        # the tail's checks of the state the callee leaves (see _tail): [begin, end)
        self.checks = (0, 0)
        self._tail_count = 0
        tail = self._tail()
        cpu.write(self.return_address, tail)
        assert self.return_address + len(tail) < self.sentinel

    # ------------------------------------------------------------------ machine code
    def _slot_address(self, slot: int) -> int:
        return self.data_base + slot * self.arch.ptr_size

    def _rip(self, at: int, length: int, target: int) -> bytes:
        """disp32 of a rip-relative operand in an instruction of ``length`` bytes at ``at``."""
        return struct.pack("<i", target - (at + length))

    def _tail(self) -> bytes:
        """Store the result and the stack pointer, check the state the callee leaves, jump to
        the sentinel. The checks (``checks``) fault on a `ud2` when a selector is not the
        process's or AC/NT is set, and on x64 the read of TEB.Self through gs faults when the
        callee loaded gs (every descriptor's base is 0, the TEB is above 4 GiB, and no
        user-mode instruction sets the base back). The call has returned by then: the process
        layer takes such a fault as "put the state back with a register write before the next
        call" (the stub resets the rest on every call: _reset). Only ecx / r11 (volatile in
        every convention) and the flags change after the callee returned."""
        at = self.return_address
        x64 = self.arch.ptr_size == 8
        jumps: list[int] = []  # offsets of the rel8 of each jne to the ud2
        if x64:
            code = bytearray(b"\x48\x89\x05" + self._rip(at, 7, self._slot_address(_RESULT)))
            code += b"\x48\x89\x25" + self._rip(at + 7, 7, self._slot_address(_SP))
            begin = at + len(code)
            code += b"\x65\x4c\x8b\x1c\x25\x30\x00\x00\x00"  # mov r11, gs:[0x30]
            n = 3
            for sreg, sel in ((3, SEL64_DATA3), (0, SEL64_DATA3), (2, SEL64_DATA3), (4, SEL64_FS)):
                code += bytes([0x41, 0x8C, 0xC3 | sreg << 3])  # mov r11d, ds/es/ss/fs
                code += bytes([0x41, 0x83, 0xFB, sel, 0x75, 0])  # cmp r11d, sel; jne ud2
                jumps.append(len(code) - 1)
                n += 3
            code += b"\x9c\x41\x5b\x41\xf7\xc3" + struct.pack("<I", _FLAGS_LEFT)  # pushfq; pop
            code += b"\x75\x00"  # r11; test r11d, AC|NT; jnz ud2
        else:
            code = bytearray(b"\xa3" + struct.pack("<I", self._slot_address(_RESULT)))
            code += b"\x89\x25" + struct.pack("<I", self._slot_address(_SP))  # mov [], esp
            begin = at + len(code)
            n = 2
            for sreg, sel in ((3, SEL_DATA3), (0, SEL_DATA3), (2, SEL_DATA3), (4, SEL_TEB), (5, 0)):
                code += bytes([0x8C, 0xC1 | sreg << 3])  # mov ecx, ds/es/ss/fs/gs
                code += bytes([0x83, 0xF9, sel]) if sel else b"\x85\xc9"  # cmp ecx, sel
                code += b"\x75\x00"  # jne ud2
                jumps.append(len(code) - 1)
                n += 3
            code += b"\x9c\x59\xf7\xc1" + struct.pack("<I", _FLAGS_LEFT) + b"\x75\x00"
        jumps.append(len(code) - 1)
        n += 4
        jmp_at = at + len(code)
        code += b"\xe9" + struct.pack("<i", self.sentinel - (jmp_at + 5))
        bad = len(code)
        code += b"\x0f\x0b"  # ud2
        for j in jumps:
            code[j] = bad - (j + 1)
        self.checks = (begin, at + len(code))
        self._tail_count = n + 1
        return bytes(code)

    def _reset(self, at: int) -> tuple[bytes, int]:
        """The ABI's state at a function's entry that code changes in passing, reset on every
        call (after the stack pointer is set): DF clear, an empty x87 stack with control word
        0x27F, MXCSR 0x1F80 (none of them ends a translated block, unlike a popf or a selector
        load; the tail checks those instead): (code, instruction count)."""
        mxcsr, fpcw = self.code_base + _MXCSR, self.code_base + _FPCW
        code = b"\xfc"  # cld
        if self.arch.ptr_size == 8:  # ldmxcsr [rip + mxcsr]; fninit; fldcw [rip + fpcw]
            code += b"\x0f\xae\x15" + self._rip(at + len(code), 7, mxcsr)
            code += b"\xdb\xe3"
            code += b"\xd9\x2d" + self._rip(at + len(code), 6, fpcw)
        else:  # ldmxcsr [mxcsr]; fninit; fldcw [fpcw]
            code += b"\x0f\xae\x15" + struct.pack("<I", mxcsr) + b"\xdb\xe3"
            code += b"\xd9\x2d" + struct.pack("<I", fpcw)
        return code, 4

    def _stub(self, at: int, conv: Convention, argc: int, entry_sp: int) -> tuple[bytes, int]:
        """Machine code at ``at`` calling with ``conv``: (code, instruction count)."""
        ps = self.arch.ptr_size
        nreg = min(len(conv.reg_args), argc)
        before_push = entry_sp + ps  # sp when the stub pushes the return address
        code = bytearray()
        n = 0
        if ps == 8:
            code += b"\x48\xbc" + struct.pack("<Q", before_push)  # movabs rsp, imm64
            reset, count = self._reset(at + len(code))
            code += reset
            n += 1 + count
            for i in range(nreg, argc):  # mov r10, [arg]; mov [rsp + off], r10
                code += b"\x4c\x8b\x15" + self._rip(
                    at + len(code), 7, self._slot_address(_ARGS + i)
                )
                off = conv.shadow_space + ps * (i - nreg)
                code += b"\x4c\x89\x94\x24" + struct.pack("<i", off)
                n += 2
            regs = {"rcx": b"\x48\x8b\x0d", "rdx": b"\x48\x8b\x15", "r8": b"\x4c\x8b\x05"}
            regs["r9"] = b"\x4c\x8b\x0d"
            for i in range(nreg):  # mov reg, [arg]
                code += regs[conv.reg_args[i]]
                code += self._rip(at + len(code) - 3, 7, self._slot_address(_ARGS + i))
                n += 1
            code += b"\x4c\x8d\x1d" + self._rip(at + len(code), 7, self.return_address)  # lea r11
            code += b"\x41\x53"  # push r11
            code += b"\xff\x25" + self._rip(at + len(code), 6, self._slot_address(_TARGET))
            n += 3  # lea, push, jmp [target]
        else:
            code += b"\xbc" + struct.pack("<I", before_push)  # mov esp, imm32
            reset, count = self._reset(at + len(code))
            code += reset
            n += 1 + count
            for i in range(nreg, argc):  # mov ecx, [arg]; mov [esp + off], ecx
                code += b"\x8b\x0d" + struct.pack("<I", self._slot_address(_ARGS + i))
                code += b"\x89\x8c\x24" + struct.pack("<i", ps * (i - nreg))
                n += 2
            regs = {"ecx": b"\x8b\x0d", "edx": b"\x8b\x15"}
            for i in range(nreg):
                code += regs[conv.reg_args[i]] + struct.pack("<I", self._slot_address(_ARGS + i))
                n += 1
            code += b"\x68" + struct.pack("<I", self.return_address)  # push imm32
            code += b"\xff\x25" + struct.pack("<I", self._slot_address(_TARGET))  # jmp [target]
            n += 2
        return bytes(code), n + self._tail_count  # + the tail's

    # ------------------------------------------------------------------ layouts
    def layout(self, conv: Convention, argc: int) -> Layout:
        """The cached layout for (convention, argument count), made on first use."""
        found = self._layouts.get((conv.name, argc))
        return found if found is not None else self._add_layout(conv, argc)

    def _add_layout(self, conv: Convention, argc: int) -> Layout:
        if argc > MAX_ARGS:
            raise ValueError(f"at most {MAX_ARGS} arguments per call, not {argc}")
        arch = self.arch
        ps = arch.ptr_size
        nstack = argc - min(len(conv.reg_args), argc)
        body = conv.shadow_space + ps * nstack
        # sp + ps (just above the return address) is 16-byte aligned, as at a `call`
        entry_sp = ((self.top - body) & ~0xF) - ps
        code, count = self._stub(self._next_stub, conv, argc, entry_sp)
        if self._next_stub + len(code) > self.code_base + PAGE_SIZE:
            raise ValueError("the call gate's code page is full (too many call layouts)")
        stub = self._next_stub
        self.cpu.write(stub, code)
        self._next_stub = (stub + len(code) + 15) & ~15
        layout = Layout(
            convention=conv,
            stub=stub,
            entry_sp=entry_sp,
            expected_sp=entry_sp + ps + conv.popped_bytes(arch, argc),
            overhead=count,
            pack=struct.Struct(f"<{self._slot * (_ARGS + argc)}").pack_into,
            unpack=self._result.unpack_from,
        )
        self._layouts[(conv.name, argc)] = layout
        return layout

    # ------------------------------------------------------------------ per call
    def prepare(self, layout: Layout, target: int, args: tuple[int, ...]) -> None:
        """Put the callee and its arguments where the stub reads them (and clear the result:
        the tail writes a non-zero stack pointer once the callee has returned)."""
        try:
            layout.pack(self.data, 0, 0, 0, target, *args)
        except struct.error:
            self.prepare_masked(layout, target, args)

    def prepare_masked(self, layout: Layout, target: int, args: tuple[int, ...]) -> None:
        """``prepare`` for values that are negative or wider than a pointer: truncated, as
        the register or stack slot would hold them."""
        mask = self.arch.ptr_mask
        layout.pack(self.data, 0, 0, 0, target & mask, *[a & mask for a in args])

    def result(self) -> tuple[int, int]:
        """(rax/eax, stack pointer after the return; 0 if the callee did not return)."""
        return self._result.unpack_from(self.data, 0)

    def contains(self, addr: int) -> bool:
        return self.code_base <= addr < self.code_base + PAGE_SIZE
