/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-central, push.c: `push`: publish one cache delta to a store and wait
 * for the PUBACK.
 */
#include "central.h"

/* ======================================================================
 * push: publish one cache delta to a store
 * ====================================================================== */

/* Paho callbacks of `push` hand their outcome to the main thread here. */
static struct push_state {
	pthread_mutex_t m;
	pthread_cond_t cv;
	int connected, connect_failed, lost, published, publish_failed;
	int reason; /* PUBACK reason code */
	char why[300];
} ps;

static void push_signal(void)
{
	pthread_cond_broadcast(&ps.cv);
	pthread_mutex_unlock(&ps.m);
}

static void push_on_connect_ok(void *ctx, MQTTAsync_successData5 *resp)
{
	(void)ctx;
	(void)resp;
	pthread_mutex_lock(&ps.m);
	ps.connected = 1;
	push_signal();
}

/* A failed connect or publish: *flag set, and why it failed kept for the
 * message the main thread prints. */
static void push_failed(int *flag, const MQTTAsync_failureData5 *resp)
{
	pthread_mutex_lock(&ps.m);
	*flag = 1;
	snprintf(ps.why, sizeof ps.why, "code=%d reason=0x%02x %s", resp ? resp->code : 0,
		 resp ? (unsigned)resp->reasonCode : 0u,
		 resp && resp->message ? resp->message : "");
	push_signal();
}

static void push_on_connect_fail(void *ctx, MQTTAsync_failureData5 *resp)
{
	(void)ctx;
	push_failed(&ps.connect_failed, resp);
}

static void push_on_lost(void *ctx, char *cause)
{
	(void)ctx;
	pthread_mutex_lock(&ps.m);
	ps.lost = 1;
	snprintf(ps.why, sizeof ps.why, "connection lost: %s", cause ? cause : "unknown");
	push_signal();
}

static int push_on_message(void *ctx, char *topic, int topic_len, MQTTAsync_message *m)
{
	(void)ctx;
	(void)topic_len;
	MQTTAsync_freeMessage(&m); /* push subscribes to nothing */
	MQTTAsync_free(topic);
	return 1;
}

static void push_on_pub_ok(void *ctx, MQTTAsync_successData5 *resp)
{
	(void)ctx;
	pthread_mutex_lock(&ps.m);
	ps.reason = resp ? (int)resp->reasonCode : 0;
	if (ps.reason >= 0x80) {
		ps.publish_failed = 1;
		snprintf(ps.why, sizeof ps.why, "PUBACK reason=0x%02x", (unsigned)ps.reason);
	} else {
		ps.published = 1;
	}
	push_signal();
}

static void push_on_pub_fail(void *ctx, MQTTAsync_failureData5 *resp)
{
	(void)ctx;
	push_failed(&ps.publish_failed, resp);
}

/* Wait (main thread) until *flag or *fail_a or *fail_b is set, or the
 * monotonic deadline passes. Returns *flag. */
static int push_wait(const int *flag, const int *fail_a, const int *fail_b, int64_t deadline)
{
	int done;

	pthread_mutex_lock(&ps.m);
	while (!*flag && !*fail_a && !*fail_b && tk_mono_ms() < deadline) {
		struct timespec ts;
		int64_t left = deadline - tk_mono_ms();

		if (left > 100)
			left = 100; /* re-check the clock often; no 32-bit time_t arithmetic */
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += (long)(left % 1000) * 1000000L;
		ts.tv_sec += (time_t)(left / 1000) + (time_t)(ts.tv_nsec / 1000000000L);
		ts.tv_nsec %= 1000000000L;
		pthread_cond_timedwait(&ps.cv, &ps.m, &ts);
	}
	done = *flag;
	pthread_mutex_unlock(&ps.m);
	return done;
}

/* [A-Za-z0-9_.-]{1,64}: a stream as a topic level (tenants and stores also
 * follow ident__problem). */
static int ident_ok(const char *s)
{
	char seg[IDENT_MAX + 2];
	char tmp[IDENT_MAX + 1];
	int n = snprintf(seg, sizeof seg, "%s/", s);

	return n > 1 && (size_t)n < sizeof seg && take_ident(seg, tmp) != NULL;
}

