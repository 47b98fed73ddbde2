/* SPDX-License-Identifier: Apache-2.0 */
/*
 * capture: the public capture API of libscrm (include/scrm/scrm.h).
 *
 * Group commit. Each record call validates and encodes its event on the
 * caller's thread, then queues it. One caller at a time is the leader: it
 * takes what is queued (up to GROUP_MAX), appends it in one SQLite
 * transaction (one fsync) and wakes exactly the callers whose events that
 * group decided — each waits on its own semaphore, so a commit costs one
 * wake-up per event, not one per waiting thread. The outcome is written and
 * the semaphore posted without the store's mutex: a caller woken while the
 * leader still held it went straight back to sleep on it (a second context
 * switch per event; in a VM a switch costs microseconds, and at 64 callers
 * they were 40% of the CPU). The leader then
 * hands the lead to the first caller still queued and returns at once, so
 * its till is never kept waiting for other tills' sales.
 *
 * A leader about to commit holds the group open briefly while fewer
 * callers are queued than the last group held (at most half the last
 * commit's duration, never over GATHER_MAX_US): the callers the last
 * commit released are then back with their next event, and N busy callers
 * share one fsync instead of splitting into two alternating halves. A lone
 * caller (a last group of one) never waits.
 */
#include <scrm/scrm.h>

#include "err.h"
#include "event.h"
#include "outbox.h"
#include "platform.h"
#include "capture.h"
#include "uuid.h"

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Events committed per transaction at most, so one leader's turn is bounded. */
#define GROUP_MAX 512
/* The longest a leader holds a group open for more callers (see above). */
#define GATHER_MAX_US 2000

struct pending {
	struct pending *next;
	outbox__row row;
	/* done: the outcome is in rc, errmsg and row — written by the leader
	 * before it posts `wake`, read by this caller after its wait */
	int done;
	int lead; /* handed the lead: commit the queue (under mu) */
	int rc;
	sem_t wake; /* this caller's own wake-up: done, or lead */
	char errmsg[512];
};

struct scrm_store {
	outbox *ob; /* used only by the current leader */
	platform__notifier *notify; /* pokes the daemon after each commit */
	char boot[37];
	int64_t trusted_after_ms;
	pthread_mutex_t mu;
	pthread_cond_t idle;    /* leader went 0: for callers that need the connection */
	pthread_cond_t arrived; /* an event was queued while the leader gathers (monotonic) */
	struct pending *head, **tail;
	size_t queued;
	int leader;       /* someone holds the connection: a record call leading, or exclusive */
	int gathering;    /* the leader waits for `arrived` */
	int excl_waiting; /* callers waiting in take_connection() */
	size_t last_group;      /* events in the last group */
	int64_t last_commit_us; /* and how long its append took */
	/* The leader's group, here rather than on its stack: the leader runs
	 * on a POS thread, whose stack may be small. */
	outbox__row *grp_rows;      /* GROUP_MAX */
	struct pending **grp_batch; /* GROUP_MAX */
};

int scrm_store_open(const char *dir, const scrm_store_options *opts, scrm_store **out)
{
	scrm_store *s;
	int rc;

	err__clear();
	if (!out)
		return err__set(SCRM_E_INVALID, "out: NULL");
	*out = NULL;
	if (!(s = calloc(1, sizeof(*s))))
		return err__set(SCRM_E_NOMEM, "out of memory");
	s->grp_rows = calloc(GROUP_MAX, sizeof(*s->grp_rows));
	s->grp_batch = calloc(GROUP_MAX, sizeof(*s->grp_batch));
	if (!s->grp_rows || !s->grp_batch) {
		rc = err__set(SCRM_E_NOMEM, "out of memory");
		goto failed;
	}
	rc = outbox__open(dir, opts ? opts->device_id : NULL, opts ? opts->busy_timeout_ms : 0, &s->ob);
	if (rc)
		goto failed;
	outbox__receipts_prime(s->ob);
	platform__boot_id(s->boot);
	s->notify = platform__notifier_open(dir);
	s->trusted_after_ms = (int64_t)SCRM_BUILD_EPOCH * 1000;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->idle, NULL);
	if (platform__cond_init(&s->arrived) != 0)
		pthread_cond_init(&s->arrived, NULL); /* timed waits then follow the wall clock */
	s->tail = &s->head;
	*out = s;
	return SCRM_OK;
