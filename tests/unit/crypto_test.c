/* SPDX-License-Identifier: Apache-2.0 */
/*
 * crypto_test: agent/crypto.c — key files, AES-256-GCM sealing, HMAC, base64,
 * and above all the hand-assembled ECDSA P-256 verification, cross-checked
 * against mbedtls_pk_verify on genuine, altered and malformed signatures.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <scrm/scrm.h>

#include "cachegen.h"
#include "crypto.h"
#include "testutil.h"

#include <mbedtls/pk.h>
#include <mbedtls/sha256.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void key_file_created_once_0600(void **state)
{
	(void)state;
	char *dir = tu_tmpdir("crypto"), *path = tu_join(dir, "keys/data.key");
	uint8_t a[32], b[32];
	struct stat st;
	assert_int_equal(crypto__load_key(path, a), SCRM_E_NOT_FOUND);
	assert_int_equal(crypto__ensure_key(path, a), SCRM_OK);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(st.st_size, 65);
	assert_int_equal(crypto__ensure_key(path, b), SCRM_OK);
	assert_memory_equal(a, b, 32);
	FILE *f = fopen(path, "w");
	fputs("not hex\n", f);
	fclose(f);
	assert_int_equal(crypto__load_key(path, a), SCRM_E_CONFIG);
	assert_errmsg_contains("data.key");
	free(path);
	tu_rmtree(dir);
	free(dir);
}

static void seal_roundtrip_and_tamper(void **state)
{
	(void)state;
	uint8_t key[32], out[64 + CRYPTO_SEAL_OVERHEAD], back[64];
	crypto__sealer *s = NULL;
	const char *pt = "{\"name\":\"Ann\",\"phone\":\"447700900123\"}";
	size_t n = strlen(pt);
	memset(key, 7, sizeof(key));
	assert_int_equal(crypto__sealer_new(key, &s), SCRM_OK);
	assert_int_equal(crypto__seal(s, "M1", 2, pt, n, out), SCRM_OK);
	assert_null(memmem(out, n + CRYPTO_SEAL_OVERHEAD, "447700900123", 12));
	assert_int_equal(crypto__open(s, "M1", 2, out, n + CRYPTO_SEAL_OVERHEAD, back), SCRM_OK);
	assert_memory_equal(back, pt, n);
	/* another row's ciphertext (associated data = member id) */
	assert_int_equal(crypto__open(s, "M2", 2, out, n + CRYPTO_SEAL_OVERHEAD, back), SCRM_E_CRYPTO);
	out[20] ^= 1;
	assert_int_equal(crypto__open(s, "M1", 2, out, n + CRYPTO_SEAL_OVERHEAD, back), SCRM_E_CRYPTO);
	crypto__sealer_free(s);
}

static void hmac_rfc4231_case2(void **state)
{
	(void)state;
	static const uint8_t want[32] = {0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24,
					 0x26, 0x08, 0x95, 0x75, 0xc7, 0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27,
					 0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9, 0x64, 0xec, 0x38, 0x43};
	uint8_t h[32];
	crypto__hmac_sha256((const uint8_t *)"Jefe", 4, "what do ya want for nothing?", 28, h);
	assert_memory_equal(h, want, 32);
}

static void base64_strict(void **state)
{
	(void)state;
	uint8_t b[16];
	assert_int_equal(crypto__b64_decode("aGVsbG8=", 8, 0, b, sizeof(b)), 5);
	assert_memory_equal(b, "hello", 5);
	assert_int_equal(crypto__b64_decode("aGVsbG8", 7, 1, b, sizeof(b)), 5);
	assert_int_equal(crypto__b64_decode("aGVsbG8", 7, 0, b, sizeof(b)), -1);  /* std needs padding */
	assert_int_equal(crypto__b64_decode("aGVsbG9=", 8, 0, b, sizeof(b)), -1); /* non-zero spare bits */
	assert_int_equal(crypto__b64_decode("a-_b", 4, 0, b, sizeof(b)), -1);     /* url alphabet in std */
	assert_int_equal(crypto__b64_decode("aGVsbG8gd29ybGQhIQ==", 20, 0, b, 4), -1); /* over cap */
}

struct sig_fx {
	char *dir, pub[600];
	cg_signer *signer;
	crypto__verifier *v;
	mbedtls_pk_context pk;
};

static int pk_verdict(struct sig_fx *f, const void *msg, size_t n, const uint8_t *sig, size_t sl)
{
	uint8_t h[32];
	mbedtls_sha256_ret(msg, n, h, 0);
	return mbedtls_pk_verify(&f->pk, MBEDTLS_MD_SHA256, h, 32, sig, sl) == 0;
}

static void sig_setup(struct sig_fx *f, uint64_t seed)
{
	char kp[700];
	memset(f, 0, sizeof(*f));
	f->dir = tu_tmpdir("crypto-sig");
	assert_int_equal(cg_keys_create(f->dir, seed), 0);
	snprintf(kp, sizeof(kp), "%s/central.key", f->dir);
	snprintf(f->pub, sizeof(f->pub), "%s/central.pub", f->dir);
	assert_int_equal(cg_signer_open(kp, &f->signer), 0);
	assert_int_equal(crypto__verifier_load(f->pub, &f->v), SCRM_OK);
	mbedtls_pk_init(&f->pk);
	assert_int_equal(mbedtls_pk_parse_public_keyfile(&f->pk, f->pub), 0);
}

