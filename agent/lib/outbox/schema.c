/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outbox schema: every table, index and trigger of outbox.db and the
 * migrations between versions, in one place. A migration that changes a
 * trigger drops and recreates it. Up to v7 the ledgers were kept by
 * triggers, each carrying its business rule; v8 drops those on the insert
 * and outbox__append_locked (append.c) runs the same SQL for the kinds they
 * concern, in the inserting transaction (see schema_v8).
 *
 * Schema v1 (PRAGMA user_version = 1):
 *   device(id=1, device_id, created_ms, next_seq, max_wall_ms,
 *          last_ack_ms, last_acked_seq)  — one row, the device's counters
 *   outbox(seq PK, id, kind, wall_ms, mono_ms, boot, clock_ok, body)
 *   rejected(seq PK, id, kind, wall_ms, body, reason, rejected_ms)
 * Schema v2 adds:
 *   member_activity(seq PK, member_id, wall_ms, kind, amount, skus)
 *     — each purchase/return of a member, filled by a trigger in the same
 *     transaction as the event, so the guide's view of the member includes
 *     today's sale at once; kept after the ack (central's profile catches up
 *     later) and pruned by age.
 *
 * Schema v4 adds bounded storage and alarms:
 *   usage(id=1, bytes, events, refused_paid) — the pending events' stored
 *     size, kept by triggers on outbox in the same transaction as every
 *     insert, delete and body update (whichever process or path), so the cap
 *     costs one row read per append, never a SUM over the table
 *   outbox_evictable — a partial index over the events that may be evicted,
 *     in eviction order (class, then seq)
 *   dropped(kind PK, count, bytes, last_ms) — events evicted or refused
 *     under outbox.max_bytes, per kind, for the heartbeat
 *   alarms(code PK, since_ms, last_ms, count, detail)
 *
 * Schema v5 adds the clock anchor to `device` (clock_* columns; the rule is
 * in clock.c). max_wall_ms keeps its v1 name and now means the
 * newest trusted wall clock since the anchor was last adopted.
 * Schema v3, v6, v7 and v8: at their statements below.
 */
#include "outbox_int.h"
#include "schema_sql.h"

#include "err.h"
#include "event.h"
#include "platform.h"

#include <stdio.h>
#include <string.h>

static const char schema_v1[] =
	"CREATE TABLE IF NOT EXISTS device("
	" id INTEGER PRIMARY KEY CHECK(id = 1), device_id TEXT NOT NULL,"
	" created_ms INTEGER NOT NULL, next_seq INTEGER NOT NULL,"
	" max_wall_ms INTEGER NOT NULL, last_ack_ms INTEGER NOT NULL DEFAULT 0,"
	" last_acked_seq INTEGER NOT NULL DEFAULT 0);"
	"CREATE TABLE IF NOT EXISTS outbox("
	" seq INTEGER PRIMARY KEY, id TEXT NOT NULL, kind TEXT NOT NULL,"
	" wall_ms INTEGER NOT NULL, mono_ms INTEGER NOT NULL, boot TEXT NOT NULL,"
	" clock_ok INTEGER NOT NULL, body TEXT NOT NULL);"
	"CREATE TABLE IF NOT EXISTS rejected("
	" seq INTEGER PRIMARY KEY, id TEXT NOT NULL, kind TEXT NOT NULL,"
	" wall_ms INTEGER NOT NULL, body TEXT NOT NULL, reason TEXT NOT NULL,"
	" rejected_ms INTEGER NOT NULL);"
	"PRAGMA user_version = 1;";

/* The triggers that keep the local ledgers from the events (schema v2, v3):
 * business rules kept as SQL because they must hold for every writer of
 * the table (any process, any path) and because unit tests build stores of
 * older versions by dropping them by name; each says its rule.
 * salvage.c's fill_ledgers makes the same rows for events recovered from a
 * quarantined file: a rule changed here changes there.
 * W is a condition prefix: schema v6 adds "NEW.recovered = 0 AND " so
 * events copied from a quarantined file keep the ledgers they had (copied
 * with them) and are never attributed a second time. */

/* outbox_member_activity — rule: a member's purchase or return is in the
 * member's local history (member_activity: amount, negative for a return,
 * and the SKUs) in the sale's own transaction, so the guide's view of the
 * member (the cache's "local" section, ledger_read.c) includes today's sale
 * before central's profile does. */
