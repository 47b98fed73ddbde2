/* SPDX-License-Identifier: Apache-2.0 */
/*
 * query: the guide's reads of the cache (see query.h). Each statement is
 * prepared once on the handle's connection (SQLITE_PREPARE_PERSISTENT) and
 * reset after use, so a recommendation's ~80 look-ups cost no parsing.
 */
#include "cache_int.h"

#include "err.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The statement in *slot, prepared on first use; NULL on error (reason
 * set). Reset and unbound. */
static sqlite3_stmt *stmt(cache *c, sqlite3_stmt **slot, const char *sql)
{
	if (!*slot && cache__prep(c, c->db, slot, sql, 1) != SCRM_OK)
		return NULL;
	sqlite3_reset(*slot);
	sqlite3_clear_bindings(*slot);
	return *slot;
}

static void campaigns_free(cache__campaigns *cp)
{
	for (size_t i = 0; i < cp->n; i++)
		cJSON_Delete(cp->v[i]);
	free(cp->v);
	memset(cp, 0, sizeof(*cp));
}

void cache__queries_free(cache *c)
{
	struct cache__queries *q = &c->qs;
	sqlite3_stmt *all[] = {q->rules,          q->catalogue, q->category,  q->stock,        q->recos, q->script[0],
			       q->script[1],      q->member_coupons, q->coupon, q->campaigns, q->coupons_state};
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		sqlite3_finalize(all[i]);
	campaigns_free(&q->cps);
	memset(q, 0, sizeof(*q));
}

