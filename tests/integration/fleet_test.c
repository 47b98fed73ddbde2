/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Integration tests of fleet management: the real scrm-agent, the reference
 * central and mosquitto with TLS, observed and driven through the real
 * console (`scrmctl fleet`). What an operations team relies on:
 *   fleet_presence  birth, heartbeat, will after kill -9, a newer birth after
 *                   restart, "shutdown" after SIGTERM — all seen by the console
 *   fleet_commands  every command round trip; config.set validated, versioned,
 *                   persisted, applied live; bad values refused with the old
 *                   config kept; SIGHUP reload; malformed commands answered
 *   fleet_rollback  a broker change that cannot connect is rolled back
 *   fleet_signed    an agent with a command key obeys only signed commands
 *
 * Usage: fleet_test SCENARIO. Needs SCRM_AGENT_BIN, SCRM_CENTRAL_BIN,
 * SCRM_CTL_BIN, SCRM_POSSIM_BIN (and SCRM_TEST_EMULATOR for cross runs).
 */
#include "harness.h"

#include <cjson/cJSON.h>
#include <mbedtls/pk.h>
#include <signal.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEVICE "pos-01"

static int scale = 1;
static int failures;

#define CHECK(cond, ...)                                                      \
	do {                                                                  \
		if (!(cond)) {                                                \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);  \
			fprintf(stderr, __VA_ARGS__);                         \
			fprintf(stderr, "\n");                                \
			failures++;                                           \
			return -1;                                            \
		}                                                             \
	} while (0)

struct env {
	char *dir;
	char store[512], agent_cfg[512], agent_log[512], central_log[512], central_db[512], ctl_out[512];
	char uri[64], ca[512];
	th_broker *broker;
	int port;
	pid_t agent, central;
	const char *extra; /* extra top-level config text for the agent */
};

static int setup(struct env *e, const char *name)
{
	memset(e, 0, sizeof(*e));
	e->dir = th_tmpdir(name);
	CHECK(e->dir, "tmpdir");
	CHECK(th_certs_make(e->dir) == 0, "certificates");
	snprintf(e->store, sizeof(e->store), "%s/store", e->dir);
	snprintf(e->agent_cfg, sizeof(e->agent_cfg), "%s/agent.json", e->dir);
	snprintf(e->agent_log, sizeof(e->agent_log), "%s/agent.log", e->dir);
	snprintf(e->central_log, sizeof(e->central_log), "%s/central.log", e->dir);
	snprintf(e->central_db, sizeof(e->central_db), "%s/central.db", e->dir);
	snprintf(e->ctl_out, sizeof(e->ctl_out), "%s/ctl.out", e->dir);
	snprintf(e->ca, sizeof(e->ca), "%s/ca.crt", e->dir);
	e->port = th_free_port();
	CHECK(e->port > 0, "free port");
	snprintf(e->uri, sizeof(e->uri), "ssl://127.0.0.1:%d", e->port);
	e->broker = th_broker_start(e->dir, e->port, "server", 0);
	CHECK(e->broker, "broker start");
	return 0;
}

static void teardown(struct env *e)
{
	if (e->agent > 0)
		th_stop(e->agent, 5000);
	if (e->central > 0)
		th_stop(e->central, 5000);
	th_broker_free(e->broker);
	if (failures) {
		th_dump_log(e->agent_log, 5000);
		th_dump_log(e->ctl_out, 2000);
		fprintf(stderr, "(test files kept in %s)\n", e->dir);
	} else if (!getenv("SCRM_KEEP")) {
		th_rmtree(e->dir);
	}
	free(e->dir);
}

