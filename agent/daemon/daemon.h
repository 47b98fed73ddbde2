/* SPDX-License-Identifier: Apache-2.0 */
/*
 * daemon: the running daemon's state, shared by the modules the loop drives
 * (sync.h is the daemon's entry point):
 *   loop.c        the poll loop, start and shutdown, routing of messages
 *   link.c        the MQTT connection: connect, backoff, reconnect with new
 *                 settings, the client's events, the link row
 *   uplink.c      delivery glue: outbox ↔ delivery.c ↔ MQTT, acks, verdicts
 *   cache_sync.c  the customer cache's streams: deltas, snapshots, resync,
 *                 erasure in the outbox
 *   health.c      heartbeat, birth, the clock's trust
 *   reconfig.c    reload, applying a new config, probation and rollback
 *   commands/     fleet commands (commands.h: they see a cmd__ctx, not this)
 * One owner thread: the loop's. Nothing here is for use outside agent/daemon
 * (and its unit tests).
 */
#ifndef SCRM_DAEMON_H
#define SCRM_DAEMON_H

#include "backoff.h"
#include "cache.h"
#include "config.h"
#include "crypto.h"
#include "delivery.h"
#include "fleet.h"
#include "mqtt.h"
#include "outbox.h"
#include "sbuf.h"
#include "tlsprobe.h"

#include <stddef.h>
#include <stdint.h>

struct sync {
	config cfg_own;    /* the running config; replaced by reload / config.set */
	const config *cfg; /* = &cfg_own */
	const char *level_override; /* --log-level, wins over log.level */
	outbox *ob;
	mqtt *mq;
	char topic_up[340], topic_down[340], topic_ack[340];
	char topic_store_cache[300], topic_resync[340], dev_cache_prefix[340];
	int connecting, connected, subscribed, subs_pending;
	cache *cache; /* NULL when cache.enabled is false or the cache failed to open */
	sbuf req;
	int window; /* effective: min(cfg window, Receive Maximum) */
	delivery dl; /* the delivery state machine (delivery.h) over ob and mq */
	size_t max_packet; /* the broker's Maximum Packet Size, 0 = none announced */
	size_t learned_packet; /* a limit the broker enforced without announcing it, 0 = none */
	struct {
		int token;
		size_t bytes;
	} pubs[2 * DELIVERY_MAX_WINDOW]; /* recent batch publishes, for a PUBACK refusing one */
	unsigned npubs;
	int64_t next_connect_ms; /* monotonic; 0 = none scheduled */
	backoff bo;
	int64_t last_activity_ms; /* monotonic */
	unsigned fail_streak; /* connect failures since the last success */
	int64_t link_refresh_ms; /* monotonic: next refresh of the link row */
	char topic_verdict[340], topic_verdict_query[340];
	int64_t next_verdict_query_ms; /* monotonic; 0 = none scheduled */
	/* fleet */
	char topic_state[340], topic_health[340], topic_cmd[340];
	int64_t birth_seq;          /* of the current/next connection */
	int64_t started_ms, started_mono;
	char boot[37];
	int64_t next_heartbeat_ms;  /* monotonic; 0 = none scheduled */
	int64_t connected_since_ms; /* wall; 0 while offline */
	int recv_max;               /* the broker's Receive Maximum */
	fleet__seen seen;            /* the replay guard of signed commands */
	crypto__verifier *cmd_key;  /* NULL: unsigned commands accepted */
	sbuf fb, fr;                /* fleet scratch: payload, result */
	int64_t probation_ms;       /* monotonic deadline of a broker change; 0 = none */
	tlsprobe *probe;            /* a diagnosis of a failed connect running in a thread; NULL = none */
	int reconnect_pending;      /* recreate the MQTT client after this turn */
	int recreate_pending;       /* the same, keeping the connection's backoff (packet too large) */
	int erasure_pending;        /* an erasure's old bytes are still in outbox.db-wal */
	unsigned outbox_gen;        /* outbox__generation last seen */
	int64_t n_commands;
	char last_rollback[300];
	int cmd_level;              /* log.level command in force, -1 = none */
	mqtt__event *deferred;      /* commands received while the client was being replaced */
	int signed_only;            /* fleet.command_key_file as at start */
};


/* link.c */
void link__topics(struct sync *s);
void link__schedule_reconnect(struct sync *s, int64_t now);
void link__start_connect(struct sync *s);
/* Record in the store whether central is reachable (capture reads it). */
void link__note(struct sync *s, int connected);
mqtt__opts link__mqtt_opts(const config *cfg, const char *password);
int link__read_password(const config *cfg, char **out);
int link__restart(struct sync *s, const char *why);
/* Drain the MQTT client's events. */
void link__handle_events(struct sync *s);

/* uplink.c */
/* The delivery adapter over s->ob and s->mq (ctx = s). */
delivery__io uplink__io(struct sync *s);
delivery__settings uplink__settings(const struct sync *s);
void uplink__set_window(struct sync *s);
void uplink__learn_packet_limit(struct sync *s, size_t refused);
void uplink__pump(struct sync *s);
void uplink__check_outbox(struct sync *s);
/* down/ack: parsed (proto/ack.h) and applied; a malformed one is ignored. */
void uplink__on_ack(struct sync *s, const char *payload, size_t len);
void uplink__on_verdict(struct sync *s, const char *payload, size_t len);
void uplink__verdict_query(struct sync *s);

/* cache_sync.c */
void cache_sync__open(struct sync *s);
/* cache__forget_fn: erase a member from the outbox and quarantined files. */
int cache_sync__forget(void *ctx, const char *member_id);
void cache_sync__pump(struct sync *s);
void cache_sync__on_message(struct sync *s, const char *topic, const char *stream, const char *payload, size_t len);

/* health.c */
int health__clock_trusted_ex(struct sync *s, int64_t wall, struct outbox__clock *ck);
int health__clock_trusted(struct sync *s, int64_t wall);
void health__cache_figures(struct sync *s, sbuf *out, int64_t now);
/* The heartbeat body, also the `status` command's result. */
void health__json(struct sync *s, sbuf *out);
void health__publish(struct sync *s);
void health__birth(struct sync *s);

/* reconfig.c */
void reconfig__keep_reserve(struct sync *s);
void reconfig__push_settings(struct sync *s);
void reconfig__apply_log_settings(struct sync *s);
void reconfig__apply(struct sync *s, config *next, int cls, const char *source);
void reconfig__probation_settle(struct sync *s, int rollback);
void reconfig__probation_at_start(struct sync *s);
void reconfig__reload(struct sync *s);

/* loop.c */
void loop__on_message(struct sync *s, const mqtt__event *e);

/* commands/commands.c: a down/cmd message, parsed, run and answered. */
void commands__on_message(struct sync *s, const mqtt__event *e);

#endif
