/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-central, main.c: the command line: usage texts, flags, and the
 * commands dispatched.
 */
#include "central.h"

/* ======================================================================
 * command line
 * ====================================================================== */

static const char usage_main[] =
	"usage: scrm-central run    --broker URI --ca FILE --db FILE [options]\n"
	"       scrm-central report --db FILE [--json]\n"
	"       scrm-central push   --broker URI --ca FILE --tenant T --store S [FILE|-]\n"
	"       scrm-central COMMAND --help\n"
	"\n"
	"Reference central side of the SCRM edge protocol v1 (docs/protocol.md).\n"
	"  run     store and ack event batches, decide coupon redemptions; with\n"
	"          --cache-dir, answer cache resync requests with snapshots\n"
	"  report  what the database holds, per device\n"
	"  push    publish one cache delta to a store\n";

static const char usage_run[] =
	"usage: scrm-central run --broker URI --ca FILE --db FILE [options]\n"
	"\n"
	"Subscribe to every device's scrm/v1/+/+/+/up/events, store each batch in one\n"
	"SQLite transaction (deduplicated by tenant, store, device, seq) and, after the\n"
	"commit, publish the ack to scrm/v1/{tenant}/{store}/{device}/down/ack.\n"
	"Logs logfmt lines to stderr. SIGTERM/SIGINT: finish, ack, exit 0.\n"
	"\n"
	"  --broker URI        ssl://HOST:PORT (MQTT 5 over TLS; host name verified)\n"
	"  --ca FILE           CA certificate(s) that sign the broker's certificate\n"
	"  --cert FILE         client certificate (with --key), if the broker wants one\n"
	"  --key FILE          client private key\n"
	"  --db FILE           SQLite database, created if missing\n"
	"  --share GROUP       subscribe as $share/GROUP/... (scale across consumers)\n"
	"  --client-id ID      MQTT client id (default scrm-central-<pid>)\n"
	"  --ready-file FILE   written (\"ready ...\") once the subscription is granted\n"
	"  --reject-kind KIND  reject every event of KIND (test hook; repeatable, max 8)\n"
	"  --strict            exit with status 3 on a protocol violation by a device (an event\n"
	"                      below a seq the device said was settled, not marked recovered);\n"
	"                      without it such an event is stored, counted and logged\n"
	"  --ack-window N      max publishes (acks and snapshot chunks) in flight, 1..64\n"
	"                      (default 10; also capped by the broker's Receive Maximum;\n"
	"                      chunks never take the last free one, acks go first)\n"
	"  -v, --verbose       debug logs (one line per batch and per chunk)\n"
	"  -h, --help          this text\n"
	"\n"
	"Customer cache (docs/protocol.md, \"Customer cache\"):\n"
	"  --cache-dir DIR     also subscribe to scrm/v1/+/+/+/up/cache/resync (shared\n"
	"                      like up/events with --share), record every valid request\n"
	"                      in the resync_requests table and answer it with a snapshot\n"
	"                      of DIR/<stream>.jsonl (the \"Snapshot file\" format: header\n"
	"                      line, then one record per line, sent as they are) on\n"
	"                      scrm/v1/{tenant}/{store}/{device}/down/cache/{stream}.\n"
	"                      Snapshot ids are <stream>-<version>-<hash of the file's\n"
	"                      identity, size and mtime>: stable while the file is, so a\n"
	"                      request naming the current id continues at from_chunk;\n"
	"                      any other id gets a new snapshot from chunk 0. A missing\n"
	"                      file is an empty stream at version 1 (one chunk, no\n"
	"                      records). DIR/forgotten.txt (one member id per line) is\n"
	"                      sent as \"forgotten\" in the last chunk of members.\n"
	"  --chunk-records N   records per chunk, 1..100000 (default 1000); a chunk is\n"
	"                      also never more than 1 MiB\n"
	"  --snapshot-delay-ms N  wait N ms between two chunks of a snapshot (test hook)\n"
	"  --drop-chunk K      do not send chunk K, once per device and snapshot id, to\n"
	"                      drive the agent's timeout and resume (test hook)\n"
	"\n"
	"Coupon verdicts (docs/protocol.md, \"Coupon verdicts\"): each new coupon_redeem\n"
	"event is decided once, in the transaction that stores it, kept in the\n"
	"redemptions table and published after the batch's ack, QoS 1, to\n"
	"scrm/v1/{tenant}/{store}/{device}/down/verdict. Rules, from the coupon and\n"
	"campaign records of DIR/coupons.jsonl (--cache-dir; signatures not checked),\n"
	"counting the tenant's earlier accepted redemptions in every store:\n"
	"unknown_coupon, already_spent (uses, default 1), and for a redemption without\n"
	"a coupon unknown_campaign, member_limit (per_member_limit), campaign_limit\n"
	"(total_limit; 0 = unlimited). Without --cache-dir every redemption is\n"
	"accepted. A redelivered redemption gets its stored verdict again.\n"
	"  --verdict-delay-ms N  publish each verdict N ms after its batch is stored,\n"
	"                      0..600000 (default 0; test hook; at shutdown pending\n"
	"                      verdicts go at once)\n"
	"\n"
	"Exit: 0 after a signal, 1 runtime error (e.g. database), 2 bad arguments.\n";

