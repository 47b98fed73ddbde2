/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sync: outbox → MQTT → central ack (see sync.h and docs/protocol.md).
 *
 * Delivery state, all owned by the loop thread:
 *   sent_upto   highest seq published since the last go-back point
 *   win[]       published batches not yet acknowledged, oldest first
 * An event leaves the outbox only in outbox__ack(), i.e. when central's
 * down/ack names its seq. PUBACKs are only used to count messages the
 * broker holds; they never delete anything.
 */
#include "sync.h"

#include "backoff.h"
#include "err.h"
#include "guide.h"
#include "log.h"
#include "mqtt.h"
#include "outbox.h"
#include "platform.h"
#include "cache.h"
#include "sbuf.h"
#include "tlsprobe.h"
#include "uuid.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#define MAX_WINDOW 64
#define IDLE_CHECKPOINT_MS 60000
#define LINK_REFRESH_MS 30000
#define MAX_ACK_RANGES 4096

struct batch {
	char id[37];
	int64_t first, last;
	int64_t deadline_ms; /* monotonic */
};

struct sync {
	const config *cfg;
	outbox *ob;
	mqtt *mq;
	char topic_up[340], topic_down[340], topic_ack[340];
	char topic_store_cache[300], topic_resync[340], dev_cache_prefix[340];
	int connecting, connected, subscribed, subs_pending;
	cache *cache; /* NULL when cache.enabled is false or the cache failed to open */
	sbuf req;
	int window; /* effective: min(cfg window, Receive Maximum) */
	int64_t next_connect_ms; /* monotonic; 0 = none scheduled */
	backoff bo;
	int64_t sent_upto;
	int64_t base; /* oldest unacknowledged seq, as last read from the outbox */
	struct batch win[MAX_WINDOW];
	int nwin;
	sbuf buf, events; /* the batch message; its events, read first */
	int64_t last_activity_ms; /* monotonic */
	/* counters, for the shutdown summary */
	int64_t n_published, n_acked, n_redeliveries;
	unsigned fail_streak; /* connect failures since the last success */
	int64_t link_refresh_ms; /* monotonic: next refresh of the link row */
	char topic_verdict[340];
};

static uint32_t rand32(void)
{
	uint32_t r = 0;
	platform__random(&r, sizeof(r));
	return r;
}

static void go_back(struct sync *s, const char *why)
{
	int64_t oldest = 0;
	outbox__oldest_seq(s->ob, &oldest);
	s->base = oldest;
	if (s->nwin > 0) {
		s->n_redeliveries++;
		LOG(LOG_WARN, "sync", "redelivering unacknowledged events", "reason=%s from_seq=%lld batches=%d", why,
		    (long long)oldest, s->nwin);
	}
	s->nwin = 0;
	s->sent_upto = 0; /* read from the oldest pending again */
}

static void schedule_reconnect(struct sync *s, int64_t now)
{
	int64_t ceil = backoff__ceiling(&s->bo);
	int64_t d = backoff__next(&s->bo, rand32());
	s->next_connect_ms = now + d;
	LOG(LOG_INFO, "sync", "reconnect scheduled", "in_ms=%lld ceiling_ms=%lld", (long long)d, (long long)ceil);
}

static void start_connect(struct sync *s)
{
	s->connecting = 1;
	s->next_connect_ms = 0;
	LOG(LOG_DEBUG, "sync", "connecting", "uri=%s", s->cfg->broker_uri);
	if (mqtt__connect(s->mq) != SCRM_OK) {
		s->connecting = 0;
		LOG(LOG_ERROR, "sync", "connect call failed", "uri=%s", s->cfg->broker_uri);
		schedule_reconnect(s, platform__mono_ms());
	}
}

int64_t sync__batch_base(int64_t outbox_oldest, int64_t inflight_first, int64_t first)
{
	int64_t base = first;
	if (inflight_first > 0 && inflight_first < base)
		base = inflight_first;
	if (outbox_oldest > 0 && outbox_oldest < base)
		base = outbox_oldest;
	return base;
}

