/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-central, verdict.c: coupon verdicts: the coupon and campaign
 * catalogue, a redemption decided in the transaction that stores it,
 * verdicts published after their batch's ack, verdict queries answered.
 */
#include "central.h"

/* ======================================================================
 * coupon verdicts (main thread)
 *
 * A new coupon_redeem event is decided inside the transaction that stores
 * it, so a redelivered copy never decides twice and "earlier" means decided
 * earlier by this central. The rules read the coupon and campaign records of
 * DIR/coupons.jsonl (the "signed" text of each record line, parsed; the
 * signature is central's own and not checked here) and count the accepted
 * rows of the redemptions table across every store and device of the
 * tenant. Without --cache-dir every redemption is accepted unchecked.
 *
 * Verdicts are published to the device's down/verdict, QoS 1, after the
 * ack of the batch that carried the redemption (the ack tells the agent the
 * event is safe; the verdict then settles it) and, with
 * --verdict-delay-ms, not before that many ms after the commit.
 * ====================================================================== */

void catalogue_free(struct coupon_catalogue *c)
{
	size_t i;

	for (i = 0; i < c->n_coupons; i++) {
		free(c->coupons[i].id);
		free(c->coupons[i].campaign);
	}
	for (i = 0; i < c->n_campaigns; i++)
		free(c->campaigns[i].id);
	free(c->coupons);
	free(c->campaigns);
	memset(c, 0, sizeof *c);
}

static int cmp_coupon(const void *a, const void *b)
{
	const struct coupon_def *x = a, *y = b;
	int c = strcmp(x->id, y->id);

	return c ? c : (x->line > y->line) - (x->line < y->line);
}

static int cmp_campaign(const void *a, const void *b)
{
	const struct campaign_def *x = a, *y = b;
	int c = strcmp(x->id, y->id);

	return c ? c : (x->line > y->line) - (x->line < y->line);
}

/* A non-negative integer field of a record: 0 (absent: dflt), or -1. */
static int record_count(const cJSON *rec, const char *name, int64_t dflt, int64_t *out)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(rec, name);

	*out = dflt;
	if (!it || cJSON_IsNull(it))
		return 0;
	return json_int64(it, out) == 0 && *out >= 0 ? 0 : -1;
}

/* One record line into c: 0 taken, 1 not a coupon or campaign record,
 * -1 malformed (why set), -2 out of memory. */
