/* Hostile programs (issue 16): one mode per argument, each printing a line before its hostile
   act. Whatever they do, heapemu must end the run with a ProgramResult or one of its typed
   errors, within the time limit (tests/test_hostile_programs.py).

   nested          a vectored handler that faults itself, twice, before it recovers
   nested-forever  a vectored handler that always faults (recursion until the stack is gone)
   continue-forever a handler returning EXCEPTION_CONTINUE_EXECUTION on the same fault, forever
   seh-garbage     x86: fs:[0] -> garbage; x64: a bogus return address on the stack; then a fault
   seh-loop        x86: a registration record that is its own Next; x64: rsp on a run of
                   return addresses into the faulting code; then a fault
   continue-random NtContinue with a CONTEXT of random bytes
   continue-zero   NtContinue with a full CONTEXT whose pc and sp are 0
   continue-unaligned NtContinue with an unaligned CONTEXT, then one whose sp is unaligned
   raise-garbage   NtRaiseException with NumberParameters huge, a chained record that loops,
                   unreadable records and contexts
   raise-params    RaiseException with 0, 20 parameters and 3 parameters from NULL
   jump-null / jump-nx / jump-teb   a call to 0, to a read-write page, into the TEB
   stack-limits    the TEB's stack base and limit overwritten, then a fault under __try
   overflow        unbounded recursion
   fastfail        int 0x29 (__fastfail(7))
   int80           int 0x80 (a gate closed to user mode) skipped by a handler, then unhandled
   ud2             ud2, unhandled
   privileged      cli, hlt, in, out, mov from cr0, wrmsr skipped by a handler; then hlt unhandled
   thread-fault    a thread faults (unhandled) while the main thread waits for it
   exit-in-heap    a thread calls ExitProcess(7) while the main thread is in HeapAlloc/HeapFree
   terminate-self  a thread terminates itself (5); then the main (last) thread itself (6)
   free-peb        VirtualFree of the PEB, the TEB, then the stack
   noaccess-stack  VirtualProtect(the current stack, PAGE_NOACCESS), then a call
   cow-ntdll       ntdll's code rewritten (after VirtualProtect) and called
   close-handles   CloseHandle of every value 0..0x1000, then printing, then exit(3)
   writefile-huge  WriteFile to stdout with huge lengths and bad buffers
   heap-corrupt    a double free and an overflow of a block, then more heap calls */
#include <excpt.h>
#include <stdio.h>
#include <string.h>
#include <windows.h>

#ifdef _WIN64
#define PC(ctx) ((ctx)->Rip)
#define SP(ctx) ((ctx)->Rsp)
#else
#define PC(ctx) ((ctx)->Eip)
#define SP(ctx) ((ctx)->Esp)
#endif

typedef LONG(NTAPI *NtContinueFn)(CONTEXT *, BOOLEAN);
typedef LONG(NTAPI *NtRaiseExceptionFn)(EXCEPTION_RECORD *, CONTEXT *, BOOLEAN);

static void say(const char *text) {
    printf("%s\n", text);
}

static FARPROC ntdll(const char *name) {
    return GetProcAddress(GetModuleHandleA("ntdll.dll"), name);
}

/* mov eax, [ecx] / mov eax, [rcx]: 8B 01, two bytes on both architectures */
static __attribute__((noinline)) int load_through(volatile int *p) {
    int v;
    __asm__ volatile("movl (%1), %0" : "=a"(v) : "c"(p) : "memory");
    return v;
}

/* ---- exceptions inside handlers ---- */

static volatile int nested_depth, nested_calls;

static LONG CALLBACK veh_nested(EXCEPTION_POINTERS *ep) {
    if (ep->ExceptionRecord->ExceptionCode != EXCEPTION_ACCESS_VIOLATION)
        return EXCEPTION_CONTINUE_SEARCH;
    nested_calls++;
    if (nested_depth < 2) {
        nested_depth++;
        load_through((volatile int *)0x20); /* the handler faults: dispatched again, nested */
    }
    PC(ep->ContextRecord) += 2;
    return EXCEPTION_CONTINUE_EXECUTION;
}

