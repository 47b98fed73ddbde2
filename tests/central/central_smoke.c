/* SPDX-License-Identifier: Apache-2.0 */
/*
 * central_smoke: end-to-end check of scrm-central and of the test harness,
 * with a real mosquitto over TLS and a hand-written device (Paho).
 *
 * It proves what the integration tests rely on: the PKI made by the harness
 * is valid (openssl verify) and host names are checked (Paho refuses the
 * "wronghost" and "other CA" cases); the central stores a batch, acks it
 * with ranges and rejections only after storing, acks a redelivery again
 * without storing it twice, keeps a same-seq-different-id event aside,
 * survives garbage, resubscribes after a broker restart, reopens its
 * database after a restart, and its report says all of that.
 *
 * The cache side: with --cache-dir, a resync request gets the snapshot of
 * a members.jsonl in chunks (--chunk-records 2) with the right envelope,
 * records and "forgotten"; a resume request for the current snapshot id
 * gets only the chunks from from_chunk, one for another id a new snapshot;
 * invalid requests are dropped; a stream without a file is one empty chunk;
 * --drop-chunk skips a chunk once; `push` delivers a delta to the store
 * topic and refuses a file that is not a delta; report counts the requests.
 *
 * The protocol's safety rules (issue 11): an event below a seq the device
 * said was settled is stored, never dropped, and counted as a violation
 * unless "recovered" (--strict stops central on one); set-aside markers
 * settle their seq; a second sale under one order_id is kept aside; a seq an
 * `after` declares missing is stepped over but never acked; a payload
 * repeating a key is dropped; a verdict query gets the held verdicts again.
 *
 * Exits 0 if every check passed, 1 otherwise; each failure prints a line
 * starting with "FAIL".
 */
#include "harness.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#define ACK_TOPIC "scrm/v1/acme/s1/pos-01/down/ack"
#define UP_TOPIC "scrm/v1/acme/s1/pos-01/up/events"
#define RESYNC_TOPIC "scrm/v1/acme/s1/pos-01/up/cache/resync"
#define DEVICE_CACHE_TOPIC "scrm/v1/acme/s1/pos-01/down/cache/"
#define STORE_CACHE_TOPIC "scrm/v1/acme/s1/down/cache/"

static int g_failures;

static int check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int check(int ok, const char *fmt, ...)
{
	va_list ap;

	fputs(ok ? "ok:   " : "FAIL: ", ok ? stdout : stderr);
	va_start(ap, fmt);
	vfprintf(ok ? stdout : stderr, fmt, ap);
	va_end(ap);
	fputc('\n', ok ? stdout : stderr);
	fflush(stdout);
	if (!ok)
		g_failures++;
	return ok;
}

struct ctx {
	char *dir;
	char path_ca[512], path_other_ca[512], path_db[512], path_ready[512];
	char path_central_log[512], path_client_crt[512], path_client_key[512];
	char path_cache[512];
	const char *central_bin;
	th_broker *broker;
	pid_t central;
};

static const char event_purchase1[] =
	"{\"id\":\"0193b3c2-7a10-7f3e-8d21-000000000001\",\"seq\":1,\"kind\":\"purchase\","
	"\"wall_ms\":1764000100000,\"mono_ms\":86400123,"
	"\"boot\":\"9f1c0d1e-6a43-4b7e-9a51-0c2d9e8f7a6b\",\"clock_ok\":true,"
	"\"body\":{\"order_id\":\"A-1001\",\"lines\":[{\"sku\":\"85123A\",\"qty\":6,"
	"\"unit_price\":255,\"discount\":0}],\"discount\":0,\"total\":1530,"
	"\"currency\":\"GBP\",\"payment\":\"card\"}}";

/* seq 2 is malformed on purpose: body is a string. */
static const char event_bad_body2[] =
	"{\"id\":\"0193b3c2-7a10-7f3e-8d21-000000000002\",\"seq\":2,\"kind\":\"purchase\","
	"\"wall_ms\":1764000100001,\"mono_ms\":86400124,"
	"\"boot\":\"9f1c0d1e-6a43-4b7e-9a51-0c2d9e8f7a6b\",\"clock_ok\":true,\"body\":\"oops\"}";

static const char event_scan3[] =
	"{\"id\":\"0193b3c2-7a10-7f3e-8d21-000000000003\",\"seq\":3,\"kind\":\"member_scan\","
	"\"wall_ms\":1764000100002,\"mono_ms\":86400125,"
	"\"boot\":\"9f1c0d1e-6a43-4b7e-9a51-0c2d9e8f7a6b\",\"clock_ok\":false,"
	"\"body\":{\"member_id\":\"17850\",\"method\":\"qr\"}}";

/* Same seq 3, another id: what a device with a reset outbox would send. */
static const char event_scan3_other_id[] =
	"{\"id\":\"0193b3c2-7a10-7f3e-8d21-0000000000ff\",\"seq\":3,\"kind\":\"member_scan\","
	"\"wall_ms\":1764000200000,\"mono_ms\":1000,"
	"\"boot\":\"00000000-6a43-4b7e-9a51-0c2d9e8f7a6b\",\"clock_ok\":true,"
	"\"body\":{\"member_id\":\"99999\",\"method\":\"card\"}}";

/* An unknown kind with an unknown field: stored as an opaque body. */
static const char event_future4[] =
	"{\"id\":\"0193b3c2-7a10-7f3e-8d21-000000000004\",\"seq\":4,\"kind\":\"gift_card\","
	"\"wall_ms\":1764000100003,\"mono_ms\":86400126,\"future_field\":[1,2],"
	"\"boot\":\"9f1c0d1e-6a43-4b7e-9a51-0c2d9e8f7a6b\",\"clock_ok\":true,"
	"\"body\":{\"card\":\"X\"}}";

/* Refused by the central's --reject-kind test_forbidden. */
static const char event_forbidden5[] =
	"{\"id\":\"0193b3c2-7a10-7f3e-8d21-000000000005\",\"seq\":5,\"kind\":\"test_forbidden\","
	"\"wall_ms\":1764000100004,\"mono_ms\":86400127,"
	"\"boot\":\"9f1c0d1e-6a43-4b7e-9a51-0c2d9e8f7a6b\",\"clock_ok\":true,\"body\":{}}";

static const char event_purchase6[] =
	"{\"id\":\"0193b3c2-7a10-7f3e-8d21-000000000006\",\"seq\":6,\"kind\":\"return\","
	"\"wall_ms\":1764000100005,\"mono_ms\":86400128,"
	"\"boot\":\"9f1c0d1e-6a43-4b7e-9a51-0c2d9e8f7a6b\",\"clock_ok\":true,"
	"\"body\":{\"return_id\":\"R-77\",\"order_id\":\"A-1001\",\"lines\":[{\"sku\":\"85123A\","
	"\"qty\":1,\"unit_price\":255,\"discount\":0}],\"total\":255,\"currency\":\"GBP\","
	"\"refund_method\":\"card\"}}";

static char *make_batch(const char *batch_id, const char *const events[], size_t n)
{
	size_t cap = 256, i;
	char *out;
	size_t used;

	for (i = 0; i < n; i++)
		cap += strlen(events[i]) + 1;
	out = malloc(cap);
	if (!out)
		return NULL;
	used = (size_t)snprintf(out, cap, "{\"v\":1,\"batch\":\"%s\",\"sent_ms\":%lld,\"events\":[",
				batch_id, (long long)th_wall_ms());
	for (i = 0; i < n; i++)
		used += (size_t)snprintf(out + used, cap - used, "%s%s", i ? "," : "", events[i]);
	snprintf(out + used, cap - used, "]}");
	return out;
}

