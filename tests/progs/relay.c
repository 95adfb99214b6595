/* Two processes of one application passing numbered lines through a pipe, as fast as the
 * reader takes them: the writer's lines go through a fully buffered 64 KiB FILE*, so at any
 * moment some are in its stdio buffer, some in the pipe (full: the writer is usually blocked
 * in write inside fflush), and some read. The reader checks every line is the next number
 * and, every 1000 lines, rewrites OUT/progress with the count; at the end it writes
 * OUT/result: "done N" when all N lines came once and in order, or "bad ..." at the first
 * lost or repeated line. Usage: relay OUT N. Prints "ready <reader pid>" once both run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void put(const char *dir, const char *name, const char *text)
{
	char path[4096], tmp[4100];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f)
		exit(3);
	fputs(text, f);
	fclose(f);
	rename(tmp, path);
}

static int reader(FILE *in, const char *dir, long n)
{
	char line[64], msg[128];
	long next = 0;
	while (fgets(line, sizeof line, in)) {
		long got = strtol(line, NULL, 10);
		if (got != next) {
			snprintf(msg, sizeof msg, "bad: line %ld after %ld\n", got, next - 1);
			put(dir, "result", msg);
			return 1;
		}
		next++;
		if (next % 1000 == 0) {
			snprintf(msg, sizeof msg, "%ld\n", next);
			put(dir, "progress", msg);
			usleep(2000); /* slower than the writer: its pipe stays full */
		}
	}
	snprintf(msg, sizeof msg, next == n ? "done %ld\n" : "bad: %ld lines of %ld\n", next, n);
	put(dir, "result", msg);
	return next != n;
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	long n = atol(argv[2]);
	int p[2];
	if (pipe(p))
		return 1;
	pid_t child = fork();
	if (child < 0)
		return 1;
	if (child == 0) {
		close(p[1]);
		return reader(fdopen(p[0], "r"), argv[1], n);
	}
	close(p[0]);
	printf("ready %d\n", (int)child);
	fflush(stdout);
	FILE *out = fdopen(p[1], "w");
	static char buf[65536];
	setvbuf(out, buf, _IOFBF, sizeof buf);
	for (long i = 0; i < n; i++)
		fprintf(out, "%ld\n", i);
	fclose(out);
	int status;
	waitpid(child, &status, 0);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
