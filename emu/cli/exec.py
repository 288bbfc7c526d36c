"""``heapemu exec``: run a Windows console program through Wine's DLLs (``emu.load.program``).

heapemu's options come before the program; everything after the program is the program's own
command line (as with valgrind): ``heapemu exec --time-limit 2 prog.exe --time-limit 5`` gives
the program ``--time-limit 5``, and heapemu says so on stderr.

``--allocator NAME`` chooses what serves the program's heaps (``emu.heap.registry``): ``wine``
(default) is Wine's own ntdll heap; any other has ntdll's ``Rtl*Heap`` entry points routed to
it from the first instruction (``emu.load.heap_route``). ``--view summary|entries|address``
prints a WinDbg-style view of the heaps after the run, walked with that allocator's walker.

Exit status: the program's own exit code (its low 8 bits) when it exits; otherwise 124 when the
time limit expired, 125 when it crashed (an exception none of its handlers took, which ends it
with the exception code as on Windows, or an emulation fault before NtTerminateProcess), 127
when it or a DLL it needs could not be loaded; 2 for bad input. ``--json`` says the same in
``outcome`` ("exited", "timeout", "crashed", "dll_not_found", "not_loaded").

Faults are exceptions the program's handlers see first (``emu.nt.exceptions``); a crash is
reported at the instruction that raised the exception, with the registers there.
``--stop-on-first-chance`` stops at the first fault instead, before any handler runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from emu.cli.base import (
    EXIT_CRASHED,
    EXIT_NOT_LOADED,
    EXIT_TIMEOUT,
    MAX_PROGRAM_BYTES,
    CliError,
    Command,
    Parser,
    bad_input,
    one_line,
    positive_int,
    regular_file,
    seed_int,
    time_limit,
)
from emu.errors import EmulationError, Fault
from emu.facade import load_program
from emu.heap.crossheap import CrossHeapFreeDetector
from emu.heap.registry import ALLOCATOR_NAMES
from emu.load.program import PROGRAM_DIR, Program, ProgramResult
from emu.nt.exceptions import ExceptionEvent
from emu.nt.kernel import describe_warning
from emu.nt.output import DEFAULT_OUTPUT_LIMIT
from emu.nt.threads import DEFAULT_QUANTUM
from emu.observe.events import AllocationEvent, EventRecorder
from emu.views import (
    build_address,
    build_entries,
    build_summary,
    render_address,
    render_entries,
    render_summary,
)
from emu.views.common import list_heaps
from emu.win.ntdefs import status_name

EXEC_HELP = "run a Windows console program through Wine's DLLs, recording its allocations"
EXEC_EPILOG = (
    "heapemu's options go before PROGRAM; what follows PROGRAM is passed to it. Exit status: "
    "the program's exit code; 124 time limit, 125 crashed (an unhandled exception or a fault), "
    "127 program or DLL not loadable, 2 bad input."
)
# the heap views an exec run can end with (a scenario's are emu.cli.inspect's VIEWS)
EXEC_VIEWS = ("summary", "entries", "address")
DLL_NOT_FOUND = 0xC0000135  # STATUS_DLL_NOT_FOUND: Wine's loader ends the process with it


def configure_exec(parser: argparse.ArgumentParser) -> None:
    """The options of ``heapemu exec`` (for emu.cli's COMMANDS table)."""
    parser.epilog = EXEC_EPILOG
    parser.add_argument("program", help="a Windows console program (.exe, x86 or x64)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    parser.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="WIN=HOST",
        help="let the program read host file HOST as Windows path WIN (read-only)",
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="set a variable"
    )
    parser.add_argument("--events", action="store_true", help="print the allocation events")
    parser.add_argument(
        "--stacks",
        type=positive_int,
        metavar="N",
        help="keep each allocation's call stack (N frames): --events and --json show it",
    )
    parser.add_argument(
        "--cross-heap",
        action="store_true",
        help="report blocks freed through another heap than the one holding them (seed 001)",
    )
    parser.add_argument(
        "--allocator",
        choices=ALLOCATOR_NAMES,
        default="wine",
        help="what serves the process heap and every heap the program creates "
        "(default wine: Wine's own ntdll heap)",
    )
    parser.add_argument(
        "--view",
        action="append",
        default=[],
        choices=EXEC_VIEWS,
        help="after the run, show the heaps (on stderr; --json: under 'views'): summary "
        "(!heap -s), entries (!heap -h, every heap), address (!address /f:Heap); repeatable",
    )
    parser.add_argument("--json", action="store_true", help="a JSON report on stdout")
    parser.add_argument(
        "--stop-on-first-chance",
        action="store_true",
        help="stop at the first fault, before the program's exception handlers see it",
    )
    parser.add_argument(
        "--output-limit",
        type=positive_int,
        default=DEFAULT_OUTPUT_LIMIT,
        metavar="BYTES",
        help="bytes of each output stream the --json report keeps (default 16 MiB; the rest "
        "is counted in stdout_truncated/stderr_truncated); without --json the program's "
        "output is passed through as it is written and never held",
    )
    parser.add_argument(
        "--time-limit",
        type=time_limit,
        default=300.0,
        metavar="SECONDS",
        help="wall-clock limit (default 300; 0: none)",
    )
    parser.add_argument(
        "--threads-seed",
        type=seed_int,
        default=0,
        metavar="S",
        help="the seed choosing which ready thread runs next: the same seed repeats a run "
        "exactly, another explores another interleaving (default 0)",
    )
    parser.add_argument(
        "--quantum",
        type=positive_int,
        default=DEFAULT_QUANTUM,
        metavar="N",
        help=f"instructions a thread runs before another may (default {DEFAULT_QUANTUM:,})",
    )


def exec_main(argv: Sequence[str] | None = None) -> int:
    """``heapemu exec [--map WIN=HOST]... [--events] [--json] PROGRAM [ARGS...]``: run a
    Windows console program; its stdout/stderr are passed through, its exit code returned."""
    parser = Parser(prog="heapemu exec", description=EXEC_HELP)
    configure_exec(parser)
    args = parser.parse_args(argv)
    try:
        return run_exec(args)
    except CliError as e:
        return bad_input([one_line(str(e))], args.json)


def _pairs(items: list[str], option: str, form: str, example: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError(f"{option} '{item}': give {form}, like {option} {example}")
        out[name] = value
    return out


def _options_after_program(args: argparse.Namespace, parser_options: set[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args.args if a.split("=", 1)[0] in parser_options]


def _missing_dlls(program: Program, result: ProgramResult) -> list[str]:
    """The DLLs the sandbox refused everywhere they were looked for and that never loaded."""
    loaded = {m.name.lower() for m in program.proc.modules}
    missing: list[str] = []
    for name, _why in result.denied:
        base = name.replace("/", "\\").rsplit("\\", 1)[-1]
        key = base.lower()
        if key.endswith(".dll") and key not in loaded and key not in map(str.lower, missing):
            missing.append(base)
    return missing


def _outcome(result: ProgramResult, missing: list[str]) -> tuple[str, int]:
    """(outcome, exit status) of a run."""
    if result.unhandled is not None:
        return "crashed", EXIT_CRASHED
    if result.exit_code is not None:
        if result.exit_code == DLL_NOT_FOUND and missing:
            return "dll_not_found", EXIT_NOT_LOADED
        return "exited", result.exit_code & 0xFF
    if result.error is not None and "wall-clock" in result.error.kind:
        return "timeout", EXIT_TIMEOUT
    return "crashed", EXIT_CRASHED


def _event_line(ev: AllocationEvent) -> list[str]:
    ret = "?" if ev.ret is None else hex(ev.ret)
    pad = "  " * ev.depth
    lines = [f"{pad}{ev.function}({ev.describe_args()}) = {ret}  <- {ev.caller}"]
    lines += [f"{pad}    {f.symbol}" for f in ev.stack[1:]]  # [0] is the function itself
    return lines


def run_exec(args: argparse.Namespace) -> int:
    """Run ``heapemu exec`` with parsed options (see the module docstring for exit codes)."""
    from loader.errors import LoaderError

    files = _pairs(args.map, "--map", "WIN=HOST", "'C:\\data\\in.txt=./in.txt'")
    env = _pairs(args.env, "--env", "NAME=VALUE", "LANG=C (an empty VALUE is allowed)")
    path = regular_file(args.program, "a Windows program", MAX_PROGRAM_BYTES)
    for win, host in files.items():
        regular_file(host, f"--map {win}")
    own = {
        *("--map", "--env", "--events", "--stacks", "--cross-heap", "--json", "--time-limit"),
        *("--stop-on-first-chance", "--threads-seed", "--quantum", "--output-limit"),
        *("--allocator", "--view"),
    }
    passed = _options_after_program(args, own)
    if passed:
        print(
            f"heapemu: {', '.join(passed)} after the program goes to the program; heapemu's "
            "options go before it (heapemu exec [OPTIONS] PROGRAM [ARGS])",
            file=sys.stderr,
        )
    program_argv = [f"{PROGRAM_DIR}\\{Path(path).name}", *args.args]
    # without --json the output goes straight through (one copy, none held in memory)
    output: dict[str, Any] = (
        {"output_limit": args.output_limit}
        if args.json
        else {"output_limit": 0, "stdout_sink": sys.stdout.buffer, "stderr_sink": sys.stderr.buffer}
    )
    if not args.json:
        sys.stdout.flush()
        sys.stderr.flush()
    try:
        program = load_program(
            path,
            program_argv,
            env,
            files=files,
            time_limit=args.time_limit,
            threads_seed=args.threads_seed,
            quantum=args.quantum,
            allocator=args.allocator,
            **output,
        )
    except ValueError as e:
        raise CliError(f"{args.program}: {one_line(str(e))}") from None
    except (OSError, LoaderError) as e:
        message = f"{args.program}: cannot load it: {one_line(str(e))}"
        if args.json:
            print(json.dumps({"ok": False, "outcome": "not_loaded", "error": message}))
        print(f"heapemu: {message}", file=sys.stderr)
        return EXIT_NOT_LOADED
    cross = CrossHeapFreeDetector(program.proc) if args.cross_heap else None
    if cross is not None:
        cross.start()
    with EventRecorder(program.proc, stacks=args.stacks or 0) as rec:
        result = program.run(stop_on_first_chance=args.stop_on_first_chance)
    if cross is not None:
        cross.stop()
    missing = _missing_dlls(program, result)
    outcome, status = _outcome(result, missing)
    problem = _problem_line(outcome, result, missing)
    views = _views(program, args.view) if outcome in ("exited", "crashed") else []
    if args.json:
        data = _report(program, result, rec, cross, outcome, missing, problem)
        data["allocator"] = args.allocator
        if args.view:
            data["views"] = {name: view for name, _text, view in views}
        print(json.dumps(data, indent=1))
    else:
        if args.events:
            for ev in rec.all:
                print("\n".join(_event_line(ev)), file=sys.stderr)
        for report in cross.reports if cross is not None else []:
            print(f"heapemu: cross-heap free: {report}", file=sys.stderr)
        for _name, text, _data in views:
            print(text, file=sys.stderr)
        for w in result.warnings:  # after the program's own output, never inside it
            print(f"heapemu: {describe_warning(w)}", file=sys.stderr)
        if problem:
            print(f"heapemu: {problem}", file=sys.stderr)
    return status


def _views(program: Program, names: list[str]) -> list[tuple[str, str, Any]]:
    """(name, text, JSON) of each requested view of the program's heaps, in the order asked;
    the walker is the allocator's that served them (``proc.heap_kind``, else Wine's)."""
    proc = program.proc
    out: list[tuple[str, str, Any]] = []
    for name in dict.fromkeys(names):
        if name == "summary":
            summary = build_summary(proc)
            out.append((name, render_summary(summary), summary.to_json()))
        elif name == "entries":
            heaps = list_heaps(proc)
            entries = [build_entries(proc, heap, index=i) for i, heap in enumerate(heaps)]
            text = "\n\n".join(render_entries(v) for v in entries)
            out.append((name, text, [v.to_json() for v in entries]))
        else:
            address = build_address(proc, usage="Heap")
            out.append((name, render_address(address), address.to_json()))
    return out


def _problem_line(outcome: str, result: ProgramResult, missing: list[str]) -> str:
    if outcome == "dll_not_found":
        names = ", ".join(missing)
        return (
            f"{names} not found (STATUS_DLL_NOT_FOUND): not in the sandbox, which holds the "
            f"program's folder ({PROGRAM_DIR}), Wine's DLLs and the files given with --map; "
            f"put {'it' if len(missing) == 1 else 'them'} beside the program or map "
            f"{'it' if len(missing) == 1 else 'each'}, like --map 'C:\\heapemu\\{missing[0]}=PATH'"
        )
    if result.unhandled is not None:
        code = f"exit code 0x{result.exit_code or 0:08x}"
        return f"unhandled exception ({code}): {one_line(str(unhandled_error(result)))}"
    if outcome in ("crashed", "timeout"):
        return f"the program did not exit: {one_line(str(result.error))}"
    if result.exit_code is not None and result.exit_code > 0xFF:
        return f"exit code 0x{result.exit_code:08x} ({status_name(result.exit_code)})"
    return ""


def _report(
    program: Program,
    result: ProgramResult,
    rec: EventRecorder,
    cross: CrossHeapFreeDetector | None,
    outcome: str,
    missing: list[str],
    problem: str,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "ok": outcome == "exited",
        "outcome": outcome,
        "exit_code": result.exit_code,
        "problem": problem or None,
        "stdout": result.stdout.decode("utf-8", errors="replace"),
        "stderr": result.stderr.decode("utf-8", errors="replace"),
        "stdout_truncated": result.stdout_truncated,
        "stderr_truncated": result.stderr_truncated,
        "warnings": result.warnings,
        "error": str(result.error) if result.error else None,
        "denied": result.denied,
        "missing_dlls": missing,
        "modules": [
            {"name": m.name, "base": m.base, "size": m.size, "path": m.path}
            for m in sorted(program.proc.modules, key=lambda m: m.base)
        ],
        "events": [ev.to_json() for ev in rec.all],
        "exceptions": [_exception_json(e) for e in result.exceptions],
        "unhandled": None if result.unhandled is None else _exception_json(result.unhandled),
        "threads": {
            "created": len(program.proc.threads.threads),
            "switches": program.proc.threads.switches,
            "seed": program.proc.threads.seed,
            "quantum": program.proc.threads.quantum,
        },
    }
    if cross is not None:
        report["cross_heap_frees"] = [
            {
                "block": r.block,
                "owner": r.owner,
                "freed_through": r.freed_through,
                "alloc_heap": r.alloc_heap,
                "free_stack": [f.symbol for f in r.free_stack],
                "alloc_stack": None if r.alloc_stack is None else [f.symbol for f in r.alloc_stack],
            }
            for r in cross.reports
        ]
        report["frees_checked"] = cross.frees_checked
    return report


def unhandled_error(result: ProgramResult) -> EmulationError | None:
    """The exception that ended the program, reported where it happened (the fault's kind,
    pc, instruction and registers, as a fault stopping the run is)."""
    event = result.unhandled
    if event is None:
        return None
    fault = event.fault or Fault(f"exception {event.name} raised", pc=event.address)
    chain = " -> ".join(e.describe() for e in result.exceptions[-8:])
    fault = replace(fault, status=event.code, detail=f"exceptions dispatched: {chain}")
    return EmulationError(fault, event.state)


def _exception_json(event: ExceptionEvent) -> dict[str, Any]:
    return {
        "code": event.code,
        "name": event.name,
        "address": event.address,
        "symbol": event.state.symbol if event.state else "",
        "params": list(event.params),
        "first_chance": event.first_chance,
    }


EXEC_COMMAND = Command(
    "run a Windows console program through Wine's DLLs, with its allocation events",
    configure_exec,
    run_exec,
)
