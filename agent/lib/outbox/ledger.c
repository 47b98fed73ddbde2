/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outbox ledgers: the local bookkeeping outbox.db keeps beside the queue —
 * redemptions (coupons spent here and central's verdicts), reco_shown,
 * member_activity, link and settings — and the only SQL other modules run
 * on them (ledger.h): the guide's redemption and counting reads (the
 * cache's read of a member's local purchases: ledger_read.c). The rows are
 * written by the insert triggers of schema.c, in the capture's
 * transaction; erasure and pruning are here.
 */
#include "outbox_int.h"
#include "ledger.h"

#include "err.h"
#include "platform.h"
#include "quarantine.h"

#include <stdio.h>
#include <string.h>

/* A JSON array text (what cJSON printed); anything else is ignored rather
 * than fed to json_each. */
static int json_array_ok(const char *s)
{
	return s && s[0] == '[';
}

/* One count of redemptions into *n: `sql` with the texts `args` as its
 * first parameters and, as the next one, `counted` (the redemption ids
 * central has already counted, a JSON array; anything else is left unbound).
 * With last_cap, the order of the latest one (column 2) goes to `last`. */
static int count_one(outbox *ob, const char *sql, const char *const *args, int n_args, const char *counted, int64_t *n,
		     char *last, size_t last_cap)
{
	sqlite3_stmt *st = NULL;
	int rc;
	if ((rc = outbox__prepare(ob, sql, &st, "count redemptions")))
		return rc;
	for (int i = 0; i < n_args; i++)
		sqlite3_bind_text(st, i + 1, args[i], -1, SQLITE_STATIC);
	if (json_array_ok(counted))
		sqlite3_bind_text(st, n_args + 1, counted, -1, SQLITE_STATIC);
	if ((rc = sqlite3_step(st)) != SQLITE_ROW) {
		sqlite3_finalize(st);
		return outbox__fail(ob, rc, "count redemptions");
	}
	*n = sqlite3_column_int64(st, 0);
	if (*n && last_cap)
		snprintf(last, last_cap, "order %s", sqlite3_column_text(st, 2) ? (const char *)sqlite3_column_text(st, 2) : "?");
	sqlite3_finalize(st);
	return SCRM_OK;
}

/* Count what the limits of `lim` cover; inside the caller's transaction. */
static int count_redemptions(outbox *ob, const outbox__limits *lim, int64_t *by_coupon, int64_t *by_member,
			     char *last, size_t last_cap)
{
	int rc;
	*by_coupon = *by_member = 0;
	if (last_cap)
		last[0] = '\0';
	if (lim->coupon) {
		const char *args[] = {lim->coupon};
		if ((rc = count_one(ob,
				    "SELECT count(*), max(reserved_ms), (SELECT order_id FROM redemptions WHERE coupon = ?1"
				    " AND id NOT IN (SELECT value FROM json_each(coalesce(?2, '[]')))"
				    " ORDER BY reserved_ms DESC LIMIT 1)"
				    " FROM redemptions WHERE coupon = ?1"
				    " AND id NOT IN (SELECT value FROM json_each(coalesce(?2, '[]')))",
				    args, 1, lim->coupon_counted, by_coupon, last, last_cap)))
			return rc;
	}
	if (lim->campaign && lim->member_id) {
		const char *args[] = {lim->campaign, lim->member_id};
		if ((rc = count_one(ob,
				    "SELECT count(*) FROM redemptions WHERE campaign = ?1 AND member_id = ?2"
				    " AND id NOT IN (SELECT value FROM json_each(coalesce(?3, '[]')))",
				    args, 2, lim->member_counted, by_member, NULL, 0)))
			return rc;
	}
	return SCRM_OK;
}

int outbox__redemption_counts(outbox *ob, const outbox__limits *lim, int64_t *by_coupon, int64_t *by_member)
{
	return count_redemptions(ob, lim, by_coupon, by_member, NULL, 0);
}

