/* SPDX-License-Identifier: Apache-2.0 */
/*
 * guide: suggestions, lifecycle, coupons and redemption for the guide tablet
 * and the till (see guide.h for what it owns). This file: the checks and
 * helpers the others share (guide_int.h), the lifecycle stage, what the
 * store knows that the cache does not, and the cache look-ups by SKU;
 * rank.c ranks suggestions, coupons.c the coupons for a basket, redeem.c
 * redeems.
 */
#include "guide_int.h"

#include "err.h"
#include "ident.h"
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

/* ---- small JSON helpers --------------------------------------------- */



/* Is `s` one of the strings of array `a`? */
int guide__has_item(const cJSON *a, const char *s)
{
	const cJSON *it;
	if (!s || !cJSON_IsArray(a))
		return 0;
	cJSON_ArrayForEach(it, a)
	{
		if (cJSON_IsString(it) && strcmp(it->valuestring, s) == 0)
			return 1;
	}
	return 0;
}

/* Is `s` one of the strings of array o[name]? */
int guide__has(const cJSON *o, const char *name, const char *s)
{
	return guide__has_item(cJSON_GetObjectItemCaseSensitive(o, name), s);
}

int guide__count(const cJSON *o, const char *name)
{
	const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, name);
	return cJSON_IsArray(a) ? cJSON_GetArraySize(a) : 0;
}

int guide__sku_ok(const char *s)
{
	size_t n;
	if (!s || !(n = strlen(s)) || n > MAX_SKU)
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == '"' || s[i] == '\\')
			return 0;
	return 1;
}

int guide__check_basket(const scrm_line *lines, size_t n, size_t min, int priced)
{
	int64_t total = 0;
	if (n > MAX_BASKET)
		return err__set(SCRM_E_INVALID, "basket: %zu lines, at most %d", n, MAX_BASKET);
	if (n < min)
		return err__set(SCRM_E_INVALID, "basket: at least %zu line(s) needed", min);
	if (n && !lines)
		return err__set(SCRM_E_INVALID, "basket: NULL with n_basket > 0");
	for (size_t i = 0; i < n; i++) {
		if (!guide__sku_ok(lines[i].sku))
			return err__set(SCRM_E_INVALID, "basket[%zu].sku: 1..64 printable characters", i);
		if (!priced)
			continue;
		if (lines[i].qty <= 0 || lines[i].qty > 1000000)
			return err__set(SCRM_E_INVALID, "basket[%zu].qty: must be 1..1000000", i);
		if (lines[i].unit_price < 0 || lines[i].unit_price > 1000000000000LL)
			return err__set(SCRM_E_INVALID, "basket[%zu].unit_price: must be 0..10^12 minor units", i);
		int64_t amount;
		if (__builtin_mul_overflow(lines[i].qty, lines[i].unit_price, &amount) || lines[i].discount < 0 ||
		    lines[i].discount > amount)
			return err__set(SCRM_E_INVALID, "basket[%zu].discount: must be between 0 and qty*unit_price", i);
		if (__builtin_add_overflow(total, amount - lines[i].discount, &total))
			return err__set(SCRM_E_INVALID, "basket: the lines' total is too large");
	}
	return SCRM_OK;
}

int guide__id_ok(const char *s)
{
	return ident__key_ok(s, 64, NULL);
}

/* ---- lifecycle ---------------------------------------------------------- */

/* Earliest purchase: central's first_purchase_ms, or this device's oldest
 * local one when central has none. */
static int64_t first_purchase(const cJSON *profile, const cJSON *stats)
{
	int64_t first = json__i64(stats, "first_purchase_ms", 0);
	const cJSON *local = cJSON_GetObjectItemCaseSensitive(profile, "local");
	const cJSON *lp = cJSON_GetObjectItemCaseSensitive(local, "purchases"), *e;
	cJSON_ArrayForEach(e, lp)
	{
		const char *k = json__str(e, "kind");
		int64_t ts = json__i64(e, "ts", 0);
		if (k && strcmp(k, "purchase") == 0 && ts > 0 && (first == 0 || ts < first))
			first = ts;
	}
	return first;
}

