"""``heapemu heap ...`` and ``heapemu trace ...``: views of a scenario's heaps at a checkpoint,
and one call's instruction trace. Both run the scenario once (one arch, one allocator) with an
observer that acts at the chosen moment."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from emu.cli.base import EXIT_FAILED, EXIT_OK, CliError, Command, positive_int
from emu.heap.registry import ALLOCATOR_NAMES
from emu.observe.events import EventRecorder
from emu.observe.tracer import Tracer
from emu.scenario import (
    Checkpoint,
    Observer,
    ScenarioError,
    ScenarioRun,
    load_scenario,
    run_scenario,
)
from emu.scenario.result import ScenarioResult
from emu.scenario.schema import arch_problems
from emu.views import (
    build_address,
    build_dt,
    build_entries,
    build_entry,
    build_summary,
    filter_entries,
    parse_size_range,
    render_address,
    render_dt,
    render_entries,
    render_entry,
    render_summary,
    with_allocation,
)
from emu.views.dt import dt_address
from emu.views.entries import STATES

VIEWS = ("summary", "entries", "entry", "address", "dt")


def _number(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise CliError(f"{what} must be a number like 0x230000, not {text!r}") from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="a .yaml/.json file, or a shipped scenario's name")
    p.add_argument("--arch", choices=("x86", "x64"), default="x64")
    p.add_argument("--allocator", choices=ALLOCATOR_NAMES, default="builtin")


def _scenario(args: argparse.Namespace) -> Any:
    scenario = load_scenario(args.scenario)  # ScenarioError (one line each) if it is not one
    problems = arch_problems(scenario, args.arch)
    if problems:
        raise ScenarioError(problems)
    return scenario


# ---------------------------------------------------------------------- heapemu heap
class _ViewAt(Observer):
    """Builds the requested view at the named checkpoint (or at the end of the run)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.output: tuple[str, dict[str, Any]] | None = None
        self.error: str | None = None
        self.recorder: EventRecorder | None = None

    def started(self, run: ScenarioRun) -> None:
        if self.args.stacks:  # who allocated each block: the calls and their stacks
            self.recorder = run.proc.record(stacks=self.args.stacks)

    def checkpoint(self, run: ScenarioRun, checkpoint: Checkpoint) -> None:
        if self.args.checkpoint == checkpoint.name:
            self._capture(run)

    def finished(self, run: ScenarioRun, result: ScenarioResult) -> None:
        if self.args.checkpoint is None and self.output is None:
            self._capture(run)

    def _heap(self, run: ScenarioRun) -> int:
        spec = self.args.heap
        if spec is None:
            if run.current_heap is None:
                raise CliError("the scenario created no heap: name one with --heap ADDRESS")
            return run.heaps[run.current_heap]
        if spec in run.heaps:
            return run.heaps[spec]
        return _number(spec, "--heap")

    def _capture(self, run: ScenarioRun) -> None:
        proc, a, view = run.proc, run.allocator, self.args.view
        try:
            if view == "summary":
                v: Any = build_summary(proc, allocator=a)
                text = render_summary(v)
            elif view == "entries":
                v = build_entries(proc, self._heap(run), allocator=a)
                if self.args.size is not None or self.args.state is not None:
                    v = filter_entries(v, size=self.args.size, state=self.args.state)
                text = render_entries(v, self.args.max_entries, lfh=self.args.lfh)
            elif view == "entry":
                if self.args.address is None:
                    raise CliError("heap entry needs the block's address: --address 0x...")
                v = build_entry(proc, _number(self.args.address, "--address"), allocator=a)
                if self.recorder is not None:
                    v = with_allocation(v, self.recorder.events)
                text = render_entry(v)
            elif view == "address":
                v = build_address(proc, allocator=a, usage=self.args.filter)
                text = render_address(v)
            else:
                where, heap = self.args.address, self._heap(run)
                if where is not None:
                    at = _number(where, "--address")
                else:  # where the heap has one (its first)
                    at = dt_address(proc, heap, self.args.struct)
                v = build_dt(proc, at, struct=self.args.struct)
                text = render_dt(v)
        except (LookupError, ValueError) as e:
            self.error = str(e).strip("'\"")
            return
        finally:
            if self.recorder is not None:
                self.recorder.stop()
                self.recorder = None
        self.output = (text, v.to_json())


