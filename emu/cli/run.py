"""``heapemu demo`` and ``heapemu run``: scenarios with their observers."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from emu.cli.base import EXIT_FAILED, EXIT_OK, CliError, Command, one_line, positive_int
from emu.errors import EmulationError
from emu.heap.registry import ALLOCATOR_NAMES
from emu.observe.events import AllocationEvent
from emu.observe.export import events_table
from emu.scenario import (
    AllocatorSpec,
    Observer,
    Scenario,
    ScenarioError,
    ScenarioResult,
    find_scenario,
    load_scenario,
    run_scenario,
    scenario_matrix,
    shipped_scenarios,
)
from emu.scenario.observe import EventsObserver
from emu.scenario.render import (
    ProgressObserver,
    emit,
    output_console,
    render_result,
    summary_table,
)
from emu.scenario.schema import arch_problems
from loader.errors import LoaderError

# ---------------------------------------------------------------------- heapemu demo
PICTURES_HINT = "pip install 'heapemu[pictures]' (matplotlib) to get the heap-map picture"


def pictures_available() -> bool:
    """matplotlib is an extra (``heapemu[pictures]``): the demo runs without it."""
    return importlib.util.find_spec("matplotlib") is not None


def _fold_events(events: list[AllocationEvent]) -> list[tuple[AllocationEvent, int, int]]:
    """(first event, count, last result): consecutive identical allocations folded."""
    rows: list[tuple[AllocationEvent, int, int]] = []
    for ev in events:
        same = (
            rows
            and rows[-1][0].name == ev.name
            and rows[-1][0].args.get("Size") == ev.args.get("Size")
            and ev.name == "RtlAllocateHeap"
            and not ev.syscalls
            and not rows[-1][0].syscalls
        )
        if same:
            first, n, _ = rows[-1]
            rows[-1] = (first, n + 1, ev.ret or 0)
        else:
            rows.append((ev, 1, ev.ret or 0))
    return rows


def demo(
    arch: str = "x64",
    allocator: str = "builtin",
    console: Console | None = None,
    out_dir: str | Path = ".",
    *,
    as_json: bool = False,
    picture: bool = True,
) -> int:
    """Seed 002's scenario (``emu/scenarios/lec04_growable_heap.yaml``) on an emulated heap:
    the allocation events (consecutive identical calls folded), the heap summary like
    ``!heap -s``, and a heap-map picture written to ``out_dir`` (when matplotlib, the
    ``pictures`` extra, is installed)."""
    from emu.heap.registry import walk_heap
    from emu.views import build_summary, render_summary

    out = console or output_console()
    draw = picture and pictures_available()
    captured: dict[str, Any] = {}

    class _AtEnd(Observer):
        def finished(self, run: Any, result: ScenarioResult) -> None:
            heap = run.heaps[run.current_heap]
            view = build_summary(run.proc, allocator=run.allocator)
            captured["summary"], captured["summary_json"] = render_summary(view), view.to_json()
            if draw:
                from emu.views.heapmap import save_heap_map

                path = Path(out_dir) / f"heapemu-demo-{allocator}-{arch}.png"
                title = f"seed 002, {allocator} {arch}"
                save_heap_map(walk_heap(run.proc, heap), path, title=title)
                captured["picture"] = path

    events = EventsObserver()
    result = run_scenario(
        find_scenario("lec04_growable_heap"), arch, allocator, observers=[events, _AtEnd()]
    )
    rows = _fold_events(result.events)
    if as_json:
        report = {
            "ok": result.ok,
            "arch": arch,
            "allocator": allocator,
            "events": [ev.to_json() for ev in result.events],
            "summary": captured.get("summary_json"),
            "picture": str(captured["picture"]) if "picture" in captured else None,
        }
        print(json.dumps(report, indent=1))
        return EXIT_OK if result.ok else EXIT_FAILED
    table = Table(
        title=f"allocation events: seed 002 on the {allocator} heap, {arch}", title_justify="left"
    )
    for col in ("#", "call", "result", "instructions", "system calls"):
        table.add_column(col)
    for first, n, last in rows:
        call = f"{first.name}({first.describe_args()})" + (f" x{n}" if n > 1 else "")
        value = f"0x{first.ret or 0:x}" + (f" .. 0x{last:x}" if n > 1 else "")
        calls = ", ".join(r.name for r in first.syscalls)
        table.add_row(str(first.seq), call, value, str(first.instructions), calls)
    emit(out, table)
    out.print(str(captured.get("summary", "")), soft_wrap=True, highlight=False, markup=False)
    if "picture" in captured:
        out.print(f"heap map written to {captured['picture']}", highlight=False, markup=False)
    elif picture:
        out.print(f"no heap map: {PICTURES_HINT}", highlight=False, markup=False)
    return EXIT_OK if result.ok else EXIT_FAILED


def _configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", choices=("x86", "x64"), default="x64")
    p.add_argument("--allocator", choices=ALLOCATOR_NAMES, default="builtin")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument("--no-picture", action="store_true", help="do not write the heap-map picture")


def _run_demo(args: argparse.Namespace) -> int:
    try:
        return demo(args.arch, args.allocator, as_json=args.json, picture=not args.no_picture)
    except EmulationError as e:
        print(f"heapemu: emulation failed: {one_line(str(e))}", file=sys.stderr)
        return EXIT_FAILED


# ---------------------------------------------------------------------- heapemu run


def _configure_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", nargs="?", help="a .yaml/.json file, or a shipped scenario's name")
    p.add_argument("--arch", help="x86, x64 or both (default: the scenario's arch:)")
    p.add_argument(
        "--allocator", help="builtin, wine, or both as builtin,wine (default: the scenario's)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument(
        "--wine-debug", metavar="CHANNELS", help="Wine debug channels, e.g. heap=warn+err"
    )
    p.add_argument("--trace", metavar="FILE", help="write the allocation events (JSON Lines)")
    p.add_argument("--perfetto", metavar="FILE", help="write a Perfetto/Chrome trace (JSON)")
    p.add_argument(
        "--check-conventions",
        action="store_true",
        help="check every allocator call's calling convention; violations fail the run",
    )
    p.add_argument(
        "--stacks",
        type=positive_int,
        metavar="N",
        help="keep each allocator call's stack (N frames) in the events (--trace, --json)",
    )
    p.add_argument(
        "--gdb",
        metavar="PORT",
        help="stop at the first step and wait for gdb on 127.0.0.1:PORT (one arch, one allocator; "
        "0: a free port, named on stderr)",
    )
    p.add_argument(
        "--heap-map",
        metavar="DIR",
        help="write a heap map of each run's heaps at its end: DIR/NAME-ALLOCATOR-ARCH.png",
    )
    p.add_argument("--list", action="store_true", help="list the shipped scenarios")


def _events_observer(args: argparse.Namespace, runs: int) -> EventsObserver | None:
    if not (args.trace or args.perfetto or args.check_conventions or args.stacks):
        return None
    for flag, path in (("--trace", args.trace), ("--perfetto", args.perfetto)):
        if path and not Path(path).resolve().parent.is_dir():
            raise CliError(f"{flag} {path}: its directory does not exist")
    return EventsObserver(
        jsonl=args.trace,
        perfetto=args.perfetto,
        check_conventions=args.check_conventions,
        runs=runs,
        stacks=args.stacks or 0,
    )


def _matrix(args: argparse.Namespace, scenario: Scenario) -> list[tuple[str, AllocatorSpec]]:
    if args.arch and args.arch not in ("x86", "x64", "both"):
        raise CliError(f"--arch must be x86, x64 or both, not {args.arch!r}")
    if args.allocator:
        bad = [k for k in args.allocator.split(",") if k.strip() not in ALLOCATOR_NAMES]
        if bad:
            names = ", ".join(ALLOCATOR_NAMES)
            raise CliError(f"--allocator must be one or more of {names}, not {bad[0]!r}")
    runs = scenario_matrix(scenario, args.arch, args.allocator)
    if args.wine_debug and not any(spec.kind == "wine" for _, spec in runs):
        raise CliError("--wine-debug needs the wine allocator: add --allocator wine")
    problems = [
        p for arch in dict.fromkeys(a for a, _ in runs) for p in arch_problems(scenario, arch)
    ]
    if problems:  # before any run starts
        raise ScenarioError(problems)
    return runs


class HeapMapObserver(Observer):
    """At the end of each run, a heap map of the heaps it used, read by the allocator's walker
    (runs on module allocators have no walker and get none)."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.written: list[Path] = []

    def finished(self, run: Any, result: ScenarioResult) -> None:
        from emu.heap.registry import ALLOCATORS
        from emu.views.heapmap import save_heap_map

        kind = ALLOCATORS.get(run.spec.kind)
        if kind is None or not run.heaps:
            return
        reports = [kind.walker(run.proc, h).walk() for h in run.heaps.values()]
        path = self.out_dir / f"{result.scenario}-{run.spec.kind}-{run.arch}.png"
        title = f"{result.scenario}: {kind.title}, {run.arch}, at the end"
        self.written.append(save_heap_map(reports, path, title=title))


