/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bounded_test: bounded storage and damaged files (issue 5, "Bounded
 * storage") — the outbox's size cap with class-aware eviction, the reserve
 * for paid events, per-row decisions inside a group commit, the counters
 * and alarms the heartbeat reports, and the quarantine of a damaged
 * outbox.db or cache.db (moved aside byte for byte, a fresh file opened,
 * sequence numbers never reused, several processes opening at once).
 *
 * Links libscrm's archive (outbox, quarantine, store, cache) and drives the
 * outbox module directly where a test needs exact sizes (rows with chosen
 * bodies: 384 bytes + OUTBOX_ROW_OVERHEAD = 512 stored bytes each), and the
 * public capture API where it needs the group commit. The database files
 * are inspected with separate SQLite connections (testdb.c).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cache.h"
#include "outbox.h"
#include "platform.h"
#include "testutil.h"
#include "outboxfx.h"

#include <scrm/scrm.h>

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define BOOT "9f1c0d1e-6a43-4b7e-9a51-0c2d9e8f7a6b"
#define T0 1700000000000LL
#define BODY 384                              /* body bytes of a test row */
#define ROW (BODY + OUTBOX_ROW_OVERHEAD)      /* its stored size: 512 */

static int setup(void **state)
{
	return outboxfx_setup(state, "bounded");
}

static int teardown(void **state)
{
	return outboxfx_teardown(state);
}

/* ---- rows of exact sizes --------------------------------------------- */

typedef struct rowbuf {
	char id[37];
	char body[BODY + 1];
} rowbuf;

/* A valid body for `kind` (the triggers read some fields), padded to BODY. */
static void make_body(char *out, const char *kind, int n)
{
	char head[200];
	if (strcmp(kind, "purchase") == 0)
		snprintf(head, sizeof(head), "{\"order_id\":\"O-%d\",\"total\":100", n);
	else if (strcmp(kind, "return") == 0)
		snprintf(head, sizeof(head), "{\"return_id\":\"R-%d\",\"order_id\":\"O-%d\",\"total\":100", n, n);
	else if (strcmp(kind, "reco_shown") == 0)
		snprintf(head, sizeof(head), "{\"guide_id\":\"g-1\",\"member_id\":\"m%d\"", n);
	else if (strcmp(kind, "coupon_redeem") == 0)
		snprintf(head, sizeof(head),
			 "{\"campaign\":\"camp\",\"coupon\":\"C-%d\",\"order_id\":\"O-%d\",\"value\":100,\"currency\":\"GBP\","
			 "\"mode\":\"offline\"",
			 n, n);
	else
		snprintf(head, sizeof(head), "{\"member_id\":\"m%d\",\"method\":\"qr\"", n);
	size_t h = strlen(head);
	const char *pad = ",\"pad\":\"";
	size_t p = strlen(pad);
	size_t fill = BODY - h - p - 2;
	memcpy(out, head, h);
	memcpy(out + h, pad, p);
	memset(out + h + p, 'x', fill);
	memcpy(out + h + p + fill, "\"}", 3);
	assert_int_equal(strlen(out), BODY);
}

static void make_row(outbox__row *r, rowbuf *b, const char *kind)
{
	static int counter;
	int n = ++counter;
	snprintf(b->id, sizeof(b->id), "0190a000-0000-7000-8000-%012d", n);
	make_body(b->body, kind, n);
	memset(r, 0, sizeof(*r));
	r->id = b->id;
	r->kind = kind;
	r->wall_ms = T0 + n;
	r->mono_ms = 1000 + n;
	r->boot = BOOT;
	r->body = b->body;
	r->body_len = BODY;
}

/* Append one row of `kind`; returns its seq (0 if refused, *rc says why). */
static int64_t add(outbox *ob, const char *kind, int *rc_out)
{
	outbox__row r;
	rowbuf b;
	make_row(&r, &b, kind);
	int rc = outbox__append(ob, &r, 1, T0);
	if (rc_out)
		*rc_out = rc;
	else if (rc != SCRM_OK) {
		print_error("append %s: %s\n", kind, scrm_errmsg());
		fail();
	}
	assert_int_equal(r.refused, rc);
	return r.seq;
}

static int64_t sql_int(fx *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int64_t sql_int(fx *f, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *sql = tu_vfmt(fmt, ap);
	va_end(ap);
	int64_t v = tu_sql_int(f->db, sql);
	free(sql);
	return v;
}

static int present(fx *f, int64_t seq)
{
	return (int)sql_int(f, "SELECT count(*) FROM outbox WHERE seq = %lld", (long long)seq);
}

static struct outbox__health health(outbox *ob)
{
	struct outbox__health h;
	assert_int_equal(outbox__health(ob, &h), SCRM_OK);
	return h;
}

static const struct outbox__health *dropped_of(const struct outbox__health *h, const char *kind, int64_t *count,
					       int64_t *bytes)
{
	*count = *bytes = 0;
	for (size_t i = 0; i < h->n_dropped && i < OUTBOX_HEALTH_KINDS; i++)
		if (strcmp(h->dropped[i].kind, kind) == 0) {
			*count = h->dropped[i].count;
			*bytes = h->dropped[i].bytes;
		}
	return h;
}

/* The running total equals what a full scan of the table says. */
static void usage_exact(fx *f)
{
	struct outbox__health h = health(f->ob);
	int64_t scan = sql_int(f, "SELECT coalesce(sum(length(CAST(body AS BLOB))), 0) + %d * count(*) FROM outbox",
			       OUTBOX_ROW_OVERHEAD);
	assert_int_equal(h.bytes, scan);
	assert_int_equal(h.pending, sql_int(f, "SELECT count(*) FROM outbox"));
}

/* The alarm `code` as {count, detail}; count 0 when it is not raised. */
static int64_t alarm_count(outbox *ob, const char *code, char *detail, size_t cap)
{
	sbuf b;
	sbuf__init(&b);
	assert_int_equal(outbox__alarms(ob, &b), SCRM_OK);
	cJSON *a = cJSON_Parse(b.p);
	assert_non_null(a);
	assert_true(cJSON_IsArray(a));
	int64_t n = 0;
	const cJSON *it;
	if (cap)
		detail[0] = '\0';
	cJSON_ArrayForEach(it, a)
	{
		const cJSON *c = cJSON_GetObjectItemCaseSensitive(it, "code");
		assert_true(cJSON_IsString(c));
		assert_true(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(it, "since_ms")));
		assert_true(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(it, "last_ms")));
		if (strcmp(c->valuestring, code) == 0) {
			n = (int64_t)cJSON_GetObjectItemCaseSensitive(it, "count")->valuedouble;
			const cJSON *d = cJSON_GetObjectItemCaseSensitive(it, "detail");
			assert_true(cJSON_IsString(d));
			if (cap)
				snprintf(detail, cap, "%s", d->valuestring);
		}
	}
	cJSON_Delete(a);
	sbuf__free(&b);
	return n;
}

