/* SPDX-License-Identifier: Apache-2.0 */
/* cli: scrmctl's command-line and JSON Lines parsing (see cli.h). */
#include "cli.h"

#include <scrm/scrm.h>

#include <cjson/cJSON.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int usage_err(char *err, size_t n, const char *fmt, const char *arg)
{
	snprintf(err, n, fmt, arg ? arg : "");
	return 2;
}

/* member show ... / cache status / cache load FILE... */
static int parse_cache_cmds(const char *cmd, int argc, char **argv, int i, cli__args *a, char *err, size_t n)
{
	int member = cmd[0] == 'm';
	const char *sub = i < argc && argv[i] ? argv[i] : NULL;
	if (!sub || strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0 || strcmp(sub, "help") == 0) {
		if (!sub)
			return usage_err(err, n, member ? "member: a subcommand is needed (show)%s"
							: "cache: a subcommand is needed (status, load)%s",
					 NULL);
		a->cmd = CLI_HELP;
		a->topic = member ? "member" : "cache";
		return 0;
	}
	i++;
	if (member && strcmp(sub, "show") == 0)
		a->cmd = CLI_MEMBER_SHOW;
	else if (!member && strcmp(sub, "status") == 0)
		a->cmd = CLI_CACHE_STATUS;
	else if (!member && strcmp(sub, "load") == 0)
		a->cmd = CLI_CACHE_LOAD;
	else
		return usage_err(err, n, member ? "member: unknown subcommand '%.64s' (show)"
						: "cache: unknown subcommand '%.64s' (status, load)",
				 sub);
	for (; i < argc && argv[i]; i++) {
		const char *o = argv[i];
		int by = 0;
		if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) {
			a->cmd = CLI_HELP;
			a->topic = member ? "member" : "cache";
			return 0;
		} else if (strcmp(o, "--json") == 0) {
			a->json = 1;
		} else if (a->cmd == CLI_MEMBER_SHOW && strcmp(o, "--scan") == 0) {
			a->scan = 1;
		} else if (a->cmd == CLI_MEMBER_SHOW &&
			   ((strcmp(o, "--id") == 0 && (by = SCRM_MEMBER_ID)) ||
			    (strcmp(o, "--card") == 0 && (by = SCRM_MEMBER_CARD)) ||
			    (strcmp(o, "--phone") == 0 && (by = SCRM_MEMBER_PHONE)) ||
			    (strcmp(o, "--qr") == 0 && (by = SCRM_MEMBER_QR)) || strcmp(o, "--guide") == 0)) {
			if (i + 1 >= argc || !argv[i + 1] || !argv[i + 1][0])
				return usage_err(err, n, "member show: %s needs a value", o);
			if (!by) {
				a->guide = argv[++i];
				continue;
			}
			if (a->by)
				return usage_err(err, n, "member show: one of --id, --card, --phone, --qr at most ('%.64s' is a second)", o);
			a->by = by;
			a->value = argv[++i];
		} else if (a->cmd == CLI_CACHE_LOAD && o[0] != '-') {
			if (!a->files)
				a->files = &argv[i];
			a->n_files++;
			if (&a->files[a->n_files - 1] != &argv[i])
				return usage_err(err, n, "cache load: files must come together ('%.64s')", o);
		} else {
			snprintf(err, n, "%s %s: unknown argument '%.64s'", cmd, sub, o);
			return 2;
		}
	}
	if (a->cmd == CLI_MEMBER_SHOW && !a->by)
		return usage_err(err, n, "member show: say who: --id, --card, --phone or --qr%s", NULL);
	if (a->cmd == CLI_MEMBER_SHOW && a->guide && !a->scan)
		return usage_err(err, n, "member show: --guide only goes with --scan%s", NULL);
	if (a->cmd == CLI_CACHE_LOAD && !a->n_files)
		return usage_err(err, n, "cache load: at least one snapshot file is needed%s", NULL);
	return 0;
}

