"""Heap walkers (emu.heap.walkers) against the allocators' own RtlWalkHeap, on every arch x
allocator.

The walkers read emulated memory only; these tests run known operation sequences, compare the
walk with what the allocator returned and with its RtlWalkHeap, then corrupt bytes with
proc.write and check that the corruption is reported at the right address and the walk returns.
"""

from __future__ import annotations

import itertools
import json
import random
import struct
from dataclasses import dataclass, field

import pytest
from conftest import needs_block_chain

import asm
from emu import Process
from emu.heap.allocator import Allocator, HeapWalkEntry
from emu.heap.registry import ALLOCATOR_NAMES, allocator_kind, detect_kind, walk_heap
from emu.heap.walkers import CORRUPTION_KINDS, HeapReport, HeapWalker, win7_layout
from emu.heap.walkers import model as m
from emu.heap.walkers.win7 import BLOCK_LFH
from emu.heap.walkers.wine_layout import WINE_HEAP, WINE_SUBHEAP
from emu.win.layouts import PEB
from emu.win.ntdefs import HEAP_GROWABLE

ARCHS = ("x86", "x64")
KINDS = ALLOCATOR_NAMES
TAIL_AND_FREE_CHECKING = 0x20 | 0x40
NT_GLOBAL_FLAG_HEAP_CHECKS = 0x70  # FLG_HEAP_ENABLE_TAIL_CHECK | FREE_CHECK | VALIDATE_PARAMETERS


@dataclass
class Env:
    proc: Process
    alloc: Allocator
    arch: str
    kind: str

    @property
    def walker(self) -> type[HeapWalker]:
        return allocator_kind(self.kind).walker

    @property
    def alignment(self) -> int:
        return self.walker.granularity(self.arch)

    @property
    def hdr(self) -> int:
        """Bytes from a block header to its data."""
        return self.walker.block_header_size(self.arch)

    @property
    def link(self) -> int:
        """Offset of a free block's list links from its header."""
        return self.walker.free_link_offset(self.arch)

    def walk(self, heap: int) -> HeapReport:
        return walk_heap(self.proc, heap)


def make_env(arch: str, kind: str) -> Env:
    proc = Process(arch, time_limit=30.0)
    module = proc.load_allocator(kind)
    return Env(proc, Allocator(proc, module), arch, kind)


@pytest.fixture(params=[(a, k) for a in ARCHS for k in KINDS], ids=lambda p: f"{p[0]}-{p[1]}")
def env(request: pytest.FixtureRequest) -> Env:
    arch, kind = request.param
    return make_env(arch, kind)


# ---------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    heap: int
    ptrs: list[int]  # the 100 x 0x100 blocks as first allocated
    live: dict[int, int] = field(default_factory=dict)  # user pointer -> requested size
    freed: list[int] = field(default_factory=list)
    big: int = 0


def standard(env: Env) -> Scenario:
    """100 x 0x100, free #17/#18/#48/#78, a 0x100000 block, #5 reallocated to 0x300."""
    a = env.alloc
    h = a.create_heap()
    ptrs = [a.alloc(h, 0x100) for _ in range(100)]
    s = Scenario(h, ptrs, {p: 0x100 for p in ptrs})
    for i in (17, 18, 48, 78):
        assert a.free(h, ptrs[i])
        del s.live[ptrs[i]]
        s.freed.append(ptrs[i])
    s.big = a.alloc(h, 0x100000)
    s.live[s.big] = 0x100000
    moved = a.realloc(h, ptrs[5], 0x300)
    assert moved
    del s.live[ptrs[5]]
    s.live[moved] = 0x300
    return s


def grown(env: Env) -> Scenario:
    """A second growable heap filled with 0x70000-byte blocks until it needs more segments."""
    a = env.alloc
    h = a.create_heap(HEAP_GROWABLE)
    ptrs = [a.alloc(h, 0x70000) for _ in range(12)]
    assert all(ptrs)
    s = Scenario(h, ptrs, {p: 0x70000 for p in ptrs})
    for i in (3, 7):
        a.free(h, ptrs[i])
        del s.live[ptrs[i]]
        s.freed.append(ptrs[i])
    return s


