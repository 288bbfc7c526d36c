"""`heapemu` as a user runs it: a subprocess, real scenario files, both architectures."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from emu.scenario import run_scenario
from emu.scenario.render import ProgressObserver

SEED = Path(__file__).resolve().parent.parent / "emu" / "scenarios" / "lec04_growable_heap.yaml"
_SCRIPT = Path(sys.executable).with_name("heapemu")
HEAPEMU = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "emu.cli"]


def heapemu(
    *args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [*HEAPEMU, *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        cwd=cwd,
    )


def one_line_error(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("heapemu: "), p.stderr
    return lines[0]


def test_run_seed002_by_name_on_both_architectures() -> None:
    p = heapemu("run", "lec04_growable_heap", "--arch", "both")
    assert p.returncode == 0, p.stderr
    for arch in ("x86", "x64"):
        assert f"lec04_growable_heap · {arch} · builtin" in p.stdout
        assert f"✓ PASS lec04_growable_heap {arch} builtin: 12 steps" in p.stdout
    assert "after_100_allocations" in p.stdout and "reserve+commit 0x101000" in p.stdout
    assert p.stdout.count("pass") == 2  # the summary table of the two runs
    assert p.stderr == ""


def test_json_output(tmp_path: Path) -> None:
    p = heapemu("run", SEED, "--arch", "both", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["ok"] and [r["arch"] for r in data["runs"]] == ["x86", "x64"]
    for run in data["runs"]:
        assert [c["name"] for c in run["checkpoints"]] == [
            "after_100_allocations",
            "after_frees",
            "end",
        ]
        assert len(run["names"]["a"]) == 100 and run["steps"][1]["line"] == 15


def test_a_failing_run_exits_1_and_shows_the_step(tmp_path: Path) -> None:
    path = tmp_path / "fails.yaml"
    path.write_text(
        "arch: both\nsteps:\n  - create_heap:\n  - alloc: 0x10\n    as: p\n"
        "  - size: p\n    expect: 0x11\n  - validate:\n"
    )
    p = heapemu("run", path)
    assert p.returncode == 1, p.stderr
    assert p.stdout.count("✗ FAIL fails") == 2 and "step 3 (line 6) size failed" in p.stdout
    assert "expected 0x11, got 0x10" in p.stdout and "1 step not run" in p.stdout
    data = json.loads(heapemu("run", path, "--arch", "x64", "--json").stdout)
    assert data["ok"] is False
    assert data["runs"][0]["failure"] == {
        "step": 3,
        "line": 6,
        "op": "size",
        "error": "expected 0x11, got 0x10",
    }


def test_a_fault_shows_the_faulting_instruction(tmp_path: Path) -> None:
    path = tmp_path / "fault.yaml"
    path.write_text(
        "arch: x86\nsteps:\n  - create_heap:\n  - alloc: 0x10\n    as: p\n"
        "  - write: {at: 'p+0x7000000', data: '00'}\n"
    )
    p = heapemu("run", path)
    assert p.returncode == 1
    assert "Python write of free memory" in p.stdout and "pc=" in p.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("steps:\n  - create_heap:\n  - allocc: 16\n", ":3: step 2: unknown operation 'allocc'"),
        (
            "steps:\n  - create_heap:\n  - free: a[16]\n",
            ":3: step 2 (free): free: no result named 'a'",
        ),
        (
            "steps:\n  - create_heap:\n  - alloc: {size: [16]}\n",
            ":3: step 2 (alloc): size must be an integer",
        ),
        ("steps:\n  - create_heap: {\n", ":3: not valid YAML"),
    ],
)
def test_malformed_scenarios_give_one_line_errors(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    line = one_line_error(heapemu("run", path))
    assert line.startswith(f"heapemu: {path}{expected}"), line
    if "allocc" in text:
        p = heapemu("run", path, "--json")
        assert p.returncode == 2 and json.loads(p.stdout)["ok"] is False


def test_bad_input_gives_one_line_that_says_what_to_do(tmp_path: Path) -> None:
    assert "no such scenario file" in one_line_error(heapemu("run", tmp_path / "nope.yaml"))
    assert "heapemu run --list" in one_line_error(heapemu("run"))
    assert "--arch must be x86, x64 or both" in one_line_error(
        heapemu("run", SEED, "--arch", "arm")
    )
    line = one_line_error(
        heapemu("run", SEED, "--allocator", "wine", env={"HEAPEMU_WINE_DIR": str(tmp_path)})
    )
    assert "HEAPEMU_WINE_DIR" in line and "ntdll.dll" in line  # a missing DLL
    line = one_line_error(heapemu("run", SEED, "--wine-debug", "heap"))
    assert "add --allocator wine" in line
    (tmp_path / "mod.s").write_text(".globl f\nf:\n    ret\n")
    path = tmp_path / "mod.yaml"
    path.write_text(
        "arch: x64\nallocator:\n  flat: mod.s\n  exports: {RtlCreateHeap: g}\n"
        "steps:\n  - create_heap:\n"
    )
    line = one_line_error(heapemu("run", path))  # an unknown export
    assert f"{path}:4: mod has no export 'g' for RtlCreateHeap" in line


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_events_perfetto_and_convention_checks(arch: str, tmp_path: Path) -> None:
    events, trace = tmp_path / "events.jsonl", tmp_path / "trace.json"
    p = heapemu(
        "run",
        SEED,
        "--arch",
        arch,
        "--allocator",
        "builtin",
        "--trace",
        events,
        "--perfetto",
        trace,
        "--check-conventions",
    )
    assert p.returncode == 0, p.stderr
    assert "calling conventions: no violations" in p.stdout
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    names = [x["function"].split("!")[1] for x in lines]
    assert names.count("RtlAllocateHeap") == 100 + 3 and names.count("RtlFreeHeap") == 5
    assert names[0] == "RtlCreateHeap" and all(x["finished"] for x in lines)
    slices = [t for t in json.loads(trace.read_text())["traceEvents"] if t["ph"] == "X"]
    assert len(slices) == len(lines)
    report = json.loads(
        heapemu(
            "run", SEED, "--arch", arch, "--allocator", "builtin", "--check-conventions", "--json"
        ).stdout
    )
    assert report["ok"] and report["convention_violations"] == []


def test_observation_output_in_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    line = one_line_error(heapemu("run", SEED, "--trace", tmp_path / "nowhere" / "e.jsonl"))
    assert "its directory does not exist" in line


@pytest.mark.wine
def test_wine_debug_channels() -> None:
    p = heapemu("run", SEED, "--arch", "x64", "--allocator", "wine", "--wine-debug", "heap=trace")
    assert p.returncode == 0, p.stderr
    assert "Wine debug output" in p.stdout and "trace:heap:RtlAllocateHeap" in p.stdout
    assert "bad" in one_line_error(
        heapemu("run", SEED, "--allocator", "wine", "--wine-debug", "heap=bad")
    )


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_demo_prints_events_and_summary_and_draws_the_heap(arch: str, tmp_path: Path) -> None:
    p = heapemu("demo", "--arch", arch, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "RtlCreateHeap(Flags=HEAP_GROWABLE" in p.stdout and "x100" in p.stdout
    assert "Reserv" in p.stdout and " 97 " in p.stdout  # !heap -s: 97 busy blocks at the end
    picture = tmp_path / f"heapemu-demo-builtin-{arch}.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 5000


def test_list_still_works() -> None:
    p = heapemu("run", "--list")
    assert p.returncode == 0 and "lec04_growable_heap" in p.stdout


def test_progress_bar_appears_only_on_slow_runs() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    bar = ProgressObserver(console, delay=0.0)
    run_scenario(SEED, "x64", observers=[bar])
    time.sleep(0.05)
    bar.close()
    assert "lec04_growable_heap x64 builtin" in out.getvalue()
    quiet = io.StringIO()
    bar = ProgressObserver(Console(file=quiet, force_terminal=True), delay=60.0)
    run_scenario(SEED, "x64", observers=[bar])
    bar.close()
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_heap_views_on_a_checkpoint(arch: str) -> None:
    summary = heapemu("heap", "summary", SEED, "--arch", arch, "--checkpoint", "after_frees")
    assert summary.returncode == 0, summary.stderr
    assert "Reserv" in summary.stdout and "2 heap(s)" in summary.stdout
    entries = heapemu("heap", "entries", SEED, "--arch", arch, "--json")
    data = json.loads(entries.stdout)
    assert entries.returncode == 0 and data["segments"]
    busy = json.loads(heapemu("heap", "summary", SEED, "--arch", arch, "--json").stdout)
    assert busy["rows"][-1]["busy_blocks"] == 97
    dt = heapemu("heap", "dt", SEED, "--arch", arch)
    assert "magic" in dt.stdout and "'HEAP'" in dt.stdout
    addr = heapemu("heap", "address", SEED, "--arch", arch, "--filter", "Heap")
    assert "Large block" in addr.stdout and "Segment 0" in addr.stdout
    first = data["segments"][0]["entries"][0]["user_ptr"]
    entry = heapemu("heap", "entry", SEED, "--arch", arch, "--address", hex(first + 0x10))
    assert entry.returncode == 0 and "Requested size" in entry.stdout


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_win7_views_lfh_and_structures(arch: str) -> None:
    common = (SEED, "--arch", arch, "--allocator", "win7")
    summary = heapemu("heap", "summary", *common)
    assert summary.returncode == 0, summary.stderr
    head = next(ln for ln in summary.stdout.splitlines() if "Fast" in ln)
    rows = json.loads(heapemu("heap", "summary", *common, "--json").stdout)["rows"]
    ours = rows[-1]
    line = next(
        ln
        for ln in summary.stdout.splitlines()
        if ln.startswith(f"{ours['heap']:0{8 if arch == 'x86' else 16}x} 0")
    )
    assert ours["fast_heap"] == "LFH" and line.endswith("LFH")
    assert len(line) == head.index("Fast") + 4  # under its header, as !heap -s prints it
    lfh = heapemu("heap", "entries", *common, "--lfh")
    assert lfh.returncode == 0 and lfh.stdout.count("LFH data region at ") == 3
    assert "- free" in lfh.stdout and "(--lfh lists them)" not in lfh.stdout
    plain = heapemu("heap", "entries", *common)
    assert plain.stdout.count("(--lfh lists them)") == 3
    dt = json.loads(heapemu("heap", "dt", *common, "--json").stdout)
    front = next(r["value"] for r in dt["rows"] if r["name"] == "FrontEndHeap")
    lfh_heap = heapemu("heap", "dt", *common, "--struct", "_LFH_HEAP", "--address", hex(front))
    assert lfh_heap.returncode == 0, lfh_heap.stderr
    heap_line = next(ln for ln in lfh_heap.stdout.splitlines() if " Heap " in ln)
    assert heap_line.split()[0] == ("+0x024" if arch == "x86" else "+0x040")
    assert int(heap_line.split()[-1], 16) == ours["heap"]
    ud = heapemu("heap", "dt", *common, "--struct", "_HEAP_USERDATA_HEADER")  # the heap's first
    sig = next(ln for ln in ud.stdout.splitlines() if " Signature " in ln)
    assert ud.returncode == 0 and sig.split()[-1] == "0xf0e0d0c0"
    bad = one_line_error(heapemu("heap", "dt", *common, "--struct", "_NOPE"))
    assert "has no structure '_NOPE'" in bad and "_HEAP_USERDATA_HEADER" in bad


def test_segment_views_by_component() -> None:
    common = ("seed004_segment_heap", "--arch", "x86", "--allocator", "segment")
    summary = heapemu("heap", "summary", *common)
    assert summary.returncode == 0 and "Back end" in summary.stdout.splitlines()[1]
    entries = heapemu("heap", "entries", *common)
    assert "LFH subsegment at " in entries.stdout and "VS subsegment at " in entries.stdout
    dt = heapemu("heap", "dt", *common, "--struct", "_HEAP_SEG_CONTEXT", "--address", "0x130100")
    assert dt.returncode == 0 and "+0x024 Heap" in dt.stdout and "0x130000" in dt.stdout


def test_heap_view_bad_input() -> None:
    assert "no checkpoint 'nope'" in one_line_error(
        heapemu("heap", "summary", SEED, "--checkpoint", "nope")
    )
    assert "--address" in one_line_error(heapemu("heap", "entry", SEED))
    assert "not in any heap" in one_line_error(heapemu("heap", "entry", SEED, "--address", "0x10"))
    assert "--struct" in one_line_error(heapemu("heap", "summary", SEED, "--struct", "_HEAP"))
    assert "--lfh" in one_line_error(heapemu("heap", "dt", SEED, "--lfh"))


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_trace_one_call(arch: str, tmp_path: Path) -> None:
    out = tmp_path / "call3.txt"
    p = heapemu(
        "trace",
        SEED,
        "--arch",
        arch,
        "--function",
        "ntdll!RtlAllocateHeap",
        "--call",
        "3",
        "--out",
        out,
    )
    assert p.returncode == 0, p.stderr
    lines = out.read_text().splitlines()
    assert lines[0].split()[1] == "ntheap!RtlAllocateHeap" and len(lines) > 50
    assert f"traced {len(lines)} instructions" in p.stderr
    assert "not called 1000 times" in one_line_error(
        heapemu("trace", SEED, "--function", "ntdll!RtlSizeHeap", "--call", "1000")
    )


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_replay_a_text_trace(arch: str, tmp_path: Path) -> None:
    trace = tmp_path / "t.trace"
    trace.write_text("alloc 16 -> 1\nalloc 32 -> 2\nrealloc 1 100 -> 3\nfree 2\nsize 3\nfree 3\n")
    p = heapemu("replay", trace, "--arch", arch, "--json", "--count")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["ops"] == 6 and report["count_matches"]
    assert all(v["failed"] == 0 for k, v in report["results"].items() if k != "total")
    bad = tmp_path / "bad.trace"
    bad.write_text("alloc 16 -> 1\nfree 7\n")
    p = heapemu("replay", bad, "--arch", arch)
    assert p.returncode == 2 and "bad.trace:2" in p.stderr