static LONG CALLBACK veh_nested_forever(EXCEPTION_POINTERS *ep) {
    (void)ep;
    nested_calls++;
    load_through((volatile int *)0x20);
    return EXCEPTION_CONTINUE_SEARCH;
}

static LONG CALLBACK veh_continue(EXCEPTION_POINTERS *ep) {
    (void)ep;
    nested_calls++;
    return EXCEPTION_CONTINUE_EXECUTION; /* nothing fixed: the same fault again */
}

static int nested(PVECTORED_EXCEPTION_HANDLER handler, const char *what) {
    AddVectoredExceptionHandler(1, handler);
    printf("%s\n", what);
    load_through((volatile int *)0x10);
    printf("nested calls=%d\n", nested_calls);
    return 0;
}

/* ---- broken exception chains ---- */

#ifndef _WIN64
static EXCEPTION_DISPOSITION search_on(EXCEPTION_RECORD *rec, void *frame, CONTEXT *ctx,
                                       void *dispatcher) {
    (void)rec, (void)frame, (void)ctx, (void)dispatcher;
    return ExceptionContinueSearch;
}
#endif

static int seh_garbage(void) {
    say("seh-garbage");
#ifdef _WIN64
    /* a bogus return address where the faulting code's caller's would be; no unwind data */
    __asm__ volatile("pushq $0x41414141\n\t"
                     "pushq $0x42424242\n\t"
                     "movl 0x10, %%eax" ::: "memory", "eax");
#else
    __asm__ volatile("movl $0x12345678, %%fs:0\n\t"
                     "movl 0x10, %%eax" ::: "memory", "eax");
#endif
    return 0;
}

static int seh_loop(void) {
    say("seh-loop");
#ifdef _WIN64
    /* 64 return addresses that all lead back to the faulting code (no unwind data) */
    __asm__ volatile("leaq 1f(%%rip), %%rax\n\t"
                     "movl $64, %%ecx\n"
                     "0: pushq %%rax\n\t"
                     "loop 0b\n"
                     "1: movl 0x10, %%eax" ::: "memory", "rax", "rcx");
#else
    void *record[2];
    record[0] = record; /* Next: itself */
    record[1] = (void *)search_on;
    __asm__ volatile("movl %0, %%fs:0\n\t"
                     "movl 0x10, %%eax" ::"r"(record) : "memory", "eax");
#endif
    return 0;
}

/* ---- NtContinue and NtRaiseException with garbage ---- */

static unsigned int seed = 12345;
static unsigned int next_random(void) {
    seed = seed * 1103515245u + 12345u;
    return seed >> 8;
}

static int continue_random(void) {
    static unsigned char buf[sizeof(CONTEXT) + 64] __attribute__((aligned(16)));
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (unsigned char)next_random();
    say("continue-random");
    LONG status = ((NtContinueFn)ntdll("NtContinue"))((CONTEXT *)buf, FALSE);
    printf("returned %08lx\n", status);
    return 0;
}

static int continue_zero(void) {
    static CONTEXT ctx __attribute__((aligned(16)));
    memset(&ctx, 0, sizeof ctx);
    RtlCaptureContext(&ctx);
    ctx.ContextFlags = CONTEXT_FULL;
    PC(&ctx) = 0;
    SP(&ctx) = 0;
    say("continue-zero");
    LONG status = ((NtContinueFn)ntdll("NtContinue"))(&ctx, FALSE);
    printf("returned %08lx\n", status);
    return 0;
}

