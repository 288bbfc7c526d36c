"""A thread stack as Windows makes it: a reservation, committed top pages, a guard page below.

Touching the guard page commits it and moves the guard one page down (the kernel's stack
growth, which also lowers TEB.StackLimit). The kernel knows the stack only through the running
thread's TEB: a guard page between TEB.DeallocationStack and TEB.StackBase grows it, wherever
the program pointed them (``grow_stack``); a guard page anywhere else is one-shot and raises
STATUS_GUARD_PAGE_VIOLATION. The bottom page of the reservation is never
committed, and above it lies the thread's *guaranteed* area: the stack a handler of
STATUS_STACK_OVERFLOW runs on. When the guard page is touched and a new one would have to go
into that area, the kernel commits the whole area (no guard page is left), sets StackLimit to
its bottom and raises STATUS_STACK_OVERFLOW (0xC00000FD) at the faulting instruction; the
handler then runs in what remains. Sources: Windows Internals (7th ed., part 1, ch. 5,
"Stacks": the reservation, the committed top and the guard page that moves down); MSDN "Thread
Stack Size" (stack grows "until ... the reserved size minus one page"), SetThreadStackGuarantee
("the minimum size of the stack ... that will be available during any stack overflow
exceptions") and _resetstkoflw (without it "there are no guard pages after the previous
exception", and the next overflow ends the process); the commit of the guaranteed area and
StackLimit at its bottom as ReactOS's MmCheckForUserStackOverflow and Wine's stack growth do
it (read for the facts, not copied).

The area is TEB.GuaranteedStackBytes (which SetThreadStackGuarantee sets: Wine's kernelbase
writes the TEB field, at least 8 KiB on x64) or, when that is smaller, a default sized for
Wine's KiUserExceptionDispatcher on each architecture (GUARANTEE), with the unhandled path
through kernelbase's UnhandledExceptionFilter as its deepest user.
"""

from __future__ import annotations

import contextlib
import struct
from typing import TYPE_CHECKING

from emu.errors import Fault, NtStatusError
from emu.nt.memory import align_up
from emu.win.layouts import PEB, TEB
from emu.win.ntdefs import MEM_COMMIT, MEM_RESERVE, PAGE_GUARD, PAGE_READWRITE, PAGE_SIZE, NtStatus

if TYPE_CHECKING:
    from emu.process.core import ProcessCore

# The default guaranteed area. Windows' is one page (more on x64); Wine's dispatcher needs more
# than that to run a handler of the overflow and, when none takes it, kernelbase's
# UnhandledExceptionFilter up to NtTerminateProcess. Measured below the faulting stack pointer
# (tests/programs/exceptions.c "overflow" / "overflow-caught", lowest byte written): x86
# 0x1294 / 0x422 bytes, x64 0x1E88 / 0x1708. The overflow comes when the touched page is the
# lowest one above the area, so the handler has the area plus what lies below its stack
# pointer in that page. It cannot be larger: Windows lets a program touch its stack down to
# DeallocationStack + 4 pages with no overflow (kernel32/tests virtual.c test_stack_commit),
# i.e. the guard page at DeallocationStack + 3 pages, above the bottom page and these two.
GUARANTEE = {"x86": 0x2000, "x64": 0x2000}


# A new thread's stack starts with at least this much committed: Wine's ntdll/tests virtual.c
# test_RtlCreateUserStack expects 0x2000 on Windows when the image asks 0x1000 (and 0x4000
# for CreateThread's 0x3f00: page rounding).
THREAD_COMMIT_MIN = 2 * PAGE_SIZE
RESERVE_GRANULARITY = 0x10000  # the allocation granularity
RESERVE_RAISED_TO = 0x100000  # MSDN CreateThread: "rounded up to the nearest multiple of 1 MB"
# Wine's thread start (ntdll signal_start_thread, the end of LdrInitializeThunk) clears the
# 0xf0000 bytes below the start CONTEXT's page with rep stos (upwards, so no guard page can
# grow the stack for it) before NtContinue into the CONTEXT: Wine commits whole stacks, Windows
# does not. A new thread's stack has the CONTEXT's page and those bytes committed until that
# NtContinue, then is ``settle``d to what the thread asked for; its reserve is at least 1 MiB
# (Wine's own minimum) so they fit. A difference from Windows, where smaller reserves exist.
WINE_START_COMMIT = PAGE_SIZE + 0xF0000
WINE_START_RESERVE = 0x100000


