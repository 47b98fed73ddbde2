/* SPDX-License-Identifier: Apache-2.0 */
/*
 * guide_test: the guide tablet and the till (agent/lib/guide/guide.c through the public
 * API of include/scrm/scrm.h, "Recommendations, coupons, attribution"):
 * every coupon rule and the reason code it refuses with, the value a coupon
 * is worth on a basket, redemption as one locked reservation (two processes
 * or two threads never spend one use twice), central's verdicts, the ranking
 * and filtering of suggestions with their readable reasons, lifecycle stages
 * and the next best action, and attribution of a sale to the list a guide
 * was shown (outbox schema v3 triggers).
 *
 * Links libscrm's static archive (the real guide, cache, outbox and store)
 * and scrm_cachegen, which plays central: each test makes central's keys in
 * <store>/keys, signs its own coupons and campaigns, and loads small snapshot
 * files through the cache's internal API. Every request passes now_ms; the
 * wall clock is faked too (platform__clock_override), because events carry
 * the capture time: local purchases after stats.as_of_ms and the attribution
 * window read it.
 *
 * Fixture JSON is written with single quotes for readability; q() and the
 * loaders turn them into double quotes (no fixture string contains an
 * apostrophe).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <scrm/scrm.h>

#include "cache.h"
#include "cachegen.h"
#include "guide.h"
#include "outbox.h"
#include "platform.h"
#include "testutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOW 1800000000000LL /* 2027-01-15: every request's now_ms and the fake wall clock */
#define DAY 86400000LL
#define HOUR 3600000LL

typedef struct fx {
	char *dir;  /* the store: outbox.db, cache.db */
	char *keys; /* <dir>/keys: central.key/.pub, tenant.key, data.key */
	char *outbox_db, *cache_db;
	scrm_store *s;
	scrm_cache *h;
	cg_signer *signer;
	int64_t version;    /* snapshot version of the next file (any stream) */
	const char *policy; /* set on the cache before the next load, NULL = none */
	tu_clock clk;
} fx;

/* ---- plumbing ------------------------------------------------------- */

/* printf into a malloc'd string, single quotes turned into double quotes. */
static char *q(const char *format, ...) __attribute__((format(printf, 1, 2)));
static char *q(const char *format, ...)
{
	va_list ap;
	va_start(ap, format);
	char *p = tu_vfmt(format, ap);
	va_end(ap);
	for (char *c = p; *c; c++)
		if (*c == '\'')
			*c = '"';
	return p;
}

static void open_h(fx *f)
{
	int rc = scrm_cache_open(f->dir, f->keys, &f->h);
	if (rc != SCRM_OK)
		print_error("scrm_cache_open: %s\n", scrm_errmsg());
	assert_int_equal(rc, SCRM_OK);
}

static int setup(void **state)
{
	fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	f->dir = tu_tmpdir("guide");
	f->keys = tu_join(f->dir, "keys");
	f->outbox_db = tu_join(f->dir, OUTBOX_FILE);
	f->cache_db = tu_join(f->dir, "private/" CACHE_FILE);
	f->version = 1;
	assert_int_equal(cg_keys_create(f->keys, 1), 0);
	char *key = tu_join(f->keys, "central.key");
	assert_int_equal(cg_signer_open(key, &f->signer), 0);
	free(key);
	/* Only the wall clock is faked: SQLite's and the store's waits keep
	 * the real monotonic clock. */
	f->clk.wall_ms = NOW;
	platform__clock_override(tu_clock_wall, NULL, &f->clk);
	scrm_store_options o = {.device_id = "pos-01"};
	assert_int_equal(scrm_store_open(f->dir, &o, &f->s), SCRM_OK);
	/* An empty cache, so every test can open the handle at once. */
	cache *c = NULL;
	cache__options co = {.keys_dir = f->keys, .create = 1};
	assert_int_equal(cache__open(f->dir, &co, &c), SCRM_OK);
	cache__close(c);
	open_h(f);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fx *f = *state;
	scrm_cache_close(f->h);
	scrm_store_close(f->s);
	cg_signer_close(f->signer);
	platform__clock_override(NULL, NULL, NULL);
	tu_rmtree_free(f->dir, f->keys, f->outbox_db, f->cache_db);
	free(f);
	return 0;
}

/* Write `records` (JSON lines, double-quoted) as a snapshot file of
 * `stream` and load it as central's snapshot would be; the public handle
 * is reopened around it. Asserts that every record was taken. */
static void load_raw(fx *f, const char *stream, const char *records)
{
	char name[64];
	snprintf(name, sizeof(name), "%s.jsonl", stream);
	char *path = tu_join(f->dir, name);
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	fprintf(fp, "{\"v\":1,\"type\":\"snapshot_file\",\"stream\":\"%s\",\"version\":%lld}\n", stream,
		(long long)f->version++);
	fputs(records, fp);
	fputc('\n', fp);
	assert_int_equal(fclose(fp), 0);
	int64_t want = 1;
	for (const char *c = records; *c; c++)
		want += *c == '\n';

	scrm_cache_close(f->h);
	f->h = NULL;
	cache *c = NULL;
	cache__options co = {.keys_dir = f->keys, .create = 1};
	assert_int_equal(cache__open(f->dir, &co, &c), SCRM_OK);
	if (f->policy)
		assert_int_equal(cache__set_policy(c, f->policy), SCRM_OK);
	int64_t n = 0, refused = 0;
	int st = -1;
	int rc = cache__load_file(c, path, NULL, NULL, &n, &refused, &st);
	if (rc != SCRM_OK)
		print_error("load %s: %s\n", stream, scrm_errmsg());
	assert_int_equal(rc, SCRM_OK);
	if (refused)
		print_error("load %s: refused: %s\n", stream, cache__refused_detail(c));
	assert_int_equal(refused, 0);
	assert_int_equal(n, want);
	assert_int_equal(st, cache__stream_parse(stream));
	cache__close(c);
	free(path);
	open_h(f);
}

/* Same, records written with single quotes. */
static void load(fx *f, const char *stream, const char *records)
{
	char *text = q("%s", records);
	load_raw(f, stream, text);
	free(text);
}

/* The coupons stream: each argument a payload from camp() / cpn(), signed
 * by central; NULL-terminated, the payloads are freed. */
static void load_coupons(fx *f, ...) __attribute__((sentinel));
static void load_coupons(fx *f, ...)
{
	va_list ap;
	sbuf all;
	char *p;
	sbuf__init(&all);
	va_start(ap, f);
	while ((p = va_arg(ap, char *)) != NULL) {
		char *rec = NULL;
		int rc = cg_signed_coupon_record(f->signer, p, &rec);
		if (rc != 0)
			print_error("cannot sign %s\n", p);
		assert_int_equal(rc, 0);
		if (all.len)
			sbuf__putc(&all, '\n');
		sbuf__puts(&all, rec);
		free(rec);
		free(p);
	}
	va_end(ap);
	assert_false(all.oom);
	load_raw(f, "coupons", all.p);
	sbuf__free(&all);
}

/* A campaign valid from..to; `extra` (",'k':v,...", may be "") adds fields.
 * Without a discount in `extra`, 10 percent off. */
static char *camp_w(const char *id, int64_t from, int64_t to, const char *extra)
{
	const char *d = strstr(extra, "'discount'") ? "" : ",'discount':{'kind':'percent','value':10}";
	return q("{'type':'campaign','id':'%s','name':'Campaign %s','valid_from':%lld,'valid_to':%lld%s%s}", id, id,
		 (long long)from, (long long)to, d, extra);
}

/* A campaign valid for the ten days around NOW. */
static char *camp(const char *id, const char *extra)
{
	return camp_w(id, NOW - 10 * DAY, NOW + 10 * DAY, extra);
}

/* A member's coupon of a campaign, valid from..to. */
static char *cpn_w(const char *id, const char *campaign, const char *member, int64_t from, int64_t to,
		   const char *extra)
{
	return q("{'type':'coupon','id':'%s','campaign':'%s','member_id':'%s','valid_from':%lld,'valid_to':%lld%s}", id,
		 campaign, member, (long long)from, (long long)to, extra);
}

static char *cpn(const char *id, const char *campaign, const char *member, const char *extra)
{
	return cpn_w(id, campaign, member, NOW - 10 * DAY, NOW + 10 * DAY, extra);
}

/* ---- JSON ------------------------------------------------------------ */

/* Parse a libscrm result (freed). */
static cJSON *parse(char *json)
{
	assert_non_null(json);
	cJSON *root = cJSON_Parse(json);
	if (!root)
		print_error("not JSON: %s\n", json);
	scrm_free(json);
	assert_non_null(root);
	return root;
}

static const char *jstr(const cJSON *o, const char *name)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
	return cJSON_IsString(it) ? it->valuestring : NULL;
}

/* o[name] as an integer; fails the test if absent. */
static int64_t jint(const cJSON *o, const char *name)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
	if (!cJSON_IsNumber(it))
		print_error("no number \"%s\"\n", name);
	assert_true(cJSON_IsNumber(it));
	return (int64_t)it->valuedouble;
}

static double jnum(const cJSON *o, const char *name)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
	assert_true(cJSON_IsNumber(it));
	return it->valuedouble;
}

static int has(const cJSON *o, const char *name)
{
	return cJSON_GetObjectItemCaseSensitive(o, name) != NULL;
}

/* The element of array o[arr] whose `field` is `value`, or NULL. */
static const cJSON *find(const cJSON *o, const char *arr, const char *field, const char *value)
{
	const cJSON *it;
	cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(o, arr))
	{
		const char *v = jstr(it, field);
		if (v && strcmp(v, value) == 0)
			return it;
	}
	return NULL;
}

static void assert_contains(const char *hay, const char *needle)
{
	if (!hay || !strstr(hay, needle)) {
		print_error("expected \"%s\" in \"%s\"\n", needle, hay ? hay : "(null)");
		fail();
	}
}

/* ---- coupons ---------------------------------------------------------- */

/* scrm_coupons_for(), asserted to succeed. */
static cJSON *coupons_for(fx *f, scrm_store *s, const char *member, const scrm_line *basket, size_t n,
			  const char *currency, int64_t now)
{
	scrm_coupon_request rq = {
		.member_id = member, .basket = basket, .n_basket = n, .currency = currency, .now_ms = now};
	char *json = NULL;
	int rc = scrm_coupons_for(f->h, s, &rq, &json);
	if (rc != SCRM_OK)
		print_error("scrm_coupons_for: %s\n", scrm_errmsg());
	assert_int_equal(rc, SCRM_OK);
	return parse(json);
}

/* The ineligible entry `key` with its reason code; it is not eligible. */
static const cJSON *expect_refused(const cJSON *r, const char *key, const char *reason)
{
	const cJSON *e = find(r, "ineligible", "key", key);
	if (!e) {
		char *t = cJSON_PrintUnformatted(r);
		print_error("%s not among the ineligible: %s\n", key, t);
		free(t);
	}
	assert_non_null(e);
	assert_null(find(r, "eligible", "key", key));
	if (!jstr(e, "reason") || strcmp(jstr(e, "reason"), reason) != 0)
		print_error("%s: reason %s (%s), expected %s\n", key, jstr(e, "reason"), jstr(e, "detail"), reason);
	assert_string_equal(jstr(e, "reason"), reason);
	assert_non_null(jstr(e, "detail"));
	assert_false(has(e, "value"));
	return e;
}

/* The eligible entry `key`, worth `value`. */
static const cJSON *expect_ok(const cJSON *r, const char *key, int64_t value)
{
	const cJSON *e = find(r, "eligible", "key", key);
	if (!e) {
		const cJSON *x = find(r, "ineligible", "key", key);
		print_error("%s not eligible: %s (%s)\n", key, x ? jstr(x, "reason") : "absent", x ? jstr(x, "detail") : "");
	}
	assert_non_null(e);
	assert_false(has(e, "reason"));
	assert_int_equal(jint(e, "value"), value);
	return e;
}

/* "eligible <value>" or the reason code of `key`, into out. */
static void verdict_of(const cJSON *r, const char *key, char *out, size_t cap)
{
	const cJSON *e = find(r, "eligible", "key", key);
	if (e) {
		snprintf(out, cap, "eligible %lld", (long long)jint(e, "value"));
		return;
	}
	e = find(r, "ineligible", "key", key);
	const char *why = e ? jstr(e, "reason") : NULL, *detail = e ? jstr(e, "detail") : NULL;
	snprintf(out, cap, "%s", why ? why : "absent");
	if (why)
		print_error("%s: %s (%s)\n", key, why, detail ? detail : "");
}

typedef struct redeem_args {
	const char *member, *coupon, *order;
	const scrm_line *basket;
	size_t n;
	const char *currency; /* NULL: GBP */
	const char *guide;
	int64_t now;          /* 0: NOW */
} redeem_args;

static int redeem_on(scrm_cache *h, scrm_store *s, const redeem_args *a, scrm_redemption *out, char **json)
{
	scrm_redeem_request rq = {.member_id = a->member,
				  .coupon = a->coupon,
				  .basket = a->basket,
				  .n_basket = a->n,
				  .currency = a->currency ? a->currency : "GBP",
				  .order_id = a->order,
				  .guide_id = a->guide,
				  .now_ms = a->now ? a->now : NOW};
	return scrm_redeem(h, s, &rq, out, json);
}

#define REDEEM(f, out, json, ...) redeem_on((f)->h, (f)->s, &(redeem_args){__VA_ARGS__}, (out), (json))
/* The usual sale (BASKET) with a coupon: one that goes through, into *out,
 * or one refused with `code` naming `field`. */
#define REDEEM_OK(f, out, member_, coupon_, order_)                                                                  \
	assert_int_equal(REDEEM(f, out, NULL, .member = (member_), .coupon = (coupon_), .order = (order_), .basket = BASKET, \
				.n = BASKET_N),                                                                     \
			 SCRM_OK)
#define REDEEM_REFUSED(f, member_, coupon_, order_, code, field)                                                     \
	assert_refused(REDEEM(f, NULL, NULL, .member = (member_), .coupon = (coupon_), .order = (order_), .basket = BASKET, \
			      .n = BASKET_N),                                                                       \
		       (code), (field))

static int64_t outbox_rows(fx *f)
{
	return tu_sql_int(f->outbox_db, "SELECT count(*) FROM outbox");
}

/* The body of event `id` (malloc'd JSON, parsed). */
static cJSON *event_body(fx *f, const char *id, const char *kind)
{
	char sql[200];
	snprintf(sql, sizeof(sql), "SELECT kind FROM outbox WHERE id = '%s'", id);
	char *k = tu_sql_text(f->outbox_db, sql);
	assert_string_equal(k, kind);
	free(k);
	snprintf(sql, sizeof(sql), "SELECT body FROM outbox WHERE id = '%s'", id);
	char *body = tu_sql_text(f->outbox_db, sql);
	cJSON *b = cJSON_Parse(body);
	free(body);
	assert_non_null(b);
	return b;
}

/* Baskets (minor units, GBP). */
static const scrm_line BASKET[] = {
	{.sku = "A", .qty = 2, .unit_price = 500}, /* kitchen, 1000 */
	{.sku = "C", .qty = 1, .unit_price = 305}, /* christmas, 305 */
};
#define BASKET_N 2
#define BASKET_TOTAL 1305

/* The members and catalogue most tests share. M1: gold, VIP, an active
 * regular who has already used campaign LIMIT once (central's count); M2:
 * silver. */
