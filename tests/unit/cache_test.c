/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cache_test: the customer cache (agent/lib/cache/, agent/lib/core/crypto.c,
 * and the public look-up API in agent/lib/cache/cache_api.c) against the contract in
 * docs/protocol.md, "Customer cache (central → store)": snapshots swapped in
 * at their last chunk, deltas and cursors, gaps and the resync schedule, a
 * build interrupted by SIGKILL and resumed, signed coupons and QR tokens,
 * phone look-ups with no personal data in clear on disk, erasure reaching the
 * outbox, refused messages leaving the cache untouched, snapshot files, the
 * guide's reads (query.h) and the stream table (streams.def).
 *
 * Links libscrm's static archive (the real cache, crypto, outbox and store)
 * and scrm_cachegen, which plays central: its key pair signs coupons and
 * mints QR tokens, its tenant key is the one the agent hashes phones with.
 * The keys are made once for the whole group (signing is slow under qemu);
 * each test gets a fresh store directory with its own device data key. The
 * clocks are faked (platform__clock_override): QR expiry, "local" purchases
 * after stats.as_of_ms and the resync timeouts all read them.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <sqlite3.h>

#include <scrm/scrm.h>

#include "cache.h"
#include "cache_int.h" /* the stream table (streams.def) */
#include "query.h"
#include "cachegen.h"
#include "outbox.h"
#include "platform.h"
#include "sbuf.h"
#include "testutil.h"

#include <cjson/cJSON.h>
#include <ftw.h>
#include <mbedtls/base64.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NOW_MS 1800000000000LL  /* fake wall clock: 2027-01-15 */
#define MONO_MS 5000000LL       /* fake monotonic clock */
#define TIMEOUT_MS 1000         /* cache.snapshot_timeout_ms in these tests */
#define MAX_MSG (1024 * 1024)   /* cache.max_message_bytes in these tests */

/* Central's keys, made once (see the file comment). */
static char *g_central;   /* dir with central.key, central.pub, tenant.key */
static cg_signer *g_signer;

typedef struct fx {
	char *dir;   /* temp dir */
	char *store; /* <dir>/store: outbox.db, private/ (cache.db, keys/) */
	char *keys;  /* <store>/keys */
	char *cache_db, *outbox_db;
	cache *c;
	scrm_store *s; /* only in the tests that capture */
	tu_clock clk;
} fx;

/* ---- plumbing ------------------------------------------------------- */

static void copy_file(const char *from, const char *to)
{
	char *text = NULL;
	size_t n = 0;
	assert_int_equal(platform__read_file(from, 1 << 16, &text, &n), 0);
	FILE *f = fopen(to, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(text, 1, n, f), n);
	assert_int_equal(fclose(f), 0);
	/* As a store is provisioned: keys readable by the agent's user only
	 * (a group-readable tenant.key is refused). */
	assert_int_equal(chmod(to, 0600), 0);
	free(text);
}

static int group_setup(void **state)
{
	(void)state;
	g_central = tu_tmpdir("cache-central");
	char *key = tu_join(g_central, "central.key");
	int rc = cg_keys_create(g_central, 7);
	if (rc == 0)
		rc = cg_signer_open(key, &g_signer);
	free(key);
	return rc == 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
	(void)state;
	cg_signer_close(g_signer);
	tu_rmtree(g_central);
	free(g_central);
	return 0;
}

static void open_cache(fx *f)
{
	cache__options o = {.create = 1, .max_message_bytes = MAX_MSG, .snapshot_timeout_ms = TIMEOUT_MS};
	int rc = cache__open(f->store, &o, &f->c);
	if (rc != SCRM_OK)
		print_error("cache__open: %s\n", scrm_errmsg());
	assert_int_equal(rc, SCRM_OK);
	assert_int_equal(cache__set_identity(f->c, "acme", "44"), SCRM_OK);
}

static int setup(void **state)
{
	fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	f->dir = tu_tmpdir("cache");
	f->store = tu_join(f->dir, "store");
	f->keys = tu_join(f->store, "private/keys");
	f->cache_db = tu_join(f->store, "private/cache.db");
	f->outbox_db = tu_join(f->store, "outbox.db");
	assert_int_equal(platform__mkdirs(f->keys, 0700), 0);
	/* What a store is provisioned with: central's public key and the
	 * tenant's phone-hash key (the data key the cache makes itself). */
	char *from = tu_join(g_central, "central.pub"), *to = tu_join(f->keys, "central.pub");
	copy_file(from, to);
	free(from);
	free(to);
	from = tu_join(g_central, "tenant.key");
	to = tu_join(f->keys, "tenant.key");
	copy_file(from, to);
	free(from);
	free(to);
	f->clk.wall_ms = NOW_MS;
	f->clk.mono_ms = MONO_MS;
	platform__clock_override(tu_clock_wall, tu_clock_mono, &f->clk);
	open_cache(f);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fx *f = *state;
	cache__close(f->c);
	scrm_store_close(f->s);
	platform__clock_override(NULL, NULL, NULL);
	tu_rmtree_free(f->dir, f->store, f->keys, f->cache_db, f->outbox_db);
	free(f);
	return 0;
}

/* The store shares the directory; the cache finds outbox.db when it opens,
 * so open the store first and reopen the cache. */
static void open_store(fx *f)
{
	scrm_store_options o = {.device_id = "pos-01"};
	assert_int_equal(scrm_store_open(f->store, &o, &f->s), SCRM_OK);
	cache__close(f->c);
	open_cache(f);
}

static int apply_topic(fx *f, const char *topic, const char *msg, cache__outcome *o)
{
	cache__outcome dummy;
	return cache__apply(f->c, topic, msg, strlen(msg), NULL, NULL, o ? o : &dummy);
}

/* Apply and expect success; returns what happened. `msg` is freed. */
static cache__what apply_ok(fx *f, char *msg, cache__outcome *o)
{
	cache__outcome local;
	if (!o)
		o = &local;
	int rc = apply_topic(f, NULL, msg, o);
	if (rc != SCRM_OK)
		print_error("apply refused: %s\nmessage: %.300s\n", scrm_errmsg(), msg);
	free(msg);
	assert_int_equal(rc, SCRM_OK);
	return o->what;
}

static char *delta(const char *stream, int64_t base, int64_t version, const char *ops)
{
	return tu_fmt("{\"v\":1,\"type\":\"delta\",\"stream\":\"%s\",\"base\":%lld,\"version\":%lld,\"ts\":1,\"ops\":[%s]}",
		   stream, (long long)base, (long long)version, ops);
}

static char *chunk(const char *stream, const char *id, int64_t version, int64_t k, int64_t n, const char *records)
{
	return tu_fmt("{\"v\":1,\"type\":\"snapshot\",\"stream\":\"%s\",\"snapshot\":\"%s\",\"version\":%lld,\"chunk\":%lld,"
		   "\"chunks\":%lld,\"ts\":1,\"records\":[%s]}",
		   stream, id, (long long)version, (long long)k, (long long)n, records);
}

/* A member profile (the record's `data`); name and phone go into pii. */
static char *member_data(const char *id, const char *tier, int tracking, const char *name, const char *phone)
{
	return tu_fmt("{\"member_id\":\"%s\",\"card\":\"CARD-%s\",\"tier\":\"%s\",\"tags\":[\"VIP\"],"
		   "\"rfm\":{\"r\":5,\"f\":4,\"m\":5,\"segment\":\"champions\"},\"ltv_band\":\"high\",\"stage\":\"active\","
		   "\"consent\":{\"marketing\":true,\"tracking\":%s},\"prefs\":{\"categories\":[\"home\"],\"channel\":\"email\"},"
		   "\"stats\":{\"orders\":3,\"spend\":1000,\"currency\":\"GBP\",\"first_purchase_ms\":1291196400000,"
		   "\"last_purchase_ms\":%lld,\"as_of_ms\":%lld},"
		   "\"recent\":[{\"ts\":%lld,\"order_id\":\"581492\",\"total\":4350,\"skus\":[\"23084\"]}],"
		   "\"pii\":{\"name\":\"%s\",\"phone\":\"%s\",\"birthday\":\"1980-04-01\"}}",
		   id, id, tier, tracking ? "true" : "false", (long long)(NOW_MS - 10 * 86400000LL),
		   (long long)(NOW_MS - 86400000LL), (long long)(NOW_MS - 10 * 86400000LL), name, phone);
}

/* Default name and phone derived from the id (unique per id). */
static char *member_rec(const char *id, const char *tier)
{
	unsigned h = 5381;
	for (const char *p = id; *p; p++)
		h = h * 33 + (unsigned char)*p;
	char name[64], phone[24];
	snprintf(name, sizeof(name), "Name of %s", id);
	snprintf(phone, sizeof(phone), "4479%08u", h % 100000000u);
	char *data = member_data(id, tier, 1, name, phone);
	char *rec = tu_fmt("{\"key\":\"%s\",\"data\":%s}", id, data);
	free(data);
	return rec;
}

static char *upsert_member(const char *id, const char *tier)
{
	char *rec = member_rec(id, tier);
	char *op = tu_fmt("{\"op\":\"upsert\",%s", rec + 1);
	free(rec);
	return op;
}

/* Records for ids, comma-joined: "M1,M2" -> {"key":"M1",...},{...}. */
static char *member_recs(const char *ids, const char *tier)
{
	sbuf b;
	sbuf__init(&b);
	char *copy = strdup(ids), *save = NULL;
	assert_non_null(copy);
	for (char *id = strtok_r(copy, ",", &save); id; id = strtok_r(NULL, ",", &save)) {
		char *rec = member_rec(id, tier);
		if (b.len)
			sbuf__putc(&b, ',');
		sbuf__puts(&b, rec);
		free(rec);
	}
	free(copy);
	sbuf__putc(&b, '\0');
	assert_false(b.oom);
	return sbuf__take(&b, NULL);
}

/* Load members ids as a one-chunk snapshot at `version`. */
static void load_members(fx *f, const char *ids, int64_t version)
{
	char *recs = member_recs(ids, "gold"), id[32];
	snprintf(id, sizeof(id), "m-%lld", (long long)version);
	assert_int_equal(apply_ok(f, chunk("members", id, version, 0, 1, recs), NULL), CA_SWAPPED);
	free(recs);
}

/* A members snapshot of `n` members m-<version>-<i>, `per` to a chunk. */
static void load_many(fx *f, int n, int per, int64_t version)
{
	char id[32];
	snprintf(id, sizeof(id), "many-%lld", (long long)version);
	for (int k = 0; k * per < n; k++) {
		sbuf ids;
		sbuf__init(&ids);
		for (int i = k * per; i < n && i < (k + 1) * per; i++) {
			char m[48];
			snprintf(m, sizeof(m), "%sm-%lld-%d", ids.len ? "," : "", (long long)version, i);
			sbuf__puts(&ids, m);
		}
		sbuf__putc(&ids, '\0');
		char *recs = member_recs(ids.p, "gold");
		cache__what w = apply_ok(f, chunk("members", id, version, k, (n + per - 1) / per, recs), NULL);
		assert_int_equal(w, (k + 1) * per >= n ? CA_SWAPPED : CA_CHUNK);
		free(recs);
		sbuf__free(&ids);
	}
}

/* The member card as parsed JSON, or NULL with *rc set when refused. */
static cJSON *card_by(fx *f, scrm_member_key by, const char *value, int *rc_out)
{
	sbuf b;
	char member[65];
	int tracking = -1;
	sbuf__init(&b);
	int rc = cache__member_card(f->c, by, value, &b, member, &tracking);
	if (rc_out)
		*rc_out = rc;
	cJSON *j = NULL;
	if (rc == SCRM_OK) {
		j = cJSON_ParseWithLength(b.p, b.len);
		assert_non_null(j);
	}
	sbuf__free(&b);
	return j;
}

static cJSON *card(fx *f, const char *id)
{
	int rc;
	cJSON *j = card_by(f, SCRM_MEMBER_ID, id, &rc);
	if (rc != SCRM_OK && rc != SCRM_E_NOT_FOUND)
		print_error("card %s: %s\n", id, scrm_errmsg());
	return j;
}

static char *card_text(fx *f, const char *id)
{
	sbuf b;
	char member[65];
	sbuf__init(&b);
	int rc = cache__member_card(f->c, SCRM_MEMBER_ID, id, &b, member, NULL);
	char *t = rc == SCRM_OK ? sbuf__take(&b, NULL) : NULL;
	sbuf__free(&b);
	return t;
}

/* "a.b.c" inside a JSON object. */
static const cJSON *jget(const cJSON *o, const char *path)
{
	char buf[128];
	snprintf(buf, sizeof(buf), "%s", path);
	char *save = NULL;
	for (char *k = strtok_r(buf, ".", &save); k && o; k = strtok_r(NULL, ".", &save))
		o = cJSON_GetObjectItemCaseSensitive(o, k);
	return o;
}

static const char *jstr(const cJSON *o, const char *path)
{
	const cJSON *it = jget(o, path);
	return cJSON_IsString(it) ? it->valuestring : NULL;
}

static int64_t jint(const cJSON *o, const char *path)
{
	const cJSON *it = jget(o, path);
	if (!cJSON_IsNumber(it)) {
		print_error("%s: not a number\n", path);
		fail();
	}
	return (int64_t)it->valuedouble;
}

static int has_member(fx *f, const char *id)
{
	cJSON *j = card(f, id);
	cJSON_Delete(j);
	return j != NULL;
}

/* This stream's object in cache__status() (caller deletes *root). */
static const cJSON *status_of(fx *f, const char *stream, cJSON **root)
{
	sbuf b;
	sbuf__init(&b);
	assert_int_equal(cache__status(f->c, &b), SCRM_OK);
	*root = cJSON_ParseWithLength(b.p, b.len);
	sbuf__free(&b);
	assert_non_null(*root);
	const cJSON *e;
	cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(*root, "streams"))
	{
		if (strcmp(jstr(e, "stream"), stream) == 0)
			return e;
	}
	fail_msg("stream %s not in status", stream);
	return NULL;
}

static int64_t status_int(fx *f, const char *stream, const char *field)
{
	cJSON *root;
	int64_t v = jint(status_of(f, stream, &root), field);
	cJSON_Delete(root);
	return v;
}

/* cache__next_request at `now`: the parsed request, or NULL if none due. */
static cJSON *next_request(fx *f, int64_t now, int *st)
{
	sbuf b;
	sbuf__init(&b);
	int got = cache__next_request(f->c, now, &b, st);
	cJSON *j = NULL;
	if (got) {
		j = cJSON_ParseWithLength(b.p, b.len);
		assert_non_null(j);
	}
	sbuf__free(&b);
	return j;
}

/* Expect a request for `stream` with `reason`; returns it (caller deletes). */
static cJSON *expect_request(fx *f, int64_t now, const char *stream, const char *reason)
{
	int st = -1;
	cJSON *r = next_request(f, now, &st);
	if (!r)
		fail_msg("expected a %s request for %s, got none", reason, stream);
	assert_string_equal(jstr(r, "stream"), stream);
	assert_string_equal(jstr(r, "reason"), reason);
	assert_int_equal(st, cache__stream_parse(stream));
	assert_int_equal(jint(r, "v"), 1);
	return r;
}

static void expect_no_request(fx *f, int64_t now)
{
	int st = -1;
	cJSON *r = next_request(f, now, &st);
	if (r) {
		char *t = cJSON_PrintUnformatted(r);
		print_error("unexpected request: %s\n", t);
		free(t);
		cJSON_Delete(r);
		fail();
	}
}

/* ---- snapshots and deltas ------------------------------------------- */

