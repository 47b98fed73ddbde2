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

/* Schema v3: the guide tablet's bookkeeping, all filled by triggers from
 * the events themselves, so a redemption or a recommendation and its event
 * can never disagree, whichever process wrote them.
 *   link        the daemon's view of the connection (one row): capture-side
 *               code reads it to know whether central is reachable
 *   settings    values the daemon copies from its config for triggers
 *   reco_shown  recommendation lists shown to a guide (for attribution)
 *   redemptions coupons spent on this device, and central's verdicts
 * Attribution: a member's purchase without guide_id (or without reco_id)
 * gets them from the latest list shown to that member on this device within
 * attribution_window_ms, in the same transaction as the sale. */
static const char schema_v3[] =
	"CREATE TABLE IF NOT EXISTS link("
	" id INTEGER PRIMARY KEY CHECK(id = 1), connected INTEGER NOT NULL,"
	" changed_ms INTEGER NOT NULL, seen_ms INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS settings(k TEXT PRIMARY KEY, v INTEGER NOT NULL) WITHOUT ROWID;"
	"CREATE TABLE IF NOT EXISTS reco_shown("
	" reco_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, member_id TEXT, guide_id TEXT NOT NULL,"
	" shown_ms INTEGER NOT NULL) WITHOUT ROWID;"
	"CREATE INDEX IF NOT EXISTS reco_shown_member ON reco_shown(member_id, shown_ms);"
	"CREATE TABLE IF NOT EXISTS redemptions("
	" id TEXT PRIMARY KEY, seq INTEGER NOT NULL, coupon TEXT, campaign TEXT NOT NULL, member_id TEXT,"
	" order_id TEXT NOT NULL, value INTEGER NOT NULL, currency TEXT NOT NULL, mode TEXT NOT NULL,"
	" reserved_ms INTEGER NOT NULL, verdict TEXT, reason TEXT, detail TEXT, verdict_ms INTEGER) WITHOUT ROWID;"
	"CREATE INDEX IF NOT EXISTS redemptions_coupon ON redemptions(coupon);"
	"CREATE INDEX IF NOT EXISTS redemptions_campaign ON redemptions(campaign, member_id);"
	"CREATE INDEX IF NOT EXISTS redemptions_time ON redemptions(reserved_ms);"
	"CREATE TRIGGER IF NOT EXISTS outbox_reco_shown AFTER INSERT ON outbox WHEN NEW.kind = 'reco_shown'"
	" BEGIN"
	"  INSERT OR REPLACE INTO reco_shown(reco_id, seq, member_id, guide_id, shown_ms)"
	"  VALUES (NEW.id, NEW.seq, json_extract(NEW.body, '$.member_id'), json_extract(NEW.body, '$.guide_id'), NEW.wall_ms);"
	" END;"
	"CREATE TRIGGER IF NOT EXISTS outbox_redemption AFTER INSERT ON outbox WHEN NEW.kind = 'coupon_redeem'"
	" BEGIN"
	"  INSERT OR REPLACE INTO redemptions(id, seq, coupon, campaign, member_id, order_id, value, currency, mode, reserved_ms)"
	"  VALUES (NEW.id, NEW.seq, json_extract(NEW.body, '$.coupon'), json_extract(NEW.body, '$.campaign'),"
	"   json_extract(NEW.body, '$.member_id'), json_extract(NEW.body, '$.order_id'), json_extract(NEW.body, '$.value'),"
	"   json_extract(NEW.body, '$.currency'), json_extract(NEW.body, '$.mode'), NEW.wall_ms);"
	" END;"
	"CREATE TRIGGER IF NOT EXISTS outbox_attribution AFTER INSERT ON outbox"
	" WHEN NEW.kind = 'purchase' AND json_extract(NEW.body, '$.member_id') IS NOT NULL"
	"  AND json_extract(NEW.body, '$.reco_id') IS NULL"
	"  AND coalesce((SELECT v FROM settings WHERE k = 'attribution_window_ms'), 7200000) > 0"
	" BEGIN"
	"  UPDATE outbox SET body = (SELECT json_set(NEW.body, '$.guide_id', r.guide_id, '$.reco_id', r.reco_id,"
	"    '$.attributed', 'auto')"
	"   FROM reco_shown r WHERE r.member_id = json_extract(NEW.body, '$.member_id')"
	"    AND (json_extract(NEW.body, '$.guide_id') IS NULL OR r.guide_id = json_extract(NEW.body, '$.guide_id'))"
	"    AND r.shown_ms <= NEW.wall_ms"
	"    AND r.shown_ms >= NEW.wall_ms - coalesce((SELECT v FROM settings WHERE k = 'attribution_window_ms'), 7200000)"
	"   ORDER BY r.shown_ms DESC, r.seq DESC LIMIT 1)"
	"  WHERE seq = NEW.seq AND EXISTS (SELECT 1 FROM reco_shown r WHERE r.member_id = json_extract(NEW.body, '$.member_id')"
	"    AND (json_extract(NEW.body, '$.guide_id') IS NULL OR r.guide_id = json_extract(NEW.body, '$.guide_id'))"
	"    AND r.shown_ms <= NEW.wall_ms"
	"    AND r.shown_ms >= NEW.wall_ms - coalesce((SELECT v FROM settings WHERE k = 'attribution_window_ms'), 7200000));"
	" END;"
	"PRAGMA user_version = 3;";

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
	if (ver > 3) {
		rc = err__set(SCRM_E_CORRUPT, "outbox: schema version %d is newer than this agent (3); refusing to touch it", ver);
		goto cleanup;
	}
	if (ver == 0 && (rc = exec(ob, schema_v1)))
		goto cleanup;
	if (ver < 2 && (rc = exec(ob, schema_v2)))
		goto cleanup;
	if (ver < 3 && (rc = exec(ob, schema_v3)))
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

