/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cache: the offline customer cache (see cache.h for what it owns).
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
 *                                 one table per stream, keyed by the record key
 *   <stream>__stage               a snapshot being built aside
 *
 * Snapshot swap: the last chunk's transaction builds the stage table's
 * indexes, drops the live table and renames the stage into its place, and
 * moves the cursor — readers (WAL) see the old complete view until that
 * commit. Index names carry a generation number (members_card_g7) because
 * SQLite keeps an index's name across a table rename.
 *
 * Erasure (a `forget` op, a snapshot's `forgotten`, cache__forget) must
 * reach the file's bytes, not only the view:
 *   - every write runs with secure_delete=ON (not FAST): a deleted cell is
 *     zeroed in its page (index cells too: card and phone), and so is every
 *     page freed to the freelist — overflow chains of replaced records, the
 *     view a swap replaced (drop_old), a dropped stage. A file written by an
 *     agent that used FAST has its freelist zeroed once, at its first
 *     erasure (meta "freelist_zeroed");
 *   - the member's rows go from the live tables, the stages being built,
 *     a replaced view not dropped yet (`<stream>__old`), and the buffered
 *     deltas (rewritten without the member's ops, sealed again);
 *   - then a TRUNCATE checkpoint: the WAL frames that held the old pages are
 *     copied over and the -wal cut to 0 bytes. It waits for readers (tills,
 *     guide tablets) to leave the WAL for at most the busy timeout; if they
 *     do not, the erasure stays pending (meta "erasure_pending", shown in
 *     cache__status) and is finished by the next erasure, the daemon's idle
 *     checkpoint or its next start. The -shm holds page numbers, no content.
 * Not reached: copies of a record that SQLite's b-tree balancing left in the
 * unused space of pages that are still live (a page rebuilt around cells
 * that moved to a sibling is not cleared); only rewriting the table (a
 * snapshot swap, VACUUM) removes those.
 */
#include "cache.h"

#include "crypto.h"
#include "dbcode.h"
#include "err.h"
#include "json.h"
#include "ledger.h"
#include "paths.h"
#include "platform.h"
#include "quarantine.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_SAFE_INT 9007199254740992LL /* 2^53 */
#define MAX_OPS 5000
#define MAX_RECORDS 100000
#define MAX_CHUNKS 1000000
#define MAX_BUFFERED 1000
#define MAX_KEY 64
#define DEFAULT_MAX_MESSAGE (4u * 1024 * 1024)
#define MAX_TIMEOUT_MS 600000
#define QR_MAX 512
#define QR_SKEW_MS 300000

/* ---- streams -------------------------------------------------------- */

/* An index of a stream table. A nullable column gets a partial index
 * (WHERE column IS NOT NULL: most members have no card); `cols` set means a
 * plain index on those columns instead. SQLite 3.40 never uses a partial
 * "IS NOT NULL" index on a NOT NULL column, so rules must not get one: every
 * rules look-up scanned the whole table. */
struct index_def {
	const char *suffix, *column, *cols;
};

typedef int (*bind_fn)(struct cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path);

struct stream_def {
	const char *name;
	const char *columns; /* after "key TEXT PRIMARY KEY," */
	const char *insert;  /* column list and placeholders */
	struct index_def idx[2];
	bind_fn bind;
};

static int bind_member(struct cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path);
static int bind_coupon(struct cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path);
static int bind_catalogue(struct cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path);
static int bind_inventory(struct cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path);
static int bind_script(struct cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path);
static int bind_reco(struct cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path);
static int bind_rule(struct cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path);

static const struct stream_def streams[ST_COUNT] = {
	[ST_MEMBERS] = {"members", "card TEXT, phone_hash BLOB, tracking INTEGER NOT NULL, doc TEXT NOT NULL, pii BLOB",
			"(key, card, phone_hash, tracking, doc, pii) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
			{{"card", "card"}, {"phone", "phone_hash"}}, bind_member},
	[ST_COUPONS] = {"coupons",
			"type TEXT NOT NULL, member_id TEXT, campaign TEXT, valid_to INTEGER, signed TEXT NOT NULL, sig BLOB NOT NULL",
			"(key, type, member_id, campaign, valid_to, signed, sig) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
			{{"member", "member_id"}, {NULL, NULL}}, bind_coupon},
	[ST_CATALOGUE] = {"catalogue", "category TEXT, doc TEXT NOT NULL", "(key, category, doc) VALUES (?1, ?2, ?3)",
			  {{"category", "category"}, {NULL, NULL}}, bind_catalogue},
	[ST_INVENTORY] = {"inventory", "qty INTEGER NOT NULL, as_of_ms INTEGER NOT NULL",
			  "(key, qty, as_of_ms) VALUES (?1, ?2, ?3)", {{NULL, NULL}, {NULL, NULL}}, bind_inventory},
	[ST_SCRIPTS] = {"scripts", "stage TEXT, tag TEXT, doc TEXT NOT NULL", "(key, stage, tag, doc) VALUES (?1, ?2, ?3, ?4)",
			{{NULL, NULL}, {NULL, NULL}}, bind_script},
	[ST_RECOS] = {"recos", "doc TEXT NOT NULL", "(key, doc) VALUES (?1, ?2)", {{NULL, NULL}, {NULL, NULL}}, bind_reco},
	[ST_RULES] = {"rules",
		      "if_sku TEXT NOT NULL, then_sku TEXT NOT NULL, support REAL NOT NULL, confidence REAL NOT NULL, lift REAL NOT NULL",
		      "(key, if_sku, then_sku, support, confidence, lift) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
		      {{"ifc", "if_sku", "if_sku, confidence DESC, then_sku"}, {NULL, NULL}}, bind_rule},
};

const char *cache__stream_name(int st)
{
	return st >= 0 && st < ST_COUNT ? streams[st].name : "?";
}

int cache__stream_parse(const char *name)
{
	for (int i = 0; name && i < ST_COUNT; i++)
		if (strcmp(name, streams[i].name) == 0)
			return i;
	return -1;
}

/* ---- handle --------------------------------------------------------- */

struct resync {
	int want;            /* a snapshot should be asked for */
	char reason[16];
	int64_t timeout_ms;  /* current wait between chunks; doubles on silence */
};

struct cache {
	sqlite3 *db;  /* cache.db */
	outbox__activity *act; /* outbox.db, read only: local purchase history; may be NULL */
	crypto__sealer *sealer;
	uint8_t tenant_key[CRYPTO_KEY_BYTES];
	int has_tenant_key;
	char tenant_key_err[200];
	crypto__verifier *central;
	char central_err[200];
	char tenant[65], phone_cc[8];
	size_t max_msg;
	int64_t snap_timeout_ms;
	struct resync rs[ST_COUNT];
	int inflight;          /* stream asked for and not yet swapped in, -1 none */
	int64_t inflight_ms;   /* monotonic: request sent or last chunk */
	sqlite3_stmt *q_card[4], *q_coupons;
	char refused_detail[240]; /* first record refused alone in the last apply */
	int replay_gap;           /* the last swap's buffered deltas did not follow */
	int buf_overflow[ST_COUNT]; /* deltas dropped while a snapshot was built */
	int64_t unhashed_phones;  /* members stored without a phone hash (no tenant.key) */
	int data_key_new;         /* data.key was missing: members dropped, to be fetched again */
	char db_path[4200];       /* cache.db */
	uint64_t dev, ino;        /* the file c->db opened */
	int lock_fd;              /* <dir>/cache.lock (quarantine.h), -1 if unavailable */
	char quarantined[4200];   /* where this open moved a damaged cache.db, "" if it did not */
	char quarantine_detail[1000];
	char policy[1024];        /* the daemon's guide/lifecycle settings (JSON), "" = defaults */
	sqlite3_stmt *q_profile;
	int busy_ms;              /* the connection's busy timeout */
	int erased;               /* this call forgot a member: scrub after commit */
	int replaying;            /* replay_buffered: delta_buf is being read */
	sqlite3_stmt *slots[CACHE_STMT_SLOTS]; /* cache__stmt */
	void *ext;                             /* cache__set_ext */
	void (*ext_free)(void *);
};

static void drop_old(cache *c, int st);
static int scrub(cache *c);
static int erasure_pending(cache *c);

static int fail(cache *c, int rc, const char *what)
{
	int code = db__code(rc);
	return err__set(code, "cache: %s: %s", what, c && c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
}

static int exec(cache *c, const char *sql)
{
	int rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);
	return rc == SQLITE_OK ? SCRM_OK : fail(c, rc, sql);
}

static void rollback(cache *c)
{
	if (!sqlite3_get_autocommit(c->db))
		sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
}

static int prep(cache *c, sqlite3 *db, sqlite3_stmt **st, const char *sql, int persistent)
{
	int rc = sqlite3_prepare_v3(db, sql, -1, persistent ? SQLITE_PREPARE_PERSISTENT : 0, st, NULL);
	if (rc != SQLITE_OK)
		return err__set(SCRM_E_IO, "cache: prepare: %s", sqlite3_errmsg(db));
	(void)c;
	return SCRM_OK;
}

static int key_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > MAX_KEY)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
		      ch == '_' || ch == '.' || ch == ':' || ch == '>'))
			return 0;
	}
	return 1;
}

