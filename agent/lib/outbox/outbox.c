/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outbox: the handle on `<store>/outbox.db` (see outbox.h for what the module
 * owns): open and close, the quarantine of a damaged file and the fresh
 * one that replaces it, following a file another process swapped in, and
 * the small SQLite helpers the other outbox files share (outbox_int.h).
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
#include "outbox_int.h"
#include "schema_sql.h"

#include "dbcode.h"
#include "err.h"
#include "ident.h"
#include "platform.h"
#include "quarantine.h"
#include "salvage.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int outbox__sqlite_err(int rc, const char *what, const char *detail)
{
	int code = db__code(rc);
	return err__set(code, "outbox: %s: %s", what, detail ? detail : sqlite3_errstr(rc));
}

int outbox__fail(outbox *ob, int rc, const char *what)
{
	if (ob && quarantine__corrupt_rc(rc))
		ob->corrupt = 1;
	return outbox__sqlite_err(rc, what, ob && ob->db ? sqlite3_errmsg(ob->db) : NULL);
}

int outbox__exec(outbox *ob, const char *sql)
{
	int rc = sqlite3_exec(ob->db, sql, NULL, NULL, NULL);
	return rc == SQLITE_OK ? SCRM_OK : outbox__fail(ob, rc, sql);
}

int outbox__prepare(outbox *ob, const char *sql, sqlite3_stmt **st, const char *what)
{
	int rc = sqlite3_prepare_v2(ob->db, sql, -1, st, NULL);
	return rc == SQLITE_OK ? SCRM_OK : outbox__fail(ob, rc, what);
}

int outbox__one_row(outbox *ob, const char *sql, sqlite3_stmt **q, const char *what)
{
	int rc = sqlite3_prepare_v2(ob->db, sql, -1, q, NULL);
	if (rc == SQLITE_OK && (rc = sqlite3_step(*q)) == SQLITE_ROW)
		return SCRM_OK;
	return outbox__fail(ob, rc, what);
}

void outbox__columns_i64(sqlite3_stmt *q, int from, int64_t *const *to, size_t n)
{
	for (size_t i = 0; i < n; i++)
		*to[i] = sqlite3_column_int64(q, from + (int)i);
}

static int prep(outbox *ob, sqlite3_stmt **st, const char *sql)
{
	int rc = sqlite3_prepare_v3(ob->db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL);
	return rc == SQLITE_OK ? SCRM_OK : outbox__fail(ob, rc, "prepare");
}

void outbox__rollback(outbox *ob)
{
	if (!sqlite3_get_autocommit(ob->db))
		sqlite3_exec(ob->db, "ROLLBACK", NULL, NULL, NULL);
	outbox__receipts_forget(ob);
}

/* Waiting for the write lock another connection holds (the daemon's ack,
 * another POS process's group). SQLite's own busy timeout sleeps in steps
 * that grow to 100 ms, so a till that found the lock taken for 2 ms slept
 * 80-130 ms (the max of scrm-bench-sync's till during a drain). The locks
 * here are held for milliseconds: poll every 100 us for the first
 * millisecond, then every 500 us, up to the handle's busy timeout. */
static int busy_wait(void *ctx, int n)
{
	outbox *ob = ctx;
	const int64_t now = platform__mono_us();
	if (n == 0)
		ob->busy_since_us = now;
	const int64_t waited = now - ob->busy_since_us;
	if (waited >= (int64_t)(ob->busy_ms > 0 ? ob->busy_ms : 5000) * 1000)
		return 0;
	outbox__turn_wait(ob, now);
	platform__sleep_us(waited < 1000 ? 100 : 500);
	return 1;
}

/* Open the connection and everything on it; on failure the caller
 * disconnects. ob->corrupt tells a damaged file from other failures. */
