/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cache: the offline customer cache, `<store>/cache.db` — members (personal
 * fields sealed, phones only as keyed hashes), recommendations, rules,
 * catalogue, inventory, signed coupons and talk tracks, each a stream with a
 * version cursor (docs/protocol.md, "Customer cache").
 *
 * It owns the cache schema, applying deltas and snapshot chunks (a delta and
 * its cursor move in one transaction; a snapshot is built in a stage table
 * and swapped in atomically), the resync schedule (which stream to ask for,
 * when), and member look-ups for the counter. The cache is rebuildable, so
 * it runs with synchronous=NORMAL and never shares a file or a lock with the
 * outbox: a 500,000-member load must not delay a sale.
 *
 * One handle = one SQLite connection to cache.db plus a read-only one to the
 * outbox (for purchases not yet reflected by central); a handle is used by
 * one thread at a time (the public scrm_cache wrapper serialises).
 */
#ifndef SCRM_CACHE_H
#define SCRM_CACHE_H

#include <scrm/scrm.h>
#include <stddef.h>
#include <stdint.h>

#include "sbuf.h"

#define CACHE_FILE "cache.db"

/* Streams in resync priority order (members first, rules last), one row
 * each in streams.def. */
typedef enum cache__stream {
#define CACHE_STREAM(id, ...) ST_##id,
#include "streams.def"
	ST_COUNT
} cache__stream;

const char *cache__stream_name(int st);
int cache__stream_parse(const char *name); /* -1 if unknown */

typedef struct cache cache;

typedef struct cache__options {
	const char *keys_dir;   /* NULL: <dir>/keys */
	int busy_timeout_ms;    /* 0: 5000 */
	int create;             /* create cache.db and the data key if missing */
	size_t max_message_bytes; /* 0: 4 MiB */
	int64_t snapshot_timeout_ms; /* 0: 30000 */
	/* PRAGMA quick_check before use (the daemon at start: it reads the
	 * whole file). A damaged cache.db (this check, or SQLite finding it
	 * not a database or malformed) is moved to `<dir>/quarantine/` and a
	 * fresh one made when `create` is set; SCRM_E_CORRUPT otherwise. */
	int check;
} cache__options;

/* Open `<dir>/cache.db`. Keys from keys_dir: data.key (created when
 * opts->create), tenant.key and central.pub (optional: without them phone
 * look-ups, coupons and QR tokens are refused with the reason). */
int cache__open(const char *dir, const cache__options *opts, cache **out);
void cache__close(cache *c);
/* Where this open moved a damaged cache.db, and why (for the alarm); NULL
 * if it did not. Every stream then wants a snapshot (cursor 0). */
const char *cache__quarantined(const cache *c);
const char *cache__quarantine_detail(const cache *c);

/* Identity the daemon records for library readers: tenant (checked in QR
 * tokens) and the phone country code used to normalise local numbers. */
int cache__set_identity(cache *c, const char *tenant, const char *phone_cc);

/* Called inside the cache transaction that applies a `forget` (or a
 * snapshot's `forgotten` list), before it commits: the daemon redacts the
 * outbox there. A failure aborts the apply (it will be retried). */
typedef int (*cache__forget_fn)(void *ctx, const char *member_id);

typedef enum cache__what {
	CA_APPLIED,   /* delta applied, cursor advanced */
	CA_DUPLICATE, /* delta at or below the cursor */
	CA_GAP,       /* delta does not follow the cursor: resync asked */
	CA_BUFFERED,  /* delta kept aside while a snapshot is being built */
	CA_CHUNK,     /* snapshot chunk staged */
	CA_SWAPPED,   /* last chunk: the new view is live */
	CA_IGNORED,   /* chunk of another snapshot, or out of order */
} cache__what;

typedef struct cache__outcome {
	int stream;
	cache__what what;
	int64_t cursor;   /* after */
	int64_t version;  /* of the message */
	int64_t chunk, chunks;
	int64_t ops;      /* records applied */
	int64_t refused;  /* records refused alone (coupon signatures) */
} cache__outcome;