static int create_table(cache *c, int st, const char *table, int64_t gen, int with_indexes)
{
	char sql[1024];
	int rc;
	snprintf(sql, sizeof(sql), "CREATE TABLE IF NOT EXISTS \"%s\"(key TEXT PRIMARY KEY, %s) WITHOUT ROWID", table,
		 streams[st].columns);
	if ((rc = exec(c, sql)))
		return rc;
	for (int i = 0; with_indexes && i < 2 && streams[st].idx[i].suffix; i++) {
		const struct index_def *d = &streams[st].idx[i];
		if (d->cols)
			snprintf(sql, sizeof(sql), "CREATE INDEX IF NOT EXISTS \"%s_%s_g%lld\" ON \"%s\"(%s)", streams[st].name,
				 d->suffix, (long long)gen, table, d->cols);
		else
			snprintf(sql, sizeof(sql),
				 "CREATE INDEX IF NOT EXISTS \"%s_%s_g%lld\" ON \"%s\"(%s) WHERE %s IS NOT NULL",
				 streams[st].name, d->suffix, (long long)gen, table, d->column, d->column);
		if ((rc = exec(c, sql)))
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
	if (prep(c, c->db, &st, "PRAGMA user_version", 0) == SCRM_OK && sqlite3_step(st) == SQLITE_ROW)
		ver = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	st = NULL;
	if (ver == 2)
		return SCRM_OK;
	ver = 0;
	if ((rc = exec(c, "BEGIN IMMEDIATE")))
		return rc;
	if ((rc = prep(c, c->db, &st, "PRAGMA user_version", 0)))
		goto cleanup;
	if (sqlite3_step(st) == SQLITE_ROW)
		ver = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	if (ver > 2) {
		rc = err__set(SCRM_E_CORRUPT, "cache: schema version %d is newer than this agent (2)", ver);
		goto cleanup;
	}
	if (ver == 0) {
		if ((rc = exec(c, "CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;"
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
			if ((rc = create_table(c, i, streams[i].name, 0, 1)))
				goto cleanup;
			snprintf(sql, sizeof(sql), "INSERT OR IGNORE INTO streams(name) VALUES ('%s')", streams[i].name);
			if ((rc = exec(c, sql)))
				goto cleanup;
		}
		/* A new file has only ever freed pages with secure_delete=ON. */
		if ((rc = exec(c, "PRAGMA user_version = 2;"
				  " INSERT OR REPLACE INTO meta(k, v) VALUES ('freelist_zeroed', '1')")))
			goto cleanup;
	} else if (ver == 1) {
		/* v2: the rules index that SQLite could use (struct index_def). */
		int64_t gen = 0;
		char sql[200];
		if ((rc = prep(c, c->db, &st, "SELECT gen FROM streams WHERE name = 'rules'", 0)))
			goto cleanup;
		if (sqlite3_step(st) == SQLITE_ROW)
			gen = sqlite3_column_int64(st, 0);
		sqlite3_finalize(st);
		st = NULL;
		snprintf(sql, sizeof(sql), "DROP INDEX IF EXISTS \"rules_if_g%lld\"", (long long)gen);
		if ((rc = exec(c, sql)) || (rc = create_table(c, ST_RULES, "rules", gen, 1)) ||
		    (rc = exec(c, "PRAGMA user_version = 2")))
			goto cleanup;
	}
	rc = exec(c, "COMMIT");
cleanup:
	if (rc)
		rollback(c);
	return rc;
}

static int meta_get(cache *c, const char *k, char *out, size_t cap)
{
	sqlite3_stmt *st = NULL;
	int rc = prep(c, c->db, &st, "SELECT v FROM meta WHERE k = ?1", 0);
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
		return fail(c, rc, "open");
	sqlite3_busy_timeout(c->db, bm);
	c->busy_ms = bm;
	/* Rebuildable data: NORMAL is enough (a power cut may lose the last
	 * deltas, never consistency; the cursor moves with the data). */
	if ((rc = db__set_wal(c->db, bm, "cache"))) {
		*damaged = rc == SCRM_E_CORRUPT;
		return rc;
	}
	/* secure_delete=ON: an erasure must not leave the member in freed
	 * pages (see the file comment). */
	if ((rc = exec(c, "PRAGMA synchronous=NORMAL; PRAGMA secure_delete=ON;"
			  "PRAGMA cache_size=-16384; PRAGMA foreign_keys=OFF")))
		return rc;
	/* The schema must be readable before anything else is asked of it. */
	rc = sqlite3_prepare_v2(c->db, "SELECT count(*) FROM sqlite_master", -1, &st, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_ROW) {
		*damaged = quarantine__corrupt_rc(rc);
		return fail(c, rc, "read schema");
	}
	if (opts->check) {
		char why[300];
		int q = quarantine__quick_check(c->db, why, sizeof(why));
		if (q == 1) {
			*damaged = 1;
			return err__set(SCRM_E_CORRUPT, "cache: %s: %s", c->db_path, why);
		}
		if (q)
			return fail(c, q, "quick_check");
	}
	if ((rc = migrate(c)) && quarantine__corrupt_rc(sqlite3_errcode(c->db)))
		*damaged = 1;
	return rc;
}

/* Open cache.db; a damaged one is moved to quarantine/ by the daemon
 * (create) and a fresh, empty cache opened — every stream then asks for a
 * snapshot (cursor 0). A library reader gets SCRM_E_CORRUPT. */
static int open_db(cache *c, const char *dir, const cache__options *opts)
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

int cache__open(const char *dir, const cache__options *opts, cache **out)
{
	cache__options dflt = {0};
	char path[4200], keys[4200], kp[4300], priv[4096];
	uint8_t key[CRYPTO_KEY_BYTES];
	cache *c;
	int rc, new_key = 0;

	if (!opts)
		opts = &dflt;
	*out = NULL;
	if (!(c = calloc(1, sizeof(*c))))
		return err__set(SCRM_E_NOMEM, "out of memory");
	c->inflight = -1;
	c->lock_fd = -1;
	c->max_msg = opts->max_message_bytes ? opts->max_message_bytes : DEFAULT_MAX_MESSAGE;
	c->snap_timeout_ms = opts->snapshot_timeout_ms > 0 ? opts->snapshot_timeout_ms : 30000;
	for (int i = 0; i < ST_COUNT; i++)
		c->rs[i].timeout_ms = c->snap_timeout_ms;
	/* cache.db and the keys live in the agent's private directory
	 * (paths.h): a POS user of the store's group must not be able to move
	 * them aside and plant a data key of their own. */
	if ((rc = paths__private(dir, NULL, priv, sizeof(priv))))
		goto fail;
	if (opts->keys_dir)
		snprintf(keys, sizeof(keys), "%s", opts->keys_dir);
	else
		snprintf(keys, sizeof(keys), "%s/%s", priv, PATHS_KEYS_DIR);

	snprintf(path, sizeof(path), "%s/%s", priv, CACHE_FILE);
	if (!opts->create && access(path, F_OK) != 0) {
		rc = err__set(SCRM_E_NOT_FOUND, "%s: no cache yet (scrm-agent creates it)", path);
		goto fail;
	}
	if (opts->create && (rc = paths__prepare(dir, opts->keys_dir, NULL, 0)))
		goto fail;
	/* The device data key first: without it nothing personal can be
	 * stored or read. */
	snprintf(kp, sizeof(kp), "%s/data.key", keys);
	if (opts->create) {
		char why[200];
		int kfd = platform__open_trusted_dir(keys, 1, why, sizeof(why));
		if (kfd < 0) {
			rc = err__set(SCRM_E_CONFIG, "%s: refused: %s", keys, why);
			goto fail;
		}
		close(kfd);
		rc = crypto__load_key(kp, key);
		if (rc == SCRM_E_NOT_FOUND) {
			/* A new data key cannot open what the old one sealed: if a
			 * cache exists, its members are dropped below and fetched
			 * again (a lost key, or a keys_dir that moved). */
			new_key = access(path, F_OK) == 0;
			rc = crypto__ensure_key(kp, key);
		}
	} else {
		rc = crypto__load_key(kp, key);
	}
	if (rc)
		goto fail;
	rc = crypto__sealer_new(key, &c->sealer);
	memset(key, 0, sizeof(key));
	if (rc)
		goto fail;
	snprintf(kp, sizeof(kp), "%s/tenant.key", keys);
	if (crypto__load_key(kp, c->tenant_key) == SCRM_OK)
		c->has_tenant_key = 1;
	else
		snprintf(c->tenant_key_err, sizeof(c->tenant_key_err), "%s", scrm_errmsg());
	snprintf(kp, sizeof(kp), "%s/central.pub", keys);
	if (crypto__verifier_load(kp, &c->central) != SCRM_OK)
		snprintf(c->central_err, sizeof(c->central_err), "%s", scrm_errmsg());

	snprintf(c->db_path, sizeof(c->db_path), "%s", path);
	/* Readers in a directory they cannot write skip the lock: only the
	 * daemon (create) moves a damaged cache, and it can. */
	if (opts->create || access(priv, W_OK) == 0)
		c->lock_fd = quarantine__lock_open(priv, "cache");
	if ((rc = open_db(c, priv, opts)))
		goto fail;
	if (new_key && (rc = exec(c, "BEGIN IMMEDIATE; DELETE FROM members; DELETE FROM delta_buf;"
				     " DROP TABLE IF EXISTS members__stage;"
				     " UPDATE streams SET cursor = 0, snap_id = NULL, snap_version = NULL, snap_chunks = NULL,"
				     " snap_next = NULL, snap_started_ms = NULL WHERE name = 'members';"
				     " DELETE FROM delta_buf; COMMIT"))) {
		rollback(c);
		goto fail;
	}
	c->data_key_new = new_key;
	if (opts->create) {
		drop_old(c, -1);
		/* An erasure a power cut or a reader interrupted. */
		if (erasure_pending(c))
			scrub(c);
	}
	meta_get(c, "tenant", c->tenant, sizeof(c->tenant));
	meta_get(c, "phone_cc", c->phone_cc, sizeof(c->phone_cc));
	meta_get(c, "policy", c->policy, sizeof(c->policy));

	/* The outbox's local purchase history (read only; absent is fine). */
	outbox__activity_open(dir, &c->act);

	/* Bootstrap and resume: what the resync schedule starts with. */
	{
		sqlite3_stmt *st = NULL;
		if ((rc = prep(c, c->db, &st, "SELECT name, cursor, snap_id FROM streams", 0)))
			goto fail;
		while (sqlite3_step(st) == SQLITE_ROW) {
			int i = cache__stream_parse((const char *)sqlite3_column_text(st, 0));
			if (i < 0)
				continue;
			if (sqlite3_column_type(st, 2) != SQLITE_NULL) {
				c->rs[i].want = 1;
				snprintf(c->rs[i].reason, sizeof(c->rs[i].reason), "resume");
			} else if (sqlite3_column_int64(st, 1) == 0) {
				c->rs[i].want = 1;
				snprintf(c->rs[i].reason, sizeof(c->rs[i].reason), "bootstrap");
			}
		}
		sqlite3_finalize(st);
	}
	*out = c;
	return SCRM_OK;
fail:
	cache__close(c);
	return rc;
}

void cache__close(cache *c)
{
	if (!c)
		return;
	for (int i = 0; i < 4; i++)
		sqlite3_finalize(c->q_card[i]);
	sqlite3_finalize(c->q_coupons);
	sqlite3_finalize(c->q_profile);
	for (int i = 0; i < CACHE_STMT_SLOTS; i++)
		sqlite3_finalize(c->slots[i]);
	if (c->ext_free)
		c->ext_free(c->ext);
	if (c->db) {
		/* Moved away under us (the daemon quarantined it): the -wal name
		 * now belongs to the fresh file. */
		if (quarantine__same_file(c->db_path, c->dev, c->ino) != 1)
			quarantine__close_detached(c->db);
		else
			sqlite3_close_v2(c->db);
	}
	outbox__activity_close(c->act);
	if (c->lock_fd >= 0)
		close(c->lock_fd);
	crypto__sealer_free(c->sealer);
	crypto__verifier_free(c->central);
	memset(c->tenant_key, 0, sizeof(c->tenant_key));
	free(c);
}

int cache__set_identity(cache *c, const char *tenant, const char *phone_cc)
{
	sqlite3_stmt *st = NULL;
	int rc = prep(c, c->db, &st, "INSERT OR REPLACE INTO meta(k, v) VALUES (?1, ?2)", 0);
	if (rc)
		return rc;
	const char *k[2] = {"tenant", "phone_cc"}, *v[2] = {tenant, phone_cc ? phone_cc : ""};
	for (int i = 0; i < 2 && rc == SCRM_OK; i++) {
		sqlite3_bind_text(st, 1, k[i], -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, v[i], -1, SQLITE_STATIC);
		int e = sqlite3_step(st);
		if (e != SQLITE_DONE)
			rc = fail(c, e, "write meta");
		sqlite3_reset(st);
	}
	sqlite3_finalize(st);
	snprintf(c->tenant, sizeof(c->tenant), "%s", tenant);
	snprintf(c->phone_cc, sizeof(c->phone_cc), "%s", phone_cc ? phone_cc : "");
	return rc;
}

int cache__set_policy(cache *c, const char *policy_json)
{
	sqlite3_stmt *st = NULL;
	int rc = prep(c, c->db, &st, "INSERT OR REPLACE INTO meta(k, v) VALUES ('policy', ?1)", 0);
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, policy_json, -1, SQLITE_STATIC);
	int e = sqlite3_step(st);
	sqlite3_finalize(st);
	if (e != SQLITE_DONE)
		return fail(c, e, "write meta");
	snprintf(c->policy, sizeof(c->policy), "%s", policy_json);
	return SCRM_OK;
}

const char *cache__policy(const cache *c)
{
	return c->policy;
}

sqlite3 *cache__db(cache *c)
{
	return c->db;
}

void *cache__ext(cache *c)
{
	return c->ext;
}

void cache__set_ext(cache *c, void *ext, void (*free_fn)(void *))
{
	if (c->ext_free)
		c->ext_free(c->ext);
	c->ext = ext;
	c->ext_free = free_fn;
}

sqlite3_stmt *cache__stmt(cache *c, int slot, const char *sql)
{
	if (slot < 0 || slot >= CACHE_STMT_SLOTS)
		return NULL;
	if (!c->slots[slot] && prep(c, c->db, &c->slots[slot], sql, 1) != SCRM_OK)
		return NULL;
	sqlite3_reset(c->slots[slot]);
	sqlite3_clear_bindings(c->slots[slot]);
	return c->slots[slot];
}

int cache__verify_signed(cache *c, const char *msg, size_t n, const void *sig, size_t sig_len)
{
	if (!c->central)
		return err__set(SCRM_E_CONFIG, "signature: cannot verify: %s", c->central_err);
	if (crypto__verify(c->central, msg, n, sig, sig_len) != SCRM_OK)
		return err__set(SCRM_E_CRYPTO, "signature: does not verify (tampered, or not signed by central)");
	return SCRM_OK;
}

/* An erasure committed whose bytes may still be in the files. */
static int erasure_pending(cache *c)
{
	char v[24];
	return meta_get(c, "erasure_pending", v, sizeof(v)) == SCRM_OK && v[0];
}

/* Pages freed by an agent that ran with secure_delete=FAST still hold what
 * was on them. Once per file: allocate the whole freelist to a table of
 * zeros (overflow pages come off the freelist before the file grows) and
 * drop it. Costs writing the freelist twice (and as much WAL), once. */
static int zero_freelist_once(cache *c)
{
	sqlite3_stmt *st = NULL;
	char v[8];
	int64_t free_pages = 0, page_size = 4096;
	int rc;
	if ((rc = meta_get(c, "freelist_zeroed", v, sizeof(v))) || strcmp(v, "1") == 0)
		return rc;
	if ((rc = exec(c, "BEGIN IMMEDIATE")))
		return rc;
	if ((rc = prep(c, c->db, &st, "SELECT freelist_count, page_size FROM pragma_freelist_count, pragma_page_size", 0)))
		goto cleanup;
	if (sqlite3_step(st) == SQLITE_ROW) {
		free_pages = sqlite3_column_int64(st, 0);
		page_size = sqlite3_column_int64(st, 1);
	}
	sqlite3_finalize(st);
	st = NULL;
	if (free_pages > 0) {
		/* 16 MiB a row: each overflow page carries page_size - 4 bytes.
		 * A row's first bytes stay in its leaf: a page more a row (the
		 * few pages this adds to the file end up zeroed too). */
		const int64_t per_row = (16 << 20) / (page_size - 4);
		free_pages += free_pages / per_row + 2;
		if ((rc = exec(c, "CREATE TABLE erasure_fill(b BLOB)")) ||
		    (rc = prep(c, c->db, &st, "INSERT INTO erasure_fill(b) VALUES (zeroblob(?1))", 0)))
			goto cleanup;
		for (int64_t left = free_pages; left > 0 && rc == SCRM_OK; left -= per_row) {
			sqlite3_reset(st);
			sqlite3_bind_int64(st, 1, (left < per_row ? left : per_row) * (page_size - 4));
			int e = sqlite3_step(st);
			if (e != SQLITE_DONE)
				rc = fail(c, e, "zero the freelist");
		}
		sqlite3_finalize(st);
		st = NULL;
		/* Dropped with secure_delete=ON: each page is written as it is
		 * freed (FAST may leave a page freed in the same transaction
		 * unwritten, and with it the old content). */
		if (rc || (rc = exec(c, "DROP TABLE erasure_fill")))
			goto cleanup;
	}
	rc = exec(c, "INSERT OR REPLACE INTO meta(k, v) VALUES ('freelist_zeroed', '1'); COMMIT");
cleanup:
	sqlite3_finalize(st);
	if (rc)
		rollback(c);
	return rc;
}

/* Finish an erasure (see the file comment): the freelist once, then the WAL
 * checkpointed into cache.db and cut to 0 bytes, waiting at most the busy
 * timeout for readers. SCRM_E_BUSY (reason set) if they did not let go: the
 * erasure stays pending. */
static int scrub(cache *c)
{
	int log = -1, done = -1, rc;
	if ((rc = zero_freelist_once(c)))
		return rc;
	rc = sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, &log, &done);
	if (rc == SQLITE_BUSY)
		return err__set(SCRM_E_BUSY,
				"cache: member removed, but readers kept cache.db-wal busy over %d ms: its old pages are"
				" still on disk (%d of %d frames checkpointed); scrubbed once readers let go",
				c->busy_ms, done, log);
	if (rc != SQLITE_OK)
		return fail(c, rc, "checkpoint after an erasure");
	/* Done. Clearing the mark writes a frame (no personal data); truncate
	 * again if nobody is reading, without waiting. */
	if ((rc = exec(c, "DELETE FROM meta WHERE k = 'erasure_pending'")))
		return rc;
	sqlite3_busy_timeout(c->db, 0);
	sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
	sqlite3_busy_timeout(c->db, c->busy_ms);
	return SCRM_OK;
}

void cache__checkpoint(cache *c)
{
	drop_old(c, -1);
	if (erasure_pending(c))
		scrub(c); /* still busy: copies what it can, like PASSIVE */
	else
		sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
}

/* ---- JSON field checks (every refusal names the field) --------------- */

static int is_int(const cJSON *it, int64_t lo, int64_t hi, int64_t *out)
{
	if (!cJSON_IsNumber(it))
		return 0;
	double d = it->valuedouble;
	if (!isfinite(d) || d != floor(d) || d < (double)lo || d > (double)hi)
		return 0;
	*out = (int64_t)d;
	return 1;
}

static int get_int(const cJSON *o, const char *name, int64_t lo, int64_t hi, int required, int64_t dflt,
		   const char *path, int64_t *out)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
	*out = dflt;
	if (!it || cJSON_IsNull(it)) {
		if (required)
			return err__set(SCRM_E_INVALID, "%s%s: required", path, name);
		return SCRM_OK;
	}
	if (!is_int(it, lo, hi, out))
		return err__set(SCRM_E_INVALID, "%s%s: must be an integer between %lld and %lld", path, name,
				(long long)lo, (long long)hi);
	return SCRM_OK;
}

