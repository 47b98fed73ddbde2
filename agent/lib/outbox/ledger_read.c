/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outbox ledger, read side for other processes' modules (ledger.h): a
 * read-only reader of a member's local sales (member_activity and, since
 * schema v7, their pending rows in outbox) on a store's outbox.db that
 * needs nothing else of the outbox — the customer cache opens it beside
 * its own database (and fuzz_cache builds it alone).
 */
#include "ledger.h"
#include "schema_sql.h"
#include "seqmap.h"

#include "err.h"
#include "quarantine.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Schema v7 writes member_activity when a sale leaves the queue (an ack),
 * so an index on member_id would put random pages into every ack's
 * transaction, which a till waits for. Instead each reader keeps an index
 * of its own in memory: hash of member_id -> seq, of the rows of both
 * places a member's sale can be (a pending row of outbox, with its member;
 * a row of member_activity), caught up at each query with the seqs above
 * the newest it saw. A sale keeps its seq when it moves, seqs are given
 * in commit order, and every seq up to the newest of a snapshot is in one
 * of the two (or gone for good), so one watermark over both finds every
 * row once. An entry is a hint: the row is read and its member compared
 * (an erasure, a prune, a rejection without a ledger row leave stale
 * entries). Rows put back with old seqs (`scrmctl outbox recover`) and an
 * index grown past twice its last size make it start over. */
#define ACTIVITY_MAX 200

struct activity_row {
	int64_t seq, wall_ms, amount;
	char kind[16];
	char *skus; /* owned */
};

struct outbox__activity {
	sqlite3 *db;
	int mode; /* 0 not known yet, 1 indexed (schema v7), 2 member_activity alone (older) */
	sqlite3_stmt *q; /* mode 2 */
	sqlite3_stmt *new_act, *new_out, *get_act, *get_out, *mark;
	seqmap index; /* owned: member_id -> seq, of the rows up to seq `seen` */
	int64_t seen, recovered;
	struct activity_row rows[ACTIVITY_MAX];
	size_t nrows, at;
};

void outbox__activity_open(const char *dir, outbox__activity **out)
{
	char path[4200];
	sqlite3 *db = NULL;
	*out = NULL;
	snprintf(path, sizeof(path), "%s/" OUTBOX_FILE, dir);
	if (access(path, F_OK) == 0 &&
	    sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) == SQLITE_OK) {
		sqlite3_busy_timeout(db, 1000);
	} else if (db) {
		sqlite3_close(db);
		return;
	} else {
		return;
	}
	if (!(*out = calloc(1, sizeof(**out)))) {
		quarantine__close_detached(db);
		return;
	}
	(*out)->db = db;
}

static void forget(outbox__activity *a)
{
	seqmap__clear(&a->index);
	a->seen = 0;
}

static int prepare(outbox__activity *a)
{
	static const char *const v7[] = {
		"SELECT seq, member_id FROM member_activity WHERE seq > ?1",
		"SELECT seq, member ->> '$' FROM outbox WHERE seq > ?1 AND member IS NOT NULL",
		"SELECT wall_ms, kind, amount, skus, member_id FROM member_activity WHERE seq = ?1",
		"SELECT wall_ms, kind, " MEMBER_ACTIVITY_OF("") ", member ->> '$' FROM outbox WHERE seq = ?1 AND set_aside IS NULL",
		"SELECT coalesce((SELECT max(seq) FROM outbox), 0), coalesce((SELECT max(seq) FROM member_activity), 0),"
		" coalesce((SELECT max(rowid) FROM recovered), 0)"};
	sqlite3_stmt **st[] = {&a->new_act, &a->new_out, &a->get_act, &a->get_out, &a->mark};
	int ok = 1;
	for (size_t i = 0; i < sizeof(st) / sizeof(st[0]) && ok; i++)
		ok = sqlite3_prepare_v3(a->db, v7[i], -1, SQLITE_PREPARE_PERSISTENT, st[i], NULL) == SQLITE_OK;
	if (ok) {
		a->mode = 1;
		return 0;
	}
	for (size_t i = 0; i < sizeof(st) / sizeof(st[0]); i++) {
		sqlite3_finalize(*st[i]);
		*st[i] = NULL;
	}
	/* an outbox from before schema v7: the ledger holds every sale */
	if (sqlite3_prepare_v3(a->db,
			       "SELECT seq, wall_ms, kind, amount, skus FROM member_activity"
			       " WHERE member_id = ?1 AND wall_ms > ?2 ORDER BY seq DESC LIMIT 200", /* ACTIVITY_MAX */
			       -1, SQLITE_PREPARE_PERSISTENT, &a->q, NULL) != SQLITE_OK) {
		err__set(SCRM_E_IO, "outbox: member activity: %s", sqlite3_errmsg(a->db));
		return -1; /* an outbox from before schema v2: nothing local yet */
	}
	a->mode = 2;
	return 0;
}

/* The rows above the watermark, from both places (in the caller's read
 * transaction). */
