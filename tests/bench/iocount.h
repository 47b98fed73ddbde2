/* SPDX-License-Identifier: Apache-2.0 */
/*
 * iocount: what SQLite writes to flash, counted. A VFS shim over the default
 * VFS (installed as the default, so every connection of the process — the
 * bench's raw references and libscrm's own — goes through it) that counts,
 * per kind of file, the write calls, the pages and bytes written and the
 * syncs. Counting only: every call goes straight to the wrapped VFS, so the
 * figures are those of the real thing (no copy, no delay).
 *
 * A WAL page is a write of at least 512 bytes to a -wal file (SQLite
 * writes each frame as a 24-byte header and the page in two calls); bytes
 * count everything, headers included. Checkpoints show as writes to the
 * database file.
 */
#ifndef SCRM_BENCH_IOCOUNT_H
#define SCRM_BENCH_IOCOUNT_H

#include <stdint.h>

typedef struct iocount {
	int64_t wal_pages, wal_bytes, wal_syncs;
	int64_t db_pages, db_bytes, db_syncs;
	int64_t other_bytes, other_syncs; /* journals, temp files */
} iocount;

/* Register the shim as the default VFS (once; later calls do nothing).
 * 0, or an SQLite error code. */
int iocount_install(void);
/* The counts since the process started (or the last reset). */
void iocount_get(iocount *out);
void iocount_reset(void);
/* b - a, field by field. */
iocount iocount_diff(const iocount *b, const iocount *a);

#endif
