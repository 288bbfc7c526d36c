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

from emu import Process
from emu.arch import get_arch
from emu.heap.allocator import Allocator
from emu.heap.registry import ALLOCATORS, walk_heap
from emu.heap.walkers import CORRUPTION_KINDS, HeapReport
from emu.heap.walkers import model as m
from emu.heap.walkers import segment_layout as sl
from emu.heap.walkers.segment import BACKEND, LFH, VS
from emu.views import build_dt, build_entry, build_summary, render_dt, render_entry
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
