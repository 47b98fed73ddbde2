/* SPDX-License-Identifier: Apache-2.0 */
/*
 * enroll: provisioning of the device's TLS identity (`scrm-agent enroll`).
 *
 * Step 1 makes the device key (EC P-256, generated here with mbedTLS, PEM,
 * mode 0600, never leaves the device and is never overwritten unless asked)
 * and a certificate signing request with subject
 * CN=<device_id>, O=<tenant>, OU=<store_id>. Central's CA signs it; the broker
 * takes the certificate's CN as the MQTT user name, so the CN is what the
 * per-device ACL is keyed on (docs/deploy/mosquitto/).
 * Step 2 (`--install-cert`) checks the certificate central returned — it
 * parses, carries this device's public key, names this device, is valid now
 * and chains to a trusted CA — and installs it atomically where
 * broker.cert_file says.
 *
 * Files are written temp → fsync → rename/link → fsync of the directory.
 * Times are int64 Unix milliseconds throughout (armhf has a 32-bit time_t).
 * Single-threaded: a command-line tool, not part of the daemon's loop.
 */
#ifndef SCRM_ENROLL_H
#define SCRM_ENROLL_H

#include "config.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* The files enrolment works on. */
typedef struct enroll_paths {
	char key[4096];  /* device private key (PEM, 0600) */
	char csr[4096];  /* certificate signing request (PEM, 0644) */
	char cert[4096]; /* installed device certificate (PEM, 0644) */
} enroll_paths;

/* Resolve the paths: the key is key_override, else broker.key_file, else
 * <cache.keys_dir or store_dir/private/keys>/device.key; the certificate is
 * broker.cert_file, else the key's path with .crt for .key; the CSR is
 * csr_override, else the key's path with .csr for .key. Overrides may be
 * NULL; all borrowed. SCRM_OK or SCRM_E_CONFIG (a path too long). */
int enroll__paths(const config *cfg, const char *key_override, const char *csr_override, enroll_paths *out);

/* Make (or, when it exists and !force, reuse) the device key at paths->key
 * and write the CSR to paths->csr. With force an existing key is first
 * copied to <key>.bak-<ms> and then replaced. Writes a short report (paths,
 * subject, public key SHA-256, next step) to `out` if not NULL.
 * SCRM_OK, or an error with the file and reason in scrm_errmsg(). */
int enroll__make_csr(const config *cfg, const enroll_paths *paths, int force, FILE *out);

/* Check the certificate file cert_in against the device key at paths->key
 * and install it at paths->cert. `ca_file` (may be NULL) is the CA that
 * issued device certificates; broker.ca_file is tried too. now_ms is the
 * wall clock (Unix ms) the validity period is checked against.
 * config_path (may be NULL) only names the file in the report. SCRM_OK, or
 * SCRM_E_REFUSED / SCRM_E_CONFIG / SCRM_E_IO with the reason in scrm_errmsg();
 * nothing is installed unless every check passed. */
int enroll__install_cert(const config *cfg, const enroll_paths *paths, const char *cert_in, const char *ca_file,
			 int64_t now_ms, const char *config_path, FILE *out);

/* `scrm-agent enroll ...`: argv[0] is "enroll". Returns the exit code: 0 done,
 * 1 failed (message on stderr), 2 usage error. */
int enroll__main(int argc, char **argv, const char *default_config);

#endif
