/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_cache: what central sends a store's customer cache (docs/protocol.md,
 * "Customer cache"): delta and snapshot messages into cache__apply(), and
 * what a till types or scans into the member look-up: phone numbers
 * (cache__phone_normalise and the keyed-hash look-up) and member QR tokens
 * (cache__member_card with SCRM_MEMBER_QR: base64url, DER signature, JSON).
 *
 * The first byte of an input picks the target, the rest is its text:
 *   'a' cache__apply, topic stream NULL      'm' ... topic "members"
 *   'c' ... topic "coupons"                  'p' phone (next byte: country code)
 *   'q' QR token                             'i' member id   'k' card number
 * (any other byte: one of these by its value), so the seed corpus reads as
 * text. One cache lives for the whole run, in a temp directory (a tmpfs when
 * there is one), with fixed keys — a data key, a tenant phone-hash key and a
 * central public key whose private half signed the seed corpus' coupons and
 * token — and a fixed clock, so the seed token is valid and status text is
 * comparable. State carries from input to input (a delta may follow an
 * earlier snapshot), as on a real store.
 *
 * Invariants checked after every input:
 *   - cache__status() succeeds;
 *   - a refused message returns INVALID / TOO_BIG with a message, and leaves
 *     the status (cursors, rows, snapshot progress, resync) unchanged;
 *   - a look-up answers OK (with a JSON object), NOT_FOUND or INVALID;
 *   - a normalised phone is 6..15 digits;
 *   - a resync request, when one is due, is a JSON object.
 */
#include "fuzz.h"
#include "fuzzutil.h"

#include "cache.h"
#include "err.h"
#include "platform.h"
#include "sbuf.h"

#include <cjson/cJSON.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FUZZ_WALL_MS 1733050100000LL /* inside the seed token's validity */

/* The central key the seed corpus was signed with (EC P-256, public half). */
static const char central_pub[] = "-----BEGIN PUBLIC KEY-----\n"
				  "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEALDQcp3MH3hxvrk1+D1ORCyXNVuH\n"
				  "21el5ZHAUYS50b5NKVJlInZuJBOrqIrGRBB+y5Gc39x7+Y3lJCIs4guXLA==\n"
				  "-----END PUBLIC KEY-----\n";
static const char data_key[] = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n";
static const char tenant_key[] = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf\n";

static cache *c;
static char dir[4096];
static sbuf before, after, out;
static int64_t mono = 1000;

static int64_t fixed_wall(void *ctx)
{
	(void)ctx;
	return FUZZ_WALL_MS;
}

static int64_t fake_mono(void *ctx)
{
	(void)ctx;
	return mono;
}

static void cleanup(void)
{
	cache__close(c);
	c = NULL;
	sbuf__free(&before);
	sbuf__free(&after);
	sbuf__free(&out);
	fuzz_rmtree(dir);
}

static void write_file(const char *name, const char *text)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/private/keys/%s", dir, name);
	FILE *f = fopen(path, "w");
	FUZZ_CHECK(f != NULL, "cannot create %s", path);
	fputs(text, f);
	FUZZ_CHECK(fclose(f) == 0, "cannot write %s", path);
	/* keys are the agent's user's alone, or the cache refuses them */
	FUZZ_CHECK(chmod(path, 0600) == 0, "cannot chmod %s", path);
}

static void init(void)
{
	char keys[4200];
	fuzz_tmpdir(dir, sizeof(dir), "cache");
	snprintf(keys, sizeof(keys), "%s/private", dir);
	FUZZ_CHECK(mkdir(keys, 0700) == 0, "mkdir %s", keys);
	snprintf(keys, sizeof(keys), "%s/private/keys", dir);
	FUZZ_CHECK(mkdir(keys, 0700) == 0, "mkdir %s", keys);
	write_file("data.key", data_key);
	write_file("tenant.key", tenant_key);
	write_file("central.pub", central_pub);
	platform__clock_override(fixed_wall, fake_mono, NULL);
	cache__options o = {.create = 1, .max_message_bytes = 256 * 1024, .snapshot_timeout_ms = 1000};
	FUZZ_CHECK(cache__open(dir, &o, &c) == SCRM_OK, "cache__open: %s", scrm_errmsg());
	FUZZ_CHECK(cache__set_identity(c, "acme", "44") == SCRM_OK, "set_identity: %s", scrm_errmsg());
	sbuf__init(&before);
	sbuf__init(&after);
	sbuf__init(&out);
	atexit(cleanup);
}

static void status(sbuf *b)
{
	int rc = cache__status(c, b);
	FUZZ_CHECK(rc == SCRM_OK, "cache__status: %d %s", rc, scrm_errmsg());
	sbuf__putc(b, '\0');
	FUZZ_CHECK(!b->oom, "status out of memory");
}

