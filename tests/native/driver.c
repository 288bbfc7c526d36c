/*
 * driver.c - runs heapemu's embedded NT heap (asm/src/ntheap.c) natively on the Linux host,
 * or, built with -DDRIVER_SEGHEAP, the segment heap (asm/src/segheap.c), or, built with
 * -DHEAPEMU_WIN7HEAP, the Windows 7 heap (asm/src/win7heap.c).
 *
 * Build (tests/native/nativeheap.py does this, cached by source hash):
 *   gcc -O1 -g -DNTHEAP_NATIVE -fno-strict-aliasing -I asm/src \
 *       tests/native/driver.c asm/src/ntheap.c -o ntheap_driver
 *   gcc -O1 -g -DNTHEAP_NATIVE -DDRIVER_SEGHEAP -fno-strict-aliasing -I asm/src \
 *       tests/native/driver.c asm/src/segheap.c -o segheap_driver
 *   gcc -O1 -g -DNTHEAP_NATIVE -DHEAPEMU_WIN7HEAP -fno-strict-aliasing -I asm/src \
 *       tests/native/driver.c asm/src/win7heap.c -o win7heap_driver
 *
 * Usage: ntheap_driver [-a ANSWERS] [-d DUMPDIR] [SCRIPT]      (SCRIPT "-" or absent: stdin)
 *
 * The heap's system calls are native stand-ins here:
 *   NtAllocateVirtualMemory  MEM_RESERVE maps PROT_NONE with MAP_FIXED_NOREPLACE, MEM_COMMIT
 *                            makes pages read-write, so touching uncommitted memory crashes.
 *                            A reservation without a base address takes the next line of the
 *                            ANSWERS file ("alloc BASE SIZE", one per reservation, in order: the
 *                            addresses the emulator's kernel returned), else the next free
 *                            64 KiB-aligned address from VMBASE (default 0x10000000) up.
 *   NtFreeVirtualMemory      MEM_RELEASE unmaps, MEM_DECOMMIT makes pages inaccessible.
 *   NtRaiseException         prints "exception CODE" and abandons the current operation.
 *   ntheap_get_peb           a fake PEB (one page) with NumberOfHeaps, MaximumNumberOfHeaps
 *                            (16), ProcessHeaps and ProcessHeap at the Windows offsets.
 *
 * Script: one operation per line, '#' starts a comment. Numbers are C literals (0x1f, 31);
 * NAME is an identifier a line defines; a value may be NAME, NAME+N or NAME-N.
 *   create H FLAGS RESERVE COMMIT [BASE]  H = RtlCreateHeap(FLAGS, BASE or NULL, ...)
 *   reserve R SIZE [COMMIT]               R = caller memory: reserve SIZE, commit COMMIT bytes
 *   alloc P H FLAGS SIZE                  P = RtlAllocateHeap(H, FLAGS, SIZE)
 *   realloc Q H FLAGS P SIZE              Q = RtlReAllocateHeap(H, FLAGS, P, SIZE)
 *   free H FLAGS P                        RtlFreeHeap
 *   size H FLAGS P                        RtlSizeHeap
 *   validate H FLAGS [P]                  RtlValidateHeap (whole heap without P)
 *   walk H                                RtlWalkHeap from the start to the end
 *   destroy H                             RtlDestroyHeap
 *   lock H | unlock H                     RtlLockHeap / RtlUnlockHeap
 *   heaps [COUNT]                         RtlGetProcessHeaps(COUNT (default 64), buffer)
 *   processheap H                         PEB.ProcessHeap = H
 *   maxheaps N                            PEB.MaximumNumberOfHeaps = N (at most 64)
 *   vmlimit BYTES                         reservations fail (STATUS_NO_MEMORY) past BYTES
 *   vmbase ADDRESS                        where unanswered reservations start looking
 *   fill P SEED LEN                       P[i] = (SEED + i) & 0xff for i < LEN
 *   check P SEED LEN                      prints "check ok" or "check bad OFFSET"
 *   peek ADDRESS LEN                      prints "peek HEXBYTES" (memory as it is)
 *   dump                                  writes every live region to DUMPDIR (see below)
 *   echo TEXT...                          prints "echo TEXT..."
 *   params NAME VALUE ...                 segment heap only: later create lines pass a
 *                                         SEGHEAP_PARAMETERS with these fields (heapkey lfhkey
 *                                         seed lfhmax vsmax backendmax lfhlive lfhtotal
 *                                         freecommit; others 0 = default); "params off": none
 * Only with -DHEAPEMU_WIN7HEAP:
 *   keys ENCODING LFHKEY POINTERKEY       Win7HeapSetKeys (before the create it should affect)
 *   query H                               RtlQueryHeapInformation(H, compatibility)
 *   setinfo H VALUE                       RtlSetHeapInformation(H, compatibility, &VALUE)
 *
 * Output, one line per event, numbers in hex with 0x:
 *   vm alloc BASE SIZE TYPE PROTECT -> STATUS BASE SIZE    (every NtAllocateVirtualMemory)
 *   vm free BASE SIZE TYPE -> STATUS                       (every NtFreeVirtualMemory)
 *   exception CODE
 *   create H -> VALUE | reserve R -> VALUE | alloc P -> VALUE | realloc Q -> VALUE
 *   free -> VALUE | size -> VALUE | validate -> VALUE | destroy -> VALUE | lock -> VALUE ...
 *   walk DATA CBDATA OVERHEAD REGION FLAGS [COMMITTED UNCOMMITTED FIRST LAST]
 *   walk end STATUS
 *   heaps COUNT H1 H2 ...
 *   querystatus -> STATUS, query -> VALUE | setinfo -> STATUS | keys -> STATUS
 *   region BASE SIZE COMMITTED_RANGES FILE   (dump: COMMITTED_RANGES is "START-END,..." or "-";
 *                                             FILE holds the region with uncommitted pages as 0)
 *   error LINE MESSAGE                       (script error; the driver exits with status 2)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#ifdef DRIVER_SEGHEAP
#include "segheap.h"
#elif defined(HEAPEMU_WIN7HEAP)
#include "win7heap.h"
#else
#include "ntheap.h"
#endif

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define PAGE 0x1000u
#define GRANULE 0x10000u
#define MAX_REGIONS 4096
#define MAX_VARS 8192
#define MAX_PEB_HEAPS 64
#define STATUS_CONFLICTING_ADDRESSES 0xC0000018u
#define STATUS_MEMORY_NOT_ALLOCATED 0xC00000A0u

typedef struct region {
    uptr base, size;
    unsigned char *committed; /* one byte per page */
} region;