/* Publish batches while the window has room. */
static void pump(struct sync *s)
{
	if (!s->connected || !s->subscribed)
		return;
	while (s->nwin < s->window) {
		struct batch *b = &s->win[s->nwin];
		size_t count = 0;
		int64_t last = 0;
		int64_t now = platform__wall_ms();
		int64_t mono = platform__mono_ms();

		if (uuid__v7(now, b->id) != 0)
			return;
		sbuf__reset(&s->events);
		int rc = outbox__read_batch(s->ob, s->sent_upto, (size_t)s->cfg->batch_max_events,
					    (size_t)s->cfg->batch_max_bytes - 256, &s->events, &count, &last, &b->first);
		if (rc != SCRM_OK) {
			LOG(LOG_ERROR, "sync", "cannot read the outbox", "err=\"%s\"", scrm_errmsg());
			return;
		}
		if (count == 0) {
			LOG(LOG_DEBUG, "sync", "nothing more to send", "after_seq=%lld window_used=%d", (long long)s->sent_upto, s->nwin);
			return;
		}
		/* base: every seq below it is acknowledged; lets central tell a
		 * hole it must wait for from events it already acknowledged.
		 * s->base is 0 when the outbox was empty at the last ack: then the
		 * oldest unacknowledged event is the first of the oldest batch still
		 * in flight, never this batch's first (claiming that would let a
		 * central that lost the earlier batch skip past it). */
		int64_t base = sync__batch_base(s->base, s->nwin > 0 ? s->win[0].first : 0, b->first);
		sbuf__reset(&s->buf);
		sbuf__puts(&s->buf, "{\"v\":1,\"batch\":\"");
		sbuf__puts(&s->buf, b->id);
		sbuf__puts(&s->buf, "\",\"sent_ms\":");
		sbuf__i64(&s->buf, now);
		sbuf__puts(&s->buf, ",\"base\":");
		sbuf__i64(&s->buf, base);
		sbuf__puts(&s->buf, ",\"events\":[");
		sbuf__put(&s->buf, s->events.p, s->events.len);
		sbuf__puts(&s->buf, "]}");
		if (s->buf.oom)
			return;
		b->last = last;
		b->deadline_ms = mono + s->cfg->ack_timeout_ms;
		if (mqtt__publish(s->mq, s->topic_up, s->buf.p, s->buf.len, 1, 0, NULL) != SCRM_OK) {
			LOG(LOG_WARN, "sync", "publish refused by client", "batch=%s", b->id);
			return;
		}
		LOG(LOG_DEBUG, "sync", "batch published", "batch=%s first=%lld last=%lld events=%zu bytes=%zu", b->id,
		    (long long)b->first, (long long)b->last, count, s->buf.len);
		s->sent_upto = last;
		s->nwin++;
		s->n_published += (int64_t)count;
		s->last_activity_ms = mono;
	}
}

/* Drop window entries that are fully acknowledged. */
static void retire(struct sync *s, const int64_t (*ranges)[2], size_t nr)
{
	int64_t oldest = 0;
	outbox__oldest_seq(s->ob, &oldest);
	s->base = oldest;
	int j = 0;
	for (int i = 0; i < s->nwin; i++) {
		struct batch *b = &s->win[i];
		int done = oldest == 0 ? b->last <= s->sent_upto : b->last < oldest;
		for (size_t r = 0; !done && r < nr; r++)
			if (ranges[r][0] <= b->first && b->last <= ranges[r][1])
				done = 1;
		if (!done)
			s->win[j++] = *b;
	}
	s->nwin = j;
}

#define MAX_SEQ 9007199254740992.0 /* 2^53: exact in a JSON double */

/* A seq in an ack: a JSON number that is an integer in [1, 2^53]. */
static int seq_of(const cJSON *v, int64_t *out)
{
	if (!cJSON_IsNumber(v))
		return 0;
	double d = v->valuedouble;
	if (!(d >= 1.0 && d <= MAX_SEQ) || d != floor(d))
		return 0;
	*out = (int64_t)d;
	return 1;
}

void sync__ack_free(sync__ack *ack)
{
	if (!ack)
		return;
	for (size_t i = 0; i < ack->n_rejected; i++)
		free(ack->rejected[i].reason);
	free(ack->rejected);
	free(ack->acked);
	memset(ack, 0, sizeof(*ack));
}

