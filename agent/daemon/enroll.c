/* SPDX-License-Identifier: Apache-2.0 */
/*
 * enroll: the device key, its CSR and the installation of the certificate
 * central's CA returns (see enroll.h). mbedTLS does the key generation, the
 * CSR and every certificate check; nothing here talks to the network.
 */
#include "enroll.h"
#include "enroll_files.h"

#include "err.h"
#include "ident.h"
#include "paths.h"
#include "platform.h"

#include <errno.h>
#include <fcntl.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/oid.h>
#include <mbedtls/pem.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/sha256.h>
#include <mbedtls/x509_crt.h>
#include <mbedtls/x509_csr.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PEM_MAX 16384     /* a P-256 key is ~230 bytes, an RSA-4096 one ~3.3 KB */
#define CERT_FILE_MAX (1 << 20)

/* ---- paths -------------------------------------------------------------- */

/* dst = src with a trailing ".key" replaced by `ext` (or `ext` appended). */
static int sibling(char *dst, size_t n, const char *src, const char *ext)
{
	size_t len = strlen(src);
	if (len > 4 && strcmp(src + len - 4, ".key") == 0)
		len -= 4;
	int w = snprintf(dst, n, "%.*s%s", (int)len, src, ext);
	return w > 0 && (size_t)w < n ? 0 : -1;
}

static int copy_path(char *dst, size_t n, const char *src, const char *what)
{
	if (snprintf(dst, n, "%s", src) >= (int)n)
		return err__set(SCRM_E_CONFIG, "%s: path too long", what);
	return SCRM_OK;
}

int enroll__paths(const config *cfg, const char *key_override, const char *csr_override, enroll_paths *out)
{
	int rc;
	memset(out, 0, sizeof(*out));
	if (key_override)
		rc = copy_path(out->key, sizeof(out->key), key_override, "--key");
	else if (cfg->key_file)
		rc = copy_path(out->key, sizeof(out->key), cfg->key_file, "broker.key_file");
	else if (cfg->keys_dir)
		rc = snprintf(out->key, sizeof(out->key), "%s/device.key", cfg->keys_dir) < (int)sizeof(out->key)
			     ? SCRM_OK : err__set(SCRM_E_CONFIG, "cache.keys_dir: path too long");
	else
		rc = snprintf(out->key, sizeof(out->key), "%s/%s/%s/device.key", cfg->store_dir, PATHS_PRIVATE_DIR,
			      PATHS_KEYS_DIR) < (int)sizeof(out->key)
			     ? SCRM_OK : err__set(SCRM_E_CONFIG, "store_dir: path too long");
	if (rc != SCRM_OK)
		return rc;
	if (csr_override)
		rc = copy_path(out->csr, sizeof(out->csr), csr_override, "--csr");
	else if (sibling(out->csr, sizeof(out->csr), out->key, ".csr") != 0)
		rc = err__set(SCRM_E_CONFIG, "%s: path too long", out->key);
	if (rc != SCRM_OK)
		return rc;
	if (cfg->cert_file)
		rc = copy_path(out->cert, sizeof(out->cert), cfg->cert_file, "broker.cert_file");
	else if (sibling(out->cert, sizeof(out->cert), out->key, ".crt") != 0)
		rc = err__set(SCRM_E_CONFIG, "%s: path too long", out->key);
	return rc;
}

/* The directory part of path ("." when it has none). */
/* ---- time (int64 ms, no time_t: 2038-safe on armhf) ------------------------ */

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant). */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	int64_t yoe = y - era * 400;
	int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static int64_t x509_ms(const mbedtls_x509_time *t)
{
	int64_t days = days_from_civil(t->year, t->mon, t->day);
	return ((days * 24 + t->hour) * 60 + t->min) * 60000 + (int64_t)t->sec * 1000;
}

static void x509_fmt(const mbedtls_x509_time *t, char *out, size_t n)
{
	snprintf(out, n, "%04d-%02d-%02dT%02d:%02d:%02dZ", t->year, t->mon, t->day, t->hour, t->min, t->sec);
}