#define TRG_MEMBER_ACTIVITY(W) \
	"CREATE TRIGGER IF NOT EXISTS outbox_member_activity AFTER INSERT ON outbox" \
	" WHEN " W "NEW.kind IN ('purchase', 'return') AND json_extract(NEW.body, '$.member_id') IS NOT NULL" \
	" BEGIN" \
	"  INSERT OR REPLACE INTO member_activity(seq, member_id, wall_ms, kind, amount, skus)" \
	"  VALUES (NEW.seq, json_extract(NEW.body, '$.member_id'), NEW.wall_ms, NEW.kind," \
	"   " MEMBER_ACTIVITY_OF("NEW.") ");" \
	" END;"
/* outbox_reco_shown — rule: every recommendation list shown to a guide is
 * remembered (reco_shown, by its event id = reco_id) with the member and
 * the guide, for attribution below. */
#define TRG_RECO_SHOWN(W) \
	"CREATE TRIGGER IF NOT EXISTS outbox_reco_shown AFTER INSERT ON outbox WHEN " W "NEW.kind = 'reco_shown'" \
	" BEGIN" \
	"  INSERT OR REPLACE INTO reco_shown(reco_id, seq, member_id, guide_id, shown_ms)" \
	"  VALUES (NEW.id, NEW.seq, json_extract(NEW.body, '$.member_id'), json_extract(NEW.body, '$.guide_id'), NEW.wall_ms);" \
	" END;"
/* outbox_redemption — rule: a coupon_redeem event and its row in the
 * redemption ledger (what coupon limits count, outbox__append_redemption;
 * what central's verdict is recorded against, outbox__verdict) are written
 * together and can never disagree, whichever process wrote the event. */
#define TRG_REDEMPTION(W) \
	"CREATE TRIGGER IF NOT EXISTS outbox_redemption AFTER INSERT ON outbox WHEN " W "NEW.kind = 'coupon_redeem'" \
	" BEGIN" \
	"  INSERT OR REPLACE INTO redemptions(id, seq, coupon, campaign, member_id, order_id, value, currency, mode, reserved_ms)" \
	"  VALUES (NEW.id, NEW.seq, json_extract(NEW.body, '$.coupon'), json_extract(NEW.body, '$.campaign')," \
	"   json_extract(NEW.body, '$.member_id'), json_extract(NEW.body, '$.order_id'), json_extract(NEW.body, '$.value')," \
	"   json_extract(NEW.body, '$.currency'), json_extract(NEW.body, '$.mode'), NEW.wall_ms);" \
	" END;"
/* outbox_attribution — rule (the one that rewrites an event): a member's
 * purchase without a reco_id is attributed to the latest recommendation
 * list shown to that member on this device (by the sale's guide, if it
 * names one) within settings.attribution_window_ms (default 2 h; 0 turns
 * attribution off): guide_id, reco_id and "attributed":"auto" are set in
 * the stored body, in the sale's transaction, before anything reads it.
 * The usage triggers (schema v4) count the body's growth. */
#define TRG_ATTRIBUTION(W) \
	"CREATE TRIGGER IF NOT EXISTS outbox_attribution AFTER INSERT ON outbox" \
	" WHEN " W "NEW.kind = 'purchase' AND json_extract(NEW.body, '$.member_id') IS NOT NULL" \
	"  AND json_extract(NEW.body, '$.reco_id') IS NULL" \
	"  AND coalesce((SELECT v FROM settings WHERE k = 'attribution_window_ms'), 7200000) > 0" \
	" BEGIN" \
	"  UPDATE outbox SET body = (SELECT json_set(NEW.body, '$.guide_id', r.guide_id, '$.reco_id', r.reco_id," \
	"    '$.attributed', 'auto')" \
	"   FROM reco_shown r WHERE r.member_id = json_extract(NEW.body, '$.member_id')" \
	"    AND (json_extract(NEW.body, '$.guide_id') IS NULL OR r.guide_id = json_extract(NEW.body, '$.guide_id'))" \
	"    AND r.shown_ms <= NEW.wall_ms" \
	"    AND r.shown_ms >= NEW.wall_ms - coalesce((SELECT v FROM settings WHERE k = 'attribution_window_ms'), 7200000)" \
	"   ORDER BY r.shown_ms DESC, r.seq DESC LIMIT 1)" \
	"  WHERE seq = NEW.seq AND EXISTS (SELECT 1 FROM reco_shown r WHERE r.member_id = json_extract(NEW.body, '$.member_id')" \
	"    AND (json_extract(NEW.body, '$.guide_id') IS NULL OR r.guide_id = json_extract(NEW.body, '$.guide_id'))" \
	"    AND r.shown_ms <= NEW.wall_ms" \
	"    AND r.shown_ms >= NEW.wall_ms - coalesce((SELECT v FROM settings WHERE k = 'attribution_window_ms'), 7200000));" \
	" END;"

