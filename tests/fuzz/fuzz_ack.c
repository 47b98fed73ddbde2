/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_ack: central's down/ack payload (docs/protocol.md, "Acknowledgement"),
 * parsed by the pure ack__parse() (agent/proto/ack.c), and the same
 * bytes as a coupon verdict (verdict__parse, agent/proto/verdict.c). Invariants: refused with a
 * message, or every range and rejected seq within [1, 2^53], first <= last,
 * at most DELIVERY_ACK_MAX_RANGES of each. What the delivery state machine
 * then does with a valid ack is checked by tests/unit/delivery_test.c and
 * the seeded simulator (tests/sim/).
 */
#include "fuzz.h"

#include "ack.h"
#include "err.h"
#include "verdict.h"

#include <string.h>

#define MAX_SEQ 9007199254740992LL /* 2^53 */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	ack__msg ack;
	memset(&ack, 0, sizeof(ack));
	err__clear();
	int rc = ack__parse((const char *)data, size, &ack);
	if (rc != SCRM_OK) {
		FUZZ_CHECK(rc == SCRM_E_INVALID || rc == SCRM_E_NOMEM, "rc %d", rc);
		FUZZ_CHECK(scrm_errmsg()[0] != '\0', "refused without a message");
		ack__free(&ack);
		return 0;
	}
	FUZZ_CHECK(ack.n_acked <= DELIVERY_ACK_MAX_RANGES && ack.n_rejected <= DELIVERY_ACK_MAX_RANGES, "%zu ranges", ack.n_acked);
	for (size_t i = 0; i < ack.n_acked; i++)
		FUZZ_CHECK(ack.acked[i][0] >= 1 && ack.acked[i][0] <= ack.acked[i][1] && ack.acked[i][1] <= MAX_SEQ,
			   "range [%lld,%lld]", (long long)ack.acked[i][0], (long long)ack.acked[i][1]);
	for (size_t i = 0; i < ack.n_rejected; i++) {
		FUZZ_CHECK(ack.rejected[i].seq >= 1 && ack.rejected[i].seq <= MAX_SEQ, "rejected seq %lld",
			   (long long)ack.rejected[i].seq);
		FUZZ_CHECK(ack.rejected[i].reason != NULL, "rejection without a reason");
		(void)strlen(ack.rejected[i].reason);
	}
	ack__free(&ack);
	/* The same bytes as central's other device-bound message, a coupon
	 * verdict (down/verdict): refused with a reason, or bounded fields. */
	verdict__msg v;
	err__clear();
	rc = verdict__parse((const char *)data, size, &v);
	if (rc != SCRM_OK) {
		FUZZ_CHECK(rc == SCRM_E_INVALID, "verdict rc %d", rc);
		FUZZ_CHECK(scrm_errmsg()[0] != '\0', "verdict refused without a message");
	} else {
		FUZZ_CHECK(strlen(v.redemption) == 36, "redemption id length %zu", strlen(v.redemption));
		FUZZ_CHECK(v.accepted || v.reason[0], "rejection without a reason");
		FUZZ_CHECK(v.ts >= 0, "negative ts");
	}
	return 0;
}

