/* A target with a SysV shared memory segment attached (not checkpointable yet: its key and id
 * would be lost). Prints "ready" and waits. */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <unistd.h>

int main(void)
{
	int id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
	if (id < 0)
		return 1;
	char *p = shmat(id, NULL, 0);
	if (p == (void *)-1)
		return 1;
	shmctl(id, IPC_RMID, NULL); /* gone once nobody has it attached */
	p[0] = 1;
	printf("ready %p 1\n", (void *)p);
	fflush(stdout);
	for (;;)
		pause();
}
