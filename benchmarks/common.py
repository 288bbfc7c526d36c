"""Shared benchmark plumbing: timing, the machine description, the results file."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import subprocess
import sys
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


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` figure in KiB (VmRSS, VmHWM); 0 where there is none."""
    m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def reset_peak() -> bool:
    """Reset VmHWM (``/proc/self/clear_refs`` = 5, Linux >= 4.0); False where it cannot be,
    and the peak then includes the set-up: an upper bound."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
        return True
    return False


def run_child(module: str, *args: str, timeout: float) -> dict[str, object]:
    """Run ``python -m MODULE --child ARGS`` (a measurement in a fresh process, so its memory
    figures are its own) and return the JSON it prints."""
    p = subprocess.run(
        [sys.executable, "-m", module, "--child", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if p.returncode != 0:
        raise RuntimeError(f"{module} child {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    result: dict[str, object] = json.loads(p.stdout)
    return result
