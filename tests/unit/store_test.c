/* SPDX-License-Identifier: Apache-2.0 */
/*
 * store_test: the public capture API (include/scrm/scrm.h, agent/lib/capture/capture.c)
 * end to end, the way a POS uses it: a store in a temp directory, real
 * SQLite, real fsync. Checks receipts, that a refused call writes nothing,
 * group commit under 8 concurrent threads, two processes capturing into the
 * same store, and a capture process killed with SIGKILL mid-loop.
 *
 * Links libscrm's static archive exactly as a POS would, and reads the
 * database file with its own SQLite connection to check what really landed.
 * The only thing replaced is the clock (platform__clock_override), in the
 * tests about clock trust. Forked children and worker threads never call
 * cmocka: they report through pipes and arrays, the main thread asserts.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <scrm/scrm.h>

#include "platform.h"
#include "testutil.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct fx {
	char *dir;   /* temp dir */
	char *store; /* <dir>/store */
	char *db;    /* <dir>/store/outbox.db */
	scrm_store *s;
} fx;

static int setup(void **state)
{
	fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	tu_store_paths("store", "outbox.db", &f->dir, &f->store, &f->db);
	scrm_store_options o = {.device_id = "pos-01", .busy_timeout_ms = 0};
	assert_int_equal(scrm_store_open(f->store, &o, &f->s), SCRM_OK);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fx *f = *state;
	scrm_store_close(f->s);
	platform__clock_override(NULL, NULL, NULL);
	tu_store_paths_free(f->dir, f->store, f->db);
	free(f);
	return 0;
}

/* ---- helpers (no cmocka: used in threads and children too) ----------- */

static int record_purchase(scrm_store *s, const char *order_id, scrm_receipt *r)
{
	scrm_line line = {.sku = "85123A", .qty = 6, .unit_price = 255, .discount = 0};
	scrm_purchase p = {.order_id = order_id, .lines = &line, .n_lines = 1, .total = 1530,
			   .currency = "GBP", .payment = "card"};
	return scrm_record_purchase(s, &p, r);
}

static int record_scan_json(scrm_store *s, const char *member_id, scrm_receipt *r)
{
	char json[160];
	int n = snprintf(json, sizeof(json), "{\"kind\":\"member_scan\",\"member_id\":\"%s\",\"method\":\"qr\"}",
			 member_id);
	return scrm_record_json(s, json, (size_t)n, r);
}

static int uuid_v7_ok(const char *id)
{
	if (strlen(id) != 36)
		return 0;
	for (int i = 0; i < 36; i++) {
		char c = id[i];
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (c != '-')
				return 0;
		} else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
			return 0;
		}
	}
	return id[14] == '7' && strchr("89ab", id[19]) != NULL;
}

/* The 48-bit Unix-ms timestamp at the front of a UUIDv7. */
static int64_t uuid_ms(const char *id)
{
	char hex[13];
	memcpy(hex, id, 8);
	memcpy(hex + 8, id + 9, 4);
	hex[12] = '\0';
	return (int64_t)strtoll(hex, NULL, 16);
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static scrm_outbox_stats stats_of(scrm_store *s)
{
	scrm_outbox_stats st;
	assert_int_equal(scrm_outbox_get_stats(s, &st), SCRM_OK);
	return st;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

/* Assert that sorted seqs[0..n) are exactly 1..n. */
static void assert_exactly_1_to_n(int64_t *seqs, size_t n)
{
	qsort(seqs, n, sizeof(*seqs), cmp_i64);
	for (size_t i = 0; i < n; i++) {
		if (seqs[i] != (int64_t)i + 1) {
			print_error("seq #%zu is %lld, want %zu (duplicate or gap)\n", i, (long long)seqs[i], i + 1);
			fail();
		}
	}
}

/* The outbox rows, indexed by seq: id and a body field. */
typedef struct dbrow {
	char id[37];
	char key[72];
} dbrow;

/* Load rows 1..n (all must exist and nothing else). `field` is a JSON path
 * into the body, e.g. "$.order_id". */
static dbrow *load_rows(const char *db_path, int64_t n, const char *field)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *q = NULL;
	dbrow *rows = calloc((size_t)n + 1, sizeof(*rows));
	assert_non_null(rows);
	assert_int_equal(sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, "SELECT seq, id, coalesce(json_extract(body, ?1), '') FROM outbox",
					    -1, &q, NULL),
			 SQLITE_OK);
	sqlite3_bind_text(q, 1, field, -1, SQLITE_STATIC);
	int64_t count = 0;
	while (sqlite3_step(q) == SQLITE_ROW) {
		int64_t seq = sqlite3_column_int64(q, 0);
		if (seq < 1 || seq > n) {
			print_error("unexpected seq %lld in the outbox (want 1..%lld)\n", (long long)seq, (long long)n);
			fail();
		}
		snprintf(rows[seq].id, sizeof(rows[seq].id), "%s", (const char *)sqlite3_column_text(q, 1));
		snprintf(rows[seq].key, sizeof(rows[seq].key), "%s", (const char *)sqlite3_column_text(q, 2));
		count++;
	}
	sqlite3_finalize(q);
	sqlite3_close(db);
	assert_int_equal(count, n);
	return rows;
}

