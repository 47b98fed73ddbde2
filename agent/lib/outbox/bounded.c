/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outbox bounded storage: the size cap (outbox.max_bytes and the reserve
 * for paid events), class-aware eviction, the dropped counters, alarms, the
 * health summary for the heartbeat, and the daemon's disk reserve that
 * keeps room for acks when the disk fills.
 */
#include "outbox_int.h"

#include "err.h"
#include "platform.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Raise (or bump) an alarm on any connection to an outbox (the fresh file
 * of a quarantine too), inside or outside a transaction. */
int outbox__alarm_raise_db(sqlite3 *db, const char *code, const char *detail, int64_t now_ms)
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

/* ---- bounded storage ---- */

/* The limits in force: the daemon's (settings), else the defaults. */
void outbox__limits_of(sqlite3_stmt *q, int col, int64_t *max, int64_t *reserve)
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
int outbox__read_limits(outbox *ob, int64_t *max, int64_t *reserve)
{
	sqlite3_reset(ob->limits);
	int rc = sqlite3_step(ob->limits);
	if (rc != SQLITE_ROW) {
		rc = outbox__fail(ob, rc, "read limits");
		sqlite3_reset(ob->limits);
		return rc;
	}
	outbox__limits_of(ob->limits, 0, max, reserve);
	ob->disk_reserve = sqlite3_column_int64(ob->limits, 2);
	ob->attrib_window = sqlite3_column_int64(ob->limits, 3);
	sqlite3_reset(ob->limits);
	return SCRM_OK;
}

int outbox__read_usage(outbox *ob, int64_t *bytes)
{
	sqlite3_reset(ob->usage);
	int rc = sqlite3_step(ob->usage);
	*bytes = rc == SQLITE_ROW ? sqlite3_column_int64(ob->usage, 0) : 0;
	sqlite3_reset(ob->usage);
	return rc == SQLITE_ROW ? SCRM_OK : outbox__fail(ob, rc, "read usage");
}

int outbox__raise_alarm(outbox *ob, const char *code, const char *detail, int64_t now_ms)
{
	sqlite3_stmt *st = ob->alarm_up;
	sqlite3_reset(st);
	sqlite3_bind_text(st, 1, code, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, detail ? detail : "", -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, now_ms);
	int rc = sqlite3_step(st);
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? SCRM_OK : outbox__fail(ob, rc, "raise alarm");
}

/* Count one dropped event and keep the "events_dropped" alarm's detail
 * the running totals. */
int outbox__count_dropped(outbox *ob, const char *kind, int64_t bytes, int64_t now_ms)
{
	sqlite3_stmt *st = ob->drop_add;
	sqlite3_reset(st);
	sqlite3_bind_text(st, 1, kind, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, bytes);
	sqlite3_bind_int64(st, 3, now_ms);
	int rc = sqlite3_step(st);
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? SCRM_OK : outbox__fail(ob, rc, "count dropped event");
}

int outbox__raise_dropped(outbox *ob, int64_t now_ms)
{
	sqlite3_stmt *st = NULL;
	char detail[400] = "";
	int rc = sqlite3_prepare_v2(ob->db,
				    "SELECT 'dropped under outbox.max_bytes (oldest first): ' ||"
				    " group_concat(kind || ' ' || count, ', ') FROM (SELECT kind, count FROM dropped ORDER BY kind)",
				    -1, &st, NULL);
	if (rc != SQLITE_OK)
		return outbox__fail(ob, rc, "prepare dropped");
	if ((rc = sqlite3_step(st)) == SQLITE_ROW && sqlite3_column_text(st, 0))
		snprintf(detail, sizeof(detail), "%s", (const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	if (rc != SQLITE_ROW)
		return outbox__fail(ob, rc, "read dropped");
	return outbox__raise_alarm(ob, "events_dropped", detail, now_ms);
}

/* Evict events that may be evicted, with seq < before, in eviction order,
 * until `want` bytes are free. With all_or_nothing, nothing is evicted
 * unless that frees enough. *freed = stored bytes removed. */
int outbox__evict(outbox *ob, int64_t want, int64_t before, int all_or_nothing, int64_t now_ms, int64_t *freed)
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
		return outbox__fail(ob, rc, "find events to evict");
	}
	if (all_or_nothing && got < want)
		n = 0;
	for (size_t i = 0; i < n; i++) {
		int64_t gone = 0;
		if ((rc = outbox__remove(ob, v[i].seq, v[i].seq, &gone))) {
			free(v);
			return rc;
		}
		if ((rc = outbox__count_dropped(ob, v[i].kind, v[i].bytes, now_ms))) {
			free(v);
			return rc;
		}
		*freed += v[i].bytes;
	}
	free(v);
	return n ? outbox__raise_dropped(ob, now_ms) : SCRM_OK;
}

static void utc(int64_t ms, char *out, size_t cap)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	if (!gmtime_r(&t, &tm) || !strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm))
		snprintf(out, cap, "@%lld ms", (long long)ms);
}

/* "central unreachable since ...; last ack ..." for the outbox-full message. */
void outbox__central_state(outbox *ob, char *out, size_t cap)
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

