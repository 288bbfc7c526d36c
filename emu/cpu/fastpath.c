/* heapemu's native fast paths for two Unicorn callbacks that run far more often than Python
 * should be entered (emu/cpu/native.py builds this file with the host's C compiler and falls
 * back to the Python callbacks when it cannot):
 *
 *  - heapemu_tlb_fill: a UC_HOOK_TLB_FILL callback answering TLB misses on pages whose
 *    permissions Python already decided (a cache Python fills and invalidates); any other miss
 *    goes to the Python callback.
 *  - heapemu_block: a UC_HOOK_BLOCK callback that counts blocks and instructions (instructions
 *    per block from a table Python fills on a block's first run) and calls Python only at
 *    addresses it was asked to watch (allocator entry points, pending return addresses).
 *
 * No Unicorn headers: the two callback signatures and uc_tlb_entry are restated here. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t paddr;
    uint32_t perms;
} tlb_entry;

/* ---------------------------------------------------------------- open-addressing map */
#define EMPTY UINT64_MAX

typedef struct {
    uint64_t *keys;
    int64_t *vals;
    uint64_t mask; /* capacity - 1 (a power of two) */
    uint64_t used;
    uint64_t tombs;
} map_t;

static uint64_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return k;
}

#define TOMB (UINT64_MAX - 1) /* a deleted slot: lookups go on past it */

static int map_init(map_t *m, uint64_t cap) {
    m->keys = malloc(cap * sizeof *m->keys);
    m->vals = malloc(cap * sizeof *m->vals);
    if (!m->keys || !m->vals) {
        free(m->keys);
        free(m->vals);
        return -1;
    }
    memset(m->keys, 0xff, cap * sizeof *m->keys);
    m->mask = cap - 1;
    m->used = m->tombs = 0;
    return 0;
}

static int64_t *map_find(const map_t *m, uint64_t k) {
    for (uint64_t i = hash(k) & m->mask;; i = (i + 1) & m->mask) {
        uint64_t s = m->keys[i];
        if (s == k)
            return &m->vals[i];
        if (s == EMPTY)
            return NULL;
    }
}

static int map_put(map_t *m, uint64_t k, int64_t v);

static int map_grow(map_t *m) {
    map_t bigger;
    uint64_t cap = (m->mask + 1) * ((m->used + 1) * 4 > m->mask + 1 ? 2 : 1);
    if (map_init(&bigger, cap))
        return -1;
    for (uint64_t i = 0; i <= m->mask; i++)
        if (m->keys[i] < TOMB)
            map_put(&bigger, m->keys[i], m->vals[i]);
    free(m->keys);
    free(m->vals);
    *m = bigger;
    return 0;
}

static int map_put(map_t *m, uint64_t k, int64_t v) {
    int64_t *p = map_find(m, k);
    if (p) {
        *p = v;
        return 0;
    }
    if ((m->used + m->tombs + 1) * 2 > m->mask + 1 && map_grow(m))
        return -1;
    uint64_t i = hash(k) & m->mask;
    while (m->keys[i] < TOMB)
        i = (i + 1) & m->mask;
    if (m->keys[i] == TOMB)
        m->tombs--;
    m->keys[i] = k;
    m->vals[i] = v;
    m->used++;
    return 0;
}

static void map_del(map_t *m, uint64_t k) {
    int64_t *p = map_find(m, k);
    if (p) {
        m->keys[p - m->vals] = TOMB;
        m->used--;
        m->tombs++;
    }
}

static void map_clear(map_t *m) {
    memset(m->keys, 0xff, (m->mask + 1) * sizeof *m->keys);
    m->used = m->tombs = 0;
}

/* the map API Python uses (keys must be below TOMB: addresses are) */
void *heapemu_map_new(void) {
    map_t *m = malloc(sizeof *m);
    if (m && map_init(m, 64)) {
        free(m);
        return NULL;
    }
    return m;
}

void heapemu_map_free(map_t *m) {
    if (m) {
        free(m->keys);
        free(m->vals);
        free(m);
    }
}

int heapemu_map_put(map_t *m, uint64_t k, int64_t v) { return map_put(m, k, v); }
void heapemu_map_del(map_t *m, uint64_t k) { map_del(m, k); }
void heapemu_map_clear(map_t *m) { map_clear(m); }

