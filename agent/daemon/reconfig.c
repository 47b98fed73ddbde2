/* SPDX-License-Identifier: Apache-2.0 */
/*
 * reconfig: a new config while running — SIGHUP's reload of the local file
 * and overlay, the fleet command config.set (daemon/commands/cmd_config.c),
 * what each change applies (log, limits, settings pushed to the store and
 * the cache, a new MQTT client) — and the probation of a remote broker
 * change: confirmed once connected, rolled back at its deadline or after
 * too many starts on it.
 */
#include "daemon.h"

#include "err.h"
#include "guide.h"
#include "log.h"
#include "platform.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The disk reserve (outbox.reserve): made at start and again once space
 * returns after a full disk released it. */
void reconfig__keep_reserve(struct sync *s)
{
	int in_place = 0;
	char q[300];
	if (outbox__reserve_ensure(s->ob, s->cfg->disk_reserve_bytes, &in_place) != SCRM_OK)
		LOG(LOG_WARN, "sync", "cannot keep the disk reserve", "err=%s", log__q(q, sizeof(q), scrm_errmsg()));
	else if (!in_place && s->cfg->disk_reserve_bytes > 0)
		LOG(LOG_WARN, "sync", "no disk reserve: the disk has too little free space for it",
		    "reserve_bytes=%lld", (long long)s->cfg->disk_reserve_bytes);
}

/* Settings capture-side code reads from the store and the cache. */
void reconfig__push_settings(struct sync *s)
{
	const config *cfg = s->cfg;
	char q[600];
	if (outbox__setting_set(s->ob, "attribution_window_ms", cfg->attribution_window_ms) != SCRM_OK)
		LOG(LOG_WARN, "sync", "cannot record settings in the store", "err=%s", log__q(q, sizeof(q), scrm_errmsg()));
	if (outbox__set_limits(s->ob, cfg->outbox_max_bytes, cfg->outbox_reserve_bytes) != SCRM_OK)
		LOG(LOG_WARN, "sync", "cannot record the outbox limits in the store", "err=%s", log__q(q, sizeof(q), scrm_errmsg()));
	if (outbox__setting_set(s->ob, "disk_reserve_bytes", cfg->disk_reserve_bytes) != SCRM_OK)
		LOG(LOG_WARN, "sync", "cannot record the disk reserve in the store", "err=%s", log__q(q, sizeof(q), scrm_errmsg()));
	reconfig__keep_reserve(s);
	if (s->cache) {
		guide__policy pol = {
			.just_bought_ms = cfg->just_bought_days * 86400000LL,
			.history_ms = cfg->history_days * 86400000LL,
			.half_life_days = cfg->half_life_days,
			.new_days = cfg->new_days,
			.sleeping_days = cfg->sleeping_days,
			.lost_days = cfg->lost_days,
			.churn_factor_pct = cfg->churn_factor_pct,
			.online_fresh_ms = cfg->online_fresh_ms,
		};
		sbuf pj;
		sbuf__init(&pj);
		guide__policy_json(&pol, &pj);
		if (pj.oom || cache__set_policy(s->cache, pj.p) != SCRM_OK)
			LOG(LOG_WARN, "cache", "cannot record the guide policy in the cache", "err=%s",
			    log__q(q, sizeof(q), scrm_errmsg()));
		sbuf__free(&pj);
		if (cache__set_identity(s->cache, cfg->tenant, cfg->phone_cc) != SCRM_OK)
			LOG(LOG_WARN, "cache", "cannot record the tenant in the cache", "err=%s",
			    log__q(q, sizeof(q), scrm_errmsg()));
	}
}

void reconfig__apply_log_settings(struct sync *s)
{
	const config *cfg = s->cfg;
	/* --log-level, then a log.level command (until restart, reload or a
	 * change of log.level), then the config. */
	if (s->level_override)
		log__set_level(log__parse_level(s->level_override));
	else if (s->cmd_level >= 0)
		log__set_level(s->cmd_level);
	else
		log__set_level(log__parse_level(cfg->log_level));
	log__configure(cfg->log_syslog, cfg->log_file, cfg->log_file_max_bytes);
}

