/* SPDX-License-Identifier: Apache-2.0 */
/*
 * view: `list` and `show` — every agent of the tenant (or one) from its
 * retained state and heartbeat, read off the broker for --wait-ms, rendered
 * as a table, a detail page or JSON; device text goes through
 * console__shown / console__put_json.
 */
#include "conn.h"

#include <scrm/scrm.h>

#include "cli.h"
#include "ident.h"
#include "json.h"
#include "platform.h"
#include "sbuf.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_AGENTS 20000

/* ---- agents from retained state ---- */

struct agent {
	char tenant[65], store[65], device[65];
	cJSON *state, *health;
};

struct fleet {
	struct agent *a;
	size_t n, cap;
};

/* scrm/v1/T/S/D/up/(state|health) → the parts; 1 = state, 2 = health. */
static int parse_topic(const char *topic, char *t, char *s, char *d)
{
	char buf[400];
	char *p[7];
	int n = 0;
	if (strlen(topic) >= sizeof(buf))
		return 0;
	snprintf(buf, sizeof(buf), "%s", topic);
	for (char *x = buf, *tok; n < 7 && (tok = strsep(&x, "/"));)
		p[n++] = tok;
	if (n != 7 || strcmp(p[0], "scrm") || strcmp(p[1], "v1") || strcmp(p[5], "up") || !ident__ok(p[2]) || !ident__ok(p[3]) ||
	    !ident__ok(p[4]))
		return 0;
	snprintf(t, 65, "%s", p[2]);
	snprintf(s, 65, "%s", p[3]);
	snprintf(d, 65, "%s", p[4]);
	return strcmp(p[6], "state") == 0 ? 1 : strcmp(p[6], "health") == 0 ? 2 : 0;
}

static struct agent *agent_of(struct fleet *f, const char *t, const char *s, const char *d)
{
	for (size_t i = 0; i < f->n; i++)
		if (!strcmp(f->a[i].tenant, t) && !strcmp(f->a[i].store, s) && !strcmp(f->a[i].device, d))
			return &f->a[i];
	if (f->n == f->cap) {
		if (f->cap >= MAX_AGENTS)
			return NULL;
		size_t cap = f->cap ? f->cap * 2 : 64;
		struct agent *na = realloc(f->a, cap * sizeof(*na));
		if (!na)
			return NULL;
		f->a = na;
		f->cap = cap;
	}
	struct agent *a = &f->a[f->n++];
	memset(a, 0, sizeof(*a));
	snprintf(a->tenant, sizeof(a->tenant), "%s", t);
	snprintf(a->store, sizeof(a->store), "%s", s);
	snprintf(a->device, sizeof(a->device), "%s", d);
	return a;
}

static void take(struct fleet *f, const mqtt__event *e)
{
	char t[65], s[65], d[65];
	int kind = parse_topic(e->topic, t, s, d);
	if (!kind || e->len == 0)
		return;
	/* Read as strictly as central reads it: a state or heartbeat with a
	 * repeated key shows as nothing rather than as one of its readings. */
	cJSON *o = NULL;
	if (json__parse(e->payload, e->len, "state", &o) != SCRM_OK || !cJSON_IsObject(o)) {
		cJSON_Delete(o);
		return;
	}
	struct agent *a = agent_of(f, t, s, d);
	if (!a) {
		cJSON_Delete(o);
		return;
	}
	cJSON **slot = kind == 1 ? &a->state : &a->health;
	/* Central's rule (protocol.md): a state with a lower birth_seq than
	 * the one held is older news. */
	if (kind == 1 && *slot && json__i64(o, "birth_seq", 0) < json__i64(*slot, "birth_seq", 0)) {
		cJSON_Delete(o);
		return;
	}
	cJSON_Delete(*slot);
	*slot = o;
}

static void fleet_free(struct fleet *f)
{
	for (size_t i = 0; i < f->n; i++) {
		cJSON_Delete(f->a[i].state);
		cJSON_Delete(f->a[i].health);
	}
	free(f->a);
}

/* Collect retained state and health: until `wait_ms` has passed, or 300 ms
 * without a new message once something arrived. */
