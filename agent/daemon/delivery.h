/* SPDX-License-Identifier: Apache-2.0 */
/*
 * delivery: the delivery state machine of the outbox towards central
 * (docs/protocol.md, "Event batch", "Acknowledgement", "Delivery,
 * deduplication and ordering"), kept pure the way coreMQTT keeps its MQTT
 * state machine pure: it owns the window of published, unacknowledged
 * batches, go-back-N, the batch's `base` and `after`, the application of
 * central's acks and the redelivery timer — and nothing else. The outbox,
 * the publisher, the clocks and batch ids reach it through delivery__io, so
 * the daemon (uplink.c) runs it over SQLite and Paho, and the seeded fault
 * simulator (tests/sim/) over an in-memory outbox and central.
 *
 * The invariants it keeps (each one a way to lose or wedge a sale if broken):
 *   - an event leaves the outbox only through io.ack (central's ack named
 *     its seq) or io.reject (central refused it for good);
 *   - `base` of a batch is never above a pending event: every seq below it
 *     was acknowledged (or dropped by the device). When the outbox cannot be
 *     read, base is unknown and nothing is published until it is read again;
 *   - `after` never covers a pending event: no pending event lies between it
 *     and the batch's first, nor between two events of the batch;
 *   - a failed read or write anywhere on the ack path leaves the window as
 *     it was (the batches then time out and go back), never "done".
 *
 * Threads: one owner (the daemon's loop). No allocation after init except
 * the two growable buffers.
 */
#ifndef SCRM_DELIVERY_H
#define SCRM_DELIVERY_H

#include "ack.h"
#include "sbuf.h"

#include <stddef.h>
#include <stdint.h>

/* sync.window at most (the config's bound). */
#define DELIVERY_MAX_WINDOW 64
/* Room kept in a message for the batch envelope around its events. */
#define DELIVERY_ENVELOPE_BYTES 256

/* What the outbox read gives back. */
typedef struct delivery__read {
	size_t count;        /* events appended to `out`, 0 = nothing pending past after_seq */
	int64_t first, last; /* their first and last seq */
} delivery__read;

/* The outside world. Every function returns SCRM_OK or a scrm_err with
 * scrm_errmsg() set. `ctx` is passed back as is. */
typedef struct delivery__io {
	void *ctx;
	/* Append the pending events with seq > after_seq, in seq order, as the
	 * batch's JSON event objects joined by commas, to `out`: at most
	 * max_events, and no more than max_bytes of them unless the first
	 * alone is larger; an event that alone exceeds hard_bytes (0: no
	 * limit: the broker's Maximum Packet Size) must not be returned as
	 * is (the outbox sets it aside and returns its marker instead). */
	int (*read)(void *ctx, int64_t after_seq, size_t max_events, size_t max_bytes, size_t hard_bytes, sbuf *out,
		    delivery__read *r);
	/* Lowest pending seq, 0 if the outbox is empty. */
	int (*oldest)(void *ctx, int64_t *seq);
	/* Delete the acknowledged inclusive ranges; *deleted = rows removed. */
	int (*ack)(void *ctx, const int64_t (*ranges)[2], size_t n, int64_t *deleted);
	/* Move one event central refused to the local rejected table. */
	int (*reject)(void *ctx, int64_t seq, const char *reason);
	/* Publish one batch (QoS 1) on up/events. */
	int (*publish)(void *ctx, const char *payload, size_t len);
	int64_t (*mono_ms)(void *ctx);
	int64_t (*wall_ms)(void *ctx);
	/* A new batch id (36 characters + NUL). */
	int (*batch_id)(void *ctx, int64_t wall_ms, char out[37]);
} delivery__io;

typedef struct delivery__settings {
	int window;                 /* batches in flight, 1..DELIVERY_MAX_WINDOW */
	size_t batch_max_events;    /* 1..DELIVERY_MAX_BATCH_EVENTS */
	size_t batch_max_bytes;     /* soft: a message's size, unless one event alone is larger */
	size_t max_payload;         /* hard: the broker's limit on a message's payload, 0 = none */
	int64_t ack_timeout_ms;
} delivery__settings;

struct delivery__batch {
	char id[37];
	int64_t first, last;
	int64_t deadline_ms; /* monotonic */
	size_t bytes;        /* payload size, for a lowered broker limit */
};

typedef struct delivery {
	delivery__io io;
	delivery__settings set;
	int up;              /* connected and subscribed: batches may go out */
	int64_t sent_upto;   /* highest seq published in this round, 0 = none */
	int64_t base;        /* oldest pending seq at the last read, 0 = empty */
	int base_known;      /* 0: that read failed; publish nothing until it works */
	struct delivery__batch win[DELIVERY_MAX_WINDOW];
	int nwin;
	sbuf buf, events;
	/* figures for the heartbeat and the shutdown line */
	int64_t n_published, n_acked, n_redeliveries, n_read_errors, n_ack_errors;
	int64_t last_error_ms; /* wall; 0 = no error since the last success */
	char last_error[240];
} delivery;


/* `io` copied. The settings must be given before the first pump. */
void delivery__init(delivery *d, const delivery__io *io, const delivery__settings *set);
void delivery__free(delivery *d);
/* New settings; they apply to the next batch read. A window made smaller
 * keeps the batches already in flight. */
void delivery__configure(delivery *d, const delivery__settings *set);

/* The link came up (connected and subscribed: every unacknowledged event
 * goes again, from the oldest) or went down. `why` is logged. */
void delivery__link(delivery *d, int up, const char *why);
/* Go back to the oldest unacknowledged event now (flush command, outbox
 * replaced, ...). */
void delivery__go_back(delivery *d, const char *why);
/* Publish batches while the window has room and events are pending.
 * SCRM_OK, or the read's error (the window is left as it was). */
int delivery__pump(delivery *d);
/* Apply central's ack, then pump. */
void delivery__on_ack(delivery *d, const ack__msg *ack);
/* Timers: an unacknowledged batch past its deadline → go back and pump. */
void delivery__tick(delivery *d);
/* Monotonic time of the next timer, 0 if none. */
int64_t delivery__deadline(const delivery *d);
/* Largest payload among the batches in flight (a broker limit lowered
 * under them means they must not be resent as they are). */
size_t delivery__inflight_max_bytes(const delivery *d);

/* The `base` of a batch about to be published: the lowest of
 * `outbox_oldest` (oldest pending seq at the last read, 0 if the outbox was
 * empty then), `inflight_first` (first seq of the oldest batch still
 * unacknowledged, 0 if none) and `first` (this batch's first seq); zeros
 * are ignored. Pure. */
int64_t delivery__batch_base(int64_t outbox_oldest, int64_t inflight_first, int64_t first);

#endif