/* Compare the ack's "acked" ranges with want ("[[1,1],[3,3]]" style, exact
 * JSON text after re-printing). */
static int ranges_equal(const cJSON *acked, const char *want)
{
	char *text = cJSON_PrintUnformatted(acked);
	int eq = text && strcmp(text, want) == 0;

	if (!eq)
		fprintf(stderr, "      acked is %s, want %s\n", text ? text : "(none)", want);
	cJSON_free(text);
	return eq;
}

/* Wait for the next ack and check it. want_rej_seq < 0: no rejection;
 * otherwise exactly one, for that seq, whose reason starts with
 * want_reason_prefix (the field name). */
static int expect_ack(th_mqtt *dev, const char *batch_id, const char *want_ranges,
		      long want_rej_seq, const char *want_reason_prefix)
{
	th_mqtt_msg *msg = th_mqtt_recv(dev, 15000);
	cJSON *root = NULL;
	const cJSON *v, *b, *acked, *rej, *r0, *seq, *reason;
	int ok = 0;

	if (!check(msg != NULL, "ack for %s received", batch_id))
		return 0;
	check(strcmp(msg->topic, ACK_TOPIC) == 0, "ack topic is %s", msg->topic);
	root = cJSON_Parse(msg->payload);
	if (!check(root != NULL, "ack is JSON: %s", msg->payload))
		goto out;
	v = cJSON_GetObjectItemCaseSensitive(root, "v");
	b = cJSON_GetObjectItemCaseSensitive(root, "batch");
	acked = cJSON_GetObjectItemCaseSensitive(root, "acked");
	rej = cJSON_GetObjectItemCaseSensitive(root, "rejected");
	ok = check(cJSON_IsNumber(v) && v->valuedouble == 1.0, "ack v == 1");
	ok &= check(cJSON_IsString(b) && strcmp(b->valuestring, batch_id) == 0,
		    "ack names batch %s (got %s)", batch_id, msg->payload);
	ok &= check(cJSON_IsArray(acked) && ranges_equal(acked, want_ranges), "ack ranges %s",
		    want_ranges);
	if (want_rej_seq < 0) {
		ok &= check(!rej || cJSON_GetArraySize(rej) == 0, "ack rejects nothing");
	} else {
		r0 = cJSON_IsArray(rej) && cJSON_GetArraySize(rej) == 1 ? cJSON_GetArrayItem(rej, 0)
									: NULL;
		seq = r0 ? cJSON_GetObjectItemCaseSensitive(r0, "seq") : NULL;
		reason = r0 ? cJSON_GetObjectItemCaseSensitive(r0, "reason") : NULL;
		ok &= check(cJSON_IsNumber(seq) && seq->valuedouble == (double)want_rej_seq &&
				    cJSON_IsString(reason) &&
				    strncmp(reason->valuestring, want_reason_prefix,
					    strlen(want_reason_prefix)) == 0,
			    "ack rejects seq %ld with a reason naming '%s' (%s)", want_rej_seq,
			    want_reason_prefix, msg->payload);
	}
out:
	cJSON_Delete(root);
	th_mqtt_msg_free(msg);
	return ok;
}

static th_mqtt *device_connect(struct ctx *c, const th_broker *b)
{
	th_mqtt_opts o;
	char err[512];
	th_mqtt *dev;

	memset(&o, 0, sizeof o);
	o.uri = th_broker_uri(b);
	o.client_id = "pos-01";
	o.ca_file = c->path_ca;
	dev = th_mqtt_connect(&o, err, sizeof err);
	if (!check(dev != NULL, "device connects to %s with verify on (%s)", o.uri, err))
		return NULL;
	if (!check(th_mqtt_subscribe(dev, ACK_TOPIC, 1, 10000) == 0, "device subscribes to %s",
		   ACK_TOPIC)) {
		th_mqtt_close(dev);
		return NULL;
	}
	return dev;
}

static int publish(th_mqtt *dev, const char *payload)
{
	return th_mqtt_publish(dev, UP_TOPIC, payload, strlen(payload), 1, 10000);
}

/* extra: more arguments (NULL-terminated, at most 10), or NULL. */
static int central_start(struct ctx *c, const char *const *extra)
{
	const char *argv[32] = { c->central_bin, "run",
				 "--broker", th_broker_uri(c->broker),
				 "--ca", c->path_ca,
				 "--db", c->path_db,
				 "--share", "scrm-central",
				 "--client-id", "central-smoke",
				 "--ready-file", c->path_ready,
				 "--reject-kind", "test_forbidden",
				 NULL };
	size_t n = 16;

	while (extra && *extra && n < 16 + 10)
		argv[n++] = *extra++;
	argv[n] = NULL;
	remove(c->path_ready);
	c->central = th_spawn_target(argv, c->path_central_log);
	if (!check(c->central > 0, "scrm-central started"))
		return -1;
	if (!check(th_wait_log(c->path_ready, "ready", 20000) == 0,
		   "scrm-central subscribed and wrote its ready file")) {
		th_dump_log(c->path_central_log, 3000);
		return -1;
	}
	return 0;
}

static cJSON *report_json(struct ctx *c, const char *name)
{
	char out[600];
	const char *argv[] = { c->central_bin, "report", "--db", c->path_db, "--json", NULL };
	char *text;
	cJSON *root;
	int rc;

	snprintf(out, sizeof out, "%s/%s", c->dir, name);
	rc = th_run_target(argv, out, 30000);
	if (!check(rc == 0, "scrm-central report --json exits 0 (got %d)", rc)) {
		th_dump_log(out, 2000);
		return NULL;
	}
	text = th_read_file(out, NULL);
	root = text ? cJSON_Parse(text) : NULL;
	check(root != NULL, "report --json is JSON");
	if (!root && text)
		fprintf(stderr, "%s\n", text);
	free(text);
	return root;
}

static double num(const cJSON *obj, const char *key)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);

	return cJSON_IsNumber(it) ? it->valuedouble : -1.0;
}

static void check_certs(struct ctx *c)
{
	char f[8][512], log[600];
	const char *names[] = { "server", "client", "central", "wronghost" };
	int rc, i;

	for (i = 0; i < 4; i++)
		snprintf(f[i], sizeof f[i], "%s/%s.crt", c->dir, names[i]);
	snprintf(log, sizeof log, "%s/openssl.log", c->dir);
	{
		const char *argv[] = { "openssl", "verify", "-CAfile", c->path_ca, f[0], f[1], f[2],
				       f[3], NULL };

		rc = th_run(argv, log, 20000);
		if (rc == -ENOENT) {
			printf("skip: no openssl program; chain not cross-checked\n");
			return;
		}
		check(rc == 0, "openssl verify: all leaves chain to ca.crt");
	}
	{
		const char *argv[] = { "openssl", "verify", "-CAfile", c->path_other_ca, f[0], NULL };

		check(th_run(argv, log, 20000) != 0, "openssl verify: server.crt does not chain to other-ca.crt");
	}
	{
		const char *argv[] = { "openssl", "verify", "-CAfile", c->path_ca, "-purpose", "sslserver",
				       "-verify_ip", "127.0.0.1", f[0], NULL };

		check(th_run(argv, log, 20000) == 0, "openssl verify: server.crt is a server cert for IP 127.0.0.1");
	}
	{
		const char *argv[] = { "openssl", "verify", "-CAfile", c->path_ca, "-purpose", "sslserver",
				       "-verify_hostname", "localhost", f[0], NULL };

		check(th_run(argv, log, 20000) == 0, "openssl verify: server.crt is valid for localhost");
	}
	{
		const char *argv[] = { "openssl", "verify", "-CAfile", c->path_ca, "-purpose", "sslclient",
				       f[1], NULL };

		check(th_run(argv, log, 20000) == 0, "openssl verify: client.crt is a client cert");
	}
	{
		const char *argv[] = { "openssl", "verify", "-CAfile", c->path_ca, "-verify_ip", "127.0.0.1",
				       f[3], NULL };

		check(th_run(argv, log, 20000) != 0, "openssl verify: wronghost.crt is not valid for 127.0.0.1");
	}
	{
		const char *argv[] = { "openssl", "x509", "-noout", "-subject", "-in", f[1], NULL };

		remove(log);
		th_run(argv, log, 20000);
		check(th_wait_log(log, "CN = pos-01", 1) == 0, "client.crt has CN=pos-01");
	}
}