/* ---- eviction -------------------------------------------------------- */

/* Without a daemon the library uses the defaults; the daemon's limits
 * reach every handle at its next append. */
static void limits_default_then_daemon(void **state)
{
	fx *f = *state;
	struct outbox__health h = health(f->ob);
	assert_int_equal(h.max_bytes, OUTBOX_DEFAULT_MAX_BYTES);
	assert_int_equal(h.reserve_bytes, OUTBOX_RESERVE_AUTO_MAX);
	assert_int_equal(h.bytes, 0);
	assert_int_equal(h.n_dropped, 0);
	assert_int_equal(h.in_reserve, 0);

	outbox *daemon = NULL;
	assert_int_equal(outbox__open(f->store, "pos-01", 0, &daemon), SCRM_OK);
	assert_int_equal(outbox__set_limits(daemon, 65536, -1), SCRM_OK); /* auto: 1/8 */
	h = health(f->ob);
	assert_int_equal(h.max_bytes, 65536);
	assert_int_equal(h.reserve_bytes, 8192);
	assert_int_equal(outbox__set_limits(daemon, 1 << 30, -1), SCRM_OK); /* auto: at most 8 MiB */
	assert_int_equal(health(f->ob).reserve_bytes, OUTBOX_RESERVE_AUTO_MAX);
	assert_refused(outbox__set_limits(daemon, 65536, 65536), SCRM_E_INVALID, "outbox.reserve_bytes");
	assert_refused(outbox__set_limits(daemon, 1000, -1), SCRM_E_INVALID, "outbox.max_bytes");
	outbox__close(daemon);
}

/* Browsing goes first, then scans, oldest first in each class; what a
 * customer paid for stays. Counters and usage are exact. */
static void eviction_order_and_counters(void **state)
{
	fx *f = *state;
	static const char *const cycle[] = {"member_scan", "reco_shown", "purchase", "reco_shown", "return", "member_scan"};
	int64_t seq[25];
	assert_int_equal(outbox__set_limits(f->ob, 16384, 4096), SCRM_OK); /* 24 rows below the reserve */
	for (int i = 1; i <= 24; i++)
		seq[i] = add(f->ob, cycle[(i - 1) % 6], NULL);
	assert_int_equal(seq[24], 24);
	assert_int_equal(health(f->ob).bytes, 24 * ROW);
	assert_int_equal(health(f->ob).n_dropped, 0);
	usage_exact(f);

	/* 8 new scans: the 8 recommendations shown go, oldest first. */
	for (int i = 0; i < 8; i++) {
		int64_t s = add(f->ob, "member_scan", NULL);
		assert_int_equal(s, 25 + i);
		/* reco seqs: 2, 4, 8, 10, 14, 16, 20, 22 */
		static const int reco[] = {2, 4, 8, 10, 14, 16, 20, 22};
		for (int k = 0; k < 8; k++)
			assert_int_equal(present(f, reco[k]), k > i);
		assert_int_equal(health(f->ob).bytes, 24 * ROW);
	}
	/* 2 more: now the oldest scans (1, then 6), not the newer ones. */
	add(f->ob, "member_scan", NULL);
	assert_false(present(f, 1));
	assert_true(present(f, 6));
	add(f->ob, "member_scan", NULL);
	assert_false(present(f, 6));
	assert_true(present(f, 7));
	/* paid: all there */
	assert_int_equal(sql_int(f, "SELECT count(*) FROM outbox WHERE kind IN ('purchase', 'return')"), 8);
	for (int i = 1; i <= 24; i++)
		if (!strcmp(cycle[(i - 1) % 6], "purchase") || !strcmp(cycle[(i - 1) % 6], "return"))
			assert_true(present(f, i));

	struct outbox__health h = health(f->ob);
	int64_t c, b;
	dropped_of(&h, "reco_shown", &c, &b);
	assert_int_equal(c, 8);
	assert_int_equal(b, 8 * ROW);
	dropped_of(&h, "member_scan", &c, &b);
	assert_int_equal(c, 2);
	assert_int_equal(b, 2 * ROW);
	assert_int_equal(h.n_dropped, 2);
	assert_int_equal(h.bytes, 24 * ROW);
	assert_int_equal(h.pending, 24);
	assert_int_equal(h.last_seq, 34);
	assert_int_equal(h.in_reserve, 0);
	assert_int_equal(h.refused_paid, 0);
	usage_exact(f);
	char detail[400];
	assert_int_equal(alarm_count(f->ob, "events_dropped", detail, sizeof(detail)), 10);
	assert_non_null(strstr(detail, "member_scan 2"));
	assert_non_null(strstr(detail, "reco_shown 8"));
	assert_int_equal(alarm_count(f->ob, "outbox_full", NULL, 0), 0);

	/* A purchase takes the room of the oldest scan left (7). */
	int64_t p = add(f->ob, "purchase", NULL);
	assert_int_equal(p, 35);
	assert_false(present(f, 7));
	assert_true(present(f, 12));

	/* Usage follows acks and rejections exactly; acked seqs are gone for
	 * good, the counter goes on. */
	const int64_t r[][2] = {{1, 12}};
	int64_t deleted = 0;
	assert_int_equal(outbox__ack(f->ob, r, 1, T0 + 100, &deleted), SCRM_OK);
	assert_int_equal(deleted, 5); /* 3, 5, 9, 11 paid and the scan 12 */
	assert_int_equal(health(f->ob).bytes, 19 * ROW);
	assert_int_equal(health(f->ob).last_ack_ms, T0 + 100);
	usage_exact(f);
	assert_int_equal(outbox__reject(f->ob, 13, "body.total: wrong", T0 + 101), SCRM_OK);
	assert_int_equal(health(f->ob).bytes, 18 * ROW);
	usage_exact(f);
	/* the dropped counters are history: acks do not change them */
	h = health(f->ob);
	dropped_of(&h, "member_scan", &c, &b);
	assert_int_equal(c, 3);
}

