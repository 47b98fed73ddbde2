/* SPDX-License-Identifier: Apache-2.0 */
/*
 * memcentral: central's batch handling per docs/protocol.md (see
 * memcentral.h). The rules of "Ordering" are applied in the order the
 * document gives them; each step names the sentence it implements.
 */
#include "memcentral.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SEQ 9007199254740992.0 /* 2^53 */
#define ACK_MAX_ENTRIES 10000      /* protocol.md "Acknowledgement" */

static void *grow(void *p, size_t *cap, size_t need, size_t size)
{
	if (need <= *cap)
		return p;
	size_t n = *cap ? *cap * 2 : 16;
	while (n < need)
		n *= 2;
	void *q = realloc(p, n * size);
	if (!q) {
		fprintf(stderr, "memcentral: out of memory\n");
		abort();
	}
	*cap = n;
	return q;
}

void memcentral__init(memcentral *c, const memcentral_opts *opt)
{
	memset(c, 0, sizeof(*c));
	c->opt = *opt;
}

void memcentral__free(memcentral *c)
{
	for (size_t i = 0; i < c->n_dev; i++) {
		memcentral_device *d = &c->dev[i];
		free(d->rec);
		free(d->map);
		free(d->jumps);
		free(d->conflicts);
		free(d->violations);
		free(d->orders);
		free(d->order_map);
	}
	free(c->dev);
	memset(c, 0, sizeof(*c));
}

memcentral_device *memcentral__device(memcentral *c, const char *device)
{
	for (size_t i = 0; i < c->n_dev; i++)
		if (strcmp(c->dev[i].name, device) == 0)
			return &c->dev[i];
	return NULL;
}

