/* SPDX-License-Identifier: Apache-2.0 */
/*
 * config: table-driven JSON configuration (see config.h). Keys are dotted
 * paths into nested objects ("broker.uri" is {"broker":{"uri":...}}).
 */
#include "config.h"
#include "topics.h"

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

enum ctype { C_STR, C_INT, C_BOOL };

struct ckey {
	const char *key;
	enum ctype type;
	size_t off;
	const char *dflt_str; /* C_STR default, NULL = none */
	int64_t dflt, min, max;
	int required;
	const char *doc;
};

#define S(k, f, d, req, doc) {k, C_STR, offsetof(config, f), d, 0, 0, 0, req, doc}
#define I(k, f, d, lo, hi, doc) {k, C_INT, offsetof(config, f), NULL, d, lo, hi, 0, doc}
#define B(k, f, d, doc) {k, C_BOOL, offsetof(config, f), NULL, d, 0, 1, 0, doc}

static const struct ckey keys[] = {
	S("tenant", tenant, NULL, 1, "Tenant (brand) id, [A-Za-z0-9_.-]{1,64}, not up or down"),
	S("store_id", store_id, NULL, 1, "Store id, [A-Za-z0-9_.-]{1,64}, not up or down"),
	S("device_id", device_id, NULL, 1, "This device's id (same rule), unique in the tenant; also the MQTT client id"),
	S("store_dir", store_dir, "/var/lib/scrm", 0, "Directory holding outbox.db (shared with the POS via libscrm)"),
	S("broker.uri", broker_uri, NULL, 1, "mqtts://host:port (TLS) or mqtt://host:port (plaintext, needs broker.allow_plaintext)"),
	S("broker.ca_file", ca_file, NULL, 0, "CA certificate(s) that sign the broker's certificate (PEM); required for TLS"),
	S("broker.cert_file", cert_file, NULL, 0, "Client certificate for mutual TLS (PEM)"),
	S("broker.key_file", key_file, NULL, 0, "Client private key for mutual TLS (PEM)"),
	S("broker.crl_file", crl_file, NULL, 0, "CRL(s) of the broker's CA (PEM): a revoked broker certificate is refused; read at every connect; an unreadable or expired CRL refuses every broker (fail closed)"),
	S("broker.username", username, NULL, 0, "MQTT user name"),
	S("broker.password_file", password_file, NULL, 0, "File holding the MQTT password (kept out of the config)"),
	B("broker.allow_plaintext", allow_plaintext, 0, "Permit an unencrypted mqtt:// URI (logs a warning at every start)"),
	I("broker.keepalive_s", keepalive_s, 30, 5, 3600, "MQTT keep-alive, seconds"),
	I("broker.session_expiry_s", session_expiry_s, 604800, 0, 4294967295LL, "MQTT 5 session expiry: how long the broker queues acks while offline"),
	I("broker.connect_timeout_s", connect_timeout_s, 10, 1, 300, "Give up a connection attempt after this many seconds"),
	S("broker.remote_hosts", remote_hosts, NULL, 0, "Brokers central may move this device to with config.set broker.uri: host or host:port, comma-separated (local only; empty = broker.uri cannot be changed remotely)"),
	I("sync.batch_max_events", batch_max_events, 500, 1, 10000, "Events per MQTT message at most"),
	I("sync.batch_max_bytes", batch_max_bytes, 262144, 4096, 16777216, "Bytes per MQTT message at most (one event may exceed it alone)"),
	I("sync.window", window, 8, 1, 64, "Batches published but not yet acknowledged by central, at most (also capped by the broker's Receive Maximum)"),
	I("sync.ack_timeout_ms", ack_timeout_ms, 30000, 500, 3600000, "Redeliver from the oldest unacknowledged event after this long without an ack"),
	I("sync.backoff_min_ms", backoff_min_ms, 500, 10, 600000, "First reconnect delay ceiling; doubles per failure (full jitter)"),
	I("sync.backoff_max_ms", backoff_max_ms, 60000, 100, 3600000, "Reconnect delay ceiling cap"),
	I("sync.verdict_query_s", verdict_query_s, 900, 10, 86400, "Ask central again for coupon verdicts still missing (redemptions central has acknowledged) every this many seconds"),
	B("cache.enabled", cache_enabled, 1, "Keep the offline customer cache (cache.db) in sync with central"),
	S("cache.keys_dir", keys_dir, NULL, 0, "Directory of data.key (made on first start), tenant.key and central.pub; default <store_dir>/private/keys (must belong to the agent's user, no group/other write)"),
	S("cache.phone_country_code", phone_cc, "", 0, "Country calling code replacing a local number's leading 0 (e.g. 44); empty = none"),
	I("cache.max_message_bytes", cache_max_message_bytes, 4194304, 65536, 67108864, "Largest cache delta or snapshot chunk accepted; larger ones are refused"),
	I("cache.snapshot_timeout_ms", snapshot_timeout_ms, 30000, 1000, 600000, "Ask again when a requested snapshot stops arriving for this long (doubles up to 10 min)"),
	I("cache.activity_days", activity_days, 90, 1, 3650, "Keep this device's record of members' purchases this many days"),
	I("outbox.max_bytes", outbox_max_bytes, 268435456, 16384, 1099511627776LL, "Cap on the pending events' stored size (body + 128 B each); scans and browsing events are evicted oldest first to stay under it, purchases, returns and redemptions never"),
	I("outbox.disk_reserve_bytes", disk_reserve_bytes, 4194304, 0, 1073741824, "Disk space kept allocated beside the outbox (outbox.reserve) and released when the disk fills, so central's acks can still delete what was sent; while it is released only purchases, returns and redemptions are recorded (0 = none)"),
	I("outbox.reserve_bytes", outbox_reserve_bytes, -1, -1, 549755813888LL, "The last bytes under outbox.max_bytes, kept for purchases, returns and redemptions; -1 = max_bytes/8, at most 8 MiB; must be < outbox.max_bytes"),
	I("guide.just_bought_days", just_bought_days, 14, 0, 3650, "Do not suggest what the member bought this recently (0 = never filter)"),
	I("guide.history_days", history_days, 365, 1, 3650, "Purchases this recent feed the member's suggestions"),
	I("guide.history_half_life_days", half_life_days, 30, 1, 3650, "A purchase this old counts half as much in suggestions"),
	I("guide.attribution_window_ms", attribution_window_ms, 7200000, 0, 604800000, "A member's purchase within this long after a recommendation is credited to its guide (0 = off)"),
	I("guide.online_fresh_ms", online_fresh_ms, 90000, 60000, 3600000, "Central counts as reachable (online-only coupons allowed) if the daemon was connected this recently"),
	I("lifecycle.new_days", new_days, 30, 1, 3650, "A member whose first purchase is this recent (or who never bought) is new"),
	I("lifecycle.sleeping_days", sleeping_days, 90, 1, 3650, "No purchase for this long: sleeping"),
	I("lifecycle.lost_days", lost_days, 365, 1, 36500, "No purchase for this long: lost"),
	I("lifecycle.churn_factor_pct", churn_factor_pct, 250, 100, 10000, "Churn risk when the days since the last purchase exceed this % of the member's usual gap between purchases"),
	I("fleet.heartbeat_s", heartbeat_s, 60, 5, 86400, "Publish the health heartbeat (retained up/health) every this many seconds"),
	B("fleet.commands", commands_enabled, 1, "Accept fleet commands from central on down/cmd"),
	S("fleet.command_key_file", command_key_file, NULL, 0, "Central's command-signing public key (PEM, EC P-256); when set, only signed commands are obeyed"),
	I("fleet.probation_s", probation_s, 120, 30, 3600, "After central changes broker settings, roll back if not connected within this many seconds"),
	S("log.level", log_level, "info", 0, "error, warn, info or debug"),
	B("log.syslog", log_syslog, 0, "Also send log lines to syslog (facility daemon)"),
	S("log.file", log_file, NULL, 0, "Also append log lines to this file, rotated to <file>.1 at log.file_max_bytes"),
	I("log.file_max_bytes", log_file_max_bytes, 10485760, 65536, 1073741824, "Size at which log.file is rotated (one old file is kept)"),
};
#define NKEYS (sizeof(keys) / sizeof(keys[0]))

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
			if (strcmp(keys[i].key, path) == 0)
				k = &keys[i];
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
	static const struct { const char *from, *to; int plain; } schemes[] = {
		{"mqtts://", "ssl://", 0}, {"ssl://", "ssl://", 0}, {"mqtt://", "tcp://", 1}, {"tcp://", "tcp://", 1},
	};
	*out = NULL;
	for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
		size_t n = strlen(schemes[i].from);
		if (strncmp(uri, schemes[i].from, n) != 0)
			continue;
		if (!uri[n])
			return err__set(SCRM_E_CONFIG, "broker.uri: no host after %s", schemes[i].from);
		size_t need = strlen(schemes[i].to) + strlen(uri + n) + 1;
		if (!(*out = malloc(need)))
			return err__set(SCRM_E_NOMEM, "out of memory");
		snprintf(*out, need, "%s%s", schemes[i].to, uri + n);
		*plaintext = schemes[i].plain;
		return SCRM_OK;
	}
	return err__set(SCRM_E_CONFIG, "broker.uri: must start with mqtts:// (or mqtt:// with broker.allow_plaintext), got \"%.80s\"", uri);
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
static int apply_root(const cJSON *root, const char *text, size_t len, config *cfg)
{
	int rc;
	memset(cfg, 0, sizeof(*cfg));
	for (size_t i = 0; i < NKEYS; i++) {
		const struct ckey *k = &keys[i];
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
		if (keys[i].required && !is_set(&keys[i], cfg)) {
			rc = err__set(SCRM_E_CONFIG, "%s: required (%s)", keys[i].key, keys[i].doc);
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
static int parse_text(const char *text, size_t len, cJSON **root)
{
	int rc = json__parse(text, len, "config", root);
	return rc == SCRM_E_INVALID ? SCRM_E_CONFIG : rc;
}

int config__parse(const char *text, size_t len, config *cfg)
{
	cJSON *root = NULL;
	memset(cfg, 0, sizeof(*cfg));
	int rc = parse_text(text, len, &root);
	if (rc)
		return rc;
	rc = apply_root(root, text, len, cfg);
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
		if (keys[i].type == C_STR) {
			char **p = (char **)(void *)((char *)cfg + keys[i].off);
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
		const struct ckey *k = &keys[i];
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

/* ---- remote configuration (config.h) ---------------------------------- */

#define OVERLAY_FILE "config.remote.json"
#define OVERLAY_MAX_KEYS 64

/* How each key takes effect and whether central may set it. Exact keys
 * first, then section prefixes; anything else is live and settable. File
 * paths, identities and the switches that protect the device (plaintext,
 * command signing) are for the local operator only: a compromised central
 * account must not be able to point the agent at another CA, turn TLS off
 * or stop obeying only signed commands. */
static const struct {
	const char *key;
	int cls, remote;
} key_rules[] = {
	{"tenant", CFG_RESTART, 0},
	{"store_id", CFG_RESTART, 0},
	{"device_id", CFG_RESTART, 0},
	{"store_dir", CFG_RESTART, 0},
	{"broker.ca_file", CFG_RECONNECT, 0},
	{"broker.cert_file", CFG_RECONNECT, 0},
	{"broker.key_file", CFG_RECONNECT, 0},
	{"broker.crl_file", CFG_RECONNECT, 0},
	{"broker.username", CFG_RECONNECT, 0},
	{"broker.password_file", CFG_RECONNECT, 0},
	{"broker.allow_plaintext", CFG_RECONNECT, 0},
	/* Where central may send the device: a console credential alone must
	 * not be able to move it to any broker the CA happens to sign. */
	{"broker.remote_hosts", CFG_LIVE, 0},
	{"broker.", CFG_RECONNECT, 1},
	{"cache.enabled", CFG_RESTART, 1},
	{"cache.keys_dir", CFG_RESTART, 0},
	{"cache.max_message_bytes", CFG_RESTART, 1},
	{"cache.snapshot_timeout_ms", CFG_RESTART, 1},
	{"fleet.commands", CFG_RESTART, 0},
	{"fleet.command_key_file", CFG_RESTART, 0},
	{"log.file", CFG_RESTART, 0},
	/* The outbox cap decides when a sale is refused: the store's own
	 * operator sets it, never a remote command. */
	{"outbox.", CFG_LIVE, 0},
};

static const struct ckey *find_key(const char *key)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (strcmp(keys[i].key, key) == 0)
			return &keys[i];
	return NULL;
}

int config__key_info(const char *key, int *cls, int *remote)
{
	if (!key || !find_key(key))
		return -1;
	*cls = CFG_LIVE;
	*remote = 1;
	for (size_t i = 0; i < sizeof(key_rules) / sizeof(key_rules[0]); i++)
		if (strcmp(key_rules[i].key, key) == 0) {
			*cls = key_rules[i].cls;
			*remote = key_rules[i].remote;
			return 0;
		}
	for (size_t i = 0; i < sizeof(key_rules) / sizeof(key_rules[0]); i++) {
		size_t n = strlen(key_rules[i].key);
		if (key_rules[i].key[n - 1] == '.' && strncmp(key_rules[i].key, key, n) == 0) {
			*cls = key_rules[i].cls;
			*remote = key_rules[i].remote;
			return 0;
		}
	}
	return 0;
}

void config__overlay_path(const config *cfg, char *buf, size_t n)
{
	/* In the agent's private directory (paths.h): central's settings, and
	 * the probation's rollback point, must not be writable by the POS. */
	paths__private(cfg->store_dir, OVERLAY_FILE, buf, n);
}

/* Check one overlay entry: a known key central may set. */
static int check_remote_key(const char *key)
{
	int cls, remote;
	if (!key || config__key_info(key, &cls, &remote) != 0)
		return err__set(SCRM_E_CONFIG, "%s: unknown key; see scrm-agent --help-config", key ? key : "(null)");
	if (!remote)
		return err__set(SCRM_E_CONFIG, "%s: can only be changed in the local config file, not remotely", key);
	return SCRM_OK;
}

/* Put each "section.key" of `set` into the config tree `root`. */
static int merge_set(cJSON *root, const cJSON *set)
{
	for (const cJSON *it = set ? set->child : NULL; it; it = it->next) {
		char section[32];
		const char *dot = strchr(it->string, '.');
		cJSON *obj = root, *dup = cJSON_Duplicate(it, 1);
		const char *name = it->string;
		if (!dup)
			return err__set(SCRM_E_NOMEM, "out of memory");
		if (dot) {
			size_t n = (size_t)(dot - it->string);
			if (n >= sizeof(section)) {
				cJSON_Delete(dup);
				return err__set(SCRM_E_CONFIG, "%s: unknown key", it->string);
			}
			memcpy(section, it->string, n);
			section[n] = '\0';
			name = dot + 1;
			obj = cJSON_GetObjectItemCaseSensitive(root, section);
			if (!obj && !(obj = cJSON_AddObjectToObject(root, section))) {
				cJSON_Delete(dup);
				return err__set(SCRM_E_NOMEM, "out of memory");
			}
			if (!cJSON_IsObject(obj)) {
				cJSON_Delete(dup);
				return err__set(SCRM_E_CONFIG, "%s: must be an object", section);
			}
		}
		cJSON_DeleteItemFromObjectCaseSensitive(obj, name);
		if (!cJSON_AddItemToObject(obj, name, dup)) {
			cJSON_Delete(dup);
			return err__set(SCRM_E_NOMEM, "out of memory");
		}
	}
	return SCRM_OK;
}

/* The local file's tree. */
static cJSON *read_base(const char *path)
{
	char *text = NULL;
	size_t len = 0;
	int e = platform__read_file(path, 1 << 20, &text, &len);
	if (e != 0) {
		err__set(SCRM_E_CONFIG, "config: cannot read %s: %s", path, strerror(-e));
		return NULL;
	}
	cJSON *root = NULL;
	parse_text(text, len, &root);
	free(text);
	return root;
}

/* "host:port" of a normalised URI ("ssl://h:p/..." or "ssl://[v6]:p"):
 * host into `host`, port into `port` ("" if none). */
static void uri_host_port(const char *uri, char *host, size_t hn, char *port, size_t pn)
{
	const char *p = strstr(uri, "://");
	p = p ? p + 3 : uri;
	size_t n = strcspn(p, "/");
	const char *end = p + n, *colon = NULL;
	if (*p == '[') {
		const char *close = memchr(p, ']', n);
		if (!close)
			close = end;
		snprintf(host, hn, "%.*s", (int)(close - p - 1), p + 1);
		colon = close < end && close[1] == ':' ? close + 1 : NULL;
	} else {
		for (const char *c = p; c < end; c++)
			if (*c == ':')
				colon = c;
		snprintf(host, hn, "%.*s", (int)((colon ? colon : end) - p), p);
	}
	snprintf(port, pn, "%.*s", colon ? (int)(end - colon - 1) : 0, colon ? colon + 1 : "");
}

/* Is host:port listed in broker.remote_hosts ("a.example, b.example:8883,
 * [fd00::1]:8883")? An entry without a port allows every port of the host.
 * Host names compare case-insensitively, as DNS does. */
static int remote_host_allowed(const char *list, const char *host, const char *port)
{
	const char *p = list ? list : "";
	for (;;) {
		p += strspn(p, ", \t");
		if (!*p)
			return 0;
		size_t n = strcspn(p, ", \t");
		char entry[300], eh[300], ep[16];
		snprintf(entry, sizeof(entry), "%.*s", (int)n, p);
		p += n;
		const char *colon = strchr(entry, ':');
		if (entry[0] != '[' && colon && strchr(colon + 1, ':')) {
			/* a bare IPv6 address: no port */
			snprintf(eh, sizeof(eh), "%s", entry);
			ep[0] = '\0';
		} else {
			char u[320];
			snprintf(u, sizeof(u), "x://%s", entry);
			uri_host_port(u, eh, sizeof(eh), ep, sizeof(ep));
		}
		if (strcasecmp(eh, host) == 0 && (!ep[0] || strcmp(ep, port) == 0))
			return 1;
	}
}

/* A remote broker.uri must name a host the local operator listed in
 * broker.remote_hosts (or be the local file's own URI): a console
 * credential alone must not move the device to any broker whose
 * certificate chains to the CA, where every event could be read and acked. */
static int check_remote_broker(const config *out, const char *base_uri)
{
	char host[300], port[16];
	if (base_uri && strcmp(base_uri, out->broker_uri) == 0)
		return SCRM_OK;
	uri_host_port(out->broker_uri, host, sizeof(host), port, sizeof(port));
	if (remote_host_allowed(out->remote_hosts, host, port))
		return SCRM_OK;
	if (!out->remote_hosts || !out->remote_hosts[strspn(out->remote_hosts, ", \t")])
		return err__set(SCRM_E_CONFIG, "broker.uri: cannot be changed remotely: broker.remote_hosts is empty "
				"(a local-only list of the brokers central may move this device to)");
	return err__set(SCRM_E_CONFIG, "broker.uri: host %.200s%s%.15s is not in broker.remote_hosts (\"%.200s\", set "
			"in the local config file only)", host, port[0] ? ":" : "", port, out->remote_hosts);
}

/* base tree + set → a validated config carrying the overlay's bookkeeping. */
static int build(const char *path, const cJSON *set, const cJSON *previous, int64_t version, int64_t updated,
		 config *out)
{
	cJSON *root = read_base(path);
	char *base_uri = NULL;
	int rc, plain;
	if (!root)
		return SCRM_E_CONFIG;
	for (const cJSON *it = set ? set->child : NULL; it; it = it->next)
		if ((rc = check_remote_key(it->string))) {
			cJSON_Delete(root);
			return rc;
		}
	const cJSON *bu = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "broker"), "uri");
	if (cJSON_IsString(bu) && config__normalise_uri(bu->valuestring, &base_uri, &plain) != SCRM_OK)
		base_uri = NULL; /* apply_root reports it */
	if ((rc = merge_set(root, set)) || (rc = apply_root(root, NULL, 0, out))) {
		cJSON_Delete(root);
		free(base_uri);
		return rc;
	}
	cJSON_Delete(root);
	rc = cJSON_GetObjectItemCaseSensitive(set, "broker.uri") ? check_remote_broker(out, base_uri) : SCRM_OK;
	free(base_uri);
	if (rc) {
		config__free(out);
		return rc;
	}
	out->path = strdup(path);
	out->config_version = version;
	out->overlay_updated_ms = updated;
	out->overlay_set = set && set->child ? cJSON_PrintUnformatted(set) : NULL;
	out->overlay_previous = previous ? cJSON_PrintUnformatted(previous) : NULL;
	if (!out->path || (set && set->child && !out->overlay_set) || (previous && !out->overlay_previous)) {
		config__free(out);
		return err__set(SCRM_E_NOMEM, "out of memory");
	}
	return SCRM_OK;
}

static int int_field(const cJSON *o, const char *name, int64_t *out)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
	if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > 9007199254740992.0 ||
	    it->valuedouble != floor(it->valuedouble))
		return 0;
	*out = (int64_t)it->valuedouble;
	return 1;
}

