/* Threads and synchronisation through Wine's kernel32/kernelbase/ntdll (issue 16 cause 7).
 * One mode per run, chosen by argv[1]; every check prints "<name> <hex value>".
 *
 *   threads.exe basic          thread creation, joins, exit codes, TLS, events, semaphores,
 *                              mutexes (recursion, abandonment), critical sections, Sleep
 *   threads.exe heap N OPS     N threads, each OPS random HeapAlloc/HeapFree on one heap
 *   threads.exe deadlock       two threads each waiting for the other's mutex
 *   threads.exe exit           ExitProcess from a worker while main waits forever
 *   threads.exe last           TerminateThread on a spinning thread; main ends with
 *                              ExitThread and the last thread's return ends the process
 *   threads.exe apc            user APCs (QueueUserAPC): alertable SleepEx/waits, a
 *                              non-alertable wait that does not run them, NtTestAlert,
 *                              NtAlertThread, a CREATE_SUSPENDED thread's APC before its start
 *   threads.exe context        Get/SetThreadContext on suspended threads (one never run, one
 *                              stopped while spinning), suspend counts
 *   threads.exe ntcreate       NtCreateThread with a stack and CONTEXT of the program's own
 *   threads.exe stacks         thread stacks of the sizes asked (CreateThread's commit and
 *                              reservation, RtlCreateUserThread's ZeroBits), growth, and a
 *                              stack of the program's own that the TEB is pointed at, a
 *                              guard page set in the stack moving StackLimit
 */
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void show(const char *what, unsigned long long value) {
    printf("%s %llx\n", what, value);
}

/* ------------------------------------------------------------------ basic */
static DWORD tls_index;
static volatile LONG attached;
static CRITICAL_SECTION counter_lock;
static LONG counter;
static HANDLE ping, pong, sem, mutex;

static DWORD WINAPI returns_arg(void *arg) {
    TlsSetValue(tls_index, arg);
    Sleep(1);
    return (DWORD)(ULONG_PTR)TlsGetValue(tls_index) + 0x100;
}

static DWORD WINAPI exits_thread(void *arg) {
    ExitThread(0x77);
    return 0;
}

static DWORD WINAPI adder(void *arg) {
    for (int i = 0; i < 2000; i++) {
        EnterCriticalSection(&counter_lock);
        LONG v = counter;
        if (i % 97 == 0) SwitchToThread(); /* give another thread the lock's waiting side */
        counter = v + 1;
        LeaveCriticalSection(&counter_lock);
    }
    return 0;
}

static DWORD WINAPI ponger(void *arg) {
    for (int i = 0; i < 5; i++) {
        WaitForSingleObject(ping, INFINITE); /* auto-reset: one wake per SetEvent */
        SetEvent(pong);
    }
    return 5;
}

static DWORD WINAPI sem_taker(void *arg) {
    DWORD r = WaitForSingleObject(sem, INFINITE);
    return r == WAIT_OBJECT_0 ? 1 : 0x100 + r;
}

static DWORD WINAPI mutex_abandoner(void *arg) {
    WaitForSingleObject(mutex, INFINITE);
    return 9; /* ends owning the mutex */
}

static DWORD WINAPI sleeper(void *arg) {
    Sleep(50);
    SetEvent((HANDLE)arg);
    return 0;
}

/* keyed events: NtReleaseKeyedEvent and NtWaitForKeyedEvent meet by key */
typedef LONG(NTAPI *keyed_create_fn)(HANDLE *, ACCESS_MASK, void *, ULONG);
typedef LONG(NTAPI *keyed_fn)(HANDLE, void *, BOOLEAN, LARGE_INTEGER *);
static keyed_fn wait_keyed, release_keyed;
static HANDLE keyed;

static DWORD WINAPI keyed_releaser(void *arg) {
    return (DWORD)release_keyed(keyed, (void *)0x10, FALSE, NULL); /* until main waits */
}

static void keyed_events(void) {
    HMODULE nt = GetModuleHandleA("ntdll.dll");
    keyed_create_fn create = (keyed_create_fn)GetProcAddress(nt, "NtCreateKeyedEvent");
    wait_keyed = (keyed_fn)GetProcAddress(nt, "NtWaitForKeyedEvent");
    release_keyed = (keyed_fn)GetProcAddress(nt, "NtReleaseKeyedEvent");
    show("keyed-create", (unsigned long)create(&keyed, 0xF0003, NULL, 0));
    LARGE_INTEGER zero = {0};
    show("keyed-release-alone", (unsigned long)release_keyed(keyed, (void *)0x10, FALSE, &zero));
    HANDLE t = CreateThread(NULL, 0, keyed_releaser, NULL, 0, NULL);
    Sleep(5);
    show("keyed-other-key", (unsigned long)wait_keyed(keyed, (void *)0x20, FALSE, &zero));
    show("keyed-wait", (unsigned long)wait_keyed(keyed, (void *)0x10, FALSE, NULL));
    DWORD code;
    WaitForSingleObject(t, INFINITE);
    GetExitCodeThread(t, &code);
    show("keyed-released", code);
    CloseHandle(t);
}