failed:
	free(s->grp_rows);
	free(s->grp_batch);
	free(s);
	return rc;
}

void scrm_store_close(scrm_store *s)
{
	if (!s)
		return;
	outbox__close(s->ob);
	platform__notifier_close(s->notify);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->idle);
	pthread_cond_destroy(&s->arrived);
	free(s->grp_rows);
	free(s->grp_batch);
	free(s);
}

const char *scrm_store_device_id(const scrm_store *s)
{
	return s ? outbox__device_id(s->ob) : "";
}

/* Hold the group open while fewer callers are queued than the last group
 * held (see the top of this file). Called with mu held. */
static void gather(scrm_store *s)
{
	size_t expect = s->last_group < GROUP_MAX ? s->last_group : GROUP_MAX;
	if (expect <= 1 || s->queued >= expect)
		return;
	int64_t budget = s->last_commit_us / 2;
	if (budget > GATHER_MAX_US)
		budget = GATHER_MAX_US;
	const int64_t end = platform__mono_us() + budget;
	s->gathering = 1;
	for (int64_t left = budget; s->queued < expect && left > 0; left = end - platform__mono_us())
		platform__cond_wait_us(&s->arrived, &s->mu, left);
	s->gathering = 0;
}

/* The leader's turn (`self` its own caller): commit one group from the head
 * of the queue and wake each caller it decided. Called and returns with mu
 * held. */
static void commit_group(scrm_store *s, struct pending *self)
{
	outbox__row *rows = s->grp_rows;
	struct pending **batch = s->grp_batch;
	size_t n = 0;

	gather(s);
	while (s->head && n < GROUP_MAX) {
		struct pending *p = s->head;
		s->head = p->next;
		batch[n] = p;
		rows[n] = p->row;
		n++;
	}
	if (!s->head)
		s->tail = &s->head;
	s->queued -= n;
	pthread_mutex_unlock(&s->mu);

	err__clear();
	const int64_t t0 = platform__mono_us();
	/* Each row has its own outcome: under the outbox's size cap some may
	 * be refused while the others commit. */
	outbox__append(s->ob, rows, n, s->trusted_after_ms);
	const int64_t took = platform__mono_us() - t0;
	int stored = 0;
	for (size_t i = 0; i < n; i++)
		stored |= rows[i].refused == SCRM_OK;
	if (stored)
		platform__notifier_send(s->notify);

	/* Each caller of the group waits for its own post and touches nothing
	 * shared until then; the leader touches nothing of p after the post
	 * (the caller may have returned and p's stack be gone). */
	for (size_t i = 0; i < n; i++) {
		struct pending *p = batch[i];
		p->row.seq = rows[i].seq;
		p->row.clock_ok = rows[i].clock_ok;
		p->row.existing = rows[i].existing;
		memcpy(p->row.existing_id, rows[i].existing_id, sizeof(rows[i].existing_id));
		p->row.existing_wall_ms = rows[i].existing_wall_ms;
		p->rc = rows[i].refused;
		if (rows[i].refused)
			snprintf(p->errmsg, sizeof(p->errmsg), "%s", rows[i].why[0] ? rows[i].why : scrm_errmsg());
		p->done = 1;
		if (p != self)
			sem_post(&p->wake);
	}
	pthread_mutex_lock(&s->mu);
	s->last_group = n;
	s->last_commit_us = took;
}

