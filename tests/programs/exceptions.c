/* Exceptions dispatched as Windows does (issue 16, cause 2): one scenario per argument.

   seh        a structured handler (x86: a registration frame on fs:[0]; x64: a scope of
              __C_specific_handler found through .pdata) recovers from a read of 0x10
   veh        the same through a vectored handler
   guard      a guard page raises STATUS_GUARD_PAGE_VIOLATION once, then it is a plain page
   unhandled  a read of 0x10 that nothing handles: the process ends with 0xC0000005
   isbad      IsBadReadPtr / IsBadWritePtr (Wine's kernelbase catches the fault itself)
   raise      RaiseException with a custom code and arguments, seen by a vectored handler
   traps      int3, a division by zero, INT_MIN / -1 and ud2, each skipped by a vectored handler
   overflow   unbounded recursion: STATUS_STACK_OVERFLOW, seen by a vectored handler, ends it
   overflow-caught     the overflow caught by a structured handler around the recursion, which
                       goes on after it; _resetstkoflw, then a second overflow caught again
   overflow-twice      caught once, then a second overflow with no guard page left: the
                       process ends (no handler can run)
   overflow-guarantee  SetThreadStackGuarantee(64 KiB): the overflow leaves that much stack
   overflow-thread     a thread of its own overflows its stack and catches it; the segment
                       selectors its handler's CONTEXT shows

   The faulting loads are `mov eax, [ecx]` / `mov eax, [rcx]` (8B 01, two bytes on both
   architectures): a handler resumes two bytes further with eax = 42. */
#include <excpt.h>
#include <stdio.h>
#include <string.h>
#include <windows.h>

#ifdef _WIN64
#define PC(ctx) ((ctx)->Rip)
#define AX(ctx) ((ctx)->Rax)
#else
#define PC(ctx) ((ctx)->Eip)
#define AX(ctx) ((ctx)->Eax)
#endif

static DWORD seen_code, seen_params, seen_flags;
static ULONG_PTR seen_info[4];
static void *seen_address;
static int calls;

static void note(const EXCEPTION_RECORD *rec) {
    seen_code = rec->ExceptionCode;
    seen_flags = rec->ExceptionFlags;
    seen_address = rec->ExceptionAddress;
    seen_params = rec->NumberParameters;
    for (DWORD i = 0; i < 4 && i < rec->NumberParameters; i++)
        seen_info[i] = rec->ExceptionInformation[i];
    calls++;
}

static __attribute__((noinline)) int load_through(volatile int *p) {
    int v;
    __asm__ volatile("movl (%1), %0" : "=a"(v) : "c"(p) : "memory");
    return v;
}

/* Resume after the two-byte load with eax = 42. */
static void skip_load(CONTEXT *ctx) {
    PC(ctx) += 2;
    AX(ctx) = 42;
}

static void report(const char *what, int value) {
    printf("%s value=%d code=%08lx params=%lu info0=%lx info1=%lx calls=%d\n", what, value,
           seen_code, seen_params, (unsigned long)seen_info[0], (unsigned long)seen_info[1],
           calls);
}

static LONG CALLBACK veh_skip_load(EXCEPTION_POINTERS *ep) {
    if (ep->ExceptionRecord->ExceptionCode != EXCEPTION_ACCESS_VIOLATION)
        return EXCEPTION_CONTINUE_SEARCH;
    note(ep->ExceptionRecord);
    skip_load(ep->ContextRecord);
    return EXCEPTION_CONTINUE_EXECUTION;
}

#ifdef _WIN64
/* __try1's filter, called by msvcrt's __C_specific_handler (named from asm: not static) */
LONG seh_filter(EXCEPTION_POINTERS *ep, void *frame);
LONG seh_filter(EXCEPTION_POINTERS *ep, void *frame) {
    (void)frame;
    return veh_skip_load(ep);
}
#else
static EXCEPTION_DISPOSITION seh_handler(EXCEPTION_RECORD *rec, void *frame, CONTEXT *ctx,
                                         void *dispatcher) {
    (void)frame, (void)dispatcher;
    if (rec->ExceptionFlags & 6) /* EXCEPTION_UNWINDING | EXCEPTION_EXIT_UNWIND */
        return ExceptionContinueSearch;
    note(rec);
    skip_load(ctx);
    return ExceptionContinueExecution;
}
#endif

