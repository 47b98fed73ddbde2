/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outbox delivery: what the daemon reads and retires — batches in seq order
 * (every event checked before it leaves; one that cannot be sent is set
 * aside, setaside.c), acks that delete, central's rejections, the oldest
 * pending seq and the stats. Reads that find the file damaged heal it
 * (outbox__healed) and are tried once more.
 */
#include "outbox_int.h"

#include "err.h"
#include "ident.h"
#include "json.h"
#include "platform.h"
#include "uuid.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

/* ---- reading batches: every event checked before it leaves ---- */

/* A stored event id: exactly 36 bytes (a NUL inside fails uuid__valid). */
static int uuid_ok(const unsigned char *t, int n)
{
	return t && n == 36 && uuid__valid((const char *)t);
}

/* kind: 1..32 of [a-z_]; boot: 1..64 printable ASCII without quotes or
 * backslashes (it is written into the batch as is). */
static int token_ok(const unsigned char *t, int n, int max, int kind)
{
	if (!kind)
		return n >= 0 && ident__token_ok(t, (size_t)n, (size_t)max);
	if (!t || n < 1 || n > max)
		return 0;
	for (int i = 0; i < n; i++)
		if (!((t[i] >= 'a' && t[i] <= 'z') || t[i] == '_'))
			return 0;
	return 1;
}


/* Why a stored row cannot be sent as it is (NULL: it can). A body is
 * checked as a JSON object by the same strict parser central-facing input
 * goes through, so one changed byte on disk never puts a batch central
 * drops as "not JSON" at the head of the queue forever. */

static const char *row_unsendable(sqlite3_stmt *st, char *detail, size_t cap)
{
	const unsigned char *id = sqlite3_column_text(st, 1), *kind = sqlite3_column_text(st, 2),
			    *boot = sqlite3_column_text(st, 5);
	if (!uuid_ok(id, sqlite3_column_bytes(st, 1))) {
		snprintf(detail, cap, "the stored event id is damaged");
		return "unreadable";
	}
	if (!token_ok(kind, sqlite3_column_bytes(st, 2), 32, 1)) {
		snprintf(detail, cap, "the stored kind is damaged");
		return "unreadable";
	}
	if (!token_ok(boot, sqlite3_column_bytes(st, 5), 64, 0) || sqlite3_column_type(st, 3) != SQLITE_INTEGER ||
	    sqlite3_column_type(st, 4) != SQLITE_INTEGER || sqlite3_column_type(st, 6) != SQLITE_INTEGER) {
		snprintf(detail, cap, "a stored time or boot id is damaged");
		return "unreadable";
	}
	const char *body = (const char *)sqlite3_column_blob(st, 7);
	int n = sqlite3_column_bytes(st, 7);
	cJSON *o = NULL;
	if (!body || n <= 0 || json__parse(body, (size_t)n, "body", &o) != SCRM_OK || !cJSON_IsObject(o)) {
		snprintf(detail, cap, "the stored body no longer parses: %.200s", body && n > 0 && !o ? scrm_errmsg() : "not an object");
		cJSON_Delete(o);
		return "unreadable";
	}
	cJSON_Delete(o);
	return NULL;
}


/* Write one row of `st` as a batch event (its marker when set aside). */
static void put_event(sbuf *out, sqlite3_stmt *st)
{
	sbuf__puts(out, "{\"id\":\"");
	sbuf__puts(out, (const char *)sqlite3_column_text(st, 1));
	sbuf__puts(out, "\",\"seq\":");
	sbuf__i64(out, sqlite3_column_int64(st, 0));
	sbuf__puts(out, ",\"kind\":\"");
	sbuf__puts(out, (const char *)sqlite3_column_text(st, 2));
	sbuf__puts(out, "\",\"wall_ms\":");
	sbuf__i64(out, sqlite3_column_int64(st, 3));
	sbuf__puts(out, ",\"mono_ms\":");
	sbuf__i64(out, sqlite3_column_int64(st, 4));
	sbuf__puts(out, ",\"boot\":\"");
	sbuf__puts(out, (const char *)sqlite3_column_text(st, 5));
	sbuf__puts(out, sqlite3_column_int(st, 6) ? "\",\"clock_ok\":true" : "\",\"clock_ok\":false");
	if (sqlite3_column_int(st, 9) == 1)
		sbuf__puts(out, ",\"recovered\":true");
	if (sqlite3_column_type(st, 8) != SQLITE_NULL) {
		sbuf__puts(out, ",\"set_aside\":");
		sbuf__puts(out, (const char *)sqlite3_column_text(st, 8));
	} else {
		sbuf__puts(out, ",\"body\":");
		sbuf__put(out, (const char *)sqlite3_column_text(st, 7), (size_t)sqlite3_column_bytes(st, 7));
	}
	sbuf__putc(out, '}');
}

