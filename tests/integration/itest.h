/* SPDX-License-Identifier: Apache-2.0 */
/*
 * itest: the one runner of the integration tests. What every scenario
 * program shares: CHECK and the failure count, the scale for slow machines
 * and emulators, a temporary directory with the harness's certificates and
 * the usual paths in it, the agent's config file, starting scrm-agent and
 * scrm-central, stopping everything (logs dumped and files kept on failure),
 * what central's database and the outbox hold, and main() over a table of
 * scenarios. A scenario program is its scenarios, their helpers and an
 * itest_suite; the processes, broker and PKI come from tests/support/harness.h.
 *
 * Usage of every program: PROGRAM SCENARIO (ctest runs one scenario per test).
 * Environment: see tests/support/harness.h; SCRM_TEST_SCALE multiplies every
 * time limit (default 1, or the suite's emulator_scale under
 * SCRM_TEST_EMULATOR); SCRM_KEEP (or SCRM_TEST_KEEP) keeps the files.
 */
#ifndef SCRM_ITEST_H
#define SCRM_ITEST_H

#include "harness.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

/* The device most scenarios run as. */
#define ITEST_DEVICE "pos-01"

/* Time limits are multiplied by this; never timing asserts. */
extern int itest_scale;
/* CHECKs that failed; a scenario that gives up without one still fails. */
extern int itest_failures;

/* Fail the scenario (or helper) with a message: counted, returns -1. */
#define CHECK(cond, ...)                                                      \
	do {                                                                  \
		if (!(cond)) {                                                \
			itest__fail(__FILE__, __LINE__, __VA_ARGS__);         \
			return -1;                                            \
		}                                                             \
	} while (0)

/* The same, for code that must clean up: counted, then goto fail. */
#define CHECK_GOTO(cond, ...)                                                 \
	do {                                                                  \
		if (!(cond)) {                                                \
			itest__fail(__FILE__, __LINE__, __VA_ARGS__);         \
			goto fail;                                            \
		}                                                             \
	} while (0)

void itest__fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* One scenario's world. Paths are under dir; what a suite does not use it
 * simply leaves alone. */
struct itest {
	char *dir;
	char store[512];       /* dir/store: the agent's store_dir */
	char central_db[512];  /* dir/central.db */
	char agent_cfg[512];   /* dir/agent.json */
	char agent_log[512];   /* dir/agent.log */
	char central_log[512]; /* dir/central.log */
	char ctl_out[512];     /* dir/ctl.out: scrmctl's output */
	char extra_log[512];   /* another log to show on failure, or "" */
	char ca[512];          /* dir/ca.crt: the harness CA */
	char uri[64];          /* ssl://127.0.0.1:port, central's and scrmctl's broker */
	th_broker *broker;
	int port;
	int mtls; /* the broker requires client certificates */
	pid_t agent, central;
};

/* The agent's config file. NULL / 0 members take the default named. */
struct itest_agent {
	const char *path;                          /* e->agent_cfg */
	const char *tenant, *store_id, *device_id; /* "acme", "s1", ITEST_DEVICE */
	const char *store_dir;                     /* e->store */
	int port;                                  /* e->port */
	const char *ca_file;                       /* e->ca */
	const char *broker;    /* more "broker" members, each after ", " */
	int window;            /* sync.window; 0: not set */
	int ack_timeout_ms;    /* sync.ack_timeout_ms; 0: not set */
	const char *sections;  /* more top-level members ("\"cache\": {...}"), or NULL */
	const char *log_level; /* log.level; NULL: no "log" */
};
int itest_agent_cfg(struct itest *e, const struct itest_agent *a);

/* scrm-agent --config e->agent_cfg, logging to e->agent_log. */
int itest_start_agent(struct itest *e);
/* The harness broker with the harness's server certificate `cert`
 * ("server", ...), requiring client certificates if e->mtls. */
int itest_start_broker(struct itest *e, const char *cert);
/* scrm-central run --strict on e->uri with e->central_db, then the extra
 * arguments (NULL-terminated; NULL for none); waits for its ready file. */
int itest_start_central(struct itest *e, const char *const *extra);
/* The first column of the first row of sql in central's database; -1 if
 * there is no database (or table) yet. */
int64_t itest_central_int(struct itest *e, const char *sql);
/* The outbox's figures in store_dir (scrm_outbox_get_stats); -1s if
 * unreadable. */
int64_t itest_pending(const char *store_dir);
int64_t itest_last_seq(const char *store_dir);

/* dir/name into out. */
void itest_path(char *out, size_t n, const char *dir, const char *name);

struct itest_scenario {
	const char *name;
	int (*fn)(struct itest *e);
};

struct itest_suite {
	const char *program;
	const struct itest_scenario *scenarios; /* up to {NULL, NULL} */
	int emulator_scale; /* the scale under SCRM_TEST_EMULATOR; 0 = 4 */
	int bare;           /* only the directory: no certificates, no port */
	/* Before setup, in this process; non-zero is the exit code (77: skip). */
	int (*before)(const char *scenario);
	/* After the common setup: what the suite's scenarios all need. */
	int (*setup)(struct itest *e);
};

/* Runs argv[1] of the suite: 0 passed, 1 failed, 2 usage, or before's code. */
int itest_main(const struct itest_suite *s, int argc, char **argv);

/* The scenario program's main(): ITEST_MAIN(suite) after its itest_suite. */
#define ITEST_MAIN(suite)                                      \
	int main(int argc, char **argv)                        \
	{                                                      \
		return itest_main(&(suite), argc, argv);       \
	}

#endif
