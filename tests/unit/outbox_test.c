/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outbox_test: the durable SQLite queue (agent/lib/outbox/) in a throw-away
 * directory: creation and device binding, the sequence counter (consecutive,
 * shared by every handle on the file, never reused after acks), batches for
 * the wire, acks, rejections, the statistics scrmctl prints, and what
 * happens when the disk fills up (the clock_ok rule: outbox_clock_test.c).
 *
 * Links the real outbox.c with its real neighbours: SQLite, err.c, sbuf.c
 * and platform/ (mkdir). Rows are appended with chosen wall clocks, so no
 * clock needs faking here. The test inspects the database file with its own
 * SQLite connection where the module has no accessor (the rejected table,
 * integrity_check).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "event.h"
#include "ledger.h"
#include "outbox.h"
#include "outbox_int.h"
#include "platform.h"
#include "testutil.h"
#include "outboxfx.h"
#include "outboxrow.h"
#include "oldschema.h"
#include "faultvfs.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define BOOT "9f1c0d1e-6a43-4b7e-9a51-0c2d9e8f7a6b"
#define T0 1700000000000LL /* trusted_after_ms used by most tests */

static int setup(void **state)
{
	return outboxfx_setup(state, "outbox");
}

static int teardown(void **state)
{
	return outboxfx_teardown(state);
}

/* ---- helpers --------------------------------------------------------- */

/* Scan number n, at mono 1000 + n in this boot. */
static void make_row(outbox__row *r, rowbuf *b, int n, int64_t wall_ms)
{
	outboxrow_scan(r, b, n, wall_ms, 1000 + n, BOOT);
}

/* Append `n` rows (n <= 64) in one transaction; returns the first seq. */
static int64_t append_n(outbox *ob, int n, int64_t wall_ms)
{
	static int counter;
	outbox__row rows[64];
	rowbuf bufs[64];
	assert_true(n > 0 && n <= 64);
	for (int i = 0; i < n; i++)
		make_row(&rows[i], &bufs[i], ++counter, wall_ms);
	assert_int_equal(outbox__append(ob, rows, (size_t)n, T0), SCRM_OK);
	for (int i = 1; i < n; i++)
		assert_int_equal(rows[i].seq, rows[0].seq + i);
	return rows[0].seq;
}

static scrm_outbox_stats stats_of(outbox *ob)
{
	scrm_outbox_stats st;
	assert_int_equal(outbox__stats(ob, &st), SCRM_OK);
	return st;
}

/* Read a batch and parse it as a JSON array of events. */
static cJSON *read_events(outbox *ob, int64_t after, size_t max_events, size_t max_bytes, size_t *count,
			  int64_t *last)
{
	sbuf out;
	sbuf__init(&out);
	sbuf__putc(&out, '[');
	assert_int_equal(outbox__read_batch(ob, after, max_events, max_bytes, 0, &out, count, last, NULL), SCRM_OK);
	sbuf__putc(&out, ']');
	cJSON *arr = cJSON_ParseWithLength(out.p, out.len);
	if (!arr) {
		print_error("batch is not JSON: %s\n", out.p);
		fail();
	}
	assert_int_equal((size_t)cJSON_GetArraySize(arr), *count);
	sbuf__free(&out);
	return arr;
}

/* Seqs of all pending events, in the order read_batch returns them. */
static size_t pending_seqs(outbox *ob, int64_t *seqs, size_t max)
{
	size_t count = 0;
	int64_t last = 0;
	cJSON *arr = read_events(ob, 0, max, (size_t)1 << 30, &count, &last);
	size_t i = 0;
	for (const cJSON *e = arr->child; e; e = e->next)
		seqs[i++] = (int64_t)cJSON_GetObjectItemCaseSensitive(e, "seq")->valuedouble;
	cJSON_Delete(arr);
	return count;
}

static int exists(const char *p)
{
	return access(p, F_OK) == 0;
}

/* ---- open / create --------------------------------------------------- */

static void create_then_reopen_keeps_device(void **state)
{
	fx *f = *state;
	assert_string_equal(outbox__device_id(f->ob), "pos-01");
	outbox__close(f->ob);
	f->ob = NULL;

	/* Without a device id: "the existing store", whatever it belongs to. */
	assert_int_equal(outbox__open(f->store, NULL, 0, &f->ob), SCRM_OK);
	assert_string_equal(outbox__device_id(f->ob), "pos-01");
	outbox__close(f->ob);
	f->ob = NULL;
	assert_int_equal(outbox__open(f->store, "pos-01", 0, &f->ob), SCRM_OK);
}

static void created_directories_are_private(void **state)
{
	fx *f = *state;
	/* Sales data: the store directory is created 0700, parents included. */
	char *nested = tu_join(f->dir, "a/b/store");
	outbox *ob = NULL;
	assert_int_equal(outbox__open(nested, "pos-01", 0, &ob), SCRM_OK);
	outbox__close(ob);
	struct stat st;
	assert_int_equal(stat(nested, &st), 0);
	assert_int_equal(st.st_mode & 077, 0);
	free(nested);
}

static void files_are_group_writable_whatever_the_umask(void **state)
{
	fx *f = *state;
	/* The package runs the daemon with UMask=0007 in a 2770 store shared
	 * with the POS (group scrm): the outbox, its -wal/-shm and the lock
	 * file must stay writable by the group whoever created them. The
	 * directory (above) keeps others out. */
	char *other = tu_join(f->dir, "shared");
	mode_t old = umask(077);
	outbox *ob = NULL;
	assert_int_equal(outbox__open(other, "pos-01", 0, &ob), SCRM_OK);
	rowbuf b;
	outbox__row r;
	make_row(&r, &b, 1, 1764000000000LL);
	assert_int_equal(outbox__append(ob, &r, 1, 0), SCRM_OK);
	const char *names[] = {"outbox.db", "outbox.db-wal", "outbox.db-shm", "outbox.lock"};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char *p = tu_join(other, names[i]);
		struct stat st;
		assert_int_equal(stat(p, &st), 0);
		if ((st.st_mode & 0777) != 0660)
			print_error("%s: mode %o\n", names[i], (unsigned)(st.st_mode & 0777));
		assert_int_equal(st.st_mode & 0777, 0660);
		free(p);
	}
	outbox__close(ob);
	umask(old);
	free(other);
}

static void device_mismatch_refused(void **state)
{
	fx *f = *state;
	append_n(f->ob, 2, T0 + 1);
	outbox *other = NULL;
	assert_refused(outbox__open(f->store, "pos-02", 0, &other), SCRM_E_MISMATCH, "device_id");
	assert_errmsg_contains("pos-01");
	assert_errmsg_contains("pos-02");
	assert_null(other);
	/* ... and the store is untouched. */
	assert_int_equal(stats_of(f->ob).last_seq, 2);
	assert_string_equal(outbox__device_id(f->ob), "pos-01");
}

static void open_missing_store_without_device_creates_nothing(void **state)
{
	fx *f = *state;
	char *missing = tu_join(f->dir, "typo/store");
	outbox *ob = NULL;
	assert_refused(outbox__open(missing, NULL, 0, &ob), SCRM_E_NOT_FOUND, "dir");
	assert_null(ob);
	assert_false(exists(missing));
	char *parent = tu_join(f->dir, "typo");
	assert_false(exists(parent));
	free(parent);
	free(missing);

	/* An existing but empty directory is not a store either. */
	char *empty = tu_join(f->dir, "empty");
	assert_int_equal(mkdir(empty, 0700), 0);
	assert_refused(outbox__open(empty, NULL, 0, &ob), SCRM_E_NOT_FOUND, "dir");
	char *db = tu_join(empty, OUTBOX_FILE);
	assert_false(exists(db));
	free(db);
	free(empty);
}

static void invalid_device_id_refused_and_nothing_created(void **state)
{
	fx *f = *state;
	static const char *const bad[] = {"", "pos 01", "pos/01", "pos+01", "p\xc3\xb6s",
					  "12345678901234567890123456789012345678901234567890123456789012345"};
	char *fresh = tu_join(f->dir, "fresh");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		outbox *ob = NULL;
		assert_refused(outbox__open(fresh, bad[i], 0, &ob), SCRM_E_INVALID, "device_id");
		assert_false(exists(fresh));
	}
	free(fresh);
}

/* The objects of schema v6 (set-aside events, receipts by order, recovered
 * events): dropped to make a store of an older release. */
#define DROP_V6 UNDO_V8 UNDO_V7 " DROP TRIGGER outbox_member_activity; DROP TRIGGER outbox_reco_shown; DROP TRIGGER outbox_redemption;" \
	" DROP TRIGGER outbox_attribution; DROP TABLE dead_letter; DROP TABLE orders; DROP TABLE recovered;" \
	" ALTER TABLE outbox DROP COLUMN set_aside; ALTER TABLE outbox DROP COLUMN recovered;"
#define CURRENT_SCHEMA 8

/* Close the fixture's outbox and run `sql` on its file with a plain
 * connection (to make an older or newer store out of it). */
static void close_and_exec(fx *f, const char *sql)
{
	outbox__close(f->ob);
	f->ob = NULL;
	tu_sql_exec(f->db, sql);
}

/* Make an older store out of the fixture's with `downgrade`, reopen it
 * (an upgrade to CURRENT_SCHEMA) and check that the `n` schema objects
 * named in `names` (a quoted SQL list) are there again. */
static void upgrade_from(fx *f, const char *downgrade, const char *names, int n)
{
	close_and_exec(f, downgrade);
	assert_int_equal(outbox__open(f->store, NULL, 0, &f->ob), SCRM_OK);
	assert_int_equal(tu_sql_int(f->db, "PRAGMA user_version"), CURRENT_SCHEMA);
	char *sql = tu_fmt("SELECT count(*) FROM sqlite_master WHERE name IN (%s)", names);
	assert_int_equal(tu_sql_int(f->db, sql), n);
	free(sql);
}

