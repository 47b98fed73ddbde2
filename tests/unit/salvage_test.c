/* SPDX-License-Identifier: Apache-2.0 */
/*
 * salvage_test: what a damaged outbox.db gives back when it is quarantined
 * (agent/lib/outbox/salvage.c through outbox__open_checked) and later through
 * outbox__recover_file (scrmctl outbox recover). Issue 11, holes 1 and 10.
 *
 * The damage is real: a b-tree page of the outbox table, found with SQLite's
 * dbstat, has its header overwritten in the file (after a checkpoint, so
 * the page lives in the main file), exactly as flash corruption would leave
 * it. On the main the issue started from, salvage stopped at the first
 * unreadable page: one damaged leaf stranded every sale behind it, and the
 * first leaf damaged recovered nothing; it also re-ran the insert triggers
 * with default settings (a sale attributed with attribution off) and left
 * the redemption ledger and receipts behind.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "outbox.h"
#include "platform.h"
#include "salvage.h"
#include "testutil.h"

#include <cjson/cJSON.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define T0 1767225600000LL /* 2026-01-01 */
#define BOOT "b0000000-0000-4000-8000-000000000000"

typedef struct fx {
	char *dir, *db;
	outbox *ob;
} fx;

static int setup(void **state)
{
	fx *f = calloc(1, sizeof(*f));
	f->dir = tu_tmpdir("salvage");
	f->db = tu_join(f->dir, OUTBOX_FILE);
	assert_int_equal(outbox__open(f->dir, "pos-01", 0, &f->ob), SCRM_OK);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fx *f = *state;
	outbox__close(f->ob);
	tu_rmtree_free(f->dir, f->db);
	free(f);
	return 0;
}

/* Append one event; returns its seq. */
static int64_t add(outbox *ob, const char *kind, const char *body, int n)
{
	char id[40];
	snprintf(id, sizeof(id), "0190a000-0000-7000-8000-%012d", n);
	outbox__row r = {.id = id, .kind = kind, .wall_ms = T0 + n, .mono_ms = 1000 + n, .boot = BOOT,
			 .body = body, .body_len = strlen(body)};
	assert_int_equal(outbox__append(ob, &r, 1, T0), SCRM_OK);
	return r.seq;
}

static int64_t add_purchase(outbox *ob, int n, const char *member)
{
	char body[400];
	snprintf(body, sizeof(body),
		 "{\"order_id\":\"O-%d\",\"lines\":[{\"sku\":\"85123A\",\"qty\":1,\"unit_price\":100,\"discount\":0}],"
		 "\"discount\":0,\"total\":100,\"currency\":\"GBP\",\"payment\":\"card\"%s%s%s,"
		 "\"pad\":\"0123456789012345678901234567890123456789012345678901234567890123456789\"}",
		 n, member ? ",\"member_id\":\"" : "", member ? member : "", member ? "\"" : "");
	return add(ob, "purchase", body, n);
}

/* The outbox table's leaf pages in key order (dbstat's path order). */
static int leaves(const char *path, int64_t *page, int64_t *ncell, int cap)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *q = NULL;
	int n = 0;
	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, "SELECT pageno, ncell FROM dbstat WHERE name = 'outbox' AND pagetype = 'leaf'"
						" ORDER BY path", -1, &q, NULL),
			 SQLITE_OK);
	while (sqlite3_step(q) == SQLITE_ROW && n < cap) {
		page[n] = sqlite3_column_int64(q, 0);
		ncell[n] = sqlite3_column_int64(q, 1);
		n++;
	}
	sqlite3_finalize(q);
	sqlite3_close(db);
	return n;
}

/* Overwrite the page's header (its first 64 bytes) as flash damage would;
 * the bytes that were there go to `saved` (may be NULL). */
static void damage_page(const char *path, int64_t page, unsigned char saved[64])
{
	int64_t size = tu_sql_int(path, "PRAGMA page_size");
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	if (saved)
		assert_int_equal(pread(fd, saved, 64, (off_t)((page - 1) * size)), 64);
	unsigned char junk[64];
	memset(junk, 0xA5, sizeof(junk));
	assert_int_equal(pwrite(fd, junk, sizeof(junk), (off_t)((page - 1) * size)), 64);
	close(fd);
}

