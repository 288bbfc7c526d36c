/* Settable user values and user flags of heap blocks, and RtlCompactHeap, for every C heap.
 *
 * Included at the end of ntheap.c, win7heap.c and segheap.c (after their own header: u8/u32/
 * uptr, NTAPI, MEM_*, RTL_HEAP_WALK_ENTRY, ntheap_get_peb, the Nt* stubs). Wine's kernelbase
 * allocates every GlobalAlloc/LocalAlloc block with HEAP_SETTABLE_USER_VALUE |
 * HEAP_SETTABLE_USER_FLAG1 and keeps the block's handle in its user value
 * (RtlSetUserValueHeap, read back by GlobalHandle/LocalHandle through RtlGetUserInfoHeap).
 *
 * Windows' semantics, kept apart from the blocks: Windows stores the value in a
 * HEAP_ENTRY_EXTRA at the block's end and the flags in its header; here one process-wide
 * open-addressing table holds {heap, block, value, flags} for the blocks that have any, so no
 * heap's block layout (which the walkers read) changes. Its address is at
 * PEB + USERINFO_PEB_OFFSET (0 until the first entry); it grows by doubling, in memory of its
 * own (NtAllocateVirtualMemory). RtlAllocateHeap adds an entry for a block requested with a
 * HEAP_SETTABLE_* flag, RtlReAllocateHeap moves it with the block, RtlFreeHeap and
 * RtlDestroyHeap drop it.
 *
 *   RtlSetUserValueHeap  TRUE and the value stored when the block was allocated with
 *                        HEAP_SETTABLE_USER_VALUE; FALSE for any other block or pointer
 *   RtlSetUserFlagsHeap  TRUE for a busy block: its HEAP_SETTABLE_USER_FLAGS bits cleared
 *                        (reset) then set (set); FALSE for anything else
 *   RtlGetUserInfoHeap   TRUE for a busy block: *UserValue (only when it has one) and
 *                        *UserFlags (its settable flags); FALSE for anything else
 *   RtlCompactHeap       the size of the largest free committed block (0 for a bad heap)
 *
 * A busy block is one RtlSizeHeap answers for.
 */

#define USERINFO_PEB_OFFSET 0xF80u /* past the win7 key record (0xF00) */
#ifndef CURRENT_PROCESS
#define CURRENT_PROCESS ((uptr)-1)
#endif
#define HEAP_SETTABLE_USER_VALUE 0x100u
#define HEAP_SETTABLE_USER_FLAGS 0xE00u
#define USERINFO_FLAGS (HEAP_SETTABLE_USER_VALUE | HEAP_SETTABLE_USER_FLAGS)
#define USERINFO_EMPTY 0u
#define USERINFO_LIVE 1u
#define USERINFO_DELETED 2u
#define USERINFO_FIRST_CAPACITY 256u

static void raise_status(u32 code); /* each heap's own (NtRaiseException) */

typedef struct USERINFO_ENTRY {
    void *heap;
    const void *ptr;
    uptr value;
    u32 flags; /* USERINFO_FLAGS bits the block has */
    u32 state; /* USERINFO_EMPTY, _LIVE or _DELETED */
} USERINFO_ENTRY;

typedef struct USERINFO_TABLE {
    uptr capacity; /* a power of two */
    uptr used;     /* live and deleted slots */
    uptr reserved; /* bytes of this region */
    USERINFO_ENTRY entries[1];
} USERINFO_TABLE;

static USERINFO_TABLE **userinfo_slot(void)
{
    return (USERINFO_TABLE **)(ntheap_get_peb() + USERINFO_PEB_OFFSET);
}

static uptr userinfo_hash(const void *heap, const void *ptr, uptr capacity)
{
    uptr h = ((uptr)ptr >> 3) ^ ((uptr)heap >> 16);
    h *= (uptr)0x9E3779B1u;
    return (h ^ (h >> 15)) & (capacity - 1);
}

