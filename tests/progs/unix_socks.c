/* UNIX sockets for the checkpoint/restore tests. Modes (OUT is a file the program appends
 * its report lines to; it prints "ready PID" on stdout once set up):
 *   pair dgram|seqpacket OUT   a socket pair with 100 messages queued each way (sizes vary,
 *                              one empty), options set; seqpacket: end a shut down for
 *                              writing. On SIGUSR1 it reads every message back, checking
 *                              each one's length and bytes, and reports the options again.
 *   stream PATH OUT            a server listening on PATH and a forked client connected to it
 *                              exchange numbered messages ("c N", "s N" lines); SIGUSR2 makes
 *                              each report its socket's names.
 *   dgram PATH OUT             a datagram server bound to PATH (owner nobody, mode 0640) and a
 *                              forked client bound to an abstract name and connected to it;
 *                              the client queues 5 messages ("c-sent"), the server reads them
 *                              only on SIGUSR1 (with their sender), then they exchange numbered
 *                              messages.
 *   scm OUT                    a stream pair with an inotify instance in flight (a kind not
 *                              carried in flight).
 *   logger PATH OUT            a datagram socket connected to PATH (a socket of the test,
 *                              playing /dev/log) sends "log N" every 20 ms (like syslog(3)).
 *   client PATH OUT            a stream socket connected to PATH (a server of the test)
 *                              writes "c N\n" every 20 ms; says "error ..." when one fails.
 *   reader FD OUT              on SIGUSR1, reads inherited socket FD to its end and says
 *                              "read <bytes> then eof|error". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/inotify.h>
#include <sys/un.h>
#include <unistd.h>

static const char *out_path;
static volatile sig_atomic_t go, names;

static void on_usr1(int s) { (void)s; go = 1; }

/* Waits for SIGUSR1 without the race of `wait_go();` (a signal between the test
 * and the pause would be missed: more likely right after a restore, which redoes the pause
 * after a handler that ran first). */
static void wait_go(void)
{
    sigset_t usr1, old;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, &old);
    while (!go)
        sigsuspend(&old);
    sigprocmask(SIG_SETMASK, &old, NULL);
}
static void on_usr2(int s) { (void)s; names = 1; }

static void say(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    int fd = open(out_path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0 || write(fd, buf, n) != n) _exit(90);
    close(fd);
}

static void die(const char *what) {
    say("error %s: %s\n", what, strerror(errno));
    _exit(1);
}

static void handlers(void) {
    struct sigaction sa = {0};
    sa.sa_flags = SA_RESTART;
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);
}

/* ---- pair */

static size_t msg_len(int i, int dir, int dgram) {
    if (dgram && i == 7) return 0;
    return 1 + (size_t)(i * 53 + dir * 17) % 900;
}

static unsigned char msg_byte(int i, int dir, size_t j) { return (unsigned char)(i * 7 + dir + j); }

static void fill(int from, int dir, int dgram) {
    unsigned char buf[1024];
    for (int i = 0; i < 100; i++) {
        size_t n = msg_len(i, dir, dgram);
        for (size_t j = 0; j < n; j++) buf[j] = msg_byte(i, dir, j);
        if (send(from, buf, n, 0) != (ssize_t)n) die("send");
    }
}

/* Reads the 100 messages of direction `dir` at `to`; says how many came right. */
static void drain(int to, int dir, int dgram, const char *name) {
    unsigned char buf[4096];
    int good = 0;
    for (int i = 0; i < 100; i++) {
        ssize_t n = recv(to, buf, sizeof buf, MSG_DONTWAIT);
        size_t want = msg_len(i, dir, dgram);
        if (n != (ssize_t)want) {
            say("%s message %d: length %zd, want %zu\n", name, i, n, want);
            continue;
        }
        int same = 1;
        for (size_t j = 0; j < want; j++) same &= buf[j] == msg_byte(i, dir, j);
        if (same) good++;
        else say("%s message %d: wrong bytes\n", name, i);
    }
    ssize_t more = recv(to, buf, sizeof buf, MSG_DONTWAIT);
    say("%s %d of 100 ok, then %s\n", name, good,
        more == 0 ? "eof" : more < 0 && errno == EAGAIN ? "empty" : "more");
}

