/* Virtual memory, sections and views through Wine's kernel32/kernelbase/ntdll, as a program
 * uses them. Prints one "<check> <value>" line per check; the test compares with what
 * Windows answers. Nothing here faults: a fault would end the run.
 * "vmrules.exe shared" runs only the checks of views sharing a section's memory (issue 16). */
#include <windows.h>
#include <stdio.h>
#include <string.h>

typedef LONG(WINAPI *same_fn)(PVOID, PVOID);

static void show(const char *what, unsigned long value) { printf("%s %lx\n", what, value); }

static DWORD protect_of(const void *p) {
    MEMORY_BASIC_INFORMATION mbi;
    VirtualQuery(p, &mbi, sizeof mbi);
    return mbi.Protect;
}

static void second_image_view(void) {
    /* issue 16 cause 1: a second SEC_IMAGE view of a loaded DLL */
    HMODULE k32 = GetModuleHandleA("kernel32.dll");
    HANDLE file = CreateFileA("C:\\windows\\system32\\kernel32.dll", GENERIC_READ,
                              FILE_SHARE_READ, NULL, OPEN_EXISTING, 0, NULL);
    HANDLE map = CreateFileMappingA(file, NULL, PAGE_READONLY | SEC_IMAGE, 0, 0, NULL);
    char *view = map ? MapViewOfFile(map, FILE_MAP_READ, 0, 0, 0) : NULL;
    show("image-view", view != NULL && view != (char *)k32);
    if (!view) {
        show("image-error", GetLastError());
        return;
    }
    show("image-headers-same", memcmp(view, k32, 0x200) == 0);
    MEMORY_BASIC_INFORMATION mbi;
    VirtualQuery(view, &mbi, sizeof mbi);
    show("image-type", mbi.Type);
    show("image-allocation-protect", mbi.AllocationProtect);
    show("image-headers-protect", mbi.Protect);
    same_fn same = (same_fn)GetProcAddress(GetModuleHandleA("ntdll.dll"), "NtAreMappedFilesTheSame");
    show("same-view-module", same(view, k32));
    show("same-module-view", same(k32, view + 0x1000));
    show("same-ntdll-k32", same(GetModuleHandleA("ntdll.dll"), k32));
    show("image-unmap", UnmapViewOfFile(view + 0x100));
    show("image-gone", VirtualQuery(view, &mbi, sizeof mbi) && mbi.State == MEM_FREE);
    CloseHandle(map);
    CloseHandle(file);
}

static void file_views(void) {
    HANDLE file = CreateFileA("C:\\windows\\system32\\kernel32.dll", GENERIC_READ,
                              FILE_SHARE_READ, NULL, OPEN_EXISTING, 0, NULL);
    SetLastError(0);
    HANDLE rw = CreateFileMappingA(file, NULL, PAGE_READWRITE, 0, 0x2000, NULL);
    show("file-rw-section", rw != NULL);
    show("file-rw-error", GetLastError());
    HANDLE ro = CreateFileMappingA(file, NULL, PAGE_READONLY, 0, 0x2000, NULL);
    show("file-ro-section", ro != NULL);
    SetLastError(0);
    show("file-write-view", MapViewOfFile(ro, FILE_MAP_WRITE, 0, 0, 0) != NULL);
    show("file-write-view-error", GetLastError());
    unsigned char *v = MapViewOfFile(ro, FILE_MAP_READ, 0, 0, 0);
    show("file-view-mz", v && v[0] == 'M' && v[1] == 'Z');
    MEMORY_BASIC_INFORMATION mbi;
    VirtualQuery(v, &mbi, sizeof mbi);
    show("file-view-type", mbi.Type);
    show("file-view-size", mbi.RegionSize);
    show("file-view-protect", mbi.Protect);
    DWORD old;
    SetLastError(0);
    show("file-view-protect-rw", VirtualProtect(v, 0x1000, PAGE_READWRITE, &old));
    show("file-view-protect-rw-error", GetLastError());
    show("file-view-protect-wc", VirtualProtect(v, 0x1000, PAGE_WRITECOPY, &old));
    SetLastError(0);
    show("file-view-commit", VirtualAlloc(v, 0x1000, MEM_COMMIT, PAGE_READONLY) != NULL);
    show("file-view-commit-error", GetLastError());
    UnmapViewOfFile(v);
    /* FILE_MAP_COPY: copy-on-write until written, then the page is its own */
    unsigned char *c = MapViewOfFile(ro, FILE_MAP_COPY, 0, 0, 0);
    show("copy-view-protect", protect_of(c));
    c[0x1004] = 0x5A;
    show("copy-written-protect", protect_of(c + 0x1000));
    show("copy-other-protect", protect_of(c));
    show("copy-value", c[0x1004]);
    UnmapViewOfFile(c);
    CloseHandle(ro);
    CloseHandle(file);
}

