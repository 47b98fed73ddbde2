/* SPDX-License-Identifier: Apache-2.0 */
/*
 * guide: suggestions, lifecycle, coupons and redemption for the guide tablet
 * and the till (see guide.h for what it owns).
 *
 * Ranking, in one pass over the cache:
 *   1. candidates: item → item rules from each basket SKU (weight 1.0,
 *      strength = confidence) and from each SKU the member bought within
 *      guide.history_days (weight 0.6, confidence halved every
 *      guide.history_half_life_days), central's per-member list (0.8 ×
 *      score), and the store's bestsellers (recos key "_store", 0.05) so a
 *      cold start still gets a list. Strengths within a source combine as a
 *      noisy-OR (contribute()); score = sum of weight × combined strength;
 *   2. the strongest 4N (at least 40) are looked up in the catalogue and
 *      boosted by the member's preferences and tags (×1.25 a liked
 *      category or item tag, ×1.15 an item tag equal to a member tag);
 *   3. in score order (ties: SKU), drop what is in the basket, was bought
 *      within guide.just_bought_days (unless central lists it as "repeat"),
 *      or has no stock in this store (inventory qty <= 0; no inventory
 *      record = unknown = kept), until N; past the boosted head candidates
 *      keep their raw order.
 * Each item's reason is its strongest contribution, plus its boosts.
 */
#include "guide.h"

#include "err.h"
#include "ledger.h"
#include "outbox.h"
#include "platform.h"
#include "capture.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DAY_MS 86400000LL
#define MAX_SKU 64
#define MAX_BASKET 1000
#define MAX_BASKET_SOURCES 50 /* distinct basket SKUs that feed rules */
#define MAX_HISTORY_SOURCES 30
#define RULES_PER_SOURCE 30
#define MAX_CANDS 4096
#define MAX_N 50

#define W_BASKET 1.0
#define W_HISTORY 0.6
#define W_CENTRAL 0.8
#define W_POPULAR 0.05

/* ---- small JSON helpers --------------------------------------------- */

static int64_t jint(const cJSON *o, const char *name, int64_t dflt)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
	if (!cJSON_IsNumber(it) || !(it->valuedouble >= -9007199254740992.0 && it->valuedouble <= 9007199254740992.0))
		return dflt;
	return (int64_t)it->valuedouble;
}

static const char *jstr(const cJSON *o, const char *name)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
	return cJSON_IsString(it) ? it->valuestring : NULL;
}

/* Is `s` one of the strings of array `a`? */
static int jhas_item(const cJSON *a, const char *s)
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
static int jhas(const cJSON *o, const char *name, const char *s)
{
	return jhas_item(cJSON_GetObjectItemCaseSensitive(o, name), s);
}

static int jcount(const cJSON *o, const char *name)
{
	const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, name);
	return cJSON_IsArray(a) ? cJSON_GetArraySize(a) : 0;
}

static int sku_ok(const char *s)
{
	size_t n;
	if (!s || !(n = strlen(s)) || n > MAX_SKU)
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == '"' || s[i] == '\\')
			return 0;
	return 1;
}

static int check_basket(const scrm_line *lines, size_t n, size_t min, int priced)
{
	int64_t total = 0;
	if (n > MAX_BASKET)
		return err__set(SCRM_E_INVALID, "basket: %zu lines, at most %d", n, MAX_BASKET);
	if (n < min)
		return err__set(SCRM_E_INVALID, "basket: at least %zu line(s) needed", min);
	if (n && !lines)
		return err__set(SCRM_E_INVALID, "basket: NULL with n_basket > 0");
	for (size_t i = 0; i < n; i++) {
		if (!sku_ok(lines[i].sku))
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

static int id_ok(const char *s)
{
	size_t n;
	if (!s || !(n = strlen(s)) || n > 64)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
		      ch == '_' || ch == '.' || ch == ':'))
			return 0;
	}
	return 1;
}

/* ---- lifecycle ---------------------------------------------------------- */

/* Earliest purchase: central's first_purchase_ms, or this device's oldest
 * local one when central has none. */
static int64_t first_purchase(const cJSON *profile, const cJSON *stats)
{
	int64_t first = jint(stats, "first_purchase_ms", 0);
	const cJSON *local = cJSON_GetObjectItemCaseSensitive(profile, "local");
	const cJSON *lp = cJSON_GetObjectItemCaseSensitive(local, "purchases"), *e;
	cJSON_ArrayForEach(e, lp)
	{
		const char *k = jstr(e, "kind");
		int64_t ts = jint(e, "ts", 0);
		if (k && strcmp(k, "purchase") == 0 && ts > 0 && (first == 0 || ts < first))
			first = ts;
	}
	return first;
}

