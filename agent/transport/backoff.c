/* SPDX-License-Identifier: Apache-2.0 */
/* backoff: capped exponential backoff with full jitter (see backoff.h). */
#include "backoff.h"

void backoff__init(backoff *b, int64_t base_ms, int64_t cap_ms)
{
	b->base_ms = base_ms > 0 ? base_ms : 1;
	b->cap_ms = cap_ms >= b->base_ms ? cap_ms : b->base_ms;
	b->attempt = 0;
}

int64_t backoff__ceiling(const backoff *b)
{
	int64_t c = b->base_ms;
	for (unsigned i = 0; i < b->attempt && c < b->cap_ms; i++)
		c *= 2;
	return c < b->cap_ms ? c : b->cap_ms;
}

int64_t backoff__next(backoff *b, uint32_t r)
{
	int64_t ceil = backoff__ceiling(b);
	if (b->attempt < 64)
		b->attempt++;
	/* Uniform in [0, ceil] without modulo bias worth caring about at
	 * these magnitudes (ceil << 2^32). */
	return (int64_t)(((uint64_t)r * (uint64_t)(ceil + 1)) >> 32);
}

void backoff__reset(backoff *b)
{
	b->attempt = 0;
}
