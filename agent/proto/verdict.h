/* SPDX-License-Identifier: Apache-2.0 */
/*
 * verdict: a coupon verdict from central (docs/protocol.md, down/verdict),
 * parsed and validated — pure, no I/O (fuzz_ack feeds it the same bytes as
 * the ack parser). The daemon records it in the outbox (uplink.c).
 */
#ifndef SCRM_VERDICT_H
#define SCRM_VERDICT_H

#include <stddef.h>
#include <stdint.h>

typedef struct verdict__msg {
	char redemption[37];
	int accepted;
	char reason[33];  /* "" when accepted */
	char detail[201];
	int64_t ts;       /* 0 when absent */
} verdict__msg;

/* Parse and validate a verdict payload; SCRM_E_INVALID names the field. */
int verdict__parse(const char *payload, size_t len, verdict__msg *v);

#endif