static int continue_unaligned(void) {
    static unsigned char buf[sizeof(CONTEXT) + 64] __attribute__((aligned(16)));
    static volatile int resumed;
    NtContinueFn nt_continue = (NtContinueFn)ntdll("NtContinue");
    CONTEXT here;
    RtlCaptureContext(&here);
    if (resumed) {
        say("resumed");
        return 0;
    }
    resumed = 1;
    here.ContextFlags = CONTEXT_FULL;
    memcpy(buf + 3, &here, sizeof here);
    say("continue-unaligned");
    printf("unaligned context %08lx\n", nt_continue((CONTEXT *)(buf + 3), FALSE));
    SP(&here) = (SP(&here) - 0x100) | 3; /* then an unaligned stack pointer */
    printf("returned %08lx\n", nt_continue(&here, FALSE));
    return 0;
}

static LONG CALLBACK veh_raised(EXCEPTION_POINTERS *ep) {
    EXCEPTION_RECORD *rec = ep->ExceptionRecord;
    if ((rec->ExceptionCode & 0xFFFF0000) != 0xE0480000)
        return EXCEPTION_CONTINUE_SEARCH;
    printf("raised code=%08lx params=%lu chained=%d\n", rec->ExceptionCode,
           rec->NumberParameters, rec->ExceptionRecord == rec);
    return EXCEPTION_CONTINUE_EXECUTION;
}

static int raise_garbage(void) {
    NtRaiseExceptionFn raise = (NtRaiseExceptionFn)ntdll("NtRaiseException");
    static EXCEPTION_RECORD rec;
    CONTEXT ctx;
    AddVectoredExceptionHandler(1, veh_raised);
    say("raise-garbage");
    RtlCaptureContext(&ctx);
    memset(&rec, 0, sizeof rec);
    rec.ExceptionCode = 0xE0480001;
    rec.NumberParameters = 0xFFFFFFFF;
    printf("huge %08lx\n", raise(&rec, &ctx, TRUE));
    rec.NumberParameters = 0x10;
    printf("sixteen %08lx\n", raise(&rec, &ctx, TRUE));
    printf("bad-record %08lx\n", raise((EXCEPTION_RECORD *)0x10, &ctx, TRUE));
    rec.NumberParameters = 1;
    printf("bad-context %08lx\n", raise(&rec, (CONTEXT *)0x10, TRUE));
    /* a record chained to itself, 15 parameters, raised from here (a valid CONTEXT that
       resumes at the printf after the call: captured just before) */
    rec.NumberParameters = 15;
    rec.ExceptionRecord = &rec;
    rec.ExceptionCode = 0xE0480002;
    volatile int resumed = 0;
    RtlCaptureContext(&ctx);
    if (!resumed) {
        resumed = 1;
        LONG status = raise(&rec, &ctx, TRUE);
        printf("chained returned %08lx\n", status);
    }
    printf("chained resumed\n");
    return 0;
}

static volatile DWORD raised_params[8];
static volatile int raised_count;

static LONG CALLBACK veh_count(EXCEPTION_POINTERS *ep) {
    if ((ep->ExceptionRecord->ExceptionCode & 0xFFFF0000) != 0xE0480000)
        return EXCEPTION_CONTINUE_SEARCH;
    raised_params[raised_count++ & 7] = ep->ExceptionRecord->NumberParameters;
    return EXCEPTION_CONTINUE_EXECUTION;
}

static int raise_params(void) {
    ULONG_PTR args[20];
    for (int i = 0; i < 20; i++)
        args[i] = 0x100 + i;
    AddVectoredExceptionHandler(1, veh_count);
    say("raise-params");
    RaiseException(0xE0480010, 0, 0, NULL);
    RaiseException(0xE0480011, 0, 20, args);
    RaiseException(0xE0480012, 0, 3, NULL);
    printf("params %lu %lu %lu\n", raised_params[0], raised_params[1], raised_params[2]);
    return 0;
}

/* ---- wild jumps ---- */

static int jump(const char *mode) {
    void (*target)(void) = NULL;
    if (!strcmp(mode, "jump-nx"))
        target = (void (*)(void))VirtualAlloc(NULL, 4096, MEM_COMMIT, PAGE_READWRITE);
    else if (!strcmp(mode, "jump-teb"))
        target = (void (*)(void))((char *)NtCurrentTeb() + 0x100);
    say(mode);
    target();
    say("returned");
    return 0;
}