int sync__parse_ack(const char *payload, size_t len, sync__ack *ack)
{
	int rc = SCRM_E_INVALID;
	cJSON *o = cJSON_ParseWithLength(payload, len);
	memset(ack, 0, sizeof(*ack));
	if (!o || !cJSON_IsObject(o)) {
		err__set(SCRM_E_INVALID, "ack: not a JSON object");
		goto out;
	}
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "v");
	if (!cJSON_IsNumber(v) || v->valuedouble != 1) {
		err__set(SCRM_E_INVALID, "v: unknown protocol version (expected 1)");
		goto out;
	}
	const cJSON *batch = cJSON_GetObjectItemCaseSensitive(o, "batch");
	if (batch && cJSON_IsString(batch))
		snprintf(ack->batch, sizeof(ack->batch), "%s", batch->valuestring);
	const cJSON *acked = cJSON_GetObjectItemCaseSensitive(o, "acked");
	if (acked) {
		if (!cJSON_IsArray(acked)) {
			err__set(SCRM_E_INVALID, "acked: must be an array of [first,last]");
			goto out;
		}
		int n = cJSON_GetArraySize(acked);
		if (n > MAX_ACK_RANGES) {
			err__set(SCRM_E_INVALID, "acked: %d ranges, at most %d", n, MAX_ACK_RANGES);
			goto out;
		}
		if (n > 0 && !(ack->acked = calloc((size_t)n, sizeof(*ack->acked)))) {
			rc = err__set(SCRM_E_NOMEM, "out of memory");
			goto out;
		}
		for (const cJSON *it = acked->child; it; it = it->next) {
			int64_t a, b;
			if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) != 2 || !seq_of(cJSON_GetArrayItem(it, 0), &a) ||
			    !seq_of(cJSON_GetArrayItem(it, 1), &b) || b < a) {
				err__set(SCRM_E_INVALID, "acked[%zu]: must be [first,last], integers with 1 <= first <= last", ack->n_acked);
				goto out;
			}
			ack->acked[ack->n_acked][0] = a;
			ack->acked[ack->n_acked][1] = b;
			ack->n_acked++;
		}
	}
	const cJSON *rej = cJSON_GetObjectItemCaseSensitive(o, "rejected");
	if (rej) {
		if (!cJSON_IsArray(rej)) {
			err__set(SCRM_E_INVALID, "rejected: must be an array");
			goto out;
		}
		int n = cJSON_GetArraySize(rej);
		if (n > MAX_ACK_RANGES) {
			err__set(SCRM_E_INVALID, "rejected: %d entries, at most %d", n, MAX_ACK_RANGES);
			goto out;
		}
		if (n > 0 && !(ack->rejected = calloc((size_t)n, sizeof(*ack->rejected)))) {
			rc = err__set(SCRM_E_NOMEM, "out of memory");
			goto out;
		}
		for (const cJSON *it = rej->child; it; it = it->next) {
			int64_t seq;
			const cJSON *why = cJSON_GetObjectItemCaseSensitive(it, "reason");
			if (!cJSON_IsObject(it) || !seq_of(cJSON_GetObjectItemCaseSensitive(it, "seq"), &seq)) {
				err__set(SCRM_E_INVALID, "rejected[%zu].seq: must be an integer >= 1", ack->n_rejected);
				goto out;
			}
			sync__rejection *r = &ack->rejected[ack->n_rejected];
			r->seq = seq;
			r->reason = strdup(cJSON_IsString(why) ? why->valuestring : "unspecified");
			if (!r->reason) {
				rc = err__set(SCRM_E_NOMEM, "out of memory");
				goto out;
			}
			ack->n_rejected++;
		}
	}
	const cJSON *rf = cJSON_GetObjectItemCaseSensitive(o, "resend_from");
	if (rf && !seq_of(rf, &ack->resend_from)) {
		err__set(SCRM_E_INVALID, "resend_from: must be an integer >= 1");
		goto out;
	}
	rc = SCRM_OK;
out:
	cJSON_Delete(o);
	if (rc != SCRM_OK)
		sync__ack_free(ack);
	return rc;
}

static void on_ack(struct sync *s, const char *payload, size_t len)
{
	sync__ack ack;
	int64_t now = platform__wall_ms();
	char q[300];

	if (sync__parse_ack(payload, len, &ack) != SCRM_OK) {
		LOG(LOG_WARN, "sync", "ignoring malformed ack", "reason=%s bytes=%zu", log__q(q, sizeof(q), scrm_errmsg()), len);
		return;
	}
	for (size_t i = 0; i < ack.n_rejected; i++) {
		if (outbox__reject(s->ob, ack.rejected[i].seq, ack.rejected[i].reason, now) == SCRM_OK)
			LOG(LOG_ERROR, "sync", "central rejected an event; kept in the rejected table", "seq=%lld reason=%s",
			    (long long)ack.rejected[i].seq, log__q(q, sizeof(q), ack.rejected[i].reason));
	}
	if (ack.n_acked) {
		int64_t deleted = 0;
		if (outbox__ack(s->ob, (const int64_t(*)[2])ack.acked, ack.n_acked, now, &deleted) != SCRM_OK) {
			LOG(LOG_ERROR, "sync", "cannot apply ack", "err=%s", log__q(q, sizeof(q), scrm_errmsg()));
			goto out;
		}
		s->n_acked += deleted;
		LOG(LOG_DEBUG, "sync", "ack applied", "ranges=%zu deleted=%lld", ack.n_acked, (long long)deleted);
	}
	retire(s, (const int64_t(*)[2])ack.acked, ack.n_acked);
	s->last_activity_ms = platform__mono_ms();

	/* resend_from: central has a hole and stored nothing past it. Act only
	 * on acks for batches of the current round: after a go-back, the acks
	 * still arriving for the old round's batches would ask for the same
	 * hole again. */
	if (ack.resend_from && ack.batch[0]) {
		int current = 0;
		for (int i = 0; i < s->nwin; i++)
			if (strcmp(s->win[i].id, ack.batch) == 0)
				current = 1;
		if (current && ack.resend_from <= s->sent_upto)
			go_back(s, "central_missing_events");
	}
out:
	sync__ack_free(&ack);
}

/* ---- customer cache ---- */

/* The stream name if `topic` is {prefix}down/cache/{stream}, else NULL. */
static const char *cache_topic(const char *topic, const char *prefix)
{
	size_t n = strlen(prefix);
	if (strncmp(topic, prefix, n) != 0 || strncmp(topic + n, "down/cache/", 11) != 0)
		return NULL;
	return topic + n + 11;
}

