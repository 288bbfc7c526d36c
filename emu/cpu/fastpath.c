/* heapemu's native fast paths for two Unicorn callbacks that run far more often than Python
 * should be entered (emu/cpu/native.py builds this file with the host's C compiler and falls
 * back to the Python callbacks when it cannot):
 *
 *  - heapemu_tlb_fill: a UC_HOOK_TLB_FILL callback answering TLB misses on pages whose
 *    permissions Python already decided (a cache Python fills and invalidates); any other miss
 *    goes to the Python callback. It also notes which pages it filled since the last flush,
 *    so that heapemu_tlb_flush_range flushes only those of a range (QEMU's own one-page
 *    flush, which Unicorn exports but its API does not offer), not the whole TLB.
 *  - heapemu_block: a UC_HOOK_BLOCK callback that counts blocks and instructions (instructions
 *    per block from a table Python fills on a block's first run) and, at the addresses it was
 *    asked to watch (allocator entry points and the return addresses they leave), appends the
 *    registers and stack Python wants to a log Python reads when it is full or the run ends:
 *    Python runs once per batch of calls, not twice per call.
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
/* put the keys in [start, end) that are multiples of step, all with value v: nonzero when
   out of memory */
int heapemu_map_put_range(map_t *m, uint64_t start, uint64_t end, uint64_t step, int64_t v) {
    for (uint64_t k = start; k < end; k += step)
        if (map_put(m, k, v))
            return 1;
    return 0;
}
uint64_t heapemu_map_len(const map_t *m) { return m->used; }

/* ---------------------------------------------------------------- TLB fill */
typedef bool (*fill_fn)(void *uc, uint64_t addr, int type, tlb_entry *e, void *user);
/* uc_ctl, passed in by address (variadic, as Unicorn declares it) */
typedef int (*ctl_fn)(void *uc, int control, ...);
/* QEMU's tlb_flush_page(CPUState *, target_ulong) as Unicorn 2 exports it for x86
 * (tlb_flush_page_x86_64): one page's translations go, in every MMU mode and the victim TLB,
 * with the jump cache's entries for it */
typedef void (*flush_page_fn)(void *cpu, uint64_t addr);

/* Pages filled since the last flush are remembered up to this many; past it, any page may
 * be in the TLB (the set stays small: the map never grows past 2 * FILLED_MAX slots). */
#define FILLED_MAX 512
/* QEMU sizes its TLB (direct-mapped, 256 entries to start with) only when it flushes it
 * whole, by how full it was: with page flushes only, a TLB too small for the working set
 * would stay so and keep evicting. More refills than this since the last whole flush (pages
 * evicted and filled again) make the next range flush a whole one, so QEMU can grow it. */
#define REFILLS_MAX 256

typedef struct {
    map_t *perms; /* page -> Unicorn permissions Python decided */
    fill_fn slow; /* the Python callback, for every other miss */
    uint64_t fills; /* TLB misses seen (a counter for benchmarks) */
    uint64_t slow_fills; /* ... of which Python answered */
    /* Every translation in Unicorn's TLB was installed by a fill (UC_TLB_VIRTUAL: Unicorn's
     * unicorn_fill_tlb installs exactly the page the hook answered, one page): the pages
     * filled since the last flush are a superset of the pages the TLB holds, and a range
     * needs only those of them flushed. */
    map_t *filled; /* page -> 1, since the last full flush */
    uint64_t overflow; /* more than FILLED_MAX pages were filled: assume every page was */
    uint64_t refills; /* fills of pages filled before, since the last full flush */
    ctl_fn ctl; /* uc_ctl */
    int64_t flush_control; /* uc_ctl's code for UC_CTL_TLB_FLUSH (a write) */
    flush_page_fn flush_page; /* NULL: a range flushes the whole TLB */
    void *cpu; /* the engine's CPUState, for flush_page */
    uint64_t flushes; /* whole-TLB flushes (counters for benchmarks and tests) */
    uint64_t page_flushes; /* pages flushed one by one */
    uint64_t ranges_skipped; /* ranges that had no page in the TLB */
} tlb_state;

enum { UC_MEM_READ = 16, UC_MEM_WRITE, UC_MEM_FETCH };