static void sig_teardown(struct sig_fx *f)
{
	mbedtls_pk_free(&f->pk);
	crypto__verifier_free(f->v);
	cg_signer_close(f->signer);
	tu_rmtree(f->dir);
	free(f->dir);
}

static long sign(struct sig_fx *f, const char *msg, uint8_t *sig, size_t cap)
{
	char *b64 = NULL;
	assert_int_equal(cg_sign_b64(f->signer, msg, strlen(msg), &b64), 0);
	long n = crypto__b64_decode(b64, strlen(b64), 0, sig, cap);
	free(b64);
	assert_true(n > 0);
	return n;
}

/* Genuine signatures verify; every single-bit change of the message or of
 * the signature is refused — and mbedtls_pk_verify agrees every time. */
static void ecdsa_agrees_with_mbedtls(void **state)
{
	(void)state;
	struct sig_fx f;
	char msg[64];
	uint8_t sig[80], bad[80];
	unsigned rng = 12345;
	sig_setup(&f, 11);
	for (int i = 0; i < 40; i++) {
		snprintf(msg, sizeof(msg), "{\"type\":\"coupon\",\"id\":\"C-%d\"}", i);
		long n = sign(&f, msg, sig, sizeof(sig));
		assert_int_equal(crypto__verify(f.v, msg, strlen(msg), sig, (size_t)n), SCRM_OK);
		assert_true(pk_verdict(&f, msg, strlen(msg), sig, (size_t)n));
		/* flip one bit of the signature */
		memcpy(bad, sig, (size_t)n);
		rng = rng * 1103515245u + 12345u;
		size_t at = (rng >> 8) % (size_t)n;
		bad[at] ^= (uint8_t)(1u << ((rng >> 4) & 7));
		int ours = crypto__verify(f.v, msg, strlen(msg), bad, (size_t)n) == SCRM_OK;
		assert_int_equal(ours, pk_verdict(&f, msg, strlen(msg), bad, (size_t)n));
		assert_false(ours);
		/* flip one bit of the message */
		msg[(rng >> 12) % strlen(msg)] ^= 1;
		assert_int_equal(crypto__verify(f.v, msg, strlen(msg), sig, (size_t)n), SCRM_E_CRYPTO);
		assert_false(pk_verdict(&f, msg, strlen(msg), sig, (size_t)n));
	}
	sig_teardown(&f);
}

/* Malformed DER and out-of-range integers are refused, not crashed on. */
static void ecdsa_malformed_refused(void **state)
{
	(void)state;
	struct sig_fx f;
	uint8_t sig[80], bad[90];
	const char *msg = "hello";
	sig_setup(&f, 12);
	long n = sign(&f, msg, sig, sizeof(sig));
	/* trailing byte */
	memcpy(bad, sig, (size_t)n);
	bad[n] = 0;
	assert_int_equal(crypto__verify(f.v, msg, 5, bad, (size_t)n + 1), SCRM_E_CRYPTO);
	/* truncated */
	assert_int_equal(crypto__verify(f.v, msg, 5, sig, (size_t)n - 1), SCRM_E_CRYPTO);
	assert_int_equal(crypto__verify(f.v, msg, 5, sig, 0), SCRM_E_CRYPTO);
	/* r = 0, s = 1 */
	static const uint8_t zero_r[] = {0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x01};
	assert_int_equal(crypto__verify(f.v, msg, 5, zero_r, sizeof(zero_r)), SCRM_E_CRYPTO);
	/* r = s = n (the group order) */
	static const uint8_t order[32] = {0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
					  0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17,
					  0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51};
	uint8_t big[2 + 2 * 35];
	big[0] = 0x30;
	big[1] = 2 * 35;
	for (int k = 0; k < 2; k++) {
		uint8_t *p = big + 2 + 35 * k;
		p[0] = 0x02;
		p[1] = 33;
		p[2] = 0x00;
		memcpy(p + 3, order, 32);
	}
	assert_int_equal(crypto__verify(f.v, msg, 5, big, sizeof(big)), SCRM_E_CRYPTO);
	/* a signature by another central key */
	struct sig_fx g;
	sig_setup(&g, 13);
	long m = sign(&g, msg, sig, sizeof(sig));
	assert_int_equal(crypto__verify(f.v, msg, 5, sig, (size_t)m), SCRM_E_CRYPTO);
	assert_int_equal(crypto__verify(g.v, msg, 5, sig, (size_t)m), SCRM_OK);
	sig_teardown(&g);
	sig_teardown(&f);
}

static void verifier_key_errors(void **state)
{
	(void)state;
	char *dir = tu_tmpdir("crypto-key"), *p = tu_join(dir, "central.pub");
	crypto__verifier *v = NULL;
	assert_int_equal(crypto__verifier_load(p, &v), SCRM_E_NOT_FOUND);
	FILE *f = fopen(p, "w");
	fputs("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", f);
	fclose(f);
	assert_int_equal(crypto__verifier_load(p, &v), SCRM_E_CONFIG);
	assert_null(v);
	free(p);
	tu_rmtree(dir);
	free(dir);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(key_file_created_once_0600),
		cmocka_unit_test(seal_roundtrip_and_tamper),
		cmocka_unit_test(hmac_rfc4231_case2),
		cmocka_unit_test(base64_strict),
		cmocka_unit_test(ecdsa_agrees_with_mbedtls),
		cmocka_unit_test(ecdsa_malformed_refused),
		cmocka_unit_test(verifier_key_errors),
	};
	tu_select(argc, argv);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
