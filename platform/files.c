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
#include <sys/stat.h>
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

int platform__read_file(const char *path, size_t max, char **out, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	char *buf = NULL;
	size_t have = 0, cap = 0;
	int rc = 0;

	if (fd < 0)
		return -errno;
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
