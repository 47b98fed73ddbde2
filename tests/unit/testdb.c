/* SPDX-License-Identifier: Apache-2.0 */
/* testdb: direct SQLite queries on a store's database file (see testutil.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

static sqlite3_stmt *query(const char *db_path, const char *sql, sqlite3 **db)
{
	sqlite3_stmt *st = NULL;
	if (sqlite3_open_v2(db_path, db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
		print_error("cannot open %s: %s\n", db_path, sqlite3_errmsg(*db));
		sqlite3_close(*db);
		fail();
	}
	sqlite3_busy_timeout(*db, 10000);
	if (sqlite3_prepare_v2(*db, sql, -1, &st, NULL) != SQLITE_OK) {
		print_error("%s: %s\n", sql, sqlite3_errmsg(*db));
		sqlite3_close(*db);
		fail();
	}
	int rc = sqlite3_step(st);
	if (rc != SQLITE_ROW) {
		print_error("%s: no row (%s)\n", sql, sqlite3_errmsg(*db));
		sqlite3_finalize(st);
		sqlite3_close(*db);
		fail();
	}
	return st;
}

int64_t tu_sql_int(const char *db_path, const char *sql)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = query(db_path, sql, &db);
	int64_t v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

char *tu_sql_text(const char *db_path, const char *sql)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = query(db_path, sql, &db);
	const unsigned char *t = sqlite3_column_text(st, 0);
	char *v = t ? strdup((const char *)t) : NULL;
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

void tu_sql_exec(const char *db_path, const char *sql)
{
	sqlite3 *db = NULL;
	char *err = NULL;
	assert_int_equal(sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	sqlite3_busy_timeout(db, 10000);
	int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
	if (rc != SQLITE_OK)
		print_error("%s: %s\n", sql, err ? err : "?");
	sqlite3_free(err);
	sqlite3_close(db);
	assert_int_equal(rc, SQLITE_OK);
}
