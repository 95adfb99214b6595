/* Micro-benchmarks for the interceptor's cost while no checkpoint runs (tools/overhead.sh runs
 * this with and without the library preloaded).
 *   overhead LOOP ITERATIONS      -> prints "LOOP NS_PER_OP"
 *   overhead launch N PROGRAM...  -> starts PROGRAM N times (posix_spawn + wait), prints
 *                                    "launch US_PER_LAUNCH"
 * LOOP: malloc (malloc/free churn over mixed sizes), open (open+close), write (1-byte
 * writes to /dev/null), getpid, thread (pthread create+join). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void *nothing(void *arg)
{
	return arg;
}

static volatile unsigned long sink;

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	long n = atol(argv[2]);
	double t0 = now_ns();
	if (!strcmp(argv[1], "malloc")) {
		/* Churn: a window of 64 live blocks of sizes from 16 B to 64 KiB. */
		void *live[64] = { 0 };
		unsigned x = 12345;
		for (long i = 0; i < n; i++) {
			x = x * 1103515245 + 12345;
			int slot = (x >> 8) % 64;
			free(live[slot]);
			size_t size = 16u << ((x >> 16) % 13);
			live[slot] = malloc(size);
			((volatile char *)live[slot])[0] = 1;
		}
		for (int i = 0; i < 64; i++)
			free(live[i]);
	} else if (!strcmp(argv[1], "open")) {
		for (long i = 0; i < n; i++) {
			int fd = open("/dev/null", O_RDONLY);
			close(fd);
		}
	} else if (!strcmp(argv[1], "write")) {
		int fd = open("/dev/null", O_WRONLY);
		for (long i = 0; i < n; i++)
			if (write(fd, "x", 1) != 1)
				return 1;
	} else if (!strcmp(argv[1], "getpid")) {
		for (long i = 0; i < n; i++)
			sink += getpid();
	} else if (!strcmp(argv[1], "thread")) {
		for (long i = 0; i < n; i++) {
			pthread_t t;
			pthread_create(&t, NULL, nothing, NULL);
			pthread_join(t, NULL);
		}
	} else if (!strcmp(argv[1], "launch")) {
		for (long i = 0; i < n; i++) {
			pid_t pid;
			int status;
			if (posix_spawn(&pid, argv[3], NULL, NULL, argv + 3, environ) != 0)
				return 1;
			waitpid(pid, &status, 0);
		}
		printf("launch %.1f\n", (now_ns() - t0) / n / 1000.0);
		return 0;
	} else {
		return 2;
	}
	printf("%s %.2f\n", argv[1], (now_ns() - t0) / n);
	return 0;
}
