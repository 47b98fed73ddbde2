/* SPDX-License-Identifier: Apache-2.0 */
/*
 * batch_test: scrm_record_batch (include/scrm/scrm.h) and the group commit
 * around it (agent/lib/capture/capture.c), through the public API as a POS
 * imports a till's journal: every item decided on its own with its receipt
 * or its reason, one transaction (one WAL fsync, counted by the faultvfs
 * shim), retries idempotent within and across batches, nothing written when
 * the commit fails, and single calls from other threads interleaving with
 * batches and with callers that need the connection itself (stats).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <scrm/scrm.h>

#include "faultvfs.h"
#include "testutil.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct fx {
	char *dir, *store, *db;
	scrm_store *s;
} fx;

static int setup(void **state)
{
	fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	assert_int_equal(faultvfs_install(1), SQLITE_OK);
	faultvfs_reset();
	tu_store_paths("store", "outbox.db", &f->dir, &f->store, &f->db);
	scrm_store_options o = {.device_id = "pos-01"};
	assert_int_equal(scrm_store_open(f->store, &o, &f->s), SCRM_OK);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fx *f = *state;
	scrm_store_close(f->s);
	faultvfs_reset();
	tu_store_paths_free(f->dir, f->store, f->db);
	free(f);
	return 0;
}

/* A journal of n sales: order ids "<prefix>-<i>", sale i of i+1 units. */
typedef struct journal {
	scrm_line line[64];
	scrm_purchase p[64];
	char order[64][32];
	scrm_record_item item[64];
	scrm_record_result res[64];
} journal;

static journal *journal_new(const char *prefix, size_t n)
{
	journal *j = calloc(1, sizeof(*j));
	assert_non_null(j);
	assert_true(n <= 64);
	for (size_t i = 0; i < n; i++) {
		snprintf(j->order[i], sizeof(j->order[i]), "%s-%zu", prefix, i);
		j->line[i] = (scrm_line){.sku = "85123A", .qty = (int64_t)i + 1, .unit_price = 255};
		j->p[i] = (scrm_purchase){.order_id = j->order[i], .lines = &j->line[i], .n_lines = 1,
					  .total = 255 * ((int64_t)i + 1), .currency = "GBP", .payment = "card",
					  .member_id = i % 2 ? "17850" : NULL};
		j->item[i] = (scrm_record_item){.purchase = &j->p[i]};
	}
	return j;
}

static int64_t syncs(void)
{
	faultvfs_counts c;
	faultvfs_get_counts(&c);
	return c.syncs;
}

/* Each kind through the batch, one WAL fsync for all, consecutive seqs. */
static void batch_records_every_item_in_one_transaction(void **state)
{
	fx *f = *state;
	journal *j = journal_new("J", 3);
	scrm_line rl = {.sku = "85123A", .qty = 1, .unit_price = 255};
	scrm_return ret = {.return_id = "R-1", .order_id = "J-0", .lines = &rl, .n_lines = 1, .total = 255,
			   .currency = "GBP", .refund_method = "card"};
	scrm_member_scan scan = {.member_id = "17850", .method = "qr"};
	static const char json[] = "{\"kind\":\"member_scan\",\"member_id\":\"m-2\",\"method\":\"card\"}";
	j->item[3] = (scrm_record_item){.ret = &ret};
	j->item[4] = (scrm_record_item){.scan = &scan};
	j->item[5] = (scrm_record_item){.json = json, .json_len = sizeof(json) - 1};

	int64_t before = syncs();
	assert_int_equal(scrm_record_batch(f->s, j->item, 6, j->res), SCRM_OK);
	/* WAL mode, synchronous=FULL: one commit is one sync of the WAL. */
	assert_int_equal(syncs() - before, 1);
	for (int i = 0; i < 6; i++) {
		assert_int_equal(j->res[i].rc, SCRM_OK);
		assert_int_equal(j->res[i].receipt.seq, i + 1);
		assert_int_equal(strlen(j->res[i].receipt.event_id), 36);
		assert_string_equal(j->res[i].error, "");
	}
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM outbox"), 6);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM outbox WHERE kind = 'return'"), 1);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM outbox WHERE kind = 'member_scan'"), 2);
	/* the member's sale is in their local history as a single call's is:
	 * a pending row with its member (schema v7; ledger_read.c adds it to
	 * member_activity's), moved to the ledger by the ack */
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM outbox WHERE member = '\"17850\"'"), 1);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM member_activity WHERE member_id = '17850'"), 0);
	free(j);
}

/* A bad item is refused with the item's index and the field; the others
 * are recorded all the same. */
