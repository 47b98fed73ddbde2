/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sync: outbox → MQTT → central ack (see sync.h and docs/protocol.md).
 *
 * The delivery state machine (window, go-back-N, acks) is delivery.c; this
 * file runs it over the outbox and Paho. An event leaves the outbox only in
 * outbox__ack(), i.e. when central's down/ack names its seq. PUBACKs are
 * only used to count messages the broker holds; they never delete anything.
 */
#include "sync.h"

#include "backoff.h"
#include "err.h"
#include "guide.h"
#include "json.h"
#include "log.h"
#include "mqtt.h"
#include "outbox.h"
#include "paths.h"
#include "platform.h"
#include "cache.h"
#include "delivery.h"
#include "fleet.h"
#include "sbuf.h"
#include "quarantine.h"
#include "tlsprobe.h"
#include "uuid.h"

#include <MQTTReasonCodes.h>
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

#define IDLE_CHECKPOINT_MS 60000
#define LINK_REFRESH_MS 30000
/* The broker holds the will this long after a connection dies: a network
 * blip the agent recovers from within it shows no offline flap. */
#define WILL_DELAY_S 10
/* A verdict that could not be recorded is asked for again this soon. */
#define VERDICT_RETRY_MS 5000
/* The whole diagnosis of a failed connect: TCP connect + TLS handshake. */
#define PROBE_TIMEOUT_MS 3000

struct sync {
	config cfg_own;    /* the running config; replaced by reload / config.set */
	const config *cfg; /* = &cfg_own */
	const char *level_override; /* --log-level, wins over log.level */
	outbox *ob;
	mqtt *mq;
	char topic_up[340], topic_down[340], topic_ack[340];
	char topic_store_cache[300], topic_resync[340], dev_cache_prefix[340];
	int connecting, connected, subscribed, subs_pending;
	cache *cache; /* NULL when cache.enabled is false or the cache failed to open */
	sbuf req;
	int window; /* effective: min(cfg window, Receive Maximum) */
	delivery dl; /* the delivery state machine (delivery.h) over ob and mq */
	size_t max_packet; /* the broker's Maximum Packet Size, 0 = none announced */
	size_t learned_packet; /* a limit the broker enforced without announcing it, 0 = none */
	struct {
		int token;
		size_t bytes;
	} pubs[2 * DELIVERY_MAX_WINDOW]; /* recent batch publishes, for a PUBACK refusing one */
	unsigned npubs;
	int64_t next_connect_ms; /* monotonic; 0 = none scheduled */
	backoff bo;
	int64_t last_activity_ms; /* monotonic */
	unsigned fail_streak; /* connect failures since the last success */
	int64_t link_refresh_ms; /* monotonic: next refresh of the link row */
	char topic_verdict[340], topic_verdict_query[340];
	int64_t next_verdict_query_ms; /* monotonic; 0 = none scheduled */
	/* fleet */
	char topic_state[340], topic_health[340], topic_cmd[340];
	int64_t birth_seq;          /* of the current/next connection */
	int64_t started_ms, started_mono;
	char boot[37];
	int64_t next_heartbeat_ms;  /* monotonic; 0 = none scheduled */
	int64_t connected_since_ms; /* wall; 0 while offline */
	int recv_max;               /* the broker's Receive Maximum */
	fleet__seen seen;
	crypto__verifier *cmd_key;  /* NULL: unsigned commands accepted */
	sbuf fb, fr;                /* fleet scratch: payload, result */
	int64_t probation_ms;       /* monotonic deadline of a broker change; 0 = none */
	tlsprobe *probe;            /* a diagnosis of a failed connect running in a thread; NULL = none */
	int reconnect_pending;      /* recreate the MQTT client after this turn */
	int recreate_pending;       /* the same, keeping the connection's backoff (packet too large) */
	int erasure_pending;        /* an erasure's old bytes are still in outbox.db-wal */
	unsigned outbox_gen;        /* outbox__generation last seen */
	int64_t n_commands;
	char last_rollback[300];
	int cmd_level;              /* log.level command in force, -1 = none */
	mqtt__event *deferred;      /* commands received while the client was being replaced */
	int signed_only;            /* fleet.command_key_file as at start */
};

static uint32_t rand32(void)
{
	uint32_t r = 0;
	platform__random(&r, sizeof(r));
	return r;
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
	/* Each connection gets a new birth_seq, and its will carries it: a
	 * will that overtakes a newer birth is recognisably older. */
	int64_t wall = platform__wall_ms();
	{
		char priv[4096];
		paths__private(s->cfg->store_dir, NULL, priv, sizeof(priv));
		s->birth_seq = fleet__next_birth_seq(priv, wall);
	}
	fleet__state_json(&s->fb, s->cfg, "offline", "connection_lost", s->birth_seq, wall, s->started_ms, s->boot, NULL);
	if (s->fb.oom || mqtt__set_will(s->mq, s->topic_state, s->fb.p, WILL_DELAY_S) != SCRM_OK)
		LOG(LOG_WARN, "fleet", "cannot set the last will; central will not see this device go offline", NULL);
	LOG(LOG_DEBUG, "sync", "connecting", "uri=%s", s->cfg->broker_uri);
	if (mqtt__connect(s->mq) != SCRM_OK) {
		s->connecting = 0;
		LOG(LOG_ERROR, "sync", "connect call failed", "uri=%s", s->cfg->broker_uri);
		schedule_reconnect(s, platform__mono_ms());
	}
}

/* ---- delivery over the outbox and Paho (delivery.h) ---- */

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

static void set_window(struct sync *s);

/* A packet the broker refused as too large without having announced a
 * limit (a PUBACK 0x95, a DISCONNECT 0x95): learn one below it, halving on
 * each refusal, so batches and events are cut to it. */
