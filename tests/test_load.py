"""Load test (issue 20): 8 threads make 100 processes each while another thread calls runaway
code with wall-clock limits. Every limit must fire within 10% of its value (never early), and
no thread may see an exception.

"Fires" is when the shared watchdog stops the run (its ``uc_emu_stop``, recorded by wrapping
it). The calling thread sees the EmulationError once it gets the GIL back, which under 8
CPU-bound Python threads can take a further ~50-200 ms (measured: 1.5 s limits returned after
up to 1.69 s); that is printed, and bounded only loosely (no hang).

The creator threads alternate architectures (x86, x64, x86, ...) and so does the timed
thread, so one run covers both. ``HEAPEMU_LOAD_PROCESSES`` sets the processes per thread
(default 100, the full size: about 30 s on a 2-core machine; ``make fuzz`` runs it too).
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from emu import EmulationError, Process
from emu.cpu import cpu as cpu_module
from emu.win.ntdefs import MEM_COMMIT, MEM_RESERVE, PAGE_EXECUTE_READ

THREADS = 8
PER_THREAD = int(os.environ.get("HEAPEMU_LOAD_PROCESSES") or 100)
# seconds: the watchdog checks every 20 ms and needs the GIL to stop a run, which 8 busy
# threads delay by up to ~0.15 s (measured): 10% of a limit shorter than ~1.5 s is within that
LIMITS = (2.0, 3.0)
SLACK = 0.10  # a limit fires within 10% of its value


def code(proc: Process, machine: bytes) -> int:
    """``machine`` in a fresh executable page (no assembler: the creators stay cheap)."""
    base, _ = proc.memory.allocate(0, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_EXECUTE_READ)
    proc.write(base, machine)
    return base


# Alone: a sibling pytest-xdist worker's test on the other core once delayed a 2 s limit to 2.34 s
# (the watchdog thread waits for a core and then for the GIL); tests/conftest.py.
@pytest.mark.alone
def test_time_limits_fire_on_time_while_threads_make_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stops: list[float] = []
    watchdog = cpu_module._watchdog()
    real_stop = watchdog._stop_fn

    def stop(handle: object) -> int:
        stops.append(time.monotonic())  # the watchdog thread holds the GIL here
        return int(real_stop(handle))

    monkeypatch.setattr(watchdog, "_stop_fn", stop)
    errors: list[str] = []
    made = [0] * THREADS
    done = threading.Event()

    def make(index: int) -> None:
        arch = ("x86", "x64")[index % 2]
        try:
            for _ in range(PER_THREAD):
                proc = Process(arch)
                ret = code(proc, b"\xb8\x2a\x00\x00\x00\xc3")  # mov eax, 42; ret
                assert proc.call(ret) == 42
                made[index] += 1
        except BaseException as e:  # reported below, with the thread it happened in
            errors.append(f"creator {index} ({arch}): {type(e).__name__}: {e}")

    # (arch, limit, seconds until the watchdog stopped the run, until the call returned)
    timings: list[tuple[str, float, float, float]] = []

    def call_with_limits() -> None:
        try:
            procs = {arch: Process(arch) for arch in ("x86", "x64")}
            loops = {arch: code(p, b"\xeb\xfe") for arch, p in procs.items()}  # jmp $
            i = 0
            while not done.is_set() or i < 2 * len(LIMITS):
                arch, limit = ("x86", "x64")[i % 2], LIMITS[(i // 2) % len(LIMITS)]
                start = time.monotonic()
                try:
                    procs[arch].call(loops[arch], time_limit=limit)
                    errors.append(f"timed {arch}: the runaway call returned")
                except EmulationError as e:
                    returned = time.monotonic() - start
                    fired = next((t - start for t in stops if t >= start), float("inf"))
                    timings.append((arch, limit, fired, returned))
                    if "wall-clock" not in e.kind:
                        errors.append(f"timed {arch}: {e.kind}")
                i += 1
        except BaseException as e:
            errors.append(f"timed thread: {type(e).__name__}: {e}")

    creators = [threading.Thread(target=make, args=(i,)) for i in range(THREADS)]
    timed = threading.Thread(target=call_with_limits)
    timed.start()
    for t in creators:
        t.start()
    for t in creators:
        t.join(timeout=600)
    done.set()
    timed.join(timeout=60)
    assert not errors, "\n".join(errors)
    assert not timed.is_alive() and not any(t.is_alive() for t in creators)
    assert made == [PER_THREAD] * THREADS
    late = [(a, lim, round(f, 3)) for a, lim, f, _ in timings if not lim <= f <= lim * (1 + SLACK)]
    assert not late, f"limits that did not fire within {SLACK:.0%}: {late} (of {len(timings)})"
    assert {a for a, _, _, _ in timings} == {"x86", "x64"}
    worst = max(r / limit - 1 for _, limit, _, r in timings)
    print(
        f"\n{len(timings)} limits: fired late by at most "
        f"{max(f / limit - 1 for _, limit, f, _ in timings):.1%}; returned late by at most "
        f"{worst:.1%} (the GIL)"
    )
    assert all(r < limit + 5 for _, limit, _, r in timings)  # the caller was not left hanging
