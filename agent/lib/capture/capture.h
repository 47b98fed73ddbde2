/* SPDX-License-Identifier: Apache-2.0 */
/*
 * capture: internals of the capture API shared with other libscrm modules.
 */
#ifndef SCRM_CAPTURE_H
#define SCRM_CAPTURE_H

#include <scrm/scrm.h>

#include "event.h"
#include "outbox.h"
#include "sbuf.h"

/* Commit an already validated, canonical body (group commit, durable on
 * return). Fills *receipt if not NULL. */
int store__record(scrm_store *s, event__kind kind, sbuf *body, scrm_receipt *receipt);

/* Run fn on the store's own connection while no capture uses it (takes the
 * group-commit lead). Returns fn's result. */
int store__exclusive(scrm_store *s, int (*fn)(outbox *ob, void *ctx), void *ctx);

/* Commit a coupon_redeem body alone, if `lim` allows (checked under the same
 * write lock): SCRM_E_REFUSED otherwise, nothing written. */
int store__record_redemption(scrm_store *s, sbuf *body, outbox__limits *lim, scrm_receipt *receipt);

#endif
