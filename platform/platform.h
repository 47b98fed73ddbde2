/* SPDX-License-Identifier: Apache-2.0 */
/*
 * platform: everything the agent takes from the operating system — clocks,
 * randomness, files, wake-up descriptors — so agent code carries no
 * #ifdef __linux__ and tests can inject a clock. Functions return 0 or -errno
 * unless they say otherwise.
 */
#ifndef SCRM_PLATFORM_H
#define SCRM_PLATFORM_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/* ---- clocks ---- */

/* Wall clock, Unix ms (int64: armhf has a 32-bit time_t). */
int64_t platform__wall_ms(void);
/* Monotonic clock including suspend (CLOCK_BOOTTIME), ms since boot. */
int64_t platform__mono_ms(void);
/* Monotonic clock (CLOCK_MONOTONIC), microseconds, for measuring short
 * intervals (a commit's duration); never stored or sent. */
int64_t platform__mono_us(void);
/* A condition variable whose timed waits run on the monotonic clock, so a
 * wall clock step cannot stretch or cut them. 0 or -errno. */
int platform__cond_init(pthread_cond_t *cv);
/* Wait on cv (made by platform__cond_init) for at most us microseconds;
 * returns early when signalled (or spuriously): callers re-check. */
void platform__cond_wait_us(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t us);
/* Sleep us microseconds (restarted after signals). */
void platform__sleep_us(int64_t us);
/* Sleep ms milliseconds (restarted after signals). */
void platform__sleep_ms(int ms);
/* Kernel boot id (36 chars + NUL); "unknown" padding if unavailable. */
void platform__boot_id(char out[37]);

/* Tests replace the clocks; NULL restores the real ones. */
typedef int64_t (*platform__clock_fn)(void *ctx);
void platform__clock_override(platform__clock_fn wall, platform__clock_fn mono,
			      void *ctx);
/* Whether the kernel reports the wall clock NTP-synchronized (adjtimex(),
 * read only): 1 synchronized, 0 not (TIME_ERROR or STA_UNSYNC: no NTP
 * client has disciplined it since boot or since the last step), negative
 * (-errno) unknown — unsupported (an emulator), or a fake wall clock is
 * installed (platform__clock_override). Any thread; one system call. */
int platform__clock_synced(void);
/* Tests replace it (fn returns what platform__clock_synced should); NULL
 * restores the kernel's answer. */
typedef int (*platform__synced_fn)(void *ctx);
void platform__clock_synced_override(platform__synced_fn fn, void *ctx);

/* ---- randomness (mbedTLS CTR-DRBG seeded from the OS entropy source) ---- */

/* Fill buf with n random bytes. Thread-safe. 0 or -EIO. */
int platform__random(void *buf, size_t n);

/* ---- files ---- */

/* mkdir -p with mode for the created components. */
int platform__mkdirs(const char *path, unsigned mode);
/* Read a whole file (max bytes); *out malloc'd and NUL-terminated. */
int platform__read_file(const char *path, size_t max, char **out,
			size_t *len);
/* Take an exclusive, non-blocking lock on `path` (created 0600) for the
 * life of the process: returns the fd holding it, -EWOULDBLOCK if another
 * process holds it, or -errno. The kernel drops it when the process dies,
 * kill -9 included, so a crash never leaves a stale lock. */
int platform__lock_file(const char *path);
/* Replace `path` atomically: write path.tmp-<pid> with exactly `mode`
 * (umask ignored), fsync, rename, fsync the directory, so a power cut leaves
 * the old or the new file, never a torn one. 0 or -errno. */
int platform__write_file_atomic(const char *path, const void *data, size_t len, unsigned mode);
/* The same; with replace == 0 the file is linked into place instead, which
 * fails with -EEXIST rather than replace a file created meanwhile. */
int platform__write_file_ex(const char *path, const void *data, size_t len, unsigned mode, int replace);
/* Bytes available to an unprivileged user and total, of the file system
 * holding `path`. 0 or -errno. */
int platform__disk_space(const char *path, int64_t *avail, int64_t *total);
/* Create an empty file with exactly `mode` (umask ignored) if none exists:
 * SQLite then gives the database's -wal and -shm the same mode, so a store
 * shared by the daemon and the POS (group scrm) stays writable by both.
 * 0 (made or already there) or -errno. */