/* Swap in `next` (moved; zeroed on return) and apply what changed. */
void reconfig__apply(struct sync *s, config *next, int cls, const char *source)
{
	config old = s->cfg_own;
	int reconnect = config__needs_reconnect(&old, next);
	s->cfg_own = *next;
	memset(next, 0, sizeof(*next));
	backoff__init(&s->bo, s->cfg->backoff_min_ms, s->cfg->backoff_max_ms);
	uplink__set_window(s);
	reconfig__apply_log_settings(s);
	reconfig__push_settings(s);
	/* Operations see the new config_version a second later, not a
	 * period later. */
	s->next_heartbeat_ms = platform__mono_ms() + 1000;
	if (!s->cfg->overlay_previous)
		s->probation_ms = 0;
	if (cls == CFG_RESTART)
		LOG(LOG_WARN, "sync", "some changed settings apply only at the next start", "source=%s", source);
	if (reconnect)
		s->reconnect_pending = 1;
	config__free(&old);
}

/* After a change of broker settings: confirm once connected, or roll back
 * to the previous overlay at the deadline. */
void reconfig__probation_settle(struct sync *s, int rollback)
{
	sbuf text;
	char q[400];
	sbuf__init(&text);
	s->probation_ms = 0;
	if (config__overlay_settle(s->cfg, rollback, platform__wall_ms(), &text) != SCRM_OK ||
	    config__write_overlay(s->cfg, text.p) != SCRM_OK) {
		LOG(LOG_ERROR, "fleet", "cannot settle the remote config", "err=%s", log__q(q, sizeof(q), scrm_errmsg()));
		sbuf__free(&text);
		return;
	}
	sbuf__free(&text);
	if (!rollback) {
		free(s->cfg_own.overlay_previous);
		s->cfg_own.overlay_previous = NULL;
		LOG(LOG_INFO, "fleet", "remote broker settings confirmed", "config_version=%lld", (long long)s->cfg->config_version);
		return;
	}
	config next;
	if (config__load_all(s->cfg->path, &next) != SCRM_OK) {
		LOG(LOG_ERROR, "fleet", "cannot reload the config to roll back", "err=%s", log__q(q, sizeof(q), scrm_errmsg()));
		return;
	}
	snprintf(s->last_rollback, sizeof(s->last_rollback),
		 "config_version %lld not connected within %llds; back to the previous settings as version %lld",
		 (long long)s->cfg->config_version, (long long)s->cfg->probation_s, (long long)next.config_version);
	LOG(LOG_ERROR, "fleet", "remote broker settings ROLLED BACK: no connection with them", "detail=%s",
	    log__q(q, sizeof(q), s->last_rollback));
	reconfig__apply(s, &next, CFG_RECONNECT, "rollback");
}

/* At start, a broker change still on probation (the agent stopped, crashed
 * or was killed by the watchdog before confirming it): keep the deadline set
 * when the change was applied — re-arming it at every start let a change
 * that gets the agent killed within the probation never be rolled back —
 * count this start, and roll back at once if the deadline has passed or the
 * agent has now started CONFIG_PROBATION_MAX_STARTS times on it. Runs
 * before anything uses the broker settings. */
