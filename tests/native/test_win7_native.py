"""The Windows 7 NT heap + LFH (asm/src/win7heap.c) run natively through tests/native/driver.c.

Seed 002 (``/work/shared/seeds/002_5b95737135e99598.txt``, a WinDbg session on 32-bit Windows 7,
cited as T2 Lnnn) is replayed on x86 with the transcript's own reservation addresses (the
driver's answers file maps the heap at 0x470000 and the segment it grows into at 0x300000), so
addresses, structure fields and encoded header words are compared with the transcript as they
are. The same story runs on x64, where no transcript exists: those numbers are ours, asserted
so that a change is noticed, with the reasoning in comments.

The transcript's "17th chunk" is a[17]; its "18th, 48th, 78th" are a[18], a[48], a[78].
"""

from __future__ import annotations

import itertools
import random
import struct
from dataclasses import dataclass, field

import pytest

from .nativeheap import NativeRun, WalkEntry, run_script

ARCHS = ("x86", "x64")
NO_MORE_ENTRIES = 0x8000001A
HEAP_CORRUPTION = 0xC0000374
# RTL_HEAP_WALK_ENTRY.Flags
BUSY, REGION, UNCOMMITTED, LFH, INTERNAL = 0x1, 0x2, 0x1000, 0x8000, 0x800
BUSY_BLOCK = 0x4011  # RTL_HEAP_ENTRY_BUSY | BLOCK | COMMITTED, as ntheap.c reports busy blocks

# seed 002's keys: LFH key from `!heap -s`, PointerKey from `dt _HEAP`; the transcript shows no
# back-end header word, so it does not imply an Encoding: ours is the default, 0x5F1C3A69
T2_LFH_KEY, T2_POINTER_KEY, ENCODING = 0x3C18DB66, 0x0C58FA9C, 0x5F1C3A69
T2_ANSWERS = [(0x470000, 0x40000), (0x300000, 0x100000)]  # T2 L24, L338


@dataclass
class Story:
    """An operation script with named peeks (``peek ADDRESS LEN``) at checkpoints."""

    arch: str
    lines: list[str] = field(default_factory=list)
    peek_index: dict[str, int] = field(default_factory=dict)
    walk_index: dict[str, int] = field(default_factory=dict)

    @property
    def ptr(self) -> int:
        return 4 if self.arch == "x86" else 8

    def add(self, *lines: str) -> None:
        self.lines += lines

    def peek(self, label: str, address: int, length: int) -> None:
        self.peek_index[label] = len(self.peek_index)
        self.lines.append(f"peek {address:#x} {length:#x}")

    def walk(self, label: str) -> None:
        self.walk_index[label] = len(self.walk_index)
        self.lines += ["validate h 0", "walk h"]


@dataclass
class Result:
    story: Story
    run: NativeRun

    def raw(self, label: str) -> bytes:
        return self.run.peeks[self.story.peek_index[label]]

    def u32(self, label: str) -> list[int]:
        data = self.raw(label)
        return list(struct.unpack(f"<{len(data) // 4}I", data))

    def ptrs(self, label: str) -> list[int]:
        data, fmt = self.raw(label), "I" if self.story.arch == "x86" else "Q"
        return list(struct.unpack(f"<{len(data) // self.story.ptr}{fmt}", data))

    def walk(self, label: str) -> list[WalkEntry]:
        index = self.story.walk_index[label]
        assert self.run.walk_status[index] == NO_MORE_ENTRIES
        return self.run.walks[index]

    def value(self, name: str) -> int:
        return self.run.value(name)


def backend_blocks(walk: list[WalkEntry], gran: int = 8) -> list[tuple[int, int, bool]]:
    """(header address, data size, busy) of the back-end blocks of a walk (no LFH blocks)."""
    return [
        (e.data - gran, e.size, e.busy) for e in walk if not e.flags & (REGION | UNCOMMITTED | LFH)
    ]


def user_blocks(walk: list[WalkEntry]) -> dict[int, int]:
    """The caller's busy blocks (back end, LFH, virtual) of a walk: address -> size."""
    return {e.data: e.size for e in walk if e.busy and not e.flags & INTERNAL}


# ---------------------------------------------------------------------------- seed 002, x86


