// Heap traffic through every door a program has (msvcrt, HeapXxx, GlobalXxx, LocalXxx), for
// `heapemu exec --allocator` (issues 17, 18). It prints only what is the same under every
// allocator (contents, sizes, results), never an address. It ends with a growable heap holding
// 100 live blocks of 0x100 bytes (Windows 7 serves them from its LFH) and exits with the
// number of failed checks.
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

static void check(int ok, const char *what) {
    if (!ok) {
        failures++;
        printf("FAILED %s\n", what);
    }
}

static void fill(void *p, size_t n, unsigned seed) {
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++) b[i] = (unsigned char)(seed * 31 + i * 7);
}

static int filled(const void *p, size_t n, unsigned seed) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != (unsigned char)(seed * 31 + i * 7)) return 0;
    return 1;
}

static int zeroed(const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i]) return 0;
    return 1;
}

static void crt(void) {
    enum { N = 64 };
    void *blocks[N];
    size_t sizes[N];
    for (int i = 0; i < N; i++) {
        sizes[i] = 8 + (size_t)i * 40;
        blocks[i] = malloc(sizes[i]);
        check(blocks[i] != NULL, "malloc");
        fill(blocks[i], sizes[i], (unsigned)i);
    }
    for (int i = 1; i < N; i += 2) free(blocks[i]);
    for (int i = 0; i < N; i += 2) {  // grow (moves or extends) then shrink, contents kept
        blocks[i] = realloc(blocks[i], sizes[i] * 3);
        check(blocks[i] && filled(blocks[i], sizes[i], (unsigned)i), "realloc grow");
        blocks[i] = realloc(blocks[i], sizes[i] / 2 + 1);
        check(blocks[i] && filled(blocks[i], sizes[i] / 2 + 1, (unsigned)i), "realloc shrink");
    }
    for (int i = 0; i < N; i += 2) free(blocks[i]);
    int *z = calloc(1000, sizeof(int));
    check(z && zeroed(z, 1000 * sizeof(int)), "calloc");
    free(z);
    void *big = malloc(0x200000);  // a large block (virtual allocation on the NT heaps)
    check(big != NULL, "malloc large");
    fill(big, 0x200000, 9);
    big = realloc(big, 0x300000);
    check(big && filled(big, 0x200000, 9), "realloc large");
    free(big);
    printf("crt: %d blocks, realloc, calloc, large\n", N);
}

static void private_heaps(void) {
    for (int round = 0; round < 3; round++) {
        HANDLE h = HeapCreate(0, 0, 0);
        check(h != NULL, "HeapCreate");
        void *p[40];
        for (int i = 0; i < 40; i++) {
            SIZE_T n = 16 + (SIZE_T)(i * 97 % 1500);
            p[i] = HeapAlloc(h, HEAP_ZERO_MEMORY, n);
            check(p[i] && zeroed(p[i], n) && HeapSize(h, 0, p[i]) == n, "HeapAlloc zeroed");
            fill(p[i], n, (unsigned)i);
        }
        for (int i = 0; i < 40; i += 3) check(HeapFree(h, 0, p[i]), "HeapFree");
        for (int i = 1; i < 40; i += 3) {
            SIZE_T n = 16 + (SIZE_T)(i * 97 % 1500);
            void *q = HeapReAlloc(h, HEAP_ZERO_MEMORY, p[i], n + 300);
            check(q && filled(q, n, (unsigned)i) && zeroed((char *)q + n, 300), "HeapReAlloc");
            check(HeapSize(h, 0, q) == n + 300, "HeapSize after HeapReAlloc");
            p[i] = q;
        }
        check(HeapValidate(h, 0, NULL), "HeapValidate");
        check(HeapDestroy(h), "HeapDestroy");
    }
    HANDLE fixed = HeapCreate(0, 0x10000, 0x40000);  // not growable: keeps to its reserve
    check(fixed != NULL, "HeapCreate fixed");
    void *f = HeapAlloc(fixed, 0, 0x1000);
    check(f != NULL, "HeapAlloc fixed");
    check(HeapFree(fixed, 0, f) && HeapDestroy(fixed), "fixed heap freed");
    void *ph = HeapAlloc(GetProcessHeap(), 0, 100);
    check(ph && HeapSize(GetProcessHeap(), 0, ph) == 100, "process heap");
    check(HeapFree(GetProcessHeap(), 0, ph), "process heap free");
    printf("heaps: 3 rounds of 40, a fixed heap, the process heap\n");
}

