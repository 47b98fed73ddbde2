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

#endif