static void snapshot_swapped_in_at_last_chunk(void **state)
{
	fx *f = *state;
	cache__outcome o;
	char *r0 = member_recs("M1,M2", "gold"), *r1 = member_recs("M3,M4", "gold"), *r2 = member_recs("M5", "gold");

	/* First load: nothing visible until the last chunk. */
	assert_int_equal(apply_ok(f, chunk("members", "m-10-1", 10, 0, 3, r0), &o), CA_CHUNK);
	assert_int_equal(o.ops, 2);
	assert_int_equal(o.cursor, 0);
	assert_false(has_member(f, "M1"));
	assert_int_equal(apply_ok(f, chunk("members", "m-10-1", 10, 1, 3, r1), &o), CA_CHUNK);
	assert_false(has_member(f, "M3"));
	{
		cJSON *root;
		const cJSON *s = status_of(f, "members", &root);
		assert_int_equal(jint(s, "cursor"), 0);
		assert_int_equal(jint(s, "rows"), 0);
		assert_string_equal(jstr(s, "snapshot.id"), "m-10-1");
		assert_int_equal(jint(s, "snapshot.chunks_done"), 2);
		assert_int_equal(jint(s, "snapshot.chunks"), 3);
		assert_int_equal(jint(s, "snapshot.version"), 10);
		cJSON_Delete(root);
	}
	assert_int_equal(apply_ok(f, chunk("members", "m-10-1", 10, 2, 3, r2), &o), CA_SWAPPED);
	assert_int_equal(o.cursor, 10);
	for (int i = 1; i <= 5; i++) {
		char id[8];
		snprintf(id, sizeof(id), "M%d", i);
		assert_true(has_member(f, id));
	}
	{
		cJSON *root;
		const cJSON *s = status_of(f, "members", &root);
		assert_int_equal(jint(s, "cursor"), 10);
		assert_int_equal(jint(s, "rows"), 5);
		assert_int_equal(jint(s, "applied_ms"), NOW_MS);
		assert_null(jget(s, "snapshot"));
		cJSON_Delete(root);
	}
	free(r0);
	free(r1);
	free(r2);

	/* A second snapshot: the complete old view stays until its swap. */
	r0 = member_recs("M1,M6", "silver");
	r1 = member_recs("M7", "silver");
	assert_int_equal(apply_ok(f, chunk("members", "m-20-1", 20, 0, 2, r0), &o), CA_CHUNK);
	cJSON *m1 = card(f, "M1");
	assert_non_null(m1);
	assert_string_equal(jstr(m1, "tier"), "gold");
	cJSON_Delete(m1);
	assert_true(has_member(f, "M2"));
	assert_false(has_member(f, "M6"));
	assert_int_equal(status_int(f, "members", "cursor"), 10);
	assert_int_equal(status_int(f, "members", "rows"), 5);
	assert_int_equal(apply_ok(f, chunk("members", "m-20-1", 20, 1, 2, r1), &o), CA_SWAPPED);
	m1 = card(f, "M1");
	assert_string_equal(jstr(m1, "tier"), "silver");
	cJSON_Delete(m1);
	assert_false(has_member(f, "M2")); /* not in the new snapshot */
	assert_true(has_member(f, "M6"));
	assert_true(has_member(f, "M7"));
	assert_int_equal(status_int(f, "members", "cursor"), 20);
	assert_int_equal(status_int(f, "members", "rows"), 3);
	/* A look-up by card uses the new view's index. */
	int rc;
	cJSON *j = card_by(f, SCRM_MEMBER_CARD, "CARD-M7", &rc);
	assert_int_equal(rc, SCRM_OK);
	assert_string_equal(jstr(j, "member_id"), "M7");
	cJSON_Delete(j);
	free(r0);
	free(r1);
}

static void chunks_out_of_order_are_ignored(void **state)
{
	fx *f = *state;
	cache__outcome o;
	char *r = member_recs("M1", "gold");
	/* No build in progress: a chunk other than 0 is ignored. */
	assert_int_equal(apply_ok(f, chunk("members", "m-5-1", 5, 1, 3, r), &o), CA_IGNORED);
	assert_int_equal(apply_ok(f, chunk("members", "m-5-1", 5, 0, 3, r), &o), CA_CHUNK);
	/* Skipping a chunk, repeating one, another id, another version. */
	assert_int_equal(apply_ok(f, chunk("members", "m-5-1", 5, 2, 3, r), &o), CA_IGNORED);
	assert_int_equal(apply_ok(f, chunk("members", "m-6-1", 5, 1, 3, r), &o), CA_IGNORED);
	assert_int_equal(apply_ok(f, chunk("members", "m-5-1", 6, 1, 3, r), &o), CA_IGNORED);
	assert_int_equal(apply_ok(f, chunk("members", "m-5-1", 5, 1, 3, r), &o), CA_CHUNK);
	assert_int_equal(apply_ok(f, chunk("members", "m-5-1", 5, 1, 3, r), &o), CA_IGNORED);
	assert_int_equal(status_int(f, "members", "snapshot.chunks_done"), 2);
	assert_int_equal(apply_ok(f, chunk("members", "m-5-1", 5, 2, 3, r), &o), CA_SWAPPED);
	assert_int_equal(status_int(f, "members", "cursor"), 5);
	free(r);
}

static void deltas_follow_the_cursor(void **state)
{
	fx *f = *state;
	cache__outcome o;
	load_members(f, "M1,M2,M3", 10);

	/* base == cursor: applied, cursor = version (need not step by 1). */
	char *op = upsert_member("M4", "bronze");
	assert_int_equal(apply_ok(f, delta("members", 10, 15, op), &o), CA_APPLIED);
	free(op);
	assert_int_equal(o.cursor, 15);
	assert_int_equal(o.ops, 1);
	assert_true(has_member(f, "M4"));
	assert_int_equal(status_int(f, "members", "cursor"), 15);

	/* upsert replaces the whole record; delete; delete of a missing key. */
	op = upsert_member("M1", "platinum");
	char *ops = tu_fmt("%s,{\"op\":\"delete\",\"key\":\"M2\"},{\"op\":\"delete\",\"key\":\"NOPE\"}", op);
	free(op);
	assert_int_equal(apply_ok(f, delta("members", 15, 16, ops), &o), CA_APPLIED);
	free(ops);
	assert_int_equal(o.ops, 3);
	cJSON *m1 = card(f, "M1");
	assert_string_equal(jstr(m1, "tier"), "platinum");
	cJSON_Delete(m1);
	assert_false(has_member(f, "M2"));

	/* Duplicate: version <= cursor, ignored (even if it would apply). */
	op = upsert_member("M9", "gold");
	assert_int_equal(apply_ok(f, delta("members", 15, 16, op), &o), CA_DUPLICATE);
	assert_int_equal(apply_ok(f, delta("members", 3, 7, op), &o), CA_DUPLICATE);
	assert_int_equal(o.cursor, 16);
	assert_false(has_member(f, "M9"));

	/* A gap: ignored, and a resync of that stream is asked for. Members
	 * come first in the schedule, whatever else waits for a bootstrap. */
	assert_int_equal(apply_ok(f, delta("members", 17, 18, op), &o), CA_GAP);
	assert_int_equal(o.cursor, 16);
	assert_false(has_member(f, "M9"));
	assert_int_equal(status_int(f, "members", "cursor"), 16);
	cJSON *req = expect_request(f, MONO_MS, "members", "gap");
	assert_int_equal(jint(req, "cursor"), 16);
	assert_null(jget(req, "snapshot"));
	assert_null(jget(req, "from_chunk"));
	cJSON_Delete(req);
	free(op);

	/* forget removes the profile (the outbox side is erasure's test). */
	assert_int_equal(apply_ok(f, delta("members", 16, 17, "{\"op\":\"forget\",\"key\":\"M3\"}"), &o), CA_APPLIED);
	assert_false(has_member(f, "M3"));
	assert_int_equal(status_int(f, "members", "rows"), 2);

	/* Other streams have their own cursors. */
	assert_int_equal(apply_ok(f, delta("catalogue", 0, 3,
					   "{\"op\":\"upsert\",\"key\":\"22423\",\"data\":{\"sku\":\"22423\",\"name\":\"CAKESTAND\","
					   "\"category\":\"kitchen\",\"price\":1275,\"currency\":\"GBP\"}}"),
				  &o),
			 CA_APPLIED);
	assert_int_equal(apply_ok(f, delta("inventory", 0, 2,
					   "{\"op\":\"upsert\",\"key\":\"22423\",\"data\":{\"sku\":\"22423\",\"qty\":14,\"as_of_ms\":1}}"),
				  &o),
			 CA_APPLIED);
	assert_int_equal(apply_ok(f, delta("rules", 0, 4,
					   "{\"op\":\"upsert\",\"key\":\"22423>22697\",\"data\":{\"if\":\"22423\",\"then\":\"22697\","
					   "\"support\":0.012,\"confidence\":0.61,\"lift\":8.4}}"),
				  &o),
			 CA_APPLIED);
	assert_int_equal(apply_ok(f, delta("scripts", 0, 5,
					   "{\"op\":\"upsert\",\"key\":\"wake-up\",\"data\":{\"id\":\"wake-up\",\"stage\":\"sleeping\","
					   "\"tag\":null,\"title\":\"Welcome back\",\"text\":\"Hello again\"}}"),
				  &o),
			 CA_APPLIED);
	assert_int_equal(status_int(f, "catalogue", "cursor"), 3);
	assert_int_equal(status_int(f, "inventory", "rows"), 1);
	assert_int_equal(status_int(f, "rules", "cursor"), 4);
	assert_int_equal(status_int(f, "scripts", "cursor"), 5);
	assert_int_equal(status_int(f, "members", "cursor"), 17);
}

static void deltas_during_a_build_are_replayed_after_the_swap(void **state)
{
	fx *f = *state;
	cache__outcome o;
	load_members(f, "M1,M2", 10);

	char *r0 = member_recs("S1,S2", "gold"), *r1 = member_recs("SORD", "gold");
	assert_int_equal(apply_ok(f, chunk("members", "m-20-1", 20, 0, 2, r0), &o), CA_CHUNK);

	/* Follows the old view: kept aside and applied to the old view too. */
	char *op = upsert_member("MOLD", "bronze");
	assert_int_equal(apply_ok(f, delta("members", 10, 15, op), &o), CA_BUFFERED);
	free(op);
	assert_true(has_member(f, "MOLD"));
	/* After the snapshot's version: kept aside, in order. */
	op = upsert_member("SORD", "silver");
	char *ops = tu_fmt("%s,{\"op\":\"delete\",\"key\":\"S2\"}", op);
	free(op);
	assert_int_equal(apply_ok(f, delta("members", 20, 21, ops), &o), CA_BUFFERED);
	free(ops);
	op = upsert_member("SORD", "platinum");
	char *op2 = upsert_member("SNEW", "gold");
	ops = tu_fmt("%s,%s", op, op2);
	free(op);
	free(op2);
	assert_int_equal(apply_ok(f, delta("members", 21, 23, ops), &o), CA_BUFFERED);
	free(ops);
	/* Below the cursor: a duplicate still. */
	assert_int_equal(apply_ok(f, delta("members", 5, 8, "{\"op\":\"delete\",\"key\":\"M1\"}"), &o), CA_DUPLICATE);
	/* The old view is still what readers see. */
	assert_true(has_member(f, "M1"));
	assert_false(has_member(f, "S1"));
	assert_false(has_member(f, "SNEW"));

	assert_int_equal(apply_ok(f, chunk("members", "m-20-1", 20, 1, 2, r1), &o), CA_SWAPPED);
	assert_int_equal(o.cursor, 23);
	assert_int_equal(status_int(f, "members", "cursor"), 23);
	assert_false(has_member(f, "M1"));   /* old view gone */
	assert_false(has_member(f, "MOLD")); /* 10→15 is inside the snapshot */
	assert_true(has_member(f, "S1"));
	assert_false(has_member(f, "S2"));   /* deleted by 20→21 */
	assert_true(has_member(f, "SNEW"));  /* 21→23 */
	cJSON *j = card(f, "SORD");
	assert_string_equal(jstr(j, "tier"), "platinum"); /* 20→21 then 21→23 */
	cJSON_Delete(j);
	assert_int_equal(tu_sql_int(f->cache_db, "SELECT count(*) FROM delta_buf"), 0);
	/* Nothing more to ask for members. */
	int st = -1;
	cJSON *req = next_request(f, MONO_MS, &st);
	assert_non_null(req);
	assert_string_not_equal(jstr(req, "stream"), "members");
	cJSON_Delete(req);
	cache__reset_requests(f->c);
	free(r0);
	free(r1);

	/* A buffered delta that does not follow the snapshot: a gap after the
	 * swap, and the stream is asked for again. */
	r0 = member_recs("T1", "gold");
	assert_int_equal(apply_ok(f, chunk("members", "m-30-1", 30, 0, 2, r0), &o), CA_CHUNK);
	assert_int_equal(apply_ok(f, delta("members", 31, 32, "{\"op\":\"delete\",\"key\":\"T1\"}"), &o), CA_BUFFERED);
	assert_int_equal(apply_ok(f, chunk("members", "m-30-1", 30, 1, 2, r0), &o), CA_SWAPPED);
	assert_int_equal(o.cursor, 30);
	assert_true(has_member(f, "T1"));
	req = expect_request(f, MONO_MS, "members", "gap");
	assert_int_equal(jint(req, "cursor"), 30);
	cJSON_Delete(req);
	free(r0);
}

/* Child: open the cache, apply chunks 0..k of a 4-chunk snapshot, then die
 * by SIGKILL without closing anything. No cmocka here. */
static void build_then_die(fx *f, int k)
{
	cache *c = NULL;
	cache__options o = {.create = 1, .max_message_bytes = MAX_MSG};
	if (cache__open(f->store, &o, &c) != SCRM_OK)
		_exit(10);
	for (int i = 0; i <= k; i++) {
		char ids[32];
		snprintf(ids, sizeof(ids), "N%da,N%db", i, i);
		char *recs = member_recs(ids, "gold");
		char *msg = chunk("members", "m-42-7", 42, i, 4, recs);
		cache__outcome out;
		int rc = cache__apply(c, "members", msg, strlen(msg), NULL, NULL, &out);
		free(msg);
		free(recs);
		if (rc != SCRM_OK || out.what != CA_CHUNK)
			_exit(11);
	}
	raise(SIGKILL);
	_exit(12);
}

static void killed_mid_snapshot_resumes(void **state)
{
	fx *f = *state;
	cache__outcome o;
	load_members(f, "OLD1,OLD2", 10);
	cache__close(f->c);
	f->c = NULL;

	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		build_then_die(f, 1);
	int status = 0;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
		fail_msg("child did not die by SIGKILL (status 0x%x)", status);

	open_cache(f);
	/* The old view is intact, the build is remembered. */
	assert_true(has_member(f, "OLD1"));
	assert_true(has_member(f, "OLD2"));
	assert_false(has_member(f, "N0a"));
	{
		cJSON *root;
		const cJSON *s = status_of(f, "members", &root);
		assert_int_equal(jint(s, "cursor"), 10);
		assert_string_equal(jstr(s, "snapshot.id"), "m-42-7");
		assert_int_equal(jint(s, "snapshot.chunks_done"), 2);
		assert_int_equal(jint(s, "snapshot.chunks"), 4);
		assert_string_equal(jstr(s, "resync"), "resume");
		cJSON_Delete(root);
	}
	cJSON *req = expect_request(f, MONO_MS, "members", "resume");
	assert_string_equal(jstr(req, "snapshot"), "m-42-7");
	assert_int_equal(jint(req, "from_chunk"), 2);
	assert_int_equal(jint(req, "cursor"), 10);
	cJSON_Delete(req);

	/* Central continues from chunk 2. */
	for (int i = 2; i < 4; i++) {
		char ids[32];
		snprintf(ids, sizeof(ids), "N%da,N%db", i, i);
		char *recs = member_recs(ids, "gold");
		assert_int_equal(apply_ok(f, chunk("members", "m-42-7", 42, i, 4, recs), &o), i == 3 ? CA_SWAPPED : CA_CHUNK);
		free(recs);
	}
	assert_int_equal(status_int(f, "members", "cursor"), 42);
	assert_int_equal(status_int(f, "members", "rows"), 8);
	assert_true(has_member(f, "N0a"));
	assert_true(has_member(f, "N3b"));
	assert_false(has_member(f, "OLD1"));
	/* The schedule moves on to the next stream. */
	req = expect_request(f, MONO_MS, "coupons", "bootstrap");
	cJSON_Delete(req);

	/* Chunk 0 of another snapshot restarts the build: what was staged from
	 * the first one is dropped, and its later chunks are ignored. */
	char *a = member_recs("P1", "gold"), *b = member_recs("P2", "gold"), *q = member_recs("Q1", "gold");
	assert_int_equal(apply_ok(f, chunk("members", "m-50-1", 50, 0, 3, a), &o), CA_CHUNK);
	assert_int_equal(apply_ok(f, chunk("members", "m-50-1", 50, 1, 3, b), &o), CA_CHUNK);
	assert_int_equal(apply_ok(f, chunk("members", "m-51-1", 51, 0, 2, q), &o), CA_CHUNK);
	assert_int_equal(apply_ok(f, chunk("members", "m-50-1", 50, 2, 3, a), &o), CA_IGNORED);
	assert_int_equal(apply_ok(f, chunk("members", "m-51-1", 51, 1, 2, b), &o), CA_SWAPPED);
	assert_int_equal(status_int(f, "members", "cursor"), 51);
	assert_false(has_member(f, "P1"));
	assert_true(has_member(f, "Q1"));
	assert_true(has_member(f, "P2"));
	assert_false(has_member(f, "N0a"));
	free(a);
	free(b);
	free(q);
}

