/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Test harness: throw-away PKI, mosquitto on loopback with TLS, tracked child
 * processes and a small MQTT 5 client for tests (see harness.h for the API).
 *
 * It owns the table of children it started (killed at exit) and, per
 * th_broker, the broker's config file and process. Nothing here is used by
 * the product; it favours robustness and clear failure messages over speed.
 */
#include "harness.h"
#include "testkit.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include <MQTTAsync.h>

#include <mbedtls/asn1write.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/md.h>
#include <mbedtls/oid.h>
#include <mbedtls/pem.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>
#include <mbedtls/x509_csr.h>

#define TH_MAX_CHILDREN 256
#define TH_MAX_ARGS 64

static void th_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void th_err(const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	fprintf(stderr, "harness: %s\n", line);
}

/* ======================================================================
 * time and files
 * ====================================================================== */

int64_t th_now_ms(void)
{
	return tk_mono_ms();
}

int64_t th_wall_ms(void)
{
	return tk_wall_ms();
}

void th_sleep_ms(int ms)
{
	struct timespec req, rem;

	if (ms <= 0)
		return;
	req.tv_sec = ms / 1000;
	req.tv_nsec = (long)(ms % 1000) * 1000000L;
	while (nanosleep(&req, &rem) != 0 && errno == EINTR)
		req = rem;
}

/* "dir/name" into a fresh malloc'd string. */
static char *path_join(const char *dir, const char *name)
{
	size_t n = strlen(dir) + 1 + strlen(name) + 1;
	char *p = malloc(n);

	if (p)
		snprintf(p, n, "%s/%s", dir, name);
	return p;
}

char *th_tmpdir(const char *name)
{
	const char *base = getenv("TMPDIR");
	char *path;
	size_t n;

	if (!base || !*base)
		base = "/tmp";
	if (!name || !*name || strchr(name, '/')) {
		th_err("th_tmpdir: bad name");
		return NULL;
	}
	n = strlen(base) + strlen(name) + sizeof "/scrm--XXXXXX";
	path = malloc(n);
	if (!path)
		return NULL;
	snprintf(path, n, "%s/scrm-%s-XXXXXX", base, name);
	if (!mkdtemp(path)) {
		th_err("mkdtemp %s: %s", path, strerror(errno));
		free(path);
		return NULL;
	}
	return path;
}

static int rmtree_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path) == 0 ? 0 : -1;
}

int th_rmtree(const char *path)
{
	if (nftw(path, rmtree_cb, 16, FTW_DEPTH | FTW_PHYS) != 0) {
		int e = errno ? errno : EIO;

		th_err("rmtree %s: %s", path, strerror(e));
		return -e;
	}
	return 0;
}

static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int write_file_mode(const char *path, const void *data, size_t len, mode_t mode)
{
	int fd, rc;

	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (fd < 0) {
		rc = -errno;
		th_err("open %s: %s", path, strerror(errno));
		return rc;
	}
	/* O_CREAT's mode only applies to new files; keys must end up private
	 * even when a test rewrites an existing file. */
	if (fchmod(fd, mode) != 0) {
		rc = -errno;
		goto cleanup;
	}
	rc = write_all(fd, data, len);
cleanup:
	if (rc != 0)
		th_err("write %s: %s", path, strerror(-rc));
	if (close(fd) != 0 && rc == 0)
		rc = -errno;
	return rc;
}

int th_write_file(const char *path, const char *text)
{
	return write_file_mode(path, text, strlen(text), 0644);
}

char *th_read_file(const char *path, size_t *len)
{
	char *buf = NULL;
	size_t cap = 0, used = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return NULL;
	for (;;) {
		ssize_t n;

		if (cap - used < 4096) {
			size_t ncap = cap ? cap * 2 : 8192;
			char *nbuf = realloc(buf, ncap);

			if (!nbuf)
				goto fail;
			buf = nbuf;
			cap = ncap;
		}
		n = read(fd, buf + used, cap - used - 1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			goto fail;
		}
		if (n == 0)
			break;
		used += (size_t)n;
	}
	close(fd);
	buf[used] = '\0';
	if (len)
		*len = used;
	return buf;
fail:
	close(fd);
	free(buf);
	return NULL;
}

void th_dump_log(const char *path, size_t max_bytes)
{
	size_t len = 0;
	char *text = th_read_file(path, &len);
	const char *from;

	if (!text) {
		fprintf(stderr, "----- %s: (cannot read) -----\n", path);
		return;
	}
	from = text;
	if (len > max_bytes)
		from = text + (len - max_bytes);
	fprintf(stderr, "----- %s (last %zu of %zu bytes) -----\n%s%s----- end of %s -----\n",
		path, len > max_bytes ? max_bytes : len, len, from,
		(len > 0 && text[len - 1] != '\n') ? "\n" : "", path);
	free(text);
}

/* ======================================================================
 * certificates (mbedTLS 2.28 API)
 * ====================================================================== */

#define CA_DN "CN=SCRM Test CA,O=SCRM Test"
#define OTHER_CA_DN "CN=SCRM Other Test CA,O=SCRM Elsewhere"

enum cert_role { ROLE_CA, ROLE_SERVER, ROLE_CLIENT };

struct cert_spec {
	const char *name;    /* files <name>.crt and <name>.key */
	const char *subject; /* distinguished name, mbedTLS string form */
	enum cert_role role;
	const char *dns[3];  /* subjectAltName DNS entries, NULL-terminated */
	int ip_loopback;     /* subjectAltName IP:127.0.0.1 */
};

struct th_rng {
	mbedtls_entropy_context entropy;
	mbedtls_ctr_drbg_context drbg;
};

static int rng_init(struct th_rng *r)
{
	static const char pers[] = "scrm-test-pki";

	mbedtls_entropy_init(&r->entropy);
	mbedtls_ctr_drbg_init(&r->drbg);
	return mbedtls_ctr_drbg_seed(&r->drbg, mbedtls_entropy_func, &r->entropy,
				     (const unsigned char *)pers, sizeof pers - 1);
}

static void rng_free(struct th_rng *r)
{
	mbedtls_ctr_drbg_free(&r->drbg);
	mbedtls_entropy_free(&r->entropy);
}

static int key_generate(mbedtls_pk_context *pk, struct th_rng *r)
{
	int rc = mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));

	if (rc != 0)
		return rc;
	return mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(*pk),
				   mbedtls_ctr_drbg_random, &r->drbg);
}

/* Prepend one primitive context-specific element [tag] IMPLICIT to the DER
 * being built backwards at *p. Returns bytes written or a negative error. */
static int asn1_put_implicit(unsigned char **p, unsigned char *start, unsigned char tag,
			     const void *data, size_t n)
{
	int a, b, c;

	a = mbedtls_asn1_write_raw_buffer(p, start, data, n);
	if (a < 0)
		return a;
	b = mbedtls_asn1_write_len(p, start, n);
	if (b < 0)
		return b;
	c = mbedtls_asn1_write_tag(p, start, (unsigned char)(MBEDTLS_ASN1_CONTEXT_SPECIFIC | tag));
	if (c < 0)
		return c;
	return a + b + c;
}

/* Wrap the len bytes just written in a SEQUENCE. */
static int asn1_put_sequence(unsigned char **p, unsigned char *start, size_t len)
{
	int a, b;

	a = mbedtls_asn1_write_len(p, start, len);
	if (a < 0)
		return a;
	b = mbedtls_asn1_write_tag(p, start, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE);
	if (b < 0)
		return b;
	return (int)len + a + b;
}

/* mbedTLS 2.28 has no setter for subjectAltName or extendedKeyUsage (3.x
 * added them), so both extensions are encoded here by hand. */
static int add_san(mbedtls_x509write_cert *crt, const struct cert_spec *s)
{
	static const unsigned char loopback[4] = { 127, 0, 0, 1 };
	unsigned char buf[512];
	unsigned char *p = buf + sizeof buf;
	size_t len = 0;
	int n, i;

	for (i = 2; i >= 0; i--) {
		if (!s->dns[i])
			continue;
		n = asn1_put_implicit(&p, buf, 2 /* dNSName */, s->dns[i], strlen(s->dns[i]));
		if (n < 0)
			return n;
		len += (size_t)n;
	}
	if (s->ip_loopback) {
		n = asn1_put_implicit(&p, buf, 7 /* iPAddress */, loopback, sizeof loopback);
		if (n < 0)
			return n;
		len += (size_t)n;
	}
	if (len == 0)
		return 0;
	n = asn1_put_sequence(&p, buf, len);
	if (n < 0)
		return n;
	return mbedtls_x509write_crt_set_extension(crt, MBEDTLS_OID_SUBJECT_ALT_NAME,
						   MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), 0,
						   p, (size_t)n);
}

