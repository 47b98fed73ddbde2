/* SPDX-License-Identifier: Apache-2.0 */
/*
 * retail_csv: reading the UCI Online Retail CSV (see retail_csv.h) — the
 * line loop, the RFC 4180 splitter and the parsers of the columns.
 */
#include "retail_csv.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

int rcsv_open(rcsv *r, const char *path)
{
	memset(r, 0, sizeof(*r));
	r->path = path;
	r->f = fopen(path, "r");
	return r->f ? 0 : -errno;
}

int rcsv_next(rcsv *r)
{
	ssize_t len;
	while ((len = getline(&r->line, &r->cap, r->f)) >= 0) {
		char *line = r->line;
		r->lineno++;
		while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			line[--len] = '\0';
		if (r->lineno == 1) {
			if (strncmp(line, "InvoiceNo,StockCode,", 20) != 0 &&
			    strncmp(line, "\xef\xbb\xbfInvoiceNo,StockCode,", 23) != 0)
				return -EINVAL;
			continue;
		}
		if (!len)
			continue;
		r->n = rcsv_split(line, r->fld, RCSV_COLS + 1);
		for (int k = 0; r->n == RCSV_COLS && k < RCSV_COLS; k++)
			rcsv_trim(r->fld[k]);
		return 1;
	}
	return ferror(r->f) ? -EIO : 0;
}

void rcsv_close(rcsv *r)
{
	if (r->f)
		fclose(r->f);
	free(r->line);
	r->f = NULL;
	r->line = NULL;
}

int rcsv_split(char *line, char **fields, int max)
{
	int n = 0;
	char *r = line, *w;
	for (;;) {
		if (n == max)
			return -1;
		fields[n++] = w = r;
		if (*r == '"') {
			r++;
			for (;;) {
				if (!*r)
					return -1;
				if (*r == '"') {
					if (r[1] == '"') {
						*w++ = '"';
						r += 2;
						continue;
					}
					r++;
					break;
				}
				*w++ = *r++;
			}
			if (*r && *r != ',')
				return -1;
		} else {
			while (*r && *r != ',')
				*w++ = *r++;
		}
		if (!*r) {
			*w = '\0';
			return n;
		}
		*w = '\0';
		r++;
	}
}

void rcsv_trim(char *s)
{
	size_t n = strlen(s), i = 0;
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
		s[--n] = '\0';
	while (s[i] == ' ' || s[i] == '\t')
		i++;
	if (i)
		memmove(s, s + i, n - i + 1);
}

int rcsv_int(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
	char *end;
	long long v;
	if (!*s)
		return -1;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || *end || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

int rcsv_pence(const char *s, int64_t *out)
{
	int64_t v = 0;
	int neg = 0, digits = 0, dec = 0, round_up = 0;
	if (*s == '-')
		neg = 1, s++;
	for (; *s >= '0' && *s <= '9'; s++, digits++) {
		if (v > INT64_C(90000000000000))
			return -1;
		v = v * 10 + (*s - '0');
	}
	v *= 100;
	if (*s == '.') {
		s++;
		for (; *s >= '0' && *s <= '9'; s++, digits++, dec++) {
			if (dec == 0)
				v += 10 * (*s - '0');
			else if (dec == 1)
				v += *s - '0';
			else if (dec == 2)
				round_up = *s >= '5';
		}
	}
	if (*s || !digits)
		return -1;
	v += round_up;
	*out = neg ? -v : v;
	return 0;
}

int64_t rcsv_days_from_civil(int64_t y, int64_t m, int64_t d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	int64_t yoe = y - era * 400;
	int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

/* The inverse of rcsv_days_from_civil, found by stepping it rather than by
 * Hinnant's closed form (which the agent's enroll.c carries): a year guess
 * from the mean year length, corrected a year at a time, then the month. */
void rcsv_civil_from_days(int64_t z, int64_t *y, int64_t *m, int64_t *d)
{
	int64_t year = 1970 + z / 366, month = 1;
	while (rcsv_days_from_civil(year, 1, 1) > z)
		year--;
	while (rcsv_days_from_civil(year + 1, 1, 1) <= z)
		year++;
	while (month < 12 && rcsv_days_from_civil(year, month + 1, 1) <= z)
		month++;
	*y = year;
	*m = month;
	*d = z - rcsv_days_from_civil(year, month, 1) + 1;
}

static int rcsv__digits(const char **p, int maxd, int64_t *out)
{
	int64_t v = 0;
	int n = 0;
	while (n < maxd && **p >= '0' && **p <= '9') {
		v = v * 10 + (**p - '0');
		(*p)++;
		n++;
	}
	*out = v;
	return n ? 0 : -1;
}

int rcsv_datetime(const char *s, int64_t *ms)
{
	int64_t y, mo, d, h, mi, sec = 0;
	const char *p = s;
	if (strchr(s, '/')) {
		if (rcsv__digits(&p, 2, &mo) || *p++ != '/' || rcsv__digits(&p, 2, &d) || *p++ != '/' || rcsv__digits(&p, 4, &y))
			return -1;
	} else {
		if (rcsv__digits(&p, 4, &y) || *p++ != '-' || rcsv__digits(&p, 2, &mo) || *p++ != '-' || rcsv__digits(&p, 2, &d))
			return -1;
	}
	if ((*p != ' ' && *p != 'T') || (p++, rcsv__digits(&p, 2, &h)) || *p++ != ':' || rcsv__digits(&p, 2, &mi))
		return -1;
	if (*p == ':' && (p++, rcsv__digits(&p, 2, &sec)))
		return -1;
	if (*p)
		return -1;
	if (y < 1970 || y > 9999 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
		return -1;
	*ms = ((rcsv_days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60000 + sec * 1000;
	return 0;
}

int rcsv_customer(char *s)
{
	char *dot = strchr(s, '.');
	if (dot) {
		for (char *q = dot + 1; *q; q++)
			if (*q != '0')
				return -1;
		*dot = '\0';
	}
	if (!*s)
		return -1;
	for (char *q = s; *q; q++)
		if (*q < '0' || *q > '9')
			return -1;
	return strlen(s) <= 64 ? 0 : -1; /* a record key: 1..64 bytes */
}
