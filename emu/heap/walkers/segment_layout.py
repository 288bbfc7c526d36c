"""heapemu's Windows 10 segment heap (``asm/src/segheap.h``), declared once for both architectures.

The C header is the source of truth: these offsets are the ones ``segheap.h``'s static
assertions pin (the x86 ones are the seed 004 WinDbg dump's, the x64 ones the same Windows
generation's public symbols), and ``tests/test_segment_layout.py`` compiles every field offset,
field size and structure size below against the C with the flat code's compilers. Field names
are Windows' (``dt ntdll!_SEGMENT_HEAP``), dotted for members of embedded structures and with
``[i]`` for array elements, i.e. C member designators. ``NESTED`` lists the embedded structures
and arrays the views show by type.

Encodings the walker decodes (segheap.h / segheap.c say why):
- ``_HEAP_PAGE_SEGMENT.Signature`` = (segment >> 20) ^ HeapKey ^ heap ^ 0xA2E64EADA2E64EAD
  (pointer-sized, truncated on x86);
- VS chunk ``HeaderBits`` = bits ^ chunk ^ HeapKey; decoded, in VS units (x64 16 bytes, x86 8):
  x64 MemoryCost 0-15, UnsafeSize 16-31, UnsafePrevSize 32-47, Allocated 48-55; x86
  MemoryCost bit 0, UnsafeSize 1-15, UnsafePrevSize 16-30, Allocated bit 31;
- ``AllocatedChunkBits``: page offset in the subsegment ^ low byte of (chunk ^ HeapKey) (bits
  0-7), UnusedBytes (0x100), SkipDuringWalk (0x200);
- ``_HEAP_VS_SUBSEGMENT.Signature`` = ((Size ^ 0xABED) & 0x7FFF) | 0x8000;
- ``_HEAP_LFH_SUBSEGMENT.BlockOffsets`` = (BlockSize | FirstBlockOffset << 16) ^ (u32)LfhKey ^
  (u32)(subsegment >> 12); a free slot's first word is slot ^ LfhKey;
- unused-bytes trailers (LFH and VS blocks with slack): the last byte (< 0x80) or the last two
  bytes (count | 0x8000), the slack before it filled with 0xAB;
- a VS or LFH subsegment of 64 KiB or more: its page range is one page longer than the
  subsegment, the last page an uncommitted guard page (UnitSize counts it, CommittedPageCount
  does not);
- ``_HEAP_LARGE_ALLOC_DATA``: VirtualAddress | UnusedBytes (low 16 bits), Bits = pages << 12 |
  guard page (2).
"""

from __future__ import annotations

from dataclasses import dataclass

from emu.win.layouts import Field, Struct

SEGMENT_HEAP = Struct(
    "_SEGMENT_HEAP",
    0x580,
    0x800,
    [
        Field("EnvHandle[0]", 0x0, 0x0),
        Field("EnvHandle[1]", 0x4, 0x8),
        Field("Signature", 0x8, 0x10, "u32"),
        Field("GlobalFlags", 0xC, 0x14, "u32"),
        Field("Interceptor", 0x10, 0x18, "u32"),
        Field("ProcessHeapListIndex", 0x14, 0x1C, "u16"),
        Field("AllocatedFromMetadata", 0x16, 0x1E, "u16"),
        Field("ReservedMustBeZero1", 0x18, 0x20),
        Field("UserContext", 0x1C, 0x28),
        Field("ReservedMustBeZero2", 0x20, 0x30),
        Field("Spare", 0x24, 0x38),
        Field("LargeMetadataLock", 0x40, 0x40),
        Field("LargeAllocMetadata.Root", 0x44, 0x48),
        Field("LargeAllocMetadata.Min", 0x48, 0x50),
        Field("LargeReservedPages", 0x4C, 0x58),
        Field("LargeCommittedPages", 0x50, 0x60),
        Field("StackTraceInitVar", 0x54, 0x68),
        Field("MemStats.TotalReservedPages", 0x80, 0x80),
        Field("MemStats.TotalCommittedPages", 0x84, 0x88),
        Field("MemStats.FreeCommittedPages", 0x88, 0x90),
        Field("MemStats.LfhFreeCommittedPages", 0x8C, 0x98),
        Field("MemStats.HeapKey", 0x90, 0xA0),
        Field("MemStats.LfhKey", 0x94, 0xA8),
        Field("MemStats.RandomState", 0x98, 0xB0, "u32"),
        Field("MemStats.RandomSeed", 0x9C, 0xB4, "u32"),
        Field("MemStats.VsMaxSize", 0xA0, 0xB8, "u32"),
        Field("MemStats.FreeCommitLimit", 0xA4, 0xBC, "u32"),
        Field("MemStats.LfhActivationLive", 0xA8, 0xC0, "u16"),
        Field("MemStats.LfhActivationTotal", 0xAA, 0xC2, "u16"),
        Field("GlobalLockCount", 0xAC, 0xD8, "u16"),
        Field("GlobalLockOwner", 0xB0, 0xDC, "u32"),
        Field("ContextExtendLock", 0xB4, 0xE0),
        Field("AllocatedBase", 0xB8, 0xE8),
        Field("UncommittedBase", 0xBC, 0xF0),
        Field("ReservedLimit", 0xC0, 0xF8),
    ],
)

