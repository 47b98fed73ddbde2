/* SPDX-License-Identifier: Apache-2.0 */
/* fleet: presence payloads and command parsing (see fleet.h). */
#include "fleet.h"

#include <scrm/scrm.h>

#include "ident.h"
#include "json.h"
#include "topics.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every command the agent knows (commands.def); anything else is
 * unknown_command. */
const fleet__command_info fleet__commands[] = {
#define SCRM_COMMAND(name, handler, any_clock, args, help) {name, any_clock, args, help},
#include "commands.def"
#undef SCRM_COMMAND
};
const size_t fleet__n_commands = sizeof(fleet__commands) / sizeof(fleet__commands[0]);

const fleet__command_info *fleet__command_find(const char *name)
{
	for (size_t i = 0; i < fleet__n_commands; i++)
		if (strcmp(fleet__commands[i].name, name) == 0)
			return &fleet__commands[i];
	return NULL;
}

int fleet__fail(fleet__error *err, const char *code, const char *field, const char *fmt, ...)
{
	va_list ap;
	snprintf(err->code, sizeof(err->code), "%s", code);
	snprintf(err->field, sizeof(err->field), "%s", field ? field : "");
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
	return -1;
}

void fleet__cmd_free(fleet__cmd *cmd)
{
	if (!cmd)
		return;
	cJSON_Delete(cmd->root);
	cmd->root = NULL;
	cmd->args = NULL;
}

/* An id or a name: 1..max-1 printable ASCII without quotes or backslashes,
 * so it can be echoed and logged as is (core/ident.h). */
static int token_ok(const char *s, size_t max)
{
	return max > 1 && ident__token_ok((const unsigned char *)s, strlen(s), max - 1);
}

static int ms_of(const cJSON *it, int64_t *out)
{
	if (!cJSON_IsNumber(it))
		return 0;
	double d = it->valuedouble;
	if (!isfinite(d) || d < 0 || d > 9007199254740992.0 || d != floor(d))
		return 0;
	*out = (int64_t)d;
	return 1;
}

/* Fill cmd from the command object `o` (owned by cmd->root already). */
static int read_command(fleet__cmd *cmd, const cJSON *o, fleet__error *err)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, "id");
	if (it) {
		if (!cJSON_IsString(it) || !token_ok(it->valuestring, sizeof(cmd->id)))
			return fleet__fail(err, "bad_command", "id", "must be 1..64 printable characters");
		snprintf(cmd->id, sizeof(cmd->id), "%s", it->valuestring);
	}
	it = cJSON_GetObjectItemCaseSensitive(o, "cmd");
	if (cJSON_IsString(it) && token_ok(it->valuestring, sizeof(cmd->name)))
		snprintf(cmd->name, sizeof(cmd->name), "%s", it->valuestring);
	it = cJSON_GetObjectItemCaseSensitive(o, "v");
	if (!cJSON_IsNumber(it) || it->valuedouble != 1)
		return fleet__fail(err, "bad_version", "v", "unknown protocol version (expected 1)");
	it = cJSON_GetObjectItemCaseSensitive(o, "cmd");
	if (!cJSON_IsString(it))
		return fleet__fail(err, "bad_command", "cmd", "required: the command name");
	if (!cmd->name[0])
		return fleet__fail(err, "unknown_command", "cmd", "not a command this agent knows");
	if (!fleet__command_find(cmd->name))
		return fleet__fail(err, "unknown_command", "cmd", "'%s' is not a command this agent knows", cmd->name);
	it = cJSON_GetObjectItemCaseSensitive(o, "args");
	if (it && !cJSON_IsObject(it) && !cJSON_IsNull(it))
		return fleet__fail(err, "bad_args", "args", "must be an object");
	cmd->args = cJSON_IsObject(it) ? it : NULL;
	it = cJSON_GetObjectItemCaseSensitive(o, "expires_ms");
	if (it && !ms_of(it, &cmd->expires_ms))
		return fleet__fail(err, "bad_command", "expires_ms", "must be Unix milliseconds");
	return 0;
}

