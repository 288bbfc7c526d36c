/*
 * segheap.c - heapemu's Windows 10 segment heap, written for heapemu in freestanding C.
 *
 * One source for x86 and x64 (asm/generate.py: asm/segheap_x86.s, asm/segheap_x64.s; natively
 * on Linux: tests/native with NTHEAP_NATIVE). Same exports, prototypes, flags and system calls
 * as ntheap.c; segheap.h has the structures and the sources of their offsets. The design
 * follows the published descriptions of the Windows 10 segment heap (Yason, BH USA 2016, and
 * the x86 20H1 structure dump in shared/seeds/004); the code is our own.
 *
 * Components and routing (request size n, defaults; all limits settable, see below):
 *   LFH       n <= 0x3FF0 once the size class (bucket) is active;
 *   VS        n <= 0x20000 otherwise (variable size chunks in VS subsegments);
 *   back end  0x20000 < n <= 0x7F000: whole pages of a 1 MiB segment (no header);
 *   large     n > 0x7F000: an own 64 KiB-aligned reservation with a guard page after it.
 * VS and LFH subsegments are page ranges of the back end (RangeFlags VS / LFH).
 *
 * Guard pages: Yason (BH USA 2016, "Guard Pages") adds a guard page after VS and LFH
 * subsegments of 64 KiB or more, as after large blocks, so that a sequential overflow off the
 * end of the subsegment faults. Here the back end allocates such a subsegment's page range one
 * page longer and leaves that last page reserved but uncommitted (decommitting it if the free
 * range it came from had it committed), as the large blocks' guard page is: the guard page is
 * part of the range (UnitSize counts it, CommittedPageCount does not), the subsegment itself
 * (VS Size, LFH blocks) covers the pages before it, and freeing the subsegment frees the guard
 * page with the range. A VS or LFH range has a guard page exactly when it has more than 16
 * units (SEGHEAP_SUBSEGMENT_GUARD_MIN / page), the last one.
 *
 * Memory:
 *   heap      RtlCreateHeap reserves sizeof(_SEGMENT_HEAP) plus room for 128 LFH buckets
 *             (page-rounded) and commits sizeof(_SEGMENT_HEAP) bytes only; the rest (the
 *             "LFH context extension") is committed page by page as buckets are carved from
 *             it at activation (AllocatedBase, UncommittedBase, ReservedLimit).
 *   segments  1 MiB reservations aligned to 1 MiB (reserve 1 MiB; if the kernel's answer is
 *             not aligned, release it, reserve 2 MiB, release that, and reserve the aligned
 *             1 MiB inside it at a fixed address). The first FirstDescriptorIndex pages (x64 2,
 *             x86 1) hold 256 page range descriptors and are committed with the segment; the
 *             other pages are committed when a range that covers them is allocated, per page
 *             (RANGE_COMMITTED in each page's descriptor). Segments are created lazily.
 *   decommit  a freed range keeps its committed pages while the heap's free committed pages
 *             (MemStats.FreeCommittedPages) stay within FreeCommitLimit (default 16 pages);
 *             otherwise the freed range's committed pages are decommitted (MEM_DECOMMIT, per
 *             run). A segment whose pages are all free is released, unless it is the only one.
 *
 * Back end: free ranges are nodes of SegContexts[0].FreePageRanges, a red-black tree ordered
 * by (UnitSize << 8 | 255 - CommittedPageCount, address): allocation takes the first node of
 * at least the needed size, i.e. best fit and, among equal sizes, the most committed range,
 * then the lowest address. The range is split (the front is used, the rest goes back to the
 * tree); a freed range coalesces with free ranges on both sides. Every descriptor that is not
 * the first of its range holds its distance to the first (UnitOffset), free ranges included.
 *
 * VS: subsegments of max(64 KiB, the request rounded up to 64 KiB) from the back end, committed
 * whole. Chunks tile a subsegment after its header; a busy chunk has an encoded header
 * (HeaderBits ^ chunk address ^ HeapKey) with its size and its predecessor's size in VS units
 * (x64 16 bytes, x86 8) and AllocatedChunkBits (page offset in the subsegment, encoded with the
 * low byte of chunk ^ HeapKey; an unused-bytes flag; a skip-during-walk flag for internal
 * chunks). Free chunks (encoded HeaderBits, then a tree node) are in VsContext.FreeChunkTree
 * ordered by (size, address): best fit, lowest address among equals. A chunk is split when the
 * remainder is at least 0x20 bytes (the front is used); frees coalesce with both neighbours;
 * a subsegment that becomes one free chunk goes back to the back end.
 *
 * LFH: 128 buckets (1-64: 16-byte steps to 0x400; 65-80: 64; 81-96: 128; 97-112: 256;
 * 113-128: 512, to 0x4000). An inactive bucket's Buckets[i] is 1 | UsageData << 1; UsageData
 * bits 0-4 count live VS blocks of the class (allocations - frees), bits 5-15 requests. A
 * request that makes the live count reach LfhActivationLive (17) or the request count reach
 * LfhActivationTotal (2040) activates the bucket and is itself served by the LFH. A subsegment
 * is 1-16 pages (the smallest power of two holding max(32, blocks the bucket already has)
 * blocks, at most 64 KiB); its header, a bitmap of 2 bits per block in 64-bit words, then the
 * blocks from FirstBlockOffset (16-aligned). Allocation takes the first subsegment of the
 * bucket's AvailableSubsegmentList, starts at the bitmap word of FreeHint, goes to the first
 * word with a free block and takes the first free block at or after a random position (0-31,
 * cyclically) in that word. The generator is xorshift32 per heap, seeded from RandomSeed
 * (deterministic by default) and advanced once per LFH allocation. Free clears the bits,
 * FreeHint = min(FreeHint, index), FreeCount++, and puts the subsegment first in the available
 * list; an empty subsegment goes back to the back end unless it is the bucket's only one.
 *
 * Large blocks: NtAllocateVirtualMemory reserves the request rounded up to pages plus a 0x1000
 * guard page (reservations are 64 KiB-aligned) and commits all but the guard page. The
 * HEAP_LARGE_ALLOC_DATA (tree node, VirtualAddress | UnusedBytes, page count) is an internal
 * VS chunk of the same heap (Windows uses a separate metadata heap), skipped by RtlWalkHeap;
 * the nodes are in LargeAllocMetadata ordered by address.
 *
 * Choices where the published facts are silent (besides the ones above):
 *   - keys and the seed are per heap (Windows: process-wide in RtlpHpHeapGlobals; this code
 *     has no writable globals), kept in the place of MemStats' large-page fields; a heap
 *     created without parameters copies them from PEB.ProcessHeap when that is a segment heap;
 *   - the unused-bytes trailer of LFH and VS blocks: the last byte holds the count when it is
 *     below 0x80, else the last two bytes hold count | 0x8000; the slack between the request
 *     and the trailer is filled with 0xAB (RtlValidateHeap checks it);
 *   - a free LFH slot's first pointer-sized word holds slot ^ LfhKey (checked by
 *     RtlValidateHeap), so an overflow into a free neighbour slot is detected;
 *   - HEAP_TAIL_CHECKING_ENABLED / HEAP_FREE_CHECKING_ENABLED are ignored (Windows does not
 *     use the segment heap for heaps with debugging flags); a caller-supplied base and the
 *     reserve / commit sizes are ignored (the heap always grows);
 *   - SegContexts[1] (the later builds' second context) is initialised but serves nothing,
 *     following Yason's thresholds (fact sheet C: large blocks from 0x7F001 bytes);
 *   - RtlReAllocateHeap stays in place when the new size routes to the same component (LFH:
 *     the same bucket; back end and large: the same page count; VS: shrinks split off
 *     remainders of at least 0x20 bytes, growth takes a free successor chunk) without touching
 *     the LFH usage counters; otherwise it allocates (counted like any request), copies, frees;
 *   - VS covers requests up to and including 0x20000 bytes (fact sheet C; "< 128 KiB" in
 *     Yason's overview), the back end up to and including 0x7F000;
 *   - no per-block padding, no delayed frees, no affinity slots (one set of subsegments per
 *     bucket), VS subsegments committed whole.
 *
 * RtlWalkHeap order: for each segment (creation order) a region entry, then its ranges in
 * address order: free ranges as runs of committed (Flags 0) and uncommitted (UNCOMMITTED)
 * pages, back-end blocks, VS chunks (busy and free; internal chunks skipped), busy LFH blocks
 * (free LFH slots are not reported), a subsegment's guard page as an UNCOMMITTED entry after
 * its blocks; then large blocks in address order. Busy entries have
 * BUSY | BLOCK | COMMITTED, DataSize = the request, OverheadBytes = block bytes - request
 * (at most 255); free VS chunks report the bytes after their header.
 *
 * RtlValidateHeap(heap, 0, NULL) checks every structure: signatures, descriptor tiling and
 * flags, tree shapes and orders, every VS chunk header, free-chunk and free-range membership,
 * LFH bitmaps, counts, FreeHint, slack fill, trailers, free-slot words, lists and statistics.
 * With a pointer it checks that block (and its slack). Validation, walking and the block
 * lookup of RtlFreeHeap / RtlSizeHeap / RtlReAllocateHeap follow no pointer the heap cannot
 * vouch for (tree nodes and list entries must lie in a range of the right type of one of the
 * heap's segments, allocated ranges must be committed and signed); only the segment list head
 * in _SEGMENT_HEAP itself is trusted. An overflow into a busy LFH neighbour with no slack is
 * not detectable (LFH blocks have no headers), as on Windows.
 *
 * Interface (for the emulator): the exports of ntheap.c (RtlCreateHeap, RtlDestroyHeap,
 * RtlAllocateHeap, RtlFreeHeap, RtlReAllocateHeap, RtlSizeHeap, RtlValidateHeap, RtlWalkHeap,
 * RtlLockHeap, RtlUnlockHeap, RtlGetProcessHeaps) plus RtlQueryHeapInformation and
 * RtlSetHeapInformation (HeapCompatibilityInformation, HeapEnableTerminationOnCorruption) and
 * userinfo.h's RtlSetUserValueHeap, RtlSetUserFlagsHeap, RtlGetUserInfoHeap, RtlCompactHeap; the system calls NtAllocateVirtualMemory (MEM_RESERVE
 * with and without a base address, MEM_COMMIT), NtFreeVirtualMemory (MEM_DECOMMIT,
 * MEM_RELEASE with size 0) and NtRaiseException; the PEB's ProcessHeap, NumberOfHeaps,
 * MaximumNumberOfHeaps and ProcessHeaps through ntheap_get_peb. Creation parameters:
 * RtlCreateHeap's last argument may point to a SEGHEAP_PARAMETERS (segheap.h: keys, seed,
 * thresholds, recognised by Length and Signature); anything else there is ignored.
 */
#include "segheap.h"
#include "userinfo.h"

#define PTR_SIZE ((uptr)sizeof(void *))
#define CURRENT_PROCESS ((uptr)-1)
#define CONTAINING(ptr, type, field) ((type *)((u8 *)(ptr) - __builtin_offsetof(type, field)))
#define MAX_REQUEST ((uptr)0 - 0x200000u) /* leaves room for rounding and the guard page */
#define FORCE_FLAG_MASK (HEAP_NO_SERIALIZE | HEAP_GENERATE_EXCEPTIONS)

#ifdef SEGHEAP_PTR64
#define VS_UNIT_SHIFT 4u
#define FIRST_DESCRIPTOR 2u
#else
#define VS_UNIT_SHIFT 3u
#define FIRST_DESCRIPTOR 1u
#endif
#define VS_UNIT ((uptr)1 << VS_UNIT_SHIFT)
#define VS_HDR ((uptr)sizeof(HEAP_VS_CHUNK_HEADER))
#define VS_FREE_HDR ((uptr)sizeof(HEAP_VS_CHUNK_FREE_HEADER))
#define VS_FIRST_CHUNK (((uptr)sizeof(HEAP_VS_SUBSEGMENT) + VS_UNIT - 1) & ~(VS_UNIT - 1))
#define LFH_HDR ((uptr)__builtin_offsetof(HEAP_LFH_SUBSEGMENT, BlockBitmap))
#define PAGE ((uptr)SEGHEAP_PAGE_SIZE)
#define UNITS SEGHEAP_UNITS_PER_SEGMENT
#define TRAILER_FILL SEGHEAP_LFH_SLACK_FILL
#define LFH_LOCATION_AVAILABLE 0u
#define LFH_LOCATION_FULL 1u

/* tree kinds: how two nodes compare */
#define TREE_PAGES 0 /* descriptors: UnitSize, then more committed first */
#define TREE_VS 1    /* free VS chunks: size */
#define TREE_LARGE 2 /* large allocation metadata: address */

typedef char check_vs_hdr[VS_HDR == VS_UNIT ? 1 : -1];
typedef char check_vs_free_hdr[VS_FREE_HDR <= SEGHEAP_VS_SPLIT_MIN ? 1 : -1];
typedef char check_desc_pages[sizeof(HEAP_PAGE_SEGMENT) == FIRST_DESCRIPTOR * SEGHEAP_PAGE_SIZE
                                  ? 1
                                  : -1];

/* What a user pointer turned out to be. */
#define BLOCK_BACKEND 1
#define BLOCK_VS 2
#define BLOCK_LFH 3
#define BLOCK_LARGE 4
typedef struct BLOCK_REF {
    int kind;
    HEAP_PAGE_SEGMENT *seg;
    HEAP_PAGE_RANGE_DESCRIPTOR *range; /* first descriptor of the block's range */
    u8 *block;                         /* the range (back end), chunk (VS), slot (LFH) */
    u32 index;                         /* LFH slot index */
    HEAP_LARGE_ALLOC_DATA *large;
} BLOCK_REF;

/* ------------------------------------------------------------------ small helpers */

static uptr align_up(uptr value, uptr align) { return (value + align - 1) & ~(align - 1); }

static void list_init(LIST *list) { list->Flink = list->Blink = list; }

static void list_insert_after(LIST *pos, LIST *entry)
{
    entry->Flink = pos->Flink;
    entry->Blink = pos;
    pos->Flink->Blink = entry;
    pos->Flink = entry;
}

static void list_insert_tail(LIST *head, LIST *entry) { list_insert_after(head->Blink, entry); }

static void list_remove(LIST *entry)
{
    entry->Flink->Blink = entry->Blink;
    entry->Blink->Flink = entry->Flink;
    entry->Flink = entry->Blink = 0;
}

static void zero_bytes(void *p, uptr n)
{
    u8 *b = p;
    uptr i = 0;
    for (; i < n && ((uptr)(b + i) & (PTR_SIZE - 1)); i++) b[i] = 0;
    for (; i + PTR_SIZE <= n; i += PTR_SIZE) *(uptr *)(b + i) = 0;
    for (; i < n; i++) b[i] = 0;
}

static void fill_bytes(u8 *p, u8 *end, u8 value)
{
    for (; p < end; p++) *p = value;
}

/* Copies n bytes between two pointer-aligned, non-overlapping buffers. */
static void copy_bytes(u8 *dst, const u8 *src, uptr n)
{
    uptr i = 0;
    for (; i + PTR_SIZE <= n; i += PTR_SIZE) *(uptr *)(dst + i) = *(const uptr *)(src + i);
    for (; i < n; i++) dst[i] = src[i];
}

static u32 ctz64(u64 v)
{
    u32 lo = (u32)v;
    return lo ? (u32)__builtin_ctz(lo) : 32u + (u32)__builtin_ctz((u32)(v >> 32));
}

static void raise_status(u32 code)
{
    EXCEPTION_RECORD rec;
    u32 i;
    rec.ExceptionCode = code;
    rec.ExceptionFlags = EXCEPTION_NONCONTINUABLE;
    rec.ExceptionRecord = 0;
    rec.ExceptionAddress = __builtin_return_address(0);
    rec.NumberParameters = 0;
    for (i = 0; i < 15; i++) rec.ExceptionInformation[i] = 0;
    NtRaiseException(&rec, 0, 1);
}

static u32 heap_protect(const SEGMENT_HEAP *heap)
{
    return (heap->GlobalFlags & HEAP_CREATE_ENABLE_EXECUTE) ? PAGE_EXECUTE_READWRITE
                                                            : PAGE_READWRITE;
}

static int vm_commit(SEGMENT_HEAP *heap, void *base, uptr size)
{
    return (i32)NtAllocateVirtualMemory(CURRENT_PROCESS, &base, 0, &size, MEM_COMMIT,
                                        heap_protect(heap)) >= 0;
}

