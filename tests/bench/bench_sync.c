/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-bench-sync: capture and drain, each against a reference measured in
 * the same run on the same machine:
 *   1. durable capture, one event per call   vs raw SQLite WAL+FULL, one row per txn
 *   2. capture from 16, 64 and 256 callers (group commit), and imports
 *      through scrm_record_batch (1,000 per call)
 *                                            vs raw SQLite, 1,000 rows per txn
 *   3. drain of a backlog over TLS to a local mosquitto with central acks
 *      (scrm-agent → scrm-central)           vs a naive Paho client that publishes
 *      each event as its own QoS 1 message and waits for its PUBACK
 *   4. a till's capture latency (p50/p99/p99.9/max) on a fresh store, with
 *      a backlog at rest, and while the agent drains that backlog
 * For 1 and 2 also what reaches the flash: WAL pages and bytes written per
 * event (row) and events per WAL fsync, counted by a VFS shim (iocount.h)
 * under every connection of this process, libscrm's and the references'.
 * Sales come from numbered tills (order ids zero-padded per till), two in
 * three naming one of 4,000 members.
 * Not a test: it asserts nothing about time. The last line is machine-readable:
 *   FIGURES capture_single_per_s=N sqlite_single_per_s=N capture_group_per_s=N
 *           sqlite_batch_per_s=N drain_per_s=N naive_per_s=N
 *           wal_pages_per_event=N sqlite_wal_pages_per_row=N
 *           group_wal_pages_per_event=N (64 callers) sqlite_batch_wal_pages_per_row=N
 *           events_per_fsync_16=N events_per_fsync_64=N events_per_fsync_256=N
 *           capture_batch_per_s=N batch_wal_pages_per_event=N
 *           capture_p999_us_idle=N capture_p999_us_drain=N
 *           wal_bytes_ratio_single=N wal_bytes_ratio_16=N wal_bytes_ratio_64=N
 *           wal_bytes_ratio_batch=N (WAL bytes per event over raw SQLite's per
 *           row at the same rows per commit: 1, as grouped, 1,000)
 */
#include "harness.h"
#include "iocount.h"
#include "sqlpeek.h"

#include <scrm/scrm.h>

#include <inttypes.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct cfg {
	long single, group, threads, batch_rows, drain, naive, till;
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

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* A sale of till `till`, its n-th: order ids zero-padded per till as tills
 * number them; two sales in three name one of 4,000 members (the sample
 * retailer has 3,360), the third none. */
static void fill_purchase(scrm_purchase *p, scrm_line *l, char *order, size_t olen, char *member, size_t mlen,
			  long till, long n)
{
	snprintf(order, olen, "T%03ld-%09ld", till, n);
	snprintf(member, mlen, "%ld", 12000 + (n * 7919 + till * 104729) % 4000);
	l[0] = (scrm_line){.sku = "85123A", .qty = 6, .unit_price = 255};
	l[1] = (scrm_line){.sku = "71053", .qty = 6, .unit_price = 339};
	*p = (scrm_purchase){.order_id = order, .lines = l, .n_lines = 2, .total = 3564, .currency = "GBP",
			     .payment = "card", .member_id = n % 3 ? member : NULL};
}

/* What one way of writing cost: rate, and per event (row) the WAL pages
 * and bytes written and the share of a WAL fsync. */
struct figs {
	double per_s, pages, bytes, per_fsync;
};

static struct figs figs_of(long n, int64_t us, const iocount *a)
{
	iocount b, d;
	iocount_get(&b);
	d = iocount_diff(&b, a);
	struct figs f = {.per_s = us > 0 ? (double)n * 1e6 / (double)us : 0};
	if (n > 0) {
		f.pages = (double)d.wal_pages / (double)n;
		f.bytes = (double)d.wal_bytes / (double)n;
		f.per_fsync = d.wal_syncs > 0 ? (double)n / (double)d.wal_syncs : 0;
	}
	return f;
}

/* ---- raw SQLite references ---- */

static struct figs sqlite_ref(const char *dir, long n, long per_txn)
{
	char path[600];
	sqlite3 *db;
	sqlite3_stmt *st;
	iocount a;
	snprintf(path, sizeof(path), "%s/raw-%ld.db", dir, per_txn);
	sqlite3_open(path, &db);
	sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
			 "CREATE TABLE t(seq INTEGER PRIMARY KEY, id TEXT, kind TEXT, wall_ms INT, mono_ms INT, boot TEXT, clock_ok INT, body TEXT)",
		     NULL, NULL, NULL);
	sqlite3_prepare_v2(db, "INSERT INTO t(id,kind,wall_ms,mono_ms,boot,clock_ok,body) VALUES (?,?,?,?,?,?,?)", -1, &st, NULL);
	iocount_get(&a);
	int64_t t0 = now_us();
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
	struct figs f = figs_of(n, now_us() - t0, &a);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return f;
}