static void check_tls_refusals(struct ctx *c)
{
	th_mqtt_opts o;
	th_mqtt *m;
	th_broker *wrong, *mtls;
	char err[512];

	/* A broker whose certificate is signed by a CA we do not trust. */
	memset(&o, 0, sizeof o);
	o.uri = th_broker_uri(c->broker);
	o.client_id = "tls-wrong-ca";
	o.ca_file = c->path_other_ca;
	o.timeout_ms = 5000;
	m = th_mqtt_connect(&o, err, sizeof err);
	check(m == NULL, "Paho refuses a broker cert from an untrusted CA (%s)", err);
	th_mqtt_close(m);

	/* Right CA, wrong name: only host name verification catches it. */
	wrong = th_broker_start(c->dir, 0, "wronghost", 0);
	if (!check(wrong != NULL, "broker with the wronghost certificate starts"))
		return;
	o.uri = th_broker_uri(wrong);
	o.client_id = "tls-wrong-host";
	o.ca_file = c->path_ca;
	m = th_mqtt_connect(&o, err, sizeof err);
	check(m == NULL, "Paho with verify=1 refuses a cert for not-this-host.example (%s)", err);
	th_mqtt_close(m);
	o.no_host_check = 1; /* control: the chain is fine, only the name is wrong */
	m = th_mqtt_connect(&o, err, sizeof err);
	check(m != NULL, "same broker accepted when only the host name check is off (control) %s",
	      err);
	th_mqtt_close(m);
	th_broker_free(wrong);

	/* Mutual TLS: no client certificate, no entry. */
	mtls = th_broker_start(c->dir, 0, "server", 1);
	if (!check(mtls != NULL, "broker requiring client certificates starts"))
		return;
	memset(&o, 0, sizeof o);
	o.uri = th_broker_uri(mtls);
	o.client_id = "pos-01";
	o.ca_file = c->path_ca;
	o.timeout_ms = 5000;
	m = th_mqtt_connect(&o, err, sizeof err);
	check(m == NULL, "mTLS broker refuses a client without certificate (%s)", err);
	th_mqtt_close(m);
	o.cert_file = c->path_client_crt;
	o.key_file = c->path_client_key;
	m = th_mqtt_connect(&o, err, sizeof err);
	check(m != NULL, "mTLS broker accepts client.crt (%s)", err);
	if (m)
		check(th_mqtt_subscribe(m, ACK_TOPIC, 1, 5000) == 0, "mTLS client can subscribe");
	th_mqtt_close(m);
	th_broker_free(mtls);
}

static void check_bad_args(struct ctx *c)
{
	char log[600];
	int rc;

	snprintf(log, sizeof log, "%s/badargs.log", c->dir);
	{
		const char *argv[] = { c->central_bin, "run", "--broker", th_broker_uri(c->broker),
				       "--db", c->path_db, NULL };

		rc = th_run_target(argv, log, 20000);
		check(rc == 2 && th_wait_log(log, "--ca", 1) == 0,
		      "run without --ca exits 2 naming --ca (got %d)", rc);
	}
	{
		const char *argv[] = { c->central_bin, "run", "--broker", th_broker_uri(c->broker),
				       "--ca", c->path_ca, "--db", c->path_db, "--ack-window", "x",
				       NULL };

		rc = th_run_target(argv, log, 20000);
		check(rc == 2 && th_wait_log(log, "--ack-window", 1) == 0,
		      "bad --ack-window exits 2 naming the flag (got %d)", rc);
	}
	{
		const char *argv[] = { c->central_bin, "report", NULL };

		rc = th_run_target(argv, log, 20000);
		check(rc == 2, "report without --db exits 2 (got %d)", rc);
	}
	{
		const char *argv[] = { c->central_bin, "run", "--broker", th_broker_uri(c->broker),
				       "--ca", c->path_ca, "--db", c->path_db, "--chunk-records", "2",
				       NULL };

		remove(log);
		rc = th_run_target(argv, log, 20000);
		check(rc == 2 && th_wait_log(log, "--cache-dir", 1) == 0,
		      "--chunk-records without --cache-dir exits 2 naming --cache-dir (got %d)", rc);
	}
	{
		const char *argv[] = { c->central_bin, "push", "--broker", th_broker_uri(c->broker),
				       "--ca", c->path_ca, "--store", "s1", NULL };

		remove(log);
		rc = th_run_target(argv, log, 20000);
		check(rc == 2 && th_wait_log(log, "--tenant", 1) == 0,
		      "push without --tenant exits 2 naming --tenant (got %d)", rc);
	}
}

/* ---- customer cache ---------------------------------------------------- */

/* Three members (a blank line between them must not count), version 42. */
static const char members_jsonl[] =
	"{\"v\":1,\"type\":\"snapshot_file\",\"stream\":\"members\",\"version\":42}\n"
	"{\"key\":\"17850\",\"data\":{\"member_id\":\"17850\",\"tier\":\"gold\"}}\n"
	"\n"
	"{\"key\":\"13047\",\"data\":{\"member_id\":\"13047\",\"tier\":\"silver\"}}\n"
	"{\"key\":\"12583\",\"data\":{\"member_id\":\"12583\",\"tags\":[\"VIP\"]}}\n";

static const char delta_json[] =
	"{\"v\":1,\"type\":\"delta\",\"stream\":\"members\",\"base\":42,\"version\":43,"
	"\"ts\":1733050000000,\"ops\":[{\"op\":\"delete\",\"key\":\"13047\"}]}\n";

static int cache_files_write(struct ctx *c)
{
	char path[600];

	if (!check(mkdir(c->path_cache, 0700) == 0 || errno == EEXIST, "cache dir %s made",
		   c->path_cache))
		return -1;
	snprintf(path, sizeof path, "%s/members.jsonl", c->path_cache);
	if (!check(th_write_file(path, members_jsonl) == 0, "members.jsonl written"))
		return -1;
	snprintf(path, sizeof path, "%s/forgotten.txt", c->path_cache);
	if (!check(th_write_file(path, "# erased members\n99999\n") == 0, "forgotten.txt written"))
		return -1;
	return 0;
}

static int resync(th_mqtt *dev, const char *payload)
{
	return check(th_mqtt_publish(dev, RESYNC_TOPIC, payload, strlen(payload), 1, 10000) == 0,
		     "resync request published: %s", payload);
}

/* The keys of a chunk's records, comma-joined, must be want. */
static int keys_are(const cJSON *records, const char *want)
{
	char got[256] = "";
	const cJSON *r;
	size_t n = 0;

	cJSON_ArrayForEach(r, records)
	{
		const cJSON *k = cJSON_GetObjectItemCaseSensitive(r, "key");

		n += (size_t)snprintf(got + n, sizeof got - n, "%s%s", n ? "," : "",
				      cJSON_IsString(k) ? k->valuestring : "?");
		if (n >= sizeof got)
			break;
	}
	if (strcmp(got, want) != 0)
		fprintf(stderr, "      record keys are '%s', want '%s'\n", got, want);
	return strcmp(got, want) == 0;
}