static const char usage_report[] =
	"usage: scrm-central report --db FILE [--json]\n"
	"\n"
	"Per device: events stored, min/max seq, missing seqs below the highest seen\n"
	"(rejected seqs are not missing), duplicate copies received, conflicts (same\n"
	"seq, different id), rejected events, and in_order=yes|no: whether first\n"
	"arrivals came in increasing seq order. Then a totals line, which also counts\n"
	"the cache resync requests received (resync_requests).\n"
	"\n"
	"  --db FILE   database written by 'scrm-central run'\n"
	"  --json      one JSON object {\"devices\":[...],\"totals\":{...}}\n"
	"  -h, --help  this text\n"
	"\n"
	"Exit: 0 ok, 1 cannot read the database, 2 bad arguments.\n";

static const char usage_push[] =
	"usage: scrm-central push --broker URI --ca FILE --tenant T --store S [options] [FILE|-]\n"
	"\n"
	"Publish one cache delta (docs/protocol.md, \"Delta\") read from FILE, or stdin\n"
	"if FILE is '-' or absent, to every agent of a store:\n"
	"scrm/v1/{tenant}/{store}/down/cache/{stream}, stream taken from the delta,\n"
	"QoS 1, not retained; waits for the broker's PUBACK. The bytes are sent as\n"
	"they are. Checked first: a JSON object with type \"delta\", stream, base,\n"
	"version (integers) and ops (an array); the rest (version > base, the ops,\n"
	"the 4 MiB limit) is left to the agents, so tests can push bad deltas.\n"
	"\n"
	"  --broker URI       ssl://HOST:PORT (MQTT 5 over TLS; host name verified)\n"
	"  --ca FILE          CA certificate(s) that sign the broker's certificate\n"
	"  --cert FILE        client certificate (with --key), if the broker wants one\n"
	"  --key FILE         client private key\n"
	"  --client-id ID     MQTT client id (default scrm-central-push-<pid>)\n"
	"  --tenant T         tenant of the store ([A-Za-z0-9_.-]{1,64})\n"
	"  --store S          store id ([A-Za-z0-9_.-]{1,64})\n"
	"  --timeout-ms N     give up connecting and waiting for the PUBACK after N ms\n"
	"                     (default 10000)\n"
	"  -h, --help         this text\n"
	"\n"
	"Prints \"published topic=... bytes=... puback_reason=0x..\" on success.\n"
	"Exit: 0 published, 1 not a delta / cannot read / broker failure, 2 bad arguments.\n";

static int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "scrm-central %s: error: ", cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n(see 'scrm-central %s --help')\n", cmd);
	return 2;
}

/* The value after a flag, or NULL (error printed) if there is none. */
static const char *flag_value(int argc, char **argv, int *i, const char *cmd)
{
	if (*i + 1 >= argc || argv[*i + 1][0] == '\0') {
		usage_error(cmd, "%s needs a value", argv[*i]);
		return NULL;
	}
	return argv[++*i];
}

/* An integer flag in min..max: 0, or 2 with the error printed. */
static int flag_int(int argc, char **argv, int *i, const char *cmd, int64_t min, int64_t max,
		    int64_t *out)
{
	const char *flag = argv[*i];
	const char *val = flag_value(argc, argv, i, cmd);
	char *end = NULL;
	long long v;

	if (!val)
		return 2;
	errno = 0;
	v = strtoll(val, &end, 10);
	if (errno || end == val || *end || v < min || v > max)
		return usage_error(cmd, "%s: '%s' is not a number in %lld..%lld", flag, val,
				   (long long)min, (long long)max);
	*out = (int64_t)v;
	return 0;
}

