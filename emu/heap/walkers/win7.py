"""Walker for heapemu's Windows 7 NT heap with its LFH (``asm/src/win7heap.c``).

Everything is read from emulated memory through ``win7_layout`` (Windows' names and offsets):

- Back end: the segments on ``_HEAP.SegmentList``; each segment is tiled from ``FirstEntry``
  to ``LastValidEntry`` by ``_HEAP_ENTRY`` headers whose first 32-bit word (x64: at +8) is
  ``Size | Flags << 16 | SmallTagIndex << 24`` XORed with ``_HEAP.Encoding`` (when
  ``EncodeFlagMask`` says so) and checked with SmallTagIndex = XOR of the other three bytes;
  every UCR sentinel (Flags LAST_ENTRY) is followed by the uncommitted range on the segment's
  ``UCRSegmentList``. ``PreviousSize`` must name the block before. A header whose checksum fails
  is reported and the walk resynchronises on the next header whose ``PreviousSize`` leads back
  to it, so one bad header does not hide the rest of the segment.
- ``_HEAP.FreeLists``: one LIST_ENTRY ring through every free block (links at header + G), in
  ascending size.
- ``VirtualAllocdBlocks``: ``_HEAP_VIRTUAL_ALLOC_ENTRY`` regions (the report's large blocks).
- LFH (``FrontEndHeapType`` 2): the ``_HEAP_SUBSEGMENT`` descriptors of every
  ``_LFH_BLOCK_ZONE`` on ``SubSegmentZones`` with a UserBlocks; each UserBlocks is a busy
  Internal back-end block starting with ``_HEAP_USERDATA_HEADER`` (Signature 0xF0E0D0C0), then
  BlockCount blocks of BlockSize units whose header word is ``Heap ^ SubSegment ^ LFHKey ^
  (header >> 3)`` (x64: the 64-bit value with ``>> 4`` and its low half again at +8) and whose
  UnusedBytes has bit 0x80 (0x80 alone: free). The free blocks form a chain of u16 offsets
  (``_INTERLOCK_SEQ.FreeEntryOffset``, then the first u16 of each free block's data).

Mapping onto ``HeapReport``: back-end blocks (the heap's own Internal blocks and UCR sentinels
included: RtlWalkHeap reports them busy too) are a segment's blocks; each LFH block follows its
UserBlocks block in ``Segment.blocks`` with ``flags`` ``BLOCK_LFH`` (its header stores no flag
byte); ``Win7Report.lfh_regions`` lists the LFH data regions. Each subsegment's free chain is
a free list of one block size (head: the subsegment; its u16 offsets shown as the addresses of
the linked blocks' data, where a LIST_ENTRY would be), and the back end's ring is the last,
unbounded free list.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from emu.heap.walkers import win7_layout as lay
from emu.heap.walkers.base import HeapWalker, ListHead, RawBlock
from emu.heap.walkers.model import (
    ADJACENT_FREE,
    BLOCK_HEADER,
    BLOCK_SIZE,
    BUSY,
    FREE,
    FREE_LIST_BUCKET,
    FREE_LIST_BUSY,
    FREE_LIST_LINK,
    FREE_LIST_LOOP,
    FREE_NOT_LISTED,
    HEAP_HEADER,
    LARGE_BLOCK,
    OVERLAP,
    PREV_FREE,
    SEGMENT,
    UNREADABLE,
    Block,
    FieldSpec,
    FreeList,
    FreeListEntry,
    HeapReport,
    LargeBlock,
    NestedRegion,
    Range,
    Segment,
)
from emu.heap.walkers.reader import UnreadableError
from emu.process.core import ProcessCore

BLOCK_LFH = 0x100  # Block.flags of an LFH block (above the header's 8 flag bits)
WALK_INTERNAL = 0x0800  # RtlWalkHeap: a busy block the heap uses for itself
LFH_NEXT_OFFSET = "(next free offset)"  # a free LFH block's first u16 of data
HEAP_INTERNAL_UNUSED = 1  # UnusedBytes of the heap header / UCR index / lookup blocks
MAX_UCRS = 4096
MAX_ZONES = 1 << 16
MAX_FREE = 1 << 20
PAGE = 0x1000

HEADER_FIELDS = (
    "Flags",
    "ForceFlags",
    "CompatibilityFlags",
    "EncodeFlagMask",
    "PointerKey",
    "VirtualMemoryThreshold",
    "Signature",
    "SegmentReserve",
    "SegmentCommit",
    "DeCommitFreeBlockThreshold",
    "DeCommitTotalFreeThreshold",
    "TotalFreeSize",
    "MaximumAllocationSize",
    "ProcessHeapsListIndex",
    "BlocksIndex",
    "UCRIndex",
    "FrontEndHeap",
    "FrontEndHeapType",
)


@dataclass(frozen=True)
class LfhRegion:
    """An LFH data region: a UserBlocks block's data and the subsegment that carves it."""

    address: int  # the _HEAP_USERDATA_HEADER (the UserBlocks block's data)
    size: int  # bytes of the UserBlocks block's data
    subsegment: int
    bucket: int  # SizeIndex of the subsegment
    block_size: int  # bytes of each LFH block, header included
    block_count: int
    free: int  # free blocks on its chain (Depth, as the walk counted them)
    segment: int

    @property
    def end(self) -> int:
        return self.address + self.size


@dataclass
class Win7Report(HeapReport):
    lfh_regions: list[LfhRegion] = field(default_factory=list)
    lfh_key: int = 0
    encoding: int = 0


