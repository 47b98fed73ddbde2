/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tlsprobe: explain a failed broker connection. Paho reports most failures
 * as "TCP/TLS connect failure" (its host name check, in particular, fails
 * silently), and OpenSSL's own error for an untrusted certificate is only
 * "certificate verify failed": the verify result stays inside Paho. After
 * such a failure the sync loop calls this once per streak: a TCP connect
 * and a TLS handshake with mbedTLS against the same CA and host name; a
 * rejected chain is verified again with OpenSSL, so the reason is in
 * OpenSSL's words ("unable to get local issuer certificate") as well as
 * mbedTLS's. Blocking, bounded by timeout_ms. cert_file and key_file (both
 * or neither) are the device's client certificate.
 */
#ifndef SCRM_TLSPROBE_H
#define SCRM_TLSPROBE_H

#include <stddef.h>

/* uri: ssl://host:port or tcp://host:port. Writes a one-line reason into
 * out (e.g. "TCP connect to 127.0.0.1:8883 failed (connection refused or
 * unreachable): ...", "server certificate of broker:8883 rejected: unable
 * to get local issuer certificate (OpenSSL, at depth 0; mbedTLS: The
 * certificate is not correctly signed by the trusted CA)").
 * Returns 0 if the probe itself succeeded end to end (then the failure lies
 * elsewhere, e.g. MQTT-level), 1 if it found a reason. */
int tlsprobe__diagnose(const char *uri, const char *ca_file, const char *cert_file, const char *key_file,
		       int timeout_ms, char *out, size_t n);

#endif