static void newer_schema_refused(void **state)
{
	fx *f = *state;
	close_and_exec(f, "PRAGMA user_version = 99");
	assert_refused(outbox__open(f->store, NULL, 0, &f->ob), SCRM_E_CORRUPT, "outbox");
	assert_null(f->ob);
	/* "refusing to touch it": still version 99, and not taken for damage
	 * (an older agent must not quarantine a newer agent's store). */
	assert_int_equal(tu_sql_int(f->db, "PRAGMA user_version"), 99);
	assert_refused(outbox__open_checked(f->store, "pos-01", 0, &f->ob), SCRM_E_CORRUPT, "outbox");
	char *q = tu_join(f->store, "quarantine");
	assert_false(exists(q));
	free(q);
}

/* A store written by the previous release (schema v2: before the guide
 * tablet) upgrades in place: its events and counter are kept and the v3
 * tables and triggers appear. */
/* Undo schema v5 (the clock anchor columns, SQLite >= 3.35), to make an
 * older store out of a new one. */
#define UNDO_V5 \
	"ALTER TABLE device DROP COLUMN clock_boot; ALTER TABLE device DROP COLUMN clock_offset_ms;" \
	" ALTER TABLE device DROP COLUMN clock_mono_ms; ALTER TABLE device DROP COLUMN clock_cand_boot;" \
	" ALTER TABLE device DROP COLUMN clock_cand_offset_ms; ALTER TABLE device DROP COLUMN clock_cand_mono_ms;"

static void schema_v2_store_upgrades(void **state)
{
	fx *f = *state;
	assert_int_equal(append_n(f->ob, 3, T0 + 1), 1);
	upgrade_from(f,
		     DROP_V6 UNDO_V5 " DROP TABLE link; DROP TABLE settings;"
		     " DROP TABLE reco_shown; DROP TABLE redemptions;"
		     " DROP TRIGGER outbox_usage_insert; DROP TRIGGER outbox_usage_delete;"
		     " DROP TRIGGER outbox_usage_update; DROP INDEX outbox_evictable; DROP TABLE usage;"
		     " DROP TABLE dropped; DROP TABLE alarms; PRAGMA user_version = 2",
		     "'link','settings','reco_shown','redemptions'", 4);
	assert_int_equal(stats_of(f->ob).pending, 3);
	assert_int_equal(append_n(f->ob, 1, T0 + 2), 4);
}

/* A store of the release before bounded storage (schema v3) upgrades in
 * place: events and the counter are kept (including seqs already acked),
 * the usage row starts from what the store holds, and the cap works. */
static void schema_v3_store_upgrades(void **state)
{
	fx *f = *state;
	assert_int_equal(append_n(f->ob, 5, T0 + 1), 1);
	const int64_t first_two[][2] = {{1, 2}};
	int64_t deleted = 0;
	assert_int_equal(outbox__ack(f->ob, first_two, 1, T0 + 10, &deleted), SCRM_OK);
	assert_int_equal(deleted, 2);
	upgrade_from(f,
		     DROP_V6 UNDO_V5 " DROP TRIGGER outbox_usage_insert; DROP TRIGGER outbox_usage_delete;"
		     " DROP TRIGGER outbox_usage_update; DROP INDEX outbox_evictable; DROP TABLE usage;"
		     " DROP TABLE dropped; DROP TABLE alarms; PRAGMA user_version = 3",
		     "'usage','dropped','alarms','outbox_resized','outbox_evictable'", 5);
	assert_int_equal(stats_of(f->ob).pending, 3);
	assert_int_equal(stats_of(f->ob).last_seq, 5);
	assert_int_equal(tu_sql_int(f->db, "SELECT bytes FROM totals"),
			 tu_sql_int(f->db, "SELECT sum(length(CAST(body AS BLOB))) FROM outbox") + 3 * OUTBOX_ROW_OVERHEAD);
	struct outbox__health h;
	assert_int_equal(outbox__health(f->ob, &h), SCRM_OK);
	assert_int_equal(h.pending, 3);
	assert_int_equal(h.last_seq, 5);
	assert_int_equal(h.last_ack_ms, T0 + 10);
	/* the counter goes on: no seq reused */
	assert_int_equal(append_n(f->ob, 1, T0 + 2), 6);
}

/* The release before running totals (schema v6) upgrades in place: what
 * is pending, its size and the counter carry over, and a library of v6
 * still running on the upgraded file fails on usage.bytes instead of
 * inserting rows nothing counts. */
static void schema_v6_store_upgrades(void **state)
{
	fx *f = *state;
	assert_int_equal(append_n(f->ob, 5, T0 + 1), 1);
	const int64_t first_two[][2] = {{1, 2}};
	int64_t deleted = 0;
	assert_int_equal(outbox__ack(f->ob, first_two, 1, T0 + 10, &deleted), SCRM_OK);
	upgrade_from(f, UNDO_V8 UNDO_V7, "'totals','outbox_resized'", 2);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM pragma_table_info('usage') WHERE name IN ('bytes', 'events')"), 0);
	assert_int_equal(stats_of(f->ob).pending, 3);
	assert_int_equal(stats_of(f->ob).last_seq, 5);
	assert_int_equal(tu_sql_int(f->db, "SELECT bytes FROM totals"),
			 tu_sql_int(f->db, "SELECT sum(length(CAST(body AS BLOB))) FROM outbox") + 3 * OUTBOX_ROW_OVERHEAD);
	assert_int_equal(append_n(f->ob, 2, T0 + 2), 6);
	const int64_t rest[][2] = {{3, 7}};
	assert_int_equal(outbox__ack(f->ob, rest, 1, T0 + 20, &deleted), SCRM_OK);
	assert_int_equal(deleted, 5);
	assert_int_equal(tu_sql_int(f->db, "SELECT bytes FROM totals"), 0);
	assert_int_equal(append_n(f->ob, 1, T0 + 3), 8);
}

/* Schema v7's running totals against the rows themselves, through every
 * path that adds, removes or resizes a row, in a seeded random order:
 * pending bytes and events are what a scan counts, and no seq is reused,
 * whichever rows (the newest included) went. */
static void totals_follow_every_path(void **state)
{
	fx *f = *state;
	uint64_t rng = 0x5eed14;
	int64_t top = 0;
#define RND(n) ((int64_t)((rng = rng * 6364136223846793005ULL + 1442695040888963407ULL) >> 33) % (n))
	for (int step = 0; step < 400; step++) {
		int64_t lo = tu_sql_int(f->db, "SELECT coalesce(min(seq), 0) FROM outbox");
		int64_t hi = tu_sql_int(f->db, "SELECT coalesce(max(seq), 0) FROM outbox");
		int64_t deleted = 0;
		switch (RND(8)) {
		case 0:
		case 1:
		case 2: {
			int64_t first = append_n(f->ob, (int)RND(20) + 1, T0 + step);
			assert_true(first > top);
			top = tu_sql_int(f->db, "SELECT max(seq) FROM outbox");
			break;
		}
		case 3: /* an ack, often of everything up to the newest row */
			if (hi) {
				const int64_t r[][2] = {{lo + RND(hi - lo + 1), RND(2) ? hi : lo + RND(hi - lo + 1)}};
				assert_int_equal(outbox__ack(f->ob, r, 1, T0 + step, &deleted), SCRM_OK);
			}
			break;
		case 4:
			if (hi)
				assert_int_equal(outbox__reject(f->ob, RND(2) ? hi : lo, "test", T0 + step), SCRM_OK);
			break;
		case 5:
			if (hi)
				assert_int_equal(outbox__set_aside(f->ob, lo + RND(hi - lo + 1), "too_large", "test", 99), SCRM_OK);
			break;
		case 6: { /* erasure shrinks bodies; a small cap evicts scans, the newest too */
			char member[16];
			int64_t n = 0;
			snprintf(member, sizeof(member), "m%lld", (long long)RND(400));
			assert_int_equal(outbox__redact_member(f->ob, member, &n), SCRM_OK);
			char *cap = tu_fmt("INSERT OR REPLACE INTO settings(k, v) VALUES ('outbox_max_bytes', %lld)",
					   (long long)(RND(2) ? (int64_t)1 << 40 : 40 * (OUTBOX_ROW_OVERHEAD + 40)));
			tu_sql_exec(f->db, cap);
			free(cap);
			break;
		}
		default:
			outbox__close(f->ob);
			assert_int_equal(outbox__open(f->store, NULL, 0, &f->ob), SCRM_OK);
			break;
		}
		assert_int_equal(tu_sql_int(f->db, "SELECT bytes FROM totals"),
				 tu_sql_int(f->db, "SELECT coalesce(sum(length(CAST(body AS BLOB))), 0) + count(*) * "
						   XSTR(OUTBOX_ROW_OVERHEAD) " FROM outbox"));
		assert_int_equal(tu_sql_int(f->db, "SELECT events FROM totals"), tu_sql_int(f->db, "SELECT count(*) FROM outbox"));
		assert_int_equal(stats_of(f->ob).last_seq, top);
	}
#undef RND
	assert_true(top > 1000);
}

/* A purchase row with `body`, event id number `idn` (in id), at T0 + n. */
static void sale_row(outbox__row *r, const char *body, char (*id)[37], int idn, int n)
{
	snprintf(*id, sizeof(*id), "0190a000-0000-7000-8000-%012d", idn);
	memset(r, 0, sizeof(*r));
	r->id = *id;
	r->kind = "purchase";
	r->wall_ms = T0 + n;
	r->mono_ms = 1000 + n;
	r->boot = BOOT;
	r->body = body;
	r->body_len = strlen(body);
}

/* A purchase with order_id `order` (and `total`), its strings in b. */
static void purchase_row(outbox__row *r, char (*b)[160], char (*id)[37], const char *order, int total, int n)
{
	snprintf(*b, sizeof(*b), "{\"order_id\":\"%.32s\",\"lines\":[{\"sku\":\"85123A\",\"qty\":1}],\"total\":%d}",
		 order, total);
	sale_row(r, *b, id, n, n);
}

/* Schema v7 keeps a pending sale's receipt on its row and each handle an
 * index of them (receipts.c): another handle (process) finds it, it
 * survives the ack (moved to orders), a rolled-back group's seqs reused
 * by other sales are never taken for the rolled-back sales' receipts,
 * and the index is rebuilt rather than growing with history. */
