/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-bench-cache: the offline customer cache at store scale (500,000
 * members by default), each figure next to a reference measured in the same
 * run on the same machine:
 *   1. snapshot apply: members (then catalogue, rules) as protocol snapshot
 *      chunks of 1,000 records through cache__apply, swap included
 *                       vs raw SQLite inserting the same member JSON into a
 *                          WITHOUT ROWID table, 1,000 rows per transaction,
 *                          same pragmas (WAL, synchronous=NORMAL)
 *   2. delta apply: 100-op upsert deltas chained base → version
 *   3. member look-ups p50/p99 by id, card, phone (typed "+44..."), QR token
 *      (signature verified)  vs raw SQLite primary-key select of the same
 *                               rows; QR vs bare ECDSA verify + that select
 *   4. cache.db bytes per member after the members snapshot (checkpointed)
 *                       vs the raw table's bytes per row
 *      and the file against its live data (pages in use) after the first
 *      and after three full members snapshots (the idle ticks that follow
 *      each swap included: they drop the old view and give pages back)
 *   5. durable capture (scrm_record_purchase, outbox.db, synchronous=FULL)
 *      while a second full members snapshot ("bench-2", version = the
 *      cursor the deltas left + 1) is applied on another thread
 *                       vs the same capture on an idle store
 * Record texts come from tests/support/cachegen (cg_synth), built one chunk
 * at a time; only the apply is timed, never the generation.
 *
 * Not a test: it asserts nothing about time (it does fail if the cache
 * refuses a message or a look-up finds the wrong member). The last line is
 * machine-readable:
 *   FIGURES snapshot_members_per_s=N delta_ops_per_s=N lookup_p99_us=N
 *           phone_lookup_p99_us=N qr_lookup_p99_us=N capture_p99_us_idle=N
 *           capture_p99_us_during_snapshot=N bytes_per_member=N cache_file_ratio=N
 *           cache_file_ratio_first=N
 */
#include "benchutil.h"
#include "benchstore.h"
#include "cache.h"
#include "cachegen.h"
#include "harness.h"
#include "platform.h"
#include "sbuf.h"

#include <scrm/scrm.h>

#include <errno.h>
#include <limits.h>
#include <mbedtls/base64.h>
#include <mbedtls/pk.h>
#include <mbedtls/sha256.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PER_CHUNK 1000   /* records per snapshot chunk (protocol: aim at ~1000) */
#define RAW_BATCH 1000   /* rows per transaction in the raw reference */
#define MIN_CAPTURES 300 /* samples wanted during the concurrent snapshot */
#define MAX_ROUNDS 20    /* concurrent snapshots, if one is too short for them */
#define TENANT "acme"

struct cfg {
	long members, skus, rules;
	long deltas, ops_per_delta;
	long lookups, qr_lookups, captures;
	const char *dir;
	int keep, quick;
};

static int failed; /* a step went wrong: exit 1 after the FIGURES line */

/* ---- small helpers ------------------------------------------------------ */

static double per_s(double n, int64_t ns)
{
	return ns > 0 ? n * 1e9 / (double)ns : 0.0;
}

static int64_t db_bytes(const char *path, int64_t *free_bytes)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *q = NULL;
	char wal[4200];
	*free_bytes = 0;
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK) {
		sqlite3_busy_timeout(db, 5000);
		if (sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL) != SQLITE_OK)
			fprintf(stderr, "checkpoint %s: %s\n", path, sqlite3_errmsg(db));
		/* Pages a dropped table left behind: reused, never returned. */
		if (sqlite3_prepare_v2(db, "SELECT freelist_count * page_size FROM pragma_freelist_count, pragma_page_size",
				       -1, &q, NULL) == SQLITE_OK &&
		    sqlite3_step(q) == SQLITE_ROW)
			*free_bytes = sqlite3_column_int64(q, 0);
		sqlite3_finalize(q);
	}
	sqlite3_close(db);
	snprintf(wal, sizeof(wal), "%s-wal", path);
	return file_size(path) + file_size(wal);
}

/* The cache's live data: its pages in use (all pages but the free ones). */
static int64_t live_bytes(const char *path)
{
	int64_t free_bytes = 0, all = 0;
	sqlite3 *db = NULL;
	sqlite3_stmt *q = NULL;
	db_bytes(path, &free_bytes);
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
	    sqlite3_prepare_v2(db, "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size", -1, &q,
			       NULL) == SQLITE_OK &&
	    sqlite3_step(q) == SQLITE_ROW)
		all = sqlite3_column_int64(q, 0);
	sqlite3_finalize(q);
	sqlite3_close(db);
	return all - free_bytes;
}

/* What the daemon's idle ticks do after a swap (drop the old view, give its
 * pages back), until there is nothing left to do or 60 ticks. */
static void settle(cache *c, const char *path)
{
	int64_t before = -1;
	for (int i = 0; i < 60; i++) {
		int64_t free_bytes = 0;
		cache__checkpoint(c);
		db_bytes(path, &free_bytes);
		if (free_bytes == 0 || free_bytes == before)
			break;
		before = free_bytes;
	}
}

