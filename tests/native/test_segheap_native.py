"""The Windows 10 segment heap (asm/src/segheap.c) run natively through tests/native/driver.c.

Layout facts used here come from segheap.h (and its static assertions): x86 _SEGMENT_HEAP is
0x580 bytes with Signature at +0x8 (shared/seeds/004), x64 0x800 with Signature at +0x10.
Components are told apart by the page range descriptor of the block's segment, read from the
driver's region dump.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from .nativeheap import NativeRun, WalkEntry, run_script
from .segscripts import BACKEND_MAX, LFH_MAX, VS_MAX, make_seg_script

ARCHS = ("x64", "x86")
NO_MORE_ENTRIES = 0x8000001A
MEM_COMMIT, MEM_RESERVE, MEM_DECOMMIT, MEM_RELEASE = 0x1000, 0x2000, 0x4000, 0x8000
SEGMENT = 0x100000
BUSY = 0x4011  # RTL_HEAP_ENTRY_BUSY | BLOCK | COMMITTED
UNCOMMITTED = 0x1000
REGION = 0x2
DEFAULT_SEED = 0x2545F491
RANGE_LFH, RANGE_COMMITTED, RANGE_ALLOCATED, RANGE_FIRST, RANGE_VS = 1, 2, 4, 8, 0x20


@dataclass(frozen=True)
class Layout:
    ptr: int
    heap_size: int  # sizeof(_SEGMENT_HEAP)
    heap_reserve: int  # the heap's reservation (heap + 128 LFH buckets, page-rounded)
    signature: int  # _SEGMENT_HEAP.Signature
    bucket: int  # sizeof(_HEAP_LFH_BUCKET)
    desc: int  # sizeof(_HEAP_PAGE_RANGE_DESCRIPTOR)
    desc_flags: int
    desc_unit: int
    first_desc: int  # FirstDescriptorIndex
    seg_signature: int  # _HEAP_PAGE_SEGMENT.Signature
    vs_hdr: int  # busy VS chunk header; also the VS unit
    vs_free_hdr: int
    vs_first: int  # first chunk's offset in a VS subsegment
    vs_sub_size: int  # _HEAP_VS_SUBSEGMENT.Size

    @property
    def mask(self) -> int:
        return (1 << (8 * self.ptr)) - 1

    def vs_chunk(self, request: int) -> int:
        unit = self.vs_hdr
        need = (request + self.vs_hdr + unit - 1) // unit * unit
        return max(need, self.vs_free_hdr)


LAYOUTS = {
    "x86": Layout(4, 0x580, 0x3000, 0x8, 0x38, 0x10, 0xC, 0xF, 1, 0x8, 8, 0x10, 0x18, 0x14),
    "x64": Layout(8, 0x800, 0x4000, 0x10, 0x68, 0x20, 0x18, 0x1F, 2, 0x10, 16, 0x20, 0x30, 0x20),
}


def seg_run(lines: list[str], arch: str, dump_dir: Path | None = None) -> NativeRun:
    return run_script(lines, arch=arch, heap="segment", dump_dir=dump_dir)


def read(run: NativeRun, addr: int, size: int, dump: int | None = None) -> bytes:
    for region in run.regions:
        if dump is not None and region.file and not region.file.name.startswith(f"dump{dump}_"):
            continue
        if region.base <= addr and addr + size <= region.base + region.size:
            off = addr - region.base
            return region.read()[off : off + size]
    raise AssertionError(f"{addr:#x} is in no dumped region")


def component(run: NativeRun, arch: str, p: int, dump: int | None = None) -> str:
    """What the segment's descriptors say about p: "lfh", "vs", "backend" or "large"."""
    lay = LAYOUTS[arch]
    seg = p & ~(SEGMENT - 1)
    if not any(r.base == seg and r.size == SEGMENT for r in run.regions):
        return "large"
    unit = (p - seg) >> 12
    desc = read(run, seg + unit * lay.desc, lay.desc, dump)
    flags, unit_size = desc[lay.desc_flags], desc[lay.desc_unit]
    if not flags & RANGE_FIRST:
        unit -= unit_size
        desc = read(run, seg + unit * lay.desc, lay.desc, dump)
        flags = desc[lay.desc_flags]
    assert flags & RANGE_ALLOCATED, f"{p:#x} is in a free range"
    if flags & RANGE_LFH:
        return "lfh"
    if flags & RANGE_VS:
        return "vs"
    return "backend"


def busy(walk: list[WalkEntry]) -> dict[int, int]:
    return {e.data: e.size for e in walk if e.busy}