static void assert_integrity_ok(const char *db_path)
{
	char *check = tu_sql_text(db_path, "PRAGMA integrity_check");
	assert_non_null(check);
	assert_string_equal(check, "ok");
	free(check);
}

/* ---- receipts -------------------------------------------------------- */

static void record_each_kind_and_get_receipts(void **state)
{
	fx *f = *state;
	scrm_receipt r[4];
	int64_t before = now_ms();

	assert_int_equal(record_purchase(f->s, "536365", &r[0]), SCRM_OK);

	scrm_line line = {.sku = "85123A", .qty = 1, .unit_price = 255, .discount = 0};
	scrm_return ret = {.return_id = "R-77", .order_id = "536365", .lines = &line, .n_lines = 1, .total = 255,
			   .currency = "GBP", .refund_method = "card", .reason = "damaged"};
	assert_int_equal(scrm_record_return(f->s, &ret, &r[1]), SCRM_OK);

	scrm_member_scan scan = {.member_id = "17850", .method = "qr", .guide_id = "g-07"};
	assert_int_equal(scrm_record_member_scan(f->s, &scan, &r[2]), SCRM_OK);

	assert_int_equal(record_scan_json(f->s, "17851", &r[3]), SCRM_OK);
	int64_t after = now_ms();

	static const char *const kinds[] = {"purchase", "return", "member_scan", "member_scan"};
	for (int i = 0; i < 4; i++) {
		assert_int_equal(r[i].seq, i + 1);
		if (!uuid_v7_ok(r[i].event_id)) {
			print_error("receipt id \"%s\" is not a canonical UUIDv7\n", r[i].event_id);
			fail();
		}
		assert_in_range(r[i].wall_ms, before, after);
		assert_int_equal(uuid_ms(r[i].event_id), r[i].wall_ms);
		for (int j = 0; j < i; j++)
			assert_string_not_equal(r[i].event_id, r[j].event_id);

		char sql[128];
		snprintf(sql, sizeof(sql), "SELECT id FROM outbox WHERE seq = %d", i + 1);
		char *id = tu_sql_text(f->db, sql);
		assert_string_equal(id, r[i].event_id);
		free(id);
		snprintf(sql, sizeof(sql), "SELECT kind FROM outbox WHERE seq = %d", i + 1);
		char *kind = tu_sql_text(f->db, sql);
		assert_string_equal(kind, kinds[i]);
		free(kind);
	}
	char *member = tu_sql_text(f->db, "SELECT json_extract(body, '$.member_id') FROM outbox WHERE seq = 4");
	assert_string_equal(member, "17851");
	free(member);

	scrm_outbox_stats st = stats_of(f->s);
	assert_int_equal(st.pending, 4);
	assert_int_equal(st.last_seq, 4);
	/* A receipt is optional. */
	assert_int_equal(record_purchase(f->s, "536366", NULL), SCRM_OK);
	assert_int_equal(stats_of(f->s).last_seq, 5);
	assert_string_equal(scrm_store_device_id(f->s), "pos-01");
}

