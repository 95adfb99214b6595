/* File descriptors passed over UNIX sockets, and peer credentials, for the checkpoint/restore
 * tests. Modes (OUT is a file both processes append their report lines to; the parent prints
 * "ready PARENT CHILD" on stdout once set up):
 *   pass DIR OUT   the parent opens DIR/data (offset 7), makes a pipe and a stream socket pair
 *                  and sends the file, the pipe's write end and one end of the pair to its
 *                  child over a stream socket pair ("F", "P", "S", one fd each); then one end
 *                  of a seqpacket pair over whose other end it sent a memfd and an eventfd
 *                  (count 5) first ("N"; "M", "E" in its own queue), then "done". It keeps
 *                  the file (with a flock on it) and the seqpacket pair's other end open and
 *                  closes the rest it sent. The child says "child ready" and receives only on SIGUSR1, then says
 *                  "file <5 bytes it reads>", "memfd <its bytes>", "eventfd <its count>" and
 *                  every 20 ms writes "p N" into the pipe and sends "s N" over the socket; the
 *                  parent says each "p N" it reads, answers "r N", and the child says "c N"
 *                  for each answer. SIGUSR2 makes the parent say "pos <offset of its file>"
 *                  (shared with the child's: one open file).
 *   creds DIR OUT  the parent makes a stream socket pair and a seqpacket listener at DIR/l;
 *                  its child becomes nobody (uid, gid and groups 65534) and connects; the
 *                  parent accepts (and keeps listening). On SIGUSR2 each says "cred WHO pid
 *                  uid gid groups" for each socket it holds (SO_PEERCRED, SO_PEERGROUPS):
 *                  parent-pair, parent-conn, child-pair, child-conn. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static const char *out_path;
static volatile sig_atomic_t go, report;

static void on_usr1(int s) { (void)s; go = 1; }
static void on_usr2(int s) { (void)s; report = 1; }

static void say(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    int fd = open(out_path, O_WRONLY | O_APPEND | O_CREAT, 0666);
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

/* Waits for SIGUSR1 without missing one sent before the wait. */
static void wait_go(void) {
    sigset_t usr1, old;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, &old);
    while (!go) sigsuspend(&old);
    sigprocmask(SIG_SETMASK, &old, NULL);
}

/* ---- pass */

static void send_fd(int s, char tag, int fd) {
    struct iovec iov = {&tag, 1};
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
    memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    if (sendmsg(s, &m, 0) != 1) die("sendmsg");
}

