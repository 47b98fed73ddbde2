/* SPDX-License-Identifier: Apache-2.0 */
/*
 * crypto: mbedTLS-backed sealing, keyed hashing and signature checks (see
 * crypto.h for what it owns).
 */
#include "crypto.h"

#include "err.h"
#include "platform.h"

#include <errno.h>
#include <fcntl.h>
#include <mbedtls/asn1.h>
#include <mbedtls/asn1write.h>
#include <mbedtls/ecp.h>
#include <mbedtls/gcm.h>
#include <mbedtls/md.h>
#include <mbedtls/pk.h>
#include <mbedtls/sha256.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int crypto__load_key(const char *path, uint8_t key[CRYPTO_KEY_BYTES])
{
	char *text = NULL;
	size_t n = 0;
	char why[300];
	/* Only a key this user (or root) owns, in a directory nobody else can
	 * write, readable by nobody else: a planted or swapped key would let
	 * its author read what it seals (platform__read_trusted). */
	int e = platform__read_trusted(path, 4096, 1, &text, &n, why, sizeof(why));
	if (e == -ENOENT)
		return err__set(SCRM_E_NOT_FOUND, "%s: no such key file", path);
	if (e == -EPERM || e == -ELOOP || e == -ENOTDIR)
		return err__set(SCRM_E_CONFIG, "%s: refused: %s", path, why);
	if (e != 0)
		return err__set(SCRM_E_CONFIG, "%s: cannot read key file: %s", path, strerror(-e));
	while (n && (text[n - 1] == '\n' || text[n - 1] == '\r' || text[n - 1] == ' '))
		n--;
	int rc = SCRM_OK;
	if (n != 2 * CRYPTO_KEY_BYTES) {
		rc = err__set(SCRM_E_CONFIG, "%s: must hold %d hex characters, has %zu", path, 2 * CRYPTO_KEY_BYTES, n);
		goto cleanup;
	}
	for (size_t i = 0; i < CRYPTO_KEY_BYTES; i++) {
		int hi = hexval(text[2 * i]), lo = hexval(text[2 * i + 1]);
		if (hi < 0 || lo < 0) {
			rc = err__set(SCRM_E_CONFIG, "%s: not a hex key (character %zu)", path, 2 * i + 1);
			goto cleanup;
		}
		key[i] = (uint8_t)(hi << 4 | lo);
	}
cleanup:
	if (text) {
		memset(text, 0, n);
		free(text);
	}
	return rc;
}

/* Atomically (platform__write_file_atomic), so a power cut leaves either no
 * key or the whole key, never a torn one (a torn data key would make every
 * sealed record unreadable). */
static int write_key_file(const char *path, const uint8_t key[CRYPTO_KEY_BYTES])
{
	char hex[2 * CRYPTO_KEY_BYTES + 2], dir[4200];
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < CRYPTO_KEY_BYTES; i++) {
		hex[2 * i] = digits[key[i] >> 4];
		hex[2 * i + 1] = digits[key[i] & 15];
	}
	hex[2 * CRYPTO_KEY_BYTES] = '\n';
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash && slash != dir) {
		*slash = '\0';
		platform__mkdirs(dir, 0700);
	}
	int e = platform__write_file_atomic(path, hex, 2 * CRYPTO_KEY_BYTES + 1, 0600);
	memset(hex, 0, sizeof(hex));
	return e ? err__set(SCRM_E_IO, "%s: cannot write: %s", path, strerror(-e)) : SCRM_OK;
}

int crypto__ensure_key(const char *path, uint8_t key[CRYPTO_KEY_BYTES])
{
	int rc = crypto__load_key(path, key);
	if (rc != SCRM_E_NOT_FOUND)
		return rc;
	if (platform__random(key, CRYPTO_KEY_BYTES) != 0)
		return err__set(SCRM_E_CRYPTO, "random source failed");
	if ((rc = write_key_file(path, key)) != SCRM_OK)
		return rc;
	/* Another process may have raced us: whoever renamed last wins, and
	 * everyone must use that one. */
	return crypto__load_key(path, key);
}

struct crypto__sealer {
	mbedtls_gcm_context gcm;
};