/* Every kind not paid for is evictable: browsing first, scans next, then
 * kinds this agent does not know yet (kept longest, in doubt). */
static void eviction_classes(void **state)
{
	fx *f = *state;
	assert_int_equal(outbox__set_limits(f->ob, 16384, 0), SCRM_OK); /* 32 rows, no reserve */
	for (int i = 0; i < 8; i++)
		add(f->ob, "shelf_view", NULL); /* 1..8 */
	for (int i = 0; i < 8; i++)
		add(f->ob, "member_scan", NULL); /* 9..16 */
	for (int i = 0; i < 8; i++)
		add(f->ob, "reco_shown", NULL); /* 17..24 */
	for (int i = 0; i < 8; i++)
		add(f->ob, "purchase", NULL); /* 25..32 */
	assert_int_equal(health(f->ob).bytes, 16384);
	for (int i = 0; i < 24; i++) {
		add(f->ob, "coupon_redeem", NULL);
		int gone = i + 1;
		assert_int_equal(sql_int(f, "SELECT count(*) FROM outbox WHERE kind = 'reco_shown'"), gone < 8 ? 8 - gone : 0);
		assert_int_equal(sql_int(f, "SELECT count(*) FROM outbox WHERE kind = 'member_scan'"),
				 gone <= 8 ? 8 : gone < 16 ? 16 - gone : 0);
		assert_int_equal(sql_int(f, "SELECT count(*) FROM outbox WHERE kind = 'shelf_view'"), gone <= 16 ? 8 : 24 - gone);
		/* oldest first within a class */
		if (gone > 16)
			assert_int_equal(sql_int(f, "SELECT min(seq) FROM outbox WHERE kind = 'shelf_view'"), gone - 16 + 1 > 8 ? 0 : gone - 16 + 1);
	}
	assert_int_equal(sql_int(f, "SELECT count(*) FROM outbox"), 32);
	int rc;
	assert_int_equal(add(f->ob, "purchase", &rc), 0);
	assert_int_equal(rc, SCRM_E_DISK_FULL);
	usage_exact(f);
}

/* The reserve takes paid events once nothing evictable is left; beyond it a
 * paid capture is refused with a clear error and an alarm, and nothing
 * stored changes. An ack makes room again. */
static void paid_reserve_then_refused(void **state)
{
	fx *f = *state;
	assert_int_equal(outbox__set_limits(f->ob, 16384, 4096), SCRM_OK);
	for (int i = 0; i < 24; i++)
		add(f->ob, i % 2 ? "return" : "purchase", NULL);
	struct outbox__health h = health(f->ob);
	assert_int_equal(h.bytes, 12288);
	assert_int_equal(h.in_reserve, 0);
	assert_int_equal(alarm_count(f->ob, "outbox_full", NULL, 0), 0);

	/* a scan does not get into the reserve: refused, counted */
	int rc;
	assert_int_equal(add(f->ob, "member_scan", &rc), 0);
	assert_refused(rc, SCRM_E_REFUSED, "outbox full");
	assert_errmsg_contains("member_scan not recorded");
	assert_errmsg_contains("outbox.reserve_bytes");
	h = health(f->ob);
	int64_t c, b;
	dropped_of(&h, "member_scan", &c, &b);
	assert_int_equal(c, 1);
	assert_int_equal(b, ROW);
	assert_int_equal(h.bytes, 12288);
	assert_int_equal(alarm_count(f->ob, "events_dropped", NULL, 0), 1);

	/* 8 paid events fill the reserve */
	for (int i = 0; i < 8; i++)
		assert_int_equal(add(f->ob, "purchase", NULL), 25 + i);
	h = health(f->ob);
	assert_int_equal(h.bytes, 16384);
	assert_int_equal(h.in_reserve, 1);
	char detail[480];
	assert_int_equal(alarm_count(f->ob, "outbox_full", detail, sizeof(detail)), 8);
	assert_non_null(strstr(detail, "in reserve"));

	/* the next is refused: DISK_FULL, naming the key, nothing changed */
	char before_max[40];
	snprintf(before_max, sizeof(before_max), "%lld", (long long)sql_int(f, "SELECT max(seq) FROM outbox"));
	int64_t rows_before = sql_int(f, "SELECT count(*) FROM outbox");
	int64_t sum_before = sql_int(f, "SELECT sum(seq) FROM outbox");
	assert_int_equal(add(f->ob, "purchase", &rc), 0);
	assert_refused(rc, SCRM_E_DISK_FULL, "outbox full");
	assert_errmsg_contains("16384 bytes used of 16384 (outbox.max_bytes)");
	assert_errmsg_contains("nothing was recorded");
	assert_errmsg_contains("no scrm-agent has run on this store yet");
	assert_int_equal(sql_int(f, "SELECT count(*) FROM outbox"), rows_before);
	assert_int_equal(sql_int(f, "SELECT sum(seq) FROM outbox"), sum_before);
	h = health(f->ob);
	assert_int_equal(h.bytes, 16384);
	assert_int_equal(h.last_seq, 32); /* no seq spent on a refusal */
	assert_int_equal(h.refused_paid, 1);
	assert_int_equal(alarm_count(f->ob, "outbox_full", detail, sizeof(detail)), 9);
	assert_non_null(strstr(detail, "outbox.max_bytes"));

	/* a redemption is paid too: same refusal, through its own path */
	{
		outbox__row r;
		rowbuf rb;
		outbox__limits lim = {.coupon = "C-9", .coupon_allowed = -1, .member_allowed = -1};
		make_row(&r, &rb, "coupon_redeem");
		assert_refused(outbox__append_redemption(f->ob, &r, T0, &lim), SCRM_E_DISK_FULL, "outbox full");
		assert_int_equal(r.seq, 0);
		assert_int_equal(health(f->ob).refused_paid, 2);
		assert_int_equal(sql_int(f, "SELECT count(*) FROM redemptions"), 0);
	}
	/* With the daemon's link state, the message says since when. */
	assert_int_equal(outbox__link_set(f->ob, 0, 1750000000000LL), SCRM_OK);
	assert_int_equal(add(f->ob, "return", &rc), 0);
	assert_refused(rc, SCRM_E_DISK_FULL, "outbox full");
	assert_errmsg_contains("central unreachable since 2025-06-15T15:06:40Z");
	assert_errmsg_contains("central has never acknowledged an event");

	/* central acknowledges 10: room again, the alarm is over */
	const int64_t r[][2] = {{1, 10}};
	int64_t deleted = 0;
	assert_int_equal(outbox__ack(f->ob, r, 1, T0 + 100, &deleted), SCRM_OK);
	assert_int_equal(deleted, 10);
	h = health(f->ob);
	assert_int_equal(h.bytes, 22 * ROW);
	assert_int_equal(h.in_reserve, 0);
	assert_int_equal(alarm_count(f->ob, "outbox_full", NULL, 0), 0);
	assert_int_equal(add(f->ob, "purchase", NULL), 33);
	assert_int_equal(add(f->ob, "member_scan", NULL), 34);
	usage_exact(f);
	/* the history stays */
	assert_int_equal(health(f->ob).refused_paid, 3);
}

