/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cache_int: what the files of the cache module share and nobody else sees —
 * the handle's fields, the stream table (streams.def), the schema and
 * transaction helpers, and the calls one concern makes into another:
 *   schema.c   tables, indexes, migration, opening cache.db
 *   cache.c    the handle (open, close, identity, policy), the member card
 *   records.c  each stream's record checks (the bind functions)
 *   apply.c    deltas, snapshot chunks and swaps, snapshot files
 *   member.c   erasure (forget, scrub), phone numbers, QR tokens, the
 *              sealed personal fields and coupons of a card
 *   status.c   the resync schedule, purge, the status
 *   query.c    the guide's reads (query.h)
 * cache.h stays the module's interface.
 */
#ifndef SCRM_CACHE_INT_H
#define SCRM_CACHE_INT_H

#include "cache.h"
#include "crypto.h"
#include "ledger.h"
#include "query.h"

#include <sqlite3.h>
#include <stdint.h>

struct cJSON;

#define MAX_OPS 5000
#define MAX_RECORDS 100000
#define MAX_CHUNKS 1000000
#define MAX_BUFFERED 1000
#define MAX_KEY 64
#define DEFAULT_MAX_MESSAGE (4u * 1024 * 1024)
#define MAX_TIMEOUT_MS 600000
#define QR_MAX 512
#define QR_SKEW_MS 300000

/* ---- streams (streams.def) ------------------------------------------ */

/* An index of a stream table. A nullable column gets a partial index
 * (WHERE column IS NOT NULL: most members have no card); `cols` set means a
 * plain index on those columns instead. */
struct index_def {
	const char *suffix, *column, *cols;
};

/* Check one record (a delta op or a snapshot record) and bind it to the
 * stream's upsert (?1, the key, is bound already). SCRM_E_CRYPTO: this
 * record is refused alone; any other error refuses the message. */
typedef int (*cache__bind_fn)(struct cache *c, const char *key, struct cJSON *rec, sqlite3_stmt *st, const char *path);

struct stream_def {
	const char *name;
	const char *columns; /* after "key TEXT PRIMARY KEY," */
	const char *insert;  /* column list and placeholders */
	struct index_def idx[2];
	const char *member;  /* the column naming a member, NULL if none */
	cache__bind_fn bind;
};

/* One row per stream, indexed by ST_*. */
extern const struct stream_def cache__streams[ST_COUNT];

#define CACHE_STREAM(id, name, columns, insert, idx1, idx2, member, bind)                                            \
	int bind(struct cache *c, const char *key, struct cJSON *rec, sqlite3_stmt *st, const char *path);
#include "streams.def"

/* ---- handle --------------------------------------------------------- */

struct resync {
	int want;            /* a snapshot should be asked for */
	char reason[16];
	int64_t timeout_ms;  /* current wait between chunks; doubles on silence */
};

/* query.c's statements, prepared on first use, and the parsed campaigns. */
struct cache__queries {
	sqlite3_stmt *rules, *catalogue, *category, *stock, *recos, *script[2];
	sqlite3_stmt *member_coupons, *coupon, *campaigns, *coupons_state;
	cache__campaigns cps;
	int64_t cps_cursor, cps_gen, cps_applied; /* the coupons stream they were read at */
	int cps_valid;
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
	int vacuum_failed;     /* the one-time VACUUM of an old file failed: not again on this handle (apply.c) */
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
	struct cache__queries qs; /* query.c */
};

/* ---- schema.c ------------------------------------------------------- */

/* SQLite's rc as scrm_err with "cache: <what>: <sqlite message>". */
int cache__fail(cache *c, int rc, const char *what);
int cache__exec(cache *c, const char *sql);
void cache__rollback(cache *c);
int cache__prep(cache *c, sqlite3 *db, sqlite3_stmt **st, const char *sql, int persistent);
/* A record key or member id: 1..64 of [A-Za-z0-9_.:>-]. */
int cache__key_ok(const char *s);
int cache__create_table(cache *c, int st, const char *table, int64_t gen, int with_indexes);
int cache__meta_get(cache *c, const char *k, char *out, size_t cap);
int cache__open_db(cache *c, const char *dir, const cache__options *opts);
int cache__has_table(cache *c, const char *name);

/* A stream's row of the streams table. */
struct stream_row {
	int64_t cursor, gen, refused;
	int staging;
	char snap_id[65];
	int64_t snap_version, snap_chunks, snap_next, snap_refused;
};
int cache__read_stream(cache *c, int st, struct stream_row *r);

/* ---- apply.c -------------------------------------------------------- */

/* Empty the views swaps replaced: every stream's (st < 0) or one's. */
void cache__drop_old(cache *c, int st);
/* A buffered delta (sealed) parsed, or NULL. */
struct cJSON *cache__open_buffered(cache *c, int st, sqlite3_stmt *q, int col);

/* ---- member.c ------------------------------------------------------- */

int cache__erasure_pending(cache *c);
int cache__scrub(cache *c);
/* Inside the caller's transaction: the member's rows, buffered deltas,
 * and the mark that the bytes still have to be scrubbed. */
int cache__forget_rows(cache *c, const char *member_id, int staging_members);
int cache__qr_member(cache *c, const char *tok, char member[65]);
void cache__add_personal(cache *c, const char *key, const void *blob, int len, struct cJSON *root);
void cache__add_coupons(cache *c, const char *key, struct cJSON *root, int64_t now);

/* ---- status.c ------------------------------------------------------- */

/* Ask for a snapshot of one stream, unless already asked (first reason kept). */
void cache__want_stream(cache *c, int st, const char *reason);

/* ---- query.c -------------------------------------------------------- */

void cache__queries_free(cache *c);

#endif
