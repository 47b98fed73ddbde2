/* SPDX-License-Identifier: Apache-2.0 */
/* console: scrmctl fleet (see console.h). */
#include "console.h"

#include <scrm/scrm.h>

#include "cli.h"
#include "config.h"
#include "crypto.h"
#include "ident.h"
#include "json.h"
#include "mqtt.h"
#include "platform.h"
#include "sbuf.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <mbedtls/base64.h>
#include <mbedtls/pk.h>
#include <mbedtls/sha256.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_AGENTS 20000

/* The commands of agent/proto/commands.def, comma-separated and wrapped
 * under the `cmd` line of the usage, ending with ". " + `tail`. */
static void usage_commands(FILE *f, const char *tail)
{
	static const char *const names[] = {
#define SCRM_COMMAND(name, handler, any_clock, args, help) name,
#include "commands.def"
#undef SCRM_COMMAND
	};
	size_t n = sizeof(names) / sizeof(names[0]), col = 45;
	fputs("  cmd    send a command and print the reply:", f);
	for (size_t i = 0; i < n; i++) {
		size_t w = 1 + strlen(names[i]) + 1 + (i + 1 == n ? strlen(tail) + 1 : 0);
		if (col + w > 78) {
			fputs("\n        ", f);
			col = 8;
		}
		fprintf(f, " %s%s", names[i], i + 1 == n ? "." : ",");
		col += w;
	}
	fprintf(f, " %s\n", tail);
}

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: scrmctl fleet [CONNECTION] list [--store S] [--wait-ms N] [--json]\n"
		"       scrmctl fleet [CONNECTION] show STORE/DEVICE [--wait-ms N] [--json]\n"
		"       scrmctl fleet [CONNECTION] cmd STORE/DEVICE COMMAND [ARGS_JSON] [--timeout-ms N]\n"
		"                     [--expires-s N] [--sign-key KEY.pem] [--json]\n"
		"\n"
		"The central operations view of the fleet (docs/protocol.md, \"Fleet management\"):\n"
		"  list   every agent of the tenant from its retained state and heartbeat:\n"
		"         online/offline, last heartbeat, backlog, how far behind, version\n"
		"  show   one agent's health in detail\n");
	usage_commands(f, "ARGS_JSON is the args object, e.g.");
	fprintf(f,
		"         '{\"stream\":\"coupons\"}' or '{\"set\":{\"sync.window\":4}}'\n"
		"\n"
		"CONNECTION (or the environment variable in brackets):\n"
		"  --broker URI          mqtts://host:port  [SCRM_FLEET_BROKER]\n"
		"  --ca FILE             CA of the broker's certificate  [SCRM_FLEET_CA]\n"
		"  --cert FILE --key FILE  operator certificate (mutual TLS)  [SCRM_FLEET_CERT, _KEY]\n"
		"  --username U --password-file F  [SCRM_FLEET_USERNAME, _PASSWORD_FILE]\n"
		"  --tenant T            [SCRM_FLEET_TENANT]\n"
		"  --client-id ID        default scrmctl-<pid>-<random>\n"
		"A device is STORE/DEVICE (or TENANT/STORE/DEVICE).\n"
		"Exit codes: 0 ok, 1 refused or not found, 2 usage, 3 no connection or no reply in time.\n");
}

/* ---- device text on the operator's terminal ---- */

/* Length of the valid UTF-8 sequence at p (n bytes available) and its code
 * point, or 0: RFC 3629, no overlong forms, no surrogates, <= U+10FFFF. */
static size_t utf8_decode(const unsigned char *p, size_t n, uint32_t *cp)
{
	size_t len;
	uint32_t c, min;
	if (p[0] < 0x80) {
		*cp = p[0];
		return 1;
	}
	if (p[0] >= 0xc2 && p[0] <= 0xdf) {
		len = 2, c = p[0] & 0x1fu, min = 0x80;
	} else if (p[0] >= 0xe0 && p[0] <= 0xef) {
		len = 3, c = p[0] & 0x0fu, min = 0x800;
	} else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
		len = 4, c = p[0] & 0x07u, min = 0x10000;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		c = (c << 6) | (p[i] & 0x3fu);
	}
	if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
		return 0;
	*cp = c;
	return len;
}

/* Characters a terminal acts on or that change how the line reads. */
static int unsafe_cp(uint32_t c)
{
	return c < 0x20 || (c >= 0x7f && c <= 0x9f) || c == 0x061c || c == 0x200e || c == 0x200f ||
	       (c >= 0x2028 && c <= 0x202e) || (c >= 0x2066 && c <= 0x2069);
}

