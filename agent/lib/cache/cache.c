/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cache: the offline customer cache (see cache.h for what it owns; the
 * files of the module are listed in cache_int.h). This file: the handle —
 * opening cache.db with its keys (and the outbox, read only, for purchases
 * central has not reflected yet), identity, policy, the idle checkpoint —
 * and the member card and profile the counter and the guide read.
 */
#include "cache_int.h"

#include "err.h"
#include "json.h"
#include "ledger.h"
#include "paths.h"
#include "platform.h"
#include "quarantine.h"

#include <cjson/cJSON.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cache__open(const char *dir, const cache__options *opts, cache **out)
{
	cache__options dflt = {0};
	char path[4200], keys[4200], kp[4300], priv[4096];
	uint8_t key[CRYPTO_KEY_BYTES];
	cache *c;
	int rc, new_key = 0;

	if (!opts)
		opts = &dflt;
	*out = NULL;
	if (!(c = calloc(1, sizeof(*c))))
		return err__set(SCRM_E_NOMEM, "out of memory");
	c->inflight = -1;
	c->lock_fd = -1;
	c->max_msg = opts->max_message_bytes ? opts->max_message_bytes : DEFAULT_MAX_MESSAGE;
	c->snap_timeout_ms = opts->snapshot_timeout_ms > 0 ? opts->snapshot_timeout_ms : 30000;
	for (int i = 0; i < ST_COUNT; i++)
		c->rs[i].timeout_ms = c->snap_timeout_ms;
	/* cache.db and the keys live in the agent's private directory
	 * (paths.h): a POS user of the store's group must not be able to move
	 * them aside and plant a data key of their own. */
	if ((rc = paths__private(dir, NULL, priv, sizeof(priv))))
		goto fail;
	if (opts->keys_dir)
		snprintf(keys, sizeof(keys), "%s", opts->keys_dir);
	else
		snprintf(keys, sizeof(keys), "%s/%s", priv, PATHS_KEYS_DIR);

	snprintf(path, sizeof(path), "%s/%s", priv, CACHE_FILE);
	if (!opts->create && access(path, F_OK) != 0) {
		rc = err__set(SCRM_E_NOT_FOUND, "%s: no cache yet (scrm-agent creates it)", path);
		goto fail;
	}
	if (opts->create && (rc = paths__prepare(dir, opts->keys_dir, NULL, 0)))
		goto fail;
	/* The device data key first: without it nothing personal can be
	 * stored or read. */
	snprintf(kp, sizeof(kp), "%s/data.key", keys);
	if (opts->create) {
		char why[200];
		int kfd = platform__open_trusted_dir(keys, 1, why, sizeof(why));
		if (kfd < 0) {
			rc = err__set(SCRM_E_CONFIG, "%s: refused: %s", keys, why);
			goto fail;
		}
		close(kfd);
		rc = crypto__load_key(kp, key);
		if (rc == SCRM_E_NOT_FOUND) {
			/* A new data key cannot open what the old one sealed: if a
			 * cache exists, its members are dropped below and fetched
			 * again (a lost key, or a keys_dir that moved). */
			new_key = access(path, F_OK) == 0;
			rc = crypto__ensure_key(kp, key);
		}
	} else {
		rc = crypto__load_key(kp, key);
	}
	if (rc)
		goto fail;
	rc = crypto__sealer_new(key, &c->sealer);
	memset(key, 0, sizeof(key));
	if (rc)
		goto fail;
	snprintf(kp, sizeof(kp), "%s/tenant.key", keys);
	if (crypto__load_key(kp, c->tenant_key) == SCRM_OK)
		c->has_tenant_key = 1;
	else
		snprintf(c->tenant_key_err, sizeof(c->tenant_key_err), "%s", scrm_errmsg());
	snprintf(kp, sizeof(kp), "%s/central.pub", keys);
	if (crypto__verifier_load(kp, &c->central) != SCRM_OK)
		snprintf(c->central_err, sizeof(c->central_err), "%s", scrm_errmsg());

	snprintf(c->db_path, sizeof(c->db_path), "%s", path);
	/* Readers in a directory they cannot write skip the lock: only the
	 * daemon (create) moves a damaged cache, and it can. */
	if (opts->create || access(priv, W_OK) == 0)
		c->lock_fd = quarantine__lock_open(priv, "cache");
	if ((rc = cache__open_db(c, priv, opts)))
		goto fail;
	if (new_key && (rc = cache__exec(c, "BEGIN IMMEDIATE; DELETE FROM members; DELETE FROM delta_buf;"
				     " DROP TABLE IF EXISTS members__stage;"
				     " UPDATE streams SET cursor = 0, snap_id = NULL, snap_version = NULL, snap_chunks = NULL,"
				     " snap_next = NULL, snap_started_ms = NULL WHERE name = 'members';"
				     " DELETE FROM delta_buf; COMMIT"))) {
		cache__rollback(c);
		goto fail;
	}
	c->data_key_new = new_key;
	if (opts->create) {
		cache__drop_old(c, -1);
		/* An erasure a power cut or a reader interrupted. */
		if (cache__erasure_pending(c))
			cache__scrub(c);
	}
	cache__meta_get(c, "tenant", c->tenant, sizeof(c->tenant));
	cache__meta_get(c, "phone_cc", c->phone_cc, sizeof(c->phone_cc));
	cache__meta_get(c, "policy", c->policy, sizeof(c->policy));

	/* The outbox's local purchase history (read only; absent is fine). */
	outbox__activity_open(dir, &c->act);

	/* Bootstrap and resume: what the resync schedule starts with. */
	{
		sqlite3_stmt *st = NULL;
		if ((rc = cache__prep(c, c->db, &st, "SELECT name, cursor, snap_id FROM streams", 0)))
			goto fail;
		while (sqlite3_step(st) == SQLITE_ROW) {
			int i = cache__stream_parse((const char *)sqlite3_column_text(st, 0));
			if (i < 0)
				continue;
			if (sqlite3_column_type(st, 2) != SQLITE_NULL) {
				c->rs[i].want = 1;
				snprintf(c->rs[i].reason, sizeof(c->rs[i].reason), "resume");
			} else if (sqlite3_column_int64(st, 1) == 0) {
				c->rs[i].want = 1;
				snprintf(c->rs[i].reason, sizeof(c->rs[i].reason), "bootstrap");
			}
		}
		sqlite3_finalize(st);
	}
	*out = c;
	return SCRM_OK;
fail:
	cache__close(c);
	return rc;
}