HEAP_SEG_CONTEXT = Struct(
    "_HEAP_SEG_CONTEXT",
    0x80,
    0xC0,
    [
        Field("SegmentMask", 0x0, 0x0),
        Field("UnitShift", 0x4, 0x8, "u8"),
        Field("PagesPerUnitShift", 0x5, 0x9, "u8"),
        Field("FirstDescriptorIndex", 0x6, 0xA, "u8"),
        Field("CachedCommitSoftShift", 0x7, 0xB, "u8"),
        Field("CachedCommitHighShift", 0x8, 0xC, "u8"),
        Field("Flags", 0x9, 0xD, "u8"),
        Field("MaxAllocationSize", 0xC, 0x10, "u32"),
        Field("OlpStatsOffset", 0x10, 0x14, "u16"),
        Field("MemStatsOffset", 0x12, 0x16, "u16"),
        Field("LfhContext", 0x14, 0x18),
        Field("VsContext", 0x18, 0x20),
        Field("EnvHandle[0]", 0x1C, 0x28),
        Field("EnvHandle[1]", 0x20, 0x30),
        Field("Heap", 0x24, 0x38),
        Field("SegmentLock", 0x40, 0x40),
        Field("SegmentListHead.Flink", 0x44, 0x48),
        Field("SegmentListHead.Blink", 0x48, 0x50),
        Field("SegmentCount", 0x4C, 0x58),
        Field("FreePageRanges.Root", 0x50, 0x60),
        Field("FreePageRanges.Min", 0x54, 0x68),
        Field("FreeSegmentListLock", 0x58, 0x70),
        Field("FreeSegmentList[0]", 0x5C, 0x78),
        Field("FreeSegmentList[1]", 0x60, 0x80),
    ],
)

HEAP_VS_CONTEXT = Struct(
    "_HEAP_VS_CONTEXT",
    0xC0,
    0xC0,
    [
        Field("Lock", 0x0, 0x0),
        Field("LockType", 0x4, 0x8, "u32"),
        Field("FreeChunkTree.Root", 0x8, 0x10),
        Field("FreeChunkTree.Min", 0xC, 0x18),
        Field("SubsegmentList.Flink", 0x10, 0x20),
        Field("SubsegmentList.Blink", 0x14, 0x28),
        Field("TotalCommittedUnits", 0x18, 0x30),
        Field("FreeCommittedUnits", 0x1C, 0x38),
        Field("BackendCtx", 0x80, 0x80),
        Field("Callbacks.Allocate", 0x84, 0x88),
        Field("Callbacks.Free", 0x88, 0x90),
        Field("Callbacks.Commit", 0x8C, 0x98),
        Field("Callbacks.Decommit", 0x90, 0xA0),
        Field("Callbacks.ExtendContext", 0x94, 0xA8),
        Field("Config", 0x98, 0xB0, "u32"),
        Field("Flags", 0x9C, 0xB4, "u32"),
    ],
)

