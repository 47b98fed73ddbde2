/* SPDX-License-Identifier: Apache-2.0 */
/*
 * redeem: coupon redemption as a local reservation (guide.h guide__redeem;
 * docs/protocol.md "Redemption").
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

/* ---- redemption -------------------------------------------------------- */

/* Fetch a signed coupons-stream record by key and check central's signature
 * again (the cache could have been edited on disk since it was stored).
 * *out parsed payload; SCRM_E_NOT_FOUND when absent. */
static int signed_record(cache *c, const char *key, cJSON **out)
{
	char *text = NULL;
	int rc = cache__coupon_verified(c, key, &text);
	*out = NULL;
	if (rc == SCRM_E_NOT_FOUND || rc == SCRM_E_IO)
		return rc;
	if (rc == SCRM_OK && !(*out = cJSON_Parse(text)))
		rc = err__set(SCRM_E_CORRUPT, "cache: %s: stored record unreadable", key);
	if (rc == SCRM_OK) {
		/* a genuine signature moved to another key on disk */
		char want[80];
		snprintf(want, sizeof(want), "%s:%s", json__str(*out, "type") ? json__str(*out, "type") : "",
			 json__str(*out, "id") ? json__str(*out, "id") : "");
		if (strcmp(want, key) != 0) {
			cJSON_Delete(*out);
			*out = NULL;
			rc = SCRM_E_CRYPTO;
		}
	}
	free(text);
	if (rc == SCRM_E_CRYPTO)
		return err__set(SCRM_E_REFUSED, "signature: %s does not verify against central's key", key);
	return rc;
}

/* A member's coupon whose printed code is `code`: its key into `key`. */
struct code_find {
	const char *code;
	char *key;
	size_t cap;
};

static int code_seen(void *ctx, const char *key, const char *signed_json)
{
	struct code_find *f = ctx;
	cJSON *p = cJSON_Parse(signed_json);
	const char *code = json__str(p, "code");
	if (code && strcmp(code, f->code) == 0)
		snprintf(f->key, f->cap, "%s", key);
	cJSON_Delete(p);
	return SCRM_OK;
}

int guide__redeem(cache *c, scrm_store *store, const scrm_redeem_request *rq, scrm_redemption *res, sbuf *json)
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
	if (rq->member_id && !guide__id_ok(rq->member_id))
		return err__set(SCRM_E_INVALID, "member_id: 1..64 of [A-Za-z0-9_.:-]");
	if (!rq->coupon || !guide__id_ok(rq->coupon))
		return err__set(SCRM_E_INVALID, "coupon: 1..64 of [A-Za-z0-9_.:-] (coupon id, code or campaign id)");
	if (!rq->order_id || !*rq->order_id || strlen(rq->order_id) > 64 || !guide__sku_ok(rq->order_id))
		return err__set(SCRM_E_INVALID, "order_id: required, 1..64 printable characters");
	if (rq->guide_id && !guide__sku_ok(rq->guide_id))
		return err__set(SCRM_E_INVALID, "guide_id: 1..64 printable characters");
	if (!rq->currency || strlen(rq->currency) != 3 || rq->currency[0] < 'A' || rq->currency[0] > 'Z' ||
	    rq->currency[1] < 'A' || rq->currency[1] > 'Z' || rq->currency[2] < 'A' || rq->currency[2] > 'Z')
		return err__set(SCRM_E_INVALID, "currency: required, three upper-case letters (ISO 4217)");
	if ((rc = guide__check_basket(rq->basket, rq->n_basket, 1, 1)))
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
		struct code_find f = {rq->coupon, key, sizeof(key)};
		if (cache__member_coupons(c, rq->member_id, code_seen, &f) == SCRM_OK && strncmp(key, "coupon:", 7) == 0 &&
		    strcmp(key + 7, rq->coupon) != 0)
			rc = signed_record(c, key, &coupon);
	}
	if (rc == SCRM_E_NOT_FOUND) {
		rc = err__set(SCRM_E_NOT_FOUND, "coupon: no coupon, code or public campaign \"%s\" in the cache", rq->coupon);
		goto cleanup;
	}
	if (rc)
		goto cleanup;
	if (coupon) {
		char ck[80];
		snprintf(ck, sizeof(ck), "campaign:%s", json__str(coupon, "campaign") ? json__str(coupon, "campaign") : "");
		rc = signed_record(c, ck, &campaign);
		if (rc && rc != SCRM_E_NOT_FOUND)
			goto cleanup;
		rc = SCRM_OK;
	}
	snprintf(o.key, sizeof(o.key), "%s", key);
	o.coupon = coupon;
	o.campaign = campaign;
	o.campaign_id = coupon ? json__str(coupon, "campaign") : json__str(campaign, "id");
	if ((rc = guide__local_load(store, rq->member_id, now, &pol, &l)) ||
	    (rc = guide__basket_load(c, rq->basket, rq->n_basket, rq->currency, &bk)))
		goto cleanup;
	guide__evaluate(&o, profile, rq->member_id, stage, &bk, &l, now);
	if (!o.ok) {
		rc = err__set(SCRM_E_REFUSED, "%s: %s", o.code, o.detail);
		goto cleanup;
	}
	/* The event: what central needs to settle it (protocol.md). */
	sbuf__puts(&body, "{\"campaign\":");
	sbuf__jstr(&body, o.campaign_id ? o.campaign_id : "");
	if (coupon) {
		sbuf__puts(&body, ",\"coupon\":");
		sbuf__jstr(&body, json__str(coupon, "id") ? json__str(coupon, "id") : "");
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
		int64_t pml = campaign ? json__i64(campaign, "per_member_limit", 0) : 0;
		/* the redemption ids central's counts include, as JSON arrays */
		char *coupon_counted = coupon ? cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(coupon, "used_ids")) : NULL;
		char *member_counted = profile ? cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(profile, "coupon_use_ids"))
					       : NULL;
		outbox__limits lim = {
			.order_id = rq->order_id,
			.coupon = coupon ? json__str(coupon, "id") : NULL,
			.coupon_allowed = coupon ? json__i64(coupon, "uses", 1) - json__i64(coupon, "used", 0) : -1,
			.coupon_counted = coupon_counted,
			.member_counted = member_counted,
			.campaign = o.campaign_id,
			.member_id = rq->member_id,
			.member_allowed = pml > 0 ? pml - json__i64(cu, o.campaign_id, 0) : -1,
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
	guide__local_free(&l);
	cJSON_Delete(profile);
	cJSON_Delete(coupon);
	cJSON_Delete(campaign);
	sbuf__free(&body);
	return rc;
}