static int readable(const char *cmd, const char *flag, const char *path)
{
	if (access(path, R_OK) != 0) {
		usage_error(cmd, "%s: cannot read %s: %s", flag, path, strerror(errno));
		return 0;
	}
	return 1;
}

/* The broker flags of run and push: where the value goes, or NULL. */
static const char **broker_flag(const char *a, struct run_opts *o)
{
	if (!strcmp(a, "--broker"))
		return &o->broker;
	if (!strcmp(a, "--ca"))
		return &o->ca;
	if (!strcmp(a, "--cert"))
		return &o->cert;
	if (!strcmp(a, "--key"))
		return &o->key;
	if (!strcmp(a, "--client-id"))
		return &o->client_id;
	return NULL;
}

/* Checks of the broker flags, and the default client id
 * (<id_prefix>-<pid>). 0, or 2 with the error printed. */
static int broker_opts_check(const char *cmd, struct run_opts *o, const char *id_prefix)
{
	static char default_id[64];

	if (!o->broker)
		return usage_error(cmd, "--broker is required");
	if (strncmp(o->broker, "ssl://", 6) != 0 && strncmp(o->broker, "mqtts://", 8) != 0)
		return usage_error(cmd, "--broker: '%s' must be ssl://HOST:PORT (TLS only)",
				   o->broker);
	if (!o->ca)
		return usage_error(cmd, "--ca is required");
	if (!o->cert != !o->key)
		return usage_error(cmd, "%s needs %s", o->cert ? "--cert" : "--key",
				   o->cert ? "--key" : "--cert");
	if (!readable(cmd, "--ca", o->ca) || (o->cert && !readable(cmd, "--cert", o->cert)) ||
	    (o->key && !readable(cmd, "--key", o->key)))
		return 2;
	if (!o->client_id) {
		snprintf(default_id, sizeof default_id, "%s-%ld", id_prefix, (long)getpid());
		o->client_id = default_id;
	}
	return 0;
}

static int cmd_run(int argc, char **argv)
{
	struct run_opts *o = &g.opt;
	int64_t n;
	int i, cache_flag = 0;

	o->ack_window = ACK_WINDOW_DEFAULT;
	o->chunk_records = CHUNK_RECORDS_DEFAULT;
	o->drop_chunk = -1;
	for (i = 2; i < argc; i++) {
		const char *a = argv[i];
		const char **dst = broker_flag(a, o);

		if (dst) {
			/* --broker, --ca, --cert, --key, --client-id */
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			fputs(usage_run, stdout);
			return 0;
		} else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
			g_log_min = LVL_DEBUG;
			continue;
		} else if (!strcmp(a, "--strict")) {
			o->strict = 1;
			continue;
		} else if (!strcmp(a, "--db")) {
			dst = &o->db;
		} else if (!strcmp(a, "--share")) {
			dst = &o->share;
		} else if (!strcmp(a, "--ready-file")) {
			dst = &o->ready_file;
		} else if (!strcmp(a, "--cache-dir")) {
			dst = &o->cache_dir;
		} else if (!strcmp(a, "--reject-kind")) {
			const char *k = flag_value(argc, argv, &i, "run");

			if (!k)
				return 2;
			if (o->n_reject_kinds >= MAX_REJECT_KINDS)
				return usage_error("run", "--reject-kind: at most %d", MAX_REJECT_KINDS);
			o->reject_kinds[o->n_reject_kinds++] = k;
			continue;
		} else if (!strcmp(a, "--ack-window")) {
			if (flag_int(argc, argv, &i, "run", 1, ACK_SLOTS, &n))
				return 2;
			o->ack_window = (int)n;
			continue;
		} else if (!strcmp(a, "--chunk-records")) {
			if (flag_int(argc, argv, &i, "run", 1, CHUNK_RECORDS_MAX, &n))
				return 2;
			o->chunk_records = (int)n;
			cache_flag = 1;
			continue;
		} else if (!strcmp(a, "--snapshot-delay-ms")) {
			if (flag_int(argc, argv, &i, "run", 0, SNAPSHOT_DELAY_MAX_MS,
				     &o->snapshot_delay_ms))
				return 2;
			cache_flag = 1;
			continue;
		} else if (!strcmp(a, "--verdict-delay-ms")) {
			if (flag_int(argc, argv, &i, "run", 0, VERDICT_DELAY_MAX_MS,
				     &o->verdict_delay_ms))
				return 2;
			continue;
		} else if (!strcmp(a, "--drop-chunk")) {
			if (flag_int(argc, argv, &i, "run", 0, (int64_t)MAX_SAFE_INT, &o->drop_chunk))
				return 2;
			cache_flag = 1;
			continue;
		} else {
			return usage_error("run", "unknown option '%s'", a);
		}
		if (!(*dst = flag_value(argc, argv, &i, "run")))
			return 2;
	}
	if (!o->broker)
		return usage_error("run", "--broker is required");
	if (!o->ca)
		return usage_error("run", "--ca is required");
	if (!o->db)
		return usage_error("run", "--db is required");
	if (o->share && (strpbrk(o->share, "/+#") || !*o->share))
		return usage_error("run", "--share: '%s' must not contain '/', '+' or '#'",
				   o->share);
	if (cache_flag && !o->cache_dir)
		return usage_error("run", "--chunk-records, --snapshot-delay-ms and --drop-chunk "
					  "need --cache-dir");
	if (o->cache_dir) {
		struct stat st;

		if (stat(o->cache_dir, &st) != 0 || !S_ISDIR(st.st_mode) ||
		    access(o->cache_dir, R_OK | X_OK) != 0)
			return usage_error("run", "--cache-dir: %s is not a readable directory",
					   o->cache_dir);
	}
	if (broker_opts_check("run", o, "scrm-central"))
		return 2;
	return cmd_run_main();
}

