/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrmctl: the store's command line. Records events given as JSON (a file
 * or stdin; one object, or JSON Lines with --lines) through libscrm exactly
 * as a POS would, and shows the outbox state. Human-readable by default,
 * --json for scripts. Exit codes: 0 ok, 1 refused/failed, 2 usage.
 */
#include <scrm/scrm.h>

#include "cli.h"
#include "platform.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_INPUT (64 * 1024 * 1024)

struct opts {
	const char *store, *device;
	int json, lines;
};

static void usage_main(FILE *f)
{
	fprintf(f,
		"Usage: scrmctl [--store DIR] [--device ID] COMMAND [ARGS]\n"
		"\n"
		"Commands:\n"
		"  record [--lines] [--json] [FILE|-]   record event(s) from JSON (default stdin)\n"
		"  status [--json]                      outbox state: pending, oldest, bytes, last ack\n"
		"  help [COMMAND]                       help on a command\n"
		"\n"
		"  --store DIR   store directory (default $SCRM_STORE or /var/lib/scrm)\n"
		"  --device ID   device id; needed only when the store does not exist yet\n"
		"  --version     print the version\n");
}

static void usage_record(FILE *f)
{
	fprintf(f,
		"Usage: scrmctl [--store DIR] [--device ID] record [--lines] [--json] [FILE|-]\n"
		"\n"
		"Records a purchase, return or member scan, durably, into the store's outbox.\n"
		"The input is one JSON object, or with --lines one object per line:\n"
		"  {\"kind\":\"purchase\",\"order_id\":\"A-1\",\"lines\":[{\"sku\":\"85123A\",\"qty\":2,\n"
		"   \"unit_price\":255}],\"total\":510,\"currency\":\"GBP\",\"payment\":\"card\"}\n"
		"Money is in minor units (cents). Fields: docs/protocol.md.\n"
		"Prints the event's seq and id; an invalid event is refused with the field\n"
		"and the reason, and nothing is written. With --lines every line is tried;\n"
		"the exit code is 1 if any was refused.\n");
}

static void usage_status(FILE *f)
{
	fprintf(f,
		"Usage: scrmctl [--store DIR] status [--json]\n"
		"\n"
		"Shows the outbox: events pending (not yet acknowledged by central), their\n"
		"bytes, the age of the oldest, the last sequence number, the last ack and\n"
		"events central rejected.\n");
}