static void basic(void) {
    tls_index = TlsAlloc();
    HANDLE t[4];
    DWORD id, code;
    for (int i = 0; i < 4; i++) t[i] = CreateThread(NULL, 0, returns_arg, (void *)(ULONG_PTR)i, 0, &id);
    show("wait-all", WaitForMultipleObjects(4, t, TRUE, INFINITE));
    for (int i = 0; i < 4; i++) {
        GetExitCodeThread(t[i], &code);
        printf("exit-code-%d %lx\n", i, code);
        CloseHandle(t[i]);
    }
    HANDLE e = CreateThread(NULL, 0, exits_thread, NULL, CREATE_SUSPENDED, NULL);
    GetExitCodeThread(e, &code);
    show("suspended-still-active", code);
    show("wait-suspended-timeout", WaitForSingleObject(e, 0));
    show("resume-previous", ResumeThread(e));
    show("wait-exit-thread", WaitForSingleObject(e, INFINITE));
    GetExitCodeThread(e, &code);
    show("exit-thread-code", code);
    CloseHandle(e);

    InitializeCriticalSection(&counter_lock);
    HANDLE a[3];
    for (int i = 0; i < 3; i++) a[i] = CreateThread(NULL, 0, adder, NULL, 0, NULL);
    WaitForMultipleObjects(3, a, TRUE, INFINITE);
    show("critical-section-counter", counter);
    for (int i = 0; i < 3; i++) CloseHandle(a[i]);

    ping = CreateEventA(NULL, FALSE, FALSE, NULL);
    pong = CreateEventA(NULL, FALSE, FALSE, NULL);
    HANDLE p = CreateThread(NULL, 0, ponger, NULL, 0, NULL);
    int rounds = 0;
    for (int i = 0; i < 5; i++) {
        SetEvent(ping);
        if (WaitForSingleObject(pong, INFINITE) == WAIT_OBJECT_0) rounds++;
    }
    show("ping-pong-rounds", rounds);
    show("ping-pong-join", WaitForSingleObject(p, INFINITE));
    show("event-poll-timeout", WaitForSingleObject(pong, 0));
    HANDLE manual = CreateEventA(NULL, TRUE, TRUE, NULL);
    show("manual-stays-set", WaitForSingleObject(manual, 0) + WaitForSingleObject(manual, 0));
    ResetEvent(manual);
    show("manual-reset", WaitForSingleObject(manual, 10));
    HANDLE any[2] = {pong, manual};
    SetEvent(manual);
    show("wait-any-index", WaitForMultipleObjects(2, any, FALSE, INFINITE));
    show("pulse-no-waiter", PulseEvent(pong) && WaitForSingleObject(pong, 0) == WAIT_TIMEOUT);

    sem = CreateSemaphoreA(NULL, 0, 2, NULL);
    HANDLE s[3];
    for (int i = 0; i < 3; i++) s[i] = CreateThread(NULL, 0, sem_taker, NULL, 0, NULL);
    Sleep(5);
    LONG previous = -1;
    show("sem-release-2", ReleaseSemaphore(sem, 2, &previous));
    show("sem-previous", previous);
    show("sem-over-limit", ReleaseSemaphore(sem, 3, NULL) ? 0 : GetLastError());
    show("sem-one-left-waiting", WaitForMultipleObjects(3, s, TRUE, 20));
    ReleaseSemaphore(sem, 1, NULL);
    show("sem-all-taken", WaitForMultipleObjects(3, s, TRUE, INFINITE));

    mutex = CreateMutexA(NULL, TRUE, NULL);
    show("mutex-recursive", WaitForSingleObject(mutex, 0));
    show("mutex-release-1", ReleaseMutex(mutex));
    show("mutex-release-2", ReleaseMutex(mutex));
    show("mutex-release-not-owner", ReleaseMutex(mutex) ? 0 : GetLastError());
    HANDLE m = CreateThread(NULL, 0, mutex_abandoner, NULL, 0, NULL);
    WaitForSingleObject(m, INFINITE);
    show("mutex-abandoned", WaitForSingleObject(mutex, INFINITE));
    show("mutex-owned-after-abandon", WaitForSingleObject(mutex, 0));
    ReleaseMutex(mutex);
    ReleaseMutex(mutex);

    HANDLE done = CreateEventA(NULL, TRUE, FALSE, NULL);
    HANDLE sl = CreateThread(NULL, 0, sleeper, done, 0, NULL);
    show("sleeper-not-yet", WaitForSingleObject(done, 10));
    show("sleeper-done", WaitForSingleObject(done, INFINITE));
    WaitForSingleObject(sl, INFINITE);
    keyed_events();
    show("thread-attach-count", attached);
    TlsFree(tls_index);
}

