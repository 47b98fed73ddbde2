/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-central, batch.c: one event batch, received: strict JSON, the batch's
 * checks, its events stored in one transaction, and the ack rendered for
 * after the commit.
 */
#include "central.h"

static int cmp_range(const void *a, const void *b)
{
	const int64_t *x = a, *y = b;

	return (x[0] > y[0]) - (x[0] < y[0]);
}

/* Ack: {"v":1,"batch":...,"acked":[[first,last],...],"rejected":[...]
 * [,"resend_from":N]}. `ranges` (sorted and merged here) already coalesce
 * what the batch's `after` allows (batch_handle). protocol.md caps each list
 * at ACK_MAX_ENTRIES: longer ones go out as several acks. */
static void ack_build(const struct ident *id, const char *batch, int64_t (*ranges)[2], size_t na,
		      const struct rejection *rej, size_t nr, int64_t resend_from)
{
	char topic[3 * IDENT_MAX + 32];
	size_t i, j, m = 0, ra = 0, rr = 0;

	qsort(ranges, na, sizeof ranges[0], cmp_range);
	for (i = 0; i < na; i = j) {
		int64_t first = ranges[i][0], last = ranges[i][1];

		/* also swallows a seq listed twice */
		for (j = i + 1; j < na && ranges[j][0] <= last + 1; j++)
			if (ranges[j][1] > last)
				last = ranges[j][1];
		ranges[m][0] = first;
		ranges[m][1] = last;
		m++;
	}
	snprintf(topic, sizeof topic, "scrm/v1/%s/%s/%s/down/ack", id->tenant, id->store,
		 id->device);
	do {
		struct sbuf b = { 0 };
		size_t ea = m - ra > ACK_MAX_ENTRIES ? ACK_MAX_ENTRIES : m - ra;
		size_t er = nr - rr > ACK_MAX_ENTRIES ? ACK_MAX_ENTRIES : nr - rr;

		sb_add(&b, "{\"v\":1,\"batch\":");
		sb_json_str(&b, batch);
		sb_add(&b, ",\"acked\":[");
		for (i = 0; i < ea; i++)
			sb_add(&b, "%s[%" PRId64 ",%" PRId64 "]", i ? "," : "", ranges[ra + i][0],
			       ranges[ra + i][1]);
		sb_add(&b, "],\"rejected\":[");
		for (i = 0; i < er; i++) {
			sb_add(&b, "%s{\"seq\":%" PRId64 ",\"reason\":", i ? "," : "", rej[rr + i].seq);
			sb_json_str(&b, rej[rr + i].reason);
			sb_add(&b, "}");
		}
		sb_add(&b, "]");
		ra += ea;
		rr += er;
		/* resend_from goes with the last part: the agent acts on it once */
		if (resend_from > 0 && ra == m && rr == nr)
			sb_add(&b, ",\"resend_from\":%" PRId64, resend_from);
		sb_add(&b, "}");
		if (b.oom) {
			free(b.p);
			log_at(LVL_ERROR, "out of memory building ack", NULL);
			return;
		}
		ack_queue(strdup(topic), &b);
	} while (ra < m || rr < nr);
}

/* A misbehaving device must not flood the log: warnings about what devices
 * send are capped per stats period (the stats line still counts them all). */
int peer_warns_left(void)
{
	if (g.peer_warns < PEER_WARN_PER_PERIOD) {
		g.peer_warns++;
		return 1;
	}
	if (g.peer_warns++ == PEER_WARN_PER_PERIOD)
		log_at(LVL_WARN, "more device input warnings suppressed until the next stats line",
		       NULL);
	return 0;
}

static int cmp_child_name(const void *a, const void *b)
{
	const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;

	return strcmp(x->string ? x->string : "", y->string ? y->string : "");
}

/* The first duplicate key in any object of the tree, or NULL. Objects are
 * sorted by name when large, so a hostile object is n log n, not n^2. */