static int catch_up(outbox__activity *a)
{
	int64_t top = 0, recovered = 0;
	if (sqlite3_step(a->mark) != SQLITE_ROW) {
		sqlite3_reset(a->mark);
		return -1;
	}
	top = sqlite3_column_int64(a->mark, 0);
	if (sqlite3_column_int64(a->mark, 1) > top)
		top = sqlite3_column_int64(a->mark, 1);
	recovered = sqlite3_column_int64(a->mark, 2);
	sqlite3_reset(a->mark);
	if (recovered != a->recovered || seqmap__stale(&a->index, 0))
		forget(a);
	const int rebuild = a->seen == 0;
	sqlite3_stmt *scans[] = {a->new_act, a->new_out};
	for (size_t i = 0; i < 2; i++) {
		int rc;
		sqlite3_bind_int64(scans[i], 1, a->seen);
		while ((rc = sqlite3_step(scans[i])) == SQLITE_ROW) {
			const char *m = (const char *)sqlite3_column_text(scans[i], 1);
			if (m && seqmap__put(&a->index, seqmap__hash(m, NULL), sqlite3_column_int64(scans[i], 0))) {
				rc = SQLITE_NOMEM;
				break;
			}
		}
		sqlite3_reset(scans[i]);
		if (rc != SQLITE_DONE) {
			forget(a);
			return -1;
		}
	}
	a->seen = top;
	a->recovered = recovered;
	if (rebuild)
		a->index.built = a->index.n;
	return 0;
}

static int cmp_desc(const void *x, const void *y)
{
	int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
	return a < b ? 1 : a > b ? -1 : 0;
}

static void clear_rows(outbox__activity *a)
{
	for (size_t i = 0; i < a->nrows; i++)
		free(a->rows[i].skus);
	a->nrows = a->at = 0;
}

/* The row at seq in st (get_act or get_out), if it is member's and newer
 * than after_ms: 1 kept, 0 not, -1 failed. */
static int take(outbox__activity *a, sqlite3_stmt *st, int64_t seq, const char *member, int64_t after_ms)
{
	int rc, kept = 0;
	sqlite3_bind_int64(st, 1, seq);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		const char *m = (const char *)sqlite3_column_text(st, 4), *kind = (const char *)sqlite3_column_text(st, 1);
		const char *skus = (const char *)sqlite3_column_text(st, 3);
		kept = m && strcmp(m, member) == 0 ? 1 : -2;
		if (kept == 1 && sqlite3_column_int64(st, 0) > after_ms) {
			struct activity_row *r = &a->rows[a->nrows];
			r->seq = seq;
			r->wall_ms = sqlite3_column_int64(st, 0);
			r->amount = sqlite3_column_int64(st, 2);
			snprintf(r->kind, sizeof(r->kind), "%s", kind ? kind : "");
			r->skus = skus ? strdup(skus) : NULL;
			a->nrows++;
		}
	} else if (rc != SQLITE_DONE) {
		kept = -1;
	}
	sqlite3_reset(st);
	return kept;
}

int outbox__activity_query(outbox__activity *a, const char *member_id, int64_t after_ms)
{
	int64_t *seqs = NULL;
	size_t nseqs = 0, capseqs = 0;
	int rc = -1;
	if (!a)
		return -1;
	clear_rows(a);
	if (!a->mode && prepare(a))
		return -1;
	if (a->mode == 2) {
		sqlite3_reset(a->q);
		sqlite3_bind_text(a->q, 1, member_id, -1, SQLITE_STATIC);
		sqlite3_bind_int64(a->q, 2, after_ms);
		return 0;
	}
	/* one snapshot for the catch-up and the rows */
	if (sqlite3_exec(a->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
		return -1;
	if (catch_up(a))
		goto out;
	const uint64_t h = seqmap__hash(member_id, NULL);
	size_t at = 0;
	int64_t seq;
	while (seqmap__next(&a->index, h, &at, &seq)) {
		if (nseqs == capseqs) {
			size_t nc = capseqs ? capseqs * 2 : 64;
			int64_t *ns = realloc(seqs, nc * sizeof(*ns));
			if (!ns)
				goto out;
			seqs = ns;
			capseqs = nc;
		}
		seqs[nseqs++] = seq;
	}
	if (nseqs)
		qsort(seqs, nseqs, sizeof(*seqs), cmp_desc);
	for (size_t i = 0; i < nseqs && a->nrows < ACTIVITY_MAX; i++) {
		if (i && seqs[i] == seqs[i - 1])
			continue;
		/* acknowledged (the ledger), else still pending (the queue) */
		int k = take(a, a->get_act, seqs[i], member_id, after_ms);
		if (k == 0)
			k = take(a, a->get_out, seqs[i], member_id, after_ms);
		if (k == -1)
			goto out;
	}
	rc = 0;
out:
	sqlite3_exec(a->db, "COMMIT", NULL, NULL, NULL);
	free(seqs);
	if (rc)
		clear_rows(a);
	return rc;
}

int outbox__activity_next(outbox__activity *a, outbox__activity_row *row)
{
	if (a->mode == 1) {
		if (a->at >= a->nrows)
			return 0;
		const struct activity_row *r = &a->rows[a->at++];
		row->seq = r->seq;
		row->wall_ms = r->wall_ms;
		row->kind = r->kind;
		row->amount = r->amount;
		row->skus = r->skus;
		return 1;
	}
	if (sqlite3_step(a->q) != SQLITE_ROW) {
		sqlite3_reset(a->q);
		return 0;
	}
	row->seq = sqlite3_column_int64(a->q, 0);
	row->wall_ms = sqlite3_column_int64(a->q, 1);
	row->kind = (const char *)sqlite3_column_text(a->q, 2);
	row->amount = sqlite3_column_int64(a->q, 3);
	row->skus = (const char *)sqlite3_column_text(a->q, 4);
	return 1;
}

void outbox__activity_close(outbox__activity *a)
{
	if (!a)
		return;
	sqlite3_stmt *all[] = {a->q, a->new_act, a->new_out, a->get_act, a->get_out, a->mark};
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		sqlite3_finalize(all[i]);
	clear_rows(a);
	seqmap__free(&a->index);
	/* A reader of the outbox never checkpoints or deletes its -wal: that
	 * is the outbox's business (and the file may have been swapped). */
	quarantine__close_detached(a->db);
	free(a);
}