/* Erasure, inside the cache transaction: redact the outbox first, so a
 * crash in between repeats the redaction rather than skipping it. */
static int forget_in_outbox(void *ctx, const char *member_id)
{
	struct sync *s = ctx;
	int64_t n = 0;
	int rc = outbox__redact_member(s->ob, member_id, &n);
	/* The erased person's id is not written to the log. */
	(void)member_id;
	if (rc == SCRM_OK)
		LOG(LOG_INFO, "cache", "member forgotten", "pending_events_redacted=%lld", (long long)n);
	else
		LOG(LOG_ERROR, "cache", "cannot redact the outbox for an erasure", "err=\"%s\"", scrm_errmsg());
	return rc;
}

/* Ask central for the next stream that needs a snapshot, if it is time. */
static void cache_pump(struct sync *s)
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

/* `stream`: the topic's last level (cache_topic), borrowed. */
static void on_cache(struct sync *s, const char *topic, const char *stream, const char *payload, size_t len)
{
	cache__outcome o;
	char q[600];
	int rc = cache__apply(s->cache, stream, payload, len, forget_in_outbox, s, &o);
	if (rc != SCRM_OK) {
		LOG(LOG_WARN, "cache", "cache delta refused", "topic=%s bytes=%zu err=%s", topic, len,
		    log__q(q, sizeof(q), scrm_errmsg()));
		if (o.stream >= 0 && rc != SCRM_E_BUSY && rc != SCRM_E_IO && rc != SCRM_E_DISK_FULL)
			cache__want(s->cache, o.stream, "refused");
		cache_pump(s);
		return;
	}
	if (o.refused)
		LOG(LOG_WARN, "cache", "cache record refused", "stream=%s refused=%lld first=%s", cache__stream_name(o.stream),
		    (long long)o.refused, log__q(q, sizeof(q), cache__refused_detail(s->cache)));
	switch (o.what) {
	case CA_APPLIED:
		LOG(LOG_DEBUG, "cache", "delta applied", "stream=%s version=%lld ops=%lld", cache__stream_name(o.stream),
		    (long long)o.version, (long long)o.ops);
		break;
	case CA_DUPLICATE:
		LOG(LOG_DEBUG, "cache", "duplicate delta ignored", "stream=%s version=%lld cursor=%lld",
		    cache__stream_name(o.stream), (long long)o.version, (long long)o.cursor);
		break;
	case CA_GAP:
		LOG(LOG_INFO, "cache", "cache gap; asking for a resync", "stream=%s cursor=%lld delta_version=%lld",
		    cache__stream_name(o.stream), (long long)o.cursor, (long long)o.version);
		break;
	case CA_BUFFERED:
		LOG(LOG_DEBUG, "cache", "delta kept for after the snapshot", "stream=%s version=%lld",
		    cache__stream_name(o.stream), (long long)o.version);
		break;
	case CA_CHUNK:
		LOG(LOG_DEBUG, "cache", "snapshot chunk staged", "stream=%s chunk=%lld chunks=%lld",
		    cache__stream_name(o.stream), (long long)o.chunk, (long long)o.chunks);
		break;
	case CA_SWAPPED:
		LOG(LOG_INFO, "cache", "snapshot swapped in", "stream=%s version=%lld cursor=%lld chunks=%lld",
		    cache__stream_name(o.stream), (long long)o.version, (long long)o.cursor, (long long)o.chunks);
		break;
	case CA_IGNORED:
		LOG(LOG_DEBUG, "cache", "snapshot chunk out of sequence ignored", "stream=%s chunk=%lld",
		    cache__stream_name(o.stream), (long long)o.chunk);
		break;
	}
	cache_pump(s);
}

/* Tell capture-side code (coupons' offline policy) whether central is
 * reachable: on every change, and every LINK_REFRESH_MS while connected so
 * a dead daemon's "connected" goes stale. */
static void link_note(struct sync *s, int connected)
{
	char q[300];
	if (outbox__link_set(s->ob, connected, platform__wall_ms()) != SCRM_OK)
		LOG(LOG_WARN, "sync", "cannot record the link state", "err=%s", log__q(q, sizeof(q), scrm_errmsg()));
	s->link_refresh_ms = connected ? platform__mono_ms() + LINK_REFRESH_MS : 0;
}

/* Copy at most cap-1 bytes of s, not splitting a UTF-8 sequence. */
static void utf8_copy(char *out, size_t cap, const char *s)
{
	size_t n = strlen(s);
	if (n >= cap) {
		n = cap - 1;
		while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
			n--;
	}
	memcpy(out, s, n);
	out[n] = '\0';
}

