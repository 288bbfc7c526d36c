"""Allocator campaigns: many seeded operation sequences per allocator and architecture, each
case an independent, deterministic task with a JSON result.

``heapemu campaign SPEC.yaml`` reads::

    name: nightly
    kind: invariant          # invariant | differential | inject
    allocator: all           # every registered allocator (default), one, or a list
    arch: both
    seeds: 16                # 16 seeds (0..15), a list, or {start: 100, count: 16}
    ops: 10000               # operations per case (inject: before the bug)
    workload: {sizes: mixed, lifetime: 100, realloc: 0.05}   # emu.heap.replay.workload
    check_every: 1000        # invariant: check the heap every N operations
    pairs: [[builtin, wine]] # differential: default every pair of the allocators
    bugs: [overflow:8, use_after_free:16, double_free]       # inject
    after: 200               # inject: operations run after the bug
    shrink: true             # shrink failing cases and write them as scenarios
    shrink_budget: 200       # at most this many re-runs per shrink

- **invariant**: the workload replays in the emulator in chunks of ``check_every``; after each,
  the allocator's walker must find no corruption, RtlValidateHeap must say TRUE, every live
  block must be a busy block of its requested size at its pointer, and the marks written into
  live blocks at the previous check must be intact (head and tail: overflows, overlaps).
- **differential**: the same workload on two allocators, each operation's outcome abstracted
  (failed, a new block, the block of allocation #k again, realloc in place, ...); the first
  operation where they differ is shrunk to a minimal sequence that still diverges.
- **inject**: the workload runs, then one bug is injected into a live block — an n-byte
  ``overflow`` past its end, a ``use_after_free`` write of n bytes, a ``double_free`` — where
  the written bytes are the address of a chosen target block in another heap; the workload
  goes on for ``after`` operations and the effects are recorded: a write to the chosen address,
  an allocation returned there, overlapping blocks, a fault, or the allocator noticing. A
  scenario stops at a fault, so a write to the chosen address followed by a fault counts as
  the write only if it happened before the faulting operation (the scenario then ends there);
  a write by the faulting operation itself is reported as the fault (the segment heap, led to
  the target by planted links, reads the target's bytes as further links and faults in the
  same call).

A failing case (an invariant broken, a divergence, an injected bug reaching the chosen
address, handing out overlapping blocks or faulting) is shrunk and its result carries the
minimal sequence as a scenario file's text, which the front end writes out.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from emu.errors import EmulationError
from emu.facade import Process
from emu.heap.allocator import Allocator
from emu.heap.goals import find_block
from emu.heap.registry import ALLOCATOR_NAMES, allocator_kind
from emu.heap.replay.run import ReplayError, replay
from emu.heap.replay.workload import Op, OpKind, Workload, synthetic
from emu.heap.walkers.model import Block, HeapReport
from emu.scenario import Problem, ScenarioError, load_text, parse_scenario, run_scenario
from emu.scenario.model import ARCHES
from emu.search.program import flow
from emu.search.shrink import shrink
from emu.search.spec import find_spec

KINDS = ("invariant", "differential", "inject")
BUGS = ("overflow", "use_after_free", "double_free")
DEFAULT_WORKLOAD: dict[str, Any] = {"sizes": "mixed", "lifetime": 100.0, "realloc": 0.05}
WORKLOAD_KEYS = (
    "sizes",
    "lifetime",
    "lifetimes",
    "max_live",
    "realloc",
    "size_queries",
    "validate_every",
    "flags",
)
SPEC_KEYS = (
    "name",
    "description",
    "kind",
    "allocator",
    "arch",
    "seeds",
    "ops",
    "workload",
    "check_every",
    "pairs",
    "bugs",
    "after",
    "shrink",
    "shrink_budget",
)
TARGET_SIZE = 0x100  # the chosen target block (inject)
# inject runs stop a call after this many instructions (a corrupted free list can loop for
# ever): a count, not a time, so the same case gives the same result on any machine
INJECT_BUDGET = 20_000_000
TARGET_FILL = 0x5A
# wall-clock limit of one replay call of n operations: a guard against a hung allocator, not
# a measure (the heaps that commit and decommit most run ~500 operations/s on a loaded core)
SECONDS_PER_OP = 0.02


def replay_limit(n: int) -> float:
    return max(30.0, n * SECONDS_PER_OP)


CREATE_HEAP: dict[str, Any] = {"create_heap": "HEAP_GROWABLE", "as": "heap"}


# ---------------------------------------------------------------------- the spec
@dataclass
class CampaignSpec:
    name: str
    kind: str
    allocators: list[str]
    arches: list[str]
    seeds: list[int]
    ops: int = 10_000
    workload: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_WORKLOAD))
    check_every: int = 1000
    pairs: list[tuple[str, str]] = field(default_factory=list)
    bugs: list[str] = field(default_factory=list)
    after: int = 200
    shrink: bool = True
    shrink_budget: int = 200
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["pairs"] = [list(p) for p in self.pairs]
        return out

    def cases(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(key, task function, payload) for every case: seeds x allocators (or pairs) x
        arches (x bugs)."""
        common = {
            "ops": self.ops,
            "workload": self.workload,
            "name": self.name,
            "shrink": self.shrink,
            "shrink_budget": self.shrink_budget,
        }
        out = []
        for arch in self.arches:
            for seed in self.seeds:
                if self.kind == "invariant":
                    for a in self.allocators:
                        p = dict(
                            common, allocator=a, arch=arch, seed=seed, check_every=self.check_every
                        )
                        out.append((f"invariant/{a}/{arch}/seed{seed}", "invariant", p))
                elif self.kind == "differential":
                    for a, b in self.pairs:
                        p = dict(common, pair=[a, b], arch=arch, seed=seed)
                        out.append((f"differential/{a}-{b}/{arch}/seed{seed}", "differential", p))
                else:
                    for a in self.allocators:
                        for bug in self.bugs:
                            p = dict(
                                common, allocator=a, arch=arch, seed=seed, bug=bug, after=self.after
                            )
                            out.append((f"inject/{a}/{arch}/{bug}/seed{seed}", "inject", p))
        return out


