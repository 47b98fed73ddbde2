/* SPDX-License-Identifier: Apache-2.0 */
/*
 * crypto_test: agent/lib/core/crypto.c — key files, AES-256-GCM sealing, HMAC, base64,
 * and above all the hand-assembled ECDSA P-256 verification, cross-checked
 * against mbedtls_pk_verify on genuine, altered and malformed signatures.
 * It is stricter than mbedtls_pk_verify on purpose (docs/protocol.md,
 * "Signatures"): DER only, and s in the low half of the group order.
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

#include <mbedtls/asn1.h>
#include <mbedtls/ecp.h>
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

/* P-256's group order n, big-endian. */
static const uint8_t order[32] = {0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
				  0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17,
				  0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51};

/* r and s of a DER signature, as 32-byte big-endian numbers (mbedTLS's
 * lenient reader: the test's own view, independent of crypto.c). */
static void split_sig(const uint8_t *sig, size_t n, uint8_t r[32], uint8_t s[32])
{
	unsigned char *p = (unsigned char *)(uintptr_t)sig;
	const unsigned char *end = sig + n;
	size_t len;
	mbedtls_mpi a, b;
	mbedtls_mpi_init(&a);
	mbedtls_mpi_init(&b);
	assert_int_equal(mbedtls_asn1_get_tag(&p, end, &len, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE), 0);
	assert_int_equal(mbedtls_asn1_get_mpi(&p, end, &a), 0);
	assert_int_equal(mbedtls_asn1_get_mpi(&p, end, &b), 0);
	assert_int_equal(mbedtls_mpi_write_binary(&a, r, 32), 0);
	assert_int_equal(mbedtls_mpi_write_binary(&b, s, 32), 0);
	mbedtls_mpi_free(&a);
	mbedtls_mpi_free(&b);
}

/* s > n/2 (n is odd: s > n - s) */
static int high_s(const uint8_t s[32])
{
	uint8_t t[32];
	int borrow = 0;
	for (int i = 31; i >= 0; i--) {
		int d = order[i] - s[i] - borrow;
		borrow = d < 0;
		t[i] = (uint8_t)(d + (borrow ? 256 : 0));
	}
	return memcmp(s, t, 32) > 0;
}

/* n - s */
static void negate_s(uint8_t s[32])
{
	int borrow = 0;
	for (int i = 31; i >= 0; i--) {
		int d = order[i] - s[i] - borrow;
		borrow = d < 0;
		s[i] = (uint8_t)(d + (borrow ? 256 : 0));
	}
}

/* How to spell one INTEGER or the SEQUENCE, right or wrong. */
enum { DER_OK = 0, DER_LONG_LEN = 1, DER_ZERO_PAD = 2, DER_NO_SIGN_PAD = 4 };

/* INTEGER v (32 bytes big-endian); returns the bytes written. */
static size_t put_int(uint8_t *out, const uint8_t v[32], int how)
{
	size_t skip = 0, n = 0;
	while (skip < 31 && v[skip] == 0)
		skip++;
	uint8_t body[40];
	size_t bl = 0;
	if (how & DER_ZERO_PAD)
		body[bl++] = 0;
	if ((v[skip] & 0x80) && !(how & DER_NO_SIGN_PAD))
		body[bl++] = 0;
	memcpy(body + bl, v + skip, 32 - skip);
	bl += 32 - skip;
	out[n++] = 0x02;
	if (how & DER_LONG_LEN)
		out[n++] = 0x81;
	out[n++] = (uint8_t)bl;
	memcpy(out + n, body, bl);
	return n + bl;
}

/* SEQUENCE { INTEGER r, INTEGER s } spelt as told, then `extra` bytes of
 * `tail` inside the SEQUENCE. Returns the length. */