# ---------------------------------------------------------------------------- comparison


def live_blocks(rep: HeapReport, internal: bool = False) -> dict[int, int]:
    """user pointer -> requested size of everything the walker says is allocated (with the
    heap's own blocks when ``internal``: RtlWalkHeap reports those busy too)."""
    owned = allocator_kind(rep.kind).walker.internal
    out = {b.user_ptr: b.requested for b in rep.busy_blocks() if internal or not owned(b)}
    out.update({lb.user_ptr: lb.size for lb in rep.large_blocks})
    return {p: int(n or 0) for p, n in out.items()}


def assert_matches_allocator(env: Env, heap: int, rep: HeapReport) -> None:
    """The walk agrees with RtlWalkHeap: busy set, free blocks, regions, uncommitted ranges."""
    entries = env.alloc.walk(heap)
    busy = {(e.address, e.size) for e in entries if e.busy}
    assert set(live_blocks(rep, internal=True).items()) == busy

    regions = {(e.address, e.committed_size, e.uncommitted_size, e.first_entry)
               for e in entries if e.region}  # fmt: skip
    ours = {(s.base, s.committed, s.reserved - s.committed, s.first_block) for s in rep.segments}
    assert ours == regions

    uncommitted = {(e.address, e.size) for e in entries if e.uncommitted and e.size}
    assert uncommitted == {(r.address, r.size) for s in rep.segments for r in s.uncommitted}

    # free blocks: the allocators report different data ranges (Wine skips the list entry and
    # stops short of the commit end); each walk record must lie in exactly one free block, and
    # a fully committed free block must end where the record ends
    walk_free = [e for e in entries if e.kind == "free"]
    free = sorted(rep.free_blocks(), key=lambda b: b.address)
    assert len(walk_free) == len(free)
    for e, b in zip(sorted(walk_free, key=_addr), free, strict=True):
        assert b.address < e.address and e.address + e.size <= b.address + b.committed
        if b.committed == b.size:
            assert e.address + e.size == b.end


def _addr(e: HeapWalkEntry) -> int:
    return e.address


def outer_blocks(seg: m.Segment) -> list[m.Block]:
    """A segment's blocks without those nested inside an earlier one."""
    out: list[m.Block] = []
    for b in seg.blocks:
        if not out or b.address >= out[-1].end:
            out.append(b)
    return out


def corruptions(rep: HeapReport, kind: str) -> list[int]:
    return [c.address for c in rep.corruptions if c.kind == kind]


# ---------------------------------------------------------------------------- known sequences


def test_standard_sequence(env: Env) -> None:
    needs_block_chain(env.kind)
    s = standard(env)
    rep = env.walk(s.heap)
    assert rep.ok, rep.corruptions
    assert rep.kind == env.kind and rep.arch == env.arch and rep.heap == s.heap
    assert live_blocks(rep) == s.live
    merged = rep.block_at(s.ptrs[17])
    assert merged is not None and merged.free and merged.address == s.ptrs[17] - env.hdr
    if env.walker.front_end:  # a[18] is the first block of an LFH subsegment, freed alone
        b18 = rep.block_at(s.ptrs[18])
        assert b18 is not None and b18.free and b18.user_ptr == s.ptrs[18] and b18 is not merged
    else:
        assert rep.block_at(s.ptrs[18]) is merged
    for p in (s.ptrs[48], s.ptrs[78]):
        b = rep.block_at(p)
        assert b is not None and b.free and b.user_ptr == p
    assert [lb.user_ptr for lb in rep.large_blocks] == [s.big]
    assert rep.large_blocks[0].size == 0x100000
    assert rep.large_blocks[0].region % 0x10000 == 0
    assert_matches_allocator(env, s.heap, rep)


