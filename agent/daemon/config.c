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

/* The key table: config_keys.def's rows. */
#define REMOTE 1
#define LOCAL 0
const struct ckey config__keys[] = {
#define CONFIG_STR(k, f, d, req, cls, remote, doc) {k, C_STR, offsetof(config, f), d, 0, 0, 0, req, cls, remote, doc},
#define CONFIG_INT(k, f, d, lo, hi, cls, remote, doc) {k, C_INT, offsetof(config, f), NULL, d, lo, hi, 0, cls, remote, doc},
#define CONFIG_BOOL(k, f, d, cls, remote, doc) {k, C_BOOL, offsetof(config, f), NULL, d, 0, 1, 0, cls, remote, doc},
#include "config_keys.def"
#undef CONFIG_STR
#undef CONFIG_INT
#undef CONFIG_BOOL
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