static void resync_priorities_and_timeouts(void **state)
{
	fx *f = *state;
	cache__outcome o;
	static const char *const order[] = {"members", "coupons", "catalogue", "inventory", "scripts", "recos", "rules"};
	int64_t t = MONO_MS;

	/* A fresh cache wants every stream; members first, one at a time. */
	cJSON *req = expect_request(f, t, "members", "bootstrap");
	assert_int_equal(jint(req, "cursor"), 0);
	assert_null(jget(req, "snapshot"));
	cJSON_Delete(req);
	expect_no_request(f, t);
	assert_int_equal(cache__next_deadline(f->c), t + TIMEOUT_MS);
	expect_no_request(f, t + TIMEOUT_MS - 1);
	/* Silence: asked again, then waiting twice as long. */
	req = expect_request(f, t + TIMEOUT_MS, "members", "timeout");
	cJSON_Delete(req);
	t += TIMEOUT_MS;
	assert_int_equal(cache__next_deadline(f->c), t + 2 * TIMEOUT_MS);
	expect_no_request(f, t + 2 * TIMEOUT_MS - 1);

	/* A chunk arrives (the cache reads the monotonic clock): the wait
	 * restarts at the configured timeout, and a re-request names the
	 * snapshot and the next chunk. */
	t += 500;
	f->clk.mono_ms = t;
	char *recs = member_recs("M1", "gold");
	assert_int_equal(apply_ok(f, chunk("members", "m-9-1", 9, 0, 2, recs), &o), CA_CHUNK);
	assert_int_equal(cache__next_deadline(f->c), t + TIMEOUT_MS);
	expect_no_request(f, t + TIMEOUT_MS - 1);
	req = expect_request(f, t + TIMEOUT_MS, "members", "timeout");
	assert_string_equal(jstr(req, "snapshot"), "m-9-1");
	assert_int_equal(jint(req, "from_chunk"), 1);
	cJSON_Delete(req);
	t += TIMEOUT_MS;
	f->clk.mono_ms = t;
	assert_int_equal(apply_ok(f, chunk("members", "m-9-1", 9, 1, 2, recs), &o), CA_SWAPPED);
	free(recs);

	/* Then each stream in priority order, as soon as the previous is in. */
	for (size_t i = 1; i < sizeof(order) / sizeof(order[0]); i++) {
		req = expect_request(f, t, order[i], "bootstrap");
		cJSON_Delete(req);
		expect_no_request(f, t);
		if (i == 1) {
			/* The connection dropped: the request may be lost. */
			cache__reset_requests(f->c);
			req = expect_request(f, t, order[i], "bootstrap");
			cJSON_Delete(req);
		}
		char id[32];
		snprintf(id, sizeof(id), "%c-1-1", order[i][0]);
		assert_int_equal(apply_ok(f, chunk(order[i], id, 1, 0, 1, ""), &o), CA_SWAPPED);
		assert_int_equal(status_int(f, order[i], "cursor"), 1);
	}
	expect_no_request(f, t);
	assert_int_equal(cache__next_deadline(f->c), 0);

	/* A gap asks for members again; central may answer with deltas that
	 * cover cursor → current. Once one applies, the request is answered:
	 * the schedule is free for the next stream at once. */
	assert_int_equal(apply_ok(f, delta("members", 12, 13, "{\"op\":\"delete\",\"key\":\"M1\"}"), &o), CA_GAP);
	req = expect_request(f, t, "members", "gap");
	assert_int_equal(jint(req, "cursor"), 9);
	cJSON_Delete(req);
	assert_int_equal(apply_ok(f, delta("members", 9, 13, "{\"op\":\"delete\",\"key\":\"M1\"}"), &o), CA_APPLIED);
	cache__want(f->c, cache__stream_parse("rules"), "command");
	req = expect_request(f, t, "rules", "command");
	cJSON_Delete(req);
	/* And a command for all streams queues them all, members first. */
	cache__reset_requests(f->c);
	cache__want(f->c, -1, "command");
	req = expect_request(f, t, "members", "command");
	cJSON_Delete(req);
}

/* ---- coupons -------------------------------------------------------- */

/* A coupon payload for member_id (string), valid until valid_to. */
static char *coupon_payload(const char *id, const char *member_id, int64_t valid_to)
{
	return tu_fmt("{\"type\":\"coupon\",\"id\":\"%s\",\"campaign\":\"XMAS10\",\"member_id\":\"%s\",\"code\":\"X7K2-9QPD\","
		   "\"valid_from\":1733050000000,\"valid_to\":%lld,\"uses\":1}",
		   id, member_id, (long long)valid_to);
}

/* The op {"op":"upsert","key":...,"signed":...,"sig":...}. */
static char *signed_op(const char *payload)
{
	char *rec = NULL;
	assert_int_equal(cg_signed_coupon_record(g_signer, payload, &rec), 0);
	char *op = tu_fmt("{\"op\":\"upsert\",%s", rec + 1);
	free(rec);
	return op;
}

/* Parse an op, let `edit` change it, print it back. */
static char *edit_op(const char *op, void (*edit)(cJSON *))
{
	cJSON *j = cJSON_Parse(op);
	assert_non_null(j);
	edit(j);
	char *t = cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	assert_non_null(t);
	return t;
}

static void tamper_signed(cJSON *op)
{
	cJSON *s = cJSON_GetObjectItemCaseSensitive(op, "signed");
	char *p = strstr(s->valuestring, "\"uses\":1");
	assert_non_null(p);
	p[7] = '9'; /* one byte: uses 1 → 9 */
}

static void unsigned_data(cJSON *op)
{
	cJSON *s = cJSON_DetachItemFromObjectCaseSensitive(op, "signed");
	cJSON_DeleteItemFromObjectCaseSensitive(op, "sig");
	cJSON_AddItemToObject(op, "data", cJSON_Parse(s->valuestring));
	cJSON_Delete(s);
}

static void move_to_c9(cJSON *op)
{
	cJSON_ReplaceItemInObjectCaseSensitive(op, "key", cJSON_CreateString("coupon:C-9"));
}

static void drop_sig(cJSON *op)
{
	cJSON_DeleteItemFromObjectCaseSensitive(op, "sig");
}

/* A delta of [bad, good] on coupons: the bad one refused alone. */
static void refused_alone(fx *f, int64_t *cursor, const char *bad, const char *good, const char *key,
			  const char *reason)
{
	cache__outcome o;
	char *ops = tu_fmt("%s,%s", bad, good);
	assert_int_equal(apply_ok(f, delta("coupons", *cursor, *cursor + 1, ops), &o), CA_APPLIED);
	free(ops);
	(*cursor)++;
	assert_int_equal(o.cursor, *cursor);
	assert_int_equal(o.refused, 1);
	assert_int_equal(o.ops, 2);
	const char *d = cache__refused_detail(f->c);
	if (!strstr(d, key) || !strstr(d, reason))
		fail_msg("refused detail \"%s\" should name %s and \"%s\"", d, key, reason);
}

static void coupons_signed_and_refused_alone(void **state)
{
	fx *f = *state;
	cache__outcome o;
	int64_t cursor = 0;
	load_members(f, "M1,M2", 5);

	char *p1 = coupon_payload("C-1", "M1", NOW_MS + 86400000LL);
	char *good = signed_op(p1);
	char *camp = signed_op("{\"type\":\"campaign\",\"id\":\"XMAS10\",\"name\":\"10% off\",\"scope\":{\"skus\":[],"
			       "\"categories\":[\"christmas\"]},\"discount\":{\"kind\":\"percent\",\"value\":10},"
			       "\"min_spend\":2000,\"currency\":\"GBP\",\"valid_from\":1733050000000,"
			       "\"valid_to\":1900000000000,\"public\":true}");
	char *p3 = coupon_payload("C-3", "M1", NOW_MS - 1); /* expired */
	char *expired = signed_op(p3);
	char *ops = tu_fmt("%s,%s,%s", good, camp, expired);
	assert_int_equal(apply_ok(f, delta("coupons", 0, 1, ops), &o), CA_APPLIED);
	free(ops);
	cursor = 1;
	assert_int_equal(o.refused, 0);
	assert_string_equal(cache__refused_detail(f->c), "");
	assert_int_equal(status_int(f, "coupons", "rows"), 3);

	/* Kept as received (signed text and signature, for redemption). */
	char *kept = tu_sql_text(f->cache_db, "SELECT signed FROM coupons WHERE key = 'coupon:C-1'");
	assert_string_equal(kept, p1);
	free(kept);

	/* The member's card lists its valid coupons. */
	cJSON *j = card(f, "M1");
	const cJSON *arr = jget(j, "coupons");
	assert_int_equal(cJSON_GetArraySize(arr), 1);
	assert_string_equal(jstr(cJSON_GetArrayItem(arr, 0), "id"), "C-1");
	assert_string_equal(jstr(cJSON_GetArrayItem(arr, 0), "code"), "X7K2-9QPD");
	cJSON_Delete(j);
	j = card(f, "M2");
	assert_int_equal(cJSON_GetArraySize(jget(j, "coupons")), 0);
	cJSON_Delete(j);

	/* Each bad coupon is refused alone; the rest of its delta applies. */
	char *p2 = coupon_payload("C-2", "M2", NOW_MS + 86400000LL);
	char *good2 = signed_op(p2);
	char *bad = edit_op(good2, tamper_signed);
	refused_alone(f, &cursor, bad, "{\"op\":\"delete\",\"key\":\"coupon:C-3\"}", "coupon:C-2", "signature");
	free(bad);
	assert_int_equal(status_int(f, "coupons", "rows"), 2); /* C-3 deleted */
	bad = edit_op(good2, unsigned_data);
	refused_alone(f, &cursor, bad, camp, "coupon:C-2", "unsigned");
	free(bad);
	bad = edit_op(good2, drop_sig);
	refused_alone(f, &cursor, bad, camp, "coupon:C-2", "sig");
	free(bad);
	bad = edit_op(good, move_to_c9);
	refused_alone(f, &cursor, bad, camp, "coupon:C-9", "coupon:C-1");
	free(bad);
	j = card(f, "M2");
	assert_int_equal(cJSON_GetArraySize(jget(j, "coupons")), 0);
	cJSON_Delete(j);
	assert_int_equal(tu_sql_int(f->cache_db, "SELECT count(*) FROM coupons WHERE key = 'coupon:C-9'"), 0);
	/* A bad coupon never replaces a good one already cached. */
	bad = edit_op(good, tamper_signed);
	refused_alone(f, &cursor, bad, camp, "coupon:C-1", "signature");
	free(bad);
	kept = tu_sql_text(f->cache_db, "SELECT signed FROM coupons WHERE key = 'coupon:C-1'");
	assert_string_equal(kept, p1);
	free(kept);
	assert_int_equal(status_int(f, "coupons", "refused"), 5);
	assert_int_equal(status_int(f, "coupons", "cursor"), cursor);

	/* Signed by central, but a key given twice: which "valid_to" counts
	 * would depend on the reader. Refused alone, naming the key. */
	char *dupp = tu_fmt("{\"type\":\"coupon\",\"id\":\"C-4\",\"member_id\":\"M1\",\"code\":\"X\","
			 "\"valid_from\":1733050000000,\"valid_to\":1,\"uses\":1,\"valid_to\":%lld}",
			 (long long)(NOW_MS + 86400000LL));
	char *dup = signed_op(dupp);
	refused_alone(f, &cursor, dup, camp, "coupon:C-4", "ops[0].signed: duplicate key \"valid_to\" at $ (line 1, column ");
	assert_int_equal(tu_sql_int(f->cache_db, "SELECT count(*) FROM coupons WHERE key = 'coupon:C-4'"), 0);
	free(dup);
	free(dupp);

	/* In a snapshot too: dropped alone, counted. Records are ops without
	 * "op" (both texts start with {"op":"upsert",). */
	char *tam = edit_op(good2, tamper_signed);
	char *g_rec = tu_fmt("{%s", good + strlen("{\"op\":\"upsert\","));
	char *t_rec = tu_fmt("{%s", tam + strlen("{\"op\":\"upsert\","));
	char *recs = tu_fmt("%s,%s", g_rec, t_rec);
	assert_int_equal(apply_ok(f, chunk("coupons", "c-20-1", 20, 0, 1, recs), &o), CA_SWAPPED);
	assert_int_equal(o.refused, 1);
	assert_int_equal(status_int(f, "coupons", "rows"), 1);
	assert_int_equal(status_int(f, "coupons", "refused"), 1);
	assert_non_null(strstr(cache__refused_detail(f->c), "coupon:C-2"));
	free(recs);
	free(g_rec);
	free(t_rec);
	free(tam);

	free(p1);
	free(p2);
	free(p3);
	free(good);
	free(good2);
	free(camp);
	free(expired);
}

/* ---- QR tokens ------------------------------------------------------ */

static char *mint(const char *tenant, const char *member, int64_t iat, int64_t exp)
{
	char *tok = NULL;
	assert_int_equal(cg_qr_mint(g_signer, tenant, member, iat, exp, &tok), 0);
	return tok;
}

/* Standard base64 (from `b64`, or of n bytes at `raw`) as base64url
 * without padding, appended to out. */
static void put_b64url(sbuf *out, const char *b64, const void *raw, size_t n)
{
	unsigned char buf[1024];
	size_t olen = 0;
	if (!b64) {
		assert_int_equal(mbedtls_base64_encode(buf, sizeof(buf), &olen, raw, n), 0);
		buf[olen] = '\0';
		b64 = (const char *)buf;
	}
	for (const char *c = b64; *c && *c != '='; c++)
		sbuf__putc(out, *c == '+' ? '-' : *c == '/' ? '_' : *c);
}

/* A token over any payload text, signed by central (malloc'd). */
static char *mint_raw(const char *payload)
{
	char *sig = NULL;
	sbuf t;
	assert_int_equal(cg_sign_b64(g_signer, payload, strlen(payload), &sig), 0);
	sbuf__init(&t);
	sbuf__puts(&t, "SCRM1.");
	put_b64url(&t, NULL, payload, strlen(payload));
	sbuf__putc(&t, '.');
	put_b64url(&t, sig, NULL, 0);
	free(sig);
	assert_false(t.oom);
	return sbuf__take(&t, NULL);
}

static void qr_refused(fx *f, const char *tok, const char *reason)
{
	int rc;
	cJSON *j = card_by(f, SCRM_MEMBER_QR, tok, &rc);
	cJSON_Delete(j);
	if (rc != SCRM_E_INVALID)
		fail_msg("token %.60s: expected SCRM_E_INVALID (%s), got %d: %s", tok, reason, rc, scrm_errmsg());
	assert_errmsg_contains(reason);
}

/* Flip a base64url character in the middle of part `part` (1 payload, 2
 * signature) to another valid one. */
static char *flip(const char *tok, int part)
{
	char *t = strdup(tok);
	assert_non_null(t);
	char *p1 = strchr(t, '.') + 1, *p2 = strchr(p1, '.') + 1;
	char *start = part == 1 ? p1 : p2;
	size_t len = part == 1 ? (size_t)(p2 - 1 - p1) : strlen(p2);
	char *c = start + len / 2;
	*c = *c == 'A' ? 'B' : 'A';
	return t;
}

