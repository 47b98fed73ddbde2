/* SPDX-License-Identifier: Apache-2.0 */
/*
 * private_test: issue 12, finding 3 — the store directory (2770, group
 * scrm, no sticky bit) is shared with the POS software, so any member of the
 * group can rename and plant entries in it. These tests play that POS user
 * for real: a forked child that drops to another uid in the store's group
 * (setgid/setuid), working on real files, against the real modules —
 * agent/lib/core/paths.c (the private directory and the move of an old layout),
 * platform__read_trusted (crypto's keys and central.pub, the remote
 * settings, the replay guard), agent/lib/cache/cache.c, agent/daemon/enroll.c and libscrm's
 * capture.
 *
 * A second uid needs root (CI runs the suite as root); as another user the
 * tests that need one are skipped, the rest still run.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cache.h"
#include "cachegen.h"
#include "config.h"
#include "crypto.h"
#include "enroll.h"
#include "err.h"
#include "birth.h"
#include "fleet.h"
#include "harness.h"
#include "paths.h"
#include "platform.h"
#include "replay.h"
#include "testutil.h"

#include <scrm/scrm.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* The POS user (member of the store's group) and, for enroll, the agent's
 * user owning the store; neither needs to exist in /etc/passwd. */
#define POS_UID 4242
#define POS_GID 4242
#define AGENT_UID 4243

#define KEY_A "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n"
#define KEY_B "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100\n"

struct fx {
	char *dir;     /* 0755: the POS user must reach the store */
	char *store;   /* <dir>/store: 2770, group POS_GID */
	char *priv;    /* <store>/private */
	char *keys;    /* <store>/private/keys */
	char *central; /* <dir>/central: central.key/.pub, tenant.key */
};

static int root(void)
{
	return geteuid() == 0;
}

static char *join3(const char *a, const char *b, const char *c)
{
	char *ab = tu_join(a, b), *abc = tu_join(ab, c);
	free(ab);
	return abc;
}

static void write_mode(const char *path, const char *text, mode_t mode)
{
	assert_int_equal(th_write_file(path, text), 0);
	assert_int_equal(chmod(path, mode), 0);
}

static int exists(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0;
}

static uid_t owner_of(const char *path)
{
	struct stat st;
	assert_int_equal(lstat(path, &st), 0);
	return st.st_uid;
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	f->dir = tu_tmpdir("private");
	assert_int_equal(chmod(f->dir, 0755), 0);
	f->store = tu_join(f->dir, "store");
	f->priv = tu_join(f->store, PATHS_PRIVATE_DIR);
	f->keys = tu_join(f->priv, PATHS_KEYS_DIR);
	f->central = tu_join(f->dir, "central");
	/* As the package makes it: 2770, setgid, the store's group. */
	assert_int_equal(mkdir(f->store, 0700), 0);
	if (root())
		assert_int_equal(chown(f->store, geteuid(), POS_GID), 0);
	assert_int_equal(chmod(f->store, 02770), 0);
	assert_int_equal(cg_keys_create(f->central, 3), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	tu_rmtree_free(f->dir, f->store, f->priv, f->keys, f->central);
	free(f);
	return 0;
}

/* Run fn as the POS user (uid POS_UID, group POS_GID only) in a child;
 * its exit status. */
static int as_pos(int (*fn)(struct fx *), struct fx *f)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		if (setgroups(0, NULL) != 0 || setgid(POS_GID) != 0 || setuid(POS_UID) != 0)
			_exit(100);
		_exit(fn(f));
	}
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	return WEXITSTATUS(st);
}

/* The agent's first start: private/ made, the data key and the cache. */
static void agent_start(struct fx *f)
{
	cache *c = NULL;
	cache__options o = {.create = 1};
	int rc = cache__open(f->store, &o, &c);
	if (rc != SCRM_OK)
		print_error("cache__open: %s\n", scrm_errmsg());
	assert_int_equal(rc, SCRM_OK);
	cache__close(c);
}

static void load_data_key(struct fx *f, uint8_t key[CRYPTO_KEY_BYTES], int want)
{
	char *p = tu_join(f->keys, "data.key");
	assert_int_equal(crypto__load_key(p, key), want);
	free(p);
}

