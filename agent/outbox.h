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
/* Limits a redemption must respect, checked and recorded under one write
 * lock. A NULL coupon / campaign / member_id or a negative allowance skips
 * that check. Redemptions central rejected do not count. */
typedef struct outbox__limits {
	const char *coupon;      /* coupon id */
	int64_t coupon_allowed;  /* uses left for this device to spend */
	const char *campaign;
	const char *member_id;
	int64_t member_allowed;  /* uses of the campaign left for this member */
	/* JSON arrays (or NULL) of redemption ids central's counts already
	 * include: such local redemptions are not counted again */
	const char *coupon_counted, *member_counted;
	/* The sale; a redemption of the same coupon (or campaign, for the
	 * member) for the same order_id is returned instead of a second one:
	 * a till retrying after a crash or a timeout spends nothing twice. */
	const char *order_id;
	/* out: set when that earlier redemption was returned */
	int existing;
	char existing_id[37];
	int64_t existing_seq, existing_wall_ms, existing_value;
} outbox__limits;

/* Append one coupon_redeem row if `lim` allows it: SCRM_E_REFUSED
 * ("used_up: ...") otherwise, nothing written. */
int outbox__append_redemption(outbox *ob, outbox__row *row, int64_t trusted_after_ms, outbox__limits *lim);
/* Local uses counted as outbox__append_redemption does. */
int outbox__redemption_counts(outbox *ob, const outbox__limits *lim, int64_t *by_coupon, int64_t *by_member);
/* Central's verdict on a redemption (idempotent; *changed = 0 for a repeat).
 * SCRM_E_NOT_FOUND: no such redemption here. */
int outbox__verdict(outbox *ob, const char *id, const char *verdict, const char *reason, const char *detail,
		    int64_t ms, int *changed);
/* {"pending":N,"accepted":N,"rejected":N,"redemptions":[...newest first]} */
int outbox__redemptions(outbox *ob, int limit, sbuf *out);

/* The daemon's connection state, for capture-side code (coupons' offline
 * policy). seen_ms is refreshed while connected. */
int outbox__link_set(outbox *ob, int connected, int64_t now_ms);
int outbox__link_get(outbox *ob, int *connected, int64_t *changed_ms, int64_t *seen_ms);
/* The store's connection, for read-only queries by other modules while
 * they hold it (store__exclusive). */
struct sqlite3;
struct sqlite3 *outbox__db(outbox *ob);

/* A value from the daemon's config that triggers read (settings table). */
int outbox__setting_set(outbox *ob, const char *k, int64_t v);

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
int outbox__prune_activity(outbox *ob, int64_t before_ms, int64_t now_ms);

/* Passive WAL checkpoint, for the daemon's idle moments. */
int outbox__checkpoint(outbox *ob);

/* Map a SQLite result code to a scrm_err, setting the detail. */
int outbox__sqlite_err(int sqlite_rc, const char *what, const char *detail);

#endif
