/* A dynamically linked, multi-threaded target for guest tests.
 * argv[1]: number of extra threads (default 3). Allocates a 2 MiB heap buffer with a known
 * pattern, starts the threads, and reports "ready <addr> <len>" once all of them run. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static pthread_barrier_t started;

static void *worker(void *arg)
{
	(void)arg;
	pthread_barrier_wait(&started);
	for (;;)
		pause();
	return NULL;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 3;
	size_t len = 2 << 20;
	unsigned char *buf = malloc(len);

	if (n < 0 || n > 1000 || !buf)
		return 1;
	for (size_t i = 0; i < len; i++)
		buf[i] = (unsigned char)(i * 13 + 5);
	pthread_barrier_init(&started, NULL, (unsigned)n + 1);
	for (int i = 0; i < n; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, worker, NULL) != 0)
			return 1;
	}
	pthread_barrier_wait(&started);
	printf("ready %p %zu\n", (void *)buf, len);
	fflush(stdout);
	for (;;)
		pause();
}
