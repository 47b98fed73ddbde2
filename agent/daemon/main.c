/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-agent: the store daemon. Parses the command line, loads and validates
 * the config, blocks the signals the loop will read through a signalfd (before
 * Paho starts its threads, which inherit the mask) and runs sync.
 */
#include <scrm/scrm.h>

#include "config.h"
#include "enroll.h"
#include "log.h"
#include "paths.h"
#include "platform.h"
#include "sync.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

#define DEFAULT_CONFIG "/etc/scrm/agent.json"

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: scrm-agent [--config FILE] [--log-level LEVEL]\n"
		"       scrm-agent --check-config [--config FILE]\n"
		"       scrm-agent enroll [--config FILE] [--key FILE] [--csr FILE] [--force]\n"
		"       scrm-agent enroll --install-cert CERT.pem [--ca FILE] [--config FILE]\n"
		"       scrm-agent --help-config | --version | --help\n"
		"\n"
		"Ships the store's outbox to the central SCRM over MQTT 5 + TLS and deletes\n"
		"each event only when central acknowledges it (docs/protocol.md).\n"
		"\n"
		"  --config FILE      JSON config (default %s)\n"
		"  --log-level LEVEL  error, warn, info or debug (overrides log.level)\n"
		"  --check-config     validate the config, print a summary, exit 0 or 1\n"
		"  --help-config      list every config key with its default and meaning\n"
		"  --version          print the version\n"
		"  enroll             make the device key and a CSR for central's CA, then\n"
		"                     install the certificate it signs (scrm-agent enroll --help)\n"
		"\n"
		"Logs: logfmt on stderr (also syslog / a capped file: log.syslog, log.file).\n"
		"SIGHUP: reload the config (and remote settings in <store_dir>/config.remote.json).\n"
		"SIGTERM/SIGINT: clean shutdown (unacknowledged events stay in the outbox\n"
		"and are resent on the next start).\n",
		DEFAULT_CONFIG);
}

int main(int argc, char **argv)
{
	const char *path = DEFAULT_CONFIG, *level = NULL;
	int check = 0;
	config cfg;

	/* Before any key is read or made (enroll makes the device key): a core
	 * dump would put the data key and decrypted member data on disk. */
	int nc = platform__no_core_dumps();
	if (nc)
		fprintf(stderr, "scrm-agent: warning: cannot disable core dumps: %s\n", strerror(-nc));
	if (argc >= 2 && strcmp(argv[1], "enroll") == 0)
		return enroll__main(argc - 1, argv + 1, DEFAULT_CONFIG);
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(argv[i], "--version") == 0) {
			printf("scrm-agent %s (protocol v1)\n", scrm_version());
			return 0;
		} else if (strcmp(argv[i], "--help-config") == 0) {
			config__print_keys();
			return 0;
		} else if (strcmp(argv[i], "--check-config") == 0) {
			check = 1;
		} else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
			path = argv[++i];
		} else if (strcmp(argv[i], "--log-level") == 0 && i + 1 < argc) {
			level = argv[++i];
			if (log__parse_level(level) < 0) {
				fprintf(stderr, "scrm-agent: --log-level: must be error, warn, info or debug\n");
				return 2;
			}
		} else {
			fprintf(stderr, "scrm-agent: unknown or incomplete option '%s'\n", argv[i]);
			usage(stderr);
			return 2;
		}
	}
	if (config__load_all(path, &cfg) != SCRM_OK) {
		fprintf(stderr, "scrm-agent: %s: %s\n", path, scrm_errmsg());
		return 1;
	}
	if (check) {
		printf("config %s: ok\n  device %s/%s/%s\n  broker %s (%s%s)\n  store_dir %s\n", path, cfg.tenant,
		       cfg.store_id, cfg.device_id, cfg.broker_uri, cfg.plaintext ? "PLAINTEXT" : "TLS",
		       cfg.cert_file ? ", client certificate" : "", cfg.store_dir);
		if (cfg.config_version)
			printf("  remote settings: version %lld %s%s\n", (long long)cfg.config_version,
			       cfg.overlay_set ? cfg.overlay_set : "{}", cfg.overlay_previous ? " (on probation)" : "");
		if (cfg.overlay_error)
			printf("  remote settings IGNORED: %s\n", cfg.overlay_error);
		config__free(&cfg);
		return 0;
	}
	{
		/* Before anything reads them: an older agent's keys, cache and
		 * remote settings move into the private directory (paths.h), and
		 * remote settings that moved are read again from there. */
		char moved[600];
		if (paths__prepare(cfg.store_dir, cfg.keys_dir, moved, sizeof(moved)) != SCRM_OK) {
			fprintf(stderr, "scrm-agent: %s\n", scrm_errmsg());
			config__free(&cfg);
			return 1;
		}
		if (moved[0]) /* stderr: the journal keeps it (the log is not set up yet) */
			fprintf(stderr, "scrm-agent: moved an older agent's files into %s/%s: %s\n", cfg.store_dir,
				PATHS_PRIVATE_DIR, moved);
		if (strstr(moved, PATHS_OVERLAY)) {
			config__free(&cfg);
			if (config__load_all(path, &cfg) != SCRM_OK) {
				fprintf(stderr, "scrm-agent: %s: %s\n", path, scrm_errmsg());
				return 1;
			}
		}
	}
	log__set_level(log__parse_level(level ? level : cfg.log_level));

	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	return sync__run(&cfg, level);
}