static void qr_tokens(void **state)
{
	fx *f = *state;
	int rc;
	load_members(f, "17850", 3);

	char *ok = mint("acme", "17850", NOW_MS - 1000, NOW_MS + 300000);
	cJSON *j = card_by(f, SCRM_MEMBER_QR, ok, &rc);
	assert_int_equal(rc, SCRM_OK);
	assert_string_equal(jstr(j, "member_id"), "17850");
	cJSON_Delete(j);
	/* Issued a little ahead of this clock is tolerated (5 min). */
	char *ahead = mint("acme", "17850", NOW_MS + 200000, NOW_MS + 900000);
	j = card_by(f, SCRM_MEMBER_QR, ahead, &rc);
	assert_int_equal(rc, SCRM_OK);
	cJSON_Delete(j);

	/* The raw minter makes the same tokens the library does. */
	char *p = tu_fmt("{\"t\":\"acme\",\"m\":\"17850\",\"iat\":%lld,\"exp\":%lld}", (long long)(NOW_MS - 1000),
		      (long long)(NOW_MS + 300000));
	char *raw = mint_raw(p);
	j = card_by(f, SCRM_MEMBER_QR, raw, &rc);
	assert_int_equal(rc, SCRM_OK);
	cJSON_Delete(j);
	free(raw);
	free(p);
	/* Signed, but "m" twice: which member is it? Refused, naming the key. */
	p = tu_fmt("{\"t\":\"acme\",\"m\":\"99999\",\"iat\":%lld,\"exp\":%lld,\"m\":\"17850\"}",
		(long long)(NOW_MS - 1000), (long long)(NOW_MS + 300000));
	raw = mint_raw(p);
	qr_refused(f, raw, "qr: format: payload: duplicate key \"m\" at $ (line 1, column ");
	free(raw);
	free(p);

	char *bad = flip(ok, 1);
	qr_refused(f, bad, "signature");
	free(bad);
	bad = flip(ok, 2);
	qr_refused(f, bad, "signature");
	free(bad);
	char *t = mint("acme", "17850", NOW_MS - 600000, NOW_MS - 1);
	qr_refused(f, t, "expired");
	free(t);
	t = mint("acme", "17850", NOW_MS - 600000, NOW_MS); /* exp is exclusive */
	qr_refused(f, t, "expired");
	free(t);
	t = mint("acme", "17850", NOW_MS + 600000, NOW_MS + 900000);
	qr_refused(f, t, "not yet valid");
	free(t);
	t = mint("globex", "17850", NOW_MS - 1000, NOW_MS + 300000);
	qr_refused(f, t, "tenant");
	free(t);
	qr_refused(f, "hello", "format");
	qr_refused(f, "SCRM1.", "format");
	qr_refused(f, "SCRM1.a.b.c", "format");
	qr_refused(f, "SCRM1.!!!.???", "format");
	qr_refused(f, "SCRM2.eyJ0IjoiYWNtZSJ9.AAAA", "format");
	{
		char big[700];
		memset(big, 'A', sizeof(big) - 1);
		big[sizeof(big) - 1] = '\0';
		memcpy(big, "SCRM1.", 6);
		big[300] = '.';
		qr_refused(f, big, "format");
	}
	/* A valid token for a member this store does not have. */
	t = mint("acme", "99999", NOW_MS - 1000, NOW_MS + 300000);
	j = card_by(f, SCRM_MEMBER_QR, t, &rc);
	assert_null(j);
	assert_int_equal(rc, SCRM_E_NOT_FOUND);
	free(t);
	/* The tenant comes from the identity the daemon records. */
	assert_int_equal(cache__set_identity(f->c, "globex", "44"), SCRM_OK);
	qr_refused(f, ok, "tenant");
	free(ok);
	free(ahead);
}

/* ---- phones and personal data at rest -------------------------------- */

/* Needles searched in every file under a directory (nftw has no context). */
static const char *const *g_needles;
static int g_found;

static int scan_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)ftw;
	if (flag != FTW_F || !S_ISREG(st->st_mode))
		return 0;
	char *data = NULL;
	size_t n = 0;
	if (platform__read_file(path, 256u << 20, &data, &n) != 0)
		return 0;
	for (size_t i = 0; g_needles[i]; i++) {
		if (n && memmem(data, n, g_needles[i], strlen(g_needles[i]))) {
			print_error("%s holds \"%s\" in clear\n", path, g_needles[i]);
			g_found++;
		}
	}
	free(data);
	return 0;
}

static void assert_nowhere_in_clear(const char *dir, const char *const *needles)
{
	g_needles = needles;
	g_found = 0;
	assert_int_equal(nftw(dir, scan_one, 16, FTW_PHYS), 0);
	assert_int_equal(g_found, 0);
}

static void phone_lookup_and_no_personal_data_in_clear(void **state)
{
	fx *f = *state;
	cache__outcome o;
	static const char *const people[][3] = {
		{"17850", "Zebedee Quartermaine", "447700900123"},
		{"17851", "Philippa Ottoline Brandreth", "447700900456"},
		{"17852", "Ignatius Featherstonehaugh", "353861234567"},
		{"17853", "Wilhelmina Caldicott-Smythe", "12025550143"},
	};
	static const char *const needles[] = {"447700900123", "447700900456", "353861234567", "12025550143",
					      "Zebedee", "Quartermaine", "Philippa Ottoline", "Featherstonehaugh",
					      "Wilhelmina", "1980-04-01", NULL};
	open_store(f); /* outbox.db in the same directory is scanned too */
	char *recs[4];
	for (int i = 0; i < 4; i++) {
		char *data = member_data(people[i][0], "gold", 1, people[i][1], people[i][2]);
		recs[i] = tu_fmt("{\"key\":\"%s\",\"data\":%s}", people[i][0], data);
		free(data);
	}
	/* Two through a snapshot, one through a delta, one through a delta
	 * kept aside during a build (the buffer must not hold them in clear). */
	char *two = tu_fmt("%s,%s", recs[0], recs[1]);
	assert_int_equal(apply_ok(f, chunk("members", "m-5-1", 5, 0, 1, two), &o), CA_SWAPPED);
	free(two);
	char *op = tu_fmt("{\"op\":\"upsert\",%s", recs[2] + 1);
	assert_int_equal(apply_ok(f, delta("members", 5, 6, op), &o), CA_APPLIED);
	free(op);
	char *r0 = tu_fmt("%s,%s,%s", recs[0], recs[1], recs[2]);
	assert_int_equal(apply_ok(f, chunk("members", "m-7-1", 7, 0, 2, r0), &o), CA_CHUNK);
	op = tu_fmt("{\"op\":\"upsert\",%s", recs[3] + 1);
	assert_int_equal(apply_ok(f, delta("members", 7, 8, op), &o), CA_BUFFERED);
	free(op);
	assert_nowhere_in_clear(f->store, needles); /* with the build half done */
	assert_int_equal(apply_ok(f, chunk("members", "m-7-1", 7, 1, 2, ""), &o), CA_SWAPPED);
	assert_int_equal(o.cursor, 8);
	free(r0);
	for (int i = 0; i < 4; i++)
		free(recs[i]);

	/* The number as typed at the till, in its usual shapes. */
	static const char *const typed[] = {"+44 7700 900123", "07700 900123", "0044 7700 900123", "(07700) 900-123",
					    "447700900123", "+44.7700.900.123"};
	for (size_t i = 0; i < sizeof(typed) / sizeof(typed[0]); i++) {
		int rc;
		cJSON *j = card_by(f, SCRM_MEMBER_PHONE, typed[i], &rc);
		if (rc != SCRM_OK)
			fail_msg("phone \"%s\": %d %s", typed[i], rc, scrm_errmsg());
		assert_string_equal(jstr(j, "member_id"), "17850");
		/* Personal fields decrypted for the guide, the phone masked. */
		assert_string_equal(jstr(j, "personal.name"), "Zebedee Quartermaine");
		assert_string_equal(jstr(j, "personal.birthday"), "1980-04-01");
		assert_string_equal(jstr(j, "personal.phone"), "********0123");
		assert_null(jget(j, "pii"));
		cJSON_Delete(j);
	}
	int rc;
	cJSON *j = card_by(f, SCRM_MEMBER_PHONE, "+353 86 123 4567", &rc);
	assert_int_equal(rc, SCRM_OK);
	assert_string_equal(jstr(j, "member_id"), "17852");
	cJSON_Delete(j);
	j = card_by(f, SCRM_MEMBER_PHONE, "+1 (202) 555-0143", &rc);
	assert_int_equal(rc, SCRM_OK);
	assert_string_equal(jstr(j, "member_id"), "17853"); /* from the replayed buffered delta */
	assert_string_equal(jstr(j, "personal.name"), "Wilhelmina Caldicott-Smythe");
	cJSON_Delete(j);
	j = card_by(f, SCRM_MEMBER_PHONE, "07700 900999", &rc);
	assert_null(j);
	assert_int_equal(rc, SCRM_E_NOT_FOUND);
	j = card_by(f, SCRM_MEMBER_PHONE, "12ab", &rc);
	assert_int_equal(rc, SCRM_E_INVALID);
	assert_errmsg_contains("phone");
	j = card_by(f, SCRM_MEMBER_PHONE, "0123", &rc);
	assert_int_equal(rc, SCRM_E_INVALID);

	/* Capture something for the member too (outbox.db is scanned). */
	scrm_member_scan scan = {.member_id = "17850", .method = "phone"};
	assert_int_equal(scrm_record_member_scan(f->s, &scan, NULL), SCRM_OK);

	/* Nowhere in clear: while open (WAL), after a checkpoint, after close. */
	assert_nowhere_in_clear(f->store, needles);
	cache__checkpoint(f->c);
	assert_nowhere_in_clear(f->store, needles);
	cache__close(f->c);
	f->c = NULL;
	scrm_store_close(f->s);
	f->s = NULL;
	assert_nowhere_in_clear(f->store, needles);
	open_cache(f);
	j = card_by(f, SCRM_MEMBER_PHONE, "07700 900456", &rc);
	assert_int_equal(rc, SCRM_OK);
	assert_string_equal(jstr(j, "personal.name"), "Philippa Ottoline Brandreth");
	cJSON_Delete(j);
}

static void phone_normalise_rules(void **state)
{
	(void)state;
	static const struct {
		const char *in, *cc, *out;
	} cases[] = {
		{"+44 7700 900123", "44", "447700900123"}, {"07700 900123", "44", "447700900123"},
		{"0044 7700 900123", "44", "447700900123"}, {"(0)7700-900.123", "44", "447700900123"},
		{"07700 900123", "", "07700900123"},        {"086 123 4567", "353", "353861234567"},
		{"123456", "", "123456"},                   {"12345", "", NULL},
		{"1234567890123456", "", NULL},             {"+", "44", NULL},
		{"", "44", NULL},                           {"44 7700 + 900123", "44", NULL},
		{"++447700900123", "44", NULL},             {"07700x900123", "44", NULL},
		{"123456789012345", "", "123456789012345"}, {"000000000000000000000000000000", "44", NULL},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char out[24];
		int rc = cache__phone_normalise(cases[i].in, cases[i].cc, out);
		if (cases[i].out) {
			if (rc != 0 || strcmp(out, cases[i].out) != 0)
				fail_msg("\"%s\" (cc %s): expected %s, got rc %d \"%s\"", cases[i].in, cases[i].cc,
					 cases[i].out, rc, rc ? "" : out);
		} else if (rc != -1) {
			fail_msg("\"%s\" (cc %s): expected a refusal, got \"%s\"", cases[i].in, cases[i].cc, out);
		}
	}
}

/* ---- erasure -------------------------------------------------------- */

static int redact_in_outbox(void *ctx, const char *member_id)
{
	int64_t n = 0;
	return outbox__redact_member((outbox *)ctx, member_id, &n);
}

static void purchase_for(fx *f, const char *order_id, const char *member_id, int64_t total)
{
	scrm_line line = {.sku = "85123A", .qty = 1, .unit_price = total, .discount = 0};
	scrm_purchase p = {.order_id = order_id, .lines = &line, .n_lines = 1, .total = total, .currency = "GBP",
			   .payment = "card", .member_id = member_id, .guide_id = "g-07"};
	assert_int_equal(scrm_record_purchase(f->s, &p, NULL), SCRM_OK);
}

static void erasure_reaches_cache_and_outbox(void **state)
{
	fx *f = *state;
	cache__outcome o;
	open_store(f);
	load_members(f, "M-ERASE-1,M-KEEP-1,M-ERASE-2", 5);
	assert_int_equal(apply_ok(f, delta("recos", 0, 1,
					   "{\"op\":\"upsert\",\"key\":\"M-ERASE-1\",\"data\":{\"member_id\":\"M-ERASE-1\",\"items\":"
					   "[{\"sku\":\"22423\",\"score\":0.83,\"reason\":\"bought_with\"}]}},"
					   "{\"op\":\"upsert\",\"key\":\"M-KEEP-1\",\"data\":{\"member_id\":\"M-KEEP-1\",\"items\":[]}}"),
				  &o),
			 CA_APPLIED);
	char *p = coupon_payload("C-77", "M-ERASE-1", NOW_MS + 86400000LL);
	char *op = signed_op(p);
	assert_int_equal(apply_ok(f, delta("coupons", 0, 1, op), &o), CA_APPLIED);
	free(op);
	free(p);

	/* Purchases after central's figures show on the card as "local". */
	purchase_for(f, "A-1", "M-ERASE-1", 1530);
	purchase_for(f, "A-2", "M-ERASE-1", 500);
	purchase_for(f, "A-3", "M-KEEP-1", 700);
	scrm_return ret = {.return_id = "R-1", .order_id = "A-1", .lines = &(scrm_line){.sku = "85123A", .qty = 1,
											  .unit_price = 1530},
			   .n_lines = 1, .total = 1530, .currency = "GBP", .refund_method = "card",
			   .reason = "told us about their divorce", .member_id = "M-ERASE-1"};
	assert_int_equal(scrm_record_return(f->s, &ret, NULL), SCRM_OK);
	cJSON *j = card(f, "M-ERASE-1");
	assert_non_null(j);
	assert_int_equal(jint(j, "local.orders"), 2);
	assert_int_equal(jint(j, "local.returns"), 1);
	assert_int_equal(jint(j, "local.spend"), 1530 + 500 - 1530);
	assert_int_equal(cJSON_GetArraySize(jget(j, "local.purchases")), 3);
	assert_int_equal(jint(j, "stats.orders"), 3 + 2);
	assert_int_equal(jint(j, "stats.spend"), 1000 + 500);
	assert_int_equal(jint(j, "stats.last_purchase_ms"), NOW_MS);
	assert_int_equal(jint(j, "stats.recency_days"), 0);
	const cJSON *recent = jget(j, "recent");
	assert_int_equal(cJSON_GetArraySize(recent), 3); /* 2 local + 1 from central */
	assert_true(cJSON_IsTrue(jget(cJSON_GetArrayItem(recent, 0), "local")));
	assert_true(cJSON_IsTrue(jget(cJSON_GetArrayItem(recent, 1), "local")));
	assert_string_equal(jstr(cJSON_GetArrayItem(recent, 2), "order_id"), "581492");
	assert_int_equal(cJSON_GetArraySize(jget(j, "coupons")), 1);
	cJSON_Delete(j);
	/* And a scan at the counter, which the outbox must redact too. */
	scrm_cache *h = NULL;
	assert_int_equal(scrm_cache_open(f->store, NULL, &h), SCRM_OK);
	assert_int_equal(scrm_member_identify(f->s, h, SCRM_MEMBER_ID, "M-ERASE-1", "g-07", NULL, NULL), SCRM_OK);
	scrm_cache_close(h);
	assert_int_equal(tu_sql_int(f->outbox_db, "SELECT count(*) FROM outbox WHERE instr(body, 'M-ERASE-1') > 0"), 4);

	/* Forget through a delta op, the daemon's callback redacting the
	 * outbox inside the cache's transaction. */
	outbox *ob = NULL;
	assert_int_equal(outbox__open(f->store, NULL, 2000, &ob), SCRM_OK);
	const char *msg_text = "{\"v\":1,\"type\":\"delta\",\"stream\":\"members\",\"base\":5,\"version\":6,"
			       "\"ops\":[{\"op\":\"forget\",\"key\":\"M-ERASE-1\"}]}";
	assert_int_equal(cache__apply(f->c, "members", msg_text, strlen(msg_text), redact_in_outbox, ob, &o), SCRM_OK);
	assert_int_equal(o.what, CA_APPLIED);

	int rc;
	j = card_by(f, SCRM_MEMBER_ID, "M-ERASE-1", &rc);
	assert_null(j);
	assert_int_equal(rc, SCRM_E_NOT_FOUND);
	j = card_by(f, SCRM_MEMBER_CARD, "CARD-M-ERASE-1", &rc);
	assert_int_equal(rc, SCRM_E_NOT_FOUND);
	assert_int_equal(tu_sql_int(f->cache_db, "SELECT count(*) FROM recos WHERE key = 'M-ERASE-1'"), 0);
	assert_int_equal(tu_sql_int(f->cache_db, "SELECT count(*) FROM coupons WHERE member_id = 'M-ERASE-1'"), 0);
	assert_int_equal(tu_sql_int(f->cache_db, "SELECT count(*) FROM recos WHERE key = 'M-KEEP-1'"), 1);
	/* The events stay (same ids and seqs), without who the customer was. */
	assert_int_equal(tu_sql_int(f->outbox_db, "SELECT count(*) FROM outbox"), 5);
	assert_int_equal(tu_sql_int(f->outbox_db, "SELECT count(*) FROM outbox WHERE instr(body, 'M-ERASE-1') > 0"), 0);
	assert_int_equal(tu_sql_int(f->outbox_db, "SELECT count(*) FROM outbox WHERE instr(body, 'divorce') > 0"), 0);
	assert_int_equal(tu_sql_int(f->outbox_db,
				    "SELECT count(*) FROM outbox WHERE instr(body, '\"redacted\":\"erasure\"') > 0"),
			 4);
	assert_int_equal(tu_sql_int(f->outbox_db, "SELECT count(*) FROM member_activity WHERE member_id = 'M-ERASE-1'"),
			 0);
	/* Someone else's history is untouched. */
	j = card(f, "M-KEEP-1");
	assert_int_equal(jint(j, "local.orders"), 1);
	cJSON_Delete(j);

	/* cache__forget (scrmctl / a command) does the same. */
	purchase_for(f, "A-4", "M-ERASE-2", 900);
	assert_int_equal(cache__forget(f->c, "M-ERASE-2", redact_in_outbox, ob), SCRM_OK);
	j = card_by(f, SCRM_MEMBER_ID, "M-ERASE-2", &rc);
	assert_int_equal(rc, SCRM_E_NOT_FOUND);
	assert_int_equal(tu_sql_int(f->outbox_db, "SELECT count(*) FROM outbox WHERE instr(body, 'M-ERASE-2') > 0"), 0);
	assert_int_equal(tu_sql_int(f->outbox_db, "SELECT count(*) FROM member_activity WHERE member_id = 'M-ERASE-2'"),
			 0);
	/* A forget listed in a snapshot's "forgotten" reaches the outbox too. */
	purchase_for(f, "A-5", "M-KEEP-1", 100);
	char *recs = member_recs("M-NEW", "gold");
	char *snap = tu_fmt("{\"v\":1,\"type\":\"snapshot\",\"stream\":\"members\",\"snapshot\":\"m-9-1\",\"version\":9,"
			 "\"chunk\":0,\"chunks\":1,\"records\":[%s],\"forgotten\":[\"M-KEEP-1\"]}",
			 recs);
	assert_int_equal(cache__apply(f->c, NULL, snap, strlen(snap), redact_in_outbox, ob, &o), SCRM_OK);
	assert_int_equal(o.what, CA_SWAPPED);
	assert_int_equal(tu_sql_int(f->outbox_db, "SELECT count(*) FROM outbox WHERE instr(body, 'M-KEEP-1') > 0"), 0);
	assert_int_equal(tu_sql_int(f->cache_db, "SELECT count(*) FROM recos WHERE key = 'M-KEEP-1'"), 0);
	free(snap);
	free(recs);
	/* Without a callback (scrmctl on a cache alone) the cache side still goes. */
	assert_int_equal(cache__forget(f->c, "M-NEW", NULL, NULL), SCRM_OK);
	assert_false(has_member(f, "M-NEW"));
	outbox__close(ob);
}

