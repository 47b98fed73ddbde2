/* SPDX-License-Identifier: Apache-2.0 */
/*
 * delivery: outbox → batches → central's ack (see delivery.h for what it
 * owns and the invariants it keeps; docs/protocol.md for the contract).
 *
 * State, all owned by the caller's thread:
 *   sent_upto   highest seq published since the last go-back point
 *   win[]       published batches not yet acknowledged, oldest first
 *   base        oldest pending seq as last read (base_known says the read
 *               worked); the floor of every batch's `base`
 */
#include "delivery.h"

#include "err.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static void note_error(delivery *d, const char *what)
{
	char q[300];
	d->last_error_ms = d->io.wall_ms(d->io.ctx);
	snprintf(d->last_error, sizeof(d->last_error), "%s: %s", what, scrm_errmsg());
	LOG(LOG_ERROR, "sync", "outbox error; nothing is acknowledged or sent past it", "what=%s err=%s", what,
	    log__q(q, sizeof(q), scrm_errmsg()));
}

static void note_ok(delivery *d)
{
	d->last_error_ms = 0;
	d->last_error[0] = '\0';
}

/* Read the oldest pending seq into base; on failure base is unknown. */
static int refresh_base(delivery *d)
{
	int64_t oldest = 0;
	int rc = d->io.oldest(d->io.ctx, &oldest);
	if (rc != SCRM_OK) {
		d->base_known = 0;
		d->n_read_errors++;
		note_error(d, "read oldest pending seq");
		return rc;
	}
	d->base = oldest;
	d->base_known = 1;
	return SCRM_OK;
}

void delivery__init(delivery *d, const delivery__io *io, const delivery__settings *set)
{
	memset(d, 0, sizeof(*d));
	d->io = *io;
	sbuf__init(&d->buf);
	sbuf__init(&d->events);
	delivery__configure(d, set);
}

void delivery__free(delivery *d)
{
	sbuf__free(&d->buf);
	sbuf__free(&d->events);
}

void delivery__configure(delivery *d, const delivery__settings *set)
{
	d->set = *set;
	if (d->set.window < 1)
		d->set.window = 1;
	if (d->set.window > DELIVERY_MAX_WINDOW)
		d->set.window = DELIVERY_MAX_WINDOW;
	if (d->set.batch_max_events < 1)
		d->set.batch_max_events = 1;
	if (d->set.batch_max_events > DELIVERY_MAX_BATCH_EVENTS)
		d->set.batch_max_events = DELIVERY_MAX_BATCH_EVENTS;
	if (d->set.batch_max_bytes < 2 * DELIVERY_ENVELOPE_BYTES)
		d->set.batch_max_bytes = 2 * DELIVERY_ENVELOPE_BYTES;
	if (d->set.max_payload && d->set.max_payload < 2 * DELIVERY_ENVELOPE_BYTES)
		d->set.max_payload = 2 * DELIVERY_ENVELOPE_BYTES;
}

void delivery__go_back(delivery *d, const char *why)
{
	/* A failed read leaves base unknown: pump reads it again first. */
	refresh_base(d);
	if (d->nwin > 0) {
		d->n_redeliveries++;
		LOG(LOG_WARN, "sync", "redelivering unacknowledged events", "reason=%s from_seq=%lld batches=%d", why,
		    (long long)d->base, d->nwin);
	}
	d->nwin = 0;
	d->sent_upto = 0; /* read from the oldest pending again */
}

void delivery__link(delivery *d, int up, const char *why)
{
	d->up = up;
	delivery__go_back(d, why);
	if (up)
		delivery__pump(d);
}

int64_t delivery__batch_base(int64_t outbox_oldest, int64_t inflight_first, int64_t first)
{
	int64_t base = first;
	if (inflight_first > 0 && inflight_first < base)
		base = inflight_first;
	if (outbox_oldest > 0 && outbox_oldest < base)
		base = outbox_oldest;
	return base;
}