/* The whole of path ("-": stdin), at most PUSH_MAX_BYTES. NULL: message printed. */
static char *push_read(const char *path, size_t *len)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
	char *buf = NULL;
	size_t cap = 0, n = 0;

	if (!f) {
		fprintf(stderr, "scrm-central push: cannot open %s: %s\n", path, strerror(errno));
		return NULL;
	}
	for (;;) {
		size_t got;

		if (n + 65536 + 1 > cap) {
			char *nb;

			cap = cap ? cap * 2 : 65536 * 2;
			nb = realloc(buf, cap);
			if (!nb) {
				fprintf(stderr, "scrm-central push: out of memory reading %s\n", path);
				goto fail;
			}
			buf = nb;
		}
		got = fread(buf + n, 1, cap - n - 1, f);
		n += got;
		if (n > PUSH_MAX_BYTES) {
			fprintf(stderr, "scrm-central push: %s: larger than %u bytes\n", path,
				PUSH_MAX_BYTES);
			goto fail;
		}
		if (got == 0)
			break;
	}
	if (ferror(f)) {
		fprintf(stderr, "scrm-central push: cannot read %s: %s\n", path, strerror(errno));
		goto fail;
	}
	if (f != stdin)
		fclose(f);
	buf[n] = '\0';
	*len = n;
	return buf;
fail:
	if (f != stdin)
		fclose(f);
	free(buf);
	return NULL;
}

/* Envelope checks of a delta (protocol.md, "Delta"); the stream name in
 * *stream (borrowed from root). Semantics (version > base, the ops
 * themselves, sizes) are left to the agent on purpose: tests push bad
 * deltas to drive its refusal paths. 0, or -1 with "field: problem". */
static int delta_check(const cJSON *root, const char **stream, char *why, size_t wlen)
{
	const cJSON *it;
	int64_t base, version;

	if (!cJSON_IsObject(root)) {
		snprintf(why, wlen, "not a JSON object");
		return -1;
	}
	it = cJSON_GetObjectItemCaseSensitive(root, "type");
	if (!cJSON_IsString(it) || strcmp(it->valuestring, "delta") != 0) {
		snprintf(why, wlen, "type: missing or not \"delta\"");
		return -1;
	}
	it = cJSON_GetObjectItemCaseSensitive(root, "stream");
	if (!cJSON_IsString(it) || !ident_ok(it->valuestring)) {
		snprintf(why, wlen, "stream: missing or not a topic level [A-Za-z0-9_.-]{1,64}");
		return -1;
	}
	*stream = it->valuestring;
	if (json_int64(cJSON_GetObjectItemCaseSensitive(root, "base"), &base) != 0 || base < 0) {
		snprintf(why, wlen, "base: missing or not an integer in 0..2^53");
		return -1;
	}
	if (json_int64(cJSON_GetObjectItemCaseSensitive(root, "version"), &version) != 0 ||
	    version < 0) {
		snprintf(why, wlen, "version: missing or not an integer in 0..2^53");
		return -1;
	}
	if (!cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(root, "ops"))) {
		snprintf(why, wlen, "ops: missing or not an array");
		return -1;
	}
	return 0;
}

/* Starts connecting client to the broker with the run's TLS identity; the
 * answer comes to push_on_connect_ok/push_on_connect_fail. */
static int push_connect(MQTTAsync client, int64_t timeout_ms)
{
	MQTTAsync_connectOptions cc = MQTTAsync_connectOptions_initializer5;
	MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;

	ssl.trustStore = g.opt.ca;
	ssl.keyStore = g.opt.cert;
	ssl.privateKey = g.opt.key;
	ssl.enableServerCertAuth = 1;
	ssl.verify = 1;
	ssl.ssl_error_cb = on_tls_error;
	cc.ssl = &ssl;
	cc.cleanstart = 1;
	cc.keepAliveInterval = 20;
	cc.connectTimeout = (int)((timeout_ms + 999) / 1000);
	cc.onSuccess5 = push_on_connect_ok;
	cc.onFailure5 = push_on_connect_fail;
	return MQTTAsync_connect(client, &cc);
}

/* Starts publishing the delta (QoS 1, not retained); the PUBACK comes to
 * push_on_pub_ok/push_on_pub_fail. */
static int push_publish(MQTTAsync client, const char *topic, char *payload, size_t len)
{
	MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
	MQTTAsync_message msg = MQTTAsync_message_initializer;

	msg.payload = payload;
	msg.payloadlen = (int)len;
	msg.qos = 1;
	msg.retained = 0;
	ro.onSuccess5 = push_on_pub_ok;
	ro.onFailure5 = push_on_pub_fail;
	return MQTTAsync_sendMessage(client, topic, &msg, &ro);
}