static void ms_fmt(int64_t ms, char *out, size_t n)
{
	int64_t s = ms >= 0 ? ms / 1000 : (ms - 999) / 1000;
	int64_t z = (s >= 0 ? s : s - 86399) / 86400, sod = s - z * 86400;
	/* civil_from_days (H. Hinnant) */
	z += 719468;
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	int64_t doe = z - era * 146097;
	int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	int64_t mp = (5 * doy + 2) / 153;
	int64_t d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9;
	int64_t y = yoe + era * 400 + (m <= 2);
	snprintf(out, n, "%04lld-%02lld-%02lldT%02lld:%02lld:%02lldZ", (long long)y, (long long)m, (long long)d,
		 (long long)(sod / 3600), (long long)(sod / 60 % 60), (long long)(sod % 60));
}

/* ---- keys ----------------------------------------------------------------- */

static const char *mbed_msg(int rc, char *buf, size_t n)
{
	mbedtls_strerror(rc, buf, n);
	return buf;
}

/* DER SubjectPublicKeyInfo of pk: *der points into buf (mbedTLS writes
 * backwards from the end). Returns the length, or 0 on failure. */
static size_t pubkey_der(mbedtls_pk_context *pk, unsigned char *buf, size_t n, const unsigned char **der)
{
	int len = mbedtls_pk_write_pubkey_der(pk, buf, n);
	if (len <= 0)
		return 0;
	*der = buf + n - (size_t)len;
	return (size_t)len;
}

/* Hex SHA-256 of the public key's DER SubjectPublicKeyInfo: what
 * `openssl pkey -pubin -outform DER | sha256sum` prints for it. */
static int fingerprint(mbedtls_pk_context *pk, char hex[65])
{
	unsigned char buf[2048], h[32];
	const unsigned char *der = NULL;
	size_t len = pubkey_der(pk, buf, sizeof(buf), &der);
	if (len == 0 || mbedtls_sha256_ret(der, len, h, 0) != 0)
		return -1;
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", h[i]);
	return 0;
}

static void key_kind(mbedtls_pk_context *pk, char *out, size_t n)
{
	if (mbedtls_pk_get_type(pk) == MBEDTLS_PK_ECKEY) {
		const mbedtls_ecp_curve_info *c = mbedtls_ecp_curve_info_from_grp_id(mbedtls_pk_ec(*pk)->grp.id);
		if (mbedtls_pk_ec(*pk)->grp.id == MBEDTLS_ECP_DP_SECP256R1)
			snprintf(out, n, "EC P-256");
		else
			snprintf(out, n, "EC %s", c ? c->name : "(unknown curve)");
	} else {
		snprintf(out, n, "%s-%zu", mbedtls_pk_get_name(pk), mbedtls_pk_get_bitlen(pk));
	}
}

/* The device key `path` in w (checked by read_at; inside the store a key
 * must be 0600: see enroll_files__trusted()). */
static int load_key(const wdir *w, const char *path, int secret, mbedtls_pk_context *pk)
{
	char why[160], *buf = NULL;
	size_t len = 0;
	int rc = enroll_files__read(w, path, secret, &buf, &len);
	if (rc != SCRM_OK)
		return rc;
	/* PEM is parsed with its terminating NUL, DER without. */
	rc = mbedtls_pk_parse_key(pk, (const unsigned char *)buf, strstr(buf, "-----BEGIN") ? len + 1 : len, NULL, 0);
	mbedtls_platform_zeroize(buf, len);
	free(buf);
	if (rc != 0)
		return err__set(SCRM_E_CONFIG, "%s: not a private key (PEM or DER, unencrypted): %s", path,
				mbed_msg(rc, why, sizeof(why)));
	return SCRM_OK;
}

struct rng {
	mbedtls_entropy_context entropy;
	mbedtls_ctr_drbg_context drbg;
};

static int rng_init(struct rng *r, const char *who)
{
	mbedtls_entropy_init(&r->entropy);
	mbedtls_ctr_drbg_init(&r->drbg);
	/* The personalisation string only separates this DRBG instance from
	 * others; the OS entropy source carries the secrecy. */
	if (mbedtls_ctr_drbg_seed(&r->drbg, mbedtls_entropy_func, &r->entropy, (const unsigned char *)who,
				  strlen(who)) != 0)
		return err__set(SCRM_E_CRYPTO, "random source failed (mbedTLS entropy)");
	return SCRM_OK;
}

static void rng_free(struct rng *r)
{
	mbedtls_ctr_drbg_free(&r->drbg);
	mbedtls_entropy_free(&r->entropy);
}

