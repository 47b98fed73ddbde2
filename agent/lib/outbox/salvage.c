/* SPDX-License-Identifier: Apache-2.0 */
/*
 * salvage: copy what can be read of a damaged outbox (see salvage.h).
 *
 * Reading a damaged file: every statement on `old` may fail at any step
 * with SQLITE_CORRUPT (or IOERR). The walk never trusts a scan past its
 * first error; it asks for one key at a time:
 *   key_after(k)  SELECT rowid ... WHERE rowid > k ORDER BY rowid LIMIT 1
 * which descends the b-tree to the leaf holding k+1. If that leaf (or an
 * interior page on the way) is damaged, probing k+2, k+3, k+5, k+9, ...
 * finds a key past the damage, and a binary search back between the last
 * failing and the first working probe finds the first key past it. A row
 * whose key reads but whose content does not (a damaged overflow page) is
 * counted and stepped over alone.
 */
#include "salvage.h"

#include "err.h"
#include "outbox_int.h"
#include "schema_sql.h"

#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

#define MAX_KEY 9223372036854775807LL

/* The next rowid of `t` above k: 1 (found, *next), 0 (none), -1 (unreadable). */
static int key_after(sqlite3_stmt *q, int64_t k, int64_t *next)
{
	sqlite3_reset(q);
	sqlite3_bind_int64(q, 1, k);
	int rc = sqlite3_step(q);
	if (rc == SQLITE_ROW) {
		*next = sqlite3_column_int64(q, 0);
		sqlite3_reset(q);
		return 1;
	}
	sqlite3_reset(q);
	return rc == SQLITE_DONE ? 0 : -1;
}

/* After key_after(k) failed: the smallest k' > k from which the walk can go
 * on (key_after(k') works), or -1 if none up to the largest key. SQLite
 * seeks "rowid > k'" by landing on k' first, so a row with rowid k' itself
 * (the first past the damage) is not returned by key_after(k'): the caller
 * tries it alone. */
static int64_t skip_damage(sqlite3_stmt *q, int64_t k)
{
	int64_t bad = k, good = -1, next;
	/* exponential probes: k+1, k+2, k+4, ... (as "rowid > k + step") */
	for (int64_t step = 1; step > 0 && k <= MAX_KEY - step; step *= 2) {
		if (key_after(q, k + step, &next) >= 0) {
			good = k + step;
			break;
		}
		bad = k + step;
		if (step > MAX_KEY / 2)
			break;
	}
	if (good < 0)
		return -1;
	/* the first working probe point after the last failing one */
	while (good - bad > 1) {
		int64_t mid = bad + (good - bad) / 2;
		if (key_after(q, mid, &next) >= 0)
			good = mid;
		else
			bad = mid;
	}
	return good;
}

/* The walk: the next key above *k whose row `row` (bound to the key as ?1)
 * can be looked at: 1 with *k = that key, 0 at the end. Damaged ranges on
 * the way are stepped over (counted in *skipped). */
static int walk_next(sqlite3_stmt *keys, sqlite3_stmt *row, int64_t *k, int64_t *skipped)
{
	int64_t next;
	for (;;) {
		int f = key_after(keys, *k, &next);
		if (f == 0)
			return 0;
		if (f > 0) {
			*k = next;
			return 1;
		}
		int64_t resume = skip_damage(keys, *k);
		(*skipped)++;
		if (resume < 0)
			return 0;
		/* the row at the resume point itself, if there is one */
		sqlite3_reset(row);
		sqlite3_bind_int64(row, 1, resume);
		f = sqlite3_step(row);
		sqlite3_reset(row);
		*k = resume;
		if (f == SQLITE_ROW)
			return 1;
	}
}

static int table_exists(sqlite3 *db, const char *table)
{
	sqlite3_stmt *q = NULL;
	int found = 0;
	if (sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1", -1, &q, NULL) ==
	    SQLITE_OK) {
		sqlite3_bind_text(q, 1, table, -1, SQLITE_STATIC);
		found = sqlite3_step(q) == SQLITE_ROW;
	}
	sqlite3_finalize(q);
	return found;
}

static int column_exists(sqlite3 *db, const char *table, const char *column)
{
	char sql[200];
	sqlite3_stmt *q = NULL;
	snprintf(sql, sizeof(sql), "SELECT %s FROM %s LIMIT 0", column, table);
	int ok = sqlite3_prepare_v2(db, sql, -1, &q, NULL) == SQLITE_OK;
	sqlite3_finalize(q);
	return ok;
}