/* One group commit: each row is decided alone; rows of the group are never
 * evicted by a later row of the same group. */
static void group_decides_each_row(void **state)
{
	fx *f = *state;
	assert_int_equal(outbox__set_limits(f->ob, 16384, 4096), SCRM_OK);
	for (int i = 0; i < 23; i++)
		add(f->ob, "purchase", NULL); /* 11776 bytes */

	/* a scan that fits, then a purchase that needs the reserve: the scan
	 * of this very group is not evicted for it */
	outbox__row rows[4];
	rowbuf bufs[4];
	make_row(&rows[0], &bufs[0], "member_scan");
	make_row(&rows[1], &bufs[1], "purchase");
	assert_int_equal(outbox__append(f->ob, rows, 2, T0), SCRM_OK);
	assert_int_equal(rows[0].seq, 24);
	assert_int_equal(rows[1].seq, 25);
	assert_true(present(f, 24));
	assert_int_equal(health(f->ob).in_reserve, 1);

	/* fill to one row short of the cap (the scan 24 makes room first) */
	for (int i = 0; i < 7; i++)
		add(f->ob, "purchase", NULL); /* 26..32: 31 rows */
	assert_false(present(f, 24));
	assert_int_equal(health(f->ob).bytes, 31 * ROW);

	/* [fits, does not fit, scan: no room, does not fit] */
	make_row(&rows[0], &bufs[0], "purchase");
	make_row(&rows[1], &bufs[1], "return");
	make_row(&rows[2], &bufs[2], "member_scan");
	make_row(&rows[3], &bufs[3], "coupon_redeem");
	int rc = outbox__append(f->ob, rows, 4, T0);
	assert_int_equal(rc, SCRM_E_DISK_FULL); /* the first refusal */
	assert_int_equal(rows[0].refused, SCRM_OK);
	assert_int_equal(rows[0].seq, 33);
	assert_int_equal(rows[1].refused, SCRM_E_DISK_FULL);
	assert_int_equal(rows[1].seq, 0);
	assert_non_null(rows[1].why);
	assert_non_null(strstr(rows[1].why, "outbox.max_bytes"));
	assert_int_equal(rows[2].refused, SCRM_E_REFUSED);
	assert_int_equal(rows[2].seq, 0);
	assert_non_null(strstr(rows[2].why, "member_scan not recorded"));
	assert_int_equal(rows[3].refused, SCRM_E_DISK_FULL);
	/* the row that fitted is committed */
	assert_true(present(f, 33));
	assert_int_equal(health(f->ob).last_seq, 33);
	assert_int_equal(health(f->ob).refused_paid, 2);
	usage_exact(f);
}

/* An attribution (a trigger rewriting the sale's body) and an erasure keep
 * the running total exact. */
static void usage_follows_body_rewrites(void **state)
{
	fx *f = *state;
	outbox__row r;
	char body[200];
	memset(&r, 0, sizeof(r));
	/* a reco shown to member m1, then m1 buys: the sale is attributed */
	snprintf(body, sizeof(body), "{\"guide_id\":\"g-7\",\"member_id\":\"m1\"}");
	r = (outbox__row){.id = "0190a000-0000-7000-8000-000000000901", .kind = "reco_shown", .wall_ms = T0 + 1,
			  .mono_ms = 1, .boot = BOOT, .body = body, .body_len = strlen(body)};
	assert_int_equal(outbox__append(f->ob, &r, 1, T0), SCRM_OK);
	snprintf(body, sizeof(body), "{\"order_id\":\"A-1\",\"member_id\":\"m1\",\"total\":100,\"lines\":[]}");
	r = (outbox__row){.id = "0190a000-0000-7000-8000-000000000902", .kind = "purchase", .wall_ms = T0 + 2,
			  .mono_ms = 2, .boot = BOOT, .body = body, .body_len = strlen(body)};
	assert_int_equal(outbox__append(f->ob, &r, 1, T0), SCRM_OK);
	char *got = tu_sql_text(f->db, "SELECT body FROM outbox WHERE seq = 2");
	assert_non_null(strstr(got, "\"attributed\":\"auto\""));
	free(got);
	usage_exact(f);
	int64_t n = 0;
	assert_int_equal(outbox__redact_member(f->ob, "m1", &n), SCRM_OK);
	assert_int_equal(n, 2);
	usage_exact(f);
}

