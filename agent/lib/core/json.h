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
#include <stdint.h>

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

/* The largest integer a JSON number carries exactly (2^53): sequence
 * numbers, milliseconds, money in minor units and counts are bounded by it
 * on the wire and on disk (docs/protocol.md, "Numbers"). */
#define JSON_INT_MAX 9007199254740992LL

/* ---- typed reads of one member ------------------------------------------
 * The strict getters check what came from outside and refuse with
 * SCRM_E_INVALID and a message naming the member as `path` + `name`
 * ("lines[2].qty: required", "coupons[0].pct: must be an integer between
 * 1 and 100"); `path` is the caller's prefix ("" at the top, borrowed).
 * An absent or null member is `dflt` (NULL for strings), or "required"
 * when `required`. Results are borrowed from the tree. */
int json__get_int(const struct cJSON *o, const char *name, int64_t lo, int64_t hi, int required, int64_t dflt,
		  const char *path, int64_t *out);
/* A string of at most `max` bytes; when required, also non-empty. */
int json__get_str(const struct cJSON *o, const char *name, size_t max, int required, const char *path,
		  const char **out);
int json__get_bool(const struct cJSON *o, const char *name, const char *path, int dflt, int *out);
/* A finite number >= 0. */
int json__get_num(const struct cJSON *o, const char *name, int required, const char *path, double *out);
/* An object member (*out borrowed; NULL when absent and not required). */
int json__get_obj(const struct cJSON *o, const char *name, int required, const char *path, struct cJSON **out);

/* 1 with *out set if `it` is a number that is an integer in [lo, hi]. */
int json__is_int(const struct cJSON *it, int64_t lo, int64_t hi, int64_t *out);

/* Lenient reads, for JSON the program made itself or already checked (its
 * own files, a reply it parsed strictly): no message, a default instead.
 * `path` may be dotted ("outbox.pending") to walk nested objects.
 * json__str: the string or NULL. json__i64: an integer within ±2^53
 * (truncated toward zero) or dflt. json__num: any finite number or dflt. */
const char *json__str(const struct cJSON *o, const char *path);
int64_t json__i64(const struct cJSON *o, const char *path, int64_t dflt);
double json__num(const struct cJSON *o, const char *path, double dflt);

#endif
