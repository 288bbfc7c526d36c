"""``heap entry ADDR``: the block holding an address, decoded field by field (``!heap -i``).

ADDR may be anywhere in a block: its header, its data or the slack after the request; a large
block is found by any address of its region. The header's bytes are decoded with the
allocator's own declaration (``views_layout``), so the offsets shown are the layout's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from emu.heap.allocator import Allocator
from emu.heap.registry import walk_heap
from emu.heap.walkers import HeapReport
from emu.heap.walkers.model import (
    BUSY,
    FREE,
    LINK_OFFSET,
    Block,
    LargeBlock,
    Subsegment,
    header_flag_names,
)
from emu.observe.events import AllocationEvent
from emu.process.core import ProcessCore
from emu.views.common import JsonView, NotInHeapError, ascii_magic, hexp, resolve_heaps
from emu.views.layout import (
    FieldSpec,
    block_flag_names,
    block_specs,
    describe_field,
    granularity,
    large_header_specs,
    subsegment_of,
)
from emu.win.ntdefs import MEM_COMMIT


@dataclass
class HeaderFieldLine:
    """One header field: where, its bytes as stored, its value and what it means."""

    offset: int
    name: str
    size: int
    raw: str  # the bytes in memory order, hex
    value: int
    meaning: str


@dataclass
class EntryView(JsonView):
    query: int
    heap: int
    heap_index: int
    kind: str
    arch: str
    large: bool
    address: int  # the block header (a large block: its region base)
    user_ptr: int
    size: int  # bytes, header included (a large block: its region)
    granularity: int
    state: str
    header_flags: int
    flag_names: list[str]
    requested: int | None
    unused: int | None  # size - requested (header and slack)
    where: str  # which part of the block ADDR is in
    segment: int | None
    segment_base: int | None
    prev_block: int | None
    prev_size: int | None
    next_block: int | None
    back_link: int | None  # PREV_FREE: the pointer below the header
    free_list: int | None  # index of the free list that holds it
    header: str
    subsegment: int | None = None  # the front-end subsegment serving it (!heap -i "Subsegment")
    fields: list[HeaderFieldLine] = field(default_factory=list)
    corruptions: list[str] = field(default_factory=list)
    allocation: str | None = None  # the recorded call that returned this block (!heap -p -a)
    stack: list[str] = field(default_factory=list)  # its call stack, innermost first


_ALLOCATING = ("RtlAllocateHeap", "RtlReAllocateHeap")


def allocation_of(user_ptr: int, events: Iterable[AllocationEvent]) -> AllocationEvent | None:
    """The last recorded allocation that returned ``user_ptr`` (the block's current owner)."""
    found = None
    for ev in events:
        for e in ev.walk():
            if e.name in _ALLOCATING and e.finished and e.ret == user_ptr:
                found = e
    return found


def with_allocation(view: EntryView, events: Iterable[AllocationEvent]) -> EntryView:
    """``view`` with the call that allocated its block and that call's stack, from recorded
    events (``proc.record(stacks=N)``, ``heapemu heap entry --stacks N``)."""
    ev = allocation_of(view.user_ptr, events) if view.state != FREE else None
    if ev is not None:
        ret = "?" if ev.ret is None else f"0x{ev.ret:x}"
        view.allocation = f"#{ev.seq} {ev.function}({ev.describe_args()}) = {ret}"
        view.stack = [f"{f.symbol} (0x{f.pc:x})" for f in ev.stack]
    return view


def _meaning(spec: FieldSpec, value: int, kind: str, unit: int, block: Block | None) -> str:
    name = spec.name.rsplit(".", 1)[-1]
    if name == "magic":
        text = ascii_magic(value, spec.size)
        return f"'{text}'" if text else ("pending free (0xDEAD)" if value == 0xDEAD else "")
    if name in ("next", "prev") and spec.name.startswith("entry"):
        what = "free list" if block is not None else "large-block list"
        target = f" (entry of block {value - LINK_OFFSET:#x})" if block is not None else ""
        return f"{what} {'flink' if name == 'next' else 'blink'}{target}"
    if block is None:
        return {"data_size": "requested size", "block_size": "bytes from the block header on"}.get(
            name, ""
        )
    own = describe_field(kind, name, value, block.state == FREE, unit)
    if own is not None:
        return own
    if name == "size":
        return f"{value:#x} units of {unit} = {value * unit:#x} bytes" + (
            " (low 16 bits)" if block.state == FREE else ""
        )
    if name == "flags":
        return " | ".join(header_flag_names(value)) or "none"
    if name == "tail_size":
        return (
            "bits 16-23 of the size in units"
            if block.state == FREE
            else "bytes after the requested size"
        )
    if name == "base_offset":
        return "64 KiB steps from the segment base"
    return ""


def _fields(
    proc: ProcessCore, base: int, specs: list[FieldSpec], kind: str, unit: int, block: Block | None
) -> tuple[str, list[HeaderFieldLine]]:
    end = max(s.offset + s.size for s in specs)
    raw = proc.read(base, end)
    lines = []
    for s in specs:
        chunk = raw[s.offset : s.offset + s.size]
        value = int.from_bytes(chunk, "little")
        lines.append(
            HeaderFieldLine(
                s.offset,
                s.name,
                s.size,
                chunk.hex(" "),
                value,
                _meaning(s, value, kind, unit, block),
            )
        )
    return raw.hex(" "), lines


def _where(query: int, header: int, user_ptr: int, requested: int | None, end: int) -> str:
    if query < user_ptr:
        return f"header +{query - header:#x}"
    if requested is not None and query >= user_ptr + requested:
        return f"slack after the request, data +{query - user_ptr:#x}"
    return f"data +{query - user_ptr:#x}" if query < end else "past the block"


def _block_view(
    proc: ProcessCore, report: HeapReport, index: int, query: int, b: Block
) -> EntryView:
    seg = report.segments[b.segment]
    pos = seg.blocks.index(b)
    unit = granularity(report.kind, report.arch)
    header, fields = _fields(
        proc, b.address, block_specs(report.kind, report.arch, b), report.kind, unit, b
    )
    lists = [
        fl.index for fl in report.free_lists if any(e.address == b.address for e in fl.entries)
    ]
    return EntryView(
        query=query,
        heap=report.heap,
        heap_index=index,
        kind=report.kind,
        arch=report.arch,
        large=False,
        address=b.address,
        user_ptr=b.user_ptr,
        size=b.size,
        granularity=unit,
        state=b.state,
        header_flags=b.flags,
        flag_names=block_flag_names(report.kind, b),
        requested=b.requested,
        unused=b.unused,
        where=_where(query, b.address, b.user_ptr, b.requested, b.end),
        segment=seg.index,
        segment_base=seg.base,
        prev_block=seg.blocks[pos - 1].address if pos else None,
        prev_size=b.prev_size,
        next_block=seg.blocks[pos + 1].address if pos + 1 < len(seg.blocks) else None,
        back_link=b.back_link,
        free_list=lists[0] if lists else None,
        header=header,
        fields=fields,
        corruptions=[str(c) for c in report.corruptions if c.address == b.address],
        subsegment=subsegment_of(report, b),
    )


def _slot_view(
    proc: ProcessCore, report: HeapReport, index: int, query: int, sub: Subsegment, slot: int
) -> EntryView:
    """A free slot of a slotted subsegment (segment heap LFH): no block of the walk (RtlWalkHeap
    does not report them either), decoded from the subsegment's record."""
    address = sub.first_block + slot * sub.block_size
    seg = next(s for s in report.segments if s.contains(address))
    b = Block(address, sub.block_size, 0, FREE, address, seg.index, 0, sub.block_size,
              component=sub.component)  # fmt: skip
    unit = granularity(report.kind, report.arch)
    specs = block_specs(report.kind, report.arch, b)
    header, fields = _fields(proc, address, specs, report.kind, unit, b)
    last = sub.first_block + (sub.block_count - 1) * sub.block_size
    return EntryView(
        query=query,
        heap=report.heap,
        heap_index=index,
        kind=report.kind,
        arch=report.arch,
        large=False,
        address=address,
        user_ptr=address,
        size=sub.block_size,
        granularity=unit,
        state=FREE,
        header_flags=0,
        flag_names=[f"free slot {slot} of {sub.block_count}"],
        requested=None,
        unused=None,
        where=_where(query, address, address, None, address + sub.block_size),
        segment=seg.index,
        segment_base=seg.base,
        prev_block=address - sub.block_size if slot else None,
        prev_size=sub.block_size if slot else None,
        next_block=address + sub.block_size if address < last else None,
        back_link=None,
        free_list=None,
        header=header,
        fields=fields,
        corruptions=[str(c) for c in report.corruptions if c.address == address],
        subsegment=sub.address,
    )


def _large_view(
    proc: ProcessCore, report: HeapReport, index: int, query: int, lb: LargeBlock
) -> EntryView:
    unit = granularity(report.kind, report.arch)
    specs = large_header_specs(report.kind, report.arch)
    header, fields = _fields(proc, lb.address, specs, report.kind, unit, None)
    return EntryView(
        query=query,
        heap=report.heap,
        heap_index=index,
        kind=report.kind,
        arch=report.arch,
        large=True,
        address=lb.address,
        user_ptr=lb.user_ptr,
        size=lb.region_size,
        granularity=unit,
        state=BUSY,
        header_flags=0,
        flag_names=[],
        requested=lb.size,
        unused=lb.region_size - lb.size,
        where=_where(query, lb.address, lb.user_ptr, lb.size, lb.region + lb.region_size),
        segment=None,
        segment_base=None,
        prev_block=None,
        prev_size=None,
        next_block=None,
        back_link=None,
        free_list=None,
        header=header,
        fields=fields,
        corruptions=[str(c) for c in report.corruptions if c.address == lb.address],
    )


def build_entry(
    proc: ProcessCore,
    address: int,
    heaps: list[int] | None = None,
    *,
    allocator: Allocator | None = None,
) -> EntryView:
    """The block of ``heaps`` (default: every heap) holding ``address``; NotInHeapError if none."""
    heap_list = resolve_heaps(proc, heaps, allocator)
    for index, heap in enumerate(heap_list):
        report = walk_heap(proc, heap)
        block = report.block_at(address)
        if block is not None:
            return _block_view(proc, report, index, address, block)
        for lb in report.large_blocks:
            if lb.region <= address < lb.region + lb.region_size:
                return _large_view(proc, report, index, address, lb)
        for sub in report.subsegments:
            slot = sub.slot_of(address)
            if slot is not None:
                return _slot_view(proc, report, index, address, sub, slot)
        for seg in report.segments:
            if seg.contains(address):
                info = proc.memory.query(address)
                what = "uncommitted" if info.State != MEM_COMMIT else "segment header or tail"
                raise NotInHeapError(
                    f"0x{address:x} is in segment {seg.index} of heap 0x{heap:x} ({what}), "
                    "not in a block"
                )
    raise NotInHeapError(f"0x{address:x} is not in any heap of the process")


# ---------------------------------------------------------------------------- text


def _opt(value: int | None, arch: str) -> str:
    return "(none)" if value is None else f"0x{hexp(value, arch)}"


def _header_words(header: str) -> str:
    """The header's bytes as !heap -i shows them: little-endian 32-bit words (0x3C132FED
    0x88000000), or the bytes themselves when they are no whole number of words."""
    raw = bytes.fromhex(header.replace(" ", ""))
    if not raw or len(raw) % 4:
        return header
    return " ".join(
        f"0x{int.from_bytes(raw[i : i + 4], 'little'):08X}" for i in range(0, len(raw), 4)
    )


def render_entry(view: EntryView) -> str:
    a = view.arch
    what = "large block" if view.large else "block entry"
    lines = [
        f"Detailed information for {what} {hexp(view.address, a)} "
        f"(0x{view.query:x} is at {view.where})",
        f"Heap               : 0x{hexp(view.heap, a)} (ID {view.heap_index}, {view.kind}, {a})",
        f"Header content     : {_header_words(view.header)}",
    ]
    if view.segment is not None and view.segment_base is not None:
        lines.append(
            f"Owning segment     : {view.segment} at 0x{hexp(view.segment_base, a)} "
            f"(offset {view.address - view.segment_base:#x})"
        )
    flags = " | ".join(view.flag_names) or "none"
    lines.append(f"Block flags        : {view.header_flags:#x} ({flags})")
    lines.append(f"State              : {view.state}")
    if view.large:
        lines.append(f"Region size        : {view.size:#x} bytes")
    else:
        units = view.size // view.granularity
        lines.append(f"Total block size   : {units:#x} units ({view.size:#x} bytes)")
    if view.requested is not None:
        lines.append(
            f"Requested size     : {view.requested:#x} bytes (unused {view.unused:#x} bytes)"
        )
    lines.append(f"User data          : 0x{hexp(view.user_ptr, a)}")
    if not view.large:
        prev = "(none)" if view.prev_size is None else f"{view.prev_size:#x} bytes"
        lines += [
            f"Previous block size: {prev}",
            f"Previous block     : {_opt(view.prev_block, a)}",
            f"Next block         : {_opt(view.next_block, a)}",
        ]
    if view.back_link is not None:
        lines.append(f"Back link (PREV_FREE): 0x{hexp(view.back_link, a)}")
    if view.free_list is not None:
        lines.append(f"On free list       : {view.free_list}")
    if view.subsegment is not None:
        lines.append(f"Subsegment         : 0x{hexp(view.subsegment, a)}")
    lines.append("Header fields:")
    width = max(len(f.name) for f in view.fields)
    for f in view.fields:
        note = f"  {f.meaning}" if f.meaning else ""
        lines.append(f"   +{f.offset:#05x} {f.name:{width}} : {f.value:#x} [{f.raw}]{note}")
    lines += [f"Corruption         : {c}" for c in view.corruptions]
    if view.allocation is not None:
        lines.append(f"Allocated by       : {view.allocation}")
        lines += ["Allocation stack   :", *(f"   {frame}" for frame in view.stack)]
    return "\n".join(lines)
