/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outbox: the durable SQLite queue of captured events, `<store>/outbox.db`.
 * It owns the schema, the per-device sequence counter and the clock anchor
 * that decides each event's clock_ok. Capture appends in one IMMEDIATE transaction per group
 * (WAL, synchronous=FULL: committed means on disk); the daemon reads batches
 * in seq order and deletes events only when central acknowledges them.
 *
 * One outbox handle = one SQLite connection; callers serialise their use of
 * a handle (the store's group-commit leader, or the daemon's loop thread).
 * Several processes may each hold their own handle on the same file.
 *
 * Bounded storage: the pending events' stored size (body + a fixed per-row
 * overhead) is capped by outbox.max_bytes, which the daemon copies into the
 * store (outbox__set_limits). What a customer paid for (purchase, return,
 * coupon_redeem) is never evicted; other events are, browsing (reco_shown)
 * first, then scans (member_scan), then any other kind, oldest first in
 * each class, to make room for a new event. The last outbox.reserve_bytes
 * take paid events only. Every eviction is counted per kind (`dropped`).
 *
 * A damaged outbox.db is moved to `<store>/quarantine/` (never deleted) and
 * a fresh one takes its place, its sequence counter started above anything
 * the old file can have issued (quarantine.h, docs/protocol.md).
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
	/* a purchase's order_id, a return's return_id (its receipt key), when
	 * the caller has it at hand; NULL: read from the body (slower) */
	const char *key;
	/* a purchase's or return's member_id and guide_id (NULL: none) and
	 * whether the purchase names its reco_id, when the caller has them at
	 * hand (hinted = 1); otherwise read from the body (slower). They drive
	 * the row's member column and attribution (append.c). */
	int hinted;
	const char *member, *guide;
	int has_reco;
	int64_t seq;       /* out */
	int clock_ok;      /* out */
	/* out: 0 when the row was stored, else why not — SCRM_E_DISK_FULL (a
	 * paid event with the outbox full), SCRM_E_REFUSED (another event with
	 * only paid events left to evict), SCRM_E_CONFLICT, or the
	 * transaction's error — with the message in `why` (each row its own:
	 * several rows of one group may be refused for different reasons; ""
	 * when the transaction failed: scrm_errmsg()). */
	int refused;
	char why[480];
	/* out: a purchase (return) whose order_id (return_id) this device
	 * already holds with the same content: nothing was written and these
	 * are the first capture's receipt (seq above too). A different content
	 * is refused with SCRM_E_CONFLICT instead. */
	int existing;
	char existing_id[37];
	int64_t existing_wall_ms;
} outbox__row;

/* What a receipt keeps of the sale's content to tell a retry (the same
 * content) from another sale under the same order_id: a 128-bit hash of the
 * canonical body. */
#define OUTBOX_DIGEST_BYTES 16
void outbox__digest(const char *body, size_t len, unsigned char out[OUTBOX_DIGEST_BYTES]);

/* How long the receipt of each purchase and return is kept for retries. */
#define OUTBOX_ORDERS_RETENTION_MS (90LL * 86400000)

#define OUTBOX_FILE "outbox.db"
/* Allocated free space the daemon keeps beside it (outbox__reserve_ensure). */
#define OUTBOX_RESERVE_FILE "outbox.reserve"
/* One shared word beside it: when a till last waited for the write lock
 * (outbox__yield_to_tills). */
#define OUTBOX_TURN_FILE "outbox.turn"

/* An event's stored size for outbox.max_bytes: length(body) plus this, an
 * estimate of the rest of its row (UUID id 36 B, boot id 36 B, kind, four
 * integers, SQLite's record and cell headers). */
#define OUTBOX_ROW_OVERHEAD 128
/* Limits used when the store holds none (no daemon has started on it). */
#define OUTBOX_DEFAULT_MAX_BYTES (256LL * 1024 * 1024)
/* reserve_bytes < 0 means max_bytes / 8, at most this. */
#define OUTBOX_RESERVE_AUTO_MAX (8LL * 1024 * 1024)
#define OUTBOX_MIN_MAX_BYTES 16384

/* Open/create `<dir>/outbox.db`. device_id: required to create, else must
 * match if given. busy_ms: lock wait. Detail via err__set.
 * A file SQLite finds damaged (not a database, malformed) is moved to
 * `<dir>/quarantine/outbox-<wall_ms>.db` with its -wal/-shm, the pending
 * events still readable in it are copied, and a fresh outbox (alarm
 * "outbox_quarantined") is opened in its place. That needs the device id:
 * given, or read from the damaged file; otherwise SCRM_E_CORRUPT naming the
 * file, and nothing is moved. */
