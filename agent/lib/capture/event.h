/* SPDX-License-Identifier: Apache-2.0 */
/*
 * event: the event kinds (kinds.def) and the validation and canonical JSON
 * encoding of event bodies (purchase, return, member scan), from the typed
 * structs of <scrm/scrm.h> or from JSON text. The encoded body is what the
 * outbox stores and the wire carries (docs/protocol.md, "Bodies"). Every
 * refusal names the field and the reason through err__set().
 */
#ifndef SCRM_EVENT_H
#define SCRM_EVENT_H

#include <scrm/scrm.h>

#include "sbuf.h"

/* Eviction classes under outbox.max_bytes, evicted in this order (kinds.def). */
enum event__evict { EVICT_BROWSING = 0, EVICT_SCANS = 1, EVICT_OTHER = 2, EVICT_NEVER = 3 };

/* The kinds: one row each in kinds.def. coupon_redeem and reco_shown are
 * written only by libscrm itself (scrm_redeem, scrm_recommend), never
 * accepted from scrm_record_json. */
typedef enum event__kind {
#define EVENT_KIND(e, value, name, paid, evict, json, key) e = value,
#include "kinds.def"
} event__kind;

/* The kinds scrm_record_json accepts, as its messages list them (the
 * rows of kinds.def with a JSON parser; unit_event checks). */
#define EVENT_JSON_KINDS "purchase, return or member_scan"

/* One row of kinds.def, for code that walks the kinds (scrmctl's help, the
 * unit tests). */
typedef struct event__kind_info {
	event__kind kind;
	const char *name;
	int paid;           /* never evicted; may use the outbox's reserve */
	enum event__evict evict;
	int from_json;      /* accepted by scrm_record_json */
	const char *key;    /* the receipt's key field, or NULL */
} event__kind_info;

/* How many kinds there are; the i-th (0 <= i < count, in enum order), or
 * NULL past the end. */
size_t event__kind_count(void);
const event__kind_info *event__kind_at(size_t i);
/* The kind's wire name ("unknown" for a value that is not a kind). */
const char *event__kind_name(event__kind k);
/* The kind called `name`, or 0 when there is none. */
event__kind event__kind_parse(const char *name);

/* Validate and append the canonical body to `out` (reset first). SCRM_OK or
 * SCRM_E_INVALID / SCRM_E_TOO_BIG / SCRM_E_NOMEM with the detail set. */
int event__encode_purchase(const scrm_purchase *p, sbuf *out);
int event__encode_return(const scrm_return *r, sbuf *out);
int event__encode_scan(const scrm_member_scan *s, sbuf *out);
/* tracking = 0: the member withheld behaviour-tracking consent; the body
 * keeps only member_id and "tracking":false. */
int event__encode_scan_consent(const scrm_member_scan *s, int tracking, sbuf *out);

/* Largest JSON text scrm_record_json() accepts before parsing. */
#define EVENT_MAX_JSON_BYTES (1024 * 1024)

/* Parse {"kind":..., fields...}, validate, encode. Sets *kind. */
int event__from_json(const char *json, size_t len, event__kind *kind, sbuf *out);

#endif
