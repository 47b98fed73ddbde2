/* SPDX-License-Identifier: Apache-2.0 */
/*
 * notify_listen: plays systemd's side of Type=notify for the package test, so
 * the installed daemon can be checked where no systemd runs (containers, CI,
 * qemu-user). It binds a unix datagram socket with SO_PASSCRED, starts the
 * command with NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID set as systemd
 * sets them, and walks the service through its life:
 *
 *   READY=1 within --ready-ms           (the daemon is up)
 *   WATCHDOG=1 within 1.5 x the period  (it pings the watchdog), twice
 *   SIGHUP -> RELOADING=1, then READY=1 (ExecReload)
 *   SIGTERM -> STOPPING=1, exit status 0 (systemctl stop)
 *
 * Every message must come from the command's own pid (NotifyAccess=main); under
 * qemu-user the emulator runs the guest in the same process, so that still holds.
 * Prints each message as it arrives and one "FAIL: ..." line naming the first
 * step that did not happen; exit 0 when all did, 1 otherwise, 2 on usage.
 *
 * Usage: notify_listen SOCKET_PATH [--ready-ms N] [--watchdog-ms N] -- CMD [ARG...]
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int sock = -1;
static pid_t child = -1;
static int child_status = -1; /* waitpid status once it has exited */
static int64_t t0;

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int parse_ms(const char *s, int64_t *out)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno || end == s || *end || v <= 0)
		return -1;
	*out = v;
	return 0;
}

static void reap(int flags)
{
	if (child > 0 && child_status == -1) {
		int st;
		if (waitpid(child, &st, flags) == child)
			child_status = st;
	}
}

/* One datagram into buf (NUL-terminated, at most cap - 1 bytes): its length,
 * or -1 when none is waiting. *from is the sender's pid as the kernel vouches
 * for it (SCM_CREDENTIALS), -1 without one. */
static ssize_t recv_notify(char *buf, size_t cap, pid_t *from)
{
	_Alignas(struct cmsghdr) char ctl[CMSG_SPACE(sizeof(struct ucred))];
	struct iovec iov = {.iov_base = buf, .iov_len = cap - 1};
	struct msghdr mh;
	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = ctl;
	mh.msg_controllen = sizeof(ctl);
	*from = -1;
	ssize_t got = recvmsg(sock, &mh, MSG_DONTWAIT);
	if (got < 0)
		return -1;
	buf[got] = '\0';
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
			struct ucred uc;
			memcpy(&uc, CMSG_DATA(c), sizeof(uc));
			*from = uc.pid;
		}
	return got;
}

/* Wait until a datagram containing the line `want` arrives (1), the child
 * exits (0) or the deadline passes (0). Prints every message seen. */
static int wait_for(const char *want, int64_t timeout_ms)
{
	int64_t deadline = now_ms() + timeout_ms;
	for (;;) {
		reap(WNOHANG);
		if (child_status != -1) {
			/* A last message may still be queued. */
			struct pollfd pf = {.fd = sock, .events = POLLIN};
			if (poll(&pf, 1, 0) <= 0)
				return 0;
		}
		int64_t left = deadline - now_ms();
		if (left <= 0)
			return 0;
		struct pollfd pf = {.fd = sock, .events = POLLIN};
		int n = poll(&pf, 1, left > 200 ? 200 : (int)left);
		if (n <= 0)
			continue;
		char buf[4096];
		pid_t from;
		if (recv_notify(buf, sizeof(buf), &from) < 0)
			continue;
		for (char *p = buf; *p; p++)
			if (*p == '\n')
				*p = '|';
		printf("notify_listen: +%lld ms from pid %ld: %s\n", (long long)(now_ms() - t0), (long)from, buf);
		fflush(stdout);
		if (from != child) {
			printf("FAIL: message from pid %ld, not the main process %ld (NotifyAccess=main drops it)\n",
			       (long)from, (long)child);
			continue;
		}
		/* Lines were joined with '|' above; match a whole line. */
		size_t wl = strlen(want);
		for (char *line = buf; line && *line;) {
			char *bar = strchr(line, '|');
			size_t ll = bar ? (size_t)(bar - line) : strlen(line);
			if (ll == wl && memcmp(line, want, wl) == 0)
				return 1;
			line = bar ? bar + 1 : NULL;
		}
	}
}

