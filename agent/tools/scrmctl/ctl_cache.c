/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ctl_cache: scrmctl's customer-cache commands — member show (the profile
 * card as a guide reads it, and --scan recording the scan), cache status
 * (per stream: cursor, rows, age, snapshot progress) and cache load
 * (seeding a store from snapshot files, under the agent's lock).
 */
#include "ctl.h"

#include "platform.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
	printf("member       %s%s%s\n", cli__str(c, "member_id"), o && cli__str(o, "name") ? "  " : "", o && cli__str(o, "name") ? cli__str(o, "name") : "");
	if (o) {
		printf("phone        %s\n", cli__str(o, "phone") ? cli__str(o, "phone") : "-");
		printf("birthday     %s\n", cli__str(o, "birthday") ? cli__str(o, "birthday") : "-");
	}
	printf("card         %s\n", cli__str(c, "card") ? cli__str(c, "card") : "-");
	printf("tier         %s\n", cli__str(c, "tier") ? cli__str(c, "tier") : "-");
	print_list("tags", cJSON_GetObjectItemCaseSensitive(c, "tags"));
	if ((o = cJSON_GetObjectItemCaseSensitive(c, "rfm")))
		printf("rfm          R%lld F%lld M%lld  %s\n", (long long)cli__i64(o, "r", 0), (long long)cli__i64(o, "f", 0), (long long)cli__i64(o, "m", 0),
		       cli__str(o, "segment") ? cli__str(o, "segment") : "");
	printf("stage        %s   value band %s\n", cli__str(c, "stage") ? cli__str(c, "stage") : "-", cli__str(c, "ltv_band") ? cli__str(c, "ltv_band") : "-");
	if ((o = cJSON_GetObjectItemCaseSensitive(c, "consent")))
		printf("consent      marketing %s, tracking %s\n", cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "marketing")) ? "yes" : "no",
		       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "tracking")) ? "yes" : "no");
	if ((o = cJSON_GetObjectItemCaseSensitive(c, "stats"))) {
		ctl__money(m, sizeof(m), cli__i64(o, "spend", 0), cli__str(o, "currency"));
		printf("orders       %lld, spend %s\n", (long long)cli__i64(o, "orders", 0), m);
		if (cli__i64(o, "last_purchase_ms", 0)) {
			cli__age(a, sizeof(a), now - cli__i64(o, "last_purchase_ms", 0));
			printf("last bought  %s ago\n", a);
		}
	}
	if ((o = cJSON_GetObjectItemCaseSensitive(c, "local")) && cli__i64(o, "orders", 0) + cli__i64(o, "returns", 0) > 0)
		printf("this store   %lld purchase(s), %lld return(s) not yet in central's figures (included above)\n",
		       (long long)cli__i64(o, "orders", 0), (long long)cli__i64(o, "returns", 0));
	const cJSON *e, *arr = cJSON_GetObjectItemCaseSensitive(c, "recent");
	int k = 0;
	cJSON_ArrayForEach(e, arr)
	{
		if (k++ >= 5)
			break;
		cli__age(a, sizeof(a), now - cli__i64(e, "ts", 0));
		ctl__money(m, sizeof(m), cli__i64(e, "total", 0), NULL);
		printf("%-12s %s ago  %s %lld item(s)%s\n", k == 1 ? "recent" : "", a, m,
		       (long long)cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(e, "skus")),
		       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "local")) ? "  (this store, today's view)" : "");
	}
	arr = cJSON_GetObjectItemCaseSensitive(c, "coupons");
	k = 0;
	cJSON_ArrayForEach(e, arr)
	{
		printf("%-12s %s  %s  code %s\n", k++ ? "" : "coupons", cli__str(e, "id") ? cli__str(e, "id") : "?",
		       cli__str(e, "campaign") ? cli__str(e, "campaign") : "", cli__str(e, "code") ? cli__str(e, "code") : "-");
	}
	if (!k)
		printf("coupons      -\n");
	cJSON_Delete(c);
}

int ctl__member_show(const struct ctl__opts *o, const cli__args *a)
{
	scrm_cache *c = NULL;
	scrm_store *st = NULL;
	scrm_receipt r;
	char *card = NULL;
	int rc;
	if (ctl__open_cache(o, &c) != SCRM_OK)
		return 1;
	if (a->scan) {
		if (ctl__open_store(o, &st) != SCRM_OK) {
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

int ctl__cache_status(const struct ctl__opts *o)
{
	scrm_cache *c = NULL;
	char *json = NULL;
	if (ctl__open_cache(o, &c) != SCRM_OK)
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
				cli__age(a, sizeof(a), cli__i64(e, "age_ms", 0));
			if (sn)
				snprintf(snap, sizeof(snap), "receiving %lld/%lld chunks", (long long)cli__i64(sn, "chunks_done", 0),
					 (long long)cli__i64(sn, "chunks", 0));
			else if (cli__str(e, "resync"))
				snprintf(snap, sizeof(snap), "wanted (%s)", cli__str(e, "resync"));
			printf("%-10s %10lld %9lld %10s %8lld  %s\n", cli__str(e, "stream"), (long long)cli__i64(e, "cursor", 0),
			       (long long)cli__i64(e, "rows", 0), a, (long long)cli__i64(e, "refused", 0), snap);
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

int ctl__cache_load(const struct ctl__opts *o, const cli__args *a)
{
	char lock[4200];
	scrm_cache *c = NULL;
	int lfd, failed = 0;
	/* The daemon may be building a snapshot of the same stream. */
	snprintf(lock, sizeof(lock), "%s/agent.lock", o->store);
	platform__mkdirs(o->store, 0700);
	if ((lfd = platform__lock_file(lock)) < 0) {
		fprintf(stderr, "scrmctl: cache load: %s\n",
			lfd == -EWOULDBLOCK ? "scrm-agent is running on this store; stop it first (or let central resync)"
					    : strerror(-lfd));
		return 1;
	}
	if (scrm_cache_create(o->store, o->keys, &c) != SCRM_OK) {
		fprintf(stderr, "scrmctl: cache load: %s\n", scrm_errmsg());
		return 1;
	}
	for (int i = 0; i < a->n_files; i++) {
		scrm_cache_load r;
		int64_t t0 = platform__mono_ms();
		if (scrm_cache_load_file(c, a->files[i], &r) != SCRM_OK) {
			fprintf(stderr, "scrmctl: cache load: %s\n", scrm_errmsg());
			failed = 1;
			continue;
		}
		printf("loaded %s: stream %s, %lld records%s in %.1f s\n", a->files[i], r.stream, (long long)r.records,
		       r.refused ? " (some refused: bad signature)" : "", (double)(platform__mono_ms() - t0) / 1000.0);
		if (r.refused) {
			printf("  refused %lld: first: %s\n", (long long)r.refused, r.refused_detail);
			failed = 1;
		}
	}
	scrm_cache_close(c);
	close(lfd);
	return failed;
}
