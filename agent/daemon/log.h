/* SPDX-License-Identifier: Apache-2.0 */
/*
 * log: one logfmt line per record on stderr (journald keeps it):
 *   ts=2026-11-22T18:00:00.123Z level=info mod=sync msg="connected" uri=...
 * The level is checked before anything is formatted. Identical consecutive
 * messages from one module are rate-limited (one line + a "repeated" count).
 * Thread-safe.
 */
#ifndef SCRM_LOG_H
#define SCRM_LOG_H

#include <stdint.h>

enum log__level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

extern int log__threshold;

/* "error", "warn", "info", "debug" → level, or -1. */
int log__parse_level(const char *s);
void log__set_level(int level);

/* `kv` is a printf format for the key=value part after msg (may be NULL).
 * Values that may hold spaces must be quoted by the caller with %s and
 * log__q() — see LOGQ. */
void log__write(int level, const char *mod, const char *msg, const char *kv, ...)
	__attribute__((format(printf, 4, 5)));

#define LOG(level, mod, msg, ...)                                             \
	do {                                                                  \
		if ((level) <= log__threshold)                                \
			log__write((level), (mod), (msg), __VA_ARGS__);      \
	} while (0)

/* Where lines go besides stderr: syslog (facility daemon) and/or a file
 * rotated to <file>.1 when it reaches max_bytes (one old file kept, so the
 * agent's own logs never take more than 2 x max_bytes). NULL/0 = off.
 * Thread-safe; may be called again (SIGHUP, fleet config). */
void log__configure(int use_syslog, const char *file, int64_t max_bytes);

/* The most recent lines (at most `max`, oldest first) at `level` or more
 * severe, as a JSON array of strings, from an in-memory ring of
 * LOG_RING_LINES (fleet command logs.recent). */
#define LOG_RING_LINES 256
struct sbuf;
int log__recent(int max, int level, struct sbuf *out);

/* Quote a value for logfmt into buf (escapes " and \, drops controls). */
const char *log__q(char *buf, unsigned size, const char *v);

#endif
