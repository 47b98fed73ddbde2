/* SPDX-License-Identifier: Apache-2.0 */
/*
 * backoff: reconnect delays — capped exponential with full jitter (AWS
 * architecture blog's "full jitter"): delay = random(0, min(cap, base*2^n)).
 * 5,000 stores coming back after a regional outage then spread their
 * reconnects over the window instead of hitting the broker in lock-step.
 * Pure logic: the caller supplies the random source, so tests are exact.
 */
#ifndef SCRM_BACKOFF_H
#define SCRM_BACKOFF_H

#include <stdint.h>

typedef struct backoff {
	int64_t base_ms, cap_ms;
	unsigned attempt;
} backoff;

void backoff__init(backoff *b, int64_t base_ms, int64_t cap_ms);
/* Next delay in [0, min(cap, base*2^attempt)] given a uniform random
 * 32-bit value; advances the attempt counter. */
int64_t backoff__next(backoff *b, uint32_t random32);
/* Upper bound the next call would draw from (for logs and tests). */
int64_t backoff__ceiling(const backoff *b);
/* Connected, or the link came back: start again from the base. */
void backoff__reset(backoff *b);

#endif
