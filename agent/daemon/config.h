/* SPDX-License-Identifier: Apache-2.0 */
/*
 * config: the daemon's JSON configuration. One table (config_keys.def) lists
 * every key with its type, default, bounds, how a change takes effect,
 * whether central may set it and one line of documentation;
 * loading validates against it — an unknown key, a wrong type or a value out
 * of bounds is an error naming the key and its line in the file.
 */
#ifndef SCRM_CONFIG_H
#define SCRM_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "sbuf.h"

typedef struct config {
	/* identity */
	char *tenant, *store_id, *device_id;
	char *store_dir;
	/* broker */
	char *broker_uri; /* normalised to ssl:// or tcp:// */
	char *ca_file, *cert_file, *key_file, *crl_file, *username, *password_file;
	int allow_plaintext;
	int64_t keepalive_s, session_expiry_s, connect_timeout_s;
	char *remote_hosts; /* broker.remote_hosts: local only; NULL/"" = no remote broker.uri */
	/* sync */
	int64_t batch_max_events, batch_max_bytes, window, ack_timeout_ms;
	int64_t verdict_query_s;
	int64_t disk_reserve_bytes;
	int64_t backoff_min_ms, backoff_max_ms;
	/* cache */
	int cache_enabled;
	char *keys_dir, *phone_cc;
	int64_t cache_max_message_bytes, snapshot_timeout_ms, activity_days;
	int64_t just_bought_days, history_days, half_life_days, attribution_window_ms, online_fresh_ms;
	int64_t new_days, sleeping_days, lost_days, churn_factor_pct;
	/* outbox (bounded storage; reserve -1 = auto) */
	int64_t outbox_max_bytes, outbox_reserve_bytes;
	/* fleet */
	int64_t heartbeat_s, probation_s;
	int commands_enabled;
	char *command_key_file;
	/* log */
	char *log_level, *log_file;
	int log_syslog;
	int64_t log_file_max_bytes;
	/* the remote overlay (fleet config.set), see config__load_all */
	char *path;              /* the local file this was loaded from */
	int64_t config_version;  /* the overlay's version, 0 = none */
	char *overlay_set;       /* JSON object text of the overlay's "set"; NULL = none */
	char *overlay_previous;  /* the "set" before a change still on probation; NULL = none */
	int64_t overlay_updated_ms;
	/* A change on probation: its wall-clock deadline (fixed when the change
	 * was applied, never re-armed by a restart) and how many times the
	 * agent has started since. 0 = none. */
	int64_t probation_deadline_ms, probation_starts;
	char *overlay_error;     /* why an overlay on disk was ignored; NULL = none */
	/* derived */
	int plaintext;      /* URI is tcp:// */
	char topic_prefix[300]; /* scrm/v1/{tenant}/{store}/{device}/ */
	char store_prefix[240];  /* scrm/v1/{tenant}/{store}/ */
} config;

/* Load and validate. On error returns SCRM_E_CONFIG with the detail in
 * scrm_errmsg() ("sync.window: must be between 1 and 64 (line 12)").
 * `text` borrowed; on success *cfg owns its strings (config__free). */
int config__parse(const char *text, size_t len, config *cfg);
int config__load(const char *path, config *cfg);
void config__free(config *cfg);
/* 1 if s is a valid tenant, store or device id (ident.h: [A-Za-z0-9_.-]{1,64},
 * not a word of the topic tree). */
int config__id_ok(const char *s);
/* mqtts:// / ssl:// → ssl://..., mqtt:// / tcp:// → tcp://... into *out
 * (malloc'd), *plaintext set; SCRM_E_CONFIG naming broker.uri otherwise. */
int config__normalise_uri(const char *uri, char **out, int *plaintext);
/* Print the key table as documentation (scrm-agent --help-config). */
void config__print_keys(void);

/* ---- remote configuration (fleet `config.set`, docs/protocol.md) ----
 * The local file (a package conffile, read-only to the daemon) stays as the
 * operator wrote it; values set by central live in an overlay,
 * `<store_dir>/config.remote.json`:
 *   {"v":1,"version":N,"updated_ms":T,"set":{"sync.window":4,...}}
 * Each key says how a change takes effect and whether central may set it. */
enum config__class {
	CFG_LIVE = 0,      /* applied at once */
	CFG_RECONNECT = 1, /* applied by reconnecting to the broker */
	CFG_RESTART = 2,   /* applied at the next start */
};
/* 0 with *cls and *remote filled, or -1 for an unknown key. */
int config__key_info(const char *key, int *cls, int *remote);
/* The local file, then the overlay on top. An overlay that no longer
 * validates (a key made local, a bound changed by an upgrade) is ignored:
 * the result is the local file alone with overlay_error saying why — a bad
 * file never stops the daemon. Errors only for the local file. */
int config__load_all(const char *path, config *cfg);
/* `<store_dir>/config.remote.json` */
void config__overlay_path(const config *cfg, char *buf, size_t n);
/* Apply `changes` (a JSON object: dotted key → new value, or null to go back
 * to the local file's value) to cur's overlay and validate the result as a
 * whole. On success: *next is the config that results (caller frees),
 * `overlay_text` the file to write (version cur+1; with "previous" when
 * `probation`), *changed a JSON array of the keys whose value changes and
 * *cls the strongest class among them. SCRM_E_CONFIG naming the key
 * otherwise ("sync.window: must be between 1 and 64, got 100"); nothing is
 * written. */
int config__propose(const config *cur, const char *changes, size_t len, int64_t now_ms, config *next,
		    sbuf *overlay_text, sbuf *changed, int *cls);
/* The overlay text for `cfg` with the probation marks removed (confirmed),
 * or the previous set restored (rolled back; version still moves on). */
int config__overlay_settle(const config *cfg, int rollback, int64_t now_ms, sbuf *overlay_text);
/* The overlay text for `cfg` as it is (still on probation), with its
 * probation start count set to `starts`: written at each start so a crash
 * loop during probation is counted across restarts. */
int config__overlay_restate(const config *cfg, int64_t starts, sbuf *overlay_text);
/* How many starts of the agent one probation survives without a
 * connection: the next start rolls back. */
#define CONFIG_PROBATION_MAX_STARTS 3
/* Write the overlay atomically (temp, fsync, rename, fsync dir). */
int config__write_overlay(const config *cfg, const char *text);
/* Every key with its effective value, as one flat JSON object. */
int config__to_json(const config *cfg, sbuf *out);
/* Whether a key applied by reconnecting (a broker setting) differs. */
int config__needs_reconnect(const config *a, const config *b);
/* Keys whose values differ between a and b (JSON array) and the strongest
 * class among them (-1 if none differ). */
int config__diff(const config *a, const config *b, sbuf *keys, int *cls);

#endif
