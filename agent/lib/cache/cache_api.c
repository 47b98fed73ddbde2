/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cache_api: the public customer-cache API of libscrm (scrm_cache_*,
 * scrm_member_*): a mutex around one cache handle, so a POS or a guide app
 * may share it between threads, and the member scan that records an event
 * honouring the member's consent.
 */
#include <scrm/scrm.h>

#include "cache.h"
#include "err.h"
#include "guide.h"
#include "query.h"
#include "event.h"
#include "capture.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct scrm_cache {
	cache *c;
	pthread_mutex_t mu;
};

/* The handle around a cache opened with `o`: scrm_cache_open and
 * scrm_cache_create differ only in their options. */
static int handle_open(const char *dir, const cache__options *o, scrm_cache **out)
{
	scrm_cache *h;
	int rc;
	err__clear();
	if (!out || !dir)
		return err__set(SCRM_E_INVALID, "dir/out: NULL");
	*out = NULL;
	if (!(h = calloc(1, sizeof(*h))))
		return err__set(SCRM_E_NOMEM, "out of memory");
	if ((rc = cache__open(dir, o, &h->c))) {
		free(h);
		return rc;
	}
	pthread_mutex_init(&h->mu, NULL);
	*out = h;
	return SCRM_OK;
}

int scrm_cache_open(const char *dir, const char *keys_dir, scrm_cache **out)
{
	cache__options o = {.keys_dir = keys_dir, .busy_timeout_ms = 2000};
	return handle_open(dir, &o, out);
}

void scrm_cache_close(scrm_cache *h)
{
	if (!h)
		return;
	cache__close(h->c);
	pthread_mutex_destroy(&h->mu);
	free(h);
}

void scrm_free(void *p)
{
	free(p);
}

static int card(scrm_cache *h, scrm_member_key by, const char *value, char **json, char member[65], int *tracking)
{
	sbuf b;
	int rc;
	sbuf__init(&b);
	pthread_mutex_lock(&h->mu);
	rc = cache__member_card(h->c, by, value, &b, member, tracking);
	pthread_mutex_unlock(&h->mu);
	if (rc == SCRM_OK && json)
		*json = sbuf__take(&b, NULL);
	sbuf__free(&b);
	return rc;
}

int scrm_member_get(scrm_cache *h, scrm_member_key by, const char *value, char **card_json)
{
	char member[65];
	err__clear();
	if (!h || !card_json)
		return err__set(SCRM_E_INVALID, "cache/card_json: NULL");
	*card_json = NULL;
	return card(h, by, value, card_json, member, NULL);
}

static const char *method_of(scrm_member_key by)
{
	switch (by) {
	case SCRM_MEMBER_QR:
		return "qr";
	case SCRM_MEMBER_CARD:
		return "card";
	case SCRM_MEMBER_PHONE:
		return "phone";
	default:
		return "manual";
	}
}

int scrm_member_identify(scrm_store *s, scrm_cache *h, scrm_member_key by, const char *value, const char *guide_id,
			 char **card_json, scrm_receipt *receipt)
{
	char member[65], *json = NULL;
	int tracking = 0, rc;
	sbuf body;
	err__clear();
	if (!s || !h)
		return err__set(SCRM_E_INVALID, "store/cache: NULL");
	if (card_json)
		*card_json = NULL;
	if ((rc = card(h, by, value, &json, member, &tracking)))
		return rc;
	scrm_member_scan scan = {.member_id = member, .method = method_of(by), .guide_id = guide_id};
	sbuf__init(&body);
	rc = event__encode_scan_consent(&scan, tracking, &body);
	if (rc == SCRM_OK)
		rc = store__record(s, EVENT_MEMBER_SCAN, &body, receipt);
	sbuf__free(&body);
	if (rc == SCRM_OK && card_json)
		*card_json = json;
	else
		free(json);
	return rc;
}

/* What the handle is asked for whose answer is a JSON document: the cache's
 * status, or one of the guide's calls (guide.h), each with its request. */
typedef struct {
	enum { ASK_STATUS, ASK_RECOMMEND, ASK_COUPONS, ASK_REDEEM } what;
	scrm_store *store;
	const scrm_reco_request *reco;
	const scrm_coupon_request *coupons;
	const scrm_redeem_request *redeem;
	scrm_redemption *redemption;
} ask;