static uint64_t mix(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

static size_t slot(int64_t seq, size_t cap)
{
	return (size_t)(mix((uint64_t)seq) & (cap - 1));
}

const memcentral_record *memcentral__held(const memcentral_device *d, int64_t seq)
{
	if (!d || !d->map_cap)
		return NULL;
	for (size_t i = slot(seq, d->map_cap);; i = (i + 1) & (d->map_cap - 1)) {
		if (!d->map[i])
			return NULL;
		if (d->rec[d->map[i] - 1].seq == seq)
			return &d->rec[d->map[i] - 1];
	}
}

static void map_put(memcentral_device *d, int64_t seq, size_t idx)
{
	if (2 * (d->n_rec + 1) > d->map_cap) {
		size_t ncap = d->map_cap ? d->map_cap * 2 : 64;
		size_t *nm = calloc(ncap, sizeof(*nm));
		if (!nm) {
			fprintf(stderr, "memcentral: out of memory\n");
			abort();
		}
		for (size_t k = 0; k < d->n_rec; k++) {
			size_t i = slot(d->rec[k].seq, ncap);
			while (nm[i])
				i = (i + 1) & (ncap - 1);
			nm[i] = k + 1;
		}
		free(d->map);
		d->map = nm;
		d->map_cap = ncap;
	}
	size_t i = slot(seq, d->map_cap);
	while (d->map[i])
		i = (i + 1) & (d->map_cap - 1);
	d->map[i] = idx + 1;
}

static uint64_t str_hash(const char *k)
{
	uint64_t h = 1469598103934665603ULL;
	for (; *k; k++)
		h = (h ^ (unsigned char)*k) * 1099511628211ULL;
	return h;
}

/* "Duplicate sales, second guard": add the sale's key; 0 if it was new,
 * 1 if central already holds it. */
static int order_seen(memcentral_device *d, const char *key)
{
	if (2 * (d->n_orders + 1) > d->order_map_cap) {
		size_t ncap = d->order_map_cap ? d->order_map_cap * 2 : 64;
		size_t *nm = calloc(ncap, sizeof(*nm));
		if (!nm) {
			fprintf(stderr, "memcentral: out of memory\n");
			abort();
		}
		for (size_t k = 0; k < d->n_orders; k++) {
			size_t i = (size_t)(str_hash(d->orders[k]) & (ncap - 1));
			while (nm[i])
				i = (i + 1) & (ncap - 1);
			nm[i] = k + 1;
		}
		free(d->order_map);
		d->order_map = nm;
		d->order_map_cap = ncap;
	}
	size_t i = (size_t)(str_hash(key) & (d->order_map_cap - 1));
	for (; d->order_map[i]; i = (i + 1) & (d->order_map_cap - 1))
		if (strcmp(d->orders[d->order_map[i] - 1], key) == 0)
			return 1;
	d->orders = grow(d->orders, &d->cap_orders, d->n_orders + 1, sizeof(*d->orders));
	snprintf(d->orders[d->n_orders], sizeof(d->orders[0]), "%s", key);
	d->order_map[i] = ++d->n_orders;
	return 0;
}

/* An int64 from a JSON number that is an integer in [0, 2^53]. */
static int json_i64(const cJSON *v, int64_t *out)
{
	if (!cJSON_IsNumber(v))
		return -1;
	double x = v->valuedouble;
	if (!(x >= 0.0 && x <= MAX_SEQ) || x != floor(x))
		return -1;
	*out = (int64_t)x;
	return 0;
}

static const char *str_field(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Required fields of an event or a marker ("Event batch": required
 * fields); NULL if it is well-formed, else why not. */
static const char *validate(const cJSON *ev, int marker)
{
	static const char *const kinds[] = {"purchase", "return", "member_scan", "coupon_redeem", "reco_shown"};
	int64_t x;
	const cJSON *v;
	if (marker)
		return cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(ev, "set_aside")) ? NULL : "set_aside: not an object";
	const char *id = str_field(ev, "id"), *kind = str_field(ev, "kind");
	if (!id || !id[0] || strlen(id) > 36)
		return "id: missing or not a UUID";
	if (!kind)
		return "kind: missing";
	int known = 0;
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
		known |= strcmp(kind, kinds[i]) == 0;
	if (!known)
		return "kind: unknown";
	if (json_i64(cJSON_GetObjectItemCaseSensitive(ev, "wall_ms"), &x) != 0)
		return "wall_ms: missing or not an integer";
	if (json_i64(cJSON_GetObjectItemCaseSensitive(ev, "mono_ms"), &x) != 0)
		return "mono_ms: missing or not an integer";
	if (!str_field(ev, "boot"))
		return "boot: missing";
	v = cJSON_GetObjectItemCaseSensitive(ev, "clock_ok");
	if (!cJSON_IsBool(v))
		return "clock_ok: missing or not a boolean";
	if (!cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(ev, "body")))
		return "body: missing or not an object";
	return NULL;
}

/* What central stores for one event of a batch: a new record. */
static memcentral_record *settle(memcentral_device *d, const cJSON *ev, int64_t seq, int marker, int recovered)
{
	d->rec = grow(d->rec, &d->cap_rec, d->n_rec + 1, sizeof(*d->rec));
	memcentral_record *r = &d->rec[d->n_rec];
	memset(r, 0, sizeof(*r));
	r->seq = seq;
	r->type = marker ? MC_MARKER : MC_STORED;
	const char *id = str_field(ev, "id"), *kind = str_field(ev, "kind");
	snprintf(r->id, sizeof(r->id), "%s", id ? id : "");
	snprintf(r->kind, sizeof(r->kind), "%s", kind ? kind : "");
	const cJSON *body = cJSON_GetObjectItemCaseSensitive(ev, "body");
	const char *ref = body ? str_field(body, "ref") : NULL;
	snprintf(r->ref, sizeof(r->ref), "%s", ref ? ref : "");
	r->recovered = recovered;
	map_put(d, seq, d->n_rec);
	d->n_rec++;
	return r;
}

