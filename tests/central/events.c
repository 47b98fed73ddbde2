/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-central, events.c: what a batch carries, checked: topics and their
 * ids, the events and their bodies (protocol.md "Event batch"), and storing
 * an event or a rejection.
 */
#include "central.h"

/* ======================================================================
 * batch handling (main thread)
 * ====================================================================== */

/* Copy one identity segment [A-Za-z0-9_.-]{1,64} ending at '/'; returns the
 * position after the '/' or NULL. */
const char *take_ident(const char *p, char *out)
{
	size_t n = 0;

	for (; *p && *p != '/'; p++) {
		char c = *p;
		int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			 c == '_' || c == '.' || c == '-';

		if (!ok || n >= IDENT_MAX)
			return NULL;
		out[n++] = c;
	}
	if (n == 0 || *p != '/')
		return NULL;
	out[n] = '\0';
	return p + 1;
}

/* The broker confines each device to its own topics, so identity comes from
 * the topic, never from the payload. 0 if topic is
 * scrm/v1/{tenant}/{store}/{device}/<suffix> with three valid ids; otherwise
 * -1 and why in why[n]. An id that is a word of the topic tree is refused
 * too: a device "down" would publish and receive under its store's
 * scrm/v1/{tenant}/{store}/down/#, which every device of the store reads. */
int parse_topic(const char *topic, struct ident *id, const char *suffix, char *why, size_t n)
{
	static const char prefix[] = "scrm/v1/";
	const char *p, *bad = NULL, *level = NULL;

	if (strncmp(topic, prefix, sizeof prefix - 1) != 0)
		goto shape;
	p = topic + sizeof prefix - 1;
	if (!(p = take_ident(p, id->tenant)) || !(p = take_ident(p, id->store)) ||
	    !(p = take_ident(p, id->device)) || strcmp(p, suffix) != 0)
		goto shape;
	if ((bad = ident__problem(id->tenant)))
		level = "tenant";
	else if ((bad = ident__problem(id->store)))
		level = "store";
	else if ((bad = ident__problem(id->device)))
		level = "device";
	if (!bad)
		return 0;
	snprintf(why, n, "%s: %s", level, bad);
	return -1;
shape:
	snprintf(why, n, "topic is not scrm/v1/{tenant}/{store}/{device}/%s", suffix);
	return -1;
}

int topic_ends_with(const char *topic, const char *suffix)
{
	size_t t = strlen(topic), n = strlen(suffix);

	return t >= n && strcmp(topic + t - n, suffix) == 0;
}

/* JSON numbers are doubles: accept integral values that a double holds
 * exactly. */
int json_int64(const cJSON *it, int64_t *out)
{
	double d;

	if (!cJSON_IsNumber(it))
		return -1;
	d = it->valuedouble;
	if (!(d >= -MAX_SAFE_INT && d <= MAX_SAFE_INT) || d != (double)(int64_t)d)
		return -1;
	*out = (int64_t)d;
	return 0;
}

/* An optional string field of 1..max bytes: 0 absent (or null), 1 present, -1 bad. */
int opt_string(const cJSON *root, const char *name, size_t max, const char **out)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, name);
	size_t n;

	*out = NULL;
	if (!it || cJSON_IsNull(it))
		return 0;
	if (!cJSON_IsString(it))
		return -1;
	n = strlen(it->valuestring);
	if (n == 0 || n > max)
		return -1;
	*out = it->valuestring;
	return 1;
}

/* A body string field of 1..max bytes: 0, or -1 with "body.<name>: ..." in
 * reason (absent is an error only if required). */
static int body_string(const cJSON *body, const char *name, size_t max, int required,
		       const char **out, char *reason, size_t rlen)
{
	int r = opt_string(body, name, max, out);

	if (r < 0 || (r == 0 && required)) {
		snprintf(reason, rlen, "body.%s: %s a string of 1..%zu bytes", name,
			 r < 0 ? "not" : "missing;", max);
		return -1;
	}
	return 0;
}