/* Apply one delta or snapshot message. `topic_stream` (may be NULL) is the
 * stream named by the topic and must match the payload's. SCRM_E_INVALID /
 * SCRM_E_TOO_BIG with the reason (field named) when the message is refused:
 * nothing is applied. */
int cache__apply(cache *c, const char *topic_stream, const char *payload, size_t len, cache__forget_fn fn,
		 void *ctx, cache__outcome *out);

/* The first record refused alone by the last apply ("" if none). */
const char *cache__refused_detail(const cache *c);

/* Load a snapshot file (JSON lines, protocol.md "Snapshot file") as one
 * snapshot. *records set to the records applied. */
int cache__load_file(cache *c, const char *path, cache__forget_fn fn, void *ctx, int64_t *records,
		     int64_t *refused, int *stream);

/* Resync schedule. After connecting, and on the daemon's timer: if a stream
 * should be asked for now, writes the request JSON into `out`, sets *stream
 * and returns 1. `now` monotonic ms. */
int cache__next_request(cache *c, int64_t now, sbuf *out, int *stream);
/* The connection (re)started: requests in flight may be lost. */
void cache__reset_requests(cache *c);
/* Ask for a resync of one stream (or all with st = -1), e.g. a command. */
void cache__want(cache *c, int st, const char *reason);
/* Monotonic ms when next_request wants to be called again, 0 = not needed. */
int64_t cache__next_deadline(cache *c);

/* Empty one stream (or all with st = -1) in one transaction, cursor back to
 * 0, and ask central for a fresh snapshot (fleet command cache.purge). */
int cache__purge(cache *c, int st);
/* Remove a member (profile, recommendations, coupons, from the live view,
 * snapshots being built and buffered deltas) in one transaction, then make
 * it reach the file's bytes (see member.c, "Erasure"): SCRM_OK only once the
 * WAL has been checkpointed and cut to 0 bytes. SCRM_E_BUSY (reason set)
 * when readers held the WAL for longer than the busy timeout: the member
 * is gone from the view and the outbox is redacted, but the erasure is
 * pending — finished by cache__checkpoint, the next erasure, the next
 * start, or calling this again. Other errors: nothing was changed.
 * (cache__apply finishes a `forget` the same way after its commit, and
 * leaves it pending just as silently: the delta is applied either way.) */
int cache__forget(cache *c, const char *member_id, cache__forget_fn fn, void *ctx);

/* Profile card of a member as JSON into `out` (protocol.md "Member card").
 * SCRM_E_NOT_FOUND if no such member; SCRM_E_INVALID for a malformed phone
 * or QR token (reason named). *tracking = behaviour-tracking consent. */
int cache__member_card(cache *c, scrm_member_key by, const char *value, sbuf *out, char member_id[65],
		       int *tracking);

/* Per-stream status as JSON: {"streams":[{"stream","cursor","rows",...}],
 * ..., "erasure_pending": an erasure's bytes are not scrubbed yet}. */
int cache__status(cache *c, sbuf *out);

/* The guide/lifecycle policy (JSON object, see guide.h) the daemon copies
 * from its config for library readers; "" until it has. */
int cache__set_policy(cache *c, const char *policy_json);
const char *cache__policy(const cache *c);

/* The member's cached profile (no personal fields) with this device's
 * purchases central has not reflected merged in, as the card's "local",
 * "stats" and "recent" (protocol.md "Member card"). *out owned by the caller
 * (cJSON_Delete). SCRM_E_NOT_FOUND if no such member. */
struct cJSON;
int cache__member_profile(cache *c, const char *member_id, int64_t now, struct cJSON **out, int *tracking);

/* Verify central's signature over msg (DER sig). SCRM_E_CRYPTO / _CONFIG. */
int cache__verify_signed(cache *c, const char *msg, size_t n, const void *sig, size_t sig_len);

/* Daemon idle: finish a pending erasure (TRUNCATE checkpoint, waiting up
 * to the busy timeout for readers), else a passive WAL checkpoint; and go
 * on emptying a view a swap replaced. */
void cache__checkpoint(cache *c);

/* Normalise a phone typed at the counter (protocol.md); 0 or -1. */
int cache__phone_normalise(const char *in, const char *cc, char out[24]);

#endif
