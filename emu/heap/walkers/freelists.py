"""Free lists: one ring of LIST entries through every list's sentinel, in index order.

Both layouts link all free blocks and all sentinels into a single ring (sentinel 0, list 0's
blocks, sentinel 1, list 1's blocks, ...), so a list is the run of blocks after its sentinel.
The ring is walked forwards from sentinel 0; at the first broken link the walk turns round and
goes backwards from sentinel 0, so one bad link loses nothing. Links point at the LIST entry
``LINK_OFFSET`` bytes into a block, not at its header.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emu.heap.walkers.model import (
    FREE,
    FREE_LIST_BUCKET,
    FREE_LIST_BUSY,
    FREE_LIST_LINK,
    FREE_LIST_LOOP,
    FREE_NOT_LISTED,
    LINK_OFFSET,
    OVERLAP,
    Block,
    FreeList,
    FreeListEntry,
)
from emu.heap.walkers.reader import UnreadableError

if TYPE_CHECKING:
    from emu.heap.walkers.base import HeapWalker

MAX_RING = 1 << 20


class _Ring:
    def __init__(self, w: HeapWalker):
        self.w = w
        self.lo = LINK_OFFSET
        self.heads = w.free_list_heads()
        self.head_index = {h.address: i for i, h in enumerate(self.heads)}
        self.blocks: dict[int, Block] = {b.address: b for b in w.report.blocks}

    def flink(self, node: int) -> int:
        return self.w.mem.ptr(node + self.lo)

    def blink(self, node: int) -> int:
        return self.w.mem.ptr(node + self.lo + self.w.ps)

    def why_not_node(self, node: int) -> str | None:
        """None when node may be on a free list (a sentinel or a block header), else why not."""
        if node in self.head_index or node in self.blocks:
            return None
        rep = self.w.report
        seg = next((s for s in rep.segments if s.contains(node)), None)
        if seg is None:
            return "outside the heap"
        inner = rep.block_at(node)
        try:
            raw = self.w.decode_block(node, seg)
            real = raw.magic_ok and raw.state == FREE
        except UnreadableError:
            real = False
        if inner is not None:
            if not real:
                return f"into the middle of block 0x{inner.address:x}"
            # a genuine free block inside another one: the other's size swallowed it
            self.w.corrupt(
                OVERLAP, node, f"free block 0x{node:x} lies inside block 0x{inner.address:x}"
            )
            return None
        # a part of the segment the block walk did not reach: accept a real free header
        return None if real else "to no block header"

    def forward(self) -> tuple[list[int], bool]:
        """Nodes from sentinel 0 in flink order, and whether a link broke."""
        w, start = self.w, self.heads[0].address
        nodes, seen, cur = [start], {start}, start
        for _ in range(MAX_RING):
            try:
                link = self.flink(cur)
            except UnreadableError:
                w.corrupt(FREE_LIST_LINK, cur, f"flink at 0x{cur + self.lo:x} is unreadable")
                return nodes, True
            nxt = link - self.lo
            if nxt == start:
                return nodes, False
            why = self.why_not_node(nxt)
            if why:
                w.corrupt(FREE_LIST_LINK, cur, f"flink 0x{link:x} points {why}")
                return nodes, True
            if nxt in seen:
                w.corrupt(FREE_LIST_LOOP, cur, f"flink 0x{link:x} leads back to 0x{nxt:x}")
                return nodes, True
            try:
                back = self.blink(nxt)
            except UnreadableError:
                back = None
            if back != cur + self.lo:
                # nxt's blink is wrong, unless it names another node whose flink is ours: then
                # cur's flink skipped ahead (or sideways) and is the bad link
                other = None if back is None else back - self.lo
                if other is not None and other != cur and self.why_not_node(other) is None:
                    try:
                        skipped = self.flink(other) == link
                    except UnreadableError:
                        skipped = False
                    if skipped:
                        w.corrupt(
                            FREE_LIST_LINK,
                            cur,
                            f"flink 0x{link:x} skips to 0x{nxt:x}, whose predecessor is "
                            f"0x{other:x}",
                        )
                        return nodes, True
                shown = "unreadable" if back is None else f"0x{back:x}"
                w.corrupt(FREE_LIST_LINK, nxt, f"blink {shown} does not point back at 0x{cur:x}")
            nodes.append(nxt)
            seen.add(nxt)
            cur = nxt
        w.corrupt(FREE_LIST_LOOP, start, f"free lists longer than {MAX_RING} entries")
        return nodes, True

    def backward(self, seen: set[int]) -> tuple[list[int], bool]:
        """Nodes before sentinel 0 in blink order until one the forward walk saw (True)."""
        w, start = self.w, self.heads[0].address
        nodes: list[int] = []
        mine: set[int] = set()
        cur = start
        for _ in range(MAX_RING):
            try:
                link = self.blink(cur)
            except UnreadableError:
                w.corrupt(FREE_LIST_LINK, cur, "blink is unreadable")
                return nodes, False
            prv = link - self.lo
            if prv in seen:
                return nodes, True
            why = self.why_not_node(prv)
            if why:
                w.corrupt(FREE_LIST_LINK, cur, f"blink 0x{link:x} points {why}")
                return nodes, False
            if prv in mine:
                w.corrupt(FREE_LIST_LOOP, cur, f"blink 0x{link:x} leads back to 0x{prv:x}")
                return nodes, False
            nodes.append(prv)
            mine.add(prv)
            cur = prv
        return nodes, False


def walk_free_lists(w: HeapWalker) -> None:
    """Fill report.free_lists and check them against the blocks' states."""
    ring = _Ring(w)
    rep = w.report
    rep.free_lists = [
        FreeList(i, h.address, h.min_size, h.max_size) for i, h in enumerate(ring.heads)
    ]
    if not ring.heads:
        return
    forward, broken = ring.forward()
    complete = not broken
    order: list[int | None] = list(forward)
    if broken:
        backward, complete = ring.backward(set(forward))
        order.append(None)  # the gap between the two walks
        order.extend(reversed(backward))

    # a node belongs to the list of the last sentinel before it; after the gap, to the list
    # before the next sentinel (or, with none, to the last list seen before the gap)
    index = 0
    in_gap: list[int] = []
    after_gap = False
    listed: set[int] = set()
    for node in order:
        if node is None:
            after_gap = True
            continue
        if node in ring.head_index:
            new = ring.head_index[node]
            for n in in_gap:
                _add(w, ring, rep.free_lists[max(new - 1, 0)], n, listed)
            in_gap, after_gap, index = [], False, new
            continue
        if after_gap:
            in_gap.append(node)
        else:
            _add(w, ring, rep.free_lists[index], node, listed)
    for n in in_gap:
        _add(w, ring, rep.free_lists[index], n, listed)

    if complete:
        for b in rep.free_blocks():
            if b.address not in listed:
                w.corrupt(FREE_NOT_LISTED, b.address, "free block is on no free list")


def _add(w: HeapWalker, ring: _Ring, fl: FreeList, node: int, listed: set[int]) -> None:
    listed.add(node)
    block = ring.blocks.get(node)
    try:
        flink, blink = ring.flink(node), ring.blink(node)
    except UnreadableError:
        flink = blink = 0
    if block is not None:
        size, state = block.size, block.state
    else:  # beyond where the block walk stopped: decode it here
        seg = next(s for s in w.report.segments if s.contains(node))
        try:
            raw = w.decode_block(node, seg)
        except UnreadableError:
            return
        size, state = raw.size, raw.state
    fl.entries.append(FreeListEntry(node, size, flink, blink))
    if state != FREE:
        w.corrupt(FREE_LIST_BUSY, node, f"block on free list {fl.index} is not marked free")
    if size < fl.min_size or (fl.max_size is not None and size > fl.max_size):
        bound = "" if fl.max_size is None else f"0x{fl.max_size:x}"
        w.corrupt(
            FREE_LIST_BUCKET,
            node,
            f"size 0x{size:x} on free list {fl.index} [0x{fl.min_size:x}, {bound}]",
        )
