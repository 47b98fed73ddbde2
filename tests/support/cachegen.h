/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cachegen: the central system's side of the customer cache, as test data.
 *
 * It makes what a real central would hand a store (docs/protocol.md,
 * "Customer cache (central → store)"): the central ECDSA P-256 key pair and
 * the tenant's phone-hash key, coupons and campaigns signed with that key,
 * member QR tokens, and snapshot files for the seven streams — either from
 * the real retail sample (tests/data/online_retail_sample.csv) or as a
 * synthetic store of any size, generated one record at a time so a
 * 500,000-member benchmark never holds the store in memory.
 *
 * Everything is deterministic: the same inputs and seed give the same bytes
 * (keys included; ECDSA nonces are derived from the key and the message, so
 * signatures are reproducible too). Times are int64 Unix milliseconds, money
 * int64 minor units (pence); nothing depends on the host's time_t or locale.
 *
 * Errors: functions returning int give 0 (or a length, where documented) on
 * success and a negative errno value on failure: -EINVAL bad argument or
 * malformed input, -ENOMEM, -EIO/-errno for files, -EBADMSG for a signature
 * that does not verify or a token that does not parse. Failures that have a
 * cause worth reading (a CSV line, an mbedTLS code) also print one line
 * starting with "cachegen:" to stderr.
 *
 * Ownership: strings returned through `char **` are malloc'd and owned by the
 * caller (free()). Pointer parameters are borrowed for the call.
 *
 * Threads: a cg_signer is used by one thread at a time (open one per thread);
 * the cg_synth_* generators are pure functions of their arguments and may be
 * called from any number of threads at once.
 */
#ifndef SCRM_TESTS_CACHEGEN_H
#define SCRM_TESTS_CACHEGEN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- keys and signatures ---------------------------------------------- */

/* Create `dir` (mode 0700) if missing and write, deterministically from seed:
 *   central.key  PEM EC P-256 private key (SEC1 "EC PRIVATE KEY"), mode 0600
 *   central.pub  PEM public key (SubjectPublicKeyInfo), what agents are given
 *   tenant.key   64 lowercase hex characters + "\n": the HMAC-SHA256 key of
 *                phone hashes, mode 0600
 * Existing files are replaced (each written to a temp file and renamed). */
int cg_keys_create(const char *dir, uint64_t seed);

typedef struct cg_signer cg_signer;

/* Load central's private key (PEM, must be EC P-256). *out owned by the
 * caller: cg_signer_close(). */
int cg_signer_open(const char *central_key_pem_path, cg_signer **out);
void cg_signer_close(cg_signer *s); /* NULL: no-op */

/* ECDSA P-256 over SHA-256(msg[0..len)), ASN.1 DER, standard base64 with
 * padding into *b64_out (malloc'd, caller frees). */
int cg_sign_b64(cg_signer *s, const void *msg, size_t len, char **b64_out);

/* The agent's check, for tests: 0 if sig_b64 (standard base64 of a DER
 * signature) verifies over SHA-256(msg) with the PEM public key at
 * central_pub_path, -EBADMSG if not, another negative errno on I/O errors. */
int cg_verify_b64(const char *central_pub_path, const void *msg, size_t len, const char *sig_b64);

/* Member QR token (protocol.md "Member QR tokens"):
 *   SCRM1.<base64url(payload)>.<base64url(DER signature)>   (no padding)
 * payload exactly {"t":"<tenant>","m":"<member_id>","iat":<ms>,"exp":<ms>}.
 * tenant and member_id: 1..64 bytes of [A-Za-z0-9_.:>-]. The token is not
 * checked for exp > iat, so tests can mint expired or inverted tokens. */
int cg_qr_mint(cg_signer *s, const char *tenant, const char *member_id, int64_t iat_ms, int64_t exp_ms,
	       char **token_out);

/* Verify a token as the agent would (signature and format only, not times or
 * tenant); on success *payload_out (optional) is the payload JSON, malloc'd. */
int cg_qr_verify(const char *central_pub_path, const char *token, char **payload_out);

/* A signed coupons-stream record for `payload_json` (a JSON object with
 * "type" = "coupon" or "campaign" and a string "id"):
 *   {"key":"<type>:<id>","signed":"<payload_json, as a JSON string>","sig":"<b64>"}
 * The signature covers the exact bytes of payload_json (no re-encoding).
 * -EINVAL if the payload does not parse, lacks type/id, or the key would be
 * invalid. *record_out malloc'd, no trailing newline. */
int cg_signed_coupon_record(cg_signer *s, const char *payload_json, char **record_out);

/* Read tenant.key from `dir`. */
int cg_tenant_key_load(const char *dir, uint8_t key[32]);
/* HMAC-SHA256(key, phone) as 64 lowercase hex characters + NUL: how central
 * and the agent index phones (phone already in E.164 digits, no '+'). */
void cg_phone_hash_hex(const uint8_t key[32], const char *phone, char hex[65]);

/* ---- streams ------------------------------------------------------------ */

/* In resync priority order (protocol.md "Streams"). */
typedef enum cg_stream {
	CG_MEMBERS,
	CG_COUPONS,
	CG_CATALOGUE,
	CG_INVENTORY,
	CG_SCRIPTS,
	CG_RECOS,
	CG_RULES,
	CG_N_STREAMS
} cg_stream;

/* "members", "coupons", ...; NULL when out of range. Snapshot files are
 * named "<name>.jsonl". */
