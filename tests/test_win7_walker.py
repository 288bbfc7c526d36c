"""The win7 walker (emu/heap/walkers/win7.py) against the heap's own RtlWalkHeap and
RtlValidateHeap through the emulator: after every step of random operation sequences, and after
overflows into an LFH block and into a back-end header."""

from __future__ import annotations

import random

import pytest

from emu import EmulationError, Process
from emu.heap.allocator import Allocator
from emu.heap.registry import walk_heap
from emu.heap.walkers import model as m
from emu.heap.walkers.win7 import BLOCK_LFH, WALK_INTERNAL, Win7Report, Win7Walker

ARCHS = ("x86", "x64")


def make(arch: str) -> tuple[Process, Allocator]:
    proc = Process(arch, time_limit=60.0)
    return proc, Allocator(proc, proc.load_allocator("win7"))


def walk(proc: Process, heap: int) -> Win7Report:
    rep = walk_heap(proc, heap)
    assert isinstance(rep, Win7Report)
    return rep


def agree(a: Allocator, rep: Win7Report, heap: int, live: dict[int, int]) -> None:
    """The walker's blocks are RtlWalkHeap's; the caller's are exactly ``live``."""
    entries = a.walk(heap)
    busy = {(e.address, e.size) for e in entries if e.busy}
    ours = {(b.user_ptr, b.requested) for b in rep.busy_blocks()}
    ours |= {(lb.user_ptr, lb.size) for lb in rep.large_blocks}
    assert ours == busy
    internal = {e.address for e in entries if e.busy and e.flags & WALK_INTERNAL}
    assert internal == {b.user_ptr for b in rep.busy_blocks() if Win7Walker.internal(b)}
    user = {e.address: e.size for e in entries if e.busy and not e.flags & WALK_INTERNAL}
    assert user == live
    free = sorted(e.address for e in entries if e.kind == "free")
    assert free == sorted(b.user_ptr for b in rep.free_blocks())
    lfh = {e.address for e in entries if e.flags & 0x8000}
    assert lfh == {b.user_ptr for b in rep.blocks if b.flags & BLOCK_LFH}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("seed", [3, 4])
def test_walker_agrees_after_every_step(arch: str, seed: int) -> None:
    proc, a = make(arch)
    rng = random.Random(seed)
    heap = a.create_heap()
    live: dict[int, int] = {}
    hot = [0x10, 0x40, 0x100, 0x180]
    lfh_seen = 0
    for n in hot:  # a program that starts with many objects of a few sizes: the LFH activates
        for _ in range(18):
            live[a.alloc(heap, n)] = n
    for step in range(160):
        r = rng.random()
        if r < 0.6 or not live:
            n = rng.choice(hot) if rng.random() < 0.7 else rng.randint(0, 0x3000)
            if rng.random() < 0.02:
                n = 0x80000 + rng.randint(0, 0x1000)  # a virtual block
            p = a.alloc(heap, n)
            assert p
            live[p] = n
        elif r < 0.85:
            p = rng.choice(sorted(live))
            assert a.free(heap, p)
            del live[p]
        else:
            p = rng.choice(sorted(live))
            n = rng.randint(0, 0x800)
            q = a.realloc(heap, p, n)
            assert q
            del live[p]
            live[q] = n
        rep = walk(proc, heap)
        assert rep.ok, (step, rep.corruptions)
        assert a.validate(heap)
        agree(a, rep, heap, live)
        lfh_seen += len(rep.lfh_regions)
    assert lfh_seen, "no LFH subsegment was ever used"


@pytest.mark.parametrize("arch", ARCHS)
def test_overflow_into_an_lfh_block(arch: str) -> None:
    proc, a = make(arch)
    heap = a.create_heap()
    ptrs = [a.alloc(heap, 0x100) for _ in range(22)]
    rep = walk(proc, heap)
    b19, b20 = rep.block_at(ptrs[19]), rep.block_at(ptrs[20])
    assert b19 is not None and b20 is not None and b19.flags & b20.flags & BLOCK_LFH
    assert b20.address == b19.end and rep.ok and a.validate(heap)
    proc.write(ptrs[19], b"\x41" * (b19.end - ptrs[19] + 1))  # one byte into a[20]'s header
    rep = walk(proc, heap)
    assert [(c.kind, c.address) for c in rep.corruptions] == [(m.BLOCK_HEADER, b20.address)]
    assert not a.validate(heap)
    assert rep.block_at(ptrs[21]) is not None  # the walk went on
    with pytest.raises(EmulationError, match="STATUS_HEAP_CORRUPTION"):
        a.free(heap, ptrs[20])
    assert a.free(heap, ptrs[19])  # its own header is intact