/* DLL_THREAD_ATTACH / DETACH as Wine's loader delivers them: through the program's TLS
 * callbacks (mingw's tlssup runs the .CRT$XL* entries) */
static volatile LONG detached;
static void NTAPI tls_callback(PVOID module, DWORD reason, PVOID reserved) {
    if (reason == DLL_THREAD_ATTACH) InterlockedIncrement(&attached);
    if (reason == DLL_THREAD_DETACH) InterlockedIncrement(&detached);
}
PIMAGE_TLS_CALLBACK threads_tls_callback __attribute__((section(".CRT$XLF"), used)) = tls_callback;

/* ------------------------------------------------------------------ heap */
static HANDLE shared_heap;
static int ops_per_thread;

typedef struct {
    unsigned seed;
    unsigned long long checksum;
} worker_t;

static unsigned next_random(unsigned *state) {
    *state = *state * 1103515245u + 12345u; /* the thread's own generator: no shared state */
    return *state >> 8;
}

static DWORD WINAPI heap_worker(void *arg) {
    worker_t *w = arg;
    enum { SLOTS = 64 };
    unsigned char *slot[SLOTS] = {0};
    SIZE_T size[SLOTS] = {0};
    for (int i = 0; i < ops_per_thread; i++) {
        unsigned r = next_random(&w->seed);
        int k = r % SLOTS;
        if (slot[k]) {
            /* the block still holds the pattern written at allocation (every 32nd byte and
             * the last are checked): no other thread got or wrote it meanwhile */
            unsigned char want = (unsigned char)(k + size[k]);
            for (SIZE_T j = 0; j < size[k]; j += 32)
                if (slot[k][j] != want) return 0xBAD;
            if (slot[k][size[k] - 1] != want) return 0xBAD;
            w->checksum += (ULONG_PTR)slot[k] & 0xFFFF;
            if (!HeapFree(shared_heap, 0, slot[k])) return 0xF3EE;
            slot[k] = NULL;
        } else {
            size[k] = 1 + (r >> 8) % ((r & 0x100) ? 2000 : 100);
            slot[k] = HeapAlloc(shared_heap, 0, size[k]);
            if (!slot[k]) return 0xA110C;
            memset(slot[k], (unsigned char)(k + size[k]), size[k]);
        }
    }
    for (int k = 0; k < SLOTS; k++)
        if (slot[k] && (k & 1)) HeapFree(shared_heap, 0, slot[k]); /* the even ones stay live */
    return 0;
}

static void heap(int threads, int ops) {
    ops_per_thread = ops;
    shared_heap = HeapCreate(0, 0, 0); /* serialised: the heap's own lock */
    HANDLE t[64];
    worker_t w[64];
    for (int i = 0; i < threads; i++) {
        w[i].seed = 1000 + i;
        w[i].checksum = 0;
        t[i] = CreateThread(NULL, 0, heap_worker, &w[i], 0, NULL);
    }
    show("heap-join", WaitForMultipleObjects(threads, t, TRUE, INFINITE));
    for (int i = 0; i < threads; i++) {
        DWORD code;
        GetExitCodeThread(t[i], &code);
        printf("worker-%d %lx %llx\n", i, code, w[i].checksum);
        CloseHandle(t[i]);
    }
    show("heap-validate", HeapValidate(shared_heap, 0, NULL));
    PROCESS_HEAP_ENTRY entry = {0};
    int busy = 0;
    while (HeapWalk(shared_heap, &entry))
        if (entry.wFlags & PROCESS_HEAP_ENTRY_BUSY) busy++;
    show("heap-busy-blocks", busy);
}

/* ------------------------------------------------------------------ deadlock, exit */
static HANDLE first, second;

static DWORD WINAPI takes_second_then_first(void *arg) {
    WaitForSingleObject(second, INFINITE);
    SetEvent((HANDLE)arg);
    WaitForSingleObject(first, INFINITE);
    return 0;
}

