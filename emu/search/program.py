"""From scenario steps and attacker actions to replay tapes, and back to a scenario file.

The program's steps (the spec's prefix and target, scenario syntax) compile once into
operations on numbered slots (``emu.heap.replay.workload.Op``); a candidate is a tuple of
``Action``s — the attacker's allocs, frees and reallocs with the program's target steps placed
among them — and assembles into the operations that follow the prefix. ``scenario_text`` writes
a candidate as a scenario that ``heapemu run`` replays call by call to the same addresses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from emu.heap.replay.workload import Op, OpKind
from emu.scenario import Ref, Step, parse_scenario
from emu.search.spec import SearchSpec

ALLOC, FREE, REALLOC, TARGET = "alloc", "free", "realloc", "target"


class Action(NamedTuple):
    """One element of a candidate. alloc: ``value`` is the size and ``handle`` a label unique
    in the candidate; free/realloc: ``handle`` names the block (an earlier alloc's label, or
    ``-1 - k`` for the k-th program block the attacker may free); realloc: ``value`` is the new
    size; target: ``value`` is the index of the program's target step."""

    kind: str
    value: int = 0
    handle: int = 0


Candidate = tuple[Action, ...]


class Binding(NamedTuple):
    """Where a named result comes from: op ``at`` (``many``: the ops of its blocks)."""

    at: int
    many: tuple[int, ...] | None = None


@dataclass
class StepCode:
    """One compiled step: its operations and the names it binds (op indices into ``ops``)."""

    ops: list[Op]
    names: dict[str, Binding] = field(default_factory=dict)


class StepCompiler:
    """Compiles parsed scenario steps (alloc, free, realloc) into slot operations, keeping the
    name -> slot map across steps, so target steps can free prefix blocks."""

    def __init__(self) -> None:
        self.slots: dict[str, int | list[int]] = {}
        self.next_slot = 0

    def slot(self, ref: Ref) -> int:
        if ref.offset:
            raise ValueError(f"{ref}: a block is freed or resized by its name, without offset")
        s = self.slots[ref.name]
        if isinstance(s, list):
            assert ref.index is not None
            return s[ref.index]
        return s

    def new_slot(self) -> int:
        self.next_slot += 1
        return self.next_slot - 1

    def compile(self, step: Step) -> StepCode:
        a = step.args
        flags = a.get("flags", 0)
        if step.op == "alloc":
            n = a["count"]
            slots = [self.new_slot() for _ in range(n or 1)]
            code = StepCode([Op(OpKind.ALLOC, s, a["size"], 0, flags) for s in slots])
            if step.name:
                if n is None:
                    self.slots[step.name] = slots[0]
                    code.names[step.name] = Binding(0)
                else:
                    self.slots[step.name] = slots
                    code.names[step.name] = Binding(0, tuple(range(n)))
            return code
        if step.op == "free":
            return StepCode([Op(OpKind.FREE, self.slot(r), 0, 0, flags) for r in a["block"]])
        if step.op == "realloc":
            old, new = self.slot(a["block"]), self.new_slot()
            code = StepCode([Op(OpKind.REALLOC, old, a["size"], new, flags)])
            if step.name:
                self.slots[step.name] = new
                code.names[step.name] = Binding(0)
            return code
        raise ValueError(f"{step.op} steps cannot be searched around (alloc, free, realloc)")


