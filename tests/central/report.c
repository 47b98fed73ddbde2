/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-central, report.c: `report`: per device, what arrived — counts, gaps,
 * duplicates, conflicts, rejections, order of first arrivals.
 */
#include "central.h"

/* ======================================================================
 * report
 * ====================================================================== */

#define MISSING_RANGES_MAX 20

struct dev_report {
	const char *tenant, *store, *device;
	int64_t events, min_seq, max_seq, missing, duplicates, conflicts, rejected, batches;
	int64_t out_of_order, unackable;
	int64_t set_aside, duplicate_orders, late, violations; /* schema 4; 0 in older databases */
	int64_t ranges[MISSING_RANGES_MAX][2];
	int nranges;
};

static int report_device(sqlite3 *db, struct dev_report *r)
{
	static const char *const sql_counts =
		"SELECT count(*), min(seq), max(seq) FROM events "
		"WHERE tenant=?1 AND store=?2 AND device=?3";
	static const char *const sql_conf =
		"SELECT count(*) FROM conflicts WHERE tenant=?1 AND store=?2 AND device=?3";
	static const char *const sql_rej =
		"SELECT count(*) FROM rejected WHERE tenant=?1 AND store=?2 AND device=?3";
	/* Rejected seqs are accounted for: not lost. */
	static const char *const sql_seqs =
		"SELECT seq FROM events WHERE tenant=?1 AND store=?2 AND device=?3 UNION "
		"SELECT seq FROM rejected WHERE tenant=?1 AND store=?2 AND device=?3 UNION "
		"SELECT seq FROM set_aside WHERE tenant=?1 AND store=?2 AND device=?3 UNION "
		"SELECT seq FROM duplicate_orders WHERE tenant=?1 AND store=?2 AND device=?3 ORDER BY 1";
	static const char *const sql_seqs_v3 =
		"SELECT seq FROM events WHERE tenant=?1 AND store=?2 AND device=?3 UNION "
		"SELECT seq FROM rejected WHERE tenant=?1 AND store=?2 AND device=?3 ORDER BY 1";
	static const char *const sql_v4 =
		"SELECT (SELECT count(*) FROM set_aside WHERE tenant=?1 AND store=?2 AND device=?3),"
		" (SELECT count(*) FROM duplicate_orders WHERE tenant=?1 AND store=?2 AND device=?3),"
		" (SELECT count(*) FROM late WHERE tenant=?1 AND store=?2 AND device=?3),"
		" (SELECT count(*) FROM late WHERE tenant=?1 AND store=?2 AND device=?3 AND recovered=0)";
	static const char *const sql_order =
		"SELECT seq FROM events WHERE tenant=?1 AND store=?2 AND device=?3 ORDER BY arrival";
	const char *sqls[] = { sql_counts, sql_conf, sql_rej, sql_seqs, sql_order, sql_v4 };
	sqlite3_stmt *s = NULL;
	size_t q;
	int rc = SQLITE_OK;
	int v4 = sqlite3_prepare_v2(db, sql_v4, -1, &s, NULL) == SQLITE_OK;

	sqlite3_finalize(s);
	s = NULL;
	if (!v4) {
		/* a database of schema 3 or older: no set-aside, late, ... tables */
		sqls[3] = sql_seqs_v3;
		sqls[5] = NULL;
	}
	for (q = 0; q < sizeof sqls / sizeof sqls[0]; q++) {
		int64_t prev = 0;
		int first = 1;

		if (!sqls[q])
			continue;
		rc = sqlite3_prepare_v2(db, sqls[q], -1, &s, NULL);
		if (rc != SQLITE_OK)
			return rc;
		sqlite3_bind_text(s, 1, r->tenant, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 2, r->store, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 3, r->device, -1, SQLITE_STATIC);
		while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
			int64_t seq = sqlite3_column_int64(s, 0);

			switch (q) {
			case 0:
				r->events = seq;
				r->min_seq = sqlite3_column_int64(s, 1);
				r->max_seq = sqlite3_column_int64(s, 2);
				break;
			case 1:
				r->conflicts = seq;
				break;
			case 2:
				r->rejected = seq;
				break;
			case 3:
				/* Seqs start at 1 and are never skipped (v1): every
				 * hole below the highest seq seen is a loss. */
				if (seq > prev + 1) {
					r->missing += seq - prev - 1;
					if (r->nranges < MISSING_RANGES_MAX) {
						r->ranges[r->nranges][0] = prev + 1;
						r->ranges[r->nranges][1] = seq - 1;
						r->nranges++;
					}
				}
				prev = seq;
				break;
			case 4:
				if (!first && seq < prev)
					r->out_of_order++;
				prev = seq;
				break;
			case 5:
				r->set_aside = sqlite3_column_int64(s, 0);
				r->duplicate_orders = sqlite3_column_int64(s, 1);
				r->late = sqlite3_column_int64(s, 2);
				r->violations = sqlite3_column_int64(s, 3);
				break;
			}
			first = 0;
		}
		sqlite3_finalize(s);
		s = NULL;
		if (rc != SQLITE_DONE)
			return rc;
		rc = SQLITE_OK;
	}
	return rc;
}