/* Reopen after damage as the daemon does at start: the file is quarantined. */
static void quarantine_now(fx *f)
{
	outbox__close(f->ob);
	f->ob = NULL;
	assert_int_equal(outbox__open_checked(f->dir, "pos-01", 0, &f->ob), SCRM_OK);
	assert_non_null(outbox__quarantined(f->ob));
}

/* Every event off the damaged leaf comes back; only the leaf's own rows are
 * lost, and they are a run of consecutive seqs. */
static void check_one_leaf_lost(fx *f, int n, int64_t lost)
{
	int64_t count = tu_sql_int(f->db, "SELECT count(*) FROM outbox");
	if (count != n - lost) {
		char *runs = tu_sql_text(f->db, "SELECT group_concat(s, ' ') FROM (SELECT min(seq) || '-' || max(seq) AS s FROM"
						" (SELECT seq, seq - row_number() OVER (ORDER BY seq) AS g FROM outbox) GROUP BY g)");
		print_error("held runs: %s; the damaged leaf had %lld rows\n", runs, (long long)lost);
		free(runs);
	}
	assert_int_equal(count, n - lost);
	/* the missing seqs form one run */
	assert_true(tu_sql_int(f->db, "SELECT count(*) FROM (SELECT DISTINCT seq - row_number() OVER (ORDER BY seq)"
				      " FROM outbox)") <= 2);
	char *detail = tu_sql_text(f->db, "SELECT detail FROM alarms WHERE code = 'outbox_quarantined'");
	char want[64];
	snprintf(want, sizeof(want), "%lld pending events recovered", (long long)(n - lost));
	if (!strstr(detail, want))
		print_error("alarm: %s (want '%s')\n", detail, want);
	assert_non_null(strstr(detail, want));
	free(detail);
	/* and they go out, in order */
	sbuf out;
	size_t cnt = 0;
	int64_t last = 0, first = 0;
	sbuf__init(&out);
	assert_int_equal(outbox__read_batch(f->ob, 0, 1000, 1 << 24, 0, &out, &cnt, &last, &first), SCRM_OK);
	assert_int_equal((int64_t)cnt, n - lost);
	sbuf__free(&out);
}

/* Purchases first..last, checkpointed into the database file; returns how
 * many table leaves leaves() finds (page numbers and cell counts of up to
 * `max` of them in page/ncell). */
static int fill_leaves(fx *f, int first, int last, int64_t *page, int64_t *ncell, int max)
{
	for (int i = first; i <= last; i++)
		add_purchase(f->ob, i, NULL);
	tu_sql_exec(f->db, "PRAGMA wal_checkpoint(TRUNCATE)");
	return leaves(f->db, page, ncell, max);
}

static void damaged_middle_leaf_loses_only_its_rows(void **state)
{
	fx *f = *state;
	const int n = 303;
	int64_t page[64], ncell[64];
	int nl = fill_leaves(f, 1, n, page, ncell, 64);
	assert_true(nl >= 5);
	damage_page(f->db, page[nl / 2], NULL);
	quarantine_now(f);
	check_one_leaf_lost(f, n, ncell[nl / 2]);
}

static void damaged_first_leaf_loses_only_its_rows(void **state)
{
	fx *f = *state;
	const int n = 303;
	int64_t page[64], ncell[64];
	int nl = fill_leaves(f, 1, n, page, ncell, 64);
	assert_true(nl >= 5);
	damage_page(f->db, page[0], NULL);
	quarantine_now(f);
	check_one_leaf_lost(f, n, ncell[0]);
	assert_true(tu_sql_int(f->db, "SELECT min(seq) FROM outbox") > 1);
}

/* Two damaged leaves far apart: both runs skipped, everything else back. */
static void two_damaged_leaves(void **state)
{
	fx *f = *state;
	const int n = 600;
	int64_t page[128], ncell[128];
	int nl = fill_leaves(f, 1, n, page, ncell, 128);
	assert_true(nl >= 8);
	damage_page(f->db, page[1], NULL);
	damage_page(f->db, page[nl - 2], NULL);
	quarantine_now(f);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM outbox"), n - ncell[1] - ncell[nl - 2]);
}

/* Hole 10: the ledgers come across as they were, and nothing is attributed
 * that was not (attribution was off on this device). */