static USERINFO_ENTRY *userinfo_find(const void *heap, const void *ptr)
{
    USERINFO_TABLE *t = *userinfo_slot();
    uptr i, n;
    if (!t) return 0;
    i = userinfo_hash(heap, ptr, t->capacity);
    for (n = 0; n < t->capacity; n++, i = (i + 1) & (t->capacity - 1)) {
        USERINFO_ENTRY *e = &t->entries[i];
        if (e->state == USERINFO_EMPTY) return 0;
        if (e->state == USERINFO_LIVE && e->heap == heap && e->ptr == ptr) return e;
    }
    return 0;
}

static USERINFO_TABLE *userinfo_new_table(uptr capacity)
{
    void *base = 0;
    uptr size = sizeof(USERINFO_TABLE) + capacity * sizeof(USERINFO_ENTRY);
    USERINFO_TABLE *t;
    if ((i32)NtAllocateVirtualMemory(CURRENT_PROCESS, &base, 0, &size, MEM_RESERVE | MEM_COMMIT,
                                     PAGE_READWRITE) < 0)
        return 0;
    t = base; /* fresh pages are zero: every slot is USERINFO_EMPTY */
    t->capacity = capacity;
    t->used = 0;
    t->reserved = size;
    return t;
}

static void userinfo_insert(USERINFO_TABLE *t, void *heap, const void *ptr, uptr value,
                            u32 flags)
{
    uptr i = userinfo_hash(heap, ptr, t->capacity);
    while (t->entries[i].state == USERINFO_LIVE) i = (i + 1) & (t->capacity - 1);
    if (t->entries[i].state == USERINFO_EMPTY) t->used++;
    t->entries[i].heap = heap;
    t->entries[i].ptr = ptr;
    t->entries[i].value = value;
    t->entries[i].flags = flags;
    t->entries[i].state = USERINFO_LIVE;
}

/* Room for one more entry: the table made or rebuilt (twice as big, deleted slots dropped)
 * when it would pass 3/4 full. 0 when memory ran out (the table is left as it was). */
static int userinfo_reserve(void)
{
    USERINFO_TABLE **slot = userinfo_slot();
    USERINFO_TABLE *old = *slot, *t;
    uptr i;
    void *base;
    uptr size = 0;
    if (old && (old->used + 1) * 4 <= old->capacity * 3) return 1;
    t = userinfo_new_table(old ? old->capacity * 2 : USERINFO_FIRST_CAPACITY);
    if (!t) return 0;
    if (old) {
        for (i = 0; i < old->capacity; i++) {
            USERINFO_ENTRY *e = &old->entries[i];
            if (e->state == USERINFO_LIVE) userinfo_insert(t, e->heap, e->ptr, e->value, e->flags);
        }
        base = old;
        NtFreeVirtualMemory(CURRENT_PROCESS, &base, &size, MEM_RELEASE);
    }
    *slot = t;
    return 1;
}

/* A new entry for a block (value 0); 0 when there is no memory for it. */
static int userinfo_add(void *heap, const void *ptr, u32 flags)
{
    if (!userinfo_reserve()) return 0;
    userinfo_insert(*userinfo_slot(), heap, ptr, 0, flags & USERINFO_FLAGS);
    return 1;
}

static void userinfo_remove(const void *heap, const void *ptr)
{
    USERINFO_ENTRY *e = userinfo_find(heap, ptr);
    if (e) e->state = USERINFO_DELETED;
}

/* After RtlReAllocateHeap moved a block: its entry follows it (a fresh slot, so probing from
 * the new address finds it). */
static void userinfo_move(void *heap, const void *old_ptr, const void *new_ptr)
{
    USERINFO_ENTRY *e = userinfo_find(heap, old_ptr);
    uptr value;
    u32 flags;
    if (!e || old_ptr == new_ptr) return;
    value = e->value;
    flags = e->flags;
    e->state = USERINFO_DELETED;
    /* the slot just deleted is room enough: insertion always ends */
    userinfo_insert(*userinfo_slot(), heap, new_ptr, value, flags);
}

static void userinfo_drop_heap(const void *heap)
{
    USERINFO_TABLE *t = *userinfo_slot();
    uptr i;
    if (!t) return;
    for (i = 0; i < t->capacity; i++)
        if (t->entries[i].state == USERINFO_LIVE && t->entries[i].heap == heap)
            t->entries[i].state = USERINFO_DELETED;
}