static int is_json_object(const char *p, size_t n)
{
	cJSON *j = cJSON_ParseWithLength(p, n);
	int ok = cJSON_IsObject(j);
	cJSON_Delete(j);
	return ok;
}

static void apply(const char *topic, const uint8_t *data, size_t size)
{
	cache__outcome o;
	status(&before);
	err__clear();
	int rc = cache__apply(c, topic, (const char *)data, size, NULL, NULL, &o);
	status(&after);
	if (rc != SCRM_OK) {
		FUZZ_CHECK(rc == SCRM_E_INVALID || rc == SCRM_E_TOO_BIG || rc == SCRM_E_NOMEM, "rc %d: %s", rc,
			   scrm_errmsg());
		FUZZ_CHECK(scrm_errmsg()[0] != '\0', "refused without a message");
		FUZZ_CHECK(strcmp(before.p, after.p) == 0, "refused but changed: %s\nbefore %s\nafter  %s", scrm_errmsg(),
			   before.p, after.p);
		return;
	}
	FUZZ_CHECK(o.stream >= 0 && o.stream < ST_COUNT, "stream %d", o.stream);
	FUZZ_CHECK(o.what >= CA_APPLIED && o.what <= CA_IGNORED, "what %d", (int)o.what);
	FUZZ_CHECK(o.refused <= o.ops, "refused %lld of %lld", (long long)o.refused, (long long)o.ops);
	/* The schedule: time passes, a request may be due. */
	mono += 700;
	int st = -1;
	if (cache__next_request(c, mono, &out, &st)) {
		FUZZ_CHECK(st >= 0 && st < ST_COUNT, "request stream %d", st);
		FUZZ_CHECK(is_json_object(out.p, out.len), "request not JSON: %.*s", (int)out.len, out.p);
	}
	if (size % 7 == 0)
		cache__reset_requests(c);
}

static void lookup(scrm_member_key by, const char *value)
{
	char member[65];
	int tracking = -1;
	err__clear();
	int rc = cache__member_card(c, by, value, &out, member, &tracking);
	if (rc == SCRM_OK) {
		FUZZ_CHECK(is_json_object(out.p, out.len), "card not JSON: %.*s", (int)out.len, out.p);
		FUZZ_CHECK(tracking == 0 || tracking == 1, "tracking %d", tracking);
		return;
	}
	FUZZ_CHECK(rc == SCRM_E_NOT_FOUND || rc == SCRM_E_INVALID, "look-up by %d: rc %d: %s", (int)by, rc,
		   scrm_errmsg());
	FUZZ_CHECK(scrm_errmsg()[0] != '\0', "refused without a message");
	if (by == SCRM_MEMBER_QR && rc == SCRM_E_INVALID)
		FUZZ_CHECK(strncmp(scrm_errmsg(), "qr: ", 4) == 0, "QR refusal without its reason: %s", scrm_errmsg());
}

static void phone(const char *text, const char *cc)
{
	char norm[24];
	memset(norm, 0x55, sizeof(norm));
	if (cache__phone_normalise(text, cc, norm) == 0) {
		size_t n = strnlen(norm, sizeof(norm));
		FUZZ_CHECK(n >= 6 && n <= 15, "normalised to %zu digits", n);
		for (size_t i = 0; i < n; i++)
			FUZZ_CHECK(norm[i] >= '0' && norm[i] <= '9', "normalised to a non-digit");
	}
	lookup(SCRM_MEMBER_PHONE, text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char targets[] = "amcpqik";
	static const char *const ccs[] = {"", "44", "1", "353", "4444444"};
	if (!c)
		init();
	if (size == 0)
		return 0;
	char sel = (char)data[0];
	if (!strchr(targets, sel) || sel == '\0')
		sel = targets[data[0] % (sizeof(targets) - 1)];
	data++;
	size--;

	if (sel == 'a' || sel == 'm' || sel == 'c') {
		apply(sel == 'a' ? NULL : sel == 'm' ? "members" : "coupons", data, size);
	} else {
		/* Text typed or scanned at the till: a C string. */
		char text[1024];
		size_t n = size < sizeof(text) - 1 ? size : sizeof(text) - 1;
		memcpy(text, data, n);
		text[n] = '\0';
		if (sel == 'p')
			phone(n ? text + 1 : text, ccs[n ? (unsigned char)(text[0] + 2) % 5 : 0]);
		else if (sel == 'q')
			lookup(SCRM_MEMBER_QR, text);
		else
			lookup(sel == 'i' ? SCRM_MEMBER_ID : SCRM_MEMBER_CARD, text);
	}
	status(&after);
	return 0;
}
