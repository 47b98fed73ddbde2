/* SPDX-License-Identifier: Apache-2.0 */
/*
 * schema: cache.db's tables and indexes, bringing an older file up to date,
 * and opening it (a damaged one quarantined and made anew by the daemon).
 *
 * Schema (PRAGMA user_version = 2; v1 had an unusable rules index):
 *   meta(k PK, v)                 tenant, phone country code
 *   streams(name PK, cursor, applied_ms, refused, gen, snap_*)
 *                                 one row per stream: its version cursor and
 *                                 the snapshot being built, if any
 *   delta_buf(stream, base, version, body)
 *                                 deltas that arrived during a snapshot build
 *                                 (body sealed: it may hold personal fields)
 *   members, coupons, catalogue, inventory, scripts, recos, rules
 *                                 one table per stream (streams.def), keyed
 *                                 by the record key
 *   <stream>__stage               a snapshot being built aside (apply.c)
 *
 * Index names carry a generation number (members_card_g7) because SQLite
 * keeps an index's name across a table rename (the snapshot swap).
 */
#include "cache_int.h"
#include "ident.h"

#include "dbcode.h"
#include "err.h"
#include "paths.h"
#include "platform.h"
#include "quarantine.h"

#include <stdio.h>
#include <string.h>

/* ---- streams -------------------------------------------------------- */

