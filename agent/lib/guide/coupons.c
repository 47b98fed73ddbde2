/* SPDX-License-Identifier: Apache-2.0 */
/*
 * coupons: which coupons apply to a member's basket, which do not and why
 * (guide.h guide__coupons_for; docs/protocol.md "Coupons").
 */
#include "guide_int.h"

#include "err.h"
#include "ledger.h"
#include "query.h"
#include "outbox.h"
#include "platform.h"
#include "capture.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- coupons --------------------------------------------------------- */

static const cJSON *campaign_find(const cache__campaigns *cp, const char *id)
{
	for (size_t i = 0; id && i < cp->n; i++) {
		const char *x = json__str(cp->v[i], "id");
		if (x && strcmp(x, id) == 0)
			return cp->v[i];
	}
	return NULL;
}

int guide__basket_load(cache *c, const scrm_line *lines, size_t n, const char *currency, struct basket *b)
{
	memset(b, 0, sizeof(*b));
	b->lines = lines;
	b->n = n;
	b->currency = currency;
	if (n && !(b->cat = calloc(n, sizeof(*b->cat))))
		return err__set(SCRM_E_NOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		b->subtotal += lines[i].qty * lines[i].unit_price - lines[i].discount;
		size_t k;
		for (k = 0; k < i; k++)
			if (strcmp(lines[k].sku, lines[i].sku) == 0)
				break;
		if (k < i) {
			memcpy(b->cat[i], b->cat[k], sizeof(b->cat[i]));
			continue;
		}
		cache__category(c, lines[i].sku, b->cat[i], sizeof(b->cat[i]));
	}
	return SCRM_OK;
}

static void money(int64_t v, char *out, size_t cap)
{
	snprintf(out, cap, "%s%lld.%02lld", v < 0 ? "-" : "", (long long)(llabs(v) / 100), (long long)(llabs(v) % 100));
}

static void window(struct offer *o, const cJSON *rec, const char *what, int64_t now)
{
	int64_t from = json__i64(rec, "valid_from", 0), to = json__i64(rec, "valid_to", 0);
	if (o->code)
		return;
	if (from && now < from) {
		o->code = "not_yet_valid";
		snprintf(o->detail, sizeof(o->detail), "%s valid from %lld (Unix ms)", what, (long long)from);
	} else if (to && now >= to) {
		o->code = "expired";
		snprintf(o->detail, sizeof(o->detail), "%s expired at %lld (Unix ms)", what, (long long)to);
	}
}

/* Every rule, first failure wins; on success the value. `b` NULL: judge
 * the member, not a basket (next best action). */
