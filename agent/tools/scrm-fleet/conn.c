/* SPDX-License-Identifier: Apache-2.0 */
/*
 * conn: scrm-fleet's connection to the broker — as an operator identity
 * (mutual TLS or username and password), through the transport's MQTT
 * client — and waiting on it: the next event, a subscription granted. The
 * process ends right after the action, so closing only disconnects.
 */
#include "conn.h"
#include "uri.h"

#include <scrm/scrm.h>

#include "platform.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Wait for the next event of the client, up to `until` (monotonic). */
mqtt__event *conn__next_event(mqtt *m, int64_t until)
{
	for (;;) {
		mqtt__event *e = mqtt__next(m);
		if (e)
			return e;
		int64_t now = platform__mono_ms();
		if (now >= until)
			return NULL;
		struct pollfd pf = {.fd = mqtt__fd(m), .events = POLLIN};
		if (poll(&pf, 1, (int)(until - now)) > 0)
			platform__waker_drain(mqtt__fd(m));
	}
}

static int conn_connect(const console__args *a, struct conn *c, const char *uri, int plain, int64_t timeout_ms);

/* The broker as Paho names it (transport/uri.h), then the connection. */
int conn__open(const console__args *a, struct conn *c, int64_t timeout_ms)
{
	char *uri = NULL;
	int plain = 0;
	memset(c, 0, sizeof(*c));
	if (uri__paho(a->broker, &uri, &plain, NULL) != URI_OK) {
		fprintf(stderr, "scrmctl fleet: --broker: must be mqtts://host:port (or mqtt:// for plaintext), got \"%.80s\"\n",
			a->broker);
		return 2;
	}
	int rc = conn_connect(a, c, uri, plain, timeout_ms);
	free(uri);
	return rc;
}

static int conn_connect(const console__args *a, struct conn *c, const char *uri, int plain, int64_t timeout_ms)
{
	char *password = NULL;
	uint32_t r = 0;
	if (!plain && !a->ca) {
		fprintf(stderr, "scrmctl fleet: --ca: required with TLS (the CA of the broker's certificate)\n");
		return 2;
	}
	if (a->password_file) {
		size_t n = 0;
		int e = platform__read_file(a->password_file, 4096, &password, &n);
		if (e) {
			fprintf(stderr, "scrmctl fleet: --password-file %s: %s\n", a->password_file, strerror(-e));
			return 2;
		}
		while (n && (password[n - 1] == '\n' || password[n - 1] == '\r'))
			password[--n] = '\0';
	}
	platform__random(&r, sizeof(r));
	if (a->client_id)
		snprintf(c->client_id, sizeof(c->client_id), "%s", a->client_id);
	else
		snprintf(c->client_id, sizeof(c->client_id), "scrmctl-%ld-%08x", (long)getpid(), r);
	mqtt__opts mo = {.uri = uri,
			 .client_id = c->client_id,
			 .ca_file = a->ca,
			 .cert_file = a->cert,
			 .key_file = a->key,
			 .username = a->username,
			 .password = password,
			 .keepalive_s = 30,
			 .connect_timeout_s = (int)((timeout_ms + 999) / 1000),
			 .clean_start = 1,
			 .session_expiry_s = 0};
	int rc = mqtt__create(&mo, &c->mq);
	free(password);
	if (rc != SCRM_OK) {
		fprintf(stderr, "scrmctl fleet: cannot create an MQTT client for %s\n", uri);
		return 2;
	}
	if (mqtt__connect(c->mq) != SCRM_OK) {
		fprintf(stderr, "scrmctl fleet: cannot start connecting to %s\n", uri);
		return 3;
	}
	int64_t until = platform__mono_ms() + timeout_ms;
	for (;;) {
		mqtt__event *e = conn__next_event(c->mq, until);
		if (!e) {
			fprintf(stderr, "scrmctl fleet: no connection to %s within %lld ms\n", uri, (long long)timeout_ms);
			return 3;
		}
		int t = e->type;
		if (t == MQ_CONNECT_FAILED) {
			char why[300]; /* the broker's words */
			fprintf(stderr, "scrmctl fleet: cannot connect to %s: %s\n", uri,
				e->text ? console__shown(why, sizeof(why), e->text) : "refused");
		}
		mqtt__event_free(e);
		if (t == MQ_CONNECTED)
			return 0;
		if (t == MQ_CONNECT_FAILED)
			return 3;
	}
}

/* The process ends right after: DISCONNECT (so the broker drops the
 * session at once) and let exit() reclaim the client. Destroying a Paho
 * client whose threads are still closing its TLS session is racy (seen as
 * a rare crash under qemu and OpenSSL objects leaked); a handle kept
 * reachable here is neither. Output is flushed first, whatever happens. */
static mqtt *g_client;

void conn__close(struct conn *c)
{
	fflush(stdout);
	if (!c->mq)
		return;
	g_client = c->mq;
	mqtt__disconnect(c->mq, 1000);
	c->mq = NULL;
}

int conn__subscribe_wait(struct conn *c, const char *topic, int64_t timeout_ms)
{
	if (mqtt__subscribe(c->mq, topic, 1) != SCRM_OK)
		return 3;
	int64_t until = platform__mono_ms() + timeout_ms;
	for (;;) {
		mqtt__event *e = conn__next_event(c->mq, until);
		if (!e) {
			fprintf(stderr, "scrmctl fleet: no answer to the subscription to %s\n", topic);
			return 3;
		}
		int t = e->type;
		if (t == MQ_SUBSCRIBE_FAILED) {
			char why[300];
			fprintf(stderr, "scrmctl fleet: subscription to %s refused: %s (is this identity allowed to read it?)\n",
				topic, console__shown(why, sizeof(why), e->text));
		}
		if (t == MQ_SUBSCRIBED || t == MQ_SUBSCRIBE_FAILED) {
			mqtt__event_free(e);
			return t == MQ_SUBSCRIBED ? 0 : 1;
		}
		if (t == MQ_LOST) {
			mqtt__event_free(e);
			fprintf(stderr, "scrmctl fleet: connection lost\n");
			return 3;
		}
		mqtt__event_free(e);
	}
}
