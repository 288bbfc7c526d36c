"""``heap summary``: one line per heap of the process, like WinDbg's ``!heap -s``.

Columns (KiB rounded down, as WinDbg): Reserv = bytes reserved by the heap's segments, Commit =
committed part of them, Virt = bytes of the large blocks' own regions (WinDbg's virtual
blocks), Free = committed bytes in free blocks, List length = blocks on the free lists, UCR =
uncommitted ranges, Virt blocks = large blocks, Frag = external fragmentation (1 - largest free
block / all free bytes, in percent). The JSON keeps exact byte counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emu.heap.allocator import Allocator
from emu.heap.registry import allocator_kind
from emu.heap.walkers import HeapReport
from emu.process.core import ProcessCore
from emu.views.common import JsonView, heap_kind, hexp, kib, resolve_heaps, walk_heaps


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


@dataclass
class SummaryView(JsonView):
    arch: str
    kind: str
    rows: list[HeapSummaryRow] = field(default_factory=list)


def summary_row(index: int, report: HeapReport) -> HeapSummaryRow:
    s = report.summary()
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
        front_end=allocator_kind(report.kind).walker.front_end_line(report),
    )


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
)


def render_summary(view: SummaryView) -> str:
    w = 16 if view.arch == "x64" else 8
    head1 = f"{'Heap':^{w}} " + " ".join(f"{h:>{n}}" for h, _, n in _COLUMNS)
    head2 = (f"{'':{w}} " + " ".join(f"{h:>{n}}" for _, h, n in _COLUMNS)).rstrip()
    rule = "-" * len(head1)
    lines = [f"Allocator: {view.kind} ({view.arch}), {len(view.rows)} heap(s)", head1, head2, rule]
    for r in view.rows:
        cells = (
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
        )
        row = " ".join(f"{c!s:>{n}}" for c, (_, _, n) in zip(cells, _COLUMNS, strict=True))
        lines.append(f"{hexp(r.heap, view.arch)} {row}")
    lines.append(rule)
    lines += [f"{hexp(r.heap, view.arch)} {r.front_end}" for r in view.rows if r.front_end]
    return "\n".join(lines)
