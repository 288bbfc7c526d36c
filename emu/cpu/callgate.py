"""The call gate: the cheapest way from Python into emulated code and back.

Reading and writing registers through Unicorn's Python binding costs ~2 µs each, so a call that
sets four argument registers and the stack pointer, then reads the result, the stack pointer
and pc, would spend most of its time in the binding. The gate uses Unicorn's C API through
ctypes with everything prepared once per (convention, argument count):

1. one ``uc_mem_write`` of the frame: the return address (our sentinel in the trap page),
   x64's 32-byte shadow space and the stack arguments;
2. one ``uc_reg_write_batch`` of the stack pointer and the register arguments;
3. ``uc_emu_start(target, until=sentinel)``;
4. one ``uc_reg_read_batch`` of rax/eax, the stack pointer and pc: pc at the sentinel means
   the callee returned; the stack pointer tells whether it popped what its convention says.

(An earlier design ran a trampoline that loaded the registers from memory and stored the
results back: its two guest stores and the extra instructions cost more than the batched
register calls, ~12 µs against ~7 µs per call here.)
"""

from __future__ import annotations

import ctypes
import struct

from unicorn.unicorn_py3.unicorn import uclib

from emu.arch import Arch
from emu.cpu.cpu import Cpu
from emu.win.conventions import Convention

_Layout = tuple[int, int, struct.Struct, int, object, object, object, int]


class CallGate:
    def __init__(self, arch: Arch, cpu: Cpu, top: int, sentinel: int):
        self.arch = arch
        self._uch = cpu._uch
        self.top = top & ~0xF  # frames are laid out below this address
        self.sentinel = sentinel  # the return address of every call; `until` of every run
        self.return_address = sentinel
        ids = cpu.reg_ids
        self._ret_ids = (ctypes.c_int * 3)(ids[arch.ret], ids[arch.sp], ids[arch.pc])
        self._ret_vals = (ctypes.c_uint64 * 3)()
        self._ret_ptrs = (ctypes.c_void_p * 3)(
            *(ctypes.addressof(self._ret_vals) + 8 * i for i in range(3))
        )
        self._ids = ids
        self._layouts: dict[tuple[str, int], _Layout] = {}

    def _layout(self, conv: Convention, argc: int) -> _Layout:
        """Per (convention, argument count): how many arguments go in registers, the entry
        stack pointer, the frame's packer and address, and the register batch."""
        arch = self.arch
        ps = arch.ptr_size
        nreg = min(len(conv.reg_args), argc)
        nstack = argc - nreg
        body = conv.shadow_space + ps * nstack
        # sp + ps (just above the return address) is 16-byte aligned, as at a `call`
        entry_sp = ((self.top - body) & ~0xF) - ps
        c = "Q" if ps == 8 else "I"
        packer = struct.Struct(f"<{c}{conv.shadow_space}x{nstack}{c}")
        names = (arch.sp, *conv.reg_args[:nreg])
        regs = (ctypes.c_int * len(names))(*(self._ids[n] for n in names))
        vals = (ctypes.c_uint64 * len(names))()
        ptrs = (ctypes.c_void_p * len(names))(
            *(ctypes.addressof(vals) + 8 * i for i in range(len(names)))
        )
        vals[0] = entry_sp
        layout = (nreg, entry_sp, packer, entry_sp, regs, vals, ptrs, len(names))
        self._layouts[(conv.name, argc)] = layout
        return layout

    def prepare(self, conv: Convention, args: tuple[int, ...]) -> int:
        """Write the frame and set the registers for a call; returns the entry stack pointer.
        The hot path of every ``proc.call``: a cached layout, one pack, three C calls."""
        layout = self._layouts.get((conv.name, len(args))) or self._layout(conv, len(args))
        nreg, entry_sp, packer, address, regs, vals, ptrs, count = layout
        mask = self.arch.ptr_mask
        buf = packer.pack(self.sentinel, *[a & mask for a in args[nreg:]])
        uclib.uc_mem_write(self._uch, address, buf, packer.size)
        for i in range(nreg):
            vals[i + 1] = args[i] & mask  # type: ignore[index]
        uclib.uc_reg_write_batch(self._uch, regs, ptrs, count)
        return entry_sp

    def result(self) -> tuple[int, int, int]:
        """(rax/eax, stack pointer, pc) after a run, in one C call."""
        uclib.uc_reg_read_batch(self._uch, self._ret_ids, self._ret_ptrs, 3)
        v = self._ret_vals
        return v[0], v[1], v[2]