static void ledgers_and_attribution_kept(void **state)
{
	fx *f = *state;
	assert_int_equal(outbox__setting_set(f->ob, "attribution_window_ms", 0), SCRM_OK);
	add(f->ob, "reco_shown", "{\"guide_id\":\"g-7\",\"member_id\":\"M1\",\"items\":[\"22697\"]}", 1);
	int64_t sale = add_purchase(f->ob, 2, "M1");
	/* a single-use coupon spent and acknowledged: only the ledger knows */
	int64_t red = add(f->ob, "coupon_redeem",
			  "{\"campaign\":\"WELCOME\",\"coupon\":\"C-1\",\"member_id\":\"M1\",\"order_id\":\"O-2\","
			  "\"value\":500,\"currency\":\"GBP\",\"mode\":\"offline\"}",
			  3);
	int64_t acked_sale = add_purchase(f->ob, 4, "M1");
	const int64_t ack[][2] = {{red, red}, {acked_sale, acked_sale}};
	int64_t deleted = 0;
	assert_int_equal(outbox__ack(f->ob, ack, 2, T0 + 10, &deleted), SCRM_OK);
	assert_int_equal(deleted, 2);
	int64_t page[128], ncell[128];
	int nl = fill_leaves(f, 10, 399, page, ncell, 128);
	damage_page(f->db, page[nl - 1], NULL); /* the newest events, not the ones above */
	quarantine_now(f);

	char sql[200];
	snprintf(sql, sizeof(sql), "SELECT body FROM outbox WHERE seq = %lld", (long long)sale);
	char *body = tu_sql_text(f->db, sql);
	assert_non_null(body);
	if (strstr(body, "attributed"))
		print_error("salvaged sale attributed with attribution off: %s\n", body);
	assert_null(strstr(body, "\"attributed\""));
	assert_null(strstr(body, "\"reco_id\""));
	free(body);
	assert_int_equal(tu_sql_int(f->db, "SELECT v FROM settings WHERE k = 'attribution_window_ms'"), 0);
	/* the redemption ledger: the coupon stays spent on this device */
	outbox__limits lim = {.coupon = "C-1", .coupon_allowed = 1, .member_allowed = -1};
	int64_t by_coupon = 0, by_member = 0;
	assert_int_equal(outbox__redemption_counts(f->ob, &lim, &by_coupon, &by_member), SCRM_OK);
	assert_int_equal(by_coupon, 1);
	/* member activity (the guide's card) and the shown list */
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM member_activity WHERE member_id = 'M1'"), 2);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM reco_shown WHERE member_id = 'M1'"), 1);
	/* receipts: the acknowledged sale retried gives its first receipt */
	char b[400];
	snprintf(b, sizeof(b),
		 "{\"order_id\":\"O-4\",\"lines\":[{\"sku\":\"85123A\",\"qty\":1,\"unit_price\":100,\"discount\":0}],"
		 "\"discount\":0,\"total\":100,\"currency\":\"GBP\",\"payment\":\"card\",\"member_id\":\"M1\","
		 "\"pad\":\"0123456789012345678901234567890123456789012345678901234567890123456789\"}");
	outbox__row r = {.id = "0190a000-0000-7000-8000-999999999999", .kind = "purchase", .wall_ms = T0 + 99,
			 .mono_ms = 1, .boot = BOOT, .body = b, .body_len = strlen(b)};
	assert_int_equal(outbox__append(f->ob, &r, 1, T0), SCRM_OK);
	assert_true(r.existing);
	assert_int_equal(r.seq, acked_sale);
	/* the device's counters: the last ack survives */
	assert_int_equal(tu_sql_int(f->db, "SELECT last_acked_seq FROM device"), acked_sale);
}

/* scrmctl outbox recover: events unreadable at the quarantine (the page was
 * damaged then) but readable in the file later are put back once, with
 * their seq and id, and go out marked "recovered". */
