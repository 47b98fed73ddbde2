/* SPDX-License-Identifier: Apache-2.0 */
/*
 * enroll_test: agent/daemon/enroll.c — the device key (made once, 0600, replaced
 * only with force and then kept as a backup), the CSR (parses, this device's
 * subject, this key, a valid self-signature) and the checks before a
 * certificate is installed: another key, another CN, expired or not yet
 * valid, an unknown issuer and junk are refused and nothing is installed;
 * a good one is installed, also when it is issued by a CA other than the
 * broker's (--ca), and its validity is judged in int64 ms past 2038.
 * The test CA is the harness's (th_certs_make + th_sign_csr).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <scrm/scrm.h>

#include "config.h"
#include "enroll.h"
#include "harness.h"
#include "platform.h"
#include "testutil.h"

#include <dirent.h>
#include <mbedtls/md.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>
#include <mbedtls/x509_csr.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DAY_MS 86400000LL

struct fx {
	char *dir, *pki;
	config cfg;
	enroll_paths paths;
};

static void load_cfg(struct fx *f, config *cfg, const char *device, const char *store_dir)
{
	char text[2048];
	snprintf(text, sizeof(text),
		 "{\"tenant\":\"acme\",\"store_id\":\"s1\",\"device_id\":\"%s\",\"store_dir\":\"%s\","
		 "\"broker\":{\"uri\":\"mqtts://127.0.0.1:8883\",\"ca_file\":\"%s/ca.crt\"}}",
		 device, store_dir, f->pki);
	int rc = config__parse(text, strlen(text), cfg);
	if (rc != SCRM_OK)
		fail_msg("config: %s", scrm_errmsg());
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	f->dir = tu_tmpdir("enroll");
	f->pki = tu_join(f->dir, "pki");
	assert_int_equal(mkdir(f->pki, 0700), 0);
	assert_int_equal(th_certs_make(f->pki), 0);
	char *store = tu_join(f->dir, "store");
	load_cfg(f, &f->cfg, "pos-01", store);
	free(store);
	assert_int_equal(enroll__paths(&f->cfg, NULL, NULL, &f->paths), SCRM_OK);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	config__free(&f->cfg);
	tu_rmtree_free(f->dir, f->pki);
	free(f);
	return 0;
}

static char *slurp(const char *path, size_t *len)
{
	char *text = NULL;
	size_t n = 0;
	if (platform__read_file(path, 1 << 20, &text, &n) != 0)
		return NULL;
	if (len)
		*len = n;
	return text;
}

static int mode_of(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? (int)(st.st_mode & 0777) : -1;
}

/* DER SubjectPublicKeyInfo of pk into buf; returns its length. */
static size_t pub_der(mbedtls_pk_context *pk, unsigned char *buf, size_t n, const unsigned char **der)
{
	int len = mbedtls_pk_write_pubkey_der(pk, buf, n);
	assert_true(len > 0);
	*der = buf + n - (size_t)len;
	return (size_t)len;
}

static void assert_same_pubkey(mbedtls_pk_context *a, const char *key_path)
{
	mbedtls_pk_context key;
	unsigned char b1[1024], b2[1024];
	const unsigned char *d1, *d2;
	mbedtls_pk_init(&key);
	assert_int_equal(mbedtls_pk_parse_keyfile(&key, key_path, NULL), 0);
	size_t n1 = pub_der(a, b1, sizeof(b1), &d1), n2 = pub_der(&key, b2, sizeof(b2), &d2);
	assert_int_equal(n1, n2);
	assert_memory_equal(d1, d2, n1);
	mbedtls_pk_free(&key);
}

static const char *dn_value(const mbedtls_x509_name *dn, const char *oid, size_t oid_len, char *out, size_t n)
{
	for (; dn; dn = dn->next)
		if (dn->oid.len == oid_len && memcmp(dn->oid.p, oid, oid_len) == 0) {
			snprintf(out, n, "%.*s", (int)dn->val.len, (const char *)dn->val.p);
			return out;
		}
	return "";
}

