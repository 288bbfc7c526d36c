"""Seed 002's story as walker reports, one per step: what the docs and picture tests draw.

A growable heap; 100 allocations of 0x100; free a[17] and allocate; free a[18] and allocate
(a[18] comes back); free that a[18], a[48] and a[78]; one 0x100000 block (a large block in a
region of its own). The program counts from 0: the transcript's "17th chunk" is a[17]. The
same steps as ``heapemu demo`` and the shipped ``emu/scenarios/lec04_growable_heap.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emu.heap.allocator import Allocator
from emu.heap.registry import walk_heap
from emu.heap.walkers import HeapReport
from emu.win.ntdefs import HEAP_GROWABLE


@dataclass
class Story:
    heap: int
    blocks: list[int]  # the 100 allocations, in order (#1 is blocks[0])
    live: dict[int, int] = field(default_factory=dict)  # user pointer -> requested size, at the end
    freed: list[int] = field(default_factory=list)  # user pointers freed and not reused
    big: int = 0
    frames: list[tuple[str, HeapReport]] = field(default_factory=list)


def seed002_story(allocator: Allocator) -> Story:
    """Run the steps on a new heap of ``allocator``, walking the heap after each one."""
    a, proc = allocator, allocator.proc
    heap = a.create_heap(HEAP_GROWABLE)
    story = Story(heap, [])

    def snap(label: str) -> None:
        story.frames.append((label, walk_heap(proc, heap)))

    def alloc(size: int) -> int:
        p = a.alloc(heap, size)
        story.live[p] = size
        if p in story.freed:
            story.freed.remove(p)
        return p

    def free(p: int) -> None:
        a.free(heap, p)
        del story.live[p]
        story.freed.append(p)

    snap("create (HEAP_GROWABLE)")
    story.blocks = [alloc(0x100) for _ in range(100)]
    snap("100 x alloc 0x100")
    free(story.blocks[17])
    snap("free a[17]")
    alloc(0x100)
    snap("alloc 0x100")
    free(story.blocks[18])
    snap("free a[18]")
    again = alloc(0x100)
    snap("alloc 0x100 (a[18] again)" if again == story.blocks[18] else "alloc 0x100")
    for p in (again, story.blocks[48], story.blocks[78]):
        free(p)
    snap("free a[18], a[48], a[78]")
    story.big = alloc(0x100000)
    snap("alloc 0x100000")
    return story