static void anonymous_views(void) {
    HANDLE res = CreateFileMappingA(INVALID_HANDLE_VALUE, NULL, PAGE_READWRITE | SEC_RESERVE, 0,
                                    0x100000, NULL);
    char *v = MapViewOfFile(res, FILE_MAP_WRITE, 0, 0, 0);
    MEMORY_BASIC_INFORMATION mbi;
    VirtualQuery(v, &mbi, sizeof mbi);
    show("reserve-view-state", mbi.State);
    show("reserve-view-protect", mbi.Protect);
    show("reserve-view-allocation-protect", mbi.AllocationProtect);
    show("reserve-view-commit", VirtualAlloc(v, 0x10000, MEM_COMMIT, PAGE_READONLY) == v);
    show("reserve-view-committed-protect", protect_of(v));
    SetLastError(0);
    show("reserve-view-commit-exec", VirtualAlloc(v, 0x1000, MEM_COMMIT, PAGE_EXECUTE_READ) != NULL);
    show("reserve-view-commit-exec-error", GetLastError());
    SetLastError(0);
    show("reserve-view-decommit", VirtualFree(v, 0x10000, MEM_DECOMMIT));
    show("reserve-view-decommit-error", GetLastError());
    UnmapViewOfFile(v);
    CloseHandle(res);

    /* a named section lives while a handle is open */
    HANDLE named = CreateFileMappingA(INVALID_HANDLE_VALUE, NULL, PAGE_READWRITE, 0, 4090,
                                      "Local\\heapemu_vmrules");
    show("named-created", named != NULL && GetLastError() == 0);
    HANDLE again = CreateFileMappingA(INVALID_HANDLE_VALUE, NULL, PAGE_READWRITE, 0, 4090,
                                      "Local\\heapemu_vmrules");
    show("named-again", again != NULL && GetLastError() == ERROR_ALREADY_EXISTS);
    CloseHandle(again);
    int *w = MapViewOfFile(named, FILE_MAP_WRITE, 0, 0, 0);
    *w = 0x1a2b3c4d;
    HANDLE opened = OpenFileMappingA(FILE_MAP_READ, FALSE, "Local\\heapemu_vmrules");
    show("named-opened", opened != NULL);
    SetLastError(0);
    show("named-open-write-view", MapViewOfFile(opened, FILE_MAP_WRITE, 0, 0, 0) != NULL);
    show("named-open-write-view-error", GetLastError());
    int *r = MapViewOfFile(opened, FILE_MAP_READ, 0, 0, 0);
    show("named-view-size", (VirtualQuery(r, &mbi, sizeof mbi), mbi.RegionSize));
    show("named-view-protect", mbi.Protect);
    show("named-view-sees-write", *r);
    UnmapViewOfFile(r);
    CloseHandle(opened);
    CloseHandle(named);
    SetLastError(0);
    show("named-gone", OpenFileMappingA(FILE_MAP_READ, FALSE, "Local\\heapemu_vmrules") == NULL);
    show("named-gone-error", GetLastError());
    show("named-view-kept", *w);
    UnmapViewOfFile(w);
}

static void private_memory(void) {
    SetLastError(0);
    show("alloc-writecopy", VirtualAlloc(NULL, 0x1000, MEM_COMMIT, PAGE_WRITECOPY) != NULL);
    show("alloc-writecopy-error", GetLastError());
    char *nc = VirtualAlloc(NULL, 0x2000, MEM_COMMIT, PAGE_READWRITE | PAGE_NOCACHE);
    DWORD old;
    VirtualProtect(nc, 0x1000, PAGE_READONLY, &old);
    show("nocache-old", old);
    show("nocache-protect", protect_of(nc));
    /* KUSER_SHARED_DATA belongs to the kernel (issue 20 D13) */
    SetLastError(0);
    show("kuser-free", VirtualFree((void *)0x7ffe0000, 0, MEM_RELEASE));
    show("kuser-free-error", GetLastError());
    SetLastError(0);
    show("kuser-protect", VirtualProtect((void *)0x7ffe0000, 0x1000, PAGE_READWRITE, &old));
    show("kuser-protect-error", GetLastError());
    show("still-running", GetTickCount() >= 0 && GetCurrentProcessId() != 0);
}

