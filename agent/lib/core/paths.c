/* SPDX-License-Identifier: Apache-2.0 */
/*
 * paths: the agent's private directory inside the shared store, and the
 * move of an older agent's files into it (see paths.h for the layout and
 * why).
 */
#include "paths.h"

#include "err.h"
#include "platform.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int paths__private(const char *store_dir, const char *name, char *out, size_t n)
{
	int k = name && name[0] ? snprintf(out, n, "%s/%s/%s", store_dir, PATHS_PRIVATE_DIR, name)
				: snprintf(out, n, "%s/%s", store_dir, PATHS_PRIVATE_DIR);
	if (k < 0 || (size_t)k >= n)
		return err__set(SCRM_E_CONFIG, "store_dir: path too long (%zu bytes at most)", n > 40 ? n - 40 : 0);
	return SCRM_OK;
}

/* Names that hold a secret: no group or other access at all. device.key's
 * backups and temporaries (device.key.bak-..., .tmp-...) included. */
static int is_secret(const char *name)
{
	return strstr(name, ".key") != NULL;
}

/* Whether `<store>/<name>` exists (not following a link). */
static int exists_at(int dfd, const char *name)
{
	struct stat st;
	return fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

/* A legacy keys/ directory: the directory and every entry in it must be
 * this user's, unwritable by others, the keys unreadable by others. */
static int check_legacy_keys(const char *store_dir, int sfd)
{
	char why[200];
	int rc = SCRM_OK;
	int kfd = openat(sfd, PATHS_KEYS_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (kfd < 0) {
		int e = errno;
		return err__set(SCRM_E_CONFIG, "%s/%s: %s; not moved to %s/: move it away or fix it", store_dir,
				PATHS_KEYS_DIR, e == ELOOP || e == ENOTDIR ? "not a directory (a symbolic link?)" : strerror(e),
				PATHS_PRIVATE_DIR);
	}
	if (platform__check_fd(kfd, 1, 0, why, sizeof(why)) != 0) {
		close(kfd);
		return err__set(SCRM_E_CONFIG,
				"%s/%s: %s; not moved to %s/ (a member of the store's group could have planted it):"
				" check it, then chown/chmod it or move it away",
				store_dir, PATHS_KEYS_DIR, why, PATHS_PRIVATE_DIR);
	}
	int lfd = dup(kfd);
	DIR *d = lfd >= 0 ? fdopendir(lfd) : NULL;
	if (!d) {
		if (lfd >= 0)
			close(lfd);
		close(kfd);
		return err__set(SCRM_E_IO, "%s/%s: cannot list: %s", store_dir, PATHS_KEYS_DIR, strerror(errno));
	}
	for (struct dirent *de; rc == SCRM_OK && (de = readdir(d)) != NULL;) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		int fd = platform__openat_trusted(kfd, de->d_name, O_RDONLY, is_secret(de->d_name), why, sizeof(why));
		if (fd < 0)
			rc = err__set(SCRM_E_CONFIG,
				      "%s/%s/%s: %s; keys/ not moved to %s/ (a member of the store's group could have"
				      " planted it): check it, then fix or remove it",
				      store_dir, PATHS_KEYS_DIR, de->d_name, why, PATHS_PRIVATE_DIR);
		else
			close(fd);
	}
	closedir(d);
	close(kfd);
	return rc;
}

/* A legacy state file (config.remote.json, fleet_seen_ids, birth_seq). */
static int check_legacy_file(const char *store_dir, int sfd, const char *name)
{
	char why[200];
	int fd = platform__openat_trusted(sfd, name, O_RDONLY, 0, why, sizeof(why));
	if (fd < 0)
		return err__set(SCRM_E_CONFIG,
				"%s/%s: %s; not moved to %s/ (a member of the store's group could have planted it):"
				" check it, then fix or remove it",
				store_dir, name, why, PATHS_PRIVATE_DIR);
	close(fd);
	return SCRM_OK;
}

/* The old cache: this user's regular files (0660 was its normal mode). */
static int legacy_cache_ok(int sfd, char *why, size_t n)
{
	static const char *const names[] = {"cache.db", "cache.db-wal", "cache.db-shm"};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		struct stat st;
		if (fstatat(sfd, names[i], &st, AT_SYMLINK_NOFOLLOW) != 0)
			continue;
		if (!S_ISREG(st.st_mode)) {
			snprintf(why, n, "%s: not a regular file", names[i]);
			return 0;
		}
		if (st.st_uid != geteuid() && st.st_uid != 0) {
			snprintf(why, n, "%s: owner uid %lu, expected %lu", names[i], (unsigned long)st.st_uid,
				 (unsigned long)geteuid());
			return 0;
		}
	}
	return 1;
}