def vm_lines(run: NativeRun, start: str, end: str | None = None) -> list[str]:
    """The vm lines of the output between the line `start` and the line `end` (or the end)."""
    i = run.lines.index(start)
    j = run.lines.index(end) if end else len(run.lines)
    return [line for line in run.lines[i + 1 : j] if line.startswith("vm ")]


# ---------------------------------------------------------------------------- creation


@pytest.mark.parametrize("arch", ARCHS)
def test_create_commits_only_the_heap_structure(arch: str) -> None:
    lay = LAYOUTS[arch]
    run = seg_run(["create h 0x2 0 0", f"peek h+{lay.signature} 4", "heaps"], arch)
    h = run.value("h")
    assert [(c.kind, c.base, c.size, c.type) for c in run.vm] == [
        ("alloc", 0, lay.heap_reserve, MEM_RESERVE),
        ("alloc", h, lay.heap_size, MEM_COMMIT),  # sizeof(_SEGMENT_HEAP), not a page more
    ]
    assert run.vm[1].out_size == 0x1000
    assert int.from_bytes(run.peeks[0], "little") == 0xDDEEDDEE
    assert run.heaps == [[h]]


@pytest.mark.parametrize("arch", ARCHS)
def test_lfh_context_extension_committed_as_buckets_activate(arch: str) -> None:
    """Buckets are carved after the _SEGMENT_HEAP; the next page of the reservation is
    committed by the activation whose bucket crosses into it, and no earlier."""
    lay = LAYOUTS[arch]
    crossing = next(k for k in itertools.count(1) if lay.heap_size + k * lay.bucket > 0x1000)
    lines = ["create h 0x2 0 0", "echo bucket 0"]
    for k in range(1, crossing + 2):
        lines += [f"alloc b{k}_{i} h 0 {16 * k:#x}" for i in range(17)]
        lines.append(f"echo bucket {k}")
    run = seg_run(lines, arch)
    h = run.value("h")
    inside = [
        line
        for line in run.lines
        if line.startswith("vm alloc ") and h <= int(line.split()[2], 16) < h + lay.heap_reserve
    ]
    assert inside == [
        f"vm alloc {h:#x} {lay.heap_size:#x} 0x1000 0x4 -> 0x0 {h:#x} 0x1000",
        f"vm alloc {h + 0x1000:#x} 0x1000 0x1000 0x4 -> 0x0 {h + 0x1000:#x} 0x1000",
    ]
    where = run.lines.index(inside[1])
    assert run.lines.index(f"echo bucket {crossing - 1}") < where
    assert where < run.lines.index(f"echo bucket {crossing}")


# ---------------------------------------------------------------------------- routing


@pytest.mark.parametrize("arch", ARCHS)
def test_routing_boundaries(arch: str, tmp_path: Path) -> None:
    sizes = {
        "z": 0,
        "a": LFH_MAX,
        "b": LFH_MAX + 1,
        "c": VS_MAX,
        "d": VS_MAX + 1,
        "e": BACKEND_MAX,
        "f": BACKEND_MAX + 1,
    }
    lines = ["create h 0x2 0 0"]
    lines += [f"alloc {n} h 0 {s:#x}" for n, s in sizes.items()]
    lines += [f"size h 0 {n}" for n in sizes]
    # LFH_MAX: the 16 more of its size class; the last is the class's 17th: LFH-served
    lines += [f"alloc l{i} h 0 {LFH_MAX:#x}" for i in range(1, 17)]
    # LFH_MAX + 1 is never LFH-served
    lines += [f"alloc m{i} h 0 {LFH_MAX + 1:#x}" for i in range(1, 21)]
    lines += ["validate h 0", "walk h"]
    run = seg_run(lines, arch, dump_dir=tmp_path)
    assert run.results("size") == list(sizes.values())
    kinds = {n: component(run, arch, run.value(n)) for n in sizes}
    assert kinds == {
        "z": "vs",
        "a": "vs",
        "b": "vs",
        "c": "vs",
        "d": "backend",
        "e": "backend",
        "f": "large",
    }
    assert [component(run, arch, run.value(f"l{i}")) for i in range(1, 17)] == ["vs"] * 15 + ["lfh"]
    assert {component(run, arch, run.value(f"m{i}")) for i in range(1, 21)} == {"vs"}
    # back-end blocks are whole pages without a header; large blocks 64 KiB-aligned
    assert run.value("d") % 0x1000 == 0 and run.value("e") % 0x1000 == 0
    assert run.value("f") % 0x10000 == 0
    assert (0, 0x80000 + 0x1000) in [  # the request rounded to pages + a guard page
        (c.base, c.size) for c in run.vm if c.kind == "alloc" and c.type == MEM_RESERVE
    ]
    assert run.results("validate") == [1]
    assert run.walk_status == [NO_MORE_ENTRIES]


# ---------------------------------------------------------------------------- LFH


