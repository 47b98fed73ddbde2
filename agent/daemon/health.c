/* SPDX-License-Identifier: Apache-2.0 */
/*
 * health: what the device tells operations about itself (docs/protocol.md,
 * "Presence", "Heartbeat"): the heartbeat on up/health (also the `status`
 * command's result), the birth on up/state, and whether the clock can be
 * trusted (which commands may run, clock_ok).
 */
#include "daemon.h"

#include "birth.h"
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
	sbuf__puts(out, "{\"v\":1,\"ts\":");
	sbuf__i64(out, now);
	sbuf__puts(out, ",\"device\":");
	sbuf__jstr(out, s->cfg->device_id);
	sbuf__puts(out, ",\"birth_seq\":");
	sbuf__i64(out, s->birth_seq);
	sbuf__puts(out, ",\"version\":");
	sbuf__jstr(out, scrm_version());
	sbuf__puts(out, ",\"config_version\":");
	sbuf__i64(out, s->cfg->config_version);
	sbuf__puts(out, ",\"heartbeat_s\":");
	sbuf__i64(out, s->cfg->heartbeat_s);
	sbuf__puts(out, ",\"started_ms\":");
	sbuf__i64(out, s->started_ms);
	sbuf__puts(out, ",\"uptime_ms\":");
	sbuf__i64(out, platform__mono_ms() - s->started_mono);

	sbuf__puts(out, ",\"link\":{\"connected\":");
	sbuf__puts(out, s->connected ? "true" : "false");
	sbuf__puts(out, ",\"since_ms\":");
	sbuf__i64(out, s->connected_since_ms);
	sbuf__puts(out, ",\"window_used\":");
	sbuf__i64(out, s->dl.nwin);
	sbuf__puts(out, ",\"published\":");
	sbuf__i64(out, s->dl.n_published);
	sbuf__puts(out, ",\"acked\":");
	sbuf__i64(out, s->dl.n_acked);
	sbuf__puts(out, ",\"redeliveries\":");
	sbuf__i64(out, s->dl.n_redeliveries);
	sbuf__puts(out, "}");

	if (stats_err[0] && !st.last_seq) {
		sbuf__puts(out, ",\"outbox\":{\"error\":");
		sbuf__jstr(out, stats_err);
		sbuf__puts(out, ",\"error_since_ms\":");
		sbuf__i64(out, s->dl.last_error_ms ? s->dl.last_error_ms : now);
		sbuf__puts(out, "}");
		goto alarms;
	}
	sbuf__puts(out, ",\"outbox\":{\"pending\":");
	sbuf__i64(out, st.pending);
	sbuf__puts(out, ",\"bytes\":");
	sbuf__i64(out, st.pending_bytes);
	sbuf__puts(out, ",\"oldest_pending_ms\":");
	sbuf__i64(out, st.oldest_pending_ms);
	sbuf__puts(out, ",\"oldest_age_ms\":");
	sbuf__i64(out, st.oldest_pending_ms ? now - st.oldest_pending_ms : 0);
	sbuf__puts(out, ",\"last_seq\":");
	sbuf__i64(out, st.last_seq);
	sbuf__puts(out, ",\"last_ack_ms\":");
	sbuf__i64(out, st.last_ack_ms);
	sbuf__puts(out, ",\"last_acked_seq\":");
	sbuf__i64(out, st.last_acked_seq);
	sbuf__puts(out, ",\"rejected\":");
	sbuf__i64(out, st.rejected);
	{
		/* Bounded storage: the cap, what it cost, paid captures refused. */
		struct outbox__health h;
		if (outbox__health(s->ob, &h) == SCRM_OK) {
			sbuf__puts(out, ",\"stored_bytes\":");
			sbuf__i64(out, h.bytes);
			sbuf__puts(out, ",\"max_bytes\":");
			sbuf__i64(out, h.max_bytes);
			sbuf__puts(out, ",\"reserve_bytes\":");
			sbuf__i64(out, h.reserve_bytes);
			sbuf__puts(out, ",\"in_reserve\":");
			sbuf__puts(out, h.in_reserve ? "true" : "false");
			sbuf__puts(out, ",\"refused_paid\":");
			sbuf__i64(out, h.refused_paid);
			sbuf__puts(out, ",\"dropped\":{");
			for (size_t i = 0; i < h.n_dropped; i++) {
				if (i)
					sbuf__puts(out, ",");
				sbuf__jstr(out, h.dropped[i].kind);
				sbuf__puts(out, ":");
				sbuf__i64(out, h.dropped[i].count);
			}
			sbuf__puts(out, "}");
		}
		{
			/* events kept in dead_letter, central sent a marker */
			int64_t aside = 0;
			if (outbox__set_aside_count(s->ob, &aside) == SCRM_OK) {
				sbuf__puts(out, ",\"set_aside\":");
				sbuf__i64(out, aside);
			}
		}
	}
	if (stats_err[0]) {
		sbuf__puts(out, ",\"error\":");
		sbuf__jstr(out, stats_err);
		sbuf__puts(out, ",\"error_since_ms\":");
		sbuf__i64(out, s->dl.last_error_ms ? s->dl.last_error_ms : now);
	}
	sbuf__puts(out, "}");
