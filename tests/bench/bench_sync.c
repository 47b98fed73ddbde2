/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-bench-sync: capture and drain throughput, each against a reference
 * measured in the same run on the same machine:
 *   1. durable capture, one event per call   vs raw SQLite WAL+FULL, one row per txn
 *   2. capture from T threads (group commit) vs raw SQLite, 1,000 rows per txn
 *   3. drain of a backlog over TLS to a local mosquitto with central acks
 *      (scrm-agent → scrm-central)           vs a naive Paho client that publishes
 *      each event as its own QoS 1 message and waits for its PUBACK
 * Not a test: it asserts nothing about time. The last line is machine-readable:
 *   FIGURES capture_single_per_s=N sqlite_single_per_s=N capture_group_per_s=N
 *           sqlite_batch_per_s=N drain_per_s=N naive_per_s=N
 */
#include "harness.h"
#include "sqlpeek.h"

#include <scrm/scrm.h>

#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct cfg {
	long single, group, threads, batch_rows, drain, naive;
	const char *agent, *central;
};

static const char row_body[] =
	"{\"order_id\":\"S-000001\",\"lines\":[{\"sku\":\"85123A\",\"qty\":6,\"unit_price\":255,\"discount\":0},"
	"{\"sku\":\"71053\",\"qty\":6,\"unit_price\":339,\"discount\":0}],\"discount\":0,\"total\":3564,"
	"\"currency\":\"GBP\",\"payment\":\"card\",\"member_id\":\"17850\"}";

static double rate(long n, int64_t ms)
{
	return ms > 0 ? (double)n * 1000.0 / (double)ms : 0.0;
}

static void fill_purchase(scrm_purchase *p, scrm_line *l, char *order, size_t olen, long i)
{
	snprintf(order, olen, "B-%ld", i);
	l[0] = (scrm_line){.sku = "85123A", .qty = 6, .unit_price = 255};
	l[1] = (scrm_line){.sku = "71053", .qty = 6, .unit_price = 339};
	*p = (scrm_purchase){.order_id = order, .lines = l, .n_lines = 2, .total = 3564, .currency = "GBP",
			     .payment = "card", .member_id = "17850"};
}

/* ---- raw SQLite references ---- */

static double sqlite_ref(const char *dir, long n, long per_txn)
{
	char path[600];
	sqlite3 *db;
	sqlite3_stmt *st;
	snprintf(path, sizeof(path), "%s/raw-%ld.db", dir, per_txn);
	sqlite3_open(path, &db);
	sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
			 "CREATE TABLE t(seq INTEGER PRIMARY KEY, id TEXT, kind TEXT, wall_ms INT, mono_ms INT, boot TEXT, clock_ok INT, body TEXT)",
		     NULL, NULL, NULL);
	sqlite3_prepare_v2(db, "INSERT INTO t(id,kind,wall_ms,mono_ms,boot,clock_ok,body) VALUES (?,?,?,?,?,?,?)", -1, &st, NULL);
	int64_t t0 = th_now_ms();
	for (long i = 0; i < n; i++) {
		if (i % per_txn == 0)
			sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
		sqlite3_bind_text(st, 1, "0193b3c2-7a10-7f3e-8d21-0a9b8c7d6e5f", -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, "purchase", -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 3, th_wall_ms());
		sqlite3_bind_int64(st, 4, th_now_ms());
		sqlite3_bind_text(st, 5, "9f1c0d1e-6a43-4b7e-9a51-0c2d9e8f7a6b", -1, SQLITE_STATIC);
		sqlite3_bind_int(st, 6, 1);
		sqlite3_bind_text(st, 7, row_body, -1, SQLITE_STATIC);
		sqlite3_step(st);
		sqlite3_reset(st);
		if (i % per_txn == per_txn - 1 || i == n - 1)
			sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
	}
	int64_t ms = th_now_ms() - t0;
	sqlite3_finalize(st);
	sqlite3_close(db);
	return rate(n, ms);
}

/* ---- libscrm capture ---- */

static double capture_single(const char *store, long n)
{
	scrm_store *st;
	scrm_store_options so = {.device_id = "bench-1"};
	if (scrm_store_open(store, &so, &st) != SCRM_OK)
		return 0;
	int64_t t0 = th_now_ms();
	for (long i = 0; i < n; i++) {
		scrm_purchase p;
		scrm_line l[2];
		char order[32];
		fill_purchase(&p, l, order, sizeof(order), i);
		if (scrm_record_purchase(st, &p, NULL) != SCRM_OK) {
			fprintf(stderr, "capture failed: %s\n", scrm_errmsg());
			break;
		}
	}
	int64_t ms = th_now_ms() - t0;
	scrm_store_close(st);
	return rate(n, ms);
}

