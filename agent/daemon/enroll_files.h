/* SPDX-License-Identifier: Apache-2.0 */
/*
 * enroll_files: the file side of `scrm-agent enroll` (enroll.c), split out
 * of it: checked directories (wdir) and the reads and writes made through
 * them. Internal to agent/daemon.
 */
#ifndef SCRM_ENROLL_FILES_H
#define SCRM_ENROLL_FILES_H

#include "config.h"

#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

/* Enrolment usually runs as root, in a store directory (2770, no sticky bit)
 * that every member of the store's group can write. So nothing here follows
 * a path an outsider could have bent: every directory under store_dir is
 * opened component by component with openat(O_NOFOLLOW), each must belong
 * to root or the store's owner (the agent's user) and be unwritable by
 * others, files are opened and created relative to that descriptor, and the
 * only things ever chowned (to the store's owner, so the agent can read its
 * key) are the files and directories this run has just created — through
 * their own descriptors, never by name. */
typedef struct wdir {
	int fd;            /* the checked directory */
	int adopt;         /* root writing in a store owned by another user */
	uid_t uid;         /* the store's owner (also trusted), else euid */
	gid_t gid;
	int inside;        /* under store_dir: keys must be 0600 */
	char path[4200];   /* for messages */
} wdir;

/* Open (creating) the directory that holds `file`, checked as above. */
int enroll_files__open(const config *cfg, const char *file, unsigned mode_outside, wdir *w);
void enroll_files__close(wdir *w);
/* Owner and mode of a directory or file enrolment trusts. */
int enroll_files__trusted(const wdir *w, const struct stat *st, int secret, char *why, size_t n);
/* The last component of a path. */
const char *enroll_files__base(const char *path);
/* Write `path`'s last component in w, atomically (details at the
 * definition). 0 or -errno. */
int enroll_files__write(const wdir *w, const char *path, const void *data, size_t n, mode_t mode, int replace);
/* Read `path`'s last component in w without following a link, checked like
 * its directory. SCRM_E_NOT_FOUND if absent. */
int enroll_files__read(const wdir *w, const char *path, int secret, char **buf, size_t *len);

#endif
