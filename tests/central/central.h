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
 *
 * central.h is private to scrm-central (the .c files beside it): its limits,
 * the types its modules share, the one central `g`, and what each module
 * offers the others. scrm-central stays independent of agent/lib: only the
 * id rule (agent/lib/core/ident.c) is shared.
 */
#ifndef SCRM_CENTRAL_H
#define SCRM_CENTRAL_H

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

#include "testkit.h" /* clocks, TCP_NODELAY, struct sbuf: shared with the harness and cachegen */
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

enum { LVL_DEBUG, LVL_INFO, LVL_WARN, LVL_ERROR };

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

/* The streams of protocol.md "Customer cache", in resync priority order (cache.c). */
extern const char *const cache_streams[7];
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

struct central {
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
};

/* The one central (run.c). */
extern struct central g;

struct event_view {
	int64_t seq, wall_ms, mono_ms;
	int has_mono, clock_ok; /* clock_ok: -1 absent, 0, 1 */
	const char *id, *kind, *boot;
	const cJSON *body;
};

enum store_result { STORED_NEW, STORED_DUP, STORED_CONFLICT, STORE_ERROR };

struct rejection {
	int64_t seq;
	char reason[REASON_MAX];
};

/* The verdicts of one batch: decided (or found again) inside its
 * transaction, queued for publishing only once it is committed. */
struct verdict_batch {
	struct pending_verdict *head, **tail;
	uint64_t accepted, rejected, redelivered;
};

/* util.c */
extern int g_log_min;
void log_at(int lvl, const char *msg, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
const char *lq(char *buf, size_t size, const char *s);
void sb_json_str(struct sbuf *b, const char *s);

/* db.c */
void db_close(void);
int db_open(const char *path);
int db_step(sqlite3_stmt *s);
void db_add_stat(const char *key, int64_t n);

/* events.c */
const char *take_ident(const char *p, char *out);
int parse_topic(const char *topic, struct ident *id, const char *suffix, char *why, size_t n);
int topic_ends_with(const char *topic, const char *suffix);
int json_int64(const cJSON *it, int64_t *out);
int opt_string(const cJSON *root, const char *name, size_t max, const char **out);
int event_validate(const cJSON *ev, struct event_view *v, char *reason, size_t rlen);
void bind_ident(sqlite3_stmt *s, const struct ident *id, int64_t seq);
enum store_result event_store(const struct ident *id, const struct event_view *v, int64_t arrival, int64_t now);
int reject_store(const struct ident *id, int64_t seq, const char *reason, const cJSON *ev, int64_t now);

/* batch.c */
int peer_warns_left(void);
int json_parse_strict(const char *payload, size_t len, cJSON **out, char *why, size_t wlen);
void batch_drop(const char *topic, const char *why);
void batch_handle(const char *topic, const char *payload, size_t len);

/* ack.c */
void ack_queue(char *topic, struct sbuf *payload);
void ack_pop(void);
void *slot_context(int idx, uint32_t gen);
void slot_complete(void *ctx, uint64_t *counter);
void on_chunk_ok(void *ctx, MQTTAsync_successData5 *resp);
void on_chunk_fail(void *ctx, MQTTAsync_failureData5 *resp);
int slot_take(int is_chunk, uint32_t *gen);
void slot_release(int idx);
void acks_flush(void);
void slots_reclaim(void);
int slots_in_use(void);

/* cache.c */
int stream_find(const char *name);
int64_t mtime_ns(const struct stat *st);
const char *line_trim(const char *s, size_t n, size_t *out_len);
void cache_path(char *buf, size_t size, const char *name, const char *ext);
int header_parse(const char *s, size_t n, int stream, int64_t *version, char *why, size_t wlen);
void jobs_free_all(void);
void snapshots_pump(void);
int64_t snapshots_due_in(void);
void resync_handle(const char *topic, const char *payload, size_t len);

/* verdict.c */
void catalogue_free(struct coupon_catalogue *c);
int redemption_handle(const struct ident *id, const struct event_view *v, enum store_result res, int64_t now,
		      struct verdict_batch *vb);
void verdict_list_free(struct pending_verdict *pv);
void verdict_pop(void);
void verdicts_enqueue(struct verdict_batch *vb);
void verdict_query_handle(const char *topic, const char *payload, size_t len);
void verdicts_flush(int now_all);
int64_t verdicts_due_in(void);

/* mqtt.c */
int on_message(void *ctx, char *topic, int topic_len, MQTTAsync_message *m);
void on_connection_lost(void *ctx, char *cause);
void on_connected(void *ctx, char *cause);
void on_connect_ok(void *ctx, MQTTAsync_successData5 *resp);
void on_connect_fail(void *ctx, MQTTAsync_failureData5 *resp);
void on_subscribe_ok(void *ctx, MQTTAsync_successData5 *resp);
void on_subscribe_fail(void *ctx, MQTTAsync_failureData5 *resp);
int on_tls_error(const char *str, size_t len, void *ctx);

/* run.c */
void wake_main(void);
int cmd_run_main(void);

/* report.c */
int cmd_report(const char *path, int as_json);

/* push.c */
int cmd_push_main(const char *path, const char *tenant, const char *store, int64_t timeout_ms);

#endif
