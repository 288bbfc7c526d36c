"""Walker for heapemu's builtin heap (``asm/``): every offset comes from ``asm.layout(arch)``.

Encodings (see asm/__init__.py and asm/src/ntheap.h): a block header is ``u32 size | FREE(1) |
PREV_FREE(2)``, ``u8 unused`` (block size - requested size, header included), ``u8 tag`` (0),
``u16 magic`` ('US' busy, 'FE' free). Segments are SUBHEAPs (magic 'HSUB', the first one inside
the HEAP), blocks run from base + header_size to base + size - arena_offset. Large blocks are
ARENA_LARGE at their region base, arena magic 'LG', data right after the structure.
"""

from __future__ import annotations

import asm
from asm import HeapLayout, StructLayout
from emu.heap.walkers.base import HeapWalker, ListHead, RawBlock
from emu.heap.walkers.model import (
    _SCALAR,
    BUSY,
    FREE,
    HEAP_HEADER,
    LARGE_BLOCK,
    SEGMENT,
    FieldSpec,
    LargeBlock,
    Range,
    Segment,
    header_flag_names,
)
from emu.heap.walkers.reader import UnreadableError
from emu.process.core import ProcessCore

C = asm.CONSTANTS
SIZE_MASK = ~3 & 0xFFFFFFFF

# The header fields the report decodes, by layout name (dotted names are nested fields).
HEADER_FIELDS = (
    "flags",
    "force_flags",
    "subheap_list.next",
    "subheap_list.prev",
    "large_list.next",
    "large_list.prev",
    "grow_size",
    "magic",
    "lock_count",
    "internal_flags",
)


def _struct_type(layout: asm.HeapLayout, children: set[str], size: int) -> str:
    """Name of the asm structure with exactly these member names (and size), else a size."""
    for name, s in layout.structs.items():
        if s.size == size and {n for n in s.fields if "." not in n} == children:
            return name
    return f"{size} bytes"


def _asm_specs(layout: asm.HeapLayout, struct_: StructLayout, base: int = 0) -> list[FieldSpec]:
    specs = []
    names = list(struct_.fields)
    for name in names:
        f = struct_.fields[name]
        prefix = name + "."
        children = {n[len(prefix) :].split(".")[0] for n in names if n.startswith(prefix)}
        if children:
            type_ = _struct_type(layout, children, f.size)
            specs.append(FieldSpec(base + f.offset, name, type_, f.size, scalar=False))
        elif f.count > 1:
            elem = f.size // f.count
            by_size = [n for n, s in layout.structs.items() if s.size == elem]
            type_ = by_size[0] if elem > 8 and len(by_size) == 1 else _SCALAR.get(elem, "?")
            specs.append(FieldSpec(base + f.offset, name, f"[{f.count}] {type_}", f.size, False))
        else:
            specs.append(FieldSpec(base + f.offset, name, _SCALAR[f.size], f.size))
    return specs


