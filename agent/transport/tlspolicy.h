/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tlspolicy: the TLS floor of every client connection this process makes
 * through Paho — TLS 1.2 at least, OpenSSL security level 2 at least
 * (RSA/DH keys >= 2048 bits, no SHA-1 signatures), forward-secret AEAD
 * cipher suites only below TLS 1.3, and, when broker.crl_file is set, the
 * broker's certificate checked against that CRL (fail closed).
 *
 * Why here and not in Paho's options: Paho 1.3.12 builds its SSL_CTX with
 * TLS_client_method() and, with OpenSSL 3, never applies sslVersion; it has
 * no callback on the context and no CRL option (paho.mqtt.c #1118, #1671).
 * Every Paho TLS connection starts with SSL_new(ctx) on a context it has
 * just configured, and nothing Paho does afterwards touches the protocol
 * range, the security level, the cipher list or the verify parameters.
 * This module defines SSL_new: the executable's definition is the one the
 * dynamic linker binds Paho's call to, and it calls OpenSSL's own
 * (dlsym RTLD_NEXT) before applying the policy to the new SSL object.
 * Because a differently linked Paho (-Bsymbolic, static OpenSSL) would bypass
 * it silently, mqtt.c counts the applications and refuses a TLS session the
 * policy did not see (tlspolicy__applied).
 *
 * State is process-wide (one CRL file per process) and guarded by a mutex:
 * SSL_new runs on Paho's threads.
 */
#ifndef SCRM_TLSPOLICY_H
#define SCRM_TLSPOLICY_H

#include <stddef.h>

/* The cipher suites offered below TLS 1.3: ECDHE key exchange (forward
 * secrecy) with AES-GCM or ChaCha20-Poly1305. Every broker we support
 * (mosquitto, EMQX, HiveMQ, VerneMQ, AWS IoT, Azure Event Grid) offers them. */
#define TLSPOLICY_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"
#define TLSPOLICY_MIN_SECLEVEL 2

/* Set (or clear, with NULL) the CRL file (PEM, one or more CRLs) checked on
 * the next connections: copied; read again at every connection, so a CRL
 * replaced on disk counts from the next reconnect. Any thread. 0 or
 * SCRM_E_NOMEM. */
int tlspolicy__set_crl_file(const char *path);

/* How many SSL objects the policy has been applied to in this process
 * (monotonic). A TLS session established while this did not move was made
 * without the policy. Any thread. */
unsigned long tlspolicy__applied(void);

/* The reason the policy gave for the last refused handshake (a certificate
 * verification error with its depth, or the CRL file that could not be
 * read), copied into out and cleared; "" if none. *crl is set to 1 when the
 * reason concerns revocation (the certificate is revoked, or the CRL is
 * missing, expired or unreadable). Any thread. */
void tlspolicy__take_reason(char *out, size_t n, int *crl);

#endif