static int catalogue_add(struct coupon_catalogue *c, size_t *cap_coupons, size_t *cap_campaigns,
			 const char *s, size_t n, int64_t lineno, const char **why)
{
	cJSON *line = cJSON_ParseWithLength(s, n), *rec = NULL;
	const cJSON *key, *sig, *type, *id;
	char want[CACHE_KEY_MAX + 16];
	int rc = -1;

	*why = "not a JSON object";
	if (!cJSON_IsObject(line))
		goto out;
	key = cJSON_GetObjectItemCaseSensitive(line, "key");
	sig = cJSON_GetObjectItemCaseSensitive(line, "signed");
	*why = "no \"key\" or \"signed\" string";
	if (!cJSON_IsString(key) || !cJSON_IsString(sig))
		goto out;
	rec = cJSON_Parse(sig->valuestring);
	type = cJSON_GetObjectItemCaseSensitive(rec, "type");
	id = cJSON_GetObjectItemCaseSensitive(rec, "id");
	*why = "\"signed\" is not a record with a type and an id";
	if (!cJSON_IsObject(rec) || !cJSON_IsString(type) || !cJSON_IsString(id) ||
	    !id->valuestring[0] || strlen(id->valuestring) > CACHE_KEY_MAX)
		goto out;
	rc = 1;
	if (strcmp(type->valuestring, "coupon") != 0 && strcmp(type->valuestring, "campaign") != 0)
		goto out;
	rc = -1;
	snprintf(want, sizeof want, "%s:%s", type->valuestring, id->valuestring);
	*why = "the record's type:id is not its key";
	if (strcmp(want, key->valuestring) != 0)
		goto out;
	if (strcmp(type->valuestring, "coupon") == 0) {
		struct coupon_def d = { 0 };
		const char *campaign = NULL;

		*why = "coupon: uses, valid_from, valid_to or campaign malformed";
		if (record_count(rec, "uses", 1, &d.uses) != 0 ||
		    record_count(rec, "valid_from", 0, &d.valid_from) != 0 ||
		    record_count(rec, "valid_to", 0, &d.valid_to) != 0 ||
		    opt_string(rec, "campaign", CACHE_KEY_MAX, &campaign) < 0)
			goto out;
		rc = -2;
		if (c->n_coupons == *cap_coupons) {
			size_t ncap = *cap_coupons ? 2 * *cap_coupons : 256;
			struct coupon_def *np = realloc(c->coupons, ncap * sizeof *np);

			if (!np)
				goto out;
			c->coupons = np;
			*cap_coupons = ncap;
		}
		d.id = strdup(id->valuestring);
		d.campaign = campaign ? strdup(campaign) : NULL;
		d.line = lineno;
		if (!d.id || (campaign && !d.campaign)) {
			free(d.id);
			free(d.campaign);
			goto out;
		}
		c->coupons[c->n_coupons++] = d;
	} else {
		struct campaign_def d = { 0 };

		*why = "campaign: per_member_limit, total_limit, valid_from or valid_to not an integer >= 0";
		if (record_count(rec, "per_member_limit", 0, &d.per_member_limit) != 0 ||
		    record_count(rec, "total_limit", 0, &d.total_limit) != 0 ||
		    record_count(rec, "valid_from", 0, &d.valid_from) != 0 ||
		    record_count(rec, "valid_to", 0, &d.valid_to) != 0)
			goto out;
		rc = -2;
		if (c->n_campaigns == *cap_campaigns) {
			size_t ncap = *cap_campaigns ? 2 * *cap_campaigns : 64;
			struct campaign_def *np = realloc(c->campaigns, ncap * sizeof *np);

			if (!np)
				goto out;
			c->campaigns = np;
			*cap_campaigns = ncap;
		}
		d.id = strdup(id->valuestring);
		d.line = lineno;
		if (!d.id)
			goto out;
		c->campaigns[c->n_campaigns++] = d;
	}
	rc = 0;
out:
	cJSON_Delete(rec);
	cJSON_Delete(line);
	return rc;
}

/* Sorted by id; of several records for one id the last line wins (as when
 * the agent applies them in order). */
static void catalogue_sort(struct coupon_catalogue *c)
{
	size_t i, j;

	if (c->n_coupons)
		qsort(c->coupons, c->n_coupons, sizeof *c->coupons, cmp_coupon);
	for (i = j = 0; i < c->n_coupons; i++) {
		if (i + 1 < c->n_coupons && strcmp(c->coupons[i].id, c->coupons[i + 1].id) == 0) {
			free(c->coupons[i].id);
			free(c->coupons[i].campaign);
			continue;
		}
		c->coupons[j++] = c->coupons[i];
	}
	c->n_coupons = j;
	if (c->n_campaigns)
		qsort(c->campaigns, c->n_campaigns, sizeof *c->campaigns, cmp_campaign);
	for (i = j = 0; i < c->n_campaigns; i++) {
		if (i + 1 < c->n_campaigns &&
		    strcmp(c->campaigns[i].id, c->campaigns[i + 1].id) == 0) {
			free(c->campaigns[i].id);
			continue;
		}
		c->campaigns[j++] = c->campaigns[i];
	}
	c->n_campaigns = j;
}

/* Read DIR/coupons.jsonl into c (zeroed). A missing file is an empty
 * catalogue (every coupon unknown, as on the agents); malformed record lines
 * are skipped with a warning. 0, or -1 (logged) if the file cannot be read. */
