/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sqlpeek: one number from a SQLite database another process is writing
 * (central's events, an agent's outbox), read-only, for the programs that
 * watch a run from outside — the demo, bench_sync. Header-only: the
 * harness library itself does not link SQLite; a program that includes
 * this does.
 */
#ifndef SCRM_TESTS_SQLPEEK_H
#define SCRM_TESTS_SQLPEEK_H

#include <sqlite3.h>
#include <stdint.h>
#include <unistd.h>

/* The first column of the first row of `sql` on db_path: 0 while the file
 * does not exist yet, -1 when it cannot be opened or gives no row. Waits up
 * to 2 s for the writer's lock. */
static inline int64_t sqlpeek_int(const char *db_path, const char *sql)
{
	sqlite3 *db;
	sqlite3_stmt *st;
	int64_t v = -1;
	if (access(db_path, F_OK) != 0)
		return 0;
	if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
		return -1;
	sqlite3_busy_timeout(db, 2000);
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

#endif