static int collect(struct conn *c, const console__args *a, const char *store, const char *device, struct fleet *f)
{
	char topic[300];
	for (int k = 0; k < 2; k++) {
		snprintf(topic, sizeof(topic), "scrm/v1/%s/%s/%s/up/%s", a->tenant, store ? store : "+", device ? device : "+",
			 k ? "health" : "state");
		if (mqtt__subscribe(c->mq, topic, 1) != SCRM_OK)
			return 3;
	}
	int64_t start = platform__mono_ms(), last = 0, until = start + a->wait_ms;
	int subs = 0;
	for (;;) {
		int64_t now = platform__mono_ms();
		int64_t stop = until;
		if (last && subs == 2 && last + 300 < stop)
			stop = last + 300;
		if (now >= stop)
			break;
		mqtt__event *e = conn__next_event(c->mq, stop);
		if (!e)
			break;
		if (e->type == MQ_MESSAGE) {
			take(f, e);
			last = platform__mono_ms();
		} else if (e->type == MQ_SUBSCRIBED) {
			subs++;
		} else if (e->type == MQ_SUBSCRIBE_FAILED) {
			char why[300];
			fprintf(stderr, "scrmctl fleet: subscription refused: %s (is this identity allowed to read up/state and up/health?)\n",
				console__shown(why, sizeof(why), e->text));
			mqtt__event_free(e);
			return 1;
		} else if (e->type == MQ_LOST) {
			fprintf(stderr, "scrmctl fleet: connection lost\n");
			mqtt__event_free(e);
			return 3;
		}
		mqtt__event_free(e);
	}
	return 0;
}

/* online, offline, silent (online but no heartbeat for 3 periods) or unknown. */
static const char *status_of(const struct agent *a, int64_t now)
{
	const char *st = console__jtext(a->state, "state");
	if (strcmp(st, "online") == 0) {
		/* the heartbeat's own period first: it follows remote changes */
		int64_t hb = (a->health && json__i64(a->health, "heartbeat_s", 0) ? json__i64(a->health, "heartbeat_s", 0)
									  : json__i64(a->state, "heartbeat_s", 0)) * 1000;
		int64_t last = a->health ? json__i64(a->health, "ts", 0) : json__i64(a->state, "ts", 0);
		if (hb > 0 && now - last > 3 * hb)
			return "silent";
		return "online";
	}
	return st[0] ? st : "unknown";
}

static int cmp_agent(const void *x, const void *y)
{
	const struct agent *a = x, *b = y;
	int c = strcmp(a->store, b->store);
	return c ? c : strcmp(a->device, b->device);
}

static void notes(const struct agent *a, char *buf, size_t n)
{
	const cJSON *h = a->health;
	size_t k = 0;
	buf[0] = '\0';
#define NOTE(...)                                                                   \
	do {                                                                        \
		if (k < n) {                                                        \
			int w = snprintf(buf + k, n - k, "%s", k ? ", " : "");       \
			k += w > 0 ? (size_t)w : 0;                                 \
			w = k < n ? snprintf(buf + k, n - k, __VA_ARGS__) : 0;      \
			k += w > 0 ? (size_t)w : 0;                                 \
		}                                                                   \
	} while (0)
	const char *reason = console__jtext(a->state, "reason");
	if (reason[0] && strcmp(console__jtext(a->state, "state"), "offline") == 0)
		NOTE("%s", reason);
	if (h) {
		const cJSON *clock = cJSON_GetObjectItemCaseSensitive(h, "clock");
		if (cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(clock, "trusted")))
			NOTE("clock not trusted");
		if (json__i64(h, "verdicts.rejected", 0) > 0)
			NOTE("%lld coupon rejections", (long long)json__i64(h, "verdicts.rejected", 0));
		if (json__i64(h, "outbox.rejected", 0) > 0)
			NOTE("%lld events rejected", (long long)json__i64(h, "outbox.rejected", 0));
		if (cJSON_GetObjectItemCaseSensitive(h, "config_error"))
			NOTE("remote config ignored");
		if (cJSON_GetObjectItemCaseSensitive(h, "config_rollback"))
			NOTE("config rolled back");
		const cJSON *alarms = cJSON_GetObjectItemCaseSensitive(h, "alarms"), *al;
		cJSON_ArrayForEach(al, alarms) NOTE("ALARM %s", console__jtext(al, "code"));
		int64_t free_b = json__i64(h, "disk.free_bytes", 0);
		if (cJSON_GetObjectItemCaseSensitive(h, "disk") && free_b < 256LL * 1024 * 1024)
			NOTE("disk %lld MiB free", (long long)(free_b >> 20));
	}
#undef NOTE
}

