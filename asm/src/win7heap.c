/*
 * win7heap.c - heapemu's Windows 7 NT heap: back end + LFH front end, freestanding C.
 *
 * Written for heapemu from the project's heap fact sheet and the WinDbg transcript of seed 002;
 * our own code. Layout, units, keys and every modelling choice are described in win7heap.h.
 * The only way out is the system interface declared there (NtAllocateVirtualMemory,
 * NtFreeVirtualMemory, NtRaiseException, ntheap_get_peb), the same as ntheap.c's.
 *
 * Sections: helpers; keys; entry headers; segments; free lists; commit and UCRs; back end;
 * virtual blocks; LFH; validation; walking; exports.
 */
#include "win7heap.h"
#include "userinfo.h"

#define G ((uptr)sizeof(HEAP_ENTRY)) /* granularity: 8 (x86) / 16 (x64) */
#define PAGE ((uptr)WIN7HEAP_PAGE_SIZE)
#define CURRENT_PROCESS ((uptr)-1)
#define CONTAINING(ptr, type, field) ((type *)((u8 *)(ptr) - __builtin_offsetof(type, field)))

/* A UCR sentinel: busy | LAST_ENTRY block whose data is the HEAP_UCR_DESCRIPTOR. */
#define SENTINEL_BYTES ((uptr)(sizeof(HEAP_ENTRY) + sizeof(HEAP_UCR_DESCRIPTOR)))
#define SENTINEL_UNITS (SENTINEL_BYTES / G)
#define MIN_FREE_UNITS 2u /* header + LIST_ENTRY */
#define SEGMENT_HEADER_BYTES (((uptr)sizeof(HEAP_SEGMENT) + G - 1) & ~(G - 1))
#define HEAP_HEADER_BYTES \
    (((uptr)sizeof(HEAP) + sizeof(RTL_CRITICAL_SECTION) + sizeof(HEAP_LIST_LOOKUP) + \
      LIST_LOOKUP_FIRST_SIZE / 8 + LIST_LOOKUP_FIRST_SIZE * sizeof(LIST_ENTRY) + G - 1) & ~(G - 1))
#define UCR_INDEX_BYTES ((uptr)HEAP_UCR_INDEX_DATA + G)
#define EXT_LOOKUP_BYTES \
    ((uptr)sizeof(HEAP_LIST_LOOKUP) + (LIST_LOOKUP_LAST_SIZE - LIST_LOOKUP_FIRST_SIZE) / 8 + \
     (LIST_LOOKUP_LAST_SIZE - LIST_LOOKUP_FIRST_SIZE) * sizeof(LIST_ENTRY))
#define MAX_SEGMENTS 255u /* SegmentOffset is a byte */

/* Inside segments, HEAP_ENTRY_VIRTUAL_ALLOC (meaningless there) marks the heap's own blocks
 * that hold LFH data (_LFH_HEAP, zones, UserBlocks): !heap's "Internal". Blocks of the heap's
 * structures (header, UCR index, extended lookup) have UnusedBytes 1 instead (T2). */
#define HEAP_ENTRY_INTERNAL HEAP_ENTRY_VIRTUAL_ALLOC

#define FORCE_FLAG_MASK \
    (HEAP_NO_SERIALIZE | HEAP_GENERATE_EXCEPTIONS | HEAP_TAIL_CHECKING_ENABLED | \
     HEAP_FREE_CHECKING_ENABLED)
#define NO_LFH_FLAGS (HEAP_NO_SERIALIZE | HEAP_TAIL_CHECKING_ENABLED | HEAP_FREE_CHECKING_ENABLED)

/* What kind of back-end block an allocation makes. */
enum { BLOCK_USER = 0, BLOCK_INTERNAL = 1, BLOCK_STRUCTURE = 2 };

/* What a pointer turned out to be. */
enum { REF_NONE = 0, REF_BACKEND, REF_LFH, REF_VIRTUAL };
typedef struct BLOCK_REF {
    u32 kind;
    HEAP_SEGMENT *seg;             /* REF_BACKEND */
    HEAP_ENTRY *entry;             /* the block's header (all kinds) */
    uptr units;                    /* REF_BACKEND: block units; REF_LFH: BlockSize */
    HEAP_SUBSEGMENT *sub;          /* REF_LFH */
    HEAP_VIRTUAL_ALLOC_ENTRY *va;  /* REF_VIRTUAL */
} BLOCK_REF;

/* ------------------------------------------------------------------ helpers */

static uptr align_up(uptr value, uptr align) { return (value + align - 1) & ~(align - 1); }
static uptr align_down(uptr value, uptr align) { return value & ~(align - 1); }

static void list_init(LIST_ENTRY *head) { head->Flink = head->Blink = head; }

static void list_insert_before(LIST_ENTRY *pos, LIST_ENTRY *entry)
{
    entry->Flink = pos;
    entry->Blink = pos->Blink;
    pos->Blink->Flink = entry;
    pos->Blink = entry;
}

static void list_remove(LIST_ENTRY *entry)
{
    entry->Blink->Flink = entry->Flink;
    entry->Flink->Blink = entry->Blink;
}

static void mem_zero(void *dst, uptr n)
{
    u8 *p = dst;
    uptr i = 0;
    for (; i + sizeof(uptr) <= n && !((uptr)(p + i) & (sizeof(uptr) - 1)); i += sizeof(uptr))
        *(uptr *)(p + i) = 0;
    for (; i < n; i++) p[i] = 0;
}

/* Copies n bytes between two G-aligned, non-overlapping buffers. */
static void mem_copy(void *dst, const void *src, uptr n)
{
    u8 *d = dst;
    const u8 *s = src;
    uptr i = 0;
    for (; i + sizeof(uptr) <= n; i += sizeof(uptr)) *(uptr *)(d + i) = *(const uptr *)(s + i);
    for (; i < n; i++) d[i] = s[i];
}

static u32 heap_protect(const HEAP *heap)
{
    return (heap->Flags & HEAP_CREATE_ENABLE_EXECUTE) ? PAGE_EXECUTE_READWRITE : PAGE_READWRITE;
}

static void release_region(void *base)
{
    uptr size = 0;
    NtFreeVirtualMemory(CURRENT_PROCESS, &base, &size, MEM_RELEASE);
}

