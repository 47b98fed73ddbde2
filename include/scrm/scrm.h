/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libscrm: the store-side capture API of the SCRM edge agent.
 *
 * A POS program opens a store (a directory holding the durable outbox) and
 * records purchases, returns and member scans. Every record call validates
 * its input, assigns an event id (UUIDv7) and the next per-device sequence
 * number, and returns only once the event is durably committed (SQLite WAL,
 * synchronous=FULL). The capture path never touches the network: the
 * scrm-agent daemon ships the outbox to the central system on its own.
 *
 * Threads: a scrm_store handle may be shared by any number of threads; calls
 * made concurrently are group-committed (many events, one fsync). Several
 * processes (POS, daemon, scrmctl) may open the same store directory at once.
 *
 * Errors: functions return SCRM_OK (0) or a negative scrm_err. The message of
 * the last failure on the calling thread, naming the field and the reason, is
 * available from scrm_errmsg().
 *
 * Money is in minor units (cents) as int64; times are int64 milliseconds.
 */
#ifndef SCRM_SCRM_H
#define SCRM_SCRM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define SCRM_API __attribute__((visibility("default")))
#else
#define SCRM_API
#endif

/* One list, two uses: the enum below and scrm_strerror(). Values are part of
 * the ABI: never renumber, only append. */
#define SCRM_ERRORS(X)                                                        \
	X(OK, 0, "success")                                                   \
	X(E_INVALID, -1, "invalid input")                                     \
	X(E_NOMEM, -2, "out of memory")                                       \
	X(E_IO, -3, "I/O error")                                              \
	X(E_DISK_FULL, -4, "disk full")                                       \
	X(E_BUSY, -5, "store busy (locked by another process for too long)")  \
	X(E_CORRUPT, -6, "store file is corrupt")                             \
	X(E_MISMATCH, -7, "store belongs to another device")                  \
	X(E_TOO_BIG, -8, "payload too large")                                 \
	X(E_NOT_FOUND, -9, "not found")                                       \
	X(E_CRYPTO, -10, "cryptographic failure")                             \
	X(E_CONFIG, -11, "invalid configuration")                             \
	X(E_CLOSED, -12, "store is closed")                                   \
	X(E_INTERNAL, -13, "internal error")                                  \
	X(E_REFUSED, -14, "refused by a business rule")                       \
	X(E_CONFLICT, -15, "conflicts with an event already recorded")

typedef enum scrm_err {
#define SCRM__ENUM(name, val, text) SCRM_##name = val,
	SCRM_ERRORS(SCRM__ENUM)
#undef SCRM__ENUM
} scrm_err;

/* Static text for an error code; never NULL. */
SCRM_API const char *scrm_strerror(int err);

/* Detail of the last failed call on this thread ("lines[2].qty: must be > 0
 * on a purchase"). Borrowed, valid until the next libscrm call on this
 * thread. Empty string if none. */
SCRM_API const char *scrm_errmsg(void);

/* Library version, "MAJOR.MINOR.PATCH". */
SCRM_API const char *scrm_version(void);

/* ---- Store ---------------------------------------------------------- */

typedef struct scrm_store scrm_store;

typedef struct scrm_store_options {
	/* Device id this store belongs to: [A-Za-z0-9_.-], 1..64 chars, not
	 * "up" or "down" (words of the topic tree, docs/protocol.md).
	 * Required when the store is created; when opening an existing store
	 * it may be NULL, otherwise it must match (SCRM_E_MISMATCH). Copied. */
	const char *device_id;
	/* How long a capture waits for a lock held by another process, ms.
	 * 0 = default (5000). */
	int busy_timeout_ms;
} scrm_store_options;

/* Open (creating if needed) the store in directory `dir` (borrowed; created
 * with mode 0700 if missing). `opts` borrowed, may be NULL to open an
 * existing store. On success *out owns a handle to release with
 * scrm_store_close(). */
SCRM_API int scrm_store_open(const char *dir, const scrm_store_options *opts,
			     scrm_store **out);

/* Close and free; NULL is a no-op. No call may be in progress on it. */
SCRM_API void scrm_store_close(scrm_store *store);

/* Device id of the store. Borrowed, valid while the store is open. */
SCRM_API const char *scrm_store_device_id(const scrm_store *store);

/* ---- Events --------------------------------------------------------- */

/* Result of a successful capture. */
typedef struct scrm_receipt {
	char event_id[37]; /* UUIDv7, canonical text form */
	int64_t seq;       /* per-device sequence number, 1, 2, 3, ... */
	int64_t wall_ms;   /* wall clock at capture, Unix ms */
} scrm_receipt;

