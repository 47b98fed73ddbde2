/* SPDX-License-Identifier: Apache-2.0 */
/*
 * dbcode: the one mapping from SQLite result codes to scrm_err, shared by the
 * outbox and the cache (header-only, so modules that do not use SQLite need
 * not link it).
 */
#ifndef SCRM_DBCODE_H
#define SCRM_DBCODE_H

#include <scrm/scrm.h>
#include <sqlite3.h>

#include "err.h"
#include "platform.h"

static inline int db__code(int sqlite_rc)
{
	switch (sqlite_rc & 0xff) {
	case SQLITE_FULL:
		return SCRM_E_DISK_FULL;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return SCRM_E_BUSY;
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
		return SCRM_E_CORRUPT;
	case SQLITE_NOMEM:
		return SCRM_E_NOMEM;
	default:
		return SCRM_E_IO;
	}
}

/* PRAGMA journal_mode=WAL, retried for busy_ms: two processes creating a
 * database at once make SQLite return BUSY there without calling the busy
 * handler (seen as "database is locked" from a POS starting with the agent). */
static inline int db__set_wal(sqlite3 *db, int busy_ms, const char *module)
{
	int64_t until = platform__mono_ms() + busy_ms;
	for (;;) {
		int rc = sqlite3_exec(db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL);
		if (rc == SQLITE_OK)
			return SCRM_OK;
		if (db__code(rc) != SCRM_E_BUSY || platform__mono_ms() >= until)
			return err__set(db__code(rc), "%s: PRAGMA journal_mode=WAL: %s", module, sqlite3_errmsg(db));
		platform__sleep_ms(10);
	}
}

#endif
