/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outbox: the durable event queue (see outbox.h for what it owns).
 *
 * Schema v1 (PRAGMA user_version = 1):
 *   device(id=1, device_id, created_ms, next_seq, max_wall_ms,
 *          last_ack_ms, last_acked_seq)  — one row, the device's counters
 *   outbox(seq PK, id, kind, wall_ms, mono_ms, boot, clock_ok, body)
 *   rejected(seq PK, id, kind, wall_ms, body, reason, rejected_ms)
 * Schema v2 adds:
 *   member_activity(seq PK, member_id, wall_ms, kind, amount, skus)
 *     — each purchase/return of a member, filled by a trigger in the same
 *     transaction as the event, so the guide's view of the member includes
 *     today's sale at once; kept after the ack (central's profile catches up
 *     later) and pruned by age.
 *
 * The sequence counter lives in `device`, not in max(seq), because acked
 * events are deleted: a seq must never be reused even when the outbox empties.
 */
#include "outbox.h"

#include "dbcode.h"
#include "err.h"
#include "platform.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A wall clock this far behind the newest trusted capture is "not trusted". */
#define CLOCK_BACKSTEP_MS 60000

struct outbox {
	sqlite3 *db;
	char device_id[65];
	sqlite3_stmt *get_dev, *put_dev, *ins, *read, *del, *ack_meta, *oldest,
		*rej_copy, *rej_reason;
};

int outbox__sqlite_err(int rc, const char *what, const char *detail)
{
	int code = db__code(rc);
	return err__set(code, "outbox: %s: %s", what, detail ? detail : sqlite3_errstr(rc));
}

static int fail(outbox *ob, int rc, const char *what)
{
	return outbox__sqlite_err(rc, what, ob && ob->db ? sqlite3_errmsg(ob->db) : NULL);
}

static int exec(outbox *ob, const char *sql)
{
	int rc = sqlite3_exec(ob->db, sql, NULL, NULL, NULL);
	return rc == SQLITE_OK ? SCRM_OK : fail(ob, rc, sql);
}

static int prep(outbox *ob, sqlite3_stmt **st, const char *sql)
{
	int rc = sqlite3_prepare_v3(ob->db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL);
	return rc == SQLITE_OK ? SCRM_OK : fail(ob, rc, "prepare");
}

static void rollback(outbox *ob)
{
	if (!sqlite3_get_autocommit(ob->db))
		sqlite3_exec(ob->db, "ROLLBACK", NULL, NULL, NULL);
}

static int device_id_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 64)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_' || c == '.'))
			return 0;
	}
	return 1;
}

static const char schema_v1[] =
	"CREATE TABLE IF NOT EXISTS device("
	" id INTEGER PRIMARY KEY CHECK(id = 1), device_id TEXT NOT NULL,"
	" created_ms INTEGER NOT NULL, next_seq INTEGER NOT NULL,"
	" max_wall_ms INTEGER NOT NULL, last_ack_ms INTEGER NOT NULL DEFAULT 0,"
	" last_acked_seq INTEGER NOT NULL DEFAULT 0);"
	"CREATE TABLE IF NOT EXISTS outbox("
	" seq INTEGER PRIMARY KEY, id TEXT NOT NULL, kind TEXT NOT NULL,"
	" wall_ms INTEGER NOT NULL, mono_ms INTEGER NOT NULL, boot TEXT NOT NULL,"
	" clock_ok INTEGER NOT NULL, body TEXT NOT NULL);"
	"CREATE TABLE IF NOT EXISTS rejected("
	" seq INTEGER PRIMARY KEY, id TEXT NOT NULL, kind TEXT NOT NULL,"
	" wall_ms INTEGER NOT NULL, body TEXT NOT NULL, reason TEXT NOT NULL,"
	" rejected_ms INTEGER NOT NULL);"
	"PRAGMA user_version = 1;";

/* SQLite's JSON functions read the canonical body the capture path just
 * wrote: no second encoder in C, and any insert path gets it. */
