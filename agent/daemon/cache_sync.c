/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cache_sync: the customer cache's streams from central (docs/protocol.md,
 * "Customer cache"): deltas and snapshot chunks on down/cache/{stream}
 * (the store's and the device's), resync requests on up/cache/resync when a
 * stream needs a snapshot, and an erasure's part in the outbox and the
 * quarantined files.
 */
#include "daemon.h"

#include "err.h"
#include "log.h"
#include "paths.h"
#include "platform.h"
#include "quarantine.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Erasure, inside the cache transaction: redact the outbox first, so a
 * crash in between repeats the redaction rather than skipping it. */
int cache_sync__forget(void *ctx, const char *member_id)
{
	struct sync *s = ctx;
	int64_t n = 0;
	int q = 0;
	int rc = outbox__redact_member(s->ob, member_id, &n);
	/* Damaged files set aside under quarantine/ hold copies too; a
	 * failure there fails the erasure (retried when sent again). */
	int e = quarantine__erase_member(s->cfg->store_dir, member_id, &q);
	if (e == 0) {
		/* A damaged cache is set aside in the private directory's own
		 * quarantine/ (paths.h): its copies go too. */
		char priv[4096];
		int q2 = 0;
		if (paths__private(s->cfg->store_dir, NULL, priv, sizeof(priv)) == SCRM_OK)
			e = quarantine__erase_member(priv, member_id, &q2);
		q += q2;
	}
	if (e != 0 && (rc == SCRM_OK || rc == SCRM_E_BUSY)) {
		LOG(LOG_ERROR, "cache", "cannot erase a member from the quarantined files", "dir=%s/%s err=\"%s\"",
		    s->cfg->store_dir, QUARANTINE_DIR, strerror(-e));
		return err__set(SCRM_E_IO, "erasure: cannot redact %s/%s: %s", s->cfg->store_dir, QUARANTINE_DIR,
				strerror(-e));
	}
	/* The erased person's id is not written to the log. */
	(void)member_id;
	if (rc == SCRM_E_BUSY) {
		/* Redacted in every table; the WAL's old copies are scrubbed
		 * once readers let go (idle, or the command's reply). */
		s->erasure_pending = 1;
		rc = SCRM_OK;
	}
	if (rc == SCRM_OK)
		LOG(LOG_INFO, "cache", "member forgotten", "pending_events_redacted=%lld quarantined_files=%d", (long long)n,
		    q);
	else
		LOG(LOG_ERROR, "cache", "cannot redact the outbox for an erasure", "err=\"%s\"", scrm_errmsg());
	return rc;
}

/* Ask central for the next stream that needs a snapshot, if it is time. */
void cache_sync__pump(struct sync *s)
{
	int st;
	if (!s->cache || !s->connected || !s->subscribed)
		return;
	if (!cache__next_request(s->cache, platform__mono_ms(), &s->req, &st))
		return;
	if (s->req.oom || mqtt__publish(s->mq, s->topic_resync, s->req.p, s->req.len, 1, 0, NULL) != SCRM_OK) {
		/* Left "in flight": asked again after the snapshot timeout, not
		 * at once (an immediate retry would spin the loop). */
		LOG(LOG_WARN, "cache", "cannot send a resync request; will retry", "stream=%s", cache__stream_name(st));
		return;
	}
	LOG(LOG_INFO, "cache", "resync requested", "stream=%s request=%s", cache__stream_name(st), s->req.p);
}

/* What each outcome of cache__apply() says in the log: its level, its
 * message and, after stream=, up to three of its figures in order. */
#define FIG(name, field) {name, offsetof(cache__outcome, field)}
static const struct outcome_line {
	int level;
	const char *msg;
	struct {
		const char *name;
		size_t off; /* of an int64_t in cache__outcome */
	} fig[3];
} outcome_lines[] = {
	[CA_APPLIED] = {LOG_DEBUG, "delta applied", {FIG("version", version), FIG("ops", ops)}},
	[CA_DUPLICATE] = {LOG_DEBUG, "duplicate delta ignored", {FIG("version", version), FIG("cursor", cursor)}},
	[CA_GAP] = {LOG_INFO, "cache gap; asking for a resync", {FIG("cursor", cursor), FIG("delta_version", version)}},
	[CA_BUFFERED] = {LOG_DEBUG, "delta kept for after the snapshot", {FIG("version", version)}},
	[CA_CHUNK] = {LOG_DEBUG, "snapshot chunk staged", {FIG("chunk", chunk), FIG("chunks", chunks)}},
	[CA_SWAPPED] = {LOG_INFO, "snapshot swapped in", {FIG("version", version), FIG("cursor", cursor), FIG("chunks", chunks)}},
	[CA_IGNORED] = {LOG_DEBUG, "snapshot chunk out of sequence ignored", {FIG("chunk", chunk)}},
};
#undef FIG

