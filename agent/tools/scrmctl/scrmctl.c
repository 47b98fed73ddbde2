/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrmctl: the store's command line. Records events given as JSON (a file
 * or stdin; one object, or JSON Lines with --lines) through libscrm exactly
 * as a POS would, and shows the outbox state. Human-readable by default,
 * --json for scripts. Exit codes: 0 ok, 1 refused/failed, 2 usage.
 */
#include <scrm/scrm.h>

#include "cache.h"
#include "cli.h"
#include "console.h"
#include "outbox.h"
#include "platform.h"
#include "salvage.h"
#include "sbuf.h"
#include "capture.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_INPUT (64 * 1024 * 1024)

struct opts {
	const char *store, *device, *keys;
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

/* Storage figures and alarms, on the store's own connection. */
struct storage {
	struct outbox__health h;
	sbuf alarms;
};

static int read_storage(outbox *ob, void *ctx)
{
	struct storage *x = ctx;
	int rc = outbox__health(ob, &x->h);
	return rc ? rc : outbox__alarms(ob, &x->alarms);
}

static const char *size_text(char *buf, size_t cap, int64_t n)
{
	if (n < 10 * 1024)
		snprintf(buf, cap, "%" PRId64 " B", n);
	else if (n < 10 * 1024 * 1024)
		snprintf(buf, cap, "%.1f KiB", (double)n / 1024.0);
	else
		snprintf(buf, cap, "%.1f MiB", (double)n / (1024.0 * 1024.0));
	return buf;
}

static void print_storage(const struct storage *x, int json)
{
	char a[32], b[32], c[32];
	const struct outbox__health *h = &x->h;
	if (json) {
		printf(",\"storage\":{\"bytes\":%" PRId64 ",\"max_bytes\":%" PRId64 ",\"reserve_bytes\":%" PRId64
		       ",\"in_reserve\":%s,\"refused_paid\":%" PRId64 ",\"dropped\":{",
		       h->bytes, h->max_bytes, h->reserve_bytes, h->in_reserve ? "true" : "false", h->refused_paid);
		for (size_t i = 0; i < h->n_dropped && i < OUTBOX_HEALTH_KINDS; i++)
			printf("%s\"%s\":{\"count\":%" PRId64 ",\"bytes\":%" PRId64 ",\"last_ms\":%" PRId64 "}", i ? "," : "",
			       h->dropped[i].kind, h->dropped[i].count, h->dropped[i].bytes, h->dropped[i].last_ms);
		printf("}},\"alarms\":%s", x->alarms.p && x->alarms.len ? x->alarms.p : "[]");
		return;
	}
	printf("storage      %s used of %s (outbox.max_bytes), the last %s kept for paid events%s\n",
	       size_text(a, sizeof(a), h->bytes), size_text(b, sizeof(b), h->max_bytes),
	       size_text(c, sizeof(c), h->reserve_bytes), h->in_reserve ? "  IN RESERVE" : "");
	if (h->n_dropped) {
		printf("dropped     ");
		for (size_t i = 0; i < h->n_dropped && i < OUTBOX_HEALTH_KINDS; i++)
			printf("%s %s %" PRId64 " (%s)", i ? "," : "", h->dropped[i].kind, h->dropped[i].count,
			       size_text(a, sizeof(a), h->dropped[i].bytes));
		printf("\n");
	} else {
		printf("dropped      none\n");
	}
	if (h->refused_paid)
		printf("refused      %" PRId64 " purchases/returns/redemptions: outbox full\n", h->refused_paid);
	cJSON *arr = cJSON_Parse(x->alarms.p ? x->alarms.p : "[]");
	const cJSON *it;
	int n = 0;
	cJSON_ArrayForEach(it, arr)
	{
		const cJSON *code = cJSON_GetObjectItemCaseSensitive(it, "code");
		const cJSON *count = cJSON_GetObjectItemCaseSensitive(it, "count");
		const cJSON *detail = cJSON_GetObjectItemCaseSensitive(it, "detail");
		printf("%s %s (x%d): %s\n", n++ ? "            " : "alarm       ",
		       cJSON_IsString(code) ? code->valuestring : "?", cJSON_IsNumber(count) ? (int)count->valuedouble : 0,
		       cJSON_IsString(detail) ? detail->valuestring : "");
	}
	if (!n)
		printf("alarms       none\n");
	cJSON_Delete(arr);
}

static int cmd_status(struct opts *o)
{
	scrm_store *st = NULL;
	scrm_outbox_stats s;
	struct storage x;
	if (open_store(o, &st) != SCRM_OK)
		return 1;
	memset(&x, 0, sizeof(x));
	sbuf__init(&x.alarms);
	int rc = scrm_outbox_get_stats(st, &s);
	if (rc == SCRM_OK)
		rc = store__exclusive(st, read_storage, &x);
	if (rc != SCRM_OK) {
		fprintf(stderr, "scrmctl: status: %s\n", scrm_errmsg());
		sbuf__free(&x.alarms);
		scrm_store_close(st);
		return 1;
	}
	int64_t now = platform__wall_ms();
	if (o->json) {
		printf("{\"device\":\"%s\",\"pending\":%" PRId64 ",\"pending_bytes\":%" PRId64
		       ",\"oldest_pending_ms\":%" PRId64 ",\"oldest_pending_age_ms\":%" PRId64 ",\"last_seq\":%" PRId64
		       ",\"last_ack_ms\":%" PRId64 ",\"last_acked_seq\":%" PRId64 ",\"rejected\":%" PRId64,
		       scrm_store_device_id(st), s.pending, s.pending_bytes, s.oldest_pending_ms,
		       s.oldest_pending_ms ? now - s.oldest_pending_ms : 0, s.last_seq, s.last_ack_ms, s.last_acked_seq,
		       s.rejected);
		print_storage(&x, 1);
		printf("}\n");
	} else {
		char a[32];
		printf("device       %s\n", scrm_store_device_id(st));
		printf("pending      %" PRId64 " events, %.1f KiB\n", s.pending, (double)s.pending_bytes / 1024.0);
		if (s.oldest_pending_ms) {
			cli__age(a, sizeof(a), now - s.oldest_pending_ms);
			printf("oldest       %s ago\n", a);
		} else {
			printf("oldest       -\n");
		}
		printf("last seq     %" PRId64 "\n", s.last_seq);
		if (s.last_ack_ms) {
			cli__age(a, sizeof(a), now - s.last_ack_ms);
			printf("last ack     %s ago (up to seq %" PRId64 ")\n", a, s.last_acked_seq);
		} else {
			printf("last ack     never\n");
		}
		printf("rejected     %" PRId64 "%s\n", s.rejected, s.rejected ? "  (central refused these; see the rejected table)" : "");
		print_storage(&x, 0);
	}
	sbuf__free(&x.alarms);
	scrm_store_close(st);
	return 0;
}

static int open_cache(const struct opts *o, scrm_cache **c)
{
	int rc = scrm_cache_open(o->store, o->keys, c);
	if (rc != SCRM_OK)
		fprintf(stderr, "scrmctl: cache: %s\n", scrm_errmsg()[0] ? scrm_errmsg() : scrm_strerror(rc));
	return rc;
}

static const char *jstr(const cJSON *o, const char *k)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsString(it) ? it->valuestring : NULL;
}

