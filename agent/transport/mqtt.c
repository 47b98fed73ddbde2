/* SPDX-License-Identifier: Apache-2.0 */
/*
 * mqtt: Paho MQTTAsync → event queue (see mqtt.h).
 *
 * Paho rules we follow (TOOLCHAIN.md): never call create/destroy from a
 * callback; keep our own in-flight count under the CONNACK Receive Maximum
 * (1.3.12 stalls past it); persistence NONE, no offline buffering.
 */
#include "mqtt.h"

#include <scrm/scrm.h>

#include "platform.h"
#include "tlspolicy.h"

#include <MQTTAsync.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct mqtt {
	MQTTAsync client;
	int fd;
	pthread_mutex_t mu;
	mqtt__event *head, **tail;
	char tls_error[256]; /* OpenSSL's reasons for the last failed handshake, "; "-separated */
	char *uri, *client_id, *ca_file, *cert_file, *key_file, *username, *password;
	int keepalive_s, connect_timeout_s, clean_start;
	int64_t session_expiry_s;
	char *will_topic, *will_payload; /* owning thread only */
	int will_delay_s;
	unsigned long policy_mark; /* tlspolicy__applied() when the attempt began */
};

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

static void push(mqtt *m, mqtt__event *e)
{
	pthread_mutex_lock(&m->mu);
	*m->tail = e;
	m->tail = &e->next;
	pthread_mutex_unlock(&m->mu);
	platform__waker_signal(m->fd);
}

static mqtt__event *ev_new(mqtt__etype t)
{
	mqtt__event *e = calloc(1, sizeof(*e));
	if (e)
		e->type = t;
	return e;
}

void mqtt__event_free(mqtt__event *e)
{
	if (!e)
		return;
	free(e->text);
	free(e->topic);
	free(e->payload);
	free(e->response_topic);
	free(e->correlation);
	free(e);
}

mqtt__event *mqtt__next(mqtt *m)
{
	pthread_mutex_lock(&m->mu);
	mqtt__event *e = m->head;
	if (e) {
		m->head = e->next;
		if (!m->head)
			m->tail = &m->head;
		e->next = NULL;
	}
	pthread_mutex_unlock(&m->mu);
	return e;
}

int mqtt__fd(const mqtt *m)
{
	return m->fd;
}

/* ---- Paho callbacks: Paho's threads; copy, enqueue, signal ---- */

/* The words of one OpenSSL error line into out: ERR_print_errors_cb
 * writes "<thread>:error:<code>:<library>:<function>:<reason>:<file>:<line>:
 * <data>", of which a reader wants the reason (and the data, if any), not
 * the thread id or the source location. Unexpected shapes are kept whole. */
static void openssl_reason(const char *line, size_t len, char *out, size_t n)
{
	const char *f[9];
	size_t k = 0;
	f[k++] = line;
	for (size_t i = 0; i < len && k < 9; i++)
		if (line[i] == ':')
			f[k++] = line + i + 1;
	size_t end = len;
	while (end && (line[end - 1] == '\n' || line[end - 1] == '\r'))
		end--;
	if (k < 7 || strncmp(f[1], "error:", 6) != 0) {
		snprintf(out, n, "%.*s", (int)(end > 250 ? 250 : end), line);
		return;
	}
	int rlen = (int)(f[6] - f[5] - 1);
	const char *data = k == 9 ? f[8] : NULL;
	int dlen = data ? (int)(line + end - data) : 0;
	if (dlen > 0)
		snprintf(out, n, "%.*s (%.*s)", rlen, f[5], dlen, data);
	else
		snprintf(out, n, "%.*s", rlen, f[5]);
}

static int on_ssl_error(const char *str, size_t len, void *ctx)
{
	mqtt *m = ctx;
	char reason[256];
	openssl_reason(str, len, reason, sizeof(reason));
	pthread_mutex_lock(&m->mu);
	size_t used = strlen(m->tls_error);
	if (!strstr(m->tls_error, reason))
		snprintf(m->tls_error + used, sizeof(m->tls_error) - used, "%s%s", used ? "; " : "", reason);
	pthread_mutex_unlock(&m->mu);
	return 0;
}

