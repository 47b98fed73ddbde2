/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ack: central's down/ack payload (docs/protocol.md, "Acknowledgement"),
 * parsed and validated — pure, no I/O, so fuzz_ack reaches it alone. The
 * names are the delivery state machine's (delivery.h), which applies what
 * this parses.
 */
#ifndef SCRM_ACK_H
#define SCRM_ACK_H

#include <stddef.h>
#include <stdint.h>

/* sync.batch_max_events at most (the config's bound), and so the most
 * entries one ack needs: central answers one batch at a time. */
#define DELIVERY_MAX_BATCH_EVENTS 10000
/* Entries in an ack's `acked` and in its `rejected`, each (protocol.md). */
#define DELIVERY_ACK_MAX_RANGES DELIVERY_MAX_BATCH_EVENTS

/* A parsed down/ack payload (docs/protocol.md, "Acknowledgement"). */
typedef struct delivery__rejection {
	int64_t seq;  /* 1 <= seq <= 2^53, an integer */
	char *reason; /* owned; "unspecified" when absent */
} delivery__rejection;

typedef struct delivery__ack {
	char batch[64];        /* "" when absent */
	int64_t (*acked)[2];   /* owned; inclusive ranges, 1 <= first <= last <= 2^53 */
	size_t n_acked;
	delivery__rejection *rejected; /* owned */
	size_t n_rejected;
	int64_t resend_from;   /* 0 when absent */
} delivery__ack;

/* Parse and validate a down/ack payload (borrowed, need not be
 * NUL-terminated). SCRM_OK with *ack filled (release with
 * delivery__ack_free), or SCRM_E_INVALID with the reason in scrm_errmsg():
 * the whole ack is then ignored, so a malformed ack can never delete an
 * event. At most DELIVERY_ACK_MAX_RANGES entries in `acked` and in
 * `rejected`. No I/O, any thread. */
int delivery__parse_ack(const char *payload, size_t len, delivery__ack *ack);
void delivery__ack_free(delivery__ack *ack);

#endif