int crypto__sealer_new(const uint8_t key[CRYPTO_KEY_BYTES], crypto__sealer **out)
{
	crypto__sealer *s = calloc(1, sizeof(*s));
	if (!s)
		return err__set(SCRM_E_NOMEM, "out of memory");
	mbedtls_gcm_init(&s->gcm);
	if (mbedtls_gcm_setkey(&s->gcm, MBEDTLS_CIPHER_ID_AES, key, 8 * CRYPTO_KEY_BYTES) != 0) {
		crypto__sealer_free(s);
		return err__set(SCRM_E_CRYPTO, "AES-256-GCM key setup failed");
	}
	*out = s;
	return SCRM_OK;
}

void crypto__sealer_free(crypto__sealer *s)
{
	if (!s)
		return;
	mbedtls_gcm_free(&s->gcm);
	free(s);
}

int crypto__seal(crypto__sealer *s, const void *aad, size_t aad_len, const void *pt, size_t n, uint8_t *out)
{
	/* Random 96-bit nonces: at 2^32 seals per key the collision chance
	 * stays under NIST's 2^-32 bound; a store seals a few million. */
	if (platform__random(out, 12) != 0)
		return err__set(SCRM_E_CRYPTO, "random source failed");
	if (mbedtls_gcm_crypt_and_tag(&s->gcm, MBEDTLS_GCM_ENCRYPT, n, out, 12, aad, aad_len, pt, out + 12, 16,
				      out + 12 + n) != 0)
		return err__set(SCRM_E_CRYPTO, "AES-256-GCM seal failed");
	return SCRM_OK;
}

int crypto__open(crypto__sealer *s, const void *aad, size_t aad_len, const uint8_t *in, size_t len, uint8_t *out)
{
	if (len < CRYPTO_SEAL_OVERHEAD)
		return err__set(SCRM_E_CRYPTO, "sealed data too short");
	size_t n = len - CRYPTO_SEAL_OVERHEAD;
	if (mbedtls_gcm_auth_decrypt(&s->gcm, n, in, 12, aad, aad_len, in + 12 + n, 16, in + 12, out) != 0)
		return err__set(SCRM_E_CRYPTO, "sealed data does not verify (wrong data key or tampered)");
	return SCRM_OK;
}

void crypto__hmac_sha256(const uint8_t *key, size_t key_len, const void *msg, size_t n, uint8_t out[32])
{
	mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), key, key_len, msg, n, out);
}

/* ECDSA P-256 verification, written out over mbedTLS's bignum and point
 * arithmetic so that both scalar multiplications use precomputed tables:
 * u1*G with the group's table (mbedTLS caches it in the group on first use)
 * and u2*Q with a second copy of the group whose generator is central's
 * key Q, so Q's table is cached as well. mbedtls_pk_verify instead copies
 * the group on every call and rebuilds both tables: a QR scan then costs
 * ~1.5 ms here; with both tables cached it is about three times cheaper.
 * Only public data is involved (no side-channel concern), and the result
 * is cross-checked against mbedtls_pk_verify in tests/unit/crypto_test.c. */
struct crypto__verifier {
	mbedtls_ecp_group grp;   /* P-256 */
	mbedtls_ecp_group grp_q; /* P-256 with G := Q, central's public key */
	int q_owned;             /* grp_q.G is ours (see crypto__verifier_load) */
};

