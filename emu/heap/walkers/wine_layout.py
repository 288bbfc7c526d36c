"""Wine 8.0's ntdll heap layout, reverse-engineered under heapemu (x86 and x64 side by side).

Nothing here comes from Wine's source code. Every field was established by running the real,
unmodified ntdll.dll in heapemu and reading the bytes it left: create heaps with different
arguments, allocate and free known sizes, and compare the memory and the records its own
RtlWalkHeap/RtlSizeHeap return. The experiments (each is repeated by tests/test_walkers.py,
which compares the walker with RtlWalkHeap after known operation sequences):

- Heap header. A fresh heap dumped at its base shows 0xffeeffee at 2 * pointer size followed by
  u32 2 (as Windows' segment signature and segment flags), then zeros until ``flags``. RtlCreateHeap
  with flags 0x2/0x1/0x4/0x40002 shows them (| HEAP_CLASS_1 0x1000) at x86 0x40 / x64 0x70
  and the NO_SERIALIZE/GENERATE_EXCEPTIONS/ENABLE_EXECUTE subset next to it (force flags).
  Three LIST_ENTRYs follow: one links the heaps (the process heap's and a new heap's entries
  point at each other), one points at a SUBHEAP (``subheap_list``: new subheaps are inserted
  at its head, found by growing a heap with 0x70000-byte blocks), one at large blocks
  (``large_list``: a 0x100000-byte block's region holds a LIST_ENTRY pointing back here).
  ``grow_size``: 0x200000 (x86) / 0x400000 (x64) or the reserve if larger; it doubled to
  0x800000 when x64 grew a second subheap. ``initial_commit``: the RtlCreateHeap commit size
  rounded up to 64 KiB (0x10000 for 0/0x1000, 0x20000 for 0x20000, ...). ``magic``: 'HEAP'.
  ``pending_pos``/``pending_free``: zero unless PEB.NtGlobalFlag has heap checking (0x70):
  then ``pending_free`` points at a 0x1000/0x2000-byte block of the heap (1024 pointers) and
  ``pending_pos`` counts frees; each freed block's header address lands in the array, its
  magic becomes 0xDEAD and RtlWalkHeap still reports it busy (a delayed free).
  A critical section follows (DebugInfo points into the process heap or, for the process heap
  itself, ntdll's data; LockCount is -1 when free). Then the free-list sentinels: 8-byte block
  headers (size 0, flags 3, magic 'FR') each followed by a LIST_ENTRY, 34 of them 0x10 apart
  (x86) / 18 of them 0x20 apart (x64), all linked into one ring in index order. The embedded
  first SUBHEAP follows (x86 0x2b0, x64 0x330) and the first block right after it.
- Free-list size classes: free blocks of every size from the minimum to 0x43000 bytes with busy
  guards between them, then the ring walked from sentinel 0: list i holds block sizes up to
  an inclusive bound: min block, min + A, ..., 0x100 (one list per size), then 0x200, 0x400,
  0x1000 and the rest (0x1000 is on list 16 of x64, 0x1010 on 17). Within a list, freeing
  block 48 then block 78 of 100 x 0x100 left the ring as sentinel, 78, 48, next sentinel.
- SUBHEAP: the second subheap's region starts with this structure and its first block follows
  at 0x18 (x86) / 0x38 (x64), which RtlWalkHeap reports as the region's DataSize (header size).
  ``data_size`` = region end - first block; ``commit_size`` = committed end - (first block + 8);
  both followed the commit as blocks were allocated and freed (Wine decommits: after freeing
  40 x 0x10000 the commit shrank to 0x20000 and so did the field). ``heap`` points at the
  heap. The leading 4 (x86) / 16 (x64) bytes were always zero (they align the first block).
- Block header, 8 bytes before the user pointer (allocations of 1, 8, 0x10, 0x18, 0x20, 0x100):
  u16 size in units of A (8 on x86, 16 on x64; header included), u8 flags, u8 tail, u16 base
  offset, u16 magic. Busy: magic 'US' (0x5355), flags 0, tail = unused bytes after the request
  (size - 8 - requested; RtlSizeHeap returns size - 8 - tail and RtlWalkHeap's overhead is
  tail + 8), so Wine records the requested size. Free: magic 'FR' (0x5246), flag FREE (1), and
  the tail byte holds bits 16-23 of the size in units (a 0x300000-byte heap's first free block
  reads c9 ff 01 02 on x64, a 0x400000 one c9 ff 01 03). The block after a free block has flag
  PREV_FREE (2) and the pointer just below its header points at the free block (freeing block
  17 of 100 x 0x100). Base offset = (block - subheap base) >> 16: 3000 x 0x20 blocks read 0, 1,
  2 as they crossed 64 KiB boundaries, relative to a second subheap's own base there.
- Large blocks: requests above 0xfefd8 (x64) / 0x7efe8 (x86) (found by bisection) get a region
  of their own: a LIST_ENTRY at 4 (x86) / 0x10 (x64), the requested size, the region size from
  the block header on (``block_size``), a word, then a block header (size 0, flag LARGE 4,
  magic 'La' 0x614C) and the data at 0x20 / 0x40. RtlWalkHeap reports them with SegmentIndex 64.
- Not present: RtlSetHeapInformation(HeapCompatibilityInformation, 2) succeeds but the query
  stays 0 and allocations keep the same headers: Wine 8.0 has no low-fragmentation heap.
  RtlSetUserValueHeap/RtlSetUserFlagsHeap leave the headers unchanged.

RtlWalkHeap's own conventions (what the tests compare against): a free block is reported from
its header + sizeof(free entry) (0x10 / 0x18), and a free block that reaches into uncommitted
memory only up to the committed end - 4 * A; a fully committed subheap still gets an
uncommitted record of size 0; every subheap has SegmentIndex 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from emu.win.layouts import Field, Struct

WINE_HEAP = Struct(
    "HEAP (Wine 8.0)",
    0x2B0,
    0x330,
    [
        Field("segment_signature", 0x08, 0x10, "u32"),
        Field("segment_flags", 0x0C, 0x14, "u32"),
        Field("flags", 0x40, 0x70, "u32"),
        Field("force_flags", 0x44, 0x74, "u32"),
        Field("heap_list.next", 0x48, 0x78),
        Field("heap_list.prev", 0x4C, 0x80),
        Field("subheap_list.next", 0x50, 0x88),
        Field("subheap_list.prev", 0x54, 0x90),
        Field("large_list.next", 0x58, 0x98),
        Field("large_list.prev", 0x5C, 0xA0),
        Field("grow_size", 0x60, 0xA8),
        Field("initial_commit", 0x64, 0xB0),
        Field("magic", 0x68, 0xB8, "u32"),
        Field("pending_pos", 0x6C, 0xBC, "u32"),
        Field("pending_free", 0x70, 0xC0),
        Field("lock.DebugInfo", 0x74, 0xC8),  # an RTL_CRITICAL_SECTION
        Field("lock.LockCount", 0x78, 0xD0, "i32"),
        Field("lock.RecursionCount", 0x7C, 0xD4, "i32"),
        Field("lock.OwningThread", 0x80, 0xD8),
        Field("lock.LockSemaphore", 0x84, 0xE0),
        Field("lock.SpinCount", 0x88, 0xE8),
        Field("free_lists", 0x90, 0xF0, "u16"),  # sentinel 0's block header
        Field("subheap", 0x2B0, 0x330, "u32"),  # the embedded first SUBHEAP (offset only)
    ],
)

WINE_SUBHEAP = Struct(
    "SUBHEAP (Wine 8.0)",
    0x18,
    0x38,
    [
        Field("data_size", 0x04, 0x10),
        Field("commit_size", 0x08, 0x18),
        Field("entry.next", 0x0C, 0x20),
        Field("entry.prev", 0x10, 0x28),
        Field("heap", 0x14, 0x30),
    ],
)

WINE_BLOCK = Struct(
    "block (Wine 8.0)",
    0x08,
    0x08,
    [
        Field("size", 0x0, 0x0, "u16"),  # units of A
        Field("flags", 0x2, 0x2, "u8"),
        Field("tail_size", 0x3, 0x3, "u8"),  # free blocks: bits 16-23 of the size
        Field("base_offset", 0x4, 0x4, "u16"),
        Field("magic", 0x6, 0x6, "u16"),
    ],
)

WINE_FREE_ENTRY = Struct(  # a free block: header + LIST_ENTRY (also each sentinel)
    "free entry (Wine 8.0)",
    0x10,
    0x18,
    [
        Field("entry.next", 0x08, 0x08),
        Field("entry.prev", 0x0C, 0x10),
    ],
)

WINE_LARGE = Struct(
    "large block (Wine 8.0)",
    0x20,
    0x40,
    [
        Field("entry.next", 0x04, 0x10),
        Field("entry.prev", 0x08, 0x18),
        Field("data_size", 0x0C, 0x20),
        Field("block_size", 0x10, 0x28),
        Field("block.size", 0x18, 0x38, "u16"),
        Field("block.flags", 0x1A, 0x3A, "u8"),
        Field("block.magic", 0x1E, 0x3E, "u16"),
    ],
)

HEAP_MAGIC = 0x50414548  # 'HEAP'
SEGMENT_SIGNATURE = 0xFFEEFFEE
MAGIC_BUSY = 0x5355  # 'US'
MAGIC_FREE = 0x5246  # 'FR'
MAGIC_LARGE = 0x614C  # 'La'
MAGIC_PENDING = 0xDEAD  # freed into the delayed-free array
FLAG_FREE = 0x1
FLAG_PREV_FREE = 0x2
FLAG_LARGE = 0x4
BASE_OFFSET_SHIFT = 16  # base_offset counts 64 KiB from the subheap base
REGION_ALIGN = 0x10000
LARGE_SEGMENT_INDEX = 64  # RtlWalkHeap's SegmentIndex for large blocks
BUCKET_STEPS = (0x200, 0x400, 0x1000)  # bounds after the one-size-per-list part (to 0x100)
SMALL_BUCKET_LIMIT = 0x100


@dataclass(frozen=True)
class WineParams:
    """The numbers that differ between the architectures besides structure offsets."""

    alignment: int  # A: block granularity, size unit
    min_block_size: int  # the smallest block (allocations of 1 byte)
    free_list_stride: int  # sentinel spacing in the header

    def bucket_bounds(self) -> tuple[int, ...]:
        """Inclusive upper size bound of each free list but the last (which is unbounded)."""
        small = range(self.min_block_size, SMALL_BUCKET_LIMIT + 1, self.alignment)
        return (*small, *BUCKET_STEPS)


WINE_PARAMS = {
    "x86": WineParams(alignment=8, min_block_size=0x18, free_list_stride=0x10),
    "x64": WineParams(alignment=16, min_block_size=0x30, free_list_stride=0x20),
}
