"""Seed 001: a block freed through another heap than the one holding it (two C runtimes, each
with its own heap, in one process). ``CrossHeapFreeDetector`` watches ntdll's RtlAllocateHeap /
RtlFreeHeap with breakpoints and asks the heap walkers which heap of PEB.ProcessHeaps holds the
freed block; it reports both call stacks."""

from __future__ import annotations

from dataclasses import dataclass

from emu.heap.registry import walk_heap
from emu.observe.breakpoints import BreakContext, Breakpoint, add_breakpoint
from emu.observe.events import AllocationEvent, EventRecorder
from emu.observe.stackwalk import Frame, StackWalker
from emu.process.core import ProcessCore


@dataclass
class CrossHeapFree:
    """A block freed through a heap it does not belong to (seed 001: two C runtimes)."""

    block: int  # the pointer passed to RtlFreeHeap
    owner: int | None  # the heap whose walk holds the block (None: no heap of PEB.ProcessHeaps)
    freed_through: int  # the heap passed to RtlFreeHeap
    free_stack: list[Frame]
    alloc_stack: list[Frame] | None  # where the block was allocated, when recorded
    alloc_heap: int | None = None  # the heap passed to the allocation

    def __str__(self) -> str:
        owner = f"heap 0x{self.owner:x}" if self.owner is not None else "no heap"
        lines = [
            f"block 0x{self.block:x} belongs to {owner}, freed through heap "
            f"0x{self.freed_through:x}",
            "  freed at:",
            *(f"    {f}" for f in self.free_stack),
        ]
        if self.alloc_stack is not None:
            lines += ["  allocated at:", *(f"    {f}" for f in self.alloc_stack)]
        return "\n".join(lines)


_WALK_REGS = {
    8: ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"),
    4: ("ebx", "esp", "ebp", "esi", "edi"),
}  # fmt: skip


@dataclass
class StackSnapshot:
    """The thread's registers and stack contents at one moment: walking a stack costs tens of
    milliseconds, copying it a few microseconds, so allocations keep a snapshot and only the
    ones a report needs are walked (``frames()``)."""

    pc: int
    regs: dict[str, int]
    sp: int
    data: bytes

    @classmethod
    def take(cls, proc: ProcessCore) -> StackSnapshot:
        cpu = proc.cpu
        regs = {r: cpu.reg(r) for r in _WALK_REGS[proc.arch.ptr_size]}
        sp = cpu.sp
        return cls(cpu.pc, regs, sp, proc.read(sp, proc.current_stack.top - sp))

    def frames(self, proc: ProcessCore) -> list[Frame]:
        """The call stack as it was (the stack memory is swapped back for the walk)."""
        now = proc.read(self.sp, len(self.data))
        proc.write(self.sp, self.data)
        try:
            return StackWalker(proc).walk(self.pc, self.regs)
        finally:
            proc.write(self.sp, now)


class CrossHeapFreeDetector:
    """Watches ntdll!RtlFreeHeap: the heap walkers (``emu.heap.walkers``) say which heap of
    PEB.ProcessHeaps holds each freed block; a block freed through another heap is reported
    with the stack of the free and the stack of its allocation.

        with CrossHeapFreeDetector(proc) as frees:
            proc.program.run()
        for report in frees.reports: print(report)
    """

    def __init__(self, proc: ProcessCore, module: str = "ntdll"):
        self.proc = proc
        self.module = module
        self.reports: list[CrossHeapFree] = []
        self.frees_checked = 0
        self._recorder: EventRecorder | None = None
        self._breakpoints: list[Breakpoint] = []
        self._pending: list[tuple[AllocationEvent, StackSnapshot]] = []
        self._live: dict[int, tuple[AllocationEvent, StackSnapshot]] = {}

    def start(self) -> CrossHeapFreeDetector:
        m = self.module
        allocators = [f"{m}!RtlAllocateHeap", f"{m}!RtlReAllocateHeap"]
        self._recorder = EventRecorder(self.proc, [*allocators, f"{m}!RtlFreeHeap"]).start()
        for name in allocators:
            self._breakpoints.append(add_breakpoint(self.proc, name, self._on_alloc))
        free = add_breakpoint(self.proc, f"{m}!RtlFreeHeap", self._on_free, argc=3)
        self._breakpoints.append(free)
        return self

    def stop(self) -> None:
        for bp in self._breakpoints:
            bp.remove()
        self._breakpoints.clear()
        if self._recorder is not None:
            self._recorder.stop()
            self._recorder = None

    def __enter__(self) -> CrossHeapFreeDetector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_alloc(self, ctx: BreakContext) -> None:
        # the recorder's block hook ran first: its newest event is this call
        assert self._recorder is not None
        event = self._recorder.all[-1]
        if event.address == ctx.address:
            self._pending.append((event, StackSnapshot.take(self.proc)))

    def _settle(self) -> None:
        still = []
        for event, stack in self._pending:
            if not event.finished:
                still.append((event, stack))
            elif event.ret:
                self._live[event.ret] = (event, stack)
        self._pending = still

    def _holds(self, heap: int, block: int) -> bool:
        report = walk_heap(self.proc, heap)
        b = report.block_at(block)
        if b is not None and b.user_ptr == block:
            return True
        return any(lb.user_ptr == block for lb in report.large_blocks)

    def _on_free(self, ctx: BreakContext) -> None:
        heap, _flags, block = ctx.args(3)
        if not block:
            return
        self.frees_checked += 1
        self._settle()
        allocation = self._live.pop(block, None)
        if allocation is not None and allocation[0].args.get("HeapHandle") == heap:
            return  # allocated through this very heap while we watched: no walk needed
        if self._holds(heap, block):
            return
        heaps = [h for h in self.proc.process_heaps if h != heap]
        owner = next((h for h in heaps if self._holds(h, block)), None)
        self.reports.append(
            CrossHeapFree(
                block=block,
                owner=owner,
                freed_through=heap,
                free_stack=ctx.stack(),
                alloc_stack=allocation[1].frames(self.proc) if allocation else None,
                alloc_heap=allocation[0].args.get("HeapHandle") if allocation else None,
            )
        )
