/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fleet: the device side of fleet management (docs/protocol.md, "Fleet
 * management") as the protocol defines it: the presence messages (birth and
 * will, retained on `up/state`) and fleet commands — the names the agent
 * knows (commands.def), parsing, signature and replay checks, argument
 * checks and replies. Executing a command is the daemon's business
 * (daemon/commands/), and so are the files: the birth sequence
 * (daemon/birth.c) and the replay guard's record (daemon/replay.c, which
 * fleet__seen's save hook reaches). Pure: no I/O.
 */
#ifndef SCRM_FLEET_H
#define SCRM_FLEET_H

#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "sbuf.h"

/* Larger commands are refused unread (too_big). */
#define FLEET_MAX_COMMAND_BYTES 65536
/* A signed command must expire at most this far in the future. */
#define FLEET_MAX_EXPIRY_MS (24LL * 3600 * 1000)
/* Unexpired signed command ids the replay guard holds at most: beyond it
 * new signed commands are refused (`unavailable`) rather than an id
 * forgotten before its command expires. */
#define FLEET_SEEN_MAX 10000

/* Why a command was not obeyed: `code` is one of protocol.md's error codes,
 * `field` the offending field ("" if none), `message` for a human. */
typedef struct fleet__error {
	char code[24];
	char field[64];
	char message[240];
} fleet__error;

struct cJSON;

/* A command of commands.def. */
typedef struct fleet__command_info {
	const char *name;
	int any_clock; /* obeyed while the clock is untrusted */
	const char *args, *help;
} fleet__command_info;

/* commands.def, in its order. */
extern const fleet__command_info fleet__commands[];
extern const size_t fleet__n_commands;
/* The registered command called `name`, or NULL. */
const fleet__command_info *fleet__command_find(const char *name);

typedef struct fleet__cmd {
	char id[65];            /* "" when absent (unsigned commands only) */
	char name[24];          /* "ping", "config.set", ... */
	struct cJSON *root;     /* owned: the command object */
	const struct cJSON *args; /* borrowed from root; an object, maybe empty */
	int64_t expires_ms;     /* 0 = none */
	int is_signed;
} fleet__cmd;

/* The replay guard: every signed command id obeyed (or about to be) whose
 * command has not expired yet — a signed command carries expires_ms at most
 * FLEET_MAX_EXPIRY_MS ahead, so an id is kept exactly as long as its
 * command could still be accepted, and dropped after (not after a count).
 * Zero-initialised = empty and in memory only. */
typedef struct fleet__seen_id {
	char id[65];
	int64_t expires_ms;
} fleet__seen_id;

typedef struct fleet__seen {
	fleet__seen_id *ids; /* unordered */
	size_t n, cap;
	int broken;          /* its record exists but cannot be read: no signed command is obeyed */
	/* Keeping the ids across restarts is the record owner's (the daemon's
	 * file, daemon/replay.h). When `save` is set, fleet__parse_command()
	 * calls it with `save_ctx` once a signed command's id is added, before
	 * the command may run: 0, or -errno and the command is refused. NULL =
	 * memory only. `where` names the record in messages (borrowed; NULL
	 * when there is none). */
	int (*save)(const struct fleet__seen *seen, void *ctx);
	void *save_ctx;
	const char *where;
} fleet__seen;

/* Parse and check one `down/cmd` payload (borrowed, need not be
 * NUL-terminated). A signed command must name this `tenant`, `store` and
 * `device_id`. `vf`: central's command key, or NULL to accept unsigned
 * commands (a signed one is then refused: it cannot be checked). `seen` may
 * be NULL (no replay guard). `now_ms`: wall clock; `clock_ok`: whether it
 * can be trusted for the expiry check. On success *cmd is filled (release
 * with fleet__cmd_free) and may be executed: a signed command's id is then
 * in `seen` and, when `seen` has a save hook, already saved — if it cannot
 * be saved the command is refused (`failed`), never run unrecorded.
 * Otherwise -1 with *err filled, and *cmd carries whatever id/name could be
 * read (for the error reply). */
int fleet__parse_command(const char *payload, size_t len, const char *tenant, const char *store,
			 const char *device_id, crypto__verifier *vf, int64_t now_ms, int clock_ok, fleet__seen *seen,
			 fleet__cmd *cmd, fleet__error *err);
void fleet__cmd_free(fleet__cmd *cmd);

/* Add an id read back from the record, expiring at expires_ms: 1 added, 0
 * skipped (not a valid command id, already held, or FLEET_SEEN_MAX held),
 * -1 out of memory. Does not call the save hook. */
int fleet__seen_add(fleet__seen *seen, const char *id, int64_t expires_ms);
/* Release the ids (the hook and its context are the owner's to release). */
void fleet__seen_free(fleet__seen *seen);

/* Fill *err; returns -1 so callers can `return fleet__fail(...)`. */
int fleet__fail(fleet__error *err, const char *code, const char *field, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Argument readers: 0, or -1 with *err naming "args.<name>". `*out` is left
 * untouched when an optional argument is absent. */
int fleet__arg_str(const fleet__cmd *cmd, const char *name, int required, size_t max_len, const char **out,
		   fleet__error *err);
int fleet__arg_int(const fleet__cmd *cmd, const char *name, int required, int64_t lo, int64_t hi, int64_t *out,
		   fleet__error *err);
/* The args object itself, serialised (caller frees), or NULL with *err. */
const struct cJSON *fleet__arg(const fleet__cmd *cmd, const char *name);

/* A reply: result_json (a JSON value, borrowed) on success, else *err.
 * "id" is left out when the command had none, "error.field" when err's
 * field is "" (docs/protocol.md, "Commands"). */
void fleet__reply(sbuf *out, const fleet__cmd *cmd, const char *result_json, const fleet__error *err,
		  int64_t now_ms);

/* Where to answer: the request's Response Topic if it lies under
 * `{prefix}up/reply` (a device may publish only under its own up/), else
 * the default `{prefix}up/reply`. Returns 1 if the requested topic was
 * used, 0 if the default was (out always filled). */
int fleet__reply_topic(const char *requested, const char *prefix, char *out, size_t n);

/* The target the agent was built for: "x86_64", "aarch64", "armhf", ... */
const char *fleet__arch(void);

/* Who a presence message speaks for, and what its birth announces (the
 * running config's fields; daemon/birth.h fills it from a config). */
typedef struct fleet__ident {
	const char *tenant, *store, *device;
	int64_t config_version;
	int64_t heartbeat_s;
	int signed_commands; /* fleet.command_key_file is set */
} fleet__ident;

/* The `up/state` payloads. state "online" (the birth; `cache_json` the
 * cache cursors, may be NULL) or "offline" (the will, or the clean
 * shutdown's last word, with `reason`). */
void fleet__state_json(sbuf *out, const fleet__ident *id, const char *state, const char *reason, int64_t birth_seq,
		       int64_t now_ms, int64_t started_ms, const char *boot, const char *cache_json);

#endif
