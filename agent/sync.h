/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sync: the daemon's loop. It owns the outbox connection, the MQTT client and
 * the delivery window: it publishes batches of pending events in seq order,
 * deletes them only on central's application-level ack, redelivers from the
 * oldest unacknowledged event on ack timeout or reconnect (go-back-N), and
 * reconnects with capped exponential backoff and full jitter — at once when
 * the network comes back. It sleeps in poll() between events: new captures
 * wake it through a datagram socket in the store directory (platform.h).
 */
#ifndef SCRM_SYNC_H
#define SCRM_SYNC_H

#include "config.h"

#include <stddef.h>
#include <stdint.h>

/* A parsed down/ack payload (docs/protocol.md, "Acknowledgement"). */
typedef struct sync__rejection {
	int64_t seq;  /* 1 <= seq <= 2^53, an integer */
	char *reason; /* owned; "unspecified" when absent */
} sync__rejection;

typedef struct sync__ack {
	char batch[64];        /* "" when absent */
	int64_t (*acked)[2];   /* owned; inclusive ranges, 1 <= first <= last <= 2^53 */
	size_t n_acked;
	sync__rejection *rejected; /* owned */
	size_t n_rejected;
	int64_t resend_from;   /* 0 when absent */
} sync__ack;

/* Parse and validate a down/ack payload (borrowed, need not be
 * NUL-terminated). SCRM_OK with *ack filled (release with sync__ack_free),
 * or SCRM_E_INVALID with the reason in scrm_errmsg(): the whole ack is then
 * ignored, so a malformed ack can never delete an event. No I/O, any thread. */
int sync__parse_ack(const char *payload, size_t len, sync__ack *ack);
void sync__ack_free(sync__ack *ack);

/* A coupon verdict from central (down/verdict, protocol.md). */
typedef struct sync__verdict {
	char redemption[37];
	int accepted;
	char reason[33];  /* "" when accepted */
	char detail[201];
	int64_t ts;       /* 0 when absent */
} sync__verdict;

/* Parse and validate a verdict payload; SCRM_E_INVALID names the field. */
int sync__parse_verdict(const char *payload, size_t len, sync__verdict *v);

/* The `base` of a batch about to be published (every seq below it has been
 * acknowledged by central): the lowest of `outbox_oldest` (oldest pending
 * seq at the last ack or go-back, 0 if the outbox was empty then),
 * `inflight_first` (first seq of the oldest batch still unacknowledged, 0 if
 * none) and `first` (this batch's first seq); zeros are ignored. Pure. */
int64_t sync__batch_base(int64_t outbox_oldest, int64_t inflight_first, int64_t first);

/* Run until SIGTERM/SIGINT (clean exit, 0) or a fatal error (non-zero).
 * Signals must already be blocked in all threads (sigmask inherited).
 * Takes the config over (*cfg is zeroed; SIGHUP and the fleet command
 * config.set replace it while running). level_override: --log-level (may
 * be NULL), which wins over log.level across reloads. */
int sync__run(config *cfg, const char *level_override);

#endif
