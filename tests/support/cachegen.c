/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cachegen: the central system's side of the customer cache, as test data
 * (see cachegen.h for the contract). This file owns the deterministic key
 * material, the signatures over coupons and QR tokens, the synthetic store
 * (every record a pure function of the configuration and its index) and the
 * builder that turns the UCI retail sample into snapshot files.
 *
 * Nothing here reads the host clock, time zone or locale: times are int64
 * Unix milliseconds, money int64 pence, and numbers are formatted with
 * integer arithmetic or the C locale's "%.4f".
 */
#include "cachegen.h"
#include "testkit.h"
#include "retail_csv.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mbedtls/asn1.h>
#include <mbedtls/asn1write.h>
#include <mbedtls/base64.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/ecp.h>
#include <mbedtls/hmac_drbg.h>
#include <mbedtls/md.h>
#include <mbedtls/pk.h>
#include <mbedtls/sha256.h>

/* ---- small helpers ---------------------------------------------------- */

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static int fail(int rc, const char *fmt, ...)
{
	va_list ap;
	fputs("cachegen: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return rc;
}

static int key_char_ok(char ch)
{
	return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' ||
	       ch == '.' || ch == ':' || ch == '>' || ch == '-';
}

/* 1..64 bytes of [A-Za-z0-9_.:>-]: record keys, tenants, member ids. */
static int key_ok(const char *s)
{
	size_t n = 0;
	if (!s)
		return 0;
	for (; s[n]; n++)
		if (n >= 64 || !key_char_ok(s[n]))
			return 0;
	return n > 0;
}

/* SplitMix64: the mixing step behind every synthetic choice. */
static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static uint64_t hash3(uint64_t seed, uint64_t salt, uint64_t i)
{
	return mix64(mix64(seed ^ mix64(salt)) ^ i);
}

/* mkdir -p with mode for the directories it creates. */
static int mkdirs(const char *dir, mode_t mode)
{
	char path[4096];
	size_t n = strlen(dir);
	if (n == 0 || n >= sizeof(path))
		return -EINVAL;
	memcpy(path, dir, n + 1);
	for (size_t i = 1; i <= n; i++) {
		if (path[i] == '/' || path[i] == '\0') {
			char saved = path[i];
			path[i] = '\0';
			if (mkdir(path, mode) != 0 && errno != EEXIST)
				return fail(-errno, "%s: cannot create: %s", path, strerror(errno));
			path[i] = saved;
		}
	}
	struct stat sb;
	if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
		return fail(-ENOTDIR, "%s: not a directory", dir);
	return 0;
}

static void fsync_dir_of(const char *path)
{
	char dir[4096];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash == dir)
		slash[1] = '\0';
	else if (slash)
		*slash = '\0';
	else
		snprintf(dir, sizeof(dir), ".");
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
}

/* temp → fsync → rename → fsync the directory. */
static int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode)
{
	char tmp[4200];
	int fd, rc = 0;
	const char *p = data;
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return fail(-ENAMETOOLONG, "%s: path too long", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (fd < 0)
		return fail(-errno, "%s: cannot create: %s", tmp, strerror(errno));
	fchmod(fd, mode);
	while (len > 0) {
		ssize_t w = write(fd, p, len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			rc = fail(-errno, "%s: cannot write: %s", tmp, strerror(errno));
			break;
		}
		p += w;
		len -= (size_t)w;
	}
	if (!rc && fsync(fd) != 0)
		rc = fail(-errno, "%s: cannot sync: %s", tmp, strerror(errno));
	close(fd);
	if (!rc && rename(tmp, path) != 0)
		rc = fail(-errno, "%s: cannot rename: %s", path, strerror(errno));
	if (rc) {
		unlink(tmp);
		return rc;
	}
	fsync_dir_of(path);
	return 0;
}

static int read_file(const char *path, size_t max, char **out, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	size_t n = 0, cap = 4096;
	if (!f)
		return fail(-errno, "%s: cannot open: %s", path, strerror(errno));
	if (!(buf = malloc(cap))) {
		fclose(f);
		return -ENOMEM;
	}
	for (;;) {
		if (n + 1 >= cap) {
			char *nb;
			if (cap >= max) {
				free(buf);
				fclose(f);
				return fail(-EFBIG, "%s: larger than %zu bytes", path, max);
			}
			cap *= 2;
			if (!(nb = realloc(buf, cap))) {
				free(buf);
				fclose(f);
				return -ENOMEM;
			}
			buf = nb;
		}
		size_t r = fread(buf + n, 1, cap - n - 1, f);
		n += r;
		if (r == 0)
			break;
	}
	int err = ferror(f);
	fclose(f);
	if (err) {
		free(buf);
		return fail(-EIO, "%s: read error", path);
	}
	buf[n] = '\0';
	*out = buf;
	if (len)
		*len = n;
	return 0;
}

/* JSON text that may grow past a fixed buffer (retail records, signed
 * coupon records) is built in testkit's struct sbuf. */
static void sb_puts(struct sbuf *b, const char *s)
{
	sb_put(b, s, strlen(s));
}

/* A JSON string literal (quotes included); UTF-8 passes through. */
static void sb_jstr(struct sbuf *b, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	sb_put(b, "\"", 1);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		char esc[7];
		switch (*p) {
		case '"':
			sb_put(b, "\\\"", 2);
			break;
		case '\\':
			sb_put(b, "\\\\", 2);
			break;
		case '\n':
			sb_put(b, "\\n", 2);
			break;
		case '\r':
			sb_put(b, "\\r", 2);
			break;
		case '\t':
			sb_put(b, "\\t", 2);
			break;
		default:
			if (*p < 0x20) {
				esc[0] = '\\', esc[1] = 'u', esc[2] = '0', esc[3] = '0';
				esc[4] = hex[*p >> 4], esc[5] = hex[*p & 15];
				sb_put(b, esc, 6);
			} else {
				sb_put(b, (const char *)p, 1);
			}
		}
	}
	sb_put(b, "\"", 1);
}

/* ---- keys and signatures ---------------------------------------------- */

static int drbg_from_seed(mbedtls_hmac_drbg_context *drbg, const char *label, uint64_t seed)
{
	uint8_t buf[64];
	size_t n = strlen(label);
	if (n > sizeof(buf) - 8)
		n = sizeof(buf) - 8;
	memcpy(buf, label, n);
	for (int i = 0; i < 8; i++)
		buf[n + (size_t)i] = (uint8_t)(seed >> (8 * i));
	mbedtls_hmac_drbg_init(drbg);
	int e = mbedtls_hmac_drbg_seed_buf(drbg, mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), buf, n + 8);
	if (e)
		return fail(-EIO, "HMAC-DRBG seed failed (mbedTLS -0x%04x)", (unsigned)-e);
	return 0;
}

int cg_keys_create(const char *dir, uint64_t seed)
{
	mbedtls_hmac_drbg_context drbg;
	mbedtls_pk_context pk;
	unsigned char pem[1600], pub[800];
	uint8_t tk[32];
	char hex[66], path[4200];
	int rc, e;

	if (!dir || !*dir)
		return fail(-EINVAL, "keys: no directory");
	if ((rc = mkdirs(dir, 0700)))
		return rc;
	mbedtls_pk_init(&pk);
	if ((rc = drbg_from_seed(&drbg, "scrm-cachegen central key", seed)))
		goto cleanup;
	if ((e = mbedtls_pk_setup(&pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY))) ||
	    (e = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(pk), mbedtls_hmac_drbg_random, &drbg)) ||
	    (e = mbedtls_pk_write_key_pem(&pk, pem, sizeof(pem))) ||
	    (e = mbedtls_pk_write_pubkey_pem(&pk, pub, sizeof(pub)))) {
		rc = fail(-EIO, "keys: EC key generation failed (mbedTLS -0x%04x)", (unsigned)-e);
		goto cleanup;
	}
	if ((e = mbedtls_hmac_drbg_random(&drbg, tk, sizeof(tk)))) {
		rc = fail(-EIO, "keys: tenant key generation failed (mbedTLS -0x%04x)", (unsigned)-e);
		goto cleanup;
	}
	for (size_t i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", tk[i]);
	hex[64] = '\n';
	hex[65] = '\0';
	snprintf(path, sizeof(path), "%s/central.key", dir);
	if ((rc = write_file_atomic(path, pem, strlen((char *)pem), 0600)))
		goto cleanup;
	snprintf(path, sizeof(path), "%s/central.pub", dir);
	if ((rc = write_file_atomic(path, pub, strlen((char *)pub), 0644)))
		goto cleanup;
	snprintf(path, sizeof(path), "%s/tenant.key", dir);
	rc = write_file_atomic(path, hex, 65, 0600);
cleanup:
	mbedtls_platform_zeroize(tk, sizeof(tk));
	mbedtls_platform_zeroize(hex, sizeof(hex));
	mbedtls_platform_zeroize(pem, sizeof(pem));
	mbedtls_pk_free(&pk);
	mbedtls_hmac_drbg_free(&drbg);
	return rc;
}

struct cg_signer {
	mbedtls_pk_context pk;
	mbedtls_hmac_drbg_context drbg; /* blinding only: RFC 6979 fixes the nonce */
	char *pem;                      /* kept so cg_synth_write can open one per thread */
	size_t pem_len;
};

static int signer_from_pem(const char *pem, size_t pem_len, const char *what, cg_signer **out)
{
	cg_signer *s = calloc(1, sizeof(*s));
	int e, rc;
	if (!s)
		return -ENOMEM;
	mbedtls_pk_init(&s->pk);
	mbedtls_hmac_drbg_init(&s->drbg);
	if (!(s->pem = malloc(pem_len + 1))) {
		rc = -ENOMEM;
		goto fail;
	}
	memcpy(s->pem, pem, pem_len);
	s->pem[pem_len] = '\0';
	s->pem_len = pem_len;
	/* mbedtls_pk_parse_key wants the terminating NUL counted for PEM. */
	if ((e = mbedtls_pk_parse_key(&s->pk, (const unsigned char *)s->pem, pem_len + 1, NULL, 0))) {
		rc = fail(-EINVAL, "%s: not a PEM private key (mbedTLS -0x%04x)", what, (unsigned)-e);
		goto fail;
	}
	if (!mbedtls_pk_can_do(&s->pk, MBEDTLS_PK_ECKEY) || mbedtls_pk_ec(s->pk)->grp.id != MBEDTLS_ECP_DP_SECP256R1) {
		rc = fail(-EINVAL, "%s: central key must be EC P-256", what);
		goto fail;
	}
	mbedtls_hmac_drbg_free(&s->drbg);
	if ((rc = drbg_from_seed(&s->drbg, "scrm-cachegen blinding", 0)))
		goto fail;
	*out = s;
	return 0;
fail:
	cg_signer_close(s);
	return rc;
}

int cg_signer_open(const char *central_key_pem_path, cg_signer **out)
{
	char *pem = NULL;
	size_t n = 0;
	int rc;
	if (!central_key_pem_path || !out)
		return -EINVAL;
	*out = NULL;
	if ((rc = read_file(central_key_pem_path, 1 << 16, &pem, &n)))
		return rc;
	rc = signer_from_pem(pem, n, central_key_pem_path, out);
	mbedtls_platform_zeroize(pem, n);
	free(pem);
	return rc;
}

void cg_signer_close(cg_signer *s)
{
	if (!s)
		return;
	mbedtls_pk_free(&s->pk);
	mbedtls_hmac_drbg_free(&s->drbg);
	if (s->pem) {
		mbedtls_platform_zeroize(s->pem, s->pem_len);
		free(s->pem);
	}
	free(s);
}

/* Adds what an mbedtls_asn1_write_* call wrote to the length so far; -1 when
 * it failed (a negative mbedTLS code). */
static int der_wrote(int written, size_t *len)
{
	if (written < 0)
		return -1;
	*len += (size_t)written;
	return 0;
}

/* Central signs "low s" (docs/protocol.md, "Signatures"): when s > n/2 the
 * same signature is re-spelt with n - s, in DER, as the agent requires.
 * Written here rather than borrowed from agent/lib/core/crypto.c: this is the
 * reference central, it must not share the agent's code. */
static int low_s(cg_signer *s, unsigned char *sig, size_t *sig_len)
{
	unsigned char *p = sig, buf[MBEDTLS_ECDSA_MAX_LEN], *w = buf + sizeof(buf);
	const unsigned char *end = sig + *sig_len;
	const mbedtls_mpi *n = &mbedtls_pk_ec(s->pk)->grp.N;
	mbedtls_mpi r, sv, half;
	size_t seq, l = 0;
	int rc = -EIO;
	mbedtls_mpi_init(&r);
	mbedtls_mpi_init(&sv);
	mbedtls_mpi_init(&half);
	if (mbedtls_asn1_get_tag(&p, end, &seq, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) ||
	    mbedtls_asn1_get_mpi(&p, end, &r) || mbedtls_asn1_get_mpi(&p, end, &sv) || p != end ||
	    mbedtls_mpi_copy(&half, n) || mbedtls_mpi_shift_r(&half, 1))
		goto cleanup;
	if (mbedtls_mpi_cmp_mpi(&sv, &half) <= 0) {
		rc = 0; /* already low: the signature as mbedTLS wrote it */
		goto cleanup;
	}
	if (mbedtls_mpi_sub_mpi(&sv, n, &sv))
		goto cleanup;
	/* DER is written back to front: s, r, then the SEQUENCE's length and tag */
	if (der_wrote(mbedtls_asn1_write_mpi(&w, buf, &sv), &l) || der_wrote(mbedtls_asn1_write_mpi(&w, buf, &r), &l) ||
	    der_wrote(mbedtls_asn1_write_len(&w, buf, l), &l) ||
	    der_wrote(mbedtls_asn1_write_tag(&w, buf, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE), &l))
		goto cleanup;
	memcpy(sig, w, l);
	*sig_len = l;
	rc = 0;
cleanup:
	mbedtls_mpi_free(&r);
	mbedtls_mpi_free(&sv);
	mbedtls_mpi_free(&half);
	return rc ? fail(rc, "cannot re-spell the ECDSA signature with low s") : 0;
}