sqlite3 *outbox__db(outbox *ob)
{
	return ob->db;
}

const char *outbox__device_id(const outbox *ob)
{
	return ob->device_id;
}

/* Insert rows inside an open write transaction. */
static int append_locked(outbox *ob, outbox__row *rows, size_t n, int64_t trusted_after_ms)
{
	int rc;
	int64_t next, max_wall;

	sqlite3_reset(ob->get_dev);
	if ((rc = sqlite3_step(ob->get_dev)) != SQLITE_ROW) {
		rc = fail(ob, rc, "read sequence counter");
		sqlite3_reset(ob->get_dev);
		return rc;
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
			return rc;
		}
		sqlite3_reset(st);
	}
	sqlite3_reset(ob->put_dev);
	sqlite3_bind_int64(ob->put_dev, 1, next);
	sqlite3_bind_int64(ob->put_dev, 2, max_wall);
	rc = sqlite3_step(ob->put_dev);
	sqlite3_reset(ob->put_dev);
	if (rc != SQLITE_DONE)
		return fail(ob, rc, "advance sequence counter");
	return SCRM_OK;
}

int outbox__append(outbox *ob, outbox__row *rows, size_t n, int64_t trusted_after_ms)
{
	int rc;

	if ((rc = sqlite3_exec(ob->db, "BEGIN IMMEDIATE", NULL, NULL, NULL)) != SQLITE_OK)
		return fail(ob, rc, "begin");
	if ((rc = append_locked(ob, rows, n, trusted_after_ms)))
		goto cleanup;
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

/* A JSON array text (what cJSON printed); anything else is ignored rather
 * than fed to json_each. */
static int json_array_ok(const char *s)
{
	return s && s[0] == '[';
}

/* Count what the limits of `lim` cover; inside the caller's transaction. */
static int count_redemptions(outbox *ob, const outbox__limits *lim, int64_t *by_coupon, int64_t *by_member,
			     char *last, size_t last_cap)
{
	sqlite3_stmt *st = NULL;
	int rc;
	*by_coupon = *by_member = 0;
	if (last_cap)
		last[0] = '\0';
	if (lim->coupon) {
		if ((rc = sqlite3_prepare_v2(ob->db,
					     "SELECT count(*), max(reserved_ms), (SELECT order_id FROM redemptions WHERE coupon = ?1"
					     " AND id NOT IN (SELECT value FROM json_each(coalesce(?2, '[]')))"
					     " ORDER BY reserved_ms DESC LIMIT 1)"
					     " FROM redemptions WHERE coupon = ?1"
					     " AND id NOT IN (SELECT value FROM json_each(coalesce(?2, '[]')))",
					     -1, &st, NULL)) != SQLITE_OK)
			return fail(ob, rc, "count redemptions");
		sqlite3_bind_text(st, 1, lim->coupon, -1, SQLITE_STATIC);
		if (lim->coupon_counted && json_array_ok(lim->coupon_counted))
			sqlite3_bind_text(st, 2, lim->coupon_counted, -1, SQLITE_STATIC);
		if ((rc = sqlite3_step(st)) != SQLITE_ROW) {
			sqlite3_finalize(st);
			return fail(ob, rc, "count redemptions");
		}
		*by_coupon = sqlite3_column_int64(st, 0);
		if (*by_coupon && last_cap)
			snprintf(last, last_cap, "order %s", sqlite3_column_text(st, 2) ? (const char *)sqlite3_column_text(st, 2) : "?");
		sqlite3_finalize(st);
		st = NULL;
	}
	if (lim->campaign && lim->member_id) {
		if ((rc = sqlite3_prepare_v2(ob->db,
					     "SELECT count(*) FROM redemptions WHERE campaign = ?1 AND member_id = ?2"
					     " AND id NOT IN (SELECT value FROM json_each(coalesce(?3, '[]')))",
					     -1, &st, NULL)) != SQLITE_OK)
			return fail(ob, rc, "count redemptions");
		sqlite3_bind_text(st, 1, lim->campaign, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, lim->member_id, -1, SQLITE_STATIC);
		if (lim->member_counted && json_array_ok(lim->member_counted))
			sqlite3_bind_text(st, 3, lim->member_counted, -1, SQLITE_STATIC);
		if ((rc = sqlite3_step(st)) != SQLITE_ROW) {
			sqlite3_finalize(st);
			return fail(ob, rc, "count redemptions");
		}
		*by_member = sqlite3_column_int64(st, 0);
		sqlite3_finalize(st);
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
	rc = sqlite3_prepare_v2(ob->db,
				"SELECT id, seq, reserved_ms, value FROM redemptions WHERE order_id = ?1"
				" AND ((?2 IS NOT NULL AND coupon = ?2) OR (?2 IS NULL AND coupon IS NULL AND campaign = ?3"
				" AND member_id IS ?4)) ORDER BY seq LIMIT 1",
				-1, &st, NULL);
	if (rc != SQLITE_OK)
		return fail(ob, rc, "find redemption");
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
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? SCRM_OK : fail(ob, rc, "find redemption");
}

int outbox__append_redemption(outbox *ob, outbox__row *row, int64_t trusted_after_ms, outbox__limits *lim)
{
	int rc;
	int64_t by_coupon = 0, by_member = 0;
	char last[120];

	if ((rc = sqlite3_exec(ob->db, "BEGIN IMMEDIATE", NULL, NULL, NULL)) != SQLITE_OK)
		return fail(ob, rc, "begin");
	if ((rc = find_existing(ob, lim)))
		goto cleanup;
	if (lim->existing) {
		rollback(ob); /* nothing to write */
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
	if ((rc = append_locked(ob, row, 1, trusted_after_ms)))
		goto cleanup;
	if ((rc = sqlite3_exec(ob->db, "COMMIT", NULL, NULL, NULL)) != SQLITE_OK) {
		rc = fail(ob, rc, "commit");
		goto cleanup;
	}
	return SCRM_OK;
cleanup:
	rollback(ob);
	row->seq = 0;
	return rc;
}

int outbox__link_set(outbox *ob, int connected, int64_t now_ms)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(ob->db,
				    "INSERT INTO link(id, connected, changed_ms, seen_ms) VALUES (1, ?1, ?2, ?2)"
				    " ON CONFLICT(id) DO UPDATE SET seen_ms = ?2,"
				    " changed_ms = CASE WHEN connected = ?1 THEN changed_ms ELSE ?2 END, connected = ?1",
				    -1, &st, NULL);
	if (rc != SQLITE_OK)
		return fail(ob, rc, "prepare link");
	sqlite3_bind_int(st, 1, connected ? 1 : 0);
	sqlite3_bind_int64(st, 2, now_ms);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? SCRM_OK : fail(ob, rc, "write link state");
}

int outbox__link_get(outbox *ob, int *connected, int64_t *changed_ms, int64_t *seen_ms)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(ob->db, "SELECT connected, changed_ms, seen_ms FROM link WHERE id = 1", -1, &st, NULL);
	*connected = 0;
	*changed_ms = *seen_ms = 0;
	if (rc != SQLITE_OK)
		return fail(ob, rc, "prepare link");
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*connected = sqlite3_column_int(st, 0);
		*changed_ms = sqlite3_column_int64(st, 1);
		*seen_ms = sqlite3_column_int64(st, 2);
	}
	sqlite3_finalize(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? SCRM_OK : fail(ob, rc, "read link state");
}

int outbox__setting_set(outbox *ob, const char *k, int64_t v)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(ob->db, "INSERT OR REPLACE INTO settings(k, v) VALUES (?1, ?2)", -1, &st, NULL);
	if (rc != SQLITE_OK)
		return fail(ob, rc, "prepare setting");
	sqlite3_bind_text(st, 1, k, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, v);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? SCRM_OK : fail(ob, rc, "write setting");
}