static int seen_before(const fleet__seen *seen, const char *id)
{
	for (size_t i = 0; i < seen->n; i++)
		if (strcmp(seen->ids[i].id, id) == 0)
			return 1;
	return 0;
}

/* Forget the ids whose command has expired: it would be refused as
 * `expired` anyway. Only with a trusted clock (an untrusted one may lag, so
 * it never forgets too early either). */
static void seen_prune(fleet__seen *seen, int64_t now_ms)
{
	size_t k = 0;
	for (size_t i = 0; i < seen->n; i++)
		if (seen->ids[i].expires_ms > now_ms)
			seen->ids[k++] = seen->ids[i];
	seen->n = k;
}

static int seen_add(fleet__seen *seen, const char *id, int64_t expires_ms)
{
	if (seen->n == seen->cap) {
		size_t cap = seen->cap ? 2 * seen->cap : 64;
		fleet__seen_id *p = realloc(seen->ids, cap * sizeof(*p));
		if (!p)
			return -1;
		seen->ids = p;
		seen->cap = cap;
	}
	snprintf(seen->ids[seen->n].id, sizeof(seen->ids[0].id), "%s", id);
	seen->ids[seen->n].expires_ms = expires_ms;
	seen->n++;
	return 0;
}

static const char *where(const fleet__seen *seen)
{
	return seen->where ? seen->where : "memory";
}

/* The replay check and record of a signed command that passed every other
 * check: 0 when it may run (its id recorded, and saved if seen has a save
 * hook). */
static int seen_record(fleet__seen *seen, const fleet__cmd *cmd, int64_t now_ms, int clock_ok, fleet__error *err)
{
	if (seen->broken)
		return fleet__fail(err, "unavailable", "id",
				   "the record of obeyed signed commands (%s) cannot be read; no signed command is "
				   "obeyed until it is repaired or removed",
				   where(seen));
	if (clock_ok)
		seen_prune(seen, now_ms);
	if (seen_before(seen, cmd->id))
		return fleet__fail(err, "replayed", "id", "this command was already received");
	if (seen->n >= FLEET_SEEN_MAX)
		return fleet__fail(err, "unavailable", "id",
				   "%d signed commands are still unexpired on this agent; no new one is accepted until "
				   "some expire",
				   FLEET_SEEN_MAX);
	if (seen_add(seen, cmd->id, cmd->expires_ms) != 0)
		return fleet__fail(err, "failed", "id", "out of memory recording the command id; not executed");
	/* Fail closed: a command obeyed but not recorded could be replayed
	 * after a restart. */
	int e = seen->save ? seen->save(seen, seen->save_ctx) : 0;
	if (e != 0) {
		seen->n--;
		return fleet__fail(err, "failed", "id", "cannot record the command id in %s (%s); not executed",
				   where(seen), strerror(-e));
	}
	return 0;
}

