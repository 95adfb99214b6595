/* Open file descriptions a parent and its child share (opened before the fork), for the
 * guest tests. Usage: shared_fds MODE DIR; prints "ready PARENT CHILD" once both are set up.
 * Each process logs to DIR/parent or DIR/child (its own file, opened after the fork); the
 * test drives them by creating files in DIR, which they look for every 20 ms.
 * file:    both write fixed-size records "P 000042\n" / "C 000042\n" (9 bytes) to DIR/log
 *          every 10 ms through the one fd: with one offset, no record overwrites another.
 * eventfd: the child adds 1 to the eventfd every 20 ms and logs "wrote N" (its total) until
 *          DIR/stop appears, then logs "stopped N"; the parent reads it and logs "sum S".
 * timerfd: the parent arms the timerfd for an hour, then, once DIR/arm appears, for 50 ms
 *          ("armed"); the child reads it and logs "fired N".
 * flock:   the parent takes flock(LOCK_EX) on DIR/lockfile; once DIR/close appears it closes
 *          its fd ("closed"); once DIR/relock appears the child takes LOCK_EX|LOCK_NB again
 *          through its own fd ("relock ok", or "relock failed ERRNO").
 * epoll:   an epoll instance watching eventfd A (data 1, one unit in it); the child adds its
 *          own eventfd B (data 2), waits on the instance, logs "event D" for each event and
 *          empties A or B. DIR/poke-a: the parent adds 1 to A; DIR/poke-b: the child adds 1
 *          to B (at fd 10, where the parent has a copy of its log); DIR/add: the parent adds a new eventfd C holding 1 (data 3, edge-triggered)
 *          and logs "added". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static const char *dir;
static int log_fd = -1;

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };
	nanosleep(&ts, NULL);
}

/* Whether DIR/NAME exists. */
static int present(const char *name)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	return access(path, F_OK) == 0;
}

static void open_log(const char *who)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, who);
	log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (log_fd < 0)
		die("opening the log");
}

/* Logs "WHAT N" (or WHAT alone when N is negative) as one line. */
static void say(const char *what, long long n)
{
	if (n < 0)
		dprintf(log_fd, "%s\n", what);
	else
		dprintf(log_fd, "%s %lld\n", what, n);
}

/* Forks; the child runs `child` (which never returns) once `setup` ran in it, and the parent
 * returns once the child is set up. */
static pid_t fork_child(void (*setup)(void), void (*child)(void))
{
	int p[2];
	char c = 0;
	if (pipe(p) != 0)
		die("pipe");
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		open_log("child");
		if (setup)
			setup();
		if (write(p[1], "x", 1) != 1)
			die("write");
		close(p[0]);
		close(p[1]);
		child();
		exit(1);
	}
	if (read(p[0], &c, 1) != 1)
		die("read");
	close(p[0]);
	close(p[1]);
	open_log("parent");
	return pid;
}

static int shared_fd;

static void write_records(char who)
{
	char rec[16];
	for (unsigned n = 0;; n++) {
		snprintf(rec, sizeof rec, "%c %06u\n", who, n);
		if (write(shared_fd, rec, 9) != 9)
			die("write");
		sleep_ms(10);
	}
}

static void file_child(void)
{
	write_records('C');
}

static void eventfd_child(void)
{
	long long total = 0;
	while (!present("stop")) {
		uint64_t one = 1;
		if (write(shared_fd, &one, 8) != 8)
			die("eventfd write");
		say("wrote", ++total);
		sleep_ms(20);
	}
	say("stopped", total);
	for (;;)
		sleep_ms(1000);
}

static void timerfd_child(void)
{
	for (;;) {
		uint64_t n;
		if (read(shared_fd, &n, 8) == 8)
			say("fired", (long long)n);
		else if (errno != EINTR)
			die("timerfd read");
	}
}

static void flock_child(void)
{
	int done = 0;
	for (;; sleep_ms(20)) {
		if (done || !present("relock"))
			continue;
		done = 1;
		if (flock(shared_fd, LOCK_EX | LOCK_NB) == 0)
			say("relock ok", -1);
		else
			say("relock failed", errno);
	}
}

static int efd_a, efd_b;

/* B sits at fd 10, where the parent has another file: the watch is the child's to add. */
#define FD_B 10

static void epoll_setup(void)
{
	int b = eventfd(0, EFD_NONBLOCK);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 2 };
	if (b < 0 || dup2(b, FD_B) != FD_B || close(b) != 0)
		die("making B");
	efd_b = FD_B;
	if (epoll_ctl(shared_fd, EPOLL_CTL_ADD, efd_b, &ev) != 0)
		die("adding B");
}