def image_stack_sizes(proc: ProcessCore) -> tuple[int, int]:
    """(SizeOfStackCommit, SizeOfStackReserve) of the process's image (PEB.ImageBaseAddress),
    the defaults of a thread that asks 0; the architecture's defaults without an image."""
    arch = proc.arch
    defaults = (arch.default_stack_commit, arch.default_stack_reserve)
    base = PEB.read(proc, arch, proc.peb, "ImageBaseAddress") if proc.peb else 0
    if not base or not proc.memory.is_accessible(base, 0x40):
        return defaults
    nt = base + struct.unpack("<I", proc.read(base + 0x3C, 4))[0]  # IMAGE_DOS_HEADER.e_lfanew
    # IMAGE_OPTIONAL_HEADER(32/64): SizeOfStackReserve at +0x48, SizeOfStackCommit after it
    opt, n = nt + 0x18, arch.ptr_size
    if not proc.memory.is_accessible(opt + 0x48, 2 * n):
        return defaults
    reserve, commit = struct.unpack(f"<2{arch.ptr_fmt[-1]}", proc.read(opt + 0x48, 2 * n))
    return commit or defaults[0], reserve or defaults[1]


def thread_stack_sizes(proc: ProcessCore, commit: int, reserve: int) -> tuple[int, int]:
    """(commit, reserve) of a new thread's stack as NtCreateThreadEx makes it from its
    StackSize / MaximumStackSize: 0 takes the image's value, the reserve is rounded to the
    allocation granularity and the commit to pages (at least THREAD_COMMIT_MIN); a commit that
    does not fit below the reserve raises the reserve to a multiple of 1 MiB (MSDN
    CreateThread, "Thread Stack Size"). The commit keeps a guard page and the never-committed
    bottom page under it."""
    image_commit, image_reserve = image_stack_sizes(proc)
    commit = align_up(max(commit or image_commit, THREAD_COMMIT_MIN), PAGE_SIZE)
    reserve = align_up(reserve or image_reserve, RESERVE_GRANULARITY)
    if commit >= reserve:
        reserve = align_up(commit, RESERVE_RAISED_TO)
    reserve = max(reserve, WINE_START_RESERVE)
    return min(commit, reserve - 2 * PAGE_SIZE), reserve


class ThreadStack:
    def __init__(
        self,
        proc: ProcessCore,
        reserve: int,
        commit: int,
        highest: int | None = None,
        start_commit: int = 0,
    ):
        """``commit`` bytes at the top committed, a guard page below; ``start_commit``: more
        committed until ``settle`` (what Wine's thread start clears, WINE_START_COMMIT)."""
        self.proc = proc
        self.reserve = align_up(reserve, 0x10000)
        self.commit = align_up(max(commit, PAGE_SIZE), PAGE_SIZE)
        if max(self.commit, start_commit) + 2 * PAGE_SIZE > self.reserve:
            raise ValueError(f"stack commit 0x{commit:x} does not fit in reserve 0x{reserve:x}")
        self.base, _ = proc.memory.allocate(
            0, self.reserve, MEM_RESERVE, PAGE_READWRITE, usage="stack", highest=highest
        )
        self.top = self.base + self.reserve  # TEB.StackBase
        self.teb: int | None = None  # the TEB of the thread it belongs to (write_teb)
        self.limit = self.top  # TEB.StackLimit (reset sets it)
        self.reset(max(self.commit, start_commit))

    def settle(self) -> None:
        """Down to what the thread asked for: ``commit`` bytes at the top, a guard page below,
        the rest reserved (what a new thread's code first sees on Windows)."""
        if self.limit >= self.top - self.commit:
            return
        mem = self.proc.memory
        low = self.top - self.commit
        mem.free(self.base, low - self.base, 0x4000)  # MEM_DECOMMIT
        mem.allocate(low - PAGE_SIZE, PAGE_SIZE, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD)
        self.limit = low
        if self.teb is not None:
            TEB.write(self.proc, self.proc.arch, self.teb, "StackLimit", self.limit)

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

    def reset(self, commit: int = 0) -> None:
        """Back to the initial state: top pages committed (``commit``, by default the
        stack's), one guard page below them."""
        mem = self.proc.memory
        commit = commit or self.commit
        mem.free(self.base, self.reserve, 0x4000)  # MEM_DECOMMIT everything
        mem.allocate(self.top - commit, commit, MEM_COMMIT, PAGE_READWRITE)
        self.limit = self.top - commit
        mem.allocate(self.limit - PAGE_SIZE, PAGE_SIZE, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD)

    def write_teb(self, teb: int) -> None:
        arch, proc = self.proc.arch, self.proc
        self.teb = teb
        TEB.write(proc, arch, teb, "StackBase", self.top)
        TEB.write(proc, arch, teb, "StackLimit", self.limit)
        TEB.write(proc, arch, teb, "DeallocationStack", self.base)

    def contains(self, addr: int) -> bool:
        return self.base <= addr < self.top


