/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outbox receipts: which sale a purchase's order_id (a return's return_id)
 * already names on this device, for a till retrying it (scrm.h).
 *
 * Since schema v7 a pending sale's receipt is its own row (outbox.okey and
 * .digest) and moves to `orders` when the row leaves the queue
 * (outbox__remove), so a capture writes no page but its row's. Finding a
 * pending receipt without an index on the queue: each handle keeps an
 * in-memory index (seqmap.h), hash of (kind, key) -> seq, of the keyed rows it has
 * seen, and catches up at the start of each write transaction with the
 * rows above the newest seq it saw (under the write lock nothing else can
 * insert meanwhile). An entry is only a hint: the row it names is read and
 * compared; a row gone from the queue is looked up in `orders`.
 * Rows inserted below that mark — salvage's copies of older seqs — put
 * their receipts in `orders` themselves (salvage.c). A rolled-back
 * transaction forgets the mark (its seqs will be used again); a handle
 * that follows a fresh file starts with an empty index.
 */
#include "outbox_int.h"

#include "err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void outbox__receipts_forget(outbox *ob)
{
	seqmap__clear(&ob->rc);
	ob->rc_seen = 0;
}

void outbox__receipts_free(outbox *ob)
{
	seqmap__free(&ob->rc);
	ob->rc_seen = 0;
}

static int put(outbox *ob, const char *kind, const char *key, int64_t seq)
{
	if (seqmap__put(&ob->rc, seqmap__hash(kind, key), seq))
		return err__set(SCRM_E_NOMEM, "outbox: receipts index: out of memory");
	return SCRM_OK;
}

int outbox__receipts_catch_up(outbox *ob, int64_t last_seq, int64_t pending)
{
	sqlite3_stmt *st = ob->rc_new;
	int rc;
	if (seqmap__stale(&ob->rc, pending))
		outbox__receipts_forget(ob);
	const int rebuild = ob->rc_seen == 0;
	sqlite3_reset(st);
	sqlite3_bind_int64(st, 1, ob->rc_seen);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *kind = (const char *)sqlite3_column_text(st, 1), *key = (const char *)sqlite3_column_text(st, 2);
		if (kind && key && (rc = put(ob, kind, key, sqlite3_column_int64(st, 0)))) {
			sqlite3_reset(st);
			outbox__receipts_forget(ob);
			return rc;
		}
	}
	sqlite3_reset(st);
	if (rc != SQLITE_DONE) {
		outbox__receipts_forget(ob);
		return outbox__fail(ob, rc, "read new receipts");
	}
	ob->rc_seen = last_seq;
	if (rebuild)
		ob->rc.built = ob->rc.n;
	return SCRM_OK;
}

