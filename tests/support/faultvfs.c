/* SPDX-License-Identifier: Apache-2.0 */
/*
 * faultvfs: fault injection and power cuts under SQLite (see faultvfs.h).
 *
 * A file handle is this shim's header followed by the wrapped VFS's own
 * handle. Files with a name are tracked by inode in `nodes`: the durable
 * image, and the writes and truncations made since the last sync (`ops`).
 * A node lives while a handle has it open or while it has unsynced ops (its
 * own fd keeps the inode, so a later file cannot take its number); a power
 * cut rewrites each node through that fd.
 */
#include "faultvfs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TEAR_UNIT 512

typedef struct fv_op {
	int truncate;       /* 1: truncate to `off`; 0: write */
	int64_t off;
	size_t len;
	size_t data;        /* writes: where the bytes are in the node's `unsynced` */
} fv_op;

typedef struct node {
	struct node *next;
	dev_t dev;
	ino_t ino;
	int fd;       /* ours, on the same inode; -1 if it could not be opened */
	int handles;  /* open sqlite3_file handles */
	int deleted;  /* xDelete'd: nothing to restore */
	unsigned char *durable;
	size_t durable_len, durable_cap;
	fv_op *ops;
	size_t n_ops, cap_ops;
	/* the bytes of the unsynced writes, one after the other (kept
	 * allocated across syncs: no allocation per write) */
	unsigned char *unsynced;
	size_t unsynced_len, unsynced_cap;
	char path[512]; /* the name it was first opened by, for messages */
} node;

typedef struct fv_file {
	sqlite3_file base;
	node *node;         /* NULL: a temp file */
	char path[512];
	sqlite3_file *real; /* the wrapped VFS's handle, right after this one */
} fv_file;

#define REAL_OFFSET ((sizeof(fv_file) + 15) & ~(size_t)15)

static struct {
	pthread_mutex_t mu;
	int installed;
	sqlite3_vfs vfs;
	sqlite3_vfs *real;
	node *nodes;
	faultvfs_counts counts;
	/* armed fault */
	unsigned mask;
	int64_t nth, seen;
	faultvfs_fault fault;
	int persistent;
	int die_after_fault, die_pending; /* faultvfs_die_after_fault */
	int powered_off;
	int real_sync;
	unsigned sync_delay_us;
	char quota_dir[512];
	int64_t quota;
	char last_fault[700];
	/* faultvfs_on_power_cut */
	int cut_apply;
	void (*cut_fn)(const char *what, void *ctx);
	void *cut_ctx;
	faultvfs_cut_mode cut_mode;
	uint32_t cut_seed;
} g = {.mu = PTHREAD_MUTEX_INITIALIZER, .quota = -1};

static const sqlite3_io_methods fv_io;
static int apply_locked(faultvfs_cut_mode mode, uint32_t seed);

/* ---- images ------------------------------------------------------------ */

static int reserve(unsigned char **p, size_t *cap, size_t want)
{
	if (want <= *cap)
		return 0;
	size_t nc = *cap ? *cap : 4096;
	while (nc < want)
		nc *= 2;
	unsigned char *np = realloc(*p, nc);
	if (!np)
		return -1;
	*p = np;
	*cap = nc;
	return 0;
}

/* Apply one op (its bytes at `data`) to an image of *len bytes; writes
 * past the end zero-fill the gap. */
static int apply_op(unsigned char **img, size_t *len, size_t *cap, const fv_op *o, const unsigned char *data,
		    size_t take)
{
	if (o->truncate) {
		size_t n = (size_t)o->off;
		if (n > *len) {
			if (reserve(img, cap, n))
				return -1;
			memset(*img + *len, 0, n - *len);
		}
		*len = n;
		return 0;
	}
	size_t end = (size_t)o->off + take;
	if (end > *len) {
		if (reserve(img, cap, end))
			return -1;
		if ((size_t)o->off > *len)
			memset(*img + *len, 0, (size_t)o->off - *len);
	}
	if (take)
		memcpy(*img + o->off, data + o->data, take);
	if (end > *len)
		*len = end;
	return 0;
}

