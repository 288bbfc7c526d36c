/* mathlib.dll: a CRT-free test DLL.
 *
 * Exports (see mathlib.def): add, mul3, add_std (stdcall on x86), sum6 (six args, so some go on
 * the stack on both arches), the variables counter and counter_ptr, secret by ordinal 7 only,
 * and two forwarders. counter_ptr holds &counter, so the image has base relocations on both
 * arches; secret() also reads counter_ptr through an absolute address on x86.
 * No imports.
 */

int counter = 7;
int *counter_ptr = &counter;

int add(int a, int b) { return a + b; }

int mul3(int a, int b, int c) { return a * b * c; }

int __stdcall add_std(int a, int b) { return a + b; }

int sum6(int a, int b, int c, int d, int e, int f)
{
    return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f;
}

int secret(void) { return *counter_ptr + 35; }

int __stdcall DllMain(void *instance, unsigned long reason, void *reserved)
{
    (void)instance;
    (void)reason;
    (void)reserved;
    return 1;
}
