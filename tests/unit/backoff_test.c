/* SPDX-License-Identifier: Apache-2.0 */
/*
 * backoff_test: reconnect delays (agent/transport/backoff.c) — capped exponential with
 * full jitter. The random value is a parameter, so the extremes of the jitter
 * range are tested exactly: 0 gives no delay, UINT32_MAX gives the ceiling.
 * Pure logic, no neighbours.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil.h"

#include "backoff.h"

#include <stdint.h>

static void ceilings_double_then_cap(void **state)
{
	(void)state;
	backoff b;
	backoff__init(&b, 500, 60000);
	static const int64_t expect[] = {500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000};
	for (size_t i = 0; i < sizeof(expect) / sizeof(expect[0]); i++) {
		assert_int_equal(backoff__ceiling(&b), expect[i]);
		/* The largest random value draws exactly the ceiling. */
		assert_int_equal(backoff__next(&b, UINT32_MAX), expect[i]);
	}
}

static void full_jitter_range(void **state)
{
	(void)state;
	backoff b;
	backoff__init(&b, 500, 60000);
	for (int i = 0; i < 12; i++) {
		int64_t ceil = backoff__ceiling(&b);
		backoff probe = b;
		/* 0 → no wait at all (full jitter, not "equal jitter"). */
		assert_int_equal(backoff__next(&probe, 0), 0);
		probe = b;
		int64_t mid = backoff__next(&probe, UINT32_MAX / 2);
		assert_in_range(mid, ceil / 2 - 1, ceil / 2 + 1);
		/* Monotonic in the random value, never beyond the ceiling. */
		int64_t prev = -1;
		for (uint64_t r = 0; r <= UINT32_MAX; r += 0x01000000) {
			probe = b;
			int64_t d = backoff__next(&probe, (uint32_t)r);
			assert_in_range(d, 0, ceil);
			assert_true(d >= prev);
			prev = d;
		}
		backoff__next(&b, 12345);
	}
}

static void every_delay_value_reachable(void **state)
{
	(void)state;
	/* With a small ceiling each value 0..ceiling has its share of the
	 * random range: 5,000 stores spread evenly, none piles on one value. */
	backoff b;
	backoff__init(&b, 10, 10);
	int hits[11] = {0};
	for (uint64_t r = 0; r <= UINT32_MAX; r += 0x100000) {
		backoff probe = b;
		hits[backoff__next(&probe, (uint32_t)r)]++;
	}
	for (int v = 0; v <= 10; v++)
		assert_in_range(hits[v], 4096 / 11 - 2, 4096 / 11 + 2);
}

static void reset_starts_again_from_base(void **state)
{
	(void)state;
	backoff b;
	backoff__init(&b, 500, 60000);
	for (int i = 0; i < 5; i++)
		backoff__next(&b, 0);
	assert_int_equal(backoff__ceiling(&b), 16000);
	backoff__reset(&b);
	assert_int_equal(backoff__ceiling(&b), 500);
	assert_int_equal(backoff__next(&b, UINT32_MAX), 500);
	assert_int_equal(backoff__ceiling(&b), 1000);
}

static void long_outage_stays_at_cap(void **state)
{
	(void)state;
	/* A store offline for a week: thousands of attempts, no overflow
	 * (UBSan checks), still capped. Largest config values. */
	backoff b;
	backoff__init(&b, 600000, 3600000);
	for (int i = 0; i < 10000; i++)
		assert_in_range(backoff__next(&b, UINT32_MAX), 0, 3600000);
	assert_int_equal(backoff__ceiling(&b), 3600000);
	assert_int_equal(backoff__next(&b, UINT32_MAX), 3600000);
}

static void init_sanitises_arguments(void **state)
{
	(void)state;
	backoff b;
	backoff__init(&b, 0, 0);
	assert_int_equal(backoff__ceiling(&b), 1);
	backoff__init(&b, -5, 100);
	assert_int_equal(backoff__ceiling(&b), 1);
	backoff__init(&b, 1000, 10); /* cap below base: the base wins */
	assert_int_equal(backoff__ceiling(&b), 1000);
	assert_int_equal(backoff__next(&b, UINT32_MAX), 1000);
	assert_int_equal(backoff__ceiling(&b), 1000);
}

int main(int argc, char **argv)
{
	tu_select(argc, argv);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(ceilings_double_then_cap),
		cmocka_unit_test(full_jitter_range),
		cmocka_unit_test(every_delay_value_reachable),
		cmocka_unit_test(reset_starts_again_from_base),
		cmocka_unit_test(long_outage_stays_at_cap),
		cmocka_unit_test(init_sanitises_arguments),
	};
	return cmocka_run_group_tests_name("backoff", tests, NULL, NULL);
}
