/*
 * ntheap.c - heapemu's embedded Wine-style NT heap, written for heapemu in freestanding C.
 *
 * Design (after the structure of Wine's heap, our own code): a HEAP header at the start of its
 * first subheap, more subheaps when a growable heap is full, blocks of HEAP_MIN_LARGE_BLOCK_SIZE
 * and more of growable heaps in regions of their own, size-bucketed free lists that form one
 * ring through sentinel arenas, coalescing of free neighbours, on-demand commit.
 * The only way out is the system interface declared in ntheap.h. See ntheap.h for the layout.
 */
#include "ntheap.h"
#include "userinfo.h"

#define PTR_SIZE ((uptr)sizeof(void *))
#define ALIGNMENT (2 * PTR_SIZE)
#define ARENA_OFFSET (ALIGNMENT - (uptr)sizeof(ARENA_INUSE))
#define MIN_BLOCK_SIZE ((((uptr)sizeof(ARENA_FREE) + PTR_SIZE) + ALIGNMENT - 1) & ~(ALIGNMENT - 1))
#define MAX_REQUEST ((uptr)0 - 4 * HEAP_REGION_ALIGN)
/* A block keeps a remainder only when it is too small to be a free block, so the bytes of a
 * block beyond the request (header included) are always below this. */
#define MAX_UNUSED (2 * MIN_BLOCK_SIZE - 1)
#define CURRENT_PROCESS ((uptr)-1)
#define CONTAINING(ptr, type, field) ((type *)((u8 *)(ptr) - __builtin_offsetof(type, field)))

#define ARENA_HEADER_SIZE(header) \
    ((((uptr)(header) + sizeof(ARENA_INUSE) + ALIGNMENT - 1) & ~(ALIGNMENT - 1)) - \
     sizeof(ARENA_INUSE))
#define FORCE_FLAG_MASK \
    (HEAP_NO_SERIALIZE | HEAP_GENERATE_EXCEPTIONS | HEAP_TAIL_CHECKING_ENABLED | \
     HEAP_FREE_CHECKING_ENABLED)
#define CHECKING_FLAGS (HEAP_TAIL_CHECKING_ENABLED | HEAP_FREE_CHECKING_ENABLED)

typedef char check_inuse_size[sizeof(ARENA_INUSE) == 8 ? 1 : -1];
typedef char check_large_align[(sizeof(ARENA_LARGE) % (2 * sizeof(void *))) == 0 ? 1 : -1];

/* What a user pointer turned out to be. */
typedef struct BLOCK_REF {
    SUBHEAP *sub;
    ARENA_INUSE *arena; /* block in a subheap, or */
    ARENA_LARGE *large; /* large block */
} BLOCK_REF;

/* ------------------------------------------------------------------ small helpers */

static uptr align_up(uptr value, uptr align) { return (value + align - 1) & ~(align - 1); }

static void list_init(LIST *list) { list->next = list->prev = list; }

static void list_add_after(LIST *pos, LIST *entry)
{
    entry->next = pos->next;
    entry->prev = pos;
    pos->next->prev = entry;
    pos->next = entry;
}

static void list_add_before(LIST *pos, LIST *entry) { list_add_after(pos->prev, entry); }

static void list_remove(LIST *entry)
{
    entry->next->prev = entry->prev;
    entry->prev->next = entry->next;
}

static u8 pattern_byte(const u8 *p, u32 pattern) { return (u8)(pattern >> (((uptr)p & 3) * 8)); }

/* Fills [p, end) with a 32-bit pattern laid at the natural phase of the address. */
static void fill_pattern(u8 *p, u8 *end, u32 pattern)
{
    while (p < end && ((uptr)p & 3)) {
        *p = pattern_byte(p, pattern);
        p++;
    }
    while (end - p >= 4) {
        *(u32 *)p = pattern;
        p += 4;
    }
    while (p < end) {
        *p = pattern_byte(p, pattern);
        p++;
    }
}

static int check_pattern(const u8 *p, const u8 *end, u32 pattern)
{
    for (; p < end; p++)
        if (*p != pattern_byte(p, pattern)) return 0;
    return 1;
}

/* Copies n bytes between two ALIGNMENT-aligned, non-overlapping buffers. */
static void copy_data(u8 *dst, const u8 *src, uptr n)
{
    uptr i = 0;
    for (; i + PTR_SIZE <= n; i += PTR_SIZE) *(uptr *)(dst + i) = *(const uptr *)(src + i);
    for (; i < n; i++) dst[i] = src[i];
}

static u32 heap_protect(const HEAP *heap)
{
    return (heap->flags & HEAP_CREATE_ENABLE_EXECUTE) ? PAGE_EXECUTE_READWRITE : PAGE_READWRITE;
}

