/* SPDX-License-Identifier: Apache-2.0 */
/*
 * json_test: the strict JSON reader (agent/lib/core/json.c) that every parser of
 * outside input goes through. What a user must be able to act on: a
 * repeated key is refused at any depth, named with the path of its object
 * and its line and column; so are empty input, syntax errors (line and
 * column), text after the value, nesting beyond JSON_MAX_DEPTH (10,000
 * levels never reach cJSON), NULs and invalid UTF-8. A 200,000-key object
 * with no repeat is accepted (the check sorts: n log n, no timing asserted).
 * Links json.c, err.c and the real cJSON.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil.h"

#include "json.h"

#include <scrm/scrm.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse(const char *text, cJSON **out)
{
	return json__parse(text, strlen(text), "doc", out);
}

/* Refused as SCRM_E_INVALID with exactly this message. */
static void expect_msg(const char *text, const char *msg)
{
	cJSON *o = (cJSON *)1;
	int rc = parse(text, &o);
	if (rc != SCRM_E_INVALID || strcmp(scrm_errmsg(), msg) != 0) {
		print_error("input   %s\nwant    %s\ngot rc %d %s\n", text, msg, rc, scrm_errmsg());
		fail();
	}
	assert_null(o);
}

/* Refused as SCRM_E_INVALID, the message containing `needle`. */
static void expect_refused(const char *text, size_t len, const char *needle)
{
	cJSON *o = (cJSON *)1;
	int rc = json__parse(text, len, "doc", &o);
	if (rc != SCRM_E_INVALID || strncmp(scrm_errmsg(), "doc: ", 5) != 0 || !strstr(scrm_errmsg(), needle)) {
		print_error("input   %.*s\nwant    ...%s...\ngot rc %d %s\n", (int)(len > 200 ? 200 : len), text, needle,
			    rc, scrm_errmsg());
		fail();
	}
	assert_null(o);
}

static void accepts_valid_documents(void **state)
{
	(void)state;
	static const char *const ok[] = {
		"{}", "[]", "0", "-0", "1.5e-3", "-12E+2", "\"\"", "true", "false", "null", " \t\r\n{ \"a\" : [ 1 , 2 ] }\n",
		"{\"a\":{\"a\":{\"a\":1}}}",                /* one name at several depths is no repeat */
		"[{\"k\":1},{\"k\":2}]",                      /* nor in sibling objects */
		"{\"a\":1,\"A\":2}",                          /* keys are case-sensitive */
		"{\"\\u00e9\":1,\"\xc3\xa9\\u0301\":2}",      /* different bytes, different keys */
		"\"\\ud83d\\ude00 \xf0\x9f\x98\x80 \\\" \\\\ \\/ \\b \\f \\n \\r \\t\"",
		"[\"\xed\x9f\xbf\", \"\xee\x80\x80\", \"\xf4\x8f\xbf\xbf\"]", /* edges around the surrogates, U+10FFFF */
	};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		cJSON *o = NULL;
		int rc = parse(ok[i], &o);
		if (rc != SCRM_OK) {
			print_error("refused %s: %s\n", ok[i], scrm_errmsg());
			fail();
		}
		assert_non_null(o);
		cJSON_Delete(o);
	}
	/* The value is what cJSON reads. */
	cJSON *o = NULL;
	assert_int_equal(parse("{\"total\":510,\"lines\":[{\"sku\":\"A\"}]}", &o), SCRM_OK);
	assert_int_equal(cJSON_GetObjectItemCaseSensitive(o, "total")->valueint, 510);
	cJSON_Delete(o);
}