int fleet__parse_command(const char *payload, size_t len, const char *tenant, const char *store,
			 const char *device_id, crypto__verifier *vf, int64_t now_ms, int clock_ok, fleet__seen *seen,
			 fleet__cmd *cmd, fleet__error *err)
{
	cJSON *outer = NULL;
	memset(cmd, 0, sizeof(*cmd));
	memset(err, 0, sizeof(*err));
	if (len > FLEET_MAX_COMMAND_BYTES)
		return fleet__fail(err, "too_big", NULL, "command of %zu bytes; at most %d", len, FLEET_MAX_COMMAND_BYTES);
	/* Strict (json.h): {"cmd":"ping","cmd":"cache.purge"} must not be one
	 * command here and another in central's log. */
	if (json__parse(payload, len, "command", &outer) != SCRM_OK)
		return fleet__fail(err, "bad_json", NULL, "%s", scrm_errmsg());
	if (!cJSON_IsObject(outer)) {
		cJSON_Delete(outer);
		return fleet__fail(err, "bad_json", NULL, "not a JSON object");
	}
	const cJSON *signed_text = cJSON_GetObjectItemCaseSensitive(outer, "signed");
	if (!signed_text) {
		cmd->root = outer;
		if (read_command(cmd, outer, err))
			return -1;
		if (vf)
			return fleet__fail(err, "unsigned", "sig", "this agent obeys only commands signed by central");
		if (cmd->expires_ms && clock_ok && cmd->expires_ms <= now_ms)
			return fleet__fail(err, "expired", "expires_ms", "expired %lld ms ago",
					   (long long)(now_ms - cmd->expires_ms));
		return 0;
	}

	/* Signed: {"signed":"<command JSON>","sig":"<base64 DER ECDSA P-256
	 * over SHA-256 of the signed text's bytes>"} — the same scheme as
	 * coupons, with its own key. */
	const cJSON *sig = cJSON_GetObjectItemCaseSensitive(outer, "sig");
	uint8_t der[160];
	long n;
	if (!cJSON_IsString(signed_text) || !cJSON_IsString(sig)) {
		cJSON_Delete(outer);
		return fleet__fail(err, "bad_command", cJSON_IsString(signed_text) ? "sig" : "signed",
				   "a signed command is {\"signed\":\"<command JSON>\",\"sig\":\"<base64>\"}");
	}
	/* The signature covers the text's bytes, not a meaning: a signed
	 * text with a repeated key is refused like any other. */
	if (json__parse(signed_text->valuestring, strlen(signed_text->valuestring), "signed", &cmd->root) != SCRM_OK) {
		cJSON_Delete(outer);
		return fleet__fail(err, "bad_json", "signed", "%s", scrm_errmsg());
	}
	if (!cJSON_IsObject(cmd->root)) {
		cJSON_Delete(outer);
		return fleet__fail(err, "bad_json", "signed", "the signed text is not a JSON object");
	}
	int rc = read_command(cmd, cmd->root, err);
	if (rc == 0 && !vf)
		rc = fleet__fail(err, "bad_signature", "sig",
				 "cannot check a signed command: no fleet.command_key_file on this agent");
	if (rc == 0 && (n = crypto__b64_decode(sig->valuestring, strlen(sig->valuestring), 0, der, sizeof(der))) <= 0)
		rc = fleet__fail(err, "bad_signature", "sig", "not base64 of a DER signature");
	if (rc == 0 && crypto__verify(vf, signed_text->valuestring, strlen(signed_text->valuestring), der, (size_t)n) != SCRM_OK)
		rc = fleet__fail(err, "bad_signature", "sig", "does not verify against central's command key");
	cJSON_Delete(outer);
	if (rc)
		return rc;
	cmd->is_signed = 1;
	/* A signature proves who wrote it, not for whom or when: the signed
	 * text must name this device — by tenant, store and device id, since
	 * device ids are unique only within a store ("pos-01" is in every
	 * store) — carry an id and expire soon. */
	static const char *const whom[] = {"tenant", "store", "device"};
	const char *mine[] = {tenant, store, device_id};
	for (size_t i = 0; i < 3; i++) {
		const cJSON *w = cJSON_GetObjectItemCaseSensitive(cmd->root, whom[i]);
		if (!cJSON_IsString(w) || !mine[i] || strcmp(w->valuestring, mine[i]) != 0)
			return fleet__fail(err, "wrong_device", whom[i], "signed for another %s%s", whom[i],
					   cJSON_IsString(w) ? "" : " (required in a signed command)");
	}
	if (!cmd->id[0])
		return fleet__fail(err, "bad_command", "id", "required in a signed command");
	if (!cmd->expires_ms)
		return fleet__fail(err, "bad_command", "expires_ms", "required in a signed command");
	if (clock_ok && cmd->expires_ms <= now_ms)
		return fleet__fail(err, "expired", "expires_ms", "expired %lld ms ago", (long long)(now_ms - cmd->expires_ms));
	if (clock_ok && cmd->expires_ms > now_ms + FLEET_MAX_EXPIRY_MS)
		return fleet__fail(err, "bad_command", "expires_ms", "more than 24 h ahead");
	/* Without a trusted clock expiry cannot be checked, and a captured
	 * command could be replayed: only the read-only ones are obeyed. */
	if (!clock_ok && !fleet__command_find(cmd->name)->any_clock)
		return fleet__fail(err, "clock_untrusted", "expires_ms",
				   "this agent's clock is not trusted; only ping and status are obeyed until it is");
	return seen ? seen_record(seen, cmd, now_ms, clock_ok, err) : 0;
}