static region regions[MAX_REGIONS];
static int nregions;
static uptr vm_next = 0x10000000u, vm_limit = ~(uptr)0, vm_reserved;
static FILE *answers;
static const char *dump_dir;
static int dump_count;
static jmp_buf op_jump;
static int in_op;

static struct {
    char name[64];
    uptr value;
} vars[MAX_VARS];
static int nvars;

static union {
    u8 bytes[0x1000]; /* a page: win7heap's key record lives at PEB + 0xF00 */
    void *align;
} peb;
static void *peb_heaps[MAX_PEB_HEAPS];
static int line_no;
#ifdef DRIVER_SEGHEAP
static SEGHEAP_PARAMETERS seg_params;
static int seg_params_set;
#endif
static void *create_params;

static void die(const char *msg, const char *arg)
{
    printf("error %d %s%s%s\n", line_no, msg, arg ? " " : "", arg ? arg : "");
    fflush(stdout);
    exit(2);
}

/* ------------------------------------------------------------------ virtual memory */

static region *find_region(uptr addr)
{
    for (int i = 0; i < nregions; i++)
        if (addr >= regions[i].base && addr - regions[i].base < regions[i].size) return &regions[i];
    return NULL;
}

static int range_free(uptr base, uptr size)
{
    for (int i = 0; i < nregions; i++)
        if (base < regions[i].base + regions[i].size && regions[i].base < base + size) return 0;
    return 1;
}

static int map_at(uptr base, uptr size)
{
    void *p = mmap((void *)base, size, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == MAP_FAILED) return 0;
    if ((uptr)p != base) { /* kernels before 4.17 ignore the flag */
        munmap(p, size);
        return 0;
    }
    return 1;
}