/* ---- (a) a member of the store's group against the private directory ---- */

/* What the POS user tries inside private/; each success sets a bit. */
static int try_private(struct fx *f)
{
	int got = 0;
	char *k = tu_join(f->keys, "data.key"), *k2 = tu_join(f->priv, "keys.old");
	char *planted = tu_join(f->priv, "planted"), *cdb = tu_join(f->priv, CACHE_FILE),
	     *cdb2 = tu_join(f->store, "cache.db.aside");
	int fd = open(k, O_RDONLY);
	if (fd >= 0) {
		got |= 1;
		close(fd);
	}
	if (rename(f->keys, k2) == 0)
		got |= 2;
	if ((fd = open(planted, O_WRONLY | O_CREAT | O_EXCL, 0666)) >= 0) {
		got |= 4;
		close(fd);
	}
	if (rename(cdb, cdb2) == 0)
		got |= 8;
	if (unlink(cdb) == 0)
		got |= 16;
	free(k);
	free(k2);
	free(planted);
	free(cdb);
	free(cdb2);
	return got;
}

static void pos_user_cannot_touch_private_dir(void **state)
{
	struct fx *f = *state;
	if (!root()) {
		skip();
		return;
	}
	agent_start(f);
	struct stat st;
	assert_int_equal(lstat(f->priv, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700); /* (+ setgid, inherited from the store: harmless) */
	assert_int_equal(as_pos(try_private, f), 0);
}

/* The proven attack: move the agent's directory aside (a rename inside the
 * group-writable store needs no write access to the directory moved) and
 * put one of one's own in its place, with a data key one knows. */
static int plant_private(struct fx *f)
{
	char *aside = tu_join(f->store, "private.aside"), *k = tu_join(f->keys, "data.key");
	int rc = 0;
	if (rename(f->priv, aside) != 0)
		rc = 1;
	else if (mkdir(f->priv, 0700) != 0 || mkdir(f->keys, 0700) != 0)
		rc = 2;
	else {
		FILE *fp = fopen(k, "w");
		if (!fp || fputs(KEY_A, fp) < 0 || fclose(fp) != 0 || chmod(k, 0600) != 0)
			rc = 3;
	}
	free(aside);
	free(k);
	return rc;
}

static void planted_private_dir_is_refused(void **state)
{
	struct fx *f = *state;
	uint8_t key[CRYPTO_KEY_BYTES];
	if (!root()) {
		skip();
		return;
	}
	agent_start(f);
	assert_int_equal(as_pos(plant_private, f), 0);
	/* The agent restarts: it refuses the directory, names it and why. */
	char moved[200];
	assert_int_equal(paths__prepare(f->store, NULL, moved, sizeof(moved)), SCRM_E_CONFIG);
	assert_errmsg_contains(f->priv);
	assert_errmsg_contains("owner uid 4242, expected 0");
	cache *c = NULL;
	cache__options o = {.create = 1};
	assert_int_equal(cache__open(f->store, &o, &c), SCRM_E_CONFIG);
	assert_null(c);
	assert_errmsg_contains("owner uid 4242");
	/* Nor is the planted key read by anyone who asks for it directly
	 * (scrmctl, a guide app: scrm_cache_open). */
	load_data_key(f, key, SCRM_E_CONFIG);
	assert_errmsg_contains("owner uid 4242");
	scrm_cache *h = NULL;
	assert_int_not_equal(scrm_cache_open(f->store, NULL, &h), SCRM_OK);
	assert_null(h);
}

/* The daemon itself (scrm-agent, as systemd starts it) stops at once on a
 * planted private/, naming it, instead of running with a key someone else
 * knows. */
static void agent_refuses_to_start_on_planted_private(void **state)
{
	struct fx *f = *state;
	if (!root()) {
		skip();
		return;
	}
	agent_start(f);
	assert_int_equal(as_pos(plant_private, f), 0);
	char *cfgp = tu_join(f->dir, "agent.json"), *log = tu_join(f->dir, "agent.log"), text[1200];
	snprintf(text, sizeof(text),
		 "{\"tenant\":\"acme\",\"store_id\":\"s1\",\"device_id\":\"pos-01\",\"store_dir\":\"%s\","
		 "\"broker\":{\"uri\":\"mqtts://127.0.0.1:9\",\"ca_file\":\"/etc/scrm/ca.pem\"}}",
		 f->store);
	write_mode(cfgp, text, 0644);
	const char *argv[] = {th_bin("SCRM_AGENT_BIN"), "--config", cfgp, NULL};
	assert_int_equal(th_run_target(argv, log, 60000), 1);
	char *out = th_read_file(log, NULL);
	assert_non_null(out);
	if (!strstr(out, "private: owner uid 4242, expected 0"))
		fail_msg("scrm-agent's output does not name the planted directory: %s", out);
	free(out);
	free(cfgp);
	free(log);
}

/* ---- (b) planted or loosened keys: refused, with the reason ---- */

static void planted_keys_refused_with_reason(void **state)
{
	struct fx *f = *state;
	uint8_t key[CRYPTO_KEY_BYTES];
	crypto__verifier *v = NULL;
	agent_start(f);
	char *dk = tu_join(f->keys, "data.key"), *pub = tu_join(f->keys, "central.pub");
	char *from = tu_join(f->central, "central.pub"), *other = tu_join(f->dir, "other.key");
	char *text = th_read_file(from, NULL);
	assert_non_null(text);
	write_mode(pub, text, 0644);
	free(text);
	load_data_key(f, key, SCRM_OK);
	assert_int_equal(crypto__verifier_load(pub, &v), SCRM_OK);
	crypto__verifier_free(v);
	v = NULL;

	/* A data key others can read: refused (and never silently used). */
	assert_int_equal(chmod(dk, 0640), 0);
	load_data_key(f, key, SCRM_E_CONFIG);
	assert_errmsg_contains("data.key: refused: mode 0640, expected no group or other access");
	assert_int_equal(chmod(dk, 0600), 0);
	/* A link in the key's place (to a key file that is fine itself). */
	write_mode(other, KEY_B, 0600);
	char *real = tu_join(f->dir, "data.key.real");
	assert_int_equal(rename(dk, real), 0);
	free(real);
	assert_int_equal(symlink(other, dk), 0);
	load_data_key(f, key, SCRM_E_CONFIG);
	assert_errmsg_contains("data.key: refused: a symbolic link");
	assert_int_equal(unlink(dk), 0);
	write_mode(dk, KEY_A, 0600);
	/* The keys directory open to the group: refused, the directory named. */
	assert_int_equal(chmod(f->keys, 0770), 0);
	load_data_key(f, key, SCRM_E_CONFIG);
	assert_errmsg_contains("mode 0770, expected no group or other write");
	assert_errmsg_contains(f->keys);
	assert_int_equal(chmod(f->keys, 0700), 0);
	load_data_key(f, key, SCRM_OK);

	/* central.pub: whoever replaces it forges coupons and QR tokens. */
	assert_int_equal(chmod(pub, 0666), 0);
	assert_int_equal(crypto__verifier_load(pub, &v), SCRM_E_CONFIG);
	assert_errmsg_contains("central.pub: refused: mode 0666, expected no group or other write");
	assert_int_equal(chmod(pub, 0644), 0);
	assert_int_equal(unlink(pub), 0);
	assert_int_equal(symlink(from, pub), 0);
	assert_int_equal(crypto__verifier_load(pub, &v), SCRM_E_CONFIG);
	assert_errmsg_contains("central.pub: refused: a symbolic link");
	assert_null(v);

	if (root()) {
		/* Another user's files, even with a proper mode. */
		assert_int_equal(unlink(pub), 0);
		text = th_read_file(from, NULL);
		write_mode(pub, text, 0644);
		free(text);
		assert_int_equal(chown(pub, POS_UID, POS_GID), 0);
		assert_int_equal(crypto__verifier_load(pub, &v), SCRM_E_CONFIG);
		assert_errmsg_contains("central.pub: refused: owner uid 4242, expected 0");
		assert_int_equal(chown(dk, POS_UID, POS_GID), 0);
		load_data_key(f, key, SCRM_E_CONFIG);
		assert_errmsg_contains("data.key: refused: owner uid 4242, expected 0");
	}
	free(dk);
	free(pub);
	free(from);
	free(other);
}

/* The remote settings, the replay guard and birth_seq are only taken from
 * the agent's own files. */
static void state_files_refused_unless_own(void **state)
{
	struct fx *f = *state;
	if (!root()) {
		skip();
		return;
	}
	agent_start(f);
	char *seen = tu_join(f->priv, PATHS_SEEN_IDS), *birth = tu_join(f->priv, PATHS_BIRTH_SEQ);
	char *ov = tu_join(f->priv, PATHS_OVERLAY), *cfgp = tu_join(f->dir, "agent.json");
	fleet__seen s;
	write_mode(seen, "cmd-1 9000000000000\ncmd-2 9000000000000\n", 0600);
	assert_int_equal(replay__open(&s, seen, 1000), 0);
	assert_int_equal(s.n, 2);
	assert_false(s.broken);
	replay__close(&s);
	/* Another user's: counted as unreadable, so no signed command is
	 * obeyed (fail closed) rather than ids someone could have dropped. */
	assert_int_equal(chown(seen, POS_UID, POS_GID), 0);
	assert_int_equal(replay__open(&s, seen, 1000), -1);
	assert_true(s.broken);
	replay__close(&s);

	write_mode(birth, "9000000000000000\n", 0600);
	assert_int_equal(fleet__next_birth_seq(f->priv, 1000), 9000000000000001LL);
	write_mode(birth, "9000000000000000\n", 0600);
	assert_int_equal(chown(birth, POS_UID, POS_GID), 0);
	assert_int_equal(fleet__next_birth_seq(f->priv, 1000), 1000);

	char cfg_text[1200];
	snprintf(cfg_text, sizeof(cfg_text),
		 "{\"tenant\":\"acme\",\"store_id\":\"s1\",\"device_id\":\"pos-01\",\"store_dir\":\"%s\","
		 "\"broker\":{\"uri\":\"mqtts://127.0.0.1:8883\",\"ca_file\":\"/etc/scrm/ca.pem\"}}",
		 f->store);
	write_mode(cfgp, cfg_text, 0644);
	write_mode(ov, "{\"v\":1,\"version\":3,\"set\":{\"sync.window\":4}}", 0600);
	config c;
	assert_int_equal(config__load_all(cfgp, &c), SCRM_OK);
	assert_int_equal(c.window, 4);
	assert_null(c.overlay_error);
	config__free(&c);
	assert_int_equal(chown(ov, POS_UID, POS_GID), 0);
	assert_int_equal(config__load_all(cfgp, &c), SCRM_OK);
	assert_int_equal(c.window, 8);
	assert_non_null(c.overlay_error);
	assert_non_null(strstr(c.overlay_error, "refused: owner uid 4242"));
	config__free(&c);
	free(seen);
	free(birth);
	free(ov);
	free(cfgp);
}

/* ---- an older agent's layout: moved in if it is the agent's, else refused ---- */

static void old_layout(struct fx *f)
{
	char *k = tu_join(f->store, "keys"), *dk = join3(f->store, "keys", "data.key");
	char *pub = join3(f->store, "keys", "central.pub");
	assert_int_equal(mkdir(k, 0700), 0);
	write_mode(dk, KEY_A, 0600);
	write_mode(pub, "not checked here\n", 0644);
	const char *files[] = {PATHS_OVERLAY, PATHS_SEEN_IDS, PATHS_BIRTH_SEQ, "cache.db", "cache.db-wal"};
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		char *p = tu_join(f->store, files[i]);
		write_mode(p, "x\n", i < 3 ? 0600 : 0660);
		free(p);
	}
	free(k);
	free(dk);
	free(pub);
}

