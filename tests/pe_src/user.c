/* user.exe: a CRT-free test program importing from mathlib.dll and kernel32.dll.
 *
 * Imports: kernel32.dll!GetProcessHeap, HeapAlloc, HeapFree; mathlib.dll!add, mul3, sum6,
 * add_std, counter (data), and mathlib.dll ordinal 7 (secret, exported by ordinal only).
 * Entry point: start (no CRT start-up code). Nothing else is imported.
 */

typedef void *HANDLE;
typedef __SIZE_TYPE__ SIZE_T;

__declspec(dllimport) HANDLE __stdcall GetProcessHeap(void);
__declspec(dllimport) void *__stdcall HeapAlloc(HANDLE heap, unsigned long flags, SIZE_T size);
__declspec(dllimport) int __stdcall HeapFree(HANDLE heap, unsigned long flags, void *block);

__declspec(dllimport) int add(int a, int b);
__declspec(dllimport) int mul3(int a, int b, int c);
__declspec(dllimport) int __stdcall add_std(int a, int b);
__declspec(dllimport) int sum6(int a, int b, int c, int d, int e, int f);
__declspec(dllimport) int secret(void);
__declspec(dllimport) extern int counter;

int result;

/* Returns add(2,3) + mul3(2,3,4) + add_std(10,20) + sum6(1..6) + counter + secret()
 * = 5 + 24 + 30 + 91 + 7 + 42 = 199 with a fresh mathlib, stored in a heap block on the way. */
int start(void)
{
    HANDLE heap = GetProcessHeap();
    int *block = HeapAlloc(heap, 0, 16);
    if (!block)
        return -1;
    block[0] = add(2, 3) + mul3(2, 3, 4) + add_std(10, 20);
    block[1] = sum6(1, 2, 3, 4, 5, 6) + counter + secret();
    result = block[0] + block[1];
    HeapFree(heap, 0, block);
    return result;
}
