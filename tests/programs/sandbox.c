/* Tries to reach host files it was not given; every attempt must fail, and the one file the
 * test maps in must be readable and stay unchanged (files it creates live in the emulated
 * process's memory only, never on the host). Prints one line per attempt:
 * "<what> <ok|error N>". */
#include <windows.h>
#include <stdio.h>

static void try_open(const char *what, const char *path, DWORD access, DWORD disposition) {
    HANDLE h = CreateFileA(path, access, FILE_SHARE_READ, NULL, disposition, 0, NULL);
    if (h == INVALID_HANDLE_VALUE) {
        printf("%s error %lu\n", what, GetLastError());
        return;
    }
    char buf[64] = {0};
    DWORD got = 0;
    if (access & GENERIC_WRITE) {
        BOOL w = WriteFile(h, "x", 1, &got, NULL);
        printf("%s write %s\n", what, w ? "ok" : "failed");
    } else {
        ReadFile(h, buf, sizeof buf - 1, &got, NULL);
        printf("%s ok %s\n", what, buf);
    }
    CloseHandle(h);
}

int main(void) {
    try_open("mapped", "C:\\data\\input.txt", GENERIC_READ, OPEN_EXISTING);
    try_open("mapped-write", "C:\\data\\input.txt", GENERIC_WRITE, OPEN_EXISTING);
    try_open("unix-drive", "Z:\\etc\\passwd", GENERIC_READ, OPEN_EXISTING);
    try_open("unix-prefix", "\\\\?\\unix\\etc\\passwd", GENERIC_READ, OPEN_EXISTING);
    try_open("dotdot", "C:\\heapemu\\..\\..\\..\\etc\\passwd", GENERIC_READ, OPEN_EXISTING);
    try_open("win-ini", "C:\\windows\\win.ini", GENERIC_READ, OPEN_EXISTING);
    try_open("create", "C:\\heapemu\\created.txt", GENERIC_WRITE, CREATE_ALWAYS);
    try_open("create-rel", "created-relative.txt", GENERIC_WRITE, CREATE_ALWAYS);
    FILE *f = fopen("C:\\data\\input.txt", "r");
    char line[64] = {0};
    if (f) {
        fgets(line, sizeof line, f);
        fclose(f);
    }
    printf("fopen %s\n", f ? line : "failed");
    printf("fopen-write %s\n", fopen("C:\\data\\input.txt", "w") ? "ok" : "failed");
    return 0;
}