static void old_layout_moved_in(void **state)
{
	struct fx *f = *state;
	char moved[400];
	uint8_t key[CRYPTO_KEY_BYTES];
	old_layout(f);
	assert_int_equal(paths__prepare(f->store, NULL, moved, sizeof(moved)), SCRM_OK);
	assert_string_equal(moved, "keys,config.remote.json,fleet_seen_ids,birth_seq,cache.db");
	const char *names[] = {"keys", PATHS_OVERLAY, PATHS_SEEN_IDS, PATHS_BIRTH_SEQ, "cache.db", "cache.db-wal"};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char *old = tu_join(f->store, names[i]), *now = tu_join(f->priv, names[i]);
		assert_false(exists(old));
		assert_true(exists(now));
		free(old);
		free(now);
	}
	load_data_key(f, key, SCRM_OK);
	assert_int_equal(key[0], 0x00);
	assert_int_equal(key[1], 0x11);
	/* Idempotent. */
	assert_int_equal(paths__prepare(f->store, NULL, moved, sizeof(moved)), SCRM_OK);
	assert_string_equal(moved, "");
}

static void assert_nothing_moved(struct fx *f)
{
	char *k = tu_join(f->store, "keys"), *ov = tu_join(f->store, PATHS_OVERLAY);
	char *k2 = tu_join(f->priv, "keys");
	assert_true(exists(k));
	assert_true(exists(ov));
	assert_false(exists(k2));
	free(k);
	free(ov);
	free(k2);
}