/* A new EC P-256 key as PEM into pem (n bytes). */
static int generate_key(struct rng *r, mbedtls_pk_context *pk, unsigned char *pem, size_t n)
{
	char why[160];
	int rc = mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
	if (rc == 0)
		rc = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(*pk), mbedtls_ctr_drbg_random, &r->drbg);
	if (rc == 0)
		rc = mbedtls_pk_write_key_pem(pk, pem, n);
	if (rc != 0)
		return err__set(SCRM_E_CRYPTO, "EC P-256 key generation failed: %s", mbed_msg(rc, why, sizeof(why)));
	return SCRM_OK;
}

/* Keep the key being replaced: copy it to <key>.bak-<ms> (never over an
 * existing file). The name goes to bak. */
static int backup_key(const wdir *w, const char *key, char *bak, size_t n)
{
	char *old = NULL;
	size_t len = 0;
	int rc = enroll_files__read(w, key, 0, &old, &len), e;
	if (rc != SCRM_OK)
		return rc;
	if (snprintf(bak, n, "%s.bak-%lld", key, (long long)platform__wall_ms()) >= (int)n)
		rc = err__set(SCRM_E_IO, "%s: path too long", key);
	else if ((e = enroll_files__write(w, bak, old, len, 0600, 0)) != 0)
		rc = e == -EEXIST ? err__set(SCRM_E_IO, "%s: exists already; try again", bak) : SCRM_E_IO;
	mbedtls_platform_zeroize(old, len);
	free(old);
	return rc;
}

/* ---- step 1: key and CSR ------------------------------------------------------ */