/* heartbeat_s small so the test sees several; window 8 to change later. */
static int write_cfg(struct env *e, int port, const char *log_level)
{
	char cfg[8192];
	int n = snprintf(cfg, sizeof(cfg),
			 "{\n  \"tenant\": \"acme\", \"store_id\": \"s1\", \"device_id\": \"%s\",\n"
			 "  \"store_dir\": \"%s\",\n"
			 "  \"broker\": {\"uri\": \"mqtts://127.0.0.1:%d\", \"ca_file\": \"%s\", \"keepalive_s\": 5},\n"
			 "  \"sync\": {\"window\": 8, \"backoff_min_ms\": 100, \"backoff_max_ms\": 1000},\n"
			 "  \"fleet\": {\"heartbeat_s\": 5, \"probation_s\": 30%s},\n"
			 "  \"log\": {\"level\": \"%s\"}\n}\n",
			 DEVICE, e->store, port, e->ca, e->extra ? e->extra : "", log_level);
	CHECK(n > 0 && (size_t)n < sizeof(cfg), "config too long");
	return th_write_file(e->agent_cfg, cfg);
}

static int start_agent(struct env *e)
{
	const char *argv[] = {th_bin("SCRM_AGENT_BIN"), "--config", e->agent_cfg, NULL};
	e->agent = th_spawn_target(argv, e->agent_log);
	CHECK(e->agent > 0, "spawn agent");
	return 0;
}

static int start_central(struct env *e)
{
	char ready[600];
	snprintf(ready, sizeof(ready), "%s/central.ready", e->dir);
	const char *argv[] = {th_bin("SCRM_CENTRAL_BIN"), "run", "--strict", "--broker", e->uri, "--ca", e->ca, "--db", e->central_db,
			      "--share", "scrm-central", "--ready-file", ready, NULL};
	e->central = th_spawn_target(argv, e->central_log);
	CHECK(e->central > 0, "spawn central");
	for (int i = 0; i < 300 * scale && access(ready, F_OK) != 0; i++)
		th_sleep_ms(100);
	CHECK(access(ready, F_OK) == 0, "central not ready");
	return 0;
}

/* Run `scrmctl fleet ARGS... --json` and parse its output. Returns the exit
 * code; *out = the parsed JSON (caller deletes) or NULL. */
static int ctl(struct env *e, cJSON **out, const char *const *args)
{
	const char *argv[32];
	int n = 0;
	argv[n++] = th_bin("SCRM_CTL_BIN");
	argv[n++] = "fleet";
	argv[n++] = "--broker";
	argv[n++] = e->uri;
	argv[n++] = "--ca";
	argv[n++] = e->ca;
	argv[n++] = "--tenant";
	argv[n++] = "acme";
	for (; *args && n < 26; args++)
		argv[n++] = *args;
	argv[n++] = "--json";
	argv[n] = NULL;
	unlink(e->ctl_out);
	int rc = th_run_target(argv, e->ctl_out, 60000 * scale);
	if (out) {
		char *text = th_read_file(e->ctl_out, NULL);
		/* stdout and stderr share the file: the reply is the last line
		 * that parses as a JSON object */
		*out = NULL;
		for (char *line = text, *next; line && *line; line = next) {
			next = strchr(line, '\n');
			if (next)
				*next++ = '\0';
			cJSON *o = line[0] == '{' ? cJSON_Parse(line) : NULL;
			if (cJSON_IsObject(o)) {
				cJSON_Delete(*out);
				*out = o;
			} else {
				cJSON_Delete(o);
			}
			if (!next)
				break;
		}
		free(text);
	}
	return rc;
}

/* `scrmctl fleet cmd pos-01 ...`: the reply object (ok / error). */
static int cmd(struct env *e, cJSON **reply, const char *name, const char *args)
{
	char timeout[32];
	snprintf(timeout, sizeof(timeout), "%d", 15000 * scale);
	const char *a[] = {"cmd", "s1/" DEVICE, name, args, "--timeout-ms", timeout, NULL};
	if (!args) {
		a[3] = "--timeout-ms";
		a[4] = timeout;
		a[5] = NULL;
	}
	return ctl(e, reply, a);
}

