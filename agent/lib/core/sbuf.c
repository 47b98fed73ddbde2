/* SPDX-License-Identifier: Apache-2.0 */
/* sbuf: growable buffer for JSON emission (see sbuf.h). */
#include "sbuf.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sbuf__init(sbuf *b)
{
	memset(b, 0, sizeof(*b));
}

void sbuf__free(sbuf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

void sbuf__reset(sbuf *b)
{
	b->len = 0;
	b->oom = 0;
	if (b->p)
		b->p[0] = '\0';
}

static int grow(sbuf *b, size_t need)
{
	if (b->oom)
		return -1;
	if (b->len + need + 1 <= b->cap)
		return 0;
	size_t ncap = b->cap ? b->cap : 256;
	while (ncap < b->len + need + 1)
		ncap *= 2;
	char *np = realloc(b->p, ncap);
	if (!np) {
		b->oom = 1;
		return -1;
	}
	b->p = np;
	b->cap = ncap;
	return 0;
}

void sbuf__put(sbuf *b, const char *s, size_t n)
{
	if (grow(b, n) != 0)
		return;
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

void sbuf__puts(sbuf *b, const char *s)
{
	sbuf__put(b, s, strlen(s));
}

void sbuf__putc(sbuf *b, char c)
{
	sbuf__put(b, &c, 1);
}

void sbuf__i64(sbuf *b, int64_t v)
{
	/* By hand: snprintf was 8% of a batch import's CPU (a sale has a
	 * dozen integers). Digits from the end, in unsigned arithmetic so
	 * INT64_MIN negates. */
	char tmp[24];
	char *p = tmp + sizeof(tmp);
	uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
	do {
		*--p = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		*--p = '-';
	sbuf__put(b, p, (size_t)(tmp + sizeof(tmp) - p));
}

void sbuf__jstr(sbuf *b, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	sbuf__putc(b, '"');
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		unsigned char c = *p;
		if (c == '"' || c == '\\') {
			char e[2] = {'\\', (char)c};
			sbuf__put(b, e, 2);
		} else if (c < 0x20) {
			char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
			sbuf__put(b, e, 6);
		} else {
			sbuf__putc(b, (char)c);
		}
	}
	sbuf__putc(b, '"');
}

char *sbuf__take(sbuf *b, size_t *len)
{
	if (b->oom)
		return NULL;
	if (grow(b, 0) != 0)
		return NULL;
	b->p[b->len] = '\0'; /* a never-written buffer was just allocated */
	char *p = b->p;
	if (len)
		*len = b->len;
	memset(b, 0, sizeof(*b));
	return p;
}