int crypto__verifier_load(const char *pem_path, crypto__verifier **out)
{
	crypto__verifier *v = calloc(1, sizeof(*v));
	mbedtls_pk_context pk;
	int e, rc = SCRM_OK;
	if (!v)
		return err__set(SCRM_E_NOMEM, "out of memory");
	mbedtls_pk_init(&pk);
	mbedtls_ecp_group_init(&v->grp);
	mbedtls_ecp_group_init(&v->grp_q);
	{
		/* Whoever can replace this file can forge coupons, QR tokens and
		 * commands: read it only from a directory nobody else can write,
		 * owned by this user or root, not through a link. */
		char *pem = NULL, why[300];
		size_t len = 0;
		e = platform__read_trusted(pem_path, 64 * 1024, 0, &pem, &len, why, sizeof(why));
		if (e == -ENOENT) {
			rc = err__set(SCRM_E_NOT_FOUND, "%s: no central public key", pem_path);
			goto cleanup;
		}
		if (e != 0) {
			rc = err__set(SCRM_E_CONFIG, "%s: refused: %s", pem_path, e == -EPERM || e == -ELOOP || e == -ENOTDIR ? why : strerror(-e));
			goto cleanup;
		}
		/* mbedTLS wants the PEM's terminating NUL in the length. */
		e = mbedtls_pk_parse_public_key(&pk, (const unsigned char *)pem, len + 1);
		free(pem);
		if (e != 0) {
			rc = err__set(SCRM_E_CONFIG, "%s: not a PEM public key (mbedTLS -0x%04x)", pem_path, (unsigned)-e);
			goto cleanup;
		}
	}
	if (!mbedtls_pk_can_do(&pk, MBEDTLS_PK_ECDSA) || mbedtls_pk_ec(pk)->grp.id != MBEDTLS_ECP_DP_SECP256R1) {
		rc = err__set(SCRM_E_CONFIG, "%s: central key must be EC P-256", pem_path);
		goto cleanup;
	}
	if (mbedtls_ecp_group_load(&v->grp, MBEDTLS_ECP_DP_SECP256R1) != 0 ||
	    mbedtls_ecp_group_load(&v->grp_q, MBEDTLS_ECP_DP_SECP256R1) != 0 ||
	    mbedtls_ecp_check_pubkey(&v->grp, &mbedtls_pk_ec(pk)->Q) != 0) {
		rc = err__set(SCRM_E_CONFIG, "%s: central key is not a valid P-256 point", pem_path);
		goto cleanup;
	}
	/* A loaded group's G points into mbedTLS's read-only tables (never
	 * written, never freed): replace it by a point of our own, freed in
	 * crypto__verifier_free before the group. */
	mbedtls_ecp_point_init(&v->grp_q.G);
	v->q_owned = 1;
	if (mbedtls_ecp_copy(&v->grp_q.G, &mbedtls_pk_ec(pk)->Q) != 0) {
		rc = err__set(SCRM_E_CONFIG, "%s: central key is not a valid P-256 point", pem_path);
		goto cleanup;
	}
cleanup:
	mbedtls_pk_free(&pk);
	if (rc) {
		crypto__verifier_free(v);
		return rc;
	}
	*out = v;
	return SCRM_OK;
}

void crypto__verifier_free(crypto__verifier *v)
{
	if (!v)
		return;
	mbedtls_ecp_group_free(&v->grp);
	if (v->q_owned) {
		mbedtls_ecp_point_free(&v->grp_q.G);
		mbedtls_ecp_point_init(&v->grp_q.G);
	}
	mbedtls_ecp_group_free(&v->grp_q);
	free(v);
}

/* One DER INTEGER at *p (before end), positive and minimally encoded, of at
 * most 32 bytes of magnitude: read into x. 0, or -1 for anything else. */
static int der_uint(const uint8_t **p, const uint8_t *end, mbedtls_mpi *x)
{
	const uint8_t *q = *p;
	if (end - q < 2 || q[0] != MBEDTLS_ASN1_INTEGER || q[1] >= 0x80) /* short-form length only */
		return -1;
	size_t len = q[1];
	q += 2;
	if (len == 0 || len > 33 || (size_t)(end - q) < len)
		return -1;
	if (q[0] & 0x80) /* negative */
		return -1;
	/* a leading 0x00 only where the next byte's top bit needs it */
	if (q[0] == 0 && len > 1 && !(q[1] & 0x80))
		return -1;
	if (len == 33 && q[0] != 0)
		return -1;
	if (mbedtls_mpi_read_binary(x, q, len) != 0)
		return -1;
	*p = q + len;
	return 0;
}

/* The one spelling accepted (docs/protocol.md, "Signatures"): DER
 * SEQUENCE { INTEGER r, INTEGER s } with short-form lengths (a P-256
 * signature is at most 72 bytes), minimal positive INTEGERs, nothing after
 * it; 1 <= r < n and 1 <= s <= n/2 ("low s"). mbedTLS's reader accepts
 * long-form lengths, zero padding and negative INTEGERs, and ECDSA itself
 * accepts (r, n - s) for (r, s): each would give a second, different string
 * for the same signed text — a coupon or token anyone could re-spell. */