const char *guide__stage(const cJSON *profile, int64_t now, const guide__policy *p, char *why, size_t cap)
{
	const cJSON *stats = cJSON_GetObjectItemCaseSensitive(profile, "stats");
	int64_t orders = jint(stats, "orders", 0), last = jint(stats, "last_purchase_ms", 0);
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

struct use {
	char id[37]; /* the coupon_redeem event's id */
	char coupon[65], campaign[65];
};

struct guide__local {
	int have_store;
	int online;
	int64_t seen_ms;
	struct use *uses;
	size_t n_uses, cap_uses;
	const char *member_id; /* borrowed, for the query */
	int64_t now, fresh_ms;
	int rc;
};

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

static int local_load(scrm_store *store, const char *member_id, int64_t now, const guide__policy *p, guide__local *l)
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

static void local_free(guide__local *l)
{
	free(l->uses);
	l->uses = NULL;
}

/* Uses this device made of a coupon, or of a campaign by the member, that
 * central's count does not include yet: central lists the redemption ids it
 * counted (coupon "used_ids", member "coupon_use_ids"), so a use is never
 * counted twice, and without the lists it is (the safe side). */
static int64_t local_count(const guide__local *l, const char *coupon, const char *campaign, const cJSON *counted)
{
	int64_t n = 0;
	for (size_t i = 0; i < l->n_uses; i++) {
		int match = coupon ? strcmp(l->uses[i].coupon, coupon) == 0
				   : campaign && strcmp(l->uses[i].campaign, campaign) == 0;
		if (match && !jhas_item(counted, l->uses[i].id))
			n++;
	}
	return n;
}

/* ---- statements ----------------------------------------------------- */

enum {
	Q_RULES,
	Q_CATALOGUE,
	Q_STOCK,
	Q_RECOS,
	Q_SCRIPT_STAGE,
	Q_SCRIPT_TAG,
	Q_MEMBER_COUPONS,
	Q_COUPON,
	Q_CAMPAIGNS,
	Q_CATEGORY,
	Q_COUPONS_STATE,
};

static const char *const sql_of[] = {
	[Q_RULES] = "SELECT then_sku, confidence FROM rules WHERE if_sku = ?1 ORDER BY confidence DESC, then_sku LIMIT ?2",
	[Q_CATALOGUE] = "SELECT doc FROM catalogue WHERE key = ?1",
	[Q_STOCK] = "SELECT qty FROM inventory WHERE key = ?1",
	[Q_RECOS] = "SELECT doc FROM recos WHERE key = ?1",
	[Q_SCRIPT_STAGE] = "SELECT doc FROM scripts WHERE stage = ?1 ORDER BY key LIMIT 1",
	[Q_SCRIPT_TAG] = "SELECT doc FROM scripts WHERE tag = ?1 ORDER BY key LIMIT 1",
	[Q_MEMBER_COUPONS] = "SELECT key, signed, sig FROM coupons WHERE member_id = ?1 ORDER BY key",
	[Q_COUPON] = "SELECT key, signed, sig FROM coupons WHERE key = ?1",
	[Q_CAMPAIGNS] = "SELECT key, signed, sig FROM coupons WHERE key >= 'campaign:' AND key < 'campaign;' ORDER BY key",
	[Q_CATEGORY] = "SELECT category FROM catalogue WHERE key = ?1",
	[Q_COUPONS_STATE] = "SELECT cursor, gen, applied_ms FROM streams WHERE name = 'coupons'",
};

static sqlite3_stmt *q(cache *c, int slot)
{
	return cache__stmt(c, slot, sql_of[slot]);
}

/* A catalogue record, parsed (NULL if the SKU is unknown). */
static cJSON *catalogue(cache *c, const char *sku)
{
	sqlite3_stmt *st = q(c, Q_CATALOGUE);
	cJSON *doc = NULL;
	if (!st)
		return NULL;
	sqlite3_bind_text(st, 1, sku, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		doc = cJSON_Parse((const char *)sqlite3_column_text(st, 0));
	sqlite3_reset(st);
	return doc;
}

static void name_of(cache *c, const char *sku, char *out, size_t cap)
{
	cJSON *doc = catalogue(c, sku);
	const char *n = doc ? jstr(doc, "name") : NULL;
	snprintf(out, cap, "%s", n && *n ? n : sku);
	cJSON_Delete(doc);
}

/* 1 in stock or unknown, 0 known to be out of stock. */
static int in_stock(cache *c, const char *sku)
{
	sqlite3_stmt *st = q(c, Q_STOCK);
	int ok = 1;
	if (!st)
		return 1;
	sqlite3_bind_text(st, 1, sku, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		ok = sqlite3_column_int64(st, 0) > 0;
	sqlite3_reset(st);
	return ok;
}

/* ---- candidates ------------------------------------------------------ */

enum src { SRC_BASKET, SRC_HISTORY, SRC_CENTRAL, SRC_POPULAR, SRC_N };
static const char *const src_name[SRC_N] = {"basket", "history", "central", "popular"};

struct cand {
	char sku[MAX_SKU + 1];
	double score, best; /* total; strongest single contribution */
	double miss[4];     /* per source: product of (1 - strength), see contribute() */
	int repeat;         /* central says the member buys it regularly */
	int best_src;
	char from[MAX_SKU + 1]; /* basket or history SKU behind the best rule */
	int64_t from_ms;        /* when `from` was bought (history) */
	char code[33];          /* central's reason code */
	unsigned srcs;          /* bit per src */
	double boost;
	char boost_why[160];
	cJSON *doc; /* catalogue, once looked up */
	int used;
};

struct cands {
	struct cand *v;
	size_t n, cap;
	int32_t *slot; /* open addressing over v, -1 empty */
	size_t nslot;
};

static uint32_t hash(const char *s)
{
	uint32_t h = 2166136261u;
	while (*s)
		h = (h ^ (uint8_t)*s++) * 16777619u;
	return h;
}

static int cands_init(struct cands *cs)
{
	memset(cs, 0, sizeof(*cs));
	cs->cap = 256;
	cs->nslot = 1024;
	cs->v = calloc(cs->cap, sizeof(*cs->v));
	cs->slot = malloc(cs->nslot * sizeof(*cs->slot));
	if (!cs->v || !cs->slot)
		return err__set(SCRM_E_NOMEM, "out of memory");
	memset(cs->slot, 0xff, cs->nslot * sizeof(*cs->slot));
	return SCRM_OK;
}

static void cands_free(struct cands *cs)
{
	for (size_t i = 0; i < cs->n; i++)
		cJSON_Delete(cs->v[i].doc);
	free(cs->v);
	free(cs->slot);
}

static struct cand *cands_get(struct cands *cs, const char *sku)
{
	uint32_t h = hash(sku);
	size_t i = h & (cs->nslot - 1);
	while (cs->slot[i] >= 0) {
		struct cand *c = &cs->v[cs->slot[i]];
		if (strcmp(c->sku, sku) == 0)
			return c;
		i = (i + 1) & (cs->nslot - 1);
	}
	if (cs->n >= MAX_CANDS || strlen(sku) > MAX_SKU)
		return NULL;
	if (cs->n == cs->cap) {
		struct cand *nv = realloc(cs->v, cs->cap * 2 * sizeof(*nv));
		if (!nv)
			return NULL;
		memset(nv + cs->cap, 0, cs->cap * sizeof(*nv));
		cs->v = nv;
		cs->cap *= 2;
	}
	if ((cs->n + 1) * 2 > cs->nslot) {
		size_t ns = cs->nslot * 2;
		int32_t *sl = malloc(ns * sizeof(*sl));
		if (!sl)
			return NULL;
		memset(sl, 0xff, ns * sizeof(*sl));
		for (size_t k = 0; k < cs->n; k++) {
			size_t j = hash(cs->v[k].sku) & (ns - 1);
			while (sl[j] >= 0)
				j = (j + 1) & (ns - 1);
			sl[j] = (int32_t)k;
		}
		free(cs->slot);
		cs->slot = sl;
		cs->nslot = ns;
		i = h & (ns - 1);
		while (cs->slot[i] >= 0)
			i = (i + 1) & (ns - 1);
	}
	struct cand *c = &cs->v[cs->n];
	memset(c, 0, sizeof(*c));
	snprintf(c->sku, sizeof(c->sku), "%s", sku);
	c->boost = 1.0;
	for (int k = 0; k < 4; k++)
		c->miss[k] = 1.0;
	cs->slot[i] = (int32_t)cs->n++;
	return c;
}

static const double src_weight[SRC_N] = {W_BASKET, W_HISTORY, W_CENTRAL, W_POPULAR};

/* Evidence from one source combines as a noisy-OR, 1 - prod(1 - strength):
 * ten weak rules from old purchases never outweigh one strong rule from
 * the basket, and each source is bounded by its weight. */
static void contribute(struct cands *cs, const char *sku, double strength, int src, const char *from, int64_t from_ms,
		       const char *code)
{
	if (!sku_ok(sku) || !(strength > 0))
		return;
	if (strength > 1)
		strength = 1;
	struct cand *c = cands_get(cs, sku);
	if (!c)
		return;
	c->miss[src] *= 1.0 - strength;
	c->score = 0;
	for (int k = 0; k < SRC_N; k++)
		c->score += src_weight[k] * (1.0 - c->miss[k]);
	c->srcs |= 1u << src;
	if (src == SRC_CENTRAL && code && strcmp(code, "repeat") == 0)
		c->repeat = 1;
	/* The reason shown is the strongest contribution; on a tie the
	 * earlier source in the fixed order basket, history, central. */
	double w = src_weight[src] * strength;
	if (w > c->best) {
		c->best = w;
		c->best_src = src;
		snprintf(c->from, sizeof(c->from), "%s", from ? from : "");
		c->from_ms = from_ms;
		snprintf(c->code, sizeof(c->code), "%s", code ? code : "");
	}
}

static void from_rules(cache *c, struct cands *cs, const char *sku, double w, int src, int64_t from_ms)
{
	sqlite3_stmt *st = q(c, Q_RULES);
	if (!st)
		return;
	sqlite3_bind_text(st, 1, sku, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 2, RULES_PER_SOURCE);
	while (sqlite3_step(st) == SQLITE_ROW)
		contribute(cs, (const char *)sqlite3_column_text(st, 0), w * sqlite3_column_double(st, 1), src, sku, from_ms,
			   NULL); /* w: the decay of a history source, 1 for the basket */
	sqlite3_reset(st);
}

static void from_recos(cache *c, struct cands *cs, const char *key, double w, int src)
{
	sqlite3_stmt *st = q(c, Q_RECOS);
	cJSON *doc = NULL, *it;
	if (!st)
		return;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		doc = cJSON_Parse((const char *)sqlite3_column_text(st, 0));
	sqlite3_reset(st);
	cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(doc, "items"))
	{
		const cJSON *sc = cJSON_GetObjectItemCaseSensitive(it, "score");
		double v = cJSON_IsNumber(sc) ? sc->valuedouble : 0.5;
		if (!(v > 0))
			continue;
		if (v > 1)
			v = 1;
		contribute(cs, jstr(it, "sku"), w * v, src, NULL, 0, jstr(it, "reason")); /* w = 1 */
	}
	cJSON_Delete(doc);
}

/* SKUs the member bought (central's recent + local), newest first. */
struct bought {
	char sku[MAX_SKU + 1];
	int64_t ts;
};

static size_t history(const cJSON *profile, struct bought *out, size_t cap)
{
	size_t n = 0;
	const cJSON *recent = cJSON_GetObjectItemCaseSensitive(profile, "recent"), *r, *s;
	cJSON_ArrayForEach(r, recent)
	{
		int64_t ts = jint(r, "ts", 0);
		cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(r, "skus"))
		{
			if (!cJSON_IsString(s) || !sku_ok(s->valuestring))
				continue;
			size_t k;
			for (k = 0; k < n; k++)
				if (strcmp(out[k].sku, s->valuestring) == 0)
					break;
			if (k < n) {
				if (ts > out[k].ts)
					out[k].ts = ts;
				continue;
			}
			if (n == cap)
				continue;
			snprintf(out[n].sku, sizeof(out[n].sku), "%s", s->valuestring);
			out[n].ts = ts;
			n++;
		}
	}
	return n;
}

static int cmp_bought(const void *a, const void *b)
{
	const struct bought *x = a, *y = b;
	if (x->ts != y->ts)
		return x->ts > y->ts ? -1 : 1;
	return strcmp(x->sku, y->sku);
}

static int cmp_cand(const void *a, const void *b)
{
	const struct cand *x = *(const struct cand *const *)a, *y = *(const struct cand *const *)b;
	double sx = x->score * x->boost, sy = y->score * y->boost;
	if (sx != sy)
		return sx > sy ? -1 : 1;
	return strcmp(x->sku, y->sku);
}

static void humanise(const char *in, char *out, size_t cap)
{
	size_t i = 0;
	for (; in[i] && i + 1 < cap; i++)
		out[i] = in[i] == '_' ? ' ' : in[i];
	out[i] = '\0';
}

static void add_boost(struct cand *cd, double f, const char *why)
{
	size_t n = strlen(cd->boost_why);
	cd->boost *= f;
	if (n + strlen(why) + 3 < sizeof(cd->boost_why))
		snprintf(cd->boost_why + n, sizeof(cd->boost_why) - n, "%s%s", n ? ", " : "", why);
}

/* Boosts from the member's tags and preferences (catalogue needed). */
static void boost(struct cand *cd, const cJSON *profile)
{
	const cJSON *prefs = cJSON_GetObjectItemCaseSensitive(profile, "prefs"), *t;
	const char *cat = cd->doc ? jstr(cd->doc, "category") : NULL;
	char h[80], w[96];
	if (!profile || !cd->doc)
		return;
	if (cat && jhas(prefs, "categories", cat)) {
		humanise(cat, h, sizeof(h));
		snprintf(w, sizeof(w), "likes %s", h);
		add_boost(cd, 1.25, w);
	}
	cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(cd->doc, "tags"))
	{
		if (!cJSON_IsString(t))
			continue;
		if (jhas(profile, "tags", t->valuestring)) {
			humanise(t->valuestring, h, sizeof(h));
			add_boost(cd, 1.15, h);
		}
		if (jhas(prefs, "likes", t->valuestring)) {
			humanise(t->valuestring, h, sizeof(h));
			snprintf(w, sizeof(w), "likes %s", h);
			add_boost(cd, 1.25, w);
		}
	}
}