static void old_layout_not_ours_refused(void **state)
{
	struct fx *f = *state;
	char moved[400];
	old_layout(f);
	char *k = tu_join(f->store, "keys"), *dk = join3(f->store, "keys", "data.key");
	char *aside = tu_join(f->dir, "keys.real");
	/* A key others can read. */
	assert_int_equal(chmod(dk, 0644), 0);
	assert_int_equal(paths__prepare(f->store, NULL, moved, sizeof(moved)), SCRM_E_CONFIG);
	assert_errmsg_contains("keys/data.key: mode 0644, expected no group or other access");
	assert_nothing_moved(f);
	assert_int_equal(chmod(dk, 0600), 0);
	/* keys/ a link (to a directory that is fine itself). */
	assert_int_equal(rename(k, aside), 0);
	assert_int_equal(symlink(aside, k), 0);
	assert_int_equal(paths__prepare(f->store, NULL, moved, sizeof(moved)), SCRM_E_CONFIG);
	assert_errmsg_contains("/keys: not a directory (a symbolic link?)");
	assert_nothing_moved(f);
	assert_int_equal(unlink(k), 0);
	assert_int_equal(rename(aside, k), 0);
	if (root()) {
		/* The POS user's keys/ (the attack on the old layout): refused. */
		assert_int_equal(chown(k, POS_UID, POS_GID), 0);
		assert_int_equal(paths__prepare(f->store, NULL, moved, sizeof(moved)), SCRM_E_CONFIG);
		assert_errmsg_contains("/keys: owner uid 4242, expected 0");
		assert_nothing_moved(f);
		assert_int_equal(chown(k, 0, 0), 0);
		/* A cache.db of the POS user's: not taken, not deleted. */
		char *cdb = tu_join(f->store, "cache.db");
		assert_int_equal(chown(cdb, POS_UID, POS_GID), 0);
		assert_int_equal(paths__prepare(f->store, NULL, moved, sizeof(moved)), SCRM_OK);
		assert_non_null(strstr(moved, "cache.db NOT moved (cache.db: owner uid 4242"));
		assert_true(exists(cdb));
		char *pc = tu_join(f->priv, "cache.db");
		assert_false(exists(pc));
		free(pc);
		free(cdb);
	}
	free(k);
	free(dk);
	free(aside);
}