void console__term_text(sbuf *out, const char *s, size_t len, int json)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0;
	while (i < len) {
		uint32_t c = 0;
		size_t k = utf8_decode(p + i, len - i, &c);
		char e[8];
		if (k == 0) {
			/* not UTF-8: one byte at a time */
			if (json) {
				sbuf__puts(out, "\\ufffd");
			} else {
				memcpy(e, "\\x", 2);
				e[2] = hex[p[i] >> 4];
				e[3] = hex[p[i] & 15];
				sbuf__put(out, e, 4);
			}
			i++;
			continue;
		}
		if (json && c == '\r') {
			/* whitespace between tokens (valid JSON has no raw CR in
			 * a string), but it would send the cursor back over the
			 * line: a space means the same */
			sbuf__putc(out, ' ');
		} else if (json ? unsafe_cp(c) && c != '\t' && c != '\n' : unsafe_cp(c) || c == '\\') {
			if (!json && (c == '\n' || c == '\r' || c == '\t' || c == '\\')) {
				e[0] = '\\';
				e[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' : '\\';
				sbuf__put(out, e, 2);
			} else if (!json && c < 0x80) {
				memcpy(e, "\\x", 2);
				e[2] = hex[c >> 4];
				e[3] = hex[c & 15];
				sbuf__put(out, e, 4);
			} else {
				memcpy(e, "\\u", 2);
				e[2] = hex[(c >> 12) & 15];
				e[3] = hex[(c >> 8) & 15];
				e[4] = hex[(c >> 4) & 15];
				e[5] = hex[c & 15];
				sbuf__put(out, e, 6);
			}
		} else {
			sbuf__put(out, s + i, k);
		}
		i += k;
	}
}

/* s (NULL = "") made safe to print (console__term_text), in buf: cut at a
 * character boundary if it does not fit. Returns buf. */
static const char *shown(char *buf, size_t cap, const char *s)
{
	sbuf b;
	sbuf__init(&b);
	console__term_text(&b, s ? s : "", s ? strlen(s) : 0, 0);
	size_t n = b.oom ? 0 : b.len;
	if (n >= cap) {
		n = cap - 1;
		while (n > 0 && ((unsigned char)b.p[n] & 0xc0) == 0x80)
			n--; /* not inside a UTF-8 sequence (escapes are ASCII) */
	}
	if (n)
		memcpy(buf, b.p, n);
	buf[n] = '\0';
	sbuf__free(&b);
	return buf;
}

/* JSON text (cJSON's or a checked payload) to stdout, terminal-safe. */
static void put_json(const char *text, size_t len)
{
	sbuf b;
	sbuf__init(&b);
	console__term_text(&b, text, len, 1);
	if (!b.oom && b.len)
		fwrite(b.p, 1, b.len, stdout);
	sbuf__free(&b);
}

static int num_arg(const char *v, int64_t lo, int64_t hi, int64_t *out)
{
	int64_t x = 0;
	if (!v || !*v)
		return -1;
	for (const char *p = v; *p; p++) {
		if (*p < '0' || *p > '9' || x > (hi - (*p - '0')) / 10)
			return -1;
		x = x * 10 + (*p - '0');
	}
	if (x < lo)
		return -1;
	*out = x;
	return 0;
}

/* STORE/DEVICE or TENANT/STORE/DEVICE, split in place into a static copy. */
static int split_device(const char *spec, console__args *a, char *err, size_t errlen)
{
	static char buf[200];
	char *p[3];
	int n = 0;
	if (strlen(spec) >= sizeof(buf)) {
		snprintf(err, errlen, "device '%.40s...': too long", spec);
		return 2;
	}
	snprintf(buf, sizeof(buf), "%s", spec);
	int slashes = 0;
	for (const char *x = spec; *x; x++)
		slashes += *x == '/';
	if (slashes < 1 || slashes > 2) {
		snprintf(err, errlen, "device '%s': must be STORE/DEVICE or TENANT/STORE/DEVICE", spec);
		return 2;
	}
	for (char *s = buf, *tok; n < 3 && (tok = strsep(&s, "/"));)
		p[n++] = tok;
	if (n == 3)
		a->tenant = p[0];
	a->store = p[n - 2];
	a->device = p[n - 1];
	const char *part = NULL, *why = NULL;
	if (n == 3 && (why = ident__problem(a->tenant)))
		part = "tenant";
	else if ((why = ident__problem(a->store)))
		part = "store";
	else if ((why = ident__problem(a->device)))
		part = "device";
	if (part) {
		snprintf(err, errlen, "device '%s': %s: %s", spec, part, why);
		return 2;
	}
	return 0;
}

