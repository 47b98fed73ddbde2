/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-central, db.c: the database: its schema (version, migrations),
 * opening it, the prepared statements and the statistics it keeps.
 */
#include "central.h"

/* ======================================================================
 * SQLite
 * ====================================================================== */

static const char schema_sql[] =
	"CREATE TABLE IF NOT EXISTS events("
	" tenant TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL,"
	" id TEXT NOT NULL, kind TEXT NOT NULL, wall_ms INTEGER NOT NULL, mono_ms INTEGER,"
	" boot TEXT, clock_ok INTEGER, body TEXT NOT NULL,"
	" arrival INTEGER NOT NULL,"  /* global first-arrival counter */
	" received_ms INTEGER NOT NULL,"
	" PRIMARY KEY(tenant, store, device, seq));"
	/* Same (device, seq), different id: the device's outbox was reset.
	 * Kept aside, never overwriting the first copy. */
	"CREATE TABLE IF NOT EXISTS conflicts("
	" tenant TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL,"
	" id TEXT NOT NULL, existing_id TEXT NOT NULL, kind TEXT NOT NULL, wall_ms INTEGER NOT NULL,"
	" mono_ms INTEGER, boot TEXT, clock_ok INTEGER, body TEXT NOT NULL,"
	" received_ms INTEGER NOT NULL,"
	" PRIMARY KEY(tenant, store, device, seq, id));"
	"CREATE TABLE IF NOT EXISTS rejected("
	" tenant TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL,"
	" reason TEXT NOT NULL, event TEXT, copies INTEGER NOT NULL,"
	" first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL,"
	" PRIMARY KEY(tenant, store, device, seq));"
	/* Per-device counters that the rows themselves cannot tell. */
	"CREATE TABLE IF NOT EXISTS devices("
	" tenant TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL,"
	" batches INTEGER NOT NULL, stored INTEGER NOT NULL, duplicates INTEGER NOT NULL,"
	" conflicts INTEGER NOT NULL, rejected INTEGER NOT NULL, unackable INTEGER NOT NULL,"
	" first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL,"
	/* every seq <= contiguous is settled (stored, rejected or jumped) */
	" contiguous INTEGER NOT NULL DEFAULT 0,"
	" PRIMARY KEY(tenant, store, device));"
	/* Seqs a device says were acknowledged (its batch "base") that this
	 * database does not hold: a restored or replaced central database. */
	"CREATE TABLE IF NOT EXISTS gaps("
	" tenant TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL,"
	" from_seq INTEGER NOT NULL, to_seq INTEGER NOT NULL, noticed_ms INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS stats(key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
	/* v2: every valid resync request (up/cache/resync), as received;
	 * reason, snapshot and from_chunk are NULL when the request had none. */
	"CREATE TABLE IF NOT EXISTS resync_requests("
	" tenant TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL,"
	" stream TEXT NOT NULL, cursor INTEGER NOT NULL, reason TEXT, snapshot TEXT,"
	" from_chunk INTEGER, received_ms INTEGER NOT NULL);"
	/* v3: the verdict on every coupon_redeem event, decided once, in the
	 * transaction that stored the event. rowid order is decision order. */
	"CREATE TABLE IF NOT EXISTS redemptions("
	" tenant TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL,"
	" id TEXT NOT NULL, campaign TEXT NOT NULL, coupon TEXT, member_id TEXT,"
	" order_id TEXT NOT NULL, value INTEGER NOT NULL, verdict TEXT NOT NULL, reason TEXT,"
	" detail TEXT, decided_ms INTEGER NOT NULL,"
	" PRIMARY KEY(tenant, store, device, seq));"
	"CREATE INDEX IF NOT EXISTS redemptions_coupon ON redemptions(tenant, coupon, verdict);"
	"CREATE INDEX IF NOT EXISTS redemptions_campaign"
	" ON redemptions(tenant, campaign, verdict, member_id);"
	/* v4: set-aside markers (protocol.md "Set-aside events"): the seq is
	 * settled, the event's data is on the device. */
	"CREATE TABLE IF NOT EXISTS set_aside("
	" tenant TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL,"
	" id TEXT, kind TEXT, reason TEXT NOT NULL, detail TEXT, bytes INTEGER, received_ms INTEGER NOT NULL,"
	" PRIMARY KEY(tenant, store, device, seq));"
	/* v4: a second sale under an order_id (return_id) this device already
	 * sent with another seq: kept aside, not counted as a sale. */
	"CREATE TABLE IF NOT EXISTS duplicate_orders("
	" tenant TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL,"
	" id TEXT NOT NULL, kind TEXT NOT NULL, order_key TEXT NOT NULL, held_seq INTEGER NOT NULL,"
	" body TEXT NOT NULL, received_ms INTEGER NOT NULL, PRIMARY KEY(tenant, store, device, seq));"
	"CREATE INDEX IF NOT EXISTS events_order ON events(tenant, store, device, kind,"
	" (CASE kind WHEN 'purchase' THEN json_extract(body, '$.order_id')"
	" WHEN 'return' THEN json_extract(body, '$.return_id') END));"
	/* v4: events stored with seq <= contiguous (settled on the device's
	 * word): recovered ones are expected, others are the device's fault. */
	"CREATE TABLE IF NOT EXISTS late("
	" tenant TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL,"
	" recovered INTEGER NOT NULL, received_ms INTEGER NOT NULL);"
	"CREATE INDEX IF NOT EXISTS redemptions_id ON redemptions(tenant, store, device, id);";