/* The events, key by key. */
static int copy_events(sqlite3 *old, sqlite3 *into, enum salvage__mode mode, const char *source, int64_t now_ms,
		       salvage__report *r)
{
	sqlite3_stmt *keys = NULL, *row = NULL, *held = NULL, *ins = NULL, *mark = NULL, *count = NULL;
	int rc = SQLITE_OK;
	int64_t k = 0;
	char sql[400];
	snprintf(sql, sizeof(sql), "SELECT seq, id, kind, wall_ms, mono_ms, boot, clock_ok, body, %s FROM outbox WHERE seq = ?1",
		 column_exists(old, "outbox", "set_aside") ? "set_aside" : "NULL");
	if (sqlite3_prepare_v2(old, "SELECT seq FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT 1", -1, &keys, NULL) !=
		    SQLITE_OK ||
	    sqlite3_prepare_v2(old, sql, -1, &row, NULL) != SQLITE_OK) {
		/* Not even the schema reads: nothing to copy. */
		r->ledger_errors++;
		goto out;
	}
	if ((rc = sqlite3_prepare_v2(into,
				     "SELECT EXISTS (SELECT 1 FROM outbox WHERE seq = ?1) OR EXISTS (SELECT 1 FROM rejected"
				     " WHERE seq = ?1) OR EXISTS (SELECT 1 FROM dead_letter WHERE seq = ?1) OR EXISTS"
				     " (SELECT 1 FROM recovered WHERE seq = ?1)",
				     -1, &held, NULL)) != SQLITE_OK ||
	    (rc = sqlite3_prepare_v2(into,
				     "INSERT INTO outbox(seq, id, kind, wall_ms, mono_ms, boot, clock_ok, body, set_aside, recovered)"
				     " VALUES (?,?,?,?,?,?,?,?,?,?)",
				     -1, &ins, NULL)) != SQLITE_OK ||
	    (rc = sqlite3_prepare_v2(into,
				     "INSERT OR IGNORE INTO recovered(seq, id, source, recovered_ms) VALUES (?1, ?2, ?3, ?4)",
				     -1, &mark, NULL)) != SQLITE_OK ||
	    /* A copy is pending like a capture but below the newest row's
	     * running total (schema v7): counted as removed less (what the
	     * trigger outbox_salvaged did up to v8). */
	    (rc = sqlite3_prepare_v2(into,
				     "UPDATE usage SET removed_bytes = removed_bytes - length(CAST(?1 AS BLOB)) - "
				     XSTR(OUTBOX_ROW_OVERHEAD) ", removed_events = removed_events - 1 WHERE id = 1",
				     -1, &count, NULL)) != SQLITE_OK)
		goto out;
	while (walk_next(keys, row, &k, &r->skipped_ranges)) {
		int64_t next = k;
		if (next > r->max_seq)
			r->max_seq = next;
		sqlite3_reset(row);
		sqlite3_bind_int64(row, 1, next);
		if (sqlite3_step(row) != SQLITE_ROW || sqlite3_column_type(row, 1) == SQLITE_NULL ||
		    sqlite3_column_type(row, 7) == SQLITE_NULL) {
			r->unreadable_rows++;
			continue;
		}
		sqlite3_reset(held);
		sqlite3_bind_int64(held, 1, next);
		if ((rc = sqlite3_step(held)) != SQLITE_ROW)
			goto out;
		int have = sqlite3_column_int(held, 0);
		sqlite3_reset(held);
		if (have) {
			r->skipped++;
			continue;
		}
		sqlite3_reset(ins);
		for (int i = 0; i < 9; i++)
			sqlite3_bind_value(ins, i + 1, sqlite3_column_value(row, i));
		sqlite3_bind_int(ins, 10, (int)mode);
		rc = sqlite3_step(ins);
		sqlite3_reset(ins);
		if (rc == SQLITE_CONSTRAINT) {
			/* a NULL where the schema wants a value: damage */
			r->unreadable_rows++;
			rc = SQLITE_OK;
			continue;
		}
		if (rc != SQLITE_DONE)
			goto out;
		sqlite3_reset(count);
		sqlite3_bind_value(count, 1, sqlite3_column_value(row, 7));
		if ((rc = sqlite3_step(count)) != SQLITE_DONE)
			goto out;
		sqlite3_reset(count);
		sqlite3_reset(mark);
		sqlite3_bind_int64(mark, 1, next);
		sqlite3_bind_value(mark, 2, sqlite3_column_value(row, 1));
		sqlite3_bind_text(mark, 3, source ? source : "", -1, SQLITE_STATIC);
		sqlite3_bind_int64(mark, 4, now_ms);
		if ((rc = sqlite3_step(mark)) != SQLITE_DONE)
			goto out;
		sqlite3_reset(mark);
		r->events++;
	}
	rc = SQLITE_OK;
out:
	sqlite3_finalize(keys);
	sqlite3_finalize(row);
	sqlite3_finalize(held);
	sqlite3_finalize(ins);
	sqlite3_finalize(mark);
	sqlite3_finalize(count);
	return rc;
}