static void vm_decommit(void *base, uptr size)
{
    NtFreeVirtualMemory(CURRENT_PROCESS, &base, &size, MEM_DECOMMIT);
}

static void vm_release(void *base)
{
    uptr size = 0;
    NtFreeVirtualMemory(CURRENT_PROCESS, &base, &size, MEM_RELEASE);
}

/* Reserves size bytes (at *base when it is not 0); 0 on failure. */
static void *vm_reserve(void *base, uptr size, u32 protect)
{
    if ((i32)NtAllocateVirtualMemory(CURRENT_PROCESS, &base, 0, &size, MEM_RESERVE, protect) < 0)
        return 0;
    return base;
}

static u32 next_random(SEGMENT_HEAP *heap)
{
    u32 x = heap->MemStats.RandomState;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    heap->MemStats.RandomState = x;
    return x;
}

/* ------------------------------------------------------------------ unused-bytes trailer */

/* Marks [data + request, block_end) as slack: 0xAB fill, then the count of unused bytes in the
 * last byte (< 0x80) or the last two bytes (count | 0x8000). Nothing when there is no slack. */
static void set_trailer(u8 *data, uptr request, u8 *block_end)
{
    uptr unused = (uptr)(block_end - data) - request;
    if (!unused) return;
    if (unused < 0x80) {
        fill_bytes(data + request, block_end - 1, TRAILER_FILL);
        block_end[-1] = (u8)unused;
    } else {
        fill_bytes(data + request, block_end - 2, TRAILER_FILL);
        *(u16 *)(block_end - 2) = (u16)(unused | 0x8000u);
    }
}

/* The unused byte count of a block with a trailer (0 when it is malformed). */
static uptr get_trailer(const u8 *block_end)
{
    u8 last = block_end[-1];
    if (!(last & 0x80)) return last;
    return *(const u16 *)(block_end - 2) & 0x7FFFu;
}

/* Whether a block with a trailer is intact: count in range, the encoding's minimum, fill. */
static int check_trailer(const u8 *data, const u8 *block_end)
{
    uptr unused = get_trailer(block_end), cap = (uptr)(block_end - data), tail, i;
    if (!unused || unused > cap) return 0;
    if ((block_end[-1] & 0x80) && unused < 0x80) return 0;
    tail = (block_end[-1] & 0x80) ? 2 : 1;
    for (i = cap - unused; i < cap - tail; i++)
        if (data[i] != TRAILER_FILL) return 0;
    return 1;
}

/* ------------------------------------------------------------------ red-black trees */

#define RB_RED ((uptr)1)

static RB_NODE *rb_parent(const RB_NODE *n) { return (RB_NODE *)(n->ParentValue & ~(uptr)3); }
static int rb_red(const RB_NODE *n) { return n && (n->ParentValue & RB_RED); }
static void rb_set_red(RB_NODE *n) { n->ParentValue |= RB_RED; }
static void rb_set_black(RB_NODE *n)
{
    if (n) n->ParentValue &= ~RB_RED;
}
static void rb_set_parent(RB_NODE *n, RB_NODE *p)
{
    n->ParentValue = (uptr)p | (n->ParentValue & RB_RED);
}

static RB_NODE *rb_first(RB_NODE *n)
{
    if (n)
        while (n->Children[0]) n = n->Children[0];
    return n;
}

static RB_NODE *rb_next(RB_NODE *n)
{
    RB_NODE *p;
    if (n->Children[1]) return rb_first(n->Children[1]);
    while ((p = rb_parent(n)) && p->Children[1] == n) n = p;
    return p;
}

/* Moves x down in direction dir (0: left rotation, its right child comes up). */
static void rb_rotate(RB_TREE *t, RB_NODE *x, int dir)
{
    RB_NODE *y = x->Children[1 - dir], *p = rb_parent(x);
    x->Children[1 - dir] = y->Children[dir];
    if (y->Children[dir]) rb_set_parent(y->Children[dir], x);
    rb_set_parent(y, p);
    if (!p)
        t->Root = y;
    else
        p->Children[p->Children[1] == x] = y;
    y->Children[dir] = x;
    rb_set_parent(x, y);
}

static void rb_transplant(RB_TREE *t, RB_NODE *u, RB_NODE *v)
{
    RB_NODE *p = rb_parent(u);
    if (!p)
        t->Root = v;
    else
        p->Children[p->Children[1] == u] = v;
    if (v) rb_set_parent(v, p);
}

static uptr vs_decode(const SEGMENT_HEAP *heap, const void *chunk);

/* The primary key of a node (ties are broken by the node address). */
static uptr rb_key(const SEGMENT_HEAP *heap, int kind, const RB_NODE *n)
{
    if (kind == TREE_PAGES) {
        const HEAP_PAGE_RANGE_DESCRIPTOR *d = (const HEAP_PAGE_RANGE_DESCRIPTOR *)n;
        return ((uptr)d->UnitSize << 8) | (uptr)(255u - d->CommittedPageCount);
    }
    if (kind == TREE_VS) {
        const u8 *chunk = (const u8 *)n - PTR_SIZE;
#ifdef SEGHEAP_PTR64
        return (vs_decode(heap, chunk) >> 16) & 0xFFFFu;
#else
        return (vs_decode(heap, chunk) >> 1) & 0x7FFFu;
#endif
    }
    return CONTAINING(n, HEAP_LARGE_ALLOC_DATA, TreeNode)->VirtualAddress & ~(uptr)0xFFFF;
}

static int rb_less(const SEGMENT_HEAP *heap, int kind, const RB_NODE *a, const RB_NODE *b)
{
    uptr ka = rb_key(heap, kind, a), kb = rb_key(heap, kind, b);
    return ka != kb ? ka < kb : (uptr)a < (uptr)b;
}

static void rb_insert(const SEGMENT_HEAP *heap, int kind, RB_TREE *t, RB_NODE *n)
{
    RB_NODE *p = 0, *cur = t->Root, *g, *u;
    int dir = 0;
    while (cur) {
        p = cur;
        dir = !rb_less(heap, kind, n, cur);
        cur = cur->Children[dir];
    }
    n->Children[0] = n->Children[1] = 0;
    n->ParentValue = (uptr)p | RB_RED;
    if (!p)
        t->Root = n;
    else
        p->Children[dir] = n;
    while ((p = rb_parent(n)) && rb_red(p)) {
        int pd;
        g = rb_parent(p);
        pd = g->Children[1] == p;
        u = g->Children[1 - pd];
        if (rb_red(u)) {
            rb_set_black(p);
            rb_set_black(u);
            rb_set_red(g);
            n = g;
            continue;
        }
        if (p->Children[1 - pd] == n) {
            rb_rotate(t, p, pd);
            n = p;
            p = rb_parent(n);
        }
        rb_set_black(p);
        rb_set_red(g);
        rb_rotate(t, g, 1 - pd);
    }
    rb_set_black(t->Root);
    t->Min = rb_first(t->Root);
}

static void rb_remove(RB_TREE *t, RB_NODE *z)
{
    RB_NODE *x, *xp, *y, *w;
    int removed_red;
    if (!z->Children[0] || !z->Children[1]) {
        x = z->Children[0] ? z->Children[0] : z->Children[1];
        xp = rb_parent(z);
        removed_red = rb_red(z);
        rb_transplant(t, z, x);
    } else {
        y = rb_first(z->Children[1]);
        removed_red = rb_red(y);
        x = y->Children[1];
        if (rb_parent(y) == z) {
            xp = y;
        } else {
            xp = rb_parent(y);
            rb_transplant(t, y, x);
            y->Children[1] = z->Children[1];
            rb_set_parent(y->Children[1], y);
        }
        rb_transplant(t, z, y);
        y->Children[0] = z->Children[0];
        rb_set_parent(y->Children[0], y);
        y->ParentValue = (y->ParentValue & ~RB_RED) | (z->ParentValue & RB_RED);
    }
    if (!removed_red) {
        while (x != t->Root && !rb_red(x)) {
            int xd = xp->Children[1] == x && (x || xp->Children[0]);
            w = xp->Children[1 - xd];
            if (rb_red(w)) {
                rb_set_black(w);
                rb_set_red(xp);
                rb_rotate(t, xp, xd);
                w = xp->Children[1 - xd];
            }
            if (!rb_red(w->Children[0]) && !rb_red(w->Children[1])) {
                rb_set_red(w);
                x = xp;
                xp = rb_parent(x);
            } else {
                if (!rb_red(w->Children[1 - xd])) {
                    rb_set_black(w->Children[xd]);
                    rb_set_red(w);
                    rb_rotate(t, w, 1 - xd);
                    w = xp->Children[1 - xd];
                }
                w->ParentValue = (w->ParentValue & ~RB_RED) | (xp->ParentValue & RB_RED);
                rb_set_black(xp);
                rb_set_black(w->Children[1 - xd]);
                rb_rotate(t, xp, xd);
                x = t->Root;
                break;
            }
        }
        rb_set_black(x);
    }
    z->Children[0] = z->Children[1] = 0;
    z->ParentValue = 0;
    t->Min = rb_first(t->Root);
}

/* Checks a subtree: parent links, no red node with a red child, equal black heights, order,
 * nodes inside [lo, hi) when the caller gives bounds. Returns the black height, or -1. The
 * node count is added to *count (limited, as is the depth, so a corrupt tree cannot run
 * forever). The caller checks the in-order sequence separately. */
static int rb_check(const SEGMENT_HEAP *heap, int kind, const RB_NODE *n, const RB_NODE *parent,
                    uptr *count, uptr limit, int depth)
{
    int left, right;
    if (!n) return 1;
    if (++*count > limit || depth > 2 * (int)(8 * PTR_SIZE)) return -1;
    if (((uptr)n & (PTR_SIZE - 1)) || rb_parent(n) != parent) return -1;
    if ((n->ParentValue & 2) || (rb_red(n) && (rb_red(n->Children[0]) || rb_red(n->Children[1]))))
        return -1;
    if (n->Children[0] && !rb_less(heap, kind, n->Children[0], n)) return -1;
    if (n->Children[1] && !rb_less(heap, kind, n, n->Children[1])) return -1;
    left = rb_check(heap, kind, n->Children[0], n, count, limit, depth + 1);
    right = rb_check(heap, kind, n->Children[1], n, count, limit, depth + 1);
    if (left < 0 || left != right) return -1;
    return left + !rb_red(n);
}

/* ------------------------------------------------------------------ heap basics */

static SEGMENT_HEAP *get_heap(void *handle)
{
    SEGMENT_HEAP *heap = handle;
    if (!heap || ((uptr)heap & (PAGE - 1))) return 0;
    if (heap->Signature != SEGMENT_HEAP_SIGNATURE || heap->SegContexts[0].Heap != heap) return 0;
    return heap;
}

static HEAP_SEG_CONTEXT *backend(SEGMENT_HEAP *heap) { return &heap->SegContexts[0]; }

static uptr heap_key(const SEGMENT_HEAP *heap) { return heap->MemStats.HeapKey; }

/* ------------------------------------------------------------------ segments, descriptors */

static HEAP_PAGE_SEGMENT *seg_of(const void *p)
{
    return (HEAP_PAGE_SEGMENT *)((uptr)p & ~(uptr)(SEGHEAP_SEGMENT_SIZE - 1));
}

static u8 *unit_addr(HEAP_PAGE_SEGMENT *seg, u32 unit) { return (u8 *)seg + (uptr)unit * PAGE; }

static HEAP_PAGE_RANGE_DESCRIPTOR *desc_at(HEAP_PAGE_SEGMENT *seg, u32 unit)
{
    return &seg->DescArray[unit];
}

static u32 desc_unit(HEAP_PAGE_SEGMENT *seg, const HEAP_PAGE_RANGE_DESCRIPTOR *d)
{
    return (u32)(d - seg->DescArray);
}

static uptr segment_signature(const SEGMENT_HEAP *heap, const HEAP_PAGE_SEGMENT *seg)
{
    return ((uptr)seg >> SEGHEAP_SEGMENT_SHIFT) ^ heap_key(heap) ^ (uptr)heap ^
           SEGHEAP_SEGMENT_SIGNATURE_XOR;
}

/* The segment of heap that contains p (found in the segment list, never trusted from p). */
static HEAP_PAGE_SEGMENT *find_segment(SEGMENT_HEAP *heap, const void *p)
{
    HEAP_SEG_CONTEXT *ctx = backend(heap);
    HEAP_PAGE_SEGMENT *seg = seg_of(p);
    LIST *e;
    uptr n = 0;
    for (e = ctx->SegmentListHead.Flink; e != &ctx->SegmentListHead && n <= ctx->SegmentCount;
         e = e->Flink, n++) {
        if ((uptr)e & (SEGHEAP_SEGMENT_SIZE - 1)) return 0;
        if ((HEAP_PAGE_SEGMENT *)e == seg)
            return seg->Signature == segment_signature(heap, seg) ? seg : 0;
    }
    return 0;
}

/* First unit of the range holding unit (which must be past the descriptor pages); UNITS when
 * the descriptors do not agree. */
static u32 range_first(HEAP_PAGE_SEGMENT *seg, u32 unit)
{
    HEAP_PAGE_RANGE_DESCRIPTOR *d = desc_at(seg, unit);
    u32 first;
    if (unit < FIRST_DESCRIPTOR || unit >= UNITS) return UNITS;
    if (d->RangeFlags & RANGE_FIRST) return unit;
    if (!d->UnitSize || d->UnitSize > unit - FIRST_DESCRIPTOR) return UNITS;
    first = unit - d->UnitSize;
    d = desc_at(seg, first);
    if (!(d->RangeFlags & RANGE_FIRST) || first + d->UnitSize <= unit) return UNITS;
    return first;
}

static u8 count_committed(HEAP_PAGE_SEGMENT *seg, u32 first, u32 units)
{
    u32 i, n = 0;
    for (i = 0; i < units; i++) n += (desc_at(seg, first + i)->RangeFlags & RANGE_COMMITTED) != 0;
    return (u8)n;
}

/* Whether a range of units pages with these flags (a VS or LFH subsegment of 64 KiB or more)
 * ends in a guard page: 1 or 0. */
static u32 guard_units(u8 flags, u32 units)
{
    return (flags & (RANGE_VS | RANGE_LFH)) && units > SEGHEAP_SUBSEGMENT_GUARD_MIN / PAGE;
}

/* The pages of an allocated range before its guard page (all of them when it has none). */
static u32 range_usable(const HEAP_PAGE_RANGE_DESCRIPTOR *d)
{
    return d->UnitSize - guard_units(d->RangeFlags, d->UnitSize);
}

/* Whether an allocated range looks whole: signature, every page committed but the guard
 * page, which is not (so that its memory may be read). */
static int allocated_range_ok(HEAP_PAGE_SEGMENT *seg, u32 first)
{
    HEAP_PAGE_RANGE_DESCRIPTOR *d = desc_at(seg, first);
    u32 usable = range_usable(d);
    return d->TreeSignature == SEGHEAP_RANGE_SIGNATURE &&
           count_committed(seg, first, d->UnitSize) == usable &&
           count_committed(seg, first, usable) == usable;
}

/* Writes the descriptors of the range [first, first + units) with the type flags given
 * (0 for a free range); RANGE_COMMITTED of each unit is kept. */
static void range_mark(HEAP_PAGE_SEGMENT *seg, u32 first, u32 units, u8 flags)
{
    u32 i;
    for (i = 0; i < units; i++) {
        HEAP_PAGE_RANGE_DESCRIPTOR *d = desc_at(seg, first + i);
        u8 keep = d->RangeFlags & RANGE_COMMITTED;
        zero_bytes(d, sizeof(*d));
        d->RangeFlags = keep | flags | (i ? 0 : RANGE_FIRST);
        d->UnitSize = (u8)(i ? i : units);
    }
}

static void free_range_insert(SEGMENT_HEAP *heap, HEAP_PAGE_SEGMENT *seg, u32 first, u32 units)
{
    HEAP_PAGE_RANGE_DESCRIPTOR *d = desc_at(seg, first);
    range_mark(seg, first, units, 0);
    d->CommittedPageCount = count_committed(seg, first, units);
    heap->MemStats.FreeCommittedPages += d->CommittedPageCount;
    rb_insert(heap, TREE_PAGES, &backend(heap)->FreePageRanges, &d->TreeNode);
}