/* End of a turn with the connection: hand the lead to the first caller
 * still queued, or — when nobody is queued, or a caller waits for the
 * connection itself (it would starve under a steady stream of sales
 * otherwise) — let go; whoever takes the connection next hands on the same
 * way, so queued events always get a leader. Called with mu held. */
static void hand_over(scrm_store *s)
{
	if (s->head && !s->excl_waiting) {
		s->head->lead = 1;
		sem_post(&s->head->wake);
		return;
	}
	s->leader = 0;
	pthread_cond_broadcast(&s->idle);
}

/* The connection to this thread alone (no group commits meanwhile), until
 * give_connection(). */
static void take_connection(scrm_store *s)
{
	pthread_mutex_lock(&s->mu);
	s->excl_waiting++;
	while (s->leader)
		pthread_cond_wait(&s->idle, &s->mu);
	s->excl_waiting--;
	s->leader = 1;
	pthread_mutex_unlock(&s->mu);
}

static void give_connection(scrm_store *s)
{
	pthread_mutex_lock(&s->mu);
	hand_over(s);
	pthread_mutex_unlock(&s->mu);
}

/* `hint`: what the caller has at hand of the event (borrowed; NULL: none):
 * key (a purchase's order_id or a return's return_id, the receipt's key) and
 * hinted/member/guide/has_reco (outbox.h). */
static int record_keyed(scrm_store *s, event__kind kind, sbuf *body, const outbox__row *hint, scrm_receipt *receipt)
{
	struct pending p;
	int rc;

	memset(&p, 0, sizeof(p));
	p.row.wall_ms = platform__wall_ms();
	p.row.mono_ms = platform__mono_ms();
	char id[37];
	if (uuid__v7(p.row.wall_ms, id) != 0)
		return err__set(SCRM_E_CRYPTO, "event id: random generator failed");
	p.row.id = id;
	p.row.kind = event__kind_name(kind);
	p.row.boot = s->boot;
	p.row.body = body->p;
	p.row.body_len = body->len;
	if (hint) {
		p.row.key = hint->key;
		p.row.hinted = hint->hinted;
		p.row.member = hint->member;
		p.row.guide = hint->guide;
		p.row.has_reco = hint->has_reco;
	}

	if (sem_init(&p.wake, 0, 0) != 0)
		return err__set(SCRM_E_INTERNAL, "capture: sem_init failed");
	pthread_mutex_lock(&s->mu);
	*s->tail = &p;
	s->tail = &p.next;
	s->queued++;
	if (s->gathering)
		pthread_cond_signal(&s->arrived);
	if (!s->leader) {
		s->leader = 1;
		p.lead = 1;
	}
	for (;;) {
		if (p.lead) {
			/* Leading: groups from the head of the queue until ours
			 * is in one (more than GROUP_MAX may be queued ahead). */
			commit_group(s, &p);
			if (p.done) {
				p.lead = 0;
				hand_over(s);
				pthread_mutex_unlock(&s->mu);
				break;
			}
			continue;
		}
		/* Wait without the mutex: posted once decided (done, and then
		 * nothing else touches p) or handed the lead (take the mutex
		 * back and commit). */
		pthread_mutex_unlock(&s->mu);
		while (sem_wait(&p.wake) != 0 && errno == EINTR)
			;
		if (p.done)
			break;
		pthread_mutex_lock(&s->mu);
	}
	sem_destroy(&p.wake);

	rc = p.rc;
	if (rc) {
		err__set(rc, "%s", p.errmsg);
		return rc;
	}
	if (receipt) {
		/* A retried sale: the first capture's receipt (scrm.h). */
		memcpy(receipt->event_id, p.row.existing ? p.row.existing_id : id, sizeof(receipt->event_id));
		receipt->seq = p.row.seq;
		receipt->wall_ms = p.row.existing ? p.row.existing_wall_ms : p.row.wall_ms;
	}
	return SCRM_OK;
}

int store__record(scrm_store *s, event__kind kind, sbuf *body, scrm_receipt *receipt)
{
	return record_keyed(s, kind, body, NULL, receipt);
}