static const char schema_v2[] =
	"CREATE TABLE IF NOT EXISTS member_activity("
	" seq INTEGER PRIMARY KEY, member_id TEXT NOT NULL, wall_ms INTEGER NOT NULL,"
	" kind TEXT NOT NULL, amount INTEGER NOT NULL, skus TEXT NOT NULL);"
	"CREATE INDEX IF NOT EXISTS member_activity_member ON member_activity(member_id, wall_ms);"
	"CREATE TRIGGER IF NOT EXISTS outbox_member_activity AFTER INSERT ON outbox"
	" WHEN NEW.kind IN ('purchase', 'return') AND json_extract(NEW.body, '$.member_id') IS NOT NULL"
	" BEGIN"
	"  INSERT OR REPLACE INTO member_activity(seq, member_id, wall_ms, kind, amount, skus)"
	"  VALUES (NEW.seq, json_extract(NEW.body, '$.member_id'), NEW.wall_ms, NEW.kind,"
	"   CASE NEW.kind WHEN 'return' THEN -json_extract(NEW.body, '$.total') ELSE json_extract(NEW.body, '$.total') END,"
	"   (SELECT json_group_array(json_extract(value, '$.sku')) FROM json_each(NEW.body, '$.lines')));"
	" END;"
	"PRAGMA user_version = 2;";

/* Create or upgrade the schema, and bind the store to its device. */
static int migrate(outbox *ob, const char *device_id)
{
	sqlite3_stmt *st = NULL;
	int rc, ver = 0;

	if ((rc = exec(ob, "BEGIN IMMEDIATE")))
		return rc;
	if ((rc = sqlite3_prepare_v2(ob->db, "PRAGMA user_version", -1, &st, NULL)) != SQLITE_OK) {
		rc = fail(ob, rc, "read schema version");
		goto cleanup;
	}
	if (sqlite3_step(st) == SQLITE_ROW)
		ver = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	st = NULL;
	if (ver > 2) {
		rc = err__set(SCRM_E_CORRUPT, "outbox: schema version %d is newer than this agent (2); refusing to touch it", ver);
		goto cleanup;
	}
	if (ver == 0 && (rc = exec(ob, schema_v1)))
		goto cleanup;
	if (ver < 2 && (rc = exec(ob, schema_v2)))
		goto cleanup;

	if ((rc = sqlite3_prepare_v2(ob->db, "SELECT device_id FROM device WHERE id = 1", -1, &st, NULL)) != SQLITE_OK) {
		rc = fail(ob, rc, "read device");
		goto cleanup;
	}
	if (sqlite3_step(st) == SQLITE_ROW) {
		const char *have = (const char *)sqlite3_column_text(st, 0);
		snprintf(ob->device_id, sizeof(ob->device_id), "%s", have ? have : "");
		if (device_id && strcmp(device_id, ob->device_id) != 0) {
			rc = err__set(SCRM_E_MISMATCH, "device_id: the store belongs to \"%s\", not \"%s\"", ob->device_id, device_id);
			goto cleanup;
		}
	} else {
		sqlite3_finalize(st);
		st = NULL;
		if (!device_id) {
			rc = err__set(SCRM_E_INVALID, "device_id: required to create a new store");
			goto cleanup;
		}
		if ((rc = sqlite3_prepare_v2(ob->db,
					     "INSERT INTO device(id, device_id, created_ms, next_seq, max_wall_ms) VALUES (1, ?, ?, 1, 0)",
					     -1, &st, NULL)) != SQLITE_OK) {
			rc = fail(ob, rc, "create device");
			goto cleanup;
		}
		sqlite3_bind_text(st, 1, device_id, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, platform__wall_ms());
		if ((rc = sqlite3_step(st)) != SQLITE_DONE) {
			rc = fail(ob, rc, "create device");
			goto cleanup;
		}
		snprintf(ob->device_id, sizeof(ob->device_id), "%s", device_id);
	}
	sqlite3_finalize(st);
	st = NULL;
	rc = exec(ob, "COMMIT");
cleanup:
	sqlite3_finalize(st);
	if (rc)
		rollback(ob);
	return rc;
}