static int failing_forget(void *ctx, const char *member_id)
{
	(void)ctx;
	(void)member_id;
	return SCRM_E_BUSY;
}

static void forget_callback_failure_aborts(void **state)
{
	fx *f = *state;
	cache__outcome o;
	load_members(f, "M1,M2", 5);
	const char *m = "{\"v\":1,\"type\":\"delta\",\"stream\":\"members\",\"base\":5,\"version\":6,"
			"\"ops\":[{\"op\":\"delete\",\"key\":\"M2\"},{\"op\":\"forget\",\"key\":\"M1\"}]}";
	assert_int_equal(cache__apply(f->c, NULL, m, strlen(m), failing_forget, NULL, &o), SCRM_E_BUSY);
	assert_true(has_member(f, "M1"));
	assert_true(has_member(f, "M2"));
	assert_int_equal(status_int(f, "members", "cursor"), 5);
	assert_int_equal(cache__forget(f->c, "M1", failing_forget, NULL), SCRM_E_BUSY);
	assert_true(has_member(f, "M1"));
}

/* A forget during a build of the streams that hold member data (members,
 * recos, coupons) must not come back with the swap. */
static void forget_during_builds_stays_forgotten(void **state)
{
	fx *f = *state;
	cache__outcome o;
	load_members(f, "X1,X2", 5);
	char *p = coupon_payload("C-5", "X1", NOW_MS + 86400000LL);
	char *op = signed_op(p);
	char *rec = tu_fmt("{%s", op + strlen("{\"op\":\"upsert\","));
	assert_int_equal(apply_ok(f, chunk("coupons", "c-3-1", 3, 0, 2, rec), &o), CA_CHUNK);
	assert_int_equal(apply_ok(f, chunk("recos", "r-3-1", 3, 0, 2,
					   "{\"key\":\"X1\",\"data\":{\"member_id\":\"X1\",\"items\":[]}},"
					   "{\"key\":\"X2\",\"data\":{\"member_id\":\"X2\",\"items\":[]}}"),
				  &o),
			 CA_CHUNK);
	char *recs = member_recs("X1,X2", "gold");
	assert_int_equal(apply_ok(f, chunk("members", "m-6-1", 6, 0, 2, recs), &o), CA_CHUNK);
	assert_int_equal(apply_ok(f, delta("members", 5, 6, "{\"op\":\"forget\",\"key\":\"X1\"}"), &o), CA_BUFFERED);
	assert_int_equal(apply_ok(f, chunk("members", "m-6-1", 6, 1, 2, ""), &o), CA_SWAPPED);
	assert_int_equal(apply_ok(f, chunk("recos", "r-3-1", 3, 1, 2, ""), &o), CA_SWAPPED);
	assert_int_equal(apply_ok(f, chunk("coupons", "c-3-1", 3, 1, 2, ""), &o), CA_SWAPPED);
	assert_false(has_member(f, "X1"));
	assert_true(has_member(f, "X2"));
	assert_int_equal(tu_sql_int(f->cache_db, "SELECT count(*) FROM recos WHERE key = 'X1'"), 0);
	assert_int_equal(tu_sql_int(f->cache_db, "SELECT count(*) FROM recos WHERE key = 'X2'"), 1);
	assert_int_equal(tu_sql_int(f->cache_db, "SELECT count(*) FROM coupons WHERE member_id = 'X1'"), 0);
	free(recs);
	free(rec);
	free(op);
	free(p);
}

/* ---- erasure down to the bytes -------------------------------------- */

/* A profile big enough to spill into overflow pages (20 recent purchases). */
static char *big_member_rec(const char *id, const char *tier)
{
	sbuf b;
	sbuf__init(&b);
	for (int i = 0; i < 20; i++) {
		char one[200];
		snprintf(one, sizeof(one), "%s{\"ts\":%lld,\"order_id\":\"O-%s-%02d\",\"total\":%d,\"skus\":[\"22423\",\"22697\"]}",
			 i ? "," : "", (long long)(NOW_MS - (i + 2) * 86400000LL), id, i, 100 + i);
		sbuf__puts(&b, one);
	}
	sbuf__putc(&b, '\0');
	assert_false(b.oom);
	char *rec = tu_fmt("{\"key\":\"%s\",\"data\":{\"member_id\":\"%s\",\"card\":\"CARD-%s\",\"tier\":\"%s\","
			"\"consent\":{\"marketing\":true,\"tracking\":true},"
			"\"stats\":{\"orders\":20,\"spend\":2190,\"currency\":\"GBP\",\"as_of_ms\":%lld},\"recent\":[%s],"
			"\"pii\":{\"name\":\"Name of %s\",\"phone\":\"447700900%03d\",\"birthday\":\"1980-04-01\"}}}",
			id, id, id, tier, (long long)(NOW_MS - 86400000LL), b.p, id, (int)(strlen(id) * 7 % 1000));
	sbuf__free(&b);
	return rec;
}

static char *big_member_recs(const char *const *ids, const char *tier)
{
	sbuf b;
	sbuf__init(&b);
	for (size_t i = 0; ids[i]; i++) {
		char *rec = big_member_rec(ids[i], tier);
		if (i)
			sbuf__putc(&b, ',');
		sbuf__puts(&b, rec);
		free(rec);
	}
	sbuf__putc(&b, '\0');
	assert_false(b.oom);
	return sbuf__take(&b, NULL);
}

static int64_t wal_bytes(fx *f)
{
	char *wal = tu_fmt("%s-wal", f->cache_db);
	struct stat st;
	int64_t n = stat(wal, &st) == 0 ? (int64_t)st.st_size : 0;
	free(wal);
	return n;
}

static int erasure_pending_in_status(fx *f)
{
	sbuf b;
	sbuf__init(&b);
	assert_int_equal(cache__status(f->c, &b), SCRM_OK);
	cJSON *j = cJSON_ParseWithLength(b.p, b.len);
	sbuf__free(&b);
	const cJSON *p = jget(j, "erasure_pending");
	assert_true(cJSON_IsBool(p));
	int yes = cJSON_IsTrue(p);
	cJSON_Delete(j);
	return yes;
}

static double real_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* The member's id and card (the card holds the id) nowhere in the store's
 * files — cache.db, its WAL, outbox.db and its WAL; right after the erasure
 * (`just_erased`) the cache's WAL is also cut to 0 bytes. */
static void assert_erased_from_files(fx *f, const char *member_id, int just_erased)
{
	const char *needles[] = {member_id, NULL};
	assert_nowhere_in_clear(f->store, needles);
	if (just_erased)
		assert_int_equal(wal_bytes(f), 0);
	assert_false(erasure_pending_in_status(f));
}

/* Every copy a member leaves in cache.db goes at the erasure, before it
 * returns: the live record and its card/phone index entries, the overflow
 * pages of an older version, the view a snapshot replaced, a build in
 * progress, a delta kept aside for after it — and the WAL's frames. */
