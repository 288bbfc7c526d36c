"""Runs under another checkout of heapemu (benchmarks/bench_replay.py exports the baseline commit
and sets PYTHONPATH to it): replays the benchmark's tape with *that* heapemu, one round per
line read from stdin, printing the round's seconds, its CPU seconds (the whole round: heap
creation, replay, destruction) and its results' hash. Uses only API that
both the baseline and the current heapemu have.

    python replay_rounds.py ARCH KIND OPS WARMUP
"""

from __future__ import annotations

import hashlib
import json
import sys
import time


def main() -> int:
    from emu import Process
    from emu.heap.allocator import Allocator
    from emu.heap.registry import ALLOCATOR_NAMES  # (the baseline commit has the registry)
    from emu.heap.replay.run import replay
    from emu.heap.replay.tape import Tape
    from emu.heap.replay.workload import synthetic

    arch, kind, ops, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if kind not in ALLOCATOR_NAMES:  # an allocator added after the baseline
        print("unknown allocator", flush=True)
        return 0
    tape = Tape.from_ops(synthetic(ops=ops, seed=1, sizes="typical"))
    proc = Process(arch, time_limit=0)
    a = Allocator(proc, proc.load_allocator(kind), name=kind)

    def fresh(t: Tape):  # type: ignore[no-untyped-def]
        heap = a.create_heap()
        r = replay(a, t, heap, time_limit=0)
        a.destroy(heap)
        return r

    fresh(tape.head(warmup))
    print("ready", flush=True)
    for _ in sys.stdin:
        c0 = time.thread_time()
        r = fresh(tape)
        cpu = time.thread_time() - c0
        digest = hashlib.sha256(r.values.tobytes()).hexdigest()[:16]
        print(json.dumps({"seconds": r.seconds, "cpu": cpu, "results": digest}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
