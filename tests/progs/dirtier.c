/* Changes a little of its memory on request and reports a checksum of all of it: the target
 * of the incremental checkpoint tests. A buffer of MIB MiB (small pages: MADV_NOHUGEPAGE, so
 * that the kernel tracks changes page by page) is filled at start, every eighth page left
 * untouched (zero). It then polls the file CMD every 10 ms (a file, not signals: a program
 * checkpointed in sigsuspend redoes the call and may miss one): "STEPS CHECKS". While it has
 * done fewer than STEPS steps it does the next one: about 1 % of the pages get a new word,
 * step 3 also zeroes a page and step 4 drops one (MADV_DONTNEED: zero again); after each it
 * appends "step N SUM" to OUT. While it has answered fewer than CHECKS checks it appends
 * "check SUM". SUM covers every byte of the buffer. Usage: dirtier OUT CMD MIB. Prints
 * "ready PID" once filled. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define WORDS (PAGE / 8)

static uint64_t *buf;
static size_t pages;
static uint64_t rng = 88172645463325252ull;

static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static uint64_t checksum(void)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < pages * WORDS; i++)
		h = (h ^ buf[i]) * 1099511628211ull;
	return h;
}

static void step(int n)
{
	for (size_t i = 0; i < pages / 100 + 1; i++) {
		size_t p = ((size_t)n * 7919 + i * 97) % pages;
		buf[p * WORDS + (size_t)n % WORDS] = next();
	}
	if (n == 3)
		for (size_t w = 0; w < WORDS; w++)
			buf[(size_t)n * 13 % pages * WORDS + w] = 0;
	if (n == 4)
		madvise(&buf[(size_t)n * 17 % pages * WORDS], PAGE, MADV_DONTNEED);
}

static void say(const char *out, const char *what, int n)
{
	FILE *f = fopen(out, "a");
	if (!f)
		exit(1);
	if (n >= 0)
		fprintf(f, "%s %d %016llx\n", what, n, (unsigned long long)checksum());
	else
		fprintf(f, "%s %016llx\n", what, (unsigned long long)checksum());
	fclose(f);
}

int main(int argc, char **argv)
{
	if (argc < 4)
		return 2;
	pages = (size_t)atoi(argv[3]) * 256;
	buf = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED || madvise(buf, pages * PAGE, MADV_NOHUGEPAGE))
		return 1;
	for (size_t p = 0; p < pages; p++)
		if (p % 8)
			for (size_t w = 0; w < WORDS; w += 64)
				buf[p * WORDS + w] = next();
	printf("ready %d\n", getpid());
	fflush(stdout);
	int steps = 0, checks = 0;
	for (;;) {
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		FILE *f = fopen(argv[2], "r");
		int want_steps = 0, want_checks = 0;
		if (f) {
			if (fscanf(f, "%d %d", &want_steps, &want_checks) != 2)
				want_steps = want_checks = 0;
			fclose(f);
		}
		while (steps < want_steps) {
			step(++steps);
			say(argv[1], "step", steps);
		}
		while (checks < want_checks) {
			checks++;
			say(argv[1], "check", -1);
		}
	}
}