/* A marker for an event whose stored id, kind or boot cannot be trusted
 * any more: only what is still well-formed goes out with it. */
static void put_marker_damaged(sbuf *out, sqlite3_stmt *st)
{
	const unsigned char *id = sqlite3_column_text(st, 1), *kind = sqlite3_column_text(st, 2);
	sbuf__puts(out, "{\"seq\":");
	sbuf__i64(out, sqlite3_column_int64(st, 0));
	if (uuid_ok(id, sqlite3_column_bytes(st, 1))) {
		sbuf__puts(out, ",\"id\":\"");
		sbuf__puts(out, (const char *)id);
		sbuf__puts(out, "\"");
	}
	if (token_ok(kind, sqlite3_column_bytes(st, 2), 32, 1)) {
		sbuf__puts(out, ",\"kind\":\"");
		sbuf__puts(out, (const char *)kind);
		sbuf__puts(out, "\"");
	}
	sbuf__puts(out, ",\"set_aside\":");
	sbuf__puts(out, (const char *)sqlite3_column_text(st, 8));
	sbuf__putc(out, '}');
}

/* A marker larger than the broker takes (a tiny Maximum Packet Size, a
 * 16-digit seq after a quarantine): only seq and the reason, rewritten in
 * place from `at`, so the marker itself can never hold up the queue. */
static void put_marker_bare(sbuf *out, sqlite3_stmt *st, size_t at)
{
	char reason[40] = "unreadable";
	cJSON *o = cJSON_Parse((const char *)sqlite3_column_text(st, 8)); /* our own json_object() */
	const char *r = json__str(o, "reason");
	if (r)
		snprintf(reason, sizeof(reason), "%s", r);
	cJSON_Delete(o);
	out->len = at;
	sbuf__puts(out, "{\"seq\":");
	sbuf__i64(out, sqlite3_column_int64(st, 0));
	sbuf__puts(out, ",\"set_aside\":{\"reason\":");
	sbuf__jstr(out, reason);
	sbuf__puts(out, sqlite3_column_int(st, 9) == 1 ? "},\"recovered\":true}" : "}}");
}

