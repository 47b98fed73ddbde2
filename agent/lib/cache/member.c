/* SPDX-License-Identifier: Apache-2.0 */
/*
 * member: erasure, and what the counter needs to find a member — phone
 * numbers normalised, QR tokens verified offline, the sealed personal
 * fields opened (phone masked), the member's coupons.
 *
 * Erasure (a `forget` op, a snapshot's `forgotten`, cache__forget) must
 * reach the file's bytes, not only the view:
 *   - every write runs with secure_delete=ON (not FAST): a deleted cell is
 *     zeroed in its page (index cells too: card and phone), and so is every
 *     page freed to the freelist — overflow chains of replaced records, the
 *     view a swap replaced (drop_old), a dropped stage. A file written by an
 *     agent that used FAST has its freelist zeroed once, at its first
 *     erasure (meta "freelist_zeroed");
 *   - the member's rows go from the live tables, the stages being built,
 *     a replaced view not dropped yet (`<stream>__old`), and the buffered
 *     deltas (rewritten without the member's ops, sealed again);
 *   - then a TRUNCATE checkpoint: the WAL frames that held the old pages are
 *     copied over and the -wal cut to 0 bytes. It waits for readers (tills,
 *     guide tablets) to leave the WAL for at most the busy timeout; if they
 *     do not, the erasure stays pending (meta "erasure_pending", shown in
 *     cache__status) and is finished by the next erasure, the daemon's idle
 *     checkpoint or its next start. The -shm holds page numbers, no content.
 * Not reached: copies of a record that SQLite's b-tree balancing left in the
 * unused space of pages that are still live (a page rebuilt around cells
 * that moved to a sibling is not cleared); only rewriting the table (a
 * snapshot swap, VACUUM) removes those.
 */
#include "cache_int.h"

#include "err.h"
#include "json.h"
#include "platform.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- erasure -------------------------------------------------------- */

/* An erasure committed whose bytes may still be in the files. */
int cache__erasure_pending(cache *c)
{
	char v[24];
	return cache__meta_get(c, "erasure_pending", v, sizeof(v)) == SCRM_OK && v[0];
}

/* Pages freed by an agent that ran with secure_delete=FAST still hold what
 * was on them. Once per file: allocate the whole freelist to a table of
 * zeros (overflow pages come off the freelist before the file grows) and
 * drop it. Costs writing the freelist twice (and as much WAL), once. */
static int zero_freelist_once(cache *c)
{
	sqlite3_stmt *st = NULL;
	char v[8];
	int64_t free_pages = 0, page_size = 4096;
	int rc;
	if ((rc = cache__meta_get(c, "freelist_zeroed", v, sizeof(v))) || strcmp(v, "1") == 0)
		return rc;
	if ((rc = cache__exec(c, "BEGIN IMMEDIATE")))
		return rc;
	if ((rc = cache__prep(c, c->db, &st, "SELECT freelist_count, page_size FROM pragma_freelist_count, pragma_page_size", 0)))
		goto cleanup;
	if (sqlite3_step(st) == SQLITE_ROW) {
		free_pages = sqlite3_column_int64(st, 0);
		page_size = sqlite3_column_int64(st, 1);
	}
	sqlite3_finalize(st);
	st = NULL;
	if (free_pages > 0) {
		/* 16 MiB a row: each overflow page carries page_size - 4 bytes.
		 * A row's first bytes stay in its leaf: a page more a row (the
		 * few pages this adds to the file end up zeroed too). */
		const int64_t per_row = (16 << 20) / (page_size - 4);
		free_pages += free_pages / per_row + 2;
		if ((rc = cache__exec(c, "CREATE TABLE erasure_fill(b BLOB)")) ||
		    (rc = cache__prep(c, c->db, &st, "INSERT INTO erasure_fill(b) VALUES (zeroblob(?1))", 0)))
			goto cleanup;
		for (int64_t left = free_pages; left > 0 && rc == SCRM_OK; left -= per_row) {
			sqlite3_reset(st);
			sqlite3_bind_int64(st, 1, (left < per_row ? left : per_row) * (page_size - 4));
			int e = sqlite3_step(st);
			if (e != SQLITE_DONE)
				rc = cache__fail(c, e, "zero the freelist");
		}
		sqlite3_finalize(st);
		st = NULL;
		/* Dropped with secure_delete=ON: each page is written as it is
		 * freed (FAST may leave a page freed in the same transaction
		 * unwritten, and with it the old content). */
		if (rc || (rc = cache__exec(c, "DROP TABLE erasure_fill")))
			goto cleanup;
	}
	rc = cache__exec(c, "INSERT OR REPLACE INTO meta(k, v) VALUES ('freelist_zeroed', '1'); COMMIT");
cleanup:
	sqlite3_finalize(st);
	if (rc)
		cache__rollback(c);
	return rc;
}