static void free_range_remove(SEGMENT_HEAP *heap, HEAP_PAGE_RANGE_DESCRIPTOR *d)
{
    rb_remove(&backend(heap)->FreePageRanges, &d->TreeNode);
    heap->MemStats.FreeCommittedPages -= d->CommittedPageCount;
}

/* Commits the uncommitted pages of [first, first + units), a run per system call. */
static int commit_units(SEGMENT_HEAP *heap, HEAP_PAGE_SEGMENT *seg, u32 first, u32 units)
{
    u32 i = first, end = first + units, j;
    while (i < end) {
        if (desc_at(seg, i)->RangeFlags & RANGE_COMMITTED) {
            i++;
            continue;
        }
        for (j = i; j < end && !(desc_at(seg, j)->RangeFlags & RANGE_COMMITTED); j++) {
        }
        if (!vm_commit(heap, unit_addr(seg, i), (uptr)(j - i) * PAGE)) return 0;
        heap->MemStats.TotalCommittedPages += j - i;
        for (; i < j; i++) desc_at(seg, i)->RangeFlags |= RANGE_COMMITTED;
    }
    return 1;
}

static void decommit_units(SEGMENT_HEAP *heap, HEAP_PAGE_SEGMENT *seg, u32 first, u32 units)
{
    u32 i = first, end = first + units, j;
    while (i < end) {
        if (!(desc_at(seg, i)->RangeFlags & RANGE_COMMITTED)) {
            i++;
            continue;
        }
        for (j = i; j < end && (desc_at(seg, j)->RangeFlags & RANGE_COMMITTED); j++) {
        }
        vm_decommit(unit_addr(seg, i), (uptr)(j - i) * PAGE);
        heap->MemStats.TotalCommittedPages -= j - i;
        for (; i < j; i++) desc_at(seg, i)->RangeFlags &= (u8)~RANGE_COMMITTED;
    }
}

/* Reserves a 1 MiB-aligned segment, commits its descriptor pages, and makes the rest one free
 * range. */
static HEAP_PAGE_SEGMENT *segment_create(SEGMENT_HEAP *heap)
{
    HEAP_SEG_CONTEXT *ctx = backend(heap);
    u32 protect = heap_protect(heap), i;
    u8 *base = vm_reserve(0, SEGHEAP_SEGMENT_SIZE, protect);
    HEAP_PAGE_SEGMENT *seg;

    if (!base) return 0;
    if ((uptr)base & (SEGHEAP_SEGMENT_SIZE - 1)) {
        u8 *big, *aligned;
        vm_release(base);
        big = vm_reserve(0, 2 * (uptr)SEGHEAP_SEGMENT_SIZE, protect);
        if (!big) return 0;
        aligned = (u8 *)align_up((uptr)big, SEGHEAP_SEGMENT_SIZE);
        vm_release(big);
        base = vm_reserve(aligned, SEGHEAP_SEGMENT_SIZE, protect);
        if (!base) return 0;
        if (base != aligned) {
            vm_release(base);
            return 0;
        }
    }
    if (!vm_commit(heap, base, FIRST_DESCRIPTOR * PAGE)) {
        vm_release(base);
        return 0;
    }
    seg = (HEAP_PAGE_SEGMENT *)base;
    for (i = 0; i < FIRST_DESCRIPTOR; i++) {
        desc_at(seg, i)->RangeFlags = RANGE_COMMITTED | RANGE_ALLOCATED | (i ? 0 : RANGE_FIRST);
        desc_at(seg, i)->UnitSize = (u8)(i ? i : FIRST_DESCRIPTOR);
    }
    seg->Signature = segment_signature(heap, seg);
    list_insert_tail(&ctx->SegmentListHead, &seg->ListEntry);
    ctx->SegmentCount++;
    heap->MemStats.TotalReservedPages += UNITS;
    heap->MemStats.TotalCommittedPages += FIRST_DESCRIPTOR;
    free_range_insert(heap, seg, FIRST_DESCRIPTOR, UNITS - FIRST_DESCRIPTOR);
    return seg;
}

static void segment_release(SEGMENT_HEAP *heap, HEAP_PAGE_SEGMENT *seg)
{
    HEAP_SEG_CONTEXT *ctx = backend(heap);
    heap->MemStats.TotalCommittedPages -= count_committed(seg, 0, UNITS);
    heap->MemStats.TotalReservedPages -= UNITS;
    list_remove(&seg->ListEntry);
    ctx->SegmentCount--;
    seg->Signature = 0;
    vm_release(seg);
}

/* The free range to allocate units from: the first tree node of at least that size. */
static HEAP_PAGE_RANGE_DESCRIPTOR *find_free_range(SEGMENT_HEAP *heap, u32 units)
{
    RB_NODE *n = backend(heap)->FreePageRanges.Root, *best = 0;
    while (n) {
        if (((HEAP_PAGE_RANGE_DESCRIPTOR *)n)->UnitSize >= units) {
            best = n;
            n = n->Children[0];
        } else {
            n = n->Children[1];
        }
    }
    return (HEAP_PAGE_RANGE_DESCRIPTOR *)best;
}

/* Allocates a committed range of units pages with the type flags (0, RANGE_VS, RANGE_LFH),
 * plus an uncommitted guard page after it for a subsegment of 64 KiB or more; returns its
 * first descriptor. */
static HEAP_PAGE_RANGE_DESCRIPTOR *pages_alloc(SEGMENT_HEAP *heap, u32 units, u8 type)
{
    HEAP_PAGE_RANGE_DESCRIPTOR *d;
    HEAP_PAGE_SEGMENT *seg;
    u32 first, total, guard = guard_units(type, units + 1);

    if (!units || units + guard > UNITS - FIRST_DESCRIPTOR) return 0;
    d = find_free_range(heap, units + guard);
    if (!d) {
        if (!segment_create(heap)) return 0;
        d = find_free_range(heap, units + guard);
        if (!d) return 0;
    }
    seg = seg_of(d);
    first = desc_unit(seg, d);
    total = d->UnitSize;
    free_range_remove(heap, d);
    if (!commit_units(heap, seg, first, units)) {
        free_range_insert(heap, seg, first, total);
        return 0;
    }
    if (guard) decommit_units(heap, seg, first + units, guard);
    units += guard;
    if (total > units) free_range_insert(heap, seg, first + units, total - units);
    range_mark(seg, first, units, RANGE_ALLOCATED | type);
    d->CommittedPageCount = (u8)(units - guard);
    d->TreeSignature = SEGHEAP_RANGE_SIGNATURE;
    return d;
}

/* Frees the allocated range whose first descriptor is d: decommits it when the heap keeps
 * enough free committed pages, coalesces it with free neighbours, releases an empty segment. */
static void pages_free(SEGMENT_HEAP *heap, HEAP_PAGE_RANGE_DESCRIPTOR *d)
{
    HEAP_PAGE_SEGMENT *seg = seg_of(d);
    u32 first = desc_unit(seg, d), units = d->UnitSize, start = first, total = units;

    if (heap->MemStats.FreeCommittedPages + count_committed(seg, first, units) >
        heap->MemStats.FreeCommitLimit)
        decommit_units(heap, seg, first, units);
    if (first > FIRST_DESCRIPTOR) {
        u32 prev = range_first(seg, first - 1);
        if (prev < UNITS && !(desc_at(seg, prev)->RangeFlags & RANGE_ALLOCATED)) {
            total += desc_at(seg, prev)->UnitSize;
            start = prev;
            free_range_remove(heap, desc_at(seg, prev));
        }
    }
    if (first + units < UNITS) {
        HEAP_PAGE_RANGE_DESCRIPTOR *nd = desc_at(seg, first + units);
        if (!(nd->RangeFlags & RANGE_ALLOCATED)) {
            total += nd->UnitSize;
            free_range_remove(heap, nd);
        }
    }
    if (start == FIRST_DESCRIPTOR && total == UNITS - FIRST_DESCRIPTOR &&
        backend(heap)->SegmentCount > 1) {
        segment_release(heap, seg);
        return;
    }
    free_range_insert(heap, seg, start, total);
}

/* ------------------------------------------------------------------ VS subsegments */

/* Decoded HeaderBits of a VS chunk (see segheap.h for the fields). */
#ifdef SEGHEAP_PTR64
#define VS_BITS(size, prev, allocated) \
    (((uptr)(size) << 16) | ((uptr)(prev) << 32) | ((uptr)(allocated) << 48))
#define VS_SIZE(bits) (((bits) >> 16) & 0xFFFFu)
#define VS_PREV(bits) (((bits) >> 32) & 0xFFFFu)
#define VS_ALLOCATED(bits) ((bits) >> 48)
#define VS_COST(bits) ((bits) & 0xFFFFu)
#else
#define VS_BITS(size, prev, allocated) \
    (((uptr)(size) << 1) | ((uptr)(prev) << 16) | ((uptr)(allocated) << 31))
#define VS_SIZE(bits) (((bits) >> 1) & 0x7FFFu)
#define VS_PREV(bits) (((bits) >> 16) & 0x7FFFu)
#define VS_ALLOCATED(bits) ((bits) >> 31)
#define VS_COST(bits) ((bits) & 1u)
#endif

static uptr vs_decode(const SEGMENT_HEAP *heap, const void *chunk)
{
    return *(const uptr *)chunk ^ (uptr)chunk ^ heap_key(heap);
}

static void vs_encode(const SEGMENT_HEAP *heap, void *chunk, uptr bits)
{
    *(uptr *)chunk = bits ^ (uptr)chunk ^ heap_key(heap);
}

static HEAP_VS_CHUNK_HEADER *vs_header(u8 *chunk) { return (HEAP_VS_CHUNK_HEADER *)chunk; }
static RB_NODE *vs_node(u8 *chunk) { return &((HEAP_VS_CHUNK_FREE_HEADER *)chunk)->Node; }
static u8 *vs_chunk_of_node(RB_NODE *n) { return (u8 *)n - PTR_SIZE; }
static u8 *vs_first_chunk(HEAP_VS_SUBSEGMENT *sub) { return (u8 *)sub + VS_FIRST_CHUNK; }
static u8 *vs_end(HEAP_VS_SUBSEGMENT *sub) { return (u8 *)sub + ((uptr)sub->Size << VS_UNIT_SHIFT); }

static u16 vs_signature(u16 size) { return (u16)(((size ^ SEGHEAP_VS_SIGNATURE_XOR) & 0x7FFFu) | 0x8000u); }

static u32 vs_page_offset_bits(const SEGMENT_HEAP *heap, const u8 *chunk, const HEAP_VS_SUBSEGMENT *sub)
{
    return (u32)((((uptr)(chunk - (const u8 *)sub) >> SEGHEAP_PAGE_SHIFT) ^
                  ((uptr)chunk ^ heap_key(heap))) & VS_BITS_PAGE_OFFSET);
}

/* The VS subsegment a chunk of this heap lies in (from the segment's descriptors). */
static HEAP_VS_SUBSEGMENT *vs_sub_of(u8 *chunk)
{
    HEAP_PAGE_SEGMENT *seg = seg_of(chunk);
    u32 first = range_first(seg, (u32)(((uptr)chunk - (uptr)seg) >> SEGHEAP_PAGE_SHIFT));
    return (HEAP_VS_SUBSEGMENT *)unit_addr(seg, first);
}

static void vs_set_prev(SEGMENT_HEAP *heap, u8 *chunk, uptr prev)
{
    uptr bits = vs_decode(heap, chunk);
    vs_encode(heap, chunk, VS_BITS(VS_SIZE(bits), prev, VS_ALLOCATED(bits)) | VS_COST(bits));
}

static void vs_free_insert(SEGMENT_HEAP *heap, u8 *chunk, uptr units, uptr prev)
{
    vs_encode(heap, chunk, VS_BITS(units, prev, 0));
    rb_insert(heap, TREE_VS, &heap->VsContext.FreeChunkTree, vs_node(chunk));
    heap->VsContext.FreeCommittedUnits += units;
}

static void vs_free_remove(SEGMENT_HEAP *heap, u8 *chunk)
{
    rb_remove(&heap->VsContext.FreeChunkTree, vs_node(chunk));
    heap->VsContext.FreeCommittedUnits -= VS_SIZE(vs_decode(heap, chunk));
}

static HEAP_VS_SUBSEGMENT *vs_subsegment_create(SEGMENT_HEAP *heap, uptr chunk_bytes)
{
    uptr bytes = align_up(VS_FIRST_CHUNK + chunk_bytes, SEGHEAP_VS_SUBSEGMENT_MIN);
    HEAP_PAGE_RANGE_DESCRIPTOR *d = pages_alloc(heap, (u32)(bytes / PAGE), RANGE_VS);
    HEAP_VS_SUBSEGMENT *sub;
    u32 pages = (u32)(bytes / PAGE);
    if (!d) return 0;
    sub = (HEAP_VS_SUBSEGMENT *)unit_addr(seg_of(d), desc_unit(seg_of(d), d));
    zero_bytes(sub, VS_FIRST_CHUNK);
    list_insert_tail(&heap->VsContext.SubsegmentList, &sub->ListEntry);
    sub->CommitBitmap = pages >= 64 ? ~(u64)0 : ((u64)1 << pages) - 1;
    sub->Size = (u16)(bytes >> VS_UNIT_SHIFT);
    sub->Signature = vs_signature(sub->Size);
    heap->VsContext.TotalCommittedUnits += sub->Size;
    vs_free_insert(heap, vs_first_chunk(sub), (bytes - VS_FIRST_CHUNK) >> VS_UNIT_SHIFT, 0);
    return sub;
}

static void vs_subsegment_free(SEGMENT_HEAP *heap, HEAP_VS_SUBSEGMENT *sub)
{
    HEAP_PAGE_SEGMENT *seg = seg_of(sub);
    list_remove(&sub->ListEntry);
    heap->VsContext.TotalCommittedUnits -= sub->Size;
    sub->Signature = 0;
    pages_free(heap, desc_at(seg, (u32)(((uptr)sub - (uptr)seg) >> SEGHEAP_PAGE_SHIFT)));
}

static uptr vs_chunk_bytes(uptr request)
{
    uptr need = align_up(request + VS_HDR, VS_UNIT);
    return need < VS_FREE_HDR ? VS_FREE_HDR : need;
}

static u8 *vs_find_free(SEGMENT_HEAP *heap, uptr units)
{
    RB_NODE *n = heap->VsContext.FreeChunkTree.Root, *best = 0;
    while (n) {
        if (VS_SIZE(vs_decode(heap, vs_chunk_of_node(n))) >= units) {
            best = n;
            n = n->Children[0];
        } else {
            n = n->Children[1];
        }
    }
    return best ? vs_chunk_of_node(best) : 0;
}

/* Makes a chunk of units busy: header, flags, trailer, the requested bytes' size. */
static void vs_make_busy(SEGMENT_HEAP *heap, u8 *chunk, uptr units, uptr prev, uptr request,
                         u32 extra_bits)
{
    u8 *data = chunk + VS_HDR, *end = chunk + (units << VS_UNIT_SHIFT);
    u32 bits = vs_page_offset_bits(heap, chunk, vs_sub_of(chunk)) | extra_bits;
    vs_encode(heap, chunk, VS_BITS(units, prev, 1));
    if ((uptr)(end - data) != request) bits |= VS_BITS_UNUSED_BYTES;
    vs_header(chunk)->AllocatedChunkBits = bits;
#ifdef SEGHEAP_PTR64
    vs_header(chunk)->Spare = 0;
#endif
    set_trailer(data, request, end);
}

/* Splits units off the front of a (removed from the tree) free or busy chunk of size units
 * when the rest is at least SEGHEAP_VS_SPLIT_MIN bytes: the rest becomes a free chunk,
 * coalesced with a free successor. Returns the size the chunk keeps. */
static uptr vs_split(SEGMENT_HEAP *heap, u8 *chunk, uptr size, uptr units)
{
    HEAP_VS_SUBSEGMENT *sub = vs_sub_of(chunk);
    u8 *rest, *next;
    uptr rest_units;
    if ((size - units) << VS_UNIT_SHIFT < SEGHEAP_VS_SPLIT_MIN) return size;
    rest = chunk + (units << VS_UNIT_SHIFT);
    rest_units = size - units;
    next = rest + (rest_units << VS_UNIT_SHIFT);
    if (next < vs_end(sub) && !VS_ALLOCATED(vs_decode(heap, next))) {
        rest_units += VS_SIZE(vs_decode(heap, next));
        vs_free_remove(heap, next);
        next = rest + (rest_units << VS_UNIT_SHIFT);
    }
    vs_free_insert(heap, rest, rest_units, units);
    if (next < vs_end(sub)) vs_set_prev(heap, next, rest_units);
    return units;
}

