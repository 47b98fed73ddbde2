/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cmdsign: central's side of signed fleet commands for the unit tests that
 * need one (fleet_test, commands_test): a key pair made by scrm_cachegen and
 * the envelope {"signed":"<text>","sig":"<b64>"} of docs/protocol.md.
 * Header-only; include after cmocka.h.
 */
#ifndef SCRM_TEST_CMDSIGN_H
#define SCRM_TEST_CMDSIGN_H

#include "cachegen.h"
#include "crypto.h"
#include "err.h"
#include "sbuf.h"
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

/* A key pair in `dir` (key id `n`): *signer, and *vf (if not NULL) the
 * verifier of its public half. 0 or -1. */
static inline int cs_key_pair(const char *dir, int n, cg_signer **signer, crypto__verifier **vf)
{
	if (cg_keys_create(dir, n) != 0)
		return -1;
	char *path = tu_join(dir, "central.key");
	int rc = cg_signer_open(path, signer);
	free(path);
	path = tu_join(dir, "central.pub");
	if (!rc && vf && crypto__verifier_load(path, vf) != SCRM_OK)
		rc = -1;
	free(path);
	return rc ? -1 : 0;
}

/* A signed envelope of `text` (malloc'd). */
static inline char *cs_envelope(cg_signer *s, const char *text)
{
	char *b64 = NULL;
	sbuf b;
	assert_int_equal(cg_sign_b64(s, text, strlen(text), &b64), 0);
	sbuf__init(&b);
	sbuf__puts(&b, "{\"signed\":");
	sbuf__jstr(&b, text);
	sbuf__puts(&b, ",\"sig\":");
	sbuf__jstr(&b, b64);
	sbuf__puts(&b, "}");
	free(b64);
	assert_false(b.oom);
	return sbuf__take(&b, NULL);
}

#endif