def lfh_script(count: int, size: int, params: str | None = None) -> list[str]:
    lines = [f"params {params}"] if params else []
    lines.append("create h 0x2 0 0")
    lines += [f"alloc x{i} h 0 {size:#x}" for i in range(1, count + 1)]
    return [*lines, "validate h 0"]


@pytest.mark.parametrize("arch", ARCHS)
def test_lfh_activation_on_the_17th_live_block(arch: str, tmp_path: Path) -> None:
    run = seg_run(lfh_script(20, 0x100), arch, dump_dir=tmp_path)
    kinds = [component(run, arch, run.value(f"x{i}")) for i in range(1, 21)]
    assert kinds == ["vs"] * 16 + ["lfh"] * 4
    assert run.results("validate") == [1]
    # the live count is settable: 5
    (tmp_path / "5").mkdir()
    run = seg_run(lfh_script(8, 0x100, "lfhlive 5"), arch, dump_dir=tmp_path / "5")
    assert [component(run, arch, run.value(f"x{i}")) for i in range(1, 9)] == ["vs"] * 4 + [
        "lfh"
    ] * 4


@pytest.mark.parametrize("arch", ARCHS)
def test_lfh_live_count_drops_with_frees(arch: str, tmp_path: Path) -> None:
    """Allocating and freeing keeps the live count low: no activation before 2040 requests."""
    lines = ["create h 0x2 0 0"]
    for i in range(1, 101):
        lines += [f"alloc x{i} h 0 0x100", f"free h 0 x{i}"]
    lines += ["alloc y h 0 0x100"]
    run = seg_run(lines, arch, dump_dir=tmp_path)
    assert component(run, arch, run.value("y")) == "vs"
    assert len({run.value(f"x{i}") for i in range(1, 101)} | {run.value("y")}) == 1


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("total", [2040, 50])
def test_lfh_activation_after_total_requests(arch: str, total: int, tmp_path: Path) -> None:
    """With the live count never above 1, the request count activates the bucket: the
    total-th request of the size class (default 2040, settable) is the first LFH block."""
    lines = [] if total == 2040 else [f"params lfhtotal {total}"]
    lines.append("create h 0x2 0 0")
    for i in range(1, total):
        lines += [f"alloc x{i} h 0 0x40", f"free h 0 x{i}"]
    lines += ["alloc y h 0 0x40", "validate h 0"]
    run = seg_run(lines, arch, dump_dir=tmp_path)
    vs_addresses = {run.value(f"x{i}") for i in range(1, total)}
    assert len(vs_addresses) == 1  # every one of them x1's VS chunk
    assert component(run, arch, run.value("y")) == "lfh"
    assert run.value("y") not in vs_addresses
    assert run.results("validate") == [1]


def slot_order(arch: str, params: str | None) -> list[int]:
    lines = lfh_script(16 + 40, 0x20, params)
    run = seg_run(lines, arch)
    assert run.results("validate") == [1]
    return [run.value(f"x{i}") for i in range(17, 16 + 41)]