int delivery__pump(delivery *d)
{
	int rc;
	if (!d->up)
		return SCRM_OK;
	/* With nothing in flight the oldest pending seq is read again: it
	 * keeps base exact, and an event put back below what this round
	 * already sent (recovered from a quarantined file) starts a new round
	 * so it goes out at all. */
	if ((!d->base_known || d->nwin == 0) && (rc = refresh_base(d)) != SCRM_OK)
		return rc;
	if (d->nwin == 0 && d->base > 0 && d->base <= d->sent_upto)
		d->sent_upto = 0;
	while (d->nwin < d->set.window) {
		struct delivery__batch *b = &d->win[d->nwin];
		delivery__read r;
		int64_t now = d->io.wall_ms(d->io.ctx);
		size_t soft = d->set.batch_max_bytes, hard = 0;

		if (d->set.max_payload) {
			hard = d->set.max_payload - DELIVERY_ENVELOPE_BYTES;
			if (d->set.max_payload < soft)
				soft = d->set.max_payload;
		}
		memset(&r, 0, sizeof(r));
		sbuf__reset(&d->events);
		rc = d->io.read(d->io.ctx, d->sent_upto, d->set.batch_max_events, soft - DELIVERY_ENVELOPE_BYTES, hard,
				&d->events, &r);
		if (rc != SCRM_OK) {
			d->n_read_errors++;
			note_error(d, "read batch");
			return rc;
		}
		note_ok(d);
		if (r.count == 0) {
			LOG(LOG_DEBUG, "sync", "nothing more to send", "after_seq=%lld window_used=%d", (long long)d->sent_upto,
			    d->nwin);
			return SCRM_OK;
		}
		if (d->io.batch_id(d->io.ctx, now, b->id) != SCRM_OK)
			return SCRM_E_CRYPTO;
		/* base: every seq below it is acknowledged. d->base is the
		 * oldest pending at the last read (0: the outbox was empty then,
		 * so the oldest unacknowledged event is the first of the oldest
		 * batch in flight, or this batch's first). */
		int64_t base = delivery__batch_base(d->base, d->nwin > 0 ? d->win[0].first : 0, r.first);
		/* after: no pending event lies between it and this batch's
		 * first, nor between two events of the batch (the read returns
		 * pending events in seq order past sent_upto). A seq missing
		 * there was evicted under the outbox cap and will never come. */
		int64_t after = d->sent_upto > 0 ? d->sent_upto : r.first - 1;
		sbuf__reset(&d->buf);
		sbuf__puts(&d->buf, "{\"v\":1,\"batch\":\"");
		sbuf__puts(&d->buf, b->id);
		sbuf__puts(&d->buf, "\",\"sent_ms\":");
		sbuf__i64(&d->buf, now);
		sbuf__puts(&d->buf, ",\"base\":");
		sbuf__i64(&d->buf, base);
		sbuf__puts(&d->buf, ",\"after\":");
		sbuf__i64(&d->buf, after);
		sbuf__puts(&d->buf, ",\"events\":[");
		sbuf__put(&d->buf, d->events.p, d->events.len);
		sbuf__puts(&d->buf, "]}");
		if (d->buf.oom)
			return err__set(SCRM_E_NOMEM, "out of memory building a batch");
		if ((rc = d->io.publish(d->io.ctx, d->buf.p, d->buf.len)) != SCRM_OK) {
			LOG(LOG_WARN, "sync", "publish refused by client", "batch=%s", b->id);
			return rc;
		}
		b->first = r.first;
		b->last = r.last;
		b->bytes = d->buf.len;
		b->deadline_ms = d->io.mono_ms(d->io.ctx) + d->set.ack_timeout_ms;
		LOG(LOG_DEBUG, "sync", "batch published", "batch=%s first=%lld last=%lld events=%zu bytes=%zu base=%lld", b->id,
		    (long long)b->first, (long long)b->last, r.count, d->buf.len, (long long)base);
		d->sent_upto = r.last;
		d->nwin++;
		d->n_published += (int64_t)r.count;
	}
	return SCRM_OK;
}

