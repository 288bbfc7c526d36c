"""Heap-layout search and campaigns (issue 19): speed per core, scaling, and the search's solve
rate on the shipped suite of layout problems (benchmarks/layouts/, one file per family).

    python -m benchmarks search_speed     candidates/s and campaign ops/s per core, per allocator
    python -m benchmarks search_scaling   1 -> 2 local workers, a local Ray cluster of 2 workers,
                                          and the engines' own cost per task
    python -m benchmarks search_suite     solve rate and median time to solution per allocator
                                          (every solution replayed by heapemu run; those of
                                          the C heaps also natively: NATIVE_CHECKS);
                                          random vs evolve
    python -m benchmarks campaign_1m      1 M operations per allocator x arch on the local pool,
                                          invariants held; a differential campaign's first
                                          divergence as a minimal scenario

Environment: HEAPEMU_BENCH_WORKERS (local pool size, default: one per core),
HEAPEMU_BENCH_SEARCH_ARCH (x64, x86 or both; default x64), HEAPEMU_BENCH_STRATEGIES (default
"evolve,random"), HEAPEMU_BENCH_SEARCH_LIMIT (seconds per problem, default the spec's 60),
HEAPEMU_BENCH_CAMPAIGN_OPS (per allocator x arch, default 1000000), HEAPEMU_BENCH_ALLOCATORS
(comma-separated; default every registered allocator; a subset's results go to files of their
own: result_name).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from emu.heap.registry import ALLOCATOR_NAMES, ALLOCATORS
from emu.heap.replay.run import replay
from emu.heap.replay.workload import Workload, synthetic
from emu.search.campaign import InvariantRun, parse_campaign
from emu.search.layout import Evaluator, Generator
from emu.search.runner import Task, run_tasks
from emu.search.spec import parse_search_spec
from emu.search.store import ResultStore
from emu.search.tasks import TASK_FUNCTIONS

from .common import RESULTS

LAYOUTS = Path(__file__).parent / "layouts"
WORKERS = int(os.environ.get("HEAPEMU_BENCH_WORKERS", os.cpu_count() or 1))
ARCH = os.environ.get("HEAPEMU_BENCH_SEARCH_ARCH", "x64")
STRATEGIES = os.environ.get("HEAPEMU_BENCH_STRATEGIES", "evolve,random").split(",")
LIMIT = os.environ.get("HEAPEMU_BENCH_SEARCH_LIMIT")
CAMPAIGN_OPS = int(os.environ.get("HEAPEMU_BENCH_CAMPAIGN_OPS", 1_000_000))
_SUBSET = os.environ.get("HEAPEMU_BENCH_ALLOCATORS")
BENCH_ALLOCATORS: tuple[str, ...] = tuple(_SUBSET.split(",")) if _SUBSET else ALLOCATOR_NAMES
assert set(BENCH_ALLOCATORS) <= set(ALLOCATOR_NAMES), f"unknown allocator in {_SUBSET!r}"


def result_name(name: str) -> str:
    """The results file of suite ``name``: a run on a subset of the allocators writes its own
    file (``campaign_1m.win7-segment.json``), next to the full run's."""
    return f"{name}.{'-'.join(BENCH_ALLOCATORS)}" if _SUBSET else name


assert "search" in TASK_FUNCTIONS


def _row(
    benchmark: str,
    arch: str,
    value: Any,
    unit: str,
    reference: Any = "",
    reference_name: str = "",
    ratio: Any = "",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "benchmark": benchmark,
        "arch": arch,
        "value": value,
        "unit": unit,
        "reference": reference,
        "reference_name": reference_name,
        "ratio": ratio,
        **extra,
    }


# ---------------------------------------------------------------------- the suite
_VAR = re.compile(r"\$([a-z_]+)(?:\.(\d+))?")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"0x{value:x}" if value >= 16 else str(value)
    if isinstance(value, list):
        return "-".join(_text(v) for v in value)
    return str(value)