def _int(value: Any, what: str, minimum: int, problems: list[str]) -> int:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = int(value.replace("_", ""), 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        problems.append(f"{what} must be an integer of at least {minimum}, not {value!r}")
        return minimum
    return value


def parse_campaign(data: Any, path: str | Path | None = None) -> CampaignSpec:
    """A CampaignSpec from loaded data; ScenarioError lists the problems with their lines."""
    file = str(path) if path else "<campaign>"
    if not isinstance(data, Mapping):
        raise ScenarioError([Problem(file, 1, "a campaign spec is a mapping")])
    lines: dict[Any, int] = getattr(data, "lines", {})
    problems: list[Problem] = []

    def err(key: str, msgs: Iterable[str]) -> None:
        problems.extend(Problem(file, lines.get(key), m) for m in msgs)

    for key in data:
        if key not in SPEC_KEYS:
            err(key, [f"unknown key {key!r} (keys: {', '.join(SPEC_KEYS)})"])
    kind = data.get("kind")
    if kind not in KINDS:
        err("kind", [f"kind must be {', '.join(KINDS)}, not {kind!r}"])
        kind = "invariant"
    allocators = _choice(data.get("allocator"), list(ALLOCATOR_NAMES), "allocator", err)
    arches = _choice(data.get("arch", "both"), list(ARCHES), "arch", err)
    seeds_value = data.get("seeds", 4)
    msgs: list[str] = []
    if isinstance(seeds_value, list):
        seeds = [_int(s, "seed", 0, msgs) for s in seeds_value]
    elif isinstance(seeds_value, Mapping):
        start = _int(seeds_value.get("start", 0), "seeds start", 0, msgs)
        seeds = list(range(start, start + _int(seeds_value.get("count"), "seeds count", 1, msgs)))
    else:
        seeds = list(range(_int(seeds_value, "seeds", 1, msgs)))
    err("seeds", msgs)
    spec = CampaignSpec(
        str(data.get("name") or (Path(path).stem if path else "campaign")),
        kind,
        allocators,
        arches,
        seeds,
    )
    spec.description = str(data.get("description") or "")
    for key, minimum in (("ops", 1), ("check_every", 1), ("after", 1), ("shrink_budget", 0)):
        if key in data:
            msgs = []
            setattr(spec, key, _int(data[key], key, minimum, msgs))
            err(key, msgs)
    if "shrink" in data:
        if not isinstance(data["shrink"], bool):
            err("shrink", ["shrink is true or false"])
        spec.shrink = bool(data["shrink"])
    workload = dict(DEFAULT_WORKLOAD)
    w = data.get("workload") or {}
    if not isinstance(w, Mapping) or any(k not in WORKLOAD_KEYS for k in w):
        err("workload", [f"workload takes {', '.join(WORKLOAD_KEYS)}"])
    else:
        workload.update(w)
        try:
            next(iter(synthetic(Workload(ops=1, **workload))))
        except (TypeError, ValueError) as e:
            err("workload", [f"workload: {e}"])
    spec.workload = dict(workload)
    if kind == "differential":
        pairs = data.get("pairs")
        if pairs is None:
            spec.pairs = list(combinations(spec.allocators, 2))
        elif not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(a in ALLOCATOR_NAMES for a in p)
            for p in pairs
        ):
            err("pairs", [f"pairs is a list of [A, B] with A, B in {', '.join(ALLOCATOR_NAMES)}"])
        else:
            spec.pairs = [(str(a), str(b)) for a, b in pairs]
        if not spec.pairs:
            err("kind", ["a differential campaign needs two allocators"])
    if kind == "inject":
        bugs = data.get("bugs", ["overflow:8", "use_after_free:8", "double_free"])
        bugs = bugs if isinstance(bugs, list) else [bugs]
        for b in bugs:
            try:
                parse_bug(str(b))
            except ValueError as e:
                err("bugs", [str(e)])
        spec.bugs = [str(b) for b in bugs]
    if problems:
        raise ScenarioError(problems)
    return spec


def _choice(
    value: Any, known: list[str], what: str, err: Callable[[str, list[str]], None]
) -> list[str]:
    if value in (None, "all") or (what == "arch" and value == "both"):
        return list(known)
    items = value if isinstance(value, list) else str(value).split(",")
    out = [str(v).strip() for v in items]
    bad = [v for v in out if v not in known]
    if bad:
        err(what, [f"{what} must be all or one or more of {', '.join(known)}, not {bad}"])
        return list(known)
    return list(dict.fromkeys(out))


