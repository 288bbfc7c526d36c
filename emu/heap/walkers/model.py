"""What a heap walker reports: plain dataclasses with a JSON form.

Addresses are absolute process addresses. A *block* is what WinDbg calls a heap entry: a header
(``address``) followed by the user data (``user_ptr``); ``size`` always includes the header. The
walkers fill these from emulated memory only (they never call the allocator), so a report is an
independent view that can disagree with ``RtlWalkHeap`` when the heap is corrupt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from emu.arch import get_arch
from emu.win.layouts import Struct

# Corruption kinds (``Corruption.kind``): what was found wrong, reported at the address of the
# structure that holds the bad value (the heap, a segment, a block header, a list entry).
HEAP_HEADER = "heap_header"  # heap magic / segment signature wrong, header unreadable
SEGMENT = "segment"  # a segment (subheap) structure is inconsistent
SEGMENT_LIST = "segment_list"  # broken link in the heap's segment list
BLOCK_HEADER = "block_header"  # bad block magic or header field (unused/tail, base offset, tag)
BLOCK_SIZE = "block_size"  # zero/misaligned/absurd size, runs past its segment or into garbage
PREV_FREE = "prev_free"  # PREV_FREE flag or back pointer disagrees with the previous block
ADJACENT_FREE = "adjacent_free"  # two free blocks side by side (both allocators coalesce)
FREE_LIST_LINK = "free_list_link"  # flink/blink not pointing back, outside the heap, unreadable
FREE_LIST_LOOP = "free_list_loop"  # a free list that runs into itself
FREE_LIST_BUSY = "free_list_busy"  # a block on a free list that is not marked free
FREE_NOT_LISTED = "free_not_listed"  # a block marked free that is on no free list
FREE_LIST_BUCKET = "free_list_bucket"  # a free block on the list of another size class
LARGE_BLOCK = "large_block"  # bad large-block header, broken large-block list link
OVERLAP = "overlap"  # two segments / large-block regions claim the same memory
PENDING_FREE = "pending_free"  # Wine's delayed-free array names a block that is not pending
UNREADABLE = "unreadable"  # a structure lies in unmapped/uncommitted memory
DESCRIPTOR = "descriptor"  # segment heap: a page range descriptor that does not add up
LFH_BITMAP = "lfh_bitmap"  # segment heap: LFH bitmap, FreeCount or FreeHint mismatch

CORRUPTION_KINDS = (
    HEAP_HEADER,
    SEGMENT,
    SEGMENT_LIST,
    BLOCK_HEADER,
    BLOCK_SIZE,
    PREV_FREE,
    ADJACENT_FREE,
    FREE_LIST_LINK,
    FREE_LIST_LOOP,
    FREE_LIST_BUSY,
    FREE_NOT_LISTED,
    FREE_LIST_BUCKET,
    LARGE_BLOCK,
    OVERLAP,
    PENDING_FREE,
    UNREADABLE,
    DESCRIPTOR,
    LFH_BITMAP,
)

# Block states.
BUSY = "busy"
FREE = "free"
PENDING = "pending_free"  # Wine: freed by the caller but parked in the delayed-free array

BLOCK_HEADER_SIZE = 8  # both layouts: the user pointer is the header address + 8
HEADER_FLAG_NAMES = {0x1: "FREE", 0x2: "PREV_FREE", 0x4: "LARGE"}  # block header flag bits


def header_flag_names(flags: int) -> list[str]:
    return [n for bit, n in HEADER_FLAG_NAMES.items() if flags & bit]


LINK_OFFSET = 8  # both layouts: a free block's LIST entry follows its 8-byte header


@dataclass(frozen=True)
class Corruption:
    """WHAT (``kind``, one of CORRUPTION_KINDS) and WHERE (``address``), with a readable detail."""

    kind: str
    address: int
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} at 0x{self.address:x}: {self.detail}"


@dataclass(frozen=True)
class Range:
    """``size`` bytes from ``address`` (an uncommitted range of a segment)."""

    address: int
    size: int

    @property
    def end(self) -> int:
        return self.address + self.size


@dataclass
class Block:
    """One block (heap entry) of a segment."""

    address: int  # the block header
    size: int  # bytes, header included
    flags: int  # the header's raw flag bits (layout-specific: see the walker)
    state: str  # BUSY, FREE or PENDING
    user_ptr: int  # what RtlAllocateHeap returned for it (data right after the header)
    segment: int  # index of its segment in HeapReport.segments
    magic: int  # the header's 16-bit magic
    committed: int  # bytes of the block that are committed (< size only for a last free block)
    requested: int | None = None  # RtlSizeHeap's answer, for busy blocks (both layouts record it)
    unused: int | None = None  # size - requested: header and slack (WinDbg's "unused")
    # Neither layout stores the previous block's size; this is the size of the block before
    # this one in its segment, as the walk found it (None for a segment's first block).
    prev_size: int | None = None
    # The back pointer stored just below the header when the previous block is free.
    back_link: int | None = None
    flink: int | None = None  # free blocks: the list links as stored (they point at the list
    blink: int | None = None  # entry inside the next/previous block, not at its header)
    component: str = ""  # segment heap: the component serving it (backend / vs / lfh)

    @property
    def busy(self) -> bool:
        """In use as far as the free lists are concerned (pending frees are not reusable)."""
        return self.state != FREE

    @property
    def free(self) -> bool:
        return self.state == FREE

    @property
    def end(self) -> int:
        return self.address + self.size


@dataclass
class Segment:
    """A segment (Wine: subheap): one reserved region holding a run of blocks."""

    index: int
    address: int  # the segment structure (inside the heap header for the first segment)
    base: int  # start of the region
    reserved: int  # bytes reserved from base
    committed: int  # bytes committed from base
    first_block: int  # address of the first block header
    blocks_end: int  # where the last block must end (the region end or just below it)
    uncommitted: list[Range] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    complete: bool = True  # the block walk reached blocks_end

    @property
    def end(self) -> int:
        return self.base + self.reserved

    @property
    def commit_end(self) -> int:
        return self.base + self.committed

    @property
    def header_size(self) -> int:
        return self.first_block - self.base

    def contains(self, address: int) -> bool:
        return self.base <= address < self.end


@dataclass
class Subsegment:
    """Segment heap: a VS or LFH subsegment (a page range of the back end) and its blocks."""

    address: int
    size: int  # bytes of its page range
    component: str  # "vs" or "lfh"
    block_size: int  # LFH: the bucket's block size; VS: the chunk unit
    block_count: int  # LFH: BlockCount; VS: chunks reported (busy and free)
    free_count: int  # LFH: FreeCount; VS: free chunks
    first_block: int = 0  # address of its first block (header and bitmap before it)
    slotted: bool = False  # blocks are block_count slots of block_size from first_block (LFH)
    guard: int = 0  # bytes of the uncommitted guard page at ``end`` (part of its page range)

    def slot_of(self, address: int) -> int | None:
        """The index of the slot holding ``address`` (None: not in a slot, or not slotted)."""
        if not self.slotted or not self.block_size or address < self.first_block:
            return None
        index = (address - self.first_block) // self.block_size
        return index if index < self.block_count else None

    @property
    def end(self) -> int:
        return self.address + self.size


@dataclass(frozen=True)
class NestedRegion:
    """A front end's data region inside a busy back-end block (win7: an LFH UserBlocks)."""

    title: str  # how WinDbg names it ("LFH data region")
    block: int  # the back-end block holding it (its header)
    address: int  # the region (win7: the _HEAP_USERDATA_HEADER)
    subsegment: int  # the subsegment descriptor carving it