static void release_region(void *base)
{
    uptr size = 0;
    NtFreeVirtualMemory(CURRENT_PROCESS, &base, &size, MEM_RELEASE);
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

/* ------------------------------------------------------------------ subheaps */

static u8 *subheap_first(const SUBHEAP *sub) { return (u8 *)sub->base + sub->header_size; }
static u8 *subheap_end(const SUBHEAP *sub) { return (u8 *)sub->base + sub->size - ARENA_OFFSET; }
static u8 *subheap_commit_end(const SUBHEAP *sub) { return (u8 *)sub->base + sub->commit_size; }

static SUBHEAP *find_subheap(HEAP *heap, const void *ptr)
{
    LIST *e;
    for (e = heap->subheap_list.next; e != &heap->subheap_list; e = e->next) {
        SUBHEAP *sub = CONTAINING(e, SUBHEAP, entry);
        if ((const u8 *)ptr >= (u8 *)sub->base && (const u8 *)ptr < (u8 *)sub->base + sub->size)
            return sub;
    }
    return 0;
}

/* Makes sure [base, end) is committed; commits in HEAP_REGION_ALIGN steps. */
static int subheap_commit(SUBHEAP *sub, const u8 *end)
{
    uptr need = (uptr)(end - (u8 *)sub->base), target, size;
    void *addr;
    if (need <= sub->commit_size) return 1;
    target = align_up(need, HEAP_REGION_ALIGN);
    if (target > sub->size) target = sub->size;
    if (need > target) return 0;
    addr = (u8 *)sub->base + sub->commit_size;
    size = target - sub->commit_size;
    if ((i32)NtAllocateVirtualMemory(CURRENT_PROCESS, &addr, 0, &size, MEM_COMMIT,
                                     heap_protect(sub->heap)) < 0)
        return 0;
    sub->commit_size = target;
    return 1;
}

/* ------------------------------------------------------------------ free lists */

static u32 bucket_of(uptr size)
{
    u32 idx = 32;
    uptr limit = 2 * HEAP_SMALL_LIST_LIMIT;
    if (size < HEAP_SMALL_LIST_LIMIT) return (u32)(size >> 4);
    while (idx < HEAP_NB_FREE_LISTS - 1 && size >= limit) {
        idx++;
        limit <<= 1;
    }
    return idx;
}

/* Blocks at the end of a subheap go to the tail of their list, others to the head. */
static void insert_free(HEAP *heap, ARENA_FREE *arena, int last)
{
    u32 idx = bucket_of(arena->size & ARENA_SIZE_MASK);
    if (last) {
        ARENA_FREE *next = &heap->free_lists[idx + 1 < HEAP_NB_FREE_LISTS ? idx + 1 : 0];
        list_add_before(&next->entry, &arena->entry);
    } else {
        list_add_after(&heap->free_lists[idx].entry, &arena->entry);
    }
}

static ARENA_FREE *find_free(HEAP *heap, uptr need)
{
    LIST *end = &heap->free_lists[0].entry, *e;
    for (e = heap->free_lists[bucket_of(need)].entry.next; e != end; e = e->next) {
        ARENA_FREE *arena = CONTAINING(e, ARENA_FREE, entry);
        if ((arena->size & ARENA_SIZE_MASK) >= need) return arena; /* sentinels have size 0 */
    }
    return 0;
}

/* Turns [ptr, ptr + size) into a free block, merged with a free block that follows. */
static void create_free_block(SUBHEAP *sub, u8 *ptr, uptr size)
{
    ARENA_FREE *arena = (ARENA_FREE *)ptr;
    u8 *end = subheap_end(sub), *fill_end;
    int last;

    if (ptr + size < end && (((ARENA_INUSE *)(ptr + size))->size & ARENA_FLAG_FREE)) {
        ARENA_FREE *next = (ARENA_FREE *)(ptr + size);
        list_remove(&next->entry);
        size += next->size & ARENA_SIZE_MASK;
        next->size = 0;
        next->magic = 0;
    }
    arena->size = (u32)size | ARENA_FLAG_FREE;
    arena->unused = 0;
    arena->tag = 0;
    arena->magic = ARENA_FREE_MAGIC;

    if (sub->heap->flags & HEAP_FREE_CHECKING_ENABLED) {
        fill_end = ptr + size;
        if (fill_end > subheap_commit_end(sub)) fill_end = subheap_commit_end(sub);
        fill_pattern((u8 *)(arena + 1), fill_end, HEAP_FILL_FREE);
    }
    last = ptr + size >= end;
    if (!last) {
        ARENA_INUSE *next = (ARENA_INUSE *)(ptr + size);
        next->size |= ARENA_FLAG_PREV_FREE;
        ((ARENA_FREE **)next)[-1] = arena;
    }
    insert_free(sub->heap, arena, last);
}

/* Frees the subheap if it is not the first one and is now one free block. */
static void maybe_release_subheap(SUBHEAP *sub, ARENA_FREE *arena)
{
    HEAP *heap = sub->heap;
    if (sub == &heap->subheap || (u8 *)arena != subheap_first(sub)) return;
    if ((u8 *)arena + (arena->size & ARENA_SIZE_MASK) < subheap_end(sub)) return;
    list_remove(&arena->entry);
    list_remove(&sub->entry);
    sub->magic = 0;
    release_region(sub->base);
}

/* Marks an in-use block free and merges it with its free neighbours. */
static void make_free(SUBHEAP *sub, ARENA_INUSE *arena)
{
    u8 *ptr = (u8 *)arena;
    uptr size = arena->size & ARENA_SIZE_MASK;
    if (arena->size & ARENA_FLAG_PREV_FREE) {
        ARENA_FREE *prev = ((ARENA_FREE **)arena)[-1];
        list_remove(&prev->entry);
        size += prev->size & ARENA_SIZE_MASK;
        ptr = (u8 *)prev;
    }
    arena->size = 0;
    arena->magic = 0;
    create_free_block(sub, ptr, size);
    maybe_release_subheap(sub, (ARENA_FREE *)ptr);
}

/* Shrinks an in-use block to need bytes when the rest can be a free block. */
static void split_block(SUBHEAP *sub, ARENA_INUSE *arena, uptr need)
{
    uptr size = arena->size & ARENA_SIZE_MASK;
    if (size - need < MIN_BLOCK_SIZE) return;
    arena->size = (u32)need | (arena->size & ARENA_FLAG_PREV_FREE);
    create_free_block(sub, (u8 *)arena + need, size - need);
}

/* Takes a free block out of its list and marks it (and its successor) in use. */
static ARENA_INUSE *take_free_block(SUBHEAP *sub, ARENA_FREE *free_arena, uptr need)
{
    uptr size = free_arena->size & ARENA_SIZE_MASK;
    u8 *commit_to = (u8 *)free_arena + (size - need >= MIN_BLOCK_SIZE
                                            ? need + (uptr)sizeof(ARENA_FREE)
                                            : size);
    ARENA_INUSE *arena = (ARENA_INUSE *)free_arena;
    if (!subheap_commit(sub, commit_to)) return 0;
    list_remove(&free_arena->entry);
    arena->size = (u32)size;
    arena->unused = 0;
    arena->tag = 0;
    arena->magic = ARENA_INUSE_MAGIC;
    if ((u8 *)arena + size < subheap_end(sub))
        ((ARENA_INUSE *)((u8 *)arena + size))->size &= ~ARENA_FLAG_PREV_FREE;
    split_block(sub, arena, need);
    return arena;
}

static uptr block_size_for(uptr size)
{
    uptr need = align_up(size + sizeof(ARENA_INUSE), ALIGNMENT);
    return need < MIN_BLOCK_SIZE ? MIN_BLOCK_SIZE : need;
}

/* Reserves a region and commits its start; sizes are updated to what the kernel gave. */
static void *allocate_region(uptr *total, uptr *commit, u32 protect)
{
    void *base = 0, *commit_base;
    if ((i32)NtAllocateVirtualMemory(CURRENT_PROCESS, &base, 0, total, MEM_RESERVE, protect) < 0)
        return 0;
    commit_base = base;
    if ((i32)NtAllocateVirtualMemory(CURRENT_PROCESS, &commit_base, 0, commit, MEM_COMMIT,
                                     protect) < 0) {
        release_region(base);
        return 0;
    }
    if (*commit > *total) *commit = *total;
    return base;
}

static SUBHEAP *create_subheap(HEAP *heap, uptr need)
{
    uptr header = ARENA_HEADER_SIZE(sizeof(SUBHEAP));
    uptr min_size, total, commit;
    SUBHEAP *sub;
    if (need > HEAP_MAX_SUBHEAP_SIZE - header - ARENA_OFFSET - HEAP_REGION_ALIGN) return 0;
    min_size = header + need + ARENA_OFFSET;
    total = align_up(min_size, HEAP_REGION_ALIGN);
    if (total < heap->grow_size) total = heap->grow_size;
    commit = align_up(min_size + sizeof(ARENA_FREE), HEAP_REGION_ALIGN);
    if (commit > total) commit = total;
    sub = allocate_region(&total, &commit, heap_protect(heap));
    if (!sub) return 0;
    sub->base = sub;
    sub->size = total;
    sub->commit_size = commit;
    sub->heap = heap;
    sub->header_size = (u32)header;
    sub->magic = SUBHEAP_MAGIC;
    list_add_before(&heap->subheap_list, &sub->entry);
    create_free_block(sub, subheap_first(sub), (uptr)(subheap_end(sub) - subheap_first(sub)));
    if (heap->grow_size < HEAP_MAX_GROW_SIZE) heap->grow_size *= 2;
    return sub;
}

/* ------------------------------------------------------------------ blocks */

static void *arena_data(ARENA_INUSE *arena) { return arena + 1; }
static void *large_data(ARENA_LARGE *large) { return large + 1; }

/* Initialises [data + from, data + to) of a block that now holds `to` bytes, and its tail. */
static void init_data(HEAP *heap, u32 flags, u8 *data, uptr from, uptr to, u8 *block_end)
{
    if (to > from) {
        if (flags & HEAP_ZERO_MEMORY)
            fill_pattern(data + from, data + to, 0);
        else if (heap->flags & CHECKING_FLAGS)
            fill_pattern(data + from, data + to, HEAP_FILL_NEW);
    }
    if (heap->flags & HEAP_TAIL_CHECKING_ENABLED) fill_pattern(data + to, block_end, HEAP_FILL_TAIL);
}

static int is_arena_magic(const ARENA_INUSE *arena)
{
    return arena->magic == ARENA_INUSE_MAGIC || arena->magic == ARENA_FREE_MAGIC;
}

/* Checks that ptr is the data pointer of an in-use block of heap; never trusts the pointer
 * further than what the heap's own structures vouch for. */
static int lookup_block(HEAP *heap, const void *ptr, BLOCK_REF *ref)
{
    const u8 *p = ptr;
    SUBHEAP *sub;
    LIST *e;

    ref->sub = 0;
    ref->arena = 0;
    ref->large = 0;
    if (!ptr || ((uptr)p & (ALIGNMENT - 1))) return 0;

    sub = find_subheap(heap, p);
    if (sub) {
        u8 *end = subheap_end(sub), *commit_end = subheap_commit_end(sub);
        ARENA_INUSE *arena = (ARENA_INUSE *)(p - sizeof(ARENA_INUSE));
        uptr size;
        if (p < subheap_first(sub) + sizeof(ARENA_INUSE) || p >= commit_end) return 0;
        if (arena->magic != ARENA_INUSE_MAGIC || (arena->size & ARENA_FLAG_FREE)) return 0;
        size = arena->size & ARENA_SIZE_MASK;
        if (size < MIN_BLOCK_SIZE || (size & (ALIGNMENT - 1))) return 0;
        if (size > (uptr)(end - (u8 *)arena) || size > (uptr)(commit_end - (u8 *)arena)) return 0;
        if (arena->unused < sizeof(ARENA_INUSE) || arena->unused > size) return 0;
        if (arena->unused >= MAX_UNUSED || arena->tag) return 0;
        if ((u8 *)arena + size < end) {
            ARENA_INUSE *next = (ARENA_INUSE *)((u8 *)arena + size);
            if ((u8 *)(next + 1) > commit_end) return 0;
            if (!is_arena_magic(next) || (next->size & ARENA_FLAG_PREV_FREE)) return 0;
        }
        if (arena->size & ARENA_FLAG_PREV_FREE) {
            ARENA_FREE *prev = ((ARENA_FREE **)arena)[-1];
            if ((u8 *)prev < subheap_first(sub) || (u8 *)prev >= (u8 *)arena) return 0;
            if (((uptr)prev & (ALIGNMENT - 1)) != ARENA_OFFSET) return 0;
            if (prev->magic != ARENA_FREE_MAGIC || !(prev->size & ARENA_FLAG_FREE)) return 0;
            if ((u8 *)prev + (prev->size & ARENA_SIZE_MASK) != (u8 *)arena) return 0;
        }
        ref->sub = sub;
        ref->arena = arena;
        return 1;
    }
    for (e = heap->large_list.next; e != &heap->large_list; e = e->next) {
        ARENA_LARGE *large = CONTAINING(e, ARENA_LARGE, entry);
        if (large_data(large) == ptr) {
            if (large->arena.magic != ARENA_LARGE_MAGIC) return 0;
            ref->large = large;
            return 1;
        }
    }
    return 0;
}

/* Requested size of a block; *block_end receives the end of its memory. */
static uptr block_request(const BLOCK_REF *ref, u8 **block_end)
{
    if (ref->large) {
        *block_end = (u8 *)ref->large + ref->large->block_size;
        return ref->large->data_size;
    }
    *block_end = (u8 *)ref->arena + (ref->arena->size & ARENA_SIZE_MASK);
    return (ref->arena->size & ARENA_SIZE_MASK) - ref->arena->unused;
}

static void *alloc_large(HEAP *heap, u32 flags, uptr size)
{
    uptr total = size + sizeof(ARENA_LARGE);
    void *base = 0;
    ARENA_LARGE *large;
    if ((i32)NtAllocateVirtualMemory(CURRENT_PROCESS, &base, 0, &total, MEM_RESERVE | MEM_COMMIT,
                                     heap_protect(heap)) < 0)
        return 0;
    large = base;
    large->data_size = size;
    large->block_size = total;
    large->arena.size = 0;
    large->arena.unused = 0;
    large->arena.tag = 0;
    large->arena.magic = ARENA_LARGE_MAGIC;
    list_add_before(&heap->large_list, &large->entry);
    /* fresh pages are zero: HEAP_ZERO_MEMORY needs nothing more than the tail */
    init_data(heap, flags & ~HEAP_ZERO_MEMORY, large_data(large),
              (flags & HEAP_ZERO_MEMORY) ? size : 0, size, (u8 *)base + total);
    return large_data(large);
}

static void free_large(ARENA_LARGE *large)
{
    list_remove(&large->entry);
    large->arena.magic = 0;
    release_region(large);
}

static void *heap_alloc(HEAP *heap, u32 flags, uptr size)
{
    SUBHEAP *sub;
    ARENA_FREE *free_arena;
    ARENA_INUSE *arena;
    uptr need;

    if (size > MAX_REQUEST) return 0;
    if (size >= HEAP_MIN_LARGE_BLOCK_SIZE && (heap->flags & HEAP_GROWABLE))
        return alloc_large(heap, flags, size);
    if (size > HEAP_MAX_SUBHEAP_SIZE) return 0;
    need = block_size_for(size);
    free_arena = find_free(heap, need);
    if (!free_arena) {
        if (!(heap->flags & HEAP_GROWABLE) || !create_subheap(heap, need)) return 0;
        free_arena = find_free(heap, need);
        if (!free_arena) return 0;
    }
    sub = find_subheap(heap, free_arena);
    if (!sub) return 0;
    arena = take_free_block(sub, free_arena, need);
    if (!arena) return 0;
    arena->unused = (u8)((arena->size & ARENA_SIZE_MASK) - size);
    init_data(heap, flags, arena_data(arena), 0, size,
              (u8 *)arena + (arena->size & ARENA_SIZE_MASK));
    return arena_data(arena);
}

static void free_block(const BLOCK_REF *ref)
{
    if (ref->large)
        free_large(ref->large);
    else
        make_free(ref->sub, ref->arena);
}

/* Grows an in-use block in place into a free successor; returns 0 when impossible. */
static int grow_in_place(SUBHEAP *sub, ARENA_INUSE *arena, uptr need)
{
    uptr size = arena->size & ARENA_SIZE_MASK, total;
    u8 *end = subheap_end(sub);
    ARENA_FREE *next = (ARENA_FREE *)((u8 *)arena + size);
    u8 *commit_to;
    if ((u8 *)next >= end || !(next->size & ARENA_FLAG_FREE)) return 0;
    total = size + (next->size & ARENA_SIZE_MASK);
    if (total < need) return 0;
    commit_to = (u8 *)arena + (total - need >= MIN_BLOCK_SIZE ? need + (uptr)sizeof(ARENA_FREE)
                                                              : total);
    if (!subheap_commit(sub, commit_to)) return 0;
    list_remove(&next->entry);
    next->size = 0;
    next->magic = 0;
    arena->size = (u32)total | (arena->size & ARENA_FLAG_PREV_FREE);
    if ((u8 *)arena + total < end)
        ((ARENA_INUSE *)((u8 *)arena + total))->size &= ~ARENA_FLAG_PREV_FREE;
    split_block(sub, arena, need);
    return 1;
}

/* status receives STATUS_ACCESS_VIOLATION or STATUS_NO_MEMORY on failure. */
static void *heap_realloc(HEAP *heap, u32 flags, void *ptr, uptr size, u32 *status)
{
    BLOCK_REF ref;
    u8 *block_end;
    uptr old_size;
    void *new_ptr;

    if (!lookup_block(heap, ptr, &ref)) {
        *status = STATUS_ACCESS_VIOLATION;
        return 0;
    }
    *status = STATUS_NO_MEMORY;
    if (size > MAX_REQUEST) return 0;
    old_size = block_request(&ref, &block_end);

    if (ref.large) {
        if (size <= ref.large->block_size - sizeof(ARENA_LARGE)) {
            ref.large->data_size = size;
            init_data(heap, flags, ptr, old_size, size, block_end);
            return ptr;
        }
    } else if (!(size >= HEAP_MIN_LARGE_BLOCK_SIZE && (heap->flags & HEAP_GROWABLE)) &&
               size <= HEAP_MAX_SUBHEAP_SIZE) {
        uptr need = block_size_for(size);
        if (need <= (ref.arena->size & ARENA_SIZE_MASK) || grow_in_place(ref.sub, ref.arena, need)) {
            split_block(ref.sub, ref.arena, need);
            ref.arena->unused = (u8)((ref.arena->size & ARENA_SIZE_MASK) - size);
            init_data(heap, flags, ptr, old_size, size,
                      (u8 *)ref.arena + (ref.arena->size & ARENA_SIZE_MASK));
            return ptr;
        }
    }
    if (flags & HEAP_REALLOC_IN_PLACE_ONLY) return 0;
    new_ptr = heap_alloc(heap, flags, size);
    if (!new_ptr) return 0;
    copy_data(new_ptr, ptr, old_size < size ? old_size : size);
    free_block(&ref);
    return new_ptr;
}

/* ------------------------------------------------------------------ validation */

static int validate_subheap(HEAP *heap, SUBHEAP *sub, uptr *free_count)
{
    u8 *first = subheap_first(sub), *end = subheap_end(sub), *commit_end = subheap_commit_end(sub);
    u8 *p = first;
    int prev_free = 0;

    if (sub->magic != SUBHEAP_MAGIC || sub->heap != heap) return 0;
    if (sub->commit_size > sub->size || sub->header_size >= sub->size) return 0;
    if (((uptr)first & (ALIGNMENT - 1)) != ARENA_OFFSET) return 0;
    while (p < end) {
        ARENA_INUSE *arena = (ARENA_INUSE *)p;
        uptr size;
        if (p + sizeof(ARENA_FREE) > commit_end) return 0;
        size = arena->size & ARENA_SIZE_MASK;
        if (size < MIN_BLOCK_SIZE || (size & (ALIGNMENT - 1)) || size > (uptr)(end - p)) return 0;
        if (!(arena->size & ARENA_FLAG_PREV_FREE) != !prev_free) return 0;
        if (arena->size & ARENA_FLAG_FREE) {
            ARENA_FREE *free_arena = (ARENA_FREE *)p;
            if (arena->magic != ARENA_FREE_MAGIC || prev_free) return 0;
            if (p + size < end && ((ARENA_FREE **)(p + size))[-1] != free_arena) return 0;
            if (heap->flags & HEAP_FREE_CHECKING_ENABLED) {
                u8 *fill_end = p + size < end ? p + size - PTR_SIZE : p + size;
                if (fill_end > commit_end) fill_end = commit_end;
                if (!check_pattern((u8 *)(free_arena + 1), fill_end, HEAP_FILL_FREE)) return 0;
            }
            ++*free_count;
            prev_free = 1;
        } else {
            if (arena->magic != ARENA_INUSE_MAGIC || p + size > commit_end) return 0;
            if (arena->unused < sizeof(ARENA_INUSE) || arena->unused > size) return 0;
            if (arena->unused >= MAX_UNUSED || arena->tag) return 0;
            if ((heap->flags & HEAP_TAIL_CHECKING_ENABLED) &&
                !check_pattern(p + size - arena->unused + sizeof(ARENA_INUSE), p + size,
                               HEAP_FILL_TAIL))
                return 0;
            prev_free = 0;
        }
        p += size;
    }
    return p == end;
}

/* Every node of the free-list ring is checked before it is followed: a sentinel in order, or
 * a committed free arena of this heap in the right list. With next->prev == this at every
 * step, the walk cannot cycle away from the head, and count equality with the blocks found in
 * the subheaps means every free block is listed exactly once. */
static int validate_free_lists(HEAP *heap, uptr free_count)
{
    LIST *head = &heap->free_lists[0].entry, *e = head;
    uptr seen = 0;
    u32 bucket = 0;
    for (;;) {
        LIST *next = e->next;
        if (next == head) {
            if (next->prev != e) return 0;
            break;
        }
        if (seen > free_count) return 0;
        if (bucket + 1 < HEAP_NB_FREE_LISTS && next == &heap->free_lists[bucket + 1].entry) {
            bucket++;
        } else {
            ARENA_FREE *arena = CONTAINING(next, ARENA_FREE, entry);
            SUBHEAP *sub = find_subheap(heap, arena);
            if (!sub || (u8 *)arena < subheap_first(sub) ||
                (u8 *)(arena + 1) > subheap_commit_end(sub) ||
                ((uptr)arena & (ALIGNMENT - 1)) != ARENA_OFFSET)
                return 0;
            if (arena->magic != ARENA_FREE_MAGIC || !(arena->size & ARENA_FLAG_FREE)) return 0;
            if (bucket_of(arena->size & ARENA_SIZE_MASK) != bucket) return 0;
            seen++;
        }
        if (next->prev != e) return 0;
        e = next;
    }
    return bucket == HEAP_NB_FREE_LISTS - 1 && seen == free_count;
}

static int validate_large(HEAP *heap)
{
    LIST *e;
    if (heap->large_list.next->prev != &heap->large_list) return 0;
    for (e = heap->large_list.next; e != &heap->large_list; e = e->next) {
        ARENA_LARGE *large = CONTAINING(e, ARENA_LARGE, entry);
        if (e->next->prev != e || large->arena.magic != ARENA_LARGE_MAGIC) return 0;
        if (large->block_size < sizeof(ARENA_LARGE) ||
            large->data_size > large->block_size - sizeof(ARENA_LARGE))
            return 0;
        if ((heap->flags & HEAP_TAIL_CHECKING_ENABLED) &&
            !check_pattern((u8 *)large_data(large) + large->data_size,
                           (u8 *)large + large->block_size, HEAP_FILL_TAIL))
            return 0;
    }
    return 1;
}

static int validate_heap(HEAP *heap)
{
    uptr free_count = 0;
    LIST *e;
    if (heap->subheap_list.next != &heap->subheap.entry ||
        heap->subheap.entry.prev != &heap->subheap_list)
        return 0;
    for (e = heap->subheap_list.next; e != &heap->subheap_list; e = e->next) {
        if (e->next->prev != e) return 0;
        if (!validate_subheap(heap, CONTAINING(e, SUBHEAP, entry), &free_count)) return 0;
    }
    return validate_free_lists(heap, free_count) && validate_large(heap);
}

static int validate_block(HEAP *heap, const void *ptr)
{
    BLOCK_REF ref;
    u8 *block_end;
    uptr size;
    if (!lookup_block(heap, ptr, &ref)) return 0;
    size = block_request(&ref, &block_end);
    if (heap->flags & HEAP_TAIL_CHECKING_ENABLED)
        return check_pattern((const u8 *)ptr + size, block_end, HEAP_FILL_TAIL);
    return 1;
}

/* ------------------------------------------------------------------ heap handles, PEB */

static HEAP *get_heap(void *handle)
{
    HEAP *heap = handle;
    if (!heap || ((uptr)heap & (ALIGNMENT - 1))) return 0;
    if (heap->magic != HEAP_MAGIC || heap->subheap.magic != SUBHEAP_MAGIC) return 0;
    if (heap->subheap.heap != heap) return 0;
    return heap;
}

static void heap_lock(HEAP *heap, u32 flags)
{
    if (!(flags & HEAP_NO_SERIALIZE)) heap->lock_count++;
}

static void heap_unlock(HEAP *heap, u32 flags)
{
    if (!(flags & HEAP_NO_SERIALIZE)) heap->lock_count--;
}

static void peb_add_heap(HEAP *heap)
{
    u8 *peb = ntheap_get_peb();
    u32 *count;
    void **heaps;
    if (!peb) return;
    count = (u32 *)(peb + PEB_NUMBER_OF_HEAPS);
    heaps = *(void ***)(peb + PEB_PROCESS_HEAPS);
    if (heaps && *count < *(u32 *)(peb + PEB_MAXIMUM_NUMBER_OF_HEAPS)) heaps[(*count)++] = heap;
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
        for (j = i + 1; j < *count; j++) heaps[j - 1] = heaps[j];
        heaps[--*count] = 0;
        return;
    }
}