def _gdb_stub(port_text: str, runs: list[tuple[str, AllocatorSpec]]) -> Observer:
    from emu.scenario.gdbstub import GdbStub, GdbStubError

    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise CliError(
            f"--gdb needs a TCP port number from 1 to 65535 (0: a free one), not {port_text!r}"
        )
    if len(runs) != 1:
        raise CliError(
            f"--gdb debugs one run, not {len(runs)}: pick one --arch (x86 or x64) and one "
            "--allocator (builtin or wine)"
        )
    try:
        stub = GdbStub(int(port_text))
    except GdbStubError as e:
        raise CliError(str(e)) from None
    print(stub.connect_hint(runs[0][0]), file=sys.stderr, flush=True)
    return stub


def _run_run(args: argparse.Namespace) -> int:
    out = output_console()
    if args.list:
        for path in shipped_scenarios():
            print(f"{path.stem:32} {path}")
        return EXIT_OK
    if not args.scenario:
        raise CliError("name a scenario file (or a shipped scenario: heapemu run --list)")
    scenario = load_scenario(args.scenario)
    runs = _matrix(args, scenario)
    watcher = _events_observer(args, len(runs))
    observers: list[Observer] = [watcher] if watcher else []
    if args.gdb is not None:
        observers.append(_gdb_stub(args.gdb, runs))
    maps = None
    if args.heap_map:
        if not Path(args.heap_map).is_dir():
            raise CliError(f"--heap-map {args.heap_map}: no such directory")
        maps = HeapMapObserver(args.heap_map)
        observers.append(maps)
    progress = ProgressObserver(output_console(stderr=True))
    results: list[ScenarioResult] = []
    try:
        for arch, spec in runs:
            debug = args.wine_debug if spec.kind == "wine" else None
            try:
                result = run_scenario(
                    scenario, arch, spec, observers=[progress, *observers], wine_debug=debug
                )
            except ValueError as e:  # e.g. a malformed --wine-debug
                raise CliError(str(e)) from None
            except LoaderError as e:
                raise CliError(f"{e} ({arch} {spec.label})") from None
            except EmulationError as e:  # steps' faults are results; this is loading
                raise CliError(
                    f"emulation failed while loading the {spec.label} allocator ({arch}): "
                    f"{one_line(str(e))}"
                ) from None
            results.append(result)
    finally:
        progress.close()
    violations = watcher.violations if watcher else []
    ok = all(r.ok for r in results) and not violations
    if args.json:
        report = {"ok": ok, "runs": [r.to_json() for r in results]}
        if watcher and args.check_conventions:
            report["convention_violations"] = [
                {"run": label, "event": ev.seq, "function": ev.function, "violation": what}
                for label, ev, what in violations
            ]
        print(json.dumps(report, indent=1))
    else:
        for r in results:
            render_result(out, r)
            if r.events and (args.trace or args.perfetto or args.check_conventions):
                emit(out, events_table(r.events, f"allocation events ({r.arch} {r.allocator})"))
        if len(results) > 1:
            emit(out, summary_table(results))
        for path in maps.written if maps else []:
            out.print(f"heap map written to {path}")
        if watcher:
            for path in watcher.written:
                out.print(f"wrote {path}")
            if args.check_conventions:
                for label, ev, what in violations:
                    out.print(
                        f"[red]convention violation[/red] ({label}) #{ev.seq} "
                        f"{ev.function} from {ev.caller}: {what}"
                    )
                if not violations:
                    out.print("calling conventions: no violations")
    return EXIT_OK if ok else EXIT_FAILED


RUN_COMMANDS: dict[str, Command] = {
    "demo": Command(
        "seed 002's scenario on the builtin heap (nothing downloaded)", _configure_demo, _run_demo
    ),
    "run": Command(
        "run a scenario file on x86/x64 and the builtin/wine allocator", _configure_run, _run_run
    ),
}
