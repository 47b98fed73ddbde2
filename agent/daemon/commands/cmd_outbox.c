/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cmd_outbox: the commands on the outbox — flush (everything unacknowledged
 * goes out again now) and alarm.clear (operations acknowledge an alarm).
 */
#include "commands.h"

#include "err.h"
#include "log.h"

#include <string.h>

int cmd__flush(cmd__ctx *c, const fleet__cmd *cmd, sbuf *res, fleet__error *err)
{
	scrm_outbox_stats st;
	(void)cmd;
	(void)err;
	memset(&st, 0, sizeof(st));
	/* Now, not at the ack timeout: everything unacknowledged goes
	 * out again from the oldest (central deduplicates). */
	if (c->dl && c->dl->nwin > 0)
		delivery__go_back(c->dl, "flush_command");
	if (c->dl)
		delivery__pump(c->dl);
	outbox__checkpoint(c->ob);
	outbox__stats(c->ob, &st);
	sbuf__puts(res, "{\"pending\":");
	sbuf__i64(res, st.pending);
	sbuf__puts(res, ",\"in_flight_batches\":");
	sbuf__i64(res, c->dl ? c->dl->nwin : 0);
	sbuf__puts(res, "}");
	return 0;
}

int cmd__alarm_clear(cmd__ctx *c, const fleet__cmd *cmd, sbuf *res, fleet__error *err)
{
	/* Operations acknowledge an alarm once they have followed it up
	 * (a quarantined file collected, drops explained). */
	static const char *const codes[] = {"outbox_quarantined", "cache_quarantined", "outbox_full", "events_dropped",
					    "subscribe_refused", "events_set_aside", "publish_refused", "disk_full"};
	const char *code = NULL;
	int known = 0;
	if (fleet__arg_str(cmd, "code", 1, 32, &code, err))
		return -1;
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
		known |= strcmp(codes[i], code) == 0;
	if (!known)
		return fleet__fail(err, "bad_args", "args.code", "'%s' is not an alarm code", code);
	if (outbox__alarm_clear(c->ob, code) != SCRM_OK)
		return fleet__fail(err, "failed", "", "%s", scrm_errmsg());
	LOG(LOG_INFO, "fleet", "alarm cleared by command", "code=%s", code);
	sbuf__puts(res, "{\"cleared\":");
	sbuf__jstr(res, code);
	sbuf__puts(res, ",\"alarms\":");
	sbuf al;
	sbuf__init(&al);
	if (outbox__alarms(c->ob, &al) == SCRM_OK && !al.oom && al.p)
		sbuf__put(res, al.p, al.len);
	else
		sbuf__puts(res, "[]");
	sbuf__free(&al);
	sbuf__puts(res, "}");
	return 0;
}