/* Finish an erasure (see the file comment): the freelist once, then the WAL
 * checkpointed into cache.db and cut to 0 bytes, waiting at most the busy
 * timeout for readers. SCRM_E_BUSY (reason set) if they did not let go: the
 * erasure stays pending. */
int cache__scrub(cache *c)
{
	int log = -1, done = -1, rc;
	if ((rc = zero_freelist_once(c)))
		return rc;
	rc = sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, &log, &done);
	if (rc == SQLITE_BUSY)
		return err__set(SCRM_E_BUSY,
				"cache: member removed, but readers kept cache.db-wal busy over %d ms: its old pages are"
				" still on disk (%d of %d frames checkpointed); scrubbed once readers let go",
				c->busy_ms, done, log);
	if (rc != SQLITE_OK)
		return cache__fail(c, rc, "checkpoint after an erasure");
	/* Done. Clearing the mark writes a frame (no personal data); truncate
	 * again if nobody is reading, without waiting. */
	if ((rc = cache__exec(c, "DELETE FROM meta WHERE k = 'erasure_pending'")))
		return rc;
	sqlite3_busy_timeout(c->db, 0);
	sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
	sqlite3_busy_timeout(c->db, c->busy_ms);
	return SCRM_OK;
}

/* Remove a member from the live tables (and the stages being built: a
 * recos or coupons snapshot made before the erasure must not bring the
 * member's data back when it is swapped in; and a replaced view that
 * drop_old has not emptied yet). */
static int forget_rows_(cache *c, const char *member_id, int staging_members);
static int forget_buffered(cache *c, const char *member_id);

/* Inside the caller's transaction: the rows (secure_delete is on for the
 * connection, see the file comment), the buffered deltas, and the mark that
 * the bytes still have to be scrubbed (cleared by cache__scrub()). */
int cache__forget_rows(cache *c, const char *member_id, int staging_members)
{
	sqlite3_stmt *st = NULL;
	int rc = forget_rows_(c, member_id, staging_members);
	if (rc == SCRM_OK && !c->replaying)
		rc = forget_buffered(c, member_id);
	if (rc == SCRM_OK && (rc = cache__prep(c, c->db, &st, "INSERT OR REPLACE INTO meta(k, v) VALUES ('erasure_pending', ?1)",
					0)) == SCRM_OK) {
		char ms[24];
		snprintf(ms, sizeof(ms), "%lld", (long long)platform__wall_ms());
		sqlite3_bind_text(st, 1, ms, -1, SQLITE_TRANSIENT);
		int e = sqlite3_step(st);
		sqlite3_finalize(st);
		rc = e == SQLITE_DONE ? SCRM_OK : cache__fail(c, e, "mark erasure");
	}
	if (rc == SCRM_OK)
		c->erased = 1;
	return rc;
}

static int forget_rows_(cache *c, const char *member_id, int staging_members)
{
	/* The streams that name a member (streams.def, `member`). */
	static const char *const views[] = {"", "__stage", "__old"};
	for (size_t v = 0; v < sizeof(views) / sizeof(views[0]); v++) {
		for (int i = 0; i < ST_COUNT; i++) {
			sqlite3_stmt *st = NULL;
			char table[64], sql[200];
			if (!cache__streams[i].member)
				continue;
			snprintf(table, sizeof(table), "%s%s", cache__streams[i].name, views[v]);
			if (v == 1 && i == ST_MEMBERS && !staging_members)
				continue;
			if (v > 0 && !cache__has_table(c, table))
				continue;
			snprintf(sql, sizeof(sql), "DELETE FROM \"%s\" WHERE %s = ?1", table, cache__streams[i].member);
			int rc = cache__prep(c, c->db, &st, sql, 0);
			if (rc)
				return rc;
			sqlite3_bind_text(st, 1, member_id, -1, SQLITE_STATIC);
			rc = sqlite3_step(st);
			sqlite3_finalize(st);
			if (rc != SQLITE_DONE)
				return cache__fail(c, rc, "forget member");
		}
	}
	return SCRM_OK;
}