static void batch_refuses_items_one_by_one(void **state)
{
	fx *f = *state;
	journal *j = journal_new("K", 4);
	j->line[1].qty = 0;                       /* invalid */
	j->item[2] = (scrm_record_item){0};       /* nothing set */
	j->item[3].json = "{\"kind\":\"member_scan\"}"; /* two set */
	j->item[3].json_len = strlen(j->item[3].json);
	assert_int_equal(scrm_record_batch(f->s, j->item, 4, j->res), SCRM_OK);
	assert_int_equal(j->res[0].rc, SCRM_OK);
	assert_int_equal(j->res[1].rc, SCRM_E_INVALID);
	assert_non_null(strstr(j->res[1].error, "items[1]: "));
	assert_non_null(strstr(j->res[1].error, "qty"));
	assert_int_equal(j->res[2].rc, SCRM_E_INVALID);
	assert_non_null(strstr(j->res[2].error, "items[2]: exactly one of purchase, ret, scan and json"));
	assert_non_null(strstr(j->res[2].error, "0 are"));
	assert_int_equal(j->res[3].rc, SCRM_E_INVALID);
	assert_non_null(strstr(j->res[3].error, "2 are"));
	assert_int_equal(j->res[0].receipt.seq, 1);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM outbox"), 1);
	free(j);
}

/* The same batch again (its outcome was unknown) gives the first receipts
 * and writes nothing; a sale twice in one batch is one sale; another sale
 * under a used order_id is refused for itself, naming its own order. */
static void batch_retries_are_idempotent(void **state)
{
	fx *f = *state;
	journal *j = journal_new("L", 5);
	journal *again = journal_new("L", 5);
	assert_int_equal(scrm_record_batch(f->s, j->item, 5, j->res), SCRM_OK);
	assert_int_equal(scrm_record_batch(f->s, again->item, 5, again->res), SCRM_OK);
	for (int i = 0; i < 5; i++) {
		assert_int_equal(again->res[i].rc, SCRM_OK);
		assert_int_equal(again->res[i].receipt.seq, j->res[i].receipt.seq);
		assert_string_equal(again->res[i].receipt.event_id, j->res[i].receipt.event_id);
		assert_true(again->res[i].receipt.wall_ms == j->res[i].receipt.wall_ms);
	}
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM outbox"), 5);

	/* within one batch: items 1 and 3 the same new sale, 0 and 2 other
	 * sales under L-0 and L-2 (conflicts), 4 new */
	journal *mix = journal_new("M", 5);
	snprintf(mix->order[0], sizeof(mix->order[0]), "L-0");
	snprintf(mix->order[2], sizeof(mix->order[2]), "L-2");
	mix->line[0].qty = 40, mix->p[0].total = 40 * 255;
	mix->line[2].qty = 41, mix->p[2].total = 41 * 255;
	mix->p[3] = mix->p[1];
	assert_int_equal(scrm_record_batch(f->s, mix->item, 5, mix->res), SCRM_OK);
	assert_int_equal(mix->res[0].rc, SCRM_E_CONFLICT);
	assert_int_equal(mix->res[2].rc, SCRM_E_CONFLICT);
	/* each refusal names its own order, not the last one refused */
	assert_non_null(strstr(mix->res[0].error, "\"L-0\""));
	assert_non_null(strstr(mix->res[2].error, "\"L-2\""));
	assert_int_equal(mix->res[1].rc, SCRM_OK);
	assert_int_equal(mix->res[3].rc, SCRM_OK);
	assert_int_equal(mix->res[3].receipt.seq, mix->res[1].receipt.seq);
	assert_string_equal(mix->res[3].receipt.event_id, mix->res[1].receipt.event_id);
	assert_int_equal(mix->res[4].rc, SCRM_OK);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM outbox"), 7);
	free(j);
	free(again);
	free(mix);
}

static void batch_argument_checks(void **state)
{
	fx *f = *state;
	journal *j = journal_new("N", 1);
	j->res[0].rc = 12345;
	assert_int_equal(scrm_record_batch(NULL, j->item, 1, j->res), SCRM_E_INVALID);
	assert_int_equal(scrm_record_batch(f->s, NULL, 1, j->res), SCRM_E_INVALID);
	assert_int_equal(scrm_record_batch(f->s, j->item, 1, NULL), SCRM_E_INVALID);
	assert_int_equal(scrm_record_batch(f->s, j->item, SCRM_MAX_BATCH + 1, j->res), SCRM_E_INVALID);
	assert_non_null(strstr(scrm_errmsg(), "n: at most 10000"));
	assert_int_equal(j->res[0].rc, 12345); /* untouched */
	assert_int_equal(scrm_record_batch(f->s, NULL, 0, NULL), SCRM_OK);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM outbox"), 0);
	free(j);
}