@pytest.mark.parametrize("arch", ARCHS)
def test_lfh_slot_order_random_and_seeded(arch: str) -> None:
    default = slot_order(arch, None)
    assert slot_order(arch, None) == default  # deterministic by default
    assert slot_order(arch, f"seed {DEFAULT_SEED:#x}") == default
    seeded = slot_order(arch, "seed 12345")
    assert slot_order(arch, "seed 12345") == seeded  # repeats for the same seed
    assert seeded != default  # differs for another
    for order in (default, seeded):
        # the first 32 LFH blocks fill the first 64-bit bitmap word in a random order
        base = min(order[:32])
        slots = [(a - base) // 0x20 for a in order[:32]]
        assert sorted(slots) == list(range(32))
        assert slots != sorted(slots)
        # then the next word
        assert all(a >= base + 32 * 0x20 for a in order[32:])


# ---------------------------------------------------------------------------- VS


def walk_after(walk: list[WalkEntry], data: int) -> WalkEntry:
    """The walk entry that follows the one at data."""
    i = [e.data for e in walk].index(data)
    return walk[i + 1]


@pytest.mark.parametrize("arch", ARCHS)
def test_vs_best_fit_and_split(arch: str) -> None:
    lay = LAYOUTS[arch]
    lines = ["create h 0x2 0 0", "alloc x h 0 0x100"]
    lines += ["alloc a h 0 0x300", "alloc s1 h 0 0x40", "alloc b h 0 0x100", "alloc s2 h 0 0x40"]
    lines += ["alloc c h 0 0x200", "alloc s3 h 0 0x40"]
    lines += ["free h 0 a", "free h 0 b", "free h 0 c", "walk h"]
    lines += ["alloc r h 0 0x100", "alloc t h 0 0x180", "alloc u h 0 0x2F0", "validate h 0"]
    lines += ["walk h"]
    run = seg_run(lines, arch)
    v = run.value
    # the three free chunks are separate (busy chunks between them)
    free = [e for e in run.walks[0] if not e.busy and not e.is_region]
    assert [e.data for e in free[:3]] == [v("a"), v("b"), v("c")]
    assert [e.size for e in free[:3]] == [
        lay.vs_chunk(n) - lay.vs_hdr for n in (0x300, 0x100, 0x200)
    ]
    # best fit: r takes b's chunk (exact), t takes c's (smallest that fits), not a's (first)
    assert v("r") == v("b") and v("t") == v("c")
    walk = run.walks[1]
    # t's chunk was split: the rest (0x80 bytes) is a free chunk right after t
    rest = walk_after(walk, v("t"))
    assert not rest.busy
    assert rest.data == v("t") - lay.vs_hdr + lay.vs_chunk(0x180) + lay.vs_hdr
    assert rest.size == lay.vs_chunk(0x200) - lay.vs_chunk(0x180) - lay.vs_hdr
    # u fits a's chunk with less than 0x20 bytes to spare: no split, u keeps the whole chunk
    assert v("u") == v("a")
    entry = next(e for e in walk if e.data == v("u"))
    assert entry.size == 0x2F0 and entry.overhead == lay.vs_chunk(0x300) - 0x2F0
    assert lay.vs_chunk(0x300) - lay.vs_chunk(0x2F0) < 0x20
    assert walk_after(walk, v("u")).data == v("s1")  # busy neighbour: nothing in between
    assert run.results("validate") == [1]


@pytest.mark.parametrize("arch", ARCHS)
def test_vs_coalescing(arch: str) -> None:
    lay = LAYOUTS[arch]
    lines = ["create h 0x2 0 0", "alloc x h 0 0x100", "alloc a h 0 0x100", "alloc b h 0 0x200"]
    lines += ["alloc c h 0 0x300", "alloc y h 0 0x100"]
    lines += ["free h 0 a", "free h 0 c", "validate h 0", "walk h"]
    lines += ["free h 0 b", "validate h 0", "walk h"]
    run = seg_run(lines, arch)
    v = run.value
    first = {e.data: e for e in run.walks[0]}
    assert not first[v("a")].busy and first[v("b")].busy and not first[v("c")].busy
    merged = {e.data: e for e in run.walks[1]}
    assert v("b") not in merged and v("c") not in merged
    total = sum(lay.vs_chunk(n) for n in (0x100, 0x200, 0x300))
    assert not merged[v("a")].busy and merged[v("a")].size == total - lay.vs_hdr
    assert walk_after(run.walks[1], v("a")).data == v("y")
    assert run.results("validate") == [1, 1]


# ---------------------------------------------------------------------------- back end


@pytest.mark.parametrize("arch", ARCHS)
def test_backend_best_fit_and_coalescing(arch: str) -> None:
    lines = ["params freecommit 0x10000000", "create h 0x2 0 0"]  # keep freed pages committed
    sizes = {"p": 0x23000, "s1": 0x21000, "q": 0x21000, "s2": 0x21000, "r": 0x22000, "s3": 0x21000}
    lines += [f"alloc {n} h 0 {s:#x}" for n, s in sizes.items()]
    lines += ["free h 0 p", "free h 0 q", "free h 0 r", "validate h 0", "walk h"]
    lines += ["alloc x h 0 0x21500", "alloc y h 0 0x21000", "validate h 0"]
    lines += ["free h 0 x", "free h 0 y", "free h 0 s1", "free h 0 s2", "validate h 0", "walk h"]
    run = seg_run(lines, arch)
    v = run.value
    # contiguous, headerless, page-aligned
    addrs = [v(n) for n in sizes]
    assert addrs == list(itertools.accumulate([addrs[0], *list(sizes.values())[:-1]]))
    free = {e.data: e.size for e in run.walks[0] if not e.busy and not e.is_region}
    assert free[v("p")] == 0x23000 and free[v("q")] == 0x21000 and free[v("r")] == 0x22000
    # best fit: 0x22 pages -> r (exact), not p (first); 0x21 pages -> q
    assert v("x") == v("r") and v("y") == v("q")
    # p, s1, q, s2, r coalesced into one committed free range; s3 still busy after it
    walk = run.walks[1]
    entry = next(e for e in walk if e.data == v("p"))
    assert not entry.busy and entry.flags == 0
    assert entry.size == sum(list(sizes.values())[:5])
    assert walk_after(walk, v("p")).data == v("s3")
    assert run.results("validate") == [1, 1, 1]
    assert not [c for c in run.vm if c.kind == "free" and c.type == MEM_DECOMMIT]


@pytest.mark.parametrize("arch", ARCHS)
def test_backend_prefers_committed_ranges(arch: str) -> None:
    """Two free ranges of one size: the committed one is taken, even at a higher address."""
    lines = ["params freecommit 0x21000", "create h 0x2 0 0"]
    lines += ["alloc a h 0 0x21000", "alloc s1 h 0 0x21000", "alloc b h 0 0x21000"]
    lines += ["alloc s2 h 0 0x21000", "free h 0 b", "echo b freed", "free h 0 a", "echo a freed"]
    lines += ["alloc c h 0 0x21000", "validate h 0"]
    run = seg_run(lines, arch)
    v = run.value
    assert vm_lines(run, "free -> 0x1", "echo b freed") == []  # within the limit: kept
    assert vm_lines(run, "echo b freed", "echo a freed") == [
        f"vm free {v('a'):#x} 0x21000 0x4000 -> 0x0"  # past it: decommitted
    ]
    assert v("c") == v("b")
    assert vm_lines(run, "echo a freed") == []  # nothing to commit
    assert run.results("validate") == [1]


@pytest.mark.parametrize("arch", ARCHS)
def test_decommit_of_freed_pages(arch: str) -> None:
    lines = ["create h 0x2 0 0", "alloc v h 0 0x100", "alloc b h 0 0x40000", "echo allocated"]
    lines += ["free h 0 v", "echo v freed", "free h 0 b", "echo b freed", "validate h 0", "walk h"]
    run = seg_run(lines, arch)
    v, b = run.value("v"), run.value("b")
    # the emptied VS subsegment (16 pages) goes back to the back end and stays committed
    assert vm_lines(run, "echo allocated", "echo v freed") == []
    # 64 more pages would pass the 16-page limit of free committed pages: decommitted
    assert vm_lines(run, "echo v freed", "echo b freed") == [
        f"vm free {b:#x} 0x40000 0x4000 -> 0x0"
    ]
    walk = run.walks[0]
    seg = v & ~(SEGMENT - 1)
    region = walk[0]
    assert region.is_region and region.data == seg and region.size == SEGMENT
    lay = LAYOUTS[arch]
    assert region.committed == (lay.first_desc + 16) * 0x1000
    assert [(e.data, e.size, e.flags) for e in walk[1:]] == [
        (seg + lay.first_desc * 0x1000, 0x10000, 0),
        (
            seg + lay.first_desc * 0x1000 + 0x10000,
            SEGMENT - (lay.first_desc + 16) * 0x1000,
            UNCOMMITTED,
        ),
    ]
    assert run.results("validate") == [1]


@pytest.mark.parametrize("arch", ARCHS)
def test_empty_segment_released_unless_it_is_the_only_one(arch: str) -> None:
    lines = ["create h 0x2 0 0"]
    lines += [f"alloc b{i} h 0 0x7F000" for i in range(4)]  # 4 x 127 pages: two segments
    lines += ["walk h"] + [f"free h 0 b{i}" for i in range(4)] + ["validate h 0", "walk h"]
    run = seg_run(lines, arch)
    segs = sorted({run.value(f"b{i}") & ~(SEGMENT - 1) for i in range(4)})
    assert len(segs) == 2
    assert [e.data for e in run.walks[0] if e.is_region] == segs
    # b0, b1 fill the first segment: freeing them empties it while the second exists;
    # the second, emptied last, is the only one left and stays
    released = [c.base for c in run.vm if c.kind == "free" and c.type == MEM_RELEASE]
    assert segs[0] in released and segs[1] not in released
    assert [e.data for e in run.walks[1] if e.is_region] == [segs[1]]
    assert run.results("validate") == [1]


# ---------------------------------------------------------------------------- large blocks


@pytest.mark.parametrize("arch", ARCHS)
def test_large_blocks(arch: str, tmp_path: Path) -> None:
    sizes = [BACKEND_MAX + 1, 0x100000, 0x234567]
    lines = ["create h 0x2 0 0"]
    lines += [f"alloc g{i} h 0 {n:#x}" for i, n in enumerate(sizes)]
    lines += [f"size h 0 g{i}" for i in range(len(sizes))]
    lines += ["validate h 0", "walk h", "dump", "free h 0 g1", "validate h 0", "walk h"]
    run = seg_run(lines, arch, dump_dir=tmp_path)
    for i, n in enumerate(sizes):
        g, pages = run.value(f"g{i}"), (n + 0xFFF) & ~0xFFF
        assert g % 0x10000 == 0
        reserve = [
            c for c in run.vm if c.kind == "alloc" and c.out_base == g and c.type == MEM_RESERVE
        ]
        commit = [c for c in run.vm if c.kind == "alloc" and c.base == g and c.type == MEM_COMMIT]
        assert [(c.base, c.size) for c in reserve] == [(0, pages + 0x1000)]  # + guard page
        assert [c.size for c in commit] == [pages]
        region = next(r for r in run.regions if r.base == g)
        assert region.committed == ((g, g + pages),)  # the guard page stays uncommitted
    assert run.results("size") == sizes
    blocks = [e for e in run.walks[0] if e.busy]
    assert [(e.data, e.size) for e in blocks] == sorted(
        (run.value(f"g{i}"), n) for i, n in enumerate(sizes)
    )
    g1 = run.value("g1")
    assert f"vm free {g1:#x} 0x0 0x8000 -> 0x0" in run.lines
    assert g1 not in busy(run.walks[1])
    assert run.results("validate") == [1, 1]


# ---------------------------------------------------------------------------- random sequences


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("seed", "params"), [(1, None), (2, None), (3, "lfhlive 3 seed 7")])
def test_random_operations(arch: str, seed: int, params: str | None, tmp_path: Path) -> None:
    """Random allocations, frees, reallocations and size queries of every component, with
    RtlValidateHeap and RtlWalkHeap after every step: the walk reports exactly the live
    blocks with their requested sizes, nothing overlaps, data survives."""
    script = make_seg_script(seed, 1200, params)
    run = seg_run(script.lines, arch, dump_dir=tmp_path)
    assert run.exceptions == []
    assert run.checks and all(run.checks), "data did not survive"
    assert run.results("free") == [1] * len(run.results("free"))
    assert run.results("validate") == [1] * len(script.walks)
    assert run.results("size") == script.sizes
    addresses = {n: run.value(n) for n in run.values if n.startswith("p")}
    assert all(a % (2 * LAYOUTS[arch].ptr) == 0 for a in addresses.values())
    assert len(run.walks) == len(script.walks)
    for walk, status, expected in zip(run.walks, run.walk_status, script.walks, strict=True):
        assert status == NO_MORE_ENTRIES
        blocks = busy(walk)
        assert blocks == {addresses[n]: size for n, size in expected.items()}
        spans = sorted((e.data, e.data + max(e.size, 1)) for e in walk if not e.is_region)
        assert all(a_end <= b for (_, a_end), (b, _) in itertools.pairwise(spans))
        regions = [e for e in walk if e.is_region]
        assert [e.region for e in regions] == list(range(len(regions)))
    # every component served blocks (seen at the dump)
    kinds = {component(run, arch, addresses[n], dump=1) for n in script.dumped}
    assert kinds == {"lfh", "vs", "backend", "large"}
    # all freed: no busy entries; what is left of the segments is free ranges and each
    # active bucket's last (empty) LFH subsegment
    assert not busy(run.walks[-1])
    assert len([e for e in run.walks[-1] if e.is_region]) >= 1