int sync__parse_verdict(const char *payload, size_t len, sync__verdict *v)
{
	int rc = SCRM_E_INVALID;
	cJSON *o = cJSON_ParseWithLength(payload, len);
	const cJSON *it;
	memset(v, 0, sizeof(*v));
	if (!cJSON_IsObject(o)) {
		err__set(SCRM_E_INVALID, "verdict: not a JSON object");
		goto out;
	}
	it = cJSON_GetObjectItemCaseSensitive(o, "v");
	if (!cJSON_IsNumber(it) || it->valuedouble != 1) {
		err__set(SCRM_E_INVALID, "v: unknown protocol version (expected 1)");
		goto out;
	}
	it = cJSON_GetObjectItemCaseSensitive(o, "redemption");
	if (!cJSON_IsString(it) || strlen(it->valuestring) != 36) {
		err__set(SCRM_E_INVALID, "redemption: must be the redemption's event id (36-character UUID)");
		goto out;
	}
	snprintf(v->redemption, sizeof(v->redemption), "%s", it->valuestring);
	it = cJSON_GetObjectItemCaseSensitive(o, "verdict");
	if (!cJSON_IsString(it) || (strcmp(it->valuestring, "accepted") != 0 && strcmp(it->valuestring, "rejected") != 0)) {
		err__set(SCRM_E_INVALID, "verdict: must be \"accepted\" or \"rejected\"");
		goto out;
	}
	v->accepted = strcmp(it->valuestring, "accepted") == 0;
	/* Too long a reason or detail is cut (at a UTF-8 boundary), never a
	 * reason to drop the verdict: the store must hear about a rejection. */
	it = cJSON_GetObjectItemCaseSensitive(o, "reason");
	if (it && !cJSON_IsString(it)) {
		err__set(SCRM_E_INVALID, "reason: must be a string");
		goto out;
	}
	if (it)
		utf8_copy(v->reason, sizeof(v->reason), it->valuestring);
	if (!v->accepted && !v->reason[0])
		snprintf(v->reason, sizeof(v->reason), "unspecified");
	it = cJSON_GetObjectItemCaseSensitive(o, "detail");
	if (it && !cJSON_IsString(it)) {
		err__set(SCRM_E_INVALID, "detail: must be a string");
		goto out;
	}
	if (it)
		utf8_copy(v->detail, sizeof(v->detail), it->valuestring);
	it = cJSON_GetObjectItemCaseSensitive(o, "ts");
	if (it && (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > 9007199254740992.0)) {
		err__set(SCRM_E_INVALID, "ts: Unix ms");
		goto out;
	}
	v->ts = it ? (int64_t)it->valuedouble : 0;
	rc = SCRM_OK;
out:
	cJSON_Delete(o);
	return rc;
}

static void on_verdict(struct sync *s, const char *payload, size_t len)
{
	sync__verdict v;
	char q[300], q2[300];
	int changed = 0, rc;
	if (sync__parse_verdict(payload, len, &v) != SCRM_OK) {
		LOG(LOG_WARN, "sync", "ignoring malformed coupon verdict", "reason=%s bytes=%zu",
		    log__q(q, sizeof(q), scrm_errmsg()), len);
		return;
	}
	rc = outbox__verdict(s->ob, v.redemption, v.accepted ? "accepted" : "rejected", v.accepted ? NULL : v.reason,
			     v.detail[0] ? v.detail : NULL, v.ts ? v.ts : platform__wall_ms(), &changed);
	if (rc == SCRM_E_NOT_FOUND) {
		LOG(LOG_WARN, "sync", "verdict for a redemption this device does not hold", "redemption=%s", v.redemption);
		return;
	}
	if (rc) {
		LOG(LOG_ERROR, "sync", "cannot record a coupon verdict", "redemption=%s err=%s", v.redemption,
		    log__q(q, sizeof(q), scrm_errmsg()));
		return;
	}
	if (!changed)
		return;
	if (v.accepted)
		LOG(LOG_INFO, "sync", "coupon redemption accepted by central", "redemption=%s", v.redemption);
	else
		LOG(LOG_WARN, "sync", "coupon redemption REJECTED by central; the store must follow up",
		    "redemption=%s reason=%s detail=%s", v.redemption, log__q(q, sizeof(q), v.reason),
		    log__q(q2, sizeof(q2), v.detail));
}