/* ------------------------------------------------------------------ walking */

static u32 subheap_index(HEAP *heap, SUBHEAP *target)
{
    u32 idx = 0;
    LIST *e;
    for (e = heap->subheap_list.next; e != &heap->subheap_list; e = e->next, idx++)
        if (e == &target->entry) break;
    return idx;
}

static void walk_clear(RTL_HEAP_WALK_ENTRY *entry)
{
    entry->DataSize = 0;
    entry->OverheadBytes = 0;
    entry->SegmentIndex = 0;
    entry->Flags = 0;
    entry->Segment.CommittedSize = 0;
    entry->Segment.UnCommittedSize = 0;
    entry->Segment.FirstEntry = 0;
    entry->Segment.LastEntry = 0;
}

static u32 walk_region(HEAP *heap, SUBHEAP *sub, RTL_HEAP_WALK_ENTRY *entry)
{
    walk_clear(entry);
    entry->DataAddress = sub->base;
    entry->DataSize = (uptr)sub->size;
    entry->SegmentIndex = (u8)subheap_index(heap, sub);
    entry->Flags = RTL_HEAP_ENTRY_REGION;
    entry->Segment.CommittedSize = (u32)sub->commit_size;
    entry->Segment.UnCommittedSize = (u32)(sub->size - sub->commit_size);
    entry->Segment.FirstEntry = subheap_first(sub);
    entry->Segment.LastEntry = (u8 *)sub->base + sub->size;
    return STATUS_SUCCESS;
}

