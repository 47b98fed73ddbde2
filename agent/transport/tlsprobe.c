/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tlsprobe: diagnose a failed broker connection (tlsprobe.h). mbedTLS makes
 * the connection and the handshake; a rejected certificate chain is then
 * verified again with OpenSSL, the library Paho connects with, so the
 * diagnosis quotes OpenSSL's verify result ("unable to get local issuer
 * certificate") — the words openssl s_client and broker guides use, and
 * the one thing Paho's error ("certificate verify failed") leaves out.
 */
#include "tlsprobe.h"

#include "platform.h"

#include <arpa/inet.h>
#include <mbedtls/asn1.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/oid.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int rng(void *ctx, unsigned char *buf, size_t n)
{
	(void)ctx;
	return platform__random(buf, n) == 0 ? 0 : MBEDTLS_ERR_CTR_DRBG_ENTROPY_SOURCE_FAILED;
}

/* Does the certificate list this IP address (binary, 4 or 16 bytes) as an
 * iPAddress subjectAltName? mbedTLS 2.28 neither matches nor even lists
 * iPAddress SANs, so walk the extension's DER:
 * Extensions ::= SEQUENCE OF { extnID OID, critical BOOLEAN OPTIONAL, extnValue OCTET STRING }
 * SAN ::= SEQUENCE OF GeneralName, iPAddress = [7] IMPLICIT OCTET STRING. */
static int cert_has_ip(const mbedtls_x509_crt *crt, const unsigned char *ip, size_t iplen)
{
	unsigned char *p = crt->v3_ext.p, *end = p + crt->v3_ext.len;
	size_t len;
	if (!p || mbedtls_asn1_get_tag(&p, end, &len, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) != 0)
		return 0;
	while (p < end) {
		unsigned char *ext_end;
		mbedtls_asn1_buf oid;
		int critical = 0;
		if (mbedtls_asn1_get_tag(&p, end, &len, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) != 0)
			return 0;
		ext_end = p + len;
		if (mbedtls_asn1_get_tag(&p, ext_end, &oid.len, MBEDTLS_ASN1_OID) != 0)
			return 0;
		oid.p = p;
		p += oid.len;
		(void)mbedtls_asn1_get_bool(&p, ext_end, &critical);
		if (mbedtls_asn1_get_tag(&p, ext_end, &len, MBEDTLS_ASN1_OCTET_STRING) != 0)
			return 0;
		if (MBEDTLS_OID_CMP(MBEDTLS_OID_SUBJECT_ALT_NAME, &oid) == 0) {
			unsigned char *q = p, *san_end = p + len;
			size_t n;
			if (mbedtls_asn1_get_tag(&q, san_end, &n, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) != 0)
				return 0;
			while (q < san_end) {
				unsigned char tag = *q++;
				if (mbedtls_asn1_get_len(&q, san_end, &n) != 0)
					return 0;
				if (tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7) && n == iplen && memcmp(q, ip, iplen) == 0)
					return 1;
				q += n;
			}
		}
		p = ext_end;
	}
	return 0;
}

/* OpenSSL's verdict on the chain the broker sent (leaf first), against
 * ca_file (or the system's CAs without one, as Paho does), for `host` (an
 * IP address when is_ip): the words of its verify result and the depth in
 * the chain, or NULL if OpenSSL accepts the chain or cannot tell. */
static const char *openssl_verdict(const mbedtls_x509_crt *chain, const char *ca_file, const char *host, int is_ip,
				   int *depth)
{
	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	STACK_OF(X509) *untrusted = sk_X509_new_null();
	X509 *leaf = NULL;
	const char *words = NULL;
	if (!store || !ctx || !untrusted || !chain)
		goto cleanup;
	if (ca_file ? X509_STORE_load_locations(store, ca_file, NULL) != 1 : X509_STORE_set_default_paths(store) != 1)
		goto cleanup;
	for (const mbedtls_x509_crt *c = chain; c && c->raw.p; c = c->next) {
		const unsigned char *p = c->raw.p;
		X509 *x = d2i_X509(NULL, &p, (long)c->raw.len);
		if (!x)
			goto cleanup;
		if (!leaf) {
			leaf = x;
		} else if (!sk_X509_push(untrusted, x)) {
			X509_free(x);
			goto cleanup;
		}
	}
	/* What an OpenSSL client checks: a server certificate for this name. */
	if (!leaf || X509_STORE_CTX_init(ctx, store, leaf, untrusted) != 1 ||
	    X509_STORE_CTX_set_default(ctx, "ssl_server") != 1)
		goto cleanup;
	X509_VERIFY_PARAM *vp = X509_STORE_CTX_get0_param(ctx);
	if ((is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, host) : X509_VERIFY_PARAM_set1_host(vp, host, 0)) != 1)
		goto cleanup;
	if (X509_verify_cert(ctx) != 1 && X509_STORE_CTX_get_error(ctx) != X509_V_OK) {
		words = X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)); /* static text */
		*depth = X509_STORE_CTX_get_error_depth(ctx);
	}