static int sign_der(cg_signer *s, const void *msg, size_t len, unsigned char *sig, size_t *sig_len)
{
	unsigned char h[32];
	int e;
	if ((e = mbedtls_sha256_ret(msg, len, h, 0)))
		return fail(-EIO, "SHA-256 failed (mbedTLS -0x%04x)", (unsigned)-e);
	if ((e = mbedtls_pk_sign(&s->pk, MBEDTLS_MD_SHA256, h, sizeof(h), sig, sig_len, mbedtls_hmac_drbg_random,
				 &s->drbg)))
		return fail(-EIO, "ECDSA signing failed (mbedTLS -0x%04x)", (unsigned)-e);
	return low_s(s, sig, sig_len);
}

static int b64_encode(const unsigned char *in, size_t n, int url, char **out)
{
	size_t cap = 4 * ((n + 2) / 3) + 1, olen = 0;
	char *b = malloc(cap);
	if (!b)
		return -ENOMEM;
	if (mbedtls_base64_encode((unsigned char *)b, cap, &olen, in, n)) {
		free(b);
		return fail(-EIO, "base64 encoding failed");
	}
	b[olen] = '\0';
	if (url) {
		for (size_t i = 0; i < olen; i++) {
			if (b[i] == '+')
				b[i] = '-';
			else if (b[i] == '/')
				b[i] = '_';
		}
		while (olen && b[olen - 1] == '=')
			b[--olen] = '\0';
	}
	*out = b;
	return 0;
}

/* Decode n characters of base64 (url: base64url without padding). Returns
 * the decoded length or -EBADMSG. */
static long b64_decode(const char *in, size_t n, int url, unsigned char *out, size_t cap)
{
	char tmp[1024];
	size_t m = 0, olen = 0;
	if (n + 4 >= sizeof(tmp))
		return -EBADMSG;
	for (size_t i = 0; i < n; i++) {
		char ch = in[i];
		if (url) {
			if (ch == '+' || ch == '/' || ch == '=')
				return -EBADMSG;
			ch = ch == '-' ? '+' : ch == '_' ? '/' : ch;
		}
		tmp[m++] = ch;
	}
	if (url) {
		if (m % 4 == 1)
			return -EBADMSG;
		while (m % 4)
			tmp[m++] = '=';
	}
	if (mbedtls_base64_decode(out, cap, &olen, (const unsigned char *)tmp, m))
		return -EBADMSG;
	return (long)olen;
}

int cg_sign_b64(cg_signer *s, const void *msg, size_t len, char **b64_out)
{
	unsigned char sig[MBEDTLS_ECDSA_MAX_LEN];
	size_t sig_len = 0;
	int rc;
	if (!s || (!msg && len) || !b64_out)
		return -EINVAL;
	if ((rc = sign_der(s, msg, len, sig, &sig_len)))
		return rc;
	return b64_encode(sig, sig_len, 0, b64_out);
}

static int verify_der(const char *pub_path, const void *msg, size_t len, const unsigned char *sig, size_t sig_len)
{
	mbedtls_pk_context pk;
	unsigned char h[32];
	int e, rc = 0;
	mbedtls_pk_init(&pk);
	if ((e = mbedtls_pk_parse_public_keyfile(&pk, pub_path))) {
		rc = fail(e == MBEDTLS_ERR_PK_FILE_IO_ERROR ? -EIO : -EINVAL, "%s: not a PEM public key (mbedTLS -0x%04x)",
			  pub_path, (unsigned)-e);
		goto cleanup;
	}
	if ((e = mbedtls_sha256_ret(msg, len, h, 0))) {
		rc = -EIO;
		goto cleanup;
	}
	if (mbedtls_pk_verify(&pk, MBEDTLS_MD_SHA256, h, sizeof(h), sig, sig_len) != 0)
		rc = -EBADMSG;
cleanup:
	mbedtls_pk_free(&pk);
	return rc;
}

int cg_verify_b64(const char *central_pub_path, const void *msg, size_t len, const char *sig_b64)
{
	unsigned char sig[MBEDTLS_ECDSA_MAX_LEN + 8];
	long n;
	if (!central_pub_path || (!msg && len) || !sig_b64)
		return -EINVAL;
	if ((n = b64_decode(sig_b64, strlen(sig_b64), 0, sig, sizeof(sig))) <= 0)
		return -EBADMSG;
	return verify_der(central_pub_path, msg, len, sig, (size_t)n);
}

int cg_qr_mint(cg_signer *s, const char *tenant, const char *member_id, int64_t iat_ms, int64_t exp_ms,
	       char **token_out)
{
	char payload[256];
	unsigned char sig[MBEDTLS_ECDSA_MAX_LEN];
	size_t sig_len = 0;
	char *p64 = NULL, *s64 = NULL;
	int rc;
	if (!s || !token_out)
		return -EINVAL;
	if (!key_ok(tenant))
		return fail(-EINVAL, "qr: tenant must be 1..64 bytes of [A-Za-z0-9_.:>-]");
	if (!key_ok(member_id))
		return fail(-EINVAL, "qr: member id must be 1..64 bytes of [A-Za-z0-9_.:>-]");
	int n = snprintf(payload, sizeof(payload), "{\"t\":\"%s\",\"m\":\"%s\",\"iat\":%" PRId64 ",\"exp\":%" PRId64 "}",
			 tenant, member_id, iat_ms, exp_ms);
	if (n < 0 || (size_t)n >= sizeof(payload))
		return -EINVAL;
	if ((rc = sign_der(s, payload, (size_t)n, sig, &sig_len)) || (rc = b64_encode((unsigned char *)payload, (size_t)n, 1, &p64)) ||
	    (rc = b64_encode(sig, sig_len, 1, &s64)))
		goto cleanup;
	size_t tl = 6 + strlen(p64) + 1 + strlen(s64) + 1;
	char *tok = malloc(tl);
	if (!tok) {
		rc = -ENOMEM;
		goto cleanup;
	}
	snprintf(tok, tl, "SCRM1.%s.%s", p64, s64);
	*token_out = tok;
cleanup:
	free(p64);
	free(s64);
	return rc;
}

int cg_qr_verify(const char *central_pub_path, const char *token, char **payload_out)
{
	unsigned char payload[600], sig[MBEDTLS_ECDSA_MAX_LEN + 8];
	const char *p, *dot;
	long pn, sn;
	cJSON *root = NULL;
	int rc;
	if (!central_pub_path || !token)
		return -EINVAL;
	if (strlen(token) > 512 || strncmp(token, "SCRM1.", 6) != 0)
		return -EBADMSG;
	p = token + 6;
	if (!(dot = strchr(p, '.')) || strchr(dot + 1, '.'))
		return -EBADMSG;
	if ((pn = b64_decode(p, (size_t)(dot - p), 1, payload, sizeof(payload) - 1)) <= 0 ||
	    (sn = b64_decode(dot + 1, strlen(dot + 1), 1, sig, sizeof(sig))) <= 0)
		return -EBADMSG;
	payload[pn] = '\0';
	if ((rc = verify_der(central_pub_path, payload, (size_t)pn, sig, (size_t)sn)))
		return rc;
	root = cJSON_ParseWithLength((const char *)payload, (size_t)pn);
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "t"), *m = cJSON_GetObjectItemCaseSensitive(root, "m");
	if (!cJSON_IsObject(root) || !cJSON_IsString(t) || !cJSON_IsString(m) ||
	    !cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(root, "iat")) ||
	    !cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(root, "exp"))) {
		cJSON_Delete(root);
		return -EBADMSG;
	}
	cJSON_Delete(root);
	if (payload_out) {
		if (!(*payload_out = malloc((size_t)pn + 1)))
			return -ENOMEM;
		memcpy(*payload_out, payload, (size_t)pn + 1);
	}
	return 0;
}

int cg_signed_coupon_record(cg_signer *s, const char *payload_json, char **record_out)
{
	cJSON *root;
	const cJSON *type, *id;
	char key[160], *sig = NULL;
	struct sbuf b = {0};
	int rc;
	if (!s || !payload_json || !record_out)
		return -EINVAL;
	root = cJSON_Parse(payload_json);
	type = cJSON_GetObjectItemCaseSensitive(root, "type");
	id = cJSON_GetObjectItemCaseSensitive(root, "id");
	if (!cJSON_IsObject(root) || !cJSON_IsString(type) || !cJSON_IsString(id) ||
	    (strcmp(type->valuestring, "coupon") != 0 && strcmp(type->valuestring, "campaign") != 0) ||
	    strlen(id->valuestring) > 48) {
		cJSON_Delete(root);
		return fail(-EINVAL, "coupon: payload must be a JSON object with type coupon|campaign and an id of at most 48 bytes");
	}
	snprintf(key, sizeof(key), "%s:%s", type->valuestring, id->valuestring);
	cJSON_Delete(root);
	if (!key_ok(key))
		return fail(-EINVAL, "coupon: key \"%s\" is not 1..64 bytes of [A-Za-z0-9_.:>-]", key);
	if ((rc = cg_sign_b64(s, payload_json, strlen(payload_json), &sig)))
		return rc;
	sb_puts(&b, "{\"key\":\"");
	sb_puts(&b, key);
	sb_puts(&b, "\",\"signed\":");
	sb_jstr(&b, payload_json);
	sb_puts(&b, ",\"sig\":\"");
	sb_puts(&b, sig);
	sb_puts(&b, "\"}");
	free(sig);
	if (b.oom) {
		free(b.p);
		return -ENOMEM;
	}
	*record_out = b.p;
	return 0;
}

int cg_tenant_key_load(const char *dir, uint8_t key[32])
{
	char path[4200], *text = NULL;
	size_t n = 0;
	int rc;
	if (!dir || !key)
		return -EINVAL;
	snprintf(path, sizeof(path), "%s/tenant.key", dir);
	if ((rc = read_file(path, 4096, &text, &n)))
		return rc;
	while (n && (text[n - 1] == '\n' || text[n - 1] == '\r' || text[n - 1] == ' '))
		n--;
	rc = n == 64 ? 0 : fail(-EINVAL, "%s: must hold 64 hex characters, has %zu", path, n);
	for (size_t i = 0; !rc && i < 64; i++) {
		char ch = text[i];
		int v = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
						       : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
		if (v < 0)
			rc = fail(-EINVAL, "%s: not a hex key (character %zu)", path, i + 1);
		else if (i % 2 == 0)
			key[i / 2] = (uint8_t)(v << 4);
		else
			key[i / 2] = (uint8_t)(key[i / 2] | v);
	}
	mbedtls_platform_zeroize(text, n);
	free(text);
	return rc;
}

void cg_phone_hash_hex(const uint8_t key[32], const char *phone, char hex[65])
{
	unsigned char h[32];
	mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), key, 32, (const unsigned char *)phone,
			strlen(phone), h);
	for (size_t i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", h[i]);
	hex[64] = '\0';
}

/* ---- streams ------------------------------------------------------------ */

static const char *const stream_names[CG_N_STREAMS] = {"members", "coupons",  "catalogue", "inventory",
						       "scripts", "recos", "rules"};

const char *cg_stream_name(cg_stream st)
{
	return (unsigned)st < CG_N_STREAMS ? stream_names[st] : NULL;
}

/* ---- snapshot files --------------------------------------------------- */

/* One output file being written: <final>.tmp until out_close renames it. */
typedef struct out_file {
	FILE *f;
	char tmp[4200], final[4200];
} out_file;

static int out_open(out_file *o, const char *outdir, const char *name)
{
	memset(o, 0, sizeof(*o));
	if (snprintf(o->final, sizeof(o->final), "%s/%s", outdir, name) >= (int)sizeof(o->final) ||
	    snprintf(o->tmp, sizeof(o->tmp), "%s.tmp", o->final) >= (int)sizeof(o->tmp))
		return fail(-ENAMETOOLONG, "%s: path too long", outdir);
	if (!(o->f = fopen(o->tmp, "w")))
		return fail(-errno, "%s: cannot create: %s", o->tmp, strerror(errno));
	setvbuf(o->f, NULL, _IOFBF, 1 << 20);
	return 0;
}

static int out_open_stream(out_file *o, const char *outdir, cg_stream st, int64_t version)
{
	char name[64];
	int rc;
	snprintf(name, sizeof(name), "%s.jsonl", cg_stream_name(st));
	if ((rc = out_open(o, outdir, name)))
		return rc;
	fprintf(o->f, "{\"v\":1,\"type\":\"snapshot_file\",\"stream\":\"%s\",\"version\":%" PRId64 "}\n",
		cg_stream_name(st), version);
	return 0;
}

/* Finish (ok != 0: flush, sync, rename) or abandon (remove the temp file). */
static int out_close(out_file *o, int ok)
{
	int rc = 0;
	if (!o->f)
		return 0;
	if (ok && (fflush(o->f) != 0 || ferror(o->f) || fsync(fileno(o->f)) != 0))
		rc = fail(-EIO, "%s: cannot write: %s", o->tmp, strerror(errno));
	if (fclose(o->f) != 0 && ok && !rc)
		rc = fail(-EIO, "%s: cannot write: %s", o->tmp, strerror(errno));
	o->f = NULL;
	if (ok && !rc && rename(o->tmp, o->final) != 0)
		rc = fail(-errno, "%s: cannot rename: %s", o->final, strerror(errno));
	if (!ok || rc)
		unlink(o->tmp);
	else
		fsync_dir_of(o->final);
	return rc;
}

/* ---- synthetic store -------------------------------------------------- */

#define MAX_SAFE_INT INT64_C(9007199254740992)
#define DAY_MS INT64_C(86400000)
#define SYNTH_SCRIPTS 7

