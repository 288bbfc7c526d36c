/* Seed 001's DLL: it allocates with its own C runtime. Linked without mingw's start-up code
 * against ucrtbase.dll, whose malloc uses another heap than msvcrt.dll's, the CRT the program
 * (crossfree.c) frees with. */
#include <windows.h>
#include <stdlib.h>

__declspec(dllexport) void *runtime_alloc(size_t size) { return malloc(size); }

BOOL WINAPI DllMain(HINSTANCE instance, DWORD reason, LPVOID reserved) { return TRUE; }
