"""Run Wine's conformance tests under ``heapemu exec`` and read their results (issue 16).

Each run is a child process (``python -m emu.cli exec``): a run that hangs or crashes ends
that child only. wine/test.h prints one line per failed check,
``virtual.c:1807: Test failed: ...`` (a todo_wine check that passes is
``Test succeeded inside todo block``, also a failure), and at the end
``0400:virtual: 2599 tests executed (97 marked as todo, 0 as flaky, 488 failures), 1 skipped.``
A run without that line did not reach its end. The runner is told the platform is Windows
($WINETEST_PLATFORM=windows): heapemu's kernel follows Windows, so a todo_wine check (one Wine
itself fails) is an ordinary check here. Left alone, the runner would see Wine's ntdll
(``wine_get_version``) and count a todo_wine check that passes as a failure. On "windows" the
runner also installs its unhandled-exception filter, which names the last check before a crash.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PLATFORM = "windows"
TIME_LIMIT = 600.0  # seconds of heapemu exec's own limit per run
SUMMARY = re.compile(
    r"^[0-9a-f]+:(?P<test>\w+):(?:[\d.]+ )?\s*(?P<executed>\d+) tests executed "
    r"\((?P<todo>\d+) marked as todo, (?P<flaky>\d+) as flaky, (?P<failures>\d+) failures?\), "
    r"(?P<skipped>\d+) skipped\.",
    re.M,
)
FAILURE = re.compile(
    r"^(?P<file>[\w.-]+):(?P<line>\d+): (?:Test failed|Test succeeded inside todo block)", re.M
)
UNHANDLED = re.compile(r"unhandled exception (?P<code>[0-9a-f]{8})", re.M)
LAST_SEEN = re.compile(r"^(?P<loc>[\w.-]+:\d+): this is the last test seen", re.M)


@dataclass
class RunResult:
    """One run of one test file (or one of its test_*() functions) on one arch."""

    file: str
    arch: str
    function: str | None  # None: the whole file
    completed: bool  # the summary line was printed
    executed: int
    failures: int
    todo: int
    skipped: int
    failure_lines: dict[str, int]  # "virtual.c:1807" -> failed checks there
    exit_status: int
    seconds: float
    ending: str  # the last line of heapemu's stderr when the run did not complete
    warnings: list[str] = field(default_factory=list)  # heapemu's unhandled system calls

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_output(stdout: str) -> dict[str, Any]:
    """The counts of a winetest run's output (zeros and completed=False without a summary)."""
    summary = SUMMARY.search(stdout)
    lines = Counter(f"{m['file']}:{m['line']}" for m in FAILURE.finditer(stdout))
    out: dict[str, Any] = {
        "completed": summary is not None,
        "failure_lines": dict(sorted(lines.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
    for key in ("executed", "failures", "todo", "skipped"):
        out[key] = int(summary[key]) if summary else 0
    if summary is None:
        # checks before the end: every ok() that failed was printed, successes were not
        out["failures"] = sum(lines.values())
    return out


def run_program(
    exe: Path,
    file_key: str,
    arch: str,
    function: str | None = None,
    time_limit: float = TIME_LIMIT,
) -> RunResult:
    """Run `exe` under ``heapemu exec`` (with $HEAPEMU_WINETEST = `function` when given)."""
    command = [sys.executable, "-m", "emu.cli", "exec", "--time-limit", str(time_limit)]
    command += ["--env", f"WINETEST_PLATFORM={PLATFORM}"]
    if function:
        command += ["--env", f"HEAPEMU_WINETEST={function}"]
    command.append(str(exe))
    start = time.monotonic()
    proc = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=time_limit + 120,
        env=_child_env(),
    )
    seconds = time.monotonic() - start
    parsed = parse_output(proc.stdout)
    err_lines = [line for line in proc.stderr.splitlines() if line.strip()]
    warnings = [line for line in err_lines if "unhandled system call" in line]
    ending = ""
    if not parsed["completed"]:
        others = [line for line in err_lines if line not in warnings]
        last_seen = LAST_SEEN.search(proc.stdout)
        unhandled = UNHANDLED.search(proc.stdout)
        if unhandled:
            ending = f"unhandled exception {unhandled['code']}"
            if last_seen:
                ending += f" after {last_seen['loc']}"
        elif others:
            ending = others[-1][:400]
        else:
            ending = f"exit status {proc.returncode}"
    return RunResult(
        file=file_key,
        arch=arch,
        function=function,
        exit_status=proc.returncode,
        seconds=round(seconds, 1),
        ending=ending,
        warnings=[w[:200] for w in warnings],
        **parsed,
    )


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return env
