/* SPDX-License-Identifier: Apache-2.0 */
/*
 * heartbeat: the body of a device's heartbeat on up/health (docs/protocol.md,
 * "Heartbeat"), also the `status` command's result, built from figures the
 * daemon has gathered (daemon/health.c) — pure, no I/O. Absent figures
 * (a read that failed) are NULL and shown as such, never as zeros.
 */
#ifndef SCRM_HEARTBEAT_H
#define SCRM_HEARTBEAT_H

#include <scrm/scrm.h>

#include "outbox.h"
#include "sbuf.h"

#include <stdint.h>

typedef struct heartbeat__figures {
	int64_t now; /* wall */
	const char *device, *version;
	int64_t birth_seq, config_version, heartbeat_s, started_ms, uptime_ms;
	/* link and delivery */
	int connected;
	int64_t connected_since_ms, window_used, published, acked, redeliveries;
	/* outbox */
	scrm_outbox_stats st;
	const char *stats_err;            /* "" when the figures are good */
	int64_t error_since_ms;           /* of stats_err */
	const struct outbox__health *oh;  /* NULL: not read */
	const int64_t *set_aside;         /* NULL: not read */
	const char *alarms;               /* JSON array; NULL: not read ([]) */
	int erasure_pending;
	const char *cache;                /* JSON value: the cache streams' figures; NULL: null */
	const int64_t *verdicts;          /* pending, accepted, rejected; NULL: not read */
	const int64_t *disk;              /* free, total bytes; NULL: not read */
	int clock_trusted;
	int64_t clock_step_ms;
	int ntp_synced;                   /* -1 = unknown */
	int64_t rss_bytes;
	const char *log_level;
	int64_t commands;
	const char *config_error;         /* NULL = none */
	const char *config_rollback;      /* NULL or "" = none */
} heartbeat__figures;

/* Append the heartbeat's JSON object to `out`. */
void heartbeat__json(sbuf *out, const heartbeat__figures *f);

#endif
