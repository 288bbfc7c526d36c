"""The RtlCreateHeap family through ``Allocator``, on both allocators (builtin and Wine 8.0's
ntdll) and both architectures, with the system calls each operation made."""

from __future__ import annotations

import pytest
from conftest import Heaps, make_heaps

from emu import EmulationError
from emu.heap.allocator import HeapError
from emu.heap.registry import ALLOCATORS, allocator_kind
from emu.win.ntdefs import (
    HEAP_GROWABLE,
    HEAP_REALLOC_IN_PLACE_ONLY,
    HEAP_ZERO_MEMORY,
    MEM_COMMIT,
    MEM_RELEASE,
    MEM_RESERVE,
    PAGE_READWRITE,
)


def syscalls_since(h: Heaps, start: int) -> list[tuple[str, int]]:
    """(name, AllocationType/FreeType) of the system calls made after index ``start``."""
    out = []
    for rec in h.proc.syscalls[start:]:
        typ = rec.args.get("AllocationType", rec.args.get("FreeType", 0))
        out.append((rec.name, typ))
    return out


def test_growable_heap_reserves_then_commits(heaps: Heaps) -> None:
    n = len(heaps.proc.syscalls)
    heap = heaps.allocator.create_heap(HEAP_GROWABLE)
    calls = syscalls_since(heaps, n)
    assert calls[:2] == [("NtAllocateVirtualMemory", MEM_RESERVE),
                         ("NtAllocateVirtualMemory", MEM_COMMIT)]  # fmt: skip
    reserve = heaps.proc.syscalls[n]
    assert reserve.details["base"] == heap and reserve.status == 0
    mbi = heaps.proc.memory.query(heap)
    assert mbi.State == MEM_COMMIT and mbi.AllocationBase == heap
    assert heap in heaps.allocator.process_heaps()


def test_fixed_size_heap_fills_up_without_growing(heaps: Heaps) -> None:
    a = heaps.allocator
    heap = a.create_heap(0, reserve=0x10000, commit=0x1000)
    n = len(heaps.proc.syscalls)
    blocks = []
    for _ in range(200):
        p = a.alloc(heap, 0x200)
        if not p:
            break
        blocks.append(p)
    if not ALLOCATORS[heaps.kind].honours_sizes:  # the sizes are ignored: the heap grows
        assert len(blocks) == 200 and a.validate(heap)
        assert a.free(heap, blocks[0]) and a.size(heap, a.alloc(heap, 0x80000)) == 0x80000
        return
    assert 50 < len(blocks) < 200  # 64 KiB hold fewer than 128 such blocks, and never grow
    assert all(name != "NtAllocateVirtualMemory" or typ == MEM_COMMIT
               for name, typ in syscalls_since(heaps, n))  # fmt: skip
    assert a.alloc(heap, 0x80000) == 0  # no large blocks outside growable heaps
    assert a.free(heap, blocks[0]) and a.alloc(heap, 0x200) == blocks[0]