static u32 walk_large(ARENA_LARGE *large, RTL_HEAP_WALK_ENTRY *entry)
{
    walk_clear(entry);
    entry->DataAddress = large_data(large);
    entry->DataSize = (uptr)large->data_size;
    entry->OverheadBytes = (u8)sizeof(ARENA_LARGE);
    entry->Flags = RTL_HEAP_ENTRY_BUSY | RTL_HEAP_ENTRY_BLOCK | RTL_HEAP_ENTRY_COMMITTED;
    return STATUS_SUCCESS;
}

/* After the subheap's blocks (and its uncommitted range): the next region, else the large
 * blocks, else the end. */
static u32 walk_after_subheap(HEAP *heap, SUBHEAP *sub, RTL_HEAP_WALK_ENTRY *entry)
{
    if (sub->entry.next != &heap->subheap_list)
        return walk_region(heap, CONTAINING(sub->entry.next, SUBHEAP, entry), entry);
    if (heap->large_list.next != &heap->large_list)
        return walk_large(CONTAINING(heap->large_list.next, ARENA_LARGE, entry), entry);
    return STATUS_NO_MORE_ENTRIES;
}

/* Reports the block at p in sub, or what follows the last block. */
static u32 walk_block(HEAP *heap, SUBHEAP *sub, u8 *p, RTL_HEAP_WALK_ENTRY *entry)
{
    ARENA_INUSE *arena = (ARENA_INUSE *)p;
    u8 *commit_end = subheap_commit_end(sub), *block_end;
    if (p >= subheap_end(sub)) {
        if (sub->commit_size < sub->size) {
            walk_clear(entry);
            entry->DataAddress = commit_end;
            entry->DataSize = (uptr)(sub->size - sub->commit_size);
            entry->SegmentIndex = (u8)subheap_index(heap, sub);
            entry->Flags = RTL_HEAP_ENTRY_UNCOMMITTED;
            return STATUS_SUCCESS;
        }
        return walk_after_subheap(heap, sub, entry);
    }
    if (p + sizeof(ARENA_INUSE) > commit_end) return STATUS_INVALID_PARAMETER;
    walk_clear(entry);
    entry->DataAddress = arena_data(arena);
    entry->SegmentIndex = (u8)subheap_index(heap, sub);
    block_end = p + (arena->size & ARENA_SIZE_MASK);
    if (arena->size & ARENA_FLAG_FREE) {
        if (block_end > commit_end) block_end = commit_end;
        entry->DataSize = (uptr)(block_end - p - sizeof(ARENA_INUSE));
        entry->OverheadBytes = (u8)sizeof(ARENA_INUSE);
    } else {
        entry->DataSize = (uptr)((arena->size & ARENA_SIZE_MASK) - arena->unused);
        entry->OverheadBytes = arena->unused;
        entry->Flags = RTL_HEAP_ENTRY_BUSY | RTL_HEAP_ENTRY_BLOCK | RTL_HEAP_ENTRY_COMMITTED;
    }
    return STATUS_SUCCESS;
}