static void refused_calls_write_nothing(void **state)
{
	fx *f = *state;
	assert_int_equal(record_purchase(f->s, "first", NULL), SCRM_OK);
	scrm_outbox_stats before = stats_of(f->s);
	scrm_receipt r;

	scrm_line bad_qty = {.sku = "A", .qty = 0, .unit_price = 100, .discount = 0};
	scrm_purchase p = {.order_id = "o", .lines = &bad_qty, .n_lines = 1, .total = 0,
			   .currency = "GBP", .payment = "card"};
	assert_refused(scrm_record_purchase(f->s, &p, &r), SCRM_E_INVALID, "lines[0].qty");

	scrm_line ok = {.sku = "A", .qty = 1, .unit_price = 100, .discount = 0};
	p.lines = &ok;
	p.total = 99;
	assert_refused(scrm_record_purchase(f->s, &p, &r), SCRM_E_INVALID, "total");

	scrm_return ret = {.return_id = "R", .order_id = "o", .lines = &ok, .n_lines = 1, .total = 100,
			   .currency = "GBP", .refund_method = "iou"};
	assert_refused(scrm_record_return(f->s, &ret, &r), SCRM_E_INVALID, "refund_method");

	scrm_member_scan scan = {.member_id = "17850", .method = "telepathy"};
	assert_refused(scrm_record_member_scan(f->s, &scan, &r), SCRM_E_INVALID, "method");

	static const char malformed[] = "{\"kind\":\"member_scan\",\n\"member_id\":}";
	assert_refused(scrm_record_json(f->s, malformed, sizeof(malformed) - 1, &r), SCRM_E_INVALID, "json");
	assert_errmsg_contains("line 2");
	static const char unknown[] = "{\"kind\":\"refund\"}";
	assert_refused(scrm_record_json(f->s, unknown, sizeof(unknown) - 1, &r), SCRM_E_INVALID, "kind");
	static const char extra[] = "{\"kind\":\"member_scan\",\"member_id\":\"1\",\"method\":\"qr\",\"mood\":\"ok\"}";
	assert_refused(scrm_record_json(f->s, extra, sizeof(extra) - 1, &r), SCRM_E_INVALID, "mood");

	char *huge = malloc((size_t)2 << 20);
	assert_non_null(huge);
	memset(huge, ' ', (size_t)2 << 20);
	assert_refused(scrm_record_json(f->s, huge, (size_t)2 << 20, &r), SCRM_E_TOO_BIG, "json");
	free(huge);

	scrm_outbox_stats after = stats_of(f->s);
	assert_int_equal(after.pending, before.pending);
	assert_int_equal(after.last_seq, before.last_seq);
	assert_int_equal(after.pending_bytes, before.pending_bytes);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM outbox"), 1);
	/* No seq was burnt by the refusals. */
	assert_int_equal(record_purchase(f->s, "second", &r), SCRM_OK);
	assert_int_equal(r.seq, 2);
}

struct errmsg_probe {
	scrm_store *s;
	int rc;
	char msg[256];
};

static void *fail_on_other_thread(void *arg)
{
	struct errmsg_probe *p = arg;
	scrm_line bad = {.sku = "A", .qty = -1, .unit_price = 1, .discount = 0};
	scrm_purchase pu = {.order_id = "o", .lines = &bad, .n_lines = 1, .total = 0,
			    .currency = "GBP", .payment = "card"};
	p->rc = scrm_record_purchase(p->s, &pu, NULL);
	snprintf(p->msg, sizeof(p->msg), "%s", scrm_errmsg());
	return NULL;
}

static void errmsg_is_per_thread(void **state)
{
	fx *f = *state;
	/* Two cashiers' threads fail at once: each reads its own detail. */
	scrm_member_scan scan = {.member_id = "17850", .method = "nfc"};
	assert_refused(scrm_record_member_scan(f->s, &scan, NULL), SCRM_E_INVALID, "method");
	struct errmsg_probe probe = {.s = f->s};
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, fail_on_other_thread, &probe), 0);
	pthread_join(t, NULL);
	assert_int_equal(probe.rc, SCRM_E_INVALID);
	assert_int_equal(strncmp(probe.msg, "lines[0].qty:", 13), 0);
	assert_int_equal(strncmp(scrm_errmsg(), "method:", 7), 0);
}

static void null_arguments_refused(void **state)
{
	fx *f = *state;
	scrm_store *s = NULL;
	assert_refused(record_purchase(NULL, "o", NULL), SCRM_E_INVALID, "store");
	assert_refused(scrm_record_json(NULL, "{}", 2, NULL), SCRM_E_INVALID, "store");
	assert_refused(scrm_record_json(f->s, NULL, 0, NULL), SCRM_E_INVALID, "json");
	assert_refused(scrm_record_purchase(f->s, NULL, NULL), SCRM_E_INVALID, "purchase");
	assert_refused(scrm_record_return(f->s, NULL, NULL), SCRM_E_INVALID, "return");
	assert_refused(scrm_record_member_scan(f->s, NULL, NULL), SCRM_E_INVALID, "member_scan");
	assert_int_equal(scrm_outbox_get_stats(NULL, NULL), SCRM_E_INVALID);
	assert_int_equal(scrm_outbox_get_stats(f->s, NULL), SCRM_E_INVALID);
	assert_refused(scrm_store_open(f->store, NULL, NULL), SCRM_E_INVALID, "out");
	scrm_store_close(NULL);
	assert_null(s);
	assert_int_equal(stats_of(f->s).last_seq, 0);
}