class Win7Walker(HeapWalker):
    kind = "win7"
    heap_struct_name = "_HEAP"
    front_end = True
    raises_on_corruption = True
    walk_internal_flag = WALK_INTERNAL
    resynchronises = True
    prev_free_flags = False

    # ------------------------------------------------------------------ layout (for the views)
    @classmethod
    def granularity(cls, arch: str) -> int:
        return lay.granularity(arch)

    @classmethod
    def large_list_head(cls, arch: str, heap: int) -> int:
        return heap + lay.HEAP.offset(arch, "VirtualAllocdBlocks")

    @classmethod
    def heap_header_specs(cls, arch: str) -> list[FieldSpec]:
        return lay.HEAP.specs(arch)

    @classmethod
    def block_header_specs(cls, arch: str, free: bool) -> list[FieldSpec]:
        specs = lay.HEAP_ENTRY.specs(arch)
        if free:
            g = lay.granularity(arch)
            specs += lay.STRUCTS["_LIST_ENTRY"].specs(arch, "FreeList.", g)
        return specs

    @classmethod
    def block_specs(cls, arch: str, block: Block) -> list[FieldSpec]:
        if not block.flags & BLOCK_LFH:
            return cls.block_header_specs(arch, block.free)
        specs = lay.HEAP_ENTRY.specs(arch)
        if block.free:  # the chain's link: a u16 offset in units from the UserBlocks
            specs.append(FieldSpec(lay.granularity(arch), LFH_NEXT_OFFSET, "u16", 2))
        return specs

    @classmethod
    def large_header_specs(cls, arch: str) -> list[FieldSpec]:
        return [s for s in lay.HEAP_VIRTUAL_ALLOC_ENTRY.specs(arch) if s.scalar]

    @classmethod
    def block_header_size(cls, arch: str) -> int:
        return lay.granularity(arch)

    @classmethod
    def free_link_offset(cls, arch: str) -> int:
        return lay.granularity(arch)

    @classmethod
    def internal(cls, block: Block) -> bool:
        """The heap's own blocks: LFH data (Internal), UCR sentinels, header/index/lookup."""
        if block.flags & BLOCK_LFH or block.state != BUSY:
            return False
        return bool(block.flags & (lay.ENTRY_INTERNAL | lay.ENTRY_LAST_ENTRY)) or (
            block.unused == HEAP_INTERNAL_UNUSED
        )

    @classmethod
    def front_end_line(cls, report: HeapReport) -> str:
        key = report.header.get("LFHKey", 0)
        if report.header.get("FrontEndHeapType") == lay.HEAP_FRONT_END_LFH:
            regions = getattr(report, "lfh_regions", [])
            fast = f"LFH at 0x{report.header['FrontEndHeap']:x}, {len(regions)} subsegment(s)"
        else:
            fast = "no LFH yet"
        return f"Fast heap: {fast}; LFH Key 0x{key:08x}; Termination on corruption: ENABLED"

    @classmethod
    def fast_heap(cls, report: HeapReport) -> str:
        # !heap -s prints "LFH" once FrontEndHeapType is 2 (seed 002)
        return "LFH" if report.header.get("FrontEndHeapType") == lay.HEAP_FRONT_END_LFH else ""

    @classmethod
    def nested_regions(cls, report: HeapReport) -> list[NestedRegion]:
        G = lay.granularity(report.arch)
        return [
            NestedRegion("LFH data region", r.address - G, r.address, r.subsegment)
            for r in getattr(report, "lfh_regions", [])
        ]

    @classmethod
    def subsegment_of(cls, report: HeapReport, block: Block) -> int | None:
        if not block.flags & BLOCK_LFH:
            return None
        for r in getattr(report, "lfh_regions", []):
            if r.address <= block.address < r.end:
                return int(r.subsegment)
        return None

    @classmethod
    def struct_names(cls) -> tuple[str, ...]:
        return (cls.heap_struct_name, *(n for n in lay.STRUCTS if n != cls.heap_struct_name))

    @classmethod
    def struct_specs(cls, name: str, arch: str) -> list[FieldSpec]:
        return lay.STRUCTS[name].specs(arch)

    @classmethod
    def struct_addresses(cls, report: HeapReport) -> dict[str, int]:
        a, h = report.arch, report.heap
        out = {"_HEAP": h, "_HEAP_SEGMENT": h}
        out["_LIST_ENTRY"] = h + lay.HEAP.offset(a, "SegmentList")
        if report.blocks:
            out["_HEAP_ENTRY"] = report.blocks[0].address
        free = next((b for b in report.blocks if b.free and not b.flags & BLOCK_LFH), None)
        if free is not None:
            out["_HEAP_FREE_ENTRY"] = free.address
        if report.large_blocks:
            out["_HEAP_VIRTUAL_ALLOC_ENTRY"] = report.large_blocks[0].address
        lfh = report.header.get("FrontEndHeap", 0)
        if report.header.get("FrontEndHeapType") != lay.HEAP_FRONT_END_LFH or not lfh:
            return out
        local = lfh + lay.LFH_HEAP.offset(a, "LocalData")
        out |= {"_LFH_HEAP": lfh, "_HEAP_LOCAL_DATA": local}
        out["_RTL_CRITICAL_SECTION"] = lfh + lay.LFH_HEAP.offset(a, "Lock")
        out["_HEAP_BUCKET"] = lfh + lay.LFH_HEAP.offset(a, "Buckets")
        regions = getattr(report, "lfh_regions", [])
        if regions:
            r = regions[0]
            out["_HEAP_SUBSEGMENT"] = r.subsegment
            out["_INTERLOCK_SEQ"] = r.subsegment + lay.HEAP_SUBSEGMENT.offset(a, "AggregateExchg")
            out["_HEAP_USERDATA_HEADER"] = r.address
            out["_HEAP_LOCAL_SEGMENT_INFO"] = (
                local
                + lay.HEAP_LOCAL_DATA.offset(a, "SegmentInfo")
                + r.bucket * lay.HEAP_LOCAL_SEGMENT_INFO.size(a)
            )
        return out

    @classmethod
    def block_flag_names(cls, block: Block) -> list[str]:
        if block.flags & BLOCK_LFH:  # as !heap -i says it: "LFH (busy )", "LFH (free )"
            return ["LFH (free)" if block.state == FREE else "LFH (busy)"]
        if block.state == FREE:
            return ["FREE"]
        names = ["BUSY"]
        if block.flags & lay.ENTRY_INTERNAL:
            names.append("INTERNAL")
        if block.flags & lay.ENTRY_LAST_ENTRY:
            names.append("LAST_ENTRY")
        return names

    @classmethod
    def describe_field(cls, name: str, value: int, free: bool, unit: int) -> str | None:
        if name == "Size":
            return "encoded with _HEAP.Encoding (see the decoded size)"
        if name in ("Flags", "SmallTagIndex"):
            return "encoded"
        if name == LFH_NEXT_OFFSET:
            if value == lay.LFH_NO_FREE_OFFSET:
                return "the last free block of its subsegment"
            return f"next free block at UserBlocks + {value:#x} units"
        if name == "PreviousSize":
            return f"{value * unit:#x} bytes"
        if name == "UnusedBytes":
            if value & lay.LFH_UNUSED_FLAG:
                return "LFH block, free" if value == lay.LFH_UNUSED_FLAG else "LFH block, unused"
            return "" if free else "block size - requested size"
        return None

    def __init__(self, proc: ProcessCore, heap: int):
        self.arch = proc.arch.name
        self.alignment = lay.granularity(self.arch)
        self.min_block_size = 2 * self.alignment
        super().__init__(proc, heap)
        self.w7 = Win7Report(
            kind=self.kind, arch=self.arch, heap=heap, flags=0, force_flags=0, header={}
        )
        self.report = self.w7
        self.G = self.alignment
        self.encoding = 0
        self.lfh_key = lay.DEFAULT_LFH_KEY
        self._peb = proc.peb
        self._ucrs: dict[int, dict[int, int]] = {}  # segment index -> UCR address -> size

    def off(self, struct_: lay.W7Struct, name: str) -> int:
        return struct_.offset(self.arch, name)

    def get(self, struct_: lay.W7Struct, base: int, name: str) -> int:
        return self.mem.uint(base + self.off(struct_, name), struct_.field_size(self.arch, name))

    # ------------------------------------------------------------------ driver
    def walk(self) -> HeapReport:
        try:
            if not self.read_header():
                return self.report
        except UnreadableError as e:
            self.corrupt(UNREADABLE, self.heap, f"heap header: {e}")
            return self.report
        self.walk_segments()
        for seg in self.report.segments:
            self.walk_blocks(seg)
        self.walk_large_blocks()
        self.check_overlaps()
        self.walk_lfh()  # first: the back end's list is the last, unbounded one
        self.walk_back_end_free_list()
        self.check_list_hints()
        self.check_ucr_list()
        return self.report

    # ------------------------------------------------------------------ header
    def read_header(self) -> bool:
        h = self.heap
        header = {name: self.get(lay.HEAP, h, name) for name in HEADER_FIELDS}
        header["SegmentSignature"] = self.get(lay.HEAP, h, "Segment.SegmentSignature")
        mask = header["EncodeFlagMask"]
        word = self.mem.u32(h + self.off(lay.HEAP, "Encoding.Size"))
        self.encoding = word if mask & lay.HEAP_ENCODE_FLAG_MASK else 0
        header["Encoding"] = word
        header["grow_size"] = header["SegmentReserve"]  # the views' name for it
        try:
            keys = self._peb + lay.KEYS_PEB_OFFSET
            if self.mem.u32(keys) == lay.KEYS_SIGNATURE:
                self.lfh_key = self.mem.ptr(keys + 8)
        except UnreadableError:
            pass
        header["LFHKey"] = self.lfh_key
        self.report.header = header
        self.w7.lfh_key = self.lfh_key
        self.w7.encoding = self.encoding
        self.report.flags = header["Flags"]
        self.report.force_flags = header["ForceFlags"]
        if header["Signature"] != lay.HEAP_SIGNATURE:
            sig = header["Signature"]
            self.corrupt(HEAP_HEADER, h, f"heap signature 0x{sig:08x} is not 0xeeffeeff")
        if header["SegmentSignature"] != lay.HEAP_SEGMENT_SIGNATURE:
            sig = header["SegmentSignature"]
            self.corrupt(HEAP_HEADER, h, f"segment signature 0x{sig:08x} is not 0xffeeffee")
        return True

    # ------------------------------------------------------------------ segments
    def segment_list(self) -> tuple[int, int]:
        return self.heap + self.off(lay.HEAP, "SegmentList"), self.off(
            lay.HEAP_SEGMENT, "SegmentListEntry"
        )

    def first_segment(self) -> int:
        return self.heap

    def read_segment(self, address: int, index: int) -> Segment | None:
        S = lay.HEAP_SEGMENT
        try:
            sig = self.get(S, address, "SegmentSignature")
            owner = self.get(S, address, "Heap")
            base = self.get(S, address, "BaseAddress")
            pages = self.get(S, address, "NumberOfPages")
            first = self.get(S, address, "FirstEntry")
            last = self.get(S, address, "LastValidEntry")
        except UnreadableError as e:
            self.corrupt(SEGMENT, address, f"segment structure: {e}")
            return None
        if sig != lay.HEAP_SEGMENT_SIGNATURE:
            self.corrupt(SEGMENT, address, f"segment signature 0x{sig:08x} is not 0xffeeffee")
        if owner != self.heap:
            self.corrupt(SEGMENT, address, f"segment belongs to heap 0x{owner:x}")
        if base != address:
            self.corrupt(SEGMENT, address, f"segment base 0x{base:x} is not its own address")
        size = pages * PAGE
        if not (base < first < last == base + size) or size >= 1 << 40:
            self.corrupt(
                SEGMENT,
                address,
                f"entries out of range: base 0x{base:x}, pages 0x{pages:x}, first 0x{first:x}, "
                f"last 0x{last:x}",
            )
            return None
        head = address + self.off(S, "UCRSegmentList")
        entry_off = self.off(lay.HEAP_UCR_DESCRIPTOR, "SegmentEntry")
        ucrs: dict[int, int] = {}
        for desc in self.walk_list(head, entry_off, SEGMENT, "uncommitted range", MAX_UCRS):
            try:
                start = self.get(lay.HEAP_UCR_DESCRIPTOR, desc, "Address")
                length = self.get(lay.HEAP_UCR_DESCRIPTOR, desc, "Size")
            except UnreadableError as e:
                self.corrupt(SEGMENT, desc, f"uncommitted range descriptor: {e}")
                continue
            if not (first <= start and start + length <= last) or length % PAGE:
                self.corrupt(
                    SEGMENT, desc, f"uncommitted range 0x{start:x}+0x{length:x} out of range"
                )
                continue
            ucrs[start] = length
        self._ucrs[index] = ucrs
        uncommitted = sum(ucrs.values())
        try:
            n_pages = self.get(S, address, "NumberOfUnCommittedPages")
            n_ranges = self.get(S, address, "NumberOfUnCommittedRanges")
        except UnreadableError:
            n_pages, n_ranges = uncommitted // PAGE, len(ucrs)
        if (n_pages, n_ranges) != (uncommitted // PAGE, len(ucrs)):
            self.corrupt(
                SEGMENT,
                address,
                f"NumberOfUnCommittedPages/Ranges 0x{n_pages:x}/{n_ranges}, the UCR list holds "
                f"0x{uncommitted // PAGE:x}/{len(ucrs)}",
            )
        return Segment(
            index=index,
            address=address,
            base=base,
            reserved=size,
            committed=size - uncommitted,
            first_block=first,
            blocks_end=last,
            uncommitted=[Range(a, n) for a, n in sorted(ucrs.items()) if n],
        )

    # ------------------------------------------------------------------ back-end blocks
    def _decode_word(self, word: int) -> tuple[int, int, int, bool]:
        word ^= self.encoding
        units, flags, check = word & 0xFFFF, word >> 16 & 0xFF, word >> 24
        return units, flags, check, check == (units & 0xFF) ^ (units >> 8) ^ flags

    def decode_block(self, address: int, seg: Segment) -> RawBlock:
        G = self.G
        raw = self.mem.read(address, G)
        o = G - 8
        units, flags, check, ok = self._decode_word(struct.unpack_from("<I", raw, o)[0])
        unused = raw[o + 7]
        busy = bool(flags & lay.ENTRY_BUSY)
        block = RawBlock(units * G, flags, BUSY if busy else FREE, check, ok, False)
        if busy:
            block.requested = units * G - unused
        return block

    def _resync(
        self, address: int, seg: Segment, ucrs: dict[int, int], to_ucr: bool = True
    ) -> int | None:
        """Where the block after a bad header at address starts: the first later header whose
        checksum holds and whose PreviousSize leads back to address (or a UCR's start)."""
        G, o = self.G, self.G - 8
        limit = min(seg.blocks_end, address + lay.HEAP_MAX_FREE_UNITS * G + G)
        cut = min([u for u in ucrs if u > address] + [limit])
        try:
            data = self.mem.read(address, cut - address)
        except UnreadableError:
            return None
        for pos in range(2 * G, len(data) - G + 1, G):
            word, prev = struct.unpack_from("<IH", data, pos + o)
            if self._decode_word(word)[3] and prev * G == pos:
                return address + pos
        return cut if to_ucr and cut in ucrs else None

    def _header_ok(self, address: int) -> bool:
        try:
            word = self.mem.u32(address + self.G - 8)
        except UnreadableError:
            return False
        return self._decode_word(word)[3]

    def _lands_on_header(self, address: int, seg: Segment, ucrs: dict[int, int]) -> bool:
        """A size that ends at address is believable: the segment's end, a UCR, a good header,
        or a bad header that a later good header's PreviousSize leads back to (that header is
        the fault, reported when the walk gets there)."""
        if address >= seg.blocks_end or address in ucrs or self._header_ok(address):
            return True
        return self._resync(address, seg, ucrs, to_ucr=False) is not None

    def walk_blocks(self, seg: Segment) -> None:
        G, o = self.G, self.G - 8
        ucrs = self._ucrs.get(seg.index, {})
        address = seg.first_block
        prev: Block | None = None
        steps = (seg.blocks_end - address) // G + len(ucrs) + 2
        for _ in range(steps):
            if address >= seg.blocks_end:
                if address > seg.blocks_end:
                    self.corrupt(
                        BLOCK_SIZE,
                        prev.address if prev else address,
                        f"block runs past the segment end 0x{seg.blocks_end:x}",
                    )
                    seg.complete = False
                return
            if address in ucrs:
                if prev is not None and not prev.flags & lay.ENTRY_LAST_ENTRY:
                    self.corrupt(
                        BLOCK_HEADER,
                        prev.address,
                        "an uncommitted range follows a block that is not a sentinel (LAST_ENTRY)",
                    )
                address += ucrs[address]
                prev = None
                continue
            try:
                raw = self.mem.read(address, G)
            except UnreadableError as e:
                self.corrupt(UNREADABLE, address, f"block header in segment {seg.index}: {e}")
                seg.complete = False
                return
            units, flags, check, ok = self._decode_word(struct.unpack_from("<I", raw, o)[0])
            prev_units, unused = struct.unpack_from("<H", raw, o + 4)[0], raw[o + 7]
            if ok and raw[o + 6] != seg.index:
                self.corrupt(
                    BLOCK_HEADER, address, f"SegmentOffset {raw[o + 6]}, in segment {seg.index}"
                )
            size = units * G
            problem = None
            if not ok:
                problem = (
                    BLOCK_HEADER,
                    f"header checksum fails (SmallTagIndex 0x{check:02x}): "
                    "bad Encoding or overwritten",
                )
            elif (units < 2 and not flags & lay.ENTRY_LAST_ENTRY) or units == 0:
                problem = (BLOCK_SIZE, f"size 0x{size:x} is below the minimum block size")
            elif address + size > seg.blocks_end:
                problem = (BLOCK_SIZE, f"size 0x{size:x} runs past the segment end")
            elif any(address < u < address + size for u in ucrs):
                problem = (BLOCK_SIZE, f"size 0x{size:x} runs into uncommitted memory")
            elif not self._lands_on_header(address + size, seg, ucrs):
                problem = (
                    BLOCK_SIZE,
                    f"size 0x{size:x} leads to 0x{address + size:x}, which holds no block header",
                )
            if problem:
                self.corrupt(problem[0], address, problem[1])
                nxt = self._resync(address, seg, ucrs)
                if nxt is None:
                    seg.complete = False
                    return
                size, ok = nxt - address, False
                flags, unused = lay.ENTRY_BUSY, 0
            expected_prev = 0 if prev is None else prev.size // G
            if ok and prev is not None and prev_units != expected_prev:
                self.corrupt(  # the header's back reference to the previous block
                    PREV_FREE,
                    address,
                    f"PreviousSize 0x{prev_units:x} units, the block before is 0x{expected_prev:x}",
                )
            busy = bool(flags & lay.ENTRY_BUSY)
            if busy and ok and unused > size:
                self.corrupt(BLOCK_HEADER, address, f"UnusedBytes 0x{unused:x} > size 0x{size:x}")
            if not busy and ok and (flags or unused):
                self.corrupt(
                    BLOCK_HEADER,
                    address,
                    f"free block with flags 0x{flags:02x}, UnusedBytes 0x{unused:x}",
                )
            if (
                not busy
                and prev is not None
                and prev.state == FREE
                and prev.size // G < lay.HEAP_MAX_FREE_UNITS - 1
            ):
                self.corrupt(
                    ADJACENT_FREE, address, f"free block follows free block 0x{prev.address:x}"
                )
            flink = blink = None
            if not busy:
                try:
                    flink = self.mem.ptr(address + G)
                    blink = self.mem.ptr(address + G + self.ps)
                except UnreadableError:
                    pass
            requested = max(size - unused, 0) if busy else None
            block = Block(
                address=address,
                size=size,
                flags=flags,
                state=BUSY if busy else FREE,
                user_ptr=address + G,
                segment=seg.index,
                magic=check,
                committed=size,
                requested=requested,
                unused=None if requested is None else size - requested,
                prev_size=None if prev is None else prev.size,
                flink=flink,
                blink=blink,
            )
            seg.blocks.append(block)
            prev = block
            address += size
        seg.complete = False

    # ------------------------------------------------------------------ free list
    def free_list_heads(self) -> list[ListHead]:
        return [ListHead(self.heap + self.off(lay.HEAP, "FreeLists"), 0, None)]

    def walk_back_end_free_list(self) -> None:
        rep, G = self.report, self.G
        head = self.heap + self.off(lay.HEAP, "FreeLists")
        blocks = {b.address: b for b in rep.blocks if b.flags != BLOCK_LFH}
        fl = FreeList(len(rep.free_lists), head, 0, None)
        rep.free_lists.append(fl)
        seen: set[int] = set()
        complete = True

        def holder(entry: int) -> int:
            return self.heap if entry == head else entry - G

        def visit(node: int) -> None:
            b = blocks[node]
            try:
                f, bl = self.mem.ptr(node + G), self.mem.ptr(node + G + self.ps)
            except UnreadableError:
                f = bl = 0
            fl.entries.append(FreeListEntry(node, b.size, f, bl))
            seen.add(node)
            if b.state != FREE:
                self.corrupt(FREE_LIST_BUSY, node, "block on the free list is busy")

        cur, last_size = head, 0
        for _ in range(MAX_FREE):
            try:
                link = self.mem.ptr(cur)
            except UnreadableError:
                self.corrupt(FREE_LIST_LINK, holder(cur), f"flink at 0x{cur:x} is unreadable")
                complete = False
                break
            if link == head:
                break
            node = link - G
            if node in seen:
                self.corrupt(
                    FREE_LIST_LOOP, holder(cur), f"flink 0x{link:x} leads back to 0x{node:x}"
                )
                complete = False
                break
            if node not in blocks:
                inner = rep.block_at(node)
                if inner is not None and self._header_ok(node):
                    # a genuine free header inside another block: that block's size swallowed it
                    self.corrupt(
                        OVERLAP,
                        node,
                        f"free block 0x{node:x} lies inside block 0x{inner.address:x}",
                    )
                    try:
                        units = self._decode_word(self.mem.u32(node + G - 8))[0]
                    except UnreadableError:
                        units = 0
                    blocks[node] = Block(node, units * G, 0, FREE, node + G, inner.segment, 0, 0)
                else:
                    where = "outside the heap" if inner is None else "to no block header"
                    if inner is None and any(sg.contains(node) for sg in rep.segments):
                        where = "to no block header"
                    self.corrupt(FREE_LIST_LINK, holder(cur), f"flink 0x{link:x} points {where}")
                    complete = False
                    break
            try:
                back = self.mem.ptr(link + self.ps)
            except UnreadableError:
                back = None
            if back != cur:
                self.corrupt(
                    FREE_LIST_LINK,
                    node,
                    f"blink {back if back is None else hex(back)} does not point back at 0x{cur:x}",
                )
            visit(node)
            size = blocks[node].size
            if size < last_size:
                self.corrupt(
                    FREE_LIST_BUCKET,
                    node,
                    f"size 0x{size:x} after 0x{last_size:x}: the list is not in ascending size",
                )
            last_size = size
            cur = link
        else:
            self.corrupt(FREE_LIST_LOOP, self.heap, f"free list longer than {MAX_FREE} entries")
            complete = False
        if not complete:  # pick up what the blinks still reach from the head
            cur = head
            for _ in range(MAX_FREE):
                try:
                    link = self.mem.ptr(cur + self.ps)
                except UnreadableError:
                    break
                node = link - G
                if link == head or node in seen or node not in blocks:
                    break
                visit(node)
                cur = link
        free_units = sum(b.size for b in blocks.values() if b.state == FREE) // G
        if complete:
            for b in blocks.values():
                if b.state == FREE and b.address not in seen:
                    self.corrupt(FREE_NOT_LISTED, b.address, "free block is on no free list")
            total = rep.header.get("TotalFreeSize", free_units)
            if total != free_units and all(s.complete for s in rep.segments):
                self.corrupt(
                    HEAP_HEADER,
                    self.heap,
                    f"TotalFreeSize 0x{total:x} units, the free blocks hold 0x{free_units:x}",
                )

    def check_list_hints(self) -> None:
        """BlocksIndex: each size slot's ListHints[].Flink names the first free block of that
        slot in FreeLists order, its ListsInUseUlong bit says whether there is one, and
        ItemCount / OutOfRangeItems count the free blocks of the lookup's sizes."""
        rep, G = self.report, self.G
        LK = lay.STRUCTS["_HEAP_LIST_LOOKUP"]
        lookups: list[tuple[int, int, int, int, int, int, int]] = []
        address = rep.header.get("BlocksIndex", 0)
        try:
            while address and len(lookups) < 8:
                size = self.get(LK, address, "ArraySize")
                base = self.get(LK, address, "BaseIndex")
                if not base <= size <= 0x10000:
                    self.corrupt(HEAP_HEADER, address, f"_HEAP_LIST_LOOKUP sizes [{base}, {size})")
                    return
                lookups.append(
                    (
                        address,
                        size,
                        base,
                        self.get(LK, address, "ItemCount"),
                        self.get(LK, address, "OutOfRangeItems"),
                        self.get(LK, address, "ListsInUseUlong"),
                        self.get(LK, address, "ListHints"),
                    )
                )
                address = self.get(LK, address, "ExtendedLookup")
        except UnreadableError as e:
            self.corrupt(UNREADABLE, address, f"_HEAP_LIST_LOOKUP: {e}")
            return
        if not lookups or not rep.free_lists:
            return

        def slot_of(units: int) -> tuple[int, int]:
            for i, (_, size, base, *_rest) in enumerate(lookups):
                if units < size:
                    return i, units - base
            return len(lookups) - 1, lookups[-1][1] - 1 - lookups[-1][2]

        first: dict[tuple[int, int], int] = {}
        items = [0] * len(lookups)
        out_of_range = [0] * len(lookups)
        for fe in rep.free_lists[-1].entries:
            i, slot = slot_of(fe.size // G)
            first.setdefault((i, slot), fe.address)
            items[i] += 1
            out_of_range[i] += fe.size // G >= lookups[i][1]
        entry = 2 * self.ps
        for i, (address, size, base, count, oor, bitmap, hints) in enumerate(lookups):
            if (count, oor) != (items[i], out_of_range[i]):
                self.corrupt(
                    FREE_LIST_LINK,
                    address,
                    f"ItemCount/OutOfRangeItems {count}/{oor}, the free list holds "
                    f"{items[i]}/{out_of_range[i]}",
                )
            try:
                bits = self.mem.read(bitmap, (size - base + 31) // 32 * 4)
                flinks = self.mem.read(hints, (size - base) * entry)
            except UnreadableError as e:
                self.corrupt(UNREADABLE, address, f"ListHints: {e}")
                continue
            fmt = "<Q" if self.ps == 8 else "<I"
            for slot in range(size - base):
                flink = struct.unpack_from(fmt, flinks, slot * entry)[0]
                used = bits[slot >> 3] >> (slot & 7) & 1
                want = first.get((i, slot))
                expected = 0 if want is None else want + G
                if flink != expected or used != (flink != 0):
                    self.corrupt(
                        FREE_LIST_LINK,
                        hints + slot * entry,
                        f"ListHints[0x{base + slot:x}] 0x{flink:x} (in use {used}), the first "
                        f"free block of that size is {'none' if want is None else hex(want)}",
                    )

    def check_ucr_list(self) -> None:
        """_HEAP.UCRList: the UCRs with Size > 0, in ascending size."""
        head = self.heap + self.off(lay.HEAP, "UCRList")
        U = lay.HEAP_UCR_DESCRIPTOR
        listed = []
        for desc in self.walk_list(head, 0, SEGMENT, "heap UCR", MAX_UCRS):
            try:
                listed.append((self.get(U, desc, "Size"), self.get(U, desc, "Address"), desc))
            except UnreadableError as e:
                self.corrupt(UNREADABLE, desc, f"UCR descriptor: {e}")
        sizes = [n for n, _, _ in listed]
        if sizes != sorted(sizes) or 0 in sizes:
            self.corrupt(SEGMENT, head, "_HEAP.UCRList is not in ascending size")
        known = {(n, a) for ucrs in self._ucrs.values() for a, n in ucrs.items() if n}
        if {(n, a) for n, a, _ in listed} != known:
            self.corrupt(SEGMENT, head, "_HEAP.UCRList does not hold the segments' UCRs")

    # ------------------------------------------------------------------ large blocks
    def large_list(self) -> tuple[int, int]:
        return self.heap + self.off(lay.HEAP, "VirtualAllocdBlocks"), 0

    def read_large(self, address: int) -> LargeBlock | None:
        V = lay.HEAP_VIRTUAL_ALLOC_ENTRY
        try:
            commit = self.get(V, address, "CommitSize")
            reserve = self.get(V, address, "ReserveSize")
            word = self.mem.u32(address + self.off(V, "BusyBlock.Size"))
            flink = self.get(V, address, "Entry.Flink")
            blink = self.get(V, address, "Entry.Blink")
        except UnreadableError as e:
            self.corrupt(LARGE_BLOCK, address, f"virtual block header: {e}")
            return None
        units, flags, _, ok = self._decode_word(word)
        if not ok or flags != lay.ENTRY_BUSY | lay.ENTRY_VIRTUAL_ALLOC:
            self.corrupt(
                LARGE_BLOCK, address, f"BusyBlock header does not decode (flags 0x{flags:02x})"
            )
        header = V.size(self.arch)
        if address % 0x10000 or commit % PAGE or reserve < commit or units > commit - header:
            self.corrupt(
                LARGE_BLOCK,
                address,
                f"sizes out of range: commit 0x{commit:x}, "
                f"reserve 0x{reserve:x}, unused 0x{units:x}",
            )
        return LargeBlock(
            address=address,
            region=address,
            region_size=max(reserve, commit),
            user_ptr=address + header,
            size=max(commit - units, 0),
            block_size=commit,
            flink=flink,
            blink=blink,
        )

    # ------------------------------------------------------------------ LFH
    def walk_lfh(self) -> None:
        hdr = self.report.header
        lfh = hdr.get("FrontEndHeap", 0)
        if hdr.get("FrontEndHeapType") != lay.HEAP_FRONT_END_LFH or not lfh:
            return
        try:
            owner = self.get(lay.LFH_HEAP, lfh, "Heap")
        except UnreadableError as e:
            self.corrupt(UNREADABLE, lfh, f"_LFH_HEAP: {e}")
            return
        if owner != self.heap:
            self.corrupt(HEAP_HEADER, lfh, f"_LFH_HEAP.Heap is 0x{owner:x}")
        zones = self.walk_list(
            lfh + self.off(lay.LFH_HEAP, "SubSegmentZones"), 0, SEGMENT, "LFH zone", MAX_ZONES
        )
        sub_size = lay.HEAP_SUBSEGMENT.size(self.arch)
        zone_size = lay.LFH_BLOCK_ZONE.size(self.arch)
        subs: list[tuple[int, int]] = []
        for zone in zones:
            try:
                free_ptr = self.get(lay.LFH_BLOCK_ZONE, zone, "FreePointer")
                limit = self.get(lay.LFH_BLOCK_ZONE, zone, "Limit")
            except UnreadableError as e:
                self.corrupt(UNREADABLE, zone, f"LFH zone: {e}")
                continue
            first = zone + zone_size
            if not first <= free_ptr <= limit or limit - first > 1 << 20:
                self.corrupt(
                    SEGMENT,
                    zone,
                    f"LFH zone FreePointer 0x{free_ptr:x} / Limit 0x{limit:x} out of range",
                )
                continue
            for sub in range(first, free_ptr - sub_size + 1, sub_size):
                try:
                    ub = self.get(lay.HEAP_SUBSEGMENT, sub, "UserBlocks")
                except UnreadableError:
                    continue
                if ub:
                    subs.append((sub, ub))
        by_data = {b.user_ptr: b for b in self.report.blocks}
        for sub, ub in subs:
            block = by_data.get(ub)
            if block is None or block.state != BUSY or not block.flags & lay.ENTRY_INTERNAL:
                self.corrupt(
                    SEGMENT,
                    sub,
                    f"subsegment's UserBlocks 0x{ub:x} is not an Internal busy block of the heap",
                )
                continue
            self.walk_subsegment(sub, block, len(self.report.free_lists))

    def walk_subsegment(self, sub: int, ub_block: Block, index: int) -> None:
        rep, G, U = self.report, self.G, ub_block.user_ptr
        SS, UD = lay.HEAP_SUBSEGMENT, lay.HEAP_USERDATA_HEADER
        try:
            bs = self.get(SS, sub, "BlockSize")
            count = self.get(SS, sub, "BlockCount")
            bucket = self.get(SS, sub, "SizeIndex")
            depth = self.get(SS, sub, "AggregateExchg.Depth")
            offset = self.get(SS, sub, "AggregateExchg.FreeEntryOffset")
            back = self.get(UD, U, "SubSegment")
            signature = self.get(UD, U, "Signature")
        except UnreadableError as e:
            self.corrupt(UNREADABLE, sub, f"subsegment: {e}")
            return
        if signature != lay.HEAP_USERDATA_SIGNATURE:
            self.corrupt(
                SEGMENT, U, f"UserBlocks signature 0x{signature:x} is not 0xf0e0d0c0 (overwritten)"
            )
        if back != sub:
            self.corrupt(SEGMENT, U, f"UserBlocks.SubSegment 0x{back:x} is not 0x{sub:x}")
        first = U + UD.size(self.arch)
        data_end = ub_block.end
        if not bs or not count or first + count * bs * G > data_end:
            self.corrupt(
                SEGMENT,
                sub,
                f"BlockSize 0x{bs:x} x BlockCount 0x{count:x} does not fit UserBlocks 0x{U:x}",
            )
            return
        size = bs * G
        shift = 4 if self.ps == 8 else 3
        mask = (1 << (8 * self.ps)) - 1
        try:
            data = self.mem.read(first, count * size)
        except UnreadableError as e:
            self.corrupt(UNREADABLE, first, f"LFH blocks: {e}")
            return
        lfh_blocks: list[Block] = []
        prev: Block | None = None
        for k in range(count):
            pos, address = k * size, first + k * size
            expected = (self.heap ^ sub ^ self.lfh_key ^ (address >> shift)) & mask
            if self.ps == 8:
                code, low = struct.unpack_from("<QI", data, pos)
                ok = code == expected and low == code & 0xFFFFFFFF
            else:
                code = struct.unpack_from("<I", data, pos)[0]
                ok = code == expected
            unused = data[pos + G - 1]
            if not ok or not unused & lay.LFH_UNUSED_FLAG:
                self.corrupt(
                    BLOCK_HEADER,
                    address,
                    f"LFH header does not decode to subsegment "
                    f"0x{sub:x} (UnusedBytes 0x{unused:02x})",
                )
            free = unused == lay.LFH_UNUSED_FLAG
            requested = None
            if not free:
                n = unused & 0x7F
                if n == lay.LFH_UNUSED_EXTENDED:
                    n = struct.unpack_from("<H", data, pos + size - 2)[0]
                requested = max(size - n, 0)
            b = Block(
                address=address,
                size=size,
                flags=BLOCK_LFH,
                state=FREE if free else BUSY,
                user_ptr=address + G,
                segment=ub_block.segment,
                magic=unused,
                committed=size,
                requested=requested,
                unused=None if requested is None else size - requested,
                prev_size=None if prev is None else prev.size,
                flink=struct.unpack_from("<H", data, pos + G)[0] if free else None,
            )
            lfh_blocks.append(b)
            prev = b
        # the free chain
        fl = FreeList(index, sub, size, size)
        rep.free_lists.append(fl)
        on_chain: set[int] = set()
        where, complete = sub, True
        for _ in range(count + 1):
            if offset == lay.LFH_NO_FREE_OFFSET:
                break
            address = U + offset * G
            k, rem = divmod(address - first, size)
            if rem or not 0 <= k < count:
                self.corrupt(
                    FREE_LIST_LINK,
                    where,
                    f"LFH free offset 0x{offset:x} is no block of subsegment 0x{sub:x}",
                )
                complete = False
                break
            if address in on_chain:
                self.corrupt(FREE_LIST_LOOP, where, f"LFH free chain loops back to 0x{address:x}")
                complete = False
                break
            b = lfh_blocks[k]
            on_chain.add(address)
            nxt = struct.unpack_from("<H", data, k * size + G)[0]
            # the chain stores u16 offsets; shown as the addresses of the linked entries'
            # links (header + G), as the back end's LIST_ENTRYs read, the head being `sub`
            nxt_link = sub if nxt == lay.LFH_NO_FREE_OFFSET else U + nxt * G + G
            prev_link = sub if where == sub else where + G
            fl.entries.append(FreeListEntry(address, size, nxt_link, prev_link))
            if b.state != FREE:
                self.corrupt(
                    FREE_LIST_BUSY, address, "busy LFH block on its subsegment's free chain"
                )
            where, offset = address, nxt
        else:
            self.corrupt(FREE_LIST_LOOP, sub, "LFH free chain longer than BlockCount")
            complete = False
        if complete:
            if len(on_chain) != depth:
                self.corrupt(
                    SEGMENT,
                    sub,
                    f"_INTERLOCK_SEQ.Depth {depth}, the free chain holds {len(on_chain)}",
                )
            for b in lfh_blocks:
                if b.state == FREE and b.address not in on_chain:
                    self.corrupt(FREE_NOT_LISTED, b.address, "free LFH block is not on the chain")
        self.w7.lfh_regions.append(
            LfhRegion(
                U, ub_block.size - G, sub, bucket, size, count, len(on_chain), ub_block.segment
            )
        )
        seg = rep.segments[ub_block.segment]
        at = seg.blocks.index(ub_block) + 1
        seg.blocks[at:at] = lfh_blocks

    # ------------------------------------------------------------------ regions
    def check_overlaps(self) -> None:
        super().check_overlaps()
        for seg in self.report.segments:  # blocks that reach into each other
            for a, b in zip(seg.blocks, seg.blocks[1:], strict=False):
                if a.end > b.address:
                    self.corrupt(
                        OVERLAP,
                        b.address,
                        f"block 0x{b.address:x} lies inside block 0x{a.address:x}",
                    )
