/* SPDX-License-Identifier: Apache-2.0 */
/*
 * loop: the daemon's poll loop (see sync.h). It opens the store's files
 * (lock, private directory, outbox, cache), starts the connection and then
 * sleeps in poll() between events — signals, the MQTT client, commit
 * notifications of new captures (a datagram socket in the store directory,
 * platform.h), network changes, a connection diagnosis — and runs the
 * timers: reconnect, ack timeouts, heartbeat, verdict queries, probation,
 * the watchdog and the idle checkpoint. What each event does is in the
 * modules of daemon.h.
 */
#include "daemon.h"

#include "sync.h"

#include "birth.h"
#include "err.h"
#include "log.h"
#include "paths.h"
#include "platform.h"
#include "replay.h"
#include "topics.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#define IDLE_CHECKPOINT_MS 60000

void loop__on_message(struct sync *s, const mqtt__event *e)
{
	const char *stream = NULL;
	if (strcmp(e->topic, s->topic_ack) == 0)
		uplink__on_ack(s, e->payload, e->len);
	else if (strcmp(e->topic, s->topic_verdict) == 0)
		uplink__on_verdict(s, e->payload, e->len);
	else if (strcmp(e->topic, s->topic_cmd) == 0)
		commands__on_message(s, e);
	else if (s->cache && ((stream = topics__cache_stream(e->topic, s->cfg->store_prefix)) ||
			      (stream = topics__cache_stream(e->topic, s->cfg->topic_prefix))))
		cache_sync__on_message(s, e->topic, stream, e->payload, e->len);
	else
		LOG(LOG_DEBUG, "sync", "ignoring message on unknown topic", "topic=%s", e->topic);
}

static int open_signals(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	return signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
}