int cmd_report(const char *path, int as_json)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *s = NULL;
	cJSON *root = NULL, *arr = NULL;
	int64_t tot_events = 0, tot_missing = 0, tot_dup = 0, tot_conf = 0, tot_rej = 0;
	int64_t dropped = 0, ndev = 0, resyncs = 0;
	int rc, exit_code = 1;

	rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_busy_timeout(db, 5000);
	if (rc == SQLITE_OK)
		rc = sqlite3_prepare_v2(db,
					"SELECT tenant, store, device, batches, duplicates, unackable "
					"FROM devices ORDER BY tenant, store, device",
					-1, &s, NULL);
	if (rc != SQLITE_OK) {
		fprintf(stderr, "scrm-central report: cannot read %s: %s\n", path,
			db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
		goto cleanup;
	}
	if (as_json) {
		root = cJSON_CreateObject();
		arr = cJSON_AddArrayToObject(root, "devices");
		if (!root || !arr)
			goto cleanup;
	}
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		struct dev_report r;

		memset(&r, 0, sizeof r);
		r.tenant = (const char *)sqlite3_column_text(s, 0);
		r.store = (const char *)sqlite3_column_text(s, 1);
		r.device = (const char *)sqlite3_column_text(s, 2);
		r.batches = sqlite3_column_int64(s, 3);
		r.duplicates = sqlite3_column_int64(s, 4);
		r.unackable = sqlite3_column_int64(s, 5);
		if (!r.tenant || !r.store || !r.device)
			continue;
		rc = report_device(db, &r);
		if (rc != SQLITE_OK) {
			fprintf(stderr, "scrm-central report: %s\n", sqlite3_errmsg(db));
			goto cleanup;
		}
		ndev++;
		tot_events += r.events;
		tot_missing += r.missing;
		tot_dup += r.duplicates;
		tot_conf += r.conflicts;
		tot_rej += r.rejected;
		if (as_json) {
			cJSON *d = cJSON_CreateObject(), *mr;
			int i;

			if (!d)
				goto cleanup;
			cJSON_AddItemToArray(arr, d);
			cJSON_AddStringToObject(d, "tenant", r.tenant);
			cJSON_AddStringToObject(d, "store", r.store);
			cJSON_AddStringToObject(d, "device", r.device);
			cJSON_AddNumberToObject(d, "events", (double)r.events);
			if (r.events) {
				cJSON_AddNumberToObject(d, "min_seq", (double)r.min_seq);
				cJSON_AddNumberToObject(d, "max_seq", (double)r.max_seq);
			} else {
				cJSON_AddNullToObject(d, "min_seq");
				cJSON_AddNullToObject(d, "max_seq");
			}
			cJSON_AddNumberToObject(d, "missing", (double)r.missing);
			mr = cJSON_AddArrayToObject(d, "missing_ranges");
			for (i = 0; mr && i < r.nranges; i++) {
				cJSON *pair = cJSON_CreateArray();

				cJSON_AddItemToArray(pair, cJSON_CreateNumber((double)r.ranges[i][0]));
				cJSON_AddItemToArray(pair, cJSON_CreateNumber((double)r.ranges[i][1]));
				cJSON_AddItemToArray(mr, pair);
			}
			cJSON_AddNumberToObject(d, "duplicates", (double)r.duplicates);
			cJSON_AddNumberToObject(d, "conflicts", (double)r.conflicts);
			cJSON_AddNumberToObject(d, "rejected", (double)r.rejected);
			cJSON_AddNumberToObject(d, "unackable", (double)r.unackable);
			cJSON_AddNumberToObject(d, "batches", (double)r.batches);
			cJSON_AddBoolToObject(d, "in_order", r.out_of_order == 0);
			cJSON_AddNumberToObject(d, "out_of_order", (double)r.out_of_order);
			cJSON_AddNumberToObject(d, "set_aside", (double)r.set_aside);
			cJSON_AddNumberToObject(d, "duplicate_orders", (double)r.duplicate_orders);
			cJSON_AddNumberToObject(d, "late", (double)r.late);
			cJSON_AddNumberToObject(d, "violations", (double)r.violations);
		} else {
			char minb[24] = "none", maxb[24] = "none";

			if (r.events) {
				snprintf(minb, sizeof minb, "%" PRId64, r.min_seq);
				snprintf(maxb, sizeof maxb, "%" PRId64, r.max_seq);
			}
			printf("tenant=%s store=%s device=%s events=%" PRId64 " min_seq=%s max_seq=%s"
			       " missing=%" PRId64 " duplicates=%" PRId64 " conflicts=%" PRId64
			       " rejected=%" PRId64 " unackable=%" PRId64 " batches=%" PRId64
			       " in_order=%s out_of_order=%" PRId64 " set_aside=%" PRId64
			       " duplicate_orders=%" PRId64 " late=%" PRId64 " violations=%" PRId64 "\n",
			       r.tenant, r.store, r.device, r.events, minb, maxb, r.missing,
			       r.duplicates, r.conflicts, r.rejected, r.unackable, r.batches,
			       r.out_of_order == 0 ? "yes" : "no", r.out_of_order, r.set_aside,
			       r.duplicate_orders, r.late, r.violations);
		}
	}
	if (rc != SQLITE_DONE) {
		fprintf(stderr, "scrm-central report: %s\n", sqlite3_errmsg(db));
		goto cleanup;
	}
	sqlite3_finalize(s);
	s = NULL;
	if (sqlite3_prepare_v2(db, "SELECT value FROM stats WHERE key='batches_dropped'", -1, &s,
			       NULL) == SQLITE_OK &&
	    sqlite3_step(s) == SQLITE_ROW)
		dropped = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	s = NULL;
	/* absent from databases of schema 1: none */
	if (sqlite3_prepare_v2(db, "SELECT count(*) FROM resync_requests", -1, &s, NULL) ==
		    SQLITE_OK &&
	    sqlite3_step(s) == SQLITE_ROW)
		resyncs = sqlite3_column_int64(s, 0);

	if (as_json) {
		cJSON *t = cJSON_AddObjectToObject(root, "totals");
		char *text;

		if (!t)
			goto cleanup;
		cJSON_AddNumberToObject(t, "devices", (double)ndev);
		cJSON_AddNumberToObject(t, "events", (double)tot_events);
		cJSON_AddNumberToObject(t, "missing", (double)tot_missing);
		cJSON_AddNumberToObject(t, "duplicates", (double)tot_dup);
		cJSON_AddNumberToObject(t, "conflicts", (double)tot_conf);
		cJSON_AddNumberToObject(t, "rejected", (double)tot_rej);
		cJSON_AddNumberToObject(t, "dropped_batches", (double)dropped);
		cJSON_AddNumberToObject(t, "resync_requests", (double)resyncs);
		text = cJSON_Print(root);
		if (!text)
			goto cleanup;
		printf("%s\n", text);
		cJSON_free(text);
	} else {
		printf("totals devices=%" PRId64 " events=%" PRId64 " missing=%" PRId64
		       " duplicates=%" PRId64 " conflicts=%" PRId64 " rejected=%" PRId64
		       " dropped_batches=%" PRId64 " resync_requests=%" PRId64 "\n",
		       ndev, tot_events, tot_missing, tot_dup, tot_conf, tot_rej, dropped, resyncs);
	}
	exit_code = fflush(stdout) == 0 ? 0 : 1;

cleanup:
	sqlite3_finalize(s);
	sqlite3_close(db);
	cJSON_Delete(root);
	return exit_code;
}
