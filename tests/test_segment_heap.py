"""The Windows 10 segment heap (asm/src/segheap.c) in the emulator, on x86 and x64, with its
walker (emu.heap.walkers.segment) as the independent witness.

Routing boundaries, the initial commit, LFH activation and large-block alignment are read off
the walker's report (which component holds each block) and the memory model; a random sequence
checks the walker against the allocator's own RtlWalkHeap and RtlValidateHeap after every step;
overflows and other corruptions must be reported by both the walker (at the right address, the
walk going on) and RtlValidateHeap. The NT-heap-shaped tests of test_walkers.py / test_views.py
skip this allocator (HeapWalker.block_chain); their segment-heap counterparts are here.
"""

from __future__ import annotations

import itertools
import json
import random
import struct
from dataclasses import dataclass

import pytest
from asmutil import assemble

from emu import EmulationError, Process
from emu.arch import get_arch
from emu.heap.allocator import Allocator
from emu.heap.registry import ALLOCATORS, walk_heap
from emu.heap.walkers import CORRUPTION_KINDS, HeapReport
from emu.heap.walkers import model as m
from emu.heap.walkers import segment_layout as sl
from emu.heap.walkers.segment import BACKEND, LFH, VS
from emu.views import (
    build_dt,
    build_entries,
    build_entry,
    build_summary,
    dt_address,
    filter_entries,
    render_dt,
    render_entries,
    render_entry,
    render_summary,
)
from emu.win.ntdefs import MEM_COMMIT, MEM_RESERVE

ARCHS = ("x86", "x64")


@dataclass
class Env:
    proc: Process
    alloc: Allocator
    arch: str

    def walk(self, heap: int) -> HeapReport:
        return walk_heap(self.proc, heap)

    @property
    def params(self) -> sl.SegParams:
        return sl.SEG_PARAMS[self.arch]

    @property
    def a_ptr(self) -> int:
        return get_arch(self.arch).ptr_size


@pytest.fixture(params=ARCHS)
def env(request: pytest.FixtureRequest) -> Env:
    proc = Process(request.param, time_limit=60.0)
    alloc = ALLOCATORS["segment"].allocator(proc)
    return Env(proc, alloc, request.param)


def component(rep: HeapReport, ptr: int) -> str:
    """Which component the walker says serves the block at user pointer ptr."""
    if any(lb.user_ptr == ptr for lb in rep.large_blocks):
        return "large"
    found = [b for b in rep.busy_blocks() if b.user_ptr == ptr]
    assert len(found) == 1, f"0x{ptr:x} is no busy block of the walk"
    return found[0].component


def live_blocks(rep: HeapReport) -> dict[int, int]:
    out = {b.user_ptr: int(b.requested or 0) for b in rep.busy_blocks()}
    out.update({lb.user_ptr: lb.size for lb in rep.large_blocks})
    return out


def assert_matches_allocator(env: Env, heap: int, rep: HeapReport) -> None:
    """The walk is RtlWalkHeap's, record for record: busy blocks (user pointer, request), free
    blocks (a free VS chunk from after its header, a committed run of a free page range), the
    regions and their commit, the uncommitted runs."""
    entries = env.alloc.walk(heap)
    assert {(e.address, e.size) for e in entries if e.busy} == set(live_blocks(rep).items())
    assert sorted((e.address, e.size) for e in entries if e.kind == "free") == sorted(
        (b.user_ptr, b.end - b.user_ptr) for b in rep.free_blocks()
    )
    regions = [(e.address, e.committed_size, e.uncommitted_size, e.first_entry, e.last_entry)
               for e in entries if e.region]  # fmt: skip
    ours = [(s.base, s.committed, s.reserved - s.committed, s.first_block, s.end)
            for s in rep.segments]  # fmt: skip
    assert ours == regions
    uncommitted = sorted((e.address, e.size) for e in entries if e.uncommitted)
    assert uncommitted == sorted((r.address, r.size) for s in rep.segments for r in s.uncommitted)
    # large blocks come last, in address order
    bigs = {lb.user_ptr for lb in rep.large_blocks}
    large = [e.address for e in entries if e.busy and e.address in bigs]
    assert large == [lb.user_ptr for lb in rep.large_blocks] == sorted(large)


def corruptions(rep: HeapReport, kind: str) -> list[int]:
    return [c.address for c in rep.corruptions if c.kind == kind]


# ---------------------------------------------------------------------------- creation


def test_initial_commit_is_the_heap_structure(env: Env) -> None:
    proc = env.proc
    n = len(proc.syscalls)
    heap = env.alloc.create_heap()
    calls = [(r.args.get("AllocationType"), r.details) for r in proc.syscalls[n:]]
    size = sl.SEGMENT_HEAP.size(get_arch(env.arch))
    assert size == {"x86": 0x580, "x64": 0x800}[env.arch]
    assert calls[0][0] == MEM_RESERVE and calls[0][1]["base"] == heap
    assert calls[1][0] == MEM_COMMIT and calls[1][1]["base_in"] == heap
    assert calls[1][1]["size_in"] == size  # sizeof(_SEGMENT_HEAP), not a page more
    assert len(calls) == 2
    region = proc.memory.region_at(heap)
    assert region is not None and region.base == heap and region.size > 0x1000
    assert proc.memory.query(heap).State == MEM_COMMIT
    assert proc.memory.query(heap + 0x1000).State == MEM_RESERVE  # the LFH context extension
    rep = env.walk(heap)
    assert rep.ok, rep.corruptions
    assert rep.header["Signature"] == 0xDDEEDDEE and rep.segments == []
    assert rep.header["UncommittedBase"] == heap + 0x1000
    assert rep.header["ReservedLimit"] == heap + region.size