/* Alarms: raise bumps, clear removes, the list is JSON. */
static void alarms_raise_and_clear(void **state)
{
	fx *f = *state;
	assert_int_equal(alarm_count(f->ob, "cache_quarantined", NULL, 0), 0);
	assert_int_equal(outbox__alarm_raise(f->ob, "cache_quarantined", "first", T0), SCRM_OK);
	assert_int_equal(outbox__alarm_raise(f->ob, "cache_quarantined", "second \"quoted\"", T0 + 5), SCRM_OK);
	char d[100];
	assert_int_equal(alarm_count(f->ob, "cache_quarantined", d, sizeof(d)), 2);
	assert_string_equal(d, "second \"quoted\"");
	assert_int_equal(sql_int(f, "SELECT since_ms FROM alarms WHERE code = 'cache_quarantined'"), T0);
	assert_int_equal(sql_int(f, "SELECT last_ms FROM alarms WHERE code = 'cache_quarantined'"), T0 + 5);
	assert_int_equal(outbox__alarm_clear(f->ob, "cache_quarantined"), SCRM_OK);
	assert_int_equal(alarm_count(f->ob, "cache_quarantined", NULL, 0), 0);
	assert_refused(outbox__alarm_raise(f->ob, "", "x", T0), SCRM_E_INVALID, "code");
}

/* ---- group commit through the public API ----------------------------- */

#define THREADS 8
#define PER_THREAD 200 /* every 8th a purchase */

struct worker {
	scrm_store *st;
	int t;
	int64_t purchase_seq[PER_THREAD], scan_seq[PER_THREAD];
	char purchase_id[PER_THREAD][37];
	int n_purchase, n_scan_ok, n_scan_refused, n_other;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	for (int i = 0; i < PER_THREAD; i++) {
		scrm_receipt r;
		char order[40], member[40];
		if (i % 8 == 0) {
			snprintf(order, sizeof(order), "T%d-%d", w->t, i);
			scrm_line l = {.sku = "85123A", .qty = 2, .unit_price = 255};
			scrm_purchase p = {.order_id = order, .lines = &l, .n_lines = 1, .total = 510, .currency = "GBP",
					   .payment = "card"};
			if (scrm_record_purchase(w->st, &p, &r) == SCRM_OK) {
				w->purchase_seq[w->n_purchase] = r.seq;
				memcpy(w->purchase_id[w->n_purchase], r.event_id, 37);
				w->n_purchase++;
			} else {
				w->n_other++;
			}
		} else {
			snprintf(member, sizeof(member), "member-%d-%d", w->t, i);
			scrm_member_scan m = {.member_id = member, .method = "qr"};
			int rc = scrm_record_member_scan(w->st, &m, &r);
			if (rc == SCRM_OK)
				w->scan_seq[w->n_scan_ok++] = r.seq;
			else if (rc == SCRM_E_REFUSED && strncmp(scrm_errmsg(), "outbox full:", 12) == 0)
				w->n_scan_refused++;
			else
				w->n_other++;
		}
	}
	return NULL;
}

/* Concurrent captures share transactions: under the cap no paid event is
 * lost, every successful receipt was stored, and every scan either is there
 * or is counted as dropped. */
static void group_commit_under_cap(void **state)
{
	fx *f = *state;
	assert_int_equal(outbox__set_limits(f->ob, 131072, 16384), SCRM_OK);
	scrm_store *st = NULL;
	scrm_store_options so = {.device_id = "pos-01"};
	assert_int_equal(scrm_store_open(f->store, &so, &st), SCRM_OK);
	static struct worker w[THREADS];
	pthread_t th[THREADS];
	memset(w, 0, sizeof(w));
	for (int t = 0; t < THREADS; t++) {
		w[t].st = st;
		w[t].t = t;
		assert_int_equal(pthread_create(&th[t], NULL, worker_main, &w[t]), 0);
	}
	for (int t = 0; t < THREADS; t++)
		pthread_join(th[t], NULL);
	scrm_store_close(st);

	int64_t scans_ok = 0, scans_refused = 0;
	sqlite3 *db = NULL;
	sqlite3_stmt *q = NULL;
	assert_int_equal(sqlite3_open_v2(f->db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, "SELECT id, kind FROM outbox WHERE seq = ?1", -1, &q, NULL), SQLITE_OK);
	for (int t = 0; t < THREADS; t++) {
		assert_int_equal(w[t].n_other, 0);
		assert_int_equal(w[t].n_purchase, PER_THREAD / 8);
		for (int i = 0; i < w[t].n_purchase; i++) {
			sqlite3_reset(q);
			sqlite3_bind_int64(q, 1, w[t].purchase_seq[i]);
			assert_int_equal(sqlite3_step(q), SQLITE_ROW);
			assert_string_equal((const char *)sqlite3_column_text(q, 0), w[t].purchase_id[i]);
			assert_string_equal((const char *)sqlite3_column_text(q, 1), "purchase");
		}
		scans_ok += w[t].n_scan_ok;
		scans_refused += w[t].n_scan_refused;
	}
	sqlite3_finalize(q);
	sqlite3_close(db);
	int64_t scans_there = sql_int(f, "SELECT count(*) FROM outbox WHERE kind = 'member_scan'");
	struct outbox__health h = health(f->ob);
	int64_t c, b;
	dropped_of(&h, "member_scan", &c, &b);
	assert_true(c > 0); /* the cap was reached */
	assert_int_equal(c, scans_ok - scans_there + scans_refused);
	assert_int_equal(h.refused_paid, 0);
	assert_true(h.bytes <= h.max_bytes);
	assert_int_equal(sql_int(f, "SELECT count(*) FROM outbox WHERE kind = 'purchase'"), THREADS * PER_THREAD / 8);
	usage_exact(f);
}

/* ---- quarantine: outbox ---------------------------------------------- */