static void receipts_pending_kept_and_rolled_back(void **state)
{
	fx *f = *state;
	outbox *b = NULL;
	outbox__row r, rows[64];
	char body[64][160], id[64][37];
	int n = 0;
	assert_int_equal(outbox__open(f->store, NULL, 0, &b), SCRM_OK);
	purchase_row(&r, &body[0], &id[0], "P-1", 100, ++n);
	assert_int_equal(outbox__append(f->ob, &r, 1, T0), SCRM_OK);
	const int64_t p1 = r.seq;
	/* the other handle: the same sale is the first receipt, another is refused */
	purchase_row(&r, &body[1], &id[1], "P-1", 100, ++n);
	assert_int_equal(outbox__append(b, &r, 1, T0), SCRM_OK);
	assert_true(r.existing);
	assert_int_equal(r.seq, p1);
	assert_string_equal(r.existing_id, id[0]);
	purchase_row(&r, &body[1], &id[1], "P-1", 999, ++n);
	assert_int_equal(outbox__append(b, &r, 1, T0), SCRM_E_CONFLICT);
	assert_non_null(strstr(r.why, "different content"));
	/* acknowledged: the receipt is kept in orders */
	const int64_t acked[][2] = {{p1, p1}};
	int64_t deleted = 0;
	assert_int_equal(outbox__ack(f->ob, acked, 1, T0 + 10, &deleted), SCRM_OK);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM orders WHERE key = 'P-1'"), 1);
	purchase_row(&r, &body[1], &id[1], "P-1", 100, ++n);
	assert_int_equal(outbox__append(b, &r, 1, T0), SCRM_OK);
	assert_true(r.existing);
	assert_int_equal(r.seq, p1);

	/* a group that rolls back (its second row fails): its seqs go to other
	 * sales, recorded by another till, which this handle must still find */
	tu_sql_exec(f->db, "CREATE TRIGGER boom BEFORE INSERT ON outbox WHEN NEW.id LIKE '%-000000000999'"
			   " BEGIN SELECT RAISE(ABORT, 'boom'); END");
	purchase_row(&rows[0], &body[0], &id[0], "P-2", 100, ++n);
	purchase_row(&rows[1], &body[1], &id[1], "P-X", 100, 999);
	assert_int_not_equal(outbox__append(f->ob, rows, 2, T0), SCRM_OK);
	tu_sql_exec(f->db, "DROP TRIGGER boom");
	purchase_row(&r, &body[2], &id[2], "P-3", 300, ++n);
	assert_int_equal(outbox__append(b, &r, 1, T0), SCRM_OK);
	const int64_t p3 = r.seq;
	assert_int_equal(p3, p1 + 1); /* the seq P-2 had in the rolled-back group */
	purchase_row(&r, &body[0], &id[0], "P-2", 100, ++n);
	assert_int_equal(outbox__append(f->ob, &r, 1, T0), SCRM_OK);
	assert_false(r.existing);
	assert_int_equal(r.seq, p3 + 1);
	purchase_row(&r, &body[2], &id[2], "P-3", 300, ++n);
	assert_int_equal(outbox__append(f->ob, &r, 1, T0), SCRM_OK);
	assert_true(r.existing);
	assert_int_equal(r.seq, p3);

	/* 80 groups of 64 sales, acknowledged as they go: the index is rebuilt
	 * from the queue and stays its size, and every receipt is still found */
	char order[64][16];
	for (int g = 0; g < 80; g++) {
		for (int i = 0; i < 64; i++) {
			snprintf(order[i], sizeof(order[i]), "Q-%d", g * 64 + i);
			purchase_row(&rows[i], &body[i], &id[i], order[i], 100, ++n);
		}
		assert_int_equal(outbox__append(f->ob, rows, 64, T0), SCRM_OK);
		const int64_t all[][2] = {{1, rows[63].seq}};
		assert_int_equal(outbox__ack(f->ob, all, 1, T0 + 20, &deleted), SCRM_OK);
	}
	assert_true(f->ob->rc.n < 2 * 4096 + 64);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM orders"), 3 + 80 * 64);
	purchase_row(&r, &body[0], &id[0], "Q-7", 100, ++n);
	assert_int_equal(outbox__append(f->ob, &r, 1, T0), SCRM_OK);
	assert_true(r.existing);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM outbox"), 0);
	outbox__close(b);
}

/* The release before the rules left the insert (schema v7) upgrades in
 * place: no trigger fires on a captured row any more (outbox_resized, on
 * body updates, is the one left), a pending sale's receipt carries over
 * the renamed column, and a v7 library still running on the upgraded file
 * fails at its insert instead of writing rows without their ledgers. */
static void schema_v7_store_upgrades(void **state)
{
	fx *f = *state;
	outbox__row r;
	char body[160], id[37];
	purchase_row(&r, &body, &id, "V7-1", 100, 1);
	assert_int_equal(outbox__append(f->ob, &r, 1, T0), SCRM_OK);
	const int64_t seq = r.seq;
	upgrade_from(f, UNDO_V8, "'outbox_evictable','outbox_resized'", 2);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'"), 1);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM sqlite_master WHERE name = 'outbox_evictable'"
					   " AND sql LIKE '%NOT IN%'"),
			 0);
	purchase_row(&r, &body, &id, "V7-1", 100, 2);
	assert_int_equal(outbox__append(f->ob, &r, 1, T0), SCRM_OK);
	assert_true(r.existing);
	assert_int_equal(r.seq, seq);
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
	assert_int_not_equal(sqlite3_exec(db,
					  "INSERT INTO outbox(seq, id, kind, wall_ms, mono_ms, boot, clock_ok, body, cum,"
					  " cum_events, max_wall, okey, digest, member) VALUES (99, 'x', 'purchase', 1, 1,"
					  " 'b', 1, '{}', 1, 1, 1, 'V7-2', x'00', NULL)",
					  NULL, NULL, NULL),
			     SQLITE_OK);
	assert_non_null(strstr(sqlite3_errmsg(db), "okey"));
	sqlite3_close(db);
	assert_int_equal(stats_of(f->ob).pending, 1);
}

/* Schema v8's rules, run by append.c instead of triggers, give the same
 * rows whether the caller hands the sale's member over (typed capture) or
 * the outbox reads it from the body (JSON capture): the list shown is
 * remembered, a member's purchase without reco_id is attributed to it
 * (once, by the guide it names, within the window), a purchase naming its
 * reco_id and a return are not, and the row's member column is the
 * member_id's JSON string. */
static void rules_applied_hinted_or_not(void **state)
{
	fx *f = *state;
	outbox__row r;
	char id[37];
	const char *shown = "{\"member_id\":\"M\\\"9\",\"guide_id\":\"g-1\",\"items\":[]}";
	sale_row(&r, shown, &id, 700, 1);
	r.kind = "reco_shown";
	assert_int_equal(outbox__append(f->ob, &r, 1, T0), SCRM_OK);
	char *reco = tu_fmt("%s", id);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM reco_shown WHERE member_id = 'M\"9' AND guide_id = 'g-1'"),
			 1);
	const char *plain = "{\"order_id\":\"A-%d\",\"total\":1,\"member_id\":\"M\\\"9\"%s}";
	char body[6][200];
	struct {
		const char *kind, *extra;
		int hinted, attributed;
	} cases[] = {
		{"purchase", "", 0, 1},
		{"purchase", "", 1, 1},
		{"purchase", ",\"guide_id\":\"g-1\"", 1, 1},
		{"purchase", ",\"guide_id\":\"g-2\"", 0, 0},
		{"purchase", ",\"reco_id\":\"r-0\"", 1, 0},
		{"return", "", 0, 0},
	};
	for (int i = 0; i < 6; i++) {
		snprintf(body[i], sizeof(body[i]), plain, i, cases[i].extra);
		sale_row(&r, body[i], &id, 710 + i, 2 + i);
		r.kind = cases[i].kind;
		if (cases[i].hinted) {
			r.hinted = 1;
			r.member = "M\"9";
			r.guide = strstr(cases[i].extra, "g-1") ? "g-1" : NULL;
			r.has_reco = strstr(cases[i].extra, "reco_id") != NULL;
		}
		assert_int_equal(outbox__append(f->ob, &r, 1, T0), SCRM_OK);
		char *sql = tu_fmt("SELECT count(*) FROM outbox WHERE seq = %lld AND member = '\"M\\\"9\"' AND"
				   " (body ->> '$.reco_id' IS '%s') = %d AND (body ->> '$.attributed' IS 'auto') = %d",
				   (long long)r.seq, reco, cases[i].attributed, cases[i].attributed);
		assert_int_equal(tu_sql_int(f->db, sql), 1);
		free(sql);
	}
	/* the stored size counts the attributed bodies */
	assert_int_equal(tu_sql_int(f->db, "SELECT bytes FROM totals"),
			 tu_sql_int(f->db, "SELECT sum(length(CAST(body AS BLOB))) + count(*) * " XSTR(OUTBOX_ROW_OVERHEAD)
					   " FROM outbox"));
	/* the window: a sale two hours and a second after the list is not attributed */
	snprintf(body[0], sizeof(body[0]), plain, 9, "");
	sale_row(&r, body[0], &id, 720, 7200001 + 2);
	assert_int_equal(outbox__append(f->ob, &r, 1, T0), SCRM_OK);
	char *late = tu_fmt("SELECT body ->> '$.attributed' IS NULL FROM outbox WHERE seq = %lld", (long long)r.seq);
	assert_int_equal(tu_sql_int(f->db, late), 1);
	free(late);
	free(reco);
}

struct turn_append {
	outbox *ob;
	outbox__row *r;
	int rc;
};

static void *turn_append_thread(void *arg)
{
	struct turn_append *t = arg;
	t->rc = outbox__append(t->ob, t->r, 1, T0);
	return NULL;
}

/* turn.c: a POS handle waiting for the write lock says so in
 * <dir>/outbox.turn (a stamp refreshed while it polls) and clears it once
 * the lock is its own; the daemon's handle never stamps it, and the daemon
 * waiting for tills stops waiting when the stamp is cleared. */
