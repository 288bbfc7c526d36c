"""Differential test for the segment heap: asm/src/segheap.c emulated (x86 and x64) against the
same C compiled for the host, driven by the same operation script (tests/native/segscripts.py:
random sizes over all four components, a validate and a walk after every step). The machinery
is tests/test_builtin_vs_native.py's: the native run gets the reservations heapemu's kernel
chose, so results, RtlWalkHeap records, system calls and the final bytes of every region must be
identical."""

from __future__ import annotations

from pathlib import Path

import pytest
from native.segscripts import make_seg_script
from test_builtin_vs_native import compare


@pytest.mark.parametrize("arch", ["x86", "x64"])
@pytest.mark.parametrize("seed", [1, 2])
def test_random_segment_script_matches_native_byte_for_byte(
    arch: str, seed: int, tmp_path: Path
) -> None:
    script = make_seg_script(seed, 250)
    lines = [line for line in script.lines if line != "dump"]  # only the final state is compared
    _emulated, native = compare(lines, tmp_path, arch, heap="segment")
    assert native.results("size") == script.sizes
    assert len(native.regions) >= 3  # the process heap, the script's heap, its segment
    assert all(native.results("validate"))
