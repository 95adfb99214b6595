/* A statically linked, single-threaded target for guest tests.
 * Fills a buffer with a known pattern, reports "ready <addr> <len>" on stdout, then waits.
 * With argument "nondumpable" it first makes itself non-dumpable (prctl PR_SET_DUMPABLE 0). */
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static unsigned char pattern[8192];

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "nondumpable") == 0 && prctl(PR_SET_DUMPABLE, 0) != 0) {
		perror("prctl");
		return 1;
	}
	for (size_t i = 0; i < sizeof(pattern); i++)
		pattern[i] = (unsigned char)(i * 7 + 3);
	printf("ready %p %zu\n", (void *)pattern, sizeof(pattern));
	fflush(stdout);
	for (;;)
		pause();
}
