/* SPDX-License-Identifier: Apache-2.0 */
/* log: logfmt to stderr with level check and repeat suppression (log.h). */
#include "log.h"

#include "platform.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int log__threshold = LOG_INFO;
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char last_line[1200];
static int64_t last_ms;
static unsigned repeats;

int log__parse_level(const char *s)
{
	static const char *const names[] = {"error", "warn", "info", "debug"};
	for (int i = 0; i < 4; i++)
		if (s && strcmp(s, names[i]) == 0)
			return i;
	return -1;
}

void log__set_level(int level)
{
	log__threshold = level;
}

const char *log__q(char *buf, unsigned size, const char *v)
{
	unsigned o = 0;
	if (size < 3)
		return "\"\"";
	buf[o++] = '"';
	for (; v && *v && o + 3 < size; v++) {
		unsigned char c = (unsigned char)*v;
		if (c == '"' || c == '\\') {
			buf[o++] = '\\';
			buf[o++] = (char)c;
		} else if (c >= 0x20) {
			buf[o++] = (char)c;
		} else {
			buf[o++] = ' ';
		}
	}
	buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}

static void stamp(char *ts, size_t n, int64_t ms)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	gmtime_r(&t, &tm);
	size_t k = strftime(ts, n, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts + k, n - k, ".%03dZ", (int)(ms % 1000));
}

void log__write(int level, const char *mod, const char *msg, const char *kv, ...)
{
	static const char *const names[] = {"error", "warn", "info", "debug"};
	char body[512], line[1200], ts[40], qmsg[300];
	int64_t now = platform__wall_ms();
	va_list ap;

	body[0] = '\0';
	if (kv) {
		va_start(ap, kv);
		vsnprintf(body, sizeof(body), kv, ap);
		va_end(ap);
	}
	snprintf(line, sizeof(line), "level=%s mod=%s msg=%s%s%s", names[level & 3], mod,
		 log__q(qmsg, sizeof(qmsg), msg), body[0] ? " " : "", body);

	pthread_mutex_lock(&log_mu);
	/* The same line again within 10 s: count it instead of printing. */
	if (strcmp(line, last_line) == 0 && now - last_ms < 10000) {
		repeats++;
		pthread_mutex_unlock(&log_mu);
		return;
	}
	stamp(ts, sizeof(ts), now);
	if (repeats)
		fprintf(stderr, "ts=%s level=info mod=log msg=\"previous message repeated\" count=%u\n", ts, repeats);
	fprintf(stderr, "ts=%s %s\n", ts, line);
	fflush(stderr);
	snprintf(last_line, sizeof(last_line), "%s", line);
	last_ms = now;
	repeats = 0;
	pthread_mutex_unlock(&log_mu);
}
