/* SPDX-License-Identifier: Apache-2.0 */
/*
 * systemd readiness and watchdog protocol without libsystemd: the daemon
 * tells the service manager READY=1, WATCHDOG=1, RELOADING=1, STOPPING=1
 * through one datagram to $NOTIFY_SOCKET, and learns its watchdog period
 * from $WATCHDOG_USEC / $WATCHDOG_PID (sd_notify(3), sd_watchdog_enabled(3)).
 * The wire format is plain text, so a few lines here save a dependency the
 * tablets would otherwise carry. Owns nothing between calls: each message
 * opens, sends and closes its own socket, so any thread may call it.
 */
#include "platform.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int platform__sd_notify(const char *state)
{
	const char *where = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa;
	socklen_t salen;

	if (!where || !*where)
		return 0; /* not started by systemd (or not Type=notify) */
	if (!state)
		return -EINVAL;
	size_t n = strlen(where);
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	if (where[0] == '@') {
		/* Abstract namespace: a leading NUL, and the length counts
		 * only the name's bytes (no terminating NUL). */
		if (n > sizeof(sa.sun_path))
			return -ENAMETOOLONG;
		memcpy(sa.sun_path + 1, where + 1, n - 1);
		salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
	} else if (where[0] == '/') {
		if (n >= sizeof(sa.sun_path))
			return -ENAMETOOLONG;
		memcpy(sa.sun_path, where, n);
		salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
	} else {
		/* "vsock:..." and anything else: not a transport we speak. */
		return -EAFNOSUPPORT;
	}

	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* The kernel attaches our pid: with NotifyAccess=main systemd accepts
	 * the message only from the main process, which this is. */
	size_t len = strlen(state);
	ssize_t sent;
	do
		sent = sendto(fd, state, len, MSG_NOSIGNAL, (const struct sockaddr *)&sa, salen);
	while (sent < 0 && errno == EINTR);
	int rc = sent < 0 ? -errno : (size_t)sent != len ? -EIO : 0;
	close(fd);
	return rc;
}

/* Decimal digits only, no sign, no spaces; 0 if anything else. */
static uint64_t parse_u64(const char *s)
{
	uint64_t v = 0;
	if (!s || !*s)
		return 0;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return 0;
		unsigned d = (unsigned)(*s - '0');
		if (v > (UINT64_MAX - d) / 10)
			return 0;
		v = v * 10 + d;
	}
	return v;
}

int64_t platform__sd_watchdog_ms(void)
{
	uint64_t usec = parse_u64(getenv("WATCHDOG_USEC"));
	if (usec == 0)
		return 0;
	/* WATCHDOG_PID names the process the watchdog is meant for; a child
	 * that inherited the environment must not ping for its parent. */
	const char *pid_s = getenv("WATCHDOG_PID");
	if (pid_s && *pid_s) {
		uint64_t pid = parse_u64(pid_s);
		if (pid == 0 || pid != (uint64_t)getpid())
			return 0;
	}
	if (usec / 1000 > (uint64_t)INT64_MAX)
		return INT64_MAX;
	return usec < 1000 ? 1 : (int64_t)(usec / 1000);
}
