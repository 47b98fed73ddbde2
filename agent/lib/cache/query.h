/* SPDX-License-Identifier: Apache-2.0 */
/*
 * query: the cache's read side for the guide and the till — catalogue,
 * stock, item → item rules, recommendation lists, talk tracks, coupons and
 * campaigns — so that the cache's tables are read by the module that writes
 * them (cache.h) and nobody else. The statements are prepared on first use
 * and kept with the handle; the parsed campaigns too, until the coupons
 * stream changes.
 *
 * Same thread rule as the handle. Unless said otherwise a look-up that
 * cannot read (prepare or step failing) answers as if nothing was found:
 * a suggestion is best effort; the coupon calls report the error.
 */
#ifndef SCRM_CACHE_QUERY_H
#define SCRM_CACHE_QUERY_H

#include <stddef.h>
#include <stdint.h>

#include "cache.h"

struct cJSON;

/* One read transaction around several look-ups: a consistent view even if
 * a snapshot swap commits meanwhile, and one lock round-trip instead of one
 * per statement. cache__read_begin returns 1 if it opened the transaction;
 * pass that to cache__read_end. */
int cache__read_begin(cache *c);
void cache__read_end(cache *c, int began);

/* A catalogue record, parsed (NULL if the SKU is unknown); the caller
 * deletes it. */
struct cJSON *cache__catalogue_doc(cache *c, const char *sku);
/* The SKU's catalogue category into `out` (left as is if none). */
void cache__category(cache *c, const char *sku, char *out, size_t cap);
/* 1 with *qty set if the inventory has a record for the SKU, else 0. */
int cache__stock(cache *c, const char *sku, int64_t *qty);

/* The item → item rules from `sku`, strongest first (confidence, then
 * then_sku), at most `limit`. */
typedef void (*cache__rule_fn)(void *ctx, const char *then_sku, double confidence);
void cache__rules_from(cache *c, const char *sku, int limit, cache__rule_fn fn, void *ctx);

/* Central's recommendation list for a member (or "_store"), parsed; NULL
 * if none. The caller deletes it. */
struct cJSON *cache__recos_doc(cache *c, const char *key);

/* The first talk track (key order) for a lifecycle stage or a member tag,
 * parsed; NULL if none. The caller deletes it. */
typedef enum cache__script_by { CACHE_SCRIPT_STAGE, CACHE_SCRIPT_TAG } cache__script_by;
struct cJSON *cache__script_doc(cache *c, cache__script_by by, const char *value);

/* The member's coupons in key order: fn(ctx, key, signed JSON text) for
 * each (signatures were checked when stored). fn returning non-zero stops
 * and is returned. SCRM_E_IO (reason set) if the cache cannot be read. */
typedef int (*cache__signed_fn)(void *ctx, const char *key, const char *signed_json);
int cache__member_coupons(cache *c, const char *member_id, cache__signed_fn fn, void *ctx);

/* Every campaign of the coupons stream, parsed, in key order; kept with
 * the handle until the stream changes (its cursor, generation or last
 * apply): ~50 JSON parses saved on every call. *out borrowed from the
 * handle, valid until the next call. */
typedef struct cache__campaigns {
	struct cJSON **v;
	size_t n, cap;
} cache__campaigns;
int cache__campaigns_get(cache *c, const cache__campaigns **out);

/* The coupons-stream record `key` ("coupon:…", "campaign:…") with
 * central's signature checked again (the file could have been edited
 * since it was stored): *signed_json its signed text (malloc'd, the
 * caller frees). SCRM_E_NOT_FOUND (no reason) when absent, SCRM_E_IO when
 * unreadable, cache__verify_signed's error when the signature fails. */
int cache__coupon_verified(cache *c, const char *key, char **signed_json);

#endif
