/* SPDX-License-Identifier: Apache-2.0 */
/* verdict: the down/verdict parser (see verdict.h). */
#include "verdict.h"

#include "err.h"
#include "json.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

/* Copy at most cap-1 bytes of s, not splitting a UTF-8 sequence. */
static void utf8_copy(char *out, size_t cap, const char *s)
{
	size_t n = strlen(s);
	if (n >= cap) {
		n = cap - 1;
		while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
			n--;
	}
	memcpy(out, s, n);
	out[n] = '\0';
}

int verdict__parse(const char *payload, size_t len, verdict__msg *v)
{
	int rc = SCRM_E_INVALID;
	cJSON *o = NULL;
	const cJSON *it;
	memset(v, 0, sizeof(*v));
	if ((rc = json__parse(payload, len, "verdict", &o)) != SCRM_OK)
		goto out;
	rc = SCRM_E_INVALID;
	if (!cJSON_IsObject(o)) {
		err__set(SCRM_E_INVALID, "verdict: not a JSON object");
		goto out;
	}
	it = cJSON_GetObjectItemCaseSensitive(o, "v");
	if (!cJSON_IsNumber(it) || it->valuedouble != 1) {
		err__set(SCRM_E_INVALID, "v: unknown protocol version (expected 1)");
		goto out;
	}
	it = cJSON_GetObjectItemCaseSensitive(o, "redemption");
	if (!cJSON_IsString(it) || strlen(it->valuestring) != 36) {
		err__set(SCRM_E_INVALID, "redemption: must be the redemption's event id (36-character UUID)");
		goto out;
	}
	snprintf(v->redemption, sizeof(v->redemption), "%s", it->valuestring);
	it = cJSON_GetObjectItemCaseSensitive(o, "verdict");
	if (!cJSON_IsString(it) || (strcmp(it->valuestring, "accepted") != 0 && strcmp(it->valuestring, "rejected") != 0)) {
		err__set(SCRM_E_INVALID, "verdict: must be \"accepted\" or \"rejected\"");
		goto out;
	}
	v->accepted = strcmp(it->valuestring, "accepted") == 0;
	/* Too long a reason or detail is cut (at a UTF-8 boundary), never a
	 * reason to drop the verdict: the store must hear about a rejection. */
	it = cJSON_GetObjectItemCaseSensitive(o, "reason");
	if (it && !cJSON_IsString(it)) {
		err__set(SCRM_E_INVALID, "reason: must be a string");
		goto out;
	}
	if (it)
		utf8_copy(v->reason, sizeof(v->reason), it->valuestring);
	if (!v->accepted && !v->reason[0])
		snprintf(v->reason, sizeof(v->reason), "unspecified");
	it = cJSON_GetObjectItemCaseSensitive(o, "detail");
	if (it && !cJSON_IsString(it)) {
		err__set(SCRM_E_INVALID, "detail: must be a string");
		goto out;
	}
	if (it)
		utf8_copy(v->detail, sizeof(v->detail), it->valuestring);
	it = cJSON_GetObjectItemCaseSensitive(o, "ts");
	if (it && (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > 9007199254740992.0)) {
		err__set(SCRM_E_INVALID, "ts: Unix ms");
		goto out;
	}
	v->ts = it ? (int64_t)it->valuedouble : 0;
	rc = SCRM_OK;
out:
	cJSON_Delete(o);
	return rc;
}
