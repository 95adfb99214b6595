/* Forks once without exec; both processes then wait. The parent prints "forked <child pid>".
 * For the test that a fork child of an intercepted program gets its own control thread. */
#include <stdio.h>
#include <unistd.h>

int main(void)
{
	pid_t child = fork();
	if (child < 0)
		return 1;
	if (child > 0) {
		printf("forked %d\n", (int)child);
		fflush(stdout);
	}
	for (;;)
		pause();
}
