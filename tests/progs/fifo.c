/* Named pipes for the channel tests.
 *   fifo DIR   makes DIR/f (a FIFO) and DIR/ctl (a FIFO). A child opens DIR/f for reading and
 *              reads a line every 40 ms, appending "c N" to DIR/c ("bad ..." if N is not the
 *              next number); the parent opens DIR/f for writing and writes "N\n" every 20 ms
 *              (so bytes wait in the FIFO). The parent also holds DIR/ctl open read-write, as
 *              daemons hold control FIFOs, and appends every line written into it from outside
 *              to DIR/ctl.out. Prints "ready PID" once both ends are open. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void nap(long ms)
{
	struct timespec ts = {0, ms * 1000 * 1000};
	nanosleep(&ts, NULL);
}

static int reader(const char *fifo, const char *out_path)
{
	int in = open(fifo, O_RDONLY);
	int out = open(out_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (in < 0 || out < 0)
		return 10;
	for (long want = 1;; want++) {
		char line[32];
		size_t k = 0;
		while (k < sizeof line - 1) {
			ssize_t n = read(in, &line[k], 1);
			if (n == 1 && line[k++] == '\n')
				break;
			if (n == 0 || (n < 0 && errno != EINTR))
				return 11;
		}
		line[k] = 0;
		char msg[96];
		int m = atol(line) == want ? snprintf(msg, sizeof msg, "c %ld\n", want)
					   : snprintf(msg, sizeof msg, "bad want %ld got %s", want, line);
		if (write(out, msg, (size_t)m) != m)
			return 12;
		nap(40);
	}
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 1;
	char f[4096], c[4096], ctl[4096], ctl_out[4096];
	snprintf(f, sizeof f, "%s/f", argv[1]);
	snprintf(c, sizeof c, "%s/c", argv[1]);
	snprintf(ctl, sizeof ctl, "%s/ctl", argv[1]);
	snprintf(ctl_out, sizeof ctl_out, "%s/ctl.out", argv[1]);
	if (mkfifo(f, 0600) != 0 || mkfifo(ctl, 0622) != 0)
		return 2;
	if (fork() == 0)
		return reader(f, c);
	int w = open(f, O_WRONLY);
	int control = open(ctl, O_RDWR | O_NONBLOCK);
	int log = open(ctl_out, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (w < 0 || control < 0 || log < 0)
		return 3;
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	for (long n = 1;; n++) {
		char line[32];
		int k = snprintf(line, sizeof line, "%ld\n", n);
		if (write(w, line, (size_t)k) != k)
			return 4;
		char buf[256];
		ssize_t got = read(control, buf, sizeof buf);
		if (got > 0 && write(log, buf, (size_t)got) != got)
			return 5;
		nap(20);
	}
}