int outbox__open(const char *dir, const char *device_id, int busy_ms, outbox **out);
/* The same, also running PRAGMA quick_check before use (it reads the whole
 * file: the daemon does it once at start, capture processes do not). */
int outbox__open_checked(const char *dir, const char *device_id, int busy_ms, outbox **out);
/* Events of a quarantined outbox file (`<store>/quarantine/outbox-*.db`,
 * read-only, never changed) that this store neither holds nor took from a
 * quarantined file before: copied with their seq and id, sent again with
 * "recovered":true (protocol.md "Recovered events"), each once however
 * often this is run. Their ledger rows come along. *r says what was found.
 * SCRM_E_MISMATCH: the file is another device's. */
struct salvage__report;
int outbox__recover_file(outbox *ob, const char *path, struct salvage__report *r);

/* Where this handle moved a damaged outbox.db (at open, or when a read or
 * a write found it damaged), NULL if it did not. */
const char *outbox__quarantined(const outbox *ob);
/* Changes whenever this handle moved on to another file (a damaged one
 * quarantined here or by another process): seqs below the new file's may
 * be gone, so a reader of batches starts a new round. */
unsigned outbox__generation(const outbox *ob);
void outbox__close(outbox *ob);
/* For a handle that will record sales (scrm_store_open): index the
 * receipts the queue holds now, in a read transaction, so the till's first
 * sale does not (60 ms for a 50k backlog; receipts.c). Best effort: a
 * failure leaves it to the first sale's transaction. */
void outbox__receipts_prime(outbox *ob);
const char *outbox__device_id(const outbox *ob);

/* Append rows in one durable transaction; assigns consecutive seqs to the
 * rows stored, and clock_ok under the rule of docs/protocol.md (clock_ok),
 * judging the rows in order. `trusted_after_ms`: wall clocks before it (the
 * build date) are never trusted. Under outbox.max_bytes each row is decided on its own (evicting
 * older evictable events first; rows of this call are never evicted by it):
 * rows[i].refused says which were not stored. Returns SCRM_OK when every row
 * was stored, else the first refusal's code (its message set) — rows stored
 * alongside are committed all the same. */
int outbox__append(outbox *ob, outbox__row *rows, size_t n, int64_t trusted_after_ms);

/* The wall clock's trust for the daemon's heartbeat: what an event captured
 * now, at (wall_ms, mono_ms, boot: borrowed), would get as clock_ok, and the
 * state behind it. Read only: nothing is adopted or recorded (the next
 * append does that). Asks platform__clock_synced() once. */
struct outbox__clock {
	int trusted;                   /* such an event would be clock_ok */
	int synced;                    /* platform__clock_synced(): 1, 0, < 0 unknown */
	int same_boot;                 /* the last trusted event was captured in this boot */
	int64_t step_ms;               /* same_boot: (wall_ms - mono_ms) minus its offset; else 0 */
	int64_t last_wall_ms;          /* newest trusted wall clock (the floor after a reboot), 0 if none */
	int pending;                   /* a step in this boot is waiting for confirmation */
	int64_t pending_step_ms;       /* its offset minus the trusted one (0 unless same_boot) */
	int64_t pending_since_mono_ms; /* the mono_ms it was first seen at (adopted 10 min later if kept) */
};
int outbox__clock_state(outbox *ob, int64_t wall_ms, int64_t mono_ms, const char *boot, int64_t trusted_after_ms,
			struct outbox__clock *out);

/* Keep `bytes` of allocated disk space beside the outbox (0 = none): taken
 * only from space to spare (free >= 2 x bytes), and released by a daemon-side
 * write (ack, reject, verdict, set-aside) that finds the disk full, which
 * then tries again and raises "disk_full". Made again (and the alarm
 * cleared) by a later call once space returns. *in_place: it exists now. */
int outbox__reserve_ensure(outbox *ob, int64_t bytes, int *in_place);

/* The daemon's outbox.max_bytes / outbox.reserve_bytes (reserve < 0: auto,
 * max/8 at most 8 MiB), stored for every capturing process. */
int outbox__set_limits(outbox *ob, int64_t max_bytes, int64_t reserve_bytes);

/* Storage figures for the daemon's heartbeat and scrmctl status; a handful
 * of indexed reads in one read transaction. */
