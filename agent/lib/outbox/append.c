/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outbox append: the capture side's group-commit target. One IMMEDIATE
 * transaction per group: a retried sale answered with its receipt, room made under
 * outbox.max_bytes (bounded.c), each event's seq and clock_ok (clock.c),
 * a member's purchase attributed to the recommendation shown to them, the
 * insert, and the reco and redemption ledgers for those kinds (the rules
 * the triggers kept up to schema v8, schema.c). The row carries the running
 * totals, the clock's max_wall, its receipt and its member (schema v7,
 * receipts.c): device is written only when the clock's anchor moves, and
 * nothing else per sale.
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

/* A purchase's or return's member, guide and reco_id as the rules need
 * them (append_rows); buffers reused from row to row. */
struct who {
	sbuf member_json; /* the member_id as a JSON string, the row's member column; empty: none */
	sbuf member, guide;
	int has_member, has_guide, has_reco;
};

static int who_of(outbox *ob, const outbox__row *r, struct who *w)
{
	sbuf__reset(&w->member_json);
	sbuf__reset(&w->member);
	sbuf__reset(&w->guide);
	w->has_member = w->has_guide = w->has_reco = 0;
	if (r->hinted) {
		if ((w->has_member = r->member != NULL)) {
			sbuf__jstr(&w->member_json, r->member);
			sbuf__puts(&w->member, r->member);
		}
		if ((w->has_guide = r->guide != NULL))
			sbuf__puts(&w->guide, r->guide);
		w->has_reco = r->has_reco;
	} else {
		/* A body from elsewhere: SQLite's JSON reads it as the triggers did. */
		sqlite3_stmt *st = ob->who;
		sqlite3_reset(st);
		sqlite3_bind_text(st, 1, r->body, (int)r->body_len, SQLITE_STATIC);
		int rc = sqlite3_step(st);
		if (rc != SQLITE_ROW) {
			rc = outbox__fail(ob, rc, "read the sale's member");
			sqlite3_reset(st);
			return rc;
		}
		if ((w->has_member = sqlite3_column_type(st, 0) != SQLITE_NULL))
			sbuf__put(&w->member_json, (const char *)sqlite3_column_text(st, 0), (size_t)sqlite3_column_bytes(st, 0));
		if (sqlite3_column_type(st, 1) != SQLITE_NULL)
			sbuf__put(&w->member, (const char *)sqlite3_column_text(st, 1), (size_t)sqlite3_column_bytes(st, 1));
		w->has_member &= sqlite3_column_type(st, 1) != SQLITE_NULL;
		if ((w->has_guide = sqlite3_column_type(st, 2) != SQLITE_NULL))
			sbuf__put(&w->guide, (const char *)sqlite3_column_text(st, 2), (size_t)sqlite3_column_bytes(st, 2));
		w->has_reco = sqlite3_column_int(st, 3);
		sqlite3_reset(st);
	}
	/* sbuf__put of nothing leaves p NULL: bound as "" below needs text */
	sbuf__putc(&w->member_json, 0);
	sbuf__putc(&w->member, 0);
	sbuf__putc(&w->guide, 0);
	if (w->member_json.oom || w->member.oom || w->guide.oom)
		return err__set(SCRM_E_NOMEM, "outbox: out of memory for the sale's member");
	return SCRM_OK;
}

/* Attribution (the rule of schema v3's trigger outbox_attribution): a
 * member's purchase without a reco_id is attributed to the latest
 * recommendation list shown to that member on this device (by the sale's
 * guide, if it names one) within settings.attribution_window_ms (default
 * 2 h; 0 turns it off): guide_id, reco_id and "attributed":"auto" are set in
 * the body before it is stored. *out: the new body (sqlite3_free), or NULL
 * when nothing applies. */
static int attribute(outbox *ob, const outbox__row *r, const struct who *w, char **out, size_t *out_len)
{
	*out = NULL;
	if (!w->has_member || w->has_reco || ob->attrib_window <= 0)
		return SCRM_OK;
	sqlite3_stmt *st = ob->attrib_any;
	sqlite3_reset(st);
	sqlite3_bind_text(st, 1, w->member.p, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, r->wall_ms);
	sqlite3_bind_int64(st, 3, ob->attrib_window);
	int rc = sqlite3_step(st);
	sqlite3_reset(st);
	if (rc == SQLITE_DONE)
		return SCRM_OK;
	if (rc != SQLITE_ROW)
		return outbox__fail(ob, rc, "attribute the sale");
	st = ob->attrib;
	sqlite3_reset(st);
	sqlite3_bind_text(st, 1, r->body, (int)r->body_len, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, w->member.p, -1, SQLITE_STATIC);
	if (w->has_guide)
		sqlite3_bind_text(st, 3, w->guide.p, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 3);
	sqlite3_bind_int64(st, 4, r->wall_ms);
	sqlite3_bind_int64(st, 5, ob->attrib_window);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
		*out_len = (size_t)sqlite3_column_bytes(st, 0);
		if (!(*out = sqlite3_malloc64(*out_len + 1))) {
			sqlite3_reset(st);
			return err__set(SCRM_E_NOMEM, "outbox: out of memory attributing a sale");
		}
		memcpy(*out, sqlite3_column_text(st, 0), *out_len + 1);
		rc = SQLITE_DONE;
	} else if (rc == SQLITE_ROW) {
		rc = SQLITE_DONE;
	}
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? SCRM_OK : outbox__fail(ob, rc, "attribute the sale");
}

