/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-central: the reference implementation of the central side of the SCRM
 * edge protocol v1 (docs/protocol.md), used by the integration tests, the
 * benchmarks and the demo.
 *
 * `run` subscribes to every device's up/events topic (optionally through a
 * shared subscription), validates each batch, stores its events in SQLite in
 * one transaction per batch, deduplicating by (tenant, store, device, seq) and
 * keeping same-seq-different-id events aside as conflicts, and only after the
 * commit publishes the ack to the device's down/ack topic. `report` reads the
 * database and says, per device, what arrived: counts, gaps, duplicates,
 * conflicts, rejections and whether first arrivals came in seq order.
 *
 * With --cache-dir, `run` is also the cache publisher (protocol.md, "Customer
 * cache"): it subscribes to every device's up/cache/resync, records each
 * request in the resync_requests table and answers it with a snapshot of the
 * stream read from DIR/<stream>.jsonl (the "Snapshot file" format), chunked
 * and published to the device's down/cache/{stream}. Chunks are produced
 * lazily, one at a time, when a window slot frees up: a 300 MB file is never
 * held in memory, only its index (one file offset per chunk). `push`
 * publishes one cache delta to a store's down/cache/{stream} and waits for
 * the broker's PUBACK.
 *
 * Coupon verdicts (protocol.md, "Coupon verdicts"): a new coupon_redeem
 * event is decided in the transaction that stores it (rules from the coupon
 * and campaign records of DIR/coupons.jsonl, counts from the redemptions
 * table, across every store of the tenant), the verdict is kept in
 * redemptions, and is published to the device's down/verdict after the
 * batch's ack. A redelivered copy of the event is never decided again: its
 * stored verdict is published again (the device may have missed it).
 *
 * It owns its database file and its MQTT session (clean start).
 *
 * Threads: Paho's callbacks run on Paho threads and only hand work over: a
 * received batch is copied into the inbound queue, ack completions release a
 * window slot, connection events set flags; then they wake the main thread
 * through an eventfd. They never wait for the main thread: Paho runs them
 * holding its own mutex, which every Paho call of the main thread needs.
 * The main thread owns SQLite, parses, stores, publishes acks and snapshot
 * chunks, reads the cache files and drives (re)connects. Signal handlers only
 * set a flag and poke the eventfd.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <MQTTAsync.h>
#include <cjson/cJSON.h>
#include <sqlite3.h>

#include "ident.h" /* the id rule, shared with the agent (agent/lib/core/ident.c) */

#define IDENT_MAX 64               /* tenant / store / device: [A-Za-z0-9_.-]{1,64} */
#define EVENT_ID_MAX 128           /* generous: ids are UUIDv7 (36 chars) */
#define KIND_MAX 64
#define REASON_MAX 128
#define MAX_SAFE_INT 9007199254740992.0 /* 2^53: JSON numbers are doubles */
#define INBOUND_WARN_BYTES (64u << 20)  /* a backlog worth a warning */
#define ACK_SLOTS 64                    /* upper bound for --ack-window */
#define ACK_WINDOW_DEFAULT 10           /* below mosquitto's Receive Maximum of 20 */
#define ACK_SLOT_STALE_MS 30000         /* reclaim a slot Paho never completed */
#define ACK_PENDING_MAX 10000           /* acks waiting for a slot or a connection */
#define ACK_PENDING_MAX_AGE_MS 120000   /* the agent will have redelivered by then */
#define STATS_EVERY_MS 10000
#define RECONNECT_EVERY_MS 200
#define PEER_WARN_PER_PERIOD 50 /* warnings caused by what devices send, per stats period */
#define BATCH_ID_MAX 128
#define SCHEMA_VERSION 4 /* 2: resync_requests, 3: redemptions, 4: set_aside, duplicate_orders, late */
#define ACK_MAX_ENTRIES 10000 /* protocol.md: per ack, in acked and in rejected */
#define MAX_REJECT_KINDS 8

/* customer cache publishing (run --cache-dir) */
#define CHUNK_RECORDS_DEFAULT 1000
#define CHUNK_RECORDS_MAX 100000
#define CHUNK_MAX_BYTES (1u << 20)       /* a whole chunk message, header included */
#define CHUNK_HEADER_RESERVE 512         /* envelope fields around "records" */
#define FORGOTTEN_MAX_BYTES (256u << 10) /* the rendered "forgotten" list */
#define SNAPSHOT_ID_MAX 64
#define RESYNC_REASON_MAX 32
#define SNAPSHOT_JOBS_MAX 10000          /* devices x streams being served at once */
#define SNAPSHOT_DELAY_MAX_MS 600000
#define CACHE_KEY_MAX 64
#define PUSH_MAX_BYTES (16u << 20)       /* agents refuse above 4 MiB; tests may want to try */
#define DELTA_AGENT_MAX_BYTES (4u << 20)

/* event bodies this central checks, and coupon verdicts */
#define BODY_ID_MAX 64                   /* campaign, coupon, member, order, guide ids */
#define RECO_ITEMS_MAX 50
#define RECO_BASKET_MAX 1000
#define RECO_STAGE_MAX 32
#define VERDICT_PENDING_MAX 10000        /* verdicts waiting for their ack, a delay or a slot */
#define VERDICT_DELAY_MAX_MS 600000
#define VERDICT_DETAIL_MAX 384

/* ======================================================================
 * logging: logfmt lines on stderr
 * ====================================================================== */

enum { LVL_DEBUG, LVL_INFO, LVL_WARN, LVL_ERROR };
static const char *const level_names[] = { "debug", "info", "warn", "error" };
static int g_log_min = LVL_INFO;

static void log_at(int lvl, const char *msg, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void log_at(int lvl, const char *msg, const char *fmt, ...)
{
	char kv[1536] = "";
	char ts[96]; /* sized for any int the compiler imagines */
	struct timespec now;
	struct tm tm;
	va_list ap;

	if (lvl < g_log_min)
		return;
	if (fmt) {
		va_start(ap, fmt);
		vsnprintf(kv, sizeof kv, fmt, ap);
		va_end(ap);
	}
	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		 (long)(now.tv_nsec / 1000000));
	/* One fprintf per line: stdio locks the stream, so lines from Paho's
	 * threads and the main thread never interleave. */
	fprintf(stderr, "ts=%s level=%s mod=central msg=\"%s\"%s%s\n", ts, level_names[lvl], msg,
		kv[0] ? " " : "", kv);
}

/* A logfmt-safe quoted copy of s in buf (for text from peers and libraries). */
static const char *lq(char *buf, size_t size, const char *s)
{
	size_t o = 0;

	if (size < 3)
		return "\"\"";
	buf[o++] = '"';
	for (; s && *s && o + 3 < size; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\') {
			buf[o++] = '\\';
			buf[o++] = (char)c;
		} else if (c < 0x20 || c == 0x7f) {
			buf[o++] = '?';
		} else {
			buf[o++] = (char)c;
		}
	}
	buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}

static int peer_warns_left(void);

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ======================================================================
 * growable string (ack payloads)
 * ====================================================================== */

struct sbuf {
	char *p;
	size_t len, cap;
	int oom;
};

static void sb_reserve(struct sbuf *b, size_t extra)
{
	size_t ncap;
	char *np;

	if (b->oom || b->len + extra + 1 <= b->cap)
		return;
	ncap = b->cap ? b->cap : 256;
	while (ncap < b->len + extra + 1)
		ncap *= 2;
	np = realloc(b->p, ncap);
	if (!np) {
		b->oom = 1;
		return;
	}
	b->p = np;
	b->cap = ncap;
}

static void sb_add(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_add(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0) {
		b->oom = 1;
		return;
	}
	sb_reserve(b, (size_t)n);
	if (b->oom)
		return;
	va_start(ap, fmt);
	vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

/* A JSON string literal; bytes >= 0x80 pass through (the input was UTF-8). */
static void sb_json_str(struct sbuf *b, const char *s)
{
	sb_add(b, "\"");
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			sb_add(b, "\\%c", c);
		else if (c < 0x20)
			sb_add(b, "\\u%04x", c);
		else
			sb_add(b, "%c", c);
	}
	sb_add(b, "\"");
}

/* ======================================================================
 * state
 * ====================================================================== */

/* Who sent a message: taken from its topic. */
struct ident {
	char tenant[IDENT_MAX + 1];
	char store[IDENT_MAX + 1];
	char device[IDENT_MAX + 1];
};

struct inbound {
	struct inbound *next;
	char *topic;
	char *payload;
	size_t len;
};

struct pending_ack {
	struct pending_ack *next;
	char *topic;
	char *payload;
	size_t len;
	int64_t queued_ms;
};

/* A coupon verdict waiting to be published: after the ack of the batch that
 * carried its redemption (acks_popped >= after_ack) and not before due_ms
 * (monotonic: --verdict-delay-ms). */
struct pending_verdict {
	struct pending_verdict *next;
	char *topic;
	char *payload;
	size_t len;
	uint64_t after_ack;
	int64_t due_ms;
};

/* What a coupon record of DIR/coupons.jsonl says (the parsed "signed" text). */
struct coupon_def {
	char *id, *campaign; /* campaign NULL if the record has none */
	int64_t uses;        /* absent: 1 */
	int64_t valid_from, valid_to; /* Unix ms, 0: open (valid_to exclusive) */
	int64_t line;        /* a later line for the same id wins */
};

struct campaign_def {
	char *id;
	int64_t per_member_limit, total_limit; /* 0: unlimited */
	int64_t valid_from, valid_to;          /* as a coupon's */
	int64_t line;
};

/* The coupon definitions verdicts are decided with, sorted by id; reloaded
 * when the file changes (same identity test as the snapshot index). */
struct coupon_catalogue {
	int loaded, missing;
	dev_t dev;
	ino_t ino;
	off_t size;
	int64_t mtime_ns;
	struct coupon_def *coupons;
	size_t n_coupons;
	struct campaign_def *campaigns;
	size_t n_campaigns;
};

/* One QoS 1 publish in flight: an ack or a snapshot chunk. */
struct ack_slot {
	int in_use;
	int is_chunk;
	uint32_t gen; /* bumped on every use: a late callback for a reclaimed use is ignored */
	int64_t sent_ms;
};

struct run_opts {
	const char *broker, *ca, *cert, *key, *db, *share, *client_id, *ready_file;
	const char *reject_kinds[MAX_REJECT_KINDS];
	int n_reject_kinds;
	int ack_window;
	const char *cache_dir; /* NULL: no cache publishing */
	int chunk_records;
	int64_t snapshot_delay_ms;
	int64_t drop_chunk; /* -1: none */
	int64_t verdict_delay_ms;
	int strict; /* --strict: a protocol violation by a device stops central (tests) */
};

struct stmts {
	sqlite3_stmt *begin, *commit, *rollback;
	sqlite3_stmt *ins_event, *sel_id, *ins_conflict, *ins_rejected, *upsert_device, *add_stat;
	sqlite3_stmt *sel_contig, *ins_gap, *ins_resync;
	sqlite3_stmt *ins_redemption, *sel_redemption, *cnt_coupon, *last_coupon, *cnt_member,
		*cnt_campaign;
	sqlite3_stmt *ins_aside, *sel_order, *move_dup_order, *del_event, *ins_late, *sel_verdict_by_id;
};

struct counters {
	uint64_t batches, batches_dropped, events_new, duplicates, conflicts, rejected, unackable;
	uint64_t set_aside, duplicate_orders, late, violations, verdict_queries;
	uint64_t acks_sent, acks_confirmed, acks_failed, acks_dropped;
	uint64_t resync_requests, resync_dropped, chunks_sent, chunks_dropped, snapshots_sent;
	uint64_t verdicts_accepted, verdicts_rejected, verdicts_redelivered, verdicts_sent,
		verdicts_failed, verdicts_dropped;
};

/* The streams of protocol.md "Customer cache", in resync priority order. */
static const char *const cache_streams[] = { "members", "coupons", "catalogue", "inventory",
					     "scripts",  "recos",   "rules" };
#define N_STREAMS ((int)(sizeof cache_streams / sizeof cache_streams[0]))

/* Where the chunks of one version of DIR/<stream>.jsonl start: built by one
 * pass over the file, shared (refcounted) by the jobs serving it, replaced
 * when the file changes. */
struct snap_index {
	int refs;
	int stream;                       /* index into cache_streams */
	char id[SNAPSHOT_ID_MAX + 1];     /* deterministic: see index_build */
	int64_t version;
	int missing;                      /* no file: one empty chunk */
	dev_t dev;
	ino_t ino;
	off_t size;
	int64_t mtime_ns;
	int64_t fg_size, fg_mtime_ns;     /* forgotten.txt (members), -1 if absent */
	int64_t records, nchunks;
	off_t *offsets;                   /* nchunks + 1: chunk k is [offsets[k], offsets[k+1]) */
	char *forgotten;                  /* "\"id\",\"id\"" or NULL */
	size_t forgotten_len;
};

/* One snapshot being sent to one device. */
struct snap_job {
	struct snap_job *next;
	struct ident who;
	struct snap_index *ix; /* one reference held */
	char topic[3 * IDENT_MAX + 64];
	int64_t next_chunk, first_chunk;
	int64_t due_ms; /* monotonic: --snapshot-delay-ms */
};

/* --drop-chunk: snapshots (per device and stream) whose chunk was dropped once. */
struct drop_mark {
	struct drop_mark *next;
	struct ident who;
	int stream;
	char id[SNAPSHOT_ID_MAX + 1];
};

static struct central {
	struct run_opts opt;
	MQTTAsync client;
	int wake_fd;

	/* shared with Paho threads, under lock */
	pthread_mutex_t lock;
	struct inbound *in_head, *in_tail;
	size_t in_bytes;
	int backlog_warned;
	int connected;
	int connecting;     /* a connect attempt is in flight */
	int need_subscribe;
	int subscribed;     /* SUBACK granted on the current connection */
	int connect_failed; /* an initial connect attempt failed */
	char connect_why[256];
	char tls_err[512];
	int recv_max;       /* Receive Maximum from the CONNACK, 0 = not seen */
	struct ack_slot slots[ACK_SLOTS];
	uint64_t acks_confirmed, acks_failed;
	uint64_t chunks_confirmed, chunks_failed;
	uint64_t verdicts_confirmed, verdicts_failed;

	/* main thread only */
	sqlite3 *db;
	struct stmts st;
	int64_t next_arrival;
	struct pending_ack *ack_head, *ack_tail;
	size_t n_pending;
	uint64_t acks_queued, acks_popped; /* ever: verdicts wait for their batch's ack */
	struct pending_verdict *verdict_head, *verdict_tail;
	size_t n_verdicts;
	struct coupon_catalogue cat;
	int unchecked_logged; /* "redemptions accepted unchecked" said once */
	struct counters c;
	int ready_written;
	int peer_warns; /* warnings about device input in the current stats period */
	struct snap_index *index[N_STREAMS]; /* the current index of each stream, or NULL */
	struct snap_job *jobs_head, *jobs_tail;
	size_t n_jobs;
	struct drop_mark *drops;
} g;

static volatile sig_atomic_t g_stop;

static void wake_main(void)
{
	uint64_t one = 1;

	/* async-signal-safe; EAGAIN only if the counter would overflow */
	(void)!write(g.wake_fd, &one, sizeof one);
}

static void on_signal(int sig)
{
	(void)sig;
	g_stop = 1;
	wake_main();
}

/* ======================================================================
 * SQLite
 * ====================================================================== */

static const char schema_sql[] =
	"CREATE TABLE IF NOT EXISTS events("
	" tenant TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL,"
	" id TEXT NOT NULL, kind TEXT NOT NULL, wall_ms INTEGER NOT NULL, mono_ms INTEGER,"
	" boot TEXT, clock_ok INTEGER, body TEXT NOT NULL,"
	" arrival INTEGER NOT NULL,"  /* global first-arrival counter */
	" received_ms INTEGER NOT NULL,"
	" PRIMARY KEY(tenant, store, device, seq));"
	/* Same (device, seq), different id: the device's outbox was reset.
	 * Kept aside, never overwriting the first copy. */
	"CREATE TABLE IF NOT EXISTS conflicts("
	" tenant TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL,"
	" id TEXT NOT NULL, existing_id TEXT NOT NULL, kind TEXT NOT NULL, wall_ms INTEGER NOT NULL,"
	" mono_ms INTEGER, boot TEXT, clock_ok INTEGER, body TEXT NOT NULL,"
	" received_ms INTEGER NOT NULL,"
	" PRIMARY KEY(tenant, store, device, seq, id));"
	"CREATE TABLE IF NOT EXISTS rejected("
	" tenant TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL,"
	" reason TEXT NOT NULL, event TEXT, copies INTEGER NOT NULL,"
	" first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL,"
	" PRIMARY KEY(tenant, store, device, seq));"
	/* Per-device counters that the rows themselves cannot tell. */
	"CREATE TABLE IF NOT EXISTS devices("
	" tenant TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL,"
	" batches INTEGER NOT NULL, stored INTEGER NOT NULL, duplicates INTEGER NOT NULL,"
	" conflicts INTEGER NOT NULL, rejected INTEGER NOT NULL, unackable INTEGER NOT NULL,"
	" first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL,"
	/* every seq <= contiguous is settled (stored, rejected or jumped) */
	" contiguous INTEGER NOT NULL DEFAULT 0,"
	" PRIMARY KEY(tenant, store, device));"
	/* Seqs a device says were acknowledged (its batch "base") that this
	 * database does not hold: a restored or replaced central database. */
	"CREATE TABLE IF NOT EXISTS gaps("
	" tenant TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL,"
	" from_seq INTEGER NOT NULL, to_seq INTEGER NOT NULL, noticed_ms INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS stats(key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
	/* v2: every valid resync request (up/cache/resync), as received;
	 * reason, snapshot and from_chunk are NULL when the request had none. */
	"CREATE TABLE IF NOT EXISTS resync_requests("
	" tenant TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL,"
	" stream TEXT NOT NULL, cursor INTEGER NOT NULL, reason TEXT, snapshot TEXT,"
	" from_chunk INTEGER, received_ms INTEGER NOT NULL);"
	/* v3: the verdict on every coupon_redeem event, decided once, in the
	 * transaction that stored the event. rowid order is decision order. */
	"CREATE TABLE IF NOT EXISTS redemptions("
	" tenant TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL,"
	" id TEXT NOT NULL, campaign TEXT NOT NULL, coupon TEXT, member_id TEXT,"
	" order_id TEXT NOT NULL, value INTEGER NOT NULL, verdict TEXT NOT NULL, reason TEXT,"
	" detail TEXT, decided_ms INTEGER NOT NULL,"
	" PRIMARY KEY(tenant, store, device, seq));"
	"CREATE INDEX IF NOT EXISTS redemptions_coupon ON redemptions(tenant, coupon, verdict);"
	"CREATE INDEX IF NOT EXISTS redemptions_campaign"
	" ON redemptions(tenant, campaign, verdict, member_id);"
	/* v4: set-aside markers (protocol.md "Set-aside events"): the seq is
	 * settled, the event's data is on the device. */
	"CREATE TABLE IF NOT EXISTS set_aside("
	" tenant TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL,"
	" id TEXT, kind TEXT, reason TEXT NOT NULL, detail TEXT, bytes INTEGER, received_ms INTEGER NOT NULL,"
	" PRIMARY KEY(tenant, store, device, seq));"
	/* v4: a second sale under an order_id (return_id) this device already
	 * sent with another seq: kept aside, not counted as a sale. */
	"CREATE TABLE IF NOT EXISTS duplicate_orders("
	" tenant TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL,"
	" id TEXT NOT NULL, kind TEXT NOT NULL, order_key TEXT NOT NULL, held_seq INTEGER NOT NULL,"
	" body TEXT NOT NULL, received_ms INTEGER NOT NULL, PRIMARY KEY(tenant, store, device, seq));"
	"CREATE INDEX IF NOT EXISTS events_order ON events(tenant, store, device, kind,"
	" (CASE kind WHEN 'purchase' THEN json_extract(body, '$.order_id')"
	" WHEN 'return' THEN json_extract(body, '$.return_id') END));"
	/* v4: events stored with seq <= contiguous (settled on the device's
	 * word): recovered ones are expected, others are the device's fault. */
	"CREATE TABLE IF NOT EXISTS late("
	" tenant TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL,"
	" recovered INTEGER NOT NULL, received_ms INTEGER NOT NULL);"
	"CREATE INDEX IF NOT EXISTS redemptions_id ON redemptions(tenant, store, device, id);";

static int db_exec(const char *sql)
{
	char *err = NULL;
	char q[300];
	int rc = sqlite3_exec(g.db, sql, NULL, NULL, &err);

	if (rc != SQLITE_OK) {
		log_at(LVL_ERROR, "sqlite exec failed", "err=%s", lq(q, sizeof q, err ? err : "?"));
		sqlite3_free(err);
	}
	return rc;
}

static int db_prepare(sqlite3_stmt **s, const char *sql)
{
	char q[300];
	int rc = sqlite3_prepare_v3(g.db, sql, -1, SQLITE_PREPARE_PERSISTENT, s, NULL);

	if (rc != SQLITE_OK)
		log_at(LVL_ERROR, "sqlite prepare failed", "err=%s",
		       lq(q, sizeof q, sqlite3_errmsg(g.db)));
	return rc;
}

static void db_close(void)
{
	sqlite3_stmt **all[] = { &g.st.begin,        &g.st.commit,        &g.st.rollback,
				 &g.st.ins_event,    &g.st.sel_id,        &g.st.ins_conflict,
				 &g.st.ins_rejected, &g.st.upsert_device, &g.st.add_stat,
				 &g.st.sel_contig,   &g.st.ins_gap,       &g.st.ins_resync,
				 &g.st.ins_redemption, &g.st.sel_redemption, &g.st.cnt_coupon,
				 &g.st.last_coupon,  &g.st.cnt_member,    &g.st.cnt_campaign,
				 &g.st.ins_aside,    &g.st.sel_order,     &g.st.move_dup_order,
				 &g.st.del_event,    &g.st.ins_late,      &g.st.sel_verdict_by_id };
	size_t i;

	for (i = 0; i < sizeof all / sizeof all[0]; i++) {
		sqlite3_finalize(*all[i]);
		*all[i] = NULL;
	}
	if (g.db)
		sqlite3_close(g.db);
	g.db = NULL;
}

