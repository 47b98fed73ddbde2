/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cli_itest: scrmctl as an operator or a till's import script runs it.
 *
 *   record_journal  `scrmctl record --lines` on a journal of 2,500 sales with
 *                   a bad line and a blank line: every good line recorded and
 *                   printed with its receipt (the lines go through
 *                   scrm_record_batch, a thousand to a transaction), the bad
 *                   one refused with its line number and exit 1; the same
 *                   file again (an import whose outcome was unknown) prints
 *                   the same receipts and records nothing twice
 *
 * Usage: cli_itest SCENARIO. Needs SCRM_CTL_BIN.
 */
#include "itest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SALES 2500
#define BAD_LINE 6   /* 1-based: an invalid sale */
#define BLANK_LINE 8 /* skipped */

static int record_journal(struct itest *e)
{
	char journal[512], out1[512], out2[512];
	itest_path(journal, sizeof(journal), e->dir, "journal.jsonl");
	itest_path(out1, sizeof(out1), e->dir, "first.out");
	itest_path(out2, sizeof(out2), e->dir, "again.out");
	FILE *f = fopen(journal, "w");
	CHECK(f, "journal");
	if (!f)
		return -1;
	for (int i = 1; i <= SALES; i++) {
		if (i == BAD_LINE)
			fprintf(f, "{\"kind\":\"purchase\",\"order_id\":\"J-bad\",\"lines\":[{\"sku\":\"X\",\"qty\":0,"
				   "\"unit_price\":1}],\"total\":0,\"currency\":\"GBP\",\"payment\":\"card\"}\n");
		else if (i == BLANK_LINE)
			fprintf(f, "\n");
		else
			fprintf(f, "{\"kind\":\"purchase\",\"order_id\":\"J-%05d\",\"lines\":[{\"sku\":\"85123A\",\"qty\":1,"
				   "\"unit_price\":255}],\"total\":255,\"currency\":\"GBP\",\"payment\":\"card\"}\n", i);
	}
	CHECK(fclose(f) == 0, "journal written");

	const char *argv[] = {th_bin("SCRM_CTL_BIN"), "--store", e->store, "--device", ITEST_DEVICE, "record", "--lines",
			      journal, NULL};
	const char *const good = "recorded seq=";
	const int want = SALES - 2;
	int rc = th_run_target(argv, out1, 120000 * itest_scale);
	CHECK(rc == 1, "scrmctl record --lines exited %d, expected 1 (one line refused)", rc);
	char *first = th_read_file(out1, NULL);
	CHECK(first && strstr(first, "line 6: lines[0].qty: must be > 0"), "the bad line is not named with its number");
	int n = 0;
	for (const char *p = first; p && (p = strstr(p, good)); p++)
		n++;
	CHECK(n == want, "%d sales printed as recorded, expected %d", n, want);
	CHECK(itest_pending(e->store) == want, "the outbox holds %lld events, expected %d",
	      (long long)itest_pending(e->store), want);

	rc = th_run_target(argv, out2, 120000 * itest_scale);
	CHECK(rc == 1, "scrmctl record --lines (again) exited %d, expected 1", rc);
	char *again = th_read_file(out2, NULL);
	CHECK(first && again && strcmp(first, again) == 0, "the same journal again did not give the same receipts");
	CHECK(itest_pending(e->store) == want, "the second import wrote: %lld events, expected %d",
	      (long long)itest_pending(e->store), want);
	free(first);
	free(again);
	return 0;
}

/* No broker or certificates: the store directory only. */
static int setup(struct itest *e)
{
	itest_path(e->store, sizeof(e->store), e->dir, "store");
	return 0;
}

static const struct itest_suite suite = {
	.program = "cli_itest",
	.bare = 1,
	.setup = setup,
	.scenarios = (const struct itest_scenario[]){
		{"record_journal", record_journal},
		{NULL, NULL},
	},
};

ITEST_MAIN(suite)