int outbox__open(const char *dir, const char *device_id, int busy_ms, outbox **out)
{
	char path[4096];
	outbox *ob = NULL;
	int rc;

	*out = NULL;
	if (!dir || !*dir)
		return err__set(SCRM_E_INVALID, "dir: required");
	if (device_id && !device_id_ok(device_id))
		return err__set(SCRM_E_INVALID, "device_id: must be 1..64 of [A-Za-z0-9_.-], got \"%.80s\"", device_id);
	if (snprintf(path, sizeof(path), "%s/%s", dir, OUTBOX_FILE) >= (int)sizeof(path))
		return err__set(SCRM_E_INVALID, "dir: path too long");
	/* Opening without a device id means "an existing store": never leave
	 * an empty directory behind for a mistyped path. */
	if (!device_id && access(path, F_OK) != 0)
		return err__set(SCRM_E_NOT_FOUND, "dir: no store at %s (a device_id is needed to create one)", dir);
	if ((rc = platform__mkdirs(dir, 0700)) != 0)
		return err__set(SCRM_E_IO, "dir: cannot create %s: %s", dir, strerror(-rc));
	if (!(ob = calloc(1, sizeof(*ob))))
		return err__set(SCRM_E_NOMEM, "out of memory");
	rc = sqlite3_open_v2(path, &ob->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		rc = fail(ob, rc, path);
		goto cleanup;
	}
	sqlite3_extended_result_codes(ob->db, 1);
	sqlite3_busy_timeout(ob->db, busy_ms > 0 ? busy_ms : 5000);
	/* WAL lets the daemon read while the POS writes; FULL makes every
	 * commit durable before the capture call returns. */
	if ((rc = db__set_wal(ob->db, busy_ms > 0 ? busy_ms : 5000, "outbox")) ||
	    (rc = exec(ob, "PRAGMA synchronous=FULL")) ||
	    (rc = exec(ob, "PRAGMA foreign_keys=OFF")) ||
	    /* Freed cells are zeroed at no extra I/O; an erasure switches to ON
	     * for its own statements (FAST leaves freed overflow pages). */
	    (rc = exec(ob, "PRAGMA secure_delete=FAST")))
		goto cleanup;
	if ((rc = migrate(ob, device_id)))
		goto cleanup;
	if ((rc = prep(ob, &ob->get_dev, "SELECT next_seq, max_wall_ms FROM device WHERE id = 1")) ||
	    (rc = prep(ob, &ob->put_dev, "UPDATE device SET next_seq = ?1, max_wall_ms = ?2 WHERE id = 1")) ||
	    (rc = prep(ob, &ob->ins, "INSERT INTO outbox(seq, id, kind, wall_ms, mono_ms, boot, clock_ok, body) VALUES (?,?,?,?,?,?,?,?)")) ||
	    (rc = prep(ob, &ob->read, "SELECT seq, id, kind, wall_ms, mono_ms, boot, clock_ok, body FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?")) ||
	    (rc = prep(ob, &ob->del, "DELETE FROM outbox WHERE seq BETWEEN ?1 AND ?2")) ||
	    (rc = prep(ob, &ob->ack_meta, "UPDATE device SET last_ack_ms = ?1, last_acked_seq = max(last_acked_seq, ?2) WHERE id = 1")) ||
	    (rc = prep(ob, &ob->oldest, "SELECT min(seq) FROM outbox")) ||
	    (rc = prep(ob, &ob->rej_copy, "INSERT OR IGNORE INTO rejected(seq, id, kind, wall_ms, body, reason, rejected_ms) SELECT seq, id, kind, wall_ms, body, ?2, ?3 FROM outbox WHERE seq = ?1")) ||
	    (rc = prep(ob, &ob->rej_reason, "DELETE FROM outbox WHERE seq = ?1")))
		goto cleanup;
	*out = ob;
	return SCRM_OK;
cleanup:
	outbox__close(ob);
	return rc;
}

