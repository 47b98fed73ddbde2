/* SPDX-License-Identifier: Apache-2.0 */
/*
 * commands_test: fleet command handlers (agent/daemon/commands/) run on a
 * cmd__ctx over a real outbox in a temp dir — no broker, no daemon loop —
 * and the command table (agent/proto/commands.def): every registered name
 * parses and dispatches to a handler, and under an untrusted clock only the
 * read-only ones get that far; and the heartbeat's body built from figures
 * alone (agent/proto/heartbeat.c). scrm_cachegen plays central and signs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cachegen.h"
#include "cmdsign.h"
#include "commands.h"
#include "crypto.h"
#include "err.h"
#include "fleet.h"
#include "heartbeat.h"
#include "log.h"
#include "outbox.h"
#include "sbuf.h"
#include "testutil.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TENANT "acme"
#define STORE "s0042"
#define DEVICE "pos-01"
#define NOW 1764000000000LL

typedef struct fx {
	char *dir;
	outbox *ob;
	int cmd_level, erasure_pending, health_calls, forget_calls;
	int64_t probation_ms;
	cmd__ctx c;
	fleet__cmd cmd;
	fleet__error err;
	sbuf res;
} fx;

static char *keydir;
static cg_signer *central;
static crypto__verifier *vf;

static int group_setup(void **state)
{
	(void)state;
	keydir = tu_tmpdir("commands-keys");
	char *k = tu_join(keydir, "central");
	int rc = cs_key_pair(k, 1, &central, &vf);
	free(k);
	return rc;
}

static int group_teardown(void **state)
{
	(void)state;
	crypto__verifier_free(vf);
	cg_signer_close(central);
	tu_rmtree(keydir);
	free(keydir);
	return 0;
}

static void stub_health(void *d, sbuf *out)
{
	fx *f = d;
	f->health_calls++;
	sbuf__puts(out, "{\"v\":1,\"stub\":true}");
}

static int stub_forget(void *d, const char *member_id)
{
	fx *f = d;
	(void)member_id;
	f->forget_calls++;
	return SCRM_OK;
}

static int setup(void **state)
{
	fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	f->dir = tu_tmpdir("commands");
	log__set_level(-1);
	assert_int_equal(outbox__open(f->dir, DEVICE, 0, &f->ob), SCRM_OK);
	f->cmd_level = -1;
	f->c = (cmd__ctx){.ob = f->ob,
			  .birth_seq = 42,
			  .started_mono = 0,
			  .cmd_level = &f->cmd_level,
			  .erasure_pending = &f->erasure_pending,
			  .probation_ms = &f->probation_ms,
			  .d = f,
			  .health = stub_health,
			  .forget = stub_forget};
	sbuf__init(&f->res);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fx *f = *state;
	fleet__cmd_free(&f->cmd);
	sbuf__free(&f->res);
	outbox__close(f->ob);
	tu_rmtree(f->dir);
	free(f->dir);
	free(f);
	return 0;
}

/* Parse `text` as the daemon does (unsigned, clock trusted) and run it. */
static int run(fx *f, const char *text)
{
	fleet__cmd_free(&f->cmd);
	sbuf__reset(&f->res);
	if (fleet__parse_command(text, strlen(text), TENANT, STORE, DEVICE, NULL, NOW, 1, NULL, &f->cmd, &f->err))
		return -1;
	return cmd__run(&f->c, &f->cmd, &f->res, &f->err);
}

static cJSON *result(fx *f)
{
	assert_false(f->res.oom);
	cJSON *o = cJSON_Parse(f->res.p);
	assert_non_null(o);
	return o;
}

static void ping_answers_without_a_broker(void **state)
{
	fx *f = *state;
	assert_int_equal(run(f, "{\"v\":1,\"cmd\":\"ping\"}"), 0);
	cJSON *o = result(f);
	assert_true(cJSON_IsTrue(cJSON_GetObjectItem(o, "pong")));
	assert_int_equal(cJSON_GetObjectItem(o, "birth_seq")->valueint, 42);
	assert_true(cJSON_IsNumber(cJSON_GetObjectItem(o, "uptime_ms")));
	assert_true(cJSON_IsNumber(cJSON_GetObjectItem(o, "wall_ms")));
	cJSON_Delete(o);
}

