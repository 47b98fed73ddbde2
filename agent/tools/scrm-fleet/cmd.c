/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cmd: `cmd` — one command to one device as an MQTT 5 request (signed with
 * the operator's key when --sign-key is given), waiting for the reply on
 * its own reply topic and printing it, device text made terminal-safe.
 */
#include "conn.h"

#include <scrm/scrm.h>

#include "crypto.h"
#include "json.h"
#include "platform.h"
#include "sbuf.h"

#include <cjson/cJSON.h>
#include <mbedtls/base64.h>
#include <mbedtls/pk.h>
#include <mbedtls/sha256.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int drbg(void *ctx, unsigned char *buf, size_t n)
{
	(void)ctx;
	return platform__random(buf, n) == 0 ? 0 : -1;
}

/* {"signed":"<text>","sig":"<base64 DER>"} with the operator's key. */
static int sign_envelope(const char *key_path, const char *text, sbuf *out)
{
	mbedtls_pk_context pk;
	unsigned char hash[32], sig[MBEDTLS_PK_SIGNATURE_MAX_SIZE], b64[400];
	size_t sig_len = 0, b64_len = 0;
	int rc = -1;
	mbedtls_pk_init(&pk);
	if (mbedtls_pk_parse_keyfile(&pk, key_path, NULL) != 0) {
		fprintf(stderr, "scrmctl fleet: --sign-key %s: not a readable PEM private key\n", key_path);
		goto out;
	}
	if (mbedtls_sha256_ret((const unsigned char *)text, strlen(text), hash, 0) != 0 ||
	    mbedtls_pk_sign(&pk, MBEDTLS_MD_SHA256, hash, sizeof(hash), sig, &sig_len, drbg, NULL) != 0 ||
	    /* the agent accepts only low s (docs/protocol.md, "Signatures") */
	    crypto__sig_low_s(sig, &sig_len, sizeof(sig)) != SCRM_OK ||
	    mbedtls_base64_encode(b64, sizeof(b64), &b64_len, sig, sig_len) != 0) {
		fprintf(stderr, "scrmctl fleet: cannot sign with %s\n", key_path);
		goto out;
	}
	sbuf__puts(out, "{\"signed\":");
	sbuf__jstr(out, text);
	sbuf__puts(out, ",\"sig\":\"");
	sbuf__put(out, (const char *)b64, b64_len);
	sbuf__puts(out, "\"}");
	rc = 0;
out:
	mbedtls_pk_free(&pk);
	return rc;
}

int console__cmd(const console__args *a, struct conn *c)
{
	char prefix[300], reply_topic[400], cmd_topic[400], id[40];
	uint8_t rnd[8];
	sbuf body, env;
	int rc = 3;
	snprintf(prefix, sizeof(prefix), "scrm/v1/%s/%s/%s/", a->tenant, a->store, a->device);
	snprintf(reply_topic, sizeof(reply_topic), "%sup/reply/%s", prefix, c->client_id);
	snprintf(cmd_topic, sizeof(cmd_topic), "%sdown/cmd", prefix);
	platform__random(rnd, sizeof(rnd));
	snprintf(id, sizeof(id), "c-%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5],
		 rnd[6], rnd[7]);
	if ((rc = conn__subscribe_wait(c, reply_topic, a->timeout_ms)))
		return rc;
	/* The broker queues commands for an offline device (its session
	 * persists): expires_ms keeps a stale one from running days later. */
	int64_t expires = platform__wall_ms() + a->expires_s * 1000;
	sbuf__init(&body);
	sbuf__init(&env);
	sbuf__puts(&body, "{\"v\":1,\"id\":\"");
	sbuf__puts(&body, id);
	/* tenant, store and device: a signed command is for this one device
	 * only (device ids repeat across stores) */
	sbuf__puts(&body, "\",\"tenant\":");
	sbuf__jstr(&body, a->tenant);
	sbuf__puts(&body, ",\"store\":");
	sbuf__jstr(&body, a->store);
	sbuf__puts(&body, ",\"device\":");
	sbuf__jstr(&body, a->device);
	sbuf__puts(&body, ",\"cmd\":");
	sbuf__jstr(&body, a->command);
	sbuf__puts(&body, ",\"args\":");
	sbuf__puts(&body, a->args_json ? a->args_json : "{}");
	sbuf__puts(&body, ",\"expires_ms\":");
	sbuf__i64(&body, expires);
	sbuf__puts(&body, "}");
	const sbuf *payload = &body;
	if (a->sign_key) {
		if (body.oom || sign_envelope(a->sign_key, body.p, &env) != 0) {
			rc = 2;
			goto out;
		}
		payload = &env;
	}
	if (payload->oom ||
	    mqtt__publish_request(c->mq, cmd_topic, payload->p, payload->len, reply_topic, id, strlen(id)) != SCRM_OK) {
		fprintf(stderr, "scrmctl fleet: cannot publish the command\n");
		rc = 3;
		goto out;
	}
	int64_t until = platform__mono_ms() + a->timeout_ms;
	rc = 3;
	for (;;) {
		mqtt__event *e = conn__next_event(c->mq, until);
		if (!e) {
			fprintf(stderr,
				"scrmctl fleet: no reply from %s/%s within %lld ms (offline? the command stays queued for "
				"it until %llds from now)\n",
				a->store, a->device, (long long)a->timeout_ms, (long long)a->expires_s);
			break;
		}
		if (e->type == MQ_PUBLISH_FAILED) {
			fprintf(stderr, "scrmctl fleet: the broker refused the command (code %d; is this identity allowed to "
					"publish to %s?)\n", e->code, cmd_topic);
			mqtt__event_free(e);
			rc = 1;
			break;
		}
		if (e->type == MQ_LOST) {
			fprintf(stderr, "scrmctl fleet: connection lost\n");
			mqtt__event_free(e);
			break;
		}
		if (e->type != MQ_MESSAGE || strcmp(e->topic, reply_topic) != 0 ||
		    (e->correlation && (e->correlation_len != strlen(id) || memcmp(e->correlation, id, strlen(id)) != 0))) {
			mqtt__event_free(e);
			continue;
		}
		cJSON *r = NULL;
		if (json__parse(e->payload, e->len, "reply", &r) != SCRM_OK && e->correlation) {
			/* Our correlation data: the answer, but unreadable. */
			char why[600];
			fprintf(stderr, "scrmctl fleet: %s/%s answered, but %s\n", a->store, a->device,
				console__shown(why, sizeof(why), scrm_errmsg()));
			mqtt__event_free(e);
			rc = 1;
			break;
		}
		if (!cJSON_IsObject(r) || (!e->correlation && strcmp(console__jtext(r, "id"), id) != 0)) {
			cJSON_Delete(r);
			mqtt__event_free(e);
			continue;
		}
		int ok = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "ok"));
		if (a->json) {
			/* as sent (it parsed strictly: valid JSON), terminal-safe */
			console__put_json(e->payload, e->len);
			putchar('\n');
		} else if (ok) {
			/* cJSON escapes C0 controls; put_json the rest (logs.recent
			 * lines, config values: anything the device says) */
			char *pretty = cJSON_Print(cJSON_GetObjectItemCaseSensitive(r, "result"));
			printf("%s/%s %s: ok\n", a->store, a->device, a->command);
			if (pretty)
				console__put_json(pretty, strlen(pretty));
			putchar('\n');
			cJSON_free(pretty);
		} else {
			const cJSON *er = cJSON_GetObjectItemCaseSensitive(r, "error");
			char code[80], field[80], msg[600];
			printf("%s/%s %s: REFUSED %s%s%s: %s\n", a->store, a->device, a->command,
			       console__shown(code, sizeof(code), console__jtext(er, "code")), console__jtext(er, "field")[0] ? " " : "",
			       console__shown(field, sizeof(field), console__jtext(er, "field")), console__shown(msg, sizeof(msg), console__jtext(er, "message")));
		}
		rc = ok ? 0 : 1;
		cJSON_Delete(r);
		mqtt__event_free(e);
		break;
	}
out:
	sbuf__free(&body);
	sbuf__free(&env);
	return rc;
}
