/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outbox_int: what the outbox's own files share (outbox.h and ledger.h are
 * the module's interface; outside agent/lib/outbox/ only its unit tests
 * include this). The handle,
 * the SQL the files agree on, and the internal calls between them:
 *   outbox.c   open/close, quarantine and follow, the SQLite helpers
 *   schema.c   all DDL and migrations;
 *              schema_sql.h the SQL shared with readers and salvage
 *   append.c   capture's group-commit target and the rules a captured
 *              row implies (attribution, reco and redemption ledgers)
 *   receipts.c which sale an order_id already names (pending or kept)
 *   clock.c    each event's clock_ok
 *   bounded.c  size cap, eviction, alarms, health, disk reserve
 *   deliver.c  batches, acks, rejects, stats
 *   setaside.c dead letter
 *   ledger.c   the local ledgers (redemptions, reco_shown, member_activity,
 *              link, settings) and the queries other modules run on them
 *   ledger_read.c  a reader of member_activity for another module (alone:
 *              needs nothing else of the outbox)
 *   salvage.c  rows copied out of a damaged file (salvage.h)
 */
#ifndef SCRM_OUTBOX_INT_H
#define SCRM_OUTBOX_INT_H

#include "outbox.h"
#include "seqmap.h"

#include <sqlite3.h>
#include <stdint.h>

/* Clock trust (clock.c and docs/protocol.md, clock_ok). */
#define CLOCK_STEP_MS 60000              /* offset change tolerated, and the floor after a reboot */
#define CLOCK_DRIFT_PPM 500              /* plus this share of the mono time elapsed (the kernel's slew limit) */
#define CLOCK_CONFIRM_MS (10LL * 60000)  /* a new offset kept this long (mono) is a correction */
#define CLOCK_MAX_MS (1LL << 53)         /* wall and mono beyond this are nonsense: never trusted */
/* The clock state, in struct clock_state's order: max_wall_ms from the
 * `totals` view t (schema v7: the newest row carries it), the anchor from
 * `device` d. */
#define CLOCK_COLUMNS "t.max_wall_ms, d.clock_boot, d.clock_offset_ms, d.clock_mono_ms, d.clock_cand_boot," \
		      " d.clock_cand_offset_ms, d.clock_cand_mono_ms"

/* Outside the libscrm target (unit tests compiling the outbox alone). */
#ifndef SCRM_BUILD_EPOCH
#define SCRM_BUILD_EPOCH 0
#endif

#define XSTR_(x) #x
#define XSTR(x) XSTR_(x)
#define FRESH_SUFFIX ".fresh"
/* A POS handle's automatic checkpoint threshold, WAL pages (outbox.c):
 * twice SQLite's default, which the daemon's handle keeps, so the daemon
 * checkpoints first; at 4 KiB pages still under the 8 MiB of WAL the size
 * cap tolerates (bounded.c, WAL_NORMAL_BYTES). */
#define POS_AUTOCHECKPOINT_PAGES 1900
/* Acknowledged events leave the queue in transactions of at most this
 * many rows (deliver.c), with a pause between two: each moves receipts and
 * members' sales to their ledgers, and a till waits for the write lock
 * while one commits. Measured with scrm-bench-sync (a till recording while
 * the agent drains 50k): 500 rows at once put the till's p99.9 at 23-25 ms,
 * 64 rows 14-16 ms, 64 rows and the pause 6 ms (the drain: 30k -> 20k
 * events/s; 128 rows: 7 ms and 30k/s). Since then the pause is taken only
 * while a till waits (turn.c): the drain alone went from 27k to 33-37k
 * events/s, with a till recording from 10-11k to 13-17k, the till's p99.9
 * unchanged at 6 ms (an ack without fsync, deliver.c, left it there too;
 * the agent at Nice=10, scrm-agent.service, brought it to 5 ms). An ack
 * applied in part is still true: the rest is sent again and acked again
 * (central deduplicates by seq, protocol.md). */
#define ACK_CHUNK_ROWS 64
/* between two chunks when outbox.turn cannot be mapped: room for a till */
#define ACK_YIELD_US 300