static int64_t jint(const cJSON *o, const char *k)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsNumber(it) ? (int64_t)it->valuedouble : 0;
}

static void print_list(const char *label, const cJSON *arr)
{
	const cJSON *e;
	int first = 1;
	printf("%-12s ", label);
	cJSON_ArrayForEach(e, arr)
	{
		if (cJSON_IsString(e)) {
			printf("%s%s", first ? "" : ", ", e->valuestring);
			first = 0;
		}
	}
	printf("%s\n", first ? "-" : "");
}

static void money(char *buf, size_t n, int64_t minor, const char *cur)
{
	snprintf(buf, n, "%s%lld.%02lld %s", minor < 0 ? "-" : "", (long long)(llabs(minor) / 100), (long long)(llabs(minor) % 100),
		 cur ? cur : "");
}

/* The card as a guide reads it. */
static void print_card(const char *json)
{
	cJSON *c = cJSON_Parse(json), *o;
	char a[32], m[48];
	int64_t now = platform__wall_ms();
	if (!c) {
		puts(json);
		return;
	}
	o = cJSON_GetObjectItemCaseSensitive(c, "personal");
	printf("member       %s%s%s\n", jstr(c, "member_id"), o && jstr(o, "name") ? "  " : "", o && jstr(o, "name") ? jstr(o, "name") : "");
	if (o) {
		printf("phone        %s\n", jstr(o, "phone") ? jstr(o, "phone") : "-");
		printf("birthday     %s\n", jstr(o, "birthday") ? jstr(o, "birthday") : "-");
	}
	printf("card         %s\n", jstr(c, "card") ? jstr(c, "card") : "-");
	printf("tier         %s\n", jstr(c, "tier") ? jstr(c, "tier") : "-");
	print_list("tags", cJSON_GetObjectItemCaseSensitive(c, "tags"));
	if ((o = cJSON_GetObjectItemCaseSensitive(c, "rfm")))
		printf("rfm          R%lld F%lld M%lld  %s\n", (long long)jint(o, "r"), (long long)jint(o, "f"), (long long)jint(o, "m"),
		       jstr(o, "segment") ? jstr(o, "segment") : "");
	printf("stage        %s   value band %s\n", jstr(c, "stage") ? jstr(c, "stage") : "-", jstr(c, "ltv_band") ? jstr(c, "ltv_band") : "-");
	if ((o = cJSON_GetObjectItemCaseSensitive(c, "consent")))
		printf("consent      marketing %s, tracking %s\n", cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "marketing")) ? "yes" : "no",
		       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "tracking")) ? "yes" : "no");
	if ((o = cJSON_GetObjectItemCaseSensitive(c, "stats"))) {
		money(m, sizeof(m), jint(o, "spend"), jstr(o, "currency"));
		printf("orders       %lld, spend %s\n", (long long)jint(o, "orders"), m);
		if (jint(o, "last_purchase_ms")) {
			cli__age(a, sizeof(a), now - jint(o, "last_purchase_ms"));
			printf("last bought  %s ago\n", a);
		}
	}
	if ((o = cJSON_GetObjectItemCaseSensitive(c, "local")) && jint(o, "orders") + jint(o, "returns") > 0)
		printf("this store   %lld purchase(s), %lld return(s) not yet in central's figures (included above)\n",
		       (long long)jint(o, "orders"), (long long)jint(o, "returns"));
	const cJSON *e, *arr = cJSON_GetObjectItemCaseSensitive(c, "recent");
	int k = 0;
	cJSON_ArrayForEach(e, arr)
	{
		if (k++ >= 5)
			break;
		cli__age(a, sizeof(a), now - jint(e, "ts"));
		money(m, sizeof(m), jint(e, "total"), NULL);
		printf("%-12s %s ago  %s %lld item(s)%s\n", k == 1 ? "recent" : "", a, m,
		       (long long)cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(e, "skus")),
		       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "local")) ? "  (this store, today's view)" : "");
	}
	arr = cJSON_GetObjectItemCaseSensitive(c, "coupons");
	k = 0;
	cJSON_ArrayForEach(e, arr)
	{
		printf("%-12s %s  %s  code %s\n", k++ ? "" : "coupons", jstr(e, "id") ? jstr(e, "id") : "?",
		       jstr(e, "campaign") ? jstr(e, "campaign") : "", jstr(e, "code") ? jstr(e, "code") : "-");
	}
	if (!k)
		printf("coupons      -\n");
	cJSON_Delete(c);
}