static void handle_mqtt(struct sync *s)
{
	mqtt__event *e;
	int64_t now = platform__mono_ms();
	while ((e = mqtt__next(s->mq))) {
		switch (e->type) {
		case MQ_CONNECTED:
			s->connecting = 0;
			s->connected = 1;
			s->subscribed = 0;
			s->window = (int)s->cfg->window < e->recv_max ? (int)s->cfg->window : e->recv_max;
			if (s->window < 1)
				s->window = 1;
			backoff__reset(&s->bo);
			s->fail_streak = 0;
			LOG(LOG_INFO, "sync", "connected", "uri=%s session_present=%d receive_max=%d window=%d",
			    s->cfg->broker_uri, e->session_present, e->recv_max, s->window);
			go_back(s, "reconnect");
			link_note(s, 1);
			s->subs_pending = 0;
			if (mqtt__subscribe(s->mq, s->topic_down, 1) != SCRM_OK)
				LOG(LOG_ERROR, "sync", "subscribe call failed", "topic=%s", s->topic_down);
			else
				s->subs_pending++;
			if (s->cache) {
				cache__reset_requests(s->cache);
				if (mqtt__subscribe(s->mq, s->topic_store_cache, 1) != SCRM_OK)
					LOG(LOG_ERROR, "sync", "subscribe call failed", "topic=%s", s->topic_store_cache);
				else
					s->subs_pending++;
			}
			break;
		case MQ_CONNECT_FAILED: {
			char q[600], why[400], q2[450];
			s->connecting = 0;
			s->connected = 0;
			/* Paho's generic words explain nothing; the first failure of
			 * a streak (and every 20th) gets a diagnosis by mbedTLS. */
			if (e->text && strstr(e->text, "TLS: ") != e->text && s->fail_streak % 20 == 0) {
				tlsprobe__diagnose(s->cfg->broker_uri, s->cfg->ca_file, s->cfg->cert_file, s->cfg->key_file, 3000,
						   why, sizeof(why));
				LOG(LOG_ERROR, "sync", "broker connection failed", "uri=%s reason=%s diagnosis=%s",
				    s->cfg->broker_uri, log__q(q, sizeof(q), e->text), log__q(q2, sizeof(q2), why));
			} else {
				LOG(LOG_ERROR, "sync", "broker connection failed", "uri=%s reason=%s", s->cfg->broker_uri,
				    log__q(q, sizeof(q), e->text));
			}
			s->fail_streak++;
			schedule_reconnect(s, now);
			break;
		}
		case MQ_LOST: {
			char q[300];
			s->connected = 0;
			s->subscribed = 0;
			s->connecting = 0;
			LOG(LOG_WARN, "sync", "connection lost", "reason=%s unacked_batches=%d", log__q(q, sizeof(q), e->text),
			    s->nwin);
			go_back(s, "connection_lost");
			link_note(s, 0);
			schedule_reconnect(s, now);
			break;
		}
		case MQ_SUBSCRIBED:
			if (s->subs_pending > 0)
				s->subs_pending--;
			if (s->subs_pending == 0) {
				s->subscribed = 1;
				LOG(LOG_DEBUG, "sync", "subscribed", "topic=%s", s->topic_down);
				cache_pump(s);
			}
			break;
		case MQ_SUBSCRIBE_FAILED: {
			char q[300];
			LOG(LOG_ERROR, "sync", "subscribe refused; acks cannot arrive", "topic=%s reason=%s", s->topic_down,
			    log__q(q, sizeof(q), e->text));
			break;
		}
		case MQ_PUBLISHED:
			break;
		case MQ_PUBLISH_FAILED:
			LOG(LOG_WARN, "sync", "publish not acknowledged by the broker", "code=%d", e->code);
			break;
		case MQ_MESSAGE: {
			const char *stream = NULL;
			if (strcmp(e->topic, s->topic_ack) == 0)
				on_ack(s, e->payload, e->len);
			else if (strcmp(e->topic, s->topic_verdict) == 0)
				on_verdict(s, e->payload, e->len);
			else if (s->cache && ((stream = cache_topic(e->topic, s->cfg->store_prefix)) ||
					      (stream = cache_topic(e->topic, s->cfg->topic_prefix))))
				on_cache(s, e->topic, stream, e->payload, e->len);
			else
				LOG(LOG_DEBUG, "sync", "ignoring message on unknown topic", "topic=%s", e->topic);
			break;
		}
		}
		mqtt__event_free(e);
	}
	pump(s);
}

static int open_signals(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	return signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
}

