"""Checking each operation's arguments (``scenario_schema`` runs these, one per step).

Each check normalises the step's arguments into ``step.args`` and returns the kind of the
step's result: "heap", "block", "blocks", "value" or "none".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from emu.heap.goals import parse_goal
from emu.scenario.model import Ref, Step, what_is
from emu.win.ntdefs import HEAP_GROWABLE

if TYPE_CHECKING:
    from emu.scenario.schema import Checker

MAX_BYTES = 0x1000000  # 16 MiB: what one read/write step may move (results are kept)
MAX_COUNT = 100_000  # blocks one alloc step may make (each is a call and a kept result)


def _check_create_heap(c: Checker, s: Step, value: Any, line: int | None) -> str:
    args: dict[str, int | None] = {"flags": HEAP_GROWABLE, "reserve": 0, "commit": 0}
    if isinstance(value, dict):
        m = c.mapping(value, line, "create_heap", ("flags", "reserve", "commit")) or {}
        for k, (v, ln) in m.items():
            args[k] = c.flags(v, ln) if k == "flags" else c.integer(v, ln, k)
    elif value is not None:
        args["flags"] = c.flags(value, line)
    s.args = args
    c.heap_defined = True
    return "heap"


def _check_alloc(c: Checker, s: Step, value: Any, line: int | None) -> str:
    if isinstance(value, dict):
        m = c.mapping(value, line, "alloc", ("size", "count", "flags"), ("size",)) or {}
        size = c.integer(*m["size"], "size") if "size" in m else None
        count = (
            c.integer(*m["count"], "count", minimum=1, maximum=MAX_COUNT) if "count" in m else None
        )
        flags = c.flags(*m["flags"]) if "flags" in m else 0
    else:
        size, count, flags = c.integer(value, line, "alloc size"), None, 0
    s.args = {"size": size, "count": count, "flags": flags}
    return "blocks" if count is not None else "block"


def _block_args(
    c: Checker, s: Step, value: Any, line: int | None, *, many: bool, optional: bool = False
) -> None:
    if isinstance(value, dict):
        allowed = ("block", "flags")
        m = c.mapping(value, line, s.op, allowed, () if optional else ("block",)) or {}
        block = c.ref(*m["block"], "block", want=("block",), many=many) if "block" in m else None
        flags = c.flags(*m["flags"]) if "flags" in m else 0
    elif value is None and optional:
        block, flags = None, 0
    else:
        block, flags = c.ref(value, line, s.op, want=("block",), many=many), 0
    s.args = {"block": block, "flags": flags}


def _check_free(c: Checker, s: Step, value: Any, line: int | None) -> str:
    _block_args(c, s, value, line, many=True)
    return "value"


def _check_size(c: Checker, s: Step, value: Any, line: int | None) -> str:
    _block_args(c, s, value, line, many=False)
    return "value"


def _check_validate(c: Checker, s: Step, value: Any, line: int | None) -> str:
    _block_args(c, s, value, line, many=False, optional=True)
    return "value"


def _check_realloc(c: Checker, s: Step, value: Any, line: int | None) -> str:
    m = c.mapping(value, line, "realloc", ("block", "size", "flags"), ("block", "size")) or {}
    s.args = {
        "block": c.ref(*m["block"], "block", want=("block",)) if "block" in m else None,
        "size": c.integer(*m["size"], "size") if "size" in m else None,
        "flags": c.flags(*m["flags"]) if "flags" in m else 0,
    }
    return "block"


def _check_walk(c: Checker, s: Step, value: Any, line: int | None) -> str:
    if value is not None:
        c.err(line, f"walk takes no arguments (use `heap:` to choose the heap), not {value!r}")
    return "value"


def _check_destroy(c: Checker, s: Step, value: Any, line: int | None) -> str:
    if value is not None:
        if s.heap is not None:
            c.err(line, "give the heap once: `destroy: h` or `heap: h`")
        h = c.ref(value, line, "destroy", want=("heap",))
        s.heap = h if isinstance(h, Ref) else None
    return "value"


def _check_checkpoint(c: Checker, s: Step, value: Any, line: int | None) -> str:
    name = value
    if not isinstance(name, str) or not name.strip():
        c.err(
            line, f"checkpoint needs a name, like `checkpoint: after_frees`, not {what_is(value)}"
        )
        return "none"
    if name in c.checkpoints:
        c.err(line, f"checkpoint {name!r} is already used; checkpoint names are unique")
    c.checkpoints.add(name)
    s.args = {"name": name}
    return "none"


def _address_args(c: Checker, s: Step, m: dict[str, tuple[Any, int | None]]) -> None:
    s.args["at"] = c.ref(*m["at"], "at", want=("block", "heap")) if "at" in m else None
    if "offset" in m:
        s.args["offset"] = c.integer(*m["offset"], "offset")


def _check_write(c: Checker, s: Step, value: Any, line: int | None) -> str:
    allowed = ("at", "offset", "data", "text", "fill", "size")
    m = c.mapping(value, line, "write", allowed, ("at",))
    if m is None:
        return "none"
    _address_args(c, s, m)
    given = [k for k in ("data", "text", "fill") if k in m]
    if len(given) != 1:
        c.err(line, "write needs exactly one of data: (hex bytes), text: or fill: (with size:)")
        return "none"
    if "data" in m:
        s.args["data"] = c.hexbytes(*m["data"], "data")
    elif "text" in m:
        text, ln = m["text"]
        if not isinstance(text, str):
            c.err(ln, f"text must be text, not {what_is(text)}")
        else:
            s.args["data"] = text.encode("utf-8").hex()
    else:
        fill = c.integer(*m["fill"], "fill")
        if "size" not in m:
            c.err(line, "fill: needs size:")
        size = c.integer(*m["size"], "size") if "size" in m else None
        if size is not None and size > MAX_BYTES:
            c.err(m["size"][1], f"size 0x{size:x} is more than a step may write (0x{MAX_BYTES:x})")
            size = None
        if fill is not None and fill > 0xFF:
            c.err(m["fill"][1], f"fill is one byte (0 .. 0xff), not 0x{fill:x}")
        elif fill is not None and size is not None:
            s.args["data"] = bytes([fill]).hex() * size
    if "size" in m and "fill" not in m:
        c.err(m["size"][1], "size: goes with fill:")
    return "none"


def _check_read(c: Checker, s: Step, value: Any, line: int | None) -> str:
    m = c.mapping(value, line, "read", ("at", "offset", "size"), ("at", "size"))
    if m is None:
        return "value"
    _address_args(c, s, m)
    size = c.integer(*m["size"], "size", minimum=1) if "size" in m else None
    if size is not None and size > MAX_BYTES:
        c.err(m["size"][1], f"size 0x{size:x} is more than a step may read (0x{MAX_BYTES:x})")
        size = None
    s.args["size"] = size
    return "value"


def _check_layout(c: Checker, s: Step, value: Any, line: int | None) -> str:
    """``layout: {adjacent: [a, b]}`` / ``{distance: [a, b], max: N}`` / ``{reuse: {freed: x,
    by: y}}`` / ``{overlap: [a, b]}``: checked on the heap's walker report (emu.heap.goals)."""
    try:
        goal = parse_goal(value)
    except ValueError as e:
        c.err(line, f"{e}, like `layout: {{adjacent: [source, victim]}}`")
        return "value"
    refs = [c.ref(name, line, f"layout {goal.kind}", want=("block",)) for name in (goal.a, goal.b)]
    s.args = {"goal": goal.kind, "a": refs[0], "b": refs[1], "max": goal.max}
    return "value"


OP_CHECKS: dict[str, Callable[[Checker, Step, Any, int | None], str]] = {
    "create_heap": _check_create_heap,
    "alloc": _check_alloc,
    "free": _check_free,
    "realloc": _check_realloc,
    "size": _check_size,
    "validate": _check_validate,
    "walk": _check_walk,
    "destroy": _check_destroy,
    "checkpoint": _check_checkpoint,
    "write": _check_write,
    "read": _check_read,
    "layout": _check_layout,
}
