"""Observation costs, each next to its reference in the same run:

- instruction tracing (address + symbol + bytes + disassembly, to a file) of one long call:
  traced instructions/s vs the same call untraced (target: >= 10 M traced instructions/s);
- allocation events and calling-convention checks on 10,000 allocator calls: events vs the
  plain run (target: <= 2x), the run with checks vs the run with events only (target: <= 1.2x).
  The recorder logs calls in C and makes AllocationEvents (and checks conventions) when they
  are read: every timed run with a recorder reads all its events (``rec.all``,
  ``rec.violations``) inside the timing; one more row shows recording alone, never read.

Configurations alternate round by round; the best round of each counts.
"""

from __future__ import annotations

import os

from emu import Process
from emu.heap.allocator import Allocator
from emu.observe.events import EventRecorder

from .common import best_of

LOOP = """
loop_fn:
    xor eax, eax
    mov edx, {n}
next:
    add eax, edx
    xor eax, 0x5a5a
    rol eax, 3
    sub eax, 7
    and eax, 0x7fffffff
    dec edx
    jnz next
    ret
"""
ITERATIONS = 300_000  # 7 instructions per iteration: ~2.1 M instructions per call
ROUNDS = int(os.environ.get("HEAPEMU_BENCH_ROUNDS", 3))  # best of: more on a busy host


def trace_speed(arch: str) -> dict[str, object]:
    proc = Process(arch)
    mod = proc.load_flat(LOOP.format(n=ITERATIONS), "loop")
    f = mod.exports["loop_fn"]
    proc.call(f)
    t_plain = t_traced = float("inf")
    instructions = 0
    for _ in range(ROUNDS):  # alternating: a shared host's load shifts within seconds
        t_plain = min(t_plain, best_of(lambda: proc.call(f), 1))
        with open(os.devnull, "w") as out, proc.trace(out) as tracer:
            proc.call(f)  # translate with the hook
            t_traced = min(t_traced, best_of(lambda: proc.call(f), 1))
        instructions = tracer.instructions // 2
    return {
        "benchmark": "instruction trace (addr+disasm)",
        "arch": arch,
        "value": round(instructions / t_traced / 1e6, 2),
        "unit": "M instr/s traced",
        "reference": round(instructions / t_plain / 1e6, 1),
        "reference_name": "untraced M instr/s",
        "ratio": round(t_traced / t_plain, 1),
    }


def convention_cost(arch: str, kind: str = "builtin") -> list[dict[str, object]]:
    proc = Process(arch)
    module = proc.load_allocator(kind)
    a = Allocator(proc, module)
    heap = a.create_heap()
    calls = 10_000

    def work() -> None:
        for _ in range(calls // 2):
            a.free(heap, a.alloc(heap, 0x100))

    def work_read(rec: EventRecorder) -> None:
        work()
        if len(rec.all) != calls or rec.violations:  # the events made, the checks done
            raise AssertionError(f"{len(rec.all)} events, violations {rec.violations[:3]}")

    work()
    t_plain = t_events = t_checked = t_unread = float("inf")
    for _ in range(ROUNDS):  # alternating: a shared host's load shifts within seconds
        t_plain = min(t_plain, best_of(work, 1))
        with proc.record() as rec:
            t_events = min(t_events, best_of(lambda: work_read(rec), 1))
        with proc.record(check_conventions=True) as rec:
            t_checked = min(t_checked, best_of(lambda: work_read(rec), 1))
        with proc.record():
            t_unread = min(t_unread, best_of(work, 1))
    rows = []
    for name, t, ref, ref_name in (
        ("events (10k allocator calls, read)", t_events, t_plain, "plain run"),
        ("events recorded, never read", t_unread, t_plain, "plain run"),
        ("events + convention checks", t_checked, t_events, "events only"),
        ("events + convention checks", t_checked, t_plain, "plain run"),
    ):
        rows.append(
            {
                "benchmark": f"{name} [{kind}]",
                "arch": arch,
                "value": round(t / calls * 1e6, 1),
                "unit": "µs/call",
                "reference": round(ref / calls * 1e6, 1),
                "reference_name": ref_name,
                "ratio": round(t / ref, 2),
            }
        )
    return rows


def run() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = [trace_speed(a) for a in ("x86", "x64")]
    for arch in ("x86", "x64"):
        rows += convention_cost(arch)
    return rows