static u32 vm_reserve(uptr *base, uptr size)
{
    region *r;
    if (nregions == MAX_REGIONS) return STATUS_NO_MEMORY;
    if (size > vm_limit || vm_reserved > vm_limit - size) return STATUS_NO_MEMORY;
    if (*base) {
        *base &= ~(uptr)(GRANULE - 1);
        if (!range_free(*base, size) || !map_at(*base, size)) return STATUS_CONFLICTING_ADDRESSES;
    } else {
        char line[256];
        unsigned long long abase, asize;
        if (answers && fgets(line, sizeof line, answers)) {
            if (sscanf(line, "alloc %lli %lli", &abase, &asize) != 2) die("bad answer:", line);
            if (asize != size) {
                printf("vm answer-size-mismatch 0x%llx 0x%llx\n", asize, (unsigned long long)size);
            }
            *base = (uptr)abase;
            if (!range_free(*base, size) || !map_at(*base, size)) die("answer not mappable", line);
        } else {
            uptr addr = (vm_next + GRANULE - 1) & ~(uptr)(GRANULE - 1);
            int tries;
            for (tries = 0; tries < 65536; tries++, addr += GRANULE)
                if (range_free(addr, size) && map_at(addr, size)) break;
            if (tries == 65536) return STATUS_NO_MEMORY;
            *base = addr;
            vm_next = addr + ((size + GRANULE - 1) & ~(uptr)(GRANULE - 1));
        }
    }
    r = &regions[nregions++];
    r->base = *base;
    r->size = size;
    r->committed = calloc(size / PAGE, 1);
    vm_reserved += size;
    return STATUS_SUCCESS;
}

static u32 vm_commit(uptr base, uptr size, u32 protect)
{
    region *r = find_region(base);
    int prot = PROT_READ | PROT_WRITE | (protect == PAGE_EXECUTE_READWRITE ? PROT_EXEC : 0);
    if (!r || size > r->size - (base - r->base)) return STATUS_CONFLICTING_ADDRESSES;
    if (mprotect((void *)base, size, prot)) return STATUS_NO_MEMORY;
    memset(r->committed + (base - r->base) / PAGE, 1, size / PAGE);
    return STATUS_SUCCESS;
}

u32 NtAllocateVirtualMemory(uptr process, void **base_ptr, uptr zero_bits, uptr *size_ptr,
                            u32 type, u32 protect)
{
    uptr base = (uptr)*base_ptr, size = *size_ptr, end;
    u32 status = STATUS_SUCCESS;
    (void)zero_bits;
    if (process != (uptr)-1 || !size || !(type & (MEM_RESERVE | MEM_COMMIT))) {
        status = STATUS_INVALID_PARAMETER;
    } else if (type & MEM_RESERVE) {
        size = (size + PAGE - 1) & ~(uptr)(PAGE - 1);
        status = vm_reserve(&base, size);
        if (!status && (type & MEM_COMMIT)) status = vm_commit(base, size, protect);
    } else {
        end = (base + size + PAGE - 1) & ~(uptr)(PAGE - 1);
        base &= ~(uptr)(PAGE - 1);
        size = end - base;
        status = vm_commit(base, size, protect);
    }
    printf("vm alloc 0x%llx 0x%llx 0x%x 0x%x -> 0x%x", (unsigned long long)(uptr)*base_ptr,
           (unsigned long long)*size_ptr, type, protect, status);
    if (!status) {
        *base_ptr = (void *)base;
        *size_ptr = size;
        printf(" 0x%llx 0x%llx", (unsigned long long)base, (unsigned long long)size);
    }
    printf("\n");
    return status;
}