void cache__close(cache *c)
{
	if (!c)
		return;
	for (int i = 0; i < 4; i++)
		sqlite3_finalize(c->q_card[i]);
	sqlite3_finalize(c->q_coupons);
	sqlite3_finalize(c->q_profile);
	cache__queries_free(c);
	if (c->db) {
		/* Moved away under us (the daemon quarantined it): the -wal name
		 * now belongs to the fresh file. */
		if (quarantine__same_file(c->db_path, c->dev, c->ino) != 1)
			quarantine__close_detached(c->db);
		else
			sqlite3_close_v2(c->db);
	}
	outbox__activity_close(c->act);
	if (c->lock_fd >= 0)
		close(c->lock_fd);
	crypto__sealer_free(c->sealer);
	crypto__verifier_free(c->central);
	memset(c->tenant_key, 0, sizeof(c->tenant_key));
	free(c);
}

/* ---- identity and policy -------------------------------------------- */

int cache__set_identity(cache *c, const char *tenant, const char *phone_cc)
{
	sqlite3_stmt *st = NULL;
	int rc = cache__prep(c, c->db, &st, "INSERT OR REPLACE INTO meta(k, v) VALUES (?1, ?2)", 0);
	if (rc)
		return rc;
	const char *k[2] = {"tenant", "phone_cc"}, *v[2] = {tenant, phone_cc ? phone_cc : ""};
	for (int i = 0; i < 2 && rc == SCRM_OK; i++) {
		sqlite3_bind_text(st, 1, k[i], -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, v[i], -1, SQLITE_STATIC);
		int e = sqlite3_step(st);
		if (e != SQLITE_DONE)
			rc = cache__fail(c, e, "write meta");
		sqlite3_reset(st);
	}
	sqlite3_finalize(st);
	snprintf(c->tenant, sizeof(c->tenant), "%s", tenant);
	snprintf(c->phone_cc, sizeof(c->phone_cc), "%s", phone_cc ? phone_cc : "");
	return rc;
}

