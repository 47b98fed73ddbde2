/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-cachegen: central's side of the customer cache from the command line
 * (tests/support/cachegen.h does the work). Makes the key set, snapshot
 * files from the retail sample or a synthetic store of any size, member QR
 * tokens and coupon signatures, for tests, benchmarks and the demo.
 *
 * Exit status: 0 done, 1 the work failed (a "cachegen:" line says why),
 * 2 bad command line (one line naming the argument).
 */
#include "cachegen.h"
#include "retail_csv.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const usage_keys =
	"usage: scrm-cachegen keys DIR [--seed N]\n"
	"  Write DIR/central.key, DIR/central.pub and DIR/tenant.key, deterministically from the seed (default 1).\n";
static const char *const usage_retail =
	"usage: scrm-cachegen retail --csv FILE --keys DIR --tenant T --out DIR [--now MS] [--version N] [--seed N]\n"
	"  Build the seven snapshot files and members_index.tsv from the UCI Online Retail CSV.\n"
	"  --now: inventory time and coupon validity (default: the last invoice's time); --version default 1.\n";
static const char *const usage_synth =
	"usage: scrm-cachegen synth --keys DIR --out DIR [--members N] [--skus N] [--rules N] [--campaigns N]\n"
	"                           [--coupon-every N] [--seed N] [--version N] [--now MS] [--tenant T]\n"
	"  Write a synthetic store (defaults: 500000 members, 20000 SKUs, 200000 rules, 50 campaigns,\n"
	"  a coupon every 100 members, seed 1, version 1, now 1733050000000, tenant acme).\n";
static const char *const usage_qr =
	"usage: scrm-cachegen qr --keys DIR --tenant T --member ID [--iat MS] [--exp MS]\n"
	"  Print a member QR token signed with DIR/central.key (default iat now, exp iat + 5 min).\n";
static const char *const usage_sign =
	"usage: scrm-cachegen sign --keys DIR FILE\n"
	"  Print the standard base64 ECDSA P-256 signature (DER) of FILE's exact bytes.\n";

static void usage_all(FILE *f)
{
	fprintf(f, "scrm-cachegen COMMAND ...: test data for the customer cache\n\n%s%s%s%s%s", usage_keys,
		usage_retail, usage_synth, usage_qr, usage_sign);
}

static int bad(const char *cmd, const char *fmt, const char *arg)
{
	fprintf(stderr, "scrm-cachegen %s: ", cmd);
	fprintf(stderr, fmt, arg);
	fprintf(stderr, " (see scrm-cachegen %s --help)\n", cmd);
	return 2;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int is_help(const char *a)
{
	return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0;
}

/* Options: "--name value" pairs from a fixed table; everything else is a
 * positional argument (at most one). */
struct opt {
	const char *name;
	const char *val;
};

static int parse_opts(const char *cmd, const char *usage, int argc, char **argv, struct opt *opts, const char **pos)
{
	if (pos)
		*pos = NULL;
	for (int i = 0; i < argc; i++) {
		if (is_help(argv[i])) {
			fputs(usage, stdout);
			return 1;
		}
		if (strncmp(argv[i], "--", 2) == 0) {
			struct opt *o = opts;
			while (o->name && strcmp(o->name, argv[i] + 2) != 0)
				o++;
			if (!o->name)
				return bad(cmd, "unknown option %s", argv[i]);
			if (i + 1 >= argc)
				return bad(cmd, "%s needs a value", argv[i]);
			o->val = argv[++i];
		} else if (pos && !*pos) {
			*pos = argv[i];
		} else {
			return bad(cmd, "unexpected argument \"%s\"", argv[i]);
		}
	}
	return 0;
}

static const char *get(struct opt *opts, const char *name)
{
	for (; opts->name; opts++)
		if (strcmp(opts->name, name) == 0)
			return opts->val;
	return NULL;
}

/* Integer option: absent leaves *out alone; malformed is a usage error. */
static int num_opt(const char *cmd, struct opt *opts, const char *name, int64_t lo, int64_t hi, int64_t *out)
{
	const char *v = get(opts, name);
	char flag[64];
	if (!v)
		return 0;
	if (rcsv_int(v, lo, hi, out)) {
		snprintf(flag, sizeof(flag), "--%s", name);
		fprintf(stderr, "scrm-cachegen %s: %s: \"%s\" is not an integer in %" PRId64 "..%" PRId64 "\n", cmd, flag, v,
			lo, hi);
		return 2;
	}
	return 0;
}

static int need(const char *cmd, struct opt *opts, const char *name)
{
	if (get(opts, name))
		return 0;
	fprintf(stderr, "scrm-cachegen %s: --%s is required (see scrm-cachegen %s --help)\n", cmd, name, cmd);
	return 2;
}

static int open_signer(const char *keys, cg_signer **s)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/central.key", keys);
	return cg_signer_open(path, s);
}

