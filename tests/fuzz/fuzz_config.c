/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_config: config__parse(), the daemon's configuration file.
 *
 * Beyond "no crash, no sanitizer report, no leak", every input checks:
 *   - a refusal is SCRM_E_CONFIG (or NOMEM) with a message;
 *   - an accepted config keeps the promises sync.c relies on: a normalised
 *     ssl:// or tcp:// URI, plaintext only when explicitly allowed, a CA for
 *     TLS, cert and key together, every integer inside its documented
 *     bounds, and a topic prefix of exactly scrm/v1/<t>/<s>/<d>/ with no
 *     MQTT wildcard in it.
 */
#include "fuzz.h"

#include "config.h"
#include "err.h"

#include <scrm/scrm.h>

#include <string.h>

#define IN(v, lo, hi) ((v) >= (lo) && (v) <= (hi))

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	config cfg;
	err__clear();
	int rc = config__parse((const char *)data, size, &cfg);
	if (rc != SCRM_OK) {
		FUZZ_CHECK(rc == SCRM_E_CONFIG || rc == SCRM_E_NOMEM, "rc %d", rc);
		FUZZ_CHECK(scrm_errmsg()[0] != '\0', "refused without a message");
		FUZZ_CHECK(!cfg.tenant && !cfg.broker_uri && !cfg.store_dir, "failed parse left strings allocated");
		return 0;
	}
	FUZZ_CHECK(cfg.tenant && cfg.store_id && cfg.device_id && cfg.broker_uri && cfg.store_dir && cfg.log_level,
		   "missing required value");
	int tls = strncmp(cfg.broker_uri, "ssl://", 6) == 0;
	int tcp = strncmp(cfg.broker_uri, "tcp://", 6) == 0;
	FUZZ_CHECK(tls || tcp, "URI not normalised: %s", cfg.broker_uri);
	FUZZ_CHECK(cfg.broker_uri[6] != '\0', "URI without host");
	FUZZ_CHECK(cfg.plaintext == tcp, "plaintext flag %d for %s", cfg.plaintext, cfg.broker_uri);
	FUZZ_CHECK(!cfg.plaintext || cfg.allow_plaintext, "plaintext without allow_plaintext");
	FUZZ_CHECK(cfg.plaintext || cfg.ca_file, "TLS without ca_file");
	FUZZ_CHECK(!cfg.cert_file == !cfg.key_file, "cert/key not paired");
	FUZZ_CHECK(IN(cfg.keepalive_s, 5, 3600) && IN(cfg.session_expiry_s, 0, 4294967295LL) &&
			   IN(cfg.connect_timeout_s, 1, 300) && IN(cfg.batch_max_events, 1, 10000) &&
			   IN(cfg.batch_max_bytes, 4096, 16777216) && IN(cfg.window, 1, 64) &&
			   IN(cfg.ack_timeout_ms, 500, 3600000) && IN(cfg.backoff_min_ms, 10, 600000) &&
			   IN(cfg.backoff_max_ms, 100, 3600000) && cfg.backoff_min_ms <= cfg.backoff_max_ms,
		   "integer out of bounds");
	int slashes = 0;
	for (const char *p = cfg.topic_prefix; *p; p++) {
		FUZZ_CHECK(*p != '+' && *p != '#', "wildcard in topic prefix %s", cfg.topic_prefix);
		slashes += *p == '/';
	}
	FUZZ_CHECK(slashes == 5 && strncmp(cfg.topic_prefix, "scrm/v1/", 8) == 0, "topic prefix %s",
		   cfg.topic_prefix);
	config__free(&cfg);
	return 0;
}
