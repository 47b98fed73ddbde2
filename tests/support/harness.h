/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Test harness shared by the integration tests, the benchmarks and the demo.
 *
 * It owns everything a test needs around the code under test: a throw-away
 * PKI (made with mbedTLS, so no `openssl` program is needed), a real
 * mosquitto broker with TLS on a free loopback port, child processes whose
 * output goes to log files, and a small MQTT 5/TLS client (Paho MQTTAsync)
 * for tests that play a device or watch a topic.
 *
 * Every child the harness starts is tracked and killed when the harness
 * process exits (atexit), and also if it dies abruptly (the children get
 * PR_SET_PDEATHSIG=SIGKILL). Linux caveat of the latter: the signal fires when
 * the *thread* that spawned the child exits, so spawn from the main thread or
 * from a thread that outlives its children.
 *
 * Environment conventions (set by CMake in each test's ENVIRONMENT):
 *   SCRM_CENTRAL_BIN    path of scrm-central (the reference central)
 *   SCRM_AGENT_BIN      path of scrm-agent (the daemon)
 *   SCRM_CTL_BIN        path of scrmctl (the CLI)
 *   SCRM_TEST_EMULATOR  words put before a *target* binary, e.g.
 *                       "qemu-aarch64 -L /path/sysroot". Under cross-arch
 *                       testing the test itself runs under qemu-user, and a
 *                       child target binary must be started through the
 *                       emulator explicitly. Host programs (mosquitto,
 *                       openssl) are never prefixed.
 *   SCRM_MOSQUITTO      mosquitto binary to run (default: "mosquitto" in PATH)
 *   TMPDIR              where th_tmpdir() creates directories (default /tmp)
 *
 * Errors: functions returning int give 0 (or a non-negative value such as a
 * port or an exit code) on success and a negative errno value on failure;
 * functions returning pointers give NULL. Every failure also prints one line
 * starting with "harness:" to stderr, so a test can simply report "failed".
 *
 * Threads: the process-related functions are safe to call from any thread.
 * A th_broker or th_mqtt handle must be used by one thread at a time.
 */
#ifndef SCRM_TESTS_HARNESS_H
#define SCRM_TESTS_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- time and files ------------------------------------------------- */

/* Monotonic milliseconds (CLOCK_MONOTONIC): for timeouts and durations. */
int64_t th_now_ms(void);

/* Wall clock, Unix milliseconds: for event timestamps. */
int64_t th_wall_ms(void);

/* Sleep for ms milliseconds (restarts after signals). */
void th_sleep_ms(int ms);

/* Create a fresh directory "$TMPDIR/scrm-<name>-XXXXXX" (mode 0700).
 * Returns a malloc'd path (owned by the caller, free()) or NULL. */
char *th_tmpdir(const char *name);

/* Remove a directory tree (does not follow symlinks). 0 or -errno. */
int th_rmtree(const char *path);

/* Replace the file at path with text (mode 0644). 0 or -errno. */
int th_write_file(const char *path, const char *text);

/* Read a whole file. Returns a malloc'd, NUL-terminated buffer (owned by the
 * caller) and its length in *len (if len != NULL), or NULL. */
char *th_read_file(const char *path, size_t *len);

/* Print the last max_bytes of a log file to stderr, framed with its name;
 * for failure messages. */
void th_dump_log(const char *path, size_t max_bytes);

/* ---- certificates ----------------------------------------------------- */

/* Make a test PKI in dir with mbedTLS (ECDSA P-256, SHA-256), PEM files:
 *   ca.crt/ca.key                test CA ("SCRM Test CA")
 *   server.crt/server.key        signed by ca, SAN IP:127.0.0.1, DNS:localhost
 *   client.crt/client.key        signed by ca, CN=pos-01 (clientAuth)
 *   central.crt/central.key      signed by ca, CN=scrm-central (clientAuth)
 *   other-ca.crt/other-ca.key    an unrelated CA, for "wrong CA" tests
 *   wronghost.crt/wronghost.key  signed by ca, SAN DNS:not-this-host.example
 * Keys are mode 0600; the broker reads them as the harness user (see
 * th_broker_start). Returns 0 or a negative value. */
int th_certs_make(const char *dir);

/* Issue one more client certificate <name>.crt/<name>.key with CN=cn, signed
 * by dir/ca.crt + dir/ca.key (made by th_certs_make). For tests with several
 * devices when the broker requires client certificates. 0 or negative. */
int th_certs_make_client(const char *dir, const char *name, const char *cn);

/* Play the device CA: sign the CSR at csr_path (PEM, e.g. from
 * `scrm-agent enroll`) with dir/<ca_name>.crt + .key ("ca" or "other-ca" of
 * th_certs_make) and write the certificate (PEM, 0644) to out_crt_path.
 * Subject and public key come from the CSR; a client certificate
 * (clientAuth, digitalSignature). Valid from a day ago for `days` days; a
 * negative `days` gives one that expired -days days ago. 0 or negative. */
int th_sign_csr(const char *dir, const char *ca_name, const char *csr_path, const char *out_crt_path,
		int days);

/* Play the device CA revoking certificates: write to out_path a CRL (X.509
 * v2, PEM "X509 CRL", the form mosquitto's crlfile reads) issued by
 * dir/<ca_name>.crt + .key, listing the serial of each certificate file in
 * revoked_crt (NULL-terminated, borrowed; NULL or empty: a CRL revoking
 * nothing, which a broker with crlfile needs so that the CA's valid
 * certificates connect). thisUpdate a day ago, nextUpdate in `days` days (a
 * negative value: a CRL that expired -days days ago). 0 or negative. */
int th_certs_make_crl(const char *dir, const char *ca_name, const char *const revoked_crt[], const char *out_path,
		      int days);

/* ---- processes -------------------------------------------------------- */

/* Start a host program (argv[0] looked up in PATH if it has no '/'), with
 * stdin from /dev/null and stdout+stderr appended to log_path (NULL:
 * /dev/null). argv is NULL-terminated and borrowed. Returns the pid (>0) or
 * -errno; a program that cannot be executed is reported here (-ENOENT...),
 * not as a child exiting with 127. */
pid_t th_spawn(const char *const argv[], const char *log_path);

/* Same for a binary built by this project: prefixed with the words of
 * SCRM_TEST_EMULATOR when that is set (see above). */
pid_t th_spawn_target(const char *const argv[], const char *log_path);

/* kill(pid, sig). 0 or -errno. */
int th_kill(pid_t pid, int sig);

/* Wait for a child to exit, up to timeout_ms (< 0: forever). On exit, stores
 * the raw wait status in *status (if not NULL) and returns 0; returns
 * -ETIMEDOUT if it is still running, or -errno. */
int th_wait(pid_t pid, int timeout_ms, int *status);

/* Exit code from a raw wait status: the exit status, or 128+signal. */
int th_exit_code(int status);

/* SIGTERM, wait up to timeout_ms, then SIGKILL and wait. Returns the exit
 * code (see th_exit_code) or -errno. */
int th_stop(pid_t pid, int timeout_ms);

/* Spawn (host / target program), wait up to timeout_ms, return the exit code
 * (0..255, 128+signal if killed). On timeout the child is killed and
 * -ETIMEDOUT returned; spawn errors return -errno. */
int th_run(const char *const argv[], const char *log_path, int timeout_ms);
int th_run_target(const char *const argv[], const char *log_path, int timeout_ms);

/* Poll the file at path (every 10 ms) until it contains needle. Returns 0,
 * or -ETIMEDOUT after timeout_ms. A missing file counts as empty. */
int th_wait_log(const char *path, const char *needle, int timeout_ms);

/* SIGKILL and reap every child still tracked. Registered with atexit() on
 * the first spawn; also callable directly (e.g. from a test's failure path). */
void th_kill_all(void);

/* getenv(name) for a binary path; prints "harness: NAME is not set" and
 * returns NULL when unset or empty. Borrowed pointer. */
const char *th_bin(const char *env_name);

/* ---- network and broker ------------------------------------------------ */

/* A TCP port that was free on 127.0.0.1 a moment ago (bind port 0, read it
 * back, close). Returns the port or -errno. */
int th_free_port(void);

typedef struct th_broker th_broker;

/* Start mosquitto with a TLS listener on 127.0.0.1:port (port <= 0: pick a
 * free one). Writes dir/mosquitto.conf (cafile dir/ca.crt, certfile and
 * keyfile dir/<cert_name>.crt/.key, cert_name being "server" or "wronghost";
 * log to dir/mosquitto.log, which also receives the broker's stdout/stderr;
 * persistence false; max_inflight_messages left at its default of 20). With
 * require_client_cert: require_certificate true, use_identity_as_username
 * true, allow_anonymous false; otherwise allow_anonymous true. Runs as the
 * harness user (sets "user root" when that is root, so the broker keeps read
 * access to the keys). Waits until the port accepts TCP (10 s).
 * Brokers started on the same dir share mosquitto.log.
 * Returns an owned handle (th_broker_free) or NULL. */
th_broker *th_broker_start(const char *dir, int port, const char *cert_name,
			   int require_client_cert);

/* Same, with extra_conf (borrowed; may be NULL) appended verbatim to the
 * config, e.g. "set_tcp_nodelay true\n" or "max_inflight_messages 50\n". */
th_broker *th_broker_start_ex(const char *dir, int port, const char *cert_name,
			      int require_client_cert, const char *extra_conf);

/* Start mosquitto with the caller's whole config text (borrowed), e.g. a
 * deployment example adapted to the test: it must listen on
 * 127.0.0.1:port with TLS and should log to dir/mosquitto.log. Written to
 * dir/mosquitto.conf; waits for the port like th_broker_start. */
th_broker *th_broker_start_conf(const char *dir, int port, const char *conf);

/* SIGTERM and wait (5 s, then SIGKILL). 0 or -errno; no-op if stopped. */
int th_broker_stop(th_broker *b);

/* SIGKILL and wait: a broker crash. 0 or -errno; no-op if stopped. */
int th_broker_kill(th_broker *b);

/* Stop (if running) and start again with the same port and config; waits
 * for the port like th_broker_start. 0 or -errno. */
int th_broker_restart(th_broker *b);

/* Stop (if running) and free. NULL is a no-op. */
void th_broker_free(th_broker *b);

int th_broker_port(const th_broker *b);
pid_t th_broker_pid(const th_broker *b);       /* -1 when stopped */
const char *th_broker_uri(const th_broker *b); /* "ssl://127.0.0.1:PORT", borrowed */
const char *th_broker_log(const th_broker *b); /* dir/mosquitto.log, borrowed */

/* ---- MQTT 5 test client (Paho MQTTAsync, TLS) ------------------------- */

typedef struct th_mqtt th_mqtt;

/* Zero-initialise, then set what you need: zero values are the secure
 * defaults (server certificate and host name verified, clean start). */
typedef struct th_mqtt_opts {
	const char *uri;       /* required: "ssl://127.0.0.1:PORT" */
	const char *client_id; /* required */
	const char *ca_file;   /* required: CA that signs the broker cert */
	const char *cert_file; /* optional client certificate */
	const char *key_file;  /* optional client key */
	int no_verify;         /* 1: verify neither certificate nor host name */
	int no_host_check;     /* 1: verify the chain but not the host name */
	int keep_session;      /* 1: Clean Start = 0 */
	int session_expiry_s;  /* Session Expiry Interval sent in CONNECT */
	int timeout_ms;        /* connect timeout; 0: 10000 */
} th_mqtt_opts;

/* A received message; owned by the caller (th_mqtt_msg_free). */
typedef struct th_mqtt_msg {
	char *topic;
	char *payload; /* NUL-terminated copy */
	size_t len;    /* payload length without the NUL */
	int qos;
	struct th_mqtt_msg *next; /* internal */
} th_mqtt_msg;

/* Connect (MQTT 5, TLS, Paho persistence off, no auto-reconnect). Waits for
 * the CONNACK. Returns an owned handle, or NULL with the reason (including
 * OpenSSL's words for TLS failures) in err (may be NULL).
 * Paho 1.3.12 quirk: while another MQTTAsync client of the same process is
 * connected, a connect takes about 2 s (Paho's select loop only notices the
 * new socket when its 1 s timeout expires); alone, about 60 ms. */
th_mqtt *th_mqtt_connect(const th_mqtt_opts *opts, char *err, size_t errlen);

/* Subscribe and wait for the SUBACK. 0, or negative (-reason for a SUBACK
 * refusal >= 0x80, e.g. -0x87; -ETIMEDOUT). */
int th_mqtt_subscribe(th_mqtt *m, const char *topic, int qos, int timeout_ms);

/* Publish and wait until it is complete (PUBACK for QoS 1). 0 or negative:
 * -reason (e.g. -0x87, Not authorized) when the broker refused it with an
 * MQTT 5 reason code. */
int th_mqtt_publish(th_mqtt *m, const char *topic, const void *payload,
		    size_t len, int qos, int timeout_ms);

/* Same, with the RETAIN flag when retain != 0. */
int th_mqtt_publish_ex(th_mqtt *m, const char *topic, const void *payload,
		       size_t len, int qos, int retain, int timeout_ms);

/* Publish without waiting for completion, but first wait (up to timeout_ms)
 * until fewer than window publishes are outstanding. Keep window below the
 * broker's Receive Maximum (mosquitto: 20): Paho 1.3.12 stalls above it.
 * 0 or negative. */
int th_mqtt_publish_window(th_mqtt *m, const char *topic, const void *payload,
			   size_t len, int qos, int window, int timeout_ms);

/* Wait until no publish is outstanding. Returns the number of publishes that
 * failed since connect (>= 0), or -ETIMEDOUT. */
int th_mqtt_drain(th_mqtt *m, int timeout_ms);

/* Next received message, waiting up to timeout_ms; NULL on timeout. */
th_mqtt_msg *th_mqtt_recv(th_mqtt *m, int timeout_ms);
void th_mqtt_msg_free(th_mqtt_msg *msg);

/* 1 while connected, 0 after the connection was lost. */
int th_mqtt_connected(th_mqtt *m);

/* Disconnect (if connected) and free. NULL is a no-op. */
void th_mqtt_close(th_mqtt *m);

/* Set TCP_NODELAY on every TCP socket of this process; returns how many.
 * Paho 1.3.12 leaves Nagle on and has no option for it: a small publish
 * written right after another small write (a PUBACK, a previous publish)
 * then waits for the broker's delayed TCP ACK, up to ~40 ms on loopback, and
 * a publish over 16 KiB (two TLS records) always does. Call after connecting
 * (and after every reconnect); it affects all clients of the process. */
int th_tcp_nodelay_all(void);

#ifdef __cplusplus
}
#endif

#endif /* SCRM_TESTS_HARNESS_H */
