/* N one-page anonymous mappings that cannot merge (protections alternate), the writable ones
 * touched; the main thread appends 0, 1, 2, ... to OUT every 20 ms. For make bench's
 * per-mapping cost row. Usage: manymaps OUT N. */
#include <stdio.h>
#include <stdlib.h>
#include "tick.h"
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	int n = atoi(argv[2]);
	long page = sysconf(_SC_PAGESIZE);
	/* One reservation, then each page its own mapping with alternating protections. */
	char *base = mmap(NULL, (size_t)n * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED)
		return 1;
	for (int i = 0; i < n; i++) {
		char *p = base + (size_t)i * page;
		int prot = i % 2 ? PROT_READ : PROT_READ | PROT_WRITE;
		if (mmap(p, page, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
			return 1;
		if (prot & PROT_WRITE)
			p[0] = (char)i;
	}
	return tick_forever(argv[1]);
}