static const cJSON *jget(const cJSON *o, const char *path)
{
	char buf[128];
	snprintf(buf, sizeof(buf), "%s", path);
	const cJSON *it = o;
	for (char *x = buf, *tok; it && (tok = strsep(&x, "."));)
		it = cJSON_GetObjectItemCaseSensitive(it, tok);
	return it;
}

static double jnum(const cJSON *o, const char *path)
{
	const cJSON *it = jget(o, path);
	return cJSON_IsNumber(it) ? it->valuedouble : -1;
}

static const char *jstr(const cJSON *o, const char *path)
{
	const cJSON *it = jget(o, path);
	return cJSON_IsString(it) ? it->valuestring : "";
}

/* The console's view of pos-01: {"status","state","health"} (caller
 * deletes) once `pred` holds, polling up to timeout_ms. */
static cJSON *show_until(struct env *e, int (*pred)(const cJSON *, const void *), const void *arg, int timeout_ms)
{
	int64_t until = th_now_ms() + timeout_ms;
	char wait[32];
	snprintf(wait, sizeof(wait), "%d", 1500 * scale);
	for (;;) {
		cJSON *o = NULL;
		const char *a[] = {"show", "s1/" DEVICE, "--wait-ms", wait, NULL};
		ctl(e, &o, a);
		if (o && pred(o, arg))
			return o;
		if (th_now_ms() > until)
			return o;
		cJSON_Delete(o);
		th_sleep_ms(500);
	}
}

static int is_status(const cJSON *o, const void *want)
{
	return strcmp(jstr(o, "status"), want) == 0;
}

struct seqarg {
	double after;
	const char *state;
};
static int newer_state(const cJSON *o, const void *arg)
{
	const struct seqarg *s = arg;
	return strcmp(jstr(o, "state.state"), s->state) == 0 && jnum(o, "state.birth_seq") > s->after;
}

static int heartbeat_after(const cJSON *o, const void *arg)
{
	return jnum(o, "health.ts") > *(const double *)arg;
}

/* ---- scenarios ---- */

static int fleet_presence(struct env *e)
{
	CHECK(write_cfg(e, e->port, "info") == 0, "config");
	CHECK(start_central(e) == 0, "central");
	CHECK(start_agent(e) == 0, "agent");

	cJSON *o = show_until(e, is_status, "online", 30000 * scale);
	CHECK(o && is_status(o, "online"), "console never saw the agent online");
	double seq1 = jnum(o, "state.birth_seq");
	CHECK(seq1 > 1.7e12, "birth_seq %.0f should be >= the wall clock in ms", seq1);
	CHECK(strcmp(jstr(o, "state.version"), "") != 0 && strcmp(jstr(o, "state.arch"), "") != 0, "birth without version/arch");
	CHECK(jnum(o, "state.config_version") == 0, "config_version");
	CHECK(jget(o, "health.outbox.pending") && jget(o, "health.disk.free_bytes") && jget(o, "health.clock.trusted") &&
		      jnum(o, "health.rss_bytes") > 0 && jget(o, "health.verdicts") && jget(o, "health.cache.members"),
	      "heartbeat lacks figures");
	double hb1 = jnum(o, "health.ts");
	cJSON_Delete(o);

	/* heartbeats keep coming (every 5 s) */
	o = show_until(e, heartbeat_after, &hb1, 20000 * scale);
	CHECK(o && jnum(o, "health.ts") > hb1, "no second heartbeat");
	cJSON_Delete(o);

	/* The list, as operations see it. */
	const char *la[] = {"list", NULL};
	cJSON *l = NULL;
	CHECK(ctl(e, &l, la) == 0 && l, "fleet list");
	const cJSON *agents = cJSON_GetObjectItemCaseSensitive(l, "agents");
	CHECK(cJSON_GetArraySize(agents) == 1 && strcmp(jstr(cJSON_GetArrayItem(agents, 0), "device"), DEVICE) == 0 &&
		      strcmp(jstr(cJSON_GetArrayItem(agents, 0), "status"), "online") == 0,
	      "list shows the agent online");
	cJSON_Delete(l);

	/* kill -9: the broker publishes the will (after the 10 s will delay). */
	th_kill(e->agent, SIGKILL);
	th_wait(e->agent, 5000, NULL);
	e->agent = 0;
	struct seqarg off = {seq1 - 1, "offline"};
	o = show_until(e, newer_state, &off, 60000 * scale);
	CHECK(o && strcmp(jstr(o, "state.state"), "offline") == 0, "no will after kill -9");
	CHECK(jnum(o, "state.birth_seq") == seq1, "the will carries the birth_seq of its connection");
	CHECK(strcmp(jstr(o, "state.reason"), "connection_lost") == 0, "will reason");
	cJSON_Delete(o);

	/* restart: a newer birth */
	CHECK(start_agent(e) == 0, "agent");
	struct seqarg on = {seq1, "online"};
	o = show_until(e, newer_state, &on, 30000 * scale);
	CHECK(o && jnum(o, "state.birth_seq") > seq1, "no newer birth after restart");
	double seq2 = jnum(o, "state.birth_seq");
	cJSON_Delete(o);

	/* clean stop: "shutdown" with the same birth_seq */
	CHECK(th_stop(e->agent, 10000 * scale) == 0, "agent exits 0 on SIGTERM");
	e->agent = 0;
	struct seqarg down = {seq2 - 1, "offline"};
	o = show_until(e, newer_state, &down, 20000 * scale);
	CHECK(o && strcmp(jstr(o, "state.reason"), "shutdown") == 0 && jnum(o, "state.birth_seq") == seq2,
	      "clean stop publishes offline/shutdown");
	cJSON_Delete(o);
	return 0;
}