static void duplicate_keys_refused_with_path_and_position(void **state)
{
	(void)state;
	expect_msg("{\"total\":510,\"total\":1}", "doc: duplicate key \"total\" at $ (line 1, column 14)");
	expect_msg("{\"kind\":\"purchase\",\"kind\":\"return\"}", "doc: duplicate key \"kind\" at $ (line 1, column 20)");
	/* Nested, in an array, on another line: the object's path, the
	 * repeat's own position. */
	expect_msg("{\"order_id\":\"1\",\n \"lines\":[{\"sku\":\"A\",\"qty\":1},\n"
		   "  {\"sku\":\"B\",\"total\":1,\"qty\":2,\"total\":3}]}",
		   "doc: duplicate key \"total\" at $.lines[1] (line 3, column 32)");
	expect_msg("{\"broker\":{\"uri\":\"x\",\"allow_plaintext\":false,\"allow_plaintext\":true}}",
		   "doc: duplicate key \"allow_plaintext\" at $.broker (line 1, column 46)");
	expect_msg("[[{}],[{\"a\":{\"b\":[{\"c\":1,\"c\":1}]}}]]",
		   "doc: duplicate key \"c\" at $[1][0].a.b[0] (line 1, column 26)");
	/* Names that are not identifiers are bracketed and escaped. */
	expect_msg("{\"set\":{\"sync.window\":4,\"sync.window\":5}}",
		   "doc: duplicate key \"sync.window\" at $.set (line 1, column 25)");
	expect_msg("{\"a b\":{\"q\\\"\":1,\"q\\\"\":2}}", "doc: duplicate key \"q\\\"\" at $[\"a b\"] (line 1, column 17)");
	/* The same key written two ways is one key. */
	expect_msg("{\"kind\":1,\"\\u006bind\":2}", "doc: duplicate key \"kind\" at $ (line 1, column 11)");
	/* Equal values repeated are still refused: which one a reader keeps
	 * must never matter. */
	expect_refused("{\"a\":1,\"a\":1}", 13, "duplicate key \"a\" at $");
	/* Of several repeats, the first in the object is named. */
	expect_msg("{\"x\":1,\"y\":2,\"y\":3,\"x\":4}", "doc: duplicate key \"y\" at $ (line 1, column 14)");
	/* Non-ASCII columns count characters. */
	expect_msg("{\"\xc3\xa9t\xc3\xa9\":1,\"\xc3\xa9t\xc3\xa9\":2}",
		   "doc: duplicate key \"\xc3\xa9t\xc3\xa9\" at $ (line 1, column 10)");
}

static void duplicate_in_a_large_object(void **state)
{
	(void)state;
	/* Past the pairwise limit the keys are sorted: still the first repeat
	 * in the document is named, and where it is. */
	char buf[4096];
	size_t o = 0;
	o += (size_t)snprintf(buf + o, sizeof(buf) - o, "{");
	for (int i = 0; i < 100; i++)
		o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s\"k%03d\":%d", i ? "," : "", i, i);
	o += (size_t)snprintf(buf + o, sizeof(buf) - o, ",\"k050\":0,\"k007\":0}");
	expect_refused(buf, o, "duplicate key \"k050\" at $ (line 1, column ");
}

static void hostile_object_is_n_log_n(void **state)
{
	(void)state;
	/* 200,000 distinct keys: a pairwise check would be 2*10^10 strcmp
	 * calls; sorting makes it a few million. */
	const int n = 200000;
	size_t cap = (size_t)n * 16 + 16, o = 0;
	char *buf = malloc(cap);
	assert_non_null(buf);
	buf[o++] = '{';
	for (int i = 0; i < n; i++)
		o += (size_t)snprintf(buf + o, cap - o, "%s\"%07d\":1", i ? "," : "", i);
	buf[o++] = '}';
	cJSON *root = NULL;
	assert_int_equal(json__parse(buf, o, "doc", &root), SCRM_OK);
	assert_int_equal(cJSON_GetArraySize(root), n);
	cJSON_Delete(root);
	/* The same with one repeat at the very end. */
	o--;
	o += (size_t)snprintf(buf + o, cap - o, ",\"0123456\":2}");
	expect_refused(buf, o, "duplicate key \"0123456\" at $");
	free(buf);
}

static void empty_input(void **state)
{
	(void)state;
	cJSON *o = NULL;
	assert_int_equal(json__parse("", 0, "config", &o), SCRM_E_INVALID);
	assert_string_equal(scrm_errmsg(), "config: empty input");
	assert_int_equal(json__parse(NULL, 0, "config", &o), SCRM_E_INVALID);
	assert_string_equal(scrm_errmsg(), "config: empty input");
	assert_int_equal(json__parse(" \n\t\r\n", 5, NULL, &o), SCRM_E_INVALID);
	assert_string_equal(scrm_errmsg(), "json: empty input");
	assert_null(o);
}

