/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_ack: central's down/ack payload (docs/protocol.md, "Acknowledgement"),
 * the one parser of input that arrives from the network.
 *
 * Today that parser is on_ack(), static in agent/sync.c, fused with applying
 * the ack to the outbox and the delivery window. The smallest change that
 * makes it testable on its own is to split out a pure parser and declare it
 * in agent/sync.h:
 *
 *     typedef struct sync__rejection {
 *             int64_t seq;        // 1 <= seq <= 2^53, an integer
 *             char *reason;       // owned; "unspecified" when absent
 *     } sync__rejection;
 *
 *     typedef struct sync__ack {
 *             int64_t (*acked)[2]; // owned; inclusive ranges,
 *             size_t n_acked;      //   1 <= first <= last <= 2^53, integers
 *             sync__rejection *rejected; // owned
 *             size_t n_rejected;
 *     } sync__ack;
 *
 *     // Parse and validate a down/ack payload (borrowed, need not be
 *     // NUL-terminated). SCRM_OK with *ack filled (release with
 *     // sync__ack_free), or SCRM_E_INVALID with the reason in scrm_errmsg():
 *     // the whole ack is then ignored. No I/O, no logging, any thread.
 *     int sync__parse_ack(const char *payload, size_t len, sync__ack *ack);
 *     void sync__ack_free(sync__ack *ack);   // NULL members are fine
 *
 * and on_ack() becomes parse → log and return on error → outbox__reject()
 * each rejection → outbox__ack() → retire(). CMake looks for
 * "sync__parse_ack" in sync.h: when it is there this harness is built with
 * SCRM_HAVE_SYNC_PARSE_ACK and fuzzes the parser alone, checking the
 * invariants above. Until then it compiles agent/sync.c into itself and
 * drives on_ack() against a real outbox kept on a tmpfs (/dev/shm, else
 * $TMPDIR), so the parser and the code that trusts it are fuzzed together;
 * sanitizers are the oracle there.
 */
#include "fuzz.h"

#ifdef SCRM_HAVE_SYNC_PARSE_ACK

#include "err.h"
#include "sync.h"

#include <string.h>

#define MAX_SEQ 9007199254740992LL /* 2^53 */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	sync__ack ack;
	memset(&ack, 0, sizeof(ack));
	err__clear();
	int rc = sync__parse_ack((const char *)data, size, &ack);
	if (rc != SCRM_OK) {
		FUZZ_CHECK(rc == SCRM_E_INVALID || rc == SCRM_E_NOMEM, "rc %d", rc);
		FUZZ_CHECK(scrm_errmsg()[0] != '\0', "refused without a message");
		sync__ack_free(&ack);
		return 0;
	}
	FUZZ_CHECK(ack.n_acked <= 4096, "%zu ranges", ack.n_acked);
	for (size_t i = 0; i < ack.n_acked; i++)
		FUZZ_CHECK(ack.acked[i][0] >= 1 && ack.acked[i][0] <= ack.acked[i][1] && ack.acked[i][1] <= MAX_SEQ,
			   "range [%lld,%lld]", (long long)ack.acked[i][0], (long long)ack.acked[i][1]);
	for (size_t i = 0; i < ack.n_rejected; i++) {
		FUZZ_CHECK(ack.rejected[i].seq >= 1 && ack.rejected[i].seq <= MAX_SEQ, "rejected seq %lld",
			   (long long)ack.rejected[i].seq);
		FUZZ_CHECK(ack.rejected[i].reason != NULL, "rejection without a reason");
		(void)strlen(ack.rejected[i].reason);
	}
	sync__ack_free(&ack);
	/* The same bytes as central's other device-bound message, a coupon
	 * verdict (down/verdict): refused with a reason, or bounded fields. */
	sync__verdict v;
	err__clear();
	rc = sync__parse_verdict((const char *)data, size, &v);
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

#else /* !SCRM_HAVE_SYNC_PARSE_ACK: drive the static on_ack() */

#include "sync.c"

#include <ftw.h>

static struct sync state;
static char dir[4096];
static int64_t next_id;

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static void remove_dir(void)
{
	if (state.ob)
		outbox__close(state.ob);
	state.ob = NULL;
	if (dir[0])
		nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Keep a few dozen pending events so acks and rejections have something to
 * act on; on a tmpfs the fsyncs cost nothing. */
static void refill(void)
{
	scrm_outbox_stats st;
	if (outbox__stats(state.ob, &st) != SCRM_OK || st.pending >= 32)
		return;
	outbox__row rows[64];
	char ids[64][48];
	for (int i = 0; i < 64; i++) {
		snprintf(ids[i], sizeof(ids[i]), "0190a000-0000-7000-8000-%012lld", (long long)(next_id++ % 1000000000000LL));
		rows[i] = (outbox__row){.id = ids[i], .kind = "member_scan", .wall_ms = 1700000000000LL, .mono_ms = 1,
					.boot = "fuzz", .body = "{\"member_id\":\"1\",\"method\":\"qr\"}", .body_len = 32};
	}
	FUZZ_CHECK(outbox__append(state.ob, rows, 64, 0) == SCRM_OK, "refill: %s", scrm_errmsg());
}

static void init_once(void)
{
	if (state.ob)
		return;
	const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
	snprintf(dir, sizeof(dir), "%s/scrm-fuzz-ack-XXXXXX", base && *base ? base : "/tmp");
	FUZZ_CHECK(mkdtemp(dir) != NULL, "mkdtemp %s", dir);
	atexit(remove_dir);
	log__set_level(-1); /* most inputs are malformed acks, each logged */
	FUZZ_CHECK(outbox__open(dir, "fuzz-01", 0, &state.ob) == SCRM_OK, "outbox: %s", scrm_errmsg());
	/* A delivery window to retire(), as after a few publishes. */
	state.window = 8;
	state.nwin = 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	init_once();
	refill();
	/* Paho hands the daemon a NUL-terminated copy; do the same. */
	char *payload = malloc(size + 1);
	FUZZ_CHECK(payload != NULL, "out of memory");
	memcpy(payload, data, size);
	payload[size] = '\0';
	int64_t oldest = 0;
	outbox__oldest_seq(state.ob, &oldest);
	state.nwin = 2;
	state.win[0] = (struct batch){.first = oldest, .last = oldest + 9};
	state.win[1] = (struct batch){.first = oldest + 10, .last = oldest + 19};
	state.sent_upto = oldest + 19;
	on_ack(&state, payload, size);
	FUZZ_CHECK(state.nwin >= 0 && state.nwin <= 2, "window %d", state.nwin);
	free(payload);
	return 0;
}

#endif
