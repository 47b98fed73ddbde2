/* SPDX-License-Identifier: Apache-2.0 */
/*
 * memcentral: central's side of event delivery, in memory, following
 * docs/protocol.md ("Event batch", "Set-aside events", "Acknowledgement",
 * "Delivery, deduplication and ordering") to the letter — unlike the
 * reference central (tests/central), which is more lenient. Per device it
 * keeps `contiguous`, every settled seq (stored event, set-aside marker,
 * rejected event), the jumps it made (`base` gaps, `after` step-overs), the
 * conflicts and duplicate sales it kept aside and the protocol violations it saw (an event
 * stored below `contiguous` that central did not hold and that is not
 * marked "recovered": the device claimed something it did not have).
 *
 * Everything here is the durable store: a central restart keeps it (the
 * simulator drops the acks it had not sent yet). Several consumers share
 * one memcentral: batches are handled one at a time, in whatever order the
 * consumers take them.
 *
 * Single-threaded; the handle owns everything in it.
 */
#ifndef SCRM_SIM_MEMCENTRAL_H
#define SCRM_SIM_MEMCENTRAL_H

#include "sbuf.h"

#include <stddef.h>
#include <stdint.h>

enum memcentral_settled {
	MC_STORED,
	MC_MARKER,
	MC_REJECTED,
	MC_DUPLICATE_ORDER, /* a new seq with an order_id / return_id already held: kept aside, acked, not a sale */
};

typedef struct memcentral_record {
	int64_t seq;
	int type;        /* enum memcentral_settled */
	char id[37];     /* "" when a marker had none */
	char kind[16];
	char ref[40];    /* the body's "ref" (the simulator's check token), "" if none */
	int recovered;   /* the copy stored was marked "recovered":true */
	int late;        /* stored with seq <= contiguous (not held) */
	char reason[96]; /* MC_REJECTED */
} memcentral_record;

typedef struct memcentral_jump {
	int64_t from, to; /* inclusive */
	int by_base;      /* 1: `base` gap, 0: `after` step-over */
} memcentral_jump;

typedef struct memcentral_device {
	char name[64];
	int64_t contiguous;
	memcentral_record *rec; /* the store, in the order settled */
	size_t n_rec, cap_rec;
	size_t *map; /* open addressing: seq -> index + 1 into rec */
	size_t map_cap;
	memcentral_jump *jumps;
	size_t n_jumps, cap_jumps;
	memcentral_record *conflicts; /* kept aside: same seq, another id */
	size_t n_conflicts, cap_conflicts;
	int64_t *violations; /* seqs stored below contiguous, not held, not recovered */
	size_t n_violations, cap_violations;
	char (*orders)[80]; /* "purchase:<order_id>", "return:<return_id>" held */
	size_t n_orders, cap_orders;
	size_t *order_map; /* open addressing: hash -> index + 1 into orders */
	size_t order_map_cap;
	int64_t n_batches, n_new, n_markers, n_dup, n_rejected, n_late, n_holes, n_unackable, n_duplicate_orders;
} memcentral_device;

typedef struct memcentral_opts {
	uint64_t salt;      /* for the random rejections */
	int reject_permille; /* events refused by central's "validation", at random */
	int coalesce_gaps;  /* ack ranges also span seqs an `after` declared missing */
} memcentral_opts;

typedef struct memcentral {
	memcentral_opts opt;
	memcentral_device *dev;
	size_t n_dev, cap_dev;
} memcentral;

void memcentral__init(memcentral *c, const memcentral_opts *opt);
void memcentral__free(memcentral *c);

/* Handle one up/events payload (borrowed) from `device`: store durably,
 * then write the down/ack payload into `ack` (reset first). 0, or -1 when
 * the batch is dropped as malformed (no ack; `why` says why, may be NULL). */
int memcentral__handle(memcentral *c, const char *device, const char *payload, size_t len, sbuf *ack,
		       const char **why);

/* The device's state, NULL if it never sent a batch. */
memcentral_device *memcentral__device(memcentral *c, const char *device);
/* What central holds for (device, seq), NULL if nothing. */
const memcentral_record *memcentral__held(const memcentral_device *d, int64_t seq);

#endif
