/* SPDX-License-Identifier: Apache-2.0 */
/*
 * health: what the device tells operations about itself (docs/protocol.md,
 * "Presence", "Heartbeat"): the heartbeat on up/health (also the `status`
 * command's result), the birth on up/state, and whether the clock can be
 * trusted (which commands may run, clock_ok).
 */
#include "daemon.h"

#include "birth.h"
#include "heartbeat.h"
#include "err.h"
#include "log.h"
#include "platform.h"

#include <scrm/scrm.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Whether an event captured now would be clock_ok (outbox.c's rule: the
 * build date, steps against the trusted offset, NTP), *ck its detail; the
 * build date alone if the store cannot be read. */
int health__clock_trusted_ex(struct sync *s, int64_t wall, struct outbox__clock *ck)
{
	memset(ck, 0, sizeof(*ck));
	ck->synced = -1;
	if (s->ob && outbox__clock_state(s->ob, wall, platform__mono_ms(), s->boot, (int64_t)SCRM_BUILD_EPOCH * 1000, ck) ==
			     SCRM_OK)
		return ck->trusted;
	return wall >= (int64_t)SCRM_BUILD_EPOCH * 1000;
}

int health__clock_trusted(struct sync *s, int64_t wall)
{
	struct outbox__clock ck;
	return health__clock_trusted_ex(s, wall, &ck);
}

/* Cursor, rows and age per cache stream, from cache__status. */
void health__cache_figures(struct sync *s, sbuf *out, int64_t now)
{
	sbuf st;
	cJSON *o = NULL;
	sbuf__init(&st);
	if (!s->cache || cache__status(s->cache, &st) != SCRM_OK || st.oom || !(o = cJSON_Parse(st.p))) {
		sbuf__puts(out, "null");
		goto out;
	}
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(o, "streams"), *it;
	int first = 1;
	sbuf__puts(out, "{");
	cJSON_ArrayForEach(it, arr)
	{
		const cJSON *name = cJSON_GetObjectItemCaseSensitive(it, "stream");
		const cJSON *cur = cJSON_GetObjectItemCaseSensitive(it, "cursor");
		const cJSON *rows = cJSON_GetObjectItemCaseSensitive(it, "rows");
		const cJSON *app = cJSON_GetObjectItemCaseSensitive(it, "applied_ms");
		if (!cJSON_IsString(name))
			continue;
		int64_t applied = cJSON_IsNumber(app) ? (int64_t)app->valuedouble : 0;
		if (!first)
			sbuf__puts(out, ",");
		first = 0;
		sbuf__jstr(out, name->valuestring);
		sbuf__puts(out, ":{\"cursor\":");
		sbuf__i64(out, cJSON_IsNumber(cur) ? (int64_t)cur->valuedouble : 0);
		sbuf__puts(out, ",\"rows\":");
		sbuf__i64(out, cJSON_IsNumber(rows) ? (int64_t)rows->valuedouble : 0);
		sbuf__puts(out, ",\"applied_ms\":");
		sbuf__i64(out, applied);
		sbuf__puts(out, ",\"age_ms\":");
		if (applied > 0)
			sbuf__i64(out, now - applied);
		else
			sbuf__puts(out, "null");
		sbuf__puts(out, "}");
	}
	sbuf__puts(out, "}");
out:
	cJSON_Delete(o);
	sbuf__free(&st);
}