/* A body array of min..max strings of 1..item_max bytes: 0, or -1 with the
 * reason naming the field (or the element). */
static int body_strings(const cJSON *body, const char *name, int min, int max, size_t item_max,
			int required, char *reason, size_t rlen)
{
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(body, name), *it;
	int n, i = 0;

	if (!arr || cJSON_IsNull(arr)) {
		if (!required)
			return 0;
		snprintf(reason, rlen, "body.%s: missing; an array of %d..%d strings", name, min,
			 max);
		return -1;
	}
	n = cJSON_IsArray(arr) ? cJSON_GetArraySize(arr) : -1;
	if (n < min || n > max) {
		snprintf(reason, rlen, "body.%s: not an array of %d..%d strings", name, min, max);
		return -1;
	}
	cJSON_ArrayForEach(it, arr)
	{
		size_t len = cJSON_IsString(it) ? strlen(it->valuestring) : 0;

		if (len == 0 || len > item_max) {
			snprintf(reason, rlen, "body.%s[%d]: not a string of 1..%zu bytes", name, i,
				 item_max);
			return -1;
		}
		i++;
	}
	return 0;
}

/* The bodies this central checks: reco_shown (a recommendation list shown
 * to a guide; its id is the event id) and coupon_redeem (a coupon spent at
 * the till, possibly offline; decided by verdict_decide). Other kinds,
 * purchase with its optional reco_id and attributed included, are stored as
 * they are. 0, or -1 with "body.<field>: <problem>" in reason. */
static int body_validate(const char *kind, const cJSON *body, char *reason, size_t rlen)
{
	const char *s;

	if (strcmp(kind, "reco_shown") == 0) {
		if (body_string(body, "guide_id", BODY_ID_MAX, 1, &s, reason, rlen) ||
		    body_string(body, "member_id", BODY_ID_MAX, 0, &s, reason, rlen) ||
		    body_strings(body, "items", 1, RECO_ITEMS_MAX, BODY_ID_MAX, 1, reason, rlen) ||
		    body_strings(body, "basket", 0, RECO_BASKET_MAX, BODY_ID_MAX, 0, reason, rlen) ||
		    body_string(body, "stage", RECO_STAGE_MAX, 0, &s, reason, rlen))
			return -1;
	} else if (strcmp(kind, "coupon_redeem") == 0) {
		int64_t value;

		if (body_string(body, "campaign", BODY_ID_MAX, 1, &s, reason, rlen) ||
		    body_string(body, "coupon", BODY_ID_MAX, 0, &s, reason, rlen) ||
		    body_string(body, "member_id", BODY_ID_MAX, 0, &s, reason, rlen) ||
		    body_string(body, "order_id", BODY_ID_MAX, 1, &s, reason, rlen) ||
		    body_string(body, "guide_id", BODY_ID_MAX, 0, &s, reason, rlen))
			return -1;
		if (json_int64(cJSON_GetObjectItemCaseSensitive(body, "value"), &value) != 0 ||
		    value < 0) {
			snprintf(reason, rlen,
				 "body.value: missing or not an integer >= 0 (minor units)");
			return -1;
		}
		if (body_string(body, "currency", BODY_ID_MAX, 1, &s, reason, rlen))
			return -1;
		if (strlen(s) != 3 || s[0] < 'A' || s[0] > 'Z' || s[1] < 'A' || s[1] > 'Z' ||
		    s[2] < 'A' || s[2] > 'Z') {
			snprintf(reason, rlen, "body.currency: not three upper-case letters");
			return -1;
		}
		if (body_string(body, "mode", BODY_ID_MAX, 1, &s, reason, rlen))
			return -1;
		if (strcmp(s, "offline") != 0 && strcmp(s, "online") != 0) {
			snprintf(reason, rlen, "body.mode: not \"offline\" or \"online\"");
			return -1;
		}
	}
	return 0;
}