static int read_batch_once(outbox *ob, int64_t after_seq, size_t max_events, size_t max_bytes, size_t hard_bytes,
			   sbuf *out, size_t *count, int64_t *last_seq, int64_t *first_seq)
{
	sqlite3_stmt *st;
	size_t n = 0;
	int rc, rounds = 0;
	int64_t from = after_seq;

	outbox__follow(ob); /* a fresh outbox replaced a damaged one: send from it */
	st = ob->read;
	*count = 0;
	*last_seq = 0;
	if (first_seq)
		*first_seq = 0;
again:
	sqlite3_reset(st);
	sqlite3_bind_int64(st, 1, from);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)(max_events - n));
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		size_t mark = out->len;
		int64_t seq = sqlite3_column_int64(st, 0);
		const char *why = NULL;
		char detail[300] = "";
		int aside = sqlite3_column_type(st, 8) != SQLITE_NULL;
		if (n)
			sbuf__putc(out, ',');
		if (aside && !uuid_ok(sqlite3_column_text(st, 1), sqlite3_column_bytes(st, 1)))
			put_marker_damaged(out, st);
		else if (aside && (!token_ok(sqlite3_column_text(st, 2), sqlite3_column_bytes(st, 2), 32, 1) ||
				   !token_ok(sqlite3_column_text(st, 5), sqlite3_column_bytes(st, 5), 64, 0)))
			put_marker_damaged(out, st);
		else if (!aside && (why = row_unsendable(st, detail, sizeof(detail))) != NULL)
			out->len = mark;
		else
			put_event(out, st);
		if (aside && hard_bytes && out->len - mark - (n ? 1 : 0) > hard_bytes)
			put_marker_bare(out, st, mark + (n ? 1 : 0));
		if (!why && !aside && hard_bytes && out->len - mark - (n ? 1 : 0) > hard_bytes) {
			/* Larger than the broker takes even alone: it would close
			 * the connection on every try and hold up the queue. */
			snprintf(detail, sizeof(detail),
				 "the event is %zu bytes as sent; the broker accepts messages of at most %zu"
				 " (its Maximum Packet Size, less the topic and batch envelope)",
				 out->len - mark - (n ? 1 : 0), hard_bytes);
			why = "too_big";
		}
		if (why) {
			int64_t bytes = sqlite3_column_bytes(st, 7);
			out->len = mark;
			if (out->p)
				out->p[mark] = '\0';
			sqlite3_reset(st);
			/* Set aside, then read on from the same place: the row
			 * now gives its marker. A row that cannot even be set
			 * aside is a store error, reported as such. */
			if (++rounds > 1000)
				return err__set(SCRM_E_INTERNAL, "outbox: read batch: too many events set aside in one read");
			if ((rc = outbox__set_aside(ob, seq, why, detail, bytes)))
				return rc;
			from = seq - 1;
			goto again;
		}
		if (n > 0 && out->len > max_bytes) {
			/* This event would overflow the message: leave it for the next. */
			out->len = mark;
			out->p[mark] = '\0';
			break;
		}
		*last_seq = seq;
		if (n == 0 && first_seq)
			*first_seq = seq;
		from = seq;
		n++;
	}
	sqlite3_reset(st);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return outbox__fail(ob, rc, "read batch");
	if (out->oom)
		return err__set(SCRM_E_NOMEM, "out of memory building a batch");
	*count = n;
	return SCRM_OK;
}

int outbox__remove(outbox *ob, int64_t lo, int64_t hi, int64_t *deleted)
{
	sqlite3_stmt *const steps[] = {ob->rm_orders, ob->rm_activity, ob->rm_usage, ob->rm_device, ob->del};
	static const char *const what[] = {"keep the receipts", "keep the members' sales", "count what leaves the queue",
					   "keep the counters", "delete from the queue"};
	*deleted = 0;
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		sqlite3_reset(steps[i]);
		sqlite3_bind_int64(steps[i], 1, lo);
		sqlite3_bind_int64(steps[i], 2, hi);
		int rc = sqlite3_step(steps[i]);
		sqlite3_reset(steps[i]);
		if (rc != SQLITE_DONE)
			return outbox__fail(ob, rc, what[i]);
	}
	*deleted = sqlite3_changes(ob->db);
	return SCRM_OK;
}

/* One chunk of an ack, lo..hi, in its own transaction.
 *
 * Committed without an fsync (synchronous=NORMAL for this transaction
 * only): an ack that a power cut takes back only brings its events back to
 * the queue, whole with their receipts and ledgers (SQLite's WAL recovers a
 * prefix of the commits), and they are sent again, which central
 * deduplicates by seq (protocol.md); the next capture's fsync, or a
 * checkpoint, makes it durable on the way. Every other write keeps FULL.
 * Measured with scrm-bench-sync: a 50k drain with a till recording went
 * from 13.5-16.9k to 19.9-20.9k events/s; the till's own latency did not
 * change. */