int console__parse(int argc, char **argv, console__args *a, char *err, size_t errlen)
{
	int pos = 0;
	const char *posv[4] = {0};
	memset(a, 0, sizeof(*a));
	a->wait_ms = 1500;
	a->timeout_ms = 10000;
	a->expires_s = 300;
	for (int i = 1; i < argc; i++) {
		const char *o = argv[i];
		const char **str = NULL;
		if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) {
			a->action = CON_HELP;
			return 0;
		} else if (strcmp(o, "--json") == 0) {
			a->json = 1;
			continue;
		} else if (strcmp(o, "--broker") == 0) {
			str = &a->broker;
		} else if (strcmp(o, "--ca") == 0) {
			str = &a->ca;
		} else if (strcmp(o, "--cert") == 0) {
			str = &a->cert;
		} else if (strcmp(o, "--key") == 0) {
			str = &a->key;
		} else if (strcmp(o, "--username") == 0) {
			str = &a->username;
		} else if (strcmp(o, "--password-file") == 0) {
			str = &a->password_file;
		} else if (strcmp(o, "--client-id") == 0) {
			str = &a->client_id;
		} else if (strcmp(o, "--tenant") == 0) {
			str = &a->tenant;
		} else if (strcmp(o, "--sign-key") == 0) {
			str = &a->sign_key;
		} else if (strcmp(o, "--store") == 0) {
			str = &a->filter_store;
		} else if (strcmp(o, "--wait-ms") == 0 || strcmp(o, "--timeout-ms") == 0 || strcmp(o, "--expires-s") == 0) {
			int64_t *dst = o[2] == 'w' ? &a->wait_ms : o[2] == 't' ? &a->timeout_ms : &a->expires_s;
			int64_t hi = o[2] == 'e' ? 86400 : 600000;
			if (i + 1 >= argc || num_arg(argv[i + 1], 1, hi, dst) != 0) {
				snprintf(err, errlen, "%s: needs a number from 1 to %lld", o, (long long)hi);
				return 2;
			}
			i++;
			continue;
		} else if (o[0] == '-' && o[1] == '-') {
			snprintf(err, errlen, "fleet: unknown option '%s'", o);
			return 2;
		} else {
			if (pos >= 4) {
				snprintf(err, errlen, "fleet: unexpected argument '%s'", o);
				return 2;
			}
			posv[pos++] = o;
			continue;
		}
		if (i + 1 >= argc || !argv[i + 1][0]) {
			snprintf(err, errlen, "%s: needs a value", o);
			return 2;
		}
		*str = argv[++i];
	}
	static const struct {
		const char *env;
		size_t off;
	} envs[] = {
		{"SCRM_FLEET_BROKER", offsetof(console__args, broker)},
		{"SCRM_FLEET_CA", offsetof(console__args, ca)},
		{"SCRM_FLEET_CERT", offsetof(console__args, cert)},
		{"SCRM_FLEET_KEY", offsetof(console__args, key)},
		{"SCRM_FLEET_USERNAME", offsetof(console__args, username)},
		{"SCRM_FLEET_PASSWORD_FILE", offsetof(console__args, password_file)},
		{"SCRM_FLEET_TENANT", offsetof(console__args, tenant)},
	};
	for (size_t i = 0; i < sizeof(envs) / sizeof(envs[0]); i++) {
		const char **dst = (const char **)(void *)((char *)a + envs[i].off);
		const char *v = getenv(envs[i].env);
		if (!*dst && v && *v)
			*dst = v;
	}
	if (pos == 0) {
		snprintf(err, errlen, "fleet: say list, show or cmd");
		return 2;
	}
	int rc = 0;
	if (strcmp(posv[0], "list") == 0) {
		a->action = CON_LIST;
		if (pos > 1) {
			snprintf(err, errlen, "fleet list: unexpected argument '%s'", posv[1]);
			return 2;
		}
		if (a->filter_store && !config__id_ok(a->filter_store)) {
			snprintf(err, errlen, "--store: %s", ident__problem(a->filter_store));
			return 2;
		}
	} else if (strcmp(posv[0], "show") == 0) {
		a->action = CON_SHOW;
		if (pos != 2) {
			snprintf(err, errlen, "fleet show: needs exactly one STORE/DEVICE");
			return 2;
		}
		rc = split_device(posv[1], a, err, errlen);
	} else if (strcmp(posv[0], "cmd") == 0) {
		a->action = CON_CMD;
		if (pos < 3) {
			snprintf(err, errlen, "fleet cmd: needs STORE/DEVICE and a COMMAND");
			return 2;
		}
		rc = split_device(posv[1], a, err, errlen);
		a->command = posv[2];
		a->args_json = pos > 3 ? posv[3] : NULL;
		if (!rc && (strlen(a->command) == 0 || strlen(a->command) > 23 || strpbrk(a->command, "\"\\ "))) {
			snprintf(err, errlen, "fleet cmd: '%.40s' is not a command name", a->command);
			return 2;
		}
		if (!rc && a->args_json) {
			/* Sent as typed: checked as strictly as the agent will
			 * (a repeated key would be refused there, less visibly). */
			cJSON *o = NULL;
			if (json__parse(a->args_json, strlen(a->args_json), "ARGS_JSON", &o) != SCRM_OK) {
				snprintf(err, errlen, "fleet cmd: %s", scrm_errmsg());
				return 2;
			}
			int ok = cJSON_IsObject(o);
			cJSON_Delete(o);
			if (!ok) {
				snprintf(err, errlen, "fleet cmd: ARGS_JSON must be a JSON object, e.g. '{\"stream\":\"all\"}'");
				return 2;
			}
		}
	} else {
		snprintf(err, errlen, "fleet: unknown action '%s' (list, show or cmd)", posv[0]);
		return 2;
	}
	if (rc)
		return rc;
	if (!a->broker) {
		snprintf(err, errlen, "--broker: required (or SCRM_FLEET_BROKER)");
		return 2;
	}
	if (!a->tenant || !config__id_ok(a->tenant)) {
		snprintf(err, errlen, "--tenant: %s", a->tenant ? ident__problem(a->tenant) : "required (or SCRM_FLEET_TENANT)");
		return 2;
	}
	if (!!a->cert != !!a->key) {
		snprintf(err, errlen, "%s: --cert and --key go together", a->cert ? "--key" : "--cert");
		return 2;
	}
	return 0;
}

/* ---- connection ---- */

struct conn {
	mqtt *mq;
	char client_id[80];
};