static int commit_pages(HEAP *heap, void *base, uptr size)
{
    return (i32)NtAllocateVirtualMemory(CURRENT_PROCESS, &base, 0, &size, MEM_COMMIT,
                                        heap_protect(heap)) >= 0;
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

/* A bad header met while using the heap: STATUS_HEAP_CORRUPTION, as Windows' termination on
 * corruption. If NtRaiseException ever returns, callers go on treating the block as unusable. */
static void heap_corruption(void) { raise_status(STATUS_HEAP_CORRUPTION); }

/* ------------------------------------------------------------------ keys */

static void get_keys(WIN7HEAP_KEYS *keys)
{
    u8 *peb = ntheap_get_peb();
    const WIN7HEAP_KEYS *rec;
    keys->Signature = 0;
    keys->Encoding = WIN7HEAP_DEFAULT_ENCODING;
    keys->LFHKey = WIN7HEAP_DEFAULT_LFH_KEY;
    keys->PointerKey = WIN7HEAP_DEFAULT_POINTER_KEY;
    if (!peb) return;
    rec = (const WIN7HEAP_KEYS *)(peb + WIN7HEAP_KEYS_PEB_OFFSET);
    if (rec->Signature != WIN7HEAP_KEYS_SIGNATURE) return;
    keys->Signature = rec->Signature;
    keys->Encoding = rec->Encoding;
    keys->LFHKey = rec->LFHKey;
    keys->PointerKey = rec->PointerKey;
}

/* After a heap took keys->Encoding: the record (written if it was missing) holds the next
 * value, xorshift32 of this one, so successive heaps get distinct, reproducible Encodings. */
static void advance_keys(const WIN7HEAP_KEYS *keys)
{
    u8 *peb = ntheap_get_peb();
    WIN7HEAP_KEYS *rec;
    u32 x = keys->Encoding;
    if (!peb) return;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    rec = (WIN7HEAP_KEYS *)(peb + WIN7HEAP_KEYS_PEB_OFFSET);
    rec->Encoding = x;
    rec->LFHKey = keys->LFHKey;
    rec->PointerKey = keys->PointerKey;
    rec->Signature = WIN7HEAP_KEYS_SIGNATURE;
}

static uptr lfh_key(void)
{
    WIN7HEAP_KEYS keys;
    get_keys(&keys);
    return keys.LFHKey;
}

/* ------------------------------------------------------------------ entry headers */

/* The encoded 32-bit word Size|Flags|SmallTagIndex (x86 +0, x64 +8). */
static u32 *entry_word(HEAP_ENTRY *entry) { return (u32 *)&entry->Size; }

static u32 heap_encoding(const HEAP *heap)
{
    return (heap->EncodeFlagMask & HEAP_ENCODE_FLAG_MASK) ? *(const u32 *)&heap->Encoding.Size : 0;
}

/* Decodes a back-end header: 1 and units/flags when its checksum holds, else 0. */
static int entry_decode(const HEAP *heap, HEAP_ENTRY *entry, uptr *units, u32 *flags)
{
    u32 word = *entry_word(entry) ^ heap_encoding(heap);
    u8 check = (u8)(word ^ (word >> 8) ^ (word >> 16));
    if (check != (u8)(word >> 24)) return 0;
    *units = word & 0xFFFFu;
    *flags = (word >> 16) & 0xFFu;
    return 1;
}

/* The same, raising STATUS_HEAP_CORRUPTION on a bad header (then 0 units, flags BUSY). */
static uptr entry_units(const HEAP *heap, HEAP_ENTRY *entry, u32 *flags)
{
    uptr units;
    u32 f;
    if (!entry_decode(heap, entry, &units, &f) || !units) {
        heap_corruption();
        if (flags) *flags = HEAP_ENTRY_BUSY;
        return 0;
    }
    if (flags) *flags = f;
    return units;
}

static void entry_encode(const HEAP *heap, HEAP_ENTRY *entry, uptr units, u32 flags)
{
    u32 word = ((u32)units & 0xFFFFu) | ((flags & 0xFFu) << 16);
    word |= (u32)(u8)(word ^ (word >> 8) ^ (word >> 16)) << 24;
    *entry_word(entry) = word ^ heap_encoding(heap);
}

static void entry_init(const HEAP *heap, HEAP_ENTRY *entry, uptr units, u32 flags,
                       uptr prev_units, u32 segment, u32 unused)
{
#ifdef WIN7HEAP_PTR64
    entry->PreviousBlockPrivateData = 0;
#endif
    entry_encode(heap, entry, units, flags);
    entry->PreviousSize = (u16)prev_units;
    entry->SegmentOffset = (u8)segment;
    entry->UnusedBytes = (u8)unused;
}

static HEAP_ENTRY *entry_at(void *base, uptr units) { return (HEAP_ENTRY *)((u8 *)base + units * G); }

/* Blocks of a request of `bytes` bytes, header included (T2: 0x100 -> 0x21 on x86). */
static uptr request_units(uptr bytes)
{
    uptr units = (bytes + 2 * G - 1) / G;
    return units < MIN_FREE_UNITS ? MIN_FREE_UNITS : units;
}

/* ------------------------------------------------------------------ segments */

static HEAP_SEGMENT *segment_of(LIST_ENTRY *link) { return CONTAINING(link, HEAP_SEGMENT, SegmentListEntry); }

static HEAP_SEGMENT *find_segment(HEAP *heap, const void *ptr)
{
    LIST_ENTRY *e;
    for (e = heap->SegmentList.Flink; e != &heap->SegmentList; e = e->Flink) {
        HEAP_SEGMENT *seg = segment_of(e);
        if ((const u8 *)ptr >= (u8 *)seg->BaseAddress && (const u8 *)ptr < (u8 *)seg->LastValidEntry)
            return seg;
    }
    return 0;
}

static u32 segment_index(HEAP *heap, HEAP_SEGMENT *target)
{
    u32 index = 0;
    LIST_ENTRY *e;
    for (e = heap->SegmentList.Flink; e != &heap->SegmentList; e = e->Flink, index++)
        if (segment_of(e) == target) break;
    return index;
}

static HEAP_UCR_DESCRIPTOR *ucr_of_segment_link(LIST_ENTRY *link)
{
    return CONTAINING(link, HEAP_UCR_DESCRIPTOR, SegmentEntry);
}

static HEAP_UCR_DESCRIPTOR *ucr_of_heap_link(LIST_ENTRY *link)
{
    return CONTAINING(link, HEAP_UCR_DESCRIPTOR, ListEntry);
}

/* 1 if [ptr, ptr + len) lies in committed memory of seg (outside its UCRs). */
static int segment_committed(HEAP_SEGMENT *seg, const void *ptr, uptr len)
{
    const u8 *p = ptr;
    LIST_ENTRY *e;
    if (p < (u8 *)seg->BaseAddress || p >= (u8 *)seg->LastValidEntry ||
        len > (uptr)((u8 *)seg->LastValidEntry - p))
        return 0;
    for (e = seg->UCRSegmentList.Flink; e != &seg->UCRSegmentList; e = e->Flink) {
        HEAP_UCR_DESCRIPTOR *ucr = ucr_of_segment_link(e);
        const u8 *a = ucr->Address;
        if (p < a + ucr->Size && a < p + len) return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------ free lists */

static LIST_ENTRY *free_link(HEAP_ENTRY *entry) { return &((HEAP_FREE_ENTRY *)entry)->FreeList; }
static HEAP_ENTRY *link_entry(LIST_ENTRY *link) { return &CONTAINING(link, HEAP_FREE_ENTRY, FreeList)->Entry; }

/* The lookup and slot (relative to BaseIndex) for free blocks of `units`; *catch_all says the
 * slot is the last lookup's last one, which holds every size from ArraySize - 1 up. */
static HEAP_LIST_LOOKUP *lookup_slot(HEAP *heap, uptr units, u32 *slot, int *catch_all)
{
    HEAP_LIST_LOOKUP *l = heap->BlocksIndex;
    for (;;) {
        if (units < l->ArraySize) {
            *slot = (u32)units - l->BaseIndex;
            *catch_all = !l->ExtendedLookup && units == l->ArraySize - 1;
            return l;
        }
        if (!l->ExtendedLookup) {
            *slot = l->ArraySize - 1 - l->BaseIndex;
            *catch_all = 1;
            return l;
        }
        l = l->ExtendedLookup;
    }
}

static void slot_mark(HEAP_LIST_LOOKUP *l, u32 slot, int used)
{
    u32 bit = 1u << (slot & 31);
    if (used)
        l->ListsInUseUlong[slot >> 5] |= bit;
    else
        l->ListsInUseUlong[slot >> 5] &= ~bit;
}

/* First slot >= from of l with a free block, or -1. */
static i32 slot_scan(HEAP_LIST_LOOKUP *l, u32 from)
{
    u32 count = l->ArraySize - l->BaseIndex;
    while (from < count) {
        u32 word = l->ListsInUseUlong[from >> 5] >> (from & 31);
        if (word) {
            from += (u32)__builtin_ctz(word);
            return from < count ? (i32)from : -1;
        }
        from = (from | 31) + 1;
    }
    return -1;
}

/* Units of a listed free block (its header checked). */
static uptr free_units(HEAP *heap, LIST_ENTRY *link) { return entry_units(heap, link_entry(link), 0); }

/* The first listed block after slot `slot` of l (in size order), or the list head. */
static LIST_ENTRY *next_listed(HEAP *heap, HEAP_LIST_LOOKUP *l, u32 slot)
{
    i32 found;
    u32 from = slot + 1;
    for (; l; l = l->ExtendedLookup, from = 0) {
        found = slot_scan(l, from);
        if (found >= 0) return l->ListHints[found].Flink;
    }
    return &heap->FreeLists;
}

/* Lists a free block: ascending size, first among blocks of its size (LIFO). */
static void insert_free(HEAP *heap, HEAP_ENTRY *entry, uptr units)
{
    LIST_ENTRY *link = free_link(entry), *head = &heap->FreeLists, *hint, *pos;
    u32 slot;
    int catch_all;
    HEAP_LIST_LOOKUP *l = lookup_slot(heap, units, &slot, &catch_all);
    hint = l->ListHints[slot].Flink;
    if (hint) {
        pos = hint;
        if (catch_all)
            while (pos != head && free_units(heap, pos) < units) pos = pos->Flink;
    } else {
        pos = next_listed(heap, l, slot);
    }
    list_insert_before(pos, link);
    if (!hint || pos == hint) {
        l->ListHints[slot].Flink = link;
        slot_mark(l, slot, 1);
    }
    l->ItemCount++;
    if (units >= l->ArraySize) l->OutOfRangeItems++;
    heap->TotalFreeSize += units;
}

static void remove_free(HEAP *heap, HEAP_ENTRY *entry, uptr units)
{
    LIST_ENTRY *link = free_link(entry), *head = &heap->FreeLists;
    u32 slot;
    int catch_all;
    HEAP_LIST_LOOKUP *l = lookup_slot(heap, units, &slot, &catch_all);
    if (l->ListHints[slot].Flink == link) {
        LIST_ENTRY *next = link->Flink;
        if (next != head && (catch_all || free_units(heap, next) == units)) {
            l->ListHints[slot].Flink = next;
        } else {
            l->ListHints[slot].Flink = 0;
            slot_mark(l, slot, 0);
        }
    }
    list_remove(link);
    l->ItemCount--;
    if (units >= l->ArraySize) l->OutOfRangeItems--;
    heap->TotalFreeSize -= units;
}

/* The first free block (in size order) of at least `units`, or 0. */
static HEAP_ENTRY *find_free(HEAP *heap, uptr units)
{
    LIST_ENTRY *head = &heap->FreeLists, *pos;
    u32 slot;
    int catch_all;
    i32 found;
    HEAP_LIST_LOOKUP *l = lookup_slot(heap, units, &slot, &catch_all);
    for (; l; l = l->ExtendedLookup, slot = 0) {
        found = slot_scan(l, slot);
        if (found < 0) continue;
        pos = l->ListHints[found].Flink;
        while (pos != head) {
            uptr have = free_units(heap, pos);
            if (!have) return 0;
            if (have >= units) return link_entry(pos);
            pos = pos->Flink;
        }
        return 0;
    }
    return 0;
}

/* Recomputes every ListHints[].Flink, bitmap and count from FreeLists (Blink counters kept). */
static void rebuild_hints(HEAP *heap)
{
    HEAP_LIST_LOOKUP *l;
    LIST_ENTRY *e;
    u32 i;
    for (l = heap->BlocksIndex; l; l = l->ExtendedLookup) {
        for (i = 0; i < l->ArraySize - l->BaseIndex; i++) l->ListHints[i].Flink = 0;
        for (i = 0; i < (l->ArraySize - l->BaseIndex) / 32; i++) l->ListsInUseUlong[i] = 0;
        l->ItemCount = 0;
        l->OutOfRangeItems = 0;
    }
    for (e = heap->FreeLists.Flink; e != &heap->FreeLists; e = e->Flink) {
        uptr units = free_units(heap, e);
        u32 slot;
        int catch_all;
        l = lookup_slot(heap, units, &slot, &catch_all);
        if (!l->ListHints[slot].Flink) {
            l->ListHints[slot].Flink = e;
            slot_mark(l, slot, 1);
        }
        l->ItemCount++;
        if (units >= l->ArraySize) l->OutOfRangeItems++;
    }
}

static void lookup_init(HEAP_LIST_LOOKUP *l, HEAP *heap, u32 base_index, u32 array_size)
{
    u32 count = array_size - base_index, i;
    l->ExtendedLookup = 0;
    l->ArraySize = array_size;
    l->ExtraItem = 1;
    l->ItemCount = 0;
    l->OutOfRangeItems = 0;
    l->BaseIndex = base_index;
    l->ListHead = &heap->FreeLists;
    l->ListsInUseUlong = (u32 *)(l + 1);
    l->ListHints = (LIST_ENTRY *)((u8 *)(l + 1) + count / 8);
    for (i = 0; i < count / 32; i++) l->ListsInUseUlong[i] = 0;
    for (i = 0; i < count; i++) l->ListHints[i].Flink = l->ListHints[i].Blink = 0;
}

/* ------------------------------------------------------------------ commit and UCRs */

static HEAP_UCR_DESCRIPTOR *sentinel_ucr(HEAP_ENTRY *sentinel)
{
    return (HEAP_UCR_DESCRIPTOR *)(sentinel + 1);
}

/* Heap.UCRList: the UCRs with Size > 0, ascending size. A 0-byte UCR (a fully committed
 * segment's end) is self-linked, so list_remove works on it too. */
static void ucr_heap_insert(HEAP *heap, HEAP_UCR_DESCRIPTOR *ucr)
{
    LIST_ENTRY *e;
    if (!ucr->Size) {
        list_init(&ucr->ListEntry);
        return;
    }
    for (e = heap->UCRList.Flink; e != &heap->UCRList; e = e->Flink)
        if (ucr_of_heap_link(e)->Size >= ucr->Size) break;
    list_insert_before(e, &ucr->ListEntry);
}

/* HEAP_SEGMENT.UCRSegmentList: ascending address. */
static void ucr_segment_insert(HEAP_SEGMENT *seg, HEAP_UCR_DESCRIPTOR *ucr)
{
    LIST_ENTRY *e;
    for (e = seg->UCRSegmentList.Flink; e != &seg->UCRSegmentList; e = e->Flink)
        if ((u8 *)ucr_of_segment_link(e)->Address > (u8 *)ucr->Address) break;
    list_insert_before(e, &ucr->SegmentEntry);
}

/* Writes the sentinel that ends the committed range before ucr_start, describing the UCR
 * [ucr_start, ucr_start + ucr_size), and lists the UCR. */
static HEAP_ENTRY *put_sentinel(HEAP *heap, HEAP_SEGMENT *seg, u8 *ucr_start, uptr ucr_size,
                                uptr prev_units, u32 segidx)
{
    HEAP_ENTRY *sentinel = (HEAP_ENTRY *)(ucr_start - SENTINEL_BYTES);
    HEAP_UCR_DESCRIPTOR *ucr = sentinel_ucr(sentinel);
    entry_init(heap, sentinel, SENTINEL_UNITS, HEAP_ENTRY_BUSY | HEAP_ENTRY_LAST_ENTRY, prev_units,
               segidx, HEAP_SENTINEL_UNUSED);
    ucr->Address = ucr_start;
    ucr->Size = ucr_size;
    ucr_segment_insert(seg, ucr);
    ucr_heap_insert(heap, ucr);
    return sentinel;
}

/* Makes [start, end) free blocks of at most 0xFFFF units (no merging); prev_units is the size
 * of the block before start. The block at end gets the last one's size as PreviousSize. */
static void carve_free(HEAP *heap, u32 segidx, u8 *start, u8 *end, uptr prev_units)
{
    while (start < end) {
        uptr total = (uptr)(end - start) / G, units = total;
        if (units > HEAP_MAX_FREE_UNITS) {
            units = HEAP_MAX_FREE_UNITS;
            if (total - units < MIN_FREE_UNITS) units = total - MIN_FREE_UNITS;
        }
        entry_init(heap, (HEAP_ENTRY *)start, units, 0, prev_units, segidx, 0);
        insert_free(heap, (HEAP_ENTRY *)start, units);
        prev_units = units;
        start += units * G;
    }
    ((HEAP_ENTRY *)end)->PreviousSize = (u16)prev_units;
}

/* [start, end) of seg becomes free: merged with the free blocks before it (prev_units: size of
 * the block before start, 0 after a UCR or at the segment's start) and after it (end always
 * holds a header: busy, free or a sentinel). *run_start / *run_end receive the merged run. */
static void free_run(HEAP *heap, HEAP_SEGMENT *seg, u8 *start, u8 *end, uptr prev_units,
                     u8 **run_start, u8 **run_end)
{
    u32 segidx = segment_index(heap, seg), flags;
    uptr units;
    while (prev_units) {
        HEAP_ENTRY *prev = (HEAP_ENTRY *)(start - prev_units * G);
        if ((u8 *)prev < (u8 *)seg->BaseAddress) {
            heap_corruption();
            break;
        }
        units = entry_units(heap, prev, &flags);
        if (!units || (flags & HEAP_ENTRY_BUSY)) break;
        if (units != prev_units) {
            heap_corruption();
            break;
        }
        remove_free(heap, prev, units);
        start = (u8 *)prev;
        prev_units = prev->PreviousSize;
    }
    for (;;) {
        HEAP_ENTRY *next = (HEAP_ENTRY *)end;
        units = entry_units(heap, next, &flags);
        if (!units || (flags & HEAP_ENTRY_BUSY)) break;
        remove_free(heap, next, units);
        end += units * G;
    }
    carve_free(heap, segidx, start, end, prev_units);
    if (run_start) *run_start = start;
    if (run_end) *run_end = end;
}

/* Commits the first `bytes` (page multiple, <= Size) of a UCR: the sentinel before it and the
 * new pages become free space; a new sentinel follows unless the UCR is used up in the middle
 * of its segment (then the two committed ranges join). */
static int commit_from_ucr(HEAP *heap, HEAP_UCR_DESCRIPTOR *ucr, uptr bytes)
{
    u8 *address = ucr->Address;
    uptr size = ucr->Size;
    HEAP_SEGMENT *seg = find_segment(heap, address - 1);
    HEAP_ENTRY *sentinel = (HEAP_ENTRY *)(address - SENTINEL_BYTES);
    uptr prev_units = sentinel->PreviousSize;
    if (!seg || bytes > size || !commit_pages(heap, address, bytes)) return 0;
    list_remove(&ucr->ListEntry);
    list_remove(&ucr->SegmentEntry);
    seg->NumberOfUnCommittedPages -= (u32)(bytes / PAGE);
    heap->Counters.CommittOps++;
    heap->Counters.TotalMemoryCommitted += bytes;
    if (bytes < size || address + bytes == (u8 *)seg->LastValidEntry) {
        put_sentinel(heap, seg, address + bytes, size - bytes, 0, segment_index(heap, seg));
        free_run(heap, seg, (u8 *)sentinel, address + bytes - SENTINEL_BYTES, prev_units, 0, 0);
    } else {
        seg->NumberOfUnCommittedRanges--;
        heap->Counters.TotalUCRs--;
        free_run(heap, seg, (u8 *)sentinel, address + bytes, prev_units, 0, 0);
    }
    return 1;
}

/* A new segment for a block of `bytes`: reserves max(SegmentReserve, bytes + a page), commits
 * max(SegmentCommit, what the block needs), then SegmentReserve grows by the reservation. */
static int create_segment(HEAP *heap, uptr bytes)
{
    uptr need = align_up(bytes + PAGE, PAGE), reserve, commit;
    u32 count = 0, segidx;
    LIST_ENTRY *e;
    void *base = 0;
    HEAP_SEGMENT *seg;
    for (e = heap->SegmentList.Flink; e != &heap->SegmentList; e = e->Flink) count++;
    if (count >= MAX_SEGMENTS || bytes > HEAP_MAXIMUM_ALLOCATION) return 0;
    reserve = heap->SegmentReserve > need ? align_up(heap->SegmentReserve, PAGE) : need;
    commit = align_up(bytes + SEGMENT_HEADER_BYTES + SENTINEL_BYTES, PAGE);
    if (commit < heap->SegmentCommit) commit = align_up(heap->SegmentCommit, PAGE);
    if ((i32)NtAllocateVirtualMemory(CURRENT_PROCESS, &base, 0, &reserve, MEM_RESERVE,
                                     heap_protect(heap)) < 0) {
        base = 0;
        reserve = need;
        if ((i32)NtAllocateVirtualMemory(CURRENT_PROCESS, &base, 0, &reserve, MEM_RESERVE,
                                         heap_protect(heap)) < 0)
            return 0;
    }
    if (commit > reserve) commit = reserve;
    if (!commit_pages(heap, base, commit)) {
        release_region(base);
        return 0;
    }
    segidx = count;
    seg = base;
    mem_zero(seg, SEGMENT_HEADER_BYTES);
    entry_init(heap, &seg->Entry, SEGMENT_HEADER_BYTES / G, HEAP_ENTRY_BUSY, 0, segidx,
               HEAP_INTERNAL_UNUSED);
    seg->SegmentSignature = HEAP_SEGMENT_SIGNATURE;
    seg->SegmentFlags = 0;
    seg->Heap = heap;
    seg->BaseAddress = base;
    seg->NumberOfPages = (u32)(reserve / PAGE);
    seg->FirstEntry = entry_at(base, SEGMENT_HEADER_BYTES / G);
    seg->LastValidEntry = (HEAP_ENTRY *)((u8 *)base + reserve);
    seg->NumberOfUnCommittedPages = (u32)((reserve - commit) / PAGE);
    seg->NumberOfUnCommittedRanges = 1;
    list_init(&seg->UCRSegmentList);
    list_insert_before(&heap->SegmentList, &seg->SegmentListEntry);
    put_sentinel(heap, seg, (u8 *)base + commit, reserve - commit, 0, segidx);
    free_run(heap, seg, (u8 *)seg->FirstEntry, (u8 *)base + commit - SENTINEL_BYTES,
             SEGMENT_HEADER_BYTES / G, 0, 0);
    heap->SegmentReserve += reserve;
    if (heap->SegmentReserve > WIN7HEAP_MAX_SEGMENT_RESERVE)
        heap->SegmentReserve = WIN7HEAP_MAX_SEGMENT_RESERVE;
    heap->Counters.TotalSegments++;
    heap->Counters.TotalUCRs++;
    heap->Counters.TotalMemoryReserved += reserve;
    heap->Counters.TotalMemoryCommitted += commit;
    return 1;
}

/* Room for a block of `units`: pages from the smallest UCR that holds round_page(bytes), else
 * (growable heaps) a new segment. */
static int extend_heap(HEAP *heap, uptr units)
{
    uptr bytes = units * G, need = align_up(bytes, PAGE);
    LIST_ENTRY *e;
    for (e = heap->UCRList.Flink; e != &heap->UCRList; e = e->Flink) {
        HEAP_UCR_DESCRIPTOR *ucr = ucr_of_heap_link(e);
        if (ucr->Size >= need) return commit_from_ucr(heap, ucr, need);
    }
    if (!(heap->Flags & HEAP_GROWABLE)) return 0;
    return create_segment(heap, bytes);
}

/* After a free made the run [start, end): when the run is at least DeCommitFreeBlockThreshold
 * and TotalFreeSize at least DeCommitTotalFreeThreshold, its whole pages are decommitted. What
 * stays committed in front keeps a free block (if any) and a new sentinel; a run that ends at a
 * sentinel extends that UCR, otherwise a new UCR is made and the tail stays a free block. */
static void maybe_decommit(HEAP *heap, HEAP_SEGMENT *seg, u8 *start, u8 *end)
{
    uptr run_units = (uptr)(end - start) / G, prev_units, units, ucr_end = 0;
    HEAP_ENTRY *after = (HEAP_ENTRY *)end;
    HEAP_UCR_DESCRIPTOR *next_ucr = 0;
    u8 *d0, *d1, *p;
    u32 flags, segidx;
    void *base;
    uptr size;

    if (run_units < heap->DeCommitFreeBlockThreshold ||
        heap->TotalFreeSize < heap->DeCommitTotalFreeThreshold)
        return;
    if (!entry_units(heap, after, &flags)) return;
    if (flags & HEAP_ENTRY_LAST_ENTRY) next_ucr = sentinel_ucr(after);
    d0 = (u8 *)align_up((uptr)start + SENTINEL_BYTES, PAGE);
    if ((uptr)(d0 - SENTINEL_BYTES - start) == G) d0 += PAGE;
    if (next_ucr) {
        d1 = next_ucr->Address;
        ucr_end = (uptr)next_ucr->Address + next_ucr->Size;
    } else {
        d1 = (u8 *)align_down((uptr)end, PAGE);
        if ((uptr)(end - d1) == G) d1 -= PAGE;
    }
    if (d1 <= d0) return;

    /* bookkeeping first: the pages going away hold free headers and maybe the old sentinel */
    segidx = segment_index(heap, seg);
    prev_units = ((HEAP_ENTRY *)start)->PreviousSize;
    for (p = start; p < end; p += units * G) {
        units = entry_units(heap, (HEAP_ENTRY *)p, 0);
        if (!units) return;
        remove_free(heap, (HEAP_ENTRY *)p, units);
    }
    if (next_ucr) {
        list_remove(&next_ucr->ListEntry);
        list_remove(&next_ucr->SegmentEntry);
    }
    carve_free(heap, segidx, start, d0 - SENTINEL_BYTES, prev_units);
    prev_units = ((HEAP_ENTRY *)(d0 - SENTINEL_BYTES))->PreviousSize;
    if (next_ucr) {
        put_sentinel(heap, seg, d0, ucr_end - (uptr)d0, prev_units, segidx);
    } else {
        put_sentinel(heap, seg, d0, (uptr)(d1 - d0), prev_units, segidx);
        seg->NumberOfUnCommittedRanges++;
        heap->Counters.TotalUCRs++;
        carve_free(heap, segidx, d1, end, 0);
    }
    seg->NumberOfUnCommittedPages += (u32)((uptr)(d1 - d0) / PAGE);
    heap->Counters.DeCommitOps++;
    heap->Counters.TotalMemoryCommitted -= (uptr)(d1 - d0);
    /* if the kernel refuses, the pages merely stay committed inside a UCR (committing them
     * again later succeeds) */
    base = d0;
    size = (uptr)(d1 - d0);
    NtFreeVirtualMemory(CURRENT_PROCESS, &base, &size, MEM_DECOMMIT);
}

/* ------------------------------------------------------------------ back end */

/* Takes `units` from the listed free block `entry` (splitting off a remainder of at least
 * MIN_FREE_UNITS) and marks it busy. request: bytes asked for (UnusedBytes = block - request). */
static HEAP_ENTRY *take_block(HEAP *heap, HEAP_ENTRY *entry, uptr units, u32 kind, uptr request)
{
    HEAP_SEGMENT *seg = find_segment(heap, entry);
    uptr have = entry_units(heap, entry, 0), prev_units = entry->PreviousSize;
    u32 flags = HEAP_ENTRY_BUSY | (kind == BLOCK_INTERNAL ? HEAP_ENTRY_INTERNAL : 0), unused;
    u32 segidx;
    if (!seg || !have || have < units) return 0;
    segidx = segment_index(heap, seg);
    remove_free(heap, entry, have);
    if (have - units < MIN_FREE_UNITS) units = have;
    unused = kind == BLOCK_STRUCTURE ? HEAP_INTERNAL_UNUSED : (u32)(units * G - request);
    entry_init(heap, entry, units, flags, prev_units, segidx, unused);
    if (have > units) free_run(heap, seg, (u8 *)entry_at(entry, units), (u8 *)entry_at(entry, have),
                               units, 0, 0);
    return entry;
}

static void ensure_extended_lookup(HEAP *heap, uptr units);

/* A back-end block for `request` bytes (header excluded); 0 when there is no room. */
static HEAP_ENTRY *backend_alloc(HEAP *heap, uptr request, u32 kind)
{
    uptr units = request_units(request);
    HEAP_ENTRY *entry;
    if (kind != BLOCK_STRUCTURE) ensure_extended_lookup(heap, units);
    entry = find_free(heap, units);
    if (!entry) {
        if (!extend_heap(heap, units)) return 0;
        entry = find_free(heap, units);
        if (!entry) return 0;
    }
    return take_block(heap, entry, units, kind, request);
}

/* The first back-end request of ArraySize units or more appends the extended lookup
 * [0x80, 0x800) (T2: allocated right before the LFH, which is such a request). */
static void ensure_extended_lookup(HEAP *heap, uptr units)
{
    HEAP_LIST_LOOKUP *first = heap->BlocksIndex, *l;
    HEAP_ENTRY *entry;
    if (first->ExtendedLookup || units < first->ArraySize) return;
    entry = backend_alloc(heap, EXT_LOOKUP_BYTES, BLOCK_STRUCTURE);
    if (!entry) return;
    l = (HEAP_LIST_LOOKUP *)(entry + 1);
    lookup_init(l, heap, LIST_LOOKUP_FIRST_SIZE, LIST_LOOKUP_LAST_SIZE);
    first->ExtendedLookup = l;
    rebuild_hints(heap);
}

/* Frees a busy back-end block: merged with free neighbours, maybe decommitted. */
static void backend_free(HEAP *heap, HEAP_SEGMENT *seg, HEAP_ENTRY *entry, uptr units)
{
    u8 *start, *end;
    free_run(heap, seg, (u8 *)entry, (u8 *)entry_at(entry, units), entry->PreviousSize, &start,
             &end);
    maybe_decommit(heap, seg, start, end);
}

/* ------------------------------------------------------------------ virtual blocks */

static void *virtual_alloc(HEAP *heap, uptr request)
{
    uptr total = align_up(request + sizeof(HEAP_VIRTUAL_ALLOC_ENTRY), PAGE);
    void *base = 0;
    HEAP_VIRTUAL_ALLOC_ENTRY *va;
    if (total < request) return 0;
    if ((i32)NtAllocateVirtualMemory(CURRENT_PROCESS, &base, 0, &total, MEM_RESERVE | MEM_COMMIT,
                                     heap_protect(heap)) < 0)
        return 0;
    va = base;
    mem_zero(va, sizeof(*va));
    va->CommitSize = total;
    va->ReserveSize = total;
    entry_init(heap, &va->BusyBlock, total - request, HEAP_ENTRY_BUSY | HEAP_ENTRY_VIRTUAL_ALLOC, 0,
               0, 0);
    list_insert_before(&heap->VirtualAllocdBlocks, &va->Entry);
    heap->Counters.TotalSizeInVirtualBlocks += total;
    return va + 1;
}

static void virtual_free(HEAP *heap, HEAP_VIRTUAL_ALLOC_ENTRY *va)
{
    list_remove(&va->Entry);
    heap->Counters.TotalSizeInVirtualBlocks -= va->CommitSize;
    release_region(va);
}

/* Requested bytes of a virtual block (BusyBlock.Size holds CommitSize - requested). */
static uptr virtual_request(HEAP *heap, HEAP_VIRTUAL_ALLOC_ENTRY *va)
{
    uptr unused = entry_units(heap, &va->BusyBlock, 0);
    return unused <= va->CommitSize ? va->CommitSize - unused : 0;
}

/* ------------------------------------------------------------------ LFH */

#define LFH_KEY_SHIFT (G == 8 ? 3u : 4u)
#define LFH_FIRST_OFFSET ((u16)(sizeof(HEAP_USERDATA_HEADER) / G)) /* 2 on both arches */
#define LFH_ACTIVE_LOCK 4u /* HEAP_SUBSEGMENT.Lock: 3, | 4 while Active (T2 shows 7 and 3) */

static int lfh_allowed(const HEAP *heap) { return !(heap->Flags & NO_LFH_FLAGS); }

static LFH_HEAP *heap_lfh(const HEAP *heap)
{
    return heap->FrontEndHeapType == HEAP_FRONT_END_LFH ? (LFH_HEAP *)heap->FrontEndHeap : 0;
}

/* Capacity (data units) of bucket i: i up to 32, then 16 buckets each of steps 2, 4, ..., 64. */
static uptr bucket_capacity(u32 i)
{
    u32 g;
    if (i <= 32) return i;
    g = (i - 33) / 16;
    return ((uptr)32 << g) + (uptr)(i - 32 - 16 * g) * ((uptr)2 << g);
}

/* The bucket for `capacity` data units (>= 1), or LFH_BUCKETS when none holds it. */
static u32 bucket_for(uptr capacity)
{
    u32 g;
    if (capacity <= 32) return (u32)capacity;
    for (g = 0; g < 6; g++) {
        uptr base = (uptr)32 << g, step = (uptr)2 << g;
        if (capacity <= 2 * base) return 32 + 16 * g + (u32)((capacity - base + step - 1) / step);
    }
    return LFH_BUCKETS;
}

/* The activation counter of back-end size `units` (ListHints[units].Blink), or 0 for the
 * catch-all slot. While counting, Blink holds 2 * c (bit 0 clear); &Buckets[i] + 1 once the
 * size is served by the LFH. */
static uptr *lfh_counter(HEAP *heap, uptr units)
{
    u32 slot;
    int catch_all;
    HEAP_LIST_LOOKUP *l = lookup_slot(heap, units, &slot, &catch_all);
    return catch_all ? 0 : (uptr *)&l->ListHints[slot].Blink;
}

/* A back-end allocation of `units`: c += 0x21; when (c & 0x1F) > 0x10 or c > 0xFF00 the size
 * goes to the LFH if it exists, else the next allocation creates the LFH (T2, VM12). */
static void lfh_count_alloc(HEAP *heap, uptr units)
{
    uptr *counter, c;
    LFH_HEAP *lfh = heap_lfh(heap);
    u32 bucket = bucket_for(units - 1);
    if (!lfh_allowed(heap) || bucket >= LFH_BUCKETS) return;
    counter = lfh_counter(heap, units);
    if (!counter || (*counter & 1)) return;
    c = (*counter >> 1) + LFH_ACTIVATE_STEP;
    *counter = c << 1;
    if ((c & 0x1F) > 0x10 || c > 0xFF00) {
        if (lfh)
            *counter = (uptr)&lfh->Buckets[bucket] + 1;
        else
            heap->CompatibilityFlags |= HEAP_COMPAT_LFH_PENDING;
    }
}

static void lfh_count_free(HEAP *heap, uptr units)
{
    /* Only the low five bits (allocations of this size still counted) go down: a free of a block
     * counted under another size (a realloc shrunk in place) must not borrow from the total and
     * wrap the low bits to 0x1F, which would activate the bucket on the next allocation. */
    uptr *counter = lfh_counter(heap, units);
    if (counter && !(*counter & 1) && ((*counter >> 1) & 0x1F)) *counter -= 2;
}

/* The LFH bucket serving a request of `units` back-end units, or LFH_BUCKETS. */
static u32 lfh_bucket_of(HEAP *heap, LFH_HEAP *lfh, uptr units)
{
    uptr *counter = lfh_counter(heap, units), value;
    if (!counter || !(*counter & 1)) return LFH_BUCKETS;
    value = *counter - 1;
    if (value < (uptr)&lfh->Buckets[0] || value > (uptr)&lfh->Buckets[LFH_BUCKETS - 1] ||
        (value - (uptr)&lfh->Buckets[0]) % sizeof(HEAP_BUCKET)) {
        heap_corruption();
        return LFH_BUCKETS;
    }
    return (u32)((value - (uptr)&lfh->Buckets[0]) / sizeof(HEAP_BUCKET));
}

/* Creates the _LFH_HEAP: a back-end Internal block of 0x310 + 17 * sizeof(HEAP_LOCAL_DATA)
 * bytes (x86 0x378A8, T2 L379). */
static LFH_HEAP *lfh_create(HEAP *heap)
{
    uptr bytes = __builtin_offsetof(LFH_HEAP, LocalData) + LFH_LOCAL_DATA_COUNT * sizeof(HEAP_LOCAL_DATA);
    HEAP_ENTRY *entry;
    LFH_HEAP *lfh;
    u32 i;
    heap->CompatibilityFlags &= ~HEAP_COMPAT_LFH_PENDING;
    if (heap_lfh(heap) || !lfh_allowed(heap)) return heap_lfh(heap);
    entry = backend_alloc(heap, bytes, BLOCK_INTERNAL);
    if (!entry) return 0;
    lfh = (LFH_HEAP *)(entry + 1);
    mem_zero(lfh, bytes);
    lfh->Lock.LockCount = -1;
    list_init(&lfh->SubSegmentZones);
    lfh->ZoneBlockSize = sizeof(HEAP_SUBSEGMENT);
    lfh->Heap = heap;
    for (i = 0; i < LFH_BUCKETS; i++) {
        lfh->Buckets[i].BlockUnits = (u16)(bucket_capacity(i) + 1);
        lfh->Buckets[i].SizeIndex = (u8)i;
        lfh->Buckets[i].Flags = 0;
    }
    lfh->LocalData[0].LowFragHeap = lfh;
    heap->FrontEndHeap = lfh;
    heap->FrontEndHeapType = HEAP_FRONT_END_LFH;
    heap->DeCommitFreeBlockThreshold = LFH_DECOMMIT_THRESHOLD_BYTES / G; /* T2 L269: 0x800 */
    return lfh;
}

/* SegmentInfo[bucket], set up on first use (T2: unused buckets stay all zero). */
static HEAP_LOCAL_SEGMENT_INFO *lfh_segment_info(LFH_HEAP *lfh, u32 bucket)
{
    HEAP_LOCAL_SEGMENT_INFO *si = &lfh->LocalData[0].SegmentInfo[bucket];
    if (!si->LocalData) {
        si->LocalData = &lfh->LocalData[0];
        si->BucketIndex = (u16)bucket;
    }
    return si;
}

/* LFH block header: word Heap ^ SubSegment ^ LFHKey ^ (header >> 3) on x86 (T2); on x64 the
 * 64-bit code (>> 4) in PreviousBlockPrivateData and its low half in the word at +8. */
static void lfh_header(HEAP *heap, HEAP_SUBSEGMENT *sub, HEAP_ENTRY *entry, uptr key, u32 unused)
{
    uptr code = (uptr)heap ^ (uptr)sub ^ key ^ ((uptr)entry >> LFH_KEY_SHIFT);
#ifdef WIN7HEAP_PTR64
    entry->PreviousBlockPrivateData = code;
#endif
    *entry_word(entry) = (u32)code;
    entry->PreviousSize = 0;
    entry->SegmentOffset = 0;
    entry->UnusedBytes = (u8)unused;
}

static HEAP_SUBSEGMENT *lfh_decode(HEAP *heap, HEAP_ENTRY *entry, uptr key)
{
    uptr code;
#ifdef WIN7HEAP_PTR64
    code = entry->PreviousBlockPrivateData;
    if ((u32)code != *entry_word(entry)) return 0;
#else
    code = *entry_word(entry);
#endif
    return (HEAP_SUBSEGMENT *)(code ^ (uptr)heap ^ key ^ ((uptr)entry >> LFH_KEY_SHIFT));
}

/* 1 if sub is a live descriptor of one of lfh's zones, with consistent UserBlocks. */
static int lfh_subsegment_valid(LFH_HEAP *lfh, HEAP_SUBSEGMENT *sub)
{
    LIST_ENTRY *e;
    for (e = lfh->SubSegmentZones.Flink; e != &lfh->SubSegmentZones; e = e->Flink) {
        LFH_BLOCK_ZONE *zone = CONTAINING(e, LFH_BLOCK_ZONE, ListEntry);
        u8 *first = (u8 *)(zone + 1);
        HEAP_LOCAL_SEGMENT_INFO *si;
        if ((u8 *)sub < first || (u8 *)sub >= zone->FreePointer) continue;
        if ((uptr)((u8 *)sub - first) % sizeof(HEAP_SUBSEGMENT)) return 0;
        si = sub->LocalInfo;
        if (!sub->UserBlocks || sub->SizeIndex >= LFH_BUCKETS ||
            si != &lfh->LocalData[0].SegmentInfo[sub->SizeIndex] ||
            sub->BlockSize != lfh->Buckets[sub->SizeIndex].BlockUnits || !sub->BlockCount)
            return 0;
        return sub->UserBlocks->SubSegment == sub &&
               sub->UserBlocks->Signature == HEAP_USERDATA_SIGNATURE;
    }
    return 0;
}

static HEAP_ENTRY *lfh_block(HEAP_SUBSEGMENT *sub, uptr offset)
{
    return (HEAP_ENTRY *)((u8 *)sub->UserBlocks + offset * G);
}

/* 1 if entry is the header of one of sub's blocks. */
static int lfh_block_of(HEAP_SUBSEGMENT *sub, HEAP_ENTRY *entry)
{
    u8 *first = (u8 *)lfh_block(sub, LFH_FIRST_OFFSET);
    uptr stride = (uptr)sub->BlockSize * G, delta = (uptr)((u8 *)entry - first);
    return (u8 *)entry >= first && !(delta % stride) && delta / stride < sub->BlockCount;
}

/* Unused bytes of a busy LFH block (0x3F: the count is in the block's last u16). */
static uptr lfh_unused(HEAP_SUBSEGMENT *sub, HEAP_ENTRY *entry)
{
    uptr unused = entry->UnusedBytes & 0x7Fu;
    if (unused == LFH_UNUSED_EXTENDED)
        unused = *(u16 *)((u8 *)entry + (uptr)sub->BlockSize * G - sizeof(u16));
    return unused;
}

static void lfh_set_unused(HEAP_SUBSEGMENT *sub, HEAP_ENTRY *entry, uptr unused)
{
    if (unused >= LFH_UNUSED_EXTENDED) {
        *(u16 *)((u8 *)entry + (uptr)sub->BlockSize * G - sizeof(u16)) = (u16)unused;
        unused = LFH_UNUSED_EXTENDED;
    }
    entry->UnusedBytes = (u8)(LFH_UNUSED_FLAG | unused);
}

/* The subsegment of an LFH header, checked; 0 if the header does not decode to a live one. */
static HEAP_SUBSEGMENT *lfh_lookup(HEAP *heap, HEAP_ENTRY *entry)
{
    LFH_HEAP *lfh = heap_lfh(heap);
    HEAP_SUBSEGMENT *sub;
    if (!lfh) return 0;
    sub = lfh_decode(heap, entry, lfh_key());
    if (!sub || !lfh_subsegment_valid(lfh, sub) || !lfh_block_of(sub, entry)) return 0;
    return sub;
}

/* UserBlocks size: 1 << SizeIndex bytes, SizeIndex = floor(log2(min(0x78000, T * block bytes +
 * header + G))), T = TotalBlocks clamped to [32, 1024] (T2: 0x2000 for 0, 30 and 60). */
static u32 lfh_user_size_index(HEAP_LOCAL_SEGMENT_INFO *si, uptr block_units)
{
    uptr total = si->Counters.TotalBlocks, bytes;
    u32 index = 0;
    if (total < LFH_MIN_BLOCKS) total = LFH_MIN_BLOCKS;
    if (total > LFH_MAX_BLOCKS) total = LFH_MAX_BLOCKS;
    bytes = total * block_units * G + sizeof(HEAP_USERDATA_HEADER) + G;
    if (bytes > LFH_MAX_USERBLOCKS) bytes = LFH_MAX_USERBLOCKS;
    while (((uptr)2 << index) <= bytes) index++;
    return index;
}

/* A subsegment descriptor: a released one, else the next slot of the current zone, else a new
 * zone (a 0x400-byte Internal back-end block, T2 0x4AF028). */
static HEAP_SUBSEGMENT *lfh_new_descriptor(HEAP *heap, LFH_HEAP *lfh)
{
    HEAP_LOCAL_DATA *ld = &lfh->LocalData[0];
    LFH_BLOCK_ZONE *zone = ld->CrtZone;
    HEAP_SUBSEGMENT *sub;
    if (ld->DeletedSubSegments.Next) {
        sub = CONTAINING(ld->DeletedSubSegments.Next, HEAP_SUBSEGMENT, SFreeListEntry);
        ld->DeletedSubSegments.Next = sub->SFreeListEntry;
        ld->DeletedSubSegments.Depth--;
        ld->DeletedSubSegments.Sequence++;
        return sub;
    }
    if (!zone || zone->FreePointer + sizeof(HEAP_SUBSEGMENT) > zone->Limit) {
        HEAP_ENTRY *entry = backend_alloc(heap, LFH_ZONE_BLOCK - G, BLOCK_INTERNAL);
        if (!entry) return 0;
        zone = (LFH_BLOCK_ZONE *)(entry + 1);
        zone->FreePointer = (u8 *)(zone + 1);
        zone->Limit = (u8 *)entry + LFH_ZONE_BLOCK;
        list_insert_before(lfh->SubSegmentZones.Flink, &zone->ListEntry);
        ld->CrtZone = zone;
    }
    sub = (HEAP_SUBSEGMENT *)zone->FreePointer;
    zone->FreePointer += sizeof(HEAP_SUBSEGMENT);
    return sub;
}

static void lfh_set_active(HEAP_LOCAL_SEGMENT_INFO *si, HEAP_SUBSEGMENT *sub)
{
    if (si->ActiveSubsegment && si->ActiveSubsegment != sub)
        si->ActiveSubsegment->Lock &= ~LFH_ACTIVE_LOCK;
    si->ActiveSubsegment = sub;
    sub->Lock |= LFH_ACTIVE_LOCK;
}

/* A new subsegment for bucket: UserBlocks first, then its descriptor (T2 order); the blocks are
 * chained free in address order. */
static HEAP_SUBSEGMENT *lfh_new_subsegment(HEAP *heap, LFH_HEAP *lfh, HEAP_LOCAL_SEGMENT_INFO *si,
                                           u32 bucket, uptr key)
{
    HEAP_LOCAL_DATA *ld = &lfh->LocalData[0];
    uptr units = lfh->Buckets[bucket].BlockUnits, stride = units * G, block_bytes;
    u32 index = lfh_user_size_index(si, units), count, k;
    HEAP_ENTRY *ub_entry, *entry;
    HEAP_USERDATA_HEADER *ub;
    HEAP_SUBSEGMENT *sub;

    block_bytes = (uptr)1 << index;
    ub_entry = backend_alloc(heap, block_bytes - G, BLOCK_INTERNAL);
    if (!ub_entry) return 0;
    sub = lfh_new_descriptor(heap, lfh);
    if (!sub) {
        HEAP_SEGMENT *seg = find_segment(heap, ub_entry);
        uptr have = entry_units(heap, ub_entry, 0);
        if (seg && have) backend_free(heap, seg, ub_entry, have);
        return 0;
    }
    ub = (HEAP_USERDATA_HEADER *)(ub_entry + 1);
    count = (u32)((block_bytes - G - sizeof(HEAP_USERDATA_HEADER)) / stride);
    ub->SubSegment = sub; /* Reserved is left as it was (T2 shows a stale free-list link) */
    ub->SizeIndex = index;
    ub->Signature = HEAP_USERDATA_SIGNATURE;
    mem_zero(sub, sizeof(*sub));
    sub->LocalInfo = si;
    sub->UserBlocks = ub;
    sub->AggregateExchg.Depth = (u16)count;
    sub->AggregateExchg.FreeEntryOffset = LFH_FIRST_OFFSET;
    sub->AggregateExchg.Sequence = 1;
    sub->BlockSize = (u16)units;
    sub->BlockCount = (u16)count;
    sub->SizeIndex = (u8)bucket;
    sub->Lock = 3;
    for (k = 0; k < count; k++) {
        entry = lfh_block(sub, LFH_FIRST_OFFSET + (uptr)k * units);
        lfh_header(heap, sub, entry, key, LFH_UNUSED_FLAG);
        *(u16 *)(entry + 1) =
            k + 1 < count ? (u16)(LFH_FIRST_OFFSET + (uptr)(k + 1) * units) : LFH_NO_FREE_OFFSET;
    }
    si->Counters.TotalBlocks += count;
    si->Counters.SubSegmentCounts++;
    ld->Sequence++;
    si->LastOpSequence = ld->Sequence;
    lfh->SegmentCreate++;
    lfh->CacheAllocs++;
    return sub;
}

/* An entirely free subsegment that is not Active: UserBlocks back to the back end, the
 * descriptor onto DeletedSubSegments. */
static void lfh_release_subsegment(HEAP *heap, LFH_HEAP *lfh, HEAP_SUBSEGMENT *sub)
{
    HEAP_LOCAL_SEGMENT_INFO *si = sub->LocalInfo;
    HEAP_LOCAL_DATA *ld = &lfh->LocalData[0];
    HEAP_USERDATA_HEADER *ub = sub->UserBlocks;
    HEAP_ENTRY *ub_entry = (HEAP_ENTRY *)ub - 1;
    HEAP_SEGMENT *seg = find_segment(heap, ub_entry);
    uptr units = entry_units(heap, ub_entry, 0);
    u32 i;
    if (si->Hint == sub) si->Hint = 0;
    if (si->ActiveSubsegment == sub) si->ActiveSubsegment = 0;
    for (i = 0; i < LFH_CACHED_ITEMS; i++)
        if (si->CachedItems[i] == sub) si->CachedItems[i] = 0;
    si->Counters.TotalBlocks -= sub->BlockCount;
    si->Counters.SubSegmentCounts--;
    lfh->SegmentDelete++;
    ub->SubSegment = 0;
    ub->Signature = 0;
    mem_zero(sub, sizeof(*sub));
    sub->SFreeListEntry = ld->DeletedSubSegments.Next;
    ld->DeletedSubSegments.Next = &sub->SFreeListEntry;
    ld->DeletedSubSegments.Depth++;
    ld->DeletedSubSegments.Sequence++;
    if (seg && units) backend_free(heap, seg, ub_entry, units);
}

static int lfh_has_free(HEAP_SUBSEGMENT *sub) { return sub && sub->AggregateExchg.Depth; }

/* An LFH block of bucket for `request` bytes. Selection (T2): Hint if it has a free block, else
 * ActiveSubsegment, else the first CachedItems[i] with one (it becomes Active, the slot is
 * cleared, LastUsed = i, Hint = NULL), else a new subsegment becomes Active. */
static void *lfh_alloc(HEAP *heap, LFH_HEAP *lfh, u32 bucket, uptr request)
{
    HEAP_LOCAL_SEGMENT_INFO *si = lfh_segment_info(lfh, bucket);
    HEAP_SUBSEGMENT *sub = si->Hint;
    uptr key = lfh_key(), units, next;
    HEAP_ENTRY *entry;
    u32 i;

    if (!lfh_has_free(sub)) {
        sub = si->ActiveSubsegment;
        if (!lfh_has_free(sub)) {
            sub = 0;
            for (i = 0; i < LFH_CACHED_ITEMS; i++) {
                if (!lfh_has_free(si->CachedItems[i])) continue;
                sub = si->CachedItems[i];
                si->CachedItems[i] = 0;
                si->LastUsed = (u16)i;
                si->Hint = 0;
                break;
            }
            if (!sub) sub = lfh_new_subsegment(heap, lfh, si, bucket, key);
            if (!sub) return 0;
            lfh_set_active(si, sub);
        }
    }
    units = sub->BlockSize;
    entry = lfh_block(sub, sub->AggregateExchg.FreeEntryOffset);
    if (!lfh_block_of(sub, entry) || entry->UnusedBytes != LFH_UNUSED_FLAG ||
        lfh_decode(heap, entry, key) != sub) {
        heap_corruption();
        return 0;
    }
    next = *(u16 *)(entry + 1);
    if ((sub->AggregateExchg.Depth == 1) != (next == LFH_NO_FREE_OFFSET)) {
        heap_corruption();
        return 0;
    }
    sub->AggregateExchg.FreeEntryOffset = (u16)next;
    sub->AggregateExchg.Depth--;
    lfh_set_unused(sub, entry, units * G - request);
    return entry + 1;
}

/* Frees an LFH block (LIFO); Hint = its subsegment, which is cached unless Active. */
static void lfh_free(HEAP *heap, LFH_HEAP *lfh, HEAP_SUBSEGMENT *sub, HEAP_ENTRY *entry)
{
    HEAP_LOCAL_SEGMENT_INFO *si = sub->LocalInfo;
    u32 i, slot = LFH_CACHED_ITEMS;
    entry->UnusedBytes = LFH_UNUSED_FLAG;
    *(u16 *)(entry + 1) = sub->AggregateExchg.FreeEntryOffset;
    sub->AggregateExchg.FreeEntryOffset = (u16)((uptr)((u8 *)entry - (u8 *)sub->UserBlocks) / G);
    sub->AggregateExchg.Depth++;
    sub->AggregateExchg.Sequence++;
    si->Hint = sub;
    if (sub == si->ActiveSubsegment) return;
    for (i = 0; i < LFH_CACHED_ITEMS; i++) {
        if (si->CachedItems[i] == sub) break;
        if (!si->CachedItems[i] && slot == LFH_CACHED_ITEMS) slot = i;
    }
    if (i == LFH_CACHED_ITEMS && slot < LFH_CACHED_ITEMS) si->CachedItems[slot] = sub;
    if (sub->AggregateExchg.Depth == sub->BlockCount) lfh_release_subsegment(heap, lfh, sub);
}

/* ------------------------------------------------------------------ pointer lookup */

/* What ptr is: a busy user block of the back end, of the LFH, or a virtual block. Never trusts
 * the pointer beyond what the heap's structures vouch for; *corrupt is set when ptr looks like
 * one of ours but its header is bad (or the block is already free). */
static u32 lookup_block(HEAP *heap, const void *ptr, BLOCK_REF *ref, int *corrupt)
{
    HEAP_ENTRY *entry = (HEAP_ENTRY *)((uptr)ptr - G);
    HEAP_SEGMENT *seg;
    LIST_ENTRY *e;
    uptr units, unused;
    u32 flags;

    ref->kind = REF_NONE;
    ref->seg = 0;
    ref->entry = entry;
    ref->units = 0;
    ref->sub = 0;
    ref->va = 0;
    *corrupt = 0;
    if (!ptr || ((uptr)ptr & (G - 1))) return REF_NONE;
    for (e = heap->VirtualAllocdBlocks.Flink; e != &heap->VirtualAllocdBlocks; e = e->Flink) {
        HEAP_VIRTUAL_ALLOC_ENTRY *va = CONTAINING(e, HEAP_VIRTUAL_ALLOC_ENTRY, Entry);
        if ((const void *)(va + 1) != ptr) continue;
        if (!entry_decode(heap, &va->BusyBlock, &units, &flags) ||
            flags != (HEAP_ENTRY_BUSY | HEAP_ENTRY_VIRTUAL_ALLOC) || units > va->CommitSize ||
            units < sizeof(HEAP_VIRTUAL_ALLOC_ENTRY)) {
            *corrupt = 1;
            return REF_NONE;
        }
        ref->va = va;
        return ref->kind = REF_VIRTUAL;
    }
    seg = find_segment(heap, ptr);
    if (!seg || (u8 *)entry < (u8 *)seg->FirstEntry || !segment_committed(seg, entry, G))
        return REF_NONE;
    if (entry->UnusedBytes & LFH_UNUSED_FLAG) {
        HEAP_SUBSEGMENT *sub = lfh_lookup(heap, entry);
        if (!sub || entry->UnusedBytes == LFH_UNUSED_FLAG) {
            *corrupt = 1;
            return REF_NONE;
        }
        unused = lfh_unused(sub, entry);
        if (unused < G || unused > (uptr)sub->BlockSize * G) {
            *corrupt = 1;
            return REF_NONE;
        }
        ref->sub = sub;
        ref->units = sub->BlockSize;
        return ref->kind = REF_LFH;
    }
    if (!entry_decode(heap, entry, &units, &flags) || !units || !(flags & HEAP_ENTRY_BUSY)) {
        *corrupt = 1;
        return REF_NONE;
    }
    if (flags & (HEAP_ENTRY_LAST_ENTRY | HEAP_ENTRY_INTERNAL) || entry->UnusedBytes < G)
        return REF_NONE; /* the heap's own blocks are not the caller's to touch */
    if (entry->UnusedBytes > units * G || !segment_committed(seg, entry, units * G)) {
        *corrupt = 1;
        return REF_NONE;
    }
    ref->seg = seg;
    ref->units = units;
    return ref->kind = REF_BACKEND;
}

/* Requested bytes of a looked-up block. */
static uptr block_request(HEAP *heap, const BLOCK_REF *ref)
{
    if (ref->kind == REF_VIRTUAL) return virtual_request(heap, ref->va);
    if (ref->kind == REF_LFH) return ref->units * G - lfh_unused(ref->sub, ref->entry);
    return ref->units * G - ref->entry->UnusedBytes;
}

/* ------------------------------------------------------------------ validation */

typedef struct VALIDATE_STATE {
    uptr free_blocks;   /* free back-end blocks met in segments */
    uptr free_units;    /* their units */
    uptr internal;      /* busy Internal blocks met */
    uptr userblocks;    /* of them, UserBlocks of live subsegments */
    uptr listed_ucrs;   /* UCRs with Size > 0 */
} VALIDATE_STATE;

/* A subsegment's UserBlocks: every header decodes to it, the free chain has exactly Depth
 * blocks, all free, and ends with 0xFFFF. */
static int validate_userblocks(HEAP *heap, HEAP_SUBSEGMENT *sub, uptr block_units, uptr key)
{
    uptr stride = (uptr)sub->BlockSize * G, n = 0, k, free_count = 0, off;
    HEAP_USERDATA_HEADER *ub = sub->UserBlocks;
    /* the block is 1 << SizeIndex bytes, or a unit more when the rest was too small to split */
    if (ub->SizeIndex >= 8 * sizeof(uptr) || ((uptr)1 << ub->SizeIndex) > block_units * G ||
        block_units * G - ((uptr)1 << ub->SizeIndex) >= MIN_FREE_UNITS * G)
        return 0;
    if (sizeof(HEAP_USERDATA_HEADER) + (uptr)sub->BlockCount * stride > block_units * G - G)
        return 0;
    for (k = 0; k < sub->BlockCount; k++) {
        HEAP_ENTRY *entry = lfh_block(sub, LFH_FIRST_OFFSET + k * sub->BlockSize);
        uptr unused;
        if (lfh_decode(heap, entry, key) != sub || entry->PreviousSize || entry->SegmentOffset ||
            !(entry->UnusedBytes & LFH_UNUSED_FLAG))
            return 0;
        if (entry->UnusedBytes == LFH_UNUSED_FLAG) {
            free_count++;
            continue;
        }
        unused = lfh_unused(sub, entry);
        if (unused < G || unused > stride) return 0;
    }
    if (free_count != sub->AggregateExchg.Depth) return 0;
    for (off = sub->AggregateExchg.FreeEntryOffset; off != LFH_NO_FREE_OFFSET;
         off = *(u16 *)(lfh_block(sub, off) + 1)) {
        HEAP_ENTRY *entry = lfh_block(sub, off);
        if (n++ >= free_count || !lfh_block_of(sub, entry) || entry->UnusedBytes != LFH_UNUSED_FLAG)
            return 0;
    }
    return n == free_count;
}

static int validate_segment(HEAP *heap, HEAP_SEGMENT *seg, u32 index, VALIDATE_STATE *st)
{
    u8 *base = seg->BaseAddress, *end = (u8 *)seg->LastValidEntry, *p = base;
    LIST_ENTRY *ucr_link = seg->UCRSegmentList.Flink, *e;
    LFH_HEAP *lfh = heap_lfh(heap);
    uptr prev_units = 0, prev_free = 0, units, pages = 0, ranges = 0, key = lfh_key();
    u32 flags;

    if (seg->SegmentSignature != HEAP_SEGMENT_SIGNATURE || seg->Heap != heap ||
        (u8 *)seg != base || end != base + (uptr)seg->NumberOfPages * PAGE || end <= base)
        return 0;
    for (e = seg->UCRSegmentList.Flink; e != &seg->UCRSegmentList; e = e->Flink) {
        HEAP_UCR_DESCRIPTOR *ucr = ucr_of_segment_link(e);
        if (e->Flink->Blink != e || e->Blink->Flink != e) return 0;
        if ((uptr)ucr->Address & (PAGE - 1) || ucr->Size & (PAGE - 1) || (u8 *)ucr->Address < base ||
            ucr->Size > (uptr)(end - (u8 *)ucr->Address))
            return 0;
        pages += ucr->Size / PAGE;
        ranges++;
        if (ucr->Size) st->listed_ucrs++;
        if (ranges > seg->NumberOfPages + 1) return 0;
    }
    if (pages != seg->NumberOfUnCommittedPages || ranges != seg->NumberOfUnCommittedRanges) return 0;

    for (;;) {
        HEAP_ENTRY *entry = (HEAP_ENTRY *)p;
        if (p + G > end || !entry_decode(heap, entry, &units, &flags) || !units) return 0;
        if ((uptr)(end - p) / G < units || entry->PreviousSize != prev_units ||
            entry->SegmentOffset != index)
            return 0;
        if (flags & HEAP_ENTRY_LAST_ENTRY) {
            HEAP_UCR_DESCRIPTOR *ucr = sentinel_ucr(entry);
            if (units != SENTINEL_UNITS || flags != (HEAP_ENTRY_BUSY | HEAP_ENTRY_LAST_ENTRY) ||
                ucr_link == &seg->UCRSegmentList || ucr_of_segment_link(ucr_link) != ucr ||
                (u8 *)ucr->Address != p + SENTINEL_BYTES)
                return 0;
            ucr_link = ucr_link->Flink;
            p = (u8 *)ucr->Address + ucr->Size;
            prev_units = 0;
            prev_free = 0;
            if (p == end) break;
            continue;
        }
        if (!(flags & HEAP_ENTRY_BUSY)) {
            LIST_ENTRY *link = free_link(entry);
            if (flags || units < MIN_FREE_UNITS || entry->UnusedBytes) return 0;
            if (prev_free && prev_free < HEAP_MAX_FREE_UNITS - 1) return 0;
            if (link->Flink->Blink != link || link->Blink->Flink != link) return 0;
            st->free_blocks++;
            st->free_units += units;
            prev_free = units;
        } else {
            if (flags & ~(u32)(HEAP_ENTRY_BUSY | HEAP_ENTRY_INTERNAL)) return 0;
            if (entry->UnusedBytes != HEAP_INTERNAL_UNUSED &&
                (entry->UnusedBytes < G || entry->UnusedBytes > units * G))
                return 0;
            if ((flags & HEAP_ENTRY_INTERNAL) && entry->UnusedBytes == HEAP_INTERNAL_UNUSED) return 0;
            if (flags & HEAP_ENTRY_INTERNAL) {
                HEAP_SUBSEGMENT *sub = *(HEAP_SUBSEGMENT **)(entry + 1);
                st->internal++;
                if (lfh && lfh_subsegment_valid(lfh, sub) && (HEAP_ENTRY *)sub->UserBlocks - 1 == entry) {
                    if (!validate_userblocks(heap, sub, units, key)) return 0;
                    st->userblocks++;
                }
            }
            prev_free = 0;
        }
        prev_units = units;
        p += units * G;
    }
    return ucr_link == &seg->UCRSegmentList;
}

/* FreeLists: committed free blocks of this heap in ascending size, each once; every ListHints
 * slot points at the first block of its sizes and its bitmap bit says so. */
static int validate_free_lists(HEAP *heap, const VALIDATE_STATE *st)
{
    LIST_ENTRY *head = &heap->FreeLists, *e = head;
    HEAP_LIST_LOOKUP *l, *cur_l = 0;
    uptr seen = 0, last_units = 0, slots_seen = 0, hinted = 0, units;
    u32 cur_slot = 0, slot, i, flags;
    int catch_all;
    for (l = heap->BlocksIndex; l; l = l->ExtendedLookup)
        if (l->ListHead != head || l->ListsInUseUlong != (u32 *)(l + 1) || !l->ExtraItem) return 0;
    for (;;) {
        LIST_ENTRY *next = e->Flink;
        HEAP_ENTRY *entry;
        HEAP_SEGMENT *seg;
        if (next->Blink != e) return 0;
        if (next == head) break;
        if (++seen > st->free_blocks) return 0;
        entry = link_entry(next);
        seg = find_segment(heap, entry);
        if (!seg || !segment_committed(seg, entry, 2 * G)) return 0;
        if (!entry_decode(heap, entry, &units, &flags) || flags || units < last_units) return 0;
        l = lookup_slot(heap, units, &slot, &catch_all);
        if (l != cur_l || slot != cur_slot || !slots_seen) {
            if (l->ListHints[slot].Flink != next) return 0;
            cur_l = l;
            cur_slot = slot;
            slots_seen++;
        }
        last_units = units;
        e = next;
    }
    if (seen != st->free_blocks) return 0;
    for (l = heap->BlocksIndex; l; l = l->ExtendedLookup) {
        uptr items = 0, out_of_range = 0;
        for (i = 0; i < l->ArraySize - l->BaseIndex; i++) {
            int used = (l->ListsInUseUlong[i >> 5] >> (i & 31)) & 1;
            if (used != (l->ListHints[i].Flink != 0)) return 0;
            hinted += used;
        }
        for (e = head->Flink; e != head; e = e->Flink) {
            units = entry_units(heap, link_entry(e), 0);
            if (lookup_slot(heap, units, &slot, &catch_all) != l) continue;
            items++;
            if (units >= l->ArraySize) out_of_range++;
        }
        if (items != l->ItemCount || out_of_range != l->OutOfRangeItems) return 0;
    }
    return hinted == slots_seen;
}

static int validate_ucr_list(HEAP *heap, const VALIDATE_STATE *st)
{
    LIST_ENTRY *e;
    uptr count = 0, last = 0;
    for (e = heap->UCRList.Flink; e != &heap->UCRList; e = e->Flink) {
        HEAP_UCR_DESCRIPTOR *ucr = ucr_of_heap_link(e);
        if (e->Flink->Blink != e || ++count > st->listed_ucrs) return 0;
        if (!ucr->Size || ucr->Size < last || !find_segment(heap, ucr->Address)) return 0;
        last = ucr->Size;
    }
    return count == st->listed_ucrs;
}

static int validate_virtual(HEAP *heap)
{
    LIST_ENTRY *e;
    uptr unused;
    u32 flags;
    if (heap->VirtualAllocdBlocks.Flink->Blink != &heap->VirtualAllocdBlocks) return 0;
    for (e = heap->VirtualAllocdBlocks.Flink; e != &heap->VirtualAllocdBlocks; e = e->Flink) {
        HEAP_VIRTUAL_ALLOC_ENTRY *va = CONTAINING(e, HEAP_VIRTUAL_ALLOC_ENTRY, Entry);
        if (e->Flink->Blink != e) return 0;
        if (!entry_decode(heap, &va->BusyBlock, &unused, &flags) ||
            flags != (HEAP_ENTRY_BUSY | HEAP_ENTRY_VIRTUAL_ALLOC) ||
            unused < sizeof(HEAP_VIRTUAL_ALLOC_ENTRY) || unused > va->CommitSize ||
            (va->CommitSize & (PAGE - 1)) || va->ReserveSize < va->CommitSize)
            return 0;
    }
    return 1;
}

/* The LFH's own structures: its block, zones, descriptors, SegmentInfo pointers and counters,
 * DeletedSubSegments, and the ListHints bucket pointers. */
static int validate_lfh(HEAP *heap, LFH_HEAP *lfh, const VALIDATE_STATE *st)
{
    HEAP_LOCAL_DATA *ld = &lfh->LocalData[0];
    u32 totals[LFH_BUCKETS], counts[LFH_BUCKETS], i, j, flags;
    uptr zones = 0, live = 0, deleted = 0, units;
    HEAP_LIST_LOOKUP *l;
    LIST_ENTRY *e;
    void *d;
    HEAP_ENTRY *lfh_entry = (HEAP_ENTRY *)lfh - 1;

    if (lfh->Heap != heap || ld->LowFragHeap != lfh || !find_segment(heap, lfh_entry) ||
        !entry_decode(heap, lfh_entry, &units, &flags) ||
        flags != (HEAP_ENTRY_BUSY | HEAP_ENTRY_INTERNAL))
        return 0;
    for (i = 0; i < LFH_BUCKETS; i++) totals[i] = counts[i] = 0;
    for (e = lfh->SubSegmentZones.Flink; e != &lfh->SubSegmentZones; e = e->Flink) {
        LFH_BLOCK_ZONE *zone = CONTAINING(e, LFH_BLOCK_ZONE, ListEntry);
        HEAP_ENTRY *zone_entry = (HEAP_ENTRY *)zone - 1;
        u8 *p;
        if (e->Flink->Blink != e || ++zones > st->internal) return 0;
        if (!find_segment(heap, zone_entry) || !entry_decode(heap, zone_entry, &units, &flags) ||
            flags != (HEAP_ENTRY_BUSY | HEAP_ENTRY_INTERNAL) || units * G < LFH_ZONE_BLOCK ||
            units * G - LFH_ZONE_BLOCK >= MIN_FREE_UNITS * G || /* a unit more: rest unsplit */
            zone->Limit != (u8 *)zone_entry + LFH_ZONE_BLOCK || zone->FreePointer < (u8 *)(zone + 1) ||
            zone->FreePointer > zone->Limit)
            return 0;
        for (p = (u8 *)(zone + 1); p + sizeof(HEAP_SUBSEGMENT) <= zone->FreePointer;
             p += sizeof(HEAP_SUBSEGMENT)) {
            HEAP_SUBSEGMENT *sub = (HEAP_SUBSEGMENT *)p;
            if (!sub->UserBlocks) continue;
            if (!lfh_subsegment_valid(lfh, sub)) return 0;
            live++;
            totals[sub->SizeIndex] += sub->BlockCount;
            counts[sub->SizeIndex]++;
        }
    }
    if (live != st->userblocks || 1 + zones + live != st->internal) return 0;
    for (i = 0; i < LFH_BUCKETS; i++) {
        HEAP_LOCAL_SEGMENT_INFO *si = &ld->SegmentInfo[i];
        if (si->Counters.TotalBlocks != totals[i] || si->Counters.SubSegmentCounts != counts[i])
            return 0;
        if (si->Hint && (!lfh_subsegment_valid(lfh, si->Hint) || si->Hint->LocalInfo != si)) return 0;
        if (si->ActiveSubsegment && (!lfh_subsegment_valid(lfh, si->ActiveSubsegment) ||
                                     si->ActiveSubsegment->LocalInfo != si))
            return 0;
        for (j = 0; j < LFH_CACHED_ITEMS; j++) {
            HEAP_SUBSEGMENT *c = si->CachedItems[j];
            if (c && (!lfh_subsegment_valid(lfh, c) || c->LocalInfo != si)) return 0;
        }
    }
    for (d = ld->DeletedSubSegments.Next; d; d = *(void **)d) {
        HEAP_SUBSEGMENT *sub = CONTAINING(d, HEAP_SUBSEGMENT, SFreeListEntry);
        if (++deleted > ld->DeletedSubSegments.Depth || sub->UserBlocks) return 0;
    }
    if (deleted != ld->DeletedSubSegments.Depth) return 0;
    for (l = heap->BlocksIndex; l; l = l->ExtendedLookup) {
        for (i = 0; i < l->ArraySize - l->BaseIndex; i++) {
            uptr value = (uptr)l->ListHints[i].Blink;
            if (!(value & 1)) continue;
            value--;
            if (value < (uptr)&lfh->Buckets[0] || value > (uptr)&lfh->Buckets[LFH_BUCKETS - 1] ||
                (value - (uptr)&lfh->Buckets[0]) % sizeof(HEAP_BUCKET))
                return 0;
        }
    }
    return 1;
}

static int validate_heap(HEAP *heap)
{
    VALIDATE_STATE st;
    LFH_HEAP *lfh = heap_lfh(heap);
    HEAP_LIST_LOOKUP *first = heap->BlocksIndex;
    LIST_ENTRY *e;
    u32 index = 0;
    st.free_blocks = st.free_units = st.internal = st.userblocks = st.listed_ucrs = 0;
    if (first != (HEAP_LIST_LOOKUP *)((u8 *)heap + sizeof(HEAP) + sizeof(RTL_CRITICAL_SECTION)) ||
        first->ArraySize != LIST_LOOKUP_FIRST_SIZE || first->BaseIndex ||
        (first->ExtendedLookup && (first->ExtendedLookup->ArraySize != LIST_LOOKUP_LAST_SIZE ||
                                   first->ExtendedLookup->BaseIndex != LIST_LOOKUP_FIRST_SIZE ||
                                   first->ExtendedLookup->ExtendedLookup)))
        return 0;
    if (heap->SegmentList.Flink != &heap->Segment.SegmentListEntry) return 0;
    for (e = heap->SegmentList.Flink; e != &heap->SegmentList; e = e->Flink, index++) {
        if (e->Flink->Blink != e || index >= MAX_SEGMENTS) return 0;
        if (!validate_segment(heap, segment_of(e), index, &st)) return 0;
    }
    if (st.free_units != heap->TotalFreeSize) return 0;
    if (!validate_free_lists(heap, &st) || !validate_ucr_list(heap, &st) || !validate_virtual(heap))
        return 0;
    if (lfh) return validate_lfh(heap, lfh, &st);
    return st.internal == 0;
}

/* ------------------------------------------------------------------ walking */

static void walk_clear(RTL_HEAP_WALK_ENTRY *entry)
{
    entry->DataAddress = 0;
    entry->DataSize = 0;
    entry->OverheadBytes = 0;
    entry->SegmentIndex = 0;
    entry->Flags = 0;
    entry->Segment.CommittedSize = 0;
    entry->Segment.UnCommittedSize = 0;
    entry->Segment.FirstEntry = 0;
    entry->Segment.LastEntry = 0;
}

static u32 walk_region(HEAP *heap, HEAP_SEGMENT *seg, RTL_HEAP_WALK_ENTRY *out)
{
    walk_clear(out);
    out->DataAddress = seg->BaseAddress;
    out->DataSize = (uptr)seg->NumberOfPages * PAGE;
    out->SegmentIndex = (u8)segment_index(heap, seg);
    out->Flags = RTL_HEAP_ENTRY_REGION;
    out->Segment.CommittedSize = (u32)((uptr)(seg->NumberOfPages - seg->NumberOfUnCommittedPages) * PAGE);
    out->Segment.UnCommittedSize = (u32)((uptr)seg->NumberOfUnCommittedPages * PAGE);
    out->Segment.FirstEntry = seg->FirstEntry;
    out->Segment.LastEntry = seg->LastValidEntry;
    return STATUS_SUCCESS;
}

static u32 walk_virtual(HEAP *heap, HEAP_VIRTUAL_ALLOC_ENTRY *va, RTL_HEAP_WALK_ENTRY *out)
{
    walk_clear(out);
    out->DataAddress = va + 1;
    out->DataSize = virtual_request(heap, va);
    out->OverheadBytes = (u8)sizeof(HEAP_VIRTUAL_ALLOC_ENTRY);
    out->Flags = RTL_HEAP_ENTRY_BUSY | RTL_HEAP_ENTRY_BLOCK | RTL_HEAP_ENTRY_COMMITTED;
    return STATUS_SUCCESS;
}

/* After a segment's last entry: the next segment's region, else the virtual blocks. */
static u32 walk_after_segment(HEAP *heap, HEAP_SEGMENT *seg, RTL_HEAP_WALK_ENTRY *out)
{
    if (seg->SegmentListEntry.Flink != &heap->SegmentList)
        return walk_region(heap, segment_of(seg->SegmentListEntry.Flink), out);
    if (heap->VirtualAllocdBlocks.Flink != &heap->VirtualAllocdBlocks)
        return walk_virtual(heap, CONTAINING(heap->VirtualAllocdBlocks.Flink,
                                             HEAP_VIRTUAL_ALLOC_ENTRY, Entry), out);
    return STATUS_NO_MORE_ENTRIES;
}

static u32 walk_lfh_block(HEAP *heap, HEAP_SUBSEGMENT *sub, HEAP_ENTRY *entry,
                          RTL_HEAP_WALK_ENTRY *out)
{
    uptr stride = (uptr)sub->BlockSize * G;
    walk_clear(out);
    out->DataAddress = entry + 1;
    out->SegmentIndex = (u8)segment_index(heap, find_segment(heap, entry));
    if (entry->UnusedBytes == LFH_UNUSED_FLAG) {
        out->DataSize = stride - G;
        out->OverheadBytes = (u8)G;
        out->Flags = RTL_HEAP_ENTRY_LFH;
    } else {
        uptr unused = lfh_unused(sub, entry);
        out->DataSize = stride - unused;
        out->OverheadBytes = (u8)(unused > 0xFF ? 0xFF : unused);
        out->Flags = RTL_HEAP_ENTRY_BUSY | RTL_HEAP_ENTRY_BLOCK | RTL_HEAP_ENTRY_COMMITTED |
                     RTL_HEAP_ENTRY_LFH;
    }
    return STATUS_SUCCESS;
}

/* Reports the back-end block at p (a header inside committed memory of seg). */
static u32 walk_block(HEAP *heap, HEAP_SEGMENT *seg, u8 *p, RTL_HEAP_WALK_ENTRY *out)
{
    HEAP_ENTRY *entry = (HEAP_ENTRY *)p;
    uptr units;
    u32 flags;
    if (!segment_committed(seg, p, G) || !entry_decode(heap, entry, &units, &flags) || !units)
        return STATUS_INVALID_PARAMETER;
    walk_clear(out);
    out->DataAddress = entry + 1;
    out->SegmentIndex = (u8)segment_index(heap, seg);
    if (!(flags & HEAP_ENTRY_BUSY)) {
        out->DataSize = units * G - G;
        out->OverheadBytes = (u8)G;
        return STATUS_SUCCESS;
    }
    out->DataSize = units * G - entry->UnusedBytes;
    out->OverheadBytes = entry->UnusedBytes;
    out->Flags = RTL_HEAP_ENTRY_BUSY | RTL_HEAP_ENTRY_BLOCK | RTL_HEAP_ENTRY_COMMITTED;
    if ((flags & (HEAP_ENTRY_INTERNAL | HEAP_ENTRY_LAST_ENTRY)) || entry->UnusedBytes < G)
        out->Flags |= WIN7HEAP_WALK_INTERNAL;
    return STATUS_SUCCESS;
}

/* What follows the UCR `ucr` of seg. */
static u32 walk_after_ucr(HEAP *heap, HEAP_SEGMENT *seg, HEAP_UCR_DESCRIPTOR *ucr,
                          RTL_HEAP_WALK_ENTRY *out)
{
    u8 *next = (u8 *)ucr->Address + ucr->Size;
    if (next < (u8 *)seg->LastValidEntry) return walk_block(heap, seg, next, out);
    return walk_after_segment(heap, seg, out);
}

/* The live subsegment whose UserBlocks is the data of the busy Internal block entry, or 0. */
static HEAP_SUBSEGMENT *userblocks_of(HEAP *heap, HEAP_ENTRY *entry)
{
    LFH_HEAP *lfh = heap_lfh(heap);
    HEAP_SUBSEGMENT *sub;
    if (!lfh) return 0;
    sub = *(HEAP_SUBSEGMENT **)(entry + 1);
    if (!lfh_subsegment_valid(lfh, sub) || (HEAP_ENTRY *)sub->UserBlocks - 1 != entry) return 0;
    return sub;
}

/* What follows the back-end block at p: its UCR (after a sentinel), its first LFH block (after
 * a UserBlocks block), else the next block. */
static u32 walk_after_block(HEAP *heap, HEAP_SEGMENT *seg, u8 *p, RTL_HEAP_WALK_ENTRY *out)
{
    HEAP_ENTRY *entry = (HEAP_ENTRY *)p;
    HEAP_SUBSEGMENT *sub;
    uptr units;
    u32 flags;
    if (!entry_decode(heap, entry, &units, &flags) || !units) return STATUS_INVALID_PARAMETER;
    if (flags & HEAP_ENTRY_LAST_ENTRY) {
        HEAP_UCR_DESCRIPTOR *ucr = sentinel_ucr(entry);
        if (!ucr->Size) return walk_after_ucr(heap, seg, ucr, out);
        walk_clear(out);
        out->DataAddress = ucr->Address;
        out->DataSize = ucr->Size;
        out->SegmentIndex = (u8)segment_index(heap, seg);
        out->Flags = RTL_HEAP_ENTRY_UNCOMMITTED;
        return STATUS_SUCCESS;
    }
    if ((flags & HEAP_ENTRY_INTERNAL) && (sub = userblocks_of(heap, entry)) != 0)
        return walk_lfh_block(heap, sub, lfh_block(sub, LFH_FIRST_OFFSET), out);
    if ((uptr)((u8 *)seg->LastValidEntry - p) / G <= units) return STATUS_INVALID_PARAMETER;
    return walk_block(heap, seg, p + units * G, out);
}

static u32 heap_walk(HEAP *heap, RTL_HEAP_WALK_ENTRY *entry)
{
    u8 *data = entry->DataAddress;
    HEAP_SEGMENT *seg;
    LIST_ENTRY *e;

    if (!data) return walk_region(heap, &heap->Segment, entry);
    if (entry->Flags & RTL_HEAP_ENTRY_REGION) {
        seg = find_segment(heap, data);
        if (!seg || (u8 *)seg->BaseAddress != data) return STATUS_INVALID_PARAMETER;
        return walk_block(heap, seg, (u8 *)seg->FirstEntry, entry);
    }
    if (entry->Flags & RTL_HEAP_ENTRY_UNCOMMITTED) {
        seg = find_segment(heap, data);
        if (!seg) return STATUS_INVALID_PARAMETER;
        for (e = seg->UCRSegmentList.Flink; e != &seg->UCRSegmentList; e = e->Flink)
            if ((u8 *)ucr_of_segment_link(e)->Address == data)
                return walk_after_ucr(heap, seg, ucr_of_segment_link(e), entry);
        return STATUS_INVALID_PARAMETER;
    }
    for (e = heap->VirtualAllocdBlocks.Flink; e != &heap->VirtualAllocdBlocks; e = e->Flink) {
        if ((u8 *)(CONTAINING(e, HEAP_VIRTUAL_ALLOC_ENTRY, Entry) + 1) != data) continue;
        if (e->Flink == &heap->VirtualAllocdBlocks) return STATUS_NO_MORE_ENTRIES;
        return walk_virtual(heap, CONTAINING(e->Flink, HEAP_VIRTUAL_ALLOC_ENTRY, Entry), entry);
    }
    seg = find_segment(heap, data);
    if (!seg || ((uptr)data & (G - 1)) || data <= (u8 *)seg->FirstEntry ||
        !segment_committed(seg, data - G, G))
        return STATUS_INVALID_PARAMETER;
    if (entry->Flags & RTL_HEAP_ENTRY_LFH) {
        HEAP_ENTRY *block = (HEAP_ENTRY *)data - 1;
        HEAP_SUBSEGMENT *sub = lfh_lookup(heap, block);
        u8 *ub_entry;
        uptr units;
        u32 flags;
        if (!sub) return STATUS_INVALID_PARAMETER;
        if ((uptr)((u8 *)block - (u8 *)lfh_block(sub, LFH_FIRST_OFFSET)) / ((uptr)sub->BlockSize * G) +
                1 < sub->BlockCount)
            return walk_lfh_block(heap, sub, entry_at(block, sub->BlockSize), entry);
        ub_entry = (u8 *)((HEAP_ENTRY *)sub->UserBlocks - 1);
        if (!entry_decode(heap, (HEAP_ENTRY *)ub_entry, &units, &flags)) return STATUS_INVALID_PARAMETER;
        return walk_block(heap, seg, ub_entry + units * G, entry);
    }
    return walk_after_block(heap, seg, data - G, entry);
}

/* ------------------------------------------------------------------ allocation */

static void *heap_alloc(HEAP *heap, u32 flags, uptr size)
{
    uptr units;
    HEAP_ENTRY *entry;
    LFH_HEAP *lfh;
    void *ret;

    if (size > heap->MaximumAllocationSize) return 0;
    units = request_units(size);
    if (heap->CompatibilityFlags & HEAP_COMPAT_LFH_PENDING) lfh_create(heap); /* T2: the 18th */
    lfh = heap_lfh(heap);
    if (lfh && size <= LFH_MAX_REQUEST) {
        u32 bucket = lfh_bucket_of(heap, lfh, units);
        if (bucket < LFH_BUCKETS) {
            ret = lfh_alloc(heap, lfh, bucket, size);
            if (ret) {
                if (flags & HEAP_ZERO_MEMORY) mem_zero(ret, size);
                return ret;
            }
        }
    }
    if (units > heap->VirtualMemoryThreshold) {
        if (!(heap->Flags & HEAP_GROWABLE)) return 0;
        return virtual_alloc(heap, size); /* fresh pages are zero */
    }
    entry = backend_alloc(heap, size, BLOCK_USER);
    if (!entry) return 0;
    lfh_count_alloc(heap, units);
    if (flags & HEAP_ZERO_MEMORY) mem_zero(entry + 1, size);
    return entry + 1;
}

static void free_ref(HEAP *heap, const BLOCK_REF *ref)
{
    if (ref->kind == REF_VIRTUAL) {
        virtual_free(heap, ref->va);
    } else if (ref->kind == REF_LFH) {
        lfh_free(heap, heap_lfh(heap), ref->sub, ref->entry);
    } else if (ref->kind == REF_BACKEND) {
        if (lfh_allowed(heap)) lfh_count_free(heap, request_units(block_request(heap, ref)));
        backend_free(heap, ref->seg, ref->entry, ref->units);
    }
}

/* Resizes a back-end block in place (shrinking, or growing into a free successor); 0 if it
 * cannot. */
static int backend_resize(HEAP *heap, const BLOCK_REF *ref, uptr size)
{
    HEAP_ENTRY *entry = ref->entry, *next;
    uptr units = ref->units, want = request_units(size), next_units, prev_units = entry->PreviousSize;
    u32 flags, segidx = entry->SegmentOffset;
    if (want > heap->VirtualMemoryThreshold) return 0;
    if (want > units) {
        next = entry_at(entry, units);
        next_units = entry_units(heap, next, &flags);
        if (!next_units || (flags & HEAP_ENTRY_BUSY) || units + next_units < want) return 0;
        remove_free(heap, next, next_units);
        units += next_units;
        entry_init(heap, entry, units, HEAP_ENTRY_BUSY, prev_units, segidx, 0);
        entry_at(entry, units)->PreviousSize = (u16)units;
    }
    if (units - want >= MIN_FREE_UNITS) {
        entry_init(heap, entry, want, HEAP_ENTRY_BUSY, prev_units, segidx, 0);
        free_run(heap, ref->seg, (u8 *)entry_at(entry, want), (u8 *)entry_at(entry, units), want, 0,
                 0);
        units = want;
    }
    entry->UnusedBytes = (u8)(units * G - size);
    return 1;
}

/* status receives STATUS_ACCESS_VIOLATION or STATUS_NO_MEMORY on failure. */
static void *heap_realloc(HEAP *heap, u32 flags, void *ptr, uptr size, u32 *status)
{
    BLOCK_REF ref;
    int corrupt;
    uptr old_size;
    void *new_ptr;

    if (!lookup_block(heap, ptr, &ref, &corrupt)) {
        if (corrupt) heap_corruption();
        *status = STATUS_ACCESS_VIOLATION;
        return 0;
    }
    *status = STATUS_NO_MEMORY;
    if (size > heap->MaximumAllocationSize) return 0;
    old_size = block_request(heap, &ref);
    if (ref.kind == REF_LFH) {
        uptr stride = ref.units * G, capacity = size ? (size + G - 1) / G : 1;
        if (size + G <= stride && (bucket_for(capacity) == ref.sub->SizeIndex ||
                                   (flags & HEAP_REALLOC_IN_PLACE_ONLY))) {
            lfh_set_unused(ref.sub, ref.entry, stride - size);
            if ((flags & HEAP_ZERO_MEMORY) && size > old_size)
                mem_zero((u8 *)ptr + old_size, size - old_size);
            return ptr;
        }
    } else if (ref.kind == REF_VIRTUAL) {
        /* in place while BusyBlock.Size (a u16) can hold CommitSize - size */
        if (size <= ref.va->CommitSize - sizeof(HEAP_VIRTUAL_ALLOC_ENTRY) &&
            ref.va->CommitSize - size <= 0xFFFFu &&
            request_units(size) > heap->VirtualMemoryThreshold) {
            entry_encode(heap, &ref.va->BusyBlock, ref.va->CommitSize - size,
                         HEAP_ENTRY_BUSY | HEAP_ENTRY_VIRTUAL_ALLOC);
            if ((flags & HEAP_ZERO_MEMORY) && size > old_size)
                mem_zero((u8 *)ptr + old_size, size - old_size);
            return ptr;
        }
    } else if (backend_resize(heap, &ref, size)) {
        if ((flags & HEAP_ZERO_MEMORY) && size > old_size)
            mem_zero((u8 *)ptr + old_size, size - old_size);
        return ptr;
    }
    if (flags & HEAP_REALLOC_IN_PLACE_ONLY) return 0;
    new_ptr = heap_alloc(heap, flags, size);
    if (!new_ptr) return 0;
    mem_copy(new_ptr, ptr, old_size < size ? old_size : size);
    free_ref(heap, &ref);
    return new_ptr;
}

/* ------------------------------------------------------------------ heap handles, PEB */

static HEAP *get_heap(void *handle)
{
    HEAP *heap = handle;
    if (!heap || ((uptr)heap & (PAGE - 1))) return 0;
    if (heap->Signature != HEAP_SIGNATURE || heap->Segment.SegmentSignature != HEAP_SEGMENT_SIGNATURE ||
        heap->Segment.Heap != heap)
        return 0;
    return heap;
}

static void peb_add_heap(HEAP *heap)
{
    u8 *peb = ntheap_get_peb();
    u32 *count;
    void **heaps;
    if (!peb) return;
    count = (u32 *)(peb + PEB_NUMBER_OF_HEAPS);
    heaps = *(void ***)(peb + PEB_PROCESS_HEAPS);
    if (!heaps || *count >= *(u32 *)(peb + PEB_MAXIMUM_NUMBER_OF_HEAPS)) return;
    heaps[(*count)++] = heap;
    heap->ProcessHeapsListIndex = (u16)*count; /* 1-based (T2: the 4th heap has 4) */
}

static void peb_remove_heap(HEAP *heap)
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
            HEAP *other = get_heap(heaps[j]);
            heaps[j - 1] = heaps[j];
            if (other) other->ProcessHeapsListIndex = (u16)j;
        }
        heaps[--*count] = 0;
        heap->ProcessHeapsListIndex = 0;
        return;
    }
}

