/* SPDX-License-Identifier: Apache-2.0 */
/*
 * policy: the guide.* and lifecycle.* settings (guide.h guide__policy) as the
 * daemon writes them into the cache and the library reads them back. Kept
 * apart from guide.c so the daemon, which only writes them, does not link
 * the recommendation engine.
 */
#include "guide.h"

#include <cjson/cJSON.h>
#include <stddef.h>

#define DAY_MS 86400000LL

void guide__policy_default(guide__policy *p)
{
	p->just_bought_ms = 14 * DAY_MS;
	p->history_ms = 365 * DAY_MS;
	p->half_life_days = 30;
	p->new_days = 30;
	p->sleeping_days = 90;
	p->lost_days = 365;
	p->churn_factor_pct = 250;
	p->online_fresh_ms = 90000;
}

/* Each setting once: its name in the JSON, its field, the range a value
 * must be in to replace the default (anything else is ignored). */
static const struct setting {
	const char *k;
	size_t off;
	int64_t lo, hi;
} settings[] = {
	{"just_bought_ms", offsetof(guide__policy, just_bought_ms), 0, 3650 * DAY_MS},
	{"history_ms", offsetof(guide__policy, history_ms), DAY_MS, 3650 * DAY_MS},
	{"half_life_days", offsetof(guide__policy, half_life_days), 1, 3650},
	{"new_days", offsetof(guide__policy, new_days), 1, 3650},
	{"sleeping_days", offsetof(guide__policy, sleeping_days), 1, 3650},
	{"lost_days", offsetof(guide__policy, lost_days), 1, 36500},
	{"churn_factor_pct", offsetof(guide__policy, churn_factor_pct), 100, 10000},
	/* at least two of the daemon's 30 s link refreshes */
	{"online_fresh_ms", offsetof(guide__policy, online_fresh_ms), 60000, 3600000},
};

static void pol_get(const cJSON *o, const char *name, int64_t lo, int64_t hi, int64_t *v)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
	if (cJSON_IsNumber(it) && it->valuedouble >= (double)lo && it->valuedouble <= (double)hi)
		*v = (int64_t)it->valuedouble;
}

void guide__policy_parse(const char *json, guide__policy *p)
{
	guide__policy_default(p);
	if (!json || !*json)
		return;
	cJSON *o = cJSON_Parse(json);
	if (!cJSON_IsObject(o)) {
		cJSON_Delete(o);
		return;
	}
	for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++)
		pol_get(o, settings[i].k, settings[i].lo, settings[i].hi, (int64_t *)((char *)p + settings[i].off));
	cJSON_Delete(o);
}

void guide__policy_json(const guide__policy *p, sbuf *out)
{
	sbuf__reset(out);
	sbuf__putc(out, '{');
	for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++) {
		if (i)
			sbuf__putc(out, ',');
		sbuf__jstr(out, settings[i].k);
		sbuf__putc(out, ':');
		sbuf__i64(out, *(const int64_t *)((const char *)p + settings[i].off));
	}
	sbuf__putc(out, '}');
}