def test_blocks_record_requested_size_and_neighbours(env: Env) -> None:
    a = env.alloc
    h = a.create_heap()
    sizes = [1, 7, 8, 0x10, 0x18, 0x21, 0x100, 0x3FF]
    ptrs = [a.alloc(h, n) for n in sizes]
    rep = env.walk(h)
    assert rep.ok, rep.corruptions
    for p, n in zip(ptrs, sizes, strict=True):
        b = rep.block_at(p)
        assert b is not None and b.user_ptr == p and b.requested == n == a.size(h, p)
        assert b.unused == b.size - n and b.size % env.alignment == 0
    blocks = rep.segments[0].blocks
    assert blocks[0].prev_size is None
    for prev, b in itertools.pairwise(blocks):
        assert b.prev_size == prev.size and b.address == prev.end


def test_second_segment(env: Env) -> None:
    needs_block_chain(env.kind)
    s = grown(env)
    rep = env.walk(s.heap)
    assert rep.ok, rep.corruptions
    assert len(rep.segments) >= 2
    assert live_blocks(rep) == s.live
    for p in s.freed:
        b = rep.block_at(p)
        assert b is not None and b.free
    assert_matches_allocator(env, s.heap, rep)


def test_process_heap(env: Env) -> None:
    heap = PEB.read(env.proc, env.proc.arch, env.proc.peb, "ProcessHeap")
    ptrs = [env.alloc.alloc(heap, n) for n in (0x10, 0x200, 0x2000)]
    rep = env.walk(heap)
    assert rep.ok, rep.corruptions
    assert set(ptrs) <= set(live_blocks(rep))
    assert_matches_allocator(env, heap, rep)


def test_free_lists(env: Env) -> None:
    needs_block_chain(env.kind)
    s = standard(env)
    rep = env.walk(s.heap)
    expected = {
        "builtin": 40,
        "wine": {"x86": 34, "x64": 18}[env.arch],
        # one free chain per LFH subsegment, then the back end's FreeLists
        "win7": 1 + len(getattr(rep, "lfh_regions", [])),
    }[env.kind]
    assert len(rep.free_lists) == expected
    listed = [e.address for fl in rep.free_lists for e in fl.entries]
    assert sorted(listed) == sorted(b.address for b in rep.free_blocks())
    for fl in rep.free_lists:
        for e in fl.entries:
            assert e.size >= fl.min_size and (fl.max_size is None or e.size <= fl.max_size)
        # list order: each entry's flink is the next entry's LIST link, env.link bytes into it
        for e, nxt in itertools.pairwise(fl.entries):
            assert e.flink == nxt.address + env.link and nxt.blink == e.address + env.link
    bounds = [(fl.min_size, fl.max_size) for fl in rep.free_lists]
    assert bounds[-1][1] is None and all(lo <= hi for lo, hi in bounds[:-1] if hi is not None)


def test_header_fields(env: Env) -> None:
    needs_block_chain(env.kind)
    h = env.alloc.create_heap(HEAP_GROWABLE)
    rep = env.walk(h)
    if env.kind == "win7":  # Windows' names: _HEAP.Signature, the segment's SegmentSignature
        assert rep.flags & HEAP_GROWABLE and rep.header["Flags"] == rep.flags
        assert rep.header["Signature"] == 0xEEFFEEFF
        assert rep.header["SegmentSignature"] == 0xFFEEFFEE
        assert rep.header["grow_size"] >= rep.segments[0].reserved
        assert rep.header["FrontEndHeap"] == 0 and rep.header["FrontEndHeapType"] == 0
        return
    assert rep.flags & HEAP_GROWABLE and rep.header["flags"] == rep.flags
    assert rep.header["magic"] == 0x50414548
    assert rep.header["segment_signature"] == 0xFFEEFFEE
    assert rep.header["grow_size"] >= rep.segments[0].reserved
    if env.kind == "wine":
        assert rep.header["lock.LockCount"] == -1 and rep.header["pending_free"] == 0
    else:
        assert rep.header["lock_count"] == 0