static u32 heap_walk(HEAP *heap, RTL_HEAP_WALK_ENTRY *entry)
{
    const u8 *data = entry->DataAddress;
    SUBHEAP *sub;
    LIST *e;

    if (!data) return walk_region(heap, &heap->subheap, entry);
    if (entry->Flags & RTL_HEAP_ENTRY_REGION) {
        sub = find_subheap(heap, data);
        if (!sub || sub->base != data) return STATUS_INVALID_PARAMETER;
        return walk_block(heap, sub, subheap_first(sub), entry);
    }
    if (entry->Flags & RTL_HEAP_ENTRY_UNCOMMITTED) {
        sub = find_subheap(heap, data);
        if (!sub || data != subheap_commit_end(sub)) return STATUS_INVALID_PARAMETER;
        return walk_after_subheap(heap, sub, entry);
    }
    sub = find_subheap(heap, data);
    if (sub) {
        ARENA_INUSE *arena = (ARENA_INUSE *)(data - sizeof(ARENA_INUSE));
        uptr size = arena->size & ARENA_SIZE_MASK;
        if (((uptr)data & (ALIGNMENT - 1)) || data < subheap_first(sub) + sizeof(ARENA_INUSE) ||
            data >= subheap_commit_end(sub) || !is_arena_magic(arena) ||
            size < MIN_BLOCK_SIZE || size > (uptr)(subheap_end(sub) - (u8 *)arena))
            return STATUS_INVALID_PARAMETER;
        return walk_block(heap, sub, (u8 *)arena + size, entry);
    }
    for (e = heap->large_list.next; e != &heap->large_list; e = e->next) {
        ARENA_LARGE *large = CONTAINING(e, ARENA_LARGE, entry);
        if (large_data(large) != data) continue;
        if (e->next == &heap->large_list) return STATUS_NO_MORE_ENTRIES;
        return walk_large(CONTAINING(e->next, ARENA_LARGE, entry), entry);
    }
    return STATUS_INVALID_PARAMETER;
}

