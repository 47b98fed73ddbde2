/* SPDX-License-Identifier: Apache-2.0 */
/*
 * status: the resync schedule (which stream to ask central for, and when:
 * one at a time in streams.def order, waiting longer after each silence),
 * emptying streams on command (purge), and the per-stream status.
 */
#include "cache_int.h"

#include "err.h"
#include "platform.h"

#include <stdio.h>
#include <string.h>

/* ---- resync schedule ------------------------------------------------ */

void cache__want_stream(cache *c, int st, const char *reason)
{
	if (c->rs[st].want)
		return;
	c->rs[st].want = 1;
	snprintf(c->rs[st].reason, sizeof(c->rs[st].reason), "%s", reason);
}

void cache__want(cache *c, int st, const char *reason)
{
	for (int i = 0; i < ST_COUNT; i++)
		if (st < 0 || st == i)
			cache__want_stream(c, i, reason);
}

int cache__purge(cache *c, int st)
{
	char sql[600];
	int rc;
	if (st >= ST_COUNT)
		return err__set(SCRM_E_INVALID, "stream: unknown");
	if ((rc = cache__exec(c, "BEGIN IMMEDIATE")))
		return rc;
	for (int i = 0; i < ST_COUNT; i++) {
		if (st >= 0 && st != i)
			continue;
		/* gen moves so readers holding parsed state (the guide's
		 * campaigns) drop it. */
		snprintf(sql, sizeof(sql),
			 "DELETE FROM \"%s\"; DROP TABLE IF EXISTS \"%s__stage\"; DELETE FROM delta_buf WHERE stream = '%s';"
			 " UPDATE streams SET cursor = 0, gen = gen + 1, snap_id = NULL, snap_version = NULL,"
			 " snap_chunks = NULL, snap_next = NULL, snap_started_ms = NULL WHERE name = '%s'",
			 cache__streams[i].name, cache__streams[i].name, cache__streams[i].name, cache__streams[i].name);
		if ((rc = cache__exec(c, sql))) {
			cache__rollback(c);
			return rc;
		}
	}
	if ((rc = cache__exec(c, "COMMIT"))) {
		cache__rollback(c);
		return rc;
	}
	for (int i = 0; i < ST_COUNT; i++)
		if (st < 0 || st == i) {
			c->rs[i].want = 0; /* a purge outranks any earlier reason */
			cache__want_stream(c, i, "purged");
		}
	return SCRM_OK;
}

void cache__reset_requests(cache *c)
{
	if (c->inflight >= 0) {
		cache__want_stream(c, c->inflight, "resume");
		c->inflight = -1;
	}
}

int cache__next_request(cache *c, int64_t now, sbuf *out, int *stream)
{
	struct stream_row r;
	const char *reason;
	int st = c->inflight;
	if (st >= 0) {
		if (now - c->inflight_ms < c->rs[st].timeout_ms)
			return 0;
		/* Silence: ask again from where we are, waiting longer each time
		 * (central may be down or not serve this stream). */
		reason = "timeout";
		c->rs[st].timeout_ms = c->rs[st].timeout_ms * 2 > MAX_TIMEOUT_MS ? MAX_TIMEOUT_MS : c->rs[st].timeout_ms * 2;
	} else {
		for (st = 0; st < ST_COUNT && !c->rs[st].want; st++)
			;
		if (st == ST_COUNT)
			return 0;
		reason = c->rs[st].reason;
	}
	if (cache__read_stream(c, st, &r) != SCRM_OK) {
		/* try again after the timeout rather than at once */
		c->inflight = st;
		c->inflight_ms = now;
		return 0;
	}
	if (!strcmp(reason, "resume") && !r.staging)
		reason = r.cursor ? "gap" : "bootstrap";
	sbuf__reset(out);
	sbuf__puts(out, "{\"v\":1,\"stream\":");
	sbuf__jstr(out, cache__streams[st].name);
	sbuf__puts(out, ",\"cursor\":");
	sbuf__i64(out, r.cursor);
	sbuf__puts(out, ",\"reason\":");
	sbuf__jstr(out, reason);
	if (r.staging) {
		sbuf__puts(out, ",\"snapshot\":");
		sbuf__jstr(out, r.snap_id);
		sbuf__puts(out, ",\"from_chunk\":");
		sbuf__i64(out, r.snap_next);
	}
	sbuf__putc(out, '}');
	c->inflight = st;
	c->inflight_ms = now;
	*stream = st;
	return 1;
}

