/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_command: fleet commands from central (docs/protocol.md, "Commands"):
 * fleet__parse_command() on down/cmd payloads, the argument readers and the
 * reply, plus fleet__reply_topic() on the request's Response Topic.
 *
 * Every input is a raw down/cmd payload, parsed twice: with no command key
 * (unsigned commands obeyed) and with a real verifier. An input starting
 * with 'S' is in addition taken as a command *text*: the harness signs the
 * rest with the key the verifier trusts and parses the envelope, twice with
 * one replay guard — so mutations reach the checks that only run after a
 * good signature (device, id, expiry window, replay). The key pair is made
 * at start from a fixed seed (scrm_cachegen, as central), written to a temp
 * directory and loaded with crypto__verifier_load; the envelopes in the seed
 * corpus were signed with it (seed 7), so they verify too.
 *
 * Invariants checked on every parse:
 *   - 0 or -1; a refusal carries a documented code, a known field and a
 *     message; id and name are always echo-safe (printable, no quotes);
 *   - an accepted command has a known name, an object or no args, and when
 *     a verifier is given it was signed for this device with an id and an
 *     expiry inside (now, now + 24 h] (trusted clock); without one it is
 *     unsigned;
 *   - the two raw passes agree: accepted without a key ⇒ "unsigned" with
 *     one; accepted with the key ⇒ "bad_signature" without;
 *   - a signed command accepted once is "replayed" the second time;
 *   - the argument readers name "args.<name>" and return values within
 *     their bounds that equal the JSON number;
 *   - the reply is a JSON object echoing id (left out when none) and name, ok,
 *     result or error (its field left out when none is at fault);
 *   - a response topic is used only if it is this device's up/reply[/...]
 *     without wildcards.
 */
#include "fuzz.h"
#include "fuzzutil.h"

#include "cachegen.h"
#include "crypto.h"
#include "err.h"
#include "fleet.h"
#include "sbuf.h"

#include <scrm/scrm.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TENANT "acme"
#define STORE "s0042"
#define DEVICE "pos-01"
#define PREFIX "scrm/v1/acme/s0042/pos-01/"
#define NOW 1764000000000LL
#define KEY_SEED 7

static char dir[4096];
static cg_signer *signer;
static crypto__verifier *vf;
static sbuf reply, env;

static void cleanup(void)
{
	crypto__verifier_free(vf);
	cg_signer_close(signer);
	sbuf__free(&reply);
	sbuf__free(&env);
	fuzz_rmtree(dir);
}

static void init(void)
{
	char path[4200];
	fuzz_tmpdir(dir, sizeof(dir), "command");
	FUZZ_CHECK(cg_keys_create(dir, KEY_SEED) == 0, "cg_keys_create in %s", dir);
	snprintf(path, sizeof(path), "%s/central.key", dir);
	FUZZ_CHECK(cg_signer_open(path, &signer) == 0, "cg_signer_open %s", path);
	snprintf(path, sizeof(path), "%s/central.pub", dir);
	FUZZ_CHECK(crypto__verifier_load(path, &vf) == SCRM_OK, "crypto__verifier_load: %s", scrm_errmsg());
	sbuf__init(&reply);
	sbuf__init(&env);
	atexit(cleanup);
}

static int one_of(const char *s, const char *const *list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(s, list[i]) == 0)
			return 1;
	return 0;
}
#define ONE_OF(s, ...) one_of((s), (const char *const[]){__VA_ARGS__}, sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *))

static void check_token(const char *s, size_t cap, const char *what)
{
	size_t n = strnlen(s, cap);
	FUZZ_CHECK(n < cap, "%s not terminated", what);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		FUZZ_CHECK(c > 0x20 && c < 0x7f && c != '"' && c != '\\', "%s has byte 0x%02x", what, c);
	}
}