static char *read_bytes(const char *path, size_t *len)
{
	FILE *fp = fopen(path, "rb");
	if (!fp)
		return NULL;
	char *buf = malloc(1 << 22);
	assert_non_null(buf);
	*len = fread(buf, 1, 1 << 22, fp);
	fclose(fp);
	return buf;
}

static void write_garbage(const char *path, char *copy, size_t len)
{
	for (size_t i = 0; i < len; i++)
		copy[i] = "this is not an SQLite database. "[i % 32];
	tu_write_file(path, copy, len);
}

static int exists(const char *p)
{
	return access(p, F_OK) == 0;
}

/* Files in <store>/quarantine whose name ends with `suffix`. */
/* In the store's quarantine/ (outbox) and the private directory's (cache:
 * personal data stays in the agent's own directory). */
static int quarantined_files(fx *f, const char *suffix)
{
	int n = 0;
	for (int i = 0; i < 2; i++) {
		char *q = tu_join(f->store, i ? "private/quarantine" : "quarantine");
		DIR *d = opendir(q);
		struct dirent *e;
		while (d && (e = readdir(d))) {
			size_t a = strlen(e->d_name), b = strlen(suffix);
			if (a > b && strcmp(e->d_name + a - b, suffix) == 0)
				n++;
		}
		if (d)
			closedir(d);
		free(q);
	}
	return n;
}

static void sql_exec(const char *path, const char *sql)
{
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	sqlite3_busy_timeout(db, 5000);
	if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK) {
		print_error("%s: %s\n", sql, sqlite3_errmsg(db));
		sqlite3_close(db);
		fail();
	}
	sqlite3_close(db);
}

/* Overwrite the b-tree page of `table` with junk: quick_check sees it, a
 * connection that never reads that table does not. */
static void smash_table_page(const char *db_path, const char *table)
{
	char sql[200];
	snprintf(sql, sizeof(sql), "SELECT rootpage FROM sqlite_master WHERE name = '%s'", table);
	int64_t page = tu_sql_int(db_path, sql);
	int64_t size = tu_sql_int(db_path, "PRAGMA page_size");
	assert_true(page > 1);
	int fd = open(db_path, O_WRONLY);
	assert_true(fd >= 0);
	char junk[64];
	memset(junk, 0xA5, sizeof(junk));
	assert_int_equal(pwrite(fd, junk, sizeof(junk), (off_t)((page - 1) * size)), (ssize_t)sizeof(junk));
	close(fd);
}

/* A file of junk where outbox.db should be: moved aside byte for byte, a
 * fresh outbox takes the next sale with a seq above anything the old one
 * could have issued, and the alarm is in the fresh outbox. */
