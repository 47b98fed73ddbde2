/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ident: the id rule shared by the agent's config, the capture API's store
 * and the fleet console (see ident.h for why each part of it exists).
 */
#include "ident.h"

#include <string.h>

/* Words the topic tree uses where an id could stand. Today only "down"
 * collides (scrm/v1/{tenant}/{store}/down/#); "up" is kept free so a
 * store-wide uplink can be added without breaking a deployed device. Topics
 * are case-sensitive: "Down" is an id. */
static const struct {
	const char *word, *why;
} reserved[] = {
	{"up", "\"up\" is reserved: a word of the topic tree (scrm/v1/{tenant}/{store}/up/...), not an id"},
	{"down", "\"down\" is reserved: a word of the topic tree (scrm/v1/{tenant}/{store}/down/... is the "
		 "store-wide downlink every device of the store reads), not an id"},
};

static int word_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
	       c == '.';
}

const char *ident__problem(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 64)
		return "must be 1..64 of [A-Za-z0-9_.-]";
	for (size_t i = 0; i < n; i++)
		if (!word_char(s[i]))
			return "must be 1..64 of [A-Za-z0-9_.-]";
	for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++)
		if (strcmp(s, reserved[i].word) == 0)
			return reserved[i].why;
	return NULL;
}

int ident__ok(const char *s)
{
	return ident__problem(s) == NULL;
}

int ident__key_ok(const char *s, size_t max, const char *extra)
{
	size_t n;
	if (!s || !(n = strlen(s)) || n > max)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!word_char(s[i]) && s[i] != ':' && !(extra && strchr(extra, s[i])))
			return 0;
	return 1;
}

int ident__token_ok(const unsigned char *t, size_t n, size_t max)
{
	if (!t || n < 1 || n > max)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (t[i] < 0x21 || t[i] > 0x7e || t[i] == '"' || t[i] == '\\')
			return 0;
	return 1;
}