int sync__run(config *cfg_in, const char *level_override)
{
	struct sync s;
	int rc = 1, sig_fd = -1, note_fd = -1, net_fd = -1, lock_fd = -1;
	char *password = NULL;

	memset(&s, 0, sizeof(s));
	s.cfg_own = *cfg_in;
	memset(cfg_in, 0, sizeof(*cfg_in));
	s.cfg = &s.cfg_own;
	s.level_override = level_override;
	/* `cfg` always shows the running config: reloads replace the
	 * contents of s.cfg_own, never its address. */
	const config *cfg = s.cfg;
	s.recv_max = 65535;
	s.cmd_level = -1;
	s.started_ms = platform__wall_ms();
	s.started_mono = platform__mono_ms();
	platform__boot_id(s.boot);
	sbuf__init(&s.fb);
	sbuf__init(&s.fr);
	link__topics(&s);
	reconfig__apply_log_settings(&s);
	sbuf__init(&s.req);
	backoff__init(&s.bo, cfg->backoff_min_ms, cfg->backoff_max_ms);

	{
		/* One daemon per store: a second would steal the commit
		 * notifications and send every event twice. */
		char lock[4200];
		snprintf(lock, sizeof(lock), "%s/agent.lock", cfg->store_dir);
		platform__mkdirs(cfg->store_dir, 0700);
		lock_fd = platform__lock_file(lock);
		if (lock_fd < 0) {
			LOG(LOG_ERROR, "sync", lock_fd == -EWOULDBLOCK ? "another scrm-agent is already running on this store"
								       : "cannot lock the store",
			    "lock=%s err=\"%s\"", lock, strerror(-lock_fd));
			goto cleanup;
		}
	}
	{
		/* Keys, cache, remote settings and the replay guard live where
		 * only this user can write (paths.h); an older agent's files are
		 * moved there, a planted or foreign one refused. */
		char moved[600], q[600];
		if (paths__prepare(cfg->store_dir, cfg->keys_dir, moved, sizeof(moved)) != SCRM_OK) {
			LOG(LOG_ERROR, "sync", "refusing the store's private directory", "dir=%s err=%s", cfg->store_dir,
			    log__q(q, sizeof(q), scrm_errmsg()));
			goto cleanup;
		}
		if (moved[0])
			LOG(LOG_WARN, "sync", "moved an older agent's files into the private directory", "dir=%s/%s moved=%s",
			    cfg->store_dir, PATHS_PRIVATE_DIR, log__q(q, sizeof(q), moved));
	}
	/* Before the outbox and the client: a rollback changes the config. */
	reconfig__probation_at_start(&s);
	backoff__init(&s.bo, cfg->backoff_min_ms, cfg->backoff_max_ms);
	reconfig__apply_log_settings(&s);
	/* Checked at start: a damaged outbox is moved to quarantine/ and a
	 * fresh one opened (alarm "outbox_quarantined" raised in it). */
	if (outbox__open_checked(cfg->store_dir, cfg->device_id, 5000, &s.ob) != SCRM_OK) {
		char q[600];
		LOG(LOG_ERROR, "sync", "cannot open the outbox", "dir=%s err=%s", cfg->store_dir, log__q(q, sizeof(q), scrm_errmsg()));
		goto cleanup;
	}
	if (outbox__quarantined(s.ob))
		LOG(LOG_ERROR, "sync", "the outbox was damaged: moved to quarantine, capturing into a fresh one",
		    "quarantined=%s", outbox__quarantined(s.ob));
	if (cfg->cache_enabled)
		cache_sync__open(&s);
	if (link__read_password(cfg, &password) != SCRM_OK) {
		char q[600];
		LOG(LOG_ERROR, "sync", "cannot read the broker password", "err=%s", log__q(q, sizeof(q), scrm_errmsg()));
		goto cleanup;
	}
	mqtt__opts mo = link__mqtt_opts(cfg, password);
	if (mqtt__create(&mo, &s.mq) != SCRM_OK) {
		LOG(LOG_ERROR, "sync", "cannot create the MQTT client", "uri=%s", cfg->broker_uri);
		goto cleanup;
	}
	if ((sig_fd = open_signals()) < 0) {
		LOG(LOG_ERROR, "sync", "cannot set up signal handling", "err=\"%s\"", strerror(errno));
		goto cleanup;
	}
	if ((note_fd = platform__notify_bind(cfg->store_dir)) < 0)
		LOG(LOG_WARN, "sync", "no commit notifications; new events are noticed on the periodic check only",
		    "path=%s/%s err=\"%s\"", cfg->store_dir, PLATFORM_NOTIFY_SOCK, strerror(-note_fd));
	net_fd = platform__netwatch_open(); /* optional: without it we rely on backoff */
	if (cfg->plaintext)
		LOG(LOG_WARN, "sync", "PLAINTEXT MQTT: events and credentials cross the network unencrypted",
		    "uri=%s", cfg->broker_uri);
	{
		scrm_outbox_stats st;
		if (outbox__stats(s.ob, &st) == SCRM_OK)
			LOG(LOG_INFO, "sync", "started", "device=%s store_dir=%s pending=%lld last_seq=%lld uri=%s",
			    cfg->device_id, cfg->store_dir, (long long)st.pending, (long long)st.last_seq, cfg->broker_uri);
	}
	if (outbox__link_set(s.ob, 0, platform__wall_ms()) != SCRM_OK)
		LOG(LOG_WARN, "sync", "cannot record the link state in the store", "err=\"%s\"", scrm_errmsg());
	reconfig__push_settings(&s);
	s.outbox_gen = outbox__generation(s.ob);
	s.signed_only = cfg->command_key_file != NULL;
	{
		char path[4200];
		paths__private(cfg->store_dir, PATHS_SEEN_IDS, path, sizeof(path));
		if (replay__open(&s.seen, path, platform__wall_ms()) != 0)
			LOG(LOG_ERROR, "fleet", "cannot read the signed command ids; every signed command will be refused",
			    "path=%s", path);
	}
	if (cfg->command_key_file) {
		char q[600];
		if (crypto__verifier_load(cfg->command_key_file, &s.cmd_key) != SCRM_OK) {
			s.cmd_key = NULL;
			LOG(LOG_ERROR, "fleet", "cannot load fleet.command_key_file; every command will be refused", "err=%s",
			    log__q(q, sizeof(q), scrm_errmsg()));
		}
	}
	if (cfg->overlay_error) {
		char q[600];
		LOG(LOG_ERROR, "fleet", "remote config ignored; running on the local file", "reason=%s",
		    log__q(q, sizeof(q), cfg->overlay_error));
	}
	{
		delivery__io io = uplink__io(&s);
		delivery__settings ds = uplink__settings(&s);
		delivery__init(&s.dl, &io, &ds);
		uplink__set_window(&s);
	}
	link__start_connect(&s);
	s.last_activity_ms = platform__mono_ms();
	/* systemd (Type=notify): ready once the outbox is open and capture
	 * can be shipped; the watchdog is fed from the loop, so a wedged loop
	 * gets the service restarted. Both are no-ops outside systemd. */
	int64_t watchdog_ms = platform__sd_watchdog_ms() / 2, next_watchdog = 0;
	platform__sd_notify("READY=1\nSTATUS=running");

	for (;;) {
		/* poll() skips entries whose fd is negative. */
		struct pollfd pf[5] = {
			{.fd = sig_fd, .events = POLLIN},
			{.fd = mqtt__fd(s.mq), .events = POLLIN},
			{.fd = note_fd, .events = POLLIN},
			{.fd = net_fd, .events = POLLIN},
			{.fd = s.probe ? tlsprobe__fd(s.probe) : -1, .events = POLLIN},
		};
		/* Timers run on the monotonic clock: an NTP step of the wall
		 * clock must neither stall reconnects nor fire ack timeouts. */
		int64_t now = platform__mono_ms();
		int64_t wake = now + IDLE_CHECKPOINT_MS;
		if (!s.connected && !s.connecting && s.next_connect_ms && s.next_connect_ms < wake)
			wake = s.next_connect_ms;
		if (s.connected && delivery__deadline(&s.dl) && delivery__deadline(&s.dl) < wake)
			wake = delivery__deadline(&s.dl);
		if (s.link_refresh_ms && s.link_refresh_ms < wake)
			wake = s.link_refresh_ms;
		if (s.connected && s.subscribed && s.next_heartbeat_ms && s.next_heartbeat_ms < wake)
			wake = s.next_heartbeat_ms;
		if (s.connected && s.subscribed && s.next_verdict_query_ms && s.next_verdict_query_ms < wake)
			wake = s.next_verdict_query_ms;
		if (s.probation_ms && !(s.connected && s.subscribed) && s.probation_ms < wake)
			wake = s.probation_ms;
		if (watchdog_ms > 0) {
			if (now >= next_watchdog) {
				platform__sd_notify("WATCHDOG=1");
				next_watchdog = now + watchdog_ms;
			}
			if (next_watchdog < wake)
				wake = next_watchdog;
		}
		if (s.cache && s.connected && s.subscribed) {
			int64_t d = cache__next_deadline(s.cache);
			if (d && d < wake)
				wake = d;
		}
		int timeout = wake <= now ? 0 : (int)(wake - now);
		int n = poll(pf, 5, timeout);
		if (n < 0 && errno != EINTR) {
			LOG(LOG_ERROR, "sync", "poll failed", "err=\"%s\"", strerror(errno));
			goto cleanup;
		}
		now = platform__mono_ms();
		if (n > 0 && (pf[0].revents & POLLIN)) {
			struct signalfd_siginfo si;
			int stop = 0;
			while (read(sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
				if (si.ssi_signo == SIGHUP) {
					platform__sd_notify("RELOADING=1");
					reconfig__reload(&s);
					platform__sd_notify("READY=1");
				}
				else
					stop = 1;
			}
			if (stop)
				break;
		}
		if (n > 0 && (pf[1].revents & POLLIN)) {
			platform__waker_drain(mqtt__fd(s.mq));
			link__handle_events(&s);
		}
		if (n > 0 && (pf[2].revents & POLLIN)) {
			platform__notify_drain(note_fd);
			uplink__pump(&s);
		}
		if (n > 0 && s.probe && (pf[4].revents & POLLIN)) {
			char why[400], q[450];
			tlsprobe__finish(s.probe, why, sizeof(why));
			s.probe = NULL;
			LOG(LOG_ERROR, "sync", "broker connection diagnosis", "uri=%s diagnosis=%s", cfg->broker_uri,
			    log__q(q, sizeof(q), why));
		}
		if (n > 0 && net_fd >= 0 && (pf[3].revents & POLLIN)) {
			platform__netwatch_drain(net_fd);
			if (!s.connected && !s.connecting) {
				LOG(LOG_INFO, "sync", "network changed; reconnecting now", NULL);
				backoff__reset(&s.bo);
				s.next_connect_ms = now;
			}
		}
		if (!s.connected && !s.connecting && s.next_connect_ms && s.next_connect_ms <= now)
			link__start_connect(&s);
		if (s.connected && s.link_refresh_ms && s.link_refresh_ms <= now)
			link__note(&s, 1);
		if (s.connected && s.subscribed && s.next_heartbeat_ms && s.next_heartbeat_ms <= now)
			health__publish(&s);
		if (s.connected && s.subscribed && s.next_verdict_query_ms && s.next_verdict_query_ms <= now)
			uplink__verdict_query(&s);
		if (s.probation_ms && s.probation_ms <= now && !(s.connected && s.subscribed))
			reconfig__probation_settle(&s, 1);
		if (s.reconnect_pending) {
			s.reconnect_pending = 0;
			link__restart(&s, "reconfigure");
		}
		if (s.connected)
			delivery__tick(&s.dl);
		if (s.cache) {
			int64_t d = cache__next_deadline(s.cache);
			if (d && d <= now)
				cache_sync__pump(&s);
		}
		uplink__check_outbox(&s);
		if (now - s.last_activity_ms >= IDLE_CHECKPOINT_MS) {
			/* Idle: checkpoint, and catch events whose notification was
			 * lost (e.g. captured by a tool that cannot reach the socket). */
			if (s.erasure_pending && outbox__scrub_wal(s.ob) == SCRM_OK) {
				s.erasure_pending = 0;
				LOG(LOG_INFO, "sync", "erasure finished: the outbox's WAL is scrubbed", NULL);
			} else {
				outbox__checkpoint(s.ob);
			}
			if (s.cache)
				cache__checkpoint(s.cache);
			reconfig__keep_reserve(&s);
			/* local history, shown lists, settled redemptions, receipts */
			outbox__prune_activity(s.ob, platform__wall_ms() - cfg->activity_days * 86400000LL,
					       platform__wall_ms());
			uplink__pump(&s);
			s.last_activity_ms = now;
		}
	}
	rc = 0;
	platform__sd_notify("STOPPING=1");
	LOG(LOG_INFO, "sync", "stopping", "published=%lld acked=%lld redeliveries=%lld unacked_batches=%d",
	    (long long)s.dl.n_published, (long long)s.dl.n_acked, (long long)s.dl.n_redeliveries, s.dl.nwin);
cleanup:
	/* A diagnosis still running is abandoned, not waited for. */
	tlsprobe__cancel(s.probe);
	s.probe = NULL;
	if (s.ob)
		outbox__link_set(s.ob, 0, platform__wall_ms());
	if (s.mq && s.connected) {
		/* A clean DISCONNECT suppresses the will: say goodbye ourselves. */
		birth__state_json(&s.fb, cfg, "offline", "shutdown", s.birth_seq, platform__wall_ms(), s.started_ms, s.boot, NULL);
		if (!s.fb.oom)
			mqtt__publish(s.mq, s.topic_state, s.fb.p, s.fb.len, 1, 1, NULL);
	}
	if (s.mq) {
		mqtt__disconnect(s.mq, 1000);
		mqtt__destroy(s.mq);
	}
	if (s.cache) {
		cache__checkpoint(s.cache);
		cache__close(s.cache);
	}
	if (s.ob) {
		outbox__checkpoint(s.ob);
		outbox__close(s.ob);
	}
	sbuf__free(&s.req);
	if (sig_fd >= 0)
		close(sig_fd);
	if (note_fd >= 0) {
		char sock[4200];
		close(note_fd);
		snprintf(sock, sizeof(sock), "%s/%s", cfg->store_dir, PLATFORM_NOTIFY_SOCK);
		unlink(sock);
	}
	if (net_fd >= 0)
		close(net_fd);
	if (lock_fd >= 0)
		close(lock_fd);
	free(password);
	delivery__free(&s.dl);
	sbuf__free(&s.fb);
	sbuf__free(&s.fr);
	crypto__verifier_free(s.cmd_key);
	replay__close(&s.seen);
	while (s.deferred) {
		mqtt__event *d = s.deferred;
		s.deferred = d->next;
		mqtt__event_free(d);
	}
	config__free(&s.cfg_own);
	return rc;
}
