/* Output without end and a system call heapemu does not serve (issue 20 D11, warnings):
   flood.exe [MIB] writes "before"/"after" to stderr around NtAllocateLocallyUniqueId, then
   MIB times 1 MiB to stdout with WriteFile. Exit code 0 when the call was answered
   STATUS_NOT_IMPLEMENTED, as heapemu answers services it does not serve. */
#include <windows.h>
#include <stdlib.h>
#include <string.h>

typedef LONG(NTAPI *AllocateLuid)(LUID *);
static char block[1 << 20];

int main(int argc, char **argv) {
    int mib = argc > 1 ? atoi(argv[1]) : 0;
    HANDLE out = GetStdHandle(STD_OUTPUT_HANDLE), err = GetStdHandle(STD_ERROR_HANDLE);
    DWORD n;
    memset(block, 'x', sizeof block);
    block[sizeof block - 1] = '\n';
    WriteFile(err, "before\n", 7, &n, NULL);
    AllocateLuid luid_call =
        (AllocateLuid)GetProcAddress(GetModuleHandleA("ntdll.dll"), "NtAllocateLocallyUniqueId");
    LUID luid;
    LONG status = luid_call(&luid);
    WriteFile(err, "after\n", 6, &n, NULL);
    for (int i = 0; i < mib; i++)
        WriteFile(out, block, sizeof block, &n, NULL);
    return status == (LONG)0xC0000002 ? 0 : 1;
}