static void age(char *buf, size_t n, int64_t ms)
{
	if (ms < 0)
		ms = 0;
	int64_t s = ms / 1000;
	if (s < 60)
		snprintf(buf, n, "%llds", (long long)s);
	else if (s < 3600)
		snprintf(buf, n, "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
	else if (s < 86400)
		snprintf(buf, n, "%lldh%02lldm", (long long)(s / 3600), (long long)(s % 3600 / 60));
	else
		snprintf(buf, n, "%lldd%02lldh", (long long)(s / 86400), (long long)(s % 86400 / 3600));
}

static int open_store(const struct opts *o, scrm_store **st)
{
	scrm_store_options so = {.device_id = o->device, .busy_timeout_ms = 0};
	int rc = scrm_store_open(o->store, &so, st);
	if (rc != SCRM_OK) {
		fprintf(stderr, "scrmctl: store %s: %s\n", o->store, scrm_errmsg()[0] ? scrm_errmsg() : scrm_strerror(rc));
		if (!o->device && rc == SCRM_E_NOT_FOUND)
			fprintf(stderr, "scrmctl: (pass --device ID to create a new store)\n");
	}
	return rc;
}

static int read_input(const char *path, char **text, size_t *len)
{
	if (!path || strcmp(path, "-") == 0)
		path = "/dev/stdin";
	int rc = platform__read_file(path, MAX_INPUT, text, len);
	if (rc != 0) {
		fprintf(stderr, "scrmctl: record: cannot read %s: %s\n", path, rc == -EFBIG ? "larger than 64 MiB" : strerror(-rc));
		return 1;
	}
	return 0;
}

static int record_one(scrm_store *st, const struct opts *o, const char *text, size_t len, long line)
{
	scrm_receipt r;
	int rc = scrm_record_json(st, text, len, &r);
	if (rc != SCRM_OK) {
		if (o->json)
			printf("{\"ok\":false,%s%ld%s\"error\":\"%s\",\"detail\":\"", line ? "\"line\":" : "", line, line ? "," : "",
			       scrm_strerror(rc));
		if (o->json) {
			for (const char *p = scrm_errmsg(); *p; p++)
				if (*p == '"' || *p == '\\')
					printf("\\%c", *p);
				else
					putchar(*p);
			printf("\"}\n");
		}
		if (line)
			fprintf(stderr, "scrmctl: record: line %ld: %s\n", line, scrm_errmsg()[0] ? scrm_errmsg() : scrm_strerror(rc));
		else
			fprintf(stderr, "scrmctl: record: %s\n", scrm_errmsg()[0] ? scrm_errmsg() : scrm_strerror(rc));
		return 1;
	}
	if (o->json)
		printf("{\"ok\":true,\"seq\":%" PRId64 ",\"id\":\"%s\",\"wall_ms\":%" PRId64 "}\n", r.seq, r.event_id, r.wall_ms);
	else
		printf("recorded seq=%" PRId64 " id=%s\n", r.seq, r.event_id);
	return 0;
}

static int cmd_record(struct opts *o, const char *path)
{
	char *text = NULL;
	size_t len = 0;
	scrm_store *st = NULL;
	int failed = 0;

	if (read_input(path, &text, &len))
		return 1;
	if (open_store(o, &st) != SCRM_OK) {
		free(text);
		return 1;
	}
	if (!o->lines) {
		failed = record_one(st, o, text, len, 0);
	} else {
		const char *p = text, *line;
		size_t n;
		long ln = 0;
		while (cli__next_line(&p, text + len, &line, &n, &ln))
			failed |= record_one(st, o, line, n, ln);
	}
	scrm_store_close(st);
	free(text);
	return failed ? 1 : 0;
}

static int cmd_status(struct opts *o)
{
	scrm_store *st = NULL;
	scrm_outbox_stats s;
	if (open_store(o, &st) != SCRM_OK)
		return 1;
	int rc = scrm_outbox_get_stats(st, &s);
	if (rc != SCRM_OK) {
		fprintf(stderr, "scrmctl: status: %s\n", scrm_errmsg());
		scrm_store_close(st);
		return 1;
	}
	int64_t now = platform__wall_ms();
	if (o->json) {
		printf("{\"device\":\"%s\",\"pending\":%" PRId64 ",\"pending_bytes\":%" PRId64
		       ",\"oldest_pending_ms\":%" PRId64 ",\"oldest_pending_age_ms\":%" PRId64 ",\"last_seq\":%" PRId64
		       ",\"last_ack_ms\":%" PRId64 ",\"last_acked_seq\":%" PRId64 ",\"rejected\":%" PRId64 "}\n",
		       scrm_store_device_id(st), s.pending, s.pending_bytes, s.oldest_pending_ms,
		       s.oldest_pending_ms ? now - s.oldest_pending_ms : 0, s.last_seq, s.last_ack_ms, s.last_acked_seq,
		       s.rejected);
	} else {
		char a[32];
		printf("device       %s\n", scrm_store_device_id(st));
		printf("pending      %" PRId64 " events, %.1f KiB\n", s.pending, (double)s.pending_bytes / 1024.0);
		if (s.oldest_pending_ms) {
			age(a, sizeof(a), now - s.oldest_pending_ms);
			printf("oldest       %s ago\n", a);
		} else {
			printf("oldest       -\n");
		}
		printf("last seq     %" PRId64 "\n", s.last_seq);
		if (s.last_ack_ms) {
			age(a, sizeof(a), now - s.last_ack_ms);
			printf("last ack     %s ago (up to seq %" PRId64 ")\n", a, s.last_acked_seq);
		} else {
			printf("last ack     never\n");
		}
		printf("rejected     %" PRId64 "%s\n", s.rejected, s.rejected ? "  (central refused these; see the rejected table)" : "");
	}
	scrm_store_close(st);
	return 0;
}

int main(int argc, char **argv)
{
	cli__args a;
	char err[200];
	if (cli__parse(argc, argv, &a, err, sizeof(err)) != 0) {
		fprintf(stderr, "scrmctl: %s\nTry 'scrmctl --help'.\n", err);
		return 2;
	}
	struct opts o = {.store = a.store, .device = a.device, .json = a.json, .lines = a.lines};
	if (!o.store)
		o.store = getenv("SCRM_STORE");
	if (!o.store || !*o.store)
		o.store = "/var/lib/scrm";
	switch (a.cmd) {
	case CLI_VERSION:
		printf("scrmctl %s\n", scrm_version());
		return 0;
	case CLI_HELP:
		if (strcmp(a.topic, "record") == 0)
			usage_record(stdout);
		else if (strcmp(a.topic, "status") == 0)
			usage_status(stdout);
		else
			usage_main(stdout);
		return 0;
	case CLI_RECORD:
		return cmd_record(&o, a.path);
	case CLI_STATUS:
		return cmd_status(&o);
	case CLI_NONE:
		break;
	}
	usage_main(stderr);
	return 2;
}
