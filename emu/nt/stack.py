"""A thread stack as Windows makes it: a reservation, committed top pages, a guard page below.

Touching the guard page commits it and moves the guard one page down (the kernel's stack
growth, which also lowers TEB.StackLimit). When no page is left for a new guard page the thread
gets STATUS_STACK_OVERFLOW; the bottom page of the reservation is never committed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emu.errors import Fault
from emu.nt.memory import align_up
from emu.win.layouts import TEB
from emu.win.ntdefs import MEM_COMMIT, MEM_RESERVE, PAGE_GUARD, PAGE_READWRITE, PAGE_SIZE, NtStatus

if TYPE_CHECKING:
    from emu.process.core import ProcessCore


class ThreadStack:
    def __init__(self, proc: ProcessCore, reserve: int, commit: int):
        self.proc = proc
        self.reserve = align_up(reserve, 0x10000)
        self.commit = align_up(max(commit, PAGE_SIZE), PAGE_SIZE)
        if self.commit + 2 * PAGE_SIZE > self.reserve:
            raise ValueError(f"stack commit 0x{commit:x} does not fit in reserve 0x{reserve:x}")
        self.base, _ = proc.memory.allocate(
            0, self.reserve, MEM_RESERVE, PAGE_READWRITE, usage="stack"
        )
        self.top = self.base + self.reserve  # TEB.StackBase
        self.teb: int | None = None  # the TEB of the thread it belongs to (write_teb)
        self.reset()

    @classmethod
    def existing(cls, proc: ProcessCore, base: int, top: int, limit: int) -> ThreadStack:
        """A stack its creator reserved and committed (NtCreateThread's INITIAL_TEB:
        StackAllocationBase, StackBase, StackLimit), taken as it is."""
        stack = cls.__new__(cls)
        stack.proc = proc
        stack.base, stack.top, stack.limit = base, top, limit
        stack.reserve, stack.commit = top - base, top - limit
        stack.teb = None
        return stack

    def reset(self) -> None:
        """Back to the initial state: top pages committed, one guard page below them."""
        mem = self.proc.memory
        mem.free(self.base, self.reserve, 0x4000)  # MEM_DECOMMIT everything
        mem.allocate(self.top - self.commit, self.commit, MEM_COMMIT, PAGE_READWRITE)
        self.limit = self.top - self.commit
        mem.allocate(self.limit - PAGE_SIZE, PAGE_SIZE, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD)

    def write_teb(self, teb: int) -> None:
        arch, proc = self.proc.arch, self.proc
        self.teb = teb
        TEB.write(proc, arch, teb, "StackBase", self.top)
        TEB.write(proc, arch, teb, "StackLimit", self.limit)
        TEB.write(proc, arch, teb, "DeallocationStack", self.base)

    def contains(self, addr: int) -> bool:
        return self.base <= addr < self.top

    def on_guard_page(self, addr: int) -> Fault | None:
        """Handle a touch of the stack's guard page at ``addr``: grow (None) or overflow."""
        page = addr & ~(PAGE_SIZE - 1)
        mem = self.proc.memory
        mem.clear_guard(page)
        self.limit = page
        teb = self.proc.teb if self.teb is None else self.teb
        if page - PAGE_SIZE > self.base:
            mem.allocate(page - PAGE_SIZE, PAGE_SIZE, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD)
            TEB.write(self.proc, self.proc.arch, teb, "StackLimit", self.limit)
            return None
        TEB.write(self.proc, self.proc.arch, teb, "StackLimit", self.limit)
        return Fault(
            "stack overflow",
            pc=self.proc.cpu.pc,
            address=addr,
            status=NtStatus.STACK_OVERFLOW,
            detail=f"stack reservation 0x{self.base:x}-0x{self.top:x} is exhausted",
        )