typedef struct scrm_line {
	const char *sku;          /* required, 1..64 printable chars */
	int64_t qty;              /* > 0 */
	int64_t unit_price;       /* minor units, >= 0 */
	int64_t discount;         /* minor units, 0 <= discount <= qty*unit_price */
} scrm_line;

/* All strings borrowed for the duration of the call. */
typedef struct scrm_purchase {
	const char *order_id;     /* required, unique per POS, 1..64 chars */
	const scrm_line *lines;   /* 1..1000 lines */
	size_t n_lines;
	int64_t discount;         /* order-level discount, minor units, >= 0 */
	int64_t total;            /* = sum(qty*unit_price - discount) - discount */
	const char *currency;     /* ISO 4217, three upper-case letters */
	const char *payment;      /* "cash", "card", "mobile", "voucher", "mixed", "other" */
	const char *member_id;    /* optional (NULL) */
	const char *guide_id;     /* optional (NULL) */
	const char *const *coupons; /* optional coupon codes, 0..20 */
	size_t n_coupons;
	/* optional: the recommendation (scrm_recommend's reco_id) the sale
	 * followed. When NULL and member_id is set, the store fills guide_id and
	 * reco_id itself from the latest recommendation shown to that member on
	 * this device within attribution.window_ms (docs/protocol.md). */
	const char *reco_id;
} scrm_purchase;

typedef struct scrm_return {
	const char *return_id;    /* required, unique per POS */
	const char *order_id;     /* the original order, required */
	const scrm_line *lines;   /* 1..1000 returned lines (positive qty) */
	size_t n_lines;
	int64_t total;            /* refund amount, >= 0, = sum of line amounts */
	const char *currency;
	const char *refund_method;/* same set as payment */
	const char *reason;       /* optional, free text up to 200 chars */
	const char *member_id;    /* optional */
	const char *guide_id;     /* optional */
} scrm_return;

typedef struct scrm_member_scan {
	const char *member_id;    /* required */
	const char *method;       /* "qr", "card", "phone", "manual" */
	const char *guide_id;     /* optional */
} scrm_member_scan;

/* Record an event. Returns after the event is durably committed, filling
 * *receipt (may be NULL). On failure nothing is written. Any thread.
 *
 * Retries are safe: a purchase is identified by its order_id and a return by
 * its return_id on this device. Recording one again with the same content
 * (a till that timed out or crashed after the commit and retries) writes
 * nothing and returns SCRM_OK with the FIRST receipt (same event id, seq and
 * wall_ms), so one sale is never two. The same order_id (return_id) with
 * different content is refused with SCRM_E_CONFLICT ("order_id: ... was
 * already recorded ... with different content"), nothing written: a new sale
 * needs a new order_id. Receipts are kept 90 days; order_id and return_id
 * must be unique per device at least that long.
 *
 * When the commit itself fails (SCRM_E_IO: the disk refused the fsync) the
 * outcome is unknown: the event may be on disk all the same and be sent
 * after a restart. Retry the sale with the same order_id (return_id): if it
 * was committed, the retry returns its receipt; if not, it records it now.
 * Either way central gets it once. */
SCRM_API int scrm_record_purchase(scrm_store *store, const scrm_purchase *p,
				  scrm_receipt *receipt);
SCRM_API int scrm_record_return(scrm_store *store, const scrm_return *r,
				scrm_receipt *receipt);
SCRM_API int scrm_record_member_scan(scrm_store *store,
				     const scrm_member_scan *s,
				     scrm_receipt *receipt);

/* Record an event given as JSON text: {"kind":"purchase", ...fields as in
 * docs/protocol.md}. `json` borrowed, need not be NUL-terminated. Same
 * validation and durability as the typed calls. */
SCRM_API int scrm_record_json(scrm_store *store, const char *json, size_t len,
			      scrm_receipt *receipt);

/* The kinds scrm_record_json accepts, as text for a help or a message
 * ("purchase, return or member_scan"; from the library's one list of event
 * kinds, so a tool's help follows the library it runs with). Static. */
SCRM_API const char *scrm_record_kinds(void);

/* ---- Batch capture (imports) ----------------------------------------- */

/* One event of a batch: exactly one of purchase, ret, scan or json set
 * (json: as scrm_record_json, json_len bytes). All borrowed for the call. */
typedef struct scrm_record_item {
	const scrm_purchase *purchase;
	const scrm_return *ret;
	const scrm_member_scan *scan;
	const char *json;
	size_t json_len;
} scrm_record_item;