static int catalogue_load(struct coupon_catalogue *c)
{
	char path[4096], q[300], q2[300], why[200];
	char *line = NULL;
	size_t cap = 0, cap_coupons = 0, cap_campaigns = 0;
	int64_t lineno = 0, skipped = 0, version = 0;
	struct stat st;
	ssize_t n;
	FILE *f;
	int rc = -1, header = 0;

	cache_path(path, sizeof path, "coupons", ".jsonl");
	f = fopen(path, "re");
	if (!f && errno != ENOENT) {
		log_at(LVL_ERROR, "cannot open coupon definitions", "path=%s err=%s",
		       lq(q, sizeof q, path), lq(q2, sizeof q2, strerror(errno)));
		return -1;
	}
	if (!f) {
		c->missing = c->loaded = 1;
		log_at(LVL_WARN, "no coupon definitions: every coupon redemption is rejected",
		       "path=%s", lq(q, sizeof q, path));
		return 0;
	}
	if (fstat(fileno(f), &st) != 0)
		goto cleanup;
	c->dev = st.st_dev;
	c->ino = st.st_ino;
	c->size = st.st_size;
	c->mtime_ns = mtime_ns(&st);
	while ((n = getline(&line, &cap, f)) >= 0) {
		size_t len;
		const char *s = line_trim(line, (size_t)n, &len), *bad = NULL;
		int r;

		lineno++;
		if (len == 0)
			continue;
		if (!header) {
			header = 1;
			if (header_parse(s, len, stream_find("coupons"), &version, why,
					 sizeof why) != 0) {
				log_at(LVL_ERROR, "coupon definitions refused", "path=%s reason=%s",
				       lq(q, sizeof q, path), lq(q2, sizeof q2, why));
				goto cleanup;
			}
			continue;
		}
		r = catalogue_add(c, &cap_coupons, &cap_campaigns, s, len, lineno, &bad);
		if (r == -2) {
			log_at(LVL_ERROR, "out of memory loading coupon definitions", NULL);
			goto cleanup;
		}
		if (r == -1 && skipped++ < 10)
			log_at(LVL_WARN, "coupon definitions: record line skipped",
			       "path=%s line=%" PRId64 " reason=%s", lq(q, sizeof q, path), lineno,
			       lq(q2, sizeof q2, bad));
	}
	if (ferror(f)) {
		log_at(LVL_ERROR, "cannot read coupon definitions", "path=%s", lq(q, sizeof q, path));
		goto cleanup;
	}
	if (!header) {
		log_at(LVL_ERROR, "coupon definitions refused", "path=%s reason=%s",
		       lq(q, sizeof q, path), lq(q2, sizeof q2, "empty file: no header line"));
		goto cleanup;
	}
	catalogue_sort(c);
	c->loaded = 1;
	log_at(LVL_INFO, "coupon definitions loaded",
	       "path=%s version=%" PRId64 " coupons=%zu campaigns=%zu skipped=%" PRId64,
	       lq(q, sizeof q, path), version, c->n_coupons, c->n_campaigns, skipped);
	rc = 0;

cleanup:
	free(line);
	fclose(f);
	if (rc != 0)
		catalogue_free(c);
	return rc;
}

/* g.cat as the file is now: reloaded when it changed. If a changed file
 * cannot be read the previous definitions stay in use. 0, or -1 if there
 * are none to decide with. */
static int catalogue_current(void)
{
	struct coupon_catalogue fresh;
	char path[4096];
	struct stat st;

	if (g.cat.loaded) {
		int same;

		cache_path(path, sizeof path, "coupons", ".jsonl");
		if (stat(path, &st) == 0)
			same = !g.cat.missing && st.st_dev == g.cat.dev && st.st_ino == g.cat.ino &&
			       st.st_size == g.cat.size && mtime_ns(&st) == g.cat.mtime_ns;
		else
			same = g.cat.missing && errno == ENOENT;
		if (same)
			return 0;
	}
	memset(&fresh, 0, sizeof fresh);
	if (catalogue_load(&fresh) != 0) {
		if (!g.cat.loaded)
			return -1;
		log_at(LVL_WARN, "keeping the coupon definitions loaded before", NULL);
		return 0;
	}
	catalogue_free(&g.cat);
	g.cat = fresh;
	return 0;
}

static int cmp_coupon_key(const void *key, const void *elem)
{
	return strcmp(key, ((const struct coupon_def *)elem)->id);
}

static int cmp_campaign_key(const void *key, const void *elem)
{
	return strcmp(key, ((const struct campaign_def *)elem)->id);
}

static const struct coupon_def *coupon_find(const char *id)
{
	return g.cat.n_coupons ? bsearch(id, g.cat.coupons, g.cat.n_coupons,
					 sizeof *g.cat.coupons, cmp_coupon_key)
			       : NULL;
}