static int add_eku(mbedtls_x509write_cert *crt, enum cert_role role)
{
	unsigned char buf[64];
	unsigned char *p = buf + sizeof buf;
	int n;

	if (role == ROLE_SERVER)
		n = mbedtls_asn1_write_oid(&p, buf, MBEDTLS_OID_SERVER_AUTH,
					   MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH));
	else
		n = mbedtls_asn1_write_oid(&p, buf, MBEDTLS_OID_CLIENT_AUTH,
					   MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH));
	if (n < 0)
		return n;
	n = asn1_put_sequence(&p, buf, (size_t)n);
	if (n < 0)
		return n;
	return mbedtls_x509write_crt_set_extension(crt, MBEDTLS_OID_EXTENDED_KEY_USAGE,
						   MBEDTLS_OID_SIZE(MBEDTLS_OID_EXTENDED_KEY_USAGE), 0,
						   p, (size_t)n);
}

/* Write <dir>/<name>.key for subject_key and <dir>/<name>.crt signed by
 * issuer_key (== subject_key for a self-signed CA). */
static int cert_issue(const char *dir, const struct cert_spec *s, mbedtls_pk_context *subject_key,
		      mbedtls_pk_context *issuer_key, const char *issuer_dn, struct th_rng *r)
{
	mbedtls_x509write_cert crt;
	mbedtls_mpi serial;
	unsigned char serial_bytes[16];
	unsigned char pem[4096];
	char not_before[16], file[256];
	struct tm tm;
	time_t t;
	int rc;

	mbedtls_x509write_crt_init(&crt);
	mbedtls_mpi_init(&serial);

	rc = mbedtls_pk_write_key_pem(subject_key, pem, sizeof pem);
	if (rc != 0)
		goto cleanup;
	snprintf(file, sizeof file, "%s/%s.key", dir, s->name);
	rc = write_file_mode(file, pem, strlen((const char *)pem), 0600);
	if (rc != 0)
		goto cleanup;

	mbedtls_x509write_crt_set_version(&crt, MBEDTLS_X509_CRT_VERSION_3);
	mbedtls_x509write_crt_set_md_alg(&crt, MBEDTLS_MD_SHA256);
	mbedtls_x509write_crt_set_subject_key(&crt, subject_key);
	mbedtls_x509write_crt_set_issuer_key(&crt, issuer_key);

	/* Random positive serials: two runs never issue the same (issuer,
	 * serial) pair, which TLS libraries may cache. */
	rc = mbedtls_ctr_drbg_random(&r->drbg, serial_bytes, sizeof serial_bytes);
	if (rc != 0)
		goto cleanup;
	serial_bytes[0] = (unsigned char)((serial_bytes[0] & 0x7f) | 0x01);
	rc = mbedtls_mpi_read_binary(&serial, serial_bytes, sizeof serial_bytes);
	if (rc == 0)
		rc = mbedtls_x509write_crt_set_serial(&crt, &serial);
	if (rc != 0)
		goto cleanup;

	/* Valid from yesterday, so a test machine whose clock is a little behind
	 * still accepts it; until 2049 so the encoding stays UTCTime. */
	t = time(NULL) - 86400;
	if (!gmtime_r(&t, &tm) || strftime(not_before, sizeof not_before, "%Y%m%d%H%M%S", &tm) != 14) {
		rc = -1;
		goto cleanup;
	}
	rc = mbedtls_x509write_crt_set_validity(&crt, not_before, "20491231235959");
	if (rc == 0)
		rc = mbedtls_x509write_crt_set_subject_name(&crt, s->subject);
	if (rc == 0)
		rc = mbedtls_x509write_crt_set_issuer_name(&crt, issuer_dn);
	if (rc == 0)
		rc = mbedtls_x509write_crt_set_basic_constraints(&crt, s->role == ROLE_CA, -1);
	if (rc == 0)
		rc = mbedtls_x509write_crt_set_subject_key_identifier(&crt);
	if (rc == 0)
		rc = mbedtls_x509write_crt_set_authority_key_identifier(&crt);
	if (rc == 0)
		rc = mbedtls_x509write_crt_set_key_usage(
			&crt, s->role == ROLE_CA ? (MBEDTLS_X509_KU_KEY_CERT_SIGN | MBEDTLS_X509_KU_CRL_SIGN)
						 : MBEDTLS_X509_KU_DIGITAL_SIGNATURE);
	if (rc == 0 && s->role != ROLE_CA)
		rc = add_eku(&crt, s->role);
	if (rc == 0)
		rc = add_san(&crt, s);
	if (rc != 0)
		goto cleanup;

	rc = mbedtls_x509write_crt_pem(&crt, pem, sizeof pem, mbedtls_ctr_drbg_random, &r->drbg);
	if (rc != 0)
		goto cleanup;
	snprintf(file, sizeof file, "%s/%s.crt", dir, s->name);
	rc = write_file_mode(file, pem, strlen((const char *)pem), 0644);

cleanup:
	if (rc != 0)
		th_err("certificate %s in %s: error %d (mbedTLS -0x%04x)", s->name, dir, rc,
		       rc < 0 ? (unsigned)-rc : 0u);
	mbedtls_mpi_free(&serial);
	mbedtls_x509write_crt_free(&crt);
	return rc;
}

static int cert_leaf(const char *dir, const struct cert_spec *s, mbedtls_pk_context *ca_key,
		     struct th_rng *r)
{
	mbedtls_pk_context key;
	int rc;

	mbedtls_pk_init(&key);
	rc = key_generate(&key, r);
	if (rc == 0)
		rc = cert_issue(dir, s, &key, ca_key, CA_DN, r);
	else
		th_err("key generation for %s: -0x%04x", s->name, (unsigned)-rc);
	mbedtls_pk_free(&key);
	return rc;
}

int th_certs_make(const char *dir)
{
	static const struct cert_spec ca = { "ca", CA_DN, ROLE_CA, { NULL }, 0 };
	static const struct cert_spec other = { "other-ca", OTHER_CA_DN, ROLE_CA, { NULL }, 0 };
	static const struct cert_spec leaves[] = {
		{ "server", "CN=localhost,O=SCRM Test", ROLE_SERVER, { "localhost", NULL }, 1 },
		{ "client", "CN=pos-01,O=SCRM Test", ROLE_CLIENT, { NULL }, 0 },
		{ "central", "CN=scrm-central,O=SCRM Test", ROLE_CLIENT, { NULL }, 0 },
		{ "wronghost", "CN=not-this-host.example,O=SCRM Test", ROLE_SERVER,
		  { "not-this-host.example", NULL }, 0 },
	};
	mbedtls_pk_context ca_key, other_key;
	struct th_rng r;
	size_t i;
	int rc;

	mbedtls_pk_init(&ca_key);
	mbedtls_pk_init(&other_key);
	rc = rng_init(&r);
	if (rc != 0) {
		th_err("mbedTLS RNG seed: -0x%04x", (unsigned)-rc);
		goto cleanup;
	}
	rc = key_generate(&ca_key, &r);
	if (rc == 0)
		rc = key_generate(&other_key, &r);
	if (rc != 0) {
		th_err("CA key generation: -0x%04x", (unsigned)-rc);
		goto cleanup;
	}
	rc = cert_issue(dir, &ca, &ca_key, &ca_key, CA_DN, &r);
	if (rc == 0)
		rc = cert_issue(dir, &other, &other_key, &other_key, OTHER_CA_DN, &r);
	for (i = 0; rc == 0 && i < sizeof leaves / sizeof leaves[0]; i++)
		rc = cert_leaf(dir, &leaves[i], &ca_key, &r);
cleanup:
	mbedtls_pk_free(&other_key);
	mbedtls_pk_free(&ca_key);
	rng_free(&r);
	return rc == 0 ? 0 : -EIO;
}

