"""Heap views, data first: WinDbg's ``!heap -s``, ``!heap -h``, ``!heap -i``, ``!address``, ``dt``.

Each view is ``build_*(proc, ...)`` -> a dataclass with ``to_json()`` / ``from_json()``, and
``render_*(view)`` -> text. Views read the process through the heap walkers (``emu.heap.walkers``)
and
its memory model only, so they work the same for the builtin heap and Wine's ntdll, x86 and x64.
A view of every heap lists them as the allocator does: the builtin heap from PEB.ProcessHeaps,
Wine through its RtlGetProcessHeaps (pass ``allocator=`` to reuse an ``Allocator``).

===============  ===========================  ============================================
view             build                        text
===============  ===========================  ============================================
heap summary     ``build_summary(proc)``      ``render_summary``: one row per heap
heap entries     ``build_entries(proc, h)``   ``render_entries``: header, free lists, blocks
                                              (``lfh=True``: !heap -hl's LFH data regions)
heap entry       ``build_entry(proc, addr)``  ``render_entry``: one block, field by field
address          ``build_address(proc)``      ``render_address``: regions, ``usage="Heap"``
dt               ``build_dt(proc, a, s)``     ``render_dt``: structure ``s`` (default: the
                                              heap header) at ``a``, field by field
===============  ===========================  ============================================

A heap whose walker names components (the segment heap: back end, VS, LFH) gets per-component
summary columns and its entries grouped by component, subsegment by subsegment.
"""

from __future__ import annotations

from emu.views.address import USAGES, AddressRow, AddressView, build_address, render_address
from emu.views.common import NotInHeapError, list_heaps
from emu.views.dt import DtRow, DtView, build_dt, dt_address, render_dt
from emu.views.entries import (
    ComponentEntries,
    CorruptionLine,
    EntriesView,
    EntryLine,
    FreeListLine,
    LargeLine,
    RangeLine,
    SegmentEntries,
    UnitEntries,
    build_entries,
    entries_from_report,
    filter_entries,
    parse_size_range,
    render_entries,
)
from emu.views.entry import (
    EntryView,
    HeaderFieldLine,
    allocation_of,
    build_entry,
    render_entry,
    with_allocation,
)
from emu.views.summary import (
    ComponentUsage,
    HeapSummaryRow,
    SummaryView,
    build_summary,
    render_summary,
)

__all__ = [
    "USAGES",
    "AddressRow",
    "AddressView",
    "ComponentEntries",
    "ComponentUsage",
    "CorruptionLine",
    "DtRow",
    "DtView",
    "EntriesView",
    "EntryLine",
    "EntryView",
    "FreeListLine",
    "HeaderFieldLine",
    "HeapSummaryRow",
    "LargeLine",
    "NotInHeapError",
    "RangeLine",
    "SegmentEntries",
    "SummaryView",
    "UnitEntries",
    "allocation_of",
    "build_address",
    "build_dt",
    "build_entries",
    "build_entry",
    "build_summary",
    "dt_address",
    "entries_from_report",
    "filter_entries",
    "list_heaps",
    "parse_size_range",
    "render_address",
    "render_dt",
    "render_entries",
    "render_entry",
    "render_summary",
    "with_allocation",
]
