"""Layout goals: where two blocks lie relative to each other, read from a walker's report.

A heap-layout search (``emu.search``) looks for operations that make a goal hold, and a
scenario's ``layout:`` step checks one; both decide it here, from a ``HeapReport`` (emulated
memory only, never the allocator's own answers) and the user pointers the program was given::

    adjacent: [source, victim]          victim's block starts where source's block ends
    distance: [source, victim], max: N  victim's block starts 0..N bytes after source's ends
    reuse: {freed: x, by: y}            y was given the address x had before it was freed
    overlap: [a, b]                     the two blocks' memory intersects (a broken heap)

``source``/``victim``/``x``/``y`` are names; the caller maps them to user pointers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from emu.heap.walkers.model import Block, HeapReport, LargeBlock

GOAL_KINDS = ("adjacent", "distance", "reuse", "overlap")


@dataclass(frozen=True)
class Goal:
    """``kind`` (one of GOAL_KINDS) between the blocks named ``a`` and ``b`` (reuse: ``a`` is
    the freed block, ``b`` the allocation that should get it); ``max``: distance's bound."""

    kind: str
    a: str
    b: str
    max: int = 0

    def to_json(self) -> dict[str, Any]:
        """The goal in the form ``parse_goal`` (and a scenario's ``layout:`` step) reads."""
        if self.kind == "reuse":
            return {"reuse": {"freed": self.a, "by": self.b}}
        out: dict[str, Any] = {self.kind: [self.a, self.b]}
        if self.kind == "distance":
            out["max"] = self.max
        return out

    def __str__(self) -> str:
        if self.kind == "reuse":
            return f"reuse: {self.b} gets {self.a}'s block"
        if self.kind == "distance":
            return f"{self.b} within 0x{self.max:x} bytes after {self.a}"
        return f"{self.kind}: {self.a}, {self.b}"


def parse_goal(value: Any) -> Goal:
    """A Goal from its mapping form (see the module doc); ValueError says what is wrong."""
    if not isinstance(value, Mapping):
        raise ValueError(f"a goal is a mapping with one of {', '.join(GOAL_KINDS)}")
    kinds = [k for k in value if k in GOAL_KINDS]
    extra = [k for k in value if k not in (*GOAL_KINDS, "max")]
    if len(kinds) != 1 or extra:
        raise ValueError(
            f"a goal has exactly one of {', '.join(GOAL_KINDS)} (and max: for distance), "
            f"not {', '.join(map(str, value)) or 'nothing'}"
        )
    kind = kinds[0]
    body = value[kind]
    if "max" in value and kind != "distance":
        raise ValueError("max: goes with distance:")
    if kind == "reuse":
        if not isinstance(body, Mapping) or set(body) != {"freed", "by"}:
            raise ValueError("reuse takes {freed: NAME, by: NAME}")
        a, b = body["freed"], body["by"]
    else:
        if not isinstance(body, list | tuple) or len(body) != 2:
            raise ValueError(f"{kind} takes two block names: [{'source, victim'}]")
        a, b = body
    if not isinstance(a, str) or not isinstance(b, str):
        raise ValueError(f"{kind}: blocks are named by text, not {a!r}, {b!r}")
    bound: Any = 0
    if kind == "distance":
        bound = value.get("max")
        if isinstance(bound, str):
            try:
                bound = int(bound, 0)
            except ValueError:
                bound = None
        if isinstance(bound, bool) or not isinstance(bound, int) or bound < 0:
            raise ValueError("distance needs max: N (bytes, at least 0)")
    return Goal(kind, a, b, int(bound))


@dataclass
class GoalCheck:
    """Whether a goal holds, and what the walker showed: ``blocks[name]`` is the block found
    at each name's pointer (None: no block there), ``gap`` the bytes from a's block end to b's
    block start (adjacent, distance; negative when b lies before)."""

    goal: Goal
    holds: bool
    detail: str
    blocks: dict[str, dict[str, Any] | None]
    gap: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "goal": self.goal.to_json(),
            "holds": self.holds,
            "detail": self.detail,
            "blocks": self.blocks,
            "gap": self.gap,
        }


def find_block(report: HeapReport, user_ptr: int) -> Block | LargeBlock | None:
    """The block whose data or header holds ``user_ptr`` (a segment block or a large one)."""
    b = report.block_at(user_ptr)
    if b is not None:
        return b
    for lb in report.large_blocks:
        if lb.region <= user_ptr < lb.region + lb.region_size:
            return lb
    return None


def _span(b: Block | LargeBlock) -> tuple[int, int]:
    if isinstance(b, LargeBlock):
        return b.address, b.region + b.region_size
    return b.address, b.end


def _block_json(b: Block | LargeBlock | None) -> dict[str, Any] | None:
    if b is None:
        return None
    start, end = _span(b)
    state = "large" if isinstance(b, LargeBlock) else b.state
    return {"address": start, "size": end - start, "user_ptr": b.user_ptr, "state": state}


def _busy(b: Block | LargeBlock | None, ptr: int) -> bool:
    if b is None or b.user_ptr != ptr:
        return False
    return isinstance(b, LargeBlock) or b.busy


def check_goal(report: HeapReport, goal: Goal, pointers: Mapping[str, int]) -> GoalCheck:
    """Decide ``goal`` on ``report``; ``pointers`` maps the goal's names to user pointers
    (for reuse, ``a`` is the pointer the freed block had)."""
    pa, pb = pointers[goal.a], pointers[goal.b]
    ba, bb = find_block(report, pa), find_block(report, pb)
    blocks = {goal.a: _block_json(ba), goal.b: _block_json(bb)}
    if goal.kind == "reuse":
        holds = pa == pb and _busy(bb, pb)
        if holds:
            detail = f"{goal.b} = 0x{pb:x}, the block {goal.a} had"
        elif pa == pb:
            detail = f"{goal.b} = 0x{pb:x} but the walker finds no busy block there"
        else:
            detail = f"{goal.b} = 0x{pb:x}, not {goal.a}'s 0x{pa:x}"
        return GoalCheck(goal, holds, detail, blocks)
    if ba is None or bb is None:
        missing = goal.a if ba is None else goal.b
        ptr = pa if ba is None else pb
        return GoalCheck(goal, False, f"no block at {missing} (0x{ptr:x})", blocks)
    (a0, a1), (b0, b1) = _span(ba), _span(bb)
    if goal.kind == "overlap":
        # one block handed out inside another shows as both pointers in one walked block
        holds = (ba is bb and pa != pb) or (ba is not bb and a0 < b1 and b0 < a1)
        detail = (
            f"{goal.a} [0x{a0:x}, 0x{a1:x}) and {goal.b} [0x{b0:x}, 0x{b1:x}) overlap"
            if holds
            else f"{goal.a} and {goal.b} are separate blocks"
        )
        return GoalCheck(goal, holds, detail, blocks)
    gap = b0 - a1
    both_busy = _busy(ba, pa) and _busy(bb, pb)
    same_run = isinstance(ba, Block) and isinstance(bb, Block) and ba.segment == bb.segment
    if goal.kind == "adjacent":
        holds = both_busy and same_run and gap == 0
    else:
        holds = both_busy and same_run and 0 <= gap <= goal.max
    where = "right after" if gap == 0 else (f"0x{gap:x} bytes after" if gap > 0 else "before")
    detail = f"{goal.b}'s block 0x{b0:x} is {where} {goal.a}'s [0x{a0:x}, 0x{a1:x})"
    if not both_busy:
        detail += "; not both busy blocks"
    elif not same_run:
        detail += "; not in the same segment"
    return GoalCheck(goal, holds, detail, blocks, gap)
