/* Seed 001's program: frees, with its own CRT (msvcrt.dll), a block runtime.dll allocated with
 * its CRT (ucrtbase.dll). */
#include <stdio.h>
#include <stdlib.h>

__declspec(dllimport) void *runtime_alloc(size_t size);

int main(void) {
    void *block = runtime_alloc(24);
    printf("block %p\n", block);
    free(block);
    printf("freed\n");
    return 0;
}
