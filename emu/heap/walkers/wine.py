"""Walker for Wine 8.0's ntdll heap; the layout and how it was found are in ``wine_layout``."""

from __future__ import annotations

from emu.arch import get_arch
from emu.heap.walkers.base import BLOCK_HEADER_SIZE, HeapWalker, ListHead, RawBlock
from emu.heap.walkers.model import (
    BUSY,
    FREE,
    HEAP_HEADER,
    LARGE_BLOCK,
    PENDING,
    PENDING_FREE,
    SEGMENT,
    FieldSpec,
    LargeBlock,
    Range,
    Segment,
    struct_specs,
)
from emu.heap.walkers.reader import UnreadableError
from emu.heap.walkers.wine_layout import (
    BASE_OFFSET_SHIFT,
    FLAG_FREE,
    FLAG_LARGE,
    FLAG_PREV_FREE,
    HEAP_MAGIC,
    MAGIC_BUSY,
    MAGIC_FREE,
    MAGIC_LARGE,
    MAGIC_PENDING,
    REGION_ALIGN,
    SEGMENT_SIGNATURE,
    WINE_BLOCK,
    WINE_FREE_ENTRY,
    WINE_HEAP,
    WINE_LARGE,
    WINE_PARAMS,
    WINE_SUBHEAP,
)
from emu.process.core import ProcessCore
from emu.win.layouts import Struct

MAX_PENDING = 1 << 16
HEADER_FIELDS = tuple(n for n in WINE_HEAP.fields if n not in ("free_lists", "subheap"))


def _wine_heap_specs(arch: str) -> list[FieldSpec]:
    a = get_arch(arch)
    specs = []
    for spec in struct_specs(WINE_HEAP, arch):
        if spec.name == "free_lists":
            lists = len(WINE_PARAMS[arch].bucket_bounds()) + 1
            type_ = f"[{lists}] {WINE_FREE_ENTRY.name}"
            size = lists * WINE_PARAMS[arch].free_list_stride
            specs.append(FieldSpec(spec.offset, spec.name, type_, size, scalar=False))
        elif spec.name == "subheap":
            size = WINE_SUBHEAP.size(a)
            specs.append(FieldSpec(spec.offset, spec.name, WINE_SUBHEAP.name, size, False))
            specs += struct_specs(WINE_SUBHEAP, arch, "subheap.", spec.offset)
        else:
            specs.append(spec)
    return specs


