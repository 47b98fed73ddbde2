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
 * mbedTLS's. Bounded by timeout_ms, and run in a thread (tlsprobe__start). cert_file and key_file (both
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
 * elsewhere, e.g. MQTT-level), 1 if it found a reason.
 * The connect and the handshake together take at most timeout_ms after the
 * name look-up (non-blocking connect: an address that drops SYNs cannot
 * hold it for the kernel's ~127 s); cancel_fd (-1 = none) readable ends it
 * at once. The name look-up itself is not bounded: call it off the daemon's
 * loop (tlsprobe__start). */
int tlsprobe__diagnose(const char *uri, const char *ca_file, const char *cert_file, const char *key_file,
		       int timeout_ms, int cancel_fd, char *out, size_t n);

/* The same diagnosis run in a thread, so the daemon's loop keeps feeding
 * the watchdog and obeying SIGTERM while it runs. Strings are copied.
 * 0 or -errno. */
typedef struct tlsprobe tlsprobe;
int tlsprobe__start(tlsprobe **out, const char *uri, const char *ca_file, const char *cert_file, const char *key_file,
		    int timeout_ms);
/* Readable once the diagnosis is done. */
int tlsprobe__fd(const tlsprobe *p);
/* After tlsprobe__fd is readable: the result as tlsprobe__diagnose's, and p
 * freed. */
int tlsprobe__finish(tlsprobe *p, char *out, size_t n);
/* Abandon a diagnosis still running: it is cancelled and p freed without
 * waiting for more than a moment (a thread stuck in a name look-up ends on
 * its own and frees what it holds). NULL: no-op. */
void tlsprobe__cancel(tlsprobe *p);

#endif
