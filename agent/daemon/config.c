/* SPDX-License-Identifier: Apache-2.0 */
/*
 * config: table-driven JSON configuration (see config.h). Keys are dotted
 * paths into nested objects ("broker.uri" is {"broker":{"uri":...}}).
 */
#include "config_int.h"
#include "topics.h"
#include "uri.h"

#include "err.h"
#include "ident.h"
#include "json.h"
#include "paths.h"
#include "platform.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>


/* Every key: its type, where it lands, default, bounds, how a change takes
 * effect (config.h, enum config__class), whether central may set it with
 * config.set, and one line of doc. File paths, identities and the switches
 * that protect the device (plaintext, command signing) are LOCAL, for the
 * store's operator only: a compromised central account must not be able to
 * point the agent at another CA, turn TLS off or stop obeying only signed
 * commands. So are broker.remote_hosts (a console credential alone must not
 * be able to move the device to any broker the CA happens to sign) and the
 * outbox's bounds (they decide when a sale is refused). */
#define REMOTE 1
#define LOCAL 0
#define S(k, f, d, req, cls, remote, doc) {k, C_STR, offsetof(config, f), d, 0, 0, 0, req, cls, remote, doc}
#define I(k, f, d, lo, hi, cls, remote, doc) {k, C_INT, offsetof(config, f), NULL, d, lo, hi, 0, cls, remote, doc}
#define B(k, f, d, cls, remote, doc) {k, C_BOOL, offsetof(config, f), NULL, d, 0, 1, 0, cls, remote, doc}