static void syntax_errors_give_line_and_column(void **state)
{
	(void)state;
	expect_msg("{\n  \"tenant\": \"acme\",\n  \"store_id\": s0042\n}",
		   "doc: not valid JSON at line 3, column 15 (expected a value (object, array, string, number, true, "
		   "false or null))");
	expect_msg("{\"a\":1,}", "doc: not valid JSON at line 1, column 8 (a comma before '}': expected another key)");
	expect_msg("[1,2,]", "doc: not valid JSON at line 1, column 6 (a comma before ']': expected another value)");
	expect_msg("{\"a\" 1}", "doc: not valid JSON at line 1, column 6 (expected ':' after the key)");
	expect_msg("{\"a\":1 \"b\":2}", "doc: not valid JSON at line 1, column 8 (expected ',' or '}')");
	expect_msg("{a:1}", "doc: not valid JSON at line 1, column 2 (expected a key in double quotes)");
	expect_msg("{\"kind\":'member_scan'}",
		   "doc: not valid JSON at line 1, column 9 (strings take double quotes, not single)");
	expect_msg("{\"a\":\"x", "doc: not valid JSON at line 1, column 6 (string not terminated: no closing '\"')");
	expect_msg("{\"a\":1", "doc: not valid JSON at line 1, column 7 (the text ends inside an object: expected ',' or '}')");
	expect_msg("[01]", "doc: not valid JSON at line 1, column 2 (a number must not start with 0 (leading zeros))");
	expect_msg("[1.]", "doc: not valid JSON at line 1, column 2 (invalid number: a digit must follow '.')");
	expect_msg("[-]", "doc: not valid JSON at line 1, column 2 (invalid number: a digit must follow '-')");
	expect_msg("[1e]", "doc: not valid JSON at line 1, column 2 (invalid number: a digit must follow the exponent)");
	expect_msg("[tru]", "doc: not valid JSON at line 1, column 2 (expected a value (object, array, string, number, "
			    "true, false or null))");
	expect_msg("[\"a\tb\"]", "doc: not valid JSON at line 1, column 4 (control character in a string; write it as "
				 "an escape such as \\n or \\t)");
	expect_msg("{\"a\":\"x,\n\"b\":1}", "doc: not valid JSON at line 1, column 9 (a string runs past the end of "
					 "the line: a missing '\"'? (write a newline as \\n))");
	expect_msg("[\"\\x\"]", "doc: not valid JSON at line 1, column 3 (unknown escape; use \\\" \\\\ \\/ \\b \\f \\n "
				"\\r \\t or \\uXXXX)");
	expect_msg("[\"\\u12\"]", "doc: not valid JSON at line 1, column 3 (\\u must be followed by four hex digits)");
	expect_msg("[\"\\ud800\"]", "doc: not valid JSON at line 1, column 3 (unpaired UTF-16 surrogate in a \\u escape)");
	expect_msg("[\"\\udc00\\ud800\"]",
		   "doc: not valid JSON at line 1, column 3 (unpaired UTF-16 surrogate in a \\u escape)");
	/* NaN, Infinity, comments: JavaScript, not JSON. */
	expect_refused("[NaN]", 5, "line 1, column 2");
	expect_refused("[Infinity]", 10, "line 1, column 2");
	expect_refused("{} // c", 7, "unexpected text after the JSON value at line 1, column 4");
	/* cJSON would cut a number of more than 63 characters. */
	char big[100];
	memset(big, '1', sizeof(big));
	expect_refused(big, 64, "number longer than 63 characters");
	cJSON *o = NULL;
	assert_int_equal(json__parse(big, 63, "doc", &o), SCRM_OK);
	cJSON_Delete(o);
	/* Too large for a double: readers disagree (cJSON: infinity). */
	expect_msg("[1e400]", "doc: not valid JSON at line 1, column 2 (number out of range (beyond 1.7e308))");
	expect_msg("[-2e308]", "doc: not valid JSON at line 1, column 2 (number out of range (beyond 1.7e308))");
	assert_int_equal(parse("[1.7e308,-1.7e308,1e-400]", &o), SCRM_OK);
	cJSON_Delete(o);
	/* Whole characters per column, tabs count one. */
	expect_msg("{\"\xe2\x82\xac\xe2\x82\xac\":\t?}", "doc: not valid JSON at line 1, column 8 (expected a value (object, "
							    "array, string, number, true, false or null))");
}

