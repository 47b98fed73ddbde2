/* SPDX-License-Identifier: Apache-2.0 */
/*
 * net_test: the bounded TCP connect (platform/net.c) and the connection
 * diagnosis run in a thread (agent/transport/tlsprobe.c), against real loopback
 * sockets. What matters to the daemon (security review, issue 12): an
 * address that drops SYNs costs the diagnosis its timeout, not the kernel's
 * ~127 s of SYN retries; a silent server costs the handshake no more; and a
 * diagnosis in progress is abandoned at once when the agent stops.
 *
 * The "blackhole" is a listener with listen(fd, 0) whose accept queue is
 * filled: the kernel then drops every further SYN, as a firewall does.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "platform.h"
#include "tlsprobe.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A loopback listener with `backlog`; its port in *port. */
static int listener(int backlog, int *port)
{
	struct sockaddr_in a;
	socklen_t alen = sizeof(a);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(fd, backlog), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
	*port = ntohs(a.sin_port);
	return fd;
}

struct blackhole {
	int fds[4];
	int port;
	char port_s[16], uri[64];
};

static void blackhole_open(struct blackhole *b)
{
	struct sockaddr_in a;
	memset(&a, 0, sizeof(a));
	b->fds[0] = listener(0, &b->port);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = htons((uint16_t)b->port);
	for (int i = 1; i < 4; i++) {
		b->fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		assert_true(b->fds[i] >= 0);
		assert_true(connect(b->fds[i], (struct sockaddr *)&a, sizeof(a)) == 0 || errno == EINPROGRESS);
	}
	usleep(200 * 1000);
	snprintf(b->port_s, sizeof(b->port_s), "%d", b->port);
	snprintf(b->uri, sizeof(b->uri), "ssl://127.0.0.1:%d", b->port);
}

static void blackhole_close(struct blackhole *b)
{
	for (int i = 0; i < 4; i++)
		close(b->fds[i]);
}

static void connect_ok_and_refused(void **state)
{
	(void)state;
	int port;
	char ps[16];
	int l = listener(4, &port);
	snprintf(ps, sizeof(ps), "%d", port);
	int fd = platform__tcp_connect("127.0.0.1", ps, 2000, -1);
	assert_true(fd >= 0);
	assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
	close(fd);
	close(l);
	/* nothing listens there any more */
	assert_int_equal(platform__tcp_connect("127.0.0.1", ps, 2000, -1), -ECONNREFUSED);
}

/* Regression: a blocking connect() to an address that drops SYNs took the
 * kernel's SYN retries (~127 s) — past the service watchdog. */
static void connect_to_blackhole_times_out(void **state)
{
	(void)state;
	struct blackhole b;
	blackhole_open(&b);
	int64_t t0 = now_ms();
	int rc = platform__tcp_connect("127.0.0.1", b.port_s, 300, -1);
	int64_t took = now_ms() - t0;
	assert_int_equal(rc, -ETIMEDOUT);
	assert_true(took >= 250);
	assert_true(took < 1500);
	blackhole_close(&b);
}

static void connect_cancelled_at_once(void **state)
{
	(void)state;
	struct blackhole b;
	int p[2];
	blackhole_open(&b);
	assert_int_equal(pipe(p), 0);
	assert_int_equal(write(p[1], "x", 1), 1);
	int64_t t0 = now_ms();
	assert_int_equal(platform__tcp_connect("127.0.0.1", b.port_s, 10000, p[0]), -ECANCELED);
	assert_true(now_ms() - t0 < 500);
	close(p[0]);
	close(p[1]);
	blackhole_close(&b);
}

/* The diagnosis in its thread: done (fd readable) within its timeout, and
 * saying what happened. */
static void probe_thread_blackhole(void **state)
{
	(void)state;
	struct blackhole b;
	tlsprobe *p = NULL;
	char out[400];
	blackhole_open(&b);
	int64_t t0 = now_ms();
	assert_int_equal(tlsprobe__start(&p, b.uri, NULL, NULL, NULL, 500), 0);
	struct pollfd pf = {.fd = tlsprobe__fd(p), .events = POLLIN};
	assert_int_equal(poll(&pf, 1, 3000), 1);
	assert_true(now_ms() - t0 < 2000);
	assert_int_equal(tlsprobe__finish(p, out, sizeof(out)), 1);
	if (!strstr(out, "no answer within 500 ms")) {
		print_error("diagnosis: %s\n", out);
		fail();
	}
	blackhole_close(&b);
}

/* A server that accepts the connection and never answers the ClientHello:
 * the handshake ends at the same deadline. */
static void probe_silent_server_bounded(void **state)
{
	(void)state;
	int port;
	char uri[64], out[400];
	int l = listener(4, &port); /* the kernel accepts; nobody speaks */
	snprintf(uri, sizeof(uri), "ssl://127.0.0.1:%d", port);
	int64_t t0 = now_ms();
	assert_int_equal(tlsprobe__diagnose(uri, NULL, NULL, NULL, 400, -1, out, sizeof(out)), 1);
	int64_t took = now_ms() - t0;
	assert_true(took < 1500);
	if (!strstr(out, "timed out")) {
		print_error("diagnosis: %s\n", out);
		fail();
	}
	close(l);
}

/* The agent stopping: a diagnosis in progress is abandoned at once. */
static void probe_cancel_is_prompt(void **state)
{
	(void)state;
	struct blackhole b;
	tlsprobe *p = NULL;
	blackhole_open(&b);
	assert_int_equal(tlsprobe__start(&p, b.uri, NULL, NULL, NULL, 10000), 0);
	usleep(100 * 1000);
	int64_t t0 = now_ms();
	tlsprobe__cancel(p);
	assert_true(now_ms() - t0 < 300);
	tlsprobe__cancel(NULL);
	blackhole_close(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(connect_ok_and_refused),
		cmocka_unit_test(connect_to_blackhole_times_out),
		cmocka_unit_test(connect_cancelled_at_once),
		cmocka_unit_test(probe_thread_blackhole),
		cmocka_unit_test(probe_silent_server_bounded),
		cmocka_unit_test(probe_cancel_is_prompt),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
