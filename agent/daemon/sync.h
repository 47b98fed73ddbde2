/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sync: the daemon's entry point (loop.c; the modules it drives are listed
 * in daemon.h). It owns the outbox connection, the MQTT client and
 * runs the delivery state machine (delivery.h) over them: batches of pending
 * events in seq order, deleted only on central's application-level ack,
 * redelivered from the oldest unacknowledged event on ack timeout or
 * reconnect (go-back-N). It reconnects with capped exponential backoff and full jitter — at once when
 * the network comes back. It sleeps in poll() between events: new captures
 * wake it through a datagram socket in the store directory (platform.h).
 */
#ifndef SCRM_SYNC_H
#define SCRM_SYNC_H

#include "config.h"

#include <stddef.h>
#include <stdint.h>

/* Run until SIGTERM/SIGINT (clean exit, 0) or a fatal error (non-zero).
 * Signals must already be blocked in all threads (sigmask inherited).
 * Takes the config over (*cfg is zeroed; SIGHUP and the fleet command
 * config.set replace it while running). level_override: --log-level (may
 * be NULL), which wins over log.level across reloads. */
int sync__run(config *cfg, const char *level_override);

#endif
