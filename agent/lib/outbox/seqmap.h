/* SPDX-License-Identifier: Apache-2.0 */
/*
 * seqmap: the in-memory indexes the outbox keeps of rows SQLite has no
 * index for, since schema v7 wrote nothing per sale but the row itself —
 * pending receipts by (kind, key) (receipts.c) and a member's sales by
 * member_id (ledger_read.c). A multimap from a 64-bit hash to seqs (open
 * addressing, linear probing, at most half full). Entries are hints: the
 * caller reads the row a seq names and compares; stale entries are dropped
 * by starting over once the map is twice the size it had when last built
 * from scratch and twice the rows that could still be in it (when the
 * caller knows: a queue that only grows is never rebuilt). Header-only: ledger_read.c is built without the rest of
 * the outbox (fuzz_cache).
 */
#ifndef SCRM_OUTBOX_SEQMAP_H
#define SCRM_OUTBOX_SEQMAP_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SEQMAP_REBUILD_MIN 4096

typedef struct seqmap {
	struct seqmap_slot {
		uint64_t h; /* 0 = empty */
		int64_t seq;
	} *slots;         /* owned; cap of them, a power of two */
	size_t cap, n;
	size_t built;     /* n when last built from scratch */
} seqmap;

/* FNV-1a over a, then b (NULL: none) after a separator no text holds. */
static inline uint64_t seqmap__hash(const char *a, const char *b)
{
	uint64_t h = 14695981039346656037ULL;
	for (const char *p = a; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ULL;
	if (b) {
		h = (h ^ 0xff) * 1099511628211ULL;
		for (const char *p = b; *p; p++)
			h = (h ^ (unsigned char)*p) * 1099511628211ULL;
	}
	return h | 1; /* 0 marks an empty slot */
}

static inline void seqmap__clear(seqmap *m)
{
	if (m->slots)
		memset(m->slots, 0, m->cap * sizeof(*m->slots));
	m->n = 0;
}

static inline void seqmap__free(seqmap *m)
{
	free(m->slots);
	memset(m, 0, sizeof(*m));
}

/* 1 when the map should be built again from scratch (see the top). live:
 * how many of the rows it covers exist now; 0 if unknown. */
static inline int seqmap__stale(const seqmap *m, int64_t live)
{
	return m->n >= SEQMAP_REBUILD_MIN && m->n > 2 * m->built && (int64_t)m->n > 2 * live;
}

/* 0, or -1 out of memory (the map is unchanged). */
static inline int seqmap__put(seqmap *m, uint64_t h, int64_t seq)
{
	if ((m->n + 1) * 2 > m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 1024;
		struct seqmap_slot *s = calloc(cap, sizeof(*s));
		if (!s)
			return -1;
		for (size_t i = 0; i < m->cap; i++)
			if (m->slots[i].h) {
				size_t j = (size_t)m->slots[i].h & (cap - 1);
				while (s[j].h)
					j = (j + 1) & (cap - 1);
				s[j] = m->slots[i];
			}
		free(m->slots);
		m->slots = s;
		m->cap = cap;
	}
	size_t j = (size_t)h & (m->cap - 1);
	while (m->slots[j].h)
		j = (j + 1) & (m->cap - 1);
	m->slots[j] = (struct seqmap_slot){h, seq};
	m->n++;
	return 0;
}

/* The seqs under h, one per call: *at starts at 0; 1 with *seq set, 0 at
 * the end. */
static inline int seqmap__next(const seqmap *m, uint64_t h, size_t *at, int64_t *seq)
{
	if (!m->cap)
		return 0;
	for (size_t j = ((size_t)h + *at) & (m->cap - 1); m->slots[j].h; j = (j + 1) & (m->cap - 1)) {
		++*at;
		if (m->slots[j].h == h) {
			*seq = m->slots[j].seq;
			return 1;
		}
	}
	return 0;
}

#endif