static void recover_file_puts_back_once(void **state)
{
	fx *f = *state;
	const int n = 200;
	int64_t page[64], ncell[64];
	unsigned char saved[64];
	assert_true(fill_leaves(f, 1, n, page, ncell, 64) >= 4);
	damage_page(f->db, page[1], saved);
	quarantine_now(f);
	int64_t lost = ncell[1];
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM outbox"), n - lost);
	char q[4200];
	snprintf(q, sizeof(q), "%s", outbox__quarantined(f->ob));
	/* the damage was transient: the quarantined file reads whole again */
	{
		int64_t size = tu_sql_int(q, "PRAGMA page_size");
		int fd = open(q, O_RDWR);
		assert_true(fd >= 0);
		assert_int_equal(pwrite(fd, saved, 64, (off_t)((page[1] - 1) * size)), 64);
		close(fd);
	}
	salvage__report r;
	assert_int_equal(outbox__recover_file(f->ob, q, &r), SCRM_OK);
	assert_int_equal(r.events, lost);
	assert_int_equal(r.skipped, n - lost);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM outbox"), n);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM outbox WHERE recovered = 1"), lost);
	/* they go out marked, with their seq */
	sbuf out;
	size_t cnt = 0;
	int64_t last = 0, first = 0;
	sbuf__init(&out);
	assert_int_equal(outbox__read_batch(f->ob, 0, 1000, 1 << 24, 0, &out, &cnt, &last, &first), SCRM_OK);
	assert_int_equal((int64_t)cnt, n);
	int marked = 0;
	for (const char *p = out.p; (p = strstr(p, "\"recovered\":true")); p++)
		marked++;
	assert_int_equal(marked, lost);
	sbuf__free(&out);
	/* once: again gives nothing, also after they were acknowledged */
	const int64_t all[][2] = {{1, n}};
	int64_t deleted = 0;
	assert_int_equal(outbox__ack(f->ob, all, 1, T0 + 5, &deleted), SCRM_OK);
	assert_int_equal(outbox__recover_file(f->ob, q, &r), SCRM_OK);
	assert_int_equal(r.events, 0);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM outbox"), 0);
	/* the quarantined file was read, never written */
	/* another device's file is refused */
	tu_sql_exec(q, "UPDATE device SET device_id = 'pos-99'");
	assert_refused(outbox__recover_file(f->ob, q, &r), SCRM_E_MISMATCH, "file");
	assert_refused(outbox__recover_file(f->ob, "/nonexistent/outbox-1.db", &r), SCRM_E_NOT_FOUND, "file");
}

/* Hole 2: a page goes bad under a running daemon. Its next read (a batch,
 * the oldest seq, an ack) finds the damage, moves the file to quarantine
 * with every row still readable, and reads again from the fresh file. */
static void a_read_heals_a_file_damaged_while_open(void **state)
{
	fx *f = *state;
	const int n = 303;
	int64_t page[64], ncell[64];
	int nl = fill_leaves(f, 1, n, page, ncell, 64);
	/* the daemon's handle, opened before the damage (no check at open) */
	outbox__close(f->ob);
	assert_int_equal(outbox__open(f->dir, "pos-01", 0, &f->ob), SCRM_OK);
	unsigned gen = outbox__generation(f->ob);
	damage_page(f->db, page[nl / 2], NULL);
	sbuf out;
	size_t cnt = 0;
	int64_t last = 0, first = 0;
	sbuf__init(&out);
	assert_int_equal(outbox__read_batch(f->ob, 0, 1000, 1 << 24, 0, &out, &cnt, &last, &first), SCRM_OK);
	assert_int_equal((int64_t)cnt, n - ncell[nl / 2]);
	sbuf__free(&out);
	assert_non_null(outbox__quarantined(f->ob));
	assert_true(outbox__generation(f->ob) != gen);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM alarms WHERE code = 'outbox_quarantined'"), 1);
	/* acks go on against the fresh file */
	const int64_t all[][2] = {{1, n}};
	int64_t deleted = 0;
	assert_int_equal(outbox__ack(f->ob, all, 1, T0 + 1, &deleted), SCRM_OK);
	assert_int_equal(deleted, n - ncell[nl / 2]);
}

/* Hole 4: one byte changed inside a stored body (quick_check still says
 * ok: it does not read the content) made the event unsendable; it went
 * into every batch, central dropped each as not JSON, and go-back-N
 * restarted at the same event forever. Now the read sets it aside: its
 * bytes to dead_letter, a marker in its place, the alarm up, the queue
 * moving. */