/* The reply parses back and says what the command and error say. */
static void check_reply(const fleet__cmd *cmd, int ok, const fleet__error *err)
{
	fleet__reply(&reply, cmd, ok ? "{\"pong\":true}" : NULL, err, NOW);
	FUZZ_CHECK(!reply.oom, "reply out of memory");
	cJSON *j = cJSON_ParseWithLength(reply.p, reply.len);
	FUZZ_CHECK(cJSON_IsObject(j), "reply not a JSON object: %s", reply.p);
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "id");
	const cJSON *name = cJSON_GetObjectItemCaseSensitive(j, "cmd");
	if (cmd->id[0])
		FUZZ_CHECK(cJSON_IsString(id) && strcmp(id->valuestring, cmd->id) == 0, "reply id: %s", reply.p);
	else
		FUZZ_CHECK(id == NULL, "reply has an id the command had not: %s", reply.p);
	if (cmd->name[0])
		FUZZ_CHECK(cJSON_IsString(name) && strcmp(name->valuestring, cmd->name) == 0, "reply cmd: %s", reply.p);
	else
		FUZZ_CHECK(cJSON_IsNull(name), "reply cmd not null: %s", reply.p);
	FUZZ_CHECK(cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(j, "ok")), "reply ok: %s", reply.p);
	if (ok) {
		FUZZ_CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "ok")) &&
				   cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(j, "result")),
			   "reply result: %s", reply.p);
	} else {
		const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
		const cJSON *code = cJSON_GetObjectItemCaseSensitive(e, "code");
		const cJSON *field = cJSON_GetObjectItemCaseSensitive(e, "field");
		FUZZ_CHECK(cJSON_IsString(code) && strcmp(code->valuestring, err->code) == 0, "reply code: %s", reply.p);
		if (err->field[0])
			FUZZ_CHECK(cJSON_IsString(field) && strcmp(field->valuestring, err->field) == 0, "reply field: %s",
				   reply.p);
		else
			FUZZ_CHECK(field == NULL, "reply has a field where none is at fault: %s", reply.p);
		FUZZ_CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "message")), "reply message: %s", reply.p);
	}
	cJSON_Delete(j);
}

/* Read a few arguments as the command handlers (agent/daemon/commands/) do;
 * check what comes back. */
static void check_args(const fleet__cmd *cmd)
{
	static const struct {
		const char *name;
		size_t max;
	} strs[] = {{"stream", 32}, {"member_id", 64}, {"key", 64}, {"level", 8}};
	static const struct {
		const char *name;
		int64_t lo, hi;
	} ints[] = {{"lines", 1, 256}, {"if_version", 0, INT64_MAX}, {"n", -5, 5}};
	fleet__error err;
	char field[64];
	for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
		const char *out = NULL;
		snprintf(field, sizeof(field), "args.%s", strs[i].name);
		int rc = fleet__arg_str(cmd, strs[i].name, (int)(i & 1), strs[i].max, &out, &err);
		if (rc == 0) {
			FUZZ_CHECK(out || !(i & 1), "required %s returned nothing", field);
			if (out)
				FUZZ_CHECK(out[0] && strlen(out) <= strs[i].max, "%s: \"%s\" out of bounds", field, out);
		} else {
			FUZZ_CHECK(rc == -1 && strcmp(err.code, "bad_args") == 0 && strcmp(err.field, field) == 0,
				   "%s refused as %s/%s", field, err.code, err.field);
			check_reply(cmd, 0, &err);
		}
	}
	for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
		int64_t v = -77;
		snprintf(field, sizeof(field), "args.%s", ints[i].name);
		int rc = fleet__arg_int(cmd, ints[i].name, 0, ints[i].lo, ints[i].hi, &v, &err);
		if (rc == 0) {
			const cJSON *it = fleet__arg(cmd, ints[i].name);
			if (!it) {
				FUZZ_CHECK(v == -77, "%s absent but out changed", field);
				continue;
			}
			FUZZ_CHECK(v >= ints[i].lo && v <= ints[i].hi, "%s = %lld out of bounds", field, (long long)v);
			FUZZ_CHECK(cJSON_IsNumber(it) && (double)v == it->valuedouble, "%s = %lld but the JSON says %.17g",
				   field, (long long)v, it->valuedouble);
		} else {
			FUZZ_CHECK(rc == -1 && strcmp(err.code, "bad_args") == 0 && strcmp(err.field, field) == 0,
				   "%s refused as %s/%s", field, err.code, err.field);
		}
	}
}