/* The same sale's redemption of the same coupon (or campaign), if any. */
static int find_existing(outbox *ob, outbox__limits *lim)
{
	sqlite3_stmt *st = NULL;
	int rc;
	lim->existing = 0;
	if (!lim->order_id)
		return SCRM_OK;
	if ((rc = outbox__prepare(ob,
				  "SELECT id, seq, reserved_ms, value FROM redemptions WHERE order_id = ?1"
				  " AND ((?2 IS NOT NULL AND coupon = ?2) OR (?2 IS NULL AND coupon IS NULL AND campaign = ?3"
				  " AND member_id IS ?4)) ORDER BY seq LIMIT 1",
				  &st, "find redemption")))
		return rc;
	sqlite3_bind_text(st, 1, lim->order_id, -1, SQLITE_STATIC);
	if (lim->coupon)
		sqlite3_bind_text(st, 2, lim->coupon, -1, SQLITE_STATIC);
	if (lim->campaign)
		sqlite3_bind_text(st, 3, lim->campaign, -1, SQLITE_STATIC);
	if (lim->member_id)
		sqlite3_bind_text(st, 4, lim->member_id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		lim->existing = 1;
		snprintf(lim->existing_id, sizeof(lim->existing_id), "%s", (const char *)sqlite3_column_text(st, 0));
		lim->existing_seq = sqlite3_column_int64(st, 1);
		lim->existing_wall_ms = sqlite3_column_int64(st, 2);
		lim->existing_value = sqlite3_column_int64(st, 3);
	}
	sqlite3_finalize(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? SCRM_OK : outbox__fail(ob, rc, "find redemption");
}

int outbox__append_redemption(outbox *ob, outbox__row *row, int64_t trusted_after_ms, outbox__limits *lim)
{
	int rc;
	int64_t by_coupon = 0, by_member = 0;
	char last[120];

	if ((rc = outbox__hold(ob))) {
		row->seq = 0;
		return rc;
	}
	rc = sqlite3_exec(ob->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
	outbox__turn_taken(ob);
	if (rc != SQLITE_OK) {
		rc = outbox__fail(ob, rc, "begin");
		goto cleanup;
	}
	if ((rc = find_existing(ob, lim)))
		goto cleanup;
	if (lim->existing) {
		outbox__rollback(ob); /* nothing to write */
		quarantine__lock(ob->lock_fd, 0);
		return SCRM_OK;
	}
	/* Counted and recorded under one write lock: a second till (thread or
	 * process) waits here and then sees this use. */
	if ((rc = count_redemptions(ob, lim, &by_coupon, &by_member, last, sizeof(last))))
		goto cleanup;
	if (lim->coupon && lim->coupon_allowed >= 0 && by_coupon >= lim->coupon_allowed) {
		rc = err__set(SCRM_E_REFUSED, "used_up: coupon %s already spent on this device (%s)", lim->coupon, last);
		goto cleanup;
	}
	if (lim->campaign && lim->member_id && lim->member_allowed >= 0 && by_member >= lim->member_allowed) {
		rc = err__set(SCRM_E_REFUSED, "member_limit: member %s reached the limit of campaign %s", lim->member_id,
			      lim->campaign);
		goto cleanup;
	}
	if ((rc = outbox__append_locked(ob, row, 1, trusted_after_ms)))
		goto cleanup;
	/* Refused for room: the counters and the alarm are kept. */
	if ((rc = sqlite3_exec(ob->db, "COMMIT", NULL, NULL, NULL)) != SQLITE_OK) {
		rc = outbox__fail(ob, rc, "commit");
		goto cleanup;
	}
	quarantine__lock(ob->lock_fd, 0);
	if (row->refused)
		return err__set(row->refused, "%s", row->why[0] ? row->why : "not recorded");
	return SCRM_OK;
cleanup:
	outbox__rollback(ob);
	quarantine__lock(ob->lock_fd, 0);
	row->seq = 0;
	return rc;
}

int outbox__link_set(outbox *ob, int connected, int64_t now_ms)
{
	sqlite3_stmt *st = NULL;
	int rc = outbox__prepare(ob,
				 "INSERT INTO link(id, connected, changed_ms, seen_ms) VALUES (1, ?1, ?2, ?2)"
				 " ON CONFLICT(id) DO UPDATE SET seen_ms = ?2,"
				 " changed_ms = CASE WHEN connected = ?1 THEN changed_ms ELSE ?2 END, connected = ?1",
				 &st, "prepare link");
	if (rc)
		return rc;
	sqlite3_bind_int(st, 1, connected ? 1 : 0);
	sqlite3_bind_int64(st, 2, now_ms);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? SCRM_OK : outbox__fail(ob, rc, "write link state");
}

int outbox__link_get(outbox *ob, int *connected, int64_t *changed_ms, int64_t *seen_ms)
{
	sqlite3_stmt *st = NULL;
	int rc;
	*connected = 0;
	*changed_ms = *seen_ms = 0;
	if ((rc = outbox__prepare(ob, "SELECT connected, changed_ms, seen_ms FROM link WHERE id = 1", &st, "prepare link")))
		return rc;
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*connected = sqlite3_column_int(st, 0);
		*changed_ms = sqlite3_column_int64(st, 1);
		*seen_ms = sqlite3_column_int64(st, 2);
	}
	sqlite3_finalize(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? SCRM_OK : outbox__fail(ob, rc, "read link state");
}

int outbox__setting_set(outbox *ob, const char *k, int64_t v)
{
	sqlite3_stmt *st = NULL;
	int rc = outbox__prepare(ob, "INSERT OR REPLACE INTO settings(k, v) VALUES (?1, ?2)", &st, "prepare setting");
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, k, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, v);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? SCRM_OK : outbox__fail(ob, rc, "write setting");
}

static int verdict_once(outbox *ob, const char *id, const char *verdict, const char *reason, const char *detail,
			int64_t ms, int *changed)
{
	sqlite3_stmt *st = NULL;
	int rc;
	*changed = 0;
	if ((rc = outbox__prepare(ob,
				  "UPDATE redemptions SET verdict = ?2, reason = ?3, detail = ?4, verdict_ms = ?5"
				  " WHERE id = ?1 AND (verdict IS NULL OR verdict != ?2 OR coalesce(reason, '') != coalesce(?3, ''))",
				  &st, "prepare verdict")))
		return rc;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, verdict, -1, SQLITE_STATIC);
	if (reason)
		sqlite3_bind_text(st, 3, reason, -1, SQLITE_STATIC);
	if (detail)
		sqlite3_bind_text(st, 4, detail, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 5, ms);
	rc = sqlite3_step(st);
	*changed = sqlite3_changes(ob->db);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return outbox__fail(ob, rc, "record verdict");
	if (*changed)
		return SCRM_OK;
	/* Unchanged: a repeat of a verdict we hold, or an unknown id. */
	if (sqlite3_prepare_v2(ob->db, "SELECT 1 FROM redemptions WHERE id = ?1", -1, &st, NULL) != SQLITE_OK)
		return outbox__fail(ob, SQLITE_ERROR, "prepare verdict");
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? SCRM_OK : err__set(SCRM_E_NOT_FOUND, "redemption: no redemption %s on this device", id);
}


