"""The segment heap's Python declaration (emu.heap.walkers.segment_layout) matches the C.

Every field offset and size, every structure size and every embedded structure of the
declaration becomes a static assertion compiled against asm/src/segheap.h by the flat code's
own compilers (zig cc for x86-windows-gnu and x86_64-windows-gnu, as tests/test_asm_layout.py
does for the builtin heap), so the walker and the views read what the C writes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from asm import generate
from emu.arch import get_arch
from emu.heap.walkers import segment_layout as sl

SRC = Path(__file__).resolve().parent.parent / "asm" / "src"


def assertions(arch: str) -> str:
    a = get_arch(arch)
    lines = ['#include "segheap.h"', "#define CHECK(c, m) _Static_assert(c, m)"]
    for struct in (*sl.STRUCTS.values(), sl.SEGHEAP_PARAMETERS):
        c = sl.struct_c_name(struct.name)
        lines.append(f'CHECK(sizeof({c}) == {struct.size(a)}, "sizeof {c}");')
        for f in struct.fields.values():
            msg = f"{c}.{f.name}"
            lines.append(f'CHECK(__builtin_offsetof({c}, {f.name}) == {f.offset(a)}, "{msg}");')
            lines.append(f'CHECK(sizeof((({c} *)0)->{f.name}) == {f.size(a)}, "size {msg}");')
        for n in sl.NESTED.get(struct.name, ()):
            off, size = (n.x64, n.size_x64) if a.ptr_size == 8 else (n.x86, n.size_x86)
            msg = f"{c}.{n.name}"
            lines.append(f'CHECK(__builtin_offsetof({c}, {n.name}) == {off}, "{msg}");')
            lines.append(f'CHECK(sizeof((({c} *)0)->{n.name}) == {size}, "size {msg}");')
    constants = {
        "SEGMENT_HEAP_SIGNATURE": sl.SEGMENT_HEAP_SIGNATURE,
        "SEGHEAP_PAGE_SIZE": sl.PAGE,
        "SEGHEAP_SEGMENT_SIZE": sl.SEGMENT_SIZE,
        "SEGHEAP_UNITS_PER_SEGMENT": sl.UNITS_PER_SEGMENT,
        "SEGHEAP_RANGE_SIGNATURE": sl.RANGE_SIGNATURE,
        "SEGHEAP_VS_SIGNATURE_XOR": sl.VS_SIGNATURE_XOR,
        "SEGHEAP_LARGE_ALIGN": sl.LARGE_ALIGN,
        "SEGHEAP_LARGE_GUARD": sl.LARGE_GUARD,
        "SEGHEAP_LFH_BUCKETS": sl.LFH_BUCKETS,
        "SEGHEAP_LFH_SLACK_FILL": sl.SLACK_FILL,
        "RANGE_LFH": sl.RANGE_LFH,
        "RANGE_COMMITTED": sl.RANGE_COMMITTED,
        "RANGE_ALLOCATED": sl.RANGE_ALLOCATED,
        "RANGE_FIRST": sl.RANGE_FIRST,
        "RANGE_VS": sl.RANGE_VS,
        "VS_BITS_PAGE_OFFSET": sl.VS_BITS_PAGE_OFFSET,
        "VS_BITS_UNUSED_BYTES": sl.VS_BITS_UNUSED_BYTES,
        "VS_BITS_SKIP_DURING_WALK": sl.VS_BITS_SKIP_DURING_WALK,
        "SEGHEAP_PARAMETERS_SIGNATURE": sl.PARAMETERS_SIGNATURE,
        "SEGHEAP_PARAMETERS_PEB_OFFSET": sl.PARAMETERS_PEB_OFFSET,
        "SEGHEAP_DEFAULT_LFH_MAX": sl.DEFAULT_LFH_MAX,
        "SEGHEAP_DEFAULT_VS_MAX": sl.DEFAULT_VS_MAX,
        "SEGHEAP_DEFAULT_BACKEND_MAX": sl.DEFAULT_BACKEND_MAX,
        "SEGHEAP_DEFAULT_LFH_LIVE": sl.DEFAULT_LFH_LIVE,
        "SEGHEAP_DEFAULT_LFH_TOTAL": sl.DEFAULT_LFH_TOTAL,
        "SEGHEAP_DEFAULT_SEED": sl.DEFAULT_SEED,
    }
    for name, value in constants.items():
        lines.append(f'CHECK((unsigned long long)({name}) == {value:#x}ull, "{name}");')
    xor = sl.SEGMENT_SIGNATURE_XOR & ((1 << (8 * a.ptr_size)) - 1)
    lines.append(f'CHECK(SEGHEAP_SEGMENT_SIGNATURE_XOR == ({xor:#x}ull), "segment xor");')
    p = sl.SEG_PARAMS[arch]
    lines += [
        f'CHECK(sizeof(HEAP_PAGE_SEGMENT) == {p.first_descriptor} * 0x1000, "descriptor pages");',
        f'CHECK(sizeof(HEAP_VS_CHUNK_HEADER) == {p.vs_unit}, "VS unit");',
        f"CHECK(((sizeof(HEAP_VS_SUBSEGMENT) + {p.vs_unit - 1}) & ~{p.vs_unit - 1}) =="
        f' {p.vs_first_chunk}, "first VS chunk");',
        f"CHECK(__builtin_offsetof(HEAP_LFH_SUBSEGMENT, BlockBitmap) == {p.lfh_header},"
        ' "LFH header");',
    ]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_segment_layout_matches_the_c(arch: str, tmp_path: Path) -> None:
    path = tmp_path / f"seglayout_{arch}.c"
    path.write_text(assertions(arch))
    source = str(generate.HEAPS["segheap"])
    cmd = [a for a in generate.zig_command(arch, "-c", heap="segheap") if a != source]
    out = tmp_path / f"seglayout_{arch}.o"
    proc = subprocess.run(
        [*cmd, "-I", str(SRC), str(path), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_declaration_covers_the_issue_structures() -> None:
    for name in (
        "_SEGMENT_HEAP",
        "_HEAP_SEG_CONTEXT",
        "_HEAP_PAGE_SEGMENT",
        "_HEAP_PAGE_RANGE_DESCRIPTOR",
        "_HEAP_VS_SUBSEGMENT",
        "_HEAP_VS_CHUNK_HEADER",
        "_HEAP_LFH_SUBSEGMENT",
    ):
        assert name in sl.STRUCTS
    x86, x64 = get_arch("x86"), get_arch("x64")
    heap = sl.SEGMENT_HEAP
    # the seed's x86 dump
    assert heap.size(x86) == 0x580 and heap.offset(x86, "Signature") == 0x8
    assert heap.offset(x86, "LargeAllocMetadata.Root") == 0x44
    nested = {n.name: n for n in sl.NESTED["_SEGMENT_HEAP"]}
    assert (nested["SegContexts"].x86, nested["VsContext"].x86, nested["LfhContext"].x86) == (
        0x100,
        0x200,
        0x2C0,
    )
    assert heap.size(x64) == 0x800 and heap.offset(x64, "Signature") == 0x10