# ---------------------------------------------------------------------------- corruption


@pytest.mark.parametrize("arch", ARCHS)
def test_overflow_into_vs_header_detected(arch: str) -> None:
    lay = LAYOUTS[arch]
    lines = ["create h 0x2 0 0", "alloc a h 0 0x100", "alloc b h 0 0x100"]
    lines += ["validate h 0", "validate h 0 b", "fill a 1 0x100", "validate h 0"]
    lines += [f"fill a 1 {0x100 + lay.ptr:#x}", "validate h 0", "validate h 0 b", "free h 0 b"]
    run = seg_run(lines, arch)
    assert lay.vs_chunk(0x100) == 0x100 + lay.vs_hdr  # a ends where b's header begins
    assert run.value("b") == run.value("a") + 0x100 + lay.vs_hdr
    # intact, still intact after filling a exactly, then b's encoded header overwritten
    assert run.results("validate") == [1, 1, 1, 0, 0]
    assert run.results("free") == [0]  # the corrupt block is refused


@pytest.mark.parametrize("arch", ARCHS)
def test_overflow_into_neighbouring_lfh_slot_detected(arch: str) -> None:
    lines = lfh_script(17, 0x20)  # x17 is the bucket's first LFH block: its neighbours free
    lines += ["validate h 0 x17", "fill x17 1 0x20", "validate h 0"]
    lines += ["fill x17 1 0x28", "validate h 0", "validate h 0 x17"]
    run = seg_run(lines, arch)
    # the slot after x17 is free: its first word (slot ^ LfhKey) no longer matches
    assert run.results("validate") == [1, 1, 1, 0, 1]


