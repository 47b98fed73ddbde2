/* SPDX-License-Identifier: Apache-2.0 */
/*
 * records: each stream's record checks (streams.def names them): what
 * central may send in a record, refused with the field named, and how it is
 * bound to the stream's upsert — members' personal fields sealed under the
 * device key and their phone only as a keyed hash, coupons only with
 * central's signature over the exact bytes received.
 */
#include "cache_int.h"

#include "err.h"
#include "json.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- JSON field checks (every refusal names the field) --------------- */

static int get_strs(const cJSON *o, const char *name, int max_items, size_t max_len, const char *path)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name), *e;
	int i = 0;
	if (!it || cJSON_IsNull(it))
		return SCRM_OK;
	if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) > max_items)
		return err__set(SCRM_E_INVALID, "%s%s: must be an array of at most %d strings", path, name, max_items);
	cJSON_ArrayForEach(e, it)
	{
		if (!cJSON_IsString(e) || !e->valuestring[0] || strlen(e->valuestring) > max_len)
			return err__set(SCRM_E_INVALID, "%s%s[%d]: must be a non-empty string of at most %zu bytes", path,
					name, i, max_len);
		i++;
	}
	return SCRM_OK;
}

/* The path of the fields under a record's data ("<path>data."). */
#define DATA_PATH 96

/* The record's data object, and into `p2` the path its fields are named by. */
static int data_of(cJSON *rec, const char *path, cJSON **data, char p2[DATA_PATH])
{
	*data = cJSON_GetObjectItemCaseSensitive(rec, "data");
	if (!cJSON_IsObject(*data))
		return err__set(SCRM_E_INVALID, "%sdata: required, an object", path);
	snprintf(p2, DATA_PATH, "%sdata.", path);
	return SCRM_OK;
}

static int bind_doc(sqlite3_stmt *st, int col, const cJSON *data)
{
	char *doc = cJSON_PrintUnformatted(data);
	if (!doc)
		return err__set(SCRM_E_NOMEM, "out of memory");
	sqlite3_bind_text(st, col, doc, -1, free);
	return SCRM_OK;
}

/* The data's `field` (p2 its path): required, and equal to the record's key. */
static int key_field(const cJSON *data, const char *field, const char *key, const char *p2, const char *path)
{
	const char *value;
	int rc;
	if ((rc = json__get_str(data, field, MAX_KEY, 1, p2, &value)))
		return rc;
	if (!value || strcmp(key, value) != 0)
		return err__set(SCRM_E_INVALID, "%sdata.%s: must equal the key \"%s\"", path, field, key);
	return SCRM_OK;
}

/* ---- per-stream records --------------------------------------------- */

static const char *const stages[] = {"new", "active", "sleeping", "churn_risk", "lost", NULL};

static int one_of(const char *v, const char *const *set)
{
	for (; *set; set++)
		if (strcmp(v, *set) == 0)
			return 1;
	return 0;
}