# ---------------------------------------------------------------------------- routing


def test_routing_boundaries(env: Env) -> None:
    """The last size each component serves and the first the next one serves."""
    a = env.alloc
    h = a.create_heap()
    # LFH: 17 blocks of the largest LFH size activate its bucket; one byte more never does
    lfh_last = [a.alloc(h, sl.DEFAULT_LFH_MAX) for _ in range(17)]
    vs_first = [a.alloc(h, sl.DEFAULT_LFH_MAX + 1) for _ in range(17)]
    sizes = {
        "vs_last": sl.DEFAULT_VS_MAX,
        "backend_first": sl.DEFAULT_VS_MAX + 1,
        "backend_last": sl.DEFAULT_BACKEND_MAX,
        "large_first": sl.DEFAULT_BACKEND_MAX + 1,
    }
    ptrs = {name: a.alloc(h, n) for name, n in sizes.items()}
    rep = env.walk(h)
    assert rep.ok, rep.corruptions
    assert [component(rep, p) for p in lfh_last] == [VS] * 16 + [LFH]
    assert {component(rep, p) for p in vs_first} == {VS}
    assert component(rep, ptrs["vs_last"]) == VS
    assert component(rep, ptrs["backend_first"]) == BACKEND
    assert component(rep, ptrs["backend_last"]) == BACKEND
    assert component(rep, ptrs["large_first"]) == "large"
    for name, n in sizes.items():
        assert a.size(h, ptrs[name]) == n
    assert a.validate(h)
    assert_matches_allocator(env, h, rep)


def test_lfh_activation_on_the_17th_same_size_allocation(env: Env) -> None:
    a = env.alloc
    h = a.create_heap()
    ptrs = [a.alloc(h, 0x40) for _ in range(20)]
    rep = env.walk(h)
    assert [component(rep, p) for p in ptrs] == [VS] * 16 + [LFH] * 4
    lfh = [s for s in rep.subsegments if s.component == LFH]
    assert len(lfh) == 1 and lfh[0].block_size == 0x40
    assert lfh[0].block_count - lfh[0].free_count == 4
    bucket = 4  # 0x40 bytes: LFH bucket 4 (16-byte steps)
    buckets = rep.heap + 0x80 + {"x86": 0x2C0, "x64": 0x340}[env.arch]
    value = env.proc.read_ptr(buckets + bucket * get_arch(env.arch).ptr_size)
    assert value and not value & 1  # a _HEAP_LFH_BUCKET pointer once active
    assert_matches_allocator(env, h, rep)


def test_large_blocks_are_64k_aligned_reservations(env: Env) -> None:
    a = env.alloc
    h = a.create_heap()
    sizes = (0x80000, 0x100000, 0x123456)
    ptrs = [a.alloc(h, n) for n in sizes]
    rep = env.walk(h)
    assert rep.ok, rep.corruptions
    assert [lb.user_ptr for lb in rep.large_blocks] == sorted(ptrs)
    for lb in rep.large_blocks:
        n = dict(zip(ptrs, sizes, strict=True))[lb.user_ptr]
        assert lb.region % sl.LARGE_ALIGN == 0 and lb.size == n == a.size(h, lb.user_ptr)
        pages = (n + 0xFFF) // 0x1000 * 0x1000
        assert lb.block_size == pages and lb.region_size == pages + sl.LARGE_GUARD
        region = env.proc.memory.region_at(lb.region)
        assert region is not None and region.base == lb.region and region.size >= lb.region_size
        assert env.proc.memory.query(lb.region + pages).State == MEM_RESERVE  # the guard page
    assert_matches_allocator(env, h, rep)


# ---------------------------------------------------------------------------- guard pages


def range_units(env: Env, rep: HeapReport, address: int) -> int:
    """UnitSize of the page range starting at address (from its descriptor)."""
    seg = next(s for s in rep.segments if s.contains(address))
    a = get_arch(env.arch)
    desc = sl.HEAP_PAGE_RANGE_DESCRIPTOR
    at = seg.address + (address - seg.base) // sl.PAGE * desc.size(a)
    return env.proc.read(at + desc.offset(a, "UnitSize"), 1)[0]


def poke(env: Env, address: int) -> None:
    """Writes one byte at address from emulated code."""
    reg = "eax" if env.arch == "x86" else "rax"
    f = assemble(env.proc, f"mov {reg}, {address:#x}; mov byte ptr [{reg}], 0x41; ret")
    env.proc.call(f)


