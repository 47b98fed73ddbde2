/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outbox clock: each event's clock_ok, from the clock anchor kept in
 * `device` (schema v5). The rule is below; docs/protocol.md, clock_ok.
 */
#include "outbox_int.h"

#include "err.h"
#include "platform.h"

#include <stdio.h>
#include <string.h>

/* ---- clock trust ----
 *
 * Each event carries its wall clock and CLOCK_BOOTTIME (mono). Their
 * difference, the offset, stays put while the wall clock is sound: it moves
 * only by drift and NTP slewing. A step of the wall clock (a glitch, an RTC
 * that lost power, someone's `date -s`, or a real correction) is a jump of
 * the offset. The anchor is the boot and offset of the last trusted event:
 *
 *  1. wall before trusted_after_ms (the build date): not trusted, nothing
 *     changes (such a clock is never adopted, whatever NTP says).
 *  2. Same boot as the anchor, and |offset - anchor offset| <=
 *     CLOCK_STEP_MS + CLOCK_DRIFT_PPM of the mono time since the anchor:
 *     trusted; the anchor follows (drift), any pending step is forgotten.
 *  3. Another boot (or no anchor yet, or mono far behind the anchor's: a
 *     reboot behind an unreadable, all-zero boot id): mono restarted, so
 *     only wall >= max_wall_ms - CLOCK_STEP_MS can be checked: trusted and
 *     re-anchored if so.
 *  4. Otherwise it is a step: not trusted, the anchor stays. The step is
 *     adopted (this event trusted, anchor and max_wall_ms moved to it) if
 *     the kernel reports the clock NTP-synchronized, or if its offset was
 *     first seen, in this boot, at least CLOCK_CONFIRM_MS of mono earlier
 *     and every event since had it too (within the same tolerance); a step
 *     seen for the first time (or another one) becomes that candidate.
 *
 * So a one-off glitch, forward or backward, flags the glitched events only,
 * and a correction costs at most CLOCK_CONFIRM_MS of untrusted events. The
 * offset is exact whatever the commit order: both clocks are read at capture.
 * The state lives in `device` (schema v5), read and written in each append's
 * transaction, so every process and handle on the file shares it. */

/* Columns `col`.. of a row holding CLOCK_COLUMNS. */
void outbox__clock_load(sqlite3_stmt *q, int col, struct clock_state *c)
{
	const char *b = (const char *)sqlite3_column_text(q, col + 1);
	const char *cb = (const char *)sqlite3_column_text(q, col + 4);
	memset(c, 0, sizeof(*c));
	c->last_wall = sqlite3_column_int64(q, col);
	snprintf(c->boot, sizeof(c->boot), "%s", b ? b : "");
	c->offset = sqlite3_column_int64(q, col + 2);
	c->mono = sqlite3_column_int64(q, col + 3);
	snprintf(c->cand_boot, sizeof(c->cand_boot), "%s", cb ? cb : "");
	c->cand_offset = sqlite3_column_int64(q, col + 5);
	c->cand_mono = sqlite3_column_int64(q, col + 6);
	c->synced = CLOCK_UNASKED;
	/* Values no capture can produce (a hand-edited or salvaged file) are
	 * dropped: the arithmetic below relies on the bounds. */
	if (c->offset < -CLOCK_MAX_MS || c->offset > CLOCK_MAX_MS || c->mono < 0 || c->mono > CLOCK_MAX_MS)
		c->boot[0] = '\0';
	if (c->cand_offset < -CLOCK_MAX_MS || c->cand_offset > CLOCK_MAX_MS || c->cand_mono < 0 ||
	    c->cand_mono > CLOCK_MAX_MS)
		c->cand_boot[0] = '\0';
}

/* A boot id as stored: one that would not fit never matches. */
static int same_boot(const char *stored, const char *boot)
{
	return stored[0] && strlen(boot) < CLOCK_BOOT_CAP && strcmp(stored, boot) == 0;
}

/* |a - b| <= CLOCK_STEP_MS + CLOCK_DRIFT_PPM of `elapsed` (all bounded by
 * CLOCK_MAX_MS, so nothing overflows). */