static const char *central_reason(const char *code)
{
	static const struct {
		const char *code, *text;
	} m[] = {{"bought_with", "often bought with their past purchases"},
		 {"repeat", "buys it regularly"},
		 {"similar", "similar to what they like"},
		 {"trending", "trending"},
		 {"new_arrival", "new arrival"},
		 {"bestseller", "bestseller"}};
	for (size_t i = 0; code && i < sizeof(m) / sizeof(m[0]); i++)
		if (strcmp(code, m[i].code) == 0)
			return m[i].text;
	return code && *code ? code : "recommended for them";
}

static void reason(cache *c, const struct cand *cd, int64_t now, char *out, size_t cap)
{
	char from[160], main[400], me[160];
	const char *mine = cd->doc ? jstr(cd->doc, "name") : NULL;
	snprintf(me, sizeof(me), "%s", mine && *mine ? mine : cd->sku);
	switch (cd->best_src) {
	case SRC_BASKET:
		name_of(c, cd->from, from, sizeof(from));
		snprintf(main, sizeof(main), "goes with %s in the basket", from);
		break;
	case SRC_HISTORY: {
		int64_t d = now > cd->from_ms ? (now - cd->from_ms) / DAY_MS : 0;
		name_of(c, cd->from, from, sizeof(from));
		if (d == 0)
			snprintf(main, sizeof(main), "bought %s today \xe2\x86\x92 %s", from, me);
		else
			snprintf(main, sizeof(main), "bought %s %lld day%s ago \xe2\x86\x92 %s", from, (long long)d,
				 d == 1 ? "" : "s", me);
		break;
	}
	case SRC_CENTRAL:
		snprintf(main, sizeof(main), "%s", central_reason(cd->code));
		break;
	default:
		snprintf(main, sizeof(main), "popular in this store");
		break;
	}
	if (cd->boost_why[0])
		snprintf(out, cap, "%s; %s", main, cd->boost_why);
	else
		snprintf(out, cap, "%s", main);
}

/* ---- coupons --------------------------------------------------------- */

struct offer {
	char key[80];
	cJSON *coupon;         /* the member coupon's signed payload; NULL: public campaign */
	const cJSON *campaign; /* borrowed from the campaign list; NULL if missing */
	const char *campaign_id;
	/* evaluation */
	int ok;
	const char *code;
	char detail[200];
	int64_t value;
	int capped;
};

struct campaigns {
	cJSON **v;
	size_t n;
};

static void campaigns_free(struct campaigns *cp)
{
	for (size_t i = 0; i < cp->n; i++)
		cJSON_Delete(cp->v[i]);
	free(cp->v);
	memset(cp, 0, sizeof(*cp));
}

/* Every campaign in the cache (signatures were checked when stored). */
static int campaigns_load(cache *c, struct campaigns *cp)
{
	sqlite3_stmt *st = q(c, Q_CAMPAIGNS);
	memset(cp, 0, sizeof(*cp));
	if (!st)
		return SCRM_E_IO;
	size_t cap = 0;
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		cJSON *p = cJSON_Parse((const char *)sqlite3_column_text(st, 1));
		if (!cJSON_IsObject(p)) {
			cJSON_Delete(p);
			continue;
		}
		if (cp->n == cap) {
			size_t nc = cap ? cap * 2 : 32;
			cJSON **nv = realloc(cp->v, nc * sizeof(*nv));
			if (!nv) {
				cJSON_Delete(p);
				sqlite3_reset(st);
				return err__set(SCRM_E_NOMEM, "out of memory");
			}
			cp->v = nv;
			cap = nc;
		}
		cp->v[cp->n++] = p;
	}
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? SCRM_OK : err__set(SCRM_E_IO, "cache: read campaigns: %s", sqlite3_errstr(rc));
}