static const char *json_duplicate_key(const cJSON *o)
{
	const cJSON *c;
	const char *dup = NULL;
	size_t n = 0, i;

	if (!o)
		return NULL;
	for (c = o->child; c; c = c->next) {
		n++;
		if ((dup = json_duplicate_key(c)))
			return dup;
	}
	if (!cJSON_IsObject(o) || n < 2)
		return NULL;
	if (n <= 16) {
		for (c = o->child; c; c = c->next)
			for (const cJSON *d = c->next; d; d = d->next)
				if (c->string && d->string && strcmp(c->string, d->string) == 0)
					return c->string;
		return NULL;
	}
	const cJSON **v = malloc(n * sizeof *v);
	if (!v)
		return NULL;
	for (i = 0, c = o->child; c; c = c->next)
		v[i++] = c;
	qsort(v, n, sizeof *v, cmp_child_name);
	for (i = 1; i < n && !dup; i++)
		if (v[i]->string && v[i - 1]->string && strcmp(v[i]->string, v[i - 1]->string) == 0)
			dup = v[i]->string;
	free(v);
	return dup;
}

/* Parse a device's payload as protocol.md requires: one JSON value, nothing
 * after it, no object repeating a key (two parsers that disagree on which
 * copy counts are a known attack). 0, or -1 with the reason in why. */