static int get_num(const cJSON *o, const char *name, int required, const char *path, double *out)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
	*out = 0;
	if (!it || cJSON_IsNull(it)) {
		if (required)
			return err__set(SCRM_E_INVALID, "%s%s: required", path, name);
		return SCRM_OK;
	}
	if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || it->valuedouble < 0)
		return err__set(SCRM_E_INVALID, "%s%s: must be a number >= 0", path, name);
	*out = it->valuedouble;
	return SCRM_OK;
}

static int get_str(const cJSON *o, const char *name, size_t max, int required, const char *path, const char **out)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
	*out = NULL;
	if (!it || cJSON_IsNull(it)) {
		if (required)
			return err__set(SCRM_E_INVALID, "%s%s: required", path, name);
		return SCRM_OK;
	}
	if (!cJSON_IsString(it) || strlen(it->valuestring) > max || (required && !it->valuestring[0]))
		return err__set(SCRM_E_INVALID, "%s%s: must be a %sstring of at most %zu bytes", path, name,
				required ? "non-empty " : "", max);
	*out = it->valuestring;
	return SCRM_OK;
}

static int get_bool(const cJSON *o, const char *name, const char *path, int dflt, int *out)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
	*out = dflt;
	if (!it || cJSON_IsNull(it))
		return SCRM_OK;
	if (!cJSON_IsBool(it))
		return err__set(SCRM_E_INVALID, "%s%s: must be true or false", path, name);
	*out = cJSON_IsTrue(it);
	return SCRM_OK;
}

static int get_obj(const cJSON *o, const char *name, int required, const char *path, cJSON **out)
{
	cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
	*out = NULL;
	if (!it || cJSON_IsNull(it)) {
		if (required)
			return err__set(SCRM_E_INVALID, "%s%s: required", path, name);
		return SCRM_OK;
	}
	if (!cJSON_IsObject(it))
		return err__set(SCRM_E_INVALID, "%s%s: must be an object", path, name);
	*out = it;
	return SCRM_OK;
}

static int get_strs(const cJSON *o, const char *name, int max_items, size_t max_len, const char *path)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name), *e;
	int i = 0;
	if (!it || cJSON_IsNull(it))
		return SCRM_OK;
	if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) > max_items)
		return err__set(SCRM_E_INVALID, "%s%s: must be an array of at most %d strings", path, name, max_items);
	cJSON_ArrayForEach(e, it)
	{
		if (!cJSON_IsString(e) || !e->valuestring[0] || strlen(e->valuestring) > max_len)
			return err__set(SCRM_E_INVALID, "%s%s[%d]: must be a non-empty string of at most %zu bytes", path,
					name, i, max_len);
		i++;
	}
	return SCRM_OK;
}

static int data_of(cJSON *rec, const char *path, cJSON **data)
{
	*data = cJSON_GetObjectItemCaseSensitive(rec, "data");
	if (!cJSON_IsObject(*data))
		return err__set(SCRM_E_INVALID, "%sdata: required, an object", path);
	return SCRM_OK;
}

static int bind_doc(sqlite3_stmt *st, int col, const cJSON *data)
{
	char *doc = cJSON_PrintUnformatted(data);
	if (!doc)
		return err__set(SCRM_E_NOMEM, "out of memory");
	sqlite3_bind_text(st, col, doc, -1, free);
	return SCRM_OK;
}

static int key_matches(const char *key, const char *field, const char *value, const char *path)
{
	if (!value || strcmp(key, value) != 0)
		return err__set(SCRM_E_INVALID, "%sdata.%s: must equal the key \"%s\"", path, field, key);
	return SCRM_OK;
}

/* ---- per-stream records --------------------------------------------- */

static const char *const stages[] = {"new", "active", "sleeping", "churn_risk", "lost", NULL};

static int one_of(const char *v, const char *const *set)
{
	for (; *set; set++)
		if (strcmp(v, *set) == 0)
			return 1;
	return 0;
}