static int fail(const char *what)
{
	reap(WNOHANG);
	if (child_status != -1) {
		if (WIFEXITED(child_status))
			printf("FAIL: %s (the daemon exited with status %d)\n", what, WEXITSTATUS(child_status));
		else
			printf("FAIL: %s (the daemon died of signal %d)\n", what, WTERMSIG(child_status));
	} else {
		printf("FAIL: %s\n", what);
		kill(child, SIGKILL);
		reap(0);
	}
	return 1;
}

int main(int argc, char **argv)
{
	int64_t ready_ms = 60000, wd_ms = 2000;
	int i = 2;

	if (argc < 4)
		goto usage;
	for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
		if (strcmp(argv[i], "--ready-ms") == 0 && i + 1 < argc) {
			if (parse_ms(argv[++i], &ready_ms))
				goto usage;
		} else if (strcmp(argv[i], "--watchdog-ms") == 0 && i + 1 < argc) {
			if (parse_ms(argv[++i], &wd_ms))
				goto usage;
		} else {
			goto usage;
		}
	}
	if (i + 1 >= argc)
		goto usage;
	char **cmd = argv + i + 1;

	struct sockaddr_un sa;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	if (strlen(argv[1]) >= sizeof(sa.sun_path)) {
		fprintf(stderr, "notify_listen: socket path too long: %s\n", argv[1]);
		return 2;
	}
	memcpy(sa.sun_path, argv[1], strlen(argv[1]));
	unlink(argv[1]);
	int one = 1;
	if ((sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) < 0 ||
	    setsockopt(sock, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) != 0 ||
	    bind(sock, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		perror("notify_listen: socket");
		return 2;
	}

	t0 = now_ms();
	fflush(stdout);
	child = fork();
	if (child < 0) {
		perror("notify_listen: fork");
		return 2;
	}
	if (child == 0) {
		char usec[32], pid[32];
		snprintf(usec, sizeof(usec), "%lld", (long long)wd_ms * 1000);
		snprintf(pid, sizeof(pid), "%ld", (long)getpid());
		setenv("NOTIFY_SOCKET", argv[1], 1);
		setenv("WATCHDOG_USEC", usec, 1);
		setenv("WATCHDOG_PID", pid, 1);
		execvp(cmd[0], cmd);
		fprintf(stderr, "notify_listen: cannot run %s: %s\n", cmd[0], strerror(errno));
		_exit(127);
	}
	printf("notify_listen: started pid %ld, WATCHDOG_USEC=%lld\n", (long)child, (long long)wd_ms * 1000);

	if (!wait_for("READY=1", ready_ms))
		return fail("no READY=1 (sd_notify not wired into the daemon?)");
	/* The daemon should ping at half the period; allow 1.5 periods each. */
	for (int k = 0; k < 2; k++)
		if (!wait_for("WATCHDOG=1", wd_ms * 3 / 2))
			return fail("no WATCHDOG=1 within 1.5 x WATCHDOG_USEC");
	kill(child, SIGHUP);
	if (!wait_for("RELOADING=1", 10000))
		return fail("no RELOADING=1 after SIGHUP");
	if (!wait_for("READY=1", 30000))
		return fail("no READY=1 after the reload");
	kill(child, SIGTERM);
	if (!wait_for("STOPPING=1", 10000))
		return fail("no STOPPING=1 after SIGTERM");
	int64_t deadline = now_ms() + 30000;
	while (child_status == -1 && now_ms() < deadline) {
		reap(WNOHANG);
		if (child_status == -1)
			usleep(50000);
	}
	if (child_status == -1)
		return fail("still running 30 s after SIGTERM");
	if (!WIFEXITED(child_status) || WEXITSTATUS(child_status) != 0)
		return fail("SIGTERM did not end in a clean exit");
	printf("notify_listen: READY, WATCHDOG x2, RELOADING+READY, STOPPING, exit 0 in %lld ms\n",
	       (long long)(now_ms() - t0));
	unlink(argv[1]);
	return 0;

usage:
	fprintf(stderr, "usage: notify_listen SOCKET_PATH [--ready-ms N] [--watchdog-ms N] -- CMD [ARG...]\n");
	return 2;
}