int cache__bind_member(cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path)
{
	cJSON *data, *o, *pii;
	const char *s;
	int64_t n;
	int rc, tracking = 0, b;
	char p2[DATA_PATH];

	if ((rc = data_of(rec, path, &data, p2)) || (rc = key_field(data, "member_id", key, p2, path)))
		return rc;
	if ((rc = json__get_str(data, "card", MAX_KEY, 0, p2, &s)))
		return rc;
	if (s && *s)
		sqlite3_bind_text(st, 2, s, -1, SQLITE_TRANSIENT);
	if ((rc = json__get_str(data, "tier", 32, 0, p2, &s)) || (rc = json__get_str(data, "ltv_band", 32, 0, p2, &s)) ||
	    (rc = get_strs(data, "tags", 32, 64, p2)) || (rc = json__get_str(data, "stage", 32, 0, p2, &s)))
		return rc;
	if (s && !one_of(s, stages))
		return err__set(SCRM_E_INVALID, "%sstage: must be one of new active sleeping churn_risk lost", p2);
	if ((rc = json__get_obj(data, "rfm", 0, p2, &o)))
		return rc;
	if (o) {
		char p3[128];
		snprintf(p3, sizeof(p3), "%srfm.", p2);
		if ((rc = json__get_int(o, "r", 0, 5, 0, 0, p3, &n)) || (rc = json__get_int(o, "f", 0, 5, 0, 0, p3, &n)) ||
		    (rc = json__get_int(o, "m", 0, 5, 0, 0, p3, &n)) || (rc = json__get_str(o, "segment", 32, 0, p3, &s)))
			return rc;
	}
	if ((rc = json__get_obj(data, "consent", 0, p2, &o)))
		return rc;
	if (o) {
		char p3[128];
		snprintf(p3, sizeof(p3), "%sconsent.", p2);
		if ((rc = json__get_bool(o, "marketing", p3, 0, &b)) || (rc = json__get_bool(o, "tracking", p3, 0, &tracking)))
			return rc;
	}
	if ((rc = json__get_obj(data, "prefs", 0, p2, &o)) || (rc = json__get_obj(data, "stats", 0, p2, &o)))
		return rc;
	if (o) {
		char p3[128];
		snprintf(p3, sizeof(p3), "%sstats.", p2);
		if ((rc = json__get_int(o, "orders", 0, JSON_INT_MAX, 0, 0, p3, &n)) ||
		    (rc = json__get_int(o, "spend", -JSON_INT_MAX, JSON_INT_MAX, 0, 0, p3, &n)) ||
		    (rc = json__get_int(o, "last_purchase_ms", 0, JSON_INT_MAX, 0, 0, p3, &n)) ||
		    (rc = json__get_int(o, "first_purchase_ms", 0, JSON_INT_MAX, 0, 0, p3, &n)) ||
		    (rc = json__get_int(o, "as_of_ms", 0, JSON_INT_MAX, 0, 0, p3, &n)))
			return rc;
	}
	o = cJSON_GetObjectItemCaseSensitive(data, "recent");
	if (o && (!cJSON_IsArray(o) || cJSON_GetArraySize(o) > 20))
		return err__set(SCRM_E_INVALID, "%srecent: must be an array of at most 20 purchases", p2);
	sqlite3_bind_int(st, 4, tracking);

	/* Personal fields: sealed under the device key, phone only hashed. The
	 * plaintext phone goes nowhere else. */
	pii = cJSON_DetachItemFromObjectCaseSensitive(data, "pii");
	if (pii && !cJSON_IsNull(pii)) {
		char p3[128];
		const char *phone = NULL, *name = NULL, *bday = NULL;
		snprintf(p3, sizeof(p3), "%spii.", p2);
		if (!cJSON_IsObject(pii))
			rc = err__set(SCRM_E_INVALID, "%spii: must be an object", p2);
		else if (!(rc = json__get_str(pii, "phone", 15, 0, p3, &phone)) && !(rc = json__get_str(pii, "name", 200, 0, p3, &name)))
			rc = json__get_str(pii, "birthday", 10, 0, p3, &bday);
		if (!rc && phone) {
			size_t len = strlen(phone);
			int ok = len >= 6 && len <= 15;
			for (size_t i = 0; ok && i < len; i++)
				ok = phone[i] >= '0' && phone[i] <= '9';
			if (!ok)
				rc = err__set(SCRM_E_INVALID, "%sphone: must be E.164 digits without '+', 6..15 of them", p3);
			else if (!c->has_tenant_key)
				/* A misprovisioned device (no tenant.key) still keeps its
				 * members, sealed; only the phone look-up is missing, and
				 * the status says why (tenant_key false). */
				c->unhashed_phones++;
			else {
				uint8_t h[32];
				crypto__hmac_sha256(c->tenant_key, sizeof(c->tenant_key), phone, len, h);
				sqlite3_bind_blob(st, 3, h, sizeof(h), SQLITE_TRANSIENT);
			}
		}
		if (!rc) {
			char *text = cJSON_PrintUnformatted(pii);
			size_t tl = text ? strlen(text) : 0;
			uint8_t *sealed = text ? malloc(tl + CRYPTO_SEAL_OVERHEAD) : NULL;
			if (!sealed)
				rc = err__set(SCRM_E_NOMEM, "out of memory");
			else if (!(rc = crypto__seal(c->sealer, key, strlen(key), text, tl, sealed)))
				sqlite3_bind_blob(st, 6, sealed, (int)(tl + CRYPTO_SEAL_OVERHEAD), free), sealed = NULL;
			if (text) {
				memset(text, 0, tl);
				free(text);
			}
			free(sealed);
		}
	}
	cJSON_Delete(pii);
	if (rc)
		return rc;
	return bind_doc(st, 5, data);
}

int cache__bind_reco(cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path)
{
	cJSON *data, *items, *e;
	const char *s;
	int rc, i = 0;
	char p2[DATA_PATH], p3[128];
	double d;
	(void)c;
	if ((rc = data_of(rec, path, &data, p2)) || (rc = key_field(data, "member_id", key, p2, path)))
		return rc;
	items = cJSON_GetObjectItemCaseSensitive(data, "items");
	if (!cJSON_IsArray(items) || cJSON_GetArraySize(items) > 50)
		return err__set(SCRM_E_INVALID, "%sitems: required, an array of at most 50", p2);
	cJSON_ArrayForEach(e, items)
	{
		snprintf(p3, sizeof(p3), "%sitems[%d].", p2, i++);
		if (!cJSON_IsObject(e)) /* p3 ends with '.' */
			return err__set(SCRM_E_INVALID, "%.*s: must be an object", (int)(strlen(p3) - 1), p3);
		if ((rc = json__get_str(e, "sku", MAX_KEY, 1, p3, &s)) || (rc = json__get_num(e, "score", 1, p3, &d)) ||
		    (rc = json__get_str(e, "reason", 32, 0, p3, &s)))
			return rc;
	}
	sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
	return bind_doc(st, 2, data);
}