static void drop_ops(node *n)
{
	n->n_ops = 0;
	n->unsynced_len = 0;
}

static void node_free(node *n)
{
	if (n->fd >= 0)
		close(n->fd);
	free(n->ops);
	free(n->unsynced);
	free(n->durable);
	free(n);
}

static void node_unlink(node *n)
{
	for (node **pp = &g.nodes; *pp; pp = &(*pp)->next)
		if (*pp == n) {
			*pp = n->next;
			return;
		}
}

/* Drop a node nobody needs any more: no handle open, and nothing unsynced
 * to undo (or deleted). */
static void node_maybe_drop(node *n)
{
	if (n->handles == 0 && (n->deleted || n->n_ops == 0)) {
		node_unlink(n);
		node_free(n);
	}
}

static node *node_find(dev_t dev, ino_t ino)
{
	for (node *n = g.nodes; n; n = n->next)
		if (!n->deleted && n->dev == dev && n->ino == ino)
			return n;
	return NULL;
}

/* The node of the file now at `path`, made on its first open: whatever is
 * on disk then is durable. NULL if it cannot be tracked (no memory). */
static node *node_open(const char *path)
{
	struct stat st;
	if (stat(path, &st) != 0)
		return NULL;
	node *n = node_find(st.st_dev, st.st_ino);
	if (n) {
		n->handles++;
		return n;
	}
	if (!(n = calloc(1, sizeof(*n))))
		return NULL;
	n->dev = st.st_dev;
	n->ino = st.st_ino;
	n->handles = 1;
	snprintf(n->path, sizeof(n->path), "%s", path);
	n->fd = open(path, O_RDWR | O_CLOEXEC);
	if (n->fd < 0)
		n->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (n->fd >= 0 && fstat(n->fd, &st) == 0 && st.st_size > 0) {
		size_t want = (size_t)st.st_size;
		if (reserve(&n->durable, &n->durable_cap, want) == 0) {
			ssize_t got = pread(n->fd, n->durable, want, 0);
			n->durable_len = got > 0 ? (size_t)got : 0;
		}
	}
	n->next = g.nodes;
	g.nodes = n;
	return n;
}

static int node_add_op(node *n, int truncate, int64_t off, const void *data, size_t len)
{
	if (n->n_ops == n->cap_ops) {
		size_t nc = n->cap_ops ? n->cap_ops * 2 : 32;
		fv_op *no = realloc(n->ops, nc * sizeof(*no));
		if (!no)
			return -1;
		n->ops = no;
		n->cap_ops = nc;
	}
	fv_op *o = &n->ops[n->n_ops];
	memset(o, 0, sizeof(*o));
	o->truncate = truncate;
	o->off = off;
	o->len = len;
	if (!truncate && len) {
		if (reserve(&n->unsynced, &n->unsynced_cap, n->unsynced_len + len))
			return -1;
		o->data = n->unsynced_len;
		memcpy(n->unsynced + n->unsynced_len, data, len);
		n->unsynced_len += len;
	}
	n->n_ops++;
	return 0;
}

/* A successful sync: everything written so far is durable. */
static void node_synced(node *n)
{
	for (size_t i = 0; i < n->n_ops; i++)
		apply_op(&n->durable, &n->durable_len, &n->durable_cap, &n->ops[i], n->unsynced, n->ops[i].len);
	drop_ops(n);
}

/* ---- faults ------------------------------------------------------------ */

static const char *class_name(unsigned c)
{
	switch (c) {
	case FAULTVFS_READ:
		return "xRead";
	case FAULTVFS_WRITE:
		return "xWrite";
	case FAULTVFS_TRUNCATE:
		return "xTruncate";
	default:
		return "xSync";
	}
}

static int error_code(unsigned c, faultvfs_fault f)
{
	if (f == FAULTVFS_ENOSPC && (c == FAULTVFS_WRITE || c == FAULTVFS_TRUNCATE))
		return SQLITE_FULL;
	switch (c) {
	case FAULTVFS_READ:
		return SQLITE_IOERR_READ;
	case FAULTVFS_WRITE:
		return SQLITE_IOERR_WRITE;
	case FAULTVFS_TRUNCATE:
		return SQLITE_IOERR_TRUNCATE;
	default:
		return SQLITE_IOERR_FSYNC;
	}
}