enum { SALT_MEMBER = 1, SALT_PHONE, SALT_SKU, SALT_STOCK, SALT_RULE, SALT_RECO, SALT_COUPON, SALT_CAMPAIGN };

static const char *const first_names[32] = {
	"Ann",    "Ben",   "Chloe", "David", "Emma",  "Finn",   "Grace",  "Harry", "Isla",  "Jack",  "Kate",
	"Liam",   "Maya",  "Noah",  "Olive", "Peter", "Quinn",  "Rosa",   "Sam",   "Tara",  "Umar",  "Vera",
	"Will",   "Xena",  "Yusuf", "Zoe",   "Amir",  "Bella",  "Carlos", "Dina",  "Elif",  "Femi"};
static const char *const last_names[32] = {
	"Smith",  "Jones", "Taylor", "Brown",  "Williams", "Wilson", "Johnson", "Davies", "Patel",  "Robinson", "Wright",
	"Thompson", "Evans", "Walker", "White", "Roberts", "Green",  "Hall",    "Wood",   "Jackson", "Clarke",  "Khan",
	"Hughes", "Lewis", "Moore",  "Hill",   "Cooper",   "Ward",   "Morris",  "King",   "Baker",  "Murphy"};
static const char *const categories[10] = {"kitchen", "home",  "christmas", "garden", "stationery",
					   "toys",    "bags",  "lighting",  "gifts",  "party"};
static const char *const adjectives[16] = {"WHITE",  "RED",    "VINTAGE", "PINK",   "BLUE",  "RETRO",
					   "REGENCY", "GREEN", "JUMBO",   "SET OF 3", "LARGE", "SMALL",
					   "HEART", "SPOTTY", "FLORAL",  "ANTIQUE"};
static const char *const nouns_by_cat[10][4] = {
	{"CAKESTAND", "TEA CUP", "BAKING SET", "LUNCH BOX"},     {"CUSHION COVER", "DOORMAT", "CLOCK", "PHOTO FRAME"},
	{"BAUBLE", "STOCKING", "TREE DECORATION", "ADVENT CALENDAR"}, {"PLANT POT", "BIRD FEEDER", "WATERING CAN", "PARASOL"},
	{"NOTEBOOK", "PENCIL SET", "WRAPPING PAPER", "GREETING CARD"}, {"SPINNING TOP", "DOLLY", "JIGSAW", "SKITTLES"},
	{"JUMBO BAG", "SHOPPER", "CHARLOTTE BAG", "PURSE"},      {"T-LIGHT HOLDER", "LANTERN", "STRING LIGHTS", "LAMP"},
	{"GIFT BOX", "KEYRING", "TRINKET POT", "MIRROR"},         {"BUNTING", "PARTY CUPS", "PAPER PLATES", "BALLOONS"}};
static const char *const stage_names[5] = {"new", "active", "sleeping", "churn_risk", "lost"};
static const char *const tier_names[4] = {"bronze", "silver", "gold", "platinum"};
static const char *const extra_tags[4] = {"gift-buyer", "online-first", "newsletter", "family"};
static const char *const channels[4] = {"email", "sms", "app", "none"};
static const char code_alphabet[] = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

void cg_synth_init(cg_synth *s)
{
	if (s)
		*s = (cg_synth){.n_members = 500000,
				.n_skus = 20000,
				.n_rules = 200000,
				.n_campaigns = 50,
				.coupon_every = 100,
				.seed = 1,
				.now_ms = 1733050000000LL,
				.version = 1,
				.tenant = "acme"};
}

int cg_synth_check(const cg_synth *s)
{
	if (!s)
		return fail(-EINVAL, "synth: no configuration");
	if (s->n_members > 100000000)
		return fail(-EINVAL, "synth: n_members %zu: at most 100000000 (the phone number space)", s->n_members);
	if (s->n_skus < 1 || s->n_skus > 10000000)
		return fail(-EINVAL, "synth: n_skus %zu: must be 1..10000000", s->n_skus);
	if ((uint64_t)s->n_rules > (uint64_t)s->n_skus * (uint64_t)(s->n_skus - 1))
		return fail(-EINVAL, "synth: n_rules %zu: at most n_skus * (n_skus - 1) = %" PRIu64, s->n_rules,
			    (uint64_t)s->n_skus * (uint64_t)(s->n_skus - 1));
	if (s->n_campaigns > 999)
		return fail(-EINVAL, "synth: n_campaigns %zu: at most 999", s->n_campaigns);
	if (s->coupon_every && !s->n_campaigns)
		return fail(-EINVAL, "synth: member coupons (coupon_every %zu) need at least one campaign", s->coupon_every);
	if (s->now_ms < 720 * DAY_MS || s->now_ms > MAX_SAFE_INT - 400 * DAY_MS)
		return fail(-EINVAL, "synth: now_ms %" PRId64 ": out of range", s->now_ms);
	if (s->version < 1 || s->version > MAX_SAFE_INT)
		return fail(-EINVAL, "synth: version %" PRId64 ": must be 1..2^53", s->version);
	if (!key_ok(s->tenant))
		return fail(-EINVAL, "synth: tenant must be 1..64 bytes of [A-Za-z0-9_.:>-]");
	return 0;
}

size_t cg_synth_count(const cg_synth *s, cg_stream st)
{
	if (!s)
		return 0;
	switch (st) {
	case CG_MEMBERS:
	case CG_RECOS:
		return s->n_members;
	case CG_CATALOGUE:
	case CG_INVENTORY:
		return s->n_skus;
	case CG_RULES:
		return s->n_rules;
	case CG_SCRIPTS:
		return SYNTH_SCRIPTS;
	case CG_COUPONS:
		return s->n_campaigns + (s->coupon_every ? (s->n_members + s->coupon_every - 1) / s->coupon_every : 0);
	default:
		return 0;
	}
}

/* snprintf-like writer: keeps counting past the end so the caller learns the
 * full length. */
typedef struct wbuf {
	char *p;
	size_t cap, len;
} wbuf;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void wput(wbuf *w, const char *fmt, ...)
{
	va_list ap;
	int n;
	va_start(ap, fmt);
	if (w->len < w->cap)
		n = vsnprintf(w->p + w->len, w->cap - w->len, fmt, ap);
	else
		n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n > 0)
		w->len += (size_t)n;
}

static void wstr(wbuf *w, const char *s)
{
	size_t n = strlen(s);
	if (w->len < w->cap) {
		size_t room = w->cap - w->len - 1, k = n < room ? n : room;
		memcpy(w->p + w->len, s, k);
		w->p[w->len + k] = '\0';
	}
	w->len += n;
}

/* A non-negative fraction in 1/10000 units as "d.dddd" (no locale). */
static void wfrac(wbuf *w, uint64_t v)
{
	wput(w, "%" PRIu64 ".%04" PRIu64, v / 10000, v % 10000);
}

static void sku_name(size_t sku, char out[24])
{
	snprintf(out, 24, "S%05zu", sku);
}

/* Phone: "4477" + 8 digits. i -> (i * A + off) mod 10^8 is a bijection on
 * 0..10^8-1 because A is coprime to 10^8. */
static void synth_phone(const cg_synth *s, size_t i, char out[24])
{
	const uint64_t mod = 100000000ULL, a = 15485863ULL;
	uint64_t off = hash3(s->seed, SALT_PHONE, 0) % mod;
	uint64_t p = ((uint64_t)i % mod * a + off) % mod;
	snprintf(out, 24, "4477%08" PRIu64, p);
}

int cg_synth_member_ident(const cg_synth *s, size_t i, cg_member_ident *out)
{
	int rc;
	if (!out || (rc = cg_synth_check(s)))
		return -EINVAL;
	if (i >= s->n_members)
		return -ERANGE;
	snprintf(out->member_id, sizeof(out->member_id), "M%07zu", i);
	snprintf(out->card, sizeof(out->card), "6000%010u", (unsigned)i); /* i < 10^8 */
	synth_phone(s, i, out->phone);
	return 0;
}

/* The synthetic member: every field a function of (seed, i). */
static void synth_member(const cg_synth *s, size_t i, wbuf *w)
{
	uint64_t h = hash3(s->seed, SALT_MEMBER, i), h2 = mix64(h + 1), h3 = mix64(h + 2), h4 = mix64(h + 3);
	unsigned stage_roll = (unsigned)(h % 100), tier_roll = (unsigned)((h >> 8) % 100);
	int stage = stage_roll < 10 ? 0 : stage_roll < 60 ? 1 : stage_roll < 80 ? 2 : stage_roll < 92 ? 3 : 4;
	int tier = tier_roll < 50 ? 0 : tier_roll < 80 ? 1 : tier_roll < 95 ? 2 : 3;
	static const int r_of_stage[5] = {5, 4, 2, 3, 1};
	int r = r_of_stage[stage] + (stage == 1 && (h2 & 1)), f = 1 + (int)((h >> 16) % 5), m = 1 + (int)((h >> 24) % 5);
	const char *segment;
	char phone[24];
	int64_t days_ago, orders, gap_days;
	static const int64_t day_lo[5] = {0, 0, 90, 45, 181}, day_span[5] = {15, 31, 91, 45, 540};

	if (stage == 0)
		f = 1;
	if (tier >= 2 && m < 3)
		m += 2;
	segment = r >= 4 && f >= 4 ? "champions" : f >= 4 ? "loyal" : r >= 4 ? "promising" : r <= 2 && f >= 3 ? "at_risk"
		  : r <= 2 ? "hibernating" : "need_attention";
	orders = stage == 0 ? 1 + (int64_t)(h2 % 2) : (int64_t)f * 4 + (int64_t)(h2 % 7);
	days_ago = day_lo[stage] + (int64_t)((h2 >> 8) % (uint64_t)day_span[stage]);
	gap_days = 7 + (int64_t)((h2 >> 20) % 40);
	int64_t last = s->now_ms - days_ago * DAY_MS - (int64_t)((h3 % 86400) * 1000);
	int64_t first = last - (orders - 1) * gap_days * DAY_MS;
	if (first < 0)
		first = 0;
	int64_t avg = 800 + (int64_t)((h3 >> 20) % 9000) + (m - 1) * 1500;
	int64_t spend = orders * avg;

	wput(w, "{\"member_id\":\"M%07zu\",\"card\":\"6000%010zu\",\"tier\":\"%s\",\"tags\":[", i, i, tier_names[tier]);
	int nt = 0;
	if (tier >= 2 && m >= 4)
		wput(w, "%s\"VIP\"", nt++ ? "," : "");
	if ((h3 & 0xff) < 77)
		wput(w, "%s\"price-sensitive\"", nt++ ? "," : "");
	for (int k = 0; k < 4; k++)
		if (((h4 >> (8 * k)) & 0xff) < 51)
			wput(w, "%s\"%s\"", nt++ ? "," : "", extra_tags[k]);
	wput(w,
	     "],\"rfm\":{\"r\":%d,\"f\":%d,\"m\":%d,\"segment\":\"%s\"},\"ltv_band\":\"%s\",\"stage\":\"%s\","
	     "\"consent\":{\"marketing\":%s,\"tracking\":%s},",
	     r, f, m, segment, m <= 2 ? "low" : m == 3 ? "medium" : "high", stage_names[stage],
	     (h4 >> 40) % 10 < 7 ? "true" : "false", (h4 >> 44) % 2 ? "true" : "false");
	size_t c1 = (size_t)((h4 >> 48) % 10), c2 = (size_t)((h4 >> 52) % 10);
	wput(w, "\"prefs\":{\"categories\":[\"%s\"", categories[c1]);
	if (c2 != c1)
		wput(w, ",\"%s\"", categories[c2]);
	wput(w,
	     "],\"channel\":\"%s\"},\"stats\":{\"orders\":%" PRId64 ",\"spend\":%" PRId64
	     ",\"currency\":\"GBP\",\"first_purchase_ms\":%" PRId64 ",\"last_purchase_ms\":%" PRId64
	     ",\"as_of_ms\":%" PRId64 "},\"recent\":[",
	     channels[(h4 >> 56) % 4], orders, spend, first, last, s->now_ms);
	int64_t nrecent = orders < 3 ? orders : 3;
	for (int64_t k = 0; k < nrecent; k++) {
		uint64_t hk = mix64(h ^ (uint64_t)(k + 11));
		int nsk = 1 + (int)(hk % 3);
		wput(w, "%s{\"ts\":%" PRId64 ",\"order_id\":\"O%zu-%" PRId64 "\",\"total\":%" PRId64 ",\"skus\":[",
		     k ? "," : "", last - k * gap_days * DAY_MS, i, orders - k, avg / 2 + (int64_t)((hk >> 8) % (uint64_t)avg));
		for (int j = 0; j < nsk; j++) {
			char sku[24];
			sku_name((size_t)(mix64(hk + (uint64_t)j) % s->n_skus), sku);
			wput(w, "%s\"%s\"", j ? "," : "", sku);
		}
		wstr(w, "]}");
	}
	synth_phone(s, i, phone);
	wput(w, "],\"pii\":{\"name\":\"%s %s\",\"phone\":\"%s\",\"birthday\":\"%04d-%02d-%02d\"}}",
	     first_names[h2 >> 59], last_names[(h3 >> 59)], phone, 1950 + (int)((h3 >> 30) % 56),
	     1 + (int)((h3 >> 36) % 12), 1 + (int)((h3 >> 40) % 28));
}

static void synth_catalogue(const cg_synth *s, size_t i, wbuf *w)
{
	uint64_t h = hash3(s->seed, SALT_SKU, i);
	size_t cat = (size_t)(h % 10);
	char sku[24];
	sku_name(i, sku);
	wput(w, "{\"sku\":\"%s\",\"name\":\"%s %s %zu\",\"category\":\"%s\",\"price\":%" PRIu64 ",\"currency\":\"GBP\"}",
	     sku, adjectives[(h >> 8) % 16], nouns_by_cat[cat][(h >> 12) % 4], i, categories[cat],
	     (uint64_t)(10 + (h >> 16) % 1000) * 5);
}