/* the TLB is about to hold page */
static void note_filled(tlb_state *s, uint64_t page) {
    if (s->overflow)
        return;
    if (map_find(s->filled, page))
        s->refills++; /* not flushed since, yet missed: the TLB evicted it */
    else if (s->filled->used >= FILLED_MAX || map_put(s->filled, page, 1))
        s->overflow = 1;
}

bool heapemu_tlb_fill(void *uc, uint64_t addr, int type, tlb_entry *e, void *user) {
    tlb_state *s = user;
    uint64_t page = addr & ~(uint64_t)0xfff;
    uint32_t need = type == UC_MEM_WRITE ? 2 : type == UC_MEM_FETCH ? 4 : 1;
    int64_t *p = map_find(s->perms, page);
    s->fills++;
    if (p && (*p & need)) {
        note_filled(s, page);
        e->paddr = page;
        e->perms = (uint32_t)*p;
        return true;
    }
    s->slow_fills++;
    bool ok = s->slow(uc, addr, type, e, NULL);
    /* noted after: Python may have flushed this very page (a guard page, a first write to
     * a watched page) before Unicorn installs the translation */
    note_filled(s, page);
    return ok;
}

/* Forget every translation. */
void heapemu_tlb_flush(tlb_state *s, void *uc) {
    s->ctl(uc, (int)s->flush_control);
    if (s->filled->used || s->filled->tombs)
        map_clear(s->filled);
    s->overflow = s->refills = 0;
    s->flushes++;
}

static int flush_one(tlb_state *s, uint64_t page) {
    if (!s->flush_page)
        return 1; /* no page flush: the caller flushes everything */
    s->flush_page(s->cpu, page);
    map_del(s->filled, page);
    s->page_flushes++;
    return 0;
}

/* Forget the translations of [start, end): those of its pages filled since the last flush,
 * one by one (the whole TLB when the filled pages were not all remembered, or without
 * flush_page). 0 when the TLB held none of them, 1 when pages were flushed, 2 when the whole
 * TLB was. */
int heapemu_tlb_flush_range(tlb_state *s, void *uc, uint64_t start, uint64_t end) {
    map_t *m = s->filled;
    int held = 0, whole = s->overflow || s->refills > REFILLS_MAX;
    start &= ~(uint64_t)0xfff;
    if (!whole && m->used) {
        if ((end - start) >> 12 <= m->mask + 1) {
            for (uint64_t page = start; page < end && !whole; page += 0x1000)
                if (map_find(m, page)) {
                    held = 1;
                    whole = flush_one(s, page);
                }
        } else {
            for (uint64_t i = 0; i <= m->mask && !whole; i++)
                if (m->keys[i] < TOMB && m->keys[i] >= start && m->keys[i] < end) {
                    held = 1;
                    whole = flush_one(s, m->keys[i]);
                }
        }
    }
    if (whole) {
        heapemu_tlb_flush(s, uc);
        return 2;
    }
    if (!held)
        s->ranges_skipped++;
    return held;
}

/* Python's answers for the pages of [start, end) no longer hold: forget them, and flush
 * their translations (heapemu_tlb_flush_range, whose answer this is). One call for what
 * a decommit or a protection change needs. */
int heapemu_tlb_forget_range(tlb_state *s, void *uc, uint64_t start, uint64_t end) {
    heapemu_map_del_range(s->perms, start & ~(uint64_t)0xfff, end, 0x1000);
    return heapemu_tlb_flush_range(s, uc, start, end);
}

/* ---------------------------------------------------------------- block counting */
typedef void (*special_fn)(void *uc, uint64_t addr, uint32_t size, void *user);
typedef int64_t (*count_fn)(void *uc, uint64_t addr, uint32_t size, void *user);
/* Unicorn's uc_reg_read_batch and uc_mem_read, passed in by address */
typedef int (*reg_read_batch_fn)(void *uc, const int *regs, void *const *vals, int count);
typedef int (*mem_read_fn)(void *uc, uint64_t addr, void *bytes, uint64_t size);

#define MAX_REGS 32
#define MAX_FRAME 256
/* the values of the special map: an entry point (its return address becomes special when it
 * is reached) and a return address; an entry's value also says, for the comparison of its
 * return with its entry (below), the bytes the callee pops beyond the return address (bits
 * 8-23) and where the caller's frame window starts above the entry stack pointer (bits 24-39,
 * 0: none compared) */