/* The next message must be chunk `chunk` of `chunks` of a snapshot of
 * stream at version, on the device's topic, with the given record keys (and
 * snapshot id, unless want_id is NULL). Returns the parsed chunk (caller
 * frees) or NULL. */
static cJSON *expect_chunk(th_mqtt *dev, const char *stream, int64_t version, int chunk,
			   int chunks, const char *keys, const char *want_id)
{
	th_mqtt_msg *msg = th_mqtt_recv(dev, 15000);
	char topic[200], prefix[100];
	const cJSON *it;
	cJSON *root;
	int ok;

	if (!check(msg != NULL, "%s chunk %d/%d received", stream, chunk, chunks))
		return NULL;
	snprintf(topic, sizeof topic, "%s%s", DEVICE_CACHE_TOPIC, stream);
	check(strcmp(msg->topic, topic) == 0 && msg->qos == 1, "chunk on %s QoS 1 (got %s QoS %d)",
	      topic, msg->topic, msg->qos);
	root = cJSON_Parse(msg->payload);
	if (!check(root != NULL, "chunk is JSON: %.300s", msg->payload)) {
		th_mqtt_msg_free(msg);
		return NULL;
	}
	snprintf(prefix, sizeof prefix, "%s-%lld-", stream, (long long)version);
	it = cJSON_GetObjectItemCaseSensitive(root, "snapshot");
	ok = check(num(root, "v") == 1 &&
			   cJSON_IsString(cJSON_GetObjectItemCaseSensitive(root, "type")) &&
			   strcmp(cJSON_GetObjectItemCaseSensitive(root, "type")->valuestring,
				  "snapshot") == 0 &&
			   cJSON_IsString(cJSON_GetObjectItemCaseSensitive(root, "stream")) &&
			   strcmp(cJSON_GetObjectItemCaseSensitive(root, "stream")->valuestring,
				  stream) == 0,
		   "chunk has v 1, type snapshot, stream %s", stream);
	ok &= check(cJSON_IsString(it) && strncmp(it->valuestring, prefix, strlen(prefix)) == 0 &&
			    strlen(it->valuestring) <= 64 &&
			    (!want_id || strcmp(it->valuestring, want_id) == 0),
		    "snapshot id %s (want %s%s)", cJSON_IsString(it) ? it->valuestring : "(none)",
		    want_id ? "" : prefix, want_id ? want_id : "...");
	ok &= check(num(root, "version") == (double)version && num(root, "chunk") == chunk &&
			    num(root, "chunks") == chunks && num(root, "ts") > 1.7e12,
		    "version %lld, chunk %d of %d, ts set (%.300s)", (long long)version, chunk,
		    chunks, msg->payload);
	it = cJSON_GetObjectItemCaseSensitive(root, "records");
	ok &= check(cJSON_IsArray(it) && keys_are(it, keys), "chunk %d records: [%s]", chunk, keys);
	th_mqtt_msg_free(msg);
	if (!ok) {
		cJSON_Delete(root);
		return NULL;
	}
	return root;
}

static void expect_nothing(th_mqtt *dev, const char *what)
{
	th_mqtt_msg *msg = th_mqtt_recv(dev, 800);

	check(msg == NULL, "%s (got %s %.200s)", what, msg ? msg->topic : "nothing",
	      msg ? msg->payload : "");
	th_mqtt_msg_free(msg);
}

static void check_cache(struct ctx *c, th_mqtt *dev)
{
	char id[80] = "", path[600], log[600], req[300];
	cJSON *ch;
	th_mqtt_msg *msg;
	cJSON *rep;
	int rc;

	while ((msg = th_mqtt_recv(dev, 200)))
		th_mqtt_msg_free(msg);
	if (!check(th_mqtt_subscribe(dev, DEVICE_CACHE_TOPIC "#", 1, 10000) == 0 &&
			   th_mqtt_subscribe(dev, STORE_CACHE_TOPIC "#", 1, 10000) == 0,
		   "device subscribes to its down/cache/# and its store's down/cache/#"))
		return;

	/* A bootstrap: 3 records in chunks of 2; "forgotten" in the last. */
	resync(dev, "{\"v\":1,\"stream\":\"members\",\"cursor\":0,\"reason\":\"bootstrap\"}");
	ch = expect_chunk(dev, "members", 42, 0, 2, "17850,13047", NULL);
	if (ch) {
		const cJSON *r0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(ch, "records"), 0);
		const cJSON *data = cJSON_GetObjectItemCaseSensitive(r0, "data");
		const cJSON *tier = cJSON_GetObjectItemCaseSensitive(data, "tier");

		snprintf(id, sizeof id, "%s",
			 cJSON_GetObjectItemCaseSensitive(ch, "snapshot")->valuestring);
		check(cJSON_IsString(tier) && strcmp(tier->valuestring, "gold") == 0,
		      "record 17850's data came through (tier gold)");
		check(!cJSON_GetObjectItemCaseSensitive(ch, "forgotten"), "no forgotten in chunk 0");
	}
	cJSON_Delete(ch);
	ch = expect_chunk(dev, "members", 42, 1, 2, "12583", id);
	if (ch) {
		char *f = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(ch, "forgotten"));

		check(f && strcmp(f, "[\"99999\"]") == 0, "last chunk has forgotten [\"99999\"] (got %s)",
		      f ? f : "none");
		cJSON_free(f);
	}
	cJSON_Delete(ch);
	expect_nothing(dev, "nothing after the last chunk");

	/* Resume the current snapshot from chunk 1: only chunk 1, same id. */
	snprintf(req, sizeof req,
		 "{\"v\":1,\"stream\":\"members\",\"cursor\":0,\"reason\":\"resume\","
		 "\"snapshot\":\"%s\",\"from_chunk\":1}",
		 id);
	resync(dev, req);
	cJSON_Delete(expect_chunk(dev, "members", 42, 1, 2, "12583", id));
	expect_nothing(dev, "a resume from chunk 1 sends chunk 1 only");

	/* Resume of a snapshot central no longer has: a new one from chunk 0. */
	resync(dev, "{\"v\":1,\"stream\":\"members\",\"cursor\":41,\"reason\":\"timeout\","
		    "\"snapshot\":\"members-41-0000000000000000\",\"from_chunk\":1}");
	cJSON_Delete(expect_chunk(dev, "members", 42, 0, 2, "17850,13047", id));
	cJSON_Delete(expect_chunk(dev, "members", 42, 1, 2, "12583", id));

	/* Invalid requests: logged with the field, not answered, not recorded. */
	resync(dev, "{\"v\":1,\"stream\":\"bogus\",\"cursor\":0}");
	resync(dev, "{\"v\":1,\"stream\":\"members\",\"cursor\":\"0\"}");
	resync(dev, "{\"v\":1,\"stream\":\"members\",\"cursor\":0,\"from_chunk\":-1}");
	resync(dev, "not json");
	expect_nothing(dev, "invalid resync requests are not answered");
	check(th_wait_log(c->path_central_log, "reason=\"stream:", 5000) == 0 &&
		      th_wait_log(c->path_central_log, "reason=\"cursor:", 1) == 0 &&
		      th_wait_log(c->path_central_log, "reason=\"from_chunk:", 1) == 0,
	      "central logs each dropped request with the field");

	/* A stream without a file: one empty chunk at version 1. */
	resync(dev, "{\"v\":1,\"stream\":\"coupons\",\"cursor\":0,\"reason\":\"bootstrap\"}");
	cJSON_Delete(expect_chunk(dev, "coupons", 1, 0, 1, "", NULL));

	/* push: a delta reaches the store topic, byte for byte. */
	snprintf(path, sizeof path, "%s/delta.json", c->dir);
	snprintf(log, sizeof log, "%s/push.log", c->dir);
	th_write_file(path, delta_json);
	{
		const char *argv[] = { c->central_bin, "push", "--broker", th_broker_uri(c->broker),
				       "--ca", c->path_ca, "--tenant", "acme", "--store", "s1",
				       path, NULL };

		rc = th_run_target(argv, log, 30000);
		check(rc == 0 && th_wait_log(log, "published topic=" STORE_CACHE_TOPIC "members", 1) == 0,
		      "push exits 0 and says where it published (got %d)", rc);
		if (rc != 0)
			th_dump_log(log, 2000);
		msg = th_mqtt_recv(dev, 10000);
		check(msg && strcmp(msg->topic, STORE_CACHE_TOPIC "members") == 0 &&
			      strcmp(msg->payload, delta_json) == 0,
		      "the delta arrived on %smembers as pushed (got %s)", STORE_CACHE_TOPIC,
		      msg ? msg->topic : "nothing");
		th_mqtt_msg_free(msg);
	}
	th_write_file(path, "{\"v\":1,\"type\":\"snapshot\",\"stream\":\"members\",\"base\":1,"
			    "\"version\":2,\"ops\":[]}");
	{
		const char *argv[] = { c->central_bin, "push", "--broker", th_broker_uri(c->broker),
				       "--ca", c->path_ca, "--tenant", "acme", "--store", "s1",
				       path, NULL };

		remove(log);
		rc = th_run_target(argv, log, 30000);
		check(rc == 1 && th_wait_log(log, "type:", 1) == 0,
		      "push refuses a file that is not a delta, naming the field (got %d)", rc);
	}
	expect_nothing(dev, "nothing published for the refused delta");

	/* Four valid requests: bootstrap, resume, stale resume, coupons. */
	rep = report_json(c, "report3.json");
	if (rep) {
		const cJSON *tot = cJSON_GetObjectItemCaseSensitive(rep, "totals");

		check(num(tot, "resync_requests") == 4, "report counts 4 resync requests (got %g)",
		      num(tot, "resync_requests"));
	}
	cJSON_Delete(rep);
	{
		const char *argv[] = { c->central_bin, "report", "--db", c->path_db, NULL };

		snprintf(log, sizeof log, "%s/report4.txt", c->dir);
		rc = th_run_target(argv, log, 30000);
		check(rc == 0 && th_wait_log(log, " resync_requests=4\n", 1) == 0,
		      "text report totals: resync_requests=4");
	}
}