static int sig_parse(const crypto__verifier *v, const uint8_t *sig, size_t sig_len, mbedtls_mpi *r, mbedtls_mpi *s)
{
	const uint8_t *p = sig, *end = sig + sig_len;
	mbedtls_mpi half;
	int ok = 0;
	if (sig_len < 2 || sig[0] != (MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) || sig[1] >= 0x80 ||
	    (size_t)sig[1] != sig_len - 2)
		return -1;
	p += 2;
	if (der_uint(&p, end, r) != 0 || der_uint(&p, end, s) != 0 || p != end)
		return -1;
	mbedtls_mpi_init(&half);
	/* n is odd: s <= n/2 is s <= (n - 1) / 2 = n >> 1 */
	if (mbedtls_mpi_copy(&half, &v->grp.N) == 0 && mbedtls_mpi_shift_r(&half, 1) == 0 &&
	    mbedtls_mpi_cmp_int(r, 1) >= 0 && mbedtls_mpi_cmp_mpi(r, &v->grp.N) < 0 && mbedtls_mpi_cmp_int(s, 1) >= 0 &&
	    mbedtls_mpi_cmp_mpi(s, &half) <= 0)
		ok = 1;
	mbedtls_mpi_free(&half);
	return ok ? 0 : -1;
}

int crypto__verify(crypto__verifier *v, const void *msg, size_t n, const uint8_t *sig, size_t sig_len)
{
	uint8_t h[32];
	mbedtls_mpi r, s, e, sinv, u1, u2, x;
	mbedtls_ecp_point r1, r2, R;
	int ok = 0;

	if (!v)
		return err__set(SCRM_E_CRYPTO, "no central public key to verify with");
	if (mbedtls_sha256_ret(msg, n, h, 0) != 0)
		return err__set(SCRM_E_CRYPTO, "SHA-256 failed");
	mbedtls_mpi_init(&r);
	mbedtls_mpi_init(&s);
	mbedtls_mpi_init(&e);
	mbedtls_mpi_init(&sinv);
	mbedtls_mpi_init(&u1);
	mbedtls_mpi_init(&u2);
	mbedtls_mpi_init(&x);
	mbedtls_ecp_point_init(&r1);
	mbedtls_ecp_point_init(&r2);
	mbedtls_ecp_point_init(&R);
	if (sig_parse(v, sig, sig_len, &r, &s) != 0)
		goto cleanup;
	/* e = H (P-256: the hash is exactly as long as n); u1 = e/s, u2 = r/s */
	if (mbedtls_mpi_read_binary(&e, h, sizeof(h)) != 0 || mbedtls_mpi_inv_mod(&sinv, &s, &v->grp.N) != 0 ||
	    mbedtls_mpi_mul_mpi(&u1, &e, &sinv) != 0 || mbedtls_mpi_mod_mpi(&u1, &u1, &v->grp.N) != 0 ||
	    mbedtls_mpi_mul_mpi(&u2, &r, &sinv) != 0 || mbedtls_mpi_mod_mpi(&u2, &u2, &v->grp.N) != 0)
		goto cleanup;
	/* R = u1*G + u2*Q, each with its cached table; then one addition
	 * (muladd with factors 1 only copies and adds). A zero u1 (e = 0 mod n)
	 * is refused by ecp_mul: fails closed, probability 2^-256. */
	mbedtls_mpi one;
	mbedtls_mpi_init(&one);
	if (mbedtls_mpi_lset(&one, 1) == 0 && mbedtls_ecp_mul(&v->grp, &r1, &u1, &v->grp.G, NULL, NULL) == 0 &&
	    mbedtls_ecp_mul(&v->grp_q, &r2, &u2, &v->grp_q.G, NULL, NULL) == 0 &&
	    mbedtls_ecp_muladd(&v->grp, &R, &one, &r1, &one, &r2) == 0 && !mbedtls_ecp_is_zero(&R) &&
	    mbedtls_mpi_mod_mpi(&x, &R.X, &v->grp.N) == 0 && mbedtls_mpi_cmp_mpi(&x, &r) == 0)
		ok = 1;
	mbedtls_mpi_free(&one);
cleanup:
	mbedtls_mpi_free(&r);
	mbedtls_mpi_free(&s);
	mbedtls_mpi_free(&e);
	mbedtls_mpi_free(&sinv);
	mbedtls_mpi_free(&u1);
	mbedtls_mpi_free(&u2);
	mbedtls_mpi_free(&x);
	mbedtls_ecp_point_free(&r1);
	mbedtls_ecp_point_free(&r2);
	mbedtls_ecp_point_free(&R);
	return ok ? SCRM_OK : err__set(SCRM_E_CRYPTO, "signature does not verify");
}