@dataclass
class Program:
    """The spec compiled: the prefix's operations and names, each target step's operations
    and names (indices local to the step), the slots attacker blocks start at, and the program
    blocks the attacker may free (their slots, in ``Primitive.blocks`` order)."""

    spec: SearchSpec
    prefix: list[Op]
    prefix_names: dict[str, Binding]
    targets: list[StepCode]
    first_attacker_slot: int
    freeable: list[int]  # slots
    freeable_names: list[str]

    @classmethod
    def compile(cls, spec: SearchSpec) -> Program:
        steps = [*spec.setup_steps(), *spec.target, {"layout": spec.goal.to_json()}]
        scenario = parse_scenario({"name": spec.name, "steps": steps}, spec.path)
        parsed = scenario.steps[1:-1]  # without create_heap and layout
        n_prefix = len(spec.prefix)
        c = StepCompiler()
        prefix: list[Op] = []
        names: dict[str, Binding] = {}
        for step in parsed[:n_prefix]:
            code = c.compile(step)
            for name, b in code.names.items():
                many = tuple(i + len(prefix) for i in b.many) if b.many is not None else None
                names[name] = Binding(b.at + len(prefix), many)
            prefix += code.ops
        targets = [c.compile(step) for step in parsed[n_prefix:]]
        freeable: list[int] = []
        freeable_names: list[str] = []
        free = spec.primitives.get("free")
        for text in free.blocks if free else ():
            ref = Ref.parse(text)
            assert ref is not None
            s = c.slots[ref.name]
            if isinstance(s, list) and ref.index is None:
                freeable += s
                freeable_names += [f"{ref.name}[{i}]" for i in range(len(s))]
            else:
                freeable.append(c.slot(ref))
                freeable_names.append(str(ref))
        freed_by_program = {op.id for op in prefix if op.kind in (OpKind.FREE, OpKind.REALLOC)}
        freed_by_program |= {
            op.id for t in targets for op in t.ops if op.kind in (OpKind.FREE, OpKind.REALLOC)
        }
        clash = [n for n, s in zip(freeable_names, freeable, strict=True) if s in freed_by_program]
        if clash:
            raise ValueError(
                f"free blocks: {', '.join(clash)} are freed or resized by the program itself"
            )
        return cls(spec, prefix, names, targets, c.next_slot, freeable, freeable_names)

    # ------------------------------------------------------------------ candidates
    def normalize(self, actions: Iterable[Action]) -> Candidate:
        """Drop what cannot run (a free of a block not live, a target out of order) and add the
        missing targets at the end: every candidate the search makes passes through here."""
        live: set[int] = set()
        seen: set[int] = set()
        program_freed: set[int] = set()
        out: list[Action] = []
        t = 0
        for a in actions:
            if a.kind == TARGET:
                if a.value == t:
                    out.append(a)
                    t += 1
            elif a.kind == ALLOC:
                if a.handle not in seen and a.handle >= 0:
                    seen.add(a.handle)
                    live.add(a.handle)
                    out.append(a)
            elif a.kind == FREE:
                if a.handle >= 0 and a.handle in live:
                    live.discard(a.handle)
                    out.append(a)
                elif (
                    a.handle < 0
                    and -1 - a.handle < len(self.freeable)
                    and a.handle not in program_freed
                ):
                    program_freed.add(a.handle)
                    out.append(a)
            elif a.kind == REALLOC and a.handle in live:
                out.append(a)
        out += [Action(TARGET, i) for i in range(t, len(self.targets))]
        return tuple(out)

    def assemble(self, candidate: Candidate) -> tuple[list[Op], list[int]]:
        """The operations after the prefix, and where each target step's operations start."""
        ops: list[Op] = []
        starts: list[int] = []
        slot_of: dict[int, int] = {}
        next_slot = self.first_attacker_slot
        for a in candidate:
            if a.kind == TARGET:
                starts.append(len(ops))
                ops += self.targets[a.value].ops
            elif a.kind == ALLOC:
                slot_of[a.handle] = next_slot
                ops.append(Op(OpKind.ALLOC, next_slot, a.value))
                next_slot += 1
            elif a.kind == FREE:
                s = slot_of[a.handle] if a.handle >= 0 else self.freeable[-1 - a.handle]
                ops.append(Op(OpKind.FREE, s))
            else:
                s = slot_of[a.handle]
                ops.append(Op(OpKind.REALLOC, s, a.value, s))
        return ops, starts

    def cost(self, candidate: Candidate) -> int:
        prims = self.spec.primitives
        return sum(prims[a.kind].cost for a in candidate if a.kind != TARGET)

    def pointer(
        self,
        text: str,
        prefix_values: Sequence[int],
        values: Sequence[int],
        starts: Sequence[int],
    ) -> int:
        """The pointer a name (``source``, ``hole[3]``) was given, from the replay results."""
        ref = Ref.parse(text)
        assert ref is not None
        for t in reversed(range(len(self.targets))):  # the latest binding wins
            b = self.targets[t].names.get(ref.name)
            if b is not None:
                i = b.many[ref.index or 0] if b.many is not None else b.at
                return values[starts[t] + i]
        b = self.prefix_names[ref.name]
        i = b.many[ref.index or 0] if b.many is not None else b.at
        return prefix_values[i]


