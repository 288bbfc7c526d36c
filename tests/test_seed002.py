"""Seed 002's scenario (a growable heap; 100 x 0x100; free #17 and allocate; free #18 and
allocate; free #18, #48, #78; one 0x100000 block) on both allocators and architectures."""

from __future__ import annotations

from conftest import Heaps, needs_block_chain

from emu.win.ntdefs import MEM_COMMIT, MEM_RESERVE


def test_seed002_growable_heap(heaps: Heaps) -> None:
    needs_block_chain(heaps.kind)  # seed 002 is the NT heap's story (blocks, headers, strides)
    proc, a = heaps.proc, heaps.allocator
    heap = a.create_heap()
    blocks = [a.alloc(heap, 0x100) for _ in range(100)]
    # 0x100 bytes + an 8-byte header, rounded to the granularity: 0x108 (x86), 0x110 (x64),
    # the stride WinDbg shows in seed 002 for 32-bit Windows
    stride = 0x108 if heaps.arch == "x86" else 0x110
    assert all(blocks[i + 1] - blocks[i] == stride for i in range(99))
    assert all(b % (8 if heaps.arch == "x86" else 16) == 0 for b in blocks)
    assert a.free(heap, blocks[16])
    assert a.alloc(heap, 0x100) == blocks[16]  # the freed 17th block is reused at once
    assert a.free(heap, blocks[17])
    again = a.alloc(heap, 0x100)
    assert again == blocks[17]
    for b in (again, blocks[47], blocks[77]):
        assert a.free(heap, b)
    # each freed block now lies in a free entry of the allocator's own walk (Wine's free
    # arenas have a larger header, so the entry's data starts a little after the old block)
    free = [e for e in a.walk(heap) if e.kind == "free"]
    for b in (blocks[17], blocks[47], blocks[77]):
        assert any(e.address - e.overhead <= b < e.address + e.size for e in free), hex(b)
    n = len(proc.syscalls)
    big = a.alloc(heap, 0x100000)
    reservations = [r for r in proc.syscalls[n:] if r.args["AllocationType"] & MEM_RESERVE]
    assert len(reservations) == 1 and reservations[0].details["size"] >= 0x100000
    assert proc.memory.region_at(big).base == reservations[0].details["base"]
    assert proc.memory.query(big).State == MEM_COMMIT
    assert a.size(heap, big) == 0x100000 and a.validate(heap)
