"""Search specs: what the attacker controls, what the program does, and the layout wanted.

``heapemu search SPEC.yaml`` reads one (YAML or JSON, checked before anything runs; every
problem is reported as ``file:line: problem``)::

    name: adjacent-0x40                 # default: the file name
    allocator: all                      # every registered allocator (default), one, or a list
    arch: both                          # x86, x64, both (default) or a list
    heap: HEAP_GROWABLE                 # the heap the program uses (or {flags, reserve, commit})
    prefix:                             # what the program did before the attacker acts:
      - noise: {ops: 300, seed: 7, sizes: "uniform:8:0x200", lifetime: 40}
      - alloc: {size: 0x40, count: 8}   # ... scenario steps (alloc, free, realloc)
        as: hole
      - free: 'hole[1], hole[3]'
    primitives:                         # what the attacker can make the program do, and the cost
      alloc: {sizes: [0x40, 0x80], cost: 1}    # sizes: a list, one size or {min, max, step}
      free: {cost: 1, blocks: [hole]}   # frees its own blocks (and, if given, these)
      realloc: {sizes: [0x100], cost: 2}
    target:                             # the program's operations the goal is about, in order;
      - alloc: 0x40                     # the search places attacker operations around them
        as: source
      - alloc: 0x40
        as: victim
    goal: {adjacent: [source, victim]}  # or {distance: [a, b], max: N}, {reuse: {freed, by}}
    search: {max_ops: 24, time_limit: 60, seed: 0, strategy: random}
    tags: [adjacency]

``noise:`` expands (deterministically, ``emu.heap.replay.workload.synthetic``) into the alloc,
free and realloc steps a program with that workload would have made; a found solution's
scenario lists them one by one.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emu.heap.goals import Goal, parse_goal
from emu.heap.registry import ALLOCATOR_NAMES
from emu.heap.replay.workload import OpKind, Workload, synthetic
from emu.scenario import Problem, ScenarioError, load_text, parse_scenario
from emu.scenario.model import ARCHES, Ref

PRIMITIVES = ("alloc", "free", "realloc")
STEP_OPS = ("alloc", "free", "realloc")  # what prefix and target steps may do
STRATEGIES = ("random", "evolve")
SPEC_KEYS = (
    "name",
    "description",
    "allocator",
    "arch",
    "heap",
    "prefix",
    "primitives",
    "target",
    "goal",
    "search",
    "tags",
)
SEARCH_DEFAULTS: dict[str, Any] = {
    "max_ops": 24,  # attacker operations per candidate, at most
    "time_limit": 60.0,  # seconds per (allocator, arch)
    "max_candidates": 0,  # 0: no bound but the time
    "seed": 0,
    "strategy": "random",
}
NOISE_KEYS = ("ops", "seed", "sizes", "lifetime", "lifetimes", "realloc")


@dataclass(frozen=True)
class Primitive:
    """One thing the attacker can trigger: ``kind`` with a size from ``sizes`` (alloc,
    realloc), at ``cost``; ``blocks``: names of the program's blocks it may also free."""

    kind: str
    sizes: tuple[int, ...] = ()
    cost: int = 1
    blocks: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cost": self.cost}
        if self.sizes:
            out["sizes"] = list(self.sizes)
        if self.blocks:
            out["blocks"] = list(self.blocks)
        return out


