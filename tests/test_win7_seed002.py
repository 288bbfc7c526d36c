"""Seed 002 replayed on the emulated Windows 7 heap (``--allocator win7``), checked against the
transcript (``/work/shared/seeds/002_5b95737135e99598.txt``, T2 Lnnn) through the walker.

The same numbers as the native run (tests/native/test_win7_native.py): the emulator is steered
to give the heap the transcript's reservations (0x470000, then 0x300000 for the segment it grows
into) by reserving the address space below them first, so every address, structure field and
encoded LFH header word can be compared as the transcript prints it; each address is also
checked relative to its segment's base (what holds wherever the heap lands). x64 has no
transcript: its numbers are the native x64 run's, with the same reasoning.

The program counts from 0: the transcript's "17th chunk" (0x4acf28) is a[17], its 18th, 48th
and 78th are a[18], a[48], a[78].
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest

from emu import Process
from emu.heap.allocator import Allocator
from emu.heap.registry import walk_heap
from emu.heap.walkers import win7_layout as lay
from emu.heap.walkers.model import BUSY, FREE
from emu.heap.walkers.win7 import BLOCK_LFH, Win7Report
from emu.load.win7_heap import set_win7_keys
from emu.win.ntdefs import MEM_RELEASE, MEM_RESERVE, PAGE_READWRITE

T2_LFH_KEY, T2_POINTER_KEY, ENCODING = 0x3C18DB66, 0x0C58FA9C, 0x5F1C3A69
HEAP_BASE, SEGMENT_BASE = 0x470000, 0x300000  # T2 L24, L338
GRANULE = 0x10000


def steer(proc: Process) -> list[int]:
    """Reserve every free 64 KiB below HEAP_BASE so the next reservation (the heap's 0x40000)
    lands there; returns the placeholders over [SEGMENT_BASE, +1 MiB) to release afterwards."""
    mem = proc.memory
    later = []
    for addr in range(mem.arch.user_min, HEAP_BASE, GRANULE):
        if mem.region_at(addr) is None:
            mem.allocate(addr, GRANULE, MEM_RESERVE, PAGE_READWRITE, usage="placeholder")
            if SEGMENT_BASE <= addr < SEGMENT_BASE + 0x100000:
                later.append(addr)
    return later


@dataclass
class Story:
    proc: Process
    a: Allocator
    heap: int
    v: dict[str, int] = field(default_factory=dict)
    reports: dict[str, Win7Report] = field(default_factory=dict)
    peeks: dict[int, list[int]] = field(default_factory=dict)  # after the first allocations

    def walk(self, label: str) -> Win7Report:
        rep = walk_heap(self.proc, self.heap)
        assert isinstance(rep, Win7Report)
        assert rep.ok, rep.corruptions
        assert self.a.validate(self.heap)
        assert_matches_rtl_walk(self, rep)
        self.reports[label] = rep
        return rep

    def u32s(self, address: int, n: int) -> list[int]:
        return list(struct.unpack(f"<{n}I", self.proc.read(address, 4 * n)))


def assert_matches_rtl_walk(s: Story, rep: Win7Report) -> None:
    """The walker's busy and free blocks are RtlWalkHeap's (LFH blocks included)."""
    entries = s.a.walk(s.heap)
    busy = {(e.address, e.size) for e in entries if e.busy}
    ours = {(b.user_ptr, b.requested) for b in rep.busy_blocks()}
    ours |= {(lb.user_ptr, lb.size) for lb in rep.large_blocks}
    assert ours == busy
    free = sorted(e.address for e in entries if e.kind == "free")
    assert free == sorted(b.user_ptr for b in rep.free_blocks())


def start_story(arch: str) -> Story:
    """The transcript's heap at the transcript's address, with the seed's keys."""
    proc = Process(arch, time_limit=60.0)
    a = Allocator(proc, proc.load_allocator("win7"))
    later = steer(proc)
    set_win7_keys(proc, ENCODING, T2_LFH_KEY, T2_POINTER_KEY)
    heap = a.create_heap(0x1002)
    assert heap == HEAP_BASE
    for addr in later:
        proc.memory.free(addr, 0, MEM_RELEASE)
    return Story(proc, a, heap)


def run_story(arch: str) -> Story:
    s = start_story(arch)
    a, heap = s.a, s.heap
    n = 100 if arch == "x86" else 97  # x64: 0x110-byte blocks, 29 to a UserBlocks
    for i in range(n):
        s.v[f"a{i}"] = a.alloc(heap, 0x100)
    s.walk("after_allocations")
    if arch == "x86":
        for addr, n in ((0x302058, 2), (0x303708, 2), (0x4AF080, 8)):
            s.peeks[addr] = s.u32s(addr, n)
    second = (48, 78) if arch == "x86" else (47, 76)  # first blocks of subsegments 2 and 3
    assert a.free(heap, s.v["a17"])  # T2 L725
    s.walk("after_free17")
    s.v["b0"] = a.alloc(heap, 0x100)  # T2 L842
    assert a.free(heap, s.v["a18"])
    s.v["b1"] = a.alloc(heap, 0x100)  # T2 L916-1002
    s.walk("b1")
    for name in ("b1", f"a{second[0]}", f"a{second[1]}"):
        assert a.free(heap, s.v[name])  # T2 L1173
    s.walk("freed")
    for i in range(9):
        s.v[f"c{i}"] = a.alloc(heap, 0x100)  # T2 L1271
    s.v["d0"] = a.alloc(heap, 0x100)  # T2 L1321
    for i in range(5):
        s.v[f"e{i}"] = a.alloc(heap, 0x100)  # T2 L1504
    s.walk("end")
    return s


@pytest.fixture(scope="module")
def x86() -> Story:
    return run_story("x86")


@pytest.fixture(scope="module")
def x64() -> Story:
    return run_story("x64")


def info_of(s: Story, rep: Win7Report, bucket: int) -> int:
    """Address of LocalData[0].SegmentInfo[bucket]."""
    arch = s.proc.arch.name
    lfh = rep.header["FrontEndHeap"]
    ld = lfh + lay.LFH_HEAP.offset(arch, "LocalData")
    return (
        ld
        + lay.HEAP_LOCAL_DATA.offset(arch, "SegmentInfo")
        + bucket * lay.HEAP_LOCAL_SEGMENT_INFO.size(arch)
    )


# ---------------------------------------------------------------------------- x86


def test_x86_addresses_match_the_transcript(x86: Story) -> None:
    v = x86.v
    got = [v[f"a{i}"] for i in range(100)]
    expected = [0x4707D0 + 0x108 * k for k in range(17)]  # T2 L118-134
    expected += [0x4ACF28]  # T2 L218: a[17] is a back-end block
    expected += [0x4AD048 + 0x108 * k for k in range(30)]  # T2 L424-453
    expected += [0x300060 + 0x108 * k for k in range(30)]  # T2 L493-522
    expected += [0x302060 + 0x108 * k for k in range(22)]  # T2 L527-548
    assert [hex(p) for p in got] == [hex(p) for p in expected]
    # the same, relative to the segment each block lies in (what holds at any base)
    rep = x86.reports["after_allocations"]
    assert [s.base for s in rep.segments] == [HEAP_BASE, SEGMENT_BASE]
    rel = [(rep.block_at(p).segment, p - rep.segments[rep.block_at(p).segment].base) for p in got]  # type: ignore[union-attr]
    assert rel[:18] == [(0, 0x7D0 + 0x108 * k) for k in range(17)] + [(0, 0x3CF28)]
    assert rel[48] == (1, 0x60) and rel[78] == (1, 0x2060)
    assert v["b0"] == 0x303710  # not the freed a[17] (T2 L842)
    assert v["b1"] == 0x4AD048  # Hint: the subsegment just freed into
    assert [v[f"c{i}"] for i in range(9)] == [0x302060] + [
        0x303818 + 0x108 * k for k in range(7)
    ] + [0x4AD048]
    assert v["d0"] == 0x300060
    assert [v[f"e{i}"] for i in range(5)] == [0x304060 + 0x108 * k for k in range(5)]


def test_x86_segments_as_heap_h(x86: Story) -> None:
    """T2 L357-392: `!heap -h` rows (address, size, state, requested) after 100 allocations."""
    rep = x86.reports["after_allocations"]
    rows = [
        (b.address, b.size, b.state, b.requested) for b in rep.blocks if not b.flags & BLOCK_LFH
    ]
    seg0 = [(0x470588, 0x240, BUSY, 0x23F)]  # the UCR index block
    seg0 += [(0x4707C8 + 0x108 * k, 0x108, BUSY, 0x100) for k in range(17)]
    seg0 += [
        (0x471950, 0x3D20, BUSY, 0x3D1F),  # extended lookup
        (0x475670, 0x378B0, BUSY, 0x378A8),  # _LFH_HEAP (Internal)
        (0x4ACF20, 0x108, BUSY, 0x100),  # a[17]
        (0x4AD028, 0x2000, BUSY, 0x1FF8),  # UserBlocks (Internal)
        (0x4AF028, 0x400, BUSY, 0x3F8),  # subsegment zone (Internal)
        (0x4AF428, 0xBB8, FREE, None),
        (0x4AFFE0, 0x20, BUSY, 0x1D),  # UCR sentinel
    ]
    seg1 = [
        (0x300040, 0x2000, BUSY, 0x1FF8),
        (0x302040, 0x2000, BUSY, 0x1FF8),
        (0x304040, 0xFA0, FREE, None),
        (0x304FE0, 0x20, BUSY, 0x1D),
    ]
    assert rows == seg0 + seg1
    internal = [b.address for b in rep.blocks if b.flags & lay.ENTRY_INTERNAL]
    assert internal == [0x475670, 0x4AD028, 0x4AF028, 0x300040, 0x302040]
    s0, s1 = rep.segments
    assert (s0.first_block, s0.blocks_end, s0.committed) == (0x470588, 0x4B0000, 0x40000)
    assert (s1.first_block, s1.committed) == (0x300040, 0x5000)  # T2 L338
    assert [(r.address, r.size) for r in s1.uncommitted] == [(0x305000, 0xFB000)]
    assert rep.header["TotalFreeSize"] == 0x36B  # T2 L556-610
    # FreeLists in ascending size: 0xBB8, then 0xFA0
    assert [e.address for e in rep.free_lists[-1].entries] == [0x4AF428, 0x304040]


def test_x86_lfh_regions_and_headers(x86: Story) -> None:
    rep = x86.reports["after_allocations"]
    regions = [(r.address, r.block_size, r.block_count, r.free, r.bucket) for r in rep.lfh_regions]
    assert sorted(regions) == [
        (0x300048, 0x108, 30, 0, 0x20),
        (0x302048, 0x108, 30, 8, 0x20),  # 22 used, 8 free (T2 L707-712: Depth 8)
        (0x4AD030, 0x108, 30, 0, 0x20),
    ]
    lfh = [b for b in rep.blocks if b.flags & BLOCK_LFH]
    assert len(lfh) == 90 and sum(b.free for b in lfh) == 8
    assert all(b.requested == 0x100 for b in lfh if b.busy)
    # the encoded LFH header words with the seed's keys (T2 L719, L837)
    assert x86.peeks[0x302058] == [0x3C132FED, 0x88000000]  # busy, 8 unused bytes
    assert x86.peeks[0x303708] == [0x3C132D07, 0x80000000]  # free
    assert rep.lfh_key == T2_LFH_KEY and rep.encoding == ENCODING
    # the active subsegment (T2 L685-697): UserBlocks, _INTERLOCK_SEQ, BlockSize, ...
    assert x86.peeks[0x4AF080] == [0x4766A0, 0x302048, 0x02D80008, 1, 0x21, 0x0020001E, 0, 7]
    # the free chain in LIFO order from FreeEntryOffset 0x2D8 (header 0x303708)
    chain = next(fl for fl in rep.free_lists if fl.head == 0x4AF080)
    assert [e.address for e in chain.entries] == [0x303708 + 0x108 * k for k in range(8)]


def test_x86_free_lists_after_freeing_a17(x86: Story) -> None:
    rep = x86.reports["after_free17"]
    assert rep.header["TotalFreeSize"] == 0x38C  # T2 L738-760
    # 0x108 (a[17], not coalesced: its neighbours are busy), 0xBB8, 0xFA0
    assert [(e.address, e.size) for e in rep.free_lists[-1].entries] == [
        (0x4ACF20, 0x108),
        (0x4AF428, 0xBB8),
        (0x304040, 0xFA0),
    ]
    end = x86.reports["end"]
    assert end.block_at(0x4ACF28).free  # "17th chunk deallocated" is never reused (T2 L845)


def test_x86_hint_and_cached_items(x86: Story) -> None:
    info = info_of(x86, x86.reports["end"], 0x20)
    assert info == 0x4766A0  # SegmentInfo[0x20] (T2 L673)
    rep = x86.reports["b1"]
    assert rep.header["FrontEndHeap"] == 0x475678  # T2 L294
    # after the last allocations: the zone holds four subsegments, the fourth one active
    assert x86.u32s(info, 2) == [0, 0x4AF0A0]
    assert x86.u32s(info + 8, 16) == [0] * 16
    assert struct.unpack("<H", x86.proc.read(info + 0x62, 2))[0] == 1  # LastUsed (T2 L1334)


# ---------------------------------------------------------------------------- x64


def test_x64_story(x64: Story) -> None:
    v = x64.v
    assert [v[f"a{i}"] for i in range(17)] == [0x470F10 + 0x110 * k for k in range(17)]
    rep = x64.reports["after_allocations"]
    assert rep.header["FrontEndHeap"] == 0x300080  # the _LFH_HEAP opens the second segment
    assert v["a17"] == 0x300080 + 0x66720 + 0x10
    users = [0x479A60, 0x47BA60, 0x47DA60]  # UserBlocks (0x2000 each)
    expected = [u + 0x20 + 0x10 + 0x110 * k for u in users for k in range(29)][: 97 - 18]
    assert [v[f"a{i}"] for i in range(18, 97)] == expected
    regions = sorted((r.address, r.block_size, r.block_count, r.free) for r in rep.lfh_regions)
    assert regions == [(u, 0x110, 29, 8 if u == users[2] else 0) for u in users]
    third = [users[2] + 0x30 + 0x110 * k for k in range(29)]
    assert v["b0"] == third[21] and v["b1"] == v["a18"]
    assert [v[f"c{i}"] for i in range(9)] == [v["a76"], *third[22:29], v["a18"]]
    assert v["d0"] == v["a47"]
    e0 = v["e0"]
    assert [v[f"e{i}"] for i in range(5)] == [e0 + 0x110 * k for k in range(5)]
    end = x64.reports["end"]
    ub = [b for b in end.blocks if b.flags & lay.ENTRY_INTERNAL and b.size in (0x2000, 0x4000)]
    assert [(b.address, b.size) for b in ub] == [(u - 0x10, 0x2000) for u in users] + [
        (e0 - 0x30 - 0x10, 0x4000)
    ]
    # x64 LFH header: Heap ^ SubSegment ^ LFHKey ^ (header >> 4), its low half again at +8
    header = v["a19"] - 0x10
    sub = struct.unpack("<Q", x64.proc.read(users[0], 8))[0]  # UserBlocks.SubSegment
    code = HEAP_BASE ^ sub ^ T2_LFH_KEY ^ (header >> 4)
    assert struct.unpack("<QI", x64.proc.read(header, 12)) == (code, code & 0xFFFFFFFF)


def test_x86_views_read_as_the_transcript() -> None:
    """``heap summary``, ``heap entries --lfh`` and ``heap entry`` at the transcript's moments
    print what WinDbg printed there (``!heap -s``, ``!heap -hl``, ``!heap -i``)."""
    from emu.views import build_entries, build_entry, build_summary, render_entries, render_entry

    s = start_story("x86")

    def summary() -> tuple[object, ...]:
        (row,) = build_summary(s.proc, [s.heap], allocator=s.a).rows
        k = 1024
        return (row.reserved // k, row.committed // k, row.free // k, row.free_list_length,
                row.uncommitted_ranges, row.fast_heap)  # fmt: skip

    for _ in range(17):
        s.a.alloc(s.heap, 0x100)
    assert summary() == (256, 8, 1, 1, 1, "")  # T2 L212: no LFH yet
    assert s.a.alloc(s.heap, 0x100) == 0x4ACF28  # T2 L219
    assert summary() == (256, 248, 3, 1, 1, "LFH")  # T2 L239
    for _ in range(82):
        s.a.alloc(s.heap, 0x100)
    text = render_entries(build_entries(s.proc, s.heap, allocator=s.a), lfh=True).splitlines()
    # T2 L445-551: each region's heading, then its 30 blocks; the third has 8 free at its end
    for region, sub, first, free in (
        (0x4AD030, 0x4AF040, 0x4AD040, 0),
        (0x300048, 0x4AF060, 0x300058, 0),
        (0x302048, 0x4AF080, 0x302058, 8),
    ):
        at = text.index(f"        LFH data region at {region:08x} (subsegment {sub:08x}):")
        want = [
            f"            {first + 0x108 * k:08x}: 00108 - "
            + ("free" if k >= 30 - free else "busy (100)")
            for k in range(30)
        ]
        assert text[at + 1 : at + 31] == want and text[at + 31] == ""
    lines = render_entry(build_entry(s.proc, 0x302058, allocator=s.a)).splitlines()
    assert "Header content     : 0x3C132FED 0x88000000" in lines  # T2 L715-723
    assert "Total block size   : 0x21 units (0x108 bytes)" in lines
    assert "Requested size     : 0x100 bytes (unused 0x8 bytes)" in lines
    assert "Subsegment         : 0x004af080" in lines
    assert any(ln.startswith("Block flags") and ln.endswith("(LFH (busy))") for ln in lines)