/* Validate and encode one typed event: its canonical body, and in *hint
 * what the outbox would otherwise read back from the body (outbox.h: the
 * receipt's key, kinds.def, and a sale's member, guide and reco_id; all
 * borrowed from `in`). */
static int encode_typed(event__kind kind, const void *in, sbuf *body, outbox__row *hint)
{
	int rc = SCRM_E_INTERNAL;
	hint->key = hint->member = hint->guide = NULL;
	hint->hinted = hint->has_reco = 0;
	/* No default: a kind added to kinds.def is a -Wswitch warning here
	 * until it says whether POS software records it through a typed call. */
	switch (kind) {
	case EVENT_PURCHASE: {
		const scrm_purchase *p = in;
		if ((rc = event__encode_purchase(p, body)) == SCRM_OK)
			*hint = (outbox__row){.key = p->order_id, .hinted = 1, .member = p->member_id, .guide = p->guide_id,
					      .has_reco = p->reco_id != NULL};
		break;
	}
	case EVENT_RETURN: {
		const scrm_return *r = in;
		if ((rc = event__encode_return(r, body)) == SCRM_OK)
			*hint = (outbox__row){.key = r->return_id, .hinted = 1, .member = r->member_id, .guide = r->guide_id};
		break;
	}
	case EVENT_MEMBER_SCAN:
		rc = event__encode_scan(in, body);
		break;
	case EVENT_COUPON_REDEEM: /* scrm_redeem: store__record_redemption */
	case EVENT_RECO_SHOWN:    /* scrm_recommend: store__record */
		rc = err__set(SCRM_E_INTERNAL, "capture: %s has no typed call", event__kind_name(kind));
		break;
	}
	return rc;
}

static int record_typed(scrm_store *s, event__kind kind, const void *in, scrm_receipt *receipt)
{
	sbuf body;
	outbox__row hint;

	err__clear();
	if (!s)
		return err__set(SCRM_E_INVALID, "store: NULL");
	sbuf__init(&body);
	int rc = encode_typed(kind, in, &body, &hint);
	if (rc == SCRM_OK)
		rc = record_keyed(s, kind, &body, &hint, receipt);
	sbuf__free(&body);
	return rc;
}

int scrm_record_purchase(scrm_store *s, const scrm_purchase *p, scrm_receipt *receipt)
{
	return record_typed(s, EVENT_PURCHASE, p, receipt);
}

int scrm_record_return(scrm_store *s, const scrm_return *r, scrm_receipt *receipt)
{
	return record_typed(s, EVENT_RETURN, r, receipt);
}

int scrm_record_member_scan(scrm_store *s, const scrm_member_scan *m, scrm_receipt *receipt)
{
	return record_typed(s, EVENT_MEMBER_SCAN, m, receipt);
}

const char *scrm_record_kinds(void)
{
	return EVENT_JSON_KINDS;
}

int scrm_record_json(scrm_store *s, const char *json, size_t len, scrm_receipt *receipt)
{
	sbuf body;
	event__kind kind;
	int rc;

	err__clear();
	if (!s)
		return err__set(SCRM_E_INVALID, "store: NULL");
	sbuf__init(&body);
	rc = event__from_json(json, len, &kind, &body);
	if (rc == SCRM_OK)
		rc = store__record(s, kind, &body, receipt);
	sbuf__free(&body);
	return rc;
}

int store__exclusive(scrm_store *s, int (*fn)(outbox *ob, void *ctx), void *ctx)
{
	take_connection(s);
	int rc = fn(s->ob, ctx);
	give_connection(s);
	return rc;
}

struct redemption_ctx {
	outbox__row *row;
	outbox__limits *lim;
	int64_t trusted_after_ms;
};

static int append_redemption(outbox *ob, void *ctx)
{
	struct redemption_ctx *x = ctx;
	return outbox__append_redemption(ob, x->row, x->trusted_after_ms, x->lim);
}

