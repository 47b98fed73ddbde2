/* SPDX-License-Identifier: Apache-2.0 */
/*
 * json: strict parsing of JSON from outside the agent (see json.h). Three
 * passes, none worse than n log n:
 *   1. a validating scanner over the bytes (RFC 8259 syntax, depth, NUL,
 *      escapes), which stops at the first fault with its line and column,
 *      and notes where the first invalid UTF-8 is;
 *   2. cJSON builds the tree from text now known to be valid;
 *   3. walks of the tree for invalid UTF-8 and repeated keys, which know
 *      the path but not the position: cJSON keeps none. The n-th key of the
 *      document is the n-th object member a pre-order walk meets, so a
 *      second scan that stops at that key gives its line and column.
 */
#include "json.h"

#include <scrm/scrm.h>

#include "err.h"

#include <cjson/cJSON.h>
#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* cJSON 1.7.15 copies a number into a 64-byte buffer: the digits past the
 * 63rd would be read as text after the number. Refused by name instead. */
#define MAX_NUMBER_CHARS 63
/* Objects up to this many members are checked for repeats pairwise (at
 * most 120 comparisons); larger ones sort their keys. */
#define SMALL_OBJECT 16
/* How much of a key a message quotes. */
#define SHOWN_KEY_BYTES 64

void json__locate(const char *text, size_t len, size_t off, int *line, int *col)
{
	*line = 1;
	*col = 1;
	if (off > len)
		off = len;
	for (size_t i = 0; i < off; i++) {
		unsigned char c = (unsigned char)text[i];
		if (c == '\n') {
			(*line)++;
			*col = 1;
		} else if ((c & 0xc0) != 0x80) { /* continuation bytes share a column */
			(*col)++;
		}
	}
}

/* Length of the valid UTF-8 sequence at p (n bytes available), or 0 (RFC
 * 3629: no overlong forms, no surrogates, nothing above U+10FFFF). */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
	unsigned c = p[0];
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		return n >= 2 && (p[1] & 0xc0) == 0x80 ? 2 : 0;
	if (c >= 0xe0 && c <= 0xef) {
		if (n < 3 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80)
			return 0;
		if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] > 0x9f))
			return 0;
		return 3;
	}
	if (c >= 0xf0 && c <= 0xf4) {
		if (n < 4 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80)
			return 0;
		if ((c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] > 0x8f))
			return 0;
		return 4;
	}
	return 0;
}

static int utf8_ok(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t n = strlen(s);
	while (n) {
		size_t k = utf8_seq(p, n);
		if (!k)
			return 0;
		p += k;
		n -= k;
	}
	return 1;
}

/* ---- pass 1: the scanner --------------------------------------------- */

enum fault { F_NONE, F_SYNTAX, F_DEPTH, F_NUL_ESCAPE, F_TRAILING };

struct scan {
	const unsigned char *s;
	size_t len, i;
	int depth;
	size_t keys;     /* object members met so far */
	size_t want_key; /* note where member number want_key (1-based) starts; 0 = none */
	size_t key_at;
	size_t bad_utf8; /* first byte of invalid UTF-8 in a string; SIZE_MAX = none */
	enum fault fault;
	const char *why; /* F_SYNTAX: what was wrong or expected */
	size_t at;       /* where the fault is */
};

static int fail(struct scan *sc, enum fault f, size_t at, const char *why)
{
	sc->fault = f;
	sc->at = at;
	sc->why = why;
	return -1;
}

static void skip_ws(struct scan *sc)
{
	while (sc->i < sc->len) {
		unsigned char c = sc->s[sc->i];
		if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
			break;
		sc->i++;
	}
}