def _subst(value: Any, env: dict[str, Any]) -> Any:
    def look(m: re.Match[str]) -> Any:
        v = env[m[1]]
        return v[int(m[2])] if m[2] is not None else v

    if isinstance(value, str):
        whole = _VAR.fullmatch(value)
        if whole:
            return look(whole)
        return _VAR.sub(lambda m: _text(look(m)), value)
    if isinstance(value, list):
        return [_subst(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _subst(v, env) for k, v in value.items()}
    return value


def load_suite(directory: Path = LAYOUTS) -> list[dict[str, Any]]:
    """Every problem of every family file: {name, family, lfh, spec (search spec data)}."""
    import yaml

    out = []
    for path in sorted(directory.glob("*.yaml")):
        family = yaml.safe_load(path.read_text())
        vary: dict[str, list[Any]] = family.get("vary") or {}
        for combo in itertools.product(*vary.values()):
            env = dict(zip(vary, combo, strict=True))
            spec = _subst(family["problem"], env)
            spec.setdefault("tags", [family["family"]] + (["lfh"] if family.get("lfh") else []))
            parse_search_spec(dict(spec), path)  # every problem must be a valid spec
            out.append(
                {
                    "name": spec["name"],
                    "family": family["family"],
                    "lfh": bool(family.get("lfh")),
                    "spec": spec,
                    "file": path.name,
                }
            )
    return out


# ---------------------------------------------------------------------- speed per core
def run_speed() -> list[dict[str, Any]]:
    """Candidates/s (one core, the first adjacency problem) and campaign ops/s per core."""
    rows = []
    problem = next(p for p in load_suite() if p["family"] == "adjacency")
    for allocator in BENCH_ALLOCATORS:
        for arch in ("x86", "x64"):
            spec = parse_search_spec({**problem["spec"], "allocator": allocator, "arch": arch})
            ev = Evaluator(spec, allocator, arch)
            gen = Generator(ev.program, random.Random(1), spec.search["max_ops"])
            cands = [gen.fresh() for _ in range(300)]
            t0 = time.perf_counter()
            for c in cands:
                ev.evaluate(c)
            dt = time.perf_counter() - t0
            # a candidate's own operations: all it replays after restoring the snapshot
            mean_ops = statistics.mean(len(ev.program.assemble(c)[0]) for c in cands)
            rows.append(
                _row(
                    f"search candidates/s ({allocator})",
                    arch,
                    round(300 / dt, 1),
                    "candidates/s",
                    len(ev.program.prefix),
                    "prefix ops (run once, then restored)",
                    "",
                    walks=ev.walks,
                    mean_candidate_ops=round(mean_ops, 1),
                )
            )
            ops = list(synthetic(Workload(ops=40_000, seed=3, sizes="mixed", lifetime=100.0)))
            run = InvariantRun(allocator, arch, 10_000)
            t0 = time.perf_counter()
            failure = run.run(ops)
            dt = time.perf_counter() - t0
            assert failure is None, failure
            proc_ops = _replay_rate(run, ops)
            rows.append(
                _row(
                    f"invariant campaign ops/s per core ({allocator})",
                    arch,
                    round(len(ops) / dt),
                    "ops/s",
                    round(proc_ops),
                    "replay alone, ops/s",
                    round(proc_ops / (len(ops) / dt), 2),
                )
            )
    return rows


def _replay_rate(run: InvariantRun, ops: Sequence[Any]) -> float:
    heap = run.allocator.create_heap()
    t0 = time.perf_counter()
    replay(run.allocator, ops, heap, time_limit=0)  # one call for all: no per-call limit
    return len(ops) / (time.perf_counter() - t0)


# ---------------------------------------------------------------------- scaling
def _campaign_tasks(seeds: int, ops: int) -> list[Task]:
    spec = parse_campaign(
        {
            "kind": "invariant",
            "allocator": "all",
            "arch": "x64",
            "seeds": seeds,
            "ops": ops,
            "check_every": ops // 2,
        }
    )
    return [Task(k, fn, p) for k, fn, p in spec.cases()]


def _timed(tasks: list[Task], workers: int, ray_address: str | None = None) -> tuple[float, Any]:
    with tempfile.TemporaryDirectory() as d, ResultStore(Path(d) / "r.db", "bench", {}) as s:
        t0 = time.perf_counter()
        summary = run_tasks(tasks, s, workers=workers, ray_address=ray_address, quiet=True)
        dt = time.perf_counter() - t0
        assert summary.complete, summary
        return dt, s.results()


def run_scaling() -> list[dict[str, Any]]:
    """The same campaign (6 seeds of 60,000 operations per allocator, x64) on 1 and 2
    local workers and on a local Ray cluster of 2 workers; the engines' own cost per task from
    tasks that do nothing (marginal: 300 minus 20 such tasks, so worker start-up cancels)."""
    rows = []
    tasks = _campaign_tasks(seeds=6, ops=60_000)
    t1, r1 = _timed(tasks, 1)
    t2, r2 = _timed(tasks, 2)
    assert r1 == r2
    rows.append(
        _row(
            "campaign, 2 local workers vs 1",
            "x64",
            round(t1 / t2, 2),
            "x speed-up",
            round(t1, 1),
            "1 worker, s",
            round(t1 / t2, 2),
            tasks=len(tasks),
            seconds_2_workers=round(t2, 2),
        )
    )
    rows.append(
        _row("campaign task (60,000 ops), 1 worker", "x64", round(t1 / len(tasks), 2), "s/task")
    )
    noops = [Task(f"noop/{i}", "noop", {"n": i}) for i in range(300)]
    few, _ = _timed(noops[:20], 2)
    many, _ = _timed(noops, 2)
    rows.append(
        _row(
            "engine cost per task, local pool (2 workers)",
            "-",
            round(1000 * (many - few) / 280, 2),
            "ms/task",
            round(few, 2),
            "s for 20 tasks (pool start-up)",
        )
    )
    try:
        import ray
    except ImportError:
        rows.append(_row("ray", "-", "not installed", "", "", "pip install 'heapemu[ray]'"))
        return rows
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    start = time.perf_counter() - t0
    try:
        _timed(noops[:20], 2, "local")  # start the workers
        tr, rr = _timed(tasks, 2, "local")
        assert rr == r1
        rows.append(
            _row(
                "campaign, local Ray cluster (2 workers) vs 1 local worker",
                "x64",
                round(t1 / tr, 2),
                "x speed-up",
                round(t1, 1),
                "1 worker, s",
                round(t1 / tr, 2),
                ray_seconds=round(tr, 2),
            )
        )
        few, _ = _timed(noops[:20], 2, "local")
        many, _ = _timed(noops, 2, "local")
        rows.append(
            _row(
                "engine cost per task, local Ray (2 workers)",
                "-",
                round(1000 * (many - few) / 280, 2),
                "ms/task",
                round(start, 1),
                "s to start the local cluster",
            )
        )
    finally:
        ray.shutdown()
    return rows


# ---------------------------------------------------------------------- the suite
def _native(allocator: str, heap: str, scenario: str, arch: str) -> bool | None:
    """Replay a solution's operations with the allocator's C compiled for this host
    (tests/native's driver built for ``heap``), given the reservations the emulator's kernel
    made, and compare every pointer. None: the native driver cannot run here."""
    try:
        from tests.native.nativeheap import NativeError, run_script
    except ImportError:
        return None
    from emu.scenario import Observer, load_text, parse_scenario, run_scenario
    from emu.win.ntdefs import MEM_RESERVE

    sc = parse_scenario(load_text(scenario))
    grab: dict[str, Any] = {}

    class Grab(Observer):
        def finished(self, run: Any, result: Any) -> None:
            grab["proc"] = run.proc

    res = run_scenario(sc, arch, allocator, observers=[Grab()])
    answers = [
        (r.details["base"], r.details["size"])
        for r in grab["proc"].syscalls
        if r.name == "NtAllocateVirtualMemory"
        and r.status == 0
        and r.details.get("base_in") == 0
        and r.details["type"] & MEM_RESERVE
    ]
    # the loader's process heap first (its settings and keys are what later heaps copy)
    lines = ["create ph 0x2 0 0", "processheap ph"]
    names: dict[str, str] = {}
    for i, step in enumerate(sc.steps):
        a = step.args
        if step.op == "create_heap":
            lines.append(f"create {step.name} {a['flags']:#x} {a['reserve']:#x} {a['commit']:#x}")
        elif step.op == "alloc":
            n = a["count"]
            for j in range(n or 1):
                v = f"v{i}_{j}"
                lines.append(f"alloc {v} heap {a['flags']:#x} {a['size']:#x}")
                names[f"{step.name}[{j}]" if n is not None else str(step.name)] = v
        elif step.op == "free":
            for r in a["block"]:
                lines.append(f"free heap 0 {names[str(r)]}")
        elif step.op == "realloc":
            v = f"v{i}_0"
            lines.append(f"realloc {v} heap 0 {names[str(a['block'])]} {a['size']:#x}")
            names[str(step.name)] = v
    try:
        native = run_script(lines, arch=arch, heap=heap, answers=answers)
    except NativeError:
        return None
    emulated: dict[str, int] = {}
    for r in res.steps:
        if r.step.op in ("alloc", "realloc") and r.step.name:
            vals = r.value if isinstance(r.value, list) else [r.value]
            for j, v in enumerate(vals):
                key = f"{r.step.name}[{j}]" if isinstance(r.value, list) else r.step.name
                emulated[names[key]] = v
    return bool(emulated) and all(native.value(n) == v for n, v in emulated.items())


# the C units tests/native's driver builds (unit -> its heap name there): allocators made
# from them have their solutions replayed natively too
NATIVE_HEAPS = {"ntheap": "nt", "segheap": "segment", "win7heap": "win7"}
NATIVE_CHECKS: dict[str, Callable[[str, str], bool | None]] = {
    kind.name: partial(_native, kind.name, heap)
    for kind in ALLOCATORS.values()
    if (heap := NATIVE_HEAPS.get(kind.c_unit or ""))
}


def run_suite() -> list[dict[str, Any]]:
    suite = load_suite()
    rows = []
    arches = ["x86", "x64"] if ARCH == "both" else [ARCH]
    details: list[dict[str, Any]] = []
    for strategy in STRATEGIES:
        for allocator in BENCH_ALLOCATORS:
            tasks = []
            for p in suite:
                for arch in arches:
                    spec = {**p["spec"], "allocator": allocator, "arch": arch}
                    spec["search"] = dict(spec.get("search", {}), strategy=strategy)
                    if LIMIT:
                        spec["search"]["time_limit"] = float(LIMIT)
                    data = parse_search_spec(spec).to_json()
                    tasks.append(
                        Task(
                            f"{p['name']}/{arch}",
                            "search",
                            {"spec": data, "allocator": allocator, "arch": arch},
                        )
                    )
            with (
                tempfile.TemporaryDirectory() as d,
                ResultStore(Path(d) / "r.db", "bench", {}) as store,
            ):
                summary = run_tasks(
                    tasks,
                    store,
                    workers=WORKERS,
                    quiet=False,
                    label=f"suite {allocator} {strategy}",
                    unit="candidates",
                )
                results = store.results()
            assert summary.complete
            solved = [r for r in results.values() if r.get("solved")]
            times = [r["timing"]["seconds_to_solution"] for r in solved]
            verified = sum(1 for r in solved if r.get("verified"))
            native = None
            if allocator in NATIVE_CHECKS and strategy == STRATEGIES[0]:
                checks = [NATIVE_CHECKS[allocator](r["scenario"], r["arch"]) for r in solved]
                native = sum(1 for c in checks if c)
            lfh = [k for k, p in zip(results, suite, strict=False) if p["lfh"]]
            for key, r in results.items():
                details.append(
                    {
                        "strategy": strategy,
                        "allocator": allocator,
                        "problem": key,
                        "solved": r.get("solved"),
                        "verified": r.get("verified"),
                        "candidates": r.get("candidates"),
                        "to_solution": r.get("timing", {}).get("seconds_to_solution"),
                        "length": (r.get("solution") or {}).get("length"),
                    }
                )
            rows.append(
                _row(
                    f"search suite solve rate ({allocator}, {strategy}, {len(tasks)} problems, "
                    f"{len(lfh)} with LFH activation)",
                    "+".join(arches),
                    round(100 * len(solved) / len(tasks), 1),
                    "% solved",
                    round(statistics.median(times), 2) if times else "-",
                    "median s to solution",
                    "",
                    solved=len(solved),
                    problems=len(tasks),
                    verified_by_heapemu_run=verified,
                    verified_natively=native,
                    solved_without_attacker_ops=sum(
                        1 for r in solved if (r.get("solution") or {}).get("length") == 0
                    ),
                    max_s_to_solution=round(max(times), 2) if times else None,
                    median_candidates=statistics.median(r["candidates"] for r in solved)
                    if solved
                    else None,
                )
            )
    details_file = RESULTS / f"{result_name('search_suite_details')}.json"
    details_file.write_text(json.dumps(details, indent=1) + "\n")
    return rows


# ---------------------------------------------------------------------- 1 M operations
def run_campaign_1m() -> list[dict[str, Any]]:
    """An invariant campaign of CAMPAIGN_OPS operations per allocator x arch on the local pool
    (tasks of 100,000 operations), then a differential campaign."""
    per_task = min(100_000, CAMPAIGN_OPS)
    seeds = max(1, CAMPAIGN_OPS // per_task)
    spec = parse_campaign(
        {
            "kind": "invariant",
            "allocator": list(BENCH_ALLOCATORS),
            "arch": "both",
            "seeds": seeds,
            "ops": per_task,
            "check_every": 25_000,
        }
    )
    tasks = [Task(k, fn, p) for k, fn, p in spec.cases()]
    rows = []
    with tempfile.TemporaryDirectory() as d, ResultStore(Path(d) / "r.db", "bench", {}) as s:
        summary = run_tasks(tasks, s, workers=WORKERS, label="campaign 1M", quiet=False)
        rs = list(s.rows())
    assert summary.complete
    bad = [r.key for r in rs if not r.result.get("ok")]
    for allocator in BENCH_ALLOCATORS:
        for arch in ("x86", "x64"):
            mine = [r for r in rs if f"/{allocator}/{arch}/" in r.key]
            ops = sum(r.ops for r in mine)
            secs = sum(r.seconds for r in mine)
            rows.append(
                _row(
                    f"invariant campaign ({allocator}), {len(mine)} tasks",
                    arch,
                    ops,
                    "ops, invariants held"
                    if not any(r.key in bad for r in mine)
                    else "ops, INVARIANTS BROKEN",
                    round(ops / secs),
                    "ops/s per worker",
                    "",
                )
            )
    rows.append(
        _row(
            "invariant campaign wall time, local pool",
            "both",
            round(summary.seconds, 1),
            "s",
            summary.workers,
            "workers",
            "",
            ops=summary.ops,
        )
    )
    if len(BENCH_ALLOCATORS) >= 2:
        diff = parse_campaign(
            {
                "kind": "differential",
                "allocator": list(BENCH_ALLOCATORS),
                "arch": "both",
                "seeds": 2,
                "ops": 20_000,
            }
        )
        dtasks = [Task(k, fn, p) for k, fn, p in diff.cases()]
        with tempfile.TemporaryDirectory() as d, ResultStore(Path(d) / "r.db", "b", {}) as s:
            run_tasks(dtasks, s, workers=WORKERS, quiet=True)
            for r in s.rows():
                res = r.result
                if res.get("diverged"):
                    m = res["minimal"]
                    where = RESULTS / "divergences"
                    where.mkdir(exist_ok=True)
                    (where / f"{r.key.replace('/', '-')}.yaml").write_text(res["scenario"])
                    rows.append(
                        _row(
                            f"first divergence {r.key}",
                            "",
                            res["first"]["op"],
                            "op index",
                            len(m["ops"]),
                            "ops in the minimal scenario",
                            "",
                            verified=res.get("verified"),
                        )
                    )
                else:
                    rows.append(_row(f"no divergence {r.key}", "", res["ops"], "ops"))
    return rows
