"""Running a checked scenario on one architecture and allocator, and what a run produces.

``run_scenario`` builds a fresh Process, loads the allocator, runs the steps in order and stops
at the first failure (a fault, a NULL/FALSE where success was expected, a failed ``expect:``).
Everything it saw is in a ``ScenarioResult`` (``.to_json()`` for machine-readable output).

Two extension points, so later work plugs in without touching the runner:

- ``register_checkpoint_view(name, capture)``: ``capture(run)`` is called at every checkpoint
  and its (JSON-able) result is kept in ``Checkpoint.views[name]`` (heap views, summaries).
- ``Observer``: passed to ``run_scenario(observers=...)``; sees the process before and after the
  allocator loads, every step and checkpoint, and the end. Observers may append to
  ``run.events`` (traces, allocation events, convention checks); they end up in the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from emu.errors import EmulationError, NtStatusError
from emu.facade import Process
from emu.heap.allocator import ENTRY_POINTS, OPTIONAL_ENTRY_POINTS, Allocator, HeapError
from emu.heap.goals import Goal, check_goal
from emu.heap.registry import ALLOCATOR_NAMES, ALLOCATORS, walk_heap
from emu.modules import Module
from emu.nt.memory import RESERVED
from emu.scenario.model import ANY, MODULE_KINDS, PROCESS_HEAP, AllocatorSpec, Ref, Scenario, Step
from emu.scenario.result import (
    Checkpoint,
    HeapSnapshot,
    MemoryRun,
    RegionSnapshot,
    ScenarioResult,
    StepResult,
    fault_json,
    fmt_value,
)
from emu.scenario.schema import arch_problems, load_scenario
from emu.scenario.yamlfile import Problem, ScenarioError
from emu.win.layouts import PEB
from emu.win.ntdefs import MEM_TYPE_NAMES, PAGE_GUARD, protection_name

# which failures end a step (anything else is a bug in heapemu and propagates)
STEP_ERRORS = (EmulationError, HeapError, NtStatusError)


# ---------------------------------------------------------------------- extension points
class ScenarioRun:
    """The live state of one run: what observers and checkpoint views see."""

    def __init__(self, scenario: Scenario, arch: str, spec: AllocatorSpec, proc: Process):
        self.scenario = scenario
        self.arch = arch
        self.spec = spec
        self.proc = proc
        self.allocator: Allocator | None = None  # set once loaded
        self.values: dict[str, Any] = {}
        self.heaps: dict[str, int] = {}  # live heaps by name, in creation order
        self.current_heap: str | None = None
        self.destroyed: set[str] = set()
        self.steps: list[StepResult] = []
        self.checkpoints: list[Checkpoint] = []
        self.events: list[Any] = []
        self.observers: list[Observer] = []


class Observer:
    """Sees a run as it happens; every method is optional (see the module docstring)."""

    def process_created(self, run: ScenarioRun) -> None:
        """The process exists; the allocator is not loaded yet."""

    def started(self, run: ScenarioRun) -> None:
        """The allocator is loaded (``run.allocator``); no step has run."""

    def before_step(self, run: ScenarioRun, step: Step) -> None:
        pass

    def after_step(self, run: ScenarioRun, result: StepResult) -> None:
        pass

    def checkpoint(self, run: ScenarioRun, checkpoint: Checkpoint) -> None:
        pass

    def finished(self, run: ScenarioRun, result: ScenarioResult) -> None:
        pass


CheckpointView = Callable[[ScenarioRun], Any]
CHECKPOINT_VIEWS: dict[str, CheckpointView] = {}


def register_checkpoint_view(name: str, capture: CheckpointView) -> None:
    """Capture ``capture(run)`` (JSON-able) into ``Checkpoint.views[name]`` at every
    checkpoint, e.g. a heap walker's view of each heap in ``run.heaps``."""
    CHECKPOINT_VIEWS[name] = capture


# ---------------------------------------------------------------------- loading the allocator
def _custom_module(proc: Process, scenario: Scenario, spec: AllocatorSpec, arch: str) -> Module:
    path = spec.module_path(arch, scenario.base_dir)
    if not path.is_file():
        where = f" (allocator at {scenario.file}:{spec.line})" if spec.line else ""
        raise ScenarioError(
            [
                Problem(
                    str(path),
                    None,
                    f"no such {spec.kind} module{where}; fix the path or create the file",
                )
            ]
        )
    if spec.kind == "pe":
        return proc.load_pe(str(path))
    return proc.load_flat(path.read_text(), path.stem)