def test_guard_page_after_subsegments_of_64k_or_more(env: Env) -> None:
    """Yason's guard pages: a VS subsegment (always >= 64 KiB) and a 64 KiB LFH subsegment end
    in an uncommitted page of their page range, where an overflow off their end faults; a
    smaller LFH subsegment and a back-end block have none."""
    a = env.alloc
    h = a.create_heap()
    vs_ptr = a.alloc(h, 0x100)  # VS (the bucket is inactive)
    big = [a.alloc(h, 0x3000) for _ in range(17)]  # the 17th: a 64 KiB LFH subsegment
    small = [a.alloc(h, 0x40) for _ in range(17)]  # the 17th: a 1-page LFH subsegment
    back = a.alloc(h, 0x30000)
    rep = env.walk(h)
    assert rep.ok, rep.corruptions
    assert component(rep, vs_ptr) == VS and component(rep, big[16]) == LFH
    assert component(rep, small[16]) == LFH and component(rep, back) == BACKEND
    subs = {s.address: s for s in rep.subsegments}
    guarded = [s for s in subs.values() if s.size >= sl.SUBSEGMENT_GUARD_MIN]
    assert {s.component for s in guarded} == {VS, LFH}
    for sub in guarded:
        assert (
            sub.guard == sl.PAGE and range_units(env, rep, sub.address) == sub.size // sl.PAGE + 1
        )
        info = env.proc.memory.query(sub.end)
        assert info.State == MEM_RESERVE  # reserved, not committed
        assert env.proc.memory.query(sub.end - sl.PAGE).State == MEM_COMMIT
        assert any(r.address == sub.end and r.size == sl.PAGE for r in rep.segments[0].uncommitted)
        env.proc.write(sub.end - 1, b"\x00")  # the subsegment's last byte is writable (slack)
        with pytest.raises(EmulationError) as e:
            poke(env, sub.end)  # one byte past the subsegment's end
        assert e.value.address == sub.end and e.value.access == "write"
    smaller = [s for s in subs.values() if s.size < sl.SUBSEGMENT_GUARD_MIN]
    assert smaller and all(s.component == LFH for s in smaller)
    for sub in smaller:
        assert sub.guard == 0 and range_units(env, rep, sub.address) == sub.size // sl.PAGE
    assert range_units(env, rep, back) == 0x30000 // sl.PAGE
    rep = env.walk(h)
    assert rep.ok, rep.corruptions
    assert_matches_allocator(env, h, rep)
    assert a.validate(h)
    text = render_entries(build_entries(env.proc, h, allocator=env.alloc))
    w = 2 * env.a_ptr
    for sub in guarded:
        assert f"        {sub.end:0{w}x}: 00001000 - guard page." in text


def test_freeing_a_subsegment_frees_its_guard_page(env: Env) -> None:
    a = env.alloc
    h = a.create_heap()
    keep = a.alloc(h, 0x30000)  # a back-end block, so the segment stays
    ptrs = [a.alloc(h, 0x4000) for _ in range(3)]  # one 64 KiB VS subsegment
    rep = env.walk(h)
    assert rep.ok, rep.corruptions
    (sub,) = [s for s in rep.subsegments if s.component == VS]
    assert sub.guard == sl.PAGE and all(sub.address < p < sub.end for p in ptrs)
    guard = sub.end
    for p in ptrs:
        assert a.free(h, p)
        rep = env.walk(h)
        assert rep.ok, rep.corruptions
        assert_matches_allocator(env, h, rep)
        assert a.validate(h)
    assert not [s for s in rep.subsegments if s.component == VS]
    assert env.proc.memory.query(guard).State == MEM_RESERVE
    # the guard page went back to the back end with the subsegment: a free range holds it
    seg = rep.segments[0]
    free_pages = [(b.address, b.end) for b in seg.blocks if b.free]
    free_pages += [(r.address, r.end) for r in seg.uncommitted]
    assert any(lo <= guard < hi for lo, hi in free_pages)
    assert component(rep, keep) == BACKEND
    again = a.alloc(h, 0x100)  # a new VS subsegment: with its guard page again
    rep = env.walk(h)
    assert rep.ok, rep.corruptions
    (sub,) = [s for s in rep.subsegments if s.component == VS]
    assert sub.address < again < sub.end and sub.guard == sl.PAGE
    assert env.proc.memory.query(sub.end).State == MEM_RESERVE
    assert_matches_allocator(env, h, rep)


# ---------------------------------------------------------------------------- the walker


def test_standard_sequence(env: Env) -> None:
    """test_walkers.standard()'s sequence: the walker sees what the allocator returned."""
    a = env.alloc
    h = a.create_heap()
    ptrs = [a.alloc(h, 0x100) for _ in range(100)]
    live = dict.fromkeys(ptrs, 0x100)
    for i in (17, 18, 48, 78):
        assert a.free(h, ptrs[i])
        del live[ptrs[i]]
    big = a.alloc(h, 0x100000)
    live[big] = 0x100000
    moved = a.realloc(h, ptrs[5], 0x300)
    del live[ptrs[5]]
    live[moved] = 0x300
    rep = env.walk(h)
    assert rep.ok, rep.corruptions
    assert live_blocks(rep) == live
    assert {component(rep, p) for p in ptrs[:16] if p in live} == {VS}
    assert {component(rep, p) for p in ptrs[16:] if p in live} == {LFH}
    assert [lb.user_ptr for lb in rep.large_blocks] == [big]
    lfh = [s for s in rep.subsegments if s.component == LFH]
    assert sum(s.block_count - s.free_count for s in lfh) == 100 - 16 - 4
    assert_matches_allocator(env, h, rep)
    summary = rep.summary()
    assert summary.busy_blocks == len(rep.busy_blocks()) == len(live) - 1
    assert summary.reserved == sl.SEGMENT_SIZE * len(rep.segments)
    for seg in rep.segments:
        assert seg.committed + sum(r.size for r in seg.uncommitted) == seg.reserved
        for b in seg.blocks:
            assert seg.first_block <= b.address and b.end <= seg.end
    blocks = sorted(rep.blocks, key=lambda b: b.address)
    for x, y in itertools.pairwise(blocks):
        assert x.end <= y.address  # no two blocks overlap
    json.loads(json.dumps(rep.to_json()))


