/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-eval-reco: how good are the guide's suggestions on real baskets?
 *
 * It replays the retail sample (tests/data/online_retail_sample.csv) split by
 * time. From the training days it builds, as a central system would, the
 * snapshot files a store is seeded with (docs/protocol.md "Snapshot file"):
 *   rules.jsonl      item → item rules mined from the training invoices
 *                    (pairs of distinct SKUs in one invoice, pair count >=
 *                    --min-count): support, confidence, lift;
 *   members.jsonl    one record per training customer: stats and the 20
 *                    newest orders with their SKUs ("recent");
 *   recos.jsonl      central's per-member list (the member's most often
 *                    bought SKUs, reason "repeat") and the store-wide
 *                    bestsellers under "_store";
 *   catalogue.jsonl  every SKU's name and price.
 * It loads them into a fresh store's cache the way `scrmctl cache load`
 * does, then, for each later basket of a known customer with at least two
 * distinct SKUs, asks scrm_recommend() for 10 suggestions given the first
 * item and scores them against the basket's other SKUs:
 *   hit@10  1 if any of them is among the 10, else 0;
 *   MRR     1 / rank of the first one found (0 if none);
 * averaged over the baskets, side by side with
 *   - the same engine for an anonymous basket (rules only, no member),
 *   - a popularity baseline: the 10 SKUs in most training invoices,
 *   - the engine with the "just bought" filter off (policy just_bought_ms 0):
 *     by default a store does not suggest what the member bought in the last
 *     14 days unless central lists it as a "repeat" item; this pass shows what
 *     the filter costs here.
 *
 * Not a test: it asserts nothing about the figures; it fails (exit 1) only
 * on errors (an unreadable CSV line, a snapshot the cache refuses, a call
 * that fails). Deterministic: the same file gives the same output. Times are
 * int64 Unix ms computed from the civil date (UTC), never time_t.
 *
 * The last line is machine-readable (the engine with the store's default
 * policy; the baseline):
 *   FIGURES hit10=N mrr=N baseline_hit10=N baseline_mrr=N baskets=N
 */
#include "cache.h"
#include "harness.h"
#include "retail_csv.h"
#include "sbuf.h"

#include <scrm/scrm.h>

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef SCRM_EVAL_CSV
#define SCRM_EVAL_CSV "tests/data/online_retail_sample.csv"
#endif

#define PROG "scrm-eval-reco"
#define DAY_MS INT64_C(86400000)
#define MAX_KEY 64
#define MAX_NAME 200        /* catalogue name, bytes (cache limit) */
#define RECENT_MAX 20       /* members.recent (protocol limit) */
#define MEMBER_RECOS 20     /* per-member "repeat" list */
#define STORE_RECOS 50      /* "_store" bestsellers (protocol limit) */
#define TOP_N 10            /* suggestions asked for and scored */
#define CSV_FIELDS RCSV_COLS

/* ---- small helpers ------------------------------------------------------ */

static void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if (!q) {
		fprintf(stderr, PROG ": out of memory\n");
		exit(1);
	}
	return q;
}

static char *xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *p = xrealloc(NULL, n);
	memcpy(p, s, n);
	return p;
}

/* Make room for one more element in a growable array. */
static void grow(void **v, size_t *cap, size_t n, size_t elem)
{
	if (n < *cap)
		return;
	size_t nc = *cap ? *cap * 2 : 16;
	*v = xrealloc(*v, nc * elem);
	*cap = nc;
}

/* A record key (protocol.md "Streams"): 1..64 bytes of [A-Za-z0-9_.:>-]. */
static int key_ok(const char *s)
{
	size_t n = strlen(s);
	if (n < 1 || n > MAX_KEY)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
		      c == ':' || c == '>' || c == '-'))
			return 0;
	}
	return 1;
}

/* "YYYY-MM-DD" of a Unix ms time (UTC). */
static void day_text(int64_t ms, char out[16])
{
	int64_t y, m, d, days = ms >= 0 ? ms / DAY_MS : (ms - DAY_MS + 1) / DAY_MS;
	rcsv_civil_from_days(days, &y, &m, &d);
	snprintf(out, 16, "%04d-%02d-%02d", (int)(y % 10000), (int)m, (int)d);
}

/* ---- interned names (SKUs, invoices, customers) ------------------------- */

struct names {
	char **v;       /* owned strings, in order of first appearance */
	size_t n, cap;
	int32_t *slot;  /* open addressing over v, -1 = empty */
	size_t nslot;
};

/* FNV-1a, 32 bits: enough spread for short SKU, invoice and customer codes. */
static uint32_t hash(const char *s)
{
	const uint32_t offset_basis = 2166136261u, prime = 16777619u;
	uint32_t h = offset_basis;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		h ^= *p;
		h *= prime;
	}
	return h;
}

/* Index of s, or -1. */
static long names_find(const struct names *t, const char *s)
{
	if (!t->nslot)
		return -1;
	size_t i = hash(s) & (t->nslot - 1);
	while (t->slot[i] >= 0) {
		if (strcmp(t->v[t->slot[i]], s) == 0)
			return t->slot[i];
		i = (i + 1) & (t->nslot - 1);
	}
	return -1;
}

/* Index of s, added if new (then *added is set). */
static long names_get(struct names *t, const char *s, int *added)
{
	long found = names_find(t, s);
	*added = 0;
	if (found >= 0)
		return found;
	if ((t->n + 1) * 2 > t->nslot) {
		size_t ns = t->nslot ? t->nslot * 2 : 1024;
		free(t->slot);
		t->slot = xrealloc(NULL, ns * sizeof(*t->slot));
		memset(t->slot, 0xff, ns * sizeof(*t->slot));
		t->nslot = ns;
		for (size_t k = 0; k < t->n; k++) {
			size_t j = hash(t->v[k]) & (ns - 1);
			while (t->slot[j] >= 0)
				j = (j + 1) & (ns - 1);
			t->slot[j] = (int32_t)k;
		}
	}
	grow((void **)&t->v, &t->cap, t->n, sizeof(*t->v));
	size_t i = hash(s) & (t->nslot - 1);
	while (t->slot[i] >= 0)
		i = (i + 1) & (t->nslot - 1);
	t->v[t->n] = xstrdup(s);
	t->slot[i] = (int32_t)t->n;
	*added = 1;
	return (long)t->n++;
}

static void names_free(struct names *t)
{
	for (size_t i = 0; i < t->n; i++)
		free(t->v[i]);
	free(t->v);
	free(t->slot);
	memset(t, 0, sizeof(*t));
}

/* ---- the sample, read once ---------------------------------------------- */

