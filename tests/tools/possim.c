/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-pos-sim: a POS stand-in that records events through libscrm exactly
 * as a till would. Either synthetic purchases (--count N) or a replay of the
 * retail sample (--csv FILE, read with tests/support/retail_csv): each
 * invoice becomes a purchase, each "C..." cancellation a return, prices
 * converted to minor units without floating point. With --receipts every
 * successful capture prints one line
 *   ok <seq> <event_id> <order_id>
 * flushed before the next capture starts, so a test that kills this process
 * knows exactly which captures returned success.
 */
#include <scrm/scrm.h>

#include "retail_csv.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct opts {
	const char *store, *device, *csv, *prefix, *day;
	long count;
	double speed; /* replay: sample seconds per real second; 0 = as fast as possible */
	long rate;    /* synthetic: events per second, 0 = as fast as possible */
	int receipts;
};

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: scrm-pos-sim --store DIR --device ID (--count N | --csv FILE) [options]\n"
		"  --count N        record N synthetic purchases\n"
		"  --csv FILE       replay the retail sample: invoices -> purchases, C-invoices -> returns\n"
		"  --day YYYY-MM-DD replay only that day of the sample\n"
		"  --speed X        replay pacing: X sample seconds per real second (default: no pacing)\n"
		"  --rate N         synthetic pacing: N events per second (default: no pacing)\n"
		"  --prefix P       order id prefix for synthetic purchases (default \"S\")\n"
		"  --receipts       print 'ok <seq> <id> <order>' per successful capture, flushed\n");
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int64_t ms)
{
	if (ms <= 0)
		return;
	struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void receipt(const struct opts *o, const scrm_receipt *r, const char *order)
{
	if (o->receipts) {
		printf("ok %" PRId64 " %s %s\n", r->seq, r->event_id, order);
		fflush(stdout);
	}
}

static int synthetic(scrm_store *st, const struct opts *o, long *ok, long *bad)
{
	static const char *const skus[] = {"85123A", "71053", "84406B", "84029G", "84029E", "22752", "21730"};
	static const char *const pay[] = {"card", "cash", "mobile"};
	int64_t t0 = now_ms();
	for (long i = 0; i < o->count; i++) {
		char order[64];
		scrm_line lines[3];
		int64_t total = 0;
		size_t n = (size_t)(i % 3) + 1;
		for (size_t k = 0; k < n; k++) {
			lines[k].sku = skus[(size_t)(i + (long)k) % 7];
			lines[k].qty = (int64_t)(k + 1);
			lines[k].unit_price = 100 + (int64_t)((i * 37 + (long)k * 11) % 900);
			lines[k].discount = 0;
			total += lines[k].qty * lines[k].unit_price;
		}
		snprintf(order, sizeof(order), "%s-%ld", o->prefix, i + 1);
		char member[16];
		snprintf(member, sizeof(member), "%ld", 12000 + i % 500);
		scrm_purchase p = {.order_id = order, .lines = lines, .n_lines = n, .total = total,
				   .currency = "GBP", .payment = pay[i % 3], .member_id = i % 2 ? member : NULL};
		scrm_receipt r;
		if (scrm_record_purchase(st, &p, &r) == SCRM_OK) {
			(*ok)++;
			receipt(o, &r, order);
		} else {
			(*bad)++;
			fprintf(stderr, "scrm-pos-sim: order %s refused: %s\n", order, scrm_errmsg());
		}
		if (o->rate > 0)
			sleep_ms(t0 + (i + 1) * 1000 / o->rate - now_ms());
	}
	return 0;
}

struct invoice {
	char no[32], member[32], date[32];
	/* Room beyond the library's 1,000-line limit on purpose: an oversize
	 * basket must reach scrm_record_* and be refused loudly, not be
	 * silently truncated here. */
	scrm_line lines[2000];
	char skus[2000][24];
	size_t n;
};

static int64_t sample_secs(const char *date)
{
	/* "2010-12-01 08:26:00" → seconds within the sample (days*86400 + hh:mm) */
	int y, mo, d, h, mi, se = 0;
	if (sscanf(date, "%d-%d-%d %d:%d:%d", &y, &mo, &d, &h, &mi, &se) < 5)
		return 0;
	return (int64_t)d * 86400 + h * 3600 + mi * 60 + se;
}

static void flush_invoice(scrm_store *st, const struct opts *o, struct invoice *iv, long *ok, long *bad)
{
	static const char *const pay[] = {"card", "cash", "mobile"};
	scrm_receipt r;
	int rc;
	if (iv->n == 0)
		return;
	int64_t total = 0;
	for (size_t i = 0; i < iv->n; i++)
		total += iv->lines[i].qty * iv->lines[i].unit_price;
	unsigned h = 0;
	for (const char *c = iv->no; *c; c++)
		h = h * 31u + (unsigned char)*c;
	if (iv->no[0] == 'C') {
		scrm_return rt = {.return_id = iv->no, .order_id = iv->no + 1, .lines = iv->lines, .n_lines = iv->n,
				  .total = total, .currency = "GBP", .refund_method = pay[h % 3],
				  .member_id = iv->member[0] ? iv->member : NULL};
		rc = scrm_record_return(st, &rt, &r);
	} else {
		scrm_purchase p = {.order_id = iv->no, .lines = iv->lines, .n_lines = iv->n, .total = total,
				   .currency = "GBP", .payment = pay[h % 3], .member_id = iv->member[0] ? iv->member : NULL};
		rc = scrm_record_purchase(st, &p, &r);
	}
	if (rc == SCRM_OK) {
		(*ok)++;
		receipt(o, &r, iv->no);
	} else {
		(*bad)++;
		fprintf(stderr, "scrm-pos-sim: invoice %s refused: %s\n", iv->no, scrm_errmsg());
	}
	iv->n = 0;
}

static int replay(scrm_store *st, const struct opts *o, long *ok, long *bad)
{
	struct invoice *iv = calloc(1, sizeof(*iv));
	int64_t t0 = now_ms(), s0 = -1;
	rcsv r;
	int rc = rcsv_open(&r, o->csv);
	if (rc || !iv) {
		fprintf(stderr, "scrm-pos-sim: --csv %s: %s\n", o->csv, strerror(rc ? -rc : ENOMEM));
		free(iv);
		rcsv_close(&r);
		return 1;
	}
	while ((rc = rcsv_next(&r)) == 1) {
		char **fld = r.fld;
		int64_t qty, price;
		if (r.n != RCSV_COLS)
			continue;
		if (o->day && strncmp(fld[RCSV_DATE], o->day, strlen(o->day)) != 0)
			continue;
		if (strcmp(fld[RCSV_INVOICE], iv->no) != 0) {
			flush_invoice(st, o, iv, ok, bad);
			snprintf(iv->no, sizeof(iv->no), "%s", fld[RCSV_INVOICE]);
			snprintf(iv->date, sizeof(iv->date), "%s", fld[RCSV_DATE]);
			/* "17850.0" → "17850" */
			snprintf(iv->member, sizeof(iv->member), "%s", fld[RCSV_CUSTOMER]);
			char *dot = strchr(iv->member, '.');
			if (dot)
				*dot = '\0';
			if (o->speed > 0) {
				int64_t s = sample_secs(iv->date);
				if (s0 < 0)
					s0 = s;
				sleep_ms(t0 + (int64_t)((double)(s - s0) * 1000.0 / o->speed) - now_ms());
			}
		}
		/* a line with no quantity or a negative price is no sale */
		if (rcsv_int(fld[RCSV_QTY], -INT64_MAX, INT64_MAX, &qty) != 0 || qty == 0 ||
		    fld[RCSV_PRICE][0] == '-' || rcsv_pence(fld[RCSV_PRICE], &price) != 0 || iv->n >= 2000)
			continue;
		size_t k = iv->n++;
		snprintf(iv->skus[k], sizeof(iv->skus[k]), "%s", fld[RCSV_SKU]);
		iv->lines[k] = (scrm_line){.sku = iv->skus[k], .qty = qty < 0 ? -qty : qty, .unit_price = price, .discount = 0};
	}
	flush_invoice(st, o, iv, ok, bad);
	if (rc < 0)
		fprintf(stderr, "scrm-pos-sim: --csv %s: line %zu: %s\n", o->csv, r.lineno,
			rc == -EINVAL ? "not the Online Retail header" : strerror(-rc));
	rcsv_close(&r);
	free(iv);
	return rc < 0 || r.lineno == 0; /* an error, or not even a header */
}

int main(int argc, char **argv)
{
	struct opts o = {.prefix = "S"};
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--help") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(a, "--receipts") == 0) {
			o.receipts = 1;
		} else if (v && strcmp(a, "--store") == 0) {
			o.store = v, i++;
		} else if (v && strcmp(a, "--device") == 0) {
			o.device = v, i++;
		} else if (v && strcmp(a, "--csv") == 0) {
			o.csv = v, i++;
		} else if (v && strcmp(a, "--day") == 0) {
			o.day = v, i++;
		} else if (v && strcmp(a, "--prefix") == 0) {
			o.prefix = v, i++;
		} else if (v && strcmp(a, "--count") == 0) {
			o.count = strtol(v, NULL, 10), i++;
		} else if (v && strcmp(a, "--rate") == 0) {
			o.rate = strtol(v, NULL, 10), i++;
		} else if (v && strcmp(a, "--speed") == 0) {
			o.speed = strtod(v, NULL), i++;
		} else {
			fprintf(stderr, "scrm-pos-sim: unknown or incomplete option '%s'\n", a);
			usage(stderr);
			return 2;
		}
	}
	if (!o.store || (!o.csv && o.count <= 0)) {
		usage(stderr);
		return 2;
	}
	scrm_store *st;
	scrm_store_options so = {.device_id = o.device};
	if (scrm_store_open(o.store, &so, &st) != SCRM_OK) {
		fprintf(stderr, "scrm-pos-sim: %s\n", scrm_errmsg());
		return 1;
	}
	long ok = 0, bad = 0;
	int64_t t0 = now_ms();
	int rc = o.csv ? replay(st, &o, &ok, &bad) : synthetic(st, &o, &ok, &bad);
	int64_t dt = now_ms() - t0;
	fprintf(stderr, "scrm-pos-sim: recorded=%ld refused=%ld elapsed_ms=%" PRId64 "\n", ok, bad, dt);
	scrm_store_close(st);
	return rc;
}
