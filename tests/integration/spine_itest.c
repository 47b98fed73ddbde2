/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Integration tests of the spine: real scrm-agent, real scrm-central, real
 * mosquitto with TLS on loopback, events captured through libscrm by
 * scrm-pos-sim. Each scenario asserts the one invariant a customer cares
 * about: every capture that returned success reaches central exactly once,
 * in per-device order, and leaves the outbox only once central has it.
 *
 * Usage: spine_itest SCENARIO   (ctest runs one scenario per test)
 * Needs: SCRM_AGENT_BIN, SCRM_CENTRAL_BIN, SCRM_POSSIM_BIN (and, for cross
 * runs, SCRM_TEST_EMULATOR) — see tests/support/harness.h; the runner is itest.h.
 */
#include "itest.h"

#include <scrm/scrm.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEVICE ITEST_DEVICE

/* The agent trusting dir/CA, with more "broker" members. */
static int write_agent_cfg(struct itest *e, const char *ca, const char *extra_broker)
{
	char ca_file[600];
	itest_path(ca_file, sizeof(ca_file), e->dir, ca);
	return itest_agent_cfg(e, &(struct itest_agent){.ca_file = ca_file, .broker = extra_broker,
							 .ack_timeout_ms = 10000 * itest_scale, .log_level = "info"});
}

/* Central, with its client certificate when the broker asks for one. */
static int start_central(struct itest *e)
{
	char cert[600], key[600];
	itest_path(cert, sizeof(cert), e->dir, "central.crt");
	itest_path(key, sizeof(key), e->dir, "central.key");
	const char *const mtls[] = {"--cert", cert, "--key", key, NULL};
	return itest_start_central(e, e->mtls ? mtls : NULL);
}

/* Capture n synthetic purchases; receipts (ok seq id order) go to `out`. */
static int capture(struct itest *e, long n, const char *prefix, const char *out)
{
	char count[32];
	snprintf(count, sizeof(count), "%ld", n);
	const char *argv[] = {th_bin("SCRM_POSSIM_BIN"), "--store", e->store, "--device", DEVICE, "--count", count,
			      "--prefix", prefix, "--receipts", NULL};
	int rc = th_run_target(argv, out, 600000 * itest_scale);
	CHECK(rc == 0, "scrm-pos-sim exited %d", rc);
	return 0;
}

/* ---- central's view ---- */

struct seen {
	int64_t rows, distinct, min, max, out_of_order;
};

/* Counts, and (with order != 0) first arrivals out of per-device order:
 * an event whose seq is below one that arrived earlier. */
