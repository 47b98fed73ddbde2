/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outboxrow: the row the outbox tests append when any event will do — a
 * member scan of member "m<n>" with id ...-<n> — and the storage its
 * strings live in, which must outlive the append. Include after outbox.h.
 */
#ifndef SCRM_TESTS_UNIT_OUTBOXROW_H
#define SCRM_TESTS_UNIT_OUTBOXROW_H

#include <stdio.h>
#include <string.h>

typedef struct rowbuf {
	char id[37];
	char body[64];
} rowbuf;

/* Fill `r` with scan number `n`, its strings in `b`. */
static inline void outboxrow_scan(outbox__row *r, rowbuf *b, int n, int64_t wall_ms, int64_t mono_ms,
				  const char *boot)
{
	snprintf(b->id, sizeof(b->id), "0190a000-0000-7000-8000-%012d", n);
	snprintf(b->body, sizeof(b->body), "{\"member_id\":\"m%d\",\"method\":\"qr\"}", n);
	memset(r, 0, sizeof(*r));
	r->id = b->id;
	r->kind = "member_scan";
	r->wall_ms = wall_ms;
	r->mono_ms = mono_ms;
	r->boot = boot;
	r->body = b->body;
	r->body_len = strlen(b->body);
}

#endif