static void options(int a, int b, const char *when) {
    int snd = 0, pass = 0;
    socklen_t l = sizeof snd;
    getsockopt(a, SOL_SOCKET, SO_SNDBUF, &snd, &l);
    l = sizeof pass;
    getsockopt(b, SOL_SOCKET, SO_PASSCRED, &pass, &l);
    int nb = (fcntl(a, F_GETFL) & O_NONBLOCK) != 0;
    say("%s sndbuf=%d passcred=%d nonblock=%d\n", when, snd, pass, nb);
}

static int pair(const char *kind) {
    int dgram = strcmp(kind, "dgram") == 0;
    int sv[2];
    if (socketpair(AF_UNIX, dgram ? SOCK_DGRAM : SOCK_SEQPACKET, 0, sv)) die("socketpair");
    int a = sv[0], b = sv[1], big = 1 << 20, one = 1;
    setsockopt(a, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    setsockopt(b, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    fill(a, 0, dgram);
    fill(b, 1, dgram);
    int snd = 50000;
    setsockopt(a, SOL_SOCKET, SO_SNDBUF, &snd, sizeof snd);
    setsockopt(b, SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
    fcntl(a, F_SETFL, O_NONBLOCK);
    if (!dgram) shutdown(a, SHUT_WR);
    options(a, b, "before");
    printf("ready %d\n", getpid());
    fflush(stdout);
    wait_go();
    options(a, b, "after");
    drain(b, 0, dgram, "at-b");
    drain(a, 1, dgram, "at-a");
    if (!dgram) {
        ssize_t r = send(a, "x", 1, MSG_NOSIGNAL);
        say("send after shutdown: %s\n", r < 0 && errno == EPIPE ? "EPIPE" : "accepted");
    }
    say("done\n");
    return 0;
}

/* ---- stream client and server */

static int full(int fd, void *p, size_t n, int writing) {
    char *c = p;
    while (n) {
        ssize_t r = writing ? write(fd, c, n) : read(fd, c, n);
        if (r <= 0) return -1;
        c += r;
        n -= r;
    }
    return 0;
}

static void say_names(int fd, const char *who) {
    struct sockaddr_un l = {0}, p = {0};
    socklen_t ll = sizeof l, pl = sizeof p;
    getsockname(fd, (struct sockaddr *)&l, &ll);
    getpeername(fd, (struct sockaddr *)&p, &pl);
    say("names %s local=%s peer=%s\n", who, ll > 2 ? l.sun_path : "(unnamed)",
        pl > 2 ? p.sun_path : "(unnamed)");
}

static void exchange(int fd, int client, uint32_t n) {
    for (;; n++) {
        if (names) {
            names = 0;
            say_names(fd, client ? "client" : "server");
        }
        uint32_t v = n, r;
        if (client) {
            if (full(fd, &v, 4, 1) || full(fd, &r, 4, 0)) die("client exchange");
            if (r != 2 * n + 1) say("bad reply %u to %u\n", r, n);
            say("c %u\n", n);
            usleep(10000);
        } else {
            if (full(fd, &v, 4, 0)) die("server read");
            r = 2 * v + 1;
            if (full(fd, &r, 4, 1)) die("server write");
            say("s %u\n", v);
        }
    }
}

static struct sockaddr_un addr_of(const char *path) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    return a;
}

static int stream(const char *path) {
    struct sockaddr_un a = addr_of(path);
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 4)) die("listen");
    pid_t child = fork();
    if (child == 0) {
        close(l);
        int c = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(c, (struct sockaddr *)&a, sizeof a)) die("connect");
        exchange(c, 1, 0);
    }
    int s = accept(l, NULL, NULL);
    if (s < 0) die("accept");
    printf("ready %d\n", child);
    fflush(stdout);
    exchange(s, 0, 0);
    return 0;
}

/* ---- datagram server and client */

