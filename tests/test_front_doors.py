"""Honest front doors (issue 15's defects 2-11 and asks, issue 20's D8, D9, D14): every way in
says what it does, refuses bad input in one line with exit 2, and never changes what it shows.
Each test names the defect it pins down; each fails on the main branch before issue 15."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest
from programbuild import build
from rich.console import Console
from rich.table import Table

from emu import Process
from emu.heap.allocator import Allocator
from emu.heap.registry import ALLOCATOR_NAMES
from emu.scenario import ScenarioError, find_scenario, load_scenario, run_scenario
from emu.views import build_entries, build_entry, render_entry

ROOT = Path(__file__).resolve().parent.parent
_SCRIPT = Path(sys.executable).with_name("heapemu")
HEAPEMU = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "emu.cli"]


def heapemu(
    *args: str | Path, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run(
        [*HEAPEMU, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def one_line_error(p: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("heapemu: "), p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------- 2: scenarios as data
def test_shipped_scenarios_are_package_data_found_by_name() -> None:
    shipped = Path(str(resources.files("emu").joinpath("scenarios")))
    assert find_scenario("lec04_growable_heap") == shipped / "lec04_growable_heap.yaml"
    assert run_scenario("lec04_growable_heap", "x86", "builtin").ok  # a name is enough
    p = heapemu("run", "--list")
    assert p.returncode == 0 and "lec04_growable_heap" in p.stdout
    one_line_error(heapemu("run", "lec04_growable_heep"), "did you mean lec04_growable_heap?")


# ---------------------------------------------------------------------- 4, 5: exec
@pytest.fixture(scope="module")
def crossfree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    out = {}
    for arch in ("x86", "x64"):
        folder = tmp_path_factory.mktemp(f"crossfree-{arch}")
        exe = shutil.copy(build("crossfree.exe", arch), folder / "crossfree.exe")
        out[arch] = (Path(exe), build("runtime.dll", arch))
    return out


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_exec_names_a_missing_dll(arch: str, crossfree: dict[str, tuple[Path, Path]]) -> None:
    exe, _ = crossfree[arch]
    p = heapemu("exec", exe)
    assert p.returncode == 127, (p.returncode, p.stderr)
    assert "runtime.dll not found" in p.stderr and "--map 'C:\\heapemu\\runtime.dll=" in p.stderr
    report = json.loads(heapemu("exec", "--json", exe).stdout)
    assert report["ok"] is False and report["outcome"] == "dll_not_found"
    assert report["missing_dlls"] == ["runtime.dll"] and report["exit_code"] == 0xC0000135


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_exec_finds_dlls_beside_the_program_and_reports_cross_heap_frees(
    arch: str, crossfree: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    exe, dll = crossfree[arch]
    beside = tmp_path / "crossfree.exe"
    shutil.copy(exe, beside)
    shutil.copy(dll, tmp_path / "runtime.dll")
    p = heapemu("exec", "--json", "--cross-heap", beside)
    report = json.loads(p.stdout)
    assert report["ok"] and report["outcome"] == "exited", report["problem"]
    (free,) = report["cross_heap_frees"]
    assert free["owner"] != free["freed_through"] and "crossfree!main" in str(free["free_stack"])
    bases = {m["name"].lower(): m["base"] for m in report["modules"]}
    assert {"ntdll.dll", "kernel32.dll", "msvcrt.dll", "runtime.dll", "crossfree.exe"} <= set(bases)
    assert all(isinstance(b, int) and b for b in bases.values())
    text = heapemu("exec", "--cross-heap", beside)
    assert "cross-heap free: block 0x" in text.stderr and "freed through heap" in text.stderr


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_exec_tells_a_crash_from_exit_code_1(arch: str) -> None:
    exe = build("crash.exe", arch)
    assert heapemu("exec", exe).returncode == 1  # the program's own exit code
    p = heapemu("exec", exe, "crash")
    # the null write is an exception nothing handles: the program ends with its code
    assert p.returncode == 125 and "crash!main" in p.stderr
    assert "unhandled exception (exit code 0xc0000005)" in p.stderr
    report = json.loads(heapemu("exec", "--json", exe, "crash").stdout)
    assert report["outcome"] == "crashed" and report["ok"] is False


def test_exec_warns_about_its_options_after_the_program() -> None:
    p = heapemu("exec", build("args.exe", "x64"), "--time-limit", "2")
    assert p.returncode == 43 and "argv[1]=--time-limit" in p.stdout
    assert "--time-limit after the program goes to the program" in p.stderr


def test_exec_stacks_show_where_each_allocation_came_from() -> None:
    report = json.loads(
        heapemu("exec", "--json", "--stacks", "6", build("alloc.exe", "x64")).stdout
    )
    stacks = [[f["symbol"] for f in ev["stack"]] for ev in report["events"]]
    assert any(any("alloc!" in s for s in st) and "malloc" in str(st) for st in stacks), stacks[-3:]


# ---------------------------------------------------------------------- 6: the pytest plugin
def test_record_accepts_module_qualified_argc_and_refuses_unknown_keys() -> None:
    proc = Process("x86")
    proc.load_flat("two: mov eax, [esp + 4]\n add eax, [esp + 8]\n ret 8\n", "m")
    with proc.record(["m!two"], check_conventions=True, argc={"m!two": 2}) as rec:
        assert proc.call("m!two", 3, 4) == 7
    assert rec.all[0].args and len(rec.all[0].args) == 2 and not rec.violations
    with pytest.raises(ValueError, match="'m!three' is not a watched function"):
        proc.record(["m!two"], argc={"m!three": 2})


# ---------------------------------------------------------------------- 7: one verdict
@pytest.mark.parametrize("kind", ALLOCATOR_NAMES)
@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_an_overflow_fails_the_checkpoint_on_every_allocator(arch: str, kind: str) -> None:
    overflow = {
        "steps": [
            {"create_heap": None},
            {"alloc": {"size": 0x20, "count": 3}, "as": "a"},
            {"write": {"at": "a[0]", "fill": 0x41, "size": 0x40}},  # over a[1]'s header
            {"checkpoint": "after"},
        ]
    }
    result = run_scenario(overflow, arch, kind)
    assert not result.ok and result.failure is not None
    assert result.failure.step.op == "checkpoint" and "is corrupt" in result.failure.error
    assert result.checkpoints[0].heaps[0].corruptions


# ---------------------------------------------------------------------- 8: narrow or piped
def test_a_wide_table_becomes_one_line_per_row() -> None:
    from emu.scenario.render import emit, table_lines

    table = Table(title="events")
    for col in ("#", "call", "result"):
        table.add_column(col)
    for i in range(10):
        table.add_row(
            str(i), "RtlAllocateHeap(HeapHandle=0x230000, Flags=0, Size=0x100)" * 2, "0x1"
        )
    console = Console(width=80, record=True, force_terminal=True)
    emit(console, table)
    lines = console.export_text().splitlines()
    assert lines == table_lines(table) and len(lines) == 11


def test_piped_demo_keeps_every_row_on_one_line(tmp_path: Path) -> None:
    p = heapemu("demo", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.splitlines()) < 30, p.stdout
    assert "RtlAllocateHeap(HeapHandle=0x230000, Flags=0, Size=0x100) x100" in p.stdout
    big = [ln for ln in p.stdout.splitlines() if "Size=0x100000)" in ln]
    assert len(big) == 1 and "0x340030" in big[0]  # seed 002's big block, as a plain run has it


# ---------------------------------------------------------------------- 9: CLI contract
def test_version_completion_and_json_everywhere(tmp_path: Path) -> None:
    from emu import __version__

    assert heapemu("--version").stdout.strip() == f"heapemu {__version__}"
    script = heapemu("--completion", "bash").stdout
    assert "complete -o filenames -F _heapemu heapemu" in script and "lec04_growable_heap" in script
    if shutil.which("bash"):
        assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    demo = json.loads(heapemu("demo", "--json", "--no-picture", cwd=tmp_path).stdout)
    assert demo["ok"] and demo["events"][108]["ret"] == 0x340030 and demo["summary"]
    out = tmp_path / "trace.txt"
    trace = heapemu("trace", "lec04_growable_heap", "--function", "ntdll!RtlAllocateHeap",
                    "--call", "3", "--out", out, "--json")  # fmt: skip
    assert trace.returncode == 0, trace.stderr
    assert json.loads(trace.stdout)["instructions"] > 0 and out.read_text()
    bad = heapemu("exec", "--json", tmp_path / "missing.exe")
    assert bad.returncode == 2 and json.loads(bad.stdout)["ok"] is False


def test_replay_takes_its_options_and_counting_is_opt_in() -> None:
    p = heapemu("replay", "--synthetic", "300", "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["ops"] == 300 and report["instructions"] is None
    assert "--synthetic" in heapemu("replay", "--help").stdout


# ---------------------------------------------------------------------- 11: shadowed packages
def test_a_shadowing_loader_py_is_named(tmp_path: Path) -> None:
    (tmp_path / "loader.py").write_text("x = 1\n")
    p = subprocess.run(
        [sys.executable, "-c", "import emu"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert p.returncode != 0
    assert f"'loader' is shadowed by {tmp_path / 'loader.py'}" in p.stderr
    readme = (ROOT / "README.md").read_text()
    assert "import packages" in readme and "`emu`, `loader` and `asm`" in readme


# ---------------------------------------------------------------------- asks: stacks, filters
@pytest.mark.parametrize("kind", ALLOCATOR_NAMES)
@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_heap_entry_shows_the_allocating_stack(arch: str, kind: str) -> None:
    from emu.views import with_allocation

    proc = Process(arch)
    a = Allocator(proc, proc.load_allocator(kind))
    h = a.create_heap()
    with proc.record(stacks=4) as rec:
        blocks = [a.alloc(h, 0x40) for _ in range(3)]
    view = with_allocation(build_entry(proc, blocks[1] + 8, allocator=a), rec.events)
    assert view.allocation is not None and f"= 0x{blocks[1]:x}" in view.allocation
    assert view.stack and "RtlAllocateHeap" in view.stack[0]
    assert "Allocation stack" in render_entry(view)


def test_heap_entries_filters_by_size_and_state() -> None:
    from emu.views import filter_entries

    proc = Process("x64")
    a = Allocator(proc, proc.load_builtin_heap())
    h = a.create_heap()
    blocks = [a.alloc(h, size) for size in (0x10, 0x100, 0x100, 0x200)]
    a.free(h, blocks[1])
    view = build_entries(proc, h, allocator=a)
    busy_100 = filter_entries(view, size=(0x100, 0x100), state="busy").entries
    assert [e.user_ptr for e in busy_100] == [blocks[2]]
    ranged = filter_entries(view, size=(0x100, 0x200), state="busy").entries
    assert [e.user_ptr for e in ranged] == blocks[2:]
    p = heapemu("heap", "entries", "lec04_growable_heap", "--size", "0x100", "--state", "free")
    assert p.returncode == 0 and "Filter:               size 0x100, state free" in p.stdout


# ---------------------------------------------------------------------- issue 20: D8
def test_out_of_range_integers_are_refused_before_anything_runs(tmp_path: Path) -> None:
    path = tmp_path / "wide.yaml"
    path.write_text("arch: x86\nsteps:\n  - create_heap:\n  - alloc: 0x100000010\n")
    one_line_error(heapemu("run", path), f"{path}:4: step 2 (alloc): size 0x100000010", "x86")
    assert run_scenario(path, "x64", "builtin").ok  # fits x64
    huge = tmp_path / "huge.yaml"
    huge.write_text(
        "steps:\n  - create_heap:\n  - alloc: 16\n    as: p\n"
        f"  - realloc: {{block: p, size: {2**64}}}\n"
    )
    with pytest.raises(ScenarioError, match=r":5: step 3 \(realloc\): size 0x10000000000000000"):
        load_scenario(huge)
    proc = Process("x86")
    a = Allocator(proc, proc.load_builtin_heap())
    h = a.create_heap()
    with pytest.raises(ValueError, match="does not fit a 32-bit register"):
        a.alloc(h, 2**32 + 16)


# ---------------------------------------------------------------------- issue 20: D9
BOMBS = {
    "aliases": "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "description: *i\nsteps: []\n",
    "self-alias": "steps: &s [*s]\n",
    "nesting": "steps: " + "[" * 50_000 + "]" * 50_000 + "\n",
    "count": "steps:\n  - create_heap:\n  - alloc: {size: 16, count: 1000000000000}\n    as: a\n"
    "  - free: a\n",
    "digits": "steps:\n  - create_heap:\n  - alloc: " + "9" * 5000 + "\n",
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_scenario_bombs_are_refused_in_seconds(bomb: str, tmp_path: Path) -> None:
    path = tmp_path / f"{bomb}.yaml"
    path.write_text(BOMBS[bomb])
    start = time.perf_counter()
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert time.perf_counter() - start < 5
    (problem,) = info.value.problems
    assert problem.file == str(path) and (problem.line or bomb == "count"), problem


def test_huge_and_special_files_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.truncate(50 << 20)
    start = time.perf_counter()
    one_line_error(heapemu("run", big), "larger than 1 MiB")
    one_line_error(heapemu("run", "/dev/zero"), "/dev/zero: not a regular file")
    assert time.perf_counter() - start < 30


# ---------------------------------------------------------------------- issue 20: D14
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["exec", "--map", "C:\\x", "p.exe"], "--map 'C:\\x': give WIN=HOST"),
        (["exec", "--env", "FOO", "p.exe"], "--env 'FOO': give NAME=VALUE"),
        (["exec", "/dev/zero"], "/dev/zero: not a regular file"),
        (["exec", "--time-limit", "-1", "p.exe"], "seconds must be a finite number >= 0"),
        (["exec", "--time-limit", "nan", "p.exe"], "seconds must be a finite number >= 0"),
        (["run", "/dev/zero"], "/dev/zero: not a regular file"),
    ],
)
def test_exec_and_run_refuse_bad_arguments_in_one_line(args: list[str], needle: str) -> None:
    one_line_error(heapemu(*args), needle)


# ---------------------------------------------------------------------- 10: pictures optional
def test_the_demo_says_how_to_get_pictures(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from emu.cli import run as cli_run

    monkeypatch.setattr(cli_run, "pictures_available", lambda: False)
    console = Console(record=True, width=300)
    assert cli_run.demo(console=console, out_dir=tmp_path) == 0
    text = console.export_text()
    assert "no heap map: pip install 'heapemu[pictures]' (matplotlib)" in text
    assert "0x340030" in text and not list(tmp_path.iterdir())