int store__record_redemption(scrm_store *s, sbuf *body, outbox__limits *lim, scrm_receipt *receipt)
{
	outbox__row row;
	char id[37];
	memset(&row, 0, sizeof(row));
	row.wall_ms = platform__wall_ms();
	row.mono_ms = platform__mono_ms();
	if (uuid__v7(row.wall_ms, id) != 0)
		return err__set(SCRM_E_CRYPTO, "event id: random generator failed");
	row.id = id;
	row.kind = event__kind_name(EVENT_COUPON_REDEEM);
	row.boot = s->boot;
	row.body = body->p;
	row.body_len = body->len;
	struct redemption_ctx x = {.row = &row, .lim = lim, .trusted_after_ms = s->trusted_after_ms};
	int rc = store__exclusive(s, append_redemption, &x);
	if (rc)
		return rc; /* the message is this thread's: store__exclusive commits nobody else's events */
	if (lim->existing) {
		if (receipt) {
			memcpy(receipt->event_id, lim->existing_id, sizeof(receipt->event_id));
			receipt->seq = lim->existing_seq;
			receipt->wall_ms = lim->existing_wall_ms;
		}
		return SCRM_OK;
	}
	platform__notifier_send(s->notify);
	if (receipt) {
		memcpy(receipt->event_id, id, sizeof(receipt->event_id));
		receipt->seq = row.seq;
		receipt->wall_ms = row.wall_ms;
	}
	return SCRM_OK;
}

static int redemptions_json(outbox *ob, void *ctx)
{
	void **a = ctx;
	return outbox__redemptions(ob, *(int *)a[0], a[1]);
}

int scrm_redemptions(scrm_store *s, int limit, char **json)
{
	sbuf b;
	int rc;
	err__clear();
	if (!s || !json)
		return err__set(SCRM_E_INVALID, "store/json: NULL");
	*json = NULL;
	if (limit < 0)
		return err__set(SCRM_E_INVALID, "limit: must be >= 0 (0 = 100), got %d", limit);
	sbuf__init(&b);
	void *a[2] = {&limit, &b};
	rc = store__exclusive(s, redemptions_json, a);
	if (rc == SCRM_OK)
		*json = sbuf__take(&b, NULL);
	sbuf__free(&b);
	return rc;
}

int scrm_outbox_get_stats(scrm_store *s, scrm_outbox_stats *out)
{
	int rc;
	err__clear();
	if (!s || !out)
		return err__set(SCRM_E_INVALID, "store/out: NULL");
	/* The connection may be in use by a leader: no append runs on it
	 * while the figures are read. */
	take_connection(s);
	rc = outbox__stats(s->ob, out);
	give_connection(s);
	return rc;
}

/* ---- batch capture (scrm.h) ---- */

/* Validate and encode items[i] into body (and *kind, *hint as encode_typed). */
static int encode_item(const scrm_record_item *it, event__kind *kind, sbuf *body, outbox__row *hint)
{
	const int set = !!it->purchase + !!it->ret + !!it->scan + !!it->json;
	memset(hint, 0, sizeof(*hint));
	if (set != 1)
		return err__set(SCRM_E_INVALID, "exactly one of purchase, ret, scan and json must be set, %d are", set);
	if (it->json)
		return event__from_json(it->json, it->json_len, kind, body);
	*kind = it->purchase ? EVENT_PURCHASE : it->ret ? EVENT_RETURN : EVENT_MEMBER_SCAN;
	return encode_typed(*kind, it->purchase ? (const void *)it->purchase : it->ret ? (const void *)it->ret : (const void *)it->scan,
			    body, hint);
}

/* results[i] refused: "items[i]: <lead><why>". */
static void item_failed(scrm_record_result *r, size_t i, int rc, const char *lead, const char *why)
{
	r->rc = rc;
	snprintf(r->error, sizeof(r->error), "items[%zu]: %s%.440s", i, lead, why);
}