def test_second_segment_and_back_end_coalescing(env: Env) -> None:
    a = env.alloc
    h = a.create_heap()
    ptrs = [a.alloc(h, 0x70000) for _ in range(5)]
    rep = env.walk(h)
    assert len(rep.segments) >= 2 and {component(rep, p) for p in ptrs} == {BACKEND}
    assert a.free(h, ptrs[0]) and a.free(h, ptrs[1])
    rep = env.walk(h)
    assert rep.ok, rep.corruptions
    assert live_blocks(rep) == dict.fromkeys(ptrs[2:], 0x70000)
    assert_matches_allocator(env, h, rep)


def test_random_sequence_walker_agrees_after_every_step(env: Env) -> None:
    rng = random.Random(2024)
    a = env.alloc
    h = a.create_heap()
    live: dict[int, int] = {}
    choices = [0x18, 0x20, 0x40, 0x100, 0x3FF0, 0x4000, 0x10000, 0x20001, 0x50000, 0x80000]
    for step in range(120):
        r = rng.random()
        if live and r < 0.35:
            p = rng.choice(sorted(live))
            assert a.free(h, p)
            del live[p]
        elif live and r < 0.45:
            p = rng.choice(sorted(live))
            n = rng.choice(choices)
            q = a.realloc(h, p, n)
            assert q
            del live[p]
            live[q] = n
        else:
            n = rng.choice(choices) if rng.random() < 0.5 else rng.randint(1, 0x2000)
            p = a.alloc(h, n)
            assert p
            live[p] = n
        rep = env.walk(h)
        assert rep.ok, (step, rep.corruptions)
        assert a.validate(h), step
        assert live_blocks(rep) == live, step
        assert_matches_allocator(env, h, rep)


# ---------------------------------------------------------------------------- corruption


def test_overflow_into_a_vs_header(env: Env) -> None:
    a = env.alloc
    h = a.create_heap()
    p = a.alloc(h, 0x100)
    q = a.alloc(h, 0x100)
    hdr = env.params.vs_unit
    assert q == p + 0x100 + hdr  # p's data ends where q's chunk header begins
    env.proc.write(p, b"A" * 0x100)
    assert env.walk(h).ok and a.validate(h)
    env.proc.write(p + 0x100, b"A" * env.proc.arch.ptr_size)  # q's encoded HeaderBits
    rep = env.walk(h)
    assert corruptions(rep, m.BLOCK_HEADER) == [q - hdr]
    assert not a.validate(h)
    assert p in live_blocks(rep)  # what came before is still reported


def test_overflow_into_a_neighbouring_lfh_slot(env: Env) -> None:
    a = env.alloc
    h = a.create_heap()
    ptrs = [a.alloc(h, 0x20) for _ in range(17)]
    rep = env.walk(h)
    assert component(rep, ptrs[16]) == LFH
    busy = set(live_blocks(rep))
    victim = next(p for p in sorted(busy) if component(rep, p) == LFH and p + 0x20 not in busy)
    env.proc.write(victim, b"B" * 0x20)
    assert env.walk(h).ok and a.validate(h)
    env.proc.write(victim + 0x20, b"B" * 8)  # the free slot after it
    rep = env.walk(h)
    assert corruptions(rep, m.BLOCK_HEADER) == [victim + 0x20]
    assert not a.validate(h)
    assert live_blocks(rep) == {p: 0x20 for p in ptrs}  # the walk went on


def test_overflow_into_lfh_slack(env: Env) -> None:
    a = env.alloc
    h = a.create_heap()
    ptrs = [a.alloc(h, 0x18) for _ in range(17)]  # 0x20-byte slots: slack and a trailer
    env.proc.write(ptrs[16], b"C" * 0x19)
    rep = env.walk(h)
    assert corruptions(rep, m.BLOCK_HEADER) == [ptrs[16]]
    assert not a.validate(h)


def test_corrupt_signatures(env: Env) -> None:
    a = env.alloc
    h = a.create_heap()
    p = a.alloc(h, 0x100)
    seg = env.walk(h).segments[0]
    ptr = env.proc.arch.ptr_size
    sig_at = seg.base + sl.HEAP_PAGE_SEGMENT.offset(get_arch(env.arch), "Signature")
    env.proc.write(sig_at, b"\x00" * ptr)
    rep = env.walk(h)
    assert corruptions(rep, m.SEGMENT) == [seg.base] and p in live_blocks(rep)
    assert not a.validate(h)
    env.proc.write(h + sl.SEGMENT_HEAP.offset(get_arch(env.arch), "Signature"), b"XXXX")
    rep = env.walk(h)
    assert corruptions(rep, m.HEAP_HEADER) == [h]


def test_corrupt_descriptor_and_lfh_free_count(env: Env) -> None:
    a = env.alloc
    h = a.create_heap()
    ptrs = [a.alloc(h, 0x30) for _ in range(20)]
    big = a.alloc(h, 0x30000)
    rep = env.walk(h)
    seg = rep.segments[0]
    lay = get_arch(env.arch)
    desc = sl.HEAP_PAGE_RANGE_DESCRIPTOR
    unit = (big - seg.base) >> 12
    d = seg.base + unit * desc.size(lay)
    env.proc.write(d + desc.offset(lay, "TreeSignature"), b"\x00\x00\x00\x00")
    sub = next(s for s in rep.subsegments if s.component == LFH)
    count_at = sub.address + sl.HEAP_LFH_SUBSEGMENT.offset(lay, "FreeCount")
    env.proc.write(count_at, struct.pack("<H", sub.free_count + 1))
    rep = env.walk(h)
    assert corruptions(rep, m.DESCRIPTOR) == [d]
    assert corruptions(rep, m.LFH_BITMAP) == [sub.address]
    assert set(ptrs) <= set(live_blocks(rep))
    assert not a.validate(h)


