/* SPDX-License-Identifier: Apache-2.0 */
/*
 * event_test: validation and canonical encoding of event bodies (agent/lib/capture/event.c)
 * through both doors — the typed structs of <scrm/scrm.h> and JSON text —
 * against the rules of docs/protocol.md ("Bodies"). Every refusal is checked
 * for its code AND for a message that starts with the offending field, since
 * that message is what a POS developer sees. Accepted events are checked by
 * parsing the encoded body back with cJSON.
 *
 * Links the real event.c with its real neighbours err.c and sbuf.c (both
 * trivial and pure); nothing is faked.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "event.h"
#include "testutil.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Lines per purchase or return at most: include/scrm/scrm.h ("1..1000
 * lines") and docs/protocol.md. The one number to change with the contract. */
#define LINES_MAX 1000

static sbuf body;
static event__kind kind;

static int setup(void **state)
{
	(void)state;
	sbuf__init(&body);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	sbuf__free(&body);
	return 0;
}

/* ---- fixtures -------------------------------------------------------- */

/* The purchase of docs/protocol.md, with a second, discounted line and an
 * order-level discount: 6*255 + (2*339 - 50) - 100 = 2058. */
typedef struct purchase_fx {
	scrm_line lines[2];
	const char *coupons[1];
	scrm_purchase p;
} purchase_fx;

static void purchase_init(purchase_fx *f)
{
	memset(f, 0, sizeof(*f));
	f->lines[0] = (scrm_line){.sku = "85123A", .qty = 6, .unit_price = 255, .discount = 0};
	f->lines[1] = (scrm_line){.sku = "71053", .qty = 2, .unit_price = 339, .discount = 50};
	f->coupons[0] = "WELCOME10";
	f->p = (scrm_purchase){.order_id = "536365", .lines = f->lines, .n_lines = 2, .discount = 100,
			       .total = 2058, .currency = "GBP", .payment = "card", .member_id = "17850",
			       .guide_id = "g-07", .coupons = f->coupons, .n_coupons = 1};
}

typedef struct return_fx {
	scrm_line lines[1];
	scrm_return r;
} return_fx;

static void return_init(return_fx *f)
{
	memset(f, 0, sizeof(*f));
	f->lines[0] = (scrm_line){.sku = "85123A", .qty = 2, .unit_price = 255, .discount = 10};
	f->r = (scrm_return){.return_id = "R-77", .order_id = "536365", .lines = f->lines, .n_lines = 1,
			     .total = 500, .currency = "GBP", .refund_method = "card", .reason = "damaged",
			     .member_id = "17850", .guide_id = NULL};
}

static int enc_purchase(purchase_fx *f)
{
	return event__encode_purchase(&f->p, &body);
}

static int enc_return(return_fx *f)
{
	return event__encode_return(&f->r, &body);
}

static int from_json(const char *json)
{
	return event__from_json(json, strlen(json), &kind, &body);
}

/* Format a JSON document and run it through event__from_json. */
__attribute__((format(printf, 1, 2))) static int from_jsonf(const char *fmt, ...)
{
	static char buf[8192];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	assert_true(n > 0 && (size_t)n < sizeof(buf));
	return from_json(buf);
}

/* The protocol's purchase as JSON; %s slots: lines, total, then the tail
 * of top-level fields (TAIL = the valid currency and payment). */
#define PURCHASE_JSON "{\"kind\":\"purchase\",\"order_id\":\"536365\",\"lines\":[%s],\"discount\":100,\"total\":%s%s}"
#define TAIL ",\"currency\":\"GBP\",\"payment\":\"card\""
#define GOOD_LINES                                                                                         \
	"{\"sku\":\"85123A\",\"qty\":6,\"unit_price\":255,\"discount\":0},"                                 \
	"{\"sku\":\"71053\",\"qty\":2,\"unit_price\":339,\"discount\":50}"

static cJSON *parsed_body(void)
{
	assert_false(body.oom);
	cJSON *o = cJSON_ParseWithLength(body.p, body.len);
	if (!o) {
		print_error("encoded body does not parse: %s\n", body.p);
		fail();
	}
	assert_true(cJSON_IsObject(o));
	return o;
}

static int64_t num(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	if (!cJSON_IsNumber(v)) {
		print_error("body field %s missing or not a number\n", key);
		fail();
	}
	return (int64_t)v->valuedouble;
}

static const char *str(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	if (!cJSON_IsString(v)) {
		print_error("body field %s missing or not a string\n", key);
		fail();
	}
	return v->valuestring;
}

/* Each {key, value} of `kv`, up to a NULL key, is a string field of `o`
 * with that value. */
static void assert_strings(const cJSON *o, const char *const (*kv)[2])
{
	for (; (*kv)[0]; kv++)
		assert_string_equal(str(o, (*kv)[0]), (*kv)[1]);
}

static void assert_absent(const cJSON *o, const char *key)
{
	if (cJSON_GetObjectItemCaseSensitive(o, key)) {
		print_error("optional field %s present in %s\n", key, body.p);
		fail();
	}
}

/* ---- purchase: accepted, canonical body ------------------------------ */

static void purchase_valid_encodes_every_field(void **state)
{
	(void)state;
	purchase_fx f;
	purchase_init(&f);
	assert_int_equal(enc_purchase(&f), SCRM_OK);

	cJSON *o = parsed_body();
	assert_string_equal(str(o, "order_id"), "536365");
	const cJSON *lines = cJSON_GetObjectItemCaseSensitive(o, "lines");
	assert_int_equal(cJSON_GetArraySize(lines), 2);
	const cJSON *l1 = cJSON_GetArrayItem(lines, 1);
	assert_string_equal(str(l1, "sku"), "71053");
	assert_int_equal(num(l1, "qty"), 2);
	assert_int_equal(num(l1, "unit_price"), 339);
	assert_int_equal(num(l1, "discount"), 50);
	assert_int_equal(num(o, "discount"), 100);
	assert_int_equal(num(o, "total"), 2058);
	static const char *const texts[][2] = {
		{"currency", "GBP"}, {"payment", "card"}, {"member_id", "17850"}, {"guide_id", "g-07"}, {NULL, NULL}};
	assert_strings(o, texts);
	const cJSON *c = cJSON_GetObjectItemCaseSensitive(o, "coupons");
	assert_int_equal(cJSON_GetArraySize(c), 1);
	assert_string_equal(cJSON_GetArrayItem(c, 0)->valuestring, "WELCOME10");
	/* The kind travels next to the body, not inside it. */
	assert_absent(o, "kind");
	cJSON_Delete(o);
}

static void purchase_optional_fields_omitted_not_null(void **state)
{
	(void)state;
	purchase_fx f;
	purchase_init(&f);
	f.p.member_id = NULL;
	f.p.guide_id = NULL;
	f.p.coupons = NULL;
	f.p.n_coupons = 0;
	assert_int_equal(enc_purchase(&f), SCRM_OK);
	cJSON *o = parsed_body();
	assert_absent(o, "member_id");
	assert_absent(o, "guide_id");
	assert_absent(o, "coupons");
	assert_null(strstr(body.p, "null"));
	cJSON_Delete(o);
}

static void purchase_strings_round_trip_exactly(void **state)
{
	(void)state;
	/* JSON-special characters and multi-byte UTF-8 (2, 3 and 4 bytes) come
	 * back byte for byte. */
	static const char *const texts[] = {"A\"B\\C/D", "Zo\xc3\xab", "\xe6\x9d\xb1\xe4\xba\xac",
					    "\xf0\x9f\x99\x82 ok", "'<tag>&amp;'"};
	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		purchase_fx f;
		purchase_init(&f);
		f.p.order_id = texts[i];
		f.lines[0].sku = texts[i];
		assert_int_equal(enc_purchase(&f), SCRM_OK);
		cJSON *o = parsed_body();
		assert_string_equal(str(o, "order_id"), texts[i]);
		assert_string_equal(str(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "lines"), 0), "sku"),
				    texts[i]);
		cJSON_Delete(o);
	}
}