static int reply_ok(const cJSON *r)
{
	return r && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "ok"));
}

static int fleet_commands(struct env *e)
{
	cJSON *r = NULL;
	CHECK(write_cfg(e, e->port, "info") == 0, "config");
	CHECK(start_central(e) == 0, "central");
	/* A damaged cache.db: quarantined at start, an alarm operations see
	 * and clear. */
	{
		char junk[600];
		CHECK(mkdir(e->store, 0700) == 0, "mkdir store");
		snprintf(junk, sizeof(junk), "%s/private", e->store);
		CHECK(mkdir(junk, 0700) == 0, "mkdir private");
		snprintf(junk, sizeof(junk), "%s/private/cache.db", e->store);
		CHECK(th_write_file(junk, "this is not a SQLite database, it is junk of sufficient length ..........") == 0,
		      "junk cache");
	}
	CHECK(start_agent(e) == 0, "agent");
	cJSON *o = show_until(e, is_status, "online", 30000 * scale);
	CHECK(o && is_status(o, "online"), "agent online");
	{
		const cJSON *al = jget(o, "health.alarms");
		CHECK(cJSON_GetArraySize(al) == 1 && strcmp(jstr(cJSON_GetArrayItem(al, 0), "code"), "cache_quarantined") == 0,
		      "the heartbeat shows the cache_quarantined alarm");
	}
	cJSON_Delete(o);
	CHECK(cmd(e, &r, "alarm.clear", "{\"code\":\"nope\"}") == 1 && r && strcmp(jstr(r, "error.field"), "args.code") == 0,
	      "alarm.clear of an unknown code refused");
	cJSON_Delete(r);
	CHECK(cmd(e, &r, "alarm.clear", "{\"code\":\"cache_quarantined\"}") == 0 && reply_ok(r) &&
		      cJSON_GetArraySize(jget(r, "result.alarms")) == 0,
	      "alarm.clear clears it");
	cJSON_Delete(r);

	/* a sale, so flush/status have something to show */
	{
		const char *argv[] = {th_bin("SCRM_POSSIM_BIN"), "--store", e->store, "--device", DEVICE, "--count", "3",
				      "--prefix", "F", NULL};
		CHECK(th_run_target(argv, NULL, 60000 * scale) == 0, "pos-sim");
	}

	CHECK(cmd(e, &r, "ping", NULL) == 0 && reply_ok(r) && cJSON_IsTrue(jget(r, "result.pong")), "ping");
	CHECK(strcmp(jstr(r, "cmd"), "ping") == 0 && strlen(jstr(r, "id")) > 2, "reply echoes cmd and id");
	cJSON_Delete(r);

	CHECK(cmd(e, &r, "status", NULL) == 0 && reply_ok(r) && jget(r, "result.outbox.last_seq"), "status");
	CHECK(jnum(r, "result.outbox.last_seq") >= 3, "status sees the 3 sales");
	cJSON_Delete(r);

	CHECK(cmd(e, &r, "flush", NULL) == 0 && reply_ok(r) && jget(r, "result.pending"), "flush");
	cJSON_Delete(r);

	CHECK(cmd(e, &r, "resync", "{\"stream\":\"coupons\"}") == 0 && reply_ok(r), "resync");
	CHECK(cJSON_GetArraySize(jget(r, "result.requested")) == 1 &&
		      strcmp(cJSON_GetArrayItem(jget(r, "result.requested"), 0)->valuestring, "coupons") == 0,
	      "resync names the stream");
	cJSON_Delete(r);
	CHECK(cmd(e, &r, "resync", "{\"stream\":\"nope\"}") == 1 && r && strcmp(jstr(r, "error.code"), "bad_args") == 0 &&
		      strcmp(jstr(r, "error.field"), "args.stream") == 0,
	      "resync of an unknown stream is refused naming args.stream");
	cJSON_Delete(r);

	CHECK(cmd(e, &r, "config.get", "{\"key\":\"sync.window\"}") == 0 && reply_ok(r) && jnum(r, "result.value") == 8 &&
		      jnum(r, "result.version") == 0,
	      "config.get sync.window = 8, version 0");
	cJSON_Delete(r);

	/* a good live change */
	CHECK(cmd(e, &r, "config.set", "{\"set\":{\"sync.window\":4,\"fleet.heartbeat_s\":7}}") == 0 && reply_ok(r),
	      "config.set accepted");
	CHECK(jnum(r, "result.version") == 1 && strcmp(jstr(r, "result.applies"), "live") == 0, "version 1, live");
	cJSON_Delete(r);
	CHECK(cmd(e, &r, "config.get", "{\"key\":\"sync.window\"}") == 0 && jnum(r, "result.value") == 4 &&
		      jnum(r, "result.version") == 1,
	      "config.get after set");
	cJSON_Delete(r);
	{
		char path[600];
		snprintf(path, sizeof(path), "%s/private/config.remote.json", e->store);
		char *t = th_read_file(path, NULL);
		CHECK(t && strstr(t, "\"sync.window\":4") && strstr(t, "\"version\":1"), "overlay persisted: %s", t ? t : "(none)");
		free(t);
	}

	/* bad value: refused naming the key, the old config stays */
	int brc = cmd(e, &r, "config.set", "{\"set\":{\"sync.window\":100}}");
	CHECK(brc == 1 && r, "bad value refused (scrmctl exit %d)", brc);
	CHECK(strcmp(jstr(r, "error.code"), "bad_args") == 0 && strstr(jstr(r, "error.message"), "sync.window") &&
		      strstr(jstr(r, "error.field"), "sync.window"),
	      "refusal names sync.window: %s", jstr(r, "error.message"));
	cJSON_Delete(r);
	CHECK(cmd(e, &r, "config.set", "{\"set\":{\"broker.ca_file\":\"/tmp/evil.pem\"}}") == 1 && r &&
		      strstr(jstr(r, "error.message"), "local config file"),
	      "a local-only key is refused");
	cJSON_Delete(r);
	CHECK(cmd(e, &r, "config.set", "{\"set\":{\"sync.window\":5},\"if_version\":0}") == 1 && r &&
		      strcmp(jstr(r, "error.code"), "version_conflict") == 0,
	      "if_version conflict");
	cJSON_Delete(r);
	CHECK(cmd(e, &r, "config.get", "{\"key\":\"sync.window\"}") == 0 && jnum(r, "result.value") == 4 &&
		      jnum(r, "result.version") == 1,
	      "old config kept after refusals");
	cJSON_Delete(r);

	CHECK(cmd(e, &r, "log.level", "{\"level\":\"debug\"}") == 0 && reply_ok(r) &&
		      strcmp(jstr(r, "result.previous"), "info") == 0,
	      "log.level");
	cJSON_Delete(r);
	CHECK(cmd(e, &r, "logs.recent", "{\"lines\":5}") == 0 && reply_ok(r) &&
		      cJSON_GetArraySize(jget(r, "result.lines")) == 5,
	      "logs.recent 5 lines");
	cJSON_Delete(r);
	CHECK(cmd(e, &r, "member.forget", "{\"member_id\":\"M-404\"}") == 0 && reply_ok(r), "member.forget");
	cJSON_Delete(r);
	CHECK(cmd(e, &r, "member.forget", "{}") == 1 && r && strcmp(jstr(r, "error.field"), "args.member_id") == 0,
	      "member.forget without member_id");
	cJSON_Delete(r);
	CHECK(cmd(e, &r, "cache.purge", "{\"stream\":\"all\"}") == 0 && reply_ok(r) &&
		      cJSON_GetArraySize(jget(r, "result.purged")) == 7,
	      "cache.purge all");
	cJSON_Delete(r);
	CHECK(cmd(e, &r, "reboot", NULL) == 1 && r && strcmp(jstr(r, "error.code"), "unknown_command") == 0,
	      "unknown command answered");
	cJSON_Delete(r);

	/* Malformed commands straight to the topic: answered on the default
	 * reply topic, and the agent lives on. */
	{
		th_mqtt_opts mo = {.uri = e->uri, .client_id = "raw-tester", .ca_file = e->ca};
		char err[300];
		th_mqtt *m = th_mqtt_connect(&mo, err, sizeof(err));
		CHECK(m, "raw client: %s", err);
		CHECK(th_mqtt_subscribe(m, "scrm/v1/acme/s1/" DEVICE "/up/reply", 1, 10000) == 0, "subscribe reply");
		const char *bad[] = {"not json", "{\"v\":2,\"cmd\":\"ping\"}", "[1,2]", "{\"v\":1}", "{\"v\":1,\"cmd\":\"ping\",\"args\":3}"};
		const char *want[] = {"bad_json", "bad_version", "bad_json", "bad_command", "bad_args"};
		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			CHECK(th_mqtt_publish(m, "scrm/v1/acme/s1/" DEVICE "/down/cmd", bad[i], strlen(bad[i]), 1, 10000) == 0,
			      "publish bad");
			th_mqtt_msg *msg = th_mqtt_recv(m, 15000 * scale);
			CHECK(msg, "no reply to malformed command %zu", i);
			cJSON *rr = cJSON_Parse(msg->payload);
			int good = rr && strcmp(jstr(rr, "error.code"), want[i]) == 0 && cJSON_IsFalse(jget(rr, "ok"));
			if (!good)
				fprintf(stderr, "reply to '%s': %s\n", bad[i], msg->payload);
			cJSON_Delete(rr);
			th_mqtt_msg_free(msg);
			CHECK(good, "malformed command %zu gets %s", i, want[i]);
		}
		/* A broker change recreates the MQTT client: commands queued
		 * right behind it are still answered, none is lost. */
		const char *burst[] = {"{\"v\":1,\"id\":\"b1\",\"cmd\":\"config.set\",\"args\":{\"set\":{\"broker.keepalive_s\":6}}}",
				       "{\"v\":1,\"id\":\"b2\",\"cmd\":\"ping\"}", "{\"v\":1,\"id\":\"b3\",\"cmd\":\"status\"}"};
		for (size_t i = 0; i < 3; i++)
			CHECK(th_mqtt_publish(m, "scrm/v1/acme/s1/" DEVICE "/down/cmd", burst[i], strlen(burst[i]), 1, 10000) == 0,
			      "publish burst");
		int answered = 0;
		for (int i = 0; i < 3; i++) {
			th_mqtt_msg *msg = th_mqtt_recv(m, 20000 * scale);
			if (!msg)
				break;
			cJSON *rr = cJSON_Parse(msg->payload);
			if (rr && cJSON_IsTrue(jget(rr, "ok")))
				answered++;
			else
				fprintf(stderr, "burst reply: %s\n", msg->payload);
			cJSON_Delete(rr);
			th_mqtt_msg_free(msg);
		}
		CHECK(answered == 3, "%d of 3 commands answered around a reconnect", answered);
		th_mqtt_close(m);
	}
	CHECK(cmd(e, &r, "ping", NULL) == 0 && reply_ok(r), "agent alive after malformed commands");
	cJSON_Delete(r);

	/* SIGHUP: the local file again (log level), remote settings kept. */
	CHECK(write_cfg(e, e->port, "warn") == 0, "config");
	th_kill(e->agent, SIGHUP);
	CHECK(th_wait_log(e->agent_log, "SIGHUP: config reloaded", 10000 * scale) == 0, "reload logged");
	CHECK(cmd(e, &r, "config.get", NULL) == 0 && reply_ok(r), "config.get all");
	{
		const cJSON *cfg = jget(r, "result.config");
		const cJSON *lv = cJSON_GetObjectItemCaseSensitive(cfg, "log.level");
		const cJSON *w = cJSON_GetObjectItemCaseSensitive(cfg, "sync.window");
		CHECK(cJSON_IsString(lv) && strcmp(lv->valuestring, "warn") == 0, "reloaded log.level");
		CHECK(cJSON_IsNumber(w) && w->valueint == 4, "remote sync.window kept across SIGHUP");
	}
	cJSON_Delete(r);
	return 0;
}

