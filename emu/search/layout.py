"""Heap-layout search: attacker operations that make a layout goal hold, found by running
candidates on the real allocator code from the end of the program's prefix.

``search(spec, allocator, arch)`` evaluates candidates (``Evaluator``: replay inside the
emulator from a ``PrefixState``, a cheap score from the pointers the program was given, and the
heap walker's verdict for the promising ones), keeps the best, shrinks the first solution to a
minimal sequence and writes it as a scenario, which it replays call by call in a fresh process
(``run_scenario``) to check it.

Two strategies: ``random`` is the baseline of Heelan et al. (USENIX Security 2018): each
candidate is drawn afresh (a length up to ``max_ops``, each operation a random primitive, the
target steps at random places). ``evolve`` keeps the best candidate by score and mostly
mutates it (insert, delete, resize, move a target step), drawing a fresh one now and then; the
benchmark (``benchmarks/bench_search.py``) compares them on the shipped suite.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from emu.errors import EmulationError
from emu.heap.goals import GoalCheck, check_goal
from emu.heap.registry import allocator_kind
from emu.heap.replay.workload import Op, OpKind
from emu.scenario import Ref, load_text, parse_scenario, run_scenario
from emu.search.program import (
    ALLOC,
    FREE,
    REALLOC,
    TARGET,
    Action,
    Candidate,
    Program,
    scenario_text,
)
from emu.search.shrink import shrink
from emu.search.spec import SearchSpec
from emu.search.state import PrefixState

# how far past the source's requested size the victim may start and still be worth a walk
SLACK = 0x200
MUTATE = 0.5  # evolve: share of candidates that are mutations of the kept one
RESTART = 150  # evolve: evaluations without improvement before starting from scratch


@dataclass
class Outcome:
    """A candidate's score (lower is better; 0 solved; inf: it could not run as written)."""

    score: float
    check: GoalCheck | None = None

    @property
    def solved(self) -> bool:
        return self.check is not None and self.check.holds


class Evaluator:
    """Runs candidates for one (spec, allocator, arch) and scores them."""

    def __init__(self, spec: SearchSpec, allocator: str, arch: str):
        self.spec = spec
        self.program = Program.compile(spec)
        self.kind = allocator_kind(allocator)
        heap = parse_scenario({"steps": [spec.setup_steps()[0]]}).steps[0].args
        self.state = PrefixState(
            self.kind, arch, (heap["flags"], heap["reserve"], heap["commit"]), self.program.prefix
        )
        self.goal = spec.goal
        self.source_size = self._requested(self.goal.a)
        self.span = self.source_size + 0x10  # refined by each walk
        self.evaluations = 0
        self.walks = 0
        self.faults = 0

    def _requested(self, name: str) -> int:
        """The size the program asked for the block ``name`` (for the pointer score)."""
        p = self.program
        ref = Ref.parse(name)
        assert ref is not None
        for ops, names in [
            *((c.ops, c.names) for c in reversed(p.targets)),
            (p.prefix, p.prefix_names),
        ]:
            b = names.get(ref.name)
            if b is not None:
                return ops[b.many[ref.index or 0] if b.many is not None else b.at].size
        return 0

    def evaluate(self, candidate: Candidate) -> Outcome:
        self.evaluations += 1
        ops, starts = self.program.assemble(candidate)
        try:
            with self.state.run(ops) as run:
                if not _all_succeeded(ops, run.values):
                    return Outcome(math.inf)
                pa = self.program.pointer(self.goal.a, run.prefix_values, run.values, starts)
                pb = self.program.pointer(self.goal.b, run.prefix_values, run.values, starts)
                if self.goal.kind == "reuse":
                    score = float(abs(pb - pa))
                    promising = pa == pb
                else:
                    delta = pb - pa
                    score = abs(delta - self.span) if delta > 0 else 1e12 - delta
                    promising = 0 < delta <= self.source_size + SLACK + self.goal.max
                if not promising:
                    return Outcome(max(score, 1.0))
                self.walks += 1
                report = self.kind.walker(run.proc, run.heap).walk()
                check = check_goal(report, self.goal, {self.goal.a: pa, self.goal.b: pb})
                block = check.blocks.get(self.goal.a)
                if block is not None:
                    self.span = block["size"]
                return Outcome(0.0 if check.holds else max(score, 1.0), check)
        except EmulationError:
            self.faults += 1
            return Outcome(math.inf)


def _all_succeeded(ops: list[Op], values: Any) -> bool:
    """Every alloc/realloc got memory and every free said TRUE: the scenario's default
    checks, so the written scenario runs the same way."""
    for op, v in zip(ops, values, strict=True):
        if op.kind in (OpKind.ALLOC, OpKind.REALLOC):
            if not v:
                return False
        elif op.kind == OpKind.FREE and not v:
            return False
    return True