int64_t cache__next_deadline(cache *c)
{
	if (c->inflight >= 0)
		return c->inflight_ms + c->rs[c->inflight].timeout_ms;
	for (int i = 0; i < ST_COUNT; i++)
		if (c->rs[i].want)
			return 1; /* now */
	return 0;
}

/* ---- status --------------------------------------------------------- */

/* The snapshot a stream is fetching: its figures, in the order status
 * shows them, by their column in cache__status's query. */
static const struct {
	const char *member;
	int col;
} snapshot_figures[] = {{",\"version\":", 7}, {",\"chunks_done\":", 5}, {",\"chunks\":", 6}};

int cache__status(cache *c, sbuf *out)
{
	sqlite3_stmt *q = NULL;
	int rc, first = 1;
	int64_t now = platform__wall_ms();
	if ((rc = cache__prep(c, c->db, &q,
		       "SELECT name, cursor, applied_ms, refused, snap_id, snap_next, snap_chunks, snap_version FROM streams", 0)))
		return rc;
	sbuf__reset(out);
	sbuf__puts(out, "{\"streams\":[");
	while (sqlite3_step(q) == SQLITE_ROW) {
		int st = cache__stream_parse((const char *)sqlite3_column_text(q, 0));
		int64_t applied = sqlite3_column_int64(q, 2), rows = 0;
		sqlite3_stmt *cnt = NULL;
		char sql[120];
		if (st < 0)
			continue;
		snprintf(sql, sizeof(sql), "SELECT count(*) FROM \"%s\"", cache__streams[st].name);
		if (cache__prep(c, c->db, &cnt, sql, 0) == SCRM_OK && sqlite3_step(cnt) == SQLITE_ROW)
			rows = sqlite3_column_int64(cnt, 0);
		sqlite3_finalize(cnt);
		if (!first)
			sbuf__putc(out, ',');
		first = 0;
		sbuf__puts(out, "{\"stream\":");
		sbuf__jstr(out, cache__streams[st].name);
		sbuf__puts(out, ",\"cursor\":");
		sbuf__i64(out, sqlite3_column_int64(q, 1));
		sbuf__puts(out, ",\"rows\":");
		sbuf__i64(out, rows);
		sbuf__puts(out, ",\"applied_ms\":");
		sbuf__i64(out, applied);
		sbuf__puts(out, ",\"age_ms\":");
		if (applied)
			sbuf__i64(out, now - applied);
		else
			sbuf__puts(out, "null");
		sbuf__puts(out, ",\"refused\":");
		sbuf__i64(out, sqlite3_column_int64(q, 3));
		if (sqlite3_column_type(q, 4) != SQLITE_NULL) {
			sbuf__puts(out, ",\"snapshot\":{\"id\":");
			sbuf__jstr(out, (const char *)sqlite3_column_text(q, 4));
			for (size_t i = 0; i < sizeof(snapshot_figures) / sizeof(snapshot_figures[0]); i++) {
				sbuf__puts(out, snapshot_figures[i].member);
				sbuf__i64(out, sqlite3_column_int64(q, snapshot_figures[i].col));
			}
			sbuf__putc(out, '}');
		}
		if (c->rs[st].want) {
			sbuf__puts(out, ",\"resync\":");
			sbuf__jstr(out, c->rs[st].reason);
		}
		sbuf__putc(out, '}');
	}
	sqlite3_finalize(q);
	sbuf__puts(out, "],\"tenant_key\":");
	sbuf__puts(out, c->has_tenant_key ? "true" : "false");
	sbuf__puts(out, ",\"data_key_new\":");
	sbuf__puts(out, c->data_key_new ? "true" : "false");
	sbuf__puts(out, ",\"unhashed_phones\":");
	sbuf__i64(out, c->unhashed_phones);
	sbuf__puts(out, ",\"central_key\":");
	sbuf__puts(out, c->central ? "true" : "false");
	sbuf__puts(out, ",\"erasure_pending\":");
	sbuf__puts(out, cache__erasure_pending(c) ? "true" : "false");
	sbuf__putc(out, '}');
	return out->oom ? err__set(SCRM_E_NOMEM, "out of memory") : SCRM_OK;
}
