// A C++ exception thrown inside a DLL and caught by the program that called it (cxxthrow.exe):
// on x64 g++ unwinds with Windows' SEH (RaiseException, the dispatcher, RtlUnwindEx through
// both modules' .pdata); on x86 with DWARF tables, in user mode.
#include <stdexcept>

extern "C" __declspec(dllexport) int thrower(int n) {
    if (n > 0)
        throw std::runtime_error("thrown in the dll");
    return n;
}