static void open_refusals(void **state)
{
	fx *f = *state;
	scrm_store *s = NULL;
	char *missing = tu_join(f->dir, "no/such/store");
	assert_refused(scrm_store_open(missing, NULL, &s), SCRM_E_NOT_FOUND, "dir");
	assert_null(s);
	assert_int_equal(access(missing, F_OK), -1);
	free(missing);

	scrm_store_options other = {.device_id = "pos-02"};
	assert_refused(scrm_store_open(f->store, &other, &s), SCRM_E_MISMATCH, "device_id");
	assert_null(s);

	scrm_store_options bad = {.device_id = "pos 01"};
	char *fresh = tu_join(f->dir, "fresh");
	assert_refused(scrm_store_open(fresh, &bad, &s), SCRM_E_INVALID, "device_id");
	/* A word of the topic tree is not a device id (docs/protocol.md). */
	scrm_store_options word = {.device_id = "down"};
	assert_refused(scrm_store_open(fresh, &word, &s), SCRM_E_INVALID, "device_id");
	assert_errmsg_contains("reserved");
	assert_null(s);
	free(fresh);

	/* Opening the existing store without options works. */
	assert_int_equal(scrm_store_open(f->store, NULL, &s), SCRM_OK);
	assert_string_equal(scrm_store_device_id(s), "pos-01");
	scrm_store_close(s);
}

static void strerror_and_version(void **state)
{
	(void)state;
	for (int code = 0; code >= SCRM_E_INTERNAL; code--) {
		const char *t = scrm_strerror(code);
		assert_non_null(t);
		assert_string_not_equal(t, "unknown error");
	}
	assert_string_equal(scrm_strerror(SCRM_E_DISK_FULL), "disk full");
	assert_string_equal(scrm_strerror(12345), "unknown error");
	int a = -1, b = -1, c = -1;
	assert_int_equal(sscanf(scrm_version(), "%d.%d.%d", &a, &b, &c), 3);
	assert_true(a >= 0 && b >= 0 && c >= 0);
}

/* ---- clock ----------------------------------------------------------- */

static void fake_clock_reaches_receipt_and_clock_flag(void **state)
{
	fx *f = *state;
	tu_clock clk = {.wall_ms = 86400000, .mono_ms = 4242}; /* 2 Jan 1970: an RTC that lost power */
	platform__clock_override(tu_clock_wall, tu_clock_mono, &clk);
	scrm_receipt r;
	assert_int_equal(record_purchase(f->s, "o1", &r), SCRM_OK);
	assert_int_equal(r.wall_ms, 86400000);
	assert_int_equal(uuid_ms(r.event_id), 86400000);
	assert_int_equal(tu_sql_int(f->db, "SELECT clock_ok FROM outbox WHERE seq = 1"), 0);
	assert_int_equal(tu_sql_int(f->db, "SELECT mono_ms FROM outbox WHERE seq = 1"), 4242);

	/* A good clock (after the build date). */
	clk.wall_ms = now_ms() + 3600000;
	assert_int_equal(record_purchase(f->s, "o2", &r), SCRM_OK);
	assert_int_equal(tu_sql_int(f->db, "SELECT clock_ok FROM outbox WHERE seq = 2"), 1);
	/* Then a step back of two minutes. */
	clk.wall_ms -= 120000;
	assert_int_equal(record_purchase(f->s, "o3", &r), SCRM_OK);
	assert_int_equal(tu_sql_int(f->db, "SELECT clock_ok FROM outbox WHERE seq = 3"), 0);
	platform__clock_override(NULL, NULL, NULL);
}

/* ---- group commit ---------------------------------------------------- */

#define THREADS 8
#define PER_THREAD 500

struct capturer {
	scrm_store *s;
	int index;
	int failures;
	char first_error[256];
	scrm_receipt receipts[PER_THREAD];
};

static void *capturer_main(void *arg)
{
	struct capturer *c = arg;
	for (int i = 0; i < PER_THREAD; i++) {
		char key[32];
		int rc;
		snprintf(key, sizeof(key), "t%d-%d", c->index, i);
		/* Mix the doors: typed purchases and JSON scans. */
		if (i % 2 == 0)
			rc = record_purchase(c->s, key, &c->receipts[i]);
		else
			rc = record_scan_json(c->s, key, &c->receipts[i]);
		if (rc != SCRM_OK) {
			if (!c->failures++)
				snprintf(c->first_error, sizeof(c->first_error), "%s", scrm_errmsg());
			c->receipts[i].seq = 0;
		}
	}
	return NULL;
}

