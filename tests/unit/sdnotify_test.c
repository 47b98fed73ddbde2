/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sdnotify_test: the systemd notification protocol (platform/sdnotify.c)
 * against a real unix datagram socket standing in for the service manager:
 * a path socket and an abstract '@' socket receive exactly the state sent,
 * with this process's pid in the kernel-attached credentials (what
 * NotifyAccess=main checks); no NOTIFY_SOCKET is "not under systemd" (0);
 * unreachable and unsupported addresses are -errno. The watchdog period
 * comes from WATCHDOG_USEC and is ignored when WATCHDOG_PID names another
 * process. No neighbours: the module only talks to the kernel.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil.h"

#include "platform.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* The stand-in for systemd's notify socket. */
typedef struct listener {
	int fd;
	char dir[256];      /* temp dir of a path socket, "" for abstract */
	char env[300];      /* value for NOTIFY_SOCKET */
} listener;

static void listener_setup(listener *l, int abstract)
{
	struct sockaddr_un sa;
	socklen_t salen;
	int one = 1;

	memset(l, 0, sizeof(*l));
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	l->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	assert_true(l->fd >= 0);
	/* Credentials on every datagram, as systemd's own socket has them. */
	assert_int_equal(setsockopt(l->fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)), 0);
	if (abstract) {
		int n = snprintf(l->env, sizeof(l->env), "@scrm-sdnotify-test/%ld/%d", (long)getpid(), rand());
		memcpy(sa.sun_path + 1, l->env + 1, (size_t)n - 1);
		salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)n);
	} else {
		const char *base = getenv("TMPDIR");
		snprintf(l->dir, sizeof(l->dir), "%s/scrm-unit-sdnotify-XXXXXX", base && *base ? base : "/tmp");
		assert_non_null(mkdtemp(l->dir));
		snprintf(l->env, sizeof(l->env), "%s/notify", l->dir);
		assert_true(strlen(l->env) < sizeof(sa.sun_path));
		memcpy(sa.sun_path, l->env, strlen(l->env));
		salen = (socklen_t)sizeof(sa);
	}
	assert_int_equal(bind(l->fd, (struct sockaddr *)&sa, salen), 0);
	assert_int_equal(setenv("NOTIFY_SOCKET", l->env, 1), 0);
}

static void listener_teardown(listener *l)
{
	close(l->fd);
	if (l->dir[0]) {
		unlink(l->env);
		rmdir(l->dir);
	}
	unsetenv("NOTIFY_SOCKET");
}

/* Receive one datagram (waiting at most 5 s): its text and sender pid. */
static void expect_message(listener *l, const char *want)
{
	char buf[512];
	union {
		struct cmsghdr align;
		char space[CMSG_SPACE(sizeof(struct ucred))];
	} ctl;
	struct iovec iov = {.iov_base = buf, .iov_len = sizeof(buf) - 1};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.space,
			    .msg_controllen = sizeof(ctl.space)};
	struct pollfd pf = {.fd = l->fd, .events = POLLIN};

	assert_int_equal(poll(&pf, 1, 5000), 1);
	ssize_t n = recvmsg(l->fd, &mh, MSG_DONTWAIT);
	assert_true(n >= 0);
	buf[n] = '\0';
	assert_string_equal(buf, want);
	int have_pid = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
			struct ucred uc;
			memcpy(&uc, CMSG_DATA(c), sizeof(uc));
			assert_int_equal(uc.pid, getpid());
			have_pid = 1;
		}
	assert_true(have_pid);
}

static void assert_no_message(listener *l)
{
	char buf[64];
	assert_true(recv(l->fd, buf, sizeof(buf), MSG_DONTWAIT) < 0);
}

static void not_under_systemd_is_a_no_op(void **state)
{
	(void)state;
	unsetenv("NOTIFY_SOCKET");
	assert_int_equal(platform__sd_notify("READY=1"), 0);
	setenv("NOTIFY_SOCKET", "", 1);
	assert_int_equal(platform__sd_notify("READY=1"), 0);
	unsetenv("NOTIFY_SOCKET");
}

static void path_socket_gets_each_state(void **state)
{
	(void)state;
	listener l;
	listener_setup(&l, 0);
	/* The daemon's life, in the order it sends them. */
	assert_int_equal(platform__sd_notify("READY=1\nSTATUS=connecting"), 0);
	expect_message(&l, "READY=1\nSTATUS=connecting");
	assert_int_equal(platform__sd_notify("WATCHDOG=1"), 0);
	expect_message(&l, "WATCHDOG=1");
	assert_int_equal(platform__sd_notify("RELOADING=1"), 0);
	expect_message(&l, "RELOADING=1");
	assert_int_equal(platform__sd_notify("READY=1"), 0);
	expect_message(&l, "READY=1");
	assert_int_equal(platform__sd_notify("STOPPING=1"), 0);
	expect_message(&l, "STOPPING=1");
	assert_no_message(&l);
	listener_teardown(&l);
}

