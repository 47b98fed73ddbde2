/* SPDX-License-Identifier: Apache-2.0 */
/*
 * console: scrm-fleet (also run as `scrmctl fleet`), the central operations
 * team's view of the fleet (docs/protocol.md, "Fleet management"). It
 * connects to the broker as an operator identity, reads every agent's
 * retained state and heartbeat, and sends commands as MQTT 5 requests,
 * printing the reply. Its argument parser and terminal-safe text
 * (console.c) are separate from its I/O (conn.c, view.c, cmd.c) so they can
 * be fuzzed and unit-tested without a broker.
 */
#ifndef SCRM_CONSOLE_H
#define SCRM_CONSOLE_H

#include "sbuf.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct cJSON;

enum console__action { CON_NONE = 0, CON_LIST, CON_SHOW, CON_CMD, CON_HELP };

typedef struct console__args {
	enum console__action action;
	/* connection; borrowed from argv or the environment */
	const char *broker, *ca, *cert, *key, *username, *password_file, *client_id;
	const char *tenant;
	const char *sign_key; /* PEM private key: sign commands */
	/* target: show / cmd */
	const char *store, *device;
	const char *command;  /* cmd: the name */
	const char *args_json; /* cmd: the args object text, NULL = {} */
	const char *filter_store; /* list --store */
	int json;
	int64_t wait_ms, timeout_ms, expires_s;
} console__args;

/* Parse `scrmctl fleet ...` (argv[0] = "fleet"). Environment variables
 * SCRM_FLEET_BROKER, _CA, _CERT, _KEY, _USERNAME, _PASSWORD_FILE, _TENANT
 * fill options not given. 0, or 2 with the reason in err (naming the option). */
int console__parse(int argc, char **argv, console__args *a, char *err, size_t errlen);

/* Append text a device (or the broker) sent — `len` bytes of s, NUL bytes
 * included — to out, safe to print on an operator's terminal: nothing in it
 * can move the cursor, clear the screen, retitle the window, reorder the line
 * or pass for other text. Escaped: C0 controls and DEL (\n \r \t, others
 * \x1b), C1 controls U+0080..U+009F (\u009b), the bidirectional and line
 * formatting characters U+061C, U+200E/F, U+2028..U+202E, U+2066..U+2069
 * (\u202e), each byte that is not part of valid UTF-8 (\xff), and the
 * backslash itself (\\), so an escape in the output always means one.
 * json != 0: s is JSON text (cJSON's output, or a payload the strict parser
 * accepted), where such characters stand only inside strings: they become
 * JSON escapes instead (\u001b, \u007f, \u009b, \u202e; \ufffd for a
 * byte that is not UTF-8), tab, newline (whitespace between tokens) and
 * backslashes are kept, a carriage return (whitespace too, but it moves the
 * cursor back over the line) becomes a space, and the text stays valid JSON
 * with the same meaning. Sets out->oom on allocation failure. */
void console__term_text(sbuf *out, const char *s, size_t len, int json);

/* s (NULL = "") made safe to print (console__term_text) into buf, cut at a
 * character boundary if it does not fit. Returns buf. */
const char *console__shown(char *buf, size_t cap, const char *s);
/* JSON text (cJSON's or a checked payload) to stdout, terminal-safe. */
void console__put_json(const char *text, size_t len);
/* A string member of o, or "" (absent, not a string, o NULL). Borrowed. */
const char *console__jtext(const struct cJSON *o, const char *name);
/* The usage text, command list included. */
void console__usage(FILE *f);

/* Run it (main.c): 0 ok, 1 the command was refused / nothing found, 2 usage,
 * 3 no reply or no connection in time. */
int console__main(int argc, char **argv);

#endif