static void note(char *moved, size_t n, const char *what)
{
	if (!moved || !n)
		return;
	size_t k = strlen(moved);
	snprintf(moved + k, n - k, "%s%s", k ? "," : "", what);
}

int paths__prepare(const char *store_dir, const char *keys_dir, char *moved, size_t n)
{
	static const char *const files[] = {PATHS_OVERLAY, PATHS_SEEN_IDS, PATHS_BIRTH_SEQ};
	static const char *const cache_files[] = {"cache.db", "cache.db-wal", "cache.db-shm"};
	char priv[4200], why[200];
	int sfd = -1, pfd = -1, rc = SCRM_OK, did = 0;

	if (moved && n)
		moved[0] = '\0';
	if ((rc = paths__private(store_dir, NULL, priv, sizeof(priv))))
		return rc;
	platform__mkdirs(store_dir, 0700);
	if ((sfd = open(store_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
		return err__set(SCRM_E_IO, "store_dir %s: %s", store_dir, strerror(errno));
	if ((pfd = platform__open_trusted_dir(priv, 1, why, sizeof(why))) < 0) {
		rc = err__set(SCRM_E_CONFIG,
			      "%s: %s; the agent keeps its keys there and trusts only a directory of its own user"
			      " that nobody else can write (a member of the store's group may have planted it):"
			      " check it, then move it away or fix it (chown to the agent's user, chmod 0700)",
			      priv, why);
		goto cleanup;
	}
	/* Check everything first, then move: a refusal leaves the old layout
	 * as it was. */
	/* A configured cache.keys_dir is the operator's: used where it is
	 * (and checked at every read), never moved. */
	int move_keys = !keys_dir && exists_at(sfd, PATHS_KEYS_DIR);
	if (move_keys) {
		if (exists_at(pfd, PATHS_KEYS_DIR)) {
			rc = err__set(SCRM_E_CONFIG, "%s/%s and %s/%s both exist: keep the right one and remove the other",
				      store_dir, PATHS_KEYS_DIR, priv, PATHS_KEYS_DIR);
			goto cleanup;
		}
		if ((rc = check_legacy_keys(store_dir, sfd)))
			goto cleanup;
	}
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		if (!exists_at(sfd, files[i]))
			continue;
		if (exists_at(pfd, files[i])) {
			rc = err__set(SCRM_E_CONFIG, "%s/%s and %s/%s both exist: keep the right one and remove the other",
				      store_dir, files[i], priv, files[i]);
			goto cleanup;
		}
		if ((rc = check_legacy_file(store_dir, sfd, files[i])))
			goto cleanup;
	}

	if (move_keys) {
		if (renameat(sfd, PATHS_KEYS_DIR, pfd, PATHS_KEYS_DIR) != 0) {
			rc = err__set(SCRM_E_IO, "%s/%s: cannot move into %s: %s", store_dir, PATHS_KEYS_DIR, priv,
				      strerror(errno));
			goto cleanup;
		}
		note(moved, n, PATHS_KEYS_DIR);
		did = 1;
	}
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		if (!exists_at(sfd, files[i]))
			continue;
		if (renameat(sfd, files[i], pfd, files[i]) != 0) {
			rc = err__set(SCRM_E_IO, "%s/%s: cannot move into %s: %s", store_dir, files[i], priv,
				      strerror(errno));
			goto cleanup;
		}
		note(moved, n, files[i]);
		did = 1;
	}
	/* The cache is rebuildable from central: one that fails the checks is
	 * not used (and not deleted: an operator may want to look at it). */
	if (exists_at(sfd, cache_files[0]) && !exists_at(pfd, cache_files[0])) {
		if (!legacy_cache_ok(sfd, why, sizeof(why))) {
			char w[300];
			snprintf(w, sizeof(w), "cache.db NOT moved (%s): left in store_dir unused, fetched again", why);
			note(moved, n, w);
		} else {
			/* -wal first: a cache.db without its WAL would lose the
			 * last commits; a WAL without its db is ignored. */
			for (size_t i = sizeof(cache_files) / sizeof(cache_files[0]); i-- > 0;)
				if (exists_at(sfd, cache_files[i]) &&
				    renameat(sfd, cache_files[i], pfd, cache_files[i]) != 0) {
					rc = err__set(SCRM_E_IO, "%s/%s: cannot move into %s: %s", store_dir, cache_files[i],
						      priv, strerror(errno));
					goto cleanup;
				}
			note(moved, n, "cache.db");
			did = 1;
		}
	}
	if (did) {
		(void)fsync(pfd);
		(void)fsync(sfd);
	}
cleanup:
	if (pfd >= 0)
		close(pfd);
	if (sfd >= 0)
		close(sfd);
	return rc;
}