/* SQLite's JSON functions read the canonical body the capture path just
 * wrote: no second encoder in C, and any insert path gets it. */
static const char schema_v2[] =
	"CREATE TABLE IF NOT EXISTS member_activity("
	" seq INTEGER PRIMARY KEY, member_id TEXT NOT NULL, wall_ms INTEGER NOT NULL,"
	" kind TEXT NOT NULL, amount INTEGER NOT NULL, skus TEXT NOT NULL);"
	"CREATE INDEX IF NOT EXISTS member_activity_member ON member_activity(member_id, wall_ms);"
	TRG_MEMBER_ACTIVITY("")
	"PRAGMA user_version = 2;";

/* Schema v3: the guide tablet's bookkeeping, all filled by triggers from
 * the events themselves, so a redemption or a recommendation and its event
 * can never disagree, whichever process wrote them.
 *   link        the daemon's view of the connection (one row): capture-side
 *               code reads it to know whether central is reachable
 *   settings    values the daemon copies from its config for triggers
 *   reco_shown  recommendation lists shown to a guide (for attribution)
 *   redemptions coupons spent on this device, and central's verdicts
 * Attribution: a member's purchase without guide_id (or without reco_id)
 * gets them from the latest list shown to that member on this device within
 * attribution_window_ms, in the same transaction as the sale. */
static const char schema_v3[] =
	"CREATE TABLE IF NOT EXISTS link("
	" id INTEGER PRIMARY KEY CHECK(id = 1), connected INTEGER NOT NULL,"
	" changed_ms INTEGER NOT NULL, seen_ms INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS settings(k TEXT PRIMARY KEY, v INTEGER NOT NULL) WITHOUT ROWID;"
	"CREATE TABLE IF NOT EXISTS reco_shown("
	" reco_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, member_id TEXT, guide_id TEXT NOT NULL,"
	" shown_ms INTEGER NOT NULL) WITHOUT ROWID;"
	"CREATE INDEX IF NOT EXISTS reco_shown_member ON reco_shown(member_id, shown_ms);"
	"CREATE TABLE IF NOT EXISTS redemptions("
	" id TEXT PRIMARY KEY, seq INTEGER NOT NULL, coupon TEXT, campaign TEXT NOT NULL, member_id TEXT,"
	" order_id TEXT NOT NULL, value INTEGER NOT NULL, currency TEXT NOT NULL, mode TEXT NOT NULL,"
	" reserved_ms INTEGER NOT NULL, verdict TEXT, reason TEXT, detail TEXT, verdict_ms INTEGER) WITHOUT ROWID;"
	"CREATE INDEX IF NOT EXISTS redemptions_coupon ON redemptions(coupon);"
	"CREATE INDEX IF NOT EXISTS redemptions_campaign ON redemptions(campaign, member_id);"
	"CREATE INDEX IF NOT EXISTS redemptions_time ON redemptions(reserved_ms);"
	TRG_RECO_SHOWN("")
	TRG_REDEMPTION("")
	TRG_ATTRIBUTION("")
	"PRAGMA user_version = 3;";

/* Schema v4: bounded storage and alarms (see the top of this file). The
 * usage row starts from what an upgraded store already holds.
 *   outbox_usage_insert/_delete/_update  rule: usage.bytes and .events are
 *       the pending events' stored size (body + OUTBOX_ROW_OVERHEAD) and
 *       count, whatever wrote or removed the row (capture, ack, eviction,
 *       attribution growing a body, erasure, salvage) — so the cap is one
 *       row read per append
 * A format: the eviction class and the paid kinds come from kinds.def
 * (struct outbox__kind_sql). */
