"""Seed 002's scenario (a growable heap; 100 x 0x100; free a[17] and allocate; free a[18] and
allocate; free a[18], a[48], a[78]; one 0x100000 block) on every allocator and architecture.

The program numbers its chunks from 0: the transcript's "17th chunk" is a[17]. With a
low-fragmentation front end (win7) the 0x100 bucket moves to LFH subsegments at a[18], so the
blocks are not contiguous and the freed back-end block a[17] is not reused at once."""

from __future__ import annotations

from conftest import Heaps, needs_block_chain

from emu.heap.registry import allocator_kind
from emu.win.ntdefs import MEM_COMMIT, MEM_RESERVE


def test_seed002_growable_heap(heaps: Heaps) -> None:
    needs_block_chain(heaps.kind)  # seed 002 is the NT heap's story (blocks, headers, strides)
    proc, a = heaps.proc, heaps.allocator
    heap = a.create_heap()
    blocks = [a.alloc(heap, 0x100) for _ in range(100)]
    # 0x100 bytes + an 8-byte header, rounded to the granularity: 0x108 (x86), 0x110 (x64),
    # the stride WinDbg shows in seed 002 for 32-bit Windows
    stride = 0x108 if heaps.arch == "x86" else 0x110
    front_end = allocator_kind(heaps.kind).walker.front_end
    contiguous = 17 if front_end else 100  # the LFH takes over the 0x100 bucket at a[18]
    assert all(blocks[i + 1] - blocks[i] == stride for i in range(contiguous - 1))
    assert all(b % (8 if heaps.arch == "x86" else 16) == 0 for b in blocks)
    assert a.free(heap, blocks[17])
    b = a.alloc(heap, 0x100)
    # the freed a[17] is reused at once, unless an LFH subsegment serves the size
    assert (b != blocks[17]) if front_end else (b == blocks[17])
    assert a.free(heap, blocks[18])
    again = a.alloc(heap, 0x100)
    assert again == blocks[18]  # last freed, first used (back end and LFH alike)
    for b in (again, blocks[48], blocks[78]):
        assert a.free(heap, b)
    # each freed block now lies in a free entry of the allocator's own walk (Wine's free
    # arenas have a larger header, so the entry's data starts a little after the old block)
    free = [e for e in a.walk(heap) if e.kind == "free"]
    for b in (blocks[18], blocks[48], blocks[78]):
        assert any(e.address - e.overhead <= b < e.address + e.size for e in free), hex(b)
    n = len(proc.syscalls)
    big = a.alloc(heap, 0x100000)
    reservations = [r for r in proc.syscalls[n:] if r.args["AllocationType"] & MEM_RESERVE]
    assert len(reservations) == 1 and reservations[0].details["size"] >= 0x100000
    assert proc.memory.region_at(big).base == reservations[0].details["base"]
    assert proc.memory.query(big).State == MEM_COMMIT
    assert a.size(heap, big) == 0x100000 and a.validate(heap)