static void status_is_the_health_hook(void **state)
{
	fx *f = *state;
	assert_int_equal(run(f, "{\"v\":1,\"cmd\":\"status\"}"), 0);
	assert_int_equal(f->health_calls, 1);
	assert_string_equal(f->res.p, "{\"v\":1,\"stub\":true}");
}

static void flush_reports_the_outbox(void **state)
{
	fx *f = *state;
	assert_int_equal(run(f, "{\"v\":1,\"cmd\":\"flush\"}"), 0);
	assert_string_equal(f->res.p, "{\"pending\":0,\"in_flight_batches\":0}");
}

static void alarm_clear(void **state)
{
	fx *f = *state;
	assert_int_equal(outbox__alarm_raise(f->ob, "disk_full", "test", NOW), SCRM_OK);
	assert_int_equal(run(f, "{\"v\":1,\"cmd\":\"alarm.clear\",\"args\":{\"code\":\"disk_full\"}}"), 0);
	cJSON *o = result(f);
	assert_string_equal(cJSON_GetObjectItem(o, "cleared")->valuestring, "disk_full");
	const cJSON *al, *alarms = cJSON_GetObjectItem(o, "alarms");
	assert_true(cJSON_IsArray(alarms));
	cJSON_ArrayForEach(al, alarms)
		assert_string_not_equal(cJSON_GetObjectItem(al, "code")->valuestring, "disk_full");
	cJSON_Delete(o);
	/* not an alarm code: bad_args naming the field */
	assert_int_equal(run(f, "{\"v\":1,\"cmd\":\"alarm.clear\",\"args\":{\"code\":\"bogus\"}}"), -1);
	assert_string_equal(f->err.code, "bad_args");
	assert_string_equal(f->err.field, "args.code");
	assert_int_equal(run(f, "{\"v\":1,\"cmd\":\"alarm.clear\"}"), -1);
	assert_string_equal(f->err.field, "args.code");
}

static void log_level_sets_the_command_level(void **state)
{
	fx *f = *state;
	assert_int_equal(run(f, "{\"v\":1,\"cmd\":\"log.level\",\"args\":{\"level\":\"debug\"}}"), 0);
	assert_int_equal(f->cmd_level, log__parse_level("debug"));
	assert_non_null(strstr(f->res.p, "\"level\":\"debug\""));
	assert_int_equal(run(f, "{\"v\":1,\"cmd\":\"log.level\",\"args\":{\"level\":\"loud\"}}"), -1);
	assert_string_equal(f->err.field, "args.level");
	log__set_level(-1);
}

static void cache_commands_without_a_cache(void **state)
{
	fx *f = *state;
	assert_int_equal(run(f, "{\"v\":1,\"cmd\":\"resync\"}"), -1);
	assert_string_equal(f->err.code, "unavailable");
	assert_int_equal(run(f, "{\"v\":1,\"cmd\":\"cache.purge\",\"args\":{\"stream\":\"nope\"}}"), -1);
	assert_string_equal(f->err.code, "bad_args");
	/* the list of streams comes from lib/cache/streams.def */
	assert_string_equal(f->err.message, "'nope' is not a stream (members, coupons, catalogue, inventory, scripts, "
					    "recos, rules or all)");
	/* an erasure without a cache: the outbox's part only */
	assert_int_equal(run(f, "{\"v\":1,\"cmd\":\"member.forget\",\"args\":{\"member_id\":\"m-1\"}}"), 0);
	assert_int_equal(f->forget_calls, 1);
	assert_string_equal(f->res.p, "{\"forgotten\":true,\"cache\":false}");
}

/* Every registered command parses and has a handler; a name the table does
 * not hold is unknown both to the parser and to the dispatch. */
static void table_is_complete(void **state)
{
	fx *f = *state;
	assert_true(fleet__n_commands > 0);
	for (size_t i = 0; i < fleet__n_commands; i++) {
		char t[128];
		snprintf(t, sizeof(t), "{\"v\":1,\"cmd\":\"%s\"}", fleet__commands[i].name);
		fleet__cmd_free(&f->cmd);
		assert_int_equal(fleet__parse_command(t, strlen(t), TENANT, STORE, DEVICE, NULL, NOW, 1, NULL, &f->cmd, &f->err), 0);
		assert_non_null(cmd__find(fleet__commands[i].name));
	}
	assert_null(cmd__find("reboot"));
	fleet__cmd fake;
	memset(&fake, 0, sizeof(fake));
	snprintf(fake.name, sizeof(fake.name), "reboot");
	assert_int_equal(cmd__run(&f->c, &fake, &f->res, &f->err), -1);
	assert_string_equal(f->err.code, "unknown_command");
}