static int db_exec(const char *sql)
{
	char *err = NULL;
	char q[300];
	int rc = sqlite3_exec(g.db, sql, NULL, NULL, &err);

	if (rc != SQLITE_OK) {
		log_at(LVL_ERROR, "sqlite exec failed", "err=%s", lq(q, sizeof q, err ? err : "?"));
		sqlite3_free(err);
	}
	return rc;
}

static int db_prepare(sqlite3_stmt **s, const char *sql)
{
	char q[300];
	int rc = sqlite3_prepare_v3(g.db, sql, -1, SQLITE_PREPARE_PERSISTENT, s, NULL);

	if (rc != SQLITE_OK)
		log_at(LVL_ERROR, "sqlite prepare failed", "err=%s",
		       lq(q, sizeof q, sqlite3_errmsg(g.db)));
	return rc;
}

void db_close(void)
{
	sqlite3_stmt **all[] = { &g.st.begin,        &g.st.commit,        &g.st.rollback,
				 &g.st.ins_event,    &g.st.sel_id,        &g.st.ins_conflict,
				 &g.st.ins_rejected, &g.st.upsert_device, &g.st.add_stat,
				 &g.st.sel_contig,   &g.st.ins_gap,       &g.st.ins_resync,
				 &g.st.ins_redemption, &g.st.sel_redemption, &g.st.cnt_coupon,
				 &g.st.last_coupon,  &g.st.cnt_member,    &g.st.cnt_campaign,
				 &g.st.ins_aside,    &g.st.sel_order,     &g.st.move_dup_order,
				 &g.st.del_event,    &g.st.ins_late,      &g.st.sel_verdict_by_id };
	size_t i;

	for (i = 0; i < sizeof all / sizeof all[0]; i++) {
		sqlite3_finalize(*all[i]);
		*all[i] = NULL;
	}
	if (g.db)
		sqlite3_close(g.db);
	g.db = NULL;
}

