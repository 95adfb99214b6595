/* Private memory shared copy-on-write after fork, for the tree tests.
 *   cowtree DIR
 * The parent fills 32 MiB of private anonymous memory with a pattern and forks 3 children.
 * Child i changes page i of it (its own copy from then on) and never touches the rest. Every
 * 20 ms each process ("p", "c0".."c2") appends "NAME N" to DIR/NAME and checks all of its
 * 32 MiB: the pattern, and its own page ("bad NAME" if anything differs). Prints "ready PID"
 * when all are set up. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define LEN (32 << 20)

static uint8_t pattern(size_t i) { return (uint8_t)(i * 13 + 7); }

int main(int argc, char **argv)
{
	if (argc < 2)
		return 1;
	uint8_t *m = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return 2;
	for (size_t i = 0; i < LEN; i++)
		m[i] = pattern(i);
	int ready[2];
	if (pipe(ready) != 0)
		return 3;
	char name[8] = "p";
	int mine = -1;
	for (int c = 0; c < 3; c++) {
		if (fork() == 0) {
			mine = c;
			snprintf(name, sizeof name, "c%d", c);
			memset(m + (size_t)c * 4096, 0xc0 + c, 4096);
			if (write(ready[1], "x", 1) != 1)
				return 4;
			break;
		}
	}
	if (mine < 0) {
		char buf[3];
		for (int got = 0; got < 3;)
			got += (int)read(ready[0], buf, 3 - got);
		printf("ready %d\n", (int)getpid());
		fflush(stdout);
	}
	close(ready[0]);
	close(ready[1]);
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", argv[1], name);
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (fd < 0)
		return 5;
	for (unsigned long n = 0;; n++) {
		int bad = 0;
		for (size_t i = 0; i < LEN; i += 997) {
			size_t page = i / 4096;
			uint8_t want = (int)page == mine ? (uint8_t)(0xc0 + mine) : pattern(i);
			bad |= m[i] != want;
		}
		char line[64];
		int k = snprintf(line, sizeof line, "%s%s %lu\n", bad ? "bad " : "", name, n);
		if (write(fd, line, k) != k)
			return 6;
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}
