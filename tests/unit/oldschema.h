/* SPDX-License-Identifier: Apache-2.0 */
/*
 * oldschema: SQL that turns a current outbox.db back into one of an older
 * release, for the tests of the upgrades. Each undoes one version and is
 * applied newest first (UNDO_V8, UNDO_V7, then the older ones the test
 * needs).
 */
#ifndef SCRM_TESTS_UNIT_OLDSCHEMA_H
#define SCRM_TESTS_UNIT_OLDSCHEMA_H

#include "outbox.h" /* OUTBOX_ROW_OVERHEAD */

#define OLDSCHEMA_STR_(x) #x
#define OLDSCHEMA_STR(x) OLDSCHEMA_STR_(x)

/* Schema v8 (no trigger on a captured row) back to v7: the ledger and
 * salvage triggers as v6 made them, the NOT IN partial index, okey. */
#define UNDO_V8 \
	"DROP INDEX outbox_evictable; CREATE INDEX outbox_evictable ON outbox(CASE kind WHEN 'reco_shown' THEN 0" \
	" WHEN 'member_scan' THEN 1 ELSE 2 END, seq) WHERE kind NOT IN ('purchase', 'return', 'coupon_redeem');" \
	" ALTER TABLE outbox RENAME COLUMN order_key TO okey;" \
	" CREATE TRIGGER outbox_reco_shown AFTER INSERT ON outbox WHEN NEW.recovered = 0 AND NEW.kind = 'reco_shown'" \
	" BEGIN INSERT OR REPLACE INTO reco_shown(reco_id, seq, member_id, guide_id, shown_ms) VALUES (NEW.id, NEW.seq," \
	" json_extract(NEW.body, '$.member_id'), json_extract(NEW.body, '$.guide_id'), NEW.wall_ms); END;" \
	" CREATE TRIGGER outbox_redemption AFTER INSERT ON outbox WHEN NEW.recovered = 0 AND NEW.kind = 'coupon_redeem'" \
	" BEGIN INSERT OR REPLACE INTO redemptions(id, seq, coupon, campaign, member_id, order_id, value, currency, mode," \
	" reserved_ms) VALUES (NEW.id, NEW.seq, json_extract(NEW.body, '$.coupon'), json_extract(NEW.body, '$.campaign')," \
	" json_extract(NEW.body, '$.member_id'), json_extract(NEW.body, '$.order_id'), json_extract(NEW.body, '$.value')," \
	" json_extract(NEW.body, '$.currency'), json_extract(NEW.body, '$.mode'), NEW.wall_ms); END;" \
	" CREATE TRIGGER outbox_attribution AFTER INSERT ON outbox WHEN NEW.recovered = 0 AND NEW.kind = 'purchase' AND" \
	" json_extract(NEW.body, '$.member_id') IS NOT NULL AND json_extract(NEW.body, '$.reco_id') IS NULL AND" \
	" coalesce((SELECT v FROM settings WHERE k = 'attribution_window_ms'), 7200000) > 0 BEGIN UPDATE outbox SET body =" \
	" (SELECT json_set(NEW.body, '$.guide_id', r.guide_id, '$.reco_id', r.reco_id, '$.attributed', 'auto') FROM" \
	" reco_shown r WHERE r.member_id = json_extract(NEW.body, '$.member_id') AND (json_extract(NEW.body, '$.guide_id')" \
	" IS NULL OR r.guide_id = json_extract(NEW.body, '$.guide_id')) AND r.shown_ms <= NEW.wall_ms AND r.shown_ms >=" \
	" NEW.wall_ms - coalesce((SELECT v FROM settings WHERE k = 'attribution_window_ms'), 7200000) ORDER BY" \
	" r.shown_ms DESC, r.seq DESC LIMIT 1) WHERE seq = NEW.seq AND EXISTS (SELECT 1 FROM reco_shown r WHERE" \
	" r.member_id = json_extract(NEW.body, '$.member_id') AND (json_extract(NEW.body, '$.guide_id') IS NULL OR" \
	" r.guide_id = json_extract(NEW.body, '$.guide_id')) AND r.shown_ms <= NEW.wall_ms AND r.shown_ms >= NEW.wall_ms -" \
	" coalesce((SELECT v FROM settings WHERE k = 'attribution_window_ms'), 7200000)); END;" \
	" CREATE TRIGGER outbox_salvaged AFTER INSERT ON outbox WHEN NEW.recovered != 0 BEGIN UPDATE usage SET" \
	" removed_bytes = removed_bytes - length(CAST(NEW.body AS BLOB)) - " OLDSCHEMA_STR(OUTBOX_ROW_OVERHEAD) "," \
	" removed_events = removed_events - 1 WHERE id = 1; END;" \
	" PRAGMA user_version = 7;"