int db_open(const char *path)
{
	sqlite3_stmt *s = NULL;
	char q[300];
	int rc, version = 0;

	rc = sqlite3_open_v2(path, &g.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
	if (rc != SQLITE_OK) {
		log_at(LVL_ERROR, "cannot open database", "db=%s err=%s", path,
		       lq(q, sizeof q, g.db ? sqlite3_errmsg(g.db) : sqlite3_errstr(rc)));
		goto cleanup;
	}
	sqlite3_busy_timeout(g.db, 5000);
	/* WAL+NORMAL: a committed batch survives a crash of this process (what
	 * the tests inflict), not a power cut. A production central acking
	 * events it could lose would need FULL; this one must keep up with
	 * tens of thousands of events per second on a test machine. */
	rc = db_exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;");
	if (rc != SQLITE_OK)
		goto cleanup;
	rc = sqlite3_prepare_v2(g.db, "PRAGMA user_version", -1, &s, NULL);
	if (rc == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
		version = sqlite3_column_int(s, 0);
	sqlite3_finalize(s);
	if (version > SCHEMA_VERSION) {
		log_at(LVL_ERROR, "database is from a newer scrm-central", "db=%s user_version=%d",
		       path, version);
		rc = SQLITE_MISMATCH;
		goto cleanup;
	}
	if (version < SCHEMA_VERSION) {
		/* Every statement of the schema is CREATE ... IF NOT EXISTS, so
		 * running it whole is each migration step at once (1 -> 2 adds
		 * resync_requests, 2 -> 3 redemptions). */
		char sql[sizeof schema_sql + 64];

		snprintf(sql, sizeof sql, "BEGIN IMMEDIATE;%sPRAGMA user_version=%d;COMMIT;",
			 schema_sql, SCHEMA_VERSION);
		rc = db_exec(sql);
		if (rc != SQLITE_OK)
			goto cleanup;
	}

	if ((rc = db_prepare(&g.st.begin, "BEGIN IMMEDIATE")) ||
	    (rc = db_prepare(&g.st.commit, "COMMIT")) ||
	    (rc = db_prepare(&g.st.rollback, "ROLLBACK")) ||
	    (rc = db_prepare(&g.st.ins_event,
			     "INSERT INTO events(tenant,store,device,seq,id,kind,wall_ms,mono_ms,boot,"
			     "clock_ok,body,arrival,received_ms) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?) "
			     "ON CONFLICT DO NOTHING")) ||
	    (rc = db_prepare(&g.st.sel_id,
			     "SELECT id FROM events WHERE tenant=? AND store=? AND device=? AND seq=?")) ||
	    (rc = db_prepare(&g.st.ins_conflict,
			     "INSERT INTO conflicts(tenant,store,device,seq,id,existing_id,kind,wall_ms,"
			     "mono_ms,boot,clock_ok,body,received_ms) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?) "
			     "ON CONFLICT DO NOTHING")) ||
	    (rc = db_prepare(&g.st.ins_rejected,
			     "INSERT INTO rejected(tenant,store,device,seq,reason,event,copies,first_ms,"
			     "last_ms) VALUES(?,?,?,?,?,?,1,?,?) ON CONFLICT DO UPDATE SET "
			     "copies=copies+1, reason=excluded.reason, last_ms=excluded.last_ms")) ||
	    (rc = db_prepare(&g.st.upsert_device,
			     "INSERT INTO devices(tenant,store,device,batches,stored,duplicates,"
			     "conflicts,rejected,unackable,first_ms,last_ms,contiguous) "
			     "VALUES(?,?,?,1,?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET "
			     "contiguous=max(contiguous, excluded.contiguous), "
			     "batches=batches+1, stored=stored+excluded.stored,"
			     " duplicates=duplicates+excluded.duplicates,"
			     " conflicts=conflicts+excluded.conflicts,"
			     " rejected=rejected+excluded.rejected,"
			     " unackable=unackable+excluded.unackable, last_ms=excluded.last_ms")) ||
	    (rc = db_prepare(&g.st.sel_contig,
			     "SELECT contiguous FROM devices WHERE tenant=? AND store=? AND device=?")) ||
	    (rc = db_prepare(&g.st.ins_gap,
			     "INSERT INTO gaps(tenant,store,device,from_seq,to_seq,noticed_ms) VALUES(?,?,?,?,?,?)")) ||
	    (rc = db_prepare(&g.st.ins_resync,
			     "INSERT INTO resync_requests(tenant,store,device,stream,cursor,reason,"
			     "snapshot,from_chunk,received_ms) VALUES(?,?,?,?,?,?,?,?,?)")) ||
	    (rc = db_prepare(&g.st.ins_redemption,
			     "INSERT INTO redemptions(tenant,store,device,seq,id,campaign,coupon,"
			     "member_id,order_id,value,verdict,reason,detail,decided_ms) "
			     "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)")) ||
	    (rc = db_prepare(&g.st.sel_redemption,
			     "SELECT id,campaign,coupon,verdict,reason,detail,decided_ms FROM redemptions "
			     "WHERE tenant=? AND store=? AND device=? AND seq=?")) ||
	    (rc = db_prepare(&g.st.cnt_coupon,
			     "SELECT count(*) FROM redemptions WHERE tenant=? AND coupon=? "
			     "AND verdict='accepted'")) ||
	    (rc = db_prepare(&g.st.last_coupon,
			     "SELECT r.store,r.device,r.order_id,e.wall_ms FROM redemptions r "
			     "LEFT JOIN events e USING(tenant,store,device,seq) "
			     "WHERE r.tenant=? AND r.coupon=? AND r.verdict='accepted' "
			     "ORDER BY r.rowid DESC LIMIT 1")) ||
	    (rc = db_prepare(&g.st.cnt_member,
			     "SELECT count(*) FROM redemptions WHERE tenant=? AND campaign=? "
			     "AND verdict='accepted' AND member_id=?")) ||
	    (rc = db_prepare(&g.st.cnt_campaign,
			     "SELECT count(*) FROM redemptions WHERE tenant=? AND campaign=? "
			     "AND verdict='accepted'")) ||
	    (rc = db_prepare(&g.st.ins_aside,
			     "INSERT INTO set_aside(tenant,store,device,seq,id,kind,reason,detail,bytes,received_ms)"
			     " VALUES(?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING")) ||
	    (rc = db_prepare(&g.st.sel_order,
			     "SELECT seq FROM events WHERE tenant=?1 AND store=?2 AND device=?3 AND kind=?4 AND"
			     " (CASE kind WHEN 'purchase' THEN json_extract(body, '$.order_id')"
			     " WHEN 'return' THEN json_extract(body, '$.return_id') END) = ?5 AND seq != ?6 LIMIT 1")) ||
	    (rc = db_prepare(&g.st.move_dup_order,
			     "INSERT OR IGNORE INTO duplicate_orders(tenant,store,device,seq,id,kind,order_key,held_seq,body,"
			     "received_ms) SELECT tenant,store,device,seq,id,kind,?5,?6,body,?7 FROM events"
			     " WHERE tenant=?1 AND store=?2 AND device=?3 AND seq=?4")) ||
	    (rc = db_prepare(&g.st.del_event,
			     "DELETE FROM events WHERE tenant=?1 AND store=?2 AND device=?3 AND seq=?4")) ||
	    (rc = db_prepare(&g.st.ins_late,
			     "INSERT INTO late(tenant,store,device,seq,recovered,received_ms) VALUES(?,?,?,?,?,?)")) ||
	    (rc = db_prepare(&g.st.sel_verdict_by_id,
			     "SELECT seq,campaign,coupon,verdict,reason,detail,decided_ms FROM redemptions"
			     " WHERE tenant=? AND store=? AND device=? AND id=?")) ||
	    (rc = db_prepare(&g.st.add_stat,
			     "INSERT INTO stats(key,value) VALUES(?,?) ON CONFLICT DO UPDATE SET "
			     "value=value+excluded.value")))
		goto cleanup;

	rc = sqlite3_prepare_v2(g.db, "SELECT coalesce(max(arrival),0)+1 FROM events", -1, &s, NULL);
	if (rc == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
		g.next_arrival = sqlite3_column_int64(s, 0);
	else
		rc = SQLITE_ERROR;
	sqlite3_finalize(s);

cleanup:
	if (rc != SQLITE_OK)
		db_close();
	return rc;
}

/* Step a write statement to completion and reset it. */
int db_step(sqlite3_stmt *s)
{
	char q[300];
	int rc = sqlite3_step(s);

	sqlite3_reset(s);
	if (rc == SQLITE_DONE || rc == SQLITE_ROW)
		return SQLITE_OK;
	log_at(LVL_ERROR, "sqlite step failed", "err=%s", lq(q, sizeof q, sqlite3_errmsg(g.db)));
	return rc;
}

void db_add_stat(const char *key, int64_t n)
{
	sqlite3_bind_text(g.st.add_stat, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_int64(g.st.add_stat, 2, n);
	db_step(g.st.add_stat);
	sqlite3_clear_bindings(g.st.add_stat);
}