def guarantee(proc: ProcessCore, teb: int) -> int:
    """Bytes of the guaranteed area: TEB.GuaranteedStackBytes rounded up to pages, at least
    GUARANTEE for the architecture."""
    asked = TEB.read(proc, proc.arch, teb, "GuaranteedStackBytes") if teb else 0
    return max(align_up(asked, PAGE_SIZE), GUARANTEE[proc.arch.name])


def teb_stack(proc: ProcessCore, teb: int) -> tuple[int, int]:
    """[DeallocationStack, StackBase) of the thread whose TEB is ``teb``: its stack as the
    kernel sees it. A program may change them (kernel32/tests virtual.c test_stack_commit
    switches to a stack of its own and points the TEB at it)."""
    arch = proc.arch
    return TEB.read(proc, arch, teb, "DeallocationStack"), TEB.read(proc, arch, teb, "StackBase")


def guard_set(proc: ProcessCore, start: int, size: int) -> None:
    """The program made [start, start + size) guard pages (NtAllocateVirtualMemory's
    MEM_COMMIT or NtProtectVirtualMemory with PAGE_GUARD): where that lies in the committed
    part of the running thread's stack, [StackLimit, StackBase), the stack shrinks to what is
    above it: StackLimit moves up to its end. Clearing the guard does not move it back; the
    next touch of a guard page sets it again (Windows, per ntdll/tests virtual.c
    test_stack_growth_thread: "setting a guard page shrinks stack automatically")."""
    arch = proc.arch
    teb = proc.threads.current.teb or proc.teb
    limit = TEB.read(proc, arch, teb, "StackLimit")
    top = TEB.read(proc, arch, teb, "StackBase")
    end = start + size
    if start < top and end > limit:
        TEB.write(proc, arch, teb, "StackLimit", min(end, top))


def running_stack(proc: ProcessCore) -> tuple[int, int, int]:
    """(TEB, DeallocationStack, StackBase) of the thread that runs now: the only stack a guard
    page touch grows (MmAccessFault's user stack check)."""
    teb = proc.threads.current.teb or proc.teb
    low, high = teb_stack(proc, teb)
    return teb, low, high


def touch_guard(proc: ProcessCore, page: int) -> tuple[bool, Fault | None]:
    """The running thread touched the guard page ``page``, from user mode or through the
    kernel: (False, None) when it is not on its stack (a plain guard page, its caller's to
    answer), else the stack grown: (True, None), or (True, the STATUS_STACK_OVERFLOW fault)."""
    teb, low, high = running_stack(proc)
    if not low <= page < high:
        return False, None
    return True, grow_stack(proc, teb, page, low)


def grow_stack(proc: ProcessCore, teb: int, addr: int, base: int | None = None) -> Fault | None:
    """A touch of a guard page at ``addr`` on the stack of the thread whose TEB is ``teb``
    (``base``: its DeallocationStack, read from the TEB by default): the page is committed
    and the next one down becomes the guard page, TEB.StackLimit the touched page (even when
    the program had moved it: ntdll/tests virtual.c test_stack_growth_thread); None. When
    the new guard page would enter the guaranteed area, the rest down to the bottom page is
    committed with no guard page and the STATUS_STACK_OVERFLOW fault is returned."""
    page = addr & ~(PAGE_SIZE - 1)
    mem, arch = proc.memory, proc.arch
    mem.clear_guard(page)
    if base is None:
        base = teb_stack(proc, teb)[0]
    floor = base + PAGE_SIZE  # the reservation's last page stays reserved
    guaranteed = floor + guarantee(proc, teb)  # the guaranteed area is [floor, guaranteed)
    if page - PAGE_SIZE >= guaranteed:
        _commit(proc, page - PAGE_SIZE, PAGE_SIZE, PAGE_READWRITE | PAGE_GUARD)
        TEB.write(proc, arch, teb, "StackLimit", page)
        return None
    # no room for another guard page: the rest of the stack is the handler's
    if page > floor:
        _commit(proc, floor, page - floor, PAGE_READWRITE)
    TEB.write(proc, arch, teb, "StackLimit", min(page, floor))
    return Fault(
        "stack overflow",
        pc=proc.cpu.pc,
        address=addr,
        status=NtStatus.STACK_OVERFLOW,
        detail=f"stack reservation from 0x{base:x} is exhausted",
    )


def _commit(proc: ProcessCore, addr: int, size: int, protect: int) -> None:
    """Commit pages of a stack the TEB names: a program's TEB may name pages that are not
    one reservation (or not reserved at all); those stay as they are."""
    with contextlib.suppress(NtStatusError):
        proc.memory.allocate(addr, size, MEM_COMMIT, protect)
