/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-bench-reco: the guide tablet's two hot calls at store scale (500,000
 * members, 20,000 SKUs, 200,000 rules by default), each next to a reference
 * measured in the same run, on the same cache.db, interleaved call by call
 * (the first to run rotates, so none always finds the others' pages warm):
 *   1. scrm_recommend for a member (n = 10, a basket of 1-3 SKUs that have
 *      rules, random members)
 *                       vs raw SQLite doing only the key reads the engine
 *                          cannot avoid: the member row, the member's recos
 *                          row, and the top 30 rules of each basket SKU and
 *                          of each SKU the member bought within a year
 *                       vs the same reads with the rules from a copy that
 *                          has a plain index on if_sku (cache.db's rules
 *                          index was not usable when this was written; the
 *                          report prints the engine's query plan)
 *   2. scrm_coupons_for a 20-line GBP basket for a member holding coupons,
 *      with 50 offers to judge (the synthetic store's public campaigns, the
 *      member's own coupon, and bench coupons on the other campaigns signed
 *      here to make up 50), and again with only what cachegen generates
 *                       vs raw SQLite: the member row, the member's coupons
 *                          by the member index, the campaign range scan and
 *                          the 20 lines' categories
 *   3. both calls with a store handle (this device's redemptions and link
 *      state) vs without, same requests, interleaved
 * Setup, untimed but reported: keys and the seven snapshot files from
 * tests/support/cachegen (cg_synth_write), loaded with cache__load_file as
 * `scrmctl cache load` does; a few local purchases in outbox.db so some
 * profiles merge this device's history, as on a store day.
 *
 * Every call uses the synthetic store's now_ms (2024-12-01), so its coupons
 * and campaigns are inside their validity windows.
 *
 * Not a test: it asserts nothing about time (it does fail if a call fails
 * or returns nothing). The aim, p99 <= 1 ms for both calls, is
 * printed as met or missed. The last line is machine-readable:
 *   FIGURES reco_p50_us=N reco_p99_us=N coupon_eval_p99_us=N
 */
#include "benchutil.h"
#include "benchstore.h"
#include "cache.h"
#include "cachegen.h"
#include "harness.h"
#include "platform.h"

#include <scrm/scrm.h>

#include <cjson/cJSON.h>
#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TENANT "acme"
#define DEVICE "bench-01"
#define WARMUP 200          /* calls of each kind before any clock runs */
#define BASKET_LINES 20     /* coupon evaluation basket */
#define RECO_N 10           /* items asked for */
#define RULES_PER_SOURCE 30 /* the engine's limit per basket/history SKU */
#define MAX_HIST 16         /* synthetic members have at most 3 orders x 3 SKUs */
#define HISTORY_MS (365LL * 86400000LL) /* the engine's default guide.history_ms */
#define LOCAL_EVERY 20      /* one request in this many: member has a local purchase */
#define AIM_US 1000.0

struct cfg {
	long members, skus, rules, iters;
	long coupons; /* offers wanted per evaluation; 0 = as generated */
	long pool;    /* members given bench coupons */
	const char *dir;
	int keep, quick;
};

static int failed; /* a step went wrong: exit 1 after the FIGURES line */

/* ---- small helpers (as in bench_cache.c) --------------------------------- */

/* Record i of a synthetic stream, parsed (NULL on a generator error). */
static cJSON *synth_doc(const cg_synth *s, cg_stream st, size_t i)
{
	char *data = malloc(CG_SYNTH_RECORD_MAX);
	cJSON *doc = NULL;
	int n = data ? cg_synth_data(s, st, i, data, CG_SYNTH_RECORD_MAX) : -1;
	if (n >= 0 && n < CG_SYNTH_RECORD_MAX)
		doc = cJSON_Parse(data);
	if (!doc)
		fprintf(stderr, "cachegen: %s record %zu: %d\n", cg_stream_name(st), i, n);
	free(data);
	return doc;
}

static void sku_key(const cg_synth *s, size_t i, char out[16])
{
	if (cg_synth_key(s, CG_CATALOGUE, i, out, 16) <= 0)
		out[0] = '\0';
}

/* ---- requests --------------------------------------------------------------- */

/* A recommendation request, and what its raw reference reads. */
struct reco_rq {
	char member[24];
	char bsku[3][16];
	scrm_line basket[3];
	size_t nb;
	char hist[MAX_HIST][16]; /* SKUs bought within HISTORY_MS, distinct */
	size_t nh;
};

/* A coupon evaluation: a member and a 20-line basket of distinct SKUs. */
struct coupon_rq {
	char member[24];
	char sku[BASKET_LINES][16];
	scrm_line lines[BASKET_LINES];
	size_t n;
};

/* n distinct SKUs below `below` into keys[] (n <= below). */
static void distinct_skus(const cg_synth *s, size_t below, size_t n, char (*keys)[16], size_t *idx)
{
	for (size_t j = 0; j < n; j++) {
		size_t k, v;
		do {
			v = pick(below);
			for (k = 0; k < j && idx[k] != v; k++)
				;
		} while (k < j);
		idx[j] = v;
		sku_key(s, v, keys[j]);
	}
}

static int prep_reco(const cg_synth *s, struct reco_rq *r)
{
	size_t m = pick(s->n_members), idx[3];
	/* Rule i has antecedent SKU i mod n_skus: these SKUs all have rules. */
	size_t with_rules = s->n_rules < s->n_skus ? s->n_rules : s->n_skus;
	const cJSON *o, *sku;
	memset(r, 0, sizeof(*r));
	snprintf(r->member, sizeof(r->member), "M%07zu", m);
	r->nb = 1 + pick(3);
	if (r->nb > with_rules)
		r->nb = with_rules ? with_rules : 1;
	distinct_skus(s, with_rules ? with_rules : s->n_skus, r->nb, r->bsku, idx);
	for (size_t j = 0; j < r->nb; j++)
		r->basket[j] = (scrm_line){.sku = r->bsku[j], .qty = 1};
	cJSON *doc = synth_doc(s, CG_MEMBERS, m);
	if (!doc)
		return -1;
	cJSON_ArrayForEach(o, cJSON_GetObjectItemCaseSensitive(doc, "recent"))
	{
		const cJSON *ts = cJSON_GetObjectItemCaseSensitive(o, "ts");
		if (!cJSON_IsNumber(ts) || ts->valuedouble < (double)(s->now_ms - HISTORY_MS))
			continue;
		cJSON_ArrayForEach(sku, cJSON_GetObjectItemCaseSensitive(o, "skus"))
		{
			size_t k;
			if (!cJSON_IsString(sku) || strlen(sku->valuestring) >= sizeof(r->hist[0]))
				continue;
			for (k = 0; k < r->nh && strcmp(r->hist[k], sku->valuestring) != 0; k++)
				;
			if (k == r->nh && r->nh < MAX_HIST)
				snprintf(r->hist[r->nh++], sizeof(r->hist[0]), "%s", sku->valuestring);
		}
	}
	cJSON_Delete(doc);
	return 0;
}

static int prep_coupons(const cg_synth *s, size_t member, struct coupon_rq *r)
{
	size_t idx[BASKET_LINES];
	memset(r, 0, sizeof(*r));
	snprintf(r->member, sizeof(r->member), "M%07zu", member);
	r->n = s->n_skus < BASKET_LINES ? s->n_skus : BASKET_LINES;
	distinct_skus(s, s->n_skus, r->n, r->sku, idx);
	for (size_t j = 0; j < r->n; j++) {
		cJSON *doc = synth_doc(s, CG_CATALOGUE, idx[j]);
		const cJSON *price = cJSON_GetObjectItemCaseSensitive(doc, "price");
		if (!cJSON_IsNumber(price)) {
			cJSON_Delete(doc);
			return -1;
		}
		r->lines[j] = (scrm_line){.sku = r->sku[j], .qty = 1 + (int64_t)pick(3),
					  .unit_price = (int64_t)price->valuedouble};
		cJSON_Delete(doc);
	}
	return 0;
}

/* ---- coupons: what an evaluation sees ------------------------------------ */

/* The synthetic campaigns: which are public (offered to everyone). */
struct campaigns {
	size_t n, n_public;
	char (*id)[16];
	int *is_public;
	size_t *private_idx; /* indexes of the non-public ones */
	size_t n_private;
};

static int campaigns_read(const cg_synth *s, struct campaigns *cp)
{
	memset(cp, 0, sizeof(*cp));
	cp->n = s->n_campaigns;
	if (!cp->n)
		return 0;
	cp->id = calloc(cp->n, sizeof(*cp->id));
	cp->is_public = calloc(cp->n, sizeof(*cp->is_public));
	cp->private_idx = calloc(cp->n, sizeof(*cp->private_idx));
	if (!cp->id || !cp->is_public || !cp->private_idx)
		return -1;
	for (size_t i = 0; i < cp->n; i++) {
		cJSON *doc = synth_doc(s, CG_COUPONS, i); /* campaigns come first */
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(doc, "id");
		if (!cJSON_IsString(id) || strlen(id->valuestring) >= sizeof(cp->id[0])) {
			cJSON_Delete(doc);
			return -1;
		}
		snprintf(cp->id[i], sizeof(cp->id[0]), "%s", id->valuestring);
		cp->is_public[i] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "public"));
		if (cp->is_public[i])
			cp->n_public++;
		else
			cp->private_idx[cp->n_private++] = i;
		cJSON_Delete(doc);
	}
	return 0;
}