/* The parsed campaigns, kept with the cache handle until the coupons stream
 * changes (its cursor, generation or last apply): ~50 JSON parses saved on
 * every call. */
struct guide_ext {
	int64_t cursor, gen, applied;
	int valid;
	struct campaigns cps;
};

static void ext_free(void *p)
{
	struct guide_ext *x = p;
	if (x)
		campaigns_free(&x->cps);
	free(x);
}

static int campaigns_get(cache *c, const struct campaigns **out)
{
	struct guide_ext *x = cache__ext(c);
	sqlite3_stmt *st = q(c, Q_COUPONS_STATE);
	int64_t cur = -1, gen = -1, applied = -1;
	int rc;
	*out = NULL;
	if (!x) {
		if (!(x = calloc(1, sizeof(*x))))
			return err__set(SCRM_E_NOMEM, "out of memory");
		cache__set_ext(c, x, ext_free);
	}
	if (st) {
		if (sqlite3_step(st) == SQLITE_ROW) {
			cur = sqlite3_column_int64(st, 0);
			gen = sqlite3_column_int64(st, 1);
			applied = sqlite3_column_int64(st, 2);
		}
		sqlite3_reset(st);
	}
	if (!x->valid || cur != x->cursor || gen != x->gen || applied != x->applied || cur < 0) {
		campaigns_free(&x->cps);
		x->valid = 0;
		if ((rc = campaigns_load(c, &x->cps)))
			return rc;
		x->cursor = cur;
		x->gen = gen;
		x->applied = applied;
		x->valid = cur >= 0;
	}
	*out = &x->cps;
	return SCRM_OK;
}

static const cJSON *campaign_find(const struct campaigns *cp, const char *id)
{
	for (size_t i = 0; id && i < cp->n; i++) {
		const char *x = jstr(cp->v[i], "id");
		if (x && strcmp(x, id) == 0)
			return cp->v[i];
	}
	return NULL;
}

struct basket {
	const scrm_line *lines;
	size_t n;
	const char *currency;
	char (*cat)[65]; /* category of each line, "" unknown */
	int64_t subtotal;
};

static int basket_load(cache *c, const scrm_line *lines, size_t n, const char *currency, struct basket *b)
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
		sqlite3_stmt *st = q(c, Q_CATEGORY);
		if (!st)
			continue;
		sqlite3_bind_text(st, 1, lines[i].sku, -1, SQLITE_STATIC);
		if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
			snprintf(b->cat[i], sizeof(b->cat[i]), "%s", (const char *)sqlite3_column_text(st, 0));
		sqlite3_reset(st);
	}
	return SCRM_OK;
}

static void money(int64_t v, char *out, size_t cap)
{
	snprintf(out, cap, "%s%lld.%02lld", v < 0 ? "-" : "", (long long)(llabs(v) / 100), (long long)(llabs(v) % 100));
}