# ---------------------------------------------------------------------- scenario files
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "none", "~"}


def flow(value: Any) -> str:
    """``value`` in YAML flow style, integers in hex (scenario files read 0x... as numbers)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"0x{value:x}" if value >= 0 else str(value)
    if value is None:
        return "null"
    if isinstance(value, str):
        plain = _PLAIN.match(value) and value.lower() not in _YAML_WORDS
        return value if plain else json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def attacker_steps(program: Program, candidate: Candidate) -> list[dict[str, Any]]:
    """The candidate as scenario steps: the attacker's operations noted as such, the target
    steps as the spec wrote them; attacker blocks are a0, a1, ... in order of allocation."""
    taken = _names(program.spec)
    stem = next(s for s in ("a", "atk", "attacker") if not any(_is_stem(n, s) for n in taken))
    label: dict[int, str] = {}
    steps: list[dict[str, Any]] = []
    for a in candidate:
        if a.kind == TARGET:
            steps.append(dict(program.spec.target[a.value], note="target"))
        elif a.kind == ALLOC:
            label[a.handle] = f"{stem}{len(label)}"
            steps.append({"alloc": a.value, "as": label[a.handle], "note": "attacker"})
        elif a.kind == FREE:
            name = label[a.handle] if a.handle >= 0 else program.freeable_names[-1 - a.handle]
            steps.append({"free": name, "note": "attacker"})
        else:
            name = label[a.handle]
            steps.append(
                {"realloc": {"block": name, "size": a.value}, "as": name, "note": "attacker"}
            )
    return steps


def _is_stem(name: str, stem: str) -> bool:
    return name.startswith(stem) and name[len(stem) :].isdigit()


def _names(spec: SearchSpec) -> set[str]:
    return {str(s["as"]) for s in (*spec.prefix, *spec.target) if isinstance(s, dict) and "as" in s}


def scenario_text(
    program: Program,
    candidate: Candidate,
    allocator: str,
    arch: str,
    header: Sequence[str] = (),
) -> str:
    """A scenario that replays the prefix and the candidate call by call, then checks the goal
    with a ``layout:`` step and takes a checkpoint."""
    spec = program.spec
    lines = [f"# {h}" for h in header]
    lines += [
        f"name: {flow(f'{spec.name}-{allocator}-{arch}')}",
        f"description: {flow(spec.description or f'heapemu search: {spec.goal}')}",
        f"arch: {arch}",
        f"allocator: {allocator}",
        "steps:",
    ]
    setup = spec.setup_steps()
    lines.append(f"  - {flow(setup[0])}")
    if spec.prefix:
        lines.append("  # the prefix: what the program did before the attacker acts")
        lines += [f"  - {flow(s)}" for s in setup[1:]]
    lines.append("  # the attacker's operations, with the program's target steps among them")
    lines += [f"  - {flow(s)}" for s in attacker_steps(program, candidate)]
    lines.append(f"  - {flow({'layout': spec.goal.to_json()})}")
    lines.append("  - checkpoint: layout")
    return "\n".join(lines) + "\n"