int cache__set_policy(cache *c, const char *policy_json)
{
	sqlite3_stmt *st = NULL;
	int rc = cache__prep(c, c->db, &st, "INSERT OR REPLACE INTO meta(k, v) VALUES ('policy', ?1)", 0);
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, policy_json, -1, SQLITE_STATIC);
	int e = sqlite3_step(st);
	sqlite3_finalize(st);
	if (e != SQLITE_DONE)
		return cache__fail(c, e, "write meta");
	snprintf(c->policy, sizeof(c->policy), "%s", policy_json);
	return SCRM_OK;
}

const char *cache__policy(const cache *c)
{
	return c->policy;
}

int cache__verify_signed(cache *c, const char *msg, size_t n, const void *sig, size_t sig_len)
{
	if (!c->central)
		return err__set(SCRM_E_CONFIG, "signature: cannot verify: %s", c->central_err);
	if (crypto__verify(c->central, msg, n, sig, sig_len) != SCRM_OK)
		return err__set(SCRM_E_CRYPTO, "signature: does not verify (tampered, or not signed by central)");
	return SCRM_OK;
}


void cache__checkpoint(cache *c)
{
	cache__drop_old(c, -1);
	if (cache__erasure_pending(c))
		cache__scrub(c); /* still busy: copies what it can, like PASSIVE */
	else
		sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
}

/* ---- members at the counter ----------------------------------------- */

static int64_t obj_i64(const cJSON *o, const char *name)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
	int64_t v = 0;
	return it && json__is_int(it, -JSON_INT_MAX, JSON_INT_MAX, &v) ? v : 0;
}

static void set_i64(cJSON *o, const char *name, int64_t v)
{
	cJSON *n = cJSON_CreateNumber((double)v);
	if (cJSON_GetObjectItemCaseSensitive(o, name))
		cJSON_ReplaceItemInObjectCaseSensitive(o, name, n);
	else
		cJSON_AddItemToObject(o, name, n);
}


/* Purchases and returns this store recorded after central's figures
 * (stats.as_of_ms): the guide sees today's sale before central does. */
