/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_cli: scrmctl's own parsing (agent/tools/scrmctl/cli.c, and the fleet console's
 * arguments in agent/tools/scrm-fleet/console.c). The input is split at NUL bytes into argv
 * for cli__parse() and console__parse(), and read whole as JSON Lines text for
 * cli__next_line(). (The JSON of each line is event__from_json's, fuzzed by
 * fuzz_event_json.) Invariants: a usage error always says why; what a parse
 * returns points into argv; every line lies inside the input, holds no
 * newline and is not blank.
 */
#include "fuzz.h"

#include "cli.h"
#include "ident.h"
#include "console.h"

#include <scrm/scrm.h>

#include <string.h>

#define MAX_ARGS 32

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf = malloc(size + 1);
	char *argv[MAX_ARGS + 1];
	int argc = 0;
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';
	argv[argc++] = (char *)"scrmctl";
	for (char *p = buf; p < buf + size && argc < MAX_ARGS; p += strlen(p) + 1)
		argv[argc++] = p;
	argv[argc] = NULL;

	cli__args a;
	char err[200];
	int rc = cli__parse(argc, argv, &a, err, sizeof(err));
	FUZZ_CHECK(rc == 0 || rc == 2, "rc %d", rc);
	if (rc == 2)
		FUZZ_CHECK(err[0] != '\0', "usage error without a reason");
	else
		FUZZ_CHECK(a.cmd != CLI_NONE, "success without a command");
	const char *borrowed[] = {a.store, a.device, a.path};
	for (size_t i = 0; rc == 0 && i < 3; i++) {
		int found = borrowed[i] == NULL;
		for (int k = 0; k < argc && !found; k++)
			found = borrowed[i] == argv[k];
		FUZZ_CHECK(found, "returned string %zu does not point into argv", i);
	}

	/* scrmctl fleet ...: argv[0] becomes "fleet" */
	{
		console__args ca;
		argv[0] = (char *)"fleet";
		rc = console__parse(argc, argv, &ca, err, sizeof(err));
		FUZZ_CHECK(rc == 0 || rc == 2, "fleet rc %d", rc);
		if (rc == 2)
			FUZZ_CHECK(err[0] != '\0', "fleet usage error without a reason");
		else
			FUZZ_CHECK(ca.action != CON_NONE, "fleet success without an action");
		if (rc == 0 && (ca.action == CON_SHOW || ca.action == CON_CMD))
			FUZZ_CHECK(ident__ok(ca.store) && ident__ok(ca.device) && ident__ok(ca.tenant),
				   "fleet target not a valid id");
		if (rc == 0 && ca.action == CON_CMD)
			FUZZ_CHECK(ca.command && ca.command[0] && ca.timeout_ms >= 1, "fleet cmd without a name");
		argv[0] = (char *)"scrmctl";
	}

	const char *p = (const char *)data, *end = p + size, *line;
	size_t len;
	long ln = 0, prev = 0;
	while (cli__next_line(&p, end, &line, &len, &ln)) {
		FUZZ_CHECK(line >= (const char *)data && line + len <= end, "line outside the input");
		FUZZ_CHECK(len > 0 && !memchr(line, '\n', len), "blank line or newline inside");
		FUZZ_CHECK(ln > prev, "line numbers must increase");
		prev = ln;
	}
	FUZZ_CHECK(p == end, "did not consume the input");

	/* A --basket value: SKU[:QTY[:PRICE]],... (the whole input as text). */
	{
		scrm_line lines[64];
		char skus[64 * 66];
		size_t n = 0;
		char text[4096];
		size_t tl = size < sizeof(text) - 1 ? size : sizeof(text) - 1;
		memcpy(text, data, tl);
		text[tl] = '\0';
		rc = cli__parse_basket(text, lines, 64, &n, skus, sizeof(skus), err, sizeof(err));
		FUZZ_CHECK(rc == 0 || rc == 2, "basket rc %d", rc);
		if (rc == 2)
			FUZZ_CHECK(err[0] != '\0', "basket refused without a reason");
		for (size_t i = 0; rc == 0 && i < n; i++) {
			FUZZ_CHECK(lines[i].sku >= skus && lines[i].sku < skus + sizeof(skus), "sku outside its buffer");
			FUZZ_CHECK(strlen(lines[i].sku) >= 1 && strlen(lines[i].sku) <= 64, "sku length");
			FUZZ_CHECK(lines[i].qty >= 1 && lines[i].unit_price >= 0, "qty/price out of range");
		}
	}
	free(buf);
	return 0;
}