int th_certs_make_client(const char *dir, const char *name, const char *cn)
{
	mbedtls_pk_context ca_key;
	struct cert_spec spec = { name, NULL, ROLE_CLIENT, { NULL }, 0 };
	struct th_rng r;
	char subject[160], path[512];
	int rc;

	/* The CN goes into a DN string: ',' '=' '\\' would change its meaning. */
	if (!name || !*name || strchr(name, '/') || !cn || !*cn || strlen(cn) > 64 ||
	    strpbrk(cn, ",=\\+\"<>;")) {
		th_err("th_certs_make_client: bad name or CN");
		return -EINVAL;
	}
	snprintf(subject, sizeof subject, "CN=%s,O=SCRM Test", cn);
	spec.subject = subject;
	snprintf(path, sizeof path, "%s/ca.key", dir);

	mbedtls_pk_init(&ca_key);
	rc = rng_init(&r);
	if (rc == 0) {
		rc = mbedtls_pk_parse_keyfile(&ca_key, path, NULL);
		if (rc != 0)
			th_err("cannot load %s: -0x%04x", path, (unsigned)-rc);
	}
	if (rc == 0)
		rc = cert_leaf(dir, &spec, &ca_key, &r);
	mbedtls_pk_free(&ca_key);
	rng_free(&r);
	return rc == 0 ? 0 : -EIO;
}

/* A DN as mbedtls_x509_dn_gets prints it ("CN=d1, O=t1") in the form
 * mbedtls_x509write_*_set_*_name parses (no blank after the commas). */
static int dn_string(const mbedtls_x509_name *dn, char *out, size_t n)
{
	char buf[512];
	size_t j = 0;

	if (mbedtls_x509_dn_gets(buf, sizeof buf, dn) < 0)
		return -1;
	for (size_t i = 0; buf[i] && j + 1 < n; i++) {
		if (buf[i] == ' ' && i > 0 && buf[i - 1] == ',')
			continue;
		out[j++] = buf[i];
	}
	out[j] = '\0';
	return 0;
}

int th_sign_csr(const char *dir, const char *ca_name, const char *csr_path, const char *out_crt_path,
		int days)
{
	mbedtls_x509_csr csr;
	mbedtls_x509_crt ca;
	mbedtls_pk_context ca_key;
	mbedtls_x509write_cert crt;
	mbedtls_mpi serial;
	struct th_rng r;
	unsigned char serial_bytes[16], pem[4096];
	char path[512], subject[512], issuer[512], nb[16], na[16];
	struct tm tm;
	time_t now = time(NULL), t_nb, t_na;
	int rc;

	mbedtls_x509_csr_init(&csr);
	mbedtls_x509_crt_init(&ca);
	mbedtls_pk_init(&ca_key);
	mbedtls_x509write_crt_init(&crt);
	mbedtls_mpi_init(&serial);
	rc = rng_init(&r);
	if (rc == 0 && (rc = mbedtls_x509_csr_parse_file(&csr, csr_path)) != 0)
		th_err("th_sign_csr: cannot parse the CSR %s: -0x%04x", csr_path, (unsigned)-rc);
	if (rc == 0) {
		snprintf(path, sizeof path, "%s/%s.crt", dir, ca_name);
		if ((rc = mbedtls_x509_crt_parse_file(&ca, path)) != 0)
			th_err("th_sign_csr: cannot load %s: -0x%04x", path, (unsigned)-rc);
	}
	if (rc == 0) {
		snprintf(path, sizeof path, "%s/%s.key", dir, ca_name);
		if ((rc = mbedtls_pk_parse_keyfile(&ca_key, path, NULL)) != 0)
			th_err("th_sign_csr: cannot load %s: -0x%04x", path, (unsigned)-rc);
	}
	if (rc != 0)
		goto cleanup;
	if (days >= 0) {
		t_nb = now - 86400;
		t_na = now + (time_t)days * 86400;
	} else {
		t_na = now + (time_t)days * 86400;
		t_nb = t_na - 86400;
	}
	if (!gmtime_r(&t_nb, &tm) || strftime(nb, sizeof nb, "%Y%m%d%H%M%S", &tm) != 14 ||
	    !gmtime_r(&t_na, &tm) || strftime(na, sizeof na, "%Y%m%d%H%M%S", &tm) != 14 ||
	    dn_string(&csr.subject, subject, sizeof subject) != 0 ||
	    dn_string(&ca.subject, issuer, sizeof issuer) != 0) {
		rc = -1;
		goto cleanup;
	}
	mbedtls_x509write_crt_set_version(&crt, MBEDTLS_X509_CRT_VERSION_3);
	mbedtls_x509write_crt_set_md_alg(&crt, MBEDTLS_MD_SHA256);
	mbedtls_x509write_crt_set_subject_key(&crt, &csr.pk);
	mbedtls_x509write_crt_set_issuer_key(&crt, &ca_key);
	rc = mbedtls_ctr_drbg_random(&r.drbg, serial_bytes, sizeof serial_bytes);
	serial_bytes[0] = (unsigned char)((serial_bytes[0] & 0x7f) | 0x01);
	if (rc == 0)
		rc = mbedtls_mpi_read_binary(&serial, serial_bytes, sizeof serial_bytes);
	if (rc == 0)
		rc = mbedtls_x509write_crt_set_serial(&crt, &serial);
	if (rc == 0)
		rc = mbedtls_x509write_crt_set_validity(&crt, nb, na);
	if (rc == 0)
		rc = mbedtls_x509write_crt_set_subject_name(&crt, subject);
	if (rc == 0)
		rc = mbedtls_x509write_crt_set_issuer_name(&crt, issuer);
	if (rc == 0)
		rc = mbedtls_x509write_crt_set_basic_constraints(&crt, 0, -1);
	if (rc == 0)
		rc = mbedtls_x509write_crt_set_subject_key_identifier(&crt);
	if (rc == 0)
		rc = mbedtls_x509write_crt_set_authority_key_identifier(&crt);
	if (rc == 0)
		rc = mbedtls_x509write_crt_set_key_usage(&crt, MBEDTLS_X509_KU_DIGITAL_SIGNATURE);
	if (rc == 0)
		rc = add_eku(&crt, ROLE_CLIENT);
	if (rc == 0)
		rc = mbedtls_x509write_crt_pem(&crt, pem, sizeof pem, mbedtls_ctr_drbg_random, &r.drbg);
	if (rc == 0)
		rc = write_file_mode(out_crt_path, pem, strlen((const char *)pem), 0644);
	else
		th_err("th_sign_csr: signing %s: -0x%04x", csr_path, (unsigned)-rc);
cleanup:
	mbedtls_mpi_free(&serial);
	mbedtls_x509write_crt_free(&crt);
	mbedtls_pk_free(&ca_key);
	mbedtls_x509_crt_free(&ca);
	mbedtls_x509_csr_free(&csr);
	rng_free(&r);
	return rc == 0 ? 0 : -EIO;
}

/* ASN.1 UTCTime of t (years 1950..2049, as RFC 5280 wants). */
static int asn1_put_utctime(unsigned char **p, unsigned char *start, time_t t)
{
	char s[16];
	struct tm tm;

	if (!gmtime_r(&t, &tm) || strftime(s, sizeof s, "%y%m%d%H%M%SZ", &tm) != 13)
		return -1;
	return mbedtls_asn1_write_tagged_string(p, start, MBEDTLS_ASN1_UTC_TIME, s, 13);
}

/* mbedTLS 2.28 writes certificates and CSRs but not CRLs, so the CRL is put
 * together here (RFC 5280 5.1), written back to front as asn1write does:
 *   CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue }
 *   TBSCertList ::= SEQUENCE { version v2, signature, issuer, thisUpdate,
 *                              nextUpdate, revokedCertificates OPTIONAL }
 * The issuer is the CA certificate's subject copied byte for byte, so the
 * broker's name match cannot depend on how a DN string is re-encoded. */