#define MAX_SAFE ((int64_t)9007199254740992LL)

static int cmd_keys(int argc, char **argv)
{
	struct opt opts[] = {{"seed", NULL}, {NULL, NULL}};
	const char *dir;
	int64_t seed = 1;
	int rc = parse_opts("keys", usage_keys, argc, argv, opts, &dir);
	if (rc)
		return rc == 1 ? 0 : rc;
	if (!dir)
		return bad("keys", "%s", "DIR is required");
	if ((rc = num_opt("keys", opts, "seed", 0, INT64_MAX, &seed)))
		return rc;
	if (cg_keys_create(dir, (uint64_t)seed))
		return 1;
	printf("keys written to %s (central.key, central.pub, tenant.key)\n", dir);
	return 0;
}

static int cmd_sign(int argc, char **argv)
{
	struct opt opts[] = {{"keys", NULL}, {NULL, NULL}};
	const char *file;
	cg_signer *s = NULL;
	char *sig = NULL, *buf = NULL;
	size_t n = 0, cap = 0;
	int rc = parse_opts("sign", usage_sign, argc, argv, opts, &file);
	if (rc)
		return rc == 1 ? 0 : rc;
	if ((rc = need("sign", opts, "keys")))
		return rc;
	if (!file)
		return bad("sign", "%s", "FILE is required");
	FILE *f = fopen(file, "rb");
	if (!f) {
		fprintf(stderr, "scrm-cachegen sign: %s: %s\n", file, strerror(errno));
		return 1;
	}
	for (;;) {
		if (n == cap) {
			char *nb = realloc(buf, cap ? cap * 2 : 65536);
			if (!nb) {
				rc = 1;
				break;
			}
			buf = nb;
			cap = cap ? cap * 2 : 65536;
		}
		size_t r = fread(buf + n, 1, cap - n, f);
		if (r == 0)
			break;
		n += r;
	}
	if (ferror(f))
		rc = 1;
	fclose(f);
	if (!rc && (open_signer(get(opts, "keys"), &s) || cg_sign_b64(s, buf ? buf : "", n, &sig)))
		rc = 1;
	if (!rc)
		printf("%s\n", sig);
	free(sig);
	free(buf);
	cg_signer_close(s);
	return rc;
}

static int cmd_qr(int argc, char **argv)
{
	struct opt opts[] = {{"keys", NULL}, {"tenant", NULL}, {"member", NULL}, {"iat", NULL}, {"exp", NULL}, {NULL, NULL}};
	cg_signer *s = NULL;
	char *tok = NULL;
	int64_t iat = now_ms(), exp;
	int rc = parse_opts("qr", usage_qr, argc, argv, opts, NULL);
	if (rc)
		return rc == 1 ? 0 : rc;
	if ((rc = need("qr", opts, "keys")) || (rc = need("qr", opts, "tenant")) || (rc = need("qr", opts, "member")) ||
	    (rc = num_opt("qr", opts, "iat", 0, MAX_SAFE, &iat)))
		return rc;
	exp = iat + 300000;
	if ((rc = num_opt("qr", opts, "exp", 0, MAX_SAFE, &exp)))
		return rc;
	if (open_signer(get(opts, "keys"), &s) || cg_qr_mint(s, get(opts, "tenant"), get(opts, "member"), iat, exp, &tok))
		rc = 1;
	else
		printf("%s\n", tok);
	free(tok);
	cg_signer_close(s);
	return rc;
}