cleanup:
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
	sk_X509_pop_free(untrusted, X509_free);
	X509_free(leaf);
	return words;
}

/* Split "ssl://host:port" (IPv6 "[::1]:port" too). */
static int split_uri(const char *uri, char *host, size_t hn, char *port, size_t pn, int *tls)
{
	const char *p = strstr(uri, "://");
	if (!p)
		return -1;
	*tls = strncmp(uri, "ssl://", 6) == 0;
	p += 3;
	const char *colon;
	if (*p == '[') {
		const char *close = strchr(p, ']');
		if (!close || close[1] != ':')
			return -1;
		snprintf(host, hn, "%.*s", (int)(close - p - 1), p + 1);
		colon = close + 1;
	} else {
		colon = strrchr(p, ':');
		if (!colon)
			return -1;
		snprintf(host, hn, "%.*s", (int)(colon - p), p);
	}
	snprintf(port, pn, "%s", colon + 1);
	char *slash = strchr(port, '/');
	if (slash)
		*slash = '\0';
	return 0;
}

/* The probe's own clock: the real monotonic one (a test's fake clock
 * must not stretch a network deadline). */
static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* mbedTLS I/O on the non-blocking socket, every wait bounded by the one
 * deadline of the whole probe and abandoned when cancel_fd is readable. */
struct bio {
	int fd, cancel_fd;
	int64_t deadline;
	int cancelled;
};

static int bio_wait(struct bio *b, int for_write)
{
	int64_t left = b->deadline - mono_ms();
	int w = left > 0 ? platform__fd_wait(b->fd, for_write, (int)left, b->cancel_fd) : 0;
	if (w == 0)
		return MBEDTLS_ERR_SSL_TIMEOUT;
	if (w == -ECANCELED)
		b->cancelled = 1;
	return w < 0 ? (for_write ? MBEDTLS_ERR_NET_SEND_FAILED : MBEDTLS_ERR_NET_RECV_FAILED) : 0;
}

static int bio_send(void *ctx, const unsigned char *buf, size_t len)
{
	struct bio *b = ctx;
	for (;;) {
		ssize_t k = send(b->fd, buf, len, MSG_NOSIGNAL);
		if (k >= 0)
			return (int)k;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return errno == EPIPE || errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET : MBEDTLS_ERR_NET_SEND_FAILED;
		int rc = bio_wait(b, 1);
		if (rc)
			return rc;
	}
}

static int bio_recv(void *ctx, unsigned char *buf, size_t len)
{
	struct bio *b = ctx;
	for (;;) {
		ssize_t k = recv(b->fd, buf, len, 0);
		if (k > 0)
			return (int)k;
		if (k == 0)
			return MBEDTLS_ERR_NET_CONN_RESET;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET : MBEDTLS_ERR_NET_RECV_FAILED;
		int rc = bio_wait(b, 0);
		if (rc)
			return rc;
	}
}