const struct ckey config__keys[] = {
	S("tenant", tenant, NULL, 1, CFG_RESTART, LOCAL, "Tenant (brand) id, [A-Za-z0-9_.-]{1,64}, not up or down"),
	S("store_id", store_id, NULL, 1, CFG_RESTART, LOCAL, "Store id, [A-Za-z0-9_.-]{1,64}, not up or down"),
	S("device_id", device_id, NULL, 1, CFG_RESTART, LOCAL, "This device's id (same rule), unique in the tenant; also the MQTT client id"),
	S("store_dir", store_dir, "/var/lib/scrm", 0, CFG_RESTART, LOCAL, "Directory holding outbox.db (shared with the POS via libscrm)"),
	S("broker.uri", broker_uri, NULL, 1, CFG_RECONNECT, REMOTE, "mqtts://host:port (TLS) or mqtt://host:port (plaintext, needs broker.allow_plaintext)"),
	S("broker.ca_file", ca_file, NULL, 0, CFG_RECONNECT, LOCAL, "CA certificate(s) that sign the broker's certificate (PEM); required for TLS"),
	S("broker.cert_file", cert_file, NULL, 0, CFG_RECONNECT, LOCAL, "Client certificate for mutual TLS (PEM)"),
	S("broker.key_file", key_file, NULL, 0, CFG_RECONNECT, LOCAL, "Client private key for mutual TLS (PEM)"),
	S("broker.crl_file", crl_file, NULL, 0, CFG_RECONNECT, LOCAL, "CRL(s) of the broker's CA (PEM): a revoked broker certificate is refused; read at every connect; an unreadable or expired CRL refuses every broker (fail closed)"),
	S("broker.username", username, NULL, 0, CFG_RECONNECT, LOCAL, "MQTT user name"),
	S("broker.password_file", password_file, NULL, 0, CFG_RECONNECT, LOCAL, "File holding the MQTT password (kept out of the config)"),
	B("broker.allow_plaintext", allow_plaintext, 0, CFG_RECONNECT, LOCAL, "Permit an unencrypted mqtt:// URI (logs a warning at every start)"),
	I("broker.keepalive_s", keepalive_s, 30, 5, 3600, CFG_RECONNECT, REMOTE, "MQTT keep-alive, seconds"),
	I("broker.session_expiry_s", session_expiry_s, 604800, 0, 4294967295LL, CFG_RECONNECT, REMOTE, "MQTT 5 session expiry: how long the broker queues acks while offline"),
	I("broker.connect_timeout_s", connect_timeout_s, 10, 1, 300, CFG_RECONNECT, REMOTE, "Give up a connection attempt after this many seconds"),
	S("broker.remote_hosts", remote_hosts, NULL, 0, CFG_LIVE, LOCAL, "Brokers central may move this device to with config.set broker.uri: host or host:port, comma-separated (local only; empty = broker.uri cannot be changed remotely)"),
	I("sync.batch_max_events", batch_max_events, 500, 1, 10000, CFG_LIVE, REMOTE, "Events per MQTT message at most"),
	I("sync.batch_max_bytes", batch_max_bytes, 262144, 4096, 16777216, CFG_LIVE, REMOTE, "Bytes per MQTT message at most (one event may exceed it alone)"),
	I("sync.window", window, 8, 1, 64, CFG_LIVE, REMOTE, "Batches published but not yet acknowledged by central, at most (also capped by the broker's Receive Maximum)"),
	I("sync.ack_timeout_ms", ack_timeout_ms, 30000, 500, 3600000, CFG_LIVE, REMOTE, "Redeliver from the oldest unacknowledged event after this long without an ack"),
	I("sync.backoff_min_ms", backoff_min_ms, 500, 10, 600000, CFG_LIVE, REMOTE, "First reconnect delay ceiling; doubles per failure (full jitter)"),
	I("sync.backoff_max_ms", backoff_max_ms, 60000, 100, 3600000, CFG_LIVE, REMOTE, "Reconnect delay ceiling cap"),
	I("sync.verdict_query_s", verdict_query_s, 900, 10, 86400, CFG_LIVE, REMOTE, "Ask central again for coupon verdicts still missing (redemptions central has acknowledged) every this many seconds"),
	B("cache.enabled", cache_enabled, 1, CFG_RESTART, REMOTE, "Keep the offline customer cache (cache.db) in sync with central"),
	S("cache.keys_dir", keys_dir, NULL, 0, CFG_RESTART, LOCAL, "Directory of data.key (made on first start), tenant.key and central.pub; default <store_dir>/private/keys (must belong to the agent's user, no group/other write)"),
	S("cache.phone_country_code", phone_cc, "", 0, CFG_LIVE, REMOTE, "Country calling code replacing a local number's leading 0 (e.g. 44); empty = none"),
	I("cache.max_message_bytes", cache_max_message_bytes, 4194304, 65536, 67108864, CFG_RESTART, REMOTE, "Largest cache delta or snapshot chunk accepted; larger ones are refused"),
	I("cache.snapshot_timeout_ms", snapshot_timeout_ms, 30000, 1000, 600000, CFG_RESTART, REMOTE, "Ask again when a requested snapshot stops arriving for this long (doubles up to 10 min)"),
	I("cache.activity_days", activity_days, 90, 1, 3650, CFG_LIVE, REMOTE, "Keep this device's record of members' purchases this many days"),
	I("outbox.max_bytes", outbox_max_bytes, 268435456, 16384, 1099511627776LL, CFG_LIVE, LOCAL, "Cap on the pending events' stored size (body + 128 B each); scans and browsing events are evicted oldest first to stay under it, purchases, returns and redemptions never"),
	I("outbox.disk_reserve_bytes", disk_reserve_bytes, 4194304, 0, 1073741824, CFG_LIVE, LOCAL, "Disk space kept allocated beside the outbox (outbox.reserve) and released when the disk fills, so central's acks can still delete what was sent; while it is released only purchases, returns and redemptions are recorded (0 = none)"),
	I("outbox.reserve_bytes", outbox_reserve_bytes, -1, -1, 549755813888LL, CFG_LIVE, LOCAL, "The last bytes under outbox.max_bytes, kept for purchases, returns and redemptions; -1 = max_bytes/8, at most 8 MiB; must be < outbox.max_bytes"),
	I("guide.just_bought_days", just_bought_days, 14, 0, 3650, CFG_LIVE, REMOTE, "Do not suggest what the member bought this recently (0 = never filter)"),
	I("guide.history_days", history_days, 365, 1, 3650, CFG_LIVE, REMOTE, "Purchases this recent feed the member's suggestions"),
	I("guide.history_half_life_days", half_life_days, 30, 1, 3650, CFG_LIVE, REMOTE, "A purchase this old counts half as much in suggestions"),
	I("guide.attribution_window_ms", attribution_window_ms, 7200000, 0, 604800000, CFG_LIVE, REMOTE, "A member's purchase within this long after a recommendation is credited to its guide (0 = off)"),
	I("guide.online_fresh_ms", online_fresh_ms, 90000, 60000, 3600000, CFG_LIVE, REMOTE, "Central counts as reachable (online-only coupons allowed) if the daemon was connected this recently"),
	I("lifecycle.new_days", new_days, 30, 1, 3650, CFG_LIVE, REMOTE, "A member whose first purchase is this recent (or who never bought) is new"),
	I("lifecycle.sleeping_days", sleeping_days, 90, 1, 3650, CFG_LIVE, REMOTE, "No purchase for this long: sleeping"),
	I("lifecycle.lost_days", lost_days, 365, 1, 36500, CFG_LIVE, REMOTE, "No purchase for this long: lost"),
	I("lifecycle.churn_factor_pct", churn_factor_pct, 250, 100, 10000, CFG_LIVE, REMOTE, "Churn risk when the days since the last purchase exceed this % of the member's usual gap between purchases"),
	I("fleet.heartbeat_s", heartbeat_s, 60, 5, 86400, CFG_LIVE, REMOTE, "Publish the health heartbeat (retained up/health) every this many seconds"),
	B("fleet.commands", commands_enabled, 1, CFG_RESTART, LOCAL, "Accept fleet commands from central on down/cmd"),
	S("fleet.command_key_file", command_key_file, NULL, 0, CFG_RESTART, LOCAL, "Central's command-signing public key (PEM, EC P-256); when set, only signed commands are obeyed"),
	I("fleet.probation_s", probation_s, 120, 30, 3600, CFG_LIVE, REMOTE, "After central changes broker settings, roll back if not connected within this many seconds"),
	S("log.level", log_level, "info", 0, CFG_LIVE, REMOTE, "error, warn, info or debug"),
	B("log.syslog", log_syslog, 0, CFG_LIVE, REMOTE, "Also send log lines to syslog (facility daemon)"),
	S("log.file", log_file, NULL, 0, CFG_RESTART, LOCAL, "Also append log lines to this file, rotated to <file>.1 at log.file_max_bytes"),
	I("log.file_max_bytes", log_file_max_bytes, 10485760, 65536, 1073741824, CFG_LIVE, REMOTE, "Size at which log.file is rotated (one old file is kept)"),
};
#define NKEYS (sizeof(config__keys) / sizeof(config__keys[0]))
const size_t config__n_keys = NKEYS;

