/* SPDX-License-Identifier: Apache-2.0 */
/*
 * config_test: the daemon's JSON configuration (agent/daemon/config.c). An operator
 * editing /etc/scrm/agent.json must get, for every mistake, an error naming
 * the dotted key and the line it is on; defaults must be what the key table
 * documents; TLS must be the default and plaintext an explicit choice.
 *
 * Links the real config.c with err.c, cJSON and platform/ (file reading).
 * Config texts are generated one key per line so the expected line of every
 * key is known.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "config.h"
#include "testutil.h"

#include <scrm/scrm.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- config text generator ------------------------------------------- */

struct kv {
	const char *key;   /* dotted */
	const char *value; /* raw JSON */
};

static const struct kv base[] = {
	{"tenant", "\"acme\""},
	{"store_id", "\"s0042\""},
	{"device_id", "\"pos-01\""},
	{"broker.uri", "\"mqtts://broker.example:8883\""},
	{"broker.ca_file", "\"/etc/scrm/ca.pem\""},
};
#define NBASE (sizeof(base) / sizeof(base[0]))

/* Build a config from `base` with `over` applied (a value of NULL removes
 * the key), top-level keys first, then sections, one key per line. The line
 * of `probe` (if not NULL) goes to *probe_line. Returns a static buffer. */
static const char *build(const struct kv *over, size_t n_over, const char *probe, int *probe_line)
{
	static char text[8192];
	struct kv all[64];
	size_t n = 0;
	for (size_t i = 0; i < NBASE; i++)
		all[n++] = base[i];
	for (size_t i = 0; i < n_over; i++) {
		size_t j;
		for (j = 0; j < n; j++)
			if (strcmp(all[j].key, over[i].key) == 0)
				break;
		all[j] = over[i];
		if (j == n)
			n++;
	}
	static const char *const sections[] = {"", "broker", "sync", "log", "outbox"};
	size_t o = 0;
	int line = 1;
	o += (size_t)snprintf(text + o, sizeof(text) - o, "{");
	int first_top = 1;
	for (size_t s = 0; s < sizeof(sections) / sizeof(sections[0]); s++) {
		size_t slen = strlen(sections[s]);
		int opened = 0;
		for (size_t i = 0; i < n; i++) {
			const char *k = all[i].key;
			const char *dot = strchr(k, '.');
			int in = slen ? (dot && (size_t)(dot - k) == slen && strncmp(k, sections[s], slen) == 0) : !dot;
			if (!in || !all[i].value)
				continue;
			if (slen && !opened) {
				o += (size_t)snprintf(text + o, sizeof(text) - o, "%s\n  \"%s\": {", first_top ? "" : ",",
						      sections[s]);
				line++;
				first_top = 1;
				opened = 1;
			}
			o += (size_t)snprintf(text + o, sizeof(text) - o, "%s\n    \"%s\": %s", first_top ? "" : ",",
					      slen ? dot + 1 : k, all[i].value);
			line++;
			first_top = 0;
			if (probe && strcmp(probe, k) == 0)
				*probe_line = line;
		}
		if (opened) {
			o += (size_t)snprintf(text + o, sizeof(text) - o, "\n  }");
			line++;
			first_top = 0;
		}
	}
	snprintf(text + o, sizeof(text) - o, "\n}\n");
	return text;
}

static config cfg;

static int parse_with(const struct kv *over, size_t n_over)
{
	const char *t = build(over, n_over, NULL, NULL);
	return config__parse(t, strlen(t), &cfg);
}

static int teardown(void **state)
{
	(void)state;
	config__free(&cfg);
	return 0;
}

/* Parse with one override; expect SCRM_E_CONFIG and a message starting
 * "<key>: <what>" and ending "(line <L>)" where L is where the key is. */