struct watcher {
	scrm_store *s;
	volatile int stop;
	int problems, polls;
	int64_t last;
};

static void *watcher_main(void *arg)
{
	struct watcher *w = arg;
	/* scrmctl-style stats while captures are committing: must neither
	 * deadlock nor go backwards. */
	while (!w->stop) {
		scrm_outbox_stats st;
		if (scrm_outbox_get_stats(w->s, &st) != SCRM_OK || st.last_seq < w->last || st.pending != st.last_seq)
			w->problems++;
		w->last = st.last_seq;
		w->polls++;
		usleep(2000);
	}
	return NULL;
}

static void group_commit_8_threads_one_handle(void **state)
{
	fx *f = *state;
	static struct capturer cap[THREADS];
	struct watcher w = {.s = f->s};
	pthread_t t[THREADS], wt;
	assert_int_equal(pthread_create(&wt, NULL, watcher_main, &w), 0);
	for (int i = 0; i < THREADS; i++) {
		memset(&cap[i], 0, sizeof(cap[i]));
		cap[i].s = f->s;
		cap[i].index = i;
		assert_int_equal(pthread_create(&t[i], NULL, capturer_main, &cap[i]), 0);
	}
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	w.stop = 1;
	pthread_join(wt, NULL);

	for (int i = 0; i < THREADS; i++) {
		if (cap[i].failures) {
			print_error("thread %d: %d captures failed, first: %s\n", i, cap[i].failures, cap[i].first_error);
			fail();
		}
	}
	assert_int_equal(w.problems, 0);
	assert_true(w.polls > 0);

	const int64_t n = THREADS * PER_THREAD;
	int64_t *seqs = malloc((size_t)n * sizeof(*seqs));
	assert_non_null(seqs);
	for (int i = 0; i < THREADS; i++)
		for (int j = 0; j < PER_THREAD; j++)
			seqs[i * PER_THREAD + j] = cap[i].receipts[j].seq;
	assert_exactly_1_to_n(seqs, (size_t)n);
	free(seqs);

	/* Every receipt names the row that holds that very event. */
	dbrow *rows = load_rows(f->db, n, "$.order_id");
	dbrow *members = load_rows(f->db, n, "$.member_id");
	for (int i = 0; i < THREADS; i++) {
		for (int j = 0; j < PER_THREAD; j++) {
			const scrm_receipt *r = &cap[i].receipts[j];
			char key[32];
			snprintf(key, sizeof(key), "t%d-%d", i, j);
			assert_string_equal(rows[r->seq].id, r->event_id);
			assert_string_equal(j % 2 == 0 ? rows[r->seq].key : members[r->seq].key, key);
		}
	}
	free(rows);
	free(members);
	assert_int_equal(stats_of(f->s).last_seq, n);
	assert_integrity_ok(f->db);
}

/* ---- processes ------------------------------------------------------- */

/* What a child reports per captured event; 48 bytes, written atomically. */
struct report {
	int64_t seq;
	char id[40];
};

/* Capture `n` events (forever if n < 0) into the store at `dir`,
 * reporting each receipt on fd `out`. Exit status 0, or 1 + error text. */
static int capture_child(const char *dir, int n, int out, const char *tag)
{
	scrm_store *s = NULL;
	if (scrm_store_open(dir, NULL, &s) != SCRM_OK) {
		dprintf(2, "child %s: open: %s\n", tag, scrm_errmsg());
		return 1;
	}
	for (int i = 0; n < 0 || i < n; i++) {
		char key[48];
		scrm_receipt r;
		snprintf(key, sizeof(key), "%s-%d", tag, i);
		if (record_purchase(s, key, &r) != SCRM_OK) {
			dprintf(2, "child %s: capture %d: %s\n", tag, i, scrm_errmsg());
			return 1;
		}
		struct report rep;
		memset(&rep, 0, sizeof(rep));
		rep.seq = r.seq;
		memcpy(rep.id, r.event_id, sizeof(r.event_id));
		if (write(out, &rep, sizeof(rep)) != (ssize_t)sizeof(rep))
			return 1;
	}
	scrm_store_close(s);
	return 0;
}