CAMPAIGN_DIR = Path(__file__).resolve().parents[2] / "campaigns"  # the shipped specs


def load_campaign(source: str | Path | Mapping[str, Any]) -> CampaignSpec:
    """A campaign spec from a file, a shipped spec's name (``invariant_smoke``) or data."""
    if isinstance(source, Mapping):
        return parse_campaign(source)
    path = find_spec(source, CAMPAIGN_DIR)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError([Problem(str(path), None, "no such campaign spec")]) from None
    return parse_campaign(load_text(text, str(path)), path)


def parse_bug(text: str) -> tuple[str, int]:
    """``overflow:8`` -> ("overflow", 8); ``double_free`` -> ("double_free", 0)."""
    name, _, n = text.partition(":")
    if name not in BUGS:
        raise ValueError(f"bug {text!r}: expected overflow:N, use_after_free:N or double_free")
    if name == "double_free":
        if n:
            raise ValueError("double_free takes no byte count")
        return name, 0
    try:
        count = int(n, 0)
    except ValueError:
        count = 0
    if not 0 < count <= 0x1000:
        raise ValueError(f"bug {text!r}: {name} needs a byte count 1..4096, like {name}:8")
    return name, count


# ---------------------------------------------------------------------- shared pieces
def workload_ops(payload: Mapping[str, Any], n: int | None = None) -> list[Op]:
    w = Workload(
        ops=payload["ops"] if n is None else n, seed=payload["seed"], **payload["workload"]
    )
    return list(synthetic(w))


def live_only(ops: Iterable[Op], live: Iterable[int] = ()) -> list[Op]:
    """Drop operations on slots that are not live (after a shrink removed their alloc);
    ``live``: the slots live before the first operation."""
    now = set(live)
    out = []
    for op in ops:
        k = op.kind
        if k == OpKind.ALLOC:
            now.add(op.id)
        elif k in (OpKind.FREE, OpKind.REALLOC, OpKind.SIZE):
            if op.id not in now:
                continue
            if k == OpKind.FREE:
                now.discard(op.id)
            elif k == OpKind.REALLOC:
                now.discard(op.id)
                now.add(op.new_id)
        out.append(op)
    return out


def describe_fault(e: EmulationError) -> str:
    """One line: what went wrong, at which instruction, in which operation."""
    text = e.kind
    if e.address is not None:
        text += f" at 0x{e.address:x}"
    where = e.symbol or (f"0x{e.pc:x}" if e.pc is not None else "")
    if where:
        text += f", pc {where}"
    if e.instruction:
        text += f" ({e.instruction})"
    op = getattr(e, "op", None)
    if op is not None:
        text += f", in op #{getattr(e, 'op_index', '?')} ({op})"
    return text


def digest_values(values: Iterable[int]) -> str:
    h = hashlib.sha256()
    for v in values:
        h.update(v.to_bytes(8, "little"))
    return h.hexdigest()[:16]


class Heaps:
    """One process per allocator and architecture, reused by heap: a task that only creates
    and destroys heaps gets the same addresses every time; anything that corrupts a heap gets
    a fresh process instead."""

    def __init__(self) -> None:
        self._procs: dict[tuple[str, str], tuple[Process, Allocator]] = {}

    def get(self, allocator: str, arch: str, fresh: bool = False) -> tuple[Process, Allocator]:
        key = (allocator, arch)
        if fresh or key not in self._procs:
            proc = Process(arch, time_limit=30.0)
            self._procs[key] = (proc, allocator_kind(allocator).allocator(proc))
        return self._procs[key]

    def drop(self, allocator: str, arch: str) -> None:
        self._procs.pop((allocator, arch), None)


def ops_steps(
    ops: Sequence[Op],
    *,
    notes: Mapping[int, str] | None = None,
    expect_any: Callable[[int], bool] = lambda i: False,
    names: dict[int, str] | None = None,
    first: int = 0,
) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """Replay operations as scenario steps; blocks are named b<N> after the operation that
    made them. ``names`` (slot -> name) carries on from earlier steps; returns it too."""
    names = {} if names is None else names
    steps: list[dict[str, Any]] = []
    for i, op in enumerate(ops):
        n = first + i
        k = op.kind
        step: dict[str, Any]
        if k == OpKind.ALLOC:
            names[op.id] = f"b{n}"
            step = {"alloc": op.size, "as": names[op.id]}
        elif k == OpKind.FREE:
            step = {"free": names[op.id]}
        elif k == OpKind.REALLOC:
            old = names.pop(op.id)
            names[op.new_id] = f"b{n}"
            step = {"realloc": {"block": old, "size": op.size}, "as": names[op.new_id]}
        elif k == OpKind.SIZE:
            step = {"size": names[op.id]}
        else:
            step = {"validate": None}
        if op.flags and k != OpKind.VALIDATE:
            body = step[k.name.lower()]
            if k == OpKind.ALLOC:
                step["alloc"] = {"size": op.size, "flags": op.flags}
            elif isinstance(body, dict):
                body["flags"] = op.flags
            else:
                step[k.name.lower()] = {"block": body, "flags": op.flags}
        if expect_any(i):
            step["expect"] = "any"
        if notes and i in notes:
            step["note"] = notes[i]
        steps.append(step)
    return steps, names


