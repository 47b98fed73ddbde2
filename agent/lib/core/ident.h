/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ident: the one rule for tenant, store and device ids (docs/protocol.md,
 * "Identities and topic tree"). An id is a topic level
 * (scrm/v1/{tenant}/{store}/{device}/...) and a device id is also the
 * certificate CN the broker's ACL is keyed on, so the rule keeps ids from
 * changing a topic's shape (no '/', '+', '#', '$') and from being read as a
 * word of the tree: a device called "down" would publish and receive under
 * scrm/v1/{tenant}/{store}/down/, the store-wide downlink every device of the
 * store may read.
 */
#ifndef SCRM_IDENT_H
#define SCRM_IDENT_H

#include <stddef.h>

/* NULL if s (borrowed, NUL-terminated) is a valid id; otherwise why not, as
 * a static string that completes "<key>: ": "must be 1..64 of ..." or
 * "\"down\" is reserved: ...". Any thread. */
const char *ident__problem(const char *s);

/* 1 if s is a valid id (ident__problem(s) == NULL), 0 otherwise. */
int ident__ok(const char *s);

/* The other two grammars of the protocol, kept here so each exists once:
 *
 * ident__key_ok: a key of central's records (member, coupon, rule ids):
 * 1..max of [A-Za-z0-9_.:-] and the characters of `extra` (NULL: none; the
 * cache's rule keys add '>'). s may be NULL (not ok).
 *
 * ident__token_ok: a word echoed into JSON and logs as is (a boot id, a
 * command id): the n bytes at t are 1..max of printable ASCII without '"'
 * or '\\'. */
int ident__key_ok(const char *s, size_t max, const char *extra);
int ident__token_ok(const unsigned char *t, size_t n, size_t max);

#endif
