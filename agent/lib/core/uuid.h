/* SPDX-License-Identifier: Apache-2.0 */
/*
 * uuid: UUIDv7 (RFC 9562) — 48-bit Unix ms timestamp, then 74 random bits
 * from the platform CTR-DRBG. Time-ordered ids keep the central side's
 * indexes append-mostly.
 */
#ifndef SCRM_UUID_H
#define SCRM_UUID_H

#include <stdint.h>

/* Write the canonical 36-char form + NUL into out. 0 or -EIO. */
int uuid__v7(int64_t unix_ms, char out[37]);
/* 1 if s is a canonical lower-case UUID text. */
int uuid__valid(const char *s);

#endif
