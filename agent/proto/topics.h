/* SPDX-License-Identifier: Apache-2.0 */
/*
 * topics: the MQTT topic tree of docs/protocol.md ("Topics") in one place.
 * A device's topics live under scrm/v1/{tenant}/{store}/{device}/, the
 * store's shared cache streams under scrm/v1/{tenant}/{store}/; the daemon
 * builds every topic it publishes or subscribes to from the prefixes and
 * the suffixes below. Pure: no I/O.
 */
#ifndef SCRM_TOPICS_H
#define SCRM_TOPICS_H

#include <stddef.h>
#include <stdio.h>
#include <string.h>

/* Under the device's prefix. */
#define TOPIC_UP_EVENTS "up/events"
#define TOPIC_UP_STATE "up/state"
#define TOPIC_UP_HEALTH "up/health"
#define TOPIC_UP_REPLY "up/reply"
#define TOPIC_UP_VERDICT_QUERY "up/verdict/query"
#define TOPIC_UP_CACHE_RESYNC "up/cache/resync"
#define TOPIC_DOWN_ALL "down/#"
#define TOPIC_DOWN_ACK "down/ack"
#define TOPIC_DOWN_VERDICT "down/verdict"
#define TOPIC_DOWN_CMD "down/cmd"
/* Under the device's or the store's prefix, followed by the stream name. */
#define TOPIC_DOWN_CACHE "down/cache/"
#define TOPIC_DOWN_CACHE_ALL "down/cache/+"

/* Inline, so a module compiled alone (config.c in its unit tests and fuzz
 * harnesses) needs no other source for them. */

static inline int topics__fits(int n, size_t cap)
{
	return n >= 0 && (size_t)n < cap ? 0 : -1;
}

/* "scrm/v1/{tenant}/{store}/{device}/"; 0, or -1 if it does not fit in n. */
static inline int topics__device_prefix(char *out, size_t n, const char *tenant, const char *store,
					const char *device)
{
	return topics__fits(snprintf(out, n, "scrm/v1/%s/%s/%s/", tenant, store, device), n);
}

/* "scrm/v1/{tenant}/{store}/"; 0, or -1 if it does not fit in n. */
static inline int topics__store_prefix(char *out, size_t n, const char *tenant, const char *store)
{
	return topics__fits(snprintf(out, n, "scrm/v1/%s/%s/", tenant, store), n);
}

/* prefix + suffix; 0, or -1 if it does not fit in n. */
static inline int topics__join(char *out, size_t n, const char *prefix, const char *suffix)
{
	return topics__fits(snprintf(out, n, "%s%s", prefix, suffix), n);
}

/* The stream name if `topic` is {prefix}down/cache/{stream}, else NULL. */
static inline const char *topics__cache_stream(const char *topic, const char *prefix)
{
	size_t n = strlen(prefix), k = strlen(TOPIC_DOWN_CACHE);
	if (strncmp(topic, prefix, n) != 0 || strncmp(topic + n, TOPIC_DOWN_CACHE, k) != 0)
		return NULL;
	return topic + n + k;
}

#endif