static size_t put_sig(uint8_t *out, const uint8_t r[32], int how_r, const uint8_t s[32], int how_s, int how_seq,
		      const uint8_t *tail, size_t extra)
{
	uint8_t body[120];
	size_t bl = put_int(body, r, how_r);
	bl += put_int(body + bl, s, how_s);
	if (extra)
		memcpy(body + bl, tail, extra);
	bl += extra;
	size_t n = 0;
	out[n++] = 0x30;
	if (how_seq & DER_LONG_LEN)
		out[n++] = 0x81;
	out[n++] = (uint8_t)bl;
	memcpy(out + n, body, bl);
	return n + bl;
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
		uint8_t r[32], s[32];
		split_sig(sig, (size_t)n, r, s);
		assert_false(high_s(s)); /* central (cachegen) signs low-s */
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

/* Only DER, and only low s: one spelling per signature, so no third party
 * can turn a genuine signature (or QR token) into a different-looking one
 * that still verifies. Each re-spelling below is mathematically the same
 * (r, s) — or (r, n - s) — which mbedtls_pk_verify accepts; ours refuses
 * all but the canonical one. */
static void ecdsa_strict_der_low_s(void **state)
{
	(void)state;
	struct sig_fx f;
	char msg[64];
	uint8_t sig[80], buf[160], r[32], s[32], hs[32];
	static const uint8_t junk[2] = {0x05, 0x00}; /* an ASN.1 NULL */
	int seen_high_r = 0;
	/* DER spelt otherwise: mbedTLS reads each (asked on the first of a
	 * kind); we refuse them all. */
	static const struct {
		int how_r, how_s, how_seq, ask_mbedtls;
	} respelt[] = {
		/* long-form lengths (BER), on the SEQUENCE or an INTEGER */
		{DER_OK, DER_OK, DER_LONG_LEN, 1},
		{DER_LONG_LEN, DER_OK, DER_OK, 0},
		{DER_OK, DER_LONG_LEN, DER_OK, 0},
		/* a zero byte more than the sign needs, on r or s */
		{DER_ZERO_PAD, DER_OK, DER_OK, 1},
		{DER_OK, DER_ZERO_PAD, DER_OK, 0},
	};
	sig_setup(&f, 14);
	for (int i = 0; i < 24; i++) {
		snprintf(msg, sizeof(msg), "SCRM1 payload %d", i);
		size_t ml = strlen(msg);
		long n = sign(&f, msg, sig, sizeof(sig));
		split_sig(sig, (size_t)n, r, s);
		if (high_s(s))
			negate_s(s);
		memcpy(hs, s, 32);
		negate_s(hs);
		/* The canonical low-s DER: accepted, and mbedTLS agrees. */
		size_t k = put_sig(buf, r, DER_OK, s, DER_OK, DER_OK, NULL, 0);
		assert_int_equal(crypto__verify(f.v, msg, ml, buf, k), SCRM_OK);
		assert_true(pk_verdict(&f, msg, ml, buf, k));
		/* high s (n - s): a valid ECDSA signature, refused */
		k = put_sig(buf, r, DER_OK, hs, DER_OK, DER_OK, NULL, 0);
		assert_true(pk_verdict(&f, msg, ml, buf, k));
		assert_int_equal(crypto__verify(f.v, msg, ml, buf, k), SCRM_E_CRYPTO);
		/* ... which a signer re-spells low (scrmctl's --sign-key) */
		assert_int_equal(crypto__sig_low_s(buf, &k, sizeof(buf)), SCRM_OK);
		assert_int_equal(crypto__verify(f.v, msg, ml, buf, k), SCRM_OK);
		assert_int_equal(crypto__sig_low_s(buf, &k, sizeof(buf)), SCRM_OK); /* low stays as is */
		assert_int_equal(crypto__verify(f.v, msg, ml, buf, k), SCRM_OK);
		for (size_t j = 0; j < sizeof(respelt) / sizeof(respelt[0]); j++) {
			k = put_sig(buf, r, respelt[j].how_r, s, respelt[j].how_s, respelt[j].how_seq, NULL, 0);
			if (respelt[j].ask_mbedtls)
				assert_true(pk_verdict(&f, msg, ml, buf, k));
			assert_int_equal(crypto__verify(f.v, msg, ml, buf, k), SCRM_E_CRYPTO);
		}
		/* trailing bytes after the SEQUENCE, or inside it after s */
		k = put_sig(buf, r, DER_OK, s, DER_OK, DER_OK, NULL, 0);
		memcpy(buf + k, junk, sizeof(junk));
		assert_int_equal(crypto__verify(f.v, msg, ml, buf, k + sizeof(junk)), SCRM_E_CRYPTO);
		k = put_sig(buf, r, DER_OK, s, DER_OK, DER_OK, junk, sizeof(junk));
		assert_int_equal(crypto__verify(f.v, msg, ml, buf, k), SCRM_E_CRYPTO);
		/* r with its top bit set but no 0x00 before it: a negative
		 * INTEGER (mbedTLS reads the magnitude and accepts it) */
		if (r[0] & 0x80) {
			seen_high_r = 1;
			k = put_sig(buf, r, DER_NO_SIGN_PAD, s, DER_OK, DER_OK, NULL, 0);
			assert_true(pk_verdict(&f, msg, ml, buf, k));
			assert_int_equal(crypto__verify(f.v, msg, ml, buf, k), SCRM_E_CRYPTO);
		}
	}
	assert_true(seen_high_r);
	/* Structure: not a SEQUENCE, three INTEGERs, one, an empty INTEGER,
	 * a negative s, no length, an indefinite length (BER). */
	static const uint8_t set[] = {0x31, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01};
	static const uint8_t three[] = {0x30, 0x09, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01};
	static const uint8_t one[] = {0x30, 0x03, 0x02, 0x01, 0x01};
	static const uint8_t empty_int[] = {0x30, 0x05, 0x02, 0x00, 0x02, 0x01, 0x01};
	static const uint8_t neg_s[] = {0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0xff};
	static const uint8_t no_len[] = {0x30};
	static const uint8_t indefinite[] = {0x30, 0x80, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00, 0x00};
	const struct {
		const uint8_t *p;
		size_t n;
	} bad[] = {{set, sizeof(set)},		   {three, sizeof(three)},     {one, sizeof(one)},
		   {empty_int, sizeof(empty_int)}, {neg_s, sizeof(neg_s)},     {no_len, sizeof(no_len)},
		   {indefinite, sizeof(indefinite)}};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(crypto__verify(f.v, "hello", 5, bad[i].p, bad[i].n), SCRM_E_CRYPTO);
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
		cmocka_unit_test(ecdsa_strict_der_low_s),
		cmocka_unit_test(verifier_key_errors),
	};
	tu_select(argc, argv);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
