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
    if (p < (u8 *)seg->BaseAddress || p + len > (u8 *)seg->LastValidEntry || p + len < p) return 0;
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
