/* A multi-threaded target for the guest tests.
 *   mt_counter OUTFILE NWORKERS
 * The main thread appends "N TOTAL" to OUTFILE every ~10 ms and broadcasts a tick on a
 * condition variable; each worker waits for ticks and adds 1 to TOTAL under a mutex. Every
 * thread checks that its __thread counter, its name, its signal mask and its tid survive;
 * a problem is written as a line containing "bad". Prints "ready" when all workers run. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static unsigned long tick, total;
static int out, started, nworkers;
static __thread unsigned long mine;

static void check_self(const char *name, int idx, pid_t tid, int block_usr2)
{
	char now[32] = "";
	sigset_t set;
	pthread_getname_np(pthread_self(), now, sizeof(now));
	if (strcmp(now, name) != 0)
		dprintf(out, "bad-name %d %s\n", idx, now);
	if ((pid_t)syscall(SYS_gettid) != tid)
		dprintf(out, "bad-tid %d\n", idx);
	pthread_sigmask(SIG_BLOCK, NULL, &set);
	if (sigismember(&set, SIGUSR2) != block_usr2)
		dprintf(out, "bad-mask %d\n", idx);
}

static void *worker(void *arg)
{
	int idx = (int)(long)arg;
	char name[16];
	unsigned long seen = 0, count = 0;
	pid_t tid = (pid_t)syscall(SYS_gettid);
	snprintf(name, sizeof(name), "worker-%d", idx);
	pthread_setname_np(pthread_self(), name);
	if (idx % 2) {
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGUSR2);
		pthread_sigmask(SIG_BLOCK, &set, NULL);
	}
	pthread_mutex_lock(&lock);
	started++;
	pthread_cond_broadcast(&cond);
	for (;;) {
		while (tick == seen)
			pthread_cond_wait(&cond, &lock);
		seen = tick;
		total++;
		mine++;
		count++;
		if (mine != count)
			dprintf(out, "bad-tls %d\n", idx);
		pthread_mutex_unlock(&lock);
		check_self(name, idx, tid, idx % 2);
		pthread_mutex_lock(&lock);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
	nworkers = atoi(argv[2]);
	if (out < 0 || nworkers < 1 || nworkers > 64)
		return 1;
	pid_t tid = (pid_t)syscall(SYS_gettid);
	pthread_setname_np(pthread_self(), "mt-main");
	for (long i = 0; i < nworkers; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, worker, (void *)i) != 0)
			return 1;
	}
	pthread_mutex_lock(&lock);
	while (started < nworkers)
		pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);
	printf("ready\n");
	fflush(stdout);
	struct timespec ten_ms = { 0, 10 * 1000 * 1000 };
	for (unsigned long n = 0;; n++) {
		pthread_mutex_lock(&lock);
		tick++;
		unsigned long t = total;
		pthread_cond_broadcast(&cond);
		pthread_mutex_unlock(&lock);
		check_self("mt-main", -1, tid, 0);
		dprintf(out, "%lu %lu\n", n, t);
		nanosleep(&ten_ms, NULL);
	}
}