static int db_open(const char *path)
{
	sqlite3_stmt *s = NULL;
	char q[300];
	int rc, version = 0;

	rc = sqlite3_open_v2(path, &g.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
	if (rc != SQLITE_OK) {
		log_at(LVL_ERROR, "cannot open database", "db=%s err=%s", path,
		       lq(q, sizeof q, g.db ? sqlite3_errmsg(g.db) : sqlite3_errstr(rc)));
		goto cleanup;
	}
	sqlite3_busy_timeout(g.db, 5000);
	/* WAL+NORMAL: a committed batch survives a crash of this process (what
	 * the tests inflict), not a power cut. A production central acking
	 * events it could lose would need FULL; this one must keep up with
	 * tens of thousands of events per second on a test machine. */
	rc = db_exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;");
	if (rc != SQLITE_OK)
		goto cleanup;
	rc = sqlite3_prepare_v2(g.db, "PRAGMA user_version", -1, &s, NULL);
	if (rc == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
		version = sqlite3_column_int(s, 0);
	sqlite3_finalize(s);
	if (version > SCHEMA_VERSION) {
		log_at(LVL_ERROR, "database is from a newer scrm-central", "db=%s user_version=%d",
		       path, version);
		rc = SQLITE_MISMATCH;
		goto cleanup;
	}
	if (version < SCHEMA_VERSION) {
		/* Every statement of the schema is CREATE ... IF NOT EXISTS, so
		 * running it whole is each migration step at once (1 -> 2 adds
		 * resync_requests, 2 -> 3 redemptions). */
		char sql[sizeof schema_sql + 64];

		snprintf(sql, sizeof sql, "BEGIN IMMEDIATE;%sPRAGMA user_version=%d;COMMIT;",
			 schema_sql, SCHEMA_VERSION);
		rc = db_exec(sql);
		if (rc != SQLITE_OK)
			goto cleanup;
	}

	if ((rc = db_prepare(&g.st.begin, "BEGIN IMMEDIATE")) ||
	    (rc = db_prepare(&g.st.commit, "COMMIT")) ||
	    (rc = db_prepare(&g.st.rollback, "ROLLBACK")) ||
	    (rc = db_prepare(&g.st.ins_event,
			     "INSERT INTO events(tenant,store,device,seq,id,kind,wall_ms,mono_ms,boot,"
			     "clock_ok,body,arrival,received_ms) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?) "
			     "ON CONFLICT DO NOTHING")) ||
	    (rc = db_prepare(&g.st.sel_id,
			     "SELECT id FROM events WHERE tenant=? AND store=? AND device=? AND seq=?")) ||
	    (rc = db_prepare(&g.st.ins_conflict,
			     "INSERT INTO conflicts(tenant,store,device,seq,id,existing_id,kind,wall_ms,"
			     "mono_ms,boot,clock_ok,body,received_ms) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?) "
			     "ON CONFLICT DO NOTHING")) ||
	    (rc = db_prepare(&g.st.ins_rejected,
			     "INSERT INTO rejected(tenant,store,device,seq,reason,event,copies,first_ms,"
			     "last_ms) VALUES(?,?,?,?,?,?,1,?,?) ON CONFLICT DO UPDATE SET "
			     "copies=copies+1, reason=excluded.reason, last_ms=excluded.last_ms")) ||
	    (rc = db_prepare(&g.st.upsert_device,
			     "INSERT INTO devices(tenant,store,device,batches,stored,duplicates,"
			     "conflicts,rejected,unackable,first_ms,last_ms,contiguous) "
			     "VALUES(?,?,?,1,?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET "
			     "contiguous=max(contiguous, excluded.contiguous), "
			     "batches=batches+1, stored=stored+excluded.stored,"
			     " duplicates=duplicates+excluded.duplicates,"
			     " conflicts=conflicts+excluded.conflicts,"
			     " rejected=rejected+excluded.rejected,"
			     " unackable=unackable+excluded.unackable, last_ms=excluded.last_ms")) ||
	    (rc = db_prepare(&g.st.sel_contig,
			     "SELECT contiguous FROM devices WHERE tenant=? AND store=? AND device=?")) ||
	    (rc = db_prepare(&g.st.ins_gap,
			     "INSERT INTO gaps(tenant,store,device,from_seq,to_seq,noticed_ms) VALUES(?,?,?,?,?,?)")) ||
	    (rc = db_prepare(&g.st.ins_resync,
			     "INSERT INTO resync_requests(tenant,store,device,stream,cursor,reason,"
			     "snapshot,from_chunk,received_ms) VALUES(?,?,?,?,?,?,?,?,?)")) ||
	    (rc = db_prepare(&g.st.ins_redemption,
			     "INSERT INTO redemptions(tenant,store,device,seq,id,campaign,coupon,"
			     "member_id,order_id,value,verdict,reason,detail,decided_ms) "
			     "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)")) ||
	    (rc = db_prepare(&g.st.sel_redemption,
			     "SELECT id,campaign,coupon,verdict,reason,detail,decided_ms FROM redemptions "
			     "WHERE tenant=? AND store=? AND device=? AND seq=?")) ||
	    (rc = db_prepare(&g.st.cnt_coupon,
			     "SELECT count(*) FROM redemptions WHERE tenant=? AND coupon=? "
			     "AND verdict='accepted'")) ||
	    (rc = db_prepare(&g.st.last_coupon,
			     "SELECT r.store,r.device,r.order_id,e.wall_ms FROM redemptions r "
			     "LEFT JOIN events e USING(tenant,store,device,seq) "
			     "WHERE r.tenant=? AND r.coupon=? AND r.verdict='accepted' "
			     "ORDER BY r.rowid DESC LIMIT 1")) ||
	    (rc = db_prepare(&g.st.cnt_member,
			     "SELECT count(*) FROM redemptions WHERE tenant=? AND campaign=? "
			     "AND verdict='accepted' AND member_id=?")) ||
	    (rc = db_prepare(&g.st.cnt_campaign,
			     "SELECT count(*) FROM redemptions WHERE tenant=? AND campaign=? "
			     "AND verdict='accepted'")) ||
	    (rc = db_prepare(&g.st.ins_aside,
			     "INSERT INTO set_aside(tenant,store,device,seq,id,kind,reason,detail,bytes,received_ms)"
			     " VALUES(?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING")) ||
	    (rc = db_prepare(&g.st.sel_order,
			     "SELECT seq FROM events WHERE tenant=?1 AND store=?2 AND device=?3 AND kind=?4 AND"
			     " (CASE kind WHEN 'purchase' THEN json_extract(body, '$.order_id')"
			     " WHEN 'return' THEN json_extract(body, '$.return_id') END) = ?5 AND seq != ?6 LIMIT 1")) ||
	    (rc = db_prepare(&g.st.move_dup_order,
			     "INSERT OR IGNORE INTO duplicate_orders(tenant,store,device,seq,id,kind,order_key,held_seq,body,"
			     "received_ms) SELECT tenant,store,device,seq,id,kind,?5,?6,body,?7 FROM events"
			     " WHERE tenant=?1 AND store=?2 AND device=?3 AND seq=?4")) ||
	    (rc = db_prepare(&g.st.del_event,
			     "DELETE FROM events WHERE tenant=?1 AND store=?2 AND device=?3 AND seq=?4")) ||
	    (rc = db_prepare(&g.st.ins_late,
			     "INSERT INTO late(tenant,store,device,seq,recovered,received_ms) VALUES(?,?,?,?,?,?)")) ||
	    (rc = db_prepare(&g.st.sel_verdict_by_id,
			     "SELECT seq,campaign,coupon,verdict,reason,detail,decided_ms FROM redemptions"
			     " WHERE tenant=? AND store=? AND device=? AND id=?")) ||
	    (rc = db_prepare(&g.st.add_stat,
			     "INSERT INTO stats(key,value) VALUES(?,?) ON CONFLICT DO UPDATE SET "
			     "value=value+excluded.value")))
		goto cleanup;

	rc = sqlite3_prepare_v2(g.db, "SELECT coalesce(max(arrival),0)+1 FROM events", -1, &s, NULL);
	if (rc == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
		g.next_arrival = sqlite3_column_int64(s, 0);
	else
		rc = SQLITE_ERROR;
	sqlite3_finalize(s);

cleanup:
	if (rc != SQLITE_OK)
		db_close();
	return rc;
}

/* Step a write statement to completion and reset it. */
static int db_step(sqlite3_stmt *s)
{
	char q[300];
	int rc = sqlite3_step(s);

	sqlite3_reset(s);
	if (rc == SQLITE_DONE || rc == SQLITE_ROW)
		return SQLITE_OK;
	log_at(LVL_ERROR, "sqlite step failed", "err=%s", lq(q, sizeof q, sqlite3_errmsg(g.db)));
	return rc;
}

static void db_add_stat(const char *key, int64_t n)
{
	sqlite3_bind_text(g.st.add_stat, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_int64(g.st.add_stat, 2, n);
	db_step(g.st.add_stat);
	sqlite3_clear_bindings(g.st.add_stat);
}

/* ======================================================================
 * batch handling (main thread)
 * ====================================================================== */

/* Copy one identity segment [A-Za-z0-9_.-]{1,64} ending at '/'; returns the
 * position after the '/' or NULL. */
static const char *take_ident(const char *p, char *out)
{
	size_t n = 0;

	for (; *p && *p != '/'; p++) {
		char c = *p;
		int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			 c == '_' || c == '.' || c == '-';

		if (!ok || n >= IDENT_MAX)
			return NULL;
		out[n++] = c;
	}
	if (n == 0 || *p != '/')
		return NULL;
	out[n] = '\0';
	return p + 1;
}

/* The broker confines each device to its own topics, so identity comes from
 * the topic, never from the payload. 0 if topic is
 * scrm/v1/{tenant}/{store}/{device}/<suffix> with three valid ids; otherwise
 * -1 and why in why[n]. An id that is a word of the topic tree is refused
 * too: a device "down" would publish and receive under its store's
 * scrm/v1/{tenant}/{store}/down/#, which every device of the store reads. */
static int parse_topic(const char *topic, struct ident *id, const char *suffix, char *why, size_t n)
{
	static const char prefix[] = "scrm/v1/";
	const char *p, *bad = NULL, *level = NULL;

	if (strncmp(topic, prefix, sizeof prefix - 1) != 0)
		goto shape;
	p = topic + sizeof prefix - 1;
	if (!(p = take_ident(p, id->tenant)) || !(p = take_ident(p, id->store)) ||
	    !(p = take_ident(p, id->device)) || strcmp(p, suffix) != 0)
		goto shape;
	if ((bad = ident__problem(id->tenant)))
		level = "tenant";
	else if ((bad = ident__problem(id->store)))
		level = "store";
	else if ((bad = ident__problem(id->device)))
		level = "device";
	if (!bad)
		return 0;
	snprintf(why, n, "%s: %s", level, bad);
	return -1;
shape:
	snprintf(why, n, "topic is not scrm/v1/{tenant}/{store}/{device}/%s", suffix);
	return -1;
}

static int topic_ends_with(const char *topic, const char *suffix)
{
	size_t t = strlen(topic), n = strlen(suffix);

	return t >= n && strcmp(topic + t - n, suffix) == 0;
}

/* JSON numbers are doubles: accept integral values that a double holds
 * exactly. */
static int json_int64(const cJSON *it, int64_t *out)
{
	double d;

	if (!cJSON_IsNumber(it))
		return -1;
	d = it->valuedouble;
	if (!(d >= -MAX_SAFE_INT && d <= MAX_SAFE_INT) || d != (double)(int64_t)d)
		return -1;
	*out = (int64_t)d;
	return 0;
}

/* An optional string field of 1..max bytes: 0 absent (or null), 1 present, -1 bad. */
static int opt_string(const cJSON *root, const char *name, size_t max, const char **out)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, name);
	size_t n;

	*out = NULL;
	if (!it || cJSON_IsNull(it))
		return 0;
	if (!cJSON_IsString(it))
		return -1;
	n = strlen(it->valuestring);
	if (n == 0 || n > max)
		return -1;
	*out = it->valuestring;
	return 1;
}

/* A body string field of 1..max bytes: 0, or -1 with "body.<name>: ..." in
 * reason (absent is an error only if required). */
static int body_string(const cJSON *body, const char *name, size_t max, int required,
		       const char **out, char *reason, size_t rlen)
{
	int r = opt_string(body, name, max, out);

	if (r < 0 || (r == 0 && required)) {
		snprintf(reason, rlen, "body.%s: %s a string of 1..%zu bytes", name,
			 r < 0 ? "not" : "missing;", max);
		return -1;
	}
	return 0;
}

/* A body array of min..max strings of 1..item_max bytes: 0, or -1 with the
 * reason naming the field (or the element). */
static int body_strings(const cJSON *body, const char *name, int min, int max, size_t item_max,
			int required, char *reason, size_t rlen)
{
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(body, name), *it;
	int n, i = 0;

	if (!arr || cJSON_IsNull(arr)) {
		if (!required)
			return 0;
		snprintf(reason, rlen, "body.%s: missing; an array of %d..%d strings", name, min,
			 max);
		return -1;
	}
	n = cJSON_IsArray(arr) ? cJSON_GetArraySize(arr) : -1;
	if (n < min || n > max) {
		snprintf(reason, rlen, "body.%s: not an array of %d..%d strings", name, min, max);
		return -1;
	}
	cJSON_ArrayForEach(it, arr)
	{
		size_t len = cJSON_IsString(it) ? strlen(it->valuestring) : 0;

		if (len == 0 || len > item_max) {
			snprintf(reason, rlen, "body.%s[%d]: not a string of 1..%zu bytes", name, i,
				 item_max);
			return -1;
		}
		i++;
	}
	return 0;
}

/* The bodies this central checks: reco_shown (a recommendation list shown
 * to a guide; its id is the event id) and coupon_redeem (a coupon spent at
 * the till, possibly offline; decided by verdict_decide). Other kinds,
 * purchase with its optional reco_id and attributed included, are stored as
 * they are. 0, or -1 with "body.<field>: <problem>" in reason. */
static int body_validate(const char *kind, const cJSON *body, char *reason, size_t rlen)
{
	const char *s;

	if (strcmp(kind, "reco_shown") == 0) {
		if (body_string(body, "guide_id", BODY_ID_MAX, 1, &s, reason, rlen) ||
		    body_string(body, "member_id", BODY_ID_MAX, 0, &s, reason, rlen) ||
		    body_strings(body, "items", 1, RECO_ITEMS_MAX, BODY_ID_MAX, 1, reason, rlen) ||
		    body_strings(body, "basket", 0, RECO_BASKET_MAX, BODY_ID_MAX, 0, reason, rlen) ||
		    body_string(body, "stage", RECO_STAGE_MAX, 0, &s, reason, rlen))
			return -1;
	} else if (strcmp(kind, "coupon_redeem") == 0) {
		int64_t value;

		if (body_string(body, "campaign", BODY_ID_MAX, 1, &s, reason, rlen) ||
		    body_string(body, "coupon", BODY_ID_MAX, 0, &s, reason, rlen) ||
		    body_string(body, "member_id", BODY_ID_MAX, 0, &s, reason, rlen) ||
		    body_string(body, "order_id", BODY_ID_MAX, 1, &s, reason, rlen) ||
		    body_string(body, "guide_id", BODY_ID_MAX, 0, &s, reason, rlen))
			return -1;
		if (json_int64(cJSON_GetObjectItemCaseSensitive(body, "value"), &value) != 0 ||
		    value < 0) {
			snprintf(reason, rlen,
				 "body.value: missing or not an integer >= 0 (minor units)");
			return -1;
		}
		if (body_string(body, "currency", BODY_ID_MAX, 1, &s, reason, rlen))
			return -1;
		if (strlen(s) != 3 || s[0] < 'A' || s[0] > 'Z' || s[1] < 'A' || s[1] > 'Z' ||
		    s[2] < 'A' || s[2] > 'Z') {
			snprintf(reason, rlen, "body.currency: not three upper-case letters");
			return -1;
		}
		if (body_string(body, "mode", BODY_ID_MAX, 1, &s, reason, rlen))
			return -1;
		if (strcmp(s, "offline") != 0 && strcmp(s, "online") != 0) {
			snprintf(reason, rlen, "body.mode: not \"offline\" or \"online\"");
			return -1;
		}
	}
	return 0;
}

struct event_view {
	int64_t seq, wall_ms, mono_ms;
	int has_mono, clock_ok; /* clock_ok: -1 absent, 0, 1 */
	const char *id, *kind, *boot;
	const cJSON *body;
};

/* Envelope checks, then body_validate; on failure writes "<field>: <problem>"
 * into reason. */
static int event_validate(const cJSON *ev, struct event_view *v, char *reason, size_t rlen)
{
	const cJSON *it;
	size_t n;
	int i;

	it = cJSON_GetObjectItemCaseSensitive(ev, "id");
	if (!cJSON_IsString(it)) {
		snprintf(reason, rlen, "id: missing or not a string");
		return -1;
	}
	n = strlen(it->valuestring);
	if (n == 0 || n > EVENT_ID_MAX) {
		snprintf(reason, rlen, "id: must be 1..%d bytes", EVENT_ID_MAX);
		return -1;
	}
	v->id = it->valuestring;

	it = cJSON_GetObjectItemCaseSensitive(ev, "kind");
	if (!cJSON_IsString(it)) {
		snprintf(reason, rlen, "kind: missing or not a string");
		return -1;
	}
	n = strlen(it->valuestring);
	if (n == 0 || n > KIND_MAX) {
		snprintf(reason, rlen, "kind: must be 1..%d bytes", KIND_MAX);
		return -1;
	}
	v->kind = it->valuestring;

	if (json_int64(cJSON_GetObjectItemCaseSensitive(ev, "wall_ms"), &v->wall_ms) != 0) {
		snprintf(reason, rlen, "wall_ms: missing or not an integer");
		return -1;
	}

	/* mono_ms, boot, clock_ok: the agent always sends them, but they only
	 * refine the time, so absent is tolerated; a wrong type is not. */
	it = cJSON_GetObjectItemCaseSensitive(ev, "mono_ms");
	v->has_mono = 0;
	if (it && !cJSON_IsNull(it)) {
		if (json_int64(it, &v->mono_ms) != 0) {
			snprintf(reason, rlen, "mono_ms: not an integer");
			return -1;
		}
		v->has_mono = 1;
	}
	it = cJSON_GetObjectItemCaseSensitive(ev, "boot");
	v->boot = NULL;
	if (it && !cJSON_IsNull(it)) {
		if (!cJSON_IsString(it) || strlen(it->valuestring) > EVENT_ID_MAX) {
			snprintf(reason, rlen, "boot: not a string of at most %d bytes", EVENT_ID_MAX);
			return -1;
		}
		v->boot = it->valuestring;
	}
	it = cJSON_GetObjectItemCaseSensitive(ev, "clock_ok");
	v->clock_ok = -1;
	if (it && !cJSON_IsNull(it)) {
		if (!cJSON_IsBool(it)) {
			snprintf(reason, rlen, "clock_ok: not a boolean");
			return -1;
		}
		v->clock_ok = cJSON_IsTrue(it) ? 1 : 0;
	}

	it = cJSON_GetObjectItemCaseSensitive(ev, "body");
	if (!cJSON_IsObject(it)) {
		snprintf(reason, rlen, "body: missing or not an object");
		return -1;
	}
	v->body = it;

	/* Unknown kinds are stored as opaque bodies (protocol: Versioning);
	 * --reject-kind exists so tests can drive the agent's rejected path. */
	for (i = 0; i < g.opt.n_reject_kinds; i++) {
		if (strcmp(v->kind, g.opt.reject_kinds[i]) == 0) {
			snprintf(reason, rlen, "kind: %s is rejected by this central (--reject-kind)",
				 v->kind);
			return -1;
		}
	}
	return body_validate(v->kind, v->body, reason, rlen);
}

static void bind_ident(sqlite3_stmt *s, const struct ident *id, int64_t seq)
{
	sqlite3_bind_text(s, 1, id->tenant, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 2, id->store, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 3, id->device, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 4, seq);
}

static void bind_opt_fields(sqlite3_stmt *s, int col, const struct event_view *v)
{
	if (v->has_mono)
		sqlite3_bind_int64(s, col, v->mono_ms);
	else
		sqlite3_bind_null(s, col);
	if (v->boot)
		sqlite3_bind_text(s, col + 1, v->boot, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(s, col + 1);
	if (v->clock_ok >= 0)
		sqlite3_bind_int(s, col + 2, v->clock_ok);
	else
		sqlite3_bind_null(s, col + 2);
}

enum store_result { STORED_NEW, STORED_DUP, STORED_CONFLICT, STORE_ERROR };

static enum store_result event_store(const struct ident *id, const struct event_view *v,
				     int64_t arrival, int64_t now)
{
	sqlite3_stmt *s = g.st.ins_event;
	enum store_result res = STORE_ERROR;
	char *body = cJSON_PrintUnformatted(v->body);
	char *existing = NULL;
	int rc;

	if (!body)
		return STORE_ERROR;
	bind_ident(s, id, v->seq);
	sqlite3_bind_text(s, 5, v->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 6, v->kind, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 7, v->wall_ms);
	bind_opt_fields(s, 8, v);
	sqlite3_bind_text(s, 11, body, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 12, arrival);
	sqlite3_bind_int64(s, 13, now);
	rc = db_step(s);
	if (rc != SQLITE_OK)
		goto cleanup;
	if (sqlite3_changes(g.db) == 1) {
		res = STORED_NEW;
		goto cleanup;
	}

	/* Already held: the same event again, or a different one (conflict). */
	s = g.st.sel_id;
	bind_ident(s, id, v->seq);
	if (sqlite3_step(s) == SQLITE_ROW) {
		const unsigned char *t = sqlite3_column_text(s, 0);

		existing = strdup(t ? (const char *)t : "");
	}
	sqlite3_reset(s);
	if (!existing)
		goto cleanup;
	if (strcmp(existing, v->id) == 0) {
		res = STORED_DUP;
		goto cleanup;
	}
	s = g.st.ins_conflict;
	bind_ident(s, id, v->seq);
	sqlite3_bind_text(s, 5, v->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 6, existing, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 7, v->kind, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 8, v->wall_ms);
	bind_opt_fields(s, 9, v);
	sqlite3_bind_text(s, 12, body, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 13, now);
	rc = db_step(s);
	if (rc != SQLITE_OK)
		goto cleanup;
	if (sqlite3_changes(g.db) == 1) {
		char q1[160], q2[160];

		/* The alert the protocol asks for: an outbox was reset. A reset
		 * outbox conflicts on every seq, hence the cap. */
		if (peer_warns_left())
			log_at(LVL_WARN, "conflict: same seq, different id; kept aside",
			       "tenant=%s store=%s device=%s seq=%" PRId64 " held_id=%s new_id=%s",
			       id->tenant, id->store, id->device, v->seq,
			       lq(q1, sizeof q1, existing), lq(q2, sizeof q2, v->id));
		res = STORED_CONFLICT;
	} else {
		res = STORED_DUP; /* a redelivered copy of a known conflict */
	}

cleanup:
	/* SQLITE_STATIC bindings point into memory freed below */
	sqlite3_clear_bindings(g.st.ins_event);
	sqlite3_clear_bindings(g.st.sel_id);
	sqlite3_clear_bindings(g.st.ins_conflict);
	free(existing);
	cJSON_free(body);
	return res;
}

static int reject_store(const struct ident *id, int64_t seq, const char *reason,
			const cJSON *ev, int64_t now)
{
	sqlite3_stmt *s = g.st.ins_rejected;
	char *text = cJSON_PrintUnformatted(ev);
	int rc;

	bind_ident(s, id, seq);
	sqlite3_bind_text(s, 5, reason, -1, SQLITE_STATIC);
	if (text)
		sqlite3_bind_text(s, 6, text, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(s, 6);
	sqlite3_bind_int64(s, 7, now);
	sqlite3_bind_int64(s, 8, now);
	rc = db_step(s);
	sqlite3_clear_bindings(s);
	cJSON_free(text);
	return rc;
}

struct rejection {
	int64_t seq;
	char reason[REASON_MAX];
};

static void ack_queue(char *topic, struct sbuf *payload);

/* The verdicts of one batch: decided (or found again) inside its
 * transaction, queued for publishing only once it is committed. */
struct verdict_batch {
	struct pending_verdict *head, **tail;
	uint64_t accepted, rejected, redelivered;
};

static int redemption_handle(const struct ident *id, const struct event_view *v,
			     enum store_result res, int64_t now, struct verdict_batch *vb);
static void verdicts_enqueue(struct verdict_batch *vb);
static void verdict_list_free(struct pending_verdict *pv);

static int cmp_range(const void *a, const void *b)
{
	const int64_t *x = a, *y = b;

	return (x[0] > y[0]) - (x[0] < y[0]);
}

/* Ack: {"v":1,"batch":...,"acked":[[first,last],...],"rejected":[...]
 * [,"resend_from":N]}. `ranges` (sorted and merged here) already coalesce
 * what the batch's `after` allows (batch_handle). protocol.md caps each list
 * at ACK_MAX_ENTRIES: longer ones go out as several acks. */
static void ack_build(const struct ident *id, const char *batch, int64_t (*ranges)[2], size_t na,
		      const struct rejection *rej, size_t nr, int64_t resend_from)
{
	char topic[3 * IDENT_MAX + 32];
	size_t i, j, m = 0, ra = 0, rr = 0;

	qsort(ranges, na, sizeof ranges[0], cmp_range);
	for (i = 0; i < na; i = j) {
		int64_t first = ranges[i][0], last = ranges[i][1];

		/* also swallows a seq listed twice */
		for (j = i + 1; j < na && ranges[j][0] <= last + 1; j++)
			if (ranges[j][1] > last)
				last = ranges[j][1];
		ranges[m][0] = first;
		ranges[m][1] = last;
		m++;
	}
	snprintf(topic, sizeof topic, "scrm/v1/%s/%s/%s/down/ack", id->tenant, id->store,
		 id->device);
	do {
		struct sbuf b = { 0 };
		size_t ea = m - ra > ACK_MAX_ENTRIES ? ACK_MAX_ENTRIES : m - ra;
		size_t er = nr - rr > ACK_MAX_ENTRIES ? ACK_MAX_ENTRIES : nr - rr;

		sb_add(&b, "{\"v\":1,\"batch\":");
		sb_json_str(&b, batch);
		sb_add(&b, ",\"acked\":[");
		for (i = 0; i < ea; i++)
			sb_add(&b, "%s[%" PRId64 ",%" PRId64 "]", i ? "," : "", ranges[ra + i][0],
			       ranges[ra + i][1]);
		sb_add(&b, "],\"rejected\":[");
		for (i = 0; i < er; i++) {
			sb_add(&b, "%s{\"seq\":%" PRId64 ",\"reason\":", i ? "," : "", rej[rr + i].seq);
			sb_json_str(&b, rej[rr + i].reason);
			sb_add(&b, "}");
		}
		sb_add(&b, "]");
		ra += ea;
		rr += er;
		/* resend_from goes with the last part: the agent acts on it once */
		if (resend_from > 0 && ra == m && rr == nr)
			sb_add(&b, ",\"resend_from\":%" PRId64, resend_from);
		sb_add(&b, "}");
		if (b.oom) {
			free(b.p);
			log_at(LVL_ERROR, "out of memory building ack", NULL);
			return;
		}
		ack_queue(strdup(topic), &b);
	} while (ra < m || rr < nr);
}

/* A misbehaving device must not flood the log: warnings about what devices
 * send are capped per stats period (the stats line still counts them all). */
static int peer_warns_left(void)
{
	if (g.peer_warns < PEER_WARN_PER_PERIOD) {
		g.peer_warns++;
		return 1;
	}
	if (g.peer_warns++ == PEER_WARN_PER_PERIOD)
		log_at(LVL_WARN, "more device input warnings suppressed until the next stats line",
		       NULL);
	return 0;
}

static int cmp_child_name(const void *a, const void *b)
{
	const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;

	return strcmp(x->string ? x->string : "", y->string ? y->string : "");
}

/* The first duplicate key in any object of the tree, or NULL. Objects are
 * sorted by name when large, so a hostile object is n log n, not n^2. */
static const char *json_duplicate_key(const cJSON *o)
{
	const cJSON *c;
	const char *dup = NULL;
	size_t n = 0, i;

	if (!o)
		return NULL;
	for (c = o->child; c; c = c->next) {
		n++;
		if ((dup = json_duplicate_key(c)))
			return dup;
	}
	if (!cJSON_IsObject(o) || n < 2)
		return NULL;
	if (n <= 16) {
		for (c = o->child; c; c = c->next)
			for (const cJSON *d = c->next; d; d = d->next)
				if (c->string && d->string && strcmp(c->string, d->string) == 0)
					return c->string;
		return NULL;
	}
	const cJSON **v = malloc(n * sizeof *v);
	if (!v)
		return NULL;
	for (i = 0, c = o->child; c; c = c->next)
		v[i++] = c;
	qsort(v, n, sizeof *v, cmp_child_name);
	for (i = 1; i < n && !dup; i++)
		if (v[i]->string && v[i - 1]->string && strcmp(v[i]->string, v[i - 1]->string) == 0)
			dup = v[i]->string;
	free(v);
	return dup;
}

/* Parse a device's payload as protocol.md requires: one JSON value, nothing
 * after it, no object repeating a key (two parsers that disagree on which
 * copy counts are a known attack). 0, or -1 with the reason in why. */
static int json_parse_strict(const char *payload, size_t len, cJSON **out, char *why, size_t wlen)
{
	const char *end = NULL;
	const char *dup;

	*out = cJSON_ParseWithLengthOpts(payload, len, &end, 0);
	if (!*out) {
		snprintf(why, wlen, "payload is not valid JSON");
		return -1;
	}
	while (end && end < payload + len && (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t'))
		end++;
	if (end != payload + len) {
		snprintf(why, wlen, "payload has characters after the JSON value");
		goto bad;
	}
	if ((dup = json_duplicate_key(*out))) {
		snprintf(why, wlen, "payload repeats the key \"%.60s\"", dup);
		goto bad;
	}
	return 0;
bad:
	cJSON_Delete(*out);
	*out = NULL;
	return -1;
}

static void batch_drop(const char *topic, const char *why)
{
	char q1[200], q2[200];

	g.c.batches_dropped++;
	if (peer_warns_left())
		log_at(LVL_WARN, "batch dropped", "topic=%s reason=%s", lq(q1, sizeof q1, topic),
		       lq(q2, sizeof q2, why));
	db_add_stat("batches_dropped", 1);
}

static void batch_handle(const char *topic, const char *payload, size_t len)
{
	struct ident id;
	cJSON *root = NULL;
	const cJSON *batch, *v, *events, *ev;
	int64_t (*acked)[2] = NULL;
	struct rejection *rej = NULL;
	size_t na = 0, nr = 0, n, idx = 0;
	uint64_t n_new = 0, n_dup = 0, n_conf = 0, n_unackable = 0, n_aside = 0, n_dup_orders = 0, n_late = 0;
	uint64_t n_violations = 0;
	int64_t now = wall_ms();
	int64_t contiguous = 0, base = 0, resend_from = 0, after = -1, prev;
	int in_tx = 0;
	char q1[200], q2[200];
	struct verdict_batch vb = { 0 };

	vb.tail = &vb.head;
	{
		char why[300];

		if (parse_topic(topic, &id, "up/events", why, sizeof why) != 0) {
			batch_drop(topic, why);
			return;
		}
	}
	{
		char why[300];

		if (json_parse_strict(payload, len, &root, why, sizeof why) != 0) {
			batch_drop(topic, why);
			goto cleanup;
		}
	}
	if (!cJSON_IsObject(root)) {
		batch_drop(topic, "payload is not a JSON object");
		goto cleanup;
	}
	batch = cJSON_GetObjectItemCaseSensitive(root, "batch");
	if (!cJSON_IsString(batch) || !batch->valuestring[0]) {
		batch_drop(topic, "batch: missing or not a string (cannot ack)");
		goto cleanup;
	}
	if (strlen(batch->valuestring) > BATCH_ID_MAX) {
		batch_drop(topic, "batch: id longer than 128 bytes");
		goto cleanup;
	}
	v = cJSON_GetObjectItemCaseSensitive(root, "v");
	if (!cJSON_IsNumber(v) || v->valuedouble != 1.0) {
		batch_drop(topic, "v: missing or not 1");
		goto cleanup;
	}
	events = cJSON_GetObjectItemCaseSensitive(root, "events");
	if (!cJSON_IsArray(events)) {
		batch_drop(topic, "events: missing or not an array");
		goto cleanup;
	}
	n = (size_t)cJSON_GetArraySize(events);
	acked = malloc((n ? n : 1) * sizeof *acked);
	rej = malloc((n ? n : 1) * sizeof *rej);
	if (!acked || !rej) {
		log_at(LVL_ERROR, "out of memory for a batch", "events=%zu", n);
		goto cleanup;
	}

	if (db_step(g.st.begin) != SQLITE_OK)
		goto cleanup;
	in_tx = 1;

	/* In-order commit (docs/protocol.md, "Ordering"): everything up to
	 * `contiguous` is settled; a hole stops the batch and asks for a resend. */
	{
		sqlite3_stmt *s = g.st.sel_contig;
		sqlite3_bind_text(s, 1, id.tenant, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 2, id.store, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 3, id.device, -1, SQLITE_STATIC);
		if (sqlite3_step(s) == SQLITE_ROW)
			contiguous = sqlite3_column_int64(s, 0);
		sqlite3_reset(s);
		sqlite3_clear_bindings(s);
	}
	if (json_int64(cJSON_GetObjectItemCaseSensitive(root, "base"), &base) == 0 && base > contiguous + 1) {
		/* The device deleted these because a central acknowledged them;
		 * this database does not have them. Never wait for them. */
		sqlite3_stmt *s = g.st.ins_gap;
		sqlite3_bind_text(s, 1, id.tenant, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 2, id.store, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 3, id.device, -1, SQLITE_STATIC);
		sqlite3_bind_int64(s, 4, contiguous + 1);
		sqlite3_bind_int64(s, 5, base - 1);
		sqlite3_bind_int64(s, 6, now);
		if (db_step(s) != SQLITE_OK)
			goto cleanup;
		log_at(LVL_WARN, "device reports acknowledged events this database does not hold",
		       "tenant=%s store=%s device=%s from_seq=%" PRId64 " to_seq=%" PRId64, id.tenant, id.store,
		       id.device, contiguous + 1, base - 1);
		contiguous = base - 1;
	}
	/* after (protocol.md): the device holds nothing between `after` and the
	 * first event, nor between two events of the batch; seqs missing there
	 * were evicted and never come. Absent (older agents): -1, and every
	 * hole is waited for. */
	if (json_int64(cJSON_GetObjectItemCaseSensitive(root, "after"), &after) != 0 || after < 0)
		after = -1;
	prev = after;
	cJSON_ArrayForEach(ev, events)
	{
		struct event_view ve;
		char reason[REASON_MAX];
		enum store_result res;
		int64_t seq;

		idx++;
		memset(&ve, 0, sizeof ve);
		/* Without a seq an event can be neither acked nor rejected: the
		 * agent will resend it, and it will be dropped again. */
		if (!cJSON_IsObject(ev) ||
		    json_int64(cJSON_GetObjectItemCaseSensitive(ev, "seq"), &seq) != 0 || seq < 1) {
			n_unackable++;
			if (peer_warns_left())
				log_at(LVL_WARN, "event without a valid seq ignored",
				       "tenant=%s store=%s device=%s batch=%s index=%zu", id.tenant, id.store,
				       id.device, lq(q1, sizeof q1, batch->valuestring), idx - 1);
			continue;
		}
		ve.seq = seq;
		if (seq > contiguous + 1 && after >= 0 && prev >= 0 && prev <= contiguous) {
			/* Not a hole: the device says nothing lies between the
			 * event before (held here) and this one. */
			log_at(LVL_DEBUG, "seqs skipped by the device (evicted)",
			       "tenant=%s store=%s device=%s from_seq=%" PRId64 " to_seq=%" PRId64, id.tenant, id.store,
			       id.device, contiguous + 1, seq - 1);
			contiguous = seq - 1;
		}
		if (seq > contiguous + 1) {
			/* A hole before this event: store nothing past it. */
			resend_from = contiguous + 1;
			break;
		}
		/* settled before: by an earlier event, or on the device's word
		 * (base, after); a new copy of it is a late event (below). */
		int settled = seq <= contiguous;
		const cJSON *rec = cJSON_GetObjectItemCaseSensitive(ev, "recovered");
		int recovered = cJSON_IsTrue(rec);
		if (seq == contiguous + 1)
			contiguous = seq;
		prev = seq;
		/* The acked ranges: consecutive seqs only. Never over a seq
		 * central does not hold, even one `after` says the device does
		 * not hold: it may hold it again by the time the ack arrives (an
		 * event recovered from a quarantined file), and an ack deletes. */
#define ACK_SEQ(q)                                                                                  \
	do {                                                                                        \
		if (na > 0 && (q) == acked[na - 1][1] + 1)                                          \
			acked[na - 1][1] = (q);                                                     \
		else {                                                                              \
			acked[na][0] = acked[na][1] = (q);                                          \
			na++;                                                                       \
		}                                                                                   \
	} while (0)
		const cJSON *aside = cJSON_GetObjectItemCaseSensitive(ev, "set_aside");
		if (aside) {
			/* A set-aside marker settles its seq: no body, nothing to
			 * validate but the marker itself. */
			const cJSON *r = cJSON_IsObject(aside) ? cJSON_GetObjectItemCaseSensitive(aside, "reason") : NULL;
			const cJSON *d = cJSON_IsObject(aside) ? cJSON_GetObjectItemCaseSensitive(aside, "detail") : NULL;
			const cJSON *by = cJSON_IsObject(aside) ? cJSON_GetObjectItemCaseSensitive(aside, "bytes") : NULL;
			const cJSON *eid = cJSON_GetObjectItemCaseSensitive(ev, "id");
			const cJSON *ek = cJSON_GetObjectItemCaseSensitive(ev, "kind");
			sqlite3_stmt *s = g.st.ins_aside;
			int64_t bytes = 0;

			if (!cJSON_IsString(r)) {
				snprintf(reason, sizeof reason, "set_aside.reason: missing or not a string");
				goto reject;
			}
			bind_ident(s, &id, seq);
			if (cJSON_IsString(eid))
				sqlite3_bind_text(s, 5, eid->valuestring, -1, SQLITE_STATIC);
			if (cJSON_IsString(ek))
				sqlite3_bind_text(s, 6, ek->valuestring, -1, SQLITE_STATIC);
			sqlite3_bind_text(s, 7, r->valuestring, -1, SQLITE_STATIC);
			if (cJSON_IsString(d))
				sqlite3_bind_text(s, 8, d->valuestring, -1, SQLITE_STATIC);
			if (json_int64(by, &bytes) == 0)
				sqlite3_bind_int64(s, 9, bytes);
			sqlite3_bind_int64(s, 10, now);
			if (db_step(s) != SQLITE_OK) {
				sqlite3_clear_bindings(s);
				goto cleanup;
			}
			sqlite3_clear_bindings(s);
			if (sqlite3_changes(g.db) == 1) {
				n_aside++;
				if (settled && !recovered)
					n_violations++;
				log_at(LVL_WARN, "event set aside by the device; its data stays there",
				       "tenant=%s store=%s device=%s seq=%" PRId64 " kind=%s reason=%s", id.tenant,
				       id.store, id.device, seq, cJSON_IsString(ek) ? lq(q1, sizeof q1, ek->valuestring) : "?",
				       lq(q2, sizeof q2, r->valuestring));
			}
			ACK_SEQ(seq);
			continue;
		}
		if (event_validate(ev, &ve, reason, sizeof reason) != 0) {
		reject:
			if (reject_store(&id, seq, reason, ev, now) != SQLITE_OK)
				goto cleanup;
			rej[nr].seq = seq;
			snprintf(rej[nr].reason, sizeof rej[nr].reason, "%s", reason);
			nr++;
			if (peer_warns_left())
				log_at(LVL_WARN, "event rejected",
				       "tenant=%s store=%s device=%s seq=%" PRId64 " reason=%s",
				       id.tenant, id.store, id.device, seq,
				       lq(q2, sizeof q2, reason));
			continue;
		}
		res = event_store(&id, &ve, g.next_arrival + (int64_t)n_new, now);
		if (res == STORED_NEW && settled) {
			/* protocol.md: a seq settled on the device's word, yet the
			 * event exists: stored (never dropped for its seq), and a
			 * fault of the device unless it says it recovered it. */
			sqlite3_stmt *s = g.st.ins_late;

			bind_ident(s, &id, seq);
			sqlite3_bind_int(s, 5, recovered);
			sqlite3_bind_int64(s, 6, now);
			if (db_step(s) != SQLITE_OK)
				goto cleanup;
			n_late++;
			if (!recovered) {
				n_violations++;
				log_at(LVL_ERROR, "PROTOCOL VIOLATION: event below the settled seq the device claimed; stored",
				       "tenant=%s store=%s device=%s seq=%" PRId64 " contiguous=%" PRId64, id.tenant,
				       id.store, id.device, seq, contiguous);
			}
		}
		if (res == STORED_NEW && (strcmp(ve.kind, "purchase") == 0 || strcmp(ve.kind, "return") == 0)) {
			/* Second guard against a sale recorded twice (protocol.md):
			 * the same order under another seq is kept aside. */
			const cJSON *k = cJSON_GetObjectItemCaseSensitive(
				ve.body, strcmp(ve.kind, "purchase") == 0 ? "order_id" : "return_id");
			sqlite3_stmt *s = g.st.sel_order;
			int64_t held = 0;

			if (cJSON_IsString(k)) {
				sqlite3_bind_text(s, 1, id.tenant, -1, SQLITE_STATIC);
				sqlite3_bind_text(s, 2, id.store, -1, SQLITE_STATIC);
				sqlite3_bind_text(s, 3, id.device, -1, SQLITE_STATIC);
				sqlite3_bind_text(s, 4, ve.kind, -1, SQLITE_STATIC);
				sqlite3_bind_text(s, 5, k->valuestring, -1, SQLITE_STATIC);
				sqlite3_bind_int64(s, 6, seq);
				if (sqlite3_step(s) == SQLITE_ROW)
					held = sqlite3_column_int64(s, 0);
				sqlite3_reset(s);
				sqlite3_clear_bindings(s);
			}
			if (held) {
				s = g.st.move_dup_order;
				bind_ident(s, &id, seq);
				sqlite3_bind_text(s, 5, k->valuestring, -1, SQLITE_STATIC);
				sqlite3_bind_int64(s, 6, held);
				sqlite3_bind_int64(s, 7, now);
				if (db_step(s) != SQLITE_OK)
					goto cleanup;
				sqlite3_clear_bindings(s);
				s = g.st.del_event;
				bind_ident(s, &id, seq);
				if (db_step(s) != SQLITE_OK)
					goto cleanup;
				n_dup_orders++;
				log_at(LVL_WARN, "the same sale under another seq; kept aside as a duplicate",
				       "tenant=%s store=%s device=%s seq=%" PRId64 " held_seq=%" PRId64 " %s=%s", id.tenant,
				       id.store, id.device, seq, held, strcmp(ve.kind, "purchase") == 0 ? "order_id" : "return_id",
				       lq(q1, sizeof q1, k->valuestring));
				ACK_SEQ(seq);
				continue;
			}
		}
		switch (res) {
		case STORED_NEW:
			n_new++;
			break;
		case STORED_DUP:
			n_dup++;
			break;
		case STORED_CONFLICT:
			n_conf++;
			break;
		case STORE_ERROR:
			goto cleanup;
		}
		if (strcmp(ve.kind, "coupon_redeem") == 0 &&
		    redemption_handle(&id, &ve, res, now, &vb) != SQLITE_OK)
			goto cleanup;
		ACK_SEQ(seq);
	}
#undef ACK_SEQ

	{
		sqlite3_stmt *s = g.st.upsert_device;

		sqlite3_bind_text(s, 1, id.tenant, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 2, id.store, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 3, id.device, -1, SQLITE_STATIC);
		sqlite3_bind_int64(s, 4, (int64_t)n_new);
		sqlite3_bind_int64(s, 5, (int64_t)n_dup);
		sqlite3_bind_int64(s, 6, (int64_t)n_conf);
		sqlite3_bind_int64(s, 7, (int64_t)nr);
		sqlite3_bind_int64(s, 8, (int64_t)n_unackable);
		sqlite3_bind_int64(s, 9, now);
		sqlite3_bind_int64(s, 10, now);
		sqlite3_bind_int64(s, 11, contiguous);
		if (db_step(s) != SQLITE_OK)
			goto cleanup;
	}
	if (db_step(g.st.commit) != SQLITE_OK)
		goto cleanup;
	in_tx = 0;

	/* Durable: now, and only now, may the device forget these events. */
	g.next_arrival += (int64_t)n_new;
	g.c.batches++;
	g.c.events_new += n_new;
	g.c.duplicates += n_dup;
	g.c.conflicts += n_conf;
	g.c.rejected += nr;
	g.c.unackable += n_unackable;
	g.c.set_aside += n_aside;
	g.c.duplicate_orders += n_dup_orders;
	g.c.late += n_late;
	g.c.violations += n_violations;
	if (n_late)
		db_add_stat("late", (int64_t)n_late);
	if (n_violations) {
		db_add_stat("violations", (int64_t)n_violations);
		if (g.opt.strict) {
			/* Tests run central --strict: a device that over-claims must
			 * fail them loudly, not be papered over. */
			log_at(LVL_ERROR, "stopping: protocol violation by a device (--strict)",
			       "tenant=%s store=%s device=%s violations=%" PRIu64, id.tenant, id.store, id.device,
			       n_violations);
			exit(3);
		}
	}
	log_at(LVL_DEBUG, "batch stored",
	       "tenant=%s store=%s device=%s batch=%s events=%zu new=%" PRIu64 " dup=%" PRIu64
	       " conflicts=%" PRIu64 " rejected=%zu",
	       id.tenant, id.store, id.device, lq(q1, sizeof q1, batch->valuestring), n, n_new,
	       n_dup, n_conf, nr);
	if (resend_from)
		log_at(LVL_INFO, "hole before this batch; asking for a resend",
		       "tenant=%s store=%s device=%s batch=%s resend_from=%" PRId64, id.tenant, id.store, id.device,
		       lq(q1, sizeof q1, batch->valuestring), resend_from);
	ack_build(&id, batch->valuestring, acked, na, rej, nr, resend_from);
	verdicts_enqueue(&vb); /* after the ack: see verdicts_flush */

cleanup:
	if (in_tx) {
		/* No ack: the agent redelivers after its ack timeout. */
		log_at(LVL_ERROR, "batch not stored (rolled back, not acked)", "tenant=%s device=%s",
		       id.tenant, id.device);
		db_step(g.st.rollback);
	}
	sqlite3_clear_bindings(g.st.upsert_device);
	verdict_list_free(vb.head); /* NULL once enqueued */
	free(acked);
	free(rej);
	cJSON_Delete(root);
}

/* ======================================================================
 * acks: a window of QoS 1 publishes below the broker's Receive Maximum
 * ====================================================================== */

static void ack_queue(char *topic, struct sbuf *payload)
{
	struct pending_ack *a = calloc(1, sizeof *a);

	if (!a || !topic) {
		free(a);
		free(topic);
		free(payload->p);
		log_at(LVL_ERROR, "out of memory queueing ack", NULL);
		return;
	}
	a->topic = topic;
	a->payload = payload->p;
	a->len = payload->len;
	a->queued_ms = mono_ms();
	g.acks_queued++;
	if (g.ack_tail)
		g.ack_tail->next = a;
	else
		g.ack_head = a;
	g.ack_tail = a;
	g.n_pending++;
}

static void ack_pop(void)
{
	struct pending_ack *a = g.ack_head;

	g.ack_head = a->next;
	if (!g.ack_head)
		g.ack_tail = NULL;
	g.n_pending--;
	g.acks_popped++;
	free(a->topic);
	free(a->payload);
	free(a);
}

static void *slot_context(int idx, uint32_t gen)
{
	return (void *)(uintptr_t)(((uintptr_t)gen << 8) | (uintptr_t)idx);
}

/* Paho thread: a publish completed; free its slot and count it. */
static void slot_complete(void *ctx, uint64_t *counter)
{
	uintptr_t v = (uintptr_t)ctx;
	int idx = (int)(v & 0xff);
	uint32_t gen = (uint32_t)(v >> 8);

	if (idx >= ACK_SLOTS)
		return;
	pthread_mutex_lock(&g.lock);
	if (g.slots[idx].in_use && (g.slots[idx].gen & (UINT32_MAX >> 8)) == gen) {
		g.slots[idx].in_use = 0;
		(*counter)++;
	}
	pthread_mutex_unlock(&g.lock);
	wake_main();
}

static void on_ack_ok(void *ctx, MQTTAsync_successData5 *resp)
{
	(void)resp;
	slot_complete(ctx, &g.acks_confirmed);
}

static void on_ack_fail(void *ctx, MQTTAsync_failureData5 *resp)
{
	(void)resp;
	/* Not fatal: the agent redelivers and gets a fresh ack. */
	slot_complete(ctx, &g.acks_failed);
}

static void on_chunk_ok(void *ctx, MQTTAsync_successData5 *resp)
{
	(void)resp;
	slot_complete(ctx, &g.chunks_confirmed);
}

static void on_chunk_fail(void *ctx, MQTTAsync_failureData5 *resp)
{
	(void)resp;
	/* Not fatal: the agent times out and asks to resume from this chunk. */
	slot_complete(ctx, &g.chunks_failed);
}

static int window_limit(void)
{
	int w = g.opt.ack_window;

	/* caller holds g.lock */
	if (g.recv_max > 0 && w > g.recv_max)
		w = g.recv_max;
	return w;
}

/* Main thread: take a window slot for one publish. Snapshot chunks may use
 * all but one slot of the window, so a long snapshot never holds up acks
 * (acks are flushed first, chunks fill what is left). Returns the slot
 * index and its generation in *gen, or -1 (not connected, window full). */
static int slot_take(int is_chunk, uint32_t *gen)
{
	int i, used = 0, chunks = 0, free_idx = -1, limit;

	pthread_mutex_lock(&g.lock);
	for (i = 0; i < ACK_SLOTS; i++) {
		if (g.slots[i].in_use) {
			used++;
			chunks += g.slots[i].is_chunk;
		} else if (free_idx < 0) {
			free_idx = i;
		}
	}
	limit = window_limit();
	if (!g.connected || used >= limit || free_idx < 0 ||
	    (is_chunk && chunks >= (limit > 1 ? limit - 1 : 1))) {
		free_idx = -1;
	} else {
		g.slots[free_idx].in_use = 1;
		g.slots[free_idx].is_chunk = is_chunk;
		g.slots[free_idx].gen = (g.slots[free_idx].gen + 1) & (UINT32_MAX >> 8);
		g.slots[free_idx].sent_ms = mono_ms();
		*gen = g.slots[free_idx].gen;
	}
	pthread_mutex_unlock(&g.lock);
	return free_idx;
}

/* Main thread: give back a slot whose publish was not started. */
static void slot_release(int idx)
{
	pthread_mutex_lock(&g.lock);
	g.slots[idx].in_use = 0;
	pthread_mutex_unlock(&g.lock);
}

/* Main thread: send queued acks while the window has room. */
static void acks_flush(void)
{
	while (g.ack_head) {
		MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
		MQTTAsync_message msg = MQTTAsync_message_initializer;
		struct pending_ack *a = g.ack_head;
		int free_idx, rc;
		uint32_t gen = 0;

		if (mono_ms() - a->queued_ms > ACK_PENDING_MAX_AGE_MS ||
		    g.n_pending > ACK_PENDING_MAX) {
			g.c.acks_dropped++;
			ack_pop();
			continue;
		}
		free_idx = slot_take(0, &gen);
		if (free_idx < 0)
			return; /* woken again by a completion or a reconnect */

		msg.payload = a->payload;
		msg.payloadlen = (int)a->len;
		msg.qos = 1;
		ro.onSuccess5 = on_ack_ok;
		ro.onFailure5 = on_ack_fail;
		ro.context = slot_context(free_idx, gen);
		rc = MQTTAsync_sendMessage(g.client, a->topic, &msg, &ro);
		if (rc == MQTTASYNC_SUCCESS) {
			g.c.acks_sent++;
			ack_pop(); /* Paho copied topic and payload */
			continue;
		}
		slot_release(free_idx);
		if (rc == MQTTASYNC_DISCONNECTED)
			return; /* keep it for after the reconnect */
		log_at(LVL_WARN, "ack publish refused; dropped", "rc=%d err=\"%s\"", rc,
		       MQTTAsync_strerror(rc));
		g.c.acks_failed++;
		ack_pop();
	}
}

static void slots_reclaim(void)
{
	int64_t now = mono_ms();
	int i, n = 0;

	pthread_mutex_lock(&g.lock);
	for (i = 0; i < ACK_SLOTS; i++) {
		if (g.slots[i].in_use && now - g.slots[i].sent_ms > ACK_SLOT_STALE_MS) {
			g.slots[i].in_use = 0;
			n++;
		}
	}
	pthread_mutex_unlock(&g.lock);
	if (n)
		log_at(LVL_WARN, "publishes never completed; window slots reclaimed", "slots=%d",
		       n);
}

static int slots_in_use(void)
{
	int i, n = 0;

	pthread_mutex_lock(&g.lock);
	for (i = 0; i < ACK_SLOTS; i++)
		n += g.slots[i].in_use;
	pthread_mutex_unlock(&g.lock);
	return n;
}

/* ======================================================================
 * customer cache: resync requests answered with snapshots (main thread)
 *
 * A snapshot of a stream is read from DIR/<stream>.jsonl (protocol.md,
 * "Snapshot file"): a header line, then one record per line. One pass over
 * the file builds an index (where each chunk starts); the chunks themselves
 * are read and published one at a time, as window slots free up, so memory
 * stays at about one chunk (1 MiB) per slot whatever the file's size.
 *
 * Record lines are sent as they are, not parsed: the files are central's
 * own data, and a test may serve a malformed record on purpose to drive the
 * agent's refusal path. Only what would break the chunk's framing is
 * skipped (with a warning): a line that is not {...}, or one that cannot fit
 * in a chunk.
 * ====================================================================== */

static int stream_find(const char *name)
{
	int i;

	for (i = 0; i < N_STREAMS; i++)
		if (strcmp(name, cache_streams[i]) == 0)
			return i;
	return -1;
}

/* Keys are 1..64 bytes of [A-Za-z0-9_.:>-] (protocol.md, "Streams"). */
static int cache_key_ok(const char *s, size_t n)
{
	size_t i;

	if (n == 0 || n > CACHE_KEY_MAX)
		return 0;
	for (i = 0; i < n; i++) {
		char c = s[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '.' || c == ':' || c == '>' || c == '-'))
			return 0;
	}
	return 1;
}

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
	sb_reserve(b, n);
	if (b->oom)
		return;
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

/* FNV-1a over the 8 bytes of v. */
static uint64_t fnv_i64(uint64_t h, int64_t v)
{
	uint64_t u = (uint64_t)v;
	int i;

	for (i = 0; i < 8; i++) {
		h ^= (u >> (8 * i)) & 0xffu;
		h *= 1099511628211ull;
	}
	return h;
}

static int64_t mtime_ns(const struct stat *st)
{
	return (int64_t)st->st_mtim.tv_sec * 1000000000 + (int64_t)st->st_mtim.tv_nsec;
}

/* s[0..n) without surrounding blanks and line ends; *out_len 0 for a blank line. */
static const char *line_trim(const char *s, size_t n, size_t *out_len)
{
	while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
		n--;
	while (n && (*s == ' ' || *s == '\t')) {
		s++;
		n--;
	}
	*out_len = n;
	return s;
}

/* The one rule, shared by the index pass and the chunk reader, for which
 * lines are records (see the section comment). */
static int record_line_ok(const char *s, size_t n, size_t budget)
{
	return n >= 2 && s[0] == '{' && s[n - 1] == '}' && n + 1 <= budget;
}

static void index_unref(struct snap_index *ix)
{
	if (ix && --ix->refs == 0) {
		free(ix->offsets);
		free(ix->forgotten);
		free(ix);
	}
}

static size_t index_budget(const struct snap_index *ix)
{
	/* "forgotten" goes in the last chunk: every chunk leaves room for it,
	 * so the boundaries do not depend on which chunk is last. */
	return CHUNK_MAX_BYTES - CHUNK_HEADER_RESERVE - ix->forgotten_len;
}

static void cache_path(char *buf, size_t size, const char *name, const char *ext)
{
	snprintf(buf, size, "%s/%s%s", g.opt.cache_dir, name, ext);
}

/* DIR/forgotten.txt (members only): one member id per line, blank lines and
 * '#' comments ignored, at most FORGOTTEN_MAX_BYTES once rendered. A missing
 * file is an empty list. 0, or -1 if it exists but cannot be read. */
static int forgotten_load(struct snap_index *ix)
{
	struct sbuf b = { 0 };
	char path[4096], q[300], q2[200];
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int64_t lineno = 0;
	struct stat st;
	FILE *f;
	int rc = -1;

	cache_path(path, sizeof path, "forgotten", ".txt");
	f = fopen(path, "re");
	if (!f) {
		if (errno == ENOENT)
			return 0;
		log_at(LVL_ERROR, "cannot open forgotten list", "path=%s err=%s",
		       lq(q, sizeof q, path), lq(q2, sizeof q2, strerror(errno)));
		return -1;
	}
	if (fstat(fileno(f), &st) != 0)
		goto cleanup;
	ix->fg_size = (int64_t)st.st_size;
	ix->fg_mtime_ns = mtime_ns(&st);
	while ((n = getline(&line, &cap, f)) >= 0) {
		size_t len;
		const char *s = line_trim(line, (size_t)n, &len);

		lineno++;
		if (len == 0 || s[0] == '#')
			continue;
		if (!cache_key_ok(s, len)) {
			log_at(LVL_WARN, "forgotten.txt: not a member id; line skipped",
			       "line=%" PRId64, lineno);
			continue;
		}
		if (b.len + len + 3 > FORGOTTEN_MAX_BYTES) {
			log_at(LVL_WARN, "forgotten.txt: list too long; the rest is not sent",
			       "line=%" PRId64 " max_bytes=%u", lineno, FORGOTTEN_MAX_BYTES);
			break;
		}
		if (b.len)
			sb_put(&b, ",", 1);
		sb_put(&b, "\"", 1);
		sb_put(&b, s, len); /* key characters need no escaping */
		sb_put(&b, "\"", 1);
	}
	if (ferror(f) || b.oom) {
		log_at(LVL_ERROR, "cannot read forgotten list", "path=%s", lq(q, sizeof q, path));
		goto cleanup;
	}
	ix->forgotten = b.p;
	ix->forgotten_len = b.len;
	b.p = NULL;
	rc = 0;
cleanup:
	free(b.p);
	free(line);
	fclose(f);
	return rc;
}

/* The header line: {"v":1,"type":"snapshot_file","stream":S,"version":N}. */
static int header_parse(const char *s, size_t n, int stream, int64_t *version, char *why,
			size_t wlen)
{
	cJSON *h = cJSON_ParseWithLength(s, n);
	const cJSON *it;
	int rc = -1;

	if (!cJSON_IsObject(h)) {
		snprintf(why, wlen, "header: first line is not a JSON object");
		goto out;
	}
	it = cJSON_GetObjectItemCaseSensitive(h, "v");
	if (!cJSON_IsNumber(it) || it->valuedouble != 1.0) {
		snprintf(why, wlen, "header.v: missing or not 1");
		goto out;
	}
	it = cJSON_GetObjectItemCaseSensitive(h, "type");
	if (!cJSON_IsString(it) || strcmp(it->valuestring, "snapshot_file") != 0) {
		snprintf(why, wlen, "header.type: missing or not \"snapshot_file\"");
		goto out;
	}
	it = cJSON_GetObjectItemCaseSensitive(h, "stream");
	if (!cJSON_IsString(it) || strcmp(it->valuestring, cache_streams[stream]) != 0) {
		snprintf(why, wlen, "header.stream: missing or not \"%s\" (the file's name)",
			 cache_streams[stream]);
		goto out;
	}
	if (json_int64(cJSON_GetObjectItemCaseSensitive(h, "version"), version) != 0 ||
	    *version < 1) {
		snprintf(why, wlen, "header.version: missing or not an integer in 1..2^53");
		goto out;
	}
	rc = 0;
out:
	cJSON_Delete(h);
	return rc;
}

/* One pass over DIR/<stream>.jsonl: version, chunk boundaries, snapshot id.
 *
 * The id is "<stream>-<version>-<16 hex>", the hex an FNV-1a hash of what
 * identifies this exact content and chunking: the file's device, inode,
 * size and mtime (ns), forgotten.txt's size and mtime, and --chunk-records.
 * The same file served by a restarted central gets the same id, so an
 * agent's resume request still matches; any rewrite of the file changes it.
 *
 * A missing file is served as an empty stream at version 1: one chunk,
 * "records":[] (protocol.md: an empty stream is one chunk), so an agent
 * bootstrapping a stream central has no data for completes instead of
 * timing out forever; its cursor becomes 1, and central's first real
 * content (version > 1) reaches it as a gap -> resync -> new snapshot.
 *
 * Returns a new index (one reference) or NULL, the reason logged. */
static struct snap_index *index_build(int stream)
{
	struct snap_index *ix = calloc(1, sizeof *ix);
	char path[4096], q[300], q2[300], why[200];
	char *line = NULL;
	size_t cap = 0, alloc = 0, budget, chunk_bytes = 0;
	int64_t in_chunk = 0, lineno = 1, skipped = 0;
	uint64_t h = 14695981039346656037ull;
	struct stat st;
	ssize_t n;
	FILE *f = NULL;
	int ok = 0;

	if (!ix)
		return NULL;
	ix->refs = 1;
	ix->stream = stream;
	ix->fg_size = ix->fg_mtime_ns = -1;
	if (stream == 0 && forgotten_load(ix) != 0)
		goto cleanup;
	budget = index_budget(ix);
	cache_path(path, sizeof path, cache_streams[stream], ".jsonl");
	f = fopen(path, "re");
	if (!f && errno != ENOENT) {
		log_at(LVL_ERROR, "cannot open snapshot file", "path=%s err=%s",
		       lq(q, sizeof q, path), lq(q2, sizeof q2, strerror(errno)));
		goto cleanup;
	}
	if (!f) {
		ix->missing = 1;
		ix->version = 1;
		ix->nchunks = 1;
		ix->offsets = calloc(2, sizeof *ix->offsets);
		if (!ix->offsets)
			goto cleanup;
	} else {
		size_t hl;
		const char *hs;

		if (fstat(fileno(f), &st) != 0)
			goto cleanup;
		ix->dev = st.st_dev;
		ix->ino = st.st_ino;
		ix->size = st.st_size;
		ix->mtime_ns = mtime_ns(&st);
		n = getline(&line, &cap, f);
		hs = n > 0 ? line_trim(line, (size_t)n, &hl) : "";
		if (n <= 0)
			hl = 0;
		if (header_parse(hs, hl, stream, &ix->version, why, sizeof why) != 0) {
			log_at(LVL_ERROR, "snapshot file refused", "path=%s reason=%s",
			       lq(q, sizeof q, path), lq(q2, sizeof q2, why));
			goto cleanup;
		}
		alloc = 16;
		ix->offsets = malloc(alloc * sizeof *ix->offsets);
		if (!ix->offsets)
			goto cleanup;
		ix->offsets[0] = ftello(f);
		for (;;) {
			off_t pos = ftello(f);
			size_t len;
			const char *s;

			n = getline(&line, &cap, f);
			if (n < 0)
				break;
			lineno++;
			s = line_trim(line, (size_t)n, &len);
			if (len == 0)
				continue;
			if (!record_line_ok(s, len, budget)) {
				if (skipped++ < 10)
					log_at(LVL_WARN,
					       "snapshot file: line is not a {...} record or is larger "
					       "than a chunk; skipped",
					       "path=%s line=%" PRId64 " bytes=%zu", lq(q, sizeof q, path),
					       lineno, len);
				continue;
			}
			if (in_chunk > 0 && (in_chunk >= g.opt.chunk_records ||
					     chunk_bytes + len + 1 > budget)) {
				if ((size_t)ix->nchunks + 2 >= alloc) {
					off_t *np = realloc(ix->offsets, 2 * alloc * sizeof *np);

					if (!np)
						goto cleanup;
					ix->offsets = np;
					alloc *= 2;
				}
				ix->offsets[++ix->nchunks] = pos;
				in_chunk = 0;
				chunk_bytes = 0;
			}
			in_chunk++;
			chunk_bytes += len + 1;
			ix->records++;
		}
		if (ferror(f)) {
			log_at(LVL_ERROR, "cannot read snapshot file", "path=%s",
			       lq(q, sizeof q, path));
			goto cleanup;
		}
		ix->offsets[++ix->nchunks] = ftello(f); /* the end of chunk nchunks-1 */
		if (skipped > 10)
			log_at(LVL_WARN, "snapshot file: more lines skipped", "path=%s skipped=%" PRId64,
			       lq(q, sizeof q, path), skipped);
	}
	h = fnv_i64(h, ix->missing);
	h = fnv_i64(h, (int64_t)ix->dev);
	h = fnv_i64(h, (int64_t)ix->ino);
	h = fnv_i64(h, (int64_t)ix->size);
	h = fnv_i64(h, ix->mtime_ns);
	h = fnv_i64(h, ix->fg_size);
	h = fnv_i64(h, ix->fg_mtime_ns);
	h = fnv_i64(h, g.opt.chunk_records);
	snprintf(ix->id, sizeof ix->id, "%s-%" PRId64 "-%016" PRIx64, cache_streams[stream],
		 ix->version, h);
	log_at(LVL_INFO, "snapshot indexed",
	       "stream=%s snapshot=%s version=%" PRId64 " records=%" PRId64 " chunks=%" PRId64
	       " missing_file=%d",
	       cache_streams[stream], ix->id, ix->version, ix->records, ix->nchunks, ix->missing);
	ok = 1;

cleanup:
	free(line);
	if (f)
		fclose(f);
	if (!ok) {
		index_unref(ix);
		return NULL;
	}
	return ix;
}

/* The index of the stream's file as it is now: the cached one if neither
 * the file nor forgotten.txt changed, else a new one. Borrowed (the cache
 * holds a reference); NULL if the file cannot be served. */
static struct snap_index *index_current(int stream)
{
	struct snap_index *ix = g.index[stream];
	char path[4096];
	struct stat st;

	if (ix) {
		int same;

		cache_path(path, sizeof path, cache_streams[stream], ".jsonl");
		if (stat(path, &st) == 0)
			same = !ix->missing && st.st_dev == ix->dev && st.st_ino == ix->ino &&
			       st.st_size == ix->size && mtime_ns(&st) == ix->mtime_ns;
		else
			same = ix->missing && errno == ENOENT;
		if (same && stream == 0) {
			cache_path(path, sizeof path, "forgotten", ".txt");
			if (stat(path, &st) == 0)
				same = (int64_t)st.st_size == ix->fg_size &&
				       mtime_ns(&st) == ix->fg_mtime_ns;
			else
				same = errno == ENOENT && ix->fg_size < 0;
		}
		if (same)
			return ix;
	}
	ix = index_build(stream);
	if (!ix)
		return NULL;
	index_unref(g.index[stream]); /* jobs still sending the old one keep it alive */
	g.index[stream] = ix;
	return ix;
}

static int same_device(const struct ident *a, const struct ident *b)
{
	return strcmp(a->tenant, b->tenant) == 0 && strcmp(a->store, b->store) == 0 &&
	       strcmp(a->device, b->device) == 0;
}

/* Unlink j (prev is the job before it, or NULL) and free it. */
static void job_remove(struct snap_job *prev, struct snap_job *j)
{
	if (prev)
		prev->next = j->next;
	else
		g.jobs_head = j->next;
	if (g.jobs_tail == j)
		g.jobs_tail = prev;
	g.n_jobs--;
	index_unref(j->ix);
	free(j);
}

static void jobs_free_all(void)
{
	int i;

	while (g.jobs_head)
		job_remove(NULL, g.jobs_head);
	for (i = 0; i < N_STREAMS; i++) {
		index_unref(g.index[i]);
		g.index[i] = NULL;
	}
	while (g.drops) {
		struct drop_mark *d = g.drops;

		g.drops = d->next;
		free(d);
	}
}

/* Start sending ix to a device from chunk `from`, replacing what it was
 * being sent for that stream (it asked again: that snapshot is dead). */
static void job_start(const struct ident *who, struct snap_index *ix, int64_t from)
{
	struct snap_job *j, *prev = NULL;

	for (j = g.jobs_head; j; prev = j, j = j->next) {
		if (j->ix->stream == ix->stream && same_device(&j->who, who)) {
			log_at(LVL_DEBUG, "snapshot in progress replaced",
			       "tenant=%s store=%s device=%s snapshot=%s next_chunk=%" PRId64,
			       who->tenant, who->store, who->device, j->ix->id, j->next_chunk);
			job_remove(prev, j);
			break;
		}
	}
	if (g.n_jobs >= SNAPSHOT_JOBS_MAX) {
		log_at(LVL_WARN, "too many snapshots in progress; request not answered",
		       "tenant=%s store=%s device=%s stream=%s max=%d", who->tenant, who->store,
		       who->device, cache_streams[ix->stream], SNAPSHOT_JOBS_MAX);
		return;
	}
	j = calloc(1, sizeof *j);
	if (!j) {
		log_at(LVL_ERROR, "out of memory starting a snapshot", NULL);
		return;
	}
	j->who = *who;
	j->ix = ix;
	ix->refs++;
	snprintf(j->topic, sizeof j->topic, "scrm/v1/%s/%s/%s/down/cache/%s", who->tenant,
		 who->store, who->device, cache_streams[ix->stream]);
	j->next_chunk = j->first_chunk = from;
	j->due_ms = mono_ms();
	if (g.jobs_tail)
		g.jobs_tail->next = j;
	else
		g.jobs_head = j;
	g.jobs_tail = j;
	g.n_jobs++;
}

/* --drop-chunk: 1 if this job's next chunk is to be skipped (the first time
 * only, per device, stream and snapshot id). */
static int drop_hook(const struct snap_job *j)
{
	struct drop_mark *d;

	if (g.opt.drop_chunk < 0 || j->next_chunk != g.opt.drop_chunk)
		return 0;
	for (d = g.drops; d; d = d->next)
		if (d->stream == j->ix->stream && same_device(&d->who, &j->who) &&
		    strcmp(d->id, j->ix->id) == 0)
			return 0;
	d = calloc(1, sizeof *d);
	if (!d)
		return 0;
	d->who = j->who;
	d->stream = j->ix->stream;
	snprintf(d->id, sizeof d->id, "%s", j->ix->id);
	d->next = g.drops;
	g.drops = d;
	return 1;
}

/* Chunk j->next_chunk as a message in b. 0, or -1 (reason logged). */
static int chunk_build(const struct snap_job *j, struct sbuf *b)
{
	const struct snap_index *ix = j->ix;
	int64_t k = j->next_chunk;
	char path[4096], q[300];
	char *line = NULL;
	size_t cap = 0;
	size_t budget = index_budget(ix);
	int first = 1, rc = -1;
	FILE *f = NULL;

	sb_add(b,
	       "{\"v\":1,\"type\":\"snapshot\",\"stream\":\"%s\",\"snapshot\":\"%s\","
	       "\"version\":%" PRId64 ",\"chunk\":%" PRId64 ",\"chunks\":%" PRId64
	       ",\"ts\":%" PRId64 ",\"records\":[",
	       cache_streams[ix->stream], ix->id, ix->version, k, ix->nchunks, wall_ms());
	if (!ix->missing) {
		struct stat st;

		cache_path(path, sizeof path, cache_streams[ix->stream], ".jsonl");
		f = fopen(path, "re");
		if (!f || fstat(fileno(f), &st) != 0 || st.st_dev != ix->dev ||
		    st.st_ino != ix->ino || st.st_size != ix->size || mtime_ns(&st) != ix->mtime_ns) {
			/* The agent times out, asks again and gets a new snapshot. */
			log_at(LVL_WARN, "snapshot file changed while being sent; snapshot abandoned",
			       "path=%s snapshot=%s chunk=%" PRId64, lq(q, sizeof q, path), ix->id, k);
			goto cleanup;
		}
		if (fseeko(f, ix->offsets[k], SEEK_SET) != 0)
			goto cleanup;
		while (ftello(f) < ix->offsets[k + 1]) {
			ssize_t n = getline(&line, &cap, f);
			size_t len;
			const char *s;

			if (n < 0)
				break;
			s = line_trim(line, (size_t)n, &len);
			if (len == 0 || !record_line_ok(s, len, budget))
				continue;
			if (!first)
				sb_put(b, ",", 1);
			sb_put(b, s, len);
			first = 0;
		}
		if (ferror(f)) {
			log_at(LVL_ERROR, "cannot read snapshot file", "path=%s",
			       lq(q, sizeof q, path));
			goto cleanup;
		}
	}
	sb_put(b, "]", 1);
	if (k == ix->nchunks - 1 && ix->forgotten_len) {
		sb_add(b, ",\"forgotten\":[");
		sb_put(b, ix->forgotten, ix->forgotten_len);
		sb_put(b, "]", 1);
	}
	sb_put(b, "}", 1);
	if (b->oom) {
		log_at(LVL_ERROR, "out of memory building a snapshot chunk", NULL);
		goto cleanup;
	}
	rc = 0;
cleanup:
	free(line);
	if (f)
		fclose(f);
	return rc;
}

/* Main thread: publish due chunks while the window has room, one chunk per
 * job in turn (round robin), so one big snapshot does not starve the others. */
static void snapshots_pump(void)
{
	for (;;) {
		MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
		MQTTAsync_message msg = MQTTAsync_message_initializer;
		struct snap_job *j, *prev = NULL;
		struct sbuf b = { 0 };
		int64_t now = mono_ms();
		uint32_t gen = 0;
		int idx, rc;

		for (j = g.jobs_head; j && j->due_ms > now; j = j->next)
			prev = j;
		if (!j)
			return;
		if (drop_hook(j)) {
			log_at(LVL_INFO, "snapshot chunk dropped (--drop-chunk)",
			       "tenant=%s store=%s device=%s snapshot=%s chunk=%" PRId64,
			       j->who.tenant, j->who.store, j->who.device, j->ix->id, j->next_chunk);
			g.c.chunks_dropped++;
			j->next_chunk++;
			j->due_ms = now + g.opt.snapshot_delay_ms;
			if (j->next_chunk >= j->ix->nchunks)
				job_remove(prev, j);
			continue;
		}
		idx = slot_take(1, &gen);
		if (idx < 0)
			return; /* woken again by a completion or a reconnect */
		if (chunk_build(j, &b) != 0) {
			slot_release(idx);
			free(b.p);
			job_remove(prev, j);
			continue;
		}
		msg.payload = b.p;
		msg.payloadlen = (int)b.len;
		msg.qos = 1;
		msg.retained = 0;
		ro.onSuccess5 = on_chunk_ok;
		ro.onFailure5 = on_chunk_fail;
		ro.context = slot_context(idx, gen);
		rc = MQTTAsync_sendMessage(g.client, j->topic, &msg, &ro);
		free(b.p); /* Paho copied it */
		if (rc != MQTTASYNC_SUCCESS) {
			slot_release(idx);
			if (rc == MQTTASYNC_DISCONNECTED)
				return; /* the same chunk again after the reconnect */
			log_at(LVL_WARN, "snapshot chunk publish refused; snapshot abandoned",
			       "topic=%s rc=%d err=\"%s\"", j->topic, rc, MQTTAsync_strerror(rc));
			job_remove(prev, j);
			continue;
		}
		g.c.chunks_sent++;
		log_at(LVL_DEBUG, "snapshot chunk sent",
		       "topic=%s snapshot=%s chunk=%" PRId64 " chunks=%" PRId64 " bytes=%zu", j->topic,
		       j->ix->id, j->next_chunk, j->ix->nchunks, b.len);
		j->next_chunk++;
		j->due_ms = now + g.opt.snapshot_delay_ms;
		if (j->next_chunk >= j->ix->nchunks) {
			g.c.snapshots_sent++;
			log_at(LVL_INFO, "snapshot sent",
			       "tenant=%s store=%s device=%s stream=%s snapshot=%s version=%" PRId64
			       " chunks=%" PRId64 " from_chunk=%" PRId64 " records=%" PRId64,
			       j->who.tenant, j->who.store, j->who.device, cache_streams[j->ix->stream],
			       j->ix->id, j->ix->version, j->ix->nchunks, j->first_chunk,
			       j->ix->records);
			job_remove(prev, j);
		} else if (j->next) {
			/* to the back of the line */
			if (prev)
				prev->next = j->next;
			else
				g.jobs_head = j->next;
			j->next = NULL;
			g.jobs_tail->next = j;
			g.jobs_tail = j;
		}
	}
}

/* Milliseconds until a job waiting for --snapshot-delay-ms is due, or -1.
 * Jobs already due wait for a window slot: a completion wakes the loop. */
static int64_t snapshots_due_in(void)
{
	const struct snap_job *j;
	int64_t now = mono_ms(), best = -1;

	for (j = g.jobs_head; j; j = j->next) {
		if (j->due_ms > now && (best < 0 || j->due_ms - now < best))
			best = j->due_ms - now;
	}
	return best;
}

static void resync_drop(const char *topic, const char *why)
{
	char q1[200], q2[200];

	g.c.resync_dropped++;
	if (peer_warns_left())
		log_at(LVL_WARN, "resync request dropped", "topic=%s reason=%s",
		       lq(q1, sizeof q1, topic), lq(q2, sizeof q2, why));
}

/* A resync request (protocol.md, "Resync request"): validate, record, and
 * answer with a snapshot, resumed when the agent holds part of the current one. */
static void resync_handle(const char *topic, const char *payload, size_t len)
{
	struct ident id;
	cJSON *root = NULL;
	const cJSON *it;
	const char *reason = NULL, *snap = NULL;
	struct snap_index *ix;
	int64_t cursor = 0, from_chunk = -1, start = 0;
	int stream = -1;
	char q1[200], q2[200];

	{
		char why[300];

		if (parse_topic(topic, &id, "up/cache/resync", why, sizeof why) != 0) {
			resync_drop(topic, why);
			return;
		}
	}
	root = cJSON_ParseWithLength(payload, len);
	if (!cJSON_IsObject(root)) {
		resync_drop(topic, "payload: not a JSON object");
		goto cleanup;
	}
	it = cJSON_GetObjectItemCaseSensitive(root, "v");
	if (!cJSON_IsNumber(it) || it->valuedouble != 1.0) {
		resync_drop(topic, "v: missing or not 1");
		goto cleanup;
	}
	it = cJSON_GetObjectItemCaseSensitive(root, "stream");
	if (!cJSON_IsString(it) || (stream = stream_find(it->valuestring)) < 0) {
		resync_drop(topic, "stream: missing or not one of members coupons catalogue "
				   "inventory scripts recos rules");
		goto cleanup;
	}
	if (json_int64(cJSON_GetObjectItemCaseSensitive(root, "cursor"), &cursor) != 0 ||
	    cursor < 0) {
		resync_drop(topic, "cursor: missing or not an integer in 0..2^53");
		goto cleanup;
	}
	if (opt_string(root, "reason", RESYNC_REASON_MAX, &reason) < 0) {
		resync_drop(topic, "reason: not a string of 1..32 bytes");
		goto cleanup;
	}
	if (opt_string(root, "snapshot", SNAPSHOT_ID_MAX, &snap) < 0) {
		resync_drop(topic, "snapshot: not a string of 1..64 bytes");
		goto cleanup;
	}
	it = cJSON_GetObjectItemCaseSensitive(root, "from_chunk");
	if (it && !cJSON_IsNull(it) && (json_int64(it, &from_chunk) != 0 || from_chunk < 0)) {
		resync_drop(topic, "from_chunk: not an integer in 0..2^53");
		goto cleanup;
	}

	g.c.resync_requests++;
	{
		sqlite3_stmt *s = g.st.ins_resync;

		sqlite3_bind_text(s, 1, id.tenant, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 2, id.store, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 3, id.device, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 4, cache_streams[stream], -1, SQLITE_STATIC);
		sqlite3_bind_int64(s, 5, cursor);
		if (reason)
			sqlite3_bind_text(s, 6, reason, -1, SQLITE_STATIC);
		else
			sqlite3_bind_null(s, 6);
		if (snap)
			sqlite3_bind_text(s, 7, snap, -1, SQLITE_STATIC);
		else
			sqlite3_bind_null(s, 7);
		if (from_chunk >= 0)
			sqlite3_bind_int64(s, 8, from_chunk);
		else
			sqlite3_bind_null(s, 8);
		sqlite3_bind_int64(s, 9, wall_ms());
		db_step(s); /* logged on failure; the request is still answered */
		sqlite3_clear_bindings(s);
	}
	log_at(LVL_INFO, "resync request",
	       "tenant=%s store=%s device=%s stream=%s cursor=%" PRId64
	       " reason=%s snapshot=%s from_chunk=%" PRId64,
	       id.tenant, id.store, id.device, cache_streams[stream], cursor,
	       lq(q1, sizeof q1, reason ? reason : "-"), lq(q2, sizeof q2, snap ? snap : "-"),
	       from_chunk);

	ix = index_current(stream);
	if (!ix) {
		log_at(LVL_ERROR, "cannot serve a snapshot; resync request not answered",
		       "tenant=%s store=%s device=%s stream=%s", id.tenant, id.store, id.device,
		       cache_streams[stream]);
		goto cleanup;
	}
	if (snap && strcmp(snap, ix->id) == 0 && from_chunk >= 0 && from_chunk < ix->nchunks) {
		start = from_chunk;
	} else if (snap) {
		/* The agent drops what it holds when chunk 0 of another id arrives. */
		log_at(LVL_INFO, "requested snapshot cannot be resumed; sending a new one",
		       "tenant=%s store=%s device=%s requested=%s from_chunk=%" PRId64
		       " current=%s chunks=%" PRId64,
		       id.tenant, id.store, id.device, lq(q2, sizeof q2, snap), from_chunk, ix->id,
		       ix->nchunks);
	}
	job_start(&id, ix, start);

cleanup:
	cJSON_Delete(root);
}

/* ======================================================================
 * coupon verdicts (main thread)
 *
 * A new coupon_redeem event is decided inside the transaction that stores
 * it, so a redelivered copy never decides twice and "earlier" means decided
 * earlier by this central. The rules read the coupon and campaign records of
 * DIR/coupons.jsonl (the "signed" text of each record line, parsed; the
 * signature is central's own and not checked here) and count the accepted
 * rows of the redemptions table across every store and device of the
 * tenant. Without --cache-dir every redemption is accepted unchecked.
 *
 * Verdicts are published to the device's down/verdict, QoS 1, after the
 * ack of the batch that carried the redemption (the ack tells the agent the
 * event is safe; the verdict then settles it) and, with
 * --verdict-delay-ms, not before that many ms after the commit.
 * ====================================================================== */

static void catalogue_free(struct coupon_catalogue *c)
{
	size_t i;

	for (i = 0; i < c->n_coupons; i++) {
		free(c->coupons[i].id);
		free(c->coupons[i].campaign);
	}
	for (i = 0; i < c->n_campaigns; i++)
		free(c->campaigns[i].id);
	free(c->coupons);
	free(c->campaigns);
	memset(c, 0, sizeof *c);
}

static int cmp_coupon(const void *a, const void *b)
{
	const struct coupon_def *x = a, *y = b;
	int c = strcmp(x->id, y->id);

	return c ? c : (x->line > y->line) - (x->line < y->line);
}

static int cmp_campaign(const void *a, const void *b)
{
	const struct campaign_def *x = a, *y = b;
	int c = strcmp(x->id, y->id);

	return c ? c : (x->line > y->line) - (x->line < y->line);
}

/* A non-negative integer field of a record: 0 (absent: dflt), or -1. */
static int record_count(const cJSON *rec, const char *name, int64_t dflt, int64_t *out)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(rec, name);

	*out = dflt;
	if (!it || cJSON_IsNull(it))
		return 0;
	return json_int64(it, out) == 0 && *out >= 0 ? 0 : -1;
}

/* One record line into c: 0 taken, 1 not a coupon or campaign record,
 * -1 malformed (why set), -2 out of memory. */
static int catalogue_add(struct coupon_catalogue *c, size_t *cap_coupons, size_t *cap_campaigns,
			 const char *s, size_t n, int64_t lineno, const char **why)
{
	cJSON *line = cJSON_ParseWithLength(s, n), *rec = NULL;
	const cJSON *key, *sig, *type, *id;
	char want[CACHE_KEY_MAX + 16];
	int rc = -1;

	*why = "not a JSON object";
	if (!cJSON_IsObject(line))
		goto out;
	key = cJSON_GetObjectItemCaseSensitive(line, "key");
	sig = cJSON_GetObjectItemCaseSensitive(line, "signed");
	*why = "no \"key\" or \"signed\" string";
	if (!cJSON_IsString(key) || !cJSON_IsString(sig))
		goto out;
	rec = cJSON_Parse(sig->valuestring);
	type = cJSON_GetObjectItemCaseSensitive(rec, "type");
	id = cJSON_GetObjectItemCaseSensitive(rec, "id");
	*why = "\"signed\" is not a record with a type and an id";
	if (!cJSON_IsObject(rec) || !cJSON_IsString(type) || !cJSON_IsString(id) ||
	    !id->valuestring[0] || strlen(id->valuestring) > CACHE_KEY_MAX)
		goto out;
	rc = 1;
	if (strcmp(type->valuestring, "coupon") != 0 && strcmp(type->valuestring, "campaign") != 0)
		goto out;
	rc = -1;
	snprintf(want, sizeof want, "%s:%s", type->valuestring, id->valuestring);
	*why = "the record's type:id is not its key";
	if (strcmp(want, key->valuestring) != 0)
		goto out;
	if (strcmp(type->valuestring, "coupon") == 0) {
		struct coupon_def d = { 0 };
		const char *campaign = NULL;

		*why = "coupon: uses, valid_from, valid_to or campaign malformed";
		if (record_count(rec, "uses", 1, &d.uses) != 0 ||
		    record_count(rec, "valid_from", 0, &d.valid_from) != 0 ||
		    record_count(rec, "valid_to", 0, &d.valid_to) != 0 ||
		    opt_string(rec, "campaign", CACHE_KEY_MAX, &campaign) < 0)
			goto out;
		rc = -2;
		if (c->n_coupons == *cap_coupons) {
			size_t ncap = *cap_coupons ? 2 * *cap_coupons : 256;
			struct coupon_def *np = realloc(c->coupons, ncap * sizeof *np);

			if (!np)
				goto out;
			c->coupons = np;
			*cap_coupons = ncap;
		}
		d.id = strdup(id->valuestring);
		d.campaign = campaign ? strdup(campaign) : NULL;
		d.line = lineno;
		if (!d.id || (campaign && !d.campaign)) {
			free(d.id);
			free(d.campaign);
			goto out;
		}
		c->coupons[c->n_coupons++] = d;
	} else {
		struct campaign_def d = { 0 };

		*why = "campaign: per_member_limit, total_limit, valid_from or valid_to not an integer >= 0";
		if (record_count(rec, "per_member_limit", 0, &d.per_member_limit) != 0 ||
		    record_count(rec, "total_limit", 0, &d.total_limit) != 0 ||
		    record_count(rec, "valid_from", 0, &d.valid_from) != 0 ||
		    record_count(rec, "valid_to", 0, &d.valid_to) != 0)
			goto out;
		rc = -2;
		if (c->n_campaigns == *cap_campaigns) {
			size_t ncap = *cap_campaigns ? 2 * *cap_campaigns : 64;
			struct campaign_def *np = realloc(c->campaigns, ncap * sizeof *np);

			if (!np)
				goto out;
			c->campaigns = np;
			*cap_campaigns = ncap;
		}
		d.id = strdup(id->valuestring);
		d.line = lineno;
		if (!d.id)
			goto out;
		c->campaigns[c->n_campaigns++] = d;
	}
	rc = 0;
out:
	cJSON_Delete(rec);
	cJSON_Delete(line);
	return rc;
}

/* Sorted by id; of several records for one id the last line wins (as when
 * the agent applies them in order). */
static void catalogue_sort(struct coupon_catalogue *c)
{
	size_t i, j;

	if (c->n_coupons)
		qsort(c->coupons, c->n_coupons, sizeof *c->coupons, cmp_coupon);
	for (i = j = 0; i < c->n_coupons; i++) {
		if (i + 1 < c->n_coupons && strcmp(c->coupons[i].id, c->coupons[i + 1].id) == 0) {
			free(c->coupons[i].id);
			free(c->coupons[i].campaign);
			continue;
		}
		c->coupons[j++] = c->coupons[i];
	}
	c->n_coupons = j;
	if (c->n_campaigns)
		qsort(c->campaigns, c->n_campaigns, sizeof *c->campaigns, cmp_campaign);
	for (i = j = 0; i < c->n_campaigns; i++) {
		if (i + 1 < c->n_campaigns &&
		    strcmp(c->campaigns[i].id, c->campaigns[i + 1].id) == 0) {
			free(c->campaigns[i].id);
			continue;
		}
		c->campaigns[j++] = c->campaigns[i];
	}
	c->n_campaigns = j;
}

/* Read DIR/coupons.jsonl into c (zeroed). A missing file is an empty
 * catalogue (every coupon unknown, as on the agents); malformed record lines
 * are skipped with a warning. 0, or -1 (logged) if the file cannot be read. */
static int catalogue_load(struct coupon_catalogue *c)
{
	char path[4096], q[300], q2[300], why[200];
	char *line = NULL;
	size_t cap = 0, cap_coupons = 0, cap_campaigns = 0;
	int64_t lineno = 0, skipped = 0, version = 0;
	struct stat st;
	ssize_t n;
	FILE *f;
	int rc = -1, header = 0;

	cache_path(path, sizeof path, "coupons", ".jsonl");
	f = fopen(path, "re");
	if (!f && errno != ENOENT) {
		log_at(LVL_ERROR, "cannot open coupon definitions", "path=%s err=%s",
		       lq(q, sizeof q, path), lq(q2, sizeof q2, strerror(errno)));
		return -1;
	}
	if (!f) {
		c->missing = c->loaded = 1;
		log_at(LVL_WARN, "no coupon definitions: every coupon redemption is rejected",
		       "path=%s", lq(q, sizeof q, path));
		return 0;
	}
	if (fstat(fileno(f), &st) != 0)
		goto cleanup;
	c->dev = st.st_dev;
	c->ino = st.st_ino;
	c->size = st.st_size;
	c->mtime_ns = mtime_ns(&st);
	while ((n = getline(&line, &cap, f)) >= 0) {
		size_t len;
		const char *s = line_trim(line, (size_t)n, &len), *bad = NULL;
		int r;

		lineno++;
		if (len == 0)
			continue;
		if (!header) {
			header = 1;
			if (header_parse(s, len, stream_find("coupons"), &version, why,
					 sizeof why) != 0) {
				log_at(LVL_ERROR, "coupon definitions refused", "path=%s reason=%s",
				       lq(q, sizeof q, path), lq(q2, sizeof q2, why));
				goto cleanup;
			}
			continue;
		}
		r = catalogue_add(c, &cap_coupons, &cap_campaigns, s, len, lineno, &bad);
		if (r == -2) {
			log_at(LVL_ERROR, "out of memory loading coupon definitions", NULL);
			goto cleanup;
		}
		if (r == -1 && skipped++ < 10)
			log_at(LVL_WARN, "coupon definitions: record line skipped",
			       "path=%s line=%" PRId64 " reason=%s", lq(q, sizeof q, path), lineno,
			       lq(q2, sizeof q2, bad));
	}
	if (ferror(f)) {
		log_at(LVL_ERROR, "cannot read coupon definitions", "path=%s", lq(q, sizeof q, path));
		goto cleanup;
	}
	if (!header) {
		log_at(LVL_ERROR, "coupon definitions refused", "path=%s reason=%s",
		       lq(q, sizeof q, path), lq(q2, sizeof q2, "empty file: no header line"));
		goto cleanup;
	}
	catalogue_sort(c);
	c->loaded = 1;
	log_at(LVL_INFO, "coupon definitions loaded",
	       "path=%s version=%" PRId64 " coupons=%zu campaigns=%zu skipped=%" PRId64,
	       lq(q, sizeof q, path), version, c->n_coupons, c->n_campaigns, skipped);
	rc = 0;

cleanup:
	free(line);
	fclose(f);
	if (rc != 0)
		catalogue_free(c);
	return rc;
}

/* g.cat as the file is now: reloaded when it changed. If a changed file
 * cannot be read the previous definitions stay in use. 0, or -1 if there
 * are none to decide with. */
static int catalogue_current(void)
{
	struct coupon_catalogue fresh;
	char path[4096];
	struct stat st;

	if (g.cat.loaded) {
		int same;

		cache_path(path, sizeof path, "coupons", ".jsonl");
		if (stat(path, &st) == 0)
			same = !g.cat.missing && st.st_dev == g.cat.dev && st.st_ino == g.cat.ino &&
			       st.st_size == g.cat.size && mtime_ns(&st) == g.cat.mtime_ns;
		else
			same = g.cat.missing && errno == ENOENT;
		if (same)
			return 0;
	}
	memset(&fresh, 0, sizeof fresh);
	if (catalogue_load(&fresh) != 0) {
		if (!g.cat.loaded)
			return -1;
		log_at(LVL_WARN, "keeping the coupon definitions loaded before", NULL);
		return 0;
	}
	catalogue_free(&g.cat);
	g.cat = fresh;
	return 0;
}

static int cmp_coupon_key(const void *key, const void *elem)
{
	return strcmp(key, ((const struct coupon_def *)elem)->id);
}

static int cmp_campaign_key(const void *key, const void *elem)
{
	return strcmp(key, ((const struct campaign_def *)elem)->id);
}

static const struct coupon_def *coupon_find(const char *id)
{
	return g.cat.n_coupons ? bsearch(id, g.cat.coupons, g.cat.n_coupons,
					 sizeof *g.cat.coupons, cmp_coupon_key)
			       : NULL;
}

static const struct campaign_def *campaign_find(const char *id)
{
	return g.cat.n_campaigns ? bsearch(id, g.cat.campaigns, g.cat.n_campaigns,
					   sizeof *g.cat.campaigns, cmp_campaign_key)
				 : NULL;
}

/* SELECT count(*) with text parameters 1..n: SQLITE_OK and *out, or the error. */
static int db_count(sqlite3_stmt *s, const char *const *params, int n, int64_t *out)
{
	char q[300];
	int i, rc;

	for (i = 0; i < n; i++)
		sqlite3_bind_text(s, i + 1, params[i], -1, SQLITE_STATIC);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		*out = sqlite3_column_int64(s, 0);
		rc = SQLITE_OK;
	} else {
		log_at(LVL_ERROR, "sqlite step failed", "err=%s",
		       lq(q, sizeof q, sqlite3_errmsg(g.db)));
	}
	sqlite3_reset(s);
	sqlite3_clear_bindings(s);
	return rc;
}

/* The verdict message (protocol.md, "Coupon verdicts"), queued on vb.
 * coupon, reason and detail may be NULL (omitted). */
static int verdict_add(struct verdict_batch *vb, const struct ident *id, int64_t seq,
		       const char *redemption, const char *coupon, const char *campaign,
		       int accepted, const char *reason, const char *detail, int64_t ts)
{
	struct pending_verdict *pv = calloc(1, sizeof *pv);
	struct sbuf b = { 0 };
	char topic[3 * IDENT_MAX + 48];

	sb_add(&b, "{\"v\":1,\"redemption\":");
	sb_json_str(&b, redemption);
	sb_add(&b, ",\"seq\":%" PRId64, seq);
	if (coupon) {
		sb_add(&b, ",\"coupon\":");
		sb_json_str(&b, coupon);
	}
	sb_add(&b, ",\"campaign\":");
	sb_json_str(&b, campaign);
	sb_add(&b, ",\"verdict\":\"%s\"", accepted ? "accepted" : "rejected");
	if (!accepted && reason) {
		sb_add(&b, ",\"reason\":");
		sb_json_str(&b, reason);
	}
	if (!accepted && detail) {
		sb_add(&b, ",\"detail\":");
		sb_json_str(&b, detail);
	}
	sb_add(&b, ",\"ts\":%" PRId64 "}", ts);
	snprintf(topic, sizeof topic, "scrm/v1/%s/%s/%s/down/verdict", id->tenant, id->store,
		 id->device);
	if (pv)
		pv->topic = strdup(topic);
	if (!pv || !pv->topic || b.oom) {
		if (pv)
			free(pv->topic);
		free(pv);
		free(b.p);
		log_at(LVL_ERROR, "out of memory building a verdict", NULL);
		return SQLITE_NOMEM; /* the batch is not stored: redelivered, decided then */
	}
	pv->payload = b.p;
	pv->len = b.len;
	*vb->tail = pv;
	vb->tail = &pv->next;
	return SQLITE_OK;
}

/* The validity window [from, to) of a coupon or campaign (0: open) at `at`:
 * NULL, or the reason with its detail written. Same codes as the agent's. */
static const char *window_check(const char *what, const char *id, int64_t from, int64_t to, int64_t at,
				char *detail, size_t cap)
{
	if (from > 0 && at < from) {
		snprintf(detail, cap, "%s %s valid from %" PRId64 " (Unix ms), redeemed at %" PRId64, what, id,
			 from, at);
		return "not_yet_valid";
	}
	if (to > 0 && at >= to) {
		snprintf(detail, cap, "%s %s expired at %" PRId64 " (Unix ms), redeemed at %" PRId64, what, id, to,
			 at);
		return "expired";
	}
	return NULL;
}

/* When a redemption happened, for its validity check (protocol.md, "Verdict"):
 * the event's capture time (wall_ms: an offline redemption arrives late, and
 * is judged at the sale), but never later than central received it (a clock
 * ahead cannot make a coupon valid early), and central's receive time when
 * the device said its clock is not trusted (clock_ok false: it may be far
 * behind, and would make every coupon look unexpired). */
static int64_t redemption_time(const struct event_view *v, int64_t now)
{
	if (v->clock_ok == 0)
		return now;
	return v->wall_ms < now ? v->wall_ms : now;
}

/* A new redemption: decide, record in redemptions, queue the verdict. */
static int verdict_decide(const struct ident *id, const struct event_view *v, int64_t now,
			  struct verdict_batch *vb)
{
	const cJSON *body = v->body;
	const char *campaign = NULL, *coupon = NULL, *member = NULL, *order = NULL;
	const char *reason = NULL;
	char detail[VERDICT_DETAIL_MAX] = "";
	char q1[200], q2[200], q3[200], q4[VERDICT_DETAIL_MAX + 16];
	int64_t value = 0, count = 0, at = redemption_time(v, now);
	sqlite3_stmt *s;
	int rc;

	/* event_validate checked the body */
	opt_string(body, "campaign", BODY_ID_MAX, &campaign);
	opt_string(body, "coupon", BODY_ID_MAX, &coupon);
	opt_string(body, "member_id", BODY_ID_MAX, &member);
	opt_string(body, "order_id", BODY_ID_MAX, &order);
	json_int64(cJSON_GetObjectItemCaseSensitive(body, "value"), &value);
	if (!campaign || !order)
		return SQLITE_MISUSE;

	if (!g.opt.cache_dir) {
		if (!g.unchecked_logged) {
			g.unchecked_logged = 1;
			log_at(LVL_INFO, "no --cache-dir: coupon redemptions are accepted unchecked",
			       NULL);
		}
	} else if (catalogue_current() != 0) {
		log_at(LVL_ERROR, "no coupon definitions to decide a redemption with", NULL);
		return SQLITE_ERROR; /* not stored, not acked: decided when redelivered */
	} else if (coupon) {
		const struct coupon_def *cd = coupon_find(coupon);
		const char *params[] = { id->tenant, coupon };

		const struct campaign_def *cpd = cd && cd->campaign ? campaign_find(cd->campaign) : NULL;

		if (!cd) {
			reason = "unknown_coupon";
			snprintf(detail, sizeof detail, "coupon %s is not known to central", coupon);
		} else if ((reason = window_check("coupon", coupon, cd->valid_from, cd->valid_to, at, detail,
						  sizeof detail)) ||
			   (cpd && (reason = window_check("campaign", cpd->id, cpd->valid_from, cpd->valid_to,
							  at, detail, sizeof detail)))) {
			/* outside its validity: reason and detail set */
		} else if ((rc = db_count(g.st.cnt_coupon, params, 2, &count)) != SQLITE_OK) {
			return rc;
		} else if (count >= cd->uses) {
			reason = "already_spent";
			s = g.st.last_coupon;
			sqlite3_bind_text(s, 1, id->tenant, -1, SQLITE_STATIC);
			sqlite3_bind_text(s, 2, coupon, -1, SQLITE_STATIC);
			rc = sqlite3_step(s);
			if (rc == SQLITE_ROW) {
				const char *st = (const char *)sqlite3_column_text(s, 0);
				const char *dev = (const char *)sqlite3_column_text(s, 1);
				const char *ord = (const char *)sqlite3_column_text(s, 2);
				char when[96] = "";

				if (sqlite3_column_type(s, 3) == SQLITE_INTEGER) {
					time_t t = (time_t)(sqlite3_column_int64(s, 3) / 1000);
					struct tm tm;

					if (gmtime_r(&t, &tm))
						snprintf(when, sizeof when,
							 " at %04d-%02d-%02dT%02d:%02d:%02dZ",
							 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
							 tm.tm_hour, tm.tm_min, tm.tm_sec);
				}
				snprintf(detail, sizeof detail,
					 "already spent in store %.64s (device %.64s, order %.64s)%s",
					 st ? st : "?", dev ? dev : "?", ord ? ord : "?", when);
			} else {
				/* uses 0: never redeemable */
				snprintf(detail, sizeof detail,
					 "coupon %s allows %" PRId64 " use(s), all spent", coupon,
					 cd->uses);
			}
			sqlite3_reset(s);
			sqlite3_clear_bindings(s);
			if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
				log_at(LVL_ERROR, "sqlite step failed", "err=%s",
				       lq(q1, sizeof q1, sqlite3_errmsg(g.db)));
				return rc;
			}
		}
	} else {
		const struct campaign_def *cd = campaign_find(campaign);
		const char *params[] = { id->tenant, campaign, member };

		if (!cd) {
			reason = "unknown_campaign";
			snprintf(detail, sizeof detail, "campaign %s is not known to central",
				 campaign);
		} else if ((reason = window_check("campaign", campaign, cd->valid_from, cd->valid_to, at,
						  detail, sizeof detail))) {
			/* outside its validity: reason and detail set */
		} else if (cd->per_member_limit > 0 && member &&
			   (rc = db_count(g.st.cnt_member, params, 3, &count)) != SQLITE_OK) {
			return rc;
		} else if (cd->per_member_limit > 0 && member && count >= cd->per_member_limit) {
			reason = "member_limit";
			snprintf(detail, sizeof detail,
				 "member %s already redeemed campaign %s %" PRId64
				 " time(s) (limit %" PRId64 " per member)",
				 member, campaign, count, cd->per_member_limit);
		} else if (cd->total_limit > 0 &&
			   (rc = db_count(g.st.cnt_campaign, params, 2, &count)) != SQLITE_OK) {
			return rc;
		} else if (cd->total_limit > 0 && count >= cd->total_limit) {
			reason = "campaign_limit";
			snprintf(detail, sizeof detail,
				 "campaign %s reached its total limit of %" PRId64 " redemptions",
				 campaign, cd->total_limit);
		}
	}

	s = g.st.ins_redemption;
	bind_ident(s, id, v->seq);
	sqlite3_bind_text(s, 5, v->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 6, campaign, -1, SQLITE_STATIC);
	if (coupon)
		sqlite3_bind_text(s, 7, coupon, -1, SQLITE_STATIC);
	if (member)
		sqlite3_bind_text(s, 8, member, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 9, order, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 10, value);
	sqlite3_bind_text(s, 11, reason ? "rejected" : "accepted", -1, SQLITE_STATIC);
	if (reason) {
		sqlite3_bind_text(s, 12, reason, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 13, detail, -1, SQLITE_STATIC);
	}
	sqlite3_bind_int64(s, 14, now);
	rc = db_step(s);
	sqlite3_clear_bindings(s);
	if (rc != SQLITE_OK)
		return rc;

	if (reason) {
		vb->rejected++;
		log_at(LVL_INFO, "coupon redemption rejected",
		       "tenant=%s store=%s device=%s seq=%" PRId64 " redemption=%s coupon=%s"
		       " campaign=%s reason=%s detail=%s",
		       id->tenant, id->store, id->device, v->seq, lq(q1, sizeof q1, v->id),
		       coupon ? lq(q2, sizeof q2, coupon) : "-", lq(q3, sizeof q3, campaign), reason,
		       lq(q4, sizeof q4, detail));
	} else {
		vb->accepted++;
		log_at(LVL_DEBUG, "coupon redemption accepted",
		       "tenant=%s store=%s device=%s seq=%" PRId64 " redemption=%s coupon=%s"
		       " campaign=%s",
		       id->tenant, id->store, id->device, v->seq, lq(q1, sizeof q1, v->id),
		       coupon ? lq(q2, sizeof q2, coupon) : "-", lq(q3, sizeof q3, campaign));
	}
	return verdict_add(vb, id, v->seq, v->id, coupon, campaign, !reason, reason, detail, now);
}

/* A redelivered redemption: publish the verdict decided the first time
 * again (the device may have missed it), never a new decision. */
static int verdict_again(const struct ident *id, const struct event_view *v,
			 struct verdict_batch *vb)
{
	sqlite3_stmt *s = g.st.sel_redemption;
	int rc = SQLITE_OK;

	bind_ident(s, id, v->seq);
	if (sqlite3_step(s) == SQLITE_ROW) {
		const char *rid = (const char *)sqlite3_column_text(s, 0);
		const char *campaign = (const char *)sqlite3_column_text(s, 1);
		const char *coupon = (const char *)sqlite3_column_text(s, 2);
		const char *verdict = (const char *)sqlite3_column_text(s, 3);
		const char *reason = (const char *)sqlite3_column_text(s, 4);
		const char *detail = (const char *)sqlite3_column_text(s, 5);

		/* rid differs: a redelivered conflict, which was never decided */
		if (rid && campaign && verdict && strcmp(rid, v->id) == 0) {
			rc = verdict_add(vb, id, v->seq, rid, coupon, campaign,
					 strcmp(verdict, "accepted") == 0, reason, detail,
					 sqlite3_column_int64(s, 6));
			if (rc == SQLITE_OK)
				vb->redelivered++;
		}
	}
	sqlite3_reset(s);
	sqlite3_clear_bindings(s);
	return rc;
}

/* A stored coupon_redeem event (inside the batch's transaction): decide a
 * new one, repeat the verdict of a redelivered one. A conflicting copy
 * (same seq, another id: a reset outbox) is kept aside undecided, like its
 * event. SQLITE_OK, or an error that rolls the batch back. */
static int redemption_handle(const struct ident *id, const struct event_view *v,
			     enum store_result res, int64_t now, struct verdict_batch *vb)
{
	char q[200];

	switch (res) {
	case STORED_NEW:
		return verdict_decide(id, v, now, vb);
	case STORED_DUP:
		return verdict_again(id, v, vb);
	case STORED_CONFLICT:
		if (peer_warns_left())
			log_at(LVL_WARN, "coupon redemption conflicts with a held event; no verdict",
			       "tenant=%s store=%s device=%s seq=%" PRId64 " redemption=%s",
			       id->tenant, id->store, id->device, v->seq, lq(q, sizeof q, v->id));
		return SQLITE_OK;
	case STORE_ERROR:
		break;
	}
	return SQLITE_ERROR;
}

static void verdict_list_free(struct pending_verdict *pv)
{
	while (pv) {
		struct pending_verdict *next = pv->next;

		free(pv->topic);
		free(pv->payload);
		free(pv);
		pv = next;
	}
}

static void verdict_pop(void)
{
	struct pending_verdict *pv = g.verdict_head;

	g.verdict_head = pv->next;
	if (!g.verdict_head)
		g.verdict_tail = NULL;
	g.n_verdicts--;
	pv->next = NULL;
	verdict_list_free(pv);
}

/* A committed batch's verdicts join the queue, behind its ack (queued just
 * before). */
static void verdicts_enqueue(struct verdict_batch *vb)
{
	struct pending_verdict *pv;
	int64_t due = mono_ms() + g.opt.verdict_delay_ms;

	g.c.verdicts_accepted += vb->accepted;
	g.c.verdicts_rejected += vb->rejected;
	g.c.verdicts_redelivered += vb->redelivered;
	while ((pv = vb->head)) {
		vb->head = pv->next;
		pv->next = NULL;
		pv->after_ack = g.acks_queued;
		pv->due_ms = due;
		if (g.verdict_tail)
			g.verdict_tail->next = pv;
		else
			g.verdict_head = pv;
		g.verdict_tail = pv;
		g.n_verdicts++;
		if (g.n_verdicts > VERDICT_PENDING_MAX) {
			g.c.verdicts_dropped++;
			if (peer_warns_left())
				log_at(LVL_WARN, "too many verdicts waiting; oldest dropped",
				       "max=%d", VERDICT_PENDING_MAX);
			verdict_pop();
		}
	}
	vb->tail = &vb->head;
}

/* up/verdict/query (protocol.md "Verdict query"): publish again the
 * verdict of every redemption asked about that this central has decided;
 * ids it does not know are not answered (their event has not arrived). */
static void verdict_query_handle(const char *topic, const char *payload, size_t len)
{
	struct ident id;
	cJSON *root = NULL;
	const cJSON *v, *ids, *it;
	struct verdict_batch vb = { 0 };
	char why[300], q[200];
	int n = 0, answered = 0;

	vb.tail = &vb.head;
	g.c.verdict_queries++;
	if (parse_topic(topic, &id, "up/verdict/query", why, sizeof why) != 0) {
		batch_drop(topic, why);
		return;
	}
	if (json_parse_strict(payload, len, &root, why, sizeof why) != 0) {
		batch_drop(topic, why);
		return;
	}
	v = cJSON_GetObjectItemCaseSensitive(root, "v");
	ids = cJSON_GetObjectItemCaseSensitive(root, "redemptions");
	if (!cJSON_IsObject(root) || !cJSON_IsNumber(v) || v->valuedouble != 1.0 || !cJSON_IsArray(ids) ||
	    (n = cJSON_GetArraySize(ids)) < 1 || n > 100) {
		batch_drop(topic, "verdict query: needs \"v\":1 and \"redemptions\": 1..100 ids");
		goto out;
	}
	cJSON_ArrayForEach(it, ids)
	{
		sqlite3_stmt *s = g.st.sel_verdict_by_id;

		if (!cJSON_IsString(it) || strlen(it->valuestring) > EVENT_ID_MAX)
			continue;
		sqlite3_bind_text(s, 1, id.tenant, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 2, id.store, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 3, id.device, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 4, it->valuestring, -1, SQLITE_STATIC);
		if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_text(s, 1) && sqlite3_column_text(s, 3)) {
			const char *verdict = (const char *)sqlite3_column_text(s, 3);

			if (verdict_add(&vb, &id, sqlite3_column_int64(s, 0), it->valuestring,
					(const char *)sqlite3_column_text(s, 2), (const char *)sqlite3_column_text(s, 1),
					strcmp(verdict, "accepted") == 0, (const char *)sqlite3_column_text(s, 4),
					(const char *)sqlite3_column_text(s, 5), sqlite3_column_int64(s, 6)) == SQLITE_OK)
				answered++;
		}
		sqlite3_reset(s);
		sqlite3_clear_bindings(s);
	}
	vb.redelivered = (uint64_t)answered;
	log_at(LVL_INFO, "verdict query answered", "tenant=%s store=%s device=%s asked=%d answered=%d", id.tenant,
	       id.store, lq(q, sizeof q, id.device), n, answered);
	verdicts_enqueue(&vb);
out:
	verdict_list_free(vb.head);
	cJSON_Delete(root);
}

static void on_verdict_ok(void *ctx, MQTTAsync_successData5 *resp)
{
	(void)resp;
	slot_complete(ctx, &g.verdicts_confirmed);
}

static void on_verdict_fail(void *ctx, MQTTAsync_failureData5 *resp)
{
	(void)resp;
	/* Lost unless the device redelivers the redemption (then sent again). */
	slot_complete(ctx, &g.verdicts_failed);
}

/* Main thread: publish the verdicts that may go, in order: each after its
 * batch's ack was handed to Paho (which sends in that order), once due
 * (unless now_all: shutdown), and only when no ack waits for a slot (acks
 * go first). A verdict waits while central is disconnected. */
static void verdicts_flush(int now_all)
{
	while (g.verdict_head && !g.ack_head) {
		MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
		MQTTAsync_message msg = MQTTAsync_message_initializer;
		struct pending_verdict *pv = g.verdict_head;
		int free_idx, rc;
		uint32_t gen = 0;

		if (g.acks_popped < pv->after_ack || (!now_all && pv->due_ms > mono_ms()))
			return;
		free_idx = slot_take(0, &gen);
		if (free_idx < 0)
			return; /* woken again by a completion or a reconnect */
		msg.payload = pv->payload;
		msg.payloadlen = (int)pv->len;
		msg.qos = 1;
		ro.onSuccess5 = on_verdict_ok;
		ro.onFailure5 = on_verdict_fail;
		ro.context = slot_context(free_idx, gen);
		rc = MQTTAsync_sendMessage(g.client, pv->topic, &msg, &ro);
		if (rc == MQTTASYNC_SUCCESS) {
			g.c.verdicts_sent++;
			verdict_pop(); /* Paho copied topic and payload */
			continue;
		}
		slot_release(free_idx);
		if (rc == MQTTASYNC_DISCONNECTED)
			return; /* keep it for after the reconnect */
		log_at(LVL_WARN, "verdict publish refused; dropped", "rc=%d err=\"%s\"", rc,
		       MQTTAsync_strerror(rc));
		g.c.verdicts_failed++;
		verdict_pop();
	}
}

/* Milliseconds until the first queued verdict is due (--verdict-delay-ms),
 * or -1: none, or it waits for its ack or a slot (a completion wakes). */
static int64_t verdicts_due_in(void)
{
	int64_t now = mono_ms();

	if (!g.verdict_head || g.acks_popped < g.verdict_head->after_ack ||
	    g.verdict_head->due_ms <= now)
		return -1;
	return g.verdict_head->due_ms - now;
}

/* ======================================================================
 * MQTT callbacks (Paho threads: hand over, never touch SQLite)
 * ====================================================================== */

static int on_message(void *ctx, char *topic, int topic_len, MQTTAsync_message *m)
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

static void on_connection_lost(void *ctx, char *cause)
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
static void on_connected(void *ctx, char *cause)
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

static void on_connect_ok(void *ctx, MQTTAsync_successData5 *resp)
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

static void on_connect_fail(void *ctx, MQTTAsync_failureData5 *resp)
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

static void on_subscribe_ok(void *ctx, MQTTAsync_successData5 *resp)
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

static void on_subscribe_fail(void *ctx, MQTTAsync_failureData5 *resp)
{
	(void)ctx;
	log_at(LVL_ERROR, "subscribe failed", "code=%d", resp ? resp->code : 0);
	pthread_mutex_lock(&g.lock);
	g.need_subscribe = 1;
	pthread_mutex_unlock(&g.lock);
	wake_main();
}

static int on_tls_error(const char *str, size_t len, void *ctx)
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

/* ======================================================================
 * run
 * ====================================================================== */

/* A fresh Paho client. Paho's threads drive a TLS handshake from a select()
 * loop with a 1 s timeout, and once they are running a new connection waits
 * for that timeout: about 1 s per reconnect. When the last client is
 * destroyed the threads stop, and a new client connects in ~60 ms. So every
 * attempt after the first gets a new client (main thread only: Paho forbids
 * create/destroy in callbacks). */
static int mqtt_client_create(void)
{
	MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer5;
	int rc;

	rc = MQTTAsync_createWithOptions(&g.client, g.opt.broker, g.opt.client_id,
					 MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
	if (rc != MQTTASYNC_SUCCESS) {
		log_at(LVL_ERROR, "cannot create MQTT client", "broker=%s err=\"%s\"", g.opt.broker,
		       MQTTAsync_strerror(rc));
		g.client = NULL;
		return rc;
	}
	if (MQTTAsync_setCallbacks(g.client, NULL, on_connection_lost, on_message, NULL) !=
		    MQTTASYNC_SUCCESS ||
	    MQTTAsync_setConnected(g.client, NULL, on_connected) != MQTTASYNC_SUCCESS) {
		log_at(LVL_ERROR, "cannot set MQTT callbacks", NULL);
		MQTTAsync_destroy(&g.client);
		g.client = NULL;
		return MQTTASYNC_FAILURE;
	}
	return MQTTASYNC_SUCCESS;
}

static void mqtt_client_destroy(void)
{
	int i;

	if (g.client)
		MQTTAsync_destroy(&g.client);
	g.client = NULL;
	/* No callback comes after destroy: ack publishes still in flight are
	 * lost (their agents redeliver and get a fresh ack). */
	pthread_mutex_lock(&g.lock);
	for (i = 0; i < ACK_SLOTS; i++)
		g.slots[i].in_use = 0;
	g.connected = 0;
	g.connecting = 0;
	g.subscribed = 0;
	g.need_subscribe = 0;
	pthread_mutex_unlock(&g.lock);
}

static int mqtt_connect(void)
{
	MQTTAsync_connectOptions cc = MQTTAsync_connectOptions_initializer5;
	MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
	int rc;

	ssl.trustStore = g.opt.ca;
	ssl.keyStore = g.opt.cert;
	ssl.privateKey = g.opt.key;
	ssl.enableServerCertAuth = 1;
	ssl.verify = 1; /* host name check */
	ssl.ssl_error_cb = on_tls_error;
	cc.ssl = &ssl;
	cc.cleanstart = 1;
	cc.keepAliveInterval = 20;
	cc.connectTimeout = 10;
	/* Reconnects are driven by the main loop, not Paho's automatic
	 * reconnect: Paho retries after 1 s, then 2 s, 4 s..., and a test
	 * central that comes back seconds after the agents loses what they
	 * publish meanwhile (a broker drops messages nobody subscribes to),
	 * so later batches arrive before the dropped ones. */
	cc.automaticReconnect = 0;
	cc.onSuccess5 = on_connect_ok;
	cc.onFailure5 = on_connect_fail;
	pthread_mutex_lock(&g.lock);
	g.connecting = 1;
	pthread_mutex_unlock(&g.lock);
	rc = MQTTAsync_connect(g.client, &cc);
	if (rc != MQTTASYNC_SUCCESS) {
		pthread_mutex_lock(&g.lock);
		g.connecting = 0;
		pthread_mutex_unlock(&g.lock);
		log_at(LVL_WARN, "connect not started", "rc=%d err=\"%s\"", rc,
		       MQTTAsync_strerror(rc));
	}
	return rc;
}

static void mqtt_subscribe(void)
{
	MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
	static const char *const suffixes[] = { "up/events", "up/verdict/query", "up/cache/resync" };
	char topics[3][256];
	char *tp[3];
	int qos[3] = { 1, 1, 1 };
	int rc, i, n = g.opt.cache_dir ? 3 : 2;

	for (i = 0; i < n; i++) {
		if (g.opt.share)
			snprintf(topics[i], sizeof topics[i], "$share/%s/scrm/v1/+/+/+/%s",
				 g.opt.share, suffixes[i]);
		else
			snprintf(topics[i], sizeof topics[i], "scrm/v1/+/+/+/%s", suffixes[i]);
		tp[i] = topics[i];
	}
	ro.onSuccess5 = on_subscribe_ok;
	ro.onFailure5 = on_subscribe_fail;
	rc = MQTTAsync_subscribeMany(g.client, n, tp, qos, &ro);
	if (rc != MQTTASYNC_SUCCESS) {
		log_at(LVL_WARN, "subscribe not started; will retry", "rc=%d", rc);
		pthread_mutex_lock(&g.lock);
		g.need_subscribe = 1;
		pthread_mutex_unlock(&g.lock);
	} else {
		for (i = 0; i < n; i++)
			log_at(LVL_INFO, "subscribing", "topic=%s", topics[i]);
	}
}

/* Paho 1.3.12 leaves Nagle's algorithm on and exposes no socket option.
 * Then the ack PUBLISH, written right after Paho's PUBACK for the batch,
 * waits for the broker's delayed TCP ACK: ~40 ms per ack on loopback. This
 * process has no TCP sockets but Paho's, so set TCP_NODELAY on all of them
 * after each connect (Linux /proc; harmless if it fails). */
static int tcp_nodelay_all(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d))) {
		char *end = NULL;
		long fd = strtol(e->d_name, &end, 10);
		int type = 0, domain = 0, on = 1;
		socklen_t len = sizeof type;
		struct stat st;

		if (end == e->d_name || *end || fd < 0 || fd == dirfd(d))
			continue;
		if (fstat((int)fd, &st) != 0 || !S_ISSOCK(st.st_mode))
			continue;
		if (getsockopt((int)fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM)
			continue;
		len = sizeof domain;
		if (getsockopt((int)fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 ||
		    (domain != AF_INET && domain != AF_INET6))
			continue;
		if (setsockopt((int)fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) == 0)
			n++;
	}
	closedir(d);
	return n;
}

static int ready_write(const char *path)
{
	char tmp[4096];
	FILE *f;
	int n = snprintf(tmp, sizeof tmp, "%s.tmp", path);

	if (n < 0 || (size_t)n >= sizeof tmp)
		return -1;
	f = fopen(tmp, "w");
	if (!f)
		return -1;
	fprintf(f, "ready pid=%ld\n", (long)getpid());
	if (fclose(f) != 0)
		return -1;
	/* rename: a watcher never sees a half-written file */
	return rename(tmp, path);
}

static void inbound_drain(void)
{
	struct inbound *list, *in;

	pthread_mutex_lock(&g.lock);
	list = g.in_head;
	g.in_head = g.in_tail = NULL;
	g.in_bytes = 0;
	g.backlog_warned = 0;
	pthread_mutex_unlock(&g.lock);
	while ((in = list)) {
		list = in->next;
		if (topic_ends_with(in->topic, "/up/cache/resync"))
			resync_handle(in->topic, in->payload, in->len);
		else if (topic_ends_with(in->topic, "/up/verdict/query"))
			verdict_query_handle(in->topic, in->payload, in->len);
		else
			batch_handle(in->topic, in->payload, in->len);
		acks_flush(); /* keep ack latency low under a backlog */
		verdicts_flush(0);
		free(in->topic);
		free(in->payload);
		free(in);
	}
}

static void stats_log(void)
{
	uint64_t confirmed, failed, chunks_confirmed, chunks_failed, v_confirmed, v_failed;

	pthread_mutex_lock(&g.lock);
	confirmed = g.acks_confirmed;
	failed = g.acks_failed;
	chunks_confirmed = g.chunks_confirmed;
	chunks_failed = g.chunks_failed;
	v_confirmed = g.verdicts_confirmed;
	v_failed = g.verdicts_failed;
	pthread_mutex_unlock(&g.lock);
	log_at(LVL_INFO, "stats",
	       "batches=%" PRIu64 " events_new=%" PRIu64 " duplicates=%" PRIu64
	       " conflicts=%" PRIu64 " rejected=%" PRIu64 " unackable=%" PRIu64
	       " dropped_batches=%" PRIu64 " acks_sent=%" PRIu64 " acks_confirmed=%" PRIu64
	       " acks_failed=%" PRIu64 " acks_dropped=%" PRIu64 " acks_pending=%zu"
	       " verdicts_accepted=%" PRIu64 " verdicts_rejected=%" PRIu64
	       " verdicts_redelivered=%" PRIu64 " verdicts_sent=%" PRIu64
	       " verdicts_confirmed=%" PRIu64 " verdicts_failed=%" PRIu64
	       " verdicts_dropped=%" PRIu64 " verdicts_pending=%zu",
	       g.c.batches, g.c.events_new, g.c.duplicates, g.c.conflicts, g.c.rejected,
	       g.c.unackable, g.c.batches_dropped, g.c.acks_sent, confirmed,
	       g.c.acks_failed + failed, g.c.acks_dropped, g.n_pending, g.c.verdicts_accepted,
	       g.c.verdicts_rejected, g.c.verdicts_redelivered, g.c.verdicts_sent, v_confirmed,
	       g.c.verdicts_failed + v_failed, g.c.verdicts_dropped, g.n_verdicts);
	if (g.opt.cache_dir)
		log_at(LVL_INFO, "cache stats",
		       "resync_requests=%" PRIu64 " resync_dropped=%" PRIu64
		       " snapshots_sent=%" PRIu64 " snapshots_in_progress=%zu chunks_sent=%" PRIu64
		       " chunks_confirmed=%" PRIu64 " chunks_failed=%" PRIu64
		       " chunks_dropped=%" PRIu64,
		       g.c.resync_requests, g.c.resync_dropped, g.c.snapshots_sent, g.n_jobs,
		       g.c.chunks_sent, chunks_confirmed, chunks_failed, g.c.chunks_dropped);
}

static int cmd_run_main(void)
{
	struct sigaction sa;
	int64_t next_connect = 0, next_stats = mono_ms() + STATS_EVERY_MS;
	uint64_t last_batches = 0, last_dropped = 0, last_cache = 0;
	unsigned connect_failures = 0, attempts = 0;
	int was_subscribed = 0;
	int exit_code = 1;

	g.wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (g.wake_fd < 0) {
		log_at(LVL_ERROR, "eventfd failed", "err=\"%s\"", strerror(errno));
		return 1;
	}
	pthread_mutex_init(&g.lock, NULL);
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (db_open(g.opt.db) != SQLITE_OK)
		goto cleanup_fd;

	if (mqtt_client_create() != MQTTASYNC_SUCCESS)
		goto cleanup_db;
	log_at(LVL_INFO, "starting", "broker=%s client_id=%s db=%s share=%s ack_window=%d",
	       g.opt.broker, g.opt.client_id, g.opt.db, g.opt.share ? g.opt.share : "-",
	       g.opt.ack_window);
	if (g.opt.verdict_delay_ms > 0)
		log_at(LVL_INFO, "coupon verdicts delayed (test hook)",
		       "verdict_delay_ms=%" PRId64, g.opt.verdict_delay_ms);
	if (g.opt.cache_dir)
		log_at(LVL_INFO, "serving cache snapshots",
		       "cache_dir=%s chunk_records=%d snapshot_delay_ms=%" PRId64
		       " drop_chunk=%" PRId64,
		       g.opt.cache_dir, g.opt.chunk_records, g.opt.snapshot_delay_ms,
		       g.opt.drop_chunk);
	next_connect = mono_ms();

	while (!g_stop) {
		struct pollfd p = { .fd = g.wake_fd, .events = POLLIN, .revents = 0 };
		uint64_t drained;
		int failed, subscribe, subscribed, recv_max, idle;
		int64_t timeout = g.ack_head || next_connect ? 50 : 250, due;
		char why[256], tls[512];

		/* A snapshot waiting for a free slot is woken by the completion;
		 * one waiting for --snapshot-delay-ms needs the timeout. */
		due = snapshots_due_in();
		if (due >= 0 && due < timeout)
			timeout = due;
		due = verdicts_due_in(); /* --verdict-delay-ms */
		if (due >= 0 && due < timeout)
			timeout = due;
		poll(&p, 1, (int)timeout);
		(void)!read(g.wake_fd, &drained, sizeof drained);

		pthread_mutex_lock(&g.lock);
		failed = g.connect_failed;
		g.connect_failed = 0;
		subscribe = g.need_subscribe && g.connected;
		if (subscribe)
			g.need_subscribe = 0;
		subscribed = g.subscribed;
		recv_max = g.recv_max;
		idle = !g.connected && !g.connecting;
		memcpy(why, g.connect_why, sizeof why);
		memcpy(tls, g.tls_err, sizeof tls);
		pthread_mutex_unlock(&g.lock);

		if (failed) {
			char q1[300], q2[600];

			if (connect_failures++ % 40 == 0)
				log_at(LVL_WARN, "connect failed; retrying",
				       "broker=%s why=%s tls=%s attempts=%u every_ms=%d", g.opt.broker,
				       lq(q1, sizeof q1, why), lq(q2, sizeof q2, tls), connect_failures,
				       RECONNECT_EVERY_MS);
			next_connect = mono_ms() + RECONNECT_EVERY_MS;
		}
		if (idle && !next_connect)
			next_connect = mono_ms(); /* connection lost: at once */
		if (subscribed)
			connect_failures = 0;
		if (idle && next_connect && mono_ms() >= next_connect) {
			next_connect = mono_ms() + RECONNECT_EVERY_MS; /* unless it starts */
			if (attempts++ > 0) {
				mqtt_client_destroy();
				if (mqtt_client_create() != MQTTASYNC_SUCCESS)
					continue;
			}
			if (mqtt_connect() == MQTTASYNC_SUCCESS)
				next_connect = 0;
		}
		if (subscribe)
			mqtt_subscribe();
		if (subscribed && !was_subscribed) {
			int nodelay = tcp_nodelay_all(); /* the socket is new on each connect */

			log_at(LVL_INFO, "subscribed", "receive_maximum=%d ack_window=%d tcp_nodelay=%d",
			       recv_max,
			       recv_max > 0 && recv_max < g.opt.ack_window ? recv_max
									: g.opt.ack_window,
			       nodelay);
		}
		was_subscribed = subscribed;
		if (subscribed && !g.ready_written) {
			g.ready_written = 1;
			if (g.opt.ready_file && ready_write(g.opt.ready_file) != 0)
				log_at(LVL_ERROR, "cannot write ready file", "path=%s err=\"%s\"",
				       g.opt.ready_file, strerror(errno));
		}

		inbound_drain();
		acks_flush();
		verdicts_flush(0);
		snapshots_pump();
		slots_reclaim();
		if (mono_ms() >= next_stats) {
			uint64_t cache = g.c.resync_requests + g.c.resync_dropped + g.c.chunks_sent;

			next_stats = mono_ms() + STATS_EVERY_MS;
			g.peer_warns = 0;
			if (g.c.batches != last_batches || g.c.batches_dropped != last_dropped ||
			    cache != last_cache)
				stats_log();
			last_batches = g.c.batches;
			last_dropped = g.c.batches_dropped;
			last_cache = cache;
		}
	}

	/* Shutdown: store and ack what was received, give the acks a moment,
	 * then leave. Anything received after this is stored but not acked;
	 * the agents redeliver it and get the ack from the next run. */
	log_at(LVL_INFO, "stopping", NULL);
	inbound_drain();
	{
		int64_t until = mono_ms() + 2000;

		/* Verdicts go without their --verdict-delay-ms: after this they
		 * would be lost (the device does not redeliver acked events). */
		verdicts_flush(1);
		while ((g.ack_head || g.verdict_head || slots_in_use() > 0) && mono_ms() < until) {
			struct pollfd p = { .fd = g.wake_fd, .events = POLLIN, .revents = 0 };
			uint64_t drained;
			int connected;

			pthread_mutex_lock(&g.lock);
			connected = g.connected;
			pthread_mutex_unlock(&g.lock);
			if (!connected)
				break;
			poll(&p, 1, 20);
			(void)!read(g.wake_fd, &drained, sizeof drained);
			acks_flush();
			verdicts_flush(1);
		}
	}
	if (g.client && MQTTAsync_isConnected(g.client)) {
		MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer5;

		d.timeout = 1000;
		if (MQTTAsync_disconnect(g.client, &d) == MQTTASYNC_SUCCESS) {
			int64_t until = mono_ms() + 1500;

			while (MQTTAsync_isConnected(g.client) && mono_ms() < until)
				usleep(10000);
		}
	}
	inbound_drain();
	stats_log();
	if (g.n_verdicts)
		log_at(LVL_WARN, "verdicts not published before exit (lost)", "verdicts=%zu",
		       g.n_verdicts);
	exit_code = 0;

	mqtt_client_destroy();
	while (g.ack_head)
		ack_pop();
	while (g.verdict_head)
		verdict_pop();
	catalogue_free(&g.cat);
	jobs_free_all(); /* an unfinished snapshot: the agent times out and asks again */
cleanup_db:
	db_close();
cleanup_fd:
	close(g.wake_fd);
	log_at(LVL_INFO, "stopped", "exit_code=%d", exit_code);
	return exit_code;
}

/* ======================================================================
 * report
 * ====================================================================== */

#define MISSING_RANGES_MAX 20

struct dev_report {
	const char *tenant, *store, *device;
	int64_t events, min_seq, max_seq, missing, duplicates, conflicts, rejected, batches;
	int64_t out_of_order, unackable;
	int64_t set_aside, duplicate_orders, late, violations; /* schema 4; 0 in older databases */
	int64_t ranges[MISSING_RANGES_MAX][2];
	int nranges;
};

static int report_device(sqlite3 *db, struct dev_report *r)
{
	static const char *const sql_counts =
		"SELECT count(*), min(seq), max(seq) FROM events "
		"WHERE tenant=?1 AND store=?2 AND device=?3";
	static const char *const sql_conf =
		"SELECT count(*) FROM conflicts WHERE tenant=?1 AND store=?2 AND device=?3";
	static const char *const sql_rej =
		"SELECT count(*) FROM rejected WHERE tenant=?1 AND store=?2 AND device=?3";
	/* Rejected seqs are accounted for: not lost. */
	static const char *const sql_seqs =
		"SELECT seq FROM events WHERE tenant=?1 AND store=?2 AND device=?3 UNION "
		"SELECT seq FROM rejected WHERE tenant=?1 AND store=?2 AND device=?3 UNION "
		"SELECT seq FROM set_aside WHERE tenant=?1 AND store=?2 AND device=?3 UNION "
		"SELECT seq FROM duplicate_orders WHERE tenant=?1 AND store=?2 AND device=?3 ORDER BY 1";
	static const char *const sql_seqs_v3 =
		"SELECT seq FROM events WHERE tenant=?1 AND store=?2 AND device=?3 UNION "
		"SELECT seq FROM rejected WHERE tenant=?1 AND store=?2 AND device=?3 ORDER BY 1";
	static const char *const sql_v4 =
		"SELECT (SELECT count(*) FROM set_aside WHERE tenant=?1 AND store=?2 AND device=?3),"
		" (SELECT count(*) FROM duplicate_orders WHERE tenant=?1 AND store=?2 AND device=?3),"
		" (SELECT count(*) FROM late WHERE tenant=?1 AND store=?2 AND device=?3),"
		" (SELECT count(*) FROM late WHERE tenant=?1 AND store=?2 AND device=?3 AND recovered=0)";
	static const char *const sql_order =
		"SELECT seq FROM events WHERE tenant=?1 AND store=?2 AND device=?3 ORDER BY arrival";
	const char *sqls[] = { sql_counts, sql_conf, sql_rej, sql_seqs, sql_order, sql_v4 };
	sqlite3_stmt *s = NULL;
	size_t q;
	int rc = SQLITE_OK;
	int v4 = sqlite3_prepare_v2(db, sql_v4, -1, &s, NULL) == SQLITE_OK;

	sqlite3_finalize(s);
	s = NULL;
	if (!v4) {
		/* a database of schema 3 or older: no set-aside, late, ... tables */
		sqls[3] = sql_seqs_v3;
		sqls[5] = NULL;
	}
	for (q = 0; q < sizeof sqls / sizeof sqls[0]; q++) {
		int64_t prev = 0;
		int first = 1;

		if (!sqls[q])
			continue;
		rc = sqlite3_prepare_v2(db, sqls[q], -1, &s, NULL);
		if (rc != SQLITE_OK)
			return rc;
		sqlite3_bind_text(s, 1, r->tenant, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 2, r->store, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 3, r->device, -1, SQLITE_STATIC);
		while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
			int64_t seq = sqlite3_column_int64(s, 0);

			switch (q) {
			case 0:
				r->events = seq;
				r->min_seq = sqlite3_column_int64(s, 1);
				r->max_seq = sqlite3_column_int64(s, 2);
				break;
			case 1:
				r->conflicts = seq;
				break;
			case 2:
				r->rejected = seq;
				break;
			case 3:
				/* Seqs start at 1 and are never skipped (v1): every
				 * hole below the highest seq seen is a loss. */
				if (seq > prev + 1) {
					r->missing += seq - prev - 1;
					if (r->nranges < MISSING_RANGES_MAX) {
						r->ranges[r->nranges][0] = prev + 1;
						r->ranges[r->nranges][1] = seq - 1;
						r->nranges++;
					}
				}
				prev = seq;
				break;
			case 4:
				if (!first && seq < prev)
					r->out_of_order++;
				prev = seq;
				break;
			case 5:
				r->set_aside = sqlite3_column_int64(s, 0);
				r->duplicate_orders = sqlite3_column_int64(s, 1);
				r->late = sqlite3_column_int64(s, 2);
				r->violations = sqlite3_column_int64(s, 3);
				break;
			}
			first = 0;
		}
		sqlite3_finalize(s);
		s = NULL;
		if (rc != SQLITE_DONE)
			return rc;
		rc = SQLITE_OK;
	}
	return rc;
}

