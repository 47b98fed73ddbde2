/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outbox set-aside: an event that cannot be sent as stored (a body that no
 * longer parses, larger than the broker takes) moves byte for byte to
 * dead_letter and leaves a marker in the queue, so central learns the seq
 * is set aside, not lost (protocol.md "Set-aside events").
 */
#include "outbox_int.h"

#include "err.h"
#include "platform.h"

#include <stdio.h>

/* Move one event's bytes to dead_letter and leave its marker in the queue,
 * in one transaction; raise events_set_aside. */
static int set_aside_once(outbox *ob, int64_t seq, const char *reason, const char *detail, int64_t bytes)
{
	static const char *const sql[] = {
		"INSERT OR REPLACE INTO dead_letter(seq, id, kind, wall_ms, mono_ms, boot, clock_ok, body, reason, detail,"
		" set_aside_ms) SELECT seq, CAST(id AS BLOB), CAST(kind AS BLOB), wall_ms, mono_ms, CAST(boot AS BLOB),"
		" clock_ok, CAST(body AS BLOB), ?2, ?3, ?4 FROM outbox WHERE seq = ?1",
		"UPDATE outbox SET body = '{}', set_aside = json_object('reason', ?2, 'detail', ?3, 'bytes', ?5)"
		" WHERE seq = ?1",
	};
	int64_t now = platform__wall_ms();
	char alarm[700];
	int rc;
	if ((rc = outbox__exec(ob, "BEGIN IMMEDIATE")))
		return rc;
	for (size_t i = 0; i < sizeof(sql) / sizeof(sql[0]); i++) {
		sqlite3_stmt *st = NULL;
		if ((rc = sqlite3_prepare_v2(ob->db, sql[i], -1, &st, NULL)) != SQLITE_OK) {
			rc = outbox__fail(ob, rc, "prepare set aside");
			goto cleanup;
		}
		sqlite3_bind_int64(st, 1, seq);
		sqlite3_bind_text(st, 2, reason, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, detail, -1, SQLITE_STATIC);
		if (i == 0)
			sqlite3_bind_int64(st, 4, now);
		else
			sqlite3_bind_int64(st, 5, bytes);
		rc = sqlite3_step(st);
		sqlite3_finalize(st);
		if (rc != SQLITE_DONE) {
			rc = outbox__fail(ob, rc, "set an event aside");
			goto cleanup;
		}
	}
	snprintf(alarm, sizeof(alarm), "event seq %lld set aside (%s: %.400s); kept in dead_letter, central told",
		 (long long)seq, reason, detail);
	if ((rc = outbox__raise_alarm(ob, "events_set_aside", alarm, now)) || (rc = outbox__exec(ob, "COMMIT")))
		goto cleanup;
	return SCRM_OK;
cleanup:
	outbox__rollback(ob);
	return rc;
}


int outbox__set_aside(outbox *ob, int64_t seq, const char *reason, const char *detail, int64_t bytes)
{
	int rc = set_aside_once(ob, seq, reason, detail, bytes);
	if (outbox__release_reserve(ob, rc))
		rc = set_aside_once(ob, seq, reason, detail, bytes);
	outbox__note_reserve_released(ob);
	return rc;
}

int outbox__set_aside_count(outbox *ob, int64_t *n)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(ob->db, "SELECT count(*) FROM dead_letter", -1, &st, NULL);
	*n = 0;
	if (rc != SQLITE_OK)
		return outbox__fail(ob, rc, "prepare set-aside count");
	if ((rc = sqlite3_step(st)) == SQLITE_ROW)
		*n = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? SCRM_OK : outbox__fail(ob, rc, "count set-aside events");
}

int outbox__set_aside_list(outbox *ob, sbuf *out)
{
	/* The stored bytes may not be text or JSON any more: the body goes out
	 * as a JSON string of what can be shown (invalid UTF-8 replaced). */
	return outbox__query_json(ob,
			  "SELECT json_group_array(json_object('seq', seq, 'id', CAST(id AS TEXT), 'kind', CAST(kind AS TEXT),"
			  " 'wall_ms', wall_ms, 'reason', reason, 'detail', detail, 'set_aside_ms', set_aside_ms,"
			  " 'bytes', length(body), 'body', CAST(body AS TEXT))) FROM (SELECT * FROM dead_letter ORDER BY seq)",
			  -1, out, NULL, "read set-aside events");
}
