/* SPDX-License-Identifier: Apache-2.0 */
/*
 * harden_itest: the programs that hold the device data key and decrypted
 * personal data keep them out of core dumps (issue 12, finding 11).
 *
 *   no_core_agent  the real scrm-agent, running (connected to a listener that
 *                  never answers, its cache and data key open): not dumpable
 *                  and RLIMIT_CORE 0, soft and hard
 *   no_core_ctl    the real scrmctl (fleet list, waiting for the broker): same
 *   no_core_unit   the shipped unit file says LimitCORE=0
 *
 * Whether another process is dumpable is read from /proc: the kernel makes
 * the files of /proc/<pid> owned by root when the process is not dumpable
 * (proc(5), PR_SET_DUMPABLE). So the program must not run as root: when this
 * test is root, the child drops to nobody (65534) before exec; otherwise it
 * runs as the test's own user.
 *
 * Usage: harden_itest SCENARIO. Needs SCRM_AGENT_BIN, SCRM_CTL_BIN and
 * SCRM_UNIT_FILE (agent/dist/scrm-agent.service).
 */
#include "itest.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOBODY 65534

/* A TCP listener on loopback that accepts and never answers: the program
 * under test connects, sends its MQTT CONNECT and waits for a CONNACK. */
static int listener(int *port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 4) != 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
		close(fd);
		return -1;
	}
	*port = ntohs(a.sin_port);
	return fd;
}

/* Accept one connection and read its first byte: an MQTT CONNECT (0x10)
 * means the program got past its start-up. The accepted socket in *conn. */
static int wait_connect(int lfd, int timeout_ms, int *conn)
{
	struct pollfd p = {.fd = lfd, .events = POLLIN};
	if (poll(&p, 1, timeout_ms) != 1)
		return -1;
	int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (c < 0)
		return -1;
	*conn = c;
	struct pollfd q = {.fd = c, .events = POLLIN};
	unsigned char b = 0;
	if (poll(&q, 1, timeout_ms) != 1 || read(c, &b, 1) != 1)
		return -1;
	return b == 0x10 ? 0 : -1;
}

/* Start argv (a target binary: after SCRM_TEST_EMULATOR's words) as nobody
 * when we are root, stdout+stderr to log. */
static pid_t spawn_unprivileged(const char *const *argv, const char *log)
{
	const char *emu = getenv("SCRM_TEST_EMULATOR");
	char *emu_copy = emu && *emu ? strdup(emu) : NULL;
	const char *full[40];
	int n = 0;
	for (char *save = NULL, *w = emu_copy ? strtok_r(emu_copy, " ", &save) : NULL; w && n < 8;
	     w = strtok_r(NULL, " ", &save))
		full[n++] = w;
	for (; *argv && n < 39; argv++)
		full[n++] = *argv;
	full[n] = NULL;
	int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
	if (fd < 0) {
		free(emu_copy);
		return -1;
	}
	pid_t pid = fork();
	if (pid == 0) {
		int in = open("/dev/null", O_RDONLY);
		if (in < 0 || dup2(in, 0) < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
			_exit(126);
		if (geteuid() == 0 &&
		    (setgroups(0, NULL) != 0 || setgid(NOBODY) != 0 || setuid(NOBODY) != 0)) {
			dprintf(2, "harden_itest: cannot drop to uid %d: %s\n", NOBODY, strerror(errno));
			_exit(126);
		}
		execvp(full[0], (char *const *)full);
		dprintf(2, "harden_itest: exec %s: %s\n", full[0], strerror(errno));
		_exit(127);
	}
	close(fd);
	free(emu_copy);
	return pid;
}

/* The first number after `key` on the line of `path` that starts with it. */
static int proc_field(const char *path, const char *key, long long *a, long long *b, char *word)
{
	char *text = th_read_file(path, NULL);
	if (!text)
		return -1;
	int rc = -1;
	for (char *line = text; line && *line;) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		if (strncmp(line, key, strlen(key)) == 0) {
			const char *v = line + strlen(key);
			if (word)
				rc = sscanf(v, " %31s %31s", word, word + 32) == 2 ? 0 : -1;
			else
				rc = sscanf(v, " %lld %lld", a, b) >= 1 ? 0 : -1;
			break;
		}
		line = nl ? nl + 1 : NULL;
	}
	free(text);
	return rc;
}

/* The running program `pid` (not root) is not dumpable and cannot dump core. */
static int check_no_core(pid_t pid, const char *what)
{
	char path[64], lim[64] = "";
	long long uid = -1, euid = -1;
	struct stat st;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	CHECK_GOTO(proc_field(path, "Uid:", &uid, &euid, NULL) == 0, "%s: no Uid in %s", what, path);
	CHECK_GOTO(uid != 0, "%s runs as root: cannot tell whether it is dumpable", what);
	/* proc(5): the files of a process that is not dumpable belong to root */
	snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
	CHECK_GOTO(stat(path, &st) == 0, "%s: stat %s: %s", what, path, strerror(errno));
	CHECK_GOTO(st.st_uid == 0, "%s (uid %lld) is dumpable: %s belongs to uid %lld, not root", what, uid, path,
	      (long long)st.st_uid);
	snprintf(path, sizeof(path), "/proc/%d/limits", (int)pid);
	CHECK_GOTO(proc_field(path, "Max core file size", NULL, NULL, lim) == 0, "%s: no core limit in %s", what, path);
	CHECK_GOTO(strcmp(lim, "0") == 0 && strcmp(lim + 32, "0") == 0, "%s: core file size limit soft %s hard %s, not 0 0",
	      what, lim, lim + 32);
	printf("%s (pid %d, uid %lld): not dumpable, RLIMIT_CORE 0/0\n", what, (int)pid, uid);
	return 0;
fail:
	return -1;
}