static void synth_inventory(const cg_synth *s, size_t i, wbuf *w)
{
	uint64_t h = hash3(s->seed, SALT_STOCK, i);
	char sku[24];
	sku_name(i, sku);
	wput(w, "{\"sku\":\"%s\",\"qty\":%" PRIu64 ",\"as_of_ms\":%" PRId64 "}", sku, h % 10 == 0 ? 0 : (h >> 8) % 200,
	     s->now_ms);
}

/* Rule i is the pair (a, b): a = i mod n, and the k-th partner of a
 * (k = i / n < n - 1) is a + 1 + ((k + shift(a)) mod (n - 1)), mod n:
 * injective in k and never a itself, so keys never repeat. */
static void synth_rule_pair(const cg_synth *s, size_t i, size_t *a, size_t *b)
{
	size_t n = s->n_skus, k = i / n;
	*a = i % n;
	uint64_t shift = hash3(s->seed, SALT_RULE, *a) % (n - 1);
	*b = (*a + 1 + (size_t)(((uint64_t)k + shift) % (n - 1))) % n;
}

static void synth_rule(const cg_synth *s, size_t i, wbuf *w)
{
	size_t a, b;
	char sa[24], sb_[24];
	uint64_t h = hash3(s->seed, SALT_RULE + 100, i);
	synth_rule_pair(s, i, &a, &b);
	sku_name(a, sa);
	sku_name(b, sb_);
	uint64_t support = 10 + h % 490;                 /* 0.0010 .. 0.0500 */
	uint64_t conf = 500 + (h >> 16) % 9000;          /* 0.05 .. 0.95 */
	uint64_t p_then = 100 + (h >> 32) % 1900;        /* 0.01 .. 0.20 */
	uint64_t lift = conf * 10000 / p_then;
	wput(w, "{\"if\":\"%s\",\"then\":\"%s\",\"support\":", sa, sb_);
	wfrac(w, support);
	wstr(w, ",\"confidence\":");
	wfrac(w, conf);
	wstr(w, ",\"lift\":");
	wfrac(w, lift);
	wstr(w, "}");
}

static void synth_reco(const cg_synth *s, size_t i, wbuf *w)
{
	uint64_t h = hash3(s->seed, SALT_RECO, i);
	size_t count = 5 + (size_t)(h % 6), n = s->n_skus;
	if (count > n)
		count = n;
	size_t stride = n / count, base = (size_t)((h >> 8) % n);
	if (stride > 1)
		stride = 1 + (size_t)((h >> 40) % stride);
	wput(w, "{\"member_id\":\"M%07zu\",\"items\":[", i);
	for (size_t j = 0; j < count; j++) {
		char sku[24];
		sku_name((base + j * stride) % n, sku);
		uint64_t score = 9500 - 800 * j + (mix64(h + j) % 300); /* 1/10000 units, > 0 */
		wput(w, "%s{\"sku\":\"%s\",\"score\":%" PRIu64 ".%04" PRIu64 ",\"reason\":\"%s\"}", j ? "," : "",
		     sku, score / 10000, score % 10000, (j % 3 == 2) ? "popular_in_segment" : "bought_with");
	}
	wstr(w, "]}");
}

static const struct {
	const char *id, *stage, *tag, *title, *text;
} synth_scripts[SYNTH_SCRIPTS] = {
	{"welcome", "new", NULL, "Welcome", "Welcome to %s! Ask if they would like to hear about member offers and show this week's new arrivals."},
	{"thank-you", "active", NULL, "Thank a regular", "Thank them for shopping with %s again and mention what goes well with their last purchase."},
	{"wake-up", "sleeping", NULL, "Welcome back", "It has been a while: welcome them back to %s and point out the welcome-back offer waiting on their card."},
	{"check-in", "churn_risk", NULL, "Check in", "Ask how their last purchase at %s worked out and whether there is anything they could not find."},
	{"win-back", "lost", NULL, "Win back", "Greet them warmly, mention what is new at %s since their last visit and offer to sign them up for updates."},
	{"vip-care", NULL, "VIP", "VIP care", "A valued %s VIP: offer a personal walk-through of new collections and early access to the next event."},
	{"price-deals", NULL, "price-sensitive", "Best value", "Point out today's %s multi-buy deals and any coupon on their card before they pay."},
};

static void synth_script(const cg_synth *s, size_t i, wbuf *w)
{
	wput(w, "{\"id\":\"%s\",", synth_scripts[i].id);
	if (synth_scripts[i].stage)
		wput(w, "\"stage\":\"%s\",\"tag\":null,", synth_scripts[i].stage);
	else
		wput(w, "\"stage\":null,\"tag\":\"%s\",", synth_scripts[i].tag);
	wput(w, "\"title\":\"%s\",\"text\":\"", synth_scripts[i].title);
	wput(w, synth_scripts[i].text, s->tenant); /* tenant: key characters, nothing to escape */
	wstr(w, "\"}");
}

static void synth_campaign(const cg_synth *s, size_t c, wbuf *w)
{
	uint64_t h = hash3(s->seed, SALT_CAMPAIGN, c);
	const char *cat = categories[h % 10];
	int64_t from = s->now_ms - 7 * DAY_MS, to = s->now_ms + (30 + (int64_t)(c % 60)) * DAY_MS;
	int pct = 5 + 5 * (int)((h >> 8) % 4);
	wput(w, "{\"type\":\"campaign\",\"id\":\"CMP%03zu\",", c);
	switch (c % 4) {
	case 0: /* public percent-off on a category */
		wput(w,
		     "\"name\":\"%d%% off %s\",\"scope\":{\"skus\":[],\"categories\":[\"%s\"]},"
		     "\"discount\":{\"kind\":\"percent\",\"value\":%d},\"min_spend\":0,\"currency\":\"GBP\","
		     "\"valid_from\":%" PRId64 ",\"valid_to\":%" PRId64 ",\"tiers\":[],\"tags\":[],\"per_member_limit\":1,"
		     "\"total_limit\":0,\"offline\":{\"allowed\":true,\"max_value\":2000},\"public\":true}",
		     pct, cat, cat, pct, from, to);
		break;
	case 1: /* tier-restricted amount off */
		wput(w,
		     "\"name\":\"Gold and platinum: 5 pounds off %s\",\"scope\":{\"skus\":[],\"categories\":[\"%s\"]},"
		     "\"discount\":{\"kind\":\"amount\",\"value\":500},\"min_spend\":2500,\"currency\":\"GBP\","
		     "\"valid_from\":%" PRId64 ",\"valid_to\":%" PRId64 ",\"tiers\":[\"gold\",\"platinum\"],\"tags\":[],"
		     "\"per_member_limit\":1,\"total_limit\":0,\"offline\":{\"allowed\":true,\"max_value\":500},"
		     "\"public\":false}",
		     cat, cat, from, to);
		break;
	case 2: /* sleeping members, usable offline up to a cap */
		wput(w,
		     "\"name\":\"Welcome back: %d%% off\",\"scope\":{\"skus\":[],\"categories\":[]},"
		     "\"discount\":{\"kind\":\"percent\",\"value\":%d},\"min_spend\":1000,\"currency\":\"GBP\","
		     "\"valid_from\":%" PRId64 ",\"valid_to\":%" PRId64 ",\"tiers\":[],\"tags\":[],\"stages\":[\"sleeping\"],"
		     "\"per_member_limit\":1,\"total_limit\":0,\"offline\":{\"allowed\":true,\"max_value\":1500},"
		     "\"public\":false}",
		     pct, pct, from, to);
		break;
	default: /* online only: never redeemable while the till is offline */
		wput(w,
		     "\"name\":\"%d%% off %s (online check required)\",\"scope\":{\"skus\":[],\"categories\":[\"%s\"]},"
		     "\"discount\":{\"kind\":\"percent\",\"value\":%d},\"min_spend\":0,\"currency\":\"GBP\","
		     "\"valid_from\":%" PRId64 ",\"valid_to\":%" PRId64 ",\"tiers\":[],\"tags\":[],\"per_member_limit\":1,"
		     "\"total_limit\":10000,\"offline\":{\"allowed\":false,\"max_value\":0},\"public\":true}",
		     pct, cat, cat, pct, from, to);
	}
}

static void coupon_code(uint64_t h, char out[10])
{
	for (int k = 0; k < 9; k++) {
		if (k == 4) {
			out[k] = '-';
			continue;
		}
		out[k] = code_alphabet[h % 32];
		h >>= 5;
	}
	out[9] = '\0';
}

static void synth_coupon(const cg_synth *s, size_t c, wbuf *w)
{
	char code[10];
	size_t member = c * s->coupon_every, campaign = c % s->n_campaigns;
	coupon_code(hash3(s->seed, SALT_COUPON, c), code);
	wput(w,
	     "{\"type\":\"coupon\",\"id\":\"C-%08zu\",\"campaign\":\"CMP%03zu\",\"member_id\":\"M%07zu\",\"code\":\"%s\","
	     "\"valid_from\":%" PRId64 ",\"valid_to\":%" PRId64 ",\"uses\":1}",
	     c, campaign, member, code, s->now_ms - DAY_MS, s->now_ms + (30 + (int64_t)(campaign % 60)) * DAY_MS);
}

/* Checks the arguments of cg_synth_key/cg_synth_data and leaves buf an
 * empty string, so a record that writes nothing still reads as one. */
static int synth_begin(const cg_synth *s, cg_stream st, size_t i, char *buf, size_t cap)
{
	if ((unsigned)st >= CG_N_STREAMS || (!buf && cap) || cg_synth_check(s))
		return -EINVAL;
	if (i >= cg_synth_count(s, st))
		return -ERANGE;
	if (cap)
		buf[0] = '\0';
	return 0;
}

int cg_synth_key(const cg_synth *s, cg_stream st, size_t i, char *buf, size_t cap)
{
	wbuf w = {buf, cap, 0};
	size_t a, b;
	char sa[24], sb_[24];
	int rc = synth_begin(s, st, i, buf, cap);
	if (rc)
		return rc;
	switch (st) {
	case CG_MEMBERS:
	case CG_RECOS:
		wput(&w, "M%07zu", i);
		break;
	case CG_CATALOGUE:
	case CG_INVENTORY:
		sku_name(i, sa);
		wstr(&w, sa);
		break;
	case CG_RULES:
		synth_rule_pair(s, i, &a, &b);
		sku_name(a, sa);
		sku_name(b, sb_);
		wput(&w, "%s>%s", sa, sb_);
		break;
	case CG_SCRIPTS:
		wstr(&w, synth_scripts[i].id);
		break;
	case CG_COUPONS:
		if (i < s->n_campaigns)
			wput(&w, "campaign:CMP%03zu", i);
		else
			wput(&w, "coupon:C-%08zu", i - s->n_campaigns);
		break;
	default:
		return -EINVAL;
	}
	return (int)w.len;
}

/* The record writer of each stream but coupons, whose index runs over the
 * campaigns first and then the coupons. */
static void (*const synth_writers[CG_N_STREAMS])(const cg_synth *, size_t, wbuf *) = {
	[CG_MEMBERS] = synth_member,
	[CG_RECOS] = synth_reco,
	[CG_CATALOGUE] = synth_catalogue,
	[CG_INVENTORY] = synth_inventory,
	[CG_RULES] = synth_rule,
	[CG_SCRIPTS] = synth_script,
};

int cg_synth_data(const cg_synth *s, cg_stream st, size_t i, char *buf, size_t cap)
{
	wbuf w = {buf, cap, 0};
	int rc = synth_begin(s, st, i, buf, cap);
	if (rc)
		return rc;
	if (st != CG_COUPONS)
		synth_writers[st](s, i, &w);
	else if (i < s->n_campaigns)
		synth_campaign(s, i, &w);
	else
		synth_coupon(s, i - s->n_campaigns, &w);
	return (int)w.len;
}

int cg_synth_member(const cg_synth *s, size_t i, char *buf, size_t cap)
{
	return cg_synth_data(s, CG_MEMBERS, i, buf, cap);
}

/* ---- writing a synthetic store ---------------------------------------- */

#define SIGN_BATCH 4096
#define MAX_SIGNERS 8

/* Coupon records are signed in batches: each thread signs records
 * lo + t, lo + t + n, ... of the batch with its own signer. */
struct sign_job {
	const cg_synth *s;
	cg_signer *signer;
	size_t lo, hi, first, step;
	char **out; /* out[i - lo] */
	int rc;
};

static void *sign_worker(void *arg)
{
	struct sign_job *j = arg;
	char data[CG_SYNTH_RECORD_MAX];
	for (size_t i = j->lo + j->first; i < j->hi && !j->rc; i += j->step) {
		int n = cg_synth_data(j->s, CG_COUPONS, i, data, sizeof(data));
		if (n < 0 || (size_t)n >= sizeof(data))
			j->rc = n < 0 ? n : -ERANGE;
		else
			j->rc = cg_signed_coupon_record(j->signer, data, &j->out[i - j->lo]);
	}
	return NULL;
}

static int online_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n < 1 ? 1 : n > MAX_SIGNERS ? MAX_SIGNERS : (int)n;
}