static void campaigns_free(struct campaigns *cp)
{
	free(cp->id);
	free(cp->is_public);
	free(cp->private_idx);
}

/* Offers the engine judges for coupon holder k as generated: every public
 * campaign, with the member's own coupon instead of its campaign's public
 * offer, or besides them when its campaign is not public. */
static size_t offers_as_generated(const cg_synth *s, const struct campaigns *cp, size_t k)
{
	return cp->n_public + (cp->n && !cp->is_public[k % s->n_campaigns] ? 1 : 0);
}

/* Bench coupons for coupon holder k (member k * coupon_every) up to
 * `want` offers, each on a non-public campaign (so each adds one offer),
 * signed by central's key and appended to the coupons snapshot file.
 * Returns the number written, -1 on error. */
static long bench_coupons(const cg_synth *s, const struct campaigns *cp, cg_signer *signer, FILE *f, size_t k,
			  size_t want)
{
	size_t have = offers_as_generated(s, cp, k), member = k * s->coupon_every;
	long n = 0;
	if (!cp->n_private)
		return 0; /* every campaign public: a coupon only replaces its campaign's offer */
	for (size_t e = 0; have + (size_t)n < want; e++) {
		char payload[512], *rec = NULL;
		size_t c = cp->private_idx[(e + k) % cp->n_private];
		snprintf(payload, sizeof(payload),
			 "{\"type\":\"coupon\",\"id\":\"B-M%07zu-%02zu\",\"campaign\":\"%s\",\"member_id\":\"M%07zu\","
			 "\"code\":\"BENCH-%zu-%zu\",\"valid_from\":%lld,\"valid_to\":%lld,\"uses\":1}",
			 member, e, cp->id[c], member, member, e, (long long)(s->now_ms - 86400000LL),
			 (long long)(s->now_ms + 30 * 86400000LL));
		if (cg_signed_coupon_record(signer, payload, &rec) != 0 || fprintf(f, "%s\n", rec) < 0) {
			free(rec);
			return -1;
		}
		free(rec);
		n++;
	}
	return n;
}