int enroll__make_csr(const config *cfg, const enroll_paths *paths, int force, FILE *out)
{
	mbedtls_pk_context pk;
	mbedtls_x509write_csr req;
	struct rng r;
	unsigned char pem[PEM_MAX];
	char subject[256], fp[65], kind[48], why[160], bak[4300] = "";
	unsigned mode = 0600;
	int foreign_owner = 0;
	const char *status = "new";
	struct stat st;
	wdir wk = {.fd = -1}, wc = {.fd = -1};
	int rc, e;

	/* The ids go into the subject string below, and the CN becomes the
	 * broker-wide identity: config__load has checked them, but a config made
	 * another way must not turn a ',' into a DN attribute or a topic word
	 * ("down") into a device. */
	const struct {
		const char *key, *value;
	} ids[] = {{"tenant", cfg->tenant}, {"store_id", cfg->store_id}, {"device_id", cfg->device_id}};
	for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
		const char *bad = ids[i].value ? ident__problem(ids[i].value) : "required";
		if (bad)
			return err__set(SCRM_E_CONFIG, "%s: %s", ids[i].key, bad);
	}

	mbedtls_pk_init(&pk);
	mbedtls_x509write_csr_init(&req);
	if ((rc = rng_init(&r, "scrm-enroll")) != SCRM_OK)
		goto cleanup;
	if ((rc = enroll_files__open(cfg, paths->key, 0700, &wk)) < 0)
		goto cleanup;

	int exists = fstatat(wk.fd, enroll_files__base(paths->key), &st, AT_SYMLINK_NOFOLLOW) == 0;
	if (!exists && errno != ENOENT) {
		rc = err__set(SCRM_E_IO, "%s: %s", paths->key, strerror(errno));
		goto cleanup;
	}
	if (exists && !force) {
		/* Re-enrolment with the same key is normal (a renewed or re-issued
		 * certificate); replacing the key is a decision (--force). Only a
		 * key root or the agent's user made is reused (read_at): central
		 * would otherwise certify a key someone else knows. */
		rc = load_key(&wk, paths->key, wk.inside, &pk);
		if (rc == SCRM_E_CONFIG) {
			char detail[512];
			snprintf(detail, sizeof(detail), "%s", scrm_errmsg());
			rc = err__set(SCRM_E_CONFIG, "%s; it is left alone: move it away or use --force (it is then kept as %s.bak-<ms>)",
				      detail, paths->key);
			goto cleanup;
		}
		if (rc != SCRM_OK)
			goto cleanup;
		status = "existing";
		mode = (unsigned)(st.st_mode & 07777);
	} else {
		if ((rc = generate_key(&r, &pk, pem, sizeof(pem))) != SCRM_OK)
			goto cleanup;
		if (exists) {
			if ((rc = backup_key(&wk, paths->key, bak, sizeof(bak))) != SCRM_OK)
				goto cleanup;
			e = enroll_files__write(&wk, paths->key, pem, strlen((char *)pem), 0600, 1);
			status = "new, replacing the old one";
		} else {
			e = enroll_files__write(&wk, paths->key, pem, strlen((char *)pem), 0600, 0);
			if (e == -EEXIST) {
				/* Another enroll won the race: use its key, never replace it. */
				mbedtls_pk_free(&pk);
				mbedtls_pk_init(&pk);
				if ((rc = load_key(&wk, paths->key, wk.inside, &pk)) != SCRM_OK)
					goto cleanup;
				status = "existing";
				e = 0;
			}
		}
		mbedtls_platform_zeroize(pem, sizeof(pem));
		if (e != 0) {
			rc = SCRM_E_IO;
			goto cleanup;
		}
		foreign_owner = !wk.inside && geteuid() == 0;
	}

	snprintf(subject, sizeof(subject), "CN=%s,O=%s,OU=%s", cfg->device_id, cfg->tenant, cfg->store_id);
	mbedtls_x509write_csr_set_md_alg(&req, MBEDTLS_MD_SHA256);
	mbedtls_x509write_csr_set_key(&req, &pk);
	if ((e = mbedtls_x509write_csr_set_subject_name(&req, subject)) != 0 ||
	    (e = mbedtls_x509write_csr_pem(&req, pem, sizeof(pem), mbedtls_ctr_drbg_random, &r.drbg)) != 0) {
		rc = err__set(SCRM_E_CRYPTO, "%s: cannot make the CSR: %s", paths->csr, mbed_msg(e, why, sizeof(why)));
		goto cleanup;
	}
	if ((rc = enroll_files__open(cfg, paths->csr, 0755, &wc)) < 0)
		goto cleanup;
	if (enroll_files__write(&wc, paths->csr, pem, strlen((char *)pem), 0644, 1) != 0) {
		rc = SCRM_E_IO;
		goto cleanup;
	}
	if (fingerprint(&pk, fp) != 0) {
		rc = err__set(SCRM_E_CRYPTO, "%s: cannot encode the public key", paths->key);
		goto cleanup;
	}
	key_kind(&pk, kind, sizeof(kind));
	if (out) {
		if (mode & 077)
			fprintf(out, "warning: %s is open to other users (mode %04o): chmod 600 it\n", paths->key, mode);
		fprintf(out, "device key  %s (%s %s key, mode %04o)\n", paths->key, status, kind, mode);
		if (bak[0])
			fprintf(out, "old key     kept as %s\n", bak);
		fprintf(out, "CSR         %s\n", paths->csr);
		fprintf(out, "subject     CN=%s, O=%s, OU=%s\n", cfg->device_id, cfg->tenant, cfg->store_id);
		fprintf(out, "public key  SHA-256 %s\n", fp);
		if (foreign_owner)
			fprintf(out, "note: the key belongs to root (mode 0600) and lies outside store_dir: let the\n"
				     "      agent's user read it (e.g. its group + chmod 0640), or it cannot connect\n");
	}
	rc = SCRM_OK;
cleanup:
	enroll_files__close(&wk);
	enroll_files__close(&wc);
	mbedtls_x509write_csr_free(&req);
	mbedtls_pk_free(&pk);
	rng_free(&r);
	return rc;
}

/* ---- step 2: check and install the certificate ------------------------------ */

/* Value of the attribute `oid` in a distinguished name, and how many times
 * it occurs (the broker takes the first CN). */
static int dn_get(const mbedtls_x509_name *dn, const char *oid, size_t oid_len, char *out, size_t n, size_t *raw_len)
{
	int count = 0;
	for (; dn; dn = dn->next) {
		if (dn->oid.len != oid_len || memcmp(dn->oid.p, oid, oid_len) != 0)
			continue;
		if (count++ == 0) {
			snprintf(out, n, "%.*s", (int)dn->val.len, (const char *)dn->val.p);
			if (raw_len) /* differs from strlen(out) if it holds a NUL */
				*raw_len = dn->val.len;
		}
	}
	if (!count && n)
		out[0] = '\0';
	return count;
}