int sync__run(const config *cfg)
{
	struct sync s;
	int rc = 1, sig_fd = -1, note_fd = -1, net_fd = -1, lock_fd = -1;
	char *password = NULL;

	memset(&s, 0, sizeof(s));
	s.cfg = cfg;
	sbuf__init(&s.buf);
	sbuf__init(&s.events);
	snprintf(s.topic_up, sizeof(s.topic_up), "%sup/events", cfg->topic_prefix);
	snprintf(s.topic_down, sizeof(s.topic_down), "%sdown/#", cfg->topic_prefix);
	snprintf(s.topic_ack, sizeof(s.topic_ack), "%sdown/ack", cfg->topic_prefix);
	snprintf(s.topic_verdict, sizeof(s.topic_verdict), "%sdown/verdict", cfg->topic_prefix);
	snprintf(s.topic_store_cache, sizeof(s.topic_store_cache), "%sdown/cache/+", cfg->store_prefix);
	snprintf(s.topic_resync, sizeof(s.topic_resync), "%sup/cache/resync", cfg->topic_prefix);
	sbuf__init(&s.req);
	backoff__init(&s.bo, cfg->backoff_min_ms, cfg->backoff_max_ms);

	{
		/* One daemon per store: a second would steal the commit
		 * notifications and send every event twice. */
		char lock[4200];
		snprintf(lock, sizeof(lock), "%s/agent.lock", cfg->store_dir);
		platform__mkdirs(cfg->store_dir, 0700);
		lock_fd = platform__lock_file(lock);
		if (lock_fd < 0) {
			LOG(LOG_ERROR, "sync", lock_fd == -EWOULDBLOCK ? "another scrm-agent is already running on this store"
								       : "cannot lock the store",
			    "lock=%s err=\"%s\"", lock, strerror(-lock_fd));
			goto cleanup;
		}
	}
	if (outbox__open(cfg->store_dir, cfg->device_id, 5000, &s.ob) != SCRM_OK) {
		char q[600];
		LOG(LOG_ERROR, "sync", "cannot open the outbox", "dir=%s err=%s", cfg->store_dir, log__q(q, sizeof(q), scrm_errmsg()));
		goto cleanup;
	}
	if (cfg->cache_enabled) {
		cache__options co = {.keys_dir = cfg->keys_dir,
				     .create = 1,
				     .max_message_bytes = (size_t)cfg->cache_max_message_bytes,
				     .snapshot_timeout_ms = cfg->snapshot_timeout_ms};
		char q[600];
		/* The cache is rebuildable: if it cannot open, sales still flow. */
		if (cache__open(cfg->store_dir, &co, &s.cache) != SCRM_OK) {
			LOG(LOG_ERROR, "cache", "cannot open the customer cache; running without it", "dir=%s err=%s",
			    cfg->store_dir, log__q(q, sizeof(q), scrm_errmsg()));
			s.cache = NULL;
		} else if (cache__set_identity(s.cache, cfg->tenant, cfg->phone_cc) != SCRM_OK) {
			LOG(LOG_WARN, "cache", "cannot record the tenant in the cache", "err=%s", log__q(q, sizeof(q), scrm_errmsg()));
		}
		if (s.cache) {
			/* The library (guide tablet, till) reads these from the cache. */
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
			if (pj.oom || cache__set_policy(s.cache, pj.p) != SCRM_OK)
				LOG(LOG_WARN, "cache", "cannot record the guide policy in the cache", "err=%s",
				    log__q(q, sizeof(q), scrm_errmsg()));
			sbuf__free(&pj);
		}
		if (s.cache) {
			sbuf st;
			sbuf__init(&st);
			if (cache__status(s.cache, &st) == SCRM_OK)
				LOG(LOG_INFO, "cache", "cache opened", "status=%s", log__q(q, sizeof(q), st.p));
			sbuf__free(&st);
		}
	}
	if (cfg->password_file) {
		size_t n = 0;
		int e = platform__read_file(cfg->password_file, 4096, &password, &n);
		if (e != 0) {
			LOG(LOG_ERROR, "sync", "cannot read broker.password_file", "path=%s err=\"%s\"", cfg->password_file, strerror(-e));
			goto cleanup;
		}
		while (n && (password[n - 1] == '\n' || password[n - 1] == '\r'))
			password[--n] = '\0';
	}
	mqtt__opts mo = {
		.uri = cfg->broker_uri,
		.client_id = cfg->device_id,
		.ca_file = cfg->ca_file,
		.cert_file = cfg->cert_file,
		.key_file = cfg->key_file,
		.username = cfg->username,
		.password = password,
		.keepalive_s = (int)cfg->keepalive_s,
		.connect_timeout_s = (int)cfg->connect_timeout_s,
		.clean_start = 0,
		.session_expiry_s = cfg->session_expiry_s,
	};
	if (mqtt__create(&mo, &s.mq) != SCRM_OK) {
		LOG(LOG_ERROR, "sync", "cannot create the MQTT client", "uri=%s", cfg->broker_uri);
		goto cleanup;
	}
	if ((sig_fd = open_signals()) < 0) {
		LOG(LOG_ERROR, "sync", "cannot set up signal handling", "err=\"%s\"", strerror(errno));
		goto cleanup;
	}
	if ((note_fd = platform__notify_bind(cfg->store_dir)) < 0)
		LOG(LOG_WARN, "sync", "no commit notifications; new events are noticed on the periodic check only",
		    "path=%s/%s err=\"%s\"", cfg->store_dir, PLATFORM_NOTIFY_SOCK, strerror(-note_fd));
	net_fd = platform__netwatch_open(); /* optional: without it we rely on backoff */
	if (cfg->plaintext)
		LOG(LOG_WARN, "sync", "PLAINTEXT MQTT: events and credentials cross the network unencrypted",
		    "uri=%s", cfg->broker_uri);
	{
		scrm_outbox_stats st;
		if (outbox__stats(s.ob, &st) == SCRM_OK)
			LOG(LOG_INFO, "sync", "started", "device=%s store_dir=%s pending=%lld last_seq=%lld uri=%s",
			    cfg->device_id, cfg->store_dir, (long long)st.pending, (long long)st.last_seq, cfg->broker_uri);
	}
	if (outbox__setting_set(s.ob, "attribution_window_ms", cfg->attribution_window_ms) != SCRM_OK ||
	    outbox__link_set(s.ob, 0, platform__wall_ms()) != SCRM_OK)
		LOG(LOG_WARN, "sync", "cannot record settings in the store", "err=\"%s\"", scrm_errmsg());
	start_connect(&s);
	s.last_activity_ms = platform__mono_ms();

	for (;;) {
		struct pollfd pf[4] = {
			{.fd = sig_fd, .events = POLLIN},
			{.fd = mqtt__fd(s.mq), .events = POLLIN},
			{.fd = note_fd, .events = POLLIN},
			{.fd = net_fd, .events = POLLIN},
		};
		/* Timers run on the monotonic clock: an NTP step of the wall
		 * clock must neither stall reconnects nor fire ack timeouts. */
		int64_t now = platform__mono_ms();
		int64_t wake = now + IDLE_CHECKPOINT_MS;
		if (!s.connected && !s.connecting && s.next_connect_ms && s.next_connect_ms < wake)
			wake = s.next_connect_ms;
		if (s.nwin > 0 && s.win[0].deadline_ms < wake)
			wake = s.win[0].deadline_ms;
		if (s.link_refresh_ms && s.link_refresh_ms < wake)
			wake = s.link_refresh_ms;
		if (s.cache && s.connected && s.subscribed) {
			int64_t d = cache__next_deadline(s.cache);
			if (d && d < wake)
				wake = d;
		}
		int timeout = wake <= now ? 0 : (int)(wake - now);
		int n = poll(pf, net_fd >= 0 ? 4 : 3, timeout);
		if (n < 0 && errno != EINTR) {
			LOG(LOG_ERROR, "sync", "poll failed", "err=\"%s\"", strerror(errno));
			goto cleanup;
		}
		now = platform__mono_ms();
		if (n > 0 && (pf[0].revents & POLLIN)) {
			struct signalfd_siginfo si;
			int stop = 0;
			while (read(sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
				if (si.ssi_signo == SIGHUP)
					LOG(LOG_INFO, "sync", "SIGHUP: configuration reload is not supported yet; restart to apply", NULL);
				else
					stop = 1;
			}
			if (stop)
				break;
		}
		if (n > 0 && (pf[1].revents & POLLIN)) {
			platform__waker_drain(mqtt__fd(s.mq));
			handle_mqtt(&s);
		}
		if (n > 0 && (pf[2].revents & POLLIN)) {
			platform__notify_drain(note_fd);
			pump(&s);
		}
		if (n > 0 && net_fd >= 0 && (pf[3].revents & POLLIN)) {
			platform__netwatch_drain(net_fd);
			if (!s.connected && !s.connecting) {
				LOG(LOG_INFO, "sync", "network changed; reconnecting now", NULL);
				backoff__reset(&s.bo);
				s.next_connect_ms = now;
			}
		}
		if (!s.connected && !s.connecting && s.next_connect_ms && s.next_connect_ms <= now)
			start_connect(&s);
		if (s.connected && s.link_refresh_ms && s.link_refresh_ms <= now)
			link_note(&s, 1);
		if (s.connected && s.nwin > 0 && s.win[0].deadline_ms <= now) {
			go_back(&s, "ack_timeout");
			pump(&s);
		}
		if (s.cache) {
			int64_t d = cache__next_deadline(s.cache);
			if (d && d <= now)
				cache_pump(&s);
		}
		if (now - s.last_activity_ms >= IDLE_CHECKPOINT_MS) {
			/* Idle: checkpoint, and catch events whose notification was
			 * lost (e.g. captured by a tool that cannot reach the socket). */
			outbox__checkpoint(s.ob);
			if (s.cache) {
				cache__checkpoint(s.cache);
				outbox__prune_activity(s.ob, platform__wall_ms() - cfg->activity_days * 86400000LL,
						       platform__wall_ms());
			}
			pump(&s);
			s.last_activity_ms = now;
		}
	}
	rc = 0;
	LOG(LOG_INFO, "sync", "stopping", "published=%lld acked=%lld redeliveries=%lld unacked_batches=%d",
	    (long long)s.n_published, (long long)s.n_acked, (long long)s.n_redeliveries, s.nwin);
cleanup:
	if (s.ob)
		outbox__link_set(s.ob, 0, platform__wall_ms());
	if (s.mq) {
		mqtt__disconnect(s.mq, 1000);
		mqtt__destroy(s.mq);
	}
	if (s.cache) {
		cache__checkpoint(s.cache);
		cache__close(s.cache);
	}
	if (s.ob) {
		outbox__checkpoint(s.ob);
		outbox__close(s.ob);
	}
	sbuf__free(&s.req);
	if (sig_fd >= 0)
		close(sig_fd);
	if (note_fd >= 0) {
		char sock[4200];
		close(note_fd);
		snprintf(sock, sizeof(sock), "%s/%s", cfg->store_dir, PLATFORM_NOTIFY_SOCK);
		unlink(sock);
	}
	if (net_fd >= 0)
		close(net_fd);
	if (lock_fd >= 0)
		close(lock_fd);
	free(password);
	sbuf__free(&s.buf);
	sbuf__free(&s.events);
	return rc;
}