void guide__evaluate(struct offer *o, const cJSON *profile, const char *member_id, const char *stage,
		     const struct basket *b, const guide__local *l, int64_t now)
{
	const cJSON *cp = o->campaign, *scope, *disc, *off;
	char m1[32], m2[32];
	o->ok = 0;
	o->code = NULL;
	o->detail[0] = '\0';
	o->value = 0;
	o->capped = 0;
	if (o->coupon)
		window(o, o->coupon, "coupon", now);
	if (o->code)
		return;
	if (o->coupon) {
		const char *owner = json__str(o->coupon, "member_id");
		if (owner && (!member_id || strcmp(owner, member_id) != 0)) {
			o->code = "wrong_member";
			snprintf(o->detail, sizeof(o->detail), "issued to another member");
			return;
		}
	}
	if (!cp) {
		o->code = "campaign_missing";
		snprintf(o->detail, sizeof(o->detail), "campaign %s is not in the cache", o->campaign_id ? o->campaign_id : "?");
		return;
	}
	window(o, cp, "campaign", now);
	if (o->code)
		return;
	const char *tier = profile ? json__str(profile, "tier") : NULL;
	if (guide__count(cp, "tiers") > 0 && !guide__has(cp, "tiers", tier)) {
		o->code = "tier";
		snprintf(o->detail, sizeof(o->detail), profile ? "for other tiers (member is %s)" : "for members only",
			 tier ? tier : "without a tier");
		return;
	}
	if (guide__count(cp, "tags") > 0) {
		const cJSON *t;
		int hit = 0;
		cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(cp, "tags"))
		{
			if (cJSON_IsString(t) && profile && guide__has(profile, "tags", t->valuestring))
				hit = 1;
		}
		if (!hit) {
			o->code = "tag";
			snprintf(o->detail, sizeof(o->detail), "for members tagged %s",
				 cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(cp, "tags"), 0)->valuestring
					 ? cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(cp, "tags"), 0)->valuestring
					 : "?");
			return;
		}
	}
	if (guide__count(cp, "stages") > 0 && !guide__has(cp, "stages", stage)) {
		o->code = "stage";
		snprintf(o->detail, sizeof(o->detail), "for other lifecycle stages (member is %s)", stage ? stage : "anonymous");
		return;
	}
	/* Uses: central's count plus this device's (not rejected). */
	if (o->coupon) {
		int64_t uses = json__i64(o->coupon, "uses", 1), used = json__i64(o->coupon, "used", 0);
		int64_t mine =
			l ? guide__local_count(l, json__str(o->coupon, "id"), NULL, cJSON_GetObjectItemCaseSensitive(o->coupon, "used_ids")) : 0;
		if (used + mine >= uses) {
			o->code = "used_up";
			snprintf(o->detail, sizeof(o->detail), "%lld of %lld use%s spent%s", (long long)(used + mine),
				 (long long)uses, uses == 1 ? "" : "s", mine ? " (on this device)" : "");
			return;
		}
	}
	int64_t pml = json__i64(cp, "per_member_limit", 0);
	if (pml > 0 && member_id) {
		const cJSON *cu = cJSON_GetObjectItemCaseSensitive(profile, "coupon_uses");
		int64_t had = json__i64(cu, o->campaign_id, 0) +
			      (l ? guide__local_count(l, NULL, o->campaign_id, cJSON_GetObjectItemCaseSensitive(profile, "coupon_use_ids"))
				 : 0);
		if (had >= pml) {
			o->code = "member_limit";
			snprintf(o->detail, sizeof(o->detail), "member already used this campaign %lld time%s (limit %lld)",
				 (long long)had, had == 1 ? "" : "s", (long long)pml);
			return;
		}
	}
	off = cJSON_GetObjectItemCaseSensitive(cp, "offline");
	int offline_ok = !cJSON_IsObject(off) || !cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(off, "allowed"));
	int online = l && l->online;
	if (!online && !offline_ok) {
		o->code = "online_only";
		snprintf(o->detail, sizeof(o->detail), "needs the central system, which is not reachable now");
		return;
	}
	disc = cJSON_GetObjectItemCaseSensitive(cp, "discount");
	const char *kind = json__str(disc, "kind");
	int64_t dv = json__i64(disc, "value", 0);
	/* Only what the agent knows how to grant: a kind it does not know is
	 * never paid out as something else. */
	if (!kind || !((strcmp(kind, "percent") == 0 && dv >= 1 && dv <= 100) ||
		       (strcmp(kind, "amount") == 0 && dv >= 1 && dv <= 1000000000000LL))) {
		o->code = "bad_discount";
		snprintf(o->detail, sizeof(o->detail), "discount %s %lld is not one this agent can grant (percent 1..100, amount > 0)",
			 kind ? kind : "(none)", (long long)dv);
		return;
	}
	if (!b) {
		o->ok = 1;
		o->value = kind && strcmp(kind, "amount") == 0 ? dv : 0;
		return;
	}
	const char *cur = json__str(cp, "currency");
	if (cur && b->currency && strcmp(cur, b->currency) != 0) {
		o->code = "currency";
		snprintf(o->detail, sizeof(o->detail), "for %s baskets, this one is %s", cur, b->currency);
		return;
	}
	scope = cJSON_GetObjectItemCaseSensitive(cp, "scope");
	int whole = guide__count(scope, "skus") == 0 && guide__count(scope, "categories") == 0;
	int64_t in_scope = 0;
	size_t lines_in = 0;
	for (size_t i = 0; i < b->n; i++) {
		if (whole || guide__has(scope, "skus", b->lines[i].sku) || (b->cat[i][0] && guide__has(scope, "categories", b->cat[i]))) {
			in_scope += b->lines[i].qty * b->lines[i].unit_price - b->lines[i].discount;
			lines_in++;
		}
	}
	if (!lines_in) {
		o->code = "scope";
		snprintf(o->detail, sizeof(o->detail), "nothing in the basket is covered (%s)",
			 guide__count(scope, "categories") ? "other categories" : "other products");
		return;
	}
	int64_t min = json__i64(cp, "min_spend", 0);
	if (b->subtotal < min) {
		money(b->subtotal, m1, sizeof(m1));
		money(min, m2, sizeof(m2));
		o->code = "min_spend";
		snprintf(o->detail, sizeof(o->detail), "basket %s is below the minimum %s", m1, m2);
		return;
	}
	/* in_scope <= the basket's checked total: no overflow either way */
	if (strcmp(kind, "percent") == 0)
		o->value = in_scope / 100 * dv + in_scope % 100 * dv / 100;
	else
		o->value = dv < in_scope ? dv : in_scope;
	if (o->value <= 0) {
		o->code = "no_value";
		snprintf(o->detail, sizeof(o->detail), "the discount on this basket would be 0");
		return;
	}
	int64_t cap = cJSON_IsObject(off) ? json__i64(off, "max_value", 0) : 0;
	if (!online && cap > 0 && o->value > cap) {
		o->value = cap;
		o->capped = 1;
	}
	o->ok = 1;
}