@dataclass(frozen=True)
class FreeListEntry:
    """A free list entry in list order: the block header and the size it records."""

    address: int
    size: int
    flink: int
    blink: int


@dataclass
class FreeList:
    """One size-class list: sizes in [min_size, max_size] (max_size None: no bound)."""

    index: int
    head: int  # the list head (a sentinel free-block header inside the heap header)
    min_size: int
    max_size: int | None
    entries: list[FreeListEntry] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(frozen=True)
class LargeBlock:
    """A block in a region of its own (WinDbg: a virtual block)."""

    address: int  # its header (at the region base)
    region: int  # region base
    region_size: int  # bytes of the region
    user_ptr: int
    size: int  # requested size, as recorded (what RtlSizeHeap returns)
    block_size: int  # the size the header records (layout-specific span)
    flink: int
    blink: int


@dataclass(frozen=True)
class HeapSummary:
    """The numbers a ``!heap -s`` line needs (bytes; the view divides by 1024)."""

    reserved: int  # segments' reserved bytes
    committed: int  # segments' committed bytes
    virtual: int  # large blocks' region bytes
    virtual_blocks: int
    free: int  # committed bytes in free blocks
    free_list_length: int  # entries on the free lists
    uncommitted_ranges: int
    largest_free: int
    external_fragmentation: float  # 1 - largest free / total free (0.0 with no free bytes)
    busy_blocks: int
    busy_bytes: int  # sum of busy block sizes (headers included, large blocks not)
    segments: int