static void till_waiting_is_seen_by_the_daemon(void **state)
{
	fx *f = *state;
	char *path = tu_join(f->store, OUTBOX_TURN_FILE);
	int64_t *word = platform__shared_word(path, 0660);
	assert_non_null(word);
	assert_int_equal(__atomic_load_n(word, __ATOMIC_RELAXED), 0);
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
	outbox__row r;
	char body[160], id[37];
	purchase_row(&r, &body, &id, "TURN-1", 100, 1);
	struct turn_append t = {.ob = f->ob, .r = &r};
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, turn_append_thread, &t), 0);
	/* the till polls: the stamp appears (its value is the poll's mono time) */
	int64_t seen = 0;
	for (int i = 0; i < 2000 && !seen; i++) {
		seen = __atomic_load_n(word, __ATOMIC_RELAXED);
		if (!seen)
			platform__sleep_us(1000);
	}
	assert_true(seen > 0);
	assert_true(seen <= platform__mono_us());
	assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
	/* the daemon's wait ends when the till has the lock (or the stamp
	 * goes stale): it returns, and the till's sale is in */
	outbox *daemon = NULL;
	assert_int_equal(outbox__open_checked(f->store, NULL, 0, &daemon), SCRM_OK);
	outbox__yield_to_tills(daemon);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(t.rc, SCRM_OK);
	assert_int_equal(__atomic_load_n(word, __ATOMIC_RELAXED), 0);
	/* the daemon's handle, kept waiting, leaves the word alone */
	const int64_t none[][2] = {{r.seq, r.seq}};
	int64_t deleted = 0;
	outbox__close(daemon);
	assert_int_equal(outbox__open_checked(f->store, NULL, 200, &daemon), SCRM_OK);
	assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
	assert_int_not_equal(outbox__ack(daemon, none, 1, T0 + 1, &deleted), SCRM_OK);
	assert_int_equal(__atomic_load_n(word, __ATOMIC_RELAXED), 0);
	assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	outbox__close(daemon);
	platform__shared_word_close(word);
	free(path);
}

/* Power off now and back on with what the disk kept (every handle closed). */
static void cut_power(outbox **a, outbox **b)
{
	faultvfs_power_cut();
	outbox__close(*a);
	outbox__close(*b);
	*a = *b = NULL;
	assert_true(faultvfs_power_cut_apply(FAULTVFS_DROP_UNSYNCED, 1) >= 0);
}

/* An ack commits without an fsync (deliver.c): a power cut just after it
 * brings its events back to the queue, whole — the same seqs, each sale's
 * receipt still found — to be sent again; the next capture's fsync makes
 * the ack durable with it. Under the faultvfs shim, which keeps only what
 * was synced. */
static void ack_unsynced_comes_back_whole(void **state)
{
	fx *f = *state;
	outbox__close(f->ob);
	f->ob = NULL;
	assert_int_equal(faultvfs_install(1), SQLITE_OK);
	faultvfs_reset();
	outbox *pos = NULL, *daemon = NULL;
	assert_int_equal(outbox__open_checked(f->store, NULL, 0, &daemon), SCRM_OK);
	assert_int_equal(outbox__open(f->store, NULL, 0, &pos), SCRM_OK);
	outbox__row r;
	char body[3][160], id[3][37];
	int64_t seq[3];
	for (int i = 0; i < 3; i++) {
		char order[16];
		snprintf(order, sizeof(order), "PW-%d", i);
		purchase_row(&r, &body[i], &id[i], order, 100 + i, i + 1);
		assert_int_equal(outbox__append(pos, &r, 1, T0), SCRM_OK);
		seq[i] = r.seq;
	}
	faultvfs_counts before, after;
	faultvfs_get_counts(&before);
	const int64_t all[][2] = {{seq[0], seq[2]}};
	int64_t deleted = 0;
	assert_int_equal(outbox__ack(daemon, all, 1, T0 + 10, &deleted), SCRM_OK);
	assert_int_equal(deleted, 3);
	faultvfs_get_counts(&after);
	assert_int_equal(after.syncs, before.syncs);
	cut_power(&pos, &daemon);

	assert_int_equal(outbox__open_checked(f->store, NULL, 0, &daemon), SCRM_OK);
	assert_int_equal(outbox__open(f->store, NULL, 0, &pos), SCRM_OK);
	assert_int_equal(stats_of(pos).pending, 3);
	purchase_row(&r, &body[1], &id[1], "PW-1", 101, 9);
	assert_int_equal(outbox__append(pos, &r, 1, T0), SCRM_OK);
	assert_true(r.existing);
	assert_int_equal(r.seq, seq[1]);
	/* acked again, then a sale: its fsync carries the ack */
	assert_int_equal(outbox__ack(daemon, all, 1, T0 + 20, &deleted), SCRM_OK);
	purchase_row(&r, &body[0], &id[0], "PW-3", 103, 10);
	assert_int_equal(outbox__append(pos, &r, 1, T0), SCRM_OK);
	assert_int_equal(r.seq, seq[2] + 1);
	cut_power(&pos, &daemon);

	faultvfs_set_default(0);
	assert_int_equal(outbox__open(f->store, NULL, 0, &f->ob), SCRM_OK);
	assert_int_equal(stats_of(f->ob).pending, 1);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM orders WHERE key LIKE 'PW-%'"), 3);
	faultvfs_reset();
}

/* A sale of `member` (n-th row of the test), its strings in b and id. */
static void member_sale(outbox__row *r, char (*b)[200], char (*id)[37], const char *member, int total, int n)
{
	snprintf(*b, sizeof(*b), "{\"order_id\":\"M-%d\",\"lines\":[{\"sku\":\"S%d\",\"qty\":1}],\"total\":%d,"
		 "\"member_id\":\"%.16s\"}", n, n, total, member);
	sale_row(r, *b, id, 500 + n, n);
}

/* The seqs of member's local history as the reader gives them. */
static size_t history(outbox__activity *a, const char *member, int64_t after_ms, int64_t *seqs, size_t max)
{
	outbox__activity_row row;
	size_t n = 0;
	assert_int_equal(outbox__activity_query(a, member, after_ms), 0);
	while (outbox__activity_next(a, &row))
		if (n < max)
			seqs[n++] = row.seq;
	return n;
}

/* Schema v7: a member's local history is their pending rows plus
 * member_activity, found through the reader's own index (ledger_read.c)
 * whatever moved between two queries: an ack, an out-of-order ack and a
 * rejection of an older sale, a sale captured and acknowledged between
 * two looks, an erasure. */
static void member_history_follows_the_rows(void **state)
{
	fx *f = *state;
	outbox__activity *a = NULL;
	outbox__row r[4];
	char body[4][200], id[4][37];
	int64_t seqs[16];
	int64_t deleted = 0;
	outbox__activity_open(f->store, &a);
	assert_non_null(a);
	member_sale(&r[0], &body[0], &id[0], "M1", 100, 1);
	assert_int_equal(outbox__append(f->ob, r, 1, T0), SCRM_OK);
	assert_int_equal(history(a, "M1", 0, seqs, 16), 1); /* pending */
	const int64_t first[][2] = {{r[0].seq, r[0].seq}};
	assert_int_equal(outbox__ack(f->ob, first, 1, T0 + 10, &deleted), SCRM_OK);
	assert_int_equal(history(a, "M1", 0, seqs, 16), 1); /* acknowledged */
	assert_int_equal(seqs[0], r[0].seq);
	/* three sales of M3; the newest acknowledged first, the oldest rejected */
	for (int i = 0; i < 3; i++)
		member_sale(&r[i], &body[i], &id[i], "M3", 10 * (i + 1), 2 + i);
	assert_int_equal(outbox__append(f->ob, r, 3, T0), SCRM_OK);
	assert_int_equal(history(a, "M3", 0, seqs, 16), 3);
	const int64_t newest[][2] = {{r[2].seq, r[2].seq}};
	assert_int_equal(outbox__ack(f->ob, newest, 1, T0 + 20, &deleted), SCRM_OK);
	assert_int_equal(outbox__reject(f->ob, r[0].seq, "test", T0 + 21), SCRM_OK);
	assert_int_equal(history(a, "M3", 0, seqs, 16), 3);
	assert_int_equal(seqs[0], r[2].seq); /* newest first */
	assert_int_equal(seqs[2], r[0].seq);
	/* a sale made and acknowledged between two looks, with an older one
	 * rejected meanwhile */
	member_sale(&r[3], &body[3], &id[3], "M4", 40, 6);
	assert_int_equal(outbox__append(f->ob, &r[3], 1, T0), SCRM_OK);
	const int64_t fourth[][2] = {{r[3].seq, r[3].seq}};
	assert_int_equal(outbox__ack(f->ob, fourth, 1, T0 + 30, &deleted), SCRM_OK);
	assert_int_equal(outbox__reject(f->ob, r[1].seq, "test", T0 + 31), SCRM_OK);
	assert_int_equal(history(a, "M4", 0, seqs, 16), 1);
	assert_int_equal(history(a, "M3", 0, seqs, 16), 3);
	assert_int_equal(history(a, "M3", T0 + 3, seqs, 16), 1); /* after_ms */
	/* a second reader built from scratch sees the same */
	outbox__activity *b = NULL;
	outbox__activity_open(f->store, &b);
	assert_int_equal(history(b, "M3", 0, seqs, 16), 3);
	assert_int_equal(history(b, "M1", 0, seqs, 16), 1);
	outbox__activity_close(b);
	/* erasure: nothing of the member is left to show */
	int64_t n = 0;
	assert_int_equal(outbox__redact_member(f->ob, "M3", &n), SCRM_OK);
	assert_int_equal(history(a, "M3", 0, seqs, 16), 0);
	assert_int_equal(history(a, "M1", 0, seqs, 16), 1);
	outbox__activity_close(a);
}

static void not_a_database_refused(void **state)
{
	fx *f = *state;
	outbox__close(f->ob);
	f->ob = NULL;
	char *junk_dir = tu_join(f->dir, "junk");
	char *junk_db = tu_join(junk_dir, OUTBOX_FILE);
	assert_int_equal(mkdir(junk_dir, 0700), 0);
	FILE *fp = fopen(junk_db, "w");
	assert_non_null(fp);
	for (int i = 0; i < 512; i++)
		fputs("this is not an SQLite database. ", fp);
	fclose(fp);
	assert_refused(outbox__open(junk_dir, NULL, 0, &f->ob), SCRM_E_CORRUPT, "outbox");
	assert_null(f->ob);
	free(junk_db);
	free(junk_dir);
}