void guide__offers_free(struct offers *os)
{
	for (size_t i = 0; i < os->n; i++)
		cJSON_Delete(os->v[i].coupon);
	free(os->v);
	memset(os, 0, sizeof(*os));
}

struct offers_ctx {
	struct offers *os;
	size_t *cap;
	const cache__campaigns *cp;
};

/* One of the member's coupons (cache__member_coupons). */
static int offer_add(void *ctx, const char *key, const char *signed_json)
{
	struct offers_ctx *x = ctx;
	struct offers *os = x->os;
	cJSON *p = cJSON_Parse(signed_json);
	if (!cJSON_IsObject(p)) {
		cJSON_Delete(p);
		return SCRM_OK;
	}
	if (os->n == *x->cap) {
		struct offer *nv = realloc(os->v, *x->cap * 2 * sizeof(*nv));
		if (!nv) {
			cJSON_Delete(p);
			return err__set(SCRM_E_NOMEM, "out of memory");
		}
		os->v = nv;
		*x->cap *= 2;
	}
	struct offer *o = &os->v[os->n++];
	memset(o, 0, sizeof(*o));
	snprintf(o->key, sizeof(o->key), "%s", key);
	o->coupon = p;
	o->campaign_id = json__str(p, "campaign");
	o->campaign = campaign_find(x->cp, o->campaign_id);
	return SCRM_OK;
}

/* The member's coupons, then public campaigns the member holds no coupon of. */
int guide__offers_load(cache *c, const char *member_id, const cache__campaigns *cp, struct offers *os)
{
	size_t cap = 16;
	int rc = SCRM_OK;
	memset(os, 0, sizeof(*os));
	if (!(os->v = calloc(cap, sizeof(*os->v))))
		return err__set(SCRM_E_NOMEM, "out of memory");
	if (member_id) {
		struct offers_ctx x = {os, &cap, cp};
		if ((rc = cache__member_coupons(c, member_id, offer_add, &x)))
			return rc;
	}
	for (size_t i = 0; i < cp->n; i++) {
		const cJSON *p = cp->v[i];
		const char *id = json__str(p, "id");
		if (!id || !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "public")))
			continue;
		size_t k;
		for (k = 0; k < os->n; k++)
			if (os->v[k].campaign_id && strcmp(os->v[k].campaign_id, id) == 0)
				break;
		if (k < os->n)
			continue;
		if (os->n == cap) {
			struct offer *nv = realloc(os->v, cap * 2 * sizeof(*nv));
			if (!nv)
				return err__set(SCRM_E_NOMEM, "out of memory");
			os->v = nv;
			cap *= 2;
		}
		struct offer *o = &os->v[os->n++];
		memset(o, 0, sizeof(*o));
		snprintf(o->key, sizeof(o->key), "campaign:%s", id);
		o->campaign = p;
		o->campaign_id = id;
	}
	return SCRM_OK;
}

void guide__put_offer(sbuf *b, const struct offer *o, int with_reason)
{
	const cJSON *cp = o->campaign;
	sbuf__puts(b, "{\"key\":");
	sbuf__jstr(b, o->key);
	if (o->coupon) {
		sbuf__puts(b, ",\"coupon\":");
		sbuf__jstr(b, json__str(o->coupon, "id") ? json__str(o->coupon, "id") : "");
		if (json__str(o->coupon, "code")) {
			sbuf__puts(b, ",\"code\":");
			sbuf__jstr(b, json__str(o->coupon, "code"));
		}
	}
	if (o->campaign_id) {
		sbuf__puts(b, ",\"campaign\":");
		sbuf__jstr(b, o->campaign_id);
	}
	if (cp && json__str(cp, "name")) {
		sbuf__puts(b, ",\"name\":");
		sbuf__jstr(b, json__str(cp, "name"));
	}
	const cJSON *d = cp ? cJSON_GetObjectItemCaseSensitive(cp, "discount") : NULL;
	if (json__str(d, "kind")) {
		sbuf__puts(b, ",\"discount\":{\"kind\":");
		sbuf__jstr(b, json__str(d, "kind"));
		sbuf__puts(b, ",\"value\":");
		sbuf__i64(b, json__i64(d, "value", 0));
		sbuf__putc(b, '}');
	}
	int64_t to = o->coupon && json__i64(o->coupon, "valid_to", 0) ? json__i64(o->coupon, "valid_to", 0) : cp ? json__i64(cp, "valid_to", 0) : 0;
	if (to) {
		sbuf__puts(b, ",\"valid_to\":");
		sbuf__i64(b, to);
	}
	if (o->ok) {
		sbuf__puts(b, ",\"value\":");
		sbuf__i64(b, o->value);
		if (o->capped)
			sbuf__puts(b, ",\"capped\":true");
	}
	if (with_reason && o->code) {
		sbuf__puts(b, ",\"reason\":");
		sbuf__jstr(b, o->code);
		sbuf__puts(b, ",\"detail\":");
		sbuf__jstr(b, o->detail);
	}
	sbuf__putc(b, '}');
}

