/* SPDX-License-Identifier: Apache-2.0 */
/*
 * faultvfs: a SQLite VFS shim for crash and I/O fault injection in tests
 * (the idea of SQLite's own test_vfs.c / crash testing, much smaller).
 *
 * It wraps the default VFS found at install time (unix on Linux), counts
 * every xRead, xWrite, xTruncate and xSync across all files, and can make
 * the Nth such call fail:
 *   FAULTVFS_EIO        SQLITE_IOERR_READ / _WRITE / _TRUNCATE / _FSYNC
 *   FAULTVFS_ENOSPC     SQLITE_FULL (a read or a sync fails as EIO would)
 *   FAULTVFS_POWER_CUT  the machine stops: that call and every later one
 *                       fails (SQLITE_IOERR_*, SQLITE_CANTOPEN), as if the
 *                       process had died; faultvfs_power_cut_apply() then
 *                       puts every file back to what an fsync made durable
 * either once or persistently (every later matching call fails too), and a
 * disk quota: writes that would grow the files under a directory past N
 * bytes fail with SQLITE_FULL.
 *
 * Durability model. For every file opened through the shim (by inode, so
 * a rename done outside SQLite does not lose track of it) the shim keeps
 * the durable image: the content when it first opened the file (whatever
 * is on disk then counts as durable), updated by every successful xSync to
 * the content at that moment. Writes and truncations since the last xSync
 * are kept as a list. A power cut rewrites each file to its durable image,
 * optionally followed by a random (seeded) prefix of its unsynced writes,
 * the last one possibly torn at a 512-byte boundary: what a disk without
 * write ordering across fsyncs may leave. A file the shim created counts as
 * durably created (empty); xDelete counts as durable. The shim does not
 * fsync for real unless asked (faultvfs_real_sync): its own model decides
 * what survives, and tests on a slow disk stay fast.
 *
 * Not seen: what SQLite does not do through the VFS — the -shm file (mapped
 * memory; SQLite rebuilds it after a crash), and plain POSIX calls made by
 * the code under test (rename/link/unlink in agent/lib/core/quarantine.c,
 * platform__precreate, the lock files). Those take effect at once and are
 * durable as far as the shim is concerned; only their effect on a file the
 * shim tracks is seen, at that file's next first open.
 *
 * Threads: every entry point may be called from any thread; one mutex
 * guards the counters and the images (the real I/O runs under it too, so
 * calls through the shim are serialised — fine for tests).
 */
#ifndef SCRM_TESTS_FAULTVFS_H
#define SCRM_TESTS_FAULTVFS_H

#include <stddef.h>
#include <stdint.h>

#define FAULTVFS_NAME "faultvfs"

/* Call classes, a mask: which calls an armed fault counts. */
enum {
	FAULTVFS_READ = 1,
	FAULTVFS_WRITE = 2,
	FAULTVFS_TRUNCATE = 4,
	FAULTVFS_SYNC = 8,
};
#define FAULTVFS_WRITE_CLASS (FAULTVFS_WRITE | FAULTVFS_TRUNCATE | FAULTVFS_SYNC)

typedef enum faultvfs_fault {
	FAULTVFS_NONE = 0,
	FAULTVFS_EIO,
	FAULTVFS_ENOSPC,
	FAULTVFS_POWER_CUT,
} faultvfs_fault;

/* What survives a power cut of the unsynced writes. */
typedef enum faultvfs_cut_mode {
	FAULTVFS_DROP_UNSYNCED = 0, /* none: each file is its durable image */
	FAULTVFS_KEEP_PREFIX,       /* a random prefix per file, the last write maybe torn */
	FAULTVFS_KEEP_ALL,          /* all: the process crashed, the kernel kept its writes */
} faultvfs_cut_mode;

