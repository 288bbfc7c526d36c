"""Shared benchmark plumbing: timing, the machine description, the results file."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import unicorn

RESULTS = Path(__file__).parent / "results"


def best_of(fn: Callable[[], None], rounds: int = 5) -> float:
    """Seconds taken by ``fn``: the minimum over rounds (the least disturbed by a noisy host)."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def machine() -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "unicorn": unicorn.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or _cpu_model(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def save(name: str, rows: list[dict[str, object]]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1) + "\n")
    return path
