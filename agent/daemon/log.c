/* SPDX-License-Identifier: Apache-2.0 */
/* log: logfmt to stderr with level check and repeat suppression (log.h). */
#include "log.h"

#include "platform.h"
#include "sbuf.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* The ring for logs.recent: lines cut at RING_WIDTH. */
#define RING_WIDTH 400
static char ring[LOG_RING_LINES][RING_WIDTH];
static unsigned char ring_level[LOG_RING_LINES];
static unsigned ring_next, ring_count;

static int use_syslog;
static int log_fd = -1;
static char log_path[1024];
static int64_t log_max, log_size;

void log__configure(int sys, const char *file, int64_t max_bytes)
{
	pthread_mutex_lock(&log_mu);
	if (sys != use_syslog)
		platform__syslog_open(sys, "scrm-agent");
	use_syslog = sys;
	if (log_fd >= 0 && (!file || strcmp(file, log_path) != 0)) {
		close(log_fd);
		log_fd = -1;
		log_path[0] = '\0';
	}
	log_max = max_bytes > 0 ? max_bytes : 10485760;
	if (file && log_fd < 0 && strlen(file) < sizeof(log_path)) {
		log_fd = open(file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
		if (log_fd >= 0) {
			struct stat st;
			snprintf(log_path, sizeof(log_path), "%s", file);
			log_size = fstat(log_fd, &st) == 0 ? (int64_t)st.st_size : 0;
		} else {
			fprintf(stderr, "level=error mod=log msg=\"cannot open log.file\" path=\"%s\"\n", file);
		}
	}
	pthread_mutex_unlock(&log_mu);
}

/* Under log_mu. Rotation keeps one old file: the cap is 2 x log_max. */
static void file_write(const char *text, size_t n)
{
	if (log_fd < 0)
		return;
	if (log_size + (int64_t)n > log_max) {
		char old[1100];
		snprintf(old, sizeof(old), "%s.1", log_path);
		rename(log_path, old);
		close(log_fd);
		log_fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
		log_size = 0;
		if (log_fd < 0)
			return;
	}
	ssize_t w = write(log_fd, text, n);
	if (w > 0)
		log_size += w;
}

static void ring_put(int level, const char *text)
{
	snprintf(ring[ring_next], RING_WIDTH, "%s", text);
	ring_level[ring_next] = (unsigned char)level;
	ring_next = (ring_next + 1) % LOG_RING_LINES;
	if (ring_count < LOG_RING_LINES)
		ring_count++;
}

int log__recent(int max, int level, sbuf *out)
{
	int n = 0, first = 1;
	pthread_mutex_lock(&log_mu);
	unsigned start = (ring_next + LOG_RING_LINES - ring_count) % LOG_RING_LINES;
	/* count matches from the newest backwards to find where to start */
	unsigned skip = 0, matches = 0;
	for (unsigned i = 0; i < ring_count; i++)
		if (ring_level[(start + i) % LOG_RING_LINES] <= level)
			matches++;
	if (max >= 0 && matches > (unsigned)max)
		skip = matches - (unsigned)max;
	sbuf__puts(out, "[");
	for (unsigned i = 0; i < ring_count; i++) {
		unsigned k = (start + i) % LOG_RING_LINES;
		if (ring_level[k] > level)
			continue;
		if (skip) {
			skip--;
			continue;
		}
		if (!first)
			sbuf__puts(out, ",");
		first = 0;
		sbuf__jstr(out, ring[k]);
		n++;
	}
	sbuf__puts(out, "]");
	pthread_mutex_unlock(&log_mu);
	return n;
}

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
	if (repeats) {
		char rep[160];
		int k = snprintf(rep, sizeof(rep), "ts=%s level=info mod=log msg=\"previous message repeated\" count=%u\n", ts,
				 repeats);
		fputs(rep, stderr);
		ring_put(LOG_INFO, rep);
		if (k > 0)
			file_write(rep, (size_t)k < sizeof(rep) ? (size_t)k : sizeof(rep) - 1);
	}
	{
		char full[1300];
		int k = snprintf(full, sizeof(full), "ts=%s %s\n", ts, line);
		fputs(full, stderr);
		if (k > 0)
			file_write(full, (size_t)k < sizeof(full) ? (size_t)k : sizeof(full) - 1);
		/* the ring keeps lines without their newline */
		size_t fl = strlen(full);
		if (fl && full[fl - 1] == '\n')
			full[fl - 1] = '\0';
		ring_put(level, full);
	}
	if (use_syslog)
		platform__syslog(level & 3, line);
	fflush(stderr);
	snprintf(last_line, sizeof(last_line), "%s", line);
	last_ms = now;
	repeats = 0;
	pthread_mutex_unlock(&log_mu);
}
