/*
 * replay.c - replays a heapemu tape (emu/replay_tape.py) on asm/src/ntheap.c compiled for the
 * host: the physical limit of the emulated builtin heap replaying the same operations.
 *
 * Usage: native_replay TAPE ROUNDS [RESULTS]
 *   Each round creates a growable heap, replays every record with the driver's semantics
 *   (emu/replay_driver.py: an ID -> block table, one pointer-sized result per record), and
 *   destroys the heap; only the replay loop is timed. Prints one line:
 *     ops N rounds R best_ns NS total_ns NS vm_calls V
 *   RESULTS (optional) receives the first round's results, pointer-sized, little-endian.
 *
 * System calls are native stand-ins without output (unlike tests/native/driver.c, which
 * prints every one): NtAllocateVirtualMemory reserves with mmap(PROT_NONE) on a 64 KiB
 * boundary and commits with mprotect; NtFreeVirtualMemory unmaps or decommits.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "ntheap.h"

#define PAGE 0x1000u
#define GRANULE 0x10000u
#define MAX_REGIONS 65536

typedef struct {
    u32 kind, flags, id, new_id;
    u64 size;
} record;

typedef char record_is_24_bytes[sizeof(record) == 24 ? 1 : -1];

enum { OP_ALLOC, OP_FREE, OP_REALLOC, OP_SIZE, OP_VALIDATE };

static struct {
    uptr base, size;
} regions[MAX_REGIONS];
static int nregions;
static unsigned long vm_calls;

static union {
    u8 bytes[0x400];
    void *align;
} peb;
static void *peb_heaps[64];

u8 *ntheap_get_peb(void) { return peb.bytes; }

static u32 reserve(uptr *base, uptr size)
{
    u8 *p;
    uptr start;
    if (nregions == MAX_REGIONS) return STATUS_NO_MEMORY;
    if (*base) {
        p = mmap((void *)*base, size, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
        if (p == MAP_FAILED || (uptr)p != *base) return STATUS_NO_MEMORY;
        start = *base;
    } else {
        /* over-map by a granule and trim, so the region is 64 KiB-aligned as on Windows */
        p = mmap(NULL, size + GRANULE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
        if (p == MAP_FAILED) return STATUS_NO_MEMORY;
        start = ((uptr)p + GRANULE - 1) & ~(uptr)(GRANULE - 1);
        if (start > (uptr)p) munmap(p, start - (uptr)p);
        if ((uptr)p + GRANULE > start) munmap((void *)(start + size), (uptr)p + GRANULE - start);
    }
    regions[nregions].base = start;
    regions[nregions++].size = size;
    *base = start;
    return STATUS_SUCCESS;
}

u32 NtAllocateVirtualMemory(uptr process, void **base_ptr, uptr zero_bits, uptr *size_ptr,
                            u32 type, u32 protect)
{
    uptr base = (uptr)*base_ptr, size = *size_ptr, end;
    (void)process;
    (void)zero_bits;
    (void)protect;
    vm_calls++;
    if (!size) return STATUS_INVALID_PARAMETER;
    if (type & MEM_RESERVE) {
        size = (size + PAGE - 1) & ~(uptr)(PAGE - 1);
        if (reserve(&base, size)) return STATUS_NO_MEMORY;
    } else {
        end = (base + size + PAGE - 1) & ~(uptr)(PAGE - 1);
        base &= ~(uptr)(PAGE - 1);
        size = end - base;
    }
    if ((type & MEM_COMMIT) && mprotect((void *)base, size, PROT_READ | PROT_WRITE))
        return STATUS_NO_MEMORY;
    *base_ptr = (void *)base;
    *size_ptr = size;
    return STATUS_SUCCESS;
}

u32 NtFreeVirtualMemory(uptr process, void **base_ptr, uptr *size_ptr, u32 type)
{
    uptr base = (uptr)*base_ptr, size = *size_ptr;
    (void)process;
    vm_calls++;
    if (type == MEM_RELEASE) {
        for (int i = 0; i < nregions; i++) {
            if (regions[i].base != base) continue;
            munmap((void *)base, regions[i].size);
            *size_ptr = regions[i].size;
            regions[i] = regions[--nregions];
            return STATUS_SUCCESS;
        }
        return STATUS_INVALID_PARAMETER;
    }
    if (type == MEM_DECOMMIT) {
        uptr end = (base + size + PAGE - 1) & ~(uptr)(PAGE - 1);
        base &= ~(uptr)(PAGE - 1);
        mprotect((void *)base, end - base, PROT_NONE);
        madvise((void *)base, end - base, MADV_DONTNEED);
        *base_ptr = (void *)base;
        *size_ptr = end - base;
        return STATUS_SUCCESS;
    }
    return STATUS_INVALID_PARAMETER;
}