HEAP_LFH_CONTEXT = Struct(
    "_HEAP_LFH_CONTEXT",
    0x2C0,
    0x4C0,
    [
        Field("BackendCtx", 0x0, 0x0),
        Field("Callbacks.Allocate", 0x4, 0x8),
        Field("AffinityModArray", 0x18, 0x30),
        Field("MaxAffinity", 0x1C, 0x38, "u8"),
        Field("LockType", 0x1D, 0x39, "u8"),
        Field("MemStatsOffset", 0x1E, 0x3A, "u16"),
        Field("MaxBlockSize", 0x20, 0x3C, "u16"),
        Field("ConfigFlags", 0x22, 0x3E, "u16"),
        Field("BucketStats", 0x24, 0x40),
        Field("SubsegmentCreationLock", 0x28, 0x48),
    ],
)

HEAP_PAGE_RANGE_DESCRIPTOR = Struct(
    "_HEAP_PAGE_RANGE_DESCRIPTOR",
    0x10,
    0x20,
    [
        Field("TreeNode.Children[0]", 0x0, 0x0),
        Field("TreeNode.Children[1]", 0x4, 0x8),
        Field("TreeNode.ParentValue", 0x8, 0x10),
        Field("TreeSignature", 0x0, 0x0, "u32"),
        Field("UnusedBytes", 0x4, 0x4, "u32"),
        Field("RangeFlags", 0xC, 0x18, "u8"),
        Field("CommittedPageCount", 0xD, 0x19, "u8"),
        Field("UnitSize", 0xF, 0x1F, "u8"),
    ],
)

HEAP_PAGE_SEGMENT = Struct(
    "_HEAP_PAGE_SEGMENT",
    0x1000,
    0x2000,
    [
        Field("ListEntry.Flink", 0x0, 0x0),
        Field("ListEntry.Blink", 0x4, 0x8),
        Field("Signature", 0x8, 0x10),
    ],
)

HEAP_VS_SUBSEGMENT = Struct(
    "_HEAP_VS_SUBSEGMENT",
    0x18,
    0x28,
    [
        Field("ListEntry.Flink", 0x0, 0x0),
        Field("ListEntry.Blink", 0x4, 0x8),
        Field("CommitBitmap", 0x8, 0x10, "u64"),
        Field("CommitLock", 0x10, 0x18),
        Field("Size", 0x14, 0x20, "u16"),
        Field("Signature", 0x16, 0x22, "u16"),
    ],
)

HEAP_VS_CHUNK_HEADER = Struct(
    "_HEAP_VS_CHUNK_HEADER",
    0x8,
    0x10,
    [
        Field("HeaderBits", 0x0, 0x0),
        Field("AllocatedChunkBits", 0x4, 0x8, "u32"),
    ],
)

HEAP_VS_CHUNK_FREE_HEADER = Struct(
    "_HEAP_VS_CHUNK_FREE_HEADER",
    0x10,
    0x20,
    [
        Field("HeaderBits", 0x0, 0x0),
        Field("Node.Children[0]", 0x4, 0x8),
        Field("Node.Children[1]", 0x8, 0x10),
        Field("Node.ParentValue", 0xC, 0x18),
    ],
)

HEAP_LFH_SUBSEGMENT = Struct(
    "_HEAP_LFH_SUBSEGMENT",
    0x28,
    0x38,
    [
        Field("ListEntry.Flink", 0x0, 0x0),
        Field("ListEntry.Blink", 0x4, 0x8),
        Field("Owner", 0x8, 0x10),
        Field("CommitLock", 0xC, 0x18),
        Field("FreeCount", 0x10, 0x20, "u16"),
        Field("BlockCount", 0x12, 0x22, "u16"),
        Field("FreeHint", 0x14, 0x24, "u16"),
        Field("Location", 0x16, 0x26, "u8"),
        Field("WitheldBlockCount", 0x17, 0x27, "u8"),
        Field("BlockOffsets", 0x18, 0x28, "u32"),
        Field("CommitUnitShift", 0x1C, 0x2C, "u8"),
        Field("CommitUnitCount", 0x1D, 0x2D, "u8"),
        Field("CommitStateOffset", 0x1E, 0x2E, "u16"),
        Field("BlockBitmap", 0x20, 0x30, "u64"),
    ],
)

