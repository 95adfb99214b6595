/* The checkpoint/restore workhorse of the guest tests.
 *   counter OUTFILE [MIB] [hold-usr1]
 * Appends "N\n" to OUTFILE (O_APPEND) for N = 0, 1, 2, ... . Between lines it spins ~5 ms with
 * ymm0-ymm15 and MXCSR holding values derived from N, then checks them ("fpu-mismatch N" if
 * they changed), and sleeps 5 ms in nanosleep. SIGUSR1 makes it write "usr1 N"; SIGUSR2 makes
 * it verify its MIB-MiB buffer ("mem-ok N" or "mem-bad N"). A __thread counter and the brk
 * heap are checked too ("tls-bad", "brk-bad"). With "hold-usr1", SIGUSR1 stays blocked and
 * every iteration reports "pending-usr1 N" while one is pending. Prints "ready PID" on stdout
 * when set up. COUNTER_FILL=pattern fills the buffer with a repeated text (compressible),
 * COUNTER_FILL=random with pseudo-random bytes (incompressible); by default it holds a sequence
 * of distinct words. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t got_usr1, got_usr2;
static void on_usr1(int s) { (void)s; got_usr1 = 1; }
static void on_usr2(int s) { (void)s; got_usr2 = 1; }

static __thread uint64_t tls_counter;
static uint8_t *buf;
static size_t buf_len;
static uint64_t buf_sum;
static uint64_t ticks_per_ms;

static uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

static uint64_t checksum(void)
{
	uint64_t s = 1469598103934665603ull;
	for (size_t i = 0; i < buf_len; i += 8)
		s = (s ^ *(uint64_t *)(buf + i)) * 1099511628211ull;
	return s;
}

/* Loads ymm0-15 and MXCSR from `in`, spins until the TSC passes `deadline`, stores them to
 * `out`. Nothing in between touches those registers, so a checkpoint taken during the spin
 * must carry them. */
