/* UDP sockets for the channel tests.
 *   udpecho serve PORT DELAY_MS  a server bound to 127.0.0.1:PORT that sends every datagram
 *                                back to its sender, waiting DELAY_MS before reading the
 *                                next (so datagrams queue up); prints "ready PID".
 *   udpecho pair DIR             two UDP sockets on 127.0.0.1 connected to each other; a
 *                                forked child sends "N" and "N+1" on one and reads them back,
 *                                appending "c N" for each to DIR/c ("bad ..." if a reply is not
 *                                the next number); the parent echoes on the other, 20 ms
 *                                between reads; prints "ready PID" once both are connected. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void nap(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000 * 1000};
	nanosleep(&ts, NULL);
}

static int bound(unsigned short port, struct sockaddr_in *at)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	socklen_t len = sizeof a;
	if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 ||
	    getsockname(s, (struct sockaddr *)at, &len) != 0)
		exit(2);
	return s;
}

static int serve(unsigned short port, long delay)
{
	struct sockaddr_in me;
	int s = bound(port, &me);
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	for (;;) {
		char buf[2048];
		struct sockaddr_in from;
		socklen_t len = sizeof from;
		ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
		if (n < 0)
			return 3;
		if (sendto(s, buf, (size_t)n, 0, (struct sockaddr *)&from, len) != n)
			return 4;
		nap(delay);
	}
}

static int client(const char *dir, int s)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/c", dir);
	int out = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (out < 0)
		return 11;
	for (long n = 1;; n += 2) {
		for (long k = n; k < n + 2; k++) {
			char req[32];
			int len = snprintf(req, sizeof req, "%ld", k);
			if (send(s, req, (size_t)len, 0) != len)
				return 12;
		}
		for (long want = n; want < n + 2; want++) {
			char rep[32];
			ssize_t r = recv(s, rep, sizeof rep - 1, 0);
			long got = -1;
			if (r > 0) {
				rep[r] = 0;
				got = atol(rep);
			}
			char line[96];
			int k = got == want ? snprintf(line, sizeof line, "c %ld\n", want)
					    : snprintf(line, sizeof line, "bad want %ld got %ld\n", want, got);
			if (write(out, line, (size_t)k) != k || got < 0)
				return 13;
		}
	}
}

static int pair(const char *dir)
{
	struct sockaddr_in a, b;
	int sa = bound(0, &a), sb = bound(0, &b);
	if (connect(sa, (struct sockaddr *)&b, sizeof b) != 0 ||
	    connect(sb, (struct sockaddr *)&a, sizeof a) != 0)
		return 5;
	if (fork() == 0) {
		close(sa);
		return client(dir, sb);
	}
	close(sb);
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	for (;;) {
		char buf[64];
		ssize_t n = recv(sa, buf, sizeof buf, 0);
		if (n < 0 || send(sa, buf, (size_t)n, 0) != n)
			return 6;
		nap(20);
	}
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "serve") == 0)
		return serve((unsigned short)atoi(argv[2]), atol(argv[3]));
	if (argc == 3 && strcmp(argv[1], "pair") == 0)
		return pair(argv[2]);
	return 1;
}
