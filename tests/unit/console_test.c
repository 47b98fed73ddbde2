/* SPDX-License-Identifier: Apache-2.0 */
/*
 * console_test: what scrm-fleet (`scrmctl fleet`) prints of a device's words
 * (console__term_text, agent/tools/scrm-fleet/console.c). A retained up/state is written by
 * the device (or by anyone holding its credentials), and the console shows
 * it on an operator's terminal: an escape sequence in a field must reach the
 * terminal as visible text, never as a control sequence (issue 12, finding
 * 6), and --json output must stay valid JSON that means the same.
 *
 * Links the real console.c (no I/O of its own) and libscrm's core; only
 * the escaping functions are called (no broker).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "console.h"
#include "sbuf.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* console__term_text of len bytes into a NUL-terminated malloc'd string. */
static char *esc(const char *s, size_t len, int json)
{
	sbuf b;
	sbuf__init(&b);
	console__term_text(&b, s, len, json);
	assert_false(b.oom);
	char *out = sbuf__take(&b, NULL);
	assert_non_null(out);
	return out;
}

#define HUMAN(lit) esc(lit, sizeof(lit) - 1, 0)
#define JSON(lit) esc(lit, sizeof(lit) - 1, 1)

static void expect_human(const char *in, size_t len, const char *want)
{
	char *got = esc(in, len, 0);
	assert_string_equal(got, want);
	free(got);
}

#define EXPECT_HUMAN(lit, want) expect_human(lit, sizeof(lit) - 1, want)

/* Nothing a terminal would act on: no C0 byte, no DEL, no C1 (as UTF-8
 * C2 80..9F or as a raw byte), only valid UTF-8. */
static void assert_terminal_safe(const char *s, int allow_ws)
{
	const unsigned char *p = (const unsigned char *)s;
	for (size_t i = 0; p[i]; i++) {
		if (allow_ws && (p[i] == '\n' || p[i] == '\t'))
			continue;
		if (p[i] < 0x20 || p[i] == 0x7f || (p[i] >= 0x80 && p[i] <= 0x9f && (i == 0 || p[i - 1] == 0xc2))) {
			fail_msg("byte 0x%02x at %zu of \"%s\"", p[i], i, s);
		}
	}
}

/* The finding itself: a clear-screen sequence, and the cursor and title
 * sequences that would rewrite the lines of `fleet list`. */
static void escape_sequences_are_shown(void **state)
{
	(void)state;
	EXPECT_HUMAN("1.4.0\x1b[2J", "1.4.0\\x1b[2J");
	EXPECT_HUMAN("\x1b[1A\x1b[2Konline", "\\x1b[1A\\x1b[2Konline");
	EXPECT_HUMAN("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07");
	/* CSI as a C1 control (U+009B, UTF-8 C2 9B) and NEL (U+0085) */
	EXPECT_HUMAN("a\xc2\x9b" "2Jb\xc2\x85", "a\\u009b2Jb\\u0085");
	/* DEL, newline (would add a line to the table), CR, tab */
	EXPECT_HUMAN("x\x7fy", "x\\x7fy");
	EXPECT_HUMAN("line1\nline2\rz\tw", "line1\\nline2\\rz\\tw");
	/* a backslash is escaped too, so "\x1b" in the output is always one */
	EXPECT_HUMAN("C:\\x1b", "C:\\\\x1b");
	/* NUL inside the given length */
	expect_human("a\0b", 3, "a\\x00b");
}

/* Bytes that are not UTF-8 are shown one by one; UTF-8 is kept. */
static void invalid_utf8_is_shown_as_bytes(void **state)
{
	(void)state;
	EXPECT_HUMAN("\xff", "\\xff");
	EXPECT_HUMAN("\x9b[2J", "\\x9b[2J"); /* a raw C1 byte: 8-bit CSI */
	EXPECT_HUMAN("\xc0\xaf", "\\xc0\\xaf");          /* overlong '/' */
	EXPECT_HUMAN("\xed\xa0\x80", "\\xed\\xa0\\x80"); /* a UTF-16 surrogate */
	EXPECT_HUMAN("\xf4\x90\x80\x80", "\\xf4\\x90\\x80\\x80"); /* > U+10FFFF */
	EXPECT_HUMAN("ab\xe2\x82", "ab\\xe2\\x82");      /* cut short at the end */
	EXPECT_HUMAN("\xe2\x82" "A", "\\xe2\\x82A");     /* cut short by ASCII */
	/* valid text of every length passes unchanged */
	EXPECT_HUMAN("caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x9b\x92 \xc2\xa0",
		     "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x9b\x92 \xc2\xa0");
	EXPECT_HUMAN("pos-01 v1.2.3-rc1 (aarch64)", "pos-01 v1.2.3-rc1 (aarch64)");
}