/* What became of one item of a batch. */
typedef struct scrm_record_result {
	int rc;               /* SCRM_OK: recorded, or a retry given its first receipt */
	scrm_receipt receipt; /* when rc == SCRM_OK */
	char error[512];      /* otherwise: why, naming the item and the field */
} scrm_record_result;

/* Most items one scrm_record_batch call takes. */
#define SCRM_MAX_BATCH 10000

/* Record up to SCRM_MAX_BATCH events in ONE transaction (one fsync): a
 * till's journal of sales made while it could not reach the agent, an
 * end-of-day upload. Each item is validated and decided on its own, like a
 * single call: results[i] (n of them, filled) says whether items[i] was
 * recorded, with its receipt, or refused and why (invalid, SCRM_E_CONFLICT,
 * the outbox full, ...); refused items write nothing and do not stop the
 * others. Purchases and returns are idempotent per order_id (return_id) as
 * in single calls, within a batch too, so a batch whose outcome is unknown
 * can be sent again whole; member scans are not (a resent scan is recorded
 * twice).
 *
 * Returns SCRM_OK when every item has its outcome in results (some may be
 * refused). Any other value: the transaction itself failed and nothing of
 * the batch is known to be written (each results[i].rc holds the same
 * code); SCRM_E_IO: as for a single call, the outcome is unknown — send the
 * batch again. SCRM_E_INVALID without touching results: store, items or
 * results NULL, or n over SCRM_MAX_BATCH. Any thread; concurrent single
 * calls wait for the batch's commit. */
SCRM_API int scrm_record_batch(scrm_store *store, const scrm_record_item *items, size_t n,
			       scrm_record_result *results);

/* Largest accepted event body, bytes. */
#define SCRM_MAX_EVENT_BYTES 131072

/* ---- Outbox state --------------------------------------------------- */

typedef struct scrm_outbox_stats {
	int64_t pending;          /* events not yet acknowledged by central */
	int64_t pending_bytes;    /* their body bytes */
	int64_t oldest_pending_ms;/* wall_ms of the oldest pending, 0 if none */
	int64_t last_seq;         /* last sequence number assigned, 0 if none */
	int64_t last_ack_ms;      /* when central last acknowledged, 0 = never */
	int64_t last_acked_seq;   /* highest seq central has acknowledged */
	int64_t rejected;         /* events central refused (kept locally) */
} scrm_outbox_stats;

SCRM_API int scrm_outbox_get_stats(scrm_store *store, scrm_outbox_stats *out);

/* ---- Customer cache (offline member look-up) ------------------------- */

/* The cache `<dir>/private/cache.db` is kept up to date by scrm-agent from
 * the central system (docs/protocol.md, "Customer cache"); these calls only
 * read it (and a scan records an event). Keys live in `<dir>/private/keys/`
 * unless the daemon's cache.keys_dir says otherwise: data.key (device data
 * key, made by the agent), tenant.key (phone look-up) and central.pub (QR
 * tokens). `<dir>/private/` is the agent's user's alone (mode 0700): only a
 * process of that user reads the cache, and a key or central.pub that is a
 * symbolic link, belongs to another user (root aside) or that others can
 * write (data.key, tenant.key: read) is refused with SCRM_E_CONFIG naming
 * the file and the reason. */
typedef struct scrm_cache scrm_cache;

/* Open the cache of the store in `dir` (borrowed). `keys_dir` borrowed, NULL
 * for `<dir>/private/keys`. SCRM_E_NOT_FOUND if the store has no cache yet. A handle
 * may be shared by threads (calls are serialised). */
SCRM_API int scrm_cache_open(const char *dir, const char *keys_dir, scrm_cache **out);
SCRM_API void scrm_cache_close(scrm_cache *cache);

/* How the member was identified at the counter. */
typedef enum scrm_member_key {
	SCRM_MEMBER_ID = 1,    /* member id */
	SCRM_MEMBER_CARD = 2,  /* member card number */
	SCRM_MEMBER_PHONE = 3, /* phone as typed; normalised, then keyed-hashed */
	SCRM_MEMBER_QR = 4,    /* QR token from the member's app: signature and expiry checked */
} scrm_member_key;

/* The member's profile card as JSON (docs/protocol.md, "Member card"):
 * profile, decrypted name and birthday, masked phone, coupons held, and the
 * purchases this device recorded that central has not yet reflected.
 * On success *card_json is owned by the caller (release with scrm_free()).
 * SCRM_E_NOT_FOUND: no such member; SCRM_E_INVALID: a malformed phone or a
 * QR token refused (the reason — signature, expired, ... — in scrm_errmsg()). */
SCRM_API int scrm_member_get(scrm_cache *cache, scrm_member_key by, const char *value, char **card_json);