static int64_t class_count(unsigned c)
{
	switch (c) {
	case FAULTVFS_READ:
		return g.counts.reads;
	case FAULTVFS_WRITE:
		return g.counts.writes;
	case FAULTVFS_TRUNCATE:
		return g.counts.truncates;
	default:
		return g.counts.syncs;
	}
}

static void note_fault(unsigned c, const char *path, int64_t off, size_t len, int rc, const char *why)
{
	g.counts.faults++;
	if (g.last_fault[0])
		return;
	snprintf(g.last_fault, sizeof(g.last_fault), "%s #%lld (write-class #%lld) %s off %lld len %zu: %s (%s)",
		 class_name(c), (long long)class_count(c), (long long)g.counts.write_class, path ? path : "(temp)",
		 (long long)off, len, sqlite3_errstr(rc), why);
}

/* The power goes off (or the process dies): every later call fails; with
 * faultvfs_on_power_cut, the files become what survives at once and the
 * hook runs. Mutex held. */
static void cut_locked(void)
{
	g.powered_off = 1;
	g.counts.powered_off = 1;
	if (g.cut_apply) {
		apply_locked(g.cut_mode, g.cut_seed);
		if (g.cut_fn)
			g.cut_fn(g.last_fault, g.cut_ctx);
	}
}

/* Count a call of class c; the error it must fail with, or 0. Mutex held. */
static int account(unsigned c, const char *path, int64_t off, size_t len)
{
	switch (c) {
	case FAULTVFS_READ:
		g.counts.reads++;
		break;
	case FAULTVFS_WRITE:
		g.counts.writes++;
		break;
	case FAULTVFS_TRUNCATE:
		g.counts.truncates++;
		break;
	default:
		g.counts.syncs++;
		break;
	}
	if (c != FAULTVFS_READ)
		g.counts.write_class++;
	if (g.powered_off) {
		int rc = error_code(c, FAULTVFS_EIO);
		note_fault(c, path, off, len, rc, "power is off");
		return rc;
	}
	if (g.die_pending && c != FAULTVFS_READ) {
		/* faultvfs_die_after_fault: the process carried on after the
		 * fault up to its next write; it dies there */
		g.die_pending = 0;
		int rc = error_code(c, FAULTVFS_EIO);
		cut_locked();
		g.counts.faults++;
		return rc;
	}
	if (g.fault == FAULTVFS_NONE || !(g.mask & c))
		return 0;
	g.seen++;
	if (g.seen < g.nth || (g.seen > g.nth && !g.persistent))
		return 0;
	int rc = error_code(c, g.fault);
	if (g.fault == FAULTVFS_POWER_CUT) {
		note_fault(c, path, off, len, rc, "power cut");
		cut_locked();
	} else {
		note_fault(c, path, off, len, rc, g.fault == FAULTVFS_EIO ? "EIO injected" : "ENOSPC injected");
		if (g.die_after_fault)
			g.die_pending = 1;
	}
	return rc;
}

/* Bytes used by the files under dir, recursively (lstat sizes). */
static int64_t dir_bytes(const char *dir, int depth)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int64_t sum = 0;
	char p[1024];
	if (!d)
		return 0;
	while ((e = readdir(d))) {
		struct stat st;
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (snprintf(p, sizeof(p), "%s/%s", dir, e->d_name) >= (int)sizeof(p) || lstat(p, &st) != 0)
			continue;
		if (S_ISDIR(st.st_mode)) {
			if (depth < 8)
				sum += dir_bytes(p, depth + 1);
		} else if (S_ISREG(st.st_mode)) {
			sum += (int64_t)st.st_size;
		}
	}
	closedir(d);
	return sum;
}