static int within(int64_t a, int64_t b, int64_t elapsed)
{
	int64_t d = a > b ? a - b : b - a;
	if (elapsed < 0)
		elapsed = -elapsed;
	return d <= CLOCK_STEP_MS + elapsed / 1000000 * CLOCK_DRIFT_PPM + elapsed % 1000000 * CLOCK_DRIFT_PPM / 1000000;
}

static void clock_anchor(struct clock_state *c, const char *boot, int64_t offset, int64_t mono)
{
	/* Every trusted event re-anchors, nearly always on the same boot: a
	 * copy per event was 1.5% of a batch import's CPU. */
	if (strcmp(c->boot, boot) != 0)
		snprintf(c->boot, sizeof(c->boot), "%s", boot);
	c->offset = offset;
	c->mono = mono;
	c->cand_boot[0] = '\0';
	c->cand_offset = c->cand_mono = 0;
}

/* One event's clock_ok under the rule above; moves `c` as it says. */
int outbox__clock_judge(struct clock_state *c, int64_t wall, int64_t mono, const char *boot, int64_t trusted_after_ms)
{
	if (!boot)
		boot = "";
	if (wall < trusted_after_ms || wall > CLOCK_MAX_MS || mono < 0 || mono > CLOCK_MAX_MS)
		return 0;
	const int64_t offset = wall - mono;
	if (same_boot(c->boot, boot) && mono + CLOCK_STEP_MS >= c->mono) {
		if (within(offset, c->offset, mono - c->mono)) {
			clock_anchor(c, boot, offset, mono);
			if (wall > c->last_wall)
				c->last_wall = wall;
			return 1;
		}
	} else if (wall + CLOCK_STEP_MS >= c->last_wall) {
		clock_anchor(c, boot, offset, mono);
		if (wall > c->last_wall)
			c->last_wall = wall;
		return 1;
	}
	/* A step. */
	if (c->synced == CLOCK_UNASKED)
		c->synced = platform__clock_synced();
	int adopt = c->synced == 1;
	if (!adopt && same_boot(c->cand_boot, boot) && mono + CLOCK_STEP_MS >= c->cand_mono &&
	    within(offset, c->cand_offset, mono - c->cand_mono)) {
		if (mono - c->cand_mono < CLOCK_CONFIRM_MS)
			return 0; /* still the candidate, not yet confirmed */
		adopt = 1;
	}
	if (adopt) {
		clock_anchor(c, boot, offset, mono);
		c->last_wall = wall;
		return 1;
	}
	snprintf(c->cand_boot, sizeof(c->cand_boot), "%s", boot);
	c->cand_offset = offset;
	c->cand_mono = mono;
	return 0;
}

int outbox__clock_state(outbox *ob, int64_t wall_ms, int64_t mono_ms, const char *boot, int64_t trusted_after_ms,
			struct outbox__clock *out)
{
	struct clock_state c;
	int rc;
	memset(out, 0, sizeof(*out));
	outbox__follow(ob);
	sqlite3_reset(ob->get_dev);
	if ((rc = sqlite3_step(ob->get_dev)) != SQLITE_ROW) {
		rc = outbox__fail(ob, rc, "read clock state");
		sqlite3_reset(ob->get_dev);
		return rc;
	}
	outbox__clock_load(ob->get_dev, 1, &c);
	sqlite3_reset(ob->get_dev);
	if (!boot)
		boot = "";
	out->synced = c.synced = platform__clock_synced();
	out->last_wall_ms = c.last_wall;
	out->same_boot = same_boot(c.boot, boot);
	if (out->same_boot && wall_ms >= -CLOCK_MAX_MS && wall_ms <= CLOCK_MAX_MS && mono_ms >= 0 && mono_ms <= CLOCK_MAX_MS)
		out->step_ms = (wall_ms - mono_ms) - c.offset;
	if (same_boot(c.cand_boot, boot)) {
		out->pending = 1;
		out->pending_since_mono_ms = c.cand_mono;
		if (out->same_boot)
			out->pending_step_ms = c.cand_offset - c.offset;
	}
	/* Judged on a copy: asking records nothing. */
	out->trusted = outbox__clock_judge(&c, wall_ms, mono_ms, boot, trusted_after_ms);
	return SCRM_OK;
}