static int connect_db(outbox *ob, const char *device_id, int check)
{
	int bm = ob->busy_ms > 0 ? ob->busy_ms : 5000;
	platform__precreate(ob->path, 0660); /* see platform.h; failure: SQLite's default mode */
	int rc = sqlite3_open_v2(ob->path, &ob->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK)
		return outbox__fail(ob, rc, ob->path);
	sqlite3_extended_result_codes(ob->db, 1);
	sqlite3_busy_handler(ob->db, busy_wait, ob);
	/* WAL lets the daemon read while the POS writes; FULL makes every
	 * commit durable before the capture call returns. */
	if ((rc = db__set_wal(ob->db, bm, "outbox"))) {
		if (rc == SCRM_E_CORRUPT)
			ob->corrupt = 1;
		return rc;
	}
	if ((rc = outbox__exec(ob, "PRAGMA synchronous=FULL")) ||
	    (rc = outbox__exec(ob, "PRAGMA foreign_keys=OFF")) ||
	    /* Freed cells are zeroed at no extra I/O; an erasure switches to ON
	     * for its own statements (FAST leaves freed overflow pages). */
	    (rc = outbox__exec(ob, "PRAGMA secure_delete=FAST")))
		return rc;
	/* A POS's handle (not the daemon's, which opens checked) leaves the
	 * WAL's checkpoints to the daemon: SQLite runs an automatic checkpoint
	 * inside the commit that crosses its threshold, on the caller's
	 * thread, and during a drain that put copies of a thousand pages and
	 * an fsync of the database into a till's sale (a 134 ms capture at a
	 * 0.3 ms p50). The daemon's handle keeps SQLite's 1,000 pages and its
	 * idle checkpoint; a POS handle checkpoints only past
	 * POS_AUTOCHECKPOINT_PAGES, so the WAL stays bounded when no daemon
	 * runs or it lags. */
	if (!check && (rc = outbox__exec(ob, "PRAGMA wal_autocheckpoint=" XSTR(POS_AUTOCHECKPOINT_PAGES))))
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
			return outbox__fail(ob, q, "quick_check");
	}
	if ((rc = outbox__migrate(ob, device_id)))
		return rc;
	char evict_sql[800], order_key_sql[600];
	outbox__kind_sql(&ob->ksql);
	snprintf(evict_sql, sizeof(evict_sql),
		 "SELECT seq, kind, length(CAST(body AS BLOB)) FROM outbox WHERE %s AND seq < ?1 ORDER BY %s, seq",
		 ob->ksql.evictable, ob->ksql.evict_class);
	snprintf(order_key_sql, sizeof(order_key_sql), "SELECT %s", ob->ksql.order_key);
	/* columns 8 and 9: the totals capture continues (schema v7); 10 the
	 * events pending (receipts.c) */
	if ((rc = prep(ob, &ob->get_dev, "SELECT t.next_seq, " CLOCK_COLUMNS ", t.cum_bytes, t.cum_events, t.events"
					 " FROM totals t, device d WHERE d.id = 1")) ||
	    (rc = prep(ob, &ob->put_dev, "UPDATE device SET next_seq = ?1, max_wall_ms = ?2, clock_boot = ?3,"
					 " clock_offset_ms = ?4, clock_mono_ms = ?5, clock_cand_boot = ?6,"
					 " clock_cand_offset_ms = ?7, clock_cand_mono_ms = ?8, cum_bytes = ?9,"
					 " cum_events = ?10 WHERE id = 1")) ||
	    /* member: a purchase's or return's member_id as a JSON string
	     * (schema.c), from the caller or `who` (append.c) */
	    (rc = prep(ob, &ob->ins, "INSERT INTO outbox(seq, id, kind, wall_ms, mono_ms, boot, clock_ok, body, cum, cum_events,"
				     " max_wall, order_key, digest, member) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14)")) ||
	    /* the rules a captured row implies beyond itself (append.c), each
	     * kept to the SQL its trigger had up to schema v7 */
	    (rc = prep(ob, &ob->who, "SELECT nullif(?1 -> '$.member_id', 'null'), ?1 ->> '$.member_id', ?1 ->> '$.guide_id',"
				     " ?1 ->> '$.reco_id' IS NOT NULL")) ||
	    /* attrib_any first: attrib's ORDER BY builds a sorter per run,
	     * and most sales follow no list */
	    (rc = prep(ob, &ob->attrib_any, "SELECT 1 FROM reco_shown r WHERE r.member_id = ?1"
					    " AND r.shown_ms <= ?2 AND r.shown_ms >= ?2 - ?3 LIMIT 1")) ||
	    (rc = prep(ob, &ob->attrib, "SELECT json_set(?1, '$.guide_id', r.guide_id, '$.reco_id', r.reco_id, '$.attributed', 'auto')"
					" FROM reco_shown r WHERE r.member_id = ?2 AND (?3 IS NULL OR r.guide_id = ?3)"
					" AND r.shown_ms <= ?4 AND r.shown_ms >= ?4 - ?5 ORDER BY r.shown_ms DESC, r.seq DESC LIMIT 1")) ||
	    (rc = prep(ob, &ob->led_reco, "INSERT OR REPLACE INTO reco_shown(reco_id, seq, member_id, guide_id, shown_ms)"
					  " VALUES (?1, ?2, json_extract(?3, '$.member_id'), json_extract(?3, '$.guide_id'), ?4)")) ||
	    (rc = prep(ob, &ob->led_redeem, "INSERT OR REPLACE INTO redemptions(id, seq, coupon, campaign, member_id, order_id,"
					    " value, currency, mode, reserved_ms) VALUES (?1, ?2, json_extract(?3, '$.coupon'),"
					    " json_extract(?3, '$.campaign'), json_extract(?3, '$.member_id'), json_extract(?3, '$.order_id'),"
					    " json_extract(?3, '$.value'), json_extract(?3, '$.currency'), json_extract(?3, '$.mode'), ?4)")) ||
	    (rc = prep(ob, &ob->read, "SELECT seq, id, kind, wall_ms, mono_ms, boot, clock_ok, body, set_aside, recovered FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?")) ||
	    (rc = prep(ob, &ob->del, "DELETE FROM outbox WHERE seq BETWEEN ?1 AND ?2")) ||
	    (rc = prep(ob, &ob->ack_meta, "UPDATE device SET last_ack_ms = ?1, last_acked_seq = max(last_acked_seq, ?2) WHERE id = 1")) ||
	    (rc = prep(ob, &ob->oldest, "SELECT min(seq) FROM outbox")) ||
	    (rc = prep(ob, &ob->rej_copy, "INSERT OR IGNORE INTO rejected(seq, id, kind, wall_ms, body, reason, rejected_ms) SELECT seq, id, kind, wall_ms, body, ?2, ?3 FROM outbox WHERE seq = ?1")) ||
	    (rc = prep(ob, &ob->usage, "SELECT bytes FROM totals")) ||
	    (rc = prep(ob, &ob->limits, "SELECT (SELECT v FROM settings WHERE k = 'outbox_max_bytes'),"
					" (SELECT v FROM settings WHERE k = 'outbox_reserve_bytes'),"
					" (SELECT v FROM settings WHERE k = 'disk_reserve_bytes'),"
					" coalesce((SELECT v FROM settings WHERE k = 'attribution_window_ms'), 7200000)")) ||
	    (rc = prep(ob, &ob->evict, evict_sql)) ||
	    (rc = prep(ob, &ob->drop_add, "INSERT INTO dropped(kind, count, bytes, last_ms) VALUES (?1, 1, ?2, ?3)"
					  " ON CONFLICT(kind) DO UPDATE SET count = count + 1, bytes = bytes + excluded.bytes,"
					  " last_ms = excluded.last_ms")) ||
	    (rc = prep(ob, &ob->alarm_up, "INSERT INTO alarms(code, since_ms, last_ms, count, detail) VALUES (?1, ?3, ?3, 1, ?2)"
					  " ON CONFLICT(code) DO UPDATE SET last_ms = excluded.last_ms, count = alarms.count + 1,"
					  " detail = excluded.detail")) ||
	    (rc = prep(ob, &ob->order_get, "SELECT seq, id, wall_ms, digest FROM orders WHERE kind = ?1 AND key = ?2")) ||
	    (rc = prep(ob, &ob->order_key_of, order_key_sql)) ||
	    (rc = prep(ob, &ob->rc_new, "SELECT seq, kind, order_key FROM outbox WHERE seq > ?1 AND order_key IS NOT NULL")) ||
	    (rc = prep(ob, &ob->rc_row, "SELECT kind, order_key, digest, id, wall_ms FROM outbox WHERE seq = ?1")) ||
	    (rc = prep(ob, &ob->ack_chunk, "SELECT seq FROM outbox WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq"
					   " LIMIT 1 OFFSET " XSTR(ACK_CHUNK_ROWS) " - 1")) ||
	    /* outbox__remove, in its order */
	    (rc = prep(ob, &ob->rm_orders, "INSERT OR IGNORE INTO orders(kind, key, seq, id, wall_ms, digest)"
					   " SELECT kind, order_key, seq, id, wall_ms, digest FROM outbox"
					   " WHERE seq BETWEEN ?1 AND ?2 AND order_key IS NOT NULL")) ||
	    (rc = prep(ob, &ob->rm_activity, "INSERT OR IGNORE INTO member_activity(seq, member_id, wall_ms, kind, amount, skus)"
					     " SELECT seq, member ->> '$', wall_ms, kind, " MEMBER_ACTIVITY_OF("") " FROM outbox"
					     " WHERE seq BETWEEN ?1 AND ?2 AND member IS NOT NULL AND set_aside IS NULL")) ||
	    (rc = prep(ob, &ob->rm_usage, "UPDATE usage SET (removed_bytes, removed_events) = (SELECT removed_bytes +"
					  " coalesce(sum(length(CAST(body AS BLOB))), 0) + count(*) * " XSTR(OUTBOX_ROW_OVERHEAD) ","
					  " removed_events + count(*) FROM outbox WHERE seq BETWEEN ?1 AND ?2) WHERE id = 1")) ||
	    (rc = prep(ob, &ob->rm_device, "UPDATE device SET (next_seq, max_wall_ms, cum_bytes, cum_events) = (SELECT o.seq + 1,"
					   " coalesce(o.max_wall, device.max_wall_ms), coalesce(o.cum, device.cum_bytes),"
					   " coalesce(o.cum_events, device.cum_events) FROM outbox o WHERE o.seq BETWEEN ?1 AND ?2"
					   " ORDER BY o.seq DESC LIMIT 1)"
					   " WHERE id = 1 AND (SELECT max(seq) FROM outbox WHERE seq BETWEEN ?1 AND ?2) >= next_seq")))
		return rc;
	return SCRM_OK;
}

