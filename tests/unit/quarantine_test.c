/* SPDX-License-Identifier: Apache-2.0 */
/*
 * quarantine: erasure reaches the damaged copies under quarantine/ (issue
 * 12, finding 4c). The member's id goes wherever it stands as a whole
 * token; the same digits inside another number or id stay, as does every
 * other byte; cache copies go whole.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "quarantine.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *get(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	char *b = calloc(1, 4096);
	*n = fread(b, 1, 4095, f);
	fclose(f);
	return b;
}

static void erases_tokens_and_cache_copies(void **state)
{
	(void)state;
	char *dir = tu_tmpdir("quarantine");
	char *q = tu_join(dir, "quarantine");
	assert_int_equal(mkdir(q, 0700), 0);
	char *ob = tu_join(q, "outbox-1.db"), *wal = tu_join(q, "outbox-1.db-wal"), *cache = tu_join(q, "cache-1.db"),
	     *other = tu_join(q, "notes.txt");
	/* A JSON body, a raw SQLite text cell between binary bytes, and the
	 * same digits as part of a total, a longer id and a seq. */
	static const char body[] = "{\"member_id\":\"17850\",\"total\":178500,\"guide_id\":\"g17850\"}\x01\x0b"
				   "17850\x02\x00 seq=917850 17850";
	tu_write_file(ob, body, sizeof(body) - 1);
	tu_write_file(wal, "\x00\x00" "17850" "\x00", 8);
	tu_write_file(cache, "card 4000123412341234 17850", 27);
	tu_write_file(other, "17850", 5);
	int touched = -1;
	assert_int_equal(quarantine__erase_member(dir, "17850", &touched), 0);
	assert_int_equal(touched, 3);
	size_t n = 0;
	char *after = get(ob, &n);
	assert_non_null(after);
	static const char want[] = "{\"member_id\":\"*****\",\"total\":178500,\"guide_id\":\"g17850\"}\x01\x0b"
				   "*****\x02\x00 seq=917850 *****";
	assert_int_equal(n, sizeof(want) - 1);
	assert_memory_equal(after, want, n);
	free(after);
	after = get(wal, &n);
	assert_memory_equal(after, "\x00\x00" "*****" "\x00", 8);
	free(after);
	assert_int_not_equal(access(cache, F_OK), 0);
	assert_int_equal(access(other, F_OK), 0); /* not ours: left alone */
	/* Idempotent: a second erasure finds nothing more. */
	assert_int_equal(quarantine__erase_member(dir, "17850", &touched), 0);
	assert_int_equal(touched, 0);
	tu_rmtree(dir);
	free(ob), free(wal), free(cache), free(other), free(q), free(dir);
}

static void no_quarantine_is_fine(void **state)
{
	(void)state;
	char *dir = tu_tmpdir("quarantine");
	int touched = -1;
	assert_int_equal(quarantine__erase_member(dir, "17850", &touched), 0);
	assert_int_equal(touched, 0);
	tu_rmtree(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(erases_tokens_and_cache_copies),
		cmocka_unit_test(no_quarantine_is_fine),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