def test_checking_flags_and_delayed_frees(env: Env) -> None:
    """Builtin: HEAP_TAIL/FREE_CHECKING; Wine: NtGlobalFlag heap checks (delayed frees)."""
    a = env.alloc
    if env.kind == "wine":
        PEB.write(env.proc, env.proc.arch, env.proc.peb, "NtGlobalFlag", 0x70)
        h = a.create_heap()
    else:
        h = a.create_heap(HEAP_GROWABLE | TAIL_AND_FREE_CHECKING)
    ptrs = [a.alloc(h, 0x13 + i) for i in range(40)]
    freed = ptrs[::3]
    for p in freed:
        assert a.free(h, p)
    rep = env.walk(h)
    assert rep.ok, rep.corruptions
    assert_matches_allocator(env, h, rep)
    states = {p: rep.block_at(p).state for p in freed}  # type: ignore[union-attr]
    if env.kind == "wine":
        assert set(states.values()) == {m.PENDING}
        assert rep.pending_free == [p - 8 for p in freed]
    else:
        assert set(states.values()) == {m.FREE}


# ---------------------------------------------------------------------------- totals


def test_totals_add_up(env: Env) -> None:
    needs_block_chain(env.kind)
    for s in (standard(env), grown(env)):
        rep = env.walk(s.heap)
        for seg in rep.segments:
            assert seg.complete
            assert seg.committed + sum(r.size for r in seg.uncommitted) == seg.reserved
            # blocks nested in another (a front end's, inside its back-end block) count once;
            # uncommitted ranges count where no block holds them (win7: between sentinels)
            top = outer_blocks(seg)
            gaps = sum(
                r.size
                for r in seg.uncommitted
                if not any(b.address <= r.address < b.end for b in top)
            )
            blocks = sum(b.size for b in top) + gaps
            assert seg.header_size + blocks + (seg.end - seg.blocks_end) == seg.reserved
            committed = sum(b.committed for b in top)
            assert seg.header_size + committed == min(seg.commit_end, seg.blocks_end) - seg.base
            assert seg.end - seg.blocks_end < env.alignment
        summary = rep.summary()
        assert summary.reserved == sum(seg.reserved for seg in rep.segments)
        assert summary.committed == sum(seg.committed for seg in rep.segments)
        assert summary.virtual_blocks == len(rep.large_blocks)
        assert summary.virtual == sum(lb.region_size for lb in rep.large_blocks)
        assert summary.free == sum(b.committed for b in rep.free_blocks())
        assert summary.free_list_length == len(rep.free_blocks())
        assert summary.uncommitted_ranges == sum(len(seg.uncommitted) for seg in rep.segments)
        assert 0.0 <= summary.external_fragmentation < 1.0
        assert summary.busy_blocks == len(rep.busy_blocks())


# ---------------------------------------------------------------------------- corruption

# Writers that know each layout's encoding (offsets from the declared layouts, not retyped).


def heap_magic_address(env: Env, heap: int) -> int:
    if env.kind == "builtin":
        return heap + asm.layout(env.arch).heap["magic"]
    if env.kind == "win7":
        return heap + win7_layout.HEAP.offset(env.arch, "Signature")
    return heap + WINE_HEAP.offset(env.proc.arch, "magic")


def win7_rewrite(env: Env, heap: int, block: int, units: int | None, flags: int | None) -> None:
    """Re-encode a win7 back-end header with another Size and/or Flags (a valid checksum)."""
    rep = env.walk(heap)
    enc = rep.encoding  # type: ignore[attr-defined]
    at = block + env.alignment - 8
    word = env.proc.read_u32(at) ^ enc
    u = word & 0xFFFF if units is None else units & 0xFFFF
    f = word >> 16 & 0xFF if flags is None else flags
    new = u | f << 16
    new |= ((u & 0xFF) ^ (u >> 8) ^ f) << 24
    env.proc.write_u32(at, new ^ enc)