static int is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static int hex4(const unsigned char *p, unsigned *out)
{
	unsigned v = 0;
	for (int k = 0; k < 4; k++) {
		unsigned char c = p[k];
		unsigned d;
		if (is_digit(c))
			d = (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			d = (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			d = (unsigned)(c - 'A' + 10);
		else
			return 0;
		v = v << 4 | d;
	}
	*out = v;
	return 1;
}

static int scan_string(struct scan *sc)
{
	size_t start = sc->i++;
	while (sc->i < sc->len) {
		unsigned char c = sc->s[sc->i];
		if (c == '"') {
			sc->i++;
			return 0;
		}
		if (c == '\\') {
			if (sc->i + 1 >= sc->len)
				break;
			unsigned char e = sc->s[sc->i + 1];
			if (e != 'u') {
				if (!memchr("\"\\/bfnrt", e, 8))
					return fail(sc, F_SYNTAX, sc->i,
						    "unknown escape; use \\\" \\\\ \\/ \\b \\f \\n \\r \\t or \\uXXXX");
				sc->i += 2;
				continue;
			}
			unsigned cp, lo;
			if (sc->i + 6 > sc->len || !hex4(sc->s + sc->i + 2, &cp))
				return fail(sc, F_SYNTAX, sc->i, "\\u must be followed by four hex digits");
			if (cp == 0)
				return fail(sc, F_NUL_ESCAPE, sc->i, NULL);
			/* cJSON refuses an unpaired surrogate too, but without
			 * saying so. */
			if (cp >= 0xdc00 && cp <= 0xdfff)
				return fail(sc, F_SYNTAX, sc->i, "unpaired UTF-16 surrogate in a \\u escape");
			if (cp >= 0xd800 && cp <= 0xdbff) {
				if (sc->i + 12 > sc->len || sc->s[sc->i + 6] != '\\' || sc->s[sc->i + 7] != 'u' ||
				    !hex4(sc->s + sc->i + 8, &lo) || lo < 0xdc00 || lo > 0xdfff)
					return fail(sc, F_SYNTAX, sc->i, "unpaired UTF-16 surrogate in a \\u escape");
				sc->i += 12;
			} else {
				sc->i += 6;
			}
			continue;
		}
		if (c == '\n' || c == '\r')
			return fail(sc, F_SYNTAX, sc->i,
				    "a string runs past the end of the line: a missing '\"'? (write a newline as \\n)");
		if (c < 0x20)
			return fail(sc, F_SYNTAX, sc->i,
				    "control character in a string; write it as an escape such as \\n or \\t");
		if (c < 0x80) {
			sc->i++;
			continue;
		}
		/* Invalid UTF-8 is refused after the parse, with the path of
		 * the string; here only where it is. */
		size_t k = utf8_seq(sc->s + sc->i, sc->len - sc->i);
		if (!k) {
			if (sc->bad_utf8 == SIZE_MAX)
				sc->bad_utf8 = sc->i;
			k = 1;
		}
		sc->i += k;
	}
	return fail(sc, F_SYNTAX, start, "string not terminated: no closing '\"'");
}

static int scan_number(struct scan *sc)
{
	size_t start = sc->i;
	const unsigned char *s = sc->s;
	if (s[sc->i] == '-')
		sc->i++;
	if (sc->i < sc->len && s[sc->i] == '0') {
		sc->i++;
		if (sc->i < sc->len && is_digit(s[sc->i]))
			return fail(sc, F_SYNTAX, start, "a number must not start with 0 (leading zeros)");
	} else if (sc->i < sc->len && is_digit(s[sc->i])) {
		while (sc->i < sc->len && is_digit(s[sc->i]))
			sc->i++;
	} else {
		return fail(sc, F_SYNTAX, start, "invalid number: a digit must follow '-'");
	}
	if (sc->i < sc->len && s[sc->i] == '.') {
		sc->i++;
		if (sc->i >= sc->len || !is_digit(s[sc->i]))
			return fail(sc, F_SYNTAX, start, "invalid number: a digit must follow '.'");
		while (sc->i < sc->len && is_digit(s[sc->i]))
			sc->i++;
	}
	if (sc->i < sc->len && (s[sc->i] == 'e' || s[sc->i] == 'E')) {
		sc->i++;
		if (sc->i < sc->len && (s[sc->i] == '+' || s[sc->i] == '-'))
			sc->i++;
		if (sc->i >= sc->len || !is_digit(s[sc->i]))
			return fail(sc, F_SYNTAX, start, "invalid number: a digit must follow the exponent");
		while (sc->i < sc->len && is_digit(s[sc->i]))
			sc->i++;
	}
	size_t n = sc->i - start;
	if (n > MAX_NUMBER_CHARS)
		return fail(sc, F_SYNTAX, start, "number longer than 63 characters");
	/* 1e400 is valid JSON that cJSON reads as infinity, and readers
	 * disagree on it (an error, infinity, a big integer): refused. Read as
	 * cJSON reads it, with strtod and the locale's decimal point. */
	char num[MAX_NUMBER_CHARS + 1];
	const char *dp = localeconv()->decimal_point;
	memcpy(num, s + start, n);
	num[n] = '\0';
	for (size_t k = 0; k < n; k++)
		if (num[k] == '.')
			num[k] = dp && dp[0] ? dp[0] : '.';
	if (isinf(strtod(num, NULL)))
		return fail(sc, F_SYNTAX, start, "number out of range (beyond 1.7e308)");
	return 0;
}

static int scan_literal(struct scan *sc, const char *word)
{
	size_t n = strlen(word);
	if (sc->len - sc->i < n || memcmp(sc->s + sc->i, word, n) != 0)
		return fail(sc, F_SYNTAX, sc->i, "expected a value (object, array, string, number, true, false or null)");
	sc->i += n;
	return 0;
}

static int scan_value(struct scan *sc);

static int scan_object(struct scan *sc)
{
	if (++sc->depth > JSON_MAX_DEPTH)
		return fail(sc, F_DEPTH, sc->i, NULL);
	sc->i++;
	skip_ws(sc);
	if (sc->i < sc->len && sc->s[sc->i] == '}') {
		sc->i++;
		sc->depth--;
		return 0;
	}
	for (;;) {
		skip_ws(sc);
		if (sc->i >= sc->len)
			return fail(sc, F_SYNTAX, sc->len, "the text ends inside an object: expected a key");
		if (sc->s[sc->i] != '"')
			return fail(sc, F_SYNTAX, sc->i,
				    sc->s[sc->i] == '}' ? "a comma before '}': expected another key"
							: "expected a key in double quotes");
		if (++sc->keys == sc->want_key)
			sc->key_at = sc->i;
		if (scan_string(sc))
			return -1;
		skip_ws(sc);
		if (sc->i >= sc->len || sc->s[sc->i] != ':')
			return fail(sc, F_SYNTAX, sc->i, "expected ':' after the key");
		sc->i++;
		if (scan_value(sc))
			return -1;
		skip_ws(sc);
		if (sc->i >= sc->len)
			return fail(sc, F_SYNTAX, sc->len, "the text ends inside an object: expected ',' or '}'");
		if (sc->s[sc->i] == '}') {
			sc->i++;
			sc->depth--;
			return 0;
		}
		if (sc->s[sc->i] != ',')
			return fail(sc, F_SYNTAX, sc->i, "expected ',' or '}'");
		sc->i++;
	}
}

static int scan_array(struct scan *sc)
{
	if (++sc->depth > JSON_MAX_DEPTH)
		return fail(sc, F_DEPTH, sc->i, NULL);
	sc->i++;
	skip_ws(sc);
	if (sc->i < sc->len && sc->s[sc->i] == ']') {
		sc->i++;
		sc->depth--;
		return 0;
	}
	for (;;) {
		skip_ws(sc);
		if (sc->i < sc->len && sc->s[sc->i] == ']')
			return fail(sc, F_SYNTAX, sc->i, "a comma before ']': expected another value");
		if (scan_value(sc))
			return -1;
		skip_ws(sc);
		if (sc->i >= sc->len)
			return fail(sc, F_SYNTAX, sc->len, "the text ends inside an array: expected ',' or ']'");
		if (sc->s[sc->i] == ']') {
			sc->i++;
			sc->depth--;
			return 0;
		}
		if (sc->s[sc->i] != ',')
			return fail(sc, F_SYNTAX, sc->i, "expected ',' or ']'");
		sc->i++;
	}
}

static int scan_value(struct scan *sc)
{
	skip_ws(sc);
	if (sc->i >= sc->len)
		return fail(sc, F_SYNTAX, sc->len, "the text ends where a value should be");
	unsigned char c = sc->s[sc->i];
	switch (c) {
	case '{':
		return scan_object(sc);
	case '[':
		return scan_array(sc);
	case '"':
		return scan_string(sc);
	case 't':
		return scan_literal(sc, "true");
	case 'f':
		return scan_literal(sc, "false");
	case 'n':
		return scan_literal(sc, "null");
	case '\'':
		return fail(sc, F_SYNTAX, sc->i, "strings take double quotes, not single");
	default:
		if (c == '-' || is_digit(c))
			return scan_number(sc);
		return fail(sc, F_SYNTAX, sc->i, "expected a value (object, array, string, number, true, false or null)");
	}
}

static void scan_init(struct scan *sc, const char *text, size_t len)
{
	memset(sc, 0, sizeof(*sc));
	sc->s = (const unsigned char *)text;
	sc->len = len;
	sc->bad_utf8 = SIZE_MAX;
}

/* 0 if the text is one value and nothing else but whitespace. */
static int scan_document(struct scan *sc)
{
	if (scan_value(sc))
		return -1;
	skip_ws(sc);
	if (sc->i < sc->len)
		return fail(sc, F_TRAILING, sc->i, NULL);
	return 0;
}

/* ---- pass 3: walks of the tree ----------------------------------------- */

static const char *key_of(const cJSON *item)
{
	return item->string ? item->string : "";
}

/* `s` as a message may quote it: at most `max` bytes (whole characters),
 * quotes and backslashes escaped, control characters as '?'. */
static void shown(char *out, size_t cap, const char *s, size_t max)
{
	size_t o = 0, n = strlen(s), i = 0;
	int cut = 0;
	if (n > max) {
		n = max;
		while (n && ((unsigned char)s[n] & 0xc0) == 0x80)
			n--;
		cut = 1;
	}
	for (; i < n && o + 6 < cap; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\')
			out[o++] = '\\';
		out[o++] = c < 0x20 || c == 0x7f ? '?' : (char)c;
	}
	if (cut || i < n) {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o] = '\0';
}

/* Append a segment to the path at `at`; returns the new end. A path too
 * long to show ends in "..." and grows no further. */
static size_t path_add(char *path, size_t cap, size_t at, const char *seg)
{
	size_t n = strlen(seg);
	if (at >= 3 && memcmp(path + at - 3, "...", 3) == 0)
		return at;
	if (at + n + 4 <= cap) {
		memcpy(path + at, seg, n + 1);
		return at + n;
	}
	memcpy(path + at, "...", 4);
	return at + 3;
}

static size_t path_key(char *path, size_t cap, size_t at, const char *key)
{
	char seg[SHOWN_KEY_BYTES + 16];
	size_t n = strlen(key);
	int plain = n > 0 && n <= 40 && !is_digit((unsigned char)key[0]);
	for (size_t i = 0; plain && i < n; i++) {
		char c = key[i];
		plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit((unsigned char)c) || c == '_';
	}
	if (plain) {
		seg[0] = '.';
		memcpy(seg + 1, key, n + 1);
	} else {
		char q[SHOWN_KEY_BYTES];
		shown(q, sizeof(q), key, 40);
		memcpy(seg, "[\"", 2);
		size_t k = strlen(q);
		memcpy(seg + 2, q, k);
		memcpy(seg + 2 + k, "\"]", 3);
	}
	return path_add(path, cap, at, seg);
}

static size_t path_index(char *path, size_t cap, size_t at, size_t i)
{
	char seg[32];
	snprintf(seg, sizeof(seg), "[%zu]", i);
	return path_add(path, cap, at, seg);
}

/* The first string in document order with invalid UTF-8: returns the item
 * whose key (*in_key) or string value it is, path filled (for a key, the
 * object's path), or NULL. */
static const cJSON *bad_utf8(const cJSON *node, char *path, size_t cap, size_t at, int *in_key)
{
	if (cJSON_IsString(node) && node->valuestring && !utf8_ok(node->valuestring)) {
		*in_key = 0;
		return node;
	}
	if (!cJSON_IsObject(node) && !cJSON_IsArray(node))
		return NULL;
	size_t i = 0;
	for (const cJSON *c = node->child; c; c = c->next, i++) {
		if (cJSON_IsObject(node) && !utf8_ok(key_of(c))) {
			*in_key = 1;
			return c;
		}
		size_t end = cJSON_IsObject(node) ? path_key(path, cap, at, key_of(c)) : path_index(path, cap, at, i);
		const cJSON *hit = bad_utf8(c, path, cap, end, in_key);
		if (hit)
			return hit;
		path[at] = '\0';
	}
	return NULL;
}

struct named {
	const char *name;
	size_t idx;
	const cJSON *item;
};

static int by_name(const void *a, const void *b)
{
	const struct named *x = a, *y = b;
	int c = strcmp(x->name, y->name);
	if (c)
		return c;
	return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* The first member of `obj` (in document order) whose key an earlier
 * member already has, in *rep (NULL if none). */
static int repeated_member(const cJSON *obj, const cJSON **rep)
{
	size_t n = 0;
	*rep = NULL;
	for (const cJSON *c = obj->child; c; c = c->next)
		n++;
	if (n < 2)
		return SCRM_OK;
	if (n <= SMALL_OBJECT) {
		for (const cJSON *c = obj->child->next; c; c = c->next)
			for (const cJSON *d = obj->child; d != c; d = d->next)
				if (strcmp(key_of(c), key_of(d)) == 0) {
					*rep = c;
					return SCRM_OK;
				}
		return SCRM_OK;
	}
	struct named *v = malloc(n * sizeof(*v));
	if (!v)
		return SCRM_E_NOMEM;
	size_t i = 0, first = SIZE_MAX;
	for (const cJSON *c = obj->child; c; c = c->next, i++) {
		v[i].name = key_of(c);
		v[i].idx = i;
		v[i].item = c;
	}
	qsort(v, n, sizeof(*v), by_name);
	/* Equal keys sit together, in document order: each but the first of
	 * a run is a repeat; the earliest repeat is the one to name. */
	for (i = 1; i < n; i++)
		if (strcmp(v[i - 1].name, v[i].name) == 0 && v[i].idx < first) {
			first = v[i].idx;
			*rep = v[i].item;
		}
	free(v);
	return SCRM_OK;
}

/* Pre-order: an object's own repeats first, then its members'. */
static int find_repeat(const cJSON *node, char *path, size_t cap, size_t at, const cJSON **rep)
{
	int rc;
	*rep = NULL;
	if (!cJSON_IsObject(node) && !cJSON_IsArray(node))
		return SCRM_OK;
	if (cJSON_IsObject(node) && ((rc = repeated_member(node, rep)) != SCRM_OK || *rep))
		return rc;
	size_t i = 0;
	for (const cJSON *c = node->child; c; c = c->next, i++) {
		if (!cJSON_IsObject(c) && !cJSON_IsArray(c))
			continue;
		size_t end = cJSON_IsObject(node) ? path_key(path, cap, at, key_of(c)) : path_index(path, cap, at, i);
		if ((rc = find_repeat(c, path, cap, end, rep)) != SCRM_OK || *rep)
			return rc;
		path[at] = '\0';
	}
	return SCRM_OK;
}

/* 1-based number of `target` among all object members in document order
 * (pre-order), counted into *n; 1 once found. */
static int member_number(const cJSON *node, const cJSON *target, size_t *n)
{
	int obj = cJSON_IsObject(node);
	if (!obj && !cJSON_IsArray(node))
		return 0;
	for (const cJSON *c = node->child; c; c = c->next) {
		if (obj)
			(*n)++;
		if (c == target)
			return 1;
		if (member_number(c, target, n))
			return 1;
	}
	return 0;
}

/* ---- the entry point ---------------------------------------------------- */

int json__parse(const char *text, size_t len, const char *what, cJSON **out)
{
	struct scan sc;
	cJSON *root = NULL;
	const cJSON *hit;
	const char *end = NULL;
	char path[192], key[SHOWN_KEY_BYTES + 8];
	int line, col, rc, in_key = 0;

	*out = NULL;
	if (!what)
		what = "json";
	if (!text && len)
		return err__set(SCRM_E_INVALID, "%s: no input (NULL)", what);
	scan_init(&sc, text, len);
	skip_ws(&sc);
	if (sc.i == len)
		return err__set(SCRM_E_INVALID, "%s: empty input", what);
	if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
		return err__set(SCRM_E_INVALID, "%s: starts with a byte order mark (U+FEFF); save it as UTF-8 without one",
				what);
	const char *nul = memchr(text, '\0', len);
	if (nul) {
		json__locate(text, len, (size_t)(nul - text), &line, &col);
		return err__set(SCRM_E_INVALID, "%s: NUL byte at line %d, column %d", what, line, col);
	}
	if (scan_document(&sc)) {
		json__locate(text, len, sc.at, &line, &col);
		switch (sc.fault) {
		case F_DEPTH:
			return err__set(SCRM_E_INVALID, "%s: nested too deeply (more than %d levels) at line %d, column %d",
					what, JSON_MAX_DEPTH, line, col);
		case F_NUL_ESCAPE:
			return err__set(SCRM_E_INVALID, "%s: \\u0000 (NUL) in a string at line %d, column %d: not allowed",
					what, line, col);
		case F_TRAILING:
			return err__set(SCRM_E_INVALID, "%s: unexpected text after the JSON value at line %d, column %d",
					what, line, col);
		default:
			return err__set(SCRM_E_INVALID, "%s: not valid JSON at line %d, column %d (%s)", what, line, col,
					sc.why ? sc.why : "syntax error");
		}
	}
	/* The scanner is stricter than cJSON in every respect, so a failure
	 * now is a failed allocation. */
	root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
	if (!root)
		return err__set(SCRM_E_NOMEM, "%s: out of memory parsing %zu bytes", what, len);
	if (sc.bad_utf8 != SIZE_MAX) {
		json__locate(text, len, sc.bad_utf8, &line, &col);
		snprintf(path, sizeof(path), "$");
		hit = bad_utf8(root, path, sizeof(path), 1, &in_key);
		rc = err__set(SCRM_E_INVALID, "%s: invalid UTF-8 in %s at %s (line %d, column %d); JSON text must be UTF-8",
			      what, in_key ? "a key" : "a string", hit ? path : "$", line, col);
		goto cleanup;
	}
	snprintf(path, sizeof(path), "$");
	if ((rc = find_repeat(root, path, sizeof(path), 1, &hit)) != SCRM_OK) {
		rc = err__set(rc, "%s: out of memory checking keys", what);
		goto cleanup;
	}
	if (hit) {
		size_t n = 0;
		member_number(root, hit, &n);
		scan_init(&sc, text, len);
		sc.want_key = n;
		scan_document(&sc);
		json__locate(text, len, sc.key_at, &line, &col);
		shown(key, sizeof(key), key_of(hit), SHOWN_KEY_BYTES);
		rc = err__set(SCRM_E_INVALID, "%s: duplicate key \"%s\" at %s (line %d, column %d)", what, key, path, line,
			      col);
		goto cleanup;
	}
	*out = root;
	return SCRM_OK;
cleanup:
	cJSON_Delete(root);
	return rc;
}

/* ---- typed reads of one member (json.h) -------------------------------- */

int json__is_int(const cJSON *it, int64_t lo, int64_t hi, int64_t *out)
{
	if (!cJSON_IsNumber(it))
		return 0;
	double d = it->valuedouble;
	if (!isfinite(d) || d != floor(d) || d < (double)lo || d > (double)hi)
		return 0;
	*out = (int64_t)d;
	return 1;
}

int json__get_int(const cJSON *o, const char *name, int64_t lo, int64_t hi, int required, int64_t dflt,
		  const char *path, int64_t *out)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
	*out = dflt;
	if (!it || cJSON_IsNull(it)) {
		if (required)
			return err__set(SCRM_E_INVALID, "%s%s: required", path, name);
		return SCRM_OK;
	}
	if (!json__is_int(it, lo, hi, out))
		return err__set(SCRM_E_INVALID, "%s%s: must be an integer between %lld and %lld", path, name,
				(long long)lo, (long long)hi);
	return SCRM_OK;
}

int json__get_num(const cJSON *o, const char *name, int required, const char *path, double *out)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
	*out = 0;
	if (!it || cJSON_IsNull(it)) {
		if (required)
			return err__set(SCRM_E_INVALID, "%s%s: required", path, name);
		return SCRM_OK;
	}
	if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || it->valuedouble < 0)
		return err__set(SCRM_E_INVALID, "%s%s: must be a number >= 0", path, name);
	*out = it->valuedouble;
	return SCRM_OK;
}

