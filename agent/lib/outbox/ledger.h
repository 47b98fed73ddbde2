/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ledger: the queries other modules run on the local ledgers outbox.db
 * keeps beside the queue (schema.c: redemptions, reco_shown,
 * member_activity), so that the outbox is the only module that prepares
 * SQL on its tables: a renamed column is one file's business.
 *
 *   the guide   a member's redemptions on this device, through the store's
 *               own handle while it holds it (store__exclusive)
 *   the cache   a member's purchases and returns recorded here, through a
 *               read-only reader of its own (another process's file,
 *               possibly swapped under it)
 *
 * What the outbox writes into the ledgers, and the counts coupon rules ask
 * for, are in outbox.h (outbox__append_redemption, outbox__redemption_counts,
 * outbox__verdict, outbox__redemptions, ...).
 */
#ifndef SCRM_LEDGER_H
#define SCRM_LEDGER_H

#include <stdint.h>

#include "outbox.h"

/* Each redemption of `member_id` on this device, by event id: `each` is
 * called per row (strings borrowed for the call; coupon "" for a campaign
 * without a code); a non-zero return stops and is returned. SCRM_OK, or
 * the SQLite failure as outbox__sqlite_err ("read redemptions"). */
int outbox__member_redemptions(outbox *ob, const char *member_id,
			       int (*each)(void *ctx, const char *id, const char *coupon, const char *campaign),
			       void *ctx);

/* ---- a member's local purchase history, read by another module ---- */
typedef struct outbox__activity outbox__activity;
typedef struct outbox__activity_row {
	int64_t seq, wall_ms;
	const char *kind; /* "purchase" or "return" (borrowed until the next row) */
	int64_t amount;   /* minor units; a return's is negative */
	const char *skus; /* JSON array text, or NULL (borrowed likewise) */
} outbox__activity_row;

/* A reader of `<dir>/outbox.db`, or *out = NULL when there is none (absent
 * is fine: nothing local yet). Opened on first use only by the caller's
 * thread; never checkpoints or removes the outbox's -wal on close. */
void outbox__activity_open(const char *dir, outbox__activity **out);
/* Start reading `member_id`'s rows with wall_ms > after_ms, newest first
 * (at most 200). 0, or -1 with nothing to read: an outbox from before
 * schema v2 (no member_activity yet), or a NULL reader. */
int outbox__activity_query(outbox__activity *a, const char *member_id, int64_t after_ms);
/* The next row: 1, or 0 at the end (the query is then reset). */
int outbox__activity_next(outbox__activity *a, outbox__activity_row *row);
void outbox__activity_close(outbox__activity *a);

#endif