/* ---- libscrm capture ---- */

static scrm_store *open_store(const char *dir)
{
	scrm_store *st;
	scrm_store_options so = {.device_id = "bench-1"};
	if (scrm_store_open(dir, &so, &st) != SCRM_OK) {
		fprintf(stderr, "store %s: %s\n", dir, scrm_errmsg());
		return NULL;
	}
	return st;
}

/* Capture latency, microseconds. */
struct lat {
	double p50, p99, p999, max;
	long n;
};

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

static struct lat lat_of(int64_t *us, long n)
{
	struct lat l = {.n = n};
	if (n <= 0)
		return l;
	qsort(us, (size_t)n, sizeof(*us), cmp_i64);
	l.p50 = (double)us[n / 2];
	l.p99 = (double)us[(n * 99) / 100];
	l.p999 = (double)us[(n * 999) / 1000];
	l.max = (double)us[n - 1];
	return l;
}

/* One till: n sales (till number `till`, from sale `from`), one call each,
 * back to back; each call's time into us[] when given. Stops early when
 * *stop becomes non-zero. Returns the sales recorded. */
static long till_run(scrm_store *st, long till, long from, long n, int64_t *us, volatile int *stop)
{
	long i;
	for (i = 0; i < n && !(stop && *stop); i++) {
		scrm_purchase p;
		scrm_line l[2];
		char order[32], member[16];
		fill_purchase(&p, l, order, sizeof(order), member, sizeof(member), till, from + i);
		int64_t t0 = now_us();
		if (scrm_record_purchase(st, &p, NULL) != SCRM_OK) {
			fprintf(stderr, "capture failed: %s\n", scrm_errmsg());
			break;
		}
		if (us)
			us[i] = now_us() - t0;
	}
	return i;
}

static struct figs capture_single(const char *store, long n, struct lat *lat)
{
	scrm_store *st = open_store(store);
	int64_t *us = calloc((size_t)n, sizeof(*us));
	struct figs f = {0};
	iocount a;
	if (st && us) {
		iocount_get(&a);
		int64_t t0 = now_us();
		long done = till_run(st, 0, 0, n, us, NULL);
		f = figs_of(done, now_us() - t0, &a);
		*lat = lat_of(us, done);
	}
	free(us);
	scrm_store_close(st);
	return f;
}

struct worker {
	scrm_store *st;
	long till, n;
};

static void *capture_worker(void *arg)
{
	struct worker *w = arg;
	till_run(w->st, w->till, 0, w->n, NULL, NULL);
	return NULL;
}

/* T threads (tills 1..T) share one store handle: concurrent calls are
 * group-committed. n events in all, spread over the threads. */
static struct figs capture_group(const char *store, long n, long threads)
{
	pthread_t tid[256];
	struct worker w[256];
	iocount a;
	if (threads > 256)
		threads = 256;
	scrm_store *st = open_store(store);
	if (!st)
		return (struct figs){0};
	iocount_get(&a);
	int64_t t0 = now_us();
	for (long t = 0; t < threads; t++) {
		w[t] = (struct worker){.st = st, .till = t + 1, .n = n / threads + (t < n % threads)};
		pthread_create(&tid[t], NULL, capture_worker, &w[t]);
	}
	for (long t = 0; t < threads; t++)
		pthread_join(tid[t], NULL);
	struct figs f = figs_of(n, now_us() - t0, &a);
	scrm_store_close(st);
	return f;
}