static const struct campaign_def *campaign_find(const char *id)
{
	return g.cat.n_campaigns ? bsearch(id, g.cat.campaigns, g.cat.n_campaigns,
					   sizeof *g.cat.campaigns, cmp_campaign_key)
				 : NULL;
}

/* SELECT count(*) with text parameters 1..n: SQLITE_OK and *out, or the error. */
static int db_count(sqlite3_stmt *s, const char *const *params, int n, int64_t *out)
{
	char q[300];
	int i, rc;

	for (i = 0; i < n; i++)
		sqlite3_bind_text(s, i + 1, params[i], -1, SQLITE_STATIC);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		*out = sqlite3_column_int64(s, 0);
		rc = SQLITE_OK;
	} else {
		log_at(LVL_ERROR, "sqlite step failed", "err=%s",
		       lq(q, sizeof q, sqlite3_errmsg(g.db)));
	}
	sqlite3_reset(s);
	sqlite3_clear_bindings(s);
	return rc;
}

/* The verdict message (protocol.md, "Coupon verdicts"), queued on vb.
 * coupon, reason and detail may be NULL (omitted). */
static int verdict_add(struct verdict_batch *vb, const struct ident *id, int64_t seq,
		       const char *redemption, const char *coupon, const char *campaign,
		       int accepted, const char *reason, const char *detail, int64_t ts)
{
	struct pending_verdict *pv = calloc(1, sizeof *pv);
	struct sbuf b = { 0 };
	char topic[3 * IDENT_MAX + 48];

	sb_add(&b, "{\"v\":1,\"redemption\":");
	sb_json_str(&b, redemption);
	sb_add(&b, ",\"seq\":%" PRId64, seq);
	if (coupon) {
		sb_add(&b, ",\"coupon\":");
		sb_json_str(&b, coupon);
	}
	sb_add(&b, ",\"campaign\":");
	sb_json_str(&b, campaign);
	sb_add(&b, ",\"verdict\":\"%s\"", accepted ? "accepted" : "rejected");
	if (!accepted && reason) {
		sb_add(&b, ",\"reason\":");
		sb_json_str(&b, reason);
	}
	if (!accepted && detail) {
		sb_add(&b, ",\"detail\":");
		sb_json_str(&b, detail);
	}
	sb_add(&b, ",\"ts\":%" PRId64 "}", ts);
	snprintf(topic, sizeof topic, "scrm/v1/%s/%s/%s/down/verdict", id->tenant, id->store,
		 id->device);
	if (pv)
		pv->topic = strdup(topic);
	if (!pv || !pv->topic || b.oom) {
		if (pv)
			free(pv->topic);
		free(pv);
		free(b.p);
		log_at(LVL_ERROR, "out of memory building a verdict", NULL);
		return SQLITE_NOMEM; /* the batch is not stored: redelivered, decided then */
	}
	pv->payload = b.p;
	pv->len = b.len;
	*vb->tail = pv;
	vb->tail = &pv->next;
	return SQLITE_OK;
}

/* The validity window [from, to) of a coupon or campaign (0: open) at `at`:
 * NULL, or the reason with its detail written. Same codes as the agent's. */
static const char *window_check(const char *what, const char *id, int64_t from, int64_t to, int64_t at,
				char *detail, size_t cap)
{
	if (from > 0 && at < from) {
		snprintf(detail, cap, "%s %s valid from %" PRId64 " (Unix ms), redeemed at %" PRId64, what, id,
			 from, at);
		return "not_yet_valid";
	}
	if (to > 0 && at >= to) {
		snprintf(detail, cap, "%s %s expired at %" PRId64 " (Unix ms), redeemed at %" PRId64, what, id, to,
			 at);
		return "expired";
	}
	return NULL;
}

/* When a redemption happened, for its validity check (protocol.md, "Verdict"):
 * the event's capture time (wall_ms: an offline redemption arrives late, and
 * is judged at the sale), but never later than central received it (a clock
 * ahead cannot make a coupon valid early), and central's receive time when
 * the device said its clock is not trusted (clock_ok false: it may be far
 * behind, and would make every coupon look unexpired). */
static int64_t redemption_time(const struct event_view *v, int64_t now)
{
	if (v->clock_ok == 0)
		return now;
	return v->wall_ms < now ? v->wall_ms : now;
}

