/* One CPU-time itimer alone, for the itimer guest test (a process with no other timer).
 *   itimer virtual|prof OUTFILE
 * Arms ITIMER_VIRTUAL or ITIMER_PROF: 300 s of CPU ahead, then every 7 s. Prints "ready PID"
 * on stdout once armed; every 50 ms appends "left=MS interval=MS" (getitimer) to OUTFILE. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	int which = strcmp(argv[1], "virtual") == 0 ? ITIMER_VIRTUAL
		    : strcmp(argv[1], "prof") == 0  ? ITIMER_PROF
						    : -1;
	int out = open(argv[2], O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (which < 0 || out < 0)
		return 2;
	struct itimerval it = { { 7, 0 }, { 300, 0 } };
	if (setitimer(which, &it, NULL) != 0)
		return 1;
	printf("ready %d\n", getpid());
	fflush(stdout);
	struct timespec pause = { 0, 50 * 1000 * 1000 };
	for (;;) {
		struct itimerval now;
		if (getitimer(which, &now) != 0)
			return 1;
		dprintf(out, "left=%ld interval=%ld\n",
			now.it_value.tv_sec * 1000 + now.it_value.tv_usec / 1000,
			now.it_interval.tv_sec * 1000 + now.it_interval.tv_usec / 1000);
		nanosleep(&pause, NULL);
	}
}
