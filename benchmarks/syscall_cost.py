"""What each system call of a Wine heap replay costs in Python: the time inside the kernel's
entry (``ProcessCore._serve_syscall``: dispatch, the service, its record, the clock), by
service, in thread CPU time, over ROUNDS replays of the replay benchmark's tape (100,000
``typical`` operations). The entry from Unicorn into the hook and the TLB refills after the
call are outside it.

    python -m benchmarks.syscall_cost x86 [x64 ...]

Prints one line per service (calls per replay, µs per call) and the best replay's CPU time.
Nothing is written.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from emu import Process
from emu.heap.allocator import Allocator
from emu.heap.replay.run import replay
from emu.heap.replay.tape import Tape
from emu.heap.replay.workload import synthetic
from emu.process.core import ProcessCore

ROUNDS = 5


def measure(arch: str, tape: Tape) -> None:
    proc = Process(arch, time_limit=0)
    a = Allocator(proc, proc.load_allocator("wine"), name="wine")

    def one() -> None:
        heap = a.create_heap()
        replay(a, tape, heap, time_limit=0)
        a.destroy(heap)

    one()  # warm: translations, the heap's first regions
    totals: dict[str, list[int]] = {}
    serve = ProcessCore._serve_syscall
    clock = time.thread_time_ns

    def timed(self: ProcessCore, number: int, pc: int, args: Callable[[int], Any]) -> None:
        t0 = clock()
        serve(self, number, pc, args)
        spent = clock() - t0
        last = self.syscalls.last
        entry = totals.setdefault(last.name if last is not None else "?", [0, 0])
        entry[0] += 1
        entry[1] += spent

    # the hooks call the method through the class, so patching it there sees every call
    ProcessCore._serve_syscall = timed  # type: ignore[method-assign]
    try:
        best = float("inf")
        for _ in range(ROUNDS):
            c0 = time.thread_time()
            one()
            best = min(best, time.thread_time() - c0)
    finally:
        ProcessCore._serve_syscall = serve  # type: ignore[method-assign]
    for name, (calls, ns) in sorted(totals.items()):
        print(f"{arch} {name}: {calls // ROUNDS} calls/replay, {ns / calls / 1000:.1f} µs/call")
    print(f"{arch} replay CPU time (best of {ROUNDS}): {best:.4f} s")


def main(argv: list[str]) -> int:
    tape = Tape.from_ops(synthetic(ops=100_000, seed=1, sizes="typical"))
    for arch in argv or ["x86", "x64"]:
        measure(arch, tape)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