def test_free_vs_chunk_missing_from_its_tree(env: Env) -> None:
    a = env.alloc
    h = a.create_heap()
    ptrs = [a.alloc(h, 0x200 + 0x10 * i) for i in range(6)]
    assert a.free(h, ptrs[2])
    rep = env.walk(h)
    assert rep.ok, rep.corruptions
    root = h + 0x200 if env.arch == "x86" else h + 0x280  # VsContext
    root += sl.HEAP_VS_CONTEXT.offset(get_arch(env.arch), "FreeChunkTree.Root")
    env.proc.write(root, b"\x00" * env.proc.arch.ptr_size)
    rep = env.walk(h)
    chunk = ptrs[2] - env.params.vs_unit
    assert chunk in corruptions(rep, m.FREE_NOT_LISTED)
    assert not a.validate(h)


def test_garbage_never_crashes(env: Env) -> None:
    a = env.alloc
    h = a.create_heap()
    for n in (0x20,) * 20 + (0x300, 0x5000, 0x30000, 0x90000):
        a.alloc(h, n)
    for heap in (0, 0x12340000, env.proc.peb):
        rep = env.walk(heap)
        assert not rep.ok
        json.dumps(rep.to_json())
    rng = random.Random(11)
    seg = env.walk(h).segments[0]
    for _ in range(60):
        target = rng.choice([h, seg.base, seg.first_block])
        offset = rng.randrange(0, 0x800)
        env.proc.write(target + offset, rng.randbytes(rng.randrange(1, 9)))
        rep = env.walk(h)
        assert all(c.kind in CORRUPTION_KINDS for c in rep.corruptions)
        json.dumps(rep.to_json())


# ---------------------------------------------------------------------------- views


def test_dt_segment_heap(env: Env) -> None:
    a = env.alloc
    h = a.create_heap()
    view = build_dt(env.proc, h)
    rows = {r.name: r for r in view.rows}
    lay = get_arch(env.arch)
    assert view.struct == "_SEGMENT_HEAP"
    for name, f in sl.SEGMENT_HEAP.fields.items():
        assert rows[name].offset == f.offset(lay) and rows[name].size == f.size(lay)
    assert rows["Signature"].value == 0xDDEEDDEE
    assert rows["SegContexts"].offset == 0x100 and not rows["SegContexts"].type.startswith("u")
    ctx = sl.HEAP_SEG_CONTEXT
    second = 0x100 + ctx.size(lay) + ctx.offset(lay, "Heap")
    assert rows["SegContexts[1].Heap"].offset == second and rows["SegContexts[1].Heap"].value == h
    offsets = [r.offset for r in view.rows]
    assert offsets == sorted(offsets)
    assert "Signature" in render_dt(view)


def test_entry_decodes_a_vs_chunk(env: Env) -> None:
    a = env.alloc
    h = a.create_heap()
    p = a.alloc(h, 0x123)
    got = build_entry(env.proc, p + 0x10, allocator=a)
    unit = env.params.vs_unit
    assert got.address == p - unit and got.user_ptr == p and got.requested == 0x123
    assert [f.name for f in got.fields] == ["HeaderBits", "AllocatedChunkBits"]
    assert "HeapKey" in got.fields[0].meaning and "Requested size" in render_entry(got)


def test_summary_counts_the_segment_heap(env: Env) -> None:
    a = env.alloc
    h = a.create_heap()
    for n in (0x40,) * 20 + (0x5000, 0x30000, 0x90000):
        a.alloc(h, n)
    view = build_summary(env.proc, allocator=a)
    row = next(r for r in view.rows if r.heap == h)
    assert row.virtual_blocks == 1 and row.busy_blocks == 22 and row.corruptions == 0
    assert row.reserved == sl.SEGMENT_SIZE and row.committed + row.uncommitted == row.reserved


@dataclass
class Story:
    """Every component busy: 16 VS chunks and 24 LFH slots of 0x40 (the 17th activates the
    bucket), a back-end range, a large block; a VS chunk, two LFH slots, a range freed."""

    heap: int
    ptrs: list[int]
    pages: int
    big: int
    freed: list[int]


def story(env: Env) -> Story:
    a = env.alloc
    h = a.create_heap()
    ptrs = [a.alloc(h, 0x40) for _ in range(40)]
    pages, pages2, big = a.alloc(h, 0x30000), a.alloc(h, 0x22000), a.alloc(h, 0x90000)
    freed = [ptrs[3], ptrs[20], ptrs[30]]
    for p in (*freed, pages2):
        assert a.free(h, p)
    return Story(h, ptrs, pages, big, freed)


