"""``heap summary``: one line per heap of the process, like WinDbg's ``!heap -s``.

Columns (KiB rounded down, as WinDbg): Reserv = bytes reserved by the heap's segments, Commit =
committed part of them, Virt = bytes of the large blocks' own regions (WinDbg's virtual
blocks), Free = committed bytes in free blocks, List length = blocks on the free lists, UCR =
uncommitted ranges, Virt blocks = large blocks, Frag = external fragmentation (1 - largest free
block / all free bytes, in percent), Fast heap = the active front end (win7: ``LFH``, as
WinDbg prints it). The JSON keeps exact byte counts.

A heap whose walker names components (``HeapWalker.component_titles``: the segment heap's back
end, VS and LFH) gets columns of its own instead: Reserv and Commit of its segments, the KiB
each component holds (back end: its busy page ranges; VS and LFH: their subsegments), the large
blocks' KiB and count, then a line per component with its blocks busy and free.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emu.heap.allocator import Allocator
from emu.heap.registry import allocator_kind
from emu.heap.walkers import HeapReport
from emu.process.core import ProcessCore
from emu.views.common import JsonView, heap_kind, hexp, kib, resolve_heaps, walk_heaps


@dataclass
class ComponentUsage:
    """What one component of a heap holds (bytes)."""

    component: str  # Block.component (backend, vs, lfh)
    title: str
    subsegments: int  # its subsegments (0: it hands out page ranges itself)
    size: int  # bytes of its subsegments, or of its page ranges busy and free
    busy_blocks: int
    busy_bytes: int
    free_blocks: int  # free chunks / free slots / free committed runs
    free_bytes: int


@dataclass
class HeapSummaryRow:
    """One heap's numbers (bytes unless the name says otherwise)."""

    index: int  # position in the process's heap list (WinDbg's heap ID)
    heap: int
    flags: int
    reserved: int
    committed: int
    uncommitted: int  # reserved - committed, as the segments' uncommitted ranges add up
    virtual: int
    free: int
    free_list_length: int
    uncommitted_ranges: int
    virtual_blocks: int
    fragmentation: float  # external fragmentation in percent
    busy_blocks: int
    busy_bytes: int
    largest_free: int
    segments: int
    corruptions: int
    front_end: str = ""  # the allocator's line about its front end and keys (win7: the LFH)
    fast_heap: str = ""  # !heap -s "Fast heap": the active front end ("LFH"), "" if none
    components: list[ComponentUsage] = field(default_factory=list)


@dataclass
class SummaryView(JsonView):
    arch: str
    kind: str
    rows: list[HeapSummaryRow] = field(default_factory=list)


def summary_row(index: int, report: HeapReport) -> HeapSummaryRow:
    s = report.summary()
    walker = allocator_kind(report.kind).walker
    return HeapSummaryRow(
        index=index,
        heap=report.heap,
        flags=report.flags,
        reserved=s.reserved,
        committed=s.committed,
        uncommitted=sum(r.size for seg in report.segments for r in seg.uncommitted),
        virtual=s.virtual,
        free=s.free,
        free_list_length=s.free_list_length,
        uncommitted_ranges=s.uncommitted_ranges,
        virtual_blocks=s.virtual_blocks,
        fragmentation=round(100.0 * s.external_fragmentation, 2),
        busy_blocks=s.busy_blocks,
        busy_bytes=s.busy_bytes,
        largest_free=s.largest_free,
        segments=s.segments,
        corruptions=len(report.corruptions),
        front_end=walker.front_end_line(report),
        fast_heap=walker.fast_heap(report),
        components=component_usage(report),
    )


def component_usage(report: HeapReport) -> list[ComponentUsage]:
    """Per component the walker names: its subsegments and blocks (a slotted subsegment's free
    slots are no blocks of the walk: they are counted from its record)."""
    out = []
    for name, title in allocator_kind(report.kind).walker.component_titles().items():
        blocks = [b for b in report.blocks if b.component == name]
        subs = [s for s in report.subsegments if s.component == name]
        busy = [b.size for b in blocks if b.busy]
        free = [b.size for b in blocks if not b.busy]
        free += [s.block_size for s in subs if s.slotted for _ in range(s.free_count)]
        size = sum(s.size for s in subs) if subs else sum(busy) + sum(free)
        out.append(
            ComponentUsage(name, title, len(subs), size, len(busy), sum(busy), len(free), sum(free))
        )
    return out