/* outbox set-aside / outbox recover FILE */
static int parse_outbox_cmds(int argc, char **argv, int i, cli__args *a, char *err, size_t n)
{
	const char *sub = i < argc && argv[i] ? argv[i] : NULL;
	if (!sub)
		return usage_err(err, n, "outbox: a subcommand is needed (set-aside, recover)%s", NULL);
	if (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0 || strcmp(sub, "help") == 0) {
		a->cmd = CLI_HELP;
		a->topic = "outbox";
		return 0;
	}
	i++;
	if (strcmp(sub, "set-aside") == 0)
		a->cmd = CLI_OUTBOX_SET_ASIDE;
	else if (strcmp(sub, "recover") == 0)
		a->cmd = CLI_OUTBOX_RECOVER;
	else
		return usage_err(err, n, "outbox: unknown subcommand '%.64s' (set-aside, recover)", sub);
	for (; i < argc && argv[i]; i++) {
		const char *o = argv[i];
		if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) {
			a->cmd = CLI_HELP;
			a->topic = "outbox";
			return 0;
		} else if (strcmp(o, "--json") == 0) {
			a->json = 1;
		} else if (a->cmd == CLI_OUTBOX_RECOVER && o[0] != '-' && !a->path) {
			a->path = o;
		} else {
			snprintf(err, n, "outbox %s: unknown argument '%.64s'", sub, o);
			return 2;
		}
	}
	if (a->cmd == CLI_OUTBOX_RECOVER && !a->path)
		return usage_err(err, n, "outbox recover: the quarantined file is needed (<store>/quarantine/outbox-*.db)%s",
				 NULL);
	return 0;
}