def test_summary_components_add_up(env: Env) -> None:
    st = story(env)
    rep = env.walk(st.heap)
    assert rep.ok, rep.corruptions
    view = build_summary(env.proc, allocator=env.alloc)
    row = next(r for r in view.rows if r.heap == st.heap)
    c = {u.component: u for u in row.components}
    assert [u.title for u in row.components] == ["Back end", "VS", "LFH"]
    assert (c[BACKEND].busy_blocks, c[VS].busy_blocks, c[LFH].busy_blocks) == (1, 15, 22)
    assert c[BACKEND].busy_bytes == 0x30000 and c[BACKEND].subsegments == 0
    subs = {k: [s for s in rep.subsegments if s.component == k] for k in (VS, LFH)}
    for k in (VS, LFH):  # the walker's sums
        assert c[k].subsegments == len(subs[k]) and c[k].size == sum(s.size for s in subs[k])
        blocks = [b for b in rep.busy_blocks() if b.component == k]
        assert c[k].busy_bytes == sum(b.size for b in blocks)
    assert c[LFH].free_blocks == sum(s.free_count for s in subs[LFH])
    assert c[VS].free_blocks == sum(s.free_count for s in subs[VS]) >= 1
    # what the segments commit is their descriptor pages and what the components hold
    pages = env.params.first_descriptor * sl.PAGE * len(rep.segments)
    assert pages + sum(u.size for u in row.components) == row.committed
    # every busy block RtlWalkHeap reports is counted once, in one component
    walked = [e for e in env.alloc.walk(st.heap) if e.busy]
    assert sum(u.busy_blocks for u in row.components) + row.virtual_blocks == len(walked)
    assert row.virtual_blocks == 1 and row.virtual >= 0x90000
    text = render_summary(view)
    line = next(ln for ln in text.splitlines() if ln.startswith(f"{st.heap:0{2 * env.a_ptr}x} 0"))
    cells = [int(x) for x in line.split()[2:]]
    assert cells == [
        row.reserved // 1024,
        row.committed // 1024,
        0x30000 // 1024,
        c[VS].size // 1024,
        c[LFH].size // 1024,
        row.virtual // 1024,
        1,
        row.busy_blocks,
        0,
    ]
    assert "Back end" in text.splitlines()[1] and "LFH" in text.splitlines()[1]
    assert f"LFH: 1 subsegment(s) of {c[LFH].size:#x} bytes; 22 busy" in text


def test_entries_grouped_by_component(env: Env) -> None:
    st = story(env)
    rep = env.walk(st.heap)
    view = build_entries(env.proc, st.heap, allocator=env.alloc)
    groups = {g.component: g for g in view.components}
    assert list(groups) == [BACKEND, VS, LFH]
    lines = [(g.component, e) for g in view.components for u in g.units for e in u.entries]
    busy = {(e.user_ptr, e.requested) for _, e in lines if e.state == "busy"}
    busy |= {(lb.user_ptr, lb.requested) for lb in view.large_blocks}
    entries = env.alloc.walk(st.heap)
    assert busy == {(e.address, e.size) for e in entries if e.busy}  # RtlWalkHeap's, all of them
    free = {(e.user_ptr, e.address + e.size - e.user_ptr) for _, e in lines if e.state == "free"}
    assert {(e.address, e.size) for e in entries if e.kind == "free"} <= free
    for k, e in lines:  # each block in the group of the component the walker says
        b = next((b for b in rep.blocks if b.address == e.address), None)
        assert (b is None and k == LFH) or (b is not None and b.component == k)
    # an LFH subsegment lists every slot, the freed ones free
    for unit in groups[LFH].units:
        sub = next(s for s in rep.subsegments if s.address == unit.address)
        assert unit.slotted and len(unit.entries) == sub.block_count
        assert [e.address for e in unit.entries] == [
            sub.first_block + i * sub.block_size for i in range(sub.block_count)
        ]
        assert sum(e.state == "free" for e in unit.entries) == sub.free_count
    lfh_free = {e.user_ptr for _, e in lines if e.state == "free"}
    assert {st.freed[1], st.freed[2]} <= lfh_free
    back = groups[BACKEND].units[0]
    assert [(e.user_ptr, e.requested) for e in back.entries if e.state == "busy"] == [
        (st.pages, 0x30000)
    ]
    assert [(r.address, r.size) for r in back.uncommitted] == [
        (r.address, r.size) for r in rep.segments[0].uncommitted
    ]
    text = render_entries(view)
    w = 2 * env.a_ptr
    sub = groups[LFH].units[0]
    assert f"      {sub.title}:" in text and "slots of 0x40 bytes" in sub.title
    assert f"        {st.freed[1]:0{w}x}: 00040 - free" in text
    assert f"        {st.ptrs[25]:0{w}x}: 00040 - busy (40)" in text
    assert "Back end (1 unit(s))" in text and "Virtual blocks" in text
    assert "Heap entries for Segment" not in text  # grouped instead of one flat listing
    only_free = filter_entries(view, state="free")  # (!heap -flt) applies to the groups too
    kept = [e for g in only_free.components for u in g.units for e in u.entries]
    assert kept and all(e.state == "free" for e in kept)
    assert {st.freed[1], st.freed[2]} <= {e.user_ptr for e in kept}