static int dn_is(const mbedtls_x509_name *dn, const char *oid, size_t oid_len, const char *want)
{
	for (; dn; dn = dn->next)
		if (dn->oid.len == oid_len && memcmp(dn->oid.p, oid, oid_len) == 0)
			return dn->val.len == strlen(want) && memcmp(dn->val.p, want, dn->val.len) == 0;
	return 1; /* absent: nothing to contradict */
}

/* mbedTLS judges validity with time(), a 32-bit time_t on armhf; replace its
 * verdict on every certificate of the chain with one on int64 ms. */
static int verify_cb(void *ctx, mbedtls_x509_crt *crt, int depth, uint32_t *flags)
{
	int64_t now = *(const int64_t *)ctx;
	(void)depth;
	*flags &= ~(uint32_t)(MBEDTLS_X509_BADCERT_EXPIRED | MBEDTLS_X509_BADCERT_FUTURE);
	if (x509_ms(&crt->valid_to) < now)
		*flags |= MBEDTLS_X509_BADCERT_EXPIRED;
	if (x509_ms(&crt->valid_from) > now)
		*flags |= MBEDTLS_X509_BADCERT_FUTURE;
	return 0;
}

/* Verify crt against the CA file; 0 if it chains, else why in `why`. */
static int verify_against(mbedtls_x509_crt *crt, const char *ca_path, int64_t now, char *why, size_t n)
{
	mbedtls_x509_crt ca;
	uint32_t flags = 0;
	char info[512], msg[160];
	int rc;

	mbedtls_x509_crt_init(&ca);
	rc = mbedtls_x509_crt_parse_file(&ca, ca_path);
	if (rc < 0) {
		snprintf(why, n, "cannot load it: %s", mbed_msg(rc, msg, sizeof(msg)));
		rc = -1;
	} else {
		rc = mbedtls_x509_crt_verify(crt, &ca, NULL, NULL, &flags, verify_cb, &now);
		if (rc != 0) {
			if (flags) {
				mbedtls_x509_crt_verify_info(info, sizeof(info), "", flags);
				for (char *c = info; *c; c++)
					if (*c == '\n')
						*c = (c[1] ? ';' : '\0');
				snprintf(why, n, "%s", info);
			} else {
				snprintf(why, n, "%s", mbed_msg(rc, msg, sizeof(msg)));
			}
			rc = -1;
		}
	}
	mbedtls_x509_crt_free(&ca);
	return rc;
}

/* The whole chain as PEM (whatever the input was: PEM, DER, or PEM with
 * text around it), malloc'd into *out. */
static int chain_pem(const mbedtls_x509_crt *crt, unsigned char **out, size_t *len)
{
	size_t cap = 0, used = 0;
	for (const mbedtls_x509_crt *c = crt; c && c->raw.len; c = c->next)
		cap += c->raw.len * 2 + 128;
	unsigned char *buf = malloc(cap + 1);
	if (!buf)
		return err__set(SCRM_E_NOMEM, "out of memory");
	for (const mbedtls_x509_crt *c = crt; c && c->raw.len; c = c->next) {
		size_t olen = 0;
		if (mbedtls_pem_write_buffer("-----BEGIN CERTIFICATE-----\n", "-----END CERTIFICATE-----\n", c->raw.p,
					     c->raw.len, buf + used, cap - used, &olen) != 0) {
			free(buf);
			return err__set(SCRM_E_INTERNAL, "PEM encoding failed");
		}
		used += olen - 1; /* olen counts the NUL */
	}
	*out = buf;
	*len = used;
	return SCRM_OK;
}

