/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ctl: what scrmctl's subcommands share — the options of the run, opening
 * the store and the cache with the message an operator reads, and money as
 * text — and the subcommands themselves, one file per concern:
 *   ctl_outbox.c  record, status, outbox set-aside / recover
 *   ctl_cache.c   member show, cache status / load
 *   ctl_guide.c   reco, coupons, redeem, redemptions
 * scrmctl reaches the store only through the public API <scrm/scrm.h>: it is
 * a POS program like any. Its build has no include path into agent/lib (it
 * reads the API's JSON with cJSON and cli.h's getters).
 * Each command returns the exit code: 0 ok, 1 refused/failed, 2 usage.
 */
#ifndef SCRM_CTL_H
#define SCRM_CTL_H

#include <scrm/scrm.h>

#include "cli.h"

#include <stddef.h>
#include <stdint.h>

struct ctl__opts {
	const char *store, *device, *keys;
	int json, lines;
};

/* Open the store (creating it when --device is given), printing why not. */
int ctl__open_store(const struct ctl__opts *o, scrm_store **st);
/* Open the store's cache, printing why not. */
int ctl__open_cache(const struct ctl__opts *o, scrm_cache **c);
/* "scrmctl: CMD: <errmsg or the code's text>" on stderr. */
void ctl__fail(const char *cmd, int rc);
/* Minor units as "12.75 GBP" (cur NULL: no currency). */
void ctl__money(char *buf, size_t n, int64_t minor, const char *cur);

int ctl__record(struct ctl__opts *o, const char *path);
int ctl__status(struct ctl__opts *o);
int ctl__outbox_set_aside(const struct ctl__opts *o);
int ctl__outbox_recover(const struct ctl__opts *o, const cli__args *a);

int ctl__member_show(const struct ctl__opts *o, const cli__args *a);
int ctl__cache_status(const struct ctl__opts *o);
int ctl__cache_load(const struct ctl__opts *o, const cli__args *a);

int ctl__reco(const struct ctl__opts *o, const cli__args *a);
int ctl__coupons(const struct ctl__opts *o, const cli__args *a);
int ctl__redeem(const struct ctl__opts *o, const cli__args *a);
int ctl__redemptions(const struct ctl__opts *o, const cli__args *a);

#endif
