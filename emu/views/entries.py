"""``heap entries``: a heap's header, free lists and every entry, like WinDbg's ``!heap -h``.

One line per block, per segment: ``address: psize . size [HLB] - busy (requested)``, sizes in
hex bytes (header included), then the segment's uncommitted range. The flag digits are ours
(neither allocator has WinDbg's HEAP_ENTRY flags), chosen so that ordinary lines read as they do
in WinDbg ([101] busy, [100] free, [111] a segment's last block):

- H: 1 when the walker found nothing wrong at this block header, 0 when a corruption is
  reported at it (the corruptions are listed at the end);
- L: 1 for the last block of its segment;
- B: 1 busy (including Wine's pending frees, which are not reusable), 0 free.

The raw flag bits of the header (FREE 1, PREV_FREE 2, both allocators) are in the JSON
(``header_flags``) and in ``heap entry``. A last free block may run on into uncommitted memory:
its line shows the header's size and how much of it is committed. Large blocks (WinDbg's
virtual blocks) are listed after the segments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from emu.heap.allocator import Allocator
from emu.heap.registry import walk_heap
from emu.heap.walkers import HeapReport
from emu.heap.walkers.model import BUSY, FREE, PENDING, Block
from emu.process.core import ProcessCore
from emu.views.common import JsonView, hexp, list_heaps
from emu.views.layout import (
    component_titles,
    granularity,
    internal_block,
    large_list_head,
    nested_regions,
)


@dataclass
class EntryLine:
    """One block of a segment."""

    address: int
    prev_size: int  # 0 for a segment's first block
    size: int
    flags: str  # the [HLB] digits
    state: str  # busy, free or pending_free
    requested: int | None
    user_ptr: int
    header_flags: int
    committed: int
    internal: bool = False  # a busy block the heap uses for itself
    # blocks inside this one (a front end's blocks in their back-end block: win7's LFH)
    nested: list[EntryLine] = field(default_factory=list)
    # the front end's data region this block holds (WinDbg: "LFH data region at X
    # (subsegment Y)"), when it holds one
    region_title: str = ""
    region: int | None = None
    subsegment: int | None = None


@dataclass
class RangeLine:
    address: int
    size: int


@dataclass
class SegmentEntries:
    index: int
    address: int  # the segment structure
    base: int
    end: int
    committed: int  # bytes from base
    first_block: int
    complete: bool  # the walk reached the segment's end
    entries: list[EntryLine] = field(default_factory=list)
    uncommitted: list[RangeLine] = field(default_factory=list)


@dataclass
class UnitEntries:
    """One unit of a component: a segment's back-end page ranges, a VS or LFH subsegment (every
    slot listed, free ones included)."""

    title: str
    address: int
    size: int
    entries: list[EntryLine] = field(default_factory=list)
    uncommitted: list[RangeLine] = field(default_factory=list)
    slotted: bool = False  # an LFH subsegment: entries are its slots, free ones included
    guard: RangeLine | None = None  # a subsegment's guard page (uncommitted, in its page range)


@dataclass
class ComponentEntries:
    """The blocks one component serves (segment heap: back end, VS, LFH), unit by unit."""

    component: str
    title: str
    units: list[UnitEntries] = field(default_factory=list)


@dataclass
class FreeListLine:
    """A non-empty free list: its sentinel, size class and blocks (headers) in list order."""

    index: int
    head: int
    min_size: int
    max_size: int | None
    blocks: list[int] = field(default_factory=list)


@dataclass
class LargeLine:
    address: int
    region_size: int
    requested: int
    user_ptr: int


@dataclass
class CorruptionLine:
    kind: str
    address: int
    detail: str


@dataclass
class EntriesView(JsonView):
    index: int  # position in the process's heap list, -1 when it is not listed
    heap: int
    kind: str
    arch: str
    flags: int
    force_flags: int
    granularity: int
    segment_reserve: int  # the heap's grow size (next segment's reservation)
    total_free: int  # committed bytes in free blocks (as !heap -s "Free")
    large_list: int
    segments: list[SegmentEntries] = field(default_factory=list)
    free_lists: list[FreeListLine] = field(default_factory=list)
    large_blocks: list[LargeLine] = field(default_factory=list)
    corruptions: list[CorruptionLine] = field(default_factory=list)
    filter: str = ""  # what filter_entries kept ("" = every entry)
    # the same blocks grouped by the component serving them, when the walker names components
    components: list[ComponentEntries] = field(default_factory=list)

    @property
    def entries(self) -> list[EntryLine]:
        """Every block, nested ones right after the block that holds them."""
        return [n for s in self.segments for e in s.entries for n in (e, *e.nested)]


STATES = (BUSY, FREE, PENDING)


def parse_size_range(text: str) -> tuple[int, int]:
    """``0x100`` (exactly) or ``0x100-0x200`` (inclusive) -> (low, high); ValueError if not."""
    low, sep, high = text.partition("-")
    lo = int(low.strip(), 0)
    hi = int(high.strip(), 0) if sep else lo
    if lo < 0 or hi < lo:
        raise ValueError(f"a size or a range LOW-HIGH with LOW <= HIGH, not {text!r}")
    return lo, hi


def filter_entries(
    view: EntriesView, *, size: tuple[int, int] | None = None, state: str | None = None
) -> EntriesView:
    """Only the entries whose requested size is in ``size`` (low, high inclusive; WinDbg's
    ``!heap -flt s SIZE``) and whose state is ``state`` (busy, free, pending_free). A free
    block has no requested size: a size filter keeps free blocks by their size in bytes."""
    if state is not None and state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}, not {state!r}")

    def keep(e: EntryLine) -> bool:
        if state is not None and e.state != state:
            return False
        if size is None:
            return True
        n = e.requested if e.requested is not None else e.size
        return size[0] <= n <= size[1]

    def kept(entries: list[EntryLine]) -> list[EntryLine]:
        # a block holding others stays when it or any block inside it is kept
        out = []
        for e in entries:
            nested = [n for n in e.nested if keep(n)]
            if keep(e) or nested:
                out.append(dataclasses.replace(e, nested=nested))
        return out

    segments = [dataclasses.replace(s, entries=kept(s.entries)) for s in view.segments]
    components = [
        dataclasses.replace(
            c, units=[dataclasses.replace(u, entries=kept(u.entries)) for u in c.units]
        )
        for c in view.components
    ]
    large = [
        lb
        for lb in view.large_blocks
        if state in (None, BUSY) and (size is None or size[0] <= lb.requested <= size[1])
    ]
    what = []
    if size is not None:
        what.append(f"size 0x{size[0]:x}" + (f"-0x{size[1]:x}" if size[1] != size[0] else ""))
    if state is not None:
        what.append(f"state {state}")
    return dataclasses.replace(
        view, segments=segments, components=components, large_blocks=large, filter=", ".join(what)
    )


def flag_digits(state: str, last: bool, header_ok: bool) -> str:
    return f"{int(header_ok)}{int(last)}{int(state != FREE)}"


def _line(report: HeapReport, b: Block, bad: set[int]) -> EntryLine:
    return EntryLine(
        address=b.address,
        prev_size=b.prev_size or 0,
        size=b.size,
        flags=flag_digits(b.state, False, b.address not in bad),
        state=b.state,
        requested=b.requested,
        user_ptr=b.user_ptr,
        header_flags=b.flags,
        committed=b.committed,
        internal=b.state != FREE and internal_block(report.kind, b),
    )


def _segments(report: HeapReport) -> list[SegmentEntries]:
    bad = {c.address for c in report.corruptions}
    regions = {r.block: r for r in nested_regions(report)}
    out = []
    for seg in report.segments:
        lines = SegmentEntries(
            seg.index,
            seg.address,
            seg.base,
            seg.end,
            seg.committed,
            seg.first_block,
            seg.complete,
            uncommitted=[RangeLine(r.address, r.size) for r in seg.uncommitted],
        )
        top: list[EntryLine] = []
        for b in seg.blocks:
            line = _line(report, b, bad)
            region = regions.get(b.address)
            if region is not None:
                line.region_title = region.title
                line.region, line.subsegment = region.address, region.subsegment
            if top and b.address < top[-1].address + top[-1].size:
                top[-1].nested.append(line)
            else:
                top.append(line)
        if top and seg.complete:  # the L digit: the segment's last entry
            top[-1].flags = flag_digits(top[-1].state, True, top[-1].address not in bad)
        lines.entries = top
        out.append(lines)
    return out


def _components(report: HeapReport) -> list[ComponentEntries]:
    """The blocks grouped by component (none when the walker names no components): the back
    end per segment with its uncommitted runs, VS and LFH per subsegment (an LFH subsegment's
    free slots, which are no blocks of the walk, listed from its slots)."""
    bad = {c.address for c in report.corruptions}
    out = []
    for name, title in component_titles(report.kind).items():
        group = ComponentEntries(name, title)
        subs = [s for s in report.subsegments if s.component == name]
        mine = [b for b in report.blocks if b.component == name]
        if not subs:
            for seg in report.segments:
                blocks = [b for b in mine if b.segment == seg.index]
                unit = UnitEntries(
                    f"{title} page ranges of Segment{seg.index:02d}",
                    seg.base,
                    seg.reserved,
                    [_line(report, b, bad) for b in blocks],
                    [RangeLine(r.address, r.size) for r in seg.uncommitted],
                )
                group.units.append(unit)
            out.append(group)
            continue
        for sub in sorted(subs, key=lambda x: x.address):
            inside = [_line(report, b, bad) for b in mine if sub.address <= b.address < sub.end]
            what = f"{title} subsegment at {sub.address:#x}, {sub.size:#x} bytes"
            if sub.slotted:
                busy = {e.address: e for e in inside}
                n = sub.block_size
                slots = range(sub.first_block, sub.first_block + sub.block_count * n, n)
                free = "100"  # the [HLB] digits of a free block
                inside = [
                    busy.get(a) or EntryLine(a, n, n, free, FREE, None, a, 0, n) for a in slots
                ]
                what += (
                    f": {sub.block_count} slots of {sub.block_size:#x} bytes, {sub.free_count} free"
                )
            guard = RangeLine(sub.end, sub.guard) if sub.guard else None
            unit = UnitEntries(what, sub.address, sub.size, inside, [], sub.slotted, guard)
            group.units.append(unit)
        out.append(group)
    return out


def entries_from_report(report: HeapReport, index: int = -1) -> EntriesView:
    """The view of one walked heap (no process needed)."""
    return EntriesView(
        index=index,
        heap=report.heap,
        kind=report.kind,
        arch=report.arch,
        flags=report.flags,
        force_flags=report.force_flags,
        granularity=granularity(report.kind, report.arch),
        segment_reserve=report.header.get("grow_size", 0),
        total_free=sum(b.committed for b in report.free_blocks()),
        large_list=large_list_head(report.kind, report.arch, report.heap),
        segments=_segments(report),
        free_lists=[
            FreeListLine(
                fl.index, fl.head, fl.min_size, fl.max_size, [e.address for e in fl.entries]
            )
            for fl in report.free_lists
            if fl.entries
        ],
        large_blocks=[
            LargeLine(lb.address, lb.region_size, lb.size, lb.user_ptr)
            for lb in report.large_blocks
        ],
        corruptions=[CorruptionLine(c.kind, c.address, c.detail) for c in report.corruptions],
        components=_components(report),
    )


def build_entries(
    proc: ProcessCore, heap: int, *, index: int | None = None, allocator: Allocator | None = None
) -> EntriesView:
    """The entries of ``heap``; ``index`` (its heap ID) is looked up when not given."""
    if index is None:
        heaps = list_heaps(proc, allocator)
        index = heaps.index(heap) if heap in heaps else -1
    return entries_from_report(walk_heap(proc, heap), index)


# ---------------------------------------------------------------------------- text


def _entry_text(e: EntryLine, arch: str, lfh: bool = False) -> str:
    head = f"        {hexp(e.address, arch)}: {e.prev_size:05x} . {e.size:05x} [{e.flags}]"
    if e.state == BUSY:
        own = " internal" if e.internal else ""
        return f"{head} - busy ({e.requested or 0:x}){own}" + _nested_text(e, arch, lfh)
    if e.state == PENDING:
        return f"{head} - pending free ({e.requested or 0:x})"
    tail = f", {e.committed:x} committed" if e.committed < e.size else ""
    return f"{head} - free{tail}"


def _slot_text(e: EntryLine, arch: str, indent: str = "        ") -> str:
    """A front-end block as !heap -hl lists it: ``address: size - busy (requested)``."""
    state = f"busy ({e.requested or 0:x})" if e.state == BUSY else e.state.replace("_", " ")
    return f"{indent}{hexp(e.address, arch)}: {e.size:05x} - {state}"


def _nested_text(e: EntryLine, arch: str, lfh: bool) -> str:
    """The blocks inside e (LFH blocks in their UserBlocks): under WinDbg's heading with lfh
    (``!heap -hl``), else one line that counts them."""
    if not e.nested and e.region is None:
        return ""
    free = sum(1 for n in e.nested if n.state == FREE)
    heading = e.region_title or "data region"
    where = f"{heading} at {hexp(e.region if e.region is not None else e.user_ptr, arch)}"
    if e.subsegment is not None:
        where += f" (subsegment {hexp(e.subsegment, arch)})"
    if not lfh:
        return f"\n            {where}: {len(e.nested)} blocks, {free} free (--lfh lists them)"
    lines = ["", "", f"        {where}:"]
    lines += [_slot_text(n, arch, "            ") for n in e.nested]
    return "\n".join(lines) + "\n"


def _trim(entries: list[EntryLine], arch: str, keep: int | None, lfh: bool = False) -> list[str]:
    """Entry lines with runs of ordinary busy entries elided when there are more than keep:
    the first and last keep/2 are shown, every entry with a corruption (H = 0) and, unless
    that makes more than 4 * keep lines, every free or pending one, with their neighbours."""
    lines = [_entry_text(e, arch, lfh) for e in entries]
    return _elide(entries, lines, keep)


def _elide(entries: list[EntryLine], lines: list[str], keep: int | None) -> list[str]:
    if keep is None or len(lines) <= keep:
        return lines
    shown = set(range(keep // 2)) | set(range(len(lines) - (keep - keep // 2), len(lines)))
    marked = set(shown)
    for i, e in enumerate(entries):
        if e.flags[0] != "1":
            shown |= {i - 1, i, i + 1}
        if e.state != BUSY:
            marked |= {i - 1, i, i + 1}
    if len(marked) <= 4 * keep:  # else too many to be a summary: leave the free ones out
        shown |= marked
    out: list[str] = []
    hidden = 0
    for i, line in enumerate(lines):
        if i not in shown:
            hidden += 1
            continue
        if hidden:
            out.append(f"        ... {hidden} entries not shown ...")
            hidden = 0
        out.append(line)
    return out


def _component_text(view: EntriesView, keep: int | None) -> list[str]:
    """The blocks component by component (segment heap): page ranges, chunks, slots."""
    a = view.arch
    out: list[str] = []
    for c in view.components:
        out += ["", f"    {c.title} ({len(c.units)} unit(s)) in Heap {hexp(view.heap, a)}"]
        for u in c.units:
            out.append(f"      {u.title}:")
            text = _slot_text if u.slotted else _entry_text
            out += _elide(u.entries, [text(e, a) for e in u.entries], keep)
            out += [f"        {hexp(r.address, a)}: {r.size:08x} - uncommitted bytes."
                    for r in u.uncommitted]  # fmt: skip
            if u.guard is not None:
                out.append(f"        {hexp(u.guard.address, a)}: {u.guard.size:08x} - guard page.")
    return out


def _free_list_text(fl: FreeListLine, arch: str) -> str:
    n = len(fl.blocks)
    sizes = f"{fl.min_size:x}-{fl.max_size:x}" if fl.max_size is not None else f"{fl.min_size:x}+"
    return (
        f"    FreeList[ {fl.index:02x} ] at {hexp(fl.head, arch)}: "
        f"{hexp(fl.blocks[0], arch)} . {hexp(fl.blocks[-1], arch)}   "
        f"({n} block{'s' if n != 1 else ''}, sizes {sizes})"
    )


def render_entries(view: EntriesView, max_entries: int | None = None, lfh: bool = False) -> str:
    """``!heap -h``-style text; ``max_entries`` trims long segments (see ``_trim``); ``lfh``
    lists the front end's blocks under each data region's heading (``!heap -hl``). A heap whose
    blocks are grouped by component (segment heap) is listed component by component."""
    a = view.arch
    out = [
        "Index   Address  Allocator",
        f"{view.index + 1:3}:   {hexp(view.heap, a)}  {view.kind} ({a})",
    ]
    for s in view.segments:
        out.append(
            f"    Segment at {hexp(s.base, a)} to {hexp(s.end, a)} "
            f"({s.committed:08x} bytes committed)"
        )
    n_ucr = sum(len(s.uncommitted) for s in view.segments)
    ucr_bytes = sum(r.size for s in view.segments for r in s.uncommitted)
    out += [
        f"    Flags:                {view.flags:08x}",
        f"    ForceFlags:           {view.force_flags:08x}",
        f"    Granularity:          {view.granularity} bytes",
        f"    Segment Reserve:      {view.segment_reserve:08x}",
        f"    Total Free Size:      {view.total_free // view.granularity:08x} units "
        f"({view.total_free:x} bytes)",
        f"    Virtual Alloc List:   {hexp(view.large_list, a)}",
        f"    Uncommitted ranges:   {n_ucr} ({ucr_bytes:08x} bytes)",
    ]
    out += [_free_list_text(fl, a) for fl in view.free_lists]
    if view.filter:
        n = len(view.entries) + len(view.large_blocks)
        out.append(f"    Filter:               {view.filter} ({n} entries)")
    for s in [] if view.components else view.segments:
        out += [
            "",
            f"    Heap entries for Segment{s.index:02d} in Heap {hexp(view.heap, a)}",
            "         address: psize . size  flags   state (requested size)",
            f"        {hexp(s.base, a)}:      {s.first_block - s.base:08x}      - segment header",
        ]
        out += _trim(s.entries, a, max_entries, lfh)
        if not s.complete:
            out.append("        (the walk stopped here: see the corruptions)")
        out += [f"        {hexp(r.address, a)}:      {r.size:08x}      - uncommitted bytes."
                for r in s.uncommitted]  # fmt: skip
    out += _component_text(view, max_entries)
    if view.large_blocks:
        out += ["", f"    Virtual blocks (large blocks) in Heap {hexp(view.heap, a)}"]
        out += [
            f"        {hexp(lb.address, a)}: region {lb.region_size:08x} - busy "
            f"({lb.requested:x}) data at {hexp(lb.user_ptr, a)}"
            for lb in view.large_blocks
        ]
    if view.corruptions:
        out += ["", f"    Corruptions ({len(view.corruptions)}):"]
        out += [f"        {c.kind} at {hexp(c.address, a)}: {c.detail}" for c in view.corruptions]
    return "\n".join(out)