static void deadlock(void) {
    first = CreateMutexA(NULL, TRUE, NULL);
    second = CreateMutexA(NULL, FALSE, NULL);
    HANDLE ready = CreateEventA(NULL, FALSE, FALSE, NULL);
    HANDLE t = CreateThread(NULL, 0, takes_second_then_first, ready, 0, NULL);
    WaitForSingleObject(ready, INFINITE);
    show("deadlock-begins", 1);
    fflush(stdout);
    WaitForSingleObject(second, INFINITE);
    show("never-printed", 1);
    WaitForSingleObject(t, INFINITE);
}

static DWORD WINAPI exits_process(void *arg) {
    Sleep(1);
    ExitProcess(0x2A);
    return 0;
}

static volatile LONG spin_forever = 1;

static DWORD WINAPI spinner(void *arg) {
    while (spin_forever) /* no system call: only the quantum ends its turns */
        ;
    return 0;
}

static DWORD WINAPI outlives_main(void *arg) {
    Sleep(20);
    printf("last-thread-runs 1\n");
    return 9; /* the process's exit code: its last thread's */
}

static void last(void) {
    HANDLE s = CreateThread(NULL, 0, spinner, NULL, 0, NULL);
    Sleep(1);
    show("terminate-other", TerminateThread(s, 0x55));
    show("terminated-wait", WaitForSingleObject(s, INFINITE));
    DWORD code;
    GetExitCodeThread(s, &code);
    show("terminated-code", code);
    CreateThread(NULL, 0, outlives_main, NULL, 0, NULL);
    ExitThread(7);
}

/* ------------------------------------------------------------------ apc */
static volatile LONG apc_count;
static volatile ULONG_PTR apc_last_arg;
static volatile DWORD apc_last_tid;
static volatile LONG apc_order; /* each APC shifts its argument in */

static void CALLBACK record_apc(ULONG_PTR arg) {
    apc_count++;
    apc_last_arg = arg;
    apc_last_tid = GetCurrentThreadId();
    apc_order = apc_order * 16 + (LONG)(arg & 0xF);
}

typedef LONG(NTAPI *nt0_fn)(void);
typedef LONG(NTAPI *nt1_fn)(HANDLE);
typedef LONG(NTAPI *alert_resume_fn)(HANDLE, ULONG *);
static HANDLE apc_event;
static volatile LONG worker_saw;

static DWORD WINAPI waits_then_sleeps_alertably(void *arg) {
    WaitForSingleObject(apc_event, INFINITE); /* not alertable: the queued APC waits */
    worker_saw = apc_count;
    return SleepEx(INFINITE, TRUE); /* alertable: it runs, and ends the sleep */
}

static DWORD WINAPI waits_alertably(void *arg) {
    return WaitForSingleObjectEx(apc_event, INFINITE, TRUE);
}

static DWORD WINAPI reports_apcs_at_start(void *arg) {
    return (DWORD)apc_count; /* its APC ran before its start routine */
}

