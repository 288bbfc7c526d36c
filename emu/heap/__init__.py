"""Heaps: the allocator kinds (registry), ``Allocator`` (the Rtl*Heap entry points as Python
methods), walkers that read heaps from emulated memory, and in-emulator replay."""

from emu.heap.allocator import RTL_HEAP_WALK_ENTRY, Allocator, HeapError, HeapWalkEntry

__all__ = ["RTL_HEAP_WALK_ENTRY", "Allocator", "HeapError", "HeapWalkEntry"]