static const char schema_v4[] =
	"CREATE TABLE IF NOT EXISTS usage("
	" id INTEGER PRIMARY KEY CHECK(id = 1), bytes INTEGER NOT NULL, events INTEGER NOT NULL,"
	" refused_paid INTEGER NOT NULL DEFAULT 0);"
	"INSERT OR IGNORE INTO usage(id, bytes, events)"
	" SELECT 1, coalesce(sum(length(CAST(body AS BLOB))), 0) + " XSTR(OUTBOX_ROW_OVERHEAD) " * count(*), count(*)"
	" FROM outbox;"
	"CREATE TRIGGER IF NOT EXISTS outbox_usage_insert AFTER INSERT ON outbox"
	" BEGIN"
	"  UPDATE usage SET bytes = bytes + length(CAST(NEW.body AS BLOB)) + " XSTR(OUTBOX_ROW_OVERHEAD) ","
	"   events = events + 1 WHERE id = 1;"
	" END;"
	"CREATE TRIGGER IF NOT EXISTS outbox_usage_delete AFTER DELETE ON outbox"
	" BEGIN"
	"  UPDATE usage SET bytes = bytes - length(CAST(OLD.body AS BLOB)) - " XSTR(OUTBOX_ROW_OVERHEAD) ","
	"   events = events - 1 WHERE id = 1;"
	" END;"
	"CREATE TRIGGER IF NOT EXISTS outbox_usage_update AFTER UPDATE OF body ON outbox"
	" BEGIN"
	"  UPDATE usage SET bytes = bytes - length(CAST(OLD.body AS BLOB)) + length(CAST(NEW.body AS BLOB)) WHERE id = 1;"
	" END;"
	"CREATE INDEX IF NOT EXISTS outbox_evictable ON outbox(%s, seq)"
	" WHERE kind NOT IN %s;"
	"CREATE TABLE IF NOT EXISTS dropped("
	" kind TEXT PRIMARY KEY, count INTEGER NOT NULL, bytes INTEGER NOT NULL, last_ms INTEGER NOT NULL) WITHOUT ROWID;"
	"CREATE TABLE IF NOT EXISTS alarms("
	" code TEXT PRIMARY KEY, since_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL, count INTEGER NOT NULL,"
	" detail TEXT NOT NULL) WITHOUT ROWID;"
	"PRAGMA user_version = 4;";

/* Schema v5: the clock anchor (the rule is in clock.c). Only these
 * columns: a later version adds its own statements after them. */
static const char schema_v5[] =
	"ALTER TABLE device ADD COLUMN clock_boot TEXT NOT NULL DEFAULT '';"
	"ALTER TABLE device ADD COLUMN clock_offset_ms INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE device ADD COLUMN clock_mono_ms INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE device ADD COLUMN clock_cand_boot TEXT NOT NULL DEFAULT '';"
	"ALTER TABLE device ADD COLUMN clock_cand_offset_ms INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE device ADD COLUMN clock_cand_mono_ms INTEGER NOT NULL DEFAULT 0;"
	"PRAGMA user_version = 5;";

/* Schema v6: what the store owes central beyond the events themselves.
 *   outbox.set_aside  NULL, or why the event cannot be sent as it is
 *                     (protocol.md "Set-aside events"): the row stays in
 *                     the queue as a marker so central learns the seq is
 *                     set aside, not lost; its bytes are in dead_letter
 *   dead_letter       events that could not be sent (a body that no longer
 *                     parses, larger than the broker accepts), byte for
 *                     byte as stored, kept until operations deal with them
 *   orders            the receipt of each purchase (by order_id) and return
 *                     (by return_id): a till retrying a sale gets the first
 *                     receipt back, never a second sale (scrm.h)
 *   recovered         the seqs taken from quarantined files (at the
 *                     quarantine or later by scrmctl outbox recover), so
 *                     each is taken once
 *   outbox.recovered  0 = captured here; 2 = copied into a fresh outbox at
 *                     a quarantine; 1 = recovered later (sent with
 *                     "recovered":true, protocol.md). The ledger triggers
 *                     skip copied events: their ledgers are copied too. */