/* Envelope checks, then body_validate; on failure writes "<field>: <problem>"
 * into reason. */
int event_validate(const cJSON *ev, struct event_view *v, char *reason, size_t rlen)
{
	const cJSON *it;
	size_t n;
	int i;

	it = cJSON_GetObjectItemCaseSensitive(ev, "id");
	if (!cJSON_IsString(it)) {
		snprintf(reason, rlen, "id: missing or not a string");
		return -1;
	}
	n = strlen(it->valuestring);
	if (n == 0 || n > EVENT_ID_MAX) {
		snprintf(reason, rlen, "id: must be 1..%d bytes", EVENT_ID_MAX);
		return -1;
	}
	v->id = it->valuestring;

	it = cJSON_GetObjectItemCaseSensitive(ev, "kind");
	if (!cJSON_IsString(it)) {
		snprintf(reason, rlen, "kind: missing or not a string");
		return -1;
	}
	n = strlen(it->valuestring);
	if (n == 0 || n > KIND_MAX) {
		snprintf(reason, rlen, "kind: must be 1..%d bytes", KIND_MAX);
		return -1;
	}
	v->kind = it->valuestring;

	if (json_int64(cJSON_GetObjectItemCaseSensitive(ev, "wall_ms"), &v->wall_ms) != 0) {
		snprintf(reason, rlen, "wall_ms: missing or not an integer");
		return -1;
	}

	/* mono_ms, boot, clock_ok: the agent always sends them, but they only
	 * refine the time, so absent is tolerated; a wrong type is not. */
	it = cJSON_GetObjectItemCaseSensitive(ev, "mono_ms");
	v->has_mono = 0;
	if (it && !cJSON_IsNull(it)) {
		if (json_int64(it, &v->mono_ms) != 0) {
			snprintf(reason, rlen, "mono_ms: not an integer");
			return -1;
		}
		v->has_mono = 1;
	}
	it = cJSON_GetObjectItemCaseSensitive(ev, "boot");
	v->boot = NULL;
	if (it && !cJSON_IsNull(it)) {
		if (!cJSON_IsString(it) || strlen(it->valuestring) > EVENT_ID_MAX) {
			snprintf(reason, rlen, "boot: not a string of at most %d bytes", EVENT_ID_MAX);
			return -1;
		}
		v->boot = it->valuestring;
	}
	it = cJSON_GetObjectItemCaseSensitive(ev, "clock_ok");
	v->clock_ok = -1;
	if (it && !cJSON_IsNull(it)) {
		if (!cJSON_IsBool(it)) {
			snprintf(reason, rlen, "clock_ok: not a boolean");
			return -1;
		}
		v->clock_ok = cJSON_IsTrue(it) ? 1 : 0;
	}

	it = cJSON_GetObjectItemCaseSensitive(ev, "body");
	if (!cJSON_IsObject(it)) {
		snprintf(reason, rlen, "body: missing or not an object");
		return -1;
	}
	v->body = it;

	/* Unknown kinds are stored as opaque bodies (protocol: Versioning);
	 * --reject-kind exists so tests can drive the agent's rejected path. */
	for (i = 0; i < g.opt.n_reject_kinds; i++) {
		if (strcmp(v->kind, g.opt.reject_kinds[i]) == 0) {
			snprintf(reason, rlen, "kind: %s is rejected by this central (--reject-kind)",
				 v->kind);
			return -1;
		}
	}
	return body_validate(v->kind, v->body, reason, rlen);
}

void bind_ident(sqlite3_stmt *s, const struct ident *id, int64_t seq)
{
	sqlite3_bind_text(s, 1, id->tenant, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 2, id->store, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 3, id->device, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 4, seq);
}

