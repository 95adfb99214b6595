/* Writes its memory as fast as it can, keeping an invariant a checkpoint must respect and
 * that later writes cannot repair: it sweeps a buffer of MIB MiB page after page, putting new
 * pseudo-random values into each page's first and last word and adding what changed to a
 * running total kept in another mapping. The total always equals the sum of those words
 * (checked between two pages). A checkpoint mixing pages of different moments breaks that
 * for good: each later change adds its difference to a wrong total. On SIGUSR1 it checks
 * and appends "ok SWEEPS" or "bad ..." to OUT. With "wipe", it also keeps a magic value in a
 * MADV_WIPEONFORK page, checked the same way. Usage: scribbler OUT MIB [wipe]. Prints
 * "ready PID" once the first sweep is done. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
#define WORDS (PAGE / 8)
#define MAGIC 0x636b7074u

static uint64_t *buf;
static size_t pages;
static volatile uint64_t total, sweeps, rng = 88172645463325252ull;
static volatile uint64_t *wiped;
static const char *out;
static volatile sig_atomic_t check;

static void on_usr1(int s) { (void)s; check = 1; }

static void report(void)
{
	char line[160];
	uint64_t sum = 0;
	for (size_t i = 0; i < pages; i++)
		sum += buf[i * WORDS] + buf[i * WORDS + WORDS - 1];
	if (sum != total)
		snprintf(line, sizeof line, "bad: the pages sum to %lx, the total says %lx\n",
			 (unsigned long)sum, (unsigned long)total);
	else if (wiped && *wiped != MAGIC)
		snprintf(line, sizeof line, "bad wipe-on-fork page: %lx\n", (unsigned long)*wiped);
	else
		snprintf(line, sizeof line, "ok %lu\n", (unsigned long)sweeps);
	FILE *f = fopen(out, "a");
	if (f) {
		fputs(line, f);
		fclose(f);
	}
}

static void stamp(size_t i)
{
	uint64_t x = rng;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	rng = x;
	uint64_t *a = &buf[i * WORDS], *b = &buf[i * WORDS + WORDS - 1];
	uint64_t old = *a + *b;
	*a = x;
	*b = x >> 1;
	total += (*a + *b) - old;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	out = argv[1];
	pages = (size_t)atoi(argv[2]) * 256;
	buf = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		return 1;
	if (argc > 3 && !strcmp(argv[3], "wipe")) {
		void *w = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (w == MAP_FAILED || madvise(w, PAGE, MADV_WIPEONFORK))
			return 1;
		wiped = w;
		*wiped = MAGIC;
	}
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa, NULL);
	for (;; sweeps++) {
		for (size_t i = 0; i < pages; i++) {
			stamp(i);
			if (check) { /* checked between two pages: the total is whole */
				check = 0;
				report();
			}
		}
		if (sweeps == 0) {
			printf("ready %d\n", getpid());
			fflush(stdout);
		}
	}
}