static int stack_limits(void) {
    NT_TIB *tib = (NT_TIB *)NtCurrentTeb();
    say("stack-limits");
    tib->StackBase = (void *)0x1000;
    tib->StackLimit = (void *)0x7FFF0000;
    return load_through((volatile int *)0x10);
}

static volatile int depth;
static __attribute__((noinline)) int recurse(int n) {
    volatile char pad[2000];
    pad[0] = (char)n;
    depth = n;
    return recurse(n + 1) + pad[0];
}

/* ---- traps and privileged instructions ---- */

static volatile int skip_bytes;
static volatile DWORD privileged_codes[8];
static volatile int privileged_count;

static LONG CALLBACK veh_skip(EXCEPTION_POINTERS *ep) {
    if (!skip_bytes)
        return EXCEPTION_CONTINUE_SEARCH;
    privileged_codes[privileged_count++ & 7] = ep->ExceptionRecord->ExceptionCode;
    PC(ep->ContextRecord) += skip_bytes;
    return EXCEPTION_CONTINUE_EXECUTION;
}

/* port I/O alone in a function: heapemu cannot stop the rest of an `in`/`out`'s basic block
   from running (its registers are put back, its stores stay done), so no store follows */
static __attribute__((noinline)) void port_in(void) {
    __asm__ volatile("inb %%dx, %%al" ::"d"(0x60) : "eax");
}

static __attribute__((noinline)) void port_out(void) {
    __asm__ volatile("outb %%al, %%dx" ::"d"(0x80), "a"(0));
}

static int privileged(void) {
    AddVectoredExceptionHandler(1, veh_skip);
    say("privileged");
    skip_bytes = 1;
    __asm__ volatile("cli");
    __asm__ volatile("hlt");
    port_in();
    port_out();
    skip_bytes = 3;
    __asm__ volatile(".byte 0x0f, 0x20, 0xc0" ::: "eax"); /* mov eax/rax, cr0 */
    skip_bytes = 2;
    __asm__ volatile("wrmsr" ::"c"(0x10), "a"(0), "d"(0));
    skip_bytes = 0;
    printf("handled %d:", privileged_count);
    for (int i = 0; i < privileged_count && i < 8; i++)
        printf(" %08lx", privileged_codes[i]);
    printf("\n");
    say("unhandled hlt");
    __asm__ volatile("hlt");
    return 0;
}

/* ---- threads ---- */

static DWORD WINAPI faulting_thread(void *arg) {
    (void)arg;
    say("thread faults");
    return (DWORD)load_through((volatile int *)0x10);
}

static volatile LONG in_heap;

static DWORD WINAPI exiting_thread(void *arg) {
    (void)arg;
    while (!in_heap)
        SwitchToThread();
    say("thread exits");
    ExitProcess(7);
}

static DWORD WINAPI terminating_thread(void *arg) {
    (void)arg;
    TerminateThread(GetCurrentThread(), 5);
    say("still running");
    return 1;
}

static int threads(const char *mode) {
    say(mode);
    if (!strcmp(mode, "thread-fault")) {
        HANDLE t = CreateThread(NULL, 0, faulting_thread, NULL, 0, NULL);
        WaitForSingleObject(t, INFINITE);
        say("wait returned");
        return 0;
    }
    if (!strcmp(mode, "exit-in-heap")) {
        HANDLE heap = GetProcessHeap();
        CreateThread(NULL, 0, exiting_thread, NULL, 0, NULL);
        for (unsigned i = 0;; i++) {
            void *p = HeapAlloc(heap, 0, 16 + (i % 512));
            in_heap = 1;
            HeapFree(heap, 0, p);
        }
    }
    HANDLE t = CreateThread(NULL, 0, terminating_thread, NULL, 0, NULL);
    DWORD code = 0;
    WaitForSingleObject(t, INFINITE);
    GetExitCodeThread(t, &code);
    printf("thread exit code %lu\n", code);
    TerminateThread(GetCurrentThread(), 6);
    say("main still running");
    return 1;
}

