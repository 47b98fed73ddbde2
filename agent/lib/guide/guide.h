/* SPDX-License-Identifier: Apache-2.0 */
/*
 * guide: what a shop-floor guide sees for a member or a basket, computed
 * from the offline cache alone — ranked suggestions with a readable reason,
 * the member's lifecycle stage and next best action, which coupons apply to
 * the basket (and why the others do not), and coupon redemption as a local
 * reservation (docs/protocol.md, "Guide tablet").
 *
 * It owns the ranking, the lifecycle rules and the coupon rules; the cache
 * owns the data, the store owns the events (reco_shown, coupon_redeem) and
 * the redemption ledger. Everything here is deterministic for the same
 * cache, store and `now`: ties break on the SKU / coupon key.
 */
#ifndef SCRM_GUIDE_H
#define SCRM_GUIDE_H

#include <scrm/scrm.h>

#include "cache.h"
#include "sbuf.h"

#include <stdint.h>

/* The daemon's guide.* and lifecycle.* settings, carried to library readers
 * through the cache (cache__set_policy) as a JSON object with these names. */
typedef struct guide__policy {
	int64_t just_bought_ms;  /* not suggested again this soon after a purchase (0 = off) */
	int64_t history_ms;      /* purchases this recent feed suggestions */
	int64_t half_life_days;  /* a purchase this old weighs half */
	int64_t new_days, sleeping_days, lost_days, churn_factor_pct;
	int64_t online_fresh_ms; /* the daemon's link state counts this long */
} guide__policy;

void guide__policy_default(guide__policy *p);
/* Fields absent from `json` keep their defaults; "" or NULL = defaults. */
void guide__policy_parse(const char *json, guide__policy *p);
void guide__policy_json(const guide__policy *p, sbuf *out);

/* Lifecycle stage from a member profile (cache__member_profile: central's
 * figures plus this device's later purchases): "new", "active",
 * "churn_risk", "sleeping" or "lost", with the reason in `why`. */
const char *guide__stage(const struct cJSON *profile, int64_t now, const guide__policy *p, char *why, size_t cap);

/* What the store side knows that the cache does not: central reachable?
 * and this device's redemptions (counted per coupon and per member/campaign). */
typedef struct guide__local guide__local;

/* The three calls below read the cache many times: the caller runs each in
 * one read transaction (query.h cache__read_begin/end), as cache_api.c does
 * for all of them, so one call sees one snapshot of the cache.
 *
 * Recommendations as JSON (protocol.md "Recommendations"). `store` may be
 * NULL. With rq->guide_id and a store, the list is recorded (reco_shown)
 * and its event id returned as reco_id. */
int guide__recommend(cache *c, scrm_store *store, const scrm_reco_request *rq, sbuf *out);

/* Coupons for a member and basket as JSON (protocol.md "Coupons"). */
int guide__coupons_for(cache *c, scrm_store *store, const scrm_coupon_request *rq, sbuf *out);

/* Redeem (protocol.md "Redemption"). SCRM_E_REFUSED "<code>: <detail>". */
int guide__redeem(cache *c, scrm_store *store, const scrm_redeem_request *rq, scrm_redemption *out, sbuf *json);

#endif