u32 NtFreeVirtualMemory(uptr process, void **base_ptr, uptr *size_ptr, u32 type)
{
    uptr base = (uptr)*base_ptr, size = *size_ptr;
    region *r = find_region(base);
    u32 status = STATUS_SUCCESS;
    if (process != (uptr)-1 || !r) {
        status = STATUS_MEMORY_NOT_ALLOCATED;
    } else if (type == MEM_RELEASE) {
        if (size || base != r->base) {
            status = STATUS_INVALID_PARAMETER;
        } else {
            size = r->size;
            munmap((void *)r->base, r->size);
            free(r->committed);
            vm_reserved -= r->size;
            *r = regions[--nregions];
        }
    } else if (type == MEM_DECOMMIT) {
        uptr end = size ? (base + size + PAGE - 1) & ~(uptr)(PAGE - 1) : r->base + r->size;
        base &= ~(uptr)(PAGE - 1);
        if (end > r->base + r->size) {
            status = STATUS_INVALID_PARAMETER;
        } else {
            mprotect((void *)base, end - base, PROT_NONE);
            madvise((void *)base, end - base, MADV_DONTNEED);
            memset(r->committed + (base - r->base) / PAGE, 0, (end - base) / PAGE);
            size = end - base;
        }
    } else {
        status = STATUS_INVALID_PARAMETER;
    }
    printf("vm free 0x%llx 0x%llx 0x%x -> 0x%x\n", (unsigned long long)(uptr)*base_ptr,
           (unsigned long long)*size_ptr, type, status);
    if (!status) {
        *base_ptr = (void *)base;
        *size_ptr = size;
    }
    return status;
}

u32 NtRaiseException(EXCEPTION_RECORD *record, void *context, u32 first_chance)
{
    (void)context;
    (void)first_chance;
    printf("exception 0x%x\n", record->ExceptionCode);
    if (in_op) longjmp(op_jump, 1);
    return STATUS_SUCCESS;
}

u8 *ntheap_get_peb(void) { return peb.bytes; }

static void peb_init(void)
{
    void **heaps = peb_heaps;
    *(u32 *)(peb.bytes + PEB_MAXIMUM_NUMBER_OF_HEAPS) = 16;
    memcpy(peb.bytes + PEB_PROCESS_HEAPS, &heaps, sizeof heaps);
}

/* ------------------------------------------------------------------ dumps */

static void dump_regions(void)
{
    dump_count++;
    for (int i = 0; i < nregions; i++) {
        region *r = &regions[i];
        char path[4096], ranges[8192] = "";
        size_t used = 0;
        FILE *f = NULL;
        if (dump_dir) {
            snprintf(path, sizeof path, "%s/dump%d_%llx.bin", dump_dir, dump_count,
                     (unsigned long long)r->base);
            f = fopen(path, "wb");
            if (!f) die("cannot write", path);
        } else {
            snprintf(path, sizeof path, "-");
        }
        for (uptr page = 0; page < r->size / PAGE; page++) {
            static const unsigned char zero[PAGE];
            const void *src = r->committed[page] ? (void *)(r->base + page * PAGE) : zero;
            if (f) fwrite(src, 1, PAGE, f);
            if (r->committed[page] && (page == 0 || !r->committed[page - 1]))
                used += snprintf(ranges + used, sizeof ranges - used, "%s0x%llx-",
                                 used ? "," : "", (unsigned long long)(r->base + page * PAGE));
            if (r->committed[page] && (page + 1 == r->size / PAGE || !r->committed[page + 1]))
                used += snprintf(ranges + used, sizeof ranges - used, "0x%llx",
                                 (unsigned long long)(r->base + (page + 1) * PAGE));
            if (used >= sizeof ranges - 64) die("too many committed ranges", NULL);
        }
        if (f) fclose(f);
        printf("region 0x%llx 0x%llx %s %s\n", (unsigned long long)r->base,
               (unsigned long long)r->size, used ? ranges : "-", path);
    }
}

/* ------------------------------------------------------------------ script */

static uptr *var_slot(const char *name, int create)
{
    for (int i = 0; i < nvars; i++)
        if (!strcmp(vars[i].name, name)) return &vars[i].value;
    if (!create) die("undefined name", name);
    if (nvars == MAX_VARS || strlen(name) >= sizeof vars[0].name) die("too many names", name);
    snprintf(vars[nvars].name, sizeof vars[0].name, "%s", name);
    return &vars[nvars++].value;
}