int platform__precreate(const char *path, unsigned mode);
/* A 64-bit word shared by every process that maps `path` (created with
 * exactly `mode` if missing, made one page long): NULL if the file cannot be
 * opened or mapped, or is a symlink, not a regular file or has other
 * links. Read and written with __atomic builtins (lock-free on x86_64,
 * aarch64 and ARMv7's ldrexd/strexd). Unmap with
 * platform__shared_word_close. */
int64_t *platform__shared_word(const char *path, unsigned mode);
void platform__shared_word_close(int64_t *word);
/* Resident set size of this process in bytes, 0 if unknown. */
int64_t platform__rss_bytes(void);
/* A lock file of the store (created 0600), opened but not locked: fd or
 * -errno. Lock and unlock it with platform__lock_fd. */
int platform__lock_open(const char *path);
/* flock on such an fd: how 0 = release, 1 = shared, 2 = exclusive; waits
 * (signals retried). Per open file: two fds of one process do not share it. */
int platform__lock_fd(int fd, int how);
/* Identity (device, inode) of the file at path; -ENOENT if none. */
int platform__file_id(const char *path, uint64_t *dev, uint64_t *ino);
/* Make `path` a file of `bytes` bytes whose blocks are allocated (kept free
 * space, released by unlinking it). 0 or -errno (-ENOSPC); nothing is left
 * behind on failure. */
int platform__reserve_file(const char *path, int64_t bytes);
/* Size of a file in bytes. 0 or -errno (-ENOENT: no such file). */
int platform__file_size(const char *path, int64_t *size);
/* fsync a directory: the renames and links made in it survive a power cut. */
int platform__fsync_dir(const char *dir);

/* ---- files the agent trusts (keys, central's public key, its own state) ----
 * The store directory is shared with the POS software (group scrm, 2770,
 * no sticky bit): any group member can rename or plant entries there. What
 * decides whom the agent trusts therefore lives in directories only the
 * agent's user can write, and every such directory and file is opened
 * without following a symbolic link (O_NOFOLLOW) and checked on the open
 * descriptor (no check-then-open race):
 *   - owner: the effective uid, or root (root-owned files are trusted, as
 *     ssh does for its keys);
 *   - a directory: no group or other write (so nobody else can rename,
 *     plant or remove entries in it);
 *   - a file: a regular file, no group or other write; with `secret`, no
 *     group or other access at all (keys).
 * On refusal the functions return -EPERM (or -ENOTDIR, -ELOOP) and write
 * the reason to why[n], e.g. "owner uid 1001, expected 998 or 0",
 * "mode 0640, expected no group or other access", "a symbolic link". */
int platform__check_fd(int fd, int want_dir, int secret, char *why, size_t n);
/* Open the directory `path` (O_DIRECTORY|O_NOFOLLOW on its last
 * component) and check it: fd or -errno (why filled on refusal). With
 * create, a missing directory is made with mode 0700 first (umask applied
 * on top; never looser). */
int platform__open_trusted_dir(const char *path, int create, char *why, size_t n);
/* Open `name` in the checked directory dirfd with O_NOFOLLOW|O_CLOEXEC and
 * check it as a file (secret: no group/other access): fd or -errno. */
int platform__openat_trusted(int dirfd, const char *name, int flags, int secret, char *why, size_t n);
/* platform__read_file for a trusted file: its directory and the file are
 * both opened without following links and checked. -ENOENT if the file (or
 * its directory) does not exist; *out malloc'd, NUL-terminated. */
int platform__read_trusted(const char *path, size_t max, int secret, char **out, size_t *len, char *why,
			   size_t n);

/* ---- process ---- */

/* Keep this process's memory (data key, decrypted personal data) off the
 * disk and away from other processes: RLIMIT_CORE 0 (soft and hard) and, on
 * Linux, not dumpable (PR_SET_DUMPABLE 0: no core even through a piped
 * core_pattern, no ptrace or /proc/<pid>/mem by the same user). Called first
 * thing by scrm-agent and scrmctl. 0, or the first -errno (both are tried). */
int platform__no_core_dumps(void);

/* ---- syslog (kept here: <syslog.h> macros clash with agent names) ---- */

/* Open (on != 0, ident borrowed for the process life) or close syslog. */
void platform__syslog_open(int on, const char *ident);
/* level 0 error, 1 warning, 2 info, 3 debug; facility daemon. */
void platform__syslog(int level, const char *line);