@dataclass
class SearchSpec:
    """A checked spec. ``prefix`` and ``target`` are scenario steps as plain data (``noise``
    already expanded), so a solution's scenario repeats them verbatim."""

    name: str
    allocators: list[str]
    arches: list[str]
    heap: dict[str, Any]  # create_heap's arguments: {flags, reserve, commit}
    prefix: list[dict[str, Any]]
    target: list[dict[str, Any]]
    goal: Goal
    primitives: dict[str, Primitive]
    search: dict[str, Any] = field(default_factory=lambda: dict(SEARCH_DEFAULTS))
    description: str = ""
    tags: list[str] = field(default_factory=list)
    path: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain data that ``spec_from_json`` turns back into this spec (for worker tasks)."""
        return {
            "name": self.name,
            "description": self.description,
            "allocator": list(self.allocators),
            "arch": list(self.arches),
            "heap": dict(self.heap),
            "prefix": _plain(self.prefix),
            "primitives": {k: p.to_json() for k, p in self.primitives.items()},
            "target": _plain(self.target),
            "goal": self.goal.to_json(),
            "search": dict(self.search),
            "tags": list(self.tags),
            "path": self.path,
        }

    def setup_steps(self) -> list[dict[str, Any]]:
        """create_heap and the prefix, as scenario steps."""
        return [{"create_heap": dict(self.heap), "as": "heap"}, *self.prefix]


def _plain(value: Any) -> Any:
    """LineDict/LineList (which remember lines) as plain dicts and lists."""
    return json.loads(json.dumps(value))


# ---------------------------------------------------------------------- checking
class _SpecChecker:
    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []

    def err(self, line: int | None, message: str) -> None:
        self.problems.append(Problem(self.file, line, message))

    def integer(self, value: Any, line: int | None, what: str, minimum: int = 0) -> int | None:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = int(value.replace("_", ""), 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.err(line, f"{what} must be an integer of at least {minimum}, not {value!r}")
            return None
        return value

    def names(self, value: Any, line: int | None, what: str, known: list[str]) -> list[str]:
        if value in (None, "all"):
            return list(known)
        if value == "both" and what == "arch":
            return list(known)
        items = value if isinstance(value, list) else str(value).split(",")
        out = [str(v).strip() for v in items]
        bad = [v for v in out if v not in known]
        if bad or not out:
            self.err(line, f"{what} must be all, or one or more of {', '.join(known)}, not {bad}")
            return list(known)
        return list(dict.fromkeys(out))

    def sizes(self, value: Any, line: int | None, what: str) -> tuple[int, ...]:
        if isinstance(value, Mapping):
            lo = self.integer(value.get("min"), line, f"{what} min", 1)
            hi = self.integer(value.get("max"), line, f"{what} max", 1)
            step = self.integer(value.get("step", 0x10), line, f"{what} step", 1)
            if lo is None or hi is None or step is None or hi < lo:
                return ()
            if (hi - lo) // step > 4096:
                self.err(line, f"{what}: more than 4096 sizes; use a larger step")
                return ()
            return tuple(range(lo, hi + 1, step))
        items = value if isinstance(value, list) else [value]
        out = [self.integer(v, line, what, 1) for v in items]
        if not items or any(v is None for v in out):
            self.err(line, f"{what} needs sizes: a size, a list, or {{min, max, step}}")
            return ()
        return tuple(dict.fromkeys(v for v in out if v is not None))

    def primitives(self, value: Any, line: int | None) -> dict[str, Primitive]:
        if not isinstance(value, Mapping) or not value:
            self.err(line, f"primitives is a mapping of {', '.join(PRIMITIVES)}")
            return {}
        lines: dict[Any, int] = getattr(value, "lines", {})
        out: dict[str, Primitive] = {}
        for kind, body in value.items():
            ln = lines.get(kind, line)
            if kind not in PRIMITIVES:
                self.err(ln, f"unknown primitive {kind!r} (primitives: {', '.join(PRIMITIVES)})")
                continue
            body = {} if body is None else body
            if not isinstance(body, Mapping):
                body = {"sizes": body} if kind != "free" else {"cost": body}
            allowed = {"alloc": ("sizes", "cost"), "free": ("cost", "blocks")}.get(
                kind, ("sizes", "cost")
            )
            extra = [k for k in body if k not in allowed]
            if extra:
                self.err(ln, f"{kind} takes {', '.join(allowed)}, not {', '.join(extra)}")
                continue
            sizes: tuple[int, ...] = ()
            if kind != "free":
                if "sizes" not in body:
                    self.err(ln, f"{kind} needs sizes:")
                    continue
                sizes = self.sizes(body["sizes"], ln, f"{kind} sizes")
            cost = self.integer(body.get("cost", 1), ln, f"{kind} cost", 0)
            blocks = body.get("blocks") or []
            blocks = blocks if isinstance(blocks, list) else [blocks]
            out[kind] = Primitive(kind, sizes, cost or 0, tuple(str(b) for b in blocks))
        if "alloc" not in out and not self.problems:
            self.err(line, "primitives need alloc: (the attacker must be able to allocate)")
        return out

    def noise(self, value: Any, line: int | None, first_id: int) -> list[dict[str, Any]]:
        """A workload's operations as scenario steps (blocks named n0, n1, ...)."""
        if not isinstance(value, Mapping):
            self.err(line, f"noise takes {{{', '.join(NOISE_KEYS)}}}")
            return []
        extra = [k for k in value if k not in NOISE_KEYS]
        if extra:
            self.err(line, f"noise takes {', '.join(NOISE_KEYS)}, not {', '.join(extra)}")
            return []
        fields: dict[str, Any] = {k: value[k] for k in value}
        fields["ops"] = self.integer(fields.get("ops", 100), line, "noise ops", 0)
        if fields["ops"] is None:
            return []
        if fields["ops"] > 100_000:
            self.err(line, "noise: at most 100000 operations")
            return []
        try:
            ops = list(synthetic(Workload(**fields, size_queries=0.0)))
        except (TypeError, ValueError) as e:
            self.err(line, f"noise: {e}")
            return []
        steps: list[dict[str, Any]] = []
        names: dict[int, str] = {}
        n = first_id
        for op in ops:
            if op.kind == OpKind.ALLOC:
                names[op.id] = f"n{n}"
                steps.append({"alloc": op.size, "as": f"n{n}"})
                n += 1
            elif op.kind == OpKind.FREE:
                steps.append({"free": names.pop(op.id)})
            elif op.kind == OpKind.REALLOC:
                old = names.pop(op.id)
                names[op.new_id] = f"n{n}"
                steps.append({"realloc": {"block": old, "size": op.size}, "as": f"n{n}"})
                n += 1
        return steps

    def steps(self, value: Any, line: int | None, what: str) -> list[dict[str, Any]]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.err(line, f"{what} is a list of steps")
            return []
        lines = getattr(value, "lines", [line] * len(value))
        out: list[dict[str, Any]] = []
        noise_blocks = 0
        for raw, ln in zip(value, lines, strict=True):
            if isinstance(raw, Mapping) and "noise" in raw and what == "prefix":
                if len(raw) != 1:
                    self.err(ln, "a noise step has nothing else")
                    continue
                expanded = self.noise(raw["noise"], ln, noise_blocks)
                noise_blocks += sum(1 for s in expanded if "as" in s)
                out.extend(expanded)
                continue
            ops = [k for k in raw if k in STEP_OPS] if isinstance(raw, Mapping) else []
            if not ops:
                shown = list(raw) if isinstance(raw, Mapping) else raw
                self.err(ln, f"{what} steps are {', '.join(STEP_OPS)}, not {shown!r}")
                continue
            if "heap" in raw:
                self.err(ln, f"{what} steps use the spec's one heap; drop heap:")
                continue
            out.append(raw)
        return out