int json__get_str(const cJSON *o, const char *name, size_t max, int required, const char *path, const char **out)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
	*out = NULL;
	if (!it || cJSON_IsNull(it)) {
		if (required)
			return err__set(SCRM_E_INVALID, "%s%s: required", path, name);
		return SCRM_OK;
	}
	if (!cJSON_IsString(it) || strlen(it->valuestring) > max || (required && !it->valuestring[0]))
		return err__set(SCRM_E_INVALID, "%s%s: must be a %sstring of at most %zu bytes", path, name,
				required ? "non-empty " : "", max);
	*out = it->valuestring;
	return SCRM_OK;
}

int json__get_bool(const cJSON *o, const char *name, const char *path, int dflt, int *out)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
	*out = dflt;
	if (!it || cJSON_IsNull(it))
		return SCRM_OK;
	if (!cJSON_IsBool(it))
		return err__set(SCRM_E_INVALID, "%s%s: must be true or false", path, name);
	*out = cJSON_IsTrue(it);
	return SCRM_OK;
}

int json__get_obj(const cJSON *o, const char *name, int required, const char *path, cJSON **out)
{
	cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
	*out = NULL;
	if (!it || cJSON_IsNull(it)) {
		if (required)
			return err__set(SCRM_E_INVALID, "%s%s: required", path, name);
		return SCRM_OK;
	}
	if (!cJSON_IsObject(it))
		return err__set(SCRM_E_INVALID, "%s%s: must be an object", path, name);
	*out = it;
	return SCRM_OK;
}