int crypto__sig_low_s(uint8_t *der, size_t *len, size_t cap)
{
	unsigned char *p = der, buf[80], *w = buf + sizeof(buf);
	const unsigned char *end = der + *len;
	size_t l = 0, seq;
	mbedtls_mpi r, s, half;
	mbedtls_ecp_group grp;
	int e = 0, rc = SCRM_E_CRYPTO;
	mbedtls_mpi_init(&r);
	mbedtls_mpi_init(&s);
	mbedtls_mpi_init(&half);
	mbedtls_ecp_group_init(&grp);
	if (mbedtls_asn1_get_tag(&p, end, &seq, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) != 0 ||
	    mbedtls_asn1_get_mpi(&p, end, &r) != 0 || mbedtls_asn1_get_mpi(&p, end, &s) != 0 || p != end ||
	    mbedtls_ecp_group_load(&grp, MBEDTLS_ECP_DP_SECP256R1) != 0 || mbedtls_mpi_copy(&half, &grp.N) != 0 ||
	    mbedtls_mpi_shift_r(&half, 1) != 0)
		goto cleanup;
	if (mbedtls_mpi_cmp_mpi(&s, &half) > 0 && mbedtls_mpi_sub_mpi(&s, &grp.N, &s) != 0)
		goto cleanup;
	/* written backwards, as mbedTLS writes its own signatures */
	if ((e = mbedtls_asn1_write_mpi(&w, buf, &s)) < 0)
		goto cleanup;
	l += (size_t)e;
	if ((e = mbedtls_asn1_write_mpi(&w, buf, &r)) < 0)
		goto cleanup;
	l += (size_t)e;
	if ((e = mbedtls_asn1_write_len(&w, buf, l)) < 0)
		goto cleanup;
	l += (size_t)e;
	if ((e = mbedtls_asn1_write_tag(&w, buf, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE)) < 0)
		goto cleanup;
	l += (size_t)e;
	if (l > cap)
		goto cleanup;
	memcpy(der, w, l);
	*len = l;
	rc = SCRM_OK;
cleanup:
	mbedtls_mpi_free(&r);
	mbedtls_mpi_free(&s);
	mbedtls_mpi_free(&half);
	mbedtls_ecp_group_free(&grp);
	return rc == SCRM_OK ? rc : err__set(SCRM_E_CRYPTO, "not a P-256 ECDSA signature to normalise");
}

static int b64val(unsigned char c, int url)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == (url ? '-' : '+'))
		return 62;
	if (c == (url ? '_' : '/'))
		return 63;
	return -1;
}

long crypto__b64_decode(const char *in, size_t n, int url, uint8_t *out, size_t cap)
{
	size_t o = 0;
	uint32_t acc = 0;
	int bits = 0;
	if (!url) {
		/* Standard: length a multiple of 4, at most two '=' at the end. */
		if (n % 4)
			return -1;
		if (n && in[n - 1] == '=')
			n--;
		if (n && in[n - 1] == '=')
			n--;
	} else if (n % 4 == 1) {
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		int v = b64val((unsigned char)in[i], url);
		if (v < 0)
			return -1;
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (o >= cap)
				return -1;
			out[o++] = (uint8_t)(acc >> bits);
		}
	}
	/* Leftover bits must be zero (canonical encoding). */
	if (bits && (acc & ((1u << bits) - 1)))
		return -1;
	return (long)o;
}