@dataclass
class HeapReport:
    """The whole walk of one heap."""

    kind: str  # "builtin" or "wine"
    arch: str
    heap: int
    flags: int
    force_flags: int
    header: dict[str, int]  # decoded header fields, by layout field name
    segments: list[Segment] = field(default_factory=list)
    free_lists: list[FreeList] = field(default_factory=list)
    large_blocks: list[LargeBlock] = field(default_factory=list)
    pending_free: list[int] = field(default_factory=list)  # Wine: delayed frees (headers)
    subsegments: list[Subsegment] = field(default_factory=list)  # segment heap: VS/LFH
    corruptions: list[Corruption] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.corruptions

    @property
    def blocks(self) -> list[Block]:
        """Every block of every segment, in segment then address order."""
        return [b for s in self.segments for b in s.blocks]

    def busy_blocks(self) -> list[Block]:
        return [b for b in self.blocks if b.busy]

    def free_blocks(self) -> list[Block]:
        return [b for b in self.blocks if b.free]

    def block_at(self, address: int) -> Block | None:
        """The block whose header or data contains ``address``; the innermost one where blocks
        nest (a front end's blocks follow the back-end block that holds them)."""
        found = None
        for s in self.segments:
            if s.contains(address):
                for b in s.blocks:
                    if b.address <= address < b.end:
                        found = b
                    elif found is not None and b.address >= found.end:
                        return found
        return found

    def summary(self) -> HeapSummary:
        free = [b.committed for b in self.free_blocks()]
        total_free = sum(free)
        largest = max(free, default=0)
        busy = self.busy_blocks()
        return HeapSummary(
            reserved=sum(s.reserved for s in self.segments),
            committed=sum(s.committed for s in self.segments),
            virtual=sum(lb.region_size for lb in self.large_blocks),
            virtual_blocks=len(self.large_blocks),
            free=total_free,
            free_list_length=sum(len(fl) for fl in self.free_lists),
            uncommitted_ranges=sum(len(s.uncommitted) for s in self.segments),
            largest_free=largest,
            external_fragmentation=1.0 - largest / total_free if total_free else 0.0,
            busy_blocks=len(busy),
            busy_bytes=sum(b.size for b in busy),
            segments=len(self.segments),
        )

    def to_json(self) -> dict[str, Any]:
        """Plain dicts, lists, ints, strs, bools (and one float): ``json.dumps`` takes it."""
        out = asdict(self)
        for seg_json, seg in zip(out["segments"], self.segments, strict=True):
            seg_json["end"] = seg.end
            seg_json["commit_end"] = seg.commit_end
            seg_json["header_size"] = seg.header_size
            for b_json, b in zip(seg_json["blocks"], seg.blocks, strict=True):
                b_json["busy"] = b.busy
        out["summary"] = asdict(self.summary())
        out["ok"] = self.ok
        return out


# ---------------------------------------------------------------------------- layouts
_SCALAR = {1: "u8", 2: "u16", 4: "u32", 8: "u64"}


@dataclass(frozen=True)
class FieldSpec:
    """A field at ``offset`` from its structure's start; ``scalar`` False for nested structures
    and arrays (shown by type, not read as one number)."""

    offset: int
    name: str
    type: str
    size: int
    scalar: bool = True


def struct_specs(struct_: Struct, arch: str, prefix: str = "", base: int = 0) -> list[FieldSpec]:
    a = get_arch(arch)
    return [
        FieldSpec(base + f.offset(a), prefix + f.name, f.kind, f.size(a))
        for f in sorted(struct_.fields.values(), key=lambda f: f.offset(a))
    ]
