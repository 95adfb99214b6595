/* inotify and fanotify instances, for the guest tests.
 *   notify OUTFILE DIR [deleted]
 * Makes DIR/w (a directory), DIR/file, DIR/a, DIR/b, DIR/c. inotify: watches a, b, w, c, file
 * (wds 1-5), then removes a, b and c: what is left is wd 3 on w (IN_CREATE | IN_DELETE) and
 * wd 5 on file (IN_MODIFY), with gaps. fanotify (FAN_CLASS_NOTIF): an inode mark on file
 * (FAN_MODIFY) and a mount mark on DIR's mount (FAN_CLOSE_WRITE). It reports each event to
 * OUTFILE: "ino wd=<wd> mask=<hex> name=<name>" and, for fanotify events on paths under DIR
 * from other processes, "fan mask=<hex> path=<path>". Prints "ready PID" on stdout when set up.
 * With "deleted", it also watches DIR/gone, held open and unlinked (its watch stays while
 * the file is open): a checkpoint must refuse it. With "unread", it writes to DIR/file itself
 * before saying "ready" (an event queued at both instances) and reads nothing until SIGUSR1. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

static int out;
static volatile sig_atomic_t go = 1;
static void on_usr1(int s) { (void)s; go = 1; }
static char dir[PATH_MAX / 2];

static void say(const char *line)
{
	if (write(out, line, strlen(line)) != (ssize_t)strlen(line))
		_exit(1);
}

static void inotify_events(int fd)
{
	char buf[4096] __attribute__((aligned(8)));
	ssize_t n = read(fd, buf, sizeof(buf));
	for (char *p = buf; n > 0 && p < buf + n;) {
		struct inotify_event *e = (struct inotify_event *)p;
		char line[PATH_MAX + 128];
		snprintf(line, sizeof(line), "ino wd=%d mask=%x name=%s\n", e->wd, e->mask,
			 e->len ? e->name : "");
		say(line);
		p += sizeof(*e) + e->len;
	}
}

static void fanotify_events(int fd)
{
	char buf[4096] __attribute__((aligned(8)));
	ssize_t n = read(fd, buf, sizeof(buf));
	struct fanotify_event_metadata *m = (void *)buf;
	for (; FAN_EVENT_OK(m, n); m = FAN_EVENT_NEXT(m, n)) {
		char link[64], path[PATH_MAX];
		snprintf(link, sizeof(link), "/proc/self/fd/%d", m->fd);
		ssize_t len = m->fd >= 0 ? readlink(link, path, sizeof(path) - 1) : -1;
		path[len > 0 ? len : 0] = 0;
		if (m->pid != getpid() && strncmp(path, dir, strlen(dir)) == 0) {
			char line[PATH_MAX + 128];
			snprintf(line, sizeof(line), "fan mask=%llx path=%s\n",
				 (unsigned long long)m->mask, path);
			say(line);
		}
		if (m->fd >= 0)
			close(m->fd);
	}
}

static int make(const char *name, int is_dir)
{
	char p[PATH_MAX];
	snprintf(p, sizeof(p), "%s/%s", dir, name);
	return is_dir ? mkdir(p, 0755) : close(open(p, O_CREAT | O_WRONLY, 0644));
}

static int watch(int ino, const char *name, unsigned mask)
{
	char p[PATH_MAX];
	snprintf(p, sizeof(p), "%s/%s", dir, name);
	return inotify_add_watch(ino, p, mask);
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
	snprintf(dir, sizeof(dir), "%s", argv[2]);
	if (out < 0 || make("w", 1) || make("file", 0) || make("a", 0) || make("b", 0) || make("c", 0))
		return 1;
	int ino = inotify_init1(IN_CLOEXEC);
	int wa = watch(ino, "a", IN_ATTRIB), wb = watch(ino, "b", IN_ATTRIB);
	int ww = watch(ino, "w", IN_CREATE | IN_DELETE), wc = watch(ino, "c", IN_ATTRIB);
	int wf = watch(ino, "file", IN_MODIFY);
	if (wa != 1 || wb != 2 || ww != 3 || wc != 4 || wf != 5)
		return 1;
	if (inotify_rm_watch(ino, wa) || inotify_rm_watch(ino, wb) || inotify_rm_watch(ino, wc))
		return 1;
	/* The IN_IGNORED events of the removals are read now: none is left unread. */
	inotify_events(ino);
	if (argc > 3 && strcmp(argv[3], "deleted") == 0) {
		char p[PATH_MAX];
		snprintf(p, sizeof(p), "%s/gone", dir);
		int held = open(p, O_CREAT | O_RDWR, 0644);
		if (held < 0 || watch(ino, "gone", IN_MODIFY) < 0 || unlink(p))
			return 1;
	}
	int fan = fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC, O_RDONLY | O_LARGEFILE);
	char file[PATH_MAX];
	snprintf(file, sizeof(file), "%s/file", dir);
	if (fan < 0 || fanotify_mark(fan, FAN_MARK_ADD, FAN_MODIFY, AT_FDCWD, file) ||
	    fanotify_mark(fan, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_CLOSE_WRITE, AT_FDCWD, dir))
		return 3;
	sigset_t usr1, none;
	sigemptyset(&usr1);
	sigemptyset(&none);
	sigaddset(&usr1, SIGUSR1);
	if (argc > 3 && strcmp(argv[3], "unread") == 0) {
		sigprocmask(SIG_BLOCK, &usr1, NULL);
		signal(SIGUSR1, on_usr1);
		go = 0;
		int f = open(file, O_WRONLY | O_APPEND);
		if (f < 0 || write(f, "x\n", 2) != 2 || close(f))
			return 1;
	}
	printf("ready %d\n", getpid());
	fflush(stdout);
	while (!go)
		sigsuspend(&none);
	for (;;) {
		struct pollfd p[2] = { { ino, POLLIN, 0 }, { fan, POLLIN, 0 } };
		if (poll(p, 2, -1) < 0)
			continue;
		if (p[0].revents & POLLIN)
			inotify_events(ino);
		if (p[1].revents & POLLIN)
			fanotify_events(fan);
	}
}
