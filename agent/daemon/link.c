/* SPDX-License-Identifier: Apache-2.0 */
/*
 * link: the MQTT connection to the broker. Connects with a last will (the
 * offline state with this connection's birth_seq), reconnects with capped
 * exponential backoff and full jitter — at once when the network comes
 * back — diagnoses a failed connect in a thread (tlsprobe), replaces the
 * client when the broker settings change, and turns the client's events
 * (CONNACK, lost, SUBACK, PUBACK refusals, messages) into the daemon's
 * state. The link row in the store tells capture whether central is
 * reachable.
 */
#include "daemon.h"

#include "birth.h"
#include "err.h"
#include "log.h"
#include "paths.h"
#include "platform.h"
#include "topics.h"

#include <MQTTReasonCodes.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LINK_REFRESH_MS 30000
/* The broker holds the will this long after a connection dies: a network
 * blip the agent recovers from within it shows no offline flap. */
#define WILL_DELAY_S 10
/* The whole diagnosis of a failed connect: TCP connect + TLS handshake. */
#define PROBE_TIMEOUT_MS 3000

static uint32_t rand32(void)
{
	uint32_t r = 0;
	platform__random(&r, sizeof(r));
	return r;
}

void link__schedule_reconnect(struct sync *s, int64_t now)
{
	int64_t ceil = backoff__ceiling(&s->bo);
	int64_t d = backoff__next(&s->bo, rand32());
	s->next_connect_ms = now + d;
	LOG(LOG_INFO, "sync", "reconnect scheduled", "in_ms=%lld ceiling_ms=%lld", (long long)d, (long long)ceil);
}

void link__start_connect(struct sync *s)
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
	birth__state_json(&s->fb, s->cfg, "offline", "connection_lost", s->birth_seq, wall, s->started_ms, s->boot, NULL);
	if (s->fb.oom || mqtt__set_will(s->mq, s->topic_state, s->fb.p, WILL_DELAY_S) != SCRM_OK)
		LOG(LOG_WARN, "fleet", "cannot set the last will; central will not see this device go offline", NULL);
	LOG(LOG_DEBUG, "sync", "connecting", "uri=%s", s->cfg->broker_uri);
	if (mqtt__connect(s->mq) != SCRM_OK) {
		s->connecting = 0;
		LOG(LOG_ERROR, "sync", "connect call failed", "uri=%s", s->cfg->broker_uri);
		link__schedule_reconnect(s, platform__mono_ms());
	}
}

/* Tell capture-side code (coupons' offline policy) whether central is
 * reachable: on every change, and every LINK_REFRESH_MS while connected so
 * a dead daemon's "connected" goes stale. */
void link__note(struct sync *s, int connected)
{
	char q[300];
	if (outbox__link_set(s->ob, connected, platform__wall_ms()) != SCRM_OK)
		LOG(LOG_WARN, "sync", "cannot record the link state", "err=%s", log__q(q, sizeof(q), scrm_errmsg()));
	s->link_refresh_ms = connected ? platform__mono_ms() + LINK_REFRESH_MS : 0;
}

mqtt__opts link__mqtt_opts(const config *cfg, const char *password)
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

int link__read_password(const config *cfg, char **out)
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