ARCHES_LIST = list(ARCHES)


def parse_search_spec(data: Any, path: str | Path | None = None) -> SearchSpec:
    """A SearchSpec from loaded data; ScenarioError lists every problem with its line."""
    file = str(path) if path else "<search spec>"
    c = _SpecChecker(file)
    if not isinstance(data, Mapping):
        raise ScenarioError([Problem(file, 1, "a search spec is a mapping (see heapemu search)")])
    lines: dict[Any, int] = getattr(data, "lines", {})
    for key in data:
        if key not in SPEC_KEYS:
            c.err(lines.get(key), f"unknown key {key!r} (keys: {', '.join(SPEC_KEYS)})")
    for key in ("primitives", "target", "goal"):
        if key not in data:
            c.err(getattr(data, "line", 1), f"missing {key}:")
    name = str(data.get("name") or (Path(path).stem if path else "search"))
    allocators = c.names(
        data.get("allocator"), lines.get("allocator"), "allocator", list(ALLOCATOR_NAMES)
    )
    arches = c.names(data.get("arch", "both"), lines.get("arch"), "arch", ARCHES_LIST)
    heap_value = data.get("heap", "HEAP_GROWABLE")
    heap = dict(heap_value) if isinstance(heap_value, Mapping) else {"flags": heap_value}
    prefix = c.steps(data.get("prefix"), lines.get("prefix"), "prefix")
    target = c.steps(data.get("target"), lines.get("target"), "target")
    if "target" in data and not target and not c.problems:
        c.err(lines.get("target"), "target needs at least one step")
    primitives = c.primitives(data.get("primitives"), lines.get("primitives"))
    goal: Goal | None = None
    if "goal" in data:
        try:
            goal = parse_goal(data["goal"])
        except ValueError as e:
            c.err(lines.get("goal"), f"goal: {e}")
        if goal is not None and goal.kind == "overlap":
            c.err(lines.get("goal"), "goal: overlap is not a layout to search for")
    search = dict(SEARCH_DEFAULTS)
    sv = data.get("search") or {}
    if not isinstance(sv, Mapping):
        c.err(lines.get("search"), "search is a mapping")
        sv = {}
    for k, v in sv.items():
        ln = getattr(sv, "lines", {}).get(k, lines.get("search"))
        if k not in SEARCH_DEFAULTS:
            c.err(ln, f"search takes {', '.join(SEARCH_DEFAULTS)}, not {k!r}")
        elif k == "strategy":
            if v not in STRATEGIES:
                c.err(ln, f"strategy must be {' or '.join(STRATEGIES)}, not {v!r}")
            search[k] = v
        elif k == "time_limit":
            if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
                c.err(ln, f"time_limit must be seconds > 0, not {v!r}")
            search[k] = float(v)
        else:
            search[k] = c.integer(v, ln, k, 1 if k == "max_ops" else 0)
    if c.problems:
        raise ScenarioError(c.problems)
    assert goal is not None
    # the steps are scenario steps: let the scenario checker read them (names, references)
    scenario = _as_scenario(name, heap, prefix, target, goal, file, lines.get("prefix"))
    known = set(scenario.names)
    for b in primitives.get("free", Primitive("free")).blocks:
        r = Ref.parse(b)
        if r is None or r.name not in known:
            c.err(lines.get("primitives"), f"free blocks: {b!r} names no prefix block")
    if c.problems:
        raise ScenarioError(c.problems)
    tags = data.get("tags") or []
    return SearchSpec(
        name=name,
        allocators=allocators,
        arches=arches,
        heap=_plain(heap),
        prefix=_plain(prefix),
        target=_plain(target),
        goal=goal,
        primitives=primitives,
        search=search,
        description=str(data.get("description") or ""),
        tags=[str(t) for t in (tags if isinstance(tags, list) else [tags])],
        path=str(path) if path else None,
    )