static void on_connect_ok(void *ctx, MQTTAsync_successData5 *r)
{
	mqtt *m = ctx;
	if (strncmp(m->uri, "ssl://", 6) == 0 && tlspolicy__applied() == m->policy_mark) {
		/* A session the TLS floor never saw (a Paho or OpenSSL linked so
		 * that SSL_new is not ours): it may be TLS 1.0 with a 1024-bit
		 * key. Nothing is sent on it. */
		mqtt__event *f = ev_new(MQ_CONNECT_FAILED);
		MQTTAsync_disconnect(m->client, NULL);
		if (!f)
			return;
		f->code = -1;
		f->text = strdup("TLS: the agent's TLS policy (TLS >= 1.2, security level 2, CRL) was not applied to this "
				 "connection by the linked Paho/OpenSSL; refusing it");
		push(m, f);
		return;
	}
	mqtt__event *e = ev_new(MQ_CONNECTED);
	if (!e)
		return;
	e->recv_max = 65535;
	if (r) {
		e->session_present = r->alt.connect.sessionPresent;
		if (MQTTProperties_hasProperty(&r->properties, MQTTPROPERTY_CODE_RECEIVE_MAXIMUM))
			e->recv_max = MQTTProperties_getNumericValue(&r->properties, MQTTPROPERTY_CODE_RECEIVE_MAXIMUM);
		/* Absent: no limit beyond the protocol's (MQTT 5, 3.2.2.3.6). A
		 * publish above it gets the connection closed with 0x95. */
		if (MQTTProperties_hasProperty(&r->properties, MQTTPROPERTY_CODE_MAXIMUM_PACKET_SIZE)) {
			int mp = MQTTProperties_getNumericValue(&r->properties, MQTTPROPERTY_CODE_MAXIMUM_PACKET_SIZE);
			e->max_packet = mp > 0 ? (size_t)mp : 0;
		}
	}
	pthread_mutex_lock(&m->mu);
	m->tls_error[0] = '\0';
	pthread_mutex_unlock(&m->mu);
	push(m, e);
}

static void on_connect_fail(void *ctx, MQTTAsync_failureData5 *r)
{
	mqtt *m = ctx;
	char buf[640], policy[320];
	int crl = 0;
	mqtt__event *e = ev_new(MQ_CONNECT_FAILED);
	if (!e)
		return;
	tlspolicy__take_reason(policy, sizeof(policy), &crl);
	pthread_mutex_lock(&m->mu);
	const char *paho = r && r->message ? r->message : NULL;
	int code = r ? r->code : -1;
	/* "TLS: <OpenSSL's words>" tells sync.c the reason is known; other
	 * texts make it ask tlsprobe for one. "certificate verify failed" is
	 * not a reason: OpenSSL keeps the verify result (untrusted issuer,
	 * expired, ...) in the SSL object, which Paho does not expose; the
	 * probe verifies the broker's chain again and names it. */
	if (crl) /* revocation: the probe does not read the CRL, so the reason is final */
		snprintf(buf, sizeof(buf), "TLS: broker certificate not accepted: %s (OpenSSL: %s)", policy,
			 m->tls_error[0] ? m->tls_error : "handshake failed");
	else if (m->tls_error[0] && strstr(m->tls_error, "certificate verify failed"))
		snprintf(buf, sizeof(buf), "broker certificate not accepted%s%s (OpenSSL: %s)", policy[0] ? ": " : "",
			 policy, m->tls_error);
	else if (m->tls_error[0])
		snprintf(buf, sizeof(buf), "TLS: %s", m->tls_error);
	else if (paho)
		snprintf(buf, sizeof(buf), "%s", paho);
	else if (r && r->reasonCode)
		snprintf(buf, sizeof(buf), "broker refused: %s", MQTTReasonCode_toString(r->reasonCode));
	else if (strncmp(m->uri, "ssl://", 6) == 0)
		snprintf(buf, sizeof(buf), "TCP connect or TLS handshake failed (broker down, certificate not trusted, or host name mismatch) (paho code %d)", code);
	else
		snprintf(buf, sizeof(buf), "TCP connect failed (paho code %d)", code);
	m->tls_error[0] = '\0';
	pthread_mutex_unlock(&m->mu);
	e->code = r && r->reasonCode ? (int)r->reasonCode : code;
	e->text = strdup(buf);
	push(m, e);
}

static void on_lost(void *ctx, char *cause)
{
	mqtt *m = ctx;
	mqtt__event *e = ev_new(MQ_LOST);
	if (!e)
		return;
	e->text = strdup(cause ? cause : "connection lost");
	push(m, e);
}