static void bind_opt_fields(sqlite3_stmt *s, int col, const struct event_view *v)
{
	if (v->has_mono)
		sqlite3_bind_int64(s, col, v->mono_ms);
	else
		sqlite3_bind_null(s, col);
	if (v->boot)
		sqlite3_bind_text(s, col + 1, v->boot, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(s, col + 1);
	if (v->clock_ok >= 0)
		sqlite3_bind_int(s, col + 2, v->clock_ok);
	else
		sqlite3_bind_null(s, col + 2);
}

enum store_result event_store(const struct ident *id, const struct event_view *v,
				     int64_t arrival, int64_t now)
{
	sqlite3_stmt *s = g.st.ins_event;
	enum store_result res = STORE_ERROR;
	char *body = cJSON_PrintUnformatted(v->body);
	char *existing = NULL;
	int rc;

	if (!body)
		return STORE_ERROR;
	bind_ident(s, id, v->seq);
	sqlite3_bind_text(s, 5, v->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 6, v->kind, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 7, v->wall_ms);
	bind_opt_fields(s, 8, v);
	sqlite3_bind_text(s, 11, body, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 12, arrival);
	sqlite3_bind_int64(s, 13, now);
	rc = db_step(s);
	if (rc != SQLITE_OK)
		goto cleanup;
	if (sqlite3_changes(g.db) == 1) {
		res = STORED_NEW;
		goto cleanup;
	}

	/* Already held: the same event again, or a different one (conflict). */
	s = g.st.sel_id;
	bind_ident(s, id, v->seq);
	if (sqlite3_step(s) == SQLITE_ROW) {
		const unsigned char *t = sqlite3_column_text(s, 0);

		existing = strdup(t ? (const char *)t : "");
	}
	sqlite3_reset(s);
	if (!existing)
		goto cleanup;
	if (strcmp(existing, v->id) == 0) {
		res = STORED_DUP;
		goto cleanup;
	}
	s = g.st.ins_conflict;
	bind_ident(s, id, v->seq);
	sqlite3_bind_text(s, 5, v->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 6, existing, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 7, v->kind, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 8, v->wall_ms);
	bind_opt_fields(s, 9, v);
	sqlite3_bind_text(s, 12, body, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 13, now);
	rc = db_step(s);
	if (rc != SQLITE_OK)
		goto cleanup;
	if (sqlite3_changes(g.db) == 1) {
		char q1[160], q2[160];

		/* The alert the protocol asks for: an outbox was reset. A reset
		 * outbox conflicts on every seq, hence the cap. */
		if (peer_warns_left())
			log_at(LVL_WARN, "conflict: same seq, different id; kept aside",
			       "tenant=%s store=%s device=%s seq=%" PRId64 " held_id=%s new_id=%s",
			       id->tenant, id->store, id->device, v->seq,
			       lq(q1, sizeof q1, existing), lq(q2, sizeof q2, v->id));
		res = STORED_CONFLICT;
	} else {
		res = STORED_DUP; /* a redelivered copy of a known conflict */
	}

cleanup:
	/* SQLITE_STATIC bindings point into memory freed below */
	sqlite3_clear_bindings(g.st.ins_event);
	sqlite3_clear_bindings(g.st.sel_id);
	sqlite3_clear_bindings(g.st.ins_conflict);
	free(existing);
	cJSON_free(body);
	return res;
}

int reject_store(const struct ident *id, int64_t seq, const char *reason,
			const cJSON *ev, int64_t now)
{
	sqlite3_stmt *s = g.st.ins_rejected;
	char *text = cJSON_PrintUnformatted(ev);
	int rc;

	bind_ident(s, id, seq);
	sqlite3_bind_text(s, 5, reason, -1, SQLITE_STATIC);
	if (text)
		sqlite3_bind_text(s, 6, text, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(s, 6);
	sqlite3_bind_int64(s, 7, now);
	sqlite3_bind_int64(s, 8, now);
	rc = db_step(s);
	sqlite3_clear_bindings(s);
	cJSON_free(text);
	return rc;
}