/* The ack under construction. */
struct ackb {
	int64_t (*ranges)[2];
	size_t n, cap;
	int64_t gap_from, gap_to; /* a step-over not yet attached to a range */
	struct {
		int64_t seq;
		char reason[96]; /* copied: rec[] may move while the batch is handled */
	} *rej;
	size_t n_rej, cap_rej;
};

static void ack_range(struct ackb *a, int64_t from, int64_t to)
{
	a->ranges = grow(a->ranges, &a->cap, a->n + 1, sizeof(*a->ranges));
	a->ranges[a->n][0] = from;
	a->ranges[a->n][1] = to;
	a->n++;
}

static void ack_seq(struct ackb *a, int64_t seq)
{
	/* "seqs a batch's after declared missing go into one range": the
	 * step-over just before this seq joins its range. */
	if (a->gap_to && a->gap_to + 1 == seq)
		ack_range(a, a->gap_from, a->gap_to);
	a->gap_from = a->gap_to = 0;
	ack_range(a, seq, seq);
}

static void ack_reject(struct ackb *a, int64_t seq, const char *reason)
{
	a->gap_from = a->gap_to = 0;
	a->rej = grow(a->rej, &a->cap_rej, a->n_rej + 1, sizeof(*a->rej));
	a->rej[a->n_rej].seq = seq;
	snprintf(a->rej[a->n_rej].reason, sizeof(a->rej[a->n_rej].reason), "%s", reason);
	a->n_rej++;
}

static int cmp_range(const void *x, const void *y)
{
	const int64_t *a = x, *b = y;
	return (a[0] > b[0]) - (a[0] < b[0]);
}

static void ack_write(struct ackb *a, const char *batch, int64_t resend_from, sbuf *out)
{
	size_t n = 0;
	/* "central should coalesce": consecutive seqs into one range */
	if (a->n)
		qsort(a->ranges, a->n, sizeof(*a->ranges), cmp_range);
	for (size_t i = 0; i < a->n; i++) {
		if (n > 0 && a->ranges[i][0] <= a->ranges[n - 1][1] + 1) {
			if (a->ranges[i][1] > a->ranges[n - 1][1])
				a->ranges[n - 1][1] = a->ranges[i][1];
		} else {
			a->ranges[n][0] = a->ranges[i][0];
			a->ranges[n][1] = a->ranges[i][1];
			n++;
		}
	}
	if (n > ACK_MAX_ENTRIES || a->n_rej > ACK_MAX_ENTRIES) {
		fprintf(stderr, "memcentral: an ack with more than %d entries\n", ACK_MAX_ENTRIES);
		abort();
	}
	sbuf__reset(out);
	sbuf__puts(out, "{\"v\":1,\"batch\":");
	sbuf__jstr(out, batch);
	sbuf__puts(out, ",\"acked\":[");
	for (size_t i = 0; i < n; i++) {
		sbuf__puts(out, i ? ",[" : "[");
		sbuf__i64(out, a->ranges[i][0]);
		sbuf__putc(out, ',');
		sbuf__i64(out, a->ranges[i][1]);
		sbuf__putc(out, ']');
	}
	sbuf__puts(out, "],\"rejected\":[");
	for (size_t i = 0; i < a->n_rej; i++) {
		sbuf__puts(out, i ? ",{\"seq\":" : "{\"seq\":");
		sbuf__i64(out, a->rej[i].seq);
		sbuf__puts(out, ",\"reason\":");
		sbuf__jstr(out, a->rej[i].reason);
		sbuf__putc(out, '}');
	}
	sbuf__putc(out, ']');
	if (resend_from > 0) {
		sbuf__puts(out, ",\"resend_from\":");
		sbuf__i64(out, resend_from);
	}
	sbuf__putc(out, '}');
}