/* Walk a dotted path ("outbox.pending"); a segment longer than the buffer
 * finds nothing. */
static const cJSON *walk(const cJSON *o, const char *path)
{
	char seg[128];
	while (o && *path) {
		const char *dot = strchr(path, '.');
		size_t n = dot ? (size_t)(dot - path) : strlen(path);
		if (n >= sizeof(seg))
			return NULL;
		memcpy(seg, path, n);
		seg[n] = 0;
		o = cJSON_GetObjectItemCaseSensitive(o, seg);
		path += n + (dot ? 1 : 0);
	}
	return o;
}

const char *json__str(const cJSON *o, const char *path)
{
	const cJSON *it = walk(o, path);
	return cJSON_IsString(it) ? it->valuestring : NULL;
}

int64_t json__i64(const cJSON *o, const char *path, int64_t dflt)
{
	const cJSON *it = walk(o, path);
	if (!cJSON_IsNumber(it) || !(it->valuedouble >= -(double)JSON_INT_MAX && it->valuedouble <= (double)JSON_INT_MAX))
		return dflt;
	return (int64_t)it->valuedouble;
}

double json__num(const cJSON *o, const char *path, double dflt)
{
	const cJSON *it = walk(o, path);
	return cJSON_IsNumber(it) && isfinite(it->valuedouble) ? it->valuedouble : dflt;
}