void outbox__close(outbox *ob)
{
	if (!ob)
		return;
	sqlite3_finalize(ob->get_dev);
	sqlite3_finalize(ob->put_dev);
	sqlite3_finalize(ob->ins);
	sqlite3_finalize(ob->read);
	sqlite3_finalize(ob->del);
	sqlite3_finalize(ob->ack_meta);
	sqlite3_finalize(ob->oldest);
	sqlite3_finalize(ob->rej_copy);
	sqlite3_finalize(ob->rej_reason);
	sqlite3_close_v2(ob->db);
	free(ob);
}

const char *outbox__device_id(const outbox *ob)
{
	return ob->device_id;
}

int outbox__append(outbox *ob, outbox__row *rows, size_t n, int64_t trusted_after_ms)
{
	int rc;
	int64_t next, max_wall;

	if ((rc = sqlite3_exec(ob->db, "BEGIN IMMEDIATE", NULL, NULL, NULL)) != SQLITE_OK)
		return fail(ob, rc, "begin");
	sqlite3_reset(ob->get_dev);
	if ((rc = sqlite3_step(ob->get_dev)) != SQLITE_ROW) {
		rc = fail(ob, rc, "read sequence counter");
		goto cleanup;
	}
	next = sqlite3_column_int64(ob->get_dev, 0);
	max_wall = sqlite3_column_int64(ob->get_dev, 1);
	sqlite3_reset(ob->get_dev);

	for (size_t i = 0; i < n; i++) {
		outbox__row *r = &rows[i];
		r->seq = next++;
		r->clock_ok = r->wall_ms >= trusted_after_ms && r->wall_ms + CLOCK_BACKSTEP_MS >= max_wall;
		if (r->clock_ok && r->wall_ms > max_wall)
			max_wall = r->wall_ms;
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
			rc = fail(ob, rc, "insert event");
			sqlite3_reset(st);
			goto cleanup;
		}
		sqlite3_reset(st);
	}
	sqlite3_reset(ob->put_dev);
	sqlite3_bind_int64(ob->put_dev, 1, next);
	sqlite3_bind_int64(ob->put_dev, 2, max_wall);
	rc = sqlite3_step(ob->put_dev);
	sqlite3_reset(ob->put_dev);
	if (rc != SQLITE_DONE) {
		rc = fail(ob, rc, "advance sequence counter");
		goto cleanup;
	}
	if ((rc = sqlite3_exec(ob->db, "COMMIT", NULL, NULL, NULL)) != SQLITE_OK) {
		rc = fail(ob, rc, "commit");
		goto cleanup;
	}
	return SCRM_OK;
cleanup:
	rollback(ob);
	for (size_t i = 0; i < n; i++)
		rows[i].seq = 0;
	return rc;
}

int outbox__read_batch(outbox *ob, int64_t after_seq, size_t max_events, size_t max_bytes,
		       sbuf *out, size_t *count, int64_t *last_seq, int64_t *first_seq)
{
	sqlite3_stmt *st = ob->read;
	size_t n = 0;
	int rc;

	*count = 0;
	*last_seq = 0;
	if (first_seq)
		*first_seq = 0;
	sqlite3_reset(st);
	sqlite3_bind_int64(st, 1, after_seq);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)max_events);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		size_t mark = out->len;
		if (n)
			sbuf__putc(out, ',');
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
		sbuf__puts(out, ",\"body\":");
		sbuf__put(out, (const char *)sqlite3_column_text(st, 7), (size_t)sqlite3_column_bytes(st, 7));
		sbuf__putc(out, '}');
		if (n > 0 && out->len > max_bytes) {
			/* This event would overflow the message: leave it for the next. */
			out->len = mark;
			out->p[mark] = '\0';
			break;
		}
		*last_seq = sqlite3_column_int64(st, 0);
		if (n == 0 && first_seq)
			*first_seq = *last_seq;
		n++;
	}
	sqlite3_reset(st);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return fail(ob, rc, "read batch");
	if (out->oom)
		return err__set(SCRM_E_NOMEM, "out of memory building a batch");
	*count = n;
	return SCRM_OK;
}

