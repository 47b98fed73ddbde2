/* SPDX-License-Identifier: Apache-2.0 */
/* iocount: SQLite's writes and syncs counted per kind of file (iocount.h). */
#include "iocount.h"

#include <sqlite3.h>
#include <string.h>

enum { K_DB, K_WAL, K_OTHER };

typedef struct ic_file {
	sqlite3_file base;
	int kind;
	sqlite3_file *real; /* the wrapped VFS's handle, right after this one */
} ic_file;

#define REAL_OFFSET ((sizeof(ic_file) + 15) & ~(size_t)15)

static sqlite3_vfs *wrapped;
static sqlite3_vfs shim;
static iocount counts; /* updated with __atomic: any thread may write */

static void add(int64_t *field, int64_t v)
{
	__atomic_add_fetch(field, v, __ATOMIC_RELAXED);
}

static int ic_close(sqlite3_file *f)
{
	ic_file *p = (ic_file *)f;
	int rc = p->real->pMethods ? p->real->pMethods->xClose(p->real) : SQLITE_OK;
	p->base.pMethods = NULL;
	return rc;
}

static int ic_read(sqlite3_file *f, void *buf, int amt, sqlite3_int64 off)
{
	ic_file *p = (ic_file *)f;
	return p->real->pMethods->xRead(p->real, buf, amt, off);
}

static int ic_write(sqlite3_file *f, const void *buf, int amt, sqlite3_int64 off)
{
	ic_file *p = (ic_file *)f;
	int rc = p->real->pMethods->xWrite(p->real, buf, amt, off);
	if (rc == SQLITE_OK) {
		switch (p->kind) {
		case K_WAL:
			add(&counts.wal_bytes, amt);
			if (amt >= 512)
				add(&counts.wal_pages, 1);
			break;
		case K_DB:
			add(&counts.db_bytes, amt);
			if (amt >= 512)
				add(&counts.db_pages, 1);
			break;
		default:
			add(&counts.other_bytes, amt);
		}
	}
	return rc;
}

static int ic_truncate(sqlite3_file *f, sqlite3_int64 size)
{
	ic_file *p = (ic_file *)f;
	return p->real->pMethods->xTruncate(p->real, size);
}

static int ic_sync(sqlite3_file *f, int flags)
{
	ic_file *p = (ic_file *)f;
	int rc = p->real->pMethods->xSync(p->real, flags);
	add(p->kind == K_WAL ? &counts.wal_syncs : p->kind == K_DB ? &counts.db_syncs : &counts.other_syncs, 1);
	return rc;
}

static int ic_size(sqlite3_file *f, sqlite3_int64 *size)
{
	ic_file *p = (ic_file *)f;
	return p->real->pMethods->xFileSize(p->real, size);
}

static int ic_lock(sqlite3_file *f, int lock)
{
	ic_file *p = (ic_file *)f;
	return p->real->pMethods->xLock(p->real, lock);
}

static int ic_unlock(sqlite3_file *f, int lock)
{
	ic_file *p = (ic_file *)f;
	return p->real->pMethods->xUnlock(p->real, lock);
}

static int ic_check(sqlite3_file *f, int *out)
{
	ic_file *p = (ic_file *)f;
	return p->real->pMethods->xCheckReservedLock(p->real, out);
}

static int ic_fcntl(sqlite3_file *f, int op, void *arg)
{
	ic_file *p = (ic_file *)f;
	return p->real->pMethods->xFileControl(p->real, op, arg);
}

static int ic_sector(sqlite3_file *f)
{
	ic_file *p = (ic_file *)f;
	return p->real->pMethods->xSectorSize(p->real);
}

static int ic_chars(sqlite3_file *f)
{
	ic_file *p = (ic_file *)f;
	return p->real->pMethods->xDeviceCharacteristics(p->real);
}

static int ic_shm_map(sqlite3_file *f, int pg, int pgsz, int extend, void volatile **pp)
{
	ic_file *p = (ic_file *)f;
	return p->real->pMethods->xShmMap(p->real, pg, pgsz, extend, pp);
}

static int ic_shm_lock(sqlite3_file *f, int off, int n, int flags)
{
	ic_file *p = (ic_file *)f;
	return p->real->pMethods->xShmLock(p->real, off, n, flags);
}

static void ic_shm_barrier(sqlite3_file *f)
{
	ic_file *p = (ic_file *)f;
	p->real->pMethods->xShmBarrier(p->real);
}

static int ic_shm_unmap(sqlite3_file *f, int del)
{
	ic_file *p = (ic_file *)f;
	return p->real->pMethods->xShmUnmap(p->real, del);
}

/* No memory-mapped I/O through the shim: writes must come as xWrite to be
 * counted (SQLite falls back to xRead when xFetch gives no pointer). */
static int ic_fetch(sqlite3_file *f, sqlite3_int64 off, int amt, void **pp)
{
	(void)f, (void)off, (void)amt;
	*pp = NULL;
	return SQLITE_OK;
}

static int ic_unfetch(sqlite3_file *f, sqlite3_int64 off, void *pg)
{
	(void)f, (void)off, (void)pg;
	return SQLITE_OK;
}

