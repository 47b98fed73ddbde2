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
 * Schema v4 adds bounded storage and alarms:
 *   usage(id=1, bytes, events, refused_paid) — the pending events' stored
 *     size, kept by triggers on outbox in the same transaction as every
 *     insert, delete and body update (whichever process or path), so the cap
 *     costs one row read per append, never a SUM over the table
 *   outbox_evictable — a partial index over the events that may be evicted,
 *     in eviction order (class, then seq)
 *   dropped(kind PK, count, bytes, last_ms) — events evicted or refused
 *     under outbox.max_bytes, per kind, for the heartbeat
 *   alarms(code PK, since_ms, last_ms, count, detail)
 *
 * Schema v5 adds the clock anchor to `device` (clock_* columns; the rule is
 * at "clock trust" below). max_wall_ms keeps its v1 name and now means the
 * newest trusted wall clock since the anchor was last adopted.
 *
 * The sequence counter lives in `device`, not in max(seq), because acked
 * events are deleted: a seq must never be reused even when the outbox empties.
 * A fresh outbox replacing a quarantined one starts it at
 * max(anything the old file still shows, max(wall ms, build time ms) * 1000):
 * central may hold seqs the damaged file no longer tells, and a wall-clock
 * millisecond times 1000 is above any counter that started earlier (unless
 * a device captured 1000 events per millisecond) while staying below 2^53
 * until the year 2255.
 */
#include "outbox.h"

#include "dbcode.h"
#include "json.h"
#include "err.h"
#include "ident.h"
#include "platform.h"
#include "quarantine.h"
#include "salvage.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Clock trust (see "clock trust" below and docs/protocol.md, clock_ok). */
#define CLOCK_STEP_MS 60000              /* offset change tolerated, and the floor after a reboot */
#define CLOCK_DRIFT_PPM 500              /* plus this share of the mono time elapsed (the kernel's slew limit) */
#define CLOCK_CONFIRM_MS (10LL * 60000)  /* a new offset kept this long (mono) is a correction */
#define CLOCK_MAX_MS (1LL << 53)         /* wall and mono beyond this are nonsense: never trusted */
/* The clock state in `device`, in struct clock_state's order. */
#define CLOCK_COLUMNS "max_wall_ms, clock_boot, clock_offset_ms, clock_mono_ms, clock_cand_boot," \
		      " clock_cand_offset_ms, clock_cand_mono_ms"

/* Outside the libscrm target (unit tests compiling outbox.c alone). */
#ifndef SCRM_BUILD_EPOCH
#define SCRM_BUILD_EPOCH 0
#endif

#define XSTR_(x) #x
#define XSTR(x) XSTR_(x)
#define PAID_KINDS "('purchase', 'return', 'coupon_redeem')"
/* Eviction order: browsing, then scans, then any other kind not paid for. */
#define EVICT_CLASS "CASE kind WHEN 'reco_shown' THEN 0 WHEN 'member_scan' THEN 1 ELSE 2 END"
#define FRESH_SUFFIX ".fresh"
/* What identifies a sale for retries: a purchase's order_id, a return's
 * return_id, read from the canonical body (kind and body as SQL params). */
#define ORDER_KEY(kind, body) \
	"json_extract(" body ", CASE " kind " WHEN 'purchase' THEN '$.order_id' ELSE '$.return_id' END)"


struct outbox {
	sqlite3 *db;
	char device_id[65];
	char *dir, *path;       /* owned */
	char *reserve;          /* owned: <dir>/outbox.reserve (outbox__reserve_ensure) */
	int busy_ms;
	int lock_fd;            /* <dir>/outbox.lock (quarantine.h), -1 if unavailable */
	uint64_t dev, ino;      /* the file this connection opened */
	int corrupt;            /* a SQLite call reported the file damaged */
	char quarantined[4200]; /* where this open moved a damaged file, "" if it did not */
	unsigned generation;    /* files this handle has followed (outbox__generation) */
	int reserve_released;   /* released by this handle, disk_full not raised yet */
	int64_t disk_reserve;   /* setting disk_reserve_bytes, as read_limits last read it */
	char full_msg[480], drop_msg[480], conflict_msg[480];
	sqlite3_stmt *get_dev, *put_dev, *ins, *read, *del, *ack_meta, *oldest,
		*rej_copy, *rej_reason, *usage, *limits, *evict, *evict_del, *drop_add, *alarm_up, *order_get, *order_put;
};

int outbox__sqlite_err(int rc, const char *what, const char *detail)
{
	int code = db__code(rc);
	return err__set(code, "outbox: %s: %s", what, detail ? detail : sqlite3_errstr(rc));
}