u32 NtRaiseException(EXCEPTION_RECORD *record, void *context, u32 first_chance)
{
    (void)context;
    (void)first_chance;
    fprintf(stderr, "native_replay: exception 0x%x\n", record->ExceptionCode);
    exit(3);
}

static void *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    void *data;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    data = malloc(*len ? *len : 1);
    if (data && fread(data, 1, *len, f) != *len) {
        free(data);
        data = NULL;
    }
    fclose(f);
    return data;
}

static unsigned long long clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

static unsigned long long now_ns(void) { return clock_ns(CLOCK_MONOTONIC); }
/* CPU time, which a loaded machine disturbs far less than wall time */
static unsigned long long cpu_ns(void) { return clock_ns(CLOCK_THREAD_CPUTIME_ID); }

/* The driver's loop (emu/replay_driver.py), record by record. */
static void replay(void *heap, const record *tape, size_t n, void **table, uptr *results)
{
    for (size_t i = 0; i < n; i++) {
        const record *r = &tape[i];
        uptr v;
        switch (r->kind) {
        case OP_ALLOC:
            v = (uptr)RtlAllocateHeap(heap, r->flags, (uptr)r->size);
            table[r->id] = (void *)v;
            break;
        case OP_FREE:
            v = (u8)RtlFreeHeap(heap, r->flags, table[r->id]);
            table[r->id] = NULL;
            break;
        case OP_REALLOC:
            v = (uptr)RtlReAllocateHeap(heap, r->flags, table[r->id], (uptr)r->size);
            if (v) {
                table[r->id] = NULL;
                table[r->new_id] = (void *)v;
            }
            break;
        case OP_SIZE:
            v = RtlSizeHeap(heap, r->flags, table[r->id]);
            break;
        default:
            v = (u8)RtlValidateHeap(heap, r->flags, NULL);
            break;
        }
        results[i] = v;
    }
}

int main(int argc, char **argv)
{
    size_t len, n, slots = 1;
    record *tape;
    void **table;
    uptr *results;
    int rounds;
    unsigned long long best = ~0ull, total = 0, best_cpu = ~0ull;
    if (argc < 3) {
        fprintf(stderr, "usage: native_replay TAPE ROUNDS [RESULTS]\n");
        return 2;
    }
    tape = read_file(argv[1], &len);
    if (!tape || len % sizeof(record)) {
        fprintf(stderr, "native_replay: cannot read a tape from %s\n", argv[1]);
        return 2;
    }
    n = len / sizeof(record);
    rounds = atoi(argv[2]);
    for (size_t i = 0; i < n; i++) {
        if (tape[i].id >= slots) slots = (size_t)tape[i].id + 1;
        if (tape[i].kind == OP_REALLOC && tape[i].new_id >= slots) slots = tape[i].new_id + 1;
    }
    table = calloc(slots, sizeof *table);
    results = calloc(n ? n : 1, sizeof *results);
    *(u32 *)(peb.bytes + PEB_MAXIMUM_NUMBER_OF_HEAPS) = 64;
    {
        void **heaps = peb_heaps;
        memcpy(peb.bytes + PEB_PROCESS_HEAPS, &heaps, sizeof heaps);
    }
    {
        /* a process heap first, as the emulated process has */
        void *ph = RtlCreateHeap(HEAP_GROWABLE, NULL, 0, 0, NULL, NULL);
        memcpy(peb.bytes + PEB_PROCESS_HEAP, &ph, sizeof ph);
    }
    for (int round = 0; round < rounds; round++) {
        void *heap = RtlCreateHeap(HEAP_GROWABLE, NULL, 0, 0, NULL, NULL);
        unsigned long long t0, c0, dt, dc;
        memset(table, 0, slots * sizeof *table);
        t0 = now_ns();
        c0 = cpu_ns();
        replay(heap, tape, n, table, results);
        dc = cpu_ns() - c0;
        dt = now_ns() - t0;
        total += dt;
        if (dt < best) best = dt;
        if (dc < best_cpu) best_cpu = dc;
        if (round == 0 && argc > 3) {
            FILE *f = fopen(argv[3], "wb");
            if (!f || fwrite(results, sizeof *results, n, f) != n) {
                fprintf(stderr, "native_replay: cannot write %s\n", argv[3]);
                return 2;
            }
            fclose(f);
        }
        RtlDestroyHeap(heap);
    }
    printf("ops %zu rounds %d best_ns %llu total_ns %llu vm_calls %lu best_cpu_ns %llu\n", n,
           rounds, best, total, vm_calls, best_cpu);
    return 0;
}
