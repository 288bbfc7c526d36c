/* heapemu's support for Wine's conformance tests built as standalone programs (issue 16).
 *
 * Wine's build links its tests with winecrt0 and lets them import user32 and advapi32; a
 * heapemu process has Wine's ntdll, kernel32, kernelbase and msvcrt only. This file is
 * heapemu's own code (no Wine source) and gives the programs what they need from outside:
 *
 * - __wine_dbg_strdup: wine/debug.h's wine_dbgstr_* return their text through it.
 * - the test selection: the build wraps each test_*() call of the START_TEST body in
 *   `if (heapemu_test_selected("test_x"))`; $HEAPEMU_WINETEST names the one function to run.
 * - llabs: Wine's headers declare it imported from msvcrt, whose import library lacks it.
 * - advapi32's registry calls (heap.c): advapi32 forwards the Ex forms to kernelbase on
 *   Windows 10 and in Wine; the short forms are those calls with default arguments.
 * - user32 (kernel32's virtual.c, its ATL-thunk tests make a window): heapemu runs no window
 *   system, so these fail with ERROR_CALL_NOT_IMPLEMENTED and the checks on them count as
 *   failures, as they would on a Windows without user32.
 *
 * Functions Wine's headers declare DECLSPEC_IMPORT are reached through __imp_ pointers, so
 * this file defines those pointers (their assembler names) and not the functions.
 */
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#include <string.h>

#ifdef _WIN64
#define IMP(name, argbytes) __asm__("__imp_" #name)
#define IMP_CDECL(name) __asm__("__imp_" #name)
#else
#define IMP(name, argbytes) __asm__("__imp__" #name "@" #argbytes)
#define IMP_CDECL(name) __asm__("__imp__" #name)
#endif

const char * __cdecl __wine_dbg_strdup( const char *str )
{
    static char ring[32][1024];
    static LONG next;
    char *buf = ring[(ULONG)InterlockedIncrement( &next ) % 32];
    lstrcpynA( buf, str, sizeof(ring[0]) );
    return buf;
}

int heapemu_test_selected( const char *name )
{
    char wanted[128];
    DWORD len = GetEnvironmentVariableA( "HEAPEMU_WINETEST", wanted, sizeof(wanted) );
    if (!len || len >= sizeof(wanted)) return 1;
    return !strcmp( wanted, name );
}

static long long __cdecl heapemu_llabs( long long v ) { return v < 0 ? -v : v; }
void *imp_llabs IMP_CDECL(llabs) = heapemu_llabs;

/* advapi32's registry calls, through kernelbase's exports */
static FARPROC kernelbase_proc( const char *name )
{
    return GetProcAddress( GetModuleHandleA( "kernelbase.dll" ), name );
}
typedef LSTATUS (WINAPI *open_ex_fn)( HKEY, LPCSTR, DWORD, REGSAM, PHKEY );
typedef LSTATUS (WINAPI *create_ex_fn)( HKEY, LPCSTR, DWORD, LPSTR, DWORD, REGSAM,
                                        LPSECURITY_ATTRIBUTES, PHKEY, LPDWORD );
typedef LSTATUS (WINAPI *delete_ex_fn)( HKEY, LPCSTR, REGSAM, DWORD );
typedef LSTATUS (WINAPI *close_fn)( HKEY );
typedef LSTATUS (WINAPI *delete_value_fn)( HKEY, LPCSTR );
typedef LSTATUS (WINAPI *query_fn)( HKEY, LPCSTR, LPDWORD, LPDWORD, LPBYTE, LPDWORD );
typedef LSTATUS (WINAPI *set_fn)( HKEY, LPCSTR, DWORD, DWORD, const BYTE *, DWORD );