/* A signed command under an untrusted clock: the read-only ones run, the
 * others are refused before any handler sees them. */
static void untrusted_clock_refuses_all_but_read_only(void **state)
{
	fx *f = *state;
	static const char *const names[] = {"ping", "flush"};
	for (size_t i = 0; i < 2; i++) {
		char text[512];
		snprintf(text, sizeof(text),
			 "{\"v\":1,\"id\":\"c-%zu\",\"tenant\":\"" TENANT "\",\"store\":\"" STORE "\",\"device\":\"" DEVICE
			 "\",\"cmd\":\"%s\",\"expires_ms\":%lld}",
			 i, names[i], (long long)(NOW + 60000));
		char *env = cs_envelope(central, text);
		fleet__cmd_free(&f->cmd);
		sbuf__reset(&f->res);
		int rc = fleet__parse_command(env, strlen(env), TENANT, STORE, DEVICE, vf, NOW, 0, NULL, &f->cmd, &f->err);
		free(env);
		if (i == 0) {
			assert_int_equal(rc, 0);
			assert_int_equal(cmd__run(&f->c, &f->cmd, &f->res, &f->err), 0);
			assert_non_null(strstr(f->res.p, "\"pong\":true"));
		} else {
			assert_int_equal(rc, -1);
			assert_string_equal(f->err.code, "clock_untrusted");
		}
	}
}

/* The heartbeat's body (proto/heartbeat.c) from figures alone: what could
 * not be read is null or an error, never zeros, and an unreadable outbox
 * raises outbox_unreadable in the alarms it was given. */
static void heartbeat_from_figures(void **state)
{
	(void)state;
	sbuf out;
	sbuf__init(&out);
	heartbeat__figures f = {.now = NOW, .device = DEVICE, .version = "1.0", .stats_err = "",
				.log_level = "info", .ntp_synced = -1};
	f.st.pending = 3;
	f.st.last_seq = 7;
	heartbeat__json(&out, &f);
	cJSON *o = cJSON_Parse(out.p);
	assert_non_null(o);
	assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "outbox"), "pending")->valueint, 3);
	assert_true(cJSON_IsNull(cJSON_GetObjectItem(o, "cache")));
	assert_true(cJSON_IsNull(cJSON_GetObjectItem(o, "verdicts")));
	assert_true(cJSON_IsNull(cJSON_GetObjectItem(o, "disk")));
	assert_true(cJSON_IsNull(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "clock"), "ntp_synced")));
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "alarms")), 0);
	cJSON_Delete(o);

	f.stats_err = "outbox: disk I/O error";
	f.st.last_seq = 0;
	f.error_since_ms = NOW - 5;
	f.alarms = "[{\"code\":\"disk_full\"}]";
	sbuf__reset(&out);
	heartbeat__json(&out, &f);
	o = cJSON_Parse(out.p);
	assert_non_null(o);
	const cJSON *ob = cJSON_GetObjectItem(o, "outbox");
	assert_string_equal(cJSON_GetObjectItem(ob, "error")->valuestring, "outbox: disk I/O error");
	assert_null(cJSON_GetObjectItem(ob, "pending"));
	const cJSON *al = cJSON_GetObjectItem(o, "alarms");
	assert_int_equal(cJSON_GetArraySize(al), 2);
	assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(al, 1), "code")->valuestring, "outbox_unreadable");
	cJSON_Delete(o);
	sbuf__free(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(ping_answers_without_a_broker, setup, teardown),
		cmocka_unit_test_setup_teardown(status_is_the_health_hook, setup, teardown),
		cmocka_unit_test_setup_teardown(flush_reports_the_outbox, setup, teardown),
		cmocka_unit_test_setup_teardown(alarm_clear, setup, teardown),
		cmocka_unit_test_setup_teardown(log_level_sets_the_command_level, setup, teardown),
		cmocka_unit_test_setup_teardown(cache_commands_without_a_cache, setup, teardown),
		cmocka_unit_test_setup_teardown(table_is_complete, setup, teardown),
		cmocka_unit_test_setup_teardown(untrusted_clock_refuses_all_but_read_only, setup, teardown),
		cmocka_unit_test(heartbeat_from_figures),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
