/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_json: json__parse(), the strict JSON reader every parser of outside
 * input goes through (agent/lib/core/json.c).
 *
 * Beyond "no crash, no sanitizer report, no leak", every input checks:
 *   - a refusal is SCRM_E_INVALID (or NOMEM) with a message naming the
 *     input ("json: ..."), and leaves no tree;
 *   - json__parse is stricter than cJSON, never looser: whatever it
 *     accepts cJSON accepts too, and reads the same;
 *   - an accepted tree has no object with a repeated key, nests at most
 *     JSON_MAX_DEPTH deep, and holds only valid UTF-8 without NULs;
 *   - what is accepted, printed back by cJSON, is accepted again.
 */
#include "fuzz.h"

#include "err.h"
#include "json.h"

#include <scrm/scrm.h>

#include <cjson/cJSON.h>
#include <string.h>

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Strict UTF-8 (RFC 3629), written apart from json.c's on purpose. */
static int utf8_valid(const unsigned char *s)
{
	while (*s) {
		unsigned c = *s, cp, n;
		if (c < 0x80) {
			s++;
			continue;
		}
		if ((c & 0xe0) == 0xc0)
			n = 1, cp = c & 0x1f;
		else if ((c & 0xf0) == 0xe0)
			n = 2, cp = c & 0x0f;
		else if ((c & 0xf8) == 0xf0)
			n = 3, cp = c & 0x07;
		else
			return 0;
		for (unsigned i = 1; i <= n; i++) {
			if ((s[i] & 0xc0) != 0x80)
				return 0;
			cp = cp << 6 | (s[i] & 0x3f);
		}
		if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		s += n + 1;
	}
	return 1;
}

/* Depth of the tree ({} alone is 1); checks keys and strings on the way. */
static int check_tree(const cJSON *node)
{
	if (cJSON_IsString(node))
		FUZZ_CHECK(utf8_valid((const unsigned char *)node->valuestring), "invalid UTF-8 accepted");
	if (!cJSON_IsObject(node) && !cJSON_IsArray(node))
		return 0;
	int n = 0, deepest = 0;
	for (const cJSON *c = node->child; c; c = c->next)
		n++;
	const char **names = NULL;
	if (cJSON_IsObject(node) && n > 1) {
		names = malloc((size_t)n * sizeof(*names));
		FUZZ_CHECK(names != NULL, "out of memory");
	}
	int i = 0;
	for (const cJSON *c = node->child; c; c = c->next, i++) {
		if (cJSON_IsObject(node)) {
			FUZZ_CHECK(c->string != NULL, "object member without a key");
			FUZZ_CHECK(utf8_valid((const unsigned char *)c->string), "invalid UTF-8 in an accepted key");
			if (names)
				names[i] = c->string;
		}
		int d = check_tree(c);
		if (d > deepest)
			deepest = d;
	}
	if (names) {
		qsort(names, (size_t)n, sizeof(*names), cmp_str);
		for (i = 1; i < n; i++)
			FUZZ_CHECK(strcmp(names[i - 1], names[i]) != 0, "duplicate key \"%s\" accepted", names[i]);
		free(names);
	}
	return deepest + 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text = (const char *)data;
	cJSON *root = (cJSON *)1;
	err__clear();
	int rc = json__parse(text, size, NULL, &root);
	if (rc != SCRM_OK) {
		FUZZ_CHECK(rc == SCRM_E_INVALID || rc == SCRM_E_NOMEM, "rc %d", rc);
		FUZZ_CHECK(root == NULL, "refused but a tree was returned");
		FUZZ_CHECK(strncmp(scrm_errmsg(), "json: ", 6) == 0 && scrm_errmsg()[6] != '\0',
			   "refusal without a message naming the input: '%s'", scrm_errmsg());
		return 0;
	}
	FUZZ_CHECK(root != NULL, "accepted without a tree");
	FUZZ_CHECK(!memchr(data, '\0', size), "NUL byte accepted");
	int depth = check_tree(root);
	FUZZ_CHECK(depth <= JSON_MAX_DEPTH, "depth %d accepted", depth);

	/* Never looser than cJSON, and read the same. */
	const char *end = NULL;
	cJSON *plain = cJSON_ParseWithLengthOpts(text, size, &end, 0);
	FUZZ_CHECK(plain != NULL, "accepted what cJSON refuses");
	FUZZ_CHECK(cJSON_Compare(root, plain, 1), "read differently from cJSON");
	cJSON_Delete(plain);

	/* What cJSON prints from an accepted tree is accepted again. */
	char *printed = cJSON_PrintUnformatted(root);
	if (printed) {
		cJSON *again = NULL;
		FUZZ_CHECK(json__parse(printed, strlen(printed), NULL, &again) == SCRM_OK, "reprint refused: %s",
			   scrm_errmsg());
		cJSON_Delete(again);
		cJSON_free(printed);
	}
	cJSON_Delete(root);
	return 0;
}
