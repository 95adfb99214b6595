/* A second thread waits in sigsuspend() with SIGUSR1 and SIGUSR2 blocked outside the call
 * (only SIGUSR1 during it), and reports its mask once the call returns, woken by SIGUSR2:
 * "usr2-blocked 1" when its own mask came back, 0 when it kept the call's temporary one.
 * The main thread blocks both and waits in pthread_join, so SIGUSR2 sent to the process
 * reaches the waiting thread. (The waiting thread is not the main one: ckpt runs calls of its
 * own in the main thread at a checkpoint, which lets the kernel put its mask back first.)
 * Usage: sigmask OUT. Prints "ready PID" on stdout once the thread waits. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

static volatile sig_atomic_t woken;
static void on_usr2(int s) { (void)s; woken = 1; }

static void *waiter(void *out)
{
	sigset_t during, now;
	sigemptyset(&during);
	sigaddset(&during, SIGUSR1);
	printf("ready %d\n", getpid());
	fflush(stdout);
	while (!woken)
		sigsuspend(&during);
	pthread_sigmask(SIG_BLOCK, NULL, &now);
	FILE *f = fopen(out, "w");
	if (!f)
		return NULL;
	fprintf(f, "usr1-blocked %d usr2-blocked %d\n", sigismember(&now, SIGUSR1),
		sigismember(&now, SIGUSR2));
	fclose(f);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	struct sigaction sa = { .sa_handler = on_usr2 };
	sigaction(SIGUSR2, &sa, NULL);
	sigset_t own;
	sigemptyset(&own);
	sigaddset(&own, SIGUSR1);
	sigaddset(&own, SIGUSR2);
	sigprocmask(SIG_SETMASK, &own, NULL); /* inherited by the waiting thread */
	pthread_t t;
	if (pthread_create(&t, NULL, waiter, argv[1]))
		return 1;
	pthread_join(t, NULL);
	return 0;
}
