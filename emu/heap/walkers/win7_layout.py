"""The Windows 7 NT heap's structures (``asm/src/win7heap.h``), declared once as data.

Windows' own names and Windows 7 SP1's offsets, x86 and x64 side by side (``None``: the field
does not exist on that architecture, as ``_HEAP_ENTRY.PreviousBlockPrivateData`` on x86).
``tests/test_win7_walker.py`` compiles every offset and size below as static assertions against
the C header, so this table and the C cannot drift apart. The walker (``win7.py``) reads the heap
through it and the views show it (``dt _HEAP``, ``_HEAP_ENTRY``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

from emu.heap.walkers.model import _SCALAR, FieldSpec

_KIND_SIZE = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}


@dataclass(frozen=True)
class W7Field:
    name: str
    x86: int | None
    x64: int | None
    kind: str = "ptr"  # u8/u16/u32/u64, "ptr", or the name of a nested structure
    count: int = 1  # array length

    def offset(self, arch: str) -> int | None:
        return self.x64 if arch == "x64" else self.x86


@dataclass(frozen=True)
class W7Struct:
    name: str
    size_x86: int
    size_x64: int
    fields: tuple[W7Field, ...]

    def size(self, arch: str) -> int:
        return self.size_x64 if arch == "x64" else self.size_x86

    def field(self, name: str) -> W7Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name}")

    def offset(self, arch: str, name: str) -> int:
        """Offset of ``name`` (dotted names reach into nested structures)."""
        head, _, rest = name.partition(".")
        f = self.field(head)
        off = f.offset(arch)
        if off is None:
            raise KeyError(f"{self.name}.{head} does not exist on {arch}")
        return off + (STRUCTS[f.kind].offset(arch, rest) if rest else 0)

    def field_size(self, arch: str, name: str) -> int:
        """Bytes of one element of field ``name`` (dotted names allowed)."""
        head, _, rest = name.partition(".")
        f = self.field(head)
        if rest:
            return STRUCTS[f.kind].field_size(arch, rest)
        return element_size(f.kind, arch)

    def specs(self, arch: str, prefix: str = "", base: int = 0, depth: int = 1) -> list[FieldSpec]:
        """FieldSpecs in offset order, nested structures (to ``depth`` levels) expanded after
        their container."""
        out: list[FieldSpec] = []
        for f in self.fields:
            off = f.offset(arch)
            if off is None:
                continue
            size = element_size(f.kind, arch)
            if f.count > 1:
                out.append(
                    FieldSpec(
                        base + off,
                        prefix + f.name,
                        f"[{f.count}] {f.kind}",
                        size * f.count,
                        scalar=False,
                    )
                )
            elif f.kind in STRUCTS:
                out.append(FieldSpec(base + off, prefix + f.name, f.kind, size, scalar=False))
                if depth > 0:
                    out += STRUCTS[f.kind].specs(arch, f"{prefix}{f.name}.", base + off, depth - 1)
            else:
                out.append(FieldSpec(base + off, prefix + f.name, _SCALAR[size], size))
        return out


def element_size(kind: str, arch: str) -> int:
    if kind == "ptr":
        return 8 if arch == "x64" else 4
    if kind in _KIND_SIZE:
        return _KIND_SIZE[kind]
    return STRUCTS[kind].size(arch)


F = W7Field
LIST = "_LIST_ENTRY"
ENTRY = "_HEAP_ENTRY"

_DECLS = (
    W7Struct("_LIST_ENTRY", 8, 0x10, (F("Flink", 0, 0), F("Blink", 4, 8))),
    W7Struct(
        "_HEAP_ENTRY",
        8,
        0x10,
        (
            F("PreviousBlockPrivateData", None, 0, "u64"),
            F("Size", 0, 8, "u16"),
            F("Flags", 2, 0xA, "u8"),
            F("SmallTagIndex", 3, 0xB, "u8"),
            F("PreviousSize", 4, 0xC, "u16"),
            F("SegmentOffset", 6, 0xE, "u8"),
            F("UnusedBytes", 7, 0xF, "u8"),
        ),
    ),
    W7Struct(
        "_HEAP_FREE_ENTRY", 0x10, 0x20, (F("Entry", 0, 0, ENTRY), F("FreeList", 8, 0x10, LIST))
    ),
    W7Struct(
        "_HEAP_ENTRY_EXTRA",
        8,
        0x10,
        (
            F("AllocatorBackTraceIndex", 0, 0, "u16"),
            F("TagIndex", 2, 2, "u16"),
            F("Settable", 4, 8),
        ),
    ),
    W7Struct(
        "_HEAP_VIRTUAL_ALLOC_ENTRY",
        0x20,
        0x40,
        (
            F("Entry", 0, 0, LIST),
            F("ExtraStuff", 8, 0x10, "_HEAP_ENTRY_EXTRA"),
            F("CommitSize", 0x10, 0x20),
            F("ReserveSize", 0x14, 0x28),
            F("BusyBlock", 0x18, 0x30, ENTRY),
        ),
    ),
    W7Struct(
        "_HEAP_UCR_DESCRIPTOR",
        0x18,
        0x30,
        (
            F("ListEntry", 0, 0, LIST),
            F("SegmentEntry", 8, 0x10, LIST),
            F("Address", 0x10, 0x20),
            F("Size", 0x14, 0x28),
        ),
    ),
    W7Struct(
        "_HEAP_SEGMENT",
        0x40,
        0x70,
        (
            F("Entry", 0, 0, ENTRY),
            F("SegmentSignature", 8, 0x10, "u32"),
            F("SegmentFlags", 0xC, 0x14, "u32"),
            F("SegmentListEntry", 0x10, 0x18, LIST),
            F("Heap", 0x18, 0x28),
            F("BaseAddress", 0x1C, 0x30),
            F("NumberOfPages", 0x20, 0x38, "u32"),
            F("FirstEntry", 0x24, 0x40),
            F("LastValidEntry", 0x28, 0x48),
            F("NumberOfUnCommittedPages", 0x2C, 0x50, "u32"),
            F("NumberOfUnCommittedRanges", 0x30, 0x54, "u32"),
            F("SegmentAllocatorBackTraceIndex", 0x34, 0x58, "u16"),
            F("Reserved", 0x36, 0x5A, "u16"),
            F("UCRSegmentList", 0x38, 0x60, LIST),
        ),
    ),
    W7Struct(
        "_HEAP_COUNTERS",
        0x54,
        0x70,
        (
            F("TotalMemoryReserved", 0, 0),
            F("TotalMemoryCommitted", 4, 8),
            F("TotalMemoryLargeUCR", 8, 0x10),
            F("TotalSizeInVirtualBlocks", 0xC, 0x18),
            F("TotalSegments", 0x10, 0x20, "u32"),
            F("TotalUCRs", 0x14, 0x24, "u32"),
            F("CommittOps", 0x18, 0x28, "u32"),
            F("DeCommitOps", 0x1C, 0x2C, "u32"),
            F("LockAcquires", 0x20, 0x30, "u32"),
            F("LockCollisions", 0x24, 0x34, "u32"),
            F("CommitRate", 0x28, 0x38, "u32"),
            F("DecommittRate", 0x2C, 0x3C, "u32"),
            F("CommitFailures", 0x30, 0x40, "u32"),
            F("InBlockCommitFailures", 0x34, 0x44, "u32"),
            F("CompactHeapCalls", 0x38, 0x48, "u32"),
            F("CompactedUCRs", 0x3C, 0x4C, "u32"),
            F("AllocAndFreeOps", 0x40, 0x50, "u32"),
            F("InBlockDeccommits", 0x44, 0x54, "u32"),
            F("InBlockDeccomitSize", 0x48, 0x58),
            F("HighWatermarkSize", 0x4C, 0x60),
            F("LastPolledSize", 0x50, 0x68),
        ),
    ),
    W7Struct(
        "_HEAP_TUNING_PARAMETERS",
        8,
        0x10,
        (F("CommittThresholdShift", 0, 0, "u32"), F("MaxPreCommittThreshold", 4, 8)),
    ),
    W7Struct(
        "_HEAP",
        0x138,
        0x208,
        (
            F("Segment", 0, 0, "_HEAP_SEGMENT"),
            F("Flags", 0x40, 0x70, "u32"),
            F("ForceFlags", 0x44, 0x74, "u32"),
            F("CompatibilityFlags", 0x48, 0x78, "u32"),
            F("EncodeFlagMask", 0x4C, 0x7C, "u32"),
            F("Encoding", 0x50, 0x80, ENTRY),
            F("PointerKey", 0x58, 0x90),
            F("Interceptor", 0x5C, 0x98, "u32"),
            F("VirtualMemoryThreshold", 0x60, 0x9C, "u32"),
            F("Signature", 0x64, 0xA0, "u32"),
            F("SegmentReserve", 0x68, 0xA8),
            F("SegmentCommit", 0x6C, 0xB0),
            F("DeCommitFreeBlockThreshold", 0x70, 0xB8),
            F("DeCommitTotalFreeThreshold", 0x74, 0xC0),
            F("TotalFreeSize", 0x78, 0xC8),
            F("MaximumAllocationSize", 0x7C, 0xD0),
            F("ProcessHeapsListIndex", 0x80, 0xD8, "u16"),
            F("HeaderValidateLength", 0x82, 0xDA, "u16"),
            F("HeaderValidateCopy", 0x84, 0xE0),
            F("NextAvailableTagIndex", 0x88, 0xE8, "u16"),
            F("MaximumTagIndex", 0x8A, 0xEA, "u16"),
            F("TagEntries", 0x8C, 0xF0),
            F("UCRList", 0x90, 0xF8, LIST),
            F("AlignRound", 0x98, 0x108),
            F("AlignMask", 0x9C, 0x110),
            F("VirtualAllocdBlocks", 0xA0, 0x118, LIST),
            F("SegmentList", 0xA8, 0x128, LIST),
            F("AllocatorBackTraceIndex", 0xB0, 0x138, "u16"),
            F("NonDedicatedListLength", 0xB4, 0x13C, "u32"),
            F("BlocksIndex", 0xB8, 0x140),
            F("UCRIndex", 0xBC, 0x148),
            F("PseudoTagEntries", 0xC0, 0x150),
            F("FreeLists", 0xC4, 0x158, LIST),
            F("LockVariable", 0xCC, 0x168),
            F("CommitRoutine", 0xD0, 0x170),
            F("FrontEndHeap", 0xD4, 0x178),
            F("FrontHeapLockCount", 0xD8, 0x180, "u16"),
            F("FrontEndHeapType", 0xDA, 0x182, "u8"),
            F("Counters", 0xDC, 0x188, "_HEAP_COUNTERS"),
            F("TuningParameters", 0x130, 0x1F8, "_HEAP_TUNING_PARAMETERS"),
        ),
    ),
    W7Struct(
        "_HEAP_LIST_LOOKUP",
        0x24,
        0x38,
        (
            F("ExtendedLookup", 0, 0),
            F("ArraySize", 4, 8, "u32"),
            F("ExtraItem", 8, 0xC, "u32"),
            F("ItemCount", 0xC, 0x10, "u32"),
            F("OutOfRangeItems", 0x10, 0x14, "u32"),
            F("BaseIndex", 0x14, 0x18, "u32"),
            F("ListHead", 0x18, 0x20),
            F("ListsInUseUlong", 0x1C, 0x28),
            F("ListHints", 0x20, 0x30),
        ),
    ),
    W7Struct(
        "_SLIST_HEADER",
        8,
        0x10,
        (F("Next", 0, 0), F("Depth", 4, 8, "u16"), F("Sequence", 6, 0xA, "u16")),
    ),
    W7Struct(
        "_INTERLOCK_SEQ",
        8,
        8,
        (F("Depth", 0, 0, "u16"), F("FreeEntryOffset", 2, 2, "u16"), F("Sequence", 4, 4, "u32")),
    ),
    W7Struct(
        "_HEAP_SUBSEGMENT",
        0x20,
        0x30,
        (
            F("LocalInfo", 0, 0),
            F("UserBlocks", 4, 8),
            F("AggregateExchg", 8, 0x10, "_INTERLOCK_SEQ"),
            F("BlockSize", 0x10, 0x18, "u16"),
            F("Flags", 0x12, 0x1A, "u16"),
            F("BlockCount", 0x14, 0x1C, "u16"),
            F("SizeIndex", 0x16, 0x1E, "u8"),
            F("AffinityIndex", 0x17, 0x1F, "u8"),
            F("SFreeListEntry", 0x18, 0x20),
            F("Lock", 0x1C, 0x28, "u32"),
        ),
    ),
    W7Struct(
        "_HEAP_USERDATA_HEADER",
        0x10,
        0x20,
        (
            F("SubSegment", 0, 0),
            F("Reserved", 4, 8),
            F("SizeIndex", 8, 0x10),
            F("Signature", 0xC, 0x18),
        ),
    ),
    W7Struct(
        "_LFH_BLOCK_ZONE",
        0x10,
        0x20,
        (F("ListEntry", 0, 0, LIST), F("FreePointer", 8, 0x10), F("Limit", 0xC, 0x18)),
    ),
    W7Struct(
        "_HEAP_BUCKET",
        4,
        4,
        (F("BlockUnits", 0, 0, "u16"), F("SizeIndex", 2, 2, "u8"), F("Flags", 3, 3, "u8")),
    ),
    W7Struct(
        "_HEAP_BUCKET_COUNTERS",
        8,
        8,
        (F("TotalBlocks", 0, 0, "u32"), F("SubSegmentCounts", 4, 4, "u32")),
    ),
    W7Struct(
        "_HEAP_LOCAL_SEGMENT_INFO",
        0x68,
        0xC0,
        (
            F("Hint", 0, 0),
            F("ActiveSubsegment", 4, 8),
            F("CachedItems", 8, 0x10, "ptr", 16),
            F("SListHeader", 0x48, 0x90, "_SLIST_HEADER"),
            F("Counters", 0x50, 0xA0, "_HEAP_BUCKET_COUNTERS"),
            F("LocalData", 0x58, 0xA8),
            F("LastOpSequence", 0x5C, 0xB0, "u32"),
            F("BucketIndex", 0x60, 0xB4, "u16"),
            F("LastUsed", 0x62, 0xB6, "u16"),
        ),
    ),
    W7Struct(
        "_HEAP_LOCAL_DATA",
        0x3418,
        0x6030,
        (
            F("DeletedSubSegments", 0, 0, "_SLIST_HEADER"),
            F("CrtZone", 8, 0x10),
            F("LowFragHeap", 0xC, 0x18),
            F("Sequence", 0x10, 0x20, "u32"),
            F("SegmentInfo", 0x18, 0x30, "_HEAP_LOCAL_SEGMENT_INFO", 128),
        ),
    ),
    W7Struct(
        "_RTL_CRITICAL_SECTION",
        0x18,
        0x28,
        (
            F("DebugInfo", 0, 0),
            F("LockCount", 4, 8, "u32"),
            F("RecursionCount", 8, 0xC, "u32"),
            F("OwningThread", 0xC, 0x10),
            F("LockSemaphore", 0x10, 0x18),
            F("SpinCount", 0x14, 0x20),
        ),
    ),
    W7Struct(
        "_HEAP_BUCKET_RUN_INFO",
        8,
        8,
        (F("Bucketmap", 0, 0, "u32"), F("MaxAllocSize", 4, 4, "u32")),
    ),
    W7Struct(
        "_USER_MEMORY_CACHE_ENTRY",
        0x10,
        0x20,
        (F("UserBlocks", 0, 0, "_SLIST_HEADER"), F("AvailableBlocks", 8, 0x10, "u32")),
    ),
    W7Struct(
        "_LFH_HEAP",
        0x310 + 0x3418,
        0x3F0 + 0x6030,
        (
            F("Lock", 0, 0, "_RTL_CRITICAL_SECTION"),
            F("SubSegmentZones", 0x18, 0x28, LIST),
            F("ZoneBlockSize", 0x20, 0x38),
            F("Heap", 0x24, 0x40),
            F("SegmentChange", 0x28, 0x48, "u32"),
            F("SegmentCreate", 0x2C, 0x4C, "u32"),
            F("SegmentInsertInFree", 0x30, 0x50, "u32"),
            F("SegmentDelete", 0x34, 0x54, "u32"),
            F("CacheAllocs", 0x38, 0x58, "u32"),
            F("CacheFrees", 0x3C, 0x5C, "u32"),
            F("SizeInCache", 0x40, 0x60),
            F("RunInfo", 0x48, 0x68, "_HEAP_BUCKET_RUN_INFO"),
            F("UserBlockCache", 0x50, 0x70, "_USER_MEMORY_CACHE_ENTRY", 12),
            F("Buckets", 0x110, 0x1F0, "_HEAP_BUCKET", 128),
            F("LocalData", 0x310, 0x3F0, "_HEAP_LOCAL_DATA", 1),
        ),
    ),
)
STRUCTS: dict[str, W7Struct] = {s.name: s for s in _DECLS}

HEAP = STRUCTS["_HEAP"]
HEAP_SEGMENT = STRUCTS["_HEAP_SEGMENT"]
HEAP_ENTRY = STRUCTS["_HEAP_ENTRY"]
HEAP_FREE_ENTRY = STRUCTS["_HEAP_FREE_ENTRY"]
HEAP_VIRTUAL_ALLOC_ENTRY = STRUCTS["_HEAP_VIRTUAL_ALLOC_ENTRY"]
HEAP_UCR_DESCRIPTOR = STRUCTS["_HEAP_UCR_DESCRIPTOR"]
LFH_HEAP = STRUCTS["_LFH_HEAP"]
HEAP_LOCAL_DATA = STRUCTS["_HEAP_LOCAL_DATA"]
HEAP_LOCAL_SEGMENT_INFO = STRUCTS["_HEAP_LOCAL_SEGMENT_INFO"]
HEAP_SUBSEGMENT = STRUCTS["_HEAP_SUBSEGMENT"]
HEAP_USERDATA_HEADER = STRUCTS["_HEAP_USERDATA_HEADER"]
INTERLOCK_SEQ = STRUCTS["_INTERLOCK_SEQ"]
LFH_BLOCK_ZONE = STRUCTS["_LFH_BLOCK_ZONE"]

# Which C structure (win7heap.h's typedef) each declaration is checked against.
C_NAMES = {name: name.lstrip("_") for name in STRUCTS}

# Constants (win7heap.h)
HEAP_SIGNATURE = 0xEEFFEEFF
HEAP_SEGMENT_SIGNATURE = 0xFFEEFFEE
HEAP_USERDATA_SIGNATURE = 0xF0E0D0C0
HEAP_ENCODE_FLAG_MASK = 0x00100000
HEAP_FRONT_END_LFH = 2
ENTRY_BUSY = 0x01
ENTRY_VIRTUAL_ALLOC = 0x08  # inside a segment: the heap's Internal blocks (LFH data)
ENTRY_LAST_ENTRY = 0x10  # UCR sentinels
ENTRY_INTERNAL = ENTRY_VIRTUAL_ALLOC
LFH_UNUSED_FLAG = 0x80
LFH_UNUSED_EXTENDED = 0x3F
LFH_NO_FREE_OFFSET = 0xFFFF
LFH_BUCKETS = 128
LFH_CACHED_ITEMS = 16
HEAP_MAX_FREE_UNITS = 0xFFFF
KEYS_PEB_OFFSET = 0xF00
KEYS_SIGNATURE = 0x4B483757  # "W7HK"
DEFAULT_ENCODING = 0x5F1C3A69
DEFAULT_LFH_KEY = 0x3C18DB66
DEFAULT_POINTER_KEY = 0x0C58FA9C
CONSTANTS = {
    "HEAP_SIGNATURE": HEAP_SIGNATURE,
    "HEAP_SEGMENT_SIGNATURE": HEAP_SEGMENT_SIGNATURE,
    "HEAP_USERDATA_SIGNATURE": HEAP_USERDATA_SIGNATURE,
    "HEAP_ENCODE_FLAG_MASK": HEAP_ENCODE_FLAG_MASK,
    "HEAP_FRONT_END_LFH": HEAP_FRONT_END_LFH,
    "HEAP_ENTRY_BUSY": ENTRY_BUSY,
    "HEAP_ENTRY_VIRTUAL_ALLOC": ENTRY_VIRTUAL_ALLOC,
    "HEAP_ENTRY_LAST_ENTRY": ENTRY_LAST_ENTRY,
    "LFH_UNUSED_FLAG": LFH_UNUSED_FLAG,
    "LFH_UNUSED_EXTENDED": LFH_UNUSED_EXTENDED,
    "LFH_NO_FREE_OFFSET": LFH_NO_FREE_OFFSET,
    "LFH_BUCKETS": LFH_BUCKETS,
    "LFH_CACHED_ITEMS": LFH_CACHED_ITEMS,
    "HEAP_MAX_FREE_UNITS": HEAP_MAX_FREE_UNITS,
    "WIN7HEAP_KEYS_PEB_OFFSET": KEYS_PEB_OFFSET,
    "WIN7HEAP_KEYS_SIGNATURE": KEYS_SIGNATURE,
    "WIN7HEAP_DEFAULT_ENCODING": DEFAULT_ENCODING,
    "WIN7HEAP_DEFAULT_LFH_KEY": DEFAULT_LFH_KEY,
    "WIN7HEAP_DEFAULT_POINTER_KEY": DEFAULT_POINTER_KEY,
}


def granularity(arch: str) -> int:
    return 16 if arch == "x64" else 8
