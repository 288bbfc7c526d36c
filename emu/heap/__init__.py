"""Heaps: the allocator kinds (``registry``), ``Allocator`` (the Rtl*Heap entry points as
Python methods), walkers that read heaps from emulated memory, seed 001's cross-heap frees, and
in-emulator replay."""

from emu.heap.allocator import RTL_HEAP_WALK_ENTRY, Allocator, HeapError, HeapWalkEntry
from emu.heap.registry import (
    ALLOCATOR_NAMES,
    ALLOCATORS,
    AllocatorKind,
    allocator_kind,
    detect_kind,
    walk_heap,
)

__all__ = [
    "ALLOCATORS",
    "ALLOCATOR_NAMES",
    "RTL_HEAP_WALK_ENTRY",
    "Allocator",
    "AllocatorKind",
    "HeapError",
    "HeapWalkEntry",
    "allocator_kind",
    "detect_kind",
    "walk_heap",
]