static void add_local(cache *c, const char *key, cJSON *root, int64_t now)
{
	cJSON *stats = cJSON_GetObjectItemCaseSensitive(root, "stats"), *recent, *local, *lp;
	int64_t as_of = cJSON_IsObject(stats) ? obj_i64(stats, "as_of_ms") : 0;
	int64_t orders = 0, returns = 0, spend = 0, last = 0;
	outbox__activity_row row;
	if (outbox__activity_query(c->act, key, as_of))
		return; /* no outbox, or one from before schema v2: nothing local yet */
	local = cJSON_CreateObject();
	lp = cJSON_AddArrayToObject(local, "purchases");
	while (outbox__activity_next(c->act, &row)) {
		int64_t ts = row.wall_ms, amount = row.amount;
		const char *kind = row.kind;
		int is_return = kind && strcmp(kind, "return") == 0;
		cJSON *e = cJSON_CreateObject();
		cJSON_AddNumberToObject(e, "ts", (double)ts);
		cJSON_AddNumberToObject(e, "seq", (double)row.seq);
		cJSON_AddStringToObject(e, "kind", is_return ? "return" : "purchase");
		cJSON_AddNumberToObject(e, "total", (double)amount);
		cJSON *skus = row.skus ? cJSON_Parse(row.skus) : NULL;
		cJSON_AddItemToObject(e, "skus", skus ? skus : cJSON_CreateArray());
		cJSON_AddItemToArray(lp, e);
		if (is_return) {
			returns++;
		} else {
			orders++;
			if (ts > last)
				last = ts;
		}
		spend += amount;
	}
	cJSON_AddNumberToObject(local, "orders", (double)orders);
	cJSON_AddNumberToObject(local, "returns", (double)returns);
	cJSON_AddNumberToObject(local, "spend", (double)spend);
	cJSON_AddItemToObject(root, "local", local);
	if (!cJSON_IsObject(stats))
		stats = cJSON_AddObjectToObject(root, "stats");
	set_i64(stats, "orders", obj_i64(stats, "orders") + orders);
	set_i64(stats, "spend", obj_i64(stats, "spend") + spend);
	if (last > obj_i64(stats, "last_purchase_ms"))
		set_i64(stats, "last_purchase_ms", last);
	last = obj_i64(stats, "last_purchase_ms");
	if (last > 0)
		set_i64(stats, "recency_days", (now - last) / 86400000);
	/* recent: local purchases first, newest first, then central's; at most
	 * 20 in all. Built as a new array: cJSON_InsertItemInArray cannot be
	 * relied on (Debian's 1.7.15 refuses to insert before any item but the
	 * first, which dropped and leaked local purchases). */
	cJSON *merged = cJSON_CreateArray(), *e;
	int n = 0;
	cJSON_ArrayForEach(e, lp)
	{
		if (n >= 20)
			break;
		if (strcmp(cJSON_GetObjectItemCaseSensitive(e, "kind")->valuestring, "purchase") != 0)
			continue;
		cJSON *r = cJSON_CreateObject();
		cJSON_AddNumberToObject(r, "ts", (double)obj_i64(e, "ts"));
		cJSON_AddNumberToObject(r, "total", (double)obj_i64(e, "total"));
		cJSON_AddItemToObject(r, "skus", cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(e, "skus"), 1));
		cJSON_AddBoolToObject(r, "local", 1);
		cJSON_AddItemToArray(merged, r);
		n++;
	}
	recent = cJSON_GetObjectItemCaseSensitive(root, "recent");
	if (cJSON_IsArray(recent)) {
		cJSON_ArrayForEach(e, recent)
		{
			if (n++ >= 20)
				break;
			cJSON_AddItemToArray(merged, cJSON_Duplicate(e, 1));
		}
	}
	cJSON_DeleteItemFromObjectCaseSensitive(root, "recent");
	cJSON_AddItemToObject(root, "recent", merged);
}