/* Files in dir whose name starts with prefix; the first one's path to out. */
static int count_prefixed(const char *dir, const char *prefix, char *out, size_t n)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int count = 0;
	assert_non_null(d);
	while ((e = readdir(d)))
		if (strncmp(e->d_name, prefix, strlen(prefix)) == 0 && count++ == 0 && out)
			snprintf(out, n, "%s/%s", dir, e->d_name);
	closedir(d);
	return count;
}

/* Sign this fixture's CSR; the certificate goes to dir/<name>. */
static char *sign(struct fx *f, const char *csr, const char *ca, const char *name, int days)
{
	char *crt = tu_join(f->dir, name);
	assert_int_equal(th_sign_csr(f->pki, ca, csr, crt, days), 0);
	return crt;
}

/* ---- key and CSR ---------------------------------------------------------- */

static void csr_has_subject_and_key_0600(void **state)
{
	struct fx *f = *state;
	char *report = NULL, buf[128];
	size_t rlen = 0;
	FILE *out = open_memstream(&report, &rlen);
	assert_int_equal(enroll__make_csr(&f->cfg, &f->paths, 0, out), SCRM_OK);
	fclose(out);
	assert_non_null(strstr(f->paths.key, "/store/private/keys/device.key"));
	assert_non_null(strstr(f->paths.csr, "/store/private/keys/device.csr"));
	assert_non_null(strstr(f->paths.cert, "/store/private/keys/device.crt"));
	assert_int_equal(mode_of(f->paths.key), 0600);
	assert_int_equal(mode_of(f->paths.csr), 0644);

	mbedtls_x509_csr csr;
	mbedtls_x509_csr_init(&csr);
	assert_int_equal(mbedtls_x509_csr_parse_file(&csr, f->paths.csr), 0);
	assert_string_equal(dn_value(&csr.subject, MBEDTLS_OID_AT_CN, MBEDTLS_OID_SIZE(MBEDTLS_OID_AT_CN), buf, sizeof(buf)), "pos-01");
	assert_string_equal(dn_value(&csr.subject, MBEDTLS_OID_AT_ORGANIZATION, MBEDTLS_OID_SIZE(MBEDTLS_OID_AT_ORGANIZATION), buf, sizeof(buf)), "acme");
	assert_string_equal(dn_value(&csr.subject, MBEDTLS_OID_AT_ORG_UNIT, MBEDTLS_OID_SIZE(MBEDTLS_OID_AT_ORG_UNIT), buf, sizeof(buf)), "s1");
	assert_int_equal(mbedtls_pk_get_type(&csr.pk), MBEDTLS_PK_ECKEY);
	assert_int_equal(mbedtls_pk_ec(csr.pk)->grp.id, MBEDTLS_ECP_DP_SECP256R1);
	assert_same_pubkey(&csr.pk, f->paths.key);
	/* Self-signed with SHA-256 by that key (what a CA checks first). */
	unsigned char h[32];
	assert_int_equal(csr.sig_md, MBEDTLS_MD_SHA256);
	assert_int_equal(mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), csr.cri.p, csr.cri.len, h), 0);
	assert_int_equal(mbedtls_pk_verify(&csr.pk, MBEDTLS_MD_SHA256, h, sizeof(h), csr.sig.p, csr.sig.len), 0);
	mbedtls_x509_csr_free(&csr);

	/* The report names the CSR and the key's fingerprint. */
	assert_non_null(strstr(report, f->paths.csr));
	assert_non_null(strstr(report, "subject     CN=pos-01, O=acme, OU=s1"));
	assert_non_null(strstr(report, "public key  SHA-256 "));
	free(report);
}

/* The CSR's subject is made from the ids: one that is not an id (a topic
 * word, or a ',' that would add a DN attribute) is refused, naming the key,
 * before any key is made. */
