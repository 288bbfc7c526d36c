"""``address``: every region of the process with its state and usage, like ``!address``.

A row is one run of pages of one region with the same state and protection, so the rows of a
region tile it exactly (and the free gaps between regions, with ``include_free``). Usage
categories are WinDbg's: Heap (segments and large blocks, matched by walking every heap),
Image (PE images and heapemu's flat code), Stack, TEB, PEB, Other (KUSER_SHARED_DATA, loader
data, heapemu's own pages), Free. ``usage="Heap"`` is ``!address /f:Heap``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emu.heap.allocator import Allocator
from emu.nt.memory import RESERVED, Region
from emu.process.core import ProcessCore
from emu.views.common import JsonView, hexp, resolve_heaps, walk_heaps
from emu.win.ntdefs import (
    MEM_COMMIT,
    MEM_FREE,
    MEM_RESERVE,
    MEM_STATE_NAMES,
    MEM_TYPE_NAMES,
    PAGE_SIZE,
    protection_name,
)

PROTECT_WIDTH = 27  # "PAGE_READWRITE | PAGE_GUARD"
USAGES = ("Heap", "Image", "Stack", "TEB", "PEB", "Other", "Free")


@dataclass
class AddressRow:
    base: int
    end: int
    size: int
    type: str  # MEM_PRIVATE / MEM_IMAGE / MEM_MAPPED ('' for free memory)
    state: str  # MEM_COMMIT / MEM_RESERVE / MEM_FREE
    protect: str  # '' unless committed
    usage: str  # one of USAGES
    detail: str  # heap ID and handle, image name, what the region holds
    region: int  # allocation base (the reservation this run belongs to)


@dataclass
class AddressView(JsonView):
    arch: str
    filter: list[str] = field(default_factory=list)  # usages kept ([] = all)
    rows: list[AddressRow] = field(default_factory=list)


def heap_regions(proc: ProcessCore, heaps: list[int]) -> dict[int, str]:
    """Region base -> WinDbg's heap detail, for every segment and large block of heaps."""
    a = proc.arch.name
    out: dict[int, str] = {}
    for i, report in enumerate(walk_heaps(proc, heaps)):
        handle = hexp(report.heap, a)
        for seg in report.segments:
            out[seg.base] = f"ID: {i}; Handle: {handle}; Type: Segment {seg.index}"
        for lb in report.large_blocks:
            out[lb.region] = f"ID: {i}; Handle: {handle}; Type: Large block"
    return out


def classify(region: Region, heap_detail: str | None) -> tuple[str, str]:
    """(usage category, detail) of one region."""
    if heap_detail is not None:
        return "Heap", heap_detail
    usage = region.usage
    if usage.startswith("image "):
        return "Image", usage[len("image ") :]
    if usage.startswith("flat "):
        return "Image", f"{usage[len('flat ') :]} (flat code)"
    if usage == "stack":
        return "Stack", "thread 0"
    if usage in ("TEB", "PEB"):
        return usage, "thread 0" if usage == "TEB" else "process"
    return "Other", usage or "unknown"


def _rows(region: Region, usage: str, detail: str) -> list[AddressRow]:
    rows = []
    for start, size, page in region.runs():
        state = MEM_RESERVE if page == RESERVED else MEM_COMMIT
        rows.append(
            AddressRow(
                base=start,
                end=start + size,
                size=size,
                type=MEM_TYPE_NAMES.get(region.type, f"0x{region.type:x}"),
                state=MEM_STATE_NAMES[state],
                protect="" if page == RESERVED else protection_name(page),
                usage=usage,
                detail=detail,
                region=region.base,
            )
        )
    return rows


def _free(start: int, end: int) -> AddressRow:
    return AddressRow(start, end, end - start, "", MEM_STATE_NAMES[MEM_FREE], "", "Free", "", start)


def build_address(
    proc: ProcessCore,
    heaps: list[int] | None = None,
    *,
    allocator: Allocator | None = None,
    usage: str | list[str] | None = None,
    include_free: bool = False,
) -> AddressView:
    """Rows for every region; ``usage`` ("Heap" or "Heap,Stack" or a list) keeps only those."""
    wanted = _usages(usage)
    details = heap_regions(proc, resolve_heaps(proc, heaps, allocator))
    rows: list[AddressRow] = []
    cursor = proc.arch.user_min
    for region in proc.memory.regions():
        if include_free and region.base > cursor:
            rows.append(_free(cursor, region.base))
        rows += _rows(region, *classify(region, details.get(region.base)))
        cursor = max(cursor, region.end)
    top = (proc.arch.user_max + 1) // PAGE_SIZE * PAGE_SIZE
    if include_free and cursor < top:
        rows.append(_free(cursor, top))
    if wanted:
        rows = [r for r in rows if r.usage in wanted]
    return AddressView(proc.arch.name, sorted(wanted), rows)


def _usages(usage: str | list[str] | None) -> set[str]:
    if usage is None:
        return set()
    names = usage.split(",") if isinstance(usage, str) else usage
    canonical = {u.lower(): u for u in USAGES}
    wanted = {n.strip().lower() for n in names if n.strip()}
    unknown = sorted(wanted - set(canonical))
    if unknown:
        raise ValueError(f"unknown usage {unknown[0]!r} (expected one of {', '.join(USAGES)})")
    return {canonical[n] for n in wanted}


# ---------------------------------------------------------------------------- text


def render_address(view: AddressView) -> str:
    w = 16 if view.arch == "x64" else 8
    head = (
        f"{'BaseAddr':>{w}} {'EndAddr+1':>{w}} {'RgnSize':>{w}} {'Type':<11} {'State':<11} "
        f"{'Protect':<{PROTECT_WIDTH}} Usage"
    )
    rows = []
    for r in view.rows:
        detail = f"[{r.detail}]" if r.detail else ""
        rows.append(
            f"{r.base:>{w}x} {r.end:>{w}x} {r.size:>{w}x} {r.type:<11} {r.state:<11} "
            f"{r.protect:<{PROTECT_WIDTH}} {r.usage:<6} {detail}".rstrip()
        )
    lines = [head, "-" * max([len(head), *map(len, rows)]), *rows]
    if view.filter:
        lines.append(f"({len(view.rows)} rows with usage {', '.join(view.filter)})")
    return "\n".join(lines)