# ---------------------------------------------------------------------- making candidates
class Generator:
    """Random candidates and mutations of them, for one program."""

    def __init__(self, program: Program, rng: random.Random, max_ops: int):
        self.program = program
        self.rng = rng
        self.max_ops = max_ops
        prims = program.spec.primitives
        self.alloc_sizes = prims["alloc"].sizes
        self.realloc_sizes = prims["realloc"].sizes if "realloc" in prims else ()
        self.can_free = "free" in prims
        self.n_freeable = len(program.freeable)
        self.next_label = 0

    def _label(self) -> int:
        self.next_label += 1
        return self.next_label - 1

    def action(self, live: list[int], freed_program: set[int]) -> Action:
        """One random attacker action given the blocks it holds."""
        r = self.rng.random()
        program_blocks = [-1 - k for k in range(self.n_freeable) if -1 - k not in freed_program]
        if self.can_free and r < 0.3 and (live or program_blocks):
            handle = self.rng.choice(live + program_blocks)
            if handle >= 0:
                live.remove(handle)
            else:
                freed_program.add(handle)
            return Action(FREE, 0, handle)
        if self.realloc_sizes and r > 0.9 and live:
            return Action(REALLOC, self.rng.choice(self.realloc_sizes), self.rng.choice(live))
        label = self._label()
        live.append(label)
        return Action(ALLOC, self.rng.choice(self.alloc_sizes), label)

    def fresh(self) -> Candidate:
        n = self.rng.randint(0, self.max_ops)
        live: list[int] = []
        freed: set[int] = set()
        actions = [self.action(live, freed) for _ in range(n)]
        places = sorted(self.rng.randint(0, n) for _ in self.program.targets)
        out: list[Action] = []
        t = 0
        for i in range(n + 1):
            while t < len(places) and places[t] == i:
                out.append(Action(TARGET, t))
                t += 1
            if i < n:
                out.append(actions[i])
        return self.program.normalize(out)

    def mutate(self, candidate: Candidate) -> Candidate:
        out = list(candidate)
        for _ in range(self.rng.choice((1, 1, 1, 2, 3))):
            attacker = [i for i, a in enumerate(out) if a.kind != TARGET]
            r = self.rng.random()
            if r < 0.35 and len(attacker) < self.max_ops:  # insert
                freed = {a.handle for a in out if a.kind == FREE and a.handle < 0}
                pos = self.rng.randint(0, len(out))
                live = _live_before(out, pos)
                out.insert(pos, self.action(live, freed))
            elif r < 0.6 and attacker:  # delete
                del out[self.rng.choice(attacker)]
            elif r < 0.8 and attacker:  # another size
                i = self.rng.choice(attacker)
                a = out[i]
                if a.kind == ALLOC:
                    out[i] = a._replace(value=self.rng.choice(self.alloc_sizes))
                elif a.kind == REALLOC:
                    out[i] = a._replace(value=self.rng.choice(self.realloc_sizes))
            else:  # move a target step
                targets = [i for i, a in enumerate(out) if a.kind == TARGET]
                if targets:
                    i = self.rng.choice(targets)
                    a = out.pop(i)
                    lo = max((j for j in targets if j < i), default=-1) + 1
                    hi = min((j - 1 for j in targets if j > i), default=len(out))
                    out.insert(self.rng.randint(lo, max(lo, hi)), a)
        return self.program.normalize(out)


def _live_before(actions: list[Action], pos: int) -> list[int]:
    live: list[int] = []
    for a in actions[:pos]:
        if a.kind == ALLOC:
            live.append(a.handle)
        elif a.kind == FREE and a.handle in live:
            live.remove(a.handle)
    return live


# ---------------------------------------------------------------------- the search
@dataclass
class SearchResult:
    spec: str
    allocator: str
    arch: str
    seed: int
    strategy: str
    solved: bool
    candidates: int
    walks: int
    seconds: float
    seconds_to_solution: float | None = None
    found: dict[str, Any] | None = None  # the first solution, before shrinking
    solution: dict[str, Any] | None = None  # after shrinking: actions, length, cost, check
    scenario: str | None = None  # the solution as a scenario file
    verified: bool | None = None  # the scenario, run call by call, reaches the goal
    best_score: float | None = None
    state: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def describe(program: Program, candidate: Candidate) -> list[str]:
    """``alloc 0x40``, ``free #3``, ``target 1 (alloc source)`` ... one line per action."""
    out = []
    labels: dict[int, int] = {}
    for a in candidate:
        if a.kind == TARGET:
            step = program.spec.target[a.value]
            out.append(f"target: {', '.join(f'{k}: {v}' for k, v in step.items())}")
        elif a.kind == ALLOC:
            labels[a.handle] = len(labels)
            out.append(f"alloc 0x{a.value:x} (#{labels[a.handle]})")
        elif a.kind == FREE:
            what = (
                f"#{labels[a.handle]}" if a.handle >= 0 else program.freeable_names[-1 - a.handle]
            )
            out.append(f"free {what}")
        else:
            out.append(f"realloc #{labels[a.handle]} 0x{a.value:x}")
    return out