int config__load_all(const char *path, config *cfg)
{
	char opath[4200], *otext = NULL;
	size_t olen = 0;
	cJSON *ov = NULL;
	int rc = config__load(path, cfg);
	if (rc)
		return rc;
	if (!(cfg->path = strdup(path))) {
		config__free(cfg);
		return err__set(SCRM_E_NOMEM, "out of memory");
	}
	config__overlay_path(cfg, opath, sizeof(opath));
	char why[700], refused[300];
	int e = platform__read_trusted(opath, 1 << 20, 0, &otext, &olen, refused, sizeof(refused));
	if (e == -ENOENT)
		return SCRM_OK;
	why[0] = '\0';
	if (e == -EPERM || e == -ELOOP || e == -ENOTDIR) {
		snprintf(why, sizeof(why), "%.300s: refused: %s", opath, refused);
	} else if (e != 0) {
		snprintf(why, sizeof(why), "%.300s: cannot read: %s", opath, strerror(-e));
	} else if (json__parse(otext, olen, opath, &ov) != SCRM_OK) {
		snprintf(why, sizeof(why), "%s", scrm_errmsg());
	} else if (!cJSON_IsObject(ov)) {
		snprintf(why, sizeof(why), "%.300s: not a JSON object", opath);
	} else {
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(ov, "v");
		const cJSON *set = cJSON_GetObjectItemCaseSensitive(ov, "set");
		const cJSON *prev = cJSON_GetObjectItemCaseSensitive(ov, "previous");
		int64_t version = 0, updated = 0;
		config next;
		if (!cJSON_IsNumber(v) || v->valuedouble != 1)
			snprintf(why, sizeof(why), "%.300s: v: unknown version", opath);
		else if (!int_field(ov, "version", &version))
			snprintf(why, sizeof(why), "%.300s: version: must be an integer >= 0", opath);
		else if (set && !cJSON_IsObject(set))
			snprintf(why, sizeof(why), "%.300s: set: must be an object", opath);
		else if (prev && !cJSON_IsObject(prev))
			snprintf(why, sizeof(why), "%.300s: previous: must be an object", opath);
		else {
			int_field(ov, "updated_ms", &updated);
			if (build(path, set, prev, version, updated, &next) != SCRM_OK) {
				snprintf(why, sizeof(why), "%.300s (version %lld): %.300s", opath, (long long)version, scrm_errmsg());
				cfg->config_version = version;
			} else {
				config__free(cfg);
				*cfg = next;
				if (prev) {
					/* absent (an overlay written before deadlines
					 * were kept): 0, the daemon sets one at start */
					int_field(ov, "deadline_ms", &cfg->probation_deadline_ms);
					int_field(ov, "starts", &cfg->probation_starts);
				}
			}
		}
	}
	if (why[0] && !(cfg->overlay_error = strdup(why))) {
		rc = err__set(SCRM_E_NOMEM, "out of memory");
		config__free(cfg);
	}
	cJSON_Delete(ov);
	free(otext);
	return rc;
}

