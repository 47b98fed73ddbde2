/* SPDX-License-Identifier: Apache-2.0 */
/*
 * log: the agent's own logs stay bounded — log.file rotates to <file>.1 at
 * log.file_max_bytes (so at most twice that on disk), the in-memory ring for
 * the fleet command logs.recent keeps the newest LOG_RING_LINES lines, and
 * level filtering applies to both.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "log.h"
#include "sbuf.h"
#include "testutil.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int64_t file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? (int64_t)st.st_size : -1;
}

static void file_rotates_at_its_cap(void **state)
{
	(void)state;
	char *dir = tu_tmpdir("log");
	char *path = tu_join(dir, "agent.log"), old[1100];
	snprintf(old, sizeof(old), "%s.1", path);
	log__set_level(LOG_INFO);
	log__configure(0, path, 65536);
	/* ~300 KB of lines: several rotations */
	for (int i = 0; i < 3000; i++)
		LOG(LOG_INFO, "test", "a line that fills the file", "i=%d pad=%s", i,
		    "0123456789012345678901234567890123456789012345678901234567890123456789");
	int64_t cur = file_size(path), prev = file_size(old);
	assert_true(cur > 0 && cur <= 65536);
	assert_true(prev > 60000 && prev <= 65536);
	/* the newest line is in the current file */
	char *text = NULL;
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	text = calloc(1, 70000);
	assert_non_null(text);
	size_t n = fread(text, 1, 69999, f);
	fclose(f);
	assert_true(n > 0);
	assert_non_null(strstr(text, "i=2999 "));
	free(text);
	log__configure(0, NULL, 0);
	tu_rmtree(dir);
	free(path);
	free(dir);
}

static void ring_keeps_the_newest_lines_by_level(void **state)
{
	(void)state;
	log__set_level(LOG_DEBUG);
	for (int i = 0; i < LOG_RING_LINES + 50; i++)
		LOG(i % 10 == 0 ? LOG_WARN : LOG_DEBUG, "test", "ring", "n=%d", i);
	sbuf b;
	sbuf__init(&b);
	assert_int_equal(log__recent(5, LOG_DEBUG, &b), 5);
	cJSON *a = cJSON_Parse(b.p);
	assert_true(cJSON_IsArray(a));
	assert_int_equal(cJSON_GetArraySize(a), 5);
	/* oldest first, ending with the newest */
	assert_non_null(strstr(cJSON_GetArrayItem(a, 4)->valuestring, "n=305"));
	assert_non_null(strstr(cJSON_GetArrayItem(a, 0)->valuestring, "n=301"));
	cJSON_Delete(a);
	sbuf__reset(&b);
	/* warn and worse only: every tenth line */
	int got = log__recent(3, LOG_WARN, &b);
	assert_int_equal(got, 3);
	assert_non_null(strstr(b.p, "n=300"));
	assert_non_null(strstr(b.p, "level=warn"));
	assert_null(strstr(b.p, "level=debug"));
	sbuf__reset(&b);
	/* more than the ring holds: the ring's size */
	assert_int_equal(log__recent(100000, LOG_DEBUG, &b), LOG_RING_LINES);
	sbuf__free(&b);
	log__set_level(LOG_INFO);
}

int main(int argc, char **argv)
{
	tu_select(argc, argv);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(file_rotates_at_its_cap),
		cmocka_unit_test(ring_keeps_the_newest_lines_by_level),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