static void global_local(void) {
    HGLOBAL g = GlobalAlloc(GMEM_FIXED | GMEM_ZEROINIT, 200);
    check(g && zeroed(g, 200) && GlobalSize(g) == 200, "GlobalAlloc fixed");
    check(GlobalHandle(g) == g, "GlobalHandle fixed");
    g = GlobalReAlloc(g, 4000, GMEM_MOVEABLE);
    check(g && GlobalSize(g) == 4000, "GlobalReAlloc");
    check(GlobalFree(g) == NULL, "GlobalFree fixed");

    HGLOBAL m = GlobalAlloc(GMEM_MOVEABLE, 300);
    check(m != NULL, "GlobalAlloc moveable");
    char *mp = GlobalLock(m);
    check(mp != NULL && GlobalHandle(mp) == m, "GlobalLock/GlobalHandle");
    fill(mp, 300, 5);
    GlobalUnlock(m);
    m = GlobalReAlloc(m, 5000, GMEM_MOVEABLE);
    mp = GlobalLock(m);
    check(mp && filled(mp, 300, 5) && GlobalSize(m) == 5000, "GlobalReAlloc moveable");
    GlobalUnlock(m);
    check(GlobalFree(m) == NULL, "GlobalFree moveable");

    HLOCAL l = LocalAlloc(LMEM_FIXED, 64);
    check(l && LocalSize(l) == 64 && LocalHandle(l) == l, "LocalAlloc fixed");
    check(LocalFree(l) == NULL, "LocalFree fixed");
    HLOCAL lm = LocalAlloc(LMEM_MOVEABLE | LMEM_ZEROINIT, 128);
    char *lp = LocalLock(lm);
    check(lp && zeroed(lp, 128) && LocalHandle(lp) == lm, "LocalAlloc moveable");
    LocalUnlock(lm);
    lm = LocalReAlloc(lm, 64, LMEM_MOVEABLE);
    check(lm && LocalSize(lm) == 64, "LocalReAlloc");
    check(LocalFree(lm) == NULL, "LocalFree moveable");
    printf("global/local: fixed and moveable\n");
}

static void lfh(void) {
    HANDLE h = HeapCreate(0, 0, 0);  // growable; its blocks stay live for the walkers
    check(h != NULL, "HeapCreate lfh");
    int ok = 0;
    for (int i = 0; i < 100; i++) {
        void *p = HeapAlloc(h, 0, 0x100);
        if (p) {
            fill(p, 0x100, (unsigned)i);
            ok++;
        }
    }
    check(ok == 100, "100 x 0x100");
    check(HeapValidate(h, 0, NULL), "HeapValidate lfh");
    printf("lfh: %d blocks of 0x100 live\n", ok);
}

int main(void) {
    // what MSVC's start-up does; then the front end's kind (its value differs by allocator)
    check(HeapSetInformation(NULL, HeapEnableTerminationOnCorruption, NULL, 0),
          "HeapSetInformation termination");
    ULONG front = 99;
    check(HeapQueryInformation(GetProcessHeap(), HeapCompatibilityInformation, &front,
                               sizeof(front), NULL) && (front == 0 || front == 2),
          "HeapQueryInformation");
    crt();
    private_heaps();
    global_local();
    HeapCompact(GetProcessHeap(), 0);  // the largest free block: differs by allocator
    lfh();
    printf("failures: %d\n", failures);
    return failures;
}
