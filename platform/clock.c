/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Clocks, the kernel's NTP state and the boot id. Times leave this module as
 * int64 milliseconds so that armhf's 32-bit time_t never reaches the wire or
 * the disk.
 */
#include "platform.h"

#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <sys/timex.h>
#include <time.h>

static platform__clock_fn fake_wall, fake_mono;
static void *fake_ctx;
static platform__synced_fn fake_synced;
static void *fake_synced_ctx;

void platform__clock_override(platform__clock_fn wall, platform__clock_fn mono,
			      void *ctx)
{
	fake_wall = wall;
	fake_mono = mono;
	fake_ctx = ctx;
}

static int64_t ms_of(clockid_t id)
{
	struct timespec ts;
	if (clock_gettime(id, &ts) != 0)
		return 0;
	return (int64_t)ts.tv_sec * 1000 + (int64_t)(ts.tv_nsec / 1000000);
}

int64_t platform__mono_us(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		return 0;
	return (int64_t)ts.tv_sec * 1000000 + (int64_t)(ts.tv_nsec / 1000);
}

int platform__cond_init(pthread_cond_t *cv)
{
	pthread_condattr_t a;
	int e = pthread_condattr_init(&a);
	if (e)
		return -e;
	if (!(e = pthread_condattr_setclock(&a, CLOCK_MONOTONIC)))
		e = pthread_cond_init(cv, &a);
	pthread_condattr_destroy(&a);
	return -e;
}

void platform__cond_wait_us(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t us)
{
	struct timespec ts;
	if (us <= 0 || clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		return;
	int64_t ns = (int64_t)ts.tv_nsec + (us % 1000000) * 1000;
	ts.tv_sec += (time_t)(us / 1000000 + ns / 1000000000);
	ts.tv_nsec = (long)(ns % 1000000000);
	pthread_cond_timedwait(cv, mu, &ts);
}

int64_t platform__wall_ms(void)
{
	return fake_wall ? fake_wall(fake_ctx) : ms_of(CLOCK_REALTIME);
}

int64_t platform__mono_ms(void)
{
	return fake_mono ? fake_mono(fake_ctx) : ms_of(CLOCK_BOOTTIME);
}

void platform__clock_synced_override(platform__synced_fn fn, void *ctx)
{
	fake_synced = fn;
	fake_synced_ctx = ctx;
}

int platform__clock_synced(void)
{
	struct timex tx;
	if (fake_synced)
		return fake_synced(fake_synced_ctx);
	/* The kernel's state describes the real clock, not a test's. */
	if (fake_wall)
		return -ENOTSUP;
	/* modes = 0 only reads: no CAP_SYS_TIME needed. settimeofday() and
	 * clock steps set STA_UNSYNC; an NTP client clears it once it has
	 * disciplined the clock (chrony, ntpd, systemd-timesyncd). */
	memset(&tx, 0, sizeof(tx));
	int state = adjtimex(&tx);
	if (state < 0)
		return errno ? -errno : -EIO; /* e.g. ENOSYS under an emulator */
	return state != TIME_ERROR && !(tx.status & STA_UNSYNC);
}

void platform__boot_id(char out[37])
{
	FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");
	size_t n = 0;
	if (f) {
		n = fread(out, 1, 36, f);
		fclose(f);
	}
	if (n != 36)
		memcpy(out, "00000000-0000-0000-0000-000000000000", 36);
	out[36] = '\0';
}

void platform__sleep_us(int64_t us)
{
	if (us <= 0)
		return;
	struct timespec ts = {.tv_sec = (time_t)(us / 1000000), .tv_nsec = (long)(us % 1000000) * 1000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

void platform__sleep_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}