/* The SQL that tells kinds apart, made from kinds.def (schema.c), the same
 * text the literals it replaced had (unit_outbox checks):
 *   paid         ('purchase', 'return', 'coupon_redeem'): never evicted
 *   evictable    kind <> 'purchase' AND kind <> 'return' AND ...: the
 *                same set as a condition; the partial index's WHERE (schema
 *                v8: a NOT IN list made SQLite build a temporary table for
 *                every insert to test it)
 *   evict_class  CASE kind WHEN 'reco_shown' THEN 0 ... ELSE 2 END: the
 *                eviction order (browsing, then scans, then any other kind
 *                not paid for); the partial index outbox_evictable is on it
 *   keyed        ('purchase', 'return'): the kinds with a receipt (orders)
 *   order_key    what identifies a sale for retries, read from the
 *                canonical body (?1 kind, ?2 body): a purchase's order_id,
 *                a return's return_id */
struct outbox__kind_sql {
	char paid[200];
	char evictable[300];
	char keyed[200];
	char evict_class[400];
	char order_key[400];
};
void outbox__kind_sql(struct outbox__kind_sql *k);
/* kinds.def's paid column; the receipt's key field (NULL: not receipted). */
int outbox__kind_paid(const char *kind);
const char *outbox__kind_key(const char *kind);

struct outbox {
	sqlite3 *db;
	char device_id[65];
	char *dir, *path;       /* owned */
	char *reserve;          /* owned: <dir>/outbox.reserve (outbox__reserve_ensure) */
	int busy_ms;
	int64_t busy_since_us; /* when the current wait for the write lock began (busy_wait) */
	int lock_fd;            /* <dir>/outbox.lock (quarantine.h), -1 if unavailable */
	/* owned mapping of <dir>/outbox.turn (NULL: unavailable): the mono us
	 * at which a POS handle last polled for the write lock, 0 once it
	 * has it (turn.c) */
	int64_t *turn;
	int daemon;             /* opened by outbox__open_checked: never stamps turn */
	int waited;             /* this handle stamped turn since its last write began */
	uint64_t dev, ino;      /* the file this connection opened */
	int corrupt;            /* a SQLite call reported the file damaged */
	char quarantined[4200]; /* where this open moved a damaged file, "" if it did not */
	unsigned generation;    /* files this handle has followed (outbox__generation) */
	int reserve_released;   /* released by this handle, disk_full not raised yet */
	int64_t disk_reserve;   /* setting disk_reserve_bytes, as read_limits last read it */
	int64_t attrib_window;  /* setting attribution_window_ms, as read_limits last read it */
	char full_msg[480], drop_msg[480], conflict_msg[480];
	struct outbox__kind_sql ksql; /* filled by connect */
	/* owned: the index of pending receipts (receipts.c), hash of (kind,
	 * key) -> seq, of the keyed rows up to seq rc_seen */
	seqmap rc;
	int64_t rc_seen;
	sqlite3_stmt *get_dev, *put_dev, *ins, *read, *del, *ack_meta, *oldest, *rej_copy, *usage, *limits,
		*evict, *drop_add, *alarm_up, *order_get, *order_key_of, *rc_new, *rc_row, *rm_orders,
		*rm_activity, *rm_usage, *rm_device, *ack_chunk, *who, *attrib, *attrib_any, *led_reco, *led_redeem;
};

/* ---- outbox.c: the SQLite helpers and the file ---- */
/* A failed SQLite call: marks the handle corrupt when the file is damaged. */
int outbox__fail(outbox *ob, int rc, const char *what);
int outbox__exec(outbox *ob, const char *sql);
void outbox__rollback(outbox *ob);
/* Reopen onto a fresh file another process swapped in (no lock held). */
int outbox__follow(outbox *ob);
/* The shared lock for a write, on the file now at our path. */
int outbox__hold(outbox *ob);
/* The file turned out damaged during a write: quarantine it, follow. */
int outbox__recover(outbox *ob);
/* After a failed read: 1 if the file was damaged and is now replaced. */
int outbox__healed(outbox *ob, int rc);
int outbox__query_json(outbox *ob, const char *sql, int bind, sbuf *out, int64_t *n, const char *what);
/* A statement prepared for one use (the caller finalizes it); a failure is
 * reported as `what`. */
int outbox__prepare(outbox *ob, const char *sql, sqlite3_stmt **st, const char *what);
/* The one row `sql` reads, stepped onto in *q (the caller finalizes *q,
 * also after a failure, which is reported as `what`). */
int outbox__one_row(outbox *ob, const char *sql, sqlite3_stmt **q, const char *what);
/* Integer columns from..from+n-1 of q's row into *to[0..n-1], in the order
 * the SELECT names them. */
void outbox__columns_i64(sqlite3_stmt *q, int from, int64_t *const *to, size_t n);

