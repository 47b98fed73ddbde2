/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sbuf: a growable byte buffer for building JSON text without cJSON's
 * allocation per node. Owns its memory; a failed append latches `oom` so a
 * caller checks once at the end.
 */
#ifndef SCRM_SBUF_H
#define SCRM_SBUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct sbuf {
	char *p;
	size_t len, cap;
	int oom;
} sbuf;

void sbuf__init(sbuf *b);
void sbuf__free(sbuf *b);
void sbuf__reset(sbuf *b);
void sbuf__put(sbuf *b, const char *s, size_t n);
void sbuf__puts(sbuf *b, const char *s);
void sbuf__putc(sbuf *b, char c);
void sbuf__i64(sbuf *b, int64_t v);
/* A JSON string literal, quoted and escaped. */
void sbuf__jstr(sbuf *b, const char *s);
/* Take ownership of the NUL-terminated contents; buffer becomes empty. */
char *sbuf__take(sbuf *b, size_t *len);

#endif