struct worker {
	scrm_store *st;
	long n, base;
};

static void *capture_worker(void *arg)
{
	struct worker *w = arg;
	for (long i = 0; i < w->n; i++) {
		scrm_purchase p;
		scrm_line l[2];
		char order[32];
		fill_purchase(&p, l, order, sizeof(order), w->base + i);
		if (scrm_record_purchase(w->st, &p, NULL) != SCRM_OK) {
			fprintf(stderr, "capture failed: %s\n", scrm_errmsg());
			break;
		}
	}
	return NULL;
}

/* T threads share one store handle: concurrent calls are group-committed. */
static double capture_group(const char *store, long n, long threads)
{
	scrm_store *st;
	scrm_store_options so = {.device_id = "bench-1"};
	pthread_t tid[256];
	struct worker w[256];
	if (threads > 256)
		threads = 256;
	if (scrm_store_open(store, &so, &st) != SCRM_OK)
		return 0;
	int64_t t0 = th_now_ms();
	for (long t = 0; t < threads; t++) {
		w[t] = (struct worker){.st = st, .n = n / threads, .base = 1000000 + t * (n / threads)};
		pthread_create(&tid[t], NULL, capture_worker, &w[t]);
	}
	for (long t = 0; t < threads; t++)
		pthread_join(tid[t], NULL);
	int64_t ms = th_now_ms() - t0;
	scrm_store_close(st);
	return rate(n / threads * threads, ms);
}

/* ---- drain ---- */

static int64_t outbox_pending(const char *store)
{
	scrm_store *st;
	scrm_outbox_stats s;
	if (scrm_store_open(store, NULL, &st) != SCRM_OK)
		return -1;
	int rc = scrm_outbox_get_stats(st, &s);
	scrm_store_close(st);
	return rc == SCRM_OK ? s.pending : -1;
}

static double drain(const struct cfg *c, const char *dir, th_broker *b)
{
	char store[600], cfgp[600], log[600], clog[600], cdb[600], ready[600], ca[600], text[2048];
	/* The drain's files, all in dir; each buffer is sizeof(store). */
	const struct {
		char *path;
		const char *name;
	} files[] = {{store, "drain-store"}, {cfgp, "agent.json"},       {log, "agent.log"}, {clog, "central.log"},
		     {cdb, "central.db"},     {ready, "central.ready"}, {ca, "ca.crt"}};
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
		snprintf(files[i].path, sizeof(store), "%s/%s", dir, files[i].name);

	fprintf(stderr, "filling a backlog of %ld events...\n", c->drain);
	capture_group(store, c->drain, 16);

	const char *cargv[] = {c->central, "run", "--broker", th_broker_uri(b), "--ca", ca, "--db", cdb,
			       "--ready-file", ready, NULL};
	pid_t central = th_spawn_target(cargv, clog);
	for (int i = 0; i < 300 && access(ready, F_OK) != 0; i++)
		th_sleep_ms(100);
	snprintf(text, sizeof(text),
		 "{\"tenant\":\"bench\",\"store_id\":\"s1\",\"device_id\":\"bench-1\",\"store_dir\":\"%s\","
		 "\"broker\":{\"uri\":\"mqtts://127.0.0.1:%d\",\"ca_file\":\"%s\"},\"log\":{\"level\":\"warn\"}}",
		 store, th_broker_port(b), ca);
	th_write_file(cfgp, text);
	const char *aargv[] = {c->agent, "--config", cfgp, NULL};
	int64_t t0 = th_now_ms();
	pid_t agent = th_spawn_target(aargv, log);
	int64_t done_ms = 0;
	while (th_now_ms() - t0 < 600000) {
		/* central's count: 0 before its database exists, -1 unreadable */
		if (sqlpeek_int(cdb, "SELECT count(*) FROM events") >= c->drain && outbox_pending(store) == 0) {
			done_ms = th_now_ms() - t0;
			break;
		}
		th_sleep_ms(20);
	}
	th_stop(agent, 5000);
	th_stop(central, 5000);
	if (!done_ms) {
		fprintf(stderr, "drain did not complete; see %s and %s\n", log, clog);
		return 0;
	}
	return rate(c->drain, done_ms);
}

