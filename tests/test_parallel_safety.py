"""The suite runs on pytest-xdist's workers (pyproject's addopts: ``-n auto --dist loadgroup``):
what two workers share must stay correct when both use it at once.

- The test programs (tests/programbuild.py, mingw-w64) and test PEs (tests/pebuild.py, zig) are
  built once into a shared cache: builders that want the same output at the same time wait for
  the first (tests/buildlock.py), instead of each compiling it.
- ``heapemu run --gdb 0`` (tests/test_gdb.py) binds a port the system picks.
- The plugin's fixtures and failure reports under xdist: tests/test_pytest_plugin.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pebuild
import programbuild
import pytest

BUILDERS: dict[str, tuple[Callable[[str, str], Path], str]] = {
    "mingw": (programbuild.build, "args.exe"),
    "zig": (pebuild.build, "tlsdll.dll"),
}
WORKERS = 4
pytest_plugins = ["pytester"]


@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_concurrent_builds_of_one_program_compile_it_once(
    arch: str, builder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four builders start together on an empty cache (threads: each opens the lock file
    itself, so flock excludes them as it excludes processes); one compiles, the others wait
    and return its output."""
    build, name = BUILDERS[builder]
    monkeypatch.setenv("HEAPEMU_BUILD_DIR", str(tmp_path))
    compiles: list[list[str]] = []
    real_run = subprocess.run

    def run(command: list[str], *args: Any, **kwargs: Any) -> Any:
        if "-o" in command:  # a compile and link (not `--version`, nor zig's dlltool)
            compiles.append(command)
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)
    start = threading.Barrier(WORKERS)
    paths: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait(timeout=60)
            paths.append(build(name, arch))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert len(paths) == WORKERS and len(set(paths)) == 1 and paths[0].is_file()
    assert paths[0].is_relative_to(tmp_path)
    assert len(compiles) == 1, compiles
    # nothing half-built is left beside the output: only it and its lock file
    entries = sorted(p.name for p in paths[0].parent.parent.iterdir())
    assert entries == sorted([paths[0].parent.name, f".{paths[0].parent.name}.lock"]), entries


ALONE_SUITE = """
import time
from pathlib import Path

import pytest

LOG = Path(__file__).with_name("intervals.txt")


def record(name, seconds):
    start = time.monotonic()
    time.sleep(seconds)
    with LOG.open("a") as f:
        f.write(f"{name} {start} {time.monotonic()}\\n")


@pytest.mark.alone
def test_alone():
    record("alone", 1.0)


@pytest.mark.parametrize("i", range(8))
def test_other(i):
    record(f"other{i}", 0.2)
"""


def test_an_alone_test_shares_the_workers_with_no_other_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers, one test marked ``alone`` (first, so both workers start at once) and eight
    short ones: no short test's run overlaps the ``alone`` test's, and both workers ran
    tests."""
    tests = Path(__file__).resolve().parent
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # xdist only, by -p
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])
    )
    pytester.makeconftest("from alone import alone_under_xdist  # noqa: F401\n")
    pytester.makeini("[pytest]\nmarkers =\n    alone: runs alone\n")
    pytester.makepyfile(test_alone_suite=ALONE_SUITE)
    r = pytester.runpytest_subprocess("-p", "xdist", "-n", "2", "-p", "no:cacheprovider", "-v")
    r.assert_outcomes(passed=9)
    assert {"gw0", "gw1"} <= set(re.findall(r"\[(gw\d)\] ", r.stdout.str()))
    intervals = {
        name: (float(a), float(b))
        for name, a, b in (line.split() for line in (pytester.path / "intervals.txt").open())
    }
    start, end = intervals.pop("alone")
    assert len(intervals) == 8
    overlapping = [n for n, (a, b) in intervals.items() if a < end and b > start]
    assert not overlapping, (start, end, intervals)