static int rolled_back(const cJSON *o, const void *arg)
{
	(void)arg;
	return jget(o, "health.config_rollback") != NULL && strcmp(jstr(o, "status"), "online") == 0;
}

static int fleet_rollback(struct env *e)
{
	cJSON *r = NULL;
	char bad_uri[200];
	CHECK(write_cfg(e, e->port, "info") == 0, "config");
	CHECK(start_agent(e) == 0, "agent");
	cJSON *o = show_until(e, is_status, "online", 30000 * scale);
	CHECK(o && is_status(o, "online"), "agent online");
	cJSON_Delete(o);

	int dead = th_free_port();
	snprintf(bad_uri, sizeof(bad_uri), "{\"set\":{\"broker.uri\":\"mqtts://127.0.0.1:%d\"}}", dead);
	CHECK(cmd(e, &r, "config.set", bad_uri) == 0 && reply_ok(r), "config.set broker.uri");
	CHECK(strcmp(jstr(r, "result.applies"), "reconnect") == 0 && jnum(r, "result.probation_s") == 30,
	      "a broker change is on probation");
	cJSON_Delete(r);
	CHECK(th_wait_log(e->agent_log, "reconnecting with new broker settings", 10000 * scale) == 0, "reconnects");
	/* 30 s probation, then back on the old broker, with the rollback reported */
	o = show_until(e, rolled_back, NULL, 90000 * scale);
	CHECK(o && rolled_back(o, NULL), "no rollback seen by the console");
	cJSON_Delete(o);
	CHECK(cmd(e, &r, "config.get", "{\"key\":\"broker.uri\"}") == 0 && reply_ok(r), "config.get");
	char want[100];
	snprintf(want, sizeof(want), "ssl://127.0.0.1:%d", e->port);
	CHECK(strcmp(jstr(r, "result.value"), want) == 0 && jnum(r, "result.version") == 2 &&
		      cJSON_IsFalse(jget(r, "result.probation")),
	      "rolled back to the old URI as version 2 (got %s v%.0f)", jstr(r, "result.value"), jnum(r, "result.version"));
	cJSON_Delete(r);
	return 0;
}

