"""Property tests, the same code for every allocator (builtin, Wine 8.0) and architecture:
random create/alloc/free/realloc/size sequences keep the heap's promises."""

from __future__ import annotations

import itertools
from functools import cache

import pytest
from conftest import Heaps, make_heaps
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from emu.heap.registry import ALLOCATOR_NAMES, allocator_kind
from emu.win.ntdefs import MEM_RESERVE

LARGE = 0x7F000  # HEAP_MIN_LARGE_BLOCK_SIZE: the builtin heap's own-region threshold
sizes = st.one_of(
    st.integers(1, 0x100),
    st.integers(0x100, 0x4000),
    st.integers(0x4000, 0x30000),
    st.integers(LARGE - 0x100, LARGE + 0x20000),
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), sizes),
        st.tuples(st.just("free"), st.integers(0, 1000)),
        st.tuples(st.just("realloc"), st.integers(0, 1000), sizes),
        st.tuples(st.just("size"), st.integers(0, 1000)),
    ),
    min_size=1,
    max_size=40,
)


@cache
def shared(arch: str, kind: str) -> Heaps:
    """One process per allocator and arch; each example gets a fresh heap in it."""
    return make_heaps(arch, kind)


def pattern(tag: int, size: int) -> tuple[bytes, bytes]:
    """Bytes written at the start and end of a block (which do not overlap): both must
    survive other operations."""
    n = min(size // 2, 32)
    return bytes([tag]) * max(n, 1), bytes([tag ^ 0xFF]) * n


def write_tag(h: Heaps, addr: int, size: int, tag: int) -> None:
    head, tail = pattern(tag, size)
    h.proc.write(addr, head)
    if tail:
        h.proc.write(addr + size - len(tail), tail)


def check_tag(h: Heaps, addr: int, size: int, tag: int) -> None:
    head, tail = pattern(tag, size)
    assert h.proc.read(addr, len(head)) == head, f"block 0x{addr:x} lost its first bytes"
    if tail:
        assert h.proc.read(addr + size - len(tail), len(tail)) == tail, f"0x{addr:x} lost its end"


def run_sequence(h: Heaps, sequence: list[tuple]) -> None:  # type: ignore[type-arg]
    a = h.allocator
    heap = a.create_heap()
    live: dict[int, tuple[int, int]] = {}  # address -> (requested size, tag)
    tag = 0
    for op in sequence:
        tag = (tag + 1) & 0xFF
        if op[0] == "alloc" or not live:
            size = op[1] if op[0] == "alloc" else 0x40
            p = a.alloc(heap, size)
            assert p, f"alloc(0x{size:x}) failed"
            assert p not in live
            write_tag(h, p, size, tag)
            live[p] = (size, tag)
            continue
        p = sorted(live)[op[1] % len(live)]
        size, old_tag = live[p]
        check_tag(h, p, size, old_tag)
        if op[0] == "free":
            assert a.free(heap, p)
            del live[p]
        elif op[0] == "size":
            assert a.size(heap, p) == size
        else:
            new_size = op[2]
            q = a.realloc(heap, p, new_size)
            assert q, f"realloc(0x{p:x}, 0x{new_size:x}) failed"
            head = pattern(old_tag, size)[0]
            keep = min(len(head), new_size)
            assert h.proc.read(q, keep) == head[:keep], "realloc lost data"
            del live[p]
            write_tag(h, q, new_size, tag)
            live[q] = (new_size, tag)
        spans = sorted((p, p + s) for p, (s, _) in live.items())
        assert all(x[1] <= y[0] for x, y in itertools.pairwise(spans)), "overlap"
    for p, (size, t) in live.items():
        check_tag(h, p, size, t)
        assert a.size(heap, p) == size
    assert a.validate(heap)
    internal = allocator_kind(h.kind).walker.walk_internal_flag  # the heap's own blocks
    walked = {e.address for e in a.walk(heap) if e.busy and not e.flags & internal}
    assert walked == set(live)
    # free everything, then the same small allocations fit without reserving new memory
    for p in list(live):
        assert a.free(heap, p)
    small = [s for s, _ in live.values() if s < 0x4000]
    n = len(h.proc.syscalls)
    for s in small:
        assert a.alloc(heap, s)
    reserved = [r for r in h.proc.syscalls[n:] if r.args.get("AllocationType", 0) & MEM_RESERVE]
    assert not reserved, "memory freed by the heap was not reused"
    assert a.validate(heap)
    assert a.destroy(heap)


@pytest.mark.parametrize("kind", ALLOCATOR_NAMES)
@pytest.mark.parametrize("arch", ["x86", "x64"])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=ops)
# win7 x64 once activated the LFH here (a free borrowed from its size class's counter), so
# re-allocating the freed sizes reserved memory for the LFH
@example(
    sequence=[("alloc", 17), ("alloc", 17), ("realloc", 0, 1), ("alloc", 1), ("realloc", 1, 1)]
)
def test_random_sequences(arch: str, kind: str, sequence: list[tuple]) -> None:  # type: ignore[type-arg]
    run_sequence(shared(arch, kind), sequence)
