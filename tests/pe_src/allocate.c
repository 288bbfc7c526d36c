/* allocate.dll: seed 003's program. Three ways to 8 bytes, each ending in ntdll!RtlAllocateHeap:
 *
 *   alloc_malloc -> malloc -> _malloc_base -> RtlAllocateHeap(crt heap, 0, 8)
 *   alloc_new    -> operator_new -> malloc -> _malloc_base -> RtlAllocateHeap(crt heap, 0, 8)
 *   alloc_heap   -> RtlAllocateHeap(PEB.ProcessHeap, 0, 8)   (kernel32!HeapAlloc forwards there)
 *
 * The "CRT" heap is created on first use, as a CRT's heap_init does. Built CRT-free at -O1 with
 * no sibling-call optimisation or inlining, so every layer keeps its own stack frame. Every
 * function is exported so stack frames have names (a PDB would give them on Windows).
 */

typedef void *HANDLE;
typedef __SIZE_TYPE__ SIZE_T;

__declspec(dllimport) void *__stdcall RtlAllocateHeap(HANDLE heap, unsigned long flags, SIZE_T size);
__declspec(dllimport) HANDLE __stdcall RtlCreateHeap(unsigned long flags, void *base, SIZE_T reserve,
                                                     SIZE_T commit, void *lock, void *params);

static HANDLE crt_heap;

static HANDLE process_heap(void)
{
    char *peb;
#ifdef __x86_64__
    __asm__ volatile("movq %%gs:0x60, %0" : "=r"(peb));
    return *(HANDLE *)(peb + 0x30); /* PEB.ProcessHeap */
#else
    __asm__ volatile("movl %%fs:0x30, %0" : "=r"(peb));
    return *(HANDLE *)(peb + 0x18);
#endif
}

__declspec(dllexport) __attribute__((noinline)) void *_malloc_base(SIZE_T size)
{
    if (!crt_heap)
        crt_heap = RtlCreateHeap(0x2 /* HEAP_GROWABLE */, 0, 0, 0, 0, 0);
    void *p = RtlAllocateHeap(crt_heap, 0, size);
    __asm__ volatile("" ::: "memory"); /* keep the call a call, not a tail jump */
    return p;
}

__declspec(dllexport) __attribute__((noinline)) void *malloc(SIZE_T size)
{
    void *p = _malloc_base(size);
    __asm__ volatile("" ::: "memory");
    return p;
}

__declspec(dllexport) __attribute__((noinline)) void *operator_new(SIZE_T size)
{
    void *p = malloc(size);
    __asm__ volatile("" ::: "memory");
    return p;
}

__declspec(dllexport) __attribute__((noinline)) void *alloc_malloc(void)
{
    void *p = malloc(8);
    __asm__ volatile("" ::: "memory");
    return p;
}

__declspec(dllexport) __attribute__((noinline)) void *alloc_new(void)
{
    void *p = operator_new(8);
    __asm__ volatile("" ::: "memory");
    return p;
}

__declspec(dllexport) __attribute__((noinline)) void *alloc_heap(void)
{
    void *p = RtlAllocateHeap(process_heap(), 0, 8);
    __asm__ volatile("" ::: "memory");
    return p;
}

__declspec(dllexport) __attribute__((noinline)) int main_(void)
{
    int ok = alloc_malloc() != 0;
    ok += alloc_new() != 0;
    ok += alloc_heap() != 0;
    return ok;
}

int __stdcall DllMain(void *instance, unsigned long reason, void *reserved)
{
    (void)instance;
    (void)reason;
    (void)reserved;
    return 1;
}