static void expect_key_error(const char *key, const char *value, const char *what)
{
	struct kv o = {key, value};
	int line = 0;
	const char *t = build(&o, 1, key, &line);
	int rc = config__parse(t, strlen(t), &cfg);
	char want_start[128], want_line[32];
	snprintf(want_start, sizeof(want_start), "%s: %s", key, what);
	snprintf(want_line, sizeof(want_line), "(line %d)", line);
	const char *msg = scrm_errmsg();
	if (rc != SCRM_E_CONFIG || strncmp(msg, want_start, strlen(want_start)) != 0 || !strstr(msg, want_line)) {
		print_error("%s = %s: got %d \"%s\", want \"%s ... %s\"\n%s", key, value, rc, msg, want_start, want_line,
			    t);
		fail();
	}
}

/* ---- the key table, as documented (scrm-agent --help-config) --------- */

enum ktype { K_STR, K_INT, K_BOOL };
static const struct {
	const char *key;
	enum ktype type;
	long long min, max;
} table[] = {
	{"tenant", K_STR, 0, 0},
	{"store_id", K_STR, 0, 0},
	{"device_id", K_STR, 0, 0},
	{"store_dir", K_STR, 0, 0},
	{"broker.uri", K_STR, 0, 0},
	{"broker.ca_file", K_STR, 0, 0},
	{"broker.cert_file", K_STR, 0, 0},
	{"broker.key_file", K_STR, 0, 0},
	{"broker.crl_file", K_STR, 0, 0},
	{"broker.username", K_STR, 0, 0},
	{"broker.password_file", K_STR, 0, 0},
	{"broker.allow_plaintext", K_BOOL, 0, 1},
	{"broker.keepalive_s", K_INT, 5, 3600},
	{"broker.session_expiry_s", K_INT, 0, 4294967295LL},
	{"broker.connect_timeout_s", K_INT, 1, 300},
	{"sync.batch_max_events", K_INT, 1, 10000},
	{"sync.batch_max_bytes", K_INT, 4096, 16777216},
	{"sync.window", K_INT, 1, 64},
	{"sync.ack_timeout_ms", K_INT, 500, 3600000},
	{"sync.backoff_min_ms", K_INT, 10, 600000},
	{"sync.backoff_max_ms", K_INT, 100, 3600000},
	{"outbox.max_bytes", K_INT, 16384, 1099511627776LL},
	{"outbox.reserve_bytes", K_INT, -1, 549755813888LL},
	{"log.level", K_STR, 0, 0},
};
#define NTABLE (sizeof(table) / sizeof(table[0]))

/* ---- tests ----------------------------------------------------------- */

static void defaults(void **state)
{
	(void)state;
	assert_int_equal(parse_with(NULL, 0), SCRM_OK);
	assert_string_equal(cfg.tenant, "acme");
	assert_string_equal(cfg.store_id, "s0042");
	assert_string_equal(cfg.device_id, "pos-01");
	assert_string_equal(cfg.store_dir, "/var/lib/scrm");
	assert_string_equal(cfg.broker_uri, "ssl://broker.example:8883");
	assert_string_equal(cfg.ca_file, "/etc/scrm/ca.pem");
	assert_null(cfg.cert_file);
	assert_null(cfg.key_file);
	assert_null(cfg.username);
	assert_null(cfg.password_file);
	assert_int_equal(cfg.allow_plaintext, 0);
	assert_int_equal(cfg.plaintext, 0);
	assert_int_equal(cfg.keepalive_s, 30);
	assert_int_equal(cfg.session_expiry_s, 604800);
	assert_int_equal(cfg.connect_timeout_s, 10);
	assert_int_equal(cfg.batch_max_events, 500);
	assert_int_equal(cfg.batch_max_bytes, 262144);
	assert_int_equal(cfg.window, 8);
	assert_int_equal(cfg.ack_timeout_ms, 30000);
	assert_int_equal(cfg.backoff_min_ms, 500);
	assert_int_equal(cfg.backoff_max_ms, 60000);
	assert_string_equal(cfg.log_level, "info");
	assert_string_equal(cfg.topic_prefix, "scrm/v1/acme/s0042/pos-01/");
}