@pytest.mark.parametrize("arch", ARCHS)
def test_overflow_into_lfh_slack_detected(arch: str) -> None:
    lines = lfh_script(17, 0x18)  # 0x20-byte blocks: 8 bytes of slack, then the trailer
    lines += ["size h 0 x17", "validate h 0 x17", "fill x17 1 0x19", "validate h 0"]
    lines += ["validate h 0 x17", "size h 0 x17"]
    run = seg_run(lines, arch)
    assert run.results("validate") == [1, 1, 0, 0]
    assert run.results("size") == [0x18, 0x18]


# ---------------------------------------------------------------------------- realloc


@pytest.mark.parametrize("arch", ARCHS)
def test_realloc_in_place_and_moves(arch: str) -> None:
    lines = lfh_script(17, 0xF8)  # x17: LFH block of 0x100 bytes
    lines += ["fill x17 5 0xF8", "realloc l1 h 0 x17 0x100", "check l1 5 0xF8"]  # same bucket
    lines += ["realloc l2 h 0 l1 0x101", "check l2 5 0xF8"]  # another bucket: moves
    # VS: grow into the free successor, shrink (splitting off the rest)
    lines += ["alloc a h 0 0x500", "alloc b h 0 0x500", "fill a 9 0x500", "free h 0 b"]
    lines += ["realloc a2 h 0 a 0x900", "check a2 9 0x500", "realloc a3 h 0 a2 0x80", "walk h"]
    lines += ["realloc a4 h 0x10 a3 0x30000"]  # in place only: impossible (another component)
    lines += ["realloc a5 h 0 a3 0x30000", "check a5 9 0x80"]  # moves to the back end
    # back end: same page count in place, more pages moves; large likewise
    lines += ["realloc a6 h 0 a5 0x2F800", "realloc a7 h 0 a6 0x30000", "realloc a8 h 0 a7 0x30001"]
    lines += ["alloc g h 0 0x100000", "realloc g2 h 0 g 0xFF800", "realloc g3 h 0 g2 0x100800"]
    lines += ["size h 0 a8", "size h 0 g3", "validate h 0"]
    run = seg_run(lines, arch)
    v = run.value
    assert v("l1") == v("x17") and v("l2") != v("l1")
    assert v("a2") == v("a") and v("a3") == v("a")
    after = walk_after(run.walks[0], v("a3"))
    assert not after.busy  # the rest of the shrunk chunk is free
    assert v("a4") == 0
    assert v("a5") != v("a3") and v("a5") % 0x1000 == 0
    assert v("a6") == v("a5") and v("a7") == v("a5") and v("a8") != v("a5")
    assert v("g2") == v("g") and v("g3") != v("g")
    assert run.results("size") == [0x30001, 0x100800]
    assert all(run.checks) and len(run.checks) == 4
    assert run.results("validate") == [1, 1]