/* A new redemption: decide, record in redemptions, queue the verdict. */
static int verdict_decide(const struct ident *id, const struct event_view *v, int64_t now,
			  struct verdict_batch *vb)
{
	const cJSON *body = v->body;
	const char *campaign = NULL, *coupon = NULL, *member = NULL, *order = NULL;
	const char *reason = NULL;
	char detail[VERDICT_DETAIL_MAX] = "";
	char q1[200], q2[200], q3[200], q4[VERDICT_DETAIL_MAX + 16];
	int64_t value = 0, count = 0, at = redemption_time(v, now);
	sqlite3_stmt *s;
	int rc;

	/* event_validate checked the body */
	opt_string(body, "campaign", BODY_ID_MAX, &campaign);
	opt_string(body, "coupon", BODY_ID_MAX, &coupon);
	opt_string(body, "member_id", BODY_ID_MAX, &member);
	opt_string(body, "order_id", BODY_ID_MAX, &order);
	json_int64(cJSON_GetObjectItemCaseSensitive(body, "value"), &value);
	if (!campaign || !order)
		return SQLITE_MISUSE;

	if (!g.opt.cache_dir) {
		if (!g.unchecked_logged) {
			g.unchecked_logged = 1;
			log_at(LVL_INFO, "no --cache-dir: coupon redemptions are accepted unchecked",
			       NULL);
		}
	} else if (catalogue_current() != 0) {
		log_at(LVL_ERROR, "no coupon definitions to decide a redemption with", NULL);
		return SQLITE_ERROR; /* not stored, not acked: decided when redelivered */
	} else if (coupon) {
		const struct coupon_def *cd = coupon_find(coupon);
		const char *params[] = { id->tenant, coupon };

		const struct campaign_def *cpd = cd && cd->campaign ? campaign_find(cd->campaign) : NULL;

		if (!cd) {
			reason = "unknown_coupon";
			snprintf(detail, sizeof detail, "coupon %s is not known to central", coupon);
		} else if ((reason = window_check("coupon", coupon, cd->valid_from, cd->valid_to, at, detail,
						  sizeof detail)) ||
			   (cpd && (reason = window_check("campaign", cpd->id, cpd->valid_from, cpd->valid_to,
							  at, detail, sizeof detail)))) {
			/* outside its validity: reason and detail set */
		} else if ((rc = db_count(g.st.cnt_coupon, params, 2, &count)) != SQLITE_OK) {
			return rc;
		} else if (count >= cd->uses) {
			reason = "already_spent";
			s = g.st.last_coupon;
			sqlite3_bind_text(s, 1, id->tenant, -1, SQLITE_STATIC);
			sqlite3_bind_text(s, 2, coupon, -1, SQLITE_STATIC);
			rc = sqlite3_step(s);
			if (rc == SQLITE_ROW) {
				const char *st = (const char *)sqlite3_column_text(s, 0);
				const char *dev = (const char *)sqlite3_column_text(s, 1);
				const char *ord = (const char *)sqlite3_column_text(s, 2);
				char when[96] = "";

				if (sqlite3_column_type(s, 3) == SQLITE_INTEGER) {
					time_t t = (time_t)(sqlite3_column_int64(s, 3) / 1000);
					struct tm tm;

					if (gmtime_r(&t, &tm))
						snprintf(when, sizeof when,
							 " at %04d-%02d-%02dT%02d:%02d:%02dZ",
							 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
							 tm.tm_hour, tm.tm_min, tm.tm_sec);
				}
				snprintf(detail, sizeof detail,
					 "already spent in store %.64s (device %.64s, order %.64s)%s",
					 st ? st : "?", dev ? dev : "?", ord ? ord : "?", when);
			} else {
				/* uses 0: never redeemable */
				snprintf(detail, sizeof detail,
					 "coupon %s allows %" PRId64 " use(s), all spent", coupon,
					 cd->uses);
			}
			sqlite3_reset(s);
			sqlite3_clear_bindings(s);
			if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
				log_at(LVL_ERROR, "sqlite step failed", "err=%s",
				       lq(q1, sizeof q1, sqlite3_errmsg(g.db)));
				return rc;
			}
		}
	} else {
		const struct campaign_def *cd = campaign_find(campaign);
		const char *params[] = { id->tenant, campaign, member };

		if (!cd) {
			reason = "unknown_campaign";
			snprintf(detail, sizeof detail, "campaign %s is not known to central",
				 campaign);
		} else if ((reason = window_check("campaign", campaign, cd->valid_from, cd->valid_to, at,
						  detail, sizeof detail))) {
			/* outside its validity: reason and detail set */
		} else if (cd->per_member_limit > 0 && member &&
			   (rc = db_count(g.st.cnt_member, params, 3, &count)) != SQLITE_OK) {
			return rc;
		} else if (cd->per_member_limit > 0 && member && count >= cd->per_member_limit) {
			reason = "member_limit";
			snprintf(detail, sizeof detail,
				 "member %s already redeemed campaign %s %" PRId64
				 " time(s) (limit %" PRId64 " per member)",
				 member, campaign, count, cd->per_member_limit);
		} else if (cd->total_limit > 0 &&
			   (rc = db_count(g.st.cnt_campaign, params, 2, &count)) != SQLITE_OK) {
			return rc;
		} else if (cd->total_limit > 0 && count >= cd->total_limit) {
			reason = "campaign_limit";
			snprintf(detail, sizeof detail,
				 "campaign %s reached its total limit of %" PRId64 " redemptions",
				 campaign, cd->total_limit);
		}
	}

	s = g.st.ins_redemption;
	bind_ident(s, id, v->seq);
	sqlite3_bind_text(s, 5, v->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 6, campaign, -1, SQLITE_STATIC);
	if (coupon)
		sqlite3_bind_text(s, 7, coupon, -1, SQLITE_STATIC);
	if (member)
		sqlite3_bind_text(s, 8, member, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 9, order, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 10, value);
	sqlite3_bind_text(s, 11, reason ? "rejected" : "accepted", -1, SQLITE_STATIC);
	if (reason) {
		sqlite3_bind_text(s, 12, reason, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 13, detail, -1, SQLITE_STATIC);
	}
	sqlite3_bind_int64(s, 14, now);
	rc = db_step(s);
	sqlite3_clear_bindings(s);
	if (rc != SQLITE_OK)
		return rc;

	if (reason) {
		vb->rejected++;
		log_at(LVL_INFO, "coupon redemption rejected",
		       "tenant=%s store=%s device=%s seq=%" PRId64 " redemption=%s coupon=%s"
		       " campaign=%s reason=%s detail=%s",
		       id->tenant, id->store, id->device, v->seq, lq(q1, sizeof q1, v->id),
		       coupon ? lq(q2, sizeof q2, coupon) : "-", lq(q3, sizeof q3, campaign), reason,
		       lq(q4, sizeof q4, detail));
	} else {
		vb->accepted++;
		log_at(LVL_DEBUG, "coupon redemption accepted",
		       "tenant=%s store=%s device=%s seq=%" PRId64 " redemption=%s coupon=%s"
		       " campaign=%s",
		       id->tenant, id->store, id->device, v->seq, lq(q1, sizeof q1, v->id),
		       coupon ? lq(q2, sizeof q2, coupon) : "-", lq(q3, sizeof q3, campaign));
	}
	return verdict_add(vb, id, v->seq, v->id, coupon, campaign, !reason, reason, detail, now);
}