/* ---- the raw SQLite reference --------------------------------------------- */

/* The engine's rules query (agent/lib/guide/guide.c), for its plan on cache.db. */
#define ENGINE_RULES_SQL \
	"SELECT then_sku, confidence FROM rules WHERE if_sku = ?1 ORDER BY confidence DESC, then_sku LIMIT ?2"

/* EXPLAIN QUERY PLAN of sql, its steps joined by "; " into out. */
static void query_plan(sqlite3 *db, const char *sql, char *out, size_t cap)
{
	char eqp[512];
	sqlite3_stmt *q = NULL;
	size_t len = 0;
	out[0] = '\0';
	snprintf(eqp, sizeof(eqp), "EXPLAIN QUERY PLAN %s", sql);
	if (sqlite3_prepare_v2(db, eqp, -1, &q, NULL) != SQLITE_OK) {
		snprintf(out, cap, "? (%s)", sqlite3_errmsg(db));
		return;
	}
	while (sqlite3_step(q) == SQLITE_ROW) {
		const char *d = (const char *)sqlite3_column_text(q, 3);
		int n = snprintf(out + len, cap - len, "%s%s", len ? "; " : "", d ? d : "?");
		if (n < 0 || (size_t)n >= cap - len)
			break; /* truncated: enough to tell a scan from a search */
		len += (size_t)n;
	}
	sqlite3_finalize(q);
}

/* When this was written, cache.db's rules index was partial ("WHERE if_sku
 * IS NOT NULL") on a column declared NOT NULL, and SQLite 3.40 never uses
 * such an index for "if_sku = ?": every rules query scanned the table (the
 * report prints the plan it finds). The second reference reads the same
 * rules from a copy with the same table and a plain index on if_sku, to show
 * what the reads cost with a usable index. */
static int make_indexed_rules(const char *cache_path, const char *ref_path)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *att = NULL;
	int ok = sqlite3_open(ref_path, &db) == SQLITE_OK &&
		 sqlite3_exec(db,
			      "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
			      "CREATE TABLE rules(key TEXT PRIMARY KEY, if_sku TEXT NOT NULL, then_sku TEXT NOT NULL,"
			      " support REAL NOT NULL, confidence REAL NOT NULL, lift REAL NOT NULL) WITHOUT ROWID",
			      NULL, NULL, NULL) == SQLITE_OK &&
		 sqlite3_prepare_v2(db, "ATTACH ?1 AS c", -1, &att, NULL) == SQLITE_OK &&
		 sqlite3_bind_text(att, 1, cache_path, -1, SQLITE_STATIC) == SQLITE_OK &&
		 sqlite3_step(att) == SQLITE_DONE;
	sqlite3_finalize(att);
	ok = ok && sqlite3_exec(db,
				"INSERT INTO rules SELECT key, if_sku, then_sku, support, confidence, lift"
				" FROM c.rules; DETACH c; CREATE INDEX rules_if ON rules(if_sku);"
				" PRAGMA wal_checkpoint(TRUNCATE)",
				NULL, NULL, NULL) == SQLITE_OK;
	if (!ok)
		fprintf(stderr, "indexed rules copy: %s\n", db ? sqlite3_errmsg(db) : "out of memory");
	sqlite3_close(db);
	return ok ? 0 : -1;
}

/* Its own read-only connection to the same cache.db (the indexed rules copy
 * attached), same page cache size as the engine's (cache_size=-16384);
 * statements prepared once. */
struct raw {
	sqlite3 *db;
	sqlite3_stmt *member, *recos, *rules, *rules_ix, *member_coupons, *campaigns, *category;
};

