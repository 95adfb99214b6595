/* SysV semaphores and a message queue between a parent and its child, for the tree tests.
 *   sysv_ipc DIR KEY
 * Makes a set of two semaphores and a message queue, both with key KEY, and queues 100
 * "backlog N" messages of type 2. The child and the parent then take turns through the
 * semaphores (the child's turn is semaphore 1, the parent's 0): on its turn the child sends
 * its count as a type-1 message; the parent takes it, appends "p N" to DIR/p ("bad ..." if
 * it is not the next number or missing: lost, repeated or a turn taken twice) and waits
 * 20 ms. Once DIR/drain exists the parent takes the backlog and appends "backlog ok 100" (or
 * "backlog bad ..."). Prints "ready PID" when set up. Semaphore 2 starts at 5 and is left
 * alone: `sysv_ipc --touch KEY` adds 1 to it, prints "touched" and sleeps (a process outside
 * the tree that uses the set). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <time.h>
#include <unistd.h>

struct msg {
	long mtype;
	char text[64];
};

static int turn(int sem, int num, int op)
{
	struct sembuf b = {(unsigned short)num, (short)op, 0};
	return semop(sem, &b, 1);
}

static void say(int fd, const char *line)
{
	if (write(fd, line, strlen(line)) != (ssize_t)strlen(line))
		exit(5);
}

static void drain_backlog(int q, int fd)
{
	char line[128];
	for (int i = 1; i <= 100; i++) {
		struct msg m;
		ssize_t n = msgrcv(q, &m, sizeof m.text, 2, IPC_NOWAIT);
		char want[64];
		snprintf(want, sizeof want, "backlog %d", i);
		if (n < 0 || (size_t)n != strlen(want) + 1 || strcmp(m.text, want) != 0) {
			snprintf(line, sizeof line, "backlog bad at %d\n", i);
			say(fd, line);
			return;
		}
	}
	say(fd, "backlog ok 100\n");
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 1;
	int key = (int)strtol(argv[2], NULL, 0);
	if (strcmp(argv[1], "--touch") == 0) {
		if (turn(semget(key, 0, 0), 2, 1) < 0)
			return 2;
		printf("touched\n");
		fflush(stdout);
		pause();
	}
	int sem = semget(key, 3, IPC_CREAT | IPC_EXCL | 0600);
	int q = msgget(key, IPC_CREAT | IPC_EXCL | 0600);
	unsigned short start[3] = {0, 1, 5};
	if (sem < 0 || q < 0 || semctl(sem, 0, SETALL, start) < 0)
		return 2;
	for (int i = 1; i <= 100; i++) {
		struct msg m = {2, ""};
		snprintf(m.text, sizeof m.text, "backlog %d", i);
		if (msgsnd(q, &m, strlen(m.text) + 1, IPC_NOWAIT) < 0)
			return 3;
	}
	if (fork() == 0) {
		for (long n = 1;; n++) {
			struct msg m = {1, ""};
			snprintf(m.text, sizeof m.text, "%ld", n);
			if (turn(sem, 1, -1) < 0 || msgsnd(q, &m, strlen(m.text) + 1, 0) < 0 ||
			    turn(sem, 0, 1) < 0)
				return 4;
		}
	}
	char path[4096], drain[4096];
	snprintf(path, sizeof path, "%s/p", argv[1]);
	snprintf(drain, sizeof drain, "%s/drain", argv[1]);
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (fd < 0)
		return 4;
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	int drained = 0;
	for (long want = 1;; want++) {
		if (turn(sem, 0, -1) < 0)
			return 6;
		struct msg m;
		char line[128];
		ssize_t n = msgrcv(q, &m, sizeof m.text, 1, IPC_NOWAIT);
		if (n < 0 || atol(m.text) != want)
			snprintf(line, sizeof line, "bad want %ld got %s\n", want, n < 0 ? "none" : m.text);
		else
			snprintf(line, sizeof line, "p %ld\n", want);
		say(fd, line);
		if (!drained && access(drain, F_OK) == 0) {
			drain_backlog(q, fd);
			drained = 1;
		}
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
		if (turn(sem, 1, 1) < 0)
			return 7;
	}
}