/* A redelivered redemption: publish the verdict decided the first time
 * again (the device may have missed it), never a new decision. */
static int verdict_again(const struct ident *id, const struct event_view *v,
			 struct verdict_batch *vb)
{
	sqlite3_stmt *s = g.st.sel_redemption;
	int rc = SQLITE_OK;

	bind_ident(s, id, v->seq);
	if (sqlite3_step(s) == SQLITE_ROW) {
		const char *rid = (const char *)sqlite3_column_text(s, 0);
		const char *campaign = (const char *)sqlite3_column_text(s, 1);
		const char *coupon = (const char *)sqlite3_column_text(s, 2);
		const char *verdict = (const char *)sqlite3_column_text(s, 3);
		const char *reason = (const char *)sqlite3_column_text(s, 4);
		const char *detail = (const char *)sqlite3_column_text(s, 5);

		/* rid differs: a redelivered conflict, which was never decided */
		if (rid && campaign && verdict && strcmp(rid, v->id) == 0) {
			rc = verdict_add(vb, id, v->seq, rid, coupon, campaign,
					 strcmp(verdict, "accepted") == 0, reason, detail,
					 sqlite3_column_int64(s, 6));
			if (rc == SQLITE_OK)
				vb->redelivered++;
		}
	}
	sqlite3_reset(s);
	sqlite3_clear_bindings(s);
	return rc;
}

