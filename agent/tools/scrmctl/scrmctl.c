/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrmctl: the store's command line. Records events given as JSON (a file
 * or stdin; one object, or JSON Lines with --lines) through libscrm exactly
 * as a POS would, and shows the outbox state. Human-readable by default,
 * --json for scripts. Exit codes: 0 ok, 1 refused/failed, 2 usage.
 * This file: the usage texts, the helpers the subcommands share (ctl.h),
 * `scrmctl fleet` handing over to scrm-fleet, and main.
 */
#include "ctl.h"

#include "platform.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage_main(FILE *f)
{
	fprintf(f,
		"Usage: scrmctl [--store DIR] [--device ID] COMMAND [ARGS]\n"
		"\n"
		"Commands:\n"
		"  record [--lines] [--json] [FILE|-]   record event(s) from JSON (default stdin)\n"
		"  status [--json]                      outbox state: pending, oldest, bytes, last ack\n"
		"  outbox set-aside [--json]            events that could not be sent as stored\n"
		"  outbox recover FILE [--json]         send again the events of a quarantined outbox file\n"
		"  member show --id|--card|--phone|--qr VALUE [--scan [--guide G]] [--json]\n"
		"                                       a member's profile card from the offline cache\n"
		"  cache status [--json]                cache streams: cursor, rows, age, snapshot progress\n"
		"  cache load FILE...                   seed the cache from snapshot files (agent stopped)\n"
		"  reco [--member ID] [--basket B] [--n N] [--guide G] [--json]\n"
		"                                       what to suggest, why, stage, next best action\n"
		"  coupons [--member ID] [--basket B] [--currency C] [--json]\n"
		"                                       coupons that apply to the basket, and why not\n"
		"  redeem --coupon C --order O --basket B --currency C [--member ID] [--guide G] [--json]\n"
		"                                       spend a coupon (works offline; reserved locally)\n"
		"  redemptions [--limit N] [--json]     coupons spent here and central's verdicts\n"
		"  fleet list|show|cmd ...              central operations: every agent's state and\n"
		"                                       health, and remote commands (scrmctl fleet --help)\n"
		"  help [COMMAND]                       help on a command\n"
		"\n"
		"  --store DIR   store directory (default $SCRM_STORE or /var/lib/scrm)\n"
		"  --device ID   device id; needed only when the store does not exist yet\n"
		"  --keys DIR    key directory (default <store>/private/keys; as cache.keys_dir)\n"
		"  --version     print the version\n");
}

static void usage_record(FILE *f)
{
	fprintf(f,
		"Usage: scrmctl [--store DIR] [--device ID] record [--lines] [--json] [FILE|-]\n"
		"\n"
		"Records an event (kind %s)\ndurably into the store's outbox.\n"
		"The input is one JSON object, or with --lines one object per line:\n"
		"  {\"kind\":\"purchase\",\"order_id\":\"A-1\",\"lines\":[{\"sku\":\"85123A\",\"qty\":2,\n"
		"   \"unit_price\":255}],\"total\":510,\"currency\":\"GBP\",\"payment\":\"card\"}\n"
		"Money is in minor units (cents). Fields: docs/protocol.md.\n"
		"Prints the event's seq and id; an invalid event is refused with the field\n"
		"and the reason, and nothing is written. With --lines every line is tried\n"
		"(a thousand lines share one transaction, as a till's journal is imported;\n"
		"a retried file records each purchase and return once); the exit code is 1\n"
		"if any was refused.\n",
		scrm_record_kinds());
}

static void usage_status(FILE *f)
{
	fprintf(f,
		"Usage: scrmctl [--store DIR] status [--json]\n"
		"\n"
		"Shows the outbox: events pending (not yet acknowledged by central), their\n"
		"bytes, the age of the oldest, the last sequence number, the last ack and\n"
		"events central rejected; the storage used against outbox.max_bytes, events\n"
		"dropped under it per kind, paid events refused, and the store's alarms.\n");
}

static void usage_outbox(FILE *f)
{
	fprintf(f,
		"Usage: scrmctl [--store DIR] outbox set-aside [--json]\n"
		"       scrmctl [--store DIR] outbox recover FILE [--json]\n"
		"\n"
		"set-aside: events the agent could not send as they are stored - their row no\n"
		"longer parses (damage on the device) or they are larger than the broker takes\n"
		"in one message - kept here byte for byte (central was sent a marker in their\n"
		"place, and the events_set_aside alarm is up). --json prints each with its\n"
		"body as stored, for follow-up.\n"
		"recover: when the agent finds outbox.db damaged it moves it to\n"
		"<store>/quarantine/outbox-<ms>.db and copies every event it can still read\n"
		"into a fresh outbox. This reads such a file again and puts back the events\n"
		"the store neither holds nor took from it before, with their original seq and\n"
		"id, to be sent once more (central stores each once). The file is not changed.\n");
}