/* ---- memory the process stands on ---- */

static int free_peb(void) {
    void *teb = NtCurrentTeb();
#ifdef _WIN64
    void *peb = (void *)__readgsqword(0x60);
#else
    void *peb = (void *)__readfsdword(0x30);
#endif
    NT_TIB *tib = (NT_TIB *)teb;
    MEMORY_BASIC_INFORMATION mbi;
    VirtualQuery(&mbi, &mbi, sizeof mbi);
    DWORD old;
    say("free-peb");
    BOOL ok = VirtualFree(peb, 0, MEM_RELEASE);
    printf("peb %d %lu\n", ok, GetLastError());
    ok = VirtualFree(teb, 0, MEM_RELEASE);
    printf("teb %d %lu\n", ok, GetLastError());
    ok = VirtualFree(teb, 4096, MEM_DECOMMIT);
    printf("teb-decommit %d %lu\n", ok, GetLastError());
    ok = VirtualProtect(teb, 4096, PAGE_NOACCESS, &old);
    printf("teb-protect %d %lu\n", ok, GetLastError());
    printf("teb-self %d\n", tib->Self == tib);
    say("stack");
    ok = VirtualFree(mbi.AllocationBase, 0, MEM_RELEASE);
    printf("stack %d %lu\n", ok, GetLastError());
    return 0;
}

/* global, so it keeps the cdecl ABI (gcc may pass a static function's arguments in
   registers): the test calls it from Python after each run */
int __cdecl callee(int x);
__attribute__((noinline)) int __cdecl callee(int x) {
    volatile int y = x;
    return y + 1;
}

static int noaccess_stack(void) {
    MEMORY_BASIC_INFORMATION mbi;
    DWORD old;
    VirtualQuery(&mbi, &mbi, sizeof mbi);
    say("noaccess-stack");
    BOOL ok = VirtualProtect(mbi.BaseAddress, mbi.RegionSize, PAGE_NOACCESS, &old);
    return callee(ok); /* printing would need the stack: the call is the hostile act */
}

typedef DWORD(WINAPI *Crc32Fn)(DWORD, const void *, DWORD);

static int cow_ntdll(void) {
    unsigned char *code = (unsigned char *)ntdll("RtlComputeCrc32");
#ifdef _WIN64
    static const unsigned char patch[] = {0xB8, 42, 0, 0, 0, 0xC3}; /* mov eax, 42; ret */
#else
    static const unsigned char patch[] = {0xB8, 42, 0, 0, 0, 0xC2, 12, 0}; /* ...; ret 12 */
#endif
    DWORD old;
    printf("writable %d\n", !IsBadWritePtr(code, 1));
    say("cow-ntdll");
    BOOL ok = VirtualProtect(code, sizeof patch, PAGE_EXECUTE_READWRITE, &old);
    memcpy(code, patch, sizeof patch);
    printf("protect %d old %lx patched %lu\n", ok, old, ((Crc32Fn)code)(0, "x", 1));
    MEMORY_BASIC_INFORMATION mbi;
    VirtualQuery(code, &mbi, sizeof mbi);
    printf("now %lx type %lx\n", mbi.Protect, mbi.Type);
    return 0;
}

static int close_handles(void) {
    say("close-handles");
    int closed = 0;
    for (ULONG_PTR h = 0; h <= 0x1000; h++)
        closed += CloseHandle((HANDLE)h) != 0;
    printf("after closed=%d\n", closed);
    fprintf(stderr, "stderr after\n");
    exit(3);
}

