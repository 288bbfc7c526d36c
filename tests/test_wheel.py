"""heapemu installed as a user installs it (issue 15, defects 1 and 2): the wheel is built from
this checkout, installed into a virtualenv outside it, and used from a folder that has nothing
of the checkout: ``heapemu --version``, ``heapemu demo``, ``heapemu run lec04_growable_heap
--arch both``, the README's Python snippets and ``heapemu exec`` of a test program.

The virtualenv is cached (``~/.cache/heapemu/wheel-venv-*``, keyed by the dependencies and the
Python version) so only the first run downloads anything; heapemu itself is reinstalled from
the fresh wheel every time, and nothing of the checkout is on its path.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from buildlock import build_lock
from programbuild import build

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "heapemu"


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd}: exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


def _clean_env(home: Path) -> dict[str, str]:
    """The environment of a user who has never seen the checkout (Wine's DLLs stay in the real
    per-user cache, as `make wine-dlls` put them there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["XDG_CACHE_HOME"] = str(CACHE.parent)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


# One worker runs this module (pytest-xdist, --dist loadgroup): the fixture builds the wheel in
# the checkout (setuptools' build/) and reinstalls it into the shared virtualenv, which two
# workers must not do at once, nor while the other one's tests run heapemu from it.
pytestmark = pytest.mark.xdist_group("wheel")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """(the virtualenv's bin folder, the environment): the wheel built now, installed. The
    cached virtualenv is locked (fcntl.flock) while this module uses it: another test run
    (another checkout, the same cache) waits instead of reinstalling under it."""
    with build_lock(CACHE / ".wheel-venv.lock"):
        yield _install(tmp_path_factory)


def _install(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    work = tmp_path_factory.mktemp("wheel")
    env = _clean_env(work)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    key = hashlib.sha256(
        f"{sys.version}\n{project['dependencies']}\n{project['optional-dependencies']['pictures']}"
        .encode()
    ).hexdigest()[:16]  # fmt: skip
    venv = CACHE / f"wheel-venv-{key}"
    python = venv / "bin" / "python"
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(venv)], work, env)
    dist = work / "dist"
    log = _run([str(python), "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(dist), str(ROOT)],
               work, env)  # fmt: skip
    warnings = [ln for ln in log.splitlines() if "Warning" in ln or "!!" in ln]
    assert not warnings, "\n".join(warnings)  # defect 10: a build says nothing alarming
    (wheel,) = dist.glob("heapemu-*.whl")
    _run([str(python), "-m", "pip", "uninstall", "-y", "-q", "heapemu"], work, env)
    _run([str(python), "-m", "pip", "install", "-q", f"{wheel}[pictures]"], work, env)
    _run([str(python), "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(wheel)],
         work, env)  # fmt: skip
    return venv / "bin", env


def test_make_demo_installs_the_runtime_only() -> None:
    """Defect 10: `make demo` installs heapemu without extras, and the runtime dependencies
    hold neither the test tools nor matplotlib (the `pictures` extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"]).lower()
    for heavy in ("matplotlib", "ziglang", "pytest", "mypy", "ruff"):
        assert heavy not in runtime
    assert project["optional-dependencies"]["pictures"] == ["matplotlib>=3.8"]
    makefile = (ROOT / "Makefile").read_text()
    assert "demo: $(RUNTIME)" in makefile and "$(PIP) -e .\n" in makefile
    assert "build/" in (ROOT / ".gitignore").read_text().split()


def test_the_wheel_works_outside_the_checkout(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    bin_dir, env = installed
    heapemu = str(bin_dir / "heapemu")
    where = _run([str(bin_dir / "python"), "-c", "import emu; print(emu.__file__)"], tmp_path, env)
    assert str(ROOT) not in where and "site-packages" in where
    assert _run([heapemu, "--version"], tmp_path, env).strip().startswith("heapemu ")
    demo = _run([heapemu, "demo"], tmp_path, env)
    assert "0x340030" in demo and (tmp_path / "heapemu-demo-builtin-x64.png").stat().st_size
    run = _run([heapemu, "run", "lec04_growable_heap", "--arch", "both"], tmp_path, env)
    assert run.count("✓ PASS lec04_growable_heap") == 2
    assert "lec04_growable_heap" in _run([heapemu, "run", "--list"], tmp_path, env)


def test_the_readme_snippets_run_against_the_wheel(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    bin_dir, env = installed
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    code = "\n".join(b for b in blocks if "def test_" not in b)
    (tmp_path / "snippets.py").write_text(code)
    _run([str(bin_dir / "python"), "snippets.py"], tmp_path, env)


def test_exec_runs_a_program_from_the_wheel(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    bin_dir, env = installed
    exe = build("args.exe", "x86")
    p = subprocess.run(
        [str(bin_dir / "heapemu"), "exec", str(exe), "one"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert p.returncode == 42, p.stderr
    assert "argv[1]=one" in p.stdout and "to stderr" in p.stderr