/* ---- sequence numbers ------------------------------------------------ */

static void append_assigns_consecutive_seqs_across_calls(void **state)
{
	fx *f = *state;
	assert_int_equal(append_n(f->ob, 3, T0 + 1), 1);
	assert_int_equal(append_n(f->ob, 1, T0 + 2), 4);
	assert_int_equal(append_n(f->ob, 5, T0 + 3), 5);
	scrm_outbox_stats st = stats_of(f->ob);
	assert_int_equal(st.last_seq, 9);
	assert_int_equal(st.pending, 9);
	/* They survive closing and reopening, and the counter continues. */
	outbox__close(f->ob);
	assert_int_equal(outbox__open(f->store, NULL, 0, &f->ob), SCRM_OK);
	assert_int_equal(stats_of(f->ob).pending, 9);
	assert_int_equal(append_n(f->ob, 1, T0 + 4), 10);
}

static void two_handles_share_one_counter(void **state)
{
	fx *f = *state;
	/* Two handles on one file = the POS and scrmctl, two processes. */
	outbox *b = NULL;
	assert_int_equal(outbox__open(f->store, NULL, 0, &b), SCRM_OK);
	int64_t expect = 1;
	for (int i = 0; i < 20; i++) {
		assert_int_equal(append_n(f->ob, 1, T0 + i), expect);
		expect += 1;
		assert_int_equal(append_n(b, 2, T0 + i), expect);
		expect += 2;
	}
	assert_int_equal(stats_of(f->ob).last_seq, 60);
	assert_int_equal(stats_of(b).pending, 60);
	int64_t seqs[64];
	assert_int_equal(pending_seqs(b, seqs, 64), 60);
	for (int i = 0; i < 60; i++)
		assert_int_equal(seqs[i], i + 1);
	outbox__close(b);
}

struct writer {
	const char *store;
	int n, ok;
	int64_t seqs[200];
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	outbox *ob = NULL;
	/* No cmocka in threads: record, let the main thread assert. */
	if (outbox__open(w->store, NULL, 10000, &ob) != SCRM_OK)
		return NULL;
	for (int i = 0; i < w->n; i++) {
		outbox__row r;
		rowbuf b;
		make_row(&r, &b, i, T0 + i);
		if (outbox__append(ob, &r, 1, T0) != SCRM_OK)
			break;
		w->seqs[w->ok++] = r.seq;
	}
	outbox__close(ob);
	return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

static void concurrent_handles_never_share_a_seq(void **state)
{
	fx *f = *state;
	struct writer w[2] = {{.store = f->store, .n = 150}, {.store = f->store, .n = 150}};
	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&t[i], NULL, writer_main, &w[i]), 0);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	assert_int_equal(w[0].ok, 150);
	assert_int_equal(w[1].ok, 150);
	int64_t all[300];
	memcpy(all, w[0].seqs, 150 * sizeof(int64_t));
	memcpy(all + 150, w[1].seqs, 150 * sizeof(int64_t));
	qsort(all, 300, sizeof(int64_t), cmp_i64);
	for (int i = 0; i < 300; i++)
		assert_int_equal(all[i], i + 1);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(DISTINCT seq) FROM outbox"), 300);
}

static void acks_never_make_seqs_reused(void **state)
{
	fx *f = *state;
	append_n(f->ob, 10, T0 + 1);
	const int64_t all[1][2] = {{1, 10}};
	int64_t deleted = 0;
	assert_int_equal(outbox__ack(f->ob, all, 1, T0 + 5000, &deleted), SCRM_OK);
	assert_int_equal(deleted, 10);
	assert_int_equal(stats_of(f->ob).pending, 0);
	/* The outbox is empty, yet the next event is 11, not 1. */
	assert_int_equal(append_n(f->ob, 1, T0 + 2), 11);
	outbox__close(f->ob);
	assert_int_equal(outbox__open(f->store, NULL, 0, &f->ob), SCRM_OK);
	assert_int_equal(append_n(f->ob, 1, T0 + 3), 12);
}

/* ---- batches --------------------------------------------------------- */

static void read_batch_in_seq_order_and_valid_json(void **state)
{
	fx *f = *state;
	append_n(f->ob, 4, T0 + 100);
	append_n(f->ob, 6, T0 + 200);
	size_t count = 0;
	int64_t last = 0;
	cJSON *arr = read_events(f->ob, 0, 4, (size_t)1 << 20, &count, &last);
	assert_int_equal(count, 4);
	assert_int_equal(last, 4);
	int64_t expect = 1;
	for (const cJSON *e = arr->child; e; e = e->next, expect++) {
		assert_int_equal((int64_t)cJSON_GetObjectItemCaseSensitive(e, "seq")->valuedouble, expect);
		assert_true(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "id")));
		assert_string_equal(cJSON_GetObjectItemCaseSensitive(e, "kind")->valuestring, "member_scan");
		assert_int_equal((int64_t)cJSON_GetObjectItemCaseSensitive(e, "wall_ms")->valuedouble, T0 + 100);
		assert_true(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(e, "mono_ms")));
		assert_string_equal(cJSON_GetObjectItemCaseSensitive(e, "boot")->valuestring, BOOT);
		assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "clock_ok")));
		/* The body is embedded as an object, not as a string. */
		const cJSON *b = cJSON_GetObjectItemCaseSensitive(e, "body");
		assert_true(cJSON_IsObject(b));
		assert_string_equal(cJSON_GetObjectItemCaseSensitive(b, "method")->valuestring, "qr");
	}
	cJSON_Delete(arr);

	arr = read_events(f->ob, 4, 100, (size_t)1 << 20, &count, &last);
	assert_int_equal(count, 6);
	assert_int_equal(last, 10);
	assert_int_equal((int64_t)cJSON_GetObjectItemCaseSensitive(arr->child, "seq")->valuedouble, 5);
	cJSON_Delete(arr);

	arr = read_events(f->ob, 10, 100, (size_t)1 << 20, &count, &last);
	assert_int_equal(count, 0);
	assert_int_equal(last, 0);
	cJSON_Delete(arr);
}

/* Length of event `seq` alone in a batch. */
static size_t event_len(outbox *ob, int64_t seq)
{
	sbuf out;
	size_t count = 0;
	int64_t last = 0;
	sbuf__init(&out);
	assert_int_equal(outbox__read_batch(ob, seq - 1, 1, (size_t)1 << 20, 0, &out, &count, &last, NULL), SCRM_OK);
	assert_int_equal(last, seq);
	size_t n = out.len;
	sbuf__free(&out);
	return n;
}

static size_t batch_count(outbox *ob, const char *prefix, size_t max_bytes, size_t *len)
{
	sbuf out;
	size_t count = 0;
	int64_t last = 0;
	sbuf__init(&out);
	sbuf__puts(&out, prefix);
	assert_int_equal(outbox__read_batch(ob, 0, 100, max_bytes, 0, &out, &count, &last, NULL), SCRM_OK);
	*len = out.len;
	sbuf__free(&out);
	return count;
}

static void read_batch_respects_max_bytes(void **state)
{
	fx *f = *state;
	append_n(f->ob, 5, T0 + 1);
	size_t l1 = event_len(f->ob, 1), l2 = event_len(f->ob, 2), l3 = event_len(f->ob, 3);
	size_t len = 0;
	/* Three events and their two commas fit exactly; one byte less, two. */
	assert_int_equal(batch_count(f->ob, "", l1 + l2 + l3 + 2, &len), 3);
	assert_true(len <= l1 + l2 + l3 + 2);
	assert_int_equal(batch_count(f->ob, "", l1 + l2 + l3 + 1, &len), 2);
	assert_true(len <= l1 + l2 + l3 + 1);
	/* One event is always taken, even if it alone is over the limit. */
	assert_int_equal(batch_count(f->ob, "", 1, &len), 1);
	assert_int_equal(len, l1);
	/* The limit counts what is already in the buffer (the envelope). */
	static const char envelope[] = "{\"v\":1,\"batch\":\"x\",\"events\":[";
	assert_int_equal(batch_count(f->ob, envelope, sizeof(envelope) - 1 + l1 + l2 + 1, &len), 2);
	assert_int_equal(batch_count(f->ob, envelope, sizeof(envelope) - 1 + l1 + l2, &len), 1);
}

static void read_batch_skips_acked_and_rejected(void **state)
{
	fx *f = *state;
	append_n(f->ob, 8, T0 + 1);
	const int64_t r[1][2] = {{2, 3}};
	assert_int_equal(outbox__ack(f->ob, r, 1, T0 + 10, NULL), SCRM_OK);
	assert_int_equal(outbox__reject(f->ob, 5, "bad", T0 + 11), SCRM_OK);
	int64_t seqs[16];
	assert_int_equal(pending_seqs(f->ob, seqs, 16), 5);
	static const int64_t expect[] = {1, 4, 6, 7, 8};
	for (int i = 0; i < 5; i++)
		assert_int_equal(seqs[i], expect[i]);
	int64_t oldest = 0;
	assert_int_equal(outbox__oldest_seq(f->ob, &oldest), SCRM_OK);
	assert_int_equal(oldest, 1);
}

/* ---- acks and rejections --------------------------------------------- */

static void ack_deletes_exactly_the_ranges(void **state)
{
	fx *f = *state;
	append_n(f->ob, 10, T0 + 1);
	const int64_t r[2][2] = {{2, 3}, {7, 7}};
	int64_t deleted = -1;
	assert_int_equal(outbox__ack(f->ob, r, 2, T0 + 1000, &deleted), SCRM_OK);
	assert_int_equal(deleted, 3);
	int64_t seqs[16];
	assert_int_equal(pending_seqs(f->ob, seqs, 16), 7);
	static const int64_t expect[] = {1, 4, 5, 6, 8, 9, 10};
	for (int i = 0; i < 7; i++)
		assert_int_equal(seqs[i], expect[i]);

	/* The same ack again (a redelivered down/ack) changes nothing. */
	assert_int_equal(outbox__ack(f->ob, r, 2, T0 + 2000, &deleted), SCRM_OK);
	assert_int_equal(deleted, 0);
	assert_int_equal(pending_seqs(f->ob, seqs, 16), 7);

	/* Overlapping an already-acked range deletes only what is left. */
	const int64_t over[1][2] = {{1, 4}};
	assert_int_equal(outbox__ack(f->ob, over, 1, T0 + 3000, &deleted), SCRM_OK);
	assert_int_equal(deleted, 2);
	scrm_outbox_stats st = stats_of(f->ob);
	assert_int_equal(st.pending, 5);
	assert_int_equal(st.last_ack_ms, T0 + 3000);
	assert_int_equal(st.last_acked_seq, 7);
}

