/* SPDX-License-Identifier: Apache-2.0 */
/*
 * store: internals of the capture API shared with other libscrm modules.
 */
#ifndef SCRM_STORE_H
#define SCRM_STORE_H

#include <scrm/scrm.h>

#include "event.h"
#include "sbuf.h"

/* Commit an already validated, canonical body (group commit, durable on
 * return). Fills *receipt if not NULL. */
int store__record(scrm_store *s, event__kind kind, sbuf *body, scrm_receipt *receipt);

#endif
