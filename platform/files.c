/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Files: directory creation, bounded whole-file reads and the daemon's
 * single-instance lock.
 */
#include "platform.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

int platform__mkdirs(const char *path, unsigned mode)
{
	char buf[4096];
	size_t len = strlen(path);
	if (len == 0 || len >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, path, len + 1);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, (mode_t)mode) != 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, (mode_t)mode) != 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* Read all of fd (closed on return). */
static int read_fd(int fd, size_t max, char **out, size_t *len)
{
	char *buf = NULL;
	size_t have = 0, cap = 0;
	int rc = 0;

	for (;;) {
		if (have + 4096 + 1 > cap) {
			size_t ncap = cap ? cap * 2 : 8192;
			char *nb = realloc(buf, ncap);
			if (!nb) {
				rc = -ENOMEM;
				goto cleanup;
			}
			buf = nb;
			cap = ncap;
		}
		ssize_t n = read(fd, buf + have, cap - have - 1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			goto cleanup;
		}
		if (n == 0)
			break;
		have += (size_t)n;
		if (have > max) {
			rc = -EFBIG;
			goto cleanup;
		}
	}
	if (!buf && !(buf = malloc(1))) {
		rc = -ENOMEM;
		goto cleanup;
	}
	buf[have] = '\0';
	*out = buf;
	if (len)
		*len = have;
	buf = NULL;
cleanup:
	free(buf);
	close(fd);
	return rc;
}

int platform__read_file(const char *path, size_t max, char **out, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	return read_fd(fd, max, out, len);
}

int platform__check_fd(int fd, int want_dir, int secret, char *why, size_t n)
{
	struct stat st;
	uid_t me = geteuid();
	if (fstat(fd, &st) != 0)
		return -errno;
	if (want_dir && !S_ISDIR(st.st_mode)) {
		snprintf(why, n, "not a directory");
		return -ENOTDIR;
	}
	if (!want_dir && !S_ISREG(st.st_mode)) {
		snprintf(why, n, "not a regular file");
		return -EPERM;
	}
	if (st.st_uid != me && st.st_uid != 0) {
		if (me == 0)
			snprintf(why, n, "owner uid %lu, expected 0", (unsigned long)st.st_uid);
		else
			snprintf(why, n, "owner uid %lu, expected %lu or 0", (unsigned long)st.st_uid,
				 (unsigned long)me);
		return -EPERM;
	}
	if (!want_dir && secret && (st.st_mode & 077)) {
		snprintf(why, n, "mode 0%03o, expected no group or other access (0600)", (unsigned)(st.st_mode & 0777));
		return -EPERM;
	}
	if (st.st_mode & 022) {
		snprintf(why, n, "mode 0%03o, expected no group or other write (0%s)", (unsigned)(st.st_mode & 0777),
			 want_dir ? "700" : "600 or 0644");
		return -EPERM;
	}
	return 0;
}

/* errno of an O_NOFOLLOW open, as the reason a user can act on. */
static int open_refused(int e, char *why, size_t n)
{
	/* O_NOFOLLOW on a link: ELOOP; with O_DIRECTORY some kernels say
	 * ENOTDIR for a link to a file. */
	if (e == ELOOP || e == EMLINK)
		snprintf(why, n, "a symbolic link");
	else if (e == ENOTDIR)
		snprintf(why, n, "not a directory (or a symbolic link)");
	else
		snprintf(why, n, "%s", strerror(e));
	return -e;
}

int platform__open_trusted_dir(const char *path, int create, char *why, size_t n)
{
	int fd, rc;
	snprintf(why, n, "?");
	fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT && create) {
		if (mkdir(path, 0700) != 0 && errno != EEXIST)
			return open_refused(errno, why, n);
		fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	}
	if (fd < 0)
		return open_refused(errno, why, n);
	if ((rc = platform__check_fd(fd, 1, 0, why, n)) != 0) {
		close(fd);
		return rc;
	}
	return fd;
}

