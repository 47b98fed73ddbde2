/* SPDX-License-Identifier: Apache-2.0 */
/*
 * itest: the integration tests' runner (see itest.h) — setup and teardown of
 * a scenario's directory, the agent's config, starting the programs under
 * test, reading what central and the outbox hold, and main().
 */
#include "itest.h"

#include <scrm/scrm.h>

#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int itest_scale = 1;
int itest_failures;

void itest__fail(const char *file, int line, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "FAIL %s:%d: ", file, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	itest_failures++;
}

void itest_path(char *out, size_t n, const char *dir, const char *name)
{
	snprintf(out, n, "%s/%s", dir, name);
}

static int itest__setup(struct itest *e, const struct itest_suite *s, const char *name)
{
	memset(e, 0, sizeof(*e));
	e->dir = th_tmpdir(name);
	CHECK(e->dir, "tmpdir");
	if (s->bare)
		return s->setup ? s->setup(e) : 0;
	CHECK(th_certs_make(e->dir) == 0, "certificates");
	itest_path(e->store, sizeof(e->store), e->dir, "store");
	itest_path(e->central_db, sizeof(e->central_db), e->dir, "central.db");
	itest_path(e->agent_cfg, sizeof(e->agent_cfg), e->dir, "agent.json");
	itest_path(e->agent_log, sizeof(e->agent_log), e->dir, "agent.log");
	itest_path(e->central_log, sizeof(e->central_log), e->dir, "central.log");
	itest_path(e->ctl_out, sizeof(e->ctl_out), e->dir, "ctl.out");
	itest_path(e->ca, sizeof(e->ca), e->dir, "ca.crt");
	e->port = th_free_port();
	CHECK(e->port > 0, "free port");
	snprintf(e->uri, sizeof(e->uri), "ssl://127.0.0.1:%d", e->port);
	return s->setup ? s->setup(e) : 0;
}

static void itest__dump(const char *path, size_t max_bytes)
{
	if (path[0] && access(path, F_OK) == 0)
		th_dump_log(path, max_bytes);
}

static void itest__teardown(struct itest *e)
{
	if (e->agent > 0)
		th_stop(e->agent, 5000);
	if (e->central > 0)
		th_stop(e->central, 5000);
	th_broker_free(e->broker);
	if (!e->dir)
		return;
	if (itest_failures) {
		itest__dump(e->agent_log, 6000);
		itest__dump(e->central_log, 3000);
		itest__dump(e->ctl_out, 2000);
		itest__dump(e->extra_log, 3000);
		fprintf(stderr, "(test files kept in %s)\n", e->dir);
	} else if (!getenv("SCRM_KEEP") && !getenv("SCRM_TEST_KEEP")) {
		th_rmtree(e->dir);
	}
	free(e->dir);
}

int itest_agent_cfg(struct itest *e, const struct itest_agent *a)
{
	char cfg[8192], sync[200] = "", log[100] = "";
	if (a->window)
		snprintf(sync, sizeof(sync), "\"window\": %d, ", a->window);
	if (a->ack_timeout_ms)
		snprintf(sync + strlen(sync), sizeof(sync) - strlen(sync), "\"ack_timeout_ms\": %d, ", a->ack_timeout_ms);
	if (a->log_level)
		snprintf(log, sizeof(log), ",\n  \"log\": {\"level\": \"%s\"}", a->log_level);
	int n = snprintf(cfg, sizeof(cfg),
			 "{\n  \"tenant\": \"%s\", \"store_id\": \"%s\", \"device_id\": \"%s\",\n"
			 "  \"store_dir\": \"%s\",\n"
			 "  \"broker\": {\"uri\": \"mqtts://127.0.0.1:%d\", \"ca_file\": \"%s\"%s},\n"
			 "  \"sync\": {%s\"backoff_min_ms\": 100, \"backoff_max_ms\": 1000}%s%s%s\n}\n",
			 a->tenant ? a->tenant : "acme", a->store_id ? a->store_id : "s1",
			 a->device_id ? a->device_id : ITEST_DEVICE, a->store_dir ? a->store_dir : e->store,
			 a->port ? a->port : e->port, a->ca_file ? a->ca_file : e->ca, a->broker ? a->broker : "", sync,
			 a->sections ? ",\n  " : "", a->sections ? a->sections : "", log);
	CHECK(n > 0 && (size_t)n < sizeof(cfg), "agent config too long");
	const char *path = a->path ? a->path : e->agent_cfg;
	CHECK(th_write_file(path, cfg) == 0, "write %s", path);
	return 0;
}

