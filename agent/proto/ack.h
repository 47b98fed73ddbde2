/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ack: central's down/ack payload (docs/protocol.md, "Acknowledgement"),
 * parsed and validated — pure, no I/O, so fuzz_ack reaches it alone. The
 * delivery state machine (daemon/delivery.h) applies what this parses.
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
typedef struct ack__rejection {
	int64_t seq;  /* 1 <= seq <= 2^53, an integer */
	char *reason; /* owned; "unspecified" when absent */
} ack__rejection;

typedef struct ack__msg {
	char batch[64];        /* "" when absent */
	int64_t (*acked)[2];   /* owned; inclusive ranges, 1 <= first <= last <= 2^53 */
	size_t n_acked;
	ack__rejection *rejected; /* owned */
	size_t n_rejected;
	int64_t resend_from;   /* 0 when absent */
} ack__msg;

/* Parse and validate a down/ack payload (borrowed, need not be
 * NUL-terminated). SCRM_OK with *ack filled (release with ack__free), or
 * SCRM_E_INVALID with the reason in scrm_errmsg(): the whole ack is then
 * ignored, so a malformed ack can never delete an event. At most DELIVERY_ACK_MAX_RANGES entries in `acked` and in
 * `rejected`. No I/O, any thread. */
int ack__parse(const char *payload, size_t len, ack__msg *ack);
void ack__free(ack__msg *ack);

#endif