static int cmp_offer(const void *a, const void *b)
{
	const struct offer *x = a, *y = b;
	if (x->ok != y->ok)
		return x->ok ? -1 : 1;
	if (x->ok && x->value != y->value)
		return x->value > y->value ? -1 : 1;
	return strcmp(x->key, y->key);
}

int guide__coupons_for(cache *c, scrm_store *store, const scrm_coupon_request *rq, sbuf *out)
{
	guide__policy pol;
	guide__local l;
	const cache__campaigns *cps = NULL;
	struct offers os = {0};
	struct basket bk = {0};
	cJSON *profile = NULL;
	char why[160];
	const char *stage = NULL;
	int rc;
	int64_t now = rq->now_ms > 0 ? rq->now_ms : platform__wall_ms();

	memset(&l, 0, sizeof(l));
	if (rq->member_id && !guide__id_ok(rq->member_id))
		return err__set(SCRM_E_INVALID, "member_id: 1..64 of [A-Za-z0-9_.:-]");
	if (rq->currency && (strlen(rq->currency) != 3 || rq->currency[0] < 'A' || rq->currency[0] > 'Z' ||
			     rq->currency[1] < 'A' || rq->currency[1] > 'Z' || rq->currency[2] < 'A' || rq->currency[2] > 'Z'))
		return err__set(SCRM_E_INVALID, "currency: three upper-case letters (ISO 4217)");
	if ((rc = guide__check_basket(rq->basket, rq->n_basket, 0, 1)))
		return rc;
	guide__policy_parse(cache__policy(c), &pol);
	if (rq->member_id && (rc = cache__member_profile(c, rq->member_id, now, &profile, NULL)) != SCRM_E_NOT_FOUND &&
	    rc != SCRM_OK)
		return rc;
	if (profile)
		stage = guide__stage(profile, now, &pol, why, sizeof(why));
	if ((rc = guide__local_load(store, rq->member_id, now, &pol, &l)) || (rc = cache__campaigns_get(c, &cps)) ||
	    (rc = guide__offers_load(c, rq->member_id, cps, &os)) ||
	    (rc = guide__basket_load(c, rq->basket, rq->n_basket, rq->currency, &bk)))
		goto cleanup;
	for (size_t i = 0; i < os.n; i++)
		guide__evaluate(&os.v[i], profile, rq->member_id, stage, &bk, &l, now);
	if (os.n > 1)
		qsort(os.v, os.n, sizeof(*os.v), cmp_offer);
	sbuf__reset(out);
	sbuf__puts(out, "{");
	if (rq->member_id) {
		sbuf__puts(out, "\"member_id\":");
		sbuf__jstr(out, rq->member_id);
		if (stage) {
			sbuf__puts(out, ",\"stage\":");
			sbuf__jstr(out, stage);
		} else {
			sbuf__puts(out, ",\"member_known\":false");
		}
		sbuf__putc(out, ',');
	}
	sbuf__puts(out, l.online ? "\"online\":true" : "\"online\":false");
	sbuf__puts(out, ",\"subtotal\":");
	sbuf__i64(out, bk.subtotal);
	sbuf__puts(out, ",\"eligible\":[");
	int first = 1;
	for (size_t i = 0; i < os.n; i++) {
		if (!os.v[i].ok)
			continue;
		if (!first)
			sbuf__putc(out, ',');
		first = 0;
		guide__put_offer(out, &os.v[i], 0);
	}
	sbuf__puts(out, "],\"ineligible\":[");
	first = 1;
	for (size_t i = 0; i < os.n; i++) {
		if (os.v[i].ok)
			continue;
		if (!first)
			sbuf__putc(out, ',');
		first = 0;
		guide__put_offer(out, &os.v[i], 1);
	}
	sbuf__puts(out, "]}");
	rc = out->oom ? err__set(SCRM_E_NOMEM, "out of memory") : SCRM_OK;
cleanup:
	free(bk.cat);
	guide__offers_free(&os);
	guide__local_free(&l);
	cJSON_Delete(profile);
	return rc;
}