def seed002_x86() -> Result:
    heap = 0x470000
    lfh = 0x475678  # T2 L294
    local_data = lfh + 0x310  # T2 L650
    info = local_data + 0x18 + 0x68 * 0x20  # SegmentInfo[0x20], T2 L673: 0x4766A0
    s = Story("x86")
    s.add(f"keys {ENCODING:#x} {T2_LFH_KEY:#x} {T2_POINTER_KEY:#x}", "create h 0x1002 0 0")
    s.peek("created", heap, 0x138)
    s.add(*[f"alloc a{i} h 0 0x100" for i in range(17)])
    s.peek("after17", heap, 0x138)
    s.add("alloc a17 h 0 0x100")
    s.peek("after18", heap, 0x138)
    s.peek("lfh18", lfh, 0x48)
    s.add(*[f"alloc a{i} h 0 0x100" for i in range(18, 100)])
    s.walk("after100")
    s.peek("after100", heap, 0x138)
    s.peek("lfh100", lfh, 0x48)
    s.peek("localdata100", local_data, 0x18 + 0x68)  # header and SegmentInfo[0]
    s.peek("info100", info, 0x68)
    s.peek("sub080", 0x4AF080, 0x20)
    s.peek("userblocks302048", 0x302048, 0x1C)
    s.peek("block303708", 0x303708, 8)
    s.add("free h 0 a17")  # T2 L725: "17th chunk(0x4acf28) was deallocated"
    s.walk("after_free17")
    s.peek("after_free17", heap, 0x138)
    s.peek("links_free17", 0x4ACF28, 8)
    s.peek("links_4af430", 0x4AF430, 8)
    s.peek("links_304048", 0x304048, 8)
    s.add("alloc b0 h 0 0x100")  # T2 L842: 0x303710, not 0x4acf28
    s.add("free h 0 a18", "alloc b1 h 0 0x100")  # T2 L916-1002: 0x4ad048 again
    s.peek("info_b1", info, 0x68)
    s.peek("sub040_b1", 0x4AF040, 0x20)
    s.add("free h 0 b1", "free h 0 a48", "free h 0 a78")  # T2 L1173
    s.peek("info_freed", info, 0x68)
    s.add(*[f"alloc c{i} h 0 0x100" for i in range(9)])  # T2 L1271
    s.peek("info_c", info, 0x68)
    s.add("alloc d0 h 0 0x100")  # T2 L1321
    s.peek("info_d", info, 0x68)
    s.add(*[f"alloc e{i} h 0 0x100" for i in range(5)])  # T2 L1504
    s.walk("end")
    return Result(s, run_script(s.lines, arch="x86", heap="win7", answers=T2_ANSWERS))


@pytest.fixture(scope="module")
def t2() -> Result:
    return seed002_x86()


def test_seed002_x86_addresses(t2: Result) -> None:
    got = [t2.value(f"a{i}") for i in range(100)]
    expected = [0x4707D0 + 0x108 * k for k in range(17)]  # T2 L118-134
    expected += [0x4ACF28]  # T2 L218: the 18th is a back-end block
    expected += [0x4AD048 + 0x108 * k for k in range(30)]  # T2 L424-453 (LFH data region)
    expected += [0x300060 + 0x108 * k for k in range(30)]  # T2 L493-522
    expected += [0x302060 + 0x108 * k for k in range(22)]  # T2 L527-548; last is 0x303608
    assert [hex(a) for a in got] == [hex(a) for a in expected]
    assert t2.value("b0") == 0x303710  # LIFO head of the active subsegment, not 0x4ACF28
    assert t2.value("b1") == 0x4AD048  # Hint: the subsegment just freed into
    assert [t2.value(f"c{i}") for i in range(9)] == [
        0x302060,
        0x303818,
        0x303920,
        0x303A28,
        0x303B30,
        0x303C38,
        0x303D40,
        0x303E48,
        0x4AD048,
    ]
    assert t2.value("d0") == 0x300060
    assert [t2.value(f"e{i}") for i in range(5)] == [0x304060 + 0x108 * k for k in range(5)]
    assert t2.run.exceptions == []
    assert set(t2.run.results("validate")) == {1}
    # reservations: the heap (64 pages), then one 1 MiB segment; commits are page-granular
    vm = [(c.base, c.size, c.type) for c in t2.run.vm if c.kind == "alloc"]
    assert vm[:4] == [
        (0, 0x40000, 0x2000),
        (0x470000, 0x1000, 0x1000),  # T2 L24: 4 KiB committed
        (0x471000, 0x1000, 0x1000),  # the 8th block: UnCommittedPages 0x3F -> 0x3E (T2 L157)
        (0x472000, 0x4000, 0x1000),  # the extended lookup (0x3D20)
    ]
    assert (0, 0x100000, 0x2000) in vm and (0x300000, 0x3000, 0x1000) in vm