int console__list(const console__args *a, struct conn *c)
{
	struct fleet f = {0};
	int64_t now = platform__wall_ms();
	int rc = collect(c, a, a->filter_store, NULL, &f);
	if (rc) {
		fleet_free(&f);
		return rc;
	}
	qsort(f.a, f.n, sizeof(*f.a), cmp_agent);
	if (a->json) {
		sbuf out;
		sbuf__init(&out);
		sbuf__puts(&out, "{\"tenant\":");
		sbuf__jstr(&out, a->tenant);
		sbuf__puts(&out, ",\"agents\":[");
		for (size_t i = 0; i < f.n; i++) {
			char *st = f.a[i].state ? cJSON_PrintUnformatted(f.a[i].state) : NULL;
			char *h = f.a[i].health ? cJSON_PrintUnformatted(f.a[i].health) : NULL;
			sbuf__puts(&out, i ? ",{\"store\":" : "{\"store\":");
			sbuf__jstr(&out, f.a[i].store);
			sbuf__puts(&out, ",\"device\":");
			sbuf__jstr(&out, f.a[i].device);
			sbuf__puts(&out, ",\"status\":");
			sbuf__jstr(&out, status_of(&f.a[i], now));
			sbuf__puts(&out, ",\"state\":");
			sbuf__puts(&out, st ? st : "null");
			sbuf__puts(&out, ",\"health\":");
			sbuf__puts(&out, h ? h : "null");
			sbuf__puts(&out, "}");
			cJSON_free(st);
			cJSON_free(h);
		}
		sbuf__puts(&out, "]}\n");
		if (!out.oom)
			console__put_json(out.p, out.len);
		sbuf__free(&out);
	} else if (f.n == 0) {
		printf("no agents of tenant %s have reported%s%s\n", a->tenant, a->filter_store ? " in store " : "",
		       a->filter_store ? a->filter_store : "");
	} else {
		int online = 0;
		printf("%-12s %-14s %-8s %-9s %-9s %8s %-9s %-8s %-8s %4s  %s\n", "STORE", "DEVICE", "STATUS", "SINCE",
		       "HEARTBEAT", "BACKLOG", "BEHIND", "VERSION", "ARCH", "CFG", "NOTES");
		for (size_t i = 0; i < f.n; i++) {
			const struct agent *ag = &f.a[i];
			char since[32] = "-", hb[32] = "-", behind[32] = "-", backlog[24] = "-", cfgv[16] = "-", nb[300];
			char st_s[80], ver_s[80], arch_s[80], nb_s[600];
			const char *st = status_of(ag, now);
			online += strcmp(st, "online") == 0;
			if (ag->state)
				cli__age(since, sizeof(since), now - json__i64(ag->state, "ts", 0));
			if (ag->health) {
				cli__age(hb, sizeof(hb), now - json__i64(ag->health, "ts", 0));
				snprintf(backlog, sizeof(backlog), "%lld", (long long)json__i64(ag->health, "outbox.pending", 0));
				if (json__i64(ag->health, "outbox.oldest_pending_ms", 0) > 0)
					cli__age(behind, sizeof(behind), now - json__i64(ag->health, "outbox.oldest_pending_ms", 0));
			}
			const cJSON *src = ag->health ? ag->health : ag->state;
			if (src && cJSON_GetObjectItemCaseSensitive(src, "config_version"))
				snprintf(cfgv, sizeof(cfgv), "v%lld", (long long)json__i64(src, "config_version", 0));
			notes(ag, nb, sizeof(nb));
			const char *ver = console__jtext(ag->state, "version");
			if (!ver[0])
				ver = console__jtext(ag->health, "version");
			const char *arch = console__jtext(ag->state, "arch");
			/* store and device are ids (the topic's, checked); the
			 * rest is what the device said: escaped */
			printf("%-12s %-14s %-8s %-9s %-9s %8s %-9s %-8s %-8s %4s  %s\n", ag->store, ag->device,
			       console__shown(st_s, sizeof(st_s), st), since, hb, backlog, behind,
			       ver[0] ? console__shown(ver_s, sizeof(ver_s), ver) : "-", arch[0] ? console__shown(arch_s, sizeof(arch_s), arch) : "-",
			       cfgv, console__shown(nb_s, sizeof(nb_s), nb));
		}
		printf("%zu agents, %d online\n", f.n, online);
	}
	fleet_free(&f);
	return 0;
}