int outbox__verdict(outbox *ob, const char *id, const char *verdict, const char *reason, const char *detail,
		    int64_t ms, int *changed)
{
	int rc = verdict_once(ob, id, verdict, reason, detail, ms, changed);
	if (outbox__release_reserve(ob, rc))
		rc = verdict_once(ob, id, verdict, reason, detail, ms, changed);
	outbox__note_reserve_released(ob);
	return rc;
}

int outbox__pending_verdicts(outbox *ob, int max, sbuf *out, int *n)
{
	int64_t count = 0;
	/* Central holds the event (acknowledged: no longer pending, not
	 * rejected, not set aside) yet no verdict was recorded here. */
	int rc = outbox__query_json(ob,
			    "SELECT json_group_array(id), count(*) FROM (SELECT id FROM redemptions r WHERE verdict IS NULL"
			    " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.seq = r.seq)"
			    " AND NOT EXISTS (SELECT 1 FROM rejected j WHERE j.seq = r.seq)"
			    " AND NOT EXISTS (SELECT 1 FROM dead_letter d WHERE d.seq = r.seq)"
			    " ORDER BY reserved_ms, seq LIMIT ?1)",
			    max > 0 ? max : 100, out, &count, "read pending verdicts");
	*n = (int)count;
	return rc;
}