void reconfig__probation_at_start(struct sync *s)
{
	config *cfg = &s->cfg_own;
	sbuf text;
	char q[400], why[120];
	if (!cfg->overlay_previous)
		return;
	int64_t wall = platform__wall_ms(), full = cfg->probation_s * 1000;
	int64_t starts = cfg->probation_starts + 1;
	int64_t left = cfg->probation_deadline_ms ? cfg->probation_deadline_ms - wall : full;
	why[0] = '\0';
	if (left <= 0)
		snprintf(why, sizeof(why), "its deadline passed %llds ago", (long long)(-left / 1000));
	else if (starts >= CONFIG_PROBATION_MAX_STARTS)
		snprintf(why, sizeof(why), "the agent started %lld times on it without connecting", (long long)starts);
	/* A wall clock stepped back (or a device that boots in 1970 until NTP
	 * answers) must not stretch it: at most a full probation from now. */
	if (left > full)
		left = full;
	sbuf__init(&text);
	if (!why[0]) {
		cfg->probation_deadline_ms = wall + left;
		cfg->probation_starts = starts;
		if (config__overlay_restate(cfg, starts, &text) != SCRM_OK || config__write_overlay(cfg, text.p) != SCRM_OK)
			LOG(LOG_WARN, "fleet", "cannot record this start in the remote config", "err=%s",
			    log__q(q, sizeof(q), scrm_errmsg()));
		s->probation_ms = platform__mono_ms() + left;
		LOG(LOG_WARN, "fleet", "remote broker settings still on probation", "config_version=%lld left_ms=%lld start=%lld of %d",
		    (long long)cfg->config_version, (long long)left, (long long)starts, CONFIG_PROBATION_MAX_STARTS - 1);
		sbuf__free(&text);
		return;
	}
	config next;
	if (config__overlay_settle(cfg, 1, wall, &text) != SCRM_OK || config__write_overlay(cfg, text.p) != SCRM_OK ||
	    config__load_all(cfg->path, &next) != SCRM_OK) {
		LOG(LOG_ERROR, "fleet", "cannot roll back the remote config", "err=%s", log__q(q, sizeof(q), scrm_errmsg()));
		s->probation_ms = platform__mono_ms(); /* the loop tries again */
		sbuf__free(&text);
		return;
	}
	sbuf__free(&text);
	snprintf(s->last_rollback, sizeof(s->last_rollback),
		 "config_version %lld not connected within %llds (%s); back to the previous settings as version %lld",
		 (long long)cfg->config_version, (long long)cfg->probation_s, why, (long long)next.config_version);
	LOG(LOG_ERROR, "fleet", "remote broker settings ROLLED BACK: no connection with them", "detail=%s",
	    log__q(q, sizeof(q), s->last_rollback));
	config__free(cfg);
	*cfg = next;
}

/* SIGHUP: the local file (and overlay) again. */
void reconfig__reload(struct sync *s)
{
	config next;
	sbuf keys;
	char q[600];
	int cls = -1;
	if (config__load_all(s->cfg->path, &next) != SCRM_OK) {
		LOG(LOG_ERROR, "sync", "SIGHUP: config refused; keeping the running one", "err=%s",
		    log__q(q, sizeof(q), scrm_errmsg()));
		return;
	}
	if (strcmp(next.tenant, s->cfg->tenant) || strcmp(next.store_id, s->cfg->store_id) ||
	    strcmp(next.device_id, s->cfg->device_id) || strcmp(next.store_dir, s->cfg->store_dir)) {
		LOG(LOG_ERROR, "sync", "SIGHUP: tenant, store_id, device_id or store_dir changed; restart the agent to apply",
		    NULL);
		config__free(&next);
		return;
	}
	sbuf__init(&keys);
	config__diff(s->cfg, &next, &keys, &cls);
	LOG(LOG_INFO, "sync", "SIGHUP: config reloaded", "changed=%s config_version=%lld",
	    log__q(q, sizeof(q), keys.oom ? "?" : keys.p), (long long)next.config_version);
	sbuf__free(&keys);
	if (next.overlay_error)
		LOG(LOG_ERROR, "sync", "remote config ignored", "reason=%s", log__q(q, sizeof(q), next.overlay_error));
	/* Applied even when no effective value changed: the overlay's
	 * version or contents may have. */
	s->cmd_level = -1;
	if (next.command_key_file && s->cfg->command_key_file ? strcmp(next.command_key_file, s->cfg->command_key_file) != 0
							    : next.command_key_file != s->cfg->command_key_file) {
		/* The key in force stays what the running config shows. */
		LOG(LOG_WARN, "fleet", "fleet.command_key_file changed: applies at the next start", NULL);
		free(next.command_key_file);
		next.command_key_file = s->cfg->command_key_file ? strdup(s->cfg->command_key_file) : NULL;
	}
	reconfig__apply(s, &next, cls < 0 ? CFG_LIVE : cls, "sighup");
}
