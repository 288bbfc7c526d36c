"""``heapemu exec``: run a Windows console program through Wine's DLLs (``emu.load.program``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from emu.cli.base import Command
from emu.facade import load_program
from emu.load.program import PROGRAM_DIR
from emu.observe.events import EventRecorder

EXEC_HELP = "run a Windows console program through Wine's DLLs, recording its allocations"


def configure_exec(parser: argparse.ArgumentParser) -> None:
    """The options of ``heapemu exec`` (for emu.cli's COMMANDS table)."""
    parser.add_argument("program", help="a Windows console program (.exe, x86 or x64)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    parser.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="WIN=HOST",
        help="let the program read host file HOST as Windows path WIN (read-only)",
    )
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--events", action="store_true", help="print the allocation events")
    parser.add_argument("--json", action="store_true", help="a JSON report on stdout")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds (default 300)")


def exec_main(argv: Sequence[str] | None = None) -> int:
    """``heapemu exec [--map WIN=HOST]... [--events] [--json] PROGRAM [ARGS...]``: run a
    Windows console program; its stdout/stderr are passed through, its exit code returned."""
    parser = argparse.ArgumentParser(prog="heapemu exec", description=EXEC_HELP)
    configure_exec(parser)
    return run_exec(parser.parse_args(argv))


def run_exec(args: argparse.Namespace) -> int:
    """Run ``heapemu exec`` with parsed options: 2 for bad input, 1 when the program did not
    exit, else its exit code (low 8 bits)."""
    from loader.errors import LoaderError

    files = dict(item.split("=", 1) for item in args.map)
    env = dict(item.split("=", 1) for item in args.env)
    program_argv = [f"{PROGRAM_DIR}\\{Path(args.program).name}", *args.args]
    try:
        program = load_program(
            args.program, program_argv, env, files=files, time_limit=args.time_limit
        )
    except (OSError, ValueError, LoaderError) as e:
        print(f"heapemu: {e}", file=sys.stderr)
        return 2
    with EventRecorder(program.proc) as rec:
        result = program.run()
    if args.json:
        report = {
            "ok": result.ok,
            "exit_code": result.exit_code,
            "stdout": result.stdout.decode("utf-8", errors="replace"),
            "stderr": result.stderr.decode("utf-8", errors="replace"),
            "error": str(result.error) if result.error else None,
            "denied": result.denied,
            "events": [ev.to_json() for ev in rec.all],
        }
        print(json.dumps(report, indent=1))
    else:
        sys.stdout.buffer.write(result.stdout)
        sys.stdout.flush()
        sys.stderr.buffer.write(result.stderr)
        if args.events:
            for ev in rec.all:
                ret = "?" if ev.ret is None else hex(ev.ret)
                print(
                    f"{'  ' * ev.depth}{ev.function}({ev.describe_args()}) = {ret}  <- {ev.caller}",
                    file=sys.stderr,
                )
        if result.error:
            print(f"heapemu: the program did not exit: {result.error}", file=sys.stderr)
    if result.exit_code is None:
        return 1
    return result.exit_code & 0xFF


EXEC_COMMAND = Command(
    "run a Windows console program through Wine's DLLs, with its allocation events",
    configure_exec,
    run_exec,
)