static const char *const sections[] = {"broker", "sync", "cache", "guide", "lifecycle", "log", "outbox", "fleet"};

/* Line of a key in the text: each part of the dotted path is searched
 * after the previous one, so "broker.window" points at the "window" inside
 * "broker", not at another section's "window". An approximation (cJSON keeps
 * no positions), right for every config written as one key per line. */
static int line_of(const char *text, size_t len, const char *path)
{
	char needle[80];
	size_t from = 0, at = 0;
	const char *part = path;
	while (*part) {
		const char *dot = strchr(part, '.');
		size_t plen = dot ? (size_t)(dot - part) : strlen(part);
		int n = snprintf(needle, sizeof(needle), "\"%.*s\"", (int)plen, part);
		if (n <= 0 || (size_t)n >= sizeof(needle))
			return 0;
		size_t i;
		for (i = from; i + (size_t)n <= len; i++)
			if (memcmp(text + i, needle, (size_t)n) == 0)
				break;
		if (i + (size_t)n > len)
			return 0;
		at = i;
		from = i + (size_t)n;
		part = dot ? dot + 1 : part + plen;
	}
	int line = 1;
	for (size_t i = 0; i < at; i++)
		if (text[i] == '\n')
			line++;
	return line;
}

int config__id_ok(const char *s)
{
	return ident__ok(s);
}

static int set_key(const struct ckey *k, const cJSON *v, config *cfg, const char *text, size_t len)
{
	int line = text ? line_of(text, len, k->key) : 0;
	char at[32];
	if (line > 0)
		snprintf(at, sizeof(at), "line %d", line);
	else
		snprintf(at, sizeof(at), "remote config");
	char *base = (char *)cfg;
	switch (k->type) {
	case C_STR: {
		if (!cJSON_IsString(v))
			return err__set(SCRM_E_CONFIG, "%s: must be a string (%s)", k->key, at);
		char **dst = (char **)(void *)(base + k->off);
		free(*dst);
		if (!(*dst = strdup(v->valuestring)))
			return err__set(SCRM_E_NOMEM, "out of memory");
		return SCRM_OK;
	}
	case C_INT: {
		if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
			return err__set(SCRM_E_CONFIG, "%s: must be an integer (%s)", k->key, at);
		double d = v->valuedouble;
		if (d < (double)k->min || d > (double)k->max)
			return err__set(SCRM_E_CONFIG, "%s: must be between %lld and %lld, got %.0f (%s)", k->key,
					(long long)k->min, (long long)k->max, d, at);
		*(int64_t *)(void *)(base + k->off) = (int64_t)d;
		return SCRM_OK;
	}
	case C_BOOL:
		if (!cJSON_IsBool(v))
			return err__set(SCRM_E_CONFIG, "%s: must be true or false (%s)", k->key, at);
		*(int *)(void *)(base + k->off) = cJSON_IsTrue(v);
		return SCRM_OK;
	}
	return SCRM_E_INTERNAL;
}