/* Wait for the next event of the client, up to `until` (monotonic). */
static mqtt__event *next_event(mqtt *m, int64_t until)
{
	for (;;) {
		mqtt__event *e = mqtt__next(m);
		if (e)
			return e;
		int64_t now = platform__mono_ms();
		if (now >= until)
			return NULL;
		struct pollfd pf = {.fd = mqtt__fd(m), .events = POLLIN};
		if (poll(&pf, 1, (int)(until - now)) > 0)
			platform__waker_drain(mqtt__fd(m));
	}
}

static int conn_connect(const console__args *a, struct conn *c, const char *uri, int plain, int64_t timeout_ms);

static int conn_open(const console__args *a, struct conn *c, int64_t timeout_ms)
{
	char *uri = NULL;
	int plain = 0;
	memset(c, 0, sizeof(*c));
	if (config__normalise_uri(a->broker, &uri, &plain) != SCRM_OK) {
		fprintf(stderr, "scrmctl fleet: --broker: must be mqtts://host:port (or mqtt:// for plaintext), got \"%.80s\"\n",
			a->broker);
		return 2;
	}
	int rc = conn_connect(a, c, uri, plain, timeout_ms);
	free(uri);
	return rc;
}

static int conn_connect(const console__args *a, struct conn *c, const char *uri, int plain, int64_t timeout_ms)
{
	char *password = NULL;
	uint32_t r = 0;
	if (!plain && !a->ca) {
		fprintf(stderr, "scrmctl fleet: --ca: required with TLS (the CA of the broker's certificate)\n");
		return 2;
	}
	if (a->password_file) {
		size_t n = 0;
		int e = platform__read_file(a->password_file, 4096, &password, &n);
		if (e) {
			fprintf(stderr, "scrmctl fleet: --password-file %s: %s\n", a->password_file, strerror(-e));
			return 2;
		}
		while (n && (password[n - 1] == '\n' || password[n - 1] == '\r'))
			password[--n] = '\0';
	}
	platform__random(&r, sizeof(r));
	if (a->client_id)
		snprintf(c->client_id, sizeof(c->client_id), "%s", a->client_id);
	else
		snprintf(c->client_id, sizeof(c->client_id), "scrmctl-%ld-%08x", (long)getpid(), r);
	mqtt__opts mo = {.uri = uri,
			 .client_id = c->client_id,
			 .ca_file = a->ca,
			 .cert_file = a->cert,
			 .key_file = a->key,
			 .username = a->username,
			 .password = password,
			 .keepalive_s = 30,
			 .connect_timeout_s = (int)((timeout_ms + 999) / 1000),
			 .clean_start = 1,
			 .session_expiry_s = 0};
	int rc = mqtt__create(&mo, &c->mq);
	free(password);
	if (rc != SCRM_OK) {
		fprintf(stderr, "scrmctl fleet: cannot create an MQTT client for %s\n", uri);
		return 2;
	}
	if (mqtt__connect(c->mq) != SCRM_OK) {
		fprintf(stderr, "scrmctl fleet: cannot start connecting to %s\n", uri);
		return 3;
	}
	int64_t until = platform__mono_ms() + timeout_ms;
	for (;;) {
		mqtt__event *e = next_event(c->mq, until);
		if (!e) {
			fprintf(stderr, "scrmctl fleet: no connection to %s within %lld ms\n", uri, (long long)timeout_ms);
			return 3;
		}
		int t = e->type;
		if (t == MQ_CONNECT_FAILED) {
			char why[300]; /* the broker's words */
			fprintf(stderr, "scrmctl fleet: cannot connect to %s: %s\n", uri,
				e->text ? shown(why, sizeof(why), e->text) : "refused");
		}
		mqtt__event_free(e);
		if (t == MQ_CONNECTED)
			return 0;
		if (t == MQ_CONNECT_FAILED)
			return 3;
	}
}

/* The process ends right after: DISCONNECT (so the broker drops the
 * session at once) and let exit() reclaim the client. Destroying a Paho
 * client whose threads are still closing its TLS session is racy (seen as
 * a rare crash under qemu and OpenSSL objects leaked); a handle kept
 * reachable here is neither. Output is flushed first, whatever happens. */
static mqtt *g_client;

static void conn_close(struct conn *c)
{
	fflush(stdout);
	if (!c->mq)
		return;
	g_client = c->mq;
	mqtt__disconnect(c->mq, 1000);
	c->mq = NULL;
}

static int subscribe_wait(struct conn *c, const char *topic, int64_t timeout_ms)
{
	if (mqtt__subscribe(c->mq, topic, 1) != SCRM_OK)
		return 3;
	int64_t until = platform__mono_ms() + timeout_ms;
	for (;;) {
		mqtt__event *e = next_event(c->mq, until);
		if (!e) {
			fprintf(stderr, "scrmctl fleet: no answer to the subscription to %s\n", topic);
			return 3;
		}
		int t = e->type;
		if (t == MQ_SUBSCRIBE_FAILED) {
			char why[300];
			fprintf(stderr, "scrmctl fleet: subscription to %s refused: %s (is this identity allowed to read it?)\n",
				topic, shown(why, sizeof(why), e->text));
		}
		if (t == MQ_SUBSCRIBED || t == MQ_SUBSCRIBE_FAILED) {
			mqtt__event_free(e);
			return t == MQ_SUBSCRIBED ? 0 : 1;
		}
		if (t == MQ_LOST) {
			mqtt__event_free(e);
			fprintf(stderr, "scrmctl fleet: connection lost\n");
			return 3;
		}
		mqtt__event_free(e);
	}
}