/* deadline/starts: of the probation, written only with `previous`. The
 * deadline is wall-clock so that it means the same after a restart. */
static void put_overlay(sbuf *out, int64_t version, int64_t now, const char *set, const char *previous,
			int64_t deadline, int64_t starts)
{
	sbuf__puts(out, "{\"v\":1,\"version\":");
	sbuf__i64(out, version);
	sbuf__puts(out, ",\"updated_ms\":");
	sbuf__i64(out, now);
	sbuf__puts(out, ",\"set\":");
	sbuf__puts(out, set ? set : "{}");
	if (previous) {
		sbuf__puts(out, ",\"probation\":true,\"deadline_ms\":");
		sbuf__i64(out, deadline);
		sbuf__puts(out, ",\"starts\":");
		sbuf__i64(out, starts);
		sbuf__puts(out, ",\"previous\":");
		sbuf__puts(out, previous);
	}
	sbuf__puts(out, "}\n");
}

static int key_differs(const struct ckey *k, const config *a, const config *b)
{
	const char *pa = (const char *)a + k->off, *pb = (const char *)b + k->off;
	if (k->type == C_STR) {
		const char *sa = *(char *const *)(const void *)pa, *sb = *(char *const *)(const void *)pb;
		return !((!sa && !sb) || (sa && sb && strcmp(sa, sb) == 0));
	}
	if (k->type == C_INT)
		return *(const int64_t *)(const void *)pa != *(const int64_t *)(const void *)pb;
	return *(const int *)(const void *)pa != *(const int *)(const void *)pb;
}

