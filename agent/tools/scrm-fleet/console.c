/* SPDX-License-Identifier: Apache-2.0 */
/* console: scrm-fleet's words (see console.h) — its usage and command
 * list, the arguments, and device text made safe for the operator's
 * terminal. No I/O beyond stdout: the connection is conn.c's, the list and
 * show views view.c's, commands cmd.c's. */
#include "console.h"

#include <scrm/scrm.h>

#include "ident.h"
#include "json.h"
#include "sbuf.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

void console__usage(FILE *f)
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
const char *console__shown(char *buf, size_t cap, const char *s)
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
void console__put_json(const char *text, size_t len)
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
		if (a->filter_store && !ident__ok(a->filter_store)) {
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
	if (!a->tenant || !ident__ok(a->tenant)) {
		snprintf(err, errlen, "--tenant: %s", a->tenant ? ident__problem(a->tenant) : "required (or SCRM_FLEET_TENANT)");
		return 2;
	}
	if (!!a->cert != !!a->key) {
		snprintf(err, errlen, "%s: --cert and --key go together", a->cert ? "--key" : "--cert");
		return 2;
	}
	return 0;
}

/* A string member of o, or "" (absent, not a string, o NULL). */
const char *console__jtext(const cJSON *o, const char *name)
{
	const cJSON *it = o ? cJSON_GetObjectItemCaseSensitive(o, name) : NULL;
	return cJSON_IsString(it) ? it->valuestring : "";
}
