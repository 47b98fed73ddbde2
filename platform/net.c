/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Sockets and threads for work that must stay off the daemon's poll loop
 * (the TLS diagnosis of a failed broker connection): a TCP connect bounded
 * by a timeout and abandonable through a cancel descriptor, a bounded wait
 * on a descriptor, and a thread started with every signal blocked so that
 * signals keep reaching the loop's signalfd.
 *
 * Why not connect(2) on a blocking socket: against an address that drops
 * SYNs (a firewall, a wrong address) it blocks for the kernel's SYN retries,
 * about 127 s on Linux — longer than the service watchdog.
 */
#include "platform.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The real monotonic clock, never a test's fake one: these deadlines are
 * about the network, and a frozen fake clock would never let them pass. */
static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int platform__fd_wait(int fd, int for_write, int timeout_ms, int cancel_fd)
{
	int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
	for (;;) {
		struct pollfd pf[2] = {
			{.fd = fd, .events = (short)(for_write ? POLLOUT : POLLIN)},
			{.fd = cancel_fd, .events = POLLIN},
		};
		int64_t left = deadline - now_ms();
		if (left < 0)
			left = 0;
		int n = poll(pf, cancel_fd >= 0 ? 2 : 1, (int)left);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (cancel_fd >= 0 && pf[1].revents)
			return -ECANCELED;
		if (n > 0)
			return 1; /* ready, or an error the next call reports */
		if (left == 0)
			return 0;
	}
}

static int gai_errno(int g)
{
	switch (g) {
	case EAI_NONAME:
#ifdef EAI_NODATA
	case EAI_NODATA:
#endif
		return -ENOENT;
	case EAI_AGAIN:
		return -EAGAIN;
	case EAI_MEMORY:
		return -ENOMEM;
	case EAI_SYSTEM:
		return errno ? -errno : -EIO;
	default:
		return -EINVAL;
	}
}

int platform__tcp_connect(const char *host, const char *port, int timeout_ms, int cancel_fd)
{
	struct addrinfo hints, *res = NULL;
	int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_protocol = IPPROTO_TCP;
	int g = getaddrinfo(host, port, &hints, &res);
	if (g != 0)
		return gai_errno(g);
	int rc = -EHOSTUNREACH;
	for (const struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0) {
			rc = -errno;
			continue;
		}
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
			rc = fd;
			break;
		}
		if (errno != EINPROGRESS) {
			rc = -errno;
			close(fd);
			continue;
		}
		int64_t left = deadline - now_ms();
		int w = left > 0 ? platform__fd_wait(fd, 1, (int)left, cancel_fd) : 0;
		if (w == 1) {
			int err = 0;
			socklen_t len = sizeof(err);
			if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
				err = errno;
			if (err == 0) {
				rc = fd;
				break;
			}
			rc = -err;
		} else {
			rc = w == 0 ? -ETIMEDOUT : w;
		}
		close(fd);
		/* The timeout is for the whole connect, not per address. */
		if (rc == -ETIMEDOUT || rc == -ECANCELED)
			break;
	}
	freeaddrinfo(res);
	return rc;
}

struct platform__thread {
	pthread_t id;
};

int platform__thread_start(platform__thread **out, void *(*fn)(void *), void *arg)
{
	sigset_t all, old;
	platform__thread *t = malloc(sizeof(*t));
	*out = NULL;
	if (!t)
		return -ENOMEM;
	/* The new thread inherits the mask: no signal is ever delivered to
	 * it, so SIGTERM and SIGHUP stay with the loop's signalfd. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int e = pthread_create(&t->id, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (e != 0) {
		free(t);
		return -e;
	}
	*out = t;
	return 0;
}

int platform__thread_join(platform__thread *t)
{
	if (!t)
		return 0;
	int e = pthread_join(t->id, NULL);
	free(t);
	return -e;
}

int platform__thread_detach(platform__thread *t)
{
	if (!t)
		return 0;
	int e = pthread_detach(t->id);
	free(t);
	return -e;
}