static memcentral_device *device_get(memcentral *c, const char *name)
{
	memcentral_device *d = memcentral__device(c, name);
	if (d)
		return d;
	c->dev = grow(c->dev, &c->cap_dev, c->n_dev + 1, sizeof(*c->dev));
	d = &c->dev[c->n_dev++];
	memset(d, 0, sizeof(*d));
	snprintf(d->name, sizeof(d->name), "%s", name);
	return d;
}

static void add_jump(memcentral_device *d, int64_t from, int64_t to, int by_base)
{
	d->jumps = grow(d->jumps, &d->cap_jumps, d->n_jumps + 1, sizeof(*d->jumps));
	d->jumps[d->n_jumps++] = (memcentral_jump){.from = from, .to = to, .by_base = by_base};
}

/* Central's "validation" refuses a few events at random (a fixed verdict
 * per seq, so every copy of an event gets the same one). */
static int refused(const memcentral *c, int64_t seq)
{
	return c->opt.reject_permille > 0 && mix(c->opt.salt ^ (uint64_t)seq) % 1000 < (uint64_t)c->opt.reject_permille;
}

/* Store (or reject) an event central does not hold yet; acks it. */
static void settle_new(memcentral *c, memcentral_device *d, const cJSON *ev, int64_t seq, int late, struct ackb *a)
{
	const cJSON *aside = cJSON_GetObjectItemCaseSensitive(ev, "set_aside");
	int marker = aside != NULL;
	int recovered = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ev, "recovered"));
	const char *why = validate(ev, marker);
	memcentral_record *r;
	if (!why && !marker && refused(c, seq))
		why = "body: refused by central (simulated validation failure)";
	r = settle(d, ev, seq, marker, recovered);
	r->late = late;
	if (why) {
		r->type = MC_REJECTED;
		snprintf(r->reason, sizeof(r->reason), "%s", why);
		d->n_rejected++;
		ack_reject(a, seq, r->reason);
	} else {
		const cJSON *body = cJSON_GetObjectItemCaseSensitive(ev, "body");
		const char *order = strcmp(r->kind, "purchase") == 0 ? str_field(body, "order_id") :
				    strcmp(r->kind, "return") == 0 ? str_field(body, "return_id") : NULL;
		char key[80];
		snprintf(key, sizeof(key), "%s:%s", r->kind, order ? order : "");
		if (!marker && order && order_seen(d, key)) {
			/* "an event with a new seq but a key central already holds
			 * is kept aside, acknowledged, alerted, and not counted as
			 * a sale" */
			r->type = MC_DUPLICATE_ORDER;
			d->n_duplicate_orders++;
		} else if (marker) {
			d->n_markers++;
		} else {
			d->n_new++;
		}
		ack_seq(a, seq);
	}
	if (late) {
		d->n_late++;
		/* "unless the event is marked recovered:true, alerts: the
		 * device claimed something it did not have" */
		if (!recovered) {
			d->violations = grow(d->violations, &d->cap_violations, d->n_violations + 1, sizeof(*d->violations));
			d->violations[d->n_violations++] = seq;
		}
	}
}

