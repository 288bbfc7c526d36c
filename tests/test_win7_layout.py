"""The win7 walker's layout (emu/heap/walkers/win7_layout.py, declared once in Python) matches
asm/src/win7heap.h on both targets, and the views describe the heap with it.

Static assertions for every field offset and size, every structure size and every constant are
generated from the Python declaration and compiled against the C header by the pinned zig cc for
x86-windows-gnu and x86_64-windows-gnu (the compilers of the flat code), as
tests/test_asm_layout.py does for the builtin heap.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from asm import generate
from emu.heap.registry import allocator_kind
from emu.heap.walkers import win7_layout as lay
from emu.heap.walkers.win7 import Win7Walker

SRC = Path(__file__).resolve().parent.parent / "asm" / "src"


def assertions(arch: str) -> str:
    lines = ['#include "win7heap.h"', "#define CHECK(c, m) _Static_assert(c, m)"]
    for struct in lay.STRUCTS.values():
        c = lay.C_NAMES[struct.name]
        lines.append(f'CHECK(sizeof({c}) == {struct.size(arch)}, "sizeof {c}");')
        for f in struct.fields:
            off = f.offset(arch)
            if off is None:
                continue
            size = lay.element_size(f.kind, arch) * f.count
            msg = f"{c}.{f.name}"
            lines.append(f'CHECK(__builtin_offsetof({c}, {f.name}) == {off}, "{msg}");')
            lines.append(f'CHECK(sizeof((({c} *)0)->{f.name}) == {size}, "size {msg}");')
    for name, value in lay.CONSTANTS.items():
        lines.append(f'CHECK((unsigned long long)({name}) == {value:#x}ull, "{name}");')
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_layout_matches_the_c_header(arch: str, tmp_path: Path) -> None:
    path = tmp_path / f"win7_layout_{arch}.c"
    path.write_text(assertions(arch))
    cmd = [
        a
        for a in generate.zig_command(arch, "-c", heap="win7heap")
        if a not in (str(generate.HEAPS["win7heap"]), "-Werror")
    ]
    out = tmp_path / f"win7_layout_{arch}.o"
    proc = subprocess.run(
        [*cmd, "-I", str(SRC), str(path), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_the_walker_describes_the_heap(arch: str) -> None:
    w = allocator_kind("win7").walker
    assert w is Win7Walker and w.heap_struct_name == "_HEAP"
    assert w.granularity(arch) == (16 if arch == "x64" else 8)
    specs = {s.name: s for s in w.heap_header_specs(arch)}
    x64 = arch == "x64"
    assert specs["Encoding"].offset == (0x80 if x64 else 0x50)
    assert specs["Signature"].offset == (0xA0 if x64 else 0x64)
    assert specs["FrontEndHeap"].offset == (0x178 if x64 else 0xD4)
    assert specs["FrontEndHeapType"].offset == (0x182 if x64 else 0xDA)
    assert specs["Segment.FirstEntry"].offset == (0x40 if x64 else 0x24)
    assert w.large_list_head(arch, 0x470000) == 0x470000 + (0x118 if x64 else 0xA0)
    entry = [s.name for s in w.block_header_specs(arch, free=False)]
    assert entry[-4:] == ["SmallTagIndex", "PreviousSize", "SegmentOffset", "UnusedBytes"][-4:]
    assert ("PreviousBlockPrivateData" in entry) == x64
    free = [s.name for s in w.block_header_specs(arch, free=True)]
    assert free[-2:] == ["FreeList.Flink", "FreeList.Blink"]
    assert w.describe_field("UnusedBytes", 0x88, False, 8) == "LFH block, unused"