static void check_drop_chunk(th_mqtt *dev)
{
	char id[80] = "", req[300];
	cJSON *ch;

	resync(dev, "{\"v\":1,\"stream\":\"members\",\"cursor\":0,\"reason\":\"bootstrap\"}");
	ch = expect_chunk(dev, "members", 42, 1, 2, "12583", NULL);
	if (ch)
		snprintf(id, sizeof id, "%s",
			 cJSON_GetObjectItemCaseSensitive(ch, "snapshot")->valuestring);
	cJSON_Delete(ch);
	check(id[0] != 0, "--drop-chunk 0: the first message is chunk 1");
	snprintf(req, sizeof req,
		 "{\"v\":1,\"stream\":\"members\",\"cursor\":0,\"reason\":\"timeout\","
		 "\"snapshot\":\"%s\",\"from_chunk\":0}",
		 id);
	resync(dev, req);
	cJSON_Delete(expect_chunk(dev, "members", 42, 0, 2, "17850,13047", id));
	cJSON_Delete(expect_chunk(dev, "members", 42, 1, 2, "12583", id));
	expect_nothing(dev, "the resumed snapshot is complete, chunk 0 sent this time");
}

/* ---- protocol additions (issue 11): another device, pos-02 ---- */

#define P2 "scrm/v1/acme/s1/pos-02/"
#define EV2(seq, id, kind, extra, body)                                                          \
	"{\"id\":\"0193b3c2-7a10-7f3e-8d21-0000000002" id "\",\"seq\":" #seq ",\"kind\":\"" kind "\"," \
	"\"wall_ms\":1764000100000,\"mono_ms\":1,\"boot\":\"b\",\"clock_ok\":true" extra ",\"body\":" body "}"
#define PURCHASE2(order) \
	"{\"order_id\":\"" order "\",\"lines\":[{\"sku\":\"S\",\"qty\":1,\"unit_price\":100,\"discount\":0}]," \
	"\"discount\":0,\"total\":100,\"currency\":\"GBP\",\"payment\":\"card\"}"

/* Publish a pos-02 batch and return the ack (caller frees), or NULL. */
static cJSON *p2_batch(th_mqtt *d, const char *id, const char *head, const char *events)
{
	char buf[8192];
	th_mqtt_msg *msg;
	cJSON *o = NULL;

	snprintf(buf, sizeof buf, "{\"v\":1,\"batch\":\"%s\",\"sent_ms\":1%s,\"events\":[%s]}", id, head, events);
	if (th_mqtt_publish(d, P2 "up/events", buf, strlen(buf), 1, 10000) != 0)
		return NULL;
	while ((msg = th_mqtt_recv(d, 10000))) {
		if (strcmp(msg->topic, P2 "down/ack") == 0) {
			o = cJSON_Parse(msg->payload);
			th_mqtt_msg_free(msg);
			break;
		}
		th_mqtt_msg_free(msg);
	}
	return o;
}

static int p2_acked(cJSON *ack, const char *want)
{
	int ok = ack && ranges_equal(cJSON_GetObjectItemCaseSensitive(ack, "acked"), want);

	cJSON_Delete(ack);
	return ok;
}

/* ---- coupon validity at central (issue 12): another device, pos-03 ---- */

#define P3 "scrm/v1/acme/s1/pos-03/"
/* A pos-03 coupon_redeem captured at wall_ms, with the device's clock_ok. */
#define EV3(seq, id, wall, clock_ok, coupon, campaign)                                                   \
	"{\"id\":\"0193b3c2-7a10-7f3e-8d21-0000000003" id "\",\"seq\":" #seq ",\"kind\":\"coupon_redeem\"," \
	"\"wall_ms\":" #wall ",\"mono_ms\":1,\"boot\":\"b\",\"clock_ok\":" clock_ok ",\"body\":"          \
	"{\"campaign\":\"" campaign "\",\"coupon\":\"" coupon "\",\"order_id\":\"P3-" id "\","              \
	"\"value\":50,\"currency\":\"GBP\",\"mode\":\"offline\"}}"

/* A coupons.jsonl record line: key and the "signed" record text. */
static void coupon_line(FILE *f, const char *type, const char *id, const char *fields)
{
	char key[100], rec[600];
	cJSON *line = cJSON_CreateObject();
	char *text;

	snprintf(key, sizeof key, "%s:%s", type, id);
	snprintf(rec, sizeof rec, "{\"type\":\"%s\",\"id\":\"%s\"%s}", type, id, fields);
	cJSON_AddStringToObject(line, "key", key);
	cJSON_AddStringToObject(line, "signed", rec);
	text = cJSON_PrintUnformatted(line);
	fprintf(f, "%s\n", text);
	cJSON_free(text);
	cJSON_Delete(line);
}