def _configure_heap(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "view",
        choices=VIEWS,
        help="summary (!heap -s), entries (!heap -h), "
        "entry (!heap -i), address (!address), dt (dt _HEAP, or --struct NAME)",
    )
    _common(p)
    p.add_argument("--checkpoint", help="the scenario checkpoint to look at (default: the end)")
    p.add_argument("--heap", help="a heap by scenario name or address (default: the last one)")
    p.add_argument(
        "--address", help="entry: an address inside the block; dt: the structure's address"
    )
    p.add_argument(
        "--struct",
        metavar="NAME",
        help="dt: a structure the allocator declares (e.g. _LFH_HEAP; default: the heap's)",
    )
    p.add_argument(
        "--lfh",
        action="store_true",
        help="entries: list the front end's blocks under each data region (like !heap -hl)",
    )
    p.add_argument("--filter", help="address: a usage to keep, e.g. Heap (like /f:Heap)")
    p.add_argument(
        "--max-entries", type=positive_int, default=None, help="entries: trim long segments"
    )
    p.add_argument(
        "--size",
        type=_size_range,
        metavar="SIZE[-MAX]",
        help="entries: only blocks of this requested size, or range (like !heap -flt s SIZE)",
    )
    p.add_argument(
        "--state", choices=STATES, help="entries: only busy, free or pending_free blocks"
    )
    p.add_argument(
        "--stacks",
        type=positive_int,
        metavar="N",
        help="entry: record allocations with N stack frames and show the block's (!heap -p -a)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _size_range(text: str) -> tuple[int, int]:
    try:
        return parse_size_range(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a size like 0x100 or a range like 0x100-0x200, not {text!r}"
        ) from None


def _run_heap(args: argparse.Namespace) -> int:
    scenario = _scenario(args)
    if args.stacks and args.view != "entry":
        raise CliError("--stacks goes with heap entry (the block's allocating call stack)")
    if (args.size is not None or args.state is not None) and args.view != "entries":
        raise CliError("--size and --state filter heap entries")
    if args.struct is not None and args.view != "dt":
        raise CliError("--struct names the structure heap dt shows")
    if args.lfh and args.view != "entries":
        raise CliError("--lfh goes with heap entries (like !heap -hl)")
    if args.checkpoint and args.checkpoint not in _checkpoint_names(scenario):
        raise CliError(
            f"{scenario.file or 'scenario'} has no checkpoint {args.checkpoint!r} "
            f"(it has: {', '.join(_checkpoint_names(scenario)) or 'none'})"
        )
    viewer = _ViewAt(args)
    result = run_scenario(scenario, args.arch, args.allocator, observers=[viewer])
    if viewer.error:
        raise CliError(viewer.error)
    if viewer.output is None:
        print(
            f"heapemu: the run stopped before the view could be taken: {result.failure}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    text, data = viewer.output
    print(json.dumps(data, indent=1) if args.json else text)
    return EXIT_OK if result.ok else EXIT_FAILED


def _checkpoint_names(scenario: Any) -> list[str]:
    return [str(s.args.get("name")) for s in scenario.steps if s.op == "checkpoint"]


# ---------------------------------------------------------------------- heapemu trace
class _TraceCall(Observer):
    def __init__(self, args: argparse.Namespace, out: TextIO):
        self.args = args
        self.out = out
        self.tracer: Tracer | None = None

    def started(self, run: ScenarioRun) -> None:
        name = self.args.function
        try:
            target = run.proc.resolve(name)
        except KeyError:
            # "ntdll!RtlAllocateHeap" also names the builtin heap's entry point
            func = name.split("!")[-1]
            if run.allocator is None or func not in run.allocator.entry:
                raise CliError(f"{name}: no such function in the loaded modules") from None
            target = run.allocator.entry[func]
        self.tracer = run.proc.trace(
            self.out, function=target, call=self.args.call, registers=self.args.registers
        )

    def finished(self, run: ScenarioRun, result: ScenarioResult) -> None:
        if self.tracer is not None:
            self.tracer.close()


def _configure_trace(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--function", required=True, help="e.g. ntdll!RtlAllocateHeap")
    p.add_argument("--call", type=int, default=None, help="trace only the N-th call (1-based)")
    p.add_argument("--registers", action="store_true", help="log registers each instruction uses")
    p.add_argument("--out", help="write the trace to FILE (default: standard output)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON summary on stdout (needs --out FILE for the trace itself)",
    )


def _run_trace(args: argparse.Namespace) -> int:
    scenario = _scenario(args)
    if args.call is not None and args.call < 1:
        raise CliError("--call counts from 1")
    if args.json and not args.out:
        raise CliError("--json prints a summary on stdout: write the trace with --out FILE")
    if args.out and not Path(args.out).resolve().parent.is_dir():
        raise CliError(f"--out {args.out}: its directory does not exist")
    out = open(args.out, "w") if args.out else sys.stdout  # noqa: SIM115
    try:
        tracer = _TraceCall(args, out)
        result = run_scenario(scenario, args.arch, args.allocator, observers=[tracer])
    finally:
        if args.out:
            out.close()
    t = tracer.tracer
    summary = f"traced {t.instructions if t else 0} instructions in {t.blocks if t else 0} blocks"
    if t is not None and t.instructions == 0:
        times = f" {args.call} times" if args.call else ""
        raise CliError(f"{args.function} was not called{times}")
    if args.json:
        report = {
            "ok": result.ok,
            "function": args.function,
            "call": args.call,
            "instructions": t.instructions if t else 0,
            "blocks": t.blocks if t else 0,
            "out": args.out,
            "run": result.to_json(),
        }
        print(json.dumps(report, indent=1))
    else:
        print(summary, file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILED


INSPECT_COMMANDS: dict[str, Command] = {
    "heap": Command(
        "WinDbg-style views of a scenario's heaps at a checkpoint", _configure_heap, _run_heap
    ),
    "trace": Command(
        "the instruction trace of one allocator call in a scenario", _configure_trace, _run_trace
    ),
}
