/* N threads waiting in pause(); the main thread appends 0, 1, 2, ... to OUT every 20 ms.
 * For make bench's per-thread cost row. Usage: manythreads OUT N. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include "tick.h"
#include <unistd.h>

static void *idle(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	int n = atoi(argv[2]);
	for (int i = 0; i < n; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, idle, NULL))
			return 1;
	}
	return tick_forever(argv[1]);
}