def scenario_file(
    name: str,
    description: str,
    arch: str,
    allocators: Sequence[str],
    steps: Sequence[dict[str, Any]],
    header: Sequence[str] = (),
) -> str:
    lines = [f"# {h}" for h in header]
    lines += [
        f"name: {flow(name)}",
        f"description: {flow(description)}",
        f"arch: {arch}",
        f"allocator: {flow(list(allocators)) if len(allocators) > 1 else allocators[0]}",
        "steps:",
    ]
    lines += [f"  - {flow(s)}" for s in steps]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- invariant
@dataclass
class Mark:
    """Bytes written into a live block at the last check: its first 8 and (if it has 16 or
    more) its last 8 bytes; None once they may legitimately have changed."""

    head: bytes | None
    tail: bytes | None
    size: int


def _mark_bytes(slot: int, generation: int) -> bytes:
    return struct.pack("<Q", (slot * 0x9E3779B97F4A7C15 + generation * 0x632BE5AB) & (2**64 - 1))


class InvariantRun:
    """One invariant case: replays in chunks and checks between them."""

    def __init__(self, allocator: str, arch: str, check_every: int):
        self.kind = allocator_kind(allocator)
        self.proc = Process(arch, time_limit=60.0)
        self.allocator = self.kind.allocator(self.proc)
        self.heap = self.allocator.create_heap()
        self.check_every = check_every
        self.slots: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.marks: dict[int, Mark] = {}
        self.values: list[int] = []

    def run(self, ops: Sequence[Op]) -> dict[str, Any] | None:
        """The first failure ({kind, op, problems}) or None."""
        for start in range(0, len(ops), self.check_every):
            chunk = ops[start : start + self.check_every]
            try:
                r = replay(
                    self.allocator,
                    chunk,
                    self.heap,
                    slots=self.slots,
                    time_limit=replay_limit(len(chunk)),
                )
            except ReplayError as e:
                at = start + (e.op_index if e.op_index is not None else 0)
                return {"kind": "fault", "op": at, "problems": [describe_fault(e)]}
            except EmulationError as e:
                return {"kind": "fault", "op": start, "problems": [describe_fault(e)]}
            self.values += r.values
            self.slots = r.slots
            self._follow(chunk, r.values)
            failure = self.check(start + len(chunk) - 1, start // self.check_every)
            if failure:
                return failure
        return None

    def _follow(self, ops: Sequence[Op], values: Sequence[int]) -> None:
        """Sizes and marks through a chunk: a realloc keeps the head of a block, nothing else
        survives a free or a new allocation in the slot."""
        for op, v in zip(ops, values, strict=True):
            k = op.kind
            if k == OpKind.ALLOC:
                self.marks.pop(op.id, None)
                if v:
                    self.sizes[op.id] = op.size
                else:
                    self.sizes.pop(op.id, None)
            elif k == OpKind.FREE:
                self.marks.pop(op.id, None)
                self.sizes.pop(op.id, None)
            elif k == OpKind.REALLOC and v:
                m = self.marks.pop(op.id, None)
                old = self.sizes.pop(op.id, 0)
                self.sizes[op.new_id] = op.size
                keep = m is not None and m.head is not None and min(old, op.size) >= 8
                if keep and m is not None:
                    self.marks[op.new_id] = Mark(m.head, None, op.size)

    def check(self, op_index: int, generation: int) -> dict[str, Any] | None:
        proc, problems = self.proc, []
        report = self.kind.walker(proc, self.heap).walk()
        problems += [f"walker: {c}" for c in report.corruptions[:5]]
        kind = "walker" if problems else ""
        if not self.allocator.validate(self.heap):
            problems.append("RtlValidateHeap returned FALSE")
            kind = kind or "validate"
        blocks = _by_user_ptr(report)
        for slot, ptr in sorted(self.slots.items()):
            b = blocks.get(ptr) or find_block(report, ptr)
            size = self.sizes.get(slot)
            if b is None or b.user_ptr != ptr or (isinstance(b, Block) and not b.busy):
                problems.append(f"slot {slot}: no busy block at 0x{ptr:x}")
            else:
                req = b.requested if isinstance(b, Block) else b.size
                if size is not None and req is not None and req != size:
                    problems.append(
                        f"slot {slot}: block at 0x{ptr:x} holds 0x{req:x} bytes, "
                        f"0x{size:x} were asked for"
                    )
            if len(problems) > 8:
                break
        kind = kind or ("busy" if problems else "")
        for slot, m in self.marks.items():
            at = self.slots.get(slot)
            if at is None:
                continue
            ptr = at
            if m.head is not None and proc.read(ptr, 8) != m.head:
                problems.append(f"slot {slot}: the first 8 bytes at 0x{ptr:x} changed")
            if m.tail is not None and proc.read(ptr + m.size - 8, 8) != m.tail:
                problems.append(f"slot {slot}: the last 8 bytes of 0x{ptr:x} changed")
            if len(problems) > 8:
                break
        kind = kind or ("contents" if problems else "")
        if problems:
            return {"kind": kind, "op": op_index, "problems": problems}
        for slot, ptr in self.slots.items():
            size = self.sizes.get(slot, 0)
            mark = _mark_bytes(slot, generation)
            head = mark if size >= 8 else None
            tail = mark[::-1] if size >= 16 else None
            if head:
                proc.write(ptr, head)
            if tail:
                proc.write(ptr + size - 8, tail)
            self.marks[slot] = Mark(head, tail, size)
        return None


def _by_user_ptr(report: HeapReport) -> dict[int, Any]:
    out: dict[int, Any] = {b.user_ptr: b for b in report.blocks}
    out.update({lb.user_ptr: lb for lb in report.large_blocks})
    return out


def invariant_case(payload: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
    ops = workload_ops(payload)
    a, arch, every = payload["allocator"], payload["arch"], payload["check_every"]
    run = InvariantRun(a, arch, every)
    failure = run.run(ops)
    result: dict[str, Any] = {
        "ok": failure is None,
        "ops": len(run.values),
        "digest": digest_values(run.values),
        "live_blocks": len(run.slots),
        "failure": failure,
    }
    if failure is None:
        return "ok", result, len(ops)
    if payload["shrink"]:
        failing = ops[: failure["op"] + 1]

        def keeps(seq: list[Op]) -> bool:
            f = InvariantRun(a, arch, every).run(seq)
            return f is not None and f["kind"] == failure["kind"]

        minimal = shrink(failing, keeps, normalize=live_only, budget=payload["shrink_budget"])
        steps, _ = ops_steps(minimal)
        steps = [CREATE_HEAP, *steps, {"validate": None}, {"checkpoint": "end"}]
        result["minimal_ops"] = len(minimal)
        result["scenario"] = scenario_file(
            f"{payload['name']}-{a}-{arch}-seed{payload['seed']}",
            f"invariant broken ({failure['kind']}): {failure['problems'][0]}",
            arch,
            [a],
            steps,
            [
                f"heapemu campaign: invariant case {a} {arch} seed {payload['seed']}: "
                f"{len(failing)} operations shrunk to {len(minimal)}",
                *failure["problems"][:3],
            ],
        )
    return "failed", result, len(ops)


# ---------------------------------------------------------------------- differential
def observe(ops: Sequence[Op], values: Sequence[int]) -> list[str]:
    """Each operation's outcome without addresses, so two allocators can be compared:
    ``fail``, ``new``, ``reuse #k`` (the block allocation k had, since freed), ``in place``,
    ``moved``; free/validate ``true``/``false``; size its value."""
    slot_alloc: dict[int, int] = {}  # slot -> index of the op that made its block
    ptr_of: dict[int, int] = {}  # slot -> pointer
    freed: dict[int, int] = {}  # pointer -> index of the op that made the block freed there
    out: list[str] = []
    for i, (op, v) in enumerate(zip(ops, values, strict=False)):
        k = op.kind
        if k == OpKind.ALLOC:
            if not v:
                out.append("fail")
                continue
            out.append(f"reuse #{freed.pop(v)}" if v in freed else "new")
            slot_alloc[op.id], ptr_of[op.id] = i, v
        elif k == OpKind.FREE:
            out.append("true" if v else "false")
            if v and op.id in ptr_of:
                freed[ptr_of.pop(op.id)] = slot_alloc.pop(op.id)
        elif k == OpKind.REALLOC:
            old, made = ptr_of.pop(op.id, None), slot_alloc.pop(op.id, -1)
            if not v:
                out.append("fail")
                if old is not None:  # the block stays where it was
                    ptr_of[op.id], slot_alloc[op.id] = old, made
                continue
            if v == old:
                out.append("in place")
            elif v in freed:
                out.append(f"moved, reuse #{freed.pop(v)}")
            else:
                out.append("moved")
            if old is not None and v != old:
                freed[old] = made
            slot_alloc[op.new_id], ptr_of[op.new_id] = i, v
        elif k == OpKind.SIZE:
            out.append(str(v))
        else:
            out.append("true" if v else "false")
    return out


def _run_values(heaps: Heaps, allocator: str, arch: str, ops: Sequence[Op]) -> list[int]:
    """The operations' results on a new heap (a fault ends them: the rest are "fault")."""
    a = heaps.get(allocator, arch)[1]
    heap = a.create_heap()
    try:
        values = list(replay(a, ops, heap, time_limit=replay_limit(len(ops))).values)
    except ReplayError as e:
        heaps.drop(allocator, arch)
        return list(e.results) + [-1] * (len(ops) - len(e.results))
    a.destroy(heap)
    return values


def _first_difference(a: Sequence[str], b: Sequence[str]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def differential_case(payload: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
    ops = workload_ops(payload)
    (a, b), arch = payload["pair"], payload["arch"]
    heaps = Heaps()

    def outcomes(seq: Sequence[Op]) -> tuple[list[str], list[str], list[int], list[int]]:
        va, vb = _run_values(heaps, a, arch, seq), _run_values(heaps, b, arch, seq)
        return observe(seq, va), observe(seq, vb), va, vb

    oa, ob, va, vb = outcomes(ops)
    i = _first_difference(oa, ob)
    result: dict[str, Any] = {
        "diverged": i is not None,
        "ops": len(ops),
        "digest": {a: digest_values(va), b: digest_values(vb)},
    }
    if i is None:
        return "ok", result, 2 * len(ops)
    result["first"] = {"op": i, "operation": str(ops[i]), a: oa[i], b: ob[i]}
    if payload["shrink"]:

        def keeps(seq: list[Op]) -> bool:
            sa, sb, _, _ = outcomes(seq)
            return _first_difference(sa, sb) is not None

        minimal = shrink(ops[: i + 1], keeps, normalize=live_only, budget=payload["shrink_budget"])
        sa, sb, ma, mb = outcomes(minimal)
        j = _first_difference(sa, sb)
        assert j is not None
        result["minimal"] = {
            "ops": [str(op) for op in minimal],
            "op": j,
            a: sa[j],
            b: sb[j],
        }
        failed = {n for n, (x, y) in enumerate(zip(ma, mb, strict=True)) if not x or not y}
        steps, _ = ops_steps(
            minimal,
            notes={j: f"diverges: {a} {sa[j]}, {b} {sb[j]}"},
            expect_any=lambda n: n in failed or minimal[n].kind == OpKind.SIZE,
        )
        steps = [CREATE_HEAP, *steps, {"checkpoint": "end"}]
        result["scenario"] = scenario_file(
            f"{payload['name']}-{a}-{b}-{arch}-seed{payload['seed']}",
            f"{a} and {b} differ at step {j + 2}: {a} {sa[j]}, {b} {sb[j]}",
            arch,
            [a, b],
            steps,
            [
                f"heapemu campaign: differential case {a}/{b} {arch} seed {payload['seed']}: "
                f"first divergence at op {i} ({ops[i]}), shrunk to {len(minimal)} operations",
                f"{a}: {sa[j]}; {b}: {sb[j]} (run it: heapemu run THIS_FILE)",
            ],
        )
        result["verified"] = _verify_values(result["scenario"], arch, {a: ma, b: mb}, minimal)
    return "failed", result, 2 * len(ops)


def _verify_values(
    text: str, arch: str, values: Mapping[str, Sequence[int]], ops: Sequence[Op]
) -> bool:
    """The scenario's operation steps, run call by call on each allocator, return the values
    the replay returned (step 1 is create_heap)."""
    scenario = parse_scenario(load_text(text))
    for name, expected in values.items():
        r = run_scenario(scenario, arch, name)
        got = [s.value for s in r.steps[1 : 1 + len(ops)]]
        mask = (1 << (32 if arch == "x86" else 64)) - 1
        want = [
            (bool(v) if op.kind in (OpKind.FREE, OpKind.VALIDATE) else v)
            for op, v in zip(ops, expected, strict=True)
        ]
        got = [g & mask if isinstance(g, int) and not isinstance(g, bool) else g for g in got]
        want = [(w & mask) if isinstance(w, int) and not isinstance(w, bool) else w for w in want]
        if got != want:
            return False
    return True


# ---------------------------------------------------------------------- inject
EFFECTS = ("arbitrary_write", "arbitrary_alloc", "overlap", "fault", "detected", "none")


@dataclass
class Injection:
    """Where the bug goes: after ``before`` operations, into slot ``slot``."""

    bug: str
    count: int
    slot: int


class InjectRun:
    """One run of an inject case on a fresh process: a target block in a heap of its own, the
    workload heap, the operations before, the bug, the operations after."""

    def __init__(self, allocator: str, arch: str):
        self.allocator, self.arch = allocator, arch
        self.kind = allocator_kind(allocator)
        self.proc = Process(arch, time_limit=0)
        self.a = self.kind.allocator(self.proc)
        self.proc.instruction_budget = INJECT_BUDGET
        target_heap = self.a.create_heap()
        self.target = self.a.alloc(target_heap, TARGET_SIZE)
        self.proc.write(self.target, bytes([TARGET_FILL]) * TARGET_SIZE)
        self.heap = self.a.create_heap()
        self.ps = self.proc.arch.ptr_size
        # the target's bytes once the bug wrote it, as the scenario's last step must read them
        self.target_now: bytes | None = None

    def payload_bytes(self, count: int) -> bytes:
        word = self.target.to_bytes(self.ps, "little")
        return (word * (count // self.ps + 1))[:count]

    def run(self, before: Sequence[Op], inj: Injection, after: Sequence[Op]) -> dict[str, Any]:
        """Effects: {effect (the worst of EFFECTS), effects, op (where, in ``after``), ...}."""
        effects: dict[str, Any] = {}
        try:
            r = replay(self.a, before, self.heap)
        except ReplayError as e:
            fault = f"before the bug: {describe_fault(e)}"
            return {"effect": "fault", "effects": {"fault": fault}, "op": None}
        slots, sizes = r.slots, _sizes(before, r.values)
        ptr = slots.get(inj.slot)
        if ptr is None:
            return {"effect": "none", "effects": {}, "op": None, "skipped": "slot not live"}
        size = sizes.get(inj.slot, 0)
        try:
            if inj.bug == "overflow":
                self.proc.write(ptr + size, self.payload_bytes(inj.count))
            else:
                self.a.free(self.heap, ptr)
                slots = {k: v for k, v in slots.items() if k != inj.slot}
                if inj.bug == "use_after_free":
                    self.proc.write(ptr, self.payload_bytes(inj.count))
                else:
                    if not self.a.free(self.heap, ptr):
                        effects["detected"] = "the second RtlFreeHeap returned FALSE"
        except EmulationError as e:
            return {"effect": "fault", "effects": {"fault": describe_fault(e)}, "op": -1}
        live = {s: (slots[s], sizes.get(s, 0)) for s in slots}
        values: list[int] = []
        fault_op: int | None = None
        try:
            values = list(replay(self.a, after, self.heap, slots=slots).values)
        except ReplayError as e:
            values = list(e.results)
            fault_op = e.op_index
            effects["fault"] = describe_fault(e)
        except EmulationError as e:
            fault_op = 0
            effects["fault"] = describe_fault(e)
        first: dict[str, int] = {}
        overlapped: int | None = None  # the slot of the live block the overlap hit
        for i, (op, v) in enumerate(zip(after, values, strict=False)):
            k = op.kind
            if k in (OpKind.ALLOC, OpKind.REALLOC) and v:
                if self.target - 0x100 <= v < self.target + TARGET_SIZE:
                    first.setdefault("arbitrary_alloc", i)
                src = op.id if k == OpKind.REALLOC else None
                for s, (p, n) in live.items():
                    if s != src and p < v + max(op.size, 1) and v < p + max(n, 1):
                        if "overlap" not in first:
                            first["overlap"] = i
                            overlapped = s
                            effects["overlap"] = (
                                f"op {i} got [0x{v:x}, +0x{op.size:x}), overlapping the live "
                                f"block [0x{p:x}, +0x{n:x})"
                            )
                        break
                if k == OpKind.REALLOC:
                    live.pop(op.id, None)
                live[op.new_id if k == OpKind.REALLOC else op.id] = (v, op.size)
            elif k == OpKind.FREE:
                live.pop(op.id, None)
        if "arbitrary_alloc" in first:
            effects["arbitrary_alloc"] = f"op {first['arbitrary_alloc']} got the chosen address"
        try:
            now: bytes | None = self.proc.read(self.target, TARGET_SIZE)
        except EmulationError:  # its pages are gone: not a write a scenario can read back
            now = None
        if now is not None and now != bytes([TARGET_FILL]) * TARGET_SIZE:
            self.target_now = now
            if "fault" not in effects:
                effects["arbitrary_write"] = "the chosen target block was written"
            elif fault_op and self._written_before(before, inj, after[:fault_op]):
                # a scenario stops at the fault: it shows the write by ending just before it
                effects["arbitrary_write"] = (
                    f"the chosen target block was written by op {fault_op - 1}; the heap "
                    "then faulted"
                )
                first["arbitrary_write"] = fault_op - 1
            else:  # written in the operation that faulted: a scenario can show only the fault
                self.target_now = None
                effects["fault"] += "; the chosen target block was written in that operation"
        if fault_op is None and "fault" not in effects:
            try:
                report = self.kind.walker(self.proc, self.heap).walk()
                if report.corruptions:
                    effects.setdefault("detected", f"walker: {report.corruptions[0]}")
                if not self.a.validate(self.heap):
                    effects.setdefault("detected", "RtlValidateHeap returned FALSE")
            except EmulationError as e:
                effects["fault"] = f"while validating: {describe_fault(e)}"
                fault_op = len(after)  # RtlValidateHeap after the last op: the scenario's too
        effect = next((e for e in EFFECTS if e in effects), "none")
        where = fault_op if effect == "fault" else first.get(effect)
        out: dict[str, Any] = {"effect": effect, "effects": effects, "op": where}
        if effect == "overlap":
            out["overlapped_slot"] = overlapped
        return out

    def _written_before(self, before: Sequence[Op], inj: Injection, after: Sequence[Op]) -> bool:
        """Whether ``after`` alone (the operations before the fault) writes the target: the
        same run again on a fresh process, which stops there."""
        if not after:
            return False
        again = InjectRun(self.allocator, self.arch)
        again.run(before, inj, after)
        self.target_now = again.target_now
        return again.target_now is not None


def _sizes(ops: Sequence[Op], values: Sequence[int]) -> dict[int, int]:
    sizes: dict[int, int] = {}
    for op, v in zip(ops, values, strict=True):
        if op.kind == OpKind.ALLOC and v:
            sizes[op.id] = op.size
        elif op.kind == OpKind.FREE:
            sizes.pop(op.id, None)
        elif op.kind == OpKind.REALLOC and v:
            sizes.pop(op.id, None)
            sizes[op.new_id] = op.size
    return sizes


def inject_case(payload: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
    bug, count = parse_bug(payload["bug"])
    a, arch, seed = payload["allocator"], payload["arch"], payload["seed"]
    n_before, n_after = payload["ops"], payload["after"]
    every = workload_ops(payload, n_before + n_after)
    before, after = every[:n_before], every[n_before:]
    live = sorted(_sizes(before, [1] * len(before)))  # slots live at the bug (all allocs succeed)
    rng = random.Random(f"{seed}:{payload['bug']}")
    if not live:
        return "ok", {"effect": "none", "skipped": "no live block"}, 0
    inj = Injection(bug, count, rng.choice(live))
    dead = {inj.slot} if bug != "overflow" else set()

    def after_live(b: Sequence[Op], c: Sequence[Op]) -> list[Op]:
        """``c`` without operations on blocks not live after ``b`` and the bug."""
        return live_only(c, set(_sizes(b, [1] * len(b))) - dead)

    after = after_live(before, after)
    out = InjectRun(a, arch).run(before, inj, after)
    result: dict[str, Any] = {"bug": payload["bug"], "slot": inj.slot, **out}
    ops = n_before + n_after
    if out["effect"] in ("none", "detected"):
        return "ok", result, ops
    if payload["shrink"]:
        marker = Op(OpKind.VALIDATE, 0xFFFF_FFFE, 0, 0, 0)  # stands for the bug; never removed
        at = out["op"]  # the op showing the effect (None: the whole run shows it)
        seq = [*before, marker, *(after[: at + 1] if at is not None else after)]

        def split(s: Sequence[Op]) -> tuple[list[Op], list[Op]]:
            i = list(s).index(marker)
            return list(s[:i]), list(s[i + 1 :])

        def keeps(s: list[Op]) -> bool:
            b, c = split(s)
            if inj.slot not in _sizes(b, [1] * len(b)):
                return False
            return bool(InjectRun(a, arch).run(b, inj, c)["effect"] == out["effect"])

        def normalize(s: list[Op]) -> list[Op]:
            b, c = split(s)
            b = live_only(b)
            return [*b, marker, *after_live(b, c)]

        if not keeps(seq):  # cut too early: the effect needs later operations
            seq = [*before, marker, *after]
        minimal = shrink(
            seq,
            keeps,
            fixed=lambda op: op == marker,
            normalize=normalize,
            budget=payload["shrink_budget"],
        )
        b, c = split(minimal)
        final = InjectRun(a, arch)
        again = final.run(b, inj, c)
        result["minimal"] = {"before": len(b), "after": len(c), "effect": again["effect"]}
        result["scenario"] = _inject_scenario(payload, inj, final, b, c, again)
        result["verified"] = _reproduces(result["scenario"], again["effect"])
    return "failed", result, ops


def _reproduces(text: str, effect: str) -> bool:
    """``heapemu run`` of the written scenario shows the effect: a fault stops it at an
    operation with an EmulationError; any other effect runs to the end, its check included
    (the target's bytes read back, the overlap's layout step)."""
    r = run_scenario(parse_scenario(load_text(text)))
    if effect == "fault":
        return r.failure is not None and r.failure.fault is not None
    return r.ok


def _inject_scenario(
    payload: Mapping[str, Any],
    inj: Injection,
    run: InjectRun,
    before: Sequence[Op],
    after: Sequence[Op],
    out: Mapping[str, Any],
) -> str:
    a, arch = payload["allocator"], payload["arch"]
    steps: list[dict[str, Any]] = [
        {"create_heap": "HEAP_GROWABLE", "as": "target_heap"},
        {"alloc": TARGET_SIZE, "as": "target", "note": "the chosen address the bug aims at"},
        {"write": {"at": "target", "fill": TARGET_FILL, "size": TARGET_SIZE}},
        {"create_heap": "HEAP_GROWABLE", "as": "heap"},
    ]
    body, names = ops_steps(before)
    steps += body
    victim = names[inj.slot]
    sizes = _sizes(before, [1] * len(before))
    data = run.payload_bytes(inj.count).hex() if inj.count else ""
    note = f"injected bug: {payload['bug']}"
    if inj.bug == "overflow":
        steps.append(
            {"write": {"at": victim, "offset": sizes[inj.slot], "data": data}, "note": note}
        )
    else:
        steps.append({"free": victim, "note": note})
        if inj.bug == "use_after_free":
            steps.append({"write": {"at": victim, "data": data}, "note": note})
        else:
            steps.append({"free": victim, "expect": "any", "note": note})
        names.pop(inj.slot, None)  # freed: an overflowed block stays live
    effect = out["effect"]
    at = out["op"]
    if effect == "overlap" and at is not None and at < len(after):
        # the block it overlaps, named as it was just before (its slot may be the same one)
        _, names_before = ops_steps(after[:at], names=dict(names), first=len(before) + 1)
        head, names_then = ops_steps(
            after[: at + 1], names=dict(names), first=len(before) + 1, expect_any=lambda i: True
        )
        rest, _ = ops_steps(
            after[at + 1 :],
            names=dict(names_then),
            first=len(before) + 2 + at,
            expect_any=lambda i: True,
        )
        op = after[at]
        new = names_then[op.new_id if op.kind == OpKind.REALLOC else op.id]
        old = names_before.get(out.get("overlapped_slot", -1))
        head[at]["note"] = "overlaps a live block"
        tail = head + ([{"layout": {"overlap": [old, new]}}] if old else []) + rest
    else:
        if effect == "arbitrary_write" and at is not None:
            after = after[: at + 1]  # the operations after it fault: the scenario stops here
        tail, _ = ops_steps(after, names=names, first=len(before) + 1, expect_any=lambda i: True)
    if effect == "arbitrary_alloc" and at is not None and at < len(tail):
        tail[at]["note"] = "returns the chosen address"
    steps += tail
    if effect == "fault" and at == len(after):  # the campaign's heap check after the last op
        steps.append({"validate": None, "note": "RtlValidateHeap faults on the corrupted heap"})
    if effect == "arbitrary_write":
        assert run.target_now is not None
        steps.append(
            {
                "read": {"at": "target", "size": TARGET_SIZE},
                "expect": run.target_now.hex(),
                "note": "the chosen target block, written through the heap",
            }
        )
    return scenario_file(
        f"{payload['name']}-{a}-{arch}-{payload['bug'].replace(':', '')}-seed{payload['seed']}",
        f"{payload['bug']} on {a} {arch}: {effect} ({out['effects'].get(effect, '')})",
        arch,
        [a],
        steps,
        [
            f"heapemu campaign: inject case {a} {arch} {payload['bug']} seed {payload['seed']}: "
            f"{effect}",
            "Run it: heapemu run THIS_FILE",
        ],
    )