static int bind_member(cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path)
{
	cJSON *data, *o, *pii;
	const char *s;
	int64_t n;
	int rc, tracking = 0, b;
	char p2[96];

	if ((rc = data_of(rec, path, &data)))
		return rc;
	snprintf(p2, sizeof(p2), "%sdata.", path);
	if ((rc = get_str(data, "member_id", MAX_KEY, 1, p2, &s)) || (rc = key_matches(key, "member_id", s, path)))
		return rc;
	if ((rc = get_str(data, "card", MAX_KEY, 0, p2, &s)))
		return rc;
	if (s && *s)
		sqlite3_bind_text(st, 2, s, -1, SQLITE_TRANSIENT);
	if ((rc = get_str(data, "tier", 32, 0, p2, &s)) || (rc = get_str(data, "ltv_band", 32, 0, p2, &s)) ||
	    (rc = get_strs(data, "tags", 32, 64, p2)) || (rc = get_str(data, "stage", 32, 0, p2, &s)))
		return rc;
	if (s && !one_of(s, stages))
		return err__set(SCRM_E_INVALID, "%sstage: must be one of new active sleeping churn_risk lost", p2);
	if ((rc = get_obj(data, "rfm", 0, p2, &o)))
		return rc;
	if (o) {
		char p3[128];
		snprintf(p3, sizeof(p3), "%srfm.", p2);
		if ((rc = get_int(o, "r", 0, 5, 0, 0, p3, &n)) || (rc = get_int(o, "f", 0, 5, 0, 0, p3, &n)) ||
		    (rc = get_int(o, "m", 0, 5, 0, 0, p3, &n)) || (rc = get_str(o, "segment", 32, 0, p3, &s)))
			return rc;
	}
	if ((rc = get_obj(data, "consent", 0, p2, &o)))
		return rc;
	if (o) {
		char p3[128];
		snprintf(p3, sizeof(p3), "%sconsent.", p2);
		if ((rc = get_bool(o, "marketing", p3, 0, &b)) || (rc = get_bool(o, "tracking", p3, 0, &tracking)))
			return rc;
	}
	if ((rc = get_obj(data, "prefs", 0, p2, &o)) || (rc = get_obj(data, "stats", 0, p2, &o)))
		return rc;
	if (o) {
		char p3[128];
		snprintf(p3, sizeof(p3), "%sstats.", p2);
		if ((rc = get_int(o, "orders", 0, MAX_SAFE_INT, 0, 0, p3, &n)) ||
		    (rc = get_int(o, "spend", -MAX_SAFE_INT, MAX_SAFE_INT, 0, 0, p3, &n)) ||
		    (rc = get_int(o, "last_purchase_ms", 0, MAX_SAFE_INT, 0, 0, p3, &n)) ||
		    (rc = get_int(o, "first_purchase_ms", 0, MAX_SAFE_INT, 0, 0, p3, &n)) ||
		    (rc = get_int(o, "as_of_ms", 0, MAX_SAFE_INT, 0, 0, p3, &n)))
			return rc;
	}
	o = cJSON_GetObjectItemCaseSensitive(data, "recent");
	if (o && (!cJSON_IsArray(o) || cJSON_GetArraySize(o) > 20))
		return err__set(SCRM_E_INVALID, "%srecent: must be an array of at most 20 purchases", p2);
	sqlite3_bind_int(st, 4, tracking);

	/* Personal fields: sealed under the device key, phone only hashed. The
	 * plaintext phone goes nowhere else. */
	pii = cJSON_DetachItemFromObjectCaseSensitive(data, "pii");
	if (pii && !cJSON_IsNull(pii)) {
		char p3[128];
		const char *phone = NULL, *name = NULL, *bday = NULL;
		snprintf(p3, sizeof(p3), "%spii.", p2);
		if (!cJSON_IsObject(pii))
			rc = err__set(SCRM_E_INVALID, "%spii: must be an object", p2);
		else if (!(rc = get_str(pii, "phone", 15, 0, p3, &phone)) && !(rc = get_str(pii, "name", 200, 0, p3, &name)))
			rc = get_str(pii, "birthday", 10, 0, p3, &bday);
		if (!rc && phone) {
			size_t len = strlen(phone);
			int ok = len >= 6 && len <= 15;
			for (size_t i = 0; ok && i < len; i++)
				ok = phone[i] >= '0' && phone[i] <= '9';
			if (!ok)
				rc = err__set(SCRM_E_INVALID, "%sphone: must be E.164 digits without '+', 6..15 of them", p3);
			else if (!c->has_tenant_key)
				/* A misprovisioned device (no tenant.key) still keeps its
				 * members, sealed; only the phone look-up is missing, and
				 * the status says why (tenant_key false). */
				c->unhashed_phones++;
			else {
				uint8_t h[32];
				crypto__hmac_sha256(c->tenant_key, sizeof(c->tenant_key), phone, len, h);
				sqlite3_bind_blob(st, 3, h, sizeof(h), SQLITE_TRANSIENT);
			}
		}
		if (!rc) {
			char *text = cJSON_PrintUnformatted(pii);
			size_t tl = text ? strlen(text) : 0;
			uint8_t *sealed = text ? malloc(tl + CRYPTO_SEAL_OVERHEAD) : NULL;
			if (!sealed)
				rc = err__set(SCRM_E_NOMEM, "out of memory");
			else if (!(rc = crypto__seal(c->sealer, key, strlen(key), text, tl, sealed)))
				sqlite3_bind_blob(st, 6, sealed, (int)(tl + CRYPTO_SEAL_OVERHEAD), free), sealed = NULL;
			if (text) {
				memset(text, 0, tl);
				free(text);
			}
			free(sealed);
		}
	}
	cJSON_Delete(pii);
	if (rc)
		return rc;
	return bind_doc(st, 5, data);
}

static int bind_reco(cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path)
{
	cJSON *data, *items, *e;
	const char *s;
	int rc, i = 0;
	char p2[96], p3[128];
	double d;
	(void)c;
	if ((rc = data_of(rec, path, &data)))
		return rc;
	snprintf(p2, sizeof(p2), "%sdata.", path);
	if ((rc = get_str(data, "member_id", MAX_KEY, 1, p2, &s)) || (rc = key_matches(key, "member_id", s, path)))
		return rc;
	items = cJSON_GetObjectItemCaseSensitive(data, "items");
	if (!cJSON_IsArray(items) || cJSON_GetArraySize(items) > 50)
		return err__set(SCRM_E_INVALID, "%sitems: required, an array of at most 50", p2);
	cJSON_ArrayForEach(e, items)
	{
		snprintf(p3, sizeof(p3), "%sitems[%d].", p2, i++);
		if (!cJSON_IsObject(e)) /* p3 ends with '.' */
			return err__set(SCRM_E_INVALID, "%.*s: must be an object", (int)(strlen(p3) - 1), p3);
		if ((rc = get_str(e, "sku", MAX_KEY, 1, p3, &s)) || (rc = get_num(e, "score", 1, p3, &d)) ||
		    (rc = get_str(e, "reason", 32, 0, p3, &s)))
			return rc;
	}
	sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
	return bind_doc(st, 2, data);
}

static int bind_rule(cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path)
{
	cJSON *data;
	const char *a, *b;
	double sup, conf, lift;
	int rc;
	char p2[96], want[140];
	(void)c;
	if ((rc = data_of(rec, path, &data)))
		return rc;
	snprintf(p2, sizeof(p2), "%sdata.", path);
	if ((rc = get_str(data, "if", MAX_KEY, 1, p2, &a)) || (rc = get_str(data, "then", MAX_KEY, 1, p2, &b)) ||
	    (rc = get_num(data, "support", 1, p2, &sup)) || (rc = get_num(data, "confidence", 1, p2, &conf)) ||
	    (rc = get_num(data, "lift", 1, p2, &lift)))
		return rc;
	snprintf(want, sizeof(want), "%s>%s", a, b);
	if (strcmp(want, key) != 0)
		return err__set(SCRM_E_INVALID, "%skey: must be \"{if}>{then}\" (\"%s\")", path, want);
	if (conf > 1)
		return err__set(SCRM_E_INVALID, "%sconfidence: must be <= 1", p2);
	sqlite3_bind_text(st, 2, a, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 3, b, -1, SQLITE_TRANSIENT);
	sqlite3_bind_double(st, 4, sup);
	sqlite3_bind_double(st, 5, conf);
	sqlite3_bind_double(st, 6, lift);
	return SCRM_OK;
}

static int bind_catalogue(cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path)
{
	cJSON *data;
	const char *s;
	int64_t n;
	int rc;
	char p2[96];
	(void)c;
	if ((rc = data_of(rec, path, &data)))
		return rc;
	snprintf(p2, sizeof(p2), "%sdata.", path);
	if ((rc = get_str(data, "sku", MAX_KEY, 1, p2, &s)) || (rc = key_matches(key, "sku", s, path)) ||
	    (rc = get_str(data, "name", 200, 0, p2, &s)) || (rc = get_int(data, "price", 0, MAX_SAFE_INT, 0, 0, p2, &n)) ||
	    (rc = get_str(data, "currency", 3, 0, p2, &s)) || (rc = get_str(data, "category", 64, 0, p2, &s)))
		return rc;
	if (s)
		sqlite3_bind_text(st, 2, s, -1, SQLITE_TRANSIENT);
	return bind_doc(st, 3, data);
}

static int bind_inventory(cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path)
{
	cJSON *data;
	const char *s;
	int64_t qty, asof;
	int rc;
	char p2[96];
	(void)c;
	if ((rc = data_of(rec, path, &data)))
		return rc;
	snprintf(p2, sizeof(p2), "%sdata.", path);
	if ((rc = get_str(data, "sku", MAX_KEY, 1, p2, &s)) || (rc = key_matches(key, "sku", s, path)) ||
	    (rc = get_int(data, "qty", -MAX_SAFE_INT, MAX_SAFE_INT, 1, 0, p2, &qty)) ||
	    (rc = get_int(data, "as_of_ms", 0, MAX_SAFE_INT, 1, 0, p2, &asof)))
		return rc;
	sqlite3_bind_int64(st, 2, qty);
	sqlite3_bind_int64(st, 3, asof);
	return SCRM_OK;
}

static int bind_script(cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path)
{
	cJSON *data;
	const char *s, *stage, *tag;
	int rc;
	char p2[96];
	(void)c;
	if ((rc = data_of(rec, path, &data)))
		return rc;
	snprintf(p2, sizeof(p2), "%sdata.", path);
	if ((rc = get_str(data, "id", MAX_KEY, 1, p2, &s)) || (rc = key_matches(key, "id", s, path)) ||
	    (rc = get_str(data, "stage", 32, 0, p2, &stage)) || (rc = get_str(data, "tag", 64, 0, p2, &tag)) ||
	    (rc = get_str(data, "title", 200, 0, p2, &s)) || (rc = get_str(data, "text", 4000, 1, p2, &s)))
		return rc;
	if (!!stage == !!tag)
		return err__set(SCRM_E_INVALID, "%sstage/tag: exactly one of the two is required", p2);
	if (stage && !one_of(stage, stages))
		return err__set(SCRM_E_INVALID, "%sstage: must be one of new active sleeping churn_risk lost", p2);
	if (stage)
		sqlite3_bind_text(st, 2, stage, -1, SQLITE_TRANSIENT);
	if (tag)
		sqlite3_bind_text(st, 3, tag, -1, SQLITE_TRANSIENT);
	return bind_doc(st, 4, data);
}

/* Coupons: verify central's signature over the exact bytes received, then
 * parse those bytes. SCRM_E_CRYPTO = this record refused alone. */