static pid_t spawn_capture(const char *dir, int n, const char *tag, int *rfd)
{
	pid_t pid = tu_fork_piped(rfd);
	if (pid == 0)
		_exit(capture_child(dir, n, *rfd, tag));
	return pid;
}

/* Read whole reports until EOF or `max` of them; returns how many. */
static size_t read_reports(int fd, struct report *reps, size_t max)
{
	size_t n = 0, partial = 0;
	char *buf = (char *)reps;
	while (n < max) {
		ssize_t got = read(fd, buf + n * sizeof(*reps) + partial, sizeof(*reps) - partial);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		partial += (size_t)got;
		if (partial == sizeof(*reps)) {
			n++;
			partial = 0;
		}
	}
	return n;
}

static void two_processes_capture_concurrently(void **state)
{
	fx *f = *state;
	/* Each process gets its own handle; none is carried across fork. */
	scrm_store_close(f->s);
	f->s = NULL;
	enum { PER_CHILD = 300 };
	static struct report reps[2][PER_CHILD];
	int fd[2];
	pid_t pid[2];
	pid[0] = spawn_capture(f->store, PER_CHILD, "a", &fd[0]);
	pid[1] = spawn_capture(f->store, PER_CHILD, "b", &fd[1]);
	size_t got[2];
	for (int i = 0; i < 2; i++) {
		got[i] = read_reports(fd[i], reps[i], PER_CHILD);
		close(fd[i]);
	}
	for (int i = 0; i < 2; i++) {
		int status = 0;
		assert_int_equal(waitpid(pid[i], &status, 0), pid[i]);
		assert_true(WIFEXITED(status));
		assert_int_equal(WEXITSTATUS(status), 0);
		assert_int_equal(got[i], PER_CHILD);
	}
	int64_t seqs[2 * PER_CHILD];
	for (int i = 0; i < 2; i++)
		for (int j = 0; j < PER_CHILD; j++)
			seqs[i * PER_CHILD + j] = reps[i][j].seq;
	assert_exactly_1_to_n(seqs, 2 * PER_CHILD);
	dbrow *rows = load_rows(f->db, 2 * PER_CHILD, "$.order_id");
	for (int i = 0; i < 2; i++) {
		for (int j = 0; j < PER_CHILD; j++) {
			char key[48];
			snprintf(key, sizeof(key), "%s-%d", i ? "b" : "a", j);
			assert_string_equal(rows[reps[i][j].seq].id, reps[i][j].id);
			assert_string_equal(rows[reps[i][j].seq].key, key);
		}
	}
	free(rows);
	assert_integrity_ok(f->db);
}

static void sigkill_mid_capture_loses_nothing_reported(void **state)
{
	fx *f = *state;
	scrm_store_close(f->s);
	f->s = NULL;
	/* Kill the capturing process at three different moments; each round
	 * continues the same store. */
	static const size_t kill_after[] = {40, 150, 90};
	static struct report reps[4096];
	int64_t total = 0;
	for (size_t round = 0; round < sizeof(kill_after) / sizeof(kill_after[0]); round++) {
		char tag[16];
		snprintf(tag, sizeof(tag), "k%zu", round);
		int fd;
		pid_t pid = spawn_capture(f->store, -1, tag, &fd);
		size_t n = read_reports(fd, reps, kill_after[round]);
		assert_int_equal(n, kill_after[round]);
		/* The child is somewhere inside its next capture. */
		assert_int_equal(kill(pid, SIGKILL), 0);
		int status = 0;
		assert_int_equal(waitpid(pid, &status, 0), pid);
		assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
		n += read_reports(fd, reps + n, sizeof(reps) / sizeof(reps[0]) - n);
		close(fd);

		/* The store opens fine, is intact, and holds every reported event
		 * at its reported seq; seqs stay gap-free (the one capture that
		 * was cut short is either wholly in or wholly out). */
		scrm_store *s = NULL;
		assert_int_equal(scrm_store_open(f->store, NULL, &s), SCRM_OK);
		scrm_outbox_stats st = stats_of(s);
		scrm_store_close(s);
		assert_integrity_ok(f->db);
		assert_int_equal(st.pending, st.last_seq);
		int64_t max_reported = reps[n - 1].seq;
		assert_int_equal(max_reported, total + (int64_t)n);
		assert_in_range(st.last_seq, max_reported, max_reported + 1);
		dbrow *rows = load_rows(f->db, st.last_seq, "$.order_id");
		for (size_t i = 0; i < n; i++) {
			char key[48];
			snprintf(key, sizeof(key), "%s-%zu", tag, i);
			assert_string_equal(rows[reps[i].seq].id, reps[i].id);
			assert_string_equal(rows[reps[i].seq].key, key);
		}
		free(rows);
		total = st.last_seq;
	}
	/* And capture carries on after the crashes. */
	scrm_receipt r;
	assert_int_equal(scrm_store_open(f->store, NULL, &f->s), SCRM_OK);
	assert_int_equal(record_purchase(f->s, "after", &r), SCRM_OK);
	assert_int_equal(r.seq, total + 1);
}