static int fail(outbox *ob, int rc, const char *what)
{
	if (ob && quarantine__corrupt_rc(rc))
		ob->corrupt = 1;
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

/* The triggers that keep the local ledgers from the events (schema v2, v3).
 * W is a condition prefix: schema v6 adds "NEW.recovered = 0 AND " so
 * events copied from a quarantined file keep the ledgers they had (copied
 * with them) and are never attributed a second time. */
#define TRG_MEMBER_ACTIVITY(W) \
	"CREATE TRIGGER IF NOT EXISTS outbox_member_activity AFTER INSERT ON outbox" \
	" WHEN " W "NEW.kind IN ('purchase', 'return') AND json_extract(NEW.body, '$.member_id') IS NOT NULL" \
	" BEGIN" \
	"  INSERT OR REPLACE INTO member_activity(seq, member_id, wall_ms, kind, amount, skus)" \
	"  VALUES (NEW.seq, json_extract(NEW.body, '$.member_id'), NEW.wall_ms, NEW.kind," \
	"   CASE NEW.kind WHEN 'return' THEN -json_extract(NEW.body, '$.total') ELSE json_extract(NEW.body, '$.total') END," \
	"   (SELECT json_group_array(json_extract(value, '$.sku')) FROM json_each(NEW.body, '$.lines')));" \
	" END;"
#define TRG_RECO_SHOWN(W) \
	"CREATE TRIGGER IF NOT EXISTS outbox_reco_shown AFTER INSERT ON outbox WHEN " W "NEW.kind = 'reco_shown'" \
	" BEGIN" \
	"  INSERT OR REPLACE INTO reco_shown(reco_id, seq, member_id, guide_id, shown_ms)" \
	"  VALUES (NEW.id, NEW.seq, json_extract(NEW.body, '$.member_id'), json_extract(NEW.body, '$.guide_id'), NEW.wall_ms);" \
	" END;"
#define TRG_REDEMPTION(W) \
	"CREATE TRIGGER IF NOT EXISTS outbox_redemption AFTER INSERT ON outbox WHEN " W "NEW.kind = 'coupon_redeem'" \
	" BEGIN" \
	"  INSERT OR REPLACE INTO redemptions(id, seq, coupon, campaign, member_id, order_id, value, currency, mode, reserved_ms)" \
	"  VALUES (NEW.id, NEW.seq, json_extract(NEW.body, '$.coupon'), json_extract(NEW.body, '$.campaign')," \
	"   json_extract(NEW.body, '$.member_id'), json_extract(NEW.body, '$.order_id'), json_extract(NEW.body, '$.value')," \
	"   json_extract(NEW.body, '$.currency'), json_extract(NEW.body, '$.mode'), NEW.wall_ms);" \
	" END;"
#define TRG_ATTRIBUTION(W) \
	"CREATE TRIGGER IF NOT EXISTS outbox_attribution AFTER INSERT ON outbox" \
	" WHEN " W "NEW.kind = 'purchase' AND json_extract(NEW.body, '$.member_id') IS NOT NULL" \
	"  AND json_extract(NEW.body, '$.reco_id') IS NULL" \
	"  AND coalesce((SELECT v FROM settings WHERE k = 'attribution_window_ms'), 7200000) > 0" \
	" BEGIN" \
	"  UPDATE outbox SET body = (SELECT json_set(NEW.body, '$.guide_id', r.guide_id, '$.reco_id', r.reco_id," \
	"    '$.attributed', 'auto')" \
	"   FROM reco_shown r WHERE r.member_id = json_extract(NEW.body, '$.member_id')" \
	"    AND (json_extract(NEW.body, '$.guide_id') IS NULL OR r.guide_id = json_extract(NEW.body, '$.guide_id'))" \
	"    AND r.shown_ms <= NEW.wall_ms" \
	"    AND r.shown_ms >= NEW.wall_ms - coalesce((SELECT v FROM settings WHERE k = 'attribution_window_ms'), 7200000)" \
	"   ORDER BY r.shown_ms DESC, r.seq DESC LIMIT 1)" \
	"  WHERE seq = NEW.seq AND EXISTS (SELECT 1 FROM reco_shown r WHERE r.member_id = json_extract(NEW.body, '$.member_id')" \
	"    AND (json_extract(NEW.body, '$.guide_id') IS NULL OR r.guide_id = json_extract(NEW.body, '$.guide_id'))" \
	"    AND r.shown_ms <= NEW.wall_ms" \
	"    AND r.shown_ms >= NEW.wall_ms - coalesce((SELECT v FROM settings WHERE k = 'attribution_window_ms'), 7200000));" \
	" END;"

/* SQLite's JSON functions read the canonical body the capture path just
 * wrote: no second encoder in C, and any insert path gets it. */
static const char schema_v2[] =
	"CREATE TABLE IF NOT EXISTS member_activity("
	" seq INTEGER PRIMARY KEY, member_id TEXT NOT NULL, wall_ms INTEGER NOT NULL,"
	" kind TEXT NOT NULL, amount INTEGER NOT NULL, skus TEXT NOT NULL);"
	"CREATE INDEX IF NOT EXISTS member_activity_member ON member_activity(member_id, wall_ms);"
	TRG_MEMBER_ACTIVITY("")
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
	TRG_RECO_SHOWN("")
	TRG_REDEMPTION("")
	TRG_ATTRIBUTION("")
	"PRAGMA user_version = 3;";

/* Schema v4: bounded storage and alarms (see the top of this file). The
 * usage row starts from what an upgraded store already holds. */
static const char schema_v4[] =
	"CREATE TABLE IF NOT EXISTS usage("
	" id INTEGER PRIMARY KEY CHECK(id = 1), bytes INTEGER NOT NULL, events INTEGER NOT NULL,"
	" refused_paid INTEGER NOT NULL DEFAULT 0);"
	"INSERT OR IGNORE INTO usage(id, bytes, events)"
	" SELECT 1, coalesce(sum(length(CAST(body AS BLOB))), 0) + " XSTR(OUTBOX_ROW_OVERHEAD) " * count(*), count(*)"
	" FROM outbox;"
	"CREATE TRIGGER IF NOT EXISTS outbox_usage_insert AFTER INSERT ON outbox"
	" BEGIN"
	"  UPDATE usage SET bytes = bytes + length(CAST(NEW.body AS BLOB)) + " XSTR(OUTBOX_ROW_OVERHEAD) ","
	"   events = events + 1 WHERE id = 1;"
	" END;"
	"CREATE TRIGGER IF NOT EXISTS outbox_usage_delete AFTER DELETE ON outbox"
	" BEGIN"
	"  UPDATE usage SET bytes = bytes - length(CAST(OLD.body AS BLOB)) - " XSTR(OUTBOX_ROW_OVERHEAD) ","
	"   events = events - 1 WHERE id = 1;"
	" END;"
	"CREATE TRIGGER IF NOT EXISTS outbox_usage_update AFTER UPDATE OF body ON outbox"
	" BEGIN"
	"  UPDATE usage SET bytes = bytes - length(CAST(OLD.body AS BLOB)) + length(CAST(NEW.body AS BLOB)) WHERE id = 1;"
	" END;"
	"CREATE INDEX IF NOT EXISTS outbox_evictable ON outbox(" EVICT_CLASS ", seq)"
	" WHERE kind NOT IN " PAID_KINDS ";"
	"CREATE TABLE IF NOT EXISTS dropped("
	" kind TEXT PRIMARY KEY, count INTEGER NOT NULL, bytes INTEGER NOT NULL, last_ms INTEGER NOT NULL) WITHOUT ROWID;"
	"CREATE TABLE IF NOT EXISTS alarms("
	" code TEXT PRIMARY KEY, since_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL, count INTEGER NOT NULL,"
	" detail TEXT NOT NULL) WITHOUT ROWID;"
	"PRAGMA user_version = 4;";

/* Schema v5: the clock anchor (see "clock trust" below). Only these
 * columns: a later version adds its own statements after them. */
static const char schema_v5[] =
	"ALTER TABLE device ADD COLUMN clock_boot TEXT NOT NULL DEFAULT '';"
	"ALTER TABLE device ADD COLUMN clock_offset_ms INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE device ADD COLUMN clock_mono_ms INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE device ADD COLUMN clock_cand_boot TEXT NOT NULL DEFAULT '';"
	"ALTER TABLE device ADD COLUMN clock_cand_offset_ms INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE device ADD COLUMN clock_cand_mono_ms INTEGER NOT NULL DEFAULT 0;"
	"PRAGMA user_version = 5;";

/* Schema v6: what the store owes central beyond the events themselves.
 *   outbox.set_aside  NULL, or why the event cannot be sent as it is
 *                     (protocol.md "Set-aside events"): the row stays in
 *                     the queue as a marker so central learns the seq is
 *                     set aside, not lost; its bytes are in dead_letter
 *   dead_letter       events that could not be sent (a body that no longer
 *                     parses, larger than the broker accepts), byte for
 *                     byte as stored, kept until operations deal with them
 *   orders            the receipt of each purchase (by order_id) and return
 *                     (by return_id): a till retrying a sale gets the first
 *                     receipt back, never a second sale (scrm.h)
 *   recovered         the seqs taken from quarantined files (at the
 *                     quarantine or later by scrmctl outbox recover), so
 *                     each is taken once
 *   outbox.recovered  0 = captured here; 2 = copied into a fresh outbox at
 *                     a quarantine; 1 = recovered later (sent with
 *                     "recovered":true, protocol.md). The ledger triggers
 *                     skip copied events: their ledgers are copied too. */
static const char schema_v6[] =
	"ALTER TABLE outbox ADD COLUMN set_aside TEXT;"
	"ALTER TABLE outbox ADD COLUMN recovered INTEGER NOT NULL DEFAULT 0;"
	"DROP TRIGGER IF EXISTS outbox_member_activity;"
	"DROP TRIGGER IF EXISTS outbox_reco_shown;"
	"DROP TRIGGER IF EXISTS outbox_redemption;"
	"DROP TRIGGER IF EXISTS outbox_attribution;"
	TRG_MEMBER_ACTIVITY("NEW.recovered = 0 AND ")
	TRG_RECO_SHOWN("NEW.recovered = 0 AND ")
	TRG_REDEMPTION("NEW.recovered = 0 AND ")
	TRG_ATTRIBUTION("NEW.recovered = 0 AND ")
	"CREATE TABLE IF NOT EXISTS dead_letter("
	" seq INTEGER PRIMARY KEY, id BLOB, kind BLOB, wall_ms INTEGER, mono_ms INTEGER, boot BLOB,"
	" clock_ok INTEGER, body BLOB, reason TEXT NOT NULL, detail TEXT NOT NULL, set_aside_ms INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS orders("
	" kind TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL, wall_ms INTEGER NOT NULL,"
	" digest BLOB NOT NULL, PRIMARY KEY(kind, key)) WITHOUT ROWID;"
	"CREATE TABLE IF NOT EXISTS recovered("
	" seq INTEGER PRIMARY KEY, id TEXT NOT NULL, source TEXT NOT NULL, recovered_ms INTEGER NOT NULL);"
	"PRAGMA user_version = 6;";

#define OUTBOX_SCHEMA_VERSION 6

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
	if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		ver = sqlite3_column_int(st, 0);
	} else {
		rc = fail(ob, rc, "read schema version");
		goto cleanup;
	}
	rc = SCRM_OK;
	sqlite3_finalize(st);
	st = NULL;
	if (ver > OUTBOX_SCHEMA_VERSION) {
		rc = err__set(SCRM_E_CORRUPT, "outbox: schema version %d is newer than this agent (%d); refusing to touch it",
			      ver, OUTBOX_SCHEMA_VERSION);
		goto cleanup;
	}
	if (ver == 0 && (rc = exec(ob, schema_v1)))
		goto cleanup;
	if (ver < 2 && (rc = exec(ob, schema_v2)))
		goto cleanup;
	if (ver < 3 && (rc = exec(ob, schema_v3)))
		goto cleanup;
	if (ver < 4 && (rc = exec(ob, schema_v4)))
		goto cleanup;
	if (ver < 5 && (rc = exec(ob, schema_v5)))
		goto cleanup;
	if (ver < 6 && (rc = exec(ob, schema_v6)))
		goto cleanup;

	if ((rc = sqlite3_prepare_v2(ob->db, "SELECT device_id FROM device WHERE id = 1", -1, &st, NULL)) != SQLITE_OK) {
		rc = fail(ob, rc, "read device");
		goto cleanup;
	}
	int step = sqlite3_step(st);
	if (step != SQLITE_ROW && step != SQLITE_DONE) {
		rc = fail(ob, step, "read device");
		goto cleanup;
	}
	if (step == SQLITE_ROW) {
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

/* Raise (or bump) an alarm on any connection to an outbox (the fresh file
 * of a quarantine too), inside or outside a transaction. */
static int alarm_raise_db(sqlite3 *db, const char *code, const char *detail, int64_t now_ms)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(db,
				    "INSERT INTO alarms(code, since_ms, last_ms, count, detail) VALUES (?1, ?3, ?3, 1, ?2)"
				    " ON CONFLICT(code) DO UPDATE SET last_ms = excluded.last_ms, count = alarms.count + 1,"
				    " detail = excluded.detail",
				    -1, &st, NULL);
	if (rc == SQLITE_OK) {
		sqlite3_bind_text(st, 1, code, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, detail ? detail : "", -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 3, now_ms);
		rc = sqlite3_step(st);
		rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
	}
	sqlite3_finalize(st);
	return rc;
}

/* Open the connection and everything on it; on failure the caller
 * disconnects. ob->corrupt tells a damaged file from other failures. */
static int connect_db(outbox *ob, const char *device_id, int check)
{
	int bm = ob->busy_ms > 0 ? ob->busy_ms : 5000;
	platform__precreate(ob->path, 0660); /* see platform.h; failure: SQLite's default mode */
	int rc = sqlite3_open_v2(ob->path, &ob->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK)
		return fail(ob, rc, ob->path);
	sqlite3_extended_result_codes(ob->db, 1);
	sqlite3_busy_timeout(ob->db, bm);
	/* WAL lets the daemon read while the POS writes; FULL makes every
	 * commit durable before the capture call returns. */
	if ((rc = db__set_wal(ob->db, bm, "outbox"))) {
		if (rc == SCRM_E_CORRUPT)
			ob->corrupt = 1;
		return rc;
	}
	if ((rc = exec(ob, "PRAGMA synchronous=FULL")) ||
	    (rc = exec(ob, "PRAGMA foreign_keys=OFF")) ||
	    /* Freed cells are zeroed at no extra I/O; an erasure switches to ON
	     * for its own statements (FAST leaves freed overflow pages). */
	    (rc = exec(ob, "PRAGMA secure_delete=FAST")))
		return rc;
	if (check) {
		/* Before migrate: nothing is written to a damaged file. */
		char why[300];
		int q = quarantine__quick_check(ob->db, why, sizeof(why));
		if (q == 1) {
			ob->corrupt = 1;
			return err__set(SCRM_E_CORRUPT, "outbox: %s: %s", ob->path, why);
		}
		if (q != 0)
			return fail(ob, q, "quick_check");
	}
	if ((rc = migrate(ob, device_id)))
		return rc;
	if ((rc = prep(ob, &ob->get_dev, "SELECT next_seq, " CLOCK_COLUMNS " FROM device WHERE id = 1")) ||
	    (rc = prep(ob, &ob->put_dev, "UPDATE device SET next_seq = ?1, max_wall_ms = ?2, clock_boot = ?3,"
					 " clock_offset_ms = ?4, clock_mono_ms = ?5, clock_cand_boot = ?6,"
					 " clock_cand_offset_ms = ?7, clock_cand_mono_ms = ?8 WHERE id = 1")) ||
	    (rc = prep(ob, &ob->ins, "INSERT INTO outbox(seq, id, kind, wall_ms, mono_ms, boot, clock_ok, body) VALUES (?,?,?,?,?,?,?,?)")) ||
	    (rc = prep(ob, &ob->read, "SELECT seq, id, kind, wall_ms, mono_ms, boot, clock_ok, body, set_aside, recovered FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?")) ||
	    (rc = prep(ob, &ob->del, "DELETE FROM outbox WHERE seq BETWEEN ?1 AND ?2")) ||
	    (rc = prep(ob, &ob->ack_meta, "UPDATE device SET last_ack_ms = ?1, last_acked_seq = max(last_acked_seq, ?2) WHERE id = 1")) ||
	    (rc = prep(ob, &ob->oldest, "SELECT min(seq) FROM outbox")) ||
	    (rc = prep(ob, &ob->rej_copy, "INSERT OR IGNORE INTO rejected(seq, id, kind, wall_ms, body, reason, rejected_ms) SELECT seq, id, kind, wall_ms, body, ?2, ?3 FROM outbox WHERE seq = ?1")) ||
	    (rc = prep(ob, &ob->rej_reason, "DELETE FROM outbox WHERE seq = ?1")) ||
	    (rc = prep(ob, &ob->usage, "SELECT bytes FROM usage WHERE id = 1")) ||
	    (rc = prep(ob, &ob->limits, "SELECT (SELECT v FROM settings WHERE k = 'outbox_max_bytes'),"
					" (SELECT v FROM settings WHERE k = 'outbox_reserve_bytes'),"
					" (SELECT v FROM settings WHERE k = 'disk_reserve_bytes')")) ||
	    (rc = prep(ob, &ob->evict, "SELECT seq, kind, length(CAST(body AS BLOB)) FROM outbox"
				       " WHERE kind NOT IN " PAID_KINDS " AND seq < ?1 ORDER BY " EVICT_CLASS ", seq")) ||
	    (rc = prep(ob, &ob->evict_del, "DELETE FROM outbox WHERE seq = ?1")) ||
	    (rc = prep(ob, &ob->drop_add, "INSERT INTO dropped(kind, count, bytes, last_ms) VALUES (?1, 1, ?2, ?3)"
					  " ON CONFLICT(kind) DO UPDATE SET count = count + 1, bytes = bytes + excluded.bytes,"
					  " last_ms = excluded.last_ms")) ||
	    (rc = prep(ob, &ob->alarm_up, "INSERT INTO alarms(code, since_ms, last_ms, count, detail) VALUES (?1, ?3, ?3, 1, ?2)"
					  " ON CONFLICT(code) DO UPDATE SET last_ms = excluded.last_ms, count = alarms.count + 1,"
					  " detail = excluded.detail")) ||
	    /* the key as the caller knows it (?3 / ?7), else read from the body */
	    (rc = prep(ob, &ob->order_get, "SELECT seq, id, wall_ms, digest, key FROM orders WHERE kind = ?1 AND key = "
					   "coalesce(?3, " ORDER_KEY("?1", "?2") ")")) ||
	    (rc = prep(ob, &ob->order_put, "INSERT OR IGNORE INTO orders(kind, key, seq, id, wall_ms, digest)"
					   " SELECT ?1, k, ?3, ?4, ?5, ?6 FROM (SELECT coalesce(?7, " ORDER_KEY("?1", "?2") ") AS k)"
					   " WHERE k IS NOT NULL")))
		return rc;
	return SCRM_OK;
}

