/* SPDX-License-Identifier: Apache-2.0 */
/*
 * enroll_files: where enrolment reads and writes the device key, its CSR
 * and certificate (see enroll_files.h): directories checked component by
 * component, files opened relative to them, nothing followed that an
 * outsider could have bent.
 */
#include "enroll_files.h"

#include "err.h"
#include "paths.h"
#include "platform.h"

#include <errno.h>
#include <fcntl.h>
#include <mbedtls/platform_util.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void dir_of(const char *path, char *dir, size_t n)
{
	const char *slash = strrchr(path, '/');
	if (!slash)
		snprintf(dir, n, ".");
	else if (slash == path)
		snprintf(dir, n, "/");
	else
		snprintf(dir, n, "%.*s", (int)(slash - path), path);
}

void enroll_files__close(wdir *w)
{
	if (w->fd >= 0)
		close(w->fd);
	w->fd = -1;
}

/* Owner and mode of a directory or file enrolment trusts. */
int enroll_files__trusted(const wdir *w, const struct stat *st, int secret, char *why, size_t n)
{
	if (st->st_uid != geteuid() && st->st_uid != 0 && st->st_uid != w->uid) {
		snprintf(why, n, "owner uid %lu, expected %lu (the store's owner) or 0", (unsigned long)st->st_uid,
			 (unsigned long)w->uid);
		return 0;
	}
	if (secret && (st->st_mode & 077)) {
		snprintf(why, n, "mode 0%03o, expected no group or other access (0600)", (unsigned)(st->st_mode & 0777));
		return 0;
	}
	if (st->st_mode & 022) {
		snprintf(why, n, "mode 0%03o, writable by group or others", (unsigned)(st->st_mode & 0777));
		return 0;
	}
	return 1;
}

/* One directory component below dfd: opened without following a link,
 * made (0700, then given to the store's owner) if missing, checked. */
static int walk(wdir *w, int dfd, const char *comp, const char *shown)
{
	char why[200];
	struct stat st;
	int made = 0;
	int fd = openat(dfd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT) {
		if (mkdirat(dfd, comp, 0700) != 0 && errno != EEXIST)
			return err__set(SCRM_E_IO, "%s: cannot create directory: %s", shown, strerror(errno));
		made = 1;
		fd = openat(dfd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	}
	if (fd < 0)
		return err__set(SCRM_E_REFUSED, "%s: refused: %s", shown,
				errno == ELOOP || errno == ENOTDIR ? "a symbolic link or not a directory" : strerror(errno));
	if (fstat(fd, &st) != 0) {
		close(fd);
		return err__set(SCRM_E_IO, "%s: %s", shown, strerror(errno));
	}
	/* Made by this run (mkdirat succeeded and it is still root's): give it
	 * to the store's owner through the descriptor. */
	if (made && w->adopt && st.st_uid == geteuid()) {
		if (fchown(fd, w->uid, w->gid) != 0 || fstat(fd, &st) != 0) {
			close(fd);
			return err__set(SCRM_E_IO, "%s: cannot give it to uid %lu: %s", shown, (unsigned long)w->uid,
					strerror(errno));
		}
	}
	if (!enroll_files__trusted(w, &st, 0, why, sizeof(why))) {
		close(fd);
		return err__set(SCRM_E_REFUSED,
				"%s: refused: %s (a member of the store's group may have planted it): check it, then move"
				" it away or fix it",
				shown, why);
	}
	return fd;
}

/* Open (creating) the directory that holds `file`, checked as above. */
int enroll_files__open(const config *cfg, const char *file, unsigned mode_outside, wdir *w)
{
	struct stat store;
	char dir[4200], rel[4200];
	size_t n = strlen(cfg->store_dir);
	w->fd = -1;
	w->adopt = 0;
	w->uid = geteuid();
	w->gid = getegid();
	dir_of(file, dir, sizeof(dir));
	snprintf(w->path, sizeof(w->path), "%s", dir);
	while (n > 1 && cfg->store_dir[n - 1] == '/')
		n--;
	int inside = strncmp(dir, cfg->store_dir, n) == 0 && (dir[n] == '/' || dir[n] == '\0');
	w->inside = inside;
	if (!inside) {
		/* Elsewhere (/etc/scrm/tls): the operator's layout; still no link
		 * as the last component and nothing others can write. */
		char why[200];
		int e = platform__mkdirs(dir, mode_outside);
		if (e != 0)
			return err__set(SCRM_E_IO, "%s: cannot create directory %s: %s", file, dir, strerror(-e));
		if ((w->fd = platform__open_trusted_dir(dir, 0, why, sizeof(why))) < 0)
			return err__set(SCRM_E_REFUSED, "%s: refused: %s", dir, why);
		return SCRM_OK;
	}
	int e = platform__mkdirs(cfg->store_dir, 0700);
	if (e != 0)
		return err__set(SCRM_E_IO, "%s: cannot create directory: %s", cfg->store_dir, strerror(-e));
	int fd = open(cfg->store_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &store) != 0) {
		if (fd >= 0)
			close(fd);
		return err__set(SCRM_E_IO, "%s: %s", cfg->store_dir, strerror(errno));
	}
	if (store.st_uid != 0) {
		w->uid = store.st_uid;
		w->gid = store.st_gid;
		w->adopt = geteuid() == 0;
	}
	snprintf(rel, sizeof(rel), "%s", dir + n);
	char shown[4300];
	snprintf(shown, sizeof(shown), "%.*s", (int)n, cfg->store_dir);
	int depth = 0;
	for (char *save = NULL, *c = strtok_r(rel, "/", &save); c; c = strtok_r(NULL, "/", &save), depth++) {
		size_t k = strlen(shown);
		snprintf(shown + k, sizeof(shown) - k, "/%s", c);
		if (strcmp(c, ".") == 0 || strcmp(c, "..") == 0) {
			close(fd);
			return err__set(SCRM_E_CONFIG, "%s: \".\" or \"..\" in a path under store_dir", shown);
		}
		int next = walk(w, fd, c, shown);
		close(fd);
		if (next < 0)
			return next;
		fd = next;
	}
	if (depth == 0) {
		/* The store directory itself: shared with the POS group. */
		char why[200];
		if (!enroll_files__trusted(w, &store, 0, why, sizeof(why))) {
			close(fd);
			return err__set(SCRM_E_REFUSED, "%s: refused: %s; keep keys in %s/%s/%s", cfg->store_dir, why,
					cfg->store_dir, PATHS_PRIVATE_DIR, PATHS_KEYS_DIR);
		}
	}
	w->fd = fd;
	return SCRM_OK;
}