/* Naive reference: one event per QoS 1 message, wait for each PUBACK. */
static double naive(const struct cfg *c, const char *dir, th_broker *b)
{
	char ca[600], err[256];
	snprintf(ca, sizeof(ca), "%s/ca.crt", dir);
	th_mqtt_opts o = {.uri = th_broker_uri(b), .client_id = "naive-1", .ca_file = ca};
	th_mqtt *m = th_mqtt_connect(&o, err, sizeof(err));
	if (!m) {
		fprintf(stderr, "naive client: %s\n", err);
		return 0;
	}
	char msg[1024];
	int len = snprintf(msg, sizeof(msg),
			   "{\"id\":\"0193b3c2-7a10-7f3e-8d21-0a9b8c7d6e5f\",\"seq\":1,\"kind\":\"purchase\",\"wall_ms\":1,"
			   "\"mono_ms\":1,\"boot\":\"9f1c0d1e-6a43-4b7e-9a51-0c2d9e8f7a6b\",\"clock_ok\":true,\"body\":%s}",
			   row_body);
	int64_t t0 = th_now_ms();
	long i;
	for (i = 0; i < c->naive; i++)
		if (th_mqtt_publish(m, "bench/naive/up", msg, (size_t)len, 1, 10000) != 0)
			break;
	int64_t ms = th_now_ms() - t0;
	th_mqtt_close(m);
	return rate(i, ms);
}

static void usage(void)
{
	printf("Usage: scrm-bench-sync [--single N] [--group N] [--threads T] [--drain N] [--naive N]\n"
	       "  defaults: --single 3000 --group 40000 --threads 16 --drain 100000 --naive 20000\n"
	       "  env SCRM_AGENT_BIN / SCRM_CENTRAL_BIN override the built binaries' paths.\n");
}

int main(int argc, char **argv)
{
	struct cfg c = {.single = 3000, .group = 40000, .threads = 16, .batch_rows = 1000, .drain = 100000, .naive = 20000,
			.agent = SCRM_BENCH_AGENT, .central = SCRM_BENCH_CENTRAL};
	for (int i = 1; i < argc; i++) {
		long *dst = NULL;
		if (strcmp(argv[i], "--help") == 0) {
			usage();
			return 0;
		} else if (strcmp(argv[i], "--single") == 0) {
			dst = &c.single;
		} else if (strcmp(argv[i], "--group") == 0) {
			dst = &c.group;
		} else if (strcmp(argv[i], "--threads") == 0) {
			dst = &c.threads;
		} else if (strcmp(argv[i], "--drain") == 0) {
			dst = &c.drain;
		} else if (strcmp(argv[i], "--naive") == 0) {
			dst = &c.naive;
		}
		char *end = NULL;
		if (!dst || i + 1 >= argc || (*dst = strtol(argv[i + 1], &end, 10)) <= 0 || *end) {
			fprintf(stderr, "scrm-bench-sync: bad or incomplete option '%s'\n", argv[i]);
			usage();
			return 2;
		}
		i++;
	}
	if (getenv("SCRM_AGENT_BIN"))
		c.agent = getenv("SCRM_AGENT_BIN");
	if (getenv("SCRM_CENTRAL_BIN"))
		c.central = getenv("SCRM_CENTRAL_BIN");

	char *dir = th_tmpdir("bench-sync");
	char s1[600], s2[600];
	snprintf(s1, sizeof(s1), "%s/single-store", dir);
	snprintf(s2, sizeof(s2), "%s/group-store", dir);
	printf("scrm-bench-sync: SQLite %s, in %s\n", sqlite3_libversion(), dir);

	double sq1 = sqlite_ref(dir, c.single, 1);
	double cap1 = capture_single(s1, c.single);
	printf("capture, one event per call:    %10.0f events/s   raw SQLite WAL+FULL 1 row/txn: %10.0f rows/s   ratio %.2f\n",
	       cap1, sq1, sq1 > 0 ? cap1 / sq1 : 0);
	double sqb = sqlite_ref(dir, c.group * 2, c.batch_rows);
	double capg = capture_group(s2, c.group, c.threads);
	printf("capture, %2ld threads (group):    %10.0f events/s   raw SQLite WAL+FULL %ld rows/txn: %8.0f rows/s   ratio %.2f\n",
	       c.threads, capg, c.batch_rows, sqb, sqb > 0 ? capg / sqb : 0);

	th_certs_make(dir);
	th_broker *b = th_broker_start(dir, 0, "server", 0);
	if (!b) {
		fprintf(stderr, "cannot start mosquitto\n");
		return 1;
	}
	double nv = naive(&c, dir, b);
	double dr = drain(&c, dir, b);
	printf("drain %ld over TLS, central acks: %10.0f events/s   naive Paho QoS1 1 msg/event:    %10.0f msg/s    ratio %.2f\n",
	       c.drain, dr, nv, nv > 0 ? dr / nv : 0);
	th_broker_free(b);
	th_rmtree(dir);
	free(dir);
	printf("FIGURES capture_single_per_s=%.0f sqlite_single_per_s=%.0f capture_group_per_s=%.0f sqlite_batch_per_s=%.0f "
	       "drain_per_s=%.0f naive_per_s=%.0f\n",
	       cap1, sq1, capg, sqb, dr, nv);
	return 0;
}
