/* The clocks a program reads through Wine's DLLs around Sleep(50): GetTickCount and
 * GetTickCount64 (KUSER_SHARED_DATA.TickCount), QueryPerformanceCounter
 * (NtQueryPerformanceCounter), GetSystemTimeAsFileTime (NtQuerySystemTime) and
 * InterruptTime, read from the shared page, and the time-stamp counter (3 GHz). Each is printed before, and as the milliseconds
 * it advanced: "<clock> <before> <advanced ms>". */
#include <windows.h>
#include <intrin.h>
#include <stdio.h>

/* KUSER_SHARED_DATA.InterruptTime (KSYSTEM_TIME at 0x7FFE0008: LowPart, High1Time, High2Time) */
static ULONGLONG interrupt_time(void) {
    volatile ULONG *p = (volatile ULONG *)0x7FFE0008;
    ULONG low, high;
    do {
        high = p[1];
        low = p[0];
    } while (high != p[2]);
    return (ULONGLONG)high << 32 | low;
}

static ULONGLONG filetime(void) {
    FILETIME ft;
    GetSystemTimeAsFileTime(&ft);
    return (ULONGLONG)ft.dwHighDateTime << 32 | ft.dwLowDateTime;
}

int main(void) {
    LARGE_INTEGER freq, q0, q1;
    QueryPerformanceFrequency(&freq);
    DWORD t0 = GetTickCount();
    ULONGLONG t64 = GetTickCount64();
    QueryPerformanceCounter(&q0);
    ULONGLONG f0 = filetime(), i0 = interrupt_time(), r0 = __rdtsc();
    Sleep(50);
    DWORD t1 = GetTickCount();
    ULONGLONG t64_1 = GetTickCount64();
    QueryPerformanceCounter(&q1);
    ULONGLONG f1 = filetime(), i1 = interrupt_time(), r1 = __rdtsc();
    printf("tick %lu %lu\n", t0, t1 - t0);
    printf("tick64 %llu %llu\n", t64, t64_1 - t64);
    printf("qpc %lld %lld\n", q0.QuadPart, (q1.QuadPart - q0.QuadPart) * 1000 / freq.QuadPart);
    printf("filetime %llu %llu\n", f0, (f1 - f0) / 10000);
    printf("interrupt %llu %llu\n", i0, (i1 - i0) / 10000);
    printf("tsc %llu %llu\n", r0, (r1 - r0) / 3000000);
    return 0;
}