/* The heartbeat body, also the `status` command's result. */
void health__json(struct sync *s, sbuf *out)
{
	static const char *const lv[] = {"error", "warn", "info", "debug"};
	int64_t now = platform__wall_ms();
	scrm_outbox_stats st;
	char stats_err[300] = "";
	memset(&st, 0, sizeof(st));
	/* An outbox that cannot be read is shown as an error, never as zeros
	 * ("nothing pending") that would hide a store that stopped sending. */
	if (outbox__stats(s->ob, &st) != SCRM_OK)
		snprintf(stats_err, sizeof(stats_err), "%s", scrm_errmsg());
	else if (s->dl.last_error_ms)
		snprintf(stats_err, sizeof(stats_err), "%s", s->dl.last_error);
	heartbeat__figures f = {
		.now = now,
		.device = s->cfg->device_id,
		.version = scrm_version(),
		.birth_seq = s->birth_seq,
		.config_version = s->cfg->config_version,
		.heartbeat_s = s->cfg->heartbeat_s,
		.started_ms = s->started_ms,
		.uptime_ms = platform__mono_ms() - s->started_mono,
		.connected = s->connected,
		.connected_since_ms = s->connected_since_ms,
		.window_used = s->dl.nwin,
		.published = s->dl.n_published,
		.acked = s->dl.n_acked,
		.redeliveries = s->dl.n_redeliveries,
		.st = st,
		.stats_err = stats_err,
		.error_since_ms = s->dl.last_error_ms ? s->dl.last_error_ms : now,
		.erasure_pending = s->erasure_pending,
		.log_level = lv[log__threshold & 3],
		.commands = s->n_commands,
		.config_error = s->cfg->overlay_error,
		.config_rollback = s->last_rollback,
	};
	struct outbox__health h;
	int64_t aside = 0, verdicts[3], disk[2] = {0, 0};
	/* Read only when the outbox's figures are shown (heartbeat.c), as
	 * before the payload moved to proto/. Bounded storage: the cap, what it
	 * cost, paid captures refused; events kept in dead_letter (central sent
	 * a marker). */
	if (!(stats_err[0] && !st.last_seq)) {
		if (outbox__health(s->ob, &h) == SCRM_OK)
			f.oh = &h;
		if (outbox__set_aside_count(s->ob, &aside) == SCRM_OK)
			f.set_aside = &aside;
	}
	sbuf al, cf, r;
	cJSON *o = NULL;
	sbuf__init(&al);
	sbuf__init(&cf);
	sbuf__init(&r);
	if (outbox__alarms(s->ob, &al) == SCRM_OK && !al.oom && al.p)
		f.alarms = al.p;
	health__cache_figures(s, &cf, now);
	f.cache = cf.oom ? NULL : cf.p;
	if (outbox__redemptions(s->ob, 1, &r) == SCRM_OK && !r.oom && (o = cJSON_Parse(r.p))) {
		const char *names[] = {"pending", "accepted", "rejected"};
		for (int i = 0; i < 3; i++) {
			const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, names[i]);
			verdicts[i] = cJSON_IsNumber(v) ? (int64_t)v->valuedouble : 0;
		}
		f.verdicts = verdicts;
	}
	if (platform__disk_space(s->cfg->store_dir, &disk[0], &disk[1]) == 0)
		f.disk = disk;
	struct outbox__clock ck;
	f.clock_trusted = health__clock_trusted_ex(s, now, &ck);
	f.clock_step_ms = ck.step_ms;
	f.ntp_synced = ck.synced;
	f.rss_bytes = platform__rss_bytes();
	heartbeat__json(out, &f);
	cJSON_Delete(o);
	sbuf__free(&r);
	sbuf__free(&cf);
	sbuf__free(&al);
}

void health__publish(struct sync *s)
{
	s->next_heartbeat_ms = platform__mono_ms() + s->cfg->heartbeat_s * 1000;
	if (!s->connected || !s->subscribed)
		return;
	sbuf__reset(&s->fb);
	health__json(s, &s->fb);
	if (s->fb.oom || mqtt__publish(s->mq, s->topic_health, s->fb.p, s->fb.len, 1, 1, NULL) != SCRM_OK)
		LOG(LOG_WARN, "fleet", "cannot publish the heartbeat", NULL);
}

void health__birth(struct sync *s)
{
	sbuf c;
	sbuf__init(&c);
	health__cache_figures(s, &c, platform__wall_ms());
	birth__state_json(&s->fb, s->cfg, "online", NULL, s->birth_seq, platform__wall_ms(), s->started_ms, s->boot,
			  c.oom ? NULL : c.p);
	sbuf__free(&c);
	if (s->fb.oom || mqtt__publish(s->mq, s->topic_state, s->fb.p, s->fb.len, 1, 1, NULL) != SCRM_OK)
		LOG(LOG_WARN, "fleet", "cannot publish the birth message", NULL);
	else
		LOG(LOG_INFO, "fleet", "online", "birth_seq=%lld config_version=%lld", (long long)s->birth_seq,
		    (long long)s->cfg->config_version);
}