static void member_key(const cg_synth *s, size_t i, char out[24])
{
	cg_member_ident id;
	if (cg_synth_member_ident(s, i, &id) != 0)
		out[0] = '\0';
	else
		snprintf(out, 24, "%s", id.member_id);
}

/* Append "key":K,"data":D (no braces) for record i of a stream; -1 on a
 * generator error. `data` is a CG_SYNTH_RECORD_MAX scratch buffer. */
static int put_record(sbuf *b, const cg_synth *s, cg_stream st, size_t i, char *data)
{
	char key[128];
	int kn = cg_synth_key(s, st, i, key, sizeof(key));
	int dn = cg_synth_data(s, st, i, data, CG_SYNTH_RECORD_MAX);
	if (kn < 0 || (size_t)kn >= sizeof(key) || dn < 0 || dn >= CG_SYNTH_RECORD_MAX) {
		fprintf(stderr, "cachegen: %s record %zu: %d/%d\n", cg_stream_name(st), i, kn, dn);
		return -1;
	}
	sbuf__puts(b, "\"key\":");
	sbuf__jstr(b, key);
	sbuf__puts(b, ",\"data\":");
	sbuf__put(b, data, (size_t)dn);
	return 0;
}

/* ---- 1. snapshots ------------------------------------------------------- */

struct snap_run {
	size_t records, chunks;
	int64_t apply_ns, gen_ns, swap_ns, max_chunk_ns;
	int64_t swap_at; /* now_ns() when the last chunk's apply began */
};

/* Build each chunk's text (untimed), then apply it (timed). The last
 * chunk's apply includes the index build and the swap. */
static int run_snapshot(cache *c, const cg_synth *s, cg_stream st, const char *snap_id, int64_t version,
			struct snap_run *r)
{
	size_t n = cg_synth_count(s, st), chunks = n ? (n + PER_CHUNK - 1) / PER_CHUNK : 1;
	char *data = malloc(CG_SYNTH_RECORD_MAX);
	sbuf msg;
	int rc = 0;

	memset(r, 0, sizeof(*r));
	sbuf__init(&msg);
	if (!data)
		return -1;
	for (size_t k = 0; k < chunks && rc == 0; k++) {
		size_t first = k * PER_CHUNK, last = first + PER_CHUNK < n ? first + PER_CHUNK : n;
		int64_t t0 = now_ns();
		sbuf__reset(&msg);
		sbuf__puts(&msg, "{\"v\":1,\"type\":\"snapshot\",\"stream\":");
		sbuf__jstr(&msg, cg_stream_name(st));
		sbuf__puts(&msg, ",\"snapshot\":");
		sbuf__jstr(&msg, snap_id);
		sbuf__puts(&msg, ",\"version\":");
		sbuf__i64(&msg, version);
		sbuf__puts(&msg, ",\"chunk\":");
		sbuf__i64(&msg, (int64_t)k);
		sbuf__puts(&msg, ",\"chunks\":");
		sbuf__i64(&msg, (int64_t)chunks);
		sbuf__puts(&msg, ",\"ts\":");
		sbuf__i64(&msg, th_wall_ms());
		sbuf__puts(&msg, ",\"records\":[");
		for (size_t i = first; i < last && rc == 0; i++) {
			sbuf__puts(&msg, i > first ? ",{" : "{");
			rc = put_record(&msg, s, st, i, data);
			sbuf__putc(&msg, '}');
		}
		sbuf__puts(&msg, "]}");
		if (rc || msg.oom) {
			rc = -1;
			break;
		}
		int64_t t1 = now_ns();
		cache__outcome o;
		int e = cache__apply(c, cg_stream_name(st), msg.p, msg.len, NULL, NULL, &o);
		int64_t t2 = now_ns();
		cache__what want = k + 1 < chunks ? CA_CHUNK : CA_SWAPPED;
		if (e != SCRM_OK || o.what != want || o.ops != (int64_t)(last - first) || o.refused) {
			fprintf(stderr, "%s snapshot %s chunk %zu/%zu: rc %d (%s), outcome %d (want %d), %lld ops, %lld refused %s\n",
				cg_stream_name(st), snap_id, k, chunks, e, e ? scrm_errmsg() : "ok", (int)o.what, (int)want,
				(long long)o.ops, (long long)o.refused, cache__refused_detail(c));
			rc = -1;
			break;
		}
		r->gen_ns += t1 - t0;
		r->apply_ns += t2 - t1;
		if (k + 1 == chunks)
			r->swap_ns = t2 - t1, r->swap_at = t1;
		else if (t2 - t1 > r->max_chunk_ns)
			r->max_chunk_ns = t2 - t1;
		r->records += last - first;
		r->chunks++;
	}
	sbuf__free(&msg);
	free(data);
	return rc;
}

/* Raw reference: the same member JSON into key + text, 1,000 rows per
 * transaction; the batch's texts are generated before its clock starts. */