#define CACHE_INDEX(suffix, column, cols) {suffix, column, cols}
#define CACHE_NO_INDEX {NULL, NULL, NULL}
#define CACHE_STREAM(id, name, columns, insert, idx1, idx2, member, bind)                                            \
	[ST_##id] = {name, columns, insert, {idx1, idx2}, member, bind},
const struct stream_def cache__streams[ST_COUNT] = {
#include "streams.def"
};

const char *cache__stream_name(int st)
{
	return st >= 0 && st < ST_COUNT ? cache__streams[st].name : "?";
}

int cache__stream_parse(const char *name)
{
	for (int i = 0; name && i < ST_COUNT; i++)
		if (strcmp(name, cache__streams[i].name) == 0)
			return i;
	return -1;
}

/* ---- connection ----------------------------------------------------- */

int cache__fail(cache *c, int rc, const char *what)
{
	int code = db__code(rc);
	return err__set(code, "cache: %s: %s", what, c && c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
}

int cache__exec(cache *c, const char *sql)
{
	int rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);
	return rc == SQLITE_OK ? SCRM_OK : cache__fail(c, rc, sql);
}

void cache__rollback(cache *c)
{
	if (!sqlite3_get_autocommit(c->db))
		sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
}

int cache__prep(cache *c, sqlite3 *db, sqlite3_stmt **st, const char *sql, int persistent)
{
	int rc = sqlite3_prepare_v3(db, sql, -1, persistent ? SQLITE_PREPARE_PERSISTENT : 0, st, NULL);
	if (rc != SQLITE_OK)
		return err__set(SCRM_E_IO, "cache: prepare: %s", sqlite3_errmsg(db));
	(void)c;
	return SCRM_OK;
}

int cache__key_ok(const char *s)
{
	return ident__key_ok(s, MAX_KEY, ">");
}

int cache__create_table(cache *c, int st, const char *table, int64_t gen, int with_indexes)
{
	char sql[1024];
	int rc;
	snprintf(sql, sizeof(sql), "CREATE TABLE IF NOT EXISTS \"%s\"(key TEXT PRIMARY KEY, %s) WITHOUT ROWID", table,
		 cache__streams[st].columns);
	if ((rc = cache__exec(c, sql)))
		return rc;
	for (int i = 0; with_indexes && i < 2 && cache__streams[st].idx[i].suffix; i++) {
		const struct index_def *d = &cache__streams[st].idx[i];
		if (d->cols)
			snprintf(sql, sizeof(sql), "CREATE INDEX IF NOT EXISTS \"%s_%s_g%lld\" ON \"%s\"(%s)", cache__streams[st].name,
				 d->suffix, (long long)gen, table, d->cols);
		else
			snprintf(sql, sizeof(sql),
				 "CREATE INDEX IF NOT EXISTS \"%s_%s_g%lld\" ON \"%s\"(%s) WHERE %s IS NOT NULL",
				 cache__streams[st].name, d->suffix, (long long)gen, table, d->column, d->column);
		if ((rc = cache__exec(c, sql)))
			return rc;
	}
	return SCRM_OK;
}

static int migrate(cache *c)
{
	sqlite3_stmt *st = NULL;
	int rc, ver = 0;
	/* Current schema: nothing to do, and no write lock taken (a reader
	 * opening during a long chunk transaction must not wait for it). */
	if (cache__prep(c, c->db, &st, "PRAGMA user_version", 0) == SCRM_OK && sqlite3_step(st) == SQLITE_ROW)
		ver = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	st = NULL;
	if (ver == 2)
		return SCRM_OK;
	ver = 0;
	if ((rc = cache__exec(c, "BEGIN IMMEDIATE")))
		return rc;
	if ((rc = cache__prep(c, c->db, &st, "PRAGMA user_version", 0)))
		goto cleanup;
	if (sqlite3_step(st) == SQLITE_ROW)
		ver = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	if (ver > 2) {
		rc = err__set(SCRM_E_CORRUPT, "cache: schema version %d is newer than this agent (2)", ver);
		goto cleanup;
	}
	if (ver == 0) {
		if ((rc = cache__exec(c, "CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;"
				  "CREATE TABLE IF NOT EXISTS streams(name TEXT PRIMARY KEY,"
				  " cursor INTEGER NOT NULL DEFAULT 0, applied_ms INTEGER NOT NULL DEFAULT 0,"
				  " refused INTEGER NOT NULL DEFAULT 0, gen INTEGER NOT NULL DEFAULT 0,"
				  " snap_id TEXT, snap_version INTEGER, snap_chunks INTEGER, snap_next INTEGER,"
				  " snap_refused INTEGER, snap_started_ms INTEGER) WITHOUT ROWID;"
				  "CREATE TABLE IF NOT EXISTS delta_buf(stream TEXT NOT NULL, base INTEGER NOT NULL,"
				  " version INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY(stream, base, version))"
				  " WITHOUT ROWID;")))
			goto cleanup;
		for (int i = 0; i < ST_COUNT; i++) {
			char sql[200];
			if ((rc = cache__create_table(c, i, cache__streams[i].name, 0, 1)))
				goto cleanup;
			snprintf(sql, sizeof(sql), "INSERT OR IGNORE INTO streams(name) VALUES ('%s')", cache__streams[i].name);
			if ((rc = cache__exec(c, sql)))
				goto cleanup;
		}
		/* A new file has only ever freed pages with secure_delete=ON. */
		if ((rc = cache__exec(c, "PRAGMA user_version = 2;"
				  " INSERT OR REPLACE INTO meta(k, v) VALUES ('freelist_zeroed', '1')")))
			goto cleanup;
	} else if (ver == 1) {
		/* v2: the rules index that SQLite could use (struct index_def). */
		int64_t gen = 0;
		char sql[200];
		if ((rc = cache__prep(c, c->db, &st, "SELECT gen FROM streams WHERE name = 'rules'", 0)))
			goto cleanup;
		if (sqlite3_step(st) == SQLITE_ROW)
			gen = sqlite3_column_int64(st, 0);
		sqlite3_finalize(st);
		st = NULL;
		snprintf(sql, sizeof(sql), "DROP INDEX IF EXISTS \"rules_if_g%lld\"", (long long)gen);
		if ((rc = cache__exec(c, sql)) || (rc = cache__create_table(c, ST_RULES, "rules", gen, 1)) ||
		    (rc = cache__exec(c, "PRAGMA user_version = 2")))
			goto cleanup;
	}
	rc = cache__exec(c, "COMMIT");
cleanup:
	if (rc)
		cache__rollback(c);
	return rc;
}

int cache__meta_get(cache *c, const char *k, char *out, size_t cap)
{
	sqlite3_stmt *st = NULL;
	int rc = cache__prep(c, c->db, &st, "SELECT v FROM meta WHERE k = ?1", 0);
	out[0] = '\0';
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, k, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
		snprintf(out, cap, "%s", (const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return SCRM_OK;
}


/* Open cache.db and bring its schema up to date. *damaged: SQLite says the
 * file is not a database or is malformed (or quick_check fails). */
static int connect_cache(cache *c, const cache__options *opts, int *damaged)
{
	int bm = opts->busy_timeout_ms > 0 ? opts->busy_timeout_ms : 5000;
	sqlite3_stmt *st = NULL;
	int rc;
	*damaged = 0;
	rc = sqlite3_open_v2(c->db_path, &c->db,
			     SQLITE_OPEN_READWRITE | (opts->create ? SQLITE_OPEN_CREATE : 0) | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK)
		return cache__fail(c, rc, "open");
	sqlite3_busy_timeout(c->db, bm);
	c->busy_ms = bm;
	/* A new file gives its free pages back (apply.c, reclaim_until): the
	 * mode must be chosen before WAL is, as SQLite fixes it with the first
	 * page; on an existing file this only arms the next VACUUM. Its
	 * outcome is not checked: a damaged file is found (and moved) below. */
	if (opts->create)
		sqlite3_exec(c->db, "PRAGMA auto_vacuum=INCREMENTAL", NULL, NULL, NULL);
	/* Rebuildable data: NORMAL is enough (a power cut may lose the last
	 * deltas, never consistency; the cursor moves with the data). */
	if ((rc = db__set_wal(c->db, bm, "cache"))) {
		*damaged = rc == SCRM_E_CORRUPT;
		return rc;
	}
	/* secure_delete=ON: an erasure must not leave the member in freed
	 * pages (see the file comment). */
	if ((rc = cache__exec(c, "PRAGMA synchronous=NORMAL; PRAGMA secure_delete=ON;"
			  "PRAGMA cache_size=-16384; PRAGMA foreign_keys=OFF")))
		return rc;
	/* The schema must be readable before anything else is asked of it. */
	rc = sqlite3_prepare_v2(c->db, "SELECT count(*) FROM sqlite_master", -1, &st, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_ROW) {
		*damaged = quarantine__corrupt_rc(rc);
		return cache__fail(c, rc, "read schema");
	}
	if (opts->check) {
		char why[300];
		int q = quarantine__quick_check(c->db, why, sizeof(why));
		if (q == 1) {
			*damaged = 1;
			return err__set(SCRM_E_CORRUPT, "cache: %s: %s", c->db_path, why);
		}
		if (q)
			return cache__fail(c, q, "quick_check");
	}
	if ((rc = migrate(c)) && quarantine__corrupt_rc(sqlite3_errcode(c->db)))
		*damaged = 1;
	return rc;
}

/* Open cache.db; a damaged one is moved to quarantine/ by the daemon
 * (create) and a fresh, empty cache opened — every stream then asks for a
 * snapshot (cursor 0). A library reader gets SCRM_E_CORRUPT. */
int cache__open_db(cache *c, const char *dir, const cache__options *opts)
{
	for (int attempt = 0;; attempt++) {
		uint64_t dev0 = 0, ino0 = 0;
		int damaged, rc;
		char why[400];
		quarantine__lock(c->lock_fd, 1);
		int existed = platform__file_id(c->db_path, &dev0, &ino0) == 0;
		rc = connect_cache(c, opts, &damaged);
		if (rc == SCRM_OK) {
			platform__file_id(c->db_path, &c->dev, &c->ino);
			quarantine__lock(c->lock_fd, 0);
			return SCRM_OK;
		}
		damaged = damaged && existed;
		snprintf(why, sizeof(why), "%s", scrm_errmsg());
		if (damaged)
			quarantine__close_detached(c->db);
		else
			sqlite3_close_v2(c->db);
		c->db = NULL;
		quarantine__lock(c->lock_fd, 0);
		if (!damaged || attempt >= 2)
			return err__set(rc, "%s", why);
		if (!opts->create || c->lock_fd < 0)
			return err__set(SCRM_E_CORRUPT,
					"cache: %.1000s is damaged (%s); scrm-agent moves it to %.1000s/%s/ at its next start"
					" and fetches the cache again from central",
					c->db_path, why, dir, QUARANTINE_DIR);
		quarantine__lock(c->lock_fd, 2);
		if (quarantine__same_file(c->db_path, dev0, ino0) == 1) {
			char dest[4200];
			int e = quarantine__dest(dir, "cache", platform__wall_ms(), dest, sizeof(dest));
			if (e == 0)
				e = quarantine__move(c->db_path, dest, 0);
			if (e) {
				quarantine__lock(c->lock_fd, 0);
				return err__set(SCRM_E_IO, "cache: cannot move the damaged %.1000s to %.1000s/%s/: %s", c->db_path,
						dir, QUARANTINE_DIR, strerror(-e));
			}
			snprintf(c->quarantined, sizeof(c->quarantined), "%s", dest);
			snprintf(c->quarantine_detail, sizeof(c->quarantine_detail),
				 "%.300s could not be used (%.300s); moved to %.300s; every stream is fetched again from central",
				 c->db_path, why, dest);
		}
		quarantine__lock(c->lock_fd, 0);
	}
}

const char *cache__quarantined(const cache *c)
{
	return c && c->quarantined[0] ? c->quarantined : NULL;
}

const char *cache__quarantine_detail(const cache *c)
{
	return c && c->quarantined[0] ? c->quarantine_detail : NULL;
}

/* ---- the streams table ---------------------------------------------- */

int cache__read_stream(cache *c, int st, struct stream_row *r)
{
	sqlite3_stmt *q = NULL;
	int rc = cache__prep(c, c->db, &q,
		      "SELECT cursor, gen, refused, snap_id, snap_version, snap_chunks, snap_next, snap_refused"
		      " FROM streams WHERE name = ?1",
		      0);
	memset(r, 0, sizeof(*r));
	if (rc)
		return rc;
	sqlite3_bind_text(q, 1, cache__streams[st].name, -1, SQLITE_STATIC);
	if (sqlite3_step(q) == SQLITE_ROW) {
		r->cursor = sqlite3_column_int64(q, 0);
		r->gen = sqlite3_column_int64(q, 1);
		r->refused = sqlite3_column_int64(q, 2);
		if (sqlite3_column_type(q, 3) != SQLITE_NULL) {
			r->staging = 1;
			snprintf(r->snap_id, sizeof(r->snap_id), "%s", (const char *)sqlite3_column_text(q, 3));
			r->snap_version = sqlite3_column_int64(q, 4);
			r->snap_chunks = sqlite3_column_int64(q, 5);
			r->snap_next = sqlite3_column_int64(q, 6);
			r->snap_refused = sqlite3_column_int64(q, 7);
		}
	} else {
		rc = err__set(SCRM_E_CORRUPT, "cache: stream %s has no row", cache__streams[st].name);
	}
	sqlite3_finalize(q);
	return rc;
}

int cache__has_table(cache *c, const char *name)
{
	sqlite3_stmt *st = NULL;
	int yes = 0;
	if (sqlite3_prepare_v2(c->db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1", -1, &st, NULL) ==
	    SQLITE_OK) {
		sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
		yes = sqlite3_step(st) == SQLITE_ROW;
	}
	sqlite3_finalize(st);
	return yes;
}