static uptr peb_value(uptr offset, uptr fallback)
{
    u8 *peb = ntheap_get_peb();
    uptr value = peb ? *(uptr *)(peb + offset) : 0;
    return value ? value : fallback;
}

/* ------------------------------------------------------------------ exports */

void *NTAPI RtlCreateHeap(u32 flags, void *base, uptr reserve, uptr commit, void *lock,
                          void *params)
{
    uptr min_commit = align_up(HEAP_HEADER_BYTES + UCR_INDEX_BYTES + MIN_FREE_UNITS * G +
                                   SENTINEL_BYTES, PAGE);
    u32 segment_flags = 0;
    WIN7HEAP_KEYS keys;
    HEAP_LIST_LOOKUP *lookup;
    HEAP_SEGMENT *seg;
    HEAP_ENTRY *ucr_index;
    HEAP *heap;

    (void)lock;
    (void)params;
    if (base) {
        /* caller's memory: [base, base + reserve) reserved (or committed) by the caller */
        if ((uptr)base & (PAGE - 1)) return 0;
        if (!reserve) reserve = commit;
        reserve = align_down(reserve, PAGE);
        if (reserve < min_commit) return 0;
        commit = align_up(commit < min_commit ? min_commit : commit, PAGE);
        if (commit > reserve) commit = reserve;
        {
            void *commit_base = base;
            uptr commit_size = commit;
            if ((i32)NtAllocateVirtualMemory(CURRENT_PROCESS, &commit_base, 0, &commit_size,
                                             MEM_COMMIT,
                                             (flags & HEAP_CREATE_ENABLE_EXECUTE)
                                                 ? PAGE_EXECUTE_READWRITE
                                                 : PAGE_READWRITE) < 0)
                commit = reserve; /* not ours to commit: assume the caller committed all of it */
        }
        segment_flags = HEAP_SEGMENT_USER_ALLOCATED;
    } else {
        void *commit_base;
        uptr commit_size;
        if (!reserve) {
            reserve = HEAP_DEFAULT_RESERVE_PAGES * PAGE; /* T2 L24: 0x40000 */
            flags |= HEAP_GROWABLE;
        }
        if (reserve > HEAP_MAXIMUM_ALLOCATION || commit > HEAP_MAXIMUM_ALLOCATION) return 0;
        reserve = align_up(reserve, PAGE);
        commit = align_up(commit ? commit : PAGE, PAGE);
        if (commit < min_commit) commit = min_commit;
        if (commit > reserve) reserve = commit;
        if ((i32)NtAllocateVirtualMemory(CURRENT_PROCESS, &base, 0, &reserve, MEM_RESERVE,
                                         (flags & HEAP_CREATE_ENABLE_EXECUTE)
                                             ? PAGE_EXECUTE_READWRITE
                                             : PAGE_READWRITE) < 0)
            return 0;
        commit_base = base;
        commit_size = commit;
        if ((i32)NtAllocateVirtualMemory(CURRENT_PROCESS, &commit_base, 0, &commit_size, MEM_COMMIT,
                                         (flags & HEAP_CREATE_ENABLE_EXECUTE)
                                             ? PAGE_EXECUTE_READWRITE
                                             : PAGE_READWRITE) < 0) {
            release_region(base);
            return 0;
        }
    }

    heap = base;
    mem_zero(heap, HEAP_HEADER_BYTES);
    get_keys(&keys);
    advance_keys(&keys);
    heap->EncodeFlagMask = HEAP_ENCODE_FLAG_MASK;
    *(u32 *)&heap->Encoding.Size = keys.Encoding;
    heap->PointerKey = keys.PointerKey;
    heap->CommitRoutine = keys.PointerKey; /* NULL, encoded with PointerKey (T2) */
    heap->Flags = flags;
    heap->ForceFlags = flags & FORCE_FLAG_MASK;
    heap->VirtualMemoryThreshold = HEAP_VIRTUAL_THRESHOLD_UNITS;
    heap->Signature = HEAP_SIGNATURE;
    heap->SegmentReserve = peb_value(PEB_HEAP_SEGMENT_RESERVE, HEAP_DEFAULT_SEGMENT_RESERVE);
    heap->SegmentCommit = peb_value(PEB_HEAP_SEGMENT_COMMIT, HEAP_DEFAULT_SEGMENT_COMMIT);
    heap->DeCommitFreeBlockThreshold =
        peb_value(PEB_HEAP_DECOMMIT_FREE_BLOCK_THRESHOLD, HEAP_DEFAULT_DECOMMIT_FREE_BLOCK) / G;
    heap->DeCommitTotalFreeThreshold =
        peb_value(PEB_HEAP_DECOMMIT_TOTAL_FREE_THRESHOLD, HEAP_DEFAULT_DECOMMIT_TOTAL_FREE) / G;
    heap->MaximumAllocationSize = HEAP_MAXIMUM_ALLOCATION;
    heap->HeaderValidateLength = (u16)sizeof(HEAP);
    heap->AlignRound = 2 * G - 1;
    heap->AlignMask = ~(G - 1);
    list_init(&heap->UCRList);
    list_init(&heap->VirtualAllocdBlocks);
    list_init(&heap->SegmentList);
    list_init(&heap->FreeLists);
    heap->LockVariable = heap + 1;
    ((RTL_CRITICAL_SECTION *)heap->LockVariable)->LockCount = -1;
    lookup = (HEAP_LIST_LOOKUP *)((u8 *)heap->LockVariable + sizeof(RTL_CRITICAL_SECTION));
    lookup_init(lookup, heap, 0, LIST_LOOKUP_FIRST_SIZE);
    heap->BlocksIndex = lookup;

    seg = &heap->Segment;
    entry_init(heap, &seg->Entry, HEAP_HEADER_BYTES / G, HEAP_ENTRY_BUSY, 0, 0, HEAP_INTERNAL_UNUSED);
    seg->SegmentSignature = HEAP_SEGMENT_SIGNATURE;
    seg->SegmentFlags = segment_flags;
    seg->Heap = heap;
    seg->BaseAddress = base;
    seg->NumberOfPages = (u32)(reserve / PAGE);
    seg->FirstEntry = entry_at(base, HEAP_HEADER_BYTES / G);
    seg->LastValidEntry = (HEAP_ENTRY *)((u8 *)base + reserve);
    seg->NumberOfUnCommittedPages = (u32)((reserve - commit) / PAGE);
    seg->NumberOfUnCommittedRanges = 1;
    list_init(&seg->UCRSegmentList);
    list_insert_before(&heap->SegmentList, &seg->SegmentListEntry);

    ucr_index = seg->FirstEntry; /* T2: a 0x240 block, UCRIndex = its data */
    entry_init(heap, ucr_index, UCR_INDEX_BYTES / G, HEAP_ENTRY_BUSY, HEAP_HEADER_BYTES / G, 0,
               HEAP_INTERNAL_UNUSED);
    mem_zero(ucr_index + 1, UCR_INDEX_BYTES - G);
    heap->UCRIndex = ucr_index + 1;
    put_sentinel(heap, seg, (u8 *)base + commit, reserve - commit, 0, 0);
    free_run(heap, seg, (u8 *)ucr_index + UCR_INDEX_BYTES, (u8 *)base + commit - SENTINEL_BYTES,
             UCR_INDEX_BYTES / G, 0, 0);
    heap->Counters.TotalSegments = 1;
    heap->Counters.TotalUCRs = 1;
    heap->Counters.TotalMemoryReserved = reserve;
    heap->Counters.TotalMemoryCommitted = commit;
    peb_add_heap(heap);
    return heap;
}