def front_end_free(env: Env, s: Scenario, i: int) -> int:
    """Block i's user pointer; with a front end (win7), the blocks from a[18] on are LFH blocks,
    and the back end's isolated free block is a[17]."""
    return s.ptrs[17] if env.walker.front_end else s.ptrs[i]


def back_end_busy(env: Env, s: Scenario, i: int) -> int:
    """Block i's user pointer; with a front end, a busy back-end block of a[6..16] instead (each
    i maps to its own, in order: i and i + 1 stay neighbours)."""
    if not env.walker.front_end:
        return s.ptrs[i]
    return s.ptrs[6 + i % 10]


def write_size(env: Env, block: int, size: int, heap: int = 0) -> None:
    proc = env.proc
    if env.kind == "win7":
        win7_rewrite(env, heap, block, size // env.alignment, None)
    elif env.kind == "builtin":
        word = proc.read_u32(block)
        proc.write_u32(block, size | (word & 3))
    else:
        units = size // env.alignment
        proc.write(block, struct.pack("<H", units & 0xFFFF))


def write_state(env: Env, block: int, free: bool, heap: int = 0) -> None:
    """Mark a block free (magic and flag) or busy, leaving its size alone."""
    proc = env.proc
    g = env.alignment
    if env.kind == "win7":
        lfh = env.walk(heap).block_at(block + g)
        if lfh is not None and lfh.flags & BLOCK_LFH:  # UnusedBytes: 0x80 free, 0x80|n busy
            proc.write(block + g - 1, bytes([0x80 if free else 0x80 | g]))
        else:  # Flags BUSY, UnusedBytes 0 when free
            win7_rewrite(env, heap, block, None, 0 if free else 1)
            proc.write(block + g - 1, bytes([0 if free else g]))
    elif env.kind == "builtin":
        word = proc.read_u32(block)
        proc.write_u32(block, word | 1 if free else word & ~1)
        proc.write(block + 6, b"FE" if free else b"US")
    else:
        flags = proc.read(block + 2, 1)[0]
        # a free block's tail byte holds size bits 16-23 (0 here), a busy one's the slack
        proc.write(block + 2, bytes([flags | 1, 0]) if free else bytes([flags & ~1]))
        proc.write(block + 6, b"FR" if free else b"US")


def test_corrupt_heap_magic(env: Env) -> None:
    needs_block_chain(env.kind)
    s = standard(env)
    env.proc.write(heap_magic_address(env, s.heap), b"XXXX")
    rep = env.walk(s.heap)
    assert corruptions(rep, m.HEAP_HEADER) == [s.heap]
    assert live_blocks(rep) == s.live  # the rest of the walk goes on


def test_corrupt_free_list_flink_outside(env: Env) -> None:
    needs_block_chain(env.kind)
    s = standard(env)
    block = front_end_free(env, s, 48) - env.hdr
    env.proc.write_ptr(block + env.link, 0x12345678)
    rep = env.walk(s.heap)
    assert corruptions(rep, m.FREE_LIST_LINK) == [block]
    assert "outside the heap" in rep.corruptions[0].detail
    # the walk turned round at the break: every free block is still on a list
    listed = sorted(e.address for fl in rep.free_lists for e in fl.entries)
    assert listed == sorted(b.address for b in rep.free_blocks())
    assert not corruptions(rep, m.FREE_NOT_LISTED)


def test_corrupt_free_list_blink(env: Env) -> None:
    needs_block_chain(env.kind)
    s = standard(env)
    block = front_end_free(env, s, 78) - env.hdr
    env.proc.write_ptr(block + env.link + env.proc.arch.ptr_size, s.ptrs[60])
    rep = env.walk(s.heap)
    assert corruptions(rep, m.FREE_LIST_LINK) == [block]


def test_corrupt_free_list_loop(env: Env) -> None:
    needs_block_chain(env.kind)
    s = standard(env)
    block = front_end_free(env, s, 48) - env.hdr
    env.proc.write_ptr(block + env.link, block + env.link)  # flink to itself
    rep = env.walk(s.heap)
    assert corruptions(rep, m.FREE_LIST_LOOP) == [block]


def test_corrupt_block_size_into_data(env: Env) -> None:
    needs_block_chain(env.kind)
    s = standard(env)
    p50, p51 = back_end_busy(env, s, 50), back_end_busy(env, s, 51)
    block = p50 - env.hdr
    rep = env.walk(s.heap)
    b50 = rep.block_at(p50)
    assert b50 is not None
    write_size(env, block, b50.size + 4 * env.alignment, s.heap)  # inside block 51's data
    rep = env.walk(s.heap)
    assert corruptions(rep, m.BLOCK_SIZE) == [block]
    seg = rep.segments[0]
    if env.walker.resynchronises:  # block 51's PreviousSize leads back: the walk goes on
        b51 = rep.block_at(p51)
        assert seg.complete and b51 is not None and b51.user_ptr == p51
    else:
        assert not seg.complete and seg.blocks[-1].address == back_end_busy(env, s, 49) - env.hdr
    assert [lb.user_ptr for lb in rep.large_blocks] == [s.big]


@pytest.mark.parametrize("size", [0, 0x7FFF0], ids=["zero", "past-segment"])
def test_corrupt_block_size_absurd(env: Env, size: int) -> None:
    needs_block_chain(env.kind)
    s = standard(env)
    block = back_end_busy(env, s, 20) - env.hdr
    write_size(env, block, size, s.heap)
    rep = env.walk(s.heap)
    assert corruptions(rep, m.BLOCK_SIZE) == [block]


def test_corrupt_block_magic_walk_goes_on(env: Env) -> None:
    needs_block_chain(env.kind)
    s = standard(env)
    block = s.ptrs[60] - env.hdr
    # the header's check field: the magic, or win7's encoded word (SmallTagIndex / LFH code)
    env.proc.write(block + (env.alignment - 8 + 2 if env.kind == "win7" else 6), b"??")
    rep = env.walk(s.heap)
    assert corruptions(rep, m.BLOCK_HEADER) == [block]
    assert rep.block_at(s.ptrs[61]) is not None and rep.segments[0].complete


def test_free_list_entry_not_marked_free(env: Env) -> None:
    needs_block_chain(env.kind)
    s = standard(env)
    block = front_end_free(env, s, 48) - env.hdr
    write_state(env, block, free=False, heap=s.heap)
    rep = env.walk(s.heap)
    assert corruptions(rep, m.FREE_LIST_BUSY) == [block]
    # its successor still says so (headers without a PREV_FREE flag say nothing)
    successor = rep.block_at(block + 2 * env.alignment)
    assert successor is not None
    after = rep.block_at(successor.end) if env.walker.prev_free_flags else None
    assert corruptions(rep, m.PREV_FREE) == ([after.address] if after else [])


def test_free_block_not_on_a_list(env: Env) -> None:
    needs_block_chain(env.kind)
    s = standard(env)
    block = back_end_busy(env, s, 30) - env.hdr
    write_state(env, block, free=True, heap=s.heap)
    rep = env.walk(s.heap)
    assert corruptions(rep, m.FREE_NOT_LISTED) == [block]


def test_overlapping_blocks(env: Env) -> None:
    """Block 47's size swallows free block 48: the walk steps over it, the free list still
    holds it, so two blocks claim the same bytes."""
    needs_block_chain(env.kind)
    s = standard(env)
    rep = env.walk(s.heap)
    b48 = rep.block_at(front_end_free(env, s, 48))
    assert b48 is not None and b48.free
    top = outer_blocks(rep.segments[b48.segment])
    b47 = top[top.index(b48) - 1]  # block 47, or with a front end whatever precedes a[17]
    b49 = top[top.index(b48) + 1]
    write_size(env, b47.address, b47.size + b48.size, s.heap)
    rep = env.walk(s.heap)
    assert corruptions(rep, m.OVERLAP) == [b48.address]
    assert corruptions(rep, m.PREV_FREE) == [b49.address]


def test_overlapping_regions(env: Env) -> None:
    """The first segment's recorded size stretched over the large block's region."""
    needs_block_chain(env.kind)
    s = standard(env)
    rep = env.walk(s.heap)
    seg, large = rep.segments[0], rep.large_blocks[0]
    assert large.region >= seg.end
    end = large.region + 0x10000
    if env.kind == "builtin":
        field = asm.layout(env.arch).subheap.fields["size"]
        env.proc.write_ptr(seg.address + field.offset, end - seg.base)
    elif env.kind == "win7":  # NumberOfPages and LastValidEntry, consistently
        segment = win7_layout.HEAP_SEGMENT
        env.proc.write_u32(seg.address + segment.offset(env.arch, "NumberOfPages"),
                           (end - seg.base) // 0x1000)  # fmt: skip
        env.proc.write_ptr(seg.address + segment.offset(env.arch, "LastValidEntry"), end)
    else:
        offset = WINE_SUBHEAP.offset(env.proc.arch, "data_size")
        env.proc.write_ptr(seg.address + offset, end - seg.first_block)
    claimed = sorted(  # whatever starts in the stretch: the large block, later segments
        [large.region] + [g.base for g in rep.segments[1:] if seg.end <= g.base < end]
    )
    rep = env.walk(s.heap)
    assert rep.segments[0].end == end
    assert corruptions(rep, m.OVERLAP) == claimed


def test_corrupt_large_block_link(env: Env) -> None:
    needs_block_chain(env.kind)
    s = standard(env)
    large = env.walk(s.heap).large_blocks[0]
    head = large.blink  # the list head in the heap header
    env.proc.write_ptr(head, 0x7FFE0000)  # flink to a readable page that is no large block
    rep = env.walk(s.heap)
    assert corruptions(rep, m.LARGE_BLOCK) == [head]
    assert rep.large_blocks == [] and live_blocks(rep) == {
        p: n for p, n in s.live.items() if p != s.big
    }


def test_garbage_never_crashes(env: Env) -> None:
    s = standard(env)
    for heap in (0, 0x12340000, env.proc.peb, s.ptrs[3]):
        rep = env.walk(heap)
        assert not rep.ok
        json.dumps(rep.to_json())
    rng = random.Random(7)
    first = env.walk(s.heap).segments[0]  # (the NT heaps' first segment starts at the heap)
    for _ in range(40):
        offset = rng.randrange(0, first.committed - 8)
        data = rng.randbytes(rng.randrange(1, 9))
        if not env.proc.memory.is_committed(first.base + offset, len(data)):
            continue  # the segment heap: a subsegment's guard page inside the committed span
        env.proc.write(first.base + offset, data)
        rep = env.walk(s.heap)
        assert all(c.kind in CORRUPTION_KINDS for c in rep.corruptions)
        json.dumps(rep.to_json())


# ---------------------------------------------------------------------------- API


def test_json_round_trip(env: Env) -> None:
    needs_block_chain(env.kind)
    s = standard(env)
    env.proc.write(s.ptrs[60] - 2, b"??")  # one corruption so every part is filled
    rep = env.walk(s.heap)
    data = rep.to_json()
    text = json.dumps(data)
    assert json.loads(text) == data
    assert data["kind"] == env.kind and data["heap"] == s.heap and data["ok"] is False
    assert data["corruptions"][0]["kind"] == m.BLOCK_HEADER
    seg = data["segments"][0]
    assert seg["blocks"][0]["address"] == seg["first_block"]
    assert {"busy", "requested", "user_ptr", "state"} <= set(seg["blocks"][0])
    assert data["summary"]["virtual_blocks"] == 1


def test_kind_selection(env: Env) -> None:
    h = env.alloc.create_heap()
    assert detect_kind(env.proc).name == env.kind
    assert walk_heap(env.proc, h, kind=env.kind).kind == env.kind
    with pytest.raises(ValueError):
        walk_heap(env.proc, h, kind="lfh")
