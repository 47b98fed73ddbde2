/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Clocks and the boot id. Times leave this module as int64 milliseconds so
 * that armhf's 32-bit time_t never reaches the wire or the disk.
 */
#include "platform.h"

#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <time.h>

static platform__clock_fn fake_wall, fake_mono;
static void *fake_ctx;

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

int64_t platform__wall_ms(void)
{
	return fake_wall ? fake_wall(fake_ctx) : ms_of(CLOCK_REALTIME);
}

int64_t platform__mono_ms(void)
{
	return fake_mono ? fake_mono(fake_ctx) : ms_of(CLOCK_BOOTTIME);
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

void platform__sleep_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}