struct sku {
	char *name;       /* first non-empty Description, owned; NULL if none */
	int64_t price;    /* first positive UnitPrice, pence; 0 = unknown */
	uint32_t n_train; /* training invoices that contain it */
};

struct invoice {
	int64_t ts;       /* InvoiceDate of its first kept line */
	long cust;        /* index in the customers, -1 = anonymous */
	int64_t total;    /* pence, kept lines */
	uint32_t *skus;   /* distinct SKUs of its kept lines, in file order */
	size_t n_skus, cap_skus;
};

struct customer {
	size_t *train; /* training invoices, oldest first */
	size_t n_train, cap_train;
};

struct data {
	const char *path;
	struct names sku_ids, inv_ids, cust_ids;
	struct sku *skus;
	size_t cap_skus;
	struct invoice *invs;
	size_t cap_invs;
	struct customer *custs;
	size_t cap_custs;
	/* what the reader kept and skipped */
	size_t rows, kept, cancelled, nonpositive, bad_sku;
	int64_t first_ms, last_ms; /* over every data row */
	/* the split */
	int64_t cut_ms;
	size_t n_train_inv, n_test_inv, n_members;
};

static void data_free(struct data *d)
{
	for (size_t i = 0; i < d->sku_ids.n; i++)
		free(d->skus[i].name);
	for (size_t i = 0; i < d->inv_ids.n; i++)
		free(d->invs[i].skus);
	for (size_t i = 0; i < d->cust_ids.n; i++)
		free(d->custs[i].train);
	free(d->skus);
	free(d->invs);
	free(d->custs);
	names_free(&d->sku_ids);
	names_free(&d->inv_ids);
	names_free(&d->cust_ids);
}

static int bad_line(const struct data *d, size_t lineno, const char *what, const char *value)
{
	fprintf(stderr, PROG ": %s:%zu: %s: '%s'\n", d->path, lineno, what, value);
	return -1;
}

