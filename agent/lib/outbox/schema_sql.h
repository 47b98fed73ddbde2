/* SPDX-License-Identifier: Apache-2.0 */
/*
 * schema_sql: SQL text that schema.c's triggers and a reader outside the
 * outbox handle (ledger_read.c, which needs nothing else of the module)
 * must write the same way.
 */
#ifndef SCRM_OUTBOX_SCHEMA_SQL_H
#define SCRM_OUTBOX_SCHEMA_SQL_H

/* A purchase's or return's amount (negative for a return) and SKUs, as
 * member_activity keeps them, from the row prefix P ("NEW." or "OLD.", ""
 * in a query over outbox). */
#define MEMBER_ACTIVITY_OF(P) \
	"CASE " P "kind WHEN 'return' THEN -json_extract(" P "body, '$.total') ELSE json_extract(" P "body, '$.total') END," \
	" (SELECT json_group_array(json_extract(value, '$.sku')) FROM json_each(" P "body, '$.lines'))"

#endif