static void abstract_socket(void **state)
{
	(void)state;
	listener l;
	listener_setup(&l, 1);
	assert_int_equal(platform__sd_notify("READY=1"), 0);
	expect_message(&l, "READY=1");
	assert_int_equal(platform__sd_notify("WATCHDOG=1"), 0);
	expect_message(&l, "WATCHDOG=1");
	listener_teardown(&l);
}

static void unreachable_or_bad_address_is_an_error(void **state)
{
	(void)state;
	/* Nobody listening: the caller gets -errno, never a crash or a hang. */
	setenv("NOTIFY_SOCKET", "/nonexistent-scrm-dir/notify", 1);
	assert_int_equal(platform__sd_notify("READY=1"), -ENOENT);
	char name[80];
	snprintf(name, sizeof(name), "@scrm-sdnotify-nobody/%ld", (long)getpid());
	setenv("NOTIFY_SOCKET", name, 1);
	assert_int_equal(platform__sd_notify("READY=1"), -ECONNREFUSED);
	/* Neither a path nor an abstract name (e.g. systemd's vsock:). */
	setenv("NOTIFY_SOCKET", "vsock:2:1234", 1);
	assert_int_equal(platform__sd_notify("READY=1"), -EAFNOSUPPORT);
	setenv("NOTIFY_SOCKET", "relative/notify", 1);
	assert_int_equal(platform__sd_notify("READY=1"), -EAFNOSUPPORT);
	/* Longer than sun_path. */
	char longpath[300];
	memset(longpath, 'a', sizeof(longpath) - 1);
	longpath[0] = '/';
	longpath[sizeof(longpath) - 1] = '\0';
	setenv("NOTIFY_SOCKET", longpath, 1);
	assert_int_equal(platform__sd_notify("READY=1"), -ENAMETOOLONG);
	longpath[0] = '@';
	setenv("NOTIFY_SOCKET", longpath, 1);
	assert_int_equal(platform__sd_notify("READY=1"), -ENAMETOOLONG);
	unsetenv("NOTIFY_SOCKET");
}

static void watchdog_period(void **state)
{
	(void)state;
	char pid[32];

	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
	assert_int_equal(platform__sd_watchdog_ms(), 0);

	/* WatchdogSec=30 in the unit: systemd passes 30000000. */
	setenv("WATCHDOG_USEC", "30000000", 1);
	assert_int_equal(platform__sd_watchdog_ms(), 30000);
	snprintf(pid, sizeof(pid), "%ld", (long)getpid());
	setenv("WATCHDOG_PID", pid, 1);
	assert_int_equal(platform__sd_watchdog_ms(), 30000);

	/* Meant for another process (we inherited our parent's environment). */
	snprintf(pid, sizeof(pid), "%ld", (long)getpid() + 1);
	setenv("WATCHDOG_PID", pid, 1);
	assert_int_equal(platform__sd_watchdog_ms(), 0);
	setenv("WATCHDOG_PID", "not-a-pid", 1);
	assert_int_equal(platform__sd_watchdog_ms(), 0);
	unsetenv("WATCHDOG_PID");

	/* Off, or values systemd never sends: no watchdog rather than a
	 * nonsense ping period. */
	setenv("WATCHDOG_USEC", "0", 1);
	assert_int_equal(platform__sd_watchdog_ms(), 0);
	setenv("WATCHDOG_USEC", "12x", 1);
	assert_int_equal(platform__sd_watchdog_ms(), 0);
	setenv("WATCHDOG_USEC", "-5000000", 1);
	assert_int_equal(platform__sd_watchdog_ms(), 0);
	setenv("WATCHDOG_USEC", "99999999999999999999999", 1);
	assert_int_equal(platform__sd_watchdog_ms(), 0);
	/* Below a millisecond still means "there is a watchdog". */
	setenv("WATCHDOG_USEC", "500", 1);
	assert_int_equal(platform__sd_watchdog_ms(), 1);
	unsetenv("WATCHDOG_USEC");
}

int main(int argc, char **argv)
{
	tu_select(argc, argv);
	srand((unsigned)getpid());
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(not_under_systemd_is_a_no_op),
		cmocka_unit_test(path_socket_gets_each_state),
		cmocka_unit_test(abstract_socket),
		cmocka_unit_test(unreachable_or_bad_address_is_an_error),
		cmocka_unit_test(watchdog_period),
	};
	return cmocka_run_group_tests_name("sdnotify", tests, NULL, NULL);
}