/* delete the keys in [start, end) that are multiples of step: one C call for a range */
void heapemu_map_del_range(map_t *m, uint64_t start, uint64_t end, uint64_t step) {
    if ((end - start) / step <= m->mask + 1) {
        for (uint64_t k = start; k < end; k += step)
            map_del(m, k);
        return;
    }
    for (uint64_t i = 0; i <= m->mask; i++)
        if (m->keys[i] < TOMB && m->keys[i] >= start && m->keys[i] < end &&
            (m->keys[i] - start) % step == 0) {
            m->keys[i] = TOMB;
            m->used--;
            m->tombs++;
        }
}
uint64_t heapemu_map_len(const map_t *m) { return m->used; }

/* ---------------------------------------------------------------- TLB fill */
typedef bool (*fill_fn)(void *uc, uint64_t addr, int type, tlb_entry *e, void *user);

typedef struct {
    map_t *perms; /* page -> Unicorn permissions Python decided */
    fill_fn slow; /* the Python callback, for every other miss */
    uint64_t fills; /* TLB misses seen (a counter for benchmarks) */
    uint64_t slow_fills; /* ... of which Python answered */
} tlb_state;

enum { UC_MEM_READ = 16, UC_MEM_WRITE, UC_MEM_FETCH };

bool heapemu_tlb_fill(void *uc, uint64_t addr, int type, tlb_entry *e, void *user) {
    tlb_state *s = user;
    uint64_t page = addr & ~(uint64_t)0xfff;
    uint32_t need = type == UC_MEM_WRITE ? 2 : type == UC_MEM_FETCH ? 4 : 1;
    int64_t *p = map_find(s->perms, page);
    s->fills++;
    if (p && (*p & need)) {
        e->paddr = page;
        e->perms = (uint32_t)*p;
        return true;
    }
    s->slow_fills++;
    return s->slow(uc, addr, type, e, NULL);
}

/* ---------------------------------------------------------------- block counting */
typedef void (*special_fn)(void *uc, uint64_t addr, uint32_t size, void *user);
typedef int64_t (*count_fn)(void *uc, uint64_t addr, uint32_t size, void *user);
/* Unicorn's uc_reg_read_batch and uc_mem_read, passed in by address */
typedef int (*reg_read_batch_fn)(void *uc, const int *regs, void *const *vals, int count);
typedef int (*mem_read_fn)(void *uc, uint64_t addr, void *bytes, uint64_t size);

#define MAX_REGS 32
#define MAX_FRAME 256

typedef struct {
    map_t *counts; /* block address -> instructions in it */
    map_t *special; /* addresses Python handles (value unused) */
    special_fn on_special;
    count_fn count; /* a block seen first: Python disassembles it (and fills counts) */
    uint64_t instructions;
    uint64_t blocks;
    /* captured for on_special before it is called: registers (16-byte slots) and the stack
     * from the stack pointer up (frame_ok = 0 when unreadable), so Python needs no C call */
    reg_read_batch_fn reg_read_batch;
    mem_read_fn mem_read;
    int32_t nregs;
    int32_t sp_index;
    uint64_t frame_size;
    int32_t frame_ok;
    int32_t pad;
    int32_t regs[MAX_REGS];
    void *ptrs[MAX_REGS];
    uint8_t values[MAX_REGS * 16];
    uint8_t frame[MAX_FRAME];
} block_state;

static void capture(block_state *s, void *uc) {
    int n = s->nregs < MAX_REGS ? s->nregs : MAX_REGS;
    memset(s->values, 0, sizeof s->values); /* narrow registers fill only their low bytes */
    for (int i = 0; i < n; i++)
        s->ptrs[i] = s->values + 16 * i;
    s->frame_ok = 0;
    if (n <= 0 || s->reg_read_batch(uc, s->regs, s->ptrs, n))
        return;
    uint64_t sp;
    memcpy(&sp, s->values + 16 * s->sp_index, sizeof sp);
    uint64_t size = s->frame_size < MAX_FRAME ? s->frame_size : MAX_FRAME;
    s->frame_ok = size && !s->mem_read(uc, sp, s->frame, size);
}

void heapemu_block(void *uc, uint64_t addr, uint32_t size, void *user) {
    block_state *s = user;
    if (s->special->used && map_find(s->special, addr)) {
        capture(s, uc);
        s->on_special(uc, addr, size, NULL);
    }
    int64_t *n = map_find(s->counts, addr);
    s->instructions += n && *n ? (uint64_t)*n : (uint64_t)s->count(uc, addr, size, NULL);
    s->blocks++;
}