/* Central checks each coupon's and campaign's validity window at the
 * redemption's time (protocol.md, "Verdict"): the event's wall_ms, or its
 * receive time when the device's clock is not trusted. */
static void check_verdict_windows(struct ctx *c)
{
	static const struct {
		const char *id, *verdict, *reason;
	} want[] = {
		{ "0193b3c2-7a10-7f3e-8d21-000000000301", "rejected", "expired" },       /* coupon ended */
		{ "0193b3c2-7a10-7f3e-8d21-000000000302", "accepted", NULL },            /* inside */
		{ "0193b3c2-7a10-7f3e-8d21-000000000303", "rejected", "not_yet_valid" }, /* coupon starts later */
		{ "0193b3c2-7a10-7f3e-8d21-000000000304", "rejected", "expired" },       /* its campaign ended */
		{ "0193b3c2-7a10-7f3e-8d21-000000000305", "rejected", "expired" },       /* clock_ok false: receive time */
	};
	char path[600], buf[8192];
	const char *extra[] = { "--cache-dir", c->path_cache, NULL };
	int found[5] = { 0 };
	th_mqtt_opts o;
	char err[512];
	th_mqtt *d;
	th_mqtt_msg *msg;
	FILE *f;
	int n = 0, st, i;

	snprintf(path, sizeof path, "%s/coupons.jsonl", c->path_cache);
	f = fopen(path, "w");
	if (!check(f != NULL, "coupons.jsonl written"))
		return;
	fprintf(f, "{\"v\":1,\"type\":\"snapshot_file\",\"stream\":\"coupons\",\"version\":1}\n");
	/* the windows end (or start) at 1764000000000; valid_to is exclusive */
	coupon_line(f, "campaign", "CW", "");
	coupon_line(f, "campaign", "CW-OLD", ",\"valid_to\":1764000000000");
	coupon_line(f, "coupon", "W-EXP", ",\"campaign\":\"CW\",\"valid_from\":1763000000000,\"valid_to\":1764000000000");
	coupon_line(f, "coupon", "W-OK", ",\"campaign\":\"CW\",\"valid_from\":1763000000000,\"valid_to\":1765000000000");
	coupon_line(f, "coupon", "W-NYV", ",\"campaign\":\"CW\",\"valid_from\":1764000000000,\"valid_to\":1765000000000");
	coupon_line(f, "coupon", "W-CAMP", ",\"campaign\":\"CW-OLD\"");
	coupon_line(f, "coupon", "W-CLOCK", ",\"campaign\":\"CW\",\"valid_to\":1765000000000");
	fclose(f);

	memset(&o, 0, sizeof o);
	o.uri = th_broker_uri(c->broker);
	o.client_id = "pos-03";
	o.ca_file = c->path_ca;
	d = th_mqtt_connect(&o, err, sizeof err);
	if (!check(d != NULL, "pos-03 connects (%s)", err))
		return;
	if (!check(th_mqtt_subscribe(d, P3 "down/#", 1, 10000) == 0, "pos-03 subscribes to its down/#"))
		goto out;
	if (central_start(c, extra) != 0)
		goto out;
	/* the device captured them at 1764000000000 (the last 1 ms before,
	 * but with its clock untrusted: central's receive time, years later) */
	snprintf(buf, sizeof buf, "{\"v\":1,\"batch\":\"p3-1\",\"sent_ms\":1,\"base\":1,\"events\":[%s,%s,%s,%s,%s]}",
		 EV3(1, "01", 1764000000000, "true", "W-EXP", "CW"), EV3(2, "02", 1764000000000, "true", "W-OK", "CW"),
		 EV3(3, "03", 1763999999999, "true", "W-NYV", "CW"),
		 EV3(4, "04", 1764000000000, "true", "W-CAMP", "CW-OLD"),
		 EV3(5, "05", 1763999999999, "false", "W-CLOCK", "CW"));
	check(th_mqtt_publish(d, P3 "up/events", buf, strlen(buf), 1, 10000) == 0, "pos-03 batch published");
	while (n < 5 && (msg = th_mqtt_recv(d, 10000))) {
		if (strcmp(msg->topic, P3 "down/verdict") == 0) {
			cJSON *v = cJSON_Parse(msg->payload);
			const cJSON *r = cJSON_GetObjectItemCaseSensitive(v, "redemption");
			const cJSON *vd = cJSON_GetObjectItemCaseSensitive(v, "verdict");
			const cJSON *why = cJSON_GetObjectItemCaseSensitive(v, "reason");

			n++;
			for (i = 0; i < 5; i++) {
				if (!cJSON_IsString(r) || strcmp(r->valuestring, want[i].id) != 0)
					continue;
				found[i] = 1;
				check(cJSON_IsString(vd) && strcmp(vd->valuestring, want[i].verdict) == 0 &&
					      (want[i].reason ? cJSON_IsString(why) &&
								strcmp(why->valuestring, want[i].reason) == 0
							  : !why),
				      "redemption %d: %s%s%s (got %s)", i + 1, want[i].verdict,
				      want[i].reason ? " " : "", want[i].reason ? want[i].reason : "", msg->payload);
			}
			cJSON_Delete(v);
		}
		th_mqtt_msg_free(msg);
	}
	for (i = 0; i < 5; i++)
		check(found[i], "a verdict for redemption %d", i + 1);
	st = th_stop(c->central, 10000);
	c->central = -1;
	check(st == 0, "central exits 0 (got %d)", st);
out:
	th_mqtt_close(d);
}

