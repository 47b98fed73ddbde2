/* SPDX-License-Identifier: Apache-2.0 */
/*
 * benchstore: what the two store-scale benchmarks (bench_cache.c,
 * bench_reco.c) share around their measurements — their options, the work
 * directory (--dir, or a fresh temporary one) with central's keys and the
 * store provisioned as an agent is, the synthetic store cachegen draws, the
 * store and cache opened as the daemon opens them, and the clean-up.
 * Header-only like benchutil.h (include that first); messages start with
 * the program's name.
 */
#ifndef SCRM_BENCHSTORE_H
#define SCRM_BENCHSTORE_H

#include "benchutil.h"
#include "cache.h"
#include "cachegen.h"
#include "harness.h"
#include "platform.h"

#include <scrm/scrm.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#endif

/* A whole-number option: `name` N, min <= N <= max, into *dst. */
struct bench_count {
	const char *name;
	long *dst;
	long min, max;
};

/* The options both take: --help (and -h where `short_help`), --quick,
 * --keep, --dir DIR (or `dir_alias` DIR), and `counts`. 0, or -1 after the
 * usage on a bad or incomplete option. */
static int bench_parse(int argc, char **argv, const char *prog, int short_help, const char *dir_alias,
		       const struct bench_count *counts, size_t n_counts, const char **dir, int *keep, int *quick,
		       void (*usage)(void))
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--help") == 0 || (short_help && strcmp(a, "-h") == 0)) {
			usage();
			exit(0);
		}
		if (strcmp(a, "--quick") == 0 || strcmp(a, "--keep") == 0) {
			*(a[2] == 'q' ? quick : keep) = 1;
			continue;
		}
		if ((strcmp(a, "--dir") == 0 || (dir_alias && strcmp(a, dir_alias) == 0)) && i + 1 < argc &&
		    argv[i + 1][0]) {
			*dir = argv[++i];
			continue;
		}
		const struct bench_count *c = NULL;
		for (size_t k = 0; k < n_counts && !c; k++)
			c = strcmp(a, counts[k].name) == 0 ? &counts[k] : NULL;
		char *end = NULL;
		errno = 0;
		if (!c || i + 1 >= argc || (*c->dst = strtol(argv[i + 1], &end, 10)) < c->min || *end ||
		    end == argv[i + 1] || errno || *c->dst > c->max) {
			fprintf(stderr, "%s: bad or incomplete option '%s'\n", prog, a);
			usage();
			return -1;
		}
		i++;
	}
	return 0;
}

/* The synthetic store of that size for `tenant`: 0, or 2 (a usage error)
 * after saying why. */
static int bench_synth(cg_synth *syn, const char *prog, long members, long skus, long rules, const char *tenant)
{
	cg_synth_init(syn);
	syn->n_members = (size_t)members;
	syn->n_skus = (size_t)skus;
	syn->n_rules = (size_t)rules;
	syn->tenant = tenant;
	if (cg_synth_check(syn) != 0) {
		fprintf(stderr, "%s: --members/--skus/--rules: not a usable synthetic store\n", prog);
		return 2;
	}
	return 0;
}

/* The work directory and the two below it: <dir>/store (with its
 * private/keys) and <dir>/central, central's side. */
struct bench_work {
	char *tmp;       /* th_tmpdir()'s, when no --dir was given; owned */
	const char *dir; /* --dir or tmp */
	char store[4096], keys[4200], central[4200];
};

/* Create or make the work directory (`given`, else a fresh one named after
 * `tmp_name`); its store must not exist yet (`dir_flag` is the option to
 * name then). 0, or 1 after saying why. */
static int bench_work_open(struct bench_work *w, const char *prog, const char *given, const char *tmp_name,
			   const char *dir_flag)
{
	memset(w, 0, sizeof(*w));
	if (given) {
		if (platform__mkdirs(given, 0700) != 0 && access(given, F_OK) != 0) {
			fprintf(stderr, "%s: cannot create %s\n", prog, given);
			return 1;
		}
	} else if (!(w->tmp = th_tmpdir(tmp_name))) {
		return 1;
	}
	w->dir = given ? given : w->tmp;
	snprintf(w->store, sizeof(w->store), "%s/store", w->dir);
	snprintf(w->keys, sizeof(w->keys), "%s/private/keys", w->store);
	snprintf(w->central, sizeof(w->central), "%s/central", w->dir);
	if (access(w->store, F_OK) == 0) {
		fprintf(stderr, "%s: %s already exists; give a fresh %s\n", prog, w->store, dir_flag);
		return 1;
	}
	return 0;
}

/* Central's key pair and the tenant key in <dir>/central; the store is
 * given only what an agent is provisioned with (tenant.key, central.pub).
 * 0 or the first error. */
static int bench_work_keys(const struct bench_work *w)
{
	char from[4400], to[4400];
	int rc = cg_keys_create(w->central, 1);
	if (rc == 0)
		rc = platform__mkdirs(w->keys, 0700);
	for (int k = 0; rc == 0 && k < 2; k++) {
		const char *name = k == 0 ? "tenant.key" : "central.pub";
		snprintf(from, sizeof(from), "%s/%s", w->central, name);
		snprintf(to, sizeof(to), "%s/%s", w->keys, name);
		rc = copy_file(from, to);
	}
	return rc;
}

/* A SQLite database and its -wal and -shm files gone. */
static void bench_unlink_db(const char *path)
{
	static const char *const suffix[] = {"", "-wal", "-shm"};
	char file[4400];
	for (size_t k = 0; k < sizeof(suffix) / sizeof(suffix[0]); k++) {
		snprintf(file, sizeof(file), "%s%s", path, suffix[k]);
		unlink(file);
	}
}

/* The store first, so the cache finds outbox.db as in the field; then the
 * cache, created, for `tenant` in country 44. 0, or 1 after saying why. */
static int bench_open_store(const char *prog, const char *store, const char *device, const char *tenant,
			    scrm_store **so, cache **c)
{
	scrm_store_options sopt = {.device_id = device};
	cache__options copt = {.create = 1};
	if (scrm_store_open(store, &sopt, so) != SCRM_OK || cache__open(store, &copt, c) != SCRM_OK ||
	    cache__set_identity(*c, tenant, "44") != SCRM_OK) {
		fprintf(stderr, "%s: open: %s\n", prog, scrm_errmsg());
		return 1;
	}
	return 0;
}

/* Unless `keep`: the temporary directory, or what the run put in a given
 * one (store, central, `also` if set, the database `db`). Frees w->tmp. */
static void bench_work_close(struct bench_work *w, int keep, const char *also, const char *db)
{
	if (keep) {
		fprintf(stderr, "kept %s\n", w->dir);
	} else if (w->tmp) {
		th_rmtree(w->tmp);
	} else {
		th_rmtree(w->store);
		th_rmtree(w->central);
		if (also)
			th_rmtree(also);
		bench_unlink_db(db);
	}
	free(w->tmp);
	w->tmp = NULL;
}

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#endif