static void reject_moves_event_to_rejected_table(void **state)
{
	fx *f = *state;
	append_n(f->ob, 3, T0 + 1);
	char *body2 = tu_sql_text(f->db, "SELECT body FROM outbox WHERE seq = 2");
	assert_int_equal(outbox__reject(f->ob, 2, "body.total: does not match lines", T0 + 50), SCRM_OK);
	scrm_outbox_stats st = stats_of(f->ob);
	assert_int_equal(st.pending, 2);
	assert_int_equal(st.rejected, 1);
	assert_int_equal(st.last_seq, 3);
	/* Kept, with the reason, for the store to follow up. */
	char *reason = tu_sql_text(f->db, "SELECT reason FROM rejected WHERE seq = 2");
	char *kept = tu_sql_text(f->db, "SELECT body FROM rejected WHERE seq = 2");
	assert_string_equal(reason, "body.total: does not match lines");
	assert_string_equal(kept, body2);
	assert_int_equal(tu_sql_int(f->db, "SELECT rejected_ms FROM rejected WHERE seq = 2"), T0 + 50);
	free(reason);
	free(kept);
	free(body2);

	/* Rejecting again, or rejecting an event no longer pending, is harmless. */
	assert_int_equal(outbox__reject(f->ob, 2, "again", T0 + 60), SCRM_OK);
	assert_int_equal(outbox__reject(f->ob, 99, "unknown", T0 + 60), SCRM_OK);
	st = stats_of(f->ob);
	assert_int_equal(st.rejected, 1);
	assert_int_equal(st.pending, 2);
	/* Rejections do not free seqs either. */
	assert_int_equal(append_n(f->ob, 1, T0 + 2), 4);
}

/* ---- statistics ------------------------------------------------------ */

static void stats_figures(void **state)
{
	fx *f = *state;
	scrm_outbox_stats st = stats_of(f->ob);
	assert_int_equal(st.pending, 0);
	assert_int_equal(st.pending_bytes, 0);
	assert_int_equal(st.oldest_pending_ms, 0);
	assert_int_equal(st.last_seq, 0);
	assert_int_equal(st.last_ack_ms, 0);
	assert_int_equal(st.last_acked_seq, 0);
	assert_int_equal(st.rejected, 0);

	outbox__row rows[3];
	rowbuf b[3];
	int64_t bytes = 0;
	for (int i = 0; i < 3; i++) {
		make_row(&rows[i], &b[i], 100 + i, T0 + 1000 * (i + 1));
		bytes += (int64_t)rows[i].body_len;
	}
	assert_int_equal(outbox__append(f->ob, rows, 3, T0), SCRM_OK);
	st = stats_of(f->ob);
	assert_int_equal(st.pending, 3);
	assert_int_equal(st.pending_bytes, bytes);
	assert_int_equal(st.oldest_pending_ms, T0 + 1000);
	assert_int_equal(st.last_seq, 3);

	const int64_t r[1][2] = {{1, 1}};
	assert_int_equal(outbox__ack(f->ob, r, 1, T0 + 9000, NULL), SCRM_OK);
	assert_int_equal(outbox__reject(f->ob, 3, "no", T0 + 9500), SCRM_OK);
	st = stats_of(f->ob);
	assert_int_equal(st.pending, 1);
	assert_int_equal(st.pending_bytes, (int64_t)rows[1].body_len);
	assert_int_equal(st.oldest_pending_ms, T0 + 2000);
	assert_int_equal(st.last_seq, 3);
	assert_int_equal(st.last_ack_ms, T0 + 9000);
	assert_int_equal(st.last_acked_seq, 1);
	assert_int_equal(st.rejected, 1);
}

/*
 * Regression test (fixed bug in agent/lib/outbox/outbox.c outbox__stats): pending_bytes is documented
 * as "their body bytes" but is computed with SQL length(body), which counts
 * CHARACTERS of a TEXT value. Bodies with non-ASCII text (names, "Zoë",
 * Japanese product codes) are under-counted, so a disk-usage alarm based on
 * it fires late. Expected: the byte count (length(CAST(body AS BLOB))).
 * This test fails until fixed.
 */
static void stats_pending_bytes_counts_bytes(void **state)
{
	fx *f = *state;
	static const char body[] = "{\"member_id\":\"Zo\xc3\xab \xe6\x9d\xb1\xe4\xba\xac\",\"method\":\"qr\"}";
	outbox__row r;
	rowbuf b;
	make_row(&r, &b, 1, T0 + 1);
	r.body = body;
	r.body_len = sizeof(body) - 1;
	assert_int_equal(outbox__append(f->ob, &r, 1, T0), SCRM_OK);
	scrm_outbox_stats st = stats_of(f->ob);
	if (st.pending_bytes != (int64_t)(sizeof(body) - 1)) {
		print_error("regression: pending_bytes %lld, body is %zu bytes\n", (long long)st.pending_bytes,
			    sizeof(body) - 1);
		fail();
	}
}

/* ---- clock trust: outbox_clock_test.c ------------------------------- */

/* ---- disk full ------------------------------------------------------- */

/*
 * Two ways to fill the disk under the outbox, both ending in SQLite's
 * SQLITE_FULL:
 *
 *  1. The honest one: a child process enters a private mount namespace,
 *     mounts a 1 MiB tmpfs and fills it with a file, so SQLite's next write
 *     to the WAL fails with ENOSPC exactly as on a full SD card. It needs
 *     CAP_SYS_ADMIN (root in a container normally has it); without it the
 *     test is skipped, not failed.
 *  2. In-process, always available: `PRAGMA max_page_count` on the outbox's
 *     own connection. The pragma is per connection, so setting it on a second
 *     connection proves nothing; the test reaches the module's connection
 *     with sqlite3_auto_extension(), which SQLite calls for every connection
 *     the process opens — no test hook in agent/ is needed.
 *
 * Both check the same behaviour: SCRM_E_DISK_FULL, earlier events intact,
 * and the failed append consumes no seq.
 */

#define SKIP_EXIT 77

/* Row 99 with a body of `len` bytes (a small JSON object padded with
 * spaces); returns the body, which the caller frees (no cmocka). */
static char *make_big_row(outbox__row *r, rowbuf *rb, size_t len)
{
	char *big = malloc(len + 1);
	if (!big)
		abort();
	memset(big, ' ', len);
	memcpy(big, "{\"note\":\"big\"}", 14);
	big[len] = '\0';
	make_row(r, rb, 99, T0 + 10);
	r->body = big;
	r->body_len = len;
	return big;
}

/* Child side (no cmocka): mount a private tmpfs with `opts` at <dir>/<name>
 * and open an outbox on its "store" for "pos-01"; *filler is a path to fill
 * the tmpfs with. Returns 0, or the child's exit status after reporting on
 * `out` (SKIP_EXIT: no private tmpfs here). */
static int tmpfs_outbox(const char *dir, const char *name, const char *opts, int out, char **mnt, char **store,
			char **filler, outbox **ob)
{
	*mnt = tu_join(dir, name);
	if (mkdir(*mnt, 0700) != 0)
		return dprintf(out, "mkdir: %s", strerror(errno)), 1;
	if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
	    mount("scrm-unit", *mnt, "tmpfs", 0, opts) != 0)
		return dprintf(out, "cannot mount a private tmpfs (%s)", strerror(errno)), SKIP_EXIT;
	*store = tu_join(*mnt, "store");
	*filler = tu_join(*mnt, "filler");
	if (outbox__open(*store, "pos-01", 0, ob) != SCRM_OK)
		return dprintf(out, "open: %s", scrm_errmsg()), 1;
	return 0;
}

/* Write `path` until the filesystem refuses; returns that write's errno. */
static int fill_up(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	static char chunk[4096];
	memset(chunk, 'F', sizeof(chunk));
	while (write(fd, chunk, sizeof(chunk)) > 0)
		;
	int e = errno;
	close(fd);
	return e;
}

/* Child side of the tmpfs test: no cmocka here, report through `out`. */
static int disk_full_child(const char *dir, int out)
{
	char *mnt = NULL, *store = NULL, *filler = NULL;
	outbox *ob = NULL;
	int rc;
	if ((rc = tmpfs_outbox(dir, "tmpfs", "size=1m,mode=0700", out, &mnt, &store, &filler, &ob)) != 0)
		return rc;
	outbox__row rows[5];
	rowbuf b[5];
	for (int i = 0; i < 5; i++)
		make_row(&rows[i], &b[i], i, T0 + i);
	if (outbox__append(ob, rows, 5, T0) != SCRM_OK)
		return dprintf(out, "append before full: %s", scrm_errmsg()), 1;

	/* Fill the filesystem to the last byte. */
	int e = fill_up(filler);
	if (e != ENOSPC)
		return dprintf(out, "filling the tmpfs: %s", strerror(e)), 1;

	/* A 256 KiB event cannot fit in the WAL. */
	outbox__row r;
	rowbuf rb;
	make_big_row(&r, &rb, 256 * 1024); /* the child exits: not freed */
	rc = outbox__append(ob, &r, 1, T0);
	if (rc != SCRM_E_DISK_FULL)
		return dprintf(out, "append on a full disk returned %d (%s), want SCRM_E_DISK_FULL", rc, scrm_errmsg()),
		       1;
	if (strncmp(scrm_errmsg(), "outbox:", 7) != 0)
		return dprintf(out, "message \"%s\" does not say outbox", scrm_errmsg()), 1;
	if (r.seq != 0)
		return dprintf(out, "failed row reports seq %lld", (long long)r.seq), 1;

	/* Earlier events intact, nothing half-written. */
	scrm_outbox_stats st;
	if (outbox__stats(ob, &st) != SCRM_OK || st.pending != 5 || st.last_seq != 5)
		return dprintf(out, "after the failure: pending %lld last_seq %lld (%s)", (long long)st.pending,
			       (long long)st.last_seq, scrm_errmsg()),
		       1;

	/* Space comes back: the next event takes seq 6, not 7. */
	unlink(filler);
	make_row(&r, &rb, 6, T0 + 11);
	if ((rc = outbox__append(ob, &r, 1, T0)) != SCRM_OK || r.seq != 6)
		return dprintf(out, "append after freeing space: rc %d seq %lld (%s)", rc, (long long)r.seq,
			       scrm_errmsg()),
		       1;
	outbox__close(ob);

	/* Reopens cleanly and passes integrity_check. */
	if (outbox__open(store, NULL, 0, &ob) != SCRM_OK)
		return dprintf(out, "reopen: %s", scrm_errmsg()), 1;
	outbox__close(ob);
	sqlite3 *db = NULL;
	sqlite3_stmt *q = NULL;
	char *path = tu_join(store, OUTBOX_FILE);
	sqlite3_open(path, &db);
	if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &q, NULL) != SQLITE_OK ||
	    sqlite3_step(q) != SQLITE_ROW || strcmp((const char *)sqlite3_column_text(q, 0), "ok") != 0)
		return dprintf(out, "integrity_check failed"), 1;
	sqlite3_finalize(q);
	sqlite3_close(db);
	umount(mnt);
	return 0;
}