/* A member scan at the counter: look the member up as scrm_member_get(), then
 * record a member_scan event in the outbox (without method and guide when the
 * member has not consented to behaviour tracking). `guide_id` optional.
 * Either out pointer may be NULL. */
SCRM_API int scrm_member_identify(scrm_store *store, scrm_cache *cache, scrm_member_key by, const char *value,
				  const char *guide_id, char **card_json, scrm_receipt *receipt);

/* Per-stream cache status as JSON (cursor, rows, age, snapshot progress).
 * *json owned by the caller (scrm_free()). */
SCRM_API int scrm_cache_status(scrm_cache *cache, char **json);

/* ---- Recommendations, coupons, attribution --------------------------- */

/* Everything below reads the cache (and, when a store is given, this
 * device's purchases central has not reflected yet) and works offline. All
 * JSON results are owned by the caller (scrm_free()); their shapes are in
 * docs/protocol.md, "Guide tablet". `now_ms` = 0 means the wall clock; tests
 * and replays pass their own to the read-only calls (scrm_recommend,
 * scrm_coupons_for). scrm_redeem always judges by the device's wall clock:
 * its `now_ms` is ignored (kept so the struct and ABI stay the same), so a
 * caller cannot name a past time and spend an expired coupon. */

typedef struct scrm_reco_request {
	const char *member_id;     /* NULL: anonymous basket (rules only) */
	const scrm_line *basket;   /* the current basket, may be empty */
	size_t n_basket;           /* 0..1000 */
	int n;                     /* items wanted, 1..50; 0 = 10 */
	const char *guide_id;      /* set (and a store given): the list shown is
				    * recorded as a reco_shown event, for attribution */
	int64_t now_ms;
} scrm_reco_request;

/* Ranked suggestions with a reason a guide can read, the member's lifecycle
 * stage and the next best action (coupon and talk track). Deterministic for
 * the same inputs. `store` may be NULL: nothing is recorded and this
 * device's redemptions are not counted for the next action's coupon (the
 * member's local purchases still are: the cache reads them itself). */
SCRM_API int scrm_recommend(scrm_cache *cache, scrm_store *store, const scrm_reco_request *rq, char **json);

typedef struct scrm_coupon_request {
	const char *member_id;     /* NULL: public campaigns only */
	const scrm_line *basket;
	size_t n_basket;           /* 0..1000 */
	const char *currency;      /* the basket's, ISO 4217; NULL = any */
	int64_t now_ms;
} scrm_coupon_request;

/* Which of the member's coupons and which public campaigns apply to this
 * basket now, with their value, and for each one that does not, the reason
 * (code and text). Offline the agent's own policy applies: online-only
 * coupons are refused with reason "online_only". */
SCRM_API int scrm_coupons_for(scrm_cache *cache, scrm_store *store, const scrm_coupon_request *rq, char **json);

typedef struct scrm_redeem_request {
	const char *member_id;     /* NULL only for a public campaign */
	const char *coupon;        /* coupon id ("C-000123"), its code, or a public campaign id */
	const scrm_line *basket;
	size_t n_basket;           /* 1..1000 */
	const char *currency;      /* required */
	const char *order_id;      /* the sale the coupon is spent on, required */
	const char *guide_id;      /* optional */
	int64_t now_ms;            /* IGNORED: the device's wall clock decides */
} scrm_redeem_request;

typedef struct scrm_redemption {
	char redemption_id[37];    /* UUIDv7: the coupon_redeem event's id */
	int64_t value;             /* discount granted, minor units */
	int64_t seq;               /* the coupon_redeem event's seq */
	int offline;               /* 1: reserved while central was unreachable */
} scrm_redemption;

/* Redeem a coupon: check its signature and every rule again, then in one
 * transaction on the store mark it used and record a coupon_redeem event, so
 * two tills (threads or processes) can never spend the same use twice. Call
 * before printing the receipt. SCRM_E_REFUSED (reason in scrm_errmsg(), code
 * first: "used_up: ...") when a rule says no; nothing is written then.
 * `out` and `json` may be NULL. */
SCRM_API int scrm_redeem(scrm_cache *cache, scrm_store *store, const scrm_redeem_request *rq,
			 scrm_redemption *out, char **json);

/* This device's redemptions and central's verdicts on them, newest first,
 * with counts {"pending","accepted","rejected"}. `limit` 0 = 100. */
SCRM_API int scrm_redemptions(scrm_store *store, int limit, char **json);

/* Release memory returned by libscrm; NULL is a no-op. */
SCRM_API void scrm_free(void *p);

/* ---- Maintenance: what scrmctl shows and repairs --------------------- */

