/* SPDX-License-Identifier: Apache-2.0 */
/*
 * capture: the public capture API of libscrm (include/scrm/scrm.h).
 *
 * Group commit. Each record call validates and encodes its event on the
 * caller's thread, then queues it. The first caller to find no commit in
 * progress becomes the leader: it takes everything queued, appends it in one
 * SQLite transaction (one fsync), publishes the outcome to each waiter and
 * repeats while more arrived meanwhile. Followers just wait for their
 * outcome. A lone caller pays one transaction per event; N concurrent
 * callers share one fsync, which is what lets a busy store capture
 * hundreds of durable events per fsync.
 */
#include <scrm/scrm.h>

#include "err.h"
#include "event.h"
#include "outbox.h"
#include "platform.h"
#include "capture.h"
#include "uuid.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Events committed per transaction at most, so one leader's turn is bounded. */
#define GROUP_MAX 512

struct pending {
	struct pending *next;
	outbox__row row;
	int done;
	int rc;
	char errmsg[512];
};

struct scrm_store {
	outbox *ob; /* used only by the current leader, or under mu for reads */
	platform__notifier *notify; /* pokes the daemon after each commit */
	char boot[37];
	int64_t trusted_after_ms;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct pending *head, **tail;
	int leader;
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
	rc = outbox__open(dir, opts ? opts->device_id : NULL, opts ? opts->busy_timeout_ms : 0, &s->ob);
	if (rc) {
		free(s);
		return rc;
	}
	platform__boot_id(s->boot);
	s->notify = platform__notifier_open(dir);
	s->trusted_after_ms = (int64_t)SCRM_BUILD_EPOCH * 1000;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	s->tail = &s->head;
	*out = s;
	return SCRM_OK;
}

void scrm_store_close(scrm_store *s)
{
	if (!s)
		return;
	outbox__close(s->ob);
	platform__notifier_close(s->notify);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	free(s);
}

const char *scrm_store_device_id(const scrm_store *s)
{
	return s ? outbox__device_id(s->ob) : "";
}

/* Commit everything queued, repeatedly, until the queue is empty. Called
 * with mu held; returns with mu held. */
static void lead(scrm_store *s)
{
	outbox__row rows[GROUP_MAX];
	struct pending *batch[GROUP_MAX];

	while (s->head) {
		size_t n = 0;
		while (s->head && n < GROUP_MAX) {
			struct pending *p = s->head;
			s->head = p->next;
			batch[n] = p;
			rows[n] = p->row;
			n++;
		}
		if (!s->head)
			s->tail = &s->head;
		pthread_mutex_unlock(&s->mu);

		err__clear();
		/* Each row has its own outcome: under the outbox's size cap some
		 * may be refused while the others commit. */
		outbox__append(s->ob, rows, n, s->trusted_after_ms);
		int stored = 0;
		for (size_t i = 0; i < n; i++)
			stored |= rows[i].refused == SCRM_OK;
		if (stored)
			platform__notifier_send(s->notify);

		pthread_mutex_lock(&s->mu);
		for (size_t i = 0; i < n; i++) {
			batch[i]->row.seq = rows[i].seq;
			batch[i]->row.clock_ok = rows[i].clock_ok;
			batch[i]->row.existing = rows[i].existing;
			memcpy(batch[i]->row.existing_id, rows[i].existing_id, sizeof(rows[i].existing_id));
			batch[i]->row.existing_wall_ms = rows[i].existing_wall_ms;
			batch[i]->rc = rows[i].refused;
			if (rows[i].refused)
				snprintf(batch[i]->errmsg, sizeof(batch[i]->errmsg), "%s",
					 rows[i].why ? rows[i].why : scrm_errmsg());
			batch[i]->done = 1;
		}
		pthread_cond_broadcast(&s->cv);
	}
}

/* Take the lead (none is active), commit everything queued, hand back and
 * wake all waiters: their events are done, or one of them must lead next.
 * Called and returns with mu held. */