static void write_watch(void) {
    char *base = VirtualAlloc(NULL, 0x10000, MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH,
                              PAGE_READWRITE);
    void *pages[16];
    ULONG_PTR count = 16;
    ULONG gran;
    GetWriteWatch(0, base, 0x10000, pages, &count, &gran);
    show("watch-initial", count);
    base[0x3001] = 1;
    base[0x5002] = 2;
    count = 16;
    GetWriteWatch(WRITE_WATCH_FLAG_RESET, base, 0x10000, pages, &count, &gran);
    show("watch-count", count);
    show("watch-first", count ? (unsigned long)((char *)pages[0] - base) : 0);
    show("watch-granularity", gran);
    count = 16;
    GetWriteWatch(0, base, 0x10000, pages, &count, &gran);
    show("watch-after-reset", count);
}

static void shared_views(void) {
    /* all views of one pagefile-backed section are the same pages (FILE_MAP_COPY aside) */
    HANDLE map = CreateFileMappingA(INVALID_HANDLE_VALUE, NULL, PAGE_READWRITE, 0, 0x30000, NULL);
    volatile char *a = MapViewOfFile(map, FILE_MAP_WRITE, 0, 0, 0);
    volatile char *b = MapViewOfFile(map, FILE_MAP_WRITE, 0, 0, 0);
    volatile char *tail = MapViewOfFile(map, FILE_MAP_READ, 0, 0x10000, 0x20000);
    show("shared-views", a != NULL && b != NULL && tail != NULL && a != b);
    strcpy((char *)a + 0x100, "written through a");
    show("shared-b-sees-a", strcmp((char *)b + 0x100, "written through a") == 0);
    *(volatile DWORD *)(b + 0x2ff0) = 0xb0b0cafe;
    show("shared-a-sees-b", *(volatile DWORD *)(a + 0x2ff0));
    *(volatile DWORD *)(a + 0x10008) = 0x7a11;
    show("shared-offset-view", *(volatile DWORD *)(tail + 8));
    volatile char *later = MapViewOfFile(map, FILE_MAP_READ, 0, 0, 0);
    show("shared-later-view", *(volatile DWORD *)(later + 0x2ff0));
    /* FILE_MAP_COPY: the view's writes are its own */
    volatile char *copy = MapViewOfFile(map, FILE_MAP_COPY, 0, 0, 0);
    show("shared-copy-reads", *(volatile DWORD *)(copy + 0x2ff0));
    *(volatile DWORD *)(copy + 0x2ff0) = 0xc0c0;
    show("shared-copy-own", *(volatile DWORD *)(copy + 0x2ff0));
    show("shared-copy-not-seen", *(volatile DWORD *)(a + 0x2ff0));
    *(volatile DWORD *)(a + 0x2ff0) = 0xa0a0;
    show("shared-copy-keeps-its-page", *(volatile DWORD *)(copy + 0x2ff0));
    UnmapViewOfFile((void *)copy);
    /* unmapping one view leaves the others' data */
    UnmapViewOfFile((void *)a);
    show("shared-unmapped-one", *(volatile DWORD *)(b + 0x2ff0));
    /* the section keeps its bytes while a handle is open, with no view at all */
    UnmapViewOfFile((void *)b);
    UnmapViewOfFile((void *)tail);
    UnmapViewOfFile((void *)later);
    volatile char *again = MapViewOfFile(map, FILE_MAP_READ, 0, 0, 0);
    show("shared-no-view-kept", *(volatile DWORD *)(again + 0x2ff0));
    show("shared-no-view-text", strcmp((char *)again + 0x100, "written through a") == 0);
    UnmapViewOfFile((void *)again);
    CloseHandle(map);
    /* a named section opened twice: two section handles, one memory */
    HANDLE one = CreateFileMappingA(INVALID_HANDLE_VALUE, NULL, PAGE_READWRITE, 0, 0x1000,
                                    "Local\\heapemu_shared");
    HANDLE two = OpenFileMappingA(FILE_MAP_ALL_ACCESS, FALSE, "Local\\heapemu_shared");
    volatile DWORD *x = MapViewOfFile(one, FILE_MAP_WRITE, 0, 0, 0);
    volatile DWORD *y = MapViewOfFile(two, FILE_MAP_WRITE, 0, 0, 0);
    y[5] = 0x5eed;
    show("shared-named", x[5]);
    UnmapViewOfFile((void *)x);
    UnmapViewOfFile((void *)y);
    CloseHandle(two);
    CloseHandle(one);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "shared") == 0) {
        shared_views();
        return 0;
    }
    second_image_view();
    file_views();
    anonymous_views();
    private_memory();
    write_watch();
    return 0;
}