/* ------------------------------------------------------------------ exports */

void *NTAPI RtlCreateHeap(u32 flags, void *base, uptr reserve, uptr commit, void *lock,
                          void *params)
{
    uptr header = ARENA_HEADER_SIZE(sizeof(HEAP));
    uptr min_commit = align_up(header + sizeof(ARENA_FREE) + ARENA_OFFSET, HEAP_PAGE_SIZE);
    u32 internal = 0, i;
    HEAP *heap;
    u8 *p;

    (void)lock;
    (void)params;
    if (base) {
        /* caller's memory: [base, base + reserve) is reserved (or committed) by the caller */
        void *commit_base = base;
        uptr commit_size;
        if (!reserve) reserve = commit;
        if ((uptr)base & (ALIGNMENT - 1)) return 0;
        reserve &= ~(uptr)(HEAP_PAGE_SIZE - 1);
        if (reserve > HEAP_MAX_SUBHEAP_SIZE || reserve < min_commit) return 0;
        if (commit > reserve) commit = reserve;
        if (commit < min_commit) commit = min_commit;
        commit = align_up(commit, HEAP_PAGE_SIZE);
        commit_size = commit;
        if ((i32)NtAllocateVirtualMemory(CURRENT_PROCESS, &commit_base, 0, &commit_size,
                                         MEM_COMMIT, (flags & HEAP_CREATE_ENABLE_EXECUTE)
                                                         ? PAGE_EXECUTE_READWRITE
                                                         : PAGE_READWRITE) < 0)
            commit = reserve; /* not ours to commit: assume the caller committed all of it */
        internal |= HEAP_INTERNAL_USER_BASE;
    } else {
        if (!reserve) {
            reserve = HEAP_DEF_SIZE;
            flags |= HEAP_GROWABLE;
        }
        if (commit > HEAP_MAX_SUBHEAP_SIZE || reserve > HEAP_MAX_SUBHEAP_SIZE) return 0;
        reserve = align_up(reserve, HEAP_PAGE_SIZE);
        if (commit > reserve) reserve = align_up(commit, HEAP_PAGE_SIZE);
        if (!commit) commit = reserve < HEAP_REGION_ALIGN ? reserve : HEAP_REGION_ALIGN;
        commit = align_up(commit, HEAP_PAGE_SIZE);
        if (commit < min_commit) commit = min_commit;
        if (reserve < commit) reserve = commit;
        base = allocate_region(&reserve, &commit,
                               (flags & HEAP_CREATE_ENABLE_EXECUTE) ? PAGE_EXECUTE_READWRITE
                                                                     : PAGE_READWRITE);
        if (!base) return 0;
        if (reserve > HEAP_MAX_SUBHEAP_SIZE) reserve = HEAP_MAX_SUBHEAP_SIZE;
    }

    heap = base;
    for (p = (u8 *)heap; p < (u8 *)(heap + 1); p++) *p = 0;
    *(u32 *)(heap->reserved + 2 * PTR_SIZE) = HEAP_SEGMENT_SIGNATURE;
    heap->flags = flags;
    heap->force_flags = flags & FORCE_FLAG_MASK;
    heap->magic = HEAP_MAGIC;
    heap->internal_flags = internal;
    heap->grow_size = reserve > HEAP_DEF_SIZE ? reserve : HEAP_DEF_SIZE;
    list_init(&heap->subheap_list);
    list_init(&heap->large_list);

    heap->subheap.base = base;
    heap->subheap.size = reserve;
    heap->subheap.commit_size = commit;
    heap->subheap.heap = heap;
    heap->subheap.header_size = (u32)header;
    heap->subheap.magic = SUBHEAP_MAGIC;
    list_add_after(&heap->subheap_list, &heap->subheap.entry);

    list_init(&heap->free_lists[0].entry);
    for (i = 0; i < HEAP_NB_FREE_LISTS; i++) {
        heap->free_lists[i].size = ARENA_FLAG_FREE;
        heap->free_lists[i].magic = ARENA_FREE_MAGIC;
        if (i) list_add_after(&heap->free_lists[i - 1].entry, &heap->free_lists[i].entry);
    }
    create_free_block(&heap->subheap, subheap_first(&heap->subheap),
                      (uptr)(subheap_end(&heap->subheap) - subheap_first(&heap->subheap)));
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
    while (heap->large_list.next != &heap->large_list)
        free_large(CONTAINING(heap->large_list.next, ARENA_LARGE, entry));
    while (heap->subheap_list.prev != &heap->subheap.entry) {
        SUBHEAP *sub = CONTAINING(heap->subheap_list.prev, SUBHEAP, entry);
        list_remove(&sub->entry);
        sub->magic = 0;
        release_region(sub->base);
    }
    heap->magic = 0;
    heap->subheap.magic = 0;
    if (!(heap->internal_flags & HEAP_INTERNAL_USER_BASE)) release_region(heap->subheap.base);
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
    flags |= heap->force_flags;
    heap_lock(heap, flags);
    ret = heap_alloc(heap, flags, size);
    heap_unlock(heap, flags);
    if (!ret && (flags & HEAP_GENERATE_EXCEPTIONS)) raise_status(STATUS_NO_MEMORY);
    return userinfo_allocated(handle, flags, ret);
}

