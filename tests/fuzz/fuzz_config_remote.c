/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_config_remote: remote configuration (docs/protocol.md, "Remote
 * configuration"): the `set` object of a config.set command into
 * config__propose(), and the overlay file <store_dir>/config.remote.json
 * into config__load_all(). Each input is used both ways.
 *
 * A fixed local file (every local-only key given a value of its own) is
 * written to a temp directory (a tmpfs when there is one) at start, and two
 * running configs are loaded from it: one without an overlay, one with a
 * broker change on probation. The overlay file is removed after each input.
 *
 * Invariants:
 *   - propose: SCRM_OK, SCRM_E_CONFIG or NOMEM; a refusal has a message
 *     and hands nothing back. An accepted proposal has version cur+1,
 *     changes only keys central may set (never a CA, TLS, the command key,
 *     an identity or a file path), lists in `changed` exactly the keys
 *     config__diff sees with their strongest class, marks probation with a
 *     previous set, and — written and loaded back — gives the same config
 *     with no overlay_error. Confirming its probation keeps the settings;
 *     rolling back a first change gives the local file again.
 *   - load_all: never fails on the overlay (the local file is good); an
 *     ignored overlay leaves exactly the local config with overlay_error
 *     set; an applied one changes only remotely settable keys;
 *     config__to_json is a JSON object either way.
 * Known bugs with unit tests of their own (tests/unit/config_remote_test.c:
 * probation decided on the strongest class only, and dropped by a change
 * made during probation) are not asserted here, so the harness keeps
 * fuzzing past them.
 */
#include "fuzz.h"
#include "fuzzutil.h"

#include "config.h"
#include "err.h"
#include "sbuf.h"

#include <scrm/scrm.h>

#include <cjson/cJSON.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NOW 1764000000000LL

static char dir[4096], path[4200], overlay[4200];
static config base, probe;
static sbuf text, changed, keys;

static void cleanup(void)
{
	config__free(&base);
	config__free(&probe);
	sbuf__free(&text);
	sbuf__free(&changed);
	sbuf__free(&keys);
	fuzz_rmtree(dir);
}

static void write_raw(const char *p, const void *data, size_t n)
{
	FILE *f = fopen(p, "wb");
	FUZZ_CHECK(f != NULL, "cannot create %s", p);
	FUZZ_CHECK(fwrite(data, 1, n, f) == n || n == 0, "cannot write %s", p);
	FUZZ_CHECK(fclose(f) == 0, "cannot close %s", p);
}

static void init(void)
{
	char local[2048];
	fuzz_tmpdir(dir, sizeof(dir), "config-remote");
	snprintf(path, sizeof(path), "%s/agent.json", dir);
	snprintf(overlay, sizeof(overlay), "%s/private", dir);
	FUZZ_CHECK(mkdir(overlay, 0700) == 0, "mkdir %s", overlay); /* as paths__prepare makes it */
	snprintf(overlay, sizeof(overlay), "%s/private/config.remote.json", dir);
	int n = snprintf(local, sizeof(local),
			 "{\"tenant\":\"acme\",\"store_id\":\"s0042\",\"device_id\":\"pos-01\",\"store_dir\":\"%s\",\n"
			 "\"broker\":{\"uri\":\"mqtts://broker.example:8883\",\"ca_file\":\"/etc/scrm/ca.pem\","
			 "\"cert_file\":\"/etc/scrm/pos.crt\",\"key_file\":\"/etc/scrm/pos.key\",\"username\":\"pos-01\","
			 "\"password_file\":\"/etc/scrm/password\",\"remote_hosts\":\"other.example\"},\n"
			 "\"sync\":{\"window\":8,\"backoff_min_ms\":500},\n"
			 "\"cache\":{\"keys_dir\":\"/var/lib/scrm/keys\"},\n"
			 "\"fleet\":{\"command_key_file\":\"/etc/scrm/command.pub\",\"probation_s\":60},\n"
			 "\"log\":{\"level\":\"info\",\"file\":\"/var/log/scrm/agent.log\"}}\n",
			 dir);
	FUZZ_CHECK(n > 0 && (size_t)n < sizeof(local), "local config too long");
	write_raw(path, local, (size_t)n);
	FUZZ_CHECK(config__load_all(path, &base) == SCRM_OK, "base: %s", scrm_errmsg());
	static const char on_probation[] =
		"{\"v\":1,\"version\":3,\"updated_ms\":1,\"set\":{\"sync.window\":4,"
		"\"broker.uri\":\"mqtts://other.example:8883\"},\"probation\":true,\"previous\":{\"sync.window\":4}}";
	write_raw(overlay, on_probation, sizeof(on_probation) - 1);
	FUZZ_CHECK(config__load_all(path, &probe) == SCRM_OK && !probe.overlay_error && probe.overlay_previous,
		   "probe: %s", probe.overlay_error ? probe.overlay_error : scrm_errmsg());
	FUZZ_CHECK(unlink(overlay) == 0, "unlink %s", overlay);
	sbuf__init(&text);
	sbuf__init(&changed);
	sbuf__init(&keys);
	atexit(cleanup);
}

static int key_class(const char *key, int *remote)
{
	int cls = -1, r = 0;
	FUZZ_CHECK(config__key_info(key, &cls, &r) == 0, "unknown key %s listed", key);
	if (remote)
		*remote = r;
	return cls;
}

/* config__diff(a, b): the keys (parsed) and the class. Caller deletes. */
static cJSON *diff(const config *a, const config *b, int *cls)
{
	sbuf__reset(&keys);
	FUZZ_CHECK(config__diff(a, b, &keys, cls) == SCRM_OK, "config__diff: %s", scrm_errmsg());
	cJSON *arr = cJSON_ParseWithLength(keys.p, keys.len);
	FUZZ_CHECK(cJSON_IsArray(arr), "config__diff not an array: %s", keys.p);
	return arr;
}

/* Only keys central may set differ from the local file. */
static void check_only_remote_keys_differ(const config *c, const char *what)
{
	int cls;
	cJSON *arr = diff(&base, c, &cls);
	for (const cJSON *it = arr->child; it; it = it->next) {
		int remote;
		FUZZ_CHECK(cJSON_IsString(it), "%s: diff entry not a string", what);
		key_class(it->valuestring, &remote);
		FUZZ_CHECK(remote, "%s changed local-only %s", what, it->valuestring);
	}
	FUZZ_CHECK(strcmp(c->topic_prefix, base.topic_prefix) == 0, "%s changed the topic prefix", what);
	cJSON_Delete(arr);
}

static void check_same(const config *a, const config *b, const char *what)
{
	int cls;
	cJSON *arr = diff(a, b, &cls);
	FUZZ_CHECK(cJSON_GetArraySize(arr) == 0 && cls == -1, "%s: differs in %s", what, keys.p);
	cJSON_Delete(arr);
}

static void check_json(const config *c)
{
	sbuf__reset(&keys);
	FUZZ_CHECK(config__to_json(c, &keys) == SCRM_OK, "config__to_json: %s", scrm_errmsg());
	cJSON *j = cJSON_ParseWithLength(keys.p, keys.len);
	FUZZ_CHECK(cJSON_IsObject(j), "config__to_json not an object: %s", keys.p);
	cJSON_Delete(j);
}

/* Load after writing `t` with config__write_overlay; must apply cleanly. */
static void load_written(const config *writer, const char *t, config *out, const char *what)
{
	FUZZ_CHECK(config__write_overlay(writer, t) == SCRM_OK, "%s: write: %s", what, scrm_errmsg());
	FUZZ_CHECK(config__load_all(path, out) == SCRM_OK, "%s: load: %s", what, scrm_errmsg());
	FUZZ_CHECK(!out->overlay_error, "%s: written overlay ignored: %s\n%s", what, out->overlay_error, t);
}

static void propose_from(const config *cur, const char *data, size_t size)
{
	config next, back;
	int cls = 7;
	sbuf__reset(&text);
	sbuf__reset(&changed);
	err__clear();
	int rc = config__propose(cur, data, size, NOW, &next, &text, &changed, &cls);
	if (rc != SCRM_OK) {
		FUZZ_CHECK(rc == SCRM_E_CONFIG || rc == SCRM_E_NOMEM, "propose rc %d", rc);
		FUZZ_CHECK(scrm_errmsg()[0], "refused without a message");
		FUZZ_CHECK(!next.tenant && !next.path && !next.overlay_set && !next.overlay_previous,
			   "a refused proposal handed a config back");
		return;
	}
	FUZZ_CHECK(next.tenant && next.broker_uri && next.path && strcmp(next.path, path) == 0,
		   "accepted proposal without a config (%s)", scrm_errmsg());
	FUZZ_CHECK(next.config_version == cur->config_version + 1, "version %lld after %lld",
		   (long long)next.config_version, (long long)cur->config_version);
	FUZZ_CHECK(!next.overlay_error, "proposal with overlay_error");
	check_only_remote_keys_differ(&next, "proposal");
	check_json(&next);

	/* changed == what config__diff sees, cls its strongest class. */
	int dcls;
	cJSON *ch = cJSON_ParseWithLength(changed.p, changed.len);
	cJSON *d = diff(cur, &next, &dcls);
	FUZZ_CHECK(cJSON_IsArray(ch) && cJSON_Compare(ch, d, 1), "changed %s, diff %s", changed.p, keys.p);
	/* No effective change but a different remote set (a value equal to
	 * the local one set or removed) is still a change to write: live. */
	int set_moved;
	{
		cJSON *a = cJSON_Parse(cur->overlay_set ? cur->overlay_set : "{}");
		cJSON *b = cJSON_Parse(next.overlay_set ? next.overlay_set : "{}");
		set_moved = !cJSON_Compare(a, b, 1);
		cJSON_Delete(a);
		cJSON_Delete(b);
	}
	FUZZ_CHECK(cls == dcls || (dcls == -1 && cls == CFG_LIVE && set_moved), "class %d, diff says %d", cls, dcls);
	FUZZ_CHECK(cls >= -1 && cls <= CFG_RESTART, "class %d", cls);
	FUZZ_CHECK(cls != -1 || !set_moved, "the remote set changed but the class says nothing to write");
	int strongest = -1;
	for (const cJSON *it = ch->child; it; it = it->next) {
		int c = key_class(it->valuestring, NULL);
		strongest = c > strongest ? c : strongest;
	}
	FUZZ_CHECK(strongest == dcls, "class %d, keys say %d", dcls, strongest);
	cJSON_Delete(ch);
	cJSON_Delete(d);

	/* The overlay text. */
	cJSON *o = cJSON_ParseWithLength(text.p, text.len);
	FUZZ_CHECK(cJSON_IsObject(o), "overlay text not an object: %s", text.p);
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "v");
	const cJSON *ver = cJSON_GetObjectItemCaseSensitive(o, "version");
	const cJSON *set = cJSON_GetObjectItemCaseSensitive(o, "set");
	const cJSON *prob = cJSON_GetObjectItemCaseSensitive(o, "probation");
	const cJSON *prev = cJSON_GetObjectItemCaseSensitive(o, "previous");
	FUZZ_CHECK(cJSON_IsNumber(v) && v->valuedouble == 1, "overlay v");
	FUZZ_CHECK(cJSON_IsNumber(ver) && ver->valuedouble == (double)next.config_version, "overlay version");
	FUZZ_CHECK(cJSON_IsObject(set), "overlay set: %s", text.p);
	for (const cJSON *it = set->child; it; it = it->next) {
		int remote;
		key_class(it->string, &remote);
		FUZZ_CHECK(remote, "overlay sets local-only %s", it->string);
	}
	FUZZ_CHECK(!prob == !prev && !prev == !next.overlay_previous, "probation marks disagree: %s", text.p);
	FUZZ_CHECK(!prob || cJSON_IsTrue(prob), "probation not true");
	FUZZ_CHECK(cls != CFG_RECONNECT || next.overlay_previous, "broker change without probation: %s", text.p);
	cJSON_Delete(o);

	/* Written and loaded back: the same config. */
	load_written(&next, text.p, &back, "proposal");
	check_same(&next, &back, "proposal reloaded");
	FUZZ_CHECK(back.config_version == next.config_version, "version lost on reload");
	FUZZ_CHECK(!back.overlay_previous == !next.overlay_previous, "probation lost on reload");

	if (back.overlay_previous) {
		config settled;
		/* Confirm: same settings, same version, no probation. */
		FUZZ_CHECK(config__overlay_settle(&back, 0, NOW + 1, &text) == SCRM_OK, "settle: %s", scrm_errmsg());
		load_written(&back, text.p, &settled, "confirm");
		check_same(&back, &settled, "confirmed");
		FUZZ_CHECK(settled.config_version == back.config_version && !settled.overlay_previous, "confirm");
		config__free(&settled);
		/* Roll back: the version moves on; from no overlay, the local file. */
		FUZZ_CHECK(config__overlay_settle(&back, 1, NOW + 2, &text) == SCRM_OK, "settle: %s", scrm_errmsg());
		load_written(&back, text.p, &settled, "rollback");
		FUZZ_CHECK(settled.config_version == back.config_version + 1 && !settled.overlay_previous, "rollback");
		if (!cur->overlay_set)
			check_same(&base, &settled, "rolled back to the local file");
		config__free(&settled);
	}
	config__free(&back);
	config__free(&next);
	unlink(overlay);
}