int outbox__redemptions(outbox *ob, int limit, sbuf *out)
{
	return outbox__query_json(ob,
			  "SELECT json_object('pending', count(*) FILTER (WHERE verdict IS NULL),"
			  " 'accepted', count(*) FILTER (WHERE verdict = 'accepted'),"
			  " 'rejected', count(*) FILTER (WHERE verdict = 'rejected'),"
			  " 'redemptions', (SELECT json_group_array(json(j)) FROM (SELECT json_object('id', id, 'seq', seq,"
			  "  'coupon', coupon, 'campaign', campaign, 'member_id', member_id, 'order_id', order_id,"
			  "  'value', value, 'currency', currency, 'mode', mode, 'reserved_ms', reserved_ms,"
			  "  'verdict', coalesce(verdict, 'pending'), 'reason', reason, 'detail', detail,"
			  "  'verdict_ms', verdict_ms) AS j FROM redemptions ORDER BY reserved_ms DESC, seq DESC LIMIT ?1)))"
			  " FROM redemptions",
			  limit > 0 ? limit : 100, out, NULL, "read redemptions");
}

int outbox__redact_member(outbox *ob, const char *member_id, int64_t *redacted)
{
	/* Keep id and seq (central's order and dedup rely on them); remove who
	 * the customer was and any free text about them. */
	static const char *const sql[] = {
		"UPDATE outbox SET body = json_set(json_remove(body, '$.member_id', '$.reason'), '$.redacted', 'erasure'),"
		" member = NULL WHERE json_extract(body, '$.member_id') = ?1",
		"UPDATE rejected SET body = json_set(json_remove(body, '$.member_id', '$.reason'), '$.redacted', 'erasure')"
		" WHERE json_extract(body, '$.member_id') = ?1",
		"DELETE FROM member_activity WHERE member_id = ?1",
		"DELETE FROM reco_shown WHERE member_id = ?1",
		"UPDATE redemptions SET member_id = NULL WHERE member_id = ?1",
	};
	int rc, changed = 0;
	*redacted = 0;
	if ((rc = outbox__exec(ob, "PRAGMA secure_delete=ON")))
		return rc;
	if ((rc = outbox__exec(ob, "BEGIN IMMEDIATE"))) {
		outbox__exec(ob, "PRAGMA secure_delete=FAST");
		return rc;
	}
	for (size_t i = 0; i < sizeof(sql) / sizeof(sql[0]); i++) {
		sqlite3_stmt *st = NULL;
		if ((rc = sqlite3_prepare_v2(ob->db, sql[i], -1, &st, NULL)) != SQLITE_OK) {
			rc = outbox__fail(ob, rc, "prepare redaction");
			goto cleanup;
		}
		sqlite3_bind_text(st, 1, member_id, -1, SQLITE_STATIC);
		rc = sqlite3_step(st);
		if (i == 0)
			*redacted = sqlite3_changes(ob->db);
		changed += sqlite3_changes(ob->db);
		sqlite3_finalize(st);
		if (rc != SQLITE_DONE) {
			rc = outbox__fail(ob, rc, "redact member");
			goto cleanup;
		}
	}
	rc = outbox__exec(ob, "COMMIT");
	/* The old bodies also sit in WAL frames until they are overwritten:
	 * the erasure is done only once the WAL is checkpointed and cut to
	 * nothing (protocol.md "Erasure"). */
	if (rc == SCRM_OK && changed)
		rc = outbox__scrub_wal(ob);
cleanup:
	if (rc)
		outbox__rollback(ob);
	sqlite3_exec(ob->db, "PRAGMA secure_delete=FAST", NULL, NULL, NULL);
	return rc;
}