int outbox__ack(outbox *ob, const int64_t (*ranges)[2], size_t n, int64_t now_ms, int64_t *deleted)
{
	int rc;
	int64_t del = 0, hi = 0;

	if ((rc = sqlite3_exec(ob->db, "BEGIN IMMEDIATE", NULL, NULL, NULL)) != SQLITE_OK)
		return fail(ob, rc, "begin");
	for (size_t i = 0; i < n; i++) {
		sqlite3_reset(ob->del);
		sqlite3_bind_int64(ob->del, 1, ranges[i][0]);
		sqlite3_bind_int64(ob->del, 2, ranges[i][1]);
		if ((rc = sqlite3_step(ob->del)) != SQLITE_DONE) {
			sqlite3_reset(ob->del);
			rc = fail(ob, rc, "delete acknowledged");
			goto cleanup;
		}
		sqlite3_reset(ob->del);
		del += sqlite3_changes(ob->db);
		if (ranges[i][1] > hi)
			hi = ranges[i][1];
	}
	sqlite3_reset(ob->ack_meta);
	sqlite3_bind_int64(ob->ack_meta, 1, now_ms);
	sqlite3_bind_int64(ob->ack_meta, 2, hi);
	rc = sqlite3_step(ob->ack_meta);
	sqlite3_reset(ob->ack_meta);
	if (rc != SQLITE_DONE) {
		rc = fail(ob, rc, "record ack");
		goto cleanup;
	}
	if ((rc = sqlite3_exec(ob->db, "COMMIT", NULL, NULL, NULL)) != SQLITE_OK) {
		rc = fail(ob, rc, "commit ack");
		goto cleanup;
	}
	if (deleted)
		*deleted = del;
	return SCRM_OK;
cleanup:
	rollback(ob);
	return rc;
}