/*
 * Regression test (fixed bug in platform/random.c): the CTR-DRBG state is process-global
 * and never reseeded after fork(), so a parent and a child (a pre-forking
 * POS server, a daemon that forks workers) draw the same "random" bytes.
 * Two sales captured in the same millisecond by the two processes then get
 * the SAME event id — and even in different milliseconds the 74 "random"
 * bits repeat. Expected: distinct ids (reseed on fork: pthread_atfork or a
 * getpid() check, or getrandom() per call). This test fails until fixed.
 */
static void event_ids_unique_across_fork(void **state)
{
	fx *f = *state;
	/* The parent has captured before forking, so its generator is seeded. */
	assert_int_equal(record_purchase(f->s, "warm-up", NULL), SCRM_OK);
	scrm_store_close(f->s);
	f->s = NULL;
	tu_clock clk = {.wall_ms = now_ms(), .mono_ms = 1};
	platform__clock_override(tu_clock_wall, tu_clock_mono, &clk); /* same ms for both */

	enum { N = 10 };
	int fd;
	pid_t pid = spawn_capture(f->store, N, "child", &fd);
	struct report child[N];
	size_t got = read_reports(fd, child, N);
	close(fd);
	int status = 0;
	waitpid(pid, &status, 0);
	assert_int_equal(got, N);

	assert_int_equal(scrm_store_open(f->store, NULL, &f->s), SCRM_OK);
	int same = 0;
	for (int i = 0; i < N; i++) {
		scrm_receipt r;
		assert_int_equal(record_purchase(f->s, "parent", &r), SCRM_OK);
		for (int j = 0; j < N; j++)
			if (strcmp(r.event_id, child[j].id) == 0)
				same++;
	}
	platform__clock_override(NULL, NULL, NULL);
	if (same) {
		print_error("regression: %d of %d parent event ids equal a child's (DRBG state cloned by fork)\n", same, N);
		fail();
	}
}

/* Issue 11, hole 9: a POS that times out or crashes after the commit and
 * retries must not record the sale twice. Fails on the main the issue
 * started from (seq 1 and 2, two sales "A-1"). */