int json_parse_strict(const char *payload, size_t len, cJSON **out, char *why, size_t wlen)
{
	const char *end = NULL;
	const char *dup;

	*out = cJSON_ParseWithLengthOpts(payload, len, &end, 0);
	if (!*out) {
		snprintf(why, wlen, "payload is not valid JSON");
		return -1;
	}
	while (end && end < payload + len && (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t'))
		end++;
	if (end != payload + len) {
		snprintf(why, wlen, "payload has characters after the JSON value");
		goto bad;
	}
	if ((dup = json_duplicate_key(*out))) {
		snprintf(why, wlen, "payload repeats the key \"%.60s\"", dup);
		goto bad;
	}
	return 0;
bad:
	cJSON_Delete(*out);
	*out = NULL;
	return -1;
}

void batch_drop(const char *topic, const char *why)
{
	char q1[200], q2[200];

	g.c.batches_dropped++;
	if (peer_warns_left())
		log_at(LVL_WARN, "batch dropped", "topic=%s reason=%s", lq(q1, sizeof q1, topic),
		       lq(q2, sizeof q2, why));
	db_add_stat("batches_dropped", 1);
}

void batch_handle(const char *topic, const char *payload, size_t len)
{
	struct ident id;
	cJSON *root = NULL;
	const cJSON *batch, *v, *events, *ev;
	int64_t (*acked)[2] = NULL;
	struct rejection *rej = NULL;
	size_t na = 0, nr = 0, n, idx = 0;
	uint64_t n_new = 0, n_dup = 0, n_conf = 0, n_unackable = 0, n_aside = 0, n_dup_orders = 0, n_late = 0;
	uint64_t n_violations = 0;
	int64_t now = tk_wall_ms();
	int64_t contiguous = 0, base = 0, resend_from = 0, after = -1, prev;
	int in_tx = 0;
	char q1[200], q2[200];
	struct verdict_batch vb = { 0 };

	vb.tail = &vb.head;
	{
		char why[300];

		if (parse_topic(topic, &id, "up/events", why, sizeof why) != 0) {
			batch_drop(topic, why);
			return;
		}
	}
	{
		char why[300];

		if (json_parse_strict(payload, len, &root, why, sizeof why) != 0) {
			batch_drop(topic, why);
			goto cleanup;
		}
	}
	if (!cJSON_IsObject(root)) {
		batch_drop(topic, "payload is not a JSON object");
		goto cleanup;
	}
	batch = cJSON_GetObjectItemCaseSensitive(root, "batch");
	if (!cJSON_IsString(batch) || !batch->valuestring[0]) {
		batch_drop(topic, "batch: missing or not a string (cannot ack)");
		goto cleanup;
	}
	if (strlen(batch->valuestring) > BATCH_ID_MAX) {
		batch_drop(topic, "batch: id longer than 128 bytes");
		goto cleanup;
	}
	v = cJSON_GetObjectItemCaseSensitive(root, "v");
	if (!cJSON_IsNumber(v) || v->valuedouble != 1.0) {
		batch_drop(topic, "v: missing or not 1");
		goto cleanup;
	}
	events = cJSON_GetObjectItemCaseSensitive(root, "events");
	if (!cJSON_IsArray(events)) {
		batch_drop(topic, "events: missing or not an array");
		goto cleanup;
	}
	n = (size_t)cJSON_GetArraySize(events);
	acked = malloc((n ? n : 1) * sizeof *acked);
	rej = malloc((n ? n : 1) * sizeof *rej);
	if (!acked || !rej) {
		log_at(LVL_ERROR, "out of memory for a batch", "events=%zu", n);
		goto cleanup;
	}

	if (db_step(g.st.begin) != SQLITE_OK)
		goto cleanup;
	in_tx = 1;

	/* In-order commit (docs/protocol.md, "Ordering"): everything up to
	 * `contiguous` is settled; a hole stops the batch and asks for a resend. */
	{
		sqlite3_stmt *s = g.st.sel_contig;
		sqlite3_bind_text(s, 1, id.tenant, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 2, id.store, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 3, id.device, -1, SQLITE_STATIC);
		if (sqlite3_step(s) == SQLITE_ROW)
			contiguous = sqlite3_column_int64(s, 0);
		sqlite3_reset(s);
		sqlite3_clear_bindings(s);
	}
	if (json_int64(cJSON_GetObjectItemCaseSensitive(root, "base"), &base) == 0 && base > contiguous + 1) {
		/* The device deleted these because a central acknowledged them;
		 * this database does not have them. Never wait for them. */
		sqlite3_stmt *s = g.st.ins_gap;
		sqlite3_bind_text(s, 1, id.tenant, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 2, id.store, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 3, id.device, -1, SQLITE_STATIC);
		sqlite3_bind_int64(s, 4, contiguous + 1);
		sqlite3_bind_int64(s, 5, base - 1);
		sqlite3_bind_int64(s, 6, now);
		if (db_step(s) != SQLITE_OK)
			goto cleanup;
		log_at(LVL_WARN, "device reports acknowledged events this database does not hold",
		       "tenant=%s store=%s device=%s from_seq=%" PRId64 " to_seq=%" PRId64, id.tenant, id.store,
		       id.device, contiguous + 1, base - 1);
		contiguous = base - 1;
	}
	/* after (protocol.md): the device holds nothing between `after` and the
	 * first event, nor between two events of the batch; seqs missing there
	 * were evicted and never come. Absent (older agents): -1, and every
	 * hole is waited for. */
	if (json_int64(cJSON_GetObjectItemCaseSensitive(root, "after"), &after) != 0 || after < 0)
		after = -1;
	prev = after;
	cJSON_ArrayForEach(ev, events)
	{
		struct event_view ve;
		char reason[REASON_MAX];
		enum store_result res;
		int64_t seq;

		idx++;
		memset(&ve, 0, sizeof ve);
		/* Without a seq an event can be neither acked nor rejected: the
		 * agent will resend it, and it will be dropped again. */
		if (!cJSON_IsObject(ev) ||
		    json_int64(cJSON_GetObjectItemCaseSensitive(ev, "seq"), &seq) != 0 || seq < 1) {
			n_unackable++;
			if (peer_warns_left())
				log_at(LVL_WARN, "event without a valid seq ignored",
				       "tenant=%s store=%s device=%s batch=%s index=%zu", id.tenant, id.store,
				       id.device, lq(q1, sizeof q1, batch->valuestring), idx - 1);
			continue;
		}
		ve.seq = seq;
		if (seq > contiguous + 1 && after >= 0 && prev >= 0 && prev <= contiguous) {
			/* Not a hole: the device says nothing lies between the
			 * event before (held here) and this one. */
			log_at(LVL_DEBUG, "seqs skipped by the device (evicted)",
			       "tenant=%s store=%s device=%s from_seq=%" PRId64 " to_seq=%" PRId64, id.tenant, id.store,
			       id.device, contiguous + 1, seq - 1);
			contiguous = seq - 1;
		}
		if (seq > contiguous + 1) {
			/* A hole before this event: store nothing past it. */
			resend_from = contiguous + 1;
			break;
		}
		/* settled before: by an earlier event, or on the device's word
		 * (base, after); a new copy of it is a late event (below). */
		int settled = seq <= contiguous;
		const cJSON *rec = cJSON_GetObjectItemCaseSensitive(ev, "recovered");
		int recovered = cJSON_IsTrue(rec);
		if (seq == contiguous + 1)
			contiguous = seq;
		prev = seq;
		/* The acked ranges: consecutive seqs only. Never over a seq
		 * central does not hold, even one `after` says the device does
		 * not hold: it may hold it again by the time the ack arrives (an
		 * event recovered from a quarantined file), and an ack deletes. */
#define ACK_SEQ(q)                                                                                  \
	do {                                                                                        \
		if (na > 0 && (q) == acked[na - 1][1] + 1)                                          \
			acked[na - 1][1] = (q);                                                     \
		else {                                                                              \
			acked[na][0] = acked[na][1] = (q);                                          \
			na++;                                                                       \
		}                                                                                   \
	} while (0)
		const cJSON *aside = cJSON_GetObjectItemCaseSensitive(ev, "set_aside");
		if (aside) {
			/* A set-aside marker settles its seq: no body, nothing to
			 * validate but the marker itself. */
			const cJSON *r = cJSON_IsObject(aside) ? cJSON_GetObjectItemCaseSensitive(aside, "reason") : NULL;
			const cJSON *d = cJSON_IsObject(aside) ? cJSON_GetObjectItemCaseSensitive(aside, "detail") : NULL;
			const cJSON *by = cJSON_IsObject(aside) ? cJSON_GetObjectItemCaseSensitive(aside, "bytes") : NULL;
			const cJSON *eid = cJSON_GetObjectItemCaseSensitive(ev, "id");
			const cJSON *ek = cJSON_GetObjectItemCaseSensitive(ev, "kind");
			sqlite3_stmt *s = g.st.ins_aside;
			int64_t bytes = 0;

			if (!cJSON_IsString(r)) {
				snprintf(reason, sizeof reason, "set_aside.reason: missing or not a string");
				goto reject;
			}
			bind_ident(s, &id, seq);
			if (cJSON_IsString(eid))
				sqlite3_bind_text(s, 5, eid->valuestring, -1, SQLITE_STATIC);
			if (cJSON_IsString(ek))
				sqlite3_bind_text(s, 6, ek->valuestring, -1, SQLITE_STATIC);
			sqlite3_bind_text(s, 7, r->valuestring, -1, SQLITE_STATIC);
			if (cJSON_IsString(d))
				sqlite3_bind_text(s, 8, d->valuestring, -1, SQLITE_STATIC);
			if (json_int64(by, &bytes) == 0)
				sqlite3_bind_int64(s, 9, bytes);
			sqlite3_bind_int64(s, 10, now);
			if (db_step(s) != SQLITE_OK) {
				sqlite3_clear_bindings(s);
				goto cleanup;
			}
			sqlite3_clear_bindings(s);
			if (sqlite3_changes(g.db) == 1) {
				n_aside++;
				if (settled && !recovered)
					n_violations++;
				log_at(LVL_WARN, "event set aside by the device; its data stays there",
				       "tenant=%s store=%s device=%s seq=%" PRId64 " kind=%s reason=%s", id.tenant,
				       id.store, id.device, seq, cJSON_IsString(ek) ? lq(q1, sizeof q1, ek->valuestring) : "?",
				       lq(q2, sizeof q2, r->valuestring));
			}
			ACK_SEQ(seq);
			continue;
		}
		if (event_validate(ev, &ve, reason, sizeof reason) != 0) {
		reject:
			if (reject_store(&id, seq, reason, ev, now) != SQLITE_OK)
				goto cleanup;
			rej[nr].seq = seq;
			snprintf(rej[nr].reason, sizeof rej[nr].reason, "%s", reason);
			nr++;
			if (peer_warns_left())
				log_at(LVL_WARN, "event rejected",
				       "tenant=%s store=%s device=%s seq=%" PRId64 " reason=%s",
				       id.tenant, id.store, id.device, seq,
				       lq(q2, sizeof q2, reason));
			continue;
		}
		res = event_store(&id, &ve, g.next_arrival + (int64_t)n_new, now);
		if (res == STORED_NEW && settled) {
			/* protocol.md: a seq settled on the device's word, yet the
			 * event exists: stored (never dropped for its seq), and a
			 * fault of the device unless it says it recovered it. */
			sqlite3_stmt *s = g.st.ins_late;

			bind_ident(s, &id, seq);
			sqlite3_bind_int(s, 5, recovered);
			sqlite3_bind_int64(s, 6, now);
			if (db_step(s) != SQLITE_OK)
				goto cleanup;
			n_late++;
			if (!recovered) {
				n_violations++;
				log_at(LVL_ERROR, "PROTOCOL VIOLATION: event below the settled seq the device claimed; stored",
				       "tenant=%s store=%s device=%s seq=%" PRId64 " contiguous=%" PRId64, id.tenant,
				       id.store, id.device, seq, contiguous);
			}
		}
		if (res == STORED_NEW && (strcmp(ve.kind, "purchase") == 0 || strcmp(ve.kind, "return") == 0)) {
			/* Second guard against a sale recorded twice (protocol.md):
			 * the same order under another seq is kept aside. */
			const cJSON *k = cJSON_GetObjectItemCaseSensitive(
				ve.body, strcmp(ve.kind, "purchase") == 0 ? "order_id" : "return_id");
			sqlite3_stmt *s = g.st.sel_order;
			int64_t held = 0;

			if (cJSON_IsString(k)) {
				sqlite3_bind_text(s, 1, id.tenant, -1, SQLITE_STATIC);
				sqlite3_bind_text(s, 2, id.store, -1, SQLITE_STATIC);
				sqlite3_bind_text(s, 3, id.device, -1, SQLITE_STATIC);
				sqlite3_bind_text(s, 4, ve.kind, -1, SQLITE_STATIC);
				sqlite3_bind_text(s, 5, k->valuestring, -1, SQLITE_STATIC);
				sqlite3_bind_int64(s, 6, seq);
				if (sqlite3_step(s) == SQLITE_ROW)
					held = sqlite3_column_int64(s, 0);
				sqlite3_reset(s);
				sqlite3_clear_bindings(s);
			}
			if (held) {
				s = g.st.move_dup_order;
				bind_ident(s, &id, seq);
				sqlite3_bind_text(s, 5, k->valuestring, -1, SQLITE_STATIC);
				sqlite3_bind_int64(s, 6, held);
				sqlite3_bind_int64(s, 7, now);
				if (db_step(s) != SQLITE_OK)
					goto cleanup;
				sqlite3_clear_bindings(s);
				s = g.st.del_event;
				bind_ident(s, &id, seq);
				if (db_step(s) != SQLITE_OK)
					goto cleanup;
				n_dup_orders++;
				log_at(LVL_WARN, "the same sale under another seq; kept aside as a duplicate",
				       "tenant=%s store=%s device=%s seq=%" PRId64 " held_seq=%" PRId64 " %s=%s", id.tenant,
				       id.store, id.device, seq, held, strcmp(ve.kind, "purchase") == 0 ? "order_id" : "return_id",
				       lq(q1, sizeof q1, k->valuestring));
				ACK_SEQ(seq);
				continue;
			}
		}
		switch (res) {
		case STORED_NEW:
			n_new++;
			break;
		case STORED_DUP:
			n_dup++;
			break;
		case STORED_CONFLICT:
			n_conf++;
			break;
		case STORE_ERROR:
			goto cleanup;
		}
		if (strcmp(ve.kind, "coupon_redeem") == 0 &&
		    redemption_handle(&id, &ve, res, now, &vb) != SQLITE_OK)
			goto cleanup;
		ACK_SEQ(seq);
	}
#undef ACK_SEQ

	{
		sqlite3_stmt *s = g.st.upsert_device;

		sqlite3_bind_text(s, 1, id.tenant, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 2, id.store, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 3, id.device, -1, SQLITE_STATIC);
		sqlite3_bind_int64(s, 4, (int64_t)n_new);
		sqlite3_bind_int64(s, 5, (int64_t)n_dup);
		sqlite3_bind_int64(s, 6, (int64_t)n_conf);
		sqlite3_bind_int64(s, 7, (int64_t)nr);
		sqlite3_bind_int64(s, 8, (int64_t)n_unackable);
		sqlite3_bind_int64(s, 9, now);
		sqlite3_bind_int64(s, 10, now);
		sqlite3_bind_int64(s, 11, contiguous);
		if (db_step(s) != SQLITE_OK)
			goto cleanup;
	}
	if (db_step(g.st.commit) != SQLITE_OK)
		goto cleanup;
	in_tx = 0;

	/* Durable: now, and only now, may the device forget these events. */
	g.next_arrival += (int64_t)n_new;
	g.c.batches++;
	g.c.events_new += n_new;
	g.c.duplicates += n_dup;
	g.c.conflicts += n_conf;
	g.c.rejected += nr;
	g.c.unackable += n_unackable;
	g.c.set_aside += n_aside;
	g.c.duplicate_orders += n_dup_orders;
	g.c.late += n_late;
	g.c.violations += n_violations;
	if (n_late)
		db_add_stat("late", (int64_t)n_late);
	if (n_violations) {
		db_add_stat("violations", (int64_t)n_violations);
		if (g.opt.strict) {
			/* Tests run central --strict: a device that over-claims must
			 * fail them loudly, not be papered over. */
			log_at(LVL_ERROR, "stopping: protocol violation by a device (--strict)",
			       "tenant=%s store=%s device=%s violations=%" PRIu64, id.tenant, id.store, id.device,
			       n_violations);
			exit(3);
		}
	}
	log_at(LVL_DEBUG, "batch stored",
	       "tenant=%s store=%s device=%s batch=%s events=%zu new=%" PRIu64 " dup=%" PRIu64
	       " conflicts=%" PRIu64 " rejected=%zu",
	       id.tenant, id.store, id.device, lq(q1, sizeof q1, batch->valuestring), n, n_new,
	       n_dup, n_conf, nr);
	if (resend_from)
		log_at(LVL_INFO, "hole before this batch; asking for a resend",
		       "tenant=%s store=%s device=%s batch=%s resend_from=%" PRId64, id.tenant, id.store, id.device,
		       lq(q1, sizeof q1, batch->valuestring), resend_from);
	ack_build(&id, batch->valuestring, acked, na, rej, nr, resend_from);
	verdicts_enqueue(&vb); /* after the ack: see verdicts_flush */

cleanup:
	if (in_tx) {
		/* No ack: the agent redelivers after its ack timeout. */
		log_at(LVL_ERROR, "batch not stored (rolled back, not acked)", "tenant=%s device=%s",
		       id.tenant, id.device);
		db_step(g.st.rollback);
	}
	sqlite3_clear_bindings(g.st.upsert_device);
	verdict_list_free(vb.head); /* NULL once enqueued */
	free(acked);
	free(rej);
	cJSON_Delete(root);
}
