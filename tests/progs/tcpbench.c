/* TCP connections for `make bench`.
 *   tcpbench server PORT        accepts connections on 127.0.0.1:PORT and echoes each, all in
 *                               one process (poll); prints "ready PID" once listening.
 *   tcpbench clients PORT N OUT opens N connections, then forever does rounds: one byte sent
 *                               on each connection, one read back from each. Prints "ready"
 *                               once all are connected. On SIGUSR1 it writes "ROUNDS MAXGAP_MS"
 *                               to OUT (rounds done and the longest time between two rounds
 *                               since the last SIGUSR1: how long its peers saw no progress),
 *                               then starts counting again. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX 1024

static volatile sig_atomic_t report;

static void on_usr1(int sig) { (void)sig; report = 1; }

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int serve(struct sockaddr_in *addr)
{
	int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (l < 0 || bind(l, (struct sockaddr *)addr, sizeof *addr) || listen(l, MAX))
		return 2;
	struct pollfd p[MAX + 1] = {{.fd = l, .events = POLLIN}};
	int n = 1;
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	for (;;) {
		if (poll(p, (nfds_t)n, -1) < 0)
			continue;
		if ((p[0].revents & POLLIN) && n <= MAX) {
			int c = accept(l, NULL, NULL);
			if (c >= 0)
				p[n++] = (struct pollfd){.fd = c, .events = POLLIN};
		}
		for (int i = 1; i < n; i++) {
			char buf[4096];
			if (!(p[i].revents & (POLLIN | POLLHUP)))
				continue;
			ssize_t k = read(p[i].fd, buf, sizeof buf);
			if (k <= 0 || write(p[i].fd, buf, (size_t)k) != k) {
				close(p[i].fd);
				p[i--] = p[--n];
			}
		}
	}
}

static int clients(struct sockaddr_in *addr, int n, const char *out)
{
	static int s[MAX];
	if (n > MAX)
		return 2;
	for (int i = 0; i < n; i++) {
		s[i] = socket(AF_INET, SOCK_STREAM, 0);
		if (s[i] < 0 || connect(s[i], (struct sockaddr *)addr, sizeof *addr))
			return 3;
	}
	struct sigaction sa = {.sa_handler = on_usr1};
	sigaction(SIGUSR1, &sa, NULL); /* no SA_RESTART: a blocked read returns to report */
	printf("ready\n");
	fflush(stdout);
	double last = now_ms(), gap = 0;
	long rounds = 0;
	for (;;) {
		for (int i = 0; i < n; i++) {
			char b = 'x';
			while (write(s[i], &b, 1) != 1)
				if (errno != EINTR)
					return 4;
		}
		for (int i = 0; i < n; i++) {
			char b;
			ssize_t k;
			while ((k = read(s[i], &b, 1)) != 1) {
				if (k == 0 || errno != EINTR)
					return 5;
				if (report)
					break;
			}
		}
		double t = now_ms();
		if (t - last > gap)
			gap = t - last;
		last = t;
		rounds++;
		if (report) {
			FILE *f = fopen(out, "w");
			if (f) {
				fprintf(f, "%ld %.0f\n", rounds, gap);
				fclose(f);
			}
			report = 0;
			rounds = 0;
			gap = 0;
		}
	}
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 1;
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (strcmp(argv[1], "server") == 0)
		return serve(&addr);
	if (strcmp(argv[1], "clients") == 0 && argc > 4)
		return clients(&addr, atoi(argv[3]), argv[4]);
	return 1;
}