static void apc(void) {
    HMODULE nt = GetModuleHandleA("ntdll.dll");
    nt0_fn test_alert = (nt0_fn)GetProcAddress(nt, "NtTestAlert");
    nt1_fn alert_thread = (nt1_fn)GetProcAddress(nt, "NtAlertThread");
    alert_resume_fn alert_resume = (alert_resume_fn)GetProcAddress(nt, "NtAlertResumeThread");
    DWORD me = GetCurrentThreadId();

    show("self-queue", QueueUserAPC(record_apc, GetCurrentThread(), 0x51));
    show("self-not-yet", apc_count);
    show("self-sleepex", SleepEx(INFINITE, TRUE)); /* WAIT_IO_COMPLETION */
    show("self-ran", apc_count);
    show("self-arg", apc_last_arg);
    show("self-tid", apc_last_tid == me);

    apc_count = 0, apc_order = 0;
    QueueUserAPC(record_apc, GetCurrentThread(), 1);
    QueueUserAPC(record_apc, GetCurrentThread(), 2);
    show("two-sleepex-0", SleepEx(0, TRUE)); /* both run, in order, through NtContinue */
    show("two-order", apc_order);
    show("no-apc-sleepex", SleepEx(10, TRUE));

    apc_count = 0;
    QueueUserAPC(record_apc, GetCurrentThread(), 3);
    show("test-alert-runs", test_alert());
    show("test-alert-ran", apc_count);
    show("alert-self", alert_thread(GetCurrentThread()));
    show("test-alert-alerted", test_alert()); /* STATUS_ALERTED, consumed */
    show("test-alert-again", test_alert());
    alert_thread(GetCurrentThread());
    HANDLE never = CreateEventA(NULL, TRUE, FALSE, NULL);
    show("alerted-wait", WaitForSingleObjectEx(never, INFINITE, TRUE)); /* STATUS_ALERTED */
    CloseHandle(never);

    /* an APC queued to a thread in a non-alertable wait waits for an alertable one */
    apc_count = 0;
    apc_event = CreateEventA(NULL, FALSE, FALSE, NULL);
    DWORD tid;
    HANDLE t = CreateThread(NULL, 0, waits_then_sleeps_alertably, NULL, 0, &tid);
    Sleep(5);
    show("worker-queue", QueueUserAPC(record_apc, t, 0x77));
    Sleep(5);
    show("worker-not-run-while-not-alertable", apc_count);
    SetEvent(apc_event);
    show("worker-join", WaitForSingleObject(t, INFINITE));
    DWORD code;
    GetExitCodeThread(t, &code);
    show("worker-saw-before-alertable", worker_saw);
    show("worker-sleepex", code);
    show("worker-apc-arg", apc_last_arg);
    show("worker-apc-tid", apc_last_tid == tid);
    CloseHandle(t);

    /* one queued while the thread already waits alertably wakes it */
    apc_count = 0;
    t = CreateThread(NULL, 0, waits_alertably, NULL, 0, &tid);
    Sleep(5);
    QueueUserAPC(record_apc, t, 0x88);
    WaitForSingleObject(t, INFINITE);
    GetExitCodeThread(t, &code);
    show("alertable-wait-woken", code);
    show("alertable-wait-apc", apc_count == 1 && apc_last_tid == tid && apc_last_arg == 0x88);
    CloseHandle(t);

    /* NtAlertThread ends another thread's alertable wait; NtAlertResumeThread a suspended
       one's, returning the previous suspend count */
    t = CreateThread(NULL, 0, waits_alertably, NULL, 0, &tid);
    Sleep(5);
    show("alert-other", alert_thread(t));
    WaitForSingleObject(t, INFINITE);
    GetExitCodeThread(t, &code);
    show("alert-other-woken", code);
    CloseHandle(t);
    t = CreateThread(NULL, 0, waits_alertably, NULL, 0, &tid);
    Sleep(5);
    show("alert-resume-suspend", SuspendThread(t));
    ULONG previous = 0x55;
    show("alert-resume", alert_resume(t, &previous));
    show("alert-resume-previous", previous);
    WaitForSingleObject(t, INFINITE);
    GetExitCodeThread(t, &code);
    show("alert-resume-woken", code);
    CloseHandle(t);

    /* queued to a thread that never ran: it runs as the thread starts */
    apc_count = 0;
    t = CreateThread(NULL, 0, reports_apcs_at_start, NULL, CREATE_SUSPENDED, &tid);
    QueueUserAPC(record_apc, t, 0x99);
    Sleep(5);
    show("suspended-apc-waits", apc_count);
    ResumeThread(t);
    WaitForSingleObject(t, INFINITE);
    GetExitCodeThread(t, &code);
    show("start-apc-before-routine", code);
    show("start-apc-tid", apc_last_tid == tid);
    CloseHandle(t);
}

/* ------------------------------------------------------------------ context */
static volatile LONG spin_count, spin_stop;

static DWORD WINAPI spins(void *arg) {
    while (!spin_stop) spin_count++;
    return 1;
}

static DWORD WINAPI redirected(void) {
    ExitThread(0x99); /* where SetThreadContext sent the spinning thread */
    return 0;
}

static DWORD WINAPI returns_its_arg(void *arg) {
    return (DWORD)(ULONG_PTR)arg;
}