static void usage_member(FILE *f)
{
	fprintf(f,
		"Usage: scrmctl [--store DIR] [--keys DIR] member show (--id ID | --card NUMBER | --phone PHONE | --qr TOKEN)\n"
		"                                                       [--scan [--guide GUIDE]] [--json]\n"
		"\n"
		"Looks a member up in the store's offline cache and prints the profile card:\n"
		"tier, tags, segment, stage, figures (including this store's purchases central\n"
		"has not yet reflected), coupons held, name and birthday, phone masked.\n"
		"A phone is normalised first (spaces and dashes dropped, leading 0 replaced by\n"
		"cache.phone_country_code); a QR token's signature and expiry are checked.\n"
		"--scan also records a member scan in the outbox (as the counter would),\n"
		"without method and guide for a member who has not consented to tracking.\n"
		"Exit 1 if there is no such member or the token is refused (reason printed).\n");
}

static void usage_cache(FILE *f)
{
	fprintf(f,
		"Usage: scrmctl [--store DIR] [--keys DIR] cache status [--json]\n"
		"       scrmctl [--store DIR] [--keys DIR] cache load FILE...\n"
		"\n"
		"status: for each stream (members, coupons, catalogue, inventory, scripts,\n"
		"recos, rules) the version cursor, rows, age of the last update, records\n"
		"refused, and the snapshot being received.\n"
		"load: applies snapshot files (JSON lines; docs/protocol.md, \"Snapshot file\")\n"
		"exactly as if central had sent them: each file replaces its stream\n"
		"atomically. For seeding a store before go-live; stop scrm-agent first.\n");
}

static void usage_guide(FILE *f)
{
	fprintf(f,
		"Usage: scrmctl [--store DIR] [--keys DIR] reco [--member ID] [--basket B] [--n N] [--guide G] [--json]\n"
		"       scrmctl [--store DIR] [--keys DIR] coupons [--member ID] [--basket B] [--currency C] [--json]\n"
		"       scrmctl [--store DIR] [--keys DIR] redeem --coupon C --order O --basket B --currency C\n"
		"                                         [--member ID] [--guide G] [--json]\n"
		"       scrmctl [--store DIR] redemptions [--limit N] [--json]\n"
		"\n"
		"B is the basket: SKU[:QTY[:UNIT_PRICE]],... (price in minor units), e.g.\n"
		"  --basket 22423:1:1275,85123A:2:255\n"
		"reco: ranked suggestions for a member (rules on their purchases and the basket,\n"
		"central's list, boosted by tags and preferences; what is out of stock or was\n"
		"just bought is left out) or for an anonymous basket, each with its reason; the\n"
		"member's lifecycle stage, next best action, coupon and talk track. With\n"
		"--guide the list is recorded so a sale that follows is credited to the guide.\n"
		"coupons: the member's coupons and public campaigns, which apply to the basket\n"
		"now and their value, and the reason for each that does not.\n"
		"redeem: checks the coupon's signature and rules again and marks it used on\n"
		"this device in the same transaction as the coupon_redeem event (two tills\n"
		"cannot spend it twice). C is a coupon id, its code, or a public campaign id.\n"
		"Exit 1 with the reason if refused. Central's verdict comes later:\n"
		"redemptions: pending / accepted / rejected (with the reason) per redemption.\n");
}

int ctl__open_store(const struct ctl__opts *o, scrm_store **st)
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

int ctl__open_cache(const struct ctl__opts *o, scrm_cache **c)
{
	int rc = scrm_cache_open(o->store, o->keys, c);
	if (rc != SCRM_OK)
		fprintf(stderr, "scrmctl: cache: %s\n", scrm_errmsg()[0] ? scrm_errmsg() : scrm_strerror(rc));
	return rc;
}

void ctl__money(char *buf, size_t n, int64_t minor, const char *cur)
{
	snprintf(buf, n, "%s%lld.%02lld %s", minor < 0 ? "-" : "", (long long)(llabs(minor) / 100), (long long)(llabs(minor) % 100),
		 cur ? cur : "");
}

