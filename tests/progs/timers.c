/* Timers of every kind, for the timers guest test.
 *   timers OUTFILE
 * The process arms:
 *   A  a POSIX timer, CLOCK_MONOTONIC, every 100 ms, SIGUSR1 with sival_int 0x1234;
 *   B  a POSIX timer, CLOCK_MONOTONIC, once, 8 s ahead, SIGUSR2;
 *   C  a POSIX timer, CLOCK_MONOTONIC, every 200 ms, SIGRTMIN+2 to its worker thread only
 *      (SIGEV_THREAD_ID, sival_int 0x5678), which takes it with sigwaitinfo;
 *   D  a POSIX timer, CLOCK_MONOTONIC, SIGEV_NONE, once, 1000 s ahead (only read);
 *   ITIMER_REAL every 150 ms (SIGALRM), ITIMER_PROF once, 500 s of CPU ahead;
 * and forks a child that calls alarm(9) and waits.
 * Signal handlers count: a timer's signal (si_code SI_TIMER) with the right value and timer
 * id counts as ok, with a wrong one as bad; one raised again by ckpt (SI_USER) as other.
 * SIGRTMIN+3 sent by sigqueue with 0x1234 counts as q, any other SIGRTMIN+3 as qbad.
 * Every 100 ms the parent appends to OUTFILE
 *   "st t=MONO_MS a=N abad=N aother=N q=N qbad=N c=N cbad=N alrm=N b=FIRED_AT_MONO_MS bn=N
 *    bleft=MS dleft=MS profleft=MS err=N ids=A,B,C,D"
 * (b=0 before B fired; *left from timer_gettime/getitimer, -1 if they fail; err counts
 * failing calls), and the child "child-alarm MONO_MS" when its alarm fires.
 * Prints "ready PID CHILDPID" on stdout when everything is armed. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t a_ok, a_bad, a_other, alrm, b_count, q_ok, q_bad;
static volatile long long b_at, c_ok, c_bad;
static timer_t ta, tb, tc, td;
static int kid[4];
static int out_fd;
static volatile pid_t worker_tid;

static long long mono_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* The kernel's id of a timer, as the signal's si_timerid and /proc show it: glibc's timer_t
 * for a SIGEV_SIGNAL timer is that id. */
static int kernel_id(timer_t t)
{
	return (int)(intptr_t)t;
}

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
	(void)sig, (void)uc;
	if (si->si_code != SI_TIMER)
		a_other++;
	else if (si->si_value.sival_int == 0x1234 && si->si_timerid == kid[0])
		a_ok++;
	else
		a_bad++;
}

/* SIGRTMIN+3, which no timer sends: the test queues it with sigqueue. */
static void on_queued(int sig, siginfo_t *si, void *uc)
{
	(void)sig, (void)uc;
	if (si->si_code == SI_QUEUE && si->si_value.sival_int == 0x1234)
		q_ok++;
	else
		q_bad++;
}

static void on_usr2(int sig)
{
	(void)sig;
	b_count++;
	b_at = mono_ms();
}

static void on_alrm(int sig)
{
	(void)sig;
	alrm++;
}

static void on_child_alrm(int sig)
{
	(void)sig;
	dprintf(out_fd, "child-alarm %lld\n", mono_ms());
}

static void *worker(void *arg)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGRTMIN + 2);
	worker_tid = gettid();
	for (;;) {
		siginfo_t si;
		if (sigwaitinfo(&set, &si) < 0)
			continue;
		if (si.si_code == SI_TIMER && si.si_value.sival_int == 0x5678 &&
		    si.si_timerid == kid[2])
			c_ok++;
		else if (si.si_code == SI_TIMER)
			c_bad++;
	}
	return arg;
}

static timer_t make_timer(int notify, int sig, int value, pid_t tid)
{
	struct sigevent sev;
	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = notify;
	sev.sigev_signo = sig;
	sev.sigev_value.sival_int = value;
	sev._sigev_un._tid = tid;
	timer_t t;
	if (timer_create(CLOCK_MONOTONIC, &sev, &t) != 0) {
		perror("timer_create");
		exit(1);
	}
	return t;
}