typedef struct faultvfs_counts {
	int64_t reads, writes, truncates, syncs; /* calls made (failed ones included) */
	int64_t write_class;                     /* writes + truncates + syncs */
	int64_t faults;                          /* calls the shim failed */
	int powered_off;                         /* a power cut happened */
} faultvfs_counts;

/* Register the shim as FAULTVFS_NAME over the current default VFS (once;
 * later calls only change `make_default`). 0 or a SQLite error code. */
int faultvfs_install(int make_default);
/* Make the shim (1) or the VFS it wraps (0) the default for new connections. */
void faultvfs_set_default(int on);

/* Disarm, clear the power cut, the quota, the sync delay and
 * faultvfs_on_power_cut, zero
 * the counters and forget every file (nothing is rewritten). Call with no
 * connection open through the shim. */
void faultvfs_reset(void);

/* Fail the `nth` (1-based) call of the classes in `calls`, counted from now
 * across all files, with `fault`; `persistent`: every later call of those
 * classes fails too (a power cut always is). Replaces any armed fault. */
void faultvfs_arm(unsigned calls, int64_t nth, faultvfs_fault fault, int persistent);
void faultvfs_disarm(void);
/* Cut the power now. */
void faultvfs_power_cut(void);
/* After the armed EIO/ENOSPC fault fires, the process goes on until its
 * next write-class call and dies there: that call and every later one fail
 * as after a power cut (faultvfs_on_power_cut applies, FAULTVFS_KEEP_ALL for
 * a crash that loses nothing the kernel had). Models "the fsync failed, the
 * caller saw the error, then the process was killed". */
void faultvfs_die_after_fault(int on);
/* Whether the power is off (a cut happened, not yet applied): for wrappers
 * that make the code's own POSIX calls fail after a cut too. */
int faultvfs_power_is_off(void);

/* Writes that would grow the files under `dir` (recursively, whoever wrote
 * them) past `max_bytes` fail with SQLITE_FULL; dir NULL or max_bytes < 0:
 * no quota. `dir` copied. */
void faultvfs_set_quota(const char *dir, int64_t max_bytes);

/* Whether xSync also syncs for real (default 0). */
void faultvfs_real_sync(int on);
/* Each successful xSync first sleeps `us` microseconds without holding the
 * shim's mutex, as a disk's fsync would (group commit gets something to
 * group). 0 (the default, and after faultvfs_reset): no delay. */
void faultvfs_sync_delay(unsigned us);

void faultvfs_get_counts(faultvfs_counts *out);
/* One line about the first call the shim failed ("xSync #12 .../outbox.db-wal"),
 * "" if none. Copied into out. */
void faultvfs_last_fault(char *out, size_t cap);

/* After a power cut, with every connection through the shim closed: rewrite
 * each tracked file as the model says survived (see the top), then forget
 * the files and turn the power back on (counters kept, fault disarmed).
 * `seed` picks the kept prefixes under FAULTVFS_KEEP_PREFIX. Returns the
 * number of files whose content changed, or -errno. */
int faultvfs_power_cut_apply(faultvfs_cut_mode mode, uint32_t seed);

/* Make a power cut take effect at the moment it happens: the shim rewrites
 * the files at once (as faultvfs_power_cut_apply would, power staying off)
 * and then, if fn is not NULL, calls fn(what, ctx) under its mutex, where
 * `what` describes the call that was cut. A test that runs the code under
 * test in a forked child can record what it must in fn and _exit(), so
 * nothing the code would do after the cut ever happens; otherwise every
 * later call fails, and the files already hold what survived (the test
 * only closes its connections and calls faultvfs_reset()). Off until
 * called; faultvfs_reset() turns it off. */
void faultvfs_on_power_cut(void (*fn)(const char *what, void *ctx), void *ctx, faultvfs_cut_mode mode, uint32_t seed);

/* Name of the VFS the shim wraps ("unix"), for a connection that must not
 * go through the shim; NULL before faultvfs_install(). */
const char *faultvfs_wrapped_name(void);

#endif