static void trailing_text_refused(void **state)
{
	(void)state;
	expect_msg("{} x", "doc: unexpected text after the JSON value at line 1, column 4");
	expect_msg("{}{}", "doc: unexpected text after the JSON value at line 1, column 3");
	expect_msg("{},", "doc: unexpected text after the JSON value at line 1, column 3");
	expect_msg("1 2", "doc: unexpected text after the JSON value at line 1, column 3");
	expect_msg("{}\n\n  ]", "doc: unexpected text after the JSON value at line 3, column 3");
	/* Whitespace after the value is fine; other white-ish bytes are not. */
	cJSON *o = NULL;
	assert_int_equal(parse("{} \r\n\t", &o), SCRM_OK);
	cJSON_Delete(o);
	expect_refused("{}\f", 3, "unexpected text");
	expect_refused("{}\v", 3, "unexpected text");
}

static void deep_nesting_refused_before_cjson(void **state)
{
	(void)state;
	char buf[2 * (JSON_MAX_DEPTH + 1) + 1];
	cJSON *o = NULL;
	/* Exactly the limit is fine. */
	memset(buf, '[', JSON_MAX_DEPTH);
	memset(buf + JSON_MAX_DEPTH, ']', JSON_MAX_DEPTH);
	assert_int_equal(json__parse(buf, 2 * JSON_MAX_DEPTH, "doc", &o), SCRM_OK);
	cJSON_Delete(o);
	/* One more is not, at the bracket that crosses it. */
	memset(buf, '[', JSON_MAX_DEPTH + 1);
	memset(buf + JSON_MAX_DEPTH + 1, ']', JSON_MAX_DEPTH + 1);
	expect_refused(buf, 2 * (JSON_MAX_DEPTH + 1), "doc: nested too deeply (more than 64 levels) at line 1, column 65");
	/* 10,000 levels of objects and arrays, closed or not. */
	size_t depth = 10000, n = 0;
	char *deep = malloc(8 * depth + 16);
	assert_non_null(deep);
	for (size_t i = 0; i < depth; i++)
		n += (size_t)sprintf(deep + n, i % 2 ? "[" : "{\"a\":");
	deep[n++] = '1';
	for (size_t i = depth; i-- > 0;)
		deep[n++] = i % 2 ? ']' : '}';
	expect_refused(deep, n, "nested too deeply (more than 64 levels)");
	expect_refused(deep, depth, "nested too deeply (more than 64 levels)");
	/* Brackets inside strings are text, not depth. */
	n = 0;
	deep[n++] = '"';
	memset(deep + n, '[', depth);
	n += depth;
	deep[n++] = '"';
	assert_int_equal(json__parse(deep, n, "doc", &o), SCRM_OK);
	cJSON_Delete(o);
	free(deep);
}

static void nul_refused(void **state)
{
	(void)state;
	/* cJSON would keep "a" of "a\0b"; two keys would become one. */
	expect_refused("{\"a\":\"x\0y\"}", 11, "doc: NUL byte at line 1, column 8");
	expect_refused("{}\0", 3, "doc: NUL byte at line 1, column 3");
	expect_msg("{\"a\\u0000b\":1,\"a\\u0000c\":2}", "doc: \\u0000 (NUL) in a string at line 1, column 4: not allowed");
	/* An escaped backslash before u0000 is text, not an escape. */
	cJSON *o = NULL;
	assert_int_equal(parse("[\"\\\\u0000\"]", &o), SCRM_OK);
	assert_string_equal(cJSON_GetArrayItem(o, 0)->valuestring, "\\u0000");
	cJSON_Delete(o);
}

