/* SPDX-License-Identifier: Apache-2.0 */
/*
 * birth: the daemon's side of presence (docs/protocol.md, "Presence"): the
 * persisted birth sequence — each connection's birth and will carry the
 * next one, so a will that overtakes a newer birth is recognisably older —
 * and the identity a presence message announces, read from the running
 * config (proto/fleet.h builds the payload itself).
 */
#ifndef SCRM_BIRTH_H
#define SCRM_BIRTH_H

#include "config.h"
#include "fleet.h"

#include <stdint.h>

/* The next birth sequence number: max(stored + 1, now_ms), stored in
 * `<dir>/birth_seq` atomically before it is used, so it only ever grows —
 * across restarts, a quarantined outbox and a wall clock stepped back. */
int64_t fleet__next_birth_seq(const char *dir, int64_t now_ms);

/* The presence fields of the running config (borrowed from it). */
fleet__ident birth__ident(const config *cfg);
/* fleet__state_json() for the device `cfg` runs as. */
void birth__state_json(sbuf *out, const config *cfg, const char *state, const char *reason, int64_t birth_seq,
		       int64_t now_ms, int64_t started_ms, const char *boot, const char *cache_json);

#endif