static void world(fx *f)
{
	char *m = q("{'key':'M1','data':{'member_id':'M1','tier':'gold','tags':['VIP'],"
		    "'coupon_uses':{'LIMIT':1},'prefs':{'categories':['kitchen']},"
		    "'stats':{'orders':10,'first_purchase_ms':%lld,'last_purchase_ms':%lld,'as_of_ms':%lld}}}\n"
		    "{'key':'M2','data':{'member_id':'M2','tier':'silver',"
		    "'stats':{'orders':3,'first_purchase_ms':%lld,'last_purchase_ms':%lld,'as_of_ms':%lld}}}",
		    (long long)(NOW - 300 * DAY), (long long)(NOW - 5 * DAY), (long long)(NOW - DAY),
		    (long long)(NOW - 200 * DAY), (long long)(NOW - 10 * DAY), (long long)(NOW - DAY));
	load_raw(f, "members", m);
	free(m);
	load(f, "catalogue",
	     "{'key':'A','data':{'sku':'A','name':'APPLE MUG','category':'kitchen','price':500}}\n"
	     "{'key':'B','data':{'sku':'B','name':'BLUE PLATE','category':'kitchen','price':1000}}\n"
	     "{'key':'C','data':{'sku':'C','name':'CHRISTMAS STAR','category':'christmas','price':305}}\n"
	     "{'key':'D','data':{'sku':'D','name':'DOOR MAT','category':'home','price':2000}}");
}

/* ---- 1. coupon rules ------------------------------------------------- */

/* One coupon per rule, each failing only that rule for M1 (gold, VIP,
 * active) and the GBP basket of 1305: the reason code of each, and the
 * value of the ones that apply. */
static void coupon_rules_and_reasons(void **state)
{
	fx *f = *state;
	world(f);
	load_coupons(f,
		     /* campaigns */
		     camp("OPEN", ""), camp_w("CEXP", NOW - 20 * DAY, NOW - DAY, ""),
		     camp_w("CNYV", NOW + DAY, NOW + 20 * DAY, ""), camp("TIER", ",'tiers':['silver']"),
		     camp("GOLD", ",'tiers':['gold','silver']"), camp("TAG", ",'tags':['student']"),
		     camp("VIPTAG", ",'tags':['new','VIP']"), camp("STAGE", ",'stages':['sleeping']"),
		     camp("ACTIVE", ",'stages':['active']"), camp("EUR", ",'currency':'EUR'"),
		     camp("GBP", ",'currency':'GBP'"), camp("GARDEN", ",'scope':{'categories':['garden']}"),
		     camp("XMAS", ",'scope':{'categories':['christmas']},'discount':{'kind':'percent','value':50}"),
		     camp("SKUD", ",'scope':{'skus':['D']}"),
		     camp("SKUA", ",'scope':{'skus':['A']},'discount':{'kind':'amount','value':5000}"),
		     camp("FLAT", ",'discount':{'kind':'amount','value':250}"), camp("MIN", ",'min_spend':5000"),
		     camp("MINOK", ",'min_spend':1305"), camp("LIMIT", ",'per_member_limit':1"),
		     camp("LIMIT2", ",'per_member_limit':2"), camp("ONLINE", ",'offline':{'allowed':false}"),
		     camp("CAP", ",'offline':{'allowed':true,'max_value':100},'discount':{'kind':'percent','value':20}"),
		     camp("PUB", ",'public':true,'discount':{'kind':'percent','value':5}"),
		     camp("PUBGOLD", ",'public':true,'tiers':['gold'],'discount':{'kind':'amount','value':70}"),
		     /* M1's coupons */
		     cpn("C-OK", "OPEN", "M1", ",'code':'OK-1234'"), cpn_w("C-NYV", "OPEN", "M1", NOW + DAY, NOW + 9 * DAY, ""),
		     cpn_w("C-EXP", "OPEN", "M1", NOW - 9 * DAY, NOW - DAY, ""),
		     cpn_w("C-EDGE", "OPEN", "M1", NOW - 9 * DAY, NOW, ""), /* valid_to is exclusive */
		     cpn_w("C-FROM", "OPEN", "M1", NOW, NOW + DAY, ""),      /* valid_from inclusive */
		     cpn("C-MISS", "NOPE", "M1", ""), cpn("C-CEXP", "CEXP", "M1", ""), cpn("C-CNYV", "CNYV", "M1", ""),
		     cpn("C-TIER", "TIER", "M1", ""), cpn("C-GOLD", "GOLD", "M1", ""), cpn("C-TAG", "TAG", "M1", ""),
		     cpn("C-VIPTAG", "VIPTAG", "M1", ""), cpn("C-STAGE", "STAGE", "M1", ""),
		     cpn("C-ACTIVE", "ACTIVE", "M1", ""), cpn("C-EUR", "EUR", "M1", ""), cpn("C-GBP", "GBP", "M1", ""),
		     cpn("C-GARDEN", "GARDEN", "M1", ""), cpn("C-XMAS", "XMAS", "M1", ""), cpn("C-SKUD", "SKUD", "M1", ""),
		     cpn("C-SKUA", "SKUA", "M1", ""), cpn("C-FLAT", "FLAT", "M1", ""), cpn("C-MIN", "MIN", "M1", ""),
		     cpn("C-MINOK", "MINOK", "M1", ""), cpn("C-USED", "OPEN", "M1", ",'uses':1,'used':1"),
		     cpn("C-MULTI", "OPEN", "M1", ",'uses':3,'used':2"), cpn("C-LIMIT", "LIMIT", "M1", ""),
		     cpn("C-LIMIT2", "LIMIT2", "M1", ""), cpn("C-ONLINE", "ONLINE", "M1", ""), cpn("C-CAP", "CAP", "M1", ""),
		     cpn("C-OTHER", "OPEN", "M2", ""), NULL);

	cJSON *r = coupons_for(f, f->s, "M1", BASKET, BASKET_N, "GBP", NOW);
	assert_string_equal(jstr(r, "member_id"), "M1");
	assert_string_equal(jstr(r, "stage"), "active");
	assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(r, "online")));
	assert_int_equal(jint(r, "subtotal"), BASKET_TOTAL);

	/* windows: the coupon's own, then its campaign's */
	assert_contains(jstr(expect_refused(r, "coupon:C-NYV", "not_yet_valid"), "detail"), "coupon");
	assert_contains(jstr(expect_refused(r, "coupon:C-EXP", "expired"), "detail"), "coupon");
	expect_refused(r, "coupon:C-EDGE", "expired");
	expect_ok(r, "coupon:C-FROM", 130);
	assert_contains(jstr(expect_refused(r, "coupon:C-CEXP", "expired"), "detail"), "campaign");
	assert_contains(jstr(expect_refused(r, "coupon:C-CNYV", "not_yet_valid"), "detail"), "campaign");
	assert_contains(jstr(expect_refused(r, "coupon:C-MISS", "campaign_missing"), "detail"), "NOPE");
	/* who the member is */
	assert_contains(jstr(expect_refused(r, "coupon:C-TIER", "tier"), "detail"), "gold");
	expect_ok(r, "coupon:C-GOLD", 130);
	assert_contains(jstr(expect_refused(r, "coupon:C-TAG", "tag"), "detail"), "student");
	expect_ok(r, "coupon:C-VIPTAG", 130);
	assert_contains(jstr(expect_refused(r, "coupon:C-STAGE", "stage"), "detail"), "active");
	expect_ok(r, "coupon:C-ACTIVE", 130);
	/* the basket */
	assert_contains(jstr(expect_refused(r, "coupon:C-EUR", "currency"), "detail"), "EUR");
	expect_ok(r, "coupon:C-GBP", 130);
	expect_refused(r, "coupon:C-GARDEN", "scope");
	expect_refused(r, "coupon:C-SKUD", "scope");
	assert_contains(jstr(expect_refused(r, "coupon:C-MIN", "min_spend"), "detail"), "50.00");
	expect_ok(r, "coupon:C-MINOK", 130); /* min_spend is inclusive */
	/* values: percent of what is in scope, rounded down; an amount never
	 * more than what is in scope */
	expect_ok(r, "coupon:C-OK", 130);   /* 10% of 1305 = 130.5 */
	expect_ok(r, "coupon:C-XMAS", 152); /* 50% of the star only: 152.5 */
	expect_ok(r, "coupon:C-SKUA", 1000); /* 5000 off, capped at the mugs */
	expect_ok(r, "coupon:C-FLAT", 250);
	/* uses: central's count, the member's campaign limit */
	assert_contains(jstr(expect_refused(r, "coupon:C-USED", "used_up"), "detail"), "1 of 1");
	expect_ok(r, "coupon:C-MULTI", 130);
	assert_contains(jstr(expect_refused(r, "coupon:C-LIMIT", "member_limit"), "detail"), "limit 1");
	expect_ok(r, "coupon:C-LIMIT2", 130);
	/* offline (no link row: the daemon never said it is connected) */
	expect_refused(r, "coupon:C-ONLINE", "online_only");
	const cJSON *cap = expect_ok(r, "coupon:C-CAP", 100); /* 20% = 261, capped offline */
	assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cap, "capped")));
	assert_false(has(expect_ok(r, "coupon:C-OK", 130), "capped"));
	/* public campaigns the member holds no coupon of */
	expect_ok(r, "campaign:PUB", 65);
	expect_ok(r, "campaign:PUBGOLD", 70);
	/* another member's coupon is not offered */
	assert_null(find(r, "eligible", "key", "coupon:C-OTHER"));
	assert_null(find(r, "ineligible", "key", "coupon:C-OTHER"));
	/* eligible: most valuable first; coupon and campaign ids, the code */
	const cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r, "eligible"), 0);
	assert_string_equal(jstr(first, "key"), "coupon:C-SKUA");
	const cJSON *ok = find(r, "eligible", "key", "coupon:C-OK");
	assert_string_equal(jstr(ok, "coupon"), "C-OK");
	assert_string_equal(jstr(ok, "campaign"), "OPEN");
	assert_string_equal(jstr(ok, "code"), "OK-1234");
	assert_int_equal(jint(ok, "valid_to"), NOW + 10 * DAY);
	cJSON_Delete(r);

	/* the same without a store: offline too */
	r = coupons_for(f, NULL, "M1", BASKET, BASKET_N, "GBP", NOW);
	expect_refused(r, "coupon:C-ONLINE", "online_only");
	expect_ok(r, "coupon:C-CAP", 100);
	cJSON_Delete(r);

	/* currency NULL: any basket currency */
	r = coupons_for(f, f->s, "M1", BASKET, BASKET_N, NULL, NOW);
	expect_ok(r, "coupon:C-EUR", 130);
	cJSON_Delete(r);

	/* anonymous: public campaigns only; members-only tiers refused */
	r = coupons_for(f, f->s, NULL, BASKET, BASKET_N, "GBP", NOW);
	assert_false(has(r, "member_id"));
	assert_false(has(r, "stage"));
	expect_ok(r, "campaign:PUB", 65);
	assert_contains(jstr(expect_refused(r, "campaign:PUBGOLD", "tier"), "detail"), "members only");
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "eligible")), 1);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "ineligible")), 1);
	cJSON_Delete(r);
}

/* Redemption judges by the device's clock, never the caller's now_ms
 * (issue 12, finding 10): a till naming a time inside an expired coupon's
 * window cannot spend it, nor one not valid yet by naming a later time; a
 * valid coupon is not refused for a now_ms past its end. Nothing is written
 * for a refusal. */
static void redeem_uses_device_clock(void **state)
{
	fx *f = *state;
	world(f);
	load_coupons(f, camp("OPEN", ""), cpn_w("C-EXP", "OPEN", "M1", NOW - 9 * DAY, NOW - DAY, ""),
		     cpn_w("C-NYV", "OPEN", "M1", NOW + DAY, NOW + 9 * DAY, ""),
		     cpn_w("C-NOW", "OPEN", "M1", NOW - DAY, NOW + DAY, ""),
		     cpn_w("C-END", "OPEN", "M1", NOW - DAY, NOW + DAY, ""), NULL);
	int64_t before = outbox_rows(f);
	scrm_redemption red;

	int rc = REDEEM(f, &red, NULL, .member = "M1", .coupon = "C-EXP", .order = "O-1", .basket = BASKET,
			.n = BASKET_N, .now = NOW - 5 * DAY);
	assert_refused(rc, SCRM_E_REFUSED, "expired");
	rc = REDEEM(f, &red, NULL, .member = "M1", .coupon = "C-NYV", .order = "O-2", .basket = BASKET, .n = BASKET_N,
		    .now = NOW + 5 * DAY);
	assert_refused(rc, SCRM_E_REFUSED, "not_yet_valid");
	assert_int_equal(outbox_rows(f), before);
	/* the wall clock (NOW) is inside C-NOW's window whatever now_ms says */
	rc = REDEEM(f, &red, NULL, .member = "M1", .coupon = "C-NOW", .order = "O-3", .basket = BASKET, .n = BASKET_N,
		    .now = NOW + 30 * DAY);
	if (rc)
		print_error("C-NOW: %s\n", scrm_errmsg());
	assert_int_equal(rc, SCRM_OK);
	assert_int_equal(outbox_rows(f), before + 1);
	/* and the device clock past the end refuses one, whatever now_ms says */
	f->clk.wall_ms = NOW + DAY;
	rc = REDEEM(f, &red, NULL, .member = "M1", .coupon = "C-END", .order = "O-4", .basket = BASKET, .n = BASKET_N,
		    .now = NOW);
	assert_refused(rc, SCRM_E_REFUSED, "expired");
}

/* Central reachable (the daemon's link row, fresh): online-only coupons
 * apply and nothing is capped; a stale row counts as offline again. */
static void coupon_online_only_and_offline_cap(void **state)
{
	fx *f = *state;
	world(f);
	load_coupons(f, camp("ONLINE", ",'offline':{'allowed':false}"),
		     camp("CAP", ",'offline':{'allowed':true,'max_value':100},'discount':{'kind':'percent','value':20}"),
		     cpn("C-ONLINE", "ONLINE", "M1", ""), cpn("C-CAP", "CAP", "M1", ""), cpn("C-CAP2", "CAP", "M1", ""),
		     NULL);

	cJSON *r = coupons_for(f, f->s, "M1", BASKET, BASKET_N, "GBP", NOW);
	expect_refused(r, "coupon:C-ONLINE", "online_only");
	assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(expect_ok(r, "coupon:C-CAP", 100), "capped")));
	cJSON_Delete(r);
	/* refused at the till too, nothing written */
	int64_t rows = outbox_rows(f);
	int rc = REDEEM(f, NULL, NULL, .member = "M1", .coupon = "C-ONLINE", .order = "O-1", .basket = BASKET,
			.n = BASKET_N);
	assert_refused(rc, SCRM_E_REFUSED, "online_only");
	assert_int_equal(outbox_rows(f), rows);
	/* offline, a capped coupon is reserved at the cap */
	scrm_redemption red;
	char *json = NULL;
	assert_int_equal(REDEEM(f, &red, &json, .member = "M1", .coupon = "C-CAP2", .order = "O-2", .basket = BASKET,
				.n = BASKET_N),
			 SCRM_OK);
	assert_int_equal(red.value, 100);
	assert_int_equal(red.offline, 1);
	cJSON *j = parse(json);
	assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "capped")));
	assert_string_equal(jstr(j, "mode"), "offline");
	cJSON_Delete(j);

	/* the daemon says connected, seen just now */
	char sql[200];
	snprintf(sql, sizeof(sql), "INSERT INTO link(id, connected, changed_ms, seen_ms) VALUES (1, 1, %lld, %lld)",
		 (long long)NOW, (long long)NOW);
	tu_sql_exec(f->outbox_db, sql);
	r = coupons_for(f, f->s, "M1", BASKET, BASKET_N, "GBP", NOW + 1000);
	assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "online")));
	expect_ok(r, "coupon:C-ONLINE", 130);
	assert_false(has(expect_ok(r, "coupon:C-CAP", 261), "capped"));
	cJSON_Delete(r);
	/* without the store, the link state is unknown: offline */
	r = coupons_for(f, NULL, "M1", BASKET, BASKET_N, "GBP", NOW + 1000);
	expect_refused(r, "coupon:C-ONLINE", "online_only");
	cJSON_Delete(r);
	/* online, a redemption is recorded as such, uncapped */
	assert_int_equal(REDEEM(f, &red, &json, .member = "M1", .coupon = "C-ONLINE", .order = "O-3", .basket = BASKET,
				.n = BASKET_N, .now = NOW + 1000),
			 SCRM_OK);
	assert_int_equal(red.value, 130);
	assert_int_equal(red.offline, 0);
	j = parse(json);
	assert_string_equal(jstr(j, "mode"), "online");
	cJSON_Delete(j);
	cJSON *b = event_body(f, red.redemption_id, "coupon_redeem");
	assert_string_equal(jstr(b, "mode"), "online");
	cJSON_Delete(b);

	/* the row goes stale (daemon gone for 10 minutes): offline again */
	r = coupons_for(f, f->s, "M1", BASKET, BASKET_N, "GBP", NOW + 10 * 60000);
	assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(r, "online")));
	expect_refused(r, "coupon:C-ONLINE", "used_up"); /* spent above */
	assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(expect_ok(r, "coupon:C-CAP", 100), "capped")));
	cJSON_Delete(r);
	/* connected = 0, however fresh: offline */
	snprintf(sql, sizeof(sql), "UPDATE link SET connected = 0, seen_ms = %lld", (long long)NOW);
	tu_sql_exec(f->outbox_db, sql);
	r = coupons_for(f, f->s, "M1", BASKET, BASKET_N, "GBP", NOW + 1000);
	assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(r, "online")));
	cJSON_Delete(r);
}