static void a_poison_event_is_set_aside(void **state)
{
	fx *f = *state;
	for (int i = 1; i <= 10; i++)
		add_purchase(f->ob, i, NULL);
	tu_sql_exec(f->db, "PRAGMA wal_checkpoint(TRUNCATE)");
	outbox__close(f->ob);
	f->ob = NULL;
	{
		/* flip the quote before order_id in the stored row of O-5 */
		size_t len = 0;
		FILE *fp = fopen(f->db, "r+b");
		assert_non_null(fp);
		fseek(fp, 0, SEEK_END);
		len = (size_t)ftell(fp);
		char *buf = malloc(len);
		fseek(fp, 0, SEEK_SET);
		assert_int_equal(fread(buf, 1, len, fp), len);
		const char *needle = "\"order_id\":\"O-5\"";
		char *hit = memmem(buf, len, needle, strlen(needle));
		assert_non_null(hit);
		fseek(fp, (long)(hit - buf), SEEK_SET);
		fputc('{', fp);
		fclose(fp);
		free(buf);
	}
	char *qc = tu_sql_text(f->db, "PRAGMA quick_check");
	assert_string_equal(qc, "ok"); /* quick_check does not read the content */
	free(qc);
	assert_int_equal(outbox__open_checked(f->dir, "pos-01", 0, &f->ob), SCRM_OK);
	assert_null(outbox__quarantined(f->ob));
	for (int round = 0; round < 2; round++) {
		sbuf out;
		size_t cnt = 0;
		int64_t last = 0, first = 0;
		sbuf__init(&out);
		assert_int_equal(outbox__read_batch(f->ob, 0, 100, 1 << 20, 0, &out, &cnt, &last, &first), SCRM_OK);
		assert_int_equal(cnt, 10);
		assert_int_equal(last, 10);
		/* every event but the marker is a parsable event; the marker has no body */
		char *text = malloc(out.len + 3);
		snprintf(text, out.len + 3, "[%s]", out.p);
		cJSON *arr = cJSON_Parse(text);
		assert_non_null(arr);
		const cJSON *e5 = cJSON_GetArrayItem(arr, 4);
		assert_int_equal(cJSON_GetObjectItemCaseSensitive(e5, "seq")->valuedouble, 5);
		assert_null(cJSON_GetObjectItemCaseSensitive(e5, "body"));
		const cJSON *sa = cJSON_GetObjectItemCaseSensitive(e5, "set_aside");
		assert_string_equal(cJSON_GetObjectItemCaseSensitive(sa, "reason")->valuestring, "unreadable");
		assert_non_null(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(arr, 5), "body"));
		cJSON_Delete(arr);
		free(text);
		sbuf__free(&out);
	}
	/* the bytes as stored, kept for follow-up; the alarm */
	char *kept = tu_sql_text(f->db, "SELECT CAST(body AS TEXT) FROM dead_letter WHERE seq = 5");
	assert_non_null(strstr(kept, "{order_id\":\"O-5\""));
	free(kept);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM alarms WHERE code = 'events_set_aside'"), 1);
	int64_t n = -1;
	assert_int_equal(outbox__set_aside_count(f->ob, &n), SCRM_OK);
	assert_int_equal(n, 1);
	/* too big for the broker: set aside the same way, with that reason */
	sbuf out;
	size_t cnt = 0;
	int64_t last = 0, first = 0;
	sbuf__init(&out);
	assert_int_equal(outbox__read_batch(f->ob, 5, 100, 1 << 20, 200, &out, &cnt, &last, &first), SCRM_OK);
	assert_int_equal(cnt, 5);
	assert_non_null(strstr(out.p, "\"reason\":\"too_big\""));
	assert_null(strstr(out.p, "\"body\""));
	sbuf__free(&out);
	assert_int_equal(outbox__set_aside_count(f->ob, &n), SCRM_OK);
	assert_int_equal(n, 6);
	/* a broker limit below even a marker's size: the bare marker, seq and
	 * reason (the simulator found a 16-digit seq's marker over a tiny
	 * limit wedging the queue) */
	sbuf__init(&out);
	assert_int_equal(outbox__read_batch(f->ob, 4, 100, 1 << 20, 60, &out, &cnt, &last, &first), SCRM_OK);
	assert_int_equal(cnt, 6);
	assert_non_null(strstr(out.p, "{\"seq\":5,\"set_aside\":{\"reason\":\"unreadable\"}}"));
	assert_null(strstr(out.p, "\"detail\""));
	sbuf__free(&out);
}

int main(int argc, char **argv)
{
	tu_select(argc, argv);
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(damaged_middle_leaf_loses_only_its_rows),
		T(damaged_first_leaf_loses_only_its_rows),
		T(two_damaged_leaves),
		T(ledgers_and_attribution_kept),
		T(recover_file_puts_back_once),
		T(a_read_heals_a_file_damaged_while_open),
		T(a_poison_event_is_set_aside),
	};
	return cmocka_run_group_tests_name("salvage", tests, NULL, NULL);
}
