"""Differential test for win7: asm/src/win7heap.c in heapemu's emulated process (x86 and x64)
against the same C compiled for the host, driven by the same operation script, with
tests/test_builtin_vs_native.py's machinery. The native run is handed the addresses heapemu's
NtAllocateVirtualMemory returned, so every result, every system call and the final heap memory
must be identical, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest
from native.nativeheap import NativeRun, run_script
from native.scripts import make_script, seed002_script
from test_builtin_vs_native import EmulatedRun

from emu.heap.allocator import Allocator
from emu.heap.replay.workload import Workload, synthetic
from emu.load.win7_heap import load_win7_heap
from emu.win.ntdefs import MEM_RESERVE


class Win7Run(EmulatedRun):
    def __init__(self, arch: str):
        super().__init__(arch)
        module = load_win7_heap(self.proc, create_process_heap=False)
        self.a = Allocator(self.proc, module)


def compare(lines: list[str], tmp_path: Path, arch: str) -> tuple[Win7Run, NativeRun]:
    lines = ["create ph 0x2 0 0", "processheap ph", *lines]
    emulated = Win7Run(arch)
    erun = emulated.execute(lines)
    answers = [
        (c.out_base, c.out_size)
        for c in erun.vm
        if c.kind == "alloc" and c.type & MEM_RESERVE and c.base == 0 and c.status == 0
    ]
    native = run_script(lines, arch=arch, heap="win7", answers=answers, dump_dir=tmp_path)
    assert erun.values == native.values
    assert erun.ops == native.ops
    assert erun.checks == native.checks and all(erun.checks)
    assert erun.walks == native.walks
    assert erun.vm == native.vm
    assert native.regions, "the native run dumped no region"
    for region in native.regions:
        assert emulated.region_image(region.base, region.size) == region.read(), (
            f"region 0x{region.base:x} differs"
        )
    return emulated, native


def workload_script(ops: int, seed: int) -> list[str]:
    """A replay workload (mixed sizes, virtual blocks, reallocs) as a driver script."""
    work = Workload(ops=ops, seed=seed, sizes="mixed", lifetime=150, realloc=0.1,
                    size_queries=0.05, validate_every=100)  # fmt: skip
    lines = ["create h 0x2 0 0"]
    for o in synthetic(work):
        k = o.kind.name
        if k == "ALLOC":
            lines.append(f"alloc p{o.id} h {o.flags} {o.size:#x}")
        elif k == "FREE":
            lines.append(f"free h {o.flags} p{o.id}")
        elif k == "REALLOC":
            lines.append(f"realloc p{o.new_id} h {o.flags} p{o.id} {o.size:#x}")
        elif k == "SIZE":
            lines.append(f"size h 0 p{o.id}")
        else:
            lines.append("validate h 0")
    return [*lines, "validate h 0", "walk h"]


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_seed002_scenario_matches_native_byte_for_byte(arch: str, tmp_path: Path) -> None:
    _emulated, native = compare(seed002_script(), tmp_path, arch)
    assert len(native.regions) >= 3  # process heap, the scenario's heap, the 1 MiB block
    assert set(native.results("validate")) == {1}


@pytest.mark.parametrize("arch", ["x86", "x64"])
@pytest.mark.parametrize("seed", [1, 2])
def test_random_script_matches_native_byte_for_byte(arch: str, seed: int, tmp_path: Path) -> None:
    script, _ = make_script(seed, 600)
    _emulated, native = compare(script.lines, tmp_path, arch)
    assert native.results("size") == script.sizes


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_workload_matches_native_byte_for_byte(arch: str, tmp_path: Path) -> None:
    _emulated, native = compare(workload_script(800, 11), tmp_path, arch)
    assert set(native.results("validate")) == {1}