static int seh(void) {
    int value;
#ifdef _WIN64
    __try1(seh_filter) value = load_through((volatile int *)0x10);
    __except1;
#else
    __try1(seh_handler) value = load_through((volatile int *)0x10);
    __except1;
#endif
    report("seh", value);
    return 0;
}

static int veh(void) {
    void *h = AddVectoredExceptionHandler(1, veh_skip_load);
    int value = load_through((volatile int *)0x10);
    RemoveVectoredExceptionHandler(h);
    report("veh", value);
    return 0;
}

static LONG CALLBACK veh_guard(EXCEPTION_POINTERS *ep) {
    if (ep->ExceptionRecord->ExceptionCode != STATUS_GUARD_PAGE_VIOLATION)
        return EXCEPTION_CONTINUE_SEARCH;
    note(ep->ExceptionRecord);
    return EXCEPTION_CONTINUE_EXECUTION; /* the page is plain now: the load runs again */
}

static int guard(void) {
    DWORD old;
    volatile int *page = VirtualAlloc(NULL, 4096, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
    page[4] = 7;
    VirtualProtect((void *)page, 4096, PAGE_READWRITE | PAGE_GUARD, &old);
    void *h = AddVectoredExceptionHandler(1, veh_guard);
    int first = load_through(page + 4);
    int second = load_through(page + 4);
    RemoveVectoredExceptionHandler(h);
    MEMORY_BASIC_INFORMATION mbi;
    VirtualQuery((void *)page, &mbi, sizeof mbi);
    report("guard", first + second);
    printf("guard address_ok=%d protect=%lx\n", seen_info[1] == (ULONG_PTR)(page + 4),
           mbi.Protect);
    return 0;
}

static int isbad(void) {
    static const int constant = 5;
    int local = 0;
    printf("isbad %d %d %d %d %d\n", IsBadReadPtr((void *)0x10, 4),
           IsBadWritePtr((void *)0x10, 4), IsBadWritePtr((void *)&constant, 4),
           IsBadReadPtr(&local, 4), IsBadWritePtr(&local, 4));
    return 0;
}

static LONG CALLBACK veh_custom(EXCEPTION_POINTERS *ep) {
    if (ep->ExceptionRecord->ExceptionCode != 0xE0481234)
        return EXCEPTION_CONTINUE_SEARCH;
    note(ep->ExceptionRecord);
    return EXCEPTION_CONTINUE_EXECUTION;
}

static int raise_custom(void) {
    ULONG_PTR args[3] = {0x11, 0x22, 0x33};
    void *h = AddVectoredExceptionHandler(1, veh_custom);
    RaiseException(0xE0481234, 0, 3, args);
    RemoveVectoredExceptionHandler(h);
    printf("raise code=%08lx flags=%lu params=%lu args=%lx,%lx,%lx calls=%d\n", seen_code,
           seen_flags, seen_params, (unsigned long)seen_info[0], (unsigned long)seen_info[1],
           (unsigned long)seen_info[2], calls);
    return 0;
}

static LONG CALLBACK veh_traps(EXCEPTION_POINTERS *ep) {
    EXCEPTION_RECORD *rec = ep->ExceptionRecord;
    int skip = rec->ExceptionCode == EXCEPTION_BREAKPOINT                ? 1
               : rec->ExceptionCode == EXCEPTION_INT_DIVIDE_BY_ZERO      ? 2
               : rec->ExceptionCode == EXCEPTION_INT_OVERFLOW            ? 2
               : rec->ExceptionCode == EXCEPTION_ILLEGAL_INSTRUCTION      ? 2
                                                                          : 0;
    if (!skip)
        return EXCEPTION_CONTINUE_SEARCH;
    note(rec);
    printf("trap code=%08lx at_pc=%d params=%lu\n", rec->ExceptionCode,
           (ULONG_PTR)rec->ExceptionAddress == (ULONG_PTR)PC(ep->ContextRecord),
           rec->NumberParameters);
    PC(ep->ContextRecord) += skip;
    return EXCEPTION_CONTINUE_EXECUTION;
}

static int traps(void) {
    void *h = AddVectoredExceptionHandler(1, veh_traps);
    int zero = 0, q = 5;
    __asm__ volatile("int3");
    __asm__ volatile("cltd; idivl %1" : "+a"(q) : "c"(zero) : "edx"); /* F7 F9: two bytes */
    int min = (int)0x80000000, minus_one = -1; /* INT_MIN / -1 does not fit: #DE, an overflow */
    __asm__ volatile("cltd; idivl %1" : "+a"(min) : "c"(minus_one) : "edx");
    __asm__ volatile("ud2");
    RemoveVectoredExceptionHandler(h);
    printf("traps calls=%d\n", calls);
    return 0;
}

static volatile int depth;

#pragma GCC diagnostic ignored "-Winfinite-recursion"
static __attribute__((noinline)) int recurse(int n) {
    volatile char pad[2000]; /* under a page: no ___chkstk_ms (it has no unwind data) */
    pad[0] = (char)n;
    depth = n;
    return recurse(n + 1) + pad[0];
}

static LONG CALLBACK veh_overflow(EXCEPTION_POINTERS *ep) {
    if (ep->ExceptionRecord->ExceptionCode != EXCEPTION_STACK_OVERFLOW)
        return EXCEPTION_CONTINUE_SEARCH;
    note(ep->ExceptionRecord);
    return EXCEPTION_CONTINUE_SEARCH; /* too little stack left to do more: the process ends */
}

static int overflow(void) {
    AddVectoredExceptionHandler(1, veh_overflow);
    return recurse(0);
}

/* ---- stack overflow caught by a structured handler ----
   x64: __try1 with a filter that returns EXCEPTION_EXECUTE_HANDLER: __C_specific_handler
   unwinds (RtlUnwindEx) to the end of the scope. x86: a registration record of our own whose
   handler does what MSVC's __except does: drop the dispatcher's frames and go on in the
   function that registered it (here with __builtin_longjmp). */
static volatile DWORD caught_code;
static volatile ULONG_PTR caught_room; /* stack pointer - DeallocationStack at the overflow */

/* TEB.DeallocationStack: the bottom of the stack's reservation (winternl.h offsets) */
static ULONG_PTR deallocation_stack(void) {
    return *(ULONG_PTR *)((char *)NtCurrentTeb() + (sizeof(void *) == 8 ? 0x1478 : 0xE0C));
}

static volatile DWORD caught_segs[6]; /* the CONTEXT's cs, ss, ds, es, fs, gs */

static void note_overflow(EXCEPTION_RECORD *rec, CONTEXT *ctx) {
    caught_code = rec->ExceptionCode;
    caught_segs[0] = ctx->SegCs, caught_segs[1] = ctx->SegSs, caught_segs[2] = ctx->SegDs;
    caught_segs[3] = ctx->SegEs, caught_segs[4] = ctx->SegFs, caught_segs[5] = ctx->SegGs;
#ifdef _WIN64
    caught_room = ctx->Rsp - deallocation_stack();
#else
    caught_room = ctx->Esp - deallocation_stack();
#endif
}

#ifdef _WIN64
LONG overflow_filter(EXCEPTION_POINTERS *ep, void *frame);
LONG overflow_filter(EXCEPTION_POINTERS *ep, void *frame) {
    (void)frame;
    if (ep->ExceptionRecord->ExceptionCode != EXCEPTION_STACK_OVERFLOW)
        return EXCEPTION_CONTINUE_SEARCH;
    note_overflow(ep->ExceptionRecord, ep->ContextRecord);
    return EXCEPTION_EXECUTE_HANDLER;
}
#else
struct registration {
    struct registration *next;
    void *handler;
};
static void *overflow_jump[5];

static EXCEPTION_DISPOSITION overflow_handler(EXCEPTION_RECORD *rec, void *frame, CONTEXT *ctx,
                                             void *dispatcher) {
    (void)dispatcher;
    if (rec->ExceptionFlags & 6 || rec->ExceptionCode != EXCEPTION_STACK_OVERFLOW)
        return ExceptionContinueSearch;
    note_overflow(rec, ctx);
    ((volatile NT_TIB *)NtCurrentTeb())->ExceptionList = frame;
    __builtin_longjmp(overflow_jump, 1);
}
#endif

/* 1 when the recursion ended in a caught stack overflow */
static __attribute__((noinline)) int catch_overflow(void) {
    caught_code = 0;
#ifdef _WIN64
    /* __try1 / __except1 with labels of their own (mingw's may appear once per file) */
    __asm__ __volatile__("\t.l_overflow_start:\n"
                         "\t.seh_handler __C_specific_handler, @except\n"
                         "\t.seh_handlerdata\n"
                         "\t.long 1\n"
                         "\t.rva .l_overflow_start, .l_overflow_end, overflow_filter, "
                         ".l_overflow_end\n"
                         "\t.text");
    recurse(0);
    __asm__ __volatile__("\tnop\n\t.l_overflow_end: nop\n");
#else
    volatile struct registration reg;
    volatile NT_TIB *tib = (volatile NT_TIB *)NtCurrentTeb();
    reg.next = (struct registration *)tib->ExceptionList;
    reg.handler = (void *)overflow_handler;
    tib->ExceptionList = (void *)&reg;
    if (!__builtin_setjmp(overflow_jump))
        recurse(0);
    tib->ExceptionList = (void *)reg.next;
#endif
    return caught_code == EXCEPTION_STACK_OVERFLOW;
}

static void report_overflow(const char *what, int caught) {
    NT_TIB *tib = (NT_TIB *)NtCurrentTeb();
    printf("%s caught=%d code=%08lx limit_at_bottom=%d\n", what, caught, caught_code,
           (ULONG_PTR)tib->StackLimit == deallocation_stack() + 4096);
}

static int overflow_caught(void) {
    report_overflow("first", catch_overflow());
    printf("reset %d\n", _resetstkoflw() != 0);
    report_overflow("second", catch_overflow());
    return 0;
}

static int overflow_twice(void) {
    report_overflow("first", catch_overflow());
    catch_overflow(); /* no guard page left: the process ends */
    printf("survived\n");
    return 0;
}

static int overflow_guarantee(void) {
    ULONG size = 0x10000, before = 0;
    BOOL ok = SetThreadStackGuarantee(&size);
    ULONG now = 0;
    SetThreadStackGuarantee(&now);
    before = size;
    report_overflow("guarantee", catch_overflow());
    printf("set %d now=%lx room_ok=%d\n", ok, now, caught_room >= 0x10000);
    (void)before;
    return 0;
}

static DWORD WINAPI overflow_thread_main(void *arg) {
    (void)arg;
    report_overflow("thread", catch_overflow());
    printf("thread segs %lx %lx %lx %lx %lx %lx\n", caught_segs[0], caught_segs[1], caught_segs[2],
           caught_segs[3], caught_segs[4], caught_segs[5]);
    /* NtContinue of such a CONTEXT (fs 0x3B on x86) keeps the thread on its own TEB */
    DWORD tid = GetCurrentThreadId();
    void *h = AddVectoredExceptionHandler(1, veh_skip_load);
    int value = load_through((volatile int *)0x10);
    RemoveVectoredExceptionHandler(h);
    printf("thread continued value=%d same_teb=%d\n", value, GetCurrentThreadId() == tid);
    return 7;
}

static int overflow_thread(void) {
    DWORD code = 0;
    HANDLE h = CreateThread(NULL, 0, overflow_thread_main, NULL, 0, NULL);
    WaitForSingleObject(h, INFINITE);
    GetExitCodeThread(h, &code);
    printf("thread exit %lu\n", code);
    return 0;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    setvbuf(stdout, NULL, _IONBF, 0);
    if (!strcmp(mode, "seh")) return seh();
    if (!strcmp(mode, "veh")) return veh();
    if (!strcmp(mode, "guard")) return guard();
    if (!strcmp(mode, "isbad")) return isbad();
    if (!strcmp(mode, "raise")) return raise_custom();
    if (!strcmp(mode, "traps")) return traps();
    if (!strcmp(mode, "overflow")) return overflow();
    if (!strcmp(mode, "overflow-caught")) return overflow_caught();
    if (!strcmp(mode, "overflow-twice")) return overflow_twice();
    if (!strcmp(mode, "overflow-guarantee")) return overflow_guarantee();
    if (!strcmp(mode, "overflow-thread")) return overflow_thread();
    if (!strcmp(mode, "unhandled")) {
        printf("before\n");
        return load_through((volatile int *)0x10);
    }
    printf("unknown mode %s\n", mode);
    return 2;
}
