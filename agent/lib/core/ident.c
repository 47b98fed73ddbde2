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

const char *ident__problem(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 64)
		return "must be 1..64 of [A-Za-z0-9_.-]";
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
		      c == '_' || c == '.'))
			return "must be 1..64 of [A-Za-z0-9_.-]";
	}
	for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++)
		if (strcmp(s, reserved[i].word) == 0)
			return reserved[i].why;
	return NULL;
}

int ident__ok(const char *s)
{
	return ident__problem(s) == NULL;
}
