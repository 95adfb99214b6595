/* SysV shared memory between a parent and its child, for the tree tests.
 *   sysv_target DIR KEY
 * The parent creates a 64 KiB segment with key KEY and a private one it removes at once
 * (IPC_RMID: it lives while attached), attaches both, fills them past their first page with
 * a pattern, and forks a child (which inherits both attaches). The child counts in the first
 * word of each every 20 ms. Every 20 ms the parent appends "p N A B" to DIR/p (what it sees of
 * the child's counters: only shared memory shows them) and "bad" if the pattern changed.
 * Prints "ready PID" when set up. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>

#define LEN (64 << 10)

static uint8_t pattern(size_t i) { return (uint8_t)(i * 5 + 9); }

int main(int argc, char **argv)
{
	if (argc < 3)
		return 1;
	int key = (int)strtol(argv[2], NULL, 0);
	int a = shmget(key, LEN, IPC_CREAT | IPC_EXCL | 0600);
	int b = shmget(IPC_PRIVATE, LEN, IPC_CREAT | 0600);
	if (a < 0 || b < 0)
		return 2;
	volatile uint64_t *pa = shmat(a, NULL, 0), *pb = shmat(b, NULL, 0);
	if (pa == (void *)-1 || pb == (void *)-1)
		return 3;
	shmctl(b, IPC_RMID, NULL);
	for (size_t i = 4096; i < LEN; i++)
		((uint8_t *)pa)[i] = ((uint8_t *)pb)[i] = pattern(i);
	if (fork() == 0) {
		for (uint64_t n = 1;; n++) {
			pa[0] = n;
			pb[0] = n;
			struct timespec ts = {0, 20 * 1000 * 1000};
			nanosleep(&ts, NULL);
		}
	}
	char path[4096];
	snprintf(path, sizeof path, "%s/p", argv[1]);
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (fd < 0)
		return 4;
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	for (unsigned long n = 0;; n++) {
		int bad = 0;
		for (size_t i = 4096; i < LEN; i += 509)
			bad |= ((uint8_t *)pa)[i] != pattern(i) || ((uint8_t *)pb)[i] != pattern(i);
		char line[96];
		int k = snprintf(line, sizeof line, "%sp %lu %llu %llu\n", bad ? "bad " : "", n,
				 (unsigned long long)pa[0], (unsigned long long)pb[0]);
		if (write(fd, line, k) != k)
			return 5;
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}