int th_certs_make_crl(const char *dir, const char *ca_name, const char *const revoked_crt[], const char *out_path,
		      int days)
{
	static const char sig_oid[] = MBEDTLS_OID_ECDSA_SHA256;
	mbedtls_x509_crt ca, leaf;
	mbedtls_pk_context ca_key;
	struct th_rng r;
	unsigned char tbs[8192], crl[10240], hash[32], sig[MBEDTLS_PK_SIGNATURE_MAX_SIZE], pem[16384];
	unsigned char *p = tbs + sizeof tbs, *q = crl + sizeof crl;
	size_t sig_len = 0, olen = 0, tbs_len, len;
	char path[512];
	time_t now = time(NULL);
	int rc, n = 0, nrev = 0;

	mbedtls_x509_crt_init(&ca);
	mbedtls_pk_init(&ca_key);
	rc = rng_init(&r);
	if (rc == 0) {
		snprintf(path, sizeof path, "%s/%s.crt", dir, ca_name);
		if ((rc = mbedtls_x509_crt_parse_file(&ca, path)) != 0)
			th_err("th_certs_make_crl: cannot load %s: -0x%04x", path, (unsigned)-rc);
	}
	if (rc == 0) {
		snprintf(path, sizeof path, "%s/%s.key", dir, ca_name);
		if ((rc = mbedtls_pk_parse_keyfile(&ca_key, path, NULL)) != 0)
			th_err("th_certs_make_crl: cannot load %s: -0x%04x", path, (unsigned)-rc);
	}
	if (rc != 0)
		goto cleanup;

	/* revokedCertificates: SEQUENCE OF SEQUENCE { userCertificate, revocationDate } */
	len = 0;
	for (size_t i = 0; revoked_crt && revoked_crt[i]; i++) {
		size_t entry = 0;
		mbedtls_x509_crt_init(&leaf);
		rc = mbedtls_x509_crt_parse_file(&leaf, revoked_crt[i]);
		if (rc != 0) {
			th_err("th_certs_make_crl: cannot load %s: -0x%04x", revoked_crt[i], (unsigned)-rc);
			mbedtls_x509_crt_free(&leaf);
			goto cleanup;
		}
		if ((n = asn1_put_utctime(&p, tbs, now - 60)) >= 0) {
			entry += (size_t)n;
			/* the serial's content octets as the certificate holds them */
			n = mbedtls_asn1_write_raw_buffer(&p, tbs, leaf.serial.p, leaf.serial.len);
		}
		if (n >= 0) {
			entry += (size_t)n;
			n = mbedtls_asn1_write_len(&p, tbs, leaf.serial.len);
		}
		if (n >= 0) {
			entry += (size_t)n;
			n = mbedtls_asn1_write_tag(&p, tbs, MBEDTLS_ASN1_INTEGER);
		}
		if (n >= 0) {
			entry += (size_t)n;
			n = asn1_put_sequence(&p, tbs, entry);
		}
		mbedtls_x509_crt_free(&leaf);
		if (n < 0) {
			rc = n;
			goto cleanup;
		}
		len += (size_t)n;
		nrev++;
	}
	if (nrev > 0 && (n = asn1_put_sequence(&p, tbs, len)) >= 0)
		len = (size_t)n;
	/* nextUpdate, thisUpdate, issuer, signature, version */
	if (n >= 0 && (n = asn1_put_utctime(&p, tbs, now + (time_t)days * 86400)) >= 0)
		len += (size_t)n;
	if (n >= 0 && (n = asn1_put_utctime(&p, tbs, days >= 0 ? now - 86400 : now + (time_t)(days - 1) * 86400)) >= 0)
		len += (size_t)n;
	if (n >= 0 && (n = mbedtls_asn1_write_raw_buffer(&p, tbs, ca.subject_raw.p, ca.subject_raw.len)) >= 0)
		len += (size_t)n;
	/* ecdsa-with-SHA256: parameters absent (RFC 5758 3.2) */
	if (n >= 0 && (n = mbedtls_asn1_write_oid(&p, tbs, sig_oid, MBEDTLS_OID_SIZE(sig_oid))) >= 0 &&
	    (n = asn1_put_sequence(&p, tbs, (size_t)n)) >= 0)
		len += (size_t)n;
	if (n >= 0 && (n = mbedtls_asn1_write_int(&p, tbs, 1)) >= 0)
		len += (size_t)n;
	if (n >= 0 && (n = asn1_put_sequence(&p, tbs, len)) >= 0)
		tbs_len = (size_t)n;
	if (n < 0) {
		rc = n;
		th_err("th_certs_make_crl: encoding: -0x%04x", (unsigned)-rc);
		goto cleanup;
	}

	rc = mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), p, tbs_len, hash);
	if (rc == 0)
		rc = mbedtls_pk_sign(&ca_key, MBEDTLS_MD_SHA256, hash, sizeof hash, sig, &sig_len,
				     mbedtls_ctr_drbg_random, &r.drbg);
	if (rc != 0) {
		th_err("th_certs_make_crl: signing: -0x%04x", (unsigned)-rc);
		goto cleanup;
	}
	len = 0;
	if ((n = mbedtls_asn1_write_bitstring(&q, crl, sig, sig_len * 8)) >= 0)
		len += (size_t)n;
	if (n >= 0 && (n = mbedtls_asn1_write_oid(&q, crl, sig_oid, MBEDTLS_OID_SIZE(sig_oid))) >= 0 &&
	    (n = asn1_put_sequence(&q, crl, (size_t)n)) >= 0)
		len += (size_t)n;
	if (n >= 0 && (n = mbedtls_asn1_write_raw_buffer(&q, crl, p, tbs_len)) >= 0)
		len += (size_t)n;
	if (n >= 0 && (n = asn1_put_sequence(&q, crl, len)) >= 0)
		len = (size_t)n;
	if (n >= 0)
		n = mbedtls_pem_write_buffer("-----BEGIN X509 CRL-----\n", "-----END X509 CRL-----\n", q, len, pem,
					     sizeof pem, &olen);
	if (n != 0) {
		rc = n;
		th_err("th_certs_make_crl: encoding: -0x%04x", (unsigned)-rc);
		goto cleanup;
	}
	rc = write_file_mode(out_path, pem, strlen((const char *)pem), 0644);
cleanup:
	mbedtls_pk_free(&ca_key);
	mbedtls_x509_crt_free(&ca);
	rng_free(&r);
	return rc == 0 ? 0 : -EIO;
}

/* ======================================================================
 * processes
 * ====================================================================== */

static pthread_mutex_t g_child_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t g_children[TH_MAX_CHILDREN];
static size_t g_nchildren;
static pthread_once_t g_atexit_once = PTHREAD_ONCE_INIT;

static void register_atexit(void)
{
	atexit(th_kill_all);
}

static int child_track(pid_t pid)
{
	int rc = 0;

	pthread_mutex_lock(&g_child_lock);
	if (g_nchildren < TH_MAX_CHILDREN)
		g_children[g_nchildren++] = pid;
	else
		rc = -EMFILE;
	pthread_mutex_unlock(&g_child_lock);
	return rc;
}

static void child_untrack(pid_t pid)
{
	size_t i;

	pthread_mutex_lock(&g_child_lock);
	for (i = 0; i < g_nchildren; i++) {
		if (g_children[i] == pid) {
			g_children[i] = g_children[--g_nchildren];
			break;
		}
	}
	pthread_mutex_unlock(&g_child_lock);
}

void th_kill_all(void)
{
	pid_t pids[TH_MAX_CHILDREN];
	size_t i, n;

	pthread_mutex_lock(&g_child_lock);
	n = g_nchildren;
	memcpy(pids, g_children, n * sizeof pids[0]);
	g_nchildren = 0;
	pthread_mutex_unlock(&g_child_lock);
	for (i = 0; i < n; i++) {
		kill(pids[i], SIGKILL);
		while (waitpid(pids[i], NULL, 0) < 0 && errno == EINTR)
			;
	}
}

/* Resolve argv0 against PATH in the parent: after fork() the child may only
 * call async-signal-safe functions (the test has Paho threads), so execvp's
 * allocations are off limits there. */
static int resolve_exe(const char *argv0, char *out, size_t outlen)
{
	const char *path, *p;

	if (strchr(argv0, '/')) {
		if (strlen(argv0) >= outlen)
			return -ENAMETOOLONG;
		memcpy(out, argv0, strlen(argv0) + 1);
		return access(out, X_OK) == 0 ? 0 : -errno;
	}
	path = getenv("PATH");
	if (!path || !*path)
		path = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";
	for (p = path; *p;) {
		const char *end = strchr(p, ':');
		size_t dlen = end ? (size_t)(end - p) : strlen(p);
		int n;

		if (dlen == 0) /* an empty PATH entry means the current directory */
			n = snprintf(out, outlen, "./%s", argv0);
		else
			n = snprintf(out, outlen, "%.*s/%s", (int)dlen, p, argv0);
		if (n > 0 && (size_t)n < outlen && access(out, X_OK) == 0)
			return 0;
		if (!end)
			break;
		p = end + 1;
	}
	return -ENOENT;
}

