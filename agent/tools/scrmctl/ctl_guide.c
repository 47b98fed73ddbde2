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

/* How much reco, coupons and redeem need the store: coupons and reco read
 * this device's purchases from it when there is one, reco needs it to
 * record what it suggested for --guide, redeem always needs it. */
enum store_need { STORE_IF_ANY, STORE_IF_GUIDE, STORE_ALWAYS };

/* What reco, coupons and redeem start with: --basket parsed into g_lines,
 * the cache open and the store as `need` says (*st NULL when there is
 * none). 0, or the exit code with the reason printed and nothing open. */
static int guide_begin(const char *cmd, const struct ctl__opts *o, const cli__args *a, enum store_need need, size_t *nl,
		       scrm_cache **c, scrm_store **st)
{
	*c = NULL;
	*st = NULL;
	if (basket_arg(cmd, a->basket, nl))
		return 2;
	if (ctl__open_cache(o, c) != SCRM_OK)
		return 1;
	if (need == STORE_ALWAYS) {
		if (ctl__open_store(o, st) == SCRM_OK)
			return 0;
	} else if (scrm_store_open(o->store, NULL, st) == SCRM_OK) {
		return 0;
	} else {
		*st = NULL;
		if (need == STORE_IF_ANY || !a->guide)
			return 0;
		ctl__fail(cmd, SCRM_E_NOT_FOUND);
	}
	scrm_cache_close(*c);
	return 1;
}

/* ... and end with: the exit code of the API's rc, everything released. */
static int guide_end(int rc, char *json, scrm_store *st, scrm_cache *c)
{
	scrm_free(json);
	scrm_store_close(st);
	scrm_cache_close(c);
	return rc == SCRM_OK ? 0 : 1;
}

/* An answer of the API: its JSON as is with --json, else `human` prints
 * the parsed tree for people. */
static void show(const struct ctl__opts *o, const cli__args *a, const char *json,
		 void (*human)(const cJSON *r, const cli__args *a))
{
	if (o->json) {
		puts(json);
		return;
	}
	cJSON *r = cJSON_Parse(json);
	human(r, a);
	cJSON_Delete(r);
}

/* reco and coupons: one question to the API about the basket (`call`),
 * its answer shown. */
static int guide_query(const char *cmd, const struct ctl__opts *o, const cli__args *a, enum store_need need,
		       int (*call)(scrm_cache *c, scrm_store *st, const cli__args *a, size_t nl, char **json),
		       void (*human)(const cJSON *r, const cli__args *a))
{
	size_t nl = 0;
	char *json = NULL;
	scrm_cache *c;
	scrm_store *st;
	int rc = guide_begin(cmd, o, a, need, &nl, &c, &st);
	if (rc)
		return rc;
	rc = call(c, st, a, nl, &json);
	if (rc != SCRM_OK)
		ctl__fail(cmd, rc);
	else
		show(o, a, json, human);
	return guide_end(rc, json, st, c);
}

static void print_reco(const cJSON *r, const cli__args *a)
{
	const cJSON *e;
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
}

static int call_reco(scrm_cache *c, scrm_store *st, const cli__args *a, size_t nl, char **json)
{
	scrm_reco_request rq = {.member_id = a->member, .basket = g_lines, .n_basket = nl, .n = a->n, .guide_id = a->guide};
	return scrm_recommend(c, st, &rq, json);
}

int ctl__reco(const struct ctl__opts *o, const cli__args *a)
{
	/* The store adds this device's purchases; it is needed to record. */
	return guide_query("reco", o, a, STORE_IF_GUIDE, call_reco, print_reco);
}

static void print_coupons(const cJSON *r, const cli__args *a)
{
	const cJSON *e;
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
}

static int call_coupons(scrm_cache *c, scrm_store *st, const cli__args *a, size_t nl, char **json)
{
	scrm_coupon_request rq = {.member_id = a->member, .basket = g_lines, .n_basket = nl, .currency = a->currency};
	return scrm_coupons_for(c, st, &rq, json);
}

int ctl__coupons(const struct ctl__opts *o, const cli__args *a)
{
	return guide_query("coupons", o, a, STORE_IF_ANY, call_coupons, print_coupons);
}

int ctl__redeem(const struct ctl__opts *o, const cli__args *a)
{
	size_t nl = 0;
	char *json = NULL;
	scrm_cache *c;
	scrm_store *st;
	scrm_redemption red;
	int rc = guide_begin("redeem", o, a, STORE_ALWAYS, &nl, &c, &st);
	if (rc)
		return rc;
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
	return guide_end(rc, json, st, c);
}

static void print_redemptions(const cJSON *r, const cli__args *a)
{
	const cJSON *e;
	char m[48], t[32];
	int64_t now = platform__wall_ms();
	(void)a;
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
	show(o, a, json, print_redemptions);
	scrm_free(json);
	return 0;
}