static void check_protocol_additions(struct ctx *c)
{
	th_mqtt_opts o;
	char err[512];
	th_mqtt *d;
	th_mqtt_msg *msg;
	cJSON *rep;
	int st = 0;

	memset(&o, 0, sizeof o);
	o.uri = th_broker_uri(c->broker);
	o.client_id = "pos-02";
	o.ca_file = c->path_ca;
	d = th_mqtt_connect(&o, err, sizeof err);
	if (!check(d != NULL, "pos-02 connects (%s)", err))
		return;
	if (!check(th_mqtt_subscribe(d, P2 "down/#", 1, 10000) == 0, "pos-02 subscribes to its down/#"))
		goto out;
	if (central_start(c, NULL) != 0)
		goto out;
	/* base 5: seqs 1..4 settled on the device's word (a gap). */
	check(p2_acked(p2_batch(d, "p2-1", ",\"base\":5,\"after\":4", EV2(5, "05", "purchase", "", PURCHASE2("P-5"))),
		       "[[5,5]]"),
	      "base 5: seq 5 stored and acked");
	/* A device bug: seq 3 after it said every seq below 5 was settled.
	 * Stored anyway (never dropped for its seq), counted as a violation. */
	check(p2_acked(p2_batch(d, "p2-2", ",\"base\":3", EV2(3, "03", "purchase", "", PURCHASE2("P-3"))), "[[3,3]]"),
	      "an event below the settled seq is stored and acked, not dropped");
	check(p2_acked(p2_batch(d, "p2-3", ",\"base\":2",
				EV2(2, "02", "purchase", ",\"recovered\":true", PURCHASE2("P-2"))),
		       "[[2,2]]"),
	      "a recovered event below the settled seq is stored");
	/* A set-aside marker settles its seq; a second sale under P-5 is kept aside. */
	check(p2_acked(p2_batch(d, "p2-4", ",\"base\":6,\"after\":5",
				"{\"id\":\"0193b3c2-7a10-7f3e-8d21-000000000206\",\"seq\":6,\"kind\":\"purchase\","
				"\"set_aside\":{\"reason\":\"too_big\",\"detail\":\"x\",\"bytes\":70000}},"
				EV2(7, "07", "purchase", "", PURCHASE2("P-5"))),
		       "[[6,7]]"),
	      "a set-aside marker and a duplicate order are acked");
	/* after: seq 9 evicted on the device; 8, 10, 11 are acked as one range. */
	check(p2_acked(p2_batch(d, "p2-5", ",\"base\":8,\"after\":7",
				EV2(8, "08", "member_scan", "", "{\"member_id\":\"1\",\"method\":\"qr\"}") "," EV2(
					10, "10", "member_scan", "", "{\"member_id\":\"1\",\"method\":\"qr\"}") "," EV2(11, "11", "member_scan", "", "{\"member_id\":\"1\",\"method\":\"qr\"}")),
		       "[[8,8],[10,11]]"),
	      "a seq the device says it does not hold is stepped over, never acked");
	/* A repeated key: dropped unread, no ack (the next ack is p2-6's). */
	{
		static const char dup[] = "{\"v\":1,\"batch\":\"p2-dup\",\"batch\":\"p2-x\",\"base\":12,\"events\":[]}";

		check(th_mqtt_publish(d, P2 "up/events", dup, strlen(dup), 1, 10000) == 0, "a batch repeating a key published");
	}
	/* A coupon redemption: central decides, then answers a verdict query. */
	{
		cJSON *a = p2_batch(d, "p2-6", ",\"base\":12,\"after\":11",
				    EV2(12, "12", "coupon_redeem", "",
					"{\"campaign\":\"C1\",\"order_id\":\"P-12\",\"value\":50,\"currency\":\"GBP\",\"mode\":\"offline\"}"));
		const cJSON *b = a ? cJSON_GetObjectItemCaseSensitive(a, "batch") : NULL;

		check(cJSON_IsString(b) && strcmp(b->valuestring, "p2-6") == 0, "the batch repeating a key got no ack");
		check(p2_acked(a, "[[12,12]]"), "coupon_redeem stored");
		msg = th_mqtt_recv(d, 10000);
		check(msg && strcmp(msg->topic, P2 "down/verdict") == 0, "its verdict arrives");
		th_mqtt_msg_free(msg);
		static const char q[] = "{\"v\":1,\"redemptions\":[\"0193b3c2-7a10-7f3e-8d21-000000000212\","
					"\"0193b3c2-7a10-7f3e-8d21-0000000002ff\"]}";
		check(th_mqtt_publish(d, P2 "up/verdict/query", q, strlen(q), 1, 10000) == 0, "verdict query published");
		msg = th_mqtt_recv(d, 10000);
		check(msg && strcmp(msg->topic, P2 "down/verdict") == 0 &&
			      strstr(msg->payload, "\"redemption\":\"0193b3c2-7a10-7f3e-8d21-000000000212\""),
		      "the verdict is sent again for the known redemption (%s)", msg ? msg->payload : "none");
		th_mqtt_msg_free(msg);
		msg = th_mqtt_recv(d, 1500);
		check(!msg, "nothing for the unknown redemption");
		th_mqtt_msg_free(msg);
	}
	/* A device id that is a word of the topic tree: a device "down" lives
	 * under its store's scrm/v1/acme/s1/down/#, which every device of the
	 * store reads. Central drops its batch, naming the level and why. */
	{
		char buf[2048];

		snprintf(buf, sizeof buf, "{\"v\":1,\"batch\":\"down-1\",\"sent_ms\":1,\"base\":1,\"events\":[%s]}",
			 EV2(1, "f1", "purchase", "", PURCHASE2("D-1")));
		check(th_mqtt_publish(d, "scrm/v1/acme/s1/down/up/events", buf, strlen(buf), 1, 10000) == 0,
		      "a batch published as device \"down\"");
		check(th_wait_log(c->path_central_log, "reason=\"device: ", 5000) == 0 &&
			      th_wait_log(c->path_central_log, "is reserved", 1) == 0,
		      "central drops the batch of device \"down\": the id is reserved");
	}
	st = th_stop(c->central, 10000);
	c->central = -1;
	check(st == 0, "central exits 0 (got %d)", st);
	rep = report_json(c, "report_pos02.json");
	if (rep) {
		const cJSON *devs = cJSON_GetObjectItemCaseSensitive(rep, "devices"), *it, *dv = NULL;

		cJSON_ArrayForEach(it, devs)
		{
			const cJSON *n = cJSON_GetObjectItemCaseSensitive(it, "device");
			if (cJSON_IsString(n) && strcmp(n->valuestring, "pos-02") == 0)
				dv = it;
		}
		check(dv != NULL, "report has pos-02");
		cJSON_ArrayForEach(it, devs)
		{
			const cJSON *n = cJSON_GetObjectItemCaseSensitive(it, "device");
			check(!cJSON_IsString(n) || strcmp(n->valuestring, "down") != 0, "report has no device \"down\"");
		}
		check(num(dv, "late") == 2 && num(dv, "violations") == 1, "late 2, violations 1 (got %g, %g)",
		      num(dv, "late"), num(dv, "violations"));
		check(num(dv, "set_aside") == 1 && num(dv, "duplicate_orders") == 1, "set_aside 1, duplicate_orders 1");
		check(num(dv, "events") == 7, "7 events stored (2,3,5,8,10,11,12; got %g)", num(dv, "events"));
	}
	cJSON_Delete(rep);
	/* --strict: the same kind of over-claim stops central with status 3. */
	{
		const char *extra[] = { "--strict", NULL };
		char buf[2048];

		if (central_start(c, extra) != 0)
			goto out;
		snprintf(buf, sizeof buf, "{\"v\":1,\"batch\":\"p2-7\",\"base\":1,\"events\":[%s]}",
			 EV2(1, "01", "purchase", "", PURCHASE2("P-1")));
		th_mqtt_publish(d, P2 "up/events", buf, strlen(buf), 1, 10000);
		check(th_wait(c->central, 15000, &st) == 0 && th_exit_code(st) == 3,
		      "--strict: central stops with status 3 on the over-claim (got %d)", st);
		c->central = -1;
	}
out:
	th_mqtt_close(d);
}

