/* SPDX-License-Identifier: Apache-2.0 */
/*
 * quarantine: what the outbox and the cache do with a damaged SQLite file.
 * A file SQLite calls "not a database" or "malformed" (or that fails
 * PRAGMA quick_check when the daemon opens it) is never deleted: it moves,
 * with its -wal and -shm, to `<store>/quarantine/<name>-<wall_ms>.db*`, and a
 * fresh file takes its place so capture goes on.
 *
 * Several processes open the store's files at once, so the swap is guarded
 * by a lock file per database (`<store>/<name>.lock`): taken shared by every
 * open (and by every outbox append), exclusive by the one process that
 * moves the file. SQLite finds a database's -wal and -shm by name, so a
 * connection still holding the old file must never checkpoint or delete
 * "its" -wal after the swap (that name now belongs to the fresh file):
 * quarantine__close_detached closes such a connection without touching
 * either.
 */
#ifndef SCRM_QUARANTINE_H
#define SCRM_QUARANTINE_H

#include <stddef.h>
#include <stdint.h>

#define QUARANTINE_DIR "quarantine"

struct sqlite3;

/* fd of `<dir>/<name>.lock` (created 0600, not locked), or -errno. */
int quarantine__lock_open(const char *dir, const char *name);
/* Take (how 1 shared, 2 exclusive) or release (0) it; fd < 0: no-op. */
void quarantine__lock(int fd, int how);

/* 1 if a SQLite result code says the file is damaged (CORRUPT, NOTADB). */
int quarantine__corrupt_rc(int sqlite_rc);

/* PRAGMA quick_check: 0 if the file is sound, 1 if not (the first problem
 * in why), or the SQLite error code of the check itself (why says it). */
int quarantine__quick_check(struct sqlite3 *db, char *why, size_t cap);

/* Close without a checkpoint and without deleting the -wal / -shm, which
 * SQLite would find by name: for a connection whose file was (or is about to
 * be) moved. NULL is a no-op. */
void quarantine__close_detached(struct sqlite3 *db);

/* Whether the file at `path` is still the one identified by (dev, ino): 1
 * yes, 0 another file took its place, -1 there is no file there now. */
int quarantine__same_file(const char *path, uint64_t dev, uint64_t ino);

/* Choose `<dir>/quarantine/<prefix>-<ms>.db` (the directory made 0700; a
 * later ms if that name is taken). 0 or -errno. */
int quarantine__dest(const char *dir, const char *prefix, int64_t ms, char *dest, size_t cap);

/* Move `src` (a database path) and its -wal / -shm to `dest` and
 * dest-wal / dest-shm; with link_db the database itself is hard-linked
 * (so `src` still names it until the caller renames a fresh file over it).
 * Missing -wal / -shm are fine. Both directories are fsynced. 0 or -errno. */
int quarantine__move(const char *src, const char *dest, int link_db);
/* Erasure reaches the quarantine (protocol.md "Erasure"): in
 * `<dir>/quarantine/`, every cache file (`cache-*`: central's data, sealed
 * personal data, card numbers, tags; fetched again from central) is
 * removed, and in every outbox file (`outbox-*.db`, -wal, -shm: damaged
 * copies whose readable rows were salvaged when they were set aside)
 * every occurrence of member_id as a whole token — not inside a longer run
 * of letters, digits or "_.-@+" — is overwritten in place with as many '*'
 * (same length, so the pages keep their shape). Files are synced before
 * this returns. *touched = files removed or changed. No quarantine
 * directory: 0. 0 or -errno (the first failure; the others are still
 * done). */
int quarantine__erase_member(const char *dir, const char *member_id, int *touched);

/* Only the -wal / -shm part of quarantine__move (no fsync). 0 or -errno. */
int quarantine__move_sidecars(const char *src, const char *dest);

/* Hard links of the file at path (st_nlink), or -errno. */
int quarantine__links(const char *path);
/* The name under `<dir>/quarantine/` of another link to the file at path:
 * 1 found (dest filled), 0 none. */
int quarantine__find_link(const char *dir, const char *path, char *dest, size_t cap);

#endif