/* Schema v7 (running totals, receipts and the member on the rows) back to
 * v6: usage's pending bytes and events, kept by the v6 triggers, device's
 * next_seq past every row, the pending sales in member_activity and their
 * receipts in orders, as v6 kept them. */
#define UNDO_V7 \
	"DROP VIEW totals; DROP TRIGGER outbox_resized; DROP TRIGGER outbox_salvaged;" \
	" ALTER TABLE usage ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;" \
	" ALTER TABLE usage ADD COLUMN events INTEGER NOT NULL DEFAULT 0;" \
	" UPDATE usage SET bytes = (SELECT coalesce(sum(length(CAST(body AS BLOB))), 0) + " \
	OLDSCHEMA_STR(OUTBOX_ROW_OVERHEAD) " * count(*) FROM outbox), events = (SELECT count(*) FROM outbox);" \
	" UPDATE device SET next_seq = max(next_seq, coalesce((SELECT max(seq) + 1 FROM outbox), 0)), max_wall_ms =" \
	" coalesce((SELECT max_wall FROM outbox WHERE seq >= device.next_seq ORDER BY seq DESC LIMIT 1), max_wall_ms);" \
	" ALTER TABLE usage DROP COLUMN removed_bytes; ALTER TABLE usage DROP COLUMN removed_events;" \
	" INSERT OR IGNORE INTO member_activity(seq, member_id, wall_ms, kind, amount, skus) SELECT seq, member ->> '$', wall_ms," \
	" kind, CASE kind WHEN 'return' THEN -json_extract(body, '$.total') ELSE json_extract(body, '$.total') END," \
	" (SELECT json_group_array(json_extract(value, '$.sku')) FROM json_each(body, '$.lines')) FROM outbox" \
	" WHERE member IS NOT NULL AND set_aside IS NULL;" \
	" ALTER TABLE outbox DROP COLUMN cum; ALTER TABLE outbox DROP COLUMN cum_events; ALTER TABLE outbox DROP COLUMN max_wall;" \
	" INSERT OR IGNORE INTO orders(kind, key, seq, id, wall_ms, digest) SELECT kind, okey, seq, id, wall_ms, digest" \
	" FROM outbox WHERE okey IS NOT NULL;" \
	" ALTER TABLE outbox DROP COLUMN member; ALTER TABLE outbox DROP COLUMN okey; ALTER TABLE outbox DROP COLUMN digest;" \
	" CREATE TRIGGER outbox_member_activity AFTER INSERT ON outbox WHEN NEW.recovered = 0 AND NEW.kind IN" \
	" ('purchase', 'return') AND json_extract(NEW.body, '$.member_id') IS NOT NULL BEGIN INSERT OR REPLACE INTO" \
	" member_activity(seq, member_id, wall_ms, kind, amount, skus) VALUES (NEW.seq, json_extract(NEW.body," \
	" '$.member_id'), NEW.wall_ms, NEW.kind, CASE NEW.kind WHEN 'return' THEN -json_extract(NEW.body, '$.total')" \
	" ELSE json_extract(NEW.body, '$.total') END, (SELECT json_group_array(json_extract(value, '$.sku')) FROM" \
	" json_each(NEW.body, '$.lines'))); END;" \
	" ALTER TABLE device DROP COLUMN cum_bytes; ALTER TABLE device DROP COLUMN cum_events;" \
	" CREATE TRIGGER outbox_usage_insert AFTER INSERT ON outbox BEGIN UPDATE usage SET bytes = bytes +" \
	" length(CAST(NEW.body AS BLOB)) + " OLDSCHEMA_STR(OUTBOX_ROW_OVERHEAD) ", events = events + 1 WHERE id = 1; END;" \
	" CREATE TRIGGER outbox_usage_delete AFTER DELETE ON outbox BEGIN UPDATE usage SET bytes = bytes -" \
	" length(CAST(OLD.body AS BLOB)) - " OLDSCHEMA_STR(OUTBOX_ROW_OVERHEAD) ", events = events - 1 WHERE id = 1; END;" \
	" CREATE TRIGGER outbox_usage_update AFTER UPDATE OF body ON outbox BEGIN UPDATE usage SET bytes = bytes -" \
	" length(CAST(OLD.body AS BLOB)) + length(CAST(NEW.body AS BLOB)) WHERE id = 1; END;" \
	" CREATE INDEX member_activity_member ON member_activity(member_id, wall_ms);" \
	" PRAGMA user_version = 6;"

#endif