alarms:
	{
		sbuf al;
		sbuf__init(&al);
		sbuf__puts(out, ",\"alarms\":");
		if (outbox__alarms(s->ob, &al) == SCRM_OK && !al.oom && al.p)
			sbuf__put(out, al.p, al.len);
		else
			sbuf__puts(out, "[]");
		if (stats_err[0]) {
			/* Raised here, not in the store: the store may be what
			 * cannot be written. */
			if (out->len && out->p[out->len - 1] == ']') {
				out->len--;
				if (out->p[out->len - 1] != '[')
					sbuf__putc(out, ',');
				sbuf__puts(out, "{\"code\":\"outbox_unreadable\",\"since_ms\":");
				sbuf__i64(out, s->dl.last_error_ms ? s->dl.last_error_ms : now);
				sbuf__puts(out, ",\"last_ms\":");
				sbuf__i64(out, now);
				sbuf__puts(out, ",\"count\":1,\"detail\":");
				sbuf__jstr(out, stats_err);
				sbuf__puts(out, "}]");
			}
		}
		sbuf__free(&al);
	}
	if (s->erasure_pending)
		sbuf__puts(out, ",\"erasure_pending\":true");

	sbuf__puts(out, ",\"cache\":");
	health__cache_figures(s, out, now);

	{
		sbuf r;
		cJSON *o = NULL;
		sbuf__init(&r);
		sbuf__puts(out, ",\"verdicts\":");
		if (outbox__redemptions(s->ob, 1, &r) == SCRM_OK && !r.oom && (o = cJSON_Parse(r.p))) {
			const char *names[] = {"pending", "accepted", "rejected"};
			sbuf__puts(out, "{");
			for (int i = 0; i < 3; i++) {
				const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, names[i]);
				if (i)
					sbuf__puts(out, ",");
				sbuf__jstr(out, names[i]);
				sbuf__puts(out, ":");
				sbuf__i64(out, cJSON_IsNumber(v) ? (int64_t)v->valuedouble : 0);
			}
			sbuf__puts(out, "}");
		} else {
			sbuf__puts(out, "null");
		}
		cJSON_Delete(o);
		sbuf__free(&r);
	}

	int64_t avail = 0, total = 0;
	if (platform__disk_space(s->cfg->store_dir, &avail, &total) == 0) {
		sbuf__puts(out, ",\"disk\":{\"free_bytes\":");
		sbuf__i64(out, avail);
		sbuf__puts(out, ",\"total_bytes\":");
		sbuf__i64(out, total);
		sbuf__puts(out, "}");
	} else {
		sbuf__puts(out, ",\"disk\":null");
	}
	{
		struct outbox__clock ck;
		int trusted = health__clock_trusted_ex(s, now, &ck);
		sbuf__puts(out, ",\"clock\":{\"trusted\":");
		sbuf__puts(out, trusted ? "true" : "false");
		sbuf__puts(out, ",\"wall_ms\":");
		sbuf__i64(out, now);
		/* a step of the wall clock against the trusted offset, waiting
		 * to be confirmed (protocol.md, clock_ok) */
		sbuf__puts(out, ",\"step_ms\":");
		sbuf__i64(out, ck.step_ms);
		sbuf__puts(out, ",\"ntp_synced\":");
		sbuf__puts(out, ck.synced < 0 ? "null" : ck.synced ? "true" : "false");
		sbuf__puts(out, "}");
	}
	sbuf__puts(out, ",\"rss_bytes\":");
	sbuf__i64(out, platform__rss_bytes());
	sbuf__puts(out, ",\"log_level\":");
	{
		static const char *const lv[] = {"error", "warn", "info", "debug"};
		sbuf__jstr(out, lv[log__threshold & 3]);
	}
	sbuf__puts(out, ",\"commands\":");
	sbuf__i64(out, s->n_commands);
	if (s->cfg->overlay_error) {
		sbuf__puts(out, ",\"config_error\":");
		sbuf__jstr(out, s->cfg->overlay_error);
	}
	if (s->last_rollback[0]) {
		sbuf__puts(out, ",\"config_rollback\":");
		sbuf__jstr(out, s->last_rollback);
	}
	sbuf__puts(out, "}");
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
