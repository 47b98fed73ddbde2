/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outbox_clock_test: each event's clock_ok (agent/lib/outbox/outbox.c, "clock trust";
 * docs/protocol.md). A glitch of the wall clock, forward or backward, flags
 * the glitched events and nothing after them; a real correction is adopted
 * once its offset has held for 10 minutes of monotonic time, or at once
 * when the kernel reports the clock NTP-synchronized; a reboot falls back to
 * "not more than 60 s before the last trusted event"; nothing before the
 * build date is ever trusted. Also: the state is shared through the file
 * (several handles), a v4 store upgrades to v5, rows of one group commit are
 * judged in order, and the read-only query the daemon's heartbeat uses.
 *
 * Links the real outbox.c, SQLite and platform/. Rows are appended with
 * chosen wall and mono clocks; the kernel's NTP state is replaced with
 * platform__clock_synced_override (the host's own state must not matter).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "outbox.h"
#include "platform.h"
#include "testutil.h"
#include "outboxrow.h"
#include "oldschema.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BOOT_A "9f1c0d1e-6a43-4b7e-9a51-0c2d9e8f7a6b"
#define BOOT_B "2b7d4e10-1c55-4f0a-8e3d-77a1c2b3d4e5"
#define BOOT_C "c4a1f0e2-9b3d-4c8e-a7f6-0123456789ab"
#define BOOT_D "d00dfeed-0000-4000-8000-00000000000d"
#define BOOT_E "e1e2e3e4-0000-4000-8000-00000000000e"
#define BOOT_F "f1f2f3f4-0000-4000-8000-00000000000f"
#define BOOT_ZERO "00000000-0000-0000-0000-000000000000" /* platform__boot_id() when unreadable */

#define T0 1700000000000LL /* trusted_after_ms: the build date */
#define SEC 1000LL
#define MIN (60 * SEC)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)
#define YEAR (365 * DAY)
/* Boot A started at this wall clock: an event at mono m is truly at BA + m. */
#define BA (T0 + 30 * DAY)

typedef struct fx {
	char *dir, *store, *db;
	outbox *ob;  /* open on store, device "pos-01" */
	int synced;  /* what platform__clock_synced() answers */
} fx;

static int fake_synced(void *ctx)
{
	return *(int *)ctx;
}

static int setup(void **state)
{
	fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	tu_store_paths("outbox_clock", OUTBOX_FILE, &f->dir, &f->store, &f->db);
	platform__clock_synced_override(fake_synced, &f->synced);
	assert_int_equal(outbox__open(f->store, "pos-01", 0, &f->ob), SCRM_OK);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fx *f = *state;
	outbox__close(f->ob);
	platform__clock_synced_override(NULL, NULL);
	tu_store_paths_free(f->dir, f->store, f->db);
	free(f);
	return 0;
}

/* The next scan (a fresh id each call) at the given clocks. */
static void make_row(outbox__row *r, rowbuf *b, int64_t wall, int64_t mono, const char *boot)
{
	static int counter;
	outboxrow_scan(r, b, ++counter, wall, mono, boot);
}

/* Capture one event at (wall, mono, boot) through `ob`: its clock_ok. */
static int at(outbox *ob, int64_t wall, int64_t mono, const char *boot)
{
	outbox__row r;
	rowbuf b;
	make_row(&r, &b, wall, mono, boot);
	assert_int_equal(outbox__append(ob, &r, 1, T0), SCRM_OK);
	assert_true(r.seq > 0);
	return r.clock_ok;
}

/* A correct clock in boot A, `mono` ms after it started. */
static int ok_a(outbox *ob, int64_t mono)
{
	return at(ob, BA + mono, mono, BOOT_A);
}

/* clock_ok of every stored event in seq order, as "10110": what central gets. */
static void assert_flags(fx *f, const char *expect)
{
	char *got = tu_sql_text(f->db, "SELECT group_concat(clock_ok, '') FROM (SELECT clock_ok FROM outbox ORDER BY seq)");
	assert_non_null(got);
	assert_string_equal(got, expect);
	free(got);
}

/* ---- glitches: one wrong event, then a correct clock again ------------- */

/* The issue: one event at +1 year used to be trusted and everything after it
 * not. Now the glitch is flagged, and the correct events around it are not. */
static void forward_glitch_flags_only_the_glitch(void **state)
{
	fx *f = *state;
	assert_true(ok_a(f->ob, 5 * MIN));
	assert_false(at(f->ob, BA + 6 * MIN + YEAR, 6 * MIN, BOOT_A));
	for (int64_t m = 7 * MIN; m <= 40 * MIN; m += MIN)
		assert_true(ok_a(f->ob, m));
	/* A glitch lasting a few minutes (less than the confirmation period):
	 * all of it flagged, nothing after it. */
	for (int64_t m = 41 * MIN; m < 45 * MIN; m += MIN)
		assert_false(at(f->ob, BA + m + YEAR, m, BOOT_A));
	assert_true(ok_a(f->ob, 45 * MIN));
	/* The glitch did not move the floor a reboot is judged by. */
	assert_true(at(f->ob, BA + 50 * MIN, 20 * SEC, BOOT_B));
	assert_flags(f, "10" "1111111111" "1111111111" "1111111111" "1111" "0000" "1" "1");
}

static void backward_step_flags_only_the_step(void **state)
{
	fx *f = *state;
	assert_true(ok_a(f->ob, 5 * MIN));
	assert_true(ok_a(f->ob, 6 * MIN));
	assert_false(at(f->ob, BA + 7 * MIN - DAY, 7 * MIN, BOOT_A));
	assert_true(ok_a(f->ob, 8 * MIN));
	/* a backward step of a few minutes, several events long */
	assert_false(at(f->ob, BA + 9 * MIN - 5 * MIN, 9 * MIN, BOOT_A));
	assert_false(at(f->ob, BA + 10 * MIN - 5 * MIN, 10 * MIN, BOOT_A));
	for (int64_t m = 11 * MIN; m <= 30 * MIN; m += MIN)
		assert_true(ok_a(f->ob, m));
	assert_flags(f, "1101" "00" "11111111111111111111");
}

/* ---- real corrections -------------------------------------------------- */

/* The clock was an hour fast when the store started (trusted: nothing told
 * otherwise), then corrected. The corrected offset is adopted once it has
 * held for 10 minutes of mono time; the state is in the file, so another
 * handle (another POS process) confirms what this one saw. */
static void correction_confirmed_by_persistence(void **state)
{
	fx *f = *state;
	for (int64_t m = MIN; m <= 10 * MIN; m += MIN)
		assert_true(at(f->ob, BA + m + HOUR, m, BOOT_A));
	/* corrected at 20 min: first seen then */
	assert_false(ok_a(f->ob, 20 * MIN));
	/* an event on the old offset interrupts the candidate... */
	assert_true(at(f->ob, BA + 21 * MIN + HOUR, 21 * MIN, BOOT_A));
	/* ...so the new offset starts over at 25 min */
	assert_false(ok_a(f->ob, 25 * MIN));
	assert_false(ok_a(f->ob, 31 * MIN)); /* 11 min after 20, only 6 after 25 */
	outbox *b = NULL;
	assert_int_equal(outbox__open(f->store, NULL, 0, &b), SCRM_OK);
	assert_false(ok_a(b, 34 * MIN + 59 * SEC));
	assert_true(ok_a(b, 35 * MIN)); /* 10 min: a correction */
	outbox__close(b);
	assert_true(ok_a(f->ob, 36 * MIN));
	/* the old offset is now the step */
	assert_false(at(f->ob, BA + 37 * MIN + HOUR, 37 * MIN, BOOT_A));
	assert_true(ok_a(f->ob, 38 * MIN));
}

/* The kernel's NTP state confirms a correction at once; it never rescues
 * a clock before the build date; "unknown" (qemu-user) is "not synced". */
static void correction_confirmed_by_ntp(void **state)
{
	fx *f = *state;
	for (int64_t m = MIN; m <= 5 * MIN; m += MIN)
		assert_true(at(f->ob, BA + m + HOUR, m, BOOT_A));
	f->synced = -ENOSYS;
	assert_false(ok_a(f->ob, 6 * MIN));
	f->synced = 0;
	assert_false(ok_a(f->ob, 7 * MIN));
	f->synced = 1; /* chrony has stepped and disciplined the clock */
	assert_true(ok_a(f->ob, 8 * MIN));
	f->synced = 0;
	assert_true(ok_a(f->ob, 9 * MIN));
	assert_false(at(f->ob, BA + 10 * MIN + HOUR, 10 * MIN, BOOT_A));
	/* synced when the step is first seen: trusted at once */
	f->synced = 1;
	assert_true(at(f->ob, BA + 11 * MIN + 2 * MIN, 11 * MIN, BOOT_A));
	assert_true(at(f->ob, BA + 12 * MIN + 2 * MIN, 12 * MIN, BOOT_A));
	/* a wall clock before the build date stays untrusted */
	assert_false(at(f->ob, T0 - DAY, 13 * MIN, BOOT_A));
	assert_true(at(f->ob, BA + 14 * MIN + 2 * MIN, 14 * MIN, BOOT_A));
	assert_flags(f, "11111" "001" "10" "11" "01");
}

/* ---- reboots ----------------------------------------------------------- */

static void reboot_forward_and_backward(void **state)
{
	fx *f = *state;
	int64_t last = BA + 2 * HOUR;
	assert_true(at(f->ob, last, 2 * HOUR, BOOT_A));
	/* off for three days: a new boot, mono restarted, wall far ahead */
	last += 3 * DAY;
	assert_true(at(f->ob, last, 15 * SEC, BOOT_B));
	assert_true(at(f->ob, last + MIN, 15 * SEC + MIN, BOOT_B));
	last += MIN;
	/* a reboot with the RTC 30 s behind: within the 60 s allowed */
	assert_true(at(f->ob, last - 30 * SEC, 12 * SEC, BOOT_C));
	/* a reboot with the RTC a day behind: not trusted, until that offset
	 * has held for 10 minutes of this boot */
	const int64_t d0 = last - DAY - 12 * SEC; /* boot D's start, as its clock says */
	assert_false(at(f->ob, d0 + 10 * SEC, 10 * SEC, BOOT_D));
	for (int64_t m = MIN; m < 10 * MIN + 10 * SEC; m += MIN)
		assert_false(at(f->ob, d0 + m, m, BOOT_D));
	assert_true(at(f->ob, d0 + 10 * MIN + 10 * SEC, 10 * MIN + 10 * SEC, BOOT_D));
	/* adopted: it is the floor of the next reboot now */
	assert_true(at(f->ob, d0 + 11 * MIN, 5 * SEC, BOOT_E));
	/* backward at boot, NTP synced: at once */
	f->synced = 1;
	assert_true(at(f->ob, d0 - HOUR, 9 * SEC, BOOT_F));
	f->synced = 0;
	/* an unreadable boot id reads all zeros: mono far behind the anchor's
	 * is a reboot all the same */
	assert_true(at(f->ob, d0 + 2 * DAY, 2 * HOUR, BOOT_ZERO));
	assert_true(at(f->ob, d0 + 5 * DAY, 30 * SEC, BOOT_ZERO));
	assert_false(at(f->ob, d0 + 5 * DAY + HOUR, 40 * SEC, BOOT_ZERO));
}

/* ---- the build date --------------------------------------------------- */

/* An RTC that lost power: before the build date, never trusted, however
 * long it holds, NTP or not; it anchors nothing. */
static void build_epoch_floor(void **state)
{
	fx *f = *state;
	const int64_t rtc0 = 86400000; /* 2 Jan 1970 */
	assert_false(at(f->ob, T0 - 1, 5 * SEC, BOOT_A));
	for (int64_t m = 10 * SEC; m <= 30 * MIN; m += 5 * MIN)
		assert_false(at(f->ob, rtc0 + m, m, BOOT_A));
	f->synced = 1;
	assert_false(at(f->ob, rtc0 + 31 * MIN, 31 * MIN, BOOT_A));
	f->synced = 0;
	/* NTP sets it: the first sane clock anchors */
	assert_true(at(f->ob, T0 + 32 * MIN, 32 * MIN, BOOT_A));
	assert_true(at(f->ob, T0 + 33 * MIN, 33 * MIN, BOOT_A));
	assert_false(at(f->ob, T0, 34 * MIN + 30 * SEC, BOOT_A)); /* 34.5 min back: a step */
	assert_false(at(f->ob, T0 - 1, 35 * MIN, BOOT_A));
}

/* ---- drift ------------------------------------------------------------- */

/* A crystal drifting 2 s an hour, NTP slewing, a shop closed for two days:
 * the offset moves within 60 s + 500 ppm of the mono time since the last
 * trusted event, and the anchor follows it. */
static void drift_within_tolerance_stays_trusted(void **state)
{
	fx *f = *state;
	int64_t drift = 0, m = 0;
	for (int h = 1; h <= 48; h++) {
		m = h * HOUR;
		drift += 2 * SEC;
		assert_true(at(f->ob, BA + m + drift, m, BOOT_A));
	}
	/* 96 s off the first event's offset, but each step was small */
	/* two days without an event: 60 s + 86.4 s allowed */
	m += 2 * DAY;
	drift += 146 * SEC;
	assert_true(at(f->ob, BA + m + drift, m, BOOT_A));
	/* at the edge: 60 s within the same second */
	m += 1;
	drift += 60 * SEC;
	assert_true(at(f->ob, BA + m + drift, m, BOOT_A));
	m += 1;
	assert_false(at(f->ob, BA + m + drift + 60 * SEC + 1, m, BOOT_A));
	assert_true(at(f->ob, BA + m + drift - 60 * SEC, m, BOOT_A));
	/* two days again, but 147 s: a step */
	m += 2 * DAY;
	assert_false(at(f->ob, BA + m + drift - 60 * SEC + 147 * SEC, m, BOOT_A));
}

/* ---- schema v4 -> v5 --------------------------------------------------- */

/* A store written by an agent of schema v4 (no clock columns), whose max_wall_ms
 * a forward glitch pushed a year ahead (the old rule trusted it): it keeps its
 * events and counter, and its trust recovers by itself instead of a year. */
static void v4_store_upgrades_to_v5(void **state)
{
	fx *f = *state;
	for (int64_t m = MIN; m <= 5 * MIN; m += MIN)
		assert_true(ok_a(f->ob, m));
	const int64_t acked[][2] = {{1, 2}};
	int64_t deleted = 0;
	assert_int_equal(outbox__ack(f->ob, acked, 1, BA + 6 * MIN, &deleted), SCRM_OK);
	outbox__close(f->ob);
	f->ob = NULL;
	if (sqlite3_libversion_number() < 3035000)
		skip(); /* DROP COLUMN */
	char sql[12000];
	snprintf(sql, sizeof(sql),
		 UNDO_V8 UNDO_V7 " DROP TRIGGER outbox_member_activity; DROP TRIGGER outbox_reco_shown; DROP TRIGGER outbox_redemption;"
		 " DROP TRIGGER outbox_attribution; DROP TABLE dead_letter; DROP TABLE orders; DROP TABLE recovered;"
		 " ALTER TABLE outbox DROP COLUMN set_aside; ALTER TABLE outbox DROP COLUMN recovered;"
		 " ALTER TABLE device DROP COLUMN clock_boot; ALTER TABLE device DROP COLUMN clock_offset_ms;"
		 " ALTER TABLE device DROP COLUMN clock_mono_ms; ALTER TABLE device DROP COLUMN clock_cand_boot;"
		 " ALTER TABLE device DROP COLUMN clock_cand_offset_ms; ALTER TABLE device DROP COLUMN clock_cand_mono_ms;"
		 " UPDATE device SET max_wall_ms = %lld; PRAGMA user_version = 4",
		 (long long)(BA + 5 * MIN + YEAR));
	tu_sql_exec(f->db, sql);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM pragma_table_info('device') WHERE name LIKE 'clock%'"), 0);

	assert_int_equal(outbox__open(f->store, NULL, 0, &f->ob), SCRM_OK);
	assert_int_equal(tu_sql_int(f->db, "PRAGMA user_version"), 8);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM pragma_table_info('device') WHERE name LIKE 'clock%'"), 6);
	scrm_outbox_stats st;
	assert_int_equal(outbox__stats(f->ob, &st), SCRM_OK);
	assert_int_equal(st.pending, 3);
	assert_int_equal(st.last_seq, 5);
	assert_int_equal(st.last_acked_seq, 2);
	/* no anchor yet: the v4 watermark is the floor, as after a reboot */
	outbox__row r;
	rowbuf b;
	make_row(&r, &b, BA + 7 * MIN, 7 * MIN, BOOT_A);
	assert_int_equal(outbox__append(f->ob, &r, 1, T0), SCRM_OK);
	assert_int_equal(r.seq, 6); /* the counter goes on */
	assert_false(r.clock_ok);
	assert_false(ok_a(f->ob, 16 * MIN));
	assert_true(ok_a(f->ob, 17 * MIN)); /* held 10 min: adopted */
	assert_true(ok_a(f->ob, 18 * MIN));
	assert_int_equal(tu_sql_int(f->db, "SELECT max_wall_ms FROM device"), BA + 18 * MIN);
	assert_flags(f, "111" "0011");
}

/* ---- group commit ------------------------------------------------------ */

/* Several rows in one outbox__append (the store's group commit): judged in
 * order, each against the state the previous row left; a correction can be
 * confirmed inside one group, and the state reaches the file. */
static void group_commit_judges_rows_in_order(void **state)
{
	fx *f = *state;
	const struct {
		int64_t wall, mono;
		int ok;
	} g1[] = {
		{BA + 1 * MIN, 1 * MIN, 1},
		{BA + 2 * MIN + YEAR, 2 * MIN, 0},
		{BA + 3 * MIN, 3 * MIN, 1},
		{BA + 4 * MIN - DAY, 4 * MIN, 0},
		{BA + 5 * MIN, 5 * MIN, 1},
		{BA + 6 * MIN + 59 * SEC, 6 * MIN, 1}, /* drift: anchor follows */
		{BA + 7 * MIN, 7 * MIN, 1},
	}, g2[] = {
		{BA + 10 * MIN - HOUR, 10 * MIN, 0}, /* a correction, first seen */
		{BA + 15 * MIN - HOUR, 15 * MIN, 0},
		{BA + 20 * MIN - HOUR, 20 * MIN, 1}, /* held 10 min */
		{BA + 21 * MIN, 21 * MIN, 0},        /* the old offset: a step now */
		{BA + 22 * MIN - HOUR, 22 * MIN, 1},
	};
	outbox__row rows[8];
	rowbuf bufs[8];
	for (size_t i = 0; i < sizeof(g1) / sizeof(g1[0]); i++)
		make_row(&rows[i], &bufs[i], g1[i].wall, g1[i].mono, BOOT_A);
	assert_int_equal(outbox__append(f->ob, rows, sizeof(g1) / sizeof(g1[0]), T0), SCRM_OK);
	for (size_t i = 0; i < sizeof(g1) / sizeof(g1[0]); i++) {
		assert_int_equal(rows[i].seq, (int64_t)i + 1);
		assert_int_equal(rows[i].clock_ok, g1[i].ok);
	}
	for (size_t i = 0; i < sizeof(g2) / sizeof(g2[0]); i++)
		make_row(&rows[i], &bufs[i], g2[i].wall, g2[i].mono, BOOT_A);
	assert_int_equal(outbox__append(f->ob, rows, sizeof(g2) / sizeof(g2[0]), T0), SCRM_OK);
	for (size_t i = 0; i < sizeof(g2) / sizeof(g2[0]); i++)
		assert_int_equal(rows[i].clock_ok, g2[i].ok);
	/* another handle sees the adopted offset */
	outbox *b = NULL;
	assert_int_equal(outbox__open(f->store, NULL, 0, &b), SCRM_OK);
	assert_true(at(b, BA + 23 * MIN - HOUR, 23 * MIN, BOOT_A));
	assert_false(ok_a(b, 24 * MIN));
	outbox__close(b);
	assert_flags(f, "1010111" "00101" "10");
}

/* ---- the heartbeat's view ---------------------------------------------- */

static void clock_state_reports_without_recording(void **state)
{
	fx *f = *state;
	struct outbox__clock c;
	/* a fresh store: no anchor; only the build date counts */
	assert_int_equal(outbox__clock_state(f->ob, BA, MIN, BOOT_A, T0, &c), SCRM_OK);
	assert_true(c.trusted);
	assert_false(c.same_boot);
	assert_int_equal(c.last_wall_ms, 0);
	assert_int_equal(outbox__clock_state(f->ob, T0 - 1, MIN, BOOT_A, T0, &c), SCRM_OK);
	assert_false(c.trusted);

	assert_true(ok_a(f->ob, 2 * MIN));
	assert_int_equal(outbox__clock_state(f->ob, BA + 3 * MIN + 2 * SEC, 3 * MIN, BOOT_A, T0, &c), SCRM_OK);
	assert_true(c.trusted);
	assert_true(c.same_boot);
	assert_int_equal(c.step_ms, 2 * SEC);
	assert_int_equal(c.last_wall_ms, BA + 2 * MIN);
	assert_false(c.pending);
	assert_int_equal(c.synced, 0);
	/* a glitched clock, asked about for an hour: never adopted by asking */
	for (int64_t m = 3 * MIN; m <= HOUR; m += 5 * MIN) {
		assert_int_equal(outbox__clock_state(f->ob, BA + m + YEAR, m, BOOT_A, T0, &c), SCRM_OK);
		assert_false(c.trusted);
		assert_int_equal(c.step_ms, YEAR);
		assert_false(c.pending);
	}
	assert_true(ok_a(f->ob, HOUR + MIN));
	/* a step captured: pending, and the query says when it would be adopted */
	assert_false(at(f->ob, BA + 2 * HOUR - HOUR, 2 * HOUR, BOOT_A));
	assert_int_equal(outbox__clock_state(f->ob, BA + 2 * HOUR + 5 * MIN - HOUR, 2 * HOUR + 5 * MIN, BOOT_A, T0, &c),
			 SCRM_OK);
	assert_false(c.trusted);
	assert_true(c.pending);
	assert_int_equal(c.pending_step_ms, -HOUR);
	assert_int_equal(c.pending_since_mono_ms, 2 * HOUR);
	assert_int_equal(outbox__clock_state(f->ob, BA + 2 * HOUR + 10 * MIN - HOUR, 2 * HOUR + 10 * MIN, BOOT_A, T0, &c),
			 SCRM_OK);
	assert_true(c.trusted); /* the next capture would adopt it */
	/* the kernel's answer is passed on */
	f->synced = 1;
	assert_int_equal(outbox__clock_state(f->ob, BA + 2 * HOUR + MIN - HOUR, 2 * HOUR + MIN, BOOT_A, T0, &c), SCRM_OK);
	assert_int_equal(c.synced, 1);
	assert_true(c.trusted);
	/* another boot: the floor */
	f->synced = 0;
	assert_int_equal(outbox__clock_state(f->ob, BA + HOUR, 10 * SEC, BOOT_B, T0, &c), SCRM_OK);
	assert_false(c.same_boot);
	assert_int_equal(c.step_ms, 0);
	assert_false(c.pending);
	assert_true(c.trusted);
	assert_int_equal(outbox__clock_state(f->ob, BA + HOUR + MIN - 61 * SEC, 10 * SEC, BOOT_B, T0, &c), SCRM_OK);
	assert_false(c.trusted);
	/* nothing recorded by asking */
	assert_flags(f, "110");
}

int main(int argc, char **argv)
{
	tu_select(argc, argv);
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(forward_glitch_flags_only_the_glitch),
		T(backward_step_flags_only_the_step),
		T(correction_confirmed_by_persistence),
		T(correction_confirmed_by_ntp),
		T(reboot_forward_and_backward),
		T(build_epoch_floor),
		T(drift_within_tolerance_stays_trusted),
		T(v4_store_upgrades_to_v5),
		T(group_commit_judges_rows_in_order),
		T(clock_state_reports_without_recording),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