u32 NTAPI RtlFreeHeap(void *handle, u32 flags, void *ptr)
{
    HEAP *heap;
    BLOCK_REF ref;
    int ok;
    if (!ptr) return 1;
    heap = get_heap(handle);
    if (!heap) {
        if (flags & HEAP_GENERATE_EXCEPTIONS) raise_status(STATUS_INVALID_PARAMETER);
        return 0;
    }
    flags |= heap->force_flags;
    heap_lock(heap, flags);
    ok = lookup_block(heap, ptr, &ref);
    if (ok) {
        userinfo_remove(handle, ptr);
        free_block(&ref);
    }
    heap_unlock(heap, flags);
    if (!ok && (flags & HEAP_GENERATE_EXCEPTIONS)) raise_status(STATUS_ACCESS_VIOLATION);
    return ok ? 1 : 0;
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
    flags |= heap->force_flags;
    heap_lock(heap, flags);
    ret = heap_realloc(heap, flags, ptr, size, &status);
    heap_unlock(heap, flags);
    if (!ret && (flags & HEAP_GENERATE_EXCEPTIONS)) raise_status(status);
    userinfo_reallocated(handle, flags, ptr, ret);
    return ret;
}

uptr NTAPI RtlSizeHeap(void *handle, u32 flags, const void *ptr)
{
    HEAP *heap = get_heap(handle);
    BLOCK_REF ref;
    u8 *block_end;
    uptr ret = (uptr)-1;
    if (!heap) {
        if (flags & HEAP_GENERATE_EXCEPTIONS) raise_status(STATUS_INVALID_PARAMETER);
        return ret;
    }
    flags |= heap->force_flags;
    heap_lock(heap, flags);
    if (lookup_block(heap, ptr, &ref)) ret = block_request(&ref, &block_end);
    heap_unlock(heap, flags);
    if (ret == (uptr)-1 && (flags & HEAP_GENERATE_EXCEPTIONS))
        raise_status(STATUS_ACCESS_VIOLATION);
    return ret;
}