/* Would growing this file to `end` bytes break the quota? Mutex held. */
static int over_quota(fv_file *f, int64_t end)
{
	size_t n = strlen(g.quota_dir);
	sqlite3_int64 size = 0;
	if (g.quota < 0 || !f->node || !n || strncmp(f->path, g.quota_dir, n) != 0 || f->path[n] != '/')
		return 0;
	if (f->real->pMethods->xFileSize(f->real, &size) != SQLITE_OK || end <= size)
		return 0;
	return dir_bytes(g.quota_dir, 0) + (end - size) > g.quota;
}

/* ---- io methods ---------------------------------------------------------- */

static int fv_close(sqlite3_file *file)
{
	fv_file *f = (fv_file *)file;
	int rc = f->real->pMethods ? f->real->pMethods->xClose(f->real) : SQLITE_OK;
	pthread_mutex_lock(&g.mu);
	if (f->node) {
		f->node->handles--;
		node_maybe_drop(f->node);
		f->node = NULL;
	}
	pthread_mutex_unlock(&g.mu);
	return rc;
}

static int fv_read(sqlite3_file *file, void *buf, int amt, sqlite3_int64 off)
{
	fv_file *f = (fv_file *)file;
	pthread_mutex_lock(&g.mu);
	int rc = account(FAULTVFS_READ, f->path, off, (size_t)amt);
	if (rc == 0)
		rc = f->real->pMethods->xRead(f->real, buf, amt, off);
	pthread_mutex_unlock(&g.mu);
	return rc;
}

/* A write (amt bytes of buf at off) or a truncate (to off) of f: the fault
 * plan and the disk quota first, then the real call, then the power-cut
 * journal of what the file would lose unsynced. */
static int fv_change(fv_file *f, int truncate, const void *buf, int amt, sqlite3_int64 off)
{
	unsigned op = truncate ? FAULTVFS_TRUNCATE : FAULTVFS_WRITE;
	size_t n = truncate ? 0 : (size_t)amt;
	pthread_mutex_lock(&g.mu);
	int rc = account(op, f->path, off, n);
	if (rc == 0 && over_quota(f, off + (sqlite3_int64)n)) {
		rc = SQLITE_FULL;
		note_fault(op, f->path, off, n, rc, "over the disk quota");
	}
	if (rc == 0)
		rc = truncate ? f->real->pMethods->xTruncate(f->real, off) : f->real->pMethods->xWrite(f->real, buf, amt, off);
	if (rc == SQLITE_OK && f->node && node_add_op(f->node, truncate, off, buf, n))
		rc = SQLITE_IOERR_NOMEM;
	pthread_mutex_unlock(&g.mu);
	return rc;
}

static int fv_write(sqlite3_file *file, const void *buf, int amt, sqlite3_int64 off)
{
	return fv_change((fv_file *)file, 0, buf, amt, off);
}

static int fv_truncate(sqlite3_file *file, sqlite3_int64 size)
{
	return fv_change((fv_file *)file, 1, NULL, 0, size);
}

static int fv_sync(sqlite3_file *file, int flags)
{
	fv_file *f = (fv_file *)file;
	pthread_mutex_lock(&g.mu);
	int rc = account(FAULTVFS_SYNC, f->path, 0, 0);
	unsigned delay = g.sync_delay_us;
	if (rc == 0 && delay) {
		/* a disk's fsync takes time: let other threads queue meanwhile */
		pthread_mutex_unlock(&g.mu);
		usleep(delay);
		pthread_mutex_lock(&g.mu);
		if (g.powered_off) /* cut meanwhile: this sync never finished */
			rc = SQLITE_IOERR_FSYNC;
	}
	if (rc == 0 && g.real_sync)
		rc = f->real->pMethods->xSync(f->real, flags);
	if (rc == SQLITE_OK && f->node)
		node_synced(f->node);
	pthread_mutex_unlock(&g.mu);
	return rc;
}

static int fv_file_size(sqlite3_file *file, sqlite3_int64 *size)
{
	fv_file *f = (fv_file *)file;
	pthread_mutex_lock(&g.mu);
	int off = g.powered_off;
	pthread_mutex_unlock(&g.mu);
	if (off)
		return SQLITE_IOERR_FSTAT;
	return f->real->pMethods->xFileSize(f->real, size);
}

/* Locks, file controls and the shared memory pass through, power or not:
 * a dead process's locks go with it, and the -shm is memory. */