/* One parse and its invariants; returns rc (cmd released, err kept). */
static int parse_and_check(const char *p, size_t n, crypto__verifier *v, int clock_ok, fleet__seen *seen,
			   fleet__error *err)
{
	fleet__cmd cmd;
	int rc = fleet__parse_command(p, n, TENANT, STORE, DEVICE, v, NOW, clock_ok, seen, &cmd, err);
	check_token(cmd.id, sizeof(cmd.id), "id");
	check_token(cmd.name, sizeof(cmd.name), "name");
	FUZZ_CHECK(rc == 0 || rc == -1, "rc %d", rc);
	if (rc) {
		FUZZ_CHECK(ONE_OF(err->code, "bad_json", "bad_version", "bad_command", "unknown_command", "bad_args",
				  "too_big", "expired", "unsigned", "bad_signature", "wrong_device", "replayed",
				  "clock_untrusted", "unavailable", "failed"),
			   "undocumented code %s", err->code);
		FUZZ_CHECK(ONE_OF(err->field, "", "v", "id", "cmd", "args", "expires_ms", "sig", "signed", "tenant", "store",
				  "device"),
			   "unexpected field \"%s\" for %s", err->field, err->code);
		FUZZ_CHECK(err->message[0], "%s without a message", err->code);
		FUZZ_CHECK(strcmp(err->code, "too_big") != 0 || n > FLEET_MAX_COMMAND_BYTES, "too_big at %zu", n);
		check_reply(&cmd, 0, err);
		fleet__cmd_free(&cmd);
		return rc;
	}
	FUZZ_CHECK(cJSON_IsObject(cmd.root), "accepted without a command object");
	FUZZ_CHECK(ONE_OF(cmd.name, "ping", "status", "resync", "flush", "config.get", "config.set", "log.level",
			  "member.forget", "cache.purge", "logs.recent"),
		   "accepted unknown command %s", cmd.name);
	FUZZ_CHECK(!cmd.args || cJSON_IsObject(cmd.args), "args not an object");
	FUZZ_CHECK(cmd.expires_ms >= 0 && cmd.expires_ms <= 9007199254740992LL, "expires_ms %lld",
		   (long long)cmd.expires_ms);
	if (clock_ok && cmd.expires_ms)
		FUZZ_CHECK(cmd.expires_ms > NOW, "accepted an expired command");
	if (v) {
		const cJSON *dev = cJSON_GetObjectItemCaseSensitive(cmd.root, "device");
		FUZZ_CHECK(cmd.is_signed, "accepted unsigned with a key");
		FUZZ_CHECK(cmd.id[0] && cmd.expires_ms > 0, "signed without id or expiry");
		const cJSON *ten = cJSON_GetObjectItemCaseSensitive(cmd.root, "tenant");
		const cJSON *sto = cJSON_GetObjectItemCaseSensitive(cmd.root, "store");
		FUZZ_CHECK(cJSON_IsString(dev) && strcmp(dev->valuestring, DEVICE) == 0, "signed for another device");
		FUZZ_CHECK(cJSON_IsString(ten) && strcmp(ten->valuestring, TENANT) == 0, "signed for another tenant");
		FUZZ_CHECK(cJSON_IsString(sto) && strcmp(sto->valuestring, STORE) == 0, "signed for another store");
		if (clock_ok)
			FUZZ_CHECK(cmd.expires_ms <= NOW + FLEET_MAX_EXPIRY_MS, "expiry more than 24 h ahead");
	} else {
		FUZZ_CHECK(!cmd.is_signed, "signed without a key");
	}
	check_args(&cmd);
	check_reply(&cmd, 1, NULL);
	fleet__cmd_free(&cmd);
	return 0;
}