/* Drop window entries that are fully acknowledged: covered by a range of
 * this ack (their events were just deleted), or below the oldest pending
 * event (deleted by an earlier ack, rejected, evicted). If the oldest
 * pending seq cannot be read, only the first kind is known to be done. */
static void retire(delivery *d, const int64_t (*ranges)[2], size_t nr)
{
	int known = refresh_base(d) == SCRM_OK;
	int64_t oldest = d->base;
	int j = 0;
	for (int i = 0; i < d->nwin; i++) {
		struct delivery__batch *b = &d->win[i];
		int done = 0;
		if (known)
			done = oldest == 0 ? b->last <= d->sent_upto : b->last < oldest;
		for (size_t r = 0; !done && r < nr; r++)
			if (ranges[r][0] <= b->first && b->last <= ranges[r][1])
				done = 1;
		if (!done)
			d->win[j++] = *b;
	}
	d->nwin = j;
}

void delivery__on_ack(delivery *d, const ack__msg *ack)
{
	char q[300];
	for (size_t i = 0; i < ack->n_rejected; i++) {
		if (d->io.reject(d->io.ctx, ack->rejected[i].seq, ack->rejected[i].reason) == SCRM_OK)
			LOG(LOG_ERROR, "sync", "central rejected an event; kept in the rejected table", "seq=%lld reason=%s",
			    (long long)ack->rejected[i].seq, log__q(q, sizeof(q), ack->rejected[i].reason));
		else
			/* Still pending: sent again, refused again, kept then. */
			LOG(LOG_ERROR, "sync", "cannot move a rejected event aside; it stays pending", "seq=%lld err=%s",
			    (long long)ack->rejected[i].seq, log__q(q, sizeof(q), scrm_errmsg()));
	}
	if (ack->n_acked) {
		int64_t deleted = 0;
		if (d->io.ack(d->io.ctx, (const int64_t(*)[2])ack->acked, ack->n_acked, &deleted) != SCRM_OK) {
			/* Nothing was deleted: the window stays as it is and the
			 * batches go again at their deadline. */
			d->n_ack_errors++;
			note_error(d, "apply ack");
			return;
		}
		d->n_acked += deleted;
		LOG(LOG_DEBUG, "sync", "ack applied", "ranges=%zu deleted=%lld", ack->n_acked, (long long)deleted);
	}
	retire(d, (const int64_t(*)[2])ack->acked, ack->n_acked);

	/* resend_from: central has a hole and stored nothing past it. Act only
	 * on acks for batches of the current round: after a go-back, the acks
	 * still arriving for the old round's batches would ask for the same
	 * hole again. */
	if (ack->resend_from && ack->batch[0]) {
		int current = 0;
		for (int i = 0; i < d->nwin; i++)
			if (strcmp(d->win[i].id, ack->batch) == 0)
				current = 1;
		if (current && ack->resend_from <= d->sent_upto)
			delivery__go_back(d, "central_missing_events");
	}
	delivery__pump(d);
}

void delivery__tick(delivery *d)
{
	if (d->up && d->nwin > 0 && d->win[0].deadline_ms <= d->io.mono_ms(d->io.ctx)) {
		delivery__go_back(d, "ack_timeout");
		delivery__pump(d);
	}
}

int64_t delivery__deadline(const delivery *d)
{
	return d->up && d->nwin > 0 ? d->win[0].deadline_ms : 0;
}

size_t delivery__inflight_max_bytes(const delivery *d)
{
	size_t m = 0;
	for (int i = 0; i < d->nwin; i++)
		if (d->win[i].bytes > m)
			m = d->win[i].bytes;
	return m;
}