class BuiltinWalker(HeapWalker):
    kind = "builtin"
    heap_struct_name = "HEAP (heapemu builtin)"

    @classmethod
    def granularity(cls, arch: str) -> int:
        return asm.layout(arch).alignment

    @classmethod
    def large_list_head(cls, arch: str, heap: int) -> int:
        return heap + asm.layout(arch).heap["large_list"]

    @classmethod
    def heap_header_specs(cls, arch: str) -> list[FieldSpec]:
        layout = asm.layout(arch)
        specs = _asm_specs(layout, layout.heap)
        # Windows' segment signature sits in the builtin heap's reserved prefix: shown (as the
        # walker reads it) right after "reserved", in parentheses since no field declares it
        specs.append(FieldSpec(2 * layout.pointer_size, "(segment_signature)", "u32", 4))
        return sorted(specs, key=lambda s: (s.offset, s.scalar))

    @classmethod
    def block_header_specs(cls, arch: str, free: bool) -> list[FieldSpec]:
        layout = asm.layout(arch)
        struct_ = layout.arena_free if free else layout.arena_inuse
        return [s for s in _asm_specs(layout, struct_) if s.scalar]

    @classmethod
    def large_header_specs(cls, arch: str) -> list[FieldSpec]:
        layout = asm.layout(arch)
        return [s for s in _asm_specs(layout, layout.arena_large) if s.scalar]

    @classmethod
    def describe_field(cls, name: str, value: int, free: bool, unit: int) -> str | None:
        if name == "size":  # bytes, with the FREE / PREV_FREE flags in the low bits
            flags = " | ".join(header_flag_names(value & 3)) or "no flags"
            return f"{value & ~3:#x} bytes, {flags}"
        if name == "unused":
            return "" if free else "block size - requested size"
        return None

    def __init__(self, proc: ProcessCore, heap: int):
        self.layout: HeapLayout = asm.layout(proc.arch.name)
        self.alignment = self.layout.alignment
        self.min_block_size = self.layout.min_block_size
        super().__init__(proc, heap)

    def get(self, struct_: StructLayout, base: int, name: str) -> int:
        f = struct_.fields[name]
        return self.mem.uint(base + f.offset, f.size)

    # ------------------------------------------------------------------ header
    def read_header(self) -> bool:
        heap, hl = self.heap, self.layout.heap
        header = {name: self.get(hl, heap, name) for name in HEADER_FIELDS}
        header["segment_signature"] = self.mem.u32(heap + 2 * self.ps)
        self.report.header = header
        self.report.flags = header["flags"]
        self.report.force_flags = header["force_flags"]
        if header["magic"] != C["HEAP_MAGIC"]:
            self.corrupt(HEAP_HEADER, heap, f"heap magic 0x{header['magic']:08x} is not 'HEAP'")
        if header["segment_signature"] != C["HEAP_SEGMENT_SIGNATURE"]:
            sig = header["segment_signature"]
            self.corrupt(HEAP_HEADER, heap, f"segment signature 0x{sig:08x} is not 0xffeeffee")
        return True

    # ------------------------------------------------------------------ segments
    def segment_list(self) -> tuple[int, int]:
        return self.heap + self.layout.heap["subheap_list"], self.layout.subheap["entry"]

    def first_segment(self) -> int:
        return self.heap + self.layout.heap["subheap"]

    def read_segment(self, address: int, index: int) -> Segment | None:
        sl = self.layout.subheap
        try:
            base = self.get(sl, address, "base")
            size = self.get(sl, address, "size")
            commit = self.get(sl, address, "commit_size")
            owner = self.get(sl, address, "heap")
            header_size = self.get(sl, address, "header_size")
            magic = self.get(sl, address, "magic")
        except UnreadableError as e:
            self.corrupt(SEGMENT, address, f"segment structure: {e}")
            return None
        if magic != C["SUBHEAP_MAGIC"]:
            self.corrupt(SEGMENT, address, f"subheap magic 0x{magic:08x} is not 'HSUB'")
        if owner != self.heap:
            self.corrupt(SEGMENT, address, f"subheap belongs to heap 0x{owner:x}")
        first = address == self.first_segment()
        if base != (self.heap if first else address):
            self.corrupt(SEGMENT, address, f"subheap base 0x{base:x} is not its own address")
        if not (0 < header_size < size and commit <= size and size <= C["HEAP_MAX_SUBHEAP_SIZE"]):
            self.corrupt(
                SEGMENT,
                address,
                f"sizes out of range: size 0x{size:x}, commit 0x{commit:x}, "
                f"header 0x{header_size:x}",
            )
            return None
        seg = Segment(
            index=index,
            address=address,
            base=base,
            reserved=size,
            committed=commit,
            first_block=base + header_size,
            blocks_end=base + size - self.layout.arena_offset,
        )
        if commit < size:
            seg.uncommitted.append(Range(base + commit, size - commit))
        return seg

    # ------------------------------------------------------------------ blocks
    def decode_block(self, address: int, seg: Segment) -> RawBlock:
        al = self.layout.arena_inuse
        word = self.get(al, address, "size")
        unused = self.get(al, address, "unused")
        tag = self.get(al, address, "tag")
        magic = self.get(al, address, "magic")
        size, flags = word & SIZE_MASK, word & 3
        is_free = bool(flags & C["ARENA_FLAG_FREE"])
        prev_free = bool(flags & C["ARENA_FLAG_PREV_FREE"])
        raw = RawBlock(size, flags, FREE if is_free else BUSY, magic, False, prev_free)
        if magic == C["ARENA_INUSE_MAGIC"]:
            raw.magic_ok = True
            if is_free:
                raw.problems.append("busy magic 'US' on a block flagged FREE")
            raw.state = BUSY
            raw.requested = size - unused
            if not al.size <= unused <= size:
                raw.problems.append(f"unused 0x{unused:x} out of range for size 0x{size:x}")
                raw.requested = max(size - unused, 0)
        elif magic == C["ARENA_FREE_MAGIC"]:
            raw.magic_ok = True
            if not is_free:
                raw.problems.append("free magic 'FE' on a block not flagged FREE")
            raw.state = FREE
        if tag:
            raw.problems.append(f"tag 0x{tag:x} is not 0")
        return raw

    # ------------------------------------------------------------------ free lists
    def free_list_heads(self) -> list[ListHead]:
        start = self.heap + self.layout.heap["free_lists"]
        stride = self.layout.arena_free.size
        bounds = self.layout.bucket_bounds
        heads = []
        for i, low in enumerate(bounds):
            high = bounds[i + 1] - 1 if i + 1 < len(bounds) else None
            heads.append(ListHead(start + i * stride, low, high))
        return heads

    # ------------------------------------------------------------------ large blocks
    def large_list(self) -> tuple[int, int]:
        return self.heap + self.layout.heap["large_list"], self.layout.arena_large["entry"]

    def read_large(self, address: int) -> LargeBlock | None:
        ll = self.layout.arena_large
        try:
            data_size = self.get(ll, address, "data_size")
            block_size = self.get(ll, address, "block_size")
            magic = self.get(ll, address, "arena.magic")
            flink = self.get(ll, address, "entry.next")
            blink = self.get(ll, address, "entry.prev")
        except UnreadableError as e:
            self.corrupt(LARGE_BLOCK, address, f"large block header: {e}")
            return None
        if magic != C["ARENA_LARGE_MAGIC"]:
            self.corrupt(LARGE_BLOCK, address, f"large block magic 0x{magic:04x} is not 'LG'")
        if address % C["HEAP_REGION_ALIGN"] or data_size > block_size - ll.size:
            self.corrupt(
                LARGE_BLOCK,
                address,
                f"large block sizes out of range: data 0x{data_size:x}, region 0x{block_size:x}",
            )
        return LargeBlock(
            address=address,
            region=address,
            region_size=block_size,
            user_ptr=address + ll.size,
            size=data_size,
            block_size=block_size,
            flink=flink,
            blink=blink,
        )
