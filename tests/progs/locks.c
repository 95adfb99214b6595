/* File locks for the lock tests. Usage: locks MODE DIR; prints "ready PID" once set up.
 * posix: locks bytes 10-19 of DIR/file for writing (fcntl F_SETLK) and forks a child that
 *   waits for byte 15 (F_SETLKW). The parent lets go when DIR/release appears (it looks every
 *   20 ms); the child creates DIR/child-locked once it holds the byte.
 * ofd: takes OFD locks on DIR/file, bytes 0-99 for reading and 200 to EOF for writing, then
 *   forks a child that runs `flock DIR/flocked sleep 1000` (util-linux): the child, flock and
 *   sleep share the OFD locks' open file; flock and sleep share the flock.
 * lease: takes a read lease on DIR/file (F_SETLEASE) broken with SIGUSR2 (F_SETSIG), waits;
 *        when the lease is broken, writes "broken by signal N" to DIR/broken and gives it up. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static int lock(int fd, int cmd, short type, off_t start, off_t len)
{
	struct flock fl;
	memset(&fl, 0, sizeof fl);
	fl.l_type = type;
	fl.l_whence = SEEK_SET;
	fl.l_start = start;
	fl.l_len = len;
	return fcntl(fd, cmd, &fl);
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };
	nanosleep(&ts, NULL);
}

static void posix(const char *dir, int fd)
{
	char path[4096];
	if (lock(fd, F_SETLK, F_WRLCK, 10, 10) < 0)
		die("F_SETLK");
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		if (lock(fd, F_SETLKW, F_WRLCK, 15, 1) < 0)
			die("F_SETLKW");
		snprintf(path, sizeof path, "%s/child-locked", dir);
		if (open(path, O_CREAT | O_WRONLY, 0644) < 0)
			die("creating child-locked");
		for (;;)
			pause();
	}
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	snprintf(path, sizeof path, "%s/release", dir);
	while (access(path, F_OK) != 0)
		sleep_ms(20);
	if (lock(fd, F_SETLK, F_UNLCK, 10, 10) < 0)
		die("unlocking");
	for (;;)
		pause();
}

static void ofd(const char *dir, int fd)
{
	char path[4096];
	if (lock(fd, F_OFD_SETLK, F_RDLCK, 0, 100) < 0 || lock(fd, F_OFD_SETLK, F_WRLCK, 200, 0) < 0)
		die("F_OFD_SETLK");
	snprintf(path, sizeof path, "%s/flocked", dir);
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		execlp("flock", "flock", path, "sleep", "1000", (char *)NULL);
		die("exec flock");
	}
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	for (;;)
		pause();
}

static int lease_fd;
static char broken_path[4096];

static void on_break(int sig)
{
	char line[64];
	int n = snprintf(line, sizeof line, "broken by signal %d\n", sig);
	int out = open(broken_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (out >= 0 && write(out, line, (size_t)n) == n)
		close(out);
	fcntl(lease_fd, F_SETLEASE, F_UNLCK);
}

static void lease(const char *dir, const char *path)
{
	/* A read lease: nobody, this process included, may have the file open for writing. */
	snprintf(broken_path, sizeof broken_path, "%s/broken", dir);
	signal(SIGUSR2, on_break);
	lease_fd = open(path, O_CREAT | O_RDONLY, 0644);
	if (lease_fd < 0 || fcntl(lease_fd, F_SETSIG, SIGUSR2) < 0 ||
	    fcntl(lease_fd, F_SETLEASE, F_RDLCK) < 0)
		die("F_SETLEASE");
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	for (;;)
		pause();
}

int main(int argc, char **argv)
{
	char path[4096];
	if (argc != 3)
		return 2;
	snprintf(path, sizeof path, "%s/file", argv[2]);
	if (strcmp(argv[1], "lease") == 0)
		lease(argv[2], path);
	int fd = open(path, O_CREAT | O_RDWR, 0644);
	if (fd < 0)
		die("open");
	if (strcmp(argv[1], "posix") == 0)
		posix(argv[2], fd);
	else if (strcmp(argv[1], "ofd") == 0)
		ofd(argv[2], fd);
	return 2;
}