int cache__read_begin(cache *c)
{
	return sqlite3_get_autocommit(c->db) && sqlite3_exec(c->db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK;
}

void cache__read_end(cache *c, int began)
{
	if (began && !sqlite3_get_autocommit(c->db) && sqlite3_exec(c->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
		sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL); /* never keep a snapshot open */
}

/* The JSON document in column 0 of the row `st` finds by `key`, parsed. */
static cJSON *doc_by(sqlite3_stmt *st, const char *key)
{
	cJSON *doc = NULL;
	if (!st)
		return NULL;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		doc = cJSON_Parse((const char *)sqlite3_column_text(st, 0));
	sqlite3_reset(st);
	return doc;
}

cJSON *cache__catalogue_doc(cache *c, const char *sku)
{
	return doc_by(stmt(c, &c->qs.catalogue, "SELECT doc FROM catalogue WHERE key = ?1"), sku);
}

void cache__category(cache *c, const char *sku, char *out, size_t cap)
{
	sqlite3_stmt *st = stmt(c, &c->qs.category, "SELECT category FROM catalogue WHERE key = ?1");
	if (!st)
		return;
	sqlite3_bind_text(st, 1, sku, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
		snprintf(out, cap, "%s", (const char *)sqlite3_column_text(st, 0));
	sqlite3_reset(st);
}

int cache__stock(cache *c, const char *sku, int64_t *qty)
{
	sqlite3_stmt *st = stmt(c, &c->qs.stock, "SELECT qty FROM inventory WHERE key = ?1");
	int found = 0;
	if (!st)
		return 0;
	sqlite3_bind_text(st, 1, sku, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		*qty = sqlite3_column_int64(st, 0);
		found = 1;
	}
	sqlite3_reset(st);
	return found;
}

void cache__rules_from(cache *c, const char *sku, int limit, cache__rule_fn fn, void *ctx)
{
	sqlite3_stmt *st = stmt(c, &c->qs.rules,
				"SELECT then_sku, confidence FROM rules WHERE if_sku = ?1"
				" ORDER BY confidence DESC, then_sku LIMIT ?2");
	if (!st)
		return;
	sqlite3_bind_text(st, 1, sku, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 2, limit);
	while (sqlite3_step(st) == SQLITE_ROW)
		fn(ctx, (const char *)sqlite3_column_text(st, 0), sqlite3_column_double(st, 1));
	sqlite3_reset(st);
}

cJSON *cache__recos_doc(cache *c, const char *key)
{
	return doc_by(stmt(c, &c->qs.recos, "SELECT doc FROM recos WHERE key = ?1"), key);
}

cJSON *cache__script_doc(cache *c, cache__script_by by, const char *value)
{
	static const char *const sql[2] = {
		[CACHE_SCRIPT_STAGE] = "SELECT doc FROM scripts WHERE stage = ?1 ORDER BY key LIMIT 1",
		[CACHE_SCRIPT_TAG] = "SELECT doc FROM scripts WHERE tag = ?1 ORDER BY key LIMIT 1",
	};
	int i = by == CACHE_SCRIPT_TAG;
	return doc_by(stmt(c, &c->qs.script[i], sql[i]), value);
}

/* fn over the (key, signed) rows of `st`; `what` names them in a read error. */
static int each_signed(sqlite3_stmt *st, cache__signed_fn fn, void *ctx, const char *what)
{
	int rc, stop = SCRM_OK;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		if ((stop = fn(ctx, (const char *)sqlite3_column_text(st, 0), (const char *)sqlite3_column_text(st, 1))))
			break;
	sqlite3_reset(st);
	if (stop)
		return stop;
	return rc == SQLITE_DONE ? SCRM_OK : err__set(SCRM_E_IO, "cache: read %s: %s", what, sqlite3_errstr(rc));
}

int cache__member_coupons(cache *c, const char *member_id, cache__signed_fn fn, void *ctx)
{
	sqlite3_stmt *st =
		stmt(c, &c->qs.member_coupons, "SELECT key, signed FROM coupons WHERE member_id = ?1 ORDER BY key");
	if (!st)
		return SCRM_E_IO;
	sqlite3_bind_text(st, 1, member_id, -1, SQLITE_STATIC);
	return each_signed(st, fn, ctx, "coupons");
}

static int campaign_add(void *ctx, const char *key, const char *signed_json)
{
	cache__campaigns *cp = ctx;
	cJSON *p = cJSON_Parse(signed_json);
	(void)key;
	if (!cJSON_IsObject(p)) {
		cJSON_Delete(p);
		return SCRM_OK;
	}
	if (cp->n == cp->cap) {
		size_t nc = cp->cap ? cp->cap * 2 : 32;
		cJSON **nv = realloc(cp->v, nc * sizeof(*nv));
		if (!nv) {
			cJSON_Delete(p);
			return err__set(SCRM_E_NOMEM, "out of memory");
		}
		cp->v = nv;
		cp->cap = nc;
	}
	cp->v[cp->n++] = p;
	return SCRM_OK;
}

/* Every campaign in the cache (signatures were checked when stored). */
static int campaigns_load(cache *c, cache__campaigns *cp)
{
	sqlite3_stmt *st = stmt(c, &c->qs.campaigns,
				"SELECT key, signed FROM coupons WHERE key >= 'campaign:' AND key < 'campaign;' ORDER BY key");
	memset(cp, 0, sizeof(*cp));
	if (!st)
		return SCRM_E_IO;
	return each_signed(st, campaign_add, cp, "campaigns");
}

int cache__campaigns_get(cache *c, const cache__campaigns **out)
{
	struct cache__queries *x = &c->qs;
	sqlite3_stmt *st = stmt(c, &x->coupons_state, "SELECT cursor, gen, applied_ms FROM streams WHERE name = ?1");
	int64_t cur = -1, gen = -1, applied = -1;
	int rc;
	*out = NULL;
	if (st) {
		sqlite3_bind_text(st, 1, cache__stream_name(ST_COUPONS), -1, SQLITE_STATIC);
		if (sqlite3_step(st) == SQLITE_ROW) {
			cur = sqlite3_column_int64(st, 0);
			gen = sqlite3_column_int64(st, 1);
			applied = sqlite3_column_int64(st, 2);
		}
		sqlite3_reset(st);
	}
	if (!x->cps_valid || cur != x->cps_cursor || gen != x->cps_gen || applied != x->cps_applied || cur < 0) {
		campaigns_free(&x->cps);
		x->cps_valid = 0;
		if ((rc = campaigns_load(c, &x->cps)))
			return rc;
		x->cps_cursor = cur;
		x->cps_gen = gen;
		x->cps_applied = applied;
		x->cps_valid = cur >= 0;
	}
	*out = &x->cps;
	return SCRM_OK;
}

int cache__coupon_verified(cache *c, const char *key, char **signed_json)
{
	sqlite3_stmt *st = stmt(c, &c->qs.coupon, "SELECT signed, sig FROM coupons WHERE key = ?1");
	int rc;
	*signed_json = NULL;
	if (!st)
		return SCRM_E_IO;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc != SQLITE_ROW) {
		sqlite3_reset(st);
		return rc == SQLITE_DONE ? SCRM_E_NOT_FOUND : err__set(SCRM_E_IO, "cache: read coupon: %s", sqlite3_errstr(rc));
	}
	const char *text = (const char *)sqlite3_column_text(st, 0);
	size_t n = (size_t)sqlite3_column_bytes(st, 0);
	rc = cache__verify_signed(c, text ? text : "", n, sqlite3_column_blob(st, 1), (size_t)sqlite3_column_bytes(st, 1));
	if (rc == SCRM_OK) {
		if (!(*signed_json = malloc(n + 1)))
			rc = err__set(SCRM_E_NOMEM, "out of memory");
		else {
			memcpy(*signed_json, text ? text : "", text ? n : 0);
			(*signed_json)[text ? n : 0] = '\0';
		}
	}
	sqlite3_reset(st);
	return rc;
}
