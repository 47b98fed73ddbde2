/* SPDX-License-Identifier: Apache-2.0 */
/*
 * paths: where the agent keeps what decides whom it trusts.
 *
 * The store directory (store_dir, /var/lib/scrm) is shared with the POS
 * software: mode 2770, group scrm, no sticky bit, so that POS processes can
 * create and write the outbox. That also lets any group member rename,
 * remove or plant entries there. Everything else the agent keeps — the
 * device keys, central's public key, the remote settings, the ids of signed
 * commands already run, birth_seq and the customer cache — lives in
 * `<store_dir>/private/`, mode 0700, owned by the agent's user: a group
 * member cannot rename, replace or plant anything in it, and a planted
 * `private/` of their own is refused (wrong owner) rather than used.
 *
 *   <store_dir>/                 2770 scrm:scrm (POS: outbox, agent.sock)
 *     outbox.db(-wal,-shm,...)   0660: capture writes it through libscrm
 *     agent.sock, agent.lock, quarantine/
 *     private/                   0700 scrm       (this module)
 *       keys/                    0700: data.key, tenant.key, central.pub,
 *                                      device.key, device.csr, device.crt
 *       cache.db(-wal,-shm)      customer cache (personal data, sealed)
 *       config.remote.json       central's settings (probation bookkeeping)
 *       fleet_seen_ids           signed commands already run (replay guard)
 *       birth_seq                connection counter of the fleet state
 *
 * Files there are read through platform__read_trusted (no symlinks, owner
 * and mode checked on the descriptor).
 */
#ifndef SCRM_PATHS_H
#define SCRM_PATHS_H

#include <stddef.h>

#define PATHS_PRIVATE_DIR "private"
#define PATHS_KEYS_DIR "keys"          /* in the private directory */
#define PATHS_SEEN_IDS "fleet_seen_ids"
#define PATHS_BIRTH_SEQ "birth_seq"
#define PATHS_OVERLAY "config.remote.json"

/* `<store_dir>/private/<name>` (name NULL or "": the directory itself) into
 * out[n]. SCRM_OK, or SCRM_E_CONFIG naming store_dir if it does not fit. */
int paths__private(const char *store_dir, const char *name, char *out, size_t n);

/* Make sure `<store_dir>/private/` exists (created 0700) and is the agent's
 * own: not a symbolic link, owned by the effective uid (or root), no group
 * or other write. Then move what an older agent kept directly in store_dir
 * (keys/, cache.db and its -wal/-shm, config.remote.json, fleet_seen_ids,
 * birth_seq) into it — each only if it is not a symbolic link, is owned by
 * this user and (keys/ and every key in it) nobody else could write or (for
 * secrets) read; anything else is refused with the path and the reason, not
 * silently trusted. keys_dir (cache.keys_dir, may be NULL): when set, the
 * operator chose where the keys are, and an old keys/ is not moved. A legacy cache.db that fails the checks is left where it
 * is and not used (it is fetched again from central); `moved` then says so.
 * moved[n] (may be NULL) gets a comma-separated list of what was moved, ""
 * if nothing. SCRM_OK, or SCRM_E_CONFIG with the path and the reason. */
int paths__prepare(const char *store_dir, const char *keys_dir, char *moved, size_t n);

#endif
