/* The interceptor's target for the guest tests: a dynamically linked, multi-threaded program
 * whose threads sit in the blocking calls a checkpoint must not disturb.
 *   app DIR PORT
 * Threads: accept() on 127.0.0.1:PORT (answers "pong VPID\n"), read() on a pipe, poll() with a
 * timeout, nanosleep(), a condition variable, epoll_wait() with no timeout, and two workers (mutex, __thread counter,
 * name, signal mask). The main thread prints "line N" to stdout (fully buffered FILE*, never
 * flushed by hand) every 5 ms and rewrites DIR/progress with its counters; it checks that
 * getpid/gettid/kill/tgkill/raise/sched_getaffinity and /proc/<getpid()> still work with the
 * ids it started with. Every catchable signal has a handler that records it. Problems go to
 * DIR/bad. SIGTERM makes it exit normally (flushing stdout). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static char dir[512];
static int bad_fd, port;
static pid_t pid0;
static volatile unsigned long sigs_seen;       /* bit n-1: signal n arrived */
static volatile unsigned long usr2_count, eintr, accepted, pipe_reads, polls, sleeps, conds, work,
	epolls;
static volatile int stop;
static int data_pipe[2], poll_pipe[2], epoll_pipe[2];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static unsigned long tick;
static __thread unsigned long mine;

static void bad(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (write(bad_fd, buf, n) < 0)
		_exit(3);
}

static void on_signal(int sig)
{
	if (sig == SIGTERM)
		stop = 1;
	if (sig == SIGUSR2)
		usr2_count++;
	else
		sigs_seen |= 1UL << (sig - 1);
}

static int catchable(int sig)
{
	return sig != SIGKILL && sig != SIGSTOP && (sig < 32 || sig >= SIGRTMIN);
}

/* Each thread checks its ids and name against what it had at the start. */
static void check_thread(const char *name, pid_t tid)
{
	char now[32] = "";
	if (gettid() != tid)
		bad("bad-tid %s %d %d\n", name, gettid(), tid);
	if (getpid() != pid0)
		bad("bad-pid %s %d %d\n", name, getpid(), pid0);
	pthread_getname_np(pthread_self(), now, sizeof(now));
	if (strcmp(now, name) != 0)
		bad("bad-name %s %s\n", name, now);
	if (tgkill(getpid(), gettid(), 0) != 0)
		bad("bad-tgkill %s %d\n", name, errno);
}

static void *acceptor(void *arg)
{
	int ls = (int)(long)arg;
	pid_t tid = gettid();
	pthread_setname_np(pthread_self(), "acceptor");
	for (;;) {
		int c = accept(ls, NULL, NULL);
		if (c < 0) {
			if (errno == EINTR)
				eintr++;
			else
				bad("bad-accept %d\n", errno);
			continue;
		}
		check_thread("acceptor", tid);
		char line[64];
		int n = snprintf(line, sizeof(line), "pong %d %lu\n", getpid(), accepted + 1);
		if (write(c, line, n) != n)
			bad("bad-pong-write %d\n", errno);
		close(c);
		accepted++;
	}
	return NULL;
}

static void *piper(void *arg)
{
	pid_t tid = gettid();
	pthread_setname_np(pthread_self(), "piper");
	for (;;) {
		char b;
		ssize_t n = read(data_pipe[0], &b, 1);
		if (n < 0 && errno == EINTR) {
			eintr++;
			continue;
		}
		if (n != 1 || b != 'x')
			bad("bad-pipe-read %zd %d\n", n, errno);
		pipe_reads++;
		check_thread("piper", tid);
	}
	return NULL;
}

static void *poller(void *arg)
{
	pid_t tid = gettid();
	pthread_setname_np(pthread_self(), "poller");
	for (;;) {
		struct pollfd p = { .fd = poll_pipe[0], .events = POLLIN };
		int r = poll(&p, 1, 100);
		if (r < 0 && errno == EINTR) {
			eintr++;
			continue;
		}
		if (r != 0)
			bad("bad-poll %d %d\n", r, errno);
		polls++;
		check_thread("poller", tid);
	}
	return NULL;
}

static void *sleeper(void *arg)
{
	pid_t tid = gettid();
	pthread_setname_np(pthread_self(), "sleeper");
	for (;;) {
		struct timespec ts = { 0, 50 * 1000 * 1000 };
		if (nanosleep(&ts, NULL) != 0) {
			if (errno == EINTR)
				eintr++;
			else
				bad("bad-nanosleep %d\n", errno);
		}
		sleeps++;
		check_thread("sleeper", tid);
	}
	return NULL;
}

static void *epoller(void *arg)
{
	pid_t tid = gettid();
	pthread_setname_np(pthread_self(), "epoller");
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN };
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, epoll_pipe[0], &ev) != 0)
		bad("bad-epoll-setup %d\n", errno);
	for (;;) {
		struct epoll_event got;
		int r = epoll_wait(ep, &got, 1, -1);
		if (r < 0 && errno == EINTR) {
			eintr++;
			continue;
		}
		char b;
		if (r != 1 || read(epoll_pipe[0], &b, 1) != 1)
			bad("bad-epoll %d %d\n", r, errno);
		epolls++;
		check_thread("epoller", tid);
	}
	return NULL;
}