static int raw_load(sqlite3 *db, const cg_synth *s, size_t n, int64_t *apply_ns)
{
	sqlite3_stmt *ins = NULL;
	size_t off[RAW_BATCH], koff[RAW_BATCH];
	char *data = malloc(CG_SYNTH_RECORD_MAX);
	sbuf texts;
	int rc = 0;

	*apply_ns = 0;
	sbuf__init(&texts);
	if (!data || sqlite3_prepare_v2(db, "INSERT INTO members(key, doc) VALUES (?1, ?2)", -1, &ins, NULL) != SQLITE_OK) {
		fprintf(stderr, "raw: prepare: %s\n", sqlite3_errmsg(db));
		free(data);
		return -1;
	}
	for (size_t first = 0; first < n && rc == 0; first += RAW_BATCH) {
		size_t cnt = n - first < RAW_BATCH ? n - first : RAW_BATCH;
		sbuf__reset(&texts);
		for (size_t j = 0; j < cnt; j++) {
			char key[24];
			int dn = cg_synth_data(s, CG_MEMBERS, first + j, data, CG_SYNTH_RECORD_MAX);
			if (dn < 0 || dn >= CG_SYNTH_RECORD_MAX) {
				rc = -1;
				break;
			}
			member_key(s, first + j, key);
			koff[j] = texts.len;
			sbuf__puts(&texts, key);
			sbuf__putc(&texts, '\0');
			off[j] = texts.len;
			sbuf__put(&texts, data, (size_t)dn);
			sbuf__putc(&texts, '\0');
		}
		if (rc || texts.oom)
			break;
		int64_t t0 = now_ns();
		sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
		for (size_t j = 0; j < cnt; j++) {
			sqlite3_bind_text(ins, 1, texts.p + koff[j], -1, SQLITE_STATIC);
			sqlite3_bind_text(ins, 2, texts.p + off[j], -1, SQLITE_STATIC);
			if (sqlite3_step(ins) != SQLITE_DONE) {
				fprintf(stderr, "raw: insert: %s\n", sqlite3_errmsg(db));
				rc = -1;
			}
			sqlite3_reset(ins);
		}
		if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
			rc = -1;
		*apply_ns += now_ns() - t0;
	}
	sqlite3_finalize(ins);
	sbuf__free(&texts);
	free(data);
	return rc;
}

/* ---- 2. deltas ---------------------------------------------------------- */

static int run_deltas(cache *c, const cg_synth *s, const struct cfg *cf, int64_t *cursor, int64_t *apply_ns,
		      int64_t *per_delta)
{
	char *data = malloc(CG_SYNTH_RECORD_MAX);
	sbuf msg;
	int rc = 0;
	*apply_ns = 0;
	sbuf__init(&msg);
	if (!data)
		return -1;
	for (long d = 0; d < cf->deltas && rc == 0; d++) {
		int64_t base = *cursor, version = base + 1;
		sbuf__reset(&msg);
		sbuf__puts(&msg, "{\"v\":1,\"type\":\"delta\",\"stream\":\"members\",\"base\":");
		sbuf__i64(&msg, base);
		sbuf__puts(&msg, ",\"version\":");
		sbuf__i64(&msg, version);
		sbuf__puts(&msg, ",\"ts\":");
		sbuf__i64(&msg, th_wall_ms());
		sbuf__puts(&msg, ",\"ops\":[");
		for (long j = 0; j < cf->ops_per_delta && rc == 0; j++) {
			sbuf__puts(&msg, j ? ",{\"op\":\"upsert\"," : "{\"op\":\"upsert\",");
			rc = put_record(&msg, s, CG_MEMBERS, pick((size_t)cf->members), data);
			sbuf__putc(&msg, '}');
		}
		sbuf__puts(&msg, "]}");
		if (rc || msg.oom)
			break;
		cache__outcome o;
		int64_t t0 = now_ns();
		int e = cache__apply(c, "members", msg.p, msg.len, NULL, NULL, &o);
		int64_t t = now_ns() - t0;
		if (e != SCRM_OK || o.what != CA_APPLIED || o.ops != cf->ops_per_delta || o.cursor != version) {
			fprintf(stderr, "delta %lld→%lld: rc %d (%s), outcome %d, %lld ops, cursor %lld\n", (long long)base,
				(long long)version, e, e ? scrm_errmsg() : "ok", (int)o.what, (long long)o.ops,
				(long long)o.cursor);
			rc = -1;
			break;
		}
		per_delta[d] = t;
		*apply_ns += t;
		*cursor = version;
	}
	sbuf__free(&msg);
	free(data);
	return rc;
}

/* ---- 3. look-ups -------------------------------------------------------- */

static int raw_select(sqlite3_stmt *q, const char *key)
{
	sqlite3_reset(q);
	sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
	int ok = sqlite3_step(q) == SQLITE_ROW && sqlite3_column_bytes(q, 0) > 0 && sqlite3_column_text(q, 0);
	sqlite3_reset(q);
	return ok ? 0 : -1;
}

