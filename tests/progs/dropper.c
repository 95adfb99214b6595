/* Opens /etc/shadow (fd 3, root only), then drops from root to nobody (groups, gid, uid) the
 * usual way, then says "dropped" and waits. For the tests that the interceptor's control
 * thread follows the program's credentials and that such a daemon restores. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <unistd.h>

int main(void)
{
	gid_t groups[] = { 65534 };
	if (open("/etc/shadow", O_RDONLY) != 3) {
		perror("opening /etc/shadow as fd 3");
		return 1;
	}
	if (setgroups(1, groups) != 0 || setgid(65534) != 0 || setuid(65534) != 0) {
		perror("dropping privileges");
		return 1;
	}
	printf("dropped\n");
	fflush(stdout);
	for (;;)
		pause();
}