static void erasure_reaches_the_files_bytes(void **state)
{
	fx *f = *state;
	cache__outcome o;
	static const char *const ids[] = {"M-KEEP-A", "M-GONE-1", "M-GONE-2", "M-GONE-3", "M-GONE-4", "M-KEEP-B", NULL};
	open_store(f);
	outbox *ob = NULL;
	assert_int_equal(outbox__open(f->store, NULL, 2000, &ob), SCRM_OK);
	/* Two generations: the first one's pages are freed by the swap. */
	char *recs = big_member_recs(ids, "gold");
	assert_int_equal(apply_ok(f, chunk("members", "m-5", 5, 0, 1, recs), &o), CA_SWAPPED);
	assert_int_equal(apply_ok(f, chunk("members", "m-6", 6, 0, 1, recs), &o), CA_SWAPPED);
	free(recs);
	/* A newer version: the old one's overflow chain is freed. */
	char *rec = big_member_rec("M-GONE-1", "silver");
	char *op = tu_fmt("{\"op\":\"upsert\",%s", rec + 1);
	assert_int_equal(apply_ok(f, delta("members", 6, 7, op), &o), CA_APPLIED);
	free(op);
	free(rec);
	assert_int_equal(apply_ok(f, delta("recos", 0, 1,
					   "{\"op\":\"upsert\",\"key\":\"M-GONE-1\",\"data\":{\"member_id\":\"M-GONE-1\",\"items\":"
					   "[{\"sku\":\"22423\",\"score\":0.83,\"reason\":\"bought_with\"}]}}"),
				  &o),
			 CA_APPLIED);
	char *p = coupon_payload("C-91", "M-GONE-1", NOW_MS + 86400000LL);
	op = signed_op(p);
	assert_int_equal(apply_ok(f, delta("coupons", 0, 1, op), &o), CA_APPLIED);
	free(op);
	free(p);
	purchase_for(f, "G-1", "M-GONE-1", 1200);
	/* A build in progress that holds the member, and a delta kept aside
	 * for after it (it does not follow the view) that upserts it again. */
	recs = big_member_recs(ids, "bronze");
	assert_int_equal(apply_ok(f, chunk("members", "m-8", 8, 0, 2, recs), &o), CA_CHUNK);
	free(recs);
	rec = big_member_rec("M-GONE-1", "platinum");
	op = tu_fmt("{\"op\":\"upsert\",%s", rec + 1);
	assert_int_equal(apply_ok(f, delta("members", 8, 9, op), &o), CA_BUFFERED);
	free(op);
	free(rec);
	cache__checkpoint(f->c); /* some of it in cache.db, some in the WAL */
	assert_true(has_member(f, "M-GONE-1"));

	/* 1. The fleet command's path, nobody else reading. */
	double t0 = real_ms();
	assert_int_equal(cache__forget(f->c, "M-GONE-1", redact_in_outbox, ob), SCRM_OK);
	double t1 = real_ms();
	assert_erased_from_files(f, "M-GONE-1", 1);
	print_message("erasure, no other reader: %.1f ms (cache.db %lld KiB)\n", t1 - t0,
		      (long long)tu_sql_int(f->cache_db, "SELECT page_count * page_size / 1024 FROM pragma_page_count, "
							 "pragma_page_size"));
	/* The build and the delta kept aside do not bring the member back. */
	assert_int_equal(apply_ok(f, chunk("members", "m-8", 8, 1, 2, ""), &o), CA_SWAPPED);
	assert_int_equal(o.cursor, 9);
	assert_false(has_member(f, "M-GONE-1"));
	assert_true(has_member(f, "M-KEEP-A"));
	assert_int_equal(tu_sql_int(f->cache_db, "SELECT count(*) FROM members"), 5);
	assert_erased_from_files(f, "M-GONE-1", 0);

	/* 2. A forget op in a delta kept aside during a build applies at once,
	 * with a second connection open that has just read (a till). */
	scrm_cache *till = NULL;
	char *json = NULL;
	assert_int_equal(scrm_cache_open(f->store, NULL, &till), SCRM_OK);
	assert_int_equal(scrm_member_get(till, SCRM_MEMBER_CARD, "CARD-M-GONE-2", &json), SCRM_OK);
	scrm_free(json);
	recs = big_member_recs(ids + 2, "gold"); /* M-GONE-2 onwards */
	assert_int_equal(apply_ok(f, chunk("members", "m-12", 12, 0, 2, recs), &o), CA_CHUNK);
	free(recs);
	t0 = real_ms();
	assert_int_equal(apply_ok(f, delta("members", 10, 11, "{\"op\":\"forget\",\"key\":\"M-GONE-2\"}"), &o), CA_BUFFERED);
	t1 = real_ms();
	assert_false(has_member(f, "M-GONE-2"));
	assert_erased_from_files(f, "M-GONE-2", 1);
	print_message("erasure by a delta, a till's connection open: %.1f ms\n", t1 - t0);
	assert_int_equal(scrm_member_get(till, SCRM_MEMBER_CARD, "CARD-M-GONE-2", &json), SCRM_E_NOT_FOUND);
	assert_int_equal(apply_ok(f, chunk("members", "m-12", 12, 1, 2, ""), &o), CA_SWAPPED);
	assert_false(has_member(f, "M-GONE-2"));
	assert_erased_from_files(f, "M-GONE-2", 0);
	/* ... and in a delta that does not follow the cursor (a gap). */
	assert_int_equal(apply_ok(f, delta("members", 20, 21, "{\"op\":\"forget\",\"key\":\"M-GONE-4\"}"), &o), CA_GAP);
	assert_int_equal(o.cursor, 12);
	assert_false(has_member(f, "M-GONE-4"));
	assert_erased_from_files(f, "M-GONE-4", 1);

	/* 3. A reader in the middle of a read (a guide tablet's query): the
	 * WAL cannot be cut under it. The member is gone from the view, the
	 * call says the bytes are not scrubbed yet, and the next checkpoint
	 * once the reader has let go finishes the job. */
	cache__close(f->c);
	cache__options short_wait = {.create = 1, .max_message_bytes = MAX_MSG, .snapshot_timeout_ms = TIMEOUT_MS,
				     .busy_timeout_ms = 300};
	assert_int_equal(cache__open(f->store, &short_wait, &f->c), SCRM_OK);
	sqlite3 *reader = NULL;
	assert_int_equal(sqlite3_open_v2(f->cache_db, &reader, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_exec(reader, "BEGIN; SELECT count(*) FROM members", NULL, NULL, NULL), SQLITE_OK);
	t0 = real_ms();
	assert_int_equal(cache__forget(f->c, "M-GONE-3", NULL, NULL), SCRM_E_BUSY);
	t1 = real_ms();
	assert_errmsg_contains("readers kept cache.db-wal busy");
	print_message("erasure with a reader holding a snapshot: %.1f ms, then SCRM_E_BUSY\n", t1 - t0);
	assert_false(has_member(f, "M-GONE-3"));
	assert_true(erasure_pending_in_status(f));
	assert_true(wal_bytes(f) > 0);
	assert_int_equal(sqlite3_exec(reader, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
	t0 = real_ms();
	cache__checkpoint(f->c); /* the daemon's idle checkpoint */
	t1 = real_ms();
	assert_erased_from_files(f, "M-GONE-3", 1);
	print_message("pending erasure finished by the idle checkpoint: %.1f ms\n", t1 - t0);
	sqlite3_close(reader);
	scrm_cache_close(till);
	assert_true(has_member(f, "M-KEEP-B"));
	outbox__close(ob);
}

/* A cache.db written by an agent that freed pages with secure_delete=FAST:
 * the records it freed are still on its freelist, and the first erasure
 * zeroes them. */
static void erasure_zeroes_a_freelist_left_by_fast(void **state)
{
	fx *f = *state;
	static const char *const ids[] = {"M-OLD-1", "M-OLD-2", "M-OLD-3", NULL};
	char *recs = big_member_recs(ids, "gold");
	assert_int_equal(apply_ok(f, chunk("members", "m-5", 5, 0, 1, recs), NULL), CA_SWAPPED);
	free(recs);
	cache__close(f->c);
	f->c = NULL;
	/* What the old agent did: FAST, delete, and no freelist mark. */
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(f->cache_db, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db,
				      "PRAGMA secure_delete=FAST; DELETE FROM meta WHERE k = 'freelist_zeroed';"
				      " DELETE FROM members WHERE key = 'M-OLD-2'; PRAGMA wal_checkpoint(TRUNCATE)",
				      NULL, NULL, NULL),
			 SQLITE_OK);
	sqlite3_close(db);
	const char *needles[] = {"O-M-OLD-2-", NULL};
	char *bytes = NULL;
	size_t n = 0;
	assert_int_equal(platform__read_file(f->cache_db, 64u << 20, &bytes, &n), 0);
	assert_non_null(memmem(bytes, n, needles[0], strlen(needles[0]))); /* the premise: FAST left them */
	free(bytes);
	open_cache(f);
	assert_int_equal(cache__forget(f->c, "M-OLD-1", NULL, NULL), SCRM_OK);
	assert_erased_from_files(f, "M-OLD-1", 1);
	assert_nowhere_in_clear(f->store, needles);
	assert_true(has_member(f, "M-OLD-3"));
	assert_int_equal(tu_sql_int(f->cache_db, "SELECT count(*) FROM meta WHERE k = 'freelist_zeroed' AND v = '1'"), 1);
}

/* ---- refused messages ----------------------------------------------- */

static void malformed_messages_refused_whole(void **state)
{
	fx *f = *state;
	load_members(f, "M1,M2", 5);
	char *before = card_text(f, "M1");
	assert_non_null(before);

	char *many = NULL;
	{
		sbuf b;
		sbuf__init(&b);
		for (int i = 0; i < 5001; i++) {
			char one[64];
			snprintf(one, sizeof(one), "%s{\"op\":\"delete\",\"key\":\"k%d\"}", i ? "," : "", i);
			sbuf__puts(&b, one);
		}
		sbuf__putc(&b, '\0');
		many = sbuf__take(&b, NULL);
		sbuf__free(&b);
	}
	char *big = malloc(MAX_MSG + 2);
	assert_non_null(big);
	{
		/* Valid JSON, one byte over the cap. */
		const char *head = "{\"v\":1,\"type\":\"delta\",\"stream\":\"members\",\"base\":5,\"version\":6,"
				   "\"ops\":[{\"op\":\"delete\",\"key\":\"M1\"}],\"pad\":\"";
		size_t hl = strlen(head);
		memcpy(big, head, hl);
		memset(big + hl, 'x', MAX_MSG + 1 - hl - 2);
		memcpy(big + MAX_MSG - 1, "\"}", 3);
		assert_int_equal(strlen(big), MAX_MSG + 1);
	}
	char *tier_op = upsert_member("M1", "bronze");
	char *long_key = tu_fmt("{\"op\":\"delete\",\"key\":\"%065d\"}", 7);

	const struct {
		const char *topic;
		char *msg;
		int code;
		const char *field;
	} cases[] = {
		{NULL, tu_fmt("not json"), SCRM_E_INVALID, "message"},
		{NULL, tu_fmt("[1,2]"), SCRM_E_INVALID, "message"},
		{NULL, tu_fmt("{\"v\":1,\"type\":\"delta\""), SCRM_E_INVALID, "message"},
		{NULL, tu_fmt("{\"v\":2,\"type\":\"delta\",\"stream\":\"members\",\"base\":5,\"version\":6,\"ops\":[%s]}", tier_op),
		 SCRM_E_INVALID, "v"},
		{NULL, tu_fmt("{\"v\":\"1\",\"type\":\"delta\",\"stream\":\"members\",\"base\":5,\"version\":6,\"ops\":[%s]}", tier_op),
		 SCRM_E_INVALID, "v"},
		{NULL, tu_fmt("{\"type\":\"delta\",\"stream\":\"members\",\"base\":5,\"version\":6,\"ops\":[%s]}", tier_op),
		 SCRM_E_INVALID, "v"},
		{NULL, delta("pets", 5, 6, "{\"op\":\"delete\",\"key\":\"M1\"}"), SCRM_E_INVALID, "stream"},
		{"coupons", delta("members", 5, 6, "{\"op\":\"delete\",\"key\":\"M1\"}"), SCRM_E_INVALID, "stream"},
		{NULL, tu_fmt("{\"v\":1,\"type\":\"patch\",\"stream\":\"members\",\"base\":5,\"version\":6,\"ops\":[]}"),
		 SCRM_E_INVALID, "type"},
		{NULL, delta("members", 5, 5, "{\"op\":\"delete\",\"key\":\"M1\"}"), SCRM_E_INVALID, "version"},
		{NULL, delta("members", 6, 5, "{\"op\":\"delete\",\"key\":\"M1\"}"), SCRM_E_INVALID, "version"},
		{NULL, delta("members", 5, 10000000000000000LL, "{\"op\":\"delete\",\"key\":\"M1\"}"), SCRM_E_INVALID,
		 "version"},
		{NULL, delta("members", -1, 6, "{\"op\":\"delete\",\"key\":\"M1\"}"), SCRM_E_INVALID, "base"},
		{NULL, tu_fmt("{\"v\":1,\"type\":\"delta\",\"stream\":\"members\",\"base\":5.5,\"version\":6,\"ops\":[]}"),
		 SCRM_E_INVALID, "base"},
		{NULL, delta("members", 5, 6, ""), SCRM_E_INVALID, "ops"},
		{NULL, delta("members", 5, 6, many), SCRM_E_INVALID, "ops"},
		{NULL, tu_fmt("{\"v\":1,\"type\":\"delta\",\"stream\":\"members\",\"base\":5,\"version\":6,\"ops\":{}}"),
		 SCRM_E_INVALID, "ops"},
		{NULL, delta("members", 5, 6, "{\"op\":\"delete\"}"), SCRM_E_INVALID, "ops[0].key"},
		{NULL, delta("members", 5, 6, "{\"op\":\"delete\",\"key\":\"M 1\"}"), SCRM_E_INVALID, "ops[0].key"},
		{NULL, delta("members", 5, 6, "{\"op\":\"delete\",\"key\":\"\"}"), SCRM_E_INVALID, "ops[0].key"},
		{NULL, delta("members", 5, 6, "{\"op\":\"delete\",\"key\":\"M/1\"}"), SCRM_E_INVALID, "ops[0].key"},
		{NULL, delta("members", 5, 6, long_key), SCRM_E_INVALID, "ops[0].key"},
		{NULL, delta("members", 5, 6, "{\"op\":\"delete\",\"key\":17850}"), SCRM_E_INVALID, "ops[0].key"},
		{NULL, delta("members", 5, 6, "7"), SCRM_E_INVALID, "ops[0]"},
		{NULL, delta("members", 5, 6, "{\"op\":\"merge\",\"key\":\"M1\"}"), SCRM_E_INVALID, "ops[0].op"},
		{NULL, delta("members", 5, 6, "{\"key\":\"M1\"}"), SCRM_E_INVALID, "ops[0].op"},
		{NULL, delta("recos", 0, 1, "{\"op\":\"forget\",\"key\":\"M1\"}"), SCRM_E_INVALID, "ops[0].op"},
		{NULL, delta("members", 5, 6, "{\"op\":\"upsert\",\"key\":\"M1\"}"), SCRM_E_INVALID, "ops[0].data"},
		{NULL, delta("members", 5, 6, "{\"op\":\"upsert\",\"key\":\"M1\",\"data\":[1]}"), SCRM_E_INVALID,
		 "ops[0].data"},
		{NULL, delta("members", 5, 6, "{\"op\":\"upsert\",\"key\":\"M1\",\"data\":{\"member_id\":\"M2\"}}"),
		 SCRM_E_INVALID, "ops[0].data.member_id"},
		{NULL, delta("members", 5, 6, "{\"op\":\"upsert\",\"key\":\"M1\",\"data\":{\"member_id\":\"M1\",\"tier\":5}}"),
		 SCRM_E_INVALID, "ops[0].data.tier"},
		{NULL,
		 delta("members", 5, 6, "{\"op\":\"upsert\",\"key\":\"M1\",\"data\":{\"member_id\":\"M1\",\"stage\":\"zombie\"}}"),
		 SCRM_E_INVALID, "ops[0].data.stage"},
		{NULL,
		 delta("members", 5, 6, "{\"op\":\"upsert\",\"key\":\"M1\",\"data\":{\"member_id\":\"M1\",\"rfm\":{\"r\":9}}}"),
		 SCRM_E_INVALID, "ops[0].data.rfm.r"},
		{NULL,
		 delta("members", 5, 6,
		       "{\"op\":\"upsert\",\"key\":\"M1\",\"data\":{\"member_id\":\"M1\",\"consent\":{\"tracking\":\"yes\"}}}"),
		 SCRM_E_INVALID, "ops[0].data.consent.tracking"},
		{NULL,
		 delta("members", 5, 6, "{\"op\":\"upsert\",\"key\":\"M1\",\"data\":{\"member_id\":\"M1\",\"tags\":[\"\"]}}"),
		 SCRM_E_INVALID, "ops[0].data.tags[0]"},
		{NULL,
		 delta("members", 5, 6,
		       "{\"op\":\"upsert\",\"key\":\"M1\",\"data\":{\"member_id\":\"M1\",\"pii\":{\"phone\":\"+447700900123\"}}}"),
		 SCRM_E_INVALID, "ops[0].data.pii.phone"},
		{NULL,
		 delta("members", 5, 6,
		       "{\"op\":\"upsert\",\"key\":\"M1\",\"data\":{\"member_id\":\"M1\",\"stats\":{\"orders\":-1}}}"),
		 SCRM_E_INVALID, "ops[0].data.stats.orders"},
		{NULL, NULL /* filled below: a good op, then a bad one */, SCRM_E_INVALID, "ops[1].data.tier"},
		{NULL, tu_fmt("{\"v\":1,\"type\":\"snapshot\",\"stream\":\"members\",\"snapshot\":\"m-9\",\"version\":9,"
			   "\"chunk\":0,\"chunks\":1}"),
		 SCRM_E_INVALID, "records"},
		{NULL, tu_fmt("{\"v\":1,\"type\":\"snapshot\",\"stream\":\"members\",\"snapshot\":\"m-9\",\"version\":9,"
			   "\"chunk\":1,\"chunks\":1,\"records\":[]}"),
		 SCRM_E_INVALID, "chunk"},
		{NULL, tu_fmt("{\"v\":1,\"type\":\"snapshot\",\"stream\":\"members\",\"version\":9,"
			   "\"chunk\":0,\"chunks\":1,\"records\":[]}"),
		 SCRM_E_INVALID, "snapshot"},
		{NULL, tu_fmt("{\"v\":1,\"type\":\"snapshot\",\"stream\":\"recos\",\"snapshot\":\"r-9\",\"version\":9,"
			   "\"chunk\":0,\"chunks\":1,\"records\":[],\"forgotten\":[\"M1\"]}"),
		 SCRM_E_INVALID, "forgotten"},
		{NULL, tu_fmt("{\"v\":1,\"type\":\"snapshot\",\"stream\":\"members\",\"snapshot\":\"m-9\",\"version\":9,"
			   "\"chunk\":0,\"chunks\":1,\"records\":[],\"forgotten\":[\"a b\"]}"),
		 SCRM_E_INVALID, "forgotten[0]"},
		{NULL, tu_fmt("{\"v\":1,\"type\":\"snapshot\",\"stream\":\"members\",\"snapshot\":\"m-9\",\"version\":9,"
			   "\"chunk\":0,\"chunks\":1,\"records\":[{\"key\":\"M1\",\"data\":{\"member_id\":\"M1\",\"tier\":[]}}]}"),
		 SCRM_E_INVALID, "records[0].data.tier"},
		{NULL, tu_fmt("%s", big), SCRM_E_TOO_BIG, "message"},
	};
	const size_t n = sizeof(cases) / sizeof(cases[0]);
	char *two = tu_fmt("%s,{\"op\":\"upsert\",\"key\":\"M2\",\"data\":{\"member_id\":\"M2\",\"tier\":7}}", tier_op);
	char *mixed = delta("members", 5, 6, two);
	free(two);

	for (size_t i = 0; i < n; i++) {
		const char *msg = cases[i].msg ? cases[i].msg : mixed;
		cache__outcome o;
		int rc = cache__apply(f->c, cases[i].topic, msg, strlen(msg), NULL, NULL, &o);
		if (rc != cases[i].code)
			print_error("case %zu (%.120s): rc %d, errmsg \"%s\"\n", i, msg, rc, scrm_errmsg());
		assert_refused(rc, cases[i].code, cases[i].field);
		/* Nothing applied. */
		assert_int_equal(status_int(f, "members", "cursor"), 5);
		assert_int_equal(status_int(f, "members", "rows"), 2);
		assert_int_equal(status_int(f, "recos", "cursor"), 0);
		char *after = card_text(f, "M1");
		assert_non_null(after);
		assert_string_equal(after, before);
		free(after);
	}
	/* The NUL byte inside a message (length given explicitly). */
	{
		const char m[] = "{\"v\":1,\"type\":\"delta\"\0,\"stream\":\"members\"}";
		cache__outcome o;
		assert_refused(cache__apply(f->c, NULL, m, sizeof(m) - 1, NULL, NULL, &o), SCRM_E_INVALID, "message");
		assert_errmsg_contains("message: NUL byte at line 1, column 22");
	}
	/* Strict JSON (agent/lib/core/json.c): refused whole, the message says what and
	 * where; a key given twice is named with the path of its object. */
	{
		const struct {
			char *msg;
			const char *says;
		} strict[] = {
			{tu_fmt("{\"v\":1,\"type\":\"delta\",\"stream\":\"members\",\"base\":5,\"version\":6,\"version\":7,"
			     "\"ops\":[%s]}", tier_op),
			 "message: duplicate key \"version\" at $ (line 1, column 63)"},
			{delta("members", 5, 6, "{\"op\":\"delete\",\"key\":\"M2\",\"key\":\"M1\"}"),
			 "message: duplicate key \"key\" at $.ops[0] (line 1, column "},
			{delta("members", 5, 6,
			       "{\"op\":\"upsert\",\"key\":\"M1\",\"data\":{\"member_id\":\"M1\",\"tier\":\"gold\","
			       "\"tier\":\"bronze\"}}"),
			 "message: duplicate key \"tier\" at $.ops[0].data (line 1, column "},
			{delta("members", 5, 6, "{\"op\":\"delete\",\"key\":\"M\xff\"}"),
			 "message: invalid UTF-8 in a string at $.ops[0].key"},
			{delta("members", 5, 6, "{\"op\":\"delete\",\"key\":\"M1\"},"), "message: not valid JSON at line 1, column "},
			{tu_fmt(" \n"), "message: empty input"},
		};
		for (size_t i = 0; i < sizeof(strict) / sizeof(strict[0]); i++) {
			cache__outcome o;
			assert_refused(cache__apply(f->c, NULL, strict[i].msg, strlen(strict[i].msg), NULL, NULL, &o),
				       SCRM_E_INVALID, "message");
			assert_errmsg_contains(strict[i].says);
			free(strict[i].msg);
		}
		/* 10,000 levels: refused before cJSON recurses into them. */
		size_t depth = 10000;
		char *deep = malloc(2 * depth + 256);
		assert_non_null(deep);
		size_t k = (size_t)sprintf(deep, "{\"v\":1,\"type\":\"delta\",\"stream\":\"members\",\"base\":5,"
						 "\"version\":6,\"ops\":[{\"op\":\"delete\",\"key\":\"M1\",\"x\":");
		memset(deep + k, '[', depth);
		k += depth;
		memset(deep + k, ']', depth);
		k += depth;
		k += (size_t)sprintf(deep + k, "}]}");
		cache__outcome o;
		assert_refused(cache__apply(f->c, NULL, deep, k, NULL, NULL, &o), SCRM_E_INVALID, "message");
		assert_errmsg_contains("nested too deeply (more than 64 levels)");
		free(deep);
	}
	/* The cache still takes the next good delta. */
	assert_int_equal(apply_ok(f, delta("members", 5, 6, tier_op), NULL), CA_APPLIED);
	cJSON *j = card(f, "M1");
	assert_string_equal(jstr(j, "tier"), "bronze");
	cJSON_Delete(j);

	for (size_t i = 0; i < n; i++)
		free(cases[i].msg);
	free(mixed);
	free(many);
	free(big);
	free(tier_op);
	free(long_key);
	free(before);
}

/* ---- consent -------------------------------------------------------- */

static void scan_honours_tracking_consent(void **state)
{
	fx *f = *state;
	cache__outcome o;
	open_store(f);
	char *yes = member_data("MT", "gold", 1, "Tess Tracked", "447700900111");
	char *no = member_data("MN", "gold", 0, "Norm Untracked", "447700900222");
	char *recs = tu_fmt("{\"key\":\"MT\",\"data\":%s},{\"key\":\"MN\",\"data\":%s}", yes, no);
	assert_int_equal(apply_ok(f, chunk("members", "m-1-1", 1, 0, 1, recs), &o), CA_SWAPPED);
	free(yes);
	free(no);
	free(recs);

	scrm_cache *h = NULL;
	assert_int_equal(scrm_cache_open(f->store, NULL, &h), SCRM_OK);
	scrm_receipt r1, r2;
	char *json = NULL;
	assert_int_equal(scrm_member_identify(f->s, h, SCRM_MEMBER_CARD, "CARD-MN", "g-07", &json, &r1), SCRM_OK);
	assert_non_null(json);
	assert_non_null(strstr(json, "\"member_id\":\"MN\""));
	scrm_free(json);
	json = NULL;
	assert_int_equal(scrm_member_identify(f->s, h, SCRM_MEMBER_PHONE, "07700 900111", "g-07", &json, &r2), SCRM_OK);
	assert_non_null(strstr(json, "Tess Tracked"));
	scrm_free(json);

	char sql[120];
	snprintf(sql, sizeof(sql), "SELECT body FROM outbox WHERE seq = %lld", (long long)r1.seq);
	char *body = tu_sql_text(f->outbox_db, sql);
	assert_string_equal(body, "{\"member_id\":\"MN\",\"tracking\":false}");
	free(body);
	snprintf(sql, sizeof(sql), "SELECT body FROM outbox WHERE seq = %lld", (long long)r2.seq);
	body = tu_sql_text(f->outbox_db, sql);
	assert_string_equal(body, "{\"member_id\":\"MT\",\"method\":\"phone\",\"guide_id\":\"g-07\"}");
	free(body);
	snprintf(sql, sizeof(sql), "SELECT kind FROM outbox WHERE seq = %lld", (long long)r2.seq);
	body = tu_sql_text(f->outbox_db, sql);
	assert_string_equal(body, "member_scan");
	free(body);

	/* Unknown member: nothing recorded. */
	scrm_outbox_stats st;
	assert_int_equal(scrm_outbox_get_stats(f->s, &st), SCRM_OK);
	assert_int_equal(scrm_member_identify(f->s, h, SCRM_MEMBER_ID, "NOPE", NULL, NULL, NULL), SCRM_E_NOT_FOUND);
	scrm_outbox_stats st2;
	assert_int_equal(scrm_outbox_get_stats(f->s, &st2), SCRM_OK);
	assert_int_equal(st2.last_seq, st.last_seq);
	/* The public API refuses NULLs and reports status. */
	assert_int_equal(scrm_member_get(h, SCRM_MEMBER_ID, "MT", NULL), SCRM_E_INVALID);
	char *status = NULL;
	assert_int_equal(scrm_cache_status(h, &status), SCRM_OK);
	assert_non_null(strstr(status, "\"stream\":\"members\",\"cursor\":1,\"rows\":2"));
	scrm_free(status);
	scrm_cache_close(h);
}

/* ---- snapshot files ------------------------------------------------- */

static char *write_file(fx *f, const char *name, const char *text)
{
	char *path = tu_join(f->dir, name);
	tu_write_text(path, text);
	return path;
}

static void load_snapshot_files(void **state)
{
	fx *f = *state;
	int64_t n = -1, refused = -1;
	int st = -1;
	char *r1 = member_rec("F1", "gold"), *r2 = member_rec("F2", "gold"), *r3 = member_rec("F3", "silver");
	char *text = tu_fmt("{\"v\":1,\"type\":\"snapshot_file\",\"stream\":\"members\",\"version\":42}\n%s\n\n%s\n%s\n", r1,
			 r2, r3);
	char *path = write_file(f, "members.jsonl", text);
	free(text);
	assert_int_equal(cache__load_file(f->c, path, NULL, NULL, &n, &refused, &st), SCRM_OK);
	assert_int_equal(n, 3);
	assert_int_equal(refused, 0);
	assert_int_equal(st, ST_MEMBERS);
	assert_int_equal(status_int(f, "members", "cursor"), 42);
	assert_int_equal(status_int(f, "members", "rows"), 3);
	assert_true(has_member(f, "F3"));
	free(path);

	/* Header refused: names the file and line 1. */
	static const char *const headers[] = {
		"not json\n",
		"{\"v\":1,\"type\":\"snapshot\",\"stream\":\"members\",\"version\":42}\n",
		"{\"v\":1,\"type\":\"snapshot_file\",\"stream\":\"pets\",\"version\":42}\n",
		"{\"v\":1,\"type\":\"snapshot_file\",\"stream\":\"members\",\"version\":0}\n",
		"",
	};
	for (size_t i = 0; i < sizeof(headers) / sizeof(headers[0]); i++) {
		path = write_file(f, "bad.jsonl", headers[i]);
		int rc = cache__load_file(f->c, path, NULL, NULL, &n, &refused, &st);
		if (rc != SCRM_E_INVALID)
			fail_msg("header %zu: rc %d: %s", i, rc, scrm_errmsg());
		char *want = tu_fmt("%s:1:", path);
		assert_errmsg_contains(want);
		free(want);
		if (i == 3)
			assert_errmsg_contains("version");
		free(path);
	}
	/* A header with a key twice: which version would it be? */
	path = write_file(f, "dup.jsonl",
			  "{\"v\":1,\"type\":\"snapshot_file\",\"stream\":\"members\",\"version\":42,\"version\":7}\n");
	assert_int_equal(cache__load_file(f->c, path, NULL, NULL, &n, &refused, &st), SCRM_E_INVALID);
	text = tu_fmt("%s:1: header: duplicate key \"version\" at $ (line 1, column 63)", path);
	assert_errmsg_contains(text);
	free(text);
	free(path);
	/* A record with a key twice: refused whole, like any bad record. */
	text = tu_fmt("{\"v\":1,\"type\":\"snapshot_file\",\"stream\":\"members\",\"version\":43}\n%s\n"
		   "{\"key\":\"F9\",\"data\":{\"member_id\":\"F9\",\"tier\":\"gold\",\"tier\":\"silver\"}}\n",
		   r1);
	path = write_file(f, "members3.jsonl", text);
	free(text);
	assert_int_equal(cache__load_file(f->c, path, NULL, NULL, &n, &refused, &st), SCRM_E_INVALID);
	assert_errmsg_contains("records 1..2");
	assert_errmsg_contains("duplicate key \"tier\" at $.records[1].data");
	free(path);
	assert_int_equal(status_int(f, "members", "cursor"), 42);
	/* A bad record: refused whole, named by its record range and field. */
	text = tu_fmt("{\"v\":1,\"type\":\"snapshot_file\",\"stream\":\"members\",\"version\":43}\n%s\n"
		   "{\"key\":\"F9\",\"data\":{\"member_id\":\"F9\",\"tier\":1}}\n%s\n",
		   r1, r2);
	path = write_file(f, "members2.jsonl", text);
	free(text);
	assert_int_equal(cache__load_file(f->c, path, NULL, NULL, &n, &refused, &st), SCRM_E_INVALID);
	assert_errmsg_contains(path);
	assert_errmsg_contains("records 1..3");
	assert_errmsg_contains("records[1].data.tier");
	free(path);
	assert_int_equal(status_int(f, "members", "cursor"), 42);
	assert_true(has_member(f, "F3"));
	/* No such file. */
	assert_int_equal(cache__load_file(f->c, "/nonexistent/x.jsonl", NULL, NULL, &n, &refused, &st), SCRM_E_NOT_FOUND);
	/* Header only: an empty stream. */
	path = write_file(f, "empty.jsonl", "{\"v\":1,\"type\":\"snapshot_file\",\"stream\":\"rules\",\"version\":3}\n");
	assert_int_equal(cache__load_file(f->c, path, NULL, NULL, &n, &refused, &st), SCRM_OK);
	assert_int_equal(n, 0);
	assert_int_equal(st, ST_RULES);
	assert_int_equal(status_int(f, "rules", "cursor"), 3);
	free(path);
	free(r1);
	free(r2);
	free(r3);
}

/* ---- open ------------------------------------------------------------ */

static void open_refusals_and_missing_keys(void **state)
{
	fx *f = *state;
	cache *c = NULL;
	/* Readers never create: no cache yet is NOT_FOUND. */
	char *other = tu_join(f->dir, "other");
	cache__options ro = {0};
	assert_int_equal(cache__open(other, &ro, &c), SCRM_E_NOT_FOUND);
	assert_null(c);
	scrm_cache *h = NULL;
	assert_int_equal(scrm_cache_open(other, NULL, &h), SCRM_E_NOT_FOUND);
	assert_null(h);
	free(other);

	/* Without tenant.key and central.pub: phones, coupons and QR tokens
	 * are refused with the reason; the rest works. */
	char *k = tu_join(f->keys, "tenant.key");
	assert_int_equal(unlink(k), 0);
	free(k);
	k = tu_join(f->keys, "central.pub");
	assert_int_equal(unlink(k), 0);
	free(k);
	cache__close(f->c);
	open_cache(f);
	int rc;
	card_by(f, SCRM_MEMBER_PHONE, "07700 900123", &rc);
	assert_int_equal(rc, SCRM_E_CONFIG);
	assert_errmsg_contains("tenant.key");
	card_by(f, SCRM_MEMBER_QR, "SCRM1.eyJ0IjoiYWNtZSJ9.AAAA", &rc);
	assert_int_equal(rc, SCRM_E_CONFIG);
	assert_errmsg_contains("central.pub");
	/* A member with a phone is kept (sealed) without a phone hash: the
	 * store still knows its members; only the phone look-up is missing. */
	char *op = upsert_member("M1", "gold");
	cache__outcome o;
	assert_int_equal(apply_ok(f, delta("members", 0, 1, op), &o), CA_APPLIED);
	free(op);
	cJSON_Delete(card_by(f, SCRM_MEMBER_ID, "M1", &rc));
	assert_int_equal(rc, SCRM_OK);
	char *cp = coupon_payload("C-1", "M1", NOW_MS + 1000);
	op = signed_op(cp);
	assert_int_equal(apply_ok(f, delta("coupons", 0, 1, op), &o), CA_APPLIED);
	assert_int_equal(o.refused, 1);
	assert_non_null(strstr(cache__refused_detail(f->c), "central.pub"));
	free(op);
	free(cp);

	/* A data key that is not a key: refused with the file named. */
	cache__close(f->c);
	f->c = NULL;
	k = tu_join(f->keys, "data.key");
	FILE *fp = fopen(k, "w");
	assert_non_null(fp);
	fputs("not hex\n", fp);
	fclose(fp);
	cache__options co = {.create = 1};
	assert_int_equal(cache__open(f->store, &co, &c), SCRM_E_CONFIG);
	assert_errmsg_contains("data.key");
	free(k);
}


/* Review fixes: a signed but unusable coupon is refused alone; a redelivered
 * chunk 0 does not restart the build; a lost data key drops the sealed
 * members and bootstraps them again; a bad buffered delta cannot wedge the
 * swap. */
/* A cache from the first release (schema v1) had a partial index on
 * rules.if_sku that SQLite never used (the column is NOT NULL): opening it
 * swaps in the covering index, and rules look-ups use it. */
static void schema_v1_gets_a_usable_rules_index(void **state)
{
	fx *f = *state;
	cache__close(f->c);
	f->c = NULL;
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(f->cache_db, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db,
				      "DROP INDEX rules_ifc_g0;"
				      " CREATE INDEX rules_if_g0 ON rules(if_sku) WHERE if_sku IS NOT NULL;"
				      " PRAGMA user_version = 1",
				      NULL, NULL, NULL),
			 SQLITE_OK);
	sqlite3_close(db);
	open_cache(f);
	assert_int_equal(tu_sql_int(f->cache_db, "PRAGMA user_version"), 2);
	assert_int_equal(tu_sql_int(f->cache_db, "SELECT count(*) FROM sqlite_master WHERE name = 'rules_if_g0'"), 0);
	assert_int_equal(tu_sql_int(f->cache_db, "SELECT count(*) FROM sqlite_master WHERE name = 'rules_ifc_g0'"), 1);
	/* the plan names the index */
	assert_int_equal(sqlite3_open(f->cache_db, &db), SQLITE_OK);
	sqlite3_stmt *st = NULL;
	assert_int_equal(sqlite3_prepare_v2(db,
					    "EXPLAIN QUERY PLAN SELECT then_sku, confidence FROM rules WHERE if_sku = 'A'"
					    " ORDER BY confidence DESC, then_sku LIMIT 30",
					    -1, &st, NULL),
			 SQLITE_OK);
	int uses_index = 0, sorts = 0;
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *d = (const char *)sqlite3_column_text(st, 3);
		uses_index |= d && strstr(d, "rules_ifc_g0") != NULL;
		sorts |= d && strstr(d, "TEMP B-TREE") != NULL;
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	assert_true(uses_index);
	assert_false(sorts);
}

static void robustness_review_cases(void **state)
{
	fx *f = *state;
	cache__outcome o;
	int64_t cursor = 0;

	/* signed by central, but per_member_limit out of range */
	char *odd = signed_op("{\"type\":\"coupon\",\"id\":\"C-7\",\"member_id\":\"M1\",\"per_member_limit\":2000000}");
	char *good = signed_op("{\"type\":\"campaign\",\"id\":\"CAMP\",\"valid_to\":1900000000000}");
	refused_alone(f, &cursor, odd, good, "coupon:C-7", "per_member_limit");
	free(odd);
	free(good);

	/* chunk 0 redelivered in the middle of a build is ignored */
	char *r1 = member_recs("M1,M2", "gold"), *r2 = member_recs("M3", "gold");
	assert_int_equal(apply_ok(f, chunk("members", "s-9", 9, 0, 2, r1), &o), CA_CHUNK);
	assert_int_equal(apply_ok(f, chunk("members", "s-9", 9, 0, 2, r1), &o), CA_IGNORED);
	assert_int_equal(apply_ok(f, chunk("members", "s-9", 9, 1, 2, r2), &o), CA_SWAPPED);
	assert_int_equal(status_int(f, "members", "rows"), 3);
	free(r1);
	free(r2);

	/* a buffered delta that cannot apply ends the replay as a gap */
	r1 = member_recs("M1", "gold");
	assert_int_equal(apply_ok(f, chunk("members", "s-10", 20, 0, 2, r1), &o), CA_CHUNK);
	char *bad = delta("members", 20, 21, "{\"op\":\"upsert\",\"key\":\"M5\",\"data\":{\"member_id\":\"M5\",\"tier\":7}}");
	assert_int_equal(apply_ok(f, bad, &o), CA_BUFFERED);
	r2 = member_recs("M2", "gold");
	assert_int_equal(apply_ok(f, chunk("members", "s-10", 20, 1, 2, r2), &o), CA_SWAPPED);
	assert_int_equal(status_int(f, "members", "cursor"), 20);
	assert_int_equal(status_int(f, "members", "rows"), 2);
	sbuf req;
	int st = -1;
	sbuf__init(&req);
	cache__reset_requests(f->c);
	assert_int_equal(cache__next_request(f->c, platform__mono_ms() + 10 * TIMEOUT_MS, &req, &st), 1);
	assert_int_equal(st, ST_MEMBERS);
	assert_non_null(strstr(req.p, "\"reason\":\"gap\""));
	sbuf__free(&req);
	free(r1);
	free(r2);

	/* the data key is lost: members are dropped and fetched again */
	cache__close(f->c);
	f->c = NULL;
	char *k = tu_join(f->keys, "data.key");
	assert_int_equal(unlink(k), 0);
	free(k);
	open_cache(f);
	assert_int_equal(status_int(f, "members", "cursor"), 0);
	assert_int_equal(status_int(f, "members", "rows"), 0);
	sbuf__init(&req);
	assert_int_equal(cache__status(f->c, &req), SCRM_OK);
	assert_non_null(strstr(req.p, "\"data_key_new\":true"));
	sbuf__free(&req);
}

/* ---- the guide's reads (query.h) ------------------------------------ */

struct rules_seen {
	char list[200];
};

static void rule_seen(void *ctx, const char *then_sku, double confidence)
{
	struct rules_seen *r = ctx;
	size_t n = strlen(r->list);
	snprintf(r->list + n, sizeof(r->list) - n, "%s%s:%.2f", n ? " " : "", then_sku, confidence);
}

static int key_seen(void *ctx, const char *key, const char *signed_json)
{
	char *keys = ctx;
	size_t n = strlen(keys);
	assert_non_null(strstr(signed_json, "\"type\""));
	snprintf(keys + n, 200 - n, "%s%s", n ? " " : "", key);
	return SCRM_OK;
}

static int stop_at_first(void *ctx, const char *key, const char *signed_json)
{
	(void)ctx;
	(void)key;
	(void)signed_json;
	return SCRM_E_NOMEM;
}

static void guide_reads_through_the_query_api(void **state)
{
	fx *f = *state;
	assert_int_equal(apply_ok(f, delta("catalogue", 0, 1,
					   "{\"op\":\"upsert\",\"key\":\"A\",\"data\":{\"sku\":\"A\",\"name\":\"CAKESTAND\","
					   "\"category\":\"kitchen\"}}"),
				  NULL),
			 CA_APPLIED);
	assert_int_equal(apply_ok(f, delta("inventory", 0, 1,
					   "{\"op\":\"upsert\",\"key\":\"A\",\"data\":{\"sku\":\"A\",\"qty\":0,\"as_of_ms\":1}}"),
				  NULL),
			 CA_APPLIED);
	assert_int_equal(
		apply_ok(f, delta("rules", 0, 1,
				  "{\"op\":\"upsert\",\"key\":\"A>B\",\"data\":{\"if\":\"A\",\"then\":\"B\",\"support\":0.1,"
				  "\"confidence\":0.5,\"lift\":2}},"
				  "{\"op\":\"upsert\",\"key\":\"A>C\",\"data\":{\"if\":\"A\",\"then\":\"C\",\"support\":0.1,"
				  "\"confidence\":0.9,\"lift\":2}},"
				  "{\"op\":\"upsert\",\"key\":\"A>D\",\"data\":{\"if\":\"A\",\"then\":\"D\",\"support\":0.1,"
				  "\"confidence\":0.5,\"lift\":2}}"),
			 NULL),
		CA_APPLIED);
	assert_int_equal(apply_ok(f, delta("scripts", 0, 1,
					   "{\"op\":\"upsert\",\"key\":\"s2\",\"data\":{\"id\":\"s2\",\"tag\":\"vip\",\"text\":\"b\"}},"
					   "{\"op\":\"upsert\",\"key\":\"s1\",\"data\":{\"id\":\"s1\",\"tag\":\"vip\",\"text\":\"a\"}},"
					   "{\"op\":\"upsert\",\"key\":\"s3\",\"data\":{\"id\":\"s3\",\"stage\":\"lost\",\"text\":\"c\"}}"),
				  NULL),
			 CA_APPLIED);
	assert_int_equal(apply_ok(f, delta("recos", 0, 1,
					   "{\"op\":\"upsert\",\"key\":\"_store\",\"data\":{\"member_id\":\"_store\","
					   "\"items\":[{\"sku\":\"A\",\"score\":1}]}}"),
				  NULL),
			 CA_APPLIED);

	int began = cache__read_begin(f->c);
	assert_int_equal(began, 1);
	assert_int_equal(cache__read_begin(f->c), 0); /* nested: the outer one ends it */

	cJSON *doc = cache__catalogue_doc(f->c, "A");
	assert_string_equal(jstr(doc, "name"), "CAKESTAND");
	cJSON_Delete(doc);
	assert_null(cache__catalogue_doc(f->c, "Z"));
	char cat[65] = "";
	cache__category(f->c, "A", cat, sizeof(cat));
	assert_string_equal(cat, "kitchen");
	cat[0] = '\0';
	cache__category(f->c, "Z", cat, sizeof(cat));
	assert_string_equal(cat, "");
	int64_t qty = 99;
	assert_int_equal(cache__stock(f->c, "A", &qty), 1);
	assert_int_equal(qty, 0);
	assert_int_equal(cache__stock(f->c, "Z", &qty), 0);

	struct rules_seen r = {""};
	cache__rules_from(f->c, "A", 2, rule_seen, &r);
	assert_string_equal(r.list, "C:0.90 B:0.50"); /* confidence, then SKU; the limit */
	r.list[0] = '\0';
	cache__rules_from(f->c, "Z", 30, rule_seen, &r);
	assert_string_equal(r.list, "");

	doc = cache__script_doc(f->c, CACHE_SCRIPT_TAG, "vip");
	assert_string_equal(jstr(doc, "id"), "s1"); /* key order */
	cJSON_Delete(doc);
	doc = cache__script_doc(f->c, CACHE_SCRIPT_STAGE, "lost");
	assert_string_equal(jstr(doc, "id"), "s3");
	cJSON_Delete(doc);
	assert_null(cache__script_doc(f->c, CACHE_SCRIPT_STAGE, "vip"));
	doc = cache__recos_doc(f->c, "_store");
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(doc, "items")), 1);
	cJSON_Delete(doc);
	cache__read_end(f->c, began);

	/* Coupons: the member's, in key order; campaigns kept parsed until
	 * the stream moves; one record fetched with its signature checked. */
	char *c1 = coupon_payload("C2", "M1", 0), *c2 = coupon_payload("C1", "M1", 0);
	char *op1 = signed_op(c1), *op2 = signed_op(c2);
	char *camp = signed_op("{\"type\":\"campaign\",\"id\":\"XMAS10\",\"public\":true}");
	char *ops = tu_fmt("%s,%s,%s", op1, op2, camp);
	assert_int_equal(apply_ok(f, delta("coupons", 0, 1, ops), NULL), CA_APPLIED);
	free(ops);
	char keys[200] = "";
	assert_int_equal(cache__member_coupons(f->c, "M1", key_seen, keys), SCRM_OK);
	assert_string_equal(keys, "coupon:C1 coupon:C2");
	assert_int_equal(cache__member_coupons(f->c, "M1", stop_at_first, NULL), SCRM_E_NOMEM);
	const cache__campaigns *cps, *again;
	assert_int_equal(cache__campaigns_get(f->c, &cps), SCRM_OK);
	assert_int_equal(cps->n, 1);
	assert_string_equal(jstr(cps->v[0], "id"), "XMAS10");
	cJSON *first = cps->v[0];
	assert_int_equal(cache__campaigns_get(f->c, &again), SCRM_OK);
	assert_ptr_equal(again->v[0], first); /* not parsed again */
	char *text = NULL;
	assert_int_equal(cache__coupon_verified(f->c, "coupon:C1", &text), SCRM_OK);
	assert_string_equal(text, c2);
	free(text);
	assert_int_equal(cache__coupon_verified(f->c, "coupon:C9", &text), SCRM_E_NOT_FOUND);
	assert_null(text);

	/* Edited on disk after it was stored: refused by the signature. */
	sqlite3 *db;
	assert_int_equal(sqlite3_open(f->cache_db, &db), SQLITE_OK);
	sqlite3_busy_timeout(db, 2000);
	assert_int_equal(sqlite3_exec(db, "UPDATE coupons SET signed = replace(signed, 'M1', 'M2') WHERE key = 'coupon:C1'",
				      NULL, NULL, NULL),
			 SQLITE_OK);
	sqlite3_close(db);
	assert_int_equal(cache__coupon_verified(f->c, "coupon:C1", &text), SCRM_E_CRYPTO);
	assert_null(text);
	free(c1);
	free(c2);
	free(op1);
	free(op2);
	free(camp);
}