static const char schema_v6[] =
	"ALTER TABLE outbox ADD COLUMN set_aside TEXT;"
	"ALTER TABLE outbox ADD COLUMN recovered INTEGER NOT NULL DEFAULT 0;"
	"DROP TRIGGER IF EXISTS outbox_member_activity;"
	"DROP TRIGGER IF EXISTS outbox_reco_shown;"
	"DROP TRIGGER IF EXISTS outbox_redemption;"
	"DROP TRIGGER IF EXISTS outbox_attribution;"
	TRG_MEMBER_ACTIVITY("NEW.recovered = 0 AND ")
	TRG_RECO_SHOWN("NEW.recovered = 0 AND ")
	TRG_REDEMPTION("NEW.recovered = 0 AND ")
	TRG_ATTRIBUTION("NEW.recovered = 0 AND ")
	"CREATE TABLE IF NOT EXISTS dead_letter("
	" seq INTEGER PRIMARY KEY, id BLOB, kind BLOB, wall_ms INTEGER, mono_ms INTEGER, boot BLOB,"
	" clock_ok INTEGER, body BLOB, reason TEXT NOT NULL, detail TEXT NOT NULL, set_aside_ms INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS orders("
	" kind TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL, wall_ms INTEGER NOT NULL,"
	" digest BLOB NOT NULL, PRIMARY KEY(kind, key)) WITHOUT ROWID;"
	"CREATE TABLE IF NOT EXISTS recovered("
	" seq INTEGER PRIMARY KEY, id TEXT NOT NULL, source TEXT NOT NULL, recovered_ms INTEGER NOT NULL);"
	"PRAGMA user_version = 6;";

/* Schema v7: a captured event writes its own row and nothing else (issue
 * 14: every other table a capture touched cost a WAL page per sale). What
 * the capture transaction used to update elsewhere now rides on the row:
 *   outbox.cum, .cum_events  the bytes (body + OUTBOX_ROW_OVERHEAD) and the
 *       events ever inserted by capture, through this row
 *   outbox.max_wall  the clock's max_wall_ms after judging this row
 *   device.cum_bytes, .cum_events  the same totals when the newest row is
 *       gone (or predates v7); device's next_seq and max_wall_ms too
 *   usage.removed_bytes, .removed_events  everything taken away since:
 *       deleted rows, bodies shrunk (or grown: negative), minus rows copied
 *       in by salvage — all off the till's path (ack, eviction, rejection,
 *       erasure, set-aside, salvage)
 * so the pending size is the newest total minus what was removed, and the
 * next seq follows the newest row. `totals` reads them: the newest row if
 * it is newer than what device holds, device otherwise (capture rows are
 * the only ones above device.next_seq: salvage copies older seqs).
 * Rows leave the queue through one function, outbox__remove (deliver.c:
 * ack, rejection, eviction), not a trigger: per range, one statement each
 * moves the receipts to orders and the member's sales to member_activity,
 * counts what was removed, and hands the newest row's values to device
 * when it goes (a per-row delete trigger made an ack of 500 events
 * several times slower, and the till waits for the ack's lock). Body
 * changes (erasure, set-aside, attribution) and salvage's inserts are
 * counted by triggers (since v8 only outbox_resized is left: attribution
 * happens before the insert and salvage counts its copies itself).
 *   outbox.member  a purchase's or return's member_id as a JSON string,
 *       quotes included (NULL otherwise, and after an erasure): the byte
 *       scrub of quarantined copies (quarantine__erase_member) finds only
 *       whole tokens, and a bare column touches the next one's bytes.
 *       member_activity is now written when the event leaves the queue
 *       (ack, rejection: outbox__remove), and a member's local history is
 *       that ledger plus their pending rows (ledger_read.c), so the sale's
 *       own transaction no longer touches the ledger. Its index by member
 *       is dropped: the ack would write its random pages while a till
 *       waits for the lock; each reader indexes the rows in memory instead
 *       (seqmap.h). Rule unchanged: the guide's view of the member
 *       includes today's sale at once.
 *   outbox.okey, .digest  a pending sale's receipt (its order_id or
 *       return_id, and outbox__digest of its body): it moves to `orders`
 *       when the row leaves the queue (outbox__remove); receipts.c
 *       finds it meanwhile. Rule unchanged: a till retrying a sale gets
 *       the first receipt back.
 * usage.bytes and .events are dropped: a process still running a libscrm
 * of v6 (upgraded under it) fails loudly reading them instead of
 * inserting uncounted rows. */