static int ack_once(outbox *ob, int64_t lo, int64_t hi, int64_t now_ms, int64_t *deleted)
{
	int rc;
	int64_t del = 0, used = 0, max_bytes = 0, reserve = 0;

	outbox__follow(ob);
	if ((rc = outbox__exec(ob, "PRAGMA synchronous=NORMAL")))
		return rc;
	if ((rc = sqlite3_exec(ob->db, "BEGIN IMMEDIATE", NULL, NULL, NULL)) != SQLITE_OK) {
		rc = outbox__fail(ob, rc, "begin");
		goto cleanup;
	}
	if ((rc = outbox__remove(ob, lo, hi, &del)))
		goto cleanup;
	sqlite3_reset(ob->ack_meta);
	sqlite3_bind_int64(ob->ack_meta, 1, now_ms);
	sqlite3_bind_int64(ob->ack_meta, 2, hi);
	rc = sqlite3_step(ob->ack_meta);
	sqlite3_reset(ob->ack_meta);
	if (rc != SQLITE_DONE) {
		rc = outbox__fail(ob, rc, "record ack");
		goto cleanup;
	}
	/* Room again for every kind of event: the full alarm is over. */
	if (del && ((rc = outbox__read_limits(ob, &max_bytes, &reserve)) || (rc = outbox__read_usage(ob, &used))))
		goto cleanup;
	if (del && used <= max_bytes - reserve && (rc = outbox__alarm_clear(ob, "outbox_full")))
		goto cleanup;
	if ((rc = sqlite3_exec(ob->db, "COMMIT", NULL, NULL, NULL)) != SQLITE_OK) {
		rc = outbox__fail(ob, rc, "commit ack");
		goto cleanup;
	}
	*deleted = del;
	return outbox__exec(ob, "PRAGMA synchronous=FULL");
cleanup:
	outbox__rollback(ob);
	/* back to FULL whatever happened: the rest of this handle's writes
	 * must be durable (an error here is the connection's, already said) */
	sqlite3_exec(ob->db, "PRAGMA synchronous=FULL", NULL, NULL, NULL);
	return rc;
}

