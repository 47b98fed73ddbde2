/* SPDX-License-Identifier: Apache-2.0 */
/* tlsprobe: diagnose a failed broker connection with mbedTLS (tlsprobe.h). */
#include "tlsprobe.h"

#include "platform.h"

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>
#include <stdio.h>
#include <string.h>

static int rng(void *ctx, unsigned char *buf, size_t n)
{
	(void)ctx;
	return platform__random(buf, n) == 0 ? 0 : MBEDTLS_ERR_CTR_DRBG_ENTROPY_SOURCE_FAILED;
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

int tlsprobe__diagnose(const char *uri, const char *ca_file, int timeout_ms, char *out, size_t n)
{
	char host[256], port[16], err[160];
	int tls = 0, rc, found = 1;
	mbedtls_net_context net;
	mbedtls_ssl_context ssl;
	mbedtls_ssl_config conf;
	mbedtls_x509_crt ca;

	if (split_uri(uri, host, sizeof(host), port, sizeof(port), &tls) != 0) {
		snprintf(out, n, "cannot parse broker URI %s", uri);
		return 1;
	}
	mbedtls_net_init(&net);
	mbedtls_ssl_init(&ssl);
	mbedtls_ssl_config_init(&conf);
	mbedtls_x509_crt_init(&ca);

	if ((rc = mbedtls_net_connect(&net, host, port, MBEDTLS_NET_PROTO_TCP)) != 0) {
		snprintf(out, n, "TCP connect to %s:%s failed (%s): broker down, wrong address, or blocked",
			 host, port, rc == MBEDTLS_ERR_NET_UNKNOWN_HOST ? "unknown host" : "connection refused or unreachable");
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
	mbedtls_ssl_conf_authmode(&conf, MBEDTLS_SSL_VERIFY_REQUIRED);
	mbedtls_ssl_conf_ca_chain(&conf, &ca, NULL);
	mbedtls_ssl_conf_rng(&conf, rng, NULL);
	mbedtls_ssl_conf_read_timeout(&conf, (uint32_t)timeout_ms);
	if (mbedtls_ssl_setup(&ssl, &conf) != 0 || mbedtls_ssl_set_hostname(&ssl, host) != 0) {
		snprintf(out, n, "TLS probe setup failed");
		goto cleanup;
	}
	mbedtls_ssl_set_bio(&ssl, &net, mbedtls_net_send, NULL, mbedtls_net_recv_timeout);
	while ((rc = mbedtls_ssl_handshake(&ssl)) == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
		;
	if (rc == 0) {
		snprintf(out, n, "TLS to %s:%s verifies with this CA and host name; the failure is elsewhere (client certificate, MQTT)",
			 host, port);
		found = 0;
	} else if (rc == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED) {
		char info[256];
		uint32_t flags = mbedtls_ssl_get_verify_result(&ssl);
		mbedtls_x509_crt_verify_info(info, sizeof(info), "", flags);
		for (char *c = info; *c; c++)
			if (*c == '\n')
				*c = (c[1] ? ';' : '\0');
		snprintf(out, n, "server certificate of %s:%s rejected: %s%s", host, port, info,
			 (flags & MBEDTLS_X509_BADCERT_CN_MISMATCH) ? " (host name mismatch: the broker's certificate does not name this host)" : "");
	} else if (rc == MBEDTLS_ERR_SSL_TIMEOUT) {
		snprintf(out, n, "TLS handshake with %s:%s timed out", host, port);
	} else {
		mbedtls_strerror(rc, err, sizeof(err));
		snprintf(out, n, "TLS handshake with %s:%s failed: %s", host, port, err);
	}
cleanup:
	mbedtls_ssl_free(&ssl);
	mbedtls_ssl_config_free(&conf);
	mbedtls_x509_crt_free(&ca);
	mbedtls_net_free(&net);
	return found;
}