static int raw_open(const char *cache_path, const char *ref_path, struct raw *r)
{
	sqlite3_stmt *att = NULL;
	memset(r, 0, sizeof(*r));
	if (sqlite3_open_v2(cache_path, &r->db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
	    sqlite3_exec(r->db, "PRAGMA cache_size=-16384", NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(r->db, "ATTACH ?1 AS ref", -1, &att, NULL) != SQLITE_OK ||
	    sqlite3_bind_text(att, 1, ref_path, -1, SQLITE_STATIC) != SQLITE_OK || sqlite3_step(att) != SQLITE_DONE ||
	    sqlite3_exec(r->db, "PRAGMA ref.cache_size=-16384", NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(r->db,
			       "SELECT then_sku, confidence FROM ref.rules WHERE if_sku = ?1"
			       " ORDER BY confidence DESC LIMIT 30",
			       -1, &r->rules_ix, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(r->db, "SELECT doc FROM members WHERE key = ?1", -1, &r->member, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(r->db, "SELECT doc FROM recos WHERE key = ?1", -1, &r->recos, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(r->db,
			       "SELECT then_sku, confidence FROM rules WHERE if_sku = ?1"
			       " ORDER BY confidence DESC LIMIT 30",
			       -1, &r->rules, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(r->db, "SELECT key, signed FROM coupons WHERE member_id = ?1", -1, &r->member_coupons,
			       NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(r->db,
			       "SELECT key, signed FROM coupons WHERE key >= 'campaign:' AND key < 'campaign;'", -1,
			       &r->campaigns, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(r->db, "SELECT category FROM catalogue WHERE key = ?1", -1, &r->category, NULL) !=
		    SQLITE_OK) {
		fprintf(stderr, "raw reference: %s\n", r->db ? sqlite3_errmsg(r->db) : "out of memory");
		sqlite3_finalize(att);
		return -1;
	}
	sqlite3_finalize(att);
	return 0;
}

static void raw_close(struct raw *r)
{
	sqlite3_finalize(r->member);
	sqlite3_finalize(r->recos);
	sqlite3_finalize(r->rules);
	sqlite3_finalize(r->rules_ix);
	sqlite3_finalize(r->member_coupons);
	sqlite3_finalize(r->campaigns);
	sqlite3_finalize(r->category);
	sqlite3_close(r->db);
}

static size_t raw_sink; /* every column's bytes, so no read is optimised away */

/* Step a statement (key bound or none) to the end, reading every column as
 * text; the number of rows, -1 on an error. */
static long drain(sqlite3_stmt *q, const char *key)
{
	long rows = 0;
	int rc;
	if (key)
		sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		for (int c = 0; c < sqlite3_column_count(q); c++)
			if (sqlite3_column_text(q, c))
				raw_sink += (size_t)sqlite3_column_bytes(q, c);
		rows++;
	}
	sqlite3_reset(q);
	return rc == SQLITE_DONE ? rows : -1;
}

/* The member row, the recos row, the top rules of each basket SKU and of
 * each SKU bought within a year (from cache.db's rules, or from the indexed
 * copy). *queries = statements run. */
static int raw_reco(struct raw *r, int indexed, const struct reco_rq *rq, long *queries)
{
	sqlite3_stmt *rules = indexed ? r->rules_ix : r->rules;
	int bad = drain(r->member, rq->member) != 1 || drain(r->recos, rq->member) < 0;
	for (size_t j = 0; j < rq->nb; j++)
		bad |= drain(rules, rq->bsku[j]) < 0;
	for (size_t j = 0; j < rq->nh; j++)
		bad |= drain(rules, rq->hist[j]) < 0;
	*queries = 2 + (long)(rq->nb + rq->nh);
	return bad ? -1 : 0;
}

/* The member row, the member's coupons, the campaigns, each line's category. */
static int raw_coupons(struct raw *r, const struct coupon_rq *rq)
{
	int bad = drain(r->member, rq->member) != 1 || drain(r->member_coupons, rq->member) < 0 ||
		  drain(r->campaigns, NULL) < 0;
	for (size_t j = 0; j < rq->n; j++)
		bad |= drain(r->category, rq->sku[j]) != 1;
	return bad ? -1 : 0;
}

/* ---- timed calls ------------------------------------------------------------ */

/* One side of an interleaved comparison: the engine (with or without a store
 * handle) or the raw reference. */
struct side {
	scrm_cache *cache;
	scrm_store *store;
	struct raw *raw; /* set: the raw reference instead of the engine */
	int indexed;     /* raw: rules from the indexed copy */
};

struct reco_stats {
	long calls, items, queries, histories;
};

static int reco_once(const struct side *sd, const struct reco_rq *rq, int64_t now, int64_t *ns, struct reco_stats *st)
{
	char *json = NULL;
	long queries = 0;
	int64_t t0 = now_ns();
	if (sd->raw) {
		int e = raw_reco(sd->raw, sd->indexed, rq, &queries);
		*ns = now_ns() - t0;
		st->calls++;
		st->queries += queries;
		st->histories += (long)rq->nh;
		if (e)
			fprintf(stderr, "raw reco reads for %s failed: %s\n", rq->member, sqlite3_errmsg(sd->raw->db));
		return e;
	}
	scrm_reco_request r = {.member_id = rq->member, .basket = rq->basket, .n_basket = rq->nb, .n = RECO_N,
			       .now_ms = now};
	int rc = scrm_recommend(sd->cache, sd->store, &r, &json);
	*ns = now_ns() - t0;
	cJSON *doc = rc == SCRM_OK ? cJSON_Parse(json) : NULL;
	int items = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(doc, "items"));
	if (rc != SCRM_OK || items <= 0)
		fprintf(stderr, "scrm_recommend for %s: rc %d (%s), %d items\n", rq->member, rc,
			rc ? scrm_errmsg() : "ok", items);
	st->calls++;
	st->items += items;
	cJSON_Delete(doc);
	scrm_free(json);
	return rc == SCRM_OK && items > 0 ? 0 : -1;
}

struct coupon_stats {
	long calls, offers, eligible, min_offers, max_offers;
};

static int coupons_once(const struct side *sd, const struct coupon_rq *rq, int64_t now, int64_t *ns,
			struct coupon_stats *st)
{
	char *json = NULL;
	int64_t t0 = now_ns();
	if (sd->raw) {
		int e = raw_coupons(sd->raw, rq);
		*ns = now_ns() - t0;
		if (e)
			fprintf(stderr, "raw coupon reads for %s failed: %s\n", rq->member,
				sqlite3_errmsg(sd->raw->db));
		return e;
	}
	scrm_coupon_request r = {.member_id = rq->member, .basket = rq->lines, .n_basket = rq->n, .currency = "GBP",
				 .now_ms = now};
	int rc = scrm_coupons_for(sd->cache, sd->store, &r, &json);
	*ns = now_ns() - t0;
	cJSON *doc = rc == SCRM_OK ? cJSON_Parse(json) : NULL;
	const cJSON *el = cJSON_GetObjectItemCaseSensitive(doc, "eligible");
	const cJSON *in = cJSON_GetObjectItemCaseSensitive(doc, "ineligible");
	long ne = cJSON_GetArraySize(el), n = ne + cJSON_GetArraySize(in);
	if (rc != SCRM_OK || !cJSON_IsArray(el) || !cJSON_IsArray(in) || n <= 0)
		fprintf(stderr, "scrm_coupons_for %s: rc %d (%s), %ld offers\n", rq->member, rc,
			rc ? scrm_errmsg() : "ok", n);
	if (!st->calls || n < st->min_offers)
		st->min_offers = n;
	if (n > st->max_offers)
		st->max_offers = n;
	st->calls++;
	st->offers += n;
	st->eligible += ne;
	cJSON_Delete(doc);
	scrm_free(json);
	return rc == SCRM_OK && n > 0 ? 0 : -1;
}

/* n requests, each through every side (up to 3), the first side rotating
 * from one request to the next so none always runs on another's warm pages.
 * Samples in ns into v[side][i] (v NULL: not kept, e.g. warm-up). */
static int run_reco(const struct side *const *sd, size_t nsd, const struct reco_rq *rq, size_t n, int64_t now,
		    int64_t *const *v, struct reco_stats *st)
{
	for (size_t i = 0; i < n; i++) {
		for (size_t k = 0; k < nsd; k++) {
			size_t j = (i + k) % nsd;
			int64_t t = 0;
			if (reco_once(sd[j], &rq[i], now, &t, &st[j]) != 0)
				return -1;
			if (v)
				v[j][i] = t;
		}
	}
	return 0;
}

static int run_coupons(const struct side *const *sd, size_t nsd, const struct coupon_rq *rq, size_t n, int64_t now,
		       int64_t *const *v, struct coupon_stats *st)
{
	for (size_t i = 0; i < n; i++) {
		for (size_t k = 0; k < nsd; k++) {
			size_t j = (i + k) % nsd;
			int64_t t = 0;
			if (coupons_once(sd[j], &rq[i], now, &t, &st[j]) != 0)
				return -1;
			if (v)
				v[j][i] = t;
		}
	}
	return 0;
}

/* ---- main ------------------------------------------------------------------- */

static void usage(void)
{
	printf("Usage: scrm-bench-reco [--members N] [--skus N] [--rules N] [--iters N] [--coupons N]\n"
	       "                       [--work DIR] [--keep] [--quick]\n"
	       "  defaults: --members 500000 --skus 20000 --rules 200000 --iters 2000 --coupons 50,\n"
	       "            in a fresh temporary directory\n"
	       "  --iters   timed scrm_recommend calls, and timed scrm_coupons_for calls per coupon run\n"
	       "            (after %d warm-up calls of each)\n"
	       "  --coupons offers each coupon evaluation judges: members get bench coupons (signed with\n"
	       "            central's key) up to this; 0 = only what cachegen generates\n"
	       "  --quick   20,000 members, 2,000 SKUs, 20,000 rules, 200 iterations (5,000 / 500 /\n"
	       "            5,000 / 100 under an emulator: SCRM_TEST_EMULATOR set)\n"
	       "  --work    work in DIR (created if missing; DIR/store must not exist yet); --dir too\n"
	       "  --keep    keep the store, keys and snapshot files afterwards\n",
	       WARMUP);
}

static int parse_args(int argc, char **argv, struct cfg *c)
{
	const long most = 100000000;
	const struct bench_count counts[] = {
		{"--members", &c->members, 1, most}, {"--skus", &c->skus, 1, most},	  {"--rules", &c->rules, 1, most},
		{"--iters", &c->iters, 1, most},     {"--coupons", &c->coupons, 0, most},
	};
	c->coupons = -1;
	return bench_parse(argc, argv, "scrm-bench-reco", 1, "--work", counts, sizeof(counts) / sizeof(counts[0]),
			   &c->dir, &c->keep, &c->quick, usage);
}

static void print_lat(const char *what, struct lat a)
{
	printf("  %-28s p50 %7.1f  p90 %7.1f  p99 %7.1f  max %8.1f us  (n=%zu)\n", what, a.p50, a.p90, a.p99, a.max,
	       a.n);
}

/* A reference's line, with the ratio of the figure above it to it. */
static void print_ref(const char *what, struct lat r, struct lat a)
{
	printf("  %-28s p50 %7.1f  p90 %7.1f  p99 %7.1f  max %8.1f us   ratio p50 %.1f  p99 %.1f\n", what, r.p50, r.p90,
	       r.p99, r.max, ratio(a.p50, r.p50), ratio(a.p99, r.p99));
}

static long long us(double v)
{
	return (long long)(v + 0.5);
}

int main(int argc, char **argv)
{
	struct cfg cf = {0};
	if (parse_args(argc, argv, &cf) != 0)
		return 2;
	const char *emu = getenv("SCRM_TEST_EMULATOR");
	int emulated = emu && *emu;
	long members = cf.quick ? (emulated ? 5000 : 20000) : 500000;
	long skus = cf.quick ? (emulated ? 500 : 2000) : 20000;
	long rules = cf.quick ? (emulated ? 5000 : 20000) : 200000;
	long iters = cf.quick ? (emulated ? 100 : 200) : 2000;
	cf.members = cf.members ? cf.members : members;
	cf.skus = cf.skus ? cf.skus : skus;
	cf.rules = cf.rules ? cf.rules : rules;
	cf.iters = cf.iters ? cf.iters : iters;
	cf.coupons = cf.coupons >= 0 ? cf.coupons : 50;
	cf.pool = cf.quick ? (emulated ? 10 : 20) : 100;

	cg_synth syn;
	if (bench_synth(&syn, "scrm-bench-reco", cf.members, cf.skus, cf.rules, TENANT) != 0)
		return 2;
	const int64_t now = syn.now_ms; /* every call: coupons and campaigns are valid then */
	size_t n_iters = (size_t)cf.iters;
	size_t holders = syn.coupon_every ? (syn.n_members + syn.coupon_every - 1) / syn.coupon_every : 0;
	size_t pool = (size_t)cf.pool < holders / 2 ? (size_t)cf.pool : holders / 2;
	size_t stride = pool ? holders / pool : 1;
	if (!cf.coupons)
		pool = 0;

	/* ---- directories and keys ---- */
	struct bench_work w;
	char snap[4200], path[4400], cache_path[4200], ref_path[4200];
	if (bench_work_open(&w, "scrm-bench-reco", cf.dir, "bench-reco", "--work") != 0)
		return 1;
	const char *dir = w.dir, *store = w.store, *central = w.central;
	snprintf(snap, sizeof(snap), "%s/snapshots", dir);
	snprintf(cache_path, sizeof(cache_path), "%s/private/%s", store, CACHE_FILE);
	snprintf(ref_path, sizeof(ref_path), "%s/ref_rules.db", dir);
	bench_unlink_db(ref_path); /* a reference copy an interrupted run left */
	int64_t wall0 = now_ns();
	printf("scrm-bench-reco: %ld members, %ld SKUs, %ld rules, %zu campaigns, a coupon every %zu members;"
	       " SQLite %s; %ld CPUs%s; in %s\n",
	       cf.members, cf.skus, cf.rules, syn.n_campaigns, syn.coupon_every, sqlite3_libversion(),
	       sysconf(_SC_NPROCESSORS_ONLN), emulated ? " (emulated)" : "", dir);
	fflush(stdout);

	int rc = bench_work_keys(&w);
	cg_signer *signer = NULL;
	snprintf(path, sizeof(path), "%s/central.key", central);
	if (rc != 0 || cg_signer_open(path, &signer) != 0) {
		fprintf(stderr, "scrm-bench-reco: keys: %d\n", rc);
		return 1;
	}

	/* ---- snapshot files, bench coupons ---- */
	struct campaigns cps;
	int64_t t0 = now_ns();
	progress("writing the snapshot files (cg_synth_write)...");
	if (campaigns_read(&syn, &cps) != 0 || cg_synth_write(&syn, signer, snap) != 0) {
		fprintf(stderr, "scrm-bench-reco: cannot generate the synthetic store\n");
		return 1;
	}
	int64_t gen_ns = now_ns() - t0;
	long extra = 0;
	t0 = now_ns();
	if (pool) {
		snprintf(path, sizeof(path), "%s/coupons.jsonl", snap);
		FILE *f = fopen(path, "a");
		for (size_t j = 0; f && j < pool && extra >= 0; j++) {
			long e = bench_coupons(&syn, &cps, signer, f, j * stride, (size_t)cf.coupons);
			extra = e < 0 ? -1 : extra + e;
		}
		if (!f || fclose(f) != 0 || extra < 0) {
			fprintf(stderr, "scrm-bench-reco: cannot add bench coupons to %s\n", path);
			return 1;
		}
	}
	int64_t sign_ns = now_ns() - t0;
	cg_signer_close(signer);

	/* ---- load: profiles merge this device's purchases as in the field ---- */
	scrm_store *so = NULL;
	cache *c = NULL;
	if (bench_open_store("scrm-bench-reco", store, DEVICE, TENANT, &so, &c) != 0)
		return 1;
	int64_t load_ns[CG_N_STREAMS] = {0}, loaded[CG_N_STREAMS] = {0}, load_all = 0;
	for (int st = 0; st < CG_N_STREAMS; st++) {
		int64_t refused = 0;
		int got = -1;
		char what[80];
		snprintf(what, sizeof(what), "loading %s...", cg_stream_name((cg_stream)st));
		progress(what);
		snprintf(path, sizeof(path), "%s/%s.jsonl", snap, cg_stream_name((cg_stream)st));
		t0 = now_ns();
		if (cache__load_file(c, path, NULL, NULL, &loaded[st], &refused, &got) != SCRM_OK || refused) {
			fprintf(stderr, "scrm-bench-reco: load %s: %s; %lld refused %s\n", path, scrm_errmsg(),
				(long long)refused, cache__refused_detail(c));
			return 1;
		}
		load_ns[st] = now_ns() - t0;
		load_all += load_ns[st];
	}
	cache__checkpoint(c);
	cache__close(c);
	int64_t cache_bytes = file_size(cache_path);
	snprintf(path, sizeof(path), "%s-wal", cache_path);
	cache_bytes += file_size(path);

	scrm_cache *pc = NULL;
	struct raw raw;
	if (scrm_cache_open(store, NULL, &pc) != SCRM_OK) {
		fprintf(stderr, "scrm-bench-reco: scrm_cache_open: %s\n", scrm_errmsg());
		return 1;
	}
	progress("indexed copy of the rules for the reference...");
	if (make_indexed_rules(cache_path, ref_path) != 0 || raw_open(cache_path, ref_path, &raw) != 0)
		return 1;
	char rules_plan[300];
	query_plan(raw.db, ENGINE_RULES_SQL, rules_plan, sizeof(rules_plan));

	/* ---- requests (generated before any clock runs) ---- */
	progress("preparing requests...");
	struct reco_rq *warm_r = calloc(WARMUP, sizeof(*warm_r)), *rr = calloc(n_iters, sizeof(*rr));
	struct coupon_rq *warm_c = calloc(WARMUP, sizeof(*warm_c)), *cfull = calloc(n_iters, sizeof(*cfull));
	struct coupon_rq *cgen = calloc(n_iters, sizeof(*cgen));
	int64_t *va = calloc(n_iters, sizeof(int64_t)), *vb = calloc(n_iters, sizeof(int64_t));
	int64_t *vc = calloc(n_iters, sizeof(int64_t));
	if (!warm_r || !rr || !warm_c || !cfull || !cgen || !va || !vb || !vc) {
		fprintf(stderr, "scrm-bench-reco: out of memory\n");
		return 1;
	}
	for (size_t i = 0; i < WARMUP && !failed; i++)
		failed |= prep_reco(&syn, &warm_r[i]) != 0;
	for (size_t i = 0; i < n_iters && !failed; i++)
		failed |= prep_reco(&syn, &rr[i]) != 0;
	/* Coupon members: holders with bench coupons (the full run), holders
	 * without (as generated); anyone when the store has no coupons. */
	for (size_t i = 0; i < WARMUP + 2 * n_iters && !failed; i++) {
		size_t m, k;
		if (!holders) {
			m = pick(syn.n_members);
		} else if (pool && i < WARMUP + n_iters) {
			m = pick(pool) * stride * syn.coupon_every;
		} else {
			do
				k = pick(holders);
			while (pool && k % stride == 0 && k / stride < pool);
			m = k * syn.coupon_every;
		}
		struct coupon_rq *r = i < WARMUP ? &warm_c[i] : i < WARMUP + n_iters ? &cfull[i - WARMUP]
										  : &cgen[i - WARMUP - n_iters];
		failed |= prep_coupons(&syn, m, r) != 0;
	}
	/* A store day: some members bought here today, not yet in central's
	 * figures, so their profiles merge local purchases. */
	long local = 0;
	for (size_t i = 0; i < n_iters && !failed; i += LOCAL_EVERY) {
		char order[32];
		scrm_line l = {.sku = rr[i].bsku[0], .qty = 1, .unit_price = 500};
		snprintf(order, sizeof(order), "BR-%zu", i);
		scrm_purchase p = {.order_id = order, .lines = &l, .n_lines = 1, .total = 500, .currency = "GBP",
				   .payment = "card", .member_id = rr[i].member};
		if (scrm_record_purchase(so, &p, NULL) != SCRM_OK) {
			fprintf(stderr, "scrm-bench-reco: record purchase: %s\n", scrm_errmsg());
			failed = 1;
		}
		local++;
	}
	if (failed) {
		fprintf(stderr, "scrm-bench-reco: preparing the requests failed\n");
		return 1;
	}
	int64_t setup_ns = now_ns() - wall0;

	/* Sides: 0 the engine, 1 raw SQLite on cache.db, 2 raw SQLite with the
	 * rules index usable; for section 3, 0 with a store handle, 1 without. */
	struct side eng = {.cache = pc}, eng_store = {.cache = pc, .store = so}, ref = {.raw = &raw},
		    ref_ix = {.raw = &raw, .indexed = 1};
	const struct side *three[3] = {&eng, &ref, &ref_ix}, *two[2] = {&eng, &ref}, *store_vs[2] = {&eng_store, &eng};
	int64_t *v[3] = {va, vb, vc};
	struct reco_stats rs_warm[3] = {0}, rs[3] = {0}, rs_st[2] = {0};
	struct coupon_stats cs_warm[2] = {0}, cs_full[2] = {0}, cs_gen[2] = {0}, cs_st[2] = {0};
	struct lat l_reco = {0}, l_reco_raw = {0}, l_reco_ix = {0}, l_full = {0}, l_full_raw = {0}, l_gen = {0},
		   l_gen_raw = {0};
	struct lat l_reco_none = {0}, l_reco_store = {0}, l_cp_none = {0}, l_cp_store = {0};

	/* ---- warm-up: engine and references, untimed ---- */
	progress("warm-up...");
	if (run_reco(three, 3, warm_r, WARMUP, now, NULL, rs_warm) != 0 ||
	    run_coupons(two, 2, warm_c, WARMUP, now, NULL, cs_warm) != 0)
		failed = 1;

	/* ---- 1. recommendations ---- */
	progress("1. recommendations...");
	if (!failed && run_reco(three, 3, rr, n_iters, now, v, rs) == 0)
		l_reco = latency(va, n_iters), l_reco_raw = latency(vb, n_iters), l_reco_ix = latency(vc, n_iters);
	else
		failed = 1;

	/* ---- 2. coupon evaluation: with bench coupons, then as generated ---- */
	progress("2. coupon evaluation...");
	if (!failed && pool) {
		if (run_coupons(two, 2, cfull, n_iters, now, v, cs_full) == 0)
			l_full = latency(va, n_iters), l_full_raw = latency(vb, n_iters);
		else
			failed = 1;
	}
	if (!failed && run_coupons(two, 2, cgen, n_iters, now, v, cs_gen) == 0)
		l_gen = latency(va, n_iters), l_gen_raw = latency(vb, n_iters);
	else
		failed = 1;

	/* ---- 3. with a store handle vs without ---- */
	size_t n_store = n_iters / 4 < 100 ? (n_iters < 100 ? n_iters : 100) : n_iters / 4;
	progress("3. with a store handle...");
	if (!failed && run_reco(store_vs, 2, rr, n_store, now, v, rs_st) == 0)
		l_reco_store = latency(va, n_store), l_reco_none = latency(vb, n_store);
	else
		failed = 1;
	if (!failed && run_coupons(store_vs, 2, pool ? cfull : cgen, n_store, now, v, cs_st) == 0)
		l_cp_store = latency(va, n_store), l_cp_none = latency(vb, n_store);
	else
		failed = 1;
	progress("done");

	/* ---- report ---- */
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	struct lat l_cp = pool ? l_full : l_gen;
	const struct coupon_stats *cf0 = &cs_full[0], *cg0 = &cs_gen[0];
	double dn = rs[1].calls ? (double)rs[1].calls : 1;
	printf("\nsetup %.1f s: snapshot files %.1f s (cg_synth_write), bench coupons %.1f s (%ld for %zu members),"
	       " load %.1f s (cache__load_file:",
	       secs(setup_ns), secs(gen_ns), secs(sign_ns), extra, pool, secs(load_all));
	for (int st = 0; st < CG_N_STREAMS; st++)
		printf(" %s %lld in %.1f s%s", cg_stream_name((cg_stream)st), (long long)loaded[st], secs(load_ns[st]),
		       st + 1 < CG_N_STREAMS ? "," : ");");
	printf(" cache.db %.0f MiB; %ld local purchases in outbox.db\n", (double)cache_bytes / 1048576.0, local);

	printf("1. recommendation: scrm_recommend, n=%d, a basket of 1-3 SKUs with rules, random members,"
	       " no store handle\n",
	       RECO_N);
	print_lat("engine", l_reco);
	print_ref("raw SQLite key reads", l_reco_raw, l_reco);
	print_ref("raw, rules index usable", l_reco_ix, l_reco);
	printf("  (engine: %.1f items per call; raw: %.1f statements per request: member row, recos row, top %d rules"
	       " of each basket SKU and of %.1f SKUs bought within a year;\n"
	       "   \"rules index usable\": the same reads, the rules from a copy with a plain index on if_sku)\n",
	       rs[0].calls ? (double)rs[0].items / (double)rs[0].calls : 0, (double)rs[1].queries / dn,
	       RULES_PER_SOURCE, (double)rs[1].histories / dn);
	printf("  (plan of the engine's rules query on cache.db: %s%s)\n", rules_plan,
	       strstr(rules_plan, "SCAN") ? " -- no index used: every rules query reads all the rules" : "");

	printf("2. coupon evaluation: scrm_coupons_for, a %d-line GBP basket, members holding a coupon,"
	       " no store handle\n",
	       BASKET_LINES);
	if (pool) {
		char what[64];
		snprintf(what, sizeof(what), "%ld offers", cf0->max_offers);
		print_lat(what, l_full);
		print_ref("raw SQLite reads", l_full_raw, l_full);
		printf("  (offers judged per evaluation: min %ld, max %ld, mean %.1f, of which eligible %.1f:"
		       " %zu public campaigns, the member's own coupon, bench coupons on the %zu non-public"
		       " campaigns)\n",
		       cf0->min_offers, cf0->max_offers, (double)cf0->offers / (double)(cf0->calls ? cf0->calls : 1),
		       (double)cf0->eligible / (double)(cf0->calls ? cf0->calls : 1), cps.n_public, cps.n_private);
		if (cf0->min_offers != cf.coupons || cf0->max_offers != cf.coupons)
			printf("  NOTE: %ld offers wanted per evaluation, %ld..%ld judged\n", cf.coupons,
			       cf0->min_offers, cf0->max_offers);
	}
	{
		char what[64];
		snprintf(what, sizeof(what), "as generated (%ld-%ld offers)", cg0->min_offers, cg0->max_offers);
		print_lat(what, l_gen);
		print_ref("raw SQLite reads", l_gen_raw, l_gen);
		printf("  (as cachegen makes it, an evaluation judges %ld..%ld offers, mean %.1f: %zu of the %zu"
		       " campaigns are public, and a member holds one coupon)\n",
		       cg0->min_offers, cg0->max_offers, (double)cg0->offers / (double)(cg0->calls ? cg0->calls : 1),
		       cps.n_public, cps.n);
	}
	printf("  (raw: member row, the member's coupons by member_id, the campaign range scan, %d category reads)\n",
	       BASKET_LINES);

	printf("3. with a store handle (device %s: its redemptions and link state) vs none, same requests,"
	       " interleaved\n",
	       DEVICE);
	print_lat("recommend, store", l_reco_store);
	print_ref("recommend, none", l_reco_none, l_reco_store);
	print_lat("coupons_for, store", l_cp_store);
	print_ref("coupons_for, none", l_cp_none, l_cp_store);

	printf("aim p99 <= %.0f us: recommend p99 %.0f us %s; coupon evaluation (%ld offers) p99 %.0f us %s\n", AIM_US,
	       l_reco.p99, l_reco.p99 <= AIM_US ? "met" : "MISSED", pool ? cf0->max_offers : cg0->max_offers, l_cp.p99,
	       l_cp.p99 <= AIM_US ? "met" : "MISSED");
	printf("wall time %.1f s (setup %.1f s), peak RSS %ld MiB%s\n\n", secs(now_ns() - wall0), secs(setup_ns),
	       (long)ru.ru_maxrss / 1024, failed ? "; FAILED: see the messages above" : "");

	raw_close(&raw);
	scrm_cache_close(pc);
	scrm_store_close(so);
	campaigns_free(&cps);
	free(warm_r), free(rr), free(warm_c), free(cfull), free(cgen), free(va), free(vb), free(vc);
	bench_work_close(&w, cf.keep, snap, ref_path);
	printf("FIGURES reco_p50_us=%lld reco_p99_us=%lld coupon_eval_p99_us=%lld\n", us(l_reco.p50), us(l_reco.p99),
	       us(l_cp.p99));
	return failed ? 1 : 0;
}