/* RtlAllocateHeap's epilogue: a block asked for with settable flags gets its entry, or is
 * given back (no memory for the entry: the allocation fails, as Windows' would, raising
 * STATUS_NO_MEMORY under HEAP_GENERATE_EXCEPTIONS). */
static void *userinfo_allocated(void *handle, u32 flags, void *ptr)
{
    if (!ptr || !(flags & USERINFO_FLAGS)) return ptr;
    if (userinfo_add(handle, ptr, flags)) return ptr;
    RtlFreeHeap(handle, flags & ~(USERINFO_FLAGS | HEAP_GENERATE_EXCEPTIONS), ptr);
    if (flags & HEAP_GENERATE_EXCEPTIONS) raise_status(STATUS_NO_MEMORY);
    return 0;
}

/* RtlReAllocateHeap's epilogue: the entry follows a moved block; settable flags asked for
 * now give a block without one its entry (a failure to make it leaves the block as it is). */
static void userinfo_reallocated(void *handle, u32 flags, const void *old_ptr, void *ptr)
{
    USERINFO_ENTRY *e;
    if (!ptr) return;
    userinfo_move(handle, old_ptr, ptr);
    if (!(flags & USERINFO_FLAGS)) return;
    e = userinfo_find(handle, ptr);
    if (e)
        e->flags |= flags & USERINFO_FLAGS;
    else
        userinfo_add(handle, ptr, flags);
}

static int userinfo_busy(void *handle, const void *ptr)
{
    return ptr && RtlSizeHeap(handle, 0, ptr) != (uptr)-1;
}

u32 NTAPI RtlSetUserValueHeap(void *handle, u32 flags, void *ptr, void *value)
{
    USERINFO_ENTRY *e;
    (void)flags;
    if (!userinfo_busy(handle, ptr)) return 0;
    e = userinfo_find(handle, ptr);
    if (!e || !(e->flags & HEAP_SETTABLE_USER_VALUE)) return 0;
    e->value = (uptr)value;
    return 1;
}

u32 NTAPI RtlSetUserFlagsHeap(void *handle, u32 flags, void *ptr, u32 reset, u32 set)
{
    USERINFO_ENTRY *e;
    (void)flags;
    if (!userinfo_busy(handle, ptr)) return 0;
    e = userinfo_find(handle, ptr);
    if (!e) {
        if (!(set & HEAP_SETTABLE_USER_FLAGS)) return 1; /* nothing to set, nothing kept */
        if (!userinfo_add(handle, ptr, 0)) return 0;
        e = userinfo_find(handle, ptr);
    }
    e->flags = (e->flags & ~(reset & HEAP_SETTABLE_USER_FLAGS)) | (set & HEAP_SETTABLE_USER_FLAGS);
    return 1;
}

u32 NTAPI RtlGetUserInfoHeap(void *handle, u32 flags, void *ptr, void **value, u32 *user_flags)
{
    USERINFO_ENTRY *e;
    (void)flags;
    if (!userinfo_busy(handle, ptr)) return 0;
    e = userinfo_find(handle, ptr);
    if (e && (e->flags & HEAP_SETTABLE_USER_VALUE) && value) *value = (void *)e->value;
    if (user_flags) *user_flags = e ? e->flags & HEAP_SETTABLE_USER_FLAGS : 0;
    return 1;
}

uptr NTAPI RtlCompactHeap(void *handle, u32 flags)
{
    RTL_HEAP_WALK_ENTRY entry;
    u8 *raw = (u8 *)&entry;
    uptr i, largest = 0;
    (void)flags;
    for (i = 0; i < sizeof(entry); i++) raw[i] = 0;
    while (RtlWalkHeap(handle, &entry) == STATUS_SUCCESS) {
        u32 f = entry.Flags;
        if (!(f & (RTL_HEAP_ENTRY_BUSY | RTL_HEAP_ENTRY_REGION | RTL_HEAP_ENTRY_UNCOMMITTED)) &&
            entry.DataSize > largest)
            largest = entry.DataSize;
    }
    return largest;
}
