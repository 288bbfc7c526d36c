"""Heap walkers: an independent view of a heap, read from emulated memory only.

A walker (``BuiltinWalker``, ``WineWalker``, ``SegmentWalker``; ``emu.heap.registry.walk_heap``
picks the one of the allocator loaded in ``proc``) decodes a heap into a ``HeapReport``: header
fields, segments with their blocks and uncommitted ranges, free lists in list order, large blocks,
and every
corruption found on the way (``Corruption(kind, address, detail)``). The walkers never call the
allocator, so they see what its own RtlWalkHeap/RtlValidateHeap may hide; they never raise on
garbage and every loop is bounded.
"""

from __future__ import annotations

from emu.heap.walkers.base import HeapWalker
from emu.heap.walkers.builtin import BuiltinWalker
from emu.heap.walkers.model import (
    CORRUPTION_KINDS,
    Block,
    Corruption,
    FreeList,
    FreeListEntry,
    HeapReport,
    HeapSummary,
    LargeBlock,
    Range,
    Segment,
    Subsegment,
)
from emu.heap.walkers.segment import SegmentWalker
from emu.heap.walkers.wine import WineWalker

__all__ = [
    "CORRUPTION_KINDS",
    "Block",
    "BuiltinWalker",
    "Corruption",
    "FreeList",
    "FreeListEntry",
    "HeapReport",
    "HeapSummary",
    "HeapWalker",
    "LargeBlock",
    "Range",
    "Segment",
    "SegmentWalker",
    "Subsegment",
    "WineWalker",
]