/* A description cut to the catalogue's limit, on a UTF-8 boundary. */
static char *name_copy(const char *s)
{
	size_t n = strlen(s);
	if (n > MAX_NAME) {
		n = MAX_NAME;
		while (n && ((unsigned char)s[n] & 0xC0) == 0x80)
			n--;
	}
	char *p = xrealloc(NULL, n + 1);
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

/* One kept line: a sale of `qty` (> 0) of a valid SKU. */
static void keep_line(struct data *d, char **fld, int64_t qty, int64_t pence, int64_t ts)
{
	int added;
	long k = names_get(&d->sku_ids, fld[1], &added);
	if (added) {
		grow((void **)&d->skus, &d->cap_skus, (size_t)k, sizeof(*d->skus));
		memset(&d->skus[k], 0, sizeof(d->skus[k]));
	}
	struct sku *s = &d->skus[k];
	if (!s->name && fld[2][0])
		s->name = name_copy(fld[2]);
	if (!s->price && pence > 0)
		s->price = pence;

	long i = names_get(&d->inv_ids, fld[0], &added);
	if (added) {
		grow((void **)&d->invs, &d->cap_invs, (size_t)i, sizeof(*d->invs));
		struct invoice *v = &d->invs[i];
		memset(v, 0, sizeof(*v));
		v->ts = ts;
		v->cust = -1;
		if (fld[6][0]) {
			long c = names_get(&d->cust_ids, fld[6], &added);
			if (added) {
				grow((void **)&d->custs, &d->cap_custs, (size_t)c, sizeof(*d->custs));
				memset(&d->custs[c], 0, sizeof(d->custs[c]));
			}
			v->cust = c;
		}
	}
	struct invoice *v = &d->invs[i];
	v->total += qty * pence;
	for (size_t j = 0; j < v->n_skus; j++)
		if (v->skus[j] == (uint32_t)k)
			return;
	grow((void **)&v->skus, &v->cap_skus, v->n_skus, sizeof(*v->skus));
	v->skus[v->n_skus++] = (uint32_t)k;
}

/* Read the whole CSV. Cancellations (InvoiceNo "C..."), lines with
 * Quantity <= 0 and SKUs that are not valid record keys are skipped and
 * counted; a line that does not parse is an error naming it. */
static int read_csv(struct data *d)
{
	rcsv csv;
	char **fld = csv.fld;
	int rc = rcsv_open(&csv, d->path), more = 0;

	if (rc) {
		fprintf(stderr, PROG ": %s: %s\n", d->path, strerror(-rc));
		return -1;
	}
	d->first_ms = INT64_MAX;
	d->last_ms = INT64_MIN;
	while (!rc && (more = rcsv_next(&csv)) != 0) {
		int64_t qty = 0, pence = 0, ts = 0;
		size_t lineno = csv.lineno;
		if (more == -EINVAL) {
			rc = bad_line(d, lineno, "not the Online Retail header (InvoiceNo,StockCode,...)", csv.line);
			break;
		}
		if (more < 0)
			break;
		d->rows++;
		int n = csv.n;
		if (n != CSV_FIELDS) {
			fprintf(stderr, PROG ": %s:%zu: expected %d fields (InvoiceNo,StockCode,Description,Quantity,"
					"InvoiceDate,UnitPrice,CustomerID,Country), got %s\n",
				d->path, lineno, CSV_FIELDS, n < 0 ? "an unclosed quote or too many" : "fewer");
			rc = -1;
			break;
		}
		if (!fld[0][0] || strlen(fld[0]) > MAX_KEY)
			rc = bad_line(d, lineno, "InvoiceNo: 1..64 characters expected", fld[0]);
		else if (rcsv_int(fld[3], -100000000, 100000000, &qty))
			rc = bad_line(d, lineno, "Quantity: not an integer", fld[3]);
		else if (rcsv_datetime(fld[4], &ts))
			rc = bad_line(d, lineno, "InvoiceDate: not 'YYYY-MM-DD HH:MM[:SS]' or 'M/D/YYYY H:MM'", fld[4]);
		else if (rcsv_pence(fld[5], &pence) || pence < -INT64_C(1000000000) || pence > INT64_C(1000000000))
			rc = bad_line(d, lineno, "UnitPrice: not a price", fld[5]);
		else if (fld[6][0] && rcsv_customer(fld[6]))
			rc = bad_line(d, lineno, "CustomerID: not a customer number", fld[6]);
		if (rc)
			break;
		if (ts < d->first_ms)
			d->first_ms = ts;
		if (ts > d->last_ms)
			d->last_ms = ts;
		if (fld[0][0] == 'C' || fld[0][0] == 'c') {
			d->cancelled++;
		} else if (qty <= 0 || pence < 0) {
			d->nonpositive++;
		} else if (!key_ok(fld[1])) {
			d->bad_sku++;
		} else {
			d->kept++;
			keep_line(d, fld, qty, pence, ts);
		}
	}
	if (!rc && more == -EIO) {
		fprintf(stderr, PROG ": %s: read error\n", d->path);
		rc = -1;
	}
	if (!rc && csv.lineno == 0) {
		fprintf(stderr, PROG ": %s: empty file\n", d->path);
		rc = -1;
	}
	if (!rc && d->inv_ids.n == 0) {
		fprintf(stderr, PROG ": %s: no purchase lines\n", d->path);
		rc = -1;
	}
	rcsv_close(&csv);
	return rc;
}

static const struct data *sort_data; /* for the qsort comparators below */

static int cmp_train(const void *a, const void *b)
{
	size_t x = *(const size_t *)a, y = *(const size_t *)b;
	int64_t tx = sort_data->invs[x].ts, ty = sort_data->invs[y].ts;
	if (tx != ty)
		return tx < ty ? -1 : 1;
	return x < y ? -1 : x > y;
}

/* Cut at the start of the last `test_days` calendar days of the sample
 * (UTC): invoices before it train, the rest are tested. */
static int split(struct data *d, int test_days)
{
	int64_t first_day = d->first_ms / DAY_MS, last_day = d->last_ms / DAY_MS;
	int64_t cut_day = last_day - test_days + 1;
	if (cut_day <= first_day) {
		char a[16], b[16];
		day_text(d->first_ms, a);
		day_text(d->last_ms, b);
		fprintf(stderr, PROG ": --test-days %d leaves no training day (the sample spans %s..%s)\n", test_days, a,
			b);
		return -1;
	}
	d->cut_ms = cut_day * DAY_MS;
	for (size_t i = 0; i < d->inv_ids.n; i++) {
		struct invoice *v = &d->invs[i];
		if (v->ts >= d->cut_ms) {
			d->n_test_inv++;
			continue;
		}
		d->n_train_inv++;
		for (size_t j = 0; j < v->n_skus; j++)
			d->skus[v->skus[j]].n_train++;
		if (v->cust >= 0) {
			struct customer *c = &d->custs[v->cust];
			grow((void **)&c->train, &c->cap_train, c->n_train, sizeof(*c->train));
			c->train[c->n_train++] = i;
		}
	}
	sort_data = d;
	for (size_t c = 0; c < d->cust_ids.n; c++) {
		if (d->custs[c].n_train > 1)
			qsort(d->custs[c].train, d->custs[c].n_train, sizeof(size_t), cmp_train);
		d->n_members += d->custs[c].n_train > 0;
	}
	if (!d->n_train_inv || !d->n_test_inv) {
		fprintf(stderr, PROG ": %s: the cut leaves %zu training and %zu test invoices\n", d->path, d->n_train_inv,
			d->n_test_inv);
		return -1;
	}
	return 0;
}

/* ---- central's side: the snapshot files --------------------------------- */

/* Unordered SKU pairs seen together in training invoices, counted. */
struct pairs {
	uint64_t *key; /* ((a + 1) << 32) | (b + 1) with a < b; 0 = empty */
	uint32_t *cnt;
	size_t nslot, n;
};

static size_t pair_slot(const struct pairs *p, uint64_t key)
{
	size_t i = (size_t)((key * UINT64_C(0x9E3779B97F4A7C15)) >> 17) & (p->nslot - 1);
	while (p->key[i] && p->key[i] != key)
		i = (i + 1) & (p->nslot - 1);
	return i;
}

static void pairs_add(struct pairs *p, uint32_t a, uint32_t b)
{
	uint64_t key = ((uint64_t)(a < b ? a : b) + 1) << 32 | ((uint64_t)(a < b ? b : a) + 1);
	if ((p->n + 1) * 2 > p->nslot) {
		struct pairs np = {.nslot = p->nslot ? p->nslot * 2 : 1u << 16};
		np.key = calloc(np.nslot, sizeof(*np.key));
		np.cnt = calloc(np.nslot, sizeof(*np.cnt));
		if (!np.key || !np.cnt) {
			fprintf(stderr, PROG ": out of memory\n");
			exit(1);
		}
		for (size_t i = 0; i < p->nslot; i++) {
			if (!p->key[i])
				continue;
			size_t j = pair_slot(&np, p->key[i]);
			np.key[j] = p->key[i];
			np.cnt[j] = p->cnt[i];
		}
		np.n = p->n;
		free(p->key);
		free(p->cnt);
		*p = np;
	}
	size_t i = pair_slot(p, key);
	if (!p->key[i]) {
		p->key[i] = key;
		p->n++;
	}
	p->cnt[i]++;
}

struct rule {
	uint32_t a, b, n; /* if, then, invoices with both */
};

static int cmp_rule(const void *x, const void *y)
{
	const struct rule *r = x, *s = y;
	int c = strcmp(sort_data->sku_ids.v[r->a], sort_data->sku_ids.v[s->a]);
	return c ? c : strcmp(sort_data->sku_ids.v[r->b], sort_data->sku_ids.v[s->b]);
}

/* Most training invoices first; ties by SKU. */
static int cmp_popular(const void *x, const void *y)
{
	uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
	uint32_t na = sort_data->skus[a].n_train, nb = sort_data->skus[b].n_train;
	if (na != nb)
		return na > nb ? -1 : 1;
	return strcmp(sort_data->sku_ids.v[a], sort_data->sku_ids.v[b]);
}

static int cmp_sku_id(const void *x, const void *y)
{
	uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
	return strcmp(sort_data->sku_ids.v[a], sort_data->sku_ids.v[b]);
}

static int cmp_cust_id(const void *x, const void *y)
{
	size_t a = *(const size_t *)x, b = *(const size_t *)y;
	return strcmp(sort_data->cust_ids.v[a], sort_data->cust_ids.v[b]);
}

/* Item → item rules from the training invoices: every ordered pair of
 * distinct SKUs bought together at least min_count times (and whose key
 * fits 64 bytes), sorted by key. *out owned by the caller. */
static size_t mine_rules(const struct data *d, unsigned min_count, struct rule **out)
{
	struct pairs p = {0};
	struct rule *v = NULL;
	size_t n = 0, cap = 0;
	for (size_t i = 0; i < d->inv_ids.n; i++) {
		const struct invoice *iv = &d->invs[i];
		if (iv->ts >= d->cut_ms)
			continue;
		for (size_t x = 0; x < iv->n_skus; x++)
			for (size_t y = x + 1; y < iv->n_skus; y++)
				pairs_add(&p, iv->skus[x], iv->skus[y]);
	}
	for (size_t i = 0; i < p.nslot; i++) {
		if (!p.key[i] || p.cnt[i] < min_count)
			continue;
		uint32_t a = (uint32_t)(p.key[i] >> 32) - 1, b = (uint32_t)(p.key[i] & 0xffffffffu) - 1;
		if (strlen(d->sku_ids.v[a]) + 1 + strlen(d->sku_ids.v[b]) > MAX_KEY)
			continue;
		for (int dir = 0; dir < 2; dir++) {
			grow((void **)&v, &cap, n, sizeof(*v));
			v[n].a = dir ? b : a;
			v[n].b = dir ? a : b;
			v[n].n = p.cnt[i];
			n++;
		}
	}
	free(p.key);
	free(p.cnt);
	sort_data = d;
	if (n > 1)
		qsort(v, n, sizeof(*v), cmp_rule);
	*out = v;
	return n;
}

/* SKUs bought in training, most popular first (the baseline's order and the
 * "_store" list). *out owned by the caller. */
static size_t popular_skus(const struct data *d, uint32_t **out)
{
	uint32_t *v = xrealloc(NULL, (d->sku_ids.n ? d->sku_ids.n : 1) * sizeof(*v));
	size_t n = 0;
	for (size_t i = 0; i < d->sku_ids.n; i++)
		if (d->skus[i].n_train)
			v[n++] = (uint32_t)i;
	sort_data = d;
	if (n > 1)
		qsort(v, n, sizeof(*v), cmp_popular);
	*out = v;
	return n;
}

/* One snapshot file being written: header, then one record per line. */
struct snapfile {
	char path[4200];
	FILE *f;
	sbuf b;
	int failed;
	size_t records;
};

static int snap_open(struct snapfile *s, const char *dir, const char *stream)
{
	memset(s, 0, sizeof(*s));
	sbuf__init(&s->b);
	snprintf(s->path, sizeof(s->path), "%s/%s.jsonl", dir, stream);
	if (!(s->f = fopen(s->path, "w"))) {
		fprintf(stderr, PROG ": %s: %s\n", s->path, strerror(errno));
		return -1;
	}
	sbuf__puts(&s->b, "{\"v\":1,\"type\":\"snapshot_file\",\"stream\":");
	sbuf__jstr(&s->b, stream);
	sbuf__puts(&s->b, ",\"version\":1}");
	return 0;
}

/* Write the line built in s->b (the header or a record) and start the next. */
static void snap_line(struct snapfile *s)
{
	sbuf__putc(&s->b, '\n');
	if (s->b.oom || fwrite(s->b.p, 1, s->b.len, s->f) != s->b.len)
		s->failed = 1;
	sbuf__reset(&s->b);
}

static void snap_record(struct snapfile *s)
{
	snap_line(s);
	s->records++;
}

static int snap_close(struct snapfile *s)
{
	int rc = s->failed || ferror(s->f) ? -1 : 0;
	if (fclose(s->f) != 0)
		rc = -1;
	if (rc)
		fprintf(stderr, PROG ": %s: write failed: %s\n", s->path, s->b.oom ? "out of memory" : strerror(errno));
	sbuf__free(&s->b);
	return rc;
}

static void put_num(sbuf *b, double v)
{
	char t[40];
	snprintf(t, sizeof(t), "%.6g", v);
	sbuf__puts(b, t);
}

static void put_kv_i64(sbuf *b, const char *k, int64_t v, int comma)
{
	if (comma)
		sbuf__putc(b, ',');
	sbuf__jstr(b, k);
	sbuf__putc(b, ':');
	sbuf__i64(b, v);
}

static int write_rules(const struct data *d, const char *dir, const struct rule *r, size_t n)
{
	struct snapfile s;
	double inv = (double)d->n_train_inv;
	if (snap_open(&s, dir, "rules"))
		return -1;
	snap_line(&s);
	for (size_t i = 0; i < n; i++) {
		const char *a = d->sku_ids.v[r[i].a], *b = d->sku_ids.v[r[i].b];
		double conf = (double)r[i].n / (double)d->skus[r[i].a].n_train;
		double lift = conf / ((double)d->skus[r[i].b].n_train / inv);
		char key[2 * MAX_KEY + 2];
		snprintf(key, sizeof(key), "%s>%s", a, b);
		sbuf__puts(&s.b, "{\"key\":");
		sbuf__jstr(&s.b, key);
		sbuf__puts(&s.b, ",\"data\":{\"if\":");
		sbuf__jstr(&s.b, a);
		sbuf__puts(&s.b, ",\"then\":");
		sbuf__jstr(&s.b, b);
		sbuf__puts(&s.b, ",\"support\":");
		put_num(&s.b, (double)r[i].n / inv);
		sbuf__puts(&s.b, ",\"confidence\":");
		put_num(&s.b, conf > 1 ? 1 : conf);
		sbuf__puts(&s.b, ",\"lift\":");
		put_num(&s.b, lift);
		sbuf__puts(&s.b, "}}");
		snap_record(&s);
	}
	return snap_close(&s);
}

/* Customers with training invoices, by id. *out owned by the caller. */
static size_t member_list(const struct data *d, size_t **out)
{
	size_t *v = xrealloc(NULL, (d->cust_ids.n ? d->cust_ids.n : 1) * sizeof(*v)), n = 0;
	for (size_t c = 0; c < d->cust_ids.n; c++)
		if (d->custs[c].n_train)
			v[n++] = c;
	sort_data = d;
	if (n > 1)
		qsort(v, n, sizeof(*v), cmp_cust_id);
	*out = v;
	return n;
}

static int write_members(const struct data *d, const char *dir, const size_t *members, size_t n)
{
	struct snapfile s;
	if (snap_open(&s, dir, "members"))
		return -1;
	snap_line(&s);
	for (size_t m = 0; m < n; m++) {
		const struct customer *c = &d->custs[members[m]];
		const char *id = d->cust_ids.v[members[m]];
		int64_t spend = 0;
		for (size_t k = 0; k < c->n_train; k++)
			spend += d->invs[c->train[k]].total;
		sbuf__puts(&s.b, "{\"key\":");
		sbuf__jstr(&s.b, id);
		sbuf__puts(&s.b, ",\"data\":{\"member_id\":");
		sbuf__jstr(&s.b, id);
		sbuf__puts(&s.b, ",\"stats\":{");
		put_kv_i64(&s.b, "orders", (int64_t)c->n_train, 0);
		put_kv_i64(&s.b, "spend", spend, 1);
		sbuf__puts(&s.b, ",\"currency\":\"GBP\"");
		put_kv_i64(&s.b, "first_purchase_ms", d->invs[c->train[0]].ts, 1);
		put_kv_i64(&s.b, "last_purchase_ms", d->invs[c->train[c->n_train - 1]].ts, 1);
		put_kv_i64(&s.b, "as_of_ms", d->cut_ms, 1);
		sbuf__puts(&s.b, "},\"recent\":[");
		/* newest first: the training list is oldest first */
		for (size_t k = 0; k < c->n_train && k < RECENT_MAX; k++) {
			size_t i = c->train[c->n_train - 1 - k];
			const struct invoice *v = &d->invs[i];
			if (k)
				sbuf__putc(&s.b, ',');
			sbuf__putc(&s.b, '{');
			put_kv_i64(&s.b, "ts", v->ts, 0);
			sbuf__puts(&s.b, ",\"order_id\":");
			sbuf__jstr(&s.b, d->inv_ids.v[i]);
			put_kv_i64(&s.b, "total", v->total, 1);
			sbuf__puts(&s.b, ",\"skus\":[");
			for (size_t j = 0; j < v->n_skus; j++) {
				if (j)
					sbuf__putc(&s.b, ',');
				sbuf__jstr(&s.b, d->sku_ids.v[v->skus[j]]);
			}
			sbuf__puts(&s.b, "]}");
		}
		sbuf__puts(&s.b, "]}}");
		snap_record(&s);
	}
	return snap_close(&s);
}

/* A recos record: `n` SKUs with their counts, best first. */
static void reco_record(struct snapfile *s, const struct data *d, const char *key, const uint32_t *sku,
			const uint32_t *count, size_t n, const char *reason)
{
	sbuf__puts(&s->b, "{\"key\":");
	sbuf__jstr(&s->b, key);
	sbuf__puts(&s->b, ",\"data\":{\"member_id\":");
	sbuf__jstr(&s->b, key);
	sbuf__puts(&s->b, ",\"items\":[");
	for (size_t i = 0; i < n; i++) {
		if (i)
			sbuf__putc(&s->b, ',');
		sbuf__puts(&s->b, "{\"sku\":");
		sbuf__jstr(&s->b, d->sku_ids.v[sku[i]]);
		sbuf__puts(&s->b, ",\"score\":");
		put_num(&s->b, (double)count[i] / (double)count[0]);
		sbuf__puts(&s->b, ",\"reason\":");
		sbuf__jstr(&s->b, reason);
		sbuf__putc(&s->b, '}');
	}
	sbuf__puts(&s->b, "]}}");
	snap_record(s);
}

static const uint32_t *reco_count; /* for cmp_reco */

static int cmp_reco(const void *x, const void *y)
{
	uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
	if (reco_count[a] != reco_count[b])
		return reco_count[a] > reco_count[b] ? -1 : 1;
	return strcmp(sort_data->sku_ids.v[a], sort_data->sku_ids.v[b]);
}

/* Central's lists: each member's most often bought SKUs ("repeat"), and the
 * store's bestsellers under "_store". */
static int write_recos(const struct data *d, const char *dir, const size_t *members, size_t n, const uint32_t *popular,
		       size_t n_popular)
{
	struct snapfile s;
	size_t ns = d->sku_ids.n ? d->sku_ids.n : 1;
	uint32_t *count = calloc(ns, sizeof(*count)), *touched = xrealloc(NULL, ns * sizeof(*touched));
	uint32_t sku[STORE_RECOS], cnt[STORE_RECOS];
	if (!count) {
		fprintf(stderr, PROG ": out of memory\n");
		exit(1);
	}
	if (snap_open(&s, dir, "recos")) {
		free(count);
		free(touched);
		return -1;
	}
	snap_line(&s);
	sort_data = d;
	reco_count = count;
	for (size_t m = 0; m < n; m++) {
		const struct customer *c = &d->custs[members[m]];
		size_t nt = 0, k;
		for (size_t i = 0; i < c->n_train; i++) {
			const struct invoice *v = &d->invs[c->train[i]];
			for (size_t j = 0; j < v->n_skus; j++)
				if (count[v->skus[j]]++ == 0)
					touched[nt++] = v->skus[j];
		}
		qsort(touched, nt, sizeof(*touched), cmp_reco);
		for (k = 0; k < nt && k < MEMBER_RECOS; k++) {
			sku[k] = touched[k];
			cnt[k] = count[touched[k]];
		}
		reco_record(&s, d, d->cust_ids.v[members[m]], sku, cnt, k, "repeat");
		for (size_t i = 0; i < nt; i++)
			count[touched[i]] = 0;
	}
	size_t k;
	for (k = 0; k < n_popular && k < STORE_RECOS; k++) {
		sku[k] = popular[k];
		cnt[k] = d->skus[popular[k]].n_train;
	}
	if (k)
		reco_record(&s, d, "_store", sku, cnt, k, "bestseller");
	free(count);
	free(touched);
	return snap_close(&s);
}

/* Every SKU of the sample (product data, not behaviour: test days too). */
static int write_catalogue(const struct data *d, const char *dir)
{
	struct snapfile s;
	uint32_t *v = xrealloc(NULL, (d->sku_ids.n ? d->sku_ids.n : 1) * sizeof(*v));
	for (size_t i = 0; i < d->sku_ids.n; i++)
		v[i] = (uint32_t)i;
	sort_data = d;
	if (d->sku_ids.n > 1)
		qsort(v, d->sku_ids.n, sizeof(*v), cmp_sku_id);
	if (snap_open(&s, dir, "catalogue")) {
		free(v);
		return -1;
	}
	snap_line(&s);
	for (size_t i = 0; i < d->sku_ids.n; i++) {
		const struct sku *k = &d->skus[v[i]];
		sbuf__puts(&s.b, "{\"key\":");
		sbuf__jstr(&s.b, d->sku_ids.v[v[i]]);
		sbuf__puts(&s.b, ",\"data\":{\"sku\":");
		sbuf__jstr(&s.b, d->sku_ids.v[v[i]]);
		if (k->name) {
			sbuf__puts(&s.b, ",\"name\":");
			sbuf__jstr(&s.b, k->name);
		}
		if (k->price > 0)
			put_kv_i64(&s.b, "price", k->price, 1);
		sbuf__puts(&s.b, ",\"currency\":\"GBP\"}}");
		snap_record(&s);
	}
	free(v);
	return snap_close(&s);
}

/* ---- the store's side: load, then ask ------------------------------------ */

static const char *const stream_files[] = {"members", "catalogue", "recos", "rules"};
#define N_STREAM_FILES (sizeof(stream_files) / sizeof(stream_files[0]))

/* Load the snapshot files into a fresh cache as `scrmctl cache load` does;
 * expect[i] records of stream_files[i] must all be applied. */
static int load_cache(const char *store, const char *keys, const char *dir, const size_t *expect)
{
	cache__options co = {.keys_dir = keys, .create = 1};
	cache *c = NULL;
	int rc = 0;
	if (cache__open(store, &co, &c) != SCRM_OK) {
		fprintf(stderr, PROG ": cache open %s: %s\n", store, scrm_errmsg());
		return -1;
	}
	for (size_t i = 0; i < N_STREAM_FILES && !rc; i++) {
		char path[4200];
		int64_t n = 0, refused = 0;
		int st = -1;
		snprintf(path, sizeof(path), "%s/%s.jsonl", dir, stream_files[i]);
		if (cache__load_file(c, path, NULL, NULL, &n, &refused, &st) != SCRM_OK) {
			fprintf(stderr, PROG ": cache load: %s\n", scrm_errmsg());
			rc = -1;
		} else if (refused || n != (int64_t)expect[i]) {
			fprintf(stderr, PROG ": cache load %s: %lld of %zu records applied, %lld refused%s%s\n", path,
				(long long)n, expect[i], (long long)refused, refused ? ": " : "",
				refused ? cache__refused_detail(c) : "");
			rc = -1;
		}
	}
	cache__close(c);
	return rc;
}

/* The guide policy library readers see (what the daemon would copy from
 * its config); "" = defaults. */
static int set_policy(const char *store, const char *keys, const char *json)
{
	cache__options co = {.keys_dir = keys};
	cache *c = NULL;
	if (cache__open(store, &co, &c) != SCRM_OK || cache__set_policy(c, json) != SCRM_OK) {
		fprintf(stderr, PROG ": cache policy %s: %s\n", store, scrm_errmsg());
		cache__close(c);
		return -1;
	}
	cache__close(c);
	return 0;
}

struct score {
	double hit, rr;      /* sums over baskets */
	size_t n;            /* baskets */
	size_t listed;       /* suggestions returned, summed */
	int64_t just_bought; /* suggestions the engine dropped as just bought */
};

/* Score one ranked list (SKU indices, -1 = unknown SKU) against the basket's
 * other SKUs: the rank of the first one found, 0 if none. */
static int score_list(struct score *sc, const uint32_t *targets, size_t nt, const long *list, size_t nl)
{
	sc->n++;
	sc->listed += nl;
	for (size_t i = 0; i < nl && i < TOP_N; i++)
		for (size_t t = 0; t < nt; t++)
			if (list[i] == (long)targets[t]) {
				sc->hit += 1;
				sc->rr += 1.0 / (double)(i + 1);
				return (int)i + 1;
			}
	return 0;
}

/* scrm_recommend() for one item in the basket; the suggested SKUs into
 * list[TOP_N]. */
static int ask(scrm_cache *h, const struct data *d, const char *member, const char *first, int64_t now, long *list,
	       size_t *nl, struct score *sc)
{
	scrm_line line = {.sku = first, .qty = 1};
	scrm_reco_request rq = {.member_id = member, .basket = &line, .n_basket = 1, .n = TOP_N, .now_ms = now};
	char *json = NULL;
	int rc = scrm_recommend(h, NULL, &rq, &json);
	if (rc != SCRM_OK) {
		fprintf(stderr, PROG ": scrm_recommend(member %s, basket [%s]): %s\n", member ? member : "none", first,
			scrm_errmsg()[0] ? scrm_errmsg() : scrm_strerror(rc));
		return -1;
	}
	cJSON *root = cJSON_Parse(json), *it;
	const cJSON *items = cJSON_GetObjectItemCaseSensitive(root, "items");
	const cJSON *filtered = cJSON_GetObjectItemCaseSensitive(root, "filtered");
	const cJSON *jb = cJSON_GetObjectItemCaseSensitive(filtered, "just_bought");
	rc = cJSON_IsArray(items) ? 0 : -1;
	*nl = 0;
	cJSON_ArrayForEach(it, items)
	{
		const cJSON *s = cJSON_GetObjectItemCaseSensitive(it, "sku");
		if (!cJSON_IsString(s)) {
			rc = -1;
			break;
		}
		if (*nl < TOP_N)
			list[(*nl)++] = names_find(&d->sku_ids, s->valuestring);
	}
	if (rc)
		fprintf(stderr, PROG ": scrm_recommend(member %s, basket [%s]): reply without items[].sku: %.200s\n",
			member ? member : "none", first, json);
	if (cJSON_IsNumber(jb))
		sc->just_bought += (int64_t)jb->valuedouble;
	cJSON_Delete(root);
	scrm_free(json);
	return rc;
}

/* A test basket: a later invoice of a known customer with >= 2 SKUs; the
 * first SKU is given, the others are the targets. */
struct basket {
	size_t inv;
	const char *member, *first;
	const uint32_t *targets;
	size_t n_targets;
	int repeat, ruled;  /* a target the member bought before / a rule names */
	int rank[4];        /* engine, anonymous, baseline, engine without the
			     * just-bought filter: 1..10, 0 = no target listed */
};

struct results {
	struct score engine, anon, base, engine_all;
	size_t repeatable; /* baskets with a target the member bought in training */
	size_t ruled;      /* baskets with a target some rule from the first item names */
};

static int has_rule(const struct data *d, const struct rule *rules, size_t n_rules, uint32_t a, uint32_t b)
{
	struct rule key = {.a = a, .b = b};
	sort_data = d;
	return n_rules && bsearch(&key, rules, n_rules, sizeof(*rules), cmp_rule) != NULL;
}

static size_t test_baskets(const struct data *d, const struct rule *rules, size_t n_rules, struct basket **out,
			   struct results *res)
{
	struct basket *v = NULL;
	size_t n = 0, cap = 0;
	for (size_t i = 0; i < d->inv_ids.n; i++) {
		const struct invoice *iv = &d->invs[i];
		if (iv->ts < d->cut_ms || iv->cust < 0 || !d->custs[iv->cust].n_train || iv->n_skus < 2)
			continue;
		grow((void **)&v, &cap, n, sizeof(*v));
		struct basket *b = &v[n++];
		b->inv = i;
		b->member = d->cust_ids.v[iv->cust];
		b->first = d->sku_ids.v[iv->skus[0]];
		b->targets = iv->skus + 1;
		b->n_targets = iv->n_skus - 1;
		/* What could be found at all, for reading the figures. */
		const struct customer *c = &d->custs[iv->cust];
		int rep = 0, rul = 0;
		for (size_t t = 0; t < b->n_targets; t++) {
			rul |= has_rule(d, rules, n_rules, iv->skus[0], b->targets[t]);
			for (size_t k = 0; k < c->n_train && !rep; k++) {
				const struct invoice *p = &d->invs[c->train[k]];
				for (size_t j = 0; j < p->n_skus && !rep; j++)
					rep = p->skus[j] == b->targets[t];
			}
		}
		b->repeat = rep;
		b->ruled = rul;
		res->repeatable += (size_t)rep;
		res->ruled += (size_t)rul;
	}
	*out = v;
	return n;
}

/* Pass over the baskets with the cache as the store has it. `full`: also
 * the anonymous engine and the baseline. */
static int run_pass(const char *store, const char *keys, const struct data *d, struct basket *bk, size_t n,
		    const uint32_t *popular, size_t n_popular, struct score *engine, int engine_col, struct score *anon,
		    struct score *base)
{
	scrm_cache *h = NULL;
	long list[TOP_N];
	size_t nl;
	int rc = 0;
	if (scrm_cache_open(store, keys, &h) != SCRM_OK) {
		fprintf(stderr, PROG ": scrm_cache_open %s: %s\n", store, scrm_errmsg());
		return -1;
	}
	for (size_t i = 0; i < n && !rc; i++) {
		struct basket *b = &bk[i];
		int64_t now = d->invs[b->inv].ts;
		if ((rc = ask(h, d, b->member, b->first, now, list, &nl, engine)))
			break;
		b->rank[engine_col] = score_list(engine, b->targets, b->n_targets, list, nl);
		if (!anon)
			continue;
		if ((rc = ask(h, d, NULL, b->first, now, list, &nl, anon)))
			break;
		b->rank[1] = score_list(anon, b->targets, b->n_targets, list, nl);
		nl = 0;
		long first = names_find(&d->sku_ids, b->first);
		for (size_t k = 0; k < n_popular && nl < TOP_N; k++)
			if ((long)popular[k] != first)
				list[nl++] = (long)popular[k];
		b->rank[2] = score_list(base, b->targets, b->n_targets, list, nl);
	}
	scrm_cache_close(h);
	return rc;
}

/* ---- main ----------------------------------------------------------------- */

struct opts {
	const char *csv, *work;
	int test_days;
	unsigned min_count;
	int keep, verbose;
};

static void usage(FILE *to)
{
	fprintf(to,
		"Usage: " PROG " [--csv FILE] [--test-days N] [--min-count N] [--work DIR] [--keep] [--verbose]\n"
		"  Replays the retail sample: rules, members and central's lists from the earlier days,\n"
		"  then hit@10 and MRR of scrm_recommend() on each later basket of a known customer\n"
		"  given its first item, against a popularity baseline from the same days.\n"
		"  --csv FILE      the Online Retail CSV (default $SCRM_DATA_DIR/online_retail_sample.csv,\n"
		"                  else %s)\n"
		"  --test-days N   test on the last N calendar days of the sample (default 2)\n"
		"  --min-count N   keep rules whose pair is in at least N training invoices (default 2)\n"
		"  --work DIR      write snapshot files, store and keys there (created if missing;\n"
		"                  DIR/store and DIR/keys must not exist); default a fresh directory\n"
		"                  under $TMPDIR or /tmp\n"
		"  --keep          keep them afterwards (default: removed)\n"
		"  --verbose       one line per basket: the rank of its first target in each list\n"
		"The last line: FIGURES hit10=N mrr=N baseline_hit10=N baseline_mrr=N baskets=N\n",
		SCRM_EVAL_CSV);
}

static int parse_args(int argc, char **argv, struct opts *o, char *csv_buf, size_t cap)
{
	const char *data = getenv("SCRM_DATA_DIR");
	if (data && *data) {
		if ((size_t)snprintf(csv_buf, cap, "%s/online_retail_sample.csv", data) >= cap) {
			fprintf(stderr, PROG ": SCRM_DATA_DIR too long\n");
			return -1;
		}
		o->csv = csv_buf;
	} else {
		o->csv = SCRM_EVAL_CSV;
	}
	o->test_days = 2;
	o->min_count = 2;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		int64_t n;
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			exit(0);
		} else if (strcmp(a, "--keep") == 0) {
			o->keep = 1;
			continue;
		} else if (strcmp(a, "--verbose") == 0 || strcmp(a, "-v") == 0) {
			o->verbose = 1;
			continue;
		}
		if (strcmp(a, "--csv") != 0 && strcmp(a, "--work") != 0 && strcmp(a, "--test-days") != 0 &&
		    strcmp(a, "--min-count") != 0) {
			fprintf(stderr, PROG ": unknown option '%s'\n", a);
			usage(stderr);
			return -1;
		}
		if (!v || !*v) {
			fprintf(stderr, PROG ": %s: a value is needed\n", a);
			usage(stderr);
			return -1;
		}
		if (strcmp(a, "--csv") == 0) {
			o->csv = v;
		} else if (strcmp(a, "--work") == 0) {
			o->work = v;
		} else if (strcmp(a, "--test-days") == 0) {
			if (rcsv_int(v, 1, 3650, &n)) {
				fprintf(stderr, PROG ": --test-days: 1..3650 expected, not '%s'\n", v);
				return -1;
			}
			o->test_days = (int)n;
		} else if (strcmp(a, "--min-count") == 0) {
			if (rcsv_int(v, 1, 1000000, &n)) {
				fprintf(stderr, PROG ": --min-count: 1..1000000 expected, not '%s'\n", v);
				return -1;
			}
			o->min_count = (unsigned)n;
		}
		i++;
	}
	return 0;
}