static void every_key_lands(void **state)
{
	(void)state;
	static const struct kv all[] = {
		{"store_dir", "\"/srv/scrm\""},
		{"broker.cert_file", "\"/etc/scrm/pos.crt\""},
		{"broker.key_file", "\"/etc/scrm/pos.key\""},
		{"broker.username", "\"pos-01\""},
		{"broker.password_file", "\"/etc/scrm/password\""},
		{"broker.allow_plaintext", "true"},
		{"broker.keepalive_s", "60"},
		{"broker.session_expiry_s", "4294967295"},
		{"broker.connect_timeout_s", "20"},
		{"sync.batch_max_events", "100"},
		{"sync.batch_max_bytes", "65536"},
		{"sync.window", "4"},
		{"sync.ack_timeout_ms", "10000"},
		{"sync.backoff_min_ms", "250"},
		{"sync.backoff_max_ms", "120000"},
		{"log.level", "\"debug\""},
	};
	assert_int_equal(parse_with(all, sizeof(all) / sizeof(all[0])), SCRM_OK);
	assert_string_equal(cfg.store_dir, "/srv/scrm");
	assert_string_equal(cfg.cert_file, "/etc/scrm/pos.crt");
	assert_string_equal(cfg.key_file, "/etc/scrm/pos.key");
	assert_string_equal(cfg.username, "pos-01");
	assert_string_equal(cfg.password_file, "/etc/scrm/password");
	assert_int_equal(cfg.allow_plaintext, 1);
	assert_int_equal(cfg.plaintext, 0); /* allowed, but the URI is TLS */
	assert_int_equal(cfg.keepalive_s, 60);
	assert_int_equal(cfg.session_expiry_s, 4294967295LL);
	assert_int_equal(cfg.connect_timeout_s, 20);
	assert_int_equal(cfg.batch_max_events, 100);
	assert_int_equal(cfg.batch_max_bytes, 65536);
	assert_int_equal(cfg.window, 4);
	assert_int_equal(cfg.ack_timeout_ms, 10000);
	assert_int_equal(cfg.backoff_min_ms, 250);
	assert_int_equal(cfg.backoff_max_ms, 120000);
	assert_string_equal(cfg.log_level, "debug");
}

static void required_keys(void **state)
{
	(void)state;
	static const char *const req[] = {"tenant", "store_id", "device_id", "broker.uri"};
	for (size_t i = 0; i < 4; i++) {
		struct kv o = {req[i], NULL};
		assert_refused(parse_with(&o, 1), SCRM_E_CONFIG, req[i]);
		assert_errmsg_contains("required");
	}
	const char empty[] = "{}";
	assert_refused(config__parse(empty, 2, &cfg), SCRM_E_CONFIG, "tenant");
}

static void every_key_type_error_names_key_and_line(void **state)
{
	(void)state;
	for (size_t i = 0; i < NTABLE; i++) {
		switch (table[i].type) {
		case K_STR:
			expect_key_error(table[i].key, "42", "must be a string");
			expect_key_error(table[i].key, "null", "must be a string");
			expect_key_error(table[i].key, "[\"a\"]", "must be a string");
			break;
		case K_INT:
			expect_key_error(table[i].key, "\"30\"", "must be an integer");
			expect_key_error(table[i].key, "true", "must be an integer");
			expect_key_error(table[i].key, "30.5", "must be an integer");
			expect_key_error(table[i].key, "{}", "must be an integer");
			break;
		case K_BOOL:
			expect_key_error(table[i].key, "\"yes\"", "must be true or false");
			expect_key_error(table[i].key, "1", "must be true or false");
			break;
		}
	}
}

static void every_int_key_bounds(void **state)
{
	(void)state;
	for (size_t i = 0; i < NTABLE; i++) {
		if (table[i].type != K_INT)
			continue;
		char v[32];
		snprintf(v, sizeof(v), "%lld", table[i].min - 1);
		expect_key_error(table[i].key, v, "must be between");
		snprintf(v, sizeof(v), "%lld", table[i].max + 1);
		expect_key_error(table[i].key, v, "must be between");
		expect_key_error(table[i].key, "1e300", "must be between");
		expect_key_error(table[i].key, "-1e300", "must be between");

		/* Both ends are accepted (keeping backoff_min <= backoff_max). */
		for (int end = 0; end < 2; end++) {
			struct kv o[2];
			size_t n = 0;
			snprintf(v, sizeof(v), "%lld", end ? table[i].max : table[i].min);
			o[n++] = (struct kv){table[i].key, v};
			if (strcmp(table[i].key, "sync.backoff_min_ms") == 0)
				o[n++] = (struct kv){"sync.backoff_max_ms", "3600000"};
			if (strcmp(table[i].key, "sync.backoff_max_ms") == 0)
				o[n++] = (struct kv){"sync.backoff_min_ms", "10"};
			if (strcmp(table[i].key, "outbox.reserve_bytes") == 0)
				o[n++] = (struct kv){"outbox.max_bytes", "1099511627776"};
			if (parse_with(o, n) != SCRM_OK) {
				print_error("%s = %s refused: %s\n", table[i].key, v, scrm_errmsg());
				fail();
			}
			config__free(&cfg);
		}
	}
}