HEAP_LFH_BUCKET = Struct(
    "_HEAP_LFH_BUCKET",
    0x38,
    0x68,
    [
        Field("State.IsBucket", 0x0, 0x0, "u8"),
        Field("State.BucketIndex", 0x1, 0x1, "u8"),
        Field("State.SlotCount", 0x2, 0x2, "u8"),
        Field("State.AvailableSubsegmentCount", 0x4, 0x8),
        Field("State.AvailableSubsegmentList.Flink", 0xC, 0x18),
        Field("State.AvailableSubsegmentList.Blink", 0x10, 0x20),
        Field("State.FullSubsegmentList.Flink", 0x14, 0x28),
        Field("State.FullSubsegmentList.Blink", 0x18, 0x30),
        Field("TotalBlockCount", 0x1C, 0x38),
        Field("TotalSubsegmentCount", 0x20, 0x40),
    ],
)

HEAP_LARGE_ALLOC_DATA = Struct(
    "_HEAP_LARGE_ALLOC_DATA",
    0x14,
    0x28,
    [
        Field("TreeNode.Children[0]", 0x0, 0x0),
        Field("TreeNode.Children[1]", 0x4, 0x8),
        Field("TreeNode.ParentValue", 0x8, 0x10),
        Field("VirtualAddress", 0xC, 0x18),
        Field("Bits", 0x10, 0x20),
    ],
)


@dataclass(frozen=True)
class Nested:
    """An embedded structure or array: its member name, type and place in both layouts."""

    name: str
    type: str  # a structure's name, or an element type for arrays
    x86: int
    x64: int
    size_x86: int
    size_x64: int
    count: int = 1  # array length (1: one embedded structure)


NESTED: dict[str, tuple[Nested, ...]] = {
    "_SEGMENT_HEAP": (
        Nested("LargeAllocMetadata", "_RTL_RB_TREE", 0x44, 0x48, 0x8, 0x10),
        Nested("MemStats", "_HEAP_RUNTIME_MEMORY_STATS", 0x80, 0x80, 0x2C, 0x58),
        Nested("SegContexts", "_HEAP_SEG_CONTEXT", 0x100, 0x100, 0x100, 0x180, 2),
        Nested("VsContext", "_HEAP_VS_CONTEXT", 0x200, 0x280, 0xC0, 0xC0),
        Nested("LfhContext", "_HEAP_LFH_CONTEXT", 0x2C0, 0x340, 0x2C0, 0x4C0),
    ),
    "_HEAP_VS_CONTEXT": (Nested("DelayFreeContext", "ptr", 0x40, 0x40, 0x8, 0x10, 2),),
    "_HEAP_LFH_CONTEXT": (Nested("Buckets", "ptr", 0x80, 0x80, 0x204, 0x408, 129),),
    "_HEAP_PAGE_SEGMENT": (
        Nested("DescArray", "_HEAP_PAGE_RANGE_DESCRIPTOR", 0, 0, 0x1000, 0x2000, 256),
    ),
}

STRUCTS: dict[str, Struct] = {
    s.name: s
    for s in (
        SEGMENT_HEAP,
        HEAP_SEG_CONTEXT,
        HEAP_VS_CONTEXT,
        HEAP_LFH_CONTEXT,
        HEAP_PAGE_RANGE_DESCRIPTOR,
        HEAP_PAGE_SEGMENT,
        HEAP_VS_SUBSEGMENT,
        HEAP_VS_CHUNK_HEADER,
        HEAP_VS_CHUNK_FREE_HEADER,
        HEAP_LFH_SUBSEGMENT,
        HEAP_LFH_BUCKET,
        HEAP_LARGE_ALLOC_DATA,
    )
}