static double avg(double sum, size_t n)
{
	return n ? sum / (double)n : 0.0;
}

static void print_row(const char *what, const struct score *s, int filtered)
{
	printf("  %-36s %7.4f %7.4f %9.1f", what, avg(s->hit, s->n), avg(s->rr, s->n), avg((double)s->listed, s->n));
	if (filtered)
		printf(" %12.1f", avg((double)s->just_bought, s->n));
	printf("\n");
}

static double pct(size_t a, size_t b)
{
	return b ? 100.0 * (double)a / (double)b : 0.0;
}

int main(int argc, char **argv)
{
	struct opts o = {0};
	struct data d = {0};
	struct results res = {0};
	struct rule *rules = NULL;
	struct basket *bk = NULL;
	uint32_t *popular = NULL;
	size_t *members = NULL, n_rules = 0, n_popular = 0, n_members = 0, n_bk = 0;
	char csv_buf[4200], store[4300] = "", keys[4300] = "", path[4300], *tmp = NULL;
	const char *work = NULL;
	int made_work = 0, rc = 1;

	if (parse_args(argc, argv, &o, csv_buf, sizeof(csv_buf)))
		return 1;
	d.path = o.csv;
	if (read_csv(&d) || split(&d, o.test_days))
		goto cleanup;

	/* The work directory: ours alone, whatever --work says. */
	if (o.work) {
		if (mkdir(o.work, 0700) == 0) {
			made_work = 1;
		} else if (errno != EEXIST) {
			fprintf(stderr, PROG ": --work %s: %s\n", o.work, strerror(errno));
			goto cleanup;
		}
		work = o.work;
	} else {
		if (!(tmp = th_tmpdir("eval-reco"))) {
			fprintf(stderr, PROG ": cannot create a work directory under $TMPDIR or /tmp\n");
			goto cleanup;
		}
		work = tmp;
		made_work = 1;
	}
	if (strlen(work) > 4000) {
		fprintf(stderr, PROG ": --work: path too long\n");
		goto cleanup;
	}
	snprintf(store, sizeof(store), "%s/store", work);
	snprintf(keys, sizeof(keys), "%s/keys", work);
	if (!made_work && (access(store, F_OK) == 0 || access(keys, F_OK) == 0)) {
		fprintf(stderr, PROG ": %s/store or %s/keys exists: give --work an empty directory\n", work, work);
		made_work = 0;
		work = NULL; /* not ours: leave it alone */
		goto cleanup;
	}

	/* Central: snapshot files from the training days. */
	n_rules = mine_rules(&d, o.min_count, &rules);
	n_popular = popular_skus(&d, &popular);
	n_members = member_list(&d, &members);
	size_t expect[N_STREAM_FILES] = {n_members, d.sku_ids.n, n_members + (n_popular ? 1 : 0), n_rules};
	if (write_members(&d, work, members, n_members) || write_catalogue(&d, work) ||
	    write_recos(&d, work, members, n_members, popular, n_popular) || write_rules(&d, work, rules, n_rules))
		goto cleanup;

	/* The store: load them, then ask. */
	if (load_cache(store, keys, work, expect))
		goto cleanup;
	n_bk = test_baskets(&d, rules, n_rules, &bk, &res);
	if (run_pass(store, keys, &d, bk, n_bk, popular, n_popular, &res.engine, 0, &res.anon, &res.base) ||
	    set_policy(store, keys, "{\"just_bought_ms\":0}") ||
	    run_pass(store, keys, &d, bk, n_bk, popular, n_popular, &res.engine_all, 3, NULL, NULL))
		goto cleanup;

	/* Report. */
	char first[16], last[16], cut[16], test_last[16];
	size_t known_test = 0, small = 0;
	for (size_t i = 0; i < d.inv_ids.n; i++) {
		const struct invoice *iv = &d.invs[i];
		if (iv->ts >= d.cut_ms && iv->cust >= 0 && d.custs[iv->cust].n_train) {
			known_test++;
			small += iv->n_skus < 2;
		}
	}
	day_text(d.first_ms, first);
	day_text(d.cut_ms - 1, last);
	day_text(d.cut_ms, cut);
	day_text(d.last_ms, test_last);
	printf("scrm-eval-reco: %s\n", d.path);
	printf("  rows %zu: kept %zu; skipped %zu cancellation, %zu quantity <= 0, %zu SKU not a record key\n", d.rows,
	       d.kept, d.cancelled, d.nonpositive, d.bad_sku);
	printf("  cut %sT00:00Z (--test-days %d): train %s..%s, test %s..%s (calendar days, UTC)\n", cut, o.test_days,
	       first, last, cut, test_last);
	printf("  training: %zu invoices, %zu customers (members), %zu SKUs, %zu rules (pair in >= %u invoices)\n",
	       d.n_train_inv, d.n_members, n_popular, n_rules, o.min_count);
	printf("  test: %zu invoices, %zu of known customers, %zu of them with >= 2 SKUs = baskets\n", d.n_test_inv,
	       known_test, known_test - small);
	printf("  baskets with a target the member bought in training: %zu (%.1f%%); with a target a rule from\n"
	       "  the first item names: %zu (%.1f%%)\n",
	       res.repeatable, pct(res.repeatable, n_bk), res.ruled, pct(res.ruled, n_bk));
	/* The temporary directory's name would make the output differ per run. */
	if (o.keep || o.work)
		printf("  snapshot files, store and keys in %s%s\n", work, o.keep ? " (kept)" : " (removed at exit)");
	printf("\n");
	if (o.verbose) {
		printf("  %-8s %-8s %-8s %7s %6s %5s  %6s %5s %8s %9s\n", "invoice", "member", "first", "targets",
		       "repeat", "rule", "engine", "anon", "baseline", "jb off");
		for (size_t i = 0; i < n_bk; i++) {
			const struct basket *b = &bk[i];
			printf("  %-8s %-8s %-8s %7zu %6s %5s  %6d %5d %8d %9d\n", d.inv_ids.v[b->inv], b->member, b->first,
			       b->n_targets, b->repeat ? "yes" : "-", b->ruled ? "yes" : "-", b->rank[0], b->rank[1],
			       b->rank[2], b->rank[3]);
		}
		printf("  (rank of the first target in each list of 10, 0 = none listed)\n\n");
	}
	printf("  %-36s %7s %7s %9s %12s\n", "10 suggestions given the first item", "hit@10", "MRR", "avg list",
	       "just bought");
	print_row("engine: member + basket", &res.engine, 1);
	print_row("engine: anonymous basket (rules)", &res.anon, 0);
	print_row("popularity baseline (training days)", &res.base, 0);
	printf("  (avg list: suggestions returned; just bought: dropped per request as bought by the member\n"
	       "  within the default 14 days and not a \"repeat\" item of central's list)\n\n");
	printf("engine with just_bought off: hit10=%.4f mrr=%.4f (avg list %.1f)\n", avg(res.engine_all.hit, n_bk),
	       avg(res.engine_all.rr, n_bk), avg((double)res.engine_all.listed, n_bk));
	printf("FIGURES hit10=%.4f mrr=%.4f baseline_hit10=%.4f baseline_mrr=%.4f baskets=%zu\n",
	       avg(res.engine.hit, n_bk), avg(res.engine.rr, n_bk), avg(res.base.hit, n_bk), avg(res.base.rr, n_bk),
	       n_bk);
	fflush(stdout);
	rc = ferror(stdout) ? 1 : 0;

cleanup:
	if (work && !o.keep) {
		if (made_work) {
			th_rmtree(work);
		} else {
			for (size_t i = 0; i < N_STREAM_FILES; i++) {
				snprintf(path, sizeof(path), "%s/%s.jsonl", work, stream_files[i]);
				unlink(path);
			}
			if (access(store, F_OK) == 0)
				th_rmtree(store);
			if (access(keys, F_OK) == 0)
				th_rmtree(keys);
		}
	}
	free(tmp);
	free(bk);
	free(rules);
	free(popular);
	free(members);
	data_free(&d);
	return rc;
}