/* New broker settings: a fresh client (Paho fixes the URI at create). */
int link__restart(struct sync *s, const char *why)
{
	char *password = NULL;
	mqtt *m = NULL;
	int rc = link__read_password(s->cfg, &password);
	if (rc == SCRM_OK) {
		mqtt__opts mo = link__mqtt_opts(s->cfg, password);
		rc = mqtt__create(&mo, &m);
	}
	free(password);
	if (rc != SCRM_OK) {
		LOG(LOG_ERROR, "sync", "cannot create the MQTT client with the new settings", "uri=%s", s->cfg->broker_uri);
		/* The running client still uses the previous settings, which
		 * is what a rollback restores: roll back at once. */
		if (s->probation_ms) {
			reconfig__probation_settle(s, 1);
			s->reconnect_pending = 0;
		}
		return rc;
	}
	if (s->connected) {
		/* A clean DISCONNECT suppresses the will: say goodbye. */
		birth__state_json(&s->fb, s->cfg, "offline", why, s->birth_seq, platform__wall_ms(), s->started_ms, s->boot,
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
			loop__on_message(s, e);
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
			loop__on_message(s, e);
		mqtt__event_free(e);
	}
	mqtt__destroy(s->mq);
	s->mq = m;
	s->connected = s->subscribed = s->connecting = 0;
	s->connected_since_ms = 0;
	delivery__link(&s->dl, 0, why);
	link__note(s, 0);
	if (strcmp(why, "packet_too_large") == 0) {
		/* Same settings, a client without the refused packet: connect
		 * at the pace of the failures, not at once. */
		link__schedule_reconnect(s, platform__mono_ms());
		return SCRM_OK;
	}
	backoff__reset(&s->bo);
	LOG(LOG_INFO, "sync", "reconnecting with new broker settings", "uri=%s reason=%s", s->cfg->broker_uri, why);
	link__start_connect(s);
	return SCRM_OK;
}

void link__handle_events(struct sync *s)
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
			uplink__set_window(s);
			s->connected_since_ms = platform__wall_ms();
			backoff__reset(&s->bo);
			s->fail_streak = 0;
			LOG(LOG_INFO, "sync", "connected",
			    "uri=%s session_present=%d receive_max=%d max_packet=%zu window=%d", s->cfg->broker_uri,
			    e->session_present, e->recv_max, s->max_packet, s->window);
			/* Sent again from the oldest once subscribed (acks need
			 * the subscription). */
			delivery__link(&s->dl, 0, "reconnect");
			link__note(s, 1);
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
			link__schedule_reconnect(s, now);
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
			link__note(s, 0);
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
				uplink__learn_packet_limit(s, delivery__inflight_max_bytes(&s->dl));
			}
			link__schedule_reconnect(s, now);
			break;
		}
		case MQ_SUBSCRIBED:
			if (s->subs_pending > 0)
				s->subs_pending--;
			if (s->subs_pending == 0) {
				s->subscribed = 1;
				LOG(LOG_DEBUG, "sync", "subscribed", "topic=%s", s->topic_down);
				health__birth(s);
				health__publish(s);
				delivery__link(&s->dl, 1, "subscribed");
				uplink__verdict_query(s);
				if (s->probation_ms)
					reconfig__probation_settle(s, 0);
				while (s->deferred) {
					mqtt__event *d = s->deferred;
					s->deferred = d->next;
					loop__on_message(s, d);
					mqtt__event_free(d);
				}
				cache_sync__pump(s);
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
				health__birth(s);
				health__publish(s);
				delivery__link(&s->dl, 1, "subscribed");
				uplink__verdict_query(s);
				cache_sync__pump(s);
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
				uplink__learn_packet_limit(s, bytes);
				delivery__go_back(&s->dl, "packet_too_large");
			} else if (batch && e->code == MQTTREASONCODE_NOT_AUTHORIZED) {
				outbox__alarm_raise(s->ob, "publish_refused",
						    "the broker refuses this device's events (PUBACK 0x87 not authorized): check its ACL",
						    platform__wall_ms());
			}
			break;
		}
		case MQ_MESSAGE:
			loop__on_message(s, e);
			break;
		}
		mqtt__event_free(e);
	}
	if (s->reconnect_pending) {
		s->reconnect_pending = 0;
		link__restart(s, "reconfigure");
	} else if (s->recreate_pending) {
		s->recreate_pending = 0;
		link__restart(s, "packet_too_large");
	}
	uplink__pump(s);
}

/* The topics this device publishes and subscribes to (proto/topics.h). */
void link__topics(struct sync *s)
{
	topics__join(s->topic_state, sizeof(s->topic_state), s->cfg->topic_prefix, TOPIC_UP_STATE);
	topics__join(s->topic_health, sizeof(s->topic_health), s->cfg->topic_prefix, TOPIC_UP_HEALTH);
	topics__join(s->topic_cmd, sizeof(s->topic_cmd), s->cfg->topic_prefix, TOPIC_DOWN_CMD);
	topics__join(s->topic_up, sizeof(s->topic_up), s->cfg->topic_prefix, TOPIC_UP_EVENTS);
	topics__join(s->topic_down, sizeof(s->topic_down), s->cfg->topic_prefix, TOPIC_DOWN_ALL);
	topics__join(s->topic_ack, sizeof(s->topic_ack), s->cfg->topic_prefix, TOPIC_DOWN_ACK);
	topics__join(s->topic_verdict, sizeof(s->topic_verdict), s->cfg->topic_prefix, TOPIC_DOWN_VERDICT);
	topics__join(s->topic_verdict_query, sizeof(s->topic_verdict_query), s->cfg->topic_prefix, TOPIC_UP_VERDICT_QUERY);
	topics__join(s->topic_store_cache, sizeof(s->topic_store_cache), s->cfg->store_prefix, TOPIC_DOWN_CACHE_ALL);
	topics__join(s->topic_resync, sizeof(s->topic_resync), s->cfg->topic_prefix, TOPIC_UP_CACHE_RESYNC);
}
