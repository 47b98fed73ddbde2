/* SPDX-License-Identifier: Apache-2.0 */
/*
 * central_bench: how many events per second scrm-central stores and acks.
 *
 * Starts mosquitto (TLS) and scrm-central in a temp dir, then one fake
 * device publishes N events in batches (QoS 1, a small window of publishes
 * in flight) and the clock runs from the first publish until every seq is
 * covered by an ack. Finally checks the central's report: N events, none
 * missing. Prints one logfmt result line.
 *
 * usage: central_bench [--events N] [--batch N] [--window N] [--nodelay]
 *   --nodelay  set TCP_NODELAY on the device's socket (Paho leaves Nagle on;
 *              the agent, built on Paho, does too unless it works around it)
 * env:   SCRM_CENTRAL_BIN (required), SCRM_TEST_EMULATOR, SCRM_TEST_KEEP
 */
#include "harness.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#define UP_TOPIC "scrm/v1/bench/s1/pos-01/up/events"
#define ACK_TOPIC "scrm/v1/bench/s1/pos-01/down/ack"

static int parse_count(const char *flag, const char *val, long lo, long hi, long *out)
{
	char *end = NULL;
	long v;

	errno = 0;
	v = val ? strtol(val, &end, 10) : 0;
	if (!val || errno || end == val || *end || v < lo || v > hi) {
		fprintf(stderr, "central_bench: %s needs a number in %ld..%ld\n", flag, lo, hi);
		return -1;
	}
	*out = v;
	return 0;
}

/* One batch with seqs first..first+n-1, ~330 bytes per event. */
static char *make_batch(int64_t first, long n, long batch_no)
{
	size_t cap = (size_t)n * 420 + 256, used;
	char *out = malloc(cap);
	long i;

	if (!out)
		return NULL;
	used = (size_t)snprintf(out, cap, "{\"v\":1,\"batch\":\"bench-%ld\",\"sent_ms\":%" PRId64
					  ",\"events\":[",
				batch_no, th_wall_ms());
	for (i = 0; i < n; i++) {
		int64_t seq = first + i;

		used += (size_t)snprintf(
			out + used, cap - used,
			"%s{\"id\":\"0193b3c2-7a10-7f3e-8d21-%012" PRId64 "\",\"seq\":%" PRId64
			",\"kind\":\"purchase\",\"wall_ms\":%" PRId64 ",\"mono_ms\":%" PRId64
			",\"boot\":\"9f1c0d1e-6a43-4b7e-9a51-0c2d9e8f7a6b\",\"clock_ok\":true,"
			"\"body\":{\"order_id\":\"A-%" PRId64 "\",\"lines\":[{\"sku\":\"85123A\","
			"\"qty\":6,\"unit_price\":255,\"discount\":0}],\"discount\":0,\"total\":1530,"
			"\"currency\":\"GBP\",\"payment\":\"card\",\"member_id\":\"17850\"}}",
			i ? "," : "", seq, seq, 1764000000000 + seq, 86400000 + seq, seq);
	}
	snprintf(out + used, cap - used, "]}");
	return out;
}

/* Mark the seqs an ack covers; returns how many were new. */
static long ack_apply(const char *payload, unsigned char *seen, long total)
{
	cJSON *root = cJSON_Parse(payload);
	const cJSON *acked = cJSON_GetObjectItemCaseSensitive(root, "acked"), *r;
	long fresh = 0;

	cJSON_ArrayForEach(r, acked)
	{
		double a = cJSON_GetArrayItem(r, 0) ? cJSON_GetArrayItem(r, 0)->valuedouble : 0;
		double b = cJSON_GetArrayItem(r, 1) ? cJSON_GetArrayItem(r, 1)->valuedouble : -1;
		long s;

		for (s = (long)a; s <= (long)b; s++) {
			if (s >= 1 && s <= total && !seen[s]) {
				seen[s] = 1;
				fresh++;
			}
		}
	}
	cJSON_Delete(root);
	return fresh;
}