static _Noreturn void dgram(const char *path) {
    struct sockaddr_un a = addr_of(path);
    int s = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (bind(s, (struct sockaddr *)&a, sizeof a)) die("bind");
    if (chmod(path, 0640) || (getuid() == 0 && chown(path, 65534, 65534))) die("chmod");
    pid_t child = fork();
    if (child == 0) {
        struct sockaddr_un me = {.sun_family = AF_UNIX};
        int n = snprintf(me.sun_path + 1, sizeof me.sun_path - 1, "ckpt-dgc-%d", getpid());
        int c = socket(AF_UNIX, SOCK_DGRAM, 0);
        if (bind(c, (struct sockaddr *)&me, offsetof(struct sockaddr_un, sun_path) + 1 + n))
            die("client bind");
        if (connect(c, (struct sockaddr *)&a, sizeof a)) die("client connect");
        char buf[64];
        for (int k = 0; k < 5; k++) {
            int len = snprintf(buf, sizeof buf, "q%d%.*s", k, k * 3, "............");
            if (send(c, buf, len, 0) != len) die("client send");
        }
        say("c-sent\n");
        for (int k = 0; k < 5; k++) {
            ssize_t r = recv(c, buf, sizeof buf - 1, 0);
            buf[r < 0 ? 0 : r] = 0;
            say("c-reply %s\n", buf);
        }
        for (uint32_t i = 5;; i++) {
            uint32_t r = 0;
            if (send(c, &i, 4, 0) != 4 || recv(c, &r, 4, 0) != 4) die("client exchange");
            if (r != 2 * i + 1) say("bad reply %u to %u\n", r, i);
            say("c %u\n", i);
            usleep(10000);
        }
    }
    printf("ready %d\n", child);
    fflush(stdout);
    wait_go();
    char buf[128];
    for (int k = 0; k < 5; k++) {
        struct sockaddr_un from = {0};
        socklen_t fl = sizeof from;
        ssize_t r = recvfrom(s, buf, sizeof buf - 1, 0, (struct sockaddr *)&from, &fl);
        if (r < 0) die("server recv");
        buf[r] = 0;
        int abstract = fl > sizeof(sa_family_t) && from.sun_path[0] == 0;
        say("s-queued %s from=%s%.*s\n", buf, abstract ? "@" : "", (int)(fl - 3),
            from.sun_path + 1);
        int len = snprintf(buf, sizeof buf, "r%d", k);
        if (sendto(s, buf, len, 0, (struct sockaddr *)&from, fl) != len) die("server reply");
    }
    for (;;) {
        struct sockaddr_un from = {0};
        socklen_t fl = sizeof from;
        uint32_t v;
        if (recvfrom(s, &v, 4, 0, (struct sockaddr *)&from, &fl) != 4) die("server recv");
        uint32_t r = 2 * v + 1;
        if (sendto(s, &r, 4, 0, (struct sockaddr *)&from, fl) != 4) die("server send");
        say("s %u\n", v);
    }
}

/* ---- fds in flight */

static _Noreturn void scm(void) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) die("socketpair");
    int tfd = inotify_init1(0);
    if (tfd < 0) die("inotify_init1");
    char c = 'x';
    struct iovec iov = {&c, 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                       .msg_controllen = sizeof u.buf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &tfd, sizeof(int));
    if (sendmsg(sv[0], &m, 0) != 1) die("sendmsg");
    close(tfd);
    printf("ready %d\n", getpid());
    fflush(stdout);
    for (;;) pause();
}

/* ---- peers outside the tree */

static int connected_to(const char *path, int type) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    int s = socket(AF_UNIX, type, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a)) die("connect");
    return s;
}

static _Noreturn void outside(const char *kind, const char *path) {
    int dgram = !strcmp(kind, "logger");
    int s = connected_to(path, dgram ? SOCK_DGRAM : SOCK_STREAM);
    signal(SIGPIPE, SIG_IGN);
    printf("ready %d\n", getpid());
    fflush(stdout);
    for (unsigned i = 0;; i++) {
        char buf[64];
        int n = snprintf(buf, sizeof buf, dgram ? "log %u" : "c %u\n", i);
        if (send(s, buf, n, 0) != n) say("error send %u: %s\n", i, strerror(errno));
        usleep(20000);
    }
}

static _Noreturn void reader(int fd) {
    printf("ready %d\n", getpid());
    fflush(stdout);
    wait_go();
    char buf[256];
    size_t got = 0;
    ssize_t n;
    while ((n = read(fd, buf + got, sizeof buf - 1 - got)) > 0) got += n;
    buf[got] = 0;
    say("read %s then %s\n", buf, n == 0 ? "eof" : "error");
    for (;;) pause();
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    out_path = argv[argc - 1];
    handlers();
    if (!strcmp(argv[1], "pair") && argc == 4) return pair(argv[2]);
    if (!strcmp(argv[1], "stream") && argc == 4) return stream(argv[2]);
    if (!strcmp(argv[1], "dgram") && argc == 4) dgram(argv[2]);
    if (!strcmp(argv[1], "scm")) scm();
    if ((!strcmp(argv[1], "logger") || !strcmp(argv[1], "client")) && argc == 4)
        outside(argv[1], argv[2]);
    if (!strcmp(argv[1], "reader") && argc == 4) reader(atoi(argv[2]));
    return 2;
}
