/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outbox append: the capture side's group-commit target. One IMMEDIATE
 * transaction per group: the receipt of each sale (orders), room made under
 * outbox.max_bytes (bounded.c), each event's seq and clock_ok (clock.c), the
 * insert (whose triggers keep the local ledgers, schema.c) and the
 * sequence counter.
 */
#include "outbox_int.h"

#include "err.h"
#include "platform.h"
#include "quarantine.h"

#include <stdio.h>
#include <string.h>

void outbox__digest(const char *body, size_t len, unsigned char out[OUTBOX_DIGEST_BYTES])
{
	/* Two FNV-1a 64 runs from different offset bases: it only has to tell
	 * a retried sale from a different sale under the same order_id (an
	 * accident, not an attack: the POS is trusted), at a few instructions
	 * a byte (SHA-256 was 5% of a capture's CPU). */
	uint64_t a = 14695981039346656037ULL, b = 0x6c62272e07bb0142ULL;
	for (size_t i = 0; i < len; i++) {
		a = (a ^ (unsigned char)body[i]) * 1099511628211ULL;
		b = (b ^ (unsigned char)body[len - 1 - i]) * 1099511628211ULL;
	}
	for (int i = 0; i < 8; i++) {
		out[i] = (unsigned char)(a >> (8 * i));
		out[8 + i] = (unsigned char)(b >> (8 * i));
	}
}

/* The receipt of a sale this device already recorded under r's order_id
 * (return_id): *found = 1 with r's existing fields set when the content is
 * the same, or with r refused (SCRM_E_CONFLICT) when it differs. */
static int order_find(outbox *ob, outbox__row *r, const unsigned char digest[OUTBOX_DIGEST_BYTES], int *found)
{
	sqlite3_stmt *st = ob->order_get;
	int rc;
	*found = 0;
	sqlite3_reset(st);
	sqlite3_bind_text(st, 1, r->kind, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, r->body, (int)r->body_len, SQLITE_STATIC);
	if (r->key)
		sqlite3_bind_text(st, 3, r->key, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 3);
	rc = sqlite3_step(st);
	if (rc == SQLITE_DONE) {
		sqlite3_reset(st);
		return SCRM_OK;
	}
	if (rc != SQLITE_ROW) {
		rc = outbox__fail(ob, rc, "look up the receipt");
		sqlite3_reset(st);
		return rc;
	}
	*found = 1;
	const void *held = sqlite3_column_blob(st, 3);
	if (held && sqlite3_column_bytes(st, 3) == OUTBOX_DIGEST_BYTES && memcmp(held, digest, OUTBOX_DIGEST_BYTES) == 0) {
		r->existing = 1;
		r->seq = sqlite3_column_int64(st, 0);
		snprintf(r->existing_id, sizeof(r->existing_id), "%s", (const char *)sqlite3_column_text(st, 1));
		r->existing_wall_ms = sqlite3_column_int64(st, 2);
	} else {
		const char *field = outbox__kind_key(r->kind);
		snprintf(ob->conflict_msg, sizeof(ob->conflict_msg),
			 "%s: \"%.64s\" was already recorded on this device (seq %lld, event %.36s) with different"
			 " content; a retry must send the same %s, a new %s needs a new %s; nothing was recorded",
			 field, (const char *)sqlite3_column_text(st, 4), (long long)sqlite3_column_int64(st, 0),
			 (const char *)sqlite3_column_text(st, 1), r->kind, r->kind, field);
		r->refused = SCRM_E_CONFLICT;
		snprintf(r->why, sizeof(r->why), "%s", ob->conflict_msg);
	}
	sqlite3_reset(st);
	return SCRM_OK;
}

