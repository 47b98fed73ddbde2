/* SPDX-License-Identifier: Apache-2.0 */
/*
 * replay: the file of the fleet replay guard (`<store>/private/
 * fleet_seen_ids`, paths.h), so a restart does not forget which signed
 * commands were obeyed. The guard itself — which ids are held, for how
 * long, what is refused — is proto/fleet.h's fleet__seen; this module loads
 * it from the file and gives it the save hook that writes the file before
 * fleet__parse_command() lets a signed command run.
 *
 * The file: `<id> <expires_ms>` per line, written atomically, mode 0600;
 * read only if it is the agent's own (platform__read_trusted).
 */
#ifndef SCRM_REPLAY_H
#define SCRM_REPLAY_H

#include "fleet.h"

#include <stdint.h>

/* Fill *seen from the file at `path` (copied) and hook it to that file.
 * 0 (read, or no file yet: empty), or -1 with seen->broken set (the file
 * exists but cannot be read or is too big: every signed command is then
 * refused until it is repaired or removed). A line holding only an id (the
 * file of earlier agents kept no expiry) is kept for FLEET_MAX_EXPIRY_MS
 * from now_ms. Release with replay__close() either way. */
int replay__open(fleet__seen *seen, const char *path, int64_t now_ms);
/* Release the ids and the hook's file name. NULL is a no-op. */
void replay__close(fleet__seen *seen);

#endif