static void *waiter(void *arg)
{
	pid_t tid = gettid();
	unsigned long seen = 0;
	pthread_setname_np(pthread_self(), "waiter");
	pthread_mutex_lock(&lock);
	for (;;) {
		while (tick / 10 == seen)
			pthread_cond_wait(&cond, &lock);
		seen = tick / 10;
		conds++;
		check_thread("waiter", tid);
	}
	return NULL;
}

static void *worker(void *arg)
{
	int idx = (int)(long)arg;
	char name[16];
	pid_t tid = gettid();
	snprintf(name, sizeof(name), "worker-%d", idx);
	pthread_setname_np(pthread_self(), name);
	if (idx == 1) {
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGUSR1);
		pthread_sigmask(SIG_BLOCK, &set, NULL);
	}
	for (;;) {
		struct timespec ts = { 0, 3 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		pthread_mutex_lock(&lock);
		work++;
		mine++;
		pthread_mutex_unlock(&lock);
		if (mine % 50 == 0) {
			check_thread(name, tid);
			sigset_t set;
			pthread_sigmask(SIG_BLOCK, NULL, &set);
			if (sigismember(&set, SIGUSR1) != (idx == 1))
				bad("bad-mask %s\n", name);
		}
	}
	return NULL;
}

static void write_progress(void)
{
	char path[600], line[512];
	snprintf(path, sizeof(path), "%s/progress", dir);
	int n = snprintf(line, sizeof(line),
			 "tick=%lu pid=%d eintr=%lu sigs=%#lx usr2=%lu accepted=%lu pipe=%lu poll=%lu "
			 "sleep=%lu cond=%lu work=%lu epoll=%lu\n",
			 tick, getpid(), eintr, sigs_seen, usr2_count, accepted, pipe_reads, polls,
			 sleeps, conds, work, epolls);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, line, n) != n)
		bad("bad-progress %d\n", errno);
	close(fd);
}

static void check_process(void)
{
	char path[64], comm[32] = "";
	cpu_set_t set;
	if (kill(getpid(), 0) != 0)
		bad("bad-kill %d\n", errno);
	if (sched_getaffinity(getpid(), sizeof(set), &set) != 0)
		bad("bad-sched %d\n", errno);
	/* /proc/<the pid we know> must be us. */
	snprintf(path, sizeof(path), "/proc/%d/comm", getpid());
	FILE *f = fopen(path, "r");
	if (!f || !fgets(comm, sizeof(comm), f) || strcmp(comm, "app\n") != 0)
		bad("bad-proc %s %s\n", path, comm);
	if (f)
		fclose(f);
	snprintf(path, sizeof(path), "/proc/%d/task/%d/comm", getpid(), gettid());
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		bad("bad-proc-task %s %d\n", path, errno);
	else
		close(fd);
	/* raise() goes through glibc's own copy of our tid. */
	unsigned long before = usr2_count;
	if (raise(SIGUSR2) != 0 || usr2_count != before + 1)
		bad("bad-raise %d\n", errno);
	for (int sig = 1; sig < 65; sig++) {
		struct sigaction old;
		if (catchable(sig) && sigaction(sig, NULL, &old) == 0 && old.sa_handler != on_signal)
			bad("bad-handler %d\n", sig);
	}
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	snprintf(dir, sizeof(dir), "%s", argv[1]);
	port = atoi(argv[2]);
	char path[600];
	snprintf(path, sizeof(path), "%s/bad", dir);
	bad_fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	pid0 = getpid();
	setvbuf(stdout, NULL, _IOFBF, 4096);

	struct sigaction sa = { .sa_handler = on_signal, .sa_flags = SA_RESTART };
	for (int sig = 1; sig < 65; sig++)
		if (catchable(sig))
			sigaction(sig, &sa, NULL);

	int ls = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(ls, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(ls, 16) != 0) {
		perror("listen");
		return 2;
	}
	if (pipe(data_pipe) != 0 || pipe(poll_pipe) != 0 || pipe(epoll_pipe) != 0)
		return 2;
	pthread_t t;
	pthread_create(&t, NULL, acceptor, (void *)(long)ls);
	pthread_create(&t, NULL, piper, NULL);
	pthread_create(&t, NULL, poller, NULL);
	pthread_create(&t, NULL, sleeper, NULL);
	pthread_create(&t, NULL, waiter, NULL);
	pthread_create(&t, NULL, epoller, NULL);
	for (long i = 0; i < 2; i++)
		pthread_create(&t, NULL, worker, (void *)i);

	pid_t tid = gettid();
	while (!stop) {
		struct timespec ts = { 0, 5 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		pthread_mutex_lock(&lock);
		tick++;
		pthread_cond_broadcast(&cond);
		pthread_mutex_unlock(&lock);
		printf("line %lu\n", tick);
		if (tick % 20 == 0 && write(data_pipe[1], "x", 1) != 1)
			bad("bad-pipe-write %d\n", errno);
		if (tick % 20 == 10 && write(epoll_pipe[1], "e", 1) != 1)
			bad("bad-epoll-write %d\n", errno);
		if (tick % 50 == 0) {
			check_thread("app", tid);
			check_process();
		}
		write_progress();
	}
	write_progress();
	return 0; /* exit flushes stdout */
}
