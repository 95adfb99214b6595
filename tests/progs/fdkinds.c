/* Descriptors beyond plain files, for the guest tests.
 *   fdkinds OUTFILE DIR
 * Holds a pipe with unread bytes in it, and a file in DIR that was deleted while open (its
 * offset at 8), and a socket pair (fds 7 and 8) with unread bytes queued at both ends. On
 * SIGUSR1 it reports to OUTFILE what it finds: "pipe:<unread bytes>", "deleted:<content>",
 * "deleted-pos:<offset>", "pipe-again:<bytes written and read back>", "sp-a:<queued at 7>",
 * "sp-b:<queued at 8>", "sp-again:<sent on 7, read on 8>", then "done". Prints "ready" on
 * stdout when set up. Also an eventfd (fd 9, count 7, close-on-exec, non-blocking) and a
 * signalfd (fd 10) for SIGUSR2, which is blocked: reported as "efd:<count read>" and
 * "sfd:<signal read, or none>". A timerfd (fd 11) armed for 100 s, then every hour: reported
 * as "tfd:armed <interval seconds>" if it is still armed. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <stdint.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	int out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
	int p[2];
	char path[4096];
	snprintf(path, sizeof(path), "%s/ckpt-deleted-%d", argv[2], getpid());
	int del = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (out < 0 || del < 0 || pipe(p) != 0)
		return 1;
	const char *content = "deleted-content-12345";
	if (write(del, content, strlen(content)) < 0 || lseek(del, 8, SEEK_SET) != 8 || unlink(path) != 0)
		return 1;
	if (write(p[1], "unread-before", 13) != 13)
		return 1;
	fcntl(p[0], F_SETFL, O_NONBLOCK);
	int sp[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) != 0 || sp[0] != 7 || sp[1] != 8)
		return 1;
	if (write(sp[0], "queued-for-b", 12) != 12 || write(sp[1], "queued-for-a", 12) != 12)
		return 1;
	fcntl(sp[1], F_SETFL, O_NONBLOCK);
	sigset_t usr2;
	sigemptyset(&usr2);
	sigaddset(&usr2, SIGUSR2);
	sigprocmask(SIG_BLOCK, &usr2, NULL);
	if (eventfd(7, EFD_CLOEXEC | EFD_NONBLOCK) != 9 || signalfd(-1, &usr2, SFD_NONBLOCK) != 10)
		return 1;
	struct itimerspec its = { .it_interval = { 3600, 0 }, .it_value = { 100, 0 } };
	if (timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK) != 11 || timerfd_settime(11, 0, &its, NULL) != 0)
		return 1;
	signal(SIGUSR1, on_usr1);
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		while (!go)
			pause();
		go = 0;
		char buf[256];
		ssize_t n = read(p[0], buf, sizeof(buf) - 1);
		buf[n > 0 ? n : 0] = 0;
		dprintf(out, "pipe:%s\n", buf);
		n = pread(del, buf, sizeof(buf) - 1, 0);
		buf[n > 0 ? n : 0] = 0;
		dprintf(out, "deleted:%s\n", buf);
		dprintf(out, "deleted-pos:%ld\n", (long)lseek(del, 0, SEEK_CUR));
		if (write(p[1], "again", 5) != 5)
			dprintf(out, "pipe-write-failed\n");
		n = read(p[0], buf, sizeof(buf) - 1);
		buf[n > 0 ? n : 0] = 0;
		dprintf(out, "pipe-again:%s\n", buf);
		n = read(sp[0], buf, sizeof(buf) - 1);
		buf[n > 0 ? n : 0] = 0;
		dprintf(out, "sp-a:%s\n", buf);
		n = read(sp[1], buf, sizeof(buf) - 1);
		buf[n > 0 ? n : 0] = 0;
		dprintf(out, "sp-b:%s\n", buf);
		if (write(sp[0], "again2", 6) != 6)
			dprintf(out, "sp-write-failed\n");
		n = read(sp[1], buf, sizeof(buf) - 1);
		buf[n > 0 ? n : 0] = 0;
		dprintf(out, "sp-again:%s\n", buf);
		uint64_t count = 0;
		if (read(9, &count, 8) == 8)
			dprintf(out, "efd:%llu\n", (unsigned long long)count);
		else
			dprintf(out, "efd:none\n");
		struct signalfd_siginfo si;
		if (read(10, &si, sizeof(si)) == sizeof(si))
			dprintf(out, "sfd:%u\n", si.ssi_signo);
		else
			dprintf(out, "sfd:none\n");
		struct itimerspec now;
		if (timerfd_gettime(11, &now) == 0 && (now.it_value.tv_sec || now.it_value.tv_nsec))
			dprintf(out, "tfd:armed %ld\n", (long)now.it_interval.tv_sec);
		else
			dprintf(out, "tfd:disarmed\n");
		dprintf(out, "done\n");
	}
}