int config__needs_reconnect(const config *a, const config *b)
{
	for (size_t i = 0; i < NKEYS; i++) {
		int c = CFG_LIVE, remote;
		config__key_info(keys[i].key, &c, &remote);
		if (c == CFG_RECONNECT && key_differs(&keys[i], a, b))
			return 1;
	}
	return 0;
}

int config__propose(const config *cur, const char *changes, size_t len, int64_t now_ms, config *next,
		    sbuf *overlay_text, sbuf *changed, int *cls)
{
	cJSON *ch = NULL, *set = NULL, *prev = NULL;
	int rc = SCRM_E_CONFIG, n = 0, overlay_changed = 0;
	memset(next, 0, sizeof(*next));
	*cls = -1;
	if ((rc = json__parse(changes, len, "set", &ch)) != SCRM_OK) {
		if (rc == SCRM_E_INVALID)
			rc = SCRM_E_CONFIG;
		goto out;
	}
	rc = SCRM_E_CONFIG;
	if (!cJSON_IsObject(ch)) {
		err__set(SCRM_E_CONFIG, "set: must be an object of \"section.key\": value");
		goto out;
	}
	if (!cur->path) {
		err__set(SCRM_E_CONFIG, "config: loaded without a file; cannot change it");
		goto out;
	}
	/* Counted before any key is looked at: each key is distinct (json.h),
	 * so the cap is on what a command asks, not on what it repeats. */
	if (cJSON_GetArraySize(ch) > OVERLAY_MAX_KEYS) {
		err__set(SCRM_E_CONFIG, "set: %d keys, at most %d at once", cJSON_GetArraySize(ch), OVERLAY_MAX_KEYS);
		goto out;
	}
	set = cur->overlay_set ? cJSON_Parse(cur->overlay_set) : cJSON_CreateObject();
	if (!set) {
		rc = err__set(SCRM_E_NOMEM, "out of memory");
		goto out;
	}
	for (const cJSON *it = ch->child; it; it = it->next) {
		n++;
		if ((rc = check_remote_key(it->string)))
			goto out;
		/* A remote setting equal to the local value changes nothing
		 * in effect, but its removal must still be written: the local
		 * file may change later. */
		const cJSON *had = cJSON_GetObjectItemCaseSensitive(set, it->string);
		if (cJSON_IsNull(it) ? had != NULL : !had || !cJSON_Compare(had, it, 1))
			overlay_changed = 1;
		cJSON_DeleteItemFromObjectCaseSensitive(set, it->string);
		if (!cJSON_IsNull(it)) {
			cJSON *dup = cJSON_Duplicate(it, 1);
			if (!dup || !cJSON_AddItemToObject(set, it->string, dup)) {
				cJSON_Delete(dup);
				rc = err__set(SCRM_E_NOMEM, "out of memory");
				goto out;
			}
		}
	}
	if (n == 0) {
		rc = err__set(SCRM_E_CONFIG, "set: no keys given");
		goto out;
	}
	if ((rc = build(cur->path, set, NULL, cur->config_version + 1, now_ms, next)))
		goto out;
	if ((rc = config__diff(cur, next, changed, cls)))
		goto out;
	if (*cls < 0 && overlay_changed)
		*cls = CFG_LIVE;
	/* A broker change must prove itself: until the agent has connected
	 * with it, the last confirmed set is kept to roll back to. */
	if (cur->overlay_previous || config__needs_reconnect(cur, next)) {
		const char *p = cur->overlay_previous ? cur->overlay_previous : cur->overlay_set ? cur->overlay_set : "{}";
		if (!(next->overlay_previous = strdup(p))) {
			rc = err__set(SCRM_E_NOMEM, "out of memory");
			goto out;
		}
		/* A new broker change gets the full probation; any other change
		 * made during one keeps its deadline and start count. */
		if (config__needs_reconnect(cur, next) || !cur->probation_deadline_ms) {
			next->probation_deadline_ms = now_ms + next->probation_s * 1000;
			next->probation_starts = 0;
		} else {
			next->probation_deadline_ms = cur->probation_deadline_ms;
			next->probation_starts = cur->probation_starts;
		}
	}
	sbuf__reset(overlay_text);
	put_overlay(overlay_text, next->config_version, now_ms, next->overlay_set, next->overlay_previous,
		    next->probation_deadline_ms, next->probation_starts);
	if (overlay_text->oom)
		rc = err__set(SCRM_E_NOMEM, "out of memory");
out:
	if (rc)
		config__free(next);
	cJSON_Delete(ch);
	cJSON_Delete(set);
	cJSON_Delete(prev);
	return rc;
}

