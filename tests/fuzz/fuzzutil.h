/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzzutil: the throw-away directory the harnesses that need files keep for
 * the whole run (made once in init, removed at exit). In RAM when /dev/shm
 * is writable: libFuzzer runs millions of inputs through it.
 */
#ifndef SCRM_TESTS_FUZZUTIL_H
#define SCRM_TESTS_FUZZUTIL_H

#include "fuzz.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* Make "<base>/scrm-fuzz-<name>-XXXXXX" in dir (n bytes); base is /dev/shm,
 * else $TMPDIR, else /tmp. Aborts if it cannot. */
static inline void fuzz_tmpdir(char *dir, size_t n, const char *name)
{
	const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
	snprintf(dir, n, "%s/scrm-fuzz-%s-XXXXXX", base && *base ? base : "/tmp", name);
	FUZZ_CHECK(mkdtemp(dir) != NULL, "mkdtemp %s", dir);
}

static inline int fuzz__rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

/* rm -rf dir, if fuzz_tmpdir made it (dir[0] set). */
static inline void fuzz_rmtree(const char *dir)
{
	if (dir[0])
		nftw(dir, fuzz__rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