static int cmd_member_show(const struct opts *o, const cli__args *a)
{
	scrm_cache *c = NULL;
	scrm_store *st = NULL;
	scrm_receipt r;
	char *card = NULL;
	int rc;
	if (open_cache(o, &c) != SCRM_OK)
		return 1;
	if (a->scan) {
		if (open_store(o, &st) != SCRM_OK) {
			scrm_cache_close(c);
			return 1;
		}
		rc = scrm_member_identify(st, c, (scrm_member_key)a->by, a->value, a->guide, &card, &r);
	} else {
		rc = scrm_member_get(c, (scrm_member_key)a->by, a->value, &card);
	}
	if (rc != SCRM_OK) {
		fprintf(stderr, "scrmctl: member show: %s\n", scrm_errmsg()[0] ? scrm_errmsg() : scrm_strerror(rc));
	} else if (o->json) {
		puts(card);
	} else {
		print_card(card);
		if (a->scan)
			printf("scan         recorded seq=%" PRId64 " id=%s\n", r.seq, r.event_id);
	}
	scrm_free(card);
	scrm_store_close(st);
	scrm_cache_close(c);
	return rc == SCRM_OK ? 0 : 1;
}

static int cmd_cache_status(const struct opts *o)
{
	scrm_cache *c = NULL;
	char *json = NULL;
	if (open_cache(o, &c) != SCRM_OK)
		return 1;
	int rc = scrm_cache_status(c, &json);
	scrm_cache_close(c);
	if (rc != SCRM_OK) {
		fprintf(stderr, "scrmctl: cache status: %s\n", scrm_errmsg());
		return 1;
	}
	if (o->json) {
		puts(json);
	} else {
		cJSON *root = cJSON_Parse(json), *e;
		printf("%-10s %10s %9s %10s %8s  %s\n", "stream", "cursor", "rows", "age", "refused", "snapshot");
		cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(root, "streams"))
		{
			char a[32] = "never", snap[80] = "-";
			const cJSON *sn = cJSON_GetObjectItemCaseSensitive(e, "snapshot");
			if (cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(e, "age_ms")))
				cli__age(a, sizeof(a), jint(e, "age_ms"));
			if (sn)
				snprintf(snap, sizeof(snap), "receiving %lld/%lld chunks", (long long)jint(sn, "chunks_done"),
					 (long long)jint(sn, "chunks"));
			else if (jstr(e, "resync"))
				snprintf(snap, sizeof(snap), "wanted (%s)", jstr(e, "resync"));
			printf("%-10s %10lld %9lld %10s %8lld  %s\n", jstr(e, "stream"), (long long)jint(e, "cursor"),
			       (long long)jint(e, "rows"), a, (long long)jint(e, "refused"), snap);
		}
		if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "tenant_key")))
			printf("note: no tenant.key: phone look-ups are unavailable\n");
		if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "central_key")))
			printf("note: no central.pub: coupons and QR tokens cannot be verified\n");
		cJSON_Delete(root);
	}
	scrm_free(json);
	return 0;
}