static LSTATUS WINAPI my_RegOpenKeyA( HKEY key, LPCSTR name, PHKEY out )
{
    if (!out) return ERROR_INVALID_PARAMETER;
    if (!name || !*name) { *out = key; return ERROR_SUCCESS; }
    return ((open_ex_fn)kernelbase_proc( "RegOpenKeyExA" ))( key, name, 0, MAXIMUM_ALLOWED, out );
}
static LSTATUS WINAPI my_RegCreateKeyA( HKEY key, LPCSTR name, PHKEY out )
{
    return ((create_ex_fn)kernelbase_proc( "RegCreateKeyExA" ))( key, name, 0, NULL, 0,
                                                                MAXIMUM_ALLOWED, NULL, out, NULL );
}
static LSTATUS WINAPI my_RegDeleteKeyA( HKEY key, LPCSTR name )
{
    return ((delete_ex_fn)kernelbase_proc( "RegDeleteKeyExA" ))( key, name, 0, 0 );
}
static LSTATUS WINAPI my_RegCloseKey( HKEY key )
{
    return ((close_fn)kernelbase_proc( "RegCloseKey" ))( key );
}
static LSTATUS WINAPI my_RegDeleteValueA( HKEY key, LPCSTR name )
{
    return ((delete_value_fn)kernelbase_proc( "RegDeleteValueA" ))( key, name );
}
static LSTATUS WINAPI my_RegQueryValueExA( HKEY key, LPCSTR name, LPDWORD reserved,
                                           LPDWORD type, LPBYTE data, LPDWORD count )
{
    return ((query_fn)kernelbase_proc( "RegQueryValueExA" ))( key, name, reserved, type, data,
                                                             count );
}
static LSTATUS WINAPI my_RegSetValueExA( HKEY key, LPCSTR name, DWORD reserved, DWORD type,
                                         const BYTE *data, DWORD count )
{
    return ((set_fn)kernelbase_proc( "RegSetValueExA" ))( key, name, reserved, type, data, count );
}
void *imp_RegOpenKeyA IMP(RegOpenKeyA, 12) = my_RegOpenKeyA;
void *imp_RegCreateKeyA IMP(RegCreateKeyA, 12) = my_RegCreateKeyA;
void *imp_RegDeleteKeyA IMP(RegDeleteKeyA, 8) = my_RegDeleteKeyA;
void *imp_RegCloseKey IMP(RegCloseKey, 4) = my_RegCloseKey;
void *imp_RegDeleteValueA IMP(RegDeleteValueA, 8) = my_RegDeleteValueA;
void *imp_RegQueryValueExA IMP(RegQueryValueExA, 24) = my_RegQueryValueExA;
void *imp_RegSetValueExA IMP(RegSetValueExA, 24) = my_RegSetValueExA;

/* user32: no window system */
#define NO_WINDOWS SetLastError( ERROR_CALL_NOT_IMPLEMENTED )
static ATOM WINAPI my_RegisterClassExA( const WNDCLASSEXA *wc ) { NO_WINDOWS; return 0; }
static BOOL WINAPI my_UnregisterClassA( LPCSTR name, HINSTANCE inst ) { NO_WINDOWS; return FALSE; }
static HWND WINAPI my_CreateWindowExA( DWORD ex, LPCSTR cls, LPCSTR name, DWORD style, INT x,
                                       INT y, INT w, INT h, HWND parent, HMENU menu,
                                       HINSTANCE inst, LPVOID data )
{
    NO_WINDOWS;
    return 0;
}
static BOOL WINAPI my_DestroyWindow( HWND hwnd ) { NO_WINDOWS; return FALSE; }
static LRESULT WINAPI my_DefWindowProcA( HWND hwnd, UINT msg, WPARAM wp, LPARAM lp )
{
    NO_WINDOWS;
    return 0;
}
static LRESULT WINAPI my_SendMessageA( HWND hwnd, UINT msg, WPARAM wp, LPARAM lp )
{
    NO_WINDOWS;
    return 0;
}
static HCURSOR WINAPI my_LoadCursorA( HINSTANCE inst, LPCSTR name ) { NO_WINDOWS; return 0; }
void *imp_RegisterClassExA IMP(RegisterClassExA, 4) = my_RegisterClassExA;
void *imp_UnregisterClassA IMP(UnregisterClassA, 8) = my_UnregisterClassA;
void *imp_CreateWindowExA IMP(CreateWindowExA, 48) = my_CreateWindowExA;
void *imp_DestroyWindow IMP(DestroyWindow, 4) = my_DestroyWindow;
void *imp_DefWindowProcA IMP(DefWindowProcA, 16) = my_DefWindowProcA;
void *imp_SendMessageA IMP(SendMessageA, 16) = my_SendMessageA;
void *imp_LoadCursorA IMP(LoadCursorA, 8) = my_LoadCursorA;