static uptr value(const char *tok)
{
    char name[64], *end;
    const char *op;
    uptr base;
    if (!tok) die("missing argument", NULL);
    if ((tok[0] >= '0' && tok[0] <= '9') || tok[0] == '-') {
        unsigned long long v = strtoull(tok, &end, 0);
        if (*end) die("bad number", tok);
        return (uptr)v;
    }
    op = strpbrk(tok, "+-");
    if (!op) return *var_slot(tok, 0);
    if ((size_t)(op - tok) >= sizeof name) die("bad name", tok);
    memcpy(name, tok, op - tok);
    name[op - tok] = 0;
    base = *var_slot(name, 0);
    unsigned long long off = strtoull(op + 1, &end, 0);
    if (*end) die("bad offset", tok);
    return *op == '+' ? base + (uptr)off : base - (uptr)off;
}

static void define(const char *name, uptr v)
{
    if (!name || !((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= 'A' && name[0] <= 'Z') ||
                   name[0] == '_'))
        die("bad name", name);
    *var_slot(name, 1) = v;
}

static void do_walk(void *heap)
{
    RTL_HEAP_WALK_ENTRY e;
    u32 status;
    memset(&e, 0, sizeof e);
    for (int n = 0; n < 1000000; n++) {
        status = RtlWalkHeap(heap, &e);
        if (status) {
            printf("walk end 0x%x\n", status);
            return;
        }
        printf("walk 0x%llx 0x%llx 0x%x %u 0x%x", (unsigned long long)(uptr)e.DataAddress,
               (unsigned long long)e.DataSize, e.OverheadBytes, e.SegmentIndex, e.Flags);
        if (e.Flags & RTL_HEAP_ENTRY_REGION)
            printf(" 0x%x 0x%x 0x%llx 0x%llx", e.Segment.CommittedSize,
                   e.Segment.UnCommittedSize, (unsigned long long)(uptr)e.Segment.FirstEntry,
                   (unsigned long long)(uptr)e.Segment.LastEntry);
        printf("\n");
    }
    printf("walk end runaway\n");
}

#ifdef DRIVER_SEGHEAP
static void set_params(char **tok, int ntok)
{
    static const struct {
        const char *name;
        size_t offset, size;
    } fields[] = {
        {"heapkey", offsetof(SEGHEAP_PARAMETERS, HeapKey), sizeof(uptr)},
        {"lfhkey", offsetof(SEGHEAP_PARAMETERS, LfhKey), sizeof(uptr)},
        {"seed", offsetof(SEGHEAP_PARAMETERS, RandomSeed), 4},
        {"lfhmax", offsetof(SEGHEAP_PARAMETERS, LfhMaxSize), 4},
        {"vsmax", offsetof(SEGHEAP_PARAMETERS, VsMaxSize), 4},
        {"backendmax", offsetof(SEGHEAP_PARAMETERS, BackendMaxSize), 4},
        {"lfhlive", offsetof(SEGHEAP_PARAMETERS, LfhActivationLive), 4},
        {"lfhtotal", offsetof(SEGHEAP_PARAMETERS, LfhActivationTotal), 4},
        {"freecommit", offsetof(SEGHEAP_PARAMETERS, FreeCommitLimit), 4},
    };
    if (ntok == 2 && !strcmp(tok[1], "off")) {
        create_params = NULL;
        seg_params_set = 0;
        return;
    }
    if (!seg_params_set) {
        memset(&seg_params, 0, sizeof seg_params);
        seg_params.Length = sizeof seg_params;
        seg_params.Signature = SEGHEAP_PARAMETERS_SIGNATURE;
        seg_params_set = 1;
    }
    for (int i = 1; i < ntok; i += 2) {
        size_t f;
        uptr v;
        for (f = 0; f < sizeof fields / sizeof fields[0]; f++)
            if (!strcmp(fields[f].name, tok[i])) break;
        if (f == sizeof fields / sizeof fields[0]) die("params: unknown field", tok[i]);
        v = value(i + 1 < ntok ? tok[i + 1] : NULL);
        if (fields[f].size == 4) {
            u32 v32 = (u32)v;
            memcpy((char *)&seg_params + fields[f].offset, &v32, 4);
        } else {
            memcpy((char *)&seg_params + fields[f].offset, &v, sizeof v);
        }
    }
    create_params = &seg_params;
}
#else
static void set_params(char **tok, int ntok)
{
    (void)tok;
    (void)ntok;
    die("params: segment heap only", NULL);
}
#endif