class WineWalker(HeapWalker):
    kind = "wine"
    heap_struct_name = WINE_HEAP.name

    @classmethod
    def granularity(cls, arch: str) -> int:
        return WINE_PARAMS[arch].alignment

    @classmethod
    def large_list_head(cls, arch: str, heap: int) -> int:
        return heap + WINE_HEAP.offset(get_arch(arch), "large_list.next")

    @classmethod
    def heap_header_specs(cls, arch: str) -> list[FieldSpec]:
        return sorted(_wine_heap_specs(arch), key=lambda s: (s.offset, s.scalar))

    @classmethod
    def block_header_specs(cls, arch: str, free: bool) -> list[FieldSpec]:
        specs = struct_specs(WINE_BLOCK, arch)
        return specs + struct_specs(WINE_FREE_ENTRY, arch) if free else specs

    @classmethod
    def large_header_specs(cls, arch: str) -> list[FieldSpec]:
        return struct_specs(WINE_LARGE, arch)

    def __init__(self, proc: ProcessCore, heap: int):
        self.params = WINE_PARAMS[proc.arch.name]
        self.alignment = self.params.alignment
        self.min_block_size = self.params.min_block_size
        self.arch = proc.arch
        super().__init__(proc, heap)

    def off(self, struct_: Struct, name: str) -> int:
        return struct_.offset(self.arch, name)

    def get(self, struct_: Struct, base: int, name: str) -> int:
        return self.mem.field(struct_, base, name)

    # ------------------------------------------------------------------ header
    def read_header(self) -> bool:
        heap = self.heap
        header = {name: self.get(WINE_HEAP, heap, name) for name in HEADER_FIELDS}
        self.report.header = header
        self.report.flags = header["flags"]
        self.report.force_flags = header["force_flags"]
        if header["magic"] != HEAP_MAGIC:
            self.corrupt(HEAP_HEADER, heap, f"heap magic 0x{header['magic']:08x} is not 'HEAP'")
        if header["segment_signature"] != SEGMENT_SIGNATURE:
            sig = header["segment_signature"]
            self.corrupt(HEAP_HEADER, heap, f"segment signature 0x{sig:08x} is not 0xffeeffee")
        return True

    # ------------------------------------------------------------------ segments
    def segment_list(self) -> tuple[int, int]:
        head = self.heap + self.off(WINE_HEAP, "subheap_list.next")
        return head, self.off(WINE_SUBHEAP, "entry.next")

    def first_segment(self) -> int:
        return self.heap + self.off(WINE_HEAP, "subheap")

    def read_segment(self, address: int, index: int) -> Segment | None:
        try:
            data_size = self.get(WINE_SUBHEAP, address, "data_size")
            commit = self.get(WINE_SUBHEAP, address, "commit_size")
            owner = self.get(WINE_SUBHEAP, address, "heap")
        except UnreadableError as e:
            self.corrupt(SEGMENT, address, f"subheap structure: {e}")
            return None
        if owner != self.heap:
            self.corrupt(SEGMENT, address, f"subheap belongs to heap 0x{owner:x}")
        first = address == self.first_segment()
        if not first and address % REGION_ALIGN:
            self.corrupt(SEGMENT, address, "subheap is not at the start of a region")
        base = self.heap if first else address
        first_block = address + WINE_SUBHEAP.size(self.arch)
        commit_end = first_block + BLOCK_HEADER_SIZE + commit
        end = first_block + data_size
        if not (commit <= data_size < 1 << 32) or (commit_end % 0x1000 and commit_end != end):
            self.corrupt(
                SEGMENT,
                address,
                f"sizes out of range: data 0x{data_size:x}, commit 0x{commit:x}",
            )
            return None
        seg = Segment(
            index=index,
            address=address,
            base=base,
            reserved=end - base,
            committed=commit_end - base,
            # blocks are A-sized from an address 8 mod A: x64 regions keep 8 bytes spare
            first_block=first_block,
            blocks_end=first_block + data_size // self.alignment * self.alignment,
        )
        if commit_end < end:
            seg.uncommitted.append(Range(commit_end, end - commit_end))
        return seg

    # ------------------------------------------------------------------ blocks
    def decode_block(self, address: int, seg: Segment) -> RawBlock:
        raw8 = self.mem.read(address, WINE_BLOCK.size(self.arch))
        units, flags, tail = int.from_bytes(raw8[0:2], "little"), raw8[2], raw8[3]
        base_offset = int.from_bytes(raw8[4:6], "little")
        magic = int.from_bytes(raw8[6:8], "little")
        is_free = bool(flags & FLAG_FREE)
        prev_free = bool(flags & FLAG_PREV_FREE)
        raw = RawBlock(0, flags, FREE if is_free else BUSY, magic, True, prev_free)
        if magic == MAGIC_FREE:
            raw.size = (units | tail << 16) * self.alignment
            raw.state = FREE
            if not is_free:
                raw.problems.append("free magic 'FR' on a block not flagged FREE")
        elif magic in (MAGIC_BUSY, MAGIC_PENDING):
            raw.size = units * self.alignment
            raw.state = BUSY if magic == MAGIC_BUSY else PENDING
            raw.requested = raw.size - BLOCK_HEADER_SIZE - tail
            if is_free:
                raw.problems.append(f"magic 0x{magic:04x} on a block flagged FREE")
            if raw.requested < 0:
                raw.problems.append(f"tail size 0x{tail:x} exceeds the block size 0x{raw.size:x}")
                raw.requested = 0
        else:
            raw.magic_ok = False
            raw.size = units * self.alignment
        if flags & ~(FLAG_FREE | FLAG_PREV_FREE):
            raw.problems.append(f"unknown flag bits 0x{flags:02x}")
        expected = (address - seg.base) >> BASE_OFFSET_SHIFT
        if raw.magic_ok and base_offset != expected:
            raw.problems.append(f"base offset 0x{base_offset:x}, expected 0x{expected:x}")
        return raw

    # ------------------------------------------------------------------ free lists
    def free_list_heads(self) -> list[ListHead]:
        start = self.heap + self.off(WINE_HEAP, "free_lists")
        stride = self.params.free_list_stride
        bounds = self.params.bucket_bounds()
        heads = []
        low = 0
        for i, high in enumerate((*bounds, None)):
            heads.append(ListHead(start + i * stride, low, high))
            low = (high or 0) + self.alignment
        return heads

    # ------------------------------------------------------------------ large blocks
    def large_list(self) -> tuple[int, int]:
        head = self.heap + self.off(WINE_HEAP, "large_list.next")
        return head, self.off(WINE_LARGE, "entry.next")

    def read_large(self, address: int) -> LargeBlock | None:
        try:
            data_size = self.get(WINE_LARGE, address, "data_size")
            block_size = self.get(WINE_LARGE, address, "block_size")
            flags = self.get(WINE_LARGE, address, "block.flags")
            magic = self.get(WINE_LARGE, address, "block.magic")
            flink = self.get(WINE_LARGE, address, "entry.next")
            blink = self.get(WINE_LARGE, address, "entry.prev")
        except UnreadableError as e:
            self.corrupt(LARGE_BLOCK, address, f"large block header: {e}")
            return None
        if magic != MAGIC_LARGE or not flags & FLAG_LARGE:
            self.corrupt(
                LARGE_BLOCK, address, f"large block magic 0x{magic:04x}, flags 0x{flags:02x}"
            )
        header = self.off(WINE_LARGE, "block.size")
        if address % REGION_ALIGN or data_size > block_size - BLOCK_HEADER_SIZE:
            self.corrupt(
                LARGE_BLOCK,
                address,
                f"large block sizes out of range: data 0x{data_size:x}, block 0x{block_size:x}",
            )
        return LargeBlock(
            address=address,
            region=address,
            region_size=header + block_size,
            user_ptr=address + WINE_LARGE.size(self.arch),
            size=data_size,
            block_size=block_size,
            flink=flink,
            blink=blink,
        )

    # ------------------------------------------------------------------ delayed frees
    def check_extra(self) -> None:
        """The delayed-free array (heaps with free checking) against the 0xDEAD blocks."""
        rep = self.report
        array = rep.header.get("pending_free", 0)
        pending = {b.address: b for b in rep.blocks if b.state == PENDING}
        entries: list[int] = []
        if array:
            holder = rep.block_at(array)
            if holder is None or holder.state != BUSY or holder.user_ptr != array:
                self.corrupt(PENDING_FREE, array, "delayed-free array is not a busy block")
                return
            count = min((holder.requested or 0) // self.ps, MAX_PENDING)
            try:
                data = self.mem.read(array, count * self.ps)
            except UnreadableError as e:
                self.corrupt(PENDING_FREE, array, f"delayed-free array: {e}")
                return
            for i in range(count):
                entry = int.from_bytes(data[i * self.ps : (i + 1) * self.ps], "little")
                if entry:
                    entries.append(entry)
        rep.pending_free = entries
        for entry in entries:
            if entry not in pending:
                self.corrupt(PENDING_FREE, entry, "delayed-free array names a non-pending block")
        listed = set(entries)
        for address in pending:
            if address not in listed:
                self.corrupt(PENDING_FREE, address, "0xDEAD block is not in the delayed-free array")