int itest_start_agent(struct itest *e)
{
	const char *argv[] = {th_bin("SCRM_AGENT_BIN"), "--config", e->agent_cfg, NULL};
	e->agent = th_spawn_target(argv, e->agent_log);
	CHECK(e->agent > 0, "spawn agent");
	return 0;
}

int itest_start_broker(struct itest *e, const char *cert)
{
	e->broker = th_broker_start(e->dir, e->port, cert, e->mtls);
	CHECK(e->broker, "broker start");
	return 0;
}

int itest_start_central(struct itest *e, const char *const *extra)
{
	char ready[600];
	const char *argv[40] = {th_bin("SCRM_CENTRAL_BIN"), "run", "--strict", "--broker", e->uri, "--ca", e->ca, "--db",
				e->central_db, "--share", "scrm-central", "--ready-file", ready};
	size_t n = 13;
	for (; extra && *extra && n < 39; extra++)
		argv[n++] = *extra;
	argv[n] = NULL;
	itest_path(ready, sizeof(ready), e->dir, "central.ready");
	unlink(ready);
	e->central = th_spawn_target(argv, e->central_log);
	CHECK(e->central > 0, "spawn central");
	for (int i = 0; i < 300 * itest_scale && access(ready, F_OK) != 0; i++)
		th_sleep_ms(100);
	CHECK(access(ready, F_OK) == 0, "central not ready (log %s)", e->central_log);
	return 0;
}

int64_t itest_central_int(struct itest *e, const char *sql)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	int64_t v = -1;
	if (access(e->central_db, F_OK) == 0 &&
	    sqlite3_open_v2(e->central_db, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
		sqlite3_busy_timeout(db, 5000);
		if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
			v = sqlite3_column_int64(st, 0);
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

static scrm_outbox_stats itest__outbox_stats(const char *store_dir)
{
	scrm_store *st;
	scrm_outbox_stats s = {.pending = -1, .last_seq = -1};
	if (scrm_store_open(store_dir, NULL, &st) == SCRM_OK) {
		if (scrm_outbox_get_stats(st, &s) != SCRM_OK)
			s.pending = s.last_seq = -1;
		scrm_store_close(st);
	}
	return s;
}

int64_t itest_pending(const char *store_dir)
{
	return itest__outbox_stats(store_dir).pending;
}

int64_t itest_last_seq(const char *store_dir)
{
	return itest__outbox_stats(store_dir).last_seq;
}

int itest_main(const struct itest_suite *s, int argc, char **argv)
{
	const char *sc = getenv("SCRM_TEST_SCALE");
	if (sc && strtol(sc, NULL, 10) > 0)
		itest_scale = (int)strtol(sc, NULL, 10);
	else if (getenv("SCRM_TEST_EMULATOR") && *getenv("SCRM_TEST_EMULATOR"))
		itest_scale = s->emulator_scale ? s->emulator_scale : 4;
	/* a child or the broker gone mid-write is a failed CHECK, not a death */
	signal(SIGPIPE, SIG_IGN);
	for (size_t i = 0; argc == 2 && s->scenarios[i].name; i++) {
		const struct itest_scenario *t = &s->scenarios[i];
		if (strcmp(argv[1], t->name) != 0)
			continue;
		if (s->before) {
			int rc = s->before(t->name);
			if (rc)
				return rc;
		}
		struct itest e;
		int64_t t0 = th_now_ms();
		/* A scenario that gives up without a CHECK (a wait that timed
		 * out) still fails. */
		if (itest__setup(&e, s, t->name) != 0 || t->fn(&e) != 0) {
			if (itest_failures == 0)
				itest_failures++;
		}
		itest__teardown(&e);
		printf("%s: %s in %.1f s\n", t->name, itest_failures ? "FAILED" : "passed",
		       (double)(th_now_ms() - t0) / 1000.0);
		return itest_failures ? 1 : 0;
	}
	fprintf(stderr, "usage: %s SCENARIO\nscenarios:", s->program);
	for (size_t i = 0; s->scenarios[i].name; i++)
		fprintf(stderr, " %s", s->scenarios[i].name);
	fprintf(stderr, "\n");
	return 2;
}