int platform__openat_trusted(int dirfd, const char *name, int flags, int secret, char *why, size_t n)
{
	int fd, rc;
	snprintf(why, n, "?");
	/* O_NONBLOCK: a FIFO planted in the file's place must not hang the
	 * open (it is refused as not a regular file right after). */
	fd = openat(dirfd, name, flags | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0600);
	if (fd < 0)
		return open_refused(errno, why, n);
	if ((rc = platform__check_fd(fd, 0, secret, why, n)) != 0) {
		close(fd);
		return rc;
	}
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		(void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
	return fd;
}

int platform__read_trusted(const char *path, size_t max, int secret, char **out, size_t *len, char *why, size_t n)
{
	char dir[4096];
	const char *slash = strrchr(path, '/'), *name = slash ? slash + 1 : path;
	size_t dl = slash ? (size_t)(slash - path) : 0;
	int dfd, fd;
	snprintf(why, n, "?");
	if (dl >= sizeof(dir))
		return -ENAMETOOLONG;
	if (!slash)
		snprintf(dir, sizeof(dir), ".");
	else if (dl == 0)
		snprintf(dir, sizeof(dir), "/");
	else {
		memcpy(dir, path, dl);
		dir[dl] = '\0';
	}
	if ((dfd = platform__open_trusted_dir(dir, 0, why, n)) < 0) {
		if (dfd != -ENOENT) {
			/* Name the directory: that is what to fix. */
			char w[200];
			snprintf(w, sizeof(w), "%s", why);
			snprintf(why, n, "directory %s: %s", dir, w);
		}
		return dfd;
	}
	fd = platform__openat_trusted(dfd, name, O_RDONLY, secret, why, n);
	close(dfd);
	if (fd < 0)
		return fd;
	return read_fd(fd, max, out, len);
}

int platform__lock_file(const char *path)
{
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	return fd;
}

static int write_all(int fd, const void *data, size_t len)
{
	for (size_t off = 0; off < len;) {
		ssize_t n = write(fd, (const char *)data + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		off += (size_t)n;
	}
	return 0;
}

int platform__write_file_ex(const char *path, const void *data, size_t len, unsigned mode, int replace)
{
	char tmp[4200], dir[4096];
	int fd, rc = 0;
	const char *slash = strrchr(path, '/');
	if (snprintf(tmp, sizeof(tmp), "%s.tmp-%ld", path, (long)getpid()) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	(void)unlink(tmp); /* left by a crash of an earlier run with this pid */
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, (mode_t)mode)) < 0)
		return -errno;
	/* The mode exactly, whatever the umask. */
	if (fchmod(fd, (mode_t)mode) != 0)
		rc = -errno;
	if (rc == 0)
		rc = write_all(fd, data, len);
	if (rc == 0 && fsync(fd) != 0)
		rc = -errno;
	if (close(fd) != 0 && rc == 0)
		rc = -errno;
	/* link() refuses to replace a file someone created meanwhile. */
	if (rc == 0 && (replace ? rename(tmp, path) : link(tmp, path)) != 0)
		rc = -errno;
	if (rc != 0 || !replace)
		unlink(tmp);
	if (rc != 0)
		return rc;
	/* The rename itself must survive a power cut. */
	if (slash) {
		size_t n = (size_t)(slash - path);
		if (n == 0)
			n = 1;
		if (n >= sizeof(dir))
			return 0;
		memcpy(dir, path, n);
		dir[n] = '\0';
	} else {
		dir[0] = '.';
		dir[1] = '\0';
	}
	if ((fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
		if (fsync(fd) != 0)
			rc = -errno;
		close(fd);
	}
	return rc;
}

int platform__write_file_atomic(const char *path, const void *data, size_t len, unsigned mode)
{
	return platform__write_file_ex(path, data, len, mode, 1);
}

int platform__disk_space(const char *path, int64_t *avail, int64_t *total)
{
	struct statvfs v;
	if (statvfs(path, &v) != 0)
		return -errno;
	*avail = (int64_t)v.f_bavail * (int64_t)v.f_frsize;
	*total = (int64_t)v.f_blocks * (int64_t)v.f_frsize;
	return 0;
}

int64_t platform__rss_bytes(void)
{
	/* statm: size resident ... in pages */
	char buf[128];
	long long size = 0, resident = 0;
	int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	if (sscanf(buf, "%lld %lld", &size, &resident) != 2)
		return 0;
	long page = sysconf(_SC_PAGESIZE);
	return (int64_t)resident * (page > 0 ? page : 4096);
}

int platform__lock_open(const char *path)
{
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0660);
	if (fd < 0)
		return -errno;
	/* POS processes of the store's group take it too (shared): 0660
	 * whatever the umask; fails harmlessly on a file someone else owns. */
	(void)fchmod(fd, 0660);
	return fd;
}

