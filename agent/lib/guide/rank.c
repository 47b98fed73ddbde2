/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rank: the guide's suggestions (guide.h guide__recommend).
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
	if (!guide__sku_ok(sku) || !(strength > 0))
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

struct rule_src {
	struct cands *cs;
	const char *sku;
	double w;
	int src;
	int64_t from_ms;
};

static void rule_seen(void *ctx, const char *then_sku, double confidence)
{
	const struct rule_src *r = ctx;
	contribute(r->cs, then_sku, r->w * confidence, r->src, r->sku, r->from_ms,
		   NULL); /* w: the decay of a history source, 1 for the basket */
}

static void from_rules(cache *c, struct cands *cs, const char *sku, double w, int src, int64_t from_ms)
{
	struct rule_src r = {cs, sku, w, src, from_ms};
	cache__rules_from(c, sku, RULES_PER_SOURCE, rule_seen, &r);
}

static void from_recos(cache *c, struct cands *cs, const char *key, double w, int src)
{
	cJSON *doc = cache__recos_doc(c, key), *it;
	cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(doc, "items"))
	{
		const cJSON *sc = cJSON_GetObjectItemCaseSensitive(it, "score");
		double v = cJSON_IsNumber(sc) ? sc->valuedouble : 0.5;
		if (!(v > 0))
			continue;
		if (v > 1)
			v = 1;
		contribute(cs, json__str(it, "sku"), w * v, src, NULL, 0, json__str(it, "reason")); /* w = 1 */
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
		int64_t ts = json__i64(r, "ts", 0);
		cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(r, "skus"))
		{
			if (!cJSON_IsString(s) || !guide__sku_ok(s->valuestring))
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
	const char *cat = cd->doc ? json__str(cd->doc, "category") : NULL;
	char h[80], w[96];
	if (!profile || !cd->doc)
		return;
	if (cat && guide__has(prefs, "categories", cat)) {
		humanise(cat, h, sizeof(h));
		snprintf(w, sizeof(w), "likes %s", h);
		add_boost(cd, 1.25, w);
	}
	cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(cd->doc, "tags"))
	{
		if (!cJSON_IsString(t))
			continue;
		if (guide__has(profile, "tags", t->valuestring)) {
			humanise(t->valuestring, h, sizeof(h));
			add_boost(cd, 1.15, h);
		}
		if (guide__has(prefs, "likes", t->valuestring)) {
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
	const char *mine = cd->doc ? json__str(cd->doc, "name") : NULL;
	snprintf(me, sizeof(me), "%s", mine && *mine ? mine : cd->sku);
	switch (cd->best_src) {
	case SRC_BASKET:
		guide__name_of(c, cd->from, from, sizeof(from));
		snprintf(main, sizeof(main), "goes with %s in the basket", from);
		break;
	case SRC_HISTORY: {
		int64_t d = now > cd->from_ms ? (now - cd->from_ms) / DAY_MS : 0;
		guide__name_of(c, cd->from, from, sizeof(from));
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

static void put_script(cache *c, sbuf *b, cache__script_by by, const char *value)
{
	cJSON *doc = cache__script_doc(c, by, value);
	if (!doc)
		return;
	sbuf__puts(b, "{\"id\":");
	sbuf__jstr(b, json__str(doc, "id") ? json__str(doc, "id") : "");
	if (json__str(doc, "title")) {
		sbuf__puts(b, ",\"title\":");
		sbuf__jstr(b, json__str(doc, "title"));
	}
	sbuf__puts(b, ",\"text\":");
	sbuf__jstr(b, json__str(doc, "text") ? json__str(doc, "text") : "");
	sbuf__puts(b, by == CACHE_SCRIPT_STAGE ? ",\"for\":\"stage\"}" : ",\"for\":\"tag\"}");
	sbuf__putc(b, ',');
	cJSON_Delete(doc);
}

/* next_action: what to do for this member now, the coupon that goes with
 * it (one aimed at the stage first, then a member coupon before a public
 * campaign, then key order) and the talk tracks for the stage and the
 * member's tags. */
static int next_action(cache *c, sbuf *b, const cJSON *profile, const char *member_id, const char *stage,
		       const char *stage_why, const guide__local *l, int64_t now)
{
	const cache__campaigns *cps;
	struct offers os;
	int rc;
	const cJSON *stats = cJSON_GetObjectItemCaseSensitive(profile, "stats"), *t;
	sbuf__puts(b, ",\"stage\":");
	sbuf__jstr(b, stage);
	sbuf__puts(b, ",\"stage_reason\":");
	sbuf__jstr(b, stage_why);
	sbuf__puts(b, ",\"next_action\":{\"action\":");
	sbuf__jstr(b, action_of(stage, json__i64(stats, "orders", 0)));
	if ((rc = cache__campaigns_get(c, &cps)))
		return rc;
	if ((rc = guide__offers_load(c, member_id, cps, &os))) {
		guide__offers_free(&os);
		return rc;
	}
	const struct offer *best = NULL;
	int best_aimed = 0;
	for (size_t i = 0; i < os.n; i++) {
		struct offer *o = &os.v[i];
		guide__evaluate(o, profile, member_id, stage, NULL, l, now);
		if (!o->ok)
			continue;
		int aimed = o->campaign && guide__has(o->campaign, "stages", stage);
		/* offers are in key order: the first of equals wins */
		if (!best || aimed > best_aimed || (aimed == best_aimed && o->coupon && !best->coupon)) {
			best = o;
			best_aimed = aimed;
		}
	}
	if (best) {
		sbuf__puts(b, ",\"coupon\":");
		guide__put_offer(b, best, 0);
	}
	sbuf__puts(b, ",\"scripts\":[");
	size_t mark = b->len;
	put_script(c, b, CACHE_SCRIPT_STAGE, stage);
	int ntag = 0;
	cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(profile, "tags"))
	{
		if (cJSON_IsString(t) && ntag++ < 3)
			put_script(c, b, CACHE_SCRIPT_TAG, t->valuestring);
	}
	if (b->len > mark && b->p[b->len - 1] == ',')
		b->len--;
	sbuf__puts(b, "]}");
	guide__offers_free(&os);
	return SCRM_OK;
}

int guide__recommend(cache *c, scrm_store *store, const scrm_reco_request *rq, sbuf *out)
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
	if (rq->member_id && !guide__id_ok(rq->member_id))
		return err__set(SCRM_E_INVALID, "member_id: 1..64 of [A-Za-z0-9_.:-]");
	if (rq->guide_id && !guide__sku_ok(rq->guide_id))
		return err__set(SCRM_E_INVALID, "guide_id: 1..64 printable characters");
	if ((rc = guide__check_basket(rq->basket, rq->n_basket, 0, 0)))
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
		order[i]->doc = guide__catalogue(c, order[i]->sku);
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
		if (!guide__in_stock(c, cd->sku)) {
			dropped_stock++;
			continue;
		}
		if (i >= top && !cd->doc)
			cd->doc = guide__catalogue(c, cd->sku);
		cd->used = 1;
		reason(c, cd, now, reason_text, sizeof(reason_text));
		if (shown)
			sbuf__putc(out, ',');
		sbuf__puts(out, "{\"sku\":");
		sbuf__jstr(out, cd->sku);
		if (cd->doc && json__str(cd->doc, "name")) {
			sbuf__puts(out, ",\"name\":");
			sbuf__jstr(out, json__str(cd->doc, "name"));
		}
		if (cd->doc && json__str(cd->doc, "category")) {
			sbuf__puts(out, ",\"category\":");
			sbuf__jstr(out, json__str(cd->doc, "category"));
		}
		if (cd->doc && cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(cd->doc, "price"))) {
			sbuf__puts(out, ",\"price\":");
			sbuf__i64(out, json__i64(cd->doc, "price", 0));
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
		if ((rc = guide__local_load(store, rq->member_id, now, &pol, &l)) ||
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
	guide__local_free(&l);
	cJSON_Delete(profile);
	sbuf__free(&ev);
	return rc;
}