/* ---- (c) enroll, run as root in a store the group can write ---- */

struct efx {
	config cfg;
	enroll_paths paths;
	char *elsewhere;
};

static void enroll_setup(struct fx *f, struct efx *e)
{
	char text[1600];
	/* The store belongs to the agent's user, as the package makes it. */
	assert_int_equal(chown(f->store, AGENT_UID, POS_GID), 0);
	assert_int_equal(chmod(f->store, 02770), 0);
	snprintf(text, sizeof(text),
		 "{\"tenant\":\"acme\",\"store_id\":\"s1\",\"device_id\":\"pos-01\",\"store_dir\":\"%s\","
		 "\"broker\":{\"uri\":\"mqtts://127.0.0.1:8883\",\"ca_file\":\"/etc/scrm/ca.pem\"}}",
		 f->store);
	assert_int_equal(config__parse(text, strlen(text), &e->cfg), SCRM_OK);
	assert_int_equal(enroll__paths(&e->cfg, NULL, NULL, &e->paths), SCRM_OK);
	assert_non_null(strstr(e->paths.key, "/store/private/keys/device.key"));
	e->elsewhere = tu_join(f->dir, "elsewhere");
	assert_int_equal(mkdir(e->elsewhere, 0755), 0);
}

static void enroll_free(struct efx *e)
{
	config__free(&e->cfg);
	free(e->elsewhere);
}