int tlsprobe__diagnose(const char *uri, const char *ca_file, const char *cert_file, const char *key_file,
		       int timeout_ms, int cancel_fd, char *out, size_t n)
{
	char host[256], port[16], err[160];
	int tls = 0, rc, found = 1;
	struct bio bio = {.fd = -1, .cancel_fd = cancel_fd};
	mbedtls_ssl_context ssl;
	mbedtls_ssl_config conf;
	mbedtls_x509_crt ca, own;
	mbedtls_pk_context key;
	unsigned char ip[16];
	size_t iplen = 0;

	if (split_uri(uri, host, sizeof(host), port, sizeof(port), &tls) != 0) {
		snprintf(out, n, "cannot parse broker URI %s", uri);
		return 1;
	}
	mbedtls_ssl_init(&ssl);
	mbedtls_ssl_config_init(&conf);
	mbedtls_x509_crt_init(&ca);
	mbedtls_x509_crt_init(&own);
	mbedtls_pk_init(&key);
	if (inet_pton(AF_INET, host, ip) == 1)
		iplen = 4;
	else if (inet_pton(AF_INET6, host, ip) == 1)
		iplen = 16;

	/* The name look-up comes first and is not bounded here (the caller
	 * runs this in a thread); the deadline covers connect + handshake. */
	bio.fd = platform__tcp_connect(host, port, timeout_ms, cancel_fd);
	bio.deadline = mono_ms() + timeout_ms;
	if (bio.fd == -ECANCELED) {
		snprintf(out, n, "TCP connect to %s:%s abandoned (the agent is stopping)", host, port);
		goto cleanup;
	}
	if (bio.fd == -ETIMEDOUT) {
		snprintf(out, n, "TCP connect to %s:%s failed (no answer within %d ms: packets dropped by a firewall, or a wrong address)",
			 host, port, timeout_ms);
		goto cleanup;
	}
	if (bio.fd < 0) {
		snprintf(out, n, "TCP connect to %s:%s failed (%s: %s): broker down, wrong address, or blocked", host, port,
			 bio.fd == -ENOENT || bio.fd == -EAGAIN ? "unknown host" : "connection refused or unreachable",
			 strerror(-bio.fd));
		goto cleanup;
	}
	if (!tls) {
		snprintf(out, n, "TCP connect to %s:%s works; the broker refused at the MQTT level", host, port);
		found = 0;
		goto cleanup;
	}
	if (ca_file && (rc = mbedtls_x509_crt_parse_file(&ca, ca_file)) != 0) {
		mbedtls_strerror(rc, err, sizeof(err));
		snprintf(out, n, "cannot load CA file %s: %s", ca_file, err);
		goto cleanup;
	}
	mbedtls_ssl_config_defaults(&conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
	/* OPTIONAL, not REQUIRED: mbedTLS frees a chain that fails REQUIRED
	 * verification, and OpenSSL's verdict needs it. The flags are checked
	 * below before anything else counts. */
	mbedtls_ssl_conf_authmode(&conf, MBEDTLS_SSL_VERIFY_OPTIONAL);
	mbedtls_ssl_conf_ca_chain(&conf, &ca, NULL);
	mbedtls_ssl_conf_rng(&conf, rng, NULL);
	if (cert_file && key_file) {
		if ((rc = mbedtls_x509_crt_parse_file(&own, cert_file)) != 0 ||
		    (rc = mbedtls_pk_parse_keyfile(&key, key_file, NULL)) != 0 ||
		    (rc = mbedtls_ssl_conf_own_cert(&conf, &own, &key)) != 0) {
			mbedtls_strerror(rc, err, sizeof(err));
			snprintf(out, n, "cannot load the client certificate %s / key %s: %s", cert_file, key_file, err);
			goto cleanup;
		}
	}
	/* Host names are checked by mbedTLS; IP addresses by cert_has_ip()
	 * after the handshake (mbedTLS 2.28 cannot match them). */
	if (mbedtls_ssl_setup(&ssl, &conf) != 0 || (!iplen && mbedtls_ssl_set_hostname(&ssl, host) != 0)) {
		snprintf(out, n, "TLS probe setup failed");
		goto cleanup;
	}
	mbedtls_ssl_set_bio(&ssl, &bio, bio_send, bio_recv, NULL);
	while ((rc = mbedtls_ssl_handshake(&ssl)) == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
		;
	/* The chain as received: in the session once the handshake is done,
	 * in the one being negotiated if it failed later on. */
	const mbedtls_x509_crt *peer = ssl.session		  ? ssl.session->peer_cert
				       : ssl.session_negotiate ? ssl.session_negotiate->peer_cert
							       : NULL;
	uint32_t flags = mbedtls_ssl_get_verify_result(&ssl);
	if (rc == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED || (peer && flags != 0 && flags != UINT32_MAX)) {
		char info[256];
		int depth = 0;
		const char *words = openssl_verdict(peer, ca_file, host, iplen > 0, &depth);
		const char *mismatch = (flags & MBEDTLS_X509_BADCERT_CN_MISMATCH)
					       ? " (host name mismatch: the broker's certificate does not name this host)"
					       : "";
		mbedtls_x509_crt_verify_info(info, sizeof(info), "", flags);
		for (char *c = info; *c; c++)
			if (*c == '\n')
				*c = (c[1] ? ';' : '\0');
		if (words)
			snprintf(out, n, "server certificate of %s:%s rejected: %s (OpenSSL, at depth %d; mbedTLS: %s)%s",
				 host, port, words, depth, info, mismatch);
		else
			snprintf(out, n, "server certificate of %s:%s rejected: %s%s", host, port, info, mismatch);
	} else if (rc == 0 && iplen && !cert_has_ip(peer, ip, iplen)) {
		int depth = 0;
		const char *words = openssl_verdict(peer, ca_file, host, 1, &depth);
		snprintf(out, n, "server certificate of %s:%s rejected: %s%sit does not list the IP address %s (host name mismatch: the broker's certificate does not name this host)",
			 host, port, words ? words : "", words ? " (OpenSSL); " : "", host);
	} else if (rc == 0) {
		snprintf(out, n, "TLS to %s:%s verifies with this CA, host name and client certificate; the failure is at the MQTT level",
			 host, port);
		found = 0;
	} else if (ssl.client_auth && !(cert_file && key_file)) {
		/* 2.x exposes the flag set by the server's CertificateRequest. */
		snprintf(out, n, "the broker %s:%s requires a client certificate (set broker.cert_file and broker.key_file)", host, port);
	} else if (bio.cancelled) {
		snprintf(out, n, "TLS handshake with %s:%s abandoned (the agent is stopping)", host, port);
	} else if (rc == MBEDTLS_ERR_SSL_TIMEOUT) {
		snprintf(out, n, "TLS handshake with %s:%s timed out (no answer within %d ms)", host, port, timeout_ms);
	} else {
		mbedtls_strerror(rc, err, sizeof(err));
		snprintf(out, n, "TLS handshake with %s:%s failed: %s", host, port, err);
	}
cleanup:
	mbedtls_ssl_free(&ssl);
	mbedtls_ssl_config_free(&conf);
	mbedtls_x509_crt_free(&ca);
	mbedtls_x509_crt_free(&own);
	mbedtls_pk_free(&key);
	if (bio.fd >= 0)
		close(bio.fd);
	return found;
}

/* ---- in a thread ---- */

struct tlsprobe {
	char *uri, *ca_file, *cert_file, *key_file;
	int timeout_ms, found;
	int done[2];   /* the thread writes a byte when out/found are set */
	int cancel[2]; /* the loop writes a byte to abandon the probe */
	int refs;      /* the loop and the thread: the last one frees */
	platform__thread *thread;
	char out[400];
};

static void probe_release(tlsprobe *p)
{
	if (__atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	for (int i = 0; i < 2; i++) {
		if (p->done[i] >= 0)
			close(p->done[i]);
		if (p->cancel[i] >= 0)
			close(p->cancel[i]);
	}
	free(p->uri);
	free(p->ca_file);
	free(p->cert_file);
	free(p->key_file);
	free(p);
}

static void *probe_main(void *arg)
{
	tlsprobe *p = arg;
	p->found = tlsprobe__diagnose(p->uri, p->ca_file, p->cert_file, p->key_file, p->timeout_ms, p->cancel[0],
				      p->out, sizeof(p->out));
	ssize_t w;
	do
		w = write(p->done[1], "x", 1);
	while (w < 0 && errno == EINTR);
	probe_release(p);
	return NULL;
}

static char *dup_or_null(const char *s, int *oom)
{
	char *d = s ? strdup(s) : NULL;
	if (s && !d)
		*oom = 1;
	return d;
}

int tlsprobe__start(tlsprobe **out, const char *uri, const char *ca_file, const char *cert_file, const char *key_file,
		    int timeout_ms)
{
	int oom = 0, rc;
	tlsprobe *p = calloc(1, sizeof(*p));
	*out = NULL;
	if (!p)
		return -ENOMEM;
	p->done[0] = p->done[1] = p->cancel[0] = p->cancel[1] = -1;
	p->refs = 1;
	p->timeout_ms = timeout_ms;
	p->uri = dup_or_null(uri, &oom);
	p->ca_file = dup_or_null(ca_file, &oom);
	p->cert_file = dup_or_null(cert_file, &oom);
	p->key_file = dup_or_null(key_file, &oom);
	if (oom || !uri) {
		rc = -ENOMEM;
		goto fail;
	}
	if (pipe2(p->done, O_CLOEXEC | O_NONBLOCK) != 0 || pipe2(p->cancel, O_CLOEXEC | O_NONBLOCK) != 0) {
		rc = -errno;
		goto fail;
	}
	p->refs = 2;
	if ((rc = platform__thread_start(&p->thread, probe_main, p)) != 0) {
		p->refs = 1;
		goto fail;
	}
	*out = p;
	return 0;
fail:
	probe_release(p);
	return rc;
}

int tlsprobe__fd(const tlsprobe *p)
{
	return p->done[0];
}

int tlsprobe__finish(tlsprobe *p, char *out, size_t n)
{
	/* The thread has written its byte, so it is past the diagnosis. */
	platform__thread_join(p->thread);
	snprintf(out, n, "%s", p->out);
	int found = p->found;
	probe_release(p);
	return found;
}

void tlsprobe__cancel(tlsprobe *p)
{
	if (!p)
		return;
	ssize_t w;
	do
		w = write(p->cancel[1], "x", 1);
	while (w < 0 && errno == EINTR);
	/* Connect and handshake end at once; only a name look-up in progress
	 * can hold the thread, and then it is left to finish alone. */
	if (platform__fd_wait(p->done[0], 0, 500, -1) == 1)
		platform__thread_join(p->thread);
	else
		platform__thread_detach(p->thread);
	probe_release(p);
}