/* A stored coupon_redeem event (inside the batch's transaction): decide a
 * new one, repeat the verdict of a redelivered one. A conflicting copy
 * (same seq, another id: a reset outbox) is kept aside undecided, like its
 * event. SQLITE_OK, or an error that rolls the batch back. */
int redemption_handle(const struct ident *id, const struct event_view *v,
			     enum store_result res, int64_t now, struct verdict_batch *vb)
{
	char q[200];

	switch (res) {
	case STORED_NEW:
		return verdict_decide(id, v, now, vb);
	case STORED_DUP:
		return verdict_again(id, v, vb);
	case STORED_CONFLICT:
		if (peer_warns_left())
			log_at(LVL_WARN, "coupon redemption conflicts with a held event; no verdict",
			       "tenant=%s store=%s device=%s seq=%" PRId64 " redemption=%s",
			       id->tenant, id->store, id->device, v->seq, lq(q, sizeof q, v->id));
		return SQLITE_OK;
	case STORE_ERROR:
		break;
	}
	return SQLITE_ERROR;
}

void verdict_list_free(struct pending_verdict *pv)
{
	while (pv) {
		struct pending_verdict *next = pv->next;

		free(pv->topic);
		free(pv->payload);
		free(pv);
		pv = next;
	}
}

void verdict_pop(void)
{
	struct pending_verdict *pv = g.verdict_head;

	g.verdict_head = pv->next;
	if (!g.verdict_head)
		g.verdict_tail = NULL;
	g.n_verdicts--;
	pv->next = NULL;
	verdict_list_free(pv);
}

/* A committed batch's verdicts join the queue, behind its ack (queued just
 * before). */
void verdicts_enqueue(struct verdict_batch *vb)
{
	struct pending_verdict *pv;
	int64_t due = tk_mono_ms() + g.opt.verdict_delay_ms;

	g.c.verdicts_accepted += vb->accepted;
	g.c.verdicts_rejected += vb->rejected;
	g.c.verdicts_redelivered += vb->redelivered;
	while ((pv = vb->head)) {
		vb->head = pv->next;
		pv->next = NULL;
		pv->after_ack = g.acks_queued;
		pv->due_ms = due;
		if (g.verdict_tail)
			g.verdict_tail->next = pv;
		else
			g.verdict_head = pv;
		g.verdict_tail = pv;
		g.n_verdicts++;
		if (g.n_verdicts > VERDICT_PENDING_MAX) {
			g.c.verdicts_dropped++;
			if (peer_warns_left())
				log_at(LVL_WARN, "too many verdicts waiting; oldest dropped",
				       "max=%d", VERDICT_PENDING_MAX);
			verdict_pop();
		}
	}
	vb->tail = &vb->head;
}

/* up/verdict/query (protocol.md "Verdict query"): publish again the
 * verdict of every redemption asked about that this central has decided;
 * ids it does not know are not answered (their event has not arrived). */
