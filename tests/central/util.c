/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-central, util.c: logging (logfmt lines on stderr), log quoting and
 * JSON strings for the growable string (tests/support/testkit.h) the acks,
 * chunks and verdicts are rendered into.
 */
#include "central.h"

/* ======================================================================
 * logging: logfmt lines on stderr
 * ====================================================================== */

static const char *const level_names[] = { "debug", "info", "warn", "error" };
int g_log_min = LVL_INFO;

void log_at(int lvl, const char *msg, const char *fmt, ...)
{
	char kv[1536] = "";
	char ts[96]; /* sized for any int the compiler imagines */
	struct timespec now;
	struct tm tm;
	va_list ap;

	if (lvl < g_log_min)
		return;
	if (fmt) {
		va_start(ap, fmt);
		vsnprintf(kv, sizeof kv, fmt, ap);
		va_end(ap);
	}
	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		 (long)(now.tv_nsec / 1000000));
	/* One fprintf per line: stdio locks the stream, so lines from Paho's
	 * threads and the main thread never interleave. */
	fprintf(stderr, "ts=%s level=%s mod=central msg=\"%s\"%s%s\n", ts, level_names[lvl], msg,
		kv[0] ? " " : "", kv);
}

/* A logfmt-safe quoted copy of s in buf (for text from peers and libraries). */
const char *lq(char *buf, size_t size, const char *s)
{
	size_t o = 0;

	if (size < 3)
		return "\"\"";
	buf[o++] = '"';
	for (; s && *s && o + 3 < size; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\') {
			buf[o++] = '\\';
			buf[o++] = (char)c;
		} else if (c < 0x20 || c == 0x7f) {
			buf[o++] = '?';
		} else {
			buf[o++] = (char)c;
		}
	}
	buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}

/* ======================================================================
 * growable string (ack payloads): struct sbuf is testkit's
 * ====================================================================== */

/* A JSON string literal; bytes >= 0x80 pass through (the input was UTF-8). */
void sb_json_str(struct sbuf *b, const char *s)
{
	sb_add(b, "\"");
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			sb_add(b, "\\%c", c);
		else if (c < 0x20)
			sb_add(b, "\\u%04x", c);
		else
			sb_add(b, "%c", c);
	}
	sb_add(b, "\"");
}