# ---------------------------------------------------------------------------- constants
SEGMENT_HEAP_SIGNATURE = 0xDDEEDDEE
PAGE = 0x1000
SEGMENT_SIZE = 0x100000  # 256 one-page units
SEGMENT_SHIFT = 20
UNITS_PER_SEGMENT = 256
SEGMENT_SIGNATURE_XOR = 0xA2E64EADA2E64EAD  # truncated on x86
RANGE_SIGNATURE = 0xCCDDCCDD  # TreeSignature of an allocated page range
VS_SIGNATURE_XOR = 0xABED
LARGE_ALIGN = 0x10000
LARGE_GUARD = 0x1000
LARGE_UNUSED_MASK = 0xFFFF
LARGE_GUARD_BIT = 2
SUBSEGMENT_GUARD_MIN = 0x10000  # VS / LFH subsegments this big end in an uncommitted guard page


def guard_units(range_flags: int, units: int) -> int:
    """1 when an allocated range of ``units`` pages with these RangeFlags ends in a guard page
    (a VS or LFH subsegment of 64 KiB or more: the page after it, uncommitted), else 0."""
    return int(bool(range_flags & (RANGE_VS | RANGE_LFH)) and units > SUBSEGMENT_GUARD_MIN // PAGE)


LFH_BUCKETS = 129
SLACK_FILL = 0xAB

# RangeFlags of a page range descriptor
RANGE_LFH = 0x01
RANGE_COMMITTED = 0x02
RANGE_ALLOCATED = 0x04
RANGE_FIRST = 0x08
RANGE_VS = 0x20
RANGE_FLAG_NAMES = {
    RANGE_LFH: "LFH",
    RANGE_COMMITTED: "COMMITTED",
    RANGE_ALLOCATED: "ALLOCATED",
    RANGE_FIRST: "FIRST",
    RANGE_VS: "VS",
}

# AllocatedChunkBits of a busy VS chunk
VS_BITS_PAGE_OFFSET = 0xFF
VS_BITS_UNUSED_BYTES = 0x100
VS_BITS_SKIP_DURING_WALK = 0x200

# Creation parameters (SEGHEAP_PARAMETERS, RtlCreateHeap's last argument) and their defaults
PARAMETERS_SIGNATURE = 0x50485348  # "HSHP"
PARAMETERS_PEB_OFFSET = 0xFA0  # the process heap's, when a program's start-up creates it
DEFAULT_LFH_MAX = 0x3FF0
DEFAULT_VS_MAX = 0x20000
DEFAULT_BACKEND_MAX = 0x7F000
DEFAULT_LFH_LIVE = 17
DEFAULT_LFH_TOTAL = 2040
DEFAULT_SEED = 0x2545F491

SEGHEAP_PARAMETERS = Struct(
    "SEGHEAP_PARAMETERS",
    0x30,
    0x38,
    [
        Field("Length", 0x0, 0x0, "u32"),
        Field("Signature", 0x4, 0x4, "u32"),
        Field("HeapKey", 0x8, 0x8),
        Field("LfhKey", 0xC, 0x10),
        Field("RandomSeed", 0x10, 0x18, "u32"),
        Field("LfhMaxSize", 0x14, 0x1C, "u32"),
        Field("VsMaxSize", 0x18, 0x20, "u32"),
        Field("BackendMaxSize", 0x1C, 0x24, "u32"),
        Field("LfhActivationLive", 0x20, 0x28, "u32"),
        Field("LfhActivationTotal", 0x24, 0x2C, "u32"),
        Field("FreeCommitLimit", 0x28, 0x30, "u32"),
    ],
)


@dataclass(frozen=True)
class SegParams:
    """What differs between the architectures besides structure offsets."""

    vs_unit_shift: int  # VS chunk sizes count units of 1 << this
    first_descriptor: int  # pages of descriptors at the start of each segment
    vs_first_chunk: int  # offset of a VS subsegment's first chunk
    lfh_header: int  # offset of an LFH subsegment's BlockBitmap

    @property
    def vs_unit(self) -> int:
        return 1 << self.vs_unit_shift


SEG_PARAMS = {
    "x86": SegParams(vs_unit_shift=3, first_descriptor=1, vs_first_chunk=0x18, lfh_header=0x20),
    "x64": SegParams(vs_unit_shift=4, first_descriptor=2, vs_first_chunk=0x30, lfh_header=0x30),
}


def struct_c_name(name: str) -> str:
    """The C type of a declared structure (segheap.h drops Windows' leading underscore)."""
    return name.lstrip("_")
