"""``heapemu search SPEC`` and ``heapemu campaign SPEC``: many independent tasks on the local
process pool (one worker per core) or a Ray cluster (``--ray ADDRESS|auto|local``), results in
an SQLite database (resumable: a rerun skips finished tasks), found layouts and failing cases
written as scenario files.

    heapemu search benchmarks/layouts/...yaml --allocator builtin --arch x64
    heapemu campaign campaigns/invariant.yaml --workers 2
    heapemu campaign campaigns/invariant.yaml --ray auto
    heapemu campaign --report heapemu-campaign-nightly/results.db
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from emu.cli.base import EXIT_FAILED, EXIT_OK, CliError, Command
from emu.search.campaign import CampaignSpec, load_campaign
from emu.search.runner import RunSummary, Task, run_tasks
from emu.search.spec import SearchSpec, load_search_spec
from emu.search.store import ResultStore, Row, StoreError, open_existing


# ---------------------------------------------------------------------- shared options
def _engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="DIR", help="where the database and scenario files go")
    p.add_argument("--db", metavar="FILE", help="the results database (default: OUT/results.db)")
    p.add_argument(
        "--workers", type=int, metavar="N", help="local worker processes (default: one per core)"
    )
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run on Ray: a cluster address, auto (the cluster this machine is in) or local",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def _store(args: argparse.Namespace, out: Path, kind: str, spec: dict[str, Any]) -> ResultStore:
    out.mkdir(parents=True, exist_ok=True)
    db = Path(args.db) if args.db else out / "results.db"
    try:
        return ResultStore(db, kind, spec)
    except StoreError as e:
        raise CliError(str(e)) from None


def _run(
    args: argparse.Namespace,
    tasks: list[Task],
    store: ResultStore,
    label: str,
    unit: str,
    write: Any,
) -> RunSummary:
    if args.workers is not None and args.workers < 0:
        raise CliError("--workers must be 0 (in this process) or more")
    try:
        return run_tasks(
            tasks,
            store,
            workers=args.workers,
            ray_address=args.ray,
            quiet=args.quiet or args.json,
            label=label,
            unit=unit,
            on_result=write,
        )
    except RuntimeError as e:
        raise CliError(str(e)) from None


def _write_scenario(out_dir: Path, key: str, result: dict[str, Any]) -> Path | None:
    text = result.get("scenario")
    if not text:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / (key.replace("/", "-").replace(":", "") + ".yaml")
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def _summary_line(s: RunSummary) -> str:
    rate = s.finished / s.seconds if s.seconds else 0.0
    per_core = s.ops / s.task_seconds if s.task_seconds else 0.0
    text = (
        f"{s.finished} tasks run ({s.skipped} already done) on {s.engine} with {s.workers} "
        f"workers in {s.seconds:.1f} s: {rate:.2f} tasks/s, {per_core:,.0f} ops/s per worker"
    )
    if s.restarts:
        text += f"; the pool was restarted {s.restarts} time(s) after a worker died"
    if s.lost:
        text += f"; {s.lost} tasks not finished: rerun the same command to finish them"
    return text


# ---------------------------------------------------------------------- heapemu search
def _configure_search(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="a search spec (.yaml/.json; see emu.search.spec)")
    p.add_argument("--allocator", help="override the spec's allocators (comma list or all)")
    p.add_argument("--arch", help="override the spec's arches: x86, x64 or both")
    p.add_argument("--time-limit", type=float, metavar="S", help="seconds per allocator x arch")
    p.add_argument("--seed", type=int, help="the search's random seed")
    p.add_argument("--strategy", choices=("random", "evolve"), help="default: the spec's")
    _engine_options(p)


def _override(spec: SearchSpec, args: argparse.Namespace) -> None:
    from emu.heap.registry import ALLOCATOR_NAMES

    if args.allocator:
        names = (
            list(ALLOCATOR_NAMES)
            if args.allocator == "all"
            else [a.strip() for a in args.allocator.split(",")]
        )
        bad = [a for a in names if a not in ALLOCATOR_NAMES]
        if bad:
            raise CliError(f"--allocator must be all or of {', '.join(ALLOCATOR_NAMES)}: {bad[0]}")
        spec.allocators = names
    if args.arch:
        arches = ["x86", "x64"] if args.arch == "both" else args.arch.split(",")
        if any(a not in ("x86", "x64") for a in arches):
            raise CliError(f"--arch must be x86, x64 or both, not {args.arch!r}")
        spec.arches = arches
    for key, value in (
        ("time_limit", args.time_limit),
        ("seed", args.seed),
        ("strategy", args.strategy),
    ):
        if value is not None:
            spec.search[key] = value


def search_tasks(spec: SearchSpec) -> list[Task]:
    data = spec.to_json()
    return [
        Task(
            f"search/{spec.name}/{a}/{arch}", "search", {"spec": data, "allocator": a, "arch": arch}
        )
        for a in spec.allocators
        for arch in spec.arches
    ]


def _run_search(args: argparse.Namespace) -> int:
    spec = load_search_spec(args.spec)
    _override(spec, args)
    out = Path(args.out or f"heapemu-search-{spec.name}")
    tasks = search_tasks(spec)
    store = _store(args, out, "search", {"tasks": [t.to_json() for t in tasks]})
    written: dict[str, Path] = {}

    def write(o: dict[str, Any]) -> None:
        path = _write_scenario(out, o["key"].split("/", 1)[1], o["result"])
        if path:
            written[o["key"]] = path

    with store:
        summary = _run(args, tasks, store, f"search {spec.name}", "candidates", write)
        rows = [r for r in store.rows() if r.key in {t.key for t in tasks}]
        for r in rows:  # scenario files of earlier runs too
            path = _write_scenario(out, r.key.split("/", 1)[1], r.result)
            if path:
                written[r.key] = path
    if args.json:
        report = {
            "summary": summary.__dict__,
            "results": [_row_json(r) for r in rows],
            "scenarios": {k: str(p) for k, p in written.items()},
        }
        print(json.dumps(report, indent=1))
    else:
        console = Console()
        console.print(_search_table(spec, rows, written))
        console.print(_summary_line(summary))
    solved = all(r.result.get("solved") and r.result.get("verified") for r in rows)
    return EXIT_OK if solved and summary.complete else EXIT_FAILED


def _row_json(r: Row) -> dict[str, Any]:
    return {
        "key": r.key,
        "status": r.status,
        "seconds": r.seconds,
        "ops": r.ops,
        "worker": r.worker,
        "result": r.result,
    }


def _search_table(spec: SearchSpec, rows: Sequence[Row], written: dict[str, Path]) -> Table:
    t = Table(title=f"heapemu search {spec.name}: {spec.goal}", title_justify="left")
    for col in (
        "allocator",
        "arch",
        "solved",
        "candidates",
        "to solution",
        "operations",
        "cost",
        "verified",
        "scenario",
    ):
        t.add_column(col)
    for r in rows:
        res = r.result
        if r.status == "error":
            t.add_row(r.key, "", Text("error", style="red"), res.get("error", ""))
            continue
        sol = res.get("solution") or {}
        found = res.get("found") or {}
        t.add_row(
            res["allocator"],
            res["arch"],
            Text("yes", style="green") if res["solved"] else Text("no", style="red"),
            str(res["candidates"]),
            f"{res['timing']['seconds_to_solution']:.2f} s" if res["solved"] else "",
            f"{found.get('length')} -> {sol.get('length')}" if sol else "",
            str(sol.get("cost", "")),
            {True: "yes", False: "NO", None: ""}[res.get("verified")],
            str(written.get(r.key, "")),
        )
    return t


# ---------------------------------------------------------------------- heapemu campaign
def _configure_campaign(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", help="a campaign spec (.yaml/.json; emu.search.campaign)")
    p.add_argument("--seeds", type=int, metavar="N", help="override the spec's seeds: 0..N-1")
    p.add_argument("--ops", type=int, metavar="N", help="override the operations per case")
    p.add_argument(
        "--report",
        nargs="?",
        const="",
        metavar="DB",
        help="summarise a results database (default: the spec's) without running anything",
    )
    _engine_options(p)


def campaign_tasks(spec: CampaignSpec) -> list[Task]:
    return [Task(key, fn, payload) for key, fn, payload in spec.cases()]


def _run_campaign(args: argparse.Namespace) -> int:
    if args.report is not None and (args.report or not args.spec):
        if not (args.report or args.db):
            raise CliError("--report needs a results database: --report DB, or the spec")
        return _report(Path(args.report or args.db), args.json)
    if not args.spec:
        raise CliError("name a campaign spec (or --report DB)")
    spec = load_campaign(args.spec)
    if args.seeds is not None:
        if args.seeds < 1:
            raise CliError("--seeds must be at least 1")
        spec.seeds = list(range(args.seeds))
    if args.ops is not None:
        if args.ops < 1:
            raise CliError("--ops must be at least 1")
        spec.ops = args.ops
    out = Path(args.out or f"heapemu-campaign-{spec.name}")
    db = Path(args.db) if args.db else out / "results.db"
    if args.report is not None:
        return _report(db, args.json)
    tasks = campaign_tasks(spec)
    store = _store(args, out, "campaign", spec.to_json())

    def write(o: dict[str, Any]) -> None:
        _write_scenario(out / "failures", o["key"], o["result"])

    with store:
        summary = _run(args, tasks, store, f"campaign {spec.name} ({spec.kind})", "ops", write)
        for r in store.rows():
            _write_scenario(out / "failures", r.key, r.result)
    if not args.json:
        Console(stderr=True).print(_summary_line(summary))
    code = _report(db, args.json, summary)
    return code if summary.complete else EXIT_FAILED


def _report(db: Path, as_json: bool, summary: RunSummary | None = None) -> int:
    try:
        kind, spec = open_existing(db)
        store = ResultStore(db, kind, spec)
    except StoreError as e:
        raise CliError(str(e)) from None
    with store:
        rows = list(store.rows())
    failures = [r for r in rows if r.status != "ok"]
    if as_json:
        report = {
            "db": str(db),
            "kind": kind,
            "tasks": len(rows),
            "statuses": _count(r.status for r in rows),
            "ops": sum(r.ops for r in rows),
            "task_seconds": sum(r.seconds for r in rows),
            "failures": [_row_json(r) for r in failures],
        }
        if summary is not None:
            report["run"] = summary.__dict__
        print(json.dumps(report, indent=1))
        return EXIT_FAILED if failures else EXIT_OK
    console = Console()
    t = Table(title=f"{db}: {len(rows)} finished tasks", title_justify="left")
    for col in ("group", "tasks", "ok", "failed", "error", "ops", "ops/s per worker"):
        t.add_column(col, justify="right" if col != "group" else "left")
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault("/".join(r.key.split("/")[:3]), []).append(r)
    for g, rs in sorted(groups.items()):
        c = _count(r.status for r in rs)
        secs = sum(r.seconds for r in rs)
        ops = sum(r.ops for r in rs)
        counts = [str(c.get(s, 0)) for s in ("ok", "failed", "error")]
        rate = f"{ops / secs:,.0f}" if secs else ""
        t.add_row(g, str(len(rs)), *counts, f"{ops:,}", rate)
    console.print(t)
    for r in failures[:50]:
        console.print(Text(f"{r.status}: {r.key}: {_headline(r)}", style="red"))
    if len(failures) > 50:
        console.print(f"... and {len(failures) - 50} more (--json lists them all)")
    return EXIT_FAILED if failures else EXIT_OK


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def _headline(r: Row) -> str:
    res = r.result
    if r.status == "error":
        return str(res.get("error", ""))
    if res.get("failure"):
        f = res["failure"]
        return f"{f['kind']} at op {f['op']}: {f['problems'][0]}"
    if "first" in res:
        f = res["first"]
        others = {k: v for k, v in f.items() if k not in ("op", "operation")}
        return f"diverges at op {f['op']} ({f['operation']}): " + ", ".join(
            f"{k} {v}" for k, v in others.items()
        )
    if "effect" in res:
        return f"{res['bug']}: {res['effect']} ({res['effects'].get(res['effect'], '')})"
    if "solved" in res:
        return "not solved"
    return ""


SEARCH_COMMANDS: dict[str, Command] = {
    "search": Command(
        "search for attacker operations that give a heap layout (a spec: primitives, prefix, "
        "target, goal)",
        _configure_search,
        _run_search,
    ),
    "campaign": Command(
        "run an invariant, differential or bug-injection campaign over seeds x allocators x "
        "arches (local pool or --ray)",
        _configure_campaign,
        _run_campaign,
    ),
}