int fleet__seen_add(fleet__seen *seen, const char *id, int64_t expires_ms)
{
	if (!token_ok(id, sizeof(seen->ids[0].id)) || seen_before(seen, id) || seen->n >= FLEET_SEEN_MAX)
		return 0;
	return seen_add(seen, id, expires_ms) == 0 ? 1 : -1;
}

void fleet__seen_free(fleet__seen *seen)
{
	if (!seen)
		return;
	free(seen->ids);
	seen->ids = NULL;
	seen->n = seen->cap = 0;
}

const cJSON *fleet__arg(const fleet__cmd *cmd, const char *name)
{
	return cmd->args ? cJSON_GetObjectItemCaseSensitive(cmd->args, name) : NULL;
}

/* The argument `name` (NULL when absent), with `field` set to how errors
 * name it: "args.<name>". */
static const cJSON *arg_find(const fleet__cmd *cmd, const char *name, char *field, size_t n)
{
	snprintf(field, n, "args.%s", name);
	return fleet__arg(cmd, name);
}

int fleet__arg_str(const fleet__cmd *cmd, const char *name, int required, size_t max_len, const char **out,
		   fleet__error *err)
{
	char field[64];
	const cJSON *it = arg_find(cmd, name, field, sizeof(field));
	if (!it)
		return required ? fleet__fail(err, "bad_args", field, "required") : 0;
	if (!cJSON_IsString(it) || !it->valuestring[0])
		return fleet__fail(err, "bad_args", field, "must be a non-empty string");
	if (strlen(it->valuestring) > max_len)
		return fleet__fail(err, "bad_args", field, "at most %zu characters", max_len);
	*out = it->valuestring;
	return 0;
}

int fleet__arg_int(const fleet__cmd *cmd, const char *name, int required, int64_t lo, int64_t hi, int64_t *out,
		   fleet__error *err)
{
	char field[64];
	const cJSON *it = arg_find(cmd, name, field, sizeof(field));
	if (!it)
		return required ? fleet__fail(err, "bad_args", field, "required") : 0;
	double d = cJSON_IsNumber(it) ? it->valuedouble : NAN;
	/* Bounds as integers: (double)INT64_MAX rounds up to 2^63. */
	if (!isfinite(d) || d != floor(d) || d < -9223372036854775808.0 || d >= 9223372036854775808.0 ||
	    (int64_t)d < lo || (int64_t)d > hi)
		return fleet__fail(err, "bad_args", field, "must be an integer between %lld and %lld", (long long)lo,
				   (long long)hi);
	*out = (int64_t)d;
	return 0;
}

/* What a reply has not got, it leaves out: no "id" when the command had
 * none (or it could not be read), no "field" when no single field is at
 * fault. A requester tests presence, never an empty string. */