/* Does this buffered op carry the member (its key, or a coupon it holds)? */
static int op_names_member(const cJSON *op, int st, const char *member_id)
{
	const cJSON *k = cJSON_GetObjectItemCaseSensitive(op, "key");
	if (st != ST_COUPONS)
		return cJSON_IsString(k) && strcmp(k->valuestring, member_id) == 0;
	const cJSON *sig = cJSON_GetObjectItemCaseSensitive(op, "signed");
	if (!cJSON_IsString(sig) || !strstr(sig->valuestring, member_id))
		return 0;
	cJSON *rec = cJSON_Parse(sig->valuestring);
	const cJSON *m = cJSON_GetObjectItemCaseSensitive(rec, "member_id");
	int yes = cJSON_IsString(m) && strcmp(m->valuestring, member_id) == 0;
	cJSON_Delete(rec);
	return yes;
}

static int reseal_buffered(cache *c, sqlite3_stmt *up, int st, int64_t base, int64_t version, const cJSON *root)
{
	char *text = cJSON_PrintUnformatted(root);
	if (!text)
		return err__set(SCRM_E_NOMEM, "out of memory");
	size_t n = strlen(text);
	uint8_t *sealed = malloc(n + CRYPTO_SEAL_OVERHEAD);
	int rc = sealed ? crypto__seal(c->sealer, cache__streams[st].name, strlen(cache__streams[st].name), text, n, sealed)
			: err__set(SCRM_E_NOMEM, "out of memory");
	memset(text, 0, n);
	free(text);
	if (rc) {
		free(sealed);
		return rc;
	}
	sqlite3_reset(up);
	sqlite3_bind_text(up, 1, cache__streams[st].name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(up, 2, base);
	sqlite3_bind_int64(up, 3, version);
	sqlite3_bind_blob(up, 4, sealed, (int)(n + CRYPTO_SEAL_OVERHEAD), free);
	rc = sqlite3_step(up);
	sqlite3_reset(up);
	return rc == SQLITE_DONE ? SCRM_OK : cache__fail(c, rc, "rewrite a buffered delta");
}


/* Deltas kept during a build may hold the member's record (sealed, but the
 * device can open them, and the replay would bring the member back): each
 * is rewritten without the ops that name the member and sealed again; the
 * old blob is overwritten in place (secure_delete). One row at a time, so
 * the table is never written under an open scan of it. */
static int forget_buffered(cache *c, const char *member_id)
{
	sqlite3_stmt *q = NULL, *up = NULL;
	int rc = cache__prep(c, c->db, &q,
		      "SELECT base, version, body FROM delta_buf WHERE stream = ?1 AND (base, version) > (?2, ?3)"
		      " ORDER BY base, version LIMIT 1",
		      0);
	if (rc == SCRM_OK)
		rc = cache__prep(c, c->db, &up, "UPDATE delta_buf SET body = ?4 WHERE stream = ?1 AND base = ?2 AND version = ?3",
			  0);
	for (int st = 0; rc == SCRM_OK && st < ST_COUNT; st++) {
		int64_t base = -1, version = -1;
		if (!cache__streams[st].member)
			continue;
		for (;;) {
			sqlite3_reset(q);
			sqlite3_bind_text(q, 1, cache__streams[st].name, -1, SQLITE_STATIC);
			sqlite3_bind_int64(q, 2, base);
			sqlite3_bind_int64(q, 3, version);
			int e = sqlite3_step(q);
			if (e != SQLITE_ROW) {
				if (e != SQLITE_DONE)
					rc = cache__fail(c, e, "read buffered deltas");
				break;
			}
			base = sqlite3_column_int64(q, 0);
			version = sqlite3_column_int64(q, 1);
			/* Unreadable: nobody can open it, and the replay ends there. */
			cJSON *root = cache__open_buffered(c, st, q, 2);
			sqlite3_reset(q);
			cJSON *ops = cJSON_GetObjectItemCaseSensitive(root, "ops");
			int dropped = 0;
			for (cJSON *op = cJSON_IsArray(ops) ? ops->child : NULL, *next; op; op = next) {
				next = op->next;
				if (op_names_member(op, st, member_id)) {
					cJSON_Delete(cJSON_DetachItemViaPointer(ops, op));
					dropped++;
				}
			}
			if (dropped)
				rc = reseal_buffered(c, up, st, base, version, root);
			cJSON_Delete(root);
			if (rc)
				break;
		}
	}
	sqlite3_finalize(q);
	sqlite3_finalize(up);
	return rc;
}


int cache__forget(cache *c, const char *member_id, cache__forget_fn fn, void *ctx)
{
	struct stream_row r;
	int rc;
	if (!cache__key_ok(member_id))
		return err__set(SCRM_E_INVALID, "member_id: 1..64 of [A-Za-z0-9_.:>-]");
	if ((rc = cache__exec(c, "BEGIN IMMEDIATE")))
		return rc;
	if (!(rc = cache__read_stream(c, ST_MEMBERS, &r)) && !(rc = fn ? fn(ctx, member_id) : SCRM_OK))
		rc = cache__forget_rows(c, member_id, r.staging);
	c->erased = 0;
	if (rc == SCRM_OK)
		rc = cache__exec(c, "COMMIT");
	if (rc) {
		cache__rollback(c);
		return rc;
	}
	return cache__scrub(c);
}


/* ---- phone numbers and QR tokens ------------------------------------ */

int cache__phone_normalise(const char *in, const char *cc, char out[24])
{
	char d[24];
	size_t n = 0;
	int plus = 0;
	for (const char *p = in; *p; p++) {
		if (*p == ' ' || *p == '-' || *p == '.' || *p == '(' || *p == ')')
			continue;
		if (*p == '+' && n == 0 && !plus) {
			plus = 1;
			continue;
		}
		if (*p < '0' || *p > '9' || n >= 20)
			return -1;
		d[n++] = *p;
	}
	d[n] = '\0';
	const char *digits = d;
	char tmp[40];
	if (!plus) {
		if (n >= 2 && d[0] == '0' && d[1] == '0') {
			digits = d + 2;
		} else if (n >= 1 && d[0] == '0' && cc && *cc) {
			snprintf(tmp, sizeof(tmp), "%s%s", cc, d + 1);
			digits = tmp;
		}
	}
	size_t len = strlen(digits);
	if (len < 6 || len > 15)
		return -1;
	memcpy(out, digits, len + 1);
	return 0;
}


/* Verify a member QR token offline; on success the member id. */
int cache__qr_member(cache *c, const char *tok, char member[65])
{
	uint8_t payload[QR_MAX], sig[160];
	size_t n = strlen(tok);
	const char *p1, *p2;
	long plen, slen;
	cJSON *o = NULL;
	const char *t, *m;
	int64_t iat, exp, now;
	int rc;

	if (n > QR_MAX || strncmp(tok, "SCRM1.", 6) != 0 || !(p1 = tok + 6) || !(p2 = strchr(p1, '.')) ||
	    strchr(p2 + 1, '.'))
		return err__set(SCRM_E_INVALID, "qr: format: not a SCRM1 member token");
	plen = crypto__b64_decode(p1, (size_t)(p2 - p1), 1, payload, sizeof(payload) - 1);
	slen = crypto__b64_decode(p2 + 1, strlen(p2 + 1), 1, sig, sizeof(sig));
	if (plen <= 0 || slen <= 0)
		return err__set(SCRM_E_INVALID, "qr: format: bad base64url");
	if (!c->central)
		return err__set(SCRM_E_CONFIG, "qr: cannot verify tokens: %s", c->central_err);
	if (crypto__verify(c->central, payload, (size_t)plen, sig, (size_t)slen) != SCRM_OK)
		return err__set(SCRM_E_INVALID, "qr: signature: does not verify (forged or altered token)");
	payload[plen] = '\0';
	if ((rc = json__parse((const char *)payload, (size_t)plen, "qr: format: payload", &o)) != SCRM_OK)
		goto cleanup;
	if (!cJSON_IsObject(o)) {
		rc = err__set(SCRM_E_INVALID, "qr: format: payload is not a JSON object");
		goto cleanup;
	}
	if ((rc = json__get_str(o, "t", 64, 1, "qr: ", &t)) || (rc = json__get_str(o, "m", MAX_KEY, 1, "qr: ", &m)) ||
	    (rc = json__get_int(o, "iat", 0, JSON_INT_MAX, 1, 0, "qr: ", &iat)) ||
	    (rc = json__get_int(o, "exp", 0, JSON_INT_MAX, 1, 0, "qr: ", &exp)))
		goto cleanup;
	if (!c->tenant[0] || strcmp(t, c->tenant) != 0) {
		rc = err__set(SCRM_E_INVALID, "qr: tenant: token is for \"%.64s\", this store is \"%s\"", t, c->tenant);
		goto cleanup;
	}
	now = platform__wall_ms();
	if (now >= exp) {
		rc = err__set(SCRM_E_INVALID, "qr: expired: %lld s ago", (long long)((now - exp) / 1000));
		goto cleanup;
	}
	if (iat - QR_SKEW_MS > now) {
		rc = err__set(SCRM_E_INVALID, "qr: not yet valid: issued %lld s in the future (check the clock)",
			      (long long)((iat - now) / 1000));
		goto cleanup;
	}
	if (!cache__key_ok(m)) {
		rc = err__set(SCRM_E_INVALID, "qr: m: not a member id");
		goto cleanup;
	}
	snprintf(member, 65, "%s", m);
cleanup:
	cJSON_Delete(o);
	return rc;
}

void cache__add_personal(cache *c, const char *key, const void *blob, int len, cJSON *root)
{
	uint8_t *pt;
	cJSON *pii, *out, *it;
	if (!blob || len <= CRYPTO_SEAL_OVERHEAD || !(pt = malloc((size_t)len)))
		return;
	if (crypto__open(c->sealer, key, strlen(key), blob, (size_t)len, pt) != SCRM_OK) {
		free(pt);
		cJSON_AddStringToObject(root, "personal_error", "personal fields unreadable with this device's data key");
		return;
	}
	pii = cJSON_ParseWithLength((const char *)pt, (size_t)len - CRYPTO_SEAL_OVERHEAD);
	memset(pt, 0, (size_t)len - CRYPTO_SEAL_OVERHEAD);
	free(pt);
	if (!pii)
		return;
	out = cJSON_AddObjectToObject(root, "personal");
	if ((it = cJSON_GetObjectItemCaseSensitive(pii, "name")) && cJSON_IsString(it))
		cJSON_AddStringToObject(out, "name", it->valuestring);
	if ((it = cJSON_GetObjectItemCaseSensitive(pii, "birthday")) && cJSON_IsString(it))
		cJSON_AddStringToObject(out, "birthday", it->valuestring);
	/* A guide confirms a number by its last digits; the whole number is
	 * never shown. */
	if ((it = cJSON_GetObjectItemCaseSensitive(pii, "phone")) && cJSON_IsString(it)) {
		char masked[24];
		size_t n = strlen(it->valuestring);
		if (n < sizeof(masked)) {
			for (size_t i = 0; i < n; i++)
				masked[i] = i + 4 < n ? '*' : it->valuestring[i];
			masked[n] = '\0';
			cJSON_AddStringToObject(out, "phone", masked);
		}
		memset(it->valuestring, 0, n);
	}
	cJSON_Delete(pii);
}

void cache__add_coupons(cache *c, const char *key, cJSON *root, int64_t now)
{
	cJSON *arr = cJSON_AddArrayToObject(root, "coupons");
	if (!c->q_coupons && cache__prep(c, c->db, &c->q_coupons,
				  "SELECT signed FROM coupons WHERE member_id = ?1 AND (valid_to IS NULL OR valid_to > ?2)"
				  " ORDER BY key",
				  1))
		return;
	sqlite3_reset(c->q_coupons);
	sqlite3_bind_text(c->q_coupons, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_int64(c->q_coupons, 2, now);
	while (sqlite3_step(c->q_coupons) == SQLITE_ROW) {
		cJSON *p = cJSON_Parse((const char *)sqlite3_column_text(c->q_coupons, 0));
		if (p)
			cJSON_AddItemToArray(arr, p);
	}
	sqlite3_reset(c->q_coupons);
}