# ---------------------------------------------------------------------------- keys, signatures


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("key", [0x1122334455667788, 0])
def test_encoded_headers_and_signatures(arch: str, key: int) -> None:
    lay = LAYOUTS[arch]
    key &= lay.mask
    hdr = lay.vs_hdr
    lines = [f"params heapkey {key:#x}", "create h 0x2 0 0", "alloc a h 0 0x100"]
    lines += ["alloc b h 0 0x100", f"peek b-{hdr} {lay.ptr}"]
    run = seg_run(lines, arch)
    h, a, b = run.value("h"), run.value("a"), run.value("b")
    sub = a - hdr - lay.vs_first
    seg = sub & ~(SEGMENT - 1)
    lines += [f"peek {sub + lay.vs_sub_size:#x} 4", f"peek {seg + lay.seg_signature:#x} {lay.ptr}"]
    run = seg_run(lines, arch)
    raw = int.from_bytes(run.peeks[0], "little")
    bits = raw ^ (b - hdr) ^ key  # HeaderBits ^ chunk address ^ HeapKey
    units = lay.vs_chunk(0x100) // lay.vs_hdr
    if arch == "x64":  # MemoryCost 0-15, UnsafeSize 16-31, UnsafePrevSize 32-47, Allocated 48
        assert bits == units << 16 | units << 32 | 1 << 48
    else:  # MemoryCost bit 0, UnsafeSize 1-15, UnsafePrevSize 16-30, Allocated bit 31
        assert bits == units << 1 | units << 16 | 1 << 31
    size, signature = (
        int.from_bytes(run.peeks[1][:2], "little"),
        int.from_bytes(run.peeks[1][2:], "little"),
    )
    assert size == 0x10000 // lay.vs_hdr  # a 64 KiB subsegment, in VS units
    assert signature & 0x7FFF == (size ^ 0xABED) & 0x7FFF
    expected = ((seg >> 20) ^ key ^ h ^ 0xA2E64EADA2E64EAD) & lay.mask
    assert int.from_bytes(run.peeks[2], "little") == expected