int enroll__install_cert(const config *cfg, const enroll_paths *paths, const char *cert_in, const char *ca_file,
			 int64_t now_ms, const char *config_path, FILE *out)
{
	mbedtls_x509_crt crt;
	mbedtls_pk_context key;
	unsigned char kbuf[2048], cbuf[2048], *pem = NULL;
	const unsigned char *kder = NULL, *cder = NULL;
	char *text = NULL, why[512], why2[512], msg[160], cn[128], from[80], to[80], now[160];
	char kfp[65] = "", cfp[65] = "", issuer[256], o[80], ou[80];
	const char *trusted_by = NULL;
	size_t len = 0, pem_len = 0, klen, clen;
	wdir wk = {.fd = -1}, wc = {.fd = -1};
	int rc, e;

	mbedtls_x509_crt_init(&crt);
	mbedtls_pk_init(&key);

	e = platform__read_file(cert_in, CERT_FILE_MAX, &text, &len);
	if (e != 0) {
		rc = err__set(e == -ENOENT ? SCRM_E_NOT_FOUND : SCRM_E_IO, "%s: cannot read: %s", cert_in,
			      e == -EFBIG ? "larger than 1 MiB" : strerror(-e));
		goto cleanup;
	}
	/* PEM must be parsed with its terminating NUL, DER without. */
	e = mbedtls_x509_crt_parse(&crt, (const unsigned char *)text,
				   memmem(text, len, "-----BEGIN", 10) ? len + 1 : len);
	if (e != 0) {
		if (e > 0)
			rc = err__set(SCRM_E_INVALID, "%s: %d of the certificates in the file cannot be parsed", cert_in, e);
		else
			rc = err__set(SCRM_E_INVALID, "%s: not an X.509 certificate (PEM or DER): %s", cert_in,
				      mbed_msg(e, msg, sizeof(msg)));
		goto cleanup;
	}
	if ((rc = enroll_files__open(cfg, paths->key, 0700, &wk)) < 0 || (rc = load_key(&wk, paths->key, wk.inside, &key)) != SCRM_OK)
		goto cleanup;

	/* 1. It certifies this device's key (else it was issued for another CSR). */
	klen = pubkey_der(&key, kbuf, sizeof(kbuf), &kder);
	clen = pubkey_der(&crt.pk, cbuf, sizeof(cbuf), &cder);
	fingerprint(&key, kfp);
	fingerprint(&crt.pk, cfp);
	if (!klen || !clen || klen != clen || memcmp(kder, cder, klen) != 0) {
		rc = err__set(SCRM_E_REFUSED, "%s: certifies another key (public key SHA-256 %.16s..., this device's key %s has %.16s...): it was issued for another CSR",
			      cert_in, cfp, paths->key, kfp);
		goto cleanup;
	}
	/* 2. Its CN is this device: the broker's ACL is keyed on it. */
	size_t cn_len = 0;
	int ncn = dn_get(&crt.subject, MBEDTLS_OID_AT_CN, MBEDTLS_OID_SIZE(MBEDTLS_OID_AT_CN), cn, sizeof(cn), &cn_len);
	if (ncn != 1 || cn_len != strlen(cfg->device_id) || strcmp(cn, cfg->device_id) != 0) {
		rc = err__set(SCRM_E_REFUSED, "%s: %s%s, but this device is %s (device_id): the broker takes the CN as the device's identity",
			      cert_in, ncn == 0 ? "has no subject CN" : ncn > 1 ? "has several subject CNs, the first CN=" : "is for CN=",
			      ncn == 0 ? "" : cn, cfg->device_id);
		goto cleanup;
	}
	/* 3. Valid now (int64 ms, not time_t). */
	x509_fmt(&crt.valid_from, from, sizeof(from));
	x509_fmt(&crt.valid_to, to, sizeof(to));
	ms_fmt(now_ms, now, sizeof(now));
	if (x509_ms(&crt.valid_to) < now_ms) {
		rc = err__set(SCRM_E_REFUSED, "%s: expired on %s (now %s)", cert_in, to, now);
		goto cleanup;
	}
	if (x509_ms(&crt.valid_from) > now_ms) {
		rc = err__set(SCRM_E_REFUSED, "%s: not valid before %s (now %s; is this device's clock right?)", cert_in, from, now);
		goto cleanup;
	}
	/* 4. Usable for TLS client authentication (OpenSSL on the broker checks
	 * both extensions when present). */
	if (mbedtls_x509_crt_check_extended_key_usage(&crt, MBEDTLS_OID_CLIENT_AUTH, MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH)) != 0) {
		rc = err__set(SCRM_E_REFUSED, "%s: its extended key usage does not allow TLS client authentication (clientAuth)", cert_in);
		goto cleanup;
	}
	if (mbedtls_x509_crt_check_key_usage(&crt, MBEDTLS_X509_KU_DIGITAL_SIGNATURE) != 0) {
		rc = err__set(SCRM_E_REFUSED, "%s: its key usage does not allow digital signatures (needed to authenticate in TLS)", cert_in);
		goto cleanup;
	}
	/* 5. Issued by a CA we trust: the one named with --ca, or the broker's. */
	why[0] = why2[0] = '\0';
	if (ca_file && verify_against(&crt, ca_file, now_ms, why, sizeof(why)) == 0)
		trusted_by = "--ca";
	else if (cfg->ca_file && verify_against(&crt, cfg->ca_file, now_ms, why2, sizeof(why2)) == 0)
		trusted_by = "broker.ca_file";
	if (!trusted_by) {
		if (!ca_file && !cfg->ca_file)
			rc = err__set(SCRM_E_REFUSED, "%s: no CA to check it against: pass --ca FILE (the CA that issues device certificates)", cert_in);
		else
			rc = err__set(SCRM_E_REFUSED, "%s: not issued by a trusted CA:%s%s%s%s%s%s%s%s", cert_in,
				      ca_file ? " against --ca " : "", ca_file ? ca_file : "", ca_file ? ": " : "",
				      ca_file ? why : "", cfg->ca_file ? (ca_file ? "; against broker.ca_file " : " against broker.ca_file ") : "",
				      cfg->ca_file ? cfg->ca_file : "", cfg->ca_file ? ": " : "", cfg->ca_file ? why2 : "");
		goto cleanup;
	}

	if ((rc = chain_pem(&crt, &pem, &pem_len)) != SCRM_OK || (rc = enroll_files__open(cfg, paths->cert, 0755, &wc)) < 0)
		goto cleanup;
	if (enroll_files__write(&wc, paths->cert, pem, pem_len, 0644, 1) != 0) {
		rc = SCRM_E_IO;
		goto cleanup;
	}
	if (out) {
		if (!dn_is(&crt.subject, MBEDTLS_OID_AT_ORGANIZATION, MBEDTLS_OID_SIZE(MBEDTLS_OID_AT_ORGANIZATION), cfg->tenant) ||
		    !dn_is(&crt.subject, MBEDTLS_OID_AT_ORG_UNIT, MBEDTLS_OID_SIZE(MBEDTLS_OID_AT_ORG_UNIT), cfg->store_id)) {
			dn_get(&crt.subject, MBEDTLS_OID_AT_ORGANIZATION, MBEDTLS_OID_SIZE(MBEDTLS_OID_AT_ORGANIZATION), o, sizeof(o), NULL);
			dn_get(&crt.subject, MBEDTLS_OID_AT_ORG_UNIT, MBEDTLS_OID_SIZE(MBEDTLS_OID_AT_ORG_UNIT), ou, sizeof(ou), NULL);
			fprintf(out, "warning: the certificate says O=%s, OU=%s; this device is tenant %s, store %s\n", o, ou,
				cfg->tenant, cfg->store_id);
		}
		if (mbedtls_x509_dn_gets(issuer, sizeof(issuer), &crt.issuer) < 0)
			snprintf(issuer, sizeof(issuer), "?");
		fprintf(out, "installed   %s\n", paths->cert);
		fprintf(out, "subject     CN=%s (public key SHA-256 %s)\n", cn, cfp);
		fprintf(out, "issuer      %s (verified against %s %s)\n", issuer, trusted_by,
			trusted_by[0] == '-' ? ca_file : cfg->ca_file);
		fprintf(out, "valid       %s to %s\n", from, to);
		int cert_ok = cfg->cert_file && strcmp(cfg->cert_file, paths->cert) == 0;
		int key_ok = cfg->key_file && strcmp(cfg->key_file, paths->key) == 0;
		if (cert_ok && key_ok) {
			fprintf(out, "The config already names these files; restart scrm-agent to connect with them.\n");
		} else {
			fprintf(out, "Set in %s, inside \"broker\", then restart scrm-agent:\n"
				     "  \"cert_file\": \"%s\",\n  \"key_file\": \"%s\"\n",
				config_path ? config_path : "the agent's config", paths->cert, paths->key);
		}
	}
	rc = SCRM_OK;
