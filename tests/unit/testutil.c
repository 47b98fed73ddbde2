/* SPDX-License-Identifier: Apache-2.0 */
/* testutil: helpers shared by the unit tests (see testutil.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil.h"

#include <scrm/scrm.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char *tu_tmpdir(const char *name)
{
	const char *base = getenv("TMPDIR");
	char *path = malloc(4096);
	assert_non_null(path);
	snprintf(path, 4096, "%s/scrm-unit-%s-XXXXXX", base && *base ? base : "/tmp", name);
	if (!mkdtemp(path)) {
		print_error("mkdtemp(%s) failed\n", path);
		free(path);
		fail();
	}
	return path;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

void tu_rmtree(const char *path)
{
	if (path)
		nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

char *tu_join(const char *a, const char *b)
{
	size_t n = strlen(a) + strlen(b) + 2;
	char *p = malloc(n);
	if (!p)
		abort();
	snprintf(p, n, "%s/%s", a, b);
	return p;
}

void tu_store_paths(const char *name, const char *db_file, char **dir, char **store, char **db)
{
	*dir = tu_tmpdir(name);
	*store = tu_join(*dir, "store");
	*db = tu_join(*store, db_file);
}

void tu_store_paths_free(char *dir, char *store, char *db)
{
	tu_rmtree_free(dir, store, db);
}

void tu_rmtree_free_n(char *dir, void **more, size_t n)
{
	tu_rmtree(dir);
	free(dir);
	for (size_t i = 0; i < n; i++)
		free(more[i]);
}

void tu_write_file(const char *path, const void *data, size_t len)
{
	FILE *fp = fopen(path, "wb");
	assert_non_null(fp);
	assert_int_equal(fwrite(data, 1, len, fp), len);
	assert_int_equal(fclose(fp), 0);
}

void tu_write_text(const char *path, const char *text)
{
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	fputs(text, fp);
	assert_int_equal(fclose(fp), 0);
}

char *tu_vfmt(const char *format, va_list ap)
{
	va_list again;
	va_copy(again, ap);
	int n = vsnprintf(NULL, 0, format, ap);
	assert_true(n >= 0);
	char *p = malloc((size_t)n + 1);
	assert_non_null(p);
	vsnprintf(p, (size_t)n + 1, format, again);
	va_end(again);
	return p;
}

char *tu_fmt(const char *format, ...)
{
	va_list ap;
	va_start(ap, format);
	char *p = tu_vfmt(format, ap);
	va_end(ap);
	return p;
}

int tu_fork_piped(int *fd)
{
	int p[2];
	assert_int_equal(pipe(p), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(p[0]);
		*fd = p[1];
		return 0;
	}
	close(p[1]);
	*fd = p[0];
	return (int)pid;
}

void tu_assert_refused(int rc, int code, const char *field, const char *file, int line)
{
	const char *msg = scrm_errmsg();
	size_t n = strlen(field);
	if (rc != code) {
		print_error("expected %s (%d), got %s (%d); errmsg \"%s\"\n", scrm_strerror(code), code,
			    scrm_strerror(rc), rc, msg);
		_fail(file, line);
	}
	if (strncmp(msg, field, n) != 0 || msg[n] != ':') {
		print_error("expected the message to name \"%s\", got \"%s\"\n", field, msg);
		_fail(file, line);
	}
}

void tu_assert_errmsg_contains(const char *needle, const char *file, int line)
{
	if (!strstr(scrm_errmsg(), needle)) {
		print_error("expected the message to contain \"%s\", got \"%s\"\n", needle, scrm_errmsg());
		_fail(file, line);
	}
}

int64_t tu_clock_wall(void *ctx)
{
	return ((tu_clock *)ctx)->wall_ms;
}

int64_t tu_clock_mono(void *ctx)
{
	return ((tu_clock *)ctx)->mono_ms;
}