void *NTAPI RtlDestroyHeap(void *handle)
{
    HEAP *heap = get_heap(handle);
    u8 *peb;
    if (!heap) return handle;
    peb = ntheap_get_peb();
    if (peb && *(void **)(peb + PEB_PROCESS_HEAP) == heap) return handle;
    peb_remove_heap(heap);
    while (heap->VirtualAllocdBlocks.Flink != &heap->VirtualAllocdBlocks)
        virtual_free(heap, CONTAINING(heap->VirtualAllocdBlocks.Flink, HEAP_VIRTUAL_ALLOC_ENTRY, Entry));
    while (heap->SegmentList.Blink != &heap->Segment.SegmentListEntry) {
        HEAP_SEGMENT *seg = segment_of(heap->SegmentList.Blink);
        void *base = seg->BaseAddress;
        list_remove(&seg->SegmentListEntry);
        seg->SegmentSignature = 0;
        release_region(base);
    }
    heap->Signature = 0;
    heap->Segment.SegmentSignature = 0;
    if (!(heap->Segment.SegmentFlags & HEAP_SEGMENT_USER_ALLOCATED)) release_region(heap);
    userinfo_drop_heap(handle);
    return 0;
}

void *NTAPI RtlAllocateHeap(void *handle, u32 flags, uptr size)
{
    HEAP *heap = get_heap(handle);
    void *ret;
    if (!heap) {
        if (flags & HEAP_GENERATE_EXCEPTIONS) raise_status(STATUS_INVALID_PARAMETER);
        return 0;
    }
    flags |= heap->ForceFlags;
    ret = heap_alloc(heap, flags, size);
    if (!ret && (flags & HEAP_GENERATE_EXCEPTIONS)) raise_status(STATUS_NO_MEMORY);
    return userinfo_allocated(handle, flags, ret);
}

