"""What a scenario run produces: dataclasses with a JSON form (``to_json``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from emu.errors import EmulationError
from emu.heap.allocator import HeapWalkEntry
from emu.nt.kernel import SyscallRecord
from emu.scenario.model import Step
from emu.win.ntdefs import heap_flag_names


def syscall_json(r: SyscallRecord) -> dict[str, Any]:
    return {
        "seq": r.seq,
        "name": r.name,
        "status": r.status,
        "status_name": r.status_name,
        "args": dict(r.args),
        "details": {k: v for k, v in r.details.items() if isinstance(v, int | str | bool)},
    }


@dataclass
class StepResult:
    step: Step
    ok: bool = True
    value: Any = None  # int, bool, list of them, hex string (read), walk entries (walk)
    error: str | None = None
    syscalls: list[SyscallRecord] = field(default_factory=list)
    debug_output: list[str] = field(default_factory=list)
    seconds: float = 0.0
    fault: dict[str, Any] | None = None  # an EmulationError's pc, instruction, registers...

    @property
    def headline(self) -> str:
        """The error in one line (an EmulationError's fault, not its call context)."""
        if self.fault is not None:
            f = self.fault
            at = f" at 0x{f['address']:x}" if f["address"] is not None else ""
            return f"{f['kind']}{at}; pc=0x{f['pc']:x} {f['symbol']}: {f['instruction']}"
        return (self.error or "").split("\n")[0]

    def to_json(self) -> dict[str, Any]:
        value = json_value(self.value)
        return {
            **self.step.to_json(),
            "ok": self.ok,
            "value": value,
            "error": self.error,
            "syscalls": [syscall_json(r) for r in self.syscalls],
            "debug_output": list(self.debug_output),
            "seconds": round(self.seconds, 6),
            "fault": self.fault,
        }


def json_value(value: Any) -> Any:
    """A step's value as JSON data (walk entries become mappings)."""
    if isinstance(value, list):
        return [json_value(v) for v in value]
    return value.to_json() if isinstance(value, HeapWalkEntry) else value


def fault_json(e: EmulationError) -> dict[str, Any]:
    return {
        "kind": e.kind,
        "pc": e.pc,
        "symbol": e.symbol,
        "instruction": e.instruction,
        "address": e.address,
        "access": e.access,
        "status": e.status,
        "registers": dict(e.registers),
        "context": e.context,
    }


@dataclass
class HeapSnapshot:
    """One heap at a checkpoint: what RtlWalkHeap reported, and the corruptions heapemu's
    walker of that allocator found (the same verdict for every allocator: a heap whose own
    RtlWalkHeap does not notice an overwritten header still fails the checkpoint)."""

    name: str
    handle: int
    entries: list[HeapWalkEntry]
    error: str | None = None
    corruptions: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {"busy": 0, "free": 0, "region": 0, "uncommitted": 0}
        for e in self.entries:
            out[e.kind] += 1
        out["busy_bytes"] = sum(e.size for e in self.entries if e.kind == "busy")
        out["free_bytes"] = sum(e.size for e in self.entries if e.kind == "free")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "handle": self.handle,
            "counts": self.counts(),
            "entries": [e.to_json() for e in self.entries],
            "error": self.error,
            "corruptions": list(self.corruptions),
        }


@dataclass
class MemoryRun:
    address: int
    size: int
    state: str  # "MEM_COMMIT" or "MEM_RESERVE"
    protect: str  # "" when reserved


@dataclass
class RegionSnapshot:
    """One reservation of the process's address space."""

    base: int
    size: int
    type: str
    usage: str
    committed: int
    runs: list[MemoryRun]

    def to_json(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "size": self.size,
            "type": self.type,
            "usage": self.usage,
            "committed": self.committed,
            "runs": [vars(r) for r in self.runs],
        }


@dataclass
class Checkpoint:
    name: str
    step: int  # the checkpoint step's number
    heaps: list[HeapSnapshot]
    regions: list[RegionSnapshot]
    syscalls: int  # system calls made so far
    views: dict[str, Any] = field(default_factory=dict)  # register_checkpoint_view results

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "step": self.step,
            "heaps": [h.to_json() for h in self.heaps],
            "regions": [r.to_json() for r in self.regions],
            "syscalls": self.syscalls,
            "views": dict(self.views),
        }


@dataclass
class ScenarioResult:
    scenario: str
    path: str | None
    arch: str
    allocator: str
    steps: list[StepResult]
    names: dict[str, Any]  # named results: heap handles, block addresses, lists of them
    checkpoints: list[Checkpoint]
    syscalls: int  # every system call of the run, loading included
    debug_output: list[str] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)  # what observers recorded
    not_run: int = 0  # steps after a failure
    seconds: float = 0.0
    # heapemu's kernel's warnings (unhandled system calls, handler bugs): SyscallDispatcher
    warnings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps) and not self.not_run

    @property
    def failure(self) -> StepResult | None:
        return next((s for s in self.steps if not s.ok), None)

    def checkpoint(self, name: str) -> Checkpoint:
        for c in self.checkpoints:
            if c.name == name:
                return c
        raise KeyError(f"no checkpoint {name!r} (have {[c.name for c in self.checkpoints]})")

    def to_json(self) -> dict[str, Any]:
        f = self.failure
        return {
            "scenario": self.scenario,
            "path": self.path,
            "arch": self.arch,
            "allocator": self.allocator,
            "ok": self.ok,
            "failure": None
            if f is None
            else {
                "step": f.step.index,
                "line": f.step.line,
                "op": f.step.op,
                "error": f.error,
            },
            "steps": [s.to_json() for s in self.steps],
            "not_run": self.not_run,
            "names": {k: json_value(v) for k, v in self.names.items()},
            "checkpoints": [c.to_json() for c in self.checkpoints],
            "syscalls": self.syscalls,
            "debug_output": list(self.debug_output),
            "warnings": list(self.warnings),
            "events": [e.to_json() if hasattr(e, "to_json") else e for e in self.events],
            "seconds": round(self.seconds, 6),
        }


def fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return f"0x{v:x}" if isinstance(v, int) and v >= 0 else str(v)


def describe_value(step: Step, value: Any) -> str:
    """A step's result in a few characters, for tables and logs."""
    if value is None:
        return ""
    if step.op == "walk":
        kinds: dict[str, int] = {}
        for e in value:
            kinds[e.kind] = kinds.get(e.kind, 0) + 1
        return ", ".join(f"{n} {k}" for k, n in kinds.items()) or "no entries"
    if step.op == "checkpoint":
        return "; ".join(f"{name}: {c['busy']} busy, {c['free']} free" for name, c in value.items())
    if step.op == "read":
        return value if len(value) <= 32 else value[:32] + "..."
    if step.op == "layout":
        return ("holds: " if value["holds"] else "does not hold: ") + value["detail"]
    if step.op == "create_heap":
        return f"0x{value:x} ({heap_flag_names(step.args['flags'])})"
    if isinstance(value, list):
        if all(isinstance(v, bool) for v in value):
            return ", ".join(fmt_value(v) for v in value)
        if len(value) <= 3:
            return ", ".join(fmt_value(v) for v in value)
        return f"{fmt_value(value[0])} .. {fmt_value(value[-1])} ({len(value)})"
    return fmt_value(value)