static int bind_coupon(cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path)
{
	const cJSON *signed_it = cJSON_GetObjectItemCaseSensitive(rec, "signed");
	const cJSON *sig_it = cJSON_GetObjectItemCaseSensitive(rec, "sig");
	uint8_t sig[160];
	long sig_len;
	cJSON *p = NULL;
	const char *type, *id, *s;
	int64_t from, to, n;
	int rc;
	char want[80], p2[96];

	if (cJSON_GetObjectItemCaseSensitive(rec, "data"))
		return err__set(SCRM_E_CRYPTO, "%s: coupon sent unsigned (\"data\" instead of \"signed\" + \"sig\")", key);
	if (!cJSON_IsString(signed_it) || !signed_it->valuestring[0] || strlen(signed_it->valuestring) > 16384)
		return err__set(SCRM_E_CRYPTO, "%s: signed: missing or not a string of at most 16384 bytes", key);
	if (!cJSON_IsString(sig_it) ||
	    (sig_len = crypto__b64_decode(sig_it->valuestring, strlen(sig_it->valuestring), 0, sig, sizeof(sig))) <= 0)
		return err__set(SCRM_E_CRYPTO, "%s: sig: missing or not base64", key);
	if (!c->central)
		return err__set(SCRM_E_CRYPTO, "%s: cannot verify: %s", key, c->central_err);
	if (crypto__verify(c->central, signed_it->valuestring, strlen(signed_it->valuestring), sig, (size_t)sig_len))
		return err__set(SCRM_E_CRYPTO, "%s: signature does not verify (tampered or not signed by central)", key);
	/* The signature vouches for bytes; the reading of them must be the
	 * one central meant, so a repeated key is refused (json.h). */
	snprintf(p2, sizeof(p2), "%ssigned", path);
	if ((rc = json__parse(signed_it->valuestring, strlen(signed_it->valuestring), p2, &p)) != SCRM_OK)
		goto refuse;
	if (!cJSON_IsObject(p)) {
		rc = err__set(SCRM_E_CRYPTO, "%s: signed: not a JSON object", key);
		goto refuse;
	}
	snprintf(p2, sizeof(p2), "%ssigned.", path);
	if ((rc = get_str(p, "type", 16, 1, p2, &type)) || (rc = get_str(p, "id", 48, 1, p2, &id)))
		goto refuse;
	if (strcmp(type, "campaign") != 0 && strcmp(type, "coupon") != 0) {
		rc = err__set(SCRM_E_INVALID, "%stype: must be campaign or coupon", p2);
		goto refuse;
	}
	snprintf(want, sizeof(want), "%s:%s", type, id);
	if (strcmp(want, key) != 0) {
		rc = err__set(SCRM_E_CRYPTO, "%s: signed record is %s (a valid signature moved to another key?)", key, want);
		goto refuse;
	}
	if ((rc = get_int(p, "valid_from", 0, MAX_SAFE_INT, 0, 0, p2, &from)) ||
	    (rc = get_int(p, "valid_to", 0, MAX_SAFE_INT, 0, 0, p2, &to)) ||
	    (rc = get_int(p, "min_spend", 0, MAX_SAFE_INT, 0, 0, p2, &n)) ||
	    (rc = get_int(p, "per_member_limit", 0, 1000000, 0, 0, p2, &n)))
		goto refuse;
	sqlite3_bind_text(st, 2, type, -1, SQLITE_TRANSIENT);
	if (strcmp(type, "coupon") == 0) {
		if ((rc = get_str(p, "member_id", MAX_KEY, 0, p2, &s)))
			goto refuse;
		if (s)
			sqlite3_bind_text(st, 3, s, -1, SQLITE_TRANSIENT);
		if ((rc = get_str(p, "campaign", 48, 0, p2, &s)))
			goto refuse;
		if (s)
			sqlite3_bind_text(st, 4, s, -1, SQLITE_TRANSIENT);
	}
	if (to)
		sqlite3_bind_int64(st, 5, to);
	sqlite3_bind_text(st, 6, signed_it->valuestring, -1, SQLITE_TRANSIENT);
	sqlite3_bind_blob(st, 7, sig, (int)sig_len, SQLITE_TRANSIENT);
	goto cleanup;
refuse:
	/* Signed by central but unusable: this coupon is refused alone, like a
	 * bad signature, so one bad record cannot stall the stream. */
	if (rc == SCRM_E_INVALID) {
		char detail[300];
		snprintf(detail, sizeof(detail), "%s", scrm_errmsg());
		rc = err__set(SCRM_E_CRYPTO, "%s: %s", key, detail);
	}
cleanup:
	cJSON_Delete(p);
	return rc;
}

/* ---- applying ------------------------------------------------------- */

struct stream_row {
	int64_t cursor, gen, refused;
	int staging;
	char snap_id[65];
	int64_t snap_version, snap_chunks, snap_next, snap_refused;
};

static int read_stream(cache *c, int st, struct stream_row *r)
{
	sqlite3_stmt *q = NULL;
	int rc = prep(c, c->db, &q,
		      "SELECT cursor, gen, refused, snap_id, snap_version, snap_chunks, snap_next, snap_refused"
		      " FROM streams WHERE name = ?1",
		      0);
	memset(r, 0, sizeof(*r));
	if (rc)
		return rc;
	sqlite3_bind_text(q, 1, streams[st].name, -1, SQLITE_STATIC);
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
		rc = err__set(SCRM_E_CORRUPT, "cache: stream %s has no row", streams[st].name);
	}
	sqlite3_finalize(q);
	return rc;
}

static int has_table(cache *c, const char *name)
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

/* Remove a member from the live tables (and the stages being built: a
 * recos or coupons snapshot made before the erasure must not bring the
 * member's data back when it is swapped in; and a replaced view that
 * drop_old has not emptied yet). */
static int forget_rows_(cache *c, const char *member_id, int staging_members);
static int forget_buffered(cache *c, const char *member_id);

/* Inside the caller's transaction: the rows (secure_delete is on for the
 * connection, see the file comment), the buffered deltas, and the mark that
 * the bytes still have to be scrubbed (cleared by scrub()). */
static int forget_rows(cache *c, const char *member_id, int staging_members)
{
	sqlite3_stmt *st = NULL;
	int rc = forget_rows_(c, member_id, staging_members);
	if (rc == SCRM_OK && !c->replaying)
		rc = forget_buffered(c, member_id);
	if (rc == SCRM_OK && (rc = prep(c, c->db, &st, "INSERT OR REPLACE INTO meta(k, v) VALUES ('erasure_pending', ?1)",
					0)) == SCRM_OK) {
		char ms[24];
		snprintf(ms, sizeof(ms), "%lld", (long long)platform__wall_ms());
		sqlite3_bind_text(st, 1, ms, -1, SQLITE_TRANSIENT);
		int e = sqlite3_step(st);
		sqlite3_finalize(st);
		rc = e == SQLITE_DONE ? SCRM_OK : fail(c, e, "mark erasure");
	}
	if (rc == SCRM_OK)
		c->erased = 1;
	return rc;
}

static int forget_rows_(cache *c, const char *member_id, int staging_members)
{
	static const struct {
		const char *table, *column;
	} holders[] = {{"members", "key"}, {"recos", "key"}, {"coupons", "member_id"}};
	static const char *const views[] = {"", "__stage", "__old"};
	for (size_t v = 0; v < sizeof(views) / sizeof(views[0]); v++) {
		for (size_t i = 0; i < sizeof(holders) / sizeof(holders[0]); i++) {
			sqlite3_stmt *st = NULL;
			char table[64], sql[200];
			snprintf(table, sizeof(table), "%s%s", holders[i].table, views[v]);
			if (v == 1 && i == 0 && !staging_members)
				continue;
			if (v > 0 && !has_table(c, table))
				continue;
			snprintf(sql, sizeof(sql), "DELETE FROM \"%s\" WHERE %s = ?1", table, holders[i].column);
			int rc = prep(c, c->db, &st, sql, 0);
			if (rc)
				return rc;
			sqlite3_bind_text(st, 1, member_id, -1, SQLITE_STATIC);
			rc = sqlite3_step(st);
			sqlite3_finalize(st);
			if (rc != SQLITE_DONE)
				return fail(c, rc, "forget member");
		}
	}
	return SCRM_OK;
}

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
		snprintf(sql, sizeof(sql), "INSERT OR REPLACE INTO \"%s\"%s", table, streams[st].insert);
		if ((rc = prep(c, c->db, ins, sql, 0)))
			return rc;
	}
	sqlite3_reset(*ins);
	sqlite3_clear_bindings(*ins);
	sqlite3_bind_text(*ins, 1, key, -1, SQLITE_TRANSIENT);
	rc = streams[st].bind(c, key, rec, *ins, path);
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
		return fail(c, rc, "write record");
	return SCRM_OK;
}

static int delete_record(cache *c, const char *table, const char *key)
{
	sqlite3_stmt *st = NULL;
	char sql[200];
	snprintf(sql, sizeof(sql), "DELETE FROM \"%s\" WHERE key = ?1", table);
	int rc = prep(c, c->db, &st, sql, 0);
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? SCRM_OK : fail(c, rc, "delete record");
}

static int rec_key(const cJSON *rec, const char *path, const char **key)
{
	const cJSON *k = cJSON_GetObjectItemCaseSensitive(rec, "key");
	if (!cJSON_IsObject(rec)) /* path ends with '.' */
		return err__set(SCRM_E_INVALID, "%.*s: must be an object", (int)(strlen(path) - 1), path);
	if (!cJSON_IsString(k) || !key_ok(k->valuestring))
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
			rc = put_record(c, st, streams[st].name, &ins, key, op, path, refused);
		} else if (strcmp(kind, "delete") == 0) {
			rc = delete_record(c, streams[st].name, key);
		} else if (strcmp(kind, "forget") == 0) {
			if (st != ST_MEMBERS) {
				rc = err__set(SCRM_E_INVALID, "%sop: forget is only valid on members", path);
				break;
			}
			if (fn && (rc = fn(ctx, key)))
				break;
			rc = forget_rows(c, key, staging_members);
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
	int rc = prep(c, c->db, &q,
		      "UPDATE streams SET cursor = ?2, applied_ms = ?3, refused = refused + ?4 WHERE name = ?1", 0);
	if (rc)
		return rc;
	sqlite3_bind_text(q, 1, streams[st].name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 2, cursor);
	sqlite3_bind_int64(q, 3, platform__wall_ms());
	sqlite3_bind_int64(q, 4, add_refused);
	rc = sqlite3_step(q);
	sqlite3_finalize(q);
	return rc == SQLITE_DONE ? SCRM_OK : fail(c, rc, "advance cursor");
}

static void want(cache *c, int st, const char *reason)
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
			want(c, i, reason);
}