static int write_synth_coupons(const cg_synth *s, cg_signer *signer, FILE *f)
{
	size_t count = cg_synth_count(s, CG_COUPONS);
	int nthreads = online_cpus(), rc = 0;
	cg_signer *signers[MAX_SIGNERS] = {signer};
	char **out = NULL;

	if (count < 64)
		nthreads = 1;
	for (int t = 1; t < nthreads && !rc; t++)
		rc = signer_from_pem(signer->pem, signer->pem_len, "central key", &signers[t]);
	if (!rc && !(out = calloc(SIGN_BATCH, sizeof(*out))))
		rc = -ENOMEM;
	for (size_t lo = 0; !rc && lo < count; lo += SIGN_BATCH) {
		size_t hi = lo + SIGN_BATCH < count ? lo + SIGN_BATCH : count;
		struct sign_job jobs[MAX_SIGNERS];
		pthread_t tids[MAX_SIGNERS];
		int started[MAX_SIGNERS] = {0};
		for (int t = 0; t < nthreads; t++) {
			jobs[t] = (struct sign_job){s, signers[t], lo, hi, (size_t)t, (size_t)nthreads, out, 0};
			if (t > 0)
				started[t] = pthread_create(&tids[t], NULL, sign_worker, &jobs[t]) == 0;
			if (t > 0 && !started[t])
				jobs[t].rc = fail(-EAGAIN, "cannot start a signing thread");
		}
		sign_worker(&jobs[0]);
		for (int t = 0; t < nthreads; t++) {
			if (t > 0 && started[t])
				pthread_join(tids[t], NULL);
			if (!rc)
				rc = jobs[t].rc;
		}
		for (size_t i = 0; i < hi - lo; i++) {
			if (!rc && out[i]) {
				fputs(out[i], f);
				fputc('\n', f);
			}
			free(out[i]);
			out[i] = NULL;
		}
	}
	free(out);
	for (int t = 1; t < nthreads; t++)
		cg_signer_close(signers[t]);
	return rc;
}

static int write_synth_stream(const cg_synth *s, cg_stream st, FILE *f, FILE *index)
{
	char key[128], data[CG_SYNTH_RECORD_MAX];
	size_t count = cg_synth_count(s, st);
	for (size_t i = 0; i < count; i++) {
		int kn = cg_synth_key(s, st, i, key, sizeof(key));
		int dn = cg_synth_data(s, st, i, data, sizeof(data));
		if (kn < 0 || dn < 0)
			return kn < 0 ? kn : dn;
		if ((size_t)kn >= sizeof(key) || (size_t)dn >= sizeof(data))
			return fail(-ERANGE, "synth: %s record %zu does not fit", cg_stream_name(st), i);
		fputs("{\"key\":\"", f);
		fwrite(key, 1, (size_t)kn, f);
		fputs("\",\"data\":", f);
		fwrite(data, 1, (size_t)dn, f);
		fputs("}\n", f);
		if (index) {
			cg_member_ident id;
			cg_synth_member_ident(s, i, &id);
			fprintf(index, "%s\t%s\t%s\n", id.member_id, id.card, id.phone);
		}
	}
	return ferror(f) || (index && ferror(index)) ? fail(-EIO, "synth: write error") : 0;
}

int cg_synth_write(const cg_synth *s, cg_signer *signer, const char *outdir)
{
	out_file o, idx;
	int rc;
	if (!signer || !outdir)
		return -EINVAL;
	if ((rc = cg_synth_check(s)) || (rc = mkdirs(outdir, 0755)))
		return rc;
	memset(&idx, 0, sizeof(idx));
	for (int st = 0; st < CG_N_STREAMS && !rc; st++) {
		if ((rc = out_open_stream(&o, outdir, (cg_stream)st, s->version)))
			break;
		if (st == CG_MEMBERS && (rc = out_open(&idx, outdir, "members_index.tsv"))) {
			out_close(&o, 0);
			break;
		}
		if (st == CG_COUPONS)
			rc = write_synth_coupons(s, signer, o.f);
		else
			rc = write_synth_stream(s, (cg_stream)st, o.f, st == CG_MEMBERS ? idx.f : NULL);
		int rc2 = out_close(&o, !rc);
		if (st == CG_MEMBERS) {
			int rc3 = out_close(&idx, !rc && !rc2);
			rc2 = rc2 ? rc2 : rc3;
		}
		rc = rc ? rc : rc2;
	}
	return rc;
}

/* ---- the retail sample: parsing ------------------------------------- */

/* String → index map (open addressing, FNV-1a); keys are copied. */
typedef struct smap {
	char **keys;
	size_t *vals;
	size_t cap, n;
} smap;

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 1469598103934665603ULL;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

static void smap_free(smap *m)
{
	for (size_t i = 0; i < m->cap; i++)
		free(m->keys[i]);
	free(m->keys);
	free(m->vals);
	memset(m, 0, sizeof(*m));
}

/* Double an open-addressing table (at least min_cap slots) and re-insert
 * every occupied slot by linear probing. Both maps below store a key array
 * whose empty slots are all-zero bytes (a NULL string, a 0 pair key) and a
 * parallel value array; only the key's size and hash differ. */
static int table_grow(void **keys, size_t **vals, size_t *cap, size_t min_cap, size_t key_size,
		      uint64_t (*hash)(const void *key))
{
	static const unsigned char zero[sizeof(uint64_t)];
	size_t ncap = *cap ? *cap * 2 : min_cap;
	unsigned char *nkeys = calloc(ncap, key_size);
	size_t *nvals = calloc(ncap, sizeof(*nvals));
	const unsigned char *okeys = *keys;
	if (!nkeys || !nvals) {
		free(nkeys);
		free(nvals);
		return -ENOMEM;
	}
	for (size_t i = 0; i < *cap; i++) {
		const unsigned char *k = okeys + i * key_size;
		if (memcmp(k, zero, key_size) == 0)
			continue;
		size_t j = (size_t)hash(k) & (ncap - 1);
		while (memcmp(nkeys + j * key_size, zero, key_size) != 0)
			j = (j + 1) & (ncap - 1);
		memcpy(nkeys + j * key_size, k, key_size);
		nvals[j] = (*vals)[i];
	}
	free(*keys);
	free(*vals);
	*keys = nkeys;
	*vals = nvals;
	*cap = ncap;
	return 0;
}

static uint64_t smap_slot_hash(const void *key)
{
	const char *const *k = key;
	return fnv1a(*k);
}

static int smap_grow(smap *m)
{
	void *keys = m->keys;
	int rc = table_grow(&keys, &m->vals, &m->cap, 1024, sizeof(*m->keys), smap_slot_hash);
	m->keys = keys;
	return rc;
}

/* Find key; if missing and `add` != SIZE_MAX, insert it with value add.
 * Returns the value, SIZE_MAX when missing (and not added), or SIZE_MAX - 1
 * when out of memory. */
static size_t smap_get(smap *m, const char *key, size_t add)
{
	if (m->cap) {
		size_t j = (size_t)fnv1a(key) & (m->cap - 1);
		for (; m->keys[j]; j = (j + 1) & (m->cap - 1))
			if (strcmp(m->keys[j], key) == 0)
				return m->vals[j];
	}
	if (add == SIZE_MAX)
		return SIZE_MAX;
	if ((m->n + 1) * 2 > m->cap && smap_grow(m))
		return SIZE_MAX - 1;
	size_t j = (size_t)fnv1a(key) & (m->cap - 1);
	while (m->keys[j])
		j = (j + 1) & (m->cap - 1);
	if (!(m->keys[j] = strdup(key)))
		return SIZE_MAX - 1;
	m->vals[j] = add;
	m->n++;
	return add;
}

/* Grow a dynamic array so that index n is valid. */
static int grow(void **p, size_t *cap, size_t n, size_t elem)
{
	if (n < *cap)
		return 0;
	size_t nc = *cap ? *cap * 2 : 64;
	while (nc <= n)
		nc *= 2;
	void *np = realloc(*p, nc * elem);
	if (!np)
		return -ENOMEM;
	memset((char *)np + *cap * elem, 0, (nc - *cap) * elem);
	*p = np;
	*cap = nc;
	return 0;
}

/* ---- the retail sample: the data as read -------------------------------- */

struct r_variant {
	char *text;    /* a description, or NULL for a price variant */
	int64_t pence; /* a price */
	size_t n;      /* lines seen with it */
};

struct r_sku {
	char *code;
	int valid;   /* usable as a record key */
	int product; /* a real product (UCI codes of products start with a digit) */
	const char *category;
	struct r_variant *descs, *prices;
	size_t n_descs, cap_descs, n_prices, cap_prices;
	size_t invoices; /* purchase invoices that contain it (rules) */
	size_t rule0, n_rules;
};

struct r_invoice {
	char *no;
	int64_t ts;
	size_t customer; /* SIZE_MAX: anonymous */
	int cancelled;
	int64_t total; /* Σ qty · price, pence (negative for cancellations) */
	int64_t qty;   /* Σ qty */
	size_t lines;
	size_t *skus; /* distinct valid SKUs, in order of first appearance */
	size_t n_skus, cap_skus;
};

struct r_customer {
	char *id;
	char *country;
	size_t *invoices;
	size_t n_invoices, cap_invoices;
	/* derived */
	int64_t orders, spend, first, last, items, lines, paid;
	int returns;
	int r, f, m, price_q;
	int top5; /* among the top 5% by spend: platinum */
};

struct r_rule {
	size_t a, b, count;
};

typedef struct retail {
	smap sku_ix, inv_ix, cust_ix;
	struct r_sku *skus;
	struct r_invoice *invs;
	struct r_customer *custs;
	size_t n_skus, cap_skus, n_invs, cap_invs, n_custs, cap_custs;
	size_t *order; /* customers sorted by id */
	struct r_rule *rules;
	size_t n_rules;
	int64_t data_end, now;
	size_t purchase_invoices;
	cg_retail_counts counts;
} retail;

static void retail_free(retail *r)
{
	for (size_t i = 0; i < r->n_skus; i++) {
		free(r->skus[i].code);
		for (size_t k = 0; k < r->skus[i].n_descs; k++)
			free(r->skus[i].descs[k].text);
		free(r->skus[i].descs);
		free(r->skus[i].prices);
	}
	for (size_t i = 0; i < r->n_invs; i++) {
		free(r->invs[i].no);
		free(r->invs[i].skus);
	}
	for (size_t i = 0; i < r->n_custs; i++) {
		free(r->custs[i].id);
		free(r->custs[i].country);
		free(r->custs[i].invoices);
	}
	free(r->skus);
	free(r->invs);
	free(r->custs);
	free(r->order);
	free(r->rules);
	smap_free(&r->sku_ix);
	smap_free(&r->inv_ix);
	smap_free(&r->cust_ix);
}

static int add_desc(struct r_sku *k, const char *desc)
{
	for (size_t i = 0; i < k->n_descs; i++)
		if (strcmp(k->descs[i].text, desc) == 0) {
			k->descs[i].n++;
			return 0;
		}
	if (grow((void **)&k->descs, &k->cap_descs, k->n_descs, sizeof(*k->descs)))
		return -ENOMEM;
	if (!(k->descs[k->n_descs].text = strdup(desc)))
		return -ENOMEM;
	k->descs[k->n_descs++].n = 1;
	return 0;
}

static int add_price(struct r_sku *k, int64_t pence)
{
	for (size_t i = 0; i < k->n_prices; i++)
		if (k->prices[i].pence == pence) {
			k->prices[i].n++;
			return 0;
		}
	if (grow((void **)&k->prices, &k->cap_prices, k->n_prices, sizeof(*k->prices)))
		return -ENOMEM;
	k->prices[k->n_prices].pence = pence;
	k->prices[k->n_prices++].n = 1;
	return 0;
}

static size_t intern_sku(retail *r, const char *code)
{
	size_t ix = smap_get(&r->sku_ix, code, r->n_skus);
	if (ix != r->n_skus)
		return ix;
	if (grow((void **)&r->skus, &r->cap_skus, r->n_skus, sizeof(*r->skus)) ||
	    !(r->skus[r->n_skus].code = strdup(code)))
		return SIZE_MAX - 1;
	r->skus[r->n_skus].valid = key_ok(code);
	r->skus[r->n_skus].product = r->skus[r->n_skus].valid && code[0] >= '0' && code[0] <= '9';
	return r->n_skus++;
}

static size_t intern_customer(retail *r, const char *id, const char *country)
{
	size_t ix = smap_get(&r->cust_ix, id, r->n_custs);
	if (ix != r->n_custs)
		return ix;
	if (grow((void **)&r->custs, &r->cap_custs, r->n_custs, sizeof(*r->custs)) ||
	    !(r->custs[r->n_custs].id = strdup(id)) || !(r->custs[r->n_custs].country = strdup(country)))
		return SIZE_MAX - 1;
	return r->n_custs++;
}

static size_t intern_invoice(retail *r, const char *no, int64_t ts, size_t customer)
{
	size_t ix = smap_get(&r->inv_ix, no, r->n_invs);
	if (ix != r->n_invs)
		return ix;
	if (grow((void **)&r->invs, &r->cap_invs, r->n_invs, sizeof(*r->invs)) ||
	    !(r->invs[r->n_invs].no = strdup(no)))
		return SIZE_MAX - 1;
	struct r_invoice *v = &r->invs[r->n_invs];
	v->ts = ts;
	v->customer = customer;
	v->cancelled = no[0] == 'C';
	if (customer != SIZE_MAX) {
		struct r_customer *c = &r->custs[customer];
		if (grow((void **)&c->invoices, &c->cap_invoices, c->n_invoices, sizeof(*c->invoices)))
			return SIZE_MAX - 1;
		c->invoices[c->n_invoices++] = r->n_invs;
	}
	return r->n_invs++;
}

