/* What a program learns about the machine and its process through Wine's DLLs: processor
 * features and XState (KUSER_SHARED_DATA), memory status (SystemPerformanceInformation),
 * process memory counters (ProcessVmCounters), the time zone, priority settings
 * (NtSetInformationProcess) and a thread stack made by RtlCreateUserStack. One
 * "<check> <hex value>" line per check. */
#include <windows.h>
#include <psapi.h>
#include <stdio.h>

typedef struct {
    PVOID OldStackBase, OldStackLimit, StackBase, StackLimit, DeallocationStack;
} INITIAL_TEB_;
typedef LONG(WINAPI *create_stack_fn)(SIZE_T, SIZE_T, ULONG, SIZE_T, SIZE_T, INITIAL_TEB_ *);
typedef void(WINAPI *free_stack_fn)(void *);
typedef DWORD64(WINAPI *xstate_fn)(void);

static void show(const char *what, unsigned long long value) {
    printf("%s %llx\n", what, value);
}

int main(void) {
    show("pf-sse2", IsProcessorFeaturePresent(PF_XMMI64_INSTRUCTIONS_AVAILABLE));
    show("pf-nx", IsProcessorFeaturePresent(PF_NX_ENABLED));
    show("pf-rdtsc", IsProcessorFeaturePresent(PF_RDTSC_INSTRUCTION_AVAILABLE));
    show("pf-cx128", IsProcessorFeaturePresent(PF_COMPARE_EXCHANGE128));
    show("pf-3dnow", IsProcessorFeaturePresent(PF_3DNOW_INSTRUCTIONS_AVAILABLE));
    xstate_fn xstate = (xstate_fn)GetProcAddress(GetModuleHandleA("kernel32.dll"),
                                                 "GetEnabledXStateFeatures");
    show("xstate", xstate ? xstate() : 0xdead);
    SYSTEM_INFO si;
    GetSystemInfo(&si);
    show("processors", si.dwNumberOfProcessors);

    MEMORYSTATUSEX ms = {sizeof ms};
    show("memory-status", GlobalMemoryStatusEx(&ms));
    show("total-phys-mib", ms.ullTotalPhys >> 20);
    show("total-pagefile-gib", ms.ullTotalPageFile >> 30);
    show("avail-below-total", ms.ullAvailPhys < ms.ullTotalPhys && ms.ullAvailPhys > 0);

    PROCESS_MEMORY_COUNTERS pmc = {0};
    pmc.cb = sizeof pmc;
    show("memory-info", GetProcessMemoryInfo(GetCurrentProcess(), &pmc, sizeof pmc));
    SIZE_T before = pmc.PagefileUsage, working = pmc.WorkingSetSize;
    char *block = VirtualAlloc(NULL, 0x100000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
    GetProcessMemoryInfo(GetCurrentProcess(), &pmc, sizeof pmc);
    show("pagefile-grew-kib", (pmc.PagefileUsage - before) >> 10);
    show("working-set-grew-kib", (pmc.WorkingSetSize - working) >> 10);
    VirtualFree(block, 0, MEM_RELEASE);

    DYNAMIC_TIME_ZONE_INFORMATION tz;
    GetDynamicTimeZoneInformation(&tz);  /* its id needs the registry's time zone keys */
    show("tz-bias", (unsigned long)tz.Bias);
    show("tz-utc", tz.TimeZoneKeyName[0] == 'U' && tz.TimeZoneKeyName[1] == 'T' &&
                       tz.TimeZoneKeyName[2] == 'C' && tz.TimeZoneKeyName[3] == 0);

    show("set-high", SetPriorityClass(GetCurrentProcess(), HIGH_PRIORITY_CLASS));
    SetLastError(0);
    show("set-affinity-2", SetProcessAffinityMask(GetCurrentProcess(), 2));
    show("set-affinity-2-error", GetLastError());
    show("set-affinity-1", SetProcessAffinityMask(GetCurrentProcess(), 1));

    /* issue 16 cause 5: RtlCreateUserStack asks ProcessThreadStackAllocation for the stack */
    HMODULE ntdll = GetModuleHandleA("ntdll.dll");
    create_stack_fn create = (create_stack_fn)GetProcAddress(ntdll, "RtlCreateUserStack");
    free_stack_fn release = (free_stack_fn)GetProcAddress(ntdll, "RtlFreeUserStack");
    INITIAL_TEB_ stack = {0};
    LONG status = create(0x4000, 0x200000, 0, 0x1000, 0x1000, &stack);
    show("stack-status", (unsigned long)status);
    show("stack-reserve", (char *)stack.StackBase - (char *)stack.DeallocationStack);
    MEMORY_BASIC_INFORMATION mbi;
    VirtualQuery(stack.DeallocationStack, &mbi, sizeof mbi);
    show("stack-allocation-base", mbi.AllocationBase == stack.DeallocationStack);
    show("stack-bottom-state", mbi.State);
    VirtualQuery((char *)stack.StackBase - 0x1000, &mbi, sizeof mbi);
    show("stack-top-state", mbi.State);
    show("stack-top-protect", mbi.Protect);
    release(stack.DeallocationStack);
    VirtualQuery(stack.DeallocationStack, &mbi, sizeof mbi);
    show("stack-freed", mbi.State);
    return 0;
}