int platform__precreate(const char *path, unsigned mode)
{
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, (mode_t)mode);
	if (fd < 0)
		return errno == EEXIST ? 0 : -errno;
	int rc = fchmod(fd, (mode_t)mode) == 0 ? 0 : -errno;
	close(fd);
	return rc;
}

int64_t *platform__shared_word(const char *path, unsigned mode)
{
	if (platform__precreate(path, mode) != 0)
		return NULL;
	/* Never through a link someone else planted in a shared directory:
	 * the file must be a plain file of its own. */
	int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return NULL;
	struct stat st;
	const long page = sysconf(_SC_PAGESIZE) > 0 ? sysconf(_SC_PAGESIZE) : 4096;
	void *m = MAP_FAILED;
	/* A file shorter than the mapping would SIGBUS on access. */
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink == 1 &&
	    (st.st_size >= page || ftruncate(fd, page) == 0))
		m = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	return m == MAP_FAILED ? NULL : (int64_t *)m;
}

void platform__shared_word_close(int64_t *word)
{
	if (word)
		munmap(word, (size_t)(sysconf(_SC_PAGESIZE) > 0 ? sysconf(_SC_PAGESIZE) : 4096));
}

int platform__lock_fd(int fd, int how)
{
	int op = how == 2 ? LOCK_EX : how == 1 ? LOCK_SH : LOCK_UN;
	while (flock(fd, op) != 0)
		if (errno != EINTR)
			return -errno;
	return 0;
}

int platform__file_id(const char *path, uint64_t *dev, uint64_t *ino)
{
	struct stat st;
	if (stat(path, &st) != 0)
		return -errno;
	*dev = (uint64_t)st.st_dev;
	*ino = (uint64_t)st.st_ino;
	return 0;
}

int platform__reserve_file(const char *path, int64_t bytes)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0660);
	if (fd < 0)
		return -errno;
	/* Blocks really taken now, so releasing them later frees that much
	 * (a sparse file would free nothing). */
	int e = posix_fallocate(fd, 0, (off_t)bytes);
	if (e == EOPNOTSUPP || e == EINVAL) {
		static char zero[65536];
		e = 0;
		for (int64_t done = 0; done < bytes && !e;) {
			size_t n = bytes - done < (int64_t)sizeof(zero) ? (size_t)(bytes - done) : sizeof(zero);
			ssize_t w = pwrite(fd, zero, n, (off_t)done);
			if (w < 0)
				e = errno;
			else
				done += w;
		}
	}
	if (!e && fsync(fd) != 0)
		e = errno;
	close(fd);
	if (e) {
		unlink(path);
		return -e;
	}
	return 0;
}

int platform__file_size(const char *path, int64_t *size)
{
	struct stat st;
	if (stat(path, &st) != 0)
		return -errno;
	*size = (int64_t)st.st_size;
	return 0;
}

int platform__fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int rc = fsync(fd) != 0 ? -errno : 0;
	close(fd);
	return rc;
}