static int walk(const cJSON *obj, const char *prefix, config *cfg, const char *text, size_t len)
{
	for (const cJSON *it = obj->child; it; it = it->next) {
		char path[128];
		snprintf(path, sizeof(path), "%s%s%s", prefix, *prefix ? "." : "", it->string ? it->string : "");
		if (!*prefix) {
			int is_section = 0;
			for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]); i++)
				if (strcmp(path, sections[i]) == 0)
					is_section = 1;
			if (is_section) {
				if (!cJSON_IsObject(it))
					return err__set(SCRM_E_CONFIG, "%s: must be an object (line %d)", path, text ? line_of(text, len, path) : 0);
				int rc = walk(it, path, cfg, text, len);
				if (rc)
					return rc;
				continue;
			}
		}
		const struct ckey *k = NULL;
		for (size_t i = 0; i < NKEYS; i++)
			if (strcmp(config__keys[i].key, path) == 0)
				k = &config__keys[i];
		if (!k)
			return err__set(SCRM_E_CONFIG, "%s: unknown key (line %d); see scrm-agent --help-config",
					path, text ? line_of(text, len, path) : 0);
		int rc = set_key(k, it, cfg, text, len);
		if (rc)
			return rc;
	}
	return SCRM_OK;
}

static int is_set(const struct ckey *k, const config *cfg)
{
	return *(char *const *)(const void *)((const char *)cfg + k->off) != NULL;
}

int config__normalise_uri(const char *uri, char **out, int *plaintext)
{
	const char *scheme = NULL;
	switch (uri__paho(uri, out, plaintext, &scheme)) {
	case URI_OK:
		return SCRM_OK;
	case URI_NOMEM:
		return err__set(SCRM_E_NOMEM, "out of memory");
	case URI_NO_HOST:
		return err__set(SCRM_E_CONFIG, "broker.uri: no host after %s", scheme);
	default:
		return err__set(SCRM_E_CONFIG,
				"broker.uri: must start with mqtts:// (or mqtt:// with broker.allow_plaintext), got \"%.80s\"", uri);
	}
}

/* Checks that span keys, once everything is read. */
static int cross_check(config *cfg)
{
	const struct {
		const char *key, *value;
	} ids[] = {{"tenant", cfg->tenant}, {"store_id", cfg->store_id}, {"device_id", cfg->device_id}};
	for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
		const char *why = ident__problem(ids[i].value);
		if (why)
			return err__set(SCRM_E_CONFIG, "%s: %s", ids[i].key, why);
	}
	char *norm = NULL;
	int rc = config__normalise_uri(cfg->broker_uri, &norm, &cfg->plaintext);
	if (rc)
		return rc;
	free(cfg->broker_uri);
	cfg->broker_uri = norm;
	if (cfg->plaintext && !cfg->allow_plaintext)
		return err__set(SCRM_E_CONFIG, "broker.uri: plaintext mqtt:// refused; use mqtts://, or set broker.allow_plaintext to true to accept an unencrypted link");
	if (!cfg->plaintext && !cfg->ca_file)
		return err__set(SCRM_E_CONFIG, "broker.ca_file: required with TLS (the CA that signs the broker's certificate)");
	if (cfg->plaintext && cfg->crl_file)
		return err__set(SCRM_E_CONFIG, "broker.crl_file: only applies to mqtts:// (TLS)");
	if (!!cfg->cert_file != !!cfg->key_file)
		return err__set(SCRM_E_CONFIG, "%s: broker.cert_file and broker.key_file go together", cfg->cert_file ? "broker.key_file" : "broker.cert_file");
	if (cfg->outbox_reserve_bytes >= cfg->outbox_max_bytes)
		return err__set(SCRM_E_CONFIG, "outbox.reserve_bytes: must be less than outbox.max_bytes (%lld), got %lld",
				(long long)cfg->outbox_max_bytes, (long long)cfg->outbox_reserve_bytes);
	if (cfg->backoff_max_ms < cfg->backoff_min_ms)
		return err__set(SCRM_E_CONFIG, "sync.backoff_max_ms: must be >= sync.backoff_min_ms");
	if (cfg->log_level && strcmp(cfg->log_level, "error") && strcmp(cfg->log_level, "warn") &&
	    strcmp(cfg->log_level, "info") && strcmp(cfg->log_level, "debug"))
		return err__set(SCRM_E_CONFIG, "log.level: must be error, warn, info or debug");
	if (topics__device_prefix(cfg->topic_prefix, sizeof(cfg->topic_prefix), cfg->tenant, cfg->store_id,
				  cfg->device_id) != 0)
		return err__set(SCRM_E_CONFIG, "topic prefix too long");
	topics__store_prefix(cfg->store_prefix, sizeof(cfg->store_prefix), cfg->tenant, cfg->store_id);
	if (cfg->phone_cc) {
		size_t k = strlen(cfg->phone_cc);
		int ok = k <= 4;
		for (size_t i = 0; ok && i < k; i++)
			ok = cfg->phone_cc[i] >= '0' && cfg->phone_cc[i] <= '9';
		if (!ok)
			return err__set(SCRM_E_CONFIG, "cache.phone_country_code: must be 1..4 digits (e.g. 44) or empty");
	}
	return SCRM_OK;
}

