"""The embedded NT heap (asm/src/ntheap.c) run natively through tests/native/driver.c."""

from __future__ import annotations

import itertools
import random
import struct
from pathlib import Path

import pytest

from asm import CONSTANTS, layout

from .nativeheap import NativeRun, WalkEntry, run_script
from .scripts import make_script, seed002_script

ARCHS = ("x64", "x86")
GROWABLE = CONSTANTS["HEAP_GROWABLE"]
LARGE = CONSTANTS["HEAP_MIN_LARGE_BLOCK_SIZE"]
NO_MORE_ENTRIES = CONSTANTS["STATUS_NO_MORE_ENTRIES"]
MEM_RESERVE = CONSTANTS["MEM_RESERVE"]

# RTL_HEAP_WALK_ENTRY.Flags of a busy block: RTL_HEAP_ENTRY_BUSY | BLOCK | COMMITTED (as Wine 8)
BUSY = 0x4011


def busy(walk: list[WalkEntry]) -> dict[int, int]:
    return {e.data: e.size for e in walk if e.busy}


def assert_no_overlap(blocks: dict[int, int]) -> None:
    spans = sorted(blocks.items())
    for (a, size_a), (b, _) in itertools.pairwise(spans):
        assert a + max(size_a, 1) <= b, f"blocks {a:#x}+{size_a:#x} and {b:#x} overlap"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("seed", [1, 2])
def test_random_operations(arch: str, seed: int) -> None:
    script, first_and_again = make_script(seed, 2500)
    run = run_script(script.lines, arch=arch)
    lay = layout(arch)

    assert run.exceptions == []
    assert run.checks and all(run.checks), "data did not survive"
    assert run.results("free") == [1] * len(run.results("free"))
    assert run.results("validate") == [1] * len(script.walks)
    assert run.results("size") == script.sizes
    addresses = {name: run.value(name) for name in run.values if name.startswith("p")}
    assert all(a and a % lay.alignment == 0 for a in addresses.values())

    assert len(run.walks) == len(script.walks)
    for walk, status, expected in zip(run.walks, run.walk_status, script.walks, strict=True):
        assert status == NO_MORE_ENTRIES
        assert busy(walk) == {addresses[name]: size for name, size in expected.items()}
        assert_no_overlap(busy(walk))
        regions = [e for e in walk if e.is_region]
        assert [e.region for e in regions] == list(range(len(regions)))

    # sizes from 1 byte to past the large-block threshold were exercised, growing the heap
    sizes = [size for w in script.walks for size in w.values()]
    assert min(sizes) <= 8 and max(sizes) >= LARGE
    assert max(len([e for e in w if e.is_region]) for w in run.walks) >= 2

    # after freeing everything: only the first subheap is left, one free block (+ uncommitted)
    empty = run.walks[-2]
    assert [e.flags for e in empty] in ([0x2, 0], [0x2, 0, 0x1000])  # region, free, uncommitted
    # allocating the first sizes again reuses the same memory, without reserving more
    half = len(first_and_again) // 2
    first, again = first_and_again[:half], first_and_again[half:]
    assert [addresses[n] for n in again] == [addresses[n] for n in first]
    start = run.lines.index(f"alloc {again[0]} -> {addresses[again[0]]:#x}")
    assert not [line for line in run.lines[start:] if line.startswith("vm alloc 0x0 ")]


# ---------------------------------------------------------------------------- seed 002


