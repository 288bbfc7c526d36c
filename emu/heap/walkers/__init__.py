"""Heap walkers: an independent view of a heap, read from emulated memory only.

``walk_heap(proc, heap)`` decodes a heap of the allocator loaded in ``proc`` (heapemu's builtin
heap, module "ntheap", or Wine 8.0's ntdll.dll) into a ``HeapReport``: header fields, segments
with their blocks and uncommitted ranges, free lists in list order, large blocks, and every
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
)
from emu.heap.walkers.wine import WineWalker
from emu.process.core import ProcessCore

__all__ = [
    "CORRUPTION_KINDS",
    "KINDS",
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
    "WineWalker",
    "detect_kind",
    "walk_heap",
]

#: Walker kind -> (walker class, name of the module that provides that allocator).
KINDS: dict[str, tuple[type[HeapWalker], str]] = {
    "builtin": (BuiltinWalker, "ntheap"),
    "wine": (WineWalker, "ntdll.dll"),
}


def detect_kind(proc: ProcessCore) -> str:
    """The walker kind for the allocator module loaded in proc."""
    loaded = {m.name.lower() for m in proc.modules}
    found = [kind for kind, (_, module) in KINDS.items() if module in loaded]
    if len(found) != 1:
        what = "both" if found else "neither"
        raise ValueError(f"{what} of ntheap / ntdll.dll is loaded: pass kind='builtin'|'wine'")
    return found[0]


def walk_heap(proc: ProcessCore, heap: int, kind: str | None = None) -> HeapReport:
    """Walk the heap at ``heap``; ``kind`` ("builtin"/"wine") defaults to the loaded module's."""
    if kind is None:
        kind = detect_kind(proc)
    if kind not in KINDS:
        raise ValueError(f"unknown heap kind {kind!r} (expected one of {sorted(KINDS)})")
    walker_class, _ = KINDS[kind]
    return walker_class(proc, heap).walk()