/* Make path owned by nobody when we are root (the program runs as nobody). */
static int give(const char *path)
{
	return geteuid() == 0 ? chown(path, NOBODY, NOBODY) : 0;
}

static int run_and_check(const char *name, const char *const *argv, int lfd, const char *log)
{
	int conn = -1, rc = -1;
	pid_t pid = spawn_unprivileged(argv, log);
	CHECK_GOTO(pid > 0, "%s: spawn", name);
	CHECK_GOTO(wait_connect(lfd, 60000 * itest_scale, &conn) == 0, "%s: no MQTT CONNECT within %d s", name, 60 * itest_scale);
	rc = check_no_core(pid, name);
fail:
	if (rc)
		th_dump_log(log, 3000);
	if (pid > 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	if (conn >= 0)
		close(conn);
	return rc;
}

static int no_core_agent(struct itest *e)
{
	const char *dir = e->dir;
	char store[512], cfg[512], log[512], text[2048];
	int port = 0, lfd = listener(&port), rc = -1;
	CHECK_GOTO(lfd >= 0, "listener");
	snprintf(store, sizeof(store), "%s/store", dir);
	snprintf(cfg, sizeof(cfg), "%s/agent.json", dir);
	snprintf(log, sizeof(log), "%s/agent.log", dir);
	CHECK_GOTO(mkdir(store, 0700) == 0 && give(store) == 0, "store dir");
	snprintf(text, sizeof(text),
		 "{\"tenant\":\"acme\",\"store_id\":\"s1\",\"device_id\":\"pos-01\",\"store_dir\":\"%s\","
		 "\"broker\":{\"uri\":\"mqtt://127.0.0.1:%d\",\"allow_plaintext\":true},"
		 "\"cache\":{\"enabled\":true},\"log\":{\"level\":\"debug\"}}",
		 store, port);
	CHECK_GOTO(th_write_file(cfg, text) == 0 && give(cfg) == 0, "config");
	const char *argv[] = {th_bin("SCRM_AGENT_BIN"), "--config", cfg, NULL};
	rc = run_and_check("scrm-agent", argv, lfd, log);
	/* it ran past opening its store and data key */
	if (rc == 0) {
		char key[600];
		snprintf(key, sizeof(key), "%s/private/keys/data.key", store);
		CHECK_GOTO(access(key, F_OK) == 0, "scrm-agent made no %s: did it get that far?", key);
	}
fail:
	if (lfd >= 0)
		close(lfd);
	return rc;
}

static int no_core_ctl(struct itest *e)
{
	const char *dir = e->dir;
	char uri[64], log[512], wait[16];
	int port = 0, lfd = listener(&port), rc = -1;
	CHECK_GOTO(lfd >= 0, "listener");
	snprintf(uri, sizeof(uri), "mqtt://127.0.0.1:%d", port);
	snprintf(log, sizeof(log), "%s/ctl.log", dir);
	snprintf(wait, sizeof(wait), "%d", 120000 * itest_scale);
	const char *argv[] = {th_bin("SCRM_FLEET_BIN"), "--broker", uri, "--tenant", "acme", "list",
			      "--wait-ms", wait, NULL};
	rc = run_and_check("scrmctl", argv, lfd, log);
fail:
	if (lfd >= 0)
		close(lfd);
	return rc;
}

static int no_core_unit(struct itest *e)
{
	(void)e;
	const char *unit = getenv("SCRM_UNIT_FILE");
	char *text = unit ? th_read_file(unit, NULL) : NULL;
	int found = 0;
	CHECK_GOTO(text, "SCRM_UNIT_FILE (%s) unreadable", unit ? unit : "unset");
	for (char *l = strstr(text, "LimitCORE="); l; l = strstr(l + 1, "LimitCORE="))
		if ((l == text || l[-1] == '\n') && strncmp(l, "LimitCORE=0\n", 12) == 0)
			found = 1;
	free(text);
	CHECK_GOTO(found, "%s: no LimitCORE=0 line", unit);
	printf("%s: LimitCORE=0\n", unit);
	return 0;
fail:
	return -1;
}

/* The program runs as nobody when we are root: its directory is nobody's. */
static int setup(struct itest *e)
{
	CHECK(give(e->dir) == 0, "tmpdir");
	return 0;
}

static const struct itest_suite suite = {
	.program = "harden_itest",
	.emulator_scale = 5,
	.bare = 1,
	.setup = setup,
	.scenarios = (const struct itest_scenario[]){
		{"no_core_agent", no_core_agent},
		{"no_core_ctl", no_core_ctl},
		{"no_core_unit", no_core_unit},
		{NULL, NULL},
	},
};

ITEST_MAIN(suite)
