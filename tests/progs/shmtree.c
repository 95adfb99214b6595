/* The process-tree benchmark target (tools/bench.sh --tree MIB).
 *   shmtree OUTFILE MIB
 * Maps MIB MiB of anonymous shared memory, fills it with a pattern, forks 7 children, so 8
 * processes share it. Every 20 ms each process appends "P N" to OUTFILE (O_APPEND) and checks
 * a sample of the pattern ("bad P N" if it changed). Prints nothing; OUTFILE shows it runs. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 3)
		return 1;
	size_t len = (size_t)atol(argv[2]) << 20;
	if (len == 0)
		len = 4096;
	uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return 2;
	for (size_t i = 0; i < len; i++)
		m[i] = (uint8_t)(i * 7 + 3);
	int me = 0;
	for (int c = 1; c < 8; c++)
		if (fork() == 0) {
			me = c;
			break;
		}
	int fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (fd < 0)
		return 3;
	for (unsigned long n = 0;; n++) {
		char line[64];
		int bad = 0;
		for (size_t i = (size_t)me * 4099; i < len; i += 65537)
			bad |= m[i] != (uint8_t)(i * 7 + 3);
		int k = snprintf(line, sizeof line, "%s%d %lu\n", bad ? "bad " : "", me, n);
		if (write(fd, line, k) != k)
			return 4;
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}
