"""The suite runs on pytest-xdist's workers (pyproject's addopts: ``-n auto --dist loadgroup``):
what two workers share must stay correct when both use it at once.

- The test programs (tests/programbuild.py, mingw-w64) and test PEs (tests/pebuild.py, zig) are
  built once into a shared cache: builders that want the same output at the same time wait for
  the first (tests/buildlock.py), instead of each compiling it.
- ``heapemu run --gdb 0`` (tests/test_gdb.py) binds a port the system picks.
- The plugin's fixtures and failure reports under xdist: tests/test_pytest_plugin.py.
"""

from __future__ import annotations

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
