/* SPDX-License-Identifier: Apache-2.0 */
/*
 * json: the one way the agent reads JSON that comes from outside it — a
 * POS's events, the config files, central's commands, cache deltas and
 * snapshots, what the fleet console reads off the broker. It owns nothing
 * but the rules; the tree is cJSON's.
 *
 * cJSON alone is lenient where parsers disagree, and two parsers that read
 * one document differently are an attack: a repeated key is kept twice and
 * a lookup returns the first copy, where most other readers keep the last
 * ({"kind":"purchase","kind":"return"} was a purchase to scrmctl and could
 * be a return to central). So json__parse() refuses, naming what and where:
 * empty input, anything that is not exactly one RFC 8259 value (trailing
 * text, raw control characters in strings, leading zeros, a byte order
 * mark), nesting deeper than JSON_MAX_DEPTH, a NUL (raw or \u0000: cJSON's
 * strings end at it, so "a\u0000b" would read as "a"), invalid UTF-8 in a
 * string, and a key repeated in any object at any depth.
 */
#ifndef SCRM_JSON_H
#define SCRM_JSON_H

#include <stddef.h>

struct cJSON;

/* Deepest nesting of arrays and objects accepted ({} alone is 1). The
 * protocol's documents nest a handful of levels (a delta's op's record);
 * cJSON's own limit, 1000, is 1000 recursive calls on a till's small stack.
 * The scan that enforces it runs before cJSON sees the text, so a
 * 10,000-deep document never reaches cJSON. */
#define JSON_MAX_DEPTH 64

/* Parse `len` bytes of `text` (borrowed; need not be NUL-terminated) as
 * exactly one JSON value. `what` names the input in messages ("config",
 * "command", a file's path; NULL = "json"; borrowed). `out` must not be
 * NULL. Returns SCRM_OK with *out owning the tree (cJSON_Delete), or
 * SCRM_E_INVALID with *out = NULL and scrm_errmsg() saying why, e.g.
 *   config: not valid JSON at line 3, column 17 (expected ',' or '}')
 *   json: duplicate key "total" at $.lines[0] (line 1, column 63)
 *   json: nested too deeply (more than 64 levels) at line 1, column 65
 *   json: empty input
 * The path ($, $.a.b[2], $["odd key"]) is that of the object holding the
 * repeated key, or of the string holding invalid UTF-8. SCRM_E_NOMEM if
 * cJSON runs out of memory. Any thread; no state. O(n log n): keys are
 * sorted to find repeats in an object of more than a few. Callers check
 * the value's type themselves. */
int json__parse(const char *text, size_t len, const char *what, struct cJSON **out);

/* Line and column (1-based; the column counts characters, not bytes) of
 * byte offset `off` in `text` (`len` bytes; off is clamped to len). */
void json__locate(const char *text, size_t len, size_t off, int *line, int *col);

#endif
