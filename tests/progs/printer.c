/* A single-threaded target for the interceptor's stdio flush.
 *   printer DIR
 * Prints "line N" to stdout (a fully buffered FILE*, never flushed by hand) every 2 ms and
 * writes "tick=N" to DIR/progress with write(2). SIGTERM makes it exit normally, which
 * flushes stdout. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
	stop = 1;
}

int main(int argc, char **argv)
{
	char path[512], line[64];
	unsigned long tick = 0;
	if (argc != 2)
		return 2;
	snprintf(path, sizeof(path), "%s/progress", argv[1]);
	setvbuf(stdout, NULL, _IOFBF, 8192);
	signal(SIGTERM, on_term);
	while (!stop) {
		struct timespec ts = { 0, 2 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		tick++;
		printf("line %lu\n", tick);
		int n = snprintf(line, sizeof(line), "tick=%lu\n", tick);
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0 || write(fd, line, n) != n)
			return 3;
		close(fd);
	}
	return 0;
}