int cache__purge(cache *c, int st)
{
	char sql[600];
	int rc;
	if (st >= ST_COUNT)
		return err__set(SCRM_E_INVALID, "stream: unknown");
	if ((rc = exec(c, "BEGIN IMMEDIATE")))
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
			 streams[i].name, streams[i].name, streams[i].name, streams[i].name);
		if ((rc = exec(c, sql))) {
			rollback(c);
			return rc;
		}
	}
	if ((rc = exec(c, "COMMIT"))) {
		rollback(c);
		return rc;
	}
	for (int i = 0; i < ST_COUNT; i++)
		if (st < 0 || st == i) {
			c->rs[i].want = 0; /* a purge outranks any earlier reason */
			want(c, i, "purged");
		}
	return SCRM_OK;
}

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
	if ((rc = get_int(m->root, "v", 0, 1000, 1, 0, "", &v)))
		return rc;
	if (v != 1)
		return err__set(SCRM_E_INVALID, "v: version %lld not supported (1)", (long long)v);
	if ((rc = get_str(m->root, "stream", 32, 1, "", &s)))
		return rc;
	if ((m->st = cache__stream_parse(s)) < 0)
		return err__set(SCRM_E_INVALID, "stream: unknown stream \"%.32s\"", s);
	if (topic_stream && strcmp(topic_stream, s) != 0)
		return err__set(SCRM_E_INVALID, "stream: \"%s\" sent on the topic of \"%.32s\"", s, topic_stream);
	if ((rc = get_str(m->root, "type", 16, 1, "", &s)))
		return rc;
	if (strcmp(s, "delta") == 0) {
		if ((rc = get_int(m->root, "base", 0, MAX_SAFE_INT, 1, 0, "", &m->base)) ||
		    (rc = get_int(m->root, "version", 1, MAX_SAFE_INT, 1, 0, "", &m->version)))
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
	if ((rc = get_str(m->root, "snapshot", 64, 1, "", &m->snapshot)) ||
	    (rc = get_int(m->root, "version", 1, MAX_SAFE_INT, 1, 0, "", &m->version)) ||
	    (rc = get_int(m->root, "chunks", 1, MAX_CHUNKS, 1, 0, "", &m->chunks)) ||
	    (rc = get_int(m->root, "chunk", 0, m->chunks - 1, 1, 0, "", &m->chunk)))
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
			if (!cJSON_IsString(e) || !key_ok(e->valuestring))
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
	int rc = prep(c, c->db, &q, "SELECT count(*) FROM delta_buf WHERE stream = ?1", 0);
	int64_t n = 0;
	if (rc)
		return rc;
	sqlite3_bind_text(q, 1, streams[m->st].name, -1, SQLITE_STATIC);
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
	if ((rc = crypto__seal(c->sealer, streams[m->st].name, strlen(streams[m->st].name), payload, len, sealed))) {
		free(sealed);
		return rc;
	}
	if ((rc = prep(c, c->db, &q, "INSERT OR IGNORE INTO delta_buf(stream, base, version, body) VALUES (?1, ?2, ?3, ?4)",
		       0))) {
		free(sealed);
		return rc;
	}
	sqlite3_bind_text(q, 1, streams[m->st].name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 2, m->base);
	sqlite3_bind_int64(q, 3, m->version);
	sqlite3_bind_blob(q, 4, sealed, (int)(len + CRYPTO_SEAL_OVERHEAD), free);
	rc = sqlite3_step(q);
	sqlite3_finalize(q);
	return rc == SQLITE_DONE ? SCRM_OK : fail(c, rc, "buffer delta");
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
		    !key_ok(k->valuestring))
			continue; /* a bad op ends the replay as a gap */
		if ((fn && (rc = fn(ctx, k->valuestring))) || (rc = forget_rows(c, k->valuestring, 1)))
			return rc;
	}
	return SCRM_OK;
}

static int apply_delta(cache *c, const struct msg *m, const char *payload, size_t len, cache__forget_fn fn, void *ctx,
		       cache__outcome *out)
{
	struct stream_row r;
	int rc;
	if ((rc = exec(c, "BEGIN IMMEDIATE")))
		return rc;
	if ((rc = read_stream(c, m->st, &r)))
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
		want(c, m->st, "gap");
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
		rc = exec(c, "COMMIT");
	if (rc)
		rollback(c);
	return rc;
}

static int set_snap(cache *c, int st, const char *id, int64_t version, int64_t chunks, int64_t next, int64_t refused)
{
	sqlite3_stmt *q = NULL;
	int rc = prep(c, c->db, &q,
		      "UPDATE streams SET snap_id = ?2, snap_version = ?3, snap_chunks = ?4, snap_next = ?5,"
		      " snap_refused = ?6,"
		      " snap_started_ms = CASE WHEN ?2 IS NULL THEN NULL ELSE coalesce(snap_started_ms, ?7) END"
		      " WHERE name = ?1",
		      0);
	if (rc)
		return rc;
	sqlite3_bind_text(q, 1, streams[st].name, -1, SQLITE_STATIC);
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
	return rc == SQLITE_DONE ? SCRM_OK : fail(c, rc, "record snapshot progress");
}

/* A buffered delta (sealed by buffer_delta) parsed, or NULL. */
static cJSON *open_buffered(cache *c, int st, sqlite3_stmt *q, int col)
{
	const uint8_t *blob = sqlite3_column_blob(q, col);
	int len = sqlite3_column_bytes(q, col);
	cJSON *root = NULL;
	uint8_t *pt;
	if (!blob || len <= CRYPTO_SEAL_OVERHEAD || !(pt = malloc((size_t)len)))
		return NULL;
	if (crypto__open(c->sealer, streams[st].name, strlen(streams[st].name), blob, (size_t)len, pt) == SCRM_OK)
		root = cJSON_ParseWithLength((const char *)pt, (size_t)len - CRYPTO_SEAL_OVERHEAD);
	memset(pt, 0, (size_t)len);
	free(pt);
	return root;
}

/* Does this buffered op carry the member (its key, or a coupon it holds)? */
static int op_names_member(const cJSON *op, int st, const char *member_id)
{
	const cJSON *k = cJSON_GetObjectItemCaseSensitive(op, "key");
	if (st != ST_COUPONS)
		return cJSON_IsString(k) && strcmp(k->valuestring, member_id) == 0;
	const cJSON *sig = cJSON_GetObjectItemCaseSensitive(op, "signed");
	if (!cJSON_IsString(sig) || !strstr(sig->valuestring, member_id))
		return 0;
	cJSON *rec = cJSON_Parse(sig->valuestring);
	const cJSON *m = cJSON_GetObjectItemCaseSensitive(rec, "member_id");
	int yes = cJSON_IsString(m) && strcmp(m->valuestring, member_id) == 0;
	cJSON_Delete(rec);
	return yes;
}