/* The public half of central.key as PEM, for fleet.command_key_file. */
static int write_pub(const char *key_path, const char *pub_path)
{
	mbedtls_pk_context pk;
	unsigned char pem[1024];
	mbedtls_pk_init(&pk);
	int rc = mbedtls_pk_parse_keyfile(&pk, key_path, NULL);
	if (rc == 0)
		rc = mbedtls_pk_write_pubkey_pem(&pk, pem, sizeof(pem));
	mbedtls_pk_free(&pk);
	return rc == 0 ? th_write_file(pub_path, (const char *)pem) : -1;
}

static int fleet_signed(struct env *e)
{
	cJSON *r = NULL;
	char key[600], pub[600], extra[700];
	snprintf(key, sizeof(key), "%s/central.key", e->dir);
	snprintf(pub, sizeof(pub), "%s/command.pub", e->dir);
	CHECK(write_pub(key, pub) == 0, "public key");
	snprintf(extra, sizeof(extra), ", \"command_key_file\": \"%s\"", pub);
	e->extra = extra;
	CHECK(write_cfg(e, e->port, "info") == 0, "config");
	CHECK(start_agent(e) == 0, "agent");
	cJSON *o = show_until(e, is_status, "online", 30000 * scale);
	CHECK(o && is_status(o, "online") && cJSON_IsTrue(jget(o, "state.signed_commands")), "agent online, signed only");
	cJSON_Delete(o);

	CHECK(cmd(e, &r, "ping", NULL) == 1 && r && strcmp(jstr(r, "error.code"), "unsigned") == 0, "unsigned refused");
	cJSON_Delete(r);
	char timeout[32];
	snprintf(timeout, sizeof(timeout), "%d", 15000 * scale);
	const char *a[] = {"cmd", "s1/" DEVICE, "ping", "--sign-key", key, "--timeout-ms", timeout, NULL};
	CHECK(ctl(e, &r, a) == 0 && reply_ok(r), "signed ping obeyed");
	cJSON_Delete(r);
	/* signed with another key */
	char other[600];
	snprintf(other, sizeof(other), "%s/client.key", e->dir);
	const char *b[] = {"cmd", "s1/" DEVICE, "ping", "--sign-key", other, "--timeout-ms", timeout, NULL};
	CHECK(ctl(e, &r, b) == 1 && r && strcmp(jstr(r, "error.code"), "bad_signature") == 0, "wrong key refused");
	cJSON_Delete(r);
	return 0;
}

