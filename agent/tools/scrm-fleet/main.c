/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-fleet: the central operations console as a program (console.h): parse,
 * connect, run the action, disconnect. Run directly or by `scrmctl fleet`,
 * which execs it with the same arguments.
 */
#include "conn.h"

#include "platform.h"

#include <stdio.h>
#include <string.h>

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
		console__usage(stdout);
		return 0;
	}
	int rc = conn__open(&a, &c, a.timeout_ms < 10000 ? 10000 : a.timeout_ms);
	if (rc) {
		conn__close(&c);
		return rc;
	}
	if (a.action == CON_LIST)
		rc = console__list(&a, &c);
	else if (a.action == CON_SHOW)
		rc = console__show(&a, &c);
	else
		rc = console__cmd(&a, &c);
	conn__close(&c);
	return rc;
}

int main(int argc, char **argv)
{
	/* Before anything is read: the console holds its client key and
	 * password, and a core dump would write them to disk. (exec made this
	 * process dumpable again even when scrmctl had closed it.) */
	int nc = platform__no_core_dumps();
	if (nc)
		fprintf(stderr, "scrm-fleet: warning: cannot disable core dumps: %s\n", strerror(-nc));
	return console__main(argc, argv);
}
