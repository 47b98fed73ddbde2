/* SPDX-License-Identifier: Apache-2.0 */
/*
 * memoutbox: an in-memory outbox behind the outbox half of delivery__io
 * (read, oldest, ack, reject), with the semantics of agent/lib/outbox/outbox.c that
 * delivery depends on: events in seq order, a soft byte limit with "the
 * first event is always taken", a hard limit above which an event is set
 * aside and goes out as a marker (like outbox__read_batch), eviction of
 * evictable kinds under a byte cap (an event in flight may be evicted, as in
 * the real outbox), seq jumps, and events hidden in a "quarantined file" and
 * recovered later with "recovered":true (docs/protocol.md).
 *
 * It also keeps the ledger of every event ever captured and what became of
 * it (acknowledged, rejected, evicted, hidden), for the simulator's checker.
 *
 * Faults: each io function fails with SCRM_E_IO (and does nothing) when
 * fail_next[op] > 0 (decremented) or when the `fault` callback says so.
 *
 * Single-threaded; the handle owns every event and string in it.
 */
#ifndef SCRM_SIM_MEMOUTBOX_H
#define SCRM_SIM_MEMOUTBOX_H

#include "delivery.h"
#include "sbuf.h"

#include <stddef.h>
#include <stdint.h>

/* Kinds (protocol.md "Event batch"): the first three are paid for and never
 * evicted. */
enum memoutbox_kind { MO_PURCHASE, MO_RETURN, MO_COUPON_REDEEM, MO_MEMBER_SCAN, MO_RECO_SHOWN, MO_NKINDS };

/* How a stored row is damaged (set aside as "unreadable" when read). */
enum memoutbox_damage {
	MO_INTACT,
	MO_DAMAGED_BODY, /* the body no longer parses: marker with every header field */
	MO_DAMAGED_ID,   /* the id no longer parses: marker with seq and kind only */
};

/* Where an event is now. */
enum memoutbox_fate {
	MO_PENDING,
	MO_ACKED,    /* deleted by io.ack */
	MO_REJECTED, /* moved to the rejected list by io.reject */
	MO_EVICTED,  /* dropped under the cap */
	MO_HIDDEN,   /* in a quarantined file, not (yet) recovered */
};

enum memoutbox_op { MO_OP_READ, MO_OP_OLDEST, MO_OP_ACK, MO_OP_REJECT, MO_NOPS };

/* Stored size of an event for the cap: body + a fixed row overhead, as
 * agent/lib/outbox/outbox.h (OUTBOX_ROW_OVERHEAD). */
#define MEMOUTBOX_ROW_OVERHEAD 128

typedef struct memoutbox_event {
	int64_t seq;
	char id[37];
	int kind;
	int64_t wall_ms, mono_ms;
	int clock_ok;
	char *body; /* owned, a JSON object */
	size_t body_len;
	int damage;
	int fate;
	int aside;              /* set aside: goes out as a marker */
	char aside_reason[16];  /* "too_big", "unreadable" */
	size_t aside_bytes;
	int recovered;          /* put back from a quarantined file */
	int ever_hidden;        /* was hidden at some point */
	int published;          /* the simulator saw it in a published batch */
	char reject_reason[96]; /* fate MO_REJECTED */
} memoutbox_event;

typedef struct memoutbox memoutbox;

/* Fault callback: nonzero = make this call fail. */
typedef int (*memoutbox_fault_fn)(void *ctx, int op);
/* Deletion hook: called for each event io.ack deletes (before it goes). */
typedef void (*memoutbox_delete_fn)(void *ctx, const memoutbox_event *ev);

struct memoutbox {
	const char *boot; /* borrowed */
	int64_t next_seq;
	int64_t cap_bytes; /* 0: no cap */
	int64_t used_bytes;
	memoutbox_event *ledger; /* every event captured, in seq order */
	size_t n_ledger, cap_ledger;
	size_t *pending; /* ledger indices of pending events, in seq order */
	size_t n_pending, cap_pending;
	size_t n_hidden;
	int fail_next[MO_NOPS];
	memoutbox_fault_fn fault;
	memoutbox_delete_fn on_delete;
	void *hook_ctx;
	/* figures */
	int64_t n_evicted, n_refused, n_set_aside, n_recovered, n_faults[MO_NOPS];
};

void memoutbox__init(memoutbox *ob, const char *boot);
void memoutbox__free(memoutbox *ob);

/* Fill the outbox half of `io` (read, oldest, ack, reject; ctx = ob). */
void memoutbox__io(memoutbox *ob, delivery__io *io);

/* Append one event with the next seq. `body` (a JSON object, copied) and
 * `id` (copied; NULL: a UUID-shaped id made from the seq). Under the cap,
 * evictable events go first (reco_shown, then member_scan, oldest first);
 * a paid event takes what it needs, an evictable one is stored only if it
 * then fits. Returns the seq, or 0 when refused (outbox full). */
int64_t memoutbox__capture(memoutbox *ob, int kind, const char *id, int64_t wall_ms, int64_t mono_ms, int clock_ok,
			   const char *body, int damage);
/* Evict up to n evictable events in eviction order (a capture by another
 * process made room). Returns how many went. */
size_t memoutbox__evict(memoutbox *ob, size_t n);
/* The seq counter jumps forward by delta (a fresh outbox after a quarantine). */
void memoutbox__jump(memoutbox *ob, int64_t delta);
/* Move one pending event into the quarantined file. 0, or -1 if not pending. */
int memoutbox__hide(memoutbox *ob, int64_t seq);
/* Put every hidden event back, with "recovered":true. Returns how many. */
size_t memoutbox__recover_all(memoutbox *ob);

int memoutbox__kind_paid(int kind);
const char *memoutbox__kind_name(int kind);
/* The ledger entry for seq, NULL if no event was captured with it. */
memoutbox_event *memoutbox__find(memoutbox *ob, int64_t seq);
/* Lowest pending seq, optionally ignoring recovered events; 0 if none. */
int64_t memoutbox__oldest_pending(const memoutbox *ob, int skip_recovered);
/* First pending seq in (lo, hi) exclusive, 0 if none. */
int64_t memoutbox__pending_between(const memoutbox *ob, int64_t lo, int64_t hi);
size_t memoutbox__hidden_count(const memoutbox *ob);

/* The io functions themselves (delivery__io), ctx = memoutbox *. */
int memoutbox__read(void *ctx, int64_t after_seq, size_t max_events, size_t max_bytes, size_t hard_bytes, sbuf *out,
		    delivery__read *r);
int memoutbox__oldest(void *ctx, int64_t *seq);
int memoutbox__ack(void *ctx, const int64_t (*ranges)[2], size_t n, int64_t *deleted);
int memoutbox__reject(void *ctx, int64_t seq, const char *reason);

#endif