int config__overlay_settle(const config *cfg, int rollback, int64_t now_ms, sbuf *overlay_text)
{
	sbuf__reset(overlay_text);
	if (rollback)
		put_overlay(overlay_text, cfg->config_version + 1, now_ms,
			    cfg->overlay_previous ? cfg->overlay_previous : "{}", NULL, 0, 0);
	else
		put_overlay(overlay_text, cfg->config_version, cfg->overlay_updated_ms ? cfg->overlay_updated_ms : now_ms,
			    cfg->overlay_set, NULL, 0, 0);
	return overlay_text->oom ? err__set(SCRM_E_NOMEM, "out of memory") : SCRM_OK;
}

int config__overlay_restate(const config *cfg, int64_t starts, sbuf *overlay_text)
{
	sbuf__reset(overlay_text);
	put_overlay(overlay_text, cfg->config_version, cfg->overlay_updated_ms, cfg->overlay_set, cfg->overlay_previous,
		    cfg->probation_deadline_ms, starts);
	return overlay_text->oom ? err__set(SCRM_E_NOMEM, "out of memory") : SCRM_OK;
}

int config__write_overlay(const config *cfg, const char *text)
{
	char path[4200];
	config__overlay_path(cfg, path, sizeof(path));
	int e = platform__write_file_atomic(path, text, strlen(text), 0600);
	return e ? err__set(SCRM_E_IO, "%s: cannot write: %s", path, strerror(-e)) : SCRM_OK;
}