static int retail_read(retail *r, const char *path)
{
	rcsv csv;
	char **fld = csv.fld;
	int rc = rcsv_open(&csv, path), more = 0;

	if (rc)
		return fail(rc, "%s: cannot open: %s", path, strerror(-rc));
	while (!rc && (more = rcsv_next(&csv)) != 0) {
		int64_t qty, pence, ts;
		size_t cust = SIZE_MAX, inv, sku;
		if (more == -EINVAL) {
			rc = fail(-EINVAL, "%s:1: not the Online Retail header (InvoiceNo,StockCode,...)", path);
			break;
		}
		if (more < 0)
			break;
		r->counts.csv_rows++;
		if (csv.n != RCSV_COLS) {
			r->counts.csv_skipped++;
			continue;
		}
		if (!fld[0][0] || strlen(fld[0]) > 64 || !fld[1][0] || rcsv_int(fld[3], -100000000, 100000000, &qty) ||
		    qty == 0 || rcsv_datetime(fld[4], &ts) || rcsv_pence(fld[5], &pence) || pence < 0 ||
		    (fld[6][0] && rcsv_customer(fld[6]))) {
			r->counts.csv_skipped++;
			continue;
		}
		if (fld[6][0] && (cust = intern_customer(r, fld[6], fld[7])) >= SIZE_MAX - 1)
			rc = -ENOMEM;
		else if ((inv = intern_invoice(r, fld[0], ts, cust)) >= SIZE_MAX - 1 ||
			 (sku = intern_sku(r, fld[1])) >= SIZE_MAX - 1)
			rc = -ENOMEM;
		else {
			struct r_invoice *v = &r->invs[inv];
			struct r_sku *k = &r->skus[sku];
			size_t j;
			v->total += qty * pence;
			v->qty += qty;
			v->lines++;
			if (fld[2][0] && add_desc(k, fld[2]))
				rc = -ENOMEM;
			else if (qty > 0 && pence > 0 && add_price(k, pence))
				rc = -ENOMEM;
			if (k->valid && !rc) {
				for (j = 0; j < v->n_skus && v->skus[j] != sku; j++)
					;
				if (j == v->n_skus) {
					if (grow((void **)&v->skus, &v->cap_skus, v->n_skus, sizeof(*v->skus)))
						rc = -ENOMEM;
					else
						v->skus[v->n_skus++] = sku;
				}
			}
		}
	}
	if (!rc && more == -EIO)
		rc = fail(-EIO, "%s: read error", path);
	if (!rc && csv.lineno == 0)
		rc = fail(-EINVAL, "%s: empty file", path);
	rcsv_close(&csv);
	return rc;
}

/* ---- the retail sample: what is derived from it -------------------------- */

#define N_RETAIL_CATS 11 /* categories[] + "services" (postage, fees) */
#define RULES_TARGET 3000
#define RECOS_PER_MEMBER 10
#define RECENT_MAX 5
#define RECENT_SKUS_MAX 20

static const char *retail_category_name(size_t c)
{
	return c < 10 ? categories[c] : "services";
}

/* A product's category from words in its description (the sample has no
 * category column). */
static size_t retail_category(const struct r_sku *k, const char *name)
{
	static const struct {
		size_t cat;
		const char *words[12];
	} table[] = {
		{2, {"CHRISTMAS", "XMAS", "SANTA", "REINDEER", "ADVENT", "SNOWFLAKE", "BAUBLE", NULL}},
		{7, {"LIGHT", "LANTERN", "CANDLE", "LAMP", "NIGHTLIGHT", NULL}},
		{6, {"BAG", "PURSE", "SHOPPER", NULL}},
		{0, {"CAKE", "TEA", "MUG", "BOWL", "PLATE", "CUP", "LUNCH", "BAKING", "JAR", "KITCHEN", "SPOON", NULL}},
		{4, {"CARD", "WRAP", "PAPER", "PENCIL", "NOTEBOOK", "STICKER", "PEN ", "ENVELOPE", NULL}},
		{5, {"TOY", "DOLL", "GAME", "JIGSAW", "SPINNING", "PLAYHOUSE", "SKITTLES", "DOMINOES", NULL}},
		{3, {"GARDEN", "PLANT", "BIRD", "FLOWER", "WATERING", NULL}},
		{9, {"PARTY", "BUNTING", "BALLOON", "NAPKIN", "CHARLOTTE", NULL}},
		{1, {"FRAME", "CUSHION", "CLOCK", "SIGN", "HOOK", "HANGER", "DOORMAT", "MIRROR", "DRAWER", "BOX", "HOLDER", NULL}},
	};
	if (!k->product)
		return 10;
	for (size_t t = 0; name && t < sizeof(table) / sizeof(table[0]); t++)
		for (size_t w = 0; table[t].words[w]; w++)
			if (strstr(name, table[t].words[w]))
				return table[t].cat;
	return 8; /* gifts */
}

static const char *most_common_desc(const struct r_sku *k)
{
	const struct r_variant *best = NULL;
	for (size_t i = 0; i < k->n_descs; i++)
		if (!best || k->descs[i].n > best->n)
			best = &k->descs[i];
	return best ? best->text : NULL;
}

static int64_t most_common_price(const struct r_sku *k)
{
	const struct r_variant *best = NULL;
	for (size_t i = 0; i < k->n_prices; i++)
		if (!best || k->prices[i].n > best->n || (k->prices[i].n == best->n && k->prices[i].pence < best->pence))
			best = &k->prices[i];
	return best ? best->pence : -1;
}

struct qv {
	int64_t v;
	size_t i;
};

static int cmp_qv(const void *a, const void *b)
{
	const struct qv *x = a, *y = b;
	if (x->v != y->v)
		return x->v < y->v ? -1 : 1;
	return x->i < y->i ? -1 : x->i > y->i;
}

/* Quintile scores 1..5 of vals[0..n) (higher value, higher score); equal
 * values share the score of the first of them. */
static int quintiles(const int64_t *vals, size_t n, int *scores)
{
	struct qv *q = malloc((n ? n : 1) * sizeof(*q));
	if (!q)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		q[i] = (struct qv){vals[i], i};
	qsort(q, n, sizeof(*q), cmp_qv);
	size_t first = 0;
	for (size_t p = 0; p < n; p++) {
		if (p && q[p].v != q[p - 1].v)
			first = p;
		scores[q[p].i] = 1 + (int)(first * 5 / n);
	}
	free(q);
	return 0;
}

struct ord {
	const char *s;
	size_t i;
};

static int cmp_ord(const void *a, const void *b)
{
	const struct ord *x = a, *y = b;
	int c = strcmp(x->s, y->s);
	return c ? c : (x->i < y->i ? -1 : x->i > y->i);
}

/* Indices of n strings (stride apart) in strcmp order. */
static size_t *sort_by_string(const void *base, size_t n, size_t stride, size_t offset)
{
	struct ord *o = malloc((n ? n : 1) * sizeof(*o));
	size_t *out = malloc((n ? n : 1) * sizeof(*out));
	if (!o || !out) {
		free(o);
		free(out);
		return NULL;
	}
	for (size_t i = 0; i < n; i++)
		o[i] = (struct ord){*(const char *const *)((const char *)base + i * stride + offset), i};
	qsort(o, n, sizeof(*o), cmp_ord);
	for (size_t i = 0; i < n; i++)
		out[i] = o[i].i;
	free(o);
	return out;
}

static const char *segment_of(int r, int f)
{
	return r >= 4 && f >= 4 ? "champions" : f >= 4 ? "loyal" : r >= 4 ? "promising" : r <= 2 && f >= 3 ? "at_risk"
	       : r <= 2 ? "hibernating" : "need_attention";
}

static const char *retail_stage(const retail *r, const struct r_customer *c)
{
	if (c->orders == 0)
		return NULL; /* only cancellations in the data: no lifecycle to speak of */
	int64_t idle = (r->data_end - c->last) / DAY_MS;
	if (idle > 180)
		return "lost";
	if (idle > 90)
		return "sleeping";
	if (idle > 30)
		return "churn_risk";
	if (c->orders == 1 && r->data_end - c->first <= 30 * DAY_MS)
		return "new";
	return "active";
}

static const char *retail_tier(const struct r_customer *c, int top5)
{
	return top5 && c->spend > 0 ? "platinum" : c->m == 5 ? "gold" : c->m == 4 ? "silver" : "bronze";
}

static int retail_customers(retail *r)
{
	size_t n = r->n_custs;
	int64_t *vals = calloc(n ? n : 1, sizeof(*vals));
	int *sc = calloc(n ? n : 1, sizeof(*sc));
	int rc = 0;
	if (!vals || !sc) {
		rc = -ENOMEM;
		goto cleanup;
	}
	for (size_t i = 0; i < n; i++) {
		struct r_customer *c = &r->custs[i];
		for (size_t k = 0; k < c->n_invoices; k++) {
			const struct r_invoice *v = &r->invs[c->invoices[k]];
			c->spend += v->total;
			if (v->cancelled) {
				c->returns = 1;
				continue;
			}
			if (!c->orders || v->ts < c->first)
				c->first = v->ts;
			if (!c->orders || v->ts > c->last)
				c->last = v->ts;
			c->orders++;
			c->items += v->qty;
			c->lines += (int64_t)v->lines;
			c->paid += v->total;
		}
		if (c->spend < 0)
			c->spend = 0; /* refunds of purchases made before the sample */
	}
	for (size_t i = 0; i < n; i++)
		vals[i] = r->custs[i].orders ? r->custs[i].last : -1;
	if ((rc = quintiles(vals, n, sc)))
		goto cleanup;
	for (size_t i = 0; i < n; i++)
		r->custs[i].r = sc[i];
	for (size_t i = 0; i < n; i++)
		vals[i] = r->custs[i].orders;
	if ((rc = quintiles(vals, n, sc)))
		goto cleanup;
	for (size_t i = 0; i < n; i++)
		r->custs[i].f = sc[i];
	for (size_t i = 0; i < n; i++)
		vals[i] = r->custs[i].spend;
	if ((rc = quintiles(vals, n, sc)))
		goto cleanup;
	for (size_t i = 0; i < n; i++)
		r->custs[i].m = sc[i];
	/* Average price per item, in 1/100 pence; lower is "more price-sensitive",
	 * so score the negated value. Non-buyers get no tag. */
	for (size_t i = 0; i < n; i++)
		vals[i] = r->custs[i].items > 0 ? -(r->custs[i].paid * 100 / r->custs[i].items) : INT64_MIN;
	if ((rc = quintiles(vals, n, sc)))
		goto cleanup;
	for (size_t i = 0; i < n; i++)
		r->custs[i].price_q = r->custs[i].items > 0 ? sc[i] : 0;
	{
		struct qv *q = malloc((n ? n : 1) * sizeof(*q));
		if (!q) {
			rc = -ENOMEM;
			goto cleanup;
		}
		for (size_t i = 0; i < n; i++)
			q[i] = (struct qv){r->custs[i].spend, i};
		qsort(q, n, sizeof(*q), cmp_qv);
		size_t top = (n * 5 + 99) / 100;
		for (size_t p = n - top; p < n; p++)
			r->custs[q[p].i].top5 = q[p].v > 0;
		free(q);
	}
	if (!(r->order = sort_by_string(r->custs, n, sizeof(*r->custs), offsetof(struct r_customer, id))))
		rc = -ENOMEM;
cleanup:
	free(vals);
	free(sc);
	return rc;
}

/* uint64 → count map for item pairs. */
typedef struct pairmap {
	uint64_t *keys; /* key + 1; 0 = empty */
	size_t *vals;
	size_t cap, n;
} pairmap;

static uint64_t pair_slot_hash(const void *key)
{
	uint64_t k;
	memcpy(&k, key, sizeof(k));
	return mix64(k);
}

static int pair_add(pairmap *m, uint64_t key)
{
	if ((m->n + 1) * 2 > m->cap) {
		void *keys = m->keys;
		int rc = table_grow(&keys, &m->vals, &m->cap, 4096, sizeof(*m->keys), pair_slot_hash);
		m->keys = keys;
		if (rc)
			return rc;
	}
	size_t j = (size_t)mix64(key + 1) & (m->cap - 1);
	while (m->keys[j] && m->keys[j] != key + 1)
		j = (j + 1) & (m->cap - 1);
	if (!m->keys[j]) {
		m->keys[j] = key + 1;
		m->n++;
	}
	m->vals[j]++;
	return 0;
}

struct rule_ord {
	size_t ra, rb, k;
};

static int cmp_rule_ord(const void *a, const void *b)
{
	const struct rule_ord *x = a, *y = b;
	if (x->ra != y->ra)
		return x->ra < y->ra ? -1 : 1;
	return x->rb < y->rb ? -1 : x->rb > y->rb;
}

/* Item → item rules from purchase invoices: the support count threshold is
 * the smallest (>= 2) that leaves at most RULES_TARGET rules. */
static int retail_rules(retail *r)
{
	pairmap pm = {0};
	size_t *rank = NULL, *by_code = NULL, *hist = NULL, max = 0;
	struct rule_ord *ro = NULL;
	struct r_rule *rules = NULL;
	int rc = 0;

	for (size_t i = 0; i < r->n_invs && !rc; i++) {
		const struct r_invoice *v = &r->invs[i];
		size_t np = 0;
		if (v->cancelled)
			continue;
		for (size_t a = 0; a < v->n_skus; a++) {
			if (!r->skus[v->skus[a]].product)
				continue;
			np++;
			r->skus[v->skus[a]].invoices++;
			for (size_t b = 0; b < v->n_skus && !rc; b++)
				if (b != a && r->skus[v->skus[b]].product)
					rc = pair_add(&pm, (uint64_t)v->skus[a] << 32 | v->skus[b]);
		}
		if (np)
			r->purchase_invoices++;
	}
	if (rc)
		goto cleanup;
	for (size_t j = 0; j < pm.cap; j++)
		if (pm.keys[j] && pm.vals[j] > max)
			max = pm.vals[j];
	if (!(hist = calloc(max + 2, sizeof(*hist)))) {
		rc = -ENOMEM;
		goto cleanup;
	}
	for (size_t j = 0; j < pm.cap; j++)
		if (pm.keys[j])
			hist[pm.vals[j]]++;
	size_t t = max + 1, n_ge = 0; /* pairs with count >= t */
	while (t > 2 && n_ge + hist[t - 1] <= RULES_TARGET)
		n_ge += hist[--t];
	if (t > max)
		t = max < 2 ? 2 : max; /* even the top count alone exceeds the target */
	n_ge = 0;
	for (size_t c = t; c <= max; c++)
		n_ge += hist[c];
	r->counts.rule_min_count = (unsigned)t;
	if (!(by_code = sort_by_string(r->skus, r->n_skus, sizeof(*r->skus), offsetof(struct r_sku, code))) ||
	    !(rank = malloc((r->n_skus ? r->n_skus : 1) * sizeof(*rank))) ||
	    !(ro = malloc((n_ge ? n_ge : 1) * sizeof(*ro))) || !(rules = malloc((n_ge ? n_ge : 1) * sizeof(*rules)))) {
		rc = -ENOMEM;
		goto cleanup;
	}
	for (size_t i = 0; i < r->n_skus; i++)
		rank[by_code[i]] = i;
	size_t k = 0;
	for (size_t j = 0; j < pm.cap; j++) {
		if (!pm.keys[j] || pm.vals[j] < t)
			continue;
		uint64_t key = pm.keys[j] - 1;
		rules[k] = (struct r_rule){(size_t)(key >> 32), (size_t)(key & 0xffffffffu), pm.vals[j]};
		ro[k] = (struct rule_ord){rank[rules[k].a], rank[rules[k].b], k};
		k++;
	}
	qsort(ro, k, sizeof(*ro), cmp_rule_ord);
	if (!(r->rules = malloc((k ? k : 1) * sizeof(*r->rules)))) {
		rc = -ENOMEM;
		goto cleanup;
	}
	for (size_t i = 0; i < k; i++) {
		r->rules[i] = rules[ro[i].k];
		struct r_sku *a = &r->skus[r->rules[i].a];
		if (!a->n_rules)
			a->rule0 = i;
		a->n_rules++;
	}
	r->n_rules = k;
cleanup:
	free(pm.keys);
	free(pm.vals);
	free(rank);
	free(by_code);
	free(hist);
	free(ro);
	free(rules);
	return rc;
}