int scrm_record_batch(scrm_store *s, const scrm_record_item *items, size_t n, scrm_record_result *results)
{
	struct bitem {
		sbuf body;
		char id[37];
	} *b = NULL;
	outbox__row *rows = NULL;
	size_t *of = NULL, m = 0;
	int rc = SCRM_OK;

	err__clear();
	if (!s || (n && (!items || !results)))
		return err__set(SCRM_E_INVALID, "store/items/results: NULL");
	if (n > SCRM_MAX_BATCH)
		return err__set(SCRM_E_INVALID, "n: at most %d events per batch, got %zu", SCRM_MAX_BATCH, n);
	if (n == 0)
		return SCRM_OK;
	memset(results, 0, n * sizeof(*results));
	b = calloc(n, sizeof(*b));
	rows = calloc(n, sizeof(*rows));
	of = calloc(n, sizeof(*of));
	if (!b || !rows || !of) {
		rc = err__set(SCRM_E_NOMEM, "out of memory for a batch of %zu", n);
		for (size_t i = 0; i < n; i++)
			item_failed(&results[i], i, rc, "not recorded: ", "out of memory");
		goto cleanup;
	}
	/* One clock reading for the whole batch: its events were recorded at
	 * once (the till's own times travel in the bodies it sends). */
	const int64_t wall = platform__wall_ms(), mono = platform__mono_ms();
	for (size_t i = 0; i < n; i++) {
		event__kind kind = EVENT_PURCHASE;
		outbox__row *r = &rows[m]; /* the next row; taken only if the item is valid */
		sbuf__init(&b[i].body);
		err__clear();
		int irc = encode_item(&items[i], &kind, &b[i].body, r);
		if (irc == SCRM_OK && uuid__v7(wall, b[i].id) != 0)
			irc = err__set(SCRM_E_CRYPTO, "event id: random generator failed");
		if (irc) {
			item_failed(&results[i], i, irc, "", scrm_errmsg());
			continue;
		}
		r->id = b[i].id;
		r->kind = event__kind_name(kind);
		r->wall_ms = wall;
		r->mono_ms = mono;
		r->boot = s->boot;
		r->body = b[i].body.p;
		r->body_len = b[i].body.len;
		of[m++] = i;
	}
	if (m == 0)
		goto cleanup;

	take_connection(s);
	err__clear();
	outbox__append(s->ob, rows, m, s->trusted_after_ms);
	char msg[480];
	snprintf(msg, sizeof(msg), "%s", scrm_errmsg());
	give_connection(s);

	/* The transaction failed when every row is refused without a reason
	 * of its own (outbox.h); otherwise it committed and each row has its
	 * outcome. */
	int failed = 1, stored = 0;
	for (size_t k = 0; k < m; k++) {
		failed &= rows[k].refused != SCRM_OK && !rows[k].why[0];
		stored |= rows[k].refused == SCRM_OK && !rows[k].existing;
	}
	for (size_t k = 0; k < m; k++) {
		scrm_record_result *res = &results[of[k]];
		const outbox__row *r = &rows[k];
		if (failed) {
			item_failed(res, of[k], r->refused, "not recorded: ", msg);
		} else if (r->refused) {
			item_failed(res, of[k], r->refused, "", r->why);
		} else {
			res->rc = SCRM_OK;
			snprintf(res->receipt.event_id, sizeof(res->receipt.event_id), "%s", r->existing ? r->existing_id : r->id);
			res->receipt.seq = r->seq;
			res->receipt.wall_ms = r->existing ? r->existing_wall_ms : r->wall_ms;
		}
	}
	if (stored)
		platform__notifier_send(s->notify);
	if (failed)
		rc = err__set(rows[0].refused, "batch not recorded: %s", msg);
cleanup:
	if (b)
		for (size_t i = 0; i < n; i++)
			sbuf__free(&b[i].body);
	free(b);
	free(rows);
	free(of);
	if (rc == SCRM_OK)
		err__clear();
	return rc;
}