/* ---- the stream table (streams.def) --------------------------------- */

static int count_char(const char *s, char ch)
{
	int n = 0;
	for (; *s; s++)
		n += *s == ch;
	return n;
}

/* Does the column list `columns` declare `name`? */
static int has_column(const char *columns, const char *name)
{
	size_t n = strlen(name);
	for (const char *p = columns; (p = strstr(p, name)); p += n)
		if ((p == columns || (p - columns >= 2 && p[-2] == ',')) && p[n] == ' ')
			return 1;
	return 0;
}

/* A row added to streams.def is handled everywhere the cache walks the
 * streams: a name that parses back, an upsert that binds every column, an
 * erasure column and indexed columns that exist, a row in the status, a
 * bootstrap request in priority order, an empty snapshot swapped in, a
 * purge, and the snapshot-file header's list of streams. */
static void every_stream_is_handled_everywhere(void **state)
{
	fx *f = *state;
	assert_int_equal(cache__stream_parse("nope"), -1);
	assert_string_equal(cache__stream_name(ST_COUNT), "?");
	for (int st = 0; st < ST_COUNT; st++) {
		const struct stream_def *d = &cache__streams[st];
		const char *name = cache__stream_name(st);
		assert_non_null(d->name);
		assert_string_equal(name, d->name);
		assert_int_equal(cache__stream_parse(name), st);
		assert_non_null(d->columns);
		assert_non_null(d->insert);
		assert_non_null(d->bind);
		/* key + each column, bound as ?1..?n */
		int n = count_char(d->columns, ',') + 2;
		char last[16];
		snprintf(last, sizeof(last), "?%d)", n);
		assert_int_equal(count_char(d->insert, '?'), n);
		assert_non_null(strstr(d->insert, last));
		assert_int_equal(count_char(d->insert, ','), 2 * (n - 1));
		if (d->member && strcmp(d->member, "key") != 0)
			assert_true(has_column(d->columns, d->member));
		for (int i = 0; i < 2; i++)
			if (d->idx[i].suffix)
				assert_true(has_column(d->columns, d->idx[i].column));
	}

	/* A new cache asks for every stream, in streams.def order; each
	 * takes a snapshot (here empty) and shows in the status. */
	int64_t now = MONO_MS;
	for (int st = 0; st < ST_COUNT; st++) {
		const char *name = cache__stream_name(st);
		cache__outcome o;
		cJSON_Delete(expect_request(f, now, name, "bootstrap"));
		assert_int_equal(apply_ok(f, chunk(name, "s1", 7, 0, 1, ""), &o), CA_SWAPPED);
		assert_int_equal(o.stream, st);
		assert_int_equal(status_int(f, name, "cursor"), 7);
		assert_int_equal(status_int(f, name, "rows"), 0);
	}
	expect_no_request(f, now);
	for (int st = 0; st < ST_COUNT; st++) {
		assert_int_equal(cache__purge(f->c, st), SCRM_OK);
		assert_int_equal(status_int(f, cache__stream_name(st), "cursor"), 0);
	}
	for (int st = 0; st < ST_COUNT; st++) {
		cJSON_Delete(expect_request(f, now, cache__stream_name(st), "purged"));
		assert_int_equal(apply_ok(f, chunk(cache__stream_name(st), "s2", 8, 0, 1, ""), NULL), CA_SWAPPED);
	}
	expect_no_request(f, now);

	/* Every stream is named where a snapshot file names a wrong one. */
	char *path = tu_join(f->dir, "bad-stream.jsonl");
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	fputs("{\"type\":\"snapshot_file\",\"stream\":\"nope\",\"version\":1}\n", fp);
	fclose(fp);
	int64_t recs, refused;
	int which = -1;
	assert_int_equal(cache__load_file(f->c, path, NULL, NULL, &recs, &refused, &which), SCRM_E_INVALID);
	for (int st = 0; st < ST_COUNT; st++) {
		char word[40];
		snprintf(word, sizeof(word), " %s", cache__stream_name(st));
		assert_non_null(strstr(scrm_errmsg(), word));
	}
	free(path);
}