static int cmd_report(const char *path, int as_json)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *s = NULL;
	cJSON *root = NULL, *arr = NULL;
	int64_t tot_events = 0, tot_missing = 0, tot_dup = 0, tot_conf = 0, tot_rej = 0;
	int64_t dropped = 0, ndev = 0, resyncs = 0;
	int rc, exit_code = 1;

	rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_busy_timeout(db, 5000);
	if (rc == SQLITE_OK)
		rc = sqlite3_prepare_v2(db,
					"SELECT tenant, store, device, batches, duplicates, unackable "
					"FROM devices ORDER BY tenant, store, device",
					-1, &s, NULL);
	if (rc != SQLITE_OK) {
		fprintf(stderr, "scrm-central report: cannot read %s: %s\n", path,
			db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
		goto cleanup;
	}
	if (as_json) {
		root = cJSON_CreateObject();
		arr = cJSON_AddArrayToObject(root, "devices");
		if (!root || !arr)
			goto cleanup;
	}
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		struct dev_report r;

		memset(&r, 0, sizeof r);
		r.tenant = (const char *)sqlite3_column_text(s, 0);
		r.store = (const char *)sqlite3_column_text(s, 1);
		r.device = (const char *)sqlite3_column_text(s, 2);
		r.batches = sqlite3_column_int64(s, 3);
		r.duplicates = sqlite3_column_int64(s, 4);
		r.unackable = sqlite3_column_int64(s, 5);
		if (!r.tenant || !r.store || !r.device)
			continue;
		rc = report_device(db, &r);
		if (rc != SQLITE_OK) {
			fprintf(stderr, "scrm-central report: %s\n", sqlite3_errmsg(db));
			goto cleanup;
		}
		ndev++;
		tot_events += r.events;
		tot_missing += r.missing;
		tot_dup += r.duplicates;
		tot_conf += r.conflicts;
		tot_rej += r.rejected;
		if (as_json) {
			cJSON *d = cJSON_CreateObject(), *mr;
			int i;

			if (!d)
				goto cleanup;
			cJSON_AddItemToArray(arr, d);
			cJSON_AddStringToObject(d, "tenant", r.tenant);
			cJSON_AddStringToObject(d, "store", r.store);
			cJSON_AddStringToObject(d, "device", r.device);
			cJSON_AddNumberToObject(d, "events", (double)r.events);
			if (r.events) {
				cJSON_AddNumberToObject(d, "min_seq", (double)r.min_seq);
				cJSON_AddNumberToObject(d, "max_seq", (double)r.max_seq);
			} else {
				cJSON_AddNullToObject(d, "min_seq");
				cJSON_AddNullToObject(d, "max_seq");
			}
			cJSON_AddNumberToObject(d, "missing", (double)r.missing);
			mr = cJSON_AddArrayToObject(d, "missing_ranges");
			for (i = 0; mr && i < r.nranges; i++) {
				cJSON *pair = cJSON_CreateArray();

				cJSON_AddItemToArray(pair, cJSON_CreateNumber((double)r.ranges[i][0]));
				cJSON_AddItemToArray(pair, cJSON_CreateNumber((double)r.ranges[i][1]));
				cJSON_AddItemToArray(mr, pair);
			}
			cJSON_AddNumberToObject(d, "duplicates", (double)r.duplicates);
			cJSON_AddNumberToObject(d, "conflicts", (double)r.conflicts);
			cJSON_AddNumberToObject(d, "rejected", (double)r.rejected);
			cJSON_AddNumberToObject(d, "unackable", (double)r.unackable);
			cJSON_AddNumberToObject(d, "batches", (double)r.batches);
			cJSON_AddBoolToObject(d, "in_order", r.out_of_order == 0);
			cJSON_AddNumberToObject(d, "out_of_order", (double)r.out_of_order);
			cJSON_AddNumberToObject(d, "set_aside", (double)r.set_aside);
			cJSON_AddNumberToObject(d, "duplicate_orders", (double)r.duplicate_orders);
			cJSON_AddNumberToObject(d, "late", (double)r.late);
			cJSON_AddNumberToObject(d, "violations", (double)r.violations);
		} else {
			char minb[24] = "none", maxb[24] = "none";

			if (r.events) {
				snprintf(minb, sizeof minb, "%" PRId64, r.min_seq);
				snprintf(maxb, sizeof maxb, "%" PRId64, r.max_seq);
			}
			printf("tenant=%s store=%s device=%s events=%" PRId64 " min_seq=%s max_seq=%s"
			       " missing=%" PRId64 " duplicates=%" PRId64 " conflicts=%" PRId64
			       " rejected=%" PRId64 " unackable=%" PRId64 " batches=%" PRId64
			       " in_order=%s out_of_order=%" PRId64 " set_aside=%" PRId64
			       " duplicate_orders=%" PRId64 " late=%" PRId64 " violations=%" PRId64 "\n",
			       r.tenant, r.store, r.device, r.events, minb, maxb, r.missing,
			       r.duplicates, r.conflicts, r.rejected, r.unackable, r.batches,
			       r.out_of_order == 0 ? "yes" : "no", r.out_of_order, r.set_aside,
			       r.duplicate_orders, r.late, r.violations);
		}
	}
	if (rc != SQLITE_DONE) {
		fprintf(stderr, "scrm-central report: %s\n", sqlite3_errmsg(db));
		goto cleanup;
	}
	sqlite3_finalize(s);
	s = NULL;
	if (sqlite3_prepare_v2(db, "SELECT value FROM stats WHERE key='batches_dropped'", -1, &s,
			       NULL) == SQLITE_OK &&
	    sqlite3_step(s) == SQLITE_ROW)
		dropped = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	s = NULL;
	/* absent from databases of schema 1: none */
	if (sqlite3_prepare_v2(db, "SELECT count(*) FROM resync_requests", -1, &s, NULL) ==
		    SQLITE_OK &&
	    sqlite3_step(s) == SQLITE_ROW)
		resyncs = sqlite3_column_int64(s, 0);

	if (as_json) {
		cJSON *t = cJSON_AddObjectToObject(root, "totals");
		char *text;

		if (!t)
			goto cleanup;
		cJSON_AddNumberToObject(t, "devices", (double)ndev);
		cJSON_AddNumberToObject(t, "events", (double)tot_events);
		cJSON_AddNumberToObject(t, "missing", (double)tot_missing);
		cJSON_AddNumberToObject(t, "duplicates", (double)tot_dup);
		cJSON_AddNumberToObject(t, "conflicts", (double)tot_conf);
		cJSON_AddNumberToObject(t, "rejected", (double)tot_rej);
		cJSON_AddNumberToObject(t, "dropped_batches", (double)dropped);
		cJSON_AddNumberToObject(t, "resync_requests", (double)resyncs);
		text = cJSON_Print(root);
		if (!text)
			goto cleanup;
		printf("%s\n", text);
		cJSON_free(text);
	} else {
		printf("totals devices=%" PRId64 " events=%" PRId64 " missing=%" PRId64
		       " duplicates=%" PRId64 " conflicts=%" PRId64 " rejected=%" PRId64
		       " dropped_batches=%" PRId64 " resync_requests=%" PRId64 "\n",
		       ndev, tot_events, tot_missing, tot_dup, tot_conf, tot_rej, dropped, resyncs);
	}
	exit_code = fflush(stdout) == 0 ? 0 : 1;