/* used_up after this device's own redemption; wrong_member when a member's
 * coupon is redeemed for someone else (or for nobody). */
static void coupon_used_up_locally_and_wrong_member(void **state)
{
	fx *f = *state;
	world(f);
	load_coupons(f, camp("OPEN", ""), camp("LIMIT2", ",'per_member_limit':2"), cpn("C-ONCE", "OPEN", "M1", ""),
		     cpn("C-OTHER", "OPEN", "M2", ""), cpn("C-L1", "LIMIT2", "M1", ""), cpn("C-L2", "LIMIT2", "M1", ""),
		     NULL);

	cJSON *r = coupons_for(f, f->s, "M1", BASKET, BASKET_N, "GBP", NOW);
	expect_ok(r, "coupon:C-ONCE", 130);
	cJSON_Delete(r);
	assert_int_equal(REDEEM(f, NULL, NULL, .member = "M1", .coupon = "C-ONCE", .order = "O-1", .basket = BASKET,
				.n = BASKET_N),
			 SCRM_OK);
	r = coupons_for(f, f->s, "M1", BASKET, BASKET_N, "GBP", NOW);
	assert_contains(jstr(expect_refused(r, "coupon:C-ONCE", "used_up"), "detail"), "on this device");
	cJSON_Delete(r);
	int64_t rows = outbox_rows(f);
	REDEEM_REFUSED(f, "M1", "C-ONCE", "O-2", SCRM_E_REFUSED, "used_up");

	/* per_member_limit 2, central counts 0: the device's own uses count */
	assert_int_equal(REDEEM(f, NULL, NULL, .member = "M1", .coupon = "C-L1", .order = "O-3", .basket = BASKET,
				.n = BASKET_N),
			 SCRM_OK);
	r = coupons_for(f, f->s, "M1", BASKET, BASKET_N, "GBP", NOW);
	expect_ok(r, "coupon:C-L2", 130);
	cJSON_Delete(r);
	assert_int_equal(REDEEM(f, NULL, NULL, .member = "M1", .coupon = "C-L2", .order = "O-4", .basket = BASKET,
				.n = BASKET_N),
			 SCRM_OK);
	rows += 2;

	/* another member's coupon */
	REDEEM_REFUSED(f, "M1", "C-OTHER", "O-5", SCRM_E_REFUSED, "wrong_member");
	REDEEM_REFUSED(f, NULL, "C-OTHER", "O-6", SCRM_E_REFUSED, "wrong_member");
	assert_int_equal(outbox_rows(f), rows);
	/* its owner can */
	assert_int_equal(REDEEM(f, NULL, NULL, .member = "M2", .coupon = "C-OTHER", .order = "O-7", .basket = BASKET,
				.n = BASKET_N),
			 SCRM_OK);
}

/* ---- 2. redemption ---------------------------------------------------- */

/* A redemption is one coupon_redeem event and one ledger row, written
 * together; a refusal writes nothing. Coupons can be named by id or code;
 * public campaigns by their id; a record edited on disk is refused. */
static void redeem_records_event_and_ledger(void **state)
{
	fx *f = *state;
	world(f);
	load_coupons(f, camp("OPEN", ""), camp("PUB", ",'public':true,'discount':{'kind':'amount','value':200}"),
		     camp("SECRET", ",'discount':{'kind':'amount','value':300}"),
		     cpn("C-1", "OPEN", "M1", ",'code':'X7K2-9QPD'"), cpn("C-2", "OPEN", "M1", ",'code':'CODE-2'"),
		     cpn("C-3", "OPEN", "M1", ",'uses':1"), cpn("C-4", "OPEN", "M1", ""), cpn("C-5", "GONE", "M1", ""),
		     NULL);
	int64_t rows0 = outbox_rows(f);

	scrm_redemption red;
	char *json = NULL;
	int rc = REDEEM(f, &red, &json, .member = "M1", .coupon = "C-1", .order = "O-1", .basket = BASKET,
			.n = BASKET_N, .guide = "g-07");
	if (rc)
		print_error("redeem: %s\n", scrm_errmsg());
	assert_int_equal(rc, SCRM_OK);
	assert_int_equal(strlen(red.redemption_id), 36);
	assert_int_equal(red.value, 130);
	assert_true(red.seq > 0);
	assert_int_equal(red.offline, 1);
	cJSON *j = parse(json);
	assert_string_equal(jstr(j, "redemption_id"), red.redemption_id);
	assert_int_equal(jint(j, "seq"), red.seq);
	assert_string_equal(jstr(j, "key"), "coupon:C-1");
	assert_int_equal(jint(j, "value"), 130);
	assert_string_equal(jstr(j, "mode"), "offline");
	assert_false(has(j, "capped"));
	cJSON_Delete(j);

	/* the event, with what central needs to settle it */
	assert_int_equal(outbox_rows(f), rows0 + 1);
	assert_int_equal(tu_sql_int(f->outbox_db, "SELECT count(*) FROM outbox WHERE kind = 'coupon_redeem'"), 1);
	cJSON *b = event_body(f, red.redemption_id, "coupon_redeem");
	assert_string_equal(jstr(b, "campaign"), "OPEN");
	assert_string_equal(jstr(b, "coupon"), "C-1");
	assert_string_equal(jstr(b, "member_id"), "M1");
	assert_string_equal(jstr(b, "order_id"), "O-1");
	assert_int_equal(jint(b, "value"), 130);
	assert_string_equal(jstr(b, "currency"), "GBP");
	assert_string_equal(jstr(b, "mode"), "offline");
	assert_string_equal(jstr(b, "guide_id"), "g-07");
	cJSON_Delete(b);
	char sql[300];
	snprintf(sql, sizeof(sql), "SELECT seq FROM outbox WHERE id = '%s'", red.redemption_id);
	assert_int_equal(tu_sql_int(f->outbox_db, sql), red.seq);
	/* the ledger row, from the same transaction */
	snprintf(sql, sizeof(sql),
		 "SELECT count(*) FROM redemptions WHERE id = '%s' AND seq = %lld AND coupon = 'C-1' AND campaign = 'OPEN'"
		 " AND member_id = 'M1' AND order_id = 'O-1' AND value = 130 AND currency = 'GBP' AND mode = 'offline'"
		 " AND verdict IS NULL",
		 red.redemption_id, (long long)red.seq);
	assert_int_equal(tu_sql_int(f->outbox_db, sql), 1);
	assert_int_equal(tu_sql_int(f->outbox_db, "SELECT count(*) FROM redemptions"), 1);

	/* spent: refused, nothing written; *out zeroed, *json NULL */
	json = (char *)"x";
	rc = REDEEM(f, &red, &json, .member = "M1", .coupon = "C-1", .order = "O-2", .basket = BASKET, .n = BASKET_N);
	assert_refused(rc, SCRM_E_REFUSED, "used_up");
	assert_null(json);
	assert_int_equal(red.value, 0);
	assert_int_equal(outbox_rows(f), rows0 + 1);
	assert_int_equal(tu_sql_int(f->outbox_db, "SELECT count(*) FROM redemptions"), 1);
	/* by code (the member's coupons are searched) */
	assert_int_equal(REDEEM(f, &red, &json, .member = "M1", .coupon = "CODE-2", .order = "O-3", .basket = BASKET,
				.n = BASKET_N),
			 SCRM_OK);
	j = parse(json);
	assert_string_equal(jstr(j, "key"), "coupon:C-2");
	cJSON_Delete(j);
	b = event_body(f, red.redemption_id, "coupon_redeem");
	assert_string_equal(jstr(b, "coupon"), "C-2");
	cJSON_Delete(b);
	/* the code of a spent coupon is refused like its id */
	REDEEM_REFUSED(f, "M1", "X7K2-9QPD", "O-4", SCRM_E_REFUSED, "used_up");
	/* a code only finds the member's own coupons */
	REDEEM_REFUSED(f, "M2", "CODE-2", "O-5", SCRM_E_NOT_FOUND, "coupon");
	REDEEM_REFUSED(f, NULL, "CODE-2", "O-5", SCRM_E_NOT_FOUND, "coupon");
	assert_int_equal(outbox_rows(f), rows0 + 2);

	/* a public campaign, anonymously */
	assert_int_equal(REDEEM(f, &red, NULL, .coupon = "PUB", .order = "O-6", .basket = BASKET, .n = BASKET_N),
			 SCRM_OK);
	assert_int_equal(red.value, 200);
	b = event_body(f, red.redemption_id, "coupon_redeem");
	assert_string_equal(jstr(b, "campaign"), "PUB");
	assert_false(has(b, "coupon"));
	assert_false(has(b, "member_id"));
	assert_false(has(b, "guide_id"));
	cJSON_Delete(b);
	/* a coupon whose campaign is not in the cache */
	REDEEM_REFUSED(f, "M1", "C-5", "O-7", SCRM_E_REFUSED, "campaign_missing");
	/* a campaign that is not public is spent only through a member's coupon */
	REDEEM_REFUSED(f, "M1", "SECRET", "O-7", SCRM_E_REFUSED, "not_public");
	assert_int_equal(outbox_rows(f), rows0 + 3);

	/* someone edits a stored coupon: central's signature no longer holds */
	tu_sql_exec(f->cache_db, "UPDATE coupons SET signed = replace(signed, '\"uses\":1', '\"uses\":9')"
			      " WHERE key = 'coupon:C-3'");
	assert_int_equal(tu_sql_int(f->cache_db, "SELECT count(*) FROM coupons WHERE signed LIKE '%\"uses\":9%'"), 1);
	rc = REDEEM(f, NULL, NULL, .member = "M1", .coupon = "C-3", .order = "O-8", .basket = BASKET, .n = BASKET_N);
	assert_refused(rc, SCRM_E_REFUSED, "signature");
	assert_errmsg_contains("coupon:C-3");
	/* ... or its campaign */
	tu_sql_exec(f->cache_db, "UPDATE coupons SET signed = replace(signed, '\"value\":10', '\"value\":99')"
			      " WHERE key = 'campaign:OPEN'");
	rc = REDEEM(f, NULL, NULL, .member = "M1", .coupon = "C-4", .order = "O-9", .basket = BASKET, .n = BASKET_N);
	assert_refused(rc, SCRM_E_REFUSED, "signature");
	assert_errmsg_contains("campaign:OPEN");
	assert_int_equal(outbox_rows(f), rows0 + 3);
	assert_int_equal(tu_sql_int(f->outbox_db, "SELECT count(*) FROM redemptions"), 3);
}

/* ---- 3. two tills, one coupon ---------------------------------------- */

#define RACE_ROUNDS 20
#define RACERS 2

/* One till in its own process: own store and cache handles, waits at the
 * barrier (one byte written to `ready`, then EOF on `go`), redeems, and
 * exits 0 redeemed, 1 refused "used_up", 3 refused "member_limit", 2
 * anything else (no cmocka in here). */
static void till_process(const char *dir, const char *keys, const char *member, const char *coupon, int idx,
			 int ready_w, int go_r)
{
	scrm_store *s = NULL;
	scrm_cache *h = NULL;
	char b = 'r', order[32];
	if (scrm_store_open(dir, NULL, &s) != SCRM_OK || scrm_cache_open(dir, keys, &h) != SCRM_OK) {
		fprintf(stderr, "till %d: open: %s\n", idx, scrm_errmsg());
		_exit(2);
	}
	if (write(ready_w, &b, 1) != 1 || read(go_r, &b, 1) != 0)
		_exit(2);
	snprintf(order, sizeof(order), "P%d-%s", idx, coupon);
	redeem_args a = {.member = member, .coupon = coupon, .order = order, .basket = BASKET, .n = BASKET_N};
	int rc = redeem_on(h, s, &a, NULL, NULL);
	int code = 2;
	if (rc == SCRM_OK)
		code = 0;
	else if (rc == SCRM_E_REFUSED && strncmp(scrm_errmsg(), "used_up:", 8) == 0)
		code = 1;
	else if (rc == SCRM_E_REFUSED && strncmp(scrm_errmsg(), "member_limit:", 13) == 0)
		code = 3;
	else
		fprintf(stderr, "till %d: %s: rc %d: %s\n", idx, coupon, rc, scrm_errmsg());
	scrm_cache_close(h);
	scrm_store_close(s);
	_exit(code);
}

/* RACERS processes redeem `coupon` at once: returns how many succeeded
 * (the others must have been refused for a spent use). */
static int race_processes(fx *f, const char *member, const char *coupon)
{
	int ready[2], go[2];
	pid_t pid[RACERS];
	assert_int_equal(pipe(ready), 0);
	assert_int_equal(pipe(go), 0);
	for (int i = 0; i < RACERS; i++) {
		pid[i] = fork();
		assert_true(pid[i] >= 0);
		if (pid[i] == 0) {
			close(ready[0]);
			close(go[1]);
			till_process(f->dir, f->keys, member, coupon, i, ready[1], go[0]);
		}
	}
	close(ready[1]);
	close(go[0]);
	char b;
	for (int i = 0; i < RACERS; i++)
		assert_int_equal(read(ready[0], &b, 1), 1);
	close(go[1]); /* go: every till reads EOF at once */
	close(ready[0]);
	int ok = 0, refused = 0;
	for (int i = 0; i < RACERS; i++) {
		int status = 0;
		assert_int_equal(waitpid(pid[i], &status, 0), pid[i]);
		assert_true(WIFEXITED(status));
		if (WEXITSTATUS(status) == 0)
			ok++;
		else if (WEXITSTATUS(status) == 1)
			refused++;
		else
			fail_msg("till process failed on %s (exit %d)", coupon, WEXITSTATUS(status));
	}
	assert_int_equal(ok + refused, RACERS);
	return ok;
}

/* Two processes (each with its own handles, as two POS programs) redeem the
 * same single-use coupon at the same moment: exactly one gets it, the other
 * is refused "used_up", and the ledger holds one use. Also for a campaign's
 * per-member limit spread over two different coupons. */