int outbox__verdict(outbox *ob, const char *id, const char *verdict, const char *reason, const char *detail,
		    int64_t ms, int *changed)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(ob->db,
				    "UPDATE redemptions SET verdict = ?2, reason = ?3, detail = ?4, verdict_ms = ?5"
				    " WHERE id = ?1 AND (verdict IS NULL OR verdict != ?2 OR coalesce(reason, '') != coalesce(?3, ''))",
				    -1, &st, NULL);
	*changed = 0;
	if (rc != SQLITE_OK)
		return fail(ob, rc, "prepare verdict");
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
		return fail(ob, rc, "record verdict");
	if (*changed)
		return SCRM_OK;
	/* Unchanged: a repeat of a verdict we hold, or an unknown id. */
	if (sqlite3_prepare_v2(ob->db, "SELECT 1 FROM redemptions WHERE id = ?1", -1, &st, NULL) != SQLITE_OK)
		return fail(ob, SQLITE_ERROR, "prepare verdict");
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? SCRM_OK : err__set(SCRM_E_NOT_FOUND, "redemption: no redemption %s on this device", id);
}

int outbox__redemptions(outbox *ob, int limit, sbuf *out)
{
	sqlite3_stmt *st = NULL;
	int rc;
	sbuf__reset(out);
	rc = sqlite3_prepare_v2(ob->db,
				"SELECT json_object('pending', count(*) FILTER (WHERE verdict IS NULL),"
				" 'accepted', count(*) FILTER (WHERE verdict = 'accepted'),"
				" 'rejected', count(*) FILTER (WHERE verdict = 'rejected'),"
				" 'redemptions', (SELECT json_group_array(json(j)) FROM (SELECT json_object('id', id, 'seq', seq,"
				"  'coupon', coupon, 'campaign', campaign, 'member_id', member_id, 'order_id', order_id,"
				"  'value', value, 'currency', currency, 'mode', mode, 'reserved_ms', reserved_ms,"
				"  'verdict', coalesce(verdict, 'pending'), 'reason', reason, 'detail', detail,"
				"  'verdict_ms', verdict_ms) AS j FROM redemptions ORDER BY reserved_ms DESC, seq DESC LIMIT ?1)))"
				" FROM redemptions",
				-1, &st, NULL);
	if (rc != SQLITE_OK)
		return fail(ob, rc, "prepare redemptions");
	sqlite3_bind_int(st, 1, limit > 0 ? limit : 100);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		sbuf__puts(out, (const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	if (rc != SQLITE_ROW)
		return fail(ob, rc, "read redemptions");
	return out->oom ? err__set(SCRM_E_NOMEM, "out of memory") : SCRM_OK;
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
		"DELETE FROM reco_shown WHERE member_id = ?1",
		"UPDATE redemptions SET member_id = NULL WHERE member_id = ?1",
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
	};
	const int64_t day = 86400000;
	int64_t cut[3] = {before_ms, before_ms < now_ms - 8 * day ? before_ms : now_ms - 8 * day,
			  before_ms < now_ms - 400 * day ? before_ms : now_ms - 400 * day};
	for (size_t i = 0; i < sizeof(sql) / sizeof(sql[0]); i++) {
		sqlite3_stmt *st = NULL;
		int rc = sqlite3_prepare_v2(ob->db, sql[i], -1, &st, NULL);
		if (rc != SQLITE_OK)
			return fail(ob, rc, "prepare prune");
		sqlite3_bind_int64(st, 1, cut[i]);
		rc = sqlite3_step(st);
		sqlite3_finalize(st);
		if (rc != SQLITE_DONE)
			return fail(ob, rc, "prune local history");
	}
	return SCRM_OK;
}