#define SPECIAL_ENTRY 1
#define SPECIAL_RETURN 2
#define SPECIAL_POPS(v) (((uint64_t)(v) >> 8) & 0xffff)
#define SPECIAL_WINDOW(v) (((uint64_t)(v) >> 24) & 0xffff)
#define MAX_OPEN 64
/* frame_ok's bits in a record's head: the stack was readable; the record is a return the hook
 * paired with its entry's record in the log and found as the entry left it (KEPT) */
#define RECORD_FRAME_OK 1
#define RECORD_KEPT 2

typedef struct {
    map_t *counts; /* block address -> instructions in it */
    map_t *special; /* addresses whose blocks are logged (SPECIAL_* bits) */
    special_fn on_full; /* Python reads the log and empties it */
    count_fn count; /* a block seen first: Python disassembles it (and fills counts) */
    uint64_t instructions;
    uint64_t blocks;
    /* what a record holds besides its head: these registers (16-byte slots) and frame_size
     * bytes of the stack from the stack pointer (the sp_index-th register) up */
    reg_read_batch_fn reg_read_batch;
    mem_read_fn mem_read;
    int32_t nregs;
    int32_t sp_index;
    uint64_t frame_size;
    int32_t ptr_size; /* how the return address at [sp] of an entry is read (4 or 8) */
    int32_t pad;
    int32_t regs[MAX_REGS];
    void *ptrs[MAX_REGS];
    /* the log: a record per special block, record_size bytes each: u64 address,
     * instructions and blocks run before it, frame_ok (0: the stack was unreadable), then the
     * registers and the frame. Python is called when no other record fits (log_size ==
     * record_size: at every record) */
    uint8_t *log;
    uint64_t log_used;
    uint64_t log_size;
    uint64_t record_size;
    /* the comparison of returns with their entries (compare_size 0: none). The calls open in
     * this log, innermost last (depth: Python sets it to 0 whenever it empties the log): the
     * return address, the entry's stack pointer, the bytes its return pops beyond the return
     * address, the entry's record offset and frame window offset. A return to the innermost one's return address (and not also the
     * next one's), with the stack popped past its entry, is compared with the entry's record:
     * the bytes of the register slots from compare_from (compare_size bytes) equal, the
     * flags register's slot (flags_at) without flags_mask's bits, the stack pointer as
     * promised and the window_size bytes of the caller's frame unchanged (the frame seen from
     * the return's stack pointer: ptr_size lower). Anything else empties the stack: Python
     * pairs the rest. */
    int32_t compare_from;
    int32_t compare_size;
    int32_t flags_at;
    int32_t window_size;
    uint64_t flags_mask;
    int32_t depth;
    int32_t pad2;
    uint64_t open_ret[MAX_OPEN];
    uint64_t open_sp[MAX_OPEN];
    uint64_t open_pops[MAX_OPEN];
    uint64_t open_at[MAX_OPEN];
    uint64_t open_window[MAX_OPEN];
} block_state;

static int capture(block_state *s, void *uc, uint8_t *values, uint8_t *frame) {
    int n = s->nregs < MAX_REGS ? s->nregs : MAX_REGS;
    memset(values, 0, 16 * (size_t)n); /* narrow registers fill only their low bytes */
    for (int i = 0; i < n; i++)
        s->ptrs[i] = values + 16 * i;
    if (n <= 0 || s->reg_read_batch(uc, s->regs, s->ptrs, n))
        return 0;
    uint64_t sp;
    memcpy(&sp, values + 16 * s->sp_index, sizeof sp);
    uint64_t size = s->frame_size < MAX_FRAME ? s->frame_size : MAX_FRAME;
    return size && !s->mem_read(uc, sp, frame, size);
}

/* a return (its registers at values, stack pointer sp) to the innermost open call: KEPT when
 * it left what the entry's record holds as it found it */
