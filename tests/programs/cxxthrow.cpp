// Catches what thrower.dll throws (see thrower.cpp).
#include <cstdio>
#include <stdexcept>

extern "C" __declspec(dllimport) int thrower(int n);

int main() {
    try {
        thrower(1);
    } catch (const std::exception &e) {
        std::printf("caught: %s\n", e.what());
        return 0;
    }
    std::printf("not thrown\n");
    return 1;
}