static long b64url_decode(const char *in, size_t n, unsigned char *out, size_t cap)
{
	char tmp[1024];
	size_t olen = 0;
	if (n + 3 >= sizeof(tmp))
		return -1;
	for (size_t i = 0; i < n; i++)
		tmp[i] = in[i] == '-' ? '+' : in[i] == '_' ? '/' : in[i];
	while (n % 4)
		tmp[n++] = '=';
	if (mbedtls_base64_decode(out, cap, &olen, (const unsigned char *)tmp, n) != 0)
		return -1;
	return (long)olen;
}

/* What a look-up is compared with: the primary-key select of the member in
 * the raw table and, for QR tokens, first SHA-256 + ECDSA P-256 verify of
 * the token's payload (mbedTLS, the key parsed once) — the least either
 * look-up must do. */
struct reference {
	sqlite3_stmt *select;
	mbedtls_pk_context *pk; /* NULL: no token to verify */
};

static int reference_one(const struct reference *r, const char *token, const char *member_id)
{
	if (r->pk) {
		unsigned char payload[600], sig[200], h[32];
		const char *p1 = token + 6, *p2 = strchr(p1, '.');
		long pl = p2 ? b64url_decode(p1, (size_t)(p2 - p1), payload, sizeof(payload)) : -1;
		long sl = p2 ? b64url_decode(p2 + 1, strlen(p2 + 1), sig, sizeof(sig)) : -1;
		if (pl <= 0 || sl <= 0 || mbedtls_sha256_ret(payload, (size_t)pl, h, 0) != 0 ||
		    mbedtls_pk_verify(r->pk, MBEDTLS_MD_SHA256, h, sizeof(h), sig, (size_t)sl) != 0)
			return -1;
	}
	return raw_select(r->select, member_id);
}

/* n look-ups of values[i], each expected to find member expect[i]; when
 * `ref` is given, its look-up of the same member runs right after each one
 * (interleaved, so both see the same machine). */
static int run_lookups(cache *c, scrm_member_key by, char *const *values, char *const *expect, size_t n,
		       int64_t *samples, const struct reference *ref, int64_t *ref_samples)
{
	sbuf card;
	int rc = 0;
	sbuf__init(&card);
	for (size_t i = 0; i < n; i++) {
		char member[65];
		int64_t t0 = now_ns();
		int e = cache__member_card(c, by, values[i], &card, member, NULL);
		samples[i] = now_ns() - t0;
		if (e != SCRM_OK || strcmp(member, expect[i]) != 0) {
			fprintf(stderr, "look-up %d of \"%.40s\": rc %d (%s), found \"%s\", want \"%s\"\n", (int)by, values[i],
				e, e ? scrm_errmsg() : "ok", e ? "" : member, expect[i]);
			rc = -1;
			break;
		}
		if (ref) {
			t0 = now_ns();
			e = reference_one(ref, values[i], expect[i]);
			ref_samples[i] = now_ns() - t0;
			if (e) {
				fprintf(stderr, "reference look-up of %s failed\n", expect[i]);
				rc = -1;
				break;
			}
		}
	}
	sbuf__free(&card);
	return rc;
}

/* ---- 5. capture during a snapshot --------------------------------------- */

struct samples {
	int64_t *v;
	size_t n, cap;
};

/* Append x, the array doubled when full; -1 when out of memory (s as it was). */
static int push(struct samples *s, int64_t x)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 1024;
		int64_t *v = realloc(s->v, cap * sizeof(*v));
		if (!v)
			return -1;
		*s = (struct samples){.v = v, .n = s->n, .cap = cap};
	}
	s->v[s->n++] = x;
	return 0;
}

static long order_no;

static int capture_one(scrm_store *st, const cg_synth *s, size_t members, int64_t *at, int64_t *ns)
{
	char order[32], member[24];
	scrm_line l[2] = {{.sku = "85123A", .qty = 6, .unit_price = 255}, {.sku = "71053", .qty = 6, .unit_price = 339}};
	snprintf(order, sizeof(order), "BC-%ld", ++order_no);
	member_key(s, pick(members), member);
	scrm_purchase p = {.order_id = order, .lines = l, .n_lines = 2, .total = 3564, .currency = "GBP",
			   .payment = "card", .member_id = member};
	int64_t t0 = now_ns();
	int rc = scrm_record_purchase(st, &p, NULL);
	*ns = now_ns() - t0;
	*at = t0;
	if (rc != SCRM_OK)
		fprintf(stderr, "capture failed: %s\n", scrm_errmsg());
	return rc == SCRM_OK ? 0 : -1;
}

struct snap_thread {
	cache *c;
	const cg_synth *s;
	int64_t version; /* first snapshot's version; the next rounds count up */
	atomic_int started, done, captures;
	int rounds, rc;
	struct snap_run run; /* totals over the rounds */
	int64_t swap_from[MAX_ROUNDS], swap_to[MAX_ROUNDS]; /* last-chunk applies */
};

