"""``heapemu replay TRACE``: replay an allocation trace inside the emulator and report speed.

    heapemu replay trace.txt --arch x86 --allocator wine
    heapemu replay --synthetic 100000 --seed 3 --sizes mixed --json

TRACE is the text format of ``emu.heap.replay.workload`` ("-" for stdin). The replay is timed
without hooks; with --count, a second run in a fresh process with a block-counting hook gives
the number of emulated instructions (the process is deterministic, so both runs execute the
same code; that run takes several times longer than the timed one, so it is opt-in).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from emu.cli.base import Command, Parser, positive_int
from emu.errors import EmulationError
from emu.facade import Process
from emu.heap.allocator import Allocator
from emu.heap.registry import ALLOCATOR_NAMES
from emu.heap.replay.run import DEFAULT_CHUNK, replay
from emu.heap.replay.tape import Tape
from emu.heap.replay.workload import TraceError, Workload, iter_trace, renumber, synthetic

REPLAY_HELP = "replay an allocation trace inside the emulator (alloc SIZE -> ID / free ID / ...)"


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="heapemu replay", description=REPLAY_HELP)
    configure_replay(p)
    return p


def configure_replay(p: argparse.ArgumentParser) -> None:
    """The options of ``heapemu replay`` (the subcommand and ``main`` share them)."""
    p.add_argument("trace", nargs="?", help="text trace (alloc SIZE -> ID, ...); '-' for stdin")
    p.add_argument(
        "--synthetic", type=positive_int, metavar="N", help="generate N operations instead"
    )
    p.add_argument("--seed", type=int, default=0, help="synthetic: random seed")
    p.add_argument("--sizes", default="typical", help="synthetic: size distribution")
    p.add_argument("--lifetime", type=float, default=200.0, help="synthetic: mean lifetime")
    p.add_argument("--arch", choices=("x86", "x64"), default="x64")
    p.add_argument("--allocator", choices=ALLOCATOR_NAMES, default="builtin")
    p.add_argument(
        "--chunk", type=positive_int, default=DEFAULT_CHUNK, help="operations per driver call"
    )
    p.add_argument("--lenient", action="store_true", help="allow IDs used while not live")
    p.add_argument("--renumber", action="store_true", help="make IDs dense (sparse traces)")
    p.add_argument(
        "--warmup",
        type=int,
        default=0,
        metavar="N",
        help="first replay the trace's first N ops on a throwaway heap (warm translation cache)",
    )
    p.add_argument(
        "--count",
        action="store_true",
        help="also count the emulated instructions (a second, slower run with a counting hook)",
    )
    p.add_argument("--no-count", action="store_true", help=argparse.SUPPRESS)  # the old default
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _allocator_for(args: argparse.Namespace, tape: Tape) -> Allocator:
    proc = Process(args.arch, time_limit=0)
    module = proc.load_allocator(args.allocator)
    a = Allocator(proc, module, name=args.allocator)
    if args.warmup:
        heap = a.create_heap()
        replay(a, tape.head(args.warmup), heap, time_limit=0)
        a.destroy(heap)
    return a


def _tape(args: argparse.Namespace) -> Tape:
    if args.synthetic is not None:
        w = Workload(ops=args.synthetic, seed=args.seed, sizes=args.sizes, lifetime=args.lifetime)
        ops = synthetic(w)
    elif args.trace:
        ops = iter_trace(sys.stdin if args.trace == "-" else args.trace, strict=not args.lenient)
    else:
        raise TraceError("give a TRACE file or --synthetic N")
    return Tape.from_ops(renumber(ops) if args.renumber else ops)


def main(argv: Sequence[str] | None = None) -> int:
    return run_replay(_parser().parse_args(argv))


def run_replay(args: argparse.Namespace) -> int:
    """Run ``heapemu replay`` with parsed options: 0, 2 for bad input, 3 if emulation failed."""
    try:
        t0 = time.perf_counter()
        tape = _tape(args)
        encode = time.perf_counter() - t0
        a = _allocator_for(args, tape)
        result = replay(a, tape, chunk=args.chunk, time_limit=0)
        report: dict[str, Any] = result.to_json()
        report.update(allocator=args.allocator, encode_seconds=encode)
        if args.count and not args.no_count:
            counted = replay(_allocator_for(args, tape), tape, chunk=args.chunk, time_limit=0,
                             count_instructions=True)  # fmt: skip
            n = counted.instructions or 0
            report.update(
                instructions=n,
                instructions_per_op=n / len(tape) if len(tape) else 0,
                instructions_per_second=n / result.seconds if result.seconds else 0,
                count_matches=list(counted.values) == list(result.values),
            )
    except (TraceError, ValueError, OSError) as e:
        print(f"heapemu replay: {e}", file=sys.stderr)
        return 2
    except EmulationError as e:
        print(f"heapemu replay: emulation failed: {e}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    _print(report)
    return 0


def _print(r: dict[str, Any]) -> None:
    print(
        f"{r['ops']:,} operations on the {r['allocator']} heap, {r['arch']}: "
        f"{r['seconds']:.3f} s, {r['ops_per_second']:,.0f} ops/s, "
        f"{r['driver_calls']} driver call(s), {r['syscalls']} system calls"
    )
    if r.get("instructions"):
        print(
            f"{r['instructions']:,} instructions emulated, {r['instructions_per_op']:.0f} per op, "
            f"{r['instructions_per_second'] / 1e6:.1f} M/s"
        )
    for kind, c in r["results"].items():
        if kind != "total":
            print(f"  {kind:<9} {c['count']:>10,}  failed {c['failed']:,}")


REPLAY_COMMAND = Command(REPLAY_HELP, configure_replay, run_replay)