static void lead_round(scrm_store *s)
{
	s->leader = 1;
	lead(s);
	s->leader = 0;
	pthread_cond_broadcast(&s->cv);
}

/* `key`: a purchase's order_id or a return's return_id (borrowed), the
 * receipt's key; NULL for other kinds or when not at hand. */
static int record_keyed(scrm_store *s, event__kind kind, sbuf *body, const char *key, scrm_receipt *receipt)
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
	p.row.key = key;

	pthread_mutex_lock(&s->mu);
	*s->tail = &p;
	s->tail = &p.next;
	if (!s->leader)
		lead_round(s);
	while (!p.done) {
		pthread_cond_wait(&s->cv, &s->mu);
		if (!p.done && !s->leader)
			lead_round(s);
	}
	pthread_mutex_unlock(&s->mu);

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

static int record_typed(scrm_store *s, event__kind kind, const void *in, scrm_receipt *receipt)
{
	sbuf body;
	const char *key = NULL; /* the receipt's key (kinds.def), borrowed from `in` */
	int rc = SCRM_E_INTERNAL;

	err__clear();
	if (!s)
		return err__set(SCRM_E_INVALID, "store: NULL");
	sbuf__init(&body);
	/* No default: a kind added to kinds.def is a -Wswitch warning here
	 * until it says whether POS software records it through a typed call. */
	switch (kind) {
	case EVENT_PURCHASE:
		rc = event__encode_purchase(in, &body);
		key = rc == SCRM_OK ? ((const scrm_purchase *)in)->order_id : NULL;
		break;
	case EVENT_RETURN:
		rc = event__encode_return(in, &body);
		key = rc == SCRM_OK ? ((const scrm_return *)in)->return_id : NULL;
		break;
	case EVENT_MEMBER_SCAN:
		rc = event__encode_scan(in, &body);
		break;
	case EVENT_COUPON_REDEEM: /* scrm_redeem: store__record_redemption */
	case EVENT_RECO_SHOWN:    /* scrm_recommend: store__record */
		rc = err__set(SCRM_E_INTERNAL, "capture: %s has no typed call", event__kind_name(kind));
		break;
	}
	if (rc == SCRM_OK)
		rc = record_keyed(s, kind, &body, key, receipt);
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
	int rc;
	pthread_mutex_lock(&s->mu);
	while (s->leader)
		pthread_cond_wait(&s->cv, &s->mu);
	s->leader = 1;
	pthread_mutex_unlock(&s->mu);
	rc = fn(s->ob, ctx);
	char msg[256] = "";
	if (rc)
		snprintf(msg, sizeof(msg), "%s", scrm_errmsg());
	pthread_mutex_lock(&s->mu);
	/* Events queued while we held the connection need a leader (which
	 * clears this thread's message: restored below). */
	lead_round(s);
	pthread_mutex_unlock(&s->mu);
	if (rc)
		err__set(rc, "%s", msg);
	return rc;
}

struct redemption_ctx {
	outbox__row *row;
	outbox__limits *lim;
	int64_t trusted_after_ms;
	char errmsg[512];
};

static int append_redemption(outbox *ob, void *ctx)
{
	struct redemption_ctx *x = ctx;
	int rc = outbox__append_redemption(ob, x->row, x->trusted_after_ms, x->lim);
	/* lead_round() after us may overwrite this thread's message */
	if (rc)
		snprintf(x->errmsg, sizeof(x->errmsg), "%s", scrm_errmsg());
	return rc;
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
		return err__set(rc, "%s", x.errmsg);
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
	/* The connection may be in use by a leader: take the lead ourselves so
	 * no append runs on it meanwhile. */
	pthread_mutex_lock(&s->mu);
	while (s->leader)
		pthread_cond_wait(&s->cv, &s->mu);
	s->leader = 1;
	pthread_mutex_unlock(&s->mu);
	rc = outbox__stats(s->ob, out);
	pthread_mutex_lock(&s->mu);
	/* Events queued while we held the connection need a leader. */
	lead_round(s);
	pthread_mutex_unlock(&s->mu);
	return rc;
}