int main(void)
{
	struct ctx c;
	th_mqtt *dev = NULL;
	char *b1 = NULL, *b2 = NULL, *b3 = NULL, *b4 = NULL;
	cJSON *rep = NULL;
	int st = 0;

	memset(&c, 0, sizeof c);
	c.central = -1;
	c.central_bin = th_bin("SCRM_CENTRAL_BIN");
	if (!c.central_bin)
		return 1;
	c.dir = th_tmpdir("central-smoke");
	if (!check(c.dir != NULL, "temp dir"))
		return 1;
	printf("work dir: %s\n", c.dir);
	snprintf(c.path_ca, sizeof c.path_ca, "%s/ca.crt", c.dir);
	snprintf(c.path_other_ca, sizeof c.path_other_ca, "%s/other-ca.crt", c.dir);
	snprintf(c.path_db, sizeof c.path_db, "%s/central.db", c.dir);
	snprintf(c.path_ready, sizeof c.path_ready, "%s/central.ready", c.dir);
	snprintf(c.path_central_log, sizeof c.path_central_log, "%s/central.log", c.dir);
	snprintf(c.path_client_crt, sizeof c.path_client_crt, "%s/client.crt", c.dir);
	snprintf(c.path_client_key, sizeof c.path_client_key, "%s/client.key", c.dir);
	snprintf(c.path_cache, sizeof c.path_cache, "%s/cache", c.dir);

	if (!check(th_certs_make(c.dir) == 0, "certificates made with mbedTLS"))
		goto done;
	check_certs(&c);

	c.broker = th_broker_start(c.dir, 0, "server", 0);
	if (!check(c.broker != NULL, "mosquitto started with TLS"))
		goto done;
	check_bad_args(&c);
	if (central_start(&c, NULL) != 0)
		goto done;
	dev = device_connect(&c, c.broker);
	if (!dev)
		goto done;

	/* 1. A batch with one malformed event. */
	{
		const char *ev[] = { event_purchase1, event_bad_body2, event_scan3 };

		b1 = make_batch("b-1", ev, 3);
		check(publish(dev, b1) == 0, "batch b-1 published (seqs 1..3, seq 2 with a string body)");
		expect_ack(dev, "b-1", "[[1,1],[3,3]]", 2, "body");
	}
	/* 2. The same events again under a new batch id (a redelivery). */
	{
		const char *ev[] = { event_purchase1, event_bad_body2, event_scan3 };

		b2 = make_batch("b-2", ev, 3);
		check(publish(dev, b2) == 0, "batch b-2 published (redelivery of b-1)");
		expect_ack(dev, "b-2", "[[1,1],[3,3]]", 2, "body");
	}
	/* 3. Garbage and an unackable batch must produce no ack and no crash: the
	 * next ack the device sees is for b-3. */
	{
		const char *ev[] = { event_scan3_other_id, event_future4, event_forbidden5 };
		static const char no_batch_id[] = "{\"v\":1,\"events\":[]}";

		check(publish(dev, "this is not json") == 0, "garbage published");
		check(publish(dev, no_batch_id) == 0, "batch without id published");
		b3 = make_batch("b-3", ev, 3);
		check(publish(dev, b3) == 0, "batch b-3 published (conflict on 3, new kind 4, forbidden 5)");
		expect_ack(dev, "b-3", "[[3,4]]", 5, "kind");
	}

	/* The report, read while the central is running (WAL readers). */
	rep = report_json(&c, "report1.json");
	if (rep) {
		const cJSON *devs = cJSON_GetObjectItemCaseSensitive(rep, "devices");
		const cJSON *d = cJSON_GetArrayItem(devs, 0);
		const cJSON *tot = cJSON_GetObjectItemCaseSensitive(rep, "totals");

		check(cJSON_GetArraySize(devs) == 1, "report has one device");
		check(num(d, "events") == 3, "events stored once: 3 (seqs 1,3,4) got %g", num(d, "events"));
		check(num(d, "min_seq") == 1 && num(d, "max_seq") == 4, "min/max seq 1/4");
		check(num(d, "missing") == 0, "no missing seq (2 was rejected, not lost)");
		check(num(d, "duplicates") == 2, "2 duplicate copies counted (got %g)", num(d, "duplicates"));
		check(num(d, "conflicts") == 1, "1 conflict (got %g)", num(d, "conflicts"));
		check(num(d, "rejected") == 2, "2 rejected seqs (got %g)", num(d, "rejected"));
		check(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(d, "in_order")), "in_order true");
		check(num(tot, "dropped_batches") == 2, "2 dropped batches (got %g)", num(tot, "dropped_batches"));
	}
	cJSON_Delete(rep);
	rep = NULL;

	/* 4. Broker restart: the central (automatic reconnect, clean start)
	 * must resubscribe. The device resends until acked, like an agent. */
	th_mqtt_close(dev);
	dev = NULL;
	if (!check(th_broker_restart(c.broker) == 0, "broker restarted on the same port"))
		goto done;
	dev = device_connect(&c, c.broker);
	if (!dev)
		goto done;
	{
		const char *ev[] = { event_purchase6 };
		th_mqtt_msg *msg = NULL;
		int64_t until = th_now_ms() + 30000;

		b4 = make_batch("b-4", ev, 1);
		while (!msg && th_now_ms() < until) {
			publish(dev, b4);
			msg = th_mqtt_recv(dev, 1000);
		}
		check(msg && strstr(msg->payload, "\"acked\":[[6,6]]"),
		      "after the broker restart the central acks b-4 (%s)", msg ? msg->payload : "no ack");
		th_mqtt_msg_free(msg);
		/* drain acks of extra copies */
		while ((msg = th_mqtt_recv(dev, 300)))
			th_mqtt_msg_free(msg);
	}

	/* 5. Clean stop, then a new central on the same database, now also
	 * serving the customer cache. */
	check(th_wait(c.central, 0, &st) == -ETIMEDOUT, "central still running");
	st = th_stop(c.central, 10000);
	c.central = -1;
	check(st == 0, "central exits 0 on SIGTERM (got %d)", st);
	if (cache_files_write(&c) != 0)
		goto done;
	{
		const char *extra[] = { "--cache-dir", c.path_cache, "--chunk-records", "2", NULL };

		if (central_start(&c, extra) != 0)
			goto done;
	}
	check(publish(dev, b2) == 0, "b-2 published again to the restarted central");
	expect_ack(dev, "b-2", "[[1,1],[3,3]]", 2, "body");

	{
		char out[600];
		const char *argv[] = { c.central_bin, "report", "--db", c.path_db, NULL };
		int rc;

		snprintf(out, sizeof out, "%s/report2.txt", c.dir);
		rc = th_run_target(argv, out, 30000);
		check(rc == 0, "scrm-central report exits 0");
		check(th_wait_log(out, "tenant=acme store=s1 device=pos-01 events=4 min_seq=1 max_seq=6 "
				       "missing=0 ",
				  1) == 0 &&
			      th_wait_log(out, "in_order=yes", 1) == 0,
		      "text report: events=4 min_seq=1 max_seq=6 missing=0 in_order=yes");
		if (g_failures)
			th_dump_log(out, 2000);
	}

	/* 6. The customer cache: snapshots, resume, push, report. */
	check_cache(&c, dev);
	st = th_stop(c.central, 10000);
	c.central = -1;
	check(st == 0, "restarted central exits 0 on SIGTERM (got %d)", st);

	/* 7. --drop-chunk: chunk 0 is skipped once; a resume from 0 gets it. */
	{
		const char *extra[] = { "--cache-dir",	      c.path_cache, "--chunk-records", "2",
					"--drop-chunk",	      "0",	    "--snapshot-delay-ms",
					"20",		      NULL };

		if (central_start(&c, extra) != 0)
			goto done;
		check_drop_chunk(dev);
		st = th_stop(c.central, 10000);
		c.central = -1;
		check(st == 0, "central with --drop-chunk exits 0 on SIGTERM (got %d)", st);
	}

	/* Closed first: with another client connected, every Paho connect in
	 * this process takes ~2 s (see th_mqtt_connect). */
	th_mqtt_close(dev);
	dev = NULL;
	check_protocol_additions(&c);
	check_verdict_windows(&c);
	check_tls_refusals(&c);

done:
	th_mqtt_close(dev);
	if (c.central > 0)
		th_stop(c.central, 5000);
	if (g_failures) {
		th_dump_log(c.path_central_log, 4000);
		if (c.broker)
			th_dump_log(th_broker_log(c.broker), 3000);
	}
	th_broker_free(c.broker);
	if (c.dir && !g_failures && !getenv("SCRM_TEST_KEEP"))
		th_rmtree(c.dir);
	else if (c.dir)
		printf("kept %s\n", c.dir);
	free(c.dir);
	free(b1);
	free(b2);
	free(b3);
	free(b4);
	printf("%s: %d failure(s)\n", g_failures ? "FAILED" : "PASSED", g_failures);
	return g_failures ? 1 : 0;
}
