/* A target with a shared memfd mapping (not checkpointable yet). Prints "ready" and waits. */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

int main(void)
{
	int fd = memfd_create("ckpt-test", 0);
	if (fd < 0 || ftruncate(fd, 4096) != 0)
		return 1;
	char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return 1;
	p[0] = 1;
	printf("ready %p 1\n", (void *)p);
	fflush(stdout);
	for (;;)
		pause();
}