const char *cg_stream_name(cg_stream st);

/* ---- synthetic store -------------------------------------------------- */

/* A synthetic store is this configuration only: record i of any stream is
 * computed on demand from (seed, i), so a generator holds no tables. Fill it
 * with cg_synth_init() (the defaults below), then change what you need. */
typedef struct cg_synth {
	size_t n_members;    /* 500000; at most 100,000,000 (phone number space) */
	size_t n_skus;       /* 20000 */
	size_t n_rules;      /* 200000; at most n_skus * (n_skus - 1) */
	size_t n_campaigns;  /* 50 */
	size_t coupon_every; /* one member coupon per this many members (members
			      * 0, k, 2k, ...); 0 = none. Default 100: signing
			      * costs ~1 ms each (see cg_synth_write). */
	uint64_t seed;       /* 1 */
	int64_t now_ms;      /* 1733050000000 (2024-12-01T10:46:40Z): stats.as_of_ms,
			      * inventory as_of_ms, coupon validity */
	int64_t version;     /* snapshot version written by cg_synth_write: 1 */
	const char *tenant;  /* "acme" (used in talk-track texts); borrowed */
} cg_synth;

void cg_synth_init(cg_synth *s);

/* 0 if the configuration is usable, else -EINVAL with a "cachegen:" line. */
int cg_synth_check(const cg_synth *s);

/* Number of records of a stream: members n_members, catalogue and inventory
 * n_skus, rules n_rules, recos n_members (one per member), scripts a fixed
 * set, coupons n_campaigns + ceil(n_members / coupon_every). */
size_t cg_synth_count(const cg_synth *s, cg_stream st);

/* Record i of a stream, written like snprintf into buf[cap] (NUL-terminated
 * when cap > 0, truncated if too small): the return value is the full length
 * without the NUL, so a return >= cap means "call again with a bigger buf".
 * Negative errno: -EINVAL bad configuration or stream, -ERANGE i >= count.
 * Every record fits in CG_SYNTH_RECORD_MAX bytes.
 *   cg_synth_key:  the record key ("M0000042", "S00017", "S00003>S00141",
 *                  "campaign:CMP007", "coupon:C-00000012", "wake-up")
 *   cg_synth_data: the record's `data` object; for coupons the payload that
 *                  is signed (cg_signed_coupon_record makes the record). */
#define CG_SYNTH_RECORD_MAX 4096
int cg_synth_key(const cg_synth *s, cg_stream st, size_t i, char *buf, size_t cap);
int cg_synth_data(const cg_synth *s, cg_stream st, size_t i, char *buf, size_t cap);
/* Shorthand for cg_synth_data(s, CG_MEMBERS, i, buf, cap). */
int cg_synth_member(const cg_synth *s, size_t i, char *buf, size_t cap);

/* Identity of member i, for look-ups in tests and benchmarks:
 *   member_id "M%07zu" (i), card "6000%010zu" (i), phone "4477" + 8 digits,
 *   a bijection of i (so unique across the store; depends on the seed). */
typedef struct cg_member_ident {
	char member_id[24];
	char card[24];
	char phone[24];
} cg_member_ident;
int cg_synth_member_ident(const cg_synth *s, size_t i, cg_member_ident *out);

/* Write the seven snapshot files (<outdir>/<stream>.jsonl, created with
 * outdir if missing) for the store, plus members_index.tsv
 * (member_id TAB card TAB phone, one line per member). Coupons are signed with
 * `signer` on every online CPU (up to 8 threads; each signature ~1 ms). */
int cg_synth_write(const cg_synth *s, cg_signer *signer, const char *outdir);

/* ---- the retail sample ------------------------------------------------ */

typedef struct cg_retail_opts {
	const char *csv_path; /* the UCI Online Retail CSV (header line first) */
	const char *tenant;   /* used in talk-track texts */
	const char *outdir;   /* created if missing */
	int64_t now_ms;       /* inventory as_of_ms and coupon validity; <= 0:
			       * the last invoice's time */
	uint64_t seed;        /* synthetic parts: pii, consent, stock, codes */
	int64_t version;      /* snapshot version of every file; <= 0: 1 */
} cg_retail_opts;

/* What cg_retail_build wrote (records per stream, indexed by cg_stream),
 * and what it skipped. */
typedef struct cg_retail_counts {
	size_t records[CG_N_STREAMS];
	size_t csv_rows;      /* data lines read */
	size_t csv_skipped;   /* unparsable lines, zero quantities */
	size_t invoices, cancellations;
	unsigned rule_min_count; /* support count threshold chosen for rules */
} cg_retail_counts;

/* Build the store from the retail sample: members are the real customer ids
 * with their real stats, RFM and behaviour; catalogue, rules and recos come
 * from the invoices; inventory, coupons (signed with `signer`), scripts and
 * personal data are synthetic but deterministic. Writes the seven
 * <stream>.jsonl snapshot files and members_index.tsv into o->outdir.
 * `counts` may be NULL. */
int cg_retail_build_opts(const cg_retail_opts *o, cg_signer *signer, cg_retail_counts *counts);

/* cg_retail_build_opts with version 1. */
int cg_retail_build(const char *csv_path, const char *tenant, cg_signer *signer, int64_t now_ms,
		    const char *outdir, uint64_t seed);

#ifdef __cplusplus
}
#endif

#endif
