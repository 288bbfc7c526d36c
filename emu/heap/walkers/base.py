"""The walk both layouts share; ``builtin.py`` and ``wine.py`` say how to decode their structures.

Both heaps have the same shape (heapemu's builtin heap was designed after Wine's): a header at
the start of the first segment, a doubly linked list of segments, segments tiled by blocks whose
8-byte headers carry a size, flag bits (FREE 1, PREV_FREE 2) and a 16-bit magic, a back pointer
just below a block whose predecessor is free, size-bucketed free lists forming one ring through
sentinel blocks in the header, and a list of large blocks in regions of their own. Only the
encodings differ, so a subclass decodes and this class walks and cross-checks.

Every loop is bounded (list walks by a visited set and a cap, block walks by the segment size)
and every read goes through ``MemoryReader``, whose only exception is ``UnreadableError``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from emu.heap.walkers.freelists import walk_free_lists
from emu.heap.walkers.model import (
    ADJACENT_FREE,
    BLOCK_HEADER,
    BLOCK_HEADER_SIZE,
    BLOCK_SIZE,
    FREE,
    LARGE_BLOCK,
    LINK_OFFSET,
    OVERLAP,
    PREV_FREE,
    SEGMENT_LIST,
    UNREADABLE,
    Block,
    Corruption,
    FieldSpec,
    HeapReport,
    LargeBlock,
    NestedRegion,
    Segment,
    header_flag_names,
)
from emu.heap.walkers.reader import MemoryReader, UnreadableError
from emu.process.core import ProcessCore

MAX_SEGMENTS = 4096
MAX_LARGE_BLOCKS = 1 << 16


@dataclass
class RawBlock:
    """A block header as one layout encodes it, decoded."""

    size: int
    flags: int
    state: str  # model.BUSY / FREE / PENDING
    magic: int
    magic_ok: bool  # the magic is one this layout uses for blocks in a segment
    prev_free: bool  # the PREV_FREE flag
    requested: int | None = None  # busy blocks
    problems: list[str] = field(default_factory=list)  # other header fields out of range


@dataclass(frozen=True)
class ListHead:
    """A free list's sentinel and the sizes (inclusive) it holds; max_size None: unbounded."""

    address: int
    min_size: int
    max_size: int | None