static void csr_refuses_reserved_ids(void **state)
{
	struct fx *f = *state;
	char down[] = "down", up[] = "up", comma[] = "s1,CN=d2";
	char *saved = f->cfg.device_id;
	f->cfg.device_id = down;
	assert_int_equal(enroll__make_csr(&f->cfg, &f->paths, 0, NULL), SCRM_E_CONFIG);
	assert_errmsg_contains("device_id: \"down\" is reserved");
	f->cfg.device_id = saved;
	saved = f->cfg.tenant;
	f->cfg.tenant = up;
	assert_int_equal(enroll__make_csr(&f->cfg, &f->paths, 0, NULL), SCRM_E_CONFIG);
	assert_errmsg_contains("tenant: \"up\" is reserved");
	f->cfg.tenant = saved;
	saved = f->cfg.store_id;
	f->cfg.store_id = comma;
	assert_int_equal(enroll__make_csr(&f->cfg, &f->paths, 0, NULL), SCRM_E_CONFIG);
	assert_errmsg_contains("store_id: must be 1..64 of [A-Za-z0-9_.-]");
	f->cfg.store_id = saved;
	assert_int_equal(access(f->paths.key, F_OK), -1);
	assert_int_equal(access(f->paths.csr, F_OK), -1);
	assert_int_equal(enroll__make_csr(&f->cfg, &f->paths, 0, NULL), SCRM_OK);
}

static void key_kept_unless_forced(void **state)
{
	struct fx *f = *state;
	char bak[4600], keys_dir[4200];
	snprintf(keys_dir, sizeof(keys_dir), "%s/store/private/keys", f->dir);
	assert_int_equal(enroll__make_csr(&f->cfg, &f->paths, 0, NULL), SCRM_OK);
	char *first = slurp(f->paths.key, NULL);
	assert_non_null(first);

	/* Re-enrolment reuses the key and rewrites the CSR. */
	assert_int_equal(unlink(f->paths.csr), 0);
	assert_int_equal(enroll__make_csr(&f->cfg, &f->paths, 0, NULL), SCRM_OK);
	char *again = slurp(f->paths.key, NULL);
	assert_string_equal(first, again);
	assert_int_equal(mode_of(f->paths.csr), 0644);
	assert_int_equal(count_prefixed(keys_dir, "device.key.bak-", NULL, 0), 0);

	/* --force: a new key; the old one survives as the backup. */
	assert_int_equal(enroll__make_csr(&f->cfg, &f->paths, 1, NULL), SCRM_OK);
	char *forced = slurp(f->paths.key, NULL);
	assert_string_not_equal(first, forced);
	assert_int_equal(mode_of(f->paths.key), 0600);
	assert_int_equal(count_prefixed(keys_dir, "device.key.bak-", bak, sizeof(bak)), 1);
	char *backup = slurp(bak, NULL);
	assert_string_equal(first, backup);
	assert_int_equal(mode_of(bak), 0600);
	mbedtls_x509_csr csr;
	mbedtls_x509_csr_init(&csr);
	assert_int_equal(mbedtls_x509_csr_parse_file(&csr, f->paths.csr), 0);
	assert_same_pubkey(&csr.pk, f->paths.key);
	mbedtls_x509_csr_free(&csr);

	/* No temp files left behind. */
	assert_int_equal(count_prefixed(keys_dir, "device.key.tmp", NULL, 0), 0);
	assert_int_equal(count_prefixed(keys_dir, "device.csr.tmp", NULL, 0), 0);
	free(first);
	free(again);
	free(forced);
	free(backup);
}

static void unreadable_key_left_alone(void **state)
{
	struct fx *f = *state;
	char keys_dir[4200];
	snprintf(keys_dir, sizeof(keys_dir), "%s/store/private/keys", f->dir);
	assert_int_equal(platform__mkdirs(keys_dir, 0700), 0);
	assert_int_equal(th_write_file(f->paths.key, "not a key\n"), 0);
	assert_int_equal(chmod(f->paths.key, 0600), 0);
	assert_int_equal(enroll__make_csr(&f->cfg, &f->paths, 0, NULL), SCRM_E_CONFIG);
	assert_errmsg_contains(f->paths.key);
	assert_errmsg_contains("--force");
	char *text = slurp(f->paths.key, NULL);
	assert_string_equal(text, "not a key\n");
	free(text);
	assert_int_equal(access(f->paths.csr, F_OK), -1);
	assert_int_equal(enroll__make_csr(&f->cfg, &f->paths, 1, NULL), SCRM_OK);
	assert_int_equal(count_prefixed(keys_dir, "device.key.bak-", NULL, 0), 1);
}