def test_entry_anywhere(env: Env) -> None:
    st = story(env)
    rep = env.walk(st.heap)
    a = env.alloc
    subs = {s.component: s for s in rep.subsegments}
    vs = build_entry(env.proc, st.ptrs[5] + 3, allocator=a)
    assert vs.subsegment == subs[VS].address and vs.requested == 0x40
    slot = build_entry(env.proc, st.ptrs[25] + 0x3F, allocator=a)
    assert (slot.user_ptr, slot.requested, slot.subsegment) == (
        st.ptrs[25],
        0x40,
        subs[LFH].address,
    )
    free = build_entry(env.proc, st.freed[1] + 8, allocator=a)  # no block of the walk
    assert (free.address, free.state, free.subsegment) == (st.freed[1], "free", subs[LFH].address)
    key = rep.header["MemStats.LfhKey"]
    assert free.fields[0].value == (st.freed[1] ^ key) & ((1 << (8 * env.a_ptr)) - 1)
    assert free.prev_block == st.freed[1] - 0x40 and "free slot" in free.flag_names[0]
    assert f"Subsegment         : 0x{subs[LFH].address:0{2 * env.a_ptr}x}" in render_entry(free)
    back = build_entry(env.proc, st.pages + 0x2FFFF, allocator=a)
    assert (back.user_ptr, back.requested, back.subsegment) == (st.pages, 0x30000, None)
    big = build_entry(env.proc, st.big + 0x8FFFF, allocator=a)
    assert big.large and big.user_ptr == st.big and big.requested == 0x90000


