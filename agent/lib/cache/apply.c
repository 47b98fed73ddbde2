/* SPDX-License-Identifier: Apache-2.0 */
/*
 * apply: central's deltas and snapshot chunks into cache.db (protocol.md,
 * "Customer cache"), and snapshot files through the same path. A delta and
 * its cursor move in one transaction; a delta that does not follow the
 * cursor asks for a resync; deltas arriving while a snapshot is built are
 * kept aside (sealed) and replayed after the swap.
 *
 * Snapshot swap: the last chunk's transaction builds the stage table's
 * indexes, drops the live table and renames the stage into its place, and
 * moves the cursor — readers (WAL) see the old complete view until that
 * commit.
 */
#include "cache_int.h"

#include "err.h"
#include "json.h"
#include "platform.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- records into a table ------------------------------------------- */

static void note_refused(cache *c, const char *why)
{
	if (!c->refused_detail[0])
		snprintf(c->refused_detail, sizeof(c->refused_detail), "%s", why);
}

/* Upsert one record (a delta op or a snapshot record) into `table`. */
static int put_record(cache *c, int st, const char *table, sqlite3_stmt **ins, const char *key, cJSON *rec,
		      const char *path, int64_t *refused)
{
	int rc;
	if (!*ins) {
		char sql[600];
		snprintf(sql, sizeof(sql), "INSERT OR REPLACE INTO \"%s\"%s", table, cache__streams[st].insert);
		if ((rc = cache__prep(c, c->db, ins, sql, 0)))
			return rc;
	}
	sqlite3_reset(*ins);
	sqlite3_clear_bindings(*ins);
	sqlite3_bind_text(*ins, 1, key, -1, SQLITE_TRANSIENT);
	rc = cache__streams[st].bind(c, key, rec, *ins, path);
	if (rc == SCRM_E_CRYPTO) {
		/* A record central did not sign (or that was altered) is dropped
		 * alone; if an older signed version is cached it stays. */
		note_refused(c, scrm_errmsg());
		(*refused)++;
		return SCRM_OK;
	}
	if (rc)
		return rc;
	rc = sqlite3_step(*ins);
	if (rc != SQLITE_DONE)
		return cache__fail(c, rc, "write record");
	return SCRM_OK;
}

static int delete_record(cache *c, const char *table, const char *key)
{
	sqlite3_stmt *st = NULL;
	char sql[200];
	snprintf(sql, sizeof(sql), "DELETE FROM \"%s\" WHERE key = ?1", table);
	int rc = cache__prep(c, c->db, &st, sql, 0);
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? SCRM_OK : cache__fail(c, rc, "delete record");
}

static int rec_key(const cJSON *rec, const char *path, const char **key)
{
	const cJSON *k = cJSON_GetObjectItemCaseSensitive(rec, "key");
	if (!cJSON_IsObject(rec)) /* path ends with '.' */
		return err__set(SCRM_E_INVALID, "%.*s: must be an object", (int)(strlen(path) - 1), path);
	if (!cJSON_IsString(k) || !cache__key_ok(k->valuestring))
		return err__set(SCRM_E_INVALID, "%skey: required, 1..64 of [A-Za-z0-9_.:>-]", path);
	*key = k->valuestring;
	return SCRM_OK;
}


/* Apply a delta's ops to the live table, inside the caller's transaction. */
static int apply_ops(cache *c, int st, cJSON *ops, int staging_members, cache__forget_fn fn, void *ctx, int64_t *n,
		     int64_t *refused)
{
	sqlite3_stmt *ins = NULL;
	cJSON *op;
	int i = 0, rc = SCRM_OK;
	char path[48];
	cJSON_ArrayForEach(op, ops)
	{
		const char *key, *kind;
		const cJSON *o;
		snprintf(path, sizeof(path), "ops[%d].", i++);
		if ((rc = rec_key(op, path, &key)))
			break;
		o = cJSON_GetObjectItemCaseSensitive(op, "op");
		kind = cJSON_IsString(o) ? o->valuestring : "";
		if (strcmp(kind, "upsert") == 0) {
			rc = put_record(c, st, cache__streams[st].name, &ins, key, op, path, refused);
		} else if (strcmp(kind, "delete") == 0) {
			rc = delete_record(c, cache__streams[st].name, key);
		} else if (strcmp(kind, "forget") == 0) {
			if (st != ST_MEMBERS) {
				rc = err__set(SCRM_E_INVALID, "%sop: forget is only valid on members", path);
				break;
			}
			if (fn && (rc = fn(ctx, key)))
				break;
			rc = cache__forget_rows(c, key, staging_members);
		} else {
			rc = err__set(SCRM_E_INVALID, "%sop: must be upsert, delete or forget", path);
		}
		if (rc)
			break;
		(*n)++;
	}
	sqlite3_finalize(ins);
	return rc;
}