/* Run by root (sudo, the usual installer), enroll hands what it writes in
 * the store — and the keys directory it made — to the store's owner (the
 * agent's user), or the agent could not read its own key. */
static void root_gives_store_files_to_store_owner(void **state)
{
	struct fx *f = *state;
	struct stat st;
	char store[4200], keys[4400];
	if (geteuid() != 0) {
		skip();
		return;
	}
	char priv[4300];
	snprintf(store, sizeof(store), "%s/store", f->dir);
	snprintf(priv, sizeof(priv), "%s/private", store);
	snprintf(keys, sizeof(keys), "%s/keys", priv);
	assert_int_equal(mkdir(store, 02770), 0);
	assert_int_equal(chown(store, 65534, 65534), 0);
	assert_int_equal(enroll__make_csr(&f->cfg, &f->paths, 0, NULL), SCRM_OK);
	const char *mine[] = {priv, keys, f->paths.key, f->paths.csr};
	for (size_t i = 0; i < 4; i++) {
		assert_int_equal(stat(mine[i], &st), 0);
		assert_int_equal(st.st_uid, 65534);
		assert_int_equal(st.st_gid, 65534);
	}
	assert_int_equal(mode_of(f->paths.key), 0600);
	char *crt = sign(f, f->paths.csr, "ca", "signed.crt", 30);
	assert_int_equal(enroll__install_cert(&f->cfg, &f->paths, crt, NULL, platform__wall_ms(), NULL, NULL), SCRM_OK);
	assert_int_equal(stat(f->paths.cert, &st), 0);
	assert_int_equal(st.st_uid, 65534);
	/* The input file, outside the store, is not touched. */
	assert_int_equal(stat(crt, &st), 0);
	assert_int_equal(st.st_uid, 0);
	free(crt);
}

/* ---- installing the certificate --------------------------------------------- */

static void install_good_certificate(void **state)
{
	struct fx *f = *state;
	char *report = NULL;
	size_t rlen = 0;
	assert_int_equal(enroll__make_csr(&f->cfg, &f->paths, 0, NULL), SCRM_OK);
	char *crt = sign(f, f->paths.csr, "ca", "signed.crt", 30);
	FILE *out = open_memstream(&report, &rlen);
	assert_int_equal(enroll__install_cert(&f->cfg, &f->paths, crt, NULL, platform__wall_ms(), "agent.json", out), SCRM_OK);
	fclose(out);
	assert_int_equal(mode_of(f->paths.cert), 0644);
	mbedtls_x509_crt a, b;
	mbedtls_x509_crt_init(&a);
	mbedtls_x509_crt_init(&b);
	assert_int_equal(mbedtls_x509_crt_parse_file(&a, crt), 0);
	assert_int_equal(mbedtls_x509_crt_parse_file(&b, f->paths.cert), 0);
	assert_int_equal(a.raw.len, b.raw.len);
	assert_memory_equal(a.raw.p, b.raw.p, a.raw.len);
	mbedtls_x509_crt_free(&a);
	mbedtls_x509_crt_free(&b);
	/* The config does not name the files yet: the report says what to set. */
	char want[4300];
	snprintf(want, sizeof(want), "\"cert_file\": \"%s\"", f->paths.cert);
	assert_non_null(strstr(report, want));
	snprintf(want, sizeof(want), "\"key_file\": \"%s\"", f->paths.key);
	assert_non_null(strstr(report, want));
	assert_non_null(strstr(report, "agent.json"));
	free(report);
	free(crt);
}

static void assert_not_installed(struct fx *f)
{
	assert_int_equal(access(f->paths.cert, F_OK), -1);
}