int console__show(const console__args *a, struct conn *c)
{
	struct fleet f = {0};
	int64_t now = platform__wall_ms();
	int rc = collect(c, a, a->store, a->device, &f);
	if (rc || f.n == 0) {
		if (!rc)
			fprintf(stderr, "scrmctl fleet: %s/%s/%s has never reported (no retained state)\n", a->tenant, a->store,
				a->device);
		fleet_free(&f);
		return rc ? rc : 1;
	}
	const struct agent *ag = &f.a[0];
	if (a->json) {
		char *st = ag->state ? cJSON_PrintUnformatted(ag->state) : NULL;
		char *h = ag->health ? cJSON_PrintUnformatted(ag->health) : NULL;
		sbuf out;
		sbuf__init(&out);
		sbuf__puts(&out, "{\"store\":");
		sbuf__jstr(&out, ag->store);
		sbuf__puts(&out, ",\"device\":");
		sbuf__jstr(&out, ag->device);
		sbuf__puts(&out, ",\"status\":"); /* the device's own word when not online */
		sbuf__jstr(&out, status_of(ag, now));
		sbuf__puts(&out, ",\"state\":");
		sbuf__puts(&out, st ? st : "null");
		sbuf__puts(&out, ",\"health\":");
		sbuf__puts(&out, h ? h : "null");
		sbuf__puts(&out, "}\n");
		if (!out.oom)
			console__put_json(out.p, out.len);
		sbuf__free(&out);
		cJSON_free(st);
		cJSON_free(h);
		fleet_free(&f);
		return 0;
	}
	char t1[32], t2[32], nb[300], x1[80], x2[200], nb_s[600];
	const cJSON *s = ag->state, *h = ag->health;
	printf("%s/%s/%s: %s\n", ag->tenant, ag->store, ag->device, console__shown(x1, sizeof(x1), status_of(ag, now)));
	if (s) {
		cli__age(t1, sizeof(t1), now - json__i64(s, "ts", 0));
		printf("  state        %s %s ago (birth_seq %lld)%s%s\n", console__shown(x1, sizeof(x1), console__jtext(s, "state")), t1,
		       (long long)json__i64(s, "birth_seq", 0), console__jtext(s, "reason")[0] ? ", " : "",
		       console__shown(x2, sizeof(x2), console__jtext(s, "reason")));
		printf("  version      %s (%s), protocol %lld, config v%lld, heartbeat every %llds%s\n",
		       console__shown(x1, sizeof(x1), console__jtext(s, "version")), console__shown(x2, sizeof(x2), console__jtext(s, "arch")),
		       (long long)json__i64(s, "protocol", 0), (long long)json__i64(s, "config_version", 0),
		       (long long)json__i64(s, "heartbeat_s", 0),
		       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "signed_commands")) ? ", signed commands only" : "");
	}
	if (h) {
		cli__age(t1, sizeof(t1), now - json__i64(h, "ts", 0));
		cli__age(t2, sizeof(t2), json__i64(h, "uptime_ms", 0));
		printf("  heartbeat    %s ago, up %s, RSS %.1f MiB, %lld commands\n", t1, t2,
		       (double)json__i64(h, "rss_bytes", 0) / 1048576.0, (long long)json__i64(h, "commands", 0));
		if (json__i64(h, "outbox.oldest_pending_ms", 0))
			cli__age(t2, sizeof(t2), now - json__i64(h, "outbox.oldest_pending_ms", 0));
		else
			snprintf(t2, sizeof(t2), "-");
		printf("  outbox       %lld pending (%lld bytes), oldest %s, last seq %lld, acked to %lld, %lld rejected\n",
		       (long long)json__i64(h, "outbox.pending", 0), (long long)json__i64(h, "outbox.bytes", 0), t2,
		       (long long)json__i64(h, "outbox.last_seq", 0), (long long)json__i64(h, "outbox.last_acked_seq", 0),
		       (long long)json__i64(h, "outbox.rejected", 0));
		if (json__i64(h, "outbox.last_ack_ms", 0))
			cli__age(t1, sizeof(t1), now - json__i64(h, "outbox.last_ack_ms", 0));
		else
			snprintf(t1, sizeof(t1), "never");
		printf("  central      last ack %s%s; %lld published, %lld redeliveries\n", t1,
		       strcmp(t1, "never") ? " ago" : "", (long long)json__i64(h, "link.published", 0),
		       (long long)json__i64(h, "link.redeliveries", 0));
		printf("  verdicts     %lld pending, %lld rejected, %lld accepted\n", (long long)json__i64(h, "verdicts.pending", 0),
		       (long long)json__i64(h, "verdicts.rejected", 0), (long long)json__i64(h, "verdicts.accepted", 0));
		const cJSON *cache = cJSON_GetObjectItemCaseSensitive(h, "cache"), *it;
		cJSON_ArrayForEach(it, cache)
		{
			if (json__i64(it, "applied_ms", 0))
				cli__age(t1, sizeof(t1), json__i64(it, "age_ms", 0));
			else
				snprintf(t1, sizeof(t1), "never");
			printf("  cache        %-10s cursor %-8lld %9lld rows, changed %s%s\n", console__shown(x1, sizeof(x1), it->string),
			       (long long)json__i64(it, "cursor", 0), (long long)json__i64(it, "rows", 0), t1, strcmp(t1, "never") ? " ago" : "");
		}
		printf("  disk         %.1f GiB free of %.1f GiB; clock %s\n", (double)json__i64(h, "disk.free_bytes", 0) / 1073741824.0,
		       (double)json__i64(h, "disk.total_bytes", 0) / 1073741824.0,
		       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(h, "clock"), "trusted"))
			       ? "trusted"
			       : "NOT trusted");
	}
	notes(ag, nb, sizeof(nb));
	if (nb[0])
		printf("  notes        %s\n", console__shown(nb_s, sizeof(nb_s), nb));
	fleet_free(&f);
	return 0;
}