static int cmd_cache_load(const struct opts *o, const cli__args *a)
{
	char lock[4200];
	cache *c = NULL;
	int lfd, failed = 0;
	cache__options co = {.keys_dir = o->keys, .create = 1};
	/* The daemon may be building a snapshot of the same stream. */
	snprintf(lock, sizeof(lock), "%s/agent.lock", o->store);
	platform__mkdirs(o->store, 0700);
	if ((lfd = platform__lock_file(lock)) < 0) {
		fprintf(stderr, "scrmctl: cache load: %s\n",
			lfd == -EWOULDBLOCK ? "scrm-agent is running on this store; stop it first (or let central resync)"
					    : strerror(-lfd));
		return 1;
	}
	if (cache__open(o->store, &co, &c) != SCRM_OK) {
		fprintf(stderr, "scrmctl: cache load: %s\n", scrm_errmsg());
		return 1;
	}
	for (int i = 0; i < a->n_files; i++) {
		int64_t n = 0, refused = 0;
		int st = -1;
		int64_t t0 = platform__mono_ms();
		if (cache__load_file(c, a->files[i], NULL, NULL, &n, &refused, &st) != SCRM_OK) {
			fprintf(stderr, "scrmctl: cache load: %s\n", scrm_errmsg());
			failed = 1;
			continue;
		}
		printf("loaded %s: stream %s, %lld records%s in %.1f s\n", a->files[i], cache__stream_name(st), (long long)n,
		       refused ? " (some refused: bad signature)" : "", (double)(platform__mono_ms() - t0) / 1000.0);
		if (refused) {
			printf("  refused %lld: first: %s\n", (long long)refused, cache__refused_detail(c));
			failed = 1;
		}
	}
	cache__close(c);
	close(lfd);
	return failed;
}

static void fail_msg(const char *cmd, int rc)
{
	fprintf(stderr, "scrmctl: %s: %s\n", cmd, scrm_errmsg()[0] ? scrm_errmsg() : scrm_strerror(rc));
}

#define MAX_CLI_BASKET 1000

/* The --basket of this run (one command per run). */
static scrm_line g_lines[MAX_CLI_BASKET];
static char g_skus[MAX_CLI_BASKET * 66];