static void install_refuses_another_key(void **state)
{
	struct fx *f = *state;
	config other;
	enroll_paths op;
	char *store2 = tu_join(f->dir, "store2");
	assert_int_equal(enroll__make_csr(&f->cfg, &f->paths, 0, NULL), SCRM_OK);
	/* Same device id, another key (another machine's CSR). */
	load_cfg(f, &other, "pos-01", store2);
	assert_int_equal(enroll__paths(&other, NULL, NULL, &op), SCRM_OK);
	assert_int_equal(enroll__make_csr(&other, &op, 0, NULL), SCRM_OK);
	char *crt = sign(f, op.csr, "ca", "other-key.crt", 30);
	assert_int_equal(enroll__install_cert(&f->cfg, &f->paths, crt, NULL, platform__wall_ms(), NULL, NULL), SCRM_E_REFUSED);
	assert_errmsg_contains("certifies another key");
	assert_errmsg_contains(crt);
	assert_not_installed(f);
	config__free(&other);
	free(crt);
	free(store2);
}

static void install_refuses_another_cn(void **state)
{
	struct fx *f = *state;
	config other;
	enroll_paths op;
	char *csr2 = tu_join(f->dir, "pos-02.csr");
	assert_int_equal(enroll__make_csr(&f->cfg, &f->paths, 0, NULL), SCRM_OK);
	/* This device's key, but a CSR (and so a certificate) for pos-02. */
	load_cfg(f, &other, "pos-02", "/nonexistent");
	assert_int_equal(enroll__paths(&other, f->paths.key, csr2, &op), SCRM_OK);
	assert_int_equal(enroll__make_csr(&other, &op, 0, NULL), SCRM_OK);
	char *crt = sign(f, csr2, "ca", "pos-02.crt", 30);
	assert_int_equal(enroll__install_cert(&f->cfg, &f->paths, crt, NULL, platform__wall_ms(), NULL, NULL), SCRM_E_REFUSED);
	assert_errmsg_contains("CN=pos-02");
	assert_errmsg_contains("pos-01 (device_id)");
	assert_not_installed(f);
	config__free(&other);
	free(crt);
	free(csr2);
}

static void install_refuses_outside_validity(void **state)
{
	struct fx *f = *state;
	assert_int_equal(enroll__make_csr(&f->cfg, &f->paths, 0, NULL), SCRM_OK);
	char *expired = sign(f, f->paths.csr, "ca", "expired.crt", -1);
	assert_int_equal(enroll__install_cert(&f->cfg, &f->paths, expired, NULL, platform__wall_ms(), NULL, NULL), SCRM_E_REFUSED);
	assert_errmsg_contains("expired on");
	assert_not_installed(f);
	/* A good certificate, judged by a clock 3 days behind (not yet valid)
	 * and 40 days ahead (expired). */
	char *good = sign(f, f->paths.csr, "ca", "good.crt", 30);
	assert_int_equal(enroll__install_cert(&f->cfg, &f->paths, good, NULL, platform__wall_ms() - 3 * DAY_MS, NULL, NULL),
			 SCRM_E_REFUSED);
	assert_errmsg_contains("not valid before");
	assert_int_equal(enroll__install_cert(&f->cfg, &f->paths, good, NULL, platform__wall_ms() + 40 * DAY_MS, NULL, NULL),
			 SCRM_E_REFUSED);
	assert_errmsg_contains("expired on");
	assert_not_installed(f);
	free(expired);
	free(good);
}

/* Validity is int64 ms, not time_t: the harness's client certificate (valid
 * until 2049-12-31T23:59:59Z) is good in 2040 and expired in 2050, on armhf
 * (32-bit time_t) too. The CA's own validity goes through the same clock. */