static int cmd_report_args(int argc, char **argv)
{
	const char *db = NULL;
	int as_json = 0, i;

	for (i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			fputs(usage_report, stdout);
			return 0;
		} else if (!strcmp(argv[i], "--json")) {
			as_json = 1;
		} else if (!strcmp(argv[i], "--db")) {
			if (!(db = flag_value(argc, argv, &i, "report")))
				return 2;
		} else {
			return usage_error("report", "unknown option '%s'", argv[i]);
		}
	}
	if (!db)
		return usage_error("report", "--db is required");
	if (access(db, R_OK) != 0) {
		fprintf(stderr, "scrm-central report: cannot read %s: %s\n", db, strerror(errno));
		return 1;
	}
	return cmd_report(db, as_json);
}

static int cmd_push(int argc, char **argv)
{
	struct run_opts *o = &g.opt;
	const char *tenant = NULL, *store = NULL, *file = NULL;
	int64_t timeout_ms = 10000;
	int i;

	for (i = 2; i < argc; i++) {
		const char *a = argv[i];
		const char **dst = broker_flag(a, o);

		if (dst) {
			/* --broker, --ca, --cert, --key, --client-id */
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			fputs(usage_push, stdout);
			return 0;
		} else if (!strcmp(a, "--tenant")) {
			dst = &tenant;
		} else if (!strcmp(a, "--store")) {
			dst = &store;
		} else if (!strcmp(a, "--timeout-ms")) {
			if (flag_int(argc, argv, &i, "push", 100, 600000, &timeout_ms))
				return 2;
			continue;
		} else if (a[0] == '-' && a[1] != '\0') {
			return usage_error("push", "unknown option '%s'", a);
		} else {
			if (file)
				return usage_error("push", "one delta file at a time ('%s' and '%s')",
						   file, a);
			file = a;
			continue;
		}
		if (!(*dst = flag_value(argc, argv, &i, "push")))
			return 2;
	}
	if (!tenant || ident__problem(tenant))
		return usage_error("push", "--tenant: %s", tenant ? ident__problem(tenant) : "is required");
	if (!store || ident__problem(store))
		return usage_error("push", "--store: %s", store ? ident__problem(store) : "is required");
	if (broker_opts_check("push", o, "scrm-central-push"))
		return 2;
	return cmd_push_main(file ? file : "-", tenant, store, timeout_ms);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fputs(usage_main, stderr);
		return 2;
	}
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
		fputs(usage_main, stdout);
		return 0;
	}
	if (!strcmp(argv[1], "run"))
		return cmd_run(argc, argv);
	if (!strcmp(argv[1], "report"))
		return cmd_report_args(argc, argv);
	if (!strcmp(argv[1], "push"))
		return cmd_push(argc, argv);
	fprintf(stderr, "scrm-central: unknown command '%s'\n%s", argv[1], usage_main);
	return 2;
}