int main(int argc, char **argv)
{
	long events = 100000, batch = 500, window = 10, nbatches, b, acked = 0;
	int nodelay = 0;
	const char *bin = th_bin("SCRM_CENTRAL_BIN");
	char ca[512], db[512], ready[512], log[512], report[512];
	char **payloads = NULL;
	unsigned char *seen = NULL;
	th_broker *broker = NULL;
	th_mqtt *dev = NULL;
	th_mqtt_opts o;
	pid_t central = -1;
	int64_t t0, t_pub, t_end;
	char *dir = NULL, err[512];
	int i, rc = 1;

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			printf("usage: central_bench [--events N] [--batch N] [--window N] [--nodelay]\n"
			       "env: SCRM_CENTRAL_BIN=path/to/scrm-central\n");
			return 0;
		} else if (!strcmp(argv[i], "--nodelay")) {
			nodelay = 1;
		} else if (!strcmp(argv[i], "--events") && i + 1 < argc) {
			if (parse_count("--events", argv[++i], 1, 10000000, &events))
				return 2;
		} else if (!strcmp(argv[i], "--batch") && i + 1 < argc) {
			if (parse_count("--batch", argv[++i], 1, 600, &batch))
				return 2;
		} else if (!strcmp(argv[i], "--window") && i + 1 < argc) {
			if (parse_count("--window", argv[++i], 1, 19, &window))
				return 2;
		} else {
			fprintf(stderr, "central_bench: unknown or incomplete option '%s'\n", argv[i]);
			return 2;
		}
	}
	if (!bin)
		return 2;
	nbatches = (events + batch - 1) / batch;
	payloads = calloc((size_t)nbatches, sizeof *payloads);
	seen = calloc((size_t)events + 1, 1);
	if (!payloads || !seen)
		goto done;
	for (b = 0; b < nbatches; b++) {
		long n = b == nbatches - 1 ? events - b * batch : batch;

		payloads[b] = make_batch(b * batch + 1, n, b);
		if (!payloads[b])
			goto done;
	}

	dir = th_tmpdir("central-bench");
	if (!dir || th_certs_make(dir) != 0)
		goto done;
	snprintf(ca, sizeof ca, "%s/ca.crt", dir);
	snprintf(db, sizeof db, "%s/central.db", dir);
	snprintf(ready, sizeof ready, "%s/central.ready", dir);
	snprintf(log, sizeof log, "%s/central.log", dir);
	snprintf(report, sizeof report, "%s/report.txt", dir);
	broker = th_broker_start(dir, 0, "server", 0);
	if (!broker)
		goto done;
	{
		const char *args[] = { bin, "run", "--broker", th_broker_uri(broker), "--ca", ca,
				       "--db", db, "--share", "scrm-central", "--ready-file", ready,
				       NULL };

		central = th_spawn_target(args, log);
	}
	if (central < 0 || th_wait_log(ready, "ready", 20000) != 0) {
		fprintf(stderr, "central_bench: scrm-central did not become ready\n");
		th_dump_log(log, 2000);
		goto done;
	}
	memset(&o, 0, sizeof o);
	o.uri = th_broker_uri(broker);
	o.client_id = "pos-01";
	o.ca_file = ca;
	dev = th_mqtt_connect(&o, err, sizeof err);
	if (!dev) {
		fprintf(stderr, "central_bench: %s\n", err);
		goto done;
	}
	if (nodelay && th_tcp_nodelay_all() < 1)
		fprintf(stderr, "central_bench: could not set TCP_NODELAY\n");
	if (th_mqtt_subscribe(dev, ACK_TOPIC, 1, 10000) != 0)
		goto done;

	t0 = th_now_ms();
	for (b = 0; b < nbatches; b++) {
		th_mqtt_msg *m;

		if (th_mqtt_publish_window(dev, UP_TOPIC, payloads[b], strlen(payloads[b]), 1,
					   (int)window, 30000) != 0) {
			fprintf(stderr, "central_bench: publish %ld failed\n", b);
			goto done;
		}
		while ((m = th_mqtt_recv(dev, 0))) {
			acked += ack_apply(m->payload, seen, events);
			th_mqtt_msg_free(m);
		}
	}
	if (th_mqtt_drain(dev, 60000) != 0) {
		fprintf(stderr, "central_bench: publishes did not complete\n");
		goto done;
	}
	t_pub = th_now_ms();
	while (acked < events) {
		th_mqtt_msg *m = th_mqtt_recv(dev, 30000);

		if (!m) {
			fprintf(stderr, "central_bench: only %ld of %ld events acked\n", acked, events);
			goto done;
		}
		acked += ack_apply(m->payload, seen, events);
		th_mqtt_msg_free(m);
	}
	t_end = th_now_ms();
	printf("result events=%ld batch=%ld window=%ld nodelay=%d publish_ms=%" PRId64
	       " all_acked_ms=%" PRId64 " events_per_s=%.0f\n",
	       events, batch, window, nodelay, t_pub - t0, t_end - t0,
	       (double)events * 1000.0 / (double)(t_end - t0 > 0 ? t_end - t0 : 1));

	th_stop(central, 10000);
	central = -1;
	{
		const char *args[] = { bin, "report", "--db", db, NULL };
		char want[128];

		if (th_run_target(args, report, 60000) != 0)
			goto done;
		snprintf(want, sizeof want, "events=%ld min_seq=1 max_seq=%ld missing=0 ", events, events);
		if (th_wait_log(report, want, 1) != 0) {
			fprintf(stderr, "central_bench: report does not say '%s'\n", want);
			th_dump_log(report, 1000);
			goto done;
		}
	}
	rc = 0;
done:
	th_mqtt_close(dev);
	if (central > 0)
		th_stop(central, 5000);
	th_broker_free(broker);
	if (dir && rc == 0 && !getenv("SCRM_TEST_KEEP"))
		th_rmtree(dir);
	else if (dir)
		fprintf(stderr, "central_bench: kept %s\n", dir);
	free(dir);
	for (b = 0; payloads && b < nbatches; b++)
		free(payloads[b]);
	free(payloads);
	free(seen);
	return rc;
}
