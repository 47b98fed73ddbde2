/* SPDX-License-Identifier: Apache-2.0 */
/*
 * event: validation and canonical JSON encoding of event bodies (purchase,
 * return, member scan), from the typed structs of <scrm/scrm.h> or from JSON
 * text. The encoded body is what the outbox stores and the wire carries
 * (docs/protocol.md, "Bodies"). Every refusal names the field and the reason
 * through err__set().
 */
#ifndef SCRM_EVENT_H
#define SCRM_EVENT_H

#include <scrm/scrm.h>

#include "sbuf.h"

typedef enum event__kind {
	EVENT_PURCHASE = 1,
	EVENT_RETURN = 2,
	EVENT_MEMBER_SCAN = 3,
	/* written only by libscrm itself (scrm_redeem, scrm_recommend), never
	 * accepted from scrm_record_json */
	EVENT_COUPON_REDEEM = 4,
	EVENT_RECO_SHOWN = 5,
} event__kind;

const char *event__kind_name(event__kind k);

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