static int cmd_synth(int argc, char **argv)
{
	struct opt opts[] = {{"keys", NULL},    {"out", NULL},     {"members", NULL}, {"skus", NULL},
			     {"rules", NULL},   {"campaigns", NULL}, {"coupon-every", NULL}, {"seed", NULL},
			     {"version", NULL}, {"now", NULL},     {"tenant", NULL},  {NULL, NULL}};
	cg_synth cfg;
	cg_signer *s = NULL;
	int64_t members, skus, rules, campaigns, every, seed, version, now;
	int rc = parse_opts("synth", usage_synth, argc, argv, opts, NULL);
	if (rc)
		return rc == 1 ? 0 : rc;
	cg_synth_init(&cfg);
	members = (int64_t)cfg.n_members, skus = (int64_t)cfg.n_skus, rules = (int64_t)cfg.n_rules;
	campaigns = (int64_t)cfg.n_campaigns, every = (int64_t)cfg.coupon_every, seed = (int64_t)cfg.seed;
	version = cfg.version, now = cfg.now_ms;
	if ((rc = need("synth", opts, "keys")) || (rc = need("synth", opts, "out")) ||
	    (rc = num_opt("synth", opts, "members", 0, 100000000, &members)) ||
	    (rc = num_opt("synth", opts, "skus", 1, 10000000, &skus)) ||
	    (rc = num_opt("synth", opts, "rules", 0, INT64_MAX, &rules)) ||
	    (rc = num_opt("synth", opts, "campaigns", 0, 999, &campaigns)) ||
	    (rc = num_opt("synth", opts, "coupon-every", 0, INT64_MAX, &every)) ||
	    (rc = num_opt("synth", opts, "seed", 0, INT64_MAX, &seed)) ||
	    (rc = num_opt("synth", opts, "version", 1, MAX_SAFE, &version)) ||
	    (rc = num_opt("synth", opts, "now", 1, MAX_SAFE, &now)))
		return rc;
	cfg.n_members = (size_t)members, cfg.n_skus = (size_t)skus, cfg.n_rules = (size_t)rules;
	cfg.n_campaigns = (size_t)campaigns, cfg.coupon_every = (size_t)every, cfg.seed = (uint64_t)seed;
	cfg.version = version, cfg.now_ms = now;
	if (get(opts, "tenant"))
		cfg.tenant = get(opts, "tenant");
	if (cg_synth_check(&cfg))
		return 2;
	if (open_signer(get(opts, "keys"), &s)) {
		rc = 1;
		goto cleanup;
	}
	double t0 = mono_s();
	if (cg_synth_write(&cfg, s, get(opts, "out"))) {
		rc = 1;
		goto cleanup;
	}
	fprintf(stderr, "synth: wrote %s in %.2f s:", get(opts, "out"), mono_s() - t0);
	for (int st = 0; st < CG_N_STREAMS; st++)
		fprintf(stderr, " %s %zu", cg_stream_name((cg_stream)st), cg_synth_count(&cfg, (cg_stream)st));
	fputc('\n', stderr);
cleanup:
	cg_signer_close(s);
	return rc;
}

static int cmd_retail(int argc, char **argv)
{
	struct opt opts[] = {{"csv", NULL}, {"keys", NULL},    {"tenant", NULL}, {"out", NULL},
			     {"now", NULL}, {"version", NULL}, {"seed", NULL},   {NULL, NULL}};
	cg_retail_opts ro = {0};
	cg_retail_counts counts;
	cg_signer *s = NULL;
	int64_t now = 0, version = 1, seed = 1;
	int rc = parse_opts("retail", usage_retail, argc, argv, opts, NULL);
	if (rc)
		return rc == 1 ? 0 : rc;
	if ((rc = need("retail", opts, "csv")) || (rc = need("retail", opts, "keys")) ||
	    (rc = need("retail", opts, "tenant")) || (rc = need("retail", opts, "out")) ||
	    (rc = num_opt("retail", opts, "now", 1, MAX_SAFE, &now)) ||
	    (rc = num_opt("retail", opts, "version", 1, MAX_SAFE, &version)) ||
	    (rc = num_opt("retail", opts, "seed", 0, INT64_MAX, &seed)))
		return rc;
	ro.csv_path = get(opts, "csv");
	ro.tenant = get(opts, "tenant");
	ro.outdir = get(opts, "out");
	ro.now_ms = now;
	ro.seed = (uint64_t)seed;
	ro.version = version;
	if (open_signer(get(opts, "keys"), &s) || cg_retail_build_opts(&ro, s, &counts)) {
		cg_signer_close(s);
		return 1;
	}
	cg_signer_close(s);
	printf("retail: %zu CSV rows (%zu skipped), %zu invoices (%zu cancellations), rules with support count >= %u\n",
	       counts.csv_rows, counts.csv_skipped, counts.invoices, counts.cancellations, counts.rule_min_count);
	for (int st = 0; st < CG_N_STREAMS; st++)
		printf("  %-9s %zu records\n", cg_stream_name((cg_stream)st), counts.records[st]);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2 || is_help(argv[1])) {
		usage_all(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	const char *cmd = argv[1];
	argc -= 2;
	argv += 2;
	if (strcmp(cmd, "keys") == 0)
		return cmd_keys(argc, argv);
	if (strcmp(cmd, "retail") == 0)
		return cmd_retail(argc, argv);
	if (strcmp(cmd, "synth") == 0)
		return cmd_synth(argc, argv);
	if (strcmp(cmd, "qr") == 0)
		return cmd_qr(argc, argv);
	if (strcmp(cmd, "sign") == 0)
		return cmd_sign(argc, argv);
	fprintf(stderr, "scrm-cachegen: unknown command \"%s\" (keys, retail, synth, qr, sign; see --help)\n", cmd);
	return 2;
}
