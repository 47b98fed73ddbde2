/* SPDX-License-Identifier: Apache-2.0 */
/* replay: the replay guard's file (see replay.h). */
#include "replay.h"

#include "platform.h"
#include "sbuf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* fleet__seen's save hook: the whole record, atomically (ctx: the path). */
static int save_file(const fleet__seen *seen, void *ctx)
{
	sbuf b;
	sbuf__init(&b);
	for (size_t i = 0; i < seen->n; i++) {
		sbuf__puts(&b, seen->ids[i].id);
		sbuf__puts(&b, " ");
		sbuf__i64(&b, seen->ids[i].expires_ms);
		sbuf__puts(&b, "\n");
	}
	int rc = b.oom ? -ENOMEM : platform__write_file_atomic(ctx, b.p ? b.p : "", b.len, 0600);
	sbuf__free(&b);
	return rc;
}

int replay__open(fleet__seen *seen, const char *path, int64_t now_ms)
{
	char *text = NULL, *file;
	size_t len = 0;
	char why[200];
	memset(seen, 0, sizeof(*seen));
	if (!(file = strdup(path))) {
		seen->broken = 1;
		return -1;
	}
	seen->save = save_file;
	seen->save_ctx = file;
	seen->where = file;
	/* FLEET_SEEN_MAX lines of at most 64 + 1 + 16 + 1 characters. Only
	 * the agent's own file (paths.h, platform__read_trusted): a planted one
	 * could drop ids and let a recorded command run again; one that is not
	 * the agent's counts as unreadable (fail closed). */
	int e = platform__read_trusted(path, (size_t)FLEET_SEEN_MAX * 84, 0, &text, &len, why, sizeof(why));
	if (e == -ENOENT)
		return 0;
	if (e != 0) {
		seen->broken = 1;
		return -1;
	}
	for (char *p = text, *line; (line = strsep(&p, "\n"));) {
		char *sp = strchr(line, ' ');
		int64_t exp = now_ms + FLEET_MAX_EXPIRY_MS;
		if (sp) {
			char *end = NULL;
			*sp = '\0';
			errno = 0;
			long long v = strtoll(sp + 1, &end, 10);
			if (errno || end == sp + 1 || *end || v <= 0)
				continue; /* not written by us: the atomic save never tears a line */
			exp = v;
		}
		if (fleet__seen_add(seen, line, exp) < 0) {
			seen->broken = 1;
			break;
		}
	}
	free(text);
	return seen->broken ? -1 : 0;
}

void replay__close(fleet__seen *seen)
{
	if (!seen)
		return;
	fleet__seen_free(seen);
	free(seen->save_ctx);
	seen->save = NULL;
	seen->save_ctx = NULL;
	seen->where = NULL;
}
