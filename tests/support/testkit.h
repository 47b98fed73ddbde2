/* SPDX-License-Identifier: Apache-2.0 */
/*
 * testkit: the small helpers that both sides of the test world need, the
 * reference central (tests/central) and the harness and scrm-cachegen that
 * drive and feed it. It holds no agent code (agent/lib), so central stays a
 * second implementation of docs/protocol.md; it owns no global state.
 */
#ifndef SCRM_TESTKIT_H
#define SCRM_TESTKIT_H

#include <stddef.h>
#include <stdint.h>

/* CLOCK_MONOTONIC in milliseconds: for timeouts and durations. */
int64_t tk_mono_ms(void);

/* The wall clock, Unix milliseconds: for timestamps. */
int64_t tk_wall_ms(void);

/* Sets TCP_NODELAY on every TCP socket of the process (the MQTT client's
 * socket is not ours to configure otherwise). Returns how many sockets took
 * it, or -errno when /proc/self/fd cannot be read. */
int tk_tcp_nodelay_all(void);

/* A growable NUL-terminated string. {0} is empty (p NULL until something is
 * added); the owner frees p. A failed allocation sets oom, after which every
 * call leaves the string as it is: check oom once at the end. */
struct sbuf {
	char *p;
	size_t len, cap;
	int oom;
};

/* Room for extra more bytes and the NUL. */
void sb_reserve(struct sbuf *b, size_t extra);
/* Appends n bytes of s (copied). */
void sb_put(struct sbuf *b, const char *s, size_t n);
/* Appends printf-formatted text. */
void sb_add(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
