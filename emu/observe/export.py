"""Allocation events out of the process: JSON Lines, Chrome/Perfetto trace events, a rich table.

The Perfetto trace uses the process's instruction count as its clock (1 instruction = 1 µs of
trace time), so a trace is deterministic: the same run always gives the same file. Each call is
a complete slice ("ph": "X") nested by time; each system call is an instant event ("ph": "i").
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.table import Table

from emu.observe.events import AllocationEvent


def _flat(events: Iterable[AllocationEvent]) -> list[AllocationEvent]:
    out: list[AllocationEvent] = []
    for ev in events:
        out.extend(ev.walk())
    return sorted(out, key=lambda e: e.seq)


def write_jsonl(events: Iterable[AllocationEvent], path: str | Path) -> int:
    """One JSON object per event (nested ones included, children referenced by seq)."""
    n = 0
    with open(path, "w") as f:
        for ev in _flat(events):
            f.write(json.dumps(ev.to_json()) + "\n")
            n += 1
    return n


def perfetto_trace(
    events: Iterable[AllocationEvent], process_name: str = "heapemu"
) -> dict[str, Any]:
    trace: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": 1, "args": {"name": process_name}},
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "main"}},
    ]
    for ev in _flat(events):
        end = ev.end if ev.end is not None else ev.start + ev.instructions
        trace.append(
            {
                "name": ev.name,
                "cat": "heap",
                "ph": "X",
                "pid": 1,
                "tid": 1,
                "ts": ev.start,
                "dur": max(end - ev.start, 1),
                "args": {
                    "function": ev.function,
                    "args": ev.describe_args(),
                    "ret": None if ev.ret is None else f"0x{ev.ret:x}",
                    "instructions": ev.instructions,
                    "blocks": ev.blocks,
                    "caller": ev.caller,
                    "violations": ev.violations,
                },
            }
        )
        if ev.depth == 0:
            for rec, ts in zip(ev.syscalls, ev.syscall_times, strict=True):
                trace.append(
                    {
                        "name": rec.name,
                        "cat": "syscall",
                        "ph": "i",
                        "s": "t",
                        "pid": 1,
                        "tid": 1,
                        "ts": ts,
                        "args": {
                            "status": rec.status_name,
                            **{k: str(v) for k, v in rec.args.items()},
                        },
                    }
                )
    return {"traceEvents": trace, "displayTimeUnit": "ns"}


def write_perfetto(events: Iterable[AllocationEvent], path: str | Path) -> int:
    data = perfetto_trace(events)
    Path(path).write_text(json.dumps(data))
    return len(data["traceEvents"])


def events_table(events: Iterable[AllocationEvent], title: str = "allocation events") -> Table:
    table = Table(title=title)
    for col in ("#", "function", "arguments", "result", "instr", "blocks", "syscalls", "caller"):
        table.add_column(col)
    for ev in _flat(events):
        ret = "-" if ev.ret is None else f"0x{ev.ret:x}"
        calls = ", ".join(r.name.replace("VirtualMemory", "VM") for r in ev.syscalls)
        name = "  " * ev.depth + ev.name
        if ev.violations:
            name += " [red](!)[/red]"
        table.add_row(str(ev.seq), name, ev.describe_args(), ret, str(ev.instructions),
                      str(ev.blocks), calls, ev.caller)  # fmt: skip
    return table
