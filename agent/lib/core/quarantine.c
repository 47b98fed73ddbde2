/* SPDX-License-Identifier: Apache-2.0 */
/*
 * quarantine: moving damaged store files aside (see quarantine.h).
 */
#include "quarantine.h"

#include "platform.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int quarantine__lock_open(const char *dir, const char *name)
{
	char path[4200];
	if (snprintf(path, sizeof(path), "%s/%s.lock", dir, name) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	return platform__lock_open(path);
}

void quarantine__lock(int fd, int how)
{
	if (fd >= 0)
		platform__lock_fd(fd, how);
}

int quarantine__corrupt_rc(int sqlite_rc)
{
	int rc = sqlite_rc & 0xff;
	return rc == SQLITE_CORRUPT || rc == SQLITE_NOTADB;
}

int quarantine__quick_check(sqlite3 *db, char *why, size_t cap)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(db, "PRAGMA quick_check(1)", -1, &st, NULL);
	if (cap)
		why[0] = '\0';
	if (rc != SQLITE_OK) {
		snprintf(why, cap, "quick_check: %s", sqlite3_errmsg(db));
		return rc;
	}
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		const char *r = (const char *)sqlite3_column_text(st, 0);
		if (r && strcmp(r, "ok") == 0) {
			rc = 0;
		} else {
			snprintf(why, cap, "quick_check: %s", r ? r : "(no detail)");
			rc = 1;
		}
	} else {
		snprintf(why, cap, "quick_check: %s", sqlite3_errmsg(db));
		if (quarantine__corrupt_rc(rc))
			rc = 1;
	}
	sqlite3_finalize(st);
	return rc;
}

void quarantine__close_detached(sqlite3 *db)
{
	if (!db)
		return;
	int on = 1;
	sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
	sqlite3_file_control(db, "main", SQLITE_FCNTL_PERSIST_WAL, &on);
	sqlite3_close_v2(db);
}

int quarantine__same_file(const char *path, uint64_t dev, uint64_t ino)
{
	uint64_t d, i;
	if (platform__file_id(path, &d, &i) != 0)
		return -1;
	return d == dev && i == ino;
}

int quarantine__dest(const char *dir, const char *prefix, int64_t ms, char *dest, size_t cap)
{
	char qdir[4200];
	int rc;
	if (snprintf(qdir, sizeof(qdir), "%s/%s", dir, QUARANTINE_DIR) >= (int)sizeof(qdir))
		return -ENAMETOOLONG;
	if ((rc = platform__mkdirs(qdir, 0700)) != 0)
		return rc;
	for (int i = 0; i < 1000; i++, ms++) {
		if (snprintf(dest, cap, "%s/%s-%lld.db", qdir, prefix, (long long)ms) >= (int)cap)
			return -ENAMETOOLONG;
		if (access(dest, F_OK) != 0 && errno == ENOENT)
			return 0;
	}
	return -EEXIST;
}

static void dir_of(const char *path, char *out, size_t cap)
{
	const char *slash = strrchr(path, '/');
	if (!slash)
		snprintf(out, cap, ".");
	else if (slash == path)
		snprintf(out, cap, "/");
	else
		snprintf(out, cap, "%.*s", (int)(slash - path), path);
}

int quarantine__move_sidecars(const char *src, const char *dest)
{
	static const char *const sfx[] = {"-wal", "-shm"};
	char a[4200], b[4200];
	for (size_t i = 0; i < 2; i++) {
		if (snprintf(a, sizeof(a), "%s%s", src, sfx[i]) >= (int)sizeof(a) ||
		    snprintf(b, sizeof(b), "%s%s", dest, sfx[i]) >= (int)sizeof(b))
			return -ENAMETOOLONG;
		if (rename(a, b) != 0 && errno != ENOENT)
			return -errno;
	}
	return 0;
}

int quarantine__move(const char *src, const char *dest, int link_db)
{
	char a[4200], b[4200];
	int rc;
	if (link_db ? link(src, dest) != 0 : rename(src, dest) != 0)
		return -errno;
	if ((rc = quarantine__move_sidecars(src, dest)) != 0)
		return rc;
	dir_of(dest, a, sizeof(a));
	dir_of(src, b, sizeof(b));
	rc = platform__fsync_dir(a);
	int rc2 = platform__fsync_dir(b);
	return rc ? rc : rc2;
}