void outbox__receipts_prime(outbox *ob)
{
	int rc;
	if (sqlite3_exec(ob->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
		return;
	sqlite3_reset(ob->get_dev);
	rc = sqlite3_step(ob->get_dev);
	const int64_t last = rc == SQLITE_ROW ? sqlite3_column_int64(ob->get_dev, 0) - 1 : 0;
	const int64_t pending = rc == SQLITE_ROW ? sqlite3_column_int64(ob->get_dev, 10) : 0;
	sqlite3_reset(ob->get_dev);
	if (rc == SQLITE_ROW && outbox__receipts_catch_up(ob, last, pending) != SCRM_OK) {
		outbox__receipts_forget(ob); /* the first sale's transaction tries again */
		ob->corrupt = 0;
		err__clear(); /* the open itself succeeded */
	}
	sqlite3_exec(ob->db, "COMMIT", NULL, NULL, NULL);
}

int outbox__receipts_add(outbox *ob, const char *kind, const char *key, int64_t seq)
{
	int rc = put(ob, kind, key, seq);
	if (rc == SCRM_OK && seq > ob->rc_seen)
		ob->rc_seen = seq;
	return rc;
}

/* r's receipt is held (seq, id, wall_ms, digest): the same content gives
 * the first receipt back, another content under the key is refused. */
static void judge(outbox *ob, outbox__row *r, const char *key, const void *held, int held_len, int64_t seq,
		  const char *id, int64_t wall_ms, const unsigned char digest[OUTBOX_DIGEST_BYTES])
{
	if (held && held_len == OUTBOX_DIGEST_BYTES && memcmp(held, digest, OUTBOX_DIGEST_BYTES) == 0) {
		r->existing = 1;
		r->seq = seq;
		snprintf(r->existing_id, sizeof(r->existing_id), "%s", id ? id : "");
		r->existing_wall_ms = wall_ms;
		return;
	}
	const char *field = outbox__kind_key(r->kind);
	snprintf(ob->conflict_msg, sizeof(ob->conflict_msg),
		 "%s: \"%.64s\" was already recorded on this device (seq %lld, event %.36s) with different"
		 " content; a retry must send the same %s, a new %s needs a new %s; nothing was recorded",
		 field, key, (long long)seq, id ? id : "", r->kind, r->kind, field);
	r->refused = SCRM_E_CONFLICT;
	snprintf(r->why, sizeof(r->why), "%s", ob->conflict_msg);
}

int outbox__receipt_find(outbox *ob, outbox__row *r, const char *key, const unsigned char digest[OUTBOX_DIGEST_BYTES],
			 int *found)
{
	int rc;
	*found = 0;
	const uint64_t h = seqmap__hash(r->kind, key);
	sqlite3_stmt *row = ob->rc_row;
	size_t at = 0;
	int64_t seq;
	while (seqmap__next(&ob->rc, h, &at, &seq)) {
		sqlite3_reset(row);
		sqlite3_bind_int64(row, 1, seq);
		rc = sqlite3_step(row);
		if (rc == SQLITE_ROW) {
			const char *k = (const char *)sqlite3_column_text(row, 0), *o = (const char *)sqlite3_column_text(row, 1);
			if (k && o && strcmp(k, r->kind) == 0 && strcmp(o, key) == 0) {
				*found = 1;
				judge(ob, r, key, sqlite3_column_blob(row, 2), sqlite3_column_bytes(row, 2), seq,
				      (const char *)sqlite3_column_text(row, 3), sqlite3_column_int64(row, 4), digest);
				sqlite3_reset(row);
				return SCRM_OK;
			}
		} else if (rc != SQLITE_DONE) {
			sqlite3_reset(row);
			return outbox__fail(ob, rc, "look up the receipt");
		}
		sqlite3_reset(row);
	}
	/* Not pending (or gone from the queue since): the receipts kept. */
	sqlite3_stmt *st = ob->order_get;
	sqlite3_reset(st);
	sqlite3_bind_text(st, 1, r->kind, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*found = 1;
		judge(ob, r, key, sqlite3_column_blob(st, 3), sqlite3_column_bytes(st, 3), sqlite3_column_int64(st, 0),
		      (const char *)sqlite3_column_text(st, 1), sqlite3_column_int64(st, 2), digest);
		rc = SQLITE_DONE;
	}
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? SCRM_OK : outbox__fail(ob, rc, "look up the receipt");
}

int outbox__receipt_key(outbox *ob, const outbox__row *r, const char **key, char **owned)
{
	sqlite3_stmt *st = ob->order_key_of;
	int rc;
	*key = r->key;
	*owned = NULL;
	if (r->key)
		return SCRM_OK;
	sqlite3_reset(st);
	sqlite3_bind_text(st, 1, r->kind, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, r->body, (int)r->body_len, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL &&
	    !(*key = *owned = sqlite3_mprintf("%s", (const char *)sqlite3_column_text(st, 0))))
		rc = err__set(SCRM_E_NOMEM, "outbox: receipt key: out of memory");
	else
		rc = rc == SQLITE_ROW ? SCRM_OK : outbox__fail(ob, rc, "read the receipt key");
	sqlite3_reset(st);
	return rc;
}