void verdict_query_handle(const char *topic, const char *payload, size_t len)
{
	struct ident id;
	cJSON *root = NULL;
	const cJSON *v, *ids, *it;
	struct verdict_batch vb = { 0 };
	char why[300], q[200];
	int n = 0, answered = 0;

	vb.tail = &vb.head;
	g.c.verdict_queries++;
	if (parse_topic(topic, &id, "up/verdict/query", why, sizeof why) != 0) {
		batch_drop(topic, why);
		return;
	}
	if (json_parse_strict(payload, len, &root, why, sizeof why) != 0) {
		batch_drop(topic, why);
		return;
	}
	v = cJSON_GetObjectItemCaseSensitive(root, "v");
	ids = cJSON_GetObjectItemCaseSensitive(root, "redemptions");
	if (!cJSON_IsObject(root) || !cJSON_IsNumber(v) || v->valuedouble != 1.0 || !cJSON_IsArray(ids) ||
	    (n = cJSON_GetArraySize(ids)) < 1 || n > 100) {
		batch_drop(topic, "verdict query: needs \"v\":1 and \"redemptions\": 1..100 ids");
		goto out;
	}
	cJSON_ArrayForEach(it, ids)
	{
		sqlite3_stmt *s = g.st.sel_verdict_by_id;

		if (!cJSON_IsString(it) || strlen(it->valuestring) > EVENT_ID_MAX)
			continue;
		sqlite3_bind_text(s, 1, id.tenant, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 2, id.store, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 3, id.device, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 4, it->valuestring, -1, SQLITE_STATIC);
		if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_text(s, 1) && sqlite3_column_text(s, 3)) {
			const char *verdict = (const char *)sqlite3_column_text(s, 3);

			if (verdict_add(&vb, &id, sqlite3_column_int64(s, 0), it->valuestring,
					(const char *)sqlite3_column_text(s, 2), (const char *)sqlite3_column_text(s, 1),
					strcmp(verdict, "accepted") == 0, (const char *)sqlite3_column_text(s, 4),
					(const char *)sqlite3_column_text(s, 5), sqlite3_column_int64(s, 6)) == SQLITE_OK)
				answered++;
		}
		sqlite3_reset(s);
		sqlite3_clear_bindings(s);
	}
	vb.redelivered = (uint64_t)answered;
	log_at(LVL_INFO, "verdict query answered", "tenant=%s store=%s device=%s asked=%d answered=%d", id.tenant,
	       id.store, lq(q, sizeof q, id.device), n, answered);
	verdicts_enqueue(&vb);
out:
	verdict_list_free(vb.head);
	cJSON_Delete(root);
}

static void on_verdict_ok(void *ctx, MQTTAsync_successData5 *resp)
{
	(void)resp;
	slot_complete(ctx, &g.verdicts_confirmed);
}

static void on_verdict_fail(void *ctx, MQTTAsync_failureData5 *resp)
{
	(void)resp;
	/* Lost unless the device redelivers the redemption (then sent again). */
	slot_complete(ctx, &g.verdicts_failed);
}

/* Main thread: publish the verdicts that may go, in order: each after its
 * batch's ack was handed to Paho (which sends in that order), once due
 * (unless now_all: shutdown), and only when no ack waits for a slot (acks
 * go first). A verdict waits while central is disconnected. */
void verdicts_flush(int now_all)
{
	while (g.verdict_head && !g.ack_head) {
		MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
		MQTTAsync_message msg = MQTTAsync_message_initializer;
		struct pending_verdict *pv = g.verdict_head;
		int free_idx, rc;
		uint32_t gen = 0;

		if (g.acks_popped < pv->after_ack || (!now_all && pv->due_ms > tk_mono_ms()))
			return;
		free_idx = slot_take(0, &gen);
		if (free_idx < 0)
			return; /* woken again by a completion or a reconnect */
		msg.payload = pv->payload;
		msg.payloadlen = (int)pv->len;
		msg.qos = 1;
		ro.onSuccess5 = on_verdict_ok;
		ro.onFailure5 = on_verdict_fail;
		ro.context = slot_context(free_idx, gen);
		rc = MQTTAsync_sendMessage(g.client, pv->topic, &msg, &ro);
		if (rc == MQTTASYNC_SUCCESS) {
			g.c.verdicts_sent++;
			verdict_pop(); /* Paho copied topic and payload */
			continue;
		}
		slot_release(free_idx);
		if (rc == MQTTASYNC_DISCONNECTED)
			return; /* keep it for after the reconnect */
		log_at(LVL_WARN, "verdict publish refused; dropped", "rc=%d err=\"%s\"", rc,
		       MQTTAsync_strerror(rc));
		g.c.verdicts_failed++;
		verdict_pop();
	}
}

/* Milliseconds until the first queued verdict is due (--verdict-delay-ms),
 * or -1: none, or it waits for its ack or a slot (a completion wakes). */
int64_t verdicts_due_in(void)
{
	int64_t now = tk_mono_ms();

	if (!g.verdict_head || g.acks_popped < g.verdict_head->after_ack ||
	    g.verdict_head->due_ms <= now)
		return -1;
	return g.verdict_head->due_ms - now;
}