static int central_seen_ex(struct itest *e, struct seen *s, int order)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	memset(s, 0, sizeof(*s));
	if (access(e->central_db, F_OK) != 0)
		return 0;
	if (sqlite3_open_v2(e->central_db, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
		goto out;
	sqlite3_busy_timeout(db, 5000);
	if (sqlite3_prepare_v2(db,
			       "SELECT count(*), count(DISTINCT seq), coalesce(min(seq),0), coalesce(max(seq),0)"
			       " FROM events WHERE device = ?1",
			       -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_text(st, 1, DEVICE, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		s->rows = sqlite3_column_int64(st, 0);
		s->distinct = sqlite3_column_int64(st, 1);
		s->min = sqlite3_column_int64(st, 2);
		s->max = sqlite3_column_int64(st, 3);
	}
	sqlite3_finalize(st);
	st = NULL;
	if (order && sqlite3_prepare_v2(db, "SELECT seq FROM events WHERE device = ?1 ORDER BY arrival", -1, &st, NULL) == SQLITE_OK) {
		int64_t hi = 0;
		sqlite3_bind_text(st, 1, DEVICE, -1, SQLITE_STATIC);
		while (sqlite3_step(st) == SQLITE_ROW) {
			int64_t seq = sqlite3_column_int64(st, 0);
			if (seq < hi)
				s->out_of_order++;
			else
				hi = seq;
		}
	}
out:
	sqlite3_finalize(st);
	sqlite3_close(db);
	return 0;
}

static int central_seen(struct itest *e, struct seen *s)
{
	return central_seen_ex(e, s, 0);
}

/* Wait until central holds `n` events and the outbox is empty. */
static int wait_delivered(struct itest *e, int64_t n, int timeout_s)
{
	struct seen s;
	int64_t t0 = th_now_ms();
	for (;;) {
		central_seen(e, &s);
		if (s.distinct >= n && itest_pending(e->store) == 0)
			break;
		if (th_now_ms() - t0 > (int64_t)timeout_s * 1000 * itest_scale) {
			fprintf(stderr, "timeout: central has %" PRId64 "/%" PRId64 ", outbox pending %" PRId64 "\n", s.distinct,
				n, itest_pending(e->store));
			return -1;
		}
		th_sleep_ms(100);
	}
	fprintf(stderr, "delivered %" PRId64 " events in %.1f s\n", n, (double)(th_now_ms() - t0) / 1000.0);
	return 0;
}

/* Exactly once, in order, nothing missing: central holds 1..n once each. */
static int check_exactly_once(struct itest *e, int64_t n)
{
	struct seen s;
	central_seen_ex(e, &s, 1);
	CHECK(s.rows == n, "central holds %" PRId64 " rows, expected %" PRId64, s.rows, n);
	CHECK(s.distinct == n, "central holds %" PRId64 " distinct seqs, expected %" PRId64, s.distinct, n);
	CHECK(s.min == 1 && s.max == n, "seq range %" PRId64 "..%" PRId64 ", expected 1..%" PRId64, s.min, s.max, n);
	CHECK(s.out_of_order == 0, "%" PRId64 " events first arrived out of per-device order", s.out_of_order);
	CHECK(itest_pending(e->store) == 0, "outbox still has %" PRId64 " pending", itest_pending(e->store));
	return 0;
}

/* Every receipt line "ok <seq> <id> <order>" is in central with that id. */
static int check_receipts(struct itest *e, const char *receipts, int64_t *count)
{
	size_t len;
	char *text = th_read_file(receipts, &len);
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	int64_t n = 0, missing = 0;
	CHECK(text, "read receipts");
	CHECK(sqlite3_open_v2(e->central_db, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK, "open central db");
	sqlite3_prepare_v2(db, "SELECT id FROM events WHERE tenant = 'acme' AND store = 's1' AND device = ? AND seq = ?", -1, &st, NULL);
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		long long seq;
		char id[64];
		if (sscanf(line, "ok %lld %63s", &seq, id) != 2)
			continue;
		n++;
		sqlite3_reset(st);
		sqlite3_bind_text(st, 1, DEVICE, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, seq);
		if (sqlite3_step(st) != SQLITE_ROW || strcmp((const char *)sqlite3_column_text(st, 0), id) != 0) {
			if (missing++ < 5)
				fprintf(stderr, "receipt seq=%lld id=%s not at central\n", seq, id);
		}
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	free(text);
	CHECK(missing == 0, "%" PRId64 " of %" PRId64 " successful captures missing at central", missing, n);
	*count = n;
	return 0;
}

/* ---- scenarios ---- */

/* 10,000 sales while the store is offline; then the network comes back. */
static int t_offline_10k(struct itest *e)
{
	char rc_path[600];
	int64_t n;
	snprintf(rc_path, sizeof(rc_path), "%s/receipts.txt", e->dir);
	if (write_agent_cfg(e, "ca.crt", NULL) || itest_start_agent(e))
		return -1;
	/* One daemon per store: a second one must refuse, not double-send. */
	{
		char log2[600];
		snprintf(log2, sizeof(log2), "%s/agent2.log", e->dir);
		CHECK(th_wait_log(e->agent_log, "msg=\"started\"", 20000 * itest_scale) == 0, "agent did not start");
		const char *argv2[] = {th_bin("SCRM_AGENT_BIN"), "--config", e->agent_cfg, NULL};
		int rc2 = th_run_target(argv2, log2, 30000 * itest_scale);
		CHECK(rc2 == 1, "a second scrm-agent on the same store exited %d, expected 1", rc2);
		CHECK(th_wait_log(log2, "another scrm-agent is already running on this store", 100) == 0,
		      "the second agent does not say why it refused");
	}
	if (capture(e, 10000, "OFF", rc_path))
		return -1;
	CHECK(itest_pending(e->store) == 10000, "outbox should hold 10000 before the broker is up, has %" PRId64, itest_pending(e->store));
	if (itest_start_broker(e, "server") || start_central(e))
		return -1;
	if (wait_delivered(e, 10000, 180))
		return -1;
	if (check_exactly_once(e, 10000) || check_receipts(e, rc_path, &n))
		return -1;
	CHECK(n == 10000, "%" PRId64 " receipts", n);
	return 0;
}

static int drain_with_fault(struct itest *e, void (*fault)(struct itest *))
{
	char rc_path[600];
	int64_t n;
	struct seen s;
	const int64_t total = 20000;
	snprintf(rc_path, sizeof(rc_path), "%s/receipts.txt", e->dir);
	if (write_agent_cfg(e, "ca.crt", NULL))
		return -1;
	if (capture(e, total, "F", rc_path))
		return -1;
	if (itest_start_broker(e, "server") || start_central(e) || itest_start_agent(e))
		return -1;
	/* Strike once central has part of the backlog, not all of it. */
	int64_t t0 = th_now_ms();
	do {
		th_sleep_ms(20);
		central_seen(e, &s);
	} while (s.distinct < 2000 && th_now_ms() - t0 < 120000 * itest_scale);
	CHECK(s.distinct >= 2000 && s.distinct < total, "fault should strike mid-drain (central had %" PRId64 ")", s.distinct);
	fprintf(stderr, "fault at %" PRId64 "/%" PRId64 " delivered\n", s.distinct, total);
	fault(e);
	if (wait_delivered(e, total, 240))
		return -1;
	if (check_exactly_once(e, total) || check_receipts(e, rc_path, &n))
		return -1;
	return 0;
}

static void restart_broker(struct itest *e)
{
	th_broker_restart(e->broker);
}

static void crash_broker(struct itest *e)
{
	th_broker_kill(e->broker);
	th_sleep_ms(1000);
	th_broker_restart(e->broker);
}

static void kill9_agent(struct itest *e)
{
	th_kill(e->agent, SIGKILL);
	th_wait(e->agent, 5000, NULL);
	e->agent = 0;
	itest_start_agent(e);
}

static int t_broker_restart(struct itest *e)
{
	return drain_with_fault(e, restart_broker);
}

static int t_broker_crash(struct itest *e)
{
	return drain_with_fault(e, crash_broker);
}

static int t_agent_kill9(struct itest *e)
{
	return drain_with_fault(e, kill9_agent);
}

/* kill -9 a POS process while it is capturing (and the daemon drains live):
 * every capture that returned success arrives once; so does every event
 * that was committed but whose success the dead process never reported. */
static int t_capture_kill9(struct itest *e)
{
	char rc_path[600];
	int64_t n;
	snprintf(rc_path, sizeof(rc_path), "%s/receipts.txt", e->dir);
	if (write_agent_cfg(e, "ca.crt", NULL) || itest_start_broker(e, "server") || start_central(e) || itest_start_agent(e))
		return -1;
	const char *argv[] = {th_bin("SCRM_POSSIM_BIN"), "--store", e->store, "--device", DEVICE, "--count", "1000000",
			      "--prefix", "K", "--receipts", NULL};
	pid_t pos = th_spawn_target(argv, rc_path);
	CHECK(pos > 0, "spawn pos");
	/* Let it capture a few thousand events, then pull the plug. */
	for (int i = 0; i < 600 * itest_scale; i++) {
		size_t len = 0;
		char *t = th_read_file(rc_path, &len);
		free(t);
		if (len > 3000 * 60)
			break;
		th_sleep_ms(20);
	}
	th_kill(pos, SIGKILL);
	th_wait(pos, 5000, NULL);
	int64_t committed = itest_last_seq(e->store);
	CHECK(committed > 1000, "only %" PRId64 " events captured before the kill", committed);
	if (wait_delivered(e, committed, 180))
		return -1;
	if (check_exactly_once(e, committed) || check_receipts(e, rc_path, &n))
		return -1;
	fprintf(stderr, "killed after %" PRId64 " reported captures; %" PRId64 " committed\n", n, committed);
	CHECK(n <= committed && n >= committed - 1, "receipts %" PRId64 " vs committed %" PRId64, n, committed);
	return 0;
}

/* The count of lines of `path` containing `needle`. */
static int log_count(const char *path, const char *needle)
{
	char *t = th_read_file(path, NULL);
	int n = 0;
	for (const char *p = t; p && (p = strstr(p, needle)); p++)
		n++;
	free(t);
	return n;
}

/* Issue 11, hole 3: the broker's Maximum Packet Size. 4000 sales with one
 * legal 64.9 KB purchase among them; batches of up to 256 KiB are in flight
 * when the broker comes back with max_packet_size 65536, and the agent is
 * killed mid-drain once. On the main the issue started from, the first
 * batch got "DISCONNECT: Packet too large", Paho resent it on every
 * reconnect and the one big purchase held the queue forever. Now: every
 * other sale arrives exactly once, the big one is set aside on the device
 * (its marker settles its seq at central), and the link is not lost again
 * and again. */
static int small_packet_run(struct itest *e, const char *limit_conf);

static int t_small_packet(struct itest *e)
{
	return small_packet_run(e, "max_packet_size 65536\n");
}

/* The same with a limit the broker enforces without announcing it in the
 * CONNACK (mosquitto's message_size_limit: a PUBACK refusing the batch). */
static int t_size_limit(struct itest *e)
{
	return small_packet_run(e, "message_size_limit 65536\n");
}

static int small_packet_run(struct itest *e, const char *limit_conf)
{
	char rc_path[600], rc2_path[600], extra[200];
	struct seen s;
	int64_t n1 = 0, n2 = 0;
	scrm_store *st = NULL;
	scrm_receipt big;
	snprintf(rc_path, sizeof(rc_path), "%s/receipts.txt", e->dir);
	snprintf(rc2_path, sizeof(rc2_path), "%s/receipts2.txt", e->dir);
	if (write_agent_cfg(e, "ca.crt", NULL) || itest_start_broker(e, "server") || itest_start_agent(e))
		return -1;
	if (capture(e, 2000, "P", rc_path))
		return -1;
	{
		/* 1000 lines of 65 bytes: 65 KB, under the 128 KiB event limit */
		size_t cap = 80000, len = 0;
		char *json = malloc(cap);
		CHECK(json, "oom");
		len += (size_t)snprintf(json + len, cap - len, "{\"kind\":\"purchase\",\"order_id\":\"BIG-1\",\"lines\":[");
		for (int i = 0; i < 1000; i++)
			len += (size_t)snprintf(json + len, cap - len, "%s{\"sku\":\"SKU%013d\",\"qty\":1,\"unit_price\":100}",
						i ? "," : "", i);
		len += (size_t)snprintf(json + len, cap - len,
					"],\"total\":100000,\"currency\":\"GBP\",\"payment\":\"card\"}");
		CHECK(scrm_store_open(e->store, NULL, &st) == SCRM_OK, "store: %s", scrm_errmsg());
		int rc = scrm_record_json(st, json, len, &big);
		scrm_store_close(st);
		free(json);
		CHECK(rc == SCRM_OK, "the 65 KB purchase is a legal capture: %s", scrm_errmsg());
	}
	if (capture(e, 2000, "Q", rc2_path))
		return -1;
	/* Batches (up to 256 KiB) are now in flight without a central; the
	 * broker comes back with a 64 KiB limit. */
	th_sleep_ms(1500);
	th_broker_free(e->broker);
	e->broker = NULL;
	snprintf(extra, sizeof(extra), "%s", limit_conf);
	e->broker = th_broker_start_ex(e->dir, e->port, "server", 0, extra);
	CHECK(e->broker, "broker with %s", limit_conf);
	if (start_central(e))
		return -1;
	/* kill -9 the agent once, mid-drain */
	int64_t t0 = th_now_ms();
	do {
		th_sleep_ms(20);
		central_seen(e, &s);
	} while (s.distinct < 500 && th_now_ms() - t0 < 120000 * itest_scale);
	kill9_agent(e);
	for (t0 = th_now_ms(); th_now_ms() - t0 < 240000 * itest_scale; th_sleep_ms(100)) {
		central_seen(e, &s);
		if (s.distinct >= 4000 && itest_pending(e->store) == 0)
			break;
	}
	CHECK(s.distinct == 4000, "central holds %" PRId64 " of the 4000 regular sales", s.distinct);
	CHECK(itest_pending(e->store) == 0, "outbox still holds %" PRId64 " events", itest_pending(e->store));
	if (check_receipts(e, rc_path, &n1) || check_receipts(e, rc2_path, &n2))
		return -1;
	CHECK(n1 + n2 == 4000, "%" PRId64 " receipts", n1 + n2);
	{
		sqlite3 *db = NULL;
		sqlite3_stmt *q = NULL;
		int64_t aside = -1, stored = -1, dups = -1;
		CHECK(sqlite3_open_v2(e->central_db, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK, "central db");
		sqlite3_prepare_v2(db, "SELECT (SELECT count(*) FROM set_aside WHERE seq = ?1 AND reason = 'too_big'),"
				       " (SELECT count(*) FROM events WHERE seq = ?1),"
				       " (SELECT count(*) - count(DISTINCT seq) FROM events)", -1, &q, NULL);
		sqlite3_bind_int64(q, 1, big.seq);
		if (sqlite3_step(q) == SQLITE_ROW) {
			aside = sqlite3_column_int64(q, 0);
			stored = sqlite3_column_int64(q, 1);
			dups = sqlite3_column_int64(q, 2);
		}
		sqlite3_finalize(q);
		sqlite3_close(db);
		CHECK(aside == 1 && stored == 0, "the 65 KB purchase (seq %" PRId64 ") is set aside at central: %" PRId64
		      " markers, %" PRId64 " events", big.seq, aside, stored);
		CHECK(dups == 0, "%" PRId64 " duplicates at central", dups);
	}
	{
		char dl[600];
		snprintf(dl, sizeof(dl), "%s/outbox.db", e->store);
		sqlite3 *db = NULL;
		sqlite3_stmt *q = NULL;
		int64_t kept = -1;
		CHECK(sqlite3_open_v2(dl, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK, "outbox db");
		sqlite3_prepare_v2(db, "SELECT count(*) FROM dead_letter WHERE seq = ?1 AND length(body) > 60000"
				       " AND (SELECT count(*) FROM alarms WHERE code = 'events_set_aside') = 1", -1, &q, NULL);
		sqlite3_bind_int64(q, 1, big.seq);
		if (sqlite3_step(q) == SQLITE_ROW)
			kept = sqlite3_column_int64(q, 0);
		sqlite3_finalize(q);
		sqlite3_close(db);
		CHECK(kept == 1, "the device keeps the purchase's bytes in dead_letter with the events_set_aside alarm");
	}
	int lost = log_count(e->agent_log, "msg=\"connection lost\"");
	fprintf(stderr, "connection lost %d times; packet too large %d times\n", lost,
		log_count(e->agent_log, "Packet too large"));
	CHECK(lost <= 3, "the link was lost %d times: a refused packet is being resent", lost);
	return 0;
}

/* The agent must refuse a broker it cannot verify, say why, delete nothing. */
static int refused(struct itest *e, const char *ca, const char *cert, const char *expect)
{
	char rc_path[600];
	struct seen s;
	snprintf(rc_path, sizeof(rc_path), "%s/receipts.txt", e->dir);
	/* Central verifies the broker too: it cannot join a broker whose
	 * certificate names another host, so that case runs without it (and
	 * "nothing arrived" is then also visible as no central.db). */
	if (write_agent_cfg(e, ca, NULL) || itest_start_broker(e, cert))
		return -1;
	if (strcmp(cert, "server") == 0 && start_central(e))
		return -1;
	if (capture(e, 5, "T", rc_path) || itest_start_agent(e))
		return -1;
	CHECK(th_wait_log(e->agent_log, "broker connection failed", 20000 * itest_scale) == 0,
	      "no 'broker connection failed' log line");
	CHECK(th_wait_log(e->agent_log, expect, 5000) == 0, "log line does not say '%s'", expect);
	th_sleep_ms(1500);
	central_seen(e, &s);
	CHECK(s.rows == 0, "central received %" PRId64 " events over an unverified link", s.rows);
	CHECK(itest_pending(e->store) == 5, "outbox has %" PRId64 " pending, expected all 5 kept", itest_pending(e->store));
	return 0;
}

static int t_wrong_ca(struct itest *e)
{
	return refused(e, "other-ca.crt", "server", "certificate verify failed");
}

static int t_wrong_host(struct itest *e)
{
	return refused(e, "ca.crt", "wronghost", "host name mismatch");
}

/* Plaintext needs an explicit opt-in; the refusal names the key. */
static int t_plaintext_refused(struct itest *e)
{
	char cfg[1024], log[600];
	snprintf(cfg, sizeof(cfg),
		 "{\"tenant\":\"acme\",\"store_id\":\"s1\",\"device_id\":\"d1\",\"store_dir\":\"%s\","
		 "\"broker\":{\"uri\":\"mqtt://127.0.0.1:%d\"}}",
		 e->store, e->port);
	th_write_file(e->agent_cfg, cfg);
	snprintf(log, sizeof(log), "%s/plain.log", e->dir);
	const char *argv[] = {th_bin("SCRM_AGENT_BIN"), "--config", e->agent_cfg, NULL};
	int rc = th_run_target(argv, log, 30000 * itest_scale);
	CHECK(rc == 1, "scrm-agent exited %d, expected 1", rc);
	CHECK(th_wait_log(log, "broker.uri: plaintext mqtt:// refused", 100) == 0, "message does not name broker.uri");
	return 0;
}

/* A real store day from the retail sample with the broker down for part of
 * it: every invoice's total reaches central exactly once. */
static int t_retail_replay(struct itest *e)
{
	char rc_path[600], csv[600];
	int64_t n;
	snprintf(rc_path, sizeof(rc_path), "%s/receipts.txt", e->dir);
	const char *data = getenv("SCRM_DATA_DIR");
	CHECK(data, "SCRM_DATA_DIR not set");
	snprintf(csv, sizeof(csv), "%s/online_retail_sample.csv", data);
	if (write_agent_cfg(e, "ca.crt", NULL) || itest_start_broker(e, "server") || start_central(e) || itest_start_agent(e))
		return -1;
	const char *argv[] = {th_bin("SCRM_POSSIM_BIN"), "--store", e->store, "--device", DEVICE, "--csv", csv,
			      "--speed", "100000", "--receipts", NULL};
	pid_t pos = th_spawn_target(argv, rc_path);
	CHECK(pos > 0, "spawn pos");
	th_sleep_ms(1000);
	th_broker_stop(e->broker); /* the store's line goes down mid-day */
	th_sleep_ms(2000);
	th_broker_restart(e->broker);
	int st = 0;
	CHECK(th_wait(pos, 120000 * itest_scale, &st) == 0 && th_exit_code(st) == 0, "replay failed");
	int64_t committed = itest_last_seq(e->store);
	CHECK(committed == 512, "512 invoices in the sample, %" PRId64 " captured", committed);
	if (wait_delivered(e, committed, 180) || check_exactly_once(e, committed) || check_receipts(e, rc_path, &n))
		return -1;
	/* Money check: the sum of totals at central equals the sample's. */
	sqlite3 *db;
	sqlite3_stmt *q;
	CHECK(sqlite3_open_v2(e->central_db, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK, "open central");
	sqlite3_prepare_v2(db, "SELECT sum(json_extract(body,'$.total')) FROM events WHERE kind='purchase'", -1, &q, NULL);
	int64_t sum = sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int64(q, 0) : -1;
	sqlite3_finalize(q);
	sqlite3_close(db);
	fprintf(stderr, "purchases total at central: %" PRId64 " minor units\n", sum);
	/* Computed independently from the CSV in the test's CMake (awk). */
	const char *want = getenv("SCRM_SAMPLE_PURCHASE_TOTAL");
	if (want)
		CHECK(sum == strtoll(want, NULL, 10), "central total %" PRId64 " != sample total %s", sum, want);
	return 0;
}

/* Mutual TLS: without its certificate the device is refused and keeps
 * every event; with it, everything arrives once. */
static int t_mutual_tls(struct itest *e)
{
	char rc_path[600], extra[1300];
	e->mtls = 1;
	snprintf(rc_path, sizeof(rc_path), "%s/receipts.txt", e->dir);
	if (write_agent_cfg(e, "ca.crt", NULL) || itest_start_broker(e, "server") || start_central(e))
		return -1;
	if (capture(e, 100, "M", rc_path) || itest_start_agent(e))
		return -1;
	CHECK(th_wait_log(e->agent_log, "broker connection failed", 20000 * itest_scale) == 0,
	      "an agent without a client certificate was not refused");
	CHECK(th_wait_log(e->agent_log, "requires a client certificate", 5000) == 0,
	      "the refusal does not say that a client certificate is required");
	th_stop(e->agent, 5000);
	e->agent = 0;
	CHECK(itest_pending(e->store) == 100, "outbox has %" PRId64 " pending after the refusal, expected 100", itest_pending(e->store));
	snprintf(extra, sizeof(extra), ", \"cert_file\": \"%s/client.crt\", \"key_file\": \"%s/client.key\"", e->dir, e->dir);
	if (write_agent_cfg(e, "ca.crt", extra) || itest_start_agent(e))
		return -1;
	if (wait_delivered(e, 100, 60) || check_exactly_once(e, 100))
		return -1;
	return 0;
}

/* ---- the TLS floor and revocation (issue 12, finding 7) ---- */

/* Run the openssl program (host binary, also under qemu runs); 0 or -1. */
static int ossl(struct itest *e, const char *const argv[])
{
	char log[600];
	snprintf(log, sizeof(log), "%s/openssl.log", e->dir);
	int rc = th_run(argv, log, 60000);
	if (rc != 0) {
		th_dump_log(log, 2000);
		fprintf(stderr, "FAIL: openssl %s %s exited %d\n", argv[1], argv[2] ? argv[2] : "", rc);
		itest_failures++;
		return -1;
	}
	return 0;
}

/* An RSA server certificate for localhost/127.0.0.1 issued by the test CA:
 * dir/<name>.crt + .key. `san` is the subjectAltName (the CN is always
 * localhost). */
static int rsa_server_cert(struct itest *e, const char *name, const char *bits, const char *san)
{
	char key[600], csr[600], crt[600], ext[600], ca[600], cakey[600], rsa[32], subj[] = "/CN=localhost";
	snprintf(key, sizeof(key), "%s/%s.key", e->dir, name);
	snprintf(csr, sizeof(csr), "%s/%s.csr", e->dir, name);
	snprintf(crt, sizeof(crt), "%s/%s.crt", e->dir, name);
	snprintf(ext, sizeof(ext), "%s/%s.ext", e->dir, name);
	snprintf(ca, sizeof(ca), "%s/ca.crt", e->dir);
	snprintf(cakey, sizeof(cakey), "%s/ca.key", e->dir);
	snprintf(rsa, sizeof(rsa), "rsa:%s", bits);
	char text[300];
	snprintf(text, sizeof(text), "subjectAltName=%s\nextendedKeyUsage=serverAuth\n", san);
	CHECK(th_write_file(ext, text) == 0, "write %s", ext);
	const char *req[] = {"openssl", "req", "-newkey", rsa, "-nodes", "-keyout", key, "-out", csr, "-subj", subj, NULL};
	const char *sign[] = {"openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", cakey, "-CAcreateserial",
			      "-out", crt, "-days", "2", "-extfile", ext, NULL};
	return ossl(e, req) || ossl(e, sign) ? -1 : 0;
}

/* One TLS server the agent must refuse (or, for the controls, accept):
 * `openssl s_server` speaks TLS but not MQTT, so what it prints shows
 * whether the agent trusted the link — the MQTT CONNECT packet carries the
 * protocol name "MQTT" in clear inside the TLS stream, and s_server echoes
 * what it receives. */
struct tls_case {
	const char *what, *cert;
	const char *args[6];
	int accept; /* 1: a control the agent must use */
};

/* openssl s_server ends at EOF on its stdin (before any connection, even
 * with -ign_eof): give it a pipe that stays open until it is stopped.
 * Returns the pid; *keep is the pipe's write end (close after stopping). */
static pid_t spawn_s_server(const char *const argv[], const char *log_path, int *keep)
{
	int p[2];
	if (pipe(p) != 0)
		return -1;
	pid_t pid = fork();
	if (pid == 0) {
		int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0 || dup2(p[0], 0) < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
			_exit(127);
		close(p[1]);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(p[0]);
	if (pid < 0) {
		close(p[1]);
		return -1;
	}
	*keep = p[1];
	return pid;
}

static int tls_case_run(struct itest *e, const struct tls_case *c)
{
	char crt[600], key[600], srv_log[600], port[16];
	int p = th_free_port();
	CHECK(p > 0, "free port");
	e->port = p;
	snprintf(port, sizeof(port), "%d", p);
	snprintf(crt, sizeof(crt), "%s/%s.crt", e->dir, c->cert);
	snprintf(key, sizeof(key), "%s/%s.key", e->dir, c->cert);
	snprintf(srv_log, sizeof(srv_log), "%s/s_server.%s.log", e->dir, c->cert);
	const char *argv[16] = {"openssl", "s_server", "-accept", port, "-cert", crt, "-key", key};
	size_t n = 8;
	int keep = -1;
	for (size_t i = 0; c->args[i] && n < 15; i++)
		argv[n++] = c->args[i];
	argv[n] = NULL;
	unlink(srv_log);
	pid_t srv = spawn_s_server(argv, srv_log, &keep);
	CHECK(srv > 0, "spawn openssl s_server");
	CHECK(th_wait_log(srv_log, "ACCEPT", 10000) == 0, "s_server did not start");
	unlink(e->agent_log);
	if (write_agent_cfg(e, "ca.crt", ", \"connect_timeout_s\": 3") || itest_start_agent(e)) {
		kill(srv, SIGKILL);
		waitpid(srv, NULL, 0);
		close(keep);
		return -1;
	}
	int used;
	if (c->accept) {
		used = th_wait_log(srv_log, "MQTT", 20000 * itest_scale) == 0;
	} else {
		/* Refused: the attempt has failed (and a second one begun) before
		 * the server's output is read. */
		CHECK(th_wait_log(e->agent_log, "reconnect scheduled", 20000 * itest_scale) == 0, "%s: no failed attempt",
		      c->what);
		th_sleep_ms(300);
		used = th_wait_log(srv_log, "MQTT", 1) == 0;
	}
	th_stop(e->agent, 5000);
	e->agent = 0;
	CHECK(th_wait_log(srv_log, "CONNECTION CLOSED", 1) == 0 || th_wait_log(srv_log, "ERROR", 1) == 0 || used,
	      "%s: the agent never reached s_server", c->what);
	kill(srv, SIGKILL);
	waitpid(srv, NULL, 0);
	close(keep);
	if (used != c->accept)
		th_dump_log(srv_log, 1500);
	CHECK(used == c->accept, "%s: the agent %s", c->what,
	      c->accept ? "did not send MQTT over a link it must accept (control)" : "sent MQTT over a link it must refuse");
	printf("  %-58s %s\n", c->what, used ? "used" : "refused");
	return 0;
}

/* TLS >= 1.2, security level 2 (RSA >= 2048), forward-secret suites only,
 * and no host name taken from the CN when the certificate has SANs. Each
 * refusal case connected on main before issue 12 except the SAN one; the
 * two controls keep the test from passing by refusing everything. */
static int t_tls_floor(struct itest *e)
{
	if (rsa_server_cert(e, "rsa1024", "1024", "DNS:localhost,IP:127.0.0.1") ||
	    rsa_server_cert(e, "rsa2048", "2048", "DNS:localhost,IP:127.0.0.1") ||
	    rsa_server_cert(e, "othersan", "2048", "DNS:other.example"))
		return -1;
	const struct tls_case cases[] = {
		{"TLS 1.0, static RSA, RSA-2048", "rsa2048", {"-tls1", "-cipher", "AES128-SHA:@SECLEVEL=0"}, 0},
		{"TLS 1.0, static RSA, RSA-1024", "rsa1024", {"-tls1", "-cipher", "AES128-SHA:@SECLEVEL=0"}, 0},
		{"TLS 1.1, ECDHE, RSA-2048", "rsa2048", {"-tls1_1", "-cipher", "ECDHE-RSA-AES128-SHA:@SECLEVEL=0"}, 0},
		{"TLS 1.2, ECDHE-GCM, RSA-1024 key", "rsa1024", {"-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256:@SECLEVEL=0"}, 0},
		{"TLS 1.2, static RSA (no forward secrecy), RSA-2048", "rsa2048", {"-tls1_2", "-cipher", "AES128-GCM-SHA256"}, 0},
		{"TLS 1.2, CBC suite, RSA-2048", "rsa2048", {"-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA256"}, 0},
		{"SAN other.example with CN=localhost (no CN fallback)", "othersan", {NULL}, 0},
		{"control: TLS 1.2, ECDHE-GCM, RSA-2048", "rsa2048", {"-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"}, 1},
		{"control: TLS 1.3, RSA-2048", "rsa2048", {"-tls1_3"}, 1},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		if (tls_case_run(e, &cases[i]))
			return -1;
	return 0;
}

/* A CRL of the test CA (th_certs_make_crl): revoking dir/<revoke> (NULL:
 * none); `expired` gives one whose nextUpdate has passed. */
static int make_crl(struct itest *e, const char *out_name, const char *revoke, int expired)
{
	char out[600], rev[600];
	snprintf(out, sizeof(out), "%s/%s", e->dir, out_name);
	snprintf(rev, sizeof(rev), "%s/%s", e->dir, revoke ? revoke : "");
	const char *const revoked[] = {revoke ? rev : NULL, NULL};
	CHECK(th_certs_make_crl(e->dir, "ca", revoked, out, expired ? -1 : 2) == 0, "CRL %s", out_name);
	return 0;
}

/* broker.crl_file: a revoked broker certificate, an expired CRL and an
 * unreadable CRL file are each refused with a reason naming them, and
 * nothing is sent; with a current CRL that does not list the broker,
 * everything arrives once. */
static int t_crl(struct itest *e)
{
	char rc_path[600], extra[800];
	snprintf(rc_path, sizeof(rc_path), "%s/receipts.txt", e->dir);
	if (make_crl(e, "crl-revoked.pem", "server.crt", 0) || make_crl(e, "crl-expired.pem", NULL, 1) ||
	    make_crl(e, "crl-current.pem", NULL, 0))
		return -1;
	if (itest_start_broker(e, "server") || start_central(e) || capture(e, 20, "R", rc_path))
		return -1;
	const struct {
		const char *file, *expect;
	} refused_by[] = {
		{"crl-revoked.pem", "certificate revoked"},
		{"crl-expired.pem", "CRL has expired"},
		{"no-such-crl.pem", "broker.crl_file: cannot read"},
	};
	for (size_t i = 0; i < sizeof(refused_by) / sizeof(refused_by[0]); i++) {
		snprintf(extra, sizeof(extra), ", \"crl_file\": \"%s/%s\"", e->dir, refused_by[i].file);
		unlink(e->agent_log);
		if (write_agent_cfg(e, "ca.crt", extra) || itest_start_agent(e))
			return -1;
		CHECK(th_wait_log(e->agent_log, "broker connection failed", 20000 * itest_scale) == 0,
		      "%s: the agent was not refused", refused_by[i].file);
		CHECK(th_wait_log(e->agent_log, refused_by[i].expect, 5000) == 0, "%s: the refusal does not say '%s'",
		      refused_by[i].file, refused_by[i].expect);
		th_stop(e->agent, 5000);
		e->agent = 0;
		struct seen s;
		central_seen(e, &s);
		CHECK(s.rows == 0, "%s: central received %" PRId64 " events", refused_by[i].file, s.rows);
		CHECK(itest_pending(e->store) == 20, "%s: outbox has %" PRId64 " pending, expected 20", refused_by[i].file, itest_pending(e->store));
	}
	snprintf(extra, sizeof(extra), ", \"crl_file\": \"%s/crl-current.pem\"", e->dir);
	if (write_agent_cfg(e, "ca.crt", extra) || itest_start_agent(e))
		return -1;
	return wait_delivered(e, 20, 60) || check_exactly_once(e, 20) ? -1 : 0;
}

/* The link comes back: the agent must reconnect at once (netlink), not
 * when its backoff timer — grown large by a long outage — would fire. Runs
 * in a private network namespace so it can take the loopback link down. */
static int t_link_back(struct itest *e)
{
	char rc_path[600], extra[200];
	snprintf(rc_path, sizeof(rc_path), "%s/receipts.txt", e->dir);
	(void)extra;
	/* A backoff that would otherwise keep the agent away for long. */
	char cfg[4096];
	snprintf(cfg, sizeof(cfg),
		 "{\"tenant\":\"acme\",\"store_id\":\"s1\",\"device_id\":\"%s\",\"store_dir\":\"%s\","
		 "\"broker\":{\"uri\":\"mqtts://127.0.0.1:%d\",\"ca_file\":\"%s/ca.crt\"},"
		 "\"sync\":{\"backoff_min_ms\":200,\"backoff_max_ms\":600000}}",
		 DEVICE, e->store, e->port, e->dir);
	CHECK(th_write_file(e->agent_cfg, cfg) == 0, "config");
	if (itest_start_broker(e, "server") || start_central(e) || itest_start_agent(e))
		return -1;
	CHECK(th_wait_log(e->agent_log, "msg=\"connected\"", 20000 * itest_scale) == 0, "agent never connected");
	th_broker_stop(e->broker);
	/* Let itest_failures pile up until the backoff ceiling is large. */
	CHECK(th_wait_log(e->agent_log, "ceiling_ms=51200", 120000 * itest_scale) == 0, "backoff did not grow");
	if (capture(e, 50, "L", rc_path))
		return -1;
	CHECK(th_broker_restart(e->broker) == 0, "broker restart");
	const char *down[] = {"ip", "link", "set", "lo", "down", NULL};
	const char *up[] = {"ip", "link", "set", "lo", "up", NULL};
	CHECK(th_run(down, NULL, 10000) == 0 && th_run(up, NULL, 10000) == 0, "ip link");
	CHECK(th_wait_log(e->agent_log, "network changed; reconnecting now", 10000 * itest_scale) == 0,
	      "the agent did not react to the link coming back");
	if (wait_delivered(e, 50, 120) || check_exactly_once(e, 50))
		return -1;
	/* The reconnect that delivered them followed the link event, not the
	 * backoff timer: the last "connected" comes after "network changed". */
	size_t len;
	char *log = th_read_file(e->agent_log, &len);
	CHECK(log, "read agent log");
	char *net = strstr(log, "network changed; reconnecting now");
	char *conn = NULL;
	for (char *p = log; (p = strstr(p, "msg=\"connected\"")) != NULL; p++)
		conn = p;
	int ok = net && conn && conn > net;
	free(log);
	CHECK(ok, "the reconnect did not follow the link event");
	return 0;
}

/* Central subscribes only after the agent published its first batch, which
 * the broker therefore dropped (a shared subscription with no member). The
 * next batch must say, through `base`, that seq 1 is not acknowledged, so
 * central asks for it instead of skipping it: both arrive in order, and no
 * jump is recorded. A protocol-following central would otherwise count seq 1
 * as a duplicate when it came back, ack it, and the agent would delete it. */
static int t_late_central(struct itest *e)
{
	char rc_path[600];
	snprintf(rc_path, sizeof(rc_path), "%s/receipts.txt", e->dir);
	if (write_agent_cfg(e, "ca.crt", NULL) || itest_start_broker(e, "server") || itest_start_agent(e))
		return -1;
	CHECK(th_wait_log(e->agent_log, "msg=\"connected\"", 20000 * itest_scale) == 0, "agent never connected");
	th_sleep_ms(500 * itest_scale); /* subscribed */
	if (capture(e, 1, "A", rc_path))
		return -1;
	th_sleep_ms(1000 * itest_scale); /* published into the void */
	if (start_central(e))
		return -1;
	if (capture(e, 1, "B", rc_path))
		return -1;
	/* well under ack_timeout_ms: no help from the timeout's go-back */
	if (wait_delivered(e, 2, 8) || check_exactly_once(e, 2))
		return -1;
	CHECK(th_wait_log(e->central_log, "device reports acknowledged events", 1) != 0,
	      "central was told an unacknowledged event was acknowledged");
	return 0;
}

/* Own network namespace: taking lo down must not disturb the machine.
 * Needs CAP_SYS_ADMIN (root in CI); else skip. */
static int own_netns(const char *scenario)
{
	if (strcmp(scenario, "link_back") != 0)
		return 0;
	const char *lo_up[] = {"ip", "link", "set", "lo", "up", NULL};
	if (unshare(CLONE_NEWNET) != 0 || th_run(lo_up, NULL, 10000) != 0) {
		printf("link_back: skipped (no network namespace: %s)\n", strerror(errno));
		return 77;
	}
	return 0;
}

static const struct itest_suite suite = {
	.program = "spine_itest",
	.before = own_netns,
	.scenarios = (const struct itest_scenario[]){
		{"offline_10k", t_offline_10k},
		{"broker_restart", t_broker_restart},
		{"broker_crash", t_broker_crash},
		{"agent_kill9", t_agent_kill9},
		{"small_packet", t_small_packet},
		{"size_limit", t_size_limit},
		{"capture_kill9", t_capture_kill9},
		{"wrong_ca", t_wrong_ca},
		{"wrong_host", t_wrong_host},
		{"plaintext_refused", t_plaintext_refused},
		{"retail_replay", t_retail_replay},
		{"mutual_tls", t_mutual_tls},
		{"link_back", t_link_back},
		{"late_central", t_late_central},
		{"tls_floor", t_tls_floor},
		{"crl", t_crl},
		{NULL, NULL},
	},
};

ITEST_MAIN(suite)