static int fv_lock(sqlite3_file *file, int lock)
{
	fv_file *f = (fv_file *)file;
	return f->real->pMethods->xLock(f->real, lock);
}

static int fv_unlock(sqlite3_file *file, int lock)
{
	fv_file *f = (fv_file *)file;
	return f->real->pMethods->xUnlock(f->real, lock);
}

static int fv_check_reserved(sqlite3_file *file, int *out)
{
	fv_file *f = (fv_file *)file;
	return f->real->pMethods->xCheckReservedLock(f->real, out);
}

static int fv_file_control(sqlite3_file *file, int op, void *arg)
{
	fv_file *f = (fv_file *)file;
	/* Memory-mapped I/O would bypass xRead: keep it off. */
	if (op == SQLITE_FCNTL_MMAP_SIZE) {
		*(sqlite3_int64 *)arg = 0;
		return SQLITE_OK;
	}
	if (op == SQLITE_FCNTL_VFSNAME) {
		*(char **)arg = sqlite3_mprintf("%s", FAULTVFS_NAME);
		return SQLITE_OK;
	}
	return f->real->pMethods->xFileControl(f->real, op, arg);
}

static int fv_sector_size(sqlite3_file *file)
{
	fv_file *f = (fv_file *)file;
	return f->real->pMethods->xSectorSize(f->real);
}

static int fv_device_characteristics(sqlite3_file *file)
{
	fv_file *f = (fv_file *)file;
	return f->real->pMethods->xDeviceCharacteristics(f->real);
}

static int fv_shm_map(sqlite3_file *file, int pg, int pgsz, int extend, void volatile **pp)
{
	fv_file *f = (fv_file *)file;
	return f->real->pMethods->xShmMap(f->real, pg, pgsz, extend, pp);
}

static int fv_shm_lock(sqlite3_file *file, int offset, int n, int flags)
{
	fv_file *f = (fv_file *)file;
	return f->real->pMethods->xShmLock(f->real, offset, n, flags);
}

static void fv_shm_barrier(sqlite3_file *file)
{
	fv_file *f = (fv_file *)file;
	f->real->pMethods->xShmBarrier(f->real);
}

static int fv_shm_unmap(sqlite3_file *file, int del)
{
	fv_file *f = (fv_file *)file;
	return f->real->pMethods->xShmUnmap(f->real, del);
}

static const sqlite3_io_methods fv_io = {
	.iVersion = 2, /* no xFetch: every page read goes through xRead */
	.xClose = fv_close,
	.xRead = fv_read,
	.xWrite = fv_write,
	.xTruncate = fv_truncate,
	.xSync = fv_sync,
	.xFileSize = fv_file_size,
	.xLock = fv_lock,
	.xUnlock = fv_unlock,
	.xCheckReservedLock = fv_check_reserved,
	.xFileControl = fv_file_control,
	.xSectorSize = fv_sector_size,
	.xDeviceCharacteristics = fv_device_characteristics,
	.xShmMap = fv_shm_map,
	.xShmLock = fv_shm_lock,
	.xShmBarrier = fv_shm_barrier,
	.xShmUnmap = fv_shm_unmap,
};

/* ---- vfs methods --------------------------------------------------------- */

static int fv_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags, int *out_flags)
{
	(void)vfs;
	fv_file *f = (fv_file *)file;
	memset(f, 0, sizeof(*f));
	f->real = (sqlite3_file *)((char *)file + REAL_OFFSET);
	memset(f->real, 0, (size_t)g.real->szOsFile);
	pthread_mutex_lock(&g.mu);
	int off = g.powered_off;
	pthread_mutex_unlock(&g.mu);
	if (off)
		return SQLITE_CANTOPEN;
	int rc = g.real->xOpen(g.real, name, f->real, flags, out_flags);
	if (rc != SQLITE_OK) {
		if (f->real->pMethods)
			f->real->pMethods->xClose(f->real);
		f->real->pMethods = NULL;
		return rc;
	}
	if (name) {
		snprintf(f->path, sizeof(f->path), "%s", name);
		pthread_mutex_lock(&g.mu);
		f->node = node_open(name);
		pthread_mutex_unlock(&g.mu);
	}
	f->base.pMethods = &fv_io;
	return SQLITE_OK;
}