static void window(struct offer *o, const cJSON *rec, const char *what, int64_t now)
{
	int64_t from = jint(rec, "valid_from", 0), to = jint(rec, "valid_to", 0);
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
static void evaluate(struct offer *o, const cJSON *profile, const char *member_id, const char *stage,
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
		const char *owner = jstr(o->coupon, "member_id");
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
	const char *tier = profile ? jstr(profile, "tier") : NULL;
	if (jcount(cp, "tiers") > 0 && !jhas(cp, "tiers", tier)) {
		o->code = "tier";
		snprintf(o->detail, sizeof(o->detail), profile ? "for other tiers (member is %s)" : "for members only",
			 tier ? tier : "without a tier");
		return;
	}
	if (jcount(cp, "tags") > 0) {
		const cJSON *t;
		int hit = 0;
		cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(cp, "tags"))
		{
			if (cJSON_IsString(t) && profile && jhas(profile, "tags", t->valuestring))
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
	if (jcount(cp, "stages") > 0 && !jhas(cp, "stages", stage)) {
		o->code = "stage";
		snprintf(o->detail, sizeof(o->detail), "for other lifecycle stages (member is %s)", stage ? stage : "anonymous");
		return;
	}
	/* Uses: central's count plus this device's (not rejected). */
	if (o->coupon) {
		int64_t uses = jint(o->coupon, "uses", 1), used = jint(o->coupon, "used", 0);
		int64_t mine =
			l ? local_count(l, jstr(o->coupon, "id"), NULL, cJSON_GetObjectItemCaseSensitive(o->coupon, "used_ids")) : 0;
		if (used + mine >= uses) {
			o->code = "used_up";
			snprintf(o->detail, sizeof(o->detail), "%lld of %lld use%s spent%s", (long long)(used + mine),
				 (long long)uses, uses == 1 ? "" : "s", mine ? " (on this device)" : "");
			return;
		}
	}
	int64_t pml = jint(cp, "per_member_limit", 0);
	if (pml > 0 && member_id) {
		const cJSON *cu = cJSON_GetObjectItemCaseSensitive(profile, "coupon_uses");
		int64_t had = jint(cu, o->campaign_id, 0) +
			      (l ? local_count(l, NULL, o->campaign_id, cJSON_GetObjectItemCaseSensitive(profile, "coupon_use_ids"))
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
	const char *kind = jstr(disc, "kind");
	int64_t dv = jint(disc, "value", 0);
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
	const char *cur = jstr(cp, "currency");
	if (cur && b->currency && strcmp(cur, b->currency) != 0) {
		o->code = "currency";
		snprintf(o->detail, sizeof(o->detail), "for %s baskets, this one is %s", cur, b->currency);
		return;
	}
	scope = cJSON_GetObjectItemCaseSensitive(cp, "scope");
	int whole = jcount(scope, "skus") == 0 && jcount(scope, "categories") == 0;
	int64_t in_scope = 0;
	size_t lines_in = 0;
	for (size_t i = 0; i < b->n; i++) {
		if (whole || jhas(scope, "skus", b->lines[i].sku) || (b->cat[i][0] && jhas(scope, "categories", b->cat[i]))) {
			in_scope += b->lines[i].qty * b->lines[i].unit_price - b->lines[i].discount;
			lines_in++;
		}
	}
	if (!lines_in) {
		o->code = "scope";
		snprintf(o->detail, sizeof(o->detail), "nothing in the basket is covered (%s)",
			 jcount(scope, "categories") ? "other categories" : "other products");
		return;
	}
	int64_t min = jint(cp, "min_spend", 0);
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
	int64_t cap = cJSON_IsObject(off) ? jint(off, "max_value", 0) : 0;
	if (!online && cap > 0 && o->value > cap) {
		o->value = cap;
		o->capped = 1;
	}
	o->ok = 1;
}

struct offers {
	struct offer *v;
	size_t n;
};

static void offers_free(struct offers *os)
{
	for (size_t i = 0; i < os->n; i++)
		cJSON_Delete(os->v[i].coupon);
	free(os->v);
	memset(os, 0, sizeof(*os));
}

/* The member's coupons, then public campaigns the member holds no coupon of. */
static int offers_load(cache *c, const char *member_id, const struct campaigns *cp, struct offers *os)
{
	size_t cap = 16;
	int rc = SCRM_OK;
	memset(os, 0, sizeof(*os));
	if (!(os->v = calloc(cap, sizeof(*os->v))))
		return err__set(SCRM_E_NOMEM, "out of memory");
	if (member_id) {
		sqlite3_stmt *st = q(c, Q_MEMBER_COUPONS);
		if (!st)
			return SCRM_E_IO;
		sqlite3_bind_text(st, 1, member_id, -1, SQLITE_STATIC);
		while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
			cJSON *p = cJSON_Parse((const char *)sqlite3_column_text(st, 1));
			if (!cJSON_IsObject(p)) {
				cJSON_Delete(p);
				continue;
			}
			if (os->n == cap) {
				struct offer *nv = realloc(os->v, cap * 2 * sizeof(*nv));
				if (!nv) {
					cJSON_Delete(p);
					sqlite3_reset(st);
					return err__set(SCRM_E_NOMEM, "out of memory");
				}
				os->v = nv;
				cap *= 2;
			}
			struct offer *o = &os->v[os->n++];
			memset(o, 0, sizeof(*o));
			snprintf(o->key, sizeof(o->key), "%s", (const char *)sqlite3_column_text(st, 0));
			o->coupon = p;
			o->campaign_id = jstr(p, "campaign");
			o->campaign = campaign_find(cp, o->campaign_id);
		}
		sqlite3_reset(st);
		if (rc != SQLITE_DONE)
			return err__set(SCRM_E_IO, "cache: read coupons: %s", sqlite3_errstr(rc));
	}
	for (size_t i = 0; i < cp->n; i++) {
		const cJSON *p = cp->v[i];
		const char *id = jstr(p, "id");
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

static void put_offer(sbuf *b, const struct offer *o, int with_reason)
{
	const cJSON *cp = o->campaign;
	sbuf__puts(b, "{\"key\":");
	sbuf__jstr(b, o->key);
	if (o->coupon) {
		sbuf__puts(b, ",\"coupon\":");
		sbuf__jstr(b, jstr(o->coupon, "id") ? jstr(o->coupon, "id") : "");
		if (jstr(o->coupon, "code")) {
			sbuf__puts(b, ",\"code\":");
			sbuf__jstr(b, jstr(o->coupon, "code"));
		}
	}
	if (o->campaign_id) {
		sbuf__puts(b, ",\"campaign\":");
		sbuf__jstr(b, o->campaign_id);
	}
	if (cp && jstr(cp, "name")) {
		sbuf__puts(b, ",\"name\":");
		sbuf__jstr(b, jstr(cp, "name"));
	}
	const cJSON *d = cp ? cJSON_GetObjectItemCaseSensitive(cp, "discount") : NULL;
	if (jstr(d, "kind")) {
		sbuf__puts(b, ",\"discount\":{\"kind\":");
		sbuf__jstr(b, jstr(d, "kind"));
		sbuf__puts(b, ",\"value\":");
		sbuf__i64(b, jint(d, "value", 0));
		sbuf__putc(b, '}');
	}
	int64_t to = o->coupon && jint(o->coupon, "valid_to", 0) ? jint(o->coupon, "valid_to", 0) : cp ? jint(cp, "valid_to", 0) : 0;
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

static int coupons_for(cache *c, scrm_store *store, const scrm_coupon_request *rq, sbuf *out)
{
	guide__policy pol;
	guide__local l;
	const struct campaigns *cps = NULL;
	struct offers os = {0};
	struct basket bk = {0};
	cJSON *profile = NULL;
	char why[160];
	const char *stage = NULL;
	int rc;
	int64_t now = rq->now_ms > 0 ? rq->now_ms : platform__wall_ms();

	memset(&l, 0, sizeof(l));
	if (rq->member_id && !id_ok(rq->member_id))
		return err__set(SCRM_E_INVALID, "member_id: 1..64 of [A-Za-z0-9_.:-]");
	if (rq->currency && (strlen(rq->currency) != 3 || rq->currency[0] < 'A' || rq->currency[0] > 'Z' ||
			     rq->currency[1] < 'A' || rq->currency[1] > 'Z' || rq->currency[2] < 'A' || rq->currency[2] > 'Z'))
		return err__set(SCRM_E_INVALID, "currency: three upper-case letters (ISO 4217)");
	if ((rc = check_basket(rq->basket, rq->n_basket, 0, 1)))
		return rc;
	guide__policy_parse(cache__policy(c), &pol);
	if (rq->member_id && (rc = cache__member_profile(c, rq->member_id, now, &profile, NULL)) != SCRM_E_NOT_FOUND &&
	    rc != SCRM_OK)
		return rc;
	if (profile)
		stage = guide__stage(profile, now, &pol, why, sizeof(why));
	if ((rc = local_load(store, rq->member_id, now, &pol, &l)) || (rc = campaigns_get(c, &cps)) ||
	    (rc = offers_load(c, rq->member_id, cps, &os)) ||
	    (rc = basket_load(c, rq->basket, rq->n_basket, rq->currency, &bk)))
		goto cleanup;
	for (size_t i = 0; i < os.n; i++)
		evaluate(&os.v[i], profile, rq->member_id, stage, &bk, &l, now);
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
		put_offer(out, &os.v[i], 0);
	}
	sbuf__puts(out, "],\"ineligible\":[");
	first = 1;
	for (size_t i = 0; i < os.n; i++) {
		if (os.v[i].ok)
			continue;
		if (!first)
			sbuf__putc(out, ',');
		first = 0;
		put_offer(out, &os.v[i], 1);
	}
	sbuf__puts(out, "]}");
	rc = out->oom ? err__set(SCRM_E_NOMEM, "out of memory") : SCRM_OK;
cleanup:
	free(bk.cat);
	offers_free(&os);
	local_free(&l);
	cJSON_Delete(profile);
	return rc;
}

/* ---- recommendations --------------------------------------------------- */

static const char *action_of(const char *stage, int64_t orders)
{
	if (!stage)
		return "cross_sell";
	if (strcmp(stage, "new") == 0)
		return orders > 0 ? "first_purchase_follow_up" : "welcome";
	if (strcmp(stage, "sleeping") == 0)
		return "wake_up";
	if (strcmp(stage, "churn_risk") == 0)
		return "retain";
	if (strcmp(stage, "lost") == 0)
		return "win_back";
	return "cross_sell";
}

static void put_script(cache *c, sbuf *b, int slot, const char *value)
{
	sqlite3_stmt *st = q(c, slot);
	if (!st)
		return;
	sqlite3_bind_text(st, 1, value, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		cJSON *doc = cJSON_Parse((const char *)sqlite3_column_text(st, 0));
		if (doc) {
			sbuf__puts(b, "{\"id\":");
			sbuf__jstr(b, jstr(doc, "id") ? jstr(doc, "id") : "");
			if (jstr(doc, "title")) {
				sbuf__puts(b, ",\"title\":");
				sbuf__jstr(b, jstr(doc, "title"));
			}
			sbuf__puts(b, ",\"text\":");
			sbuf__jstr(b, jstr(doc, "text") ? jstr(doc, "text") : "");
			sbuf__puts(b, slot == Q_SCRIPT_STAGE ? ",\"for\":\"stage\"}" : ",\"for\":\"tag\"}");
			sbuf__putc(b, ',');
			cJSON_Delete(doc);
		}
	}
	sqlite3_reset(st);
}

/* next_action: what to do for this member now, the coupon that goes with
 * it (one aimed at the stage first, then a member coupon before a public
 * campaign, then key order) and the talk tracks for the stage and the
 * member's tags. */
static int next_action(cache *c, sbuf *b, const cJSON *profile, const char *member_id, const char *stage,
		       const char *stage_why, const guide__local *l, int64_t now)
{
	const struct campaigns *cps;
	struct offers os;
	int rc;
	const cJSON *stats = cJSON_GetObjectItemCaseSensitive(profile, "stats"), *t;
	sbuf__puts(b, ",\"stage\":");
	sbuf__jstr(b, stage);
	sbuf__puts(b, ",\"stage_reason\":");
	sbuf__jstr(b, stage_why);
	sbuf__puts(b, ",\"next_action\":{\"action\":");
	sbuf__jstr(b, action_of(stage, jint(stats, "orders", 0)));
	if ((rc = campaigns_get(c, &cps)))
		return rc;
	if ((rc = offers_load(c, member_id, cps, &os))) {
		offers_free(&os);
		return rc;
	}
	const struct offer *best = NULL;
	int best_aimed = 0;
	for (size_t i = 0; i < os.n; i++) {
		struct offer *o = &os.v[i];
		evaluate(o, profile, member_id, stage, NULL, l, now);
		if (!o->ok)
			continue;
		int aimed = o->campaign && jhas(o->campaign, "stages", stage);
		/* offers are in key order: the first of equals wins */
		if (!best || aimed > best_aimed || (aimed == best_aimed && o->coupon && !best->coupon)) {
			best = o;
			best_aimed = aimed;
		}
	}
	if (best) {
		sbuf__puts(b, ",\"coupon\":");
		put_offer(b, best, 0);
	}
	sbuf__puts(b, ",\"scripts\":[");
	size_t mark = b->len;
	put_script(c, b, Q_SCRIPT_STAGE, stage);
	int ntag = 0;
	cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(profile, "tags"))
	{
		if (cJSON_IsString(t) && ntag++ < 3)
			put_script(c, b, Q_SCRIPT_TAG, t->valuestring);
	}
	if (b->len > mark && b->p[b->len - 1] == ',')
		b->len--;
	sbuf__puts(b, "]}");
	offers_free(&os);
	return SCRM_OK;
}

static int recommend(cache *c, scrm_store *store, const scrm_reco_request *rq, sbuf *out)
{
	guide__policy pol;
	guide__local l;
	struct cands cs;
	struct bought hist[MAX_HISTORY_SOURCES * 4];
	size_t nh = 0;
	cJSON *profile = NULL;
	struct cand **order = NULL;
	char why[160], reason_text[600];
	const char *stage = NULL;
	int rc, n = rq->n > 0 ? rq->n : 10;
	int64_t now = rq->now_ms > 0 ? rq->now_ms : platform__wall_ms();
	size_t shown = 0;
	int dropped_stock = 0, dropped_bought = 0;
	sbuf ev;

	memset(&l, 0, sizeof(l));
	sbuf__init(&ev);
	if (rq->n < 0 || n > MAX_N)
		return err__set(SCRM_E_INVALID, "n: 1..%d items (0 = 10), got %d", MAX_N, rq->n);
	if (rq->member_id && !id_ok(rq->member_id))
		return err__set(SCRM_E_INVALID, "member_id: 1..64 of [A-Za-z0-9_.:-]");
	if (rq->guide_id && !sku_ok(rq->guide_id))
		return err__set(SCRM_E_INVALID, "guide_id: 1..64 printable characters");
	if ((rc = check_basket(rq->basket, rq->n_basket, 0, 0)))
		return rc;
	guide__policy_parse(cache__policy(c), &pol);
	if ((rc = cands_init(&cs))) {
		cands_free(&cs);
		return rc;
	}
	/* A member the cache does not know yet (joined today, or before the
	 * next snapshot): the basket and the store still give a list. */
	if (rq->member_id && (rc = cache__member_profile(c, rq->member_id, now, &profile, NULL)) != SCRM_E_NOT_FOUND &&
	    rc != SCRM_OK)
		goto cleanup;
	rc = SCRM_OK;
	if (profile) {
		stage = guide__stage(profile, now, &pol, why, sizeof(why));
		nh = history(profile, hist, sizeof(hist) / sizeof(hist[0]));
		if (nh > 1)
			qsort(hist, nh, sizeof(hist[0]), cmp_bought);
	}
	/* 1. candidates */
	for (size_t i = 0, used = 0; i < rq->n_basket && used < MAX_BASKET_SOURCES; i++) {
		size_t k;
		for (k = 0; k < i; k++)
			if (strcmp(rq->basket[k].sku, rq->basket[i].sku) == 0)
				break;
		if (k < i)
			continue;
		from_rules(c, &cs, rq->basket[i].sku, 1.0, SRC_BASKET, 0);
		used++;
	}
	for (size_t i = 0, used = 0; i < nh && used < MAX_HISTORY_SOURCES; i++) {
		if (hist[i].ts < now - pol.history_ms)
			continue;
		double age = now > hist[i].ts ? (double)(now - hist[i].ts) / (double)DAY_MS : 0;
		from_rules(c, &cs, hist[i].sku, pow(0.5, age / (double)pol.half_life_days), SRC_HISTORY, hist[i].ts);
		used++;
	}
	if (profile)
		from_recos(c, &cs, rq->member_id, 1.0, SRC_CENTRAL);
	from_recos(c, &cs, "_store", 1.0, SRC_POPULAR);

	/* 2. the strongest 4N (at least 40), boosted */
	if (cs.n && !(order = malloc(cs.n * sizeof(*order)))) {
		rc = err__set(SCRM_E_NOMEM, "out of memory");
		goto cleanup;
	}
	for (size_t i = 0; i < cs.n; i++)
		order[i] = &cs.v[i];
	if (cs.n > 1)
		qsort(order, cs.n, sizeof(*order), cmp_cand);
	size_t top = (size_t)(4 * n > 40 ? 4 * n : 40);
	if (top > cs.n)
		top = cs.n;
	for (size_t i = 0; i < top; i++) {
		order[i]->doc = catalogue(c, order[i]->sku);
		boost(order[i], profile);
	}
	if (top > 1)
		qsort(order, top, sizeof(*order), cmp_cand);

	/* 3. filters, in rank order */
	sbuf__reset(out);
	sbuf__puts(out, "{\"items\":[");
	/* Past the boosted head, candidates keep their order: a list is short
	 * only when the candidates run out. */
	for (size_t i = 0; i < cs.n && shown < (size_t)n; i++) {
		struct cand *cd = order[i];
		size_t k;
		for (k = 0; k < rq->n_basket; k++)
			if (strcmp(rq->basket[k].sku, cd->sku) == 0)
				break;
		if (k < rq->n_basket)
			continue;
		/* Just bought: not again soon — unless central says the member
		 * buys it regularly (consumables). */
		int recent = 0;
		for (k = 0; pol.just_bought_ms > 0 && !cd->repeat && k < nh; k++)
			if (hist[k].ts >= now - pol.just_bought_ms && strcmp(hist[k].sku, cd->sku) == 0)
				recent = 1;
		if (recent) {
			dropped_bought++;
			continue;
		}
		if (!in_stock(c, cd->sku)) {
			dropped_stock++;
			continue;
		}
		if (i >= top && !cd->doc)
			cd->doc = catalogue(c, cd->sku);
		cd->used = 1;
		reason(c, cd, now, reason_text, sizeof(reason_text));
		if (shown)
			sbuf__putc(out, ',');
		sbuf__puts(out, "{\"sku\":");
		sbuf__jstr(out, cd->sku);
		if (cd->doc && jstr(cd->doc, "name")) {
			sbuf__puts(out, ",\"name\":");
			sbuf__jstr(out, jstr(cd->doc, "name"));
		}
		if (cd->doc && jstr(cd->doc, "category")) {
			sbuf__puts(out, ",\"category\":");
			sbuf__jstr(out, jstr(cd->doc, "category"));
		}
		if (cd->doc && cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(cd->doc, "price"))) {
			sbuf__puts(out, ",\"price\":");
			sbuf__i64(out, jint(cd->doc, "price", 0));
		}
		char sc[32];
		snprintf(sc, sizeof(sc), "%.4f", cd->score * cd->boost);
		sbuf__puts(out, ",\"score\":");
		sbuf__puts(out, sc);
		sbuf__puts(out, ",\"reason\":");
		sbuf__jstr(out, reason_text);
		sbuf__puts(out, ",\"sources\":[");
		for (int s = 0, f = 0; s < SRC_N; s++) {
			if (!(cd->srcs & (1u << s)))
				continue;
			if (f++)
				sbuf__putc(out, ',');
			sbuf__jstr(out, src_name[s]);
		}
		sbuf__puts(out, "]}");
		shown++;
	}
	sbuf__puts(out, "]");
	if (rq->member_id) {
		sbuf__puts(out, ",\"member_id\":");
		sbuf__jstr(out, rq->member_id);
		if (!profile)
			sbuf__puts(out, ",\"member_known\":false");
	}
	sbuf__puts(out, ",\"filtered\":{\"out_of_stock\":");
	sbuf__i64(out, dropped_stock);
	sbuf__puts(out, ",\"just_bought\":");
	sbuf__i64(out, dropped_bought);
	sbuf__putc(out, '}');
	if (profile) {
		if ((rc = local_load(store, rq->member_id, now, &pol, &l)) ||
		    (rc = next_action(c, out, profile, rq->member_id, stage, why, &l, now)))
			goto cleanup;
	}
	/* Recorded only when a guide is shown the list: that is what a sale
	 * can later be credited to. */
	if (store && rq->guide_id && shown) {
		scrm_receipt r;
		sbuf__puts(&ev, "{\"guide_id\":");
		sbuf__jstr(&ev, rq->guide_id);
		if (rq->member_id) {
			sbuf__puts(&ev, ",\"member_id\":");
			sbuf__jstr(&ev, rq->member_id);
		}
		sbuf__puts(&ev, ",\"items\":[");
		for (size_t i = 0, f = 0; i < cs.n; i++) {
			if (!order[i]->used)
				continue;
			if (f++)
				sbuf__putc(&ev, ',');
			sbuf__jstr(&ev, order[i]->sku);
		}
		sbuf__putc(&ev, ']');
		if (rq->n_basket) {
			sbuf__puts(&ev, ",\"basket\":[");
			for (size_t i = 0; i < rq->n_basket; i++) {
				if (i)
					sbuf__putc(&ev, ',');
				sbuf__jstr(&ev, rq->basket[i].sku);
			}
			sbuf__putc(&ev, ']');
		}
		if (stage) {
			sbuf__puts(&ev, ",\"stage\":");
			sbuf__jstr(&ev, stage);
		}
		sbuf__putc(&ev, '}');
		if (ev.oom) {
			rc = err__set(SCRM_E_NOMEM, "out of memory");
			goto cleanup;
		}
		if ((rc = store__record(store, EVENT_RECO_SHOWN, &ev, &r)))
			goto cleanup;
		sbuf__puts(out, ",\"reco_id\":");
		sbuf__jstr(out, r.event_id);
		sbuf__puts(out, ",\"seq\":");
		sbuf__i64(out, r.seq);
	}
	sbuf__putc(out, '}');
	rc = out->oom ? err__set(SCRM_E_NOMEM, "out of memory") : SCRM_OK;
cleanup:
	free(order);
	cands_free(&cs);
	local_free(&l);
	cJSON_Delete(profile);
	sbuf__free(&ev);
	return rc;
}

/* ---- redemption -------------------------------------------------------- */

/* Fetch a signed coupons-stream record by key and check central's signature
 * again (the cache could have been edited on disk since it was stored).
 * *out parsed payload; SCRM_E_NOT_FOUND when absent. */
static int signed_record(cache *c, const char *key, cJSON **out)
{
	sqlite3_stmt *st = q(c, Q_COUPON);
	int rc;
	*out = NULL;
	if (!st)
		return SCRM_E_IO;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc != SQLITE_ROW) {
		sqlite3_reset(st);
		return rc == SQLITE_DONE ? SCRM_E_NOT_FOUND : err__set(SCRM_E_IO, "cache: read coupon: %s", sqlite3_errstr(rc));
	}
	const char *text = (const char *)sqlite3_column_text(st, 1);
	size_t n = (size_t)sqlite3_column_bytes(st, 1);
	rc = cache__verify_signed(c, text ? text : "", n, sqlite3_column_blob(st, 2), (size_t)sqlite3_column_bytes(st, 2));
	if (rc == SCRM_OK && !(*out = cJSON_Parse(text ? text : "")))
		rc = err__set(SCRM_E_CORRUPT, "cache: %s: stored record unreadable", key);
	if (rc == SCRM_OK) {
		/* a genuine signature moved to another key on disk */
		char want[80];
		snprintf(want, sizeof(want), "%s:%s", jstr(*out, "type") ? jstr(*out, "type") : "",
			 jstr(*out, "id") ? jstr(*out, "id") : "");
		if (strcmp(want, key) != 0) {
			cJSON_Delete(*out);
			*out = NULL;
			rc = SCRM_E_CRYPTO;
		}
	}
	sqlite3_reset(st);
	if (rc == SCRM_E_CRYPTO)
		return err__set(SCRM_E_REFUSED, "signature: %s does not verify against central's key", key);
	return rc;
}

static int redeem(cache *c, scrm_store *store, const scrm_redeem_request *rq, scrm_redemption *res, sbuf *json)
{
	guide__policy pol;
	guide__local l;
	cJSON *profile = NULL, *coupon = NULL, *campaign = NULL;
	struct basket bk = {0};
	struct offer o;
	char key[80], why[160];
	const char *stage = NULL;
	sbuf body;
	int rc;
	/* The device's clock, never the caller's: a till that could name the
	 * time could spend an expired coupon (rq->now_ms is ignored, scrm.h).
	 * Tests fake it with platform__clock_override. */
	int64_t now = platform__wall_ms();

	memset(&l, 0, sizeof(l));
	memset(&o, 0, sizeof(o));
	sbuf__init(&body);
	if (!store)
		return err__set(SCRM_E_INVALID, "store: required to redeem");
	if (rq->member_id && !id_ok(rq->member_id))
		return err__set(SCRM_E_INVALID, "member_id: 1..64 of [A-Za-z0-9_.:-]");
	if (!rq->coupon || !id_ok(rq->coupon))
		return err__set(SCRM_E_INVALID, "coupon: 1..64 of [A-Za-z0-9_.:-] (coupon id, code or campaign id)");
	if (!rq->order_id || !*rq->order_id || strlen(rq->order_id) > 64 || !sku_ok(rq->order_id))
		return err__set(SCRM_E_INVALID, "order_id: required, 1..64 printable characters");
	if (rq->guide_id && !sku_ok(rq->guide_id))
		return err__set(SCRM_E_INVALID, "guide_id: 1..64 printable characters");
	if (!rq->currency || strlen(rq->currency) != 3 || rq->currency[0] < 'A' || rq->currency[0] > 'Z' ||
	    rq->currency[1] < 'A' || rq->currency[1] > 'Z' || rq->currency[2] < 'A' || rq->currency[2] > 'Z')
		return err__set(SCRM_E_INVALID, "currency: required, three upper-case letters (ISO 4217)");
	if ((rc = check_basket(rq->basket, rq->n_basket, 1, 1)))
		return rc;
	guide__policy_parse(cache__policy(c), &pol);
	if (rq->member_id && (rc = cache__member_profile(c, rq->member_id, now, &profile, NULL)) != SCRM_E_NOT_FOUND &&
	    rc != SCRM_OK)
		goto cleanup;
	rc = SCRM_OK;
	if (profile)
		stage = guide__stage(profile, now, &pol, why, sizeof(why));
	/* Which record: a coupon id, a public campaign, or a member's code. */
	snprintf(key, sizeof(key), "coupon:%s", rq->coupon);
	rc = signed_record(c, key, &coupon);
	if (rc == SCRM_E_NOT_FOUND) {
		snprintf(key, sizeof(key), "campaign:%s", rq->coupon);
		rc = signed_record(c, key, &campaign);
		if (rc == SCRM_OK && !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(campaign, "public"))) {
			rc = err__set(SCRM_E_REFUSED, "not_public: campaign %s is redeemed only with a member's coupon",
				      rq->coupon);
			goto cleanup;
		}
	}
	if (rc == SCRM_E_NOT_FOUND && rq->member_id) {
		sqlite3_stmt *st = q(c, Q_MEMBER_COUPONS);
		if (st) {
			sqlite3_bind_text(st, 1, rq->member_id, -1, SQLITE_STATIC);
			while (sqlite3_step(st) == SQLITE_ROW) {
				cJSON *p = cJSON_Parse((const char *)sqlite3_column_text(st, 1));
				const char *code = jstr(p, "code");
				if (code && strcmp(code, rq->coupon) == 0)
					snprintf(key, sizeof(key), "%s", (const char *)sqlite3_column_text(st, 0));
				cJSON_Delete(p);
			}
			sqlite3_reset(st);
			if (strncmp(key, "coupon:", 7) == 0 && strcmp(key + 7, rq->coupon) != 0)
				rc = signed_record(c, key, &coupon);
		}
	}
	if (rc == SCRM_E_NOT_FOUND) {
		rc = err__set(SCRM_E_NOT_FOUND, "coupon: no coupon, code or public campaign \"%s\" in the cache", rq->coupon);
		goto cleanup;
	}
	if (rc)
		goto cleanup;
	if (coupon) {
		char ck[80];
		snprintf(ck, sizeof(ck), "campaign:%s", jstr(coupon, "campaign") ? jstr(coupon, "campaign") : "");
		rc = signed_record(c, ck, &campaign);
		if (rc && rc != SCRM_E_NOT_FOUND)
			goto cleanup;
		rc = SCRM_OK;
	}
	snprintf(o.key, sizeof(o.key), "%s", key);
	o.coupon = coupon;
	o.campaign = campaign;
	o.campaign_id = coupon ? jstr(coupon, "campaign") : jstr(campaign, "id");
	if ((rc = local_load(store, rq->member_id, now, &pol, &l)) ||
	    (rc = basket_load(c, rq->basket, rq->n_basket, rq->currency, &bk)))
		goto cleanup;
	evaluate(&o, profile, rq->member_id, stage, &bk, &l, now);
	if (!o.ok) {
		rc = err__set(SCRM_E_REFUSED, "%s: %s", o.code, o.detail);
		goto cleanup;
	}
	/* The event: what central needs to settle it (protocol.md). */
	sbuf__puts(&body, "{\"campaign\":");
	sbuf__jstr(&body, o.campaign_id ? o.campaign_id : "");
	if (coupon) {
		sbuf__puts(&body, ",\"coupon\":");
		sbuf__jstr(&body, jstr(coupon, "id") ? jstr(coupon, "id") : "");
	}
	if (rq->member_id) {
		sbuf__puts(&body, ",\"member_id\":");
		sbuf__jstr(&body, rq->member_id);
	}
	sbuf__puts(&body, ",\"order_id\":");
	sbuf__jstr(&body, rq->order_id);
	sbuf__puts(&body, ",\"value\":");
	sbuf__i64(&body, o.value);
	sbuf__puts(&body, ",\"currency\":");
	sbuf__jstr(&body, rq->currency);
	sbuf__puts(&body, l.online ? ",\"mode\":\"online\"" : ",\"mode\":\"offline\"");
	if (rq->guide_id) {
		sbuf__puts(&body, ",\"guide_id\":");
		sbuf__jstr(&body, rq->guide_id);
	}
	sbuf__putc(&body, '}');
	if (body.oom) {
		rc = err__set(SCRM_E_NOMEM, "out of memory");
		goto cleanup;
	}
	{
		const cJSON *cu = cJSON_GetObjectItemCaseSensitive(profile, "coupon_uses");
		int64_t pml = campaign ? jint(campaign, "per_member_limit", 0) : 0;
		/* the redemption ids central's counts include, as JSON arrays */
		char *coupon_counted = coupon ? cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(coupon, "used_ids")) : NULL;
		char *member_counted = profile ? cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(profile, "coupon_use_ids"))
					       : NULL;
		outbox__limits lim = {
			.order_id = rq->order_id,
			.coupon = coupon ? jstr(coupon, "id") : NULL,
			.coupon_allowed = coupon ? jint(coupon, "uses", 1) - jint(coupon, "used", 0) : -1,
			.coupon_counted = coupon_counted,
			.member_counted = member_counted,
			.campaign = o.campaign_id,
			.member_id = rq->member_id,
			.member_allowed = pml > 0 ? pml - jint(cu, o.campaign_id, 0) : -1,
		};
		scrm_receipt r;
		rc = store__record_redemption(store, &body, &lim, &r);
		free(coupon_counted);
		free(member_counted);
		if (rc)
			goto cleanup;
		if (lim.existing)
			o.value = lim.existing_value; /* a retry of the same sale: its redemption */
		if (res) {
			memcpy(res->redemption_id, r.event_id, sizeof(res->redemption_id));
			res->value = o.value;
			res->seq = r.seq;
			res->offline = !l.online;
		}
		if (json) {
			sbuf__reset(json);
			sbuf__puts(json, "{\"redemption_id\":");
			sbuf__jstr(json, r.event_id);
			sbuf__puts(json, ",\"seq\":");
			sbuf__i64(json, r.seq);
			sbuf__puts(json, ",\"key\":");
			sbuf__jstr(json, key);
			sbuf__puts(json, ",\"value\":");
			sbuf__i64(json, o.value);
			if (o.capped)
				sbuf__puts(json, ",\"capped\":true");
			sbuf__puts(json, l.online ? ",\"mode\":\"online\"}" : ",\"mode\":\"offline\"}");
			if (json->oom)
				rc = err__set(SCRM_E_NOMEM, "out of memory");
		}
	}