static void retried_sale_returns_the_first_receipt(void **state)
{
	fx *f = *state;
	scrm_receipt r1, r2, r3;
	assert_int_equal(record_purchase(f->s, "A-1", &r1), SCRM_OK);
	/* the same sale again: same handle, then a new process's handle */
	assert_int_equal(record_purchase(f->s, "A-1", &r2), SCRM_OK);
	assert_string_equal(r2.event_id, r1.event_id);
	assert_int_equal(r2.seq, r1.seq);
	assert_int_equal(r2.wall_ms, r1.wall_ms);
	scrm_store_close(f->s);
	assert_int_equal(scrm_store_open(f->store, NULL, &f->s), SCRM_OK);
	static const char json[] = "{\"kind\":\"purchase\",\"order_id\":\"A-1\",\"lines\":[{\"sku\":\"85123A\",\"qty\":6,"
				   "\"unit_price\":255}],\"total\":1530,\"currency\":\"GBP\",\"payment\":\"card\"}";
	assert_int_equal(scrm_record_json(f->s, json, strlen(json), &r3), SCRM_OK);
	assert_string_equal(r3.event_id, r1.event_id);
	assert_int_equal(r3.seq, 1);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM outbox"), 1);
	assert_int_equal(stats_of(f->s).last_seq, 1);

	/* The same order_id with other content: refused, naming order_id. */
	scrm_line line = {.sku = "85123A", .qty = 1, .unit_price = 255, .discount = 0};
	scrm_purchase p = {.order_id = "A-1", .lines = &line, .n_lines = 1, .total = 255, .currency = "GBP",
			   .payment = "card"};
	assert_refused(scrm_record_purchase(f->s, &p, &r2), SCRM_E_CONFLICT, "order_id");
	assert_non_null(strstr(scrm_errmsg(), "different content"));
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM outbox"), 1);

	/* Returns are keyed by return_id (several returns per order). */
	static const char ret[] = "{\"kind\":\"return\",\"return_id\":\"R-1\",\"order_id\":\"A-1\",\"lines\":[{\"sku\":"
				  "\"85123A\",\"qty\":1,\"unit_price\":255}],\"total\":255,\"currency\":\"GBP\","
				  "\"refund_method\":\"card\"}";
	static const char ret2[] = "{\"kind\":\"return\",\"return_id\":\"R-2\",\"order_id\":\"A-1\",\"lines\":[{\"sku\":"
				   "\"85123A\",\"qty\":1,\"unit_price\":255}],\"total\":255,\"currency\":\"GBP\","
				   "\"refund_method\":\"card\"}";
	static const char ret1b[] = "{\"kind\":\"return\",\"return_id\":\"R-1\",\"order_id\":\"A-1\",\"lines\":[{\"sku\":"
				    "\"85123A\",\"qty\":1,\"unit_price\":255}],\"total\":255,\"currency\":\"GBP\","
				    "\"refund_method\":\"cash\"}";
	assert_int_equal(scrm_record_json(f->s, ret, strlen(ret), &r1), SCRM_OK);
	assert_int_equal(scrm_record_json(f->s, ret, strlen(ret), &r2), SCRM_OK);
	assert_int_equal(r2.seq, r1.seq);
	assert_int_equal(scrm_record_json(f->s, ret2, strlen(ret2), &r3), SCRM_OK);
	assert_int_equal(r3.seq, r1.seq + 1);
	assert_refused(scrm_record_json(f->s, ret1b, strlen(ret1b), &r2), SCRM_E_CONFLICT, "return_id");
	/* A scan has no such key: two scans are two events. */
	assert_int_equal(record_scan_json(f->s, "17850", &r1), SCRM_OK);
	assert_int_equal(record_scan_json(f->s, "17850", &r2), SCRM_OK);
	assert_int_equal(r2.seq, r1.seq + 1);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM outbox"), 5);
}

struct retrier {
	scrm_store *s;
	scrm_receipt r[20];
	int failures;
};

static void *retrier_main(void *arg)
{
	struct retrier *t = arg;
	for (int i = 0; i < 20; i++) {
		char key[16];
		snprintf(key, sizeof(key), "O-%d", i);
		if (record_purchase(t->s, key, &t->r[i]) != SCRM_OK)
			t->failures++;
	}
	return NULL;
}

/* Tills retrying the same 20 sales at once, in one group commit and across
 * two processes: 20 events, and every caller holds the same receipts. */
static void concurrent_retries_make_one_sale_each(void **state)
{
	fx *f = *state;
	static struct retrier t[6];
	pthread_t th[6];
	pid_t child = fork();
	assert_true(child >= 0);
	if (child == 0) {
		scrm_store *s = NULL;
		struct retrier c = {0};
		if (scrm_store_open(f->store, NULL, &s) != SCRM_OK)
			_exit(2);
		c.s = s;
		retrier_main(&c);
		scrm_store_close(s);
		_exit(c.failures ? 1 : 0);
	}
	for (int i = 0; i < 6; i++) {
		t[i].s = f->s;
		assert_int_equal(pthread_create(&th[i], NULL, retrier_main, &t[i]), 0);
	}
	for (int i = 0; i < 6; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	int status = 0;
	assert_int_equal(waitpid(child, &status, 0), child);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	for (int i = 0; i < 6; i++) {
		assert_int_equal(t[i].failures, 0);
		for (int k = 0; k < 20; k++) {
			assert_int_equal(t[i].r[k].seq, t[0].r[k].seq);
			assert_string_equal(t[i].r[k].event_id, t[0].r[k].event_id);
		}
	}
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM outbox"), 20);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(DISTINCT json_extract(body, '$.order_id')) FROM outbox"), 20);
}

int main(int argc, char **argv)
{
	tu_select(argc, argv);
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(record_each_kind_and_get_receipts),
		T(refused_calls_write_nothing),
		T(errmsg_is_per_thread),
		T(null_arguments_refused),
		T(open_refusals),
		T(strerror_and_version),
		T(fake_clock_reaches_receipt_and_clock_flag),
		T(group_commit_8_threads_one_handle),
		T(two_processes_capture_concurrently),
		T(sigkill_mid_capture_loses_nothing_reported),
		T(event_ids_unique_across_fork),
		T(retried_sale_returns_the_first_receipt),
		T(concurrent_retries_make_one_sale_each),
	};
	return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