int cache__member_card(cache *c, scrm_member_key by, const char *value, sbuf *out, char member_id[65], int *tracking)
{
	static const char *const sql[4] = {
		"SELECT key, tracking, doc, pii FROM members WHERE key = ?1",
		"SELECT key, tracking, doc, pii FROM members WHERE card = ?1",
		"SELECT key, tracking, doc, pii FROM members WHERE phone_hash = ?1",
		NULL,
	};
	char qr_id[65];
	uint8_t h[32];
	int idx, rc;
	sqlite3_stmt *q;
	cJSON *root = NULL;
	int64_t now = platform__wall_ms();

	if (!value)
		return err__set(SCRM_E_INVALID, "value: NULL");
	switch (by) {
	case SCRM_MEMBER_ID:
		if (!cache__key_ok(value))
			return err__set(SCRM_E_INVALID, "member_id: 1..64 of [A-Za-z0-9_.:>-]");
		idx = 0;
		break;
	case SCRM_MEMBER_CARD:
		if (!*value || strlen(value) > MAX_KEY)
			return err__set(SCRM_E_INVALID, "card: 1..64 characters");
		idx = 1;
		break;
	case SCRM_MEMBER_PHONE: {
		char norm[24];
		if (cache__phone_normalise(value, c->phone_cc, norm) != 0)
			return err__set(SCRM_E_INVALID, "phone: not a phone number (6..15 digits after normalising)");
		if (!c->has_tenant_key)
			return err__set(SCRM_E_CONFIG, "phone: look-up needs the tenant key: %s", c->tenant_key_err);
		crypto__hmac_sha256(c->tenant_key, sizeof(c->tenant_key), norm, strlen(norm), h);
		memset(norm, 0, sizeof(norm));
		idx = 2;
		break;
	}
	case SCRM_MEMBER_QR:
		if ((rc = cache__qr_member(c, value, qr_id)))
			return rc;
		value = qr_id;
		idx = 0;
		break;
	default:
		return err__set(SCRM_E_INVALID, "by: unknown member key kind %d", (int)by);
	}
	if (!c->q_card[idx] && (rc = cache__prep(c, c->db, &c->q_card[idx], sql[idx], 1)))
		return rc;
	q = c->q_card[idx];
	sqlite3_reset(q);
	if (idx == 2)
		sqlite3_bind_blob(q, 1, h, sizeof(h), SQLITE_STATIC);
	else
		sqlite3_bind_text(q, 1, value, -1, SQLITE_STATIC);
	rc = sqlite3_step(q);
	if (rc != SQLITE_ROW) {
		sqlite3_reset(q);
		if (rc == SQLITE_DONE)
			return err__set(SCRM_E_NOT_FOUND, "member: no member with this %s",
					by == SCRM_MEMBER_PHONE ? "phone number" : by == SCRM_MEMBER_CARD ? "card" : "id");
		return cache__fail(c, rc, "member look-up");
	}
	const char *key = (const char *)sqlite3_column_text(q, 0);
	snprintf(member_id, 65, "%s", key ? key : "");
	if (tracking)
		*tracking = sqlite3_column_int(q, 1);
	root = cJSON_Parse((const char *)sqlite3_column_text(q, 2));
	if (!root) {
		sqlite3_reset(q);
		return err__set(SCRM_E_CORRUPT, "cache: member %s: stored profile unreadable", member_id);
	}
	cache__add_personal(c, member_id, sqlite3_column_blob(q, 3), sqlite3_column_bytes(q, 3), root);
	sqlite3_reset(q);
	cache__add_coupons(c, member_id, root, now);
	add_local(c, member_id, root, now);
	char *text = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	if (!text)
		return err__set(SCRM_E_NOMEM, "out of memory");
	sbuf__reset(out);
	sbuf__puts(out, text);
	free(text);
	return out->oom ? err__set(SCRM_E_NOMEM, "out of memory") : SCRM_OK;
}

int cache__member_profile(cache *c, const char *member_id, int64_t now, cJSON **out, int *tracking)
{
	int rc;
	*out = NULL;
	if (!member_id || !cache__key_ok(member_id))
		return err__set(SCRM_E_INVALID, "member_id: 1..64 of [A-Za-z0-9_.:>-]");
	if (!c->q_profile && (rc = cache__prep(c, c->db, &c->q_profile, "SELECT tracking, doc FROM members WHERE key = ?1", 1)))
		return rc;
	sqlite3_reset(c->q_profile);
	sqlite3_bind_text(c->q_profile, 1, member_id, -1, SQLITE_STATIC);
	rc = sqlite3_step(c->q_profile);
	if (rc != SQLITE_ROW) {
		sqlite3_reset(c->q_profile);
		if (rc == SQLITE_DONE)
			return err__set(SCRM_E_NOT_FOUND, "member_id: no member %s in the cache", member_id);
		return cache__fail(c, rc, "member look-up");
	}
	if (tracking)
		*tracking = sqlite3_column_int(c->q_profile, 0);
	cJSON *root = cJSON_Parse((const char *)sqlite3_column_text(c->q_profile, 1));
	sqlite3_reset(c->q_profile);
	if (!root)
		return err__set(SCRM_E_CORRUPT, "cache: member %s: stored profile unreadable", member_id);
	add_local(c, member_id, root, now);
	*out = root;
	return SCRM_OK;
}