int outbox__reject(outbox *ob, int64_t seq, const char *reason, int64_t now_ms)
{
	int rc;
	if ((rc = sqlite3_exec(ob->db, "BEGIN IMMEDIATE", NULL, NULL, NULL)) != SQLITE_OK)
		return fail(ob, rc, "begin");
	sqlite3_reset(ob->rej_copy);
	sqlite3_bind_int64(ob->rej_copy, 1, seq);
	sqlite3_bind_text(ob->rej_copy, 2, reason ? reason : "", -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(ob->rej_copy, 3, now_ms);
	rc = sqlite3_step(ob->rej_copy);
	sqlite3_reset(ob->rej_copy);
	if (rc != SQLITE_DONE) {
		rc = fail(ob, rc, "keep rejected event");
		goto cleanup;
	}
	sqlite3_reset(ob->rej_reason);
	sqlite3_bind_int64(ob->rej_reason, 1, seq);
	rc = sqlite3_step(ob->rej_reason);
	sqlite3_reset(ob->rej_reason);
	if (rc != SQLITE_DONE) {
		rc = fail(ob, rc, "remove rejected event");
		goto cleanup;
	}
	if ((rc = sqlite3_exec(ob->db, "COMMIT", NULL, NULL, NULL)) != SQLITE_OK) {
		rc = fail(ob, rc, "commit reject");
		goto cleanup;
	}
	return SCRM_OK;
cleanup:
	rollback(ob);
	return rc;
}

int outbox__oldest_seq(outbox *ob, int64_t *seq)
{
	int rc;
	sqlite3_reset(ob->oldest);
	rc = sqlite3_step(ob->oldest);
	*seq = rc == SQLITE_ROW ? sqlite3_column_int64(ob->oldest, 0) : 0;
	sqlite3_reset(ob->oldest);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? SCRM_OK : fail(ob, rc, "oldest");
}

int outbox__stats(outbox *ob, scrm_outbox_stats *st)
{
	sqlite3_stmt *q = NULL;
	int rc;
	memset(st, 0, sizeof(*st));
	/* One read transaction so the figures are consistent with each other. */
	rc = sqlite3_prepare_v2(ob->db,
				"SELECT (SELECT count(*) FROM outbox), (SELECT coalesce(sum(length(CAST(body AS BLOB))),0) FROM outbox),"
				" (SELECT coalesce(min(wall_ms),0) FROM outbox), next_seq - 1, last_ack_ms, last_acked_seq,"
				" (SELECT count(*) FROM rejected) FROM device WHERE id = 1",
				-1, &q, NULL);
	if (rc != SQLITE_OK)
		return fail(ob, rc, "stats");
	rc = sqlite3_step(q);
	if (rc == SQLITE_ROW) {
		st->pending = sqlite3_column_int64(q, 0);
		st->pending_bytes = sqlite3_column_int64(q, 1);
		st->oldest_pending_ms = sqlite3_column_int64(q, 2);
		st->last_seq = sqlite3_column_int64(q, 3);
		st->last_ack_ms = sqlite3_column_int64(q, 4);
		st->last_acked_seq = sqlite3_column_int64(q, 5);
		st->rejected = sqlite3_column_int64(q, 6);
		rc = SCRM_OK;
	} else {
		rc = fail(ob, rc, "stats");
	}
	sqlite3_finalize(q);
	return rc;
}

int outbox__checkpoint(outbox *ob)
{
	int rc = sqlite3_wal_checkpoint_v2(ob->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
	return rc == SQLITE_OK || rc == SQLITE_BUSY ? SCRM_OK : fail(ob, rc, "checkpoint");
}

int outbox__redact_member(outbox *ob, const char *member_id, int64_t *redacted)
{
	/* Keep id and seq (central's order and dedup rely on them); remove who
	 * the customer was and any free text about them. */
	static const char *const sql[] = {
		"UPDATE outbox SET body = json_set(json_remove(body, '$.member_id', '$.reason'), '$.redacted', 'erasure')"
		" WHERE json_extract(body, '$.member_id') = ?1",
		"UPDATE rejected SET body = json_set(json_remove(body, '$.member_id', '$.reason'), '$.redacted', 'erasure')"
		" WHERE json_extract(body, '$.member_id') = ?1",
		"DELETE FROM member_activity WHERE member_id = ?1",
	};
	int rc, changed = 0;
	*redacted = 0;
	if ((rc = exec(ob, "PRAGMA secure_delete=ON")))
		return rc;
	if ((rc = exec(ob, "BEGIN IMMEDIATE"))) {
		exec(ob, "PRAGMA secure_delete=FAST");
		return rc;
	}
	for (size_t i = 0; i < sizeof(sql) / sizeof(sql[0]); i++) {
		sqlite3_stmt *st = NULL;
		if ((rc = sqlite3_prepare_v2(ob->db, sql[i], -1, &st, NULL)) != SQLITE_OK) {
			rc = fail(ob, rc, "prepare redaction");
			goto cleanup;
		}
		sqlite3_bind_text(st, 1, member_id, -1, SQLITE_STATIC);
		rc = sqlite3_step(st);
		if (i == 0)
			*redacted = sqlite3_changes(ob->db);
		changed += sqlite3_changes(ob->db);
		sqlite3_finalize(st);
		if (rc != SQLITE_DONE) {
			rc = fail(ob, rc, "redact member");
			goto cleanup;
		}
	}
	rc = exec(ob, "COMMIT");
	/* The old bodies also sit in WAL frames until they are overwritten:
	 * checkpoint and truncate the WAL (best effort: readers may hold it). */
	if (rc == SCRM_OK && changed)
		sqlite3_exec(ob->db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL);
cleanup:
	if (rc)
		rollback(ob);
	sqlite3_exec(ob->db, "PRAGMA secure_delete=FAST", NULL, NULL, NULL);
	return rc;
}

int outbox__prune_activity(outbox *ob, int64_t before_ms)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(ob->db, "DELETE FROM member_activity WHERE wall_ms < ?1", -1, &st, NULL);
	if (rc != SQLITE_OK)
		return fail(ob, rc, "prepare prune");
	sqlite3_bind_int64(st, 1, before_ms);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? SCRM_OK : fail(ob, rc, "prune member activity");
}