static int set_cursor(cache *c, int st, int64_t cursor, int64_t add_refused)
{
	sqlite3_stmt *q = NULL;
	int rc = cache__prep(c, c->db, &q,
		      "UPDATE streams SET cursor = ?2, applied_ms = ?3, refused = refused + ?4 WHERE name = ?1", 0);
	if (rc)
		return rc;
	sqlite3_bind_text(q, 1, cache__streams[st].name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 2, cursor);
	sqlite3_bind_int64(q, 3, platform__wall_ms());
	sqlite3_bind_int64(q, 4, add_refused);
	rc = sqlite3_step(q);
	sqlite3_finalize(q);
	return rc == SQLITE_DONE ? SCRM_OK : cache__fail(c, rc, "advance cursor");
}

/* ---- deltas --------------------------------------------------------- */

/* Parse the common envelope. */
struct msg {
	cJSON *root;
	int st;
	int is_snapshot;
	int64_t base, version, chunk, chunks;
	const char *snapshot;
	cJSON *ops, *records, *forgotten;
};

static int parse_msg(cache *c, const char *topic_stream, const char *payload, size_t len, struct msg *m)
{
	const char *s;
	const cJSON *it;
	int64_t v;
	int rc;

	memset(m, 0, sizeof(*m));
	m->st = -1;
	if (len > c->max_msg)
		return err__set(SCRM_E_TOO_BIG, "message: %zu bytes, more than cache.max_message_bytes (%zu)", len, c->max_msg);
	/* Strict (json.h): NULs, repeated keys ("version" twice, "key" twice
	 * in an op), invalid UTF-8 are refused with their place. */
	if ((rc = json__parse(payload, len, "message", &m->root)) != SCRM_OK)
		return rc;
	if (!cJSON_IsObject(m->root))
		return err__set(SCRM_E_INVALID, "message: not a JSON object");
	if ((rc = json__get_int(m->root, "v", 0, 1000, 1, 0, "", &v)))
		return rc;
	if (v != 1)
		return err__set(SCRM_E_INVALID, "v: version %lld not supported (1)", (long long)v);
	if ((rc = json__get_str(m->root, "stream", 32, 1, "", &s)))
		return rc;
	if ((m->st = cache__stream_parse(s)) < 0)
		return err__set(SCRM_E_INVALID, "stream: unknown stream \"%.32s\"", s);
	if (topic_stream && strcmp(topic_stream, s) != 0)
		return err__set(SCRM_E_INVALID, "stream: \"%s\" sent on the topic of \"%.32s\"", s, topic_stream);
	if ((rc = json__get_str(m->root, "type", 16, 1, "", &s)))
		return rc;
	if (strcmp(s, "delta") == 0) {
		if ((rc = json__get_int(m->root, "base", 0, JSON_INT_MAX, 1, 0, "", &m->base)) ||
		    (rc = json__get_int(m->root, "version", 1, JSON_INT_MAX, 1, 0, "", &m->version)))
			return rc;
		if (m->version <= m->base)
			return err__set(SCRM_E_INVALID, "version: must be greater than base (%lld <= %lld)",
					(long long)m->version, (long long)m->base);
		m->ops = cJSON_GetObjectItemCaseSensitive(m->root, "ops");
		if (!cJSON_IsArray(m->ops) || cJSON_GetArraySize(m->ops) < 1 || cJSON_GetArraySize(m->ops) > MAX_OPS)
			return err__set(SCRM_E_INVALID, "ops: required, an array of 1..%d operations", MAX_OPS);
		return SCRM_OK;
	}
	if (strcmp(s, "snapshot") != 0)
		return err__set(SCRM_E_INVALID, "type: must be delta or snapshot");
	m->is_snapshot = 1;
	if ((rc = json__get_str(m->root, "snapshot", 64, 1, "", &m->snapshot)) ||
	    (rc = json__get_int(m->root, "version", 1, JSON_INT_MAX, 1, 0, "", &m->version)) ||
	    (rc = json__get_int(m->root, "chunks", 1, MAX_CHUNKS, 1, 0, "", &m->chunks)) ||
	    (rc = json__get_int(m->root, "chunk", 0, m->chunks - 1, 1, 0, "", &m->chunk)))
		return rc;
	m->records = cJSON_GetObjectItemCaseSensitive(m->root, "records");
	if (!cJSON_IsArray(m->records) || cJSON_GetArraySize(m->records) > MAX_RECORDS)
		return err__set(SCRM_E_INVALID, "records: required, an array of at most %d", MAX_RECORDS);
	it = m->forgotten = cJSON_GetObjectItemCaseSensitive(m->root, "forgotten");
	if (it && !cJSON_IsNull(it)) {
		const cJSON *e;
		int i = 0;
		if (m->st != ST_MEMBERS || !cJSON_IsArray(it) || cJSON_GetArraySize(it) > MAX_RECORDS)
			return err__set(SCRM_E_INVALID, "forgotten: only on members, an array of member ids");
		cJSON_ArrayForEach(e, it)
		{
			if (!cJSON_IsString(e) || !cache__key_ok(e->valuestring))
				return err__set(SCRM_E_INVALID, "forgotten[%d]: must be a member id", i);
			i++;
		}
	} else {
		m->forgotten = NULL;
	}
	return SCRM_OK;
}