static void load_overlay(const uint8_t *data, size_t size)
{
	config c;
	write_raw(overlay, data, size);
	err__clear();
	int rc = config__load_all(path, &c);
	FUZZ_CHECK(rc == SCRM_OK, "a bad overlay stopped the daemon: %s", scrm_errmsg());
	check_json(&c);
	if (c.overlay_error) {
		check_same(&base, &c, "ignored overlay");
		/* (config_version is not asserted: whether an ignored overlay's
		 * version is kept is an open bug, see config_remote_test.c.) */
		FUZZ_CHECK(!c.overlay_set && !c.overlay_previous, "ignored overlay left settings behind");
		FUZZ_CHECK(strstr(c.overlay_error, "config.remote.json"), "overlay_error without the file: %s",
			   c.overlay_error);
	} else {
		check_only_remote_keys_differ(&c, "overlay");
		FUZZ_CHECK(c.config_version >= 0 && c.config_version <= 9007199254740992LL, "version %lld",
			   (long long)c.config_version);
		if (c.overlay_set) {
			cJSON *s = cJSON_Parse(c.overlay_set);
			FUZZ_CHECK(cJSON_IsObject(s), "overlay_set not an object: %s", c.overlay_set);
			cJSON_Delete(s);
		}
	}
	config__free(&c);
	unlink(overlay);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	if (!ready) {
		init();
		ready = 1;
	}
	if (size > 65536)
		return 0;
	propose_from(&base, (const char *)data, size);
	propose_from(&probe, (const char *)data, size);
	load_overlay(data, size);
	return 0;
}