static void unknown_keys_name_dotted_key_and_line(void **state)
{
	(void)state;
	struct kv o = {"tenat", "\"acme\""};
	int line = 0;
	const char *t = build(&o, 1, "tenat", &line);
	assert_refused(config__parse(t, strlen(t), &cfg), SCRM_E_CONFIG, "tenat");
	char want[64];
	snprintf(want, sizeof(want), "unknown key (line %d)", line);
	assert_errmsg_contains(want);

	struct kv w[] = {{"sync.window", "8"}, {"sync.windw", "8"}};
	t = build(w, 2, "sync.windw", &line);
	assert_refused(config__parse(t, strlen(t), &cfg), SCRM_E_CONFIG, "sync.windw");
	snprintf(want, sizeof(want), "(line %d)", line);
	assert_errmsg_contains(want);

	/* A whole unknown section. */
	static const char sec[] = "{\"tenant\":\"a\",\n\"mqtt\": {\"uri\": \"x\"}}";
	assert_refused(config__parse(sec, sizeof(sec) - 1, &cfg), SCRM_E_CONFIG, "mqtt");
	assert_errmsg_contains("unknown key (line 2)");

	static const char not_obj[] = "{\"tenant\":\"a\",\n\"broker\": \"mqtts://x\"}";
	assert_refused(config__parse(not_obj, sizeof(not_obj) - 1, &cfg), SCRM_E_CONFIG, "broker");
	assert_errmsg_contains("(line 2)");
}

/*
 * Regression test (fixed bug in agent/daemon/config.c line_of): the line reported for a key is the
 * first place its LEAF name appears anywhere in the file, not where the
 * offending key is. A "window" put by mistake under "broker" is reported at
 * the line of the correct "sync.window" above it, sending the operator to a
 * line that is fine. Expected: the line of the offending key. This test fails
 * until fixed.
 */
static void misplaced_key_reports_its_own_line(void **state)
{
	(void)state;
	static const char text[] = "{\n"                                              /* 1 */
				   "  \"tenant\": \"acme\", \"store_id\": \"s1\", \"device_id\": \"d1\",\n" /* 2 */
				   "  \"sync\": {\n"                                          /* 3 */
				   "    \"window\": 8\n"                                      /* 4 */
				   "  },\n"                                                   /* 5 */
				   "  \"broker\": {\n"                                        /* 6 */
				   "    \"uri\": \"mqtts://b:8883\", \"ca_file\": \"/ca.pem\",\n" /* 7 */
				   "    \"window\": 8\n"                                      /* 8 */
				   "  }\n"
				   "}\n";
	assert_refused(config__parse(text, sizeof(text) - 1, &cfg), SCRM_E_CONFIG, "broker.window");
	if (!strstr(scrm_errmsg(), "(line 8)")) {
		print_error("regression: \"%s\" — the misplaced key is on line 8\n", scrm_errmsg());
		fail();
	}
}