static int buffer_delta(cache *c, const struct msg *m, const char *payload, size_t len)
{
	sqlite3_stmt *q = NULL;
	int rc = cache__prep(c, c->db, &q, "SELECT count(*) FROM delta_buf WHERE stream = ?1", 0);
	int64_t n = 0;
	if (rc)
		return rc;
	sqlite3_bind_text(q, 1, cache__streams[m->st].name, -1, SQLITE_STATIC);
	if (sqlite3_step(q) == SQLITE_ROW)
		n = sqlite3_column_int64(q, 0);
	sqlite3_finalize(q);
	if (n >= MAX_BUFFERED) {
		c->buf_overflow[m->st] = 1; /* after the swap: ask again */
		return SCRM_OK;
	}
	/* The delta may carry members' personal fields: kept sealed like
	 * them (the stream name as associated data), never in clear. */
	uint8_t *sealed = malloc(len + CRYPTO_SEAL_OVERHEAD);
	if (!sealed)
		return err__set(SCRM_E_NOMEM, "out of memory");
	if ((rc = crypto__seal(c->sealer, cache__streams[m->st].name, strlen(cache__streams[m->st].name), payload, len, sealed))) {
		free(sealed);
		return rc;
	}
	if ((rc = cache__prep(c, c->db, &q, "INSERT OR IGNORE INTO delta_buf(stream, base, version, body) VALUES (?1, ?2, ?3, ?4)",
		       0))) {
		free(sealed);
		return rc;
	}
	sqlite3_bind_text(q, 1, cache__streams[m->st].name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 2, m->base);
	sqlite3_bind_int64(q, 3, m->version);
	sqlite3_bind_blob(q, 4, sealed, (int)(len + CRYPTO_SEAL_OVERHEAD), free);
	rc = sqlite3_step(q);
	sqlite3_finalize(q);
	return rc == SQLITE_DONE ? SCRM_OK : cache__fail(c, rc, "buffer delta");
}


/* The forget ops of a delta that is not applied now (kept for after a
 * swap, or after a gap), applied now all the same: to the view readers see
 * and the stages. A forget is final and idempotent, so applying it early is
 * always right; the rest of the delta waits for the replay or the resync. */
static int forget_now(cache *c, const struct msg *m, cache__forget_fn fn, void *ctx)
{
	const cJSON *op;
	if (m->st != ST_MEMBERS)
		return SCRM_OK;
	cJSON_ArrayForEach(op, m->ops)
	{
		const cJSON *k = cJSON_GetObjectItemCaseSensitive(op, "key");
		const cJSON *o = cJSON_GetObjectItemCaseSensitive(op, "op");
		int rc;
		if (!cJSON_IsString(o) || strcmp(o->valuestring, "forget") != 0 || !cJSON_IsString(k) ||
		    !cache__key_ok(k->valuestring))
			continue; /* a bad op ends the replay as a gap */
		if ((fn && (rc = fn(ctx, k->valuestring))) || (rc = cache__forget_rows(c, k->valuestring, 1)))
			return rc;
	}
	return SCRM_OK;
}