cleanup:
	sqlite3_finalize(s);
	sqlite3_close(db);
	cJSON_Delete(root);
	return exit_code;
}

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

static void push_on_connect_fail(void *ctx, MQTTAsync_failureData5 *resp)
{
	(void)ctx;
	pthread_mutex_lock(&ps.m);
	ps.connect_failed = 1;
	snprintf(ps.why, sizeof ps.why, "code=%d reason=0x%02x %s", resp ? resp->code : 0,
		 resp ? (unsigned)resp->reasonCode : 0u,
		 resp && resp->message ? resp->message : "");
	push_signal();
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
	pthread_mutex_lock(&ps.m);
	ps.publish_failed = 1;
	snprintf(ps.why, sizeof ps.why, "code=%d reason=0x%02x %s", resp ? resp->code : 0,
		 resp ? (unsigned)resp->reasonCode : 0u,
		 resp && resp->message ? resp->message : "");
	push_signal();
}

/* Wait (main thread) until *flag or *fail_a or *fail_b is set, or the
 * monotonic deadline passes. Returns *flag. */
static int push_wait(const int *flag, const int *fail_a, const int *fail_b, int64_t deadline)
{
	int done;

	pthread_mutex_lock(&ps.m);
	while (!*flag && !*fail_a && !*fail_b && mono_ms() < deadline) {
		struct timespec ts;
		int64_t left = deadline - mono_ms();

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

static int cmd_push_main(const char *path, const char *tenant, const char *store,
			 int64_t timeout_ms)
{
	MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer5;
	MQTTAsync_connectOptions cc = MQTTAsync_connectOptions_initializer5;
	MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
	MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
	MQTTAsync_message msg = MQTTAsync_message_initializer;
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
	deadline = mono_ms() + timeout_ms;
	rc = MQTTAsync_connect(client, &cc);
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
	msg.payload = payload;
	msg.payloadlen = (int)len;
	msg.qos = 1;
	msg.retained = 0;
	ro.onSuccess5 = push_on_pub_ok;
	ro.onFailure5 = push_on_pub_fail;
	rc = MQTTAsync_sendMessage(client, topic, &msg, &ro);
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
				int64_t until = mono_ms() + 1500;

				while (MQTTAsync_isConnected(client) && mono_ms() < until)
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

/* ======================================================================
 * command line
 * ====================================================================== */

static const char usage_main[] =
	"usage: scrm-central run    --broker URI --ca FILE --db FILE [options]\n"
	"       scrm-central report --db FILE [--json]\n"
	"       scrm-central push   --broker URI --ca FILE --tenant T --store S [FILE|-]\n"
	"       scrm-central COMMAND --help\n"
	"\n"
	"Reference central side of the SCRM edge protocol v1 (docs/protocol.md).\n"
	"  run     store and ack event batches, decide coupon redemptions; with\n"
	"          --cache-dir, answer cache resync requests with snapshots\n"
	"  report  what the database holds, per device\n"
	"  push    publish one cache delta to a store\n";

static const char usage_run[] =
	"usage: scrm-central run --broker URI --ca FILE --db FILE [options]\n"
	"\n"
	"Subscribe to every device's scrm/v1/+/+/+/up/events, store each batch in one\n"
	"SQLite transaction (deduplicated by tenant, store, device, seq) and, after the\n"
	"commit, publish the ack to scrm/v1/{tenant}/{store}/{device}/down/ack.\n"
	"Logs logfmt lines to stderr. SIGTERM/SIGINT: finish, ack, exit 0.\n"
	"\n"
	"  --broker URI        ssl://HOST:PORT (MQTT 5 over TLS; host name verified)\n"
	"  --ca FILE           CA certificate(s) that sign the broker's certificate\n"
	"  --cert FILE         client certificate (with --key), if the broker wants one\n"
	"  --key FILE          client private key\n"
	"  --db FILE           SQLite database, created if missing\n"
	"  --share GROUP       subscribe as $share/GROUP/... (scale across consumers)\n"
	"  --client-id ID      MQTT client id (default scrm-central-<pid>)\n"
	"  --ready-file FILE   written (\"ready ...\") once the subscription is granted\n"
	"  --reject-kind KIND  reject every event of KIND (test hook; repeatable, max 8)\n"
	"  --strict            exit with status 3 on a protocol violation by a device (an event\n"
	"                      below a seq the device said was settled, not marked recovered);\n"
	"                      without it such an event is stored, counted and logged\n"
	"  --ack-window N      max publishes (acks and snapshot chunks) in flight, 1..64\n"
	"                      (default 10; also capped by the broker's Receive Maximum;\n"
	"                      chunks never take the last free one, acks go first)\n"
	"  -v, --verbose       debug logs (one line per batch and per chunk)\n"
	"  -h, --help          this text\n"
	"\n"
	"Customer cache (docs/protocol.md, \"Customer cache\"):\n"
	"  --cache-dir DIR     also subscribe to scrm/v1/+/+/+/up/cache/resync (shared\n"
	"                      like up/events with --share), record every valid request\n"
	"                      in the resync_requests table and answer it with a snapshot\n"
	"                      of DIR/<stream>.jsonl (the \"Snapshot file\" format: header\n"
	"                      line, then one record per line, sent as they are) on\n"
	"                      scrm/v1/{tenant}/{store}/{device}/down/cache/{stream}.\n"
	"                      Snapshot ids are <stream>-<version>-<hash of the file's\n"
	"                      identity, size and mtime>: stable while the file is, so a\n"
	"                      request naming the current id continues at from_chunk;\n"
	"                      any other id gets a new snapshot from chunk 0. A missing\n"
	"                      file is an empty stream at version 1 (one chunk, no\n"
	"                      records). DIR/forgotten.txt (one member id per line) is\n"
	"                      sent as \"forgotten\" in the last chunk of members.\n"
	"  --chunk-records N   records per chunk, 1..100000 (default 1000); a chunk is\n"
	"                      also never more than 1 MiB\n"
	"  --snapshot-delay-ms N  wait N ms between two chunks of a snapshot (test hook)\n"
	"  --drop-chunk K      do not send chunk K, once per device and snapshot id, to\n"
	"                      drive the agent's timeout and resume (test hook)\n"
	"\n"
	"Coupon verdicts (docs/protocol.md, \"Coupon verdicts\"): each new coupon_redeem\n"
	"event is decided once, in the transaction that stores it, kept in the\n"
	"redemptions table and published after the batch's ack, QoS 1, to\n"
	"scrm/v1/{tenant}/{store}/{device}/down/verdict. Rules, from the coupon and\n"
	"campaign records of DIR/coupons.jsonl (--cache-dir; signatures not checked),\n"
	"counting the tenant's earlier accepted redemptions in every store:\n"
	"unknown_coupon, already_spent (uses, default 1), and for a redemption without\n"
	"a coupon unknown_campaign, member_limit (per_member_limit), campaign_limit\n"
	"(total_limit; 0 = unlimited). Without --cache-dir every redemption is\n"
	"accepted. A redelivered redemption gets its stored verdict again.\n"
	"  --verdict-delay-ms N  publish each verdict N ms after its batch is stored,\n"
	"                      0..600000 (default 0; test hook; at shutdown pending\n"
	"                      verdicts go at once)\n"
	"\n"
	"Exit: 0 after a signal, 1 runtime error (e.g. database), 2 bad arguments.\n";

static const char usage_report[] =
	"usage: scrm-central report --db FILE [--json]\n"
	"\n"
	"Per device: events stored, min/max seq, missing seqs below the highest seen\n"
	"(rejected seqs are not missing), duplicate copies received, conflicts (same\n"
	"seq, different id), rejected events, and in_order=yes|no: whether first\n"
	"arrivals came in increasing seq order. Then a totals line, which also counts\n"
	"the cache resync requests received (resync_requests).\n"
	"\n"
	"  --db FILE   database written by 'scrm-central run'\n"
	"  --json      one JSON object {\"devices\":[...],\"totals\":{...}}\n"
	"  -h, --help  this text\n"
	"\n"
	"Exit: 0 ok, 1 cannot read the database, 2 bad arguments.\n";

static const char usage_push[] =
	"usage: scrm-central push --broker URI --ca FILE --tenant T --store S [options] [FILE|-]\n"
	"\n"
	"Publish one cache delta (docs/protocol.md, \"Delta\") read from FILE, or stdin\n"
	"if FILE is '-' or absent, to every agent of a store:\n"
	"scrm/v1/{tenant}/{store}/down/cache/{stream}, stream taken from the delta,\n"
	"QoS 1, not retained; waits for the broker's PUBACK. The bytes are sent as\n"
	"they are. Checked first: a JSON object with type \"delta\", stream, base,\n"
	"version (integers) and ops (an array); the rest (version > base, the ops,\n"
	"the 4 MiB limit) is left to the agents, so tests can push bad deltas.\n"
	"\n"
	"  --broker URI       ssl://HOST:PORT (MQTT 5 over TLS; host name verified)\n"
	"  --ca FILE          CA certificate(s) that sign the broker's certificate\n"
	"  --cert FILE        client certificate (with --key), if the broker wants one\n"
	"  --key FILE         client private key\n"
	"  --client-id ID     MQTT client id (default scrm-central-push-<pid>)\n"
	"  --tenant T         tenant of the store ([A-Za-z0-9_.-]{1,64})\n"
	"  --store S          store id ([A-Za-z0-9_.-]{1,64})\n"
	"  --timeout-ms N     give up connecting and waiting for the PUBACK after N ms\n"
	"                     (default 10000)\n"
	"  -h, --help         this text\n"
	"\n"
	"Prints \"published topic=... bytes=... puback_reason=0x..\" on success.\n"
	"Exit: 0 published, 1 not a delta / cannot read / broker failure, 2 bad arguments.\n";

static int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "scrm-central %s: error: ", cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n(see 'scrm-central %s --help')\n", cmd);
	return 2;
}

/* The value after a flag, or NULL (error printed) if there is none. */
static const char *flag_value(int argc, char **argv, int *i, const char *cmd)
{
	if (*i + 1 >= argc || argv[*i + 1][0] == '\0') {
		usage_error(cmd, "%s needs a value", argv[*i]);
		return NULL;
	}
	return argv[++*i];
}

/* An integer flag in min..max: 0, or 2 with the error printed. */
static int flag_int(int argc, char **argv, int *i, const char *cmd, int64_t min, int64_t max,
		    int64_t *out)
{
	const char *flag = argv[*i];
	const char *val = flag_value(argc, argv, i, cmd);
	char *end = NULL;
	long long v;

	if (!val)
		return 2;
	errno = 0;
	v = strtoll(val, &end, 10);
	if (errno || end == val || *end || v < min || v > max)
		return usage_error(cmd, "%s: '%s' is not a number in %lld..%lld", flag, val,
				   (long long)min, (long long)max);
	*out = (int64_t)v;
	return 0;
}

static int readable(const char *cmd, const char *flag, const char *path)
{
	if (access(path, R_OK) != 0) {
		usage_error(cmd, "%s: cannot read %s: %s", flag, path, strerror(errno));
		return 0;
	}
	return 1;
}

/* The broker flags of run and push: where the value goes, or NULL. */
static const char **broker_flag(const char *a, struct run_opts *o)
{
	if (!strcmp(a, "--broker"))
		return &o->broker;
	if (!strcmp(a, "--ca"))
		return &o->ca;
	if (!strcmp(a, "--cert"))
		return &o->cert;
	if (!strcmp(a, "--key"))
		return &o->key;
	if (!strcmp(a, "--client-id"))
		return &o->client_id;
	return NULL;
}

/* Checks of the broker flags, and the default client id
 * (<id_prefix>-<pid>). 0, or 2 with the error printed. */
static int broker_opts_check(const char *cmd, struct run_opts *o, const char *id_prefix)
{
	static char default_id[64];

	if (!o->broker)
		return usage_error(cmd, "--broker is required");
	if (strncmp(o->broker, "ssl://", 6) != 0 && strncmp(o->broker, "mqtts://", 8) != 0)
		return usage_error(cmd, "--broker: '%s' must be ssl://HOST:PORT (TLS only)",
				   o->broker);
	if (!o->ca)
		return usage_error(cmd, "--ca is required");
	if (!o->cert != !o->key)
		return usage_error(cmd, "%s needs %s", o->cert ? "--cert" : "--key",
				   o->cert ? "--key" : "--cert");
	if (!readable(cmd, "--ca", o->ca) || (o->cert && !readable(cmd, "--cert", o->cert)) ||
	    (o->key && !readable(cmd, "--key", o->key)))
		return 2;
	if (!o->client_id) {
		snprintf(default_id, sizeof default_id, "%s-%ld", id_prefix, (long)getpid());
		o->client_id = default_id;
	}
	return 0;
}

static int cmd_run(int argc, char **argv)
{
	struct run_opts *o = &g.opt;
	int64_t n;
	int i, cache_flag = 0;

	o->ack_window = ACK_WINDOW_DEFAULT;
	o->chunk_records = CHUNK_RECORDS_DEFAULT;
	o->drop_chunk = -1;
	for (i = 2; i < argc; i++) {
		const char *a = argv[i];
		const char **dst = broker_flag(a, o);

		if (dst) {
			/* --broker, --ca, --cert, --key, --client-id */
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			fputs(usage_run, stdout);
			return 0;
		} else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
			g_log_min = LVL_DEBUG;
			continue;
		} else if (!strcmp(a, "--strict")) {
			o->strict = 1;
			continue;
		} else if (!strcmp(a, "--db")) {
			dst = &o->db;
		} else if (!strcmp(a, "--share")) {
			dst = &o->share;
		} else if (!strcmp(a, "--ready-file")) {
			dst = &o->ready_file;
		} else if (!strcmp(a, "--cache-dir")) {
			dst = &o->cache_dir;
		} else if (!strcmp(a, "--reject-kind")) {
			const char *k = flag_value(argc, argv, &i, "run");

			if (!k)
				return 2;
			if (o->n_reject_kinds >= MAX_REJECT_KINDS)
				return usage_error("run", "--reject-kind: at most %d", MAX_REJECT_KINDS);
			o->reject_kinds[o->n_reject_kinds++] = k;
			continue;
		} else if (!strcmp(a, "--ack-window")) {
			if (flag_int(argc, argv, &i, "run", 1, ACK_SLOTS, &n))
				return 2;
			o->ack_window = (int)n;
			continue;
		} else if (!strcmp(a, "--chunk-records")) {
			if (flag_int(argc, argv, &i, "run", 1, CHUNK_RECORDS_MAX, &n))
				return 2;
			o->chunk_records = (int)n;
			cache_flag = 1;
			continue;
		} else if (!strcmp(a, "--snapshot-delay-ms")) {
			if (flag_int(argc, argv, &i, "run", 0, SNAPSHOT_DELAY_MAX_MS,
				     &o->snapshot_delay_ms))
				return 2;
			cache_flag = 1;
			continue;
		} else if (!strcmp(a, "--verdict-delay-ms")) {
			if (flag_int(argc, argv, &i, "run", 0, VERDICT_DELAY_MAX_MS,
				     &o->verdict_delay_ms))
				return 2;
			continue;
		} else if (!strcmp(a, "--drop-chunk")) {
			if (flag_int(argc, argv, &i, "run", 0, (int64_t)MAX_SAFE_INT, &o->drop_chunk))
				return 2;
			cache_flag = 1;
			continue;
		} else {
			return usage_error("run", "unknown option '%s'", a);
		}
		if (!(*dst = flag_value(argc, argv, &i, "run")))
			return 2;
	}
	if (!o->broker)
		return usage_error("run", "--broker is required");
	if (!o->ca)
		return usage_error("run", "--ca is required");
	if (!o->db)
		return usage_error("run", "--db is required");
	if (o->share && (strpbrk(o->share, "/+#") || !*o->share))
		return usage_error("run", "--share: '%s' must not contain '/', '+' or '#'",
				   o->share);
	if (cache_flag && !o->cache_dir)
		return usage_error("run", "--chunk-records, --snapshot-delay-ms and --drop-chunk "
					  "need --cache-dir");
	if (o->cache_dir) {
		struct stat st;

		if (stat(o->cache_dir, &st) != 0 || !S_ISDIR(st.st_mode) ||
		    access(o->cache_dir, R_OK | X_OK) != 0)
			return usage_error("run", "--cache-dir: %s is not a readable directory",
					   o->cache_dir);
	}
	if (broker_opts_check("run", o, "scrm-central"))
		return 2;
	return cmd_run_main();
}

static int cmd_report_args(int argc, char **argv)
{
	const char *db = NULL;
	int as_json = 0, i;

	for (i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			fputs(usage_report, stdout);
			return 0;
		} else if (!strcmp(argv[i], "--json")) {
			as_json = 1;
		} else if (!strcmp(argv[i], "--db")) {
			if (!(db = flag_value(argc, argv, &i, "report")))
				return 2;
		} else {
			return usage_error("report", "unknown option '%s'", argv[i]);
		}
	}
	if (!db)
		return usage_error("report", "--db is required");
	if (access(db, R_OK) != 0) {
		fprintf(stderr, "scrm-central report: cannot read %s: %s\n", db, strerror(errno));
		return 1;
	}
	return cmd_report(db, as_json);
}

