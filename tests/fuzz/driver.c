/* SPDX-License-Identifier: Apache-2.0 */
/*
 * driver: main() for a harness built without libFuzzer. Runs the harness on
 * each file named on the command line (a directory means every regular file
 * in it, in name order); with no arguments, on the seed corpus the build
 * compiled in (SCRM_FUZZ_CORPUS_DIR). Exits 0 when every input ran, 1 if an
 * input could not be read or none was found; a crash is the harness's abort.
 */
#include "fuzz.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int run_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		fprintf(stderr, "driver: cannot open %s\n", path);
		return -1;
	}
	size_t cap = 4096, len = 0;
	unsigned char *buf = malloc(cap);
	size_t n;
	while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
		len += n;
		if (len == cap) {
			unsigned char *nb = realloc(buf, cap * 2);
			if (!nb) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = nb;
			cap *= 2;
		}
	}
	fclose(f);
	if (!buf)
		return -1;
	/* An exact-size copy, so ASan sees any read past the input. */
	unsigned char *exact = malloc(len ? len : 1);
	if (!exact) {
		free(buf);
		return -1;
	}
	memcpy(exact, buf, len);
	free(buf);
	LLVMFuzzerTestOneInput(exact, len);
	free(exact);
	return 0;
}

static int by_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Returns inputs run, or -1. */
static int run_path(const char *path)
{
	struct stat st;
	if (stat(path, &st) != 0) {
		fprintf(stderr, "driver: no such file or directory: %s\n", path);
		return -1;
	}
	if (!S_ISDIR(st.st_mode))
		return run_file(path) == 0 ? 1 : -1;
	DIR *d = opendir(path);
	if (!d)
		return -1;
	char **names = NULL;
	size_t n = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char **nn = realloc(names, (n + 1) * sizeof(*names));
		if (!nn)
			break;
		names = nn;
		size_t len = strlen(path) + strlen(e->d_name) + 2;
		names[n] = malloc(len);
		if (!names[n])
			break;
		snprintf(names[n], len, "%s/%s", path, e->d_name);
		n++;
	}
	closedir(d);
	qsort(names, n, sizeof(*names), by_name);
	int ran = 0;
	for (size_t i = 0; i < n; i++) {
		if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
			if (run_file(names[i]) != 0)
				ran = -1;
			else if (ran >= 0)
				ran++;
		}
		free(names[i]);
	}
	free(names);
	return ran;
}

int main(int argc, char **argv)
{
	int total = 0;
	if (argc < 2) {
		total = run_path(SCRM_FUZZ_CORPUS_DIR);
	} else {
		for (int i = 1; i < argc && total >= 0; i++) {
			int r = run_path(argv[i]);
			total = r < 0 ? -1 : total + r;
		}
	}
	if (total <= 0) {
		fprintf(stderr, "driver: %s\n", total < 0 ? "an input could not be read" : "no inputs found");
		return 1;
	}
	printf("driver: %d inputs ran without a crash\n", total);
	return 0;
}