const char *enroll_files__base(const char *path)
{
	const char *slash = strrchr(path, '/');
	return slash ? slash + 1 : path;
}

static int write_all(int fd, const void *data, size_t len)
{
	for (size_t off = 0; off < len;) {
		ssize_t k = write(fd, (const char *)data + off, len - off);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? -errno : -EIO;
		off += (size_t)k;
	}
	return 0;
}

/* Write `path`'s last component in w: temp (O_EXCL, no link) → mode →
 * fsync → chown to the store's owner when adopting (our own new file) →
 * rename, or link (replace == 0: fails with -EEXIST rather than replace a
 * file someone made meanwhile) → fsync the directory. 0 or -errno (the
 * detail set, except for -EEXIST). */
int enroll_files__write(const wdir *w, const char *path, const void *data, size_t n, mode_t mode, int replace)
{
	char tmp[300];
	const char *name = enroll_files__base(path);
	int e = 0, fd;
	if (snprintf(tmp, sizeof(tmp), "%.200s.tmp-%ld", name, (long)getpid()) >= (int)sizeof(tmp))
		return err__set(SCRM_E_IO, "%s: name too long", path), -ENAMETOOLONG;
	(void)unlinkat(w->fd, tmp, 0);
	if ((fd = openat(w->fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)) < 0) {
		e = -errno;
		err__set(SCRM_E_IO, "%s: cannot write it: %s", path, strerror(-e));
		return e;
	}
	if (fchmod(fd, mode) != 0 || (e = write_all(fd, data, n)) != 0 || fsync(fd) != 0 ||
	    (w->adopt && fchown(fd, w->uid, w->gid) != 0))
		e = e ? e : -errno;
	if (close(fd) != 0 && !e)
		e = -errno;
	if (!e && (replace ? renameat(w->fd, tmp, w->fd, name) : linkat(w->fd, tmp, w->fd, name, 0)) != 0)
		e = -errno;
	if (e || !replace)
		(void)unlinkat(w->fd, tmp, 0);
	if (!e)
		(void)fsync(w->fd);
	if (e && e != -EEXIST)
		err__set(SCRM_E_IO, "%s: cannot write it: %s", path, strerror(-e));
	return e;
}

/* Read `path`'s last component in w without following a link; it must be a
 * regular file that root, this user or the store's owner owns and nobody
 * else can write (secret: nor read). SCRM_E_NOT_FOUND if absent. */
int enroll_files__read(const wdir *w, const char *path, int secret, char **buf, size_t *len)
{
	char why[200];
	struct stat st;
	int fd = openat(w->fd, enroll_files__base(path), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return err__set(SCRM_E_NOT_FOUND, "%s: no device key here (run scrm-agent enroll first)", path);
		return err__set(errno == ELOOP ? SCRM_E_REFUSED : SCRM_E_IO, "%s: refused: %s", path,
				errno == ELOOP ? "a symbolic link" : strerror(errno));
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return err__set(SCRM_E_REFUSED, "%s: refused: not a regular file", path);
	}
	if (!enroll_files__trusted(w, &st, secret, why, sizeof(why))) {
		close(fd);
		return err__set(SCRM_E_REFUSED,
				"%s: refused: %s; enroll uses only a key that root or the agent's user made and nobody"
				" else can read or write (a member of the store's group may have planted it): remove it"
				" and run enroll again",
				path, why);
	}
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		(void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
	char *out = NULL;
	size_t have = 0, cap = 0;
	for (;;) {
		if (have + 1025 > cap) {
			char *nb = cap < (1 << 20) ? realloc(out, cap = cap ? cap * 2 : 4096) : NULL;
			if (!nb) {
				if (out)
					mbedtls_platform_zeroize(out, have);
				free(out);
				close(fd);
				return err__set(SCRM_E_IO, "%s: larger than 1 MiB, or out of memory", path);
			}
			out = nb;
		}
		ssize_t k = read(fd, out + have, cap - have - 1);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			int e = errno;
			mbedtls_platform_zeroize(out, have);
			free(out);
			close(fd);
			return err__set(SCRM_E_IO, "%s: cannot read: %s", path, strerror(e));
		}
		if (k == 0)
			break;
		have += (size_t)k;
	}
	close(fd);
	out[have] = '\0';
	*buf = out;
	*len = have;
	return SCRM_OK;
}