def _as_scenario(
    name: str,
    heap: dict[str, Any],
    prefix: list[Any],
    target: list[Any],
    goal: Goal,
    file: str,
    line: int | None,
) -> Any:
    steps = [{"create_heap": heap, "as": "heap"}, *prefix, *target, {"layout": goal.to_json()}]
    try:
        return parse_scenario({"name": name, "steps": steps}, file)
    except ScenarioError as e:
        # the checker numbers steps from create_heap: say which part of the spec it means
        parts = [("prefix step", len(prefix)), ("target step", len(target)), ("goal", 1)]
        problems = []
        for p in e.problems:
            m = _STEP_MESSAGE.match(p.message)
            msg = p.message
            if m:
                i = int(m["n"]) - 1  # 0: create_heap
                for label, n in parts:
                    if 1 <= i <= n:
                        where = label if label == "goal" else f"{label} {i}{m['op'] or ''}"
                        msg = f"{where}: {m['rest']}"
                        break
                    i -= n
            problems.append(Problem(file, p.line or line, msg))
        raise ScenarioError(problems) from None


_STEP_MESSAGE = re.compile(r"^step (?P<n>\d+)(?P<op> \([a-z_]+\))?: (?P<rest>.*)$", re.S)


REPO = Path(__file__).resolve().parents[2]
SEARCH_DIR = REPO / "searches"  # the shipped search specs (a checkout or an editable install)


def find_spec(name: str | Path, directory: Path = SEARCH_DIR) -> Path:
    """A file as given, else a shipped spec of that name (``adjacent_holes``)."""
    path = Path(name)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path
    shipped = directory / f"{name}.yaml"
    return shipped if shipped.is_file() else path


def load_search_spec(source: str | Path | Mapping[str, Any]) -> SearchSpec:
    """A SearchSpec from a file (YAML/JSON) or loaded data."""
    if isinstance(source, Mapping):
        return parse_search_spec(source)
    path = find_spec(source)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError([Problem(str(path), None, "no such search spec")]) from None
    return parse_search_spec(load_text(text, str(path)), path)


def spec_from_json(data: Mapping[str, Any]) -> SearchSpec:
    """The inverse of ``SearchSpec.to_json`` (noise is already expanded there)."""
    return parse_search_spec({k: v for k, v in data.items() if k != "path"}, data.get("path"))
