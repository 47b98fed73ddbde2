/* SPDX-License-Identifier: Apache-2.0 */
/*
 * conn: what scrm-fleet's actions share — the broker connection (conn.c)
 * and the three actions over it (view.c: list, show; cmd.c: cmd). Each
 * action returns the exit code of console__main (console.h).
 */
#ifndef SCRM_FLEET_CONN_H
#define SCRM_FLEET_CONN_H

#include "console.h"
#include "mqtt.h"

#include <stdint.h>

struct conn {
	mqtt *mq;
	char client_id[80];
};

/* Connect to a->broker as the operator (TLS unless mqtt://), within
 * timeout_ms: 0, or 2 (bad options, message printed) / 3 (no connection).
 * conn__close(c) afterwards in every case. */
int conn__open(const console__args *a, struct conn *c, int64_t timeout_ms);
/* Flush stdout and DISCONNECT; the client is left for exit() to reclaim. */
void conn__close(struct conn *c);
/* The next event of the client, or NULL once `until` (monotonic ms) passed. */
mqtt__event *conn__next_event(mqtt *m, int64_t until);
/* Subscribe (QoS 1) and wait for the grant: 0, 1 refused, 3 no answer. */
int conn__subscribe_wait(struct conn *c, const char *topic, int64_t timeout_ms);

int console__list(const console__args *a, struct conn *c);
int console__show(const console__args *a, struct conn *c);
int console__cmd(const console__args *a, struct conn *c);

#endif
