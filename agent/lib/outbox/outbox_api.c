/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outbox_api: the public maintenance calls on the outbox (scrm_outbox_get_health,
 * scrm_outbox_set_aside, scrm_outbox_recover) — what scrmctl shows and
 * repairs — over the outbox module's own functions. It owns no state: each
 * call reads through the store's connection or opens one of its own.
 */
#include <scrm/scrm.h>

#include "capture.h"
#include "err.h"
#include "outbox.h"
#include "salvage.h"
#include "sbuf.h"

#include <string.h>

_Static_assert(SCRM_OUTBOX_HEALTH_KINDS == OUTBOX_HEALTH_KINDS, "scrm_outbox_health mirrors outbox__health");

/* Storage figures and alarms, read on the store's own connection. */
struct health_read {
	struct outbox__health h;
	sbuf alarms;
	int want_alarms;
};

static int read_health(outbox *ob, void *ctx)
{
	struct health_read *x = ctx;
	int rc = outbox__health(ob, &x->h);
	return rc || !x->want_alarms ? rc : outbox__alarms(ob, &x->alarms);
}

int scrm_outbox_get_health(scrm_store *store, scrm_outbox_health *out, char **alarms_json)
{
	struct health_read x;
	int rc;
	err__clear();
	if (!store || !out)
		return err__set(SCRM_E_INVALID, "store/out: NULL");
	if (alarms_json)
		*alarms_json = NULL;
	memset(&x, 0, sizeof(x));
	sbuf__init(&x.alarms);
	x.want_alarms = alarms_json != NULL;
	rc = store__exclusive(store, read_health, &x);
	if (rc == SCRM_OK && x.alarms.oom)
		rc = err__set(SCRM_E_NOMEM, "out of memory");
	if (rc == SCRM_OK) {
		memset(out, 0, sizeof(*out));
		out->pending = x.h.pending;
		out->bytes = x.h.bytes;
		out->max_bytes = x.h.max_bytes;
		out->reserve_bytes = x.h.reserve_bytes;
		out->oldest_pending_ms = x.h.oldest_pending_wall_ms;
		out->last_ack_ms = x.h.last_ack_ms;
		out->last_seq = x.h.last_seq;
		out->refused_paid = x.h.refused_paid;
		out->in_reserve = x.h.in_reserve;
		out->n_dropped = x.h.n_dropped < SCRM_OUTBOX_HEALTH_KINDS ? x.h.n_dropped : SCRM_OUTBOX_HEALTH_KINDS;
		for (size_t i = 0; i < out->n_dropped; i++) {
			memcpy(out->dropped[i].kind, x.h.dropped[i].kind, sizeof(out->dropped[i].kind));
			out->dropped[i].count = x.h.dropped[i].count;
			out->dropped[i].bytes = x.h.dropped[i].bytes;
			out->dropped[i].last_ms = x.h.dropped[i].last_ms;
		}
		if (alarms_json) {
			if (!x.alarms.len)
				sbuf__puts(&x.alarms, "[]");
			*alarms_json = sbuf__take(&x.alarms, NULL);
			if (!*alarms_json)
				rc = err__set(SCRM_E_NOMEM, "out of memory");
		}
	}
	sbuf__free(&x.alarms);
	return rc;
}

int scrm_outbox_set_aside(const char *dir, const char *device_id, char **json)
{
	outbox *ob = NULL;
	sbuf out;
	int rc;
	err__clear();
	if (!dir || !json)
		return err__set(SCRM_E_INVALID, "dir/json: NULL");
	*json = NULL;
	if ((rc = outbox__open(dir, device_id, 0, &ob)) != SCRM_OK)
		return rc;
	sbuf__init(&out);
	rc = outbox__set_aside_list(ob, &out);
	outbox__close(ob);
	if (rc == SCRM_OK && (out.oom || !(*json = sbuf__take(&out, NULL))))
		rc = err__set(SCRM_E_NOMEM, "out of memory");
	sbuf__free(&out);
	return rc;
}

int scrm_outbox_recover(const char *dir, const char *device_id, const char *path, scrm_recover_report *out)
{
	outbox *ob = NULL;
	salvage__report r;
	int rc;
	err__clear();
	if (!dir || !path)
		return err__set(SCRM_E_INVALID, "dir/path: NULL");
	memset(&r, 0, sizeof(r));
	if ((rc = outbox__open(dir, device_id, 0, &ob)) != SCRM_OK)
		return rc;
	rc = outbox__recover_file(ob, path, &r);
	outbox__close(ob);
	if (rc == SCRM_OK && out) {
		out->recovered = r.events;
		out->already_held = r.skipped;
		out->unreadable = r.unreadable_rows;
		out->damaged_ranges = r.skipped_ranges;
		out->ledger_rows = r.ledger_rows;
	}
	return rc;
}