/* Each swap gives the view it replaced back to the file system (after the
 * daemon's idle ticks): after three full snapshots the file holds its live
 * data, not a snapshot's worth of free pages. */
static void swaps_give_their_pages_back(void **state)
{
	fx *f = *state;
	assert_int_equal(tu_sql_int(f->cache_db, "PRAGMA auto_vacuum"), 2); /* incremental */
	for (int64_t v = 1; v <= 3; v++) {
		load_many(f, 1500, 250, v);
		cache__checkpoint(f->c);
	}
	assert_int_equal(tu_sql_int(f->cache_db, "PRAGMA freelist_count"), 0);
	assert_true(has_member(f, "m-3-1499"));
	assert_false(has_member(f, "m-2-0"));
}

/* A cache.db made before incremental vacuum (auto_vacuum NONE) is
 * rewritten once, when a swap has freed a good part of it, and gives pages
 * back from then on. */
static void an_old_cache_file_is_converted_once(void **state)
{
	fx *f = *state;
	load_many(f, 1500, 250, 1);
	cache__close(f->c);
	f->c = NULL;
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(f->cache_db, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "PRAGMA auto_vacuum=NONE; VACUUM", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	assert_int_equal(tu_sql_int(f->cache_db, "PRAGMA auto_vacuum"), 0);
	open_cache(f);
	assert_int_equal(tu_sql_int(f->cache_db, "PRAGMA auto_vacuum"), 0); /* opening alone changes nothing */
	load_many(f, 1500, 250, 2);
	cache__checkpoint(f->c);
	assert_int_equal(tu_sql_int(f->cache_db, "PRAGMA auto_vacuum"), 2);
	assert_int_equal(tu_sql_int(f->cache_db, "PRAGMA freelist_count"), 0);
	assert_true(has_member(f, "m-2-0"));
	load_many(f, 1500, 250, 3);
	cache__checkpoint(f->c);
	assert_int_equal(tu_sql_int(f->cache_db, "PRAGMA freelist_count"), 0);
	assert_true(has_member(f, "m-3-0"));
}

int main(int argc, char **argv)
{
	tu_select(argc, argv);
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(snapshot_swapped_in_at_last_chunk),
		T(swaps_give_their_pages_back),
		T(an_old_cache_file_is_converted_once),
		T(chunks_out_of_order_are_ignored),
		T(deltas_follow_the_cursor),
		T(deltas_during_a_build_are_replayed_after_the_swap),
		T(killed_mid_snapshot_resumes),
		T(resync_priorities_and_timeouts),
		T(coupons_signed_and_refused_alone),
		T(qr_tokens),
		T(phone_lookup_and_no_personal_data_in_clear),
		T(phone_normalise_rules),
		T(erasure_reaches_cache_and_outbox),
		T(forget_callback_failure_aborts),
		T(forget_during_builds_stays_forgotten),
		T(erasure_reaches_the_files_bytes),
		T(erasure_zeroes_a_freelist_left_by_fast),
		T(malformed_messages_refused_whole),
		T(scan_honours_tracking_consent),
		T(load_snapshot_files),
		T(open_refusals_and_missing_keys),
		T(robustness_review_cases),
		T(schema_v1_gets_a_usable_rules_index),
		T(every_stream_is_handled_everywhere),
		T(guide_reads_through_the_query_api),
	};
	return cmocka_run_group_tests_name("cache", tests, group_setup, group_teardown);
}