def load_allocator(
    run: ScenarioRun, *, wine_dir: str | None = None, wine_debug: str | None = None
) -> Allocator:
    """Load the run's allocator. A module allocator's exports stand in for the Rtl* names
    (``exports:``); only the entry points the scenario uses must exist."""
    proc, spec, scenario = run.proc, run.spec, run.scenario
    if spec.kind in ALLOCATORS:
        kind = ALLOCATORS[spec.kind]
        options = {"wine_dir": wine_dir, "debug_channels": wine_debug}
        return kind.allocator(proc, **{k: v for k, v in options.items() if k in kind.options})
    module = _custom_module(proc, scenario, spec, run.arch)
    needed = scenario.entry_points()
    exports: dict[str, int] = {}
    for rtl in ENTRY_POINTS + OPTIONAL_ENTRY_POINTS:
        export = spec.exports.get(rtl, rtl)
        address = module.exports.get(export, module.symbols.get(export))
        if address is not None:
            exports[rtl] = address
        elif rtl in needed or rtl in spec.exports:
            have = ", ".join(sorted(module.exports)[:12]) or "none"
            raise ScenarioError(
                [
                    Problem(
                        scenario.file,
                        spec.line,
                        f"{module.name} has no export {export!r} for {rtl} (its exports: "
                        f"{have}); map it under the allocator's exports:, like "
                        f"{{{rtl}: your_function}}",
                    )
                ]
            )
        else:  # never called by this scenario: a trap that says so if it ever is
            exports[rtl] = proc.register_callback(_unmapped(rtl), 0, name=f"unmapped_{rtl}")
    return Allocator(proc, replace(module, exports=exports), name=module.name)


def _unmapped(rtl: str) -> Callable[..., int]:
    def trap(proc: Process) -> int:
        raise HeapError(f"{rtl} was called but the allocator module does not provide it")

    return trap


# ---------------------------------------------------------------------- the steps
class _ResultError(Exception):
    """A step's result is not what it should be (the result is kept for the report)."""

    def __init__(self, message: str, value: Any = None):
        super().__init__(message)
        self.value = value


def _resolve(run: ScenarioRun, ref: Ref) -> int:
    if ref.name == PROCESS_HEAP:
        value = PEB.read(run.proc, run.proc.arch, run.proc.peb, "ProcessHeap")
    else:
        value = run.values[ref.name]
        if ref.index is not None:
            value = value[ref.index]
    return int(value) + ref.offset


def _heap_of(run: ScenarioRun, step: Step) -> tuple[str, int]:
    """The step's ``heap:``, else the heap created last (even if destroyed since: what the
    allocator does with a destroyed heap is the scenario's business)."""
    if step.heap is not None:
        return step.heap.name, _resolve(run, step.heap)
    assert run.current_heap is not None  # the checker made sure a heap is created first
    return run.current_heap, int(run.values[run.current_heap])


def _check(
    step: Step, value: Any, expected_ok: Callable[[Any], bool], what: str, run: ScenarioRun
) -> None:
    """Default checks unless ``expect:`` says otherwise; ``expect: any`` accepts anything."""
    values = value if isinstance(value, list) else [value]
    if step.has_expect:
        if step.expect == ANY:
            return
        want = _resolve(run, step.expect) if isinstance(step.expect, Ref) else step.expect
        named = f" ({step.expect})" if isinstance(step.expect, Ref) else ""
        for i, v in enumerate(values):
            if v != want:
                at = f" (item {i})" if isinstance(value, list) else ""
                raise _ResultError(
                    f"expected {fmt_value(want)}{named}, got {fmt_value(v)}{at}", value
                )
        return
    for i, v in enumerate(values):
        if not expected_ok(v):
            at = f" for item {i} of {len(values)}" if isinstance(value, list) else ""
            raise _ResultError(
                f"{what} returned {fmt_value(v)}{at} (add `expect: {fmt_value(v)}` or "
                "`expect: any` if that is intended)",
                value,
            )


