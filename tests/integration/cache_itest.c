/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Integration tests of the customer cache: real scrm-agent, real
 * scrm-central publishing snapshots from fixtures made by scrm-cachegen (the
 * real retail sample, or a synthetic store), mosquitto with TLS on loopback,
 * and libscrm look-ups in this process, as a guide's tablet would do them.
 *
 * Usage: cache_itest SCENARIO   (ctest runs one scenario per test)
 * Needs: SCRM_AGENT_BIN, SCRM_CENTRAL_BIN, SCRM_CTL_BIN, SCRM_CACHEGEN_BIN,
 * SCRM_DATA_DIR (and SCRM_TEST_EMULATOR for cross runs).
 */
#include "itest.h"

#include <scrm/scrm.h>

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEVICE "tab-01"

/* The cache scenarios' own paths and the fixture's first members. */
static struct {
	char keys[512]; /* dir/central-keys: central's key pair and the tenant key */
	char fx[512];   /* dir/fixtures: what scrm-cachegen made, central publishes */
	/* first four members of the fixture: id, card, phone */
	char m_id[4][32], m_card[4][32], m_phone[4][32];
} cx;

static int setup(struct itest *e)
{
	itest_path(cx.keys, sizeof(cx.keys), e->dir, "central-keys");
	itest_path(cx.fx, sizeof(cx.fx), e->dir, "fixtures");
	return 0;
}

static int copy_file(const char *from, const char *to)
{
	size_t n = 0;
	char *t = th_read_file(from, &n);
	CHECK(t, "read %s", from);
	int rc = th_write_file(to, t);
	free(t);
	CHECK(rc == 0 && chmod(to, 0600) == 0, "write %s", to); /* keys: the agent's user only */
	return 0;
}

/* Central's key pair and the tenant key; the store gets what a provisioned
 * device holds: the tenant key and central's public key. */
static int make_keys(struct itest *e)
{
	char kd[600], a[700], b[700];
	const char *argv[] = {th_bin("SCRM_CACHEGEN_BIN"), "keys", cx.keys, "--seed", "7", NULL};
	CHECK(th_run_target(argv, NULL, 120000 * itest_scale) == 0, "scrm-cachegen keys");
	snprintf(kd, sizeof(kd), "%s/private/keys", e->store);
	CHECK(th_run((const char *const[]){"mkdir", "-p", "-m", "0700", kd, NULL}, NULL, 5000) == 0, "mkdir keys");
	snprintf(a, sizeof(a), "%s/tenant.key", cx.keys);
	snprintf(b, sizeof(b), "%s/tenant.key", kd);
	if (copy_file(a, b))
		return -1;
	snprintf(a, sizeof(a), "%s/central.pub", cx.keys);
	snprintf(b, sizeof(b), "%s/central.pub", kd);
	return copy_file(a, b);
}

static int read_index(void)
{
	char p[600];
	snprintf(p, sizeof(p), "%s/members_index.tsv", cx.fx);
	char *t = th_read_file(p, NULL), *line = t;
	CHECK(t, "no %s", p);
	for (int i = 0; i < 4 && line && *line; i++) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		CHECK(sscanf(line, "%31[^\t]\t%31[^\t]\t%31s", cx.m_id[i], cx.m_card[i], cx.m_phone[i]) == 3,
		      "members_index.tsv line %d: %s", i + 1, line);
		line = nl ? nl + 1 : NULL;
	}
	free(t);
	return 0;
}

static int fixtures_retail(struct itest *e)
{
	char csv[600], now[32];
	const char *data = getenv("SCRM_DATA_DIR");
	CHECK(data, "SCRM_DATA_DIR not set");
	snprintf(csv, sizeof(csv), "%s/online_retail_sample.csv", data);
	snprintf(now, sizeof(now), "%" PRId64, th_wall_ms());
	if (make_keys(e))
		return -1;
	const char *argv[] = {th_bin("SCRM_CACHEGEN_BIN"), "retail", "--csv", csv, "--keys", cx.keys, "--tenant",
			      "acme", "--out", cx.fx, "--now", now, NULL};
	CHECK(th_run_target(argv, NULL, 300000 * itest_scale) == 0, "scrm-cachegen retail");
	return read_index();
}

static int fixtures_synth(struct itest *e, const char *members)
{
	if (make_keys(e))
		return -1;
	const char *argv[] = {th_bin("SCRM_CACHEGEN_BIN"), "synth", "--members", members, "--skus", "300", "--rules",
			      "600", "--keys", cx.keys, "--out", cx.fx, "--coupon-every", "0", NULL};
	CHECK(th_run_target(argv, NULL, 300000 * itest_scale) == 0, "scrm-cachegen synth");
	return read_index();
}

/* Records in a snapshot file: its lines minus the header. */
static long file_records(const char *stream)
{
	char p[600];
	long n = 0;
	snprintf(p, sizeof(p), "%s/%s.jsonl", cx.fx, stream);
	char *t = th_read_file(p, NULL);
	if (!t)
		return -1;
	for (char *c = t; *c; c++)
		n += *c == '\n';
	free(t);
	return n - 1;
}

/* Central publishes a new version of a stream: rewrite the header. */
static int set_file_version(const char *stream, int version)
{
	char p[600], hdr[200];
	size_t n = 0;
	snprintf(p, sizeof(p), "%s/%s.jsonl", cx.fx, stream);
	char *t = th_read_file(p, &n), *nl;
	CHECK(t && (nl = strchr(t, '\n')), "read %s", p);
	snprintf(hdr, sizeof(hdr), "{\"v\":1,\"type\":\"snapshot_file\",\"stream\":\"%s\",\"version\":%d}", stream, version);
	FILE *f = fopen(p, "w");
	CHECK(f, "rewrite %s", p);
	fputs(hdr, f);
	fputs(nl, f);
	fclose(f);
	free(t);
	return 0;
}

/* extra_cache: more "cache" members, each after ", ". */
static int write_agent_cfg(struct itest *e, const char *extra_cache)
{
	char cache[400];
	snprintf(cache, sizeof(cache), "\"cache\": {\"phone_country_code\": \"44\", \"snapshot_timeout_ms\": %d%s}",
		 5000 * itest_scale, extra_cache ? extra_cache : "");
	return itest_agent_cfg(e, &(struct itest_agent){.device_id = DEVICE, .ack_timeout_ms = 5000 * itest_scale,
							 .sections = cache, .log_level = "info"});
}

/* Central publishing the fixtures in chunks of chunk_records. */
static int start_central_ex(struct itest *e, const char *chunk_records, const char *delay_ms, const char *verdict_delay_ms)
{
	const char *const cache[] = {"--cache-dir", cx.fx, "--chunk-records", chunk_records, "--snapshot-delay-ms",
				     delay_ms, "--verdict-delay-ms", verdict_delay_ms ? verdict_delay_ms : "0", NULL};
	return itest_start_central(e, cache);
}

static int start_central(struct itest *e, const char *chunk_records, const char *delay_ms)
{
	return start_central_ex(e, chunk_records, delay_ms, NULL);
}

