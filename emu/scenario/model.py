"""The parsed form of a scenario: steps, references to earlier results, the allocator."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emu.heap.goals import Goal
from emu.win.ntdefs import heap_flag_names

ARCHES = ("x86", "x64")
MODULE_KINDS = ("pe", "flat")
# what each operation calls: a custom module needs only the entry points its scenario uses
OP_ENTRY_POINTS: dict[str, tuple[str, ...]] = {
    "create_heap": ("RtlCreateHeap",),
    "alloc": ("RtlAllocateHeap",),
    "free": ("RtlFreeHeap",),
    "realloc": ("RtlReAllocateHeap",),
    "size": ("RtlSizeHeap",),
    "validate": ("RtlValidateHeap",),
    "walk": ("RtlWalkHeap",),
    "destroy": ("RtlDestroyHeap",),
    "checkpoint": ("RtlWalkHeap",),
    "write": (),
    "read": (),
    "layout": (),  # read by the allocator's walker, never asked of the allocator
}
OPS = tuple(OP_ENTRY_POINTS)
STEP_KEYS = ("as", "heap", "expect", "note")
ANY = "any"  # `expect: any` turns the default success check off
PROCESS_HEAP = "process_heap"  # PEB.ProcessHeap: the heap the loader created
_NOT_GIVEN = object()


# ---------------------------------------------------------------------- references
_REF = re.compile(
    r"""^\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*
    (?:\[\s*(?P<start>-?\d+)?\s*(?P<colon>:)?\s*(?P<stop>-?\d+)?\s*\])?\s*
    (?:(?P<sign>[+-])\s*(?P<offset>0[xX][0-9a-fA-F]+|\d+))?\s*$""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Ref:
    """``a`` / ``a[16]`` / ``a[10:20]`` / ``b+0x10``: an earlier step's named result."""

    name: str
    index: int | None = None
    slice: tuple[int | None, int | None] | None = None
    offset: int = 0

    def __str__(self) -> str:
        s = self.name
        if self.index is not None:
            s += f"[{self.index}]"
        elif self.slice is not None:
            a, b = self.slice
            s += f"[{'' if a is None else a}:{'' if b is None else b}]"
        if self.offset:
            s += f"{'+' if self.offset > 0 else '-'}0x{abs(self.offset):x}"
        return s

    @classmethod
    def parse(cls, text: str) -> Ref | None:
        m = _REF.match(text)
        if m is None:
            return None
        offset = int(m["offset"], 0) * (-1 if m["sign"] == "-" else 1) if m["offset"] else 0
        start = int(m["start"]) if m["start"] else None
        stop = int(m["stop"]) if m["stop"] else None
        if m["colon"]:
            return cls(m["name"], slice=(start, stop), offset=offset)
        if start is None and "[" in text:
            return None  # `a[]`
        return cls(m["name"], index=start, offset=offset)


@dataclass
class NameInfo:
    """What a name holds, known before running: a heap, one block, n blocks, or a value."""

    kind: str  # "heap", "block", "blocks", "value"
    line: int | None
    step: int
    count: int = 0  # for "blocks"


# ---------------------------------------------------------------------- the parsed scenario
@dataclass
class AllocatorSpec:
    """``builtin``, ``wine``, or a PE/flat module whose exports stand in for the Rtl* API."""

    kind: str  # an allocator of emu.heap.registry.ALLOCATORS, or "pe" / "flat"
    path: str | None = None  # may hold "{arch}"; relative to the scenario file
    exports: dict[str, str] = field(default_factory=dict)  # Rtl name -> the module's export
    line: int | None = None

    @property
    def label(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{Path(self.path).name}"

    def module_path(self, arch: str, base: Path | None) -> Path:
        assert self.path is not None
        p = Path(self.path.replace("{arch}", arch))
        return p if p.is_absolute() or base is None else base / p

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "exports": dict(self.exports)}


@dataclass
class Step:
    index: int  # 1-based, as shown to users
    line: int | None
    op: str
    args: dict[str, Any]  # normalised arguments: ints, flags as ints, Ref, list[Ref]
    name: str | None = None  # `as:`
    heap: Ref | None = None  # None: the most recently created heap
    expect: Any = _NOT_GIVEN
    note: str = ""

    @property
    def has_expect(self) -> bool:
        return self.expect is not _NOT_GIVEN

    @property
    def label(self) -> str:
        """The step as one short line: ``alloc 0x100 x100``, ``free a[16]``."""
        if self.op == "layout":
            a = self.args
            return f"layout {Goal(a['goal'], str(a['a']), str(a['b']), a['max'])}"
        parts = [self.op]
        a = self.args
        for key, value in a.items():
            if key in ("count", "flags") or value is None or (key in _ZERO_DEFAULTS and not value):
                continue
            shown = _show(value)
            if key == "data" and len(shown) > 16:
                shown = f"{shown[:16]}... ({len(shown) // 2} bytes)"
            parts.append(shown if key in ("size", "block", "at", "name") else f"{key}={shown}")
        if a.get("count") is not None:
            parts.append(f"x{a['count']}")
        if a.get("flags"):
            parts.append(heap_flag_names(a["flags"]))
        if self.heap is not None:
            parts.append(f"heap={self.heap}")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "line": self.line,
            "op": self.op,
            "args": {k: _jsonable(v) for k, v in self.args.items()},
            "as": self.name,
            "heap": None if self.heap is None else str(self.heap),
            "expect": _jsonable(self.expect) if self.has_expect else None,
            "note": self.note,
        }


@dataclass
class Scenario:
    name: str
    path: Path | None
    arches: list[str]
    allocators: list[AllocatorSpec]
    steps: list[Step]
    names: dict[str, NameInfo]
    description: str = ""

    @property
    def file(self) -> str:
        return str(self.path) if self.path else "<scenario>"

    @property
    def base_dir(self) -> Path | None:
        return self.path.parent if self.path else None

    def entry_points(self) -> set[str]:
        """The Rtl* functions the steps call."""
        return {e for s in self.steps for e in OP_ENTRY_POINTS[s.op]}


_ZERO_DEFAULTS = ("reserve", "commit", "offset")


def _show(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, int):
        return f"0x{value:x}"
    if isinstance(value, list):
        return ", ".join(_show(v) for v in value)
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Ref):
        return str(value)
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def what_is(value: Any) -> str:
    if value is None:
        return "nothing"
    kind = {bool: "true/false", int: "integer", float: "number", str: "text"}.get(
        type(value), "list" if isinstance(value, list) else "mapping"
    )
    shown = repr(value) if not isinstance(value, dict | list) else ""
    return f"{kind} {shown}".strip() if len(shown) < 40 else kind