cleanup:
	free(bk.cat);
	local_free(&l);
	cJSON_Delete(profile);
	cJSON_Delete(coupon);
	cJSON_Delete(campaign);
	sbuf__free(&body);
	return rc;
}

/* ---- entry points ----------------------------------------------------- */

/* One read transaction per call: a consistent view of the cache even if a
 * snapshot swap commits meanwhile, and one lock round-trip instead of one
 * per statement (a recommendation runs ~80 of them). */
/* 1 if this call opened the transaction (and must end it). */
static int read_begin(cache *c)
{
	sqlite3 *db = cache__db(c);
	return sqlite3_get_autocommit(db) && sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK;
}

static void read_end(cache *c, int began)
{
	sqlite3 *db = cache__db(c);
	if (began && !sqlite3_get_autocommit(db) && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
		sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL); /* never keep a snapshot open */
}

int guide__recommend(cache *c, scrm_store *store, const scrm_reco_request *rq, sbuf *out)
{
	int began = read_begin(c);
	int rc = recommend(c, store, rq, out);
	read_end(c, began);
	return rc;
}

int guide__coupons_for(cache *c, scrm_store *store, const scrm_coupon_request *rq, sbuf *out)
{
	int began = read_begin(c);
	int rc = coupons_for(c, store, rq, out);
	read_end(c, began);
	return rc;
}

int guide__redeem(cache *c, scrm_store *store, const scrm_redeem_request *rq, scrm_redemption *res, sbuf *json)
{
	int began = read_begin(c);
	int rc = redeem(c, store, rq, res, json);
	read_end(c, began);
	return rc;
}