@pytest.mark.parametrize("arch", ARCHS)
def test_overflow_into_a_back_end_header(arch: str) -> None:
    proc, a = make(arch)
    heap = a.create_heap()
    # distinct sizes (no LFH) below 0x80 units (no extended lookup between them): neighbours
    b0, b1, b2 = (a.alloc(heap, 0x200 + i * 0x10) for i in range(3))
    rep = walk(proc, heap)
    h1 = rep.block_at(b1)
    assert h1 is not None and not h1.flags & BLOCK_LFH and rep.ok
    g = 16 if arch == "x64" else 8
    assert h1.address == b0 + 0x200  # right after b0's data
    proc.write(b0, b"\x41" * (h1.address + g - 8 + 4 - b0))  # up to b1's encoded size word
    rep = walk(proc, heap)
    assert (m.BLOCK_HEADER, h1.address) in [(c.kind, c.address) for c in rep.corruptions]
    after = rep.block_at(b2)  # resynchronised on b2's PreviousSize: the walk goes on
    assert after is not None and after.user_ptr == b2 and rep.segments[0].complete
    assert not a.validate(heap)
    with pytest.raises(EmulationError, match="STATUS_HEAP_CORRUPTION"):
        a.free(heap, b1)


@pytest.mark.parametrize("arch", ARCHS)
def test_lfh_chain_loop_and_userblocks_signature(arch: str) -> None:
    proc, a = make(arch)
    heap = a.create_heap()
    ptrs = [a.alloc(heap, 0x40) for _ in range(40)]
    for p in ptrs[30:34]:
        assert a.free(heap, p)
    rep = walk(proc, heap)
    assert rep.ok and rep.lfh_regions
    chain = next(fl for fl in rep.free_lists if fl.head == rep.lfh_regions[0].subsegment)
    first, second = chain.entries[0].address, chain.entries[1].address
    g = 16 if arch == "x64" else 8
    region = rep.lfh_regions[0]
    # the second free block's next offset points back at the first: a loop
    proc.write(second + g, ((first - (region.address)) // g).to_bytes(2, "little"))
    rep = walk(proc, heap)
    assert [c.kind for c in rep.corruptions if c.kind == m.FREE_LIST_LOOP] == [m.FREE_LIST_LOOP]
    assert not a.validate(heap)
    # the UserBlocks signature overwritten
    proc, a = make(arch)
    heap = a.create_heap()
    for _ in range(40):
        a.alloc(heap, 0x40)
    region = walk(proc, heap).lfh_regions[0]
    sig = region.address + (0x18 if arch == "x64" else 0xC)
    proc.write(sig, b"\0\0\0\0")
    rep = walk(proc, heap)
    assert [(c.kind, c.address) for c in rep.corruptions] == [(m.SEGMENT, region.address)]
    assert "signature" in rep.corruptions[0].detail and not a.validate(heap)


@pytest.mark.parametrize("arch", ARCHS)
def test_shrinking_a_virtual_block_keeps_its_size(arch: str) -> None:
    """A virtual block shrunk below CommitSize - 0xFFFF moves (BusyBlock.Size is a u16): the
    property test's find (x86: 0x8efe1 bytes reallocated to 0x7eff9)."""
    proc, a = make(arch)
    heap = a.create_heap()
    threshold = 0xFE00 * 8 if arch == "x86" else 0xFF00 * 16  # VirtualMemoryThreshold, bytes
    smallest_virtual = threshold - (8 if arch == "x86" else 16) + 1
    p = a.alloc(heap, smallest_virtual + 0x11000)
    q = a.realloc(heap, p, smallest_virtual)
    assert q and a.size(heap, q) == smallest_virtual and a.validate(heap)
    rep = walk(proc, heap)
    assert rep.ok and [(lb.user_ptr, lb.size) for lb in rep.large_blocks] == [(q, smallest_virtual)]
