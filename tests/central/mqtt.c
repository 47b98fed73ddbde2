/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-central, mqtt.c: the MQTT callbacks of `run` (Paho threads): they
 * hand work to the main thread and never touch SQLite.
 */
#include "central.h"

/* ======================================================================
 * MQTT callbacks (Paho threads: hand over, never touch SQLite)
 * ====================================================================== */

int on_message(void *ctx, char *topic, int topic_len, MQTTAsync_message *m)
{
	struct inbound *in = calloc(1, sizeof *in);
	size_t tlen = topic_len > 0 ? (size_t)topic_len : strlen(topic);
	size_t plen = m->payloadlen > 0 ? (size_t)m->payloadlen : 0;
	int warn;

	(void)ctx;
	if (in) {
		in->topic = malloc(tlen + 1);
		in->payload = malloc(plen + 1);
	}
	if (!in || !in->topic || !in->payload) {
		if (in) {
			free(in->topic);
			free(in->payload);
		}
		free(in);
		return 0; /* Paho keeps the message and calls again */
	}
	memcpy(in->topic, topic, tlen);
	in->topic[tlen] = '\0';
	if (plen)
		memcpy(in->payload, m->payload, plen);
	in->payload[plen] = '\0';
	in->len = plen;
	MQTTAsync_freeMessage(&m);
	MQTTAsync_free(topic);

	/* Never wait here for the main thread: Paho calls this holding its own
	 * mutex, which MQTTAsync_sendMessage (the main thread publishing acks)
	 * needs too. The backlog is bounded by the agents' windows (at most
	 * sync.window unacked batches each); only a flood grows it. */
	pthread_mutex_lock(&g.lock);
	if (g.in_tail)
		g.in_tail->next = in;
	else
		g.in_head = in;
	g.in_tail = in;
	g.in_bytes += plen + tlen;
	warn = g.in_bytes > INBOUND_WARN_BYTES && !g.backlog_warned;
	if (warn)
		g.backlog_warned = 1;
	pthread_mutex_unlock(&g.lock);
	if (warn)
		log_at(LVL_WARN, "inbound backlog above 64 MiB; storing falls behind", NULL);
	wake_main();
	return 1;
}

void on_connection_lost(void *ctx, char *cause)
{
	char q[200];

	(void)ctx;
	pthread_mutex_lock(&g.lock);
	g.connected = 0;
	g.subscribed = 0;
	pthread_mutex_unlock(&g.lock);
	log_at(LVL_WARN, "connection lost; reconnecting", "cause=%s every_ms=%d",
	       lq(q, sizeof q, cause ? cause : "unknown"), RECONNECT_EVERY_MS);
	wake_main();
}

/* Called after every successful connect. */
void on_connected(void *ctx, char *cause)
{
	(void)ctx;
	(void)cause;
	pthread_mutex_lock(&g.lock);
	g.connected = 1;
	g.connecting = 0;
	g.need_subscribe = 1; /* clean start: the session has no subscription */
	pthread_mutex_unlock(&g.lock);
	wake_main();
}

void on_connect_ok(void *ctx, MQTTAsync_successData5 *resp)
{
	(void)ctx;
	if (resp && MQTTProperties_hasProperty(&resp->properties,
					       MQTTPROPERTY_CODE_RECEIVE_MAXIMUM)) {
		int rm = MQTTProperties_getNumericValue(&resp->properties,
							MQTTPROPERTY_CODE_RECEIVE_MAXIMUM);

		pthread_mutex_lock(&g.lock);
		g.recv_max = rm;
		pthread_mutex_unlock(&g.lock);
	}
}

void on_connect_fail(void *ctx, MQTTAsync_failureData5 *resp)
{
	(void)ctx;
	pthread_mutex_lock(&g.lock);
	g.connect_failed = 1;
	g.connecting = 0;
	snprintf(g.connect_why, sizeof g.connect_why, "code=%d reason=0x%02x %s",
		 resp ? resp->code : 0, resp ? (unsigned)resp->reasonCode : 0u,
		 resp && resp->message ? resp->message : "");
	pthread_mutex_unlock(&g.lock);
	wake_main();
}

void on_subscribe_ok(void *ctx, MQTTAsync_successData5 *resp)
{
	int code = resp ? (int)resp->reasonCode : 0;
	int i;

	(void)ctx;
	/* Several topics: Paho reports every reason code here, refusals too
	 * (the array exists only when there is more than one). */
	if (resp && resp->alt.sub.reasonCodeCount > 1 && resp->alt.sub.reasonCodes)
		for (i = 0; i < resp->alt.sub.reasonCodeCount; i++)
			if ((int)resp->alt.sub.reasonCodes[i] >= 0x80)
				code = (int)resp->alt.sub.reasonCodes[i];
	pthread_mutex_lock(&g.lock);
	if (code >= 0x80) {
		g.need_subscribe = 1; /* refused: retried by the main loop */
	} else {
		g.subscribed = 1;
	}
	pthread_mutex_unlock(&g.lock);
	if (code >= 0x80)
		log_at(LVL_ERROR, "subscription refused by broker", "reason=0x%02x", (unsigned)code);
	wake_main();
}

void on_subscribe_fail(void *ctx, MQTTAsync_failureData5 *resp)
{
	(void)ctx;
	log_at(LVL_ERROR, "subscribe failed", "code=%d", resp ? resp->code : 0);
	pthread_mutex_lock(&g.lock);
	g.need_subscribe = 1;
	pthread_mutex_unlock(&g.lock);
	wake_main();
}

int on_tls_error(const char *str, size_t len, void *ctx)
{
	size_t n = len < sizeof g.tls_err - 1 ? len : sizeof g.tls_err - 1;

	(void)ctx;
	pthread_mutex_lock(&g.lock);
	memcpy(g.tls_err, str, n);
	while (n > 0 && (g.tls_err[n - 1] == '\n' || g.tls_err[n - 1] == '\r'))
		n--;
	g.tls_err[n] = '\0';
	pthread_mutex_unlock(&g.lock);
	return 0;
}