/* A VS block of request bytes; internal blocks are skipped by RtlWalkHeap and refused by the
 * Rtl* calls. Returns the data pointer. */
static void *vs_alloc(SEGMENT_HEAP *heap, uptr request, int internal)
{
    uptr need = vs_chunk_bytes(request), units = need >> VS_UNIT_SHIFT, bits, size;
    u8 *chunk = vs_find_free(heap, units);
    if (!chunk) {
        if (!vs_subsegment_create(heap, need)) return 0;
        chunk = vs_find_free(heap, units);
        if (!chunk) return 0;
    }
    bits = vs_decode(heap, chunk);
    vs_free_remove(heap, chunk);
    size = vs_split(heap, chunk, VS_SIZE(bits), units);
    vs_make_busy(heap, chunk, size, VS_PREV(bits), request,
                 internal ? VS_BITS_SKIP_DURING_WALK : 0);
    return chunk + VS_HDR;
}

/* Frees a busy chunk: coalesces it with free neighbours; an all-free subsegment goes back to
 * the back end. */
static void vs_free(SEGMENT_HEAP *heap, u8 *chunk)
{
    HEAP_VS_SUBSEGMENT *sub = vs_sub_of(chunk);
    uptr bits = vs_decode(heap, chunk), total = VS_SIZE(bits), prev = VS_PREV(bits);
    u8 *start = chunk, *next = chunk + (total << VS_UNIT_SHIFT), *end = vs_end(sub);

    if (prev) {
        u8 *p = chunk - (prev << VS_UNIT_SHIFT);
        uptr pbits = vs_decode(heap, p);
        if (!VS_ALLOCATED(pbits)) {
            vs_free_remove(heap, p);
            start = p;
            total += prev;
            prev = VS_PREV(pbits);
        }
    }
    if (next < end) {
        uptr nbits = vs_decode(heap, next);
        if (!VS_ALLOCATED(nbits)) {
            vs_free_remove(heap, next);
            total += VS_SIZE(nbits);
        }
    }
    vs_header(chunk)->AllocatedChunkBits = 0;
    next = start + (total << VS_UNIT_SHIFT);
    if (start == vs_first_chunk(sub) && next == end) {
        vs_subsegment_free(heap, sub);
        return;
    }
    vs_free_insert(heap, start, total, prev);
    if (next < end) vs_set_prev(heap, next, total);
}

/* Bytes a busy chunk's caller asked for. */
static uptr vs_request(const SEGMENT_HEAP *heap, u8 *chunk)
{
    uptr bytes = VS_SIZE(vs_decode(heap, chunk)) << VS_UNIT_SHIFT;
    uptr unused = (vs_header(chunk)->AllocatedChunkBits & VS_BITS_UNUSED_BYTES)
                      ? get_trailer(chunk + bytes)
                      : 0;
    return bytes - VS_HDR - unused;
}

/* ------------------------------------------------------------------ LFH */

#define LFH_BUSY_BITS ((u64)0x5555555555555555ull)

static u32 lfh_bucket_index(uptr size)
{
    if (size <= 0x400) return size <= 16 ? 1u : (u32)((size + 15) >> 4);
    if (size <= 0x800) return 64u + (u32)((size - 0x400 + 63) >> 6);
    if (size <= 0x1000) return 80u + (u32)((size - 0x800 + 127) >> 7);
    if (size <= 0x2000) return 96u + (u32)((size - 0x1000 + 255) >> 8);
    return 112u + (u32)((size - 0x2000 + 511) >> 9);
}

static u32 lfh_block_size(u32 index)
{
    if (index <= 64) return index << 4;
    if (index <= 80) return 0x400u + ((index - 64) << 6);
    if (index <= 96) return 0x800u + ((index - 80) << 7);
    if (index <= 112) return 0x1000u + ((index - 96) << 8);
    return 0x2000u + ((index - 112) << 9);
}

static HEAP_LFH_BUCKET *lfh_bucket(SEGMENT_HEAP *heap, u32 index)
{
    uptr v = heap->LfhContext.Buckets[index];
    return (v && !(v & 1)) ? (HEAP_LFH_BUCKET *)v : 0;
}

/* Counts a request of an inactive bucket's size class; 1 when it activates the bucket. */
static int lfh_count_request(SEGMENT_HEAP *heap, u32 index)
{
    uptr usage = heap->LfhContext.Buckets[index] >> 1;
    uptr live = usage & 31, requests = (usage >> 5) & 0x7FF;
    if (live < 31) live++;
    if (requests < 0x7FF) requests++;
    heap->LfhContext.Buckets[index] = 1 | ((live | requests << 5) << 1);
    return live >= heap->MemStats.LfhActivationLive || requests >= heap->MemStats.LfhActivationTotal;
}

/* A VS block of an inactive bucket's size class was freed. */
static void lfh_count_free(SEGMENT_HEAP *heap, uptr request)
{
    u32 index;
    uptr v;
    if (request > heap->LfhContext.MaxBlockSize) return;
    index = lfh_bucket_index(request);
    v = heap->LfhContext.Buckets[index];
    if ((v & 1) && ((v >> 1) & 31)) heap->LfhContext.Buckets[index] = v - 2;
}

/* Carves the bucket from the LFH context extension (committing pages as needed). */
static HEAP_LFH_BUCKET *lfh_activate(SEGMENT_HEAP *heap, u32 index)
{
    u8 *p = (u8 *)align_up((uptr)heap->AllocatedBase, 8), *end = p + sizeof(HEAP_LFH_BUCKET);
    HEAP_LFH_BUCKET *bucket = (HEAP_LFH_BUCKET *)p;
    if (end > heap->ReservedLimit) return 0;
    if (end > heap->UncommittedBase) {
        u8 *to = (u8 *)align_up((uptr)end, PAGE);
        if (!vm_commit(heap, heap->UncommittedBase, (uptr)(to - heap->UncommittedBase))) return 0;
        heap->UncommittedBase = to;
    }
    heap->AllocatedBase = end;
    zero_bytes(bucket, sizeof(*bucket));
    bucket->State.IsBucket = 1;
    bucket->State.BucketIndex = (u8)index;
    bucket->State.SlotCount = 1;
    list_init(&bucket->State.AvailableSubsegmentList);
    list_init(&bucket->State.FullSubsegmentList);
    bucket->ReciprocalBlockSize = 0xFFFFFFFFu / lfh_block_size(index) + 1;
    heap->LfhContext.Buckets[index] = (uptr)bucket;
    return bucket;
}

static u32 lfh_key_bits(const SEGMENT_HEAP *heap, const HEAP_LFH_SUBSEGMENT *sub)
{
    return (u32)heap->MemStats.LfhKey ^ (u32)((uptr)sub >> SEGHEAP_PAGE_SHIFT);
}

static u32 lfh_block_bytes(const SEGMENT_HEAP *heap, const HEAP_LFH_SUBSEGMENT *sub)
{
    return (sub->BlockOffsets ^ lfh_key_bits(heap, sub)) & 0xFFFFu;
}

static u32 lfh_first_offset(const SEGMENT_HEAP *heap, const HEAP_LFH_SUBSEGMENT *sub)
{
    return (sub->BlockOffsets ^ lfh_key_bits(heap, sub)) >> 16;
}

static u32 lfh_words(u32 blocks) { return (blocks + 31) / 32; }

static u32 lfh_data_offset(u32 blocks)
{
    return (u32)align_up(LFH_HDR + 8 * (uptr)lfh_words(blocks), 16);
}

/* How many blocks of block_size fit in a subsegment of bytes. */
static u32 lfh_capacity(u32 bytes, u32 block_size)
{
    u32 n = (bytes - (u32)LFH_HDR) / block_size;
    while (n && lfh_data_offset(n) + n * block_size > bytes) n--;
    return n;
}

/* The free-block bits (even bits) of bitmap word w. */
static u64 lfh_free_mask(const HEAP_LFH_SUBSEGMENT *sub, u32 w)
{
    u64 valid = ~(u64)0;
    u32 rest = sub->BlockCount - w * 32;
    if (rest < 32) valid = ((u64)1 << (2 * rest)) - 1;
    return ~sub->BlockBitmap[w] & LFH_BUSY_BITS & valid;
}

static uptr lfh_free_word(const SEGMENT_HEAP *heap, const u8 *slot)
{
    return (uptr)slot ^ heap->MemStats.LfhKey;
}

static u8 *lfh_slot(const SEGMENT_HEAP *heap, HEAP_LFH_SUBSEGMENT *sub, u32 index)
{
    return (u8 *)sub + lfh_first_offset(heap, sub) + (uptr)index * lfh_block_bytes(heap, sub);
}

static HEAP_LFH_SUBSEGMENT *lfh_subsegment_create(SEGMENT_HEAP *heap, HEAP_LFH_BUCKET *bucket)
{
    u32 block_size = lfh_block_size(bucket->State.BucketIndex), pages = 1, count, i;
    uptr target = bucket->TotalBlockCount < 32 ? 32 : bucket->TotalBlockCount;
    HEAP_PAGE_RANGE_DESCRIPTOR *d;
    HEAP_LFH_SUBSEGMENT *sub;

    while (pages * PAGE < SEGHEAP_LFH_SUBSEGMENT_MAX &&
           lfh_capacity(pages * (u32)PAGE, block_size) < target)
        pages <<= 1;
    count = lfh_capacity(pages * (u32)PAGE, block_size);
    if (!count) return 0;
    d = pages_alloc(heap, pages, RANGE_LFH);
    if (!d) return 0;
    sub = (HEAP_LFH_SUBSEGMENT *)unit_addr(seg_of(d), desc_unit(seg_of(d), d));
    zero_bytes(sub, lfh_data_offset(count));
    sub->Owner = &bucket->State;
    sub->FreeCount = (u16)count;
    sub->BlockCount = (u16)count;
    sub->FreeHint = 0;
    sub->Location = LFH_LOCATION_AVAILABLE;
    sub->BlockOffsets = (block_size | lfh_data_offset(count) << 16) ^ lfh_key_bits(heap, sub);
    for (i = 0; i < count; i++) {
        u8 *slot = lfh_slot(heap, sub, i);
        *(uptr *)slot = lfh_free_word(heap, slot);
    }
    list_insert_after(&bucket->State.AvailableSubsegmentList, &sub->ListEntry);
    bucket->State.AvailableSubsegmentCount++;
    bucket->TotalSubsegmentCount++;
    bucket->TotalBlockCount += count;
    return sub;
}

static void *lfh_alloc(SEGMENT_HEAP *heap, HEAP_LFH_BUCKET *bucket, uptr request)
{
    LIST *head = &bucket->State.AvailableSubsegmentList;
    HEAP_LFH_SUBSEGMENT *sub;
    u32 words, w, r, slot, index;
    u64 free_bits, high;
    u8 *data;

    if (head->Flink == head) {
        if (!lfh_subsegment_create(heap, bucket)) return 0;
    }
    sub = CONTAINING(head->Flink, HEAP_LFH_SUBSEGMENT, ListEntry);
    words = lfh_words(sub->BlockCount);
    for (w = sub->FreeHint / 32; w < words; w++)
        if ((free_bits = lfh_free_mask(sub, w))) break;
    if (w >= words) return 0; /* FreeCount said otherwise: corrupt */
    r = next_random(heap) & 31;
    high = free_bits >> (2 * r);
    slot = high ? r + ctz64(high) / 2 : ctz64(free_bits) / 2;
    index = w * 32 + slot;
    data = lfh_slot(heap, sub, index);
    sub->BlockBitmap[w] |= (u64)1 << (2 * slot);
    free_bits &= ~((u64)1 << (2 * slot));
    if (free_bits)
        sub->FreeHint = (u16)(w * 32);
    else
        sub->FreeHint = (u16)((w + 1) * 32 < sub->BlockCount ? (w + 1) * 32 : sub->BlockCount);
    if (!--sub->FreeCount) {
        list_remove(&sub->ListEntry);
        list_insert_after(&bucket->State.FullSubsegmentList, &sub->ListEntry);
        sub->Location = LFH_LOCATION_FULL;
        bucket->State.AvailableSubsegmentCount--;
    }
    *(uptr *)data = 0;
    if (request != lfh_block_bytes(heap, sub)) {
        sub->BlockBitmap[w] |= (u64)2 << (2 * slot);
        set_trailer(data, request, data + lfh_block_bytes(heap, sub));
    }
    return data;
}

static void lfh_free(SEGMENT_HEAP *heap, HEAP_LFH_SUBSEGMENT *sub, u32 index)
{
    HEAP_LFH_BUCKET *bucket = (HEAP_LFH_BUCKET *)sub->Owner;
    u8 *slot = lfh_slot(heap, sub, index);
    sub->BlockBitmap[index / 32] &= ~((u64)3 << (2 * (index % 32)));
    *(uptr *)slot = lfh_free_word(heap, slot);
    sub->FreeCount++;
    if (index < sub->FreeHint) sub->FreeHint = (u16)index;
    list_remove(&sub->ListEntry);
    if (sub->Location == LFH_LOCATION_FULL) {
        sub->Location = LFH_LOCATION_AVAILABLE;
        bucket->State.AvailableSubsegmentCount++;
    }
    if (sub->FreeCount == sub->BlockCount && bucket->TotalSubsegmentCount > 1) {
        HEAP_PAGE_SEGMENT *seg = seg_of(sub);
        bucket->State.AvailableSubsegmentCount--;
        bucket->TotalSubsegmentCount--;
        bucket->TotalBlockCount -= sub->BlockCount;
        sub->BlockOffsets = 0;
        pages_free(heap, desc_at(seg, (u32)(((uptr)sub - (uptr)seg) >> SEGHEAP_PAGE_SHIFT)));
        return;
    }
    list_insert_after(&bucket->State.AvailableSubsegmentList, &sub->ListEntry);
}

/* Bytes the caller asked for, of a busy LFH block. */
static uptr lfh_request(const SEGMENT_HEAP *heap, HEAP_LFH_SUBSEGMENT *sub, u32 index)
{
    u32 bytes = lfh_block_bytes(heap, sub);
    if (!(sub->BlockBitmap[index / 32] & ((u64)2 << (2 * (index % 32))))) return bytes;
    return bytes - get_trailer(lfh_slot(heap, sub, index) + bytes);
}

/* ------------------------------------------------------------------ large blocks */

#define LARGE_UNUSED_MASK ((uptr)0xFFFF)
#define LARGE_GUARD_BIT ((uptr)2)

static u8 *large_base(const HEAP_LARGE_ALLOC_DATA *meta)
{
    return (u8 *)(meta->VirtualAddress & ~LARGE_UNUSED_MASK);
}

static uptr large_pages(const HEAP_LARGE_ALLOC_DATA *meta) { return meta->Bits >> 12; }

static uptr large_request(const HEAP_LARGE_ALLOC_DATA *meta)
{
    return large_pages(meta) * PAGE - (meta->VirtualAddress & LARGE_UNUSED_MASK);
}

static uptr large_reserved_pages(const HEAP_LARGE_ALLOC_DATA *meta)
{
    return large_pages(meta) + ((meta->Bits & LARGE_GUARD_BIT) ? SEGHEAP_LARGE_GUARD / PAGE : 0);
}

static void *large_alloc(SEGMENT_HEAP *heap, uptr request)
{
    uptr bytes = align_up(request, PAGE), pages = bytes / PAGE;
    HEAP_LARGE_ALLOC_DATA *meta = vs_alloc(heap, sizeof(HEAP_LARGE_ALLOC_DATA), 1);
    u8 *base;
    if (!meta) return 0;
    base = vm_reserve(0, bytes + SEGHEAP_LARGE_GUARD, heap_protect(heap));
    if (base && ((uptr)base & (SEGHEAP_LARGE_ALIGN - 1))) {
        vm_release(base);
        base = 0;
    }
    if (base && !vm_commit(heap, base, bytes)) {
        vm_release(base);
        base = 0;
    }
    if (!base) {
        vs_free(heap, (u8 *)meta - VS_HDR);
        return 0;
    }
    meta->VirtualAddress = (uptr)base | (bytes - request);
    meta->Bits = (pages << 12) | LARGE_GUARD_BIT;
    rb_insert(heap, TREE_LARGE, &heap->LargeAllocMetadata, &meta->TreeNode);
    heap->LargeReservedPages += large_reserved_pages(meta);
    heap->LargeCommittedPages += pages;
    heap->MemStats.TotalReservedPages += large_reserved_pages(meta);
    heap->MemStats.TotalCommittedPages += pages;
    return base;
}