static int apply_delta(cache *c, const struct msg *m, const char *payload, size_t len, cache__forget_fn fn, void *ctx,
		       cache__outcome *out)
{
	struct stream_row r;
	int rc;
	if ((rc = cache__exec(c, "BEGIN IMMEDIATE")))
		return rc;
	if ((rc = cache__read_stream(c, m->st, &r)))
		goto cleanup;
	out->cursor = r.cursor;
	if (m->version <= r.cursor) {
		out->what = CA_DUPLICATE;
		goto cleanup;
	}
	if (r.staging) {
		/* Kept for after the swap; applied to the old view too when it
		 * follows it, so readers stay as fresh as possible meanwhile. */
		if ((rc = buffer_delta(c, m, payload, len)))
			goto cleanup;
		out->what = CA_BUFFERED;
		if (m->base != r.cursor) {
			/* An erasure does not wait for the swap. */
			rc = forget_now(c, m, fn, ctx);
			goto cleanup;
		}
	} else if (m->base != r.cursor) {
		out->what = CA_GAP;
		cache__want_stream(c, m->st, "gap");
		rc = forget_now(c, m, fn, ctx);
		goto cleanup;
	} else {
		out->what = CA_APPLIED;
	}
	if ((rc = apply_ops(c, m->st, m->ops, r.staging && m->st == ST_MEMBERS, fn, ctx, &out->ops, &out->refused)))
		goto cleanup;
	if ((rc = set_cursor(c, m->st, m->version, out->refused)))
		goto cleanup;
	out->cursor = m->version;
	if (out->what == CA_APPLIED) {
		/* The stream follows central again. If it was asked for, central
		 * answered with deltas (cursor → current) rather than a snapshot:
		 * the request is done and the schedule moves on to the next. */
		c->rs[m->st].want = 0;
		if (c->inflight == m->st)
			c->inflight = -1;
	}
cleanup:
	if (rc == SCRM_OK)
		rc = cache__exec(c, "COMMIT");
	if (rc)
		cache__rollback(c);
	return rc;
}

/* ---- snapshots ------------------------------------------------------ */

static int set_snap(cache *c, int st, const char *id, int64_t version, int64_t chunks, int64_t next, int64_t refused)
{
	sqlite3_stmt *q = NULL;
	int rc = cache__prep(c, c->db, &q,
		      "UPDATE streams SET snap_id = ?2, snap_version = ?3, snap_chunks = ?4, snap_next = ?5,"
		      " snap_refused = ?6,"
		      " snap_started_ms = CASE WHEN ?2 IS NULL THEN NULL ELSE coalesce(snap_started_ms, ?7) END"
		      " WHERE name = ?1",
		      0);
	if (rc)
		return rc;
	sqlite3_bind_text(q, 1, cache__streams[st].name, -1, SQLITE_STATIC);
	if (id) {
		sqlite3_bind_text(q, 2, id, -1, SQLITE_STATIC);
		sqlite3_bind_int64(q, 3, version);
		sqlite3_bind_int64(q, 4, chunks);
		sqlite3_bind_int64(q, 5, next);
		sqlite3_bind_int64(q, 6, refused);
		sqlite3_bind_int64(q, 7, platform__wall_ms());
	}
	rc = sqlite3_step(q);
	sqlite3_finalize(q);
	return rc == SQLITE_DONE ? SCRM_OK : cache__fail(c, rc, "record snapshot progress");
}

/* A buffered delta (sealed by buffer_delta) parsed, or NULL. */
cJSON *cache__open_buffered(cache *c, int st, sqlite3_stmt *q, int col)
{
	const uint8_t *blob = sqlite3_column_blob(q, col);
	int len = sqlite3_column_bytes(q, col);
	cJSON *root = NULL;
	uint8_t *pt;
	if (!blob || len <= CRYPTO_SEAL_OVERHEAD || !(pt = malloc((size_t)len)))
		return NULL;
	if (crypto__open(c->sealer, cache__streams[st].name, strlen(cache__streams[st].name), blob, (size_t)len, pt) == SCRM_OK)
		root = cJSON_ParseWithLength((const char *)pt, (size_t)len - CRYPTO_SEAL_OVERHEAD);
	memset(pt, 0, (size_t)len);
	free(pt);
	return root;
}


/* Deltas that arrived during the build, in order; stops at a gap. */
static int replay_buffered(cache *c, int st, int64_t *cursor, cache__forget_fn fn, void *ctx)
{
	sqlite3_stmt *q = NULL;
	int rc = cache__prep(c, c->db, &q, "SELECT base, version, body FROM delta_buf WHERE stream = ?1 ORDER BY base, version", 0);
	int gap = 0;
	if (rc)
		return rc;
	sqlite3_bind_text(q, 1, cache__streams[st].name, -1, SQLITE_STATIC);
	/* A forget replayed here needs no rewrite of delta_buf (q reads it):
	 * the rows are all deleted below. */
	c->replaying = 1;
	while (sqlite3_step(q) == SQLITE_ROW) {
		int64_t base = sqlite3_column_int64(q, 0), version = sqlite3_column_int64(q, 1);
		if (version <= *cursor)
			continue;
		if (base != *cursor) {
			gap = 1;
			break;
		}
		cJSON *root = cache__open_buffered(c, st, q, 2);
		int64_t n = 0, refused = 0;
		/* Each in a savepoint: one that cannot apply (never checked when
		 * it was kept) ends the replay as a gap instead of failing the
		 * swap over and over. */
		if ((rc = cache__exec(c, "SAVEPOINT replay"))) {
			cJSON_Delete(root);
			break;
		}
		rc = root ? apply_ops(c, st, cJSON_GetObjectItemCaseSensitive(root, "ops"), 0, fn, ctx, &n, &refused)
			  : err__set(SCRM_E_CORRUPT, "cache: buffered delta unreadable");
		cJSON_Delete(root);
		if (rc == SCRM_OK)
			rc = set_cursor(c, st, version, refused);
		if (rc == SCRM_E_INVALID || rc == SCRM_E_CORRUPT) {
			sqlite3_exec(c->db, "ROLLBACK TO replay; RELEASE replay", NULL, NULL, NULL);
			rc = SCRM_OK;
			gap = 1;
			break;
		}
		if (rc) {
			sqlite3_exec(c->db, "ROLLBACK TO replay; RELEASE replay", NULL, NULL, NULL);
			break;
		}
		if ((rc = cache__exec(c, "RELEASE replay")))
			break;
		*cursor = version;
	}
	c->replaying = 0;
	sqlite3_finalize(q);
	if (rc)
		return rc;
	if (gap)
		c->replay_gap = 1; /* asked for once the swap has committed */
	if ((rc = cache__prep(c, c->db, &q, "DELETE FROM delta_buf WHERE stream = ?1", 0)))
		return rc;
	sqlite3_bind_text(q, 1, cache__streams[st].name, -1, SQLITE_STATIC);
	rc = sqlite3_step(q);
	sqlite3_finalize(q);
	return rc == SQLITE_DONE ? SCRM_OK : cache__fail(c, rc, "clear buffered deltas");
}