@pytest.mark.parametrize("arch", ARCHS)
def test_seed002_scenario(arch: str) -> None:
    """Seed 002's growable-heap session: 100 x 0x100, free/realloc the 17th and 18th, free
    the 18th, 48th and 78th, one 0x100000 block."""
    run = run_script(seed002_script(), arch=arch)
    lay = layout(arch)
    heap = run.value("h")
    a = [run.value(f"a{i}") for i in range(1, 101)]
    block = -(-(0x100 + 8) // lay.alignment) * lay.alignment  # 0x108 on x86, 0x110 on x64
    assert a[0] == heap + lay.first_arena_offset(lay.heap.size) + 8
    assert [y - x for x, y in itertools.pairwise(a)] == [block] * 99
    assert run.value("b1") == a[16]  # the freed 17th block is reused
    assert run.value("b2") == a[17]
    big = run.value("big")
    assert big == run.reservations()[-1][0] + lay.arena_large.size  # own region
    assert run.results("validate") == [1]
    walk = run.walks[0]
    live = {x for i, x in enumerate(a) if i not in (16, 17, 47, 77)} | {a[16], big}
    assert set(busy(walk)) == live
    free_blocks = [e.data for e in walk if not e.flags]
    assert {a[17], a[47], a[77]} <= set(free_blocks)
    print(f"\nseed 002 on {arch}: heap {heap:#x}, block size {block:#x}")
    print("  first 17 allocations:", " ".join(f"{x:#x}" for x in a[:17]))
    print(f"  after freeing the 17th: {run.value('b1'):#x}; the 18th: {run.value('b2'):#x}")
    print(f"  0x100000 block: {big:#x}")


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("arch", ARCHS)
def test_bad_pointers_and_handles(arch: str) -> None:
    neg1 = (1 << (32 if arch == "x86" else 64)) - 1
    run = run_script(
        [
            "create h 0x2 0 0",
            "create other 0x2 0 0",
            "alloc p h 0 0x40",
            "alloc q h 0 0x40",
            "fill q 9 0x40",
            "free h 0 p",
            "free h 0 p",  # double free
            "free h 0 q+8",  # inside a block
            "free h 0 q+1",  # misaligned
            "free h 0 h",  # the heap header
            "free h 0 0x1000",  # outside the heap
            "free other 0 q",  # another heap's block
            "free q 0 q",  # not a heap handle
            "size h 0 p",
            "size h 0 q+16",
            "size q 0 q",
            "realloc r h 0 p 0x10",
            "realloc r2 q 0 q 0x10",
            "alloc z q 0 0x10",
            "validate q 0",
            "validate h 0 q+8",
            "validate h 0 q",
            "validate h 0",
            "check q 9 0x40",
            "free h 0 0",  # NULL is fine
        ],
        arch=arch,
    )
    assert run.results("free") == [1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert run.results("size") == [neg1] * 3
    assert run.value("r") == run.value("r2") == run.value("z") == 0
    assert run.results("validate") == [0, 0, 1, 1]
    assert run.checks == [True]
    assert run.exceptions == []


@pytest.mark.parametrize("arch", ARCHS)
def test_huge_sizes_fail_cleanly(arch: str) -> None:
    bits = 32 if arch == "x86" else 64
    top = (1 << bits) - 1
    sizes = [top, top - 7, top - 0x10000, 1 << (bits - 1), 0xFFFFFFFF, 0xFFFF0000, 0x7FFFFFFF]
    lines = ["vmlimit 0x10000000", "create h 0x2 0 0", "create n 0 0x20000 0", "alloc keep h 0 64"]
    lines += ["fill keep 3 64"]
    for i, size in enumerate(sizes):
        lines += [f"alloc g{i} h 0 {size:#x}", f"alloc n{i} n 0 {size:#x}"]
        lines += [f"realloc r{i} h 0 keep {size:#x}", f"realloc s{i} h 0x10 keep {size:#x}"]
    lines += ["alloc fits n 0 0x1f000", "alloc nolarge n 0 0x80000", "validate h 0", "validate n 0"]
    lines += ["check keep 3 64", "size h 0 keep"]
    run = run_script(lines, arch=arch)
    for i in range(len(sizes)):
        for name in ("g", "n", "r", "s"):
            assert run.value(f"{name}{i}") == 0, f"{name}{i}"
    assert run.value("fits") != 0  # the non-growable heap still works
    assert run.value("nolarge") == 0  # and has no large blocks
    assert run.results("validate") == [1, 1]
    assert run.checks == [True]
    assert run.results("size") == [64]
    assert run.exceptions == []


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_exceptions(arch: str) -> None:
    run = run_script(
        [
            "create h 0x6 0 0",  # growable | HEAP_GENERATE_EXCEPTIONS
            "create plain 0x2 0 0",
            "vmlimit 0x200000",
            "alloc p h 0 0x10",
            "alloc big h 0 0x1000000",  # STATUS_NO_MEMORY
            "free h 0 p+8",  # STATUS_ACCESS_VIOLATION
            "free plain 0 0x1234",  # no exception without the flag
            "free plain 4 0x1230",  # the call flag asks for it
            "alloc x p 4 0x10",  # not a heap: STATUS_INVALID_PARAMETER
            "realloc q h 0x10 p 0x100000",  # in place impossible: STATUS_NO_MEMORY
            "size h 0 p+16",  # STATUS_ACCESS_VIOLATION
            "validate h 0",
        ],
        arch=arch,
    )
    assert run.exceptions == [
        0xC0000017,
        0xC0000005,
        0xC0000005,
        0xC000000D,
        0xC0000017,
        0xC0000005,
    ]
    assert run.results("free") == [0]
    assert run.results("validate") == [1]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "damage",
    [
        "fill f 0x41 8",  # a free block's list pointers (use after free)
        "fill f-8 0x10 4",  # a free block's size word
        "fill p-8 0x20 8",  # an in-use block's header
        "fill p-4 0x55 2",  # an in-use block's unused byte and tag
    ],
)
def test_validate_reports_corruption(arch: str, damage: str) -> None:
    run = run_script(
        [
            "create h 0x2 0 0",
            "alloc f h 0 0x80",
            "alloc p h 0 0x80",
            "alloc g h 0 0x80",
            "free h 0 f",
            "validate h 0",
            damage,
            "validate h 0",
        ],
        arch=arch,
    )
    assert run.results("validate") == [1, 0]


# ---------------------------------------------------------------------------- features


@pytest.mark.parametrize("arch", ARCHS)
def test_fill_patterns_and_checking(arch: str) -> None:
    lay = layout(arch)
    run = run_script(
        [
            "create h 0x62 0 0",  # growable, tail and free checking
            "alloc p h 0 13",
            "peek p 16",
            "alloc q h 0 0x40",
            "alloc guard h 0 0x10",
            "free h 0 q",
            f"peek q-8 {0x40 + 8}",
            "validate h 0",
            "alloc z h 8 0x40",  # reuses q's block: HEAP_ZERO_MEMORY
            "peek z 0x40",
            "fill p 1 14",  # one byte past the request: tail damaged
            "validate h 0",
            "validate h 0 p",
            "validate h 0 z",
        ],
        arch=arch,
    )
    new, freed, zeroed = run.peeks
    assert new[:13] == (bytes.fromhex("0df0adba") * 4)[:13]
    assert new[13:16] == b"\xab\xab\xab"
    body = freed[lay.arena_free.size : 0x40 + 8 - lay.pointer_size]
    assert body == (bytes.fromhex("eefeeefe") * 32)[: len(body)] and body
    assert run.value("z") == run.value("q")
    assert zeroed == bytes(0x40)
    assert run.results("validate") == [1, 0, 0, 1]


@pytest.mark.parametrize("arch", ARCHS)
def test_free_checking_sees_use_after_free(arch: str) -> None:
    run = run_script(
        [
            "create h 0x42 0 0",
            "alloc p h 0 0x80",
            "alloc guard h 0 0x10",
            "free h 0 p",
            "validate h 0",
            "fill p+32 5 4",
            "validate h 0",
        ],
        arch=arch,
    )
    assert run.results("validate") == [1, 0]


@pytest.mark.parametrize("arch", ARCHS)
def test_realloc(arch: str) -> None:
    run = run_script(
        [
            "create h 0x2 0 0",
            "alloc a h 0 0x100",
            "fill a 1 0x100",
            "alloc b h 0 0x100",
            "alloc c h 0 0x100",
            "realloc a2 h 0 a 0x40",  # shrink in place
            "check a2 1 0x40",
            "realloc a3 h 0 a2 0xf0",  # grow back into the freed tail
            "check a3 1 0x40",
            "free h 0 b",
            "realloc a4 h 0x10 a3 0x200",  # grow in place into b
            "realloc x h 0x10 a4 0x1000",  # c is in the way: in place only fails
            "size h 0 a4",
            "realloc a5 h 8 a4 0x1000",  # moves, grown part zeroed
            "check a5 1 0x40",
            "peek a5+0x200 0xe00",
            "realloc l h 0 c 0x80000",  # becomes a large block
            "realloc l2 h 0 l 0x80100",  # fits in the region's slack
            "realloc l3 h 0x10 l2 0x200000",  # large, in place impossible
            "realloc l4 h 0 l2 0x10",  # shrinking a large block stays in place
            "size h 0 l4",
            "validate h 0",
            "walk h",
        ],
        arch=arch,
    )
    v = run.value
    assert v("a2") == v("a3") == v("a4") == v("a")
    assert v("x") == 0
    assert v("a5") not in (0, v("a"))
    assert run.checks == [True, True, True]
    assert run.peeks == [bytes(0xE00)]
    assert v("l") not in (0, v("c")) and v("l2") == v("l") and v("l4") == v("l")
    assert v("l3") == 0
    assert run.results("size") == [0x200, 0x10]
    assert run.results("validate") == [1]
    assert busy(run.walks[0]) == {v("a5"): 0x1000, v("l4"): 0x10}


@pytest.mark.parametrize("arch", ARCHS)
def test_caller_supplied_base(arch: str) -> None:
    run = run_script(
        [
            "reserve r 0x40000 0x2000",  # the caller's memory: reserved, 2 pages committed
            "create h 0 0x40000 0 r",
            "alloc p h 0 0x8000",  # needs more committed memory
            "fill p 1 0x8000",
            "alloc q h 0 0x30000",
            "alloc full h 0 0x20000",  # not growable: no room
            "validate h 0",
            "walk h",
            "destroy h",
        ],
        arch=arch,
    )
    r = run.value("r")
    assert run.value("h") == r
    assert run.value("p") and run.value("q") and run.value("full") == 0
    commits = [c for c in run.vm if c.kind == "alloc" and c.type == 0x1000 and c.base >= r]
    assert len(commits) >= 2  # the initial commit and one on demand
    assert not [c for c in run.vm if c.kind == "free" and c.base == r]  # not released
    assert run.results("destroy") == [0]
    assert run.results("validate") == [1]


@pytest.mark.parametrize("arch", ARCHS)
def test_growth_and_release(arch: str) -> None:
    lines = ["create h 0x2 0x10000 0x1000"]  # small growable heap
    lines += [f"alloc p{i} h 0 0x3000" for i in range(200)]
    lines += ["validate h 0", "walk h"]
    lines += [f"free h 0 p{i}" for i in range(200)]
    lines += ["validate h 0", "walk h", "destroy h"]
    run = run_script(lines, arch=arch)
    grown, emptied = run.walks
    subheaps = [e for e in grown if e.is_region]
    assert len(subheaps) >= 3
    assert [e for e in emptied if e.is_region] == [subheaps[0]]
    frees = [c for c in run.vm if c.kind == "free"]
    assert len(frees) == len(subheaps)  # extra subheaps released when empty, then the heap
    assert all(c.status == 0 for c in frees)
    assert run.results("validate") == [1, 1]
    assert run.results("destroy") == [0]


@pytest.mark.parametrize("arch", ARCHS)
def test_process_heaps_and_locks(arch: str) -> None:
    run = run_script(
        [
            "maxheaps 3",
            "create a 0x2 0 0",
            "create b 0x2 0 0",
            "create c 0x2 0 0",
            "create d 0x2 0 0",  # no room left in PEB.ProcessHeaps
            "heaps",
            "heaps 1",
            "destroy b",
            "heaps",
            "processheap a",
            "destroy a",  # the process heap cannot be destroyed
            "lock c",
            "lock c",
            "unlock c",
            "unlock c",
            "unlock c",
            "lock c+0x1000",  # mapped, but not a heap
        ],
        arch=arch,
    )
    a, b, c = run.value("a"), run.value("b"), run.value("c")
    assert run.heaps == [[a, b, c], [a], [a, c]]
    assert run.results("destroy") == [0, a]
    assert run.results("lock") == [1, 1, 0]
    assert run.results("unlock") == [1, 1, 0]


@pytest.mark.parametrize("arch", ARCHS)
def test_walk_entries(arch: str) -> None:
    lay = layout(arch)
    run = run_script(
        ["create h 0x2 0 0", "alloc p h 0 0x21", "alloc big h 0 0x90000", "walk h"], arch=arch
    )
    h, p, big = run.value("h"), run.value("p"), run.value("big")
    region, block, rest, uncommitted, large = run.walks[0]
    first = h + lay.first_arena_offset(lay.heap.size)
    assert region == WalkEntry(h, 0x110000, 0, 0, 0x2, 0x10000, 0x100000, first, h + 0x110000)
    assert (block.data, block.size, block.flags) == (p, 0x21, BUSY)
    assert block.data - 8 == first
    assert block.overhead == -(-(0x21 + 8) // lay.alignment) * lay.alignment - 0x21
    assert (rest.flags, rest.data) == (0, p + 0x21 + block.overhead)
    assert rest.data + rest.size == h + 0x10000  # the free block's committed part
    assert (uncommitted.data, uncommitted.size, uncommitted.flags) == (
        h + 0x10000,
        0x100000,
        0x1000,
    )
    assert (large.data, large.size, large.flags, large.overhead) == (
        big,
        0x90000,
        BUSY,
        lay.arena_large.size,
    )
    assert run.walk_status == [NO_MORE_ENTRIES]


# ---------------------------------------------------------------------------- layout


def read_heap_with_layout(run: NativeRun, arch: str, heap: int) -> dict[str, object]:
    """Read a heap from a memory dump using asm.layout only (what a Python walker will do)."""
    lay = layout(arch)
    ptr_fmt = "<I" if lay.pointer_size == 4 else "<Q"
    mem = {r.base: r.read() for r in run.regions}

    def read(addr: int, size: int) -> bytes:
        for base, data in mem.items():
            if base <= addr < base + len(data):
                return data[addr - base : addr - base + size]
        raise KeyError(hex(addr))

    def u32(addr: int) -> int:
        return int.from_bytes(read(addr, 4), "little")

    def ptr(addr: int) -> int:
        return int(struct.unpack(ptr_fmt, read(addr, lay.pointer_size))[0])

    H, F = lay.heap, lay.arena_free
    assert u32(heap + H["magic"]) == CONSTANTS["HEAP_MAGIC"]
    assert u32(heap + 2 * lay.pointer_size) == CONSTANTS["HEAP_SEGMENT_SIGNATURE"]
    free_lists = heap + H["free_lists"]
    sentinels = {free_lists + i * F.size: i for i in range(CONSTANTS["HEAP_NB_FREE_LISTS"])}
    buckets: dict[int, int] = {}
    entry = ptr(free_lists + F["entry.next"])
    bucket = 0
    while entry != free_lists + F["entry"]:
        arena = entry - F["entry"]
        if arena in sentinels:
            bucket = sentinels[arena]
        else:
            size = u32(arena + F["size"])
            assert size & CONSTANTS["ARENA_FLAG_FREE"]
            assert int.from_bytes(read(arena + F["magic"], 2), "little") == 0x4546
            assert lay.bucket_of(size & ~3) == bucket
            buckets[arena] = size & ~3
        entry = ptr(entry)
    return {
        "flags": u32(heap + H["flags"]),
        "subheap_size": ptr(heap + H["subheap.size"]),
        "commit": ptr(heap + H["subheap.commit_size"]),
        "header_size": u32(heap + H["subheap.header_size"]),
        "free": buckets,
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_layout_reads_native_memory(arch: str, tmp_path: Path) -> None:
    rng = random.Random(5)
    lines = ["create h 0x2 0 0"]
    lines += [f"alloc p{i} h 0 {rng.randint(1, 0x3000):#x}" for i in range(200)]
    lines += [f"free h 0 p{i}" for i in range(0, 200, 3)]
    lines += ["walk h"]
    run = run_script(lines, arch=arch, dump_dir=tmp_path)
    lay = layout(arch)
    heap = run.value("h")
    info = read_heap_with_layout(run, arch, heap)
    assert info["flags"] == GROWABLE
    assert info["subheap_size"] == 0x110000
    assert info["header_size"] == lay.first_arena_offset(lay.heap.size)
    walk_free = {e.data - 8: e.size + 8 for e in run.walks[0] if not e.flags}
    free = info["free"]
    assert isinstance(free, dict)
    # every free block the walk reports is on the right free list (the last one may be
    # reported only up to the commit end by the walk)
    assert set(free) == set(walk_free)
    assert all(free[a] >= walk_free[a] for a in free)