cleanup:
	enroll_files__close(&wk);
	enroll_files__close(&wc);
	free(pem);
	free(text);
	mbedtls_pk_free(&key);
	mbedtls_x509_crt_free(&crt);
	return rc;
}

/* ---- command line ------------------------------------------------------------ */

static void usage(FILE *f, const char *default_config)
{
	fprintf(f,
		"Usage: scrm-agent enroll [--config FILE] [--key FILE] [--csr FILE] [--force]\n"
		"       scrm-agent enroll --install-cert CERT.pem [--ca FILE] [--key FILE] [--config FILE]\n"
		"\n"
		"Provisions this device's TLS identity for mutual TLS with the broker.\n"
		"The first form makes the device key (EC P-256, mode 0600; an existing key is\n"
		"reused, never replaced unless --force) and a CSR with subject\n"
		"CN=<device_id>, O=<tenant>, OU=<store_id> for central's device CA. The second\n"
		"checks the certificate central returned (this device's key and CN, valid now,\n"
		"issued by --ca or broker.ca_file) and installs it at broker.cert_file.\n"
		"Run as root, what it creates under store_dir goes to the store directory's\n"
		"owner (the agent's user), so the agent can read its key. It never follows a\n"
		"symbolic link there, and refuses a directory or key that anyone but root or\n"
		"that user owns, or that others can write (a key: read).\n"
		"\n"
		"  --config FILE        agent config (default %s)\n"
		"  --key FILE           device key (default broker.key_file, else <keys dir>/device.key)\n"
		"  --csr FILE           where to write the CSR (default: the key's path, .csr)\n"
		"  --force              replace an existing key (the old one is kept as .bak-<ms>)\n"
		"  --install-cert FILE  check and install the signed certificate (PEM or DER)\n"
		"  --ca FILE            the CA that issues device certificates, if not broker.ca_file\n"
		"\n"
		"Exit status: 0 done, 1 failed (the reason names the file or key), 2 usage.\n",
		default_config);
}