def _do_step(run: ScenarioRun, step: Step) -> Any:
    a, proc, args = run.allocator, run.proc, step.args
    assert a is not None
    if step.op == "create_heap":
        h = a.create_heap(args["flags"], args["reserve"], args["commit"])
        assert step.name is not None
        run.heaps[step.name] = h
        run.destroyed.discard(step.name)
        run.current_heap = step.name
        return h
    if step.op == "checkpoint":
        cp = take_checkpoint(run, args["name"], step.index)
        run.checkpoints.append(cp)
        for snap in cp.heaps:  # corruption first: what an allocator's own walk says varies
            if snap.corruptions:
                n = len(snap.corruptions)
                more = f" (and {n - 1} more)" if n > 1 else ""
                raise _ResultError(f"heap {snap.name} is corrupt: {snap.corruptions[0]}{more}")
        bad = [h for h in cp.heaps if h.error]
        if bad:
            raise _ResultError(f"RtlWalkHeap({bad[0].name}) failed: {bad[0].error}", None)
        return {h.name: h.counts() for h in cp.heaps}
    if step.op in ("write", "read"):
        addr = _resolve(run, args["at"]) + args.get("offset", 0)
        if step.op == "write":
            proc.write(addr, bytes.fromhex(args["data"]))
            return None
        data = proc.read(addr, args["size"]).hex()
        _check(step, data, lambda v: True, "read", run)
        return data
    name, heap = _heap_of(run, step)
    if name not in run.destroyed:  # checkpoints walk every live heap the scenario used
        run.heaps.setdefault(name, heap)
    flags = args.get("flags", 0)
    if step.op == "alloc":
        n = args["count"]
        blocks = [a.alloc(heap, args["size"], flags) for _ in range(n or 1)]
        value: Any = blocks if n is not None else blocks[0]
        _check(step, value, bool, "RtlAllocateHeap", run)
        return value
    if step.op == "free":
        results = [a.free(heap, _resolve(run, r), flags) for r in args["block"]]
        _check(step, results if len(results) > 1 else results[0], bool, "RtlFreeHeap", run)
        return results if len(results) > 1 else results[0]
    if step.op == "realloc":
        p = a.realloc(heap, _resolve(run, args["block"]), args["size"], flags)
        _check(step, p, bool, "RtlReAllocateHeap", run)
        return p
    if step.op == "size":
        n = a.size(heap, _resolve(run, args["block"]), flags)
        _check(step, n, lambda v: v != -1, "RtlSizeHeap", run)
        return n
    if step.op == "validate":
        block = _resolve(run, args["block"]) if args.get("block") is not None else 0
        ok = a.validate(heap, block, flags)
        _check(step, ok, bool, "RtlValidateHeap", run)
        return ok
    if step.op == "walk":
        return a.walk(heap)
    if step.op == "layout":
        return _layout(run, step, heap)
    if step.op == "destroy":
        ok = a.destroy(heap)
        _check(step, ok, bool, "RtlDestroyHeap", run)
        run.heaps.pop(name, None)
        run.destroyed.add(name)
        return ok
    raise AssertionError(f"no runner for {step.op}")


def _layout(run: ScenarioRun, step: Step, heap: int) -> dict[str, Any]:
    """The goal decided on the heap as the allocator's walker reads it (not as it says)."""
    kind = ALLOCATORS.get(run.spec.kind)
    if kind is None:
        raise _ResultError(
            f"layout needs a walker: {run.spec.label} is not one of {', '.join(ALLOCATOR_NAMES)}"
        )
    args = step.args
    goal = Goal(args["goal"], str(args["a"]), str(args["b"]), args["max"])
    pointers = {goal.a: _resolve(run, args["a"]), goal.b: _resolve(run, args["b"])}
    check = check_goal(kind.walker(run.proc, heap).walk(), goal, pointers)
    value = check.to_json()
    if step.has_expect and step.expect == ANY:
        return value
    if not check.holds:
        raise _ResultError(f"{goal} does not hold: {check.detail}", value)
    return value


def take_checkpoint(run: ScenarioRun, name: str, step: int) -> Checkpoint:
    """RtlWalkHeap of every live heap the scenario used, the address space, and the
    registered views."""
    assert run.allocator is not None
    heaps = []
    for heap_name, handle in run.heaps.items():
        try:
            snapshot = HeapSnapshot(heap_name, handle, run.allocator.walk(handle))
        except STEP_ERRORS as e:
            snapshot = HeapSnapshot(heap_name, handle, [], str(e))
        if run.spec.kind in ALLOCATORS:  # a registry allocator has a walker: ask it too
            try:
                report = walk_heap(run.proc, handle, run.spec.kind)
                snapshot.corruptions = [str(c) for c in report.corruptions]
            except STEP_ERRORS as e:
                snapshot.corruptions = [f"the heap header cannot be read: {e}"]
        heaps.append(snapshot)
    cp = Checkpoint(name, step, heaps, memory_regions(run.proc), len(run.proc.syscalls))
    for view, capture in CHECKPOINT_VIEWS.items():
        cp.views[view] = capture(run)
    for o in run.observers:
        o.checkpoint(run, cp)
    return cp


def memory_regions(proc: Process) -> list[RegionSnapshot]:
    out = []
    for r in proc.memory.regions():
        runs = [
            MemoryRun(
                addr,
                size,
                "MEM_RESERVE" if state == RESERVED else "MEM_COMMIT",
                ""
                if state == RESERVED
                else protection_name(state & ~PAGE_GUARD)
                + ("|PAGE_GUARD" if state & PAGE_GUARD else ""),
            )
            for addr, size, state in r.runs()
        ]
        kind = MEM_TYPE_NAMES.get(r.type, hex(r.type))
        out.append(RegionSnapshot(r.base, r.size, kind, r.usage, r.committed_bytes, runs))
    return out