#define ARG(i) (i < ntok ? tok[i] : NULL)
#define OUT(fmt, ...) printf(fmt "\n", __VA_ARGS__)
#define HEX(v) ((unsigned long long)(uptr)(v))

static void run_line(char **tok, int ntok)
{
    const char *op = tok[0];
    if (!strcmp(op, "create") || !strcmp(op, "alloc") || !strcmp(op, "realloc") ||
        !strcmp(op, "reserve"))
        define(ARG(1), 0); /* stays 0 when the call raises an exception */
    if (!strcmp(op, "create")) {
        void *h = RtlCreateHeap((u32)value(ARG(2)), ntok > 5 ? (void *)value(ARG(5)) : NULL,
                                value(ARG(3)), value(ARG(4)), NULL, create_params);
        define(ARG(1), (uptr)h);
        OUT("create %s -> 0x%llx", ARG(1), HEX(h));
    } else if (!strcmp(op, "reserve")) {
        void *base = NULL, *cbase;
        uptr size = value(ARG(2)), csize = ntok > 3 ? value(ARG(3)) : 0;
        if (NtAllocateVirtualMemory((uptr)-1, &base, 0, &size, MEM_RESERVE, PAGE_READWRITE))
            base = NULL;
        cbase = base;
        if (base && csize)
            NtAllocateVirtualMemory((uptr)-1, &cbase, 0, &csize, MEM_COMMIT, PAGE_READWRITE);
        define(ARG(1), (uptr)base);
        OUT("reserve %s -> 0x%llx", ARG(1), HEX(base));
    } else if (!strcmp(op, "alloc")) {
        void *p = RtlAllocateHeap((void *)value(ARG(2)), (u32)value(ARG(3)), value(ARG(4)));
        define(ARG(1), (uptr)p);
        OUT("alloc %s -> 0x%llx", ARG(1), HEX(p));
    } else if (!strcmp(op, "realloc")) {
        void *p = RtlReAllocateHeap((void *)value(ARG(2)), (u32)value(ARG(3)),
                                    (void *)value(ARG(4)), value(ARG(5)));
        define(ARG(1), (uptr)p);
        OUT("realloc %s -> 0x%llx", ARG(1), HEX(p));
    } else if (!strcmp(op, "free")) {
        OUT("free -> 0x%x", RtlFreeHeap((void *)value(ARG(1)), (u32)value(ARG(2)),
                                        (void *)value(ARG(3))));
    } else if (!strcmp(op, "size")) {
        OUT("size -> 0x%llx", HEX(RtlSizeHeap((void *)value(ARG(1)), (u32)value(ARG(2)),
                                               (void *)value(ARG(3)))));
    } else if (!strcmp(op, "validate")) {
        OUT("validate -> 0x%x", RtlValidateHeap((void *)value(ARG(1)), (u32)value(ARG(2)),
                                                ntok > 3 ? (void *)value(ARG(3)) : NULL));
    } else if (!strcmp(op, "walk")) {
        do_walk((void *)value(ARG(1)));
    } else if (!strcmp(op, "destroy")) {
        OUT("destroy -> 0x%llx", HEX(RtlDestroyHeap((void *)value(ARG(1)))));
    } else if (!strcmp(op, "lock")) {
        OUT("lock -> 0x%x", RtlLockHeap((void *)value(ARG(1))));
    } else if (!strcmp(op, "unlock")) {
        OUT("unlock -> 0x%x", RtlUnlockHeap((void *)value(ARG(1))));
    } else if (!strcmp(op, "heaps")) {
        void *buf[MAX_PEB_HEAPS];
        u32 count = ntok > 1 ? (u32)value(ARG(1)) : MAX_PEB_HEAPS, n, i;
        if (count > MAX_PEB_HEAPS) die("heaps: count too large", NULL);
        n = RtlGetProcessHeaps(count, buf);
        printf("heaps %u", n);
        for (i = 0; i < n && i < count; i++) printf(" 0x%llx", HEX(buf[i]));
        printf("\n");
    } else if (!strcmp(op, "processheap")) {
        void *h = (void *)value(ARG(1));
        memcpy(peb.bytes + PEB_PROCESS_HEAP, &h, sizeof h);
    } else if (!strcmp(op, "maxheaps")) {
        uptr n = value(ARG(1));
        if (n > MAX_PEB_HEAPS) die("maxheaps: at most 64", NULL);
        *(u32 *)(peb.bytes + PEB_MAXIMUM_NUMBER_OF_HEAPS) = (u32)n;
    } else if (!strcmp(op, "vmlimit")) {
        vm_limit = value(ARG(1));
    } else if (!strcmp(op, "vmbase")) {
        vm_next = value(ARG(1));
    } else if (!strcmp(op, "fill") || !strcmp(op, "check")) {
        u8 *p = (u8 *)value(ARG(1));
        uptr seed = value(ARG(2)), len = value(ARG(3)), i;
        if (op[0] == 'f') {
            for (i = 0; i < len; i++) p[i] = (u8)(seed + i);
        } else {
            for (i = 0; i < len && p[i] == (u8)(seed + i); i++) {
            }
            if (i == len)
                printf("check ok\n");
            else
                printf("check bad 0x%llx\n", (unsigned long long)i);
        }
    } else if (!strcmp(op, "peek")) {
        const u8 *p = (const u8 *)value(ARG(1));
        uptr len = value(ARG(2)), i;
        printf("peek ");
        for (i = 0; i < len; i++) printf("%02x", p[i]);
        printf("\n");
    } else if (!strcmp(op, "dump")) {
        dump_regions();
#ifdef HEAPEMU_WIN7HEAP
    } else if (!strcmp(op, "keys")) {
        OUT("keys -> 0x%x", Win7HeapSetKeys((u32)value(ARG(1)), value(ARG(2)), value(ARG(3))));
    } else if (!strcmp(op, "query")) {
        u32 info = 0xFFFFFFFFu;
        uptr len = 0;
        u32 status = RtlQueryHeapInformation((void *)value(ARG(1)), HeapCompatibilityInformation,
                                             &info, sizeof info, &len);
        OUT("querystatus -> 0x%x", status);
        OUT("query -> 0x%x", info);
    } else if (!strcmp(op, "setinfo")) {
        u32 info = (u32)value(ARG(2));
        OUT("setinfo -> 0x%x", RtlSetHeapInformation((void *)value(ARG(1)),
                                                     HeapCompatibilityInformation, &info, sizeof info));
#endif
    } else if (!strcmp(op, "echo")) {
        printf("echo");
        for (int i = 1; i < ntok; i++) printf(" %s", tok[i]);
        printf("\n");
    } else if (!strcmp(op, "params")) {
        set_params(tok, ntok);
    } else {
        die("unknown operation", op);
    }
}

int main(int argc, char **argv)
{
    FILE *volatile script = stdin;
    char line[4096];
    int i;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-a") && i + 1 < argc) {
            answers = fopen(argv[++i], "r");
            if (!answers) die("cannot open answers", argv[i]);
        } else if (!strcmp(argv[i], "-d") && i + 1 < argc) {
            dump_dir = argv[++i];
        } else if (strcmp(argv[i], "-")) {
            script = fopen(argv[i], "r");
            if (!script) die("cannot open script", argv[i]);
        }
    }
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    peb_init();
    while (fgets(line, sizeof line, script)) {
        char *tok[16], *save = NULL, *t, *hash = strchr(line, '#');
        int ntok = 0;
        line_no++;
        if (hash) *hash = 0;
        for (t = strtok_r(line, " \t\r\n", &save); t && ntok < 16; t = strtok_r(NULL, " \t\r\n", &save))
            tok[ntok++] = t;
        if (!ntok) continue;
        if (setjmp(op_jump)) {
            in_op = 0;
            continue;
        }
        in_op = 1;
        run_line(tok, ntok);
        in_op = 0;
    }
    fflush(stdout);
    return 0;
}
