"""Walker for heapemu's Windows 10 segment heap (``asm/src/segheap.c``), from emulated memory only.

The segment heap does not have the NT heap's shape (one block chain per segment, free lists), so
this walker overrides ``HeapWalker.walk`` and maps the heap onto the shared ``HeapReport``:

- each 1 MiB ``_HEAP_PAGE_SEGMENT`` of ``SegContexts[0]`` is a ``Segment`` (base = the segment,
  first block = the first page after the descriptor pages, committed = its committed pages);
- its page ranges, tiled by the descriptor array, become blocks in address order: a back-end
  block is one ``Block`` (no header: address = user pointer = the range), a free range's
  committed runs are free blocks and its uncommitted runs the segment's uncommitted ranges, a
  VS subsegment contributes its chunks (busy and free; heap-internal chunks are skipped, as
  RtlWalkHeap skips them), an LFH subsegment its busy slots (free slots are counted in its
  ``Subsegment`` record, not listed as blocks, as RtlWalkHeap does not report them); a VS or
  LFH subsegment of 64 KiB or more ends in a guard page, the last page of its range, which
  must be uncommitted: ``Subsegment.guard``, and an uncommitted range of the segment as
  RtlWalkHeap reports it;
- large blocks come from the ``LargeAllocMetadata`` tree, in address order;
- ``HeapReport.subsegments`` lists the VS and LFH subsegments (component, block size, counts)
  and every ``Block`` says which ``component`` serves it (backend / vs / lfh).

Everything encoded is decoded with the heap's keys read from ``_SEGMENT_HEAP.MemStats``. What
does not add up is a ``Corruption`` and the walk goes on with the next range or subsegment;
every loop is bounded (descriptor arrays by 256 units, chunks by the subsegment size, lists and
trees by a visited set and a cap).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from emu.arch import get_arch
from emu.heap.walkers import segment_layout as sl
from emu.heap.walkers.base import MAX_LARGE_BLOCKS, MAX_SEGMENTS, HeapWalker, ListHead, RawBlock
from emu.heap.walkers.model import (
    _SCALAR,
    ADJACENT_FREE,
    BLOCK_HEADER,
    BUSY,
    DESCRIPTOR,
    FREE,
    FREE_LIST_BUSY,
    FREE_LIST_LINK,
    FREE_NOT_LISTED,
    HEAP_HEADER,
    LARGE_BLOCK,
    LFH_BITMAP,
    SEGMENT,
    SEGMENT_LIST,
    UNREADABLE,
    Block,
    FieldSpec,
    FreeList,
    FreeListEntry,
    HeapReport,
    LargeBlock,
    Range,
    Segment,
    Subsegment,
)
from emu.heap.walkers.reader import UnreadableError
from emu.process.core import ProcessCore
from emu.win.layouts import Struct

HEAP = sl.SEGMENT_HEAP
CTX = sl.HEAP_SEG_CONTEXT
DESC = sl.HEAP_PAGE_RANGE_DESCRIPTOR
VSSUB = sl.HEAP_VS_SUBSEGMENT
LFHSUB = sl.HEAP_LFH_SUBSEGMENT
LARGE = sl.HEAP_LARGE_ALLOC_DATA
MAX_TREE_NODES = 1 << 16
FORCE_FLAG_MASK = 0x1 | 0x4  # HEAP_NO_SERIALIZE | HEAP_GENERATE_EXCEPTIONS

BACKEND = "backend"
VS = "vs"
LFH = "lfh"
LARGE_COMPONENT = "large"
COMPONENTS = (LFH, VS, BACKEND, LARGE_COMPONENT)


def _nested_offset(struct_name: str, name: str, arch: str) -> int:
    for n in sl.NESTED[struct_name]:
        if n.name == name:
            return n.x64 if get_arch(arch).ptr_size == 8 else n.x86
    raise KeyError(name)


def _specs(struct_: Struct, arch: str, prefix: str = "", base: int = 0) -> list[FieldSpec]:
    """Scalar fields and embedded structures (by type) of a declaration, in offset order."""
    a = get_arch(arch)
    specs = [
        FieldSpec(base + f.offset(a), prefix + f.name, f.kind, f.size(a))
        for f in struct_.fields.values()
    ]
    for n in sl.NESTED.get(struct_.name, ()):
        off, size = (n.x64, n.size_x64) if a.ptr_size == 8 else (n.x86, n.size_x86)
        type_ = n.type if n.count == 1 else f"[{n.count}] {n.type}"
        specs.append(FieldSpec(base + off, prefix + n.name, type_, size, scalar=False))
    return sorted(specs, key=lambda s: (s.offset, s.scalar, s.name))


class SegmentWalker(HeapWalker):
    kind = "segment"
    heap_struct_name = "_SEGMENT_HEAP"
    block_chain = False

    # ------------------------------------------------------------------ layout (for the views)
    @classmethod
    def granularity(cls, arch: str) -> int:
        return sl.SEG_PARAMS[arch].vs_unit

    @classmethod
    def large_list_head(cls, arch: str, heap: int) -> int:
        # large blocks hang off a tree, not a list: its root pointer is the equivalent
        return heap + HEAP.offset(get_arch(arch), "LargeAllocMetadata.Root")

    @classmethod
    def heap_header_specs(cls, arch: str) -> list[FieldSpec]:
        specs = _specs(HEAP, arch)
        a = get_arch(arch)
        ctx_size = CTX.size(a)
        seg_contexts = _nested_offset("_SEGMENT_HEAP", "SegContexts", arch)
        for i in range(2):
            specs += _specs(CTX, arch, f"SegContexts[{i}].", seg_contexts + i * ctx_size)
        vs = _nested_offset("_SEGMENT_HEAP", "VsContext", arch)
        specs += _specs(sl.HEAP_VS_CONTEXT, arch, "VsContext.", vs)
        lfh = _nested_offset("_SEGMENT_HEAP", "LfhContext", arch)
        specs += _specs(sl.HEAP_LFH_CONTEXT, arch, "LfhContext.", lfh)
        return sorted(specs, key=lambda s: (s.offset, s.scalar, s.name))

    @classmethod
    def block_header_specs(cls, arch: str, free: bool) -> list[FieldSpec]:
        # a VS chunk's header (LFH slots and back-end blocks have none)
        struct_ = sl.HEAP_VS_CHUNK_FREE_HEADER if free else sl.HEAP_VS_CHUNK_HEADER
        return [s for s in _specs(struct_, arch) if s.scalar]

    @classmethod
    def block_specs(cls, arch: str, block: Block) -> list[FieldSpec]:
        if block.component == VS:
            return cls.block_header_specs(arch, block.free)
        # LFH slots and back-end page ranges have no header: their first word is data (a free
        # LFH slot's holds slot ^ LfhKey)
        size = get_arch(arch).ptr_size
        return [FieldSpec(0, "(no header: first word)", _SCALAR[size], size)]

    @classmethod
    def large_header_specs(cls, arch: str) -> list[FieldSpec]:
        # a large block has no header in its region (its _HEAP_LARGE_ALLOC_DATA is elsewhere):
        # the first word is the user's data
        return [
            FieldSpec(0, "(user data)", _SCALAR[get_arch(arch).ptr_size], get_arch(arch).ptr_size)
        ]

    @classmethod
    def describe_field(cls, name: str, value: int, free: bool, unit: int) -> str | None:
        if name == "HeaderBits":
            return "encoded: size, previous size, allocated ^ chunk address ^ HeapKey"
        if name == "AllocatedChunkBits":
            parts = ["page offset (encoded)"]
            if value & sl.VS_BITS_UNUSED_BYTES:
                parts.append("UnusedBytes")
            if value & sl.VS_BITS_SKIP_DURING_WALK:
                parts.append("SkipDuringWalk")
            return " | ".join(parts)
        if name.startswith("Node."):
            return "FreeChunkTree link"
        return None

    @classmethod
    def struct_names(cls) -> tuple[str, ...]:
        return (cls.heap_struct_name, *(n for n in sl.STRUCTS if n != cls.heap_struct_name))

    @classmethod
    def struct_specs(cls, name: str, arch: str) -> list[FieldSpec]:
        if name == cls.heap_struct_name:
            return cls.heap_header_specs(arch)
        return _specs(sl.STRUCTS[name], arch)

    @classmethod
    def struct_addresses(cls, report: HeapReport) -> dict[str, int]:
        a, h = get_arch(report.arch), report.heap
        out = {cls.heap_struct_name: h}
        out["_HEAP_SEG_CONTEXT"] = h + _nested_offset("_SEGMENT_HEAP", "SegContexts", a.name)
        out["_HEAP_VS_CONTEXT"] = h + _nested_offset("_SEGMENT_HEAP", "VsContext", a.name)
        out["_HEAP_LFH_CONTEXT"] = h + _nested_offset("_SEGMENT_HEAP", "LfhContext", a.name)
        if report.segments:
            seg = report.segments[0]
            out["_HEAP_PAGE_SEGMENT"] = seg.address
            # the descriptor of the first range after the descriptor pages
            unit = (seg.first_block - seg.base) // sl.PAGE
            out["_HEAP_PAGE_RANGE_DESCRIPTOR"] = seg.address + unit * DESC.size(a)
        for sub in report.subsegments:
            name = "_HEAP_VS_SUBSEGMENT" if sub.component == VS else "_HEAP_LFH_SUBSEGMENT"
            out.setdefault(name, sub.address)
        for b in report.blocks:
            if b.component == VS:
                name = "_HEAP_VS_CHUNK_FREE_HEADER" if b.free else "_HEAP_VS_CHUNK_HEADER"
                out.setdefault(name, b.address)
        root = report.header.get("LargeAllocMetadata.Root", 0)
        if root:
            out["_HEAP_LARGE_ALLOC_DATA"] = root
        return out

    @classmethod
    def component_titles(cls) -> dict[str, str]:
        # large blocks are the report's large_blocks, shown as every allocator's are
        return {BACKEND: "Back end", VS: "VS", LFH: "LFH"}

    @classmethod
    def subsegment_of(cls, report: HeapReport, block: Block) -> int | None:
        for sub in report.subsegments:
            if sub.address <= block.address < sub.end:
                return sub.address
        return None

    # ------------------------------------------------------------------ walk
    def __init__(self, proc: ProcessCore, heap: int):
        self.params = sl.SEG_PARAMS[proc.arch.name]
        self.alignment = self.params.vs_unit
        self.min_block_size = 2 * self.params.vs_unit
        super().__init__(proc, heap)
        self.a = proc.arch
        self.mask = (1 << (8 * self.ps)) - 1
        self.heap_key = 0
        self.lfh_key = 0
        self.free_ranges: dict[int, tuple[int, int]] = {}  # first descriptor -> (start, bytes)
        self.free_chunks: set[int] = set()  # free VS chunk addresses
        self.vs_subsegments: set[int] = set()
        self.lfh_subsegments: set[int] = set()

    def get(self, struct_: Struct, base: int, name: str) -> int:
        return self.mem.field(struct_, base, name)

    def walk(self) -> HeapReport:
        try:
            if not self.read_header():
                return self.report
        except UnreadableError as e:
            self.corrupt(UNREADABLE, self.heap, f"heap header: {e}")
            return self.report
        self.walk_segments()
        self.walk_large_blocks()
        self.check_overlaps()
        self.check_trees()
        self.check_subsegment_lists()
        return self.report

    # ------------------------------------------------------------------ header
    def read_header(self) -> bool:
        heap = self.heap
        header: dict[str, int] = {}
        for name in HEAP.fields:
            try:
                header[name] = self.get(HEAP, heap, name)
            except UnreadableError as e:
                self.corrupt(UNREADABLE, heap, f"heap header: {e}")
                return False
        self.report.header = header
        self.report.flags = header["GlobalFlags"]
        self.report.force_flags = header["GlobalFlags"] & FORCE_FLAG_MASK
        self.heap_key = header["MemStats.HeapKey"]
        self.lfh_key = header["MemStats.LfhKey"]
        if header["Signature"] != sl.SEGMENT_HEAP_SIGNATURE:
            sig = header["Signature"]
            self.corrupt(HEAP_HEADER, heap, f"signature 0x{sig:08x} is not 0xddeeddee")
            return False
        ctx = self.seg_context()
        if self.get(CTX, ctx, "Heap") != heap:
            self.corrupt(HEAP_HEADER, heap, "SegContexts[0].Heap does not point at the heap")
        return True

    def seg_context(self) -> int:
        return self.heap + _nested_offset("_SEGMENT_HEAP", "SegContexts", self.a.name)

    def vs_context(self) -> int:
        return self.heap + _nested_offset("_SEGMENT_HEAP", "VsContext", self.a.name)

    def lfh_context(self) -> int:
        return self.heap + _nested_offset("_SEGMENT_HEAP", "LfhContext", self.a.name)

    # ------------------------------------------------------------------ base-class hooks
    # (the NT-heap walk in HeapWalker.walk is not used; these describe the equivalents)
    def segment_list(self) -> tuple[int, int]:
        return self.seg_context() + CTX.offset(self.a, "SegmentListHead.Flink"), 0

    def first_segment(self) -> int:
        return self.get(CTX, self.seg_context(), "SegmentListHead.Flink")

    def read_segment(self, address: int, index: int) -> Segment | None:
        return self.walk_segment(address, index)

    def decode_block(self, address: int, seg: Segment) -> RawBlock:
        raise NotImplementedError("segment heap blocks are decoded per component")

    def free_list_heads(self) -> list[ListHead]:
        return []  # free ranges and free VS chunks are trees (check_trees)

    def large_list(self) -> tuple[int, int]:
        return self.large_list_head(self.a.name, self.heap), 0

    def read_large(self, address: int) -> LargeBlock | None:
        return self.large_block(address)

    # ------------------------------------------------------------------ segments
    def walk_segments(self) -> None:
        head, offset = self.segment_list()
        for address in self.walk_list(head, offset, SEGMENT_LIST, "segment", MAX_SEGMENTS):
            if address % sl.SEGMENT_SIZE:
                self.corrupt(SEGMENT_LIST, address, "segment list entry is not 1 MiB aligned")
                continue
            seg = self.walk_segment(address, len(self.report.segments))
            if seg is not None:
                self.report.segments.append(seg)

    def signature(self, seg: int) -> int:
        xor = sl.SEGMENT_SIGNATURE_XOR & self.mask
        return ((seg >> sl.SEGMENT_SHIFT) ^ self.heap_key ^ self.heap ^ xor) & self.mask

    def walk_segment(self, address: int, index: int) -> Segment | None:
        p = self.params
        dsize = DESC.size(self.a)
        try:
            raw = self.mem.read(address, sl.UNITS_PER_SEGMENT * dsize)
        except UnreadableError as e:
            self.corrupt(SEGMENT, address, f"descriptor array: {e}")
            return None
        sig = self.mem.ptr(address + sl.HEAP_PAGE_SEGMENT.offset(self.a, "Signature"))
        if sig != self.signature(address):
            self.corrupt(
                SEGMENT,
                address,
                f"segment signature 0x{sig:x} is not 0x{self.signature(address):x}",
            )
        o_flags = DESC.offset(self.a, "RangeFlags")
        o_count = DESC.offset(self.a, "CommittedPageCount")
        o_unit = DESC.offset(self.a, "UnitSize")
        flags = [raw[u * dsize + o_flags] for u in range(sl.UNITS_PER_SEGMENT)]
        units = [raw[u * dsize + o_unit] for u in range(sl.UNITS_PER_SEGMENT)]
        committed_units = sum(1 for f in flags if f & sl.RANGE_COMMITTED)
        seg = Segment(
            index=index,
            address=address,
            base=address,
            reserved=sl.SEGMENT_SIZE,
            committed=committed_units * sl.PAGE,
            first_block=address + p.first_descriptor * sl.PAGE,
            blocks_end=address + sl.SEGMENT_SIZE,
        )
        for u in range(p.first_descriptor):
            want = sl.RANGE_COMMITTED | sl.RANGE_ALLOCATED | (0 if u else sl.RANGE_FIRST)
            if flags[u] != want or units[u] != (u or p.first_descriptor):
                self.corrupt(DESCRIPTOR, address + u * dsize, "descriptor-page descriptor is wrong")
        u = p.first_descriptor
        prev_free = False
        while u < sl.UNITS_PER_SEGMENT:
            desc = address + u * dsize
            n, f = units[u], flags[u]
            if not f & sl.RANGE_FIRST or n == 0 or u + n > sl.UNITS_PER_SEGMENT:
                self.corrupt(
                    DESCRIPTOR,
                    desc,
                    f"unit {u}: flags 0x{f:02x} size {n} do not start a range",
                )
                seg.complete = False
                break
            rtype = f & ~(sl.RANGE_COMMITTED | sl.RANGE_FIRST) & 0xFF
            committed = [bool(flags[u + i] & sl.RANGE_COMMITTED) for i in range(n)]
            for i in range(1, n):
                if flags[u + i] & ~sl.RANGE_COMMITTED != rtype or units[u + i] != i:
                    self.corrupt(
                        DESCRIPTOR,
                        address + (u + i) * dsize,
                        f"unit {u + i}: flags 0x{flags[u + i]:02x} offset {units[u + i]} "
                        f"do not continue the range at unit {u}",
                    )
            if raw[u * dsize + o_count] != sum(committed):
                self.corrupt(
                    DESCRIPTOR,
                    desc,
                    f"CommittedPageCount {raw[u * dsize + o_count]} but {sum(committed)} "
                    "units committed",
                )
            start = address + u * sl.PAGE
            if rtype == 0:
                if prev_free:
                    self.corrupt(ADJACENT_FREE, desc, "free page range follows a free range")
                self.free_range(seg, desc, start, committed)
                prev_free = True
            else:
                prev_free = False
                self.allocated_range(seg, desc, start, n, rtype, committed)
            u += n
        return seg

    def free_range(self, seg: Segment, desc: int, start: int, committed: list[bool]) -> None:
        self.free_ranges[desc] = (start, len(committed) * sl.PAGE)
        i = 0
        while i < len(committed):
            j = i
            while j < len(committed) and committed[j] == committed[i]:
                j += 1
            run, size = start + i * sl.PAGE, (j - i) * sl.PAGE
            if committed[i]:
                self.add_block(seg, run, size, FREE, run, None, BACKEND)
            else:
                seg.uncommitted.append(Range(run, size))
            i = j

    def allocated_range(
        self, seg: Segment, desc: int, start: int, n: int, rtype: int, committed: list[bool]
    ) -> None:
        """An allocated range: a back-end block, or a VS / LFH subsegment (the pages before its
        guard page when it has one: the range's last page, which must be uncommitted)."""
        try:
            tree_sig = self.mem.u32(desc + DESC.offset(self.a, "TreeSignature"))
            unused = self.mem.u32(desc + DESC.offset(self.a, "UnusedBytes"))
        except UnreadableError as e:  # pragma: no cover (the array was read already)
            self.corrupt(UNREADABLE, desc, str(e))
            return
        if tree_sig != sl.RANGE_SIGNATURE:
            self.corrupt(DESCRIPTOR, desc, f"allocated range signature 0x{tree_sig:08x}")
        guard = sl.guard_units(rtype, n)
        if not all(committed[: n - guard]):
            self.corrupt(DESCRIPTOR, desc, "allocated range has uncommitted pages")
            return
        if any(committed[n - guard :]):
            self.corrupt(DESCRIPTOR, desc, "subsegment's guard page is committed")
            return
        size = (n - guard) * sl.PAGE
        if guard:  # an uncommitted run of the segment, as RtlWalkHeap reports it
            seg.uncommitted.append(Range(start + size, guard * sl.PAGE))
        if rtype == sl.RANGE_ALLOCATED | sl.RANGE_VS:
            self.vs_subsegment(seg, start, size, guard * sl.PAGE)
        elif rtype == sl.RANGE_ALLOCATED | sl.RANGE_LFH:
            self.lfh_subsegment(seg, start, size, guard * sl.PAGE)
        elif rtype == sl.RANGE_ALLOCATED:
            if unused >= size:
                self.corrupt(DESCRIPTOR, desc, f"UnusedBytes 0x{unused:x} >= range 0x{size:x}")
                unused = 0
            self.add_block(seg, start, size, BUSY, start, size - unused, BACKEND)
        else:
            self.corrupt(DESCRIPTOR, desc, f"range type flags 0x{rtype:02x}")

    def add_block(
        self,
        seg: Segment,
        address: int,
        size: int,
        state: str,
        user_ptr: int,
        requested: int | None,
        component: str,
    ) -> Block:
        prev = seg.blocks[-1] if seg.blocks else None
        block = Block(
            address=address,
            size=size,
            flags=0,
            state=state,
            user_ptr=user_ptr,
            segment=seg.index,
            magic=0,
            committed=size,
            requested=requested,
            unused=None if requested is None else size - requested,
            prev_size=None if prev is None else prev.size,
            component=component,
        )
        seg.blocks.append(block)
        return block

    # ------------------------------------------------------------------ trailers
    def trailer(self, end: int) -> int:
        last = self.mem.u8(end - 1)
        if not last & 0x80:
            return last
        return self.mem.u16(end - 2) & 0x7FFF

    def trailer_problem(self, data: int, end: int) -> str | None:
        """What is wrong with the unused-bytes trailer of [data, end) (None: intact)."""
        cap = end - data
        unused = self.trailer(end)
        last = self.mem.u8(end - 1)
        if not unused or unused > cap or (last & 0x80 and unused < 0x80):
            return f"unused-bytes trailer {unused:#x} is out of range"
        tail = 2 if last & 0x80 else 1
        fill = self.mem.read(end - unused, unused - tail)
        if fill.strip(bytes([sl.SLACK_FILL])):
            first = next(i for i, b in enumerate(fill) if b != sl.SLACK_FILL)
            return f"slack after the request overwritten at 0x{end - unused + first:x}"
        return None

    # ------------------------------------------------------------------ VS
    def vs_decode(self, chunk: int) -> tuple[int, int, int, int]:
        """(size units, previous size units, allocated, memory cost) of a chunk header."""
        bits = (self.mem.ptr(chunk) ^ chunk ^ self.heap_key) & self.mask
        if self.ps == 8:
            return (bits >> 16) & 0xFFFF, (bits >> 32) & 0xFFFF, (bits >> 48) & 0xFF, bits & 0xFFFF
        return (bits >> 1) & 0x7FFF, (bits >> 16) & 0x7FFF, bits >> 31, bits & 1

    def vs_subsegment(self, seg: Segment, start: int, size: int, guard: int = 0) -> None:
        p = self.params
        shift = p.vs_unit_shift
        self.vs_subsegments.add(start)
        sub_size = self.get(VSSUB, start, "Size")
        signature = self.get(VSSUB, start, "Signature")
        want = ((sub_size ^ sl.VS_SIGNATURE_XOR) & 0x7FFF) | 0x8000
        record = Subsegment(start, size, VS, p.vs_unit, 0, 0, start + p.vs_first_chunk, guard=guard)
        self.report.subsegments.append(record)
        if sub_size << shift != size or signature != want:
            self.corrupt(
                SEGMENT,
                start,
                f"VS subsegment Size 0x{sub_size:x} / Signature 0x{signature:04x} do not match "
                f"its 0x{size:x}-byte range",
            )
            return
        end = start + size
        chunk = start + p.vs_first_chunk
        prev_units = 0
        prev_free = False
        hdr = p.vs_unit
        for _ in range(size // hdr + 1):
            if chunk >= end:
                break
            units, prev, allocated, cost = self.vs_decode(chunk)
            nbytes = units << shift
            problem = None
            if cost or allocated not in (0, 1):
                problem = "does not decode (MemoryCost / Allocated bits set)"
            elif units < 2 or chunk + nbytes > end:
                problem = f"decodes to size 0x{nbytes:x}, out of range"
            elif prev != prev_units:
                problem = f"previous size 0x{prev << shift:x} is not 0x{prev_units << shift:x}"
            if problem:
                self.corrupt(BLOCK_HEADER, chunk, f"VS chunk header {problem}")
                seg.complete = False
                return
            if allocated:
                bits = self.mem.u32(
                    chunk + sl.HEAP_VS_CHUNK_HEADER.offset(self.a, "AllocatedChunkBits")
                )
                page = ((chunk - start) >> 12 ^ (chunk ^ self.heap_key)) & sl.VS_BITS_PAGE_OFFSET
                if bits & sl.VS_BITS_PAGE_OFFSET != page or bits & ~0x3FF:
                    self.corrupt(
                        BLOCK_HEADER, chunk, f"AllocatedChunkBits 0x{bits:x} do not decode"
                    )
                unused = 0
                if bits & sl.VS_BITS_UNUSED_BYTES:
                    problem = self.trailer_problem(chunk + hdr, chunk + nbytes)
                    if problem:
                        self.corrupt(BLOCK_HEADER, chunk, problem)
                    else:
                        unused = self.trailer(chunk + nbytes)
                if not bits & sl.VS_BITS_SKIP_DURING_WALK:
                    self.add_block(seg, chunk, nbytes, BUSY, chunk + hdr, nbytes - hdr - unused, VS)
                    record.block_count += 1
                prev_free = False
            else:
                if prev_free:
                    self.corrupt(ADJACENT_FREE, chunk, "free VS chunk follows a free chunk")
                self.free_chunks.add(chunk)
                self.add_block(seg, chunk, nbytes, FREE, chunk + hdr, None, VS)
                record.block_count += 1
                record.free_count += 1
                prev_free = True
            prev_units = units
            chunk += nbytes

    # ------------------------------------------------------------------ LFH
    def lfh_subsegment(self, seg: Segment, start: int, size: int, guard: int = 0) -> None:
        hdr = self.params.lfh_header
        self.lfh_subsegments.add(start)
        key = (self.lfh_key ^ (start >> 12)) & 0xFFFFFFFF
        offsets = self.get(LFHSUB, start, "BlockOffsets") ^ key
        block, first = offsets & 0xFFFF, offsets >> 16
        count = self.get(LFHSUB, start, "BlockCount")
        free_count = self.get(LFHSUB, start, "FreeCount")
        hint = self.get(LFHSUB, start, "FreeHint")
        words = (count + 31) // 32
        data_offset = (hdr + 8 * words + 15) & ~15
        record = Subsegment(
            start, size, LFH, block, count, free_count, start + first, True, guard=guard
        )
        self.report.subsegments.append(record)
        if (
            not block
            or block % 16
            or block > 0x4000
            or first != data_offset
            or first + count * block > size
        ):
            self.corrupt(
                SEGMENT,
                start,
                f"LFH subsegment BlockOffsets decode to block size 0x{block:x}, first block "
                f"0x{first:x} for {count} blocks in 0x{size:x} bytes",
            )
            record.slotted = False  # its slots cannot be located
            return
        bitmap = self.mem.read(start + hdr, 8 * words)
        found_free = 0
        for w in range(words):
            word = struct.unpack_from("<Q", bitmap, 8 * w)[0]
            rest = count - 32 * w
            valid = (1 << (2 * rest)) - 1 if rest < 32 else (1 << 64) - 1
            if word & ~valid:
                self.corrupt(LFH_BITMAP, start, f"bitmap word {w} has bits past BlockCount")
            busy_bits = word & 0x5555555555555555
            if (word >> 1) & 0x5555555555555555 & ~busy_bits:
                self.corrupt(LFH_BITMAP, start, f"bitmap word {w}: unused-bytes bit on a free slot")
            for i in range(min(32, rest)):
                index = 32 * w + i
                slot = start + first + index * block
                if word >> (2 * i) & 1:
                    requested = block
                    if word >> (2 * i + 1) & 1:
                        problem = self.trailer_problem(slot, slot + block)
                        if problem:
                            self.corrupt(BLOCK_HEADER, slot, f"LFH block: {problem}")
                        else:
                            requested = block - self.trailer(slot + block)
                    self.add_block(seg, slot, block, BUSY, slot, requested, LFH)
                else:
                    found_free += 1
                    if index < hint:
                        self.corrupt(
                            LFH_BITMAP, start, f"slot {index} is free below FreeHint {hint}"
                        )
                    want = (slot ^ self.lfh_key) & self.mask
                    got = self.mem.ptr(slot)
                    if got != want:
                        self.corrupt(
                            BLOCK_HEADER,
                            slot,
                            f"free LFH slot {index} overwritten (0x{got:x}, expected 0x{want:x})",
                        )
        if found_free != free_count:
            self.corrupt(
                LFH_BITMAP,
                start,
                f"FreeCount {free_count} but the bitmap has {found_free} free slots",
            )

    # ------------------------------------------------------------------ large blocks
    def tree(self, root_address: int, what: str) -> Iterator[int]:
        """The nodes of a red-black tree in order (bounded; bad links reported, not followed)."""
        try:
            root = self.mem.ptr(root_address)
        except UnreadableError:
            self.corrupt(FREE_LIST_LINK, root_address, f"{what} tree root unreadable")
            return
        seen: set[int] = set()
        stack: list[int] = []
        node = root
        parent_of = {root: 0}
        for _ in range(2 * MAX_TREE_NODES):
            if node:
                if node in seen or len(seen) >= MAX_TREE_NODES:
                    self.corrupt(FREE_LIST_LINK, node, f"{what} tree loops at 0x{node:x}")
                    return
                try:
                    left = self.mem.ptr(node)
                    parent = self.mem.ptr(node + 2 * self.ps) & ~3 & self.mask
                except UnreadableError:
                    self.corrupt(
                        FREE_LIST_LINK,
                        parent_of.get(node, root_address),
                        f"{what} tree link 0x{node:x} unreadable",
                    )
                    node = 0
                    continue
                if parent != parent_of.get(node, 0):
                    self.corrupt(
                        FREE_LIST_LINK, node, f"{what} tree node's parent 0x{parent:x} is wrong"
                    )
                seen.add(node)
                stack.append(node)
                if left:
                    parent_of[left] = node
                node = left
            elif stack:
                node = stack.pop()
                yield node
                try:
                    right = self.mem.ptr(node + self.ps)
                except UnreadableError:  # pragma: no cover (read with the node)
                    right = 0
                if right:
                    parent_of[right] = node
                node = right
            else:
                return

    def walk_large_blocks(self) -> None:
        root = self.large_list_head(self.a.name, self.heap)
        for node in self.tree(root, "large block"):
            large = self.large_block(node)
            if large is not None:
                self.report.large_blocks.append(large)
                if len(self.report.large_blocks) >= MAX_LARGE_BLOCKS:
                    break

    def large_block(self, meta: int) -> LargeBlock | None:
        try:
            va = self.get(LARGE, meta, "VirtualAddress")
            bits = self.get(LARGE, meta, "Bits")
        except UnreadableError as e:
            self.corrupt(LARGE_BLOCK, meta, f"large block metadata: {e}")
            return None
        base, unused = va & ~sl.LARGE_UNUSED_MASK & self.mask, va & sl.LARGE_UNUSED_MASK
        pages = bits >> 12
        guard = sl.LARGE_GUARD if bits & sl.LARGE_GUARD_BIT else 0
        if not pages or unused >= pages * sl.PAGE or not self.mem.readable(base, 1):
            self.corrupt(
                LARGE_BLOCK,
                meta,
                f"large block metadata: base 0x{base:x}, {pages} pages, unused 0x{unused:x}",
            )
            return None
        return LargeBlock(
            address=base,
            region=base,
            region_size=pages * sl.PAGE + guard,
            user_ptr=base,
            size=pages * sl.PAGE - unused,
            block_size=pages * sl.PAGE,
            flink=0,
            blink=0,
        )

    # ------------------------------------------------------------------ trees and lists
    def check_trees(self) -> None:
        """The free trees against the walk; their nodes become ``report.free_lists`` in tree
        order: 0 = VsContext.FreeChunkTree (free VS chunks), 1 = SegContexts[0].FreePageRanges
        (free page ranges: the range and its bytes). An entry's flink/blink are the node's
        left/right children as stored."""
        vs = self.vs_context()
        root = vs + sl.HEAP_VS_CONTEXT.offset(self.a, "FreeChunkTree.Root")
        chunks = FreeList(0, root, 2 * self.params.vs_unit, None)
        listed: set[int] = set()
        for node in self.tree(root, "free VS chunk"):
            chunk = node - self.ps
            listed.add(chunk)
            if chunk not in self.free_chunks:
                self.corrupt(FREE_LIST_BUSY, chunk, "FreeChunkTree node is not a free VS chunk")
                continue
            units = self.vs_decode(chunk)[0]
            chunks.entries.append(FreeListEntry(chunk, units << self.params.vs_unit_shift,
                                                *self.children(node)))  # fmt: skip
        for chunk in sorted(self.free_chunks - listed):
            self.corrupt(FREE_NOT_LISTED, chunk, "free VS chunk is not in FreeChunkTree")
        ctx = self.seg_context()
        root = ctx + CTX.offset(self.a, "FreePageRanges.Root")
        ranges = FreeList(1, root, sl.PAGE, None)
        nodes: set[int] = set()
        for node in self.tree(root, "free page range"):
            nodes.add(node)
            if node not in self.free_ranges:
                self.corrupt(FREE_LIST_BUSY, node, "FreePageRanges node is not a free range")
                continue
            start, size = self.free_ranges[node]
            ranges.entries.append(FreeListEntry(start, size, *self.children(node)))
        for desc, (start, _) in self.free_ranges.items():
            if desc not in nodes:
                self.corrupt(FREE_NOT_LISTED, start, "free page range is not in FreePageRanges")
        self.report.free_lists = [chunks, ranges]

    def children(self, node: int) -> tuple[int, int]:
        try:
            return self.mem.ptr(node), self.mem.ptr(node + self.ps)
        except UnreadableError:  # pragma: no cover (the tree walk read them)
            return 0, 0

    def check_subsegment_lists(self) -> None:
        vs = self.vs_context()
        head = vs + sl.HEAP_VS_CONTEXT.offset(self.a, "SubsegmentList.Flink")
        found = set(self.walk_list(head, 0, SEGMENT_LIST, "VS subsegment", MAX_SEGMENTS * 16))
        for sub in self.vs_subsegments - found:
            self.corrupt(SEGMENT_LIST, sub, "VS subsegment is not on VsContext.SubsegmentList")
        for sub in found - self.vs_subsegments:
            self.corrupt(SEGMENT_LIST, sub, "VsContext.SubsegmentList names no VS subsegment")
        lfh = self.lfh_context()
        buckets = lfh + _nested_offset("_HEAP_LFH_CONTEXT", "Buckets", self.a.name)
        bucket_struct = sl.HEAP_LFH_BUCKET
        on_lists: set[int] = set()
        for i in range(1, sl.LFH_BUCKETS):
            try:
                value = self.mem.ptr(buckets + i * self.ps)
            except UnreadableError:
                self.corrupt(UNREADABLE, buckets + i * self.ps, "LFH bucket pointer")
                return
            if not value or value & 1:
                continue
            for name in ("State.AvailableSubsegmentList.Flink", "State.FullSubsegmentList.Flink"):
                head = value + bucket_struct.offset(self.a, name)
                on_lists.update(
                    self.walk_list(head, 0, SEGMENT_LIST, f"LFH bucket {i}", MAX_SEGMENTS * 256)
                )
        for sub in self.lfh_subsegments - on_lists:
            self.corrupt(SEGMENT_LIST, sub, "LFH subsegment is on no bucket's list")
        for sub in on_lists - self.lfh_subsegments:
            self.corrupt(SEGMENT_LIST, sub, "a bucket's subsegment list names no LFH subsegment")