/* A rowid table's rows, key by key, INSERT OR IGNORE (`cols` as in both). */
static int copy_rowid_table(sqlite3 *old, sqlite3 *into, const char *table, const char *cols, salvage__report *r)
{
	sqlite3_stmt *keys = NULL, *row = NULL, *ins = NULL;
	char sql[600];
	int rc = SQLITE_OK, ncols = 1;
	int64_t k = 0;
	for (const char *c = cols; *c; c++)
		ncols += *c == ',';
	if (!table_exists(old, table))
		return SQLITE_OK;
	snprintf(sql, sizeof(sql), "SELECT rowid FROM %s WHERE rowid > ?1 ORDER BY rowid LIMIT 1", table);
	if (sqlite3_prepare_v2(old, sql, -1, &keys, NULL) != SQLITE_OK)
		goto unreadable;
	snprintf(sql, sizeof(sql), "SELECT %s FROM %s WHERE rowid = ?1", cols, table);
	if (sqlite3_prepare_v2(old, sql, -1, &row, NULL) != SQLITE_OK)
		goto unreadable;
	{
		char marks[200] = "";
		for (int i = 0; i < ncols && i < 60; i++)
			strcat(marks, i ? ",?" : "?");
		snprintf(sql, sizeof(sql), "INSERT OR IGNORE INTO %s(%s) VALUES (%s)", table, cols, marks);
	}
	if ((rc = sqlite3_prepare_v2(into, sql, -1, &ins, NULL)) != SQLITE_OK)
		goto out;
	while (walk_next(keys, row, &k, &r->ledger_errors)) {
		sqlite3_reset(row);
		sqlite3_bind_int64(row, 1, k);
		if (sqlite3_step(row) != SQLITE_ROW) {
			r->ledger_errors++;
			continue;
		}
		sqlite3_reset(ins);
		for (int i = 0; i < ncols; i++)
			sqlite3_bind_value(ins, i + 1, sqlite3_column_value(row, i));
		rc = sqlite3_step(ins);
		sqlite3_reset(ins);
		if (rc == SQLITE_CONSTRAINT) {
			r->ledger_errors++;
			continue;
		}
		if (rc != SQLITE_DONE)
			goto out;
		r->ledger_rows += sqlite3_changes(into);
	}
	rc = SQLITE_OK;
	goto out;
unreadable:
	r->ledger_errors++;
	rc = SQLITE_OK;
out:
	sqlite3_finalize(keys);
	sqlite3_finalize(row);
	sqlite3_finalize(ins);
	return rc;
}

/* A WITHOUT ROWID table (keys are text): scanned forward, and after an
 * error backward too, so one damaged page loses only its own rows. */
