/* SPDX-License-Identifier: Apache-2.0 */
/* pc_smoke: what a POS developer writes first, built by the package test against the
 * INSTALLED scrm/scrm.h and libscrm.so found through `pkg-config scrm`. Records one
 * member scan into the store dir argv[1] and prints the version and the receipt. */
#include <scrm/scrm.h>
#include <stdio.h>

int main(int argc, char **argv)
{
	scrm_store *st;
	scrm_store_options so = {.device_id = "pos-smoke"};
	scrm_member_scan scan = {.member_id = "17850", .method = "card"};
	scrm_receipt r;
	if (argc != 2 || scrm_store_open(argv[1], &so, &st) != SCRM_OK ||
	    scrm_record_member_scan(st, &scan, &r) != SCRM_OK) {
		fprintf(stderr, "pc_smoke: %s\n", scrm_errmsg());
		return 1;
	}
	printf("libscrm %s seq=%lld\n", scrm_version(), (long long)r.seq);
	scrm_store_close(st);
	return 0;
}
