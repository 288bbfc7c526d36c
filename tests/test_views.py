"""Heap views (emu.views) after seed 002's story, on every arch x allocator.

The views are checked against what the allocator returned (addresses, requested sizes), against
the memory model (regions) and against the layout declarations (offsets), and against each
other (summary numbers vs the entries they summarise).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import pytest
from conftest import CHAIN_KINDS, make_heaps, needs_block_chain

import asm
from emu import Process
from emu.arch import get_arch
from emu.heap.allocator import Allocator
from emu.heap.registry import ALLOCATOR_NAMES, ALLOCATORS, allocator_kind, walk_heap
from emu.heap.walkers import win7_layout
from emu.heap.walkers.wine_layout import WINE_BLOCK, WINE_HEAP, WINE_SUBHEAP
from emu.views import (
    AddressView,
    DtView,
    EntriesView,
    EntryView,
    NotInHeapError,
    SummaryView,
    build_address,
    build_dt,
    build_entries,
    build_entry,
    build_summary,
    list_heaps,
    render_address,
    render_dt,
    render_entries,
    render_entry,
    render_summary,
)
from emu.views.layout import block_header_specs, block_specs, granularity
from emu.views.story import Story, seed002_story
from emu.win.ntdefs import PAGE_SIZE

COMBOS = [(a, k) for k in ALLOCATOR_NAMES for a in ("x86", "x64")]


@dataclass
class Env:
    proc: Process
    alloc: Allocator
    kind: str
    story: Story

    @property
    def arch(self) -> str:
        return self.proc.arch.name


@pytest.fixture(scope="module", params=COMBOS, ids=lambda p: f"{p[0]}-{p[1]}")
def env(request: pytest.FixtureRequest) -> Env:
    arch, kind = request.param
    h = make_heaps(arch, kind)
    return Env(h.proc, h.allocator, kind, seed002_story(h.allocator))


# ---------------------------------------------------------------------------- summary


def test_summary_lists_every_heap(env: Env) -> None:
    view = build_summary(env.proc, allocator=env.alloc)
    heaps = [r.heap for r in view.rows]
    assert heaps == list_heaps(env.proc, env.alloc)
    assert env.story.heap in heaps and len(heaps) >= 2  # the process heap and ours
    assert [r.index for r in view.rows] == list(range(len(heaps)))
    assert (view.kind, view.arch) == (env.kind, env.arch)


def test_summary_numbers_add_up(env: Env) -> None:
    view = build_summary(env.proc, allocator=env.alloc)
    for row in view.rows:
        assert row.committed + row.uncommitted == row.reserved
        entries = build_entries(env.proc, row.heap, allocator=env.alloc)
        free = [e for e in entries.entries if e.state == "free"]
        assert row.free == sum(e.committed for e in free) == entries.total_free
        assert row.busy_blocks == sum(1 for e in entries.entries if e.state != "free")
        assert row.virtual_blocks == len(entries.large_blocks)
        assert row.uncommitted_ranges == sum(len(s.uncommitted) for s in entries.segments)
        assert row.corruptions == 0
    ours = next(r for r in view.rows if r.heap == env.story.heap)
    # the heap's own busy blocks (win7: LFH data, sentinels, lookups) count too
    walker = allocator_kind(env.kind).walker
    own = sum(1 for b in walk_heap(env.proc, env.story.heap).busy_blocks() if walker.internal(b))
    assert ours.busy_blocks == 97 + own  # 100 - a[18], a[48], a[78] (a[17], a[18] reused)
    assert ours.virtual_blocks == 1 and ours.virtual >= 0x100000
    if env.kind in CHAIN_KINDS:  # every free block on one free list; the story fragments them
        assert ours.free_list_length == len(walk_heap(env.proc, env.story.heap).free_blocks())
        assert 0 < ours.fragmentation < 100


def test_summary_text(env: Env) -> None:
    view = build_summary(env.proc, allocator=env.alloc)
    text = render_summary(view)
    width = 16 if env.arch == "x64" else 8
    ours = next(r for r in view.rows if r.heap == env.story.heap)
    line = next(ln for ln in text.splitlines() if ln.startswith(f"{env.story.heap:0{width}x}"))
    cells = line.split()
    assert cells[1] == f"{ours.flags:08x}"
    if ours.components:  # the segment heap's columns: Reserv, Commit, each component, Large
        held = [(c.size if c.subsegments else c.busy_bytes) // 1024 for c in ours.components]
        assert [int(c) for c in cells[2:]] == [
            ours.reserved // 1024,
            ours.committed // 1024,
            *held,
            ours.virtual // 1024,
            ours.virtual_blocks,
            ours.busy_blocks,
            ours.corruptions,
        ]
        return
    assert [int(c) for c in cells[2:6]] == [
        ours.reserved // 1024,
        ours.committed // 1024,
        ours.virtual // 1024,
        ours.free // 1024,
    ]
    assert (cells[12] if len(cells) > 12 else "") == ours.fast_heap


# ---------------------------------------------------------------------------- entries


def test_entries_are_the_allocators_blocks(env: Env) -> None:
    view = build_entries(env.proc, env.story.heap, allocator=env.alloc)
    small = {p: n for p, n in env.story.live.items() if p != env.story.big}
    busy = {e.user_ptr: e.requested for e in view.entries if e.state == "busy" and not e.internal}
    assert busy == small
    free = {e.user_ptr for e in view.entries if e.state == "free"}
    assert not set(env.story.freed) & set(busy)
    if env.kind in CHAIN_KINDS:  # freed blocks stay blocks, on the free lists
        assert set(env.story.freed) <= free
    assert [(lb.user_ptr, lb.requested) for lb in view.large_blocks] == [(env.story.big, 0x100000)]
    assert view.index == list_heaps(env.proc, env.alloc).index(env.story.heap)
    assert view.granularity == (16 if env.arch == "x64" else 8)
    if env.kind in CHAIN_KINDS:
        listed = {b for fl in view.free_lists for b in fl.blocks}
        assert listed == {e.address for e in view.entries if e.state == "free"}


def test_entries_tile_each_segment(env: Env) -> None:
    needs_block_chain(env.kind)
    view = build_entries(env.proc, env.story.heap, allocator=env.alloc)
    for seg in view.segments:
        assert seg.complete and seg.entries[0].address == seg.first_block
        assert seg.entries[0].prev_size == 0
        for a, b in itertools.pairwise(seg.entries):
            assert a.address + a.size == b.address and b.prev_size == a.size
        assert [e.flags[1] for e in seg.entries] == ["0"] * (len(seg.entries) - 1) + ["1"]
        for e in seg.entries:
            assert e.flags == f"1{e.flags[1]}{0 if e.state == 'free' else 1}"
        if seg.uncommitted:
            assert seg.uncommitted[-1].address + seg.uncommitted[-1].size == seg.end


def test_entries_text(env: Env) -> None:
    view = build_entries(env.proc, env.story.heap, allocator=env.alloc)
    text = render_entries(view)
    w = 16 if env.arch == "x64" else 8
    block = env.story.blocks[2]
    entry = next(e for e in view.entries if e.user_ptr == block)
    assert (
        f"{entry.address:0{w}x}: {entry.prev_size:05x} . {entry.size:05x} [101] - busy (100)"
        in (text)
    )
    assert "- uncommitted bytes." in text and "Virtual blocks" in text
    assert f"Granularity:          {view.granularity} bytes" in text
    trimmed = render_entries(view, max_entries=10)
    assert "entries not shown" in trimmed and len(trimmed.splitlines()) < len(text.splitlines())


def test_entries_flag_a_corrupt_header() -> None:
    h = make_heaps("x86", "builtin")
    heap = h.allocator.create_heap()
    ptrs = [h.allocator.alloc(heap, 0x40) for _ in range(8)]
    h.proc.write(ptrs[3] - 2, b"\x00\x00")  # the magic of block 4's header
    view = build_entries(h.proc, heap, allocator=h.allocator)
    bad = next(e for e in view.entries if e.user_ptr == ptrs[3])
    assert bad.flags[0] == "0"
    assert any(c.address == bad.address for c in view.corruptions)
    assert "Corruptions (" in render_entries(view)


# ---------------------------------------------------------------------------- entry


def test_entry_finds_the_block_for_interior_addresses(env: Env) -> None:
    view = build_entries(env.proc, env.story.heap, allocator=env.alloc)
    for e in view.entries[:3] + view.entries[40:43] + view.entries[-2:]:
        for probe in (e.address, e.address + 3, e.user_ptr, e.address + e.size - 1):
            got = build_entry(env.proc, probe, allocator=env.alloc)
            assert (got.address, got.size, got.state) == (e.address, e.size, e.state)
            assert got.heap == env.story.heap and not got.large
            assert got.requested == e.requested
            assert got.where.startswith("header" if probe < e.user_ptr else ("data", "slack"))


def test_entry_decodes_the_header(env: Env) -> None:
    ptr = env.story.blocks[10]
    got = build_entry(env.proc, ptr + 0x20, allocator=env.alloc)
    assert got.user_ptr == ptr and got.requested == 0x100 and got.state == "busy"
    assert got.unused == got.size - 0x100
    specs = block_header_specs(env.kind, env.arch, free=False)
    assert [(f.offset, f.name) for f in got.fields] == [(s.offset, s.name) for s in specs]
    raw = env.proc.read(got.address, max(s.offset + s.size for s in specs))
    assert got.header == raw.hex(" ")
    text = render_entry(got)
    assert f"Requested size     : {0x100:#x} bytes" in text and "Header fields:" in text
    if env.kind == "win7":  # an encoded header: UnusedBytes is plain, the size word is not
        unused = next(f for f in got.fields if f.name == "UnusedBytes")
        assert unused.value == got.unused and unused.meaning == "block size - requested size"
        assert got.flag_names == ["BUSY"]
        return
    if env.kind not in CHAIN_KINDS:  # (segment heap: tests/test_segment_heap.py)
        return
    magic = next(f for f in got.fields if f.name == "magic")
    assert magic.value == 0x5355 and magic.meaning == "'US'"
    if env.kind == "wine":
        assert WINE_BLOCK.offset(get_arch(env.arch), "magic") == magic.offset
        size = next(f for f in got.fields if f.name == "size")
        assert size.value * granularity("wine", env.arch) == got.size
    text = render_entry(got)
    assert f"Requested size     : {0x100:#x} bytes" in text and "Header fields:" in text


def test_entry_free_and_large_blocks(env: Env) -> None:
    needs_block_chain(env.kind)
    freed = env.story.freed[-1]
    got = build_entry(env.proc, freed + 0x10, allocator=env.alloc)
    assert got.state == "free" and got.free_list is not None
    assert "FREE" in got.flag_names or got.flag_names == ["LFH (free)"]  # !heap -i's words
    block = walk_heap(env.proc, env.story.heap).block_at(freed + 0x10)
    assert block is not None  # (win7: an LFH block, whose link is a u16 offset)
    links = {s.name for s in block_specs(env.kind, env.arch, block)}
    links -= {s.name for s in block_header_specs(env.kind, env.arch, free=False)}
    assert links and links <= {f.name for f in got.fields}  # a free block's list links
    big = build_entry(env.proc, env.story.big + 0x12345, allocator=env.alloc)
    assert big.large and big.user_ptr == env.story.big and big.requested == 0x100000
    assert big.where == "data +0x12345"
    with pytest.raises(NotInHeapError):
        build_entry(env.proc, env.proc.teb, allocator=env.alloc)
    with pytest.raises(NotInHeapError, match="not in a block"):
        build_entry(env.proc, env.story.heap + 4, allocator=env.alloc)  # the heap header


# ---------------------------------------------------------------------------- address


def test_address_covers_every_region_once(env: Env) -> None:
    view = build_address(env.proc, allocator=env.alloc)
    regions = env.proc.memory.regions()
    assert sorted({r.region for r in view.rows}) == [r.base for r in regions]
    for region in regions:
        rows = [r for r in view.rows if r.region == region.base]
        assert rows[0].base == region.base and rows[-1].end == region.end
        for a, b in itertools.pairwise(rows):
            assert a.end == b.base
        for r in rows:
            assert r.size == r.end - r.base and r.size % PAGE_SIZE == 0
            assert (r.protect == "") == (r.state == "MEM_RESERVE")
    everything = build_address(env.proc, allocator=env.alloc, include_free=True)
    assert everything.rows[0].base == env.proc.arch.user_min
    for a, b in itertools.pairwise(everything.rows):
        assert a.end == b.base


def test_address_labels(env: Env) -> None:
    view = build_address(env.proc, allocator=env.alloc)
    by_region = {r.region: r for r in view.rows}
    report = walk_heap(env.proc, env.story.heap)
    index = list_heaps(env.proc, env.alloc).index(env.story.heap)
    for seg in report.segments:
        row = by_region[seg.base]
        assert row.usage == "Heap" and f"ID: {index};" in row.detail and "Segment" in row.detail
    for lb in report.large_blocks:
        assert by_region[lb.region].usage == "Heap" and "Large block" in by_region[lb.region].detail
    usages = {(r.usage, r.detail) for r in view.rows}
    assert ("TEB", "thread 0") in usages and ("PEB", "process") in usages
    assert ("Stack", "thread 0") in usages and ("Other", "KUSER_SHARED_DATA") in usages
    kind = ALLOCATORS[env.kind]  # a downloaded DLL is a PE image, our C heaps are flat code
    image = kind.module_name if kind.downloads else f"{kind.module_name} (flat code)"
    assert ("Image", image) in usages
    teb = next(r for r in view.rows if r.usage == "TEB")
    assert teb.base <= env.proc.teb < teb.end


def test_address_heap_filter(env: Env) -> None:
    view = build_address(env.proc, allocator=env.alloc, usage="heap")
    assert view.filter == ["Heap"] and view.rows
    assert all(r.usage == "Heap" for r in view.rows)
    expected = set()
    for heap in list_heaps(env.proc, env.alloc):
        rep = walk_heap(env.proc, heap)
        expected |= {s.base for s in rep.segments} | {lb.region for lb in rep.large_blocks}
    assert {r.region for r in view.rows} == expected
    text = render_address(view)
    assert "MEM_RESERVE" in text and "Type: Large block" in text
    with pytest.raises(ValueError, match="unknown usage"):
        build_address(env.proc, allocator=env.alloc, usage="Heapz")


# ---------------------------------------------------------------------------- dt


def test_dt_rows_match_the_layout(env: Env) -> None:
    needs_block_chain(env.kind)
    view = build_dt(env.proc, env.story.heap)
    rows = {r.name: r for r in view.rows}
    a = get_arch(env.arch)
    report = walk_heap(env.proc, env.story.heap)
    if env.kind == "win7":  # Windows' names and offsets (checked against the C in
        for spec in win7_layout.HEAP.specs(env.arch):  # tests/test_win7_layout.py)
            assert rows[spec.name].offset == spec.offset and rows[spec.name].size == spec.size
        assert rows["Segment.SegmentSignature"].value == 0xFFEEFFEE
        assert rows["Flags"].value == report.flags and "HEAP_GROWABLE" in rows["Flags"].note
        assert rows["Signature"].value == 0xEEFFEEFF
        assert view.struct == "_HEAP"
        offsets = [r.offset for r in view.rows]
        assert offsets == sorted(offsets)
        assert f"+{rows['Signature'].offset:#05x} Signature" in render_dt(view)
        return
    if env.kind == "builtin":
        fields = asm.layout(env.arch).heap.fields
        for name, f in fields.items():
            assert rows[name].offset == f.offset and rows[name].size == f.size
        assert rows["(segment_signature)"].value == 0xFFEEFFEE
    else:
        for name, f in WINE_HEAP.fields.items():
            assert rows[name].offset == f.offset(a)
        base = WINE_HEAP.offset(a, "subheap")
        for name, f in WINE_SUBHEAP.fields.items():
            assert rows[f"subheap.{name}"].offset == base + f.offset(a)
        assert rows["segment_signature"].value == 0xFFEEFFEE
    report = walk_heap(env.proc, env.story.heap)
    assert rows["flags"].value == report.flags and "HEAP_GROWABLE" in rows["flags"].note
    assert rows["magic"].note == "'HEAP'"
    offsets = [r.offset for r in view.rows]
    assert offsets == sorted(offsets)
    text = render_dt(view)
    assert f"+{rows['magic'].offset:#05x} magic" in text


# ---------------------------------------------------------------------------- JSON


def test_views_round_trip_through_json(env: Env) -> None:
    p, a = env.proc, env.alloc
    views = [
        (SummaryView, build_summary(p, allocator=a)),
        (EntriesView, build_entries(p, env.story.heap, allocator=a)),
        (EntryView, build_entry(p, env.story.blocks[5] + 1, allocator=a)),
        (AddressView, build_address(p, allocator=a, usage="Heap")),
        (DtView, build_dt(p, env.story.heap)),
    ]
    for cls, view in views:
        text = json.dumps(view.to_json())
        assert cls.from_json(json.loads(text)) == view