static void validity_past_2038(void **state)
{
	struct fx *f = *state;
	enroll_paths p;
	char *crt = tu_join(f->pki, "client.crt");
	memset(&p, 0, sizeof(p));
	snprintf(p.key, sizeof(p.key), "%s/client.key", f->pki);
	snprintf(p.cert, sizeof(p.cert), "%s/installed.crt", f->dir);
	const int64_t y2040 = 2208988800000LL, y2050 = 2524608000000LL; /* 2040-01-01, 2050-01-01 UTC */
	assert_int_equal(enroll__install_cert(&f->cfg, &p, crt, NULL, y2050, NULL, NULL), SCRM_E_REFUSED);
	assert_errmsg_contains("expired on 2049-12-31T23:59:59Z (now 2050-01-01T00:00:00Z)");
	assert_int_equal(access(p.cert, F_OK), -1);
	assert_int_equal(enroll__install_cert(&f->cfg, &p, crt, NULL, y2040, NULL, NULL), SCRM_OK);
	assert_int_equal(access(p.cert, F_OK), 0);
	free(crt);
}

static void install_refuses_unknown_issuer_unless_ca_given(void **state)
{
	struct fx *f = *state;
	assert_int_equal(enroll__make_csr(&f->cfg, &f->paths, 0, NULL), SCRM_OK);
	char *crt = sign(f, f->paths.csr, "other-ca", "elsewhere.crt", 30);
	assert_int_equal(enroll__install_cert(&f->cfg, &f->paths, crt, NULL, platform__wall_ms(), NULL, NULL), SCRM_E_REFUSED);
	assert_errmsg_contains("not issued by a trusted CA");
	assert_errmsg_contains("broker.ca_file");
	assert_not_installed(f);
	/* Naming the wrong issuing CA does not help either... */
	char *ca = tu_join(f->pki, "ca.crt"), *other = tu_join(f->pki, "other-ca.crt");
	assert_int_equal(enroll__install_cert(&f->cfg, &f->paths, crt, ca, platform__wall_ms(), NULL, NULL), SCRM_E_REFUSED);
	assert_errmsg_contains("--ca");
	assert_not_installed(f);
	/* ...the right one does: device CA and broker CA may differ. */
	assert_int_equal(enroll__install_cert(&f->cfg, &f->paths, crt, other, platform__wall_ms(), NULL, NULL), SCRM_OK);
	assert_int_equal(access(f->paths.cert, F_OK), 0);
	free(ca);
	free(other);
	free(crt);
}

static void install_refuses_junk(void **state)
{
	struct fx *f = *state;
	char *junk = tu_join(f->dir, "junk.crt"), *missing = tu_join(f->dir, "missing.crt");
	assert_int_equal(enroll__make_csr(&f->cfg, &f->paths, 0, NULL), SCRM_OK);
	assert_int_equal(th_write_file(junk, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0);
	assert_int_equal(enroll__install_cert(&f->cfg, &f->paths, junk, NULL, platform__wall_ms(), NULL, NULL), SCRM_E_INVALID);
	assert_errmsg_contains(junk);
	assert_int_equal(enroll__install_cert(&f->cfg, &f->paths, missing, NULL, platform__wall_ms(), NULL, NULL), SCRM_E_NOT_FOUND);
	assert_errmsg_contains(missing);
	assert_not_installed(f);
	free(junk);
	free(missing);
}

int main(int argc, char **argv)
{
	tu_select(argc, argv);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(csr_has_subject_and_key_0600, setup, teardown),
		cmocka_unit_test_setup_teardown(csr_refuses_reserved_ids, setup, teardown),
		cmocka_unit_test_setup_teardown(key_kept_unless_forced, setup, teardown),
		cmocka_unit_test_setup_teardown(unreadable_key_left_alone, setup, teardown),
		cmocka_unit_test_setup_teardown(root_gives_store_files_to_store_owner, setup, teardown),
		cmocka_unit_test_setup_teardown(install_good_certificate, setup, teardown),
		cmocka_unit_test_setup_teardown(install_refuses_another_key, setup, teardown),
		cmocka_unit_test_setup_teardown(install_refuses_another_cn, setup, teardown),
		cmocka_unit_test_setup_teardown(install_refuses_outside_validity, setup, teardown),
		cmocka_unit_test_setup_teardown(validity_past_2038, setup, teardown),
		cmocka_unit_test_setup_teardown(install_refuses_unknown_issuer_unless_ca_given, setup, teardown),
		cmocka_unit_test_setup_teardown(install_refuses_junk, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