static int copy_keyed_table(sqlite3 *old, sqlite3 *into, const char *table, const char *cols, const char *order,
			    const char *verb, salvage__report *r)
{
	char sql[700];
	int rc = SQLITE_OK, ncols = 1;
	for (const char *c = cols; *c; c++)
		ncols += *c == ',';
	if (!table_exists(old, table))
		return SQLITE_OK;
	sqlite3_stmt *ins = NULL;
	{
		char marks[200] = "";
		for (int i = 0; i < ncols && i < 60; i++)
			strcat(marks, i ? ",?" : "?");
		snprintf(sql, sizeof(sql), "%s INTO %s(%s) VALUES (%s)", verb, table, cols, marks);
	}
	if ((rc = sqlite3_prepare_v2(into, sql, -1, &ins, NULL)) != SQLITE_OK)
		return rc;
	for (int pass = 0; pass < 2; pass++) {
		sqlite3_stmt *rd = NULL;
		int step;
		snprintf(sql, sizeof(sql), "SELECT %s FROM %s ORDER BY %s %s", cols, table, order, pass ? "DESC" : "ASC");
		if (sqlite3_prepare_v2(old, sql, -1, &rd, NULL) != SQLITE_OK) {
			r->ledger_errors++;
			break;
		}
		while ((step = sqlite3_step(rd)) == SQLITE_ROW) {
			sqlite3_reset(ins);
			for (int i = 0; i < ncols; i++)
				sqlite3_bind_value(ins, i + 1, sqlite3_column_value(rd, i));
			rc = sqlite3_step(ins);
			sqlite3_reset(ins);
			if (rc == SQLITE_CONSTRAINT) {
				r->ledger_errors++;
				continue;
			}
			if (rc != SQLITE_DONE) {
				sqlite3_finalize(rd);
				goto out;
			}
			r->ledger_rows += sqlite3_changes(into);
		}
		sqlite3_finalize(rd);
		if (step == SQLITE_DONE)
			break; /* read whole: no backward pass needed */
		r->ledger_errors++;
	}
	rc = SQLITE_OK;
out:
	sqlite3_finalize(ins);
	return rc;
}

/* Ledger rows the copied events imply but the damaged file no longer
 * showed, made as append.c makes them (never attribution, never
 * replacing a row that was copied). */
static const char *const fill_ledgers[] = {
	"INSERT OR IGNORE INTO member_activity(seq, member_id, wall_ms, kind, amount, skus)"
	" SELECT seq, json_extract(body, '$.member_id'), wall_ms, kind, " MEMBER_ACTIVITY_OF("")
	" FROM outbox WHERE recovered != 0 AND set_aside IS NULL AND kind IN ('purchase', 'return') AND json_valid(body)"
	"  AND (CASE WHEN json_valid(body) THEN json_type(body, '$.member_id') END) = 'text'",
	"INSERT OR IGNORE INTO reco_shown(reco_id, seq, member_id, guide_id, shown_ms)"
	" SELECT id, seq, json_extract(body, '$.member_id'), json_extract(body, '$.guide_id'), wall_ms"
	" FROM outbox WHERE recovered != 0 AND set_aside IS NULL AND kind = 'reco_shown' AND json_valid(body)"
	"  AND (CASE WHEN json_valid(body) THEN json_type(body, '$.guide_id') END) = 'text'",
	"INSERT OR IGNORE INTO redemptions(id, seq, coupon, campaign, member_id, order_id, value, currency, mode, reserved_ms)"
	" SELECT id, seq, json_extract(body, '$.coupon'), json_extract(body, '$.campaign'), json_extract(body, '$.member_id'),"
	"  json_extract(body, '$.order_id'), json_extract(body, '$.value'), json_extract(body, '$.currency'),"
	"  json_extract(body, '$.mode'), wall_ms"
	" FROM outbox WHERE recovered != 0 AND set_aside IS NULL AND kind = 'coupon_redeem' AND json_valid(body)"
	"  AND (CASE WHEN json_valid(body) THEN json_type(body, '$.campaign') END) = 'text'"
	"  AND json_type(body, '$.order_id') = 'text' AND json_type(body, '$.value') = 'integer'"
	"  AND json_type(body, '$.currency') = 'text' AND json_type(body, '$.mode') = 'text'",
};

/* The receipts pending sales carried on their rows (schema v7), for the
 * rows copied: their digest is the one taken at capture, so a retry of a
 * sale attribution added to still gets its receipt. A damaged page loses
 * the rest to fill_receipts below. */
static int copy_row_receipts(sqlite3 *old, sqlite3 *into, salvage__report *r)
{
	sqlite3_stmt *q = NULL, *ins = NULL;
	int rc;
	/* the receipt's key column: okey in schema v7, order_key since v8 */
	const char *sql = column_exists(old, "outbox", "order_key")
				  ? "SELECT kind, order_key, seq, id, wall_ms, digest FROM outbox WHERE order_key IS NOT NULL"
				  : "SELECT kind, okey, seq, id, wall_ms, digest FROM outbox WHERE okey IS NOT NULL";
	if (sqlite3_prepare_v2(old, sql, -1, &q, NULL) != SQLITE_OK) {
		sqlite3_finalize(q);
		return SQLITE_OK; /* a file from before schema v7: its receipts are in orders */
	}
	if ((rc = sqlite3_prepare_v2(into,
				     "INSERT OR IGNORE INTO orders(kind, key, seq, id, wall_ms, digest) SELECT ?1, ?2, ?3, ?4, ?5, ?6"
				     " WHERE EXISTS (SELECT 1 FROM outbox WHERE seq = ?3 AND id = ?4)",
				     -1, &ins, NULL)) != SQLITE_OK)
		goto out;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		sqlite3_reset(ins);
		for (int i = 0; i < 6; i++)
			sqlite3_bind_value(ins, i + 1, sqlite3_column_value(q, i));
		if ((rc = sqlite3_step(ins)) != SQLITE_DONE)
			goto out;
		r->ledger_rows += sqlite3_changes(into);
	}
	if (rc != SQLITE_DONE)
		r->ledger_errors++; /* damaged: fill_receipts makes the rest from the bodies */
	rc = SQLITE_OK;
