"""Peak memory of a 1M-operation replay, each configuration in a subprocess of its own.

The child loads the allocator, notes its resident set (the baseline: Python, Unicorn, the
process image), resets the peak (``/proc/self/clear_refs`` = 5, Linux >= 4.0), generates the
synthetic trace straight into a tape, replays it and reports VmHWM. The figure is the peak
above the baseline beyond the tape and the results themselves; target < 64 MiB.

    python -m benchmarks memory
    python -m benchmarks.bench_memory --child x64 builtin 1000000     (one measurement)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

OPS = 1_000_000
TARGET_MIB = 64
MIB = 1 << 20


def _status_kib(field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def child(arch: str, allocator: str, ops: int) -> dict[str, object]:
    from emu import Process
    from emu.heap.allocator import Allocator
    from emu.heap.replay.run import load_driver, replay
    from emu.heap.replay.tape import Tape
    from emu.heap.replay.workload import synthetic

    proc = Process(arch, time_limit=0)
    module = proc.load_allocator(allocator)
    a = Allocator(proc, module)
    load_driver(proc)
    heap = a.create_heap()
    baseline = _status_kib("VmRSS") * 1024
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        reset = False  # then VmHWM includes the start-up peak: the figure is an upper bound
    t0 = time.perf_counter()
    tape = Tape.from_ops(synthetic(ops=ops, seed=1, sizes="typical"))
    t1 = time.perf_counter()
    result = replay(a, tape, heap, time_limit=0)
    peak = _status_kib("VmHWM") * 1024
    tape_bytes = len(tape.data)
    results_bytes = len(result.values) * result.values.itemsize
    return {
        "arch": arch,
        "allocator": allocator,
        "ops": ops,
        "baseline_bytes": baseline,
        "peak_bytes": peak,
        "tape_bytes": tape_bytes,
        "results_bytes": results_bytes,
        "overhead_bytes": peak - baseline - tape_bytes - results_bytes,
        "peak_reset": reset,
        "encode_seconds": t1 - t0,
        "replay_seconds": result.seconds,
        "driver_calls": result.driver_calls,
        "syscalls": result.syscalls,
        "failed_allocs": result.summary()["alloc"]["failed"],
    }


def measure(arch: str, allocator: str, ops: int = OPS) -> dict[str, object]:
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_memory", "--child", arch, allocator, str(ops)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if p.returncode != 0:
        raise RuntimeError(f"memory child {arch} {allocator} failed:\n{p.stderr[-3000:]}")
    m: dict[str, object] = json.loads(p.stdout)
    overhead = int(m["overhead_bytes"])  # type: ignore[call-overload]
    return {
        "benchmark": f"1M-op replay peak RSS beyond tape+results ({allocator})",
        "arch": arch,
        "value": round(overhead / MIB, 1),
        "unit": "MiB",
        "reference": TARGET_MIB,
        "reference_name": "target",
        "ratio": round(overhead / MIB / TARGET_MIB, 2),
        **m,
    }


def run() -> list[dict[str, object]]:
    return [measure(arch, alloc) for alloc in ("builtin", "wine") for arch in ("x86", "x64")]


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    else:
        for row in run():
            print(row)
