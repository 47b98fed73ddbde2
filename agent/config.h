/* SPDX-License-Identifier: Apache-2.0 */
/*
 * config: the daemon's JSON configuration. One table (config.c) lists every
 * key with its type, default, bounds and one line of documentation;
 * loading validates against it — an unknown key, a wrong type or a value out
 * of bounds is an error naming the key and its line in the file.
 */
#ifndef SCRM_CONFIG_H
#define SCRM_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef struct config {
	/* identity */
	char *tenant, *store_id, *device_id;
	char *store_dir;
	/* broker */
	char *broker_uri; /* normalised to ssl:// or tcp:// */
	char *ca_file, *cert_file, *key_file, *username, *password_file;
	int allow_plaintext;
	int64_t keepalive_s, session_expiry_s, connect_timeout_s;
	/* sync */
	int64_t batch_max_events, batch_max_bytes, window, ack_timeout_ms;
	int64_t backoff_min_ms, backoff_max_ms;
	/* cache */
	int cache_enabled;
	char *keys_dir, *phone_cc;
	int64_t cache_max_message_bytes, snapshot_timeout_ms, activity_days;
	int64_t just_bought_days, history_days, half_life_days, attribution_window_ms, online_fresh_ms;
	int64_t new_days, sleeping_days, lost_days, churn_factor_pct;
	/* log */
	char *log_level;
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
/* Print the key table as documentation (scrm-agent --help-config). */
void config__print_keys(void);

#endif