out:
	sqlite3_finalize(q);
	sqlite3_finalize(ins);
	return rc;
}

/* The receipts of copied sales whose receipt row was lost: the digest
 * (outbox__digest) of the body as stored (attribution may have added to it; a retry of such a
 * sale is then refused as a conflict rather than recorded twice). */
static int fill_receipts(sqlite3 *into, salvage__report *r)
{
	sqlite3_stmt *q = NULL, *ins = NULL;
	struct outbox__kind_sql k;
	char sel[400], put[700];
	int rc;
	outbox__kind_sql(&k);
	snprintf(sel, sizeof(sel),
		 "SELECT kind, body, seq, id, wall_ms FROM outbox WHERE recovered != 0 AND set_aside IS NULL"
		 " AND kind IN %s AND json_valid(body)", k.keyed);
	snprintf(put, sizeof(put),
		 "INSERT OR IGNORE INTO orders(kind, key, seq, id, wall_ms, digest) SELECT ?1, k, ?3, ?4,"
		 " ?5, ?6 FROM (SELECT %s AS k) WHERE k IS NOT NULL", k.order_key);
	if ((rc = sqlite3_prepare_v2(into, sel, -1, &q, NULL)) != SQLITE_OK ||
	    (rc = sqlite3_prepare_v2(into, put, -1, &ins, NULL)) != SQLITE_OK)
		goto out;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		unsigned char digest[OUTBOX_DIGEST_BYTES];
		const char *body = (const char *)sqlite3_column_text(q, 1);
		int n = sqlite3_column_bytes(q, 1);
		outbox__digest(body, (size_t)n, digest);
		sqlite3_reset(ins);
		for (int i = 0; i < 5; i++)
			sqlite3_bind_value(ins, i + 1, sqlite3_column_value(q, i));
		sqlite3_bind_blob(ins, 6, digest, OUTBOX_DIGEST_BYTES, SQLITE_TRANSIENT);
		if ((rc = sqlite3_step(ins)) != SQLITE_DONE)
			goto out;
		r->ledger_rows += sqlite3_changes(into);
	}
	rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
out:
	sqlite3_finalize(q);
	sqlite3_finalize(ins);
	return rc;
}