/* Split SCRM_TEST_EMULATOR into words (space/tab separated, no quoting) in
 * the caller's buffer. Returns the word count. */
static size_t emulator_words(char *buf, size_t buflen, const char *words[], size_t max)
{
	const char *env = getenv("SCRM_TEST_EMULATOR");
	size_t n = 0;
	char *save = NULL, *tok;

	if (!env || !*env || strlen(env) >= buflen)
		return 0;
	memcpy(buf, env, strlen(env) + 1);
	for (tok = strtok_r(buf, " \t", &save); tok && n < max; tok = strtok_r(NULL, " \t", &save))
		words[n++] = tok;
	return n;
}

static pid_t spawn_full(const char *const prefix[], size_t nprefix, const char *const argv[],
			const char *log_path)
{
	const char *args[TH_MAX_ARGS + 1];
	char exe[4096];
	size_t n = 0, i;
	int logfd = -1, nullfd = -1, errpipe[2] = { -1, -1 };
	pid_t parent = getpid(), pid = -1;
	int rc, child_errno = 0;
	ssize_t got;

	pthread_once(&g_atexit_once, register_atexit);
	if (!argv || !argv[0]) {
		th_err("spawn: empty argv");
		return -EINVAL;
	}
	for (i = 0; i < nprefix && n < TH_MAX_ARGS; i++)
		args[n++] = prefix[i];
	for (i = 0; argv[i] && n < TH_MAX_ARGS; i++)
		args[n++] = argv[i];
	if (argv[i]) {
		th_err("spawn %s: too many arguments", argv[0]);
		return -E2BIG;
	}
	args[n] = NULL;

	rc = resolve_exe(args[0], exe, sizeof exe);
	if (rc != 0) {
		th_err("spawn: cannot execute %s: %s", args[0], strerror(-rc));
		return rc;
	}
	nullfd = open("/dev/null", O_RDWR | O_CLOEXEC);
	logfd = log_path ? open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)
			 : open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (nullfd < 0 || logfd < 0) {
		rc = -errno;
		th_err("spawn %s: open %s: %s", args[0], log_path ? log_path : "/dev/null",
		       strerror(errno));
		goto cleanup;
	}
	/* The child reports a failed exec through this pipe; a successful exec
	 * closes it (O_CLOEXEC), so the parent reads EOF. */
	if (pipe2(errpipe, O_CLOEXEC) != 0) {
		rc = -errno;
		goto cleanup;
	}

	pid = fork();
	if (pid < 0) {
		rc = -errno;
		th_err("fork: %s", strerror(errno));
		goto cleanup;
	}
	if (pid == 0) {
		sigset_t none;
		int e;

		sigemptyset(&none);
		pthread_sigmask(SIG_SETMASK, &none, NULL);
		/* Ignored signals stay ignored across exec: Paho ignores SIGPIPE
		 * in this process, a child daemon must not inherit that. */
		signal(SIGPIPE, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		signal(SIGHUP, SIG_DFL);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127); /* the test died before prctl took effect */
		if (dup2(nullfd, 0) < 0 || dup2(logfd, 1) < 0 || dup2(logfd, 2) < 0) {
			e = errno;
		} else {
			execv(exe, (char *const *)args);
			e = errno;
		}
		(void)!write(errpipe[1], &e, sizeof e);
		_exit(127);
	}

	close(errpipe[1]);
	errpipe[1] = -1;
	do {
		got = read(errpipe[0], &child_errno, sizeof child_errno);
	} while (got < 0 && errno == EINTR);
	if (got == (ssize_t)sizeof child_errno) {
		rc = -child_errno;
		th_err("exec %s: %s", exe, strerror(child_errno));
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
		pid = -1;
		goto cleanup;
	}
	rc = child_track(pid);
	if (rc != 0) {
		th_err("spawn: too many children");
		kill(pid, SIGKILL);
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
		pid = -1;
	}

cleanup:
	if (errpipe[0] >= 0)
		close(errpipe[0]);
	if (errpipe[1] >= 0)
		close(errpipe[1]);
	if (logfd >= 0)
		close(logfd);
	if (nullfd >= 0)
		close(nullfd);
	return rc != 0 ? rc : pid;
}

pid_t th_spawn(const char *const argv[], const char *log_path)
{
	return spawn_full(NULL, 0, argv, log_path);
}

pid_t th_spawn_target(const char *const argv[], const char *log_path)
{
	char buf[1024];
	const char *words[16];
	size_t n = emulator_words(buf, sizeof buf, words, 16);

	return spawn_full(words, n, argv, log_path);
}

int th_kill(pid_t pid, int sig)
{
	if (pid <= 0)
		return -EINVAL;
	return kill(pid, sig) == 0 ? 0 : -errno;
}

int th_wait(pid_t pid, int timeout_ms, int *status)
{
	int64_t deadline = timeout_ms < 0 ? INT64_MAX : th_now_ms() + timeout_ms;
	int nap = 1;

	if (pid <= 0)
		return -EINVAL;
	for (;;) {
		int st = 0;
		pid_t r = waitpid(pid, &st, WNOHANG);

		if (r == pid) {
			child_untrack(pid);
			if (status)
				*status = st;
			return 0;
		}
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (th_now_ms() >= deadline)
			return -ETIMEDOUT;
		th_sleep_ms(nap);
		if (nap < 20)
			nap *= 2;
	}
}

int th_exit_code(int status)
{
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return 255;
}

int th_stop(pid_t pid, int timeout_ms)
{
	int st = 0, rc;

	rc = th_kill(pid, SIGTERM);
	if (rc != 0 && rc != -ESRCH)
		return rc;
	rc = th_wait(pid, timeout_ms, &st);
	if (rc == -ETIMEDOUT) {
		th_err("pid %d ignored SIGTERM for %d ms: SIGKILL", (int)pid, timeout_ms);
		kill(pid, SIGKILL);
		rc = th_wait(pid, -1, &st);
	}
	return rc != 0 ? rc : th_exit_code(st);
}

static int run_common(pid_t pid, int timeout_ms)
{
	int st = 0, rc;

	if (pid < 0)
		return (int)pid;
	rc = th_wait(pid, timeout_ms, &st);
	if (rc == -ETIMEDOUT) {
		th_err("pid %d still running after %d ms: killed", (int)pid, timeout_ms);
		kill(pid, SIGKILL);
		th_wait(pid, -1, NULL);
		return -ETIMEDOUT;
	}
	return rc != 0 ? rc : th_exit_code(st);
}

int th_run(const char *const argv[], const char *log_path, int timeout_ms)
{
	return run_common(th_spawn(argv, log_path), timeout_ms);
}

int th_run_target(const char *const argv[], const char *log_path, int timeout_ms)
{
	return run_common(th_spawn_target(argv, log_path), timeout_ms);
}

int th_wait_log(const char *path, const char *needle, int timeout_ms)
{
	int64_t deadline = th_now_ms() + timeout_ms;
	size_t nlen = strlen(needle);
	off_t scanned = 0; /* bytes already searched without a match */
	char *buf = NULL;
	int rc = -ETIMEDOUT;

	for (;;) {
		int fd = open(path, O_RDONLY | O_CLOEXEC);

		if (fd >= 0) {
			struct stat st;

			if (fstat(fd, &st) == 0) {
				off_t from;
				size_t want;
				ssize_t got;

				if (st.st_size < scanned)
					scanned = 0; /* truncated and rewritten */
				/* Re-read the tail of the part already searched, in
				 * case the needle straddles the old end. */
				from = scanned - (off_t)(nlen > 0 ? nlen - 1 : 0);
				if (from < 0)
					from = 0;
				want = (size_t)(st.st_size - from);
				free(buf);
				buf = malloc(want + 1);
				got = buf ? pread(fd, buf, want, from) : -1;
				if (got >= 0 && memmem(buf, (size_t)got, needle, nlen)) {
					close(fd);
					rc = 0;
					break;
				}
				if (got > 0)
					scanned = from + got;
			}
			close(fd);
		}
		if (th_now_ms() >= deadline)
			break;
		th_sleep_ms(10);
	}
	free(buf);
	return rc;
}