/* The disk refuses the commit's fsync: the call says so for the batch and
 * every item, and a restart finds none of it or all of it — sent again,
 * the batch gives one sale per order either way. */
static void batch_commit_failure_is_reported_for_every_item(void **state)
{
	fx *f = *state;
	journal *j = journal_new("P", 4);
	faultvfs_arm(FAULTVFS_SYNC, 1, FAULTVFS_EIO, 0);
	int rc = scrm_record_batch(f->s, j->item, 4, j->res);
	faultvfs_disarm();
	assert_int_not_equal(rc, SCRM_OK);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(j->res[i].rc, rc);
		assert_non_null(strstr(j->res[i].error, "not recorded: "));
	}
	/* the POS retries the whole batch */
	journal *again = journal_new("P", 4);
	assert_int_equal(scrm_record_batch(f->s, again->item, 4, again->res), SCRM_OK);
	for (int i = 0; i < 4; i++)
		assert_int_equal(again->res[i].rc, SCRM_OK);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(DISTINCT json_extract(body, '$.order_id')) FROM outbox"), 4);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM outbox"), 4);
	free(j);
	free(again);
}

/* ---- concurrency ---- */

struct till {
	scrm_store *s;
	int id, n, failures;
	int64_t seq[200];
};

static void *till_main(void *arg)
{
	struct till *t = arg;
	for (int i = 0; i < t->n; i++) {
		char order[32];
		scrm_receipt r;
		scrm_line line = {.sku = "85123A", .qty = 1, .unit_price = 255};
		scrm_purchase p = {.order_id = order, .lines = &line, .n_lines = 1, .total = 255, .currency = "GBP",
				   .payment = "cash"};
		snprintf(order, sizeof(order), "T%d-%d", t->id, i);
		if (scrm_record_purchase(t->s, &p, &r) != SCRM_OK)
			t->failures++;
		else
			t->seq[i] = r.seq;
	}
	return NULL;
}

static void *importer_main(void *arg)
{
	struct till *t = arg;
	for (int b = 0; b < t->n; b++) {
		char prefix[16];
		snprintf(prefix, sizeof(prefix), "I%d", b);
		journal *j = journal_new(prefix, 40);
		if (!j || scrm_record_batch(t->s, j->item, 40, j->res) != SCRM_OK)
			t->failures++;
		for (int i = 0; j && i < 40; i++)
			t->failures += j->res[i].rc != SCRM_OK;
		free(j);
	}
	return NULL;
}

static void *stats_main(void *arg)
{
	struct till *t = arg;
	for (int i = 0; i < t->n; i++) {
		scrm_outbox_stats st;
		if (scrm_outbox_get_stats(t->s, &st) != SCRM_OK)
			t->failures++;
	}
	return NULL;
}

/* Eight tills, an importer and a caller of scrm_outbox_get_stats (which
 * needs the connection to itself) on one handle: every sale recorded once
 * with its own seq, nobody starved. */
static void tills_imports_and_stats_share_one_handle(void **state)
{
	fx *f = *state;
	static struct till t[10];
	pthread_t th[10];
	memset(t, 0, sizeof(t));
	for (int i = 0; i < 10; i++) {
		t[i] = (struct till){.s = f->s, .id = i, .n = i < 8 ? 200 : 20};
		void *(*fn)(void *) = i < 8 ? till_main : i == 8 ? importer_main : stats_main;
		assert_int_equal(pthread_create(&th[i], NULL, fn, &t[i]), 0);
	}
	for (int i = 0; i < 10; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	for (int i = 0; i < 10; i++)
		assert_int_equal(t[i].failures, 0);
	const int total = 8 * 200 + 20 * 40;
	assert_int_equal(tu_sql_int(f->db, "SELECT count(*) FROM outbox"), total);
	assert_int_equal(tu_sql_int(f->db, "SELECT count(DISTINCT seq) FROM outbox"), total);
	assert_int_equal(tu_sql_int(f->db, "SELECT max(seq) FROM outbox"), total);
	/* each till's receipts are its own rows */
	for (int i = 0; i < 8; i++)
		for (int k = 1; k < 200; k++)
			assert_true(t[i].seq[k] > t[i].seq[k - 1]);
}

int main(int argc, char **argv)
{
	tu_select(argc, argv);
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(batch_records_every_item_in_one_transaction),
		T(batch_refuses_items_one_by_one),
		T(batch_retries_are_idempotent),
		T(batch_argument_checks),
		T(batch_commit_failure_is_reported_for_every_item),
		T(tills_imports_and_stats_share_one_handle),
	};
	return cmocka_run_group_tests_name("batch", tests, NULL, NULL);
}