static int swap_in(cache *c, int st, const struct stream_row *r, cache__forget_fn fn, void *ctx, int64_t *cursor)
{
	char sql[400], stage[64];
	int rc;
	snprintf(stage, sizeof(stage), "%s__stage", cache__streams[st].name);
	if ((rc = cache__create_table(c, st, stage, r->gen + 1, 1)))
		return rc;
	/* The old table is only renamed here; it is dropped after the commit,
	 * in a transaction of its own (see drop_old): dropping 500,000 rows
	 * inside the swap made it last seconds and held ~400 MB of rollback. */
	snprintf(sql, sizeof(sql),
		 "DROP TABLE IF EXISTS \"%s__old\"; ALTER TABLE \"%s\" RENAME TO \"%s__old\";"
		 " ALTER TABLE \"%s\" RENAME TO \"%s\";",
		 cache__streams[st].name, cache__streams[st].name, cache__streams[st].name, stage, cache__streams[st].name);
	if ((rc = cache__exec(c, sql)))
		return rc;
	if ((rc = set_snap(c, st, NULL, 0, 0, 0, 0)))
		return rc;
	{
		sqlite3_stmt *q = NULL;
		if ((rc = cache__prep(c, c->db, &q,
			       "UPDATE streams SET cursor = ?2, gen = ?3, refused = ?4, applied_ms = ?5 WHERE name = ?1", 0)))
			return rc;
		sqlite3_bind_text(q, 1, cache__streams[st].name, -1, SQLITE_STATIC);
		sqlite3_bind_int64(q, 2, r->snap_version);
		sqlite3_bind_int64(q, 3, r->gen + 1);
		sqlite3_bind_int64(q, 4, r->snap_refused);
		sqlite3_bind_int64(q, 5, platform__wall_ms());
		rc = sqlite3_step(q);
		sqlite3_finalize(q);
		if (rc != SQLITE_DONE)
			return cache__fail(c, rc, "swap cursor");
	}
	*cursor = r->snap_version;
	return replay_buffered(c, st, cursor, fn, ctx);
}

