/* SPDX-License-Identifier: Apache-2.0 */
/*
 * uplink: outbox → MQTT → central's ack (docs/protocol.md, "Event batch",
 * "Acknowledgement", "Coupon verdicts"). The delivery state machine (window,
 * go-back-N, acks) is delivery.c; this runs it over the outbox and Paho. An
 * event leaves the outbox only in outbox__ack(), i.e. when central's
 * down/ack names its seq. PUBACKs are only used to count messages the
 * broker holds; they never delete anything. Verdicts are recorded here and
 * asked for again when one went missing.
 */
#include "daemon.h"

#include "ack.h"
#include "err.h"
#include "log.h"
#include "platform.h"
#include "uuid.h"
#include "verdict.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A verdict that could not be recorded is asked for again this soon. */
#define VERDICT_RETRY_MS 5000

static int io_read(void *ctx, int64_t after_seq, size_t max_events, size_t max_bytes, size_t hard_bytes, sbuf *out,
		   delivery__read *r)
{
	struct sync *s = ctx;
	return outbox__read_batch(s->ob, after_seq, max_events, max_bytes, hard_bytes, out, &r->count, &r->last, &r->first);
}

static int io_oldest(void *ctx, int64_t *seq)
{
	struct sync *s = ctx;
	return outbox__oldest_seq(s->ob, seq);
}

static int io_ack(void *ctx, const int64_t (*ranges)[2], size_t n, int64_t *deleted)
{
	struct sync *s = ctx;
	return outbox__ack(s->ob, ranges, n, platform__wall_ms(), deleted);
}

static int io_reject(void *ctx, int64_t seq, const char *reason)
{
	struct sync *s = ctx;
	return outbox__reject(s->ob, seq, reason, platform__wall_ms());
}

static int io_publish(void *ctx, const char *payload, size_t len)
{
	struct sync *s = ctx;
	int token = 0;
	s->last_activity_ms = platform__mono_ms();
	int rc = mqtt__publish(s->mq, s->topic_up, payload, len, 1, 0, &token);
	if (rc == SCRM_OK) {
		unsigned i = s->npubs++ % (sizeof(s->pubs) / sizeof(s->pubs[0]));
		s->pubs[i].token = token;
		s->pubs[i].bytes = len;
	}
	return rc;
}

static int64_t io_mono(void *ctx)
{
	(void)ctx;
	return platform__mono_ms();
}

static int64_t io_wall(void *ctx)
{
	(void)ctx;
	return platform__wall_ms();
}

static int io_batch_id(void *ctx, int64_t wall_ms, char out[37])
{
	(void)ctx;
	return uuid__v7(wall_ms, out) == 0 ? SCRM_OK : err__set(SCRM_E_CRYPTO, "batch id: random generator failed");
}

/* The delivery settings from the config and the broker's CONNACK. */
delivery__io uplink__io(struct sync *s)
{
	delivery__io io = {.ctx = s,
			   .read = io_read,
			   .oldest = io_oldest,
			   .ack = io_ack,
			   .reject = io_reject,
			   .publish = io_publish,
			   .mono_ms = io_mono,
			   .wall_ms = io_wall,
			   .batch_id = io_batch_id};
	return io;
}

/* The delivery settings from the config and the broker's CONNACK. */
delivery__settings uplink__settings(const struct sync *s)
{
	delivery__settings ds = {
		.window = s->window,
		.batch_max_events = (size_t)s->cfg->batch_max_events,
		.batch_max_bytes = (size_t)s->cfg->batch_max_bytes,
		.ack_timeout_ms = s->cfg->ack_timeout_ms,
	};
	/* A PUBLISH carries the topic, a packet id and a few header bytes
	 * besides the payload (MQTT 5, 3.3.2): keep them out of the limit. */
	size_t limit = s->max_packet ? s->max_packet : s->learned_packet;
	if (limit) {
		size_t overhead = strlen(s->topic_up) + 16;
		ds.max_payload = limit > overhead ? limit - overhead : 1;
	}
	return ds;
}

/* The window and batch limits in force: the config's, within what the
 * broker announced in its CONNACK (Receive Maximum, Maximum Packet Size). */
void uplink__set_window(struct sync *s)
{
	s->window = (int)s->cfg->window < s->recv_max ? (int)s->cfg->window : s->recv_max;
	if (s->window < 1)
		s->window = 1;
	delivery__settings ds = uplink__settings(s);
	delivery__configure(&s->dl, &ds);
}

/* A packet the broker refused as too large without having announced a
 * limit (a PUBACK 0x95, a DISCONNECT 0x95): learn one below it, halving on
 * each refusal, so batches and events are cut to it. */
