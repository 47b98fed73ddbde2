/* SPDX-License-Identifier: Apache-2.0 */
/*
 * event: validation + canonical encoding of event bodies (see event.h).
 *
 * The typed structs are the single source of validation: the JSON path
 * parses into the same structs and calls the same encoders, so the CLI, the
 * local API and the C API refuse exactly the same inputs with the same words.
 */
#include "event.h"

#include "err.h"
#include "json.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LINES 1000
#define MAX_COUPONS 20
#define MAX_ID 64
#define MAX_REASON 200
#define MAX_QTY 1000000
#define MAX_PRICE 1000000000000LL /* 10^12 minor units */
/* Integers a JSON number carries exactly (a double's 53-bit mantissa). */
#define MAX_EXACT JSON_INT_MAX

/* ---- the kinds (kinds.def) ------------------------------------------ */

static const event__kind_info kinds[] = {
#define EVENT_KIND(e, value, name, paid, evict, json, key) {e, name, paid, evict, json, key},
#include "kinds.def"
};

/* Values 1, 2, ... in row order (event__kind_at and the outbox rely on
 * it); paid kinds are never evicted and evictable ones have a class. */
enum {
#define EVENT_KIND(e, value, name, paid, evict, json, key) e##_ROW,
#include "kinds.def"
	EVENT_KIND_ROWS
};
#define EVENT_KIND(e, value, name, paid, evict, json, key) \
	_Static_assert(e == e##_ROW + 1, #e ": kinds.def values must be 1, 2, ... in row order"); \
	_Static_assert((paid) == ((evict) == EVICT_NEVER), #e ": a paid kind is EVICT_NEVER, no other kind is"); \
	_Static_assert((json) == 0 || (json) == 1, #e ": json is 0 or 1");
#include "kinds.def"

size_t event__kind_count(void)
{
	return EVENT_KIND_ROWS;
}

const event__kind_info *event__kind_at(size_t i)
{
	return i < EVENT_KIND_ROWS ? &kinds[i] : NULL;
}

const char *event__kind_name(event__kind k)
{
	return k >= 1 && (size_t)k <= EVENT_KIND_ROWS ? kinds[k - 1].name : "unknown";
}

event__kind event__kind_parse(const char *name)
{
	for (size_t i = 0; name && i < EVENT_KIND_ROWS; i++)
		if (strcmp(kinds[i].name, name) == 0)
			return kinds[i].kind;
	return (event__kind)0;
}

/* Strict UTF-8 (no overlongs, no surrogates), no control characters. */
static int text_ok(const char *s, size_t *len_out)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t n = 0;
	while (*p) {
		unsigned c = *p;
		int extra;
		unsigned cp;
		if (c < 0x20 || c == 0x7f)
			return 0;
		if (c < 0x80) {
			p++;
			n++;
			continue;
		} else if ((c & 0xe0) == 0xc0) {
			extra = 1;
			cp = c & 0x1f;
		} else if ((c & 0xf0) == 0xe0) {
			extra = 2;
			cp = c & 0x0f;
		} else if ((c & 0xf8) == 0xf0) {
			extra = 3;
			cp = c & 0x07;
		} else {
			return 0;
		}
		for (int i = 1; i <= extra; i++) {
			if ((p[i] & 0xc0) != 0x80)
				return 0;
			cp = (cp << 6) | (p[i] & 0x3f);
		}
		if ((extra == 1 && cp < 0x80) || (extra == 2 && cp < 0x800) ||
		    (extra == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		p += extra + 1;
		n += (size_t)extra + 1;
	}
	if (len_out)
		*len_out = n;
	return 1;
}

static int check_str(const char *field, const char *v, int required, size_t max)
{
	size_t n;
	if (!v) {
		if (required)
			return err__set(SCRM_E_INVALID, "%s: required", field);
		return SCRM_OK;
	}
	if (!text_ok(v, &n))
		return err__set(SCRM_E_INVALID, "%s: must be UTF-8 text without control characters", field);
	if (n == 0)
		return err__set(SCRM_E_INVALID, "%s: must not be empty", field);
	if (n > max)
		return err__set(SCRM_E_INVALID, "%s: too long: %zu bytes, at most %zu", field, n, max);
	return SCRM_OK;
}

static int check_currency(const char *v)
{
	if (!v)
		return err__set(SCRM_E_INVALID, "currency: required");
	if (strlen(v) != 3 || v[0] < 'A' || v[0] > 'Z' || v[1] < 'A' || v[1] > 'Z' ||
	    v[2] < 'A' || v[2] > 'Z')
		return err__set(SCRM_E_INVALID, "currency: must be an ISO 4217 code of three upper-case letters, got \"%.16s\"", v);
	return SCRM_OK;
}

static int check_enum(const char *field, const char *v, const char *const *set)
{
	if (!v)
		return err__set(SCRM_E_INVALID, "%s: required", field);
	for (const char *const *s = set; *s; s++)
		if (strcmp(v, *s) == 0)
			return SCRM_OK;
	return err__set(SCRM_E_INVALID, "%s: unknown value \"%.32s\"", field, v);
}

static const char *const payment_methods[] = {"cash", "card", "mobile", "voucher", "mixed", "other", NULL};
static const char *const scan_methods[] = {"qr", "card", "phone", "manual", NULL};

/* Validate lines and return their net amount in *sum. */
static int check_lines(const scrm_line *lines, size_t n, int64_t *sum)
{
	char f[48];
	int64_t total = 0;
	if (!lines || n == 0)
		return err__set(SCRM_E_INVALID, "lines: at least one line is required");
	if (n > MAX_LINES)
		return err__set(SCRM_E_INVALID, "lines: %zu lines, at most %d", n, MAX_LINES);
	for (size_t i = 0; i < n; i++) {
		const scrm_line *l = &lines[i];
		int rc;
		snprintf(f, sizeof(f), "lines[%zu].sku", i);
		if ((rc = check_str(f, l->sku, 1, MAX_ID)) != SCRM_OK)
			return rc;
		if (l->qty <= 0)
			return err__set(SCRM_E_INVALID, "lines[%zu].qty: must be > 0, got %lld", i, (long long)l->qty);
		if (l->qty > MAX_QTY)
			return err__set(SCRM_E_INVALID, "lines[%zu].qty: out of range: at most %d items, got %lld", i, MAX_QTY,
					(long long)l->qty);
		if (l->unit_price < 0 || l->unit_price > MAX_PRICE)
			return err__set(SCRM_E_INVALID, "lines[%zu].unit_price: out of range: must be between 0 and %lld minor units, got %lld",
					i, MAX_PRICE, (long long)l->unit_price);
		int64_t gross = l->qty * l->unit_price; /* bounded: < 2^60 */
		if (l->discount < 0 || l->discount > gross)
			return err__set(SCRM_E_INVALID, "lines[%zu].discount: must be between 0 and qty*unit_price (%lld)", i, (long long)gross);
		if (__builtin_add_overflow(total, gross - l->discount, &total))
			return err__set(SCRM_E_INVALID, "lines: amounts overflow");
	}
	*sum = total;
	return SCRM_OK;
}

static void put_lines(sbuf *b, const scrm_line *lines, size_t n)
{
	sbuf__puts(b, "\"lines\":[");
	for (size_t i = 0; i < n; i++) {
		if (i)
			sbuf__putc(b, ',');
		sbuf__puts(b, "{\"sku\":");
		sbuf__jstr(b, lines[i].sku);
		sbuf__puts(b, ",\"qty\":");
		sbuf__i64(b, lines[i].qty);
		sbuf__puts(b, ",\"unit_price\":");
		sbuf__i64(b, lines[i].unit_price);
		sbuf__puts(b, ",\"discount\":");
		sbuf__i64(b, lines[i].discount);
		sbuf__putc(b, '}');
	}
	sbuf__putc(b, ']');
}

static void put_opt(sbuf *b, const char *key, const char *v)
{
	if (!v)
		return;
	sbuf__puts(b, ",\"");
	sbuf__puts(b, key);
	sbuf__puts(b, "\":");
	sbuf__jstr(b, v);
}

static int finish(sbuf *b)
{
	if (b->oom)
		return err__set(SCRM_E_NOMEM, "out of memory encoding the event");
	if (b->len > SCRM_MAX_EVENT_BYTES)
		return err__set(SCRM_E_TOO_BIG, "event: encoded body is %zu bytes, at most %d", b->len, SCRM_MAX_EVENT_BYTES);
	return SCRM_OK;
}

int event__encode_purchase(const scrm_purchase *p, sbuf *b)
{
	int rc;
	int64_t sum;
	sbuf__reset(b);
	if (!p)
		return err__set(SCRM_E_INVALID, "purchase: NULL");
	if ((rc = check_str("order_id", p->order_id, 1, MAX_ID)) ||
	    (rc = check_lines(p->lines, p->n_lines, &sum)) ||
	    (rc = check_currency(p->currency)) ||
	    (rc = check_enum("payment", p->payment, payment_methods)) ||
	    (rc = check_str("member_id", p->member_id, 0, MAX_ID)) ||
	    (rc = check_str("guide_id", p->guide_id, 0, MAX_ID)) ||
	    (rc = check_str("reco_id", p->reco_id, 0, MAX_ID)))
		return rc;
	if (p->discount < 0 || p->discount > sum)
		return err__set(SCRM_E_INVALID, "discount: must be between 0 and the lines' net amount (%lld)", (long long)sum);
	if (p->total != sum - p->discount)
		return err__set(SCRM_E_INVALID, "total: %lld does not match the lines minus discount (%lld)", (long long)p->total, (long long)(sum - p->discount));
	if (p->n_coupons > MAX_COUPONS)
		return err__set(SCRM_E_INVALID, "coupons: %zu codes, at most %d", p->n_coupons, MAX_COUPONS);
	if (p->n_coupons && !p->coupons)
		return err__set(SCRM_E_INVALID, "coupons: NULL with n_coupons > 0");
	for (size_t i = 0; i < p->n_coupons; i++) {
		char f[32];
		snprintf(f, sizeof(f), "coupons[%zu]", i);
		if ((rc = check_str(f, p->coupons[i], 1, MAX_ID)))
			return rc;
	}
	sbuf__puts(b, "{\"order_id\":");
	sbuf__jstr(b, p->order_id);
	sbuf__putc(b, ',');
	put_lines(b, p->lines, p->n_lines);
	sbuf__puts(b, ",\"discount\":");
	sbuf__i64(b, p->discount);
	sbuf__puts(b, ",\"total\":");
	sbuf__i64(b, p->total);
	put_opt(b, "currency", p->currency);
	put_opt(b, "payment", p->payment);
	put_opt(b, "member_id", p->member_id);
	put_opt(b, "guide_id", p->guide_id);
	put_opt(b, "reco_id", p->reco_id);
	if (p->n_coupons) {
		sbuf__puts(b, ",\"coupons\":[");
		for (size_t i = 0; i < p->n_coupons; i++) {
			if (i)
				sbuf__putc(b, ',');
			sbuf__jstr(b, p->coupons[i]);
		}
		sbuf__putc(b, ']');
	}
	sbuf__putc(b, '}');
	return finish(b);
}

int event__encode_return(const scrm_return *r, sbuf *b)
{
	int rc;
	int64_t sum;
	sbuf__reset(b);
	if (!r)
		return err__set(SCRM_E_INVALID, "return: NULL");
	if ((rc = check_str("return_id", r->return_id, 1, MAX_ID)) ||
	    (rc = check_str("order_id", r->order_id, 1, MAX_ID)) ||
	    (rc = check_lines(r->lines, r->n_lines, &sum)) ||
	    (rc = check_currency(r->currency)) ||
	    (rc = check_enum("refund_method", r->refund_method, payment_methods)) ||
	    (rc = check_str("reason", r->reason, 0, MAX_REASON)) ||
	    (rc = check_str("member_id", r->member_id, 0, MAX_ID)) ||
	    (rc = check_str("guide_id", r->guide_id, 0, MAX_ID)))
		return rc;
	if (r->total != sum)
		return err__set(SCRM_E_INVALID, "total: %lld does not match the returned lines (%lld)", (long long)r->total, (long long)sum);
	sbuf__puts(b, "{\"return_id\":");
	sbuf__jstr(b, r->return_id);
	put_opt(b, "order_id", r->order_id);
	sbuf__putc(b, ',');
	put_lines(b, r->lines, r->n_lines);
	sbuf__puts(b, ",\"total\":");
	sbuf__i64(b, r->total);
	put_opt(b, "currency", r->currency);
	put_opt(b, "refund_method", r->refund_method);
	put_opt(b, "reason", r->reason);
	put_opt(b, "member_id", r->member_id);
	put_opt(b, "guide_id", r->guide_id);
	sbuf__putc(b, '}');
	return finish(b);
}

int event__encode_scan_consent(const scrm_member_scan *s, int tracking, sbuf *b)
{
	int rc;
	sbuf__reset(b);
	if (!s)
		return err__set(SCRM_E_INVALID, "member_scan: NULL");
	if ((rc = check_str("member_id", s->member_id, 1, MAX_ID)))
		return rc;
	if (!tracking) {
		/* No behaviour-tracking consent: that the member was served is
		 * recorded, not how or by whom. */
		sbuf__puts(b, "{\"member_id\":");
		sbuf__jstr(b, s->member_id);
		sbuf__puts(b, ",\"tracking\":false}");
		return finish(b);
	}
	if ((rc = check_enum("method", s->method, scan_methods)) ||
	    (rc = check_str("guide_id", s->guide_id, 0, MAX_ID)))
		return rc;
	sbuf__puts(b, "{\"member_id\":");
	sbuf__jstr(b, s->member_id);
	put_opt(b, "method", s->method);
	put_opt(b, "guide_id", s->guide_id);
	sbuf__putc(b, '}');
	return finish(b);
}

int event__encode_scan(const scrm_member_scan *s, sbuf *b)
{
	return event__encode_scan_consent(s, 1, b);
}

/* ---- JSON → structs ------------------------------------------------- */

/* Keys allowed in each kind's JSON; anything else is refused by name. */
static const char *const purchase_keys[] = {"kind", "order_id", "lines", "discount", "total", "currency", "payment", "member_id", "guide_id", "coupons", "reco_id", NULL};
static const char *const return_keys[] = {"kind", "return_id", "order_id", "lines", "total", "currency", "refund_method", "reason", "member_id", "guide_id", NULL};
static const char *const scan_keys[] = {"kind", "member_id", "method", "guide_id", "tracking", NULL};
static const char *const line_keys[] = {"sku", "qty", "unit_price", "discount", NULL};

static int check_keys(const cJSON *obj, const char *const *allowed, const char *where)
{
	for (const cJSON *it = obj->child; it; it = it->next) {
		int ok = 0;
		for (const char *const *k = allowed; *k; k++)
			if (it->string && strcmp(it->string, *k) == 0)
				ok = 1;
		if (!ok)
			return err__set(SCRM_E_INVALID, "%s%s: unknown field", where, it->string ? it->string : "?");
	}
	return SCRM_OK;
}

/* Optional string: absent → NULL; present but not a string → error. */
static int get_str(const cJSON *obj, const char *key, const char *where, const char **out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	*out = NULL;
	if (!v)
		return SCRM_OK;
	if (!cJSON_IsString(v))
		return err__set(SCRM_E_INVALID, "%s%s: must be a string", where, key);
	*out = v->valuestring;
	return SCRM_OK;
}

/* What an integer field counts, for its messages. */
enum unit { U_MONEY, U_ITEMS };

/* Integer in ±2^53 (exact in a double); absent → dflt, or error if required.
 * Only what cannot be carried is refused here: the field's own bounds are
 * checked on the struct (check_lines, ...), so the C API and JSON refuse
 * the same values with the same words. lo..hi are those bounds, quoted
 * when a number is too large either way to be one. */
static int get_int(const cJSON *obj, const char *key, const char *where, int required, int64_t dflt,
		   enum unit unit, int64_t lo, int64_t hi, int64_t *out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	if (!v) {
		if (required)
			return err__set(SCRM_E_INVALID, "%s%s: required", where, key);
		*out = dflt;
		return SCRM_OK;
	}
	if (!cJSON_IsNumber(v))
		return err__set(SCRM_E_INVALID, "%s%s: must be a number", where, key);
	double d = v->valuedouble;
	if (!(d >= -(double)MAX_EXACT && d <= (double)MAX_EXACT))
		return err__set(SCRM_E_INVALID, "%s%s: out of range: %g, must be between %lld and %lld%s", where, key, d,
				(long long)lo, (long long)hi, unit == U_ITEMS ? " items" : " minor units");
	if (d != floor(d))
		return err__set(SCRM_E_INVALID, unit == U_ITEMS
					? "%s%s: must be a whole number (a count of items)"
					: "%s%s: must be an integer (money in minor units, e.g. 255 for 2.55)",
				where, key);
	*out = (int64_t)d;
	return SCRM_OK;
}

static int get_lines(const cJSON *obj, scrm_line **out, size_t *n)
{
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(obj, "lines");
	*out = NULL;
	*n = 0;
	if (!arr)
		return err__set(SCRM_E_INVALID, "lines: required");
	if (!cJSON_IsArray(arr))
		return err__set(SCRM_E_INVALID, "lines: must be an array");
	int cnt = cJSON_GetArraySize(arr);
	if (cnt == 0)
		return err__set(SCRM_E_INVALID, "lines: at least one line is required");
	if (cnt > MAX_LINES)
		return err__set(SCRM_E_INVALID, "lines: %d lines, at most %d", cnt, MAX_LINES);
	scrm_line *lines = calloc((size_t)cnt, sizeof(*lines));
	if (!lines)
		return err__set(SCRM_E_NOMEM, "out of memory");
	size_t i = 0;
	int rc = SCRM_OK;
	for (const cJSON *it = arr->child; it; it = it->next, i++) {
		char where[32];
		snprintf(where, sizeof(where), "lines[%zu].", i);
		if (!cJSON_IsObject(it)) {
			rc = err__set(SCRM_E_INVALID, "lines[%zu]: must be an object", i);
			break;
		}
		if ((rc = check_keys(it, line_keys, where)) ||
		    (rc = get_str(it, "sku", where, &lines[i].sku)) ||
		    (rc = get_int(it, "qty", where, 1, 0, U_ITEMS, 1, MAX_QTY, &lines[i].qty)) ||
		    (rc = get_int(it, "unit_price", where, 1, 0, U_MONEY, 0, MAX_PRICE, &lines[i].unit_price)) ||
		    (rc = get_int(it, "discount", where, 0, 0, U_MONEY, 0, MAX_EXACT, &lines[i].discount)))
			break;
	}
	if (rc) {
		free(lines);
		return rc;
	}
	*out = lines;
	*n = (size_t)cnt;
	return SCRM_OK;
}

static int parse_purchase(const cJSON *o, sbuf *out)
{
	scrm_purchase p;
	const char **codes = NULL;
	scrm_line *lines = NULL;
	int rc;
	memset(&p, 0, sizeof(p));
	if ((rc = check_keys(o, purchase_keys, "")) ||
	    (rc = get_str(o, "order_id", "", &p.order_id)) ||
	    (rc = get_lines(o, &lines, &p.n_lines)) ||
	    (rc = get_int(o, "discount", "", 0, 0, U_MONEY, 0, MAX_EXACT, &p.discount)) ||
	    (rc = get_int(o, "total", "", 1, 0, U_MONEY, 0, MAX_EXACT, &p.total)) ||
	    (rc = get_str(o, "currency", "", &p.currency)) ||
	    (rc = get_str(o, "payment", "", &p.payment)) ||
	    (rc = get_str(o, "member_id", "", &p.member_id)) ||
	    (rc = get_str(o, "guide_id", "", &p.guide_id)) ||
	    (rc = get_str(o, "reco_id", "", &p.reco_id)))
		goto cleanup;
	p.lines = lines;
	const cJSON *c = cJSON_GetObjectItemCaseSensitive(o, "coupons");
	if (c) {
		if (!cJSON_IsArray(c)) {
			rc = err__set(SCRM_E_INVALID, "coupons: must be an array of strings");
			goto cleanup;
		}
		int n = cJSON_GetArraySize(c);
		if (n > MAX_COUPONS) {
			rc = err__set(SCRM_E_INVALID, "coupons: %d codes, at most %d", n, MAX_COUPONS);
			goto cleanup;
		}
		codes = calloc((size_t)n + 1, sizeof(*codes));
		if (!codes) {
			rc = err__set(SCRM_E_NOMEM, "out of memory");
			goto cleanup;
		}
		int i = 0;
		for (const cJSON *it = c->child; it; it = it->next, i++) {
			if (!cJSON_IsString(it)) {
				rc = err__set(SCRM_E_INVALID, "coupons[%d]: must be a string", i);
				goto cleanup;
			}
			codes[i] = it->valuestring;
		}
		p.coupons = codes;
		p.n_coupons = (size_t)n;
	}
	rc = event__encode_purchase(&p, out);
cleanup:
	free(codes);
	free(lines);
	return rc;
}

static int parse_return(const cJSON *o, sbuf *out)
{
	scrm_return r;
	scrm_line *lines = NULL;
	int rc;
	memset(&r, 0, sizeof(r));
	if ((rc = check_keys(o, return_keys, "")) ||
	    (rc = get_str(o, "return_id", "", &r.return_id)) ||
	    (rc = get_str(o, "order_id", "", &r.order_id)) ||
	    (rc = get_lines(o, &lines, &r.n_lines)) ||
	    (rc = get_int(o, "total", "", 1, 0, U_MONEY, 0, MAX_EXACT, &r.total)) ||
	    (rc = get_str(o, "currency", "", &r.currency)) ||
	    (rc = get_str(o, "refund_method", "", &r.refund_method)) ||
	    (rc = get_str(o, "reason", "", &r.reason)) ||
	    (rc = get_str(o, "member_id", "", &r.member_id)) ||
	    (rc = get_str(o, "guide_id", "", &r.guide_id)))
		goto cleanup;
	r.lines = lines;
	rc = event__encode_return(&r, out);
cleanup:
	free(lines);
	return rc;
}

static int parse_scan(const cJSON *o, sbuf *out)
{
	scrm_member_scan s;
	const cJSON *t;
	int rc, tracking = 1;
	memset(&s, 0, sizeof(s));
	if ((rc = check_keys(o, scan_keys, "")) ||
	    (rc = get_str(o, "member_id", "", &s.member_id)) ||
	    (rc = get_str(o, "method", "", &s.method)) ||
	    (rc = get_str(o, "guide_id", "", &s.guide_id)))
		return rc;
	if ((t = cJSON_GetObjectItemCaseSensitive(o, "tracking"))) {
		if (!cJSON_IsBool(t))
			return err__set(SCRM_E_INVALID, "tracking: must be true or false");
		tracking = cJSON_IsTrue(t);
		if (!tracking && (s.method || s.guide_id))
			return err__set(SCRM_E_INVALID, "%s: not recorded for a member without tracking consent (tracking false)",
					s.method ? "method" : "guide_id");
	}
	return event__encode_scan_consent(&s, tracking, out);
}

/* The parser of each kind scrm_record_json accepts (kinds.def json = 1);
 * NOT_JSON (never a scrm_err) for the others. No default: a new kind is a
 * -Wswitch warning here. */
#define NOT_JSON 1
static int parse_kind(event__kind kind, const cJSON *o, sbuf *out)
{
	switch (kind) {
	case EVENT_PURCHASE:
		return parse_purchase(o, out);
	case EVENT_RETURN:
		return parse_return(o, out);
	case EVENT_MEMBER_SCAN:
		return parse_scan(o, out);
	case EVENT_COUPON_REDEEM:
	case EVENT_RECO_SHOWN:
		break; /* written by libscrm only */
	}
	return NOT_JSON;
}

int event__from_json(const char *json, size_t len, event__kind *kind, sbuf *out)
{
	cJSON *o = NULL;
	int rc;
	sbuf__reset(out);
	if (!json)
		return err__set(SCRM_E_INVALID, "json: NULL");
	if (len > EVENT_MAX_JSON_BYTES)
		return err__set(SCRM_E_TOO_BIG, "json: %zu bytes, at most %d", len, EVENT_MAX_JSON_BYTES);
	/* Strict: a repeated key ("kind" twice) is refused, not resolved one
	 * way here and another at central; so are NULs, which would cut a
	 * cJSON string short. */
	if ((rc = json__parse(json, len, "json", &o)) != SCRM_OK)
		return rc;
	if (!cJSON_IsObject(o)) {
		rc = err__set(SCRM_E_INVALID, "json: must be an object");
		goto cleanup;
	}
	const cJSON *k = cJSON_GetObjectItemCaseSensitive(o, "kind");
	if (!k) {
		rc = err__set(SCRM_E_INVALID, "kind: required (" EVENT_JSON_KINDS ")");
		goto cleanup;
	}
	if (!cJSON_IsString(k)) {
		rc = err__set(SCRM_E_INVALID, "kind: must be a string");
		goto cleanup;
	}
	event__kind kd = event__kind_parse(k->valuestring);
	if ((rc = parse_kind(kd, o, out)) == NOT_JSON)
		rc = err__set(SCRM_E_INVALID, "kind: unknown event kind \"%.32s\" (" EVENT_JSON_KINDS ")", k->valuestring);
	else
		*kind = kd;
cleanup:
	cJSON_Delete(o);
	return rc;
}