/* Issue 11, hole 11: on a full disk every ack's DELETE failed ("disk is
 * full": the WAL must grow to record it) and the agent resent everything at
 * each ack timeout until space returned. With the daemon's reserve the ack
 * goes through (the reserve is released, disk_full raised), browsing events
 * are refused while the disk is nearly full, a sale still fits, and the
 * reserve comes back with the space. Child side; no cmocka. */
static int reserve_child(const char *dir, int out)
{
	char *mnt = NULL, *store = NULL, *filler = NULL;
	outbox *ob = NULL;
	int rc, in_place = 0;
	if ((rc = tmpfs_outbox(dir, "tmpfs-r", "size=2m,mode=0700", out, &mnt, &store, &filler, &ob)) != 0)
		return rc;
	if (outbox__setting_set(ob, "disk_reserve_bytes", 262144) != SCRM_OK ||
	    outbox__reserve_ensure(ob, 262144, &in_place) != SCRM_OK || !in_place)
		return dprintf(out, "reserve: %s (in place %d)", scrm_errmsg(), in_place), 1;
	outbox__row rows[20];
	rowbuf b[20];
	for (int i = 0; i < 20; i++)
		make_row(&rows[i], &b[i], i, T0 + i);
	if (outbox__append(ob, rows, 20, T0) != SCRM_OK)
		return dprintf(out, "append before full: %s", scrm_errmsg()), 1;
	/* an empty WAL: the ack's frames need new blocks */
	if (outbox__scrub_wal(ob) != SCRM_OK)
		return dprintf(out, "truncate the WAL: %s", scrm_errmsg()), 1;
	fill_up(filler);
	/* The ack of the first ten: through, on the reserve. */
	const int64_t first[][2] = {{1, 10}};
	int64_t deleted = 0;
	if ((rc = outbox__ack(ob, first, 1, T0 + 100, &deleted)) != SCRM_OK || deleted != 10)
		return dprintf(out, "ack on a full disk: rc %d deleted %lld (%s)", rc, (long long)deleted, scrm_errmsg()), 1;
	sbuf al;
	sbuf__init(&al);
	if (outbox__alarms(ob, &al) != SCRM_OK || !strstr(al.p, "\"disk_full\""))
		return dprintf(out, "no disk_full alarm: %s", al.p ? al.p : "?"), 1;
	sbuf__free(&al);
	/* A scan is refused while the disk is nearly full; a sale is not. */
	outbox__row r;
	rowbuf rb;
	make_row(&r, &rb, 50, T0 + 50);
	rc = outbox__append(ob, &r, 1, T0);
	if (rc != SCRM_E_DISK_FULL || !strstr(scrm_errmsg(), "disk nearly full"))
		return dprintf(out, "scan on a nearly full disk: rc %d (%s)", rc, scrm_errmsg()), 1;
	static const char sale[] = "{\"order_id\":\"D-1\",\"total\":100}";
	make_row(&r, &rb, 51, T0 + 51);
	r.kind = "purchase";
	r.body = sale;
	r.body_len = sizeof(sale) - 1;
	if ((rc = outbox__append(ob, &r, 1, T0)) != SCRM_OK)
		return dprintf(out, "a sale on a nearly full disk: rc %d (%s)", rc, scrm_errmsg()), 1;
	/* Space returns: the reserve is made again, the alarm goes. */
	unlink(filler);
	if (outbox__reserve_ensure(ob, 262144, &in_place) != SCRM_OK || !in_place)
		return dprintf(out, "reserve again: %s", scrm_errmsg()), 1;
	sbuf__init(&al);
	if (outbox__alarms(ob, &al) != SCRM_OK || strstr(al.p, "\"disk_full\""))
		return dprintf(out, "disk_full still up: %s", al.p ? al.p : "?"), 1;
	sbuf__free(&al);
	make_row(&r, &rb, 52, T0 + 52);
	if ((rc = outbox__append(ob, &r, 1, T0)) != SCRM_OK)
		return dprintf(out, "a scan after space returned: %s", scrm_errmsg()), 1;
	outbox__close(ob);
	umount(mnt);
	return 0;
}

/* Run child(dir, pipe) in a forked process (it mounts a private tmpfs):
 * skip when it exits SKIP_EXIT (its message, then `skip_note`), fail with
 * its message when it exits non-zero. */
static void run_disk_child(int (*child)(const char *dir, int out), const char *dir, const char *skip_note)
{
	int fd;
	pid_t pid = tu_fork_piped(&fd);
	if (pid == 0)
		_exit(child(dir, fd));
	char msg[512] = "";
	size_t have = 0;
	ssize_t n;
	while ((n = read(fd, msg + have, sizeof(msg) - 1 - have)) > 0)
		have += (size_t)n;
	msg[have] = '\0';
	close(fd);
	int status = 0;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	if (WEXITSTATUS(status) == SKIP_EXIT) {
		print_message("skipping: %s%s\n", msg, skip_note);
		skip();
	}
	if (WEXITSTATUS(status) != 0) {
		print_error("%s\n", msg);
		fail();
	}
}

static void ack_on_a_full_disk_uses_the_reserve(void **state)
{
	fx *f = *state;
	run_disk_child(reserve_child, f->dir, "");
}

static void disk_full_on_a_full_filesystem(void **state)
{
	fx *f = *state;
	run_disk_child(disk_full_child, f->dir, "; the in-process disk-full test still runs");
}

static sqlite3 *last_opened;

static int remember_connection(sqlite3 *db, const char **err, const struct sqlite3_api_routines *api)
{
	(void)err;
	(void)api;
	last_opened = db;
	return SQLITE_OK;
}

static void exec_on(sqlite3 *db, const char *sql)
{
	char *err = NULL;
	if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
		print_error("%s: %s\n", sql, err);
		fail();
	}
}

static void disk_full_via_max_page_count(void **state)
{
	fx *f = *state;
	outbox__close(f->ob);
	f->ob = NULL;
	last_opened = NULL;
	assert_int_equal(sqlite3_auto_extension((void (*)(void))remember_connection), SQLITE_OK);
	int rc = outbox__open(f->store, NULL, 0, &f->ob);
	sqlite3_cancel_auto_extension((void (*)(void))remember_connection);
	assert_int_equal(rc, SCRM_OK);
	assert_non_null(last_opened);

	append_n(f->ob, 5, T0 + 1);
	char sql[64];
	sqlite3_stmt *q = NULL;
	assert_int_equal(sqlite3_prepare_v2(last_opened, "PRAGMA page_count", -1, &q, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(q), SQLITE_ROW);
	long long pages = sqlite3_column_int64(q, 0);
	sqlite3_finalize(q);
	snprintf(sql, sizeof(sql), "PRAGMA max_page_count = %lld", pages);
	exec_on(last_opened, sql);

	outbox__row r;
	rowbuf rb;
	char *big = make_big_row(&r, &rb, 64 * 1024);
	assert_non_null(big);
	assert_refused(outbox__append(f->ob, &r, 1, T0), SCRM_E_DISK_FULL, "outbox");
	assert_int_equal(r.seq, 0);

	scrm_outbox_stats st = stats_of(f->ob);
	assert_int_equal(st.pending, 5);
	assert_int_equal(st.last_seq, 5);
	int64_t seqs[8];
	assert_int_equal(pending_seqs(f->ob, seqs, 8), 5);

	/* The same big event goes in once space is back, as seq 6. */
	exec_on(last_opened, "PRAGMA max_page_count = 1073741823");
	assert_int_equal(outbox__append(f->ob, &r, 1, T0), SCRM_OK);
	assert_int_equal(r.seq, 6);
	free(big);
	char *check = tu_sql_text(f->db, "PRAGMA integrity_check");
	assert_string_equal(check, "ok");
	free(check);
}


/* The agent and a POS starting together both create the store: switching a
 * brand-new file to WAL returned BUSY without waiting (CI saw "PRAGMA
 * journal_mode=WAL: database is locked"). Both opens must succeed. */
static void concurrent_creation_both_succeed(void **state)
{
	fx *f = *state;
	for (int i = 0; i < 40; i++) {
		char name[32];
		snprintf(name, sizeof(name), "race%d", i);
		char *dir = tu_join(f->dir, name);
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			outbox *ob = NULL;
			int rc = outbox__open(dir, "pos-01", 5000, &ob);
			outbox__close(ob);
			_exit(rc == SCRM_OK ? 0 : 1);
		}
		outbox *ob = NULL;
		int rc = outbox__open(dir, "pos-01", 5000, &ob);
		if (rc != SCRM_OK)
			print_error("parent open: %s\n", scrm_errmsg());
		assert_int_equal(rc, SCRM_OK);
		outbox__close(ob);
		int status = 0;
		assert_int_equal(waitpid(pid, &status, 0), pid);
		assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
		free(dir);
	}
}

/* The SQL that tells kinds apart is made from kinds.def: the same text the
 * literals had (the partial index of existing stores must match the query
 * that evicts), and each kind is paid (and receipted) as the table says. */
