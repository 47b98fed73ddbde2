/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cmd_cache: the commands on the customer cache — resync (ask central for
 * snapshots), cache.purge (empty streams and fetch them again) and
 * member.forget (the erasure: cache and outbox, docs/protocol.md
 * "Erasure").
 */
#include "commands.h"

#include "err.h"
#include "log.h"

#include <stdio.h>
#include <string.h>

/* `stream` arg: a stream name or "all" → *st (-1 = all). */
static int stream_arg(const fleet__cmd *cmd, int required, int *st, fleet__error *err)
{
	const char *name = "all";
	if (fleet__arg_str(cmd, "stream", required, 32, &name, err))
		return -1;
	if (strcmp(name, "all") == 0) {
		*st = -1;
		return 0;
	}
	if ((*st = cache__stream_parse(name)) < 0) {
		/* The names from lib/cache/streams.def: "members, coupons, ..., rules or all". */
		char names[256];
		size_t n = 0;
		names[0] = 0;
		for (int i = 0; i < ST_COUNT && n < sizeof(names); i++)
			n += (size_t)snprintf(names + n, sizeof(names) - n, "%s%s", i ? ", " : "", cache__stream_name(i));
		return fleet__fail(err, "bad_args", "args.stream", "'%s' is not a stream (%s or all)", name, names);
	}
	return 0;
}

static void put_streams(sbuf *res, int st)
{
	sbuf__puts(res, "[");
	for (int i = 0, first = 1; i < ST_COUNT; i++)
		if (st < 0 || st == i) {
			if (!first)
				sbuf__puts(res, ",");
			first = 0;
			sbuf__jstr(res, cache__stream_name(i));
		}
	sbuf__puts(res, "]");
}

/* resync and cache.purge: one body, as before the split. */
static int resync_or_purge(cmd__ctx *c, const fleet__cmd *cmd, sbuf *res, fleet__error *err, int purge)
{
	int st = -1;
	if (stream_arg(cmd, purge, &st, err))
		return -1;
	if (!c->cache)
		return fleet__fail(err, "unavailable", "", "this agent runs without a customer cache (cache.enabled)");
	if (purge) {
		if (cache__purge(c->cache, st) != SCRM_OK)
			return fleet__fail(err, "failed", "", "%s", scrm_errmsg());
		LOG(LOG_WARN, "fleet", "cache purged by command; resync requested", "stream=%s",
		    st < 0 ? "all" : cache__stream_name(st));
	} else {
		cache__want(c->cache, st, "command");
	}
	if (c->cache_pump)
		c->cache_pump(c->d);
	sbuf__puts(res, purge ? "{\"purged\":" : "{\"requested\":");
	put_streams(res, st);
	sbuf__puts(res, "}");
	return 0;
}

int cmd__resync(cmd__ctx *c, const fleet__cmd *cmd, sbuf *res, fleet__error *err)
{
	return resync_or_purge(c, cmd, res, err, 0);
}

int cmd__cache_purge(cmd__ctx *c, const fleet__cmd *cmd, sbuf *res, fleet__error *err)
{
	return resync_or_purge(c, cmd, res, err, 1);
}

int cmd__member_forget(cmd__ctx *c, const fleet__cmd *cmd, sbuf *res, fleet__error *err)
{
	const char *member = NULL;
	if (fleet__arg_str(cmd, "member_id", 1, 64, &member, err))
		return -1;
	if (!c->forget)
		return fleet__fail(err, "unavailable", "", "no erasure on this agent");
	int rc = c->cache ? cache__forget(c->cache, member, c->forget, c->d) : c->forget(c->d, member);
	if (rc == SCRM_OK && *c->erasure_pending) /* the outbox's part, done inside the cache's */
		rc = outbox__scrub_wal(c->ob);
	if (rc == SCRM_E_BUSY) {
		/* Gone from every table; old copies wait for readers to let
		 * go of a WAL. Not "done": retried at idle, and the reply
		 * says so (protocol.md "Erasure"). */
		*c->erasure_pending = 1;
		return fleet__fail(err, "failed", "", "%.160s; send it again to confirm", scrm_errmsg());
	}
	if (rc != SCRM_OK)
		return fleet__fail(err, "failed", "", "%s; nothing was changed, send it again", scrm_errmsg());
	*c->erasure_pending = 0;
	sbuf__puts(res, "{\"forgotten\":true,\"cache\":");
	sbuf__puts(res, c->cache ? "true" : "false");
	sbuf__puts(res, "}");
	return 0;
}
