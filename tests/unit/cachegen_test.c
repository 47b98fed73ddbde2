/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cachegen_test: the test-data library that plays central for the customer
 * cache (tests/support/cachegen.c). Other tests trust its output, so this
 * checks what they rely on: keys and signatures are reproducible and verify,
 * tampering is caught, QR tokens have the protocol's exact shape, signed
 * coupon records carry the payload byte for byte, the synthetic store's keys
 * are unique and its records fit, and the retail sample builds into files
 * whose every line is a well-formed record.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "cachegen.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#ifndef SCRM_TEST_DATA_DIR
#define SCRM_TEST_DATA_DIR "tests/data"
#endif

static char dir[256];

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb, (void)flag, (void)ftw;
	return remove(path);
}

static int setup(void **state)
{
	(void)state;
	const char *tmp = getenv("TMPDIR");
	snprintf(dir, sizeof(dir), "%s/scrm-unit-cachegen-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}

static char *path_in(const char *sub, const char *name)
{
	static char p[3][512];
	static int k;
	k = (k + 1) % 3;
	snprintf(p[k], sizeof(p[k]), "%s/%s%s%s", dir, sub, *name ? "/" : "", name);
	return p[k];
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "rb");
	assert_non_null(f);
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	rewind(f);
	char *buf = malloc((size_t)n + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

static cg_signer *keys_and_signer(const char *sub, uint64_t seed)
{
	cg_signer *s = NULL;
	assert_int_equal(cg_keys_create(path_in(sub, ""), seed), 0);
	assert_int_equal(cg_signer_open(path_in(sub, "central.key"), &s), 0);
	return s;
}

/* Same seed, same bytes (keys and signatures); another seed, another key. */
static void keys_are_deterministic(void **state)
{
	(void)state;
	cg_signer *a = keys_and_signer("a", 7), *b = keys_and_signer("b", 7), *c = keys_and_signer("c", 8);
	char *ka = slurp(path_in("a", "central.key")), *kb = slurp(path_in("b", "central.key"));
	char *kc = slurp(path_in("c", "central.key")), *ta = slurp(path_in("a", "tenant.key"));
	char *sa = NULL, *sb = NULL;
	struct stat st;

	assert_string_equal(ka, kb);
	assert_string_not_equal(ka, kc);
	assert_int_equal(strlen(ta), 65);
	assert_int_equal(ta[64], '\n');
	assert_int_equal(stat(path_in("a", "central.key"), &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(cg_sign_b64(a, "hello", 5, &sa), 0);
	assert_int_equal(cg_sign_b64(b, "hello", 5, &sb), 0);
	assert_string_equal(sa, sb);
	free(ka), free(kb), free(kc), free(ta), free(sa), free(sb);
	cg_signer_close(a), cg_signer_close(b), cg_signer_close(c);
}

static void signatures_verify_and_catch_tampering(void **state)
{
	(void)state;
	cg_signer *s = keys_and_signer("k", 1), *other = keys_and_signer("o", 2);
	const char *msg = "{\"type\":\"coupon\",\"id\":\"X\"}";
	char *sig = NULL, *sig2 = NULL;
	assert_int_equal(cg_sign_b64(s, msg, strlen(msg), &sig), 0);
	assert_int_equal(cg_verify_b64(path_in("k", "central.pub"), msg, strlen(msg), sig), 0);
	assert_int_equal(cg_verify_b64(path_in("k", "central.pub"), msg, strlen(msg) - 1, sig), -EBADMSG);
	assert_int_equal(cg_verify_b64(path_in("o", "central.pub"), msg, strlen(msg), sig), -EBADMSG);
	assert_int_equal(cg_verify_b64(path_in("k", "central.pub"), msg, strlen(msg), "not base64!"), -EBADMSG);
	assert_int_equal(cg_sign_b64(other, msg, strlen(msg), &sig2), 0);
	assert_int_equal(cg_verify_b64(path_in("k", "central.pub"), msg, strlen(msg), sig2), -EBADMSG);
	assert_int_not_equal(cg_verify_b64(path_in("k", "missing.pub"), msg, strlen(msg), sig), 0);
	free(sig), free(sig2);
	cg_signer_close(s), cg_signer_close(other);
}

static void qr_token_has_the_protocol_shape(void **state)
{
	(void)state;
	cg_signer *s = keys_and_signer("k", 1);
	char *tok = NULL, *payload = NULL;
	assert_int_equal(cg_qr_mint(s, "acme", "17850", 1733050000000LL, 1733050300000LL, &tok), 0);
	assert_true(strncmp(tok, "SCRM1.", 6) == 0);
	assert_true(strlen(tok) <= 512);
	assert_null(strpbrk(tok, "+/="));
	assert_int_equal(cg_qr_verify(path_in("k", "central.pub"), tok, &payload), 0);
	assert_string_equal(payload, "{\"t\":\"acme\",\"m\":\"17850\",\"iat\":1733050000000,\"exp\":1733050300000}");
	/* One changed character in the payload part: the signature fails. */
	tok[8] = tok[8] == 'A' ? 'B' : 'A';
	assert_int_equal(cg_qr_verify(path_in("k", "central.pub"), tok, NULL), -EBADMSG);
	assert_int_equal(cg_qr_verify(path_in("k", "central.pub"), "SCRM2.abc.def", NULL), -EBADMSG);
	free(tok), free(payload);
	tok = NULL;
	assert_int_equal(cg_qr_mint(s, "ac me", "17850", 0, 1, &tok), -EINVAL);
	assert_int_equal(cg_qr_mint(s, "acme", "", 0, 1, &tok), -EINVAL);
	assert_null(tok);
	cg_signer_close(s);
}

static void coupon_record_signs_the_exact_payload(void **state)
{
	(void)state;
	cg_signer *s = keys_and_signer("k", 1);
	const char *p = "{\"type\":\"coupon\",\"id\":\"C-1\",\"note\":\"say \\\"hi\\\"\",\"uses\":1}";
	char *rec = NULL;
	assert_int_equal(cg_signed_coupon_record(s, p, &rec), 0);
	cJSON *j = cJSON_Parse(rec);
	assert_non_null(j);
	assert_string_equal(cJSON_GetObjectItem(j, "key")->valuestring, "coupon:C-1");
	assert_string_equal(cJSON_GetObjectItem(j, "signed")->valuestring, p);
	assert_int_equal(cg_verify_b64(path_in("k", "central.pub"), p, strlen(p), cJSON_GetObjectItem(j, "sig")->valuestring),
			 0);
	cJSON_Delete(j);
	free(rec);
	rec = NULL;
	assert_int_equal(cg_signed_coupon_record(s, "{\"type\":\"voucher\",\"id\":\"A\"}", &rec), -EINVAL);
	assert_int_equal(cg_signed_coupon_record(s, "{\"type\":\"coupon\",\"id\":\"a b\"}", &rec), -EINVAL);
	assert_int_equal(cg_signed_coupon_record(s, "{\"type\":\"coupon\"", &rec), -EINVAL);
	assert_null(rec);
	cg_signer_close(s);
}

static void phone_hash_is_hmac_sha256(void **state)
{
	(void)state;
	uint8_t key[32];
	char hex[65];
	/* RFC 4231 test case 2 ("Jefe") does not fit a 32-byte key; use an
	 * all-zero key and a value computed with openssl:
	 * printf 447700900123 | openssl dgst -sha256 -mac HMAC -macopt hexkey:00..00 */
	memset(key, 0, sizeof(key));
	cg_phone_hash_hex(key, "447700900123", hex);
	assert_int_equal(strlen(hex), 64);
	assert_string_equal(hex, "50982ebf5cbf8608326e0353915967b8f74b438f0c156b5d98f5b4d5ddd9fede");
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(a, b);
}

static void synth_keys_unique_and_records_fit(void **state)
{
	(void)state;
	cg_synth s;
	char buf[CG_SYNTH_RECORD_MAX], small[8];
	cg_synth_init(&s);
	s.n_members = 20000, s.n_skus = 300, s.n_rules = 5000, s.coupon_every = 7;
	assert_int_equal(cg_synth_check(&s), 0);
	for (int st = 0; st < CG_N_STREAMS; st++) {
		size_t n = cg_synth_count(&s, (cg_stream)st);
		char(*keys)[72] = malloc(n * sizeof(*keys));
		assert_non_null(keys);
		for (size_t i = 0; i < n; i++) {
			int kn = cg_synth_key(&s, (cg_stream)st, i, keys[i], sizeof(keys[i]));
			assert_true(kn > 0 && kn <= 64);
			int dn = cg_synth_data(&s, (cg_stream)st, i, buf, sizeof(buf));
			assert_true(dn > 0 && dn < CG_SYNTH_RECORD_MAX);
			if (i % 97 == 0) {
				cJSON *j = cJSON_Parse(buf);
				assert_non_null(j);
				cJSON_Delete(j);
			}
		}
		qsort(keys, n, sizeof(*keys), cmp_str);
		for (size_t i = 1; i < n; i++)
			assert_string_not_equal(keys[i - 1], keys[i]);
		free(keys);
		assert_int_equal(cg_synth_key(&s, (cg_stream)st, n, buf, sizeof(buf)), -ERANGE);
	}
	assert_int_equal(cg_synth_count(&s, CG_COUPONS), 50 + (20000 + 6) / 7);
	/* Truncation: like snprintf, the full length comes back. */
	int full = cg_synth_member(&s, 5, buf, sizeof(buf));
	assert_int_equal(cg_synth_member(&s, 5, small, sizeof(small)), full);
	assert_int_equal(strlen(small), sizeof(small) - 1);
	assert_int_equal(cg_synth_member(&s, 5, NULL, 0), full);
	s.n_rules = 300 * 299 + 1;
	assert_int_equal(cg_synth_check(&s), -EINVAL);
}

static void synth_phones_unique(void **state)
{
	(void)state;
	cg_synth s;
	cg_synth_init(&s);
	s.n_members = 200000;
	char(*phones)[24] = malloc(s.n_members * sizeof(*phones));
	assert_non_null(phones);
	for (size_t i = 0; i < s.n_members; i++) {
		cg_member_ident id;
		assert_int_equal(cg_synth_member_ident(&s, i, &id), 0);
		assert_int_equal(strlen(id.phone), 12);
		memcpy(phones[i], id.phone, sizeof(id.phone));
	}
	qsort(phones, s.n_members, sizeof(*phones), cmp_str);
	for (size_t i = 1; i < s.n_members; i++)
		assert_string_not_equal(phones[i - 1], phones[i]);
	free(phones);
}

/* Every line after the header is {"key":..,"data":{..}} (coupons: signed +
 * sig, verified); returns the number of records. */
static size_t check_stream_file(const char *path, const char *stream, const char *pub)
{
	char *text = slurp(path), *save = NULL, *line = strtok_r(text, "\n", &save);
	size_t n = 0;
	cJSON *h = cJSON_Parse(line);
	assert_non_null(h);
	assert_string_equal(cJSON_GetObjectItem(h, "type")->valuestring, "snapshot_file");
	assert_string_equal(cJSON_GetObjectItem(h, "stream")->valuestring, stream);
	cJSON_Delete(h);
	while ((line = strtok_r(NULL, "\n", &save))) {
		cJSON *j = cJSON_Parse(line);
		assert_non_null(j);
		const cJSON *key = cJSON_GetObjectItem(j, "key");
		assert_true(cJSON_IsString(key) && strlen(key->valuestring) <= 64);
		if (strcmp(stream, "coupons") == 0) {
			const char *sgn = cJSON_GetObjectItem(j, "signed")->valuestring;
			assert_int_equal(cg_verify_b64(pub, sgn, strlen(sgn), cJSON_GetObjectItem(j, "sig")->valuestring), 0);
		} else {
			assert_true(cJSON_IsObject(cJSON_GetObjectItem(j, "data")));
		}
		cJSON_Delete(j);
		n++;
	}
	free(text);
	return n;
}

static void retail_sample_builds(void **state)
{
	(void)state;
	cg_signer *s = keys_and_signer("k", 1);
	cg_retail_opts o = {SCRM_TEST_DATA_DIR "/online_retail_sample.csv", "acme", path_in("out", ""), 0, 1, 3};
	cg_retail_counts c;
	assert_int_equal(cg_retail_build_opts(&o, s, &c), 0);
	assert_int_equal(c.csv_rows, 10000);
	assert_int_equal(c.invoices, 512);
	assert_int_equal(c.cancellations, 43);
	assert_true(c.records[CG_RULES] >= 200 && c.records[CG_RULES] <= 5000);
	for (int st = 0; st < CG_N_STREAMS; st++) {
		char name[64];
		snprintf(name, sizeof(name), "%s.jsonl", cg_stream_name((cg_stream)st));
		assert_int_equal(check_stream_file(path_in("out", name), cg_stream_name((cg_stream)st), path_in("k", "central.pub")),
				 c.records[st]);
	}
	char *members = slurp(path_in("out", "members.jsonl"));
	/* 17850: the sample's first customer, 34 invoices between 1 and 3 December. */
	assert_non_null(strstr(members, "{\"key\":\"17850\",\"data\":{\"member_id\":\"17850\",\"card\":\"6000178500\""));
	assert_non_null(strstr(members, "\"orders\":34,\"spend\":539121,"));
	free(members);
	assert_int_equal(cg_retail_build(SCRM_TEST_DATA_DIR "/no-such.csv", "acme", s, 0, path_in("out2", ""), 1), -ENOENT);
	cg_signer_close(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(keys_are_deterministic, setup, teardown),
		cmocka_unit_test_setup_teardown(signatures_verify_and_catch_tampering, setup, teardown),
		cmocka_unit_test_setup_teardown(qr_token_has_the_protocol_shape, setup, teardown),
		cmocka_unit_test_setup_teardown(coupon_record_signs_the_exact_payload, setup, teardown),
		cmocka_unit_test(phone_hash_is_hmac_sha256),
		cmocka_unit_test(synth_keys_unique_and_records_fit),
		cmocka_unit_test(synth_phones_unique),
		cmocka_unit_test_setup_teardown(retail_sample_builds, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