static void redeem_race_between_processes(void **state)
{
	fx *f = *state;
	world(f);
	char *p[RACE_ROUNDS + 4];
	for (int i = 0; i < RACE_ROUNDS; i++) {
		char id[16];
		snprintf(id, sizeof(id), "C-R%02d", i);
		p[i] = cpn(id, "OPEN", "M1", "");
	}
	load_coupons(f, camp("OPEN", ""), camp("ONCE", ",'per_member_limit':1"), p[0], p[1], p[2], p[3], p[4], p[5],
		     p[6], p[7], p[8], p[9], p[10], p[11], p[12], p[13], p[14], p[15], p[16], p[17], p[18], p[19],
		     cpn("C-L1", "ONCE", "M1", ""), cpn("C-L2", "ONCE", "M1", ""), NULL);
	/* The children open their own handles; the parent's stay closed while
	 * they run (no SQLite connection crosses a fork). */
	scrm_cache_close(f->h);
	f->h = NULL;
	scrm_store_close(f->s);
	f->s = NULL;
	for (int i = 0; i < RACE_ROUNDS; i++) {
		char id[16], sql[160];
		snprintf(id, sizeof(id), "C-R%02d", i);
		assert_int_equal(race_processes(f, "M1", id), 1);
		snprintf(sql, sizeof(sql), "SELECT count(*) FROM redemptions WHERE coupon = '%s'", id);
		assert_int_equal(tu_sql_int(f->outbox_db, sql), 1);
	}
	assert_int_equal(tu_sql_int(f->outbox_db, "SELECT count(*) FROM outbox WHERE kind = 'coupon_redeem'"),
			 RACE_ROUNDS);
	assert_int_equal(tu_sql_int(f->outbox_db, "SELECT count(DISTINCT seq) FROM redemptions"), RACE_ROUNDS);

	/* two coupons, one campaign use left for the member: two tills, each
	 * with one of them */
	int ready[2], go[2];
	pid_t pid[2];
	const char *which[2] = {"C-L1", "C-L2"};
	assert_int_equal(pipe(ready), 0);
	assert_int_equal(pipe(go), 0);
	for (int i = 0; i < 2; i++) {
		pid[i] = fork();
		assert_true(pid[i] >= 0);
		if (pid[i] == 0) {
			close(ready[0]);
			close(go[1]);
			till_process(f->dir, f->keys, "M1", which[i], i, ready[1], go[0]);
		}
	}
	close(ready[1]);
	close(go[0]);
	char b;
	for (int i = 0; i < 2; i++)
		assert_int_equal(read(ready[0], &b, 1), 1);
	close(go[1]);
	close(ready[0]);
	int ok = 0;
	for (int i = 0; i < 2; i++) {
		int status = 0;
		assert_int_equal(waitpid(pid[i], &status, 0), pid[i]);
		assert_true(WIFEXITED(status));
		/* the loser is refused by the locked count ("used_up") or, if it
		 * looked after the winner committed, by the rules ("member_limit") */
		int code = WEXITSTATUS(status);
		if (code != 0 && code != 1 && code != 3)
			fail_msg("till process failed on %s (exit %d)", which[i], code);
		ok += code == 0;
	}
	assert_int_equal(ok, 1);
	assert_int_equal(tu_sql_int(f->outbox_db, "SELECT count(*) FROM redemptions WHERE campaign = 'ONCE'"), 1);

	scrm_store_options o = {.device_id = "pos-01"};
	assert_int_equal(scrm_store_open(f->dir, &o, &f->s), SCRM_OK);
	open_h(f);
}

struct till_thread {
	fx *f;
	scrm_cache *h; /* the shared handle, or the thread's own */
	pthread_barrier_t *barrier;
	const char *coupon;
	int idx;
	int rc;
	char msg[256];
};

static void *till_thread_main(void *arg)
{
	struct till_thread *t = arg;
	char order[32];
	snprintf(order, sizeof(order), "T%d-%s", t->idx, t->coupon);
	redeem_args a = {.member = "M1", .coupon = t->coupon, .order = order, .basket = BASKET, .n = BASKET_N};
	pthread_barrier_wait(t->barrier);
	t->rc = redeem_on(t->h, t->f->s, &a, NULL, NULL);
	snprintf(t->msg, sizeof(t->msg), "%s", scrm_errmsg());
	return NULL;
}

/* Two threads sharing one store handle (a till app with two lanes): one
 * use each time, the other refused "used_up". Even rounds share one cache
 * handle too (its calls are serialised, so the loser sees the use in the
 * rules); odd rounds give each thread its own cache handle, so both pass
 * the rules and meet at the store's write lock. */
static void redeem_race_between_threads(void **state)
{
	fx *f = *state;
	world(f);
	char *p[RACE_ROUNDS];
	for (int i = 0; i < RACE_ROUNDS; i++) {
		char id[16];
		snprintf(id, sizeof(id), "C-T%02d", i);
		p[i] = cpn(id, "OPEN", "M1", "");
	}
	load_coupons(f, camp("OPEN", ""), p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11],
		     p[12], p[13], p[14], p[15], p[16], p[17], p[18], p[19], NULL);
	for (int i = 0; i < RACE_ROUNDS; i++) {
		char id[16];
		pthread_barrier_t barrier;
		pthread_t th[RACERS];
		struct till_thread t[RACERS];
		scrm_cache *own[RACERS] = {NULL};
		snprintf(id, sizeof(id), "C-T%02d", i);
		assert_int_equal(pthread_barrier_init(&barrier, NULL, RACERS), 0);
		for (int k = 0; k < RACERS; k++) {
			if (i % 2)
				assert_int_equal(scrm_cache_open(f->dir, f->keys, &own[k]), SCRM_OK);
			t[k] = (struct till_thread){
				.f = f, .h = i % 2 ? own[k] : f->h, .barrier = &barrier, .coupon = id, .idx = k};
			assert_int_equal(pthread_create(&th[k], NULL, till_thread_main, &t[k]), 0);
		}
		int ok = 0;
		for (int k = 0; k < RACERS; k++) {
			assert_int_equal(pthread_join(th[k], NULL), 0);
			if (t[k].rc == SCRM_OK) {
				ok++;
			} else if (t[k].rc != SCRM_E_REFUSED || strncmp(t[k].msg, "used_up:", 8) != 0) {
				fail_msg("thread %d on %s: rc %d: %s", k, id, t[k].rc, t[k].msg);
			}
		}
		pthread_barrier_destroy(&barrier);
		for (int k = 0; k < RACERS; k++)
			scrm_cache_close(own[k]);
		assert_int_equal(ok, 1);
	}
	assert_int_equal(tu_sql_int(f->outbox_db, "SELECT count(*) FROM redemptions"), RACE_ROUNDS);
	assert_int_equal(tu_sql_int(f->outbox_db, "SELECT count(*) FROM outbox WHERE kind = 'coupon_redeem'"),
			 RACE_ROUNDS);
}

/* ---- 4. central's verdicts -------------------------------------------- */

static cJSON *redemptions(fx *f, int limit)
{
	char *json = NULL;
	assert_int_equal(scrm_redemptions(f->s, limit, &json), SCRM_OK);
	return parse(json);
}

/* A redemption is pending until central rules on it; a rejected one is
 * listed with central's reason and still counts as a use (the customer had
 * the discount at the till: it is never handed out again). */
static void redemption_verdicts(void **state)
{
	fx *f = *state;
	world(f);
	load_coupons(f, camp("OPEN", ""), cpn("C-1", "OPEN", "M1", ",'uses':2"), NULL);

	cJSON *r = redemptions(f, 0);
	assert_int_equal(jint(r, "pending"), 0);
	assert_int_equal(jint(r, "accepted"), 0);
	assert_int_equal(jint(r, "rejected"), 0);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "redemptions")), 0);
	cJSON_Delete(r);

	scrm_redemption first, second;
	REDEEM_OK(f, &first, "M1", "C-1", "O-1");
	r = redemptions(f, 0);
	assert_int_equal(jint(r, "pending"), 1);
	assert_int_equal(jint(r, "rejected"), 0);
	const cJSON *e = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r, "redemptions"), 0);
	assert_string_equal(jstr(e, "id"), first.redemption_id);
	assert_string_equal(jstr(e, "verdict"), "pending");
	assert_string_equal(jstr(e, "coupon"), "C-1");
	assert_string_equal(jstr(e, "campaign"), "OPEN");
	assert_string_equal(jstr(e, "order_id"), "O-1");
	assert_int_equal(jint(e, "value"), 130);
	assert_int_equal(jint(e, "seq"), first.seq);
	cJSON_Delete(r);

	/* central: already spent elsewhere */
	outbox *ob = NULL;
	int changed = -1;
	assert_int_equal(outbox__open(f->dir, NULL, 0, &ob), SCRM_OK);
	assert_int_equal(outbox__verdict(ob, first.redemption_id, "rejected", "already_spent", "spent at store 12",
					 NOW + 1000, &changed),
			 SCRM_OK);
	assert_int_equal(changed, 1);
	/* a repeat changes nothing; an unknown id is not found */
	assert_int_equal(outbox__verdict(ob, first.redemption_id, "rejected", "already_spent", "spent at store 12",
					 NOW + 2000, &changed),
			 SCRM_OK);
	assert_int_equal(changed, 0);
	assert_int_equal(outbox__verdict(ob, "01890000-0000-7000-8000-000000000000", "accepted", NULL, NULL, NOW, &changed),
			 SCRM_E_NOT_FOUND);
	r = redemptions(f, 0);
	assert_int_equal(jint(r, "pending"), 0);
	assert_int_equal(jint(r, "rejected"), 1);
	assert_int_equal(jint(r, "accepted"), 0);
	e = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r, "redemptions"), 0);
	assert_string_equal(jstr(e, "verdict"), "rejected");
	assert_string_equal(jstr(e, "reason"), "already_spent");
	assert_string_equal(jstr(e, "detail"), "spent at store 12");
	assert_int_equal(jint(e, "verdict_ms"), NOW + 1000);
	cJSON_Delete(r);

	/* the rejected use still counts: one of the two uses is left */
	r = coupons_for(f, f->s, "M1", BASKET, BASKET_N, "GBP", NOW);
	expect_ok(r, "coupon:C-1", 130);
	cJSON_Delete(r);
	f->clk.wall_ms = NOW + 5000; /* the second reservation is the newer one */
	REDEEM_OK(f, &second, "M1", "C-1", "O-2");
	r = redemptions(f, 0);
	assert_int_equal(jint(r, "pending"), 1);
	assert_int_equal(jint(r, "rejected"), 1);
	const cJSON *list = cJSON_GetObjectItemCaseSensitive(r, "redemptions");
	assert_int_equal(cJSON_GetArraySize(list), 2);
	assert_string_equal(jstr(cJSON_GetArrayItem(list, 0), "id"), second.redemption_id); /* newest first */
	assert_string_equal(jstr(cJSON_GetArrayItem(list, 1), "id"), first.redemption_id);
	cJSON_Delete(r);
	r = redemptions(f, 1);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "redemptions")), 1);
	assert_int_equal(jint(r, "pending") + jint(r, "rejected"), 2); /* counts cover all */
	cJSON_Delete(r);
	/* pending again: spent */
	REDEEM_REFUSED(f, "M1", "C-1", "O-3", SCRM_E_REFUSED, "used_up");

	/* accepted: still a use */
	assert_int_equal(outbox__verdict(ob, second.redemption_id, "accepted", NULL, NULL, NOW + 6000, &changed), SCRM_OK);
	assert_int_equal(changed, 1);
	outbox__close(ob);
	r = redemptions(f, 0);
	assert_int_equal(jint(r, "pending"), 0);
	assert_int_equal(jint(r, "accepted"), 1);
	assert_int_equal(jint(r, "rejected"), 1);
	cJSON_Delete(r);
	REDEEM_REFUSED(f, "M1", "C-1", "O-4", SCRM_E_REFUSED, "used_up");
	r = coupons_for(f, f->s, "M1", BASKET, BASKET_N, "GBP", NOW);
	expect_refused(r, "coupon:C-1", "used_up");
	cJSON_Delete(r);
}

/* ---- 5. recommendations ------------------------------------------------ */

typedef struct reco_args {
	const char *member;
	const scrm_line *basket;
	size_t n_basket;
	int n;
	const char *guide;
	int64_t now; /* 0: NOW */
} reco_args;

static int reco_on(fx *f, scrm_store *s, const reco_args *a, char **json)
{
	scrm_reco_request rq = {.member_id = a->member,
				.basket = a->basket,
				.n_basket = a->n_basket,
				.n = a->n,
				.guide_id = a->guide,
				.now_ms = a->now ? a->now : NOW};
	return scrm_recommend(f->h, s, &rq, json);
}

/* scrm_recommend() (no store unless given), asserted to succeed. */
static cJSON *reco_s(fx *f, scrm_store *s, const reco_args *a)
{
	char *json = NULL;
	int rc = reco_on(f, s, a, &json);
	if (rc != SCRM_OK)
		print_error("scrm_recommend: %s\n", scrm_errmsg());
	assert_int_equal(rc, SCRM_OK);
	return parse(json);
}

#define RECO(f, ...) reco_s((f), NULL, &(reco_args){__VA_ARGS__})

/* The suggested SKUs, comma-separated, into buf. */
static const char *skus(const cJSON *r, char *buf, size_t cap)
{
	const cJSON *it;
	size_t n = 0;
	buf[0] = '\0';
	cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(r, "items"))
	{
		int w = snprintf(buf + n, cap - n, "%s%s", n ? "," : "", jstr(it, "sku"));
		assert_true(w > 0 && (size_t)w < cap - n);
		n += (size_t)w;
	}
	return buf;
}

#define assert_skus(r, want)                                                                                        \
	do {                                                                                                        \
		char b_[512];                                                                                       \
		assert_string_equal(skus((r), b_, sizeof(b_)), (want));                                              \
	} while (0)

static const cJSON *item(const cJSON *r, const char *sku)
{
	const cJSON *it = find(r, "items", "sku", sku);
	if (!it)
		print_error("%s not suggested\n", sku);
	assert_non_null(it);
	return it;
}

static void assert_score(const cJSON *r, const char *sku, double want)
{
	double got = jnum(item(r, sku), "score");
	if (fabs(got - want) > 0.00011) {
		print_error("%s: score %.5f, expected %.5f\n", sku, got, want);
		fail();
	}
}

static const char *reason_of(const cJSON *r, const char *sku)
{
	return jstr(item(r, sku), "reason");
}

/* sources of a suggestion, comma-separated */
static const char *sources(const cJSON *r, const char *sku, char *buf, size_t cap)
{
	const cJSON *it;
	size_t n = 0;
	buf[0] = '\0';
	cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(item(r, sku), "sources"))
	{
		int w = snprintf(buf + n, cap - n, "%s%s", n ? "," : "", it->valuestring);
		assert_true(w > 0 && (size_t)w < cap - n);
		n += (size_t)w;
	}
	return buf;
}

#define assert_sources(r, sku, want)                                                                                \
	do {                                                                                                        \
		char b_[128];                                                                                       \
		assert_string_equal(sources((r), (sku), b_, sizeof(b_)), (want));                                    \
	} while (0)

static int64_t filtered(const cJSON *r, const char *what)
{
	return jint(cJSON_GetObjectItemCaseSensitive(r, "filtered"), what);
}

/* A rule record {if}>{then}. */
static void rule_line(sbuf *b, const char *from, const char *to, double confidence)
{
	char line[400];
	snprintf(line, sizeof(line),
		 "%s{\"key\":\"%s>%s\",\"data\":{\"if\":\"%s\",\"then\":\"%s\",\"support\":0.01,\"confidence\":%.3f,"
		 "\"lift\":2}}",
		 b->len ? "\n" : "", from, to, from, to, confidence);
	sbuf__puts(b, line);
}

