/* What the emulated test guest charges for the operations a checkpoint or restore is made of,
 * per GiB, so that ckpt's and CRIU's figures can be read against them (`make floor`,
 * tools/floor.sh). Each line: the operation, threads, milliseconds for SIZE MiB.
 *   floor SIZE_MIB
 * fault+zero: first write to fresh private anonymous memory (the kernel allocates and zeroes
 *   it: every restore pays it, ckpt's and CRIU's);
 * memcpy: user-space copy into memory already faulted (vector instructions);
 * UFFDIO_COPY: the kernel's copy from user memory into pages it does not zero;
 * pread: the kernel's copy from the page cache into user memory (CRIU's restore);
 * copy_file_range: the kernel's copy from one tmpfs file into a new one (a dump's write into
 *   an image: page cache allocation and copy, under the file's lock);
 * xxh64: XXH64's main loop in plain C from a mapping of the page cache (ckpt's checksum of
 *   every page; the xxhash-rust crate ckpt uses took 0.6 s per GiB on one thread, session 14). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static size_t size;
static char *src, *dst;
static int uffd;

struct part {
	size_t off, len;
};

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void fresh(void)
{
	if (dst)
		munmap(dst, size);
	dst = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (dst == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
}

static void *touch(void *p)
{
	struct part *a = p;
	for (size_t o = a->off; o < a->off + a->len; o += 4096)
		dst[o] = 1;
	return NULL;
}

static void *copy(void *p)
{
	struct part *a = p;
	memcpy(dst + a->off, src + a->off, a->len);
	return NULL;
}

static void *uffd_copy(void *p)
{
	struct part *a = p;
	for (size_t o = a->off; o < a->off + a->len; o += 1 << 20) {
		struct uffdio_copy c = { .dst = (unsigned long)dst + o, .src = (unsigned long)src + o,
					 .len = 1 << 20 };
		if (ioctl(uffd, UFFDIO_COPY, &c) != 0) {
			perror("UFFDIO_COPY");
			exit(1);
		}
	}
	return NULL;
}

static const uint64_t P1 = 11400714785074694791ULL, P2 = 14029467366897019727ULL;

static uint64_t rotl(uint64_t x, int r)
{
	return (x << r) | (x >> (64 - r));
}

static uint64_t round64(uint64_t acc, uint64_t in)
{
	return rotl(acc + in * P2, 31) * P1;
}

/* XXH64's main loop (seed 0) over LEN bytes, a multiple of 32: its cost, not a full digest. */
static uint64_t xxh64_stripes(const char *p, size_t len)
{
	uint64_t v1 = P1 + P2, v2 = P2, v3 = 0, v4 = -P1;
	for (size_t i = 0; i < len; i += 32) {
		uint64_t w[4];
		memcpy(w, p + i, 32);
		v1 = round64(v1, w[0]), v2 = round64(v2, w[1]);
		v3 = round64(v3, w[2]), v4 = round64(v4, w[3]);
	}
	return rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
}

static volatile uint64_t sink;

static void *hash(void *p)
{
	struct part *a = p;
	sink += xxh64_stripes(src + a->off, a->len);
	return NULL;
}

static void run(const char *name, void *(*f)(void *), int threads)
{
	pthread_t t[2];
	struct part a[2];
	double t0 = now_ms();
	for (int i = 0; i < threads; i++) {
		a[i] = (struct part){ size / threads * i, size / threads };
		pthread_create(&t[i], NULL, f, &a[i]);
	}
	for (int i = 0; i < threads; i++)
		pthread_join(t[i], NULL);
	printf("%-16s %d %6.0f\n", name, threads, now_ms() - t0);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	size = (size_t)atoi(argv[1]) << 20;
	int fd = open("/tmp/floor.src", O_RDWR | O_CREAT | O_TRUNC, 0600);
	char *buf = malloc(1 << 20);
	for (int i = 0; i < 1 << 20; i++)
		buf[i] = (char)(i * 7 + 3);
	for (size_t o = 0; o < size; o += 1 << 20)
		if (write(fd, buf, 1 << 20) != 1 << 20)
			return 1;
	src = mmap(NULL, size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
	for (int threads = 1; threads <= 2; threads++) {
		fresh();
		run("fault+zero", touch, threads);
		run("memcpy", copy, threads);
		run("xxh64", hash, threads);
		fresh();
		uffd = syscall(SYS_userfaultfd, O_CLOEXEC);
		struct uffdio_api api = { .api = UFFD_API };
		struct uffdio_register reg = { .range = { (unsigned long)dst, size },
					       .mode = UFFDIO_REGISTER_MODE_MISSING };
		if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) || ioctl(uffd, UFFDIO_REGISTER, &reg)) {
			perror("userfaultfd");
			return 1;
		}
		run("UFFDIO_COPY", uffd_copy, threads);
		close(uffd);
	}
	fresh();
	touch(&(struct part){ 0, size });
	double t0 = now_ms();
	for (size_t o = 0; o < size; o += 1 << 20)
		if (pread(fd, dst + o, 1 << 20, o) != 1 << 20)
			return 1;
	printf("%-16s 1 %6.0f\n", "pread", now_ms() - t0);
	int out = open("/tmp/floor.dst", O_RDWR | O_CREAT | O_TRUNC, 0600);
	t0 = now_ms();
	loff_t in_off = 0, out_off = 0;
	for (size_t done = 0; done < size;) {
		ssize_t n = copy_file_range(fd, &in_off, out, &out_off, size - done, 0);
		if (n <= 0) {
			perror("copy_file_range");
			return 1;
		}
		done += n;
	}
	printf("%-16s 1 %6.0f\n", "copy_file_range", now_ms() - t0);
	unlink("/tmp/floor.src");
	unlink("/tmp/floor.dst");
	return 0;
}