static int apply_chunk(cache *c, const struct msg *m, cache__forget_fn fn, void *ctx, cache__outcome *out)
{
	struct stream_row r;
	sqlite3_stmt *ins = NULL;
	char stage[64], path[48];
	int rc, i = 0;
	cJSON *rec;

	snprintf(stage, sizeof(stage), "%s__stage", cache__streams[m->st].name);
	if ((rc = cache__exec(c, "BEGIN IMMEDIATE")))
		return rc;
	if ((rc = cache__read_stream(c, m->st, &r)))
		goto cleanup;
	out->cursor = r.cursor;
	if (m->chunk == 0 && r.staging && strcmp(r.snap_id, m->snapshot) == 0 && r.snap_next > 0) {
		out->what = CA_IGNORED; /* a redelivery of chunk 0 (QoS 1) */
		goto cleanup;
	}
	if (m->chunk == 0) {
		/* Chunk 0 of a snapshot starts the build afresh. */
		char sql[200];
		snprintf(sql, sizeof(sql), "DROP TABLE IF EXISTS \"%s\"", stage);
		if ((rc = cache__exec(c, sql)) || (rc = cache__create_table(c, m->st, stage, 0, 0)))
			goto cleanup;
		r.staging = 1;
		snprintf(r.snap_id, sizeof(r.snap_id), "%s", m->snapshot);
		r.snap_version = m->version;
		r.snap_chunks = m->chunks;
		r.snap_next = 0;
		r.snap_refused = 0;
	} else if (!r.staging || strcmp(r.snap_id, m->snapshot) != 0 || m->chunk != r.snap_next ||
		   m->version != r.snap_version || m->chunks != r.snap_chunks) {
		out->what = CA_IGNORED;
		goto cleanup;
	}
	cJSON_ArrayForEach(rec, m->records)
	{
		const char *key;
		snprintf(path, sizeof(path), "records[%d].", i++);
		if ((rc = rec_key(rec, path, &key)) ||
		    (rc = put_record(c, m->st, stage, &ins, key, rec, path, &out->refused)))
			goto cleanup;
		out->ops++;
	}
	if (m->forgotten) {
		cJSON *e;
		cJSON_ArrayForEach(e, m->forgotten)
		{
			if (fn && (rc = fn(ctx, e->valuestring)))
				goto cleanup;
			if ((rc = cache__forget_rows(c, e->valuestring, 1)))
				goto cleanup;
		}
	}
	r.snap_next = m->chunk + 1;
	r.snap_refused += out->refused;
	if (r.snap_next < r.snap_chunks) {
		rc = set_snap(c, m->st, r.snap_id, r.snap_version, r.snap_chunks, r.snap_next, r.snap_refused);
		out->what = CA_CHUNK;
	} else {
		sqlite3_finalize(ins);
		ins = NULL;
		rc = swap_in(c, m->st, &r, fn, ctx, &out->cursor);
		out->what = CA_SWAPPED;
	}
cleanup:
	sqlite3_finalize(ins);
	if (rc == SCRM_OK && out->what != CA_IGNORED)
		rc = cache__exec(c, "COMMIT");
	if (rc || out->what == CA_IGNORED)
		cache__rollback(c);
	return rc;
}


/* The view a swap replaced (or one left by a crash right after a swap).
 * secure_delete zeroes each of its pages as it is freed, so it is emptied
 * in slices, each a transaction of its own followed by a passive
 * checkpoint: the WAL does not grow to the table's size and the daemon's
 * loop is not held for long. What is left after DROP_BUDGET_MS goes at the
 * next call (idle checkpoint, next swap, next start); an erasure deletes
 * the member from it meanwhile. */
#define DROP_SLICE_ROWS 2000
#define DROP_BUDGET_MS 2000
static void drop_old_until(cache *c, int st, int64_t until)
{
	char old[64], sql[300];
	snprintf(old, sizeof(old), "%s__old", cache__streams[st].name);
	if (!cache__has_table(c, old))
		return;
	snprintf(sql, sizeof(sql), "DELETE FROM \"%s\" WHERE key IN (SELECT key FROM \"%s\" LIMIT %d)", old, old,
		 DROP_SLICE_ROWS);
	for (;;) {
		if (sqlite3_exec(c->db, sql, NULL, NULL, NULL) != SQLITE_OK)
			return;
		int n = sqlite3_changes(c->db);
		sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
		if (n == 0)
			break;
		if (platform__mono_ms() >= until)
			return;
	}
	snprintf(sql, sizeof(sql), "DROP TABLE IF EXISTS \"%s\"", old);
	sqlite3_exec(c->db, sql, NULL, NULL, NULL);
}