static void *snapshot_thread(void *arg)
{
	struct snap_thread *t = arg;
	atomic_store(&t->started, 1);
	/* One full snapshot; more only if it was too short to collect
	 * MIN_CAPTURES samples beside it (the --quick sizes). */
	do {
		char id[32];
		struct snap_run r;
		snprintf(id, sizeof(id), "bench-%d", t->rounds + 2);
		t->rc = run_snapshot(t->c, t->s, CG_MEMBERS, id, t->version + t->rounds, &r);
		t->run.records += r.records;
		t->run.apply_ns += r.apply_ns;
		t->run.gen_ns += r.gen_ns;
		if (r.swap_ns > t->run.swap_ns)
			t->run.swap_ns = r.swap_ns;
		t->swap_from[t->rounds] = r.swap_at;
		t->swap_to[t->rounds] = r.swap_at + r.swap_ns;
		t->rounds++;
	} while (t->rc == 0 && atomic_load(&t->captures) < MIN_CAPTURES && t->rounds < MAX_ROUNDS);
	atomic_store(&t->done, 1);
	return NULL;
}

/* ---- main --------------------------------------------------------------- */

static void usage(void)
{
	printf("Usage: scrm-bench-cache [--members N] [--skus N] [--rules N] [--dir DIR] [--keep] [--quick]\n"
	       "  defaults: --members 500000 --skus 20000 --rules 200000, in a fresh temporary directory\n"
	       "  --quick   20,000 members (5,000 under an emulator: SCRM_TEST_EMULATOR set), smaller samples\n"
	       "  --dir     work in DIR (created if missing; DIR/store must not exist yet)\n"
	       "  --keep    keep the store, keys and reference database afterwards\n");
}

static int parse_args(int argc, char **argv, struct cfg *c)
{
	const struct bench_count counts[] = {
		{"--members", &c->members, 1, LONG_MAX}, {"--skus", &c->skus, 1, LONG_MAX}, {"--rules", &c->rules, 1, LONG_MAX}};
	return bench_parse(argc, argv, "scrm-bench-cache", 0, NULL, counts, sizeof(counts) / sizeof(counts[0]), &c->dir,
			   &c->keep, &c->quick, usage);
}

static void print_lat(const char *what, struct lat a, const char *ref_what, struct lat r)
{
	printf("  %-22s p50 %8.1f us  p99 %8.1f us  max %8.1f  (n=%zu)", what, a.p50, a.p99, a.max, a.n);
	if (ref_what)
		printf("   %s p50 %6.1f p99 %6.1f us   ratio p50 %.1f p99 %.1f", ref_what, r.p50, r.p99, ratio(a.p50, r.p50),
		       ratio(a.p99, r.p99));
	printf("\n");
}