int enroll__main(int argc, char **argv, const char *default_config)
{
	const char *config_path = default_config, *key = NULL, *csr = NULL, *cert_in = NULL, *ca = NULL;
	int force = 0, rc;
	config cfg;
	enroll_paths paths;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		int has = i + 1 < argc;
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout, default_config);
			return 0;
		} else if (strcmp(a, "--force") == 0) {
			force = 1;
		} else if (strcmp(a, "--config") == 0 && has) {
			config_path = argv[++i];
		} else if (strcmp(a, "--key") == 0 && has) {
			key = argv[++i];
		} else if (strcmp(a, "--csr") == 0 && has) {
			csr = argv[++i];
		} else if (strcmp(a, "--install-cert") == 0 && has) {
			cert_in = argv[++i];
		} else if (strcmp(a, "--ca") == 0 && has) {
			ca = argv[++i];
		} else {
			fprintf(stderr, "scrm-agent enroll: unknown or incomplete option '%s'\n", a);
			usage(stderr, default_config);
			return 2;
		}
	}
	if (cert_in && (csr || force)) {
		fprintf(stderr, "scrm-agent enroll: --install-cert does not take %s\n", csr ? "--csr" : "--force");
		return 2;
	}
	if (ca && !cert_in) {
		fprintf(stderr, "scrm-agent enroll: --ca goes with --install-cert\n");
		return 2;
	}
	if (config__load(config_path, &cfg) != SCRM_OK) {
		fprintf(stderr, "scrm-agent enroll: %s: %s\n", config_path, scrm_errmsg());
		return 1;
	}
	rc = enroll__paths(&cfg, key, csr, &paths);
	if (rc == SCRM_OK && !cert_in) {
		rc = enroll__make_csr(&cfg, &paths, force, stdout);
		if (rc == SCRM_OK)
			printf("\nNext: send the CSR to central's device CA. Central checks its subject, and\n"
			       "that its public key has the SHA-256 above:\n"
			       "  openssl req -in %s -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum\n"
			       "then returns a certificate; install it with:\n"
			       "  scrm-agent enroll --install-cert device.crt --config %s\n",
			       paths.csr, config_path);
	} else if (rc == SCRM_OK) {
		rc = enroll__install_cert(&cfg, &paths, cert_in, ca, platform__wall_ms(), config_path, stdout);
	}
	if (rc != SCRM_OK)
		fprintf(stderr, "scrm-agent enroll: %s\n", scrm_errmsg()[0] ? scrm_errmsg() : scrm_strerror(rc));
	config__free(&cfg);
	return rc == SCRM_OK ? 0 : 1;
}