static void put_value(sbuf *out, const struct ckey *k, const config *cfg)
{
	const char *base = (const char *)cfg;
	if (k->type == C_STR) {
		const char *v = *(char *const *)(const void *)(base + k->off);
		if (v)
			sbuf__jstr(out, v);
		else
			sbuf__puts(out, "null");
	} else if (k->type == C_INT) {
		sbuf__i64(out, *(const int64_t *)(const void *)(base + k->off));
	} else {
		sbuf__puts(out, *(const int *)(const void *)(base + k->off) ? "true" : "false");
	}
}

int config__to_json(const config *cfg, sbuf *out)
{
	sbuf__puts(out, "{");
	for (size_t i = 0; i < NKEYS; i++) {
		if (i)
			sbuf__puts(out, ",");
		sbuf__jstr(out, keys[i].key);
		sbuf__puts(out, ":");
		put_value(out, &keys[i], cfg);
	}
	sbuf__puts(out, "}");
	return out->oom ? err__set(SCRM_E_NOMEM, "out of memory") : SCRM_OK;
}

int config__diff(const config *a, const config *b, sbuf *out, int *cls)
{
	int first = 1;
	*cls = -1;
	sbuf__puts(out, "[");
	for (size_t i = 0; i < NKEYS; i++) {
		const struct ckey *k = &keys[i];
		if (!key_differs(k, a, b))
			continue;
		int c = CFG_LIVE, remote;
		config__key_info(k->key, &c, &remote);
		if (c > *cls)
			*cls = c;
		if (!first)
			sbuf__puts(out, ",");
		first = 0;
		sbuf__jstr(out, k->key);
	}
	sbuf__puts(out, "]");
	return out->oom ? err__set(SCRM_E_NOMEM, "out of memory") : SCRM_OK;
}
