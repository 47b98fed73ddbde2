/* SPDX-License-Identifier: Apache-2.0 */
/*
 * commands: the dispatch of fleet commands (commands.def → handler) and the
 * daemon's side of a down/cmd message: is it allowed (fleet.commands, the
 * command key), parse it (proto/fleet.c), run it on a cmd__ctx made from
 * the daemon's state, answer on up/reply.
 */
#include "commands.h"

#include "daemon.h"
#include "err.h"
#include "log.h"
#include "platform.h"

#include <stdio.h>
#include <string.h>

static const struct {
	const char *name;
	cmd__handler *fn;
} handlers[] = {
#define SCRM_COMMAND(name, handler, any_clock, args, help) {name, handler},
#include "commands.def"
#undef SCRM_COMMAND
};

cmd__handler *cmd__find(const char *name)
{
	for (size_t i = 0; i < sizeof(handlers) / sizeof(handlers[0]); i++)
		if (strcmp(handlers[i].name, name) == 0)
			return handlers[i].fn;
	return NULL;
}

int cmd__run(cmd__ctx *c, const fleet__cmd *cmd, sbuf *res, fleet__error *err)
{
	cmd__handler *fn = cmd__find(cmd->name);
	if (!fn)
		return fleet__fail(err, "unknown_command", "cmd", "'%s' is not a command this agent knows", cmd->name);
	return fn(c, cmd, res, err);
}

/* ---- the daemon's hooks ---- */

static void hook_health(void *d, sbuf *out)
{
	health__json(d, out);
}

static void hook_cache_pump(void *d)
{
	cache_sync__pump(d);
}

static void hook_apply_config(void *d, config *next, int cls, const char *source)
{
	reconfig__apply(d, next, cls, source);
}

static cmd__ctx commands__ctx(struct sync *s)
{
	cmd__ctx c = {
		.cfg = s->cfg,
		.ob = s->ob,
		.cache = s->cache,
		.dl = &s->dl,
		.birth_seq = s->birth_seq,
		.started_mono = s->started_mono,
		.cmd_level = &s->cmd_level,
		.erasure_pending = &s->erasure_pending,
		.probation_ms = &s->probation_ms,
		.d = s,
		.health = hook_health,
		.cache_pump = hook_cache_pump,
		.forget = cache_sync__forget,
		.apply_config = hook_apply_config,
	};
	return c;
}

void commands__on_message(struct sync *s, const mqtt__event *e)
{
	fleet__cmd cmd;
	fleet__error err;
	char topic[400], q[300];
	int64_t now = platform__wall_ms();
	int ok = 0;
	s->n_commands++;
	sbuf__reset(&s->fr);
	if (!s->cfg->commands_enabled) {
		memset(&cmd, 0, sizeof(cmd));
		fleet__fail(&err, "disabled", "", "fleet commands are turned off on this agent (fleet.commands)");
	} else if (s->signed_only && !s->cmd_key) {
		/* Fail closed: a configured but unreadable key must not turn
		 * into "unsigned commands accepted". */
		memset(&cmd, 0, sizeof(cmd));
		fleet__fail(&err, "unavailable", "", "fleet.command_key_file cannot be loaded; no command is obeyed");
	} else if (fleet__parse_command(e->payload, e->len, s->cfg->tenant, s->cfg->store_id, s->cfg->device_id,
					s->cmd_key, now, health__clock_trusted(s, now), &s->seen, &cmd, &err) == 0) {
		/* A signed command's id is saved by now (the replay guard
		 * outlives a restart); one that could not be saved was refused. */
		cmd__ctx c = commands__ctx(s);
		ok = cmd__run(&c, &cmd, &s->fr, &err) == 0;
	}
	if (s->fr.oom) {
		ok = 0;
		fleet__fail(&err, "failed", "", "out of memory building the result");
	}
	fleet__reply(&s->fb, &cmd, ok ? s->fr.p : NULL, &err, platform__wall_ms());
	int own = fleet__reply_topic(e->response_topic, s->cfg->topic_prefix, topic, sizeof(topic));
	if (e->response_topic && !own)
		LOG(LOG_WARN, "fleet", "response topic outside this device's up/reply; answering on the default",
		    "requested=%s", log__q(q, sizeof(q), e->response_topic));
	if (ok)
		LOG(LOG_INFO, "fleet", "command done", "cmd=%s id=%s signed=%d", cmd.name[0] ? cmd.name : "-",
		    cmd.id[0] ? cmd.id : "-", cmd.is_signed);
	else
		LOG(LOG_WARN, "fleet", "command refused", "cmd=%s id=%s code=%s field=%s message=%s",
		    cmd.name[0] ? cmd.name : "-", cmd.id[0] ? cmd.id : "-", err.code, err.field[0] ? err.field : "-",
		    log__q(q, sizeof(q), err.message));
	if (s->fb.oom || mqtt__publish_reply(s->mq, topic, s->fb.p, s->fb.len, e->correlation, e->correlation_len) != SCRM_OK)
		LOG(LOG_WARN, "fleet", "cannot publish the command reply", "topic=%s", topic);
	fleet__cmd_free(&cmd);
}