/* ---- agents from retained state ---- */

struct agent {
	char tenant[65], store[65], device[65];
	cJSON *state, *health;
};

struct fleet {
	struct agent *a;
	size_t n, cap;
};

/* scrm/v1/T/S/D/up/(state|health) → the parts; 1 = state, 2 = health. */
static int parse_topic(const char *topic, char *t, char *s, char *d)
{
	char buf[400];
	char *p[7];
	int n = 0;
	if (strlen(topic) >= sizeof(buf))
		return 0;
	snprintf(buf, sizeof(buf), "%s", topic);
	for (char *x = buf, *tok; n < 7 && (tok = strsep(&x, "/"));)
		p[n++] = tok;
	if (n != 7 || strcmp(p[0], "scrm") || strcmp(p[1], "v1") || strcmp(p[5], "up") || !config__id_ok(p[2]) || !config__id_ok(p[3]) ||
	    !config__id_ok(p[4]))
		return 0;
	snprintf(t, 65, "%s", p[2]);
	snprintf(s, 65, "%s", p[3]);
	snprintf(d, 65, "%s", p[4]);
	return strcmp(p[6], "state") == 0 ? 1 : strcmp(p[6], "health") == 0 ? 2 : 0;
}

static struct agent *agent_of(struct fleet *f, const char *t, const char *s, const char *d)
{
	for (size_t i = 0; i < f->n; i++)
		if (!strcmp(f->a[i].tenant, t) && !strcmp(f->a[i].store, s) && !strcmp(f->a[i].device, d))
			return &f->a[i];
	if (f->n == f->cap) {
		if (f->cap >= MAX_AGENTS)
			return NULL;
		size_t cap = f->cap ? f->cap * 2 : 64;
		struct agent *na = realloc(f->a, cap * sizeof(*na));
		if (!na)
			return NULL;
		f->a = na;
		f->cap = cap;
	}
	struct agent *a = &f->a[f->n++];
	memset(a, 0, sizeof(*a));
	snprintf(a->tenant, sizeof(a->tenant), "%s", t);
	snprintf(a->store, sizeof(a->store), "%s", s);
	snprintf(a->device, sizeof(a->device), "%s", d);
	return a;
}

static int64_t jnum(const cJSON *o, const char *path)
{
	char buf[64];
	snprintf(buf, sizeof(buf), "%s", path);
	const cJSON *it = o;
	for (char *x = buf, *tok; it && (tok = strsep(&x, "."));)
		it = cJSON_GetObjectItemCaseSensitive(it, tok);
	return cJSON_IsNumber(it) ? (int64_t)it->valuedouble : 0;
}

static const char *jtext(const cJSON *o, const char *name)
{
	const cJSON *it = o ? cJSON_GetObjectItemCaseSensitive(o, name) : NULL;
	return cJSON_IsString(it) ? it->valuestring : "";
}

static void take(struct fleet *f, const mqtt__event *e)
{
	char t[65], s[65], d[65];
	int kind = parse_topic(e->topic, t, s, d);
	if (!kind || e->len == 0)
		return;
	/* Read as strictly as central reads it: a state or heartbeat with a
	 * repeated key shows as nothing rather than as one of its readings. */
	cJSON *o = NULL;
	if (json__parse(e->payload, e->len, "state", &o) != SCRM_OK || !cJSON_IsObject(o)) {
		cJSON_Delete(o);
		return;
	}
	struct agent *a = agent_of(f, t, s, d);
	if (!a) {
		cJSON_Delete(o);
		return;
	}
	cJSON **slot = kind == 1 ? &a->state : &a->health;
	/* Central's rule (protocol.md): a state with a lower birth_seq than
	 * the one held is older news. */
	if (kind == 1 && *slot && jnum(o, "birth_seq") < jnum(*slot, "birth_seq")) {
		cJSON_Delete(o);
		return;
	}
	cJSON_Delete(*slot);
	*slot = o;
}

static void fleet_free(struct fleet *f)
{
	for (size_t i = 0; i < f->n; i++) {
		cJSON_Delete(f->a[i].state);
		cJSON_Delete(f->a[i].health);
	}
	free(f->a);
}

/* Collect retained state and health: until `wait_ms` has passed, or 300 ms
 * without a new message once something arrived. */
static int collect(struct conn *c, const console__args *a, const char *store, const char *device, struct fleet *f)
{
	char topic[300];
	for (int k = 0; k < 2; k++) {
		snprintf(topic, sizeof(topic), "scrm/v1/%s/%s/%s/up/%s", a->tenant, store ? store : "+", device ? device : "+",
			 k ? "health" : "state");
		if (mqtt__subscribe(c->mq, topic, 1) != SCRM_OK)
			return 3;
	}
	int64_t start = platform__mono_ms(), last = 0, until = start + a->wait_ms;
	int subs = 0;
	for (;;) {
		int64_t now = platform__mono_ms();
		int64_t stop = until;
		if (last && subs == 2 && last + 300 < stop)
			stop = last + 300;
		if (now >= stop)
			break;
		mqtt__event *e = next_event(c->mq, stop);
		if (!e)
			break;
		if (e->type == MQ_MESSAGE) {
			take(f, e);
			last = platform__mono_ms();
		} else if (e->type == MQ_SUBSCRIBED) {
			subs++;
		} else if (e->type == MQ_SUBSCRIBE_FAILED) {
			char why[300];
			fprintf(stderr, "scrmctl fleet: subscription refused: %s (is this identity allowed to read up/state and up/health?)\n",
				shown(why, sizeof(why), e->text));
			mqtt__event_free(e);
			return 1;
		} else if (e->type == MQ_LOST) {
			fprintf(stderr, "scrmctl fleet: connection lost\n");
			mqtt__event_free(e);
			return 3;
		}
		mqtt__event_free(e);
	}
	return 0;
}