/* ---- wake-ups for the daemon's poll loop ---- */

/* Commit notifications from capturing processes to the daemon: a unix
 * datagram socket `<dir>/agent.sock`. The daemon binds it (readable = some
 * process committed events); capture sends one empty datagram after each
 * COMMIT, non-blocking, ignoring every error (no daemon, full queue): the
 * sale is already durable and the daemon also re-reads the outbox on its
 * timers. SQLite's own files cannot serve: a commit becomes visible through
 * an mmap write to the -shm index, which raises no inotify event.
 * Paths longer than sun_path yield -ENAMETOOLONG. */
#define PLATFORM_NOTIFY_SOCK "agent.sock"
int platform__notify_bind(const char *dir);  /* daemon: fd or -errno */
void platform__notify_drain(int fd);
typedef struct platform__notifier platform__notifier;
/* Capture side: NULL only on out-of-memory or a path too long. */
platform__notifier *platform__notifier_open(const char *dir);
void platform__notifier_send(platform__notifier *n);
void platform__notifier_close(platform__notifier *n); /* NULL: no-op */

/* A watch on network links/addresses/routes (netlink): readable when the
 * network configuration changes, so a reconnect can be tried at once when
 * the link comes back. fd or -errno. */
int platform__netwatch_open(void);
void platform__netwatch_drain(int fd);

/* An eventfd used by other threads to wake the poll loop. */
int platform__waker_open(void);
void platform__waker_signal(int fd);
void platform__waker_drain(int fd);

/* ---- sockets and threads, for work kept off the poll loop (platform/net.c) ---- */

/* Wait until fd is readable (for_write 0) or writable (1), at most
 * timeout_ms. cancel_fd (-1 = none): readable means give up at once.
 * 1 ready (or an error on fd the next call reports), 0 timed out,
 * -ECANCELED, or -errno. Signals are retried. */
int platform__fd_wait(int fd, int for_write, int timeout_ms, int cancel_fd);
/* A TCP connection to host:port (a name or an address) made with a
 * non-blocking connect(), so it takes at most timeout_ms however the network
 * behaves (an address that drops SYNs would otherwise block ~127 s). Returns
 * the connected socket (non-blocking, close-on-exec; caller closes) or
 * -errno: -ETIMEDOUT (no answer in time: packets dropped by a firewall, or a
 * wrong address), -ECONNREFUSED, -EHOSTUNREACH / -ENETUNREACH, -ENOENT (the
 * name does not resolve), -EAGAIN (name resolution failed for now),
 * -ECANCELED (cancel_fd became readable; -1 = none). The name look-up
 * (getaddrinfo) is not bounded by timeout_ms: call this off the poll loop.
 * Any thread. */
int platform__tcp_connect(const char *host, const char *port, int timeout_ms, int cancel_fd);

/* A thread running fn(arg), with every signal blocked in it (signals stay
 * with the thread that handles them, the daemon's signalfd). *out owned:
 * released by exactly one of join or detach. 0 or -errno. */
typedef struct platform__thread platform__thread;
int platform__thread_start(platform__thread **out, void *(*fn)(void *), void *arg);
/* Wait for the thread to end, and free t. NULL: no-op. 0 or -errno. */
int platform__thread_join(platform__thread *t);
/* Let the thread end on its own (it frees what it owns), and free t. */
int platform__thread_detach(platform__thread *t);

/* ---- systemd service notifications (no libsystemd; platform/sdnotify.c) ---- */

/* Send `state` ("READY=1", "WATCHDOG=1", "RELOADING=1", "STOPPING=1",
 * "STATUS=...", several joined by '\n') to $NOTIFY_SOCKET: a path or an
 * abstract '@name' unix datagram socket. Returns 0 when sent, 0 when not
 * under systemd (no NOTIFY_SOCKET), or -errno (-EAFNOSUPPORT for an address
 * that is neither '/...' nor '@...'). Any thread; no state kept. */
int platform__sd_notify(const char *state);
/* Watchdog period in ms from $WATCHDOG_USEC (ping with "WATCHDOG=1" at
 * least every half of it), or 0 when there is no watchdog: unset, zero,
 * malformed, or $WATCHDOG_PID set to another process's pid. */
int64_t platform__sd_watchdog_ms(void);

#endif