static const struct {
	const char *name;
	int (*fn)(struct env *);
} scenarios[] = {
	{"fleet_presence", fleet_presence},
	{"fleet_commands", fleet_commands},
	{"fleet_rollback", fleet_rollback},
	{"fleet_signed", fleet_signed},
};

int main(int argc, char **argv)
{
	const char *sc = getenv("SCRM_TEST_SCALE");
	if (sc && strtol(sc, NULL, 10) > 0)
		scale = (int)strtol(sc, NULL, 10);
	if (getenv("SCRM_TEST_EMULATOR") && !sc)
		scale = 4;
	for (size_t i = 0; argc == 2 && i < sizeof(scenarios) / sizeof(scenarios[0]); i++) {
		if (strcmp(argv[1], scenarios[i].name) != 0)
			continue;
		struct env e;
		if (setup(&e, scenarios[i].name) != 0 || scenarios[i].fn(&e) != 0) {
			if (failures == 0)
				failures++;
		}
		teardown(&e);
		printf("%s: %s\n", scenarios[i].name, failures ? "FAILED" : "passed");
		return failures ? 1 : 0;
	}
	fprintf(stderr, "usage: fleet_test SCENARIO\nscenarios:");
	for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++)
		fprintf(stderr, " %s", scenarios[i].name);
	fprintf(stderr, "\n");
	return 2;
}