const char *th_bin(const char *env_name)
{
	const char *v = getenv(env_name);

	if (!v || !*v) {
		th_err("%s is not set (the test's CMake ENVIRONMENT provides it)", env_name);
		return NULL;
	}
	return v;
}

/* ======================================================================
 * network and broker
 * ====================================================================== */

int th_free_port(void)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof sa;
	int fd, rc;

	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sa.sin_port = 0;
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
		rc = -errno;
		close(fd);
		th_err("free port: %s", strerror(-rc));
		return rc;
	}
	close(fd);
	return ntohs(sa.sin_port);
}

static int tcp_accepts(int port)
{
	struct sockaddr_in sa;
	int fd, ok;

	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sa.sin_port = htons((uint16_t)port);
	ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
	close(fd);
	return ok;
}

struct th_broker {
	char *dir;
	char *conf_path;
	char *log_path;
	char *conf_text;
	char uri[64];
	int port;
	pid_t pid;
};

static int broker_launch(th_broker *b)
{
	const char *mosq = getenv("SCRM_MOSQUITTO");
	const char *argv[4];
	int64_t deadline;
	int rc, st = 0;

	if (!mosq || !*mosq)
		mosq = "mosquitto";
	/* Rewritten on every start: another broker in the same dir may have
	 * replaced it in the meantime. */
	rc = th_write_file(b->conf_path, b->conf_text);
	if (rc != 0)
		return rc;
	argv[0] = mosq;
	argv[1] = "-c";
	argv[2] = b->conf_path;
	argv[3] = NULL;
	b->pid = th_spawn(argv, b->log_path);
	if (b->pid < 0) {
		rc = (int)b->pid;
		b->pid = -1;
		return rc;
	}
	deadline = th_now_ms() + 10000;
	for (;;) {
		if (tcp_accepts(b->port))
			return 0;
		if (th_wait(b->pid, 0, &st) == 0) {
			th_err("mosquitto exited (code %d) before listening on port %d",
			       th_exit_code(st), b->port);
			th_dump_log(b->log_path, 2000);
			b->pid = -1;
			return -ECHILD;
		}
		if (th_now_ms() >= deadline)
			break;
		th_sleep_ms(20);
	}
	th_err("mosquitto not accepting on port %d after 10 s", b->port);
	th_dump_log(b->log_path, 2000);
	kill(b->pid, SIGKILL);
	th_wait(b->pid, -1, NULL);
	b->pid = -1;
	return -ETIMEDOUT;
}

th_broker *th_broker_start(const char *dir, int port, const char *cert_name,
			   int require_client_cert)
{
	return th_broker_start_ex(dir, port, cert_name, require_client_cert, NULL);
}

th_broker *th_broker_start_ex(const char *dir, int port, const char *cert_name,
			      int require_client_cert, const char *extra_conf)
{
	char conf[4096];
	int n;

	if (!dir || !cert_name || !*cert_name || strchr(cert_name, '/')) {
		th_err("th_broker_start: bad arguments");
		return NULL;
	}
	if (port <= 0) {
		port = th_free_port();
		if (port < 0)
			return NULL;
	}
	/* When the harness runs as root, mosquitto would drop to the
	 * "mosquitto" user and then fail to read keys in a 0700 temp dir:
	 * "user root" keeps it as the harness user. */
	n = snprintf(conf, sizeof conf,
		     "# written by the SCRM test harness\n"
		     "per_listener_settings false\n"
		     "persistence false\n"
		     "log_dest file %s/mosquitto.log\n"
		     "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
		     "log_timestamp_format %%Y-%%m-%%dT%%H:%%M:%%S\n"
		     "%s"
		     "allow_anonymous %s\n"
		     "listener %d 127.0.0.1\n"
		     "cafile %s/ca.crt\n"
		     "certfile %s/%s.crt\n"
		     "keyfile %s/%s.key\n"
		     "%s"
		     "%s%s",
		     dir, geteuid() == 0 ? "user root\n" : "",
		     require_client_cert ? "false" : "true", port, dir, dir, cert_name, dir,
		     cert_name,
		     require_client_cert ? "require_certificate true\nuse_identity_as_username true\n"
					 : "require_certificate false\n",
		     extra_conf ? extra_conf : "",
		     extra_conf && *extra_conf && extra_conf[strlen(extra_conf) - 1] != '\n' ? "\n"
											     : "");
	if (n < 0 || (size_t)n >= sizeof conf) {
		th_err("th_broker_start: config too long");
		return NULL;
	}
	return th_broker_start_conf(dir, port, conf);
}

th_broker *th_broker_start_conf(const char *dir, int port, const char *conf)
{
	th_broker *b;

	if (!dir || !conf || port <= 0) {
		th_err("th_broker_start_conf: bad arguments");
		return NULL;
	}
	b = calloc(1, sizeof *b);
	if (!b)
		return NULL;
	b->pid = -1;
	b->port = port;
	snprintf(b->uri, sizeof b->uri, "ssl://127.0.0.1:%d", port);
	b->dir = strdup(dir);
	b->conf_path = path_join(dir, "mosquitto.conf");
	b->log_path = path_join(dir, "mosquitto.log");
	b->conf_text = strdup(conf);
	if (!b->dir || !b->conf_path || !b->log_path || !b->conf_text || broker_launch(b) != 0) {
		th_broker_free(b);
		return NULL;
	}
	return b;
}

int th_broker_stop(th_broker *b)
{
	int rc;

	if (!b || b->pid <= 0)
		return 0;
	rc = th_stop(b->pid, 5000);
	b->pid = -1;
	return rc < 0 ? rc : 0;
}

int th_broker_kill(th_broker *b)
{
	int rc;

	if (!b || b->pid <= 0)
		return 0;
	rc = th_kill(b->pid, SIGKILL);
	if (rc == 0 || rc == -ESRCH)
		rc = th_wait(b->pid, -1, NULL);
	b->pid = -1;
	return rc;
}

int th_broker_restart(th_broker *b)
{
	int rc;

	if (!b)
		return -EINVAL;
	rc = th_broker_stop(b);
	if (rc != 0)
		return rc;
	return broker_launch(b);
}

void th_broker_free(th_broker *b)
{
	if (!b)
		return;
	th_broker_stop(b);
	free(b->dir);
	free(b->conf_path);
	free(b->log_path);
	free(b->conf_text);
	free(b);
}

int th_broker_port(const th_broker *b)
{
	return b ? b->port : -1;
}

pid_t th_broker_pid(const th_broker *b)
{
	return b ? b->pid : -1;
}

const char *th_broker_uri(const th_broker *b)
{
	return b ? b->uri : NULL;
}

const char *th_broker_log(const th_broker *b)
{
	return b ? b->log_path : NULL;
}

/* ======================================================================
 * MQTT 5 test client
 *
 * Paho calls back on its own threads; everything they touch is under
 * m->lock and waiters sleep on m->cond.
 * ====================================================================== */

/* One Paho request whose completion somebody may wait for. Heap allocated
 * and listed in the client, because Paho may complete it after the waiter
 * gave up: then the callback, or th_mqtt_close, frees it. */
struct th_req {
	struct th_mqtt *m;
	int done;
	int rc;        /* 0 or a Paho / MQTT reason code (negative) */
	int abandoned; /* nobody waits: the callback frees it */
	int counted;   /* a windowed publish: counts in m->outstanding */
	struct th_req *prev, *next;
};

struct th_mqtt {
	MQTTAsync client;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int connected;
	int outstanding;
	int failed;
	th_mqtt_msg *head, *tail;
	struct th_req *reqs;
	char tls_err[512];
};

static struct th_req *req_new(th_mqtt *m, int counted)
{
	struct th_req *q = calloc(1, sizeof *q);

	if (!q)
		return NULL;
	q->m = m;
	q->counted = counted;
	q->abandoned = counted; /* windowed publishes are fire-and-forget */
	pthread_mutex_lock(&m->lock);
	q->next = m->reqs;
	if (m->reqs)
		m->reqs->prev = q;
	m->reqs = q;
	if (counted)
		m->outstanding++;
	pthread_mutex_unlock(&m->lock);
	return q;
}

/* Caller holds m->lock. */
static void req_unlink(th_mqtt *m, struct th_req *q)
{
	if (q->prev)
		q->prev->next = q->next;
	else
		m->reqs = q->next;
	if (q->next)
		q->next->prev = q->prev;
}