/* Parse --basket (NULL = empty) into g_lines: 0, or 2 with the reason printed. */
static int basket_arg(const char *cmd, const char *spec, size_t *n)
{
	char err[200];
	*n = 0;
	if (!spec)
		return 0;
	if (cli__parse_basket(spec, g_lines, MAX_CLI_BASKET, n, g_skus, sizeof(g_skus), err, sizeof(err))) {
		fprintf(stderr, "scrmctl: %s: %s\n", cmd, err);
		return 2;
	}
	return 0;
}

static int cmd_reco(const struct opts *o, const cli__args *a)
{
	size_t nl = 0;
	char *json = NULL;
	scrm_cache *c = NULL;
	scrm_store *st = NULL;
	int rc;
	if (basket_arg("reco", a->basket, &nl))
		return 2;
	if (open_cache(o, &c) != SCRM_OK)
		return 1;
	/* The store adds this device's purchases; it is needed to record. */
	if (scrm_store_open(o->store, NULL, &st) != SCRM_OK) {
		if (a->guide) {
			fail_msg("reco", SCRM_E_NOT_FOUND);
			scrm_cache_close(c);
			return 1;
		}
		st = NULL;
	}
	scrm_reco_request rq = {.member_id = a->member, .basket = g_lines, .n_basket = nl, .n = a->n, .guide_id = a->guide};
	rc = scrm_recommend(c, st, &rq, &json);
	if (rc != SCRM_OK) {
		fail_msg("reco", rc);
	} else if (o->json) {
		puts(json);
	} else {
		cJSON *r = cJSON_Parse(json), *e;
		char m[48];
		int k = 0;
		if (a->member)
			printf("member       %s   stage %s (%s)\n", a->member, jstr(r, "stage") ? jstr(r, "stage") : "-",
			       jstr(r, "stage_reason") ? jstr(r, "stage_reason") : "");
		cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(r, "items"))
		{
			money(m, sizeof(m), jint(e, "price"), NULL);
			printf("%2d. %-10s %-36.36s %10s  %s\n", ++k, jstr(e, "sku"), jstr(e, "name") ? jstr(e, "name") : "",
			       cJSON_GetObjectItemCaseSensitive(e, "price") ? m : "", jstr(e, "reason") ? jstr(e, "reason") : "");
		}
		if (!k)
			printf("no suggestions (no rules, history or bestsellers in the cache for this)\n");
		const cJSON *na = cJSON_GetObjectItemCaseSensitive(r, "next_action"), *cp, *sc;
		if (na) {
			printf("next action  %s\n", jstr(na, "action"));
			if ((cp = cJSON_GetObjectItemCaseSensitive(na, "coupon")))
				printf("  coupon     %s  %s%s%s\n", jstr(cp, "key"), jstr(cp, "name") ? jstr(cp, "name") : "",
				       jstr(cp, "code") ? "  code " : "", jstr(cp, "code") ? jstr(cp, "code") : "");
			cJSON_ArrayForEach(sc, cJSON_GetObjectItemCaseSensitive(na, "scripts"))
			printf("  say        %s%s%s\n", jstr(sc, "title") ? jstr(sc, "title") : "", jstr(sc, "title") ? ": " : "",
			       jstr(sc, "text") ? jstr(sc, "text") : "");
		}
		if (jstr(r, "reco_id"))
			printf("recorded     reco_id=%s (a sale to this member is credited to %s)\n", jstr(r, "reco_id"), a->guide);
		cJSON_Delete(r);
	}
	scrm_free(json);
	scrm_store_close(st);
	scrm_cache_close(c);
	return rc == SCRM_OK ? 0 : 1;
}