/* Finalize and close. `detached`: the file may have been moved, or is
 * damaged and about to be: leave its -wal and -shm alone (quarantine.h). */
static void disconnect(outbox *ob, int detached)
{
	sqlite3_stmt **all[] = {&ob->get_dev, &ob->put_dev,   &ob->ins,      &ob->read,      &ob->del,
				&ob->ack_meta, &ob->oldest,  &ob->rej_copy, &ob->usage,
				&ob->limits,  &ob->evict,    &ob->drop_add, &ob->alarm_up,
				&ob->order_get, &ob->order_key_of, &ob->rc_new, &ob->rc_row, &ob->rm_orders,
				&ob->rm_activity, &ob->rm_usage, &ob->rm_device, &ob->ack_chunk, &ob->who,
				&ob->attrib, &ob->attrib_any, &ob->led_reco, &ob->led_redeem};
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
				  probe_int(old, "SELECT next_seq - 1 FROM totals"),
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
		rc = outbox__fail(&t, rc, tmp);
		goto out;
	}
	sqlite3_busy_timeout(t.db, 5000);
	if ((rc = db__set_wal(t.db, 5000, "outbox")) || (rc = outbox__exec(&t, "PRAGMA synchronous=FULL")) ||
	    (rc = outbox__migrate(&t, dev)))
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
		if ((rc = outbox__exec(&t, sql)))
			goto out;
	}
	snprintf(detail, sizeof(detail),
		 "%.600s could not be used (%.300s); moved to %.600s; %lld pending events recovered from it"
		 " (%lld unreadable, %lld damaged ranges stepped over; `scrmctl outbox recover` can try it again later),"
		 " %lld ledger rows; sequence numbers continue at %lld",
		 ob->path, why, dest, (long long)sr.events, (long long)sr.unreadable_rows, (long long)sr.skipped_ranges,
		 (long long)sr.ledger_rows, (long long)floor);
	if ((rc = outbox__alarm_raise_db(t.db, "outbox_quarantined", detail, now)) != SQLITE_OK) {
		rc = outbox__fail(&t, rc, "raise alarm");
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
	ob->daemon = check;
	outbox__turn_open(ob);
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
	if ((rc = outbox__hold(ob)) == SCRM_OK) {
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
	outbox__receipts_free(ob);
	outbox__turn_close(ob);
	free(ob);
}

/* Another process moved a damaged outbox aside and put a fresh one at our
 * path: reopen onto it (the handle stays the caller's). No lock held. */
int outbox__follow(outbox *ob)
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
	ob->daemon = fresh->daemon;
	if (!ob->quarantined[0])
		memcpy(ob->quarantined, fresh->quarantined, sizeof(ob->quarantined));
	outbox__close(fresh); /* the old connection, detached */
	return SCRM_OK;
}

