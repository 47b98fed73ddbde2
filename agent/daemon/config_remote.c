/* SPDX-License-Identifier: Apache-2.0 */
/*
 * config_remote: remote configuration (config.h, "remote configuration"):
 * which keys central may set and how each takes effect, the overlay file
 * config.remote.json merged over the local config, the broker allow-list,
 * probation and rollback, and the comparisons and JSON views of a config.
 */
#include "config_int.h"
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

/* ---- remote configuration (config.h) ---------------------------------- */

#define OVERLAY_FILE "config.remote.json"
#define OVERLAY_MAX_KEYS 64

static const struct ckey *find_key(const char *key)
{
	for (size_t i = 0; i < config__n_keys; i++)
		if (strcmp(config__keys[i].key, key) == 0)
			return &config__keys[i];
	return NULL;
}

int config__key_info(const char *key, int *cls, int *remote)
{
	const struct ckey *k = key ? find_key(key) : NULL;
	if (!k)
		return -1;
	*cls = k->cls;
	*remote = k->remote;
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
	config__parse_text(text, len, &root);
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
	if ((rc = merge_set(root, set)) || (rc = config__apply_root(root, NULL, 0, out))) {
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
	for (size_t i = 0; i < config__n_keys; i++) {
		int c = CFG_LIVE, remote;
		config__key_info(config__keys[i].key, &c, &remote);
		if (c == CFG_RECONNECT && key_differs(&config__keys[i], a, b))
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
	for (size_t i = 0; i < config__n_keys; i++) {
		if (i)
			sbuf__puts(out, ",");
		sbuf__jstr(out, config__keys[i].key);
		sbuf__puts(out, ":");
		put_value(out, &config__keys[i], cfg);
	}
	sbuf__puts(out, "}");
	return out->oom ? err__set(SCRM_E_NOMEM, "out of memory") : SCRM_OK;
}

int config__diff(const config *a, const config *b, sbuf *out, int *cls)
{
	int first = 1;
	*cls = -1;
	sbuf__puts(out, "[");
	for (size_t i = 0; i < config__n_keys; i++) {
		const struct ckey *k = &config__keys[i];
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