int memcentral__handle(memcentral *c, const char *device, const char *payload, size_t len, sbuf *ack,
		       const char **why)
{
	struct ackb a;
	int64_t base, after = -1, prev, resend_from = 0, contiguous;
	int has_after, rc = -1;
	const char *dummy;
	cJSON *root = cJSON_ParseWithLength(payload, len);
	memset(&a, 0, sizeof(a));
	if (!why)
		why = &dummy;
	*why = NULL;
	if (!cJSON_IsObject(root)) {
		*why = "not a JSON object";
		goto out;
	}
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "v");
	const char *batch = str_field(root, "batch");
	const cJSON *events = cJSON_GetObjectItemCaseSensitive(root, "events");
	/* "Required fields: v, batch, base and events in a batch" */
	if (!cJSON_IsNumber(v) || v->valuedouble != 1.0) {
		*why = "v: missing or not 1";
		goto out;
	}
	if (!batch || !batch[0]) {
		*why = "batch: missing";
		goto out;
	}
	if (json_i64(cJSON_GetObjectItemCaseSensitive(root, "base"), &base) != 0) {
		*why = "base: missing or not an integer";
		goto out;
	}
	if (!cJSON_IsArray(events)) {
		*why = "events: missing or not an array";
		goto out;
	}
	/* "sent_ms and after ... central must not require them" */
	has_after = json_i64(cJSON_GetObjectItemCaseSensitive(root, "after"), &after) == 0;
	if (!has_after)
		after = -1;

	memcentral_device *d = device_get(c, device);
	d->n_batches++;
	contiguous = d->contiguous;
	/* "Before that, if the batch's base > contiguous + 1 ... central
	 * records the jump ... and sets contiguous = base - 1" */
	if (base > contiguous + 1) {
		add_jump(d, contiguous + 1, base - 1, 1);
		contiguous = base - 1;
	}
	prev = after;
	const cJSON *ev;
	cJSON_ArrayForEach(ev, events)
	{
		int64_t seq;
		/* Without a seq an event can be neither acked nor rejected. */
		if (!cJSON_IsObject(ev) || json_i64(cJSON_GetObjectItemCaseSensitive(ev, "seq"), &seq) != 0 || seq < 1) {
			d->n_unackable++;
			continue;
		}
		/* "seq > contiguous + 1 while the batch has after and the event
		 * before this one ... is <= contiguous: not a hole ...
		 * contiguous = seq - 1, then as above" */
		if (seq > contiguous + 1 && has_after && prev >= 0 && prev <= contiguous) {
			add_jump(d, contiguous + 1, seq - 1, 0);
			if (c->opt.coalesce_gaps) {
				a.gap_from = contiguous + 1;
				a.gap_to = seq - 1;
			}
			contiguous = seq - 1;
		}
		/* "seq > contiguous + 1 otherwise: a hole ... this and later
		 * events of the batch are not stored and the ack carries
		 * resend_from = contiguous + 1" */
		if (seq > contiguous + 1) {
			resend_from = contiguous + 1;
			d->n_holes++;
			break;
		}
		const memcentral_record *held = memcentral__held(d, seq);
		if (seq <= contiguous && held) {
			/* "a duplicate, acknowledged again, not stored again (or a
			 * conflict if the id differs)"; a rejected seq is refused
			 * again */
			const char *id = str_field(ev, "id");
			if (held->type == MC_REJECTED) {
				ack_reject(&a, seq, held->reason);
			} else if (id && held->id[0] && strcmp(id, held->id) != 0) {
				int known = 0;
				for (size_t i = 0; i < d->n_conflicts; i++)
					known |= d->conflicts[i].seq == seq && strcmp(d->conflicts[i].id, id) == 0;
				if (!known) {
					d->conflicts = grow(d->conflicts, &d->cap_conflicts, d->n_conflicts + 1,
							    sizeof(*d->conflicts));
					memcentral_record *k = &d->conflicts[d->n_conflicts++];
					memset(k, 0, sizeof(*k));
					k->seq = seq;
					snprintf(k->id, sizeof(k->id), "%s", id);
				}
				ack_seq(&a, seq);
			} else {
				d->n_dup++;
				ack_seq(&a, seq);
			}
		} else if (seq <= contiguous) {
			/* "seq <= contiguous, and central does not hold it ...
			 * Central stores it (and acknowledges it)" */
			settle_new(c, d, ev, seq, 1, &a);
		} else {
			/* "seq == contiguous + 1: stored; contiguous advances"
			 * (a rejected event advances it too: it is settled) */
			contiguous = seq;
			settle_new(c, d, ev, seq, 0, &a);
		}
		prev = seq;
	}
	d->contiguous = contiguous;
	ack_write(&a, batch, resend_from, ack);
	rc = ack->oom ? -1 : 0;
out:
	cJSON_Delete(root);
	free(a.ranges);
	free(a.rej);
	return rc;
}