/* ---- schema.c ---- */
int outbox__migrate(outbox *ob, const char *device_id);

/* ---- clock.c ---- */
#define CLOCK_BOOT_CAP 40 /* a boot id is 36 characters */
struct clock_state {
	int64_t last_wall;            /* device.max_wall_ms */
	char boot[CLOCK_BOOT_CAP];    /* the anchor's boot id, "" = none yet */
	int64_t offset, mono;         /* its wall - mono, and its mono */
	char cand_boot[CLOCK_BOOT_CAP]; /* a step waiting for confirmation, "" = none */
	int64_t cand_offset, cand_mono; /* its offset, and the mono it was first seen at */
	int synced;                   /* platform__clock_synced(), asked at most once; CLOCK_UNASKED */
};
#define CLOCK_UNASKED 2
void outbox__clock_load(sqlite3_stmt *q, int col, struct clock_state *c);
int outbox__clock_judge(struct clock_state *c, int64_t wall, int64_t mono, const char *boot, int64_t trusted_after_ms);

/* ---- turn.c: a till waiting for the write lock goes first ---- */

void outbox__turn_open(outbox *ob);
void outbox__turn_close(outbox *ob);
/* busy_wait: a POS handle is polling for the write lock (now_us: mono). */
void outbox__turn_wait(outbox *ob, int64_t now_us);
/* The write lock is this handle's (after BEGIN IMMEDIATE). */
void outbox__turn_taken(outbox *ob);
/* Between two of the daemon's write transactions (ack chunks). */
void outbox__yield_to_tills(outbox *ob);

/* ---- receipts.c ---- */

/* Index the keyed rows above the last seen, up to last_seq (in a write
 * transaction); pending: the events in the queue (when to start over). */
int outbox__receipts_catch_up(outbox *ob, int64_t last_seq, int64_t pending);
int outbox__receipts_add(outbox *ob, const char *kind, const char *key, int64_t seq);
/* The receipt r's key already names (pending or kept): *found = 1 with r
 * set as outbox__row says (existing, or refused SCRM_E_CONFLICT). */
int outbox__receipt_find(outbox *ob, outbox__row *r, const char *key, const unsigned char digest[OUTBOX_DIGEST_BYTES],
			 int *found);
/* r's receipt key: r->key, else read from the body into *owned (the
 * caller's to sqlite3_free); *key is NULL when it has none. */
int outbox__receipt_key(outbox *ob, const outbox__row *r, const char **key, char **owned);
/* After a rollback: what the index saw may be reused. */
void outbox__receipts_forget(outbox *ob);
void outbox__receipts_free(outbox *ob);

/* ---- append.c ---- */
int outbox__append_locked(outbox *ob, outbox__row *rows, size_t n, int64_t trusted_after_ms);

/* ---- bounded.c ---- */
int outbox__alarm_raise_db(sqlite3 *db, const char *code, const char *detail, int64_t now_ms);
void outbox__limits_of(sqlite3_stmt *q, int col, int64_t *max, int64_t *reserve);
int outbox__read_limits(outbox *ob, int64_t *max, int64_t *reserve);
int outbox__read_usage(outbox *ob, int64_t *bytes);
int outbox__raise_alarm(outbox *ob, const char *code, const char *detail, int64_t now_ms);
int outbox__count_dropped(outbox *ob, const char *kind, int64_t bytes, int64_t now_ms);
int outbox__raise_dropped(outbox *ob, int64_t now_ms);
int outbox__evict(outbox *ob, int64_t want, int64_t before, int all_or_nothing, int64_t now_ms, int64_t *freed);
void outbox__central_state(outbox *ob, char *out, size_t cap);
int64_t outbox__wal_growth(outbox *ob);
int outbox__disk_nearly_full(outbox *ob);
int outbox__release_reserve(outbox *ob, int rc);
void outbox__note_reserve_released(outbox *ob);

/* ---- deliver.c ---- */
/* Take the rows lo..hi out of the queue (ack, rejection, eviction), inside
 * the caller's write transaction: their receipts go to orders, members'
 * sales to member_activity, their size to usage.removed_*, and the
 * newest row's counters to device (schema v7). *deleted = rows removed. */
int outbox__remove(outbox *ob, int64_t lo, int64_t hi, int64_t *deleted);

/* ---- setaside.c ---- */
int outbox__set_aside(outbox *ob, int64_t seq, const char *reason, const char *detail, int64_t bytes);

#endif
