/* SPDX-License-Identifier: Apache-2.0 */
/* birth: the birth sequence file and the presence identity (see birth.h). */
#include "birth.h"

#include "platform.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

int64_t fleet__next_birth_seq(const char *dir, int64_t now_ms)
{
	char path[4200], *text = NULL, num[32];
	size_t len = 0;
	int64_t last = 0;
	char why[200];
	snprintf(path, sizeof(path), "%s/birth_seq", dir);
	if (platform__read_trusted(path, 64, 0, &text, &len, why, sizeof(why)) == 0) {
		char *end = NULL;
		errno = 0;
		long long v = strtoll(text, &end, 10);
		if (errno == 0 && end != text && v > 0 && v < (1LL << 53))
			last = v;
		free(text);
	}
	int64_t next = last + 1 > now_ms ? last + 1 : now_ms;
	int k = snprintf(num, sizeof(num), "%lld\n", (long long)next);
	/* Not fatal: a birth_seq that could not be stored is still larger
	 * than every earlier one while the clock is sane. */
	platform__write_file_atomic(path, num, (size_t)k, 0600);
	return next;
}

fleet__ident birth__ident(const config *cfg)
{
	fleet__ident id = {
		.tenant = cfg->tenant,
		.store = cfg->store_id,
		.device = cfg->device_id,
		.config_version = cfg->config_version,
		.heartbeat_s = cfg->heartbeat_s,
		.signed_commands = cfg->command_key_file != NULL,
	};
	return id;
}

void birth__state_json(sbuf *out, const config *cfg, const char *state, const char *reason, int64_t birth_seq,
		       int64_t now_ms, int64_t started_ms, const char *boot, const char *cache_json)
{
	fleet__ident id = birth__ident(cfg);
	fleet__state_json(out, &id, state, reason, birth_seq, now_ms, started_ms, boot, cache_json);
}
