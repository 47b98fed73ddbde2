/* SPDX-License-Identifier: Apache-2.0 */
/*
 * uuid_test: UUIDv7 event ids (agent/lib/core/uuid.c). The module's one neighbour,
 * platform__random, is faked here so the 74 random bits are known and the
 * version/variant bits can be checked against all-zero and all-one input.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil.h"

#include "platform.h"
#include "uuid.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

/* ---- fake neighbour -------------------------------------------------- */

enum fill { FILL_CONST, FILL_COUNT };
static enum fill fill_mode;
static unsigned char fill_byte;
static int fail_with;

int platform__random(void *buf, size_t n)
{
	unsigned char *p = buf;
	if (fail_with)
		return fail_with;
	for (size_t i = 0; i < n; i++)
		p[i] = fill_mode == FILL_CONST ? fill_byte : (unsigned char)i;
	return 0;
}

static int reset_fake(void **state)
{
	(void)state;
	fill_mode = FILL_CONST;
	fill_byte = 0;
	fail_with = 0;
	return 0;
}

/* ---- tests ----------------------------------------------------------- */

static const int64_t MS = 0x0193b3c27d4eLL; /* the protocol example's batch id */

static void layout_with_zero_random(void **state)
{
	(void)state;
	char id[37];
	fill_byte = 0x00;
	assert_int_equal(uuid__v7(MS, id), 0);
	assert_string_equal(id, "0193b3c2-7d4e-7000-8000-000000000000");
	assert_true(uuid__valid(id));
}

static void version_and_variant_with_all_ones(void **state)
{
	(void)state;
	char id[37];
	fill_byte = 0xff;
	assert_int_equal(uuid__v7(MS, id), 0);
	/* Version nibble forced to 7, variant bits forced to 10. */
	assert_string_equal(id, "0193b3c2-7d4e-7fff-bfff-ffffffffffff");
}

static void random_bytes_land_in_order(void **state)
{
	(void)state;
	char id[37];
	fill_mode = FILL_COUNT; /* 00 01 02 ... 09 */
	assert_int_equal(uuid__v7(MS, id), 0);
	assert_string_equal(id, "0193b3c2-7d4e-7001-8203-040506070809");
}

static void timestamp_edges(void **state)
{
	(void)state;
	char id[37];
	assert_int_equal(uuid__v7(0, id), 0);
	assert_string_equal(id, "00000000-0000-7000-8000-000000000000");
	/* A clock before 1970 does not wrap into the far future. */
	assert_int_equal(uuid__v7(-1, id), 0);
	assert_string_equal(id, "00000000-0000-7000-8000-000000000000");
	assert_int_equal(uuid__v7(0xffffffffffffLL, id), 0);
	assert_string_equal(id, "ffffffff-ffff-7000-8000-000000000000");
}

static void ids_sort_by_time(void **state)
{
	(void)state;
	/* Later ms sorts later as text even against the worst random bits:
	 * central's indexes stay append-mostly. */
	char a[37], b[37];
	fill_byte = 0xff;
	assert_int_equal(uuid__v7(MS, a), 0);
	fill_byte = 0x00;
	assert_int_equal(uuid__v7(MS + 1, b), 0);
	assert_true(strcmp(a, b) < 0);
}

static void random_failure_is_reported(void **state)
{
	(void)state;
	char id[37];
	fail_with = -EIO;
	assert_int_not_equal(uuid__v7(MS, id), 0);
}

static void valid_accepts_only_canonical_text(void **state)
{
	(void)state;
	assert_true(uuid__valid("0193b3c2-7d4e-7a01-9c3e-2f5d8e1a4b60"));
	assert_false(uuid__valid("0193B3C2-7D4E-7A01-9C3E-2F5D8E1A4B60")); /* upper case */
	assert_false(uuid__valid("0193b3c2-7d4e-7a01-9c3e-2f5d8e1a4b6"));  /* 35 chars */
	assert_false(uuid__valid("0193b3c2-7d4e-7a01-9c3e-2f5d8e1a4b600")); /* 37 chars */
	assert_false(uuid__valid("0193b3c27-d4e-7a01-9c3e-2f5d8e1a4b60"));  /* dash moved */
	assert_false(uuid__valid("0193b3c2-7d4e-7a01-9c3e-2f5d8e1a4g60"));  /* not hex */
	assert_false(uuid__valid("0193b3c2_7d4e_7a01_9c3e_2f5d8e1a4b60"));
	assert_false(uuid__valid(""));
}

int main(int argc, char **argv)
{
	tu_select(argc, argv);
#define T(fn) cmocka_unit_test_setup(fn, reset_fake)
	const struct CMUnitTest tests[] = {
		T(layout_with_zero_random),
		T(version_and_variant_with_all_ones),
		T(random_bytes_land_in_order),
		T(timestamp_edges),
		T(ids_sort_by_time),
		T(random_failure_is_reported),
		T(valid_accepts_only_canonical_text),
	};
	return cmocka_run_group_tests_name("uuid", tests, NULL, NULL);
}