/* ---- the retail sample: writing ----------------------------------------- */

static void put_record(FILE *f, const char *key, const char *data)
{
	fputs("{\"key\":", f);
	fputs("\"", f);
	fputs(key, f);
	fputs("\",\"data\":", f);
	fputs(data, f);
	fputs("}\n", f);
}

static int cmp_recent(const void *a, const void *b, const retail *r)
{
	const struct r_invoice *x = &r->invs[*(const size_t *)a], *y = &r->invs[*(const size_t *)b];
	if (x->ts != y->ts)
		return x->ts > y->ts ? -1 : 1;
	return -strcmp(x->no, y->no);
}

/* The member's purchase invoices, newest first (insertion sort: a customer
 * has few invoices, and qsort has no context argument in C11). */
static size_t recent_invoices(const retail *r, const struct r_customer *c, size_t *out, size_t max)
{
	size_t n = 0;
	for (size_t k = 0; k < c->n_invoices; k++) {
		size_t ix = c->invoices[k];
		if (r->invs[ix].cancelled)
			continue;
		size_t p = n < max ? n++ : max;
		if (p == max && cmp_recent(&ix, &out[max - 1], r) >= 0)
			continue;
		if (p == max)
			p = max - 1;
		while (p > 0 && cmp_recent(&ix, &out[p - 1], r) < 0) {
			out[p] = out[p - 1];
			p--;
		}
		out[p] = ix;
	}
	return n;
}

/* Phone of the member at position pos (in id order): a bijection, as in
 * synth_phone, so unique. */
static void retail_phone(size_t pos, uint64_t seed, char out[24])
{
	const uint64_t mod = 100000000ULL;
	snprintf(out, 24, "4477%08" PRIu64, (uint64_t)(((uint64_t)pos % mod * 15485863u + mix64(seed ^ SALT_PHONE) % mod) % mod));
}

static void retail_member_json(const retail *r, size_t pos, uint64_t seed, struct sbuf *b)
{
	const struct r_customer *c = &r->custs[r->order[pos]];
	uint64_t h = mix64(seed ^ fnv1a(c->id)), h2 = mix64(h + 1), h3 = mix64(h + 2);
	const char *stage = retail_stage(r, c);
	const char *tier = retail_tier(c, c->top5);
	size_t recent[RECENT_MAX], cat_qty[N_RETAIL_CATS] = {0};
	char phone[24];
	int nt = 0;

	sb_puts(b, "{\"member_id\":");
	sb_jstr(b, c->id);
	if (strlen(c->id) <= 20)
		sb_add(b, ",\"card\":\"6000%s0\"", c->id);
	sb_add(b, ",\"tier\":\"%s\",\"tags\":[", tier);
	if (c->m == 5 && (c->f >= 4 || strcmp(tier, "platinum") == 0))
		sb_add(b, "%s\"VIP\"", nt++ ? "," : "");
	if (c->price_q == 5)
		sb_add(b, "%s\"price-sensitive\"", nt++ ? "," : "");
	if (c->lines > 0 && c->items / c->lines >= 24)
		sb_add(b, "%s\"bulk-buyer\"", nt++ ? "," : "");
	if (c->returns)
		sb_add(b, "%s\"returns\"", nt++ ? "," : "");
	if (strcmp(c->country, "United Kingdom") != 0)
		sb_add(b, "%s\"international\"", nt++ ? "," : "");
	sb_add(b, "],\"rfm\":{\"r\":%d,\"f\":%d,\"m\":%d,\"segment\":\"%s\"},\"ltv_band\":\"%s\"", c->r, c->f, c->m,
		  segment_of(c->r, c->f), c->m <= 2 ? "low" : c->m == 3 ? "medium" : "high");
	if (stage)
		sb_add(b, ",\"stage\":\"%s\"", stage);
	sb_add(b, ",\"consent\":{\"marketing\":%s,\"tracking\":%s}", h % 10 < 7 ? "true" : "false",
		  (h >> 8) % 2 ? "true" : "false");

	/* Preferred categories: the two it bought most of. */
	for (size_t k = 0; k < c->n_invoices; k++) {
		const struct r_invoice *v = &r->invs[c->invoices[k]];
		if (v->cancelled)
			continue;
		for (size_t j = 0; j < v->n_skus; j++) {
			const struct r_sku *s = &r->skus[v->skus[j]];
			if (s->product)
				cat_qty[retail_category(s, most_common_desc(s))]++;
		}
	}
	sb_puts(b, ",\"prefs\":{\"categories\":[");
	for (int pick = 0, put = 0; pick < 2; pick++) {
		size_t best = N_RETAIL_CATS;
		for (size_t k = 0; k < N_RETAIL_CATS; k++)
			if (cat_qty[k] && (best == N_RETAIL_CATS || cat_qty[k] > cat_qty[best]))
				best = k;
		if (best == N_RETAIL_CATS)
			break;
		sb_add(b, "%s\"%s\"", put++ ? "," : "", retail_category_name(best));
		cat_qty[best] = 0;
	}
	sb_add(b, "],\"channel\":\"%s\"}", channels[(h >> 16) % 4]);

	sb_add(b, ",\"stats\":{\"orders\":%" PRId64 ",\"spend\":%" PRId64 ",\"currency\":\"GBP\"", c->orders, c->spend);
	if (c->orders)
		sb_add(b, ",\"first_purchase_ms\":%" PRId64 ",\"last_purchase_ms\":%" PRId64, c->first, c->last);
	sb_add(b, ",\"as_of_ms\":%" PRId64 "},\"recent\":[", r->data_end);
	size_t nr = recent_invoices(r, c, recent, RECENT_MAX);
	for (size_t k = 0; k < nr; k++) {
		const struct r_invoice *v = &r->invs[recent[k]];
		sb_add(b, "%s{\"ts\":%" PRId64 ",\"order_id\":", k ? "," : "", v->ts);
		sb_jstr(b, v->no);
		sb_add(b, ",\"total\":%" PRId64 ",\"skus\":[", v->total);
		for (size_t j = 0; j < v->n_skus && j < RECENT_SKUS_MAX; j++)
			sb_add(b, "%s\"%s\"", j ? "," : "", r->skus[v->skus[j]].code);
		sb_puts(b, "]}");
	}
	retail_phone(pos, seed, phone);
	sb_add(b, "],\"pii\":{\"name\":\"%s %s\",\"phone\":\"%s\",\"birthday\":\"%04d-%02d-%02d\"}}",
		  first_names[h2 >> 59], last_names[h3 >> 59], phone, 1945 + (int)((h3 >> 30) % 60),
		  1 + (int)((h3 >> 36) % 12), 1 + (int)((h3 >> 40) % 28));
}

/* A non-negative number to 4 decimals, without the locale's decimal point. */
static void sb_frac(struct sbuf *b, double v)
{
	uint64_t u = (uint64_t)(v * 10000.0 + 0.5);
	sb_add(b, "%" PRIu64 ".%04" PRIu64, u / 10000, u % 10000);
}

static int write_members(const retail *r, const char *outdir, int64_t version, uint64_t seed)
{
	out_file o, idx;
	struct sbuf b = {0};
	int rc;
	if ((rc = out_open_stream(&o, outdir, CG_MEMBERS, version)))
		return rc;
	if ((rc = out_open(&idx, outdir, "members_index.tsv"))) {
		out_close(&o, 0);
		return rc;
	}
	for (size_t pos = 0; pos < r->n_custs && !b.oom; pos++) {
		const struct r_customer *c = &r->custs[r->order[pos]];
		char phone[24];
		b.len = 0;
		retail_member_json(r, pos, seed, &b);
		if (b.oom)
			break;
		put_record(o.f, c->id, b.p);
		retail_phone(pos, seed, phone);
		if (strlen(c->id) <= 20)
			fprintf(idx.f, "%s\t6000%s0\t%s\n", c->id, c->id, phone);
		else
			fprintf(idx.f, "%s\t\t%s\n", c->id, phone);
	}
	rc = b.oom ? -ENOMEM : 0;
	free(b.p);
	int rc2 = out_close(&o, !rc), rc3 = out_close(&idx, !rc && !rc2);
	return rc ? rc : rc2 ? rc2 : rc3;
}

/* SKUs that become catalogue records: valid keys, in code order. */
static size_t *catalogue_order(const retail *r, size_t *n)
{
	size_t *ord = sort_by_string(r->skus, r->n_skus, sizeof(*r->skus), offsetof(struct r_sku, code)), k = 0;
	if (!ord)
		return NULL;
	for (size_t i = 0; i < r->n_skus; i++)
		if (r->skus[ord[i]].valid)
			ord[k++] = ord[i];
	*n = k;
	return ord;
}

static int write_catalogue_inventory(retail *r, const char *outdir, int64_t version, uint64_t seed)
{
	out_file cat, inv;
	struct sbuf b = {0};
	size_t n = 0, *ord = catalogue_order(r, &n);
	int rc;
	if (!ord)
		return -ENOMEM;
	if ((rc = out_open_stream(&cat, outdir, CG_CATALOGUE, version))) {
		free(ord);
		return rc;
	}
	if ((rc = out_open_stream(&inv, outdir, CG_INVENTORY, version))) {
		out_close(&cat, 0);
		free(ord);
		return rc;
	}
	for (size_t i = 0; i < n && !b.oom; i++) {
		const struct r_sku *k = &r->skus[ord[i]];
		const char *name = most_common_desc(k);
		int64_t price = most_common_price(k);
		b.len = 0;
		sb_add(&b, "{\"sku\":\"%s\"", k->code);
		if (name) {
			char cut[201];
			snprintf(cut, sizeof(cut), "%s", name);
			sb_puts(&b, ",\"name\":");
			sb_jstr(&b, cut);
		}
		sb_add(&b, ",\"category\":\"%s\"", retail_category_name(retail_category(k, name)));
		if (price >= 0)
			sb_add(&b, ",\"price\":%" PRId64, price);
		sb_puts(&b, ",\"currency\":\"GBP\"}");
		if (b.oom)
			break;
		put_record(cat.f, k->code, b.p);
		r->counts.records[CG_CATALOGUE]++;
		if (!k->product)
			continue; /* postage, fees: nothing on a shelf */
		uint64_t h = mix64(seed ^ mix64(SALT_STOCK) ^ fnv1a(k->code));
		fprintf(inv.f, "{\"key\":\"%s\",\"data\":{\"sku\":\"%s\",\"qty\":%" PRIu64 ",\"as_of_ms\":%" PRId64 "}}\n",
			k->code, k->code, h % 10 == 0 ? 0 : (h >> 8) % 60, r->now);
		r->counts.records[CG_INVENTORY]++;
	}
	rc = b.oom ? -ENOMEM : 0;
	free(b.p);
	free(ord);
	int rc2 = out_close(&cat, !rc), rc3 = out_close(&inv, !rc && !rc2);
	return rc ? rc : rc2 ? rc2 : rc3;
}

static double rule_confidence(const retail *r, const struct r_rule *ru)
{
	return (double)ru->count / (double)r->skus[ru->a].invoices;
}

static int write_rules(retail *r, const char *outdir, int64_t version)
{
	out_file o;
	struct sbuf b = {0};
	char key[140];
	double n = (double)r->purchase_invoices;
	int rc;
	if ((rc = out_open_stream(&o, outdir, CG_RULES, version)))
		return rc;
	for (size_t i = 0; i < r->n_rules && !b.oom; i++) {
		const struct r_rule *ru = &r->rules[i];
		const char *a = r->skus[ru->a].code, *c = r->skus[ru->b].code;
		double conf = rule_confidence(r, ru);
		if (snprintf(key, sizeof(key), "%s>%s", a, c) > 64)
			continue; /* two long codes: the key would be invalid */
		b.len = 0;
		sb_add(&b, "{\"if\":\"%s\",\"then\":\"%s\",\"support\":", a, c);
		sb_frac(&b, (double)ru->count / n);
		sb_puts(&b, ",\"confidence\":");
		sb_frac(&b, conf);
		sb_puts(&b, ",\"lift\":");
		sb_frac(&b, conf / ((double)r->skus[ru->b].invoices / n));
		sb_puts(&b, "}");
		if (!b.oom) {
			put_record(o.f, key, b.p);
			r->counts.records[CG_RULES]++;
		}
	}
	rc = b.oom ? -ENOMEM : 0;
	free(b.p);
	int rc2 = out_close(&o, !rc);
	return rc ? rc : rc2;
}

