"""Pictures of heaps from walker reports: a heap map and a strip (or GIF) of frames.

``heap_lanes(report)`` is the data: one ``Lane`` per segment and per large block, tiled by
``Span``s of one kind each (header, busy, free, pending_free, large, uncommitted, slack,
unknown; the segment heap's busy blocks by component: busy_lfh, busy_vs, busy_backend, and the
free slots of its LFH subsegments: lfh_free). The pictures draw lanes as horizontal bars with
matplotlib's Agg backend (PNG, SVG; GIF through matplotlib's PillowWriter). A segment's
committed part is drawn to scale and its uncommitted tail squeezed into a fixed share of the
bar, since a fresh 1 MiB segment has 64 KiB committed and the blocks would otherwise be
invisible; the tick labels are real addresses.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
from matplotlib.artist import Artist
from matplotlib.axes import Axes

# Figures are drawn on Agg canvases directly (never through pyplot), so no display is needed
# and the process-wide backend is left alone.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from emu.heap.walkers import HeapReport, LargeBlock, Segment, Subsegment
from emu.heap.walkers.model import BUSY, FREE

COLORS = {
    "header": "#8c96a8",  # heap / segment / large-block headers
    "busy": "#3b75af",
    "busy_lfh": "#17becf",  # segment heap: a busy LFH slot
    "busy_vs": "#3b75af",  # segment heap: a busy VS chunk
    "busy_backend": "#1f3f73",  # segment heap: a busy back-end page range
    "lfh_free": "#a6d99c",  # segment heap: a free LFH slot (no block of its own)
    "free": "#59a14f",
    "pending_free": "#f28e2b",  # Wine: freed into the delayed-free array
    "large": "#9467bd",
    "lfh": "#76b7b2",  # a front end's data region (win7's LFH UserBlocks) around its blocks
    "uncommitted": "#eeeeee",
    "slack": "#c9c9c9",  # bytes of a region no block covers
    "unknown": "#e15759",  # past the point where a corrupt segment's walk stopped
}
MIN_MARK = 0.004  # narrowest free block drawn, as a share of the axes width
TAIL_SHARE = 0.15  # of a segment bar, for its uncommitted tail
LARGE_WEIGHT = 0.2  # width of a large block's bar next to a segment's (frames)
LANE_GAP = 0.03
LEGEND_ROW = 7  # legend entries in one row; more (the segment heap's) take two rows
WIDTH_IN = 10.0
DPI = 100


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str  # a key of COLORS


@dataclass
class Lane:
    """One segment or large block: [start, end), uncommitted from ``committed_end`` on."""

    key: str  # stable across reports of the same heap: "segment 0x..." / "large 0x..."
    label: str
    start: int
    end: int
    committed_end: int
    spans: list[Span] = field(default_factory=list)

    @property
    def large(self) -> bool:
        return self.key.startswith("large")


def _tile(start: int, end: int, spans: list[Span], gap_kind: str) -> list[Span]:
    """spans sorted, overlaps trimmed, and every gap in [start, end) filled with gap_kind."""
    out: list[Span] = []
    cursor = start
    for s in sorted(spans, key=lambda s: (s.start, s.end)):
        lo, hi = max(s.start, cursor), min(s.end, end)
        if hi <= lo:
            continue
        if lo > cursor:
            out.append(Span(cursor, lo, gap_kind))
        out.append(Span(lo, hi, s.kind))
        cursor = hi
    if cursor < end:
        out.append(Span(cursor, end, gap_kind))
    return out


def _block_kind(state: str, component: str) -> str:
    if state == FREE:
        return "free"
    if state == BUSY and component:  # the segment heap: coloured by component
        return f"busy_{component}"
    return state


def _subsegment_gaps(spans: list[Span], subsegments: Sequence[Subsegment]) -> list[Span]:
    """Gaps (slack) inside segment-heap subsegments: their header up to the first block, then
    free LFH slots (lfh_free) or heap-internal VS chunks (header)."""
    if not subsegments:
        return spans
    cuts = sorted({p for s in subsegments for p in (s.address, s.first_block, s.end)})
    out: list[Span] = []
    for span in spans:
        if span.kind != "slack":
            out.append(span)
            continue
        points = [span.start, *(c for c in cuts if span.start < c < span.end), span.end]
        for lo, hi in itertools.pairwise(points):
            kind = "slack"
            for sub in subsegments:
                if sub.address <= lo < sub.end:
                    inside = lo >= sub.first_block and sub.component == "lfh"
                    kind = "lfh_free" if inside else "header"
            out.append(Span(lo, hi, kind))
    return out


def _nest(spans: list[Span], seg: Segment) -> list[Span]:
    """A block holding others (win7's UserBlocks) becomes "lfh" around the blocks inside it."""
    out: list[Span] = []
    i = 0
    while i < len(spans):
        s, inner = spans[i], []
        j = i + 1
        while j < len(spans) and spans[j].start < s.end and s.kind != "header":
            inner.append(spans[j])
            j += 1
        if not inner:
            out.append(s)
        else:
            cursor = s.start
            for n in inner:
                if n.start > cursor:
                    out.append(Span(cursor, n.start, "lfh"))
                out.append(n)
                cursor = max(cursor, n.end)
            if cursor < s.end:
                out.append(Span(cursor, s.end, "lfh"))
        i = j
    return out


def _segment_lane(seg: Segment, heap: int, subsegments: Sequence[Subsegment] = ()) -> Lane:
    commit_end = seg.commit_end
    spans = [Span(seg.base, seg.first_block, "header")]
    outer = None  # the block the following ones lie in (a front end's region), if any
    for b in seg.blocks:
        kind = _block_kind(b.state, b.component)
        if outer is not None and b.address < outer.end:  # nested: drawn over its region
            spans.append(Span(b.address, min(b.end, commit_end), kind))
            continue
        outer = b
        spans.append(Span(b.address, min(b.end, commit_end), kind))
    spans = _nest(spans, seg)
    spans += [Span(r.address, r.end, "uncommitted") for r in seg.uncommitted]
    label = f"segment {seg.index}" + (" (heap header)" if seg.base == heap else "")
    tiled = _tile(seg.base, seg.end, spans, "slack" if seg.complete else "unknown")
    inside = [s for s in subsegments if seg.contains(s.address)]
    return Lane(
        key=f"segment 0x{seg.base:x}",
        label=label,
        start=seg.base,
        end=seg.end,
        committed_end=min(commit_end, seg.end),
        spans=_subsegment_gaps(tiled, inside),
    )


def _large_lane(lb: LargeBlock) -> Lane:
    end = lb.region + lb.region_size
    spans = [
        Span(lb.region, lb.user_ptr, "header"),
        Span(lb.user_ptr, min(lb.user_ptr + lb.size, end), "large"),
    ]
    return Lane(
        key=f"large 0x{lb.region:x}",
        label=f"large block ({lb.size:#x})",
        start=lb.region,
        end=end,
        committed_end=end,
        spans=_tile(lb.region, end, spans, "slack"),
    )


def heap_lanes(report: HeapReport) -> list[Lane]:
    """One lane per segment (in list order) and per large block, each tiled by its spans."""
    lanes = [_segment_lane(s, report.heap, report.subsegments) for s in report.segments]
    return lanes + [_large_lane(lb) for lb in report.large_blocks]


# ---------------------------------------------------------------------------- drawing


@dataclass(frozen=True)
class _Scale:
    """Maps addresses of a lane to x in [x0, x0 + width): committed part linear, tail squeezed."""

    start: int
    committed_end: int
    end: int
    x0: float
    width: float

    @property
    def split(self) -> float:
        tail = self.end > self.committed_end
        return self.width * (1 - TAIL_SHARE) if tail else self.width

    def x(self, address: int) -> float:
        if address <= self.committed_end:
            span = max(self.committed_end - self.start, 1)
            return self.x0 + self.split * (address - self.start) / span
        span = max(self.end - self.committed_end, 1)
        return (
            self.x0 + self.split + (self.width - self.split) * (address - self.committed_end) / span
        )

    def ticks(self, n: int) -> list[int]:
        """About n round addresses (power-of-two steps) in the committed part, then its end
        and the lane's end."""
        raw = max((self.committed_end - self.start) // max(n, 1), 1)
        step = 1 << (raw - 1).bit_length()
        first = -(-self.start // step) * step
        out = [self.start, *range(first, self.committed_end, step), self.committed_end]
        return out + ([self.end] if self.end > self.committed_end else [])


def _draw_lane(ax: Axes, lane: Lane, scale: _Scale, y: float, height: float) -> None:
    by_kind: dict[str, list[tuple[float, float]]] = {}
    for s in lane.spans:
        x0, x1 = scale.x(s.start), scale.x(s.end)
        if s.kind in ("free", "pending_free") and x1 - x0 < MIN_MARK:
            # a lone freed block among thousands must still show: widen it about its middle
            x0, x1 = (x0 + x1 - MIN_MARK) / 2, (x0 + x1 + MIN_MARK) / 2
        by_kind.setdefault(s.kind, []).append((x0, x1 - x0))
    busy = len(by_kind.get("busy", []))
    # thin white edges separate busy blocks, unless there are so many they would hide them
    edges = busy and scale.split * WIDTH_IN * DPI / busy > 4
    for kind in sorted(by_kind, key=lambda k: k in ("free", "pending_free")):  # marks on top
        hatched = kind == "uncommitted"
        lined = hatched or (kind == "busy" and edges)
        ax.broken_barh(
            by_kind[kind],
            (y, height),
            facecolors=COLORS[kind],
            edgecolors="#9a9a9a" if hatched else ("white" if lined else "none"),
            linewidth=0.3 if lined else 0,
            hatch="///" if hatched else None,
        )


def _hex_ticks(ax: Axes, scales: list[_Scale], n: int, axes_share: float = 0.96) -> None:
    """Hex tick labels, dropping any that would overlap the one before (7 pt characters are
    about 0.6% of a 10-inch figure; axes_share is the axes' share of the figure width)."""
    positions: list[float] = []
    labels: list[str] = []
    for sc in scales:
        for address in sc.ticks(n) if sc.width > 0.5 * LARGE_WEIGHT else [sc.start]:
            x, label = sc.x(address), f"{address:#x}"
            if positions:
                room = 0.0062 * (len(label) + len(labels[-1])) / 2 + 0.012
                if x - positions[-1] < room / axes_share:
                    continue
            positions.append(x)
            labels.append(label)
    ax.set_xticks(positions, labels, fontsize=7)


def _legend(fig: Figure, kinds: set[str]) -> None:
    handles = [
        Patch(
            facecolor=COLORS[k],
            edgecolor="#9a9a9a" if k == "uncommitted" else COLORS[k],
            hatch="///" if k == "uncommitted" else None,
            label=k.replace("_", " "),
        )
        for k in COLORS
        if k in kinds
    ]
    ncol = len(handles) if len(handles) <= LEGEND_ROW else -(-len(handles) // 2)
    fig.legend(handles=handles, loc="upper right", ncol=ncol, fontsize=8, frameon=False)


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "heapemu"}):
        if out.suffix.lower() == ".svg":
            fig.savefig(out, format="svg", metadata={"Date": None})
        else:
            fig.savefig(out, dpi=DPI, metadata={"Software": None})
    return out


def _kinds(lanes: Sequence[Lane]) -> set[str]:
    return {s.kind for lane in lanes for s in lane.spans}


def save_heap_map(
    reports: HeapReport | Sequence[HeapReport], path: str | Path, *, title: str | None = None
) -> Path:
    """A bar per segment and per large block of each report (PNG or SVG by suffix)."""
    if isinstance(reports, HeapReport):
        reports = [reports]
    rows = [(r, lane) for r in reports for lane in heap_lanes(r)]
    legend = 0.25 if len(_kinds([lane for _, lane in rows])) > LEGEND_ROW else 0.0
    height = 0.9 + legend + 0.62 * len(rows)
    fig = Figure(figsize=(WIDTH_IN, height))
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, (report, lane) in zip(axes, rows, strict=True):
        scale = _Scale(lane.start, lane.committed_end, lane.end, 0.0, 1.0)
        _draw_lane(ax, lane, scale, 0.0, 1.0)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        _hex_ticks(ax, [scale], 1 if lane.large else 8, 0.92)
        heap = f"heap {report.heap:#x} " if len(reports) > 1 else ""
        ax.set_title(f"{heap}{lane.label}", fontsize=8, loc="left", pad=2)
    first = reports[0]
    fig.suptitle(
        title or f"heap {first.heap:#x} ({first.kind}, {first.arch})", x=0.02, ha="left", size=10
    )
    _legend(fig, _kinds([lane for _, lane in rows]))
    fig.subplots_adjust(left=0.04, right=0.96, top=1 - (0.55 + legend) / height,
                        bottom=0.3 / height, hspace=0.9)  # fmt: skip
    return _save(fig, path)


# ---------------------------------------------------------------------------- frames


def _frame_scales(frames: Sequence[tuple[str, HeapReport]]) -> dict[str, _Scale]:
    """One x range per lane key over all frames: segments side by side, then large blocks."""
    union: dict[str, Lane] = {}
    committed: dict[str, int] = {}
    for _, report in frames:
        for lane in heap_lanes(report):
            union.setdefault(lane.key, lane)
            committed[lane.key] = max(committed.get(lane.key, 0), lane.committed_end)
    keys = sorted(union, key=lambda k: (union[k].large, union[k].start))
    weights = [LARGE_WEIGHT if union[k].large else 1.0 for k in keys]
    total = sum(weights) + LANE_GAP * (len(keys) - 1)
    scales = {}
    x = 0.0
    for key, weight in zip(keys, weights, strict=True):
        lane = union[key]
        scales[key] = _Scale(lane.start, committed[key], lane.end, x, weight / total)
        x += (weight + LANE_GAP) / total
    return scales


def _draw_frame(ax: Axes, report: HeapReport, scales: dict[str, _Scale]) -> None:
    for lane in heap_lanes(report):
        _draw_lane(ax, lane, scales[lane.key], 0.0, 1.0)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_yticks([])


def _lane_titles(
    ax: Axes, frames: Sequence[tuple[str, HeapReport]], scales: dict[str, _Scale]
) -> None:
    labels = {lane.key: lane.label for _, r in frames for lane in heap_lanes(r)}
    for key, sc in scales.items():
        ax.text(sc.x0, 1.08, labels[key], fontsize=7, transform=ax.transAxes, va="bottom")


def save_heap_frames(
    frames: Sequence[tuple[str, HeapReport]], path: str | Path, *, title: str | None = None
) -> Path:
    """One row per (label, report) step of the same heap: PNG/SVG strip, or GIF (one frame
    per step, PillowWriter) when the path ends in .gif."""
    if not frames:
        raise ValueError("no frames to draw")
    scales = _frame_scales(frames)
    sc_list = list(scales.values())
    first = frames[0][1]
    heading = title or f"heap {first.heap:#x} ({first.kind}, {first.arch})"
    kinds = _kinds([lane for _, r in frames for lane in heap_lanes(r)])
    if Path(path).suffix.lower() == ".gif":
        return _save_gif(frames, path, scales, heading, kinds)
    height = 1.2 + 0.4 * len(frames)
    fig = Figure(figsize=(WIDTH_IN, height))
    axes = fig.subplots(len(frames), 1, squeeze=False)[:, 0]
    for ax, (label, report) in zip(axes, frames, strict=True):
        _draw_frame(ax, report, scales)
        ax.set_xticks([])
        ax.text(-0.01, 0.5, label, fontsize=7, ha="right", va="center", transform=ax.transAxes)
    _hex_ticks(axes[-1], sc_list, 6, 0.76)
    _lane_titles(axes[0], frames, scales)
    fig.suptitle(heading, x=0.01, ha="left", size=10)
    _legend(fig, kinds)
    fig.subplots_adjust(left=0.2, right=0.96, top=1 - 0.75 / height, bottom=0.35 / height,
                        hspace=0.35)  # fmt: skip
    return _save(fig, path)


def _save_gif(
    frames: Sequence[tuple[str, HeapReport]],
    path: str | Path,
    scales: dict[str, _Scale],
    heading: str,
    kinds: set[str],
) -> Path:
    from matplotlib.animation import FuncAnimation, PillowWriter

    fig = Figure(figsize=(WIDTH_IN, 2.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    fig.subplots_adjust(left=0.04, right=0.96, top=0.66, bottom=0.18)
    _legend(fig, kinds)
    caption = fig.text(0.01, 0.97, "", fontsize=9, va="top")

    def draw(i: int) -> list[Artist]:
        ax.clear()
        label, report = frames[i]
        _draw_frame(ax, report, scales)
        _hex_ticks(ax, list(scales.values()), 6, 0.92)
        _lane_titles(ax, frames, scales)
        caption.set_text(f"{heading}\nstep {i + 1}/{len(frames)}: {label}")
        return []

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    anim = FuncAnimation(fig, draw, frames=len(frames), blit=False)
    anim.save(str(out), writer=PillowWriter(fps=1), dpi=80)
    return out