static void purchase_every_payment_method_accepted(void **state)
{
	(void)state;
	static const char *const ok[] = {"cash", "card", "mobile", "voucher", "mixed", "other"};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		purchase_fx f;
		purchase_init(&f);
		f.p.payment = ok[i];
		assert_int_equal(enc_purchase(&f), SCRM_OK);
	}
}

static void purchase_boundaries_accepted(void **state)
{
	(void)state;
	purchase_fx f;
	/* Line discount equal to the line's gross; order discount equal to the
	 * net amount (total 0); largest qty and price. */
	purchase_init(&f);
	f.lines[1].discount = 2 * 339;
	f.p.discount = 1530;
	f.p.total = 0;
	assert_int_equal(enc_purchase(&f), SCRM_OK);

	purchase_init(&f);
	f.lines[0] = (scrm_line){.sku = "X", .qty = 1000000, .unit_price = 1000000000000LL, .discount = 0};
	f.p.n_lines = 1;
	f.p.discount = 0;
	f.p.total = 1000000000000000000LL;
	assert_int_equal(enc_purchase(&f), SCRM_OK);
	cJSON *o = parsed_body();
	cJSON_Delete(o);
	assert_non_null(strstr(body.p, "\"total\":1000000000000000000"));

	/* 64-byte ids, 20 coupons. */
	char id64[65];
	memset(id64, 'a', 64);
	id64[64] = '\0';
	const char *codes[20];
	for (int i = 0; i < 20; i++)
		codes[i] = id64;
	purchase_init(&f);
	f.p.order_id = id64;
	f.p.member_id = id64;
	f.p.coupons = codes;
	f.p.n_coupons = 20;
	assert_int_equal(enc_purchase(&f), SCRM_OK);
}

/* ---- purchase: refusals, typed -------------------------------------- */

/* One refusal through the typed door: a fresh purchase or return (`kind`)
 * with the one member at `off` set to `v` (its first `size` bytes: the
 * member's own type) is refused with SCRM_E_INVALID naming `field`. A table
 * of these reads as the list of rules it checks. */
typedef struct spoil {
	event__kind kind;
	size_t off, size;
	union {
		const char *s;
		int64_t i;
		size_t n;
		const scrm_line *lines;
	} v;
	const char *field;
} spoil;

#define IN_PURCHASE(member) EVENT_PURCHASE, offsetof(purchase_fx, member), sizeof(((purchase_fx *)0)->member)
#define IN_RETURN(member) EVENT_RETURN, offsetof(return_fx, member), sizeof(((return_fx *)0)->member)

static void assert_spoiled_refused(const spoil *cases, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const spoil *c = &cases[i];
		purchase_fx pf;
		return_fx rf;
		purchase_init(&pf);
		return_init(&rf);
		int is_return = c->kind == EVENT_RETURN;
		memcpy((is_return ? (char *)&rf : (char *)&pf) + c->off, &c->v, c->size);
		assert_refused(is_return ? enc_return(&rf) : enc_purchase(&pf), SCRM_E_INVALID, c->field);
	}
}

static void purchase_missing_required_fields(void **state)
{
	(void)state;
	static const spoil missing[] = {
		{IN_PURCHASE(p.order_id), {.s = NULL}, "order_id"},
		{IN_PURCHASE(p.order_id), {.s = ""}, "order_id"},
		{IN_PURCHASE(p.lines), {.lines = NULL}, "lines"},
		{IN_PURCHASE(p.n_lines), {.n = 0}, "lines"},
		{IN_PURCHASE(lines[1].sku), {.s = NULL}, "lines[1].sku"},
		{IN_PURCHASE(lines[0].sku), {.s = ""}, "lines[0].sku"},
		{IN_PURCHASE(p.currency), {.s = NULL}, "currency"},
		{IN_PURCHASE(p.payment), {.s = NULL}, "payment"},
	};
	assert_spoiled_refused(missing, sizeof(missing) / sizeof(missing[0]));
	assert_refused(event__encode_purchase(NULL, &body), SCRM_E_INVALID, "purchase");
}

/* Each value in the array bad[], put in the purchase_fx field `member` of a
 * fresh purchase, is refused with SCRM_E_INVALID naming `field`. */
#define PURCHASE_REFUSES(member, bad, field)                                                          \
	purchase_refuses(offsetof(purchase_fx, member), (bad), sizeof((bad)[0]), sizeof(bad) / sizeof((bad)[0]), \
			 (field))
static void purchase_refuses(size_t off, const void *bad, size_t size, size_t n, const char *field)
{
	for (size_t i = 0; i < n; i++) {
		purchase_fx f;
		purchase_init(&f);
		memcpy((char *)&f + off, (const char *)bad + i * size, size);
		assert_refused(enc_purchase(&f), SCRM_E_INVALID, field);
	}
}

static void purchase_qty_must_be_positive_and_bounded(void **state)
{
	(void)state;
	static const int64_t bad[] = {0, -1, -3, 1000001, INT64_MAX, INT64_MIN};
	PURCHASE_REFUSES(lines[1].qty, bad, "lines[1].qty");
}

static void purchase_unit_price_bounds(void **state)
{
	(void)state;
	static const int64_t bad[] = {-1, 1000000000001LL, INT64_MAX, INT64_MIN};
	PURCHASE_REFUSES(lines[0].unit_price, bad, "lines[0].unit_price");
}

static void purchase_line_discount_bounds(void **state)
{
	(void)state;
	static const int64_t bad[] = {-1, 2 * 339 + 1 /* more than qty*unit_price */, INT64_MIN};
	PURCHASE_REFUSES(lines[1].discount, bad, "lines[1].discount");
}

static void purchase_order_discount_bounds(void **state)
{
	(void)state;
	/* Each with the total it would give, so only the discount is wrong;
	 * 2159 is more than the lines' net 2158: the total would be negative. */
	static const struct {
		int64_t discount, total;
	} bad[] = {{-1, 2159}, {2159, -1}, {INT64_MIN, 2058}};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		purchase_fx f;
		purchase_init(&f);
		f.p.discount = bad[i].discount;
		f.p.total = bad[i].total;
		assert_refused(enc_purchase(&f), SCRM_E_INVALID, "discount");
	}
}

static void purchase_total_must_match(void **state)
{
	(void)state;
	static const int64_t bad[] = {2057, 2059, 0, -2058, INT64_MAX, INT64_MIN};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		purchase_fx f;
		purchase_init(&f);
		f.p.total = bad[i];
		assert_refused(enc_purchase(&f), SCRM_E_INVALID, "total");
		/* The message tells the cashier what the lines add up to. */
		assert_errmsg_contains("2058");
	}
}

static void purchase_currency_must_be_iso_4217(void **state)
{
	(void)state;
	static const char *const bad[] = {"", "gbp", "Gbp", "GB", "GBPX", "G1P", "G P", "\xc3\x89UR", "EURO"};
	PURCHASE_REFUSES(p.currency, bad, "currency");
}

static void purchase_unknown_payment_refused(void **state)
{
	(void)state;
	static const char *const bad[] = {"", "bitcoin", "CARD", "card ", "cash\n"};
	PURCHASE_REFUSES(p.payment, bad, "payment");
	purchase_fx f;
	purchase_init(&f);
	f.p.payment = "bitcoin";
	enc_purchase(&f);
	assert_errmsg_contains("bitcoin");
}

