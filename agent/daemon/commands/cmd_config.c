/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cmd_config: config.get and config.set (docs/protocol.md, "Remote
 * config"). config.set writes the overlay (config.c) and hands the new
 * config to the daemon (reconfig.c applies it); a broker change starts a
 * probation.
 */
#include "commands.h"

#include "err.h"
#include "log.h"
#include "platform.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

int cmd__config_set(cmd__ctx *c, const fleet__cmd *cmd, sbuf *res, fleet__error *err)
{
	const cJSON *set = fleet__arg(cmd, "set");
	int64_t if_version = -1;
	config next;
	sbuf text, changed;
	int cls = -1, rc = -1;
	char *set_text = NULL;
	if (!cJSON_IsObject(set))
		return fleet__fail(err, "bad_args", "args.set", "required: an object of \"section.key\": value (null = local value)");
	if (fleet__arg_int(cmd, "if_version", 0, 0, INT64_MAX, &if_version, err))
		return -1;
	if (if_version >= 0 && if_version != c->cfg->config_version)
		return fleet__fail(err, "version_conflict", "args.if_version", "config is at version %lld",
				   (long long)c->cfg->config_version);
	if (!(set_text = cJSON_PrintUnformatted(set)))
		return fleet__fail(err, "failed", "", "out of memory");
	sbuf__init(&text);
	sbuf__init(&changed);
	if (config__propose(c->cfg, set_text, strlen(set_text), platform__wall_ms(), &next, &text, &changed, &cls) != SCRM_OK) {
		/* "sync.window: must be between 1 and 64, got 100 (remote config)" */
		const char *m = scrm_errmsg();
		const char *colon = strchr(m, ':');
		char field[64] = "args.set";
		if (colon && (size_t)(colon - m) < sizeof(field) - 10)
			snprintf(field, sizeof(field), "args.set.%.*s", (int)(colon - m), m);
		fleet__fail(err, "bad_args", field, "%s", m);
		goto out;
	}
	if (cls < 0) {
		/* Nothing changes: no new version. */
		sbuf__puts(res, "{\"version\":");
		sbuf__i64(res, c->cfg->config_version);
		sbuf__puts(res, ",\"changed\":[],\"applies\":\"none\"}");
		config__free(&next);
		rc = 0;
		goto out;
	}
	if (config__write_overlay(c->cfg, text.p) != SCRM_OK) {
		fleet__fail(err, "failed", "", "%s; nothing changed", scrm_errmsg());
		config__free(&next);
		goto out;
	}
	int64_t version = next.config_version;
	static const char *const applies[] = {"live", "reconnect", "restart"};
	sbuf__puts(res, "{\"version\":");
	sbuf__i64(res, version);
	sbuf__puts(res, ",\"changed\":");
	sbuf__puts(res, changed.p);
	sbuf__puts(res, ",\"applies\":");
	sbuf__jstr(res, applies[cls]);
	if (next.overlay_previous) {
		sbuf__puts(res, ",\"probation_s\":");
		sbuf__i64(res, next.probation_s);
	}
	sbuf__puts(res, "}");
	LOG(LOG_INFO, "fleet", "remote config applied", "version=%lld changed=%s applies=%s", (long long)version,
	    changed.p, applies[cls]);
	int reconnect = config__needs_reconnect(c->cfg, &next);
	if (strstr(changed.p, "\"log.level\""))
		*c->cmd_level = -1;
	c->apply_config(c->d, &next, cls, "config.set");
	/* A broker change (also one mixed with restart-class keys) starts a
	 * probation; a later change made during one keeps its deadline. */
	if (reconnect)
		*c->probation_ms = platform__mono_ms() + c->cfg->probation_s * 1000;
	rc = 0;
out:
	cJSON_free(set_text);
	sbuf__free(&text);
	sbuf__free(&changed);
	return rc;
}

int cmd__config_get(cmd__ctx *c, const fleet__cmd *cmd, sbuf *res, fleet__error *err)
{
	const char *key = NULL;
	int cls, remote;
	if (fleet__arg_str(cmd, "key", 0, 64, &key, err))
		return -1;
	if (key && config__key_info(key, &cls, &remote) != 0)
		return fleet__fail(err, "bad_args", "args.key", "'%s' is not a config key", key);
	sbuf all;
	cJSON *o = NULL;
	sbuf__init(&all);
	config__to_json(c->cfg, &all);
	sbuf__puts(res, "{\"version\":");
	sbuf__i64(res, c->cfg->config_version);
	if (key && !all.oom && (o = cJSON_Parse(all.p))) {
		char *v = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(o, key));
		static const char *const applies[] = {"live", "reconnect", "restart"};
		sbuf__puts(res, ",\"key\":");
		sbuf__jstr(res, key);
		sbuf__puts(res, ",\"value\":");
		sbuf__puts(res, v ? v : "null");
		sbuf__puts(res, ",\"remote\":");
		sbuf__puts(res, remote ? "true" : "false");
		sbuf__puts(res, ",\"applies\":");
		sbuf__jstr(res, applies[cls]);
		cJSON_free(v);
	} else {
		sbuf__puts(res, ",\"config\":");
		sbuf__put(res, all.p ? all.p : "{}", all.p ? all.len : 2);
	}
	sbuf__puts(res, ",\"overlay\":");
	sbuf__puts(res, c->cfg->overlay_set ? c->cfg->overlay_set : "{}");
	sbuf__puts(res, ",\"probation\":");
	sbuf__puts(res, c->cfg->overlay_previous ? "true" : "false");
	if (c->cfg->overlay_error) {
		sbuf__puts(res, ",\"overlay_error\":");
		sbuf__jstr(res, c->cfg->overlay_error);
	}
	sbuf__puts(res, "}");
	cJSON_Delete(o);
	sbuf__free(&all);
	return 0;
}
