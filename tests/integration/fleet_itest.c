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
 *   fleet_probe_blackhole  a broker address that drops SYNs: the connection
 *                   diagnosis never stops the loop feeding the watchdog, and
 *                   SIGTERM during it stops the agent at once
 *   fleet_probation_restart  restarts and kill -9 during a probation keep
 *                   its deadline; a crash loop rolls back at the 3rd start
 *   fleet_broker_allowlist  config.set broker.uri is refused for a host not
 *                   in the local broker.remote_hosts, nothing changed
 *   fleet_escapes   a retained state and heartbeat full of terminal escape
 *                   sequences: `fleet list` and `show` print them as visible
 *                   text, --json keeps them as JSON escapes (no agent needed)
 *
 * Usage: fleet_itest SCENARIO. Needs SCRM_AGENT_BIN, SCRM_CENTRAL_BIN,
 * SCRM_CTL_BIN, SCRM_POSSIM_BIN (and SCRM_TEST_EMULATOR for cross runs).
 */
#include "itest.h"

#include <cjson/cJSON.h>
#include <mbedtls/pk.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEVICE ITEST_DEVICE
#define STARTED "msg=\"started\""

/* What the agent's config says beyond the usual; set before write_cfg. */
static struct {
	const char *extra;        /* extra "fleet" members */
	const char *broker_extra; /* extra "broker" members; NULL = remote_hosts 127.0.0.1 */
	int probation_s;          /* fleet.probation_s; 0 = 30, the minimum */
} fl;

/* Every scenario talks to the broker through the console. */
static int setup(struct itest *e)
{
	return itest_start_broker(e, "server");
}

/* heartbeat_s small so the test sees several; window 8 to change later. */
static int write_cfg(struct itest *e, int port, const char *log_level)
{
	char broker[400], fleet[600];
	snprintf(broker, sizeof(broker), ", \"keepalive_s\": 5%s",
		 fl.broker_extra ? fl.broker_extra : ", \"remote_hosts\": \"127.0.0.1\"");
	int n = snprintf(fleet, sizeof(fleet), "\"fleet\": {\"heartbeat_s\": 5, \"probation_s\": %d%s}",
			 fl.probation_s ? fl.probation_s : 30, fl.extra ? fl.extra : "");
	CHECK(n > 0 && (size_t)n < sizeof(fleet), "config too long");
	return itest_agent_cfg(e, &(struct itest_agent){.port = port, .broker = broker, .window = 8, .sections = fleet,
							 .log_level = log_level});
}

/* Run the console, `scrm-fleet ARGS...` (what `scrmctl fleet ARGS...` runs;
 * directly, so that under qemu-user no emulated process has to exec a
 * foreign binary), with --json if json, into e->ctl_out. */
static int ctl_run(struct itest *e, const char *const *args, int json)
{
	const char *argv[32];
	int n = 0;
	argv[n++] = th_bin("SCRM_FLEET_BIN");
	argv[n++] = "--broker";
	argv[n++] = e->uri;
	argv[n++] = "--ca";
	argv[n++] = e->ca;
	argv[n++] = "--tenant";
	argv[n++] = "acme";
	for (; *args && n < 26; args++)
		argv[n++] = *args;
	if (json)
		argv[n++] = "--json";
	argv[n] = NULL;
	unlink(e->ctl_out);
	return th_run_target(argv, e->ctl_out, 60000 * itest_scale);
}

/* Run `scrmctl fleet ARGS... --json` and parse its output. Returns the exit
 * code; *out = the parsed JSON (caller deletes) or NULL. */
