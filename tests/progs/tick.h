/* The bench's liveness signal for its count programs: appends 0, 1, 2, ... to the file
 * `path`, one line every 20 ms, forever (make bench waits for lines and checks a restored
 * process adds more). */
#include <stdio.h>
#include <unistd.h>

static int tick_forever(const char *path)
{
	FILE *out = fopen(path, "a");
	if (!out)
		return 1;
	for (long i = 0;; i++) {
		fprintf(out, "%ld\n", i);
		fflush(out);
		usleep(20000);
	}
}