/* online, offline, silent (online but no heartbeat for 3 periods) or unknown. */
static const char *status_of(const struct agent *a, int64_t now)
{
	const char *st = jtext(a->state, "state");
	if (strcmp(st, "online") == 0) {
		/* the heartbeat's own period first: it follows remote changes */
		int64_t hb = (a->health && jnum(a->health, "heartbeat_s") ? jnum(a->health, "heartbeat_s")
									  : jnum(a->state, "heartbeat_s")) * 1000;
		int64_t last = a->health ? jnum(a->health, "ts") : jnum(a->state, "ts");
		if (hb > 0 && now - last > 3 * hb)
			return "silent";
		return "online";
	}
	return st[0] ? st : "unknown";
}

static int cmp_agent(const void *x, const void *y)
{
	const struct agent *a = x, *b = y;
	int c = strcmp(a->store, b->store);
	return c ? c : strcmp(a->device, b->device);
}

static void notes(const struct agent *a, char *buf, size_t n)
{
	const cJSON *h = a->health;
	size_t k = 0;
	buf[0] = '\0';
#define NOTE(...)                                                                   \
	do {                                                                        \
		if (k < n) {                                                        \
			int w = snprintf(buf + k, n - k, "%s", k ? ", " : "");       \
			k += w > 0 ? (size_t)w : 0;                                 \
			w = k < n ? snprintf(buf + k, n - k, __VA_ARGS__) : 0;      \
			k += w > 0 ? (size_t)w : 0;                                 \
		}                                                                   \
	} while (0)
	const char *reason = jtext(a->state, "reason");
	if (reason[0] && strcmp(jtext(a->state, "state"), "offline") == 0)
		NOTE("%s", reason);
	if (h) {
		const cJSON *clock = cJSON_GetObjectItemCaseSensitive(h, "clock");
		if (cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(clock, "trusted")))
			NOTE("clock not trusted");
		if (jnum(h, "verdicts.rejected") > 0)
			NOTE("%lld coupon rejections", (long long)jnum(h, "verdicts.rejected"));
		if (jnum(h, "outbox.rejected") > 0)
			NOTE("%lld events rejected", (long long)jnum(h, "outbox.rejected"));
		if (cJSON_GetObjectItemCaseSensitive(h, "config_error"))
			NOTE("remote config ignored");
		if (cJSON_GetObjectItemCaseSensitive(h, "config_rollback"))
			NOTE("config rolled back");
		const cJSON *alarms = cJSON_GetObjectItemCaseSensitive(h, "alarms"), *al;
		cJSON_ArrayForEach(al, alarms) NOTE("ALARM %s", jtext(al, "code"));
		int64_t free_b = jnum(h, "disk.free_bytes");
		if (cJSON_GetObjectItemCaseSensitive(h, "disk") && free_b < 256LL * 1024 * 1024)
			NOTE("disk %lld MiB free", (long long)(free_b >> 20));
	}
#undef NOTE
}