u32 NTAPI RtlFreeHeap(void *handle, u32 flags, void *ptr)
{
    HEAP *heap;
    BLOCK_REF ref;
    int corrupt;
    if (!ptr) return 1;
    heap = get_heap(handle);
    if (!heap) {
        if (flags & HEAP_GENERATE_EXCEPTIONS) raise_status(STATUS_INVALID_PARAMETER);
        return 0;
    }
    flags |= heap->ForceFlags;
    if (!lookup_block(heap, ptr, &ref, &corrupt)) {
        if (corrupt)
            heap_corruption();
        else if (flags & HEAP_GENERATE_EXCEPTIONS)
            raise_status(STATUS_ACCESS_VIOLATION);
        return 0;
    }
    userinfo_remove(handle, ptr);
    free_ref(heap, &ref);
    return 1;
}

void *NTAPI RtlReAllocateHeap(void *handle, u32 flags, void *ptr, uptr size)
{
    HEAP *heap;
    void *ret;
    u32 status = STATUS_SUCCESS;
    if (!ptr) return 0;
    heap = get_heap(handle);
    if (!heap) {
        if (flags & HEAP_GENERATE_EXCEPTIONS) raise_status(STATUS_INVALID_PARAMETER);
        return 0;
    }
    flags |= heap->ForceFlags;
    ret = heap_realloc(heap, flags, ptr, size, &status);
    if (!ret && (flags & HEAP_GENERATE_EXCEPTIONS)) raise_status(status);
    userinfo_reallocated(handle, flags, ptr, ret);
    return ret;
}