static int fv_delete(sqlite3_vfs *vfs, const char *name, int dir_sync)
{
	(void)vfs;
	struct stat st;
	pthread_mutex_lock(&g.mu);
	if (g.powered_off) {
		pthread_mutex_unlock(&g.mu);
		return SQLITE_IOERR_DELETE;
	}
	if (stat(name, &st) == 0) {
		node *n = node_find(st.st_dev, st.st_ino);
		if (n) {
			n->deleted = 1;
			node_maybe_drop(n);
		}
	}
	pthread_mutex_unlock(&g.mu);
	return g.real->xDelete(g.real, name, dir_sync);
}

static int fv_access(sqlite3_vfs *vfs, const char *name, int flags, int *out)
{
	(void)vfs;
	return g.real->xAccess(g.real, name, flags, out);
}

static int fv_full_pathname(sqlite3_vfs *vfs, const char *name, int n, char *out)
{
	(void)vfs;
	return g.real->xFullPathname(g.real, name, n, out);
}

static void *fv_dlopen(sqlite3_vfs *vfs, const char *name)
{
	(void)vfs;
	return g.real->xDlOpen(g.real, name);
}

static void fv_dlerror(sqlite3_vfs *vfs, int n, char *msg)
{
	(void)vfs;
	g.real->xDlError(g.real, n, msg);
}

static void (*fv_dlsym(sqlite3_vfs *vfs, void *h, const char *sym))(void)
{
	(void)vfs;
	return g.real->xDlSym(g.real, h, sym);
}

static void fv_dlclose(sqlite3_vfs *vfs, void *h)
{
	(void)vfs;
	g.real->xDlClose(g.real, h);
}

static int fv_randomness(sqlite3_vfs *vfs, int n, char *out)
{
	(void)vfs;
	return g.real->xRandomness(g.real, n, out);
}

static int fv_sleep(sqlite3_vfs *vfs, int us)
{
	(void)vfs;
	return g.real->xSleep(g.real, us);
}

static int fv_current_time(sqlite3_vfs *vfs, double *out)
{
	(void)vfs;
	return g.real->xCurrentTime(g.real, out);
}

static int fv_last_error(sqlite3_vfs *vfs, int n, char *out)
{
	(void)vfs;
	return g.real->xGetLastError ? g.real->xGetLastError(g.real, n, out) : 0;
}

static int fv_current_time64(sqlite3_vfs *vfs, sqlite3_int64 *out)
{
	(void)vfs;
	return g.real->xCurrentTimeInt64(g.real, out);
}

static int fv_set_syscall(sqlite3_vfs *vfs, const char *name, sqlite3_syscall_ptr p)
{
	(void)vfs;
	return g.real->xSetSystemCall(g.real, name, p);
}

static sqlite3_syscall_ptr fv_get_syscall(sqlite3_vfs *vfs, const char *name)
{
	(void)vfs;
	return g.real->xGetSystemCall(g.real, name);
}

static const char *fv_next_syscall(sqlite3_vfs *vfs, const char *name)
{
	(void)vfs;
	return g.real->xNextSystemCall(g.real, name);
}

/* ---- public -------------------------------------------------------------- */

