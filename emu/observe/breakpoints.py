"""Breakpoints: ``proc.breakpoint("ntdll!RtlAllocateHeap", callback)``.

Each breakpoint is a Unicorn code hook limited to its one address, so it costs nothing while
code runs elsewhere. The callback gets a :class:`BreakContext`: registers and memory, the
arguments by the architecture's convention, the call stack, and three actions: ``stop()`` ends
the run (``proc.call`` raises :class:`BreakpointStop`), ``skip(value)`` returns from the function
at once with ``value``, ``set_arg(i, value)`` changes an argument before the function sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emu.observe.stackwalk import walk_stack
from emu.win.conventions import get_convention

if TYPE_CHECKING:
    from emu.observe.stackwalk import Frame
    from emu.process.core import ProcessCore, Registers


class BreakContext:
    def __init__(self, proc: ProcessCore, bp: Breakpoint):
        self.proc = proc
        self.breakpoint = bp
        self.address = bp.address
        self.conv = get_convention(proc.arch, bp.convention)
        self.sp = proc.cpu.sp
        self.skipped = False

    @property
    def regs(self) -> Registers:
        return self.proc.regs

    @property
    def return_address(self) -> int:
        return self.proc.read_ptr(self.sp)

    def _arg_location(self, index: int) -> str | int:
        if index < len(self.conv.reg_args):
            return self.conv.reg_args[index]
        return self.conv.stack_arg_address(self.proc.arch, self.sp, index)

    def arg(self, index: int) -> int:
        """Argument ``index`` (0-based) at function entry."""
        where = self._arg_location(index)
        return self.proc.regs[where] if isinstance(where, str) else self.proc.read_ptr(where)

    def args(self, count: int) -> list[int]:
        return [self.arg(i) for i in range(count)]

    def set_arg(self, index: int, value: int) -> None:
        where = self._arg_location(index)
        if isinstance(where, str):
            self.proc.regs[where] = value & self.proc.arch.ptr_mask
        else:
            self.proc.write_ptr(where, value)

    def stack(self) -> list[Frame]:
        return walk_stack(self.proc)

    def stop(self, reason: str = "") -> None:
        why = reason or f"stopped at breakpoint {self.proc.symbolize(self.address)}"
        self.proc.breakpoint_stop = why
        self.proc.cpu.stop(why)

    def skip(self, value: int = 0, argc: int | None = None) -> None:
        """Return from the function now with ``value`` (callee-pops conventions pop ``argc``
        arguments, default the breakpoint's argc)."""
        proc, arch = self.proc, self.proc.arch
        n = self.breakpoint.argc if argc is None else argc
        ret = self.return_address
        proc.regs[arch.ret] = value & arch.ptr_mask
        proc.cpu.sp = self.sp + arch.ptr_size + self.conv.popped_bytes(arch, n)
        proc.cpu.pc = ret
        self.skipped = True


@dataclass
class Breakpoint:
    proc: ProcessCore
    address: int
    callback: Callable[[BreakContext], None]
    convention: str | None = None
    argc: int = 0
    hits: int = 0
    enabled: bool = True
    _hook: int | None = field(default=None, repr=False)

    def _on_code(self, address: int, size: int) -> None:
        if not self.enabled:
            return
        self.hits += 1
        self.callback(BreakContext(self.proc, self))

    def remove(self) -> None:
        if self._hook is not None:
            self.proc.cpu.unhook(self._hook)
            self._hook = None
            self.proc.breakpoints.remove(self)


def add_breakpoint(
    proc: ProcessCore,
    target: int | str,
    callback: Callable[[BreakContext], None],
    *,
    convention: str | None = None,
    argc: int = 0,
) -> Breakpoint:
    address = proc.resolve(target) if isinstance(target, str) else target
    bp = Breakpoint(proc, address, callback, convention, argc)
    bp._hook = proc.cpu.hook_code(bp._on_code, address, address)
    proc.breakpoints.append(bp)
    return bp