def search(
    spec: SearchSpec,
    allocator: str,
    arch: str,
    *,
    seed: int | None = None,
    time_limit: float | None = None,
    max_candidates: int | None = None,
    strategy: str | None = None,
    verify: bool = True,
    progress: Callable[[int, float], None] | None = None,
) -> SearchResult:
    """Search for attacker operations that make ``spec.goal`` hold (see the module doc).
    The candidates drawn depend only on ``seed``, so a search that finds a solution within its
    time finds the same one on any machine."""
    opts = spec.search
    seed = opts["seed"] if seed is None else seed
    time_limit = opts["time_limit"] if time_limit is None else time_limit
    max_candidates = opts["max_candidates"] if max_candidates is None else max_candidates
    strategy = strategy or opts["strategy"]
    t0 = time.perf_counter()
    ev = Evaluator(spec, allocator, arch)
    program = ev.program
    rng = random.Random(seed)
    gen = Generator(program, rng, opts["max_ops"])
    best: tuple[float, Candidate] = (math.inf, program.normalize([]))
    solution: Candidate | None = None
    n = 0

    kept = best  # evolve: the candidate mutations start from
    stale = 0  # evaluations since it last improved (after RESTART of them evolve starts from
    # scratch: a local optimum of the score is not the goal)

    def evaluate(c: Candidate) -> Outcome:
        nonlocal best, kept, stale
        out = ev.evaluate(c)
        if out.score <= best[0]:
            best = (out.score, c)
        if out.score < kept[0]:
            kept, stale = (out.score, c), 0
        elif out.score == kept[0]:
            kept = (out.score, c)  # neutral moves keep the walk going
            stale += 1
        else:
            stale += 1
        return out

    first = best[1]  # the program with no attacker operation at all
    if evaluate(first).solved:
        solution = first
    while solution is None:
        elapsed = time.perf_counter() - t0
        if elapsed >= time_limit or (max_candidates and n >= max_candidates):
            break
        if strategy == "evolve" and stale >= RESTART:
            kept, stale = (math.inf, first), 0
        if strategy == "evolve" and kept[0] < math.inf and rng.random() < MUTATE:
            candidate = gen.mutate(kept[1])
        else:
            candidate = gen.fresh()
        n += 1
        if evaluate(candidate).solved:
            solution = candidate
        if progress and n % 256 == 0:
            progress(n, best[0])
    result = SearchResult(
        spec=spec.name,
        allocator=allocator,
        arch=arch,
        seed=seed,
        strategy=strategy,
        solved=solution is not None,
        candidates=n + 1,
        walks=ev.walks,
        seconds=0.0,
        best_score=None if best[0] == math.inf else best[0],
    )
    if solution is not None:
        result.seconds_to_solution = time.perf_counter() - t0
        result.found = {"length": _length(solution), "cost": program.cost(solution)}
        minimal = _shrink(ev, solution)
        check = ev.evaluate(minimal).check
        assert check is not None and check.holds
        result.solution = {
            "actions": describe(program, minimal),
            "candidate": [list(a) for a in minimal],
            "length": _length(minimal),
            "cost": program.cost(minimal),
            "check": check.to_json(),
        }
        header = [
            f"Found by heapemu search ({spec.path or spec.name}): {strategy} search, seed "
            f"{seed}, {n + 1} candidates; shrunk from {_length(solution)} attacker operations "
            f"to {_length(minimal)} (cost {program.cost(minimal)}).",
            f"Goal: {spec.goal}. Run: heapemu run THIS_FILE --heap-map .",
        ]
        result.scenario = scenario_text(program, minimal, allocator, arch, header)
        if verify:
            result.verified = verify_scenario(result.scenario)
    result.state = ev.state.stats.to_json()
    result.seconds = time.perf_counter() - t0
    return result


def _length(c: Candidate) -> int:
    return sum(1 for a in c if a.kind != TARGET)


def _shrink(ev: Evaluator, solution: Candidate) -> Candidate:
    def keeps(actions: list[Action]) -> bool:
        return ev.evaluate(tuple(actions)).solved

    return tuple(
        shrink(
            list(solution),
            keeps,
            fixed=lambda a: a.kind == TARGET,
            normalize=lambda xs: list(ev.program.normalize(xs)),
        )
    )


def verify_scenario(text: str) -> bool:
    """The scenario, run call by call in a fresh process, passes (its layout step included)."""
    scenario = parse_scenario(load_text(text))
    result = run_scenario(scenario)
    return result.ok and any(s.step.op == "layout" for s in result.steps)