static void make_agent_dirs(struct fx *f)
{
	assert_int_equal(mkdir(f->priv, 0700), 0);
	assert_int_equal(mkdir(f->keys, 0700), 0);
	assert_int_equal(chown(f->priv, AGENT_UID, POS_GID), 0);
	assert_int_equal(chown(f->keys, AGENT_UID, POS_GID), 0);
}

static void enroll_refuses_key_it_did_not_make(void **state)
{
	struct fx *f = *state;
	struct efx e;
	if (!root()) {
		skip();
		return;
	}
	enroll_setup(f, &e);
	/* First enrolment: everything made here goes to the agent's user. */
	assert_int_equal(enroll__make_csr(&e.cfg, &e.paths, 0, NULL), SCRM_OK);
	assert_int_equal(owner_of(f->priv), AGENT_UID);
	assert_int_equal(owner_of(e.paths.key), AGENT_UID);
	/* Re-enrolment reuses the agent's own key. */
	assert_int_equal(enroll__make_csr(&e.cfg, &e.paths, 0, NULL), SCRM_OK);

	/* A key the POS user made (what the 2770 store allowed before):
	 * central would certify a key its author knows. */
	char *good = th_read_file(e.paths.key, NULL);
	assert_int_equal(unlink(e.paths.csr), 0);
	assert_int_equal(chown(e.paths.key, POS_UID, POS_GID), 0);
	assert_int_equal(enroll__make_csr(&e.cfg, &e.paths, 0, NULL), SCRM_E_REFUSED);
	assert_errmsg_contains(e.paths.key);
	assert_errmsg_contains("owner uid 4242, expected 4243 (the store's owner) or 0");
	assert_false(exists(e.paths.csr));
	assert_int_equal(owner_of(e.paths.key), POS_UID); /* not taken over either */
	/* Nor is it the one a certificate gets installed for. */
	char *crt = tu_join(f->dir, "any.crt");
	write_mode(crt, "-----BEGIN CERTIFICATE-----\n", 0644);
	assert_int_not_equal(enroll__install_cert(&e.cfg, &e.paths, crt, NULL, platform__wall_ms(), NULL, NULL),
			     SCRM_OK);
	assert_int_equal(chown(e.paths.key, AGENT_UID, POS_GID), 0);
	/* One others can read. */
	assert_int_equal(chmod(e.paths.key, 0640), 0);
	assert_int_equal(enroll__make_csr(&e.cfg, &e.paths, 0, NULL), SCRM_E_REFUSED);
	assert_errmsg_contains("mode 0640, expected no group or other access");
	assert_false(exists(e.paths.csr));
	char *now = th_read_file(e.paths.key, NULL);
	assert_string_equal(good, now);
	free(good);
	free(now);
	free(crt);
	enroll_free(&e);
}

static int link_private_elsewhere(struct fx *f)
{
	return symlink("../elsewhere", f->priv) == 0 ? 0 : 1;
}

static int own_private(struct fx *f)
{
	return mkdir(f->priv, 0777) == 0 && chmod(f->priv, 0777) == 0 ? 0 : 1;
}

