/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ctl_outbox: scrmctl's outbox commands — record (events as JSON, one
 * through scrm_record_json or JSON Lines through scrm_record_batch, a
 * thousand lines a transaction, exactly as a POS records them),
 * status (the outbox's figures, storage against outbox.max_bytes, alarms)
 * and outbox set-aside / recover.
 */
#include "ctl.h"

#include "platform.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INPUT (64 * 1024 * 1024)

static int read_input(const char *path, char **text, size_t *len)
{
	if (!path || strcmp(path, "-") == 0)
		path = "/dev/stdin";
	int rc = platform__read_file(path, MAX_INPUT, text, len);
	if (rc != 0) {
		fprintf(stderr, "scrmctl: record: cannot read %s: %s\n", path, rc == -EFBIG ? "larger than 64 MiB" : strerror(-rc));
		return 1;
	}
	return 0;
}

/* One event's outcome, as the POS would see it: rc and, when recorded, its
 * receipt (else scrm_errmsg-like text in `why`). `line` 0: a single event. */
static int report(const struct ctl__opts *o, int rc, const scrm_receipt *r, const char *why, long line)
{
	if (rc != SCRM_OK) {
		if (o->json) {
			printf("{\"ok\":false,%s%ld%s\"error\":\"%s\",\"detail\":\"", line ? "\"line\":" : "", line,
			       line ? "," : "", scrm_strerror(rc));
			for (const char *p = why; *p; p++)
				if (*p == '"' || *p == '\\')
					printf("\\%c", *p);
				else
					putchar(*p);
			printf("\"}\n");
		}
		if (line)
			fprintf(stderr, "scrmctl: record: line %ld: %s\n", line, why[0] ? why : scrm_strerror(rc));
		else
			fprintf(stderr, "scrmctl: record: %s\n", why[0] ? why : scrm_strerror(rc));
		return 1;
	}
	if (o->json)
		printf("{\"ok\":true,\"seq\":%" PRId64 ",\"id\":\"%s\",\"wall_ms\":%" PRId64 "}\n", r->seq, r->event_id,
		       r->wall_ms);
	else
		printf("recorded seq=%" PRId64 " id=%s\n", r->seq, r->event_id);
	return 0;
}

/* Lines per scrm_record_batch call: a journal of thousands of sales costs
 * a few transactions (fsyncs), not one per sale. */
#define RECORD_BATCH 1000

struct pending_lines {
	scrm_record_item item[RECORD_BATCH];
	scrm_record_result res[RECORD_BATCH];
	long line[RECORD_BATCH];
	size_t n;
};

/* Record what is gathered, one transaction, and report each line in order. */
static int flush_lines(scrm_store *st, const struct ctl__opts *o, struct pending_lines *b)
{
	int failed = 0;
	if (!b->n)
		return 0;
	scrm_record_batch(st, b->item, b->n, b->res);
	for (size_t i = 0; i < b->n; i++) {
		/* the library's "items[i]: " names the batch's index, not the file's line */
		const char *why = b->res[i].error, *cut = strstr(why, "]: ");
		if (strncmp(why, "items[", 6) == 0 && cut)
			why = cut + 3;
		failed |= report(o, b->res[i].rc, &b->res[i].receipt, why, b->line[i]);
	}
	b->n = 0;
	return failed;
}

int ctl__record(struct ctl__opts *o, const char *path)
{
	char *text = NULL;
	size_t len = 0;
	scrm_store *st = NULL;
	int failed = 0;

	if (read_input(path, &text, &len))
		return 1;
	if (ctl__open_store(o, &st) != SCRM_OK) {
		free(text);
		return 1;
	}
	if (!o->lines) {
		scrm_receipt r;
		int rc = scrm_record_json(st, text, len, &r);
		failed = report(o, rc, &r, scrm_errmsg(), 0);
	} else {
		struct pending_lines *b = calloc(1, sizeof(*b));
		const char *p = text, *line;
		size_t n;
		long ln = 0;
		if (!b) {
			fprintf(stderr, "scrmctl: record: out of memory\n");
			failed = 1;
		}
		while (b && cli__next_line(&p, text + len, &line, &n, &ln)) {
			b->item[b->n] = (scrm_record_item){.json = line, .json_len = n};
			b->line[b->n++] = ln;
			if (b->n == RECORD_BATCH)
				failed |= flush_lines(st, o, b);
		}
		if (b)
			failed |= flush_lines(st, o, b);
		free(b);
	}
	scrm_store_close(st);
	free(text);
	return failed ? 1 : 0;
}

static const char *size_text(char *buf, size_t cap, int64_t n)
{
	if (n < 10 * 1024)
		snprintf(buf, cap, "%" PRId64 " B", n);
	else if (n < 10 * 1024 * 1024)
		snprintf(buf, cap, "%.1f KiB", (double)n / 1024.0);
	else
		snprintf(buf, cap, "%.1f MiB", (double)n / (1024.0 * 1024.0));
	return buf;
}

static void print_storage(const scrm_outbox_health *h, const char *alarms, int json)
{
	char a[32], b[32], c[32];
	if (json) {
		printf(",\"storage\":{\"bytes\":%" PRId64 ",\"max_bytes\":%" PRId64 ",\"reserve_bytes\":%" PRId64
		       ",\"in_reserve\":%s,\"refused_paid\":%" PRId64 ",\"dropped\":{",
		       h->bytes, h->max_bytes, h->reserve_bytes, h->in_reserve ? "true" : "false", h->refused_paid);
		for (size_t i = 0; i < h->n_dropped && i < SCRM_OUTBOX_HEALTH_KINDS; i++)
			printf("%s\"%s\":{\"count\":%" PRId64 ",\"bytes\":%" PRId64 ",\"last_ms\":%" PRId64 "}", i ? "," : "",
			       h->dropped[i].kind, h->dropped[i].count, h->dropped[i].bytes, h->dropped[i].last_ms);
		printf("}},\"alarms\":%s", alarms && *alarms ? alarms : "[]");
		return;
	}
	printf("storage      %s used of %s (outbox.max_bytes), the last %s kept for paid events%s\n",
	       size_text(a, sizeof(a), h->bytes), size_text(b, sizeof(b), h->max_bytes),
	       size_text(c, sizeof(c), h->reserve_bytes), h->in_reserve ? "  IN RESERVE" : "");
	if (h->n_dropped) {
		printf("dropped     ");
		for (size_t i = 0; i < h->n_dropped && i < SCRM_OUTBOX_HEALTH_KINDS; i++)
			printf("%s %s %" PRId64 " (%s)", i ? "," : "", h->dropped[i].kind, h->dropped[i].count,
			       size_text(a, sizeof(a), h->dropped[i].bytes));
		printf("\n");
	} else {
		printf("dropped      none\n");
	}
	if (h->refused_paid)
		printf("refused      %" PRId64 " purchases/returns/redemptions: outbox full\n", h->refused_paid);
	cJSON *arr = cJSON_Parse(alarms ? alarms : "[]");
	const cJSON *it;
	int n = 0;
	cJSON_ArrayForEach(it, arr)
	{
		const cJSON *code = cJSON_GetObjectItemCaseSensitive(it, "code");
		const cJSON *count = cJSON_GetObjectItemCaseSensitive(it, "count");
		const cJSON *detail = cJSON_GetObjectItemCaseSensitive(it, "detail");
		printf("%s %s (x%d): %s\n", n++ ? "            " : "alarm       ",
		       cJSON_IsString(code) ? code->valuestring : "?", cJSON_IsNumber(count) ? (int)count->valuedouble : 0,
		       cJSON_IsString(detail) ? detail->valuestring : "");
	}
	if (!n)
		printf("alarms       none\n");
	cJSON_Delete(arr);
}

int ctl__status(struct ctl__opts *o)
{
	scrm_store *st = NULL;
	scrm_outbox_stats s;
	scrm_outbox_health h;
	char *alarms = NULL;
	if (ctl__open_store(o, &st) != SCRM_OK)
		return 1;
	int rc = scrm_outbox_get_stats(st, &s);
	if (rc == SCRM_OK)
		rc = scrm_outbox_get_health(st, &h, &alarms);
	if (rc != SCRM_OK) {
		fprintf(stderr, "scrmctl: status: %s\n", scrm_errmsg());
		scrm_store_close(st);
		return 1;
	}
	int64_t now = platform__wall_ms();
	if (o->json) {
		printf("{\"device\":\"%s\",\"pending\":%" PRId64 ",\"pending_bytes\":%" PRId64
		       ",\"oldest_pending_ms\":%" PRId64 ",\"oldest_pending_age_ms\":%" PRId64 ",\"last_seq\":%" PRId64
		       ",\"last_ack_ms\":%" PRId64 ",\"last_acked_seq\":%" PRId64 ",\"rejected\":%" PRId64,
		       scrm_store_device_id(st), s.pending, s.pending_bytes, s.oldest_pending_ms,
		       s.oldest_pending_ms ? now - s.oldest_pending_ms : 0, s.last_seq, s.last_ack_ms, s.last_acked_seq,
		       s.rejected);
		print_storage(&h, alarms, 1);
		printf("}\n");
	} else {
		char a[32];
		printf("device       %s\n", scrm_store_device_id(st));
		printf("pending      %" PRId64 " events, %.1f KiB\n", s.pending, (double)s.pending_bytes / 1024.0);
		if (s.oldest_pending_ms) {
			cli__age(a, sizeof(a), now - s.oldest_pending_ms);
			printf("oldest       %s ago\n", a);
		} else {
			printf("oldest       -\n");
		}
		printf("last seq     %" PRId64 "\n", s.last_seq);
		if (s.last_ack_ms) {
			cli__age(a, sizeof(a), now - s.last_ack_ms);
			printf("last ack     %s ago (up to seq %" PRId64 ")\n", a, s.last_acked_seq);
		} else {
			printf("last ack     never\n");
		}
		printf("rejected     %" PRId64 "%s\n", s.rejected, s.rejected ? "  (central refused these; see the rejected table)" : "");
		print_storage(&h, alarms, 0);
	}
	scrm_free(alarms);
	scrm_store_close(st);
	return 0;
}

int ctl__outbox_set_aside(const struct ctl__opts *o)
{
	char *out = NULL;
	int rc = scrm_outbox_set_aside(o->store, o->device, &out);
	if (rc != SCRM_OK) {
		ctl__fail("outbox set-aside", rc);
		return 1;
	}
	if (o->json) {
		puts(out);
	} else {
		cJSON *r = cJSON_Parse(out), *e;
		char t[32];
		int64_t now = platform__wall_ms(), n = 0;
		cJSON_ArrayForEach(e, r)
		{
			cli__age(t, sizeof(t), now - cli__i64(e, "set_aside_ms", 0));
			printf("seq %-12lld %-13s %-10s %7lld bytes  %s ago  %s\n", (long long)cli__i64(e, "seq", 0),
			       cli__str(e, "kind") ? cli__str(e, "kind") : "?", cli__str(e, "reason"), (long long)cli__i64(e, "bytes", 0), t,
			       cli__str(e, "detail") ? cli__str(e, "detail") : "");
			n++;
		}
		printf("%lld event(s) set aside%s\n", (long long)n,
		       n ? " (--json prints their bodies; central holds a marker for each)" : "");
		cJSON_Delete(r);
	}
	scrm_free(out);
	return 0;
}

int ctl__outbox_recover(const struct ctl__opts *o, const cli__args *a)
{
	scrm_recover_report r;
	int rc = scrm_outbox_recover(o->store, o->device, a->path, &r);
	if (rc != SCRM_OK) {
		ctl__fail("outbox recover", rc);
		return 1;
	}
	/* The agent sends them at its next turn (a capture or its idle check
	 * pokes it; so does this). */
	platform__notifier *n = platform__notifier_open(o->store);
	platform__notifier_send(n);
	platform__notifier_close(n);
	if (o->json)
		printf("{\"recovered\":%lld,\"already_held\":%lld,\"unreadable\":%lld,\"damaged_ranges\":%lld,"
		       "\"ledger_rows\":%lld}\n",
		       (long long)r.recovered, (long long)r.already_held, (long long)r.unreadable, (long long)r.damaged_ranges,
		       (long long)r.ledger_rows);
	else
		printf("%lld event(s) put back to be sent again; %lld already held or taken before; %lld unreadable;"
		       " %lld damaged range(s) stepped over\n",
		       (long long)r.recovered, (long long)r.already_held, (long long)r.unreadable, (long long)r.damaged_ranges);
	return 0;
}