/* Rules from "IF>THEN:conf" specs, NULL-terminated. */
static void load_rules(fx *f, ...) __attribute__((sentinel));
static void load_rules(fx *f, ...)
{
	va_list ap;
	const char *spec;
	sbuf b;
	sbuf__init(&b);
	va_start(ap, f);
	while ((spec = va_arg(ap, const char *)) != NULL) {
		char from[65], to[65];
		double conf = 0;
		assert_int_equal(sscanf(spec, "%64[^>]>%64[^:]:%lf", from, to, &conf), 3);
		rule_line(&b, from, to, conf);
	}
	va_end(ap);
	load_raw(f, "rules", b.p);
	sbuf__free(&b);
}

static void reco_catalogue(fx *f)
{
	load(f, "catalogue",
	     "{'key':'A','data':{'sku':'A','name':'APPLE MUG','category':'kitchen','price':500}}\n"
	     "{'key':'B','data':{'sku':'B','name':'BLUE PLATE','category':'kitchen','price':1000}}\n"
	     "{'key':'C','data':{'sku':'C','name':'CHRISTMAS STAR','category':'christmas','price':305}}\n"
	     "{'key':'D','data':{'sku':'D','name':'DOOR MAT','category':'home','price':2000}}\n"
	     "{'key':'E','data':{'sku':'E','name':'EGG CUP','category':'kitchen','price':150}}\n"
	     "{'key':'F','data':{'sku':'F','name':'FORK SET','category':'kitchen','price':900}}\n"
	     "{'key':'Z','data':{'sku':'Z','name':'ZEBRA PRINT','category':'home','price':3000}}\n"
	     "{'key':'H1','data':{'sku':'H1','name':'HAT','category':'fashion'}}\n"
	     "{'key':'H2','data':{'sku':'H2','name':'HOOK','category':'home'}}\n"
	     "{'key':'X1','data':{'sku':'X1','name':'XMAS MUG','category':'kitchen'}}\n"
	     "{'key':'X2','data':{'sku':'X2','name':'XL TRAY','category':'kitchen'}}\n"
	     "{'key':'K1','data':{'sku':'K1','name':'KETTLE','category':'home_decor'}}\n"
	     "{'key':'K2','data':{'sku':'K2','name':'KNIFE','category':'home','tags':['eco','gift']}}\n"
	     "{'key':'K3','data':{'sku':'K3','name':'KEY RING','category':'home'}}\n"
	     "{'key':'R1','data':{'sku':'R1','name':'RUG','category':'home'}}\n"
	     "{'key':'R2','data':{'sku':'R2','name':'RIBBON','category':'gift'}}");
}

static const scrm_line B_AZ[] = {{.sku = "A", .qty = 1, .unit_price = 500}, {.sku = "Z", .qty = 1, .unit_price = 3000}};
static const scrm_line B_AB[] = {{.sku = "A", .qty = 1, .unit_price = 500}, {.sku = "B", .qty = 1, .unit_price = 1000}};
static const scrm_line B_AA[] = {{.sku = "A", .qty = 1, .unit_price = 500}, {.sku = "A", .qty = 2, .unit_price = 500}};
static const scrm_line B_A[] = {{.sku = "A", .qty = 1, .unit_price = 500}};

/* Basket rules rank by confidence; equal scores break on the SKU, not on
 * the order rules were found; what is in the basket is never suggested;
 * n caps the list; the same inputs give the same bytes. (Evidence from one
 * source combines as a noisy-OR: 1 - prod(1 - strength), times the
 * source's weight.) */
static void reco_basket_rules_rank(void **state)
{
	fx *f = *state;
	reco_catalogue(f);
	/* Z>D is found after A>E (basket order), and ties with it */
	load_rules(f, "A>B:0.9", "A>C:0.8", "A>E:0.5", "A>F:0.3", "Z>D:0.5", "B>C:0.1", NULL);

	cJSON *r = RECO(f, .basket = B_AZ, .n_basket = 2);
	assert_skus(r, "B,C,D,E,F");
	assert_score(r, "B", 0.9);
	assert_score(r, "C", 0.8);
	assert_score(r, "D", 0.5);
	assert_score(r, "E", 0.5);
	assert_score(r, "F", 0.3);
	assert_string_equal(reason_of(r, "B"), "goes with APPLE MUG in the basket");
	assert_string_equal(reason_of(r, "D"), "goes with ZEBRA PRINT in the basket");
	assert_sources(r, "B", "basket");
	const cJSON *b = item(r, "B");
	assert_string_equal(jstr(b, "name"), "BLUE PLATE");
	assert_string_equal(jstr(b, "category"), "kitchen");
	assert_int_equal(jint(b, "price"), 1000);
	assert_int_equal(filtered(r, "out_of_stock"), 0);
	assert_int_equal(filtered(r, "just_bought"), 0);
	/* anonymous: no member, no stage, nothing recorded */
	assert_false(has(r, "member_id"));
	assert_false(has(r, "stage"));
	assert_false(has(r, "next_action"));
	assert_false(has(r, "reco_id"));
	cJSON_Delete(r);

	/* deterministic */
	char *j1 = NULL, *j2 = NULL;
	reco_args a = {.basket = B_AZ, .n_basket = 2};
	assert_int_equal(reco_on(f, NULL, &a, &j1), SCRM_OK);
	assert_int_equal(reco_on(f, NULL, &a, &j2), SCRM_OK);
	assert_string_equal(j1, j2);
	scrm_free(j1);
	scrm_free(j2);

	/* B is in the basket: not suggested; C has evidence from A and B,
	 * combined as a noisy-OR (1 - 0.2 x 0.9), its reason the stronger (A) */
	r = RECO(f, .basket = B_AB, .n_basket = 2);
	assert_skus(r, "C,E,F");
	assert_score(r, "C", 1 - (1 - 0.8) * (1 - 0.1));
	assert_string_equal(reason_of(r, "C"), "goes with APPLE MUG in the basket");
	cJSON_Delete(r);
	/* a SKU twice in the basket counts once */
	r = RECO(f, .basket = B_AA, .n_basket = 2);
	assert_skus(r, "B,C,E,F");
	assert_score(r, "B", 0.9);
	cJSON_Delete(r);
	/* n */
	r = RECO(f, .basket = B_AZ, .n_basket = 2, .n = 2);
	assert_skus(r, "B,C");
	cJSON_Delete(r);
	r = RECO(f, .basket = B_AZ, .n_basket = 2, .n = 1);
	assert_skus(r, "B");
	cJSON_Delete(r);
	/* an empty basket and no store list: nothing to say */
	r = RECO(f, .n = 5);
	assert_skus(r, "");
	cJSON_Delete(r);
}

/* Stock of B (5), D (0) and E (-2). */
static void load_stock_bde(fx *f)
{
	load(f, "inventory",
	     "{'key':'B','data':{'sku':'B','qty':5,'as_of_ms':1800000000000}}\n"
	     "{'key':'D','data':{'sku':'D','qty':0,'as_of_ms':1800000000000}}\n"
	     "{'key':'E','data':{'sku':'E','qty':-2,'as_of_ms':1800000000000}}");
}

/* Member MJ: five orders, bought C three days ago and F twenty days ago. */
static void load_member_mj(fx *f)
{
	char *m = q("{'key':'MJ','data':{'member_id':'MJ','stats':{'orders':5,'first_purchase_ms':%lld,"
		    "'last_purchase_ms':%lld,'as_of_ms':%lld},"
		    "'recent':[{'ts':%lld,'order_id':'o2','skus':['C']},{'ts':%lld,'order_id':'o1','skus':['F']}]}}",
		    (long long)(NOW - 200 * DAY), (long long)(NOW - 3 * DAY), (long long)(NOW - DAY),
		    (long long)(NOW - 3 * DAY), (long long)(NOW - 20 * DAY));
	load_raw(f, "members", m);
	free(m);
}

/* Out of stock here (inventory qty <= 0) and just bought (within 14 days)
 * are dropped and counted; the daemon's policy can turn just-bought off. */
static void reco_filters_stock_and_just_bought(void **state)
{
	fx *f = *state;
	reco_catalogue(f);
	load_rules(f, "A>B:0.9", "A>C:0.8", "A>E:0.5", "A>F:0.3", "Z>D:0.5", NULL);
	load_stock_bde(f);
	load_member_mj(f);

	/* D (0) and E (-2) are out of stock; C has no inventory record: kept */
	cJSON *r = RECO(f, .basket = B_AZ, .n_basket = 2);
	assert_skus(r, "B,C,F");
	assert_int_equal(filtered(r, "out_of_stock"), 2);
	assert_int_equal(filtered(r, "just_bought"), 0);
	cJSON_Delete(r);
	/* MJ bought C three days ago (dropped) and F twenty days ago (kept) */
	r = RECO(f, .member = "MJ", .basket = B_AZ, .n_basket = 2);
	assert_skus(r, "B,F");
	assert_int_equal(filtered(r, "out_of_stock"), 2);
	assert_int_equal(filtered(r, "just_bought"), 1);
	assert_string_equal(jstr(r, "member_id"), "MJ");
	cJSON_Delete(r);
	/* the filter stops counting once the list is full */
	r = RECO(f, .member = "MJ", .basket = B_AZ, .n_basket = 2, .n = 1);
	assert_skus(r, "B");
	assert_int_equal(filtered(r, "just_bought"), 0);
	cJSON_Delete(r);

	/* central says MK buys C regularly: kept although just bought; F,
	 * suggested by central for another reason, is not */
	char *m = q("{'key':'MK','data':{'member_id':'MK','recent':[{'ts':%lld,'skus':['C','F']}]}}", (long long)(NOW - 2 * DAY));
	load_raw(f, "members", m);
	free(m);
	load(f, "recos",
	     "{'key':'MK','data':{'member_id':'MK','items':[{'sku':'C','score':0.9,'reason':'repeat'},"
	     "{'sku':'F','score':0.9,'reason':'similar'}]}}");
	r = RECO(f, .member = "MK");
	assert_skus(r, "C");
	assert_string_equal(reason_of(r, "C"), "buys it regularly");
	assert_int_equal(filtered(r, "just_bought"), 1);
	cJSON_Delete(r);
	/* ... and MJ (no such word from central) is as before */
	load_member_mj(f);

	/* guide.just_bought_days = 0 on the daemon: C comes back */
	f->policy = "{\"just_bought_ms\":0}";
	load_stock_bde(f);
	r = RECO(f, .member = "MJ", .basket = B_AZ, .n_basket = 2);
	assert_skus(r, "B,C,F");
	assert_int_equal(filtered(r, "just_bought"), 0);
	cJSON_Delete(r);
	/* a shorter window: 2 days, C (3 days ago) is no longer just bought */
	f->policy = "{\"just_bought_ms\":172800000}";
	load(f, "inventory", "{'key':'D','data':{'sku':'D','qty':0,'as_of_ms':1800000000000}}");
	r = RECO(f, .member = "MJ", .basket = B_AZ, .n_basket = 2);
	assert_skus(r, "B,C,E,F");
	assert_int_equal(filtered(r, "out_of_stock"), 1);
	cJSON_Delete(r);
}

/* The boosted head is the strongest 4N (at least 40); when filters empty
 * it, the list fills from the candidates after it, in their order. */
static void reco_list_fills_past_the_head(void **state)
{
	fx *f = *state;
	sbuf rules, inv;
	sbuf__init(&rules);
	sbuf__init(&inv);
	/* A>S01..S30 (0.89 .. 0.60) then Z>T01..T30 (0.49 .. 0.20): 60
	 * candidates; the first 40 (S01..S30, T01..T10) are out of stock */
	for (int i = 1; i <= 30; i++) {
		char to[16];
		snprintf(to, sizeof(to), "S%02d", i);
		rule_line(&rules, "A", to, 0.90 - i * 0.01);
		snprintf(to, sizeof(to), "T%02d", i);
		rule_line(&rules, "Z", to, 0.50 - i * 0.01);
	}
	for (int i = 1; i <= 40; i++) {
		char line[120];
		snprintf(line, sizeof(line), "%s{\"key\":\"%c%02d\",\"data\":{\"sku\":\"%c%02d\",\"qty\":0,\"as_of_ms\":1}}",
			 inv.len ? "\n" : "", i <= 30 ? 'S' : 'T', i <= 30 ? i : i - 30, i <= 30 ? 'S' : 'T',
			 i <= 30 ? i : i - 30);
		sbuf__puts(&inv, line);
	}
	load_raw(f, "rules", rules.p);
	load_raw(f, "inventory", inv.p);
	sbuf__free(&rules);
	sbuf__free(&inv);
	load(f, "catalogue",
	     "{'key':'Z','data':{'sku':'Z','name':'ZEBRA PRINT','category':'home'}}\n"
	     "{'key':'T11','data':{'sku':'T11','name':'TEAPOT','category':'kitchen','price':1800}}");

	cJSON *r = RECO(f, .basket = B_AZ, .n_basket = 2, .n = 3);
	assert_skus(r, "T11,T12,T13");
	assert_int_equal(filtered(r, "out_of_stock"), 40);
	assert_score(r, "T11", 0.39);
	/* looked up in the catalogue although past the head */
	assert_string_equal(jstr(item(r, "T11"), "name"), "TEAPOT");
	assert_int_equal(jint(item(r, "T11"), "price"), 1800);
	assert_string_equal(reason_of(r, "T12"), "goes with ZEBRA PRINT in the basket");
	cJSON_Delete(r);
	/* recorded as shown, in that order */
	char *json = NULL;
	assert_int_equal(reco_on(f, f->s, &(reco_args){.basket = B_AZ, .n_basket = 2, .n = 3, .guide = "g-07"}, &json),
			 SCRM_OK);
	r = parse(json);
	cJSON *shown = event_body(f, jstr(r, "reco_id"), "reco_shown");
	char *items = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(shown, "items"));
	char *basket = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(shown, "basket"));
	assert_string_equal(items, "[\"T11\",\"T12\",\"T13\"]");
	assert_string_equal(basket, "[\"A\",\"Z\"]");
	assert_false(has(shown, "member_id"));
	assert_false(has(shown, "stage"));
	free(items);
	free(basket);
	cJSON_Delete(shown);
	cJSON_Delete(r);
}

/* Rules from what the member bought weigh less the older the purchase
 * (half every 30 days), and not at all past a year; the reason says what
 * was bought and when. */