static int do_list(const console__args *a, struct conn *c)
{
	struct fleet f = {0};
	int64_t now = platform__wall_ms();
	int rc = collect(c, a, a->filter_store, NULL, &f);
	if (rc) {
		fleet_free(&f);
		return rc;
	}
	qsort(f.a, f.n, sizeof(*f.a), cmp_agent);
	if (a->json) {
		sbuf out;
		sbuf__init(&out);
		sbuf__puts(&out, "{\"tenant\":");
		sbuf__jstr(&out, a->tenant);
		sbuf__puts(&out, ",\"agents\":[");
		for (size_t i = 0; i < f.n; i++) {
			char *st = f.a[i].state ? cJSON_PrintUnformatted(f.a[i].state) : NULL;
			char *h = f.a[i].health ? cJSON_PrintUnformatted(f.a[i].health) : NULL;
			sbuf__puts(&out, i ? ",{\"store\":" : "{\"store\":");
			sbuf__jstr(&out, f.a[i].store);
			sbuf__puts(&out, ",\"device\":");
			sbuf__jstr(&out, f.a[i].device);
			sbuf__puts(&out, ",\"status\":");
			sbuf__jstr(&out, status_of(&f.a[i], now));
			sbuf__puts(&out, ",\"state\":");
			sbuf__puts(&out, st ? st : "null");
			sbuf__puts(&out, ",\"health\":");
			sbuf__puts(&out, h ? h : "null");
			sbuf__puts(&out, "}");
			cJSON_free(st);
			cJSON_free(h);
		}
		sbuf__puts(&out, "]}\n");
		if (!out.oom)
			put_json(out.p, out.len);
		sbuf__free(&out);
	} else if (f.n == 0) {
		printf("no agents of tenant %s have reported%s%s\n", a->tenant, a->filter_store ? " in store " : "",
		       a->filter_store ? a->filter_store : "");
	} else {
		int online = 0;
		printf("%-12s %-14s %-8s %-9s %-9s %8s %-9s %-8s %-8s %4s  %s\n", "STORE", "DEVICE", "STATUS", "SINCE",
		       "HEARTBEAT", "BACKLOG", "BEHIND", "VERSION", "ARCH", "CFG", "NOTES");
		for (size_t i = 0; i < f.n; i++) {
			const struct agent *ag = &f.a[i];
			char since[32] = "-", hb[32] = "-", behind[32] = "-", backlog[24] = "-", cfgv[16] = "-", nb[300];
			char st_s[80], ver_s[80], arch_s[80], nb_s[600];
			const char *st = status_of(ag, now);
			online += strcmp(st, "online") == 0;
			if (ag->state)
				cli__age(since, sizeof(since), now - jnum(ag->state, "ts"));
			if (ag->health) {
				cli__age(hb, sizeof(hb), now - jnum(ag->health, "ts"));
				snprintf(backlog, sizeof(backlog), "%lld", (long long)jnum(ag->health, "outbox.pending"));
				if (jnum(ag->health, "outbox.oldest_pending_ms") > 0)
					cli__age(behind, sizeof(behind), now - jnum(ag->health, "outbox.oldest_pending_ms"));
			}
			const cJSON *src = ag->health ? ag->health : ag->state;
			if (src && cJSON_GetObjectItemCaseSensitive(src, "config_version"))
				snprintf(cfgv, sizeof(cfgv), "v%lld", (long long)jnum(src, "config_version"));
			notes(ag, nb, sizeof(nb));
			const char *ver = jtext(ag->state, "version");
			if (!ver[0])
				ver = jtext(ag->health, "version");
			const char *arch = jtext(ag->state, "arch");
			/* store and device are ids (the topic's, checked); the
			 * rest is what the device said: escaped */
			printf("%-12s %-14s %-8s %-9s %-9s %8s %-9s %-8s %-8s %4s  %s\n", ag->store, ag->device,
			       shown(st_s, sizeof(st_s), st), since, hb, backlog, behind,
			       ver[0] ? shown(ver_s, sizeof(ver_s), ver) : "-", arch[0] ? shown(arch_s, sizeof(arch_s), arch) : "-",
			       cfgv, shown(nb_s, sizeof(nb_s), nb));
		}
		printf("%zu agents, %d online\n", f.n, online);
	}
	fleet_free(&f);
	return 0;
}

static int do_show(const console__args *a, struct conn *c)
{
	struct fleet f = {0};
	int64_t now = platform__wall_ms();
	int rc = collect(c, a, a->store, a->device, &f);
	if (rc || f.n == 0) {
		if (!rc)
			fprintf(stderr, "scrmctl fleet: %s/%s/%s has never reported (no retained state)\n", a->tenant, a->store,
				a->device);
		fleet_free(&f);
		return rc ? rc : 1;
	}
	const struct agent *ag = &f.a[0];
	if (a->json) {
		char *st = ag->state ? cJSON_PrintUnformatted(ag->state) : NULL;
		char *h = ag->health ? cJSON_PrintUnformatted(ag->health) : NULL;
		sbuf out;
		sbuf__init(&out);
		sbuf__puts(&out, "{\"store\":");
		sbuf__jstr(&out, ag->store);
		sbuf__puts(&out, ",\"device\":");
		sbuf__jstr(&out, ag->device);
		sbuf__puts(&out, ",\"status\":"); /* the device's own word when not online */
		sbuf__jstr(&out, status_of(ag, now));
		sbuf__puts(&out, ",\"state\":");
		sbuf__puts(&out, st ? st : "null");
		sbuf__puts(&out, ",\"health\":");
		sbuf__puts(&out, h ? h : "null");
		sbuf__puts(&out, "}\n");
		if (!out.oom)
			put_json(out.p, out.len);
		sbuf__free(&out);
		cJSON_free(st);
		cJSON_free(h);
		fleet_free(&f);
		return 0;
	}
	char t1[32], t2[32], nb[300], x1[80], x2[200], nb_s[600];
	const cJSON *s = ag->state, *h = ag->health;
	printf("%s/%s/%s: %s\n", ag->tenant, ag->store, ag->device, shown(x1, sizeof(x1), status_of(ag, now)));
	if (s) {
		cli__age(t1, sizeof(t1), now - jnum(s, "ts"));
		printf("  state        %s %s ago (birth_seq %lld)%s%s\n", shown(x1, sizeof(x1), jtext(s, "state")), t1,
		       (long long)jnum(s, "birth_seq"), jtext(s, "reason")[0] ? ", " : "",
		       shown(x2, sizeof(x2), jtext(s, "reason")));
		printf("  version      %s (%s), protocol %lld, config v%lld, heartbeat every %llds%s\n",
		       shown(x1, sizeof(x1), jtext(s, "version")), shown(x2, sizeof(x2), jtext(s, "arch")),
		       (long long)jnum(s, "protocol"), (long long)jnum(s, "config_version"),
		       (long long)jnum(s, "heartbeat_s"),
		       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "signed_commands")) ? ", signed commands only" : "");
	}
	if (h) {
		cli__age(t1, sizeof(t1), now - jnum(h, "ts"));
		cli__age(t2, sizeof(t2), jnum(h, "uptime_ms"));
		printf("  heartbeat    %s ago, up %s, RSS %.1f MiB, %lld commands\n", t1, t2,
		       (double)jnum(h, "rss_bytes") / 1048576.0, (long long)jnum(h, "commands"));
		if (jnum(h, "outbox.oldest_pending_ms"))
			cli__age(t2, sizeof(t2), now - jnum(h, "outbox.oldest_pending_ms"));
		else
			snprintf(t2, sizeof(t2), "-");
		printf("  outbox       %lld pending (%lld bytes), oldest %s, last seq %lld, acked to %lld, %lld rejected\n",
		       (long long)jnum(h, "outbox.pending"), (long long)jnum(h, "outbox.bytes"), t2,
		       (long long)jnum(h, "outbox.last_seq"), (long long)jnum(h, "outbox.last_acked_seq"),
		       (long long)jnum(h, "outbox.rejected"));
		if (jnum(h, "outbox.last_ack_ms"))
			cli__age(t1, sizeof(t1), now - jnum(h, "outbox.last_ack_ms"));
		else
			snprintf(t1, sizeof(t1), "never");
		printf("  central      last ack %s%s; %lld published, %lld redeliveries\n", t1,
		       strcmp(t1, "never") ? " ago" : "", (long long)jnum(h, "link.published"),
		       (long long)jnum(h, "link.redeliveries"));
		printf("  verdicts     %lld pending, %lld rejected, %lld accepted\n", (long long)jnum(h, "verdicts.pending"),
		       (long long)jnum(h, "verdicts.rejected"), (long long)jnum(h, "verdicts.accepted"));
		const cJSON *cache = cJSON_GetObjectItemCaseSensitive(h, "cache"), *it;
		cJSON_ArrayForEach(it, cache)
		{
			if (jnum(it, "applied_ms"))
				cli__age(t1, sizeof(t1), jnum(it, "age_ms"));
			else
				snprintf(t1, sizeof(t1), "never");
			printf("  cache        %-10s cursor %-8lld %9lld rows, changed %s%s\n", shown(x1, sizeof(x1), it->string),
			       (long long)jnum(it, "cursor"), (long long)jnum(it, "rows"), t1, strcmp(t1, "never") ? " ago" : "");
		}
		printf("  disk         %.1f GiB free of %.1f GiB; clock %s\n", (double)jnum(h, "disk.free_bytes") / 1073741824.0,
		       (double)jnum(h, "disk.total_bytes") / 1073741824.0,
		       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(h, "clock"), "trusted"))
			       ? "trusted"
			       : "NOT trusted");
	}
	notes(ag, nb, sizeof(nb));
	if (nb[0])
		printf("  notes        %s\n", shown(nb_s, sizeof(nb_s), nb));
	fleet_free(&f);
	return 0;
}