static void plaintext_refused_unless_allowed(void **state)
{
	(void)state;
	struct kv o[] = {{"broker.uri", "\"mqtt://broker.example:1883\""}, {"broker.ca_file", NULL}};
	assert_refused(parse_with(o, 2), SCRM_E_CONFIG, "broker.uri");
	assert_errmsg_contains("broker.allow_plaintext");

	struct kv tcp[] = {{"broker.uri", "\"tcp://broker.example:1883\""}};
	assert_refused(parse_with(tcp, 1), SCRM_E_CONFIG, "broker.uri");

	struct kv ok[] = {{"broker.uri", "\"mqtt://broker.example:1883\""}, {"broker.ca_file", NULL},
			  {"broker.allow_plaintext", "true"}};
	assert_int_equal(parse_with(ok, 3), SCRM_OK);
	assert_int_equal(cfg.plaintext, 1);
	assert_string_equal(cfg.broker_uri, "tcp://broker.example:1883");
	config__free(&cfg);

	struct kv no[] = {{"broker.uri", "\"mqtt://broker.example:1883\""}, {"broker.allow_plaintext", "false"}};
	assert_refused(parse_with(no, 2), SCRM_E_CONFIG, "broker.uri");
}

static void tls_requires_ca_file(void **state)
{
	(void)state;
	struct kv o[] = {{"broker.ca_file", NULL}};
	assert_refused(parse_with(o, 1), SCRM_E_CONFIG, "broker.ca_file");
	struct kv ssl[] = {{"broker.ca_file", NULL}, {"broker.uri", "\"ssl://b:8883\""}};
	assert_refused(parse_with(ssl, 2), SCRM_E_CONFIG, "broker.ca_file");
}

static void cert_and_key_go_together(void **state)
{
	(void)state;
	struct kv cert[] = {{"broker.cert_file", "\"/c.pem\""}};
	assert_refused(parse_with(cert, 1), SCRM_E_CONFIG, "broker.key_file");
	struct kv key[] = {{"broker.key_file", "\"/k.pem\""}};
	assert_refused(parse_with(key, 1), SCRM_E_CONFIG, "broker.cert_file");
	struct kv both[] = {{"broker.cert_file", "\"/c.pem\""}, {"broker.key_file", "\"/k.pem\""}};
	assert_int_equal(parse_with(both, 2), SCRM_OK);
}

static void uri_normalisation(void **state)
{
	(void)state;
	static const struct {
		const char *in, *out;
		int plain;
	} cases[] = {
		{"\"mqtts://b.example:8883\"", "ssl://b.example:8883", 0},
		{"\"ssl://b.example:8883\"", "ssl://b.example:8883", 0},
		{"\"mqtt://b.example:1883\"", "tcp://b.example:1883", 1},
		{"\"tcp://b.example:1883\"", "tcp://b.example:1883", 1},
		{"\"mqtts://[::1]:8883\"", "ssl://[::1]:8883", 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct kv o[] = {{"broker.uri", cases[i].in}, {"broker.allow_plaintext", "true"}};
		assert_int_equal(parse_with(o, 2), SCRM_OK);
		assert_string_equal(cfg.broker_uri, cases[i].out);
		assert_int_equal(cfg.plaintext, cases[i].plain);
		config__free(&cfg);
	}
	static const char *const bad[] = {"\"https://b.example\"", "\"b.example:8883\"", "\"MQTTS://b:8883\"",
					  "\"mqtts://\"", "\"\"", "\"ws://b:80\""};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct kv o = {"broker.uri", bad[i]};
		assert_refused(parse_with(&o, 1), SCRM_E_CONFIG, "broker.uri");
	}
}

static void ids_make_a_safe_topic_prefix(void **state)
{
	(void)state;
	struct kv o[] = {{"tenant", "\"brand_1\""}, {"store_id", "\"S.0042\""}, {"device_id", "\"pos-01\""}};
	assert_int_equal(parse_with(o, 3), SCRM_OK);
	assert_string_equal(cfg.topic_prefix, "scrm/v1/brand_1/S.0042/pos-01/");
	config__free(&cfg);

	/* Anything that would change the topic's shape or hit a wildcard. */
	static const char *const bad[] = {"\"a/b\"", "\"+\"", "\"#\"", "\"a b\"", "\"\"", "\"$SYS\"",
					  "\"0123456789012345678901234567890123456789012345678901234567890123X\""};
	static const char *const keys[] = {"tenant", "store_id", "device_id"};
	for (size_t k = 0; k < 3; k++) {
		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			struct kv b = {keys[k], bad[i]};
			assert_refused(parse_with(&b, 1), SCRM_E_CONFIG, keys[k]);
		}
	}
}