static void large_free(SEGMENT_HEAP *heap, HEAP_LARGE_ALLOC_DATA *meta)
{
    rb_remove(&heap->LargeAllocMetadata, &meta->TreeNode);
    heap->LargeReservedPages -= large_reserved_pages(meta);
    heap->LargeCommittedPages -= large_pages(meta);
    heap->MemStats.TotalReservedPages -= large_reserved_pages(meta);
    heap->MemStats.TotalCommittedPages -= large_pages(meta);
    vm_release(large_base(meta));
    meta->VirtualAddress = 0;
    vs_free(heap, (u8 *)meta - VS_HDR);
}

static int node_ok(SEGMENT_HEAP *heap, int kind, const RB_NODE *n);

static HEAP_LARGE_ALLOC_DATA *large_find(SEGMENT_HEAP *heap, const void *p)
{
    RB_NODE *n = heap->LargeAllocMetadata.Root;
    uptr depth = 0;
    while (n && depth++ < 8 * PTR_SIZE * 2 && node_ok(heap, TREE_LARGE, n)) {
        HEAP_LARGE_ALLOC_DATA *meta = CONTAINING(n, HEAP_LARGE_ALLOC_DATA, TreeNode);
        if ((const u8 *)large_base(meta) == (const u8 *)p) return meta;
        n = n->Children[(uptr)p > (uptr)large_base(meta)];
    }
    return 0;
}

/* ------------------------------------------------------------------ block lookup */

static int vs_chunk_ok(SEGMENT_HEAP *heap, HEAP_VS_SUBSEGMENT *sub, u8 *chunk, int busy);
static HEAP_LFH_BUCKET *lfh_owner(SEGMENT_HEAP *heap, const HEAP_LFH_SUBSEGMENT *sub);

/* Whether a VS subsegment's header fits its range of bytes. */
static int vs_sub_ok(const HEAP_VS_SUBSEGMENT *sub, uptr bytes)
{
    return sub->Signature == vs_signature(sub->Size) &&
           ((uptr)sub->Size << VS_UNIT_SHIFT) == bytes;
}

/* Whether an LFH subsegment's header fits its range of bytes and its owner is a bucket. */
static int lfh_sub_ok(SEGMENT_HEAP *heap, const HEAP_LFH_SUBSEGMENT *sub, uptr bytes)
{
    HEAP_LFH_BUCKET *bucket = lfh_owner(heap, sub);
    u32 block, first;
    if (!bucket || !sub->BlockCount) return 0;
    block = lfh_block_bytes(heap, sub);
    first = lfh_first_offset(heap, sub);
    return block == lfh_block_size(bucket->State.BucketIndex) &&
           first == lfh_data_offset(sub->BlockCount) &&
           first + (uptr)sub->BlockCount * block <= bytes;
}

static int lookup_vs(SEGMENT_HEAP *heap, HEAP_VS_SUBSEGMENT *sub, uptr bytes, const u8 *p,
                     BLOCK_REF *ref)
{
    u8 *chunk = (u8 *)p - VS_HDR;
    if (!vs_sub_ok(sub, bytes)) return 0;
    if (chunk < vs_first_chunk(sub) || chunk >= vs_end(sub) || ((uptr)chunk & (VS_UNIT - 1)))
        return 0;
    if (!vs_chunk_ok(heap, sub, chunk, 1)) return 0;
    ref->kind = BLOCK_VS;
    ref->block = chunk;
    return 1;
}

/* The active bucket of heap that owns sub (0 if the owner is not one). */
static HEAP_LFH_BUCKET *lfh_owner(SEGMENT_HEAP *heap, const HEAP_LFH_SUBSEGMENT *sub)
{
    u8 *owner = (u8 *)sub->Owner;
    HEAP_LFH_BUCKET *b = (HEAP_LFH_BUCKET *)owner;
    if (owner < (u8 *)(heap + 1) || owner + sizeof(HEAP_LFH_BUCKET) > heap->AllocatedBase ||
        ((uptr)owner & 7))
        return 0;
    if (!b->State.BucketIndex || b->State.BucketIndex >= SEGHEAP_LFH_BUCKETS) return 0;
    return lfh_bucket(heap, b->State.BucketIndex) == b ? b : 0;
}

static int lookup_lfh(SEGMENT_HEAP *heap, HEAP_LFH_SUBSEGMENT *sub, u32 range_bytes, const u8 *p,
                      BLOCK_REF *ref)
{
    u32 block, first, off, index;
    if (!lfh_sub_ok(heap, sub, range_bytes)) return 0;
    block = lfh_block_bytes(heap, sub);
    first = lfh_first_offset(heap, sub);
    off = (u32)(p - (const u8 *)sub);
    if (off < first || (off - first) % block) return 0;
    index = (off - first) / block;
    if (index >= sub->BlockCount) return 0;
    if (!(sub->BlockBitmap[index / 32] & ((u64)1 << (2 * (index % 32))))) return 0;
    if ((sub->BlockBitmap[index / 32] & ((u64)2 << (2 * (index % 32)))) &&
        get_trailer(p + block) - 1 >= block)
        return 0;
    ref->kind = BLOCK_LFH;
    ref->block = (u8 *)p;
    ref->index = index;
    return 1;
}

/* Checks that ptr is the data pointer of a busy block of heap (internal VS chunks only with
 * internal set); never trusts the pointer further than the heap's own structures vouch. */
static int lookup_block(SEGMENT_HEAP *heap, const void *ptr, BLOCK_REF *ref, int internal)
{
    const u8 *p = ptr;
    HEAP_PAGE_SEGMENT *seg;
    ref->kind = 0;
    ref->seg = 0;
    ref->range = 0;
    ref->block = 0;
    ref->index = 0;
    ref->large = 0;
    if (!p || ((uptr)p & (VS_UNIT - 1))) return 0;
    seg = find_segment(heap, p);
    if (seg) {
        u32 first = range_first(seg, (u32)(((uptr)p - (uptr)seg) >> SEGHEAP_PAGE_SHIFT));
        HEAP_PAGE_RANGE_DESCRIPTOR *d;
        u8 *start;
        if (first >= UNITS) return 0;
        d = desc_at(seg, first);
        start = unit_addr(seg, first);
        if (!(d->RangeFlags & RANGE_ALLOCATED) || !allocated_range_ok(seg, first)) return 0;
        ref->seg = seg;
        ref->range = d;
        if (d->RangeFlags & RANGE_VS) {
            if (!lookup_vs(heap, (HEAP_VS_SUBSEGMENT *)start, range_usable(d) * PAGE, p, ref))
                return 0;
            return internal || !(vs_header(ref->block)->AllocatedChunkBits &
                                 VS_BITS_SKIP_DURING_WALK);
        }
        if (d->RangeFlags & RANGE_LFH)
            return lookup_lfh(heap, (HEAP_LFH_SUBSEGMENT *)start, range_usable(d) * (u32)PAGE, p,
                              ref);
        if (p != start || d->UnusedBytes >= d->UnitSize * PAGE) return 0;
        ref->kind = BLOCK_BACKEND;
        ref->block = start;
        return 1;
    }
    ref->large = large_find(heap, p);
    if (!ref->large) return 0;
    ref->kind = BLOCK_LARGE;
    ref->block = (u8 *)p;
    return 1;
}

/* Requested size of a block; *block_end receives the end of its memory. */
static uptr block_request(SEGMENT_HEAP *heap, const BLOCK_REF *ref, u8 **block_end)
{
    switch (ref->kind) {
    case BLOCK_VS:
        *block_end = ref->block + (VS_SIZE(vs_decode(heap, ref->block)) << VS_UNIT_SHIFT);
        return vs_request(heap, ref->block);
    case BLOCK_LFH: {
        HEAP_LFH_SUBSEGMENT *sub = (HEAP_LFH_SUBSEGMENT *)unit_addr(
            ref->seg, desc_unit(ref->seg, ref->range));
        *block_end = ref->block + lfh_block_bytes(heap, sub);
        return lfh_request(heap, sub, ref->index);
    }
    case BLOCK_BACKEND:
        *block_end = ref->block + ref->range->UnitSize * PAGE;
        return ref->range->UnitSize * PAGE - ref->range->UnusedBytes;
    default:
        *block_end = ref->block + large_pages(ref->large) * PAGE;
        return large_request(ref->large);
    }
}

/* ------------------------------------------------------------------ allocation, free */

static void *backend_alloc(SEGMENT_HEAP *heap, uptr request)
{
    u32 units = (u32)(align_up(request, PAGE) / PAGE);
    HEAP_PAGE_RANGE_DESCRIPTOR *d = pages_alloc(heap, units, 0);
    if (!d) return 0;
    d->UnusedBytes = (u32)(units * PAGE - request);
    return unit_addr(seg_of(d), desc_unit(seg_of(d), d));
}

static void *heap_alloc(SEGMENT_HEAP *heap, u32 flags, uptr size)
{
    u8 *p = 0;
    if (size > MAX_REQUEST) return 0;
    if (size > backend(heap)->MaxAllocationSize)
        return large_alloc(heap, size); /* fresh pages are zero */
    if (size > heap->MemStats.VsMaxSize) {
        p = backend_alloc(heap, size);
    } else {
        HEAP_LFH_BUCKET *bucket = 0;
        if (size <= heap->LfhContext.MaxBlockSize) {
            u32 index = lfh_bucket_index(size);
            bucket = lfh_bucket(heap, index);
            if (!bucket && lfh_count_request(heap, index)) bucket = lfh_activate(heap, index);
        }
        p = bucket ? lfh_alloc(heap, bucket, size) : vs_alloc(heap, size, 0);
    }
    if (p && (flags & HEAP_ZERO_MEMORY)) zero_bytes(p, size);
    return p;
}

static void free_block(SEGMENT_HEAP *heap, const BLOCK_REF *ref)
{
    switch (ref->kind) {
    case BLOCK_VS:
        lfh_count_free(heap, vs_request(heap, ref->block));
        vs_free(heap, ref->block);
        break;
    case BLOCK_LFH:
        lfh_free(heap,
                 (HEAP_LFH_SUBSEGMENT *)unit_addr(ref->seg, desc_unit(ref->seg, ref->range)),
                 ref->index);
        break;
    case BLOCK_BACKEND:
        pages_free(heap, ref->range);
        break;
    default:
        large_free(heap, ref->large);
    }
}

/* Whether a VS request of size would be served by VS (not by an active LFH bucket). */
static int routes_to_vs(SEGMENT_HEAP *heap, uptr size)
{
    if (size > heap->MemStats.VsMaxSize) return 0;
    return size > heap->LfhContext.MaxBlockSize || !lfh_bucket(heap, lfh_bucket_index(size));
}

/* Resizes a block in place when the new size routes to the same component; 1 on success. */
static int resize_in_place(SEGMENT_HEAP *heap, const BLOCK_REF *ref, uptr size)
{
    switch (ref->kind) {
    case BLOCK_LFH: {
        HEAP_LFH_SUBSEGMENT *sub = (HEAP_LFH_SUBSEGMENT *)unit_addr(
            ref->seg, desc_unit(ref->seg, ref->range));
        u32 block = lfh_block_bytes(heap, sub);
        u64 unused_bit = (u64)2 << (2 * (ref->index % 32));
        if (size > heap->LfhContext.MaxBlockSize ||
            lfh_block_size(lfh_bucket_index(size)) != block)
            return 0;
        sub->BlockBitmap[ref->index / 32] &= ~unused_bit;
        if (size != block) {
            sub->BlockBitmap[ref->index / 32] |= unused_bit;
            set_trailer(ref->block, size, ref->block + block);
        }
        return 1;
    }
    case BLOCK_VS: {
        u8 *chunk = ref->block, *end, *next;
        uptr bits = vs_decode(heap, chunk), cur = VS_SIZE(bits);
        uptr need = vs_chunk_bytes(size) >> VS_UNIT_SHIFT, kept;
        HEAP_VS_SUBSEGMENT *sub = vs_sub_of(chunk);
        if (!routes_to_vs(heap, size)) return 0;
        end = vs_end(sub);
        next = chunk + (cur << VS_UNIT_SHIFT);
        if (need > cur) {
            uptr nbits;
            if (next >= end) return 0;
            nbits = vs_decode(heap, next);
            if (VS_ALLOCATED(nbits) || cur + VS_SIZE(nbits) < need) return 0;
            vs_free_remove(heap, next);
            cur += VS_SIZE(nbits);
        }
        kept = vs_split(heap, chunk, cur, need);
        next = chunk + (kept << VS_UNIT_SHIFT);
        if (kept == cur && next < end) vs_set_prev(heap, next, kept);
        vs_make_busy(heap, chunk, kept, VS_PREV(bits), size, 0);
        return 1;
    }
    case BLOCK_BACKEND:
        if (size <= heap->MemStats.VsMaxSize || size > backend(heap)->MaxAllocationSize ||
            align_up(size, PAGE) != ref->range->UnitSize * PAGE)
            return 0;
        ref->range->UnusedBytes = (u32)(ref->range->UnitSize * PAGE - size);
        return 1;
    default:
        if (size <= backend(heap)->MaxAllocationSize ||
            align_up(size, PAGE) != large_pages(ref->large) * PAGE)
            return 0;
        ref->large->VirtualAddress =
            (uptr)large_base(ref->large) | (large_pages(ref->large) * PAGE - size);
        return 1;
    }
}

/* status receives STATUS_ACCESS_VIOLATION or STATUS_NO_MEMORY on failure. */
static void *heap_realloc(SEGMENT_HEAP *heap, u32 flags, void *ptr, uptr size, u32 *status)
{
    BLOCK_REF ref;
    u8 *block_end;
    uptr old_size;
    void *new_ptr;

    if (!lookup_block(heap, ptr, &ref, 0)) {
        *status = STATUS_ACCESS_VIOLATION;
        return 0;
    }
    *status = STATUS_NO_MEMORY;
    if (size > MAX_REQUEST) return 0;
    old_size = block_request(heap, &ref, &block_end);
    if (resize_in_place(heap, &ref, size)) {
        if ((flags & HEAP_ZERO_MEMORY) && size > old_size)
            zero_bytes((u8 *)ptr + old_size, size - old_size);
        return ptr;
    }
    if (flags & HEAP_REALLOC_IN_PLACE_ONLY) return 0;
    new_ptr = heap_alloc(heap, flags, size);
    if (!new_ptr) return 0;
    copy_bytes(new_ptr, ptr, old_size < size ? old_size : size);
    free_block(heap, &ref);
    return new_ptr;
}

/* ------------------------------------------------------------------ validation */

/* What the segment scan counted, to compare with the trees, lists and statistics. */
typedef struct TALLY {
    uptr free_ranges, free_committed, committed, reserved;
    uptr vs_subsegments, vs_units, vs_free_chunks, vs_free_units, vs_internal;
    uptr lfh_subsegments;
} TALLY;

#define TREE_LIMIT ((uptr)1 << 24)

/* Checks one chunk header against its subsegment and neighbours. busy: 1 busy, 0 free. */
static int vs_chunk_ok(SEGMENT_HEAP *heap, HEAP_VS_SUBSEGMENT *sub, u8 *chunk, int busy)
{
    uptr bits = vs_decode(heap, chunk), size = VS_SIZE(bits), prev = VS_PREV(bits);
    u8 *end = vs_end(sub), *first = vs_first_chunk(sub), *next;
    if (VS_COST(bits) || VS_ALLOCATED(bits) != (uptr)busy) return 0;
    if (size < (VS_FREE_HDR >> VS_UNIT_SHIFT) || size > (uptr)(end - chunk) >> VS_UNIT_SHIFT)
        return 0;
    if ((chunk == first) != (prev == 0)) return 0;
    if (prev) {
        if (prev > (uptr)(chunk - first) >> VS_UNIT_SHIFT) return 0;
        if (VS_SIZE(vs_decode(heap, chunk - (prev << VS_UNIT_SHIFT))) != prev) return 0;
    }
    next = chunk + (size << VS_UNIT_SHIFT);
    if (next < end && VS_PREV(vs_decode(heap, next)) != size) return 0;
    if (busy) {
        u32 cb = vs_header(chunk)->AllocatedChunkBits;
        if ((cb & VS_BITS_PAGE_OFFSET) != vs_page_offset_bits(heap, chunk, sub)) return 0;
        if (cb & ~(VS_BITS_PAGE_OFFSET | VS_BITS_UNUSED_BYTES | VS_BITS_SKIP_DURING_WALK))
            return 0;
#ifdef SEGHEAP_PTR64
        if (vs_header(chunk)->Spare) return 0;
#endif
        if (cb & VS_BITS_UNUSED_BYTES) {
            uptr unused = get_trailer(next);
            if (!unused || unused > (size << VS_UNIT_SHIFT) - VS_HDR) return 0;
        }
    }
    return 1;
}