static void log_outcome(const cache__outcome *o)
{
	char kv[256];
	/* An outcome without a row (a new one) is not logged rather than
	 * read past the table. */
	if ((size_t)o->what >= sizeof(outcome_lines) / sizeof(outcome_lines[0]) || !outcome_lines[o->what].msg)
		return;
	const struct outcome_line *l = &outcome_lines[o->what];
	if (l->level > log__threshold)
		return;
	snprintf(kv, sizeof(kv), "stream=%s", cache__stream_name(o->stream));
	for (size_t i = 0; i < 3 && l->fig[i].name; i++) {
		int64_t v;
		size_t n = strlen(kv);
		memcpy(&v, (const char *)o + l->fig[i].off, sizeof(v));
		snprintf(kv + n, sizeof(kv) - n, " %s=%lld", l->fig[i].name, (long long)v);
	}
	log__write(l->level, "cache", l->msg, "%s", kv);
}

/* `stream`: the topic's last level (topics__cache_stream), borrowed. */
void cache_sync__on_message(struct sync *s, const char *topic, const char *stream, const char *payload, size_t len)
{
	cache__outcome o;
	char q[600];
	int rc = cache__apply(s->cache, stream, payload, len, cache_sync__forget, s, &o);
	if (rc != SCRM_OK) {
		LOG(LOG_WARN, "cache", "cache delta refused", "topic=%s bytes=%zu err=%s", topic, len,
		    log__q(q, sizeof(q), scrm_errmsg()));
		if (o.stream >= 0 && rc != SCRM_E_BUSY && rc != SCRM_E_IO && rc != SCRM_E_DISK_FULL)
			cache__want(s->cache, o.stream, "refused");
		cache_sync__pump(s);
		return;
	}
	if (o.refused)
		LOG(LOG_WARN, "cache", "cache record refused", "stream=%s refused=%lld first=%s", cache__stream_name(o.stream),
		    (long long)o.refused, log__q(q, sizeof(q), cache__refused_detail(s->cache)));
	log_outcome(&o);
	cache_sync__pump(s);
}

/* At start (cache.enabled): open the customer cache, checked; s->cache is
 * NULL when it cannot open. */
void cache_sync__open(struct sync *s)
{
	const config *cfg = s->cfg;
	cache__options co = {.keys_dir = cfg->keys_dir,
			     .create = 1,
			     .max_message_bytes = (size_t)cfg->cache_max_message_bytes,
			     .snapshot_timeout_ms = cfg->snapshot_timeout_ms,
			     .check = 1};
	char q[600];
	/* The cache is rebuildable: if it cannot open, sales still flow;
	 * a damaged one is moved to quarantine/ and fetched again. */
	if (cache__open(cfg->store_dir, &co, &s->cache) != SCRM_OK) {
		LOG(LOG_ERROR, "cache", "cannot open the customer cache; running without it", "dir=%s err=%s",
		    cfg->store_dir, log__q(q, sizeof(q), scrm_errmsg()));
		s->cache = NULL;
	}
	/* identity and policy: reconfig__push_settings(), after the outbox */
	if (s->cache && cache__quarantined(s->cache)) {
		LOG(LOG_ERROR, "cache", "the customer cache was damaged: moved to quarantine, fetching it again",
		    "quarantined=%s", cache__quarantined(s->cache));
		if (outbox__alarm_raise(s->ob, "cache_quarantined", cache__quarantine_detail(s->cache),
					platform__wall_ms()) != SCRM_OK)
			LOG(LOG_WARN, "cache", "cannot raise the cache_quarantined alarm", "err=%s",
			    log__q(q, sizeof(q), scrm_errmsg()));
	}
	if (s->cache) {
		sbuf st;
		sbuf__init(&st);
		if (cache__status(s->cache, &st) == SCRM_OK)
			LOG(LOG_INFO, "cache", "cache opened", "status=%s", log__q(q, sizeof(q), st.p));
		sbuf__free(&st);
	}
}