/* Storage figures of the outbox (see outbox.max_bytes in the daemon's
 * config): what it holds, the limits in force, and what was dropped or
 * refused for room. */
#define SCRM_OUTBOX_HEALTH_KINDS 8
typedef struct scrm_outbox_health {
	int64_t pending;          /* events not yet acknowledged */
	int64_t bytes;            /* their stored size, row overhead included */
	int64_t max_bytes;        /* outbox.max_bytes in force */
	int64_t reserve_bytes;    /* the part of it kept for paid events */
	int64_t oldest_pending_ms;/* wall_ms of the oldest pending, 0 if none */
	int64_t last_ack_ms;      /* central's last ack, 0 = never */
	int64_t last_seq;         /* last seq assigned, 0 if none */
	int64_t refused_paid;     /* purchases/returns/redemptions refused: outbox full */
	int in_reserve;           /* bytes > max_bytes - reserve_bytes */
	size_t n_dropped;         /* entries used in dropped[] */
	struct {
		char kind[24];    /* event kind */
		int64_t count, bytes, last_ms;
	} dropped[SCRM_OUTBOX_HEALTH_KINDS]; /* evicted or refused for room, per kind */
} scrm_outbox_health;

/* Storage figures into *out and, when `alarms_json` is not NULL, the store's
 * alarms as a JSON array of {"code","since_ms","last_ms","count","detail"},
 * oldest first ("[]" when none; owned by the caller, scrm_free()). Read on
 * the store's own connection while no capture uses it, in one read
 * transaction. Any thread. */
SCRM_API int scrm_outbox_get_health(scrm_store *store, scrm_outbox_health *out, char **alarms_json);

/* The events set aside in the outbox of the store in `dir` (borrowed):
 * those that could not be sent as stored (their row no longer parses, or
 * they are larger than the broker takes), kept byte for byte. A JSON array
 * of {"seq","id","kind","wall_ms","reason","detail","set_aside_ms","bytes",
 * "body"}, oldest seq first, into *json (owned by the caller, scrm_free()).
 * `device_id` as scrm_store_options.device_id (may be NULL for an existing
 * store). Opens its own connection; any thread, any process. */
SCRM_API int scrm_outbox_set_aside(const char *dir, const char *device_id, char **json);

/* What scrm_outbox_recover() found in a quarantined outbox file. */
typedef struct scrm_recover_report {
	int64_t recovered;        /* events put back, to be sent again */
	int64_t already_held;     /* readable, but held or taken from it before */
	int64_t unreadable;       /* rows found that could not be read */
	int64_t damaged_ranges;   /* damaged ranges stepped over */
	int64_t ledger_rows;      /* ledger rows copied along */
} scrm_recover_report;

/* Put back into the outbox of the store in `dir` the events of `path` (a
 * file the agent moved to <dir>/quarantine/outbox-<ms>.db; read-only, never
 * changed) that the store neither holds nor took from it before, with their
 * original seq and id, to be sent once more (central stores each once;
 * docs/protocol.md, "Recovered events"). Running it again puts back nothing
 * twice. SCRM_E_MISMATCH: the file is another device's. All strings
 * borrowed; `out` may be NULL. The daemon sends them at its next turn (poke
 * it: a capture or scrmctl does). */
SCRM_API int scrm_outbox_recover(const char *dir, const char *device_id, const char *path,
				 scrm_recover_report *out);

/* Open the cache of the store in `dir` as scrm_cache_open(), creating
 * `<dir>/private/cache.db` and the data key when missing: for seeding a
 * store with scrm_cache_load_file() before go-live. Stop scrm-agent first
 * (or hold its lock, `<dir>/agent.lock`): it may be applying the same
 * stream. */
SCRM_API int scrm_cache_create(const char *dir, const char *keys_dir, scrm_cache **out);

/* Result of scrm_cache_load_file(). */
typedef struct scrm_cache_load {
	int64_t records;          /* records applied */
	int64_t refused;          /* records refused alone (bad signature) */
	const char *stream;       /* the file's stream ("members", ...); static */
	const char *refused_detail; /* the first refused ("" if none); borrowed,
				     * valid until the next call on the cache */
} scrm_cache_load;

/* Apply a snapshot file (JSON lines; docs/protocol.md, "Snapshot file") at
 * `path` (borrowed) exactly as if central had sent it: the file replaces its
 * stream atomically. *out filled on success; on failure the reason is in
 * scrm_errmsg(). Calls on one handle are serialised. */
SCRM_API int scrm_cache_load_file(scrm_cache *cache, const char *path, scrm_cache_load *out);

#ifdef __cplusplus
}
#endif
#endif /* SCRM_SCRM_H */
