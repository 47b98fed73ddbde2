/* SPDX-License-Identifier: Apache-2.0 */
/*
 * salvage: part of the outbox module (it owns outbox.db): copies what can
 * still be read of a damaged outbox file into a healthy one.
 *
 * SQLite stops a scan at the first page it cannot read, so a straight
 * `SELECT ... ORDER BY seq` strands every event behind one damaged leaf.
 * Salvage instead walks the events key by key (`seq > N`, key only, then the
 * row), and when a page cannot be read it probes forward for the next seq
 * whose page can (exponential steps, then a binary search back), so only the
 * rows of the damaged pages themselves are lost. The ledgers (receipts,
 * redemptions, member activity, recommendations shown, rejected and
 * set-aside events) are copied as they were, scanned forward and, after an
 * error, backward, and the capture's ledger rules (append.c) are not run
 * for copied events (outbox.recovered != 0): attribution and the
 * redemption ledger stay what they were on the device.
 */
#ifndef SCRM_SALVAGE_H
#define SCRM_SALVAGE_H

#include <stdint.h>

struct sqlite3;

enum salvage__mode {
	/* Into the fresh file that replaces a quarantined one (nobody else
	 * uses it yet): events (recovered = 2), ledgers, settings, the
	 * device's counters and clock anchor. */
	SALVAGE_QUARANTINE = 2,
	/* Into the live outbox, later (scrmctl outbox recover): only events
	 * whose seq the live file does not hold and no quarantined file gave
	 * before (recovered = 1: sent with "recovered":true), and their
	 * ledger rows where missing. */
	SALVAGE_RECOVER = 1,
};

typedef struct salvage__report {
	int64_t events;          /* copied */
	int64_t skipped;         /* readable, but already held (recover mode) */
	int64_t unreadable_rows; /* keys found whose row could not be read */
	int64_t skipped_ranges;  /* damaged ranges stepped over */
	int64_t ledger_rows;     /* copied */
	int64_t ledger_errors;   /* ledger tables that could not be read whole */
	int64_t max_seq;         /* highest seq seen in the damaged file, 0 if none */
} salvage__report;

/* Copy from `old` (read-only connection to the damaged file) into `into`,
 * in one IMMEDIATE transaction on `into`. `source` (borrowed) is recorded
 * with each event taken (the quarantined file's path). SCRM_OK, or an error
 * of `into` (then nothing was copied). Problems reading `old` are never an
 * error: they are what salvage is for (counted in *r). */
int salvage__copy(struct sqlite3 *old, struct sqlite3 *into, enum salvage__mode mode, const char *source,
		  int64_t now_ms, salvage__report *r);

#endif