static void purchase_id_lengths(void **state)
{
	(void)state;
	char id65[66];
	memset(id65, 'x', 65);
	id65[65] = '\0';
	/* The limit is in bytes: 22 three-byte characters = 66 bytes. */
	char wide[67] = "";
	for (int i = 0; i < 22; i++)
		strcat(wide, "\xe6\x9d\xb1");
	const spoil too_long[] = {
		{IN_PURCHASE(p.order_id), {.s = id65}, "order_id"},
		{IN_PURCHASE(lines[1].sku), {.s = id65}, "lines[1].sku"},
		{IN_PURCHASE(p.member_id), {.s = id65}, "member_id"},
		{IN_PURCHASE(p.guide_id), {.s = ""}, "guide_id"},
		{IN_PURCHASE(p.member_id), {.s = wide}, "member_id"},
	};
	assert_spoiled_refused(too_long, sizeof(too_long) / sizeof(too_long[0]));
}

static void purchase_invalid_utf8_refused(void **state)
{
	(void)state;
	static const char *const bad[] = {
		"\xc3\x28",         /* bad continuation */
		"\xc0\xaf",         /* overlong '/' */
		"\xe0\x80\xaf",     /* overlong, 3 bytes */
		"\xed\xa0\x80",     /* UTF-16 surrogate */
		"\xf4\x90\x80\x80", /* beyond U+10FFFF */
		"\xe2\x82",         /* truncated sequence */
		"\x80",             /* lone continuation */
		"\xff",             /* never valid */
		"abc\xf8\x88\x80\x80\x80",
	};
	PURCHASE_REFUSES(p.member_id, bad, "member_id");
	PURCHASE_REFUSES(lines[0].sku, bad, "lines[0].sku");
}

static void purchase_control_characters_refused(void **state)
{
	(void)state;
	static const char *const bad[] = {"a\tb", "a\nb", "a\rb", "\x01", "a\x1f", "a\x7f", "\x1b[31m"};
	PURCHASE_REFUSES(p.guide_id, bad, "guide_id");
	PURCHASE_REFUSES(p.order_id, bad, "order_id");
}

static void purchase_line_count_limits(void **state)
{
	(void)state;
	scrm_line *lines = calloc(LINES_MAX + 1, sizeof(*lines));
	assert_non_null(lines);
	for (int i = 0; i <= LINES_MAX; i++)
		lines[i] = (scrm_line){.sku = "S", .qty = 1, .unit_price = 100, .discount = 0};
	scrm_purchase p = {.order_id = "o", .lines = lines, .n_lines = LINES_MAX, .total = 100 * LINES_MAX,
			   .currency = "EUR", .payment = "cash"};
	assert_int_equal(event__encode_purchase(&p, &body), SCRM_OK);
	p.n_lines = LINES_MAX + 1;
	p.total = 100 * (LINES_MAX + 1);
	assert_refused(event__encode_purchase(&p, &body), SCRM_E_INVALID, "lines");
	char limit[16];
	snprintf(limit, sizeof(limit), "%d", LINES_MAX);
	assert_errmsg_contains(limit);
	free(lines);
}

static void purchase_coupon_limits(void **state)
{
	(void)state;
	const char *codes[21];
	for (int i = 0; i < 21; i++)
		codes[i] = "C10";
	purchase_fx f;
	purchase_init(&f);
	f.p.coupons = codes;
	f.p.n_coupons = 21;
	assert_refused(enc_purchase(&f), SCRM_E_INVALID, "coupons");
	f.p.n_coupons = 20;
	assert_int_equal(enc_purchase(&f), SCRM_OK);
	codes[3] = "";
	assert_refused(enc_purchase(&f), SCRM_E_INVALID, "coupons[3]");
	codes[3] = NULL;
	assert_refused(enc_purchase(&f), SCRM_E_INVALID, "coupons[3]");
	f.p.coupons = NULL;
	f.p.n_coupons = 2;
	assert_refused(enc_purchase(&f), SCRM_E_INVALID, "coupons");
}

static void purchase_overflow_attempts_refused(void **state)
{
	(void)state;
	/* Ten lines at the largest qty*price are 10^19 minor units, beyond
	 * int64: refused, not wrapped (UBSan would flag a wrap). */
	scrm_line lines[10];
	for (int i = 0; i < 10; i++)
		lines[i] = (scrm_line){.sku = "BIG", .qty = 1000000, .unit_price = 1000000000000LL, .discount = 0};
	scrm_purchase p = {.order_id = "o", .lines = lines, .n_lines = 10, .total = 0,
			   .currency = "EUR", .payment = "cash"};
	assert_refused(event__encode_purchase(&p, &body), SCRM_E_INVALID, "lines");
	/* A total that only matches after wrap-around is refused. */
	p.n_lines = 9;
	p.total = (int64_t)(9ULL * 1000000000000000000ULL);
	assert_int_equal(event__encode_purchase(&p, &body), SCRM_OK);
	p.discount = INT64_MAX;
	assert_refused(event__encode_purchase(&p, &body), SCRM_E_INVALID, "discount");
}

static void purchase_encoded_body_too_big(void **state)
{
	(void)state;
	/* The most lines, each with a 64-byte sku of quotes that escapes to 128
	 * bytes: every field is in range, yet the body is over the limit. */
	char quotes[65];
	memset(quotes, '"', 64);
	quotes[64] = '\0';
	scrm_line *lines = calloc(LINES_MAX, sizeof(*lines));
	assert_non_null(lines);
	for (int i = 0; i < LINES_MAX; i++)
		lines[i] = (scrm_line){.sku = quotes, .qty = 1, .unit_price = 1, .discount = 0};
	scrm_purchase p = {.order_id = "o", .lines = lines, .n_lines = LINES_MAX, .total = LINES_MAX,
			   .currency = "EUR", .payment = "cash"};
	assert_true((size_t)LINES_MAX * 170 > SCRM_MAX_EVENT_BYTES); /* the premise */
	assert_refused(event__encode_purchase(&p, &body), SCRM_E_TOO_BIG, "event");

	/* The same with plain 64-byte skus fits. */
	char plain[65];
	memset(plain, 'k', 64);
	plain[64] = '\0';
	for (int i = 0; i < LINES_MAX; i++)
		lines[i].sku = plain;
	assert_int_equal(event__encode_purchase(&p, &body), SCRM_OK);
	assert_true(body.len <= SCRM_MAX_EVENT_BYTES);
	free(lines);
}

/* ---- return ---------------------------------------------------------- */

static void return_valid_encodes(void **state)
{
	(void)state;
	return_fx f;
	return_init(&f);
	assert_int_equal(enc_return(&f), SCRM_OK);
	cJSON *o = parsed_body();
	static const char *const texts[][2] = {
		{"return_id", "R-77"}, {"order_id", "536365"}, {"currency", "GBP"}, {"refund_method", "card"},
		{"reason", "damaged"}, {"member_id", "17850"}, {NULL, NULL}};
	assert_strings(o, texts);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "lines")), 1);
	assert_int_equal(num(o, "total"), 500);
	assert_absent(o, "guide_id");
	assert_absent(o, "discount"); /* returns have no order-level discount */
	cJSON_Delete(o);

	return_init(&f);
	f.r.reason = NULL;
	f.r.member_id = NULL;
	assert_int_equal(enc_return(&f), SCRM_OK);
	o = parsed_body();
	assert_absent(o, "reason");
	assert_absent(o, "member_id");
	assert_null(strstr(body.p, "null"));
	cJSON_Delete(o);
}