uptr NTAPI RtlSizeHeap(void *handle, u32 flags, const void *ptr)
{
    HEAP *heap = get_heap(handle);
    BLOCK_REF ref;
    int corrupt;
    if (!heap) {
        if (flags & HEAP_GENERATE_EXCEPTIONS) raise_status(STATUS_INVALID_PARAMETER);
        return (uptr)-1;
    }
    flags |= heap->ForceFlags;
    if (!lookup_block(heap, ptr, &ref, &corrupt)) {
        if (corrupt)
            heap_corruption();
        else if (flags & HEAP_GENERATE_EXCEPTIONS)
            raise_status(STATUS_ACCESS_VIOLATION);
        return (uptr)-1;
    }
    return block_request(heap, &ref);
}

u32 NTAPI RtlValidateHeap(void *handle, u32 flags, const void *ptr)
{
    HEAP *heap = get_heap(handle);
    BLOCK_REF ref;
    int corrupt;
    (void)flags;
    if (!heap) return 0;
    if (ptr) return lookup_block(heap, ptr, &ref, &corrupt) != REF_NONE;
    return validate_heap(heap) ? 1 : 0;
}

u32 NTAPI RtlWalkHeap(void *handle, RTL_HEAP_WALK_ENTRY *entry)
{
    HEAP *heap = get_heap(handle);
    if (!heap || !entry) return STATUS_INVALID_PARAMETER;
    return heap_walk(heap, entry);
}

