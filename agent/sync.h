/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sync: the daemon's loop. It owns the outbox connection, the MQTT client and
 * the delivery window: it publishes batches of pending events in seq order,
 * deletes them only on central's application-level ack, redelivers from the
 * oldest unacknowledged event on ack timeout or reconnect (go-back-N), and
 * reconnects with capped exponential backoff and full jitter — at once when
 * the network comes back. It sleeps in poll() between events: new captures
 * wake it through a datagram socket in the store directory (platform.h).
 */
#ifndef SCRM_SYNC_H
#define SCRM_SYNC_H

#include "config.h"

/* Run until SIGTERM/SIGINT (clean exit, 0) or a fatal error (non-zero).
 * Signals must already be blocked in all threads (sigmask inherited). */
int sync__run(const config *cfg);

#endif