def build_summary(
    proc: ProcessCore, heaps: list[int] | None = None, *, allocator: Allocator | None = None
) -> SummaryView:
    """The summary of ``heaps`` (default: every heap of the process)."""
    reports = walk_heaps(proc, resolve_heaps(proc, heaps, allocator))
    return SummaryView(
        arch=proc.arch.name,
        kind=heap_kind(proc),
        rows=[summary_row(i, r) for i, r in enumerate(reports)],
    )


_COLUMNS = (
    # (header line 1, header line 2, width)
    ("Flags", "", 8),
    ("Reserv", "(k)", 7),
    ("Commit", "(k)", 7),
    ("Virt", "(k)", 6),
    ("Free", "(k)", 6),
    ("List", "length", 6),
    ("UCR", "", 5),
    ("Virt", "blocks", 6),
    ("Frag", "(%)", 6),
    ("Busy", "blocks", 6),
    ("Errors", "", 6),
    ("Fast", "heap", 5),
)


def _nt_cells(r: HeapSummaryRow) -> tuple[object, ...]:
    return (
        f"{r.flags:08x}",
        kib(r.reserved),
        kib(r.committed),
        kib(r.virtual),
        kib(r.free),
        r.free_list_length,
        r.uncommitted_ranges,
        r.virtual_blocks,
        f"{r.fragmentation:.1f}",
        r.busy_blocks,
        r.corruptions,
        r.fast_heap,
    )


def _component_columns(view: SummaryView) -> list[tuple[str, str, int]]:
    titles = [c.title for c in view.rows[0].components] if view.rows else []
    return [
        ("Flags", "", 8),
        ("Reserv", "(k)", 7),
        ("Commit", "(k)", 7),
        *((t, "(k)", max(6, len(t))) for t in titles),
        ("Large", "(k)", 6),
        ("Large", "blocks", 6),
        ("Busy", "blocks", 6),
        ("Errors", "", 6),
    ]


def _component_cells(r: HeapSummaryRow) -> tuple[object, ...]:
    held = [kib(c.busy_bytes if not c.subsegments else c.size) for c in r.components]
    return (
        f"{r.flags:08x}",
        kib(r.reserved),
        kib(r.committed),
        *held,
        kib(r.virtual),
        r.virtual_blocks,
        r.busy_blocks,
        r.corruptions,
    )


def _component_line(c: ComponentUsage) -> str:
    where = f"{c.subsegments} subsegment(s) of {c.size:#x} bytes; " if c.subsegments else ""
    return (
        f"{c.title}: {where}{c.busy_blocks} busy ({c.busy_bytes:#x} bytes), "
        f"{c.free_blocks} free ({c.free_bytes:#x} bytes)"
    )


def render_summary(view: SummaryView) -> str:
    w = 16 if view.arch == "x64" else 8
    by_component = any(r.components for r in view.rows)
    columns = _component_columns(view) if by_component else list(_COLUMNS)
    head1 = f"{'Heap':^{w}} " + " ".join(f"{h:>{n}}" for h, _, n in columns)
    head2 = (f"{'':{w}} " + " ".join(f"{h:>{n}}" for _, h, n in columns)).rstrip()
    rule = "-" * len(head1)
    lines = [f"Allocator: {view.kind} ({view.arch}), {len(view.rows)} heap(s)", head1, head2, rule]
    for r in view.rows:
        cells = _component_cells(r) if by_component else _nt_cells(r)
        row = " ".join(f"{c!s:>{n}}" for c, (_, _, n) in zip(cells, columns, strict=True))
        lines.append(f"{hexp(r.heap, view.arch)} {row}".rstrip())
    lines.append(rule)
    lines += [f"{hexp(r.heap, view.arch)} {r.front_end}" for r in view.rows if r.front_end]
    lines += [
        f"{hexp(r.heap, view.arch)} {_component_line(c)}"
        for r in view.rows
        for c in r.components
        if c.size or c.subsegments  # the components that hold something
    ]
    return "\n".join(lines)