static void reco_history_decays_with_age(void **state)
{
	fx *f = *state;
	reco_catalogue(f);
	load_rules(f, "H1>X1:0.5", "H2>X2:0.5", NULL);
	char *m = q("{'key':'MH','data':{'member_id':'MH','stats':{'orders':2,'first_purchase_ms':%lld,"
		    "'last_purchase_ms':%lld,'as_of_ms':%lld},"
		    "'recent':[{'ts':%lld,'skus':['H1']},{'ts':%lld,'skus':['H2']}]}}\n"
		    "{'key':'MH1','data':{'member_id':'MH1','recent':[{'ts':%lld,'skus':['H1']}]}}\n"
		    "{'key':'MH2','data':{'member_id':'MH2','recent':[{'ts':%lld,'skus':['H1']}]}}\n"
		    "{'key':'MH3','data':{'member_id':'MH3','recent':[{'ts':%lld,'skus':['H1']}]}}\n"
		    "{'key':'MH4','data':{'member_id':'MH4','recent':[{'ts':%lld,'skus':['H2']}]}}",
		    (long long)(NOW - 100 * DAY), (long long)(NOW - DAY), (long long)NOW, (long long)(NOW - DAY),
		    (long long)(NOW - 100 * DAY), (long long)(NOW - DAY), (long long)(NOW - 100 * DAY),
		    (long long)(NOW - 400 * DAY), (long long)(NOW - HOUR));
	load_raw(f, "members", m);
	free(m);

	cJSON *r = RECO(f, .member = "MH");
	assert_skus(r, "X1,X2");
	assert_score(r, "X1", 0.6 * pow(0.5, 1.0 / 30.0) * 0.5);
	assert_score(r, "X2", 0.6 * pow(0.5, 100.0 / 30.0) * 0.5);
	assert_string_equal(reason_of(r, "X1"), "bought HAT 1 day ago \xe2\x86\x92 XMAS MUG");
	assert_string_equal(reason_of(r, "X2"), "bought HOOK 100 days ago \xe2\x86\x92 XL TRAY");
	assert_sources(r, "X1", "history");
	cJSON_Delete(r);

	/* the same rule, from a fresh and from an old purchase */
	r = RECO(f, .member = "MH1");
	double fresh = jnum(item(r, "X1"), "score");
	cJSON_Delete(r);
	r = RECO(f, .member = "MH2");
	double old = jnum(item(r, "X1"), "score");
	cJSON_Delete(r);
	assert_true(fresh > 5 * old);
	/* older than guide.history_days (365): feeds nothing */
	r = RECO(f, .member = "MH3");
	assert_skus(r, "");
	cJSON_Delete(r);
	/* bought today */
	r = RECO(f, .member = "MH4");
	assert_string_equal(reason_of(r, "X2"), "bought HOOK today \xe2\x86\x92 XL TRAY");
	cJSON_Delete(r);

	/* a long history never drowns the basket: five strong rules from
	 * yesterday's purchases are worth at most the history weight (0.6),
	 * less than one 0.7 rule from the basket */
	load_rules(f, "W1>X1:0.9", "W2>X1:0.9", "W3>X1:0.9", "W4>X1:0.9", "W5>X1:0.9", "A>X2:0.7", NULL);
	m = q("{'key':'MW','data':{'member_id':'MW','recent':[{'ts':%lld,'skus':['W1','W2','W3','W4','W5']}]}}",
	      (long long)(NOW - DAY));
	load_raw(f, "members", m);
	free(m);
	r = RECO(f, .member = "MW", .basket = B_A, .n_basket = 1);
	assert_skus(r, "X2,X1");
	assert_score(r, "X1", 0.6 * (1 - pow(1 - 0.9 * pow(0.5, 1.0 / 30.0), 5)));
	assert_sources(r, "X1", "history");
	cJSON_Delete(r);
}

/* Boosts: a liked category (x1.25, "likes <category>"), an item tag equal
 * to a member tag (x1.15), an item tag the member likes (x1.25). */
static void reco_boosts_from_prefs_and_tags(void **state)
{
	fx *f = *state;
	reco_catalogue(f);
	load_rules(f, "A>K1:0.5", "A>K2:0.5", "A>K3:0.55", NULL);
	load(f, "members",
	     "{'key':'MP','data':{'member_id':'MP','tags':['eco'],'prefs':{'categories':['home_decor']}}}\n"
	     "{'key':'MQ','data':{'member_id':'MQ','prefs':{'likes':['gift']}}}\n"
	     "{'key':'MX','data':{'member_id':'MX','tags':['vegan'],'prefs':{'categories':['garden']}}}");

	cJSON *r = RECO(f, .basket = B_A, .n_basket = 1);
	assert_skus(r, "K3,K1,K2");
	cJSON_Delete(r);
	r = RECO(f, .member = "MP", .basket = B_A, .n_basket = 1);
	assert_skus(r, "K1,K2,K3");
	assert_score(r, "K1", 0.5 * 1.25);
	assert_score(r, "K2", 0.5 * 1.15);
	assert_score(r, "K3", 0.55);
	assert_string_equal(reason_of(r, "K1"), "goes with APPLE MUG in the basket; likes home decor");
	assert_string_equal(reason_of(r, "K2"), "goes with APPLE MUG in the basket; eco");
	assert_string_equal(reason_of(r, "K3"), "goes with APPLE MUG in the basket");
	cJSON_Delete(r);
	r = RECO(f, .member = "MQ", .basket = B_A, .n_basket = 1);
	assert_skus(r, "K2,K3,K1");
	assert_score(r, "K2", 0.5 * 1.25);
	assert_contains(reason_of(r, "K2"), "likes gift");
	cJSON_Delete(r);
	/* nothing in common: the plain order */
	r = RECO(f, .member = "MX", .basket = B_A, .n_basket = 1);
	assert_skus(r, "K3,K1,K2");
	cJSON_Delete(r);
}

/* Central's per-member list (0.8 x score, its reason code in words) and
 * the store's bestsellers ("_store", 0.05 x score) as the cold start. */
static void reco_central_list_and_store_bestsellers(void **state)
{
	fx *f = *state;
	reco_catalogue(f);
	load(f, "members", "{'key':'MR','data':{'member_id':'MR'}}");
	sbuf b;
	sbuf__init(&b);
	sbuf__puts(&b, "{'key':'MR','data':{'member_id':'MR','items':[{'sku':'R1','score':0.9,'reason':'repeat'},"
		       "{'sku':'R2','score':0.5,'reason':'similar'},{'sku':'R3','score':0.4,'reason':'odd_code'},"
		       "{'sku':'R4','score':0.3},{'sku':'R5','score':7}]}}\n"
		       "{'key':'_store','data':{'member_id':'_store','items':[");
	for (int i = 1; i <= 12; i++) {
		char it[80];
		snprintf(it, sizeof(it), "%s{'sku':'P%02d','score':%.2f,'reason':'bestseller'}", i > 1 ? "," : "", i,
			 1.0 - i * 0.05);
		sbuf__puts(&b, it);
	}
	sbuf__puts(&b, ",{'sku':'R2','score':1}]}}");
	load(f, "recos", b.p);
	sbuf__free(&b);

	cJSON *r = RECO(f, .member = "MR");
	assert_skus(r, "R5,R1,R2,R3,R4,P01,P02,P03,P04,P05");
	assert_score(r, "R5", 0.8); /* a score above 1 counts as 1 */
	assert_score(r, "R1", 0.72);
	assert_score(r, "R2", 0.4 + 0.05);
	assert_string_equal(reason_of(r, "R1"), "buys it regularly");
	assert_string_equal(reason_of(r, "R2"), "similar to what they like");
	assert_string_equal(reason_of(r, "R3"), "odd_code");
	assert_string_equal(reason_of(r, "R4"), "recommended for them");
	assert_sources(r, "R1", "central");
	assert_sources(r, "R2", "central,popular");
	assert_string_equal(jstr(item(r, "R1"), "name"), "RUG");
	cJSON_Delete(r);

	/* anonymous, empty basket: the bestsellers, n = 0 means 10 */
	r = RECO(f);
	assert_skus(r, "R2,P01,P02,P03,P04,P05,P06,P07,P08,P09");
	assert_string_equal(reason_of(r, "P01"), "popular in this store");
	assert_sources(r, "P01", "popular");
	assert_score(r, "P01", 0.05 * 0.95);
	assert_false(has(r, "stage"));
	cJSON_Delete(r);
	r = RECO(f, .n = 3);
	assert_skus(r, "R2,P01,P02");
	cJSON_Delete(r);
	r = RECO(f, .n = 50);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "items")), 13);
	cJSON_Delete(r);
}

/* ---- 6. lifecycle and next best action -------------------------------- */

/* guide__stage() on a hand-built profile; the reason is copied to why. */
static const char *stage_of(const guide__policy *p, char *why, size_t cap, const char *format, ...)
	__attribute__((format(printf, 4, 5)));
static const char *stage_of(const guide__policy *p, char *why, size_t cap, const char *format, ...)
{
	char text[1024];
	va_list ap;
	va_start(ap, format);
	vsnprintf(text, sizeof(text), format, ap);
	va_end(ap);
	for (char *c = text; *c; c++)
		if (*c == '\'')
			*c = '"';
	cJSON *profile = cJSON_Parse(text);
	assert_non_null(profile);
	why[0] = '\0';
	const char *st = guide__stage(profile, NOW, p, why, cap);
	cJSON_Delete(profile);
	assert_non_null(st);
	return st;
}

/* stats with `orders` between first and last purchase (days before NOW) */
#define STATS(orders, first_d, last_d)                                                                              \
	"{'stats':{'orders':%d,'first_purchase_ms':%lld,'last_purchase_ms':%lld}}", (orders),                       \
		(long long)(NOW - (int64_t)(first_d) * DAY), (long long)(NOW - (int64_t)(last_d) * DAY)

static void lifecycle_stage_rules(void **state)
{
	(void)state;
	guide__policy p;
	char why[160];
	guide__policy_default(&p);
	assert_int_equal(p.new_days, 30);
	assert_int_equal(p.sleeping_days, 90);
	assert_int_equal(p.lost_days, 365);
	assert_int_equal(p.churn_factor_pct, 250);

	/* new: no purchase yet, or the first one within 30 days */
	assert_string_equal(stage_of(&p, why, sizeof(why), "{}"), "new");
	assert_string_equal(why, "no purchase yet");
	assert_string_equal(stage_of(&p, why, sizeof(why), "{'stats':{'orders':0}}"), "new");
	/* By central's stats: the stage, and the reason exactly (why_is) or
	 * in part (why_has) where it matters. */
	static const struct {
		int orders, first_d, last_d;
		const char *stage, *why_is, *why_has;
	} by_stats[] = {
		{1, 10, 10, "new", "first purchase 10 days ago", NULL},
		{4, 30, 2, "new", NULL, NULL},
		{5, 200, 10, "active", NULL, "5 orders"},
		/* churn risk: one purchase long ago, no second */
		{1, 40, 40, "churn_risk", NULL, "one purchase"},
		/* churn risk: a regular (every 10 days) silent for more than 250%
		 * of that; exactly 250% is not yet */
		{21, 230, 30, "churn_risk", NULL, "usually buys every 10 days"},
		{21, 226, 26, "churn_risk", NULL, NULL},
		{21, 225, 25, "active", NULL, NULL},
		/* ... and at least 14 days: a shopper every 2 days, silent for 10 */
		{51, 110, 10, "active", NULL, NULL},
		{51, 113, 13, "active", NULL, NULL},
		{51, 114, 14, "churn_risk", NULL, NULL},
		/* sleeping: more than 90 days */
		{5, 300, 91, "sleeping", "last purchase 91 days ago", NULL},
		{5, 300, 90, "active", NULL, NULL},
		/* lost: more than 365 days */
		{5, 900, 366, "lost", "last purchase 366 days ago", NULL},
		{5, 900, 365, "sleeping", NULL, NULL},
	};
	for (size_t i = 0; i < sizeof(by_stats) / sizeof(by_stats[0]); i++) {
		const char *st = stage_of(&p, why, sizeof(why), STATS(by_stats[i].orders, by_stats[i].first_d, by_stats[i].last_d));
		assert_string_equal(st, by_stats[i].stage);
		if (by_stats[i].why_is)
			assert_string_equal(why, by_stats[i].why_is);
		if (by_stats[i].why_has)
			assert_contains(why, by_stats[i].why_has);
	}
	/* a first purchase known only locally (central has none yet) */
	assert_string_equal(stage_of(&p, why, sizeof(why),
				     "{'stats':{'orders':1,'last_purchase_ms':%lld},"
				     "'local':{'purchases':[{'kind':'purchase','ts':%lld}]}}",
				     (long long)(NOW - 2 * DAY), (long long)(NOW - 2 * DAY)),
			    "new");
	/* a local return is not a first purchase */
	assert_string_equal(stage_of(&p, why, sizeof(why),
				     "{'stats':{'orders':1,'last_purchase_ms':%lld},"
				     "'local':{'purchases':[{'kind':'return','ts':%lld}]}}",
				     (long long)(NOW - 40 * DAY), (long long)(NOW - 2 * DAY)),
			    "churn_risk");

	/* the daemon's lifecycle.* settings; out-of-range values keep the default */
	guide__policy_parse("{\"new_days\":7,\"sleeping_days\":60,\"churn_factor_pct\":50}", &p);
	assert_int_equal(p.new_days, 7);
	assert_int_equal(p.sleeping_days, 60);
	assert_int_equal(p.churn_factor_pct, 250);
	assert_string_equal(stage_of(&p, why, sizeof(why), STATS(1, 10, 10)), "churn_risk");
	assert_string_equal(stage_of(&p, why, sizeof(why), STATS(5, 300, 61)), "sleeping");
	guide__policy_parse("not json", &p);
	assert_int_equal(p.new_days, 30);
}

/* A purchase at this till of one `sku` at `price`, in GBP, at wall clock
 * `at` (the clock stays there); the receipt into *rc unless NULL. */
static void record_one_line(fx *f, int64_t at, const char *order, const char *sku, int64_t price, const char *payment,
			    const char *member, const char *guide, const char *reco_id, scrm_receipt *rc)
{
	scrm_line line = {.sku = sku, .qty = 1, .unit_price = price};
	scrm_purchase pu = {.order_id = order, .lines = &line, .n_lines = 1, .total = price, .currency = "GBP",
			    .payment = payment, .member_id = member, .guide_id = guide, .reco_id = reco_id};
	f->clk.wall_ms = at;
	int r = scrm_record_purchase(f->s, &pu, rc);
	if (r != SCRM_OK)
		print_error("purchase: %s\n", scrm_errmsg());
	assert_int_equal(r, SCRM_OK);
}

static const cJSON *next_action(const cJSON *r)
{
	const cJSON *na = cJSON_GetObjectItemCaseSensitive(r, "next_action");
	assert_true(cJSON_IsObject(na));
	return na;
}

/* The script ids of the next action, comma-separated. */
static const char *script_ids(const cJSON *r, char *buf, size_t cap)
{
	const cJSON *it;
	size_t n = 0;
	buf[0] = '\0';
	cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(next_action(r), "scripts"))
	{
		int w = snprintf(buf + n, cap - n, "%s%s:%s", n ? "," : "", jstr(it, "id"), jstr(it, "for"));
		assert_true(w > 0 && (size_t)w < cap - n);
		n += (size_t)w;
	}
	return buf;
}

/* Stage, action, talk tracks and the coupon that goes with them, per
 * member; a purchase at this till wakes a sleeping member up at once. */