static const char schema_v7[] =
	"DROP TRIGGER IF EXISTS outbox_usage_insert;"
	"DROP TRIGGER IF EXISTS outbox_usage_delete;"
	"DROP TRIGGER IF EXISTS outbox_usage_update;"
	"ALTER TABLE outbox ADD COLUMN cum INTEGER;"
	"ALTER TABLE outbox ADD COLUMN cum_events INTEGER;"
	"ALTER TABLE outbox ADD COLUMN max_wall INTEGER;"
	"ALTER TABLE outbox ADD COLUMN member TEXT;"
	"DROP INDEX IF EXISTS member_activity_member;"
	"ALTER TABLE outbox ADD COLUMN okey TEXT;"
	"ALTER TABLE outbox ADD COLUMN digest BLOB;"
	"DROP TRIGGER IF EXISTS outbox_member_activity;"
	"ALTER TABLE device ADD COLUMN cum_bytes INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE device ADD COLUMN cum_events INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE usage ADD COLUMN removed_bytes INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE usage ADD COLUMN removed_events INTEGER NOT NULL DEFAULT 0;"
	"UPDATE device SET cum_bytes = (SELECT bytes FROM usage WHERE id = 1),"
	" cum_events = (SELECT events FROM usage WHERE id = 1),"
	" next_seq = max(next_seq, coalesce((SELECT max(seq) + 1 FROM outbox), 0)) WHERE id = 1;"
	"ALTER TABLE usage DROP COLUMN bytes;"
	"ALTER TABLE usage DROP COLUMN events;"
	"CREATE TRIGGER IF NOT EXISTS outbox_resized AFTER UPDATE OF body ON outbox"
	" BEGIN"
	"  UPDATE usage SET removed_bytes = removed_bytes + length(CAST(OLD.body AS BLOB)) - length(CAST(NEW.body AS BLOB))"
	"   WHERE id = 1;"
	" END;"
	"CREATE TRIGGER IF NOT EXISTS outbox_salvaged AFTER INSERT ON outbox WHEN NEW.recovered != 0"
	" BEGIN"
	"  UPDATE usage SET removed_bytes = removed_bytes - length(CAST(NEW.body AS BLOB)) - " XSTR(OUTBOX_ROW_OVERHEAD) ","
	"   removed_events = removed_events - 1 WHERE id = 1;"
	" END;"
	"CREATE VIEW IF NOT EXISTS totals(next_seq, max_wall_ms, cum_bytes, cum_events, bytes, events, refused_paid) AS"
	" SELECT coalesce(l.seq + 1, d.next_seq), coalesce(l.max_wall, d.max_wall_ms), coalesce(l.cum, d.cum_bytes),"
	"  coalesce(l.cum_events, d.cum_events), coalesce(l.cum, d.cum_bytes) - u.removed_bytes,"
	"  coalesce(l.cum_events, d.cum_events) - u.removed_events, u.refused_paid"
	" FROM device d JOIN usage u ON u.id = 1"
	"  LEFT JOIN (SELECT seq, cum, cum_events, max_wall FROM outbox ORDER BY seq DESC LIMIT 1) l ON l.seq >= d.next_seq"
	" WHERE d.id = 1;"
	"PRAGMA user_version = 7;";

/* Schema v8: no trigger runs for a captured row (issue 14: each trigger on
 * the insert cost a sub-program per row, whatever its WHEN; together with
 * the partial index's NOT IN list, a temporary table per row, they were a
 * third of a batch import's CPU). The rules the triggers kept are now
 * statements outbox__append_locked runs for the kinds they concern, in the
 * same transaction, with the SQL the triggers had (outbox.c: who, attrib,
 * led_reco, led_redeem); every capture path goes through it, and salvage,
 * which copied ledgers with the events, updates `usage` itself:
 *   attribution  before the insert, so the row is written once with its
 *                guide_id, reco_id and "attributed":"auto"
 *   reco_shown, redemptions  after the insert of such an event
 * outbox_evictable's condition becomes a chain of <> (kinds.def's
 * evictable). outbox.okey is renamed order_key so that a process still
 * running a v7 libscrm, whose inserts relied on the triggers, fails at its
 * next capture instead of writing rows without their ledgers. */