static void return_refusals_name_the_field(void **state)
{
	(void)state;
	static const spoil bad[] = {
		{IN_RETURN(r.return_id), {.s = NULL}, "return_id"},
		{IN_RETURN(r.order_id), {.s = NULL}, "order_id"},
		{IN_RETURN(r.n_lines), {.n = 0}, "lines"},
		{IN_RETURN(lines[0].qty), {.i = -2}, "lines[0].qty"}, /* returned quantities are positive */
		{IN_RETURN(lines[0].discount), {.i = 511}, "lines[0].discount"},
		{IN_RETURN(r.total), {.i = 510}, "total"}, /* ignores the line discount */
		{IN_RETURN(r.total), {.i = -500}, "total"},
		{IN_RETURN(r.currency), {.s = "gbp"}, "currency"},
		{IN_RETURN(r.refund_method), {.s = "store_credit"}, "refund_method"},
		{IN_RETURN(r.refund_method), {.s = NULL}, "refund_method"},
		{IN_RETURN(r.member_id), {.s = "\xc3\x28"}, "member_id"},
		{IN_RETURN(r.guide_id), {.s = "g\n"}, "guide_id"},
	};
	assert_spoiled_refused(bad, sizeof(bad) / sizeof(bad[0]));
	assert_refused(event__encode_return(NULL, &body), SCRM_E_INVALID, "return");
}

static void return_reason_up_to_200_bytes(void **state)
{
	(void)state;
	char reason[202];
	memset(reason, 'r', 201);
	reason[201] = '\0';
	return_fx f;
	return_init(&f);
	f.r.reason = reason;
	assert_refused(enc_return(&f), SCRM_E_INVALID, "reason");
	reason[200] = '\0';
	assert_int_equal(enc_return(&f), SCRM_OK);
	/* Free text, but still no control characters. */
	f.r.reason = "box\tdamaged";
	assert_refused(enc_return(&f), SCRM_E_INVALID, "reason");
}

/* ---- member scan ----------------------------------------------------- */

static void scan_valid_and_refused(void **state)
{
	(void)state;
	static const char *const methods[] = {"qr", "card", "phone", "manual"};
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
		scrm_member_scan s = {.member_id = "17850", .method = methods[i], .guide_id = NULL};
		assert_int_equal(event__encode_scan(&s, &body), SCRM_OK);
		cJSON *o = parsed_body();
		assert_string_equal(str(o, "member_id"), "17850");
		assert_string_equal(str(o, "method"), methods[i]);
		assert_absent(o, "guide_id");
		cJSON_Delete(o);
	}
	scrm_member_scan s = {.member_id = "17850", .method = "qr", .guide_id = "g-07"};
	assert_int_equal(event__encode_scan(&s, &body), SCRM_OK);
	cJSON *o = parsed_body();
	assert_string_equal(str(o, "guide_id"), "g-07");
	cJSON_Delete(o);

	s = (scrm_member_scan){.member_id = NULL, .method = "qr"};
	assert_refused(event__encode_scan(&s, &body), SCRM_E_INVALID, "member_id");
	s = (scrm_member_scan){.member_id = "", .method = "qr"};
	assert_refused(event__encode_scan(&s, &body), SCRM_E_INVALID, "member_id");
	s = (scrm_member_scan){.member_id = "17850", .method = "nfc"};
	assert_refused(event__encode_scan(&s, &body), SCRM_E_INVALID, "method");
	s = (scrm_member_scan){.member_id = "17850", .method = NULL};
	assert_refused(event__encode_scan(&s, &body), SCRM_E_INVALID, "method");
	s = (scrm_member_scan){.member_id = "17850", .method = "qr", .guide_id = "\xff"};
	assert_refused(event__encode_scan(&s, &body), SCRM_E_INVALID, "guide_id");
	assert_refused(event__encode_scan(NULL, &body), SCRM_E_INVALID, "member_scan");
}

/* ---- JSON path ------------------------------------------------------- */

static void json_protocol_examples_accepted(void **state)
{
	(void)state;
	/* The three bodies of docs/protocol.md, verbatim plus "kind". */
	assert_int_equal(from_json("{\"kind\":\"purchase\",\"order_id\":\"536365\",\"lines\":[{\"sku\":\"85123A\","
				   "\"qty\":6,\"unit_price\":255,\"discount\":0}],\n \"discount\":0,\"total\":1530,"
				   "\"currency\":\"GBP\",\"payment\":\"card\",\n \"member_id\":\"17850\","
				   "\"guide_id\":\"g-07\",\"coupons\":[\"WELCOME10\"]}"),
			 SCRM_OK);
	assert_int_equal(kind, EVENT_PURCHASE);
	assert_int_equal(from_json("{\"kind\":\"return\",\"return_id\":\"R-77\",\"order_id\":\"536365\",\"lines\":"
				   "[{\"sku\":\"85123A\",\"qty\":1,\"unit_price\":255,\"discount\":0}],\n \"total\":255,"
				   "\"currency\":\"GBP\",\"refund_method\":\"card\",\"reason\":\"damaged\","
				   "\"member_id\":\"17850\"}"),
			 SCRM_OK);
	assert_int_equal(kind, EVENT_RETURN);
	assert_int_equal(from_json("{\"kind\":\"member_scan\",\"member_id\":\"17850\",\"method\":\"qr\","
				   "\"guide_id\":\"g-07\"}"),
			 SCRM_OK);
	assert_int_equal(kind, EVENT_MEMBER_SCAN);
	assert_string_equal(event__kind_name(kind), "member_scan");
}

static void json_and_typed_give_identical_bodies(void **state)
{
	(void)state;
	/* Same purchase through both doors → byte-identical canonical body,
	 * whatever the key order, spacing or escaping of the JSON. */
	purchase_fx f;
	purchase_init(&f);
	assert_int_equal(enc_purchase(&f), SCRM_OK);
	char *typed = strdup(body.p);
	assert_int_equal(from_json("{ \"coupons\" : [\"WELCOME10\"], \"guide_id\":\"g-07\",\"member_id\":\"17850\",\n"
				   "  \"payment\":\"card\",\"currency\":\"\\u0047BP\",\"total\":2058,\"discount\":100,\n"
				   "  \"lines\":[{\"discount\":0,\"unit_price\":255,\"qty\":6,\"sku\":\"85123A\"},\n"
				   "            {\"sku\":\"71053\",\"qty\":2.0,\"unit_price\":339,\"discount\":5e1}],\n"
				   "  \"order_id\":\"536365\", \"kind\":\"purchase\"}\n"),
			 SCRM_OK);
	assert_string_equal(body.p, typed);
	free(typed);

	/* Line discount defaults to 0 when absent. */
	assert_int_equal(from_jsonf(PURCHASE_JSON, "{\"sku\":\"A\",\"qty\":2,\"unit_price\":100}", "100", TAIL),
			 SCRM_OK);
	assert_non_null(strstr(body.p, "\"discount\":0}"));
}

static void json_same_words_as_typed(void **state)
{
	(void)state;
	/* "The CLI, the local API and the C API refuse exactly the same inputs
	 * with the same words." */
	purchase_fx f;
	purchase_init(&f);
	f.lines[1].qty = 0;
	enc_purchase(&f);
	char *typed = strdup(scrm_errmsg());
	assert_int_equal(from_jsonf(PURCHASE_JSON,
				    "{\"sku\":\"85123A\",\"qty\":6,\"unit_price\":255,\"discount\":0},"
				    "{\"sku\":\"71053\",\"qty\":0,\"unit_price\":339,\"discount\":50}",
				    "2058", TAIL),
			 SCRM_E_INVALID);
	assert_string_equal(scrm_errmsg(), typed);
	free(typed);
}

struct json_case {
	const char *name, *lines, *total, *extra;
	int code;
	const char *field;
};