static int cmd_coupons(const struct opts *o, const cli__args *a)
{
	size_t nl = 0;
	char *json = NULL;
	scrm_cache *c = NULL;
	scrm_store *st = NULL;
	int rc;
	if (basket_arg("coupons", a->basket, &nl))
		return 2;
	if (open_cache(o, &c) != SCRM_OK)
		return 1;
	if (scrm_store_open(o->store, NULL, &st) != SCRM_OK)
		st = NULL;
	scrm_coupon_request rq = {.member_id = a->member, .basket = g_lines, .n_basket = nl, .currency = a->currency};
	rc = scrm_coupons_for(c, st, &rq, &json);
	if (rc != SCRM_OK) {
		fail_msg("coupons", rc);
	} else if (o->json) {
		puts(json);
	} else {
		cJSON *r = cJSON_Parse(json), *e;
		char m[48];
		money(m, sizeof(m), jint(r, "subtotal"), a->currency);
		printf("basket %s, central %s\n", m,
		       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "online")) ? "reachable" : "NOT reachable (offline rules apply)");
		cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(r, "eligible"))
		{
			money(m, sizeof(m), jint(e, "value"), NULL);
			printf("  OK   %-22s %-36.36s -%s%s\n", jstr(e, "key"), jstr(e, "name") ? jstr(e, "name") : "", m,
			       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "capped")) ? " (capped offline)" : "");
		}
		cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(r, "ineligible"))
		printf("  no   %-22s %-14s %s\n", jstr(e, "key"), jstr(e, "reason"), jstr(e, "detail") ? jstr(e, "detail") : "");
		cJSON_Delete(r);
	}
	scrm_free(json);
	scrm_store_close(st);
	scrm_cache_close(c);
	return rc == SCRM_OK ? 0 : 1;
}

static int cmd_redeem(const struct opts *o, const cli__args *a)
{
	size_t nl = 0;
	char *json = NULL;
	scrm_cache *c = NULL;
	scrm_store *st = NULL;
	scrm_redemption red;
	int rc;
	if (basket_arg("redeem", a->basket, &nl))
		return 2;
	if (open_cache(o, &c) != SCRM_OK)
		return 1;
	if (open_store(o, &st) != SCRM_OK) {
		scrm_cache_close(c);
		return 1;
	}
	scrm_redeem_request rq = {.member_id = a->member, .coupon = a->coupon, .basket = g_lines, .n_basket = nl,
				  .currency = a->currency, .order_id = a->order, .guide_id = a->guide};
	rc = scrm_redeem(c, st, &rq, &red, &json);
	if (rc != SCRM_OK) {
		if (o->json) {
			printf("{\"ok\":false,\"error\":\"%s\",\"detail\":\"", scrm_strerror(rc));
			for (const char *p = scrm_errmsg(); *p; p++)
				if (*p == '"' || *p == '\\')
					printf("\\%c", *p);
				else if ((unsigned char)*p >= 0x20)
					putchar(*p);
			printf("\"}\n");
		}
		fail_msg("redeem", rc);
	} else if (o->json) {
		puts(json);
	} else {
		char m[48];
		money(m, sizeof(m), red.value, a->currency);
		printf("redeemed     %s  discount %s  %s\n", a->coupon, m,
		       red.offline ? "(offline: reserved here, central confirms later)" : "(online)");
		printf("redemption   %s seq=%lld\n", red.redemption_id, (long long)red.seq);
	}
	scrm_free(json);
	scrm_store_close(st);
	scrm_cache_close(c);
	return rc == SCRM_OK ? 0 : 1;
}

static int cmd_redemptions(const struct opts *o, const cli__args *a)
{
	scrm_store *st = NULL;
	char *json = NULL;
	if (open_store(o, &st) != SCRM_OK)
		return 1;
	int rc = scrm_redemptions(st, a->n, &json);
	scrm_store_close(st);
	if (rc != SCRM_OK) {
		fail_msg("redemptions", rc);
		return 1;
	}
	if (o->json) {
		puts(json);
	} else {
		cJSON *r = cJSON_Parse(json), *e;
		char m[48], t[32];
		int64_t now = platform__wall_ms();
		printf("pending %lld, accepted %lld, rejected %lld%s\n", (long long)jint(r, "pending"),
		       (long long)jint(r, "accepted"), (long long)jint(r, "rejected"),
		       jint(r, "rejected") ? "   <- rejected ones need follow-up with the customer" : "");
		cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(r, "redemptions"))
		{
			money(m, sizeof(m), jint(e, "value"), jstr(e, "currency"));
			cli__age(t, sizeof(t), now - jint(e, "reserved_ms"));
			printf("  %-9s %-12s %-12s order %-10s %12s  %s ago %s%s%s\n", jstr(e, "verdict"),
			       jstr(e, "coupon") ? jstr(e, "coupon") : "-", jstr(e, "campaign"), jstr(e, "order_id"), m, t,
			       jstr(e, "mode"), jstr(e, "reason") ? "  " : "", jstr(e, "detail") ? jstr(e, "detail") : jstr(e, "reason") ? jstr(e, "reason") : "");
		}
		cJSON_Delete(r);
	}
	scrm_free(json);
	return 0;
}