int cache__bind_rule(cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path)
{
	cJSON *data;
	const char *a, *b;
	double sup, conf, lift;
	int rc;
	char p2[DATA_PATH], want[140];
	(void)c;
	if ((rc = data_of(rec, path, &data, p2)))
		return rc;
	if ((rc = json__get_str(data, "if", MAX_KEY, 1, p2, &a)) || (rc = json__get_str(data, "then", MAX_KEY, 1, p2, &b)) ||
	    (rc = json__get_num(data, "support", 1, p2, &sup)) || (rc = json__get_num(data, "confidence", 1, p2, &conf)) ||
	    (rc = json__get_num(data, "lift", 1, p2, &lift)))
		return rc;
	snprintf(want, sizeof(want), "%s>%s", a, b);
	if (strcmp(want, key) != 0)
		return err__set(SCRM_E_INVALID, "%skey: must be \"{if}>{then}\" (\"%s\")", path, want);
	if (conf > 1)
		return err__set(SCRM_E_INVALID, "%sconfidence: must be <= 1", p2);
	sqlite3_bind_text(st, 2, a, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 3, b, -1, SQLITE_TRANSIENT);
	sqlite3_bind_double(st, 4, sup);
	sqlite3_bind_double(st, 5, conf);
	sqlite3_bind_double(st, 6, lift);
	return SCRM_OK;
}

int cache__bind_catalogue(cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path)
{
	cJSON *data;
	const char *s;
	int64_t n;
	int rc;
	char p2[DATA_PATH];
	(void)c;
	if ((rc = data_of(rec, path, &data, p2)) || (rc = key_field(data, "sku", key, p2, path)) ||
	    (rc = json__get_str(data, "name", 200, 0, p2, &s)) || (rc = json__get_int(data, "price", 0, JSON_INT_MAX, 0, 0, p2, &n)) ||
	    (rc = json__get_str(data, "currency", 3, 0, p2, &s)) || (rc = json__get_str(data, "category", 64, 0, p2, &s)))
		return rc;
	if (s)
		sqlite3_bind_text(st, 2, s, -1, SQLITE_TRANSIENT);
	return bind_doc(st, 3, data);
}

int cache__bind_inventory(cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path)
{
	cJSON *data;
	int64_t qty, asof;
	int rc;
	char p2[DATA_PATH];
	(void)c;
	if ((rc = data_of(rec, path, &data, p2)) || (rc = key_field(data, "sku", key, p2, path)) ||
	    (rc = json__get_int(data, "qty", -JSON_INT_MAX, JSON_INT_MAX, 1, 0, p2, &qty)) ||
	    (rc = json__get_int(data, "as_of_ms", 0, JSON_INT_MAX, 1, 0, p2, &asof)))
		return rc;
	sqlite3_bind_int64(st, 2, qty);
	sqlite3_bind_int64(st, 3, asof);
	return SCRM_OK;
}

int cache__bind_script(cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path)
{
	cJSON *data;
	const char *s, *stage, *tag;
	int rc;
	char p2[DATA_PATH];
	(void)c;
	if ((rc = data_of(rec, path, &data, p2)) || (rc = key_field(data, "id", key, p2, path)) ||
	    (rc = json__get_str(data, "stage", 32, 0, p2, &stage)) || (rc = json__get_str(data, "tag", 64, 0, p2, &tag)) ||
	    (rc = json__get_str(data, "title", 200, 0, p2, &s)) || (rc = json__get_str(data, "text", 4000, 1, p2, &s)))
		return rc;
	if (!!stage == !!tag)
		return err__set(SCRM_E_INVALID, "%sstage/tag: exactly one of the two is required", p2);
	if (stage && !one_of(stage, stages))
		return err__set(SCRM_E_INVALID, "%sstage: must be one of new active sleeping churn_risk lost", p2);
	if (stage)
		sqlite3_bind_text(st, 2, stage, -1, SQLITE_TRANSIENT);
	if (tag)
		sqlite3_bind_text(st, 3, tag, -1, SQLITE_TRANSIENT);
	return bind_doc(st, 4, data);
}

/* Coupons: verify central's signature over the exact bytes received, then
 * parse those bytes. SCRM_E_CRYPTO = this record refused alone. */