static void json_field_rules(void **state)
{
	(void)state;
	static const struct json_case cases[] = {
		{"valid", GOOD_LINES, "2058", TAIL, SCRM_OK, NULL},
		{"non-integer price", "{\"sku\":\"A\",\"qty\":1,\"unit_price\":2.55}", "255", TAIL,
		 SCRM_E_INVALID, "lines[0].unit_price"},
		{"non-integer total", GOOD_LINES, "2058.5", TAIL, SCRM_E_INVALID, "total"},
		{"non-integer qty", "{\"sku\":\"A\",\"qty\":1.5,\"unit_price\":200}", "200", TAIL, SCRM_E_INVALID,
		 "lines[0].qty"},
		{"non-integer discount", "{\"sku\":\"A\",\"qty\":1,\"unit_price\":200,\"discount\":0.01}", "100", TAIL,
		 SCRM_E_INVALID, "lines[0].discount"},
		{"price as string", "{\"sku\":\"A\",\"qty\":1,\"unit_price\":\"255\"}", "155", TAIL, SCRM_E_INVALID,
		 "lines[0].unit_price"},
		{"total as string", GOOD_LINES, "\"2058\"", TAIL, SCRM_E_INVALID, "total"},
		{"total null", GOOD_LINES, "null", TAIL, SCRM_E_INVALID, "total"},
		{"total beyond 2^53", GOOD_LINES, "1e300", TAIL, SCRM_E_INVALID, "total"},
		{"negative qty", "{\"sku\":\"A\",\"qty\":-1,\"unit_price\":200}", "-300", TAIL, SCRM_E_INVALID,
		 "lines[0].qty"},
		{"zero qty", "{\"sku\":\"A\",\"qty\":0,\"unit_price\":200}", "-100", TAIL, SCRM_E_INVALID, "lines[0].qty"},
		{"huge qty*price", "{\"sku\":\"A\",\"qty\":9007199254740992,\"unit_price\":9007199254740992}", "0", TAIL,
		 SCRM_E_INVALID, "lines[0].qty"},
		{"missing qty", "{\"sku\":\"A\",\"unit_price\":200}", "100", TAIL, SCRM_E_INVALID, "lines[0].qty"},
		{"missing price", "{\"sku\":\"A\",\"qty\":1}", "100", TAIL, SCRM_E_INVALID, "lines[0].unit_price"},
		{"missing sku", "{\"qty\":1,\"unit_price\":200}", "100", TAIL, SCRM_E_INVALID, "lines[0].sku"},
		{"sku not string", "{\"sku\":7,\"qty\":1,\"unit_price\":200}", "100", TAIL, SCRM_E_INVALID,
		 "lines[0].sku"},
		{"line not object", GOOD_LINES ",[1]", "2058", TAIL, SCRM_E_INVALID, "lines[2]"},
		{"unknown line field", "{\"sku\":\"A\",\"qty\":1,\"unit_price\":200,\"colour\":\"red\"}", "100", TAIL,
		 SCRM_E_INVALID, "lines[0].colour"},
		{"no lines", "", "0", TAIL, SCRM_E_INVALID, "lines"},
		{"total mismatch", GOOD_LINES, "2158", TAIL, SCRM_E_INVALID, "total"},
		{"unknown field", GOOD_LINES, "2058", TAIL ",\"tip\":100", SCRM_E_INVALID, "tip"},
		{"return field on purchase", GOOD_LINES, "2058", TAIL ",\"refund_method\":\"card\"", SCRM_E_INVALID,
		 "refund_method"},
		{"bad currency", GOOD_LINES, "2058", ",\"currency\":\"gbp\",\"payment\":\"card\"", SCRM_E_INVALID, "currency"},
		{"unknown payment", GOOD_LINES, "2058", ",\"currency\":\"GBP\",\"payment\":\"iou\"", SCRM_E_INVALID, "payment"},
		{"member_id number", GOOD_LINES, "2058", TAIL ",\"member_id\":17850", SCRM_E_INVALID, "member_id"},
		{"member_id empty", GOOD_LINES, "2058", TAIL ",\"member_id\":\"\"", SCRM_E_INVALID, "member_id"},
		{"member_id control escape", GOOD_LINES, "2058", TAIL ",\"member_id\":\"a\\u0007b\"", SCRM_E_INVALID,
		 "member_id"},
		{"member_id newline escape", GOOD_LINES, "2058", TAIL ",\"member_id\":\"a\\nb\"", SCRM_E_INVALID,
		 "member_id"},
		/* Not JSON at all (RFC 8259: control characters are escaped),
		 * refused with the line and column. */
		{"member_id raw tab", GOOD_LINES, "2058", TAIL ",\"member_id\":\"a\tb\"", SCRM_E_INVALID, "json"},
		{"member_id raw DEL", GOOD_LINES, "2058", TAIL ",\"member_id\":\"a\x7f\"", SCRM_E_INVALID, "member_id"},
		/* JSON text must be UTF-8: refused by the reader, with the path
		 * (json_invalid_utf8_names_the_path). */
		{"member_id invalid UTF-8", GOOD_LINES, "2058", TAIL ",\"member_id\":\"\xc3\x28\"", SCRM_E_INVALID,
		 "json"},
		{"guide_id overlong UTF-8", GOOD_LINES, "2058", TAIL ",\"guide_id\":\"\xc0\xaf\"", SCRM_E_INVALID,
		 "json"},
		{"member_id escaped UTF-8", GOOD_LINES, "2058", TAIL ",\"member_id\":\"Zo\\u00eb \\ud83d\\ude42\"", SCRM_OK,
		 NULL},
		{"coupons not array", GOOD_LINES, "2058", TAIL ",\"coupons\":\"WELCOME10\"", SCRM_E_INVALID, "coupons"},
		{"coupon not string", GOOD_LINES, "2058", TAIL ",\"coupons\":[\"A\",5]", SCRM_E_INVALID, "coupons[1]"},
		{"coupon empty", GOOD_LINES, "2058", TAIL ",\"coupons\":[\"A\",\"\"]", SCRM_E_INVALID, "coupons[1]"},
		{"no coupons", GOOD_LINES, "2058", TAIL ",\"coupons\":[]", SCRM_OK, NULL},
		{"21 coupons", GOOD_LINES, "2058",
		 TAIL ",\"coupons\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\",\"11\",\"12\",\"13\","
		 "\"14\",\"15\",\"16\",\"17\",\"18\",\"19\",\"20\",\"21\"]",
		 SCRM_E_INVALID, "coupons"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct json_case *c = &cases[i];
		int rc = from_jsonf(PURCHASE_JSON, c->lines, c->total, c->extra);
		const char *msg = scrm_errmsg();
		int ok = rc == c->code;
		if (ok && c->field)
			ok = strncmp(msg, c->field, strlen(c->field)) == 0 && msg[strlen(c->field)] == ':';
		if (!ok) {
			print_error("case \"%s\": expected %d naming \"%s\", got %d \"%s\"\n", c->name, c->code,
				    c->field ? c->field : "", rc, msg);
			fail();
		}
	}
}

static void json_kind_rules(void **state)
{
	(void)state;
	assert_refused(from_json("{\"member_id\":\"17850\",\"method\":\"qr\"}"), SCRM_E_INVALID, "kind");
	assert_refused(from_json("{\"kind\":3,\"member_id\":\"17850\",\"method\":\"qr\"}"), SCRM_E_INVALID, "kind");
	assert_refused(from_json("{\"kind\":\"refund\",\"member_id\":\"17850\",\"method\":\"qr\"}"), SCRM_E_INVALID,
		       "kind");
	assert_errmsg_contains("\"refund\"");
	assert_refused(from_json("{\"kind\":\"Purchase\"}"), SCRM_E_INVALID, "kind");
	/* A purchase field on a scan is an unknown field of the scan. */
	assert_refused(from_json("{\"kind\":\"member_scan\",\"member_id\":\"1\",\"method\":\"qr\",\"total\":1}"),
		       SCRM_E_INVALID, "total");
	assert_refused(from_json("{\"kind\":\"member_scan\",\"method\":\"qr\"}"), SCRM_E_INVALID, "member_id");
	assert_refused(from_json("{\"kind\":\"member_scan\",\"member_id\":\"1\",\"method\":\"fingerprint\"}"),
		       SCRM_E_INVALID, "method");
	assert_refused(from_json("{\"kind\":\"return\",\"order_id\":\"1\",\"lines\":[{\"sku\":\"A\",\"qty\":1,"
				 "\"unit_price\":1}],\"total\":1,\"currency\":\"EUR\",\"refund_method\":\"cash\"}"),
		       SCRM_E_INVALID, "return_id");
	assert_refused(from_json("{\"kind\":\"return\",\"return_id\":\"R\",\"order_id\":\"1\",\"lines\":[{\"sku\":"
				 "\"A\",\"qty\":1,\"unit_price\":1}],\"total\":1,\"currency\":\"EUR\","
				 "\"refund_method\":\"cash\",\"discount\":0}"),
		       SCRM_E_INVALID, "discount");
}

static void json_malformed_reports_line_and_column(void **state)
{
	(void)state;
	/* The stray comma is on line 3, column 17. */
	int line = 0, col = 0;
	assert_refused(from_json("{\"kind\":\"member_scan\",\n"
				 "  \"member_id\":\"17850\",\n"
				 "  \"method\":\"qr\",,\n"
				 "}"),
		       SCRM_E_INVALID, "json");
	assert_int_equal(sscanf(scrm_errmsg(), "json: not valid JSON at line %d, column %d", &line, &col), 2);
	assert_int_equal(line, 3);
	assert_int_equal(col, 17);
	assert_errmsg_contains("(expected a key in double quotes)");

	assert_refused(from_json("{\"kind\":\"purchase\" \"order_id\":\"1\"}"), SCRM_E_INVALID, "json");
	assert_errmsg_contains("line 1, column 20 (expected ',' or '}')");
	assert_refused(from_json(""), SCRM_E_INVALID, "json");
	assert_errmsg_contains("json: empty input");
	assert_refused(from_json(" \n\t "), SCRM_E_INVALID, "json");
	assert_errmsg_contains("json: empty input");
	assert_refused(from_json("{\"kind\":\"member_scan\""), SCRM_E_INVALID, "json");
	assert_refused(from_json("{\"kind\":'member_scan'}"), SCRM_E_INVALID, "json");
	/* Lone UTF-16 surrogates cannot be decoded. */
	assert_refused(from_json("{\"kind\":\"member_scan\",\"member_id\":\"\\ud800\",\"method\":\"qr\"}"),
		       SCRM_E_INVALID, "json");
	assert_refused(event__from_json(NULL, 0, &kind, &body), SCRM_E_INVALID, "json");
}

static void json_must_be_one_object(void **state)
{
	(void)state;
	static const char scan[] = "{\"kind\":\"member_scan\",\"member_id\":\"1\",\"method\":\"qr\"}";
	char buf[256];
	snprintf(buf, sizeof(buf), "%s x", scan);
	assert_refused(from_json(buf), SCRM_E_INVALID, "json");
	snprintf(buf, sizeof(buf), "%s%s", scan, scan);
	assert_refused(from_json(buf), SCRM_E_INVALID, "json");
	snprintf(buf, sizeof(buf), "%s,", scan);
	assert_refused(from_json(buf), SCRM_E_INVALID, "json");
	/* Surrounding whitespace is fine. */
	snprintf(buf, sizeof(buf), " \r\n\t%s \r\n\t", scan);
	assert_int_equal(from_json(buf), SCRM_OK);
	assert_refused(from_json("[1,2]"), SCRM_E_INVALID, "json");
	assert_refused(from_json("\"purchase\""), SCRM_E_INVALID, "json");
	assert_refused(from_json("42"), SCRM_E_INVALID, "json");
	assert_refused(from_json("null"), SCRM_E_INVALID, "json");
}

static void json_need_not_be_nul_terminated(void **state)
{
	(void)state;
	/* Exactly `len` bytes in their own allocation: AddressSanitizer would
	 * catch a read past the end. */
	static const char scan[] = "{\"kind\":\"member_scan\",\"member_id\":\"17850\",\"method\":\"qr\"}";
	size_t n = sizeof(scan) - 1;
	char *exact = malloc(n);
	assert_non_null(exact);
	memcpy(exact, scan, n);
	assert_int_equal(event__from_json(exact, n, &kind, &body), SCRM_OK);
	/* A truncated view of the same bytes is malformed, whatever follows. */
	assert_refused(event__from_json(exact, n - 1, &kind, &body), SCRM_E_INVALID, "json");
	free(exact);
}

static void json_oversize_refused_before_parsing(void **state)
{
	(void)state;
	static const char scan[] = "{\"kind\":\"member_scan\",\"member_id\":\"17850\",\"method\":\"qr\"}";
	size_t n = EVENT_MAX_JSON_BYTES + 1;
	char *big = malloc(n);
	assert_non_null(big);
	memset(big, ' ', n);
	memcpy(big, scan, sizeof(scan) - 1);
	assert_refused(event__from_json(big, n, &kind, &body), SCRM_E_TOO_BIG, "json");
	/* Exactly the limit is still parsed (trailing whitespace). */
	assert_int_equal(event__from_json(big, n - 1, &kind, &body), SCRM_OK);
	/* A 1 MiB document of garbage is refused too, as too big, not parsed. */
	memset(big, '[', n);
	assert_refused(event__from_json(big, n, &kind, &body), SCRM_E_TOO_BIG, "json");
	free(big);
}

static void json_deep_nesting_is_malformed_not_a_crash(void **state)
{
	(void)state;
	size_t depth = 100000;
	char *deep = malloc(2 * depth + 64);
	assert_non_null(deep);
	size_t o = (size_t)sprintf(deep, "{\"kind\":\"member_scan\",\"member_id\":");
	memset(deep + o, '[', depth);
	o += depth;
	memset(deep + o, ']', depth);
	o += depth;
	deep[o++] = '}';
	assert_refused(event__from_json(deep, o, &kind, &body), SCRM_E_INVALID, "json");
	assert_errmsg_contains("nested too deeply (more than 64 levels)");
	/* 10,000 levels, the case cJSON's own limit of 1000 would catch only
	 * after 1000 recursive calls: refused before cJSON sees it. */
	o = (size_t)sprintf(deep, "{\"kind\":\"member_scan\",\"member_id\":");
	memset(deep + o, '[', 10000);
	o += 10000;
	memset(deep + o, ']', 10000);
	o += 10000;
	deep[o++] = '}';
	assert_refused(event__from_json(deep, o, &kind, &body), SCRM_E_INVALID, "json");
	assert_errmsg_contains("json: nested too deeply (more than 64 levels) at line 1, column 98");
	free(deep);
}

/* A key given twice is refused, naming it: scrmctl used to keep the first
 * ("total":510,"total":1 was 510; "kind":"purchase","kind":"return" a
 * purchase) where another reader keeps the last. */
static void json_duplicate_keys_refused(void **state)
{
	(void)state;
	assert_refused(from_json("{\"kind\":\"purchase\",\"kind\":\"return\"}"), SCRM_E_INVALID, "json");
	assert_errmsg_contains("json: duplicate key \"kind\" at $ (line 1, column 20)");
	assert_int_equal(body.len, 0);
	/* In a full purchase, at the top level... */
	assert_refused(from_jsonf(PURCHASE_JSON, GOOD_LINES, "2058", TAIL ",\"total\":1"), SCRM_E_INVALID, "json");
	assert_errmsg_contains("duplicate key \"total\" at $ (line 1, column ");
	assert_refused(from_jsonf(PURCHASE_JSON, GOOD_LINES, "510", ",\"currency\":\"GBP\",\"currency\":\"GBP\","
									 "\"payment\":\"card\""),
		       SCRM_E_INVALID, "json");
	assert_errmsg_contains("duplicate key \"currency\" at $");
	/* ...and nested: the path names the line. */
	assert_refused(from_jsonf(PURCHASE_JSON,
				  "{\"sku\":\"85123A\",\"qty\":6,\"unit_price\":255,\"discount\":0},"
				  "{\"sku\":\"71053\",\"qty\":2,\"unit_price\":339,\"qty\":200,\"discount\":50}",
				  "2058", TAIL),
		       SCRM_E_INVALID, "json");
	assert_errmsg_contains("duplicate key \"qty\" at $.lines[1] (line 1, column ");
	/* The same name written with an escape is the same key. */
	assert_refused(from_json("{\"kind\":\"member_scan\",\"member_id\":\"1\",\"method\":\"qr\","
				 "\"\\u006dember_id\":\"2\"}"),
		       SCRM_E_INVALID, "json");
	assert_errmsg_contains("duplicate key \"member_id\" at $");
	/* Once each is fine. */
	assert_int_equal(from_json("{\"kind\":\"member_scan\",\"member_id\":\"1\",\"method\":\"qr\"}"), SCRM_OK);
}

static void json_invalid_utf8_names_the_path(void **state)
{
	(void)state;
	assert_refused(from_jsonf(PURCHASE_JSON, "{\"sku\":\"A\xff\",\"qty\":1,\"unit_price\":200}", "100", TAIL),
		       SCRM_E_INVALID, "json");
	assert_errmsg_contains("invalid UTF-8 in a string at $.lines[0].sku (line 1, column ");
	assert_refused(from_jsonf(PURCHASE_JSON, GOOD_LINES, "2058", TAIL ",\"member_id\":\"\xed\xa0\x80\""),
		       SCRM_E_INVALID, "json");
	assert_errmsg_contains("invalid UTF-8 in a string at $.member_id");
}

/* Numbers: a count is not money, and too large is "out of range" with the
 * bound, not "must be an integer". */
static void json_number_messages(void **state)
{
	(void)state;
	assert_refused(from_jsonf(PURCHASE_JSON, "{\"sku\":\"A\",\"qty\":1.5,\"unit_price\":200}", "200", TAIL),
		       SCRM_E_INVALID, "lines[0].qty");
	assert_errmsg_contains("must be a whole number (a count of items)");
	assert_null(strstr(scrm_errmsg(), "money"));
	assert_refused(from_jsonf(PURCHASE_JSON, "{\"sku\":\"A\",\"qty\":1,\"unit_price\":2.55}", "255", TAIL),
		       SCRM_E_INVALID, "lines[0].unit_price");
	assert_errmsg_contains("money in minor units");
	/* Beyond what a JSON number carries exactly (2^53). */
	assert_refused(from_jsonf(PURCHASE_JSON, GOOD_LINES, "1e300", TAIL), SCRM_E_INVALID, "total");
	assert_errmsg_contains("total: out of range: 1e+300, must be between 0 and 9007199254740992 minor units");
	assert_refused(from_jsonf(PURCHASE_JSON, "{\"sku\":\"A\",\"qty\":1e20,\"unit_price\":200}", "200", TAIL),
		       SCRM_E_INVALID, "lines[0].qty");
	assert_errmsg_contains("lines[0].qty: out of range: 1e+20, must be between 1 and 1000000 items");
	assert_refused(from_jsonf(PURCHASE_JSON, "{\"sku\":\"A\",\"qty\":1,\"unit_price\":-1e17}", "200", TAIL),
		       SCRM_E_INVALID, "lines[0].unit_price");
	assert_errmsg_contains("out of range: -1e+17, must be between 0 and 1000000000000 minor units");
	/* Within 2^53 but past the field's bound: the same words as the C
	 * API gives for the same struct. */
	assert_refused(from_jsonf(PURCHASE_JSON, "{\"sku\":\"A\",\"qty\":1000001,\"unit_price\":1}", "1000001", TAIL),
		       SCRM_E_INVALID, "lines[0].qty");
	assert_errmsg_contains("lines[0].qty: out of range: at most 1000000 items, got 1000001");
	assert_refused(from_jsonf(PURCHASE_JSON, "{\"sku\":\"A\",\"qty\":1,\"unit_price\":1000000000001}",
				  "1000000000001", TAIL),
		       SCRM_E_INVALID, "lines[0].unit_price");
	assert_errmsg_contains("out of range: must be between 0 and 1000000000000 minor units, got 1000000000001");
}

/* An oversize string names its field and its limit. */
static void json_oversize_string_names_field_and_limit(void **state)
{
	(void)state;
	char id[80];
	memset(id, 'x', 65);
	id[65] = '\0';
	assert_refused(from_jsonf("{\"kind\":\"member_scan\",\"member_id\":\"%s\",\"method\":\"qr\"}", id),
		       SCRM_E_INVALID, "member_id");
	assert_errmsg_contains("member_id: too long: 65 bytes, at most 64");
}

/* Append `n` lines {"sku":"S","qty":1,"unit_price":100} to a JSON purchase. */
static char *purchase_with_lines(int n, int64_t total)
{
	size_t cap = (size_t)n * 64 + 256;
	char *s = malloc(cap);
	assert_non_null(s);
	size_t o = (size_t)snprintf(s, cap, "{\"kind\":\"purchase\",\"order_id\":\"o\",\"lines\":[");
	for (int i = 0; i < n; i++)
		o += (size_t)snprintf(s + o, cap - o, "%s{\"sku\":\"S\",\"qty\":1,\"unit_price\":100}", i ? "," : "");
	snprintf(s + o, cap - o, "],\"total\":%lld,\"currency\":\"EUR\",\"payment\":\"cash\"}", (long long)total);
	return s;
}

static void json_line_count_limits(void **state)
{
	(void)state;
	char *s = purchase_with_lines(LINES_MAX, 100 * LINES_MAX);
	assert_int_equal(from_json(s), SCRM_OK);
	free(s);
	s = purchase_with_lines(LINES_MAX + 1, 100 * (LINES_MAX + 1));
	assert_refused(from_json(s), SCRM_E_INVALID, "lines");
	free(s);
}

static void json_encoded_body_too_big(void **state)
{
	(void)state;
	/* Valid JSON well under the 1 MiB input limit whose canonical body
	 * would pass SCRM_MAX_EVENT_BYTES. */
	size_t cap = (size_t)LINES_MAX * 220 + 256;
	char *s = malloc(cap);
	assert_non_null(s);
	size_t o = (size_t)snprintf(s, cap, "{\"kind\":\"purchase\",\"order_id\":\"o\",\"lines\":[");
	for (int i = 0; i < LINES_MAX; i++) {
		o += (size_t)snprintf(s + o, cap - o, "%s{\"sku\":\"", i ? "," : "");
		for (int k = 0; k < 64; k++)
			o += (size_t)snprintf(s + o, cap - o, "\\\"");
		o += (size_t)snprintf(s + o, cap - o, "\",\"qty\":1,\"unit_price\":1}");
	}
	snprintf(s + o, cap - o, "],\"total\":%d,\"currency\":\"EUR\",\"payment\":\"cash\"}", LINES_MAX);
	assert_true(o < EVENT_MAX_JSON_BYTES);
	assert_refused(from_json(s), SCRM_E_TOO_BIG, "event");
	free(s);
}

/*
 * Regression test (fixed bug in agent/lib/capture/event.c event__from_json / get_str): a NUL inside a
 * JSON string — escaped as \u0000, or a raw 0 byte inside `len` — ends the
 * C string that cJSON hands back, so "member_id":"A\u0000B" is ACCEPTED and
 * stored as "A": silent truncation of customer data, and a way to make two
 * different inputs collide. Expected: SCRM_E_INVALID (the control-character
 * rule). This test fails until event.c refuses such strings.
 */
static void json_nul_in_string_refused(void **state)
{
	(void)state;
	int rc = from_json("{\"kind\":\"member_scan\",\"member_id\":\"A\\u0000B\",\"method\":\"qr\"}");
	if (rc != SCRM_E_INVALID) {
		print_error("regression: \"A\\u0000B\" accepted (rc %d), body %s\n", rc, body.p);
		fail();
	}
	static const char raw[] = "{\"kind\":\"member_scan\",\"member_id\":\"A\0B\",\"method\":\"qr\"}";
	rc = event__from_json(raw, sizeof(raw) - 1, &kind, &body);
	if (rc != SCRM_E_INVALID) {
		print_error("regression: raw NUL inside a string accepted (rc %d), body %s\n", rc, body.p);
		fail();
	}
}

/* kinds.def, walked: every kind has its number in row order, a name that
 * parses back, a class iff it may be evicted, a receipt key only when paid
 * for; the kinds scrm_record_json accepts are exactly those marked json,
 * each encodes from a minimal body and EVENT_JSON_KINDS lists them. A kind
 * added without the rest fails here. */
static const char *minimal_json(const char *name)
{
	static const struct {
		const char *name, *json;
	} samples[] = {
		{"purchase", "{\"kind\":\"purchase\",\"order_id\":\"1\",\"lines\":[{\"sku\":\"A\",\"qty\":1,"
			     "\"unit_price\":5}],\"total\":5,\"currency\":\"EUR\",\"payment\":\"cash\"}"},
		{"return", "{\"kind\":\"return\",\"return_id\":\"R\",\"order_id\":\"1\",\"lines\":[{\"sku\":\"A\","
			   "\"qty\":1,\"unit_price\":5}],\"total\":5,\"currency\":\"EUR\",\"refund_method\":\"cash\"}"},
		{"member_scan", "{\"kind\":\"member_scan\",\"member_id\":\"17850\",\"method\":\"qr\"}"},
	};
	for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++)
		if (strcmp(samples[i].name, name) == 0)
			return samples[i].json;
	return NULL;
}