int main(int argc, char **argv)
{
	struct cfg cf = {0};
	long members = 0, skus = 0, rules = 0;
	if (parse_args(argc, argv, &cf) != 0)
		return 2;
	members = cf.members, skus = cf.skus, rules = cf.rules;
	const char *emu = getenv("SCRM_TEST_EMULATOR");
	int emulated = emu && *emu;
	if (cf.quick) {
		cf.members = emulated ? 5000 : 20000;
		cf.skus = emulated ? 500 : 2000;
		cf.rules = emulated ? 5000 : 20000;
		cf.deltas = emulated ? 20 : 50;
		cf.lookups = emulated ? 1000 : 5000;
		cf.qr_lookups = emulated ? 100 : 500;
	} else {
		cf.members = 500000;
		cf.skus = 20000;
		cf.rules = 200000;
		cf.deltas = 200;
		cf.lookups = 20000;
		cf.qr_lookups = 2000;
	}
	cf.ops_per_delta = 100;
	cf.captures = cf.quick ? MIN_CAPTURES : 1000; /* idle samples */
	if (members)
		cf.members = members;
	if (skus)
		cf.skus = skus;
	if (rules)
		cf.rules = rules;
	if (cf.lookups > cf.members)
		cf.lookups = cf.members;
	if (cf.qr_lookups > cf.members)
		cf.qr_lookups = cf.members;

	cg_synth syn;
	if (bench_synth(&syn, "scrm-bench-cache", cf.members, cf.skus, cf.rules, TENANT) != 0)
		return 2;

	/* ---- directories and keys ---- */
	struct bench_work w;
	char raw_path[4200], cache_path[4200];
	if (bench_work_open(&w, "scrm-bench-cache", cf.dir, "bench-cache", "--dir") != 0)
		return 1;
	const char *dir = w.dir, *store = w.store, *central = w.central;
	snprintf(raw_path, sizeof(raw_path), "%s/raw.db", dir);
	snprintf(cache_path, sizeof(cache_path), "%s/private/%s", store, CACHE_FILE);
	int64_t wall0 = now_ns();
	printf("scrm-bench-cache: %ld members, %ld SKUs, %ld rules; SQLite %s; %ld CPUs%s; in %s\n", cf.members, cf.skus,
	       cf.rules, sqlite3_libversion(), sysconf(_SC_NPROCESSORS_ONLN), emulated ? " (emulated)" : "", dir);
	fflush(stdout);

	int rc = bench_work_keys(&w);
	if (rc != 0) {
		fprintf(stderr, "scrm-bench-cache: keys: %d\n", rc);
		return 1;
	}
	char pub[4400], priv[4400];
	snprintf(pub, sizeof(pub), "%s/central.pub", central);
	snprintf(priv, sizeof(priv), "%s/central.key", central);

	/* Member cards read the local purchase history as in the field. */
	scrm_store *so = NULL;
	cache *c = NULL;
	if (bench_open_store("scrm-bench-cache", store, "bench-1", TENANT, &so, &c) != 0)
		return 1;

	/* ---- 1. members snapshot vs raw SQLite ---- */
	sqlite3 *raw = NULL;
	int64_t raw_ns = 0;
	if (sqlite3_open(raw_path, &raw) != SQLITE_OK ||
	    sqlite3_exec(raw, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA temp_store=MEMORY;"
			      "PRAGMA cache_size=-16384;"
			      "CREATE TABLE members(key TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID",
			 NULL, NULL, NULL) != SQLITE_OK ||
	    raw_load(raw, &syn, (size_t)cf.members, &raw_ns) != 0) {
		fprintf(stderr, "raw reference: %s\n", sqlite3_errmsg(raw));
		failed = 1;
	}
	double raw_rate = per_s((double)cf.members, raw_ns);
	int64_t raw_free = 0, raw_bytes = db_bytes(raw_path, &raw_free);

	struct snap_run mem = {0};
	int64_t cursor = 1;
	progress("raw reference loaded; members snapshot...");
	if (run_snapshot(c, &syn, CG_MEMBERS, "bench-1", cursor, &mem) != 0)
		failed = 1;
	double mem_rate = per_s((double)mem.records, mem.apply_ns);

	/* ---- 4. size, right after the members swap ---- */
	cache__checkpoint(c);
	int64_t cache_free = 0, cache_bytes = db_bytes(cache_path, &cache_free), live1 = live_bytes(cache_path);
	double bpm = cf.members ? (double)cache_bytes / (double)cf.members : 0;

	/* ---- 2. deltas ---- */
	int64_t *per_delta = calloc((size_t)cf.deltas, sizeof(int64_t));
	int64_t delta_ns = 0;
	progress("members snapshot swapped in; deltas...");
	if (!per_delta || run_deltas(c, &syn, &cf, &cursor, &delta_ns, per_delta) != 0)
		failed = 1;
	double delta_rate = per_s((double)(cf.deltas * cf.ops_per_delta), delta_ns);
	struct lat delta_lat = per_delta ? latency(per_delta, (size_t)cf.deltas) : (struct lat){0};

	/* ---- 3. look-ups ---- */
	progress("deltas done; look-ups...");
	size_t nl = (size_t)cf.lookups, nq = (size_t)cf.qr_lookups;
	char **ids = calloc(nl, sizeof(char *)), **cards = calloc(nl, sizeof(char *)), **phones = calloc(nl, sizeof(char *));
	char **qr_ids = calloc(nq, sizeof(char *)), **tokens = calloc(nq, sizeof(char *));
	int64_t *lat_ns = calloc(nl > nq ? nl : nq, sizeof(int64_t)), *ref_ns = calloc(nl > nq ? nl : nq, sizeof(int64_t));
	struct lat l_id = {0}, l_card = {0}, l_phone = {0}, l_qr = {0}, l_raw = {0}, l_qref = {0};
	cg_signer *signer = NULL;
	int lk_ok = 1;
	if (!ids || !cards || !phones || !qr_ids || !tokens || !lat_ns || !ref_ns || cg_signer_open(priv, &signer) != 0) {
		fprintf(stderr, "look-ups: setup failed\n");
		lk_ok = 0;
	} else {
		int64_t now = th_wall_ms();
		for (size_t i = 0; i < nl; i++) {
			cg_member_ident m;
			char plus[32];
			cg_synth_member_ident(&syn, pick(syn.n_members), &m);
			snprintf(plus, sizeof(plus), "+%s", m.phone); /* as typed at the till */
			ids[i] = strdup(m.member_id);
			cards[i] = strdup(m.card);
			phones[i] = strdup(plus);
		}
		for (size_t i = 0; i < nq; i++) {
			cg_member_ident m;
			cg_synth_member_ident(&syn, pick(syn.n_members), &m);
			qr_ids[i] = strdup(m.member_id);
			if (cg_qr_mint(signer, TENANT, m.member_id, now, now + 3600000, &tokens[i]) != 0) {
				fprintf(stderr, "cg_qr_mint failed\n");
				lk_ok = 0;
				break;
			}
		}
		mbedtls_pk_context pk;
		mbedtls_pk_init(&pk);
		sqlite3_stmt *q = NULL;
		if (mbedtls_pk_parse_public_keyfile(&pk, pub) != 0 ||
		    sqlite3_prepare_v2(raw, "SELECT doc FROM members WHERE key = ?1", -1, &q, NULL) != SQLITE_OK) {
			fprintf(stderr, "look-ups: reference setup failed\n");
			lk_ok = 0;
		}
		struct reference by_key = {.select = q}, by_token = {.select = q, .pk = &pk};
		if (lk_ok && run_lookups(c, SCRM_MEMBER_ID, ids, ids, nl, lat_ns, &by_key, ref_ns) == 0)
			l_id = latency(lat_ns, nl), l_raw = latency(ref_ns, nl);
		else
			lk_ok = 0;
		if (lk_ok && run_lookups(c, SCRM_MEMBER_CARD, cards, ids, nl, lat_ns, NULL, NULL) == 0)
			l_card = latency(lat_ns, nl);
		else
			lk_ok = 0;
		if (lk_ok && run_lookups(c, SCRM_MEMBER_PHONE, phones, ids, nl, lat_ns, NULL, NULL) == 0)
			l_phone = latency(lat_ns, nl);
		else
			lk_ok = 0;
		if (lk_ok && run_lookups(c, SCRM_MEMBER_QR, tokens, qr_ids, nq, lat_ns, &by_token, ref_ns) == 0)
			l_qr = latency(lat_ns, nq), l_qref = latency(ref_ns, nq);
		else
			lk_ok = 0;
		sqlite3_finalize(q);
		mbedtls_pk_free(&pk);
	}
	if (!lk_ok)
		failed = 1;
	cg_signer_close(signer);
	sqlite3_close(raw);

	/* ---- other streams ---- */
	struct snap_run cat = {0}, rul = {0};
	progress("look-ups done; catalogue and rules snapshots...");
	if (run_snapshot(c, &syn, CG_CATALOGUE, "bench-cat-1", 1, &cat) != 0 ||
	    run_snapshot(c, &syn, CG_RULES, "bench-rules-1", 1, &rul) != 0)
		failed = 1;

	/* ---- 5. capture: idle, then beside a members snapshot ---- */
	progress("captures...");
	struct samples idle = {0}, busy = {0}, busy_at = {0};
	for (long i = 0; i < cf.captures; i++) {
		int64_t at, ns;
		if (capture_one(so, &syn, syn.n_members, &at, &ns) != 0 || push(&idle, ns) != 0) {
			failed = 1;
			break;
		}
	}
	struct lat l_idle = latency(idle.v, idle.n);

	struct snap_thread th = {.c = c, .s = &syn, .version = cursor + 1};
	pthread_t tid;
	int64_t busy_t0 = now_ns(), busy_ns = 0;
	if (pthread_create(&tid, NULL, snapshot_thread, &th) != 0) {
		failed = 1;
	} else {
		while (!atomic_load(&th.started))
			sched_yield();
		while (!atomic_load(&th.done)) {
			int64_t at, ns;
			if (capture_one(so, &syn, syn.n_members, &at, &ns) != 0 || push(&busy, ns) != 0 ||
			    push(&busy_at, at) != 0) {
				failed = 1;
				break;
			}
			atomic_store(&th.captures, (int)(busy.n < 1000000 ? busy.n : 1000000));
		}
		pthread_join(tid, NULL);
		busy_ns = now_ns() - busy_t0;
		if (th.rc != 0)
			failed = 1;
	}
	/* Did the slowest captures coincide with a swap (index build, drop of
	 * the old table, rename, commit)? */
	size_t n_at_swap = 0;
	int64_t max_at_swap = 0, max_elsewhere = 0;
	for (size_t i = 0; i < busy.n && i < busy_at.n; i++) {
		int at_swap = 0;
		for (int r = 0; r < th.rounds && r < MAX_ROUNDS; r++)
			at_swap |= busy_at.v[i] < th.swap_to[r] && busy_at.v[i] + busy.v[i] > th.swap_from[r];
		if (at_swap) {
			n_at_swap++;
			if (busy.v[i] > max_at_swap)
				max_at_swap = busy.v[i];
		} else if (busy.v[i] > max_elsewhere) {
			max_elsewhere = busy.v[i];
		}
	}
	struct lat l_busy = latency(busy.v, busy.n);
	progress("done");
	int64_t end_free = 0, all_bytes = db_bytes(cache_path, &end_free);

	/* ---- 6. the file after three full members snapshots ---- */
	int snaps = 1 + th.rounds;
	while (!failed && snaps < 3) {
		char id[32];
		struct snap_run r = {0};
		snprintf(id, sizeof(id), "bench-extra-%d", snaps);
		progress("one more members snapshot (file size after three)...");
		if (run_snapshot(c, &syn, CG_MEMBERS, id, th.version + th.rounds + snaps, &r) != 0)
			failed = 1;
		snaps++;
	}
	settle(c, cache_path);
	int64_t free3 = 0, file3 = db_bytes(cache_path, &free3), live3 = live_bytes(cache_path);

	/* ---- report ---- */
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("\n1. snapshot apply (chunks of %d records; generation not timed)\n", PER_CHUNK);
	printf("  members   %9zu in %7.2f s  %9.0f /s  (%zu chunks, largest %.1f ms, last chunk incl. indexes+swap %.2f s;"
	       " generation %.1f s)\n",
	       mem.records, secs(mem.apply_ns), mem_rate, mem.chunks, (double)mem.max_chunk_ns / 1e6, secs(mem.swap_ns),
	       secs(mem.gen_ns));
	printf("  raw SQLite %8ld in %7.2f s  %9.0f rows/s (WITHOUT ROWID key+doc, %d rows/txn, WAL, synchronous=NORMAL)"
	       "   ratio agent/raw %.2f\n",
	       cf.members, secs(raw_ns), raw_rate, RAW_BATCH, ratio(mem_rate, raw_rate));
	printf("  catalogue %9zu in %7.2f s  %9.0f /s\n", cat.records, secs(cat.apply_ns),
	       per_s((double)cat.records, cat.apply_ns));
	printf("  rules     %9zu in %7.2f s  %9.0f /s\n", rul.records, secs(rul.apply_ns),
	       per_s((double)rul.records, rul.apply_ns));
	printf("2. delta apply: %ld deltas x %ld upserts: %.2f s, %.0f ops/s  (per delta p50 %.2f ms, p99 %.2f ms)\n",
	       cf.deltas, cf.ops_per_delta, secs(delta_ns), delta_rate, delta_lat.p50 / 1000, delta_lat.p99 / 1000);
	printf("3. member card look-ups at %ld members (cache__member_card: select, decrypt, coupons, local purchases, JSON)\n",
	       cf.members);
	print_lat("by id", l_id, "raw PK select", l_raw);
	print_lat("by card", l_card, "raw PK select", l_raw);
	print_lat("by phone (+E.164)", l_phone, "raw PK select", l_raw);
	print_lat("by QR token", l_qr, "ECDSA verify + raw PK select", l_qref);
	printf("4. cache.db after the members snapshot, checkpointed: %lld bytes, %.0f bytes/member"
	       "   raw table %.0f bytes/row   ratio %.2f\n",
	       (long long)cache_bytes, bpm, cf.members ? (double)raw_bytes / (double)cf.members : 0,
	       ratio((double)cache_bytes, (double)raw_bytes));
	printf("   cache.db at the end (members, catalogue, rules; after %d more members snapshot%s): %lld bytes,"
	       " of which %lld free pages (left by the dropped old tables)\n",
	       th.rounds, th.rounds == 1 ? "" : "s", (long long)all_bytes, (long long)end_free);
	printf("   after %d full members snapshots and the idle ticks that follow: %lld bytes (db + WAL), %lld live,"
	       " %lld free   file/live %.2f\n",
	       snaps, (long long)file3, (long long)live3, (long long)free3, ratio((double)file3, (double)live3));
	printf("   after the first members snapshot: file/live %.2f\n", ratio((double)cache_bytes, (double)live1));
	printf("5. capture (scrm_record_purchase, 2 lines, synchronous=FULL)\n");
	print_lat("idle", l_idle, NULL, l_idle);
	print_lat("during snapshot", l_busy, "idle", l_idle);
	printf("  (%d concurrent members snapshot%s, %zu members applied in %.1f s of apply over %.1f s wall: %.0f /s;\n"
	       "   longest swap %.2f s; captures overlapping a swap: %zu, slowest %.1f ms; slowest elsewhere %.1f ms;"
	       " p99.9 %.1f ms)\n",
	       th.rounds, th.rounds == 1 ? "" : "s", th.run.records, secs(th.run.apply_ns), secs(busy_ns),
	       per_s((double)th.run.records, th.run.apply_ns), secs(th.run.swap_ns), n_at_swap,
	       (double)max_at_swap / 1e6, (double)max_elsewhere / 1e6, l_busy.p999 / 1000);
	printf("wall time %.1f s, peak RSS %ld MiB%s\n\n", secs(now_ns() - wall0), (long)ru.ru_maxrss / 1024,
	       failed ? "; FAILED: see the messages above" : "");

	scrm_store_close(so);
	cache__close(c);
	for (size_t i = 0; ids && i < nl; i++) {
		free(ids[i]);
		free(cards ? cards[i] : NULL);
		free(phones ? phones[i] : NULL);
	}
	for (size_t i = 0; qr_ids && i < nq; i++) {
		free(qr_ids[i]);
		free(tokens ? tokens[i] : NULL);
	}
	free(ids), free(cards), free(phones), free(qr_ids), free(tokens), free(lat_ns), free(ref_ns), free(per_delta);
	free(idle.v), free(busy.v), free(busy_at.v);
	bench_work_close(&w, cf.keep, NULL, raw_path);
	printf("FIGURES snapshot_members_per_s=%.0f delta_ops_per_s=%.0f lookup_p99_us=%.0f phone_lookup_p99_us=%.0f "
	       "qr_lookup_p99_us=%.0f capture_p99_us_idle=%.0f capture_p99_us_during_snapshot=%.0f bytes_per_member=%.0f "
	       "cache_file_ratio=%.2f cache_file_ratio_first=%.2f\n",
	       mem_rate, delta_rate, l_id.p99, l_phone.p99, l_qr.p99, l_idle.p99, l_busy.p99, bpm,
	       ratio((double)file3, (double)live3), ratio((double)cache_bytes, (double)live1));
	return failed ? 1 : 0;
}
