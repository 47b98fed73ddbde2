/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outbox: the durable SQLite queue of captured events, `<store>/outbox.db`.
 * It owns the schema, the per-device sequence counter and the "clock
 * trusted" watermark. Capture appends in one IMMEDIATE transaction per group
 * (WAL, synchronous=FULL: committed means on disk); the daemon reads batches
 * in seq order and deletes events only when central acknowledges them.
 *
 * One outbox handle = one SQLite connection; callers serialise their use of
 * a handle (the store's group-commit leader, or the daemon's loop thread).
 * Several processes may each hold their own handle on the same file.
 */
#ifndef SCRM_OUTBOX_H
#define SCRM_OUTBOX_H

#include <scrm/scrm.h>
#include <stddef.h>
#include <stdint.h>

#include "sbuf.h"

typedef struct outbox outbox;

/* One event to append. Inputs borrowed; seq and clock_ok filled on commit. */
typedef struct outbox__row {
	const char *id;    /* UUIDv7 text */
	const char *kind;  /* "purchase", ... */
	int64_t wall_ms, mono_ms;
	const char *boot;  /* boot id */
	const char *body;  /* canonical JSON body */
	size_t body_len;
	int64_t seq;       /* out */
	int clock_ok;      /* out */
} outbox__row;

#define OUTBOX_FILE "outbox.db"

/* Open/create `<dir>/outbox.db`. device_id: required to create, else must
 * match if given. busy_ms: lock wait. Detail via err__set. */
int outbox__open(const char *dir, const char *device_id, int busy_ms, outbox **out);
void outbox__close(outbox *ob);
const char *outbox__device_id(const outbox *ob);

/* Append rows in one durable transaction; assigns consecutive seqs.
 * `trusted_after_ms`: wall clocks before it are flagged not trusted. */
int outbox__append(outbox *ob, outbox__row *rows, size_t n, int64_t trusted_after_ms);

/* Append events with seq > after_seq, in seq order, as JSON objects joined
 * by commas to `out`, until max_events or until the next event would push
 * out->len past max_bytes (at least one event is always taken). Sets
 * *count, *last_seq and, if first_seq is not NULL, *first_seq (0 if none). */
int outbox__read_batch(outbox *ob, int64_t after_seq, size_t max_events, size_t max_bytes,
		       sbuf *out, size_t *count, int64_t *last_seq, int64_t *first_seq);

/* Delete acknowledged seq ranges [first,last] in one transaction and record
 * the ack time. *deleted = rows removed (duplicates acks remove nothing). */
int outbox__ack(outbox *ob, const int64_t (*ranges)[2], size_t n, int64_t now_ms, int64_t *deleted);

/* Move one event to the `rejected` table with central's reason. */
int outbox__reject(outbox *ob, int64_t seq, const char *reason, int64_t now_ms);

/* Lowest pending seq, 0 if the outbox is empty. */
int outbox__oldest_seq(outbox *ob, int64_t *seq);

int outbox__stats(outbox *ob, scrm_outbox_stats *st);

/* Erasure: in one transaction, strip member_id (and a return's reason) from
 * the member's pending and rejected events, marking them "redacted", and
 * delete the member's local purchase history. *redacted = pending events
 * changed. Idempotent. */
int outbox__redact_member(outbox *ob, const char *member_id, int64_t *redacted);

/* Drop local purchase history older than before_ms (wall). */
int outbox__prune_activity(outbox *ob, int64_t before_ms);

/* Passive WAL checkpoint, for the daemon's idle moments. */
int outbox__checkpoint(outbox *ob);

/* Map a SQLite result code to a scrm_err, setting the detail. */
int outbox__sqlite_err(int sqlite_rc, const char *what, const char *detail);

#endif
