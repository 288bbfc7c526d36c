// Seed 003: three ways to 8 bytes. malloc and operator new reach ntdll!RtlAllocateHeap through
// msvcrt's own heap; HeapAlloc (a forwarder in kernel32) passes PEB.ProcessHeap.
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>

extern "C" {
__declspec(dllexport) __attribute__((noinline)) void *alloc_malloc(void) { return malloc(8); }
__declspec(dllexport) __attribute__((noinline)) void *alloc_new(void) { return new char[8]; }
__declspec(dllexport) __attribute__((noinline)) void *alloc_heap(void) {
    return HeapAlloc(GetProcessHeap(), 0, 8);
}
}

int main(void) {
    void *a = alloc_malloc();
    void *b = alloc_new();
    void *c = alloc_heap();
    printf("%p %p %p\n", a, b, c);
    return 0;
}
