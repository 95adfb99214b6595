/* Shared memory between processes, for the tree tests.
 *   shm DIR
 * The root maps 1 MiB of anonymous shared memory (MAP_SHARED|MAP_ANONYMOUS) and a 64 KiB
 * memfd "ckpt-shm-test" (sealed against shrinking and growing, also kept open as an fd),
 * fills both past their first page with a pattern, and forks two children. Child i counts in
 * slot i of each (anonymous and memfd), every 20 ms, and writes "child<i> N" to DIR/child<i>.
 * The root reads the slots every 20 ms and writes "root N A0 A1 M0 M1" to DIR/root (what it
 * sees of the children: only shared memory lets it see them count), "bad" if a pattern byte
 * changed. On SIGUSR1 it writes "seals S size Z" of its memfd fd. Prints "ready PID" when
 * set up. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ANON (1 << 20)
#define MEMFD (64 << 10)

static volatile sig_atomic_t got_usr1;
static void on_usr1(int s) { (void)s; got_usr1 = 1; }

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0)
		;
}

static int open_out(const char *dir, const char *name)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (fd < 0)
		exit(2);
	return fd;
}

static void say(int fd, const char *line)
{
	if (write(fd, line, strlen(line)) != (ssize_t)strlen(line))
		exit(3);
}

static uint8_t pattern(size_t i) { return (uint8_t)(i * 11 + 1); }

int main(int argc, char **argv)
{
	if (argc < 2)
		return 1;
	const char *dir = argv[1];
	volatile uint64_t *anon =
		mmap(NULL, ANON, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int mfd = memfd_create("ckpt-shm-test", MFD_ALLOW_SEALING);
	if (anon == MAP_FAILED || mfd < 0 || ftruncate(mfd, MEMFD) != 0)
		return 4;
	volatile uint64_t *mem = mmap(NULL, MEMFD, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	if (mem == MAP_FAILED || fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0)
		return 5;
	for (size_t i = 4096; i < ANON; i++)
		((uint8_t *)anon)[i] = pattern(i);
	for (size_t i = 4096; i < MEMFD; i++)
		((uint8_t *)mem)[i] = pattern(i);
	for (int c = 0; c < 2; c++) {
		if (fork() == 0) {
			char name[16], line[64];
			snprintf(name, sizeof name, "child%d", c);
			int out = open_out(dir, name);
			for (uint64_t n = 0;; n++) {
				anon[c] = n;
				mem[c] = n;
				snprintf(line, sizeof line, "%s %llu\n", name, (unsigned long long)n);
				say(out, line);
				sleep_ms(20);
			}
		}
	}
	signal(SIGUSR1, on_usr1);
	int out = open_out(dir, "root");
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	for (uint64_t n = 0;; n++) {
		char line[160];
		snprintf(line, sizeof line, "root %llu %llu %llu %llu %llu\n", (unsigned long long)n,
			 (unsigned long long)anon[0], (unsigned long long)anon[1],
			 (unsigned long long)mem[0], (unsigned long long)mem[1]);
		say(out, line);
		for (size_t i = 4096; i < ANON; i += 4093)
			if (((uint8_t *)anon)[i] != pattern(i))
				say(out, "bad anon\n");
		for (size_t i = 4096; i < MEMFD; i += 509)
			if (((uint8_t *)mem)[i] != pattern(i))
				say(out, "bad memfd\n");
		if (got_usr1) {
			struct stat st;
			fstat(mfd, &st);
			snprintf(line, sizeof line, "seals %d size %lld\n", fcntl(mfd, F_GET_SEALS),
				 (long long)st.st_size);
			say(out, line);
			got_usr1 = 0;
		}
		sleep_ms(20);
	}
}
