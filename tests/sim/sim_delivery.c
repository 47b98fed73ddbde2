/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sim_delivery: the seeded fault simulator of issue 11 ("prove the
 * invariant, not only the scenarios"). It drives the real delivery state
 * machine (agent/daemon/delivery.c) the way the daemon does (agent/daemon/uplink.c), over
 * an in-memory outbox (memoutbox) and an in-memory central that follows
 * docs/protocol.md literally (memcentral), through a discrete-event network
 * on a virtual clock, over thousands of random schedules.
 *
 * One schedule (one seed) is:
 *   - settings: window 1..8, batch_max_events 1..50, batch_max_bytes,
 *     max_payload (0 or small), ack_timeout, an outbox cap, one or two
 *     central consumers (a shared subscription), central's random
 *     rejections, ack ranges coalesced over `after` step-overs or not;
 *   - a fault phase: captures at random times (and in the middle of the
 *     delivery's own outbox reads, as another process would), with faults
 *     drawn per seed: publish errors, batches and acks lost, duplicated,
 *     delayed past the ack timeout (so resend_from acks of an older round
 *     arrive late) and reordered, connection losses and reconnects, broker
 *     restarts (everything in flight lost), outbox read/oldest/ack/reject
 *     errors, damaged and too-big events (set aside), evictions under the
 *     cap (of events in flight too), central restarts (unsent acks lost;
 *     optionally a crash between store and ack), agent restarts with a
 *     quarantined outbox (some events hidden, the seq counter jumped) and
 *     the hidden events recovered later with "recovered":true, a lowered
 *     broker packet limit, flush commands, settings reloaded with batches
 *     in flight (a smaller window keeps them), batch id failures;
 *   - a quiet phase: no faults, one consumer, FIFO links. Everything must
 *     then be delivered within a bound (see progress_bound()).
 *
 * Checked while it runs (the first broken one fails the schedule):
 *   publish: base <= first seq; no pending event below base (recovered
 *     events aside: protocol.md allows them below settled seqs); after <
 *     first and no pending event between after and first nor between two
 *     events of the batch; every event pending, in seq order, with its id;
 *     at most batch_max_events; the size limits; the window not full; the
 *     link up;
 *   ack applied: an event leaves the outbox only when central holds its
 *     seq; a batch leaves the window only when none of its events is still
 *     pending (or on a go-back); a failed delete leaves the window as it
 *     was; resend_from on an ack for a batch of the current round makes
 *     one go-back, an ack for an older round none; the window <= window.
 * Checked at the end: every captured paid event stored at central exactly
 * once with its id, seq and body (or rejected by central and in the
 * device's rejected list, or set aside and settled by its marker); paid
 * events never evicted; evictable events stored unless evicted, and an
 * evicted one stored only if it had been published before; nothing at
 * central that was not captured; no conflicts; first copies stored in
 * increasing seq order (stores below contiguous aside); no violation
 * (stored below contiguous, not held, not recovered) unless the device had
 * really stopped holding that event (evicted or quarantined after it was
 * sent: a stale copy, not an over-claim — over-claims are caught at
 * publish); and progress.
 *
 * Usage: sim_delivery [--schedules N] [--from S] [--seed S] [--verbose]
 * A failure prints its seed and a replay command; --seed S replays one
 * schedule with a trace of every step.
 */
#include "delivery.h"
#include "err.h"
#include "log.h"
#include "memcentral.h"
#include "memoutbox.h"
#include "sbuf.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEVICE "pos-01"
#define BOOT "9f1c0d1e-6a43-4b7e-9a51-0c2d9e8f7a6b"
#define WALL0 1764000000000LL
#define IDLE_MS 60000           /* the daemon's idle pump (loop.c IDLE_CHECKPOINT_MS) */
#define RECONNECT_MAX_MS 20000  /* longest reconnect delay drawn */
#define SUBSCRIBE_MAX_MS 30     /* CONNACK to SUBACK */
#define QUIET_LATENCY_MS 5      /* each way, in the quiet phase */
#define MAX_STEPS 3000000
#define MAX_FAILS_SHOWN 10
#define SIM_MAX_BATCH_EVENTS 50 /* batch_max_events drawn up to this */

/* Under ASan (the host-debug preset) most of a run's time went to the
 * allocator touching fresh pages: a smaller quarantine and no fill of fresh
 * blocks halve it, and ASAN_OPTIONS still overrides both. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
	return "quarantine_size_mb=32:max_malloc_fill_size=0";
}

/* ---- random numbers: xoshiro256**, seeded with splitmix64 ---- */

typedef struct rng {
	uint64_t s[4];
} rng;

static uint64_t splitmix(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void rng_seed(rng *r, uint64_t seed)
{
	for (int i = 0; i < 4; i++)
		r->s[i] = splitmix(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(rng *r)
{
	uint64_t *s = r->s;
	uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return out;
}

/* Uniform in [lo, hi]. */
static int64_t rng_range(rng *r, int64_t lo, int64_t hi)
{
	if (hi <= lo)
		return lo;
	return lo + (int64_t)(rng_next(r) % (uint64_t)(hi - lo + 1));
}

/* True with probability p/1000. */
static int rng_pm(rng *r, int p)
{
	return p > 0 && (int)(rng_next(r) % 1000) < p;
}

/* Log-uniform in [lo, hi], lo >= 1: small values as likely as large
 * ones, decade for decade. */
static int64_t rng_log(rng *r, int64_t lo, int64_t hi)
{
	double u = (double)(rng_next(r) >> 11) / 9007199254740992.0;
	int64_t x = (int64_t)((double)lo * pow((double)(hi + 1) / (double)lo, u));
	return x < lo ? lo : x > hi ? hi : x;
}

/* ---- fault kinds, counted over all schedules ---- */

enum fault {
	F_PUBLISH_FAIL,
	F_BATCH_LOST,
	F_BATCH_DUP,
	F_BATCH_DELAYED,
	F_BATCH_REORDERED, /* to the other consumer */
	F_ACK_LOST,
	F_ACK_DUP,
	F_ACK_DELAYED,
	F_READ_FAIL,
	F_OLDEST_FAIL,
	F_ACK_DELETE_FAIL,
	F_REJECT_FAIL,
	F_LINK_LOST,
	F_BROKER_RESTART,
	F_CENTRAL_RESTART,
	F_CRASH_AFTER_STORE,
	F_AGENT_RESTART,
	F_QUARANTINE,
	F_EVICTED,
	F_UNREADABLE,
	F_TOO_BIG,
	F_CONCURRENT_CAPTURE,
	F_LIMIT_LOWERED,
	F_FLUSH,
	F_CENTRAL_REJECT,
	F_RECONFIGURE,
	F_BATCH_ID_FAIL,
	F_N
};

static const char *const fault_names[F_N] = {
	"publish_fail", "batch_lost",       "batch_dup",  "batch_delayed", "batch_other_consumer",
	"ack_lost",     "ack_dup",          "ack_delayed", "read_fail",    "oldest_fail",
	"ack_delete_fail", "reject_fail",   "link_lost",  "broker_restart", "central_restart",
	"crash_after_store", "agent_restart", "quarantine", "evicted",     "unreadable",
	"too_big",      "concurrent_capture", "limit_lowered", "flush",    "central_reject",
	"reconfigure",  "batch_id_fail",
};

struct totals {
	int64_t schedules, passed, failed;
	int64_t captured, refused, stored, markers, rejected, evicted, recovered, batches, acks, redeliveries,
		late_explained, holes, base_gaps, step_overs;
	int64_t faults[F_N];
};

/* ---- one schedule's settings ---- */

struct params {
	int n_captures;
	int64_t fault_ms;
	delivery__settings set;
	int64_t cap_bytes;
	int two_consumers, recovery, coalesce_gaps, reject_permille;
	int p_pub_fail, p_batch_lost, p_batch_dup, p_batch_delay, p_other_consumer;
	int p_ack_lost, p_ack_dup, p_ack_delay;
	int p_read_fail, p_oldest_fail, p_ack_fail, p_reject_fail;
	int p_unreadable, p_big, p_crash_after_store, p_concurrent, p_notify_lost;
	int n_link_drops, n_broker_restarts, n_central_restarts, n_agent_restarts, n_evictions, n_flushes, n_reconfigures;
	int p_batch_id_fail;
	int limit_changes;
	int bursts; /* captures come in this many bursts, 0 = spread evenly */
	int64_t latency_max;
};

/* ---- the discrete-event queue ---- */

enum ev_type {
	EV_CAPTURE,
	EV_BATCH,       /* a batch reaches a central consumer */
	EV_ACK_SEND,    /* central publishes an ack it queued */
	EV_ACK,         /* an ack reaches the device's session at the broker */
	EV_LINK_LOST,
	EV_CONNECTED,
	EV_SUBSCRIBED,
	EV_BROKER_RESTART,
	EV_CENTRAL_RESTART,
	EV_AGENT_RESTART,
	EV_EVICT,
	EV_FLUSH,
	EV_RECOVER,
	EV_IDLE,
	EV_QUIET,
	EV_RECONFIGURE,
};

static const char *const ev_names[] = {"capture", "batch", "ack_send", "ack", "link_lost", "connected", "subscribed",
				       "broker_restart", "central_restart", "agent_restart", "evict", "flush",
				       "recover", "idle", "quiet", "reconfigure"};

struct sev {
	int64_t t;
	uint64_t ord;
	int type;
	int arg;        /* consumer */
	uint64_t epoch; /* broker / central / connection epoch it belongs to */
	char *payload;  /* owned */
	size_t len;
};

struct heap {
	struct sev *v;
	size_t n, cap;
	uint64_t ord;
};

static int sev_before(const struct sev *a, const struct sev *b)
{
	return a->t < b->t || (a->t == b->t && a->ord < b->ord);
}

static void heap_push(struct heap *h, struct sev e)
{
	if (h->n == h->cap) {
		h->cap = h->cap ? h->cap * 2 : 256;
		h->v = realloc(h->v, h->cap * sizeof(*h->v));
		if (!h->v) {
			fprintf(stderr, "sim_delivery: out of memory\n");
			abort();
		}
	}
	e.ord = h->ord++;
	size_t i = h->n++;
	while (i > 0 && sev_before(&e, &h->v[(i - 1) / 2])) {
		h->v[i] = h->v[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	h->v[i] = e;
}

static struct sev heap_pop(struct heap *h)
{
	struct sev top = h->v[0], last = h->v[--h->n];
	size_t i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= h->n)
			break;
		if (c + 1 < h->n && sev_before(&h->v[c + 1], &h->v[c]))
			c++;
		if (!sev_before(&h->v[c], &last))
			break;
		h->v[i] = h->v[c];
		i = c;
	}
	if (h->n)
		h->v[i] = last;
	return top;
}

/* ---- the simulation ---- */

struct sim {
	uint64_t seed;
	int verbose;
	int recovery_gap_acks;
	rng r;
	struct params p;
	struct totals *tot;
	int64_t now;
	int quiet;
	int64_t quiet_at, bound;
	int64_t steps;
	struct heap q;
	memoutbox ob;
	memcentral central;
	delivery dl;
	delivery__io io;
	int dl_live;
	/* the device's link */
	int connected, subscribed;
	uint64_t conn_epoch;
	int reconnect_pending;
	/* the broker */
	uint64_t broker_epoch;
	struct sev *offline; /* acks queued for the device's session while it is away */
	size_t n_offline, cap_offline;
	int64_t path_last[3]; /* FIFO per path: consumer 0, consumer 1, acks */
	/* central */
	uint64_t central_epoch;
	sbuf ackbuf;
	/* figures of this schedule */
	int64_t batch_counter, extra_captures, captures_left;
	int win_allow;          /* batches the window may hold: more than `window` after it shrank */
	int64_t max_ack_timeout; /* the longest ack timeout in force so far */
	int64_t read_seqs[SIM_MAX_BATCH_EVENTS]; /* the last outbox read's seqs */
	size_t n_read;
	int limit_changes_left;
	/* the first broken invariant */
	int failed;
	char why[1024];
};

static void trace(struct sim *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void trace(struct sim *s, const char *fmt, ...)
{
	if (!s->verbose)
		return;
	va_list ap;
	printf("t=%-8" PRId64 " ", s->now);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

static void fail(struct sim *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct sim *s, const char *fmt, ...)
{
	if (s->failed)
		return;
	s->failed = 1;
	va_list ap;
	int n = snprintf(s->why, sizeof(s->why), "t=%" PRId64 "ms step=%" PRId64 ": ", s->now, s->steps);
	va_start(ap, fmt);
	vsnprintf(s->why + n, sizeof(s->why) - (size_t)n, fmt, ap);
	va_end(ap);
	if (s->verbose)
		printf("*** BROKEN: %s\n", s->why);
}

static void count(struct sim *s, int f)
{
	s->tot->faults[f]++;
}

static int faulty(struct sim *s, int permille, int f)
{
	if (s->quiet || !rng_pm(&s->r, permille))
		return 0;
	count(s, f);
	return 1;
}

static void schedule(struct sim *s, int64_t t, int type, int arg, uint64_t epoch, const char *payload, size_t len)
{
	struct sev e = {.t = t, .type = type, .arg = arg, .epoch = epoch};
	if (payload) {
		e.payload = malloc(len + 1);
		if (!e.payload) {
			fprintf(stderr, "sim_delivery: out of memory\n");
			abort();
		}
		memcpy(e.payload, payload, len);
		e.payload[len] = '\0';
		e.len = len;
	}
	heap_push(&s->q, e);
}

/* When a message sent now on `path` arrives: FIFO on the path unless this
 * message is delayed (it then overtakes nothing but is overtaken). */
static int64_t arrival(struct sim *s, int path, int delayed)
{
	if (delayed)
		return s->now + rng_range(&s->r, s->p.set.ack_timeout_ms / 2, 3 * s->p.set.ack_timeout_ms);
	int64_t lat = s->quiet ? QUIET_LATENCY_MS : rng_range(&s->r, 1, path == 1 ? 3 * s->p.latency_max : s->p.latency_max);
	int64_t t = s->now + lat;
	if (t < s->path_last[path])
		t = s->path_last[path];
	s->path_last[path] = t;
	return t;
}

/* ---- the device: captures ---- */

static void capture(struct sim *s, int concurrent)
{
	static const int weights[MO_NKINDS] = {35, 5, 5, 25, 30}; /* purchase, return, coupon, scan, reco */
	int w = (int)rng_range(&s->r, 0, 99), kind = 0;
	while (kind < MO_NKINDS - 1 && w >= weights[kind])
		w -= weights[kind++];
	int big = !s->quiet && rng_pm(&s->r, s->p.p_big);
	size_t pad = (size_t)(big ? rng_range(&s->r, 1500, 9000) : rng_log(&s->r, 10, 400));
	int damage = MO_INTACT;
	if (!s->quiet && rng_pm(&s->r, s->p.p_unreadable))
		damage = rng_pm(&s->r, 500) ? MO_DAMAGED_BODY : MO_DAMAGED_ID;
	char *body = malloc(pad + 128);
	if (!body)
		abort();
	/* ref: the checker's token for this body; order_id / return_id
	 * unique per sale, as the POS makes them */
	unsigned long long ref = (unsigned long long)rng_next(&s->r);
	int n = snprintf(body, 128, "{\"ref\":\"%016llx\",\"%s\":\"x-%llx\",\"pad\":\"", ref,
			 kind == MO_PURCHASE || kind == MO_COUPON_REDEEM ? "order_id" : kind == MO_RETURN ? "return_id" : "member_id",
			 ref);
	memset(body + n, 'a', pad);
	memcpy(body + (size_t)n + pad, "\"}", 3);
	int64_t seq = memoutbox__capture(&s->ob, kind, NULL, WALL0 + s->now, s->now, 1, body, damage);
	free(body);
	if (seq)
		s->tot->captured++;
	else
		s->tot->refused++;
	if (damage != MO_INTACT && seq)
		count(s, F_UNREADABLE);
	trace(s, "capture%s seq=%lld kind=%s body=%zu%s%s", concurrent ? " (during an outbox read)" : "",
	      (long long)seq, memoutbox__kind_name(kind), pad + 40, seq ? "" : " REFUSED (outbox full)",
	      damage == MO_DAMAGED_BODY ? " damaged-body" : damage == MO_DAMAGED_ID ? " damaged-id" : "");
}

/* memoutbox's fault hook: injected I/O errors, and captures by "another
 * process" between the delivery's outbox calls. */
static int ob_fault(void *ctx, int op)
{
	struct sim *s = ctx;
	static const int kinds[MO_NOPS] = {F_READ_FAIL, F_OLDEST_FAIL, F_ACK_DELETE_FAIL, F_REJECT_FAIL};
	int p[MO_NOPS] = {s->p.p_read_fail, s->p.p_oldest_fail, s->p.p_ack_fail, s->p.p_reject_fail};
	if ((op == MO_OP_READ || op == MO_OP_OLDEST) && !s->quiet && s->extra_captures > 0 &&
	    rng_pm(&s->r, s->p.p_concurrent)) {
		s->extra_captures--;
		count(s, F_CONCURRENT_CAPTURE);
		capture(s, 1);
	}
	if (faulty(s, p[op], kinds[op])) {
		trace(s, "  outbox %s fails (injected)", op == MO_OP_READ ? "read" : op == MO_OP_OLDEST ? "oldest" :
							      op == MO_OP_ACK ? "ack delete" : "reject");
		return 1;
	}
	return 0;
}

/* memoutbox's delete hook: an event leaves the outbox only when central
 * holds its seq (protocol.md: "deletes an event ... only when its seq falls
 * inside an acked range"; central acks what it durably stored). */
static void ob_deleted(void *ctx, const memoutbox_event *e)
{
	struct sim *s = ctx;
	const memcentral_record *r = memcentral__held(memcentral__device(&s->central, DEVICE), e->seq);
	if (!r)
		fail(s, "seq %lld deleted from the outbox on an ack, but central does not hold it (lost)", (long long)e->seq);
	else if (r->type == MC_REJECTED)
		fail(s, "seq %lld deleted as acknowledged, but central rejected it (should go to the rejected list)",
		     (long long)e->seq);
}

/* ---- the device: delivery__io besides the outbox ---- */

static int64_t io_mono(void *ctx)
{
	struct sim *s = ((memoutbox *)ctx)->hook_ctx;
	return s->now;
}

static int64_t io_wall(void *ctx)
{
	struct sim *s = ((memoutbox *)ctx)->hook_ctx;
	return WALL0 + s->now;
}

static int io_batch_id(void *ctx, int64_t wall_ms, char out[37])
{
	struct sim *s = ((memoutbox *)ctx)->hook_ctx;
	if (faulty(s, s->p.p_batch_id_fail, F_BATCH_ID_FAIL)) {
		trace(s, "  batch id: random source fails (injected)");
		return err__set(SCRM_E_CRYPTO, "batch id: injected failure");
	}
	uint64_t n = (uint64_t)++s->batch_counter;
	snprintf(out, 37, "%08llx-%04llx-7%03llx-9%03llx-%012llx", (unsigned long long)((uint64_t)wall_ms >> 16 & 0xffffffffULL),
		 (unsigned long long)((uint64_t)wall_ms & 0xffff), (unsigned long long)(s->seed & 0xfff),
		 (unsigned long long)(n >> 48 & 0xfff), (unsigned long long)(n & 0xffffffffffffULL));
	return SCRM_OK;
}

static int json_i64(const cJSON *v, int64_t *out)
{
	if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int64_t)v->valuedouble)
		return -1;
	*out = (int64_t)v->valuedouble;
	return 0;
}

/* The outbox read behind the batch about to be published: delivery reads,
 * then builds and publishes, so the payload's events are the bytes this
 * read appended (d->events) and these seqs. */
static int io_read(void *ctx, int64_t after_seq, size_t max_events, size_t max_bytes, size_t hard_bytes, sbuf *out,
		   delivery__read *r)
{
	struct sim *s = ((memoutbox *)ctx)->hook_ctx;
	int64_t was = s->ob.n_set_aside;
	s->n_read = 0;
	int rc = memoutbox__read(ctx, after_seq, max_events, max_bytes, hard_bytes, out, r);
	if (rc != SCRM_OK || r->count == 0)
		return rc;
	if (s->ob.n_set_aside != was)
		trace(s, "  %lld events set aside by this read", (long long)(s->ob.n_set_aside - was));
	/* the seqs returned: the pending ones in (after_seq, r->last] */
	if (r->count > SIM_MAX_BATCH_EVENTS) {
		fail(s, "read %zu events, batch_max_events is at most %d here", r->count, SIM_MAX_BATCH_EVENTS);
		return rc;
	}
	for (int64_t seq = after_seq; s->n_read < r->count;) {
		int64_t next = memoutbox__pending_between(&s->ob, seq, INT64_MAX);
		if (!next || next > r->last)
			break;
		s->read_seqs[s->n_read++] = next;
		seq = next;
	}
	if (s->n_read != r->count || s->read_seqs[0] != r->first)
		fail(s, "memoutbox: read returned %zu events, %zu pending in range", r->count, s->n_read);
	return rc;
}

/* The batch-level invariants, on the bytes about to be published. Only the
 * envelope is parsed here (central parses all of it when it arrives): the
 * payload must be the envelope around exactly the events just read. */
static void check_batch(struct sim *s, const char *payload, size_t len)
{
	static const char open[] = "\"events\":[", close[] = "]}";
	const delivery__settings *set = &s->dl.set;
	const sbuf *ev = &s->dl.events;
	int64_t base, after, prev = 0, first, last;
	size_t n = s->n_read, plen;
	if (n == 0 || len < ev->len + sizeof(open) - 1 + 2 ||
	    memcmp(payload + len - 2, close, 2) != 0 || memcmp(payload + len - 2 - ev->len, ev->p, ev->len) != 0 ||
	    memcmp(payload + len - 2 - ev->len - (sizeof(open) - 1), open, sizeof(open) - 1) != 0) {
		fail(s, "published a batch that is not the envelope around the events just read: %.300s", payload);
		return;
	}
	plen = len - 2 - ev->len;
	char *env = malloc(plen + 3);
	if (!env)
		abort();
	memcpy(env, payload, plen);
	memcpy(env + plen, close, 3);
	cJSON *o = cJSON_ParseWithLength(env, plen + 2);
	free(env);
	const cJSON *batch = cJSON_GetObjectItemCaseSensitive(o, "batch");
	if (!o || json_i64(cJSON_GetObjectItemCaseSensitive(o, "base"), &base) ||
	    json_i64(cJSON_GetObjectItemCaseSensitive(o, "after"), &after) || !cJSON_IsString(batch) ||
	    !cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, "v")) ||
	    !cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, "sent_ms"))) {
		fail(s, "published a batch without v, batch, sent_ms, base or after: %.300s", payload);
		goto out;
	}
	if (!(s->connected && s->subscribed && s->dl.up))
		fail(s, "published a batch while the link is down");
	if (s->dl.nwin >= set->window)
		fail(s, "published a batch with the window full (%d of %d)", s->dl.nwin, set->window);
	first = s->read_seqs[0];
	last = s->read_seqs[n - 1];
	for (size_t i = 0; i < n; i++) {
		int64_t seq = s->read_seqs[i];
		memoutbox_event *e = memoutbox__find(&s->ob, seq);
		if (!e || e->fate != MO_PENDING) {
			fail(s, "published seq %lld, which is not pending in the outbox", (long long)seq);
			goto out;
		}
		if (i > 0) {
			int64_t between = memoutbox__pending_between(&s->ob, prev, seq);
			if (seq <= prev)
				fail(s, "batch events out of order: %lld after %lld", (long long)seq, (long long)prev);
			if (between)
				fail(s, "batch skips pending seq %lld between its events %lld and %lld", (long long)between,
				     (long long)prev, (long long)seq);
		}
		e->published = 1;
		prev = seq;
	}
	if (n > set->batch_max_events)
		fail(s, "batch of %zu events, batch_max_events %zu", n, set->batch_max_events);
	if (set->max_payload && len > set->max_payload)
		fail(s, "batch of %zu bytes (%zu events, first %lld), above the broker's limit %zu: the broker closes the"
			" connection, and the same batch goes again",
		     len, n, (long long)first, set->max_payload);
	if (n > 1 && len > set->batch_max_bytes)
		fail(s, "batch of %zu bytes and %zu events, above batch_max_bytes %zu", len, n, set->batch_max_bytes);
	if (base > first)
		fail(s, "base %lld above the batch's first seq %lld", (long long)base, (long long)first);
	int64_t oldest = memoutbox__oldest_pending(&s->ob, 1);
	if (oldest && oldest < base)
		fail(s, "over-claim: base %lld, but seq %lld is pending (never acknowledged)", (long long)base,
		     (long long)oldest);
	if (after >= first)
		fail(s, "after %lld not below the first seq %lld", (long long)after, (long long)first);
	int64_t between = memoutbox__pending_between(&s->ob, after, first);
	if (between)
		fail(s, "over-claim: after %lld, first %lld, but seq %lld is pending", (long long)after, (long long)first,
		     (long long)between);
	trace(s, "publish batch=..%.6s base=%lld after=%lld seqs=%lld..%lld (%zu) bytes=%zu window=%d/%d",
	      batch->valuestring + (strlen(batch->valuestring) > 6 ? strlen(batch->valuestring) - 6 : 0), (long long)base,
	      (long long)after, (long long)first, (long long)last, n, len, s->dl.nwin + 1, set->window);
out:
	cJSON_Delete(o);
}

static int io_publish(void *ctx, const char *payload, size_t len)
{
	struct sim *s = ((memoutbox *)ctx)->hook_ctx;
	check_batch(s, payload, len);
	if (faulty(s, s->p.p_pub_fail, F_PUBLISH_FAIL)) {
		trace(s, "  publish refused by the client (injected)");
		return err__set(SCRM_E_IO, "publish: injected failure");
	}
	s->tot->batches++;
	int copies = faulty(s, s->p.p_batch_dup, F_BATCH_DUP) ? 2 : 1;
	if (faulty(s, s->p.p_batch_lost, F_BATCH_LOST)) {
		trace(s, "  batch lost");
		copies--;
	}
	for (int i = 0; i < copies; i++) {
		int consumer = 0;
		if (!s->quiet && s->p.two_consumers && rng_pm(&s->r, s->p.p_other_consumer)) {
			consumer = 1;
			count(s, F_BATCH_REORDERED);
		}
		int delayed = faulty(s, s->p.p_batch_delay, F_BATCH_DELAYED);
		int64_t t = arrival(s, consumer, delayed);
		trace(s, "  batch copy %d to consumer %d at t=%lld%s", i + 1, consumer, (long long)t, delayed ? " (delayed)" : "");
		schedule(s, t, EV_BATCH, consumer, s->broker_epoch, payload, len);
	}
	return SCRM_OK;
}

/* ---- the device: the daemon's handlers (uplink.c, loop.c) ---- */

static void device_start(struct sim *s)
{
	delivery__init(&s->dl, &s->io, &s->p.set);
	s->dl_live = 1;
}

struct win_snap {
	int n;
	struct delivery__batch b[DELIVERY_MAX_WINDOW];
};

static void snap(const delivery *d, struct win_snap *w)
{
	w->n = d->nwin;
	memcpy(w->b, d->win, sizeof(d->win[0]) * (size_t)d->nwin);
}

static int in_window(const struct win_snap *w, const char *id)
{
	for (int i = 0; i < w->n; i++)
		if (strcmp(w->b[i].id, id) == 0)
			return 1;
	return 0;
}

static void check_window(struct sim *s)
{
	const delivery *d = &s->dl;
	/* "A window made smaller keeps the batches already in flight" */
	if (d->nwin <= d->set.window)
		s->win_allow = d->set.window;
	if (d->nwin < 0 || d->nwin > s->win_allow)
		fail(s, "window holds %d batches, limit %d", d->nwin, s->win_allow);
	for (int i = 1; i < d->nwin; i++)
		if (d->win[i].first <= d->win[i - 1].last)
			fail(s, "window batches overlap or out of order");
}

static void on_ack(struct sim *s, const char *payload, size_t len)
{
	ack__msg ack;
	if (ack__parse(payload, len, &ack) != SCRM_OK) {
		fail(s, "the device refused central's ack (%s): %.200s", scrm_errmsg(), payload);
		return;
	}
	struct win_snap before, after;
	snap(&s->dl, &before);
	int64_t redeliveries = s->dl.n_redeliveries, sent_upto = s->dl.sent_upto;
	int64_t ack_faults = s->ob.n_faults[MO_OP_ACK];
	trace(s, "ack to device: %.300s", payload);
	delivery__on_ack(&s->dl, &ack);
	s->tot->acks++;
	snap(&s->dl, &after);
	int went_back = s->dl.n_redeliveries != redeliveries;
	int delete_failed = s->ob.n_faults[MO_OP_ACK] != ack_faults;

	/* a failed delete leaves the window as it was */
	if (delete_failed && ack.n_acked) {
		if (after.n != before.n || memcmp(after.b, before.b, sizeof(before.b[0]) * (size_t)before.n) != 0)
			fail(s, "the ack's delete failed, yet the window changed (%d -> %d batches)", before.n, after.n);
	}
	/* a batch leaves the window only when none of its events is pending */
	if (!went_back) {
		for (int i = 0; i < before.n; i++) {
			const struct delivery__batch *b = &before.b[i];
			int64_t p;
			if (in_window(&after, b->id))
				continue;
			if ((p = memoutbox__pending_between(&s->ob, b->first - 1, b->last + 1)))
				fail(s, "batch %lld..%lld left the window as done, but seq %lld was never acknowledged",
				     (long long)b->first, (long long)b->last, (long long)p);
		}
	}
	/* resend_from: act on an ack for a batch of the current round, once;
	 * not on an ack of an older round */
	if (ack.resend_from && ack.batch[0] && in_window(&before, ack.batch)) {
		const struct delivery__batch *b = NULL;
		for (int i = 0; i < before.n; i++)
			if (strcmp(before.b[i].id, ack.batch) == 0)
				b = &before.b[i];
		int still_pending = memoutbox__pending_between(&s->ob, b->first - 1, b->last + 1) != 0;
		if (!went_back && !delete_failed && ack.resend_from <= sent_upto && still_pending)
			fail(s, "ignored resend_from %lld on an ack for batch %lld..%lld of the current round",
			     (long long)ack.resend_from, (long long)b->first, (long long)b->last);
	} else if (went_back) {
		fail(s, "went back on an ack for a batch not in flight (an older round%s)",
		     ack.resend_from ? ", resend_from" : ", no resend_from");
	}
	trace(s, "  window %d -> %d batches%s, sent_upto %lld -> %lld, pending %zu", before.n, after.n,
	      went_back ? " (went back)" : "", (long long)sent_upto, (long long)s->dl.sent_upto, s->ob.n_pending);
	ack__free(&ack);
}

static void link_lost(struct sim *s, const char *why, int64_t reconnect_ms)
{
	if (s->connected) {
		s->connected = s->subscribed = 0;
		s->conn_epoch++;
		delivery__link(&s->dl, 0, why);
	}
	if (!s->reconnect_pending) {
		s->reconnect_pending = 1;
		schedule(s, s->now + reconnect_ms, EV_CONNECTED, 0, s->conn_epoch, NULL, 0);
	}
}

static void connected(struct sim *s)
{
	s->reconnect_pending = 0;
	s->connected = 1;
	s->subscribed = 0;
	/* CONNACK's Maximum Packet Size may differ from the last one. */
	if (!s->quiet && s->limit_changes_left > 0 && rng_pm(&s->r, 500)) {
		s->limit_changes_left--;
		count(s, F_LIMIT_LOWERED);
		size_t was = s->p.set.max_payload;
		s->p.set.max_payload = (size_t)rng_range(&s->r, 1024, 6000);
		delivery__configure(&s->dl, &s->p.set);
		trace(s, "  broker limit %zu -> %zu", was, s->p.set.max_payload);
	}
	delivery__link(&s->dl, 0, "reconnect");
	/* the session's queued acks come first, in order */
	for (size_t i = 0; i < s->n_offline; i++) {
		struct sev *e = &s->offline[i];
		schedule(s, s->now + 1 + (int64_t)i / 4, EV_ACK, 0, s->broker_epoch, e->payload, e->len);
		free(e->payload);
	}
	s->n_offline = 0;
	schedule(s, s->now + rng_range(&s->r, 1, SUBSCRIBE_MAX_MS), EV_SUBSCRIBED, 0, s->conn_epoch, NULL, 0);
}

/* ---- central ---- */

static void central_batch(struct sim *s, const struct sev *e)
{
	const char *why = NULL;
	int64_t rej = 0, jumps = 0, holes = 0;
	memcentral_device *d = memcentral__device(&s->central, DEVICE);
	if (d) {
		rej = d->n_rejected;
		jumps = (int64_t)d->n_jumps;
		holes = d->n_holes;
	}
	if (memcentral__handle(&s->central, DEVICE, e->payload, e->len, &s->ackbuf, &why) != 0) {
		fail(s, "central dropped a batch as malformed: %s", why ? why : "?");
		return;
	}
	d = memcentral__device(&s->central, DEVICE);
	s->tot->faults[F_CENTRAL_REJECT] += d->n_rejected - rej;
	s->tot->holes += d->n_holes - holes;
	for (size_t i = (size_t)jumps; i < d->n_jumps; i++) {
		if (d->jumps[i].by_base)
			s->tot->base_gaps++;
		else
			s->tot->step_overs++;
		trace(s, "  central %s %lld..%lld", d->jumps[i].by_base ? "base gap" : "after step-over",
		      (long long)d->jumps[i].from, (long long)d->jumps[i].to);
	}
	trace(s, "central consumer %d handled a batch, contiguous=%lld, ack: %.300s", e->arg, (long long)d->contiguous,
	      s->ackbuf.p);
	if (faulty(s, s->p.p_crash_after_store, F_CRASH_AFTER_STORE)) {
		trace(s, "  central crashed after storing, before acking");
		s->central_epoch++;
		return;
	}
	schedule(s, s->now + rng_range(&s->r, 0, s->quiet ? 1 : 3), EV_ACK_SEND, 0, s->central_epoch, s->ackbuf.p,
		 s->ackbuf.len);
}

static void central_send(struct sim *s, const struct sev *e)
{
	if (e->epoch != s->central_epoch) {
		trace(s, "ack lost with central's restart");
		return;
	}
	int copies = faulty(s, s->p.p_ack_dup, F_ACK_DUP) ? 2 : 1;
	if (faulty(s, s->p.p_ack_lost, F_ACK_LOST)) {
		trace(s, "ack lost");
		copies--;
	}
	for (int i = 0; i < copies; i++) {
		int delayed = faulty(s, s->p.p_ack_delay, F_ACK_DELAYED);
		schedule(s, arrival(s, 2, delayed), EV_ACK, 0, s->broker_epoch, e->payload, e->len);
	}
}

/* ---- a schedule ---- */

static void draw(struct sim *s)
{
	rng *r = &s->r;
	struct params *p = &s->p;
	memset(p, 0, sizeof(*p));
	int shape = (int)rng_range(r, 0, 99);
	p->n_captures = (int)(shape < 5 ? rng_range(r, 0, 3) : shape < 55 ? rng_range(r, 1, 40) :
			     shape < 90 ? rng_range(r, 40, 150) : rng_range(r, 150, 400));
	p->fault_ms = rng_log(r, 500, 120000);
	p->set.window = (int)rng_range(r, 1, 8);
	p->set.batch_max_events = (size_t)rng_log(r, 1, SIM_MAX_BATCH_EVENTS);
	p->set.batch_max_bytes = (size_t)rng_log(r, 512, 16384);
	int mp = (int)rng_range(r, 0, 99);
	p->set.max_payload = mp < 60 ? 0 : mp < 95 ? (size_t)rng_log(r, 1024, 16384) : (size_t)rng_range(r, 512, 1023);
	p->set.ack_timeout_ms = rng_log(r, 20, 5000); /* down to a few round trips: spurious timeouts */
	p->latency_max = rng_range(r, 1, 40);
	p->bursts = rng_pm(r, 400) ? (int)rng_range(r, 1, 5) : 0;
	if (rng_pm(r, 300))
		p->cap_bytes = rng_range(r, 2000, 4000 + 150 * (int64_t)p->n_captures);
	p->two_consumers = rng_pm(r, 500);
	p->p_other_consumer = (int)rng_range(r, 100, 700);
	p->recovery = rng_pm(r, 250);
	p->coalesce_gaps = rng_pm(r, 500); /* drawn so seeds keep their schedules */
	/* protocol.md forbids ack ranges over seqs central does not hold (this
	 * simulator showed why: an event recovered at such a seq later is
	 * deleted unstored). --recovery-gap-acks plays a central that breaks
	 * the rule, to show the loss. */
	if (!s->recovery_gap_acks)
		p->coalesce_gaps = 0;
	p->reject_permille = rng_pm(r, 300) ? (int)rng_range(r, 5, 60) : 0;
	p->p_notify_lost = (int)rng_range(r, 0, 200);
	if (rng_pm(r, 100))
		return; /* no faults at all */
#define MAYBE(field, lo, hi) (p->field = rng_pm(r, 500) ? (int)rng_range(r, lo, hi) : 0)
	MAYBE(p_pub_fail, 10, 150);
	MAYBE(p_batch_lost, 10, 200);
	MAYBE(p_batch_dup, 10, 150);
	MAYBE(p_batch_delay, 10, 200);
	MAYBE(p_ack_lost, 10, 200);
	MAYBE(p_ack_dup, 10, 150);
	MAYBE(p_ack_delay, 10, 200);
	MAYBE(p_read_fail, 10, 200);
	MAYBE(p_oldest_fail, 10, 200);
	MAYBE(p_ack_fail, 10, 200);
	MAYBE(p_reject_fail, 10, 300);
	MAYBE(p_unreadable, 5, 50);
	MAYBE(p_big, 10, 100);
	MAYBE(p_crash_after_store, 5, 60);
	MAYBE(p_concurrent, 20, 200);
	MAYBE(n_link_drops, 1, 6);
	MAYBE(n_broker_restarts, 1, 2);
	MAYBE(n_central_restarts, 1, 4);
	MAYBE(n_agent_restarts, 1, 3);
	MAYBE(n_evictions, 1, 6);
	MAYBE(n_flushes, 1, 3);
	MAYBE(limit_changes, 1, 3);
	MAYBE(n_reconfigures, 1, 3);
	MAYBE(p_batch_id_fail, 5, 50);
#undef MAYBE
}

static void describe(const struct sim *s)
{
	const struct params *p = &s->p;
	printf("seed %" PRIu64 ": captures=%d fault_ms=%lld window=%d batch_max_events=%zu batch_max_bytes=%zu "
	       "max_payload=%zu ack_timeout_ms=%lld latency_max=%lld cap_bytes=%lld consumers=%d recovery=%d "
	       "coalesce_gaps=%d reject=%d‰ bursts=%d\n",
	       s->seed, p->n_captures, (long long)p->fault_ms, p->set.window, p->set.batch_max_events,
	       p->set.batch_max_bytes, p->set.max_payload, (long long)p->set.ack_timeout_ms, (long long)p->latency_max,
	       (long long)p->cap_bytes, p->two_consumers ? 2 : 1, p->recovery, p->coalesce_gaps, p->reject_permille, p->bursts);
	printf("  faults ‰: publish=%d batch lost/dup/delay=%d/%d/%d ack lost/dup/delay=%d/%d/%d read=%d oldest=%d "
	       "delete=%d reject=%d unreadable=%d big=%d crash=%d concurrent=%d; link_drops=%d broker_restarts=%d "
	       "central_restarts=%d agent_restarts=%d evictions=%d flushes=%d limit_changes=%d reconfigures=%d "
	       "batch_id=%d\n",
	       p->p_pub_fail, p->p_batch_lost, p->p_batch_dup, p->p_batch_delay, p->p_ack_lost, p->p_ack_dup,
	       p->p_ack_delay, p->p_read_fail, p->p_oldest_fail, p->p_ack_fail, p->p_reject_fail, p->p_unreadable,
	       p->p_big, p->p_crash_after_store, p->p_concurrent, p->n_link_drops, p->n_broker_restarts,
	       p->n_central_restarts, p->n_agent_restarts, p->n_evictions, p->n_flushes, p->limit_changes,
	       p->n_reconfigures, p->p_batch_id_fail);
}

static void plan(struct sim *s)
{
	rng *r = &s->r;
	const struct params *p = &s->p;
	int64_t centres[5];
	for (int i = 0; i < p->bursts; i++)
		centres[i] = rng_range(r, 0, p->fault_ms);
	for (int i = 0; i < p->n_captures; i++) {
		int64_t t = p->bursts ? centres[rng_range(r, 0, p->bursts - 1)] + rng_range(r, 0, 300) : rng_range(r, 0, p->fault_ms);
		schedule(s, t < p->fault_ms ? t : p->fault_ms, EV_CAPTURE, 0, 0, NULL, 0);
	}
	/* Each fault its drawn number of times, anywhere in the fault window;
	 * in this order, so a seed replays the same schedule. */
	const struct {
		int n, ev;
	} faults[] = {
		{p->n_link_drops, EV_LINK_LOST},	   {p->n_broker_restarts, EV_BROKER_RESTART},
		{p->n_central_restarts, EV_CENTRAL_RESTART}, {p->n_agent_restarts, EV_AGENT_RESTART},
		{p->n_evictions, EV_EVICT},		   {p->n_flushes, EV_FLUSH},
		{p->n_reconfigures, EV_RECONFIGURE},
	};
	for (size_t k = 0; k < sizeof(faults) / sizeof(faults[0]); k++)
		for (int i = 0; i < faults[k].n; i++)
			schedule(s, rng_range(r, 1, p->fault_ms), faults[k].ev, 0, 0, NULL, 0);
	schedule(s, IDLE_MS, EV_IDLE, 0, 0, NULL, 0);
	schedule(s, p->fault_ms + 1, EV_QUIET, 0, 0, NULL, 0);
	/* the device starts: connect, subscribe */
	s->reconnect_pending = 1;
	schedule(s, rng_range(r, 0, 50), EV_CONNECTED, 0, s->conn_epoch, NULL, 0);
}

/* The progress bound, from the start of the quiet phase. Nothing is lost
 * from then on and every link is FIFO, so the device must be done after:
 *   - the reconnect already scheduled (RECONNECT_MAX_MS) and subscribing;
 *   - every message of the fault phase still on its way (delays reach
 *     3 x ack_timeout; a late resend_from or a late batch may still cause
 *     one go-back);
 *   - at most two ack timeouts: one for a window whose acks were lost, one
 *     for the go-back a late message may cause;
 *   - one idle pump (IDLE_MS), for a pump that failed with nothing in
 *     flight and no ack to come;
 *   - one clean pass over the backlog: at worst one event per batch,
 *     `window` batches per round trip.
 * Doubled, plus a second of slack: a wedged or livelocked state machine
 * runs past any finite bound, and a slow one (say, one that ignores
 * resend_from) is caught by the resend_from check instead. */
static int64_t progress_bound(const struct sim *s)
{
	int64_t backlog = (int64_t)s->ob.n_pending + (int64_t)memoutbox__hidden_count(&s->ob);
	int64_t rtt = 2 * QUIET_LATENCY_MS + 2;
	int64_t rounds = backlog / s->p.set.window + 2;
	int64_t b = RECONNECT_MAX_MS + SUBSCRIBE_MAX_MS + 5 * s->max_ack_timeout + IDLE_MS + rounds * rtt;
	return 2 * b + 1000;
}

static void agent_restart(struct sim *s)
{
	trace(s, "agent restarts");
	link_lost(s, "agent_restart", rng_range(&s->r, 100, 3000));
	delivery__free(&s->dl);
	device_start(s);
	if (s->p.recovery && rng_pm(&s->r, 700)) {
		/* outbox.db found damaged: quarantined; the readable events are
		 * copied into a fresh file, the others stay behind (hidden)
		 * until recovered; the counter restarts above anything issued. */
		size_t hidden = 0;
		for (size_t i = 0; i < s->ob.n_pending;) {
			int64_t seq = s->ob.ledger[s->ob.pending[i]].seq;
			if (rng_pm(&s->r, 300) && memoutbox__hide(&s->ob, seq) == 0)
				hidden++;
			else
				i++;
		}
		int64_t jump = rng_pm(&s->r, 500) ? rng_range(&s->r, 1, 1000) : (WALL0 + s->now) * 1000 - s->ob.next_seq;
		memoutbox__jump(&s->ob, jump);
		count(s, F_QUARANTINE);
		trace(s, "  outbox quarantined: %zu events left behind, seq counter jumps to %lld", hidden,
		      (long long)s->ob.next_seq);
		schedule(s, s->now + rng_range(&s->r, 1, s->p.fault_ms), EV_RECOVER, 0, 0, NULL, 0);
	}
}

static void handle(struct sim *s, struct sev *e)
{
	if (e->type != EV_BATCH && e->type != EV_ACK && e->type != EV_ACK_SEND && e->type != EV_CAPTURE)
		trace(s, "%s", ev_names[e->type]);
	switch (e->type) {
	case EV_CAPTURE:
		capture(s, 0);
		/* the daemon pumps on the capture's notification (or, if it is
		 * lost, at the next idle pump) */
		if (!rng_pm(&s->r, s->quiet ? 0 : s->p.p_notify_lost))
			delivery__pump(&s->dl);
		break;
	case EV_BATCH:
		if (e->epoch != s->broker_epoch) {
			trace(s, "batch lost with the broker's restart");
			break;
		}
		central_batch(s, e);
		break;
	case EV_ACK_SEND:
		central_send(s, e);
		break;
	case EV_ACK:
		if (e->epoch != s->broker_epoch) {
			trace(s, "ack lost with the broker's restart");
		} else if (!s->connected) {
			/* Clean Start = 0: the broker queues it for the session */
			s->offline = realloc(s->offline, (s->n_offline + 1) * sizeof(*s->offline));
			if (!s->offline)
				abort();
			s->offline[s->n_offline] = *e;
			s->offline[s->n_offline++].payload = e->payload;
			e->payload = NULL;
			trace(s, "ack queued by the broker for the offline device");
		} else {
			on_ack(s, e->payload, e->len);
		}
		break;
	case EV_LINK_LOST:
		count(s, F_LINK_LOST);
		link_lost(s, "connection_lost", rng_range(&s->r, 100, RECONNECT_MAX_MS));
		break;
	case EV_CONNECTED:
		if (e->epoch == s->conn_epoch && !s->connected)
			connected(s);
		break;
	case EV_SUBSCRIBED:
		if (e->epoch == s->conn_epoch && s->connected) {
			s->subscribed = 1;
			delivery__link(&s->dl, 1, "subscribed");
		}
		break;
	case EV_BROKER_RESTART:
		count(s, F_BROKER_RESTART);
		s->broker_epoch++;
		for (size_t i = 0; i < s->n_offline; i++)
			free(s->offline[i].payload);
		s->n_offline = 0;
		link_lost(s, "connection_lost", rng_range(&s->r, 100, RECONNECT_MAX_MS));
		break;
	case EV_CENTRAL_RESTART:
		count(s, F_CENTRAL_RESTART);
		s->central_epoch++;
		break;
	case EV_AGENT_RESTART:
		count(s, F_AGENT_RESTART);
		agent_restart(s);
		break;
	case EV_EVICT: {
		size_t n = memoutbox__evict(&s->ob, (size_t)rng_range(&s->r, 1, 8));
		trace(s, "  %zu events evicted", n);
		break;
	}
	case EV_FLUSH:
		count(s, F_FLUSH);
		if (s->dl.nwin > 0)
			delivery__go_back(&s->dl, "flush_command");
		delivery__pump(&s->dl);
		break;
	case EV_RECOVER: {
		size_t n = memoutbox__recover_all(&s->ob);
		trace(s, "  %zu events recovered", n);
		delivery__pump(&s->dl);
		break;
	}
	case EV_IDLE:
		delivery__pump(&s->dl);
		schedule(s, s->now + IDLE_MS, EV_IDLE, 0, 0, NULL, 0);
		break;
	case EV_RECONFIGURE: {
		/* SIGHUP or a fleet config.set: new sync.* settings, batches
		 * in flight kept */
		delivery__settings *set = &s->p.set;
		count(s, F_RECONFIGURE);
		set->window = (int)rng_range(&s->r, 1, 8);
		set->batch_max_events = (size_t)rng_log(&s->r, 1, SIM_MAX_BATCH_EVENTS);
		set->batch_max_bytes = (size_t)rng_log(&s->r, 512, 16384);
		set->ack_timeout_ms = rng_log(&s->r, 20, 5000);
		if (set->ack_timeout_ms > s->max_ack_timeout)
			s->max_ack_timeout = set->ack_timeout_ms;
		delivery__configure(&s->dl, set);
		if (s->dl.nwin > s->win_allow)
			s->win_allow = s->dl.nwin;
		trace(s, "  window=%d batch_max_events=%zu batch_max_bytes=%zu ack_timeout_ms=%lld (%d in flight)", set->window,
		      set->batch_max_events, set->batch_max_bytes, (long long)set->ack_timeout_ms, s->dl.nwin);
		delivery__pump(&s->dl);
		break;
	}
	case EV_QUIET:
		s->quiet = 1;
		s->quiet_at = s->now;
		if (memoutbox__hidden_count(&s->ob)) {
			size_t n = memoutbox__recover_all(&s->ob);
			trace(s, "  %zu events recovered", n);
			delivery__pump(&s->dl);
		}
		s->bound = s->now + progress_bound(s);
		trace(s, "  quiet phase: %zu pending, window %d, must be done by t=%lld", s->ob.n_pending, s->dl.nwin,
		      (long long)s->bound);
		break;
	}
}

static int done(const struct sim *s)
{
	return s->quiet && s->ob.n_pending == 0 && s->dl.nwin == 0 && memoutbox__hidden_count(&s->ob) == 0;
}

/* The checker, after the run. */
static void check_end(struct sim *s)
{
	memcentral_device *d = memcentral__device(&s->central, DEVICE);
	for (size_t i = 0; i < s->ob.n_ledger && !s->failed; i++) {
		const memoutbox_event *e = &s->ob.ledger[i];
		const memcentral_record *r = memcentral__held(d, e->seq);
		long long q = (long long)e->seq;
		const char *kind = memoutbox__kind_name(e->kind);
		if (r && r->id[0] && strcmp(r->id, e->id) != 0)
			fail(s, "central holds seq %lld with id %s, captured with %s", q, r->id, e->id);
		switch (e->fate) {
		case MO_PENDING:
		case MO_HIDDEN:
			fail(s, "%s seq %lld still %s at the end", kind, q, e->fate == MO_PENDING ? "pending" : "hidden");
			break;
		case MO_EVICTED:
			if (memoutbox__kind_paid(e->kind))
				fail(s, "paid %s seq %lld was evicted", kind, q);
			else if (r && !e->published)
				fail(s, "evicted %s seq %lld was never published, yet central holds it", kind, q);
			break;
		case MO_REJECTED:
			if (!r || r->type != MC_REJECTED)
				fail(s, "%s seq %lld is in the device's rejected list, but central %s", kind, q,
				     r ? "did not reject it" : "never saw it");
			break;
		case MO_ACKED:
			if (!r)
				fail(s, "%s seq %lld acknowledged, but central does not hold it: lost", kind, q);
			else if (r->type == MC_REJECTED)
				fail(s, "%s seq %lld rejected by central but deleted as acknowledged", kind, q);
			else if (r->type == MC_DUPLICATE_ORDER)
				fail(s, "%s seq %lld, captured once, kept aside by central as a duplicate sale", kind, q);
			else if (r->type == MC_MARKER && !e->aside)
				fail(s, "central settled %s seq %lld with a set-aside marker, but it was never set aside", kind, q);
			else if (r->type == MC_STORED && (strcmp(r->kind, kind) != 0 || strncmp(r->ref, e->body + 8, 16) != 0))
				fail(s, "central stored %s seq %lld with another kind or body", kind, q);
			break;
		}
	}
	if (!d)
		return;
	int64_t top = 0;
	for (size_t i = 0; i < d->n_rec && !s->failed; i++) {
		const memcentral_record *r = &d->rec[i];
		const memoutbox_event *e = memoutbox__find(&s->ob, r->seq);
		if (!e)
			fail(s, "central holds seq %lld, which was never captured", (long long)r->seq);
		if (r->late)
			continue;
		if (r->seq <= top)
			fail(s, "central stored seq %lld after seq %lld (per-device order)", (long long)r->seq, (long long)top);
		top = r->seq;
		if (r->type == MC_STORED)
			s->tot->stored++;
		else if (r->type == MC_MARKER)
			s->tot->markers++;
		else
			s->tot->rejected++;
	}
	for (size_t i = 0; i < d->n_rec; i++)
		if (d->rec[i].late)
			s->tot->stored += d->rec[i].type == MC_STORED, s->tot->markers += d->rec[i].type == MC_MARKER,
				s->tot->rejected += d->rec[i].type == MC_REJECTED;
	if (d->n_conflicts)
		fail(s, "central kept %zu conflicts (same seq, another id), first seq %lld", d->n_conflicts,
		     (long long)d->conflicts[0].seq);
	for (size_t i = 0; i < d->n_violations && !s->failed; i++) {
		const memoutbox_event *e = memoutbox__find(&s->ob, d->violations[i]);
		if (e && (e->fate == MO_EVICTED || e->ever_hidden))
			s->tot->late_explained++; /* a stale copy of an event the device no longer held */
		else
			fail(s, "protocol violation: central stored seq %lld below contiguous without holding it, not"
				" recovered: the device claimed it had been acknowledged or dropped",
			     (long long)d->violations[i]);
	}
}

static int run(uint64_t seed, int verbose, int recovery_gap_acks, struct totals *tot, char *why, size_t whycap)
{
	struct sim *s = calloc(1, sizeof(*s));
	if (!s)
		abort();
	s->seed = seed;
	s->recovery_gap_acks = recovery_gap_acks;
	s->verbose = verbose;
	s->tot = tot;
	rng_seed(&s->r, seed);
	draw(s);
	if (verbose)
		describe(s);
	memoutbox__init(&s->ob, BOOT);
	s->ob.cap_bytes = s->p.cap_bytes;
	s->ob.fault = ob_fault;
	s->ob.on_delete = ob_deleted;
	s->ob.hook_ctx = s;
	/* The link's side first; then the outbox's, with reads going through
	 * the sim (it traces what each read set aside and returned). */
	s->io = (delivery__io){.publish = io_publish, .mono_ms = io_mono, .wall_ms = io_wall, .batch_id = io_batch_id};
	memoutbox__io(&s->ob, &s->io);
	s->io.read = io_read;
	memcentral_opts co = {.salt = seed * 0x9e3779b97f4a7c15ULL, .reject_permille = s->p.reject_permille,
			      .coalesce_gaps = s->p.coalesce_gaps};
	memcentral__init(&s->central, &co);
	sbuf__init(&s->ackbuf);
	s->extra_captures = s->p.n_captures / 2 + 1;
	s->limit_changes_left = s->p.set.max_payload ? s->p.limit_changes : 0;
	s->win_allow = s->p.set.window;
	s->max_ack_timeout = s->p.set.ack_timeout_ms;
	device_start(s);
	plan(s);

	while (!s->failed) {
		if (done(s))
			break;
		if (s->quiet && s->now > s->bound) {
			fail(s, "no progress: %zu events still pending and %d batches in flight %lld ms into the quiet"
				" phase (bound %lld ms)",
			     s->ob.n_pending, s->dl.nwin, (long long)(s->now - s->quiet_at), (long long)(s->bound - s->quiet_at));
			break;
		}
		if (++s->steps > MAX_STEPS) {
			fail(s, "more than %d steps", MAX_STEPS);
			break;
		}
		int64_t deadline = s->connected ? delivery__deadline(&s->dl) : 0;
		if (deadline && (s->q.n == 0 || deadline <= s->q.v[0].t)) {
			if (deadline > s->now)
				s->now = deadline;
			int64_t r0 = s->dl.n_redeliveries;
			trace(s, "ack timeout of the oldest batch in flight");
			delivery__tick(&s->dl);
			s->tot->redeliveries += s->dl.n_redeliveries - r0;
		} else {
			if (s->q.n == 0) {
				fail(s, "nothing left to happen, and not done");
				break;
			}
			struct sev e = heap_pop(&s->q);
			s->now = e.t;
			int64_t r0 = s->dl.n_redeliveries;
			handle(s, &e);
			s->tot->redeliveries += s->dl.n_redeliveries - r0;
			free(e.payload);
		}
		check_window(s);
	}
	if (!s->failed)
		check_end(s);
	tot->evicted += s->ob.n_evicted;
	tot->recovered += s->ob.n_recovered;
	tot->faults[F_EVICTED] += s->ob.n_evicted;
	tot->faults[F_TOO_BIG] += 0;
	for (size_t i = 0; i < s->ob.n_ledger; i++)
		if (s->ob.ledger[i].aside && strcmp(s->ob.ledger[i].aside_reason, "too_big") == 0)
			tot->faults[F_TOO_BIG]++;
	if (verbose)
		printf("%s after %" PRId64 " steps, t=%" PRId64 " ms\n", s->failed ? "FAILED" : "done", s->steps, s->now);
	int failed = s->failed;
	if (failed)
		snprintf(why, whycap, "%s", s->why);

	while (s->q.n) {
		struct sev e = heap_pop(&s->q);
		free(e.payload);
	}
	free(s->q.v);
	for (size_t i = 0; i < s->n_offline; i++)
		free(s->offline[i].payload);
	free(s->offline);
	if (s->dl_live)
		delivery__free(&s->dl);
	memoutbox__free(&s->ob);
	memcentral__free(&s->central);
	sbuf__free(&s->ackbuf);
	free(s);
	return failed;
}

static int parse_u64(const char *a, uint64_t *out)
{
	char *end;
	if (!a || !*a || *a == '-')
		return -1;
	errno = 0;
	unsigned long long v = strtoull(a, &end, 10);
	if (errno || *end)
		return -1;
	*out = v;
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: sim_delivery [--schedules N] [--from SEED] [--seed SEED] [--verbose]\n"
			"  --schedules N  run N schedules (default 10000), seeds FROM..FROM+N-1\n"
			"  --from SEED    first seed (default 1)\n"
			"  --seed SEED    replay one schedule with a trace of every step\n"
			"  --verbose      also the delivery module's own log lines\n"
			"  --recovery-gap-acks  play a central that coalesces ack ranges over `after` step-overs\n"
			"                 (protocol.md forbids it: recovered events are then lost)\n");
}

int main(int argc, char **argv)
{
	uint64_t n = 10000, from = 1, one = 0;
	int replay = 0, verbose = 0, gap_acks = 0;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--schedules") == 0 && i + 1 < argc) {
			if (parse_u64(argv[++i], &n)) {
				usage();
				return 2;
			}
		} else if (strcmp(argv[i], "--from") == 0 && i + 1 < argc) {
			if (parse_u64(argv[++i], &from)) {
				usage();
				return 2;
			}
		} else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
			if (parse_u64(argv[++i], &one)) {
				usage();
				return 2;
			}
			replay = 1;
		} else if (strcmp(argv[i], "--verbose") == 0) {
			verbose = 1;
		} else if (strcmp(argv[i], "--recovery-gap-acks") == 0) {
			gap_acks = 1;
		} else {
			usage();
			return 2;
		}
	}
	log__set_level(verbose ? LOG_DEBUG : -1);
	if (replay) {
		from = one;
		n = 1;
	}
	struct totals tot;
	memset(&tot, 0, sizeof(tot));
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (uint64_t seed = from; seed < from + n; seed++) {
		char why[1024];
		tot.schedules++;
		if (run(seed, replay, gap_acks, &tot, why, sizeof(why))) {
			tot.failed++;
			if (tot.failed <= MAX_FAILS_SHOWN)
				printf("FAIL seed=%" PRIu64 ": %s\n  replay: sim_delivery --seed %" PRIu64 "%s\n", seed, why, seed,
				       gap_acks ? " --recovery-gap-acks" : "");
		} else {
			tot.passed++;
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	printf("sim_delivery: %" PRId64 " schedules (seeds %" PRIu64 "..%" PRIu64 ") in %.1f s: %" PRId64
	       " events captured (%" PRId64 " refused, outbox full), %" PRId64 " stored at central, %" PRId64
	       " set-aside markers, %" PRId64 " rejected, %" PRId64 " evicted, %" PRId64 " recovered; %" PRId64
	       " batches, %" PRId64 " acks, %" PRId64 " go-backs, %" PRId64 " holes, %" PRId64 " base gaps, %" PRId64
	       " after step-overs, %" PRId64 " late copies of evicted/quarantined events; faults:",
	       tot.schedules, from, from + n - 1, secs, tot.captured, tot.refused, tot.stored, tot.markers, tot.rejected,
	       tot.evicted, tot.recovered, tot.batches, tot.acks, tot.redeliveries, tot.holes, tot.base_gaps,
	       tot.step_overs, tot.late_explained);
	for (int f = 0; f < F_N; f++)
		printf(" %s=%" PRId64, fault_names[f], tot.faults[f]);
	printf("\n%" PRId64 " passed, %" PRId64 " failed\n", tot.passed, tot.failed);
	return tot.failed ? 1 : 0;
}
