"""``proc.restore(snapshot)`` of a process with 100,000 live blocks, next to what it replaces:
building the same process again (a new Process, the allocator loaded, the 100,000 allocations
replayed inside the emulator). Also the snapshot's own time and size."""

from __future__ import annotations

import time

from emu import Process
from emu.heap.allocator import Allocator
from emu.heap.registry import ALLOCATOR_NAMES
from emu.heap.replay.workload import Op, OpKind

from .common import best_of

LIVE = 100_000
SIZES = (0x10, 0x20, 0x30, 0x40, 0x80)


def _build(arch: str, kind: str) -> tuple[Process, Allocator, int]:
    proc = Process(arch, time_limit=0)
    a = Allocator(proc, proc.load_allocator(kind))
    heap = a.create_heap()
    ops = [Op(OpKind.ALLOC, id=i, size=SIZES[i % len(SIZES)]) for i in range(LIVE)]
    result = a.replay(ops, heap, time_limit=0)
    assert all(result.values), "an allocation failed"
    return proc, a, heap


def measure(arch: str, kind: str = "builtin") -> list[dict[str, object]]:
    t0 = time.perf_counter()
    proc, a, heap = _build(arch, kind)
    rebuild = time.perf_counter() - t0
    snap = proc.snapshot()
    take = best_of(proc.snapshot, rounds=3)

    def restore_after_work() -> None:
        for _ in range(100):  # some work to undo, as in "restore and try the next sequence"
            a.free(heap, a.alloc(heap, 0x100))
        proc.restore(snap)

    restore = best_of(lambda: proc.restore(snap), rounds=5)
    restore_dirty = best_of(restore_after_work, rounds=3)
    assert a.validate(heap)
    mib = snap.memory_bytes / (1 << 20)
    return [
        {
            "benchmark": f"restore, {LIVE:,} live blocks ({kind})",
            "arch": arch,
            "value": round(restore * 1e3, 2),
            "unit": "ms",
            "reference": round(rebuild * 1e3, 1),
            "reference_name": "building the process again",
            "ratio": round(restore / rebuild, 4),
        },
        {
            "benchmark": f"restore after 100 alloc+free ({kind})",
            "arch": arch,
            "value": round(restore_dirty * 1e3, 2),
            "unit": "ms",
            "reference": round(restore * 1e3, 2),
            "reference_name": "restore alone",
            "ratio": round(restore_dirty / restore, 2),
        },
        {
            "benchmark": f"snapshot, {LIVE:,} live blocks ({kind})",
            "arch": arch,
            "value": round(take * 1e3, 2),
            "unit": f"ms ({mib:.1f} MiB committed)",
            "reference": round(restore * 1e3, 2),
            "reference_name": "restore",
            "ratio": round(take / restore, 2),
        },
    ]


def run() -> list[dict[str, object]]:
    return [
        row for kind in ALLOCATOR_NAMES for arch in ("x86", "x64") for row in measure(arch, kind)
    ]
