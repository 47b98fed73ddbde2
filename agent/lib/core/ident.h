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

/* NULL if s (borrowed, NUL-terminated) is a valid id; otherwise why not, as
 * a static string that completes "<key>: ": "must be 1..64 of ..." or
 * "\"down\" is reserved: ...". Any thread. */
const char *ident__problem(const char *s);

/* 1 if s is a valid id (ident__problem(s) == NULL), 0 otherwise. */
int ident__ok(const char *s);

#endif