static void arm(timer_t t, long first_ms, long every_ms)
{
	struct itimerspec its = {
		.it_interval = { every_ms / 1000, (every_ms % 1000) * 1000000 },
		.it_value = { first_ms / 1000, (first_ms % 1000) * 1000000 },
	};
	if (timer_settime(t, 0, &its, NULL) != 0) {
		perror("timer_settime");
		exit(1);
	}
}

/* Milliseconds left on a POSIX timer, -1 if timer_gettime fails (its id is not there). */
static long long left_ms(timer_t t, int *err)
{
	struct itimerspec its;
	if (timer_gettime(t, &its) != 0) {
		++*err;
		return -1;
	}
	return (long long)its.it_value.tv_sec * 1000 + its.it_value.tv_nsec / 1000000;
}

static void child(void)
{
	signal(SIGALRM, on_child_alrm);
	alarm(9);
	for (;;)
		pause();
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	out_fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (out_fd < 0)
		return 1;
	pid_t kid_pid = fork();
	if (kid_pid == 0)
		child();

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_usr1;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_sigaction = on_queued;
	sigaction(SIGRTMIN + 3, &sa, NULL);
	signal(SIGUSR2, on_usr2);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alrm;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGALRM, &sa, NULL);
	/* Blocked everywhere: only the worker takes it, with sigwaitinfo. */
	sigset_t rt;
	sigemptyset(&rt);
	sigaddset(&rt, SIGRTMIN + 2);
	pthread_sigmask(SIG_BLOCK, &rt, NULL);
	pthread_t th;
	pthread_create(&th, NULL, worker, NULL);
	while (!worker_tid)
		sched_yield();

	ta = make_timer(SIGEV_SIGNAL, SIGUSR1, 0x1234, 0);
	tb = make_timer(SIGEV_SIGNAL, SIGUSR2, 0, 0);
	tc = make_timer(SIGEV_THREAD_ID, SIGRTMIN + 2, 0x5678, worker_tid);
	td = make_timer(SIGEV_NONE, 0, 0, 0);
	kid[0] = kernel_id(ta), kid[1] = kernel_id(tb), kid[2] = kernel_id(tc), kid[3] = kernel_id(td);
	arm(ta, 100, 100);
	arm(tb, 8000, 0);
	arm(tc, 200, 200);
	arm(td, 1000000, 0);
	struct itimerval real = { { 0, 150000 }, { 0, 150000 } };
	struct itimerval prof = { { 0, 0 }, { 500, 0 } };
	setitimer(ITIMER_REAL, &real, NULL);
	setitimer(ITIMER_PROF, &prof, NULL);
	printf("ready %d %d\n", getpid(), kid_pid);
	fflush(stdout);

	struct timespec tenth = { 0, 100 * 1000 * 1000 };
	for (;;) {
		int err = 0;
		long long bl = left_ms(tb, &err), dl = left_ms(td, &err);
		struct itimerval p;
		long long pl = getitimer(ITIMER_PROF, &p) == 0
				       ? (long long)p.it_value.tv_sec * 1000 + p.it_value.tv_usec / 1000
				       : (err++, -1);
		dprintf(out_fd,
			"st t=%lld a=%d abad=%d aother=%d q=%d qbad=%d c=%lld cbad=%lld alrm=%d b=%lld bn=%d "
			"bleft=%lld dleft=%lld profleft=%lld err=%d ids=%d,%d,%d,%d\n",
			mono_ms(), a_ok, a_bad, a_other, q_ok, q_bad, c_ok, c_bad, alrm, b_at, b_count, bl, dl, pl,
			err, kid[0], kid[1], kid[2], kid[3]);
		/* Interrupted by the timers' signals: the rest is not slept, which is fine. */
		nanosleep(&tenth, NULL);
	}
}