int salvage__copy(sqlite3 *old, sqlite3 *into, enum salvage__mode mode, const char *source, int64_t now_ms,
		  salvage__report *r)
{
	int rc;
	memset(r, 0, sizeof(*r));
	if ((rc = sqlite3_exec(into, "BEGIN IMMEDIATE", NULL, NULL, NULL)) != SQLITE_OK)
		goto fail;
	if ((rc = copy_events(old, into, mode, source, now_ms, r)) != SQLITE_OK)
		goto fail;
	/* The ledgers as they were: copied rows win over rows made from the
	 * events (INSERT OR IGNORE both ways, ledgers first). */
	if ((rc = copy_rowid_table(old, into, "member_activity", "seq, member_id, wall_ms, kind, amount, skus", r)) ||
	    (rc = copy_rowid_table(old, into, "rejected", "seq, id, kind, wall_ms, body, reason, rejected_ms", r)) ||
	    (rc = copy_rowid_table(old, into, "dead_letter",
				   "seq, id, kind, wall_ms, mono_ms, boot, clock_ok, body, reason, detail, set_aside_ms", r)) ||
	    (rc = copy_rowid_table(old, into, "recovered", "seq, id, source, recovered_ms", r)) ||
	    (rc = copy_keyed_table(old, into, "reco_shown", "reco_id, seq, member_id, guide_id, shown_ms", "reco_id",
				   "INSERT OR IGNORE", r)) ||
	    (rc = copy_keyed_table(old, into, "redemptions",
				   "id, seq, coupon, campaign, member_id, order_id, value, currency, mode, reserved_ms,"
				   " verdict, reason, detail, verdict_ms",
				   "id", "INSERT OR IGNORE", r)) ||
	    (rc = copy_keyed_table(old, into, "orders", "kind, key, seq, id, wall_ms, digest", "kind, key",
				   "INSERT OR IGNORE", r)))
		goto fail;
	if (mode == SALVAGE_QUARANTINE &&
	    ((rc = copy_keyed_table(old, into, "settings", "k, v", "k", "INSERT OR REPLACE", r)) ||
	     (rc = copy_keyed_table(old, into, "dropped", "kind, count, bytes, last_ms", "kind", "INSERT OR REPLACE", r)) ||
	     (rc = copy_keyed_table(old, into, "alarms", "code, since_ms, last_ms, count, detail", "code",
				    "INSERT OR IGNORE", r))))
		goto fail;
	for (size_t i = 0; i < sizeof(fill_ledgers) / sizeof(fill_ledgers[0]); i++) {
		if ((rc = sqlite3_exec(into, fill_ledgers[i], NULL, NULL, NULL)) != SQLITE_OK)
			goto fail;
		r->ledger_rows += sqlite3_changes(into);
	}
	if ((rc = copy_row_receipts(old, into, r)) != SQLITE_OK || (rc = fill_receipts(into, r)) != SQLITE_OK)
		goto fail;
	if (mode == SALVAGE_QUARANTINE) {
		/* the device's counters: acks, and the clock's trust goes on */
		sqlite3_stmt *rd = NULL, *wr = NULL;
		/* schema v7 keeps max_wall_ms on the newest row (totals; its
		 * page may be the damaged one), v5 and v6 on device, older ones
		 * had no anchor: the first of these that reads */
		static const char *const reads[] = {
			"SELECT d.last_ack_ms, d.last_acked_seq, t.max_wall_ms, d.clock_boot, d.clock_offset_ms,"
			" d.clock_mono_ms, d.clock_cand_boot, d.clock_cand_offset_ms, d.clock_cand_mono_ms"
			" FROM device d, totals t WHERE d.id = 1",
			"SELECT last_ack_ms, last_acked_seq, max_wall_ms, clock_boot, clock_offset_ms, clock_mono_ms,"
			" clock_cand_boot, clock_cand_offset_ms, clock_cand_mono_ms FROM device WHERE id = 1",
			"SELECT last_ack_ms, last_acked_seq, max_wall_ms, '', 0, 0, '', 0, 0 FROM device WHERE id = 1"};
		int got = 0;
		for (size_t i = 0; i < sizeof(reads) / sizeof(reads[0]) && !got; i++) {
			sqlite3_finalize(rd);
			rd = NULL;
			got = sqlite3_prepare_v2(old, reads[i], -1, &rd, NULL) == SQLITE_OK && sqlite3_step(rd) == SQLITE_ROW;
		}
		if (got &&
		    sqlite3_prepare_v2(into,
				       "UPDATE device SET last_ack_ms = ?1, last_acked_seq = ?2, max_wall_ms = ?3, clock_boot = ?4,"
				       " clock_offset_ms = ?5, clock_mono_ms = ?6, clock_cand_boot = ?7,"
				       " clock_cand_offset_ms = ?8, clock_cand_mono_ms = ?9 WHERE id = 1",
				       -1, &wr, NULL) == SQLITE_OK) {
			for (int i = 0; i < 9; i++)
				sqlite3_bind_value(wr, i + 1, sqlite3_column_value(rd, i));
			if (sqlite3_step(wr) != SQLITE_DONE)
				r->ledger_errors++; /* a NULL fails NOT NULL: nothing copied */
		} else {
			r->ledger_errors++;
		}
		sqlite3_finalize(rd);
		sqlite3_finalize(wr);
	}
	if ((rc = sqlite3_exec(into, "COMMIT", NULL, NULL, NULL)) != SQLITE_OK)
		goto fail;
	return SCRM_OK;
fail:
	if (!sqlite3_get_autocommit(into))
		sqlite3_exec(into, "ROLLBACK", NULL, NULL, NULL);
	memset(r, 0, sizeof(*r));
	return err__set(SCRM_E_IO, "salvage: %s", sqlite3_errmsg(into));
}