static int writefile_huge(void) {
    HANDLE out = GetStdHandle(STD_OUTPUT_HANDLE);
    DWORD n = 12345;
    char *page = VirtualAlloc(NULL, 4096, MEM_COMMIT, PAGE_READWRITE);
    memset(page, 'x', 4096);
    say("writefile-huge");
    struct {
        const void *buffer;
        DWORD length;
    } cases[] = {
        {NULL, 0xFFFFFFFF}, {(void *)0x10, 0x7FFFFFFF}, {page, 0xFFFFFFFF},
        {page, 4097}, {page + 4095, 2}, {(void *)-1, 16},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        n = 12345;
        SetLastError(0);
        BOOL ok = WriteFile(out, cases[i].buffer, cases[i].length, &n, NULL);
        printf("\ncase %u ok %d written %lu error %lu\n", (unsigned)i, ok, n, GetLastError());
    }
    return 0;
}

static int heap_corrupt(void) {
    HANDLE heap = HeapCreate(0, 0, 0);
    char *a = HeapAlloc(heap, 0, 32), *b = HeapAlloc(heap, 0, 32);
    say("heap-corrupt");
    printf("free %d\n", HeapFree(heap, 0, a));
    printf("double free %d\n", HeapFree(heap, 0, a));
    memset(b, 0x41, 128); /* over b's neighbours' headers */
    for (int i = 0; i < 100; i++) {
        void *p = HeapAlloc(heap, 0, 8 + i * 8);
        if (p)
            HeapFree(heap, 0, p);
    }
    printf("validate %d\n", HeapValidate(heap, 0, NULL));
    void *m = malloc(100);
    free(m);
    printf("destroy %d\n", HeapDestroy(heap));
    return 0;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    setvbuf(stdout, NULL, _IONBF, 0);
    if (!strcmp(mode, "nested")) return nested(veh_nested, mode);
    if (!strcmp(mode, "nested-forever")) return nested(veh_nested_forever, mode);
    if (!strcmp(mode, "continue-forever")) return nested(veh_continue, mode);
    if (!strcmp(mode, "seh-garbage")) return seh_garbage();
    if (!strcmp(mode, "seh-loop")) return seh_loop();
    if (!strcmp(mode, "continue-random")) return continue_random();
    if (!strcmp(mode, "continue-zero")) return continue_zero();
    if (!strcmp(mode, "continue-unaligned")) return continue_unaligned();
    if (!strcmp(mode, "raise-garbage")) return raise_garbage();
    if (!strcmp(mode, "raise-params")) return raise_params();
    if (!strncmp(mode, "jump-", 5)) return jump(mode);
    if (!strcmp(mode, "stack-limits")) return stack_limits();
    if (!strcmp(mode, "overflow")) {
        say(mode);
        return recurse(0);
    }
    if (!strcmp(mode, "fastfail")) {
        say(mode);
        __asm__ volatile("int $0x29" ::"c"(7));
        say("returned");
        return 0;
    }
    if (!strcmp(mode, "int80")) {
        AddVectoredExceptionHandler(1, veh_skip);
        say(mode);
        skip_bytes = 2;
        __asm__ volatile("int $0x80");
        skip_bytes = 0;
        printf("handled %d: %08lx\n", privileged_count, privileged_codes[0]);
        say("unhandled int 0x80");
        __asm__ volatile("int $0x80");
        return 0;
    }
    if (!strcmp(mode, "ud2")) {
        say(mode);
        __asm__ volatile("ud2");
        return 0;
    }
    if (!strcmp(mode, "privileged")) return privileged();
    if (!strcmp(mode, "thread-fault") || !strcmp(mode, "exit-in-heap") ||
        !strcmp(mode, "terminate-self"))
        return threads(mode);
    if (!strcmp(mode, "free-peb")) return free_peb();
    if (!strcmp(mode, "noaccess-stack")) return noaccess_stack();
    if (!strcmp(mode, "cow-ntdll")) return cow_ntdll();
    if (!strcmp(mode, "close-handles")) return close_handles();
    if (!strcmp(mode, "writefile-huge")) return writefile_huge();
    if (!strcmp(mode, "heap-corrupt")) return heap_corrupt();
    printf("unknown mode %s\n", mode);
    return 2;
}