/* The VS subsegment or LFH subsegment (by type flag) that p lies in, if heap has it. */
static u8 *range_of_type(SEGMENT_HEAP *heap, const void *p, u8 type)
{
    HEAP_PAGE_SEGMENT *seg = find_segment(heap, p);
    u32 first;
    if (!seg) return 0;
    first = range_first(seg, (u32)(((uptr)p - (uptr)seg) >> SEGHEAP_PAGE_SHIFT));
    if (first >= UNITS) return 0;
    if ((desc_at(seg, first)->RangeFlags & (RANGE_ALLOCATED | RANGE_VS | RANGE_LFH)) !=
            (RANGE_ALLOCATED | type) ||
        !allocated_range_ok(seg, first))
        return 0;
    return unit_addr(seg, first);
}

/* Whether entry's neighbours are each the list head or a subsegment of the given type (so
 * that following them is safe), and point back at entry. */
static int subsegment_links_ok(SEGMENT_HEAP *heap, LIST *entry, LIST *head, LIST *head2, u8 type)
{
    LIST *n = entry->Flink, *p = entry->Blink;
    if (n != head && n != head2 && range_of_type(heap, n, type) != (u8 *)n) return 0;
    if (p != head && p != head2 && range_of_type(heap, p, type) != (u8 *)p) return 0;
    return n->Blink == entry && p->Flink == entry;
}

/* Whether a tree node may be dereferenced: it lies where its kind of node lives. */
static int node_ok(SEGMENT_HEAP *heap, int kind, const RB_NODE *n)
{
    if ((uptr)n & (PTR_SIZE - 1)) return 0;
    if (kind == TREE_PAGES) {
        HEAP_PAGE_SEGMENT *seg = find_segment(heap, n);
        uptr off = seg ? (uptr)n - (uptr)seg : 0;
        return seg && off % sizeof(HEAP_PAGE_RANGE_DESCRIPTOR) == 0 &&
               off / sizeof(HEAP_PAGE_RANGE_DESCRIPTOR) >= FIRST_DESCRIPTOR &&
               off < sizeof(HEAP_PAGE_SEGMENT);
    }
    if (kind == TREE_VS) {
        u8 *sub = range_of_type(heap, n, RANGE_VS);
        const u8 *chunk = (const u8 *)n - PTR_SIZE;
        return sub && !((uptr)chunk & (VS_UNIT - 1)) && chunk >= vs_first_chunk((HEAP_VS_SUBSEGMENT *)sub) &&
               chunk + VS_FREE_HDR <= vs_end((HEAP_VS_SUBSEGMENT *)sub);
    }
    return range_of_type(heap, n, RANGE_VS) != 0;
}

/* Shape, colours, order and node placement of a tree; returns its node count or -1. */
static i32 check_tree(SEGMENT_HEAP *heap, int kind, RB_TREE *t)
{
    RB_NODE *n, *prev = 0;
    uptr count = 0, seen = 0;
    /* every node is placed where its kind lives before anything reads it */
    RB_NODE *stack[2 * 8 * sizeof(void *) + 2];
    int depth = 0;
    n = t->Root;
    if (n && (!node_ok(heap, kind, n) || rb_parent(n))) return -1;
    while (n || depth) {
        while (n) {
            if (!node_ok(heap, kind, n) || depth >= (int)(sizeof(stack) / sizeof(stack[0])))
                return -1;
            if (++seen > TREE_LIMIT) return -1;
            stack[depth++] = n;
            n = n->Children[0];
        }
        n = stack[--depth];
        if (n->Children[1] && !node_ok(heap, kind, n->Children[1])) return -1;
        n = n->Children[1];
    }
    if (t->Root && (rb_red(t->Root) || rb_check(heap, kind, t->Root, 0, &count, TREE_LIMIT, 0) < 0))
        return -1;
    for (n = rb_first(t->Root); n; n = rb_next(n)) {
        if (prev && !rb_less(heap, kind, prev, n)) return -1;
        prev = n;
    }
    if (t->Min != rb_first(t->Root)) return -1;
    return (i32)count;
}

static int validate_vs_subsegment(SEGMENT_HEAP *heap, HEAP_VS_SUBSEGMENT *sub, u32 pages,
                                  TALLY *tally)
{
    u8 *chunk = vs_first_chunk(sub), *end;
    int prev_free = 0;
    if (!vs_sub_ok(sub, pages * PAGE)) return 0;
    if (sub->CommitBitmap != (pages >= 64 ? ~(u64)0 : ((u64)1 << pages) - 1)) return 0;
    if (!subsegment_links_ok(heap, &sub->ListEntry, &heap->VsContext.SubsegmentList,
                             &heap->VsContext.SubsegmentList, RANGE_VS))
        return 0;
    end = vs_end(sub);
    while (chunk < end) {
        uptr bits = vs_decode(heap, chunk), size = VS_SIZE(bits);
        int busy = VS_ALLOCATED(bits) == 1;
        if (!vs_chunk_ok(heap, sub, chunk, busy)) return 0;
        if (busy) {
            u32 cb = vs_header(chunk)->AllocatedChunkBits;
            if ((cb & VS_BITS_UNUSED_BYTES) &&
                !check_trailer(chunk + VS_HDR, chunk + (size << VS_UNIT_SHIFT)))
                return 0;
            if (cb & VS_BITS_SKIP_DURING_WALK) tally->vs_internal++;
            prev_free = 0;
        } else {
            if (prev_free) return 0;
            tally->vs_free_chunks++;
            tally->vs_free_units += size;
            prev_free = 1;
        }
        chunk += size << VS_UNIT_SHIFT;
    }
    if (chunk != end) return 0;
    tally->vs_subsegments++;
    tally->vs_units += sub->Size;
    return 1;
}

static int validate_lfh_subsegment(SEGMENT_HEAP *heap, HEAP_LFH_SUBSEGMENT *sub, u32 bytes,
                                   TALLY *tally)
{
    HEAP_LFH_BUCKET *bucket = lfh_owner(heap, sub);
    u32 block, i, free_count = 0, words;
    if (!lfh_sub_ok(heap, sub, bytes) || sub->FreeCount > sub->BlockCount) return 0;
    block = lfh_block_bytes(heap, sub);
    if (sub->Location != (sub->FreeCount ? LFH_LOCATION_AVAILABLE : LFH_LOCATION_FULL))
        return 0;
    if (sub->FreeHint > sub->BlockCount) return 0;
    words = lfh_words(sub->BlockCount);
    for (i = 0; i < words; i++) {
        u64 word = sub->BlockBitmap[i], valid = ~(u64)0;
        u32 rest = sub->BlockCount - i * 32;
        if (rest < 32) valid = ((u64)1 << (2 * rest)) - 1;
        if (word & ~valid) return 0;
        if ((word >> 1) & LFH_BUSY_BITS & ~word) return 0; /* unused-bytes bit of a free block */
    }
    for (i = 0; i < sub->BlockCount; i++) {
        u64 word = sub->BlockBitmap[i / 32] >> (2 * (i % 32));
        u8 *slot = lfh_slot(heap, sub, i);
        if (!(word & 1)) {
            if (i < sub->FreeHint) return 0;
            if (*(uptr *)slot != lfh_free_word(heap, slot)) return 0;
            free_count++;
        } else if ((word & 2) && !check_trailer(slot, slot + block)) {
            return 0;
        }
    }
    if (free_count != sub->FreeCount) return 0;
    if (!subsegment_links_ok(heap, &sub->ListEntry, &bucket->State.AvailableSubsegmentList,
                             &bucket->State.FullSubsegmentList, RANGE_LFH))
        return 0;
    tally->lfh_subsegments++;
    return 1;
}

static int validate_segment(SEGMENT_HEAP *heap, HEAP_PAGE_SEGMENT *seg, TALLY *tally)
{
    u32 u, i;
    int prev_free = 0;
    if (seg->Signature != segment_signature(heap, seg)) return 0;
    for (u = 0; u < FIRST_DESCRIPTOR; u++) {
        HEAP_PAGE_RANGE_DESCRIPTOR *d = desc_at(seg, u);
        if (d->RangeFlags != (RANGE_COMMITTED | RANGE_ALLOCATED | (u ? 0 : RANGE_FIRST)) ||
            d->UnitSize != (u ? u : FIRST_DESCRIPTOR))
            return 0;
    }
    tally->committed += FIRST_DESCRIPTOR;
    tally->reserved += UNITS;
    while (u < UNITS) {
        HEAP_PAGE_RANGE_DESCRIPTOR *d = desc_at(seg, u);
        u32 n = d->UnitSize, committed = 0;
        u8 type = d->RangeFlags & (u8) ~(RANGE_COMMITTED | RANGE_FIRST);
        if (!(d->RangeFlags & RANGE_FIRST) || !n || n > UNITS - u) return 0;
        if (type != 0 && type != RANGE_ALLOCATED && type != (RANGE_ALLOCATED | RANGE_VS) &&
            type != (RANGE_ALLOCATED | RANGE_LFH))
            return 0;
        for (i = 0; i < n; i++) {
            HEAP_PAGE_RANGE_DESCRIPTOR *e = desc_at(seg, u + i);
            committed += (e->RangeFlags & RANGE_COMMITTED) != 0;
            if (i && (e->RangeFlags & (u8)~RANGE_COMMITTED) != type) return 0;
            if (i && e->UnitSize != i) return 0;
        }
        tally->committed += committed;
        if (d->CommittedPageCount != committed) return 0;
        if (type) {
            u8 *start = unit_addr(seg, u);
            if (!allocated_range_ok(seg, u)) return 0;
            if (type & RANGE_VS) {
                if (!validate_vs_subsegment(heap, (HEAP_VS_SUBSEGMENT *)start, range_usable(d),
                                            tally))
                    return 0;
            } else if (type & RANGE_LFH) {
                if (!validate_lfh_subsegment(heap, (HEAP_LFH_SUBSEGMENT *)start,
                                             range_usable(d) * (u32)PAGE, tally))
                    return 0;
            } else if (d->UnusedBytes >= n * PAGE) {
                return 0;
            }
            prev_free = 0;
        } else {
            if (prev_free) return 0;
            tally->free_ranges++;
            tally->free_committed += committed;
            prev_free = 1;
        }
        u += n;
    }
    return 1;
}

static int validate_lfh_buckets(SEGMENT_HEAP *heap, TALLY *tally)
{
    u32 i;
    uptr subsegments = 0;
    for (i = 1; i < SEGHEAP_LFH_BUCKETS; i++) {
        uptr v = heap->LfhContext.Buckets[i], available = 0, full = 0, blocks = 0;
        HEAP_LFH_BUCKET *b = (HEAP_LFH_BUCKET *)v;
        LIST *head, *e;
        if (!v || (v & 1)) continue;
        if ((u8 *)b < (u8 *)(heap + 1) || (u8 *)(b + 1) > heap->AllocatedBase || (v & 7))
            return 0;
        if (b->State.BucketIndex != i || b->State.IsBucket != 1) return 0;
        head = &b->State.AvailableSubsegmentList;
        for (e = head->Flink; e != head; e = e->Flink) {
            HEAP_LFH_SUBSEGMENT *sub = CONTAINING(e, HEAP_LFH_SUBSEGMENT, ListEntry);
            if (range_of_type(heap, sub, RANGE_LFH) != (u8 *)sub || sub->Owner != &b->State ||
                sub->Location != LFH_LOCATION_AVAILABLE || ++available > tally->lfh_subsegments)
                return 0;
            blocks += sub->BlockCount;
        }
        head = &b->State.FullSubsegmentList;
        for (e = head->Flink; e != head; e = e->Flink) {
            HEAP_LFH_SUBSEGMENT *sub = CONTAINING(e, HEAP_LFH_SUBSEGMENT, ListEntry);
            if (range_of_type(heap, sub, RANGE_LFH) != (u8 *)sub || sub->Owner != &b->State ||
                sub->Location != LFH_LOCATION_FULL || ++full > tally->lfh_subsegments)
                return 0;
            blocks += sub->BlockCount;
        }
        if (available != b->State.AvailableSubsegmentCount ||
            available + full != b->TotalSubsegmentCount || blocks != b->TotalBlockCount)
            return 0;
        subsegments += available + full;
    }
    return subsegments == tally->lfh_subsegments;
}

static int validate_large(SEGMENT_HEAP *heap, TALLY *tally)
{
    RB_NODE *n;
    uptr count = 0, reserved = 0, committed = 0;
    if (check_tree(heap, TREE_LARGE, &heap->LargeAllocMetadata) < 0) return 0;
    for (n = heap->LargeAllocMetadata.Min; n; n = rb_next(n)) {
        HEAP_LARGE_ALLOC_DATA *meta = CONTAINING(n, HEAP_LARGE_ALLOC_DATA, TreeNode);
        BLOCK_REF ref;
        if (!lookup_block(heap, meta, &ref, 1) || ref.kind != BLOCK_VS ||
            !(vs_header(ref.block)->AllocatedChunkBits & VS_BITS_SKIP_DURING_WALK))
            return 0;
        if (!large_pages(meta) || (meta->VirtualAddress & LARGE_UNUSED_MASK) >= PAGE ||
            (meta->Bits & 0xFFDu) || !large_base(meta))
            return 0;
        count++;
        reserved += large_reserved_pages(meta);
        committed += large_pages(meta);
    }
    if (count != tally->vs_internal || reserved != heap->LargeReservedPages ||
        committed != heap->LargeCommittedPages)
        return 0;
    tally->reserved += reserved;
    tally->committed += committed;
    return 1;
}

static int validate_heap(SEGMENT_HEAP *heap)
{
    HEAP_SEG_CONTEXT *ctx = backend(heap);
    TALLY tally;
    LIST *e, *prev;
    uptr n = 0;
    i32 count;

    zero_bytes(&tally, sizeof(tally));
    if ((u8 *)heap->AllocatedBase < (u8 *)(heap + 1) ||
        heap->AllocatedBase > heap->UncommittedBase ||
        heap->UncommittedBase > heap->ReservedLimit)
        return 0;
    if (heap->SegContexts[1].SegmentListHead.Flink != &heap->SegContexts[1].SegmentListHead)
        return 0;
    prev = &ctx->SegmentListHead;
    for (e = ctx->SegmentListHead.Flink; e != &ctx->SegmentListHead; prev = e, e = e->Flink) {
        HEAP_PAGE_SEGMENT *seg = (HEAP_PAGE_SEGMENT *)e;
        if (++n > ctx->SegmentCount || ((uptr)seg & (SEGHEAP_SEGMENT_SIZE - 1))) return 0;
        if (e->Blink != prev || !validate_segment(heap, seg, &tally)) return 0;
    }
    if (n != ctx->SegmentCount || ctx->SegmentListHead.Blink != prev) return 0;
    count = check_tree(heap, TREE_PAGES, &ctx->FreePageRanges);
    if (count < 0 || (uptr)count != tally.free_ranges) return 0;
    {
        RB_NODE *r;
        for (r = ctx->FreePageRanges.Min; r; r = rb_next(r)) {
            HEAP_PAGE_RANGE_DESCRIPTOR *d = (HEAP_PAGE_RANGE_DESCRIPTOR *)r;
            if (!(d->RangeFlags & RANGE_FIRST) || (d->RangeFlags & RANGE_ALLOCATED)) return 0;
        }
    }
    if (tally.free_committed != heap->MemStats.FreeCommittedPages) return 0;

    count = check_tree(heap, TREE_VS, &heap->VsContext.FreeChunkTree);
    if (count < 0 || (uptr)count != tally.vs_free_chunks) return 0;
    n = 0;
    for (e = heap->VsContext.SubsegmentList.Flink; e != &heap->VsContext.SubsegmentList;
         e = e->Flink) {
        if (range_of_type(heap, e, RANGE_VS) != (u8 *)e || ++n > tally.vs_subsegments) return 0;
    }
    if (n != tally.vs_subsegments || tally.vs_units != heap->VsContext.TotalCommittedUnits ||
        tally.vs_free_units != heap->VsContext.FreeCommittedUnits)
        return 0;
    {
        RB_NODE *r;
        for (r = heap->VsContext.FreeChunkTree.Min; r; r = rb_next(r)) {
            u8 *chunk = vs_chunk_of_node(r);
            if (!vs_chunk_ok(heap, vs_sub_of(chunk), chunk, 0)) return 0;
        }
    }
    if (!validate_lfh_buckets(heap, &tally) || !validate_large(heap, &tally)) return 0;
    return tally.committed == heap->MemStats.TotalCommittedPages &&
           tally.reserved == heap->MemStats.TotalReservedPages;
}

