/* A process tree for the tree tests.
 *   tree DIR
 * The root makes itself a session leader, then forks:
 *   a   leader of a new process group, which forks
 *   a1  a member of a's group;
 *   b   in the root's group, which forks
 *   z   that exits at once with status 7 and stays a zombie until b gets SIGUSR1.
 * Every live process appends "NAME N\n" to DIR/NAME (O_APPEND) for N = 0, 1, 2, ... every
 * 20 ms, N living in its own memory, so a restore that lost or mixed up a process shows as a
 * gap, a restart or a line in the wrong file. On SIGUSR1, b reaps z and writes
 * "b reaped PID STATUS". When all are running, the root prints "ready ROOT A A1 B Z" on
 * stdout.
 *   tree DIR churn
 * The root alone, forking a short-lived child every 5 ms (each writes nothing and exits after
 * 30 ms; the root reaps them) while counting in DIR/root: for the test that a fork during the
 * freeze is caught or finished, never half-seen.
 *   tree DIR zombies
 * Zombies that led their own group or session. The root (in its caller's session and
 * group) forks z1, which leads a new group and exits with status 3 once m has joined that
 * group; m, which counts in DIR/m; z2, which makes its own session and exits with status 5.
 * When z1 and z2 are zombies it prints "ready ROOT Z1 M Z2" and counts in DIR/root; on
 * SIGUSR1 it reaps them, writing "root reaped PID STATUS" for each. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *dir;
static volatile sig_atomic_t got_usr1;
static void on_usr1(int s) { (void)s; got_usr1 = 1; }

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0)
		;
}

static int open_out(const char *name)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (fd < 0)
		exit(2);
	return fd;
}

/* Answers SIGUSR1 (once per signal) by reaping `zombie` (-1: every zombie child), writing
 * "NAME reaped PID STATUS" to fd for each. */
static void reap_on_usr1(int fd, const char *name, pid_t zombie)
{
	if (!got_usr1 || zombie == 0)
		return;
	got_usr1 = 0;
	int status = 0;
	pid_t r;
	while ((r = waitpid(zombie, &status, WNOHANG)) > 0) {
		char line[128];
		int len = snprintf(line, sizeof line, "%s reaped %d %d\n", name, (int)r,
				   WIFEXITED(status) ? WEXITSTATUS(status) : -1);
		if (write(fd, line, len) != len)
			exit(3);
	}
}

/* Counts forever into DIR/NAME; b and the zombies' root also answer SIGUSR1 by reaping. */
static void count(const char *name, pid_t zombie)
{
	int fd = open_out(name);
	for (unsigned long n = 0;; n++) {
		char line[128];
		int len = snprintf(line, sizeof line, "%s %lu\n", name, n);
		if (write(fd, line, len) != len)
			exit(3);
		reap_on_usr1(fd, name, zombie);
		sleep_ms(20);
	}
}

static void churn(void)
{
	int fd = open_out("root");
	for (unsigned long n = 0;; n++) {
		pid_t c = fork();
		if (c == 0) {
			sleep_ms(30);
			_exit(0);
		}
		char line[64];
		int len = snprintf(line, sizeof line, "root %lu\n", n);
		if (write(fd, line, len) != len)
			exit(3);
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		sleep_ms(5);
	}
}

/* Waits (1 s at most) until `pid` is a zombie. */
static void wait_zombie(pid_t pid)
{
	for (int i = 0; i < 500; i++) {
		char path[64], st[512];
		snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
		FILE *f = fopen(path, "r");
		if (!f)
			return;
		size_t n = fread(st, 1, sizeof st - 1, f);
		fclose(f);
		st[n] = 0;
		char *p = strrchr(st, ')');
		if (p && p[2] == 'Z')
			return;
		sleep_ms(2);
	}
}

static void zombie_leaders(void)
{
	signal(SIGUSR1, on_usr1);
	int gate[2];
	if (pipe(gate) < 0)
		exit(5);
	pid_t z1 = fork();
	if (z1 == 0) {
		char c;
		close(gate[1]);
		setpgid(0, 0);
		/* Until the root closes the gate: m has joined our group by then. */
		while (read(gate[0], &c, 1) > 0)
			;
		_exit(3);
	}
	close(gate[0]);
	setpgid(z1, z1);
	pid_t m = fork();
	if (m == 0) {
		close(gate[1]);
		setpgid(0, z1);
		count("m", 0);
	}
	setpgid(m, z1);
	pid_t z2 = fork();
	if (z2 == 0) {
		close(gate[1]);
		setsid();
		_exit(5);
	}
	close(gate[1]);
	wait_zombie(z1);
	wait_zombie(z2);
	printf("ready %d %d %d %d\n", (int)getpid(), (int)z1, (int)m, (int)z2);
	fflush(stdout);
	count("root", -1);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 1;
	dir = argv[1];
	if (argc > 2 && strcmp(argv[2], "churn") == 0)
		churn();
	if (argc > 2 && strcmp(argv[2], "zombies") == 0)
		zombie_leaders();
	if (setsid() < 0)
		return 4;
	int ready[2];
	if (pipe(ready) < 0)
		return 5;
	pid_t a = fork();
	if (a == 0) {
		close(ready[0]);
		setpgid(0, 0);
		pid_t a1 = fork();
		if (a1 == 0) {
			close(ready[1]);
			count("a1", 0);
		}
		if (write(ready[1], &a1, sizeof a1) != sizeof a1)
			return 6;
		close(ready[1]);
		count("a", 0);
	}
	pid_t b = fork();
	if (b == 0) {
		close(ready[0]);
		signal(SIGUSR1, on_usr1);
		pid_t z = fork();
		if (z == 0)
			_exit(7);
		if (write(ready[1], &z, sizeof z) != sizeof z)
			return 6;
		close(ready[1]);
		count("b", z);
	}
	close(ready[1]);
	pid_t a1 = 0, z = 0;
	/* Which child's grandchild comes first is not known: a1 is in a's group. */
	pid_t got[2];
	for (int i = 0; i < 2; i++)
		if (read(ready[0], &got[i], sizeof got[i]) != sizeof got[i])
			return 7;
	close(ready[0]);
	for (int i = 0; i < 2; i++) {
		if (getpgid(got[i]) == a)
			a1 = got[i];
		else
			z = got[i];
	}
	/* z must have exited before the checkpoint: it is a zombie then. */
	wait_zombie(z);
	printf("ready %d %d %d %d %d\n", (int)getpid(), (int)a, (int)a1, (int)b, (int)z);
	fflush(stdout);
	count("root", 0);
}