class HeapWalker(ABC):
    """Walks one heap; ``walk()`` returns the report. Subclasses implement the hooks below."""

    kind: str
    # The NT heap's shape (builtin, Wine): every segment tiled from its first block to its end
    # by blocks with in-band headers just below the user pointer, free blocks on size-class
    # lists, free neighbours coalesced, large blocks on a list. The segment heap has none of
    # that (headerless LFH slots and page ranges, trees instead of lists): its walker says
    # False and tests of the NT shape are run only where this holds.
    block_chain: bool = True
    alignment: int  # block granularity
    min_block_size: int
    heap_struct_name: str  # what ``dt`` calls the heap header
    # A low-fragmentation front end: blocks of a busy size come from its subsegments, so a
    # freed back-end block is not reused at once (seed 002 on Windows 7).
    front_end: bool = False
    # Heap corruption met by a call (a double free, a bad header) raises
    # STATUS_HEAP_CORRUPTION instead of failing the call (Windows' termination on corruption).
    raises_on_corruption: bool = False
    # The RtlWalkHeap flag bit that marks busy entries the heap uses for itself (0: none).
    walk_internal_flag: int = 0
    # After a bad block header or size the walk finds the next block again (win7: a later
    # header's PreviousSize leads back), instead of giving up on the rest of the segment.
    resynchronises: bool = False
    # Block headers carry a PREV_FREE flag / back pointer (win7's carry PreviousSize instead).
    prev_free_flags: bool = True

    # ------------------------------------------------------------------ layout (for the views)
    # What the views decode, described by the walker that knows the allocator: ``dt``, ``heap
    # entry`` and the summaries ask these instead of testing which allocator they look at.
    @classmethod
    @abstractmethod
    def granularity(cls, arch: str) -> int:
        """Block size unit (WinDbg's "Granularity")."""

    @classmethod
    @abstractmethod
    def large_list_head(cls, arch: str, heap: int) -> int:
        """The heap's list head of large blocks (WinDbg's "Virtual Alloc List")."""

    @classmethod
    @abstractmethod
    def heap_header_specs(cls, arch: str) -> list[FieldSpec]:
        """The heap header's fields in offset order (containers before their members)."""

    @classmethod
    @abstractmethod
    def block_header_specs(cls, arch: str, free: bool) -> list[FieldSpec]:
        """A block header's fields (and a free block's list links) from the block's address."""

    @classmethod
    def block_specs(cls, arch: str, block: Block) -> list[FieldSpec]:
        """The header fields of this block (default: every block has the same header)."""
        return cls.block_header_specs(arch, block.free)

    @classmethod
    @abstractmethod
    def large_header_specs(cls, arch: str) -> list[FieldSpec]:
        """A large block's header fields, from the region base."""

    @classmethod
    def block_header_size(cls, arch: str) -> int:
        """Bytes from a block's header to its user data."""
        return BLOCK_HEADER_SIZE

    @classmethod
    def free_link_offset(cls, arch: str) -> int:
        """Offset of a free block's LIST entry (its flink/blink) from its header."""
        return LINK_OFFSET

    @classmethod
    def internal(cls, block: Block) -> bool:
        """A busy block the heap uses for itself (not the caller's allocation)."""
        return False

    @classmethod
    def front_end_line(cls, report: HeapReport) -> str:
        """One line about the heap's front end and keys for ``heap summary`` ("" if none)."""
        return ""

    @classmethod
    def block_flag_names(cls, block: Block) -> list[str]:
        """The names of a block's header flags (``heap entry``'s "Block flags")."""
        return header_flag_names(block.flags)

    @classmethod
    def describe_field(cls, name: str, value: int, free: bool, unit: int) -> str | None:
        """What a block-header field's value means, where this allocator's encoding differs
        from the common one (None: let the view say it)."""
        return None

    @classmethod
    def struct_names(cls) -> tuple[str, ...]:
        """The structures ``dt`` can show for this allocator (the heap header first)."""
        return (cls.heap_struct_name,)

    @classmethod
    def struct_specs(cls, name: str, arch: str) -> list[FieldSpec]:
        """The fields of structure ``name`` (one of ``struct_names``) in offset order;
        KeyError for a structure this allocator does not have."""
        if name != cls.heap_struct_name:
            raise KeyError(name)
        return cls.heap_header_specs(arch)

    @classmethod
    def struct_addresses(cls, report: HeapReport) -> dict[str, int]:
        """Where this heap has one of each structure ``dt`` can show (its first, when there
        are many): ``heap dt --struct NAME`` without ``--address`` looks there."""
        return {cls.heap_struct_name: report.heap}

    @classmethod
    def fast_heap(cls, report: HeapReport) -> str:
        """``!heap -s``'s "Fast heap" column: the active front end's name ("" if none)."""
        return ""

    @classmethod
    def nested_regions(cls, report: HeapReport) -> list[NestedRegion]:
        """The front end's data regions inside back-end blocks (win7: LFH UserBlocks)."""
        return []

    @classmethod
    def subsegment_of(cls, report: HeapReport, block: Block) -> int | None:
        """The front-end subsegment that serves ``block`` (None: the back end serves it)."""
        return None

    @classmethod
    def component_titles(cls) -> dict[str, str]:
        """How the views title ``Block.component`` values (empty: one component only)."""
        return {}

    def __init__(self, proc: ProcessCore, heap: int):
        self.mem = MemoryReader(proc)
        self.ps = proc.arch.ptr_size
        self.heap = heap
        self.report = HeapReport(
            kind=self.kind, arch=proc.arch.name, heap=heap, flags=0, force_flags=0, header={}
        )
        self._reported: set[tuple[str, int]] = set()

    # ------------------------------------------------------------------ hooks
    @abstractmethod
    def read_header(self) -> bool:
        """Fill report.header/flags/force_flags and check the header; False: nothing to walk."""

    @abstractmethod
    def segment_list(self) -> tuple[int, int]:
        """(address of the segment list head, offset of the LIST entry in a segment)."""

    @abstractmethod
    def first_segment(self) -> int:
        """Address of the segment structure embedded in the heap header."""

    @abstractmethod
    def read_segment(self, address: int, index: int) -> Segment | None:
        """Decode and check one segment structure (no blocks); None when unusable."""

    @abstractmethod
    def decode_block(self, address: int, seg: Segment) -> RawBlock:
        """Decode the block header at address (may raise UnreadableError)."""

    @abstractmethod
    def free_list_heads(self) -> list[ListHead]:
        """The free-list sentinels in index order."""

    @abstractmethod
    def large_list(self) -> tuple[int, int]:
        """(address of the large-block list head, offset of the LIST entry in a large block)."""

    @abstractmethod
    def read_large(self, address: int) -> LargeBlock | None:
        """Decode and check one large block whose header starts at address."""

    def check_extra(self) -> None:  # noqa: B027 (an optional hook, not abstract)
        """Layout-specific checks after everything else (Wine: the delayed-free array)."""

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
        walk_free_lists(self)
        self.check_extra()
        return self.report

    def corrupt(self, kind: str, address: int, detail: str) -> None:
        """Record a corruption once per (kind, address)."""
        if (kind, address) not in self._reported:
            self._reported.add((kind, address))
            self.report.corruptions.append(Corruption(kind, address, detail))

    # ------------------------------------------------------------------ lists
    def walk_list(self, head: int, entry_offset: int, kind: str, what: str, cap: int) -> list[int]:
        """The structures on a LIST_ENTRY ring with a head, in flink order (their addresses).

        Stops at the first link that is unreadable or loops, reporting it at the structure that
        holds the bad link; a blink that does not point back is reported and the walk goes on.
        """
        nodes: list[int] = []
        seen = {head}
        prev = head

        def holder(entry: int) -> int:
            return head if entry == head else entry - entry_offset

        for _ in range(cap + 1):
            try:
                link = self.mem.ptr(prev)
            except UnreadableError:
                self.corrupt(kind, holder(prev), f"{what} list: flink at 0x{prev:x} unreadable")
                return nodes
            if link == head:
                return nodes
            if link in seen:
                self.corrupt(kind, holder(prev), f"{what} list loops back to 0x{link:x}")
                return nodes
            try:
                blink = self.mem.ptr(link + self.ps)
            except UnreadableError:
                self.corrupt(kind, holder(prev), f"{what} list: flink 0x{link:x} is unreadable")
                return nodes
            if blink != prev:
                # a real node with a bad blink is still linked forward consistently; if not,
                # the flink that led here is the bad link
                if not self._linked_forward(link):
                    self.corrupt(
                        kind, holder(prev), f"{what} list: flink 0x{link:x} leads to no entry"
                    )
                    return nodes
                self.corrupt(
                    kind,
                    link - entry_offset,
                    f"{what} list: blink 0x{blink:x} does not point back at 0x{prev:x}",
                )
            nodes.append(link - entry_offset)
            seen.add(link)
            prev = link
        self.corrupt(kind, head, f"{what} list has more than {cap} entries")
        return nodes

    def _linked_forward(self, entry: int) -> bool:
        """entry's flink leads to an entry whose blink is entry."""
        try:
            return self.mem.ptr(self.mem.ptr(entry) + self.ps) == entry
        except UnreadableError:
            return False

    def walk_segments(self) -> None:
        head, offset = self.segment_list()
        addresses = self.walk_list(head, offset, SEGMENT_LIST, "segment", MAX_SEGMENTS)
        first = self.first_segment()
        if first not in addresses:  # the list is broken: the embedded segment is still known
            addresses.append(first)
        for address in addresses:
            seg = self.read_segment(address, len(self.report.segments))
            if seg is not None:
                self.report.segments.append(seg)

    def walk_large_blocks(self) -> None:
        head, offset = self.large_list()
        for address in self.walk_list(head, offset, LARGE_BLOCK, "large block", MAX_LARGE_BLOCKS):
            large = self.read_large(address)
            if large is not None:
                self.report.large_blocks.append(large)

    # ------------------------------------------------------------------ blocks
    def size_problem(self, address: int, size: int, seg: Segment) -> str | None:
        if size == 0:
            return "size 0"
        if size % self.alignment:
            return f"size 0x{size:x} is not a multiple of 0x{self.alignment:x}"
        if size < self.min_block_size:
            return f"size 0x{size:x} is below the minimum block size 0x{self.min_block_size:x}"
        if address + size > seg.blocks_end:
            return (
                f"size 0x{size:x} runs 0x{address + size - seg.blocks_end:x} bytes past the "
                f"end of segment {seg.index} (0x{seg.blocks_end:x})"
            )
        return None

    def plausible(self, address: int, seg: Segment, need_magic: bool = True) -> RawBlock | None:
        """The header at address when it looks like a real block header, else None."""
        try:
            raw = self.decode_block(address, seg)
        except UnreadableError:
            return None
        if need_magic and not raw.magic_ok:
            return None
        if self.size_problem(address, raw.size, seg):
            return None
        return raw

    def lands_on_header(self, address: int, seg: Segment) -> bool:
        """Whether a block size that ends at address is believable: a good magic there, or a
        bad magic whose own size leads on to a good header (that block's magic is the fault).
        A good magic with a bad size is that block's fault, reported when the walk gets there.
        """
        try:
            raw = self.decode_block(address, seg)
        except UnreadableError:
            return False
        if raw.magic_ok:
            return True
        if self.size_problem(address, raw.size, seg):
            return False
        after = address + raw.size
        return after == seg.blocks_end or self.plausible(after, seg) is not None

    def walk_blocks(self, seg: Segment) -> None:
        """Tile the segment with blocks from first_block to blocks_end, checking each one.

        A bad size stops the segment (nothing after it can be trusted). When a block's size
        leads to something that is not a block header, the blame goes to that size unless the
        thing there is a block with a bad magic whose own size leads on to a good header.
        """
        address = seg.first_block
        prev: Block | None = None
        steps = max(0, seg.blocks_end - address) // self.min_block_size + 1
        for _ in range(steps):
            if address >= seg.blocks_end:
                return
            try:
                raw = self.decode_block(address, seg)
            except UnreadableError as e:
                self.corrupt(UNREADABLE, address, f"block header in segment {seg.index}: {e}")
                break
            if not raw.magic_ok:
                self.corrupt(BLOCK_HEADER, address, f"bad block magic 0x{raw.magic:04x}")
            problem = self.size_problem(address, raw.size, seg)
            if problem:
                self.corrupt(BLOCK_SIZE, address, problem)
                break
            end = address + raw.size
            if end > seg.commit_end and (raw.state != FREE or end != seg.blocks_end):
                self.corrupt(
                    BLOCK_SIZE,
                    address,
                    f"size 0x{raw.size:x} runs into uncommitted memory at 0x{seg.commit_end:x}"
                    + ("" if raw.state == FREE else " (only a last free block may)"),
                )
                break
            if end < seg.blocks_end and not self.lands_on_header(end, seg):
                if not raw.magic_ok:
                    break  # a bad magic whose size leads nowhere: nothing more to trust
                self.corrupt(
                    BLOCK_SIZE,
                    address,
                    f"size 0x{raw.size:x} leads to 0x{end:x}, which holds no block header",
                )
                break
            for text in raw.problems:
                self.corrupt(BLOCK_HEADER, address, text)
            block = self.make_block(address, raw, seg, prev)
            seg.blocks.append(block)
            prev = block
            address = end
        seg.complete = False

    def make_block(self, address: int, raw: RawBlock, seg: Segment, prev: Block | None) -> Block:
        prev_is_free = prev is not None and prev.state == FREE
        back: int | None = None
        if raw.prev_free:
            try:
                back = self.mem.ptr(address - self.ps)
            except UnreadableError:
                back = None
            if prev is None:
                self.corrupt(PREV_FREE, address, "PREV_FREE set on the first block of a segment")
            elif not prev_is_free:
                self.corrupt(
                    PREV_FREE, address, f"PREV_FREE set but block 0x{prev.address:x} is busy"
                )
            elif back != prev.address:
                self.corrupt(
                    PREV_FREE,
                    address,
                    f"back pointer {_hex(back)} should point at free block 0x{prev.address:x}",
                )
        elif prev is not None and prev_is_free:
            self.corrupt(
                PREV_FREE, address, f"block 0x{prev.address:x} before it is free, PREV_FREE clear"
            )
        if prev_is_free and raw.state == FREE and prev is not None:
            self.corrupt(
                ADJACENT_FREE, address, f"free block follows free block 0x{prev.address:x}"
            )
        flink = blink = None
        if raw.state == FREE:
            try:
                flink = self.mem.ptr(address + LINK_OFFSET)
                blink = self.mem.ptr(address + LINK_OFFSET + self.ps)
            except UnreadableError:
                pass
        requested = raw.requested if raw.state != FREE else None
        return Block(
            address=address,
            size=raw.size,
            flags=raw.flags,
            state=raw.state,
            user_ptr=address + BLOCK_HEADER_SIZE,
            segment=seg.index,
            magic=raw.magic,
            committed=min(address + raw.size, seg.commit_end) - address,
            requested=requested,
            unused=None if requested is None else raw.size - requested,
            prev_size=None if prev is None else prev.size,
            back_link=back,
            flink=flink,
            blink=blink,
        )

    # ------------------------------------------------------------------ regions
    def check_overlaps(self) -> None:
        spans = [(s.base, s.end, f"segment {s.index}") for s in self.report.segments]
        spans += [
            (lb.region, lb.region + lb.region_size, f"large block 0x{lb.address:x}")
            for lb in self.report.large_blocks
        ]
        spans.sort()
        reach, owner = -1, ""
        for start, end, what in spans:
            if start < reach:
                self.corrupt(OVERLAP, start, f"{what} [0x{start:x}, 0x{end:x}) overlaps {owner}")
            if end > reach:
                reach, owner = end, what


def _hex(value: int | None) -> str:
    return "unreadable" if value is None else f"0x{value:x}"
