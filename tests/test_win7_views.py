"""The win7 allocator's views (issue 17), x86 and x64, on a real heap: seed 002's 100 x 0x100
allocations (the LFH activates and carves three UserBlocks) with a few LFH blocks freed.

``heap summary`` shows ``LFH`` in the Fast heap column; ``heap entries --lfh`` lists every LFH
block under its "LFH data region at X (subsegment Y)" heading, as ``!heap -hl`` does; ``dt``
shows the LFH's structures with Windows 7's offsets (the x86 ones are seed 002's WinDbg session,
the x64 ones Windows 7 SP1's public symbols) and the values the walker and the allocator's own
RtlWalkHeap see; ``heap entry`` decodes an LFH block as ``!heap -i`` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from emu import Process
from emu.heap.allocator import Allocator
from emu.heap.registry import walk_heap
from emu.heap.walkers import win7_layout as lay
from emu.heap.walkers.win7 import BLOCK_LFH, Win7Report
from emu.views import (
    DtView,
    build_dt,
    build_entries,
    build_entry,
    build_summary,
    dt_address,
    render_dt,
    render_entries,
    render_entry,
    render_summary,
)
from emu.views.common import hexp

ARCHS = ("x86", "x64")
WALK_LFH = 0x8000  # RtlWalkHeap's flag on LFH entries (win7heap.c)

# Windows 7's offsets (x86: seed 002's dt output; x64: the SP1 symbols), field -> (x86, x64)
WINDOWS = {
    "_HEAP_USERDATA_HEADER": {
        "SubSegment": (0, 0),
        "SizeIndex": (8, 0x10),
        "Signature": (0xC, 0x18),
    },
    "_HEAP_SUBSEGMENT": {
        "LocalInfo": (0, 0),
        "UserBlocks": (4, 8),
        "AggregateExchg": (8, 0x10),
        "BlockSize": (0x10, 0x18),
        "BlockCount": (0x14, 0x1C),
        "SizeIndex": (0x16, 0x1E),
        "Lock": (0x1C, 0x28),
    },
    "_INTERLOCK_SEQ": {"Depth": (0, 0), "FreeEntryOffset": (2, 2), "Sequence": (4, 4)},
    "_LFH_HEAP": {
        "SubSegmentZones": (0x18, 0x28),
        "ZoneBlockSize": (0x20, 0x38),
        "Heap": (0x24, 0x40),
        "SegmentCreate": (0x2C, 0x4C),
        "Buckets": (0x110, 0x1F0),
        "LocalData": (0x310, 0x3F0),
    },
    "_HEAP_LOCAL_DATA": {
        "DeletedSubSegments": (0, 0),
        "CrtZone": (8, 0x10),
        "LowFragHeap": (0xC, 0x18),
        "Sequence": (0x10, 0x20),
        "SegmentInfo": (0x18, 0x30),
    },
    "_HEAP_LOCAL_SEGMENT_INFO": {
        "Hint": (0, 0),
        "ActiveSubsegment": (4, 8),
        "CachedItems": (8, 0x10),
        "LocalData": (0x58, 0xA8),
        "BucketIndex": (0x60, 0xB4),
    },
    "_HEAP_ENTRY": {
        "Size": (0, 8),
        "Flags": (2, 0xA),
        "PreviousSize": (4, 0xC),
        "SegmentOffset": (6, 0xE),
        "UnusedBytes": (7, 0xF),
    },
}


@dataclass
class Env:
    proc: Process
    alloc: Allocator
    heap: int
    ptrs: list[int]
    freed: list[int]

    @property
    def arch(self) -> str:
        return self.proc.arch.name

    def walk(self) -> Win7Report:
        rep = walk_heap(self.proc, self.heap)
        assert isinstance(rep, Win7Report) and rep.ok, rep.corruptions
        return rep


@pytest.fixture(scope="module", params=ARCHS)
def env(request: pytest.FixtureRequest) -> Env:
    proc = Process(request.param, time_limit=60.0)
    a = Allocator(proc, proc.load_allocator("win7"))
    heap = a.create_heap()
    ptrs = [a.alloc(heap, 0x100) for _ in range(100)]
    freed = [ptrs[60], ptrs[61], ptrs[90]]  # LFH blocks of the second and third UserBlocks
    for p in freed:
        assert a.free(heap, p)
    return Env(proc, a, heap, ptrs, freed)


def dt(env: Env, struct: str, address: int) -> tuple[DtView, dict[str, int | None]]:
    view = build_dt(env.proc, address, struct=struct)
    assert view.struct == struct and view.address == address
    rows = {r.name: r for r in view.rows}
    i = 1 if env.arch == "x64" else 0
    for name, offsets in WINDOWS.get(struct, {}).items():
        assert rows[name].offset == offsets[i], (struct, name)
    return view, {r.name: r.value for r in view.rows}


# ---------------------------------------------------------------------------- summary


def test_summary_shows_lfh_in_the_fast_heap_column(env: Env) -> None:
    view = build_summary(env.proc, allocator=env.alloc)
    fast = {r.heap: r.fast_heap for r in view.rows}
    assert fast[env.heap] == "LFH"
    assert fast[env.proc.process_heaps[0]] == ""  # two allocations: no LFH yet
    head, *_ = [ln for ln in render_summary(view).splitlines() if "Fast" in ln]
    ours = next(ln for ln in render_summary(view).splitlines()
                if ln.startswith(hexp(env.heap, env.arch)) and "Fast heap" not in ln)  # fmt: skip
    # the column sits where its header is, as in !heap -s
    assert ours.endswith("LFH") and len(ours) == head.index("Fast") + len("Fast")
    rep = env.walk()
    assert rep.header["FrontEndHeapType"] == lay.HEAP_FRONT_END_LFH


def test_a_heap_without_lfh_has_an_empty_fast_heap_cell(arch: str) -> None:
    proc = Process(arch, time_limit=60.0)
    a = Allocator(proc, proc.load_allocator("win7"))
    heap = a.create_heap()
    for _ in range(10):  # below the LFH's activation count
        a.alloc(heap, 0x100)
    row = next(r for r in build_summary(proc, allocator=a).rows if r.heap == heap)
    assert row.fast_heap == "" and walk_heap(proc, heap).header["FrontEndHeapType"] == 0


# ---------------------------------------------------------------------------- entries --lfh


def test_entries_lfh_lists_every_region_under_its_heading(env: Env) -> None:
    rep = env.walk()
    view = build_entries(env.proc, env.heap, allocator=env.alloc)
    text = render_entries(view, lfh=True)
    lines = text.splitlines()
    w = hexp
    assert len(rep.lfh_regions) == 3
    for region in rep.lfh_regions:
        heading = (
            f"        LFH data region at {w(region.address, env.arch)} "
            f"(subsegment {w(region.subsegment, env.arch)}):"
        )
        at = lines.index(heading)
        assert lines[at - 1] == ""  # a blank line before it, as !heap -hl prints it
        listed = []
        for line in lines[at + 1 :]:
            m = re.fullmatch(r" {12}([0-9a-f]+): ([0-9a-f]{5}) - (busy \(([0-9a-f]+)\)|free)", line)
            if m is None:
                break
            req = int(m.group(4), 16) if m.group(4) else None
            listed.append((int(m.group(1), 16), int(m.group(2), 16), req))
        blocks = [
            b
            for b in rep.blocks
            if b.flags & BLOCK_LFH and region.address <= b.address < region.end
        ]
        assert listed == [(b.address, b.size, b.requested) for b in blocks]
        assert len(listed) == region.block_count
        assert sum(1 for _, _, r in listed if r is None) == region.free
    # every LFH block RtlWalkHeap reports is listed, busy with its size or free
    lfh = {
        (e.address, e.size if e.busy else None)
        for e in env.alloc.walk(env.heap)
        if e.flags & WALK_LFH
    }
    g = lay.granularity(env.arch)
    shown = set()
    for line in lines:
        m = re.fullmatch(r" {12}([0-9a-f]+): [0-9a-f]{5} - (busy \(([0-9a-f]+)\)|free)", line)
        if m:
            shown.add((int(m.group(1), 16) + g, int(m.group(3), 16) if m.group(3) else None))
    assert shown == lfh and {(p + 0, None) for p in env.freed} <= shown
    # without --lfh (!heap -h) each region is one line that counts its blocks
    short = render_entries(view)
    for region in rep.lfh_regions:
        assert (
            f"LFH data region at {w(region.address, env.arch)} (subsegment "
            f"{w(region.subsegment, env.arch)}): {region.block_count} blocks, {region.free} free"
        ) in short
    assert len(short.splitlines()) < len(lines) - 80


def test_entries_filter_keeps_lfh_blocks(env: Env) -> None:
    from emu.views import filter_entries

    view = filter_entries(build_entries(env.proc, env.heap, allocator=env.alloc), state="free")
    free = {e.user_ptr for e in view.entries if e.state == "free"}
    assert set(env.freed) <= free  # LFH blocks stay, under their (busy) UserBlocks block
    assert all(e.state == "free" for s in view.segments for e in s.entries for e in e.nested)


# ---------------------------------------------------------------------------- dt


def test_dt_userdata_header_and_subsegment(env: Env) -> None:
    rep = env.walk()
    g = lay.granularity(env.arch)
    for region in rep.lfh_regions:
        view, ud = dt(env, "_HEAP_USERDATA_HEADER", region.address)
        assert ud["Signature"] == 0xF0E0D0C0 == lay.HEAP_USERDATA_SIGNATURE
        assert ud["SubSegment"] == region.subsegment
        sig = env.proc.read(region.address + (0x18 if env.arch == "x64" else 0xC), 4)
        assert int.from_bytes(sig, "little") == 0xF0E0D0C0  # read where Windows has it
        assert "Signature  : 0xf0e0d0c0" in render_dt(view)
        _, sub = dt(env, "_HEAP_SUBSEGMENT", region.subsegment)
        assert sub["UserBlocks"] == region.address
        assert (
            sub["BlockSize"] == region.block_size // g and sub["BlockCount"] == region.block_count
        )
        assert sub["SizeIndex"] == region.bucket
        assert sub["AggregateExchg.Depth"] == region.free
        # _INTERLOCK_SEQ at AggregateExchg: the free chain's head as a u16 offset in units
        at = region.subsegment + lay.HEAP_SUBSEGMENT.offset(env.arch, "AggregateExchg")
        _, seq = dt(env, "_INTERLOCK_SEQ", at)
        chain = next(fl for fl in rep.free_lists if fl.head == region.subsegment)
        head = (chain.entries[0].address - region.address) // g if chain.entries else 0xFFFF
        assert (seq["Depth"], seq["FreeEntryOffset"]) == (region.free, head)
    # the freed blocks are at the heads of their chains: the last freed is reused first
    assert any(r.free for r in rep.lfh_regions)


def test_dt_lfh_heap_local_data_and_segment_info(env: Env) -> None:
    rep = env.walk()
    lfh = rep.header["FrontEndHeap"]
    view, h = dt(env, "_LFH_HEAP", lfh)
    assert h["Heap"] == env.heap and h["SegmentCreate"] == len(rep.lfh_regions)
    zone = h["SubSegmentZones.Flink"]
    assert zone is not None and zone < rep.lfh_regions[0].subsegment  # descriptors follow it
    assert h["LocalData.LowFragHeap"] == lfh  # LocalData[1] is expanded in place
    local = lfh + lay.LFH_HEAP.offset(env.arch, "LocalData")
    _, ld = dt(env, "_HEAP_LOCAL_DATA", local)
    assert ld["LowFragHeap"] == lfh and ld["CrtZone"] == zone
    bucket = rep.lfh_regions[-1].bucket
    info = (
        local
        + lay.HEAP_LOCAL_DATA.offset(env.arch, "SegmentInfo")
        + bucket * lay.HEAP_LOCAL_SEGMENT_INFO.size(env.arch)
    )
    _, si = dt(env, "_HEAP_LOCAL_SEGMENT_INFO", info)
    # as seed 002's dt: the bucket's ActiveSubsegment is the last subsegment it carved
    assert si["ActiveSubsegment"] == rep.lfh_regions[-1].subsegment
    assert (si["BucketIndex"], si["LocalData"]) == (bucket, local)
    _, sub = dt(env, "_HEAP_SUBSEGMENT", rep.lfh_regions[-1].subsegment)
    assert sub["LocalInfo"] == info
    text = render_dt(view)
    assert text.splitlines()[0].startswith("_LFH_HEAP at ") and "LocalData.SegmentInfo" in text


def test_dt_heap_and_heap_entry(env: Env) -> None:
    rep = env.walk()
    _, h = dt(env, "_HEAP", env.heap)
    assert h["Signature"] == 0xEEFFEEFF and h["FrontEndHeapType"] == lay.HEAP_FRONT_END_LFH
    assert h["FrontEndHeap"] == rep.header["FrontEndHeap"]
    back = next(b for b in rep.busy_blocks() if b.user_ptr == env.ptrs[3])  # a back-end block
    _, e = dt(env, "_HEAP_ENTRY", back.address)
    g = lay.granularity(env.arch)
    assert e["UnusedBytes"] == back.size - 0x100 and e["SegmentOffset"] == back.segment
    assert e["PreviousSize"] == (back.prev_size or 0) // g
    with pytest.raises(ValueError, match="_HEAP_SUBSEGMENT"):  # the names it has
        build_dt(env.proc, env.heap, struct="_HEAP_NOPE")


# ---------------------------------------------------------------------------- entry


def test_entry_of_lfh_blocks(env: Env) -> None:
    rep = env.walk()
    g = lay.granularity(env.arch)
    busy = env.ptrs[70]
    got = build_entry(env.proc, busy + 0x11, allocator=env.alloc)
    region = next(r for r in rep.lfh_regions if r.address <= got.address < r.end)
    assert (got.address, got.user_ptr, got.state) == (busy - g, busy, "busy")
    assert got.flag_names == ["LFH (busy)"] and got.subsegment == region.subsegment
    assert (got.size, got.requested) == (region.block_size, 0x100)
    assert got.header == env.proc.read(got.address, g).hex(" ")
    text = render_entry(got)
    assert "Block flags        : 0x100 (LFH (busy))" in text
    assert f"Subsegment         : 0x{hexp(region.subsegment, env.arch)}" in text
    assert (
        f"Total block size   : {region.block_size // g:#x} units ({region.block_size:#x} bytes)"
        in text
    )
    assert "Requested size     : 0x100 bytes" in text
    free = build_entry(env.proc, env.freed[0], allocator=env.alloc)
    assert free.state == "free" and free.flag_names == ["LFH (free)"] and free.requested is None
    assert free.subsegment is not None and "LFH (free)" in render_entry(free)
    link = next(f for f in free.fields if f.name == "(next free offset)")
    chain = next(fl for fl in rep.free_lists if fl.head == free.subsegment)
    at = [e.address for e in chain.entries].index(free.address)
    nxt = chain.entries[at + 1].address if at + 1 < len(chain.entries) else None
    region = next(r for r in rep.lfh_regions if r.subsegment == free.subsegment)
    assert link.offset == g and link.value == (
        0xFFFF if nxt is None else (nxt - region.address) // g
    )
    # a back-end block has no subsegment
    assert build_entry(env.proc, env.ptrs[3], allocator=env.alloc).subsegment is None


def test_dt_finds_the_heaps_structures(env: Env) -> None:
    """``heap dt --struct NAME`` without an address: where this heap has one."""
    rep = env.walk()
    r = rep.lfh_regions[0]
    lfh = rep.header["FrontEndHeap"]
    found = {name: dt_address(env.proc, env.heap, name) for name in (
        "_HEAP", "_LFH_HEAP", "_HEAP_LOCAL_DATA", "_HEAP_SUBSEGMENT", "_HEAP_USERDATA_HEADER",
        "_INTERLOCK_SEQ", "_HEAP_LOCAL_SEGMENT_INFO", "_HEAP_ENTRY", "_HEAP_VIRTUAL_ALLOC_ENTRY",
    ) if name != "_HEAP_VIRTUAL_ALLOC_ENTRY" or rep.large_blocks}  # fmt: skip
    assert found["_HEAP"] == env.heap and found["_LFH_HEAP"] == lfh
    assert found["_HEAP_LOCAL_DATA"] == lfh + lay.LFH_HEAP.offset(env.arch, "LocalData")
    assert (found["_HEAP_SUBSEGMENT"], found["_HEAP_USERDATA_HEADER"]) == (r.subsegment, r.address)
    _, ud = dt(env, "_HEAP_USERDATA_HEADER", found["_HEAP_USERDATA_HEADER"])
    assert ud["Signature"] == lay.HEAP_USERDATA_SIGNATURE
    _, seq = dt(env, "_INTERLOCK_SEQ", found["_INTERLOCK_SEQ"])
    assert seq["Depth"] == r.free
    _, si = dt(env, "_HEAP_LOCAL_SEGMENT_INFO", found["_HEAP_LOCAL_SEGMENT_INFO"])
    assert si["BucketIndex"] == r.bucket
    _, e = dt(env, "_HEAP_ENTRY", found["_HEAP_ENTRY"])
    first = rep.blocks[0]
    assert found["_HEAP_ENTRY"] == first.address == rep.segments[0].first_block
    # its PreviousSize is the heap header's (a block too: seed 002's "00470588: 00588 . 00240")
    g = lay.granularity(env.arch)
    header = (first.address - env.heap) // g
    assert (e["PreviousSize"], e["UnusedBytes"]) == (header, first.unused)
    with pytest.raises(ValueError, match="no _HEAP_VIRTUAL_ALLOC_ENTRY"):
        dt_address(env.proc, env.heap, "_HEAP_VIRTUAL_ALLOC_ENTRY")  # no large block here
