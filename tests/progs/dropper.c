/* Drops from root to nobody (groups, gid, uid) the usual way, then says "dropped" and waits.
 * For the test that the interceptor's control thread follows the program's credentials. */
#define _GNU_SOURCE
#include <grp.h>
#include <stdio.h>
#include <unistd.h>

int main(void)
{
	gid_t groups[] = { 65534 };
	if (setgroups(1, groups) != 0 || setgid(65534) != 0 || setuid(65534) != 0) {
		perror("dropping privileges");
		return 1;
	}
	printf("dropped\n");
	fflush(stdout);
	for (;;)
		pause();
}
