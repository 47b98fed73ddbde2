/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ctl_guide: scrmctl's guide commands, as a guide tablet would call them —
 * reco (suggestions, stage, next best action), coupons (which apply to the
 * basket and why not), redeem (spend one, offline too) and redemptions
 * (central's verdicts). --basket is parsed by cli.c.
 */
#include "ctl.h"

#include "platform.h"

#include <cjson/cJSON.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CLI_BASKET 1000

/* The --basket of this run (one command per run). */
static scrm_line g_lines[MAX_CLI_BASKET];
static char g_skus[MAX_CLI_BASKET * 66];

/* Parse --basket (NULL = empty) into g_lines: 0, or 2 with the reason printed. */
static int basket_arg(const char *cmd, const char *spec, size_t *n)
{
	char err[200];
	*n = 0;
	if (!spec)
		return 0;
	if (cli__parse_basket(spec, g_lines, MAX_CLI_BASKET, n, g_skus, sizeof(g_skus), err, sizeof(err))) {
		fprintf(stderr, "scrmctl: %s: %s\n", cmd, err);
		return 2;
	}
	return 0;
}

int ctl__reco(const struct ctl__opts *o, const cli__args *a)
{
	size_t nl = 0;
	char *json = NULL;
	scrm_cache *c = NULL;
	scrm_store *st = NULL;
	int rc;
	if (basket_arg("reco", a->basket, &nl))
		return 2;
	if (ctl__open_cache(o, &c) != SCRM_OK)
		return 1;
	/* The store adds this device's purchases; it is needed to record. */
	if (scrm_store_open(o->store, NULL, &st) != SCRM_OK) {
		if (a->guide) {
			ctl__fail("reco", SCRM_E_NOT_FOUND);
			scrm_cache_close(c);
			return 1;
		}
		st = NULL;
	}
	scrm_reco_request rq = {.member_id = a->member, .basket = g_lines, .n_basket = nl, .n = a->n, .guide_id = a->guide};
	rc = scrm_recommend(c, st, &rq, &json);
	if (rc != SCRM_OK) {
		ctl__fail("reco", rc);
	} else if (o->json) {
		puts(json);
	} else {
		cJSON *r = cJSON_Parse(json), *e;
		char m[48];
		int k = 0;
		if (a->member)
			printf("member       %s   stage %s (%s)\n", a->member, cli__str(r, "stage") ? cli__str(r, "stage") : "-",
			       cli__str(r, "stage_reason") ? cli__str(r, "stage_reason") : "");
		cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(r, "items"))
		{
			ctl__money(m, sizeof(m), cli__i64(e, "price", 0), NULL);
			printf("%2d. %-10s %-36.36s %10s  %s\n", ++k, cli__str(e, "sku"), cli__str(e, "name") ? cli__str(e, "name") : "",
			       cJSON_GetObjectItemCaseSensitive(e, "price") ? m : "", cli__str(e, "reason") ? cli__str(e, "reason") : "");
		}
		if (!k)
			printf("no suggestions (no rules, history or bestsellers in the cache for this)\n");
		const cJSON *na = cJSON_GetObjectItemCaseSensitive(r, "next_action"), *cp, *sc;
		if (na) {
			printf("next action  %s\n", cli__str(na, "action"));
			if ((cp = cJSON_GetObjectItemCaseSensitive(na, "coupon")))
				printf("  coupon     %s  %s%s%s\n", cli__str(cp, "key"), cli__str(cp, "name") ? cli__str(cp, "name") : "",
				       cli__str(cp, "code") ? "  code " : "", cli__str(cp, "code") ? cli__str(cp, "code") : "");
			cJSON_ArrayForEach(sc, cJSON_GetObjectItemCaseSensitive(na, "scripts"))
			printf("  say        %s%s%s\n", cli__str(sc, "title") ? cli__str(sc, "title") : "", cli__str(sc, "title") ? ": " : "",
			       cli__str(sc, "text") ? cli__str(sc, "text") : "");
		}
		if (cli__str(r, "reco_id"))
			printf("recorded     reco_id=%s (a sale to this member is credited to %s)\n", cli__str(r, "reco_id"), a->guide);
		cJSON_Delete(r);
	}
	scrm_free(json);
	scrm_store_close(st);
	scrm_cache_close(c);
	return rc == SCRM_OK ? 0 : 1;
}

