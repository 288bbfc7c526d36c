/* Arguments, environment, standard streams and exit code make it through Wine's start-up. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    const char *greeting = getenv("HEAPEMU_GREETING");
    for (int i = 0; i < argc; i++)
        printf("argv[%d]=%s\n", i, argv[i]);
    printf("greeting=%s\n", greeting ? greeting : "(none)");
    char line[64];
    if (fgets(line, sizeof line, stdin))
        printf("stdin=%s", line);
    fprintf(stderr, "to stderr\n");
    return 40 + argc;
}