static void lifecycle_next_best_action(void **state)
{
	fx *f = *state;
	reco_catalogue(f);
	char *m = q(
		"{'key':'MN','data':{'member_id':'MN'}}\n"
		"{'key':'MF','data':{'member_id':'MF','stats':{'orders':1,'first_purchase_ms':%lld,'last_purchase_ms':%lld,"
		"'as_of_ms':%lld}}}\n"
		"{'key':'MA','data':{'member_id':'MA','stats':{'orders':5,'first_purchase_ms':%lld,'last_purchase_ms':%lld}}}\n"
		"{'key':'MC','data':{'member_id':'MC','stats':{'orders':1,'first_purchase_ms':%lld,'last_purchase_ms':%lld}}}\n"
		"{'key':'MS','data':{'member_id':'MS','tags':['VIP'],'stats':{'orders':5,'first_purchase_ms':%lld,"
		"'last_purchase_ms':%lld,'as_of_ms':%lld}}}\n"
		"{'key':'ML','data':{'member_id':'ML','stats':{'orders':2,'first_purchase_ms':%lld,'last_purchase_ms':%lld}}}",
		(long long)(NOW - 5 * DAY), (long long)(NOW - 5 * DAY), (long long)(NOW - 4 * DAY),
		(long long)(NOW - 200 * DAY), (long long)(NOW - 10 * DAY), (long long)(NOW - 40 * DAY),
		(long long)(NOW - 40 * DAY), (long long)(NOW - 400 * DAY), (long long)(NOW - 120 * DAY),
		(long long)(NOW - 119 * DAY), (long long)(NOW - 800 * DAY), (long long)(NOW - 400 * DAY));
	load_raw(f, "members", m);
	free(m);
	load(f, "scripts",
	     "{'key':'welcome','data':{'id':'welcome','stage':'new','title':'Hello','text':'Welcome to the club.'}}\n"
	     "{'key':'wake-up','data':{'id':'wake-up','stage':'sleeping','title':'Welcome back','text':'We missed you.'}}\n"
	     "{'key':'retain','data':{'id':'retain','stage':'churn_risk','text':'How was it?'}}\n"
	     "{'key':'win-back','data':{'id':'win-back','stage':'lost','text':'It has been a while.'}}\n"
	     "{'key':'cross','data':{'id':'cross','stage':'active','text':'Seen these?'}}\n"
	     "{'key':'vip','data':{'id':'vip','tag':'VIP','text':'Thank them for their loyalty.'}}");
	load_coupons(f, camp("WAKE", ",'stages':['sleeping'],'discount':{'kind':'amount','value':300}"),
		     camp("BIG", ",'discount':{'kind':'amount','value':1000}"),
		     camp("HELLO", ",'public':true,'stages':['new'],'discount':{'kind':'amount','value':100}"),
		     camp("ALL", ",'public':true,'discount':{'kind':'amount','value':5000}"),
		     camp("SMALL", ",'discount':{'kind':'amount','value':50}"), cpn("C-BIG", "BIG", "MS", ""),
		     cpn("C-WAKE", "WAKE", "MS", ""), cpn("C-L1", "SMALL", "ML", ""), cpn("C-L2", "BIG", "ML", ""), NULL);
	char buf[256];

	cJSON *r = RECO(f, .member = "MN");
	assert_string_equal(jstr(r, "stage"), "new");
	assert_string_equal(jstr(r, "stage_reason"), "no purchase yet");
	assert_string_equal(jstr(next_action(r), "action"), "welcome");
	assert_string_equal(script_ids(r, buf, sizeof(buf)), "welcome:stage");
	const cJSON *sc = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(next_action(r), "scripts"), 0);
	assert_string_equal(jstr(sc, "title"), "Hello");
	assert_string_equal(jstr(sc, "text"), "Welcome to the club.");
	const cJSON *cp = cJSON_GetObjectItemCaseSensitive(next_action(r), "coupon");
	assert_non_null(cp);
	assert_string_equal(jstr(cp, "key"), "campaign:HELLO"); /* aimed at new members, before ALL */
	assert_string_equal(jstr(cJSON_GetObjectItemCaseSensitive(cp, "discount"), "kind"), "amount");
	cJSON_Delete(r);

	/* MN's first purchase, made at this till: followed up at once */
	record_one_line(f, NOW - 2 * HOUR, "L-0", "C", 305, "cash", "MN", NULL, NULL, NULL);
	f->clk.wall_ms = NOW;
	r = reco_s(f, f->s, &(reco_args){.member = "MN"});
	assert_string_equal(jstr(r, "stage"), "new");
	assert_string_equal(jstr(r, "stage_reason"), "first purchase 0 days ago");
	assert_string_equal(jstr(next_action(r), "action"), "first_purchase_follow_up");
	cJSON_Delete(r);

	/* A member's stage, the next action, and where it matters the talk
	 * tracks and the coupon offered (its key). */
	static const struct {
		const char *member, *stage, *action, *scripts, *coupon;
	} by_stage[] = {
		{"MF", "new", "first_purchase_follow_up", NULL, NULL},
		/* HELLO is for new members: the public campaign for everyone */
		{"MA", "active", "cross_sell", "cross:stage", "campaign:ALL"},
		{"MC", "churn_risk", "retain", "retain:stage", NULL},
		/* none aimed at the stage: a member coupon before a public
		 * campaign, then key order (protocol.md, not the most valuable) */
		{"ML", "lost", "win_back", "win-back:stage", "coupon:C-L1"},
	};
	for (size_t i = 0; i < sizeof(by_stage) / sizeof(by_stage[0]); i++) {
		r = RECO(f, .member = by_stage[i].member);
		assert_string_equal(jstr(r, "stage"), by_stage[i].stage);
		assert_string_equal(jstr(next_action(r), "action"), by_stage[i].action);
		if (by_stage[i].scripts)
			assert_string_equal(script_ids(r, buf, sizeof(buf)), by_stage[i].scripts);
		if (by_stage[i].coupon)
			assert_string_equal(jstr(cJSON_GetObjectItemCaseSensitive(next_action(r), "coupon"), "key"),
					    by_stage[i].coupon);
		cJSON_Delete(r);
	}

	/* sleeping: wake up, the stage's and the tag's talk tracks, and the
	 * coupon aimed at sleepers rather than the bigger one */
	r = RECO(f, .member = "MS");
	assert_string_equal(jstr(r, "stage"), "sleeping");
	assert_string_equal(jstr(r, "stage_reason"), "last purchase 120 days ago");
	assert_string_equal(jstr(next_action(r), "action"), "wake_up");
	assert_string_equal(script_ids(r, buf, sizeof(buf)), "wake-up:stage,vip:tag");
	cp = cJSON_GetObjectItemCaseSensitive(next_action(r), "coupon");
	assert_non_null(cp);
	assert_string_equal(jstr(cp, "coupon"), "C-WAKE");
	assert_string_equal(jstr(cp, "campaign"), "WAKE");
	assert_int_equal(jint(cp, "value"), 300);
	cJSON_Delete(r);

	/* an hour ago MS bought at this till (offline: central knows nothing) */
	record_one_line(f, NOW - HOUR, "L-1", "A", 500, "card", "MS", NULL, NULL, NULL);
	f->clk.wall_ms = NOW;
	r = reco_s(f, f->s, &(reco_args){.member = "MS"});
	assert_string_equal(jstr(r, "stage"), "active");
	assert_string_equal(jstr(next_action(r), "action"), "cross_sell");
	assert_string_equal(script_ids(r, buf, sizeof(buf)), "cross:stage,vip:tag");
	cp = cJSON_GetObjectItemCaseSensitive(next_action(r), "coupon");
	assert_non_null(cp);
	assert_string_equal(jstr(cp, "coupon"), "C-BIG"); /* WAKE no longer applies */
	/* just bought: A is not suggested again, and the purchase feeds rules */
	cJSON_Delete(r);
	load_rules(f, "A>B:0.5", "B>A:0.5", NULL);
	r = reco_s(f, f->s, &(reco_args){.member = "MS", .basket = (scrm_line[]){{.sku = "B", .qty = 1}}, .n_basket = 1});
	assert_skus(r, "");
	assert_int_equal(filtered(r, "just_bought"), 1);
	cJSON_Delete(r);
	r = reco_s(f, f->s, &(reco_args){.member = "MS"});
	assert_skus(r, "B");
	assert_string_equal(reason_of(r, "B"), "bought APPLE MUG today \xe2\x86\x92 BLUE PLATE");
	cJSON_Delete(r);
}

/* ---- 7. attribution ----------------------------------------------------- */

/* A purchase of member `member` at the fake wall clock `at`; guide_id and
 * reco_id as given (NULL = absent). Returns the stored body. */
static cJSON *buy(fx *f, int64_t at, const char *order, const char *member, const char *guide, const char *reco_id)
{
	scrm_receipt rc;
	record_one_line(f, at, order, "B", 1000, "cash", member, guide, reco_id, &rc);
	return event_body(f, rc.event_id, "purchase");
}

/* The list shown to guide `guide` for `member` at wall clock `at`: its
 * reco_id (malloc'd). */
static char *show(fx *f, int64_t at, const char *member, const char *guide)
{
	f->clk.wall_ms = at;
	cJSON *r = reco_s(f, f->s, &(reco_args){.member = member, .guide = guide, .now = at});
	const char *id = jstr(r, "reco_id");
	assert_non_null(id);
	assert_int_equal(strlen(id), 36);
	assert_true(jint(r, "seq") > 0);
	char *out = strdup(id);
	cJSON_Delete(r);
	return out;
}

static void assert_attributed(const cJSON *body, const char *guide, const char *reco_id)
{
	assert_string_equal(jstr(body, "guide_id"), guide);
	assert_string_equal(jstr(body, "reco_id"), reco_id);
	assert_string_equal(jstr(body, "attributed"), "auto");
}

static void assert_not_attributed(const cJSON *body)
{
	assert_false(has(body, "attributed"));
	assert_false(has(body, "reco_id"));
}

/* A list shown by a guide (reco_shown) credits the member's next purchase
 * on this device within the attribution window, in the sale's own
 * transaction; not another member's, not outside the window, and never a
 * sale that already names its recommendation. */
/* Review findings: a till retrying a redemption for the same sale gets the
 * same redemption (nothing spent twice); a discount the agent does not know
 * is never granted; a discount worth nothing does not spend the coupon;
 * attribution_window_ms 0 turns attribution off. */
static void review_redeem_retry_discounts_window(void **state)
{
	fx *f = *state;
	world(f);
	load_coupons(f, camp("OPEN", ""), camp("ODD", ",'discount':{'kind':'free_gift','value':999}"),
		     camp("NONE", ",'discount':{'kind':'amount','value':0}"), cpn("C-1", "OPEN", "M1", ",'uses':3"),
		     cpn("C-ODD", "ODD", "M1", ""), cpn("C-NONE", "NONE", "M1", ""), NULL);
	scrm_redemption a, b;
	int64_t rows = outbox_rows(f);
	REDEEM_OK(f, &a, "M1", "C-1", "O-1");
	REDEEM_OK(f, &b, "M1", "C-1", "O-1");
	assert_string_equal(a.redemption_id, b.redemption_id);
	assert_int_equal(a.seq, b.seq);
	assert_int_equal(a.value, b.value);
	assert_int_equal(outbox_rows(f), rows + 1);
	/* another sale: a second use */
	REDEEM_OK(f, &b, "M1", "C-1", "O-2");
	assert_string_not_equal(a.redemption_id, b.redemption_id);
	assert_int_equal(outbox_rows(f), rows + 2);

	cJSON *r = coupons_for(f, f->s, "M1", BASKET, BASKET_N, "GBP", NOW);
	expect_refused(r, "coupon:C-ODD", "bad_discount");
	expect_refused(r, "coupon:C-NONE", "bad_discount");
	cJSON_Delete(r);
	REDEEM_REFUSED(f, "M1", "C-ODD", "O-3", SCRM_E_REFUSED, "bad_discount");
	/* in scope but priced 0: nothing to grant, nothing spent */
	static const scrm_line free_basket[] = {{.sku = "A", .qty = 1, .unit_price = 0}};
	assert_refused(REDEEM(f, NULL, NULL, .member = "M1", .coupon = "C-1", .order = "O-4", .basket = free_basket,
			      .n = 1),
		       SCRM_E_REFUSED, "no_value");
	assert_int_equal(outbox_rows(f), rows + 2);

	/* window 0: off */
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(f->outbox_db, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "INSERT OR REPLACE INTO settings(k, v) VALUES ('attribution_window_ms', 0)", NULL,
				      NULL, NULL),
			 SQLITE_OK);
	sqlite3_close(db);
	load(f, "recos", "{'key':'_store','data':{'member_id':'_store','items':[{'sku':'B','score':1}]}}");
	char *reco = show(f, NOW, "M1", "g-07");
	cJSON *p = buy(f, NOW, "O-9", "M1", NULL, NULL);
	assert_false(has(p, "guide_id"));
	assert_false(has(p, "attributed"));
	cJSON_Delete(p);
	free(reco);
}

static void attribution_of_purchases(void **state)
{
	fx *f = *state;
	world(f);
	load(f, "recos", "{'key':'_store','data':{'member_id':'_store','items':[{'sku':'B','score':1},{'sku':'D','score':0.5}]}}");

	/* shown: one reco_shown event with what was on the screen */
	char *reco = show(f, NOW, "M1", "g-07");
	cJSON *shown = event_body(f, reco, "reco_shown");
	assert_string_equal(jstr(shown, "guide_id"), "g-07");
	assert_string_equal(jstr(shown, "member_id"), "M1");
	assert_string_equal(jstr(shown, "stage"), "active");
	const cJSON *items = cJSON_GetObjectItemCaseSensitive(shown, "items");
	assert_int_equal(cJSON_GetArraySize(items), 2);
	assert_string_equal(cJSON_GetArrayItem(items, 0)->valuestring, "B");
	cJSON_Delete(shown);
	char sql[200];
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM reco_shown WHERE reco_id = '%s' AND guide_id = 'g-07'"
				   " AND member_id = 'M1'", reco);
	assert_int_equal(tu_sql_int(f->outbox_db, sql), 1);

	/* a minute later M1 buys, no guide named: credited to g-07's list */
	cJSON *b = buy(f, NOW + 60000, "O-1", "M1", NULL, NULL);
	assert_attributed(b, "g-07", reco);
	cJSON_Delete(b);
	/* naming the same guide: credited too */
	b = buy(f, NOW + 61000, "O-2", "M1", "g-07", NULL);
	assert_attributed(b, "g-07", reco);
	cJSON_Delete(b);
	/* another guide made this sale: not credited to g-07's list */
	b = buy(f, NOW + 62000, "O-3", "M1", "g-99", NULL);
	assert_string_equal(jstr(b, "guide_id"), "g-99");
	assert_not_attributed(b);
	cJSON_Delete(b);
	/* another member */
	b = buy(f, NOW + 63000, "O-4", "M2", NULL, NULL);
	assert_false(has(b, "guide_id"));
	assert_not_attributed(b);
	cJSON_Delete(b);
	/* no member */
	b = buy(f, NOW + 64000, "O-5", NULL, NULL, NULL);
	assert_false(has(b, "guide_id"));
	assert_not_attributed(b);
	cJSON_Delete(b);
	/* the sale names its recommendation: left as it is */
	b = buy(f, NOW + 65000, "O-6", "M1", NULL, "R-FROM-POS");
	assert_string_equal(jstr(b, "reco_id"), "R-FROM-POS");
	assert_false(has(b, "guide_id"));
	assert_false(has(b, "attributed"));
	cJSON_Delete(b);
	/* the window (default 2 hours) is inclusive; past it, nothing */
	b = buy(f, NOW + 2 * HOUR, "O-7", "M1", NULL, NULL);
	assert_attributed(b, "g-07", reco);
	cJSON_Delete(b);
	b = buy(f, NOW + 2 * HOUR + 1, "O-8", "M1", NULL, NULL);
	assert_not_attributed(b);
	assert_false(has(b, "guide_id"));
	cJSON_Delete(b);
	/* a purchase before the list was shown (clock order) is not credited */
	b = buy(f, NOW - 1000, "O-9", "M1", NULL, NULL);
	assert_not_attributed(b);
	cJSON_Delete(b);

	/* the latest list wins */
	char *r2 = show(f, NOW + 3 * HOUR, "M1", "g-07");
	char *r3 = show(f, NOW + 3 * HOUR + 1000, "M1", "g-08");
	b = buy(f, NOW + 3 * HOUR + 2000, "O-10", "M1", NULL, NULL);
	assert_attributed(b, "g-08", r3);
	cJSON_Delete(b);
	b = buy(f, NOW + 3 * HOUR + 3000, "O-11", "M1", "g-07", NULL);
	assert_attributed(b, "g-07", r2);
	cJSON_Delete(b);

	/* the daemon's attribution.window_ms, through the settings table */
	tu_sql_exec(f->outbox_db, "INSERT OR REPLACE INTO settings(k, v) VALUES ('attribution_window_ms', 1)");
	char *r4 = show(f, NOW + 5 * HOUR, "M1", "g-07");
	b = buy(f, NOW + 5 * HOUR + 1, "O-12", "M1", NULL, NULL);
	assert_attributed(b, "g-07", r4);
	cJSON_Delete(b);
	b = buy(f, NOW + 5 * HOUR + 2, "O-13", "M1", NULL, NULL);
	assert_not_attributed(b);
	cJSON_Delete(b);

	/* nothing is recorded without a guide, or without a store */
	int64_t rows = outbox_rows(f);
	cJSON *r = reco_s(f, f->s, &(reco_args){.member = "M1"});
	assert_false(has(r, "reco_id"));
	cJSON_Delete(r);
	r = reco_s(f, NULL, &(reco_args){.member = "M1", .guide = "g-07"});
	assert_false(has(r, "reco_id"));
	cJSON_Delete(r);
	/* nor when the list is empty (nothing a sale could follow) */
	load(f, "recos", "{'key':'M9','data':{'member_id':'M9','items':[]}}");
	r = reco_s(f, f->s, &(reco_args){.member = "M1", .guide = "g-07"});
	assert_skus(r, "");
	assert_false(has(r, "reco_id"));
	cJSON_Delete(r);
	assert_int_equal(outbox_rows(f), rows);
	free(reco);
	free(r2);
	free(r3);
	free(r4);
}

