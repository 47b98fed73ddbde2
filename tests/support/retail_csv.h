/* SPDX-License-Identifier: Apache-2.0 */
/*
 * retail_csv: the one reader of the UCI Online Retail CSV
 * (tests/data/online_retail_sample.csv) for the test tools that build on it
 * (scrm-cachegen's retail fixtures, scrm-eval-reco): the line loop with its
 * header check, RFC 4180 field splitting, and the parsers of the columns'
 * spellings. What a tool does with a row — skip it and count, or stop and
 * name the line — stays the tool's.
 */
#ifndef SCRM_RETAIL_CSV_H
#define SCRM_RETAIL_CSV_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* The columns, in the file's order. */
enum rcsv_col {
	RCSV_INVOICE, /* InvoiceNo: "536365", a cancellation "C536379" */
	RCSV_SKU,     /* StockCode */
	RCSV_DESC,    /* Description (may hold commas, quoted) */
	RCSV_QTY,     /* Quantity: an integer, negative on cancellations */
	RCSV_DATE,    /* InvoiceDate */
	RCSV_PRICE,   /* UnitPrice: "2.55" */
	RCSV_CUSTOMER, /* CustomerID: "17850" or "17850.0", or empty */
	RCSV_COUNTRY, /* Country */
	RCSV_COLS
};

typedef struct rcsv {
	const char *path;
	size_t lineno; /* the line just read (1 = the header) */
	/* The row just read: n fields (RCSV_COLS for a well-formed row,
	 * trimmed of blanks; fewer, or -1 for an unclosed quote or too many). */
	char *fld[RCSV_COLS + 1];
	int n;
	FILE *f;
	char *line;
	size_t cap;
} rcsv;

/* 0, or -errno if path cannot be opened. */
int rcsv_open(rcsv *r, const char *path);
/* The next non-empty data line into r->fld / r->n: 1; 0 at the end of the
 * file; -EINVAL if line 1 is not the Online Retail header; -EIO on a read
 * error. An empty file ends at once with r->lineno 0. */
int rcsv_next(rcsv *r);
void rcsv_close(rcsv *r);

/* Split one CSV line (no line break) into at most `max` fields, in place,
 * with RFC 4180 quoting ("a, b", "say ""hi"""). The number of fields, or -1
 * if a quote is left open or there are more than `max`. */
int rcsv_split(char *line, char **fields, int max);
/* Blanks (and a stray CR) off both ends, in place. */
void rcsv_trim(char *s);
/* A decimal integer in [lo, hi] with nothing after it. 0 or -1. */
int rcsv_int(const char *s, int64_t lo, int64_t hi, int64_t *out);
/* "2.55" → 255 pence without floating point (a third decimal rounds half
 * up). 0 or -1. */
int rcsv_pence(const char *s, int64_t *out);
/* An InvoiceDate as UTC Unix ms. Both spellings of the sample are taken:
 * "2010-12-01 08:26[:00]" (this copy) and "12/1/2010 8:26" (the UCI
 * original, m/d/yyyy h:mm). 0 or -1. */
int rcsv_datetime(const char *s, int64_t *ms);
/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * algorithm) and back: no time_t, no time zone. */
int64_t rcsv_days_from_civil(int64_t y, int64_t m, int64_t d);
void rcsv_civil_from_days(int64_t z, int64_t *y, int64_t *m, int64_t *d);
/* CustomerID as the sample spells it ("17850" or "17850.0") → "17850", in
 * place: 1..64 digits. 0 or -1. */
int rcsv_customer(char *s);

#endif