static void req_complete(struct th_req *q, int rc)
{
	th_mqtt *m = q->m;
	int free_it;

	pthread_mutex_lock(&m->lock);
	q->done = 1;
	q->rc = rc;
	if (q->counted) {
		m->outstanding--;
		if (rc != 0)
			m->failed++;
	}
	free_it = q->abandoned;
	if (free_it)
		req_unlink(m, q);
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
	if (free_it)
		free(q);
}

/* Sleep on m->cond until a callback broadcasts or the deadline (th_now_ms
 * time) passes. Caller holds m->lock. The condvar runs on CLOCK_MONOTONIC,
 * so a wall clock step in a test cannot stretch a timeout. */
static void mqtt_wait(th_mqtt *m, int64_t deadline)
{
	struct timespec ts;
	int64_t left = deadline - th_now_ms();

	if (left <= 0)
		return;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += (time_t)(left / 1000);
	ts.tv_nsec += (long)(left % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(&m->cond, &m->lock, &ts);
}

/* Wait for q; frees it unless it is still pending (then it is abandoned).
 * Returns its rc, or -ETIMEDOUT. */
static int req_wait(struct th_req *q, int timeout_ms)
{
	th_mqtt *m = q->m;
	int64_t deadline = th_now_ms() + timeout_ms;
	int rc;

	pthread_mutex_lock(&m->lock);
	while (!q->done && th_now_ms() < deadline)
		mqtt_wait(m, deadline);
	if (q->done) {
		rc = q->rc;
		req_unlink(m, q);
		pthread_mutex_unlock(&m->lock);
		free(q);
		return rc;
	}
	q->abandoned = 1;
	pthread_mutex_unlock(&m->lock);
	return -ETIMEDOUT;
}

/* Drop a request that Paho refused synchronously (no callback will come). */
static void req_drop(struct th_req *q)
{
	th_mqtt *m = q->m;

	pthread_mutex_lock(&m->lock);
	if (q->counted)
		m->outstanding--;
	req_unlink(m, q);
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
	free(q);
}

static void on_req_ok(void *ctx, MQTTAsync_successData5 *resp)
{
	int rc = 0;

	/* A SUBACK with a failure reason (>= 0x80) is a "success" for Paho. */
	if (resp && (int)resp->reasonCode >= 0x80)
		rc = -(int)resp->reasonCode;
	req_complete(ctx, rc);
}

static void on_req_fail(void *ctx, MQTTAsync_failureData5 *resp)
{
	int rc = resp ? resp->code : -1;

	/* An MQTT 5 refusal (a PUBACK with reason >= 0x80, e.g. 0x87 Not
	 * authorized) says more than Paho's generic failure code. */
	if (resp && (int)resp->reasonCode >= 0x80)
		rc = -(int)resp->reasonCode;
	else if (rc >= 0)
		rc = -(rc ? rc : 1);
	req_complete(ctx, rc);
}

static void on_conn_lost(void *ctx, char *cause)
{
	th_mqtt *m = ctx;

	(void)cause;
	pthread_mutex_lock(&m->lock);
	m->connected = 0;
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
}

static int on_msg(void *ctx, char *topic, int topic_len, MQTTAsync_message *msg)
{
	th_mqtt *m = ctx;
	th_mqtt_msg *copy = calloc(1, sizeof *copy);
	size_t tlen = topic_len > 0 ? (size_t)topic_len : strlen(topic);
	size_t plen = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0;

	if (copy) {
		copy->topic = malloc(tlen + 1);
		copy->payload = malloc(plen + 1);
	}
	if (!copy || !copy->topic || !copy->payload) {
		th_mqtt_msg_free(copy);
		return 0; /* Paho retries the delivery later */
	}
	memcpy(copy->topic, topic, tlen);
	copy->topic[tlen] = '\0';
	if (plen)
		memcpy(copy->payload, msg->payload, plen);
	copy->payload[plen] = '\0';
	copy->len = plen;
	copy->qos = msg->qos;
	MQTTAsync_freeMessage(&msg);
	MQTTAsync_free(topic);

	pthread_mutex_lock(&m->lock);
	if (m->tail)
		m->tail->next = copy;
	else
		m->head = copy;
	m->tail = copy;
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
	return 1;
}

static int on_tls_error(const char *str, size_t len, void *ctx)
{
	th_mqtt *m = ctx;
	size_t used;

	pthread_mutex_lock(&m->lock);
	used = strlen(m->tls_err);
	if (used + 3 < sizeof m->tls_err) {
		size_t room = sizeof m->tls_err - used - 3;
		size_t n = len < room ? len : room;

		if (used) {
			memcpy(m->tls_err + used, "; ", 2);
			used += 2;
		}
		memcpy(m->tls_err + used, str, n);
		m->tls_err[used + n] = '\0';
		/* OpenSSL's lines end with a newline */
		while (used + n > 0 && m->tls_err[used + n - 1] == '\n')
			m->tls_err[used + --n] = '\0';
	}
	pthread_mutex_unlock(&m->lock);
	return 0;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static void mqtt_free(th_mqtt *m)
{
	th_mqtt_msg *msg;
	struct th_req *q;

	if (m->client)
		MQTTAsync_destroy(&m->client);
	/* Paho calls nothing back after destroy: what is left is ours. */
	while ((msg = m->head)) {
		m->head = msg->next;
		th_mqtt_msg_free(msg);
	}
	while ((q = m->reqs)) {
		m->reqs = q->next;
		free(q);
	}
	pthread_cond_destroy(&m->cond);
	pthread_mutex_destroy(&m->lock);
	free(m);
}

/* Connect outcome, kept apart from th_req because the failure text matters. */
struct conn_wait {
	th_mqtt *m;
	int done; /* 1 ok, -1 failed */
	char why[256];
};

static void on_connect_ok(void *ctx, MQTTAsync_successData5 *resp)
{
	struct conn_wait *w = ctx;

	(void)resp;
	pthread_mutex_lock(&w->m->lock);
	w->done = 1;
	w->m->connected = 1;
	pthread_cond_broadcast(&w->m->cond);
	pthread_mutex_unlock(&w->m->lock);
}

static void on_connect_fail(void *ctx, MQTTAsync_failureData5 *resp)
{
	struct conn_wait *w = ctx;

	pthread_mutex_lock(&w->m->lock);
	w->done = -1;
	snprintf(w->why, sizeof w->why, "code %d, reason 0x%02x%s%s", resp ? resp->code : 0,
		 resp ? (unsigned)resp->reasonCode : 0u, resp && resp->message ? ": " : "",
		 resp && resp->message ? resp->message : "");
	pthread_cond_broadcast(&w->m->cond);
	pthread_mutex_unlock(&w->m->lock);
}

th_mqtt *th_mqtt_connect(const th_mqtt_opts *o, char *err, size_t errlen)
{
	MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer5;
	MQTTAsync_connectOptions cc = MQTTAsync_connectOptions_initializer5;
	MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
	MQTTProperties props = MQTTProperties_initializer;
	struct conn_wait *w = NULL;
	th_mqtt *m = NULL;
	int timeout_ms, rc;
	int64_t deadline;

	set_err(err, errlen, "%s", "");
	if (!o || !o->uri || !o->client_id || !o->ca_file) {
		set_err(err, errlen, "uri, client_id and ca_file are required");
		return NULL;
	}
	timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 10000;
	m = calloc(1, sizeof *m);
	w = calloc(1, sizeof *w);
	if (!m || !w) {
		free(m);
		free(w);
		set_err(err, errlen, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&m->lock, NULL);
	{
		pthread_condattr_t ca;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&m->cond, &ca);
		pthread_condattr_destroy(&ca);
	}
	w->m = m;

	rc = MQTTAsync_createWithOptions(&m->client, o->uri, o->client_id,
					 MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
	if (rc != MQTTASYNC_SUCCESS) {
		set_err(err, errlen, "MQTTAsync_create: %s", MQTTAsync_strerror(rc));
		m->client = NULL;
		goto fail;
	}
	rc = MQTTAsync_setCallbacks(m->client, m, on_conn_lost, on_msg, NULL);
	if (rc != MQTTASYNC_SUCCESS) {
		set_err(err, errlen, "MQTTAsync_setCallbacks: %s", MQTTAsync_strerror(rc));
		goto fail;
	}
	ssl.trustStore = o->ca_file;
	ssl.keyStore = o->cert_file;
	ssl.privateKey = o->key_file;
	ssl.enableServerCertAuth = !o->no_verify;
	ssl.verify = !o->no_verify && !o->no_host_check; /* Paho: verify = host name check */
	ssl.ssl_error_cb = on_tls_error;
	ssl.ssl_error_context = m;
	cc.ssl = &ssl;
	cc.cleanstart = !o->keep_session;
	cc.keepAliveInterval = 30;
	cc.connectTimeout = (timeout_ms + 999) / 1000;
	cc.onSuccess5 = on_connect_ok;
	cc.onFailure5 = on_connect_fail;
	cc.context = w;
	if (o->session_expiry_s > 0) {
		MQTTProperty p;

		memset(&p, 0, sizeof p);
		p.identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL;
		p.value.integer4 = (unsigned int)o->session_expiry_s;
		MQTTProperties_add(&props, &p);
		cc.connectProperties = &props;
	}
	rc = MQTTAsync_connect(m->client, &cc);
	MQTTProperties_free(&props);
	if (rc != MQTTASYNC_SUCCESS) {
		set_err(err, errlen, "MQTTAsync_connect: %s", MQTTAsync_strerror(rc));
		goto fail;
	}

	deadline = th_now_ms() + timeout_ms + 2000;
	pthread_mutex_lock(&m->lock);
	while (w->done == 0 && th_now_ms() < deadline)
		mqtt_wait(m, deadline);
	rc = w->done;
	pthread_mutex_unlock(&m->lock);
	if (rc != 1) {
		set_err(err, errlen, "connect to %s failed: %s%s%s", o->uri,
			rc == 0 ? "timeout" : w->why, m->tls_err[0] ? "; TLS: " : "", m->tls_err);
		goto fail;
	}
	/* The connect callbacks are done with w: Paho holds no other copy. */
	free(w);
	return m;

fail:
	/* If the connect is still pending Paho may call back into w until
	 * destroy; free it only afterwards. */
	mqtt_free(m);
	free(w);
	return NULL;
}

/* A request the caller will wait for: *q counted against m, or -EINVAL (no
 * client or topic) / -ENOMEM. */
static int req_begin(th_mqtt *m, const char *topic, struct th_req **q)
{
	if (!m || !topic)
		return -EINVAL;
	*q = req_new(m, 0);
	return *q ? 0 : -ENOMEM;
}

/* Ends a request that req_begin started: rc is how sending it went. Sent,
 * it waits for the broker's answer (`refusal` names a negative one in the
 * log); not sent, it is dropped. */
static int req_finish(struct th_req *q, int rc, int timeout_ms, const char *what, const char *topic,
		      const char *refusal)
{
	if (rc != 0) {
		req_drop(q);
		return rc;
	}
	rc = req_wait(q, timeout_ms);
	if (rc != 0)
		th_err("%s %s: %s (%d)", what, topic, rc == -ETIMEDOUT ? "timeout" : refusal, rc);
	return rc;
}

int th_mqtt_subscribe(th_mqtt *m, const char *topic, int qos, int timeout_ms)
{
	MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
	struct th_req *q;
	int rc = req_begin(m, topic, &q);

	if (rc != 0)
		return rc;
	ro.onSuccess5 = on_req_ok;
	ro.onFailure5 = on_req_fail;
	ro.context = q;
	rc = MQTTAsync_subscribe(m->client, topic, qos, &ro);
	if (rc != MQTTASYNC_SUCCESS) {
		th_err("subscribe %s: %s", topic, MQTTAsync_strerror(rc));
		rc = rc < 0 ? rc : -EIO;
	}
	return req_finish(q, rc, timeout_ms, "subscribe", topic, "refused");
}

static int publish_common(th_mqtt *m, const char *topic, const void *payload, size_t len, int qos,
			  int retain, struct th_req *q)
{
	MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
	MQTTAsync_message msg = MQTTAsync_message_initializer;
	int rc;

	if (len > (size_t)INT32_MAX)
		return -EMSGSIZE;
	msg.payload = (void *)(uintptr_t)payload;
	msg.payloadlen = (int)len;
	msg.qos = qos;
	msg.retained = retain;
	ro.onSuccess5 = on_req_ok;
	ro.onFailure5 = on_req_fail;
	ro.context = q;
	rc = MQTTAsync_sendMessage(m->client, topic, &msg, &ro);
	if (rc != MQTTASYNC_SUCCESS) {
		th_err("publish %s: %s", topic, MQTTAsync_strerror(rc));
		return rc < 0 ? rc : -EIO;
	}
	return 0;
}

int th_mqtt_publish(th_mqtt *m, const char *topic, const void *payload, size_t len, int qos,
		    int timeout_ms)
{
	return th_mqtt_publish_ex(m, topic, payload, len, qos, 0, timeout_ms);
}

int th_mqtt_publish_ex(th_mqtt *m, const char *topic, const void *payload, size_t len, int qos,
		       int retain, int timeout_ms)
{
	struct th_req *q;
	int rc = req_begin(m, topic, &q);

	if (rc != 0)
		return rc;
	rc = publish_common(m, topic, payload, len, qos, retain, q);
	return req_finish(q, rc, timeout_ms, "publish", topic, "failed");
}

int th_mqtt_publish_window(th_mqtt *m, const char *topic, const void *payload, size_t len,
			   int qos, int window, int timeout_ms)
{
	int64_t deadline = th_now_ms() + timeout_ms;
	struct th_req *q;
	int rc;

	if (!m || !topic || window < 1)
		return -EINVAL;
	pthread_mutex_lock(&m->lock);
	while (m->outstanding >= window && th_now_ms() < deadline)
		mqtt_wait(m, deadline);
	rc = m->outstanding >= window ? -ETIMEDOUT : 0;
	pthread_mutex_unlock(&m->lock);
	if (rc != 0)
		return rc;
	q = req_new(m, 1);
	if (!q)
		return -ENOMEM;
	rc = publish_common(m, topic, payload, len, qos, 0, q);
	if (rc != 0)
		req_drop(q);
	return rc;
}

int th_mqtt_drain(th_mqtt *m, int timeout_ms)
{
	int64_t deadline = th_now_ms() + timeout_ms;
	int rc;

	if (!m)
		return -EINVAL;
	pthread_mutex_lock(&m->lock);
	while (m->outstanding > 0 && th_now_ms() < deadline)
		mqtt_wait(m, deadline);
	rc = m->outstanding > 0 ? -ETIMEDOUT : m->failed;
	pthread_mutex_unlock(&m->lock);
	return rc;
}

th_mqtt_msg *th_mqtt_recv(th_mqtt *m, int timeout_ms)
{
	int64_t deadline = th_now_ms() + timeout_ms;
	th_mqtt_msg *msg;

	if (!m)
		return NULL;
	pthread_mutex_lock(&m->lock);
	while (!m->head && th_now_ms() < deadline)
		mqtt_wait(m, deadline);
	msg = m->head;
	if (msg) {
		m->head = msg->next;
		if (!m->head)
			m->tail = NULL;
		msg->next = NULL;
	}
	pthread_mutex_unlock(&m->lock);
	return msg;
}

void th_mqtt_msg_free(th_mqtt_msg *msg)
{
	if (!msg)
		return;
	free(msg->topic);
	free(msg->payload);
	free(msg);
}

int th_mqtt_connected(th_mqtt *m)
{
	int c;

	if (!m)
		return 0;
	pthread_mutex_lock(&m->lock);
	c = m->connected;
	pthread_mutex_unlock(&m->lock);
	return c;
}

void th_mqtt_close(th_mqtt *m)
{
	if (!m)
		return;
	if (th_mqtt_connected(m)) {
		MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer5;
		struct th_req *q = req_new(m, 0);

		if (q) {
			d.timeout = 1000;
			d.onSuccess5 = on_req_ok;
			d.onFailure5 = on_req_fail;
			d.context = q;
			if (MQTTAsync_disconnect(m->client, &d) == MQTTASYNC_SUCCESS)
				req_wait(q, 3000);
			else
				req_drop(q);
		}
	}
	mqtt_free(m);
}

int th_tcp_nodelay_all(void)
{
	return tk_tcp_nodelay_all();
}