/* Answers `a` under the handle's lock; on success its JSON goes to *json
 * (json NULL: the caller wants none, and none is built), else *json stays
 * NULL. A guide call runs in one read transaction: a consistent view of the
 * cache even if a snapshot swap commits meanwhile, and one lock round-trip
 * instead of one per statement (a recommendation runs ~80 of them). */
static int ask_json(scrm_cache *h, const ask *a, char **json)
{
	sbuf b, *out = json ? &b : NULL;
	int rc = SCRM_E_INVALID, began = 0;
	if (json)
		*json = NULL;
	sbuf__init(&b);
	pthread_mutex_lock(&h->mu);
	if (a->what != ASK_STATUS)
		began = cache__read_begin(h->c);
	switch (a->what) {
	case ASK_STATUS:
		rc = cache__status(h->c, &b);
		break;
	case ASK_RECOMMEND:
		rc = guide__recommend(h->c, a->store, a->reco, &b);
		break;
	case ASK_COUPONS:
		rc = guide__coupons_for(h->c, a->store, a->coupons, &b);
		break;
	case ASK_REDEEM:
		rc = guide__redeem(h->c, a->store, a->redeem, a->redemption, out);
		break;
	}
	cache__read_end(h->c, began);
	pthread_mutex_unlock(&h->mu);
	if (rc == SCRM_OK && json)
		*json = sbuf__take(&b, NULL);
	sbuf__free(&b);
	return rc;
}

int scrm_cache_status(scrm_cache *h, char **json)
{
	ask a = {.what = ASK_STATUS};
	err__clear();
	if (!h || !json)
		return err__set(SCRM_E_INVALID, "cache/json: NULL");
	return ask_json(h, &a, json);
}

/* ---- guide tablet and till (guide.c) ----------------------------------- */

int scrm_recommend(scrm_cache *h, scrm_store *store, const scrm_reco_request *rq, char **json)
{
	ask a = {.what = ASK_RECOMMEND, .store = store, .reco = rq};
	err__clear();
	if (!h || !rq || !json)
		return err__set(SCRM_E_INVALID, "cache/request/json: NULL");
	return ask_json(h, &a, json);
}

int scrm_coupons_for(scrm_cache *h, scrm_store *store, const scrm_coupon_request *rq, char **json)
{
	ask a = {.what = ASK_COUPONS, .store = store, .coupons = rq};
	err__clear();
	if (!h || !rq || !json)
		return err__set(SCRM_E_INVALID, "cache/request/json: NULL");
	return ask_json(h, &a, json);
}

int scrm_redeem(scrm_cache *h, scrm_store *store, const scrm_redeem_request *rq, scrm_redemption *out, char **json)
{
	ask a = {.what = ASK_REDEEM, .store = store, .redeem = rq, .redemption = out};
	err__clear();
	if (!h || !rq)
		return err__set(SCRM_E_INVALID, "cache/request: NULL");
	if (out)
		memset(out, 0, sizeof(*out));
	return ask_json(h, &a, json);
}

/* ---- maintenance: seeding the cache (scrmctl cache load) ---- */

int scrm_cache_create(const char *dir, const char *keys_dir, scrm_cache **out)
{
	cache__options o = {.keys_dir = keys_dir, .create = 1};
	return handle_open(dir, &o, out);
}

int scrm_cache_load_file(scrm_cache *h, const char *path, scrm_cache_load *out)
{
	int64_t n = 0, refused = 0;
	int st = -1, rc;
	err__clear();
	if (!h || !path || !out)
		return err__set(SCRM_E_INVALID, "cache/path/out: NULL");
	pthread_mutex_lock(&h->mu);
	rc = cache__load_file(h->c, path, NULL, NULL, &n, &refused, &st);
	if (rc == SCRM_OK) {
		out->records = n;
		out->refused = refused;
		out->stream = cache__stream_name(st);
		out->refused_detail = cache__refused_detail(h->c);
	}
	pthread_mutex_unlock(&h->mu);
	return rc;
}
