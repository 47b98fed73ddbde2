/* SPDX-License-Identifier: Apache-2.0 */
/*
 * crypto: the agent's own cryptography, on mbedTLS — personal data sealed at
 * rest (AES-256-GCM under the device data key), keyed phone hashes
 * (HMAC-SHA256 under the tenant key), and verification of what central signs
 * (ECDSA P-256: coupons, member QR tokens). Also the key files: the device
 * data key is created here on first use and never leaves the device.
 *
 * Key files hold 64 hex characters (32 bytes) and an optional newline, mode
 * 0600. The central key is a PEM public key.
 */
#ifndef SCRM_CRYPTO_H
#define SCRM_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#define CRYPTO_KEY_BYTES 32
#define CRYPTO_SEAL_OVERHEAD 28 /* 12-byte nonce + 16-byte tag */

/* Read a 32-byte hex key file. SCRM_OK, SCRM_E_NOT_FOUND (no file) or
 * SCRM_E_CONFIG (bad content), detail set. */
int crypto__load_key(const char *path, uint8_t key[CRYPTO_KEY_BYTES]);
/* Load the key, or create it (random, written atomically, 0600) if missing. */
int crypto__ensure_key(const char *path, uint8_t key[CRYPTO_KEY_BYTES]);

typedef struct crypto__sealer crypto__sealer;
/* AES-256-GCM with a fixed key. One thread at a time per sealer. */
int crypto__sealer_new(const uint8_t key[CRYPTO_KEY_BYTES], crypto__sealer **out);
void crypto__sealer_free(crypto__sealer *s);
/* out must hold n + CRYPTO_SEAL_OVERHEAD bytes: nonce | ciphertext | tag.
 * `aad` binds the ciphertext to its row (the member id). */
int crypto__seal(crypto__sealer *s, const void *aad, size_t aad_len, const void *pt, size_t n, uint8_t *out);
/* in = nonce | ciphertext | tag; out must hold len - CRYPTO_SEAL_OVERHEAD.
 * SCRM_E_CRYPTO if the tag does not verify (wrong key, tampered, swapped). */
int crypto__open(crypto__sealer *s, const void *aad, size_t aad_len, const uint8_t *in, size_t len, uint8_t *out);

void crypto__hmac_sha256(const uint8_t *key, size_t key_len, const void *msg, size_t n, uint8_t out[32]);

typedef struct crypto__verifier crypto__verifier;
/* Load central's PEM public key (must be EC P-256). */
int crypto__verifier_load(const char *pem_path, crypto__verifier **out);
void crypto__verifier_free(crypto__verifier *v);
/* SCRM_OK if `sig` (DER) is central's ECDSA signature of SHA-256(msg), else
 * SCRM_E_CRYPTO. One thread at a time per verifier (mbedTLS caches a
 * precomputed table in it on first use). */
int crypto__verify(crypto__verifier *v, const void *msg, size_t n, const uint8_t *sig, size_t sig_len);
/* Strict: only DER (short-form lengths, minimal positive INTEGERs, nothing
 * after the SEQUENCE) with 1 <= r < n and 1 <= s <= n/2 (docs/protocol.md,
 * "Signatures"); any other spelling is SCRM_E_CRYPTO even if ECDSA holds. */

/* A signer's side: rewrite the DER ECDSA P-256 signature der[0..*len) with
 * s replaced by n - s when s > n/2 (the same signature, "low s", the only
 * form crypto__verify accepts). cap: der's size. SCRM_OK or SCRM_E_CRYPTO. */
int crypto__sig_low_s(uint8_t *der, size_t *len, size_t cap);

/* Base64 decode (standard alphabet with padding, or base64url without when
 * url != 0). Returns decoded length or -1 if malformed or > cap. */
long crypto__b64_decode(const char *in, size_t n, int url, uint8_t *out, size_t cap);

#endif
