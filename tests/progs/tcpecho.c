/* TCP connections for the channel tests.
 *   tcpecho DIR PORT        a pair: the parent listens on 127.0.0.1:PORT and forks a client
 *                           that connects; the client sends two numbered lines at a time
 *                           ("N\n" and "N+1\n") and reads them back, appending "c N" for
 *                           each to DIR/c ("bad ..." if a reply is not the next number); the
 *                           parent echoes what it reads, waiting 20 ms between reads (so
 *                           bytes sit in the queues), and prints "ready PID" once connected.
 *   tcpecho DIR PORT serve  only the server, echoing one connection at a time; prints
 *                           "ready PID" once listening; when a connection ends, appends
 *                           "end 0" (end of file) or "end ERRNO" (a read failed) to DIR/s.
 *   tcpecho DIR PORT hold   the server, but it reads nothing of its first connection until
 *                           DIR/go exists; then reads it to its end and writes what it read
 *                           and "|EOF" (or "|ERR ERRNO") to DIR/got, closes it and serves.
 *   tcpecho DIR PORT shut   as hold, but it shuts down its sending side of the connection
 *                           once DIR/shut exists (before DIR/go).
 *   tcpecho DIR PORT ask    a client: connects to 127.0.0.1:PORT, sends "request", shuts
 *                           down its sending side and prints "ready PID"; once DIR/go
 *                           exists, reads the connection to its end into DIR/got as above. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void nap(long ms)
{
	struct timespec ts = {0, ms * 1000 * 1000};
	nanosleep(&ts, NULL);
}

/* Echoes what `c` sends; returns 0 at its end of file, else the errno that ended it. */
static int echo(int c)
{
	char buf[4096];
	for (;;) {
		ssize_t n = read(c, buf, sizeof buf);
		if (n <= 0)
			return n == 0 ? 0 : errno;
		if (write(c, buf, (size_t)n) != n)
			return errno;
		nap(20);
	}
}

static void put(const char *dir, const char *file, const char *text, int flags)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, file);
	int fd = open(path, O_WRONLY | O_CREAT | flags, 0644);
	if (fd < 0)
		return;
	if (write(fd, text, strlen(text)) < 0)
		perror("write");
	close(fd);
}

/* Waits for DIR/go, then reads connection `c` to its end into DIR/got. */
static void hold(const char *dir, int c)
{
	char path[4096], got[8192];
	snprintf(path, sizeof path, "%s/go", dir);
	while (access(path, F_OK) != 0)
		nap(50);
	size_t k = 0;
	for (;;) {
		ssize_t n = read(c, got + k, sizeof got - 64 - k);
		if (n > 0) {
			k += (size_t)n;
			continue;
		}
		snprintf(got + k, 64, n == 0 ? "|EOF" : "|ERR %d", errno);
		break;
	}
	put(dir, "got", got, O_TRUNC);
}

/* Reads one line ("N\n") from `s` into a number; -1 at the end. */
static long read_number(int s)
{
	char line[32];
	size_t k = 0;
	while (k < sizeof line - 1) {
		if (read(s, &line[k], 1) != 1)
			return -1;
		if (line[k++] == '\n')
			break;
	}
	line[k] = 0;
	return atol(line);
}

static int client(const char *dir, struct sockaddr_in *addr)
{
	int s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0 || connect(s, (struct sockaddr *)addr, sizeof *addr) != 0)
		return 10;
	int one = 1;
	setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	char path[4096];
	snprintf(path, sizeof path, "%s/c", dir);
	int out = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (out < 0)
		return 11;
	for (long n = 1;; n += 2) {
		char req[64];
		int len = snprintf(req, sizeof req, "%ld\n%ld\n", n, n + 1);
		if (write(s, req, (size_t)len) != len)
			return 12;
		for (long want = n; want < n + 2; want++) {
			long got = read_number(s);
			char line[96];
			int k = got == want ? snprintf(line, sizeof line, "c %ld\n", want)
					    : snprintf(line, sizeof line, "bad want %ld got %ld\n", want, got);
			if (write(out, line, (size_t)k) != k || got < 0)
				return 13;
		}
	}
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 1;
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (argc > 3 && strcmp(argv[3], "ask") == 0) {
		int s = socket(AF_INET, SOCK_STREAM, 0);
		if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) != 0)
			return 4;
		if (write(s, "request", 7) != 7 || shutdown(s, SHUT_WR) != 0)
			return 5;
		printf("ready %d\n", (int)getpid());
		fflush(stdout);
		hold(argv[1], s);
		return 0;
	}
	int l = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (l < 0 || bind(l, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(l, 8) != 0)
		return 2;
	if (argc > 3 && (strcmp(argv[3], "serve") == 0 || strcmp(argv[3], "hold") == 0 ||
			 strcmp(argv[3], "shut") == 0)) {
		int held = strcmp(argv[3], "serve") != 0, shut = strcmp(argv[3], "shut") == 0;
		printf("ready %d\n", (int)getpid());
		fflush(stdout);
		for (;;) {
			int c = accept(l, NULL, NULL);
			if (c < 0)
				return 3;
			if (held) {
				char path[4096];
				snprintf(path, sizeof path, "%s/shut", argv[1]);
				while (shut && access(path, F_OK) != 0)
					nap(50);
				if (shut)
					shutdown(c, SHUT_WR);
				hold(argv[1], c);
				held = 0;
			} else {
				char line[32];
				snprintf(line, sizeof line, "end %d\n", echo(c));
				put(argv[1], "s", line, O_APPEND);
			}
			close(c);
		}
	}
	if (fork() == 0) {
		close(l);
		return client(argv[1], &addr);
	}
	int c = accept(l, NULL, NULL);
	if (c < 0)
		return 3;
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	echo(c);
	return 0;
}
