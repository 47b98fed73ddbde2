/* SPDX-License-Identifier: Apache-2.0 */
/* heartbeat: the up/health payload (see heartbeat.h). */
#include "heartbeat.h"

void heartbeat__json(sbuf *out, const heartbeat__figures *f)
{
	sbuf__puts(out, "{\"v\":1,\"ts\":");
	sbuf__i64(out, f->now);
	sbuf__puts(out, ",\"device\":");
	sbuf__jstr(out, f->device);
	sbuf__puts(out, ",\"birth_seq\":");
	sbuf__i64(out, f->birth_seq);
	sbuf__puts(out, ",\"version\":");
	sbuf__jstr(out, f->version);
	sbuf__puts(out, ",\"config_version\":");
	sbuf__i64(out, f->config_version);
	sbuf__puts(out, ",\"heartbeat_s\":");
	sbuf__i64(out, f->heartbeat_s);
	sbuf__puts(out, ",\"started_ms\":");
	sbuf__i64(out, f->started_ms);
	sbuf__puts(out, ",\"uptime_ms\":");
	sbuf__i64(out, f->uptime_ms);

	sbuf__puts(out, ",\"link\":{\"connected\":");
	sbuf__puts(out, f->connected ? "true" : "false");
	sbuf__puts(out, ",\"since_ms\":");
	sbuf__i64(out, f->connected_since_ms);
	sbuf__puts(out, ",\"window_used\":");
	sbuf__i64(out, f->window_used);
	sbuf__puts(out, ",\"published\":");
	sbuf__i64(out, f->published);
	sbuf__puts(out, ",\"acked\":");
	sbuf__i64(out, f->acked);
	sbuf__puts(out, ",\"redeliveries\":");
	sbuf__i64(out, f->redeliveries);
	sbuf__puts(out, "}");

	if (f->stats_err[0] && !f->st.last_seq) {
		sbuf__puts(out, ",\"outbox\":{\"error\":");
		sbuf__jstr(out, f->stats_err);
		sbuf__puts(out, ",\"error_since_ms\":");
		sbuf__i64(out, f->error_since_ms);
		sbuf__puts(out, "}");
		goto alarms;
	}
	sbuf__puts(out, ",\"outbox\":{\"pending\":");
	sbuf__i64(out, f->st.pending);
	sbuf__puts(out, ",\"bytes\":");
	sbuf__i64(out, f->st.pending_bytes);
	sbuf__puts(out, ",\"oldest_pending_ms\":");
	sbuf__i64(out, f->st.oldest_pending_ms);
	sbuf__puts(out, ",\"oldest_age_ms\":");
	sbuf__i64(out, f->st.oldest_pending_ms ? f->now - f->st.oldest_pending_ms : 0);
	sbuf__puts(out, ",\"last_seq\":");
	sbuf__i64(out, f->st.last_seq);
	sbuf__puts(out, ",\"last_ack_ms\":");
	sbuf__i64(out, f->st.last_ack_ms);
	sbuf__puts(out, ",\"last_acked_seq\":");
	sbuf__i64(out, f->st.last_acked_seq);
	sbuf__puts(out, ",\"rejected\":");
	sbuf__i64(out, f->st.rejected);
	{
		/* Bounded storage: the cap, what it cost, paid captures refused. */
		const struct outbox__health *h = f->oh;
		if (h) {
			sbuf__puts(out, ",\"stored_bytes\":");
			sbuf__i64(out, h->bytes);
			sbuf__puts(out, ",\"max_bytes\":");
			sbuf__i64(out, h->max_bytes);
			sbuf__puts(out, ",\"reserve_bytes\":");
			sbuf__i64(out, h->reserve_bytes);
			sbuf__puts(out, ",\"in_reserve\":");
			sbuf__puts(out, h->in_reserve ? "true" : "false");
			sbuf__puts(out, ",\"refused_paid\":");
			sbuf__i64(out, h->refused_paid);
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
		{
			/* events kept in dead_letter, central sent a marker */
			if (f->set_aside) {
				sbuf__puts(out, ",\"set_aside\":");
				sbuf__i64(out, *f->set_aside);
			}
		}
	}
	if (f->stats_err[0]) {
		sbuf__puts(out, ",\"error\":");
		sbuf__jstr(out, f->stats_err);
		sbuf__puts(out, ",\"error_since_ms\":");
		sbuf__i64(out, f->error_since_ms);
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
				sbuf__puts(out, ",\"last_ms\":");
				sbuf__i64(out, f->now);
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
		sbuf__puts(out, ",\"total_bytes\":");
		sbuf__i64(out, f->disk[1]);
		sbuf__puts(out, "}");
	} else {
		sbuf__puts(out, ",\"disk\":null");
	}
	{
		sbuf__puts(out, ",\"clock\":{\"trusted\":");
		sbuf__puts(out, f->clock_trusted ? "true" : "false");
		sbuf__puts(out, ",\"wall_ms\":");
		sbuf__i64(out, f->now);
		/* a step of the wall clock against the trusted offset, waiting
		 * to be confirmed (protocol.md, clock_ok) */
		sbuf__puts(out, ",\"step_ms\":");
		sbuf__i64(out, f->clock_step_ms);
		sbuf__puts(out, ",\"ntp_synced\":");
		sbuf__puts(out, f->ntp_synced < 0 ? "null" : f->ntp_synced ? "true" : "false");
		sbuf__puts(out, "}");
	}
	sbuf__puts(out, ",\"rss_bytes\":");
	sbuf__i64(out, f->rss_bytes);
	sbuf__puts(out, ",\"log_level\":");
	sbuf__jstr(out, f->log_level);
	sbuf__puts(out, ",\"commands\":");
	sbuf__i64(out, f->commands);
	if (f->config_error) {
		sbuf__puts(out, ",\"config_error\":");
		sbuf__jstr(out, f->config_error);
	}
	if (f->config_rollback && f->config_rollback[0]) {
		sbuf__puts(out, ",\"config_rollback\":");
		sbuf__jstr(out, f->config_rollback);
	}
	sbuf__puts(out, "}");
}