/* "down" (and "up") are words of the topic tree: a device called "down"
 * would live under scrm/v1/{tenant}/{store}/down/, the store-wide downlink
 * every device of the store reads (docs/protocol.md, "Identities"). */
static void topic_words_are_not_ids(void **state)
{
	(void)state;
	struct kv down = {"device_id", "\"down\""};
	assert_refused(parse_with(&down, 1), SCRM_E_CONFIG, "device_id");
	assert_errmsg_contains("\"down\" is reserved");
	static const char *const words[] = {"\"up\"", "\"down\""};
	static const char *const keys[] = {"tenant", "store_id", "device_id"};
	for (size_t k = 0; k < 3; k++) {
		for (size_t i = 0; i < 2; i++) {
			struct kv b = {keys[k], words[i]};
			assert_refused(parse_with(&b, 1), SCRM_E_CONFIG, keys[k]);
			assert_errmsg_contains("reserved");
		}
	}
	/* Only the exact words: topics are case-sensitive. */
	struct kv fine[] = {{"tenant", "\"Up\""}, {"store_id", "\"downtown\""}, {"device_id", "\"Down\""}};
	assert_int_equal(parse_with(fine, 3), SCRM_OK);
	assert_string_equal(cfg.topic_prefix, "scrm/v1/Up/downtown/Down/");
	config__free(&cfg);
}

static void cross_key_checks(void **state)
{
	(void)state;
	struct kv o[] = {{"sync.backoff_min_ms", "5000"}, {"sync.backoff_max_ms", "1000"}};
	assert_refused(parse_with(o, 2), SCRM_E_CONFIG, "sync.backoff_max_ms");
	static const char *const levels[] = {"\"error\"", "\"warn\"", "\"info\"", "\"debug\""};
	for (size_t i = 0; i < 4; i++) {
		struct kv l = {"log.level", levels[i]};
		assert_int_equal(parse_with(&l, 1), SCRM_OK);
		config__free(&cfg);
	}
	struct kv l = {"log.level", "\"verbose\""};
	assert_refused(parse_with(&l, 1), SCRM_E_CONFIG, "log.level");
}

/* outbox.reserve_bytes is the part of outbox.max_bytes kept for paid
 * events: it must leave room for the rest. -1 (the default) means auto. */
static void outbox_reserve_below_max(void **state)
{
	(void)state;
	assert_int_equal(parse_with(NULL, 0), SCRM_OK);
	assert_int_equal(cfg.outbox_max_bytes, 268435456);
	assert_int_equal(cfg.outbox_reserve_bytes, -1);
	config__free(&cfg);
	struct kv ok[] = {{"outbox.max_bytes", "65536"}, {"outbox.reserve_bytes", "16384"}};
	assert_int_equal(parse_with(ok, 2), SCRM_OK);
	assert_int_equal(cfg.outbox_max_bytes, 65536);
	assert_int_equal(cfg.outbox_reserve_bytes, 16384);
	config__free(&cfg);
	struct kv small[] = {{"outbox.max_bytes", "65536"}};
	assert_int_equal(parse_with(small, 1), SCRM_OK); /* auto reserve */
	config__free(&cfg);
	struct kv equal[] = {{"outbox.max_bytes", "65536"}, {"outbox.reserve_bytes", "65536"}};
	assert_refused(parse_with(equal, 2), SCRM_E_CONFIG, "outbox.reserve_bytes");
	assert_errmsg_contains("outbox.max_bytes");
	assert_errmsg_contains("65536");
	/* the 8 MiB a default store keeps does not fit a 4 MiB cap */
	struct kv above[] = {{"outbox.max_bytes", "4194304"}, {"outbox.reserve_bytes", "8388608"}};
	assert_refused(parse_with(above, 2), SCRM_E_CONFIG, "outbox.reserve_bytes");
}