@pytest.mark.parametrize("arch", ARCHS)
def test_settings_inherited_from_the_process_heap(arch: str) -> None:
    lay = LAYOUTS[arch]
    lines = ["params heapkey 0x5a5a seed 99 lfhlive 4", "create p 0x2 0 0", "processheap p"]
    lines += ["params off", "create h 0x2 0 0"]
    lines += [f"alloc x{i} h 0 0x100" for i in range(1, 5)]
    lines += ["destroy p", "heaps"]
    run = seg_run(lines, arch)
    h = run.value("h")
    # x4 is LFH-served (live count 4): it is not in the VS subsegment of x1..x3
    vs = [run.value(f"x{i}") for i in range(1, 4)]
    assert vs[1] - vs[0] == vs[2] - vs[1] == lay.vs_chunk(0x100)
    assert abs(run.value("x4") - vs[2]) > 0x1000
    assert run.results("destroy") == [run.value("p")]  # the process heap is not destroyed
    assert run.heaps == [[run.value("p"), h]]


# ---------------------------------------------------------------------------- API edges


@pytest.mark.parametrize("arch", ARCHS)
def test_bad_pointers_and_exceptions(arch: str) -> None:
    huge = 0xFFFFF000 if arch == "x86" else 0xFFFFFFFFFFFF0000
    lines = ["create h 0x2 0 0", "alloc a h 0 0x100", "alloc l h 0 0x100000"]
    lines += ["free h 0 a+8", "free h 0 h", "free h 0 l+0x1000", "free h 0 a", "free h 0 a"]
    lines += ["size h 0 a", "free h 4 a", "alloc z h 0 " + hex(huge), "alloc z2 h 4 " + hex(huge)]
    lines += ["validate h 0", "free h 0 l", "free h 0 l", "validate h 0"]
    run = seg_run(lines, arch)
    assert run.results("free") == [0, 0, 0, 1, 0, 1, 0]
    assert run.results("size") == [(1 << (8 * LAYOUTS[arch].ptr)) - 1]
    assert run.exceptions == [0xC0000005, 0xC0000017]
    assert run.value("z") == 0
    assert run.results("validate") == [1, 1]


@pytest.mark.parametrize("arch", ARCHS)
def test_destroy_releases_everything(arch: str) -> None:
    lines = ["create h 0x2 0 0"]
    lines += [f"alloc s{i} h 0 0x40" for i in range(20)]  # LFH too
    lines += ["alloc v h 0 0x5000", "alloc b h 0 0x50000", "alloc g h 0 0x200000", "heaps"]
    lines += ["lock h", "unlock h", "unlock h", "destroy h", "heaps"]
    run = seg_run(lines, arch)
    reserved = {c.out_base for c in run.vm if c.kind == "alloc" and c.type & MEM_RESERVE}
    released = {c.base for c in run.vm if c.kind == "free" and c.type == MEM_RELEASE}
    assert reserved == released
    assert run.results("destroy") == [0]
    assert run.heaps == [[run.value("h")], []]
    assert run.results("lock") == [1] and run.results("unlock") == [1, 0]


@pytest.mark.parametrize("arch", ARCHS)
def test_corrupt_metadata_reported_not_crashing(arch: str) -> None:
    """One byte of segment metadata (descriptors, a VS subsegment's header and chunks, an LFH
    subsegment's header and bitmap) overwritten at random: RtlValidateHeap and RtlWalkHeap
    return (the driver would die on a fault), and validation fails for a good share."""
    lay = LAYOUTS[arch]
    lines = ["create h 0x2 0 0"]
    lines += [f"alloc s{i} h 0 0x40" for i in range(40)]
    lines += [f"alloc v{i} h 0 {0x100 + 0x30 * i:#x}" for i in range(10)]
    lines += ["free h 0 v3", "free h 0 v6", "free h 0 s20", "alloc b h 0 0x30000"]
    lines += ["alloc g h 0 0x90000", "validate h 0"]
    run = seg_run(lines, arch)
    assert run.results("validate") == [1]
    seg = run.value("s0") & ~(SEGMENT - 1)
    targets = [
        (seg, lay.first_desc * 0x1000),  # descriptors, segment header
        (run.value("v0") & ~0xFFF, 0x800),  # VS subsegment header and chunks
        (run.value("s39") & ~0xFFF, 0x200),  # LFH subsegment header and bitmap
    ]
    rng = random.Random(2024)
    failed = 0
    for _ in range(60):
        start, span = rng.choice(targets)
        corrupt = f"fill {start + rng.randrange(span):#x} {rng.randrange(256)} 1"
        result = seg_run([*lines, corrupt, "validate h 0", "walk h"], arch)
        failed += result.results("validate")[-1] == 0
    assert failed >= 5