static int validate_block(SEGMENT_HEAP *heap, const void *ptr)
{
    BLOCK_REF ref;
    u8 *block_end;
    uptr size;
    if (!lookup_block(heap, ptr, &ref, 0)) return 0;
    size = block_request(heap, &ref, &block_end);
    if ((ref.kind == BLOCK_VS || ref.kind == BLOCK_LFH) && (u8 *)ptr + size != block_end)
        return check_trailer(ptr, block_end);
    return 1;
}

/* ------------------------------------------------------------------ walking */

#define WALK_BUSY (RTL_HEAP_ENTRY_BUSY | RTL_HEAP_ENTRY_BLOCK | RTL_HEAP_ENTRY_COMMITTED)

static u32 walk_set(RTL_HEAP_WALK_ENTRY *e, void *data, uptr size, uptr overhead, u16 flags,
                    u8 index)
{
    e->DataAddress = data;
    e->DataSize = size;
    e->OverheadBytes = (u8)(overhead > 255 ? 255 : overhead);
    e->SegmentIndex = index;
    e->Flags = flags;
    e->Segment.CommittedSize = 0;
    e->Segment.UnCommittedSize = 0;
    e->Segment.FirstEntry = 0;
    e->Segment.LastEntry = 0;
    return STATUS_SUCCESS;
}

static u8 segment_index(SEGMENT_HEAP *heap, HEAP_PAGE_SEGMENT *seg)
{
    LIST *e, *head = &backend(heap)->SegmentListHead;
    u32 i = 0;
    for (e = head->Flink; e != head && e != &seg->ListEntry; e = e->Flink) i++;
    return (u8)i;
}

/* Reports the first large block above address after (every node on the way checked). */
static u32 walk_large_after(SEGMENT_HEAP *heap, uptr after, RTL_HEAP_WALK_ENTRY *e)
{
    RB_NODE *n = heap->LargeAllocMetadata.Root, *best = 0;
    HEAP_LARGE_ALLOC_DATA *meta;
    uptr depth = 0;
    while (n) {
        if (!node_ok(heap, TREE_LARGE, n) || ++depth > 2 * 8 * PTR_SIZE)
            return STATUS_INVALID_PARAMETER;
        meta = CONTAINING(n, HEAP_LARGE_ALLOC_DATA, TreeNode);
        if ((uptr)large_base(meta) > after) {
            best = n;
            n = n->Children[0];
        } else {
            n = n->Children[1];
        }
    }
    if (!best) return STATUS_NO_MORE_ENTRIES;
    meta = CONTAINING(best, HEAP_LARGE_ALLOC_DATA, TreeNode);
    return walk_set(e, large_base(meta), large_request(meta),
                    large_pages(meta) * PAGE - large_request(meta), WALK_BUSY, 0);
}

static u32 walk_region(SEGMENT_HEAP *heap, HEAP_PAGE_SEGMENT *seg, RTL_HEAP_WALK_ENTRY *e)
{
    uptr committed = count_committed(seg, 0, UNITS);
    walk_set(e, seg, SEGHEAP_SEGMENT_SIZE, 0, RTL_HEAP_ENTRY_REGION, segment_index(heap, seg));
    e->Segment.CommittedSize = (u32)(committed * PAGE);
    e->Segment.UnCommittedSize = (u32)((UNITS - committed) * PAGE);
    e->Segment.FirstEntry = unit_addr(seg, FIRST_DESCRIPTOR);
    e->Segment.LastEntry = (u8 *)seg + SEGHEAP_SEGMENT_SIZE;
    return STATUS_SUCCESS;
}

static u32 walk_after_segment(SEGMENT_HEAP *heap, HEAP_PAGE_SEGMENT *seg, RTL_HEAP_WALK_ENTRY *e)
{
    if (seg->ListEntry.Flink != &backend(heap)->SegmentListHead)
        return walk_region(heap, (HEAP_PAGE_SEGMENT *)seg->ListEntry.Flink, e);
    return walk_large_after(heap, 0, e);
}

/* The first chunk at or after chunk that RtlWalkHeap reports (0: none; *bad on corruption). */
static u8 *vs_next_visible(SEGMENT_HEAP *heap, HEAP_VS_SUBSEGMENT *sub, u8 *chunk, int *bad)
{
    u8 *end = vs_end(sub);
    while (chunk < end) {
        uptr bits = vs_decode(heap, chunk);
        int busy = VS_ALLOCATED(bits) == 1;
        if (!vs_chunk_ok(heap, sub, chunk, busy)) {
            *bad = 1;
            return 0;
        }
        if (!busy || !(vs_header(chunk)->AllocatedChunkBits & VS_BITS_SKIP_DURING_WALK))
            return chunk;
        chunk += VS_SIZE(bits) << VS_UNIT_SHIFT;
    }
    return 0;
}

static u32 walk_vs_chunk(SEGMENT_HEAP *heap, u8 *chunk, u8 index, RTL_HEAP_WALK_ENTRY *e)
{
    uptr bits = vs_decode(heap, chunk), bytes = VS_SIZE(bits) << VS_UNIT_SHIFT;
    if (VS_ALLOCATED(bits)) {
        uptr request = vs_request(heap, chunk);
        return walk_set(e, chunk + VS_HDR, request, bytes - request, WALK_BUSY, index);
    }
    return walk_set(e, chunk + VS_HDR, bytes - VS_HDR, VS_HDR, 0, index);
}

/* The first busy LFH block at index or after; BlockCount if none. */
static u32 lfh_next_busy(const HEAP_LFH_SUBSEGMENT *sub, u32 index)
{
    while (index < sub->BlockCount) {
        u64 word = sub->BlockBitmap[index / 32] & LFH_BUSY_BITS;
        word &= ~(((u64)1 << (2 * (index % 32))) - 1);
        if (word) return (index & ~31u) + ctz64(word) / 2;
        index = (index & ~31u) + 32;
    }
    return sub->BlockCount;
}

static u32 walk_lfh_block(SEGMENT_HEAP *heap, HEAP_LFH_SUBSEGMENT *sub, u32 index, u8 seg_index,
                          RTL_HEAP_WALK_ENTRY *e)
{
    uptr request = lfh_request(heap, sub, index);
    return walk_set(e, lfh_slot(heap, sub, index), request, lfh_block_bytes(heap, sub) - request,
                    WALK_BUSY, seg_index);
}

static u32 walk_from_unit(SEGMENT_HEAP *heap, HEAP_PAGE_SEGMENT *seg, u32 u,
                          RTL_HEAP_WALK_ENTRY *e);

/* Reports what follows the entries of the allocated range at unit first: its guard page (an
 * uncommitted entry) when it has one, else the first entry after the range. */
static u32 walk_after_range(SEGMENT_HEAP *heap, HEAP_PAGE_SEGMENT *seg, u32 first,
                            RTL_HEAP_WALK_ENTRY *e)
{
    HEAP_PAGE_RANGE_DESCRIPTOR *d = desc_at(seg, first);
    u32 usable = range_usable(d);
    if (usable != d->UnitSize)
        return walk_set(e, unit_addr(seg, first + usable), (uptr)(d->UnitSize - usable) * PAGE, 0,
                        RTL_HEAP_ENTRY_UNCOMMITTED, segment_index(heap, seg));
    return walk_from_unit(heap, seg, first + d->UnitSize, e);
}

/* Reports the first entry from unit u of seg on (u starts a range or a run of a free range). */
static u32 walk_from_unit(SEGMENT_HEAP *heap, HEAP_PAGE_SEGMENT *seg, u32 u, RTL_HEAP_WALK_ENTRY *e)
{
    u8 index = segment_index(heap, seg);
    while (u < UNITS) {
        u32 first = range_first(seg, u), n;
        HEAP_PAGE_RANGE_DESCRIPTOR *d;
        u8 *start;
        if (first >= UNITS) return STATUS_INVALID_PARAMETER;
        d = desc_at(seg, first);
        n = d->UnitSize;
        start = unit_addr(seg, first);
        if (!(d->RangeFlags & RANGE_ALLOCATED)) {
            u8 committed = desc_at(seg, u)->RangeFlags & RANGE_COMMITTED;
            u32 j = u;
            while (j < first + n && (desc_at(seg, j)->RangeFlags & RANGE_COMMITTED) == committed)
                j++;
            return walk_set(e, unit_addr(seg, u), (uptr)(j - u) * PAGE, 0,
                            committed ? 0 : RTL_HEAP_ENTRY_UNCOMMITTED, index);
        }
        if (!allocated_range_ok(seg, first)) return STATUS_INVALID_PARAMETER;
        if (d->RangeFlags & RANGE_VS) {
            HEAP_VS_SUBSEGMENT *sub = (HEAP_VS_SUBSEGMENT *)start;
            int bad = 0;
            u8 *chunk;
            if (!vs_sub_ok(sub, range_usable(d) * PAGE)) return STATUS_INVALID_PARAMETER;
            chunk = vs_next_visible(heap, sub, vs_first_chunk(sub), &bad);
            if (bad) return STATUS_INVALID_PARAMETER;
            if (chunk) return walk_vs_chunk(heap, chunk, index, e);
            if (range_usable(d) != n) return walk_after_range(heap, seg, first, e);
        } else if (d->RangeFlags & RANGE_LFH) {
            HEAP_LFH_SUBSEGMENT *sub = (HEAP_LFH_SUBSEGMENT *)start;
            u32 i;
            if (!lfh_sub_ok(heap, sub, range_usable(d) * PAGE)) return STATUS_INVALID_PARAMETER;
            i = lfh_next_busy(sub, 0);
            if (i < sub->BlockCount) return walk_lfh_block(heap, sub, i, index, e);
            if (range_usable(d) != n) return walk_after_range(heap, seg, first, e);
        } else {
            return walk_set(e, start, n * PAGE - d->UnusedBytes, d->UnusedBytes, WALK_BUSY, index);
        }
        u = first + n;
    }
    return walk_after_segment(heap, seg, e);
}

static u32 heap_walk(SEGMENT_HEAP *heap, RTL_HEAP_WALK_ENTRY *e)
{
    u8 *data = e->DataAddress;
    HEAP_SEG_CONTEXT *ctx = backend(heap);
    HEAP_PAGE_SEGMENT *seg;
    HEAP_LARGE_ALLOC_DATA *meta;
    u32 u, first, n;
    HEAP_PAGE_RANGE_DESCRIPTOR *d;
    u8 *start, index;

    if (!data) {
        if (ctx->SegmentListHead.Flink != &ctx->SegmentListHead)
            return walk_region(heap, (HEAP_PAGE_SEGMENT *)ctx->SegmentListHead.Flink, e);
        return walk_large_after(heap, 0, e);
    }
    seg = find_segment(heap, data);
    if (e->Flags & RTL_HEAP_ENTRY_REGION) {
        if (!seg || (u8 *)seg != data) return STATUS_INVALID_PARAMETER;
        return walk_from_unit(heap, seg, FIRST_DESCRIPTOR, e);
    }
    if (!seg) {
        meta = large_find(heap, data);
        if (!meta) return STATUS_INVALID_PARAMETER;
        return walk_large_after(heap, (uptr)data, e);
    }
    u = (u32)(((uptr)data - (uptr)seg) >> SEGHEAP_PAGE_SHIFT);
    first = range_first(seg, u);
    if (first >= UNITS) return STATUS_INVALID_PARAMETER;
    d = desc_at(seg, first);
    n = d->UnitSize;
    start = unit_addr(seg, first);
    index = segment_index(heap, seg);
    if (!(d->RangeFlags & RANGE_ALLOCATED)) {
        u8 committed = desc_at(seg, u)->RangeFlags & RANGE_COMMITTED;
        if ((uptr)data & (PAGE - 1)) return STATUS_INVALID_PARAMETER;
        while (u < first + n && (desc_at(seg, u)->RangeFlags & RANGE_COMMITTED) == committed) u++;
        return walk_from_unit(heap, seg, u, e);
    }
    if (!allocated_range_ok(seg, first)) return STATUS_INVALID_PARAMETER;
    if (u >= first + range_usable(d)) { /* the guard page's entry */
        if (data != unit_addr(seg, first + range_usable(d))) return STATUS_INVALID_PARAMETER;
        return walk_from_unit(heap, seg, first + n, e);
    }
    if (d->RangeFlags & RANGE_VS) {
        HEAP_VS_SUBSEGMENT *sub = (HEAP_VS_SUBSEGMENT *)start;
        u8 *chunk = data - VS_HDR, *next;
        int bad = 0;
        if (!vs_sub_ok(sub, range_usable(d) * PAGE) || chunk < vs_first_chunk(sub) || chunk >= vs_end(sub) || ((uptr)chunk & (VS_UNIT - 1)) ||
            !vs_chunk_ok(heap, sub, chunk, VS_ALLOCATED(vs_decode(heap, chunk)) == 1))
            return STATUS_INVALID_PARAMETER;
        next = vs_next_visible(
            heap, sub, chunk + (VS_SIZE(vs_decode(heap, chunk)) << VS_UNIT_SHIFT), &bad);
        if (bad) return STATUS_INVALID_PARAMETER;
        if (next) return walk_vs_chunk(heap, next, index, e);
        return walk_after_range(heap, seg, first, e);
    }
    if (d->RangeFlags & RANGE_LFH) {
        HEAP_LFH_SUBSEGMENT *sub = (HEAP_LFH_SUBSEGMENT *)start;
        u32 block = lfh_block_bytes(heap, sub), off = (u32)(data - start), i;
        u32 first_off = lfh_first_offset(heap, sub);
        if (!lfh_sub_ok(heap, sub, range_usable(d) * PAGE) || off < first_off || (off - first_off) % block ||
            (off - first_off) / block >= sub->BlockCount)
            return STATUS_INVALID_PARAMETER;
        i = lfh_next_busy(sub, (off - first_off) / block + 1);
        if (i < sub->BlockCount) return walk_lfh_block(heap, sub, i, index, e);
        return walk_after_range(heap, seg, first, e);
    }
    if (data != start) return STATUS_INVALID_PARAMETER;
    return walk_from_unit(heap, seg, first + n, e);
}

/* ------------------------------------------------------------------ PEB, parameters */

static void peb_add_heap(SEGMENT_HEAP *heap)
{
    u8 *peb = ntheap_get_peb();
    u32 *count;
    void **heaps;
    if (!peb) return;
    count = (u32 *)(peb + PEB_NUMBER_OF_HEAPS);
    heaps = *(void ***)(peb + PEB_PROCESS_HEAPS);
    if (heaps && *count < *(u32 *)(peb + PEB_MAXIMUM_NUMBER_OF_HEAPS)) {
        heaps[*count] = heap;
        heap->ProcessHeapListIndex = (u16)++*count;
    }
}

static void peb_remove_heap(SEGMENT_HEAP *heap)
{
    u8 *peb = ntheap_get_peb();
    u32 *count, i, j;
    void **heaps;
    if (!peb) return;
    count = (u32 *)(peb + PEB_NUMBER_OF_HEAPS);
    heaps = *(void ***)(peb + PEB_PROCESS_HEAPS);
    if (!heaps) return;
    for (i = 0; i < *count; i++) {
        if (heaps[i] != heap) continue;
        for (j = i + 1; j < *count; j++) {
            SEGMENT_HEAP *other = get_heap(heaps[j]);
            heaps[j - 1] = heaps[j];
            if (other) other->ProcessHeapListIndex = (u16)j;
        }
        heaps[--*count] = 0;
        return;
    }
}