/* Characters that reorder or split the line as displayed. */
static void bidi_controls_are_shown(void **state)
{
	(void)state;
	EXPECT_HUMAN("\xe2\x80\xae" "enilno", "\\u202eenilno"); /* RIGHT-TO-LEFT OVERRIDE */
	EXPECT_HUMAN("a\xe2\x81\xa6" "b\xe2\x81\xa9", "a\\u2066b\\u2069");
	EXPECT_HUMAN("a\xe2\x80\xa8" "b", "a\\u2028b"); /* LINE SEPARATOR */
	EXPECT_HUMAN("\xe2\x80\x8f\xd8\x9c", "\\u200f\\u061c");
	EXPECT_HUMAN("\xe2\x80\x94", "\xe2\x80\x94"); /* an em dash is just text */
}

/* Long hostile input: every escape complete, nothing left raw. */
static void every_byte_value(void **state)
{
	(void)state;
	char in[512];
	for (int i = 0; i < 512; i++)
		in[i] = (char)(i & 0xff);
	char *out = esc(in, sizeof(in), 0);
	assert_terminal_safe(out, 0);
	free(out);
	out = esc(in, sizeof(in), 1);
	assert_terminal_safe(out, 1);
	free(out);
}

/* --json: what cJSON printed stays valid JSON with the same strings. */
static void json_stays_json(void **state)
{
	(void)state;
	static const char *const values[] = {
		"1.4.0\x1b[2J", "a\xc2\x9b" "b", "x\x7fy", "\xe2\x80\xae" "enilno", "back\\slash \"q\"", "line\nnext\ttab",
		"caf\xc3\xa9 \xf0\x9f\x9b\x92",
	};
	cJSON *o = cJSON_CreateObject();
	assert_non_null(o);
	char key[8];
	for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
		snprintf(key, sizeof(key), "k%zu", i);
		assert_non_null(cJSON_AddStringToObject(o, key, values[i]));
	}
	for (int pretty = 0; pretty < 2; pretty++) {
		char *text = pretty ? cJSON_Print(o) : cJSON_PrintUnformatted(o);
		assert_non_null(text);
		char *out = esc(text, strlen(text), 1);
		assert_terminal_safe(out, pretty);
		cJSON *back = cJSON_Parse(out);
		if (!back)
			fail_msg("not JSON any more: %s", out);
		for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
			snprintf(key, sizeof(key), "k%zu", i);
			const cJSON *v = cJSON_GetObjectItemCaseSensitive(back, key);
			assert_true(cJSON_IsString(v));
			assert_string_equal(v->valuestring, values[i]);
		}
		cJSON_Delete(back);
		free(out);
		cJSON_free(text);
	}
	cJSON_Delete(o);
	/* the escapes it writes */
	char *out = JSON("{\"v\":\"a\x7f\xc2\x85\xe2\x80\xae\"}");
	assert_string_equal(out, "{\"v\":\"a\\u007f\\u0085\\u202e\"}");
	free(out);
	/* a byte that is not UTF-8 (never in a checked payload): U+FFFD */
	out = JSON("{\"v\":\"\xff\"}");
	assert_string_equal(out, "{\"v\":\"\\ufffd\"}");
	free(out);
	/* JSON's own escapes and whitespace untouched, but a carriage return
	 * between tokens (it would rewrite the line) becomes a space */
	out = JSON("{\n\t\"v\":\"\\u001b\\\\\"\r\n}");
	assert_string_equal(out, "{\n\t\"v\":\"\\u001b\\\\\" \n}");
	free(out);
}

/* console__shown: the same escapes, cut to the buffer at a character
 * boundary (a table column never ends inside a UTF-8 sequence); NULL shows
 * as "". */
static void shown_fits_its_buffer(void **state)
{
	(void)state;
	char buf[8];
	assert_string_equal(console__shown(buf, sizeof(buf), NULL), "");
	assert_string_equal(console__shown(buf, sizeof(buf), "ok"), "ok");
	assert_string_equal(console__shown(buf, sizeof(buf), "a\x1b[2J"), "a\\x1b[2");
	/* "abcde" + U+00E9 (2 bytes) + "z": 8 bytes do not fit in 7 */
	assert_string_equal(console__shown(buf, sizeof(buf), "abcde\xc3\xa9z"), "abcde\xc3\xa9");
	assert_string_equal(console__shown(buf, sizeof(buf), "abcdef\xc3\xa9"), "abcdef");
	char big[64];
	assert_string_equal(console__shown(big, sizeof(big), "\xe2\x80\xae" "evil"), "\\u202eevil");
}

/* console__jtext: a string member or "", never NULL. */
static void jtext_is_never_null(void **state)
{
	(void)state;
	cJSON *o = cJSON_Parse("{\"s\":\"x\",\"n\":1}");
	assert_non_null(o);
	assert_string_equal(console__jtext(o, "s"), "x");
	assert_string_equal(console__jtext(o, "n"), "");
	assert_string_equal(console__jtext(o, "missing"), "");
	assert_string_equal(console__jtext(NULL, "s"), "");
	cJSON_Delete(o);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(escape_sequences_are_shown),
		cmocka_unit_test(invalid_utf8_is_shown_as_bytes),
		cmocka_unit_test(bidi_controls_are_shown),
		cmocka_unit_test(every_byte_value),
		cmocka_unit_test(json_stays_json),
		cmocka_unit_test(shown_fits_its_buffer),
		cmocka_unit_test(jtext_is_never_null),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