void fleet__reply(sbuf *out, const fleet__cmd *cmd, const char *result_json, const fleet__error *err,
		  int64_t now_ms)
{
	sbuf__reset(out);
	sbuf__puts(out, "{\"v\":1");
	if (cmd && cmd->id[0]) {
		sbuf__puts(out, ",\"id\":");
		sbuf__jstr(out, cmd->id);
	}
	sbuf__puts(out, ",\"cmd\":");
	if (cmd && cmd->name[0])
		sbuf__jstr(out, cmd->name);
	else
		sbuf__puts(out, "null");
	sbuf__puts(out, ",\"ts\":");
	sbuf__i64(out, now_ms);
	if (result_json) {
		sbuf__puts(out, ",\"ok\":true,\"result\":");
		sbuf__puts(out, result_json);
	} else {
		sbuf__puts(out, ",\"ok\":false,\"error\":{\"code\":");
		sbuf__jstr(out, err && err->code[0] ? err->code : "failed");
		if (err && err->field[0]) {
			sbuf__puts(out, ",\"field\":");
			sbuf__jstr(out, err->field);
		}
		sbuf__puts(out, ",\"message\":");
		sbuf__jstr(out, err ? err->message : "");
		sbuf__puts(out, "}");
	}
	sbuf__puts(out, "}");
}

int fleet__reply_topic(const char *requested, const char *prefix, char *out, size_t n)
{
	size_t pl = strlen(prefix);
	if (requested && strncmp(requested, prefix, pl) == 0 && strncmp(requested + pl, TOPIC_UP_REPLY, 8) == 0 &&
	    (requested[pl + 8] == '\0' || requested[pl + 8] == '/') && !strpbrk(requested, "+#") &&
	    strlen(requested) < n) {
		snprintf(out, n, "%s", requested);
		return 1;
	}
	topics__join(out, n, prefix, TOPIC_UP_REPLY);
	return 0;
}

const char *fleet__arch(void)
{
#if defined(__x86_64__)
	return "x86_64";
#elif defined(__aarch64__)
	return "aarch64";
#elif defined(__arm__)
	return "armhf";
#elif defined(__i386__)
	return "i386";
#else
	return "unknown";
#endif
}

void fleet__state_json(sbuf *out, const fleet__ident *id, const char *state, const char *reason, int64_t birth_seq,
		       int64_t now_ms, int64_t started_ms, const char *boot, const char *cache_json)
{
	sbuf__reset(out);
	sbuf__puts(out, "{\"v\":1,\"state\":");
	sbuf__jstr(out, state);
	sbuf__puts(out, ",\"birth_seq\":");
	sbuf__i64(out, birth_seq);
	sbuf__puts(out, ",\"ts\":");
	sbuf__i64(out, now_ms);
	sbuf__puts(out, ",\"tenant\":");
	sbuf__jstr(out, id->tenant);
	sbuf__puts(out, ",\"store\":");
	sbuf__jstr(out, id->store);
	sbuf__puts(out, ",\"device\":");
	sbuf__jstr(out, id->device);
	if (reason) {
		sbuf__puts(out, ",\"reason\":");
		sbuf__jstr(out, reason);
	}
	if (strcmp(state, "online") == 0) {
		sbuf__puts(out, ",\"version\":");
		sbuf__jstr(out, scrm_version());
		sbuf__puts(out, ",\"protocol\":1,\"arch\":");
		sbuf__jstr(out, fleet__arch());
		sbuf__puts(out, ",\"config_version\":");
		sbuf__i64(out, id->config_version);
		sbuf__puts(out, ",\"heartbeat_s\":");
		sbuf__i64(out, id->heartbeat_s);
		sbuf__puts(out, ",\"started_ms\":");
		sbuf__i64(out, started_ms);
		sbuf__puts(out, ",\"boot\":");
		sbuf__jstr(out, boot);
		sbuf__puts(out, ",\"signed_commands\":");
		sbuf__puts(out, id->signed_commands ? "true" : "false");
		if (cache_json) {
			sbuf__puts(out, ",\"cache\":");
			sbuf__puts(out, cache_json);
		}
	}
	sbuf__puts(out, "}");
}