u32 NTAPI RtlValidateHeap(void *handle, u32 flags, const void *ptr)
{
    HEAP *heap = get_heap(handle);
    int ok;
    if (!heap) return 0;
    flags |= heap->force_flags;
    heap_lock(heap, flags);
    ok = ptr ? validate_block(heap, ptr) : validate_heap(heap);
    heap_unlock(heap, flags);
    return ok ? 1 : 0;
}

u32 NTAPI RtlWalkHeap(void *handle, RTL_HEAP_WALK_ENTRY *entry)
{
    HEAP *heap = get_heap(handle);
    u32 status;
    if (!heap || !entry) return STATUS_INVALID_PARAMETER;
    heap_lock(heap, heap->force_flags);
    status = heap_walk(heap, entry);
    heap_unlock(heap, heap->force_flags);
    return status;
}

u32 NTAPI RtlLockHeap(void *handle)
{
    HEAP *heap = get_heap(handle);
    if (!heap) return 0;
    heap->lock_count++;
    return 1;
}

u32 NTAPI RtlUnlockHeap(void *handle)
{
    HEAP *heap = get_heap(handle);
    if (!heap || !heap->lock_count) return 0;
    heap->lock_count--;
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
    *(u32 *)info = 0;
    return STATUS_SUCCESS;
}

u32 NTAPI RtlSetHeapInformation(void *handle, u32 info_class, void *info, uptr length)
{
    if (info_class == HeapEnableTerminationOnCorruption) return STATUS_SUCCESS;
    if (info_class != HeapCompatibilityInformation) return STATUS_INVALID_INFO_CLASS;
    if (!get_heap(handle)) return STATUS_INVALID_PARAMETER;
    if (length < sizeof(u32) || !info) return STATUS_BUFFER_TOO_SMALL;
    return *(u32 *)info == 0 ? STATUS_SUCCESS : STATUS_UNSUCCESSFUL;
}