void uplink__learn_packet_limit(struct sync *s, size_t refused)
{
	if (s->max_packet || refused <= 1024)
		return;
	size_t guess = refused / 2 + strlen(s->topic_up) + 16;
	if (!s->learned_packet || guess < s->learned_packet) {
		s->learned_packet = guess;
		LOG(LOG_WARN, "sync", "the broker refuses packets this large without announcing a limit; using a lower one",
		    "refused_bytes=%zu limit=%zu", refused, guess);
	}
	uplink__set_window(s);
}

/* Publish batches while the window has room. */
void uplink__pump(struct sync *s)
{
	delivery__pump(&s->dl);
}

/* A read or an ack found outbox.db damaged and moved it to quarantine/
 * (outbox.c: reads that heal): say so at once and start a new round from
 * the fresh file's oldest event. */
void uplink__check_outbox(struct sync *s)
{
	unsigned gen = outbox__generation(s->ob);
	if (gen == s->outbox_gen)
		return;
	s->outbox_gen = gen;
	LOG(LOG_ERROR, "sync", "the outbox was found damaged while running: moved to quarantine, sending from the fresh one",
	    "quarantined=%s", outbox__quarantined(s->ob) ? outbox__quarantined(s->ob) : "-");
	delivery__go_back(&s->dl, "outbox_replaced");
	uplink__pump(s);
	if (s->connected && s->subscribed)
		health__publish(s);
}

void uplink__on_ack(struct sync *s, const char *payload, size_t len)
{
	ack__msg ack;
	char q[300];

	if (ack__parse(payload, len, &ack) != SCRM_OK) {
		LOG(LOG_WARN, "sync", "ignoring malformed ack", "reason=%s bytes=%zu", log__q(q, sizeof(q), scrm_errmsg()), len);
		return;
	}
	int64_t backlog_before = s->dl.base;
	delivery__on_ack(&s->dl, &ack);
	s->last_activity_ms = platform__mono_ms();
	/* Caught up after a backlog: tell operations now rather than at the
	 * next period (a second later, so a burst of acks makes one). */
	if (backlog_before != 0 && s->dl.base_known && s->dl.base == 0 &&
	    s->next_heartbeat_ms > s->last_activity_ms + 1000)
		s->next_heartbeat_ms = s->last_activity_ms + 1000;
	ack__free(&ack);
}

void uplink__on_verdict(struct sync *s, const char *payload, size_t len)
{
	verdict__msg v;
	char q[300], q2[300];
	int changed = 0, rc;
	if (verdict__parse(payload, len, &v) != SCRM_OK) {
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
		/* The broker counts it delivered: ask central for it again soon
		 * rather than at the next period (protocol.md "Verdict query"). */
		LOG(LOG_ERROR, "sync", "cannot record a coupon verdict; asking central for it again", "redemption=%s err=%s",
		    v.redemption, log__q(q, sizeof(q), scrm_errmsg()));
		s->next_verdict_query_ms = platform__mono_ms() + VERDICT_RETRY_MS;
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

/* Ask central for the verdicts of redemptions it holds that this device
 * has none for (a verdict lost between the broker and the store), then
 * again every sync.verdict_query_s. */
void uplink__verdict_query(struct sync *s)
{
	sbuf ids;
	int n = 0;
	char q[300];
	s->next_verdict_query_ms = platform__mono_ms() + s->cfg->verdict_query_s * 1000;
	if (!s->connected || !s->subscribed)
		return;
	sbuf__init(&ids);
	if (outbox__pending_verdicts(s->ob, 100, &ids, &n) != SCRM_OK) {
		LOG(LOG_WARN, "sync", "cannot read the redemptions awaiting a verdict", "err=%s",
		    log__q(q, sizeof(q), scrm_errmsg()));
		s->next_verdict_query_ms = platform__mono_ms() + VERDICT_RETRY_MS;
	} else if (n > 0) {
		sbuf__reset(&s->req);
		sbuf__puts(&s->req, "{\"v\":1,\"redemptions\":");
		sbuf__put(&s->req, ids.p, ids.len);
		sbuf__puts(&s->req, "}");
		if (s->req.oom || mqtt__publish(s->mq, s->topic_verdict_query, s->req.p, s->req.len, 1, 0, NULL) != SCRM_OK)
			LOG(LOG_WARN, "sync", "cannot ask central for missing verdicts; will retry", "count=%d", n);
		else
			LOG(LOG_INFO, "sync", "asked central for missing coupon verdicts", "count=%d", n);
	}
	sbuf__free(&ids);
}