static void invalid_utf8_refused_with_path(void **state)
{
	(void)state;
	expect_msg("{\"lines\":[{\"sku\":\"A\xff\"}]}",
		   "doc: invalid UTF-8 in a string at $.lines[0].sku (line 1, column 20); JSON text must be UTF-8");
	expect_msg("{\"a\":{\"k\xc3\":1}}", "doc: invalid UTF-8 in a key at $.a (line 1, column 9); JSON text must be UTF-8");
	static const char *const bad[] = {
		"\"\xc0\xaf\"",         /* overlong '/' */
		"\"\xe0\x80\xaf\"",     /* overlong, 3 bytes */
		"\"\xed\xa0\x80\"",     /* a surrogate, UTF-8 encoded */
		"\"\xf4\x90\x80\x80\"", /* above U+10FFFF */
		"\"\xf8\x88\x80\x80\x80\"",
		"\"\x80\"",             /* a lone continuation byte */
		"\"\xe2\x82\"",         /* cut short by the quote */
		"[\"ok\",\"\xfe\"]",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_refused(bad[i], strlen(bad[i]), "invalid UTF-8 in a string at $");
	/* Outside strings it is a syntax error. */
	expect_refused("[1,\xc3\xa9]", 6, "not valid JSON at line 1, column 4");
	/* A byte order mark is named. */
	expect_refused("\xef\xbb\xbf{}", 5, "byte order mark");
}

static void need_not_be_nul_terminated(void **state)
{
	(void)state;
	/* Exactly `len` bytes in their own allocation: ASan would catch a
	 * read past the end (every error path reads up to the end). */
	static const char *const texts[] = {"{\"a\":[1,2,{\"b\":\"c\"}]}", "{\"a\":1,\"a\":2}", "{\"a\":\"\\u",
					    "{\"a\":1", "123", "\"\xc3", "[\"\\ud800\\u"};
	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		size_t n = strlen(texts[i]);
		for (size_t cut = 1; cut <= n; cut++) {
			char *exact = malloc(cut);
			assert_non_null(exact);
			memcpy(exact, texts[i], cut);
			cJSON *o = NULL;
			int rc = json__parse(exact, cut, "doc", &o);
			assert_true(rc == SCRM_OK || rc == SCRM_E_INVALID);
			assert_true((rc == SCRM_OK) == (o != NULL));
			cJSON_Delete(o);
			free(exact);
		}
	}
}

static void long_paths_and_keys_are_cut(void **state)
{
	(void)state;
	/* Deep enough that the path would not fit the message: it ends in
	 * "..."; a huge key is quoted in part. */
	char buf[2048];
	size_t o = 0;
	for (int i = 0; i < 60; i++)
		o += (size_t)snprintf(buf + o, sizeof(buf) - o, "{\"level%02d\":", i);
	o += (size_t)snprintf(buf + o, sizeof(buf) - o, "{\"x\":1,\"x\":2}");
	for (int i = 0; i < 60; i++)
		buf[o++] = '}';
	expect_refused(buf, o, "doc: duplicate key \"x\" at $.level00.level01.");
	assert_non_null(strstr(scrm_errmsg(), "... (line 1, column "));

	char *big = malloc(20000);
	assert_non_null(big);
	o = 0;
	big[o++] = '{';
	for (int k = 0; k < 2; k++) {
		big[o++] = '"';
		memset(big + o, 'k', 5000);
		o += 5000;
		o += (size_t)sprintf(big + o, "\":%d%s", k, k ? "}" : ",");
	}
	expect_refused(big, o, "doc: duplicate key \"kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk...\" at $");
	free(big);
}

static void locate_counts_lines_and_characters(void **state)
{
	(void)state;
	int line, col;
	static const char t[] = "ab\n\xc3\xa9x\n";
	json__locate(t, sizeof(t) - 1, 0, &line, &col);
	assert_int_equal(line, 1);
	assert_int_equal(col, 1);
	json__locate(t, sizeof(t) - 1, 2, &line, &col);
	assert_int_equal(line, 1);
	assert_int_equal(col, 3);
	json__locate(t, sizeof(t) - 1, 5, &line, &col); /* the x after é */
	assert_int_equal(line, 2);
	assert_int_equal(col, 2);
	json__locate(t, sizeof(t) - 1, 1000, &line, &col); /* clamped */
	assert_int_equal(line, 3);
	assert_int_equal(col, 1);
}

int main(int argc, char **argv)
{
	tu_select(argc, argv);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(accepts_valid_documents),
		cmocka_unit_test(duplicate_keys_refused_with_path_and_position),
		cmocka_unit_test(duplicate_in_a_large_object),
		cmocka_unit_test(hostile_object_is_n_log_n),
		cmocka_unit_test(empty_input),
		cmocka_unit_test(syntax_errors_give_line_and_column),
		cmocka_unit_test(trailing_text_refused),
		cmocka_unit_test(deep_nesting_refused_before_cjson),
		cmocka_unit_test(nul_refused),
		cmocka_unit_test(invalid_utf8_refused_with_path),
		cmocka_unit_test(need_not_be_nul_terminated),
		cmocka_unit_test(long_paths_and_keys_are_cut),
		cmocka_unit_test(locate_counts_lines_and_characters),
	};
	return cmocka_run_group_tests_name("json", tests, NULL, NULL);
}
