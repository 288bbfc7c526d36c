/* Reads address 0x10 after some output: built with -O0, so the faulting load sits several
   instructions into its basic block (the emulator must report that load, not the block). */
#include <stdio.h>

int main(void) {
    volatile int *p = (volatile int *)0x10;
    int before = 7;
    printf("before the fault\n");
    fflush(stdout);
    before += 3;
    return before + *p;
}