int quarantine__links(const char *path)
{
	struct stat st;
	if (stat(path, &st) != 0)
		return -errno;
	return st.st_nlink > 1000 ? 1000 : (int)st.st_nlink;
}

int quarantine__find_link(const char *dir, const char *path, char *dest, size_t cap)
{
	char qdir[4200], p[4500];
	struct stat want, st;
	DIR *d;
	struct dirent *e;
	int found = 0;
	if (stat(path, &want) != 0)
		return 0;
	snprintf(qdir, sizeof(qdir), "%s/%s", dir, QUARANTINE_DIR);
	if (!(d = opendir(qdir)))
		return 0;
	while (!found && (e = readdir(d))) {
		size_t n = strlen(e->d_name);
		if (n < 4 || strcmp(e->d_name + n - 3, ".db") != 0)
			continue;
		if (snprintf(p, sizeof(p), "%s/%s", qdir, e->d_name) >= (int)sizeof(p))
			continue;
		if (stat(p, &st) == 0 && st.st_dev == want.st_dev && st.st_ino == want.st_ino &&
		    snprintf(dest, cap, "%s", p) < (int)cap)
			found = 1;
	}
	closedir(d);
	return found;
}

/* ---- erasure ---------------------------------------------------------- */

static int id_char(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || c == '.' ||
	       c == '-' || c == '@' || c == '+';
}

/* Overwrite the whole-token occurrences of id in one file; *changed = 1
 * if any. 0 or -errno. */
static int scrub_file(const char *path, const char *id, int *changed)
{
	size_t len = strlen(id);
	struct stat st;
	int rc = 0;
	*changed = 0;
	int fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	if (fstat(fd, &st) != 0) {
		rc = -errno;
		goto cleanup;
	}
	if (!S_ISREG(st.st_mode) || st.st_size < (off_t)len || len == 0)
		goto cleanup;
	unsigned char *b = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (b == MAP_FAILED) {
		rc = -errno;
		goto cleanup;
	}
	size_t n = (size_t)st.st_size;
	for (unsigned char *p = b; (p = memmem(p, n - (size_t)(p - b), id, len)) != NULL; p += len) {
		int before = p > b && id_char(p[-1]);
		int after = (size_t)(p - b) + len < n && id_char(p[len]);
		if (before || after)
			continue;
		memset(p, '*', len);
		*changed = 1;
	}
	if (*changed && msync(b, n, MS_SYNC) != 0)
		rc = -errno;
	munmap(b, n);
	if (rc == 0 && *changed && fsync(fd) != 0)
		rc = -errno;
cleanup:
	close(fd);
	return rc;
}

int quarantine__erase_member(const char *dir, const char *member_id, int *touched)
{
	char qdir[4200], p[4500];
	DIR *d;
	struct dirent *e;
	int rc = 0, removed = 0;
	*touched = 0;
	if (snprintf(qdir, sizeof(qdir), "%s/%s", dir, QUARANTINE_DIR) >= (int)sizeof(qdir))
		return -ENAMETOOLONG;
	if (!(d = opendir(qdir)))
		return errno == ENOENT ? 0 : -errno;
	while ((e = readdir(d))) {
		int r = 0, changed = 0;
		if (snprintf(p, sizeof(p), "%s/%s", qdir, e->d_name) >= (int)sizeof(p))
			continue;
		if (strncmp(e->d_name, "cache-", 6) == 0) {
			if (unlink(p) == 0)
				removed = changed = 1;
			else if (errno != ENOENT)
				r = -errno;
		} else if (strncmp(e->d_name, "outbox-", 7) == 0) {
			r = scrub_file(p, member_id, &changed);
		}
		*touched += changed;
		if (r && !rc)
			rc = r;
	}
	closedir(d);
	if (removed) {
		int r = platform__fsync_dir(qdir);
		if (r && !rc)
			rc = r;
	}
	return rc;
}