def test_heap_at_a_caller_supplied_base(heaps: Heaps) -> None:
    proc, a = heaps.proc, heaps.allocator
    base, _ = proc.memory.allocate(0, 0x20000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    n = len(proc.syscalls)
    heap = a.create_heap(0, reserve=0x20000, commit=0x20000, base=base)
    if not ALLOCATORS[heaps.kind].honours_sizes:  # the base is ignored: a heap of its own
        assert heap != base and proc.read(base, 0x100) == bytes(0x100)
        p = a.alloc(heap, 0x100)
        assert not base <= p < base + 0x20000 and a.size(heap, p) == 0x100
        return
    assert heap == base
    assert ("NtAllocateVirtualMemory", MEM_RESERVE) not in syscalls_since(heaps, n)
    p = a.alloc(heap, 0x100)
    assert base < p < base + 0x20000 and a.size(heap, p) == 0x100


def test_zero_memory_size_validate_and_double_free(heaps: Heaps) -> None:
    proc, a = heaps.proc, heaps.allocator
    heap = a.create_heap()
    p = a.alloc(heap, 0x80)
    proc.write(p, b"\xee" * 0x80)
    assert a.free(heap, p)
    if allocator_kind(heaps.kind).walker.raises_on_corruption:
        with pytest.raises(EmulationError, match="STATUS_HEAP_CORRUPTION"):
            a.free(heap, p)  # double free: Windows 7 terminates on corruption
    else:
        assert not a.free(heap, p)  # double free: FALSE, heap still valid
    assert a.validate(heap)
    q = a.alloc(heap, 0x80, HEAP_ZERO_MEMORY)
    assert proc.read(q, 0x80) == bytes(0x80)
    assert a.size(heap, q) == 0x80
    assert a.validate(heap, q)
    if allocator_kind(heaps.kind).walker.raises_on_corruption:
        try:  # the "header" before q + 8 is q's data: a bad checksum, or no block at all
            assert a.size(heap, q + 8) == -1
        except EmulationError as e:
            assert "STATUS_HEAP_CORRUPTION" in str(e)
    else:
        assert a.size(heap, q + 8) == -1  # not a block


def test_realloc_grow_shrink_and_in_place_only(heaps: Heaps) -> None:
    proc, a = heaps.proc, heaps.allocator
    heap = a.create_heap()
    p = a.alloc(heap, 0x100)
    guard = a.alloc(heap, 0x100)  # keeps p from growing in place
    data = bytes(range(256))
    proc.write(p, data)
    assert a.realloc(heap, p, 0x1000, HEAP_REALLOC_IN_PLACE_ONLY) == 0
    assert proc.read(p, 0x100) == data and a.size(heap, p) == 0x100
    q = a.realloc(heap, p, 0x1000)
    assert q and q != p and proc.read(q, 0x100) == data and a.size(heap, q) == 0x1000
    r = a.realloc(heap, q, 0x40)
    assert r == q and a.size(heap, r) == 0x40 and proc.read(r, 0x40) == data[:0x40]
    s = a.realloc(heap, r, 0x80, HEAP_REALLOC_IN_PLACE_ONLY)  # room after the shrink
    assert s == r and a.size(heap, s) == 0x80
    assert a.validate(heap) and a.free(heap, guard)


def test_walk_lock_and_destroy(heaps: Heaps) -> None:
    proc, a = heaps.proc, heaps.allocator
    heap = a.create_heap()
    live = {a.alloc(heap, n) for n in (1, 0x10, 0x100, 0x1000)}
    entries = a.walk(heap)
    assert entries[0].region
    if ALLOCATORS[heaps.kind].walker.block_chain:  # the NT heaps' header opens segment 0
        assert entries[0].address <= heap
    internal = allocator_kind(heaps.kind).walker.walk_internal_flag
    assert {e.address for e in entries if e.busy and not e.flags & internal} == live
    assert a.lock(heap) and a.unlock(heap)
    n = len(proc.syscalls)
    assert a.destroy(heap)
    assert ("NtFreeVirtualMemory", MEM_RELEASE) in syscalls_since(heaps, n)
    assert proc.memory.region_at(heap) is None
    assert heap not in a.process_heaps()


def test_large_block_comes_from_its_own_region(heaps: Heaps) -> None:
    proc, a = heaps.proc, heaps.allocator
    heap = a.create_heap()
    n = len(proc.syscalls)
    big = a.alloc(heap, 0x100000)
    calls = syscalls_since(heaps, n)
    assert calls[0][0] == "NtAllocateVirtualMemory" and calls[0][1] & MEM_RESERVE
    region = proc.memory.region_at(big)
    assert region is not None and region.base != proc.memory.region_at(heap).base
    assert region.size >= 0x100000 and a.size(heap, big) == 0x100000
    proc.write(big + 0x100000 - 16, b"A" * 16)
    assert any(e.busy and e.address == big for e in a.walk(heap))
    n = len(proc.syscalls)
    assert a.free(heap, big)
    assert syscalls_since(heaps, n) == [("NtFreeVirtualMemory", MEM_RELEASE)]
    assert proc.memory.region_at(big) is None


def test_create_heap_failure_raises(heaps: Heaps) -> None:
    proc = heaps.proc
    n = len(proc.syscalls)
    too_big = (proc.arch.user_max + 1) & ~0xFFFF  # more than the whole user address space
    if heaps.kind == "wine" and heaps.arch == "x64":
        # Wine's x64 RtlCreateHeap clamps the reserve to 0xffff0000 (its 32-bit block sizes)
        heap = heaps.allocator.create_heap(0, reserve=too_big, commit=0x10000)
        assert proc.memory.region_at(heap).size == 0xFFFF0000
        return
    if not ALLOCATORS[heaps.kind].honours_sizes:  # the reserve is ignored: an ordinary heap
        heap = heaps.allocator.create_heap(0, reserve=too_big, commit=0x10000)
        assert heaps.allocator.validate(heap) and proc.memory.region_at(heap).size < 0x100000
        return
    with pytest.raises(HeapError, match="returned NULL"):
        heaps.allocator.create_heap(0, reserve=too_big, commit=0x10000)
    assert all(r.name != "NtAllocateVirtualMemory" or r.status != 0 for r in proc.syscalls[n:])


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_wine_reports_heap_overflow_through_its_debug_channel(arch: str) -> None:
    h = make_heaps(arch, "wine", debug_channels="heap=err")
    a = h.allocator
    heap = a.create_heap()
    p = a.alloc(heap, 0x20)
    q = a.alloc(heap, 0x20)
    h.proc.write(p, b"\x41" * 0x40)  # runs over q's block header
    assert not a.validate(heap)
    text = "".join(h.proc.debug_output)
    assert "err:heap:" in text and "invalid block" in text, text
    assert any(r.name == "__wine_dbg_write" for r in h.proc.syscalls)
    assert q and h.proc.call(h.module.exports["RtlGetCurrentPeb"]) == h.proc.peb  # still usable


@pytest.mark.parametrize("arch", ["x86", "x64"])
def test_builtin_reports_heap_overflow(arch: str) -> None:
    h = make_heaps(arch, "builtin")
    a = h.allocator
    heap = a.create_heap()
    p = a.alloc(heap, 0x20)
    a.alloc(heap, 0x20)
    h.proc.write(p, b"\x41" * 0x40)
    assert not a.validate(heap)
    assert a.alloc(heap, 0x10) != 0


def test_absurd_sizes_fail_cleanly(heaps: Heaps) -> None:
    a = heaps.allocator
    heap = a.create_heap()
    huge = [(1 << 31) + 1, 0xFFFFFFF0] if heaps.arch == "x86" else [1 << 36, 1 << 47, 2**64 - 8]
    for size in huge:
        assert a.alloc(heap, size) == 0, hex(size)
    p = a.alloc(heap, 0x10)
    assert a.realloc(heap, p, huge[-1]) == 0 and a.size(heap, p) == 0x10
    assert a.validate(heap)


HEAP_SETTABLE_USER_VALUE, HEAP_SETTABLE_USER_FLAG1 = 0x100, 0x200
HEAP_SETTABLE_USER_FLAG2, HEAP_SETTABLE_USER_FLAG3 = 0x400, 0x800


def test_user_values_and_flags(heaps: Heaps) -> None:
    """RtlSetUserValueHeap / RtlSetUserFlagsHeap / RtlGetUserInfoHeap, what Wine's
    GlobalAlloc/LocalAlloc keep their handles in, and RtlCompactHeap."""
    a, kind = heaps.allocator, allocator_kind(heaps.kind)
    h = a.create_heap()
    flags = HEAP_SETTABLE_USER_VALUE | HEAP_SETTABLE_USER_FLAG1
    p = a.alloc(h, 0x40, flags)
    q = a.alloc(h, 0x40)
    assert a.user_info(h, p) == (0, HEAP_SETTABLE_USER_FLAG1)
    assert a.set_user_value(h, p, 0x1234) and a.user_info(h, p) == (
        0x1234,
        HEAP_SETTABLE_USER_FLAG1,
    )
    assert not a.set_user_value(h, q, 0x99)  # no room for a value: allocated without the flag
    assert a.user_info(h, q) == (0, 0)
    assert a.set_user_flags(h, p, HEAP_SETTABLE_USER_FLAG1, HEAP_SETTABLE_USER_FLAG3)
    assert a.user_info(h, p) == (0x1234, HEAP_SETTABLE_USER_FLAG3)
    blocks = [a.alloc(h, 0x40, flags) for _ in range(300)]  # more than one table's worth
    for i, b in enumerate(blocks):
        assert a.set_user_value(h, b, i + 1)
    for b in blocks[::2]:
        assert a.free(h, b)
    assert all(a.user_info(h, b) == (i + 1, HEAP_SETTABLE_USER_FLAG1)
               for i, b in enumerate(blocks) if i % 2)  # fmt: skip
    if not kind.is_program_ntdll:
        # Windows' semantics (Wine 8.0 differs: its blocks without user info refuse flags,
        # and a block moved by RtlReAllocateHeap loses its value)
        assert a.set_user_flags(h, q, 0, HEAP_SETTABLE_USER_FLAG2)
        assert a.user_info(h, q) == (0, HEAP_SETTABLE_USER_FLAG2)
        moved = a.realloc(h, p, 0x8000)
        assert moved not in (0, p)
        assert a.user_info(h, moved) == (0x1234, HEAP_SETTABLE_USER_FLAG3)
        p = moved
        # a new block at a freed one's address has no value of its own
        assert a.free(h, p)
        again = [a.alloc(h, 0x8000) for _ in range(4)]
        assert all(a.user_info(h, b) == (0, 0) for b in again)
        # RtlCompactHeap: the largest free committed block RtlWalkHeap reports
        free = [e.size for e in a.walk(h) if e.kind == "free"]
        assert a.compact(h) == max(free, default=0) > 0
    else:
        assert a.free(h, p)
    if not kind.walker.raises_on_corruption:  # a freed block has no user information
        assert a.user_info(h, blocks[0]) is None and not a.set_user_value(h, blocks[0], 1)
    # the value stays with its heap: another heap's blocks never see it
    h2 = a.create_heap()
    r = a.alloc(h2, 0x40, flags)
    assert a.user_info(h2, r) == (0, HEAP_SETTABLE_USER_FLAG1)
    assert a.destroy(h)
    assert a.set_user_value(h2, r, 7) and a.user_info(h2, r) == (7, HEAP_SETTABLE_USER_FLAG1)


def test_heap_information(heaps: Heaps) -> None:
    """RtlQueryHeapInformation / RtlSetHeapInformation(HeapCompatibilityInformation), what
    HeapQueryInformation / HeapSetInformation call: 2 while a low-fragmentation front end
    serves the heap, else 0; setting what it is succeeds."""
    a, kind = heaps.allocator, allocator_kind(heaps.kind)
    h = a.create_heap()
    for _ in range(100):
        a.alloc(h, 0x100)
    value = a.compatibility(h)
    assert value in (0, 2)
    if kind.walker.front_end:  # Windows 7: 100 live blocks of one size activated the LFH
        assert value == 2
    assert a.set_compatibility(h, value) == 0
    assert a.compatibility(h) == value