/* The ledgers the kinds reco_shown and coupon_redeem keep (schema v3's
 * triggers outbox_reco_shown and outbox_redemption): every list shown to a
 * guide is remembered for attribution; a redemption and its ledger row, which
 * coupon limits count and central's verdict is recorded against, are written
 * together and never disagree. */
static int ledger_of(outbox *ob, const outbox__row *r)
{
	sqlite3_stmt *st = strcmp(r->kind, "reco_shown") == 0      ? ob->led_reco
			   : strcmp(r->kind, "coupon_redeem") == 0 ? ob->led_redeem
								   : NULL;
	if (!st)
		return SCRM_OK;
	sqlite3_reset(st);
	sqlite3_bind_text(st, 1, r->id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, r->seq);
	sqlite3_bind_text(st, 3, r->body, (int)r->body_len, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, r->wall_ms);
	int rc = sqlite3_step(st);
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? SCRM_OK : outbox__fail(ob, rc, "record the event's ledger row");
}

/* Insert rows inside an open write transaction, each decided on its own
 * under outbox.max_bytes (outbox.h). */
static int append_rows(outbox *ob, outbox__row *rows, size_t n, int64_t trusted_after_ms, struct who *w)
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
	const int64_t pending = sqlite3_column_int64(ob->get_dev, 10);
	sqlite3_reset(ob->get_dev);
	loaded = clock;
	if ((rc = outbox__receipts_catch_up(ob, next - 1, pending)))
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
		const int paid = outbox__kind_paid(r->kind);
		const int keyed = outbox__kind_key(r->kind) != NULL;
		const int purchase = strcmp(r->kind, "purchase") == 0;
		const int sale = purchase || strcmp(r->kind, "return") == 0;
		unsigned char digest[OUTBOX_DIGEST_BYTES];
		const char *key = NULL;
		char *owned = NULL; /* sqlite3_free: the key read from the body */
		char *attributed = NULL; /* sqlite3_free: the body attribution made */
		size_t attributed_len = 0;
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
		/* The digest above is the caller's content (a retry sends that);
		 * the stored body is the attributed one. */
		if (sale && ((rc = who_of(ob, r, w)) || (purchase && (rc = attribute(ob, r, w, &attributed, &attributed_len))))) {
			sqlite3_free(owned);
			sqlite3_free(attributed);
			return rc;
		}
		const char *body = attributed ? attributed : r->body;
		const size_t body_len = attributed ? attributed_len : r->body_len;
		const int64_t need = (int64_t)body_len + OUTBOX_ROW_OVERHEAD;
		/* Older evictable events make room first (never this call's own
		 * rows: a receipt just given stays true until commit). Room for
		 * an evictable event is made only if it then fits; a paid event
		 * takes all there is before it may use the reserve. */
		if (used + need > soft && need <= max_bytes) {
			int64_t freed = 0;
			if ((rc = outbox__evict(ob, used + need - soft, first, !paid, now, &freed)) ||
			    (rc = outbox__read_usage(ob, &used))) {
				sqlite3_free(owned);
				sqlite3_free(attributed);
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
			sqlite3_free(attributed);
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
				sqlite3_free(attributed);
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
				sqlite3_free(attributed);
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
		sqlite3_bind_text(st, 8, body, (int)body_len, SQLITE_STATIC);
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
		if (sale && w->has_member)
			sqlite3_bind_text(st, 14, w->member_json.p, -1, SQLITE_STATIC);
		else
			sqlite3_bind_null(st, 14);
		rc = sqlite3_step(st);
		sqlite3_reset(st);
		if (rc != SQLITE_DONE) {
			sqlite3_free(owned);
			sqlite3_free(attributed);
			return outbox__fail(ob, rc, "insert event");
		}
		rc = key ? outbox__receipts_add(ob, r->kind, key, r->seq) : SCRM_OK;
		if (rc == SCRM_OK)
			rc = ledger_of(ob, r);
		sqlite3_free(owned);
		sqlite3_free(attributed);
		if (rc)
			return rc;
		used += need;
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

int outbox__append_locked(outbox *ob, outbox__row *rows, size_t n, int64_t trusted_after_ms)
{
	struct who w;
	sbuf__init(&w.member_json);
	sbuf__init(&w.member);
	sbuf__init(&w.guide);
	int rc = append_rows(ob, rows, n, trusted_after_ms, &w);
	sbuf__free(&w.member_json);
	sbuf__free(&w.member);
	sbuf__free(&w.guide);
	return rc;
}


int outbox__append(outbox *ob, outbox__row *rows, size_t n, int64_t trusted_after_ms)
{
	int rc, retried = 0;
again:
	ob->corrupt = 0;
	if ((rc = outbox__hold(ob)))
		goto failed;
	rc = sqlite3_exec(ob->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
	outbox__turn_taken(ob);
	if (rc != SQLITE_OK) {
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