unsigned outbox__generation(const outbox *ob)
{
	return ob->generation;
}

const char *outbox__device_id(const outbox *ob)
{
	return ob->device_id;
}

/* Take the shared lock for a write, on the file now at our path. */
int outbox__hold(outbox *ob)
{
	for (int i = 0; i < 3; i++) {
		quarantine__lock(ob->lock_fd, 1);
		if (quarantine__same_file(ob->path, ob->dev, ob->ino) != 0)
			return SCRM_OK;
		quarantine__lock(ob->lock_fd, 0);
		int rc = outbox__follow(ob);
		if (rc)
			return rc;
	}
	quarantine__lock(ob->lock_fd, 1);
	return SCRM_OK;
}

/* The file turned out damaged during a write: move it aside like an open
 * would, and go on in the fresh outbox. */
int outbox__recover(outbox *ob)
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
		rc = outbox__follow(ob);
	if (rc)
		err__set(SCRM_E_CORRUPT, "%s", why);
	return rc;
}

/* One JSON document a query builds (its first column), into `out` (reset
 * first); `bind` >= 0 is bound as ?1; *n (may be NULL) = its second column. */
int outbox__query_json(outbox *ob, const char *sql, int bind, sbuf *out, int64_t *n, const char *what)
{
	sqlite3_stmt *st = NULL;
	sbuf__reset(out);
	outbox__follow(ob);
	int rc = sqlite3_prepare_v2(ob->db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return outbox__fail(ob, rc, what);
	if (bind >= 0)
		sqlite3_bind_int(st, 1, bind);
	if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		sbuf__puts(out, (const char *)sqlite3_column_text(st, 0));
		if (n)
			*n = sqlite3_column_int64(st, 1);
	}
	sqlite3_finalize(st);
	if (rc != SQLITE_ROW)
		return outbox__fail(ob, rc, what);
	return out->oom ? err__set(SCRM_E_NOMEM, "out of memory") : SCRM_OK;
}

int outbox__checkpoint(outbox *ob)
{
	int rc = sqlite3_wal_checkpoint_v2(ob->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
	return rc == SQLITE_OK || rc == SQLITE_BUSY ? SCRM_OK : outbox__fail(ob, rc, "checkpoint");
}

/* ---- reads that heal: a damaged file found while reading ----
 * The daemon mostly reads (batches, the oldest seq, stats for the
 * heartbeat) and deletes (acks): a page that went bad under it must not
 * stall delivery behind "cannot read the outbox" forever. As capture does,
 * a read that finds the file damaged moves it to quarantine/ (salvaging
 * every row still readable) and is tried once more on the fresh file. */

int outbox__healed(outbox *ob, int rc)
{
	if (rc == SCRM_OK || !ob->corrupt || ob->lock_fd < 0)
		return 0;
	ob->corrupt = 0;
	if (sqlite3_get_autocommit(ob->db) == 0)
		sqlite3_exec(ob->db, "ROLLBACK", NULL, NULL, NULL);
	return outbox__recover(ob) == SCRM_OK;
}