int ctl__coupons(const struct ctl__opts *o, const cli__args *a)
{
	size_t nl = 0;
	char *json = NULL;
	scrm_cache *c = NULL;
	scrm_store *st = NULL;
	int rc;
	if (basket_arg("coupons", a->basket, &nl))
		return 2;
	if (ctl__open_cache(o, &c) != SCRM_OK)
		return 1;
	if (scrm_store_open(o->store, NULL, &st) != SCRM_OK)
		st = NULL;
	scrm_coupon_request rq = {.member_id = a->member, .basket = g_lines, .n_basket = nl, .currency = a->currency};
	rc = scrm_coupons_for(c, st, &rq, &json);
	if (rc != SCRM_OK) {
		ctl__fail("coupons", rc);
	} else if (o->json) {
		puts(json);
	} else {
		cJSON *r = cJSON_Parse(json), *e;
		char m[48];
		ctl__money(m, sizeof(m), cli__i64(r, "subtotal", 0), a->currency);
		printf("basket %s, central %s\n", m,
		       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "online")) ? "reachable" : "NOT reachable (offline rules apply)");
		cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(r, "eligible"))
		{
			ctl__money(m, sizeof(m), cli__i64(e, "value", 0), NULL);
			printf("  OK   %-22s %-36.36s -%s%s\n", cli__str(e, "key"), cli__str(e, "name") ? cli__str(e, "name") : "", m,
			       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "capped")) ? " (capped offline)" : "");
		}
		cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(r, "ineligible"))
		printf("  no   %-22s %-14s %s\n", cli__str(e, "key"), cli__str(e, "reason"), cli__str(e, "detail") ? cli__str(e, "detail") : "");
		cJSON_Delete(r);
	}
	scrm_free(json);
	scrm_store_close(st);
	scrm_cache_close(c);
	return rc == SCRM_OK ? 0 : 1;
}

int ctl__redeem(const struct ctl__opts *o, const cli__args *a)
{
	size_t nl = 0;
	char *json = NULL;
	scrm_cache *c = NULL;
	scrm_store *st = NULL;
	scrm_redemption red;
	int rc;
	if (basket_arg("redeem", a->basket, &nl))
		return 2;
	if (ctl__open_cache(o, &c) != SCRM_OK)
		return 1;
	if (ctl__open_store(o, &st) != SCRM_OK) {
		scrm_cache_close(c);
		return 1;
	}
	scrm_redeem_request rq = {.member_id = a->member, .coupon = a->coupon, .basket = g_lines, .n_basket = nl,
				  .currency = a->currency, .order_id = a->order, .guide_id = a->guide};
	rc = scrm_redeem(c, st, &rq, &red, &json);
	if (rc != SCRM_OK) {
		if (o->json) {
			printf("{\"ok\":false,\"error\":\"%s\",\"detail\":\"", scrm_strerror(rc));
			for (const char *p = scrm_errmsg(); *p; p++)
				if (*p == '"' || *p == '\\')
					printf("\\%c", *p);
				else if ((unsigned char)*p >= 0x20)
					putchar(*p);
			printf("\"}\n");
		}
		ctl__fail("redeem", rc);
	} else if (o->json) {
		puts(json);
	} else {
		char m[48];
		ctl__money(m, sizeof(m), red.value, a->currency);
		printf("redeemed     %s  discount %s  %s\n", a->coupon, m,
		       red.offline ? "(offline: reserved here, central confirms later)" : "(online)");
		printf("redemption   %s seq=%lld\n", red.redemption_id, (long long)red.seq);
	}
	scrm_free(json);
	scrm_store_close(st);
	scrm_cache_close(c);
	return rc == SCRM_OK ? 0 : 1;
}

int ctl__redemptions(const struct ctl__opts *o, const cli__args *a)
{
	scrm_store *st = NULL;
	char *json = NULL;
	if (ctl__open_store(o, &st) != SCRM_OK)
		return 1;
	int rc = scrm_redemptions(st, a->n, &json);
	scrm_store_close(st);
	if (rc != SCRM_OK) {
		ctl__fail("redemptions", rc);
		return 1;
	}
	if (o->json) {
		puts(json);
	} else {
		cJSON *r = cJSON_Parse(json), *e;
		char m[48], t[32];
		int64_t now = platform__wall_ms();
		printf("pending %lld, accepted %lld, rejected %lld%s\n", (long long)cli__i64(r, "pending", 0),
		       (long long)cli__i64(r, "accepted", 0), (long long)cli__i64(r, "rejected", 0),
		       cli__i64(r, "rejected", 0) ? "   <- rejected ones need follow-up with the customer" : "");
		cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(r, "redemptions"))
		{
			ctl__money(m, sizeof(m), cli__i64(e, "value", 0), cli__str(e, "currency"));
			cli__age(t, sizeof(t), now - cli__i64(e, "reserved_ms", 0));
			printf("  %-9s %-12s %-12s order %-10s %12s  %s ago %s%s%s\n", cli__str(e, "verdict"),
			       cli__str(e, "coupon") ? cli__str(e, "coupon") : "-", cli__str(e, "campaign"), cli__str(e, "order_id"), m, t,
			       cli__str(e, "mode"), cli__str(e, "reason") ? "  " : "", cli__str(e, "detail") ? cli__str(e, "detail") : cli__str(e, "reason") ? cli__str(e, "reason") : "");
		}
		cJSON_Delete(r);
	}
	scrm_free(json);
	return 0;
}