static int reseal_buffered(cache *c, sqlite3_stmt *up, int st, int64_t base, int64_t version, const cJSON *root)
{
	char *text = cJSON_PrintUnformatted(root);
	if (!text)
		return err__set(SCRM_E_NOMEM, "out of memory");
	size_t n = strlen(text);
	uint8_t *sealed = malloc(n + CRYPTO_SEAL_OVERHEAD);
	int rc = sealed ? crypto__seal(c->sealer, streams[st].name, strlen(streams[st].name), text, n, sealed)
			: err__set(SCRM_E_NOMEM, "out of memory");
	memset(text, 0, n);
	free(text);
	if (rc) {
		free(sealed);
		return rc;
	}
	sqlite3_reset(up);
	sqlite3_bind_text(up, 1, streams[st].name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(up, 2, base);
	sqlite3_bind_int64(up, 3, version);
	sqlite3_bind_blob(up, 4, sealed, (int)(n + CRYPTO_SEAL_OVERHEAD), free);
	rc = sqlite3_step(up);
	sqlite3_reset(up);
	return rc == SQLITE_DONE ? SCRM_OK : fail(c, rc, "rewrite a buffered delta");
}

/* Deltas kept during a build may hold the member's record (sealed, but the
 * device can open them, and the replay would bring the member back): each
 * is rewritten without the ops that name the member and sealed again; the
 * old blob is overwritten in place (secure_delete). One row at a time, so
 * the table is never written under an open scan of it. */
static int forget_buffered(cache *c, const char *member_id)
{
	static const int holders[] = {ST_MEMBERS, ST_RECOS, ST_COUPONS};
	sqlite3_stmt *q = NULL, *up = NULL;
	int rc = prep(c, c->db, &q,
		      "SELECT base, version, body FROM delta_buf WHERE stream = ?1 AND (base, version) > (?2, ?3)"
		      " ORDER BY base, version LIMIT 1",
		      0);
	if (rc == SCRM_OK)
		rc = prep(c, c->db, &up, "UPDATE delta_buf SET body = ?4 WHERE stream = ?1 AND base = ?2 AND version = ?3",
			  0);
	for (size_t h = 0; rc == SCRM_OK && h < sizeof(holders) / sizeof(holders[0]); h++) {
		int st = holders[h];
		int64_t base = -1, version = -1;
		for (;;) {
			sqlite3_reset(q);
			sqlite3_bind_text(q, 1, streams[st].name, -1, SQLITE_STATIC);
			sqlite3_bind_int64(q, 2, base);
			sqlite3_bind_int64(q, 3, version);
			int e = sqlite3_step(q);
			if (e != SQLITE_ROW) {
				if (e != SQLITE_DONE)
					rc = fail(c, e, "read buffered deltas");
				break;
			}
			base = sqlite3_column_int64(q, 0);
			version = sqlite3_column_int64(q, 1);
			/* Unreadable: nobody can open it, and the replay ends there. */
			cJSON *root = open_buffered(c, st, q, 2);
			sqlite3_reset(q);
			cJSON *ops = cJSON_GetObjectItemCaseSensitive(root, "ops");
			int dropped = 0;
			for (cJSON *op = cJSON_IsArray(ops) ? ops->child : NULL, *next; op; op = next) {
				next = op->next;
				if (op_names_member(op, st, member_id)) {
					cJSON_Delete(cJSON_DetachItemViaPointer(ops, op));
					dropped++;
				}
			}
			if (dropped)
				rc = reseal_buffered(c, up, st, base, version, root);
			cJSON_Delete(root);
			if (rc)
				break;
		}
	}
	sqlite3_finalize(q);
	sqlite3_finalize(up);
	return rc;
}

/* Deltas that arrived during the build, in order; stops at a gap. */
static int replay_buffered(cache *c, int st, int64_t *cursor, cache__forget_fn fn, void *ctx)
{
	sqlite3_stmt *q = NULL;
	int rc = prep(c, c->db, &q, "SELECT base, version, body FROM delta_buf WHERE stream = ?1 ORDER BY base, version", 0);
	int gap = 0;
	if (rc)
		return rc;
	sqlite3_bind_text(q, 1, streams[st].name, -1, SQLITE_STATIC);
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
		cJSON *root = open_buffered(c, st, q, 2);
		int64_t n = 0, refused = 0;
		/* Each in a savepoint: one that cannot apply (never checked when
		 * it was kept) ends the replay as a gap instead of failing the
		 * swap over and over. */
		if ((rc = exec(c, "SAVEPOINT replay"))) {
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
		if ((rc = exec(c, "RELEASE replay")))
			break;
		*cursor = version;
	}
	c->replaying = 0;
	sqlite3_finalize(q);
	if (rc)
		return rc;
	if (gap)
		c->replay_gap = 1; /* asked for once the swap has committed */
	if ((rc = prep(c, c->db, &q, "DELETE FROM delta_buf WHERE stream = ?1", 0)))
		return rc;
	sqlite3_bind_text(q, 1, streams[st].name, -1, SQLITE_STATIC);
	rc = sqlite3_step(q);
	sqlite3_finalize(q);
	return rc == SQLITE_DONE ? SCRM_OK : fail(c, rc, "clear buffered deltas");
}

static int swap_in(cache *c, int st, const struct stream_row *r, cache__forget_fn fn, void *ctx, int64_t *cursor)
{
	char sql[400], stage[64];
	int rc;
	snprintf(stage, sizeof(stage), "%s__stage", streams[st].name);
	if ((rc = create_table(c, st, stage, r->gen + 1, 1)))
		return rc;
	/* The old table is only renamed here; it is dropped after the commit,
	 * in a transaction of its own (see drop_old): dropping 500,000 rows
	 * inside the swap made it last seconds and held ~400 MB of rollback. */
	snprintf(sql, sizeof(sql),
		 "DROP TABLE IF EXISTS \"%s__old\"; ALTER TABLE \"%s\" RENAME TO \"%s__old\";"
		 " ALTER TABLE \"%s\" RENAME TO \"%s\";",
		 streams[st].name, streams[st].name, streams[st].name, stage, streams[st].name);
	if ((rc = exec(c, sql)))
		return rc;
	if ((rc = set_snap(c, st, NULL, 0, 0, 0, 0)))
		return rc;
	{
		sqlite3_stmt *q = NULL;
		if ((rc = prep(c, c->db, &q,
			       "UPDATE streams SET cursor = ?2, gen = ?3, refused = ?4, applied_ms = ?5 WHERE name = ?1", 0)))
			return rc;
		sqlite3_bind_text(q, 1, streams[st].name, -1, SQLITE_STATIC);
		sqlite3_bind_int64(q, 2, r->snap_version);
		sqlite3_bind_int64(q, 3, r->gen + 1);
		sqlite3_bind_int64(q, 4, r->snap_refused);
		sqlite3_bind_int64(q, 5, platform__wall_ms());
		rc = sqlite3_step(q);
		sqlite3_finalize(q);
		if (rc != SQLITE_DONE)
			return fail(c, rc, "swap cursor");
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

	snprintf(stage, sizeof(stage), "%s__stage", streams[m->st].name);
	if ((rc = exec(c, "BEGIN IMMEDIATE")))
		return rc;
	if ((rc = read_stream(c, m->st, &r)))
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
		if ((rc = exec(c, sql)) || (rc = create_table(c, m->st, stage, 0, 0)))
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
			if ((rc = forget_rows(c, e->valuestring, 1)))
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
		rc = exec(c, "COMMIT");
	if (rc || out->what == CA_IGNORED)
		rollback(c);
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
	snprintf(old, sizeof(old), "%s__old", streams[st].name);
	if (!has_table(c, old))
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

/* Every stream's (st < 0) or one's, within one budget. */
static void drop_old(cache *c, int st)
{
	int64_t until = platform__mono_ms() + DROP_BUDGET_MS;
	for (int i = 0; i < ST_COUNT; i++)
		if (st < 0 || st == i)
			drop_old_until(c, i, until);
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
				drop_old(c, m.st);
				c->rs[m.st].want = 0;
				if (c->inflight == m.st)
					c->inflight = -1;
				/* replay_buffered may have found a gap again */
				if (c->replay_gap || c->buf_overflow[m.st])
					want(c, m.st, "gap");
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
		scrub(c);
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
			rc = err__set(SCRM_E_INVALID, "%s:1: stream: must be one of members coupons catalogue inventory scripts recos rules", path);
			goto cleanup;
		}
		if ((rc = get_int(hdr, "version", 1, MAX_SAFE_INT, 1, 0, "", &version))) {
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
		sbuf__jstr(&chunk, streams[st].name);
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

/* ---- resync schedule ------------------------------------------------ */

void cache__reset_requests(cache *c)
{
	if (c->inflight >= 0) {
		want(c, c->inflight, "resume");
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
	if (read_stream(c, st, &r) != SCRM_OK) {
		/* try again after the timeout rather than at once */
		c->inflight = st;
		c->inflight_ms = now;
		return 0;
	}
	if (!strcmp(reason, "resume") && !r.staging)
		reason = r.cursor ? "gap" : "bootstrap";
	sbuf__reset(out);
	sbuf__puts(out, "{\"v\":1,\"stream\":");
	sbuf__jstr(out, streams[st].name);
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

int cache__forget(cache *c, const char *member_id, cache__forget_fn fn, void *ctx)
{
	struct stream_row r;
	int rc;
	if (!key_ok(member_id))
		return err__set(SCRM_E_INVALID, "member_id: 1..64 of [A-Za-z0-9_.:>-]");
	if ((rc = exec(c, "BEGIN IMMEDIATE")))
		return rc;
	if (!(rc = read_stream(c, ST_MEMBERS, &r)) && !(rc = fn ? fn(ctx, member_id) : SCRM_OK))
		rc = forget_rows(c, member_id, r.staging);
	c->erased = 0;
	if (rc == SCRM_OK)
		rc = exec(c, "COMMIT");
	if (rc) {
		rollback(c);
		return rc;
	}
	return scrub(c);
}

/* ---- members at the counter ----------------------------------------- */

int cache__phone_normalise(const char *in, const char *cc, char out[24])
{
	char d[24];
	size_t n = 0;
	int plus = 0;
	for (const char *p = in; *p; p++) {
		if (*p == ' ' || *p == '-' || *p == '.' || *p == '(' || *p == ')')
			continue;
		if (*p == '+' && n == 0 && !plus) {
			plus = 1;
			continue;
		}
		if (*p < '0' || *p > '9' || n >= 20)
			return -1;
		d[n++] = *p;
	}
	d[n] = '\0';
	const char *digits = d;
	char tmp[40];
	if (!plus) {
		if (n >= 2 && d[0] == '0' && d[1] == '0') {
			digits = d + 2;
		} else if (n >= 1 && d[0] == '0' && cc && *cc) {
			snprintf(tmp, sizeof(tmp), "%s%s", cc, d + 1);
			digits = tmp;
		}
	}
	size_t len = strlen(digits);
	if (len < 6 || len > 15)
		return -1;
	memcpy(out, digits, len + 1);
	return 0;
}

/* Verify a member QR token offline; on success the member id. */
static int qr_member(cache *c, const char *tok, char member[65])
{
	uint8_t payload[QR_MAX], sig[160];
	size_t n = strlen(tok);
	const char *p1, *p2;
	long plen, slen;
	cJSON *o = NULL;
	const char *t, *m;
	int64_t iat, exp, now;
	int rc;

	if (n > QR_MAX || strncmp(tok, "SCRM1.", 6) != 0 || !(p1 = tok + 6) || !(p2 = strchr(p1, '.')) ||
	    strchr(p2 + 1, '.'))
		return err__set(SCRM_E_INVALID, "qr: format: not a SCRM1 member token");
	plen = crypto__b64_decode(p1, (size_t)(p2 - p1), 1, payload, sizeof(payload) - 1);
	slen = crypto__b64_decode(p2 + 1, strlen(p2 + 1), 1, sig, sizeof(sig));
	if (plen <= 0 || slen <= 0)
		return err__set(SCRM_E_INVALID, "qr: format: bad base64url");
	if (!c->central)
		return err__set(SCRM_E_CONFIG, "qr: cannot verify tokens: %s", c->central_err);
	if (crypto__verify(c->central, payload, (size_t)plen, sig, (size_t)slen) != SCRM_OK)
		return err__set(SCRM_E_INVALID, "qr: signature: does not verify (forged or altered token)");
	payload[plen] = '\0';
	if ((rc = json__parse((const char *)payload, (size_t)plen, "qr: format: payload", &o)) != SCRM_OK)
		goto cleanup;
	if (!cJSON_IsObject(o)) {
		rc = err__set(SCRM_E_INVALID, "qr: format: payload is not a JSON object");
		goto cleanup;
	}
	if ((rc = get_str(o, "t", 64, 1, "qr: ", &t)) || (rc = get_str(o, "m", MAX_KEY, 1, "qr: ", &m)) ||
	    (rc = get_int(o, "iat", 0, MAX_SAFE_INT, 1, 0, "qr: ", &iat)) ||
	    (rc = get_int(o, "exp", 0, MAX_SAFE_INT, 1, 0, "qr: ", &exp)))
		goto cleanup;
	if (!c->tenant[0] || strcmp(t, c->tenant) != 0) {
		rc = err__set(SCRM_E_INVALID, "qr: tenant: token is for \"%.64s\", this store is \"%s\"", t, c->tenant);
		goto cleanup;
	}
	now = platform__wall_ms();
	if (now >= exp) {
		rc = err__set(SCRM_E_INVALID, "qr: expired: %lld s ago", (long long)((now - exp) / 1000));
		goto cleanup;
	}
	if (iat - QR_SKEW_MS > now) {
		rc = err__set(SCRM_E_INVALID, "qr: not yet valid: issued %lld s in the future (check the clock)",
			      (long long)((iat - now) / 1000));
		goto cleanup;
	}
	if (!key_ok(m)) {
		rc = err__set(SCRM_E_INVALID, "qr: m: not a member id");
		goto cleanup;
	}
	snprintf(member, 65, "%s", m);
cleanup:
	cJSON_Delete(o);
	return rc;
}

static void add_personal(cache *c, const char *key, const void *blob, int len, cJSON *root)
{
	uint8_t *pt;
	cJSON *pii, *out, *it;
	if (!blob || len <= CRYPTO_SEAL_OVERHEAD || !(pt = malloc((size_t)len)))
		return;
	if (crypto__open(c->sealer, key, strlen(key), blob, (size_t)len, pt) != SCRM_OK) {
		free(pt);
		cJSON_AddStringToObject(root, "personal_error", "personal fields unreadable with this device's data key");
		return;
	}
	pii = cJSON_ParseWithLength((const char *)pt, (size_t)len - CRYPTO_SEAL_OVERHEAD);
	memset(pt, 0, (size_t)len - CRYPTO_SEAL_OVERHEAD);
	free(pt);
	if (!pii)
		return;
	out = cJSON_AddObjectToObject(root, "personal");
	if ((it = cJSON_GetObjectItemCaseSensitive(pii, "name")) && cJSON_IsString(it))
		cJSON_AddStringToObject(out, "name", it->valuestring);
	if ((it = cJSON_GetObjectItemCaseSensitive(pii, "birthday")) && cJSON_IsString(it))
		cJSON_AddStringToObject(out, "birthday", it->valuestring);
	/* A guide confirms a number by its last digits; the whole number is
	 * never shown. */
	if ((it = cJSON_GetObjectItemCaseSensitive(pii, "phone")) && cJSON_IsString(it)) {
		char masked[24];
		size_t n = strlen(it->valuestring);
		if (n < sizeof(masked)) {
			for (size_t i = 0; i < n; i++)
				masked[i] = i + 4 < n ? '*' : it->valuestring[i];
			masked[n] = '\0';
			cJSON_AddStringToObject(out, "phone", masked);
		}
		memset(it->valuestring, 0, n);
	}
	cJSON_Delete(pii);
}

static void add_coupons(cache *c, const char *key, cJSON *root, int64_t now)
{
	cJSON *arr = cJSON_AddArrayToObject(root, "coupons");
	if (!c->q_coupons && prep(c, c->db, &c->q_coupons,
				  "SELECT signed FROM coupons WHERE member_id = ?1 AND (valid_to IS NULL OR valid_to > ?2)"
				  " ORDER BY key",
				  1))
		return;
	sqlite3_reset(c->q_coupons);
	sqlite3_bind_text(c->q_coupons, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_int64(c->q_coupons, 2, now);
	while (sqlite3_step(c->q_coupons) == SQLITE_ROW) {
		cJSON *p = cJSON_Parse((const char *)sqlite3_column_text(c->q_coupons, 0));
		if (p)
			cJSON_AddItemToArray(arr, p);
	}
	sqlite3_reset(c->q_coupons);
}

static int64_t obj_i64(const cJSON *o, const char *name)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
	int64_t v = 0;
	return it && is_int(it, -MAX_SAFE_INT, MAX_SAFE_INT, &v) ? v : 0;
}

static void set_i64(cJSON *o, const char *name, int64_t v)
{
	cJSON *n = cJSON_CreateNumber((double)v);
	if (cJSON_GetObjectItemCaseSensitive(o, name))
		cJSON_ReplaceItemInObjectCaseSensitive(o, name, n);
	else
		cJSON_AddItemToObject(o, name, n);
}

/* Purchases and returns this store recorded after central's figures
 * (stats.as_of_ms): the guide sees today's sale before central does. */
static void add_local(cache *c, const char *key, cJSON *root, int64_t now)
{
	cJSON *stats = cJSON_GetObjectItemCaseSensitive(root, "stats"), *recent, *local, *lp;
	int64_t as_of = cJSON_IsObject(stats) ? obj_i64(stats, "as_of_ms") : 0;
	int64_t orders = 0, returns = 0, spend = 0, last = 0;
	outbox__activity_row row;
	if (outbox__activity_query(c->act, key, as_of))
		return; /* no outbox, or one from before schema v2: nothing local yet */
	local = cJSON_CreateObject();
	lp = cJSON_AddArrayToObject(local, "purchases");
	while (outbox__activity_next(c->act, &row)) {
		int64_t ts = row.wall_ms, amount = row.amount;
		const char *kind = row.kind;
		int is_return = kind && strcmp(kind, "return") == 0;
		cJSON *e = cJSON_CreateObject();
		cJSON_AddNumberToObject(e, "ts", (double)ts);
		cJSON_AddNumberToObject(e, "seq", (double)row.seq);
		cJSON_AddStringToObject(e, "kind", is_return ? "return" : "purchase");
		cJSON_AddNumberToObject(e, "total", (double)amount);
		cJSON *skus = row.skus ? cJSON_Parse(row.skus) : NULL;
		cJSON_AddItemToObject(e, "skus", skus ? skus : cJSON_CreateArray());
		cJSON_AddItemToArray(lp, e);
		if (is_return) {
			returns++;
		} else {
			orders++;
			if (ts > last)
				last = ts;
		}
		spend += amount;
	}
	cJSON_AddNumberToObject(local, "orders", (double)orders);
	cJSON_AddNumberToObject(local, "returns", (double)returns);
	cJSON_AddNumberToObject(local, "spend", (double)spend);
	cJSON_AddItemToObject(root, "local", local);
	if (!cJSON_IsObject(stats))
		stats = cJSON_AddObjectToObject(root, "stats");
	set_i64(stats, "orders", obj_i64(stats, "orders") + orders);
	set_i64(stats, "spend", obj_i64(stats, "spend") + spend);
	if (last > obj_i64(stats, "last_purchase_ms"))
		set_i64(stats, "last_purchase_ms", last);
	last = obj_i64(stats, "last_purchase_ms");
	if (last > 0)
		set_i64(stats, "recency_days", (now - last) / 86400000);
	/* recent: local purchases first, newest first, then central's; at most
	 * 20 in all. Built as a new array: cJSON_InsertItemInArray cannot be
	 * relied on (Debian's 1.7.15 refuses to insert before any item but the
	 * first, which dropped and leaked local purchases). */
	cJSON *merged = cJSON_CreateArray(), *e;
	int n = 0;
	cJSON_ArrayForEach(e, lp)
	{
		if (n >= 20)
			break;
		if (strcmp(cJSON_GetObjectItemCaseSensitive(e, "kind")->valuestring, "purchase") != 0)
			continue;
		cJSON *r = cJSON_CreateObject();
		cJSON_AddNumberToObject(r, "ts", (double)obj_i64(e, "ts"));
		cJSON_AddNumberToObject(r, "total", (double)obj_i64(e, "total"));
		cJSON_AddItemToObject(r, "skus", cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(e, "skus"), 1));
		cJSON_AddBoolToObject(r, "local", 1);
		cJSON_AddItemToArray(merged, r);
		n++;
	}
	recent = cJSON_GetObjectItemCaseSensitive(root, "recent");
	if (cJSON_IsArray(recent)) {
		cJSON_ArrayForEach(e, recent)
		{
			if (n++ >= 20)
				break;
			cJSON_AddItemToArray(merged, cJSON_Duplicate(e, 1));
		}
	}
	cJSON_DeleteItemFromObjectCaseSensitive(root, "recent");
	cJSON_AddItemToObject(root, "recent", merged);
}

int cache__member_card(cache *c, scrm_member_key by, const char *value, sbuf *out, char member_id[65], int *tracking)
{
	static const char *const sql[4] = {
		"SELECT key, tracking, doc, pii FROM members WHERE key = ?1",
		"SELECT key, tracking, doc, pii FROM members WHERE card = ?1",
		"SELECT key, tracking, doc, pii FROM members WHERE phone_hash = ?1",
		NULL,
	};
	char qr_id[65];
	uint8_t h[32];
	int idx, rc;
	sqlite3_stmt *q;
	cJSON *root = NULL;
	int64_t now = platform__wall_ms();

	if (!value)
		return err__set(SCRM_E_INVALID, "value: NULL");
	switch (by) {
	case SCRM_MEMBER_ID:
		if (!key_ok(value))
			return err__set(SCRM_E_INVALID, "member_id: 1..64 of [A-Za-z0-9_.:>-]");
		idx = 0;
		break;
	case SCRM_MEMBER_CARD:
		if (!*value || strlen(value) > MAX_KEY)
			return err__set(SCRM_E_INVALID, "card: 1..64 characters");
		idx = 1;
		break;
	case SCRM_MEMBER_PHONE: {
		char norm[24];
		if (cache__phone_normalise(value, c->phone_cc, norm) != 0)
			return err__set(SCRM_E_INVALID, "phone: not a phone number (6..15 digits after normalising)");
		if (!c->has_tenant_key)
			return err__set(SCRM_E_CONFIG, "phone: look-up needs the tenant key: %s", c->tenant_key_err);
		crypto__hmac_sha256(c->tenant_key, sizeof(c->tenant_key), norm, strlen(norm), h);
		memset(norm, 0, sizeof(norm));
		idx = 2;
		break;
	}
	case SCRM_MEMBER_QR:
		if ((rc = qr_member(c, value, qr_id)))
			return rc;
		value = qr_id;
		idx = 0;
		break;
	default:
		return err__set(SCRM_E_INVALID, "by: unknown member key kind %d", (int)by);
	}
	if (!c->q_card[idx] && (rc = prep(c, c->db, &c->q_card[idx], sql[idx], 1)))
		return rc;
	q = c->q_card[idx];
	sqlite3_reset(q);
	if (idx == 2)
		sqlite3_bind_blob(q, 1, h, sizeof(h), SQLITE_STATIC);
	else
		sqlite3_bind_text(q, 1, value, -1, SQLITE_STATIC);
	rc = sqlite3_step(q);
	if (rc != SQLITE_ROW) {
		sqlite3_reset(q);
		if (rc == SQLITE_DONE)
			return err__set(SCRM_E_NOT_FOUND, "member: no member with this %s",
					by == SCRM_MEMBER_PHONE ? "phone number" : by == SCRM_MEMBER_CARD ? "card" : "id");
		return fail(c, rc, "member look-up");
	}
	const char *key = (const char *)sqlite3_column_text(q, 0);
	snprintf(member_id, 65, "%s", key ? key : "");
	if (tracking)
		*tracking = sqlite3_column_int(q, 1);
	root = cJSON_Parse((const char *)sqlite3_column_text(q, 2));
	if (!root) {
		sqlite3_reset(q);
		return err__set(SCRM_E_CORRUPT, "cache: member %s: stored profile unreadable", member_id);
	}
	add_personal(c, member_id, sqlite3_column_blob(q, 3), sqlite3_column_bytes(q, 3), root);
	sqlite3_reset(q);
	add_coupons(c, member_id, root, now);
	add_local(c, member_id, root, now);
	char *text = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	if (!text)
		return err__set(SCRM_E_NOMEM, "out of memory");
	sbuf__reset(out);
	sbuf__puts(out, text);
	free(text);
	return out->oom ? err__set(SCRM_E_NOMEM, "out of memory") : SCRM_OK;
}

int cache__member_profile(cache *c, const char *member_id, int64_t now, cJSON **out, int *tracking)
{
	int rc;
	*out = NULL;
	if (!member_id || !key_ok(member_id))
		return err__set(SCRM_E_INVALID, "member_id: 1..64 of [A-Za-z0-9_.:>-]");
	if (!c->q_profile && (rc = prep(c, c->db, &c->q_profile, "SELECT tracking, doc FROM members WHERE key = ?1", 1)))
		return rc;
	sqlite3_reset(c->q_profile);
	sqlite3_bind_text(c->q_profile, 1, member_id, -1, SQLITE_STATIC);
	rc = sqlite3_step(c->q_profile);
	if (rc != SQLITE_ROW) {
		sqlite3_reset(c->q_profile);
		if (rc == SQLITE_DONE)
			return err__set(SCRM_E_NOT_FOUND, "member_id: no member %s in the cache", member_id);
		return fail(c, rc, "member look-up");
	}
	if (tracking)
		*tracking = sqlite3_column_int(c->q_profile, 0);
	cJSON *root = cJSON_Parse((const char *)sqlite3_column_text(c->q_profile, 1));
	sqlite3_reset(c->q_profile);
	if (!root)
		return err__set(SCRM_E_CORRUPT, "cache: member %s: stored profile unreadable", member_id);
	add_local(c, member_id, root, now);
	*out = root;
	return SCRM_OK;
}

int cache__status(cache *c, sbuf *out)
{
	sqlite3_stmt *q = NULL;
	int rc, first = 1;
	int64_t now = platform__wall_ms();
	if ((rc = prep(c, c->db, &q,
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
		snprintf(sql, sizeof(sql), "SELECT count(*) FROM \"%s\"", streams[st].name);
		if (prep(c, c->db, &cnt, sql, 0) == SCRM_OK && sqlite3_step(cnt) == SQLITE_ROW)
			rows = sqlite3_column_int64(cnt, 0);
		sqlite3_finalize(cnt);
		if (!first)
			sbuf__putc(out, ',');
		first = 0;
		sbuf__puts(out, "{\"stream\":");
		sbuf__jstr(out, streams[st].name);
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
			sbuf__puts(out, ",\"version\":");
			sbuf__i64(out, sqlite3_column_int64(q, 7));
			sbuf__puts(out, ",\"chunks_done\":");
			sbuf__i64(out, sqlite3_column_int64(q, 5));
			sbuf__puts(out, ",\"chunks\":");
			sbuf__i64(out, sqlite3_column_int64(q, 6));
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
	sbuf__puts(out, erasure_pending(c) ? "true" : "false");
	sbuf__putc(out, '}');
	return out->oom ? err__set(SCRM_E_NOMEM, "out of memory") : SCRM_OK;
}
