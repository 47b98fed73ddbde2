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