static int push(struct itest *e, const char *delta)
{
	char p[600], log[600];
	static int k;
	snprintf(p, sizeof(p), "%s/delta-%d.json", e->dir, ++k);
	snprintf(log, sizeof(log), "%s/push-%d.log", e->dir, k);
	CHECK(th_write_file(p, delta) == 0, "write delta");
	const char *argv[] = {th_bin("SCRM_CENTRAL_BIN"), "push", "--broker", e->uri, "--ca", e->ca, "--tenant", "acme",
			      "--store", "s1", p, NULL};
	int rc = th_run_target(argv, log, 60000 * itest_scale);
	if (rc != 0)
		th_dump_log(log, 2000);
	CHECK(rc == 0, "scrm-central push exited %d", rc);
	return 0;
}

/* The member's card through libscrm, as the tablet app reads it. */
static int card(struct itest *e, scrm_member_key by, const char *value, char **json)
{
	scrm_cache *c = NULL;
	*json = NULL;
	int rc = scrm_cache_open(e->store, NULL, &c);
	if (rc != SCRM_OK)
		return rc;
	rc = scrm_member_get(c, by, value, json);
	scrm_cache_close(c);
	return rc;
}

__attribute__((noinline)) static char *status_json(struct itest *e)
{
	scrm_cache *c = NULL;
	char *j = NULL;
	if (scrm_cache_open(e->store, NULL, &c) == SCRM_OK)
		scrm_cache_status(c, &j);
	scrm_cache_close(c);
	return j;
}

/* Cursor and rows of a stream from the cache status; -1 if unknown. */
static long long num_after(const char *s, const char *key)
{
	const char *p = strstr(s, key);
	long long v = -1;
	if (p)
		sscanf(p + strlen(key), "%lld", &v);
	return v;
}

static int stream_state(struct itest *e, const char *stream, long long *cursor, long long *rows, int *staging,
			long long *chunks_done)
{
	char needle[64], seg[1024];
	char *j = status_json(e);
	*cursor = *rows = -1;
	if (staging)
		*staging = 0;
	if (!j)
		return -1;
	snprintf(needle, sizeof(needle), "{\"stream\":\"%s\"", stream);
	const char *p = strstr(j, needle);
	if (p) {
		/* this stream's object only: up to the next stream's */
		size_t n = strcspn(p + 1, "{");
		const char *q = p + 1 + n;
		while (*q == '{' && strncmp(q, "{\"stream\":", 10) != 0)
			q += 1 + strcspn(q + 1, "{");
		n = (size_t)(q - p) < sizeof(seg) - 1 ? (size_t)(q - p) : sizeof(seg) - 1;
		memcpy(seg, p, n);
		seg[n] = '\0';
		*cursor = num_after(seg, "\"cursor\":");
		*rows = num_after(seg, "\"rows\":");
		if (staging)
			*staging = strstr(seg, "\"snapshot\":") != NULL;
		if (chunks_done)
			*chunks_done = num_after(seg, "\"chunks_done\":");
	}
	scrm_free(j);
	return 0;
}

static int wait_cursor(struct itest *e, const char *stream, long long want, int timeout_s)
{
	long long cur = -1, rows = -1;
	for (int i = 0; i < timeout_s * 10 * itest_scale; i++) {
		stream_state(e, stream, &cur, &rows, NULL, NULL);
		if (cur == want)
			return 0;
		th_sleep_ms(100);
	}
	CHECK(0, "stream %s: cursor %lld, expected %lld", stream, cur, want);
	return -1;
}

/* Pushes the members delta base -> base + 1 that deletes member_id. */
static int push_member_delete(struct itest *e, int base, const char *member_id)
{
	char delta[256];
	int n = snprintf(delta, sizeof(delta),
			 "{\"v\":1,\"type\":\"delta\",\"stream\":\"members\",\"base\":%d,\"version\":%d,"
			 "\"ops\":[{\"op\":\"delete\",\"key\":\"%s\"}]}",
			 base, base + 1, member_id);
	CHECK(n > 0 && (size_t)n < sizeof(delta), "delta for %s too long", member_id);
	return push(e, delta);
}

static const char *const streams[] = {"members", "coupons", "catalogue", "inventory", "scripts", "recos", "rules"};

static int wait_all_streams(struct itest *e, int timeout_s)
{
	for (size_t i = 0; i < 7; i++) {
		long long cur, rows;
		if (wait_cursor(e, streams[i], 1, timeout_s))
			return -1;
		stream_state(e, streams[i], &cur, &rows, NULL, NULL);
		CHECK(rows == file_records(streams[i]), "stream %s: %lld rows, the fixture has %ld", streams[i], rows,
		      file_records(streams[i]));
	}
	return 0;
}

/* Every byte of every file in the store: no plaintext phone anywhere. */
static int scan_store_for_phones(struct itest *e, int *scanned)
{
	char p[600], *idx;
	const char *files[] = {"private/cache.db", "private/cache.db-wal", "private/cache.db-shm", "outbox.db", "outbox.db-wal", "outbox.db-shm"};
	snprintf(p, sizeof(p), "%s/members_index.tsv", cx.fx);
	CHECK((idx = th_read_file(p, NULL)), "index");
	*scanned = 0;
	for (size_t f = 0; f < sizeof(files) / sizeof(files[0]); f++) {
		size_t n = 0;
		snprintf(p, sizeof(p), "%s/%s", e->store, files[f]);
		char *bytes = th_read_file(p, &n);
		if (!bytes)
			continue;
		char *line = idx;
		while (line && *line) {
			char id[32], cardno[32], phone[32];
			char *nl = strchr(line, '\n');
			if (sscanf(line, "%31[^\t]\t%31[^\t]\t%31s", id, cardno, phone) == 3) {
				CHECK(!memmem(bytes, n, phone, strlen(phone)), "plaintext phone of member %s found in %s", id,
				      files[f]);
				(*scanned)++;
			}
			line = nl ? nl + 1 : NULL;
		}
		free(bytes);
	}
	free(idx);
	return 0;
}

