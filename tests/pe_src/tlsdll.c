/* tlsdll.dll: a CRT-free DLL with a TLS directory and two TLS callbacks.
 *
 * Without the CRT nothing provides _tls_used, so this file lays out what mingw's tlssup.c
 * would: the .tls template bracketed by _tls_start/_tls_end, the callback array bracketed in
 * .CRT$XL*, and the IMAGE_TLS_DIRECTORY the linker points the TLS data directory at when a
 * symbol named _tls_used exists. Exports: tls_value, callback_hits. No imports.
 */

typedef __UINTPTR_TYPE__ UINT_PTR;
typedef void(__stdcall *TLS_CALLBACK)(void *dll, unsigned long reason, void *reserved);

typedef struct {
    UINT_PTR StartAddressOfRawData;
    UINT_PTR EndAddressOfRawData;
    UINT_PTR AddressOfIndex;
    UINT_PTR AddressOfCallBacks;
    unsigned long SizeOfZeroFill;
    unsigned long Characteristics;
} TLS_DIRECTORY;

unsigned long _tls_index = 0;
__attribute__((section(".tls"))) char _tls_start = 0;
__attribute__((section(".tls$ZZZ"))) char _tls_end = 0;
__attribute__((section(".CRT$XLA"))) TLS_CALLBACK __xl_a = 0;
__attribute__((section(".CRT$XLZ"))) TLS_CALLBACK __xl_z = 0;

_Thread_local int tls_slot = 0x1234;
__declspec(dllexport) int callback_hits = 0;

static void __stdcall on_tls_a(void *dll, unsigned long reason, void *reserved)
{
    (void)dll;
    (void)reserved;
    callback_hits += (int)reason;
}

static void __stdcall on_tls_b(void *dll, unsigned long reason, void *reserved)
{
    (void)dll;
    (void)reason;
    (void)reserved;
    callback_hits += 100;
}

__attribute__((section(".CRT$XLB"), used)) TLS_CALLBACK tls_callback_a = on_tls_a;
__attribute__((section(".CRT$XLC"), used)) TLS_CALLBACK tls_callback_b = on_tls_b;

__attribute__((used)) const TLS_DIRECTORY _tls_used = {
    (UINT_PTR)&_tls_start,
    (UINT_PTR)&_tls_end,
    (UINT_PTR)&_tls_index,
    (UINT_PTR)(&__xl_a + 1),
    0,
    0,
};

__declspec(dllexport) int tls_value(void) { return tls_slot; }

int __stdcall DllMain(void *instance, unsigned long reason, void *reserved)
{
    (void)instance;
    (void)reason;
    (void)reserved;
    return 1;
}