static void malformed_json(void **state)
{
	(void)state;
	static const char text[] = "{\n  \"tenant\": \"acme\",\n  \"store_id\": s0042,\n  \"device_id\": \"d\"\n}";
	assert_refused(config__parse(text, sizeof(text) - 1, &cfg), SCRM_E_CONFIG, "config");
	assert_errmsg_contains("config: not valid JSON at line 3, column 15 (expected a value");
	assert_refused(config__parse("[]", 2, &cfg), SCRM_E_CONFIG, "config");
	assert_refused(config__parse("", 0, &cfg), SCRM_E_CONFIG, "config");
	assert_errmsg_contains("config: empty input");
	assert_refused(config__parse("\n  \n", 4, &cfg), SCRM_E_CONFIG, "config");
	assert_errmsg_contains("config: empty input");
	/* The editor's favourite mistakes, with line and column. */
	static const char comma[] = "{\n  \"tenant\": \"acme\",\n}\n";
	assert_refused(config__parse(comma, sizeof(comma) - 1, &cfg), SCRM_E_CONFIG, "config");
	assert_errmsg_contains("config: not valid JSON at line 3, column 1 (a comma before '}': expected another key)");
	static const char quote[] = "{\n  \"broker\": {\n    \"uri\": \"mqtts://b:8883,\n  }\n}\n";
	assert_refused(config__parse(quote, sizeof(quote) - 1, &cfg), SCRM_E_CONFIG, "config");
	assert_errmsg_contains("line 3, column 28 (a string runs past the end of the line: a missing '\"'?");
	static const char bom[] = "\xef\xbb\xbf{}";
	assert_refused(config__parse(bom, sizeof(bom) - 1, &cfg), SCRM_E_CONFIG, "config");
	assert_errmsg_contains("byte order mark");
	/* The text need not be NUL-terminated: a cut-off view is malformed. */
	const char *t = build(NULL, 0, NULL, NULL);
	assert_refused(config__parse(t, strlen(t) - 4, &cfg), SCRM_E_CONFIG, "config");
}

/* A key written twice is refused, naming it and where the second one is:
 * the config used to keep the last, so "allow_plaintext": false followed by
 * "allow_plaintext": true started in plaintext (and --check-config said ok)
 * while a reader keeping the first saw TLS. */
static void duplicate_keys_refused(void **state)
{
	(void)state;
	static const char plain[] = "{\n"
				    "  \"tenant\": \"acme\", \"store_id\": \"s1\", \"device_id\": \"d1\",\n"
				    "  \"broker\": {\n"
				    "    \"uri\": \"mqtt://broker.example:1883\",\n"
				    "    \"allow_plaintext\": false,\n"
				    "    \"allow_plaintext\": true\n"
				    "  }\n"
				    "}\n";
	assert_refused(config__parse(plain, sizeof(plain) - 1, &cfg), SCRM_E_CONFIG, "config");
	assert_errmsg_contains("config: duplicate key \"allow_plaintext\" at $.broker (line 6, column 5)");
	/* At the top level, and a section given twice. */
	struct kv top[] = {{"tenant", "\"acme\", \"tenant\": \"evil\""}};
	assert_refused(parse_with(top, 1), SCRM_E_CONFIG, "config");
	assert_errmsg_contains("duplicate key \"tenant\" at $ (line ");
	static const char sect[] = "{\"tenant\":\"a\",\"store_id\":\"s\",\"device_id\":\"d\","
				   "\"broker\":{\"uri\":\"mqtts://b\",\"ca_file\":\"/ca\"},"
				   "\"sync\":{\"window\":4},\"sync\":{\"window\":64}}";
	assert_refused(config__parse(sect, sizeof(sect) - 1, &cfg), SCRM_E_CONFIG, "config");
	assert_errmsg_contains("duplicate key \"sync\" at $ (line 1, column 111)");
	/* Through the file and config__load_all, as --check-config reads it. */
	char *dir = tu_tmpdir("config-dup");
	char *path = tu_join(dir, "agent.json");
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	fputs(plain, fp);
	fclose(fp);
	assert_refused(config__load_all(path, &cfg), SCRM_E_CONFIG, "config");
	assert_errmsg_contains("duplicate key \"allow_plaintext\"");
	assert_int_equal(cfg.allow_plaintext, 0);
	assert_null(cfg.broker_uri);
	free(path);
	tu_rmtree(dir);
	free(dir);
}

