/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cli: scrmctl's parsing of its command line and of JSON Lines input, kept
 * apart from ctl.c's I/O so it can be fuzzed (tests/fuzz/fuzz_cli.c).
 */
#ifndef SCRM_CLI_H
#define SCRM_CLI_H

#include <stddef.h>
#include <stdint.h>

typedef enum cli__command {
	CLI_NONE = 0,
	CLI_RECORD,
	CLI_STATUS,
	CLI_HELP,    /* topic in `topic` ("" = general) */
	CLI_VERSION,
	CLI_MEMBER_SHOW,  /* member show --id|--card|--phone|--qr VALUE [--scan [--guide G]] */
	CLI_CACHE_STATUS, /* cache status */
	CLI_CACHE_LOAD,   /* cache load FILE... */
	CLI_RECO,         /* reco [--member ID] [--basket B] [--n N] [--guide G] */
	CLI_COUPONS,      /* coupons [--member ID] [--basket B] [--currency C] */
	CLI_REDEEM,       /* redeem --coupon C --order O --basket B --currency C [--member ID] [--guide G] */
	CLI_REDEMPTIONS,  /* redemptions [--limit N] */
	CLI_OUTBOX_SET_ASIDE, /* outbox set-aside: events that could not be sent as stored */
	CLI_OUTBOX_RECOVER,   /* outbox recover FILE: events of a quarantined file, sent again */
} cli__command;

typedef struct cli__args {
	cli__command cmd;
	const char *store;  /* --store, NULL if not given (borrowed from argv) */
	const char *device; /* --device */
	const char *path;   /* record: input file, NULL = stdin; outbox recover: the file */
	const char *topic;  /* help: "", "record", "status", "member" or "cache" */
	const char *keys;   /* --keys DIR */
	int json, lines;
	int by;             /* member show: a scrm_member_key */
	const char *value;  /* member show: the id, card, phone or token */
	int scan;           /* member show --scan: record a member scan */
	const char *guide;  /* --guide */
	char **files;       /* cache load: the files (borrowed from argv) */
	int n_files;
	/* reco, coupons, redeem, redemptions */
	const char *member, *basket, *currency, *coupon, *order;
	int n;              /* reco --n, redemptions --limit; 0 = default */
} cli__args;

/* A basket given on the command line: "SKU[:QTY[:UNIT_PRICE]],..." (QTY
 * default 1, price default 0, minor units). SKUs are copied into buf and
 * lines point into it. 0, or 2 with the reason in err (naming the item). */
struct scrm_line;
int cli__parse_basket(const char *spec, struct scrm_line *lines, size_t cap, size_t *n, char *buf, size_t bufcap,
		      char *err, size_t errlen);

/* Parse argv. 0 on success; 2 on a usage error with a one-line reason in
 * err (naming the option or argument). argv strings are borrowed. */
int cli__parse(int argc, char **argv, cli__args *out, char *err, size_t errlen);

/* JSON Lines: the next non-blank line of [*p, end) — its start and length,
 * without the newline or a trailing CR — and *p advanced past it. Returns 1
 * with a line, 0 at the end. *lineno counts physical lines (for messages). */
int cli__next_line(const char **p, const char *end, const char **line, size_t *len, long *lineno);

/* A duration for people: "42s", "3m05s", "2h10m", "4d03h" (negative = 0). */
void cli__age(char *buf, size_t n, int64_t ms);

/* Lenient reads of one member of the JSON the API returned (the lib made
 * it, so a missing or mistyped member is shown as absent, not refused).
 * cli__str: the string (borrowed from the tree) or NULL. cli__i64: an
 * integer within +-2^53, the protocol's bound (truncated toward zero), or
 * dflt. `o` may be NULL. */
struct cJSON;
const char *cli__str(const struct cJSON *o, const char *key);
int64_t cli__i64(const struct cJSON *o, const char *key, int64_t dflt);

#endif
