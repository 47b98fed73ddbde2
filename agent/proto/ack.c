/* SPDX-License-Identifier: Apache-2.0 */
/* ack: the down/ack parser (see ack.h). */
#include "ack.h"

#include "err.h"
#include "json.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SEQ 9007199254740992.0 /* 2^53: exact in a JSON double */

/* A seq in an ack: a JSON number that is an integer in [1, 2^53]. */
static int seq_of(const cJSON *v, int64_t *out)
{
	if (!cJSON_IsNumber(v))
		return 0;
	double x = v->valuedouble;
	if (!(x >= 1.0 && x <= MAX_SEQ) || x != floor(x))
		return 0;
	*out = (int64_t)x;
	return 1;
}

void ack__free(ack__msg *ack)
{
	if (!ack)
		return;
	for (size_t i = 0; i < ack->n_rejected; i++)
		free(ack->rejected[i].reason);
	free(ack->rejected);
	free(ack->acked);
	memset(ack, 0, sizeof(*ack));
}

int ack__parse(const char *payload, size_t len, ack__msg *ack)
{
	int rc = SCRM_E_INVALID;
	cJSON *o = NULL;
	memset(ack, 0, sizeof(*ack));
	/* strict: a repeated key is refused, never read one way here and
	 * another at central */
	if ((rc = json__parse(payload, len, "ack", &o)) != SCRM_OK)
		goto out;
	rc = SCRM_E_INVALID;
	if (!cJSON_IsObject(o)) {
		err__set(SCRM_E_INVALID, "ack: not a JSON object");
		goto out;
	}
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "v");
	if (!cJSON_IsNumber(v) || v->valuedouble != 1) {
		err__set(SCRM_E_INVALID, "v: unknown protocol version (expected 1)");
		goto out;
	}
	const cJSON *batch = cJSON_GetObjectItemCaseSensitive(o, "batch");
	if (batch && cJSON_IsString(batch))
		snprintf(ack->batch, sizeof(ack->batch), "%s", batch->valuestring);
	const cJSON *acked = cJSON_GetObjectItemCaseSensitive(o, "acked");
	if (acked) {
		if (!cJSON_IsArray(acked)) {
			err__set(SCRM_E_INVALID, "acked: must be an array of [first,last]");
			goto out;
		}
		int n = cJSON_GetArraySize(acked);
		if (n > DELIVERY_ACK_MAX_RANGES) {
			err__set(SCRM_E_INVALID, "acked: %d ranges, at most %d (central must coalesce)", n,
				 DELIVERY_ACK_MAX_RANGES);
			goto out;
		}
		if (n > 0 && !(ack->acked = calloc((size_t)n, sizeof(*ack->acked)))) {
			rc = err__set(SCRM_E_NOMEM, "out of memory");
			goto out;
		}
		for (const cJSON *it = acked->child; it; it = it->next) {
			int64_t a, b;
			if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) != 2 || !seq_of(cJSON_GetArrayItem(it, 0), &a) ||
			    !seq_of(cJSON_GetArrayItem(it, 1), &b) || b < a) {
				err__set(SCRM_E_INVALID, "acked[%zu]: must be [first,last], integers with 1 <= first <= last",
					 ack->n_acked);
				goto out;
			}
			ack->acked[ack->n_acked][0] = a;
			ack->acked[ack->n_acked][1] = b;
			ack->n_acked++;
		}
	}
	const cJSON *rej = cJSON_GetObjectItemCaseSensitive(o, "rejected");
	if (rej) {
		if (!cJSON_IsArray(rej)) {
			err__set(SCRM_E_INVALID, "rejected: must be an array");
			goto out;
		}
		int n = cJSON_GetArraySize(rej);
		if (n > DELIVERY_ACK_MAX_RANGES) {
			err__set(SCRM_E_INVALID, "rejected: %d entries, at most %d", n, DELIVERY_ACK_MAX_RANGES);
			goto out;
		}
		if (n > 0 && !(ack->rejected = calloc((size_t)n, sizeof(*ack->rejected)))) {
			rc = err__set(SCRM_E_NOMEM, "out of memory");
			goto out;
		}
		for (const cJSON *it = rej->child; it; it = it->next) {
			int64_t seq;
			const cJSON *why = cJSON_GetObjectItemCaseSensitive(it, "reason");
			if (!cJSON_IsObject(it) || !seq_of(cJSON_GetObjectItemCaseSensitive(it, "seq"), &seq)) {
				err__set(SCRM_E_INVALID, "rejected[%zu].seq: must be an integer >= 1", ack->n_rejected);
				goto out;
			}
			ack__rejection *r = &ack->rejected[ack->n_rejected];
			r->seq = seq;
			r->reason = strdup(cJSON_IsString(why) ? why->valuestring : "unspecified");
			if (!r->reason) {
				rc = err__set(SCRM_E_NOMEM, "out of memory");
				goto out;
			}
			ack->n_rejected++;
		}
	}
	const cJSON *rf = cJSON_GetObjectItemCaseSensitive(o, "resend_from");
	if (rf && !seq_of(rf, &ack->resend_from)) {
		err__set(SCRM_E_INVALID, "resend_from: must be an integer >= 1");
		goto out;
	}
	rc = SCRM_OK;
out:
	cJSON_Delete(o);
	if (rc != SCRM_OK)
		ack__free(ack);
	return rc;
}
