"""Every example in the README runs: Python blocks in order in one namespace, each `heapemu`
command line in the shell blocks as a subprocess, the pytest example under pytest, and the YAML
excerpt is the shipped scenario's beginning. The docs cannot rot."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCK.findall(README.read_text()) if kind == lang]


def test_python_examples_run() -> None:
    namespace: dict[str, object] = {}
    code = [b for b in blocks("python") if "def test_" not in b]
    assert len(code) >= 3
    for block in code:
        exec(compile(block, str(README), "exec"), namespace)


def test_pytest_plugin_example(tmp_path: Path) -> None:
    (example,) = [b for b in blocks("python") if "def test_" in b]
    (tmp_path / "test_example.py").write_text(example)
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 passed" in p.stdout  # x86 and x64


def command_lines() -> list[str]:
    lines = []
    for block in blocks("sh"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("heapemu "):
                lines.append(line)
    return lines


@pytest.mark.parametrize("line", command_lines())
def test_shell_examples_run(line: str, tmp_path: Path) -> None:
    for program in ("alloc.exe", "threads.exe"):  # the README's programs, built as the tests'
        if program in line:
            from programbuild import build

            shutil.copy(build(program, "x64"), tmp_path / program)
    exe = Path(sys.executable).parent / "heapemu"
    p = subprocess.run(
        [str(exe), *shlex.split(line)[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_yaml_excerpt_is_the_shipped_scenario() -> None:
    (excerpt,) = blocks("yaml")
    shipped = (README.parent / "emu" / "scenarios" / "lec04_growable_heap.yaml").read_text()
    steps = shipped[shipped.index("steps:") :]
    strip = [ln.split("#")[0].rstrip() for ln in excerpt.splitlines() if ln.strip() != "..."]
    body = [ln.split("#")[0].rstrip() for ln in steps.splitlines()]
    body = [ln for ln in body if ln.strip() and not ln.strip().startswith("note:")]
    assert body[: len(strip)] == strip