static void enroll_never_follows_links_or_chowns_others(void **state)
{
	struct fx *f = *state;
	struct efx e;
	struct stat st;
	if (!root()) {
		skip();
		return;
	}
	enroll_setup(f, &e);
	/* private -> ../elsewhere, put there by the POS user. */
	assert_int_equal(as_pos(link_private_elsewhere, f), 0);
	assert_int_equal(enroll__make_csr(&e.cfg, &e.paths, 0, NULL), SCRM_E_REFUSED);
	assert_errmsg_contains("/store/private: refused: a symbolic link");
	char *ek = tu_join(e.elsewhere, "keys");
	assert_false(exists(ek));
	assert_int_equal(lstat(e.elsewhere, &st), 0);
	assert_int_equal(st.st_uid, 0);
	assert_int_equal(st.st_mode & 07777, 0755);
	assert_int_equal(unlink(f->priv), 0);

	/* private/keys -> elsewhere (inside the agent's own directory). */
	make_agent_dirs(f);
	assert_int_equal(rmdir(f->keys), 0);
	assert_int_equal(symlink(e.elsewhere, f->keys), 0);
	assert_int_equal(enroll__make_csr(&e.cfg, &e.paths, 0, NULL), SCRM_E_REFUSED);
	assert_errmsg_contains("/store/private/keys: refused: a symbolic link");
	char *ed = tu_join(e.elsewhere, "device.key");
	assert_false(exists(ed));
	assert_int_equal(lstat(e.elsewhere, &st), 0);
	assert_int_equal(st.st_uid, 0);
	assert_int_equal(unlink(f->keys), 0);
	assert_int_equal(rmdir(f->priv), 0);

	/* A private/ of the POS user's own: refused, and not chowned. */
	assert_int_equal(as_pos(own_private, f), 0);
	assert_int_equal(enroll__make_csr(&e.cfg, &e.paths, 0, NULL), SCRM_E_REFUSED);
	assert_errmsg_contains("/store/private: refused: owner uid 4242");
	assert_int_equal(owner_of(f->priv), POS_UID);
	char *k = tu_join(f->priv, "keys");
	assert_false(exists(k));
	free(k);
	free(ek);
	free(ed);
	enroll_free(&e);
}

/* ---- (d) capture by the POS user still works ---- */

static int pos_capture(struct fx *f)
{
	scrm_store *s = NULL;
	scrm_line line = {.sku = "85123A", .qty = 1, .unit_price = 255, .discount = 0};
	scrm_purchase p = {.order_id = "o-pos-1", .lines = &line, .n_lines = 1, .total = 255,
			   .currency = "GBP", .payment = "card"};
	scrm_receipt r;
	scrm_cache *h = NULL;
	if (scrm_store_open(f->store, NULL, &s) != SCRM_OK) {
		fprintf(stderr, "pos: scrm_store_open: %s\n", scrm_errmsg());
		return 1;
	}
	int rc = scrm_record_purchase(s, &p, &r);
	scrm_store_close(s);
	if (rc != SCRM_OK) {
		fprintf(stderr, "pos: scrm_record_purchase: %s\n", scrm_errmsg());
		return 2;
	}
	/* The customer cache stays the agent's. */
	if (scrm_cache_open(f->store, NULL, &h) == SCRM_OK) {
		scrm_cache_close(h);
		return 3;
	}
	return 0;
}

static void pos_user_still_captures(void **state)
{
	struct fx *f = *state;
	if (!root()) {
		skip();
		return;
	}
	scrm_store *s = NULL;
	scrm_store_options o = {.device_id = "pos-01"};
	char moved[100];
	assert_int_equal(paths__prepare(f->store, NULL, moved, sizeof(moved)), SCRM_OK);
	agent_start(f);
	assert_int_equal(scrm_store_open(f->store, &o, &s), SCRM_OK);
	scrm_store_close(s);
	assert_int_equal(as_pos(pos_capture, f), 0);
	scrm_outbox_stats st;
	assert_int_equal(scrm_store_open(f->store, NULL, &s), SCRM_OK);
	assert_int_equal(scrm_outbox_get_stats(s, &st), SCRM_OK);
	assert_int_equal(st.pending, 1);
	scrm_store_close(s);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(pos_user_cannot_touch_private_dir, setup, teardown),
		cmocka_unit_test_setup_teardown(planted_private_dir_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(agent_refuses_to_start_on_planted_private, setup, teardown),
		cmocka_unit_test_setup_teardown(planted_keys_refused_with_reason, setup, teardown),
		cmocka_unit_test_setup_teardown(state_files_refused_unless_own, setup, teardown),
		cmocka_unit_test_setup_teardown(old_layout_moved_in, setup, teardown),
		cmocka_unit_test_setup_teardown(old_layout_not_ours_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(enroll_refuses_key_it_did_not_make, setup, teardown),
		cmocka_unit_test_setup_teardown(enroll_never_follows_links_or_chowns_others, setup, teardown),
		cmocka_unit_test_setup_teardown(pos_user_still_captures, setup, teardown),
	};
	tu_select(argc, argv);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