static void epoll_child(void)
{
	int poked = 0;
	for (;;) {
		struct epoll_event evs[8];
		int n = epoll_wait(shared_fd, evs, 8, 20);
		if (n < 0 && errno != EINTR)
			die("epoll_wait");
		for (int i = 0; i < n; i++) {
			uint64_t v;
			say("event", (long long)evs[i].data.u64);
			if (evs[i].data.u64 == 1 && read(efd_a, &v, 8) != 8)
				die("reading A");
			if (evs[i].data.u64 == 2 && read(efd_b, &v, 8) != 8)
				die("reading B");
		}
		if (!poked && present("poke-b")) {
			uint64_t one = 1;
			poked = 1;
			if (write(efd_b, &one, 8) != 8)
				die("writing B");
		}
	}
}

/* The parent's part, once the child runs. */
static void parent_loop(const char *mode)
{
	int done_a = 0, done_b = 0;
	if (strcmp(mode, "file") == 0)
		write_records('P');
	if (strcmp(mode, "eventfd") == 0) {
		long long sum = 0;
		for (;;) {
			uint64_t v;
			if (read(shared_fd, &v, 8) == 8)
				say("sum", sum += (long long)v);
			else if (errno != EINTR)
				die("eventfd read");
		}
	}
	for (;; sleep_ms(20)) {
		if (strcmp(mode, "timerfd") == 0 && !done_a && present("arm")) {
			struct itimerspec soon = { .it_value = { 0, 50000000 } };
			if (timerfd_settime(shared_fd, 0, &soon, NULL) != 0)
				die("timerfd_settime");
			say("armed", -1);
			done_a = 1;
		}
		if (strcmp(mode, "flock") == 0 && !done_a && present("close")) {
			close(shared_fd);
			say("closed", -1);
			done_a = 1;
		}
		if (strcmp(mode, "epoll") == 0 && !done_a && present("poke-a")) {
			uint64_t one = 1;
			if (write(efd_a, &one, 8) != 8)
				die("writing A");
			done_a = 1;
		}
		if (strcmp(mode, "epoll") == 0 && !done_b && present("add")) {
			int c = eventfd(1, EFD_NONBLOCK);
			struct epoll_event ev = { .events = EPOLLIN | EPOLLET, .data.u64 = 3 };
			if (c < 0 || epoll_ctl(shared_fd, EPOLL_CTL_ADD, c, &ev) != 0)
				die("adding C");
			say("added", -1);
			done_b = 1;
		}
	}
}

int main(int argc, char **argv)
{
	char path[4096];
	void (*setup)(void) = NULL, (*child)(void);
	if (argc != 3)
		return 2;
	const char *mode = argv[1];
	dir = argv[2];
	if (strcmp(mode, "file") == 0) {
		snprintf(path, sizeof path, "%s/log", dir);
		shared_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		child = file_child;
	} else if (strcmp(mode, "eventfd") == 0) {
		shared_fd = eventfd(0, 0);
		child = eventfd_child;
	} else if (strcmp(mode, "timerfd") == 0) {
		struct itimerspec hour = { .it_value = { 3600, 0 } };
		shared_fd = timerfd_create(CLOCK_MONOTONIC, 0);
		if (shared_fd >= 0 && timerfd_settime(shared_fd, 0, &hour, NULL) != 0)
			die("timerfd_settime");
		child = timerfd_child;
	} else if (strcmp(mode, "flock") == 0) {
		snprintf(path, sizeof path, "%s/lockfile", dir);
		shared_fd = open(path, O_RDWR | O_CREAT, 0644);
		if (shared_fd >= 0 && flock(shared_fd, LOCK_EX) != 0)
			die("flock");
		child = flock_child;
	} else if (strcmp(mode, "epoll") == 0) {
		struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 1 };
		uint64_t one = 1;
		efd_a = eventfd(0, EFD_NONBLOCK);
		shared_fd = epoll_create1(0);
		if (efd_a < 0 || shared_fd < 0 || epoll_ctl(shared_fd, EPOLL_CTL_ADD, efd_a, &ev) != 0 ||
		    write(efd_a, &one, 8) != 8)
			die("epoll setup");
		setup = epoll_setup;
		child = epoll_child;
	} else {
		return 2;
	}
	if (shared_fd < 0)
		die(mode);
	pid_t pid = fork_child(setup, child);
	if (strcmp(mode, "epoll") == 0 && dup2(log_fd, FD_B) != FD_B)
		die("dup2");
	printf("ready %d %d\n", (int)getpid(), (int)pid);
	fflush(stdout);
	parent_loop(mode);
	return 1;
}
