/* SPDX-License-Identifier: Apache-2.0 */
/*
 * testutil: small helpers shared by the unit tests — throw-away directories,
 * a fake clock, direct SQLite queries on a store's database, and the one
 * assertion most tests make: "refused with this code, and the message names
 * this field". Include after <cmocka.h>.
 *
 * Helpers that can fail print why and fail the current cmocka test; the ones
 * marked "no cmocka" are safe in forked children and worker threads.
 * The declarations need only cmocka; a test that calls the helpers links
 * testutil.c (and testdb.c for the SQLite ones).
 */
#ifndef SCRM_TESTS_UNIT_TESTUTIL_H
#define SCRM_TESTS_UNIT_TESTUTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Which tests main() runs: all, or those matching a cmocka name pattern
 * given as the first argument ("ack_*"). Call before cmocka_run_group_tests*(). */
static inline void tu_select(int argc, char **argv)
{
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
}

/* Create "$TMPDIR/scrm-unit-<name>-XXXXXX" (TMPDIR defaults to /tmp).
 * Returns a malloc'd path the caller frees. */
char *tu_tmpdir(const char *name);
/* rm -rf path (no cmocka). */
void tu_rmtree(const char *path);
/* malloc'd "a/b" (no cmocka; aborts on OOM). */
char *tu_join(const char *a, const char *b);
/* The paths of a store in a fresh temp dir: *dir = tu_tmpdir(name),
 * *store = "<dir>/store", *db = "<store>/<db_file>" (neither is made). */
void tu_store_paths(const char *name, const char *db_file, char **dir, char **store, char **db);
/* tu_rmtree(dir), then free the three paths (no cmocka). */
void tu_store_paths_free(char *dir, char *store, char *db);
/* tu_rmtree(dir), then free dir and each further pointer (no cmocka):
 * a fixture's teardown, tu_rmtree_free(f->dir, f->db, f->keys). */
#define tu_rmtree_free(dir, ...) \
	tu_rmtree_free_n((dir), (void *[]){__VA_ARGS__}, sizeof((void *[]){__VA_ARGS__}) / sizeof(void *))
void tu_rmtree_free_n(char *dir, void **more, size_t n);

/* Write `len` bytes of `data` as the file `path` (replacing it). */
void tu_write_file(const char *path, const void *data, size_t len);
/* Write the string `text` as the file `path` (replacing it). */
void tu_write_text(const char *path, const char *text);

/* printf into a malloc'd string (fails the test on error). */
char *tu_fmt(const char *format, ...) __attribute__((format(printf, 1, 2)));
char *tu_vfmt(const char *format, va_list ap) __attribute__((format(printf, 1, 0)));

/* fork() with a pipe from child to parent: returns 0 in the child, with *fd
 * the pipe's write end, and the child's pid in the parent, with *fd its
 * read end (the other end closed on each side). */
int tu_fork_piped(int *fd);

/* Assert rc == code and that scrm_errmsg() starts with "<field>:". */
#define assert_refused(rc, code, field) tu_assert_refused((rc), (code), (field), __FILE__, __LINE__)
void tu_assert_refused(int rc, int code, const char *field, const char *file, int line);

/* Assert that scrm_errmsg() contains `needle`. */
#define assert_errmsg_contains(needle) tu_assert_errmsg_contains((needle), __FILE__, __LINE__)
void tu_assert_errmsg_contains(const char *needle, const char *file, int line);

/* Fake clock for platform__clock_override(): returns wall / mono. */
typedef struct tu_clock {
	int64_t wall_ms, mono_ms;
} tu_clock;
int64_t tu_clock_wall(void *ctx);
int64_t tu_clock_mono(void *ctx);

/* First column of the first row of `sql` on the database file `db_path`,
 * as an integer (fails the test on error). */
int64_t tu_sql_int(const char *db_path, const char *sql);
/* Same, as a malloc'd string (NULL for SQL NULL). */
char *tu_sql_text(const char *db_path, const char *sql);
/* Run `sql` on the database file `db_path` with a connection of our own
 * (what another process, or someone editing the file, would do); fails
 * the test, printing SQLite's message, if it does not succeed. */
void tu_sql_exec(const char *db_path, const char *sql);

#endif