#define OUTBOX_HEALTH_KINDS 8
struct outbox__health {
	int64_t pending;                /* events not yet acknowledged */
	int64_t bytes;                  /* their stored size (OUTBOX_ROW_OVERHEAD each included) */
	int64_t max_bytes, reserve_bytes; /* the limits in force */
	int64_t oldest_pending_wall_ms; /* wall_ms of the lowest pending seq, 0 if none */
	int64_t last_ack_ms;            /* central's last ack, 0 = never */
	int64_t last_seq;               /* last seq assigned, 0 if none */
	int64_t refused_paid;           /* paid captures refused: outbox full */
	int in_reserve;                 /* bytes > max_bytes - reserve_bytes */
	size_t n_dropped;
	struct {
		char kind[24];
		int64_t count, bytes, last_ms;
	} dropped[OUTBOX_HEALTH_KINDS]; /* per kind, evicted or refused for room */
};
int outbox__health(outbox *ob, struct outbox__health *h);

/* Alarms kept in the store until cleared: "outbox_quarantined",
 * "cache_quarantined", "outbox_full", "events_dropped". Raising one that is
 * up bumps its count and last_ms and replaces its detail. */
int outbox__alarm_raise(outbox *ob, const char *code, const char *detail, int64_t now_ms);
int outbox__alarm_clear(outbox *ob, const char *code);
/* JSON array of {"code","since_ms","last_ms","count","detail"}, oldest first,
 * into `out` (reset first). */
int outbox__alarms(outbox *ob, sbuf *out);

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
/* The events set aside (dead_letter), oldest seq first, as a JSON array of
 * {"seq","id","kind","wall_ms","reason","detail","set_aside_ms","bytes",
 * "body"} into `out` (reset first): scrmctl outbox set-aside. */
int outbox__set_aside_list(outbox *ob, sbuf *out);
/* How many events are set aside (for the heartbeat). */
int outbox__set_aside_count(outbox *ob, int64_t *n);

/* The ids of redemptions central has acknowledged (their event is no
 * longer pending, nor rejected or set aside) but whose verdict this device
 * has not recorded, oldest first, at most `max`: a JSON array of strings
 * into `out` (reset first), *n of them. For up/verdict/query. */
int outbox__pending_verdicts(outbox *ob, int max, sbuf *out, int *n);
/* {"pending":N,"accepted":N,"rejected":N,"redemptions":[...newest first]} */
int outbox__redemptions(outbox *ob, int limit, sbuf *out);

/* The daemon's connection state, for capture-side code (coupons' offline
 * policy). seen_ms is refreshed while connected. */
int outbox__link_set(outbox *ob, int connected, int64_t now_ms);
int outbox__link_get(outbox *ob, int *connected, int64_t *changed_ms, int64_t *seen_ms);
/* Queries other modules run on the ledgers: ledger.h (the outbox is the
 * only module that prepares SQL on outbox.db's tables). */

/* A value from the daemon's config that the outbox's rules read (settings table). */
int outbox__setting_set(outbox *ob, const char *k, int64_t v);

/* Append events with seq > after_seq, in seq order, as JSON objects joined
 * by commas to `out`, until max_events or until the next event would push
 * out->len past max_bytes (at least one event is always taken). Sets
 * *count, *last_seq and, if first_seq is not NULL, *first_seq (0 if none).
 * Each event is checked first: one whose stored row no longer parses
 * ("unreadable") or that alone is larger than hard_bytes (0: no limit;
 * "too_big") is set aside — its bytes kept in dead_letter, the
 * events_set_aside alarm raised — and goes out as a marker with
 * "set_aside" instead of "body" (protocol.md), so no event can hold up the
 * queue. */
int outbox__read_batch(outbox *ob, int64_t after_seq, size_t max_events, size_t max_bytes, size_t hard_bytes,
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
 * delete the member's local purchase history (secure_delete: the freed
 * bytes are zeroed); then outbox__scrub_wal. *redacted = pending events
 * changed. Idempotent. SCRM_E_BUSY: done in every table, but older copies
 * are still in the WAL (readers held it past the busy timeout): call
 * outbox__scrub_wal again later. */
int outbox__redact_member(outbox *ob, const char *member_id, int64_t *redacted);
/* Checkpoint the WAL into the file and cut it to 0 bytes, waiting for
 * readers up to the busy timeout: SCRM_OK when nothing is left in it,
 * SCRM_E_BUSY (reason set) when readers still hold it. */
int outbox__scrub_wal(outbox *ob);

/* Drop local purchase history older than before_ms (wall). */
int outbox__prune_activity(outbox *ob, int64_t before_ms, int64_t now_ms);

/* Passive WAL checkpoint, for the daemon's idle moments. */
int outbox__checkpoint(outbox *ob);

/* Map a SQLite result code to a scrm_err, setting the detail. */
int outbox__sqlite_err(int sqlite_rc, const char *what, const char *detail);

#endif
