/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cmd_diag: the read-only and diagnostic commands — ping, status (the
 * heartbeat's body), log.level (until restart or reload) and logs.recent
 * (the in-memory ring of log.c).
 */
#include "commands.h"

#include "log.h"
#include "platform.h"

#include <string.h>

int cmd__ping(cmd__ctx *c, const fleet__cmd *cmd, sbuf *res, fleet__error *err)
{
	int64_t now = platform__wall_ms();
	(void)cmd;
	(void)err;
	sbuf__puts(res, "{\"pong\":true,\"birth_seq\":");
	sbuf__i64(res, c->birth_seq);
	sbuf__puts(res, ",\"uptime_ms\":");
	sbuf__i64(res, platform__mono_ms() - c->started_mono);
	sbuf__puts(res, ",\"wall_ms\":");
	sbuf__i64(res, now);
	sbuf__puts(res, "}");
	return 0;
}

int cmd__status(cmd__ctx *c, const fleet__cmd *cmd, sbuf *res, fleet__error *err)
{
	(void)cmd;
	if (!c->health)
		return fleet__fail(err, "unavailable", "", "no health figures on this agent");
	c->health(c->d, res);
	return 0;
}

int cmd__log_level(cmd__ctx *c, const fleet__cmd *cmd, sbuf *res, fleet__error *err)
{
	static const char *const lv[] = {"error", "warn", "info", "debug"};
	const char *level = NULL;
	int prev = log__threshold & 3;
	if (fleet__arg_str(cmd, "level", 1, 8, &level, err))
		return -1;
	int l = log__parse_level(level);
	if (l < 0)
		return fleet__fail(err, "bad_args", "args.level", "must be error, warn, info or debug");
	log__set_level(l);
	*c->cmd_level = l;
	sbuf__puts(res, "{\"level\":");
	sbuf__jstr(res, lv[l]);
	sbuf__puts(res, ",\"previous\":");
	sbuf__jstr(res, lv[prev]);
	sbuf__puts(res, ",\"persistent\":false}");
	LOG(LOG_WARN, "fleet", "log level changed by command (until restart or reload)", "level=%s", lv[l]);
	return 0;
}

int cmd__logs_recent(cmd__ctx *c, const fleet__cmd *cmd, sbuf *res, fleet__error *err)
{
	int64_t lines = 50;
	const char *level = "debug";
	(void)c;
	if (fleet__arg_int(cmd, "lines", 0, 1, LOG_RING_LINES, &lines, err) ||
	    fleet__arg_str(cmd, "level", 0, 8, &level, err))
		return -1;
	int l = log__parse_level(level);
	if (l < 0)
		return fleet__fail(err, "bad_args", "args.level", "must be error, warn, info or debug");
	sbuf__puts(res, "{\"lines\":");
	log__recent((int)lines, l, res);
	sbuf__puts(res, "}");
	return 0;
}