/* ---- 8. bad input ------------------------------------------------------- */

/* Malformed requests are refused with SCRM_E_INVALID naming the field (an
 * unknown member or coupon: SCRM_E_NOT_FOUND), and write nothing. */
static void bad_input_is_refused_and_writes_nothing(void **state)
{
	fx *f = *state;
	world(f);
	load(f, "recos", "{'key':'_store','data':{'member_id':'_store','items':[{'sku':'B','score':1}]}}");
	load_coupons(f, camp("OPEN", ""), cpn("C-1", "OPEN", "M1", ""), NULL);
	int64_t rows = outbox_rows(f);
	char *json = (char *)"untouched";
	static const scrm_line zero_qty[] = {{.sku = "A", .qty = 0, .unit_price = 500}};
	static const scrm_line neg_price[] = {{.sku = "A", .qty = 1, .unit_price = -1}};
	static const scrm_line big_discount[] = {{.sku = "A", .qty = 1, .unit_price = 500, .discount = 501}};
	static const scrm_line no_sku[] = {{.sku = NULL, .qty = 1, .unit_price = 500}};
	static const scrm_line empty_sku[] = {{.sku = "", .qty = 1, .unit_price = 500}};

	/* scrm_recommend */
	assert_refused(reco_on(f, f->s, &(reco_args){.member = "bad id", .guide = "g-07"}, &json), SCRM_E_INVALID,
		       "member_id");
	assert_null(json);
	assert_refused(reco_on(f, f->s, &(reco_args){.member = "", .guide = "g-07"}, &json), SCRM_E_INVALID, "member_id");
	/* a member the cache does not know yet: a list all the same, flagged
	 * (no guide here, so nothing is recorded) */
	assert_int_equal(reco_on(f, f->s, &(reco_args){.member = "M-NOPE"}, &json), SCRM_OK);
	assert_non_null(strstr(json, "\"member_known\":false"));
	scrm_free(json);
	json = NULL;
	assert_refused(reco_on(f, f->s, &(reco_args){.member = "M1", .n = 51, .guide = "g-07"}, &json), SCRM_E_INVALID,
		       "n");
	assert_refused(reco_on(f, f->s, &(reco_args){.member = "M1", .guide = "g\t07"}, &json), SCRM_E_INVALID,
		       "guide_id");
	assert_refused(reco_on(f, f->s, &(reco_args){.member = "M1", .basket = no_sku, .n_basket = 1, .guide = "g-07"},
			       &json),
		       SCRM_E_INVALID, "basket[0].sku");
	assert_refused(reco_on(f, f->s, &(reco_args){.basket = empty_sku, .n_basket = 1, .guide = "g-07"}, &json),
		       SCRM_E_INVALID, "basket[0].sku");
	assert_refused(reco_on(f, f->s, &(reco_args){.basket = NULL, .n_basket = 2, .guide = "g-07"}, &json),
		       SCRM_E_INVALID, "basket");
	assert_refused(scrm_recommend(f->h, f->s, NULL, &json), SCRM_E_INVALID, "cache/request/json");
	/* n = 50 is the most; a qty of 0 is fine for suggestions (no money) */
	cJSON *r = reco_s(f, NULL, &(reco_args){.member = "M1", .n = 50, .basket = zero_qty, .n_basket = 1});
	cJSON_Delete(r);

	/* scrm_coupons_for */
	scrm_coupon_request cq = {.member_id = "bad id", .basket = BASKET, .n_basket = BASKET_N, .currency = "GBP",
				  .now_ms = NOW};
	assert_refused(scrm_coupons_for(f->h, f->s, &cq, &json), SCRM_E_INVALID, "member_id");
	assert_null(json);
	cq.member_id = "M-NOPE"; /* not in the cache yet: public campaigns still apply */
	assert_int_equal(scrm_coupons_for(f->h, f->s, &cq, &json), SCRM_OK);
	assert_non_null(strstr(json, "\"member_known\":false"));
	scrm_free(json);
	json = NULL;
	cq.member_id = "M1";
	cq.basket = zero_qty;
	cq.n_basket = 1;
	assert_refused(scrm_coupons_for(f->h, f->s, &cq, &json), SCRM_E_INVALID, "basket[0].qty");
	cq.basket = neg_price;
	assert_refused(scrm_coupons_for(f->h, f->s, &cq, &json), SCRM_E_INVALID, "basket[0].unit_price");
	cq.basket = big_discount;
	assert_refused(scrm_coupons_for(f->h, f->s, &cq, &json), SCRM_E_INVALID, "basket[0].discount");
	cq.basket = BASKET;
	cq.n_basket = BASKET_N;
	const char *bad_currency[] = {"gbp", "GB", "GBPX", "G1P", ""};
	for (size_t i = 0; i < sizeof(bad_currency) / sizeof(bad_currency[0]); i++) {
		cq.currency = bad_currency[i];
		assert_refused(scrm_coupons_for(f->h, f->s, &cq, &json), SCRM_E_INVALID, "currency");
	}

	/* scrm_redeem */
	const redeem_args base = {.member = "M1", .coupon = "C-1", .order = "O-1", .basket = BASKET, .n = BASKET_N};
	redeem_args a;
#define BAD_REDEEM(code, field, change)                                                                             \
	do {                                                                                                        \
		a = base;                                                                                           \
		change;                                                                                             \
		assert_refused(redeem_on(f->h, f->s, &a, NULL, &json), (code), (field));                             \
		assert_null(json);                                                                                  \
	} while (0)
	BAD_REDEEM(SCRM_E_INVALID, "member_id", a.member = "bad id");
	BAD_REDEEM(SCRM_E_INVALID, "member_id", a.member = "");
	BAD_REDEEM(SCRM_E_REFUSED, "wrong_member", a.member = "M-NOPE"); /* not M1's coupon */
	BAD_REDEEM(SCRM_E_INVALID, "coupon", a.coupon = NULL);
	BAD_REDEEM(SCRM_E_INVALID, "coupon", a.coupon = "C 1");
	BAD_REDEEM(SCRM_E_NOT_FOUND, "coupon", a.coupon = "C-NOPE");
	BAD_REDEEM(SCRM_E_INVALID, "order_id", a.order = NULL);
	BAD_REDEEM(SCRM_E_INVALID, "order_id", a.order = "");
	BAD_REDEEM(SCRM_E_INVALID, "guide_id", a.guide = "g\t07");
	BAD_REDEEM(SCRM_E_INVALID, "currency", a.currency = "gbp");
	BAD_REDEEM(SCRM_E_INVALID, "currency", a.currency = "GBPX");
	BAD_REDEEM(SCRM_E_INVALID, "basket", a.n = 0);
	BAD_REDEEM(SCRM_E_INVALID, "basket[0].qty", (a.basket = zero_qty, a.n = 1));
	BAD_REDEEM(SCRM_E_INVALID, "basket[0].sku", (a.basket = no_sku, a.n = 1));
	BAD_REDEEM(SCRM_E_INVALID, "basket[0].discount", (a.basket = big_discount, a.n = 1));
#undef BAD_REDEEM
	redeem_args ok = {.member = "M1", .coupon = "C-1", .order = "O-1", .basket = BASKET, .n = BASKET_N};
	assert_refused(redeem_on(f->h, NULL, &ok, NULL, &json), SCRM_E_INVALID, "store");
	scrm_redeem_request no_currency = {.member_id = "M1", .coupon = "C-1", .basket = BASKET, .n_basket = BASKET_N,
					   .order_id = "O-1", .now_ms = NOW};
	assert_refused(scrm_redeem(f->h, f->s, &no_currency, NULL, &json), SCRM_E_INVALID, "currency");
	assert_null(json);

	/* nothing was written by any of them */
	assert_int_equal(outbox_rows(f), rows);
	assert_int_equal(tu_sql_int(f->outbox_db, "SELECT count(*) FROM redemptions"), 0);
	assert_int_equal(tu_sql_int(f->outbox_db, "SELECT count(*) FROM reco_shown"), 0);
	/* and the coupon is still there to be spent */
	assert_int_equal(redeem_on(f->h, f->s, &ok, NULL, NULL), SCRM_OK);
}

/* Once central has seen (and accepted) a use made on this device, its
 * counters include it: coupon "used" and the member's "coupon_uses". The
 * device must not count that use a second time from its own ledger — a
 * two-use coupon used once is not used up, a campaign with a limit of two
 * used once is not at its limit. (protocol.md, Records for the guide
 * tablet: `used` = "uses central has seen"; `coupon_uses` = "how many times
 * central has seen the member use each campaign".) */
static void accepted_use_is_not_counted_twice(void **state)
{
	fx *f = *state;
	world(f);
	load_coupons(f, camp("OPEN", ""), camp("LIM2", ",'per_member_limit':2"), cpn("C-2USE", "OPEN", "M1", ",'uses':2"),
		     cpn("C-LA", "LIM2", "M1", ""), cpn("C-LB", "LIM2", "M1", ""), NULL);
	scrm_redemption r1, r2;
	REDEEM_OK(f, &r1, "M1", "C-2USE", "O-1");
	REDEEM_OK(f, &r2, "M1", "C-LA", "O-2");
	/* before central has seen them: one use of each left */
	cJSON *r = coupons_for(f, f->s, "M1", BASKET, BASKET_N, "GBP", NOW);
	expect_ok(r, "coupon:C-2USE", 130);
	expect_ok(r, "coupon:C-LB", 130);
	cJSON_Delete(r);

	/* central accepts both and its next deltas carry the new counts */
	outbox *ob = NULL;
	int changed = 0;
	assert_int_equal(outbox__open(f->dir, NULL, 0, &ob), SCRM_OK);
	assert_int_equal(outbox__verdict(ob, r1.redemption_id, "accepted", NULL, NULL, NOW + 1000, &changed), SCRM_OK);
	assert_int_equal(outbox__verdict(ob, r2.redemption_id, "accepted", NULL, NULL, NOW + 1000, &changed), SCRM_OK);
	outbox__close(ob);
	/* Without the ids central counted, the device cannot tell its own use
	 * inside central's count from a new one: it counts it (safe side). */
	load_coupons(f, camp("OPEN", ""), camp("LIM2", ",'per_member_limit':2"),
		     cpn("C-2USE", "OPEN", "M1", ",'uses':2,'used':1"), cpn("C-LA", "LIM2", "M1", ",'used':1"),
		     cpn("C-LB", "LIM2", "M1", ""), NULL);
	r = coupons_for(f, f->s, "M1", BASKET, BASKET_N, "GBP", NOW + 2000);
	expect_refused(r, "coupon:C-2USE", "used_up");
	cJSON_Delete(r);
	/* With them (protocol.md: coupon used_ids, member coupon_use_ids). */
	char x1[160], x2[160];
	snprintf(x1, sizeof(x1), ",'uses':2,'used':1,'used_ids':['%s']", r1.redemption_id);
	snprintf(x2, sizeof(x2), ",'used':1,'used_ids':['%s']", r2.redemption_id);
	load_coupons(f, camp("OPEN", ""), camp("LIM2", ",'per_member_limit':2"), cpn("C-2USE", "OPEN", "M1", x1),
		     cpn("C-LA", "LIM2", "M1", x2), cpn("C-LB", "LIM2", "M1", ""), NULL);
	char *m = q("{'key':'M1','data':{'member_id':'M1','tier':'gold','tags':['VIP'],"
		    "'coupon_uses':{'OPEN':1,'LIM2':1},'coupon_use_ids':['%s','%s'],"
		    "'stats':{'orders':10,'first_purchase_ms':%lld,'last_purchase_ms':%lld,'as_of_ms':%lld}}}",
		    r1.redemption_id, r2.redemption_id, (long long)(NOW - 300 * DAY), (long long)(NOW - 5 * DAY),
		    (long long)(NOW - DAY));
	load_raw(f, "members", m);
	free(m);

	/* still one use of each left (verdicts read before asserting, so a
	 * failure leaks nothing) */
	r = coupons_for(f, f->s, "M1", BASKET, BASKET_N, "GBP", NOW + 2000);
	expect_refused(r, "coupon:C-LA", "used_up");
	char got_2use[64], got_lb[64];
	verdict_of(r, "coupon:C-2USE", got_2use, sizeof(got_2use));
	verdict_of(r, "coupon:C-LB", got_lb, sizeof(got_lb));
	cJSON_Delete(r);
	assert_string_equal(got_2use, "eligible 130");
	assert_string_equal(got_lb, "eligible 130");
	int rc = REDEEM(f, NULL, NULL, .member = "M1", .coupon = "C-2USE", .order = "O-3", .basket = BASKET,
			.n = BASKET_N, .now = NOW + 2000);
	if (rc)
		print_error("second use of C-2USE: %s\n", scrm_errmsg());
	assert_int_equal(rc, SCRM_OK);
	rc = REDEEM(f, NULL, NULL, .member = "M1", .coupon = "C-LB", .order = "O-4", .basket = BASKET, .n = BASKET_N,
		    .now = NOW + 2000);
	if (rc)
		print_error("second use of LIM2: %s\n", scrm_errmsg());
	assert_int_equal(rc, SCRM_OK);
}

/* scrm.h: n is "items wanted, 1..50; 0 = 10"; a negative n is outside that
 * range like 51 is, and should be refused naming the field. */
static void negative_n_is_refused(void **state)
{
	fx *f = *state;
	world(f);
	load(f, "recos", "{'key':'_store','data':{'member_id':'_store','items':[{'sku':'B','score':1}]}}");
	char *json = NULL;
	int rc = reco_on(f, NULL, &(reco_args){.n = -1}, &json);
	scrm_free(json);
	assert_refused(rc, SCRM_E_INVALID, "n");
}

int main(int argc, char **argv)
{
	tu_select(argc, argv);
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(coupon_rules_and_reasons),
		T(coupon_online_only_and_offline_cap),
		T(redeem_uses_device_clock),
		T(coupon_used_up_locally_and_wrong_member),
		T(redeem_records_event_and_ledger),
		T(redeem_race_between_processes),
		T(redeem_race_between_threads),
		T(redemption_verdicts),
		T(reco_basket_rules_rank),
		T(reco_filters_stock_and_just_bought),
		T(reco_list_fills_past_the_head),
		T(reco_history_decays_with_age),
		T(reco_boosts_from_prefs_and_tags),
		T(reco_central_list_and_store_bestsellers),
		T(lifecycle_stage_rules),
		T(lifecycle_next_best_action),
		T(attribution_of_purchases),
		T(review_redeem_retry_discounts_window),
		T(bad_input_is_refused_and_writes_nothing),
		T(accepted_use_is_not_counted_twice),
		T(negative_n_is_refused),
	};
	return cmocka_run_group_tests_name("guide", tests, NULL, NULL);
}