/* Recommendations: the rules applied to what the member bought, summing the
 * confidence of every rule that points at an item not yet bought. */
static int write_recos(retail *r, const char *outdir, int64_t version)
{
	out_file o;
	struct sbuf b = {0};
	double *score = calloc(r->n_skus ? r->n_skus : 1, sizeof(*score));
	unsigned char *bought = calloc(r->n_skus ? r->n_skus : 1, 1);
	size_t *touched = malloc((r->n_skus ? r->n_skus : 1) * sizeof(*touched));
	int rc = !score || !bought || !touched ? -ENOMEM : 0;
	if (rc || (rc = out_open_stream(&o, outdir, CG_RECOS, version))) {
		free(score);
		free(bought);
		free(touched);
		return rc;
	}
	for (size_t pos = 0; pos < r->n_custs && !b.oom; pos++) {
		const struct r_customer *c = &r->custs[r->order[pos]];
		size_t nt = 0;
		for (size_t k = 0; k < c->n_invoices; k++) {
			const struct r_invoice *v = &r->invs[c->invoices[k]];
			if (!v->cancelled)
				for (size_t j = 0; j < v->n_skus; j++)
					bought[v->skus[j]] = 1;
		}
		for (size_t k = 0; k < c->n_invoices; k++) {
			const struct r_invoice *v = &r->invs[c->invoices[k]];
			if (v->cancelled)
				continue;
			for (size_t j = 0; j < v->n_skus; j++) {
				const struct r_sku *a = &r->skus[v->skus[j]];
				if (bought[v->skus[j]] != 1)
					continue; /* seen already in another invoice */
				bought[v->skus[j]] = 2;
				for (size_t q = a->rule0; q < a->rule0 + a->n_rules; q++) {
					size_t t = r->rules[q].b;
					if (bought[t])
						continue;
					if (score[t] == 0)
						touched[nt++] = t;
					score[t] += rule_confidence(r, &r->rules[q]);
				}
			}
		}
		if (nt) {
			b.len = 0;
			sb_puts(&b, "{\"member_id\":");
			sb_jstr(&b, c->id);
			sb_puts(&b, ",\"items\":[");
			for (int put = 0; put < RECOS_PER_MEMBER; put++) {
				size_t best = SIZE_MAX;
				for (size_t q = 0; q < nt; q++) {
					size_t t = touched[q];
					if (score[t] > 0 && (best == SIZE_MAX || score[t] > score[best] ||
							     (score[t] == score[best] && strcmp(r->skus[t].code, r->skus[best].code) < 0)))
						best = t;
				}
				if (best == SIZE_MAX)
					break;
				sb_add(&b, "%s{\"sku\":\"%s\",\"score\":", put ? "," : "", r->skus[best].code);
				sb_frac(&b, score[best]);
				sb_puts(&b, ",\"reason\":\"bought_with\"}");
				score[best] = -1;
			}
			sb_puts(&b, "]}");
			if (!b.oom) {
				put_record(o.f, c->id, b.p);
				r->counts.records[CG_RECOS]++;
			}
		}
		for (size_t q = 0; q < nt; q++)
			score[touched[q]] = 0;
		for (size_t k = 0; k < c->n_invoices; k++) {
			const struct r_invoice *v = &r->invs[c->invoices[k]];
			for (size_t j = 0; j < v->n_skus; j++)
				bought[v->skus[j]] = 0;
		}
	}
	/* The store's bestsellers (key "_store", protocol.md): the products in
	 * most purchase invoices, a cold-start fallback for the engine. */
	if (!b.oom) {
		size_t top[50], nt = 0, maxinv = 0;
		for (size_t i = 0; i < r->n_skus; i++) {
			const struct r_sku *k = &r->skus[i];
			if (!k->valid || !k->product || !k->invoices)
				continue;
			size_t at = nt < 50 ? nt++ : 50;
			while (at > 0) {
				const struct r_sku *p = &r->skus[top[at - 1]];
				if (p->invoices > k->invoices || (p->invoices == k->invoices && strcmp(p->code, k->code) < 0))
					break;
				if (at < 50)
					top[at] = top[at - 1];
				at--;
			}
			if (at < 50)
				top[at] = i;
		}
		for (size_t q = 0; q < nt; q++)
			if (r->skus[top[q]].invoices > maxinv)
				maxinv = r->skus[top[q]].invoices;
		if (nt) {
			b.len = 0;
			sb_puts(&b, "{\"member_id\":\"_store\",\"items\":[");
			for (size_t q = 0; q < nt; q++) {
				sb_add(&b, "%s{\"sku\":\"%s\",\"score\":", q ? "," : "", r->skus[top[q]].code);
				sb_frac(&b, (double)r->skus[top[q]].invoices / (double)maxinv);
				sb_puts(&b, ",\"reason\":\"bestseller\"}");
			}
			sb_puts(&b, "]}");
			if (!b.oom) {
				put_record(o.f, "_store", b.p);
				r->counts.records[CG_RECOS]++;
			}
		}
	}
	rc = b.oom ? -ENOMEM : 0;
	free(b.p);
	free(score);
	free(bought);
	free(touched);
	int rc2 = out_close(&o, !rc);
	return rc ? rc : rc2;
}

static const struct {
	const char *id, *body;
} retail_campaigns[4] = {
	/* public: percent off one category */
	{"XMAS10", "\"name\":\"10%% off Christmas decorations\",\"scope\":{\"skus\":[],\"categories\":[\"christmas\"]},"
		   "\"discount\":{\"kind\":\"percent\",\"value\":10},\"min_spend\":2000,\"currency\":\"GBP\","
		   "\"valid_from\":%" PRId64 ",\"valid_to\":%" PRId64 ",\"tiers\":[],\"tags\":[],\"per_member_limit\":1,"
		   "\"total_limit\":0,\"offline\":{\"allowed\":true,\"max_value\":1500},\"public\":true"},
	/* gold and platinum members only */
	{"GOLD5", "\"name\":\"5 pounds off for gold and platinum members\",\"scope\":{\"skus\":[],\"categories\":[]},"
		  "\"discount\":{\"kind\":\"amount\",\"value\":500},\"min_spend\":2500,\"currency\":\"GBP\","
		  "\"valid_from\":%" PRId64 ",\"valid_to\":%" PRId64 ",\"tiers\":[\"gold\",\"platinum\"],\"tags\":[],"
		  "\"per_member_limit\":1,\"total_limit\":0,\"offline\":{\"allowed\":true,\"max_value\":500},\"public\":false"},
	/* sleeping members: redeemable offline, capped */
	{"WAKEUP15", "\"name\":\"Welcome back: 15%% off\",\"scope\":{\"skus\":[],\"categories\":[]},"
		     "\"discount\":{\"kind\":\"percent\",\"value\":15},\"min_spend\":1000,\"currency\":\"GBP\","
		     "\"valid_from\":%" PRId64 ",\"valid_to\":%" PRId64 ",\"tiers\":[],\"tags\":[],\"stages\":[\"sleeping\"],"
		     "\"per_member_limit\":1,\"total_limit\":0,\"offline\":{\"allowed\":true,\"max_value\":1500},"
		     "\"public\":false"},
	/* needs central's online check: never redeemed while offline */
	{"WEB20", "\"name\":\"20%% off kitchen (online check required)\",\"scope\":{\"skus\":[],\"categories\":[\"kitchen\"]},"
		  "\"discount\":{\"kind\":\"percent\",\"value\":20},\"min_spend\":0,\"currency\":\"GBP\","
		  "\"valid_from\":%" PRId64 ",\"valid_to\":%" PRId64 ",\"tiers\":[],\"tags\":[],\"per_member_limit\":1,"
		  "\"total_limit\":500,\"offline\":{\"allowed\":false,\"max_value\":0},\"public\":true"},
};

static int put_signed(cg_signer *signer, const char *payload, FILE *f)
{
	char *rec = NULL;
	int rc = cg_signed_coupon_record(signer, payload, &rec);
	if (!rc) {
		fputs(rec, f);
		fputc('\n', f);
	}
	free(rec);
	return rc;
}

static int write_coupons(retail *r, cg_signer *signer, const char *outdir, int64_t version, uint64_t seed)
{
	out_file o;
	char body[1200], payload[1400];
	int64_t from = r->now - 7 * DAY_MS, to = r->now + 30 * DAY_MS;
	int rc;
	if ((rc = out_open_stream(&o, outdir, CG_COUPONS, version)))
		return rc;
	for (size_t k = 0; k < 4 && !rc; k++) {
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
#endif
		snprintf(body, sizeof(body), retail_campaigns[k].body, from, to);
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
		snprintf(payload, sizeof(payload), "{\"type\":\"campaign\",\"id\":\"%s\",%s}", retail_campaigns[k].id, body);
		if (!(rc = put_signed(signer, payload, o.f)))
			r->counts.records[CG_COUPONS]++;
	}
	/* Member coupons: every gold/platinum member gets GOLD5, every lapsing
	 * one WAKEUP15, and about a third XMAS10 and a seventh WEB20. */
	for (size_t pos = 0; pos < r->n_custs && !rc; pos++) {
		const struct r_customer *c = &r->custs[r->order[pos]];
		const char *stage = retail_stage(r, c), *tier = retail_tier(c, c->top5);
		uint64_t h = mix64(seed ^ mix64(SALT_COUPON) ^ fnv1a(c->id));
		int want[4] = {h % 3 == 0, strcmp(tier, "gold") == 0 || strcmp(tier, "platinum") == 0,
			       stage && (strcmp(stage, "sleeping") == 0 || strcmp(stage, "churn_risk") == 0 ||
					 strcmp(stage, "lost") == 0),
			       (h >> 8) % 7 == 1};
		if (strlen(c->id) > 36)
			continue; /* the coupon id would pass 48 bytes */
		for (int k = 0; k < 4 && !rc; k++) {
			char code[10];
			if (!want[k])
				continue;
			coupon_code(mix64(h + (uint64_t)k), code);
			snprintf(payload, sizeof(payload),
				 "{\"type\":\"coupon\",\"id\":\"C-%s-%s\",\"campaign\":\"%s\",\"member_id\":\"%s\",\"code\":\"%s\","
				 "\"valid_from\":%" PRId64 ",\"valid_to\":%" PRId64 ",\"uses\":1}",
				 retail_campaigns[k].id, c->id, retail_campaigns[k].id, c->id, code, r->now - DAY_MS, to);
			if (!(rc = put_signed(signer, payload, o.f)))
				r->counts.records[CG_COUPONS]++;
		}
	}
	int rc2 = out_close(&o, !rc);
	return rc ? rc : rc2;
}

static int write_scripts(retail *r, const char *tenant, const char *outdir, int64_t version)
{
	out_file o;
	cg_synth cfg;
	char data[CG_SYNTH_RECORD_MAX];
	int rc;
	cg_synth_init(&cfg);
	cfg.tenant = tenant;
	if ((rc = out_open_stream(&o, outdir, CG_SCRIPTS, version)))
		return rc;
	for (size_t i = 0; i < SYNTH_SCRIPTS; i++) {
		wbuf w = {data, sizeof(data), 0};
		synth_script(&cfg, i, &w);
		put_record(o.f, synth_scripts[i].id, data);
		r->counts.records[CG_SCRIPTS]++;
	}
	return out_close(&o, 1);
}

int cg_retail_build_opts(const cg_retail_opts *o, cg_signer *signer, cg_retail_counts *counts)
{
	retail r;
	int64_t version;
	int rc;

	memset(&r, 0, sizeof(r));
	if (counts)
		memset(counts, 0, sizeof(*counts));
	if (!o || !signer || !o->csv_path || !o->outdir)
		return fail(-EINVAL, "retail: csv_path, outdir and a signer are required");
	if (!key_ok(o->tenant))
		return fail(-EINVAL, "retail: tenant must be 1..64 bytes of [A-Za-z0-9_.:>-]");
	version = o->version > 0 ? o->version : 1;
	if (version > MAX_SAFE_INT || o->now_ms > MAX_SAFE_INT - 400 * DAY_MS)
		return fail(-EINVAL, "retail: version or now_ms out of range");
	if ((rc = retail_read(&r, o->csv_path)))
		goto cleanup;
	for (size_t i = 0; i < r.n_invs; i++) {
		if (r.invs[i].ts > r.data_end)
			r.data_end = r.invs[i].ts;
		if (r.invs[i].cancelled)
			r.counts.cancellations++;
	}
	r.counts.invoices = r.n_invs;
	if (r.n_invs == 0) {
		rc = fail(-EINVAL, "%s: no usable invoice lines", o->csv_path);
		goto cleanup;
	}
	r.now = o->now_ms > 0 ? o->now_ms : r.data_end;
	if ((rc = retail_customers(&r)) || (rc = retail_rules(&r)) || (rc = mkdirs(o->outdir, 0755)))
		goto cleanup;
	r.counts.records[CG_MEMBERS] = r.n_custs;
	if ((rc = write_members(&r, o->outdir, version, o->seed)) ||
	    (rc = write_coupons(&r, signer, o->outdir, version, o->seed)) ||
	    (rc = write_catalogue_inventory(&r, o->outdir, version, o->seed)) ||
	    (rc = write_scripts(&r, o->tenant, o->outdir, version)) || (rc = write_recos(&r, o->outdir, version)) ||
	    (rc = write_rules(&r, o->outdir, version)))
		goto cleanup;
	if (counts)
		*counts = r.counts;
cleanup:
	if (rc == -ENOMEM)
		fail(rc, "retail: out of memory");
	retail_free(&r);
	return rc;
}

int cg_retail_build(const char *csv_path, const char *tenant, cg_signer *signer, int64_t now_ms, const char *outdir,
		    uint64_t seed)
{
	cg_retail_opts o = {csv_path, tenant, outdir, now_ms, seed, 1};
	return cg_retail_build_opts(&o, signer, NULL);
}