/* Defaults, then `root` over them, then the checks. text/len: the file the
 * tree came from, for line numbers (NULL for a merged tree). */
int config__apply_root(const cJSON *root, const char *text, size_t len, config *cfg)
{
	int rc;
	memset(cfg, 0, sizeof(*cfg));
	for (size_t i = 0; i < NKEYS; i++) {
		const struct ckey *k = &config__keys[i];
		char *base = (char *)cfg;
		if (k->type == C_STR && k->dflt_str) {
			if (!(*(char **)(void *)(base + k->off) = strdup(k->dflt_str))) {
				rc = err__set(SCRM_E_NOMEM, "out of memory");
				goto cleanup;
			}
		} else if (k->type == C_INT) {
			*(int64_t *)(void *)(base + k->off) = k->dflt;
		} else if (k->type == C_BOOL) {
			*(int *)(void *)(base + k->off) = (int)k->dflt;
		}
	}
	if (!cJSON_IsObject(root)) {
		rc = err__set(SCRM_E_CONFIG, "config: the top level must be a JSON object");
		goto cleanup;
	}
	if ((rc = walk(root, "", cfg, text, len)))
		goto cleanup;
	for (size_t i = 0; i < NKEYS; i++)
		if (config__keys[i].required && !is_set(&config__keys[i], cfg)) {
			rc = err__set(SCRM_E_CONFIG, "%s: required (%s)", config__keys[i].key, config__keys[i].doc);
			goto cleanup;
		}
	rc = cross_check(cfg);
cleanup:
	if (rc)
		config__free(cfg);
	return rc;
}

/* Strict (json.h): a key written twice is refused, not resolved. With
 * cJSON alone the config kept the last "allow_plaintext" and scrmctl the
 * first "kind" — two readers of one file must never disagree. Syntax errors
 * give the line and column. */
int config__parse_text(const char *text, size_t len, cJSON **root)
{
	int rc = json__parse(text, len, "config", root);
	return rc == SCRM_E_INVALID ? SCRM_E_CONFIG : rc;
}

int config__parse(const char *text, size_t len, config *cfg)
{
	cJSON *root = NULL;
	memset(cfg, 0, sizeof(*cfg));
	int rc = config__parse_text(text, len, &root);
	if (rc)
		return rc;
	rc = config__apply_root(root, text, len, cfg);
	cJSON_Delete(root);
	return rc;
}

int config__load(const char *path, config *cfg)
{
	char *text = NULL;
	size_t len = 0;
	int rc = platform__read_file(path, 1 << 20, &text, &len);
	memset(cfg, 0, sizeof(*cfg));
	if (rc != 0)
		return err__set(SCRM_E_CONFIG, "config: cannot read %s: %s", path, strerror(-rc));
	rc = config__parse(text, len, cfg);
	free(text);
	return rc;
}

void config__free(config *cfg)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (config__keys[i].type == C_STR) {
			char **p = (char **)(void *)((char *)cfg + config__keys[i].off);
			free(*p);
			*p = NULL;
		}
	free(cfg->path);
	free(cfg->overlay_set);
	free(cfg->overlay_previous);
	free(cfg->overlay_error);
	cfg->path = cfg->overlay_set = cfg->overlay_previous = cfg->overlay_error = NULL;
}

void config__print_keys(void)
{
	printf("%-26s %-6s %-16s %s\n", "key", "type", "default", "meaning");
	for (size_t i = 0; i < NKEYS; i++) {
		const struct ckey *k = &config__keys[i];
		char d[32];
		if (k->type == C_STR)
			snprintf(d, sizeof(d), "%s", k->required ? "(required)" : k->dflt_str ? k->dflt_str : "-");
		else if (k->type == C_BOOL)
			snprintf(d, sizeof(d), "%s", k->dflt ? "true" : "false");
		else
			snprintf(d, sizeof(d), "%lld", (long long)k->dflt);
		printf("%-26s %-6s %-16s %s\n", k->key, k->type == C_STR ? "string" : k->type == C_INT ? "int" : "bool", d, k->doc);
	}
}