/* The settings of a new heap: SEGHEAP_PARAMETERS when given, else those of PEB.ProcessHeap
 * when it is a segment heap, else the defaults; then clamped (see segheap.h). */
static int params_valid(const SEGHEAP_PARAMETERS *p)
{
    return p && p->Length == sizeof(SEGHEAP_PARAMETERS) &&
           p->Signature == SEGHEAP_PARAMETERS_SIGNATURE;
}

static void heap_settings(const void *params, SEGHEAP_PARAMETERS *cfg)
{
    const SEGHEAP_PARAMETERS *p = params;
    u8 *peb;
    SEGMENT_HEAP *ph;

    zero_bytes(cfg, sizeof(*cfg));
    peb = ntheap_get_peb();
    ph = peb ? get_heap(*(void **)(peb + PEB_PROCESS_HEAP)) : 0;
    if (!params_valid(p) && peb && !ph) /* the process heap: the loader's record, if any */
        p = (const SEGHEAP_PARAMETERS *)(peb + SEGHEAP_PARAMETERS_PEB_OFFSET);
    cfg->HeapKey = SEGHEAP_DEFAULT_HEAP_KEY;
    cfg->LfhKey = SEGHEAP_DEFAULT_LFH_KEY;
    cfg->RandomSeed = SEGHEAP_DEFAULT_SEED;
    if (params_valid(p)) {
        cfg->HeapKey = p->HeapKey;
        cfg->LfhKey = p->LfhKey;
        cfg->RandomSeed = p->RandomSeed;
        cfg->LfhMaxSize = p->LfhMaxSize;
        cfg->VsMaxSize = p->VsMaxSize;
        cfg->BackendMaxSize = p->BackendMaxSize;
        cfg->LfhActivationLive = p->LfhActivationLive;
        cfg->LfhActivationTotal = p->LfhActivationTotal;
        cfg->FreeCommitLimit = p->FreeCommitLimit;
    } else if (ph) {
        cfg->HeapKey = ph->MemStats.HeapKey;
        cfg->LfhKey = ph->MemStats.LfhKey;
        cfg->RandomSeed = ph->MemStats.RandomSeed;
        cfg->LfhMaxSize = ph->LfhContext.MaxBlockSize;
        cfg->VsMaxSize = ph->MemStats.VsMaxSize;
        cfg->BackendMaxSize = ph->SegContexts[0].MaxAllocationSize;
        cfg->LfhActivationLive = ph->MemStats.LfhActivationLive;
        cfg->LfhActivationTotal = ph->MemStats.LfhActivationTotal;
        cfg->FreeCommitLimit = ph->MemStats.FreeCommitLimit * SEGHEAP_PAGE_SIZE;
    }
    if (!cfg->RandomSeed) cfg->RandomSeed = SEGHEAP_DEFAULT_SEED;
    if (!cfg->LfhMaxSize || cfg->LfhMaxSize > SEGHEAP_DEFAULT_LFH_MAX)
        cfg->LfhMaxSize = SEGHEAP_DEFAULT_LFH_MAX;
    if (!cfg->VsMaxSize) cfg->VsMaxSize = SEGHEAP_DEFAULT_VS_MAX;
    if (cfg->VsMaxSize > SEGHEAP_MAX_VS_LIMIT) cfg->VsMaxSize = SEGHEAP_MAX_VS_LIMIT;
    if (cfg->VsMaxSize < cfg->LfhMaxSize) cfg->VsMaxSize = cfg->LfhMaxSize;
    if (!cfg->BackendMaxSize) cfg->BackendMaxSize = SEGHEAP_DEFAULT_BACKEND_MAX;
    if (cfg->BackendMaxSize > SEGHEAP_MAX_BACKEND_LIMIT)
        cfg->BackendMaxSize = SEGHEAP_MAX_BACKEND_LIMIT;
    if (cfg->BackendMaxSize < cfg->VsMaxSize) cfg->BackendMaxSize = cfg->VsMaxSize;
    if (!cfg->LfhActivationLive || cfg->LfhActivationLive > 31)
        cfg->LfhActivationLive = cfg->LfhActivationLive ? 31 : SEGHEAP_DEFAULT_LFH_LIVE;
    if (!cfg->LfhActivationTotal || cfg->LfhActivationTotal > 0x7FF)
        cfg->LfhActivationTotal = cfg->LfhActivationTotal ? 0x7FF : SEGHEAP_DEFAULT_LFH_TOTAL;
    if (!cfg->FreeCommitLimit) cfg->FreeCommitLimit = SEGHEAP_DEFAULT_FREE_COMMIT;
}

static void init_seg_context(SEGMENT_HEAP *heap, HEAP_SEG_CONTEXT *ctx, u32 segment_shift,
                             u8 unit_shift, u8 first_descriptor, u32 max_size)
{
    ctx->SegmentMask = ~(((uptr)1 << segment_shift) - 1);
    ctx->UnitShift = unit_shift;
    ctx->PagesPerUnitShift = (u8)(unit_shift - SEGHEAP_PAGE_SHIFT);
    ctx->FirstDescriptorIndex = first_descriptor;
    ctx->MaxAllocationSize = max_size;
    ctx->MemStatsOffset =
        (i16)((i32)__builtin_offsetof(SEGMENT_HEAP, MemStats) - (i32)((u8 *)ctx - (u8 *)heap));
    ctx->LfhContext = &heap->LfhContext;
    ctx->VsContext = &heap->VsContext;
    ctx->Heap = heap;
    list_init(&ctx->SegmentListHead);
}

/* ------------------------------------------------------------------ exports */

void *NTAPI RtlCreateHeap(u32 flags, void *base, uptr reserve, uptr commit, void *lock,
                          void *params)
{
    SEGHEAP_PARAMETERS cfg;
    uptr total = align_up(sizeof(SEGMENT_HEAP) + (SEGHEAP_LFH_BUCKETS - 1) *
                                                     (sizeof(HEAP_LFH_BUCKET) + 8),
                          PAGE);
    uptr size = sizeof(SEGMENT_HEAP);
    u32 protect = (flags & HEAP_CREATE_ENABLE_EXECUTE) ? PAGE_EXECUTE_READWRITE : PAGE_READWRITE;
    SEGMENT_HEAP *heap;
    void *commit_base;
    u32 i;

    (void)base;
    (void)reserve;
    (void)commit;
    (void)lock;
    heap_settings(params, &cfg);
    heap = vm_reserve(0, total, protect);
    if (!heap) return 0;
    commit_base = heap;
    if ((i32)NtAllocateVirtualMemory(CURRENT_PROCESS, &commit_base, 0, &size, MEM_COMMIT,
                                     protect) < 0) {
        vm_release(heap);
        return 0;
    }
    zero_bytes(heap, sizeof(SEGMENT_HEAP));
    heap->Signature = SEGMENT_HEAP_SIGNATURE;
    heap->GlobalFlags = flags;
    heap->MemStats.HeapKey = cfg.HeapKey;
    heap->MemStats.LfhKey = cfg.LfhKey;
    heap->MemStats.RandomSeed = cfg.RandomSeed;
    heap->MemStats.RandomState = cfg.RandomSeed;
    heap->MemStats.VsMaxSize = cfg.VsMaxSize;
    heap->MemStats.FreeCommitLimit = cfg.FreeCommitLimit / SEGHEAP_PAGE_SIZE;
    heap->MemStats.LfhActivationLive = (u16)cfg.LfhActivationLive;
    heap->MemStats.LfhActivationTotal = (u16)cfg.LfhActivationTotal;
    heap->AllocatedBase = (u8 *)(heap + 1);
    heap->UncommittedBase = (u8 *)heap + align_up(sizeof(SEGMENT_HEAP), PAGE);
    heap->ReservedLimit = (u8 *)heap + total;
    init_seg_context(heap, &heap->SegContexts[0], SEGHEAP_SEGMENT_SHIFT, SEGHEAP_PAGE_SHIFT,
                     FIRST_DESCRIPTOR, cfg.BackendMaxSize);
    init_seg_context(heap, &heap->SegContexts[1], 24, 16, 1, 0);
    list_init(&heap->VsContext.SubsegmentList);
    heap->VsContext.BackendCtx = &heap->SegContexts[0];
    heap->LfhContext.BackendCtx = &heap->SegContexts[0];
    heap->LfhContext.MaxBlockSize = (u16)cfg.LfhMaxSize;
    heap->LfhContext.MemStatsOffset =
        (i16)((i32)__builtin_offsetof(SEGMENT_HEAP, MemStats) -
              (i32)__builtin_offsetof(SEGMENT_HEAP, LfhContext));
    for (i = 1; i < SEGHEAP_LFH_BUCKETS; i++) heap->LfhContext.Buckets[i] = 1;
    peb_add_heap(heap);
    return heap;
}

void *NTAPI RtlDestroyHeap(void *handle)
{
    SEGMENT_HEAP *heap = get_heap(handle);
    HEAP_SEG_CONTEXT *ctx;
    u8 *peb;
    if (!heap) return handle;
    peb = ntheap_get_peb();
    if (peb && *(void **)(peb + PEB_PROCESS_HEAP) == heap) return handle;
    peb_remove_heap(heap);
    while (heap->LargeAllocMetadata.Root)
        large_free(heap, CONTAINING(heap->LargeAllocMetadata.Root, HEAP_LARGE_ALLOC_DATA, TreeNode));
    ctx = backend(heap);
    while (ctx->SegmentListHead.Flink != &ctx->SegmentListHead)
        segment_release(heap, (HEAP_PAGE_SEGMENT *)ctx->SegmentListHead.Flink);
    heap->Signature = 0;
    vm_release(heap);
    userinfo_drop_heap(handle);
    return 0;
}

static void heap_lock(SEGMENT_HEAP *heap, u32 flags)
{
    if (!(flags & HEAP_NO_SERIALIZE)) heap->GlobalLockCount++;
}

static void heap_unlock(SEGMENT_HEAP *heap, u32 flags)
{
    if (!(flags & HEAP_NO_SERIALIZE)) heap->GlobalLockCount--;
}

static u32 force_flags(const SEGMENT_HEAP *heap) { return heap->GlobalFlags & FORCE_FLAG_MASK; }

void *NTAPI RtlAllocateHeap(void *handle, u32 flags, uptr size)
{
    SEGMENT_HEAP *heap = get_heap(handle);
    void *ret;
    if (!heap) {
        if (flags & HEAP_GENERATE_EXCEPTIONS) raise_status(STATUS_INVALID_PARAMETER);
        return 0;
    }
    flags |= force_flags(heap);
    heap_lock(heap, flags);
    ret = heap_alloc(heap, flags, size);
    heap_unlock(heap, flags);
    if (!ret && (flags & HEAP_GENERATE_EXCEPTIONS)) raise_status(STATUS_NO_MEMORY);
    return userinfo_allocated(handle, flags, ret);
}

u32 NTAPI RtlFreeHeap(void *handle, u32 flags, void *ptr)
{
    SEGMENT_HEAP *heap;
    BLOCK_REF ref;
    int ok;
    if (!ptr) return 1;
    heap = get_heap(handle);
    if (!heap) {
        if (flags & HEAP_GENERATE_EXCEPTIONS) raise_status(STATUS_INVALID_PARAMETER);
        return 0;
    }
    flags |= force_flags(heap);
    heap_lock(heap, flags);
    ok = lookup_block(heap, ptr, &ref, 0);
    if (ok) {
        userinfo_remove(handle, ptr);
        free_block(heap, &ref);
    }
    heap_unlock(heap, flags);
    if (!ok && (flags & HEAP_GENERATE_EXCEPTIONS)) raise_status(STATUS_ACCESS_VIOLATION);
    return ok ? 1 : 0;
}

void *NTAPI RtlReAllocateHeap(void *handle, u32 flags, void *ptr, uptr size)
{
    SEGMENT_HEAP *heap;
    void *ret;
    u32 status = STATUS_SUCCESS;
    if (!ptr) return 0;
    heap = get_heap(handle);
    if (!heap) {
        if (flags & HEAP_GENERATE_EXCEPTIONS) raise_status(STATUS_INVALID_PARAMETER);
        return 0;
    }
    flags |= force_flags(heap);
    heap_lock(heap, flags);
    ret = heap_realloc(heap, flags, ptr, size, &status);
    heap_unlock(heap, flags);
    if (!ret && (flags & HEAP_GENERATE_EXCEPTIONS)) raise_status(status);
    userinfo_reallocated(handle, flags, ptr, ret);
    return ret;
}

uptr NTAPI RtlSizeHeap(void *handle, u32 flags, const void *ptr)
{
    SEGMENT_HEAP *heap = get_heap(handle);
    BLOCK_REF ref;
    u8 *block_end;
    uptr ret = (uptr)-1;
    if (!heap) {
        if (flags & HEAP_GENERATE_EXCEPTIONS) raise_status(STATUS_INVALID_PARAMETER);
        return ret;
    }
    flags |= force_flags(heap);
    heap_lock(heap, flags);
    if (lookup_block(heap, ptr, &ref, 0)) ret = block_request(heap, &ref, &block_end);
    heap_unlock(heap, flags);
    if (ret == (uptr)-1 && (flags & HEAP_GENERATE_EXCEPTIONS))
        raise_status(STATUS_ACCESS_VIOLATION);
    return ret;
}

u32 NTAPI RtlValidateHeap(void *handle, u32 flags, const void *ptr)
{
    SEGMENT_HEAP *heap = get_heap(handle);
    int ok;
    if (!heap) return 0;
    flags |= force_flags(heap);
    heap_lock(heap, flags);
    ok = ptr ? validate_block(heap, ptr) : validate_heap(heap);
    heap_unlock(heap, flags);
    return ok ? 1 : 0;
}

u32 NTAPI RtlWalkHeap(void *handle, RTL_HEAP_WALK_ENTRY *entry)
{
    SEGMENT_HEAP *heap = get_heap(handle);
    u32 status;
    if (!heap || !entry) return STATUS_INVALID_PARAMETER;
    heap_lock(heap, force_flags(heap));
    status = heap_walk(heap, entry);
    heap_unlock(heap, force_flags(heap));
    return status;
}

u32 NTAPI RtlLockHeap(void *handle)
{
    SEGMENT_HEAP *heap = get_heap(handle);
    if (!heap) return 0;
    heap->GlobalLockCount++;
    return 1;
}

u32 NTAPI RtlUnlockHeap(void *handle)
{
    SEGMENT_HEAP *heap = get_heap(handle);
    if (!heap || !heap->GlobalLockCount) return 0;
    heap->GlobalLockCount--;
    return 1;
}

u32 NTAPI RtlGetProcessHeaps(u32 count, void **heaps)
{
    u8 *peb = ntheap_get_peb();
    u32 total, i;
    void **list;
    if (!peb) return 0;
    total = *(u32 *)(peb + PEB_NUMBER_OF_HEAPS);
    list = *(void ***)(peb + PEB_PROCESS_HEAPS);
    if (!list) return 0;
    for (i = 0; i < total && i < count; i++) heaps[i] = list[i];
    return total;
}

u32 NTAPI RtlQueryHeapInformation(void *handle, u32 info_class, void *info, uptr length,
                                  uptr *return_length)
{
    if (!get_heap(handle)) return STATUS_INVALID_PARAMETER;
    if (info_class != HeapCompatibilityInformation) return STATUS_INVALID_INFO_CLASS;
    if (return_length) *return_length = sizeof(u32);
    if (length < sizeof(u32) || !info) return STATUS_BUFFER_TOO_SMALL;
    *(u32 *)info = HEAP_COMPATIBILITY_LFH;
    return STATUS_SUCCESS;
}

u32 NTAPI RtlSetHeapInformation(void *handle, u32 info_class, void *info, uptr length)
{
    if (info_class == HeapEnableTerminationOnCorruption) return STATUS_SUCCESS;
    if (info_class != HeapCompatibilityInformation) return STATUS_INVALID_INFO_CLASS;
    if (!get_heap(handle)) return STATUS_INVALID_PARAMETER;
    if (length < sizeof(u32) || !info) return STATUS_BUFFER_TOO_SMALL;
    return *(u32 *)info == HEAP_COMPATIBILITY_LFH ? STATUS_SUCCESS : STATUS_UNSUCCESSFUL;
}