int faultvfs_install(int make_default)
{
	int rc = sqlite3_initialize();
	if (rc != SQLITE_OK)
		return rc;
	pthread_mutex_lock(&g.mu);
	if (!g.installed) {
		sqlite3_vfs *real = sqlite3_vfs_find(NULL);
		if (!real || real->iVersion < 3) {
			pthread_mutex_unlock(&g.mu);
			return SQLITE_ERROR;
		}
		g.real = real;
		memset(&g.vfs, 0, sizeof(g.vfs));
		g.vfs.iVersion = 3;
		g.vfs.szOsFile = (int)(REAL_OFFSET + (size_t)real->szOsFile);
		g.vfs.mxPathname = real->mxPathname;
		g.vfs.zName = FAULTVFS_NAME;
		g.vfs.xOpen = fv_open;
		g.vfs.xDelete = fv_delete;
		g.vfs.xAccess = fv_access;
		g.vfs.xFullPathname = fv_full_pathname;
		g.vfs.xDlOpen = fv_dlopen;
		g.vfs.xDlError = fv_dlerror;
		g.vfs.xDlSym = fv_dlsym;
		g.vfs.xDlClose = fv_dlclose;
		g.vfs.xRandomness = fv_randomness;
		g.vfs.xSleep = fv_sleep;
		g.vfs.xCurrentTime = fv_current_time;
		g.vfs.xGetLastError = fv_last_error;
		g.vfs.xCurrentTimeInt64 = fv_current_time64;
		g.vfs.xSetSystemCall = fv_set_syscall;
		g.vfs.xGetSystemCall = fv_get_syscall;
		g.vfs.xNextSystemCall = fv_next_syscall;
		g.installed = 1;
	}
	pthread_mutex_unlock(&g.mu);
	/* Registering an already registered VFS only moves it. */
	rc = sqlite3_vfs_register(&g.vfs, make_default);
	if (rc == SQLITE_OK && !make_default)
		rc = sqlite3_vfs_register(g.real, 1);
	return rc;
}

void faultvfs_set_default(int on)
{
	if (g.installed)
		sqlite3_vfs_register(on ? &g.vfs : g.real, 1);
}

void faultvfs_reset(void)
{
	pthread_mutex_lock(&g.mu);
	while (g.nodes) {
		node *n = g.nodes;
		g.nodes = n->next;
		node_free(n);
	}
	memset(&g.counts, 0, sizeof(g.counts));
	g.mask = 0;
	g.nth = g.seen = 0;
	g.fault = FAULTVFS_NONE;
	g.persistent = 0;
	g.powered_off = 0;
	g.die_after_fault = g.die_pending = 0;
	g.quota_dir[0] = '\0';
	g.quota = -1;
	g.sync_delay_us = 0;
	g.last_fault[0] = '\0';
	g.cut_apply = 0;
	g.cut_fn = NULL;
	g.cut_ctx = NULL;
	pthread_mutex_unlock(&g.mu);
}

void faultvfs_arm(unsigned calls, int64_t nth, faultvfs_fault fault, int persistent)
{
	pthread_mutex_lock(&g.mu);
	g.mask = calls;
	g.nth = nth;
	g.seen = 0;
	g.fault = nth > 0 ? fault : FAULTVFS_NONE;
	g.persistent = persistent || fault == FAULTVFS_POWER_CUT;
	pthread_mutex_unlock(&g.mu);
}

void faultvfs_disarm(void)
{
	pthread_mutex_lock(&g.mu);
	g.fault = FAULTVFS_NONE;
	g.mask = 0;
	pthread_mutex_unlock(&g.mu);
}

void faultvfs_power_cut(void)
{
	pthread_mutex_lock(&g.mu);
	if (!g.last_fault[0])
		snprintf(g.last_fault, sizeof(g.last_fault), "power cut after write-class call #%lld",
			 (long long)g.counts.write_class);
	cut_locked();
	pthread_mutex_unlock(&g.mu);
}

void faultvfs_die_after_fault(int on)
{
	pthread_mutex_lock(&g.mu);
	g.die_after_fault = on;
	g.die_pending = 0;
	pthread_mutex_unlock(&g.mu);
}

int faultvfs_power_is_off(void)
{
	pthread_mutex_lock(&g.mu);
	int off = g.powered_off;
	pthread_mutex_unlock(&g.mu);
	return off;
}

void faultvfs_set_quota(const char *dir, int64_t max_bytes)
{
	pthread_mutex_lock(&g.mu);
	if (!dir || max_bytes < 0) {
		g.quota_dir[0] = '\0';
		g.quota = -1;
	} else {
		snprintf(g.quota_dir, sizeof(g.quota_dir), "%s", dir);
		size_t n = strlen(g.quota_dir);
		while (n > 1 && g.quota_dir[n - 1] == '/')
			g.quota_dir[--n] = '\0';
		g.quota = max_bytes;
	}
	pthread_mutex_unlock(&g.mu);
}

