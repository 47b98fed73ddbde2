/* SPDX-License-Identifier: Apache-2.0 */
/*
 * benchutil: what the benchmark programs share — a monotonic clock in ns,
 * a seeded PRNG (the same requests on every run), nearest-rank latency
 * percentiles, file sizes, RSS and progress lines, file copies. Header-only
 * (static functions, unused ones not warned about): each program is one
 * translation unit and takes what it needs.
 */
#ifndef SCRM_BENCHUTIL_H
#define SCRM_BENCHUTIL_H

#include "harness.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#endif

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double secs(int64_t ns)
{
	return (double)ns / 1e9;
}

static double ratio(double a, double b)
{
	return b > 0 ? a / b : 0.0;
}

/* xorshift64*: the same requests on every run. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static size_t pick(size_t n)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return (size_t)((rng_state * 0x2545f4914f6cdd1dULL) % (uint64_t)n);
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

struct lat {
	size_t n;
	double p50, p90, p99, p999, max; /* microseconds */
};

/* Nearest-rank percentiles of n samples in ns (sorts them). */
static struct lat latency(int64_t *v, size_t n)
{
	struct lat l = {.n = n};
	if (!n)
		return l;
	qsort(v, n, sizeof(*v), cmp_i64);
	size_t k50 = (n * 50 + 99) / 100, k90 = (n * 90 + 99) / 100, k99 = (n * 99 + 99) / 100,
	       k999 = (n * 999 + 999) / 1000;
	l.p50 = (double)v[(k50 ? k50 : 1) - 1] / 1000.0;
	l.p90 = (double)v[(k90 ? k90 : 1) - 1] / 1000.0;
	l.p99 = (double)v[(k99 ? k99 : 1) - 1] / 1000.0;
	l.p999 = (double)v[(k999 ? k999 : 1) - 1] / 1000.0;
	l.max = (double)v[n - 1] / 1000.0;
	return l;
}

static int64_t file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? (int64_t)st.st_size : 0;
}

/* Resident set size now and at its peak, MiB (Linux /proc; 0 elsewhere). */
static void rss_mib(long *now, long *peak)
{
	char line[256];
	FILE *f = fopen("/proc/self/status", "r");
	*now = *peak = 0;
	while (f && fgets(line, sizeof(line), f)) {
		int is_now = strncmp(line, "VmRSS:", 6) == 0, is_peak = strncmp(line, "VmHWM:", 6) == 0;
		char *end = NULL;
		long kb;
		if (!is_now && !is_peak)
			continue;
		errno = 0;
		kb = strtol(line + 6, &end, 10);
		if (errno || end == line + 6 || kb < 0)
			continue;
		*(is_now ? now : peak) = kb / 1024;
	}
	if (f)
		fclose(f);
}

static void progress(const char *what)
{
	long now, peak;
	rss_mib(&now, &peak);
	fprintf(stderr, "%s (RSS %ld MiB, peak %ld MiB)\n", what, now, peak);
}

static int copy_file(const char *from, const char *to)
{
	size_t len = 0;
	char *text = th_read_file(from, &len);
	if (!text)
		return -EIO;
	int rc = th_write_file(to, text);
	free(text);
	if (rc == 0)
		rc = chmod(to, 0600) == 0 ? 0 : -errno;
	return rc;
}

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#endif