static void on_disconnected(void *ctx, MQTTProperties *props, enum MQTTReasonCodes rc)
{
	(void)props;
	mqtt *m = ctx;
	mqtt__event *e = ev_new(MQ_LOST);
	if (!e)
		return;
	char buf[160];
	snprintf(buf, sizeof(buf), "broker sent DISCONNECT: %s", MQTTReasonCode_toString(rc));
	e->text = strdup(buf);
	e->code = (int)rc;
	push(m, e);
}

static int on_message(void *ctx, char *topic, int topic_len, MQTTAsync_message *msg)
{
	mqtt *m = ctx;
	mqtt__event *e = ev_new(MQ_MESSAGE);
	size_t tl = topic_len > 0 ? (size_t)topic_len : strlen(topic);
	if (e) {
		e->topic = malloc(tl + 1);
		e->payload = malloc((size_t)msg->payloadlen + 1);
		if (e->topic && e->payload) {
			memcpy(e->topic, topic, tl);
			e->topic[tl] = '\0';
			memcpy(e->payload, msg->payload, (size_t)msg->payloadlen);
			e->payload[msg->payloadlen] = '\0';
			e->len = (size_t)msg->payloadlen;
			/* MQTT 5 request/response: where to answer, and the
			 * requester's token to echo. Lost on OOM: the command
			 * is then answered on the default reply topic. */
			MQTTProperty *rt = MQTTProperties_getProperty(&msg->properties, MQTTPROPERTY_CODE_RESPONSE_TOPIC);
			MQTTProperty *cd = MQTTProperties_getProperty(&msg->properties, MQTTPROPERTY_CODE_CORRELATION_DATA);
			if (rt && rt->value.data.len > 0 && (e->response_topic = malloc((size_t)rt->value.data.len + 1))) {
				memcpy(e->response_topic, rt->value.data.data, (size_t)rt->value.data.len);
				e->response_topic[rt->value.data.len] = '\0';
			}
			if (cd && cd->value.data.len > 0 && (e->correlation = malloc((size_t)cd->value.data.len))) {
				memcpy(e->correlation, cd->value.data.data, (size_t)cd->value.data.len);
				e->correlation_len = (size_t)cd->value.data.len;
			}
			push(m, e);
		} else {
			mqtt__event_free(e);
			/* Returning 0 asks Paho to deliver the message again later. */
			return 0;
		}
	} else {
		return 0;
	}
	MQTTAsync_freeMessage(&msg);
	MQTTAsync_free(topic);
	return 1;
}

static void on_sub_ok(void *ctx, MQTTAsync_successData5 *r)
{
	mqtt *m = ctx;
	mqtt__event *e = ev_new(MQ_SUBSCRIBED);
	if (!e)
		return;
	e->code = r ? (int)r->reasonCode : 0;
	/* A SUBACK reason >= 0x80 is a refusal (e.g. ACL). */
	if (e->code >= 0x80) {
		e->type = MQ_SUBSCRIBE_FAILED;
		e->text = strdup(MQTTReasonCode_toString((enum MQTTReasonCodes)e->code));
	}
	push(m, e);
}

static void on_sub_fail(void *ctx, MQTTAsync_failureData5 *r)
{
	mqtt *m = ctx;
	mqtt__event *e = ev_new(MQ_SUBSCRIBE_FAILED);
	if (!e)
		return;
	e->code = r ? r->code : -1;
	e->text = strdup(r && r->message ? r->message : "subscribe failed");
	push(m, e);
}

static void on_pub_ok(void *ctx, MQTTAsync_successData5 *r)
{
	mqtt *m = ctx;
	mqtt__event *e = ev_new(MQ_PUBLISHED);
	if (!e)
		return;
	e->token = r ? r->token : 0;
	e->code = r ? (int)r->reasonCode : 0;
	if (e->code >= 0x80)
		e->type = MQ_PUBLISH_FAILED;
	push(m, e);
}

static void on_pub_fail(void *ctx, MQTTAsync_failureData5 *r)
{
	mqtt *m = ctx;
	mqtt__event *e = ev_new(MQ_PUBLISH_FAILED);
	if (!e)
		return;
	e->token = r ? r->token : 0;
	/* A PUBACK with a failure reason arrives here with the MQTT 5 reason
	 * code (0x95 packet too large, 0x87 not authorized, ...) beside Paho's
	 * own code: the reason is what the caller can act on. */
	e->code = r ? (r->reasonCode ? (int)r->reasonCode : r->code) : -1;
	push(m, e);
}

/* ---- API: owning thread ---- */