static void context(void) {
    CONTEXT c;
    /* a thread that never ran: RtlUserThreadStart with its routine and argument */
    HANDLE t = CreateThread(NULL, 0, returns_its_arg, (void *)0x10, CREATE_SUSPENDED, NULL);
    memset(&c, 0, sizeof c);
    c.ContextFlags = CONTEXT_FULL;
    show("new-get", GetThreadContext(t, &c));
#ifdef _WIN64
    show("new-start-routine", c.Rcx == (DWORD64)returns_its_arg);
    show("new-start-arg", c.Rdx);
    c.Rdx = 0x4321;
#else
    show("new-start-routine", c.Eax == (DWORD)returns_its_arg);
    show("new-start-arg", c.Ebx);
    c.Ebx = 0x4321;
#endif
    c.ContextFlags = CONTEXT_INTEGER;
    show("new-set", SetThreadContext(t, &c));
    show("new-resume", ResumeThread(t));
    WaitForSingleObject(t, INFINITE);
    DWORD code;
    GetExitCodeThread(t, &code);
    show("new-changed-arg", code);
    CloseHandle(t);

    /* a running thread stopped, its counts, sent elsewhere */
    t = CreateThread(NULL, 0, spins, NULL, 0, NULL);
    while (spin_count < 1000) Sleep(1);
    show("suspend-1", SuspendThread(t));
    show("suspend-2", SuspendThread(t));
    show("resume-2", ResumeThread(t));
    LONG seen = spin_count;
    Sleep(5);
    show("suspended-does-not-run", spin_count == seen);
    memset(&c, 0, sizeof c);
    c.ContextFlags = CONTEXT_CONTROL;
    show("spinner-get", GetThreadContext(t, &c));
#ifdef _WIN64
    show("spinner-in-spins", c.Rip >= (DWORD64)spins && c.Rip < (DWORD64)redirected);
    c.Rip = (DWORD64)redirected;
    c.Rsp = (c.Rsp & ~(DWORD64)15) - 8; /* as at a function's entry */
#else
    show("spinner-in-spins", c.Eip >= (DWORD)spins && c.Eip < (DWORD)redirected);
    c.Eip = (DWORD)redirected;
    c.Esp -= 16;
#endif
    show("spinner-set", SetThreadContext(t, &c));
    show("resume-1", ResumeThread(t));
    show("spinner-join", WaitForSingleObject(t, INFINITE));
    GetExitCodeThread(t, &code);
    show("spinner-redirected", code);
    CloseHandle(t);

    /* the calling thread's own context: its stack */
    memset(&c, 0, sizeof c);
    c.ContextFlags = CONTEXT_CONTROL;
    show("self-get", GetThreadContext(GetCurrentThread(), &c));
    NT_TIB *tib = (NT_TIB *)NtCurrentTeb();
#ifdef _WIN64
    ULONG_PTR sp = c.Rsp;
#else
    ULONG_PTR sp = c.Esp;
#endif
    show("self-sp-on-stack", sp > (ULONG_PTR)tib->StackLimit && sp < (ULONG_PTR)tib->StackBase);
}

/* ------------------------------------------------------------------ ntcreate */
typedef struct {
    void *OldStackBase, *OldStackLimit, *StackBase, *StackLimit, *StackAllocationBase;
} initial_teb_t;
typedef struct {
    HANDLE UniqueProcess, UniqueThread;
} client_id_t;
typedef LONG(NTAPI *create_thread_fn)(HANDLE *, ACCESS_MASK, void *, HANDLE, client_id_t *,
                                       CONTEXT *, initial_teb_t *, BOOLEAN);
static volatile ULONG_PTR old_style_seen;
static volatile DWORD old_style_tls;

static DWORD WINAPI old_style_start(void *arg) {
    TlsSetValue(tls_index, arg); /* Wine's loader gave it TLS */
    old_style_tls = (DWORD)(ULONG_PTR)TlsGetValue(tls_index);
    old_style_seen = (ULONG_PTR)arg;
    ExitThread((DWORD)(ULONG_PTR)arg + 1); /* it has no return address */
    return 0;
}