static const sqlite3_io_methods ic_methods = {
	3,	    ic_close,	 ic_read,    ic_write,	    ic_truncate,    ic_sync,	  ic_size,
	ic_lock,    ic_unlock,	 ic_check,   ic_fcntl,	    ic_sector,	    ic_chars,	  ic_shm_map,
	ic_shm_lock, ic_shm_barrier, ic_shm_unmap, ic_fetch, ic_unfetch,
};

static int ic_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out_flags)
{
	(void)vfs;
	ic_file *p = (ic_file *)f;
	memset(p, 0, sizeof(*p));
	p->real = (sqlite3_file *)((char *)f + REAL_OFFSET);
	p->kind = flags & SQLITE_OPEN_MAIN_DB ? K_DB : flags & SQLITE_OPEN_WAL ? K_WAL : K_OTHER;
	int rc = wrapped->xOpen(wrapped, name, p->real, flags, out_flags);
	if (rc != SQLITE_OK || !p->real->pMethods) {
		p->base.pMethods = NULL;
		return rc;
	}
	p->base.pMethods = &ic_methods;
	return SQLITE_OK;
}

static int ic_delete(sqlite3_vfs *v, const char *name, int sync)
{
	(void)v;
	return wrapped->xDelete(wrapped, name, sync);
}

static int ic_access(sqlite3_vfs *v, const char *name, int flags, int *out)
{
	(void)v;
	return wrapped->xAccess(wrapped, name, flags, out);
}

static int ic_full(sqlite3_vfs *v, const char *name, int n, char *out)
{
	(void)v;
	return wrapped->xFullPathname(wrapped, name, n, out);
}

static void *ic_dlopen(sqlite3_vfs *v, const char *name)
{
	(void)v;
	return wrapped->xDlOpen(wrapped, name);
}

static void ic_dlerror(sqlite3_vfs *v, int n, char *out)
{
	(void)v;
	wrapped->xDlError(wrapped, n, out);
}

static void (*ic_dlsym(sqlite3_vfs *v, void *h, const char *sym))(void)
{
	(void)v;
	return wrapped->xDlSym(wrapped, h, sym);
}

static void ic_dlclose(sqlite3_vfs *v, void *h)
{
	(void)v;
	wrapped->xDlClose(wrapped, h);
}

static int ic_random(sqlite3_vfs *v, int n, char *out)
{
	(void)v;
	return wrapped->xRandomness(wrapped, n, out);
}

static int ic_sleep(sqlite3_vfs *v, int us)
{
	(void)v;
	return wrapped->xSleep(wrapped, us);
}

static int ic_time(sqlite3_vfs *v, double *out)
{
	(void)v;
	return wrapped->xCurrentTime(wrapped, out);
}

static int ic_lasterr(sqlite3_vfs *v, int n, char *out)
{
	(void)v;
	return wrapped->xGetLastError ? wrapped->xGetLastError(wrapped, n, out) : 0;
}

static int ic_time64(sqlite3_vfs *v, sqlite3_int64 *out)
{
	(void)v;
	return wrapped->xCurrentTimeInt64(wrapped, out);
}

int iocount_install(void)
{
	if (wrapped)
		return SQLITE_OK;
	int rc = sqlite3_initialize();
	if (rc != SQLITE_OK)
		return rc;
	if (!(wrapped = sqlite3_vfs_find(NULL)))
		return SQLITE_ERROR;
	shim = (sqlite3_vfs){
		.iVersion = 2,
		.szOsFile = (int)(REAL_OFFSET + (size_t)wrapped->szOsFile),
		.mxPathname = wrapped->mxPathname,
		.zName = "iocount",
		.xOpen = ic_open,
		.xDelete = ic_delete,
		.xAccess = ic_access,
		.xFullPathname = ic_full,
		.xDlOpen = ic_dlopen,
		.xDlError = ic_dlerror,
		.xDlSym = ic_dlsym,
		.xDlClose = ic_dlclose,
		.xRandomness = ic_random,
		.xSleep = ic_sleep,
		.xCurrentTime = ic_time,
		.xGetLastError = ic_lasterr,
		.xCurrentTimeInt64 = ic_time64,
	};
	return sqlite3_vfs_register(&shim, 1);
}

void iocount_get(iocount *out)
{
	int64_t *dst = (int64_t *)out;
	int64_t *src = (int64_t *)&counts;
	for (size_t i = 0; i < sizeof(counts) / sizeof(int64_t); i++)
		dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

void iocount_reset(void)
{
	int64_t *f = (int64_t *)&counts;
	for (size_t i = 0; i < sizeof(counts) / sizeof(int64_t); i++)
		__atomic_store_n(&f[i], 0, __ATOMIC_RELAXED);
}

iocount iocount_diff(const iocount *b, const iocount *a)
{
	iocount d;
	const int64_t *pb = (const int64_t *)b, *pa = (const int64_t *)a;
	int64_t *pd = (int64_t *)&d;
	for (size_t i = 0; i < sizeof(d) / sizeof(int64_t); i++)
		pd[i] = pb[i] - pa[i];
	return d;
}