static void check_topic(const uint8_t *data, size_t size)
{
	char req[512], out[400];
	size_t n = size < sizeof(req) - 1 ? size : sizeof(req) - 1;
	memcpy(req, data, n);
	req[n] = '\0';
	int own = fleet__reply_topic(req, PREFIX, out, sizeof(out));
	if (own) {
		size_t pl = strlen(PREFIX "up/reply");
		FUZZ_CHECK(strcmp(out, req) == 0, "used topic differs from the request");
		FUZZ_CHECK(strncmp(out, PREFIX "up/reply", pl) == 0 && (out[pl] == '\0' || out[pl] == '/'),
			   "answered outside up/reply: %s", out);
		FUZZ_CHECK(!strpbrk(out, "+#"), "wildcard in reply topic %s", out);
	} else {
		FUZZ_CHECK(strcmp(out, PREFIX "up/reply") == 0, "default reply topic %s", out);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	fleet__error e1, e2;
	if (!ready) {
		init();
		ready = 1;
	}
	err__clear();
	const char *p = (const char *)data;
	int r1 = parse_and_check(p, size, NULL, 1, NULL, &e1);
	int r2 = parse_and_check(p, size, vf, size & 1, NULL, &e2);
	if (r1 == 0)
		FUZZ_CHECK(r2 == -1 && strcmp(e2.code, "unsigned") == 0, "obeyed unsigned without a key, but %s with",
			   e2.code);
	if (r2 == 0)
		FUZZ_CHECK(r1 == -1 && strcmp(e1.code, "bad_signature") == 0,
			   "a signed command accepted with the key is %s without", r1 ? e1.code : "accepted");
	check_topic(data, size);

	/* 'S': the rest, up to a NUL, is a command text to sign. */
	if (size >= 1 && data[0] == 'S' && size <= FLEET_MAX_COMMAND_BYTES / 8) {
		char *text = malloc(size);
		char *b64 = NULL;
		FUZZ_CHECK(text != NULL, "out of memory");
		memcpy(text, data + 1, size - 1);
		text[size - 1] = '\0';
		FUZZ_CHECK(cg_sign_b64(signer, text, strlen(text), &b64) == 0, "signing failed");
		sbuf__reset(&env);
		sbuf__puts(&env, "{\"signed\":");
		sbuf__jstr(&env, text);
		sbuf__puts(&env, ",\"sig\":");
		sbuf__jstr(&env, b64);
		sbuf__puts(&env, "}");
		FUZZ_CHECK(!env.oom, "envelope out of memory");
		free(b64);
		free(text);
		fleet__seen *seen = calloc(1, sizeof(*seen));
		FUZZ_CHECK(seen != NULL, "out of memory");
		int s1 = parse_and_check(env.p, env.len, vf, 1, seen, &e1);
		int s2 = parse_and_check(env.p, env.len, vf, 1, seen, &e2);
		if (s1 == 0)
			FUZZ_CHECK(s2 == -1 && strcmp(e2.code, "replayed") == 0, "a signed command accepted twice (%s)",
				   s2 ? e2.code : "ok");
		else
			FUZZ_CHECK(s2 == -1 && strcmp(e1.code, e2.code) == 0, "refused as %s, then %s", e1.code,
				   s2 ? e2.code : "accepted");
		/* The harness's own envelope is well-formed and its signature good
		 * (but bytes that are not UTF-8 make its "signed" string invalid
		 * JSON text, refused as such). */
		int not_utf8 = strcmp(e1.code, "bad_json") == 0 && !e1.field[0] &&
			       strstr(e1.message, "invalid UTF-8 in a string at $.signed");
		if (s1 && !not_utf8)
			FUZZ_CHECK(strcmp(e1.code, "bad_signature") != 0 && strcmp(e1.code, "unsigned") != 0 &&
					   strcmp(e1.code, "too_big") != 0 && strcmp(e1.code, "replayed") != 0 &&
					   (strcmp(e1.code, "bad_json") != 0 || strcmp(e1.field, "signed") == 0),
				   "the harness's own envelope refused: %s/%s %s", e1.code, e1.field, e1.message);
		fleet__seen_free(seen);
		free(seen);
	}
	return 0;
}
