/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tlspolicy: the TLS floor applied to every SSL object Paho creates (see
 * tlspolicy.h for why it hooks SSL_new).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* RTLD_NEXT */
#endif
#include "tlspolicy.h"

#include <scrm/scrm.h>

#include <dlfcn.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char *crl_path;   /* owned; NULL = no CRL check */
static char reason[320]; /* the first refusal reason since the last take */
static int reason_crl;
static unsigned long applied;

int tlspolicy__set_crl_file(const char *path)
{
	char *copy = NULL;
	if (path && !(copy = strdup(path)))
		return SCRM_E_NOMEM;
	pthread_mutex_lock(&mu);
	free(crl_path);
	crl_path = copy;
	pthread_mutex_unlock(&mu);
	return SCRM_OK;
}

unsigned long tlspolicy__applied(void)
{
	return __atomic_load_n(&applied, __ATOMIC_ACQUIRE);
}

void tlspolicy__take_reason(char *out, size_t n, int *crl)
{
	pthread_mutex_lock(&mu);
	if (n)
		snprintf(out, n, "%s", reason);
	if (crl)
		*crl = reason_crl;
	reason[0] = '\0';
	reason_crl = 0;
	pthread_mutex_unlock(&mu);
}

/* Keep the first reason of a handshake: later ones are consequences. */
static void note(int crl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(int crl, const char *fmt, ...)
{
	va_list ap;
	pthread_mutex_lock(&mu);
	if (!reason[0]) {
		va_start(ap, fmt);
		vsnprintf(reason, sizeof(reason), fmt, ap);
		va_end(ap);
		reason_crl = crl;
	}
	pthread_mutex_unlock(&mu);
}

static int is_crl_error(int err)
{
	switch (err) {
	case X509_V_ERR_CERT_REVOKED:
	case X509_V_ERR_UNABLE_TO_GET_CRL:
	case X509_V_ERR_UNABLE_TO_DECRYPT_CRL_SIGNATURE:
	case X509_V_ERR_CRL_SIGNATURE_FAILURE:
	case X509_V_ERR_CRL_NOT_YET_VALID:
	case X509_V_ERR_CRL_HAS_EXPIRED:
	case X509_V_ERR_ERROR_IN_CRL_LAST_UPDATE_FIELD:
	case X509_V_ERR_ERROR_IN_CRL_NEXT_UPDATE_FIELD:
	case X509_V_ERR_UNABLE_TO_GET_CRL_ISSUER:
	case X509_V_ERR_KEYUSAGE_NO_CRL_SIGN:
	case X509_V_ERR_DIFFERENT_CRL_SCOPE:
		return 1;
	default:
		return 0;
	}
}

/* Does not change OpenSSL's decision; records why it refused, which Paho
 * reduces to "certificate verify failed". */
static int on_verify(int ok, X509_STORE_CTX *x)
{
	if (!ok) {
		int err = X509_STORE_CTX_get_error(x);
		note(is_crl_error(err), "%s (certificate depth %d)", X509_verify_cert_error_string(err),
		     X509_STORE_CTX_get_error_depth(x));
	}
	return ok;
}

/* Refuses every chain: a policy that could not be applied leaves the SSL
 * object unable to complete a handshake (Paho cannot take a NULL here). */
static int reject_all(int ok, X509_STORE_CTX *x)
{
	(void)ok;
	(void)x;
	return 0;
}

/* Add every CRL of the PEM file to the context's trust store. 0, or -1
 * with the reason noted. Certificates in the file are NOT trusted: only
 * CRL blocks are read. */
static int load_crls(SSL_CTX *ctx, const char *path)
{
	X509_STORE *store = SSL_CTX_get_cert_store(ctx);
	BIO *in = BIO_new_file(path, "r");
	int n = 0, rc = -1;
	if (!in) {
		note(1, "broker.crl_file: cannot read %s: %s", path, strerror(errno ? errno : EIO));
		return -1;
	}
	for (;;) {
		X509_CRL *crl = PEM_read_bio_X509_CRL(in, NULL, NULL, NULL);
		if (!crl)
			break;
		int added = X509_STORE_add_crl(store, crl);
		X509_CRL_free(crl);
		if (added != 1) {
			note(1, "broker.crl_file: %s: cannot add CRL %d to the trust store", path, n + 1);
			goto cleanup;
		}
		n++;
	}
	/* The loop ends at the end of the file (PEM "no start line") or at a
	 * damaged block: only the first is fine. */
	unsigned long e = ERR_peek_last_error();
	if (n == 0 || (e && ERR_GET_REASON(e) != PEM_R_NO_START_LINE)) {
		note(1, "broker.crl_file: %s: %s", path, n == 0 ? "no PEM X509 CRL in the file" : "a damaged CRL block");
		goto cleanup;
	}
	rc = 0;
cleanup:
	ERR_clear_error();
	BIO_free(in);
	return rc;
}

SSL *SSL_new(SSL_CTX *ctx)
{
	static SSL *(*real)(SSL_CTX *);
	SSL *(*fn)(SSL_CTX *) = __atomic_load_n(&real, __ATOMIC_ACQUIRE);
	if (!fn) {
		void *sym = dlsym(RTLD_NEXT, "SSL_new");
		memcpy(&fn, &sym, sizeof(fn)); /* object pointer -> function pointer, as POSIX allows */
		if (!fn)
			return NULL;
		__atomic_store_n(&real, fn, __ATOMIC_RELEASE);
	}
	SSL *ssl = fn(ctx);
	if (!ssl)
		return NULL;

	/* Paho has set its own verify mode on the context (SSL_VERIFY_PEER when
	 * the server is authenticated): keep it, add the reason recorder. The
	 * floor below cannot be refused by OpenSSL for valid constants; if a
	 * call fails anyway, the object refuses every certificate rather than
	 * connecting weaker. */
	SSL_set_verify(ssl, SSL_get_verify_mode(ssl), on_verify);
	int ok = SSL_set_min_proto_version(ssl, TLS1_2_VERSION) == 1;
	if (SSL_get_security_level(ssl) < TLSPOLICY_MIN_SECLEVEL)
		SSL_set_security_level(ssl, TLSPOLICY_MIN_SECLEVEL);
	ok = ok && SSL_set_cipher_list(ssl, TLSPOLICY_CIPHERS) == 1;
	if (!ok) {
		note(0, "the TLS policy could not be applied (OpenSSL refused TLS >= 1.2 / %s)", TLSPOLICY_CIPHERS);
		SSL_set_verify(ssl, SSL_VERIFY_PEER, reject_all);
		ERR_clear_error();
		return ssl; /* not counted as applied */
	}

	char *path = NULL;
	pthread_mutex_lock(&mu);
	if (crl_path)
		path = strdup(crl_path);
	int want_crl = crl_path != NULL;
	pthread_mutex_unlock(&mu);
	if (want_crl) {
		/* Fail closed: with CRL_CHECK set and no CRL loaded, the chain
		 * fails with "unable to get certificate CRL". Leaf only, as
		 * mosquitto's crlfile: a CRL per intermediate is not required. */
		X509_VERIFY_PARAM_set_flags(SSL_get0_param(ssl), X509_V_FLAG_CRL_CHECK);
		if (path)
			(void)load_crls(SSL_get_SSL_CTX(ssl), path);
		else
			note(1, "broker.crl_file: out of memory");
		free(path);
	}
	__atomic_add_fetch(&applied, 1, __ATOMIC_ACQ_REL);
	return ssl;
}
