/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outbox append: the capture side's group-commit target. One IMMEDIATE
 * transaction per group: a retried sale answered with its receipt, room made under
 * outbox.max_bytes (bounded.c), each event's seq and clock_ok (clock.c) and
 * the insert (whose triggers keep the reco and redemption ledgers,
 * schema.c). The row carries the running totals, the clock's max_wall and
 * its receipt (schema v7, receipts.c): device is written only when the
 * clock's anchor moves, and nothing else per sale.
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

/* Insert rows inside an open write transaction, each decided on its own
 * under outbox.max_bytes (outbox.h). */
int outbox__append_locked(outbox *ob, outbox__row *rows, size_t n, int64_t trusted_after_ms)
{
	int rc;
	int64_t next, first, max_bytes, reserve, used, cum, cum_events, now = platform__wall_ms();
	struct clock_state clock, loaded;

	sqlite3_reset(ob->get_dev);
	if ((rc = sqlite3_step(ob->get_dev)) != SQLITE_ROW) {
		rc = outbox__fail(ob, rc, "read sequence counter");
		sqlite3_reset(ob->get_dev);
		return rc;
	}
	next = sqlite3_column_int64(ob->get_dev, 0);
	outbox__clock_load(ob->get_dev, 1, &clock);
	cum = sqlite3_column_int64(ob->get_dev, 8);
	cum_events = sqlite3_column_int64(ob->get_dev, 9);
	sqlite3_reset(ob->get_dev);
	loaded = clock;
	if ((rc = outbox__receipts_catch_up(ob, next - 1)))
		return rc;
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
		const char *key = NULL;
		char *owned = NULL; /* sqlite3_free: the key read from the body */
		r->seq = 0;
		r->refused = 0;
		r->why[0] = 0;
		r->existing = 0;
		/* A sale already recorded (a till retrying after a timeout or a
		 * crash) gets its first receipt back, before anything else could
		 * be evicted or refused for it; another sale under the same key
		 * is refused. */
		if (keyed) {
			int found = 0;
			if ((rc = outbox__receipt_key(ob, r, &key, &owned)))
				return rc;
			outbox__digest(r->body, r->body_len, digest);
			if (key && (rc = outbox__receipt_find(ob, r, key, digest, &found))) {
				sqlite3_free(owned);
				return rc;
			}
			if (found) {
				sqlite3_free(owned);
				continue;
			}
		}
		/* Older evictable events make room first (never this call's own
		 * rows: a receipt just given stays true until commit). Room for
		 * an evictable event is made only if it then fits; a paid event
		 * takes all there is before it may use the reserve. */
		if (used + need > soft && need <= max_bytes) {
			int64_t freed = 0;
			if ((rc = outbox__evict(ob, used + need - soft, first, !paid, now, &freed)) ||
			    (rc = outbox__read_usage(ob, &used))) {
				sqlite3_free(owned);
				return rc;
			}
			used += wal_extra;
		}
		if (disk_low && !paid) {
			snprintf(ob->drop_msg, sizeof(ob->drop_msg),
				 "disk nearly full: %s not recorded; the space left on %.200s is kept for purchases, returns"
				 " and redemptions and for central's acks (the disk_full alarm is up)",
				 r->kind, ob->dir);
			r->refused = SCRM_E_DISK_FULL;
			snprintf(r->why, sizeof(r->why), "%s", ob->drop_msg);
			sqlite3_free(owned);
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
				sqlite3_free(owned);
				if ((rc = outbox__exec(ob, "UPDATE usage SET refused_paid = refused_paid + 1 WHERE id = 1")) ||
				    (rc = outbox__raise_alarm(ob, "outbox_full", ob->full_msg, now)))
					return rc;
			} else {
				snprintf(ob->drop_msg, sizeof(ob->drop_msg),
					 "outbox full: %s not recorded: %lld bytes used, %lld allowed for events other than"
					 " purchases, returns and redemptions (outbox.max_bytes - outbox.reserve_bytes)"
					 " and none of those left to evict; %s",
					 r->kind, (long long)used, (long long)soft, state);
				r->refused = SCRM_E_REFUSED;
				snprintf(r->why, sizeof(r->why), "%s", ob->drop_msg);
				sqlite3_free(owned);
				if ((rc = outbox__count_dropped(ob, r->kind, need, now)) || (rc = outbox__raise_dropped(ob, now)))
					return rc;
			}
			continue;
		}
		r->seq = next++;
		/* Rows of one group are judged in order, each against the state
		 * the previous left. */
		r->clock_ok = outbox__clock_judge(&clock, r->wall_ms, r->mono_ms, r->boot, trusted_after_ms);
		cum += need;
		cum_events++;
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
		sqlite3_bind_int64(st, 9, cum);
		sqlite3_bind_int64(st, 10, cum_events);
		sqlite3_bind_int64(st, 11, clock.last_wall);
		if (key) {
			sqlite3_bind_text(st, 12, key, -1, SQLITE_STATIC);
			sqlite3_bind_blob(st, 13, digest, OUTBOX_DIGEST_BYTES, SQLITE_STATIC);
		} else {
			sqlite3_bind_null(st, 12);
			sqlite3_bind_null(st, 13);
		}
		rc = sqlite3_step(st);
		sqlite3_reset(st);
		if (rc != SQLITE_DONE) {
			sqlite3_free(owned);
			return outbox__fail(ob, rc, "insert event");
		}
		rc = key ? outbox__receipts_add(ob, r->kind, key, r->seq) : SCRM_OK;
		sqlite3_free(owned);
		if (rc)
			return rc;
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
	/* The rows carry the counters (schema v7); device is written only
	 * when the clock's anchor moved, which the rows do not carry. */
	if (next == first || (strcmp(clock.boot, loaded.boot) == 0 && clock.offset == loaded.offset &&
			       clock.mono == loaded.mono && strcmp(clock.cand_boot, loaded.cand_boot) == 0 &&
			       clock.cand_offset == loaded.cand_offset && clock.cand_mono == loaded.cand_mono))
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
	sqlite3_bind_int64(ob->put_dev, 9, cum);
	sqlite3_bind_int64(ob->put_dev, 10, cum_events);
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