/* Receives one byte, which must be `tag`, and the one fd that must come with it. */
static int recv_fd(int s, char tag) {
    char c = 0;
    struct iovec iov = {&c, 1};
    union {
        char buf[CMSG_SPACE(4 * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                       .msg_controllen = sizeof u.buf};
    if (recvmsg(s, &m, MSG_CMSG_CLOEXEC) != 1) die("recvmsg");
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    if (c != tag || !cm || cm->cmsg_type != SCM_RIGHTS || cm->cmsg_len != CMSG_LEN(sizeof(int))) {
        say("bad message %c (want %c): %s\n", c, tag, cm ? "wrong fds" : "no fd");
        _exit(1);
    }
    int fd;
    memcpy(&fd, CMSG_DATA(cm), sizeof fd);
    return fd;
}

static _Noreturn void pass_child(int chan) {
    handlers();
    say("child ready\n");
    wait_go();
    int file = recv_fd(chan, 'F'), pipe_w = recv_fd(chan, 'P'), sock = recv_fd(chan, 'S');
    int nested = recv_fd(chan, 'N');
    char done[5] = {0};
    if (recv(chan, done, 4, MSG_WAITALL) != 4 || strcmp(done, "done")) die("done");
    char buf[16] = {0};
    if (read(file, buf, 5) != 5) die("read file");
    say("file %s\n", buf);
    int memfd = recv_fd(nested, 'M'), efd = recv_fd(nested, 'E');
    memset(buf, 0, sizeof buf);
    if (pread(memfd, buf, 11, 0) != 11) die("read memfd");
    say("memfd %s\n", buf);
    eventfd_t count = 0;
    if (eventfd_read(efd, &count)) die("read eventfd");
    say("eventfd %llu\n", (unsigned long long)count);
    for (unsigned i = 0;; i++) {
        char line[64];
        int n = snprintf(line, sizeof line, "p %u\n", i);
        if (write(pipe_w, line, n) != n) die("pipe write");
        n = snprintf(line, sizeof line, "s %u", i);
        if (send(sock, line, n, 0) != n) die("socket send");
        char reply[64] = {0};
        if (recv(sock, reply, sizeof reply - 1, 0) <= 0) die("socket recv");
        unsigned r;
        if (sscanf(reply, "r %u", &r) != 1 || r != i) say("bad reply %s to %u\n", reply, i);
        say("c %u\n", i);
        usleep(20000);
    }
}

/* The parent's side: reads the pipe line by line, answers the socket. */
static _Noreturn void pass_parent(int file, int pipe_r, int sock) {
    char acc[4096];
    size_t have = 0;
    for (;;) {
        if (report) {
            report = 0;
            say("pos %ld\n", (long)lseek(file, 0, SEEK_CUR));
        }
        struct pollfd p[2] = {{pipe_r, POLLIN, 0}, {sock, POLLIN, 0}};
        if (poll(p, 2, 100) < 0 && errno != EINTR) die("poll");
        if (p[0].revents & POLLIN) {
            ssize_t n = read(pipe_r, acc + have, sizeof acc - have - 1);
            if (n <= 0) die("pipe read");
            have += n;
            char *nl;
            while ((nl = memchr(acc, '\n', have))) {
                *nl = 0;
                say("%s\n", acc);
                have -= nl + 1 - acc;
                memmove(acc, nl + 1, have);
            }
        }
        if (p[1].revents & POLLIN) {
            char msg[64] = {0};
            if (recv(sock, msg, sizeof msg - 1, 0) <= 0) die("socket recv");
            unsigned i;
            if (sscanf(msg, "s %u", &i) != 1) say("bad message %s\n", msg);
            char reply[64];
            int n = snprintf(reply, sizeof reply, "r %u", i);
            if (send(sock, reply, n, 0) != n) die("socket reply");
        }
    }
}

static _Noreturn void pass(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/data", dir);
    int file = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    const char *text = "0123456789abcdefghijklmnopqrstuvwxyz";
    if (file < 0 || write(file, text, strlen(text)) != (ssize_t)strlen(text)) die("data file");
    lseek(file, 7, SEEK_SET);
    /* A lock of the open file in flight, kept by the parent's fd of it. */
    if (flock(file, LOCK_EX)) die("flock");
    int pipefd[2], talk[2], chan[2];
    if (pipe(pipefd) || socketpair(AF_UNIX, SOCK_STREAM, 0, talk) ||
        socketpair(AF_UNIX, SOCK_STREAM, 0, chan))
        die("pipe or socketpair");
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        /* Only what comes through the channel. */
        close(file);
        close(pipefd[0]);
        close(pipefd[1]);
        close(talk[0]);
        close(talk[1]);
        close(chan[0]);
        pass_child(chan[1]);
    }
    close(chan[1]);
    send_fd(chan[0], 'F', file);
    send_fd(chan[0], 'P', pipefd[1]);
    send_fd(chan[0], 'S', talk[1]);
    /* A socket in flight with descriptors in flight in its own queue. */
    int nest[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, nest)) die("socketpair");
    int memfd = memfd_create("ckpt-scm", 0), efd = eventfd(5, 0);
    if (memfd < 0 || efd < 0 || write(memfd, "memfd-bytes", 11) != 11) die("memfd or eventfd");
    send_fd(nest[0], 'M', memfd);
    send_fd(nest[0], 'E', efd);
    send_fd(chan[0], 'N', nest[1]);
    close(memfd);
    close(efd);
    close(nest[1]);
    if (send(chan[0], "done", 4, 0) != 4) die("send done");
    /* The write end and the socket are in flight only; the file stays open here too. */
    close(pipefd[1]);
    close(talk[1]);
    handlers();
    printf("ready %d %d\n", getpid(), child);
    fflush(stdout);
    pass_parent(file, pipefd[0], talk[0]);
}

/* ---- creds */

static void say_cred(const char *who, int s) {
    struct ucred c;
    socklen_t l = sizeof c;
    if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &c, &l)) die("SO_PEERCRED");
    gid_t groups[16];
    l = sizeof groups;
    int n = getsockopt(s, SOL_SOCKET, SO_PEERGROUPS, groups, &l) ? -1 : (int)(l / sizeof(gid_t));
    char list[256] = "";
    for (int i = 0; i < n; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%u", i ? "," : "", groups[i]);
    say("cred %s %d %u %u [%s]\n", who, c.pid, c.uid, c.gid, list);
}

static _Noreturn void creds_loop(const char *who, int pair, int conn) {
    char a[64], b[64];
    snprintf(a, sizeof a, "%s-pair", who);
    snprintf(b, sizeof b, "%s-conn", who);
    for (;;) {
        if (report) {
            report = 0;
            say_cred(a, pair);
            say_cred(b, conn);
        }
        usleep(20000);
    }
}

static _Noreturn void creds(const char *dir) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair)) die("socketpair");
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s/l", dir);
    unlink(a.sun_path);
    int l = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1)) die("listen");
    chmod(a.sun_path, 0777);
    /* The child writes here too, as nobody. */
    int out = open(out_path, O_WRONLY | O_CREAT, 0666);
    if (out < 0 || fchmod(out, 0666)) die("OUT");
    close(out);
    handlers();
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        gid_t nogroup = 65534;
        if (setgroups(1, &nogroup) || setresgid(65534, 65534, 65534) ||
            setresuid(65534, 65534, 65534))
            die("becoming nobody");
        int c = socket(AF_UNIX, SOCK_SEQPACKET, 0);
        if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a)) die("connect");
        close(l);
        close(pair[0]);
        say("child ready\n");
        creds_loop("child", pair[1], c);
    }
    int conn = accept(l, NULL, NULL);
    if (conn < 0) die("accept");
    close(pair[1]);
    printf("ready %d %d\n", getpid(), child);
    fflush(stdout);
    creds_loop("parent", pair[0], conn);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: scm pass|creds DIR OUT\n");
        return 2;
    }
    out_path = argv[3];
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(argv[1], "pass")) pass(argv[2]);
    if (!strcmp(argv[1], "creds")) creds(argv[2]);
    return 2;
}