static void spin_with_vectors(const uint8_t in[16 * 32], uint8_t out[16 * 32], uint32_t mxcsr_in,
			      uint32_t *mxcsr_out, uint64_t deadline)
{
	__asm__ volatile(
		"ldmxcsr (%[mi])\n"
		"vmovdqu 0(%[in]), %%ymm0\n vmovdqu 32(%[in]), %%ymm1\n"
		"vmovdqu 64(%[in]), %%ymm2\n vmovdqu 96(%[in]), %%ymm3\n"
		"vmovdqu 128(%[in]), %%ymm4\n vmovdqu 160(%[in]), %%ymm5\n"
		"vmovdqu 192(%[in]), %%ymm6\n vmovdqu 224(%[in]), %%ymm7\n"
		"vmovdqu 256(%[in]), %%ymm8\n vmovdqu 288(%[in]), %%ymm9\n"
		"vmovdqu 320(%[in]), %%ymm10\n vmovdqu 352(%[in]), %%ymm11\n"
		"vmovdqu 384(%[in]), %%ymm12\n vmovdqu 416(%[in]), %%ymm13\n"
		"vmovdqu 448(%[in]), %%ymm14\n vmovdqu 480(%[in]), %%ymm15\n"
		"1: rdtsc\n shl $32, %%rdx\n or %%rdx, %%rax\n cmp %[dl], %%rax\n jb 1b\n"
		"vmovdqu %%ymm0, 0(%[out])\n vmovdqu %%ymm1, 32(%[out])\n"
		"vmovdqu %%ymm2, 64(%[out])\n vmovdqu %%ymm3, 96(%[out])\n"
		"vmovdqu %%ymm4, 128(%[out])\n vmovdqu %%ymm5, 160(%[out])\n"
		"vmovdqu %%ymm6, 192(%[out])\n vmovdqu %%ymm7, 224(%[out])\n"
		"vmovdqu %%ymm8, 256(%[out])\n vmovdqu %%ymm9, 288(%[out])\n"
		"vmovdqu %%ymm10, 320(%[out])\n vmovdqu %%ymm11, 352(%[out])\n"
		"vmovdqu %%ymm12, 384(%[out])\n vmovdqu %%ymm13, 416(%[out])\n"
		"vmovdqu %%ymm14, 448(%[out])\n vmovdqu %%ymm15, 480(%[out])\n"
		"stmxcsr (%[mo])\n"
		"vzeroupper\n"
		:
		: [in] "r"(in), [out] "r"(out), [mi] "r"(&mxcsr_in), [mo] "r"(mxcsr_out), [dl] "r"(deadline)
		: "rax", "rdx", "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6",
		  "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

static void fill(const char *how)
{
	static const char text[] = "a repeated pattern, which zstd makes next to nothing of. ";
	uint64_t x = 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();

	for (size_t i = 0; i < buf_len; i += 8) {
		uint64_t w = (i * 2654435761ull) ^ (i >> 7);

		if (how && strcmp(how, "pattern") == 0) {
			memcpy(&w, text + i % (sizeof(text) - 8), 8);
		} else if (how && strcmp(how, "random") == 0) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			w = x;
		}
		*(uint64_t *)(buf + i) = w;
	}
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	int fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (fd < 0)
		return 1;
	buf_len = (argc > 2 ? (size_t)atol(argv[2]) : 0) << 20;
	if (buf_len) {
		buf = malloc(buf_len);
		if (!buf)
			return 1;
		fill(getenv("COUNTER_FILL"));
		buf_sum = checksum();
	}
	/* Calibrate the TSC against the clock. */
	struct timespec t0, t1, ten_ms = { 0, 10 * 1000 * 1000 };
	clock_gettime(CLOCK_MONOTONIC, &t0);
	uint64_t c0 = rdtsc();
	nanosleep(&ten_ms, NULL);
	uint64_t c1 = rdtsc();
	clock_gettime(CLOCK_MONOTONIC, &t1);
	uint64_t ns = (t1.tv_sec - t0.tv_sec) * 1000000000ull + t1.tv_nsec - t0.tv_nsec;
	ticks_per_ms = ns ? (c1 - c0) * 1000000ull / ns : 1000000;

	/* brk heap: sbrk some memory and remember what is there. */
	uint64_t *brk_area = sbrk(4096);
	if (brk_area == (void *)-1)
		return 1;
	brk_area[0] = 0xB5C0FFEE;

	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);
	int hold = argc > 3 && strcmp(argv[3], "hold-usr1") == 0;
	if (hold) {
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGUSR1);
		sigprocmask(SIG_BLOCK, &set, NULL);
	}
	printf("ready %d\n", getpid());
	fflush(stdout);
	/* Measured after stdio has set up its buffers (which may grow the heap). */
	void *brk_now = sbrk(0);

	static uint8_t in[16 * 32], out[16 * 32];
	struct timespec five_ms = { 0, 5 * 1000 * 1000 };
	for (uint64_t n = 0;; n++) {
		for (int i = 0; i < 16 * 32; i++)
			in[i] = (uint8_t)(n * 31 + i * 7);
		/* Round toward zero + all exceptions masked: not the default 0x1f80. */
		uint32_t mxcsr_in = 0x7f80, mxcsr_out = 0;
		spin_with_vectors(in, out, mxcsr_in, &mxcsr_out, rdtsc() + 5 * ticks_per_ms);
		if (memcmp(in, out, sizeof(in)) != 0 || mxcsr_out != mxcsr_in)
			dprintf(fd, "fpu-mismatch %llu\n", (unsigned long long)n);
		if (tls_counter != n)
			dprintf(fd, "tls-bad %llu\n", (unsigned long long)n);
		tls_counter++;
		if (brk_area[0] != 0xB5C0FFEE || sbrk(0) != brk_now)
			dprintf(fd, "brk-bad %llu\n", (unsigned long long)n);
		if (got_usr1) {
			got_usr1 = 0;
			dprintf(fd, "usr1 %llu\n", (unsigned long long)n);
		}
		if (got_usr2) {
			got_usr2 = 0;
			dprintf(fd, "%s %llu\n", checksum() == buf_sum ? "mem-ok" : "mem-bad",
				(unsigned long long)n);
		}
		if (hold) {
			sigset_t pending;
			sigpending(&pending);
			if (sigismember(&pending, SIGUSR1))
				dprintf(fd, "pending-usr1 %llu\n", (unsigned long long)n);
		}
		dprintf(fd, "%llu\n", (unsigned long long)n);
		nanosleep(&five_ms, NULL);
	}
}