void faultvfs_real_sync(int on)
{
	pthread_mutex_lock(&g.mu);
	g.real_sync = on;
	pthread_mutex_unlock(&g.mu);
}

void faultvfs_sync_delay(unsigned us)
{
	pthread_mutex_lock(&g.mu);
	g.sync_delay_us = us;
	pthread_mutex_unlock(&g.mu);
}

void faultvfs_get_counts(faultvfs_counts *out)
{
	pthread_mutex_lock(&g.mu);
	*out = g.counts;
	pthread_mutex_unlock(&g.mu);
}

void faultvfs_last_fault(char *out, size_t cap)
{
	pthread_mutex_lock(&g.mu);
	snprintf(out, cap, "%s", g.last_fault);
	pthread_mutex_unlock(&g.mu);
}

static uint32_t next_rand(uint32_t *s)
{
	/* xorshift32: deterministic for a seed, good enough to pick prefixes */
	uint32_t x = *s ? *s : 0x9e3779b9u;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	*s = x;
	return x;
}

/* Rewrite every tracked file as a power cut leaves it. Mutex held. */
static int apply_locked(faultvfs_cut_mode mode, uint32_t seed)
{
	int changed = 0, err = 0;
	uint32_t rnd = seed;
	for (node **pp = &g.nodes; *pp;) {
		node *n = *pp;
		if (mode == FAULTVFS_KEEP_ALL) {
			drop_ops(n); /* a process crash: the kernel keeps every write */
		} else if (!n->deleted && n->n_ops && n->fd >= 0) {
			size_t keep = 0, torn = 0;
			if (mode == FAULTVFS_KEEP_PREFIX) {
				keep = next_rand(&rnd) % (n->n_ops + 1);
				if (keep && !n->ops[keep - 1].truncate) {
					/* 0, 512, 1024, ... bytes of it, or all of it */
					size_t len = n->ops[keep - 1].len, units = (len + TEAR_UNIT - 1) / TEAR_UNIT;
					size_t k = (size_t)(next_rand(&rnd) % (units + 1));
					torn = k == units ? len : k * TEAR_UNIT;
				}
			}
			for (size_t i = 0; i < keep; i++) {
				size_t take = i + 1 == keep && !n->ops[i].truncate ? torn : n->ops[i].len;
				if (apply_op(&n->durable, &n->durable_len, &n->durable_cap, &n->ops[i], n->unsynced, take))
					err = -ENOMEM;
			}
			size_t done = 0;
			while (done < n->durable_len) {
				ssize_t w = pwrite(n->fd, n->durable + done, n->durable_len - done, (off_t)done);
				if (w <= 0) {
					err = w < 0 ? -errno : -EIO;
					break;
				}
				done += (size_t)w;
			}
			if (ftruncate(n->fd, (off_t)n->durable_len) != 0)
				err = -errno;
			drop_ops(n);
			changed++;
		}
		/* A handle still open (a misuse): keep its node, now clean. */
		if (n->handles > 0) {
			pp = &n->next;
			continue;
		}
		*pp = n->next;
		node_free(n);
	}
	return err ? err : changed;
}

int faultvfs_power_cut_apply(faultvfs_cut_mode mode, uint32_t seed)
{
	pthread_mutex_lock(&g.mu);
	int rc = apply_locked(mode, seed);
	g.powered_off = 0;
	g.fault = FAULTVFS_NONE;
	g.mask = 0;
	pthread_mutex_unlock(&g.mu);
	return rc;
}

void faultvfs_on_power_cut(void (*fn)(const char *what, void *ctx), void *ctx, faultvfs_cut_mode mode, uint32_t seed)
{
	pthread_mutex_lock(&g.mu);
	g.cut_apply = 1;
	g.cut_fn = fn;
	g.cut_ctx = ctx;
	g.cut_mode = mode;
	g.cut_seed = seed;
	pthread_mutex_unlock(&g.mu);
}

const char *faultvfs_wrapped_name(void)
{
	return g.real ? g.real->zName : NULL;
}