/* An import: n sales in calls of `per_call` (scrm_record_batch). */
static struct figs capture_batch(const char *store, long n, long per_call)
{
	scrm_store *st = open_store(store);
	scrm_purchase *p = calloc((size_t)per_call, sizeof(*p));
	scrm_line(*l)[2] = calloc((size_t)per_call, sizeof(*l));
	char(*order)[32] = calloc((size_t)per_call, sizeof(*order));
	char(*member)[16] = calloc((size_t)per_call, sizeof(*member));
	scrm_record_item *items = calloc((size_t)per_call, sizeof(*items));
	scrm_record_result *res = calloc((size_t)per_call, sizeof(*res));
	struct figs f = {0};
	iocount a;
	long done = 0;
	if (st && p && l && order && member && items && res) {
		iocount_get(&a);
		int64_t t0 = now_us();
		while (done < n) {
			long k = n - done < per_call ? n - done : per_call;
			for (long i = 0; i < k; i++) {
				fill_purchase(&p[i], l[i], order[i], sizeof(order[i]), member[i], sizeof(member[i]), 900,
					      done + i);
				items[i] = (scrm_record_item){.purchase = &p[i]};
			}
			if (scrm_record_batch(st, items, (size_t)k, res) != SCRM_OK) {
				fprintf(stderr, "batch failed: %s\n", scrm_errmsg());
				break;
			}
			for (long i = 0; i < k; i++)
				if (res[i].rc != SCRM_OK)
					fprintf(stderr, "batch item refused: %s\n", res[i].error);
			done += k;
		}
		f = figs_of(done, now_us() - t0, &a);
	}
	free(p);
	free(l);
	free(order);
	free(member);
	free(items);
	free(res);
	scrm_store_close(st);
	return f;
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

/* The till's side of a drain: one till recording back to back while the
 * agent drains, until told to stop. */
struct till_ctx {
	scrm_store *st;
	int64_t *us;
	long cap, done;
	volatile int stop;
};

static void *till_thread(void *arg)
{
	struct till_ctx *t = arg;
	t->done = till_run(t->st, 500, 1000000, t->cap, t->us, &t->stop);
	return NULL;
}

/* Fill a backlog of c->drain events, start central and the agent, and time
 * until central holds them all and the outbox is empty. With `till`, first
 * the till's latency with the backlog at rest (*idle), then the same till
 * recording throughout the drain (*busy), on its own store handle as a POS
 * process would. Files in dir/<name>-*. */
static double drain(const struct cfg *c, const char *dir, th_broker *b, const char *name, struct lat *idle,
		    struct lat *busy)
{
	char store[600], cfgp[600], log[600], clog[600], cdb[600], ready[600], ca[600], text[2048];
	/* The drain's files, all in dir; each buffer is sizeof(store). */
	const struct {
		char *path;
		const char *name;
	} files[] = {{store, "store"}, {cfgp, "agent.json"}, {log, "agent.log"}, {clog, "central.log"},
		     {cdb, "central.db"}, {ready, "central.ready"}};
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
		snprintf(files[i].path, sizeof(store), "%s/%s-%s", dir, name, files[i].name);
	snprintf(ca, sizeof(ca), "%s/ca.crt", dir);

	fprintf(stderr, "%s: filling a backlog of %ld events...\n", name, c->drain);
	capture_group(store, c->drain, 16);
	struct till_ctx t = {.cap = 0};
	pthread_t tid;
	int till_on = 0;
	if (idle) {
		int64_t *us = calloc((size_t)c->till, sizeof(*us));
		if ((t.st = open_store(store)) && us)
			*idle = lat_of(us, till_run(t.st, 500, 0, c->till, us, NULL));
		free(us);
		t.cap = 1000000;
		if (t.st && (t.us = calloc((size_t)t.cap, sizeof(*t.us))))
			till_on = 1;
	}

