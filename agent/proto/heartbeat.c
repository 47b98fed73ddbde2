/* SPDX-License-Identifier: Apache-2.0 */
/* heartbeat: the up/health payload (see heartbeat.h). */
#include "heartbeat.h"

/* One member after the first of an object: ,"name":value (names are the
 * protocol's, never in need of escapes). */
static void name(sbuf *out, const char *n)
{
	sbuf__puts(out, ",\"");
	sbuf__puts(out, n);
	sbuf__puts(out, "\":");
}

static void num(sbuf *out, const char *n, int64_t v)
{
	name(out, n);
	sbuf__i64(out, v);
}

static void str(sbuf *out, const char *n, const char *v)
{
	name(out, n);
	sbuf__jstr(out, v);
}

static void flag(sbuf *out, const char *n, int v)
{
	name(out, n);
	sbuf__puts(out, v ? "true" : "false");
}

/* A run of members, written in order: a string when `s` is set (S), else
 * the number (N). */
typedef struct member {
	const char *name, *s;
	int64_t v;
} member;
#define N(n, v) {n, NULL, v}
#define S(n, s) {n, s, 0}

static void members(sbuf *out, const member *m, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (m[i].s)
			str(out, m[i].name, m[i].s);
		else
			num(out, m[i].name, m[i].v);
	}
}
#define MEMBERS(out, ...)                                                                 \
	do {                                                                              \
		const member m_[] = {__VA_ARGS__};                                        \
		members(out, m_, sizeof(m_) / sizeof(m_[0]));                             \
	} while (0)

void heartbeat__json(sbuf *out, const heartbeat__figures *f)
{
	sbuf__puts(out, "{\"v\":1,\"ts\":");
	sbuf__i64(out, f->now);
	MEMBERS(out, S("device", f->device), N("birth_seq", f->birth_seq), S("version", f->version),
		N("config_version", f->config_version), N("heartbeat_s", f->heartbeat_s), N("started_ms", f->started_ms),
		N("uptime_ms", f->uptime_ms));

	sbuf__puts(out, ",\"link\":{\"connected\":");
	sbuf__puts(out, f->connected ? "true" : "false");
	MEMBERS(out, N("since_ms", f->connected_since_ms), N("window_used", f->window_used), N("published", f->published),
		N("acked", f->acked), N("redeliveries", f->redeliveries));
	sbuf__puts(out, "}");

	if (f->stats_err[0] && !f->st.last_seq) {
		sbuf__puts(out, ",\"outbox\":{\"error\":");
		sbuf__jstr(out, f->stats_err);
		num(out, "error_since_ms", f->error_since_ms);
		sbuf__puts(out, "}");
		goto alarms;
	}
	sbuf__puts(out, ",\"outbox\":{\"pending\":");
	sbuf__i64(out, f->st.pending);
	MEMBERS(out, N("bytes", f->st.pending_bytes), N("oldest_pending_ms", f->st.oldest_pending_ms),
		N("oldest_age_ms", f->st.oldest_pending_ms ? f->now - f->st.oldest_pending_ms : 0),
		N("last_seq", f->st.last_seq), N("last_ack_ms", f->st.last_ack_ms), N("last_acked_seq", f->st.last_acked_seq),
		N("rejected", f->st.rejected));
	{
		/* Bounded storage: the cap, what it cost, paid captures refused. */
		const struct outbox__health *h = f->oh;
		if (h) {
			MEMBERS(out, N("stored_bytes", h->bytes), N("max_bytes", h->max_bytes),
				N("reserve_bytes", h->reserve_bytes));
			flag(out, "in_reserve", h->in_reserve);
			num(out, "refused_paid", h->refused_paid);
			sbuf__puts(out, ",\"dropped\":{");
			for (size_t i = 0; i < h->n_dropped; i++) {
				if (i)
					sbuf__puts(out, ",");
				sbuf__jstr(out, h->dropped[i].kind);
				sbuf__puts(out, ":");
				sbuf__i64(out, h->dropped[i].count);
			}
			sbuf__puts(out, "}");
		}
		/* events kept in dead_letter, central sent a marker */
		if (f->set_aside)
			num(out, "set_aside", *f->set_aside);
	}
	if (f->stats_err[0]) {
		str(out, "error", f->stats_err);
		num(out, "error_since_ms", f->error_since_ms);
	}
	sbuf__puts(out, "}");
alarms:
	{
		sbuf__puts(out, ",\"alarms\":");
		sbuf__puts(out, f->alarms ? f->alarms : "[]");
		if (f->stats_err[0]) {
			/* Raised here, not in the store: the store may be what
			 * cannot be written. */
			if (out->len && out->p[out->len - 1] == ']') {
				out->len--;
				if (out->p[out->len - 1] != '[')
					sbuf__putc(out, ',');
				sbuf__puts(out, "{\"code\":\"outbox_unreadable\",\"since_ms\":");
				sbuf__i64(out, f->error_since_ms);
				num(out, "last_ms", f->now);
				sbuf__puts(out, ",\"count\":1,\"detail\":");
				sbuf__jstr(out, f->stats_err);
				sbuf__puts(out, "}]");
			}
		}
	}
	if (f->erasure_pending)
		sbuf__puts(out, ",\"erasure_pending\":true");

	sbuf__puts(out, ",\"cache\":");
	sbuf__puts(out, f->cache ? f->cache : "null");

	{
		sbuf__puts(out, ",\"verdicts\":");
		if (f->verdicts) {
			const char *names[] = {"pending", "accepted", "rejected"};
			sbuf__puts(out, "{");
			for (int i = 0; i < 3; i++) {
				if (i)
					sbuf__puts(out, ",");
				sbuf__jstr(out, names[i]);
				sbuf__puts(out, ":");
				sbuf__i64(out, f->verdicts[i]);
			}
			sbuf__puts(out, "}");
		} else {
			sbuf__puts(out, "null");
		}
	}

	if (f->disk) {
		sbuf__puts(out, ",\"disk\":{\"free_bytes\":");
		sbuf__i64(out, f->disk[0]);
		num(out, "total_bytes", f->disk[1]);
		sbuf__puts(out, "}");
	} else {
		sbuf__puts(out, ",\"disk\":null");
	}
	{
		sbuf__puts(out, ",\"clock\":{\"trusted\":");
		sbuf__puts(out, f->clock_trusted ? "true" : "false");
		num(out, "wall_ms", f->now);
		/* a step of the wall clock against the trusted offset, waiting
		 * to be confirmed (protocol.md, clock_ok) */
		num(out, "step_ms", f->clock_step_ms);
		sbuf__puts(out, ",\"ntp_synced\":");
		sbuf__puts(out, f->ntp_synced < 0 ? "null" : f->ntp_synced ? "true" : "false");
		sbuf__puts(out, "}");
	}
	MEMBERS(out, N("rss_bytes", f->rss_bytes), S("log_level", f->log_level), N("commands", f->commands));
	if (f->config_error)
		str(out, "config_error", f->config_error);
	if (f->config_rollback && f->config_rollback[0])
		str(out, "config_rollback", f->config_rollback);
	sbuf__puts(out, "}");
}