/* ---- commands ---- */

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

static int do_cmd(const console__args *a, struct conn *c)
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
	if ((rc = subscribe_wait(c, reply_topic, a->timeout_ms)))
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
		mqtt__event *e = next_event(c->mq, until);
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
				shown(why, sizeof(why), scrm_errmsg()));
			mqtt__event_free(e);
			rc = 1;
			break;
		}
		if (!cJSON_IsObject(r) || (!e->correlation && strcmp(jtext(r, "id"), id) != 0)) {
			cJSON_Delete(r);
			mqtt__event_free(e);
			continue;
		}
		int ok = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "ok"));
		if (a->json) {
			/* as sent (it parsed strictly: valid JSON), terminal-safe */
			put_json(e->payload, e->len);
			putchar('\n');
		} else if (ok) {
			/* cJSON escapes C0 controls; put_json the rest (logs.recent
			 * lines, config values: anything the device says) */
			char *pretty = cJSON_Print(cJSON_GetObjectItemCaseSensitive(r, "result"));
			printf("%s/%s %s: ok\n", a->store, a->device, a->command);
			if (pretty)
				put_json(pretty, strlen(pretty));
			putchar('\n');
			cJSON_free(pretty);
		} else {
			const cJSON *er = cJSON_GetObjectItemCaseSensitive(r, "error");
			char code[80], field[80], msg[600];
			printf("%s/%s %s: REFUSED %s%s%s: %s\n", a->store, a->device, a->command,
			       shown(code, sizeof(code), jtext(er, "code")), jtext(er, "field")[0] ? " " : "",
			       shown(field, sizeof(field), jtext(er, "field")), shown(msg, sizeof(msg), jtext(er, "message")));
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

int console__main(int argc, char **argv)
{
	console__args a;
	char err[300];
	struct conn c;
	if (console__parse(argc, argv, &a, err, sizeof(err)) != 0) {
		fprintf(stderr, "scrmctl: %s\nTry 'scrmctl fleet --help'.\n", err);
		return 2;
	}
	if (a.action == CON_HELP) {
		usage(stdout);
		return 0;
	}
	int rc = conn_open(&a, &c, a.timeout_ms < 10000 ? 10000 : a.timeout_ms);
	if (rc) {
		conn_close(&c);
		return rc;
	}
	if (a.action == CON_LIST)
		rc = do_list(&a, &c);
	else if (a.action == CON_SHOW)
		rc = do_show(&a, &c);
	else
		rc = do_cmd(&a, &c);
	conn_close(&c);
	return rc;
}