# ---------------------------------------------------------------------- running
def scenario_matrix(
    scenario: Scenario, arch: str | None = None, allocator: str | None = None
) -> list[tuple[str, AllocatorSpec]]:
    """The (arch, allocator) runs asked for: the scenario's own lists unless overridden
    (``arch``: x86, x64, both or "x86,x64"; ``allocator``: builtin, wine or a comma list)."""
    arches = scenario.arches
    if arch:
        arches = ["x86", "x64"] if arch in ("both", "all") else arch.split(",")
    specs = scenario.allocators
    if allocator:
        specs = [AllocatorSpec(k.strip()) for k in allocator.split(",")]
    return [(a, s) for a in arches for s in specs]


def run_scenario(
    scenario: str | Path | Mapping[str, Any] | Scenario,
    arch: str | None = None,
    allocator: str | AllocatorSpec | None = None,
    *,
    observers: Sequence[Observer] = (),
    wine_dir: str | None = None,
    wine_debug: str | None = None,
    time_limit: float = 30.0,
) -> ScenarioResult:
    """Run ``scenario`` (a file, a mapping or a parsed Scenario) once, on ``arch`` ("x86" or
    "x64"; default the scenario's first) with ``allocator`` ("builtin", "wine", an
    AllocatorSpec; default the scenario's first).

    Raises ScenarioError for a malformed scenario or a module without the needed exports, and
    LoaderError for a missing or bad DLL: before anything runs. Step failures do not raise:
    they are in the result (``result.ok``, ``result.failure``)."""
    sc = load_scenario(scenario)
    arch = arch or sc.arches[0]
    if arch not in ("x86", "x64"):
        raise ValueError(f"arch must be x86 or x64, not {arch!r}")
    spec = (
        allocator
        if isinstance(allocator, AllocatorSpec)
        else (AllocatorSpec(allocator) if allocator else sc.allocators[0])
    )
    if spec.kind not in (*ALLOCATOR_NAMES, *MODULE_KINDS):
        names = ", ".join(ALLOCATOR_NAMES)
        raise ValueError(f"allocator must be {names}, or a pe/flat module, not {spec.kind!r}")
    if spec.kind in ("pe", "flat") and not spec.path:
        raise ValueError(
            f"a {spec.kind} allocator needs its file: give the scenario's allocator a path "
            f"({{{spec.kind}: FILE, exports: ...}})"
        )
    if wine_debug and "debug_channels" not in getattr(ALLOCATORS.get(spec.kind), "options", ()):
        raise ValueError("Wine debug channels need the wine allocator (--allocator wine)")
    problems = arch_problems(sc, arch)
    if problems:
        raise ScenarioError(problems)
    start = time.perf_counter()
    proc = Process(arch, time_limit=time_limit)
    run = ScenarioRun(sc, arch, spec, proc)
    run.observers = list(observers)
    for o in observers:
        o.process_created(run)
    run.allocator = load_allocator(run, wine_dir=wine_dir, wine_debug=wine_debug)
    for o in observers:
        o.started(run)
    not_run = 0
    for step in sc.steps:
        for o in observers:
            o.before_step(run, step)
        n_sys, n_dbg, t0 = len(proc.syscalls), len(proc.debug_output), time.perf_counter()
        result = StepResult(step)
        try:
            result.value = _do_step(run, step)
        except _ResultError as e:
            result.ok, result.error, result.value = False, str(e), e.value
        except STEP_ERRORS as e:
            result.ok, result.error = False, f"{type(e).__name__}: {e}"
            if isinstance(e, EmulationError):
                result.fault = fault_json(e)
        result.seconds = time.perf_counter() - t0
        result.syscalls = proc.syscalls[n_sys:]
        result.debug_output = proc.debug_output[n_dbg:]
        if step.name is not None and result.value is not None:
            run.values[step.name] = result.value
        run.steps.append(result)
        for o in observers:
            o.after_step(run, result)
        if not result.ok:
            not_run = len(sc.steps) - step.index
            break
    res = ScenarioResult(
        scenario=sc.name,
        path=str(sc.path) if sc.path else None,
        arch=arch,
        allocator=spec.label.replace("{arch}", arch),
        steps=run.steps,
        names=dict(run.values),
        checkpoints=run.checkpoints,
        syscalls=len(proc.syscalls),
        debug_output=list(proc.debug_output),
        events=run.events,
        not_run=not_run,
        seconds=time.perf_counter() - start,
        warnings=proc.syscall_dispatcher.warnings(),
    )
    for o in observers:
        o.finished(run, res)
    return res