static const char schema_v8[] =
	"DROP TRIGGER IF EXISTS outbox_reco_shown;"
	"DROP TRIGGER IF EXISTS outbox_redemption;"
	"DROP TRIGGER IF EXISTS outbox_attribution;"
	"DROP TRIGGER IF EXISTS outbox_salvaged;"
	"DROP INDEX IF EXISTS outbox_evictable;"
	"CREATE INDEX outbox_evictable ON outbox(%s, seq) WHERE %s;"
	"ALTER TABLE outbox RENAME COLUMN okey TO order_key;"
	"PRAGMA user_version = 8;";

#define OUTBOX_SCHEMA_VERSION 8

/* ---- what tells kinds apart, from kinds.def ---- */

static const struct {
	const char *name;
	int paid;
	enum event__evict evict;
	const char *key;
} kinds[] = {
#define EVENT_KIND(e, value, name, paid, evict, json, key) {name, paid, evict, key},
#include "kinds.def"
};
#define N_KINDS (sizeof(kinds) / sizeof(kinds[0]))

static void put(char *buf, size_t cap, const char *s)
{
	size_t n = strlen(buf);
	snprintf(buf + n, cap - n, "%s", s);
}

void outbox__kind_sql(struct outbox__kind_sql *k)
{
	char w[120];
	size_t keyed = 0, seen = 0;
	memset(k, 0, sizeof(*k));
	put(k->paid, sizeof(k->paid), "(");
	put(k->keyed, sizeof(k->keyed), "(");
	for (size_t i = 0; i < N_KINDS; i++) {
		if (kinds[i].paid) {
			snprintf(w, sizeof(w), "%s'%s'", k->paid[1] ? ", " : "", kinds[i].name);
			put(k->paid, sizeof(k->paid), w);
			snprintf(w, sizeof(w), "%skind <> '%s'", k->evictable[0] ? " AND " : "", kinds[i].name);
			put(k->evictable, sizeof(k->evictable), w);
		}
		if (kinds[i].key) {
			snprintf(w, sizeof(w), "%s'%s'", k->keyed[1] ? ", " : "", kinds[i].name);
			put(k->keyed, sizeof(k->keyed), w);
		}
	}
	put(k->paid, sizeof(k->paid), ")");
	put(k->keyed, sizeof(k->keyed), ")");
	/* Class by class in eviction order; EVICT_OTHER is the ELSE. */
	put(k->evict_class, sizeof(k->evict_class), "CASE kind");
	for (int c = EVICT_BROWSING; c < EVICT_OTHER; c++)
		for (size_t i = 0; i < N_KINDS; i++)
			if ((int)kinds[i].evict == c) {
				snprintf(w, sizeof(w), " WHEN '%s' THEN %d", kinds[i].name, c);
				put(k->evict_class, sizeof(k->evict_class), w);
			}
	snprintf(w, sizeof(w), " ELSE %d END", EVICT_OTHER);
	put(k->evict_class, sizeof(k->evict_class), w);
	/* The last keyed kind is the ELSE (only keyed kinds are asked). */
	for (size_t i = 0; i < N_KINDS; i++)
		keyed += kinds[i].key != NULL;
	put(k->order_key, sizeof(k->order_key), "json_extract(?2, CASE ?1");
	for (size_t i = 0; i < N_KINDS; i++) {
		if (!kinds[i].key)
			continue;
		if (++seen < keyed)
			snprintf(w, sizeof(w), " WHEN '%s' THEN '$.%s'", kinds[i].name, kinds[i].key);
		else
			snprintf(w, sizeof(w), " ELSE '$.%s' END)", kinds[i].key);
		put(k->order_key, sizeof(k->order_key), w);
	}
}

int outbox__kind_paid(const char *kind)
{
	for (size_t i = 0; i < N_KINDS; i++)
		if (strcmp(kinds[i].name, kind) == 0)
			return kinds[i].paid;
	return 0;
}

const char *outbox__kind_key(const char *kind)
{
	for (size_t i = 0; i < N_KINDS; i++)
		if (strcmp(kinds[i].name, kind) == 0)
			return kinds[i].key;
	return NULL;
}

/* A migration whose SQL names kinds.def's lists: its two %s are the
 * eviction class and the paid kinds as a list (v4) or as a condition (v8). */
