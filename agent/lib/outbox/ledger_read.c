/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outbox ledger, read side for other processes' modules (ledger.h): a
 * read-only reader of member_activity on a store's outbox.db that needs
 * nothing else of the outbox — the customer cache opens it beside its own
 * database (and fuzz_cache builds it alone).
 */
#include "ledger.h"
#include "schema_sql.h"

#include "err.h"
#include "quarantine.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

struct outbox__activity {
	sqlite3 *db;
	sqlite3_stmt *q; /* prepared on first query: the table may not exist yet */
};

void outbox__activity_open(const char *dir, outbox__activity **out)
{
	char path[4200];
	sqlite3 *db = NULL;
	*out = NULL;
	snprintf(path, sizeof(path), "%s/" OUTBOX_FILE, dir);
	if (access(path, F_OK) == 0 &&
	    sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) == SQLITE_OK) {
		sqlite3_busy_timeout(db, 1000);
	} else if (db) {
		sqlite3_close(db);
		return;
	} else {
		return;
	}
	if (!(*out = calloc(1, sizeof(**out)))) {
		quarantine__close_detached(db);
		return;
	}
	(*out)->db = db;
}

int outbox__activity_query(outbox__activity *a, const char *member_id, int64_t after_ms)
{
	if (!a)
		return -1;
	/* Schema v7: the ledger holds what left the queue, the member's pending
	 * purchases and returns are still rows of outbox (schema.c); before
	 * v7 the ledger held both. */
	static const char *const queries[] = {
		"SELECT seq, wall_ms, kind, amount, skus FROM member_activity WHERE member_id = ?1 AND wall_ms > ?2"
		" UNION ALL"
		" SELECT seq, wall_ms, kind, " MEMBER_ACTIVITY_OF("") " FROM outbox"
		" WHERE member = json_quote(?1) AND wall_ms > ?2 AND set_aside IS NULL"
		"  AND seq NOT IN (SELECT seq FROM member_activity WHERE member_id = ?1)"
		" ORDER BY seq DESC LIMIT 200",
		"SELECT seq, wall_ms, kind, amount, skus FROM member_activity"
		" WHERE member_id = ?1 AND wall_ms > ?2 ORDER BY seq DESC LIMIT 200"};
	for (size_t i = 0; i < sizeof(queries) / sizeof(queries[0]) && !a->q; i++)
		if (sqlite3_prepare_v3(a->db, queries[i], -1, SQLITE_PREPARE_PERSISTENT, &a->q, NULL) != SQLITE_OK)
			a->q = NULL;
	if (!a->q) {
		err__set(SCRM_E_IO, "outbox: member activity: %s", sqlite3_errmsg(a->db));
		return -1; /* an outbox from before schema v2: nothing local yet */
	}
	sqlite3_reset(a->q);
	sqlite3_bind_text(a->q, 1, member_id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(a->q, 2, after_ms);
	return 0;
}

int outbox__activity_next(outbox__activity *a, outbox__activity_row *row)
{
	if (sqlite3_step(a->q) != SQLITE_ROW) {
		sqlite3_reset(a->q);
		return 0;
	}
	row->seq = sqlite3_column_int64(a->q, 0);
	row->wall_ms = sqlite3_column_int64(a->q, 1);
	row->kind = (const char *)sqlite3_column_text(a->q, 2);
	row->amount = sqlite3_column_int64(a->q, 3);
	row->skus = (const char *)sqlite3_column_text(a->q, 4);
	return 1;
}

void outbox__activity_close(outbox__activity *a)
{
	if (!a)
		return;
	sqlite3_finalize(a->q);
	/* A reader of the outbox never checkpoints or deletes its -wal: that
	 * is the outbox's business (and the file may have been swapped). */
	quarantine__close_detached(a->db);
	free(a);
}