/* Finalize and close. `detached`: the file may have been moved, or is
 * damaged and about to be: leave its -wal and -shm alone (quarantine.h). */
static void disconnect(outbox *ob, int detached)
{
	sqlite3_stmt **all[] = {&ob->get_dev, &ob->put_dev,   &ob->ins,      &ob->read,      &ob->del,
				&ob->ack_meta, &ob->oldest,  &ob->rej_copy, &ob->rej_reason, &ob->usage,
				&ob->limits,  &ob->evict,    &ob->evict_del, &ob->drop_add, &ob->alarm_up,
				&ob->order_get, &ob->order_put};
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
		sqlite3_finalize(*all[i]);
		*all[i] = NULL;
	}
	if (detached)
		quarantine__close_detached(ob->db);
	else
		sqlite3_close_v2(ob->db);
	ob->db = NULL;
}

static int64_t probe_int(sqlite3 *db, const char *sql)
{
	sqlite3_stmt *st = NULL;
	int64_t v = 0;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return v;
}

static void unlink_db(const char *path)
{
	char p[4400];
	unlink(path);
	snprintf(p, sizeof(p), "%s-wal", path);
	unlink(p);
	snprintf(p, sizeof(p), "%s-shm", path);
	unlink(p);
}

/* Under the exclusive lock: the damaged outbox.db at ob->path goes to
 * quarantine and a fresh one replaces it. The fresh file is made complete
 * aside (outbox.db.fresh) first; then the damaged file is linked into
 * quarantine/, its -wal/-shm follow, and the fresh file is renamed over it,
 * so outbox.db never goes missing. A crash in between is finished by the
 * next open (finish_swap). */