void ctl__fail(const char *cmd, int rc)
{
	fprintf(stderr, "scrmctl: %s: %s\n", cmd, scrm_errmsg()[0] ? scrm_errmsg() : scrm_strerror(rc));
}

/* `scrmctl fleet ...` is the operations console, scrm-fleet: a program of
 * its own, in its own package for the central operations side (it signs
 * commands to devices; a store's devices do not carry it). Run it in this
 * process's place with the same arguments: SCRM_FLEET_BIN when set, else
 * the one next to this executable (/usr/bin, the build tree), else PATH.
 * Returns only when none could be run. */
static int run_fleet(int argc, char **argv)
{
	char self[4096], path[4200];
	const char *bin = getenv("SCRM_FLEET_BIN");
	char **args = calloc((size_t)argc + 1, sizeof(*args));
	if (!args) {
		fprintf(stderr, "scrmctl: fleet: out of memory\n");
		return 1;
	}
	args[0] = (char *)"scrm-fleet";
	for (int i = 2; i < argc; i++)
		args[i - 1] = argv[i];
	if (bin && *bin) {
		execv(bin, args);
		fprintf(stderr, "scrmctl: fleet: SCRM_FLEET_BIN=%s: %s\n", bin, strerror(errno));
		free(args);
		return 2;
	}
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash = n > 0 ? memrchr(self, '/', (size_t)n) : NULL;
	if (slash) {
		*slash = '\0';
		snprintf(path, sizeof(path), "%s/scrm-fleet", self);
		execv(path, args);
		if (errno != ENOENT) { /* there, but it does not run: say so, not "not installed" */
			fprintf(stderr, "scrmctl: fleet: %s: %s\n", path, strerror(errno));
			free(args);
			return 2;
		}
	}
	execvp("scrm-fleet", args);
	fprintf(stderr,
		"scrmctl: fleet: the operations console is not installed here. It is the scrm-fleet\n"
		"package, for the central operations side (store devices do not need it); install\n"
		"it there and run 'scrm-fleet' or 'scrmctl fleet'.\n");
	free(args);
	return 2;
}

int main(int argc, char **argv)
{
	cli__args a;
	char err[200];
	/* Every path, before anything is read: member look-ups hold the data
	 * key and decrypted personal data, the fleet console its client key
	 * and password; a core dump would write them to disk. */
	int nc = platform__no_core_dumps();
	if (nc)
		fprintf(stderr, "scrmctl: warning: cannot disable core dumps: %s\n", strerror(-nc));
	if (argc > 1 && strcmp(argv[1], "fleet") == 0)
		return run_fleet(argc, argv);
	if (cli__parse(argc, argv, &a, err, sizeof(err)) != 0) {
		fprintf(stderr, "scrmctl: %s\nTry 'scrmctl --help'.\n", err);
		return 2;
	}
	struct ctl__opts o = {.store = a.store, .device = a.device, .keys = a.keys, .json = a.json, .lines = a.lines};
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
		else if (strcmp(a.topic, "outbox") == 0)
			usage_outbox(stdout);
		else if (strcmp(a.topic, "member") == 0)
			usage_member(stdout);
		else if (strcmp(a.topic, "cache") == 0)
			usage_cache(stdout);
		else if (strcmp(a.topic, "reco") == 0 || strcmp(a.topic, "coupons") == 0 ||
			 strcmp(a.topic, "redeem") == 0 || strcmp(a.topic, "redemptions") == 0)
			usage_guide(stdout);
		else
			usage_main(stdout);
		return 0;
	case CLI_RECORD:
		return ctl__record(&o, a.path);
	case CLI_STATUS:
		return ctl__status(&o);
	case CLI_MEMBER_SHOW:
		return ctl__member_show(&o, &a);
	case CLI_CACHE_STATUS:
		return ctl__cache_status(&o);
	case CLI_CACHE_LOAD:
		return ctl__cache_load(&o, &a);
	case CLI_RECO:
		return ctl__reco(&o, &a);
	case CLI_COUPONS:
		return ctl__coupons(&o, &a);
	case CLI_REDEEM:
		return ctl__redeem(&o, &a);
	case CLI_REDEMPTIONS:
		return ctl__redemptions(&o, &a);
	case CLI_OUTBOX_SET_ASIDE:
		return ctl__outbox_set_aside(&o);
	case CLI_OUTBOX_RECOVER:
		return ctl__outbox_recover(&o, &a);
	case CLI_NONE:
		break;
	}
	usage_main(stderr);
	return 2;
}