/* Take back the receipt recorded for a row then refused for room. */
static int order_forget(outbox *ob, const outbox__row *r)
{
	sqlite3_stmt *st = NULL;
	char sql[600];
	snprintf(sql, sizeof(sql), "DELETE FROM orders WHERE kind = ?1 AND key = %s", ob->ksql.order_key);
	int rc = sqlite3_prepare_v2(ob->db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return outbox__fail(ob, rc, "prepare receipt removal");
	sqlite3_bind_text(st, 1, r->kind, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, r->body, (int)r->body_len, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? SCRM_OK : outbox__fail(ob, rc, "remove a receipt");
}


/* Insert rows inside an open write transaction, each decided on its own
 * under outbox.max_bytes (outbox.h). */
int outbox__append_locked(outbox *ob, outbox__row *rows, size_t n, int64_t trusted_after_ms)
{
	int rc;
	int64_t next, first, max_bytes, reserve, used, now = platform__wall_ms();
	struct clock_state clock;

	sqlite3_reset(ob->get_dev);
	if ((rc = sqlite3_step(ob->get_dev)) != SQLITE_ROW) {
		rc = outbox__fail(ob, rc, "read sequence counter");
		sqlite3_reset(ob->get_dev);
		return rc;
	}
	next = sqlite3_column_int64(ob->get_dev, 0);
	outbox__clock_load(ob->get_dev, 1, &clock);
	sqlite3_reset(ob->get_dev);
	first = next;
	if ((rc = outbox__read_limits(ob, &max_bytes, &reserve)) || (rc = outbox__read_usage(ob, &used)))
		return rc;
	const int64_t soft = max_bytes - reserve; /* the reserve is for paid events */
	/* The cap counts what the store really takes on disk beyond the
	 * events: a WAL that readers keep from being checkpointed grows
	 * without bound otherwise. Read once per transaction. */
	const int64_t wal_extra = outbox__wal_growth(ob);
	used += wal_extra;
	/* The daemon's disk reserve was released (the disk is full): only
	 * what a customer paid for may take what is left. */
	const int disk_low = outbox__disk_nearly_full(ob);

	for (size_t i = 0; i < n; i++) {
		outbox__row *r = &rows[i];
		const int64_t need = (int64_t)r->body_len + OUTBOX_ROW_OVERHEAD;
		const int paid = outbox__kind_paid(r->kind);
		const int keyed = outbox__kind_key(r->kind) != NULL;
		unsigned char digest[OUTBOX_DIGEST_BYTES];
		r->seq = 0;
		r->refused = 0;
		r->why[0] = 0;
		r->existing = 0;
		/* A sale already recorded (a till retrying after a timeout or a
		 * crash) gets its first receipt back, before anything else could
		 * be evicted or refused for it. */
		if (keyed) {
			/* The receipt first, for the seq this row would get: one
			 * insert in the usual case; a conflict means a retry (or
			 * another sale under the same key). Taken back below if
			 * the row is refused for room. */
			int found = 0;
			outbox__digest(r->body, r->body_len, digest);
			sqlite3_stmt *op = ob->order_put;
			sqlite3_reset(op);
			sqlite3_bind_text(op, 1, r->kind, -1, SQLITE_STATIC);
			sqlite3_bind_text(op, 2, r->body, (int)r->body_len, SQLITE_STATIC);
			sqlite3_bind_int64(op, 3, next);
			sqlite3_bind_text(op, 4, r->id, -1, SQLITE_STATIC);
			sqlite3_bind_int64(op, 5, r->wall_ms);
			sqlite3_bind_blob(op, 6, digest, OUTBOX_DIGEST_BYTES, SQLITE_STATIC);
			if (r->key)
				sqlite3_bind_text(op, 7, r->key, -1, SQLITE_STATIC);
			else
				sqlite3_bind_null(op, 7);
			rc = sqlite3_step(op);
			sqlite3_reset(op);
			if (rc != SQLITE_DONE)
				return outbox__fail(ob, rc, "record the receipt");
			if (sqlite3_changes(ob->db) == 0 && (rc = order_find(ob, r, digest, &found)))
				return rc;
			if (found)
				continue;
		}
		/* Older evictable events make room first (never this call's own
		 * rows: a receipt just given stays true until commit). Room for
		 * an evictable event is made only if it then fits; a paid event
		 * takes all there is before it may use the reserve. */
		if (used + need > soft && need <= max_bytes) {
			int64_t freed = 0;
			if ((rc = outbox__evict(ob, used + need - soft, first, !paid, now, &freed)) || (rc = outbox__read_usage(ob, &used)))
				return rc;
			used += wal_extra;
		}
		if (disk_low && !paid) {
			snprintf(ob->drop_msg, sizeof(ob->drop_msg),
				 "disk nearly full: %s not recorded; the space left on %.200s is kept for purchases, returns"
				 " and redemptions and for central's acks (the disk_full alarm is up)",
				 r->kind, ob->dir);
			r->refused = SCRM_E_DISK_FULL;
			snprintf(r->why, sizeof(r->why), "%s", ob->drop_msg);
			if ((rc = outbox__count_dropped(ob, r->kind, need, now)))
				return rc;
			continue;
		}
		if (used + need > (paid ? max_bytes : soft)) {
			char state[200];
			outbox__central_state(ob, state, sizeof(state));
			if (paid) {
				snprintf(ob->full_msg, sizeof(ob->full_msg),
					 "outbox full: %lld bytes used of %lld (outbox.max_bytes), all purchases, returns and"
					 " redemptions central has not acknowledged; %s; this %s needs %lld bytes;"
					 " nothing was recorded",
					 (long long)used, (long long)max_bytes, state, r->kind, (long long)need);
				r->refused = SCRM_E_DISK_FULL;
				snprintf(r->why, sizeof(r->why), "%s", ob->full_msg);
				if ((rc = outbox__exec(ob, "UPDATE usage SET refused_paid = refused_paid + 1 WHERE id = 1")) ||
				    (rc = outbox__raise_alarm(ob, "outbox_full", ob->full_msg, now)) ||
				    (keyed && (rc = order_forget(ob, r))))
					return rc;
			} else {
				snprintf(ob->drop_msg, sizeof(ob->drop_msg),
					 "outbox full: %s not recorded: %lld bytes used, %lld allowed for events other than"
					 " purchases, returns and redemptions (outbox.max_bytes - outbox.reserve_bytes)"
					 " and none of those left to evict; %s",
					 r->kind, (long long)used, (long long)soft, state);
				r->refused = SCRM_E_REFUSED;
				snprintf(r->why, sizeof(r->why), "%s", ob->drop_msg);
				if ((rc = outbox__count_dropped(ob, r->kind, need, now)) || (rc = outbox__raise_dropped(ob, now)))
					return rc;
			}
			continue;
		}
		r->seq = next++;
		/* Rows of one group are judged in order, each against the state
		 * the previous left. */
		r->clock_ok = outbox__clock_judge(&clock, r->wall_ms, r->mono_ms, r->boot, trusted_after_ms);
		sqlite3_stmt *st = ob->ins;
		sqlite3_reset(st);
		sqlite3_bind_int64(st, 1, r->seq);
		sqlite3_bind_text(st, 2, r->id, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, r->kind, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 4, r->wall_ms);
		sqlite3_bind_int64(st, 5, r->mono_ms);
		sqlite3_bind_text(st, 6, r->boot, -1, SQLITE_STATIC);
		sqlite3_bind_int(st, 7, r->clock_ok);
		sqlite3_bind_text(st, 8, r->body, (int)r->body_len, SQLITE_STATIC);
		if ((rc = sqlite3_step(st)) != SQLITE_DONE) {
			rc = outbox__fail(ob, rc, "insert event");
			sqlite3_reset(st);
			return rc;
		}
		sqlite3_reset(st);
		/* Triggers may have grown the body (attribution). */
		if ((rc = outbox__read_usage(ob, &used)))
			return rc;
		used += wal_extra;
		if (paid && used > soft) {
			char detail[400];
			snprintf(detail, sizeof(detail),
				 "in reserve: %lld bytes used of %lld (outbox.max_bytes); the last %lld"
				 " (outbox.reserve_bytes) take only purchases, returns and redemptions, and nothing is left"
				 " to evict",
				 (long long)used, (long long)max_bytes, (long long)reserve);
			if ((rc = outbox__raise_alarm(ob, "outbox_full", detail, now)))
				return rc;
		}
	}
	if (next == first)
		return SCRM_OK;
	sqlite3_reset(ob->put_dev);
	sqlite3_bind_int64(ob->put_dev, 1, next);
	sqlite3_bind_int64(ob->put_dev, 2, clock.last_wall);
	sqlite3_bind_text(ob->put_dev, 3, clock.boot, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(ob->put_dev, 4, clock.offset);
	sqlite3_bind_int64(ob->put_dev, 5, clock.mono);
	sqlite3_bind_text(ob->put_dev, 6, clock.cand_boot, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(ob->put_dev, 7, clock.cand_offset);
	sqlite3_bind_int64(ob->put_dev, 8, clock.cand_mono);
	rc = sqlite3_step(ob->put_dev);
	sqlite3_reset(ob->put_dev);
	if (rc != SQLITE_DONE)
		return outbox__fail(ob, rc, "advance sequence counter");
	return SCRM_OK;
}


int outbox__append(outbox *ob, outbox__row *rows, size_t n, int64_t trusted_after_ms)
{
	int rc, retried = 0;
again:
	ob->corrupt = 0;
	if ((rc = outbox__hold(ob)))
		goto failed;
	if ((rc = sqlite3_exec(ob->db, "BEGIN IMMEDIATE", NULL, NULL, NULL)) != SQLITE_OK) {
		rc = outbox__fail(ob, rc, "begin");
		goto cleanup;
	}
	if ((rc = outbox__append_locked(ob, rows, n, trusted_after_ms)))
		goto cleanup;
	if ((rc = sqlite3_exec(ob->db, "COMMIT", NULL, NULL, NULL)) != SQLITE_OK) {
		rc = outbox__fail(ob, rc, "commit");
		goto cleanup;
	}
	quarantine__lock(ob->lock_fd, 0);
	for (size_t i = 0; i < n; i++)
		if (rows[i].refused)
			return err__set(rows[i].refused, "%s", rows[i].why[0] ? rows[i].why : "not recorded");
	return SCRM_OK;
cleanup:
	outbox__rollback(ob);
	quarantine__lock(ob->lock_fd, 0);
	if (ob->corrupt && !retried && outbox__recover(ob) == SCRM_OK) {
		retried = 1;
		goto again;
	}
failed:
	for (size_t i = 0; i < n; i++) {
		rows[i].seq = 0;
		rows[i].refused = rc;
		rows[i].why[0] = 0;
	}
	return rc;
}