static void kinds_table_is_complete(void **state)
{
	(void)state;
	char listed[200] = "";
	size_t n = event__kind_count(), n_json = 0, done = 0;
	assert_true(n >= 5);
	assert_null(event__kind_at(n));
	assert_string_equal(event__kind_name((event__kind)0), "unknown");
	assert_string_equal(event__kind_name((event__kind)(n + 1)), "unknown");
	assert_int_equal(event__kind_parse("refund"), 0);
	for (size_t i = 0; i < n; i++)
		n_json += event__kind_at(i)->from_json;
	for (size_t i = 0; i < n; i++) {
		const event__kind_info *k = event__kind_at(i);
		char doc[64];
		assert_non_null(k);
		assert_int_equal(k->kind, (int)i + 1);
		assert_true(k->name && k->name[0]);
		assert_string_equal(event__kind_name(k->kind), k->name);
		assert_int_equal(event__kind_parse(k->name), k->kind);
		assert_int_equal(k->paid, k->evict == EVICT_NEVER);
		assert_true(k->evict <= EVICT_NEVER);
		if (k->key)
			assert_true(k->paid);
		snprintf(doc, sizeof(doc), "{\"kind\":\"%s\"}", k->name);
		int rc = from_json(doc);
		assert_int_equal(rc, SCRM_E_INVALID);
		if (!k->from_json) {
			assert_non_null(strstr(scrm_errmsg(), "unknown event kind"));
			continue;
		}
		assert_null(strstr(scrm_errmsg(), "unknown event kind"));
		const char *json = minimal_json(k->name);
		assert_non_null(json); /* a kind scrm_record_json takes needs a sample here */
		assert_int_equal(from_json(json), SCRM_OK);
		assert_int_equal(kind, k->kind);
		/* "a, b or c", in row order */
		done++;
		snprintf(listed + strlen(listed), sizeof(listed) - strlen(listed), "%s%s",
			 done == 1 ? "" : done == n_json ? " or " : ", ", k->name);
	}
	assert_string_equal(listed, EVENT_JSON_KINDS);
}