static void kind_sql_from_the_table(void **state)
{
	fx *f = *state;
	struct outbox__kind_sql k;
	outbox__kind_sql(&k);
	assert_string_equal(k.paid, "('purchase', 'return', 'coupon_redeem')");
	assert_string_equal(k.keyed, "('purchase', 'return')");
	assert_string_equal(k.evict_class, "CASE kind WHEN 'reco_shown' THEN 0 WHEN 'member_scan' THEN 1 ELSE 2 END");
	assert_string_equal(k.order_key,
			    "json_extract(?2, CASE ?1 WHEN 'purchase' THEN '$.order_id' ELSE '$.return_id' END)");
	char *ddl = tu_sql_text(f->db, "SELECT sql FROM sqlite_master WHERE name = 'outbox_evictable'");
	assert_string_equal(ddl, "CREATE INDEX outbox_evictable ON outbox(CASE kind WHEN 'reco_shown' THEN 0 WHEN"
				 " 'member_scan' THEN 1 ELSE 2 END, seq) WHERE kind <> 'purchase' AND kind <> 'return' AND"
				 " kind <> 'coupon_redeem'");
	assert_string_equal(k.evictable, "kind <> 'purchase' AND kind <> 'return' AND kind <> 'coupon_redeem'");
	free(ddl);
	size_t n = 0;
#define EVENT_KIND(e_, v_, name_, paid_, evict_, json_, key_)                             \
	assert_int_equal(outbox__kind_paid(name_), paid_);                                 \
	assert_true(((key_) == NULL) == (outbox__kind_key(name_) == NULL));                \
	assert_int_equal(strstr(k.keyed, "'" name_ "'") != NULL, (key_) != NULL);          \
	assert_int_equal(strstr(k.paid, "'" name_ "'") != NULL, paid_);                    \
	assert_int_equal(strstr(k.evict_class, "'" name_ "'") != NULL, (evict_) < EVICT_OTHER); \
	n++;
#include "kinds.def"
	assert_true(n >= 5);
	assert_int_equal(outbox__kind_paid("no_such_kind"), 0);
	assert_null(outbox__kind_key("no_such_kind"));
}

/* ledger.h: what the guide and the cache read of the ledgers the insert
 * triggers keep — a member's redemptions through the store's handle, a
 * member's purchases and returns through a reader of the file. */
static int collect_use(void *ctx, const char *id, const char *coupon, const char *campaign)
{
	sbuf *b = ctx;
	sbuf__puts(b, id);
	sbuf__putc(b, '/');
	sbuf__puts(b, coupon);
	sbuf__putc(b, '/');
	sbuf__puts(b, campaign);
	sbuf__putc(b, ';');
	return SCRM_OK;
}

static int stop_at_first(void *ctx, const char *id, const char *coupon, const char *campaign)
{
	(void)id, (void)coupon, (void)campaign;
	++*(int *)ctx;
	return SCRM_E_NOMEM;
}

static void ledger_queries_for_guide_and_cache(void **state)
{
	fx *f = *state;
	static const struct {
		const char *id, *kind, *body;
	} ev[] = {
		{"0190a000-0000-7000-8000-000000000101", "purchase",
		 "{\"order_id\":\"o1\",\"lines\":[{\"sku\":\"A\",\"qty\":1,\"unit_price\":500,\"discount\":0},"
		 "{\"sku\":\"B\",\"qty\":1,\"unit_price\":250,\"discount\":0}],\"discount\":0,\"total\":750,"
		 "\"currency\":\"EUR\",\"payment\":\"cash\",\"member_id\":\"m7\"}"},
		{"0190a000-0000-7000-8000-000000000102", "return",
		 "{\"return_id\":\"r1\",\"order_id\":\"o1\",\"lines\":[{\"sku\":\"B\",\"qty\":1,\"unit_price\":250,"
		 "\"discount\":0}],\"total\":250,\"currency\":\"EUR\",\"refund_method\":\"cash\",\"member_id\":\"m7\"}"},
		{"0190a000-0000-7000-8000-000000000103", "coupon_redeem",
		 "{\"coupon\":\"C-1\",\"campaign\":\"spring\",\"member_id\":\"m7\",\"order_id\":\"o1\",\"value\":100,"
		 "\"currency\":\"EUR\",\"mode\":\"online\"}"},
		{"0190a000-0000-7000-8000-000000000104", "coupon_redeem",
		 "{\"campaign\":\"welcome\",\"member_id\":\"m7\",\"order_id\":\"o2\",\"value\":50,"
		 "\"currency\":\"EUR\",\"mode\":\"offline\"}"},
		{"0190a000-0000-7000-8000-000000000105", "purchase",
		 "{\"order_id\":\"o3\",\"lines\":[{\"sku\":\"C\",\"qty\":1,\"unit_price\":90,\"discount\":0}],"
		 "\"discount\":0,\"total\":90,\"currency\":\"EUR\",\"payment\":\"cash\",\"member_id\":\"m8\"}"},
	};
	outbox__row rows[5];
	memset(rows, 0, sizeof(rows));
	for (size_t i = 0; i < 5; i++) {
		rows[i].id = ev[i].id;
		rows[i].kind = ev[i].kind;
		rows[i].wall_ms = T0 + 1000 * (int64_t)(i + 1);
		rows[i].mono_ms = 1000 + (int64_t)i;
		rows[i].boot = BOOT;
		rows[i].body = ev[i].body;
		rows[i].body_len = strlen(ev[i].body);
	}
	assert_int_equal(outbox__append(f->ob, rows, 5, T0), SCRM_OK);

	sbuf b;
	sbuf__init(&b);
	assert_int_equal(outbox__member_redemptions(f->ob, "m7", collect_use, &b), SCRM_OK);
	assert_string_equal(b.p, "0190a000-0000-7000-8000-000000000103/C-1/spring;"
				 "0190a000-0000-7000-8000-000000000104//welcome;");
	sbuf__reset(&b);
	assert_int_equal(outbox__member_redemptions(f->ob, "m8", collect_use, &b), SCRM_OK);
	assert_int_equal(b.len, 0);
	int calls = 0;
	assert_int_equal(outbox__member_redemptions(f->ob, "m7", stop_at_first, &calls), SCRM_E_NOMEM);
	assert_int_equal(calls, 1);
	sbuf__free(&b);

	outbox__activity *a = NULL;
	outbox__activity_row row;
	outbox__activity_open(f->store, &a);
	assert_non_null(a);
	assert_int_equal(outbox__activity_query(a, "m7", T0), 0);
	assert_int_equal(outbox__activity_next(a, &row), 1); /* newest first */
	assert_int_equal(row.seq, rows[1].seq);
	assert_string_equal(row.kind, "return");
	assert_int_equal(row.amount, -250);
	assert_string_equal(row.skus, "[\"B\"]");
	assert_int_equal(outbox__activity_next(a, &row), 1);
	assert_int_equal(row.wall_ms, T0 + 1000);
	assert_string_equal(row.kind, "purchase");
	assert_int_equal(row.amount, 750);
	assert_string_equal(row.skus, "[\"A\",\"B\"]");
	assert_int_equal(outbox__activity_next(a, &row), 0);
	/* after_ms excludes, and the query can be asked again */
	assert_int_equal(outbox__activity_query(a, "m7", T0 + 1000), 0);
	assert_int_equal(outbox__activity_next(a, &row), 1);
	assert_string_equal(row.kind, "return");
	assert_int_equal(outbox__activity_next(a, &row), 0);
	outbox__activity_close(a);

	/* No outbox: no reader, nothing to read. */
	char *none = tu_join(f->dir, "nowhere");
	outbox__activity_open(none, &a);
	assert_null(a);
	assert_int_equal(outbox__activity_query(NULL, "m7", 0), -1);
	free(none);
	/* An outbox from before schema v2: nothing local yet. */
	char *old = tu_join(f->dir, "v1");
	char *old_db = tu_join(old, OUTBOX_FILE);
	assert_int_equal(mkdir(old, 0700), 0);
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(old_db, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "CREATE TABLE device(id INTEGER PRIMARY KEY); PRAGMA user_version = 1;", NULL,
				      NULL, NULL),
			 SQLITE_OK);
	sqlite3_close(db);
	outbox__activity_open(old, &a);
	assert_non_null(a);
	assert_int_equal(outbox__activity_query(a, "m7", 0), -1);
	outbox__activity_close(a);
	free(old_db);
	free(old);
}

int main(int argc, char **argv)
{
	tu_select(argc, argv);
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(create_then_reopen_keeps_device),
		T(concurrent_creation_both_succeed),
		T(created_directories_are_private),
		T(files_are_group_writable_whatever_the_umask),
		T(device_mismatch_refused),
		T(open_missing_store_without_device_creates_nothing),
		T(invalid_device_id_refused_and_nothing_created),
		T(newer_schema_refused),
		T(schema_v2_store_upgrades),
		T(schema_v3_store_upgrades),
		T(schema_v6_store_upgrades),
		T(totals_follow_every_path),
		T(receipts_pending_kept_and_rolled_back),
		T(schema_v7_store_upgrades),
		T(rules_applied_hinted_or_not),
		T(till_waiting_is_seen_by_the_daemon),
		T(ack_unsynced_comes_back_whole),
		T(member_history_follows_the_rows),
		T(not_a_database_refused),
		T(append_assigns_consecutive_seqs_across_calls),
		T(two_handles_share_one_counter),
		T(concurrent_handles_never_share_a_seq),
		T(acks_never_make_seqs_reused),
		T(read_batch_in_seq_order_and_valid_json),
		T(read_batch_respects_max_bytes),
		T(read_batch_skips_acked_and_rejected),
		T(ack_deletes_exactly_the_ranges),
		T(reject_moves_event_to_rejected_table),
		T(stats_figures),
		T(stats_pending_bytes_counts_bytes),
		T(disk_full_on_a_full_filesystem),
		T(ack_on_a_full_disk_uses_the_reserve),
		T(disk_full_via_max_page_count),
		T(kind_sql_from_the_table),
		T(ledger_queries_for_guide_and_cache),
	};
	return cmocka_run_group_tests_name("outbox", tests, NULL, NULL);
}