int outbox__scrub_wal(outbox *ob)
{
	sqlite3_stmt *st = NULL;
	int rc, busy = 1;
	char wal[4300];
	int64_t size = -1;
	/* TRUNCATE waits (busy handler) for readers to leave the WAL. */
	if ((rc = outbox__prepare(ob, "PRAGMA wal_checkpoint(TRUNCATE)", &st, "prepare checkpoint")))
		return rc;
	if ((rc = sqlite3_step(st)) == SQLITE_ROW)
		busy = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	if (rc != SQLITE_ROW && rc != SQLITE_BUSY)
		return outbox__fail(ob, rc, "checkpoint");
	snprintf(wal, sizeof(wal), "%s-wal", ob->path);
	if (platform__file_size(wal, &size) != 0)
		size = 0; /* no WAL file: nothing left in one */
	if (busy || size != 0)
		return err__set(SCRM_E_BUSY,
				"outbox: the erased data is gone from every table, but older copies stay in %s until"
				" the processes reading the store let go of it (%lld bytes)",
				wal, (long long)size);
	return SCRM_OK;
}

int outbox__prune_activity(outbox *ob, int64_t before_ms, int64_t now_ms)
{
	/* Recommendations shown are kept past the longest attribution window
	 * (7 days); the redemption ledger for 400 days, settled ones only: an
	 * entry central's coupon record may not include yet must keep counting
	 * (a pruned one would make the coupon spendable again). */
	static const char *const sql[] = {
		"DELETE FROM member_activity WHERE wall_ms < ?1",
		"DELETE FROM reco_shown WHERE shown_ms < ?1",
		"DELETE FROM redemptions WHERE reserved_ms < ?1 AND verdict IS NOT NULL",
		/* no index on wall_ms (one more page written per sale): a scan of
		 * 90 days of receipts, at idle */
		"DELETE FROM orders WHERE wall_ms < ?1",
	};
	const int64_t day = 86400000;
	int64_t cut[4] = {before_ms, before_ms < now_ms - 8 * day ? before_ms : now_ms - 8 * day,
			  before_ms < now_ms - 400 * day ? before_ms : now_ms - 400 * day,
			  now_ms - OUTBOX_ORDERS_RETENTION_MS};
	for (size_t i = 0; i < sizeof(sql) / sizeof(sql[0]); i++) {
		sqlite3_stmt *st = NULL;
		int rc = outbox__prepare(ob, sql[i], &st, "prepare prune");
		if (rc)
			return rc;
		sqlite3_bind_int64(st, 1, cut[i]);
		rc = sqlite3_step(st);
		sqlite3_finalize(st);
		if (rc != SQLITE_DONE)
			return outbox__fail(ob, rc, "prune local history");
	}
	return SCRM_OK;
}

int outbox__member_redemptions(outbox *ob, const char *member_id,
			       int (*each)(void *ctx, const char *id, const char *coupon, const char *campaign),
			       void *ctx)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(ob->db,
				    "SELECT id, coalesce(coupon, ''), campaign FROM redemptions WHERE member_id = ?1 ORDER BY id",
				    -1, &st, NULL);
	if (rc != SQLITE_OK)
		return outbox__sqlite_err(rc, "read redemptions", sqlite3_errmsg(ob->db));
	sqlite3_bind_text(st, 1, member_id, -1, SQLITE_STATIC);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		int stop = each(ctx, (const char *)sqlite3_column_text(st, 0), (const char *)sqlite3_column_text(st, 1),
				(const char *)sqlite3_column_text(st, 2));
		if (stop) {
			sqlite3_finalize(st);
			return stop;
		}
	}
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? SCRM_OK : outbox__sqlite_err(rc, "read redemptions", "");
}
