/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Wake-up sources for the daemon's single poll loop: a unix datagram socket
 * that capturing processes poke after each commit, a netlink socket (a link
 * or address came up), and an eventfd that Paho's threads signal. With these the daemon sleeps in poll()
 * and uses no CPU while idle.
 */
#include "platform.h"

#include <errno.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/socket.h>
#include <unistd.h>

static int notify_addr(const char *dir, struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	int n = snprintf(sa->sun_path, sizeof(sa->sun_path), "%s/%s", dir, PLATFORM_NOTIFY_SOCK);
	return n < 0 || (size_t)n >= sizeof(sa->sun_path) ? -ENAMETOOLONG : 0;
}

int platform__notify_bind(const char *dir)
{
	struct sockaddr_un sa;
	int rc = notify_addr(dir, &sa);
	if (rc)
		return rc;
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	unlink(sa.sun_path); /* a stale socket from a previous run */
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	/* Capturing processes may run as another user of the store's group. */
	chmod(sa.sun_path, 0660);
	return fd;
}

void platform__notify_drain(int fd)
{
	char b[64];
	while (recv(fd, b, sizeof(b), MSG_DONTWAIT) >= 0)
		;
}

struct platform__notifier {
	int fd;
	struct sockaddr_un sa;
};

platform__notifier *platform__notifier_open(const char *dir)
{
	platform__notifier *n = calloc(1, sizeof(*n));
	if (!n)
		return NULL;
	if (notify_addr(dir, &n->sa) != 0 ||
	    (n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0) {
		free(n);
		return NULL;
	}
	return n;
}

void platform__notifier_send(platform__notifier *n)
{
	/* sendto by address every time: survives daemon restarts; ENOENT or
	 * ECONNREFUSED (no daemon) and EAGAIN (already poked) are all fine. */
	if (n)
		(void)sendto(n->fd, "", 0, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&n->sa, sizeof(n->sa));
}

void platform__notifier_close(platform__notifier *n)
{
	if (!n)
		return;
	close(n->fd);
	free(n);
}

int platform__netwatch_open(void)
{
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (fd < 0)
		return -errno;
	struct sockaddr_nl sa;
	memset(&sa, 0, sizeof(sa));
	sa.nl_family = AF_NETLINK;
	sa.nl_groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR |
		       RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	return fd;
}

void platform__netwatch_drain(int fd)
{
	char buf[8192];
	while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
		;
}

int platform__waker_open(void)
{
	int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

void platform__waker_signal(int fd)
{
	uint64_t one = 1;
	ssize_t n;
	do
		n = write(fd, &one, sizeof(one));
	while (n < 0 && errno == EINTR);
	/* EAGAIN means the counter is saturated: the loop is already woken. */
}

void platform__waker_drain(int fd)
{
	uint64_t v;
	while (read(fd, &v, sizeof(v)) > 0)
		;
}