	const char *cargv[] = {c->central, "run", "--broker", th_broker_uri(b), "--ca", ca, "--db", cdb,
			       "--ready-file", ready, NULL};
	pid_t central = th_spawn_target(cargv, clog);
	/* Central runs elsewhere in a store's life: here it must not take the
	 * till's CPU (2 cores for till, agent, central and broker). */
	if (central > 0)
		setpriority(PRIO_PROCESS, (id_t)central, 10);
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
	/* As deployed: agent/dist/scrm-agent.service runs the agent at Nice=10
	 * so a till's sale never queues behind the drain for the CPU. */
	if (agent > 0)
		setpriority(PRIO_PROCESS, (id_t)agent, 10);
	if (till_on && pthread_create(&tid, NULL, till_thread, &t) != 0)
		till_on = 0;
	int64_t done_ms = 0;
	while (th_now_ms() - t0 < 600000) {
		/* central's count: 0 before its database exists, -1 unreadable */
		int64_t got = sqlpeek_int(cdb, "SELECT count(*) FROM events");
		if (till_on && !t.stop && got >= c->drain)
			t.stop = 1; /* the backlog is through: the till's figures are those of a drain */
		if (got >= c->drain && (!till_on || t.stop) && outbox_pending(store) == 0) {
			done_ms = th_now_ms() - t0;
			break;
		}
		th_sleep_ms(20);
	}
	if (till_on) {
		t.stop = 1;
		pthread_join(tid, NULL);
		*busy = lat_of(t.us, t.done);
	}
	free(t.us);
	scrm_store_close(t.st);
	th_stop(agent, 5000);
	th_stop(central, 5000);
	if (!done_ms) {
		fprintf(stderr, "drain did not complete; see %s and %s\n", log, clog);
		return 0;
	}
	return rate(c->drain + t.done, done_ms);
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
	printf("Usage: scrm-bench-sync [--single N] [--group N] [--threads T] [--batch N] [--drain N] [--naive N]\n"
	       "                       [--till N]\n"
	       "  --single  events captured one per call (latency at rest, WAL pages per event)\n"
	       "  --group   events captured by each of 16, 64 and 256 concurrent callers, and by --threads\n"
	       "  --batch   events imported with scrm_record_batch, 1,000 per call\n"
	       "  --drain   backlog the agent drains to central (twice: alone, then with a till recording)\n"
	       "  --naive   messages of the naive Paho reference\n"
	       "  --till    the till's sales timed at rest before the second drain\n"
	       "  defaults: --single 3000 --group 40000 --threads 16 --batch 40000 --drain 50000 --naive 20000\n"
	       "            --till 3000\n"
	       "  env SCRM_AGENT_BIN / SCRM_CENTRAL_BIN override the built binaries' paths.\n");
}

static void row(const char *what, const struct figs *f, const struct figs *ref)
{
	printf("%-34s %10.0f/s %8.2f %9.0f %8.1f", what, f->per_s, f->pages, f->bytes, f->per_fsync);
	if (ref)
		printf("   x%.2f rate, x%.2f bytes", ref->per_s > 0 ? f->per_s / ref->per_s : 0,
		       ref->bytes > 0 ? f->bytes / ref->bytes : 0);
	printf("\n");
}

static void lat_row(const char *what, const struct lat *l)
{
	printf("%-34s %8.0f %8.0f %8.0f %8.0f %8ld\n", what, l->p50, l->p99, l->p999, l->max, l->n);
}

int main(int argc, char **argv)
{
	struct cfg c = {.single = 3000, .group = 40000, .threads = 16, .batch_rows = 40000, .drain = 50000,
			.naive = 20000, .till = 3000, .agent = SCRM_BENCH_AGENT, .central = SCRM_BENCH_CENTRAL};
	const struct {
		const char *flag;
		long *dst;
	} opts[] = {{"--single", &c.single}, {"--group", &c.group}, {"--threads", &c.threads}, {"--batch", &c.batch_rows},
		    {"--drain", &c.drain},   {"--naive", &c.naive}, {"--till", &c.till}};
	for (int i = 1; i < argc; i++) {
		long *dst = NULL;
		if (strcmp(argv[i], "--help") == 0) {
			usage();
			return 0;
		}
		for (size_t k = 0; k < sizeof(opts) / sizeof(opts[0]); k++)
			if (strcmp(argv[i], opts[k].flag) == 0)
				dst = opts[k].dst;
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
	if (iocount_install() != SQLITE_OK) {
		fprintf(stderr, "scrm-bench-sync: cannot install the counting VFS\n");
		return 1;
	}

	char *dir = th_tmpdir("bench-sync");
	char path[600];
	printf("scrm-bench-sync: SQLite %s, in %s\n", sqlite3_libversion(), dir);
	printf("%-34s %12s %8s %9s %8s\n", "", "rate", "WALpg/ev", "WALB/ev", "ev/fsync");

	struct lat lat1 = {0};
	struct figs sq1 = sqlite_ref(dir, c.single, 1);
	row("raw SQLite, 1 row/txn", &sq1, NULL);
	snprintf(path, sizeof(path), "%s/single-store", dir);
	struct figs cap1 = capture_single(path, c.single, &lat1);
	row("capture, one event per call", &cap1, &sq1);

	struct figs sqb = sqlite_ref(dir, c.group * 2, 1000);
	row("raw SQLite, 1,000 rows/txn", &sqb, NULL);
	const long callers[] = {16, 64, 256};
	struct figs grp[3], capg, sqg[3];
	for (int k = 0; k < 3; k++) {
		char what[64];
		snprintf(path, sizeof(path), "%s/group-%ld", dir, callers[k]);
		snprintf(what, sizeof(what), "capture, %ld callers (group)", callers[k]);
		grp[k] = capture_group(path, c.group, callers[k]);
		row(what, &grp[k], &sqb);
		/* The flash cost of a group against raw SQLite committing as many
		 * rows at once as the group did: what a commit costs beyond its
		 * rows is shared the same way. */
		long per = grp[k].per_fsync >= 1 ? (long)(grp[k].per_fsync + 0.5) : 1;
		sqg[k] = sqlite_ref(dir, c.group, per);
		printf("  vs raw SQLite, %3ld rows/txn %10.0f/s %8.2f %9.0f          x%.2f bytes\n", per, sqg[k].per_s,
		       sqg[k].pages, sqg[k].bytes, sqg[k].bytes > 0 ? grp[k].bytes / sqg[k].bytes : 0);
	}
	capg = c.threads == 16 ? grp[0] : c.threads == 64 ? grp[1] : c.threads == 256 ? grp[2] : (struct figs){0};
	if (c.threads != 16 && c.threads != 64 && c.threads != 256) {
		char what[64];
		snprintf(path, sizeof(path), "%s/group-threads", dir);
		snprintf(what, sizeof(what), "capture, %ld callers (group)", c.threads);
		capg = capture_group(path, c.group, c.threads);
		row(what, &capg, &sqb);
	}
	snprintf(path, sizeof(path), "%s/batch-store", dir);
	struct figs bat = capture_batch(path, c.batch_rows, 1000);
	row("capture, batch call of 1,000", &bat, &sqb);

	th_certs_make(dir);
	th_broker *b = th_broker_start(dir, 0, "server", 0);
	if (!b) {
		fprintf(stderr, "cannot start mosquitto\n");
		return 1;
	}
	struct lat idle = {0}, busy = {0};
	double nv = naive(&c, dir, b);
	double dr = drain(&c, dir, b, "drain", NULL, NULL);
	printf("drain %ld over TLS, central acks: %10.0f events/s   naive Paho QoS1 1 msg/event:    %10.0f msg/s    ratio %.2f\n",
	       c.drain, dr, nv, nv > 0 ? dr / nv : 0);
	/* The till records back to back (a worst case, no real till is that
	 * busy): its sales queue behind the backlog and slow the drain. */
	double dr2 = drain(&c, dir, b, "till", &idle, &busy);
	printf("drain %ld + %ld sales of a till recording back to back: %10.0f events/s\n", c.drain, busy.n, dr2);
	printf("%-34s %8s %8s %8s %8s %8s\n", "till capture latency (us)", "p50", "p99", "p99.9", "max", "sales");
	lat_row("fresh store, alone", &lat1);
	lat_row("backlog at rest", &idle);
	lat_row("while the agent drains it", &busy);
	printf("p99.9 during the drain / at rest: x%.2f\n", idle.p999 > 0 ? busy.p999 / idle.p999 : 0);
	th_broker_free(b);
	th_rmtree(dir);
	free(dir);
	printf("FIGURES capture_single_per_s=%.0f sqlite_single_per_s=%.0f capture_group_per_s=%.0f sqlite_batch_per_s=%.0f "
	       "drain_per_s=%.0f naive_per_s=%.0f wal_pages_per_event=%.2f sqlite_wal_pages_per_row=%.2f "
	       "group_wal_pages_per_event=%.2f sqlite_batch_wal_pages_per_row=%.3f events_per_fsync_16=%.1f "
	       "events_per_fsync_64=%.1f events_per_fsync_256=%.1f capture_batch_per_s=%.0f "
	       "batch_wal_pages_per_event=%.3f capture_p999_us_idle=%.0f capture_p999_us_drain=%.0f "
	       "wal_bytes_ratio_single=%.2f wal_bytes_ratio_16=%.2f wal_bytes_ratio_64=%.2f wal_bytes_ratio_batch=%.2f\n",
	       cap1.per_s, sq1.per_s, capg.per_s, sqb.per_s, dr, nv, cap1.pages, sq1.pages, grp[1].pages, sqb.pages,
	       grp[0].per_fsync, grp[1].per_fsync, grp[2].per_fsync, bat.per_s, bat.pages, idle.p999, busy.p999,
	       sq1.bytes > 0 ? cap1.bytes / sq1.bytes : 0, sqg[0].bytes > 0 ? grp[0].bytes / sqg[0].bytes : 0,
	       sqg[1].bytes > 0 ? grp[1].bytes / sqg[1].bytes : 0, sqb.bytes > 0 ? bat.bytes / sqb.bytes : 0);
	return 0;
}