int cache__bind_coupon(cache *c, const char *key, cJSON *rec, sqlite3_stmt *st, const char *path)
{
	const cJSON *signed_it = cJSON_GetObjectItemCaseSensitive(rec, "signed");
	const cJSON *sig_it = cJSON_GetObjectItemCaseSensitive(rec, "sig");
	uint8_t sig[160];
	long sig_len;
	cJSON *p = NULL;
	const char *type, *id, *s;
	int64_t from, to, n;
	int rc;
	char want[80], p2[96];

	if (cJSON_GetObjectItemCaseSensitive(rec, "data"))
		return err__set(SCRM_E_CRYPTO, "%s: coupon sent unsigned (\"data\" instead of \"signed\" + \"sig\")", key);
	if (!cJSON_IsString(signed_it) || !signed_it->valuestring[0] || strlen(signed_it->valuestring) > 16384)
		return err__set(SCRM_E_CRYPTO, "%s: signed: missing or not a string of at most 16384 bytes", key);
	if (!cJSON_IsString(sig_it) ||
	    (sig_len = crypto__b64_decode(sig_it->valuestring, strlen(sig_it->valuestring), 0, sig, sizeof(sig))) <= 0)
		return err__set(SCRM_E_CRYPTO, "%s: sig: missing or not base64", key);
	if (!c->central)
		return err__set(SCRM_E_CRYPTO, "%s: cannot verify: %s", key, c->central_err);
	if (crypto__verify(c->central, signed_it->valuestring, strlen(signed_it->valuestring), sig, (size_t)sig_len))
		return err__set(SCRM_E_CRYPTO, "%s: signature does not verify (tampered or not signed by central)", key);
	/* The signature vouches for bytes; the reading of them must be the
	 * one central meant, so a repeated key is refused (json.h). */
	snprintf(p2, sizeof(p2), "%ssigned", path);
	if ((rc = json__parse(signed_it->valuestring, strlen(signed_it->valuestring), p2, &p)) != SCRM_OK)
		goto refuse;
	if (!cJSON_IsObject(p)) {
		rc = err__set(SCRM_E_CRYPTO, "%s: signed: not a JSON object", key);
		goto refuse;
	}
	snprintf(p2, sizeof(p2), "%ssigned.", path);
	if ((rc = json__get_str(p, "type", 16, 1, p2, &type)) || (rc = json__get_str(p, "id", 48, 1, p2, &id)))
		goto refuse;
	if (strcmp(type, "campaign") != 0 && strcmp(type, "coupon") != 0) {
		rc = err__set(SCRM_E_INVALID, "%stype: must be campaign or coupon", p2);
		goto refuse;
	}
	snprintf(want, sizeof(want), "%s:%s", type, id);
	if (strcmp(want, key) != 0) {
		rc = err__set(SCRM_E_CRYPTO, "%s: signed record is %s (a valid signature moved to another key?)", key, want);
		goto refuse;
	}
	if ((rc = json__get_int(p, "valid_from", 0, JSON_INT_MAX, 0, 0, p2, &from)) ||
	    (rc = json__get_int(p, "valid_to", 0, JSON_INT_MAX, 0, 0, p2, &to)) ||
	    (rc = json__get_int(p, "min_spend", 0, JSON_INT_MAX, 0, 0, p2, &n)) ||
	    (rc = json__get_int(p, "per_member_limit", 0, 1000000, 0, 0, p2, &n)))
		goto refuse;
	sqlite3_bind_text(st, 2, type, -1, SQLITE_TRANSIENT);
	if (strcmp(type, "coupon") == 0) {
		if ((rc = json__get_str(p, "member_id", MAX_KEY, 0, p2, &s)))
			goto refuse;
		if (s)
			sqlite3_bind_text(st, 3, s, -1, SQLITE_TRANSIENT);
		if ((rc = json__get_str(p, "campaign", 48, 0, p2, &s)))
			goto refuse;
		if (s)
			sqlite3_bind_text(st, 4, s, -1, SQLITE_TRANSIENT);
	}
	if (to)
		sqlite3_bind_int64(st, 5, to);
	sqlite3_bind_text(st, 6, signed_it->valuestring, -1, SQLITE_TRANSIENT);
	sqlite3_bind_blob(st, 7, sig, (int)sig_len, SQLITE_TRANSIENT);
	goto cleanup;
refuse:
	/* Signed by central but unusable: this coupon is refused alone, like a
	 * bad signature, so one bad record cannot stall the stream. */
	if (rc == SCRM_E_INVALID) {
		char detail[300];
		snprintf(detail, sizeof(detail), "%s", scrm_errmsg());
		rc = err__set(SCRM_E_CRYPTO, "%s: %s", key, detail);
	}
cleanup:
	cJSON_Delete(p);
	return rc;
}