static int64_t store_count(struct itest *e, const char *sql, const char *arg)
{
	char p[600];
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	int64_t n = -1;
	snprintf(p, sizeof(p), "%s/outbox.db", e->store);
	if (sqlite3_open_v2(p, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK &&
	    sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
		if (arg)
			sqlite3_bind_text(st, 1, arg, -1, SQLITE_STATIC);
		if (sqlite3_step(st) == SQLITE_ROW)
			n = sqlite3_column_int64(st, 0);
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	return n;
}

/* ---- scenarios ---- */

/* Bootstrap by snapshots through mosquitto/TLS, look-ups by id, card, phone;
 * a delta; a gap that makes the agent ask for (and get) a resync. */
static int t_cache_sync(struct itest *e)
{
	char *j = NULL, delta[2048], phone[40];
	int scanned = 0;
	if (fixtures_retail(e) || write_agent_cfg(e, NULL))
		return -1;
	e->broker = th_broker_start(e->dir, e->port, "server", 0);
	CHECK(e->broker, "broker");
	if (start_central(e, "200", "0") || itest_start_agent(e) || wait_all_streams(e, 120))
		return -1;
	CHECK(itest_central_int(e, "SELECT count(*) FROM resync_requests WHERE reason = 'bootstrap'") == 7,
	      "expected 7 bootstrap requests, central saw %" PRId64,
	      itest_central_int(e, "SELECT count(*) FROM resync_requests WHERE reason = 'bootstrap'"));

	CHECK(card(e, SCRM_MEMBER_ID, cx.m_id[0], &j) == SCRM_OK, "member %s by id: %s", cx.m_id[0], scrm_errmsg());
	CHECK(strstr(j, "\"personal\":{\"name\":"), "card without decrypted name: %.300s", j);
	CHECK(!strstr(j, cx.m_phone[0]), "card shows the whole phone number");
	scrm_free(j);
	CHECK(card(e, SCRM_MEMBER_CARD, cx.m_card[0], &j) == SCRM_OK && strstr(j, cx.m_id[0]), "by card");
	scrm_free(j);
	snprintf(phone, sizeof(phone), "+%s", cx.m_phone[1]);
	CHECK(card(e, SCRM_MEMBER_PHONE, phone, &j) == SCRM_OK && strstr(j, cx.m_id[1]), "by phone %s: %s", phone,
	      scrm_errmsg());
	scrm_free(j);
	CHECK(card(e, SCRM_MEMBER_PHONE, "+999999999", &j) == SCRM_E_NOT_FOUND, "unknown phone found?");
	if (scan_store_for_phones(e, &scanned))
		return -1;
	fprintf(stderr, "no plaintext phone in the store files (%d phone x file checks)\n", scanned);

	/* a delta: the member becomes platinum */
	snprintf(delta, sizeof(delta),
		 "{\"v\":1,\"type\":\"delta\",\"stream\":\"members\",\"base\":1,\"version\":2,\"ts\":%" PRId64 ","
		 "\"ops\":[{\"op\":\"upsert\",\"key\":\"%s\",\"data\":{\"member_id\":\"%s\",\"tier\":\"platinum\","
		 "\"pii\":{\"name\":\"Delta Person\",\"phone\":\"%s\"}}}]}",
		 th_wall_ms(), cx.m_id[0], cx.m_id[0], cx.m_phone[0]);
	if (push(e, delta) || wait_cursor(e, "members", 2, 60))
		return -1;
	CHECK(card(e, SCRM_MEMBER_ID, cx.m_id[0], &j) == SCRM_OK && strstr(j, "\"tier\":\"platinum\"") &&
		      strstr(j, "Delta Person"),
	      "delta not visible: %.300s", j ? j : "");
	scrm_free(j);

	/* central moved on to version 7 and this store missed 3..6 */
	if (set_file_version("members", 7))
		return -1;
	if (push_member_delete(e, 5, cx.m_id[1]))
		return -1;
	CHECK(th_wait_log(e->agent_log, "msg=\"cache gap; asking for a resync\" stream=members cursor=2", 30000 * itest_scale) == 0,
	      "no gap detected");
	if (wait_cursor(e, "members", 7, 120))
		return -1;
	CHECK(itest_central_int(e, "SELECT count(*) FROM resync_requests WHERE stream = 'members' AND reason = 'gap'") >= 1,
	      "central saw no gap resync request");
	/* the snapshot replaced the delta's view; the gap delta was not applied */
	CHECK(card(e, SCRM_MEMBER_ID, cx.m_id[0], &j) == SCRM_OK && !strstr(j, "Delta Person"), "old delta still there");
	scrm_free(j);
	CHECK(card(e, SCRM_MEMBER_ID, cx.m_id[1], &j) == SCRM_OK, "gap delta's delete was applied");
	scrm_free(j);
	/* and deltas follow again */
	if (push_member_delete(e, 7, cx.m_id[1]) || wait_cursor(e, "members", 8, 60))
		return -1;
	CHECK(card(e, SCRM_MEMBER_ID, cx.m_id[1], &j) == SCRM_E_NOT_FOUND, "delete not applied");
	return 0;
}

/* kill -9 of the agent in the middle of a snapshot: the old view stays whole,
 * and after the restart the snapshot resumes (or restarts) and swaps in. */
static int t_cache_kill9(struct itest *e)
{
	long long cur, rows, done = 0;
	int staging = 0;
	char *j = NULL;
	const char *members = getenv("SCRM_TEST_EMULATOR") ? "2000" : "5000";
	if (fixtures_synth(e, members) || write_agent_cfg(e, NULL))
		return -1;
	long n = file_records("members");
	e->broker = th_broker_start(e->dir, e->port, "server", 0);
	CHECK(e->broker, "broker");
	if (start_central(e, "50", "60") || itest_start_agent(e) || wait_all_streams(e, 300))
		return -1;
	if (set_file_version("members", 2) ||
	    push(e, "{\"v\":1,\"type\":\"delta\",\"stream\":\"members\",\"base\":5,\"version\":6,"
		    "\"ops\":[{\"op\":\"delete\",\"key\":\"nobody\"}]}"))
		return -1;
	for (int i = 0; i < 600 * itest_scale; i++) {
		stream_state(e, "members", &cur, &rows, &staging, &done);
		if (staging && done >= 4)
			break;
		th_sleep_ms(50);
	}
	CHECK(staging && done >= 4, "the second snapshot did not start (staging=%d chunks=%lld)", staging, done);
	th_kill(e->agent, SIGKILL);
	th_wait(e->agent, 10000, NULL);
	e->agent = -1;
	fprintf(stderr, "agent killed with %lld/%ld chunks of the new snapshot staged\n", done, (n + 49) / 50);

	stream_state(e, "members", &cur, &rows, &staging, &done);
	CHECK(cur == 1 && rows == n && staging, "after kill -9: cursor %lld rows %lld staging %d, expected the old view (1, %ld)",
	      cur, rows, staging, n);
	CHECK(card(e, SCRM_MEMBER_ID, cx.m_id[0], &j) == SCRM_OK, "old view unreadable after the crash");
	scrm_free(j);

	if (itest_start_agent(e) || wait_cursor(e, "members", 2, 300))
		return -1;
	stream_state(e, "members", &cur, &rows, &staging, NULL);
	CHECK(rows == n && !staging, "after resume: rows %lld (want %ld), staging %d", rows, n, staging);
	int64_t resumes = itest_central_int(e, "SELECT count(*) FROM resync_requests WHERE reason = 'resume' AND from_chunk > 0");
	fprintf(stderr, "resume requests with from_chunk > 0: %" PRId64 "\n", resumes);
	CHECK(card(e, SCRM_MEMBER_ID, cx.m_id[1], &j) == SCRM_OK, "member missing after the swap");
	scrm_free(j);
	return 0;
}

static int record_purchase(scrm_store *st, const char *order, const char *member, int64_t total)
{
	scrm_line l = {.sku = "85123A", .qty = 1, .unit_price = total, .discount = 0};
	scrm_purchase p = {.order_id = order, .lines = &l, .n_lines = 1, .total = total, .currency = "GBP",
			   .payment = "card", .member_id = member};
	CHECK(scrm_record_purchase(st, &p, NULL) == SCRM_OK, "purchase: %s", scrm_errmsg());
	return 0;
}

/* The store's databases, read while the agent runs: where the member's id
 * or card number still is ("" if nowhere). Retail member ids appear in the
 * fixture only in the member's own records (profile, card, its coupons). */
/* The damaged copies a store sets aside: the live files as they are now,
 * under the names and in the places outbox.c (the store's quarantine/) and
 * cache.c (the private directory's: personal data) give them. */
static const char *const quarantined[] = {"private/quarantine/cache-1000.db", "private/quarantine/cache-1000.db-wal",
					  "quarantine/outbox-1000.db", "quarantine/outbox-1000.db-wal"};

static int plant_quarantine(struct itest *e)
{
	static const char *const live[] = {"private/cache.db", "private/cache.db-wal", "outbox.db", "outbox.db-wal"};
	char q[600];
	snprintf(q, sizeof(q), "%s/quarantine", e->store);
	CHECK(mkdir(q, 0700) == 0 || errno == EEXIST, "mkdir %s", q);
	snprintf(q, sizeof(q), "%s/private/quarantine", e->store);
	CHECK(mkdir(q, 0700) == 0 || errno == EEXIST, "mkdir %s", q);
	for (size_t i = 0; i < sizeof(live) / sizeof(live[0]); i++) {
		char src[600], dst[600];
		size_t n = 0;
		snprintf(src, sizeof(src), "%s/%s", e->store, live[i]);
		snprintf(dst, sizeof(dst), "%s/%s", e->store, quarantined[i]);
		char *bytes = th_read_file(src, &n);
		if (!bytes)
			continue; /* no -wal right now */
		FILE *f = fopen(dst, "wb");
		int ok = f && fwrite(bytes, 1, n, f) == n;
		if (f)
			ok = fclose(f) == 0 && ok;
		free(bytes);
		CHECK(ok, "copy %s", dst);
	}
	return 0;
}

static int member_bytes(struct itest *e, const char *id, const char *cardno, char *where, size_t cap)
{
	static const char *const files[] = {"private/cache.db", "private/cache.db-wal", "private/cache.db-shm",
					    "outbox.db", "outbox.db-wal", "outbox.db-shm",
					    "private/quarantine/cache-1000.db", "private/quarantine/cache-1000.db-wal",
					    "quarantine/outbox-1000.db", "quarantine/outbox-1000.db-wal"};
	where[0] = '\0';
	for (size_t f = 0; f < sizeof(files) / sizeof(files[0]); f++) {
		char p[600];
		size_t n = 0;
		snprintf(p, sizeof(p), "%s/%s", e->store, files[f]);
		char *bytes = th_read_file(p, &n);
		if (!bytes)
			continue;
		int has_id = memmem(bytes, n, id, strlen(id)) != NULL;
		int has_card = memmem(bytes, n, cardno, strlen(cardno)) != NULL;
		free(bytes);
		if (has_id || has_card) {
			size_t used = strlen(where);
			snprintf(where + used, cap - used, "%s%s (%s)", used ? ", " : "", files[f],
				 has_card ? "card number" : "member id");
		}
	}
	return where[0] != '\0';
}

/* The agent finished an erasure's scrub (cache status, read through
 * libscrm): cache.db-wal is truncated. */
static int wait_erasure_done(struct itest *e, int timeout_s)
{
	for (int i = 0; i < timeout_s * 10 * itest_scale; i++) {
		char *j = status_json(e);
		int done = j && strstr(j, "\"erasure_pending\":false");
		scrm_free(j);
		if (done)
			return 0;
		th_sleep_ms(100);
	}
	CHECK(0, "the agent still reports erasure_pending after %d s", timeout_s);
	return -1;
}

/* `scrmctl fleet cmd s1/tab-01 member.forget`: the reply (the last line of
 * the console's output that is a JSON object), malloc'd, or NULL. */
static char *forget_command(struct itest *e, const char *member)
{
	char args[128], timeout[32], out[600];
	snprintf(args, sizeof(args), "{\"member_id\":\"%s\"}", member);
	snprintf(timeout, sizeof(timeout), "%d", 20000 * itest_scale);
	snprintf(out, sizeof(out), "%s/ctl.out", e->dir);
	const char *argv[] = {th_bin("SCRM_FLEET_BIN"), "--broker", e->uri, "--ca", e->ca, "--tenant", "acme",
			      "cmd", "s1/" DEVICE, "member.forget", args, "--timeout-ms", timeout, "--json", NULL};
	unlink(out);
	th_run_target(argv, out, 60000 * itest_scale);
	char *text = th_read_file(out, NULL), *reply = NULL;
	for (char *line = text, *next; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		if (line[0] == '{') {
			free(reply);
			reply = strdup(line);
		}
		if (!next)
			break;
	}
	if (!reply)
		th_dump_log(out, 2000);
	free(text);
	return reply;
}

/* member.forget while a till keeps its connection open: the reply comes
 * once the bytes are gone. Then with a reader holding a snapshot. */
static int erasure_commands(struct itest *e, scrm_cache *till)
{
	char where[200], *j = NULL;
	char *reply = forget_command(e, cx.m_id[2]);
	CHECK(reply && strstr(reply, "\"ok\":true") && strstr(reply, "\"forgotten\":true"), "member.forget: %s",
	      reply ? reply : "no reply");
	free(reply);
	CHECK(!member_bytes(e, cx.m_id[2], cx.m_card[2], where, sizeof(where)),
	      "member %s still on disk when member.forget replied ok: %s", cx.m_id[2], where);
	CHECK(scrm_member_get(till, SCRM_MEMBER_CARD, cx.m_card[2], &j) == SCRM_E_NOT_FOUND, "the till still finds %s",
	      cx.m_id[2]);

	/* A reader in the middle of a read (a guide tablet's long query). */
	char p[600];
	sqlite3 *reader = NULL;
	snprintf(p, sizeof(p), "%s/private/cache.db", e->store);
	CHECK(sqlite3_open_v2(p, &reader, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
		      sqlite3_exec(reader, "BEGIN; SELECT count(*) FROM members", NULL, NULL, NULL) == SQLITE_OK,
	      "reader");
	int64_t t0 = th_now_ms();
	reply = forget_command(e, cx.m_id[3]);
	int64_t waited = th_now_ms() - t0;
	int left = member_bytes(e, cx.m_id[3], cx.m_card[3], where, sizeof(where));
	char *st = status_json(e);
	int pending = st && strstr(st, "\"erasure_pending\":true");
	scrm_free(st);
	sqlite3_exec(reader, "COMMIT", NULL, NULL, NULL);
	sqlite3_close(reader);
	fprintf(stderr, "member.forget with a reader holding a snapshot: replied after %.1f s: %s; left on disk: %s\n",
		(double)waited / 1000.0, reply ? reply : "no reply", left ? where : "nothing");
	CHECK(reply && strstr(reply, "\"ok\":false") && strstr(reply, "readers kept cache.db-wal busy"),
	      "member.forget must not report done while the WAL cannot be truncated: %s", reply ? reply : "no reply");
	free(reply);
	CHECK(pending, "the cache status does not show the pending erasure");
	CHECK(card(e, SCRM_MEMBER_ID, cx.m_id[3], &j) == SCRM_E_NOT_FOUND, "member %s still found", cx.m_id[3]);
	/* Sent again once the reader has let go: done. */
	reply = forget_command(e, cx.m_id[3]);
	CHECK(reply && strstr(reply, "\"ok\":true"), "member.forget again: %s", reply ? reply : "no reply");
	free(reply);
	CHECK(!member_bytes(e, cx.m_id[3], cx.m_card[3], where, sizeof(where)),
	      "member %s still on disk when member.forget replied ok: %s", cx.m_id[3], where);
	return wait_erasure_done(e, 1);
}

/* Seeding by file, offline purchases on the card at once, then a "forget"
 * from central: member gone, pending events redacted before they leave.
 * Then member.forget commands. After each erasure the member's id and card
 * number are gone from cache.db, outbox.db and their WALs at once — read
 * while the agent runs (a power cut must not find them), with a till's
 * connection open; a reader holding a snapshot makes the command fail
 * honestly, and sending it again once the reader has let go finishes it. */

static int t_cache_erasure(struct itest *e)
{
	char *j = NULL, delta[512], files[7][600];
	scrm_store *st = NULL;
	if (fixtures_retail(e) || write_agent_cfg(e, NULL))
		return -1;
	{
		const char *argv[12] = {th_bin("SCRM_CTL_BIN"), "--store", e->store, "--device", DEVICE, "cache", "load"};
		for (int i = 0; i < 4; i++) {
			snprintf(files[i], sizeof(files[i]), "%s/%s.jsonl", cx.fx, streams[i]);
			argv[7 + i] = files[i];
		}
		char log[600];
		snprintf(log, sizeof(log), "%s/load.log", e->dir);
		int rc = th_run_target(argv, log, 300000 * itest_scale);
		if (rc)
			th_dump_log(log, 2000);
		CHECK(rc == 0, "scrmctl cache load exited %d", rc);
	}
	CHECK(scrm_store_open(e->store, &(scrm_store_options){.device_id = DEVICE}, &st) == SCRM_OK, "store: %s",
	      scrm_errmsg());
	int rc = record_purchase(st, "E-1", cx.m_id[0], 1250) || record_purchase(st, "E-2", cx.m_id[0], 830) ||
		 record_purchase(st, "E-3", cx.m_id[1], 400) || record_purchase(st, "E-4", cx.m_id[0], 99);
	scrm_store_close(st);
	if (rc)
		return -1;
	CHECK(card(e, SCRM_MEMBER_ID, cx.m_id[0], &j) == SCRM_OK && strstr(j, "\"orders\":3,\"returns\":0,\"spend\":2179"),
	      "offline purchases not on the card: %.600s", j ? j : "");
	scrm_free(j);

	char where[400];
	/* Damaged copies set aside earlier hold the same people (finding 4c). */
	if (plant_quarantine(e))
		return -1;
	for (int i = 0; i < 4; i++)
		CHECK(member_bytes(e, cx.m_id[i], cx.m_card[i], where, sizeof(where)) &&
			      strstr(where, "cache.db (card number)") && strstr(where, "quarantine/cache-1000.db"),
		      "the scan cannot see member %s before the erasure (found: %s)", cx.m_id[i], where);
	CHECK(member_bytes(e, cx.m_id[0], "no card", where, sizeof(where)) && strstr(where, "quarantine/outbox-1000.db"),
	      "the quarantined outbox does not name member %s before the erasure (found: %s)", cx.m_id[0], where);

	e->broker = th_broker_start(e->dir, e->port, "server", 0);
	CHECK(e->broker, "broker");
	if (itest_start_agent(e))
		return -1;
	CHECK(th_wait_log(e->agent_log, "msg=\"connected\"", 30000 * itest_scale) == 0, "agent did not connect");
	/* A till that has just looked a member up keeps its connection open. */
	scrm_cache *till = NULL;
	CHECK(scrm_cache_open(e->store, NULL, &till) == SCRM_OK, "till: %s", scrm_errmsg());
	rc = scrm_member_get(till, SCRM_MEMBER_CARD, cx.m_card[2], &j);
	scrm_free(j);
	j = NULL;
	if (rc != SCRM_OK)
		scrm_cache_close(till);
	CHECK(rc == SCRM_OK, "till look-up by card");
	snprintf(delta, sizeof(delta),
		 "{\"v\":1,\"type\":\"delta\",\"stream\":\"members\",\"base\":1,\"version\":2,"
		 "\"ops\":[{\"op\":\"forget\",\"key\":\"%s\"}]}",
		 cx.m_id[0]);
	rc = push(e, delta) || wait_cursor(e, "members", 2, 60) || wait_erasure_done(e, 30);
	if (rc == 0 && member_bytes(e, cx.m_id[0], cx.m_card[0], where, sizeof(where))) {
		scrm_cache_close(till);
		CHECK(0, "forgotten member %s still on disk after the delta was applied: %s", cx.m_id[0], where);
	}
	rc = rc || erasure_commands(e, till);
	scrm_cache_close(till);
	if (rc)
		return -1;

	CHECK(th_wait_log(e->agent_log, "pending_events_redacted=3", 100) == 0, "agent did not report 3 redactions");
	CHECK(card(e, SCRM_MEMBER_ID, cx.m_id[0], &j) == SCRM_E_NOT_FOUND, "forgotten member still in the cache");
	char like[64];
	snprintf(like, sizeof(like), "%%\"member_id\":\"%s\"%%", cx.m_id[0]);
	CHECK(store_count(e, "SELECT count(*) FROM outbox WHERE body LIKE ?1", like) == 0, "outbox still names the member");
	CHECK(store_count(e, "SELECT count(*) FROM outbox WHERE json_extract(body, '$.redacted') = 'erasure'", NULL) == 3,
	      "expected 3 redacted events");
	CHECK(store_count(e, "SELECT count(*) FROM member_activity WHERE member_id = ?1", cx.m_id[0]) == 0,
	      "local history kept");
	CHECK(card(e, SCRM_MEMBER_ID, cx.m_id[1], &j) == SCRM_OK && strstr(j, "\"orders\":1"), "other member hurt");
	scrm_free(j);
	/* The quarantined outbox stays for the store's IT (other people's
	 * sales in it untouched); the quarantined cache is gone. */
	CHECK(member_bytes(e, cx.m_id[1], "no card", where, sizeof(where)) && strstr(where, "quarantine/outbox-1000.db"),
	      "the quarantined outbox lost member %s's sale (found: %s)", cx.m_id[1], where);
	{
		char q[600];
		snprintf(q, sizeof(q), "%s/private/quarantine/cache-1000.db", e->store);
		CHECK(access(q, F_OK) != 0, "the quarantined cache copy is still there");
	}

	/* Central now comes up: everything arrives, nothing names the member. */
	if (start_central(e, "1000", "0"))
		return -1;
	for (int i = 0; i < 600 * itest_scale && itest_central_int(e, "SELECT count(*) FROM events") < 4; i++)
		th_sleep_ms(100);
	CHECK(itest_central_int(e, "SELECT count(*) FROM events") == 4, "central has %" PRId64 " events",
	      itest_central_int(e, "SELECT count(*) FROM events"));
	char sql[200];
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM events WHERE body LIKE '%%\"member_id\":\"%s\"%%'", cx.m_id[0]);
	CHECK(itest_central_int(e, sql) == 0, "central received the forgotten member's id");
	return 0;
}

/* Malformed, oversize and tampered input: refused with a log line naming
 * the field, the cache unchanged, and the next good delta applies. */
static int t_cache_bad_delta(struct itest *e)
{
	char *before = NULL, *after = NULL, *big, line[20000], delta[24000];
	if (fixtures_retail(e) || write_agent_cfg(e, ", \"max_message_bytes\": 65536"))
		return -1;
	{
		char f0[600], f1[600], log[600];
		snprintf(f0, sizeof(f0), "%s/members.jsonl", cx.fx);
		snprintf(f1, sizeof(f1), "%s/coupons.jsonl", cx.fx);
		snprintf(log, sizeof(log), "%s/load.log", e->dir);
		const char *argv[] = {th_bin("SCRM_CTL_BIN"), "--store", e->store, "--device", DEVICE, "cache", "load", f0, f1, NULL};
		CHECK(th_run_target(argv, log, 300000 * itest_scale) == 0, "cache load");
	}
	e->broker = th_broker_start(e->dir, e->port, "server", 0);
	CHECK(e->broker, "broker");
	if (itest_start_agent(e))
		return -1;
	CHECK(th_wait_log(e->agent_log, "msg=\"connected\"", 30000 * itest_scale) == 0, "agent did not connect");
	CHECK(card(e, SCRM_MEMBER_ID, cx.m_id[0], &before) == SCRM_OK, "card");

	/* a wrong type */
	snprintf(delta, sizeof(delta),
		 "{\"v\":1,\"type\":\"delta\",\"stream\":\"members\",\"base\":1,\"version\":2,"
		 "\"ops\":[{\"op\":\"delete\",\"key\":\"%s\"},{\"op\":\"upsert\",\"key\":\"%s\",\"data\":{\"member_id\":\"%s\",\"tier\":5}}]}",
		 cx.m_id[1], cx.m_id[0], cx.m_id[0]);
	if (push(e, delta))
		return -1;
	CHECK(th_wait_log(e->agent_log, "ops[1].data.tier: must be a string", 30000 * itest_scale) == 0, "no refusal naming the field");
	/* too big */
	CHECK((big = malloc(100000)), "oom");
	memset(big, 'x', 99999);
	big[99999] = '\0';
	int n = snprintf(NULL, 0, "{\"v\":1,\"type\":\"delta\",\"stream\":\"members\",\"base\":1,\"version\":2,\"ops\":[{\"op\":\"upsert\",\"key\":\"%s\",\"data\":{\"member_id\":\"%s\",\"tier\":\"%s\"}}]}", cx.m_id[0], cx.m_id[0], big);
	char *huge = malloc((size_t)n + 1);
	snprintf(huge, (size_t)n + 1, "{\"v\":1,\"type\":\"delta\",\"stream\":\"members\",\"base\":1,\"version\":2,\"ops\":[{\"op\":\"upsert\",\"key\":\"%s\",\"data\":{\"member_id\":\"%s\",\"tier\":\"%s\"}}]}", cx.m_id[0], cx.m_id[0], big);
	free(big);
	int prc = push(e, huge);
	free(huge);
	if (prc)
		return -1;
	CHECK(th_wait_log(e->agent_log, "more than cache.max_message_bytes", 30000 * itest_scale) == 0, "oversize not refused");
	long long cur, rows;
	stream_state(e, "members", &cur, &rows, NULL, NULL);
	CHECK(cur == 1 && rows == file_records("members"), "members changed by refused deltas: cursor %lld rows %lld", cur, rows);
	CHECK(card(e, SCRM_MEMBER_ID, cx.m_id[0], &after) == SCRM_OK && strcmp(before, after) == 0, "card changed");
	scrm_free(after);
	CHECK(card(e, SCRM_MEMBER_ID, cx.m_id[1], &after) == SCRM_OK, "member deleted by a refused delta");
	scrm_free(after);

	/* a tampered coupon is refused alone; the rest of the delta applies */
	{
		char p[600];
		snprintf(p, sizeof(p), "%s/coupons.jsonl", cx.fx);
		char *t = th_read_file(p, NULL), *c = t ? strstr(t, "{\"key\":\"coupon:") : NULL, *nl;
		CHECK(c && (nl = strchr(c, '\n')) && (size_t)(nl - c) < sizeof(line), "no coupon line in the fixture");
		memcpy(line, c, (size_t)(nl - c));
		line[nl - c] = '\0';
		free(t);
		char *uses = strstr(line, "uses\\\":");
		CHECK(uses, "coupon without uses: %.200s", line);
		uses[7] = uses[7] == '9' ? '8' : '9'; /* one byte of the signed text */
		char *key = strstr(line, "coupon:"), ckey[80];
		CHECK(sscanf(key, "%79[^\"]", ckey) == 1, "key");
		snprintf(delta, sizeof(delta),
			 "{\"v\":1,\"type\":\"delta\",\"stream\":\"coupons\",\"base\":1,\"version\":2,"
			 "\"ops\":[{\"op\":\"upsert\",%s,{\"op\":\"delete\",\"key\":\"campaign:nonexistent\"}]}",
			 line + 1);
		/* line + 1 drops the record's "{": the op object is {"op":"upsert", <record fields>} */
		if (push(e, delta) || wait_cursor(e, "coupons", 2, 60))
			return -1;
		CHECK(th_wait_log(e->agent_log, "msg=\"cache record refused\" stream=coupons refused=1", 10000) == 0,
		      "tampered coupon not refused");
		CHECK(th_wait_log(e->agent_log, "signature does not verify", 100) == 0, "refusal reason not logged");
	}
	/* and the next good delta applies */
	if (push_member_delete(e, 1, cx.m_id[1]) || wait_cursor(e, "members", 2, 60))
		return -1;
	CHECK(card(e, SCRM_MEMBER_ID, cx.m_id[1], &after) == SCRM_E_NOT_FOUND, "good delta not applied");
	scrm_free(before);
	return 0;
}

/* The first `n` member coupons of a campaign in the fixture: id, member,
 * code (from the signed payloads, escaped inside coupons.jsonl). */
static int find_coupons(const char *campaign, int n, char id[][48], char member[][32], char code[][32])
{
	char p[600], needle[80];
	int k = 0;
	snprintf(p, sizeof(p), "%s/coupons.jsonl", cx.fx);
	snprintf(needle, sizeof(needle), "\\\"campaign\\\":\\\"%s\\\"", campaign);
	char *t = th_read_file(p, NULL);
	CHECK(t, "read %s", p);
	for (char *line = t; line && *line && k < n;) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		const char *a, *b, *c;
		if (strstr(line, "\"key\":\"coupon:") && strstr(line, needle) && (a = strstr(line, "\\\"id\\\":\\\"")) &&
		    (b = strstr(line, "\\\"member_id\\\":\\\"")) && (c = strstr(line, "\\\"code\\\":\\\"")) &&
		    sscanf(a + 9, "%47[^\\]", id[k]) == 1 && sscanf(b + 16, "%31[^\\]", member[k]) == 1 &&
		    sscanf(c + 11, "%31[^\\]", code[k]) == 1)
			k++;
		line = nl ? nl + 1 : NULL;
	}
	free(t);
	CHECK(k == n, "fixture has %d %s coupons, need %d", k, campaign, n);
	return 0;
}

static int redemptions_state(struct itest *e, int64_t *pending, int64_t *accepted, int64_t *rejected, char **json)
{
	scrm_store *st = NULL;
	char *j = NULL;
	*pending = *accepted = *rejected = -1;
	if (scrm_store_open(e->store, NULL, &st) != SCRM_OK)
		return -1;
	int rc = scrm_redemptions(st, 0, &j);
	scrm_store_close(st);
	if (rc != SCRM_OK)
		return -1;
	*pending = num_after(j, "\"pending\":");
	*accepted = num_after(j, "\"accepted\":");
	*rejected = num_after(j, "\"rejected\":");
	if (json)
		*json = j;
	else
		scrm_free(j);
	return 0;
}

/* The guide's day through an outage: a recommendation shown to a guide,
 * coupons checked and spent offline (online-only ones refused with that
 * reason, the same coupon never twice), the sale attributed to the guide;
 * then the network returns, central settles: one redemption accepted, one
 * rejected because the coupon was already spent in another store, and the
 * store sees both verdicts. */
static int t_guide_offline(struct itest *e)
{
	char id[2][48], member[2][32], code[2][32], *j = NULL;
	scrm_cache *c = NULL;
	scrm_store *st = NULL;
	scrm_redemption red[2];
	int rc;
	if (fixtures_retail(e) || write_agent_cfg(e, NULL) || find_coupons("GOLD5", 2, id, member, code))
		return -1;
	e->broker = th_broker_start(e->dir, e->port, "server", 0);
	CHECK(e->broker, "broker");
	if (start_central(e, "1000", "0") || itest_start_agent(e) || wait_all_streams(e, 120))
		return -1;
	/* The second coupon was spent in store s2 (central's books). */
	{
		sqlite3 *db = NULL;
		char sql[800];
		snprintf(sql, sizeof(sql),
			 "INSERT INTO redemptions(tenant, store, device, seq, id, campaign, coupon, member_id, order_id, value,"
			 " verdict, reason, detail, decided_ms) VALUES ('acme', 's2', 'pos-09', 1,"
			 " '01900000-0000-7000-8000-000000000001', 'GOLD5', '%s', '%s', 'S2-77', 500, 'accepted', NULL, NULL,"
			 " 1)",
			 id[1], member[1]);
		CHECK(sqlite3_open(e->central_db, &db) == SQLITE_OK, "central db");
		sqlite3_busy_timeout(db, 5000);
		rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
		sqlite3_close(db);
		CHECK(rc == SQLITE_OK, "seed central's redemptions");
	}
	CHECK(th_wait_log(e->agent_log, "msg=\"connected\"", 30000 * itest_scale) == 0, "agent did not connect");

	/* The outage. */
	th_broker_stop(e->broker);
	CHECK(th_wait_log(e->agent_log, "msg=\"connection lost\"", 30000 * itest_scale) == 0, "agent did not notice");
	CHECK(scrm_cache_open(e->store, NULL, &c) == SCRM_OK, "cache: %s", scrm_errmsg());
	CHECK(scrm_store_open(e->store, NULL, &st) == SCRM_OK, "store: %s", scrm_errmsg());
	scrm_line basket[2] = {{.sku = "22423", .qty = 2, .unit_price = 1275}, {.sku = "84879", .qty = 1, .unit_price = 169}};

	/* The guide sees suggestions; the list is recorded for attribution. */
	scrm_reco_request rr = {.member_id = member[0], .basket = basket, .n_basket = 1, .n = 5, .guide_id = "g-07"};
	rc = scrm_recommend(c, st, &rr, &j);
	CHECK(rc == SCRM_OK && strstr(j, "\"reco_id\":\"") && strstr(j, "\"items\":[{"), "recommend: %s %s",
	      scrm_errmsg(), j ? j : "");
	char reco_id[40] = "";
	sscanf(strstr(j, "\"reco_id\":\"") + 11, "%36[^\"]", reco_id);
	scrm_free(j);

	/* Offline: the member coupon applies; the online-only campaign does not. */
	scrm_coupon_request cr = {.member_id = member[0], .basket = basket, .n_basket = 2, .currency = "GBP"};
	rc = scrm_coupons_for(c, st, &cr, &j);
	CHECK(rc == SCRM_OK && strstr(j, "\"online\":false"), "coupons_for: %s %s", scrm_errmsg(), j ? j : "");
	CHECK(strstr(j, id[0]) && strstr(j, id[0]) < strstr(j, "\"ineligible\""), "coupon %s not eligible: %s", id[0], j);
	scrm_free(j);

	/* Spend by code, offline; a second till gets "used_up". */
	scrm_redeem_request rq = {.member_id = member[0], .coupon = code[0], .basket = basket, .n_basket = 2,
				  .currency = "GBP", .order_id = "G-1", .guide_id = "g-07"};
	rc = scrm_redeem(c, st, &rq, &red[0], NULL);
	CHECK(rc == SCRM_OK && red[0].offline && red[0].value == 500, "redeem: rc=%d %s value=%lld", rc, scrm_errmsg(),
	      (long long)red[0].value);
	rq.order_id = "G-1b";
	rc = scrm_redeem(c, st, &rq, NULL, NULL);
	CHECK(rc == SCRM_E_REFUSED && strncmp(scrm_errmsg(), "used_up", 7) == 0, "second redeem: rc=%d %s", rc,
	      scrm_errmsg());
	/* The sale, without a guide: the agent credits it to g-07. */
	const char *codes[1] = {code[0]};
	scrm_purchase p = {.order_id = "G-1", .lines = basket, .n_lines = 2, .discount = 500,
			   .total = 2 * 1275 + 169 - 500, .currency = "GBP", .payment = "card", .member_id = member[0],
			   .coupons = codes, .n_coupons = 1};
	CHECK(scrm_record_purchase(st, &p, NULL) == SCRM_OK, "purchase: %s", scrm_errmsg());
	/* The other member's coupon, already spent elsewhere: the agent cannot
	 * know offline and reserves it; central will say no. */
	rq.member_id = member[1];
	rq.coupon = id[1];
	rq.order_id = "G-2";
	rc = scrm_redeem(c, st, &rq, &red[1], NULL);
	CHECK(rc == SCRM_OK, "redeem %s: %s", id[1], scrm_errmsg());
	int64_t pend, acc, rej;
	CHECK(redemptions_state(e, &pend, &acc, &rej, NULL) == 0 && pend == 2 && acc == 0 && rej == 0,
	      "before central: pending %" PRId64 " accepted %" PRId64 " rejected %" PRId64, pend, acc, rej);

	/* The network returns: central settles both. */
	CHECK(th_broker_restart(e->broker) == 0, "broker restart");
	for (int i = 0; i < 600 * itest_scale; i++) {
		redemptions_state(e, &pend, &acc, &rej, NULL);
		if (pend == 0)
			break;
		th_sleep_ms(100);
	}
	CHECK(redemptions_state(e, &pend, &acc, &rej, &j) == 0 && pend == 0 && acc == 1 && rej == 1,
	      "after central: pending %" PRId64 " accepted %" PRId64 " rejected %" PRId64, pend, acc, rej);
	CHECK(strstr(j, "already_spent") && strstr(j, "s2"), "rejection reason not shown: %s", j);
	scrm_free(j);
	j = NULL;
	/* Central holds the sale credited to the guide's recommendation. */
	char sql[400];
	snprintf(sql, sizeof(sql),
		 "SELECT count(*) FROM events WHERE kind = 'purchase' AND json_extract(body, '$.guide_id') = 'g-07'"
		 " AND json_extract(body, '$.reco_id') = '%s' AND json_extract(body, '$.attributed') = 'auto'",
		 reco_id);
	CHECK(itest_central_int(e, sql) == 1, "attributed purchase not at central (reco %s)", reco_id);
	CHECK(itest_central_int(e, "SELECT count(*) FROM events WHERE kind = 'reco_shown'") == 1, "reco_shown not at central");
	CHECK(itest_central_int(e, "SELECT count(*) FROM events WHERE kind = 'coupon_redeem'") == 2, "redemptions not at central");
	/* Online again: the online-only campaign is offered (kitchen item). */
	for (int i = 0; i < 100 * itest_scale; i++) {
		scrm_free(j);
		j = NULL;
		if (scrm_coupons_for(c, st, &cr, &j) == SCRM_OK && strstr(j, "\"online\":true"))
			break;
		th_sleep_ms(100);
	}
	CHECK(j && strstr(j, "\"online\":true"), "still offline after reconnect: %s", j ? j : "");
	scrm_free(j);
	scrm_store_close(st);
	scrm_cache_close(c);
	return 0;
}

/* Issue 11, hole 6: a coupon verdict the broker delivered but the store
 * could not record (its database locked past the busy timeout, then the
 * agent killed) used to be lost for good: central resends a verdict only
 * with a redelivered event, and this one was acknowledged. Now the agent
 * asks central for the verdicts it is missing (up/verdict/query) soon after
 * the failure and after every connect. */
static int t_verdict_lost(struct itest *e)
{
	char id[1][48], member[1][32], code[1][32];
	scrm_cache *c = NULL;
	scrm_store *st = NULL;
	scrm_redemption red;
	sqlite3 *lock = NULL;
	int64_t pend = -1, acc = -1, rej = -1;
	char outbox_db[600];
	if (fixtures_retail(e) || write_agent_cfg(e, NULL) || find_coupons("GOLD5", 1, id, member, code))
		return -1;
	e->broker = th_broker_start(e->dir, e->port, "server", 0);
	CHECK(e->broker, "broker");
	/* the verdict leaves central 3 s after the ack: time to lock the store */
	if (start_central_ex(e, "1000", "0", "3000") || itest_start_agent(e) || wait_all_streams(e, 120))
		return -1;
	CHECK(scrm_cache_open(e->store, NULL, &c) == SCRM_OK, "cache: %s", scrm_errmsg());
	CHECK(scrm_store_open(e->store, NULL, &st) == SCRM_OK, "store: %s", scrm_errmsg());
	scrm_line basket[1] = {{.sku = "22423", .qty = 2, .unit_price = 1275}};
	scrm_redeem_request rq = {.member_id = member[0], .coupon = code[0], .basket = basket, .n_basket = 1,
				  .currency = "GBP", .order_id = "V-1"};
	CHECK(scrm_redeem(c, st, &rq, &red, NULL) == SCRM_OK, "redeem: %s", scrm_errmsg());
	scrm_store_close(st);
	st = NULL;
	scrm_cache_close(c);
	c = NULL;
	/* acknowledged: no longer pending */
	for (int i = 0; i < 300 * itest_scale; i++) {
		scrm_store *s2 = NULL;
		scrm_outbox_stats ost = {.pending = -1};
		if (scrm_store_open(e->store, NULL, &s2) == SCRM_OK) {
			scrm_outbox_get_stats(s2, &ost);
			scrm_store_close(s2);
		}
		if (ost.pending == 0)
			break;
		th_sleep_ms(50);
	}
	/* Another process holds the store's write lock past the agent's busy
	 * timeout while the verdict arrives. */
	snprintf(outbox_db, sizeof(outbox_db), "%s/outbox.db", e->store);
	CHECK(sqlite3_open(outbox_db, &lock) == SQLITE_OK, "open outbox.db");
	CHECK(sqlite3_exec(lock, "BEGIN EXCLUSIVE", NULL, NULL, NULL) == SQLITE_OK, "lock outbox.db");
	int failed = th_wait_log(e->agent_log, "cannot record a coupon verdict", 20000 * itest_scale) == 0;
	/* ...and the agent dies before it tries again. */
	th_kill(e->agent, SIGKILL);
	th_wait(e->agent, 10000, NULL);
	e->agent = -1;
	sqlite3_exec(lock, "ROLLBACK", NULL, NULL, NULL);
	sqlite3_close(lock);
	CHECK(failed, "the verdict arrived while the store was locked (agent log: 'cannot record a coupon verdict')");
	CHECK(redemptions_state(e, &pend, &acc, &rej, NULL) == 0 && pend == 1, "the verdict was not recorded (pending %" PRId64 ")",
	      pend);
	/* Restart: the agent asks for it and records it. */
	if (itest_start_agent(e))
		return -1;
	for (int i = 0; i < 600 * itest_scale; i++) {
		redemptions_state(e, &pend, &acc, &rej, NULL);
		if (pend == 0)
			break;
		th_sleep_ms(100);
	}
	CHECK(pend == 0 && acc == 1, "after the restart: pending %" PRId64 " accepted %" PRId64, pend, acc);
	CHECK(th_wait_log(e->agent_log, "asked central for missing coupon verdicts", 1000) == 0, "no verdict query in the log");
	CHECK(itest_central_int(e, "SELECT count(*) FROM events WHERE kind = 'coupon_redeem'") == 1, "redemption not at central");
	return 0;
}

static const struct itest_suite suite = {
	.program = "cache_itest",
	.emulator_scale = 6,
	.setup = setup,
	.scenarios = (const struct itest_scenario[]){
		{"verdict_lost", t_verdict_lost},
		{"guide_offline", t_guide_offline},
		{"cache_sync", t_cache_sync},
		{"cache_kill9", t_cache_kill9},
		{"cache_erasure", t_cache_erasure},
		{"cache_bad_delta", t_cache_bad_delta},
		{NULL, NULL},
	},
};

ITEST_MAIN(suite)