static int parse_num(const char *s, long lo, long hi, long *out)
{
	char *end;
	/* digits only: strtol would also take spaces and a sign */
	if (!s || !*s || (*s < '0' || *s > '9'))
		return -1;
	long v = strtol(s, &end, 10);
	if (*end || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

/* reco / coupons / redeem / redemptions */
static int parse_guide_cmds(const char *cmd, int argc, char **argv, int i, cli__args *a, char *err, size_t n)
{
	static const char *const topic[] = {"reco", "coupons", "redeem", "redemptions"};
	int k = strcmp(cmd, "reco") == 0 ? 0 : strcmp(cmd, "coupons") == 0 ? 1 : strcmp(cmd, "redeem") == 0 ? 2 : 3;
	a->cmd = k == 0 ? CLI_RECO : k == 1 ? CLI_COUPONS : k == 2 ? CLI_REDEEM : CLI_REDEMPTIONS;
	for (; i < argc && argv[i]; i++) {
		const char *o = argv[i];
		const char **slot = NULL;
		if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) {
			a->cmd = CLI_HELP;
			a->topic = topic[k];
			return 0;
		}
		if (strcmp(o, "--json") == 0) {
			a->json = 1;
			continue;
		}
		if (k != 3 && strcmp(o, "--member") == 0)
			slot = &a->member;
		else if (k != 3 && strcmp(o, "--basket") == 0)
			slot = &a->basket;
		else if ((k == 0 || k == 2) && strcmp(o, "--guide") == 0)
			slot = &a->guide;
		else if ((k == 1 || k == 2) && strcmp(o, "--currency") == 0)
			slot = &a->currency;
		else if (k == 2 && strcmp(o, "--coupon") == 0)
			slot = &a->coupon;
		else if (k == 2 && strcmp(o, "--order") == 0)
			slot = &a->order;
		else if ((k == 0 && strcmp(o, "--n") == 0) || (k == 3 && strcmp(o, "--limit") == 0)) {
			long v;
			if (i + 1 >= argc || parse_num(argv[i + 1], 1, k == 0 ? 50 : 100000, &v) != 0) {
				snprintf(err, n, "%s: %s needs a number from 1 to %d", cmd, o, k == 0 ? 50 : 100000);
				return 2;
			}
			a->n = (int)v;
			i++;
			continue;
		} else {
			snprintf(err, n, "%s: unknown argument '%.64s'", cmd, o);
			return 2;
		}
		if (i + 1 >= argc || !argv[i + 1] || !argv[i + 1][0]) {
			snprintf(err, n, "%s: %s needs a value", cmd, o);
			return 2;
		}
		*slot = argv[++i];
	}
	if (k == 2) {
		const char *miss = !a->coupon ? "--coupon" : !a->order ? "--order" : !a->basket ? "--basket" : !a->currency ? "--currency" : NULL;
		if (miss) {
			snprintf(err, n, "redeem: %s is required", miss);
			return 2;
		}
	}
	return 0;
}

int cli__parse_basket(const char *spec, struct scrm_line *lines, size_t cap, size_t *nout, char *buf, size_t bufcap,
		      char *err, size_t errlen)
{
	size_t n = 0, used = 0;
	const char *p = spec;
	*nout = 0;
	if (!spec || !*spec) {
		snprintf(err, errlen, "basket: empty (give SKU[:QTY[:UNIT_PRICE]],...)");
		return 2;
	}
	while (*p) {
		const char *e = strchr(p, ',');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		char item[200];
		if (len == 0 || len >= sizeof(item)) {
			snprintf(err, errlen, "basket item %zu: %s", n + 1, len ? "too long" : "empty");
			return 2;
		}
		if (n == cap) {
			snprintf(err, errlen, "basket: more than %zu items", cap);
			return 2;
		}
		memcpy(item, p, len);
		item[len] = '\0';
		char *f1 = strchr(item, ':'), *f2 = NULL;
		if (f1) {
			*f1++ = '\0';
			if ((f2 = strchr(f1, ':')))
				*f2++ = '\0';
		}
		size_t sl = strlen(item);
		if (sl == 0 || sl > 64) {
			snprintf(err, errlen, "basket item %zu: the SKU must be 1..64 characters", n + 1);
			return 2;
		}
		if (used + sl + 1 > bufcap) {
			snprintf(err, errlen, "basket: too long");
			return 2;
		}
		long qty = 1, price = 0;
		if ((f1 && parse_num(f1, 1, 1000000, &qty) != 0) || (f2 && parse_num(f2, 0, 2000000000L, &price) != 0)) {
			snprintf(err, errlen, "basket item %zu (%.64s): QTY must be 1..1000000 and UNIT_PRICE 0.. (minor units)", n + 1, item);
			return 2;
		}
		memcpy(buf + used, item, sl + 1);
		memset(&lines[n], 0, sizeof(lines[n]));
		lines[n].sku = buf + used;
		lines[n].qty = qty;
		lines[n].unit_price = price;
		used += sl + 1;
		n++;
		p = e ? e + 1 : p + len;
		if (e && !*p) {
			snprintf(err, errlen, "basket: trailing comma");
			return 2;
		}
	}
	*nout = n;
	return 0;
}

int cli__parse(int argc, char **argv, cli__args *a, char *err, size_t n)
{
	int i = 1;
	memset(a, 0, sizeof(*a));
	if (n)
		err[0] = '\0';
	for (; i < argc && argv[i] && argv[i][0] == '-'; i++) {
		const char *o = argv[i];
		if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) {
			a->cmd = CLI_HELP;
			a->topic = "";
			return 0;
		} else if (strcmp(o, "--version") == 0) {
			a->cmd = CLI_VERSION;
			return 0;
		} else if (strcmp(o, "--store") == 0 || strcmp(o, "--device") == 0 || strcmp(o, "--keys") == 0) {
			if (i + 1 >= argc || !argv[i + 1] || !argv[i + 1][0])
				return usage_err(err, n, "%s: needs a value", o);
			if (o[2] == 's')
				a->store = argv[++i];
			else if (o[2] == 'd')
				a->device = argv[++i];
			else
				a->keys = argv[++i];
		} else {
			return usage_err(err, n, "unknown option '%.64s'", o);
		}
	}
	if (i >= argc || !argv[i])
		return usage_err(err, n, "a command is needed (record, status, outbox, member, cache, reco, coupons, redeem, redemptions, help)%s", NULL);
	const char *cmd = argv[i++];
	if (strcmp(cmd, "help") == 0) {
		a->cmd = CLI_HELP;
		a->topic = i < argc && argv[i] ? argv[i] : "";
		if (*a->topic && strcmp(a->topic, "record") != 0 && strcmp(a->topic, "status") != 0 &&
		    strcmp(a->topic, "member") != 0 && strcmp(a->topic, "cache") != 0 && strcmp(a->topic, "reco") != 0 &&
		    strcmp(a->topic, "coupons") != 0 && strcmp(a->topic, "redeem") != 0 &&
		    strcmp(a->topic, "redemptions") != 0 && strcmp(a->topic, "outbox") != 0)
			return usage_err(err, n, "help: unknown command '%.64s'", a->topic);
		return 0;
	}
	if (strcmp(cmd, "member") == 0 || strcmp(cmd, "cache") == 0)
		return parse_cache_cmds(cmd, argc, argv, i, a, err, n);
	if (strcmp(cmd, "outbox") == 0)
		return parse_outbox_cmds(argc, argv, i, a, err, n);
	if (strcmp(cmd, "reco") == 0 || strcmp(cmd, "coupons") == 0 || strcmp(cmd, "redeem") == 0 ||
	    strcmp(cmd, "redemptions") == 0)
		return parse_guide_cmds(cmd, argc, argv, i, a, err, n);
	if (strcmp(cmd, "record") == 0)
		a->cmd = CLI_RECORD;
	else if (strcmp(cmd, "status") == 0)
		a->cmd = CLI_STATUS;
	else
		return usage_err(err, n, "unknown command '%.64s'", cmd);
	for (; i < argc && argv[i]; i++) {
		const char *o = argv[i];
		if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) {
			a->topic = a->cmd == CLI_RECORD ? "record" : "status";
			a->cmd = CLI_HELP;
			return 0;
		} else if (strcmp(o, "--json") == 0) {
			a->json = 1;
		} else if (a->cmd == CLI_RECORD && strcmp(o, "--lines") == 0) {
			a->lines = 1;
		} else if (a->cmd == CLI_RECORD && (o[0] != '-' || strcmp(o, "-") == 0)) {
			if (a->path)
				return usage_err(err, n, "record: one input file at most ('%.64s' is a second)", o);
			a->path = o;
		} else {
			snprintf(err, n, "%s: unknown argument '%.64s'", a->cmd == CLI_RECORD ? "record" : "status", o);
			return 2;
		}
	}
	return 0;
}

int cli__next_line(const char **p, const char *end, const char **line, size_t *len, long *lineno)
{
	while (*p < end) {
		const char *s = *p;
		const char *nl = memchr(s, '\n', (size_t)(end - s));
		const char *e = nl ? nl : end;
		*p = nl ? nl + 1 : end;
		(*lineno)++;
		size_t l = (size_t)(e - s);
		if (l && s[l - 1] == '\r')
			l--;
		size_t k = 0;
		while (k < l && (s[k] == ' ' || s[k] == '\t'))
			k++;
		if (k == l)
			continue; /* blank */
		*line = s;
		*len = l;
		return 1;
	}
	return 0;
}

void cli__age(char *buf, size_t n, int64_t ms)
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

const char *cli__str(const cJSON *o, const char *key)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsString(it) ? it->valuestring : NULL;
}

int64_t cli__i64(const cJSON *o, const char *key, int64_t dflt)
{
	/* 2^53: the largest integer a JSON number carries exactly
	 * (docs/protocol.md, "Numbers"). */
	const double max = 9007199254740992.0;
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
	if (!cJSON_IsNumber(it) || !(it->valuedouble >= -max && it->valuedouble <= max))
		return dflt;
	return (int64_t)it->valuedouble;
}