def test_seed002_x86_heap_fields(t2: Result) -> None:
    created = t2.u32("created")
    # T2 L60-114 (dt _HEAP right after HeapCreate)
    assert created[0x08 // 4] == 0xFFEEFFEE
    assert created[0x10 // 4 : 0x10 // 4 + 2] == [0x4700A8, 0x4700A8]  # SegmentListEntry
    assert created[0x18 // 4 : 0x18 // 4 + 2] == [0x470000, 0x470000]  # Heap, BaseAddress
    assert created[0x20 // 4 : 0x20 // 4 + 5] == [0x40, 0x470588, 0x4B0000, 0x3F, 1]
    assert created[0x38 // 4 : 0x38 // 4 + 2] == [0x470FF0, 0x470FF0]  # UCRSegmentList
    assert created[0x40 // 4 : 0x40 // 4 + 4] == [0x1002, 0, 0, 0x100000]
    assert created[0x50 // 4] == ENCODING
    assert created[0x58 // 4 : 0x58 // 4 + 4] == [T2_POINTER_KEY, 0, 0xFE00, 0xEEFFEEFF]
    assert created[0x68 // 4 : 0x68 // 4 + 6] == [
        0x100000,
        0x2000,
        0x200,
        0x2000,
        0x103,
        0x7FFDEFFF,
    ]
    assert created[0x80 // 4] & 0xFFFF == 1  # ProcessHeapsListIndex: T2's 4th heap has 4
    assert created[0x82 // 4] >> 16 == 0x138  # HeaderValidateLength
    assert created[0x90 // 4 : 0x90 // 4 + 4] == [0x470FE8, 0x470FE8, 0xF, 0xFFFFFFF8]
    assert created[0xA0 // 4 : 0xA0 // 4 + 4] == [0x4700A0, 0x4700A0, 0x470010, 0x470010]
    assert created[0xB8 // 4 : 0xB8 // 4 + 2] == [0x470150, 0x470590]  # BlocksIndex, UCRIndex
    assert created[0xC4 // 4 : 0xC4 // 4 + 5] == [0x4707D0, 0x4707D0, 0x470138, T2_POINTER_KEY, 0]

    after17 = t2.u32("after17")  # T2 L146-200
    assert after17[0x48 // 4] == 0x20000000  # CompatibilityFlags: the LFH is due
    assert after17[0x78 // 4] == 0xD2  # TotalFreeSize
    assert after17[0x2C // 4] == 0x3E  # NumberOfUnCommittedPages
    assert after17[0x38 // 4 : 0x38 // 4 + 2] == [0x471FF0, 0x471FF0]
    assert after17[0xC4 // 4 : 0xC4 // 4 + 2] == [0x471958, 0x471958]
    assert after17[0xD4 // 4] == 0

    after18 = t2.u32("after18")  # T2 L242-296
    assert after18[0x48 // 4] == 0
    assert after18[0x2C // 4] == 2
    assert after18[0x38 // 4 : 0x38 // 4 + 2] == [0x4ADFF0, 0x4ADFF0]
    assert after18[0x70 // 4] == 0x800  # DeCommitFreeBlockThreshold (T2 L269)
    assert after18[0x78 // 4] == 0x1F7
    assert after18[0x90 // 4 : 0x90 // 4 + 2] == [0x4ADFE8, 0x4ADFE8]
    assert after18[0xC4 // 4 : 0xC4 // 4 + 2] == [0x4AD030, 0x4AD030]
    assert after18[0xD4 // 4] == 0x475678  # FrontEndHeap
    assert after18[0xD8 // 4] >> 16 & 0xFF == 2  # FrontEndHeapType (+0xDA)
    lfh = t2.u32("lfh18")  # T2 L298-315
    assert lfh[0x18 // 4 : 0x18 // 4 + 4] == [0x475690, 0x475690, 0x20, 0x470000]

    after100 = t2.u32("after100")  # T2 L556-610
    assert after100[0x10 // 4 : 0x10 // 4 + 2] == [0x300010, 0x4700A8]
    assert after100[0x2C // 4 : 0x2C // 4 + 2] == [0, 1]
    assert after100[0x38 // 4 : 0x38 // 4 + 2] == [0x4AFFF0, 0x4AFFF0]
    assert after100[0x68 // 4] == 0x200000  # SegmentReserve doubled
    assert after100[0x78 // 4] == 0x36B
    assert after100[0x90 // 4 : 0x90 // 4 + 2] == [0x304FE8, 0x304FE8]  # only segment 1's UCR
    assert after100[0xA8 // 4 : 0xA8 // 4 + 2] == [0x470010, 0x300010]
    assert after100[0xC4 // 4 : 0xC4 // 4 + 2] == [0x4AF430, 0x304048]  # 0xBB8, then 0xFA0

    after_free = t2.u32("after_free17")  # T2 L738-760
    assert after_free[0x78 // 4] == 0x38C
    assert after_free[0xC4 // 4 : 0xC4 // 4 + 2] == [0x4ACF28, 0x304048]
    # FreeList[00]: 0x108, 0xBB8, 0xFA0 in ascending size (T2 L760: 3 blocks)
    assert t2.u32("links_free17") == [0x4AF430, 0x4700C4]
    assert t2.u32("links_4af430") == [0x304048, 0x4ACF28]
    assert t2.u32("links_304048") == [0x4700C4, 0x4AF430]


def test_seed002_x86_lfh_structures(t2: Result) -> None:
    lfh = t2.u32("lfh100")  # T2 L612-629
    assert lfh[0x18 // 4 : 0x18 // 4 + 4] == [0x4AF030, 0x4AF030, 0x20, 0x470000]
    assert lfh[0x2C // 4] == 3 and lfh[0x38 // 4] == 3  # SegmentCreate, CacheAllocs
    local = t2.u32("localdata100")  # T2 L650-668
    assert local[2:5] == [0x4AF030, 0x475678, 3]  # CrtZone, LowFragHeap, Sequence
    assert local[0x18 // 4 :] == [0] * (0x68 // 4)  # SegmentInfo[0]: never used
    info = t2.u32("info100")  # T2 L673-683
    assert info[0:2] == [0, 0x4AF080]  # Hint, ActiveSubsegment
    assert info[2:18] == [0] * 16
    assert info[0x50 // 4 :] == [0x5A, 3, 0x475988, 3, 0x20, 0]
    # not modelled: T2 shows SListHeader 00000000 00070000 (L1261); ours stays zero
    assert info[0x48 // 4 : 0x50 // 4] == [0, 0]
    sub = t2.u32("sub080")  # T2 L685-697, L707-712
    assert sub == [0x4766A0, 0x302048, 0x02D80008, 1, 0x21, 0x0020001E, 0, 7]
    assert t2.u32("userblocks302048") == [  # T2 L816-821
        0x4AF080,
        0x4AF430,  # Reserved: a stale free-list link, as in T2
        0xD,
        0xF0E0D0C0,
        0x3C132FED,  # the encoded LFH header word (T2 L719)
        0x88000000,
        0x23,  # a busy block keeps its old free-chain offset
    ]
    assert t2.u32("block303708") == [0x3C132D07, 0x80000000]  # a free block (T2 L837)


def test_seed002_x86_hint_and_cached_items(t2: Result) -> None:
    info = t2.u32("info_b1")  # T2 L1110-1120: after freeing and reallocating 0x4ad048
    assert info[0:4] == [0x4AF040, 0x4AF080, 0x4AF040, 0]
    assert t2.u32("sub040_b1")[2:] == [0xFFFF0000, 2, 0x21, 0x0020001E, 0, 3]  # T2 L1122-1140
    info = t2.u32("info_freed")  # T2 L1249-1268
    assert info[0:5] == [0x4AF080, 0x4AF080, 0x4AF040, 0x4AF060, 0]
    assert info[0x60 // 4] == 0x20  # LastUsed 0
    info = t2.u32("info_c")  # T2 L1300-1318
    assert info[0:5] == [0, 0x4AF040, 0, 0x4AF060, 0]
    assert info[0x60 // 4] == 0x20
    info = t2.u32("info_d")  # T2 L1334-1342
    assert info[2:18] == [0] * 16
    assert info[0x60 // 4] == 0x00010020  # LastUsed 1


def test_seed002_x86_segments(t2: Result) -> None:
    # T2 L357-392: `!heap -h` after the 100 allocations, from FirstEntry (the heap header
    # block at 0x470000 is not a walk entry); data sizes are the "requested" column
    seg0 = [(0x470588, 0x23F, True)]
    seg0 += [(0x4707C8 + 0x108 * k, 0x100, True) for k in range(17)]
    seg0 += [
        (0x471950, 0x3D1F, True),  # extended lookup
        (0x475670, 0x378A8, True),  # _LFH_HEAP, Internal
        (0x4ACF20, 0x100, True),  # the 18th allocation
        (0x4AD028, 0x1FF8, True),  # UserBlocks, Internal
        (0x4AF028, 0x3F8, True),  # subsegment zone, Internal
        (0x4AF428, 0xBB0, False),  # free 0xBB8
        (0x4AFFE0, 0x1D, True),  # UCR sentinel (its UCR is 0 bytes: no uncommitted entry)
    ]
    seg1 = [
        (0x300040, 0x1FF8, True),
        (0x302040, 0x1FF8, True),
        (0x304040, 0xF98, False),  # free 0xFA0
        (0x304FE0, 0x1D, True),
    ]
    walk = t2.walk("after100")
    assert backend_blocks(walk) == seg0 + seg1
    regions = [
        (e.data, e.size, e.committed, e.first_block, e.last_block) for e in walk if e.is_region
    ]
    assert regions == [
        (0x470000, 0x40000, 0x40000, 0x470588, 0x4B0000),
        (0x300000, 0x100000, 0x5000, 0x300040, 0x400000),  # T2 L338: 0x5000 committed
    ]
    assert [(e.data, e.size) for e in walk if e.is_uncommitted] == [(0x305000, 0xFB000)]
    lfh_blocks = [e for e in walk if e.flags & LFH]
    assert len(lfh_blocks) == 90 and sum(not e.busy for e in lfh_blocks) == 8
    assert all(e.flags == BUSY_BLOCK | LFH and e.size == 0x100 for e in lfh_blocks if e.busy)
    walk = t2.walk("after_free17")
    assert (0x4ACF20, 0x100, False) in backend_blocks(walk)  # stays free (T2 L785, L845)


# ---------------------------------------------------------------------------- seed 002, x64


def seed002_x64() -> Result:
    """The same story with x64's numbers: 0x110-byte blocks, so 29 per 0x2000 UserBlocks; the
    18 back-end allocations, then 29 + 29 + 21 LFH ones leave 8 free blocks in the third
    subsegment, as T2's 22 do in its 30. a[18], a[47], a[76] are the first blocks of the three
    subsegments."""
    heap = 0x470000
    s = Story("x64")
    s.add(f"keys {ENCODING:#x} {T2_LFH_KEY:#x} {T2_POINTER_KEY:#x}", "create h 0x1002 0 0")
    s.add(*[f"alloc a{i} h 0 0x100" for i in range(17)])
    s.peek("after17", heap, 0x208)
    s.add("alloc a17 h 0 0x100")
    s.peek("after18", heap, 0x208)
    s.add(*[f"alloc a{i} h 0 0x100" for i in range(18, 97)])
    s.walk("after97")
    s.add("free h 0 a17", "alloc b0 h 0 0x100", "free h 0 a18", "alloc b1 h 0 0x100")
    s.add("free h 0 b1", "free h 0 a47", "free h 0 a76")
    s.add(*[f"alloc c{i} h 0 0x100" for i in range(9)])
    s.add("alloc d0 h 0 0x100")
    s.add(*[f"alloc e{i} h 0 0x100" for i in range(5)])
    s.walk("end")
    return Result(s, run_script(s.lines, arch="x64", heap="win7", answers=T2_ANSWERS))


def test_seed002_x64_story() -> None:
    r = seed002_x64()
    assert r.run.exceptions == [] and set(r.run.results("validate")) == {1}
    # x64 header block: HEAP 0x208 + lock 0x28 + lookup 0x38 + bitmap 0x10 + 0x80 ListHints of
    # 0x10 = 0xA78 -> 0xA80; the UCR index block 0x480: the first block is at 0x470F00
    assert [r.value(f"a{i}") for i in range(17)] == [0x470F10 + 0x110 * k for k in range(17)]
    after17, after18 = r.ptrs("after17"), r.ptrs("after18")
    assert after17[0x78 // 8] & 0xFFFFFFFF == 0x20000000  # CompatibilityFlags at +0x78
    assert after18[0x78 // 8] & 0xFFFFFFFF == 0
    lfh = after18[0x178 // 8]  # FrontEndHeap
    assert after18[0x180 // 8] >> 16 & 0xFF == 2  # FrontEndHeapType at +0x182
    assert after18[0xB8 // 8] == 0x4000 // 16  # DeCommitFreeBlockThreshold: 0x4000 bytes
    # the _LFH_HEAP (0x3F0 + 17 * 0x6030 = 0x66720 bytes) does not fit the 0x40000 reservation:
    # it opens the second segment (0x300000, header 0x70), and the 18th block follows it
    assert lfh == 0x300080
    assert r.value("a17") == 0x300080 + 0x66720 + 0x10
    users = [0x479A60, 0x47BA60, 0x47DA60]  # UserBlocks (0x2000) after the extended lookup
    expected = [u + 0x20 + 0x10 + 0x110 * k for u in users for k in range(29)][: 97 - 18]
    assert [r.value(f"a{i}") for i in range(18, 97)] == expected
    third = [users[2] + 0x30 + 0x110 * k for k in range(29)]
    assert r.value("b0") == third[21]  # LIFO: the next free block of the active subsegment
    assert r.value("b1") == r.value("a18")  # Hint
    assert [r.value(f"c{i}") for i in range(9)] == [
        r.value("a76"),
        *third[22:29],
        r.value("a18"),
    ]
    assert r.value("d0") == r.value("a47")
    # then a new UserBlocks: TotalBlocks 87 -> floor(log2(87 * 0x110 + 0x30)) = 14: 0x4000
    e0 = r.value("e0")
    assert [r.value(f"e{i}") for i in range(5)] == [e0 + 0x110 * k for k in range(5)]
    walk = r.walk("end")
    ub = [(b, size) for b, size, _ in backend_blocks(walk, 16) if size in (0x1FF0, 0x3FF0)]
    assert ub == [(u - 0x10, 0x1FF0) for u in users] + [(e0 - 0x30 - 0x10, 0x3FF0)]


# ---------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("arch", ARCHS)
def test_header_encoding(arch: str) -> None:
    gran, shift, fmt = (8, 3, "<I") if arch == "x86" else (16, 4, "<Q")
    encoding, lfh_key = 0x1234ABCD, 0x0BADC0DE
    lines = [f"keys {encoding:#x} {lfh_key:#x} 0", "create h 0x1002 0 0"]
    lines += [f"alloc a{i} h 0 0x100" for i in range(20)]
    lines += [f"peek a0-{gran} {gran}", f"peek a19-{gran} {gran}", "peek h 0x300"]
    lines += [f"peek a18-{3 * gran} {2 * gran}"]  # a18 is the first block of its UserBlocks
    run = run_script(lines, arch=arch, heap="win7")
    back, front, heap, userblocks = run.peeks
    h = run.value("h")
    # back end: Size|Flags|SmallTagIndex XORed with _HEAP.Encoding (x86 +0x50, x64 +0x88)
    units = 0x108 // 8 if arch == "x86" else 0x110 // 16
    word = units | 1 << 16  # Flags: BUSY
    word |= ((units & 0xFF) ^ (units >> 8) ^ 1) << 24  # SmallTagIndex: XOR of bytes 0-2
    off = 0 if arch == "x86" else 8
    assert struct.unpack_from("<I", back, off)[0] == word ^ encoding
    assert back[off + 7] == gran  # UnusedBytes: 0x108 - 0x100 / 0x110 - 0x100
    assert struct.unpack_from("<I", heap, 0x50 if arch == "x86" else 0x88)[0] == encoding
    assert struct.unpack_from("<I", heap, 0x4C if arch == "x86" else 0x7C)[0] == 0x100000
    # LFH: Heap ^ SubSegment ^ LFHKey ^ (header >> 3) on x86; x64 (our choice) the 64-bit code
    # with >> 4 in PreviousBlockPrivateData and its low half again at +8
    sub = struct.unpack_from(fmt, userblocks, 0)[0]
    header = run.value("a19") - gran
    code = h ^ sub ^ lfh_key ^ (header >> shift)
    if arch == "x86":
        assert struct.unpack_from("<I", front, 0)[0] == code & 0xFFFFFFFF
    else:
        assert struct.unpack_from("<QI", front, 0) == (code, code & 0xFFFFFFFF)
    assert front[gran - 1] == 0x80 | gran  # busy, unused bytes 8 / 0x10
    signature = struct.unpack_from(fmt, userblocks, 3 * (gran // 2))[0]  # +0xC / +0x18
    assert signature == 0xF0E0D0C0


def test_seed_keys_reproduce_the_lfh_header_words() -> None:
    lines = ["create h 0x1002 0 0"]  # no `keys` line: the defaults are seed 002's keys
    lines += [f"alloc a{i} h 0 0x100" for i in range(100)]
    lines += ["peek 0x302058 8", "peek 0x303708 8"]
    run = run_script(lines, arch="x86", heap="win7", answers=T2_ANSWERS)
    assert [struct.unpack("<2I", p) for p in run.peeks] == [
        (0x3C132FED, 0x88000000),
        (0x3C132D07, 0x80000000),
    ]
    # another LFH key, another word: Heap ^ SubSegment ^ key ^ (header >> 3)
    other = ["keys 0x5f1c3a69 0x11111111 0", *lines]
    run = run_script(other, arch="x86", heap="win7", answers=T2_ANSWERS)
    word = 0x470000 ^ 0x4AF080 ^ 0x11111111 ^ (0x302058 >> 3)
    assert struct.unpack("<I", run.peeks[0][:4])[0] == word


# ---------------------------------------------------------------------------- random operations


def gran_of(arch: str) -> int:
    return 8 if arch == "x86" else 16


def virtual_threshold(arch: str) -> int:
    """Bytes above which a request gets its own region (VirtualMemoryThreshold units * G)."""
    return 0xFE00 * 8 if arch == "x86" else 0xFF00 * 16


@dataclass
class RandomScript:
    lines: list[str] = field(default_factory=list)
    snapshots: list[dict[str, int]] = field(default_factory=list)  # live blocks after each step
    sizes: list[int] = field(default_factory=list)


def random_script(seed: int, arch: str, steps: int) -> RandomScript:
    """Allocations (a few hot sizes, so LFH buckets activate; random small and medium sizes;
    now and then a virtual block), frees and reallocations, with RtlValidateHeap and RtlWalkHeap
    after every step, data written and checked."""
    rng = random.Random(seed)
    vmt = virtual_threshold(arch)
    hot = [0x10, 0x28, 0x40, 0x100, 0x180, 0x400]
    out = RandomScript(["create h 0x1002 0 0"])
    live: dict[str, int] = {}
    seeds: dict[str, int] = {}
    count = 0

    def size() -> int:
        r = rng.random()
        if r < 0.55:
            return rng.choice(hot)
        if r < 0.8:
            return rng.randint(0, 0x1000)
        if r < 0.97:
            return rng.randint(0x1000, 0x30000)
        return vmt + rng.randint(1, 0x10000)

    def alloc(n: int) -> None:
        nonlocal count
        count += 1
        name = f"p{count}"
        out.lines += [f"alloc {name} h 0 {n:#x}", f"fill {name} {count} {n:#x}"]
        live[name], seeds[name] = n, count

    # warm-up, as a program that starts with many objects of a few sizes: the LFH activates
    for n in hot:
        for _ in range(18):
            alloc(n)
    for _ in range(steps):
        r = rng.random()
        if r < 0.55 or not live:
            count += 1
            name, n = f"p{count}", size()
            out.lines += [f"alloc {name} h 0 {n:#x}", f"fill {name} {count} {n:#x}"]
            live[name], seeds[name] = n, count
        elif r < 0.85:
            name = rng.choice(sorted(live))
            out.lines += [f"check {name} {seeds[name]} {live[name]:#x}", f"free h 0 {name}"]
            del live[name]
        else:
            old = rng.choice(sorted(live))
            count += 1
            name, n = f"p{count}", size() if rng.random() < 0.5 else live[old] + rng.randint(-8, 64)
            n = max(n, 0)
            keep = min(n, live[old])
            out.lines += [
                f"realloc {name} h 0 {old} {n:#x}",
                f"check {name} {seeds[old]} {keep:#x}",
                f"fill {name} {count} {n:#x}",
                f"size h 0 {name}",
            ]
            out.sizes.append(n)
            del live[old]
            live[name], seeds[name] = n, count
        out.lines += ["validate h 0", "walk h"]
        out.snapshots.append(dict(live))
    for name in sorted(live):
        out.lines += [f"check {name} {seeds[name]} {live[name]:#x}", f"free h 0 {name}"]
    out.lines += ["validate h 0", "walk h"]
    out.snapshots.append({})
    return out


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("seed", [1, 2])
def test_random_operations(arch: str, seed: int) -> None:
    script = random_script(seed, arch, 400)
    run = run_script(script.lines, arch=arch, heap="win7")
    assert run.exceptions == []
    assert run.checks and all(run.checks), "data did not survive"
    assert set(run.results("free")) == {1}
    assert run.results("validate") == [1] * len(script.snapshots)
    assert run.results("size") == script.sizes
    assert len(run.walks) == len(script.snapshots)
    lfh_seen = 0
    for walk, status, live in zip(run.walks, run.walk_status, script.snapshots, strict=True):
        assert status == NO_MORE_ENTRIES
        expected = {run.value(name): n for name, n in live.items()}
        assert user_blocks(walk) == expected
        spans = sorted(expected.items())
        for (a, n), (b, _) in itertools.pairwise(spans):
            assert a + n <= b, f"blocks {a:#x}+{n:#x} and {b:#x} overlap"
        regions = [e for e in walk if e.is_region]
        assert [e.region for e in regions] == list(range(len(regions)))
        lfh_seen += sum(1 for e in walk if e.flags & LFH and e.busy)
    assert lfh_seen, "no LFH block was ever used"
    assert any(c.kind == "free" and c.type == 0x4000 for c in run.vm), "nothing was decommitted"
    vmt = virtual_threshold(arch)
    assert any(n > vmt for live in script.snapshots for n in live.values())
    # everything freed: each segment is back to free space (+ the heap's own blocks)
    assert user_blocks(run.walks[-1]) == {}


# ---------------------------------------------------------------------------- corruption


@pytest.mark.parametrize("arch", ARCHS)
def test_overflow_into_lfh_header_is_detected(arch: str) -> None:
    lines = ["create h 0x1002 0 0", *[f"alloc a{i} h 0 0x100" for i in range(22)]]
    lines += ["validate h 0", "validate h 0 a20", "fill a19 1 0x101", "validate h 0"]
    lines += ["validate h 0 a20", "validate h 0 a19", "free h 0 a20", "free h 0 a19"]
    run = run_script(lines, arch=arch, heap="win7")
    assert run.value("a20") == run.value("a19") + (0x108 if arch == "x86" else 0x110)
    assert run.results("validate") == [1, 1, 0, 0, 1]
    assert run.exceptions == [HEAP_CORRUPTION]  # RtlFreeHeap(a20) raised
    assert run.results("free") == [1]  # a19's own header is intact


@pytest.mark.parametrize("arch", ARCHS)
def test_overflow_into_backend_header_is_detected(arch: str) -> None:
    gran = gran_of(arch)
    lines = ["create h 0x1002 0 0", "alloc b0 h 0 0x300", "alloc b1 h 0 0x300", "validate h 0"]
    lines += [f"fill b0 5 {0x300 + gran:#x}", "validate h 0", "validate h 0 b1", "free h 0 b1"]
    lines += ["size h 0 b1", "realloc c h 0 b1 0x10", "free h 0 b0"]
    run = run_script(lines, arch=arch, heap="win7")
    assert run.value("b1") == run.value("b0") + 0x300 + gran
    assert run.results("validate") == [1, 0, 0]
    # free, size and realloc of b1; then freeing b0 meets the bad header while coalescing
    assert run.exceptions == [HEAP_CORRUPTION] * 4
    assert run.results("free") == []


@pytest.mark.parametrize("arch", ARCHS)
def test_double_free_raises(arch: str) -> None:
    lines = ["create h 0x1002 0 0", "alloc b h 0 0x300", "free h 0 b", "free h 0 b"]
    lines += [*[f"alloc a{i} h 0 0x40" for i in range(20)], "free h 0 a19", "free h 0 a19"]
    lines += ["free h 0 0x12345", "validate h 0"]
    run = run_script(lines, arch=arch, heap="win7")
    assert run.exceptions == [HEAP_CORRUPTION, HEAP_CORRUPTION]
    assert run.results("free") == [1, 1, 0]  # a pointer outside the heap: FALSE
    assert run.results("validate") == [1]


# ---------------------------------------------------------------------------- API behaviour


@pytest.mark.parametrize("arch", ARCHS)
def test_virtual_blocks(arch: str) -> None:
    # the threshold counts units with the header: the largest back-end request is vmt - G
    vmt = virtual_threshold(arch) - gran_of(arch)
    header = 0x20 if arch == "x86" else 0x40
    lines = ["create h 0x1002 0 0", f"alloc v h 0 {vmt + 1:#x}", f"alloc w h 0 {vmt:#x}"]
    lines += ["size h 0 v", "validate h 0", "walk h", "free h 0 v", "validate h 0"]
    lines += ["create f 0 0x100000 0", f"alloc x f 0 {vmt + 1:#x}"]  # not growable: refused
    run = run_script(lines, arch=arch, heap="win7")
    v = run.value("v")
    reservations = [b for b, _ in run.reservations()]
    assert v - header in reservations  # its own region, data after the 0x20 / 0x40 header
    assert run.value("w") - header not in reservations  # exactly the threshold: back end
    assert run.results("size") == [vmt + 1]
    walk = run.walks[0]
    assert walk[-1].data == v and walk[-1].flags == BUSY_BLOCK and walk[-1].size == vmt + 1
    assert any(c.kind == "free" and c.base == v - header and c.type == 0x8000 for c in run.vm)
    assert run.value("x") == 0
    assert run.results("validate") == [1, 1]


@pytest.mark.parametrize("arch", ARCHS)
def test_decommit_and_recommit(arch: str) -> None:
    gran = gran_of(arch)
    sizes = [0x3000 + 0x100 * i for i in range(12)]  # distinct sizes: no LFH
    lines = ["create h 0x1002 0 0", *[f"alloc b{i} h 0 {n:#x}" for i, n in enumerate(sizes)]]
    lines += ["alloc keep h 0 0x20", "validate h 0"]
    lines += [f"free h 0 b{i}" for i in range(len(sizes))]
    lines += ["validate h 0", "walk h"]
    lines += [*[f"alloc c{i} h 0 {n:#x}" for i, n in enumerate(sizes)], "validate h 0"]
    run = run_script(lines, arch=arch, heap="win7")
    decommits = [c for c in run.vm if c.kind == "free" and c.type == 0x4000]
    assert decommits and all(c.status == 0 for c in decommits)
    walk = run.walks[0]
    uncommitted = [e for e in walk if e.is_uncommitted]
    assert uncommitted and sum(e.size for e in uncommitted) >= sum(sizes) // 2
    assert run.results("validate") == [1, 1, 1]
    assert run.exceptions == []
    assert all(run.value(f"c{i}") for i in range(len(sizes)))
    last = max(i for i, c in enumerate(run.vm) if c.kind == "free" and c.type == 0x4000)
    assert [c for c in run.vm[last:] if c.kind == "alloc" and c.type == 0x1000]  # recommitted
    assert all(c.base % 0x1000 == 0 and c.size % 0x1000 == 0 for c in decommits)
    assert not [c for c in run.vm[last:] if c.kind == "alloc" and c.type & 0x2000]  # no growth
    assert gran in (8, 16)


@pytest.mark.parametrize("arch", ARCHS)
def test_heap_information_and_lfh_rules(arch: str) -> None:
    lines = ["create h 0x1002 0 0", "query h", "setinfo h 2", "query h", "setinfo h 0"]
    lines += ["create n 0x1003 0 0", "setinfo n 2", "query n"]  # HEAP_NO_SERIALIZE: no LFH
    lines += [*[f"alloc a{i} n 0 0x100" for i in range(40)], "query n", "validate n 0"]
    lines += ["setinfo h 1"]
    run = run_script(lines, arch=arch, heap="win7")
    assert run.results("query") == [0, 2, 0, 0]
    assert run.results("querystatus") == [0] * 4
    assert run.results("setinfo") == [0, 0xC0000001, 0xC0000001, 0xC0000001]
    step = 0x108 if arch == "x86" else 0x110
    assert [run.value(f"a{i}") for i in range(40)] == [
        run.value("a0") + step * i for i in range(40)
    ]


@pytest.mark.parametrize("arch", ARCHS)
def test_lfh_subsegments_are_released_and_reused(arch: str) -> None:
    n = 200
    lines = ["create h 0x1002 0 0", *[f"alloc a{i} h 0 0x40" for i in range(n)]]
    lines += ["validate h 0", "walk h", *[f"free h 0 a{i}" for i in range(n)], "validate h 0"]
    lines += ["walk h", *[f"alloc b{i} h 0 0x40" for i in range(n)], "validate h 0", "walk h"]
    run = run_script(lines, arch=arch, heap="win7")
    assert run.exceptions == [] and run.results("validate") == [1, 1, 1]
    full, emptied, again = run.walks

    def userblocks(walk: list[WalkEntry]) -> list[int]:  # Internal blocks followed by LFH blocks
        return [a.data for a, b in itertools.pairwise(walk) if a.flags & INTERNAL and b.flags & LFH]

    assert len(userblocks(full)) >= 3
    # only the active subsegment keeps its UserBlocks once everything is free
    assert len(userblocks(emptied)) == 1
    assert not [e for e in emptied if e.flags & LFH and e.busy]
    assert len(user_blocks(again)) == n
    assert {run.value(f"b{i}") for i in range(n)} & {run.value(f"a{i}") for i in range(n)}


@pytest.mark.parametrize("arch", ARCHS)
def test_realloc_flags_zero_and_lock(arch: str) -> None:
    lines = ["create h 0x1002 0 0", "alloc a h 0 0x200", "fill a 3 0x200", "alloc b h 0 0x40"]
    lines += ["free h 0 b", "realloc c h 0 a 0x230", "check c 3 0x200"]  # grows in place
    lines += ["realloc d h 0x10 c 0x9000", "realloc e h 0 c 0x9000", "check e 3 0x200"]
    lines += ["alloc z h 0x8 0x80", "peek z 0x80", "size h 0 e", "validate h 0"]
    lines += ["unlock h", "lock h", "lock h", "unlock h", "unlock h", "unlock h", "heaps"]
    lines += ["destroy h", "heaps"]
    run = run_script(lines, arch=arch, heap="win7")
    assert run.value("c") == run.value("a")
    assert run.value("d") == 0  # HEAP_REALLOC_IN_PLACE_ONLY
    assert run.value("e") not in (0, run.value("a"))
    assert all(run.checks) and run.peeks == [b"\0" * 0x80]
    assert run.results("size") == [0x9000]
    assert run.results("unlock") == [0, 1, 1, 0] and run.results("lock") == [1, 1]
    h = run.value("h")
    assert run.heaps == [[h], []]
    assert run.results("destroy") == [0]
    released = {c.base for c in run.vm if c.kind == "free" and c.type == 0x8000}
    assert {b for b, _ in run.reservations()} <= released
    assert run.results("validate") == [1]


def test_each_heap_gets_the_next_encoding() -> None:
    lines = ["keys 0x5f1c3a69 0x3c18db66 0", "create h 0x1002 0 0", "create g 0x1002 0 0"]
    lines += ["peek h+0x50 4", "peek g+0x50 4", "keys 0x5f1c3a69 0x3c18db66 0", "create k 2 0 0"]
    lines += [
        "peek k+0x50 4",
        "alloc a g 0 0x10",
        "alloc b h 0 0x10",
        "validate g 0",
        "validate h 0",
    ]
    run = run_script(lines, arch="x86", heap="win7")
    x = 0x5F1C3A69
    for shift in (13, -17, 5):  # xorshift32
        x = (x ^ (x << shift if shift > 0 else x >> -shift)) & 0xFFFFFFFF
    h, g, k = (struct.unpack("<I", p)[0] for p in run.peeks)
    assert (h, g, k) == (0x5F1C3A69, x, 0x5F1C3A69)
    assert run.results("validate") == [1, 1]