def test_dt_of_every_segment_structure(env: Env) -> None:
    """Each structure segment_layout declares, dumped where the heap has one, with Windows'
    names (x86 offsets: seed 004's dump) and the values the walker decodes."""
    st = story(env)
    rep = env.walk(st.heap)
    lay, h = get_arch(env.arch), st.heap
    x86 = env.arch == "x86"
    mask = (1 << (8 * env.a_ptr)) - 1

    def dt(struct: str, at: int) -> dict[str, int | None]:
        view = build_dt(env.proc, at, struct=struct)
        assert view.struct == struct and render_dt(view).startswith(f"{struct} at ")
        for name, f in sl.STRUCTS[struct].fields.items():
            row = next(r for r in view.rows if r.name == name)
            assert (row.offset, row.size) == (f.offset(lay), f.size(lay))
        return {r.name: r.value for r in view.rows}

    ctx = dt("_HEAP_SEG_CONTEXT", h + 0x100)  # SegContexts[0]
    seg = rep.segments[0].address
    assert ctx["Heap"] == h and ctx["SegmentListHead.Flink"] == seg and ctx["SegmentCount"] == 1
    assert sl.HEAP_SEG_CONTEXT.offset(lay, "Heap") == (0x24 if x86 else 0x38)
    page = dt("_HEAP_PAGE_SEGMENT", seg)
    want = ((seg >> 20) ^ rep.header["MemStats.HeapKey"] ^ h ^ sl.SEGMENT_SIGNATURE_XOR) & mask
    assert page["Signature"] == want
    assert page["ListEntry.Flink"] == h + 0x100 + sl.HEAP_SEG_CONTEXT.offset(
        lay, "SegmentListHead.Flink"
    )
    # the back-end range's descriptor: unit (range - segment) / page
    dsize = sl.HEAP_PAGE_RANGE_DESCRIPTOR.size(lay)
    desc = dt("_HEAP_PAGE_RANGE_DESCRIPTOR", seg + (st.pages - seg) // sl.PAGE * dsize)
    flags = sl.RANGE_ALLOCATED | sl.RANGE_COMMITTED | sl.RANGE_FIRST
    assert (desc["RangeFlags"], desc["UnitSize"], desc["TreeSignature"]) == (
        flags,
        0x30,
        sl.RANGE_SIGNATURE,
    )
    vs_sub = next(s for s in rep.subsegments if s.component == VS)
    vs = dt("_HEAP_VS_SUBSEGMENT", vs_sub.address)
    assert vs["Size"] is not None and vs["Size"] << env.params.vs_unit_shift == vs_sub.size
    assert vs["Signature"] == ((vs["Size"] ^ sl.VS_SIGNATURE_XOR) & 0x7FFF) | 0x8000
    unit = env.params.vs_unit
    chunk = st.ptrs[5] - unit
    hdr = dt("_HEAP_VS_CHUNK_HEADER", chunk)
    assert hdr["HeaderBits"] is not None
    bits = (hdr["HeaderBits"] ^ chunk ^ rep.header["MemStats.HeapKey"]) & mask
    size_units = (bits >> 1) & 0x7FFF if x86 else (bits >> 16) & 0xFFFF
    block = next(b for b in rep.blocks if b.address == chunk)
    assert size_units * unit == block.size
    free_chunk = next(b for b in rep.free_blocks() if b.component == VS)
    dt("_HEAP_VS_CHUNK_FREE_HEADER", free_chunk.address)
    vctx = dt("_HEAP_VS_CONTEXT", h + (0x200 if x86 else 0x280))
    assert vctx["SubsegmentList.Flink"] == vs_sub.address
    lfh_sub = next(s for s in rep.subsegments if s.component == LFH)
    lfh = dt("_HEAP_LFH_SUBSEGMENT", lfh_sub.address)
    assert (lfh["BlockCount"], lfh["FreeCount"]) == (lfh_sub.block_count, lfh_sub.free_count)
    key = (rep.header["MemStats.LfhKey"] ^ (lfh_sub.address >> 12)) & 0xFFFFFFFF
    assert lfh["BlockOffsets"] is not None and (lfh["BlockOffsets"] ^ key) & 0xFFFF == 0x40
    assert sl.HEAP_LFH_SUBSEGMENT.offset(lay, "BlockCount") == (0x12 if x86 else 0x22)
    lctx = dt("_HEAP_LFH_CONTEXT", h + (0x2C0 if x86 else 0x340))
    (buckets,) = sl.NESTED["_HEAP_LFH_CONTEXT"]  # Buckets[129], one per 16 bytes of request
    at = buckets.x86 if x86 else buckets.x64
    bucket = env.proc.read_ptr(h + (0x2C0 if x86 else 0x340) + at + (0x40 // 16) * env.a_ptr)
    assert lctx["BackendCtx"] == h + 0x100 and bucket and not bucket & 1
    b = dt("_HEAP_LFH_BUCKET", bucket)
    assert (
        b["State.AvailableSubsegmentList.Flink"] == lfh_sub.address
        or b["State.FullSubsegmentList.Flink"] == lfh_sub.address
    )
    root = env.proc.read_ptr(h + sl.SEGMENT_HEAP.offset(lay, "LargeAllocMetadata.Root"))
    large = dt("_HEAP_LARGE_ALLOC_DATA", root)
    assert large["VirtualAddress"] is not None
    assert large["VirtualAddress"] & ~sl.LARGE_UNUSED_MASK & mask == st.big
    assert set(ALLOCATORS["segment"].walker.struct_names()) == {"_SEGMENT_HEAP", *sl.STRUCTS}
    # without an address: where this heap has one
    found = {n: dt_address(env.proc, h, n) for n in ALLOCATORS["segment"].walker.struct_names()
             if n != "_HEAP_LFH_BUCKET"}  # fmt: skip
    assert found["_HEAP_SEG_CONTEXT"] == h + 0x100 and found["_HEAP_PAGE_SEGMENT"] == seg
    assert found["_HEAP_VS_SUBSEGMENT"] == vs_sub.address
    assert found["_HEAP_LFH_SUBSEGMENT"] == lfh_sub.address
    assert found["_HEAP_LARGE_ALLOC_DATA"] == root
    assert found["_HEAP_VS_CHUNK_HEADER"] == rep.blocks[0].address == vs_sub.first_block
    first = dt("_HEAP_PAGE_RANGE_DESCRIPTOR", found["_HEAP_PAGE_RANGE_DESCRIPTOR"])
    assert first["RangeFlags"] == flags | sl.RANGE_VS  # the VS subsegment's range comes first


# ---------------------------------------------------------------------------- options, scenario


def lfh_order(arch: str, **options: int) -> list[int]:
    proc = Process(arch, time_limit=60.0)
    a = ALLOCATORS["segment"].allocator(proc, **options)
    h = a.create_heap()
    ptrs = [a.alloc(h, 0x40) for _ in range(40)]
    assert walk_heap(proc, h).ok
    return [p - ptrs[16] for p in ptrs[16:]]  # LFH slots, relative to the first


@pytest.mark.parametrize("arch", ARCHS)
def test_seed_option_repeats_and_changes_the_slot_order(arch: str) -> None:
    assert lfh_order(arch) == lfh_order(arch) == lfh_order(arch, seed=sl.DEFAULT_SEED)
    assert lfh_order(arch, seed=7) == lfh_order(arch, seed=7) != lfh_order(arch)


@pytest.mark.parametrize("arch", ARCHS)
def test_key_and_threshold_options(arch: str) -> None:
    proc = Process(arch, time_limit=60.0)
    a = ALLOCATORS["segment"].allocator(proc, heap_key=0x1234, lfh_key=0, vs_max_size=0x10000)
    h = a.create_heap()  # inherits the process heap's parameters
    vs, backend = a.alloc(h, 0x10000), a.alloc(h, 0x10001)
    rep = walk_heap(proc, h)
    assert rep.ok, rep.corruptions
    assert (rep.header["MemStats.HeapKey"], rep.header["MemStats.LfhKey"]) == (0x1234, 0)
    assert component(rep, vs) == VS and component(rep, backend) == BACKEND
    unit = sl.SEG_PARAMS[arch].vs_unit
    bits = proc.read_ptr(vs - unit) ^ (vs - unit) ^ 0x1234  # decoded with the key given
    assert bits & 1 == 0 and bits != proc.read_ptr(vs - unit)
    with pytest.raises(TypeError, match="no option"):
        ALLOCATORS["segment"].allocator(Process(arch), salt=1)


@pytest.mark.parametrize("arch", ARCHS)
def test_seed004_scenario_reaches_the_four_components(arch: str) -> None:
    from emu.scenario import Observer, ScenarioRun, run_scenario, shipped_scenarios

    class Keep(Observer):
        def started(self, run: ScenarioRun) -> None:
            self.run = run

    path = next(p for p in shipped_scenarios() if p.stem == "seed004_segment_heap")
    keep = Keep()
    result = run_scenario(path, arch, "segment", observers=[keep])
    assert result.ok, result.failure
    names = result.names
    rep = walk_heap(keep.run.proc, names["heap"])
    assert rep.ok, rep.corruptions
    assert {component(rep, p) for p in names["vs"] if p != names["vs"][3]} == {VS}
    assert component(rep, names["lfh17"]) == LFH
    assert component(rep, names["vs_big"]) == VS
    assert component(rep, names["backend"]) == BACKEND
    assert component(rep, names["big"]) == "large" and names["big"] % sl.LARGE_ALIGN == 0


def test_entry_of_headerless_blocks(env: Env) -> None:
    a = env.alloc
    h = a.create_heap()
    lfh = [a.alloc(h, 0x50) for _ in range(17)][-1]
    pages = a.alloc(h, 0x30000)
    for p, n in ((lfh, 0x50), (pages, 0x30000)):
        got = build_entry(env.proc, p + 4, allocator=a)
        assert got.address == got.user_ptr == p and got.requested == n
        assert [f.name for f in got.fields] == ["(no header: first word)"]
        assert got.where == "data +0x4"