const char *guide__stage(const cJSON *profile, int64_t now, const guide__policy *p, char *why, size_t cap)
{
	const cJSON *stats = cJSON_GetObjectItemCaseSensitive(profile, "stats");
	int64_t orders = json__i64(stats, "orders", 0), last = json__i64(stats, "last_purchase_ms", 0);
	int64_t first = first_purchase(profile, stats);
	if (orders <= 0 || last <= 0) {
		snprintf(why, cap, "no purchase yet");
		return "new";
	}
	int64_t rec = now > last ? (now - last) / DAY_MS : 0;
	if (rec > p->lost_days) {
		snprintf(why, cap, "last purchase %lld days ago", (long long)rec);
		return "lost";
	}
	if (rec > p->sleeping_days) {
		snprintf(why, cap, "last purchase %lld days ago", (long long)rec);
		return "sleeping";
	}
	if (first > 0 && now - first <= p->new_days * DAY_MS) {
		snprintf(why, cap, "first purchase %lld days ago", (long long)(now > first ? (now - first) / DAY_MS : 0));
		return "new";
	}
	if (orders == 1) {
		snprintf(why, cap, "one purchase, %lld days ago, no second yet", (long long)rec);
		return "churn_risk";
	}
	/* The member's own rhythm: churn risk once the silence is well past
	 * their usual gap (and at least two weeks, so weekly shoppers are not
	 * flagged on day 8). */
	double gap = first > 0 && last > first ? (double)(last - first) / (double)DAY_MS / (double)(orders - 1) : 0;
	if (gap > 0 && rec >= 14 && (double)rec * 100.0 > gap * (double)p->churn_factor_pct) {
		snprintf(why, cap, "usually buys every %.0f days; last purchase %lld days ago", gap, (long long)rec);
		return "churn_risk";
	}
	snprintf(why, cap, "%lld orders, last purchase %lld days ago", (long long)orders, (long long)rec);
	return "active";
}

/* ---- what the store knows ------------------------------------------- */

static int local_use(void *ctx, const char *id, const char *coupon, const char *campaign)
{
	guide__local *l = ctx;
	if (l->n_uses == l->cap_uses) {
		size_t nc = l->cap_uses ? l->cap_uses * 2 : 16;
		struct use *u = realloc(l->uses, nc * sizeof(*u));
		if (!u)
			return err__set(SCRM_E_NOMEM, "out of memory");
		l->uses = u;
		l->cap_uses = nc;
	}
	struct use *u = &l->uses[l->n_uses++];
	snprintf(u->id, sizeof(u->id), "%s", id);
	snprintf(u->coupon, sizeof(u->coupon), "%s", coupon);
	snprintf(u->campaign, sizeof(u->campaign), "%s", campaign);
	return SCRM_OK;
}

static int local_read(outbox *ob, void *ctx)
{
	guide__local *l = ctx;
	int connected = 0;
	int64_t changed = 0, seen = 0;
	int rc;
	if ((rc = outbox__link_get(ob, &connected, &changed, &seen)))
		return rc;
	/* seen after now: a clock stepped back, or a daemon that died while
	 * connected with a clock ahead; either way not proof of a link now */
	l->online = connected && seen <= l->now && l->now - seen <= l->fresh_ms;
	l->seen_ms = seen;
	if (!l->member_id)
		return SCRM_OK;
	return outbox__member_redemptions(ob, l->member_id, local_use, l);
}

int guide__local_load(scrm_store *store, const char *member_id, int64_t now, const guide__policy *p, guide__local *l)
{
	memset(l, 0, sizeof(*l));
	if (!store)
		return SCRM_OK;
	l->have_store = 1;
	l->member_id = member_id;
	l->now = now;
	l->fresh_ms = p->online_fresh_ms;
	return store__exclusive(store, local_read, l);
}

void guide__local_free(guide__local *l)
{
	free(l->uses);
	l->uses = NULL;
}

/* Uses this device made of a coupon, or of a campaign by the member, that
 * central's count does not include yet: central lists the redemption ids it
 * counted (coupon "used_ids", member "coupon_use_ids"), so a use is never
 * counted twice, and without the lists it is (the safe side). */
int64_t guide__local_count(const guide__local *l, const char *coupon, const char *campaign, const cJSON *counted)
{
	int64_t n = 0;
	for (size_t i = 0; i < l->n_uses; i++) {
		int match = coupon ? strcmp(l->uses[i].coupon, coupon) == 0
				   : campaign && strcmp(l->uses[i].campaign, campaign) == 0;
		if (match && !guide__has_item(counted, l->uses[i].id))
			n++;
	}
	return n;
}

/* ---- cache look-ups (query.h) -------------------------------------- */

/* A catalogue record, parsed (NULL if the SKU is unknown). */
cJSON *guide__catalogue(cache *c, const char *sku)
{
	return cache__catalogue_doc(c, sku);
}

void guide__name_of(cache *c, const char *sku, char *out, size_t cap)
{
	cJSON *doc = guide__catalogue(c, sku);
	const char *n = doc ? json__str(doc, "name") : NULL;
	snprintf(out, cap, "%s", n && *n ? n : sku);
	cJSON_Delete(doc);
}

/* 1 in stock or unknown, 0 known to be out of stock. */
int guide__in_stock(cache *c, const char *sku)
{
	int64_t qty;
	return cache__stock(c, sku, &qty) ? qty > 0 : 1;
}