static uint64_t compare_return(block_state *s, const uint8_t *values, uint64_t frame_ok,
                               uint64_t sp, int top) {
    const uint8_t *entry_values = s->log + s->open_at[top] + 32;
    uint64_t flags = 0;
    if (sp != s->open_sp[top] + (uint64_t)s->ptr_size + s->open_pops[top])
        return 0;
    memcpy(&flags, values + s->flags_at, sizeof flags);
    if (flags & s->flags_mask)
        return 0;
    if (memcmp(values + s->compare_from, entry_values + s->compare_from,
               (size_t)s->compare_size))
        return 0;
    uint64_t window = s->open_window[top];
    if (s->window_size) { /* (a window the frame does not hold is 0: no verdict) */
        const uint8_t *frame = values + 16 * (size_t)s->nregs;
        const uint8_t *entry_frame = entry_values + 16 * (size_t)s->nregs;
        uint64_t size = s->frame_size < MAX_FRAME ? s->frame_size : MAX_FRAME;
        if (!frame_ok || window < (uint64_t)s->ptr_size || window + s->window_size > size)
            return 0;
        if (memcmp(frame + window - s->ptr_size, entry_frame + window, (size_t)s->window_size))
            return 0;
    }
    return RECORD_KEPT;
}

static void log_special(block_state *s, void *uc, uint64_t addr, uint32_t size, int64_t kind) {
    if (s->log_used + s->record_size > s->log_size) {
        s->depth = 0;
        return; /* Python could not empty the log: the run stops with its error */
    }
    uint64_t at = s->log_used;
    uint8_t *r = s->log + at;
    uint64_t head[4] = {addr, s->instructions, s->blocks, 0};
    uint8_t *values = r + sizeof head;
    uint8_t *frame = values + 16 * (size_t)s->nregs;
    head[3] = (uint64_t)capture(s, uc, values, frame);
    uint64_t sp = 0;
    memcpy(&sp, values + 16 * s->sp_index, sizeof sp);
    if (s->compare_size && (kind & SPECIAL_RETURN)) {
        int top = s->depth - 1;
        if (top >= 0 && s->open_ret[top] == addr && sp > s->open_sp[top] &&
            (top == 0 || s->open_ret[top - 1] != addr)) {
            head[3] |= compare_return(s, values, head[3], sp, top);
            s->depth = top;
        } else {
            s->depth = 0; /* not the innermost call returning alone: Python pairs them */
        }
    }
    memcpy(r, head, sizeof head);
    s->log_used += s->record_size;
    if ((kind & SPECIAL_ENTRY) && head[3] && s->ptr_size) {
        /* an entry's return address is where the call ends: its block is logged too */
        uint64_t ret = 0;
        memcpy(&ret, frame, (size_t)s->ptr_size);
        int64_t *p = map_find(s->special, ret);
        if (!p)
            map_put(s->special, ret, SPECIAL_RETURN);
        else
            *p |= SPECIAL_RETURN;
        if (s->compare_size) {
            if (s->depth < MAX_OPEN) {
                int d = s->depth++;
                s->open_ret[d] = ret;
                s->open_sp[d] = sp;
                s->open_pops[d] = SPECIAL_POPS(kind);
                s->open_at[d] = at;
                s->open_window[d] = SPECIAL_WINDOW(kind);
            } else {
                s->depth = 0;
            }
        }
    } else if (s->compare_size && (kind & SPECIAL_ENTRY)) {
        s->depth = 0; /* no return address read: Python pairs this call */
    }
    if (s->log_used + s->record_size > s->log_size)
        s->on_full(uc, addr, size, NULL);
}

void heapemu_block(void *uc, uint64_t addr, uint32_t size, void *user) {
    block_state *s = user;
    int64_t *special = s->special->used ? map_find(s->special, addr) : NULL;
    if (special)
        log_special(s, uc, addr, size, *special);
    int64_t *n = map_find(s->counts, addr);
    s->instructions += n && *n ? (uint64_t)*n : (uint64_t)s->count(uc, addr, size, NULL);
    s->blocks++;
}

/* ---------------------------------------------------------------- the end of a run */
/* A UC_HOOK_BLOCK on the address a run ends at, instead of uc_emu_start's `until`: Unicorn
 * 2.1.4 translates a fresh block at `until` on every run and keeps the old one until its
 * 1 GiB translation buffer is full (~250 bytes of host memory per run); a hook stops the run
 * before the first instruction there and its block is translated once. */
typedef int (*emu_stop_fn)(void *uc);

typedef struct {
    emu_stop_fn stop; /* uc_emu_stop, passed in by address */
    uint64_t until; /* where the run under way ends (hooks stay on other runs' ends) */
    uint64_t hits;
} stop_state;

void heapemu_stop(void *uc, uint64_t addr, uint32_t size, void *user) {
    (void)size;
    stop_state *s = user;
    if (addr == s->until) {
        s->hits++;
        s->stop(uc);
    }
}