int main(int argc, char **argv)
{
	tu_select(argc, argv);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(purchase_valid_encodes_every_field),
		cmocka_unit_test(purchase_optional_fields_omitted_not_null),
		cmocka_unit_test(purchase_strings_round_trip_exactly),
		cmocka_unit_test(purchase_every_payment_method_accepted),
		cmocka_unit_test(purchase_boundaries_accepted),
		cmocka_unit_test(purchase_missing_required_fields),
		cmocka_unit_test(purchase_qty_must_be_positive_and_bounded),
		cmocka_unit_test(purchase_unit_price_bounds),
		cmocka_unit_test(purchase_line_discount_bounds),
		cmocka_unit_test(purchase_order_discount_bounds),
		cmocka_unit_test(purchase_total_must_match),
		cmocka_unit_test(purchase_currency_must_be_iso_4217),
		cmocka_unit_test(purchase_unknown_payment_refused),
		cmocka_unit_test(purchase_id_lengths),
		cmocka_unit_test(purchase_invalid_utf8_refused),
		cmocka_unit_test(purchase_control_characters_refused),
		cmocka_unit_test(purchase_line_count_limits),
		cmocka_unit_test(purchase_coupon_limits),
		cmocka_unit_test(purchase_overflow_attempts_refused),
		cmocka_unit_test(purchase_encoded_body_too_big),
		cmocka_unit_test(return_valid_encodes),
		cmocka_unit_test(return_refusals_name_the_field),
		cmocka_unit_test(return_reason_up_to_200_bytes),
		cmocka_unit_test(scan_valid_and_refused),
		cmocka_unit_test(json_protocol_examples_accepted),
		cmocka_unit_test(json_and_typed_give_identical_bodies),
		cmocka_unit_test(json_same_words_as_typed),
		cmocka_unit_test(json_field_rules),
		cmocka_unit_test(json_kind_rules),
		cmocka_unit_test(json_malformed_reports_line_and_column),
		cmocka_unit_test(json_must_be_one_object),
		cmocka_unit_test(json_need_not_be_nul_terminated),
		cmocka_unit_test(json_oversize_refused_before_parsing),
		cmocka_unit_test(json_deep_nesting_is_malformed_not_a_crash),
		cmocka_unit_test(json_line_count_limits),
		cmocka_unit_test(json_encoded_body_too_big),
		cmocka_unit_test(json_nul_in_string_refused),
		cmocka_unit_test(json_duplicate_keys_refused),
		cmocka_unit_test(json_invalid_utf8_names_the_path),
		cmocka_unit_test(json_number_messages),
		cmocka_unit_test(json_oversize_string_names_field_and_limit),
		cmocka_unit_test(kinds_table_is_complete),
	};
	return cmocka_run_group_tests_name("event", tests, setup, teardown);
}