static int ctl(struct itest *e, cJSON **out, const char *const *args)
{
	int rc = ctl_run(e, args, 1);
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
static int cmd(struct itest *e, cJSON **reply, const char *name, const char *args)
{
	char timeout[32];
	snprintf(timeout, sizeof(timeout), "%d", 15000 * itest_scale);
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
static cJSON *show_until(struct itest *e, int (*pred)(const cJSON *, const void *), const void *arg, int timeout_ms)
{
	int64_t until = th_now_ms() + timeout_ms;
	char wait[32];
	snprintf(wait, sizeof(wait), "%d", 1500 * itest_scale);
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

static int fleet_presence(struct itest *e)
{
	CHECK(write_cfg(e, e->port, "info") == 0, "config");
	CHECK(itest_start_central(e, NULL) == 0, "central");
	CHECK(itest_start_agent(e) == 0, "agent");

	cJSON *o = show_until(e, is_status, "online", 30000 * itest_scale);
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
	o = show_until(e, heartbeat_after, &hb1, 20000 * itest_scale);
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
	o = show_until(e, newer_state, &off, 60000 * itest_scale);
	CHECK(o && strcmp(jstr(o, "state.state"), "offline") == 0, "no will after kill -9");
	CHECK(jnum(o, "state.birth_seq") == seq1, "the will carries the birth_seq of its connection");
	CHECK(strcmp(jstr(o, "state.reason"), "connection_lost") == 0, "will reason");
	cJSON_Delete(o);

	/* restart: a newer birth */
	CHECK(itest_start_agent(e) == 0, "agent");
	struct seqarg on = {seq1, "online"};
	o = show_until(e, newer_state, &on, 30000 * itest_scale);
	CHECK(o && jnum(o, "state.birth_seq") > seq1, "no newer birth after restart");
	double seq2 = jnum(o, "state.birth_seq");
	cJSON_Delete(o);

	/* clean stop: "shutdown" with the same birth_seq */
	CHECK(th_stop(e->agent, 10000 * itest_scale) == 0, "agent exits 0 on SIGTERM");
	e->agent = 0;
	struct seqarg down = {seq2 - 1, "offline"};
	o = show_until(e, newer_state, &down, 20000 * itest_scale);
	CHECK(o && strcmp(jstr(o, "state.reason"), "shutdown") == 0 && jnum(o, "state.birth_seq") == seq2,
	      "clean stop publishes offline/shutdown");
	cJSON_Delete(o);
	return 0;
}

static int reply_ok(const cJSON *r)
{
	return r && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "ok"));
}

static int fleet_commands(struct itest *e)
{
	cJSON *r = NULL;
	CHECK(write_cfg(e, e->port, "info") == 0, "config");
	CHECK(itest_start_central(e, NULL) == 0, "central");
	/* Target ids follow the agent's id rule: a device "down" would be its
	 * store's downlink (scrm/v1/acme/s1/down/...), a store "up" no store.
	 * Refused before connecting (exit 2), naming the part and why. */
	{
		static const struct {
			const char *target, *says;
		} bad[] = {
			{"s1/down", "device 's1/down': device: \"down\" is reserved"},
			{"up/" DEVICE, "device 'up/" DEVICE "': store: \"up\" is reserved"},
			{"down/s1/" DEVICE, "device 'down/s1/" DEVICE "': tenant: \"down\" is reserved"},
		};
		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			const char *a[] = {"cmd", bad[i].target, "ping", "--timeout-ms", "3000", NULL};
			int rc = ctl(e, NULL, a);
			char *text = th_read_file(e->ctl_out, NULL);
			int named = text && strstr(text, bad[i].says) != NULL;
			if (rc != 2 || !named)
				fprintf(stderr, "scrmctl fleet cmd %s: exit %d, said: %s\n", bad[i].target, rc, text ? text : "");
			free(text);
			CHECK(rc == 2 && named, "scrmctl fleet cmd %s: not refused with \"%s\"", bad[i].target, bad[i].says);
		}
	}
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
	CHECK(itest_start_agent(e) == 0, "agent");
	cJSON *o = show_until(e, is_status, "online", 30000 * itest_scale);
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
		CHECK(th_run_target(argv, NULL, 60000 * itest_scale) == 0, "pos-sim");
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
			th_mqtt_msg *msg = th_mqtt_recv(m, 15000 * itest_scale);
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
			th_mqtt_msg *msg = th_mqtt_recv(m, 20000 * itest_scale);
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
	CHECK(th_wait_log(e->agent_log, "SIGHUP: config reloaded", 10000 * itest_scale) == 0, "reload logged");
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

static int fleet_rollback(struct itest *e)
{
	cJSON *r = NULL;
	char bad_uri[200];
	CHECK(write_cfg(e, e->port, "info") == 0, "config");
	CHECK(itest_start_agent(e) == 0, "agent");
	cJSON *o = show_until(e, is_status, "online", 30000 * itest_scale);
	CHECK(o && is_status(o, "online"), "agent online");
	cJSON_Delete(o);

	int dead = th_free_port();
	snprintf(bad_uri, sizeof(bad_uri), "{\"set\":{\"broker.uri\":\"mqtts://127.0.0.1:%d\"}}", dead);
	CHECK(cmd(e, &r, "config.set", bad_uri) == 0 && reply_ok(r), "config.set broker.uri");
	CHECK(strcmp(jstr(r, "result.applies"), "reconnect") == 0 && jnum(r, "result.probation_s") == 30,
	      "a broker change is on probation");
	cJSON_Delete(r);
	CHECK(th_wait_log(e->agent_log, "reconnecting with new broker settings", 10000 * itest_scale) == 0, "reconnects");
	/* 30 s probation, then back on the old broker, with the rollback reported */
	o = show_until(e, rolled_back, NULL, 90000 * itest_scale);
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

/* ---- a broker address that answers nothing ---- */

/* A TCP listener whose accept queue is full: the kernel drops every further
 * SYN, as a firewall that drops packets does, so a connect() to it hangs
 * until the client gives up (~127 s for a blocking one). fds[0] is the
 * listener, the rest the queued connections; returns the port or -1. */
static int blackhole_open(int fds[4])
{
	struct sockaddr_in a;
	socklen_t alen = sizeof(a);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	for (int i = 0; i < 4; i++)
		fds[i] = -1;
	fds[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fds[0] < 0 || bind(fds[0], (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fds[0], 0) != 0 ||
	    getsockname(fds[0], (struct sockaddr *)&a, &alen) != 0)
		return -1;
	/* backlog 0 queues one connection; the next ones stay half-open or
	 * are dropped: either way nothing more is accepted. */
	for (int i = 1; i < 4; i++) {
		fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fds[i] < 0)
			return -1;
		if (connect(fds[i], (struct sockaddr *)&a, sizeof(a)) != 0 && errno != EINPROGRESS)
			return -1;
	}
	th_sleep_ms(200);
	/* Check: a fresh connect gets no answer within a second. */
	int probe = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	struct pollfd pf = {.fd = probe, .events = POLLOUT};
	int answered = connect(probe, (struct sockaddr *)&a, sizeof(a)) == 0 || errno != EINPROGRESS ||
		       poll(&pf, 1, 1000) != 0;
	close(probe);
	return answered ? -1 : ntohs(a.sin_port);
}

static void blackhole_close(int fds[4])
{
	for (int i = 0; i < 4; i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

/* The systemd watchdog's stand-in: a datagram socket named by NOTIFY_SOCKET,
 * with WATCHDOG_USEC set, in the environment the agent is started with. */
static int notify_open(struct itest *e, int64_t watchdog_ms)
{
	struct sockaddr_un sa;
	char usec[32];
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/notify.sock", e->dir);
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
		return -1;
	snprintf(usec, sizeof(usec), "%lld", (long long)watchdog_ms * 1000);
	setenv("NOTIFY_SOCKET", sa.sun_path, 1);
	setenv("WATCHDOG_USEC", usec, 1);
	unsetenv("WATCHDOG_PID");
	return fd;
}

static void notify_env_clear(void)
{
	unsetenv("NOTIFY_SOCKET");
	unsetenv("WATCHDOG_USEC");
}

/* Read notifications for `ms`: the longest gap between two WATCHDOG=1 (from
 * the start of the watch), and how many arrived. */
static int64_t watchdog_gap(int fd, int ms, int *count)
{
	int64_t start = th_now_ms(), last = start, gap = 0;
	*count = 0;
	for (;;) {
		int64_t now = th_now_ms();
		if (now - start >= ms)
			break;
		struct pollfd pf = {.fd = fd, .events = POLLIN};
		if (poll(&pf, 1, (int)(ms - (now - start))) <= 0)
			continue;
		char buf[256];
		ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
		if (n <= 0)
			continue;
		buf[n] = '\0';
		if (strstr(buf, "WATCHDOG=1")) {
			now = th_now_ms();
			if (now - last > gap)
				gap = now - last;
			last = now;
			(*count)++;
		}
	}
	if (th_now_ms() - last > gap)
		gap = th_now_ms() - last;
	return gap;
}

/* Regression (security review, issue 12): after a failed connect the loop
 * ran the TLS diagnosis, whose blocking connect() to an address that drops
 * SYNs took ~127 s: the watchdog (30 s) killed the agent, and SIGTERM waited.
 * Here the broker is moved (allowed by broker.remote_hosts) to a blackhole;
 * the watchdog must keep arriving every WATCHDOG_USEC/2 (+ scheduling slack)
 * through the failure and its diagnosis, which must end bounded; and a
 * SIGTERM right as the diagnosis starts must stop the agent at once. */
static int fleet_probe_blackhole(struct itest *e)
{
	cJSON *r = NULL;
	int bh[4], count = 0;
	char set[200];
	const int64_t wd_ms = 4000;
	int port = blackhole_open(bh);
	CHECK(port > 0, "cannot make a blackhole listener (SYNs still answered)");
	fl.broker_extra = ", \"remote_hosts\": \"127.0.0.1\", \"connect_timeout_s\": 2";
	/* The probation must outlast the test: under qemu the watch below is
	 * scaled past 30 s, and a rollback before the restart would leave no
	 * failure to diagnose. */
	fl.probation_s = 600;
	CHECK(write_cfg(e, e->port, "info") == 0, "config");
	int nfd = notify_open(e, wd_ms);
	CHECK(nfd >= 0, "notify socket");
	int ok = itest_start_agent(e);
	notify_env_clear();
	CHECK(ok == 0, "agent");
	cJSON *o = show_until(e, is_status, "online", 30000 * itest_scale);
	CHECK(o && is_status(o, "online"), "agent online");
	cJSON_Delete(o);

	snprintf(set, sizeof(set), "{\"set\":{\"broker.uri\":\"mqtts://127.0.0.1:%d\"}}", port);
	CHECK(cmd(e, &r, "config.set", set) == 0 && reply_ok(r), "config.set broker.uri to the blackhole");
	cJSON_Delete(r);
	/* Connect gives up after 2 s, then the diagnosis (3 s at most) runs:
	 * 14 s covers both with room. Both are wall-clock bounds, so the
	 * watch grows by a little, not by the itest_scale, under an emulator. */
	int64_t gap = watchdog_gap(nfd, 14000 + (itest_scale > 1 ? 6000 : 0), &count);
	CHECK(gap <= wd_ms / 2 + 1000 * itest_scale, "the watchdog went %lld ms without WATCHDOG=1 (%d received; limit %lld)",
	      (long long)gap, count, (long long)(wd_ms / 2 + 1000 * itest_scale));
	CHECK(th_wait_log(e->agent_log, "diagnosing the failed broker connection", 1000) == 0,
	      "no diagnosis was started");
	CHECK(th_wait_log(e->agent_log, "no answer within 3000 ms", 1000) == 0,
	      "the diagnosis did not end, bounded, with 'no answer within 3000 ms'");

	/* SIGTERM while a diagnosis runs: the first failure after a start is
	 * diagnosed, so restart (still on probation) and stop it just then. */
	CHECK(th_stop(e->agent, 10000 * itest_scale) == 0, "agent stop");
	snprintf(e->agent_log, sizeof(e->agent_log), "%s/agent-2.log", e->dir);
	CHECK(itest_start_agent(e) == 0, "agent restart");
	CHECK(th_wait_log(e->agent_log, "diagnosing the failed broker connection", 20000 * itest_scale) == 0,
	      "no diagnosis after the restart");
	int64_t t0 = th_now_ms();
	CHECK(th_kill(e->agent, SIGTERM) == 0, "SIGTERM");
	int status = 0;
	int w = th_wait(e->agent, 10000 * itest_scale, &status);
	int64_t took = th_now_ms() - t0;
	CHECK(w == 0, "the agent did not exit within 10 s of SIGTERM");
	e->agent = 0;
	CHECK(th_exit_code(status) == 0, "exit code %d after SIGTERM", th_exit_code(status));
	CHECK(took <= 2000 * itest_scale, "the agent took %lld ms to stop after SIGTERM during a diagnosis",
	      (long long)took);
	CHECK(th_wait_log(e->agent_log, "broker connection diagnosis", 0) != 0,
	      "the diagnosis had already ended: SIGTERM did not land during it");
	close(nfd);
	blackhole_close(bh);
	return 0;
}

/* Start (another) agent on the same store, logging to agent-<n>.log, and
 * wait for `expect` in its log (msg="started": it has read its probation
 * state and opened the store). */
static int restart_on_probation(struct itest *e, int n, const char *expect)
{
	snprintf(e->agent_log, sizeof(e->agent_log), "%s/agent-%d.log", e->dir, n);
	CHECK(itest_start_agent(e) == 0, "agent start %d", n);
	CHECK(th_wait_log(e->agent_log, expect, 20000 * itest_scale) == 0, "start %d: no '%s' in its log", n, expect);
	return 0;
}

static int kill9(struct itest *e)
{
	CHECK(th_kill(e->agent, SIGKILL) == 0, "kill -9");
	int status;
	CHECK(th_wait(e->agent, 10000 * itest_scale, &status) == 0, "reap");
	e->agent = 0;
	return 0;
}

/* Regression (security review, issue 12): every start re-armed the
 * probation from "now", so an agent killed (watchdog, crash) more often
 * than the probation lasts never rolled back. The deadline is now the one
 * set by config.set: restarts and kill -9 keep it; and a crash loop rolls
 * back at the 3rd start without waiting for it. */
static int fleet_probation_restart(struct itest *e)
{
	cJSON *r = NULL;
	int bh[4];
	char set[200], want[100];
	int port = blackhole_open(bh);
	CHECK(port > 0, "cannot make a blackhole listener");
	fl.broker_extra = ", \"remote_hosts\": \"127.0.0.1\", \"connect_timeout_s\": 2";
	CHECK(write_cfg(e, e->port, "info") == 0, "config");
	snprintf(e->agent_log, sizeof(e->agent_log), "%s/agent-1.log", e->dir);
	CHECK(itest_start_agent(e) == 0, "agent");
	cJSON *o = show_until(e, is_status, "online", 30000 * itest_scale);
	CHECK(o && is_status(o, "online"), "agent online");
	cJSON_Delete(o);
	snprintf(want, sizeof(want), "ssl://127.0.0.1:%d", e->port);

	/* 1. The deadline survives restarts: 30 s from the change. */
	snprintf(set, sizeof(set), "{\"set\":{\"broker.uri\":\"mqtts://127.0.0.1:%d\"}}", port);
	CHECK(cmd(e, &r, "config.set", set) == 0 && reply_ok(r) && jnum(r, "result.probation_s") == 30,
	      "config.set broker.uri on probation");
	int64_t t_change = th_now_ms();
	cJSON_Delete(r);
	th_sleep_ms(8000);
	CHECK(kill9(e) == 0, "kill");
	CHECK(restart_on_probation(e, 2, STARTED) == 0, "restart 2");
	th_sleep_ms(8000);
	CHECK(kill9(e) == 0, "kill");
	CHECK(restart_on_probation(e, 3, STARTED) == 0, "restart 3");
	/* Re-armed at each start it would end 30 s after this one (~46 s). */
	CHECK(th_wait_log(e->agent_log, "ROLLED BACK", 60000 * itest_scale) == 0, "no rollback");
	int64_t at = th_now_ms() - t_change;
	CHECK(at >= 28000 && at <= 30000 + 5000 * itest_scale,
	      "rolled back %lld ms after the change; the probation was 30 s from the change", (long long)at);
	o = show_until(e, rolled_back, NULL, 30000 * itest_scale);
	CHECK(o && rolled_back(o, NULL), "back online on the old broker, rollback reported");
	cJSON_Delete(o);
	CHECK(cmd(e, &r, "config.get", "{\"key\":\"broker.uri\"}") == 0 && reply_ok(r) &&
		      strcmp(jstr(r, "result.value"), want) == 0 && cJSON_IsFalse(jget(r, "result.probation")),
	      "rolled back to %s (got %s)", want, jstr(r, "result.value"));
	cJSON_Delete(r);

	/* 2. A crash loop: the 3rd start on one probation rolls back at once,
	 * long before its deadline. */
	CHECK(cmd(e, &r, "config.set", set) == 0 && reply_ok(r), "config.set broker.uri again");
	cJSON_Delete(r);
	t_change = th_now_ms();
	CHECK(th_wait_log(e->agent_log, "reconnecting with new broker settings", 10000 * itest_scale) == 0, "reconnects");
	CHECK(kill9(e) == 0, "kill");
	CHECK(restart_on_probation(e, 4, STARTED) == 0, "restart 4");
	CHECK(kill9(e) == 0, "kill");
	CHECK(restart_on_probation(e, 5, STARTED) == 0, "restart 5");
	CHECK(kill9(e) == 0, "kill");
	CHECK(restart_on_probation(e, 6, STARTED) == 0, "restart 6");
	CHECK(th_wait_log(e->agent_log, "ROLLED BACK", 3000 * itest_scale) == 0, "the 3rd start on a probation did not roll back");
	CHECK(th_wait_log(e->agent_log, "started 3 times on it", 0) == 0, "the rollback names the crash loop");
	{
		char log5[600];
		snprintf(log5, sizeof(log5), "%s/agent-5.log", e->dir);
		CHECK(th_wait_log(log5, "start=2 of 2", 0) == 0, "the 2nd start on the probation was not counted");
	}
	CHECK(th_now_ms() - t_change < 25000, "the crash loop was rolled back only at the deadline");
	o = show_until(e, is_status, "online", 30000 * itest_scale);
	CHECK(o && is_status(o, "online"), "back online after the crash-loop rollback");
	cJSON_Delete(o);
	CHECK(cmd(e, &r, "config.get", "{\"key\":\"broker.uri\"}") == 0 && reply_ok(r) &&
		      strcmp(jstr(r, "result.value"), want) == 0,
	      "rolled back to %s (got %s)", want, jstr(r, "result.value"));
	cJSON_Delete(r);
	blackhole_close(bh);
	return 0;
}

/* Regression (security review, issue 12): any console credential could move
 * the device to any broker whose certificate chains to the CA (a rogue
 * broker then reads and acks every event). Only hosts the local file lists
 * in broker.remote_hosts are accepted; the list itself is local only. */
static int fleet_broker_allowlist(struct itest *e)
{
	cJSON *r = NULL;
	char set[200], extra[100], overlay[600];
	int allowed = th_free_port(), other = th_free_port();
	CHECK(allowed > 0 && other > 0 && allowed != other, "ports");
	snprintf(extra, sizeof(extra), ", \"remote_hosts\": \"127.0.0.1:%d\"", allowed);
	fl.broker_extra = extra;
	CHECK(write_cfg(e, e->port, "info") == 0, "config");
	CHECK(itest_start_agent(e) == 0, "agent");
	cJSON *o = show_until(e, is_status, "online", 30000 * itest_scale);
	CHECK(o && is_status(o, "online"), "agent online");
	cJSON_Delete(o);
	snprintf(overlay, sizeof(overlay), "%s/private/config.remote.json", e->store);

	static const char *const refused[] = {"mqtts://127.0.0.1:%d", "mqtts://localhost:%d", "mqtts://evil.example:%d"};
	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
		char uri[100];
		snprintf(uri, sizeof(uri), refused[i], i == 0 ? other : allowed);
		snprintf(set, sizeof(set), "{\"set\":{\"broker.uri\":\"%s\",\"sync.window\":4}}", uri);
		CHECK(cmd(e, &r, "config.set", set) == 1 && r && !reply_ok(r), "config.set broker.uri %s accepted", uri);
		CHECK(strcmp(jstr(r, "error.code"), "bad_args") == 0 &&
			      strcmp(jstr(r, "error.field"), "args.set.broker.uri") == 0 &&
			      strstr(jstr(r, "error.message"), "broker.remote_hosts"),
		      "refusal of %s: code %s field %s message %s", uri, jstr(r, "error.code"), jstr(r, "error.field"),
		      jstr(r, "error.message"));
		cJSON_Delete(r);
	}
	CHECK(cmd(e, &r, "config.set", "{\"set\":{\"broker.remote_hosts\":\"evil.example\"}}") == 1 && r &&
		      strcmp(jstr(r, "error.field"), "args.set.broker.remote_hosts") == 0,
	      "broker.remote_hosts set remotely");
	cJSON_Delete(r);
	/* nothing changed: version 0, the local URI and window, no overlay */
	char want[100];
	snprintf(want, sizeof(want), "ssl://127.0.0.1:%d", e->port);
	CHECK(cmd(e, &r, "config.get", "{\"key\":\"broker.uri\"}") == 0 && reply_ok(r), "config.get");
	CHECK(jnum(r, "result.version") == 0 && strcmp(jstr(r, "result.value"), want) == 0,
	      "config changed by a refused config.set: version %.0f uri %s", jnum(r, "result.version"),
	      jstr(r, "result.value"));
	cJSON_Delete(r);
	CHECK(cmd(e, &r, "config.get", "{\"key\":\"sync.window\"}") == 0 && reply_ok(r) && jnum(r, "result.value") == 8,
	      "sync.window changed by a refused config.set");
	cJSON_Delete(r);
	CHECK(access(overlay, F_OK) != 0, "an overlay was written by a refused config.set");
	/* the listed host:port is accepted (on probation) */
	snprintf(set, sizeof(set), "{\"set\":{\"broker.uri\":\"mqtts://127.0.0.1:%d\"}}", allowed);
	CHECK(cmd(e, &r, "config.set", set) == 0 && reply_ok(r) && strcmp(jstr(r, "result.applies"), "reconnect") == 0,
	      "config.set broker.uri to the listed host");
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

static int fleet_signed(struct itest *e)
{
	cJSON *r = NULL;
	char key[600], pub[600], extra[700];
	snprintf(key, sizeof(key), "%s/central.key", e->dir);
	snprintf(pub, sizeof(pub), "%s/command.pub", e->dir);
	CHECK(write_pub(key, pub) == 0, "public key");
	snprintf(extra, sizeof(extra), ", \"command_key_file\": \"%s\"", pub);
	fl.extra = extra;
	CHECK(write_cfg(e, e->port, "info") == 0, "config");
	CHECK(itest_start_agent(e) == 0, "agent");
	cJSON *o = show_until(e, is_status, "online", 30000 * itest_scale);
	CHECK(o && is_status(o, "online") && cJSON_IsTrue(jget(o, "state.signed_commands")), "agent online, signed only");
	cJSON_Delete(o);

	CHECK(cmd(e, &r, "ping", NULL) == 1 && r && strcmp(jstr(r, "error.code"), "unsigned") == 0, "unsigned refused");
	cJSON_Delete(r);
	char timeout[32];
	snprintf(timeout, sizeof(timeout), "%d", 15000 * itest_scale);
	const char *a[] = {"cmd", "s1/" DEVICE, "ping", "--sign-key", key, "--timeout-ms", timeout, NULL};
	CHECK(ctl(e, &r, a) == 0 && reply_ok(r), "signed ping obeyed");
	cJSON_Delete(r);
	/* Fail closed: when the agent cannot save the command's id (a
	 * directory where its replay-guard file goes: the atomic rename
	 * fails, root or not), the command is refused, not run unrecorded. */
	char seen[600];
	snprintf(seen, sizeof(seen), "%s/private/fleet_seen_ids", e->store);
	CHECK(unlink(seen) == 0 && mkdir(seen, 0700) == 0, "replace %s by a directory", seen);
	const char *c[] = {"cmd", "s1/" DEVICE, "flush", "--sign-key", key, "--timeout-ms", timeout, NULL};
	CHECK(ctl(e, &r, c) == 1 && r && strcmp(jstr(r, "error.code"), "failed") == 0 &&
		      strstr(jstr(r, "error.message"), "not executed"),
	      "a command whose id cannot be saved is refused");
	cJSON_Delete(r);
	CHECK(rmdir(seen) == 0, "rmdir %s", seen);
	CHECK(ctl(e, &r, c) == 0 && reply_ok(r), "obeyed once its id can be saved");
	cJSON_Delete(r);
	/* signed with another key */
	char other[600];
	snprintf(other, sizeof(other), "%s/client.key", e->dir);
	const char *b[] = {"cmd", "s1/" DEVICE, "ping", "--sign-key", other, "--timeout-ms", timeout, NULL};
	CHECK(ctl(e, &r, b) == 1 && r && strcmp(jstr(r, "error.code"), "bad_signature") == 0, "wrong key refused");
	cJSON_Delete(r);
	return 0;
}

/* ---- hostile device text ---- */

/* The first byte a terminal would act on (C0 other than newline, DEL, C1 as
 * UTF-8 or raw), or -1. */
static long first_control(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	for (size_t i = 0; i < n; i++)
		if ((p[i] < 0x20 && p[i] != '\n') || p[i] == 0x7f || (p[i] >= 0x80 && p[i] <= 0x9f && (i == 0 || p[i - 1] == 0xc2)))
			return (long)i;
	return -1;
}

static int fleet_escapes(struct itest *e)
{
	char err[256], state[1024], health[1024];
	th_mqtt_opts o = {.uri = e->uri, .client_id = "pos-evil", .ca_file = e->ca};
	th_mqtt *m = th_mqtt_connect(&o, err, sizeof(err));
	CHECK(m, "connect: %s", err);
	/* JSON escapes reach the console as the raw bytes (ESC, BEL); the C1
	 * CSI (U+009B) is sent as raw UTF-8, which is valid JSON too. */
	int64_t now = th_now_ms();
	snprintf(state, sizeof(state),
		 "{\"v\":1,\"state\":\"\\u001b[2Joffline\",\"reason\":\"\\u001b[1;1Hall good\\u001b[K\","
		 "\"version\":\"1.0\\u001b]0;pwned\\u0007\",\"arch\":\"x\xc2\x9b" "2J\\u007f\",\"protocol\":1,"
		 "\"birth_seq\":%lld,\"ts\":%lld,\"heartbeat_s\":5}",
		 (long long)now, (long long)now);
	snprintf(health, sizeof(health),
		 "{\"v\":1,\"ts\":%lld,\"alarms\":[{\"code\":\"\\u001b[31mRED\\u202e\"}],"
		 "\"cache\":{\"m\\u001b[2J\":{\"cursor\":1,\"rows\":2}},\"outbox\":{\"pending\":3}}",
		 (long long)now);
	int rc1 = th_mqtt_publish_ex(m, "scrm/v1/acme/s1/pos-evil/up/state", state, strlen(state), 1, 1, 10000);
	int rc2 = th_mqtt_publish_ex(m, "scrm/v1/acme/s1/pos-evil/up/health", health, strlen(health), 1, 1, 10000);
	th_mqtt_close(m);
	CHECK(rc1 == 0 && rc2 == 0, "retained state/health published");

	static const char *const list[] = {"list", NULL};
	static const char *const show[] = {"show", "s1/pos-evil", NULL};
	static const char *const *const human[] = {list, show};
	for (int i = 0; i < 2; i++) {
		CHECK(ctl_run(e, human[i], 0) == 0, "fleet %s exits 0", human[i][0]);
		size_t n = 0;
		char *out = th_read_file(e->ctl_out, &n);
		CHECK(out, "fleet %s: no output", human[i][0]);
		long at = first_control(out, n);
		int shown = strstr(out, "\\x1b[2J") != NULL && strstr(out, "pos-evil") != NULL;
		if (at >= 0 || !shown)
			fprintf(stderr, "fleet %s printed:\n%s\n", human[i][0], out);
		free(out);
		CHECK(at < 0, "fleet %s: a control byte reached the terminal at offset %ld", human[i][0], at);
		CHECK(shown, "fleet %s: the escape is not shown as text (\\x1b[2J)", human[i][0]);
	}

	/* --json: valid, terminal-safe, and the data unchanged */
	cJSON *l = NULL;
	CHECK(ctl(e, &l, list) == 0 && l, "fleet list --json");
	size_t n = 0;
	char *out = th_read_file(e->ctl_out, &n);
	long at = out ? first_control(out, n) : 0;
	free(out);
	const cJSON *ag = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(l, "agents"), 0);
	int same = strcmp(jstr(ag, "state.version"), "1.0\x1b]0;pwned\x07") == 0 &&
		   strcmp(jstr(ag, "state.arch"), "x\xc2\x9b" "2J\x7f") == 0 && strcmp(jstr(ag, "status"), "\x1b[2Joffline") == 0;
	cJSON_Delete(l);
	CHECK(at < 0, "fleet list --json: a control byte at offset %ld", at);
	CHECK(same, "fleet list --json: the device's strings changed");
	return 0;
}

static const struct itest_suite suite = {
	.program = "fleet_itest",
	.setup = setup,
	.scenarios = (const struct itest_scenario[]){
		{"fleet_presence", fleet_presence},
		{"fleet_commands", fleet_commands},
		{"fleet_rollback", fleet_rollback},
		{"fleet_signed", fleet_signed},
		{"fleet_probe_blackhole", fleet_probe_blackhole},
		{"fleet_probation_restart", fleet_probation_restart},
		{"fleet_broker_allowlist", fleet_broker_allowlist},
		{"fleet_escapes", fleet_escapes},
		{NULL, NULL},
	},
};

ITEST_MAIN(suite)
