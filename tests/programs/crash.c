/* `heapemu exec` must tell a crash from a program that returns 1: with an argument this one
   writes through a null pointer, without one it returns 1. */
int main(int argc, char **argv) {
    (void)argv;
    if (argc > 1)
        *(volatile int *)0 = 1;
    return 1;
}