static int exec_kinds(outbox *ob, const char *fmt, int as_condition)
{
	struct outbox__kind_sql k;
	char sql[sizeof(schema_v4) + sizeof(schema_v8) + sizeof(k)];
	outbox__kind_sql(&k);
	snprintf(sql, sizeof(sql), fmt, k.evict_class, as_condition ? k.evictable : k.paid);
	return outbox__exec(ob, sql);
}

/* Create or upgrade the schema, and bind the store to its device. */
int outbox__migrate(outbox *ob, const char *device_id)
{
	sqlite3_stmt *st = NULL;
	int rc, ver = 0;

	if ((rc = outbox__exec(ob, "BEGIN IMMEDIATE")))
		return rc;
	if ((rc = sqlite3_prepare_v2(ob->db, "PRAGMA user_version", -1, &st, NULL)) != SQLITE_OK) {
		rc = outbox__fail(ob, rc, "read schema version");
		goto cleanup;
	}
	if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		ver = sqlite3_column_int(st, 0);
	} else {
		rc = outbox__fail(ob, rc, "read schema version");
		goto cleanup;
	}
	rc = SCRM_OK;
	sqlite3_finalize(st);
	st = NULL;
	if (ver > OUTBOX_SCHEMA_VERSION) {
		rc = err__set(SCRM_E_CORRUPT, "outbox: schema version %d is newer than this agent (%d); refusing to touch it",
			      ver, OUTBOX_SCHEMA_VERSION);
		goto cleanup;
	}
	if (ver == 0 && (rc = outbox__exec(ob, schema_v1)))
		goto cleanup;
	if (ver < 2 && (rc = outbox__exec(ob, schema_v2)))
		goto cleanup;
	if (ver < 3 && (rc = outbox__exec(ob, schema_v3)))
		goto cleanup;
	if (ver < 4 && (rc = exec_kinds(ob, schema_v4, 0)))
		goto cleanup;
	if (ver < 5 && (rc = outbox__exec(ob, schema_v5)))
		goto cleanup;
	if (ver < 6 && (rc = outbox__exec(ob, schema_v6)))
		goto cleanup;
	if (ver < 7 && (rc = outbox__exec(ob, schema_v7)))
		goto cleanup;
	if (ver < 8 && (rc = exec_kinds(ob, schema_v8, 1)))
		goto cleanup;

	if ((rc = sqlite3_prepare_v2(ob->db, "SELECT device_id FROM device WHERE id = 1", -1, &st, NULL)) != SQLITE_OK) {
		rc = outbox__fail(ob, rc, "read device");
		goto cleanup;
	}
	int step = sqlite3_step(st);
	if (step != SQLITE_ROW && step != SQLITE_DONE) {
		rc = outbox__fail(ob, step, "read device");
		goto cleanup;
	}
	if (step == SQLITE_ROW) {
		const char *have = (const char *)sqlite3_column_text(st, 0);
		snprintf(ob->device_id, sizeof(ob->device_id), "%s", have ? have : "");
		if (device_id && strcmp(device_id, ob->device_id) != 0) {
			rc = err__set(SCRM_E_MISMATCH, "device_id: the store belongs to \"%s\", not \"%s\"", ob->device_id, device_id);
			goto cleanup;
		}
	} else {
		sqlite3_finalize(st);
		st = NULL;
		if (!device_id) {
			rc = err__set(SCRM_E_INVALID, "device_id: required to create a new store");
			goto cleanup;
		}
		if ((rc = sqlite3_prepare_v2(ob->db,
					     "INSERT INTO device(id, device_id, created_ms, next_seq, max_wall_ms) VALUES (1, ?, ?, 1, 0)",
					     -1, &st, NULL)) != SQLITE_OK) {
			rc = outbox__fail(ob, rc, "create device");
			goto cleanup;
		}
		sqlite3_bind_text(st, 1, device_id, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, platform__wall_ms());
		if ((rc = sqlite3_step(st)) != SQLITE_DONE) {
			rc = outbox__fail(ob, rc, "create device");
			goto cleanup;
		}
		snprintf(ob->device_id, sizeof(ob->device_id), "%s", device_id);
	}
	sqlite3_finalize(st);
	st = NULL;
	rc = outbox__exec(ob, "COMMIT");
cleanup:
	sqlite3_finalize(st);
	if (rc)
		outbox__rollback(ob);
	return rc;
}