static int quarantine_file(outbox *ob, const char *device_id, const char *why)
{
	int64_t now = platform__wall_ms();
	char old_dev[65] = "", dest[4200], tmp[4300], wal[4310], detail[2200];
	sqlite3 *old = NULL;
	outbox t;
	int64_t floor;
	salvage__report sr;
	int rc;

	memset(&t, 0, sizeof(t));
	/* What the damaged file still tells (a NOTADB file tells nothing). */
	if (sqlite3_open_v2(ob->path, &old, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) == SQLITE_OK) {
		sqlite3_stmt *st = NULL;
		sqlite3_busy_timeout(old, 1000);
		sqlite3_db_config(old, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
		if (sqlite3_prepare_v2(old, "SELECT device_id FROM device WHERE id = 1", -1, &st, NULL) == SQLITE_OK &&
		    sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
			snprintf(old_dev, sizeof(old_dev), "%s", (const char *)sqlite3_column_text(st, 0));
		sqlite3_finalize(st);
		if (old_dev[0] && !ident__ok(old_dev))
			old_dev[0] = '\0';
	}
	const char *dev = device_id ? device_id : old_dev[0] ? old_dev : NULL;
	if (!dev) {
		rc = err__set(SCRM_E_CORRUPT,
			      "outbox: %s is damaged (%s) and names no device: open the store with its device_id"
			      " (scrm-agent does at start) to move it to %s/%s/ and start a fresh outbox",
			      ob->path, why, ob->dir, QUARANTINE_DIR);
		goto out;
	}
	if (device_id && old_dev[0] && strcmp(device_id, old_dev) != 0) {
		rc = err__set(SCRM_E_MISMATCH, "device_id: the store belongs to \"%s\", not \"%s\"", old_dev, device_id);
		goto out;
	}
	/* Never reuse a seq central may hold (top of this file). */
	int64_t base_ms = now > (int64_t)SCRM_BUILD_EPOCH * 1000 ? now : (int64_t)SCRM_BUILD_EPOCH * 1000;
	floor = base_ms * 1000;
	if (old) {
		int64_t seen[] = {probe_int(old, "SELECT next_seq - 1 FROM device WHERE id = 1"),
				  probe_int(old, "SELECT last_acked_seq FROM device WHERE id = 1"),
				  probe_int(old, "SELECT max(seq) FROM outbox"), probe_int(old, "SELECT max(seq) FROM rejected")};
		for (size_t i = 0; i < sizeof(seen) / sizeof(seen[0]); i++)
			if (seen[i] >= floor)
				floor = seen[i] + 1;
	}
	if ((rc = quarantine__dest(ob->dir, "outbox", now, dest, sizeof(dest))) != 0) {
		rc = err__set(SCRM_E_IO, "outbox: cannot make %s/%s: %s", ob->dir, QUARANTINE_DIR, strerror(-rc));
		goto out;
	}
	snprintf(tmp, sizeof(tmp), "%s%s", ob->path, FRESH_SUFFIX);
	unlink_db(tmp);
	platform__precreate(tmp, 0660);
	if ((rc = sqlite3_open_v2(tmp, &t.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL)) !=
	    SQLITE_OK) {
		rc = fail(&t, rc, tmp);
		goto out;
	}
	sqlite3_busy_timeout(t.db, 5000);
	if ((rc = db__set_wal(t.db, 5000, "outbox")) || (rc = exec(&t, "PRAGMA synchronous=FULL")) ||
	    (rc = migrate(&t, dev)))
		goto out;
	memset(&sr, 0, sizeof(sr));
	/* Every row still readable, past damaged pages (salvage.h); a failure
	 * here leaves the fresh file without them, never a half copy. */
	if (old && (rc = salvage__copy(old, t.db, SALVAGE_QUARANTINE, dest, now, &sr)) != SCRM_OK)
		goto out; /* never swap in a fresh file without what could be read: the next open starts over */
	if (sr.max_seq >= floor)
		floor = sr.max_seq + 1;
	{
		char sql[160];
		snprintf(sql, sizeof(sql), "UPDATE device SET next_seq = %lld WHERE id = 1", (long long)floor);
		if ((rc = exec(&t, sql)))
			goto out;
	}
	snprintf(detail, sizeof(detail),
		 "%.600s could not be used (%.300s); moved to %.600s; %lld pending events recovered from it"
		 " (%lld unreadable, %lld damaged ranges stepped over; `scrmctl outbox recover` can try it again later),"
		 " %lld ledger rows; sequence numbers continue at %lld",
		 ob->path, why, dest, (long long)sr.events, (long long)sr.unreadable_rows, (long long)sr.skipped_ranges,
		 (long long)sr.ledger_rows, (long long)floor);
	if ((rc = alarm_raise_db(t.db, "outbox_quarantined", detail, now)) != SQLITE_OK) {
		rc = fail(&t, rc, "raise alarm");
		goto out;
	}
	/* Last connection: checkpoint and remove the -wal, so the file is
	 * whole by itself before it is renamed. */
	if ((rc = sqlite3_close(t.db)) != SQLITE_OK) {
		rc = outbox__sqlite_err(rc, "close fresh outbox", NULL);
		goto out;
	}
	t.db = NULL;
	/* sqlite3_close() does not report a checkpoint it could not make (an
	 * I/O error, a full disk): the fresh content is then still in the
	 * -wal, which the rename below would leave behind (unit_crash EIO 313). */
	snprintf(wal, sizeof(wal), "%s-wal", tmp);
	if (access(wal, F_OK) == 0) {
		rc = err__set(SCRM_E_IO, "outbox: cannot checkpoint %s: its -wal is still there", tmp);
		goto out;
	}
	quarantine__close_detached(old);
	old = NULL;
	if ((rc = platform__fsync_dir(ob->dir)) != 0 || (rc = quarantine__move(ob->path, dest, 1)) != 0 ||
	    (rename(tmp, ob->path) != 0 && (rc = -errno) != 0) || (rc = platform__fsync_dir(ob->dir)) != 0) {
		rc = err__set(SCRM_E_IO, "outbox: cannot move %s to %s: %s", ob->path, dest, strerror(-rc));
		goto out;
	}
	snprintf(ob->quarantined, sizeof(ob->quarantined), "%s", dest);
	rc = SCRM_OK;
out:
	if (t.db)
		sqlite3_close_v2(t.db);
	quarantine__close_detached(old);
	return rc;
}

/* An earlier quarantine stopped half-way (a crash) if outbox.db.fresh is
 * there. Once the damaged file is linked into quarantine/, the fresh file
 * is complete: finish the swap. Before that, drop the fresh file: the open
 * that follows finds the damage again and starts over. Exclusive lock held. */
static void finish_swap(outbox *ob)
{
	char tmp[4300], dest[4200];
	snprintf(tmp, sizeof(tmp), "%s%s", ob->path, FRESH_SUFFIX);
	if (access(tmp, F_OK) != 0)
		return;
	if (quarantine__links(ob->path) > 1 && quarantine__find_link(ob->dir, ob->path, dest, sizeof(dest)) &&
	    quarantine__move_sidecars(ob->path, dest) == 0 && rename(tmp, ob->path) == 0) {
		platform__fsync_dir(ob->dir);
		return;
	}
	unlink_db(tmp);
}

static int open_impl(const char *dir, const char *device_id, int busy_ms, int check, outbox **out)
{
	char path[4096], tmp[4300];
	outbox *ob = NULL;
	int rc;

	*out = NULL;
	if (!dir || !*dir)
		return err__set(SCRM_E_INVALID, "dir: required");
	if (device_id && !ident__ok(device_id))
		return err__set(SCRM_E_INVALID, "device_id: %s, got \"%.80s\"", ident__problem(device_id), device_id);
	if (snprintf(path, sizeof(path), "%s/%s", dir, OUTBOX_FILE) >= (int)sizeof(path))
		return err__set(SCRM_E_INVALID, "dir: path too long");
	/* Opening without a device id means "an existing store": never leave
	 * an empty directory behind for a mistyped path. */
	if (!device_id && access(path, F_OK) != 0)
		return err__set(SCRM_E_NOT_FOUND, "dir: no store at %s (a device_id is needed to create one)", dir);
	if ((rc = platform__mkdirs(dir, 0700)) != 0)
		return err__set(SCRM_E_IO, "dir: cannot create %s: %s", dir, strerror(-rc));
	if (!(ob = calloc(1, sizeof(*ob))) || !(ob->dir = strdup(dir)) || !(ob->path = strdup(path)) ||
	    !(ob->reserve = malloc(strlen(dir) + sizeof("/" OUTBOX_RESERVE_FILE)))) {
		rc = err__set(SCRM_E_NOMEM, "out of memory");
		goto cleanup;
	}
	sprintf(ob->reserve, "%s/%s", dir, OUTBOX_RESERVE_FILE);
	ob->busy_ms = busy_ms;
	/* Without the lock file (a read-only directory) there is no
	 * quarantine to coordinate with: open as before. */
	ob->lock_fd = quarantine__lock_open(dir, "outbox");
	snprintf(tmp, sizeof(tmp), "%s%s", path, FRESH_SUFFIX);
	for (int attempt = 0;; attempt++) {
		uint64_t dev0 = 0, ino0 = 0;
		char why[400];
		quarantine__lock(ob->lock_fd, 1);
		if (ob->lock_fd >= 0 && access(tmp, F_OK) == 0 && attempt < 3) {
			quarantine__lock(ob->lock_fd, 0);
			quarantine__lock(ob->lock_fd, 2);
			finish_swap(ob);
			quarantine__lock(ob->lock_fd, 0);
			continue;
		}
		int existed = platform__file_id(path, &dev0, &ino0) == 0;
		ob->corrupt = 0;
		rc = connect_db(ob, device_id, check);
		if (rc == SCRM_OK) {
			platform__file_id(path, &ob->dev, &ob->ino);
			quarantine__lock(ob->lock_fd, 0);
			*out = ob;
			return SCRM_OK;
		}
		int damaged = ob->corrupt && existed && ob->lock_fd >= 0;
		disconnect(ob, damaged);
		quarantine__lock(ob->lock_fd, 0);
		if (!damaged || attempt >= 3)
			goto cleanup;
		snprintf(why, sizeof(why), "%s", scrm_errmsg());
		/* Whoever takes the lock first moves the file; the others find
		 * another file there and simply open it. */
		quarantine__lock(ob->lock_fd, 2);
		if (quarantine__same_file(path, dev0, ino0) == 1)
			rc = quarantine_file(ob, device_id, why);
		else
			rc = SCRM_OK;
		quarantine__lock(ob->lock_fd, 0);
		if (rc)
			goto cleanup;
	}
cleanup:
	outbox__close(ob);
	return rc;
}

int outbox__open(const char *dir, const char *device_id, int busy_ms, outbox **out)
{
	return open_impl(dir, device_id, busy_ms, 0, out);
}

int outbox__open_checked(const char *dir, const char *device_id, int busy_ms, outbox **out)
{
	return open_impl(dir, device_id, busy_ms, 1, out);
}

static int hold(outbox *ob);
static int recover(outbox *ob);

int outbox__recover_file(outbox *ob, const char *path, salvage__report *r)
{
	sqlite3 *old = NULL;
	int rc;
	memset(r, 0, sizeof(*r));
	if (access(path, R_OK) != 0)
		return err__set(SCRM_E_NOT_FOUND, "file: cannot read %s: %s", path, strerror(errno));
	/* Read-only, and never checkpointed into on close: the quarantined
	 * file stays byte for byte what it was. */
	if ((rc = sqlite3_open_v2(path, &old, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL)) != SQLITE_OK) {
		rc = outbox__sqlite_err(rc, "open the quarantined file", old ? sqlite3_errmsg(old) : NULL);
		sqlite3_close(old);
		return rc;
	}
	sqlite3_busy_timeout(old, 1000);
	sqlite3_db_config(old, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
	{
		/* Only this device's events: a file of another device would
		 * collide on seqs (same test as the quarantine's). */
		sqlite3_stmt *st = NULL;
		char dev[65] = "";
		if (sqlite3_prepare_v2(old, "SELECT device_id FROM device WHERE id = 1", -1, &st, NULL) == SQLITE_OK &&
		    sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
			snprintf(dev, sizeof(dev), "%s", (const char *)sqlite3_column_text(st, 0));
		sqlite3_finalize(st);
		if (dev[0] && strcmp(dev, ob->device_id) != 0) {
			quarantine__close_detached(old);
			return err__set(SCRM_E_MISMATCH, "file: %s belongs to device \"%s\", this store to \"%s\"", path, dev,
					ob->device_id);
		}
	}
	if ((rc = hold(ob)) == SCRM_OK) {
		rc = salvage__copy(old, ob->db, SALVAGE_RECOVER, path, platform__wall_ms(), r);
		quarantine__lock(ob->lock_fd, 0);
	}
	quarantine__close_detached(old);
	return rc;
}

const char *outbox__quarantined(const outbox *ob)
{
	return ob && ob->quarantined[0] ? ob->quarantined : NULL;
}

void outbox__close(outbox *ob)
{
	if (!ob)
		return;
	/* A file moved away under us: its -wal name belongs to another file. */
	disconnect(ob, ob->path && quarantine__same_file(ob->path, ob->dev, ob->ino) != 1);
	if (ob->lock_fd >= 0)
		close(ob->lock_fd);
	free(ob->dir);
	free(ob->path);
	free(ob->reserve);
	free(ob);
}

/* Another process moved a damaged outbox aside and put a fresh one at our
 * path: reopen onto it (the handle stays the caller's). No lock held. */
static int follow(outbox *ob)
{
	outbox *fresh = NULL, t;
	if (quarantine__same_file(ob->path, ob->dev, ob->ino) != 0)
		return SCRM_OK; /* the same file, or none (deleted: keep ours) */
	int rc = open_impl(ob->dir, ob->device_id, ob->busy_ms, 0, &fresh);
	if (rc)
		return rc;
	t = *ob;
	*ob = *fresh;
	*fresh = t;
	/* what this handle has seen goes on with it */
	ob->generation = fresh->generation + 1;
	if (!ob->quarantined[0])
		memcpy(ob->quarantined, fresh->quarantined, sizeof(ob->quarantined));
	outbox__close(fresh); /* the old connection, detached */
	return SCRM_OK;
}

unsigned outbox__generation(const outbox *ob)
{
	return ob->generation;
}

sqlite3 *outbox__db(outbox *ob)
{
	return ob->db;
}

const char *outbox__device_id(const outbox *ob)
{
	return ob->device_id;
}

/* ---- bounded storage ---- */

static int is_paid(const char *kind)
{
	return strcmp(kind, "purchase") == 0 || strcmp(kind, "return") == 0 || strcmp(kind, "coupon_redeem") == 0;
}

/* The limits in force: the daemon's (settings), else the defaults. */
static void limits_of(sqlite3_stmt *q, int col, int64_t *max, int64_t *reserve)
{
	*max = OUTBOX_DEFAULT_MAX_BYTES;
	if (sqlite3_column_type(q, col) != SQLITE_NULL && sqlite3_column_int64(q, col) >= OUTBOX_MIN_MAX_BYTES)
		*max = sqlite3_column_int64(q, col);
	int64_t auto_reserve = *max / 8 < OUTBOX_RESERVE_AUTO_MAX ? *max / 8 : OUTBOX_RESERVE_AUTO_MAX;
	*reserve = auto_reserve;
	if (sqlite3_column_type(q, col + 1) != SQLITE_NULL) {
		int64_t r = sqlite3_column_int64(q, col + 1);
		if (r >= 0 && r < *max)
			*reserve = r;
	}
}

/* One cheap read per transaction: a handle sees a new limit at its next
 * append, whichever process wrote it. */
static int read_limits(outbox *ob, int64_t *max, int64_t *reserve)
{
	sqlite3_reset(ob->limits);
	int rc = sqlite3_step(ob->limits);
	if (rc != SQLITE_ROW) {
		rc = fail(ob, rc, "read limits");
		sqlite3_reset(ob->limits);
		return rc;
	}
	limits_of(ob->limits, 0, max, reserve);
	ob->disk_reserve = sqlite3_column_int64(ob->limits, 2);
	sqlite3_reset(ob->limits);
	return SCRM_OK;
}

static int read_usage(outbox *ob, int64_t *bytes)
{
	sqlite3_reset(ob->usage);
	int rc = sqlite3_step(ob->usage);
	*bytes = rc == SQLITE_ROW ? sqlite3_column_int64(ob->usage, 0) : 0;
	sqlite3_reset(ob->usage);
	return rc == SQLITE_ROW ? SCRM_OK : fail(ob, rc, "read usage");
}

static int raise_alarm(outbox *ob, const char *code, const char *detail, int64_t now_ms)
{
	sqlite3_stmt *st = ob->alarm_up;
	sqlite3_reset(st);
	sqlite3_bind_text(st, 1, code, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, detail ? detail : "", -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, now_ms);
	int rc = sqlite3_step(st);
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? SCRM_OK : fail(ob, rc, "raise alarm");
}

/* Count one dropped event and keep the "events_dropped" alarm's detail
 * the running totals. */
static int count_dropped(outbox *ob, const char *kind, int64_t bytes, int64_t now_ms)
{
	sqlite3_stmt *st = ob->drop_add;
	sqlite3_reset(st);
	sqlite3_bind_text(st, 1, kind, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, bytes);
	sqlite3_bind_int64(st, 3, now_ms);
	int rc = sqlite3_step(st);
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? SCRM_OK : fail(ob, rc, "count dropped event");
}

static int raise_dropped(outbox *ob, int64_t now_ms)
{
	sqlite3_stmt *st = NULL;
	char detail[400] = "";
	int rc = sqlite3_prepare_v2(ob->db,
				    "SELECT 'dropped under outbox.max_bytes (oldest first): ' ||"
				    " group_concat(kind || ' ' || count, ', ') FROM (SELECT kind, count FROM dropped ORDER BY kind)",
				    -1, &st, NULL);
	if (rc != SQLITE_OK)
		return fail(ob, rc, "prepare dropped");
	if ((rc = sqlite3_step(st)) == SQLITE_ROW && sqlite3_column_text(st, 0))
		snprintf(detail, sizeof(detail), "%s", (const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	if (rc != SQLITE_ROW)
		return fail(ob, rc, "read dropped");
	return raise_alarm(ob, "events_dropped", detail, now_ms);
}

/* Evict events that may be evicted, with seq < before, in eviction order,
 * until `want` bytes are free. With all_or_nothing, nothing is evicted
 * unless that frees enough. *freed = stored bytes removed. */
static int evict(outbox *ob, int64_t want, int64_t before, int all_or_nothing, int64_t now_ms, int64_t *freed)
{
	struct victim {
		int64_t seq, bytes;
		char kind[24];
	} *v = NULL;
	size_t n = 0, cap = 0;
	int64_t got = 0;
	int rc = SQLITE_DONE;

	*freed = 0;
	sqlite3_reset(ob->evict);
	sqlite3_bind_int64(ob->evict, 1, before);
	while (got < want && (rc = sqlite3_step(ob->evict)) == SQLITE_ROW) {
		if (n == cap) {
			size_t nc = cap ? cap * 2 : 64;
			struct victim *nv = realloc(v, nc * sizeof(*v));
			if (!nv) {
				sqlite3_reset(ob->evict);
				free(v);
				return err__set(SCRM_E_NOMEM, "out of memory");
			}
			v = nv;
			cap = nc;
		}
		v[n].seq = sqlite3_column_int64(ob->evict, 0);
		snprintf(v[n].kind, sizeof(v[n].kind), "%s", (const char *)sqlite3_column_text(ob->evict, 1));
		v[n].bytes = sqlite3_column_int64(ob->evict, 2) + OUTBOX_ROW_OVERHEAD;
		got += v[n].bytes;
		n++;
	}
	sqlite3_reset(ob->evict);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		free(v);
		return fail(ob, rc, "find events to evict");
	}
	if (all_or_nothing && got < want)
		n = 0;
	for (size_t i = 0; i < n; i++) {
		sqlite3_reset(ob->evict_del);
		sqlite3_bind_int64(ob->evict_del, 1, v[i].seq);
		rc = sqlite3_step(ob->evict_del);
		sqlite3_reset(ob->evict_del);
		if (rc != SQLITE_DONE) {
			free(v);
			return fail(ob, rc, "evict event");
		}
		if ((rc = count_dropped(ob, v[i].kind, v[i].bytes, now_ms))) {
			free(v);
			return rc;
		}
		*freed += v[i].bytes;
	}
	free(v);
	return n ? raise_dropped(ob, now_ms) : SCRM_OK;
}

static void utc(int64_t ms, char *out, size_t cap)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	if (!gmtime_r(&t, &tm) || !strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm))
		snprintf(out, cap, "@%lld ms", (long long)ms);
}

/* "central unreachable since ...; last ack ..." for the outbox-full message. */
static void central_state(outbox *ob, char *out, size_t cap)
{
	sqlite3_stmt *st = NULL;
	int have_link = 0, connected = 0;
	int64_t changed = 0, last_ack = 0;
	char a[40], b[40];
	if (sqlite3_prepare_v2(ob->db,
			       "SELECT (SELECT connected FROM link WHERE id = 1), (SELECT changed_ms FROM link WHERE id = 1),"
			       " (SELECT last_ack_ms FROM device WHERE id = 1)",
			       -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW) {
		have_link = sqlite3_column_type(st, 0) != SQLITE_NULL;
		connected = sqlite3_column_int(st, 0);
		changed = sqlite3_column_int64(st, 1);
		last_ack = sqlite3_column_int64(st, 2);
	}
	sqlite3_finalize(st);
	utc(changed, a, sizeof(a));
	utc(last_ack, b, sizeof(b));
	snprintf(out, cap, "%s%s; %s%s",
		 !have_link ? "no scrm-agent has run on this store yet" : connected ? "connected to central since " : "central unreachable since ",
		 have_link ? a : "", last_ack ? "last ack from central " : "central has never acknowledged an event",
		 last_ack ? b : "");
}

/* ---- clock trust ----
 *
 * Each event carries its wall clock and CLOCK_BOOTTIME (mono). Their
 * difference, the offset, stays put while the wall clock is sound: it moves
 * only by drift and NTP slewing. A step of the wall clock (a glitch, an RTC
 * that lost power, someone's `date -s`, or a real correction) is a jump of
 * the offset. The anchor is the boot and offset of the last trusted event:
 *
 *  1. wall before trusted_after_ms (the build date): not trusted, nothing
 *     changes (such a clock is never adopted, whatever NTP says).
 *  2. Same boot as the anchor, and |offset - anchor offset| <=
 *     CLOCK_STEP_MS + CLOCK_DRIFT_PPM of the mono time since the anchor:
 *     trusted; the anchor follows (drift), any pending step is forgotten.
 *  3. Another boot (or no anchor yet, or mono far behind the anchor's: a
 *     reboot behind an unreadable, all-zero boot id): mono restarted, so
 *     only wall >= max_wall_ms - CLOCK_STEP_MS can be checked: trusted and
 *     re-anchored if so.
 *  4. Otherwise it is a step: not trusted, the anchor stays. The step is
 *     adopted (this event trusted, anchor and max_wall_ms moved to it) if
 *     the kernel reports the clock NTP-synchronized, or if its offset was
 *     first seen, in this boot, at least CLOCK_CONFIRM_MS of mono earlier
 *     and every event since had it too (within the same tolerance); a step
 *     seen for the first time (or another one) becomes that candidate.
 *
 * So a one-off glitch, forward or backward, flags the glitched events only,
 * and a correction costs at most CLOCK_CONFIRM_MS of untrusted events. The
 * offset is exact whatever the commit order: both clocks are read at capture.
 * The state lives in `device` (schema v5), read and written in each append's
 * transaction, so every process and handle on the file shares it. */

#define CLOCK_BOOT_CAP 40 /* a boot id is 36 characters */
struct clock_state {
	int64_t last_wall;            /* device.max_wall_ms */
	char boot[CLOCK_BOOT_CAP];    /* the anchor's boot id, "" = none yet */
	int64_t offset, mono;         /* its wall - mono, and its mono */
	char cand_boot[CLOCK_BOOT_CAP]; /* a step waiting for confirmation, "" = none */
	int64_t cand_offset, cand_mono; /* its offset, and the mono it was first seen at */
	int synced;                   /* platform__clock_synced(), asked at most once; CLOCK_UNASKED */
};
#define CLOCK_UNASKED 2

/* Columns `col`.. of a row holding CLOCK_COLUMNS. */
static void clock_load(sqlite3_stmt *q, int col, struct clock_state *c)
{
	const char *b = (const char *)sqlite3_column_text(q, col + 1);
	const char *cb = (const char *)sqlite3_column_text(q, col + 4);
	memset(c, 0, sizeof(*c));
	c->last_wall = sqlite3_column_int64(q, col);
	snprintf(c->boot, sizeof(c->boot), "%s", b ? b : "");
	c->offset = sqlite3_column_int64(q, col + 2);
	c->mono = sqlite3_column_int64(q, col + 3);
	snprintf(c->cand_boot, sizeof(c->cand_boot), "%s", cb ? cb : "");
	c->cand_offset = sqlite3_column_int64(q, col + 5);
	c->cand_mono = sqlite3_column_int64(q, col + 6);
	c->synced = CLOCK_UNASKED;
	/* Values no capture can produce (a hand-edited or salvaged file) are
	 * dropped: the arithmetic below relies on the bounds. */
	if (c->offset < -CLOCK_MAX_MS || c->offset > CLOCK_MAX_MS || c->mono < 0 || c->mono > CLOCK_MAX_MS)
		c->boot[0] = '\0';
	if (c->cand_offset < -CLOCK_MAX_MS || c->cand_offset > CLOCK_MAX_MS || c->cand_mono < 0 ||
	    c->cand_mono > CLOCK_MAX_MS)
		c->cand_boot[0] = '\0';
}

/* A boot id as stored: one that would not fit never matches. */
static int same_boot(const char *stored, const char *boot)
{
	return stored[0] && strlen(boot) < CLOCK_BOOT_CAP && strcmp(stored, boot) == 0;
}

/* |a - b| <= CLOCK_STEP_MS + CLOCK_DRIFT_PPM of `elapsed` (all bounded by
 * CLOCK_MAX_MS, so nothing overflows). */
static int within(int64_t a, int64_t b, int64_t elapsed)
{
	int64_t d = a > b ? a - b : b - a;
	if (elapsed < 0)
		elapsed = -elapsed;
	return d <= CLOCK_STEP_MS + elapsed / 1000000 * CLOCK_DRIFT_PPM + elapsed % 1000000 * CLOCK_DRIFT_PPM / 1000000;
}

static void clock_anchor(struct clock_state *c, const char *boot, int64_t offset, int64_t mono)
{
	snprintf(c->boot, sizeof(c->boot), "%s", boot);
	c->offset = offset;
	c->mono = mono;
	c->cand_boot[0] = '\0';
	c->cand_offset = c->cand_mono = 0;
}

/* One event's clock_ok under the rule above; moves `c` as it says. */
static int clock_judge(struct clock_state *c, int64_t wall, int64_t mono, const char *boot, int64_t trusted_after_ms)
{
	if (!boot)
		boot = "";
	if (wall < trusted_after_ms || wall > CLOCK_MAX_MS || mono < 0 || mono > CLOCK_MAX_MS)
		return 0;
	const int64_t offset = wall - mono;
	if (same_boot(c->boot, boot) && mono + CLOCK_STEP_MS >= c->mono) {
		if (within(offset, c->offset, mono - c->mono)) {
			clock_anchor(c, boot, offset, mono);
			if (wall > c->last_wall)
				c->last_wall = wall;
			return 1;
		}
	} else if (wall + CLOCK_STEP_MS >= c->last_wall) {
		clock_anchor(c, boot, offset, mono);
		if (wall > c->last_wall)
			c->last_wall = wall;
		return 1;
	}
	/* A step. */
	if (c->synced == CLOCK_UNASKED)
		c->synced = platform__clock_synced();
	int adopt = c->synced == 1;
	if (!adopt && same_boot(c->cand_boot, boot) && mono + CLOCK_STEP_MS >= c->cand_mono &&
	    within(offset, c->cand_offset, mono - c->cand_mono)) {
		if (mono - c->cand_mono < CLOCK_CONFIRM_MS)
			return 0; /* still the candidate, not yet confirmed */
		adopt = 1;
	}
	if (adopt) {
		clock_anchor(c, boot, offset, mono);
		c->last_wall = wall;
		return 1;
	}
	snprintf(c->cand_boot, sizeof(c->cand_boot), "%s", boot);
	c->cand_offset = offset;
	c->cand_mono = mono;
	return 0;
}

int outbox__clock_state(outbox *ob, int64_t wall_ms, int64_t mono_ms, const char *boot, int64_t trusted_after_ms,
			struct outbox__clock *out)
{
	struct clock_state c;
	int rc;
	memset(out, 0, sizeof(*out));
	follow(ob);
	sqlite3_reset(ob->get_dev);
	if ((rc = sqlite3_step(ob->get_dev)) != SQLITE_ROW) {
		rc = fail(ob, rc, "read clock state");
		sqlite3_reset(ob->get_dev);
		return rc;
	}
	clock_load(ob->get_dev, 1, &c);
	sqlite3_reset(ob->get_dev);
	if (!boot)
		boot = "";
	out->synced = c.synced = platform__clock_synced();
	out->last_wall_ms = c.last_wall;
	out->same_boot = same_boot(c.boot, boot);
	if (out->same_boot && wall_ms >= -CLOCK_MAX_MS && wall_ms <= CLOCK_MAX_MS && mono_ms >= 0 && mono_ms <= CLOCK_MAX_MS)
		out->step_ms = (wall_ms - mono_ms) - c.offset;
	if (same_boot(c.cand_boot, boot)) {
		out->pending = 1;
		out->pending_since_mono_ms = c.cand_mono;
		if (out->same_boot)
			out->pending_step_ms = c.cand_offset - c.offset;
	}
	/* Judged on a copy: asking records nothing. */
	out->trusted = clock_judge(&c, wall_ms, mono_ms, boot, trusted_after_ms);
	return SCRM_OK;
}

/* WAL bytes beyond what checkpoints normally leave (SQLite checkpoints at
 * 1000 pages): growth a stuck reader causes, counted against the cap. */
#define WAL_NORMAL_BYTES (8LL * 1024 * 1024)
static int64_t wal_growth(outbox *ob)
{
	char wal[4300];
	int64_t size = 0;
	snprintf(wal, sizeof(wal), "%s-wal", ob->path);
	if (platform__file_size(wal, &size) != 0 || size <= WAL_NORMAL_BYTES)
		return 0;
	return size - WAL_NORMAL_BYTES;
}

/* The daemon keeps a disk reserve (setting disk_reserve_bytes) and it is
 * gone, and the disk has less than that left: the disk is nearly full. */
static int disk_nearly_full(outbox *ob)
{
	int64_t avail = 0, total = 0;
	/* after read_limits: no reserve wanted, no system calls */
	if (ob->disk_reserve <= 0 || access(ob->reserve, F_OK) == 0)
		return 0;
	return platform__disk_space(ob->dir, &avail, &total) == 0 && avail < ob->disk_reserve;
}

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
		rc = fail(ob, rc, "look up the receipt");
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
		const char *field = strcmp(r->kind, "purchase") == 0 ? "order_id" : "return_id";
		snprintf(ob->conflict_msg, sizeof(ob->conflict_msg),
			 "%s: \"%.64s\" was already recorded on this device (seq %lld, event %.36s) with different"
			 " content; a retry must send the same %s, a new %s needs a new %s; nothing was recorded",
			 field, (const char *)sqlite3_column_text(st, 4), (long long)sqlite3_column_int64(st, 0),
			 (const char *)sqlite3_column_text(st, 1), r->kind, r->kind, field);
		r->refused = SCRM_E_CONFLICT;
		r->why = ob->conflict_msg;
	}
	sqlite3_reset(st);
	return SCRM_OK;
}

/* Take back the receipt recorded for a row then refused for room. */
static int order_forget(outbox *ob, const outbox__row *r)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(ob->db, "DELETE FROM orders WHERE kind = ?1 AND key = " ORDER_KEY("?1", "?2"), -1, &st,
				    NULL);
	if (rc != SQLITE_OK)
		return fail(ob, rc, "prepare receipt removal");
	sqlite3_bind_text(st, 1, r->kind, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, r->body, (int)r->body_len, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? SCRM_OK : fail(ob, rc, "remove a receipt");
}

/* Insert rows inside an open write transaction, each decided on its own
 * under outbox.max_bytes (outbox.h). */
static int append_locked(outbox *ob, outbox__row *rows, size_t n, int64_t trusted_after_ms)
{
	int rc;
	int64_t next, first, max_bytes, reserve, used, now = platform__wall_ms();
	struct clock_state clock;

	sqlite3_reset(ob->get_dev);
	if ((rc = sqlite3_step(ob->get_dev)) != SQLITE_ROW) {
		rc = fail(ob, rc, "read sequence counter");
		sqlite3_reset(ob->get_dev);
		return rc;
	}
	next = sqlite3_column_int64(ob->get_dev, 0);
	clock_load(ob->get_dev, 1, &clock);
	sqlite3_reset(ob->get_dev);
	first = next;
	if ((rc = read_limits(ob, &max_bytes, &reserve)) || (rc = read_usage(ob, &used)))
		return rc;
	const int64_t soft = max_bytes - reserve; /* the reserve is for paid events */
	/* The cap counts what the store really takes on disk beyond the
	 * events: a WAL that readers keep from being checkpointed grows
	 * without bound otherwise. Read once per transaction. */
	const int64_t wal_extra = wal_growth(ob);
	used += wal_extra;
	/* The daemon's disk reserve was released (the disk is full): only
	 * what a customer paid for may take what is left. */
	const int disk_low = disk_nearly_full(ob);

	for (size_t i = 0; i < n; i++) {
		outbox__row *r = &rows[i];
		const int64_t need = (int64_t)r->body_len + OUTBOX_ROW_OVERHEAD;
		const int paid = is_paid(r->kind);
		const int keyed = strcmp(r->kind, "purchase") == 0 || strcmp(r->kind, "return") == 0;
		unsigned char digest[OUTBOX_DIGEST_BYTES];
		r->seq = 0;
		r->refused = 0;
		r->why = NULL;
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
				return fail(ob, rc, "record the receipt");
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
			if ((rc = evict(ob, used + need - soft, first, !paid, now, &freed)) || (rc = read_usage(ob, &used)))
				return rc;
			used += wal_extra;
		}
		if (disk_low && !paid) {
			snprintf(ob->drop_msg, sizeof(ob->drop_msg),
				 "disk nearly full: %s not recorded; the space left on %.200s is kept for purchases, returns"
				 " and redemptions and for central's acks (the disk_full alarm is up)",
				 r->kind, ob->dir);
			r->refused = SCRM_E_DISK_FULL;
			r->why = ob->drop_msg;
			if ((rc = count_dropped(ob, r->kind, need, now)))
				return rc;
			continue;
		}
		if (used + need > (paid ? max_bytes : soft)) {
			char state[200];
			central_state(ob, state, sizeof(state));
			if (paid) {
				snprintf(ob->full_msg, sizeof(ob->full_msg),
					 "outbox full: %lld bytes used of %lld (outbox.max_bytes), all purchases, returns and"
					 " redemptions central has not acknowledged; %s; this %s needs %lld bytes;"
					 " nothing was recorded",
					 (long long)used, (long long)max_bytes, state, r->kind, (long long)need);
				r->refused = SCRM_E_DISK_FULL;
				r->why = ob->full_msg;
				if ((rc = exec(ob, "UPDATE usage SET refused_paid = refused_paid + 1 WHERE id = 1")) ||
				    (rc = raise_alarm(ob, "outbox_full", ob->full_msg, now)) ||
				    (keyed && (rc = order_forget(ob, r))))
					return rc;
			} else {
				snprintf(ob->drop_msg, sizeof(ob->drop_msg),
					 "outbox full: %s not recorded: %lld bytes used, %lld allowed for events other than"
					 " purchases, returns and redemptions (outbox.max_bytes - outbox.reserve_bytes)"
					 " and none of those left to evict; %s",
					 r->kind, (long long)used, (long long)soft, state);
				r->refused = SCRM_E_REFUSED;
				r->why = ob->drop_msg;
				if ((rc = count_dropped(ob, r->kind, need, now)) || (rc = raise_dropped(ob, now)))
					return rc;
			}
			continue;
		}
		r->seq = next++;
		/* Rows of one group are judged in order, each against the state
		 * the previous left. */
		r->clock_ok = clock_judge(&clock, r->wall_ms, r->mono_ms, r->boot, trusted_after_ms);
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
		/* Triggers may have grown the body (attribution). */
		if ((rc = read_usage(ob, &used)))
			return rc;
		used += wal_extra;
		if (paid && used > soft) {
			char detail[400];
			snprintf(detail, sizeof(detail),
				 "in reserve: %lld bytes used of %lld (outbox.max_bytes); the last %lld"
				 " (outbox.reserve_bytes) take only purchases, returns and redemptions, and nothing is left"
				 " to evict",
				 (long long)used, (long long)max_bytes, (long long)reserve);
			if ((rc = raise_alarm(ob, "outbox_full", detail, now)))
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
		return fail(ob, rc, "advance sequence counter");
	return SCRM_OK;
}

/* Take the shared lock for a write, on the file now at our path. */
static int hold(outbox *ob)
{
	for (int i = 0; i < 3; i++) {
		quarantine__lock(ob->lock_fd, 1);
		if (quarantine__same_file(ob->path, ob->dev, ob->ino) != 0)
			return SCRM_OK;
		quarantine__lock(ob->lock_fd, 0);
		int rc = follow(ob);
		if (rc)
			return rc;
	}
	quarantine__lock(ob->lock_fd, 1);
	return SCRM_OK;
}

/* The file turned out damaged during a write: move it aside like an open
 * would, and go on in the fresh outbox. */
static int recover(outbox *ob)
{
	char why[400];
	int rc = SCRM_OK;
	snprintf(why, sizeof(why), "%s", scrm_errmsg());
	if (ob->lock_fd < 0 || !ob->device_id[0])
		return SCRM_E_CORRUPT;
	quarantine__lock(ob->lock_fd, 2);
	if (quarantine__same_file(ob->path, ob->dev, ob->ino) == 1)
		rc = quarantine_file(ob, ob->device_id, why);
	quarantine__lock(ob->lock_fd, 0);
	if (rc == SCRM_OK)
		rc = follow(ob);
	if (rc)
		err__set(SCRM_E_CORRUPT, "%s", why);
	return rc;
}

int outbox__append(outbox *ob, outbox__row *rows, size_t n, int64_t trusted_after_ms)
{
	int rc, retried = 0;
again:
	ob->corrupt = 0;
	if ((rc = hold(ob)))
		goto failed;
	if ((rc = sqlite3_exec(ob->db, "BEGIN IMMEDIATE", NULL, NULL, NULL)) != SQLITE_OK) {
		rc = fail(ob, rc, "begin");
		goto cleanup;
	}
	if ((rc = append_locked(ob, rows, n, trusted_after_ms)))
		goto cleanup;
	if ((rc = sqlite3_exec(ob->db, "COMMIT", NULL, NULL, NULL)) != SQLITE_OK) {
		rc = fail(ob, rc, "commit");
		goto cleanup;
	}
	quarantine__lock(ob->lock_fd, 0);
	for (size_t i = 0; i < n; i++)
		if (rows[i].refused)
			return err__set(rows[i].refused, "%s", rows[i].why ? rows[i].why : "not recorded");
	return SCRM_OK;
cleanup:
	rollback(ob);
	quarantine__lock(ob->lock_fd, 0);
	if (ob->corrupt && !retried && recover(ob) == SCRM_OK) {
		retried = 1;
		goto again;
	}
failed:
	for (size_t i = 0; i < n; i++) {
		rows[i].seq = 0;
		rows[i].refused = rc;
		rows[i].why = NULL;
	}
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

	if ((rc = hold(ob))) {
		row->seq = 0;
		return rc;
	}
	if ((rc = sqlite3_exec(ob->db, "BEGIN IMMEDIATE", NULL, NULL, NULL)) != SQLITE_OK) {
		rc = fail(ob, rc, "begin");
		goto cleanup;
	}
	if ((rc = find_existing(ob, lim)))
		goto cleanup;
	if (lim->existing) {
		rollback(ob); /* nothing to write */
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
	if ((rc = append_locked(ob, row, 1, trusted_after_ms)))
		goto cleanup;
	/* Refused for room: the counters and the alarm are kept. */
	if ((rc = sqlite3_exec(ob->db, "COMMIT", NULL, NULL, NULL)) != SQLITE_OK) {
		rc = fail(ob, rc, "commit");
		goto cleanup;
	}
	quarantine__lock(ob->lock_fd, 0);
	if (row->refused)
		return err__set(row->refused, "%s", row->why ? row->why : "not recorded");
	return SCRM_OK;
cleanup:
	rollback(ob);
	quarantine__lock(ob->lock_fd, 0);
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

static int verdict_once(outbox *ob, const char *id, const char *verdict, const char *reason, const char *detail,
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

/* One JSON document a query builds (its first column), into `out` (reset
 * first); `bind` >= 0 is bound as ?1; *n (may be NULL) = its second column. */
static int query_json(outbox *ob, const char *sql, int bind, sbuf *out, int64_t *n, const char *what)
{
	sqlite3_stmt *st = NULL;
	sbuf__reset(out);
	follow(ob);
	int rc = sqlite3_prepare_v2(ob->db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return fail(ob, rc, what);
	if (bind >= 0)
		sqlite3_bind_int(st, 1, bind);
	if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		sbuf__puts(out, (const char *)sqlite3_column_text(st, 0));
		if (n)
			*n = sqlite3_column_int64(st, 1);
	}
	sqlite3_finalize(st);
	if (rc != SQLITE_ROW)
		return fail(ob, rc, what);
	return out->oom ? err__set(SCRM_E_NOMEM, "out of memory") : SCRM_OK;
}

int outbox__set_aside_count(outbox *ob, int64_t *n)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(ob->db, "SELECT count(*) FROM dead_letter", -1, &st, NULL);
	*n = 0;
	if (rc != SQLITE_OK)
		return fail(ob, rc, "prepare set-aside count");
	if ((rc = sqlite3_step(st)) == SQLITE_ROW)
		*n = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? SCRM_OK : fail(ob, rc, "count set-aside events");
}

int outbox__set_aside_list(outbox *ob, sbuf *out)
{
	/* The stored bytes may not be text or JSON any more: the body goes out
	 * as a JSON string of what can be shown (invalid UTF-8 replaced). */
	return query_json(ob,
			  "SELECT json_group_array(json_object('seq', seq, 'id', CAST(id AS TEXT), 'kind', CAST(kind AS TEXT),"
			  " 'wall_ms', wall_ms, 'reason', reason, 'detail', detail, 'set_aside_ms', set_aside_ms,"
			  " 'bytes', length(body), 'body', CAST(body AS TEXT))) FROM (SELECT * FROM dead_letter ORDER BY seq)",
			  -1, out, NULL, "read set-aside events");
}

int outbox__pending_verdicts(outbox *ob, int max, sbuf *out, int *n)
{
	int64_t count = 0;
	/* Central holds the event (acknowledged: no longer pending, not
	 * rejected, not set aside) yet no verdict was recorded here. */
	int rc = query_json(ob,
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
	return query_json(ob,
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

/* ---- reading batches: every event checked before it leaves ---- */

static int uuid_ok(const unsigned char *t, int n)
{
	if (!t || n != 36)
		return 0;
	for (int i = 0; i < 36; i++) {
		unsigned char c = t[i];
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (c != '-')
				return 0;
		} else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
			return 0;
		}
	}
	return 1;
}

/* kind: 1..32 of [a-z_]; boot: 1..64 printable ASCII without quotes or
 * backslashes (it is written into the batch as is). */
static int token_ok(const unsigned char *t, int n, int max, int kind)
{
	if (!t || n < 1 || n > max)
		return 0;
	for (int i = 0; i < n; i++) {
		unsigned char c = t[i];
		if (kind ? !((c >= 'a' && c <= 'z') || c == '_') : (c < 0x21 || c > 0x7e || c == '"' || c == '\\'))
			return 0;
	}
	return 1;
}

/* Why a stored row cannot be sent as it is (NULL: it can). A body is
 * checked as a JSON object by the same strict parser central-facing input
 * goes through, so one changed byte on disk never puts a batch central
 * drops as "not JSON" at the head of the queue forever. */
static int set_aside(outbox *ob, int64_t seq, const char *reason, const char *detail, int64_t bytes);

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

/* Move one event's bytes to dead_letter and leave its marker in the queue,
 * in one transaction; raise events_set_aside. */
static int set_aside_once(outbox *ob, int64_t seq, const char *reason, const char *detail, int64_t bytes)
{
	static const char *const sql[] = {
		"INSERT OR REPLACE INTO dead_letter(seq, id, kind, wall_ms, mono_ms, boot, clock_ok, body, reason, detail,"
		" set_aside_ms) SELECT seq, CAST(id AS BLOB), CAST(kind AS BLOB), wall_ms, mono_ms, CAST(boot AS BLOB),"
		" clock_ok, CAST(body AS BLOB), ?2, ?3, ?4 FROM outbox WHERE seq = ?1",
		"UPDATE outbox SET body = '{}', set_aside = json_object('reason', ?2, 'detail', ?3, 'bytes', ?5)"
		" WHERE seq = ?1",
	};
	int64_t now = platform__wall_ms();
	char alarm[700];
	int rc;
	if ((rc = exec(ob, "BEGIN IMMEDIATE")))
		return rc;
	for (size_t i = 0; i < sizeof(sql) / sizeof(sql[0]); i++) {
		sqlite3_stmt *st = NULL;
		if ((rc = sqlite3_prepare_v2(ob->db, sql[i], -1, &st, NULL)) != SQLITE_OK) {
			rc = fail(ob, rc, "prepare set aside");
			goto cleanup;
		}
		sqlite3_bind_int64(st, 1, seq);
		sqlite3_bind_text(st, 2, reason, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, detail, -1, SQLITE_STATIC);
		if (i == 0)
			sqlite3_bind_int64(st, 4, now);
		else
			sqlite3_bind_int64(st, 5, bytes);
		rc = sqlite3_step(st);
		sqlite3_finalize(st);
		if (rc != SQLITE_DONE) {
			rc = fail(ob, rc, "set an event aside");
			goto cleanup;
		}
	}
	snprintf(alarm, sizeof(alarm), "event seq %lld set aside (%s: %.400s); kept in dead_letter, central told",
		 (long long)seq, reason, detail);
	if ((rc = raise_alarm(ob, "events_set_aside", alarm, now)) || (rc = exec(ob, "COMMIT")))
		goto cleanup;
	return SCRM_OK;
cleanup:
	rollback(ob);
	return rc;
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
	const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "reason");
	if (cJSON_IsString(r))
		snprintf(reason, sizeof(reason), "%s", r->valuestring);
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

	follow(ob); /* a fresh outbox replaced a damaged one: send from it */
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
			if ((rc = set_aside(ob, seq, why, detail, bytes)))
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
		return fail(ob, rc, "read batch");
	if (out->oom)
		return err__set(SCRM_E_NOMEM, "out of memory building a batch");
	*count = n;
	return SCRM_OK;
}

static int ack_once(outbox *ob, const int64_t (*ranges)[2], size_t n, int64_t now_ms, int64_t *deleted)
{
	int rc;
	int64_t del = 0, hi = 0, used = 0, max_bytes = 0, reserve = 0;

	follow(ob);
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
	/* Room again for every kind of event: the full alarm is over. */
	if (del && ((rc = read_limits(ob, &max_bytes, &reserve)) || (rc = read_usage(ob, &used))))
		goto cleanup;
	if (del && used <= max_bytes - reserve && (rc = outbox__alarm_clear(ob, "outbox_full")))
		goto cleanup;
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

static int reject_once(outbox *ob, int64_t seq, const char *reason, int64_t now_ms)
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

static int oldest_once(outbox *ob, int64_t *seq)
{
	int rc;
	follow(ob);
	sqlite3_reset(ob->oldest);
	rc = sqlite3_step(ob->oldest);
	*seq = rc == SQLITE_ROW ? sqlite3_column_int64(ob->oldest, 0) : 0;
	sqlite3_reset(ob->oldest);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? SCRM_OK : fail(ob, rc, "oldest");
}

static int stats_once(outbox *ob, scrm_outbox_stats *st)
{
	sqlite3_stmt *q = NULL;
	int rc;
	memset(st, 0, sizeof(*st));
	follow(ob);
	/* One read transaction so the figures are consistent with each other. */
	rc = sqlite3_prepare_v2(ob->db,
				/* From the usage row the triggers keep, not a scan: the
				 * heartbeat asks this every minute of a long outage. */
				"SELECT u.events, u.bytes - u.events * " XSTR(OUTBOX_ROW_OVERHEAD) ","
				" coalesce((SELECT wall_ms FROM outbox ORDER BY seq LIMIT 1), 0), d.next_seq - 1, d.last_ack_ms,"
				" d.last_acked_seq, (SELECT count(*) FROM rejected) FROM device d, usage u WHERE d.id = 1 AND u.id = 1",
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
	 * the erasure is done only once the WAL is checkpointed and cut to
	 * nothing (protocol.md "Erasure"). */
	if (rc == SCRM_OK && changed)
		rc = outbox__scrub_wal(ob);
cleanup:
	if (rc)
		rollback(ob);
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
	if ((rc = sqlite3_prepare_v2(ob->db, "PRAGMA wal_checkpoint(TRUNCATE)", -1, &st, NULL)) != SQLITE_OK)
		return fail(ob, rc, "prepare checkpoint");
	if ((rc = sqlite3_step(st)) == SQLITE_ROW)
		busy = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	if (rc != SQLITE_ROW && rc != SQLITE_BUSY)
		return fail(ob, rc, "checkpoint");
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

int outbox__set_limits(outbox *ob, int64_t max_bytes, int64_t reserve_bytes)
{
	int rc;
	if (max_bytes < OUTBOX_MIN_MAX_BYTES)
		return err__set(SCRM_E_INVALID, "outbox.max_bytes: must be >= %d, got %lld", OUTBOX_MIN_MAX_BYTES,
				(long long)max_bytes);
	if (reserve_bytes < 0)
		reserve_bytes = max_bytes / 8 < OUTBOX_RESERVE_AUTO_MAX ? max_bytes / 8 : OUTBOX_RESERVE_AUTO_MAX;
	if (reserve_bytes >= max_bytes)
		return err__set(SCRM_E_INVALID, "outbox.reserve_bytes: must be less than outbox.max_bytes (%lld), got %lld",
				(long long)max_bytes, (long long)reserve_bytes);
	follow(ob);
	if ((rc = exec(ob, "BEGIN IMMEDIATE")))
		return rc;
	if ((rc = outbox__setting_set(ob, "outbox_max_bytes", max_bytes)) ||
	    (rc = outbox__setting_set(ob, "outbox_reserve_bytes", reserve_bytes)) || (rc = exec(ob, "COMMIT")))
		rollback(ob);
	return rc;
}

static int health_once(outbox *ob, struct outbox__health *h)
{
	sqlite3_stmt *q = NULL;
	int rc;
	memset(h, 0, sizeof(*h));
	follow(ob);
	if ((rc = exec(ob, "BEGIN")))
		return rc;
	rc = sqlite3_prepare_v2(ob->db,
				"SELECT (SELECT v FROM settings WHERE k = 'outbox_max_bytes'),"
				" (SELECT v FROM settings WHERE k = 'outbox_reserve_bytes'),"
				" u.events, u.bytes, u.refused_paid, d.next_seq - 1, d.last_ack_ms,"
				" coalesce((SELECT wall_ms FROM outbox ORDER BY seq LIMIT 1), 0)"
				" FROM usage u, device d WHERE u.id = 1 AND d.id = 1",
				-1, &q, NULL);
	if (rc != SQLITE_OK) {
		rc = fail(ob, rc, "health");
		goto out;
	}
	if ((rc = sqlite3_step(q)) != SQLITE_ROW) {
		rc = fail(ob, rc, "health");
		goto out;
	}
	limits_of(q, 0, &h->max_bytes, &h->reserve_bytes);
	h->pending = sqlite3_column_int64(q, 2);
	h->bytes = sqlite3_column_int64(q, 3);
	h->refused_paid = sqlite3_column_int64(q, 4);
	h->last_seq = sqlite3_column_int64(q, 5);
	h->last_ack_ms = sqlite3_column_int64(q, 6);
	h->oldest_pending_wall_ms = sqlite3_column_int64(q, 7);
	h->in_reserve = h->bytes > h->max_bytes - h->reserve_bytes;
	sqlite3_finalize(q);
	q = NULL;
	rc = sqlite3_prepare_v2(ob->db, "SELECT kind, count, bytes, last_ms FROM dropped ORDER BY kind LIMIT " XSTR(OUTBOX_HEALTH_KINDS),
				-1, &q, NULL);
	if (rc != SQLITE_OK) {
		rc = fail(ob, rc, "health");
		goto out;
	}
	while ((rc = sqlite3_step(q)) == SQLITE_ROW && h->n_dropped < OUTBOX_HEALTH_KINDS) {
		size_t i = h->n_dropped++;
		snprintf(h->dropped[i].kind, sizeof(h->dropped[i].kind), "%s", (const char *)sqlite3_column_text(q, 0));
		h->dropped[i].count = sqlite3_column_int64(q, 1);
		h->dropped[i].bytes = sqlite3_column_int64(q, 2);
		h->dropped[i].last_ms = sqlite3_column_int64(q, 3);
	}
	rc = rc == SQLITE_DONE || rc == SQLITE_ROW ? SCRM_OK : fail(ob, rc, "health");
out:
	sqlite3_finalize(q);
	if (rc == SCRM_OK)
		return exec(ob, "COMMIT");
	rollback(ob);
	return rc;
}

int outbox__alarm_raise(outbox *ob, const char *code, const char *detail, int64_t now_ms)
{
	if (!code || !*code)
		return err__set(SCRM_E_INVALID, "code: required");
	follow(ob);
	int rc = alarm_raise_db(ob->db, code, detail, now_ms);
	return rc == SQLITE_OK ? SCRM_OK : fail(ob, rc, "raise alarm");
}

int outbox__alarm_clear(outbox *ob, const char *code)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(ob->db, "DELETE FROM alarms WHERE code = ?1", -1, &st, NULL);
	if (rc != SQLITE_OK)
		return fail(ob, rc, "prepare alarm");
	sqlite3_bind_text(st, 1, code, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? SCRM_OK : fail(ob, rc, "clear alarm");
}

int outbox__alarms(outbox *ob, sbuf *out)
{
	return query_json(ob,
			  "SELECT json_group_array(json_object('code', code, 'since_ms', since_ms, 'last_ms', last_ms,"
			  " 'count', count, 'detail', detail)) FROM (SELECT * FROM alarms ORDER BY since_ms, code)",
			  -1, out, NULL, "read alarms");
}

/* ---- the disk reserve: room for acks when the disk fills ----
 * A full disk makes even an ack's DELETE fail (the WAL must grow to record
 * it), so a draining store resent everything at every ack timeout until an
 * operator freed space. The daemon keeps `outbox.reserve`, a file of
 * allocated blocks; a daemon-side write (ack, reject, verdict, set-aside)
 * that finds the disk full releases it and tries again, raising disk_full;
 * captures of events that are not paid for are refused while it is
 * released and the disk is nearly full, so the room goes to sales and to
 * the acks that make room. The daemon makes it again once space returns. */

int outbox__reserve_ensure(outbox *ob, int64_t bytes, int *in_place)
{
	int64_t have = -1, avail = 0, total = 0;
	*in_place = 0;
	if (bytes <= 0) {
		unlink(ob->reserve);
		return SCRM_OK;
	}
	if (platform__file_size(ob->reserve, &have) == 0 && have >= bytes) {
		*in_place = 1;
		return SCRM_OK;
	}
	/* Only from space to spare: never the last bytes a sale needs. */
	if (platform__disk_space(ob->dir, &avail, &total) != 0 || avail < 2 * bytes + (have > 0 ? have : 0))
		return SCRM_OK;
	int e = platform__reserve_file(ob->reserve, bytes);
	if (e != 0)
		return err__set(SCRM_E_IO, "outbox: cannot make the disk reserve %s: %s", ob->reserve, strerror(-e));
	platform__fsync_dir(ob->dir);
	*in_place = 1;
	outbox__alarm_clear(ob, "disk_full");
	return SCRM_OK;
}

/* After a daemon write failed for a full disk: release the reserve (1 if
 * there was one to release: try the write again). */
static int release_reserve(outbox *ob, int rc)
{
	if (rc != SCRM_E_DISK_FULL || access(ob->reserve, F_OK) != 0)
		return 0;
	int64_t size = 0;
	platform__file_size(ob->reserve, &size);
	if (unlink(ob->reserve) != 0)
		return 0;
	platform__fsync_dir(ob->dir);
	snprintf(ob->full_msg, sizeof(ob->full_msg),
		 "the disk holding %.200s is full: its reserve of %lld bytes was released so central's acks can delete"
		 " what was sent; scans and recommendations are not recorded until space returns",
		 ob->dir, (long long)size);
	ob->reserve_released = 1;
	return 1;
}

static void note_reserve_released(outbox *ob)
{
	if (ob->reserve_released) {
		ob->reserve_released = 0;
		alarm_raise_db(ob->db, "disk_full", ob->full_msg, platform__wall_ms());
	}
}

/* ---- reads that heal: a damaged file found while reading ----
 * The daemon mostly reads (batches, the oldest seq, stats for the
 * heartbeat) and deletes (acks): a page that went bad under it must not
 * stall delivery behind "cannot read the outbox" forever. As capture does,
 * a read that finds the file damaged moves it to quarantine/ (salvaging
 * every row still readable) and is tried once more on the fresh file. */

static int healed(outbox *ob, int rc)
{
	if (rc == SCRM_OK || !ob->corrupt || ob->lock_fd < 0)
		return 0;
	ob->corrupt = 0;
	if (sqlite3_get_autocommit(ob->db) == 0)
		sqlite3_exec(ob->db, "ROLLBACK", NULL, NULL, NULL);
	return recover(ob) == SCRM_OK;
}

int outbox__read_batch(outbox *ob, int64_t after_seq, size_t max_events, size_t max_bytes, size_t hard_bytes,
		       sbuf *out, size_t *count, int64_t *last_seq, int64_t *first_seq)
{
	size_t mark = out->len;
	ob->corrupt = 0;
	int rc = read_batch_once(ob, after_seq, max_events, max_bytes, hard_bytes, out, count, last_seq, first_seq);
	if (healed(ob, rc)) {
		out->len = mark;
		if (out->p)
			out->p[mark] = '\0';
		rc = read_batch_once(ob, after_seq, max_events, max_bytes, hard_bytes, out, count, last_seq, first_seq);
	}
	return rc;
}

int outbox__ack(outbox *ob, const int64_t (*ranges)[2], size_t n, int64_t now_ms, int64_t *deleted)
{
	ob->corrupt = 0;
	int rc = ack_once(ob, ranges, n, now_ms, deleted);
	if (healed(ob, rc))
		rc = ack_once(ob, ranges, n, now_ms, deleted);
	if (release_reserve(ob, rc))
		rc = ack_once(ob, ranges, n, now_ms, deleted);
	note_reserve_released(ob);
	return rc;
}

int outbox__oldest_seq(outbox *ob, int64_t *seq)
{
	ob->corrupt = 0;
	int rc = oldest_once(ob, seq);
	if (healed(ob, rc))
		rc = oldest_once(ob, seq);
	return rc;
}

int outbox__stats(outbox *ob, scrm_outbox_stats *st)
{
	ob->corrupt = 0;
	int rc = stats_once(ob, st);
	if (healed(ob, rc))
		rc = stats_once(ob, st);
	return rc;
}

int outbox__health(outbox *ob, struct outbox__health *h)
{
	ob->corrupt = 0;
	int rc = health_once(ob, h);
	if (healed(ob, rc))
		rc = health_once(ob, h);
	return rc;
}

int outbox__reject(outbox *ob, int64_t seq, const char *reason, int64_t now_ms)
{
	int rc = reject_once(ob, seq, reason, now_ms);
	if (release_reserve(ob, rc))
		rc = reject_once(ob, seq, reason, now_ms);
	note_reserve_released(ob);
	return rc;
}

int outbox__verdict(outbox *ob, const char *id, const char *verdict, const char *reason, const char *detail,
		    int64_t ms, int *changed)
{
	int rc = verdict_once(ob, id, verdict, reason, detail, ms, changed);
	if (release_reserve(ob, rc))
		rc = verdict_once(ob, id, verdict, reason, detail, ms, changed);
	note_reserve_released(ob);
	return rc;
}

static int set_aside(outbox *ob, int64_t seq, const char *reason, const char *detail, int64_t bytes)
{
	int rc = set_aside_once(ob, seq, reason, detail, bytes);
	if (release_reserve(ob, rc))
		rc = set_aside_once(ob, seq, reason, detail, bytes);
	note_reserve_released(ob);
	return rc;
}
