/* SPDX-License-Identifier: Apache-2.0 */
/*
 * mqtt: a thin layer over Paho MQTTAsync (MQTT 5, TLS via OpenSSL) that turns
 * Paho's callbacks, which run on Paho's own threads, into a queue of events
 * the owning poll loop drains: callbacks copy what they need, enqueue, and
 * signal an eventfd. Nothing here touches SQLite or the outbox. Paho runs
 * with persistence and offline buffering off: the outbox is the only store.
 */
#ifndef SCRM_MQTT_H
#define SCRM_MQTT_H

#include <stddef.h>
#include <stdint.h>

typedef enum mqtt__etype {
	MQ_CONNECTED,      /* recv_max, session_present */
	MQ_CONNECT_FAILED, /* code, text */
	MQ_LOST,           /* text; code = the broker's DISCONNECT reason code, 0 if none */
	MQ_SUBSCRIBED,     /* code = granted QoS or reason */
	MQ_SUBSCRIBE_FAILED,
	MQ_PUBLISHED,      /* token: the broker has it (PUBACK); proves nothing more */
	MQ_PUBLISH_FAILED, /* token; code = the PUBACK's reason code (>= 0x80), else Paho's error code */
	MQ_MESSAGE,        /* topic, payload, len */
} mqtt__etype;

typedef struct mqtt__event {
	struct mqtt__event *next;
	mqtt__etype type;
	int code;
	int token;
	int recv_max;
	size_t max_packet; /* MQ_CONNECTED: the broker's Maximum Packet Size, 0 = none */
	int session_present;
	char *text;    /* owned; may be NULL */
	char *topic;   /* owned (MQ_MESSAGE) */
	char *payload; /* owned, NUL-terminated (MQ_MESSAGE) */
	size_t len;
	/* MQ_MESSAGE, MQTT 5 request/response: owned, NULL when absent */
	char *response_topic;
	void *correlation;
	size_t correlation_len;
} mqtt__event;

typedef struct mqtt__opts {
	const char *uri;        /* ssl://host:port or tcp://host:port */
	const char *client_id;
	const char *ca_file, *cert_file, *key_file; /* TLS; cert/key optional */
	const char *crl_file; /* TLS: the broker certificate must not be revoked in it; NULL = no CRL check */
	const char *username, *password;
	int keepalive_s;
	int connect_timeout_s;
	int clean_start;
	int64_t session_expiry_s;
} mqtt__opts;

typedef struct mqtt mqtt;

/* Create the client (does not connect). Strings copied. 0 or SCRM_E_*. */
int mqtt__create(const mqtt__opts *o, mqtt **out);
void mqtt__destroy(mqtt *m);
/* Readable when events are queued. */
int mqtt__fd(const mqtt *m);
/* Pop the next event (caller frees with mqtt__event_free), NULL if none. */
mqtt__event *mqtt__next(mqtt *m);
void mqtt__event_free(mqtt__event *e);

int mqtt__connect(mqtt *m);
int mqtt__subscribe(mqtt *m, const char *topic, int qos);
/* Publish; *token identifies the later MQ_PUBLISHED/FAILED. */
int mqtt__publish(mqtt *m, const char *topic, const void *payload, size_t len, int qos, int retained,
		  int *token);
/* Publish with MQTT 5 Correlation Data (copied; may be NULL/0): a
 * response to a request that carried it. */
int mqtt__publish_reply(mqtt *m, const char *topic, const void *payload, size_t len, const void *corr,
			size_t corr_len);
/* Publish an MQTT 5 request, QoS 1: Response Topic and Correlation Data
 * (copied) set so the responder knows where to answer and what to echo. */
int mqtt__publish_request(mqtt *m, const char *topic, const void *payload, size_t len, const char *response_topic,
			  const void *corr, size_t corr_len);
/* The last will for the next connects (copied; NULL topic = none): the
 * broker publishes it, retained, QoS 1, if the connection dies without a
 * DISCONNECT and is not resumed within delay_s (MQTT 5 Will Delay). */
int mqtt__set_will(mqtt *m, const char *topic, const char *payload, int delay_s);
/* Graceful DISCONNECT, waiting up to timeout_ms. */
void mqtt__disconnect(mqtt *m, int timeout_ms);

#endif