int mqtt__create(const mqtt__opts *o, mqtt **out)
{
	MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer5;
	mqtt *m;
	int rc;

	*out = NULL;
	if (!(m = calloc(1, sizeof(*m))))
		return SCRM_E_NOMEM;
	pthread_mutex_init(&m->mu, NULL);
	m->tail = &m->head;
	m->fd = platform__waker_open();
	if (m->fd < 0) {
		pthread_mutex_destroy(&m->mu);
		free(m);
		return SCRM_E_IO;
	}
	m->uri = dup_or_null(o->uri);
	m->client_id = dup_or_null(o->client_id);
	m->ca_file = dup_or_null(o->ca_file);
	m->cert_file = dup_or_null(o->cert_file);
	m->key_file = dup_or_null(o->key_file);
	m->username = dup_or_null(o->username);
	m->password = dup_or_null(o->password);
	m->keepalive_s = o->keepalive_s > 0 ? o->keepalive_s : 30;
	m->connect_timeout_s = o->connect_timeout_s > 0 ? o->connect_timeout_s : 10;
	m->clean_start = o->clean_start;
	m->session_expiry_s = o->session_expiry_s;
	if (m->uri && strncmp(m->uri, "ssl://", 6) == 0 && tlspolicy__set_crl_file(o->crl_file) != SCRM_OK) {
		mqtt__destroy(m);
		return SCRM_E_NOMEM;
	}

	co.MQTTVersion = MQTTVERSION_5;
	co.sendWhileDisconnected = 0;
	rc = MQTTAsync_createWithOptions(&m->client, m->uri, m->client_id, MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
	if (rc != MQTTASYNC_SUCCESS) {
		m->client = NULL;
		mqtt__destroy(m);
		return SCRM_E_CONFIG;
	}
	MQTTAsync_setCallbacks(m->client, m, on_lost, on_message, NULL);
	MQTTAsync_setDisconnected(m->client, m, on_disconnected);
	*out = m;
	return SCRM_OK;
}

void mqtt__destroy(mqtt *m)
{
	if (!m)
		return;
	if (m->client)
		MQTTAsync_destroy(&m->client);
	mqtt__event *e;
	while ((e = mqtt__next(m)))
		mqtt__event_free(e);
	close(m->fd);
	free(m->uri);
	free(m->client_id);
	free(m->ca_file);
	free(m->cert_file);
	free(m->key_file);
	free(m->username);
	free(m->password);
	free(m->will_topic);
	free(m->will_payload);
	pthread_mutex_destroy(&m->mu);
	free(m);
}

int mqtt__connect(mqtt *m)
{
	MQTTAsync_connectOptions c = MQTTAsync_connectOptions_initializer5;
	MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
	MQTTProperties props = MQTTProperties_initializer;
	MQTTProperties wprops = MQTTProperties_initializer;
	MQTTAsync_willOptions will = MQTTAsync_willOptions_initializer;
	MQTTProperty p;
	int rc;

	c.keepAliveInterval = m->keepalive_s;
	c.connectTimeout = m->connect_timeout_s;
	c.cleanstart = m->clean_start;
	c.automaticReconnect = 0; /* our own backoff decides when */
	c.onSuccess5 = on_connect_ok;
	c.onFailure5 = on_connect_fail;
	c.context = m;
	c.username = m->username;
	c.password = m->password;
	if (m->session_expiry_s > 0) {
		p.identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL;
		p.value.integer4 = (unsigned int)m->session_expiry_s;
		MQTTProperties_add(&props, &p);
		c.connectProperties = &props;
	}
	if (m->will_topic) {
		will.topicName = m->will_topic;
		will.message = m->will_payload;
		will.retained = 1;
		will.qos = 1;
		c.will = &will;
		if (m->will_delay_s > 0) {
			p.identifier = MQTTPROPERTY_CODE_WILL_DELAY_INTERVAL;
			p.value.integer4 = (unsigned int)m->will_delay_s;
			MQTTProperties_add(&wprops, &p);
			c.willProperties = &wprops;
		}
	}
	if (strncmp(m->uri, "ssl://", 6) == 0) {
		ssl.trustStore = m->ca_file;
		ssl.keyStore = m->cert_file;
		ssl.privateKey = m->key_file;
		ssl.enableServerCertAuth = 1;
		ssl.verify = 1; /* check the host name against the certificate */
		ssl.disableDefaultTrustStore = m->ca_file ? 1 : 0;
		/* Ignored by Paho 1.3.12 with OpenSSL 3: tlspolicy enforces it. */
		ssl.sslVersion = MQTT_SSL_VERSION_TLS_1_2;
		ssl.enabledCipherSuites = TLSPOLICY_CIPHERS;
		ssl.ssl_error_cb = on_ssl_error;
		ssl.ssl_error_context = m;
		c.ssl = &ssl;
	}
	/* Reasons are collected per attempt: none from an earlier session. */
	pthread_mutex_lock(&m->mu);
	m->tls_error[0] = '\0';
	m->policy_mark = tlspolicy__applied();
	pthread_mutex_unlock(&m->mu);
	tlspolicy__take_reason(NULL, 0, NULL);
	rc = MQTTAsync_connect(m->client, &c);
	MQTTProperties_free(&props);
	MQTTProperties_free(&wprops);
	return rc == MQTTASYNC_SUCCESS ? SCRM_OK : SCRM_E_IO;
}

int mqtt__subscribe(mqtt *m, const char *topic, int qos)
{
	MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
	ro.onSuccess5 = on_sub_ok;
	ro.onFailure5 = on_sub_fail;
	ro.context = m;
	return MQTTAsync_subscribe(m->client, topic, qos, &ro) == MQTTASYNC_SUCCESS ? SCRM_OK : SCRM_E_IO;
}


/* Every publish: optional MQTT 5 Response Topic / Correlation Data. */
static int publish_props(mqtt *m, const char *topic, const void *payload, size_t len, int qos, int retained,
			 const char *response_topic, const void *corr, size_t corr_len, int *token)
{
	MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
	MQTTAsync_message msg = MQTTAsync_message_initializer;
	MQTTProperty p;
	ro.onSuccess5 = on_pub_ok;
	ro.onFailure5 = on_pub_fail;
	ro.context = m;
	msg.payload = (void *)(uintptr_t)payload;
	msg.payloadlen = (int)len;
	msg.qos = qos;
	msg.retained = retained;
	if (response_topic) {
		p.identifier = MQTTPROPERTY_CODE_RESPONSE_TOPIC;
		p.value.data.data = (char *)(uintptr_t)response_topic;
		p.value.data.len = (int)strlen(response_topic);
		MQTTProperties_add(&msg.properties, &p); /* copies the data */
	}
	if (corr && corr_len > 0 && corr_len <= 65535) {
		p.identifier = MQTTPROPERTY_CODE_CORRELATION_DATA;
		p.value.data.data = (char *)(uintptr_t)corr;
		p.value.data.len = (int)corr_len;
		MQTTProperties_add(&msg.properties, &p);
	}
	int rc = MQTTAsync_sendMessage(m->client, topic, &msg, &ro);
	MQTTProperties_free(&msg.properties);
	if (token)
		*token = ro.token;
	return rc == MQTTASYNC_SUCCESS ? SCRM_OK : SCRM_E_IO;
}

int mqtt__publish(mqtt *m, const char *topic, const void *payload, size_t len, int qos, int retained,
		  int *token)
{
	return publish_props(m, topic, payload, len, qos, retained, NULL, NULL, 0, token);
}

int mqtt__publish_reply(mqtt *m, const char *topic, const void *payload, size_t len, const void *corr,
			size_t corr_len)
{
	return publish_props(m, topic, payload, len, 1, 0, NULL, corr, corr_len, NULL);
}

int mqtt__publish_request(mqtt *m, const char *topic, const void *payload, size_t len, const char *response_topic,
			  const void *corr, size_t corr_len)
{
	return publish_props(m, topic, payload, len, 1, 0, response_topic, corr, corr_len, NULL);
}

int mqtt__set_will(mqtt *m, const char *topic, const char *payload, int delay_s)
{
	char *t = topic ? strdup(topic) : NULL, *p = topic && payload ? strdup(payload) : NULL;
	if (topic && (!t || !p)) {
		free(t);
		free(p);
		return SCRM_E_NOMEM;
	}
	free(m->will_topic);
	free(m->will_payload);
	m->will_topic = t;
	m->will_payload = p;
	m->will_delay_s = delay_s;
	return SCRM_OK;
}

void mqtt__disconnect(mqtt *m, int timeout_ms)
{
	MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer5;
	d.timeout = timeout_ms;
	if (MQTTAsync_isConnected(m->client))
		MQTTAsync_disconnect(m->client, &d);
	/* Give Paho a moment to send DISCONNECT before destroy. */
	for (int i = 0; i < timeout_ms / 10 && MQTTAsync_isConnected(m->client); i++)
		usleep(10000);
}
