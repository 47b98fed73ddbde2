/* SPDX-License-Identifier: Apache-2.0 */
/*
 * memoutbox: the in-memory outbox of the delivery simulator and of
 * delivery_test (see memoutbox.h). Event JSON is written the way
 * agent/lib/outbox/outbox.c writes it (put_event, put_marker_damaged), and
 * memoutbox__read follows outbox__read_batch step by step, so that what
 * delivery publishes here is byte for byte what it publishes on a device.
 */
#include "memoutbox.h"

#include "err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const kind_names[MO_NKINDS] = {"purchase", "return", "coupon_redeem", "member_scan", "reco_shown"};

const char *memoutbox__kind_name(int kind)
{
	return kind >= 0 && kind < MO_NKINDS ? kind_names[kind] : "unknown";
}

int memoutbox__kind_paid(int kind)
{
	return kind == MO_PURCHASE || kind == MO_RETURN || kind == MO_COUPON_REDEEM;
}

/* Eviction order (agent/lib/outbox/outbox.c EVICT_CLASS): browsing, then scans, then
 * any other kind that is not paid for. */
static int evict_class(int kind)
{
	return kind == MO_RECO_SHOWN ? 0 : kind == MO_MEMBER_SCAN ? 1 : 2;
}

static int64_t stored_size(const memoutbox_event *e)
{
	return (int64_t)e->body_len + MEMOUTBOX_ROW_OVERHEAD;
}

void memoutbox__init(memoutbox *ob, const char *boot)
{
	memset(ob, 0, sizeof(*ob));
	ob->boot = boot;
	ob->next_seq = 1;
}

void memoutbox__free(memoutbox *ob)
{
	for (size_t i = 0; i < ob->n_ledger; i++)
		free(ob->ledger[i].body);
	free(ob->ledger);
	free(ob->pending);
	memset(ob, 0, sizeof(*ob));
}

void memoutbox__io(memoutbox *ob, delivery__io *io)
{
	io->ctx = ob;
	io->read = memoutbox__read;
	io->oldest = memoutbox__oldest;
	io->ack = memoutbox__ack;
	io->reject = memoutbox__reject;
}

static int fails(memoutbox *ob, int op)
{
	int f = 0;
	if (ob->fail_next[op] > 0) {
		ob->fail_next[op]--;
		f = 1;
	} else if (ob->fault && ob->fault(ob->hook_ctx, op)) {
		f = 1;
	}
	if (f)
		ob->n_faults[op]++;
	return f;
}

static void *grow(void *p, size_t *cap, size_t need, size_t size)
{
	if (need <= *cap)
		return p;
	size_t n = *cap ? *cap * 2 : 64;
	while (n < need)
		n *= 2;
	void *q = realloc(p, n * size);
	if (!q) {
		fprintf(stderr, "memoutbox: out of memory\n");
		abort();
	}
	*cap = n;
	return q;
}