static void garbage_outbox_quarantined(void **state)
{
	fx *f = *state;
	outbox__close(f->ob);
	f->ob = NULL;
	char junk[8192];
	write_garbage(f->db, junk, sizeof(junk));
	int64_t before = platform__wall_ms();
	assert_int_equal(outbox__open(f->store, "pos-01", 0, &f->ob), SCRM_OK);
	const char *q = outbox__quarantined(f->ob);
	assert_non_null(q);
	assert_non_null(strstr(q, "/quarantine/outbox-"));
	long long ms = strtoll(strstr(q, "/quarantine/outbox-") + 19, NULL, 10);
	assert_true(ms >= before && ms <= platform__wall_ms() + 1000);
	size_t len = 0;
	char *moved = read_bytes(q, &len);
	assert_non_null(moved);
	assert_int_equal(len, sizeof(junk));
	assert_memory_equal(moved, junk, sizeof(junk));
	free(moved);
	struct stat sb;
	char *qdir = tu_join(f->store, "quarantine");
	assert_int_equal(stat(qdir, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0700);
	free(qdir);

	int64_t seq = add(f->ob, "purchase", NULL);
	assert_true(seq >= before * 1000);
	assert_true(seq < 9007199254740992LL);
	char detail[480];
	assert_int_equal(alarm_count(f->ob, "outbox_quarantined", detail, sizeof(detail)), 1);
	assert_non_null(strstr(detail, "quarantine/outbox-"));
	assert_non_null(strstr(detail, "0 pending events recovered"));
	/* reopened: nothing more to move, the counter goes on */
	outbox__close(f->ob);
	assert_int_equal(outbox__open(f->store, "pos-01", 0, &f->ob), SCRM_OK);
	assert_null(outbox__quarantined(f->ob));
	assert_int_equal(add(f->ob, "purchase", NULL), seq + 1);
	assert_int_equal(quarantined_files(f, ".db"), 1);
	assert_string_equal(outbox__device_id(f->ob), "pos-01");
}

/* A capture process that does not name its device cannot start a fresh
 * outbox for an unreadable one: a clear error, and nothing moved. */
static void garbage_outbox_without_device(void **state)
{
	fx *f = *state;
	outbox__close(f->ob);
	f->ob = NULL;
	char junk[4096];
	write_garbage(f->db, junk, sizeof(junk));
	assert_refused(outbox__open(f->store, NULL, 0, &f->ob), SCRM_E_CORRUPT, "outbox");
	assert_null(f->ob);
	assert_errmsg_contains(f->db);
	assert_errmsg_contains("device_id");
	assert_errmsg_contains("/quarantine/");
	scrm_store *st = NULL;
	assert_refused(scrm_store_open(f->store, NULL, &st), SCRM_E_CORRUPT, "outbox");
	assert_null(st);
	assert_int_equal(quarantined_files(f, ".db"), 0);
	size_t len = 0;
	char *still = read_bytes(f->db, &len);
	assert_int_equal(len, sizeof(junk));
	assert_memory_equal(still, junk, len);
	free(still);
	/* the daemon (or a POS naming the device) then moves it */
	scrm_store_options so = {.device_id = "pos-01"};
	assert_int_equal(scrm_store_open(f->store, &so, &st), SCRM_OK);
	scrm_store_close(st);
	assert_int_equal(quarantined_files(f, ".db"), 1);
	assert_int_equal(outbox__open(f->store, NULL, 0, &f->ob), SCRM_OK);
}

/* A real outbox with a damaged page that only quick_check finds (the
 * daemon's checked open): quarantined byte for byte, the pending events
 * still readable are carried over, seqs jump above everything. */
static void damaged_outbox_checked_open(void **state)
{
	fx *f = *state;
	char ids[50][37];
	for (int i = 0; i < 50; i++) {
		outbox__row r;
		rowbuf b;
		make_row(&r, &b, i % 2 ? "purchase" : "member_scan");
		assert_int_equal(outbox__append(f->ob, &r, 1, T0), SCRM_OK);
		memcpy(ids[i], b.id, 37);
	}
	const int64_t r[][2] = {{1, 10}};
	int64_t deleted = 0;
	assert_int_equal(outbox__ack(f->ob, r, 1, T0 + 1, &deleted), SCRM_OK);
	assert_int_equal(outbox__setting_set(f->ob, "attribution_window_ms", 60000), SCRM_OK);
	outbox__close(f->ob);
	f->ob = NULL;
	smash_table_page(f->db, "rejected");
	/* an ordinary open does not look at that page */
	assert_int_equal(outbox__open(f->store, "pos-01", 0, &f->ob), SCRM_OK);
	assert_null(outbox__quarantined(f->ob));
	outbox__close(f->ob);
	f->ob = NULL;
	size_t len = 0;
	char *damaged = read_bytes(f->db, &len);
	assert_non_null(damaged);

	int64_t before = platform__wall_ms();
	assert_int_equal(outbox__open_checked(f->store, "pos-01", 0, &f->ob), SCRM_OK);
	const char *q = outbox__quarantined(f->ob);
	assert_non_null(q);
	size_t qlen = 0;
	char *moved = read_bytes(q, &qlen);
	assert_int_equal(qlen, len);
	assert_memory_equal(moved, damaged, len);
	free(moved);
	free(damaged);
	/* the 40 pending events came along, same seq and id */
	assert_int_equal(sql_int(f, "SELECT count(*) FROM outbox"), 40);
	for (int i = 10; i < 50; i++) {
		char sql[120];
		snprintf(sql, sizeof(sql), "SELECT id FROM outbox WHERE seq = %d", i + 1);
		char *id = tu_sql_text(f->db, sql);
		assert_string_equal(id, ids[i]);
		free(id);
	}
	assert_int_equal(sql_int(f, "SELECT v FROM settings WHERE k = 'attribution_window_ms'"), 60000);
	/* so did the clock anchor (make_row: wall T0 + n, mono 1000 + n) */
	char *anchor = tu_sql_text(f->db, "SELECT clock_boot FROM device");
	assert_string_equal(anchor, BOOT);
	free(anchor);
	assert_int_equal(sql_int(f, "SELECT clock_offset_ms FROM device"), T0 - 1000);
	usage_exact(f);
	char detail[480];
	assert_int_equal(alarm_count(f->ob, "outbox_quarantined", detail, sizeof(detail)), 1);
	assert_non_null(strstr(detail, "40 pending events recovered"));
	assert_non_null(strstr(detail, "quick_check"));
	int64_t seq = add(f->ob, "purchase", NULL);
	assert_true(seq > 50);
	assert_true(seq >= before * 1000);
}

/* A capture process still holding the old file when the daemon moves it
 * follows to the fresh one at its next append: nothing lands in the
 * quarantined file. */
static void open_handle_follows_the_fresh_outbox(void **state)
{
	fx *f = *state;
	for (int i = 0; i < 5; i++)
		add(f->ob, "member_scan", NULL);
	sql_exec(f->db, "PRAGMA wal_checkpoint(TRUNCATE)");
	smash_table_page(f->db, "rejected");
	outbox *daemon = NULL;
	assert_int_equal(outbox__open_checked(f->store, "pos-01", 0, &daemon), SCRM_OK);
	assert_non_null(outbox__quarantined(daemon));
	char q[4200];
	snprintf(q, sizeof(q), "%s", outbox__quarantined(daemon));
	int64_t next = health(daemon).last_seq + 1;
	assert_true(next > 1000000);

	int64_t seq = add(f->ob, "purchase", NULL); /* the old handle */
	assert_int_equal(seq, next);
	assert_int_equal(health(daemon).pending, 6);
	assert_int_equal(health(f->ob).pending, 6);
	assert_int_equal(tu_sql_int(q, "SELECT count(*) FROM outbox WHERE kind = 'purchase'"), 0);
	outbox__close(daemon);
}

/* Four processes open the same damaged store at once: one moves it, all
 * capture into the same fresh outbox. */
static void concurrent_opens_quarantine_once(void **state)
{
	fx *f = *state;
	outbox__close(f->ob);
	f->ob = NULL;
	char junk[8192];
	write_garbage(f->db, junk, sizeof(junk));
	pid_t pids[4];
	for (int i = 0; i < 4; i++) {
		pids[i] = fork();
		assert_true(pids[i] >= 0);
		if (pids[i] == 0) {
			outbox *ob = NULL;
			int rc = outbox__open(f->store, "pos-01", 10000, &ob);
			if (rc == SCRM_OK) {
				outbox__row r;
				rowbuf b;
				/* each child its own sale (a repeated order_id would be
				 * one sale, retried) */
				for (int k = 0; k <= i; k++)
					make_row(&r, &b, "purchase");
				rc = outbox__append(ob, &r, 1, T0);
			}
			if (rc != SCRM_OK)
				fprintf(stderr, "child: %s\n", scrm_errmsg());
			outbox__close(ob);
			_exit(rc == SCRM_OK ? 0 : 1);
		}
	}
	for (int i = 0; i < 4; i++) {
		int status = 0;
		assert_int_equal(waitpid(pids[i], &status, 0), pids[i]);
		assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	}
	assert_int_equal(quarantined_files(f, ".db"), 1);
	assert_int_equal(outbox__open(f->store, "pos-01", 0, &f->ob), SCRM_OK);
	assert_int_equal(alarm_count(f->ob, "outbox_quarantined", NULL, 0), 1);
	assert_int_equal(sql_int(f, "SELECT count(DISTINCT seq) FROM outbox"), 4);
	assert_int_equal(sql_int(f, "SELECT max(seq) - min(seq) FROM outbox"), 3);
}

/* A crash in the middle of a quarantine: before the damaged file was linked
 * into quarantine/, the half-made fresh file is dropped and the work starts
 * over; after, the swap is finished. */
static void interrupted_quarantine_is_finished(void **state)
{
	fx *f = *state;
	outbox__close(f->ob);
	f->ob = NULL;
	char junk[4096], tmp[4300], other_junk[2048];
	snprintf(tmp, sizeof(tmp), "%s.fresh", f->db);
	/* 1: not linked yet */
	write_garbage(f->db, junk, sizeof(junk));
	write_garbage(tmp, other_junk, sizeof(other_junk));
	assert_int_equal(outbox__open(f->store, "pos-01", 0, &f->ob), SCRM_OK);
	assert_false(exists(tmp));
	assert_int_equal(quarantined_files(f, ".db"), 1);
	outbox__close(f->ob);
	f->ob = NULL;

	/* 2: linked, fresh file complete: it goes in place, the -wal follows */
	char *other = tu_join(f->dir, "other");
	outbox *ob = NULL;
	assert_int_equal(outbox__open(other, "pos-01", 0, &ob), SCRM_OK);
	outbox__close(ob);
	char *other_db = tu_join(other, OUTBOX_FILE);
	sql_exec(other_db, "UPDATE device SET next_seq = 777000");
	size_t len = 0;
	char *fresh = read_bytes(other_db, &len);
	tu_write_file(tmp, fresh, len);
	free(fresh);
	write_garbage(f->db, junk, sizeof(junk));
	char wal[4300], qdb[4300], qwal[4400];
	snprintf(wal, sizeof(wal), "%s-wal", f->db);
	write_garbage(wal, other_junk, sizeof(other_junk));
	snprintf(qdb, sizeof(qdb), "%s/quarantine/outbox-1.db", f->store);
	assert_int_equal(link(f->db, qdb), 0);
	assert_int_equal(outbox__open(f->store, "pos-01", 0, &f->ob), SCRM_OK);
	assert_false(exists(tmp));
	snprintf(qwal, sizeof(qwal), "%s-wal", qdb);
	assert_true(exists(qwal));
	assert_int_equal(add(f->ob, "purchase", NULL), 777000);
	assert_int_equal(quarantined_files(f, ".db"), 2);
	free(other_db);
	free(other);
}

/* ---- quarantine: cache ----------------------------------------------- */

static void cache_quarantined(void **state)
{
	fx *f = *state;
	char *cdb = tu_join(f->store, "private/" CACHE_FILE);
	char junk[8192];
	cache *c = NULL;
	cache__options daemon = {.create = 1, .check = 1};
	/* made once (and its data key), then found damaged */
	assert_int_equal(cache__open(f->store, &daemon, &c), SCRM_OK);
	assert_null(cache__quarantined(c));
	cache__close(c);
	c = NULL;
	write_garbage(cdb, junk, sizeof(junk));

	/* a reader (library) does not move it: a clear error */
	cache__options reader = {0};
	assert_refused(cache__open(f->store, &reader, &c), SCRM_E_CORRUPT, "cache");
	assert_errmsg_contains("/quarantine/");
	assert_errmsg_contains("scrm-agent");
	assert_null(c);
	scrm_cache *pub = NULL;
	assert_refused(scrm_cache_open(f->store, NULL, &pub), SCRM_E_CORRUPT, "cache");
	assert_int_equal(quarantined_files(f, ".db"), 0);

	/* the daemon moves it and starts empty, wanting every stream */
	assert_int_equal(cache__open(f->store, &daemon, &c), SCRM_OK);
	const char *q = cache__quarantined(c);
	assert_non_null(q);
	assert_non_null(strstr(q, "/private/quarantine/cache-"));
	assert_non_null(strstr(cache__quarantine_detail(c), "fetched again"));
	size_t len = 0;
	char *moved = read_bytes(q, &len);
	assert_int_equal(len, sizeof(junk));
	assert_memory_equal(moved, junk, len);
	free(moved);
	sbuf st;
	sbuf__init(&st);
	assert_int_equal(cache__status(c, &st), SCRM_OK);
	cJSON *o = cJSON_Parse(st.p);
	const cJSON *it;
	int n = 0;
	cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(o, "streams"))
	{
		assert_int_equal((int)cJSON_GetObjectItemCaseSensitive(it, "cursor")->valuedouble, 0);
		n++;
	}
	assert_int_equal(n, ST_COUNT);
	cJSON_Delete(o);
	int stream = -1;
	assert_int_equal(cache__next_request(c, 1000000, &st, &stream), 1);
	assert_int_equal(stream, ST_MEMBERS);
	assert_non_null(strstr(st.p, "\"bootstrap\""));
	sbuf__free(&st);
	cache__close(c);
	c = NULL;

	/* damage only quick_check sees: the daemon's checked open moves it */
	smash_table_page(cdb, "scripts");
	assert_int_equal(cache__open(f->store, &daemon, &c), SCRM_OK);
	assert_non_null(cache__quarantined(c));
	assert_int_equal(quarantined_files(f, ".db"), 2);
	cache__close(c);
	free(cdb);
}

int main(int argc, char **argv)
{
	tu_select(argc, argv);
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(limits_default_then_daemon),
		T(eviction_order_and_counters),
		T(eviction_classes),
		T(paid_reserve_then_refused),
		T(group_decides_each_row),
		T(usage_follows_body_rewrites),
		T(alarms_raise_and_clear),
		T(group_commit_under_cap),
		T(garbage_outbox_quarantined),
		T(garbage_outbox_without_device),
		T(damaged_outbox_checked_open),
		T(open_handle_follows_the_fresh_outbox),
		T(concurrent_opens_quarantine_once),
		T(interrupted_quarantine_is_finished),
		T(cache_quarantined),
	};
	return cmocka_run_group_tests_name("bounded", tests, NULL, NULL);
}