/* Not UTF-8, NULs, absurd nesting: refused by the reader, never half-read. */
static void hostile_text_refused(void **state)
{
	(void)state;
	struct kv bad_utf8[] = {{"log.file", "\"/var/log/scrm\xff.log\""}};
	assert_refused(parse_with(bad_utf8, 1), SCRM_E_CONFIG, "config");
	assert_errmsg_contains("invalid UTF-8 in a string at $.log.file (line ");
	static const char nul[] = "{\"tenant\":\"a\\u0000b\"}";
	assert_refused(config__parse(nul, sizeof(nul) - 1, &cfg), SCRM_E_CONFIG, "config");
	assert_errmsg_contains("\\u0000 (NUL)");
	static const char raw_nul[] = "{\"tenant\":\"a\0b\"}";
	assert_refused(config__parse(raw_nul, sizeof(raw_nul) - 1, &cfg), SCRM_E_CONFIG, "config");
	assert_errmsg_contains("config: NUL byte at line 1, column 13");
	size_t depth = 10000, o = 0;
	char *deep = malloc(2 * depth + 32);
	assert_non_null(deep);
	o += (size_t)sprintf(deep, "{\"tenant\":");
	memset(deep + o, '[', depth);
	o += depth;
	memset(deep + o, ']', depth);
	o += depth;
	deep[o++] = '}';
	assert_refused(config__parse(deep, o, &cfg), SCRM_E_CONFIG, "config");
	assert_errmsg_contains("config: nested too deeply (more than 64 levels) at line 1, column 74");
	free(deep);
}

static void failure_leaves_nothing_to_free(void **state)
{
	(void)state;
	/* A failed parse has released everything: the caller may call
	 * config__free again (LeakSanitizer/ASan check the rest). */
	struct kv o[] = {{"store_dir", "\"/srv\""}, {"log.level", "\"loud\""}};
	assert_int_equal(parse_with(o, 2), SCRM_E_CONFIG);
	assert_null(cfg.tenant);
	assert_null(cfg.store_dir);
	assert_null(cfg.broker_uri);
	config__free(&cfg);
}

static void load_from_file(void **state)
{
	(void)state;
	char *dir = tu_tmpdir("config");
	char *path = tu_join(dir, "agent.json");
	const char *t = build(NULL, 0, NULL, NULL);
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	fputs(t, fp);
	fclose(fp);
	assert_int_equal(config__load(path, &cfg), SCRM_OK);
	assert_string_equal(cfg.device_id, "pos-01");
	config__free(&cfg);

	char *missing = tu_join(dir, "nope.json");
	assert_refused(config__load(missing, &cfg), SCRM_E_CONFIG, "config");
	assert_errmsg_contains(missing);

	/* More than 1 MiB is not a config file. */
	fp = fopen(path, "w");
	assert_non_null(fp);
	for (int i = 0; i < (1 << 20) / 8 + 1; i++)
		fputs("        ", fp);
	fclose(fp);
	assert_refused(config__load(path, &cfg), SCRM_E_CONFIG, "config");
	free(missing);
	free(path);
	tu_rmtree(dir);
	free(dir);
}

int main(int argc, char **argv)
{
	tu_select(argc, argv);
#define T(fn) cmocka_unit_test_teardown(fn, teardown)
	const struct CMUnitTest tests[] = {
		T(defaults),
		T(every_key_lands),
		T(required_keys),
		T(every_key_type_error_names_key_and_line),
		T(every_int_key_bounds),
		T(unknown_keys_name_dotted_key_and_line),
		T(misplaced_key_reports_its_own_line),
		T(plaintext_refused_unless_allowed),
		T(tls_requires_ca_file),
		T(cert_and_key_go_together),
		T(uri_normalisation),
		T(ids_make_a_safe_topic_prefix),
		T(topic_words_are_not_ids),
		T(cross_key_checks),
		T(outbox_reserve_below_max),
		T(malformed_json),
		T(duplicate_keys_refused),
		T(hostile_text_refused),
		T(failure_leaves_nothing_to_free),
		T(load_from_file),
	};
	return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