static void learn_packet_limit(struct sync *s, size_t refused)
{
	if (s->max_packet || refused <= 1024)
		return;
	size_t guess = refused / 2 + strlen(s->topic_up) + 16;
	if (!s->learned_packet || guess < s->learned_packet) {
		s->learned_packet = guess;
		LOG(LOG_WARN, "sync", "the broker refuses packets this large without announcing a limit; using a lower one",
		    "refused_bytes=%zu limit=%zu", refused, guess);
	}
	set_window(s);
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
static delivery__settings delivery_settings(const struct sync *s)
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

/* Publish batches while the window has room. */
static void pump(struct sync *s)
{
	delivery__pump(&s->dl);
}

static void publish_health(struct sync *s);

/* A read or an ack found outbox.db damaged and moved it to quarantine/
 * (outbox.c: reads that heal): say so at once and start a new round from
 * the fresh file's oldest event. */
static void check_outbox(struct sync *s)
{
	unsigned gen = outbox__generation(s->ob);
	if (gen == s->outbox_gen)
		return;
	s->outbox_gen = gen;
	LOG(LOG_ERROR, "sync", "the outbox was found damaged while running: moved to quarantine, sending from the fresh one",
	    "quarantined=%s", outbox__quarantined(s->ob) ? outbox__quarantined(s->ob) : "-");
	delivery__go_back(&s->dl, "outbox_replaced");
	pump(s);
	if (s->connected && s->subscribed)
		publish_health(s);
}

static void on_ack(struct sync *s, const char *payload, size_t len)
{
	delivery__ack ack;
	char q[300];

	if (delivery__parse_ack(payload, len, &ack) != SCRM_OK) {
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
	delivery__ack_free(&ack);
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
	cJSON *o = NULL;
	const cJSON *it;
	memset(v, 0, sizeof(*v));
	if ((rc = json__parse(payload, len, "verdict", &o)) != SCRM_OK)
		goto out;
	rc = SCRM_E_INVALID;
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
static void verdict_query(struct sync *s)
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

/* ---- fleet management: presence, heartbeat, commands (protocol.md) ---- */

/* Whether an event captured now would be clock_ok (outbox.c's rule: the
 * build date, steps against the trusted offset, NTP), *ck its detail; the
 * build date alone if the store cannot be read. */
static int clock_trusted_ex(struct sync *s, int64_t wall, struct outbox__clock *ck)
{
	memset(ck, 0, sizeof(*ck));
	ck->synced = -1;
	if (s->ob && outbox__clock_state(s->ob, wall, platform__mono_ms(), s->boot, (int64_t)SCRM_BUILD_EPOCH * 1000, ck) ==
			     SCRM_OK)
		return ck->trusted;
	return wall >= (int64_t)SCRM_BUILD_EPOCH * 1000;
}

static int clock_trusted(struct sync *s, int64_t wall)
{
	struct outbox__clock ck;
	return clock_trusted_ex(s, wall, &ck);
}

/* Cursor, rows and age per cache stream, from cache__status. */
static void put_cache_figures(struct sync *s, sbuf *out, int64_t now)
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
static void health_json(struct sync *s, sbuf *out)
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
	put_cache_figures(s, out, now);

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
		int trusted = clock_trusted_ex(s, now, &ck);
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

static void publish_health(struct sync *s)
{
	s->next_heartbeat_ms = platform__mono_ms() + s->cfg->heartbeat_s * 1000;
	if (!s->connected || !s->subscribed)
		return;
	sbuf__reset(&s->fb);
	health_json(s, &s->fb);
	if (s->fb.oom || mqtt__publish(s->mq, s->topic_health, s->fb.p, s->fb.len, 1, 1, NULL) != SCRM_OK)
		LOG(LOG_WARN, "fleet", "cannot publish the heartbeat", NULL);
}

static void publish_birth(struct sync *s)
{
	sbuf c;
	sbuf__init(&c);
	put_cache_figures(s, &c, platform__wall_ms());
	fleet__state_json(&s->fb, s->cfg, "online", NULL, s->birth_seq, platform__wall_ms(), s->started_ms, s->boot,
			  c.oom ? NULL : c.p);
	sbuf__free(&c);
	if (s->fb.oom || mqtt__publish(s->mq, s->topic_state, s->fb.p, s->fb.len, 1, 1, NULL) != SCRM_OK)
		LOG(LOG_WARN, "fleet", "cannot publish the birth message", NULL);
	else
		LOG(LOG_INFO, "fleet", "online", "birth_seq=%lld config_version=%lld", (long long)s->birth_seq,
		    (long long)s->cfg->config_version);
}

/* The disk reserve (outbox.reserve): made at start and again once space
 * returns after a full disk released it. */
static void keep_reserve(struct sync *s)
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
static void push_settings(struct sync *s)
{
	const config *cfg = s->cfg;
	char q[600];
	if (outbox__setting_set(s->ob, "attribution_window_ms", cfg->attribution_window_ms) != SCRM_OK)
		LOG(LOG_WARN, "sync", "cannot record settings in the store", "err=%s", log__q(q, sizeof(q), scrm_errmsg()));
	if (outbox__set_limits(s->ob, cfg->outbox_max_bytes, cfg->outbox_reserve_bytes) != SCRM_OK)
		LOG(LOG_WARN, "sync", "cannot record the outbox limits in the store", "err=%s", log__q(q, sizeof(q), scrm_errmsg()));
	if (outbox__setting_set(s->ob, "disk_reserve_bytes", cfg->disk_reserve_bytes) != SCRM_OK)
		LOG(LOG_WARN, "sync", "cannot record the disk reserve in the store", "err=%s", log__q(q, sizeof(q), scrm_errmsg()));
	keep_reserve(s);
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

static void apply_log_settings(struct sync *s)
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

static delivery__settings delivery_settings(const struct sync *s);

/* The window and batch limits in force: the config's, within what the
 * broker announced in its CONNACK (Receive Maximum, Maximum Packet Size). */
static void set_window(struct sync *s)
{
	s->window = (int)s->cfg->window < s->recv_max ? (int)s->cfg->window : s->recv_max;
	if (s->window < 1)
		s->window = 1;
	delivery__settings ds = delivery_settings(s);
	delivery__configure(&s->dl, &ds);
}

static mqtt__opts mqtt_opts(const config *cfg, const char *password)
{
	mqtt__opts mo = {
		.uri = cfg->broker_uri,
		.client_id = cfg->device_id,
		.ca_file = cfg->ca_file,
		.cert_file = cfg->cert_file,
		.key_file = cfg->key_file,
		.crl_file = cfg->crl_file,
		.username = cfg->username,
		.password = password,
		.keepalive_s = (int)cfg->keepalive_s,
		.connect_timeout_s = (int)cfg->connect_timeout_s,
		.clean_start = 0,
		.session_expiry_s = cfg->session_expiry_s,
	};
	return mo;
}

static int read_password(const config *cfg, char **out)
{
	size_t n = 0;
	*out = NULL;
	if (!cfg->password_file)
		return SCRM_OK;
	int e = platform__read_file(cfg->password_file, 4096, out, &n);
	if (e != 0)
		return err__set(SCRM_E_CONFIG, "broker.password_file: cannot read %s: %s", cfg->password_file, strerror(-e));
	while (n && ((*out)[n - 1] == '\n' || (*out)[n - 1] == '\r'))
		(*out)[--n] = '\0';
	return SCRM_OK;
}

static void on_message(struct sync *s, const mqtt__event *e);
static void probation_settle(struct sync *s, int rollback);

/* New broker settings: a fresh client (Paho fixes the URI at create). */
static int restart_mqtt(struct sync *s, const char *why)
{
	char *password = NULL;
	mqtt *m = NULL;
	int rc = read_password(s->cfg, &password);
	if (rc == SCRM_OK) {
		mqtt__opts mo = mqtt_opts(s->cfg, password);
		rc = mqtt__create(&mo, &m);
	}
	free(password);
	if (rc != SCRM_OK) {
		LOG(LOG_ERROR, "sync", "cannot create the MQTT client with the new settings", "uri=%s", s->cfg->broker_uri);
		/* The running client still uses the previous settings, which
		 * is what a rollback restores: roll back at once. */
		if (s->probation_ms) {
			probation_settle(s, 1);
			s->reconnect_pending = 0;
		}
		return rc;
	}
	if (s->connected) {
		/* A clean DISCONNECT suppresses the will: say goodbye. */
		fleet__state_json(&s->fb, s->cfg, "offline", why, s->birth_seq, platform__wall_ms(), s->started_ms, s->boot,
				  NULL);
		if (!s->fb.oom)
			mqtt__publish(s->mq, s->topic_state, s->fb.p, s->fb.len, 1, 1, NULL);
	}
	/* Paho acknowledged what is queued: handle it (acks, verdicts, cache
	 * deltas are sent once), never drop it with the old client. Commands
	 * that arrive while it disconnects are answered once the new client
	 * is subscribed (a reply needs a connection). */
	for (mqtt__event *e; (e = mqtt__next(s->mq)); mqtt__event_free(e))
		if (e->type == MQ_MESSAGE)
			on_message(s, e);
	mqtt__disconnect(s->mq, 1000);
	mqtt__event **tail = &s->deferred;
	while (*tail)
		tail = &(*tail)->next;
	for (mqtt__event *e; (e = mqtt__next(s->mq));) {
		if (e->type == MQ_MESSAGE && strcmp(e->topic, s->topic_cmd) == 0) {
			*tail = e;
			tail = &e->next;
			continue;
		}
		if (e->type == MQ_MESSAGE)
			on_message(s, e);
		mqtt__event_free(e);
	}
	mqtt__destroy(s->mq);
	s->mq = m;
	s->connected = s->subscribed = s->connecting = 0;
	s->connected_since_ms = 0;
	delivery__link(&s->dl, 0, why);
	link_note(s, 0);
	if (strcmp(why, "packet_too_large") == 0) {
		/* Same settings, a client without the refused packet: connect
		 * at the pace of the failures, not at once. */
		schedule_reconnect(s, platform__mono_ms());
		return SCRM_OK;
	}
	backoff__reset(&s->bo);
	LOG(LOG_INFO, "sync", "reconnecting with new broker settings", "uri=%s reason=%s", s->cfg->broker_uri, why);
	start_connect(s);
	return SCRM_OK;
}

/* Swap in `next` (moved; zeroed on return) and apply what changed. */
static void apply_config(struct sync *s, config *next, int cls, const char *source)
{
	config old = s->cfg_own;
	int reconnect = config__needs_reconnect(&old, next);
	s->cfg_own = *next;
	memset(next, 0, sizeof(*next));
	backoff__init(&s->bo, s->cfg->backoff_min_ms, s->cfg->backoff_max_ms);
	set_window(s);
	apply_log_settings(s);
	push_settings(s);
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
static void probation_settle(struct sync *s, int rollback)
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
	apply_config(s, &next, CFG_RECONNECT, "rollback");
}

/* At start, a broker change still on probation (the agent stopped, crashed
 * or was killed by the watchdog before confirming it): keep the deadline set
 * when the change was applied — re-arming it at every start let a change
 * that gets the agent killed within the probation never be rolled back —
 * count this start, and roll back at once if the deadline has passed or the
 * agent has now started CONFIG_PROBATION_MAX_STARTS times on it. Runs
 * before anything uses the broker settings. */
static void probation_at_start(struct sync *s)
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
static void reload(struct sync *s)
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
	apply_config(s, &next, cls < 0 ? CFG_LIVE : cls, "sighup");
}

static int cmd_config_set(struct sync *s, const fleet__cmd *cmd, sbuf *res, fleet__error *err)
{
	const cJSON *set = fleet__arg(cmd, "set");
	int64_t if_version = -1;
	config next;
	sbuf text, changed;
	int cls = -1, rc = -1;
	char *set_text = NULL;
	if (!cJSON_IsObject(set))
		return fleet__fail(err, "bad_args", "args.set", "required: an object of \"section.key\": value (null = local value)");
	if (fleet__arg_int(cmd, "if_version", 0, 0, INT64_MAX, &if_version, err))
		return -1;
	if (if_version >= 0 && if_version != s->cfg->config_version)
		return fleet__fail(err, "version_conflict", "args.if_version", "config is at version %lld",
				   (long long)s->cfg->config_version);
	if (!(set_text = cJSON_PrintUnformatted(set)))
		return fleet__fail(err, "failed", "", "out of memory");
	sbuf__init(&text);
	sbuf__init(&changed);
	if (config__propose(s->cfg, set_text, strlen(set_text), platform__wall_ms(), &next, &text, &changed, &cls) != SCRM_OK) {
		/* "sync.window: must be between 1 and 64, got 100 (remote config)" */
		const char *m = scrm_errmsg();
		const char *colon = strchr(m, ':');
		char field[64] = "args.set";
		if (colon && (size_t)(colon - m) < sizeof(field) - 10)
			snprintf(field, sizeof(field), "args.set.%.*s", (int)(colon - m), m);
		fleet__fail(err, "bad_args", field, "%s", m);
		goto out;
	}
	if (cls < 0) {
		/* Nothing changes: no new version. */
		sbuf__puts(res, "{\"version\":");
		sbuf__i64(res, s->cfg->config_version);
		sbuf__puts(res, ",\"changed\":[],\"applies\":\"none\"}");
		config__free(&next);
		rc = 0;
		goto out;
	}
	if (config__write_overlay(s->cfg, text.p) != SCRM_OK) {
		fleet__fail(err, "failed", "", "%s; nothing changed", scrm_errmsg());
		config__free(&next);
		goto out;
	}
	int64_t version = next.config_version;
	static const char *const applies[] = {"live", "reconnect", "restart"};
	sbuf__puts(res, "{\"version\":");
	sbuf__i64(res, version);
	sbuf__puts(res, ",\"changed\":");
	sbuf__puts(res, changed.p);
	sbuf__puts(res, ",\"applies\":");
	sbuf__jstr(res, applies[cls]);
	if (next.overlay_previous) {
		sbuf__puts(res, ",\"probation_s\":");
		sbuf__i64(res, next.probation_s);
	}
	sbuf__puts(res, "}");
	LOG(LOG_INFO, "fleet", "remote config applied", "version=%lld changed=%s applies=%s", (long long)version,
	    changed.p, applies[cls]);
	int reconnect = config__needs_reconnect(s->cfg, &next);
	if (strstr(changed.p, "\"log.level\""))
		s->cmd_level = -1;
	apply_config(s, &next, cls, "config.set");
	/* A broker change (also one mixed with restart-class keys) starts a
	 * probation; a later change made during one keeps its deadline. */
	if (reconnect)
		s->probation_ms = platform__mono_ms() + s->cfg->probation_s * 1000;
	rc = 0;
out:
	cJSON_free(set_text);
	sbuf__free(&text);
	sbuf__free(&changed);
	return rc;
}

static int cmd_config_get(struct sync *s, const fleet__cmd *cmd, sbuf *res, fleet__error *err)
{
	const char *key = NULL;
	int cls, remote;
	if (fleet__arg_str(cmd, "key", 0, 64, &key, err))
		return -1;
	if (key && config__key_info(key, &cls, &remote) != 0)
		return fleet__fail(err, "bad_args", "args.key", "'%s' is not a config key", key);
	sbuf all;
	cJSON *o = NULL;
	sbuf__init(&all);
	config__to_json(s->cfg, &all);
	sbuf__puts(res, "{\"version\":");
	sbuf__i64(res, s->cfg->config_version);
	if (key && !all.oom && (o = cJSON_Parse(all.p))) {
		char *v = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(o, key));
		static const char *const applies[] = {"live", "reconnect", "restart"};
		sbuf__puts(res, ",\"key\":");
		sbuf__jstr(res, key);
		sbuf__puts(res, ",\"value\":");
		sbuf__puts(res, v ? v : "null");
		sbuf__puts(res, ",\"remote\":");
		sbuf__puts(res, remote ? "true" : "false");
		sbuf__puts(res, ",\"applies\":");
		sbuf__jstr(res, applies[cls]);
		cJSON_free(v);
	} else {
		sbuf__puts(res, ",\"config\":");
		sbuf__put(res, all.p ? all.p : "{}", all.p ? all.len : 2);
	}
	sbuf__puts(res, ",\"overlay\":");
	sbuf__puts(res, s->cfg->overlay_set ? s->cfg->overlay_set : "{}");
	sbuf__puts(res, ",\"probation\":");
	sbuf__puts(res, s->cfg->overlay_previous ? "true" : "false");
	if (s->cfg->overlay_error) {
		sbuf__puts(res, ",\"overlay_error\":");
		sbuf__jstr(res, s->cfg->overlay_error);
	}
	sbuf__puts(res, "}");
	cJSON_Delete(o);
	sbuf__free(&all);
	return 0;
}

/* `stream` arg: a stream name or "all" → *st (-1 = all). */
static int stream_arg(const fleet__cmd *cmd, int required, int *st, fleet__error *err)
{
	const char *name = "all";
	if (fleet__arg_str(cmd, "stream", required, 32, &name, err))
		return -1;
	if (strcmp(name, "all") == 0) {
		*st = -1;
		return 0;
	}
	if ((*st = cache__stream_parse(name)) < 0)
		return fleet__fail(err, "bad_args", "args.stream", "'%s' is not a stream (members, coupons, catalogue, "
				   "inventory, scripts, recos, rules or all)", name);
	return 0;
}

static void put_streams(sbuf *res, int st)
{
	sbuf__puts(res, "[");
	for (int i = 0, first = 1; i < ST_COUNT; i++)
		if (st < 0 || st == i) {
			if (!first)
				sbuf__puts(res, ",");
			first = 0;
			sbuf__jstr(res, cache__stream_name(i));
		}
	sbuf__puts(res, "]");
}

static int run_command(struct sync *s, const fleet__cmd *cmd, sbuf *res, fleet__error *err)
{
	const char *n = cmd->name;
	int64_t now = platform__wall_ms();
	if (strcmp(n, "ping") == 0) {
		sbuf__puts(res, "{\"pong\":true,\"birth_seq\":");
		sbuf__i64(res, s->birth_seq);
		sbuf__puts(res, ",\"uptime_ms\":");
		sbuf__i64(res, platform__mono_ms() - s->started_mono);
		sbuf__puts(res, ",\"wall_ms\":");
		sbuf__i64(res, now);
		sbuf__puts(res, "}");
		return 0;
	}
	if (strcmp(n, "status") == 0) {
		health_json(s, res);
		return 0;
	}
	if (strcmp(n, "resync") == 0 || strcmp(n, "cache.purge") == 0) {
		int st = -1, purge = strcmp(n, "cache.purge") == 0;
		if (stream_arg(cmd, purge, &st, err))
			return -1;
		if (!s->cache)
			return fleet__fail(err, "unavailable", "", "this agent runs without a customer cache (cache.enabled)");
		if (purge) {
			if (cache__purge(s->cache, st) != SCRM_OK)
				return fleet__fail(err, "failed", "", "%s", scrm_errmsg());
			LOG(LOG_WARN, "fleet", "cache purged by command; resync requested", "stream=%s",
			    st < 0 ? "all" : cache__stream_name(st));
		} else {
			cache__want(s->cache, st, "command");
		}
		cache_pump(s);
		sbuf__puts(res, purge ? "{\"purged\":" : "{\"requested\":");
		put_streams(res, st);
		sbuf__puts(res, "}");
		return 0;
	}
	if (strcmp(n, "flush") == 0) {
		scrm_outbox_stats st;
		memset(&st, 0, sizeof(st));
		/* Now, not at the ack timeout: everything unacknowledged goes
		 * out again from the oldest (central deduplicates). */
		if (s->dl.nwin > 0)
			delivery__go_back(&s->dl, "flush_command");
		pump(s);
		outbox__checkpoint(s->ob);
		outbox__stats(s->ob, &st);
		sbuf__puts(res, "{\"pending\":");
		sbuf__i64(res, st.pending);
		sbuf__puts(res, ",\"in_flight_batches\":");
		sbuf__i64(res, s->dl.nwin);
		sbuf__puts(res, "}");
		return 0;
	}
	if (strcmp(n, "config.get") == 0)
		return cmd_config_get(s, cmd, res, err);
	if (strcmp(n, "config.set") == 0)
		return cmd_config_set(s, cmd, res, err);
	if (strcmp(n, "log.level") == 0) {
		static const char *const lv[] = {"error", "warn", "info", "debug"};
		const char *level = NULL;
		int prev = log__threshold & 3;
		if (fleet__arg_str(cmd, "level", 1, 8, &level, err))
			return -1;
		int l = log__parse_level(level);
		if (l < 0)
			return fleet__fail(err, "bad_args", "args.level", "must be error, warn, info or debug");
		log__set_level(l);
		s->cmd_level = l;
		sbuf__puts(res, "{\"level\":");
		sbuf__jstr(res, lv[l]);
		sbuf__puts(res, ",\"previous\":");
		sbuf__jstr(res, lv[prev]);
		sbuf__puts(res, ",\"persistent\":false}");
		LOG(LOG_WARN, "fleet", "log level changed by command (until restart or reload)", "level=%s", lv[l]);
		return 0;
	}
	if (strcmp(n, "member.forget") == 0) {
		const char *member = NULL;
		if (fleet__arg_str(cmd, "member_id", 1, 64, &member, err))
			return -1;
		int rc = s->cache ? cache__forget(s->cache, member, forget_in_outbox, s) : forget_in_outbox(s, member);
		if (rc == SCRM_OK && s->erasure_pending) /* the outbox's part, done inside the cache's */
			rc = outbox__scrub_wal(s->ob);
		if (rc == SCRM_E_BUSY) {
			/* Gone from every table; old copies wait for readers to let
			 * go of a WAL. Not "done": retried at idle, and the reply
			 * says so (protocol.md "Erasure"). */
			s->erasure_pending = 1;
			return fleet__fail(err, "failed", "", "%.160s; send it again to confirm", scrm_errmsg());
		}
		if (rc != SCRM_OK)
			return fleet__fail(err, "failed", "", "%s; nothing was changed, send it again", scrm_errmsg());
		s->erasure_pending = 0;
		sbuf__puts(res, "{\"forgotten\":true,\"cache\":");
		sbuf__puts(res, s->cache ? "true" : "false");
		sbuf__puts(res, "}");
		return 0;
	}
	if (strcmp(n, "logs.recent") == 0) {
		int64_t lines = 50;
		const char *level = "debug";
		if (fleet__arg_int(cmd, "lines", 0, 1, LOG_RING_LINES, &lines, err) ||
		    fleet__arg_str(cmd, "level", 0, 8, &level, err))
			return -1;
		int l = log__parse_level(level);
		if (l < 0)
			return fleet__fail(err, "bad_args", "args.level", "must be error, warn, info or debug");
		sbuf__puts(res, "{\"lines\":");
		log__recent((int)lines, l, res);
		sbuf__puts(res, "}");
		return 0;
	}
	if (strcmp(n, "alarm.clear") == 0) {
		/* Operations acknowledge an alarm once they have followed it up
		 * (a quarantined file collected, drops explained). */
		static const char *const codes[] = {"outbox_quarantined", "cache_quarantined", "outbox_full", "events_dropped",
						    "subscribe_refused", "events_set_aside", "publish_refused", "disk_full"};
		const char *code = NULL;
		int known = 0;
		if (fleet__arg_str(cmd, "code", 1, 32, &code, err))
			return -1;
		for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
			known |= strcmp(codes[i], code) == 0;
		if (!known)
			return fleet__fail(err, "bad_args", "args.code", "'%s' is not an alarm code", code);
		if (outbox__alarm_clear(s->ob, code) != SCRM_OK)
			return fleet__fail(err, "failed", "", "%s", scrm_errmsg());
		LOG(LOG_INFO, "fleet", "alarm cleared by command", "code=%s", code);
		sbuf__puts(res, "{\"cleared\":");
		sbuf__jstr(res, code);
		sbuf__puts(res, ",\"alarms\":");
		sbuf al;
		sbuf__init(&al);
		if (outbox__alarms(s->ob, &al) == SCRM_OK && !al.oom && al.p)
			sbuf__put(res, al.p, al.len);
		else
			sbuf__puts(res, "[]");
		sbuf__free(&al);
		sbuf__puts(res, "}");
		return 0;
	}
	return fleet__fail(err, "unknown_command", "cmd", "'%s' is not a command this agent knows", n);
}

static void on_command(struct sync *s, const mqtt__event *e)
{
	fleet__cmd cmd;
	fleet__error err;
	char topic[400], q[300];
	int64_t now = platform__wall_ms();
	int ok = 0;
	s->n_commands++;
	sbuf__reset(&s->fr);
	if (!s->cfg->commands_enabled) {
		memset(&cmd, 0, sizeof(cmd));
		fleet__fail(&err, "disabled", "", "fleet commands are turned off on this agent (fleet.commands)");
	} else if (s->signed_only && !s->cmd_key) {
		/* Fail closed: a configured but unreadable key must not turn
		 * into "unsigned commands accepted". */
		memset(&cmd, 0, sizeof(cmd));
		fleet__fail(&err, "unavailable", "", "fleet.command_key_file cannot be loaded; no command is obeyed");
	} else if (fleet__parse_command(e->payload, e->len, s->cfg->tenant, s->cfg->store_id, s->cfg->device_id,
					s->cmd_key, now, clock_trusted(s, now), &s->seen, &cmd, &err) == 0) {
		/* A signed command's id is saved by now (the replay guard
		 * outlives a restart); one that could not be saved was refused. */
		ok = run_command(s, &cmd, &s->fr, &err) == 0;
	}
	if (s->fr.oom) {
		ok = 0;
		fleet__fail(&err, "failed", "", "out of memory building the result");
	}
	fleet__reply(&s->fb, &cmd, ok ? s->fr.p : NULL, &err, platform__wall_ms());
	int own = fleet__reply_topic(e->response_topic, s->cfg->topic_prefix, topic, sizeof(topic));
	if (e->response_topic && !own)
		LOG(LOG_WARN, "fleet", "response topic outside this device's up/reply; answering on the default",
		    "requested=%s", log__q(q, sizeof(q), e->response_topic));
	if (ok)
		LOG(LOG_INFO, "fleet", "command done", "cmd=%s id=%s signed=%d", cmd.name[0] ? cmd.name : "-",
		    cmd.id[0] ? cmd.id : "-", cmd.is_signed);
	else
		LOG(LOG_WARN, "fleet", "command refused", "cmd=%s id=%s code=%s field=%s message=%s",
		    cmd.name[0] ? cmd.name : "-", cmd.id[0] ? cmd.id : "-", err.code, err.field[0] ? err.field : "-",
		    log__q(q, sizeof(q), err.message));
	if (s->fb.oom || mqtt__publish_reply(s->mq, topic, s->fb.p, s->fb.len, e->correlation, e->correlation_len) != SCRM_OK)
		LOG(LOG_WARN, "fleet", "cannot publish the command reply", "topic=%s", topic);
	fleet__cmd_free(&cmd);
}

static void on_message(struct sync *s, const mqtt__event *e)
{
	const char *stream = NULL;
	if (strcmp(e->topic, s->topic_ack) == 0)
		on_ack(s, e->payload, e->len);
	else if (strcmp(e->topic, s->topic_verdict) == 0)
		on_verdict(s, e->payload, e->len);
	else if (strcmp(e->topic, s->topic_cmd) == 0)
		on_command(s, e);
	else if (s->cache && ((stream = cache_topic(e->topic, s->cfg->store_prefix)) ||
			      (stream = cache_topic(e->topic, s->cfg->topic_prefix))))
		on_cache(s, e->topic, stream, e->payload, e->len);
	else
		LOG(LOG_DEBUG, "sync", "ignoring message on unknown topic", "topic=%s", e->topic);
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
			s->recv_max = e->recv_max;
			s->max_packet = e->max_packet;
			set_window(s);
			s->connected_since_ms = platform__wall_ms();
			backoff__reset(&s->bo);
			s->fail_streak = 0;
			LOG(LOG_INFO, "sync", "connected",
			    "uri=%s session_present=%d receive_max=%d max_packet=%zu window=%d", s->cfg->broker_uri,
			    e->session_present, e->recv_max, s->max_packet, s->window);
			/* Sent again from the oldest once subscribed (acks need
			 * the subscription). */
			delivery__link(&s->dl, 0, "reconnect");
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
			char q[600];
			s->connecting = 0;
			s->connected = 0;
			LOG(LOG_ERROR, "sync", "broker connection failed", "uri=%s reason=%s", s->cfg->broker_uri,
			    log__q(q, sizeof(q), e->text));
			/* Paho's generic words explain nothing; the first failure of
			 * a streak (and every 20th) gets a diagnosis by mbedTLS. It
			 * runs in a thread, bounded (PROBE_TIMEOUT_MS): nothing on
			 * this loop may block, or the watchdog kills the agent (an
			 * address that drops SYNs held a blocking connect ~127 s)
			 * and SIGTERM waits. */
			if (e->text && strstr(e->text, "TLS: ") != e->text && s->fail_streak % 20 == 0 && !s->probe) {
				int prc = tlsprobe__start(&s->probe, s->cfg->broker_uri, s->cfg->ca_file, s->cfg->cert_file,
							  s->cfg->key_file, PROBE_TIMEOUT_MS);
				if (prc == 0)
					LOG(LOG_INFO, "sync", "diagnosing the failed broker connection", "uri=%s", s->cfg->broker_uri);
				else
					LOG(LOG_WARN, "sync", "cannot start the connection diagnosis", "err=\"%s\"", strerror(-prc));
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
			s->connected_since_ms = 0;
			LOG(LOG_WARN, "sync", "connection lost", "reason=%s unacked_batches=%d", log__q(q, sizeof(q), e->text),
			    s->dl.nwin);
			delivery__link(&s->dl, 0, "connection_lost");
			link_note(s, 0);
			if (e->code == MQTTREASONCODE_PACKET_TOO_LARGE) {
				/* Paho keeps unacknowledged publishes in its session and
				 * resends them on every reconnect: the same packet would
				 * close every connection. A fresh client starts without
				 * them; the outbox resends what matters, cut to the
				 * limit the next CONNACK announces. */
				LOG(LOG_ERROR, "sync", "the broker refused a packet as too large; dropping the MQTT client's"
				    " in-flight copies", "inflight_max_bytes=%zu max_packet=%zu",
				    delivery__inflight_max_bytes(&s->dl), s->max_packet);
				s->recreate_pending = 1;
				learn_packet_limit(s, delivery__inflight_max_bytes(&s->dl));
			}
			schedule_reconnect(s, now);
			break;
		}
		case MQ_SUBSCRIBED:
			if (s->subs_pending > 0)
				s->subs_pending--;
			if (s->subs_pending == 0) {
				s->subscribed = 1;
				LOG(LOG_DEBUG, "sync", "subscribed", "topic=%s", s->topic_down);
				publish_birth(s);
				publish_health(s);
				delivery__link(&s->dl, 1, "subscribed");
				verdict_query(s);
				if (s->probation_ms)
					probation_settle(s, 0);
				while (s->deferred) {
					mqtt__event *d = s->deferred;
					s->deferred = d->next;
					on_message(s, d);
					mqtt__event_free(d);
				}
				cache_pump(s);
			}
			break;
		case MQ_SUBSCRIBE_FAILED: {
			char q[300];
			LOG(LOG_ERROR, "sync", "a subscription was refused by the broker (check its ACL); acks, commands or "
				"cache deltas may not arrive", "device_topic=%s reason=%s", s->topic_down, log__q(q, sizeof(q), e->text));
			outbox__alarm_raise(s->ob, "subscribe_refused", e->text ? e->text : "refused", platform__wall_ms());
			/* Carry on with what was granted: presence and sales still
			 * go out (sales are resent until acked). */
			if (s->subs_pending > 0 && --s->subs_pending == 0 && !s->subscribed) {
				s->subscribed = 1;
				publish_birth(s);
				publish_health(s);
				delivery__link(&s->dl, 1, "subscribed");
				verdict_query(s);
				cache_pump(s);
			}
			break;
		}
		case MQ_PUBLISHED:
			break;
		case MQ_PUBLISH_FAILED: {
			size_t bytes = 0;
			int batch = 0;
			for (size_t i = 0; i < sizeof(s->pubs) / sizeof(s->pubs[0]); i++)
				if (s->pubs[i].token == e->token && e->token) {
					bytes = s->pubs[i].bytes;
					batch = 1;
				}
			LOG(LOG_WARN, "sync", "publish not acknowledged by the broker", "code=0x%x batch=%d bytes=%zu", e->code,
			    batch, bytes);
			if (batch && e->code == MQTTREASONCODE_PACKET_TOO_LARGE) {
				/* The same batch would be refused at every redelivery:
				 * cut them smaller and go again now. */
				learn_packet_limit(s, bytes);
				delivery__go_back(&s->dl, "packet_too_large");
			} else if (batch && e->code == MQTTREASONCODE_NOT_AUTHORIZED) {
				outbox__alarm_raise(s->ob, "publish_refused",
						    "the broker refuses this device's events (PUBACK 0x87 not authorized): check its ACL",
						    platform__wall_ms());
			}
			break;
		}
		case MQ_MESSAGE:
			on_message(s, e);
			break;
		}
		mqtt__event_free(e);
	}
	if (s->reconnect_pending) {
		s->reconnect_pending = 0;
		restart_mqtt(s, "reconfigure");
	} else if (s->recreate_pending) {
		s->recreate_pending = 0;
		restart_mqtt(s, "packet_too_large");
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

int sync__run(config *cfg_in, const char *level_override)
{
	struct sync s;
	int rc = 1, sig_fd = -1, note_fd = -1, net_fd = -1, lock_fd = -1;
	char *password = NULL;

	memset(&s, 0, sizeof(s));
	s.cfg_own = *cfg_in;
	memset(cfg_in, 0, sizeof(*cfg_in));
	s.cfg = &s.cfg_own;
	s.level_override = level_override;
	/* `cfg` always shows the running config: reloads replace the
	 * contents of s.cfg_own, never its address. */
	const config *cfg = s.cfg;
	s.recv_max = 65535;
	s.cmd_level = -1;
	s.started_ms = platform__wall_ms();
	s.started_mono = platform__mono_ms();
	platform__boot_id(s.boot);
	sbuf__init(&s.fb);
	sbuf__init(&s.fr);
	snprintf(s.topic_state, sizeof(s.topic_state), "%sup/state", cfg->topic_prefix);
	snprintf(s.topic_health, sizeof(s.topic_health), "%sup/health", cfg->topic_prefix);
	snprintf(s.topic_cmd, sizeof(s.topic_cmd), "%sdown/cmd", cfg->topic_prefix);
	apply_log_settings(&s);
	snprintf(s.topic_up, sizeof(s.topic_up), "%sup/events", cfg->topic_prefix);
	snprintf(s.topic_down, sizeof(s.topic_down), "%sdown/#", cfg->topic_prefix);
	snprintf(s.topic_ack, sizeof(s.topic_ack), "%sdown/ack", cfg->topic_prefix);
	snprintf(s.topic_verdict, sizeof(s.topic_verdict), "%sdown/verdict", cfg->topic_prefix);
	snprintf(s.topic_verdict_query, sizeof(s.topic_verdict_query), "%sup/verdict/query", cfg->topic_prefix);
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
	{
		/* Keys, cache, remote settings and the replay guard live where
		 * only this user can write (paths.h); an older agent's files are
		 * moved there, a planted or foreign one refused. */
		char moved[600], q[600];
		if (paths__prepare(cfg->store_dir, cfg->keys_dir, moved, sizeof(moved)) != SCRM_OK) {
			LOG(LOG_ERROR, "sync", "refusing the store's private directory", "dir=%s err=%s", cfg->store_dir,
			    log__q(q, sizeof(q), scrm_errmsg()));
			goto cleanup;
		}
		if (moved[0])
			LOG(LOG_WARN, "sync", "moved an older agent's files into the private directory", "dir=%s/%s moved=%s",
			    cfg->store_dir, PATHS_PRIVATE_DIR, log__q(q, sizeof(q), moved));
	}
	/* Before the outbox and the client: a rollback changes the config. */
	probation_at_start(&s);
	backoff__init(&s.bo, cfg->backoff_min_ms, cfg->backoff_max_ms);
	apply_log_settings(&s);
	/* Checked at start: a damaged outbox is moved to quarantine/ and a
	 * fresh one opened (alarm "outbox_quarantined" raised in it). */
	if (outbox__open_checked(cfg->store_dir, cfg->device_id, 5000, &s.ob) != SCRM_OK) {
		char q[600];
		LOG(LOG_ERROR, "sync", "cannot open the outbox", "dir=%s err=%s", cfg->store_dir, log__q(q, sizeof(q), scrm_errmsg()));
		goto cleanup;
	}
	if (outbox__quarantined(s.ob))
		LOG(LOG_ERROR, "sync", "the outbox was damaged: moved to quarantine, capturing into a fresh one",
		    "quarantined=%s", outbox__quarantined(s.ob));
	if (cfg->cache_enabled) {
		cache__options co = {.keys_dir = cfg->keys_dir,
				     .create = 1,
				     .max_message_bytes = (size_t)cfg->cache_max_message_bytes,
				     .snapshot_timeout_ms = cfg->snapshot_timeout_ms,
				     .check = 1};
		char q[600];
		/* The cache is rebuildable: if it cannot open, sales still flow;
		 * a damaged one is moved to quarantine/ and fetched again. */
		if (cache__open(cfg->store_dir, &co, &s.cache) != SCRM_OK) {
			LOG(LOG_ERROR, "cache", "cannot open the customer cache; running without it", "dir=%s err=%s",
			    cfg->store_dir, log__q(q, sizeof(q), scrm_errmsg()));
			s.cache = NULL;
		}
		/* identity and policy: push_settings() below */
		if (s.cache && cache__quarantined(s.cache)) {
			LOG(LOG_ERROR, "cache", "the customer cache was damaged: moved to quarantine, fetching it again",
			    "quarantined=%s", cache__quarantined(s.cache));
			if (outbox__alarm_raise(s.ob, "cache_quarantined", cache__quarantine_detail(s.cache),
						platform__wall_ms()) != SCRM_OK)
				LOG(LOG_WARN, "cache", "cannot raise the cache_quarantined alarm", "err=%s",
				    log__q(q, sizeof(q), scrm_errmsg()));
		}
		if (s.cache) {
			sbuf st;
			sbuf__init(&st);
			if (cache__status(s.cache, &st) == SCRM_OK)
				LOG(LOG_INFO, "cache", "cache opened", "status=%s", log__q(q, sizeof(q), st.p));
			sbuf__free(&st);
		}
	}
	if (read_password(cfg, &password) != SCRM_OK) {
		char q[600];
		LOG(LOG_ERROR, "sync", "cannot read the broker password", "err=%s", log__q(q, sizeof(q), scrm_errmsg()));
		goto cleanup;
	}
	mqtt__opts mo = mqtt_opts(cfg, password);
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
	if (outbox__link_set(s.ob, 0, platform__wall_ms()) != SCRM_OK)
		LOG(LOG_WARN, "sync", "cannot record the link state in the store", "err=\"%s\"", scrm_errmsg());
	push_settings(&s);
	s.outbox_gen = outbox__generation(s.ob);
	s.signed_only = cfg->command_key_file != NULL;
	{
		char path[4200];
		paths__private(cfg->store_dir, PATHS_SEEN_IDS, path, sizeof(path));
		if (fleet__seen_open(&s.seen, path, platform__wall_ms()) != 0)
			LOG(LOG_ERROR, "fleet", "cannot read the signed command ids; every signed command will be refused",
			    "path=%s", path);
	}
	if (cfg->command_key_file) {
		char q[600];
		if (crypto__verifier_load(cfg->command_key_file, &s.cmd_key) != SCRM_OK) {
			s.cmd_key = NULL;
			LOG(LOG_ERROR, "fleet", "cannot load fleet.command_key_file; every command will be refused", "err=%s",
			    log__q(q, sizeof(q), scrm_errmsg()));
		}
	}
	if (cfg->overlay_error) {
		char q[600];
		LOG(LOG_ERROR, "fleet", "remote config ignored; running on the local file", "reason=%s",
		    log__q(q, sizeof(q), cfg->overlay_error));
	}
	{
		delivery__io io = {.ctx = &s,
				   .read = io_read,
				   .oldest = io_oldest,
				   .ack = io_ack,
				   .reject = io_reject,
				   .publish = io_publish,
				   .mono_ms = io_mono,
				   .wall_ms = io_wall,
				   .batch_id = io_batch_id};
		delivery__settings ds = delivery_settings(&s);
		delivery__init(&s.dl, &io, &ds);
		set_window(&s);
	}
	start_connect(&s);
	s.last_activity_ms = platform__mono_ms();
	/* systemd (Type=notify): ready once the outbox is open and capture
	 * can be shipped; the watchdog is fed from the loop, so a wedged loop
	 * gets the service restarted. Both are no-ops outside systemd. */
	int64_t watchdog_ms = platform__sd_watchdog_ms() / 2, next_watchdog = 0;
	platform__sd_notify("READY=1\nSTATUS=running");

	for (;;) {
		/* poll() skips entries whose fd is negative. */
		struct pollfd pf[5] = {
			{.fd = sig_fd, .events = POLLIN},
			{.fd = mqtt__fd(s.mq), .events = POLLIN},
			{.fd = note_fd, .events = POLLIN},
			{.fd = net_fd, .events = POLLIN},
			{.fd = s.probe ? tlsprobe__fd(s.probe) : -1, .events = POLLIN},
		};
		/* Timers run on the monotonic clock: an NTP step of the wall
		 * clock must neither stall reconnects nor fire ack timeouts. */
		int64_t now = platform__mono_ms();
		int64_t wake = now + IDLE_CHECKPOINT_MS;
		if (!s.connected && !s.connecting && s.next_connect_ms && s.next_connect_ms < wake)
			wake = s.next_connect_ms;
		if (s.connected && delivery__deadline(&s.dl) && delivery__deadline(&s.dl) < wake)
			wake = delivery__deadline(&s.dl);
		if (s.link_refresh_ms && s.link_refresh_ms < wake)
			wake = s.link_refresh_ms;
		if (s.connected && s.subscribed && s.next_heartbeat_ms && s.next_heartbeat_ms < wake)
			wake = s.next_heartbeat_ms;
		if (s.connected && s.subscribed && s.next_verdict_query_ms && s.next_verdict_query_ms < wake)
			wake = s.next_verdict_query_ms;
		if (s.probation_ms && !(s.connected && s.subscribed) && s.probation_ms < wake)
			wake = s.probation_ms;
		if (watchdog_ms > 0) {
			if (now >= next_watchdog) {
				platform__sd_notify("WATCHDOG=1");
				next_watchdog = now + watchdog_ms;
			}
			if (next_watchdog < wake)
				wake = next_watchdog;
		}
		if (s.cache && s.connected && s.subscribed) {
			int64_t d = cache__next_deadline(s.cache);
			if (d && d < wake)
				wake = d;
		}
		int timeout = wake <= now ? 0 : (int)(wake - now);
		int n = poll(pf, 5, timeout);
		if (n < 0 && errno != EINTR) {
			LOG(LOG_ERROR, "sync", "poll failed", "err=\"%s\"", strerror(errno));
			goto cleanup;
		}
		now = platform__mono_ms();
		if (n > 0 && (pf[0].revents & POLLIN)) {
			struct signalfd_siginfo si;
			int stop = 0;
			while (read(sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
				if (si.ssi_signo == SIGHUP) {
					platform__sd_notify("RELOADING=1");
					reload(&s);
					platform__sd_notify("READY=1");
				}
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
		if (n > 0 && s.probe && (pf[4].revents & POLLIN)) {
			char why[400], q[450];
			tlsprobe__finish(s.probe, why, sizeof(why));
			s.probe = NULL;
			LOG(LOG_ERROR, "sync", "broker connection diagnosis", "uri=%s diagnosis=%s", cfg->broker_uri,
			    log__q(q, sizeof(q), why));
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
		if (s.connected && s.subscribed && s.next_heartbeat_ms && s.next_heartbeat_ms <= now)
			publish_health(&s);
		if (s.connected && s.subscribed && s.next_verdict_query_ms && s.next_verdict_query_ms <= now)
			verdict_query(&s);
		if (s.probation_ms && s.probation_ms <= now && !(s.connected && s.subscribed))
			probation_settle(&s, 1);
		if (s.reconnect_pending) {
			s.reconnect_pending = 0;
			restart_mqtt(&s, "reconfigure");
		}
		if (s.connected)
			delivery__tick(&s.dl);
		if (s.cache) {
			int64_t d = cache__next_deadline(s.cache);
			if (d && d <= now)
				cache_pump(&s);
		}
		check_outbox(&s);
		if (now - s.last_activity_ms >= IDLE_CHECKPOINT_MS) {
			/* Idle: checkpoint, and catch events whose notification was
			 * lost (e.g. captured by a tool that cannot reach the socket). */
			if (s.erasure_pending && outbox__scrub_wal(s.ob) == SCRM_OK) {
				s.erasure_pending = 0;
				LOG(LOG_INFO, "sync", "erasure finished: the outbox's WAL is scrubbed", NULL);
			} else {
				outbox__checkpoint(s.ob);
			}
			if (s.cache)
				cache__checkpoint(s.cache);
			keep_reserve(&s);
			/* local history, shown lists, settled redemptions, receipts */
			outbox__prune_activity(s.ob, platform__wall_ms() - cfg->activity_days * 86400000LL,
					       platform__wall_ms());
			pump(&s);
			s.last_activity_ms = now;
		}
	}
	rc = 0;
	platform__sd_notify("STOPPING=1");
	LOG(LOG_INFO, "sync", "stopping", "published=%lld acked=%lld redeliveries=%lld unacked_batches=%d",
	    (long long)s.dl.n_published, (long long)s.dl.n_acked, (long long)s.dl.n_redeliveries, s.dl.nwin);
cleanup:
	/* A diagnosis still running is abandoned, not waited for. */
	tlsprobe__cancel(s.probe);
	s.probe = NULL;
	if (s.ob)
		outbox__link_set(s.ob, 0, platform__wall_ms());
	if (s.mq && s.connected) {
		/* A clean DISCONNECT suppresses the will: say goodbye ourselves. */
		fleet__state_json(&s.fb, cfg, "offline", "shutdown", s.birth_seq, platform__wall_ms(), s.started_ms, s.boot, NULL);
		if (!s.fb.oom)
			mqtt__publish(s.mq, s.topic_state, s.fb.p, s.fb.len, 1, 1, NULL);
	}
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
	delivery__free(&s.dl);
	sbuf__free(&s.fb);
	sbuf__free(&s.fr);
	crypto__verifier_free(s.cmd_key);
	fleet__seen_free(&s.seen);
	while (s.deferred) {
		mqtt__event *d = s.deferred;
		s.deferred = d->next;
		mqtt__event_free(d);
	}
	config__free(&s.cfg_own);
	return rc;
}