u32 NTAPI RtlLockHeap(void *handle)
{
    HEAP *heap = get_heap(handle);
    RTL_CRITICAL_SECTION *cs;
    if (!heap) return 0;
    cs = heap->LockVariable;
    cs->LockCount++;
    cs->RecursionCount++;
    return 1;
}

u32 NTAPI RtlUnlockHeap(void *handle)
{
    HEAP *heap = get_heap(handle);
    RTL_CRITICAL_SECTION *cs;
    if (!heap) return 0;
    cs = heap->LockVariable;
    if (cs->RecursionCount <= 0) return 0;
    cs->LockCount--;
    cs->RecursionCount--;
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
    HEAP *heap = get_heap(handle);
    if (info_class != HeapCompatibilityInformation || !heap) return STATUS_INVALID_PARAMETER;
    if (return_length) *return_length = sizeof(u32);
    if (length < sizeof(u32) || !info) return STATUS_BUFFER_TOO_SMALL;
    *(u32 *)info = heap_lfh(heap) ? HEAP_FRONT_END_LFH : 0;
    return STATUS_SUCCESS;
}

u32 NTAPI RtlSetHeapInformation(void *handle, u32 info_class, void *info, uptr length)
{
    HEAP *heap;
    u32 value;
    if (info_class == HeapEnableTerminationOnCorruption) return STATUS_SUCCESS; /* always on */
    heap = get_heap(handle);
    if (info_class != HeapCompatibilityInformation || !heap) return STATUS_INVALID_PARAMETER;
    if (length < sizeof(u32) || !info) return STATUS_BUFFER_TOO_SMALL;
    value = *(u32 *)info;
    if (value == HEAP_FRONT_END_LFH) {
        if (!lfh_allowed(heap)) return STATUS_UNSUCCESSFUL;
        return lfh_create(heap) ? STATUS_SUCCESS : STATUS_NO_MEMORY;
    }
    return value == 0 && !heap_lfh(heap) ? STATUS_SUCCESS : STATUS_UNSUCCESSFUL;
}

u32 NTAPI Win7HeapSetKeys(u32 encoding, uptr lfh_key, uptr pointer_key)
{
    u8 *peb = ntheap_get_peb();
    WIN7HEAP_KEYS *rec;
    if (!peb) return STATUS_UNSUCCESSFUL;
    rec = (WIN7HEAP_KEYS *)(peb + WIN7HEAP_KEYS_PEB_OFFSET);
    rec->Encoding = encoding;
    rec->LFHKey = lfh_key;
    rec->PointerKey = pointer_key;
    rec->Signature = WIN7HEAP_KEYS_SIGNATURE;
    return STATUS_SUCCESS;
}
