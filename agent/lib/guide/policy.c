/* SPDX-License-Identifier: Apache-2.0 */
/*
 * policy: the guide.* and lifecycle.* settings (guide.h guide__policy) as the
 * daemon writes them into the cache and the library reads them back. Kept
 * apart from guide.c so the daemon, which only writes them, does not link
 * the recommendation engine.
 */
#include "guide.h"

#include <cjson/cJSON.h>

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
	pol_get(o, "just_bought_ms", 0, 3650 * DAY_MS, &p->just_bought_ms);
	pol_get(o, "history_ms", DAY_MS, 3650 * DAY_MS, &p->history_ms);
	pol_get(o, "half_life_days", 1, 3650, &p->half_life_days);
	pol_get(o, "new_days", 1, 3650, &p->new_days);
	pol_get(o, "sleeping_days", 1, 3650, &p->sleeping_days);
	pol_get(o, "lost_days", 1, 36500, &p->lost_days);
	pol_get(o, "churn_factor_pct", 100, 10000, &p->churn_factor_pct);
	/* at least two of the daemon's 30 s link refreshes */
	pol_get(o, "online_fresh_ms", 60000, 3600000, &p->online_fresh_ms);
	cJSON_Delete(o);
}

void guide__policy_json(const guide__policy *p, sbuf *out)
{
	const struct {
		const char *k;
		int64_t v;
	} f[] = {{"just_bought_ms", p->just_bought_ms}, {"history_ms", p->history_ms},
		 {"half_life_days", p->half_life_days},  {"new_days", p->new_days},
		 {"sleeping_days", p->sleeping_days},    {"lost_days", p->lost_days},
		 {"churn_factor_pct", p->churn_factor_pct}, {"online_fresh_ms", p->online_fresh_ms}};
	sbuf__reset(out);
	sbuf__putc(out, '{');
	for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
		if (i)
			sbuf__putc(out, ',');
		sbuf__jstr(out, f[i].k);
		sbuf__putc(out, ':');
		sbuf__i64(out, f[i].v);
	}
	sbuf__putc(out, '}');
}