static int cmd_outbox_set_aside(const struct opts *o)
{
	outbox *ob = NULL;
	sbuf out;
	int rc = outbox__open(o->store, o->device, 0, &ob);
	if (rc != SCRM_OK) {
		fail_msg("outbox set-aside", rc);
		return 1;
	}
	sbuf__init(&out);
	rc = outbox__set_aside_list(ob, &out);
	outbox__close(ob);
	if (rc != SCRM_OK || out.oom) {
		fail_msg("outbox set-aside", rc ? rc : SCRM_E_NOMEM);
		sbuf__free(&out);
		return 1;
	}
	if (o->json) {
		puts(out.p);
	} else {
		cJSON *r = cJSON_Parse(out.p), *e;
		char t[32];
		int64_t now = platform__wall_ms(), n = 0;
		cJSON_ArrayForEach(e, r)
		{
			cli__age(t, sizeof(t), now - jint(e, "set_aside_ms"));
			printf("seq %-12lld %-13s %-10s %7lld bytes  %s ago  %s\n", (long long)jint(e, "seq"),
			       jstr(e, "kind") ? jstr(e, "kind") : "?", jstr(e, "reason"), (long long)jint(e, "bytes"), t,
			       jstr(e, "detail") ? jstr(e, "detail") : "");
			n++;
		}
		printf("%lld event(s) set aside%s\n", (long long)n,
		       n ? " (--json prints their bodies; central holds a marker for each)" : "");
		cJSON_Delete(r);
	}
	sbuf__free(&out);
	return 0;
}

static int cmd_outbox_recover(const struct opts *o, const cli__args *a)
{
	outbox *ob = NULL;
	salvage__report r;
	int rc = outbox__open(o->store, o->device, 0, &ob);
	if (rc == SCRM_OK) {
		rc = outbox__recover_file(ob, a->path, &r);
		outbox__close(ob);
	}
	if (rc != SCRM_OK) {
		fail_msg("outbox recover", rc);
		return 1;
	}
	/* The agent sends them at its next turn (a capture or its idle check
	 * pokes it; so does this). */
	platform__notifier *n = platform__notifier_open(o->store);
	platform__notifier_send(n);
	platform__notifier_close(n);
	if (o->json)
		printf("{\"recovered\":%lld,\"already_held\":%lld,\"unreadable\":%lld,\"damaged_ranges\":%lld,"
		       "\"ledger_rows\":%lld}\n",
		       (long long)r.events, (long long)r.skipped, (long long)r.unreadable_rows, (long long)r.skipped_ranges,
		       (long long)r.ledger_rows);
	else
		printf("%lld event(s) put back to be sent again; %lld already held or taken before; %lld unreadable;"
		       " %lld damaged range(s) stepped over\n",
		       (long long)r.events, (long long)r.skipped, (long long)r.unreadable_rows, (long long)r.skipped_ranges);
	return 0;
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
		return console__main(argc - 1, argv + 1);
	if (cli__parse(argc, argv, &a, err, sizeof(err)) != 0) {
		fprintf(stderr, "scrmctl: %s\nTry 'scrmctl --help'.\n", err);
		return 2;
	}
	struct opts o = {.store = a.store, .device = a.device, .keys = a.keys, .json = a.json, .lines = a.lines};
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
		return cmd_record(&o, a.path);
	case CLI_STATUS:
		return cmd_status(&o);
	case CLI_MEMBER_SHOW:
		return cmd_member_show(&o, &a);
	case CLI_CACHE_STATUS:
		return cmd_cache_status(&o);
	case CLI_CACHE_LOAD:
		return cmd_cache_load(&o, &a);
	case CLI_RECO:
		return cmd_reco(&o, &a);
	case CLI_COUPONS:
		return cmd_coupons(&o, &a);
	case CLI_REDEEM:
		return cmd_redeem(&o, &a);
	case CLI_REDEMPTIONS:
		return cmd_redemptions(&o, &a);
	case CLI_OUTBOX_SET_ASIDE:
		return cmd_outbox_set_aside(&o);
	case CLI_OUTBOX_RECOVER:
		return cmd_outbox_recover(&o, &a);
	case CLI_NONE:
		break;
	}
	usage_main(stderr);
	return 2;
}