static int cmd_push(int argc, char **argv)
{
	struct run_opts *o = &g.opt;
	const char *tenant = NULL, *store = NULL, *file = NULL;
	int64_t timeout_ms = 10000;
	int i;

	for (i = 2; i < argc; i++) {
		const char *a = argv[i];
		const char **dst = broker_flag(a, o);

		if (dst) {
			/* --broker, --ca, --cert, --key, --client-id */
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			fputs(usage_push, stdout);
			return 0;
		} else if (!strcmp(a, "--tenant")) {
			dst = &tenant;
		} else if (!strcmp(a, "--store")) {
			dst = &store;
		} else if (!strcmp(a, "--timeout-ms")) {
			if (flag_int(argc, argv, &i, "push", 100, 600000, &timeout_ms))
				return 2;
			continue;
		} else if (a[0] == '-' && a[1] != '\0') {
			return usage_error("push", "unknown option '%s'", a);
		} else {
			if (file)
				return usage_error("push", "one delta file at a time ('%s' and '%s')",
						   file, a);
			file = a;
			continue;
		}
		if (!(*dst = flag_value(argc, argv, &i, "push")))
			return 2;
	}
	if (!tenant || ident__problem(tenant))
		return usage_error("push", "--tenant: %s", tenant ? ident__problem(tenant) : "is required");
	if (!store || ident__problem(store))
		return usage_error("push", "--store: %s", store ? ident__problem(store) : "is required");
	if (broker_opts_check("push", o, "scrm-central-push"))
		return 2;
	return cmd_push_main(file ? file : "-", tenant, store, timeout_ms);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fputs(usage_main, stderr);
		return 2;
	}
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
		fputs(usage_main, stdout);
		return 0;
	}
	if (!strcmp(argv[1], "run"))
		return cmd_run(argc, argv);
	if (!strcmp(argv[1], "report"))
		return cmd_report_args(argc, argv);
	if (!strcmp(argv[1], "push"))
		return cmd_push(argc, argv);
	fprintf(stderr, "scrm-central: unknown command '%s'\n%s", argv[1], usage_main);
	return 2;
}
