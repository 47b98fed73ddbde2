/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-central, run.c: `run`: the one central's state, the main loop
 * (connect, subscribe, drain the inbound queue, flush acks, chunks and
 * verdicts), signals and stats.
 */
#include "central.h"

/* ======================================================================
 * state
 * ====================================================================== */

/* The one central (struct central in central.h). */
struct central g;

static volatile sig_atomic_t g_stop;

void wake_main(void)
{
	uint64_t one = 1;

	/* async-signal-safe; EAGAIN only if the counter would overflow */
	(void)!write(g.wake_fd, &one, sizeof one);
}

static void on_signal(int sig)
{
	(void)sig;
	g_stop = 1;
	wake_main();
}

/* ======================================================================
 * run
 * ====================================================================== */

/* A fresh Paho client. Paho's threads drive a TLS handshake from a select()
 * loop with a 1 s timeout, and once they are running a new connection waits
 * for that timeout: about 1 s per reconnect. When the last client is
 * destroyed the threads stop, and a new client connects in ~60 ms. So every
 * attempt after the first gets a new client (main thread only: Paho forbids
 * create/destroy in callbacks). */
static int mqtt_client_create(void)
{
	MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer5;
	int rc;

	rc = MQTTAsync_createWithOptions(&g.client, g.opt.broker, g.opt.client_id,
					 MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
	if (rc != MQTTASYNC_SUCCESS) {
		log_at(LVL_ERROR, "cannot create MQTT client", "broker=%s err=\"%s\"", g.opt.broker,
		       MQTTAsync_strerror(rc));
		g.client = NULL;
		return rc;
	}
	if (MQTTAsync_setCallbacks(g.client, NULL, on_connection_lost, on_message, NULL) !=
		    MQTTASYNC_SUCCESS ||
	    MQTTAsync_setConnected(g.client, NULL, on_connected) != MQTTASYNC_SUCCESS) {
		log_at(LVL_ERROR, "cannot set MQTT callbacks", NULL);
		MQTTAsync_destroy(&g.client);
		g.client = NULL;
		return MQTTASYNC_FAILURE;
	}
	return MQTTASYNC_SUCCESS;
}

static void mqtt_client_destroy(void)
{
	int i;

	if (g.client)
		MQTTAsync_destroy(&g.client);
	g.client = NULL;
	/* No callback comes after destroy: ack publishes still in flight are
	 * lost (their agents redeliver and get a fresh ack). */
	pthread_mutex_lock(&g.lock);
	for (i = 0; i < ACK_SLOTS; i++)
		g.slots[i].in_use = 0;
	g.connected = 0;
	g.connecting = 0;
	g.subscribed = 0;
	g.need_subscribe = 0;
	pthread_mutex_unlock(&g.lock);
}

static int mqtt_connect(void)
{
	MQTTAsync_connectOptions cc = MQTTAsync_connectOptions_initializer5;
	MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
	int rc;

	ssl.trustStore = g.opt.ca;
	ssl.keyStore = g.opt.cert;
	ssl.privateKey = g.opt.key;
	ssl.enableServerCertAuth = 1;
	ssl.verify = 1; /* host name check */
	ssl.ssl_error_cb = on_tls_error;
	cc.ssl = &ssl;
	cc.cleanstart = 1;
	cc.keepAliveInterval = 20;
	cc.connectTimeout = 10;
	/* Reconnects are driven by the main loop, not Paho's automatic
	 * reconnect: Paho retries after 1 s, then 2 s, 4 s..., and a test
	 * central that comes back seconds after the agents loses what they
	 * publish meanwhile (a broker drops messages nobody subscribes to),
	 * so later batches arrive before the dropped ones. */
	cc.automaticReconnect = 0;
	cc.onSuccess5 = on_connect_ok;
	cc.onFailure5 = on_connect_fail;
	pthread_mutex_lock(&g.lock);
	g.connecting = 1;
	pthread_mutex_unlock(&g.lock);
	rc = MQTTAsync_connect(g.client, &cc);
	if (rc != MQTTASYNC_SUCCESS) {
		pthread_mutex_lock(&g.lock);
		g.connecting = 0;
		pthread_mutex_unlock(&g.lock);
		log_at(LVL_WARN, "connect not started", "rc=%d err=\"%s\"", rc,
		       MQTTAsync_strerror(rc));
	}
	return rc;
}

static void mqtt_subscribe(void)
{
	MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
	static const char *const suffixes[] = { "up/events", "up/verdict/query", "up/cache/resync" };
	char topics[3][256];
	char *tp[3];
	int qos[3] = { 1, 1, 1 };
	int rc, i, n = g.opt.cache_dir ? 3 : 2;

	for (i = 0; i < n; i++) {
		if (g.opt.share)
			snprintf(topics[i], sizeof topics[i], "$share/%s/scrm/v1/+/+/+/%s",
				 g.opt.share, suffixes[i]);
		else
			snprintf(topics[i], sizeof topics[i], "scrm/v1/+/+/+/%s", suffixes[i]);
		tp[i] = topics[i];
	}
	ro.onSuccess5 = on_subscribe_ok;
	ro.onFailure5 = on_subscribe_fail;
	rc = MQTTAsync_subscribeMany(g.client, n, tp, qos, &ro);
	if (rc != MQTTASYNC_SUCCESS) {
		log_at(LVL_WARN, "subscribe not started; will retry", "rc=%d", rc);
		pthread_mutex_lock(&g.lock);
		g.need_subscribe = 1;
		pthread_mutex_unlock(&g.lock);
	} else {
		for (i = 0; i < n; i++)
			log_at(LVL_INFO, "subscribing", "topic=%s", topics[i]);
	}
}

static int ready_write(const char *path)
{
	char tmp[4096];
	FILE *f;
	int n = snprintf(tmp, sizeof tmp, "%s.tmp", path);

	if (n < 0 || (size_t)n >= sizeof tmp)
		return -1;
	f = fopen(tmp, "w");
	if (!f)
		return -1;
	fprintf(f, "ready pid=%ld\n", (long)getpid());
	if (fclose(f) != 0)
		return -1;
	/* rename: a watcher never sees a half-written file */
	return rename(tmp, path);
}

static void inbound_drain(void)
{
	struct inbound *list, *in;

	pthread_mutex_lock(&g.lock);
	list = g.in_head;
	g.in_head = g.in_tail = NULL;
	g.in_bytes = 0;
	g.backlog_warned = 0;
	pthread_mutex_unlock(&g.lock);
	while ((in = list)) {
		list = in->next;
		if (topic_ends_with(in->topic, "/up/cache/resync"))
			resync_handle(in->topic, in->payload, in->len);
		else if (topic_ends_with(in->topic, "/up/verdict/query"))
			verdict_query_handle(in->topic, in->payload, in->len);
		else
			batch_handle(in->topic, in->payload, in->len);
		acks_flush(); /* keep ack latency low under a backlog */
		verdicts_flush(0);
		free(in->topic);
		free(in->payload);
		free(in);
	}
}

static void stats_log(void)
{
	uint64_t confirmed, failed, chunks_confirmed, chunks_failed, v_confirmed, v_failed;

	pthread_mutex_lock(&g.lock);
	confirmed = g.acks_confirmed;
	failed = g.acks_failed;
	chunks_confirmed = g.chunks_confirmed;
	chunks_failed = g.chunks_failed;
	v_confirmed = g.verdicts_confirmed;
	v_failed = g.verdicts_failed;
	pthread_mutex_unlock(&g.lock);
	log_at(LVL_INFO, "stats",
	       "batches=%" PRIu64 " events_new=%" PRIu64 " duplicates=%" PRIu64
	       " conflicts=%" PRIu64 " rejected=%" PRIu64 " unackable=%" PRIu64
	       " dropped_batches=%" PRIu64 " acks_sent=%" PRIu64 " acks_confirmed=%" PRIu64
	       " acks_failed=%" PRIu64 " acks_dropped=%" PRIu64 " acks_pending=%zu"
	       " verdicts_accepted=%" PRIu64 " verdicts_rejected=%" PRIu64
	       " verdicts_redelivered=%" PRIu64 " verdicts_sent=%" PRIu64
	       " verdicts_confirmed=%" PRIu64 " verdicts_failed=%" PRIu64
	       " verdicts_dropped=%" PRIu64 " verdicts_pending=%zu",
	       g.c.batches, g.c.events_new, g.c.duplicates, g.c.conflicts, g.c.rejected,
	       g.c.unackable, g.c.batches_dropped, g.c.acks_sent, confirmed,
	       g.c.acks_failed + failed, g.c.acks_dropped, g.n_pending, g.c.verdicts_accepted,
	       g.c.verdicts_rejected, g.c.verdicts_redelivered, g.c.verdicts_sent, v_confirmed,
	       g.c.verdicts_failed + v_failed, g.c.verdicts_dropped, g.n_verdicts);
	if (g.opt.cache_dir)
		log_at(LVL_INFO, "cache stats",
		       "resync_requests=%" PRIu64 " resync_dropped=%" PRIu64
		       " snapshots_sent=%" PRIu64 " snapshots_in_progress=%zu chunks_sent=%" PRIu64
		       " chunks_confirmed=%" PRIu64 " chunks_failed=%" PRIu64
		       " chunks_dropped=%" PRIu64,
		       g.c.resync_requests, g.c.resync_dropped, g.c.snapshots_sent, g.n_jobs,
		       g.c.chunks_sent, chunks_confirmed, chunks_failed, g.c.chunks_dropped);
}

int cmd_run_main(void)
{
	struct sigaction sa;
	int64_t next_connect = 0, next_stats = tk_mono_ms() + STATS_EVERY_MS;
	uint64_t last_batches = 0, last_dropped = 0, last_cache = 0;
	unsigned connect_failures = 0, attempts = 0;
	int was_subscribed = 0;
	int exit_code = 1;

	g.wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (g.wake_fd < 0) {
		log_at(LVL_ERROR, "eventfd failed", "err=\"%s\"", strerror(errno));
		return 1;
	}
	pthread_mutex_init(&g.lock, NULL);
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (db_open(g.opt.db) != SQLITE_OK)
		goto cleanup_fd;

	if (mqtt_client_create() != MQTTASYNC_SUCCESS)
		goto cleanup_db;
	log_at(LVL_INFO, "starting", "broker=%s client_id=%s db=%s share=%s ack_window=%d",
	       g.opt.broker, g.opt.client_id, g.opt.db, g.opt.share ? g.opt.share : "-",
	       g.opt.ack_window);
	if (g.opt.verdict_delay_ms > 0)
		log_at(LVL_INFO, "coupon verdicts delayed (test hook)",
		       "verdict_delay_ms=%" PRId64, g.opt.verdict_delay_ms);
	if (g.opt.cache_dir)
		log_at(LVL_INFO, "serving cache snapshots",
		       "cache_dir=%s chunk_records=%d snapshot_delay_ms=%" PRId64
		       " drop_chunk=%" PRId64,
		       g.opt.cache_dir, g.opt.chunk_records, g.opt.snapshot_delay_ms,
		       g.opt.drop_chunk);
	next_connect = tk_mono_ms();

	while (!g_stop) {
		struct pollfd p = { .fd = g.wake_fd, .events = POLLIN, .revents = 0 };
		uint64_t drained;
		int failed, subscribe, subscribed, recv_max, idle;
		int64_t timeout = g.ack_head || next_connect ? 50 : 250, due;
		char why[256], tls[512];

		/* A snapshot waiting for a free slot is woken by the completion;
		 * one waiting for --snapshot-delay-ms needs the timeout. */
		due = snapshots_due_in();
		if (due >= 0 && due < timeout)
			timeout = due;
		due = verdicts_due_in(); /* --verdict-delay-ms */
		if (due >= 0 && due < timeout)
			timeout = due;
		poll(&p, 1, (int)timeout);
		(void)!read(g.wake_fd, &drained, sizeof drained);

		pthread_mutex_lock(&g.lock);
		failed = g.connect_failed;
		g.connect_failed = 0;
		subscribe = g.need_subscribe && g.connected;
		if (subscribe)
			g.need_subscribe = 0;
		subscribed = g.subscribed;
		recv_max = g.recv_max;
		idle = !g.connected && !g.connecting;
		memcpy(why, g.connect_why, sizeof why);
		memcpy(tls, g.tls_err, sizeof tls);
		pthread_mutex_unlock(&g.lock);

		if (failed) {
			char q1[300], q2[600];

			if (connect_failures++ % 40 == 0)
				log_at(LVL_WARN, "connect failed; retrying",
				       "broker=%s why=%s tls=%s attempts=%u every_ms=%d", g.opt.broker,
				       lq(q1, sizeof q1, why), lq(q2, sizeof q2, tls), connect_failures,
				       RECONNECT_EVERY_MS);
			next_connect = tk_mono_ms() + RECONNECT_EVERY_MS;
		}
		if (idle && !next_connect)
			next_connect = tk_mono_ms(); /* connection lost: at once */
		if (subscribed)
			connect_failures = 0;
		if (idle && next_connect && tk_mono_ms() >= next_connect) {
			next_connect = tk_mono_ms() + RECONNECT_EVERY_MS; /* unless it starts */
			if (attempts++ > 0) {
				mqtt_client_destroy();
				if (mqtt_client_create() != MQTTASYNC_SUCCESS)
					continue;
			}
			if (mqtt_connect() == MQTTASYNC_SUCCESS)
				next_connect = 0;
		}
		if (subscribe)
			mqtt_subscribe();
		if (subscribed && !was_subscribed) {
			/* Paho 1.3.12 leaves Nagle's algorithm on and exposes no
			 * socket option. Then the ack PUBLISH, written right after
			 * Paho's PUBACK for the batch, waits for the broker's delayed
			 * TCP ACK: ~40 ms per ack on loopback. This process has no TCP
			 * sockets but Paho's, so set TCP_NODELAY on all of them after
			 * each connect, the socket being new each time (Linux /proc;
			 * harmless if it fails). */
			int nodelay = tk_tcp_nodelay_all();

			log_at(LVL_INFO, "subscribed", "receive_maximum=%d ack_window=%d tcp_nodelay=%d",
			       recv_max,
			       recv_max > 0 && recv_max < g.opt.ack_window ? recv_max
									: g.opt.ack_window,
			       nodelay);
		}
		was_subscribed = subscribed;
		if (subscribed && !g.ready_written) {
			g.ready_written = 1;
			if (g.opt.ready_file && ready_write(g.opt.ready_file) != 0)
				log_at(LVL_ERROR, "cannot write ready file", "path=%s err=\"%s\"",
				       g.opt.ready_file, strerror(errno));
		}

		inbound_drain();
		acks_flush();
		verdicts_flush(0);
		snapshots_pump();
		slots_reclaim();
		if (tk_mono_ms() >= next_stats) {
			uint64_t cache = g.c.resync_requests + g.c.resync_dropped + g.c.chunks_sent;

			next_stats = tk_mono_ms() + STATS_EVERY_MS;
			g.peer_warns = 0;
			if (g.c.batches != last_batches || g.c.batches_dropped != last_dropped ||
			    cache != last_cache)
				stats_log();
			last_batches = g.c.batches;
			last_dropped = g.c.batches_dropped;
			last_cache = cache;
		}
	}

	/* Shutdown: store and ack what was received, give the acks a moment,
	 * then leave. Anything received after this is stored but not acked;
	 * the agents redeliver it and get the ack from the next run. */
	log_at(LVL_INFO, "stopping", NULL);
	inbound_drain();
	{
		int64_t until = tk_mono_ms() + 2000;

		/* Verdicts go without their --verdict-delay-ms: after this they
		 * would be lost (the device does not redeliver acked events). */
		verdicts_flush(1);
		while ((g.ack_head || g.verdict_head || slots_in_use() > 0) && tk_mono_ms() < until) {
			struct pollfd p = { .fd = g.wake_fd, .events = POLLIN, .revents = 0 };
			uint64_t drained;
			int connected;

			pthread_mutex_lock(&g.lock);
			connected = g.connected;
			pthread_mutex_unlock(&g.lock);
			if (!connected)
				break;
			poll(&p, 1, 20);
			(void)!read(g.wake_fd, &drained, sizeof drained);
			acks_flush();
			verdicts_flush(1);
		}
	}
	if (g.client && MQTTAsync_isConnected(g.client)) {
		MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer5;

		d.timeout = 1000;
		if (MQTTAsync_disconnect(g.client, &d) == MQTTASYNC_SUCCESS) {
			int64_t until = tk_mono_ms() + 1500;

			while (MQTTAsync_isConnected(g.client) && tk_mono_ms() < until)
				usleep(10000);
		}
	}
	inbound_drain();
	stats_log();
	if (g.n_verdicts)
		log_at(LVL_WARN, "verdicts not published before exit (lost)", "verdicts=%zu",
		       g.n_verdicts);
	exit_code = 0;

	mqtt_client_destroy();
	while (g.ack_head)
		ack_pop();
	while (g.verdict_head)
		verdict_pop();
	catalogue_free(&g.cat);
	jobs_free_all(); /* an unfinished snapshot: the agent times out and asks again */
cleanup_db:
	db_close();
cleanup_fd:
	close(g.wake_fd);
	log_at(LVL_INFO, "stopped", "exit_code=%d", exit_code);
	return exit_code;
}
