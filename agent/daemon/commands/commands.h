/* SPDX-License-Identifier: Apache-2.0 */
/*
 * commands: what the agent does for each fleet command (docs/protocol.md,
 * "Commands"). The names, their clock policy and help are registered once
 * in proto/commands.def; parsing, signatures and replies are proto/fleet.c.
 * A handler sees a cmd__ctx — the running config, the outbox, the cache,
 * the delivery state machine and a few hooks back into the daemon — never
 * the daemon's whole state, so a unit test can run one without a broker.
 *
 * Handlers (one file per domain):
 *   cmd_diag.c    ping, status, log.level, logs.recent
 *   cmd_outbox.c  flush, alarm.clear
 *   cmd_cache.c   resync, cache.purge, member.forget
 *   cmd_config.c  config.get, config.set
 * Each returns 0 with its JSON result appended to `res`, or -1 with *err
 * filled (fleet__fail).
 */
#ifndef SCRM_COMMANDS_H
#define SCRM_COMMANDS_H

#include "cache.h"
#include "config.h"
#include "delivery.h"
#include "fleet.h"
#include "outbox.h"
#include "sbuf.h"

#include <stdint.h>

typedef struct cmd__ctx {
	const config *cfg;     /* the running config (replaced in place by config.set) */
	outbox *ob;
	cache *cache;          /* NULL: no customer cache */
	delivery *dl;          /* may be NULL: flush then only checkpoints */
	int64_t birth_seq;     /* of the current connection */
	int64_t started_mono;  /* monotonic start of the agent */
	int *cmd_level;        /* the log.level command in force, -1 = none */
	int *erasure_pending;  /* an erasure's old bytes are still in outbox.db-wal */
	int64_t *probation_ms; /* monotonic deadline of a broker change; 0 = none */
	/* The daemon behind the hooks; a hook may be NULL (a test without it). */
	void *d;
	void (*health)(void *d, sbuf *out);   /* the heartbeat's body */
	void (*cache_pump)(void *d);          /* ask central for what the cache wants */
	int (*forget)(void *d, const char *member_id); /* the outbox's part of an erasure */
	void (*apply_config)(void *d, config *next, int cls, const char *source); /* takes *next over */
} cmd__ctx;

typedef int cmd__handler(cmd__ctx *c, const fleet__cmd *cmd, sbuf *res, fleet__error *err);

#define SCRM_COMMAND(name, handler, any_clock, args, help) cmd__handler handler;
#include "commands.def"
#undef SCRM_COMMAND

/* The handler registered for `name` (commands.def), or NULL. */
cmd__handler *cmd__find(const char *name);

/* Run a parsed command: 0 with its result in `res`, or -1 with *err
 * (unknown_command for a name without a handler). */
int cmd__run(cmd__ctx *c, const fleet__cmd *cmd, sbuf *res, fleet__error *err);

#endif