memoutbox_event *memoutbox__find(memoutbox *ob, int64_t seq)
{
	size_t lo = 0, hi = ob->n_ledger;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (ob->ledger[mid].seq < seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < ob->n_ledger && ob->ledger[lo].seq == seq ? &ob->ledger[lo] : NULL;
}

/* Position in pending[] of the first event with seq > after. */
static size_t pending_after(const memoutbox *ob, int64_t after)
{
	size_t lo = 0, hi = ob->n_pending;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (ob->ledger[ob->pending[mid]].seq <= after)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Remove pending[i], giving the event its fate. */
static void drop_pending(memoutbox *ob, size_t i, int fate)
{
	memoutbox_event *e = &ob->ledger[ob->pending[i]];
	e->fate = fate;
	ob->used_bytes -= stored_size(e);
	memmove(&ob->pending[i], &ob->pending[i + 1], (ob->n_pending - i - 1) * sizeof(ob->pending[0]));
	ob->n_pending--;
}

/* Evict evictable events with seq < before in eviction order until `want`
 * bytes are free; with all_or_nothing, nothing unless `want` can be met. */
static int64_t evict_for(memoutbox *ob, int64_t want, int64_t before, int all_or_nothing, size_t max_events)
{
	int64_t avail = 0;
	size_t n = 0;
	if (all_or_nothing) {
		for (size_t i = 0; i < ob->n_pending; i++) {
			const memoutbox_event *e = &ob->ledger[ob->pending[i]];
			if (!memoutbox__kind_paid(e->kind) && e->seq < before)
				avail += stored_size(e);
		}
		if (avail < want)
			return 0;
	}
	int64_t freed = 0;
	for (int cls = 0; cls <= 2 && freed < want && n < max_events; cls++) {
		for (size_t i = 0; i < ob->n_pending && freed < want && n < max_events;) {
			memoutbox_event *e = &ob->ledger[ob->pending[i]];
			if (memoutbox__kind_paid(e->kind) || evict_class(e->kind) != cls || e->seq >= before) {
				i++;
				continue;
			}
			freed += stored_size(e);
			drop_pending(ob, i, MO_EVICTED);
			ob->n_evicted++;
			n++;
		}
	}
	return freed;
}

size_t memoutbox__evict(memoutbox *ob, size_t n)
{
	int64_t before = ob->n_evicted;
	evict_for(ob, INT64_MAX, INT64_MAX, 0, n);
	return (size_t)(ob->n_evicted - before);
}

static void uuid_from(char out[37], uint64_t a, uint64_t b)
{
	snprintf(out, 37, "%08x-%04x-7%03x-8%03x-%012llx", (unsigned)(a >> 32), (unsigned)((a >> 16) & 0xffff),
		 (unsigned)(a & 0xfff), (unsigned)(b >> 48 & 0xfff), (unsigned long long)(b & 0xffffffffffffULL));
}

int64_t memoutbox__capture(memoutbox *ob, int kind, const char *id, int64_t wall_ms, int64_t mono_ms, int clock_ok,
			   const char *body, int damage)
{
	size_t blen = strlen(body);
	int64_t need = (int64_t)blen + MEMOUTBOX_ROW_OVERHEAD;
	int paid = memoutbox__kind_paid(kind);
	if (ob->cap_bytes > 0) {
		if (ob->used_bytes + need > ob->cap_bytes && need <= ob->cap_bytes)
			evict_for(ob, ob->used_bytes + need - ob->cap_bytes, ob->next_seq, !paid, SIZE_MAX);
		if (ob->used_bytes + need > ob->cap_bytes) {
			ob->n_refused++;
			return 0;
		}
	}
	ob->ledger = grow(ob->ledger, &ob->cap_ledger, ob->n_ledger + 1, sizeof(*ob->ledger));
	ob->pending = grow(ob->pending, &ob->cap_pending, ob->n_pending + 1, sizeof(*ob->pending));
	memoutbox_event *e = &ob->ledger[ob->n_ledger];
	memset(e, 0, sizeof(*e));
	e->seq = ob->next_seq++;
	if (id)
		snprintf(e->id, sizeof(e->id), "%s", id);
	else
		uuid_from(e->id, (uint64_t)wall_ms << 16 | ((uint64_t)e->seq & 0xffff), (uint64_t)e->seq * 0x9e3779b97f4a7c15ULL);
	e->kind = kind;
	e->wall_ms = wall_ms;
	e->mono_ms = mono_ms;
	e->clock_ok = clock_ok;
	e->body = strdup(body);
	if (!e->body) {
		fprintf(stderr, "memoutbox: out of memory\n");
		abort();
	}
	e->body_len = blen;
	e->damage = damage;
	e->fate = MO_PENDING;
	ob->pending[ob->n_pending++] = ob->n_ledger++;
	ob->used_bytes += need;
	return e->seq;
}

void memoutbox__jump(memoutbox *ob, int64_t delta)
{
	ob->next_seq += delta;
}

int memoutbox__hide(memoutbox *ob, int64_t seq)
{
	size_t i = pending_after(ob, seq - 1);
	if (i >= ob->n_pending || ob->ledger[ob->pending[i]].seq != seq)
		return -1;
	ob->ledger[ob->pending[i]].ever_hidden = 1;
	drop_pending(ob, i, MO_HIDDEN);
	ob->n_hidden++;
	return 0;
}

size_t memoutbox__recover_all(memoutbox *ob)
{
	size_t n = 0;
	for (size_t k = 0; k < ob->n_ledger && ob->n_hidden > 0; k++) {
		memoutbox_event *e = &ob->ledger[k];
		if (e->fate != MO_HIDDEN)
			continue;
		ob->n_hidden--;
		ob->pending = grow(ob->pending, &ob->cap_pending, ob->n_pending + 1, sizeof(*ob->pending));
		size_t i = pending_after(ob, e->seq);
		memmove(&ob->pending[i + 1], &ob->pending[i], (ob->n_pending - i) * sizeof(ob->pending[0]));
		ob->pending[i] = k;
		ob->n_pending++;
		e->fate = MO_PENDING;
		e->recovered = 1;
		ob->used_bytes += stored_size(e);
		ob->n_recovered++;
		n++;
	}
	return n;
}

size_t memoutbox__hidden_count(const memoutbox *ob)
{
	return ob->n_hidden;
}

int64_t memoutbox__oldest_pending(const memoutbox *ob, int skip_recovered)
{
	for (size_t i = 0; i < ob->n_pending; i++) {
		const memoutbox_event *e = &ob->ledger[ob->pending[i]];
		if (!skip_recovered || !e->recovered)
			return e->seq;
	}
	return 0;
}

int64_t memoutbox__pending_between(const memoutbox *ob, int64_t lo, int64_t hi)
{
	size_t i = pending_after(ob, lo);
	if (i < ob->n_pending && ob->ledger[ob->pending[i]].seq < hi)
		return ob->ledger[ob->pending[i]].seq;
	return 0;
}

/* ---- event JSON, as agent/lib/outbox/outbox.c writes it ---- */

static void put_header(sbuf *out, const memoutbox_event *e, const char *boot)
{
	/* Ids and kind names are plain ASCII, written unescaped as outbox.c
	 * does; the borrowed boot id is appended, not formatted. */
	char head[256];
	snprintf(head, sizeof(head), "{\"id\":\"%s\",\"seq\":%lld,\"kind\":\"%s\",\"wall_ms\":%lld,\"mono_ms\":%lld,"
		 "\"boot\":\"",
		 e->id, (long long)e->seq, memoutbox__kind_name(e->kind), (long long)e->wall_ms, (long long)e->mono_ms);
	sbuf__puts(out, head);
	sbuf__puts(out, boot);
	sbuf__puts(out, e->clock_ok ? "\",\"clock_ok\":true" : "\",\"clock_ok\":false");
}

static void put_set_aside(sbuf *out, const memoutbox_event *e)
{
	char detail[200];
	if (strcmp(e->aside_reason, "too_big") == 0)
		snprintf(detail, sizeof(detail),
			 "the event is %zu bytes as sent; the broker accepts messages of at most a smaller size"
			 " (its Maximum Packet Size, less the topic and batch envelope)",
			 e->aside_bytes + 150);
	else
		snprintf(detail, sizeof(detail), "the stored body no longer parses");
	sbuf__puts(out, ",\"set_aside\":{\"reason\":");
	sbuf__jstr(out, e->aside_reason);
	sbuf__puts(out, ",\"detail\":");
	sbuf__jstr(out, detail);
	sbuf__puts(out, ",\"bytes\":");
	sbuf__i64(out, (int64_t)e->aside_bytes);
	sbuf__putc(out, '}');
}

static void put_event(sbuf *out, const memoutbox_event *e, const char *boot)
{
	if (e->aside && e->damage == MO_DAMAGED_ID) {
		/* put_marker_damaged: only what is still well-formed */
		sbuf__puts(out, "{\"seq\":");
		sbuf__i64(out, e->seq);
		sbuf__puts(out, ",\"kind\":\"");
		sbuf__puts(out, memoutbox__kind_name(e->kind));
		sbuf__putc(out, '"');
		put_set_aside(out, e);
	} else {
		put_header(out, e, boot);
		if (e->aside) {
			put_set_aside(out, e);
		} else {
			sbuf__puts(out, ",\"body\":");
			sbuf__put(out, e->body, e->body_len);
		}
	}
	if (e->recovered)
		sbuf__puts(out, ",\"recovered\":true");
	sbuf__putc(out, '}');
}

/* ---- delivery__io ---- */

int memoutbox__read(void *ctx, int64_t after_seq, size_t max_events, size_t max_bytes, size_t hard_bytes, sbuf *out,
		    delivery__read *r)
{
	memoutbox *ob = ctx;
	size_t n = 0;
	memset(r, 0, sizeof(*r));
	if (fails(ob, MO_OP_READ))
		return err__set(SCRM_E_IO, "memoutbox: read batch: injected I/O error");
	for (size_t i = pending_after(ob, after_seq); i < ob->n_pending && n < max_events;) {
		memoutbox_event *e = &ob->ledger[ob->pending[i]];
		size_t mark = out->len;
		const char *why = NULL;
		if (n)
			sbuf__putc(out, ',');
		if (!e->aside && e->damage != MO_INTACT)
			why = "unreadable";
		else
			put_event(out, e, ob->boot);
		if (e->aside && hard_bytes && out->len - mark - (n ? 1 : 0) > hard_bytes) {
			/* A marker larger than the broker takes: the bare one
			 * (outbox__read_batch does the same). */
			out->len = mark + (n ? 1 : 0);
			sbuf__puts(out, "{\"seq\":");
			sbuf__i64(out, e->seq);
			sbuf__puts(out, ",\"set_aside\":{\"reason\":");
			sbuf__jstr(out, e->aside_reason);
			sbuf__puts(out, e->recovered ? "},\"recovered\":true}" : "}}");
		}
		if (!why && !e->aside && hard_bytes && out->len - mark - (n ? 1 : 0) > hard_bytes)
			why = "too_big";
		if (why) {
			/* Set aside, then read the same row again: it now gives
			 * its marker (outbox__read_batch). */
			out->len = mark;
			if (out->p)
				out->p[mark] = '\0';
			e->aside = 1;
			snprintf(e->aside_reason, sizeof(e->aside_reason), "%s", why);
			e->aside_bytes = e->body_len;
			ob->n_set_aside++;
			continue;
		}
		if (n > 0 && out->len > max_bytes) {
			/* This event would overflow the message: leave it for the next. */
			out->len = mark;
			out->p[mark] = '\0';
			break;
		}
		r->last = e->seq;
		if (n == 0)
			r->first = e->seq;
		n++;
		i++;
	}
	if (out->oom)
		return err__set(SCRM_E_NOMEM, "out of memory building a batch");
	r->count = n;
	return SCRM_OK;
}

int memoutbox__oldest(void *ctx, int64_t *seq)
{
	memoutbox *ob = ctx;
	if (fails(ob, MO_OP_OLDEST))
		return err__set(SCRM_E_IO, "memoutbox: oldest: injected I/O error");
	*seq = memoutbox__oldest_pending(ob, 0);
	return SCRM_OK;
}

int memoutbox__ack(void *ctx, const int64_t (*ranges)[2], size_t n, int64_t *deleted)
{
	memoutbox *ob = ctx;
	int64_t del = 0;
	if (fails(ob, MO_OP_ACK))
		return err__set(SCRM_E_IO, "memoutbox: delete acknowledged: injected I/O error");
	for (size_t k = 0; k < n; k++) {
		size_t i = pending_after(ob, ranges[k][0] - 1);
		while (i < ob->n_pending && ob->ledger[ob->pending[i]].seq <= ranges[k][1]) {
			if (ob->on_delete)
				ob->on_delete(ob->hook_ctx, &ob->ledger[ob->pending[i]]);
			drop_pending(ob, i, MO_ACKED);
			del++;
		}
	}
	if (deleted)
		*deleted = del;
	return SCRM_OK;
}

int memoutbox__reject(void *ctx, int64_t seq, const char *reason)
{
	memoutbox *ob = ctx;
	if (fails(ob, MO_OP_REJECT))
		return err__set(SCRM_E_IO, "memoutbox: keep rejected event: injected I/O error");
	size_t i = pending_after(ob, seq - 1);
	/* Like outbox__reject: a seq not pending moves nothing and is no error. */
	if (i < ob->n_pending && ob->ledger[ob->pending[i]].seq == seq) {
		memoutbox_event *e = &ob->ledger[ob->pending[i]];
		snprintf(e->reject_reason, sizeof(e->reject_reason), "%s", reason ? reason : "");
		drop_pending(ob, i, MO_REJECTED);
	}
	return SCRM_OK;
}
