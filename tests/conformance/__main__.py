"""``python -m tests.conformance``: Wine 8.0's conformance tests under heapemu (issue 16).

Fetches Wine's test sources (``python -m loader fetch-tests``: Debian's wine source package,
checked), builds kernel32/tests/virtual.c, ntdll/tests/virtual.c and kernel32/tests/heap.c for
x86 and x64 (``tests/conformance/build.py``), runs each under ``heapemu exec`` as a whole and,
with ``--functions``, each of its test_*() functions alone; prints a table (ran to the end?,
checks executed, failures, todo, skipped; the lines failing most) and writes the results as
JSON (default ``benchmarks/results/conformance.json``). ``make conformance`` runs it; it is not
part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from loader.errors import LoaderError
from loader.wine_tests import find_wine_tests
from tests.conformance.build import FILES_BY_KEY, TEST_FILES, BuildError, build, test_functions
from tests.conformance.run import REPO, TIME_LIMIT, RunResult, run_program

ARCHES = ("x86", "x64")
DEFAULT_JSON = REPO / "benchmarks" / "results" / "conformance.json"


def _row(r: RunResult) -> str:
    name = r.function or "(whole file)"
    done = "yes" if r.completed else "NO"
    top = ", ".join(f"{loc} x{n}" for loc, n in list(r.failure_lines.items())[:4])
    line = (
        f"{r.file:17} {r.arch:4} {name:44} {done:4} {r.executed:7} {r.failures:6} "
        f"{r.todo:5} {r.skipped:5} {r.seconds:7.1f}s  {top}"
    )
    if r.ending:
        line += f"\n{'':22}ended: {r.ending}"
    return line


HEADER = (
    f"{'file':17} {'arch':4} {'function':44} {'end':4} {'checks':>7} {'fails':>6} "
    f"{'todo':>5} {'skip':>5} {'time':>8}  most failing lines"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.conformance", description=__doc__)
    parser.add_argument("--arch", choices=ARCHES, action="append", help="default: both")
    parser.add_argument("--file", choices=list(FILES_BY_KEY), action="append", help="default: all")
    parser.add_argument("--functions", action="store_true", help="also each test_*() alone")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT, help="seconds per run")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="where to write the results")
    parser.add_argument("--no-json", action="store_true", help="write no JSON")
    args = parser.parse_args(argv)
    try:
        wine = find_wine_tests()
    except LoaderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    files = [FILES_BY_KEY[k] for k in args.file] if args.file else list(TEST_FILES)
    results: list[RunResult] = []
    print(HEADER, flush=True)
    started = time.monotonic()
    for tf in files:
        for arch in args.arch or ARCHES:
            try:
                exe = build(tf, arch, wine)
            except BuildError as exc:
                print(f"error: building {tf.key} for {arch}: {exc}", file=sys.stderr)
                return 1
            runs = [None]
            if args.functions:
                runs += test_functions(tf, wine)
            for function in runs:
                result = run_program(exe, tf.key, arch, function, args.time_limit)
                results.append(result)
                print(_row(result), flush=True)
    total = time.monotonic() - started
    print(f"total {total:.0f} s")
    if not args.no_json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "command": "python -m tests.conformance " + " ".join(argv or sys.argv[1:]),
            "wine": "8.0 (Debian wine 8.0~repack-4 sources and DLLs)",
            "host": platform.platform(),
            "seconds": round(total, 1),
            "runs": [r.to_json() for r in results],
        }
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