/* WAL bytes beyond what checkpoints normally leave (SQLite checkpoints at
 * 1000 pages): growth a stuck reader causes, counted against the cap. */
#define WAL_NORMAL_BYTES (8LL * 1024 * 1024)
int64_t outbox__wal_growth(outbox *ob)
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
int outbox__disk_nearly_full(outbox *ob)
{
	int64_t avail = 0, total = 0;
	/* after read_limits: no reserve wanted, no system calls */
	if (ob->disk_reserve <= 0 || access(ob->reserve, F_OK) == 0)
		return 0;
	return platform__disk_space(ob->dir, &avail, &total) == 0 && avail < ob->disk_reserve;
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
	outbox__follow(ob);
	if ((rc = outbox__exec(ob, "BEGIN IMMEDIATE")))
		return rc;
	if ((rc = outbox__setting_set(ob, "outbox_max_bytes", max_bytes)) ||
	    (rc = outbox__setting_set(ob, "outbox_reserve_bytes", reserve_bytes)) || (rc = outbox__exec(ob, "COMMIT")))
		outbox__rollback(ob);
	return rc;
}

static int health_once(outbox *ob, struct outbox__health *h)
{
	sqlite3_stmt *q = NULL;
	/* the SELECT's columns after the two limits, in its order */
	int64_t *const figures[] = {&h->pending,  &h->bytes,       &h->refused_paid,
				    &h->last_seq, &h->last_ack_ms, &h->oldest_pending_wall_ms};
	int rc;
	memset(h, 0, sizeof(*h));
	outbox__follow(ob);
	if ((rc = outbox__exec(ob, "BEGIN")))
		return rc;
	if ((rc = outbox__one_row(ob,
				  "SELECT (SELECT v FROM settings WHERE k = 'outbox_max_bytes'),"
				  " (SELECT v FROM settings WHERE k = 'outbox_reserve_bytes'),"
				  " t.events, t.bytes, t.refused_paid, t.next_seq - 1, d.last_ack_ms,"
				  " coalesce((SELECT wall_ms FROM outbox ORDER BY seq LIMIT 1), 0)"
				  " FROM totals t, device d WHERE d.id = 1",
				  &q, "health")))
		goto out;
	outbox__limits_of(q, 0, &h->max_bytes, &h->reserve_bytes);
	outbox__columns_i64(q, 2, figures, sizeof(figures) / sizeof(figures[0]));
	h->in_reserve = h->bytes > h->max_bytes - h->reserve_bytes;
	sqlite3_finalize(q);
	q = NULL;
	rc = sqlite3_prepare_v2(ob->db, "SELECT kind, count, bytes, last_ms FROM dropped ORDER BY kind LIMIT " XSTR(OUTBOX_HEALTH_KINDS),
				-1, &q, NULL);
	if (rc != SQLITE_OK) {
		rc = outbox__fail(ob, rc, "health");
		goto out;
	}
	while ((rc = sqlite3_step(q)) == SQLITE_ROW && h->n_dropped < OUTBOX_HEALTH_KINDS) {
		size_t i = h->n_dropped++;
		snprintf(h->dropped[i].kind, sizeof(h->dropped[i].kind), "%s", (const char *)sqlite3_column_text(q, 0));
		h->dropped[i].count = sqlite3_column_int64(q, 1);
		h->dropped[i].bytes = sqlite3_column_int64(q, 2);
		h->dropped[i].last_ms = sqlite3_column_int64(q, 3);
	}
	rc = rc == SQLITE_DONE || rc == SQLITE_ROW ? SCRM_OK : outbox__fail(ob, rc, "health");
out:
	sqlite3_finalize(q);
	if (rc == SCRM_OK)
		return outbox__exec(ob, "COMMIT");
	outbox__rollback(ob);
	return rc;
}

int outbox__alarm_raise(outbox *ob, const char *code, const char *detail, int64_t now_ms)
{
	if (!code || !*code)
		return err__set(SCRM_E_INVALID, "code: required");
	outbox__follow(ob);
	int rc = outbox__alarm_raise_db(ob->db, code, detail, now_ms);
	return rc == SQLITE_OK ? SCRM_OK : outbox__fail(ob, rc, "raise alarm");
}

int outbox__alarm_clear(outbox *ob, const char *code)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(ob->db, "DELETE FROM alarms WHERE code = ?1", -1, &st, NULL);
	if (rc != SQLITE_OK)
		return outbox__fail(ob, rc, "prepare alarm");
	sqlite3_bind_text(st, 1, code, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? SCRM_OK : outbox__fail(ob, rc, "clear alarm");
}

int outbox__alarms(outbox *ob, sbuf *out)
{
	return outbox__query_json(ob,
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
int outbox__release_reserve(outbox *ob, int rc)
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

void outbox__note_reserve_released(outbox *ob)
{
	if (ob->reserve_released) {
		ob->reserve_released = 0;
		outbox__alarm_raise_db(ob->db, "disk_full", ob->full_msg, platform__wall_ms());
	}
}

int outbox__health(outbox *ob, struct outbox__health *h)
{
	ob->corrupt = 0;
	int rc = health_once(ob, h);
	if (outbox__healed(ob, rc))
		rc = health_once(ob, h);
	return rc;
}
