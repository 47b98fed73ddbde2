/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_event_json: event__from_json(), the parser behind scrm_record_json()
 * and scrmctl — JSON written by POS integrators, i.e. outside input.
 *
 * Beyond "no crash, no sanitizer report", every input checks:
 *   - a refusal has a code from the documented set and a non-empty message;
 *   - an accepted event's body is valid JSON, an object, within
 *     SCRM_MAX_EVENT_BYTES;
 *   - the canonical body is a fixed point: feeding it back (with its kind)
 *     is accepted and yields the very same bytes. Anything the validator
 *     lets through is therefore stable across the wire and the central's
 *     re-validation.
 */
#include "fuzz.h"

#include "err.h"
#include "event.h"

#include <cjson/cJSON.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	sbuf body, again;
	event__kind kind = 0, kind2 = 0;

	sbuf__init(&body);
	sbuf__init(&again);
	err__clear();
	int rc = event__from_json((const char *)data, size, &kind, &body);
	if (rc != SCRM_OK) {
		FUZZ_CHECK(rc == SCRM_E_INVALID || rc == SCRM_E_TOO_BIG || rc == SCRM_E_NOMEM, "rc %d", rc);
		FUZZ_CHECK(scrm_errmsg()[0] != '\0', "refused (%d) without a message", rc);
		goto cleanup;
	}
	FUZZ_CHECK(kind == EVENT_PURCHASE || kind == EVENT_RETURN || kind == EVENT_MEMBER_SCAN, "kind %d", (int)kind);
	FUZZ_CHECK(body.len > 2 && body.len <= SCRM_MAX_EVENT_BYTES, "body length %zu", body.len);
	FUZZ_CHECK(strlen(body.p) == body.len, "NUL inside the body");
	cJSON *o = cJSON_ParseWithLength(body.p, body.len);
	FUZZ_CHECK(o && cJSON_IsObject(o), "body is not a JSON object: %s", body.p);
	FUZZ_CHECK(!cJSON_GetObjectItemCaseSensitive(o, "kind"), "kind inside the body");
	cJSON_Delete(o);

	/* {"kind":"<kind>", + the body without its opening brace */
	sbuf__puts(&again, "{\"kind\":\"");
	sbuf__puts(&again, event__kind_name(kind));
	sbuf__puts(&again, "\",");
	sbuf__put(&again, body.p + 1, body.len - 1);
	FUZZ_CHECK(!again.oom, "out of memory");
	{
		sbuf body2;
		sbuf__init(&body2);
		rc = event__from_json(again.p, again.len, &kind2, &body2);
		FUZZ_CHECK(rc == SCRM_OK, "canonical body refused (%s): %s", scrm_errmsg(), again.p);
		FUZZ_CHECK(kind2 == kind, "kind changed");
		FUZZ_CHECK(body2.len == body.len && memcmp(body2.p, body.p, body.len) == 0,
			   "not a fixed point:\n  %s\n  %s", body.p, body2.p);
		sbuf__free(&body2);
	}
cleanup:
	sbuf__free(&body);
	sbuf__free(&again);
	return 0;
}
