/* A pty holder and the program on its slave, with bytes left in flight for a checkpoint.
 *
 *   ptypair MODE DIR
 *
 * The parent (the tree's root) opens a pty and holds its master; its child leads a session
 * whose controlling terminal is the slave. Before DIR/ready exists, bytes are left unread:
 *   out     the child writes "line 0\n".."line 9\n" (cooked: the master gets \r\n)
 *   pkt     the same with the master in packet mode
 *   canon   the parent writes "one\rpartial" (a line, and a line not ended yet; echoed)
 *   raw     the child is in raw mode; the parent writes bytes a cooked terminal would change
 *   locked  no child: the master stays locked (no slave opened yet)
 * Once DIR/go exists: out/pkt: the child writes "end\n"; canon: the parent ends the line
 * with " end\r", raw: writes "Z"; the child reads up to them, puts what it read in DIR/slave
 * and writes "done\n"; locked: the parent unlocks, opens the slave and writes "hi\n" on it.
 * The parent reads the master up to the last of those and puts everything it read in
 * DIR/master (packet mode: the data bytes only). Each file is written whole (renamed). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static const char *dir;
static const char RAW_BYTES[] = "\r\x03\x7f\x04" "a\0b\n\x15";

static char *path(const char *name)
{
	static char buf[4][512];
	static int i;
	i = (i + 1) % 4;
	snprintf(buf[i], sizeof buf[i], "%s/%s", dir, name);
	return buf[i];
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void touch(const char *name)
{
	int fd = open(path(name), O_CREAT | O_WRONLY, 0644);
	if (fd < 0)
		die(name);
	close(fd);
}

static void wait_file(const char *name)
{
	struct timespec ts = {0, 20 * 1000 * 1000};
	while (access(path(name), F_OK))
		nanosleep(&ts, NULL);
}

static void put_file(const char *name, const char *data, size_t len)
{
	char tmp[600];
	snprintf(tmp, sizeof tmp, "%s.tmp", path(name));
	int fd = open(tmp, O_CREAT | O_TRUNC | O_WRONLY, 0644);
	if (fd < 0 || write(fd, data, len) != (ssize_t)len || close(fd))
		die(tmp);
	if (rename(tmp, path(name)))
		die("rename");
}

static void write_all(int fd, const char *data, size_t len)
{
	while (len) {
		ssize_t n = write(fd, data, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("write");
		data += n;
		len -= n;
	}
}

/* Reads fd until what it read ends with `end` (or end of file); `pkt`: packet-mode reads,
 * whose data bytes only are kept. */
static size_t read_until(int fd, char *acc, size_t cap, const char *end, int pkt)
{
	size_t n = 0, e = strlen(end);
	for (;;) {
		char buf[1024];
		ssize_t r = read(fd, buf, sizeof buf);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		char *data = buf;
		if (pkt) {
			if (buf[0] != TIOCPKT_DATA)
				continue; /* a status byte */
			data++;
			r--;
		}
		if (n + r > cap)
			die("too much");
		memcpy(acc + n, data, r);
		n += r;
		if (n >= e && !memcmp(acc + n - e, end, e))
			break;
	}
	return n;
}

static void child(const char *mode, const char *slave)
{
	setsid();
	int s = open(slave, O_RDWR); /* the session's controlling terminal */
	if (s < 0)
		die(slave);
	for (int i = 0; i < 3; i++)
		dup2(s, i);
	if (s > 2)
		close(s);
	if (!strcmp(mode, "raw")) {
		struct termios t;
		tcgetattr(0, &t);
		cfmakeraw(&t);
		tcsetattr(0, TCSANOW, &t);
	}
	touch("child-set");
	int out = !strcmp(mode, "out") || !strcmp(mode, "pkt");
	if (out) {
		for (int i = 0; i < 10; i++) {
			char line[32];
			int len = snprintf(line, sizeof line, "line %d\n", i);
			write_all(1, line, len);
		}
		touch("wrote");
	}
	wait_file("go");
	if (out) {
		write_all(1, "end\n", 4);
		exit(0);
	}
	char acc[4096];
	size_t n = read_until(0, acc, sizeof acc, strcmp(mode, "raw") ? "end\n" : "Z", 0);
	put_file("slave", acc, n);
	write_all(1, "done\n", 5);
	exit(0);
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	const char *mode = argv[1];
	dir = argv[2];
	int m = posix_openpt(O_RDWR | O_NOCTTY);
	if (m < 0 || grantpt(m))
		die("posix_openpt");
	int locked = !strcmp(mode, "locked");
	if (!locked && unlockpt(m))
		die("unlockpt");
	int pkt = !strcmp(mode, "pkt"), on = 1;
	if (pkt && ioctl(m, TIOCPKT, &on))
		die("TIOCPKT");
	char slave[64];
	if (ptsname_r(m, slave, sizeof slave))
		die("ptsname");
	pid_t kid = -1;
	if (!locked) {
		kid = fork();
		if (kid == 0)
			child(mode, slave);
		wait_file("child-set");
	}
	if (!strcmp(mode, "canon"))
		write_all(m, "one\rpartial", 11);
	if (!strcmp(mode, "raw"))
		write_all(m, RAW_BYTES, sizeof RAW_BYTES - 1);
	if (pkt || !strcmp(mode, "out"))
		wait_file("wrote");
	touch("ready");
	wait_file("go");
	const char *end = "done\r\n";
	int s = -1;
	if (!strcmp(mode, "canon"))
		write_all(m, " end\r", 5);
	if (!strcmp(mode, "raw")) {
		write_all(m, "Z", 1);
		end = "done\n";
	}
	if (pkt || !strcmp(mode, "out"))
		end = "end\r\n";
	if (locked) {
		if (unlockpt(m) || (s = open(slave, O_RDWR | O_NOCTTY)) < 0)
			die("opening the slave");
		write_all(s, "hi\n", 3);
		end = "hi\r\n";
	}
	char acc[8192];
	size_t n = read_until(m, acc, sizeof acc, end, pkt);
	put_file("master", acc, n);
	if (kid > 0)
		waitpid(kid, NULL, 0);
	return 0;
}