static void ntcreate(void) {
    create_thread_fn create =
        (create_thread_fn)GetProcAddress(GetModuleHandleA("ntdll.dll"), "NtCreateThread");
    tls_index = TlsAlloc();
    SIZE_T size = 0x100000;
    char *stack = VirtualAlloc(NULL, size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
    char *top = stack + size;
    initial_teb_t teb = {NULL, NULL, top, stack, stack};
    CONTEXT c;
    memset(&c, 0, sizeof c);
    c.ContextFlags = CONTEXT_FULL;
#ifdef _WIN64
    c.Rip = (DWORD64)old_style_start;
    c.Rcx = 0x640;
    c.Rsp = (DWORD64)(top - 0x100 - 8); /* as at a function's entry */
    c.EFlags = 0x202;
#else
    DWORD *sp = (DWORD *)(top - 0x100);
    sp[0] = 0;     /* return address: none */
    sp[1] = 0x320; /* the argument */
    c.Eip = (DWORD)old_style_start;
    c.Esp = (DWORD)sp;
    c.EFlags = 0x202;
#endif
    HANDLE h = NULL;
    client_id_t cid = {0};
    show("ntcreate-status", (unsigned long)create(&h, THREAD_ALL_ACCESS, NULL, GetCurrentProcess(),
                                                  &cid, &c, &teb, TRUE));
    show("ntcreate-tid", (ULONG_PTR)cid.UniqueThread == GetThreadId(h));
    show("ntcreate-not-started", old_style_seen);
    show("ntcreate-resume", ResumeThread(h));
    show("ntcreate-join", WaitForSingleObject(h, INFINITE));
    DWORD code;
    GetExitCodeThread(h, &code);
    show("ntcreate-exit-code", code);
    show("ntcreate-seen", old_style_seen);
    show("ntcreate-tls", old_style_tls);
    show("ntcreate-stack-kept", VirtualFree(stack, 0, MEM_RELEASE)); /* its creator's */
    CloseHandle(h);
    show("ntcreate-no-context", (unsigned long)create(&h, THREAD_ALL_ACCESS, NULL,
                                                      GetCurrentProcess(), NULL, NULL, &teb, 0));
}

/* ------------------------------------------------------------------ stacks */
/* TEB.DeallocationStack: the bottom of the thread's stack reservation */
#ifdef _WIN64
#define DEALLOCATION_STACK 0x1478
#else
#define DEALLOCATION_STACK 0xE0C
#endif
static char *teb_bottom(void) {
    return *(char **)((char *)NtCurrentTeb() + DEALLOCATION_STACK);
}
static void set_teb_bottom(void *value) {
    *(void **)((char *)NtCurrentTeb() + DEALLOCATION_STACK) = value;
}

static volatile ULONG_PTR stack_seen[4]; /* committed, reserved, bottom state, grown */

static void __attribute__((noinline)) deep(void) {
    volatile char buffer[0x8000];
    buffer[0] = 1;
    (void)buffer[0];
}

static DWORD WINAPI measure_stack(void *arg) {
    NT_TIB *tib = (NT_TIB *)NtCurrentTeb();
    MEMORY_BASIC_INFORMATION mbi;
    (void)arg;
    stack_seen[0] = (char *)tib->StackBase - (char *)tib->StackLimit;
    stack_seen[1] = (char *)tib->StackBase - teb_bottom();
    VirtualQuery(teb_bottom(), &mbi, sizeof(mbi));
    stack_seen[2] = mbi.State;
    deep();
    stack_seen[3] = (char *)tib->StackBase - (char *)tib->StackLimit;
    return 0;
}

static void stack_thread(const char *name, SIZE_T size, DWORD flags) {
    char label[64];
    HANDLE h = CreateThread(NULL, size, measure_stack, NULL, flags, NULL);
    WaitForSingleObject(h, INFINITE);
    CloseHandle(h);
    sprintf(label, "%s-committed", name);
    show(label, stack_seen[0]);
    sprintf(label, "%s-reserved", name);
    show(label, stack_seen[1]);
    sprintf(label, "%s-bottom-state", name);
    show(label, stack_seen[2]);
    sprintf(label, "%s-grown", name);
    show(label, stack_seen[3]);
}

typedef LONG (NTAPI *create_user_thread_fn)(HANDLE, void *, BOOLEAN, ULONG, SIZE_T, SIZE_T,
                                              void *, void *, HANDLE *, void *);

/* call_on_stack(func, arg, stack): func(arg) with the stack pointer at `stack` */
DWORD call_on_stack(DWORD (WINAPI *func)(void *), void *arg, void *stack);
#ifdef _WIN64
__asm__(".globl call_on_stack\n"
        "call_on_stack:\n\t"
        "pushq %rbp\n\t"
        "movq %rsp, %rbp\n\t"
        "movq %rcx, %rax\n\t"       /* func */
        "movq %rdx, %rcx\n\t"       /* its argument */
        "andq $-16, %r8\n\t"
        "leaq -0x20(%r8), %rsp\n\t" /* home space */
        "callq *%rax\n\t"
        "movq %rbp, %rsp\n\t"
        "popq %rbp\n\t"
        "ret");
#else
__asm__(".globl _call_on_stack\n"
        "_call_on_stack:\n\t"
        "pushl %ebp\n\t"
        "movl %esp, %ebp\n\t"
        "movl 8(%ebp), %ecx\n\t"    /* func */
        "movl 12(%ebp), %edx\n\t"   /* its argument */
        "movl 16(%ebp), %eax\n\t"
        "andl $-16, %eax\n\t"
        "leal -12(%eax), %esp\n\t"
        "pushl %edx\n\t"
        "call *%ecx\n\t"            /* stdcall: it pops its argument */
        "movl %ebp, %esp\n\t"
        "popl %ebp\n\t"
        "ret");
#endif

static volatile ULONG_PTR lowest_limit;

static DWORD WINAPI walk_down(void *arg) {
    volatile char *p = (volatile char *)&p;
    /* touch every page down to four pages above the bottom: each touches the guard page */
    while (p >= teb_bottom() + 4 * 0x1000) {
        p[0] |= 0;
        p -= 0x1000;
    }
    lowest_limit = (char *)((NT_TIB *)NtCurrentTeb())->StackLimit - teb_bottom();
    return (DWORD)(ULONG_PTR)arg;
}

static void stacks(void) {
    SYSTEM_INFO info;
    GetSystemInfo(&info);
    stack_thread("commit-3f00", 0x3f00, 0);
    stack_thread("reserve-3ff000", 0x3ff000, STACK_SIZE_PARAM_IS_A_RESERVATION);
    stack_thread("commit-280000", 0x280000, 0); /* more than the image's reserve */

    create_user_thread_fn create_user_thread = (create_user_thread_fn)GetProcAddress(
        GetModuleHandleA("ntdll.dll"), "RtlCreateUserThread");
    HANDLE h = NULL;
    ULONG_PTR cid[2];
    LONG status = create_user_thread(GetCurrentProcess(), NULL, FALSE, 0, 0x100000, 0x2000,
                                     (void *)measure_stack, NULL, &h, cid);
    show("rtl-status", (unsigned long)status);
    WaitForSingleObject(h, INFINITE);
    CloseHandle(h);
    show("rtl-committed", stack_seen[0]);
    show("rtl-reserved", stack_seen[1]);
    /* ZeroBits 13: the stack must lie below 0x80000, too small for it */
    status = create_user_thread(GetCurrentProcess(), NULL, FALSE, 13, 0x100000, 0x2000,
                                (void *)measure_stack, NULL, &h, cid);
    show("rtl-zero-bits-13", (unsigned long)status);
    /* a ZeroBits mask: x64 only */
    status = create_user_thread(GetCurrentProcess(), NULL, FALSE, 0x7fffffff, 0x100000, 0x2000,
                                (void *)measure_stack, NULL, &h, cid);
    show("rtl-zero-bits-mask", (unsigned long)status);
    if (!status) {
        WaitForSingleObject(h, INFINITE);
        CloseHandle(h);
    }

    /* a stack of the program's own: reserved, one guard page at its top, named by the TEB */
    char *mine = VirtualAlloc(NULL, 0x100000, MEM_RESERVE, PAGE_READWRITE);
    char *top = mine + 0x100000;
    VirtualAlloc(top - 0x1000, 0x1000, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD);
    NT_TIB *tib = (NT_TIB *)NtCurrentTeb();
    void *old_bottom = teb_bottom(), *old_base = tib->StackBase, *old_limit = tib->StackLimit;
    set_teb_bottom(mine);
    tib->StackBase = top;
    tib->StackLimit = top;
    DWORD result = call_on_stack(walk_down, (void *)42, top);
    set_teb_bottom(old_bottom);
    tib->StackBase = old_base;
    tib->StackLimit = old_limit;
    show("own-stack-result", result);
    show("own-stack-limit", lowest_limit);
    MEMORY_BASIC_INFORMATION mbi;
    VirtualQuery(mine + 0x3000, &mbi, sizeof(mbi));
    show("own-stack-guard", mbi.Protect);
    VirtualFree(mine, 0, MEM_RELEASE);

    /* a guard page set in the committed stack shrinks it: StackLimit moves above the guard */
    char *limit = tib->StackLimit;
    DWORD old;
    VirtualProtect(limit + 0x2000, 0x1000, PAGE_READWRITE | PAGE_GUARD, &old);
    show("guard-set-limit", (char *)tib->StackLimit - limit);
    show("guard-set-old", old);
    VirtualProtect(limit + 0x2000, 0x1000, PAGE_READWRITE, &old);
    show("guard-cleared-limit", (char *)tib->StackLimit - limit); /* not moved back */
    VirtualAlloc(limit + 0x4000, 0x1000, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD);
    show("guard-commit-limit", (char *)tib->StackLimit - limit);
    VirtualProtect(limit + 0x4000, 0x1000, PAGE_READWRITE, &old);
    tib->StackLimit = limit;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    const char *mode = argc > 1 ? argv[1] : "basic";
    if (!strcmp(mode, "basic")) {
        basic();
        show("thread-detach-count", detached);
    } else if (!strcmp(mode, "heap")) {
        heap(argc > 2 ? atoi(argv[2]) : 8, argc > 3 ? atoi(argv[3]) : 10000);
    } else if (!strcmp(mode, "deadlock")) {
        deadlock();
    } else if (!strcmp(mode, "apc")) {
        apc();
    } else if (!strcmp(mode, "ntcreate")) {
        ntcreate();
    } else if (!strcmp(mode, "stacks")) {
        stacks();
    } else if (!strcmp(mode, "context")) {
        context();
    } else if (!strcmp(mode, "last")) {
        last();
    } else if (!strcmp(mode, "exit")) {
        HANDLE never = CreateEventA(NULL, TRUE, FALSE, NULL);
        CreateThread(NULL, 0, exits_process, NULL, 0, NULL);
        WaitForSingleObject(never, INFINITE);
        return 1;
    }
    return 0;
}
