"""The call gate: the cheapest way from Python into emulated code and back.

Reading and writing registers through Unicorn's Python binding costs ~2 µs each, so a call that
sets four argument registers and the stack pointer, then reads the result and the stack pointer,
spends far more time in Python than in the callee. The gate moves that work into emulated code:
Python writes one buffer (the callee's stack frame followed by a control block holding the
target, the register arguments and the entry stack pointer), starts the CPU on a small
trampoline in our trap page, and reads one 2-pointer result block back. The trampoline::

    mov  rsp, [ctl.sp]                 ; x86: mov esp, [ctl.sp]
    mov  rcx/rdx/r8/r9, [ctl.args]     ; x86: ecx, edx (fastcall/thiscall)
    call [ctl.target]
    mov  [ctl.ret], rax
    mov  [ctl.sp_after], rsp
  done:                                ; emu_start(..., until=done)

The sp_after slot is zeroed by every call: if it is still zero afterwards, the callee did not
return (fault, budget, time limit).
"""

from __future__ import annotations

import ctypes
import struct

import keystone
from unicorn.unicorn_py3.unicorn import uclib

from .arch import Arch
from .conventions import Convention

_CTL_SLOTS = ("target", "a0", "a1", "a2", "a3", "sp", "ret", "sp_after")
_ZEROS = (0, 0, 0, 0)


class CallGate:
    def __init__(self, arch: Arch, uch: object, control: int, trampoline: int):
        self.arch = arch
        self._uch = uch
        ps = arch.ptr_size
        self.control = control  # 16-byte aligned; the frame ends right below it
        self.slot = {name: control + i * ps for i, name in enumerate(_CTL_SLOTS)}
        regs = ("rcx", "rdx", "r8", "r9") if ps == 8 else ("ecx", "edx")
        word = "qword" if ps == 8 else "dword"
        sp, ax = arch.sp, arch.ret
        lines = [f"mov {sp}, {word} ptr [{self.slot['sp']:#x}]"]
        lines += [f"mov {r}, {word} ptr [{self.slot[f'a{i}']:#x}]" for i, r in enumerate(regs)]
        lines += [
            f"call {word} ptr [{self.slot['target']:#x}]",
            f"mov {word} ptr [{self.slot['ret']:#x}], {ax}",
            f"mov {word} ptr [{self.slot['sp_after']:#x}], {sp}",
        ]
        ks = keystone.Ks(keystone.KS_ARCH_X86, arch.ks_mode)
        code, _ = ks.asm("\n".join(lines), trampoline)
        self.code = bytes(code)
        self.trampoline = trampoline
        self.done = trampoline + len(self.code)
        self.return_address = self.done - len(self._tail(ks, lines, trampoline))
        self._fmt = "<Q" if ps == 8 else "<I"
        self._result = ctypes.create_string_buffer(2 * ps)
        self._result_fmt = struct.Struct("<QQ" if ps == 8 else "<II")
        self._result_addr = self.slot["ret"]
        self._result_len = 2 * ps
        self._layouts: dict[tuple[str, int], tuple[int, int, struct.Struct, int, int]] = {}

    @staticmethod
    def _tail(ks: keystone.Ks, lines: list[str], base: int) -> bytes:
        # the two stores after the call: the call's return address is where they start
        code, _ = ks.asm("\n".join(lines[-2:]), base)
        return bytes(code)

    def _layout(self, conv: Convention, argc: int) -> tuple[int, int, struct.Struct, int, int]:
        """Per (convention, argument count): register-argument count, entry sp, the packer
        of the whole buffer, where it goes, how many unused register slots it zero-fills."""
        ps = self.arch.ptr_size
        nreg = min(len(conv.reg_args), argc)
        nstack = argc - nreg
        body = conv.shadow_space + ps * nstack
        pad = (-body) % 16
        entry_sp = self.control - body - pad - ps
        c = self._fmt[1]
        packer = struct.Struct(f"<{conv.shadow_space}x{nstack}{c}{pad}x{1 + 4 + 3}{c}")
        layout = (nreg, entry_sp, packer, entry_sp + ps, 4 - nreg)
        self._layouts[(conv.name, argc)] = layout
        return layout

    def prepare(self, conv: Convention, args: tuple[int, ...], target: int) -> int:
        """Write the frame and control block for calling ``target``; returns the entry sp.
        The hot path of every ``proc.call``: one cached layout, one pack, one write."""
        layout = self._layouts.get((conv.name, len(args))) or self._layout(conv, len(args))
        nreg, entry_sp, packer, address, zeros = layout
        mask = self.arch.ptr_mask
        buf = packer.pack(
            *[a & mask for a in args[nreg:]],
            target,
            *[a & mask for a in args[:nreg]],
            *_ZEROS[:zeros],
            address,  # entry sp + ptr_size: the trampoline's `call` pushes the return address
            0,
            0,
        )
        uclib.uc_mem_write(self._uch, address, buf, packer.size)
        return entry_sp

    def frame(self, conv: Convention, args: tuple[int, ...], target: int) -> tuple[int, bytes]:
        """(entry sp, buffer to write at entry sp + ptr_size) for a call of ``target``."""
        arch = self.arch
        ps, mask = arch.ptr_size, arch.ptr_mask
        nreg = len(conv.reg_args)
        stack = args[nreg:]
        body = conv.shadow_space + ps * len(stack)
        pad = (-body) % 16
        entry_sp = self.control - body - pad - ps
        regs = [a & mask for a in args[:nreg]]
        ctl = [target, *regs, *([0] * (4 - len(regs))), entry_sp + ps, 0, 0]
        n = len(stack)
        buf = struct.pack(
            f"<{conv.shadow_space}x{n}{self._fmt[1]}{pad}x{len(ctl)}{self._fmt[1]}",
            *(a & mask for a in stack),
            *ctl,
        )
        return entry_sp, buf

    def write(self, entry_sp: int, buf: bytes) -> None:
        uclib.uc_mem_write(self._uch, entry_sp + self.arch.ptr_size, buf, len(buf))

    def result(self) -> tuple[int, int]:
        """(rax/eax, sp after return; 0 if the callee never returned)."""
        uclib.uc_mem_read(self._uch, self._result_addr, self._result, self._result_len)
        ret, sp_after = self._result_fmt.unpack(self._result.raw)
        return int(ret), int(sp_after)