int cmd_push_main(const char *path, const char *tenant, const char *store,
			 int64_t timeout_ms)
{
	MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer5;
	pthread_condattr_t ca;
	MQTTAsync client = NULL;
	cJSON *root = NULL;
	const char *stream = NULL;
	const cJSON *v;
	char *payload = NULL, topic[3 * IDENT_MAX + 64], why[200];
	size_t len = 0;
	int64_t deadline;
	int rc, exit_code = 1;

	pthread_mutex_init(&g.lock, NULL); /* on_tls_error */
	pthread_mutex_init(&ps.m, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&ps.cv, &ca);
	pthread_condattr_destroy(&ca);

	payload = push_read(path, &len);
	if (!payload)
		goto cleanup;
	root = cJSON_ParseWithLength(payload, len);
	if (delta_check(root, &stream, why, sizeof why) != 0) {
		fprintf(stderr, "scrm-central push: %s: not a cache delta: %s\n", path, why);
		goto cleanup;
	}
	if (stream_find(stream) < 0)
		fprintf(stderr, "scrm-central push: warning: stream '%s' is not a v1 stream "
				"(agents will refuse it); publishing anyway\n",
			stream);
	v = cJSON_GetObjectItemCaseSensitive(root, "v");
	if (!cJSON_IsNumber(v) || v->valuedouble != 1.0)
		fprintf(stderr, "scrm-central push: warning: v is not 1 (agents will ignore the "
				"delta); publishing anyway\n");
	if (len > DELTA_AGENT_MAX_BYTES)
		fprintf(stderr, "scrm-central push: warning: %zu bytes, above the agents' 4 MiB "
				"limit (they will refuse it); publishing anyway\n",
			len);
	snprintf(topic, sizeof topic, "scrm/v1/%s/%s/down/cache/%s", tenant, store, stream);

	rc = MQTTAsync_createWithOptions(&client, g.opt.broker, g.opt.client_id,
					 MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
	if (rc != MQTTASYNC_SUCCESS) {
		fprintf(stderr, "scrm-central push: cannot create MQTT client for %s: %s\n",
			g.opt.broker, MQTTAsync_strerror(rc));
		client = NULL;
		goto cleanup;
	}
	if (MQTTAsync_setCallbacks(client, NULL, push_on_lost, push_on_message, NULL) !=
	    MQTTASYNC_SUCCESS) {
		fprintf(stderr, "scrm-central push: cannot set MQTT callbacks\n");
		goto cleanup;
	}
	deadline = tk_mono_ms() + timeout_ms;
	rc = push_connect(client, timeout_ms);
	if (rc != MQTTASYNC_SUCCESS) {
		fprintf(stderr, "scrm-central push: cannot start connecting to %s: %s\n",
			g.opt.broker, MQTTAsync_strerror(rc));
		goto cleanup;
	}
	if (!push_wait(&ps.connected, &ps.connect_failed, &ps.lost, deadline)) {
		pthread_mutex_lock(&g.lock);
		fprintf(stderr, "scrm-central push: cannot connect to %s: %s%s%s\n", g.opt.broker,
			ps.connect_failed || ps.lost ? ps.why : "timed out",
			g.tls_err[0] ? "; TLS: " : "", g.tls_err);
		pthread_mutex_unlock(&g.lock);
		goto cleanup;
	}
	rc = push_publish(client, topic, payload, len);
	if (rc != MQTTASYNC_SUCCESS) {
		fprintf(stderr, "scrm-central push: publish to %s refused: %s\n", topic,
			MQTTAsync_strerror(rc));
		goto cleanup;
	}
	if (!push_wait(&ps.published, &ps.publish_failed, &ps.lost, deadline)) {
		fprintf(stderr, "scrm-central push: no PUBACK for %s: %s\n", topic,
			ps.publish_failed || ps.lost ? ps.why : "timed out");
		goto cleanup;
	}
	printf("published topic=%s bytes=%zu puback_reason=0x%02x\n", topic, len,
	       (unsigned)ps.reason);
	if (ps.reason == 0x10)
		fprintf(stderr, "scrm-central push: note: the broker says no subscription matched "
				"(no agent of this store has subscribed yet)\n");
	exit_code = fflush(stdout) == 0 ? 0 : 1;

cleanup:
	if (client) {
		if (MQTTAsync_isConnected(client)) {
			MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer5;

			d.timeout = 1000;
			if (MQTTAsync_disconnect(client, &d) == MQTTASYNC_SUCCESS) {
				int64_t until = tk_mono_ms() + 1500;

				while (MQTTAsync_isConnected(client) && tk_mono_ms() < until)
					usleep(10000);
			}
		}
		MQTTAsync_destroy(&client);
	}
	cJSON_Delete(root);
	free(payload);
	pthread_cond_destroy(&ps.cv);
	pthread_mutex_destroy(&ps.m);
	pthread_mutex_destroy(&g.lock);
	return exit_code;
}
