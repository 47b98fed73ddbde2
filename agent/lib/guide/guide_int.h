/* SPDX-License-Identifier: Apache-2.0 */
/*
 * guide_int.h: what the guide's files share (guide.c, rank.c, coupons.c,
 * redeem.c); guide.h is the module's interface. The checks and helpers are
 * defined in guide.c.
 */
#ifndef SCRM_GUIDE_INT_H
#define SCRM_GUIDE_INT_H

#include "guide.h"
#include "json.h"
#include "query.h"

#include <stddef.h>
#include <stdint.h>

struct cJSON;

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


/* Is `s` one of the strings of array `a` / of the array member `name`? */
int guide__has_item(const struct cJSON *a, const char *s);
int guide__has(const struct cJSON *o, const char *name, const char *s);
/* Size of the array member `name` (0 if absent or not an array). */
int guide__count(const struct cJSON *o, const char *name);
/* A SKU: 1..64 bytes, no control characters, quotes or backslashes. */
int guide__sku_ok(const char *s);
/* A basket of n lines (at least min; priced: unit prices required), each
 * refusal naming "basket[i].field". */
int guide__check_basket(const scrm_line *lines, size_t n, size_t min, int priced);
/* A member or coupon id (core/ident.h's key grammar, at most 64). */
int guide__id_ok(const char *s);

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

/* The store's side (guide__local): link state and this member's local
 * redemptions, read from the outbox's ledger (outbox/ledger.h). */
int guide__local_load(scrm_store *store, const char *member_id, int64_t now, const guide__policy *p, guide__local *l);
void guide__local_free(guide__local *l);
/* Local uses of a coupon or a campaign not yet in central's `counted`. */
int64_t guide__local_count(const guide__local *l, const char *coupon, const char *campaign, const struct cJSON *counted);

/* The catalogue record of a SKU (owned; NULL if none), its display name
 * (the SKU itself if none), and whether the store has it (no inventory
 * record = unknown = 1). */
struct cJSON *guide__catalogue(cache *c, const char *sku);
void guide__name_of(cache *c, const char *sku, char *out, size_t cap);
int guide__in_stock(cache *c, const char *sku);

struct offer {
	char key[80];
	struct cJSON *coupon;         /* the member coupon's signed payload; NULL: public campaign */
	const struct cJSON *campaign; /* borrowed from the campaign list; NULL if missing */
	const char *campaign_id;
	/* evaluation */
	int ok;
	const char *code;
	char detail[200];
	int64_t value;
	int capped;
};

struct basket {
	const scrm_line *lines;
	size_t n;
	const char *currency;
	char (*cat)[65]; /* category of each line, "" unknown */
	int64_t subtotal;
};

struct offers {
	struct offer *v;
	size_t n;
};

/* coupons.c: a basket's lines with their categories; every rule of an
 * offer, first failure wins (b NULL: judge the member, not a basket — the
 * next best action); the member's coupons and the public campaigns; one
 * offer as JSON. */
int guide__basket_load(cache *c, const scrm_line *lines, size_t n, const char *currency, struct basket *b);
void guide__evaluate(struct offer *o, const struct cJSON *profile, const char *member_id, const char *stage,
		     const struct basket *b, const guide__local *l, int64_t now);
int guide__offers_load(cache *c, const char *member_id, const cache__campaigns *cp, struct offers *os);
void guide__offers_free(struct offers *os);
void guide__put_offer(sbuf *b, const struct offer *o, int with_reason);

#endif