static int reject_once(outbox *ob, int64_t seq, const char *reason, int64_t now_ms)
{
	int rc;
	if ((rc = sqlite3_exec(ob->db, "BEGIN IMMEDIATE", NULL, NULL, NULL)) != SQLITE_OK)
		return outbox__fail(ob, rc, "begin");
	sqlite3_reset(ob->rej_copy);
	sqlite3_bind_int64(ob->rej_copy, 1, seq);
	sqlite3_bind_text(ob->rej_copy, 2, reason ? reason : "", -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(ob->rej_copy, 3, now_ms);
	rc = sqlite3_step(ob->rej_copy);
	sqlite3_reset(ob->rej_copy);
	if (rc != SQLITE_DONE) {
		rc = outbox__fail(ob, rc, "keep rejected event");
		goto cleanup;
	}
	int64_t gone = 0;
	if ((rc = outbox__remove(ob, seq, seq, &gone)))
		goto cleanup;
	if ((rc = sqlite3_exec(ob->db, "COMMIT", NULL, NULL, NULL)) != SQLITE_OK) {
		rc = outbox__fail(ob, rc, "commit reject");
		goto cleanup;
	}
	return SCRM_OK;
cleanup:
	outbox__rollback(ob);
	return rc;
}

static int oldest_once(outbox *ob, int64_t *seq)
{
	int rc;
	outbox__follow(ob);
	sqlite3_reset(ob->oldest);
	rc = sqlite3_step(ob->oldest);
	*seq = rc == SQLITE_ROW ? sqlite3_column_int64(ob->oldest, 0) : 0;
	sqlite3_reset(ob->oldest);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? SCRM_OK : outbox__fail(ob, rc, "oldest");
}

static int stats_once(outbox *ob, scrm_outbox_stats *st)
{
	sqlite3_stmt *q = NULL;
	int rc;
	memset(st, 0, sizeof(*st));
	outbox__follow(ob);
	/* One read transaction so the figures are consistent with each other. */
	rc = outbox__one_row(ob,
			     /* From the running totals (schema v7), not a scan: the
			      * heartbeat asks this every minute of a long outage. */
			     "SELECT t.events, t.bytes - t.events * " XSTR(OUTBOX_ROW_OVERHEAD) ","
			     " coalesce((SELECT wall_ms FROM outbox ORDER BY seq LIMIT 1), 0), t.next_seq - 1, d.last_ack_ms,"
			     " d.last_acked_seq, (SELECT count(*) FROM rejected) FROM device d, totals t WHERE d.id = 1",
			     &q, "stats");
	if (rc == SCRM_OK) {
		int64_t *const figures[] = {&st->pending,     &st->pending_bytes,  &st->oldest_pending_ms, &st->last_seq,
					    &st->last_ack_ms, &st->last_acked_seq, &st->rejected};
		outbox__columns_i64(q, 0, figures, sizeof(figures) / sizeof(figures[0]));
	}
	sqlite3_finalize(q);
	return rc;
}

int outbox__read_batch(outbox *ob, int64_t after_seq, size_t max_events, size_t max_bytes, size_t hard_bytes,
		       sbuf *out, size_t *count, int64_t *last_seq, int64_t *first_seq)
{
	size_t mark = out->len;
	ob->corrupt = 0;
	int rc = read_batch_once(ob, after_seq, max_events, max_bytes, hard_bytes, out, count, last_seq, first_seq);
	if (outbox__healed(ob, rc)) {
		out->len = mark;
		if (out->p)
			out->p[mark] = '\0';
		rc = read_batch_once(ob, after_seq, max_events, max_bytes, hard_bytes, out, count, last_seq, first_seq);
	}
	return rc;
}

/* Acknowledged events leave the queue in transactions of at most
 * ACK_CHUNK_ROWS rows (outbox_int.h). */
static int ack_chunk(outbox *ob, int64_t lo, int64_t hi, int64_t now_ms, int64_t *deleted)
{
	ob->corrupt = 0;
	int rc = ack_once(ob, lo, hi, now_ms, deleted);
	if (outbox__healed(ob, rc))
		rc = ack_once(ob, lo, hi, now_ms, deleted);
	if (outbox__release_reserve(ob, rc))
		rc = ack_once(ob, lo, hi, now_ms, deleted);
	outbox__note_reserve_released(ob);
	return rc;
}

int outbox__ack(outbox *ob, const int64_t (*ranges)[2], size_t n, int64_t now_ms, int64_t *deleted)
{
	int64_t total = 0;
	int rc = SCRM_OK;
	for (size_t i = 0; i < n && rc == SCRM_OK; i++) {
		int64_t lo = ranges[i][0];
		for (;;) {
			/* the chunk ends at its ACK_CHUNK_ROWS-th row, or the range's end
			 * (seqs are sparse: a quarantine's floor jumps them) */
			int64_t hi = ranges[i][1], gone = 0;
			sqlite3_reset(ob->ack_chunk);
			sqlite3_bind_int64(ob->ack_chunk, 1, lo);
			sqlite3_bind_int64(ob->ack_chunk, 2, hi);
			if (sqlite3_step(ob->ack_chunk) == SQLITE_ROW)
				hi = sqlite3_column_int64(ob->ack_chunk, 0);
			sqlite3_reset(ob->ack_chunk);
			if ((rc = ack_chunk(ob, lo, hi, now_ms, &gone)))
				break;
			total += gone;
			if (hi >= ranges[i][1])
				break;
			lo = hi + 1;
			/* A till waiting for the lock goes first (turn.c). */
			outbox__yield_to_tills(ob);
		}
	}
	if (deleted)
		*deleted = total;
	return rc;
}

int outbox__oldest_seq(outbox *ob, int64_t *seq)
{
	ob->corrupt = 0;
	int rc = oldest_once(ob, seq);
	if (outbox__healed(ob, rc))
		rc = oldest_once(ob, seq);
	return rc;
}

int outbox__stats(outbox *ob, scrm_outbox_stats *st)
{
	ob->corrupt = 0;
	int rc = stats_once(ob, st);
	if (outbox__healed(ob, rc))
		rc = stats_once(ob, st);
	return rc;
}


int outbox__reject(outbox *ob, int64_t seq, const char *reason, int64_t now_ms)
{
	int rc = reject_once(ob, seq, reason, now_ms);
	if (outbox__release_reserve(ob, rc))
		rc = reject_once(ob, seq, reason, now_ms);
	outbox__note_reserve_released(ob);
	return rc;
}