static int64_t pragma_i64(cache *c, const char *name)
{
	char sql[64];
	sqlite3_stmt *st = NULL;
	int64_t v = -1;
	snprintf(sql, sizeof(sql), "PRAGMA %s", name);
	if (sqlite3_prepare_v2(c->db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return v;
}

/* Free pages go back to the file system: a swap frees a whole view, and a
 * cache.db that kept them stayed twice its live data for good (1.1 GB for
 * 500,000 members). A file made with auto_vacuum=INCREMENTAL (every cache
 * made since, schema.c) gives them back RECLAIM_SLICE_PAGES at a time, each
 * slice a transaction of its own followed by a passive checkpoint, like
 * drop_old, within the same budget; what is left goes at the next call. A
 * file made before is rewritten once by VACUUM (which turns incremental
 * vacuum on) when a quarter of it is free and its live data is at most
 * RECLAIM_VACUUM_MAX_BYTES: VACUUM is one blocking call whose time and
 * temporary space grow with the live data, too long for the daemon's
 * watchdog beyond that; a larger old file keeps reusing its free pages, as
 * before, until the cache is rebuilt. */
#define RECLAIM_SLICE_PAGES 2048
#define RECLAIM_VACUUM_MAX_BYTES (64LL << 20)
static void reclaim_until(cache *c, int64_t until)
{
	/* Called at every idle tick: one query when there is nothing to do. */
	int64_t free_pages = pragma_i64(c, "freelist_count");
	if (free_pages <= 0)
		return;
	int64_t mode = pragma_i64(c, "auto_vacuum"), pages = pragma_i64(c, "page_count");
	int64_t page_size = pragma_i64(c, "page_size");
	char sql[64];
	if (pages <= 0)
		return;
	if (mode == 2) {
		snprintf(sql, sizeof(sql), "PRAGMA incremental_vacuum(%d)", RECLAIM_SLICE_PAGES);
		while (free_pages > 0 && platform__mono_ms() < until) {
			if (sqlite3_exec(c->db, sql, NULL, NULL, NULL) != SQLITE_OK)
				return;
			sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
			free_pages = pragma_i64(c, "freelist_count");
		}
	} else if (mode == 0 && !c->vacuum_failed && free_pages * 4 >= pages &&
		   (pages - free_pages) * page_size <= RECLAIM_VACUUM_MAX_BYTES) {
		/* A failure (no room for VACUUM's copy on a full disk) is not
		 * retried at every idle tick: each attempt rewrites the file. */
		if (sqlite3_exec(c->db, "PRAGMA auto_vacuum=INCREMENTAL; VACUUM", NULL, NULL, NULL) == SQLITE_OK)
			sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
		else
			c->vacuum_failed = 1;
	}
}

/* Every stream's (st < 0) or one's, within one budget, then the free
 * pages within what is left of it. */
void cache__drop_old(cache *c, int st)
{
	int64_t until = platform__mono_ms() + DROP_BUDGET_MS;
	for (int i = 0; i < ST_COUNT; i++)
		if (st < 0 || st == i)
			drop_old_until(c, i, until);
	reclaim_until(c, until);
}

int cache__apply(cache *c, const char *topic_stream, const char *payload, size_t len, cache__forget_fn fn, void *ctx,
		 cache__outcome *out)
{
	struct msg m;
	int rc;
	memset(out, 0, sizeof(*out));
	out->stream = -1;
	c->refused_detail[0] = '\0';
	c->replay_gap = 0;
	c->erased = 0;
	rc = parse_msg(c, topic_stream, payload, len, &m);
	out->stream = m.st;
	out->version = m.version;
	out->chunk = m.chunk;
	out->chunks = m.chunks;
	if (rc == SCRM_OK) {
		if (m.is_snapshot) {
			rc = apply_chunk(c, &m, fn, ctx, out);
			if (rc == SCRM_OK && out->what != CA_IGNORED) {
				if (c->inflight < 0)
					c->inflight = m.st;
				if (c->inflight == m.st) {
					c->inflight_ms = platform__mono_ms();
					c->rs[m.st].timeout_ms = c->snap_timeout_ms;
				}
			}
			if (rc == SCRM_OK && out->what == CA_SWAPPED) {
				cache__drop_old(c, m.st);
				c->rs[m.st].want = 0;
				if (c->inflight == m.st)
					c->inflight = -1;
				/* replay_buffered may have found a gap again */
				if (c->replay_gap || c->buf_overflow[m.st])
					cache__want_stream(c, m.st, "gap");
				c->buf_overflow[m.st] = 0;
			}
		} else {
			rc = apply_delta(c, &m, payload, len, fn, ctx, out);
		}
	}
	cJSON_Delete(m.root);
	/* The delta is applied either way; an erasure whose bytes could not
	 * be scrubbed yet stays pending (cache__checkpoint). */
	if (rc == SCRM_OK && c->erased)
		cache__scrub(c);
	c->erased = 0;
	return rc;
}

const char *cache__refused_detail(const cache *c)
{
	return c->refused_detail;
}

/* ---- snapshot files ------------------------------------------------- */

static int read_line(FILE *f, sbuf *line)
{
	int ch;
	sbuf__reset(line);
	while ((ch = getc(f)) != EOF && ch != '\n') {
		sbuf__putc(line, (char)ch);
		if (line->len > DEFAULT_MAX_MESSAGE)
			return -2;
	}
	if (line->oom)
		return -2;
	return ch == EOF && line->len == 0 ? -1 : 0;
}

/* " members coupons …": every stream's name, in streams.def order. */
static const char stream_list[] =
#define CACHE_STREAM(id, name, ...) " " name
#include "streams.def"
	;

int cache__load_file(cache *c, const char *path, cache__forget_fn fn, void *ctx, int64_t *records, int64_t *refused,
		     int *stream)
{
	FILE *f = fopen(path, "r");
	sbuf line, chunk;
	cJSON *hdr = NULL;
	int64_t version = 0, n_lines = 0, per = 1000, chunks, k = 0;
	int rc = SCRM_OK, st = -1, e;
	char id[65];

	*records = *refused = 0;
	if (!f)
		return err__set(SCRM_E_NOT_FOUND, "%s: %s", path, strerror(errno));
	sbuf__init(&line);
	sbuf__init(&chunk);
	if (read_line(f, &line) != 0) {
		rc = err__set(SCRM_E_INVALID, "%s:1: header: missing", path);
		goto cleanup;
	}
	if ((rc = json__parse(line.p, line.len, "header", &hdr)) != SCRM_OK) {
		char detail[400];
		snprintf(detail, sizeof(detail), "%s", scrm_errmsg());
		rc = err__set(rc, "%s:1: %s", path, detail);
		goto cleanup;
	}
	if (!cJSON_IsObject(hdr)) {
		rc = err__set(SCRM_E_INVALID, "%s:1: header: not a JSON object", path);
		goto cleanup;
	}
	{
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(hdr, "type");
		const cJSON *s = cJSON_GetObjectItemCaseSensitive(hdr, "stream");
		if (!cJSON_IsString(t) || strcmp(t->valuestring, "snapshot_file") != 0) {
			rc = err__set(SCRM_E_INVALID, "%s:1: type: must be \"snapshot_file\"", path);
			goto cleanup;
		}
		if (!cJSON_IsString(s) || (st = cache__stream_parse(s->valuestring)) < 0) {
			rc = err__set(SCRM_E_INVALID, "%s:1: stream: must be one of%s", path, stream_list);
			goto cleanup;
		}
		if ((rc = json__get_int(hdr, "version", 1, JSON_INT_MAX, 1, 0, "", &version))) {
			char detail[300];
			snprintf(detail, sizeof(detail), "%s", scrm_errmsg());
			rc = err__set(rc, "%s:1: %s", path, detail);
			goto cleanup;
		}
	}
	*stream = st;
	while ((e = read_line(f, &line)) == 0)
		if (line.len)
			n_lines++;
	if (e == -2) {
		rc = err__set(SCRM_E_TOO_BIG, "%s: a line is longer than %u bytes", path, DEFAULT_MAX_MESSAGE);
		goto cleanup;
	}
	chunks = n_lines ? (n_lines + per - 1) / per : 1;
	snprintf(id, sizeof(id), "file-%lld-%lld", (long long)version, (long long)platform__wall_ms());
	rewind(f);
	read_line(f, &line);
	/* Re-chunk the records into snapshot messages and feed them through the
	 * same path as the network: same checks, same atomic swap. */
	for (k = 0; k < chunks; k++) {
		int64_t taken = 0;
		cache__outcome out;
		sbuf__reset(&chunk);
		sbuf__puts(&chunk, "{\"v\":1,\"type\":\"snapshot\",\"stream\":");
		sbuf__jstr(&chunk, cache__streams[st].name);
		sbuf__puts(&chunk, ",\"snapshot\":");
		sbuf__jstr(&chunk, id);
		sbuf__puts(&chunk, ",\"version\":");
		sbuf__i64(&chunk, version);
		sbuf__puts(&chunk, ",\"chunk\":");
		sbuf__i64(&chunk, k);
		sbuf__puts(&chunk, ",\"chunks\":");
		sbuf__i64(&chunk, chunks);
		sbuf__puts(&chunk, ",\"records\":[");
		while (taken < per && read_line(f, &line) == 0) {
			if (!line.len)
				continue;
			if (taken)
				sbuf__putc(&chunk, ',');
			sbuf__put(&chunk, line.p, line.len);
			taken++;
		}
		sbuf__puts(&chunk, "]}");
		if (chunk.oom) {
			rc = err__set(SCRM_E_NOMEM, "out of memory");
			goto cleanup;
		}
		size_t saved = c->max_msg;
		c->max_msg = SIZE_MAX; /* a local file is not bound by the MQTT message cap */
		rc = cache__apply(c, NULL, chunk.p, chunk.len, fn, ctx, &out);
		c->max_msg = saved;
		if (rc) {
			char detail[400];
			snprintf(detail, sizeof(detail), "%s", scrm_errmsg());
			rc = err__set(rc, "%s: records %lld..%lld: %s", path, (long long)(k * per + 1),
				      (long long)(k * per + taken), detail);
			goto cleanup;
		}
		if (out.what == CA_IGNORED) {
			rc = err__set(SCRM_E_BUSY, "%s: the snapshot was interrupted (is scrm-agent running?)", path);
			goto cleanup;
		}
		*records += out.ops - out.refused;
		*refused += out.refused;
	}
cleanup:
	cJSON_Delete(hdr);
	sbuf__free(&line);
	sbuf__free(&chunk);
	fclose(f);
	return rc;
}
