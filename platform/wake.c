/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Wake-up sources for the daemon's single poll loop: an inotify watch on the
 * store directory (another process committed to the outbox: SQLite appended
 * to the WAL file), a netlink socket (a link or address came up), and an
 * eventfd that Paho's threads signal. With these the daemon sleeps in poll()
 * and uses no CPU while idle.
 */
#include "platform.h"

#include <errno.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <unistd.h>

int platform__dirwatch_open(const char *dir)
{
	int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (inotify_add_watch(fd, dir, IN_MODIFY | IN_CREATE | IN_MOVED_TO) < 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	return fd;
}

int platform__dirwatch_drain(int fd, const char *prefix)
{
	/* Aligned as the kernel requires for struct inotify_event. */
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	size_t plen = strlen(prefix);
	int hit = 0;

	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n <= 0)
			break;
		for (char *p = buf; p < buf + n;) {
			struct inotify_event *ev = (struct inotify_event *)(void *)p;
			if (ev->len && strncmp(ev->name, prefix, plen) == 0)
				hit = 1;
			if (ev->mask & IN_Q_OVERFLOW)
				hit = 1;
			p += sizeof(*ev) + ev->len;
		}
	}
	return hit;
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
