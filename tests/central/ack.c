/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scrm-central, ack.c: acks: a window of QoS 1 publishes below the broker's
 * Receive Maximum, the acks waiting for a slot or a connection.
 */
#include "central.h"

/* ======================================================================
 * acks: a window of QoS 1 publishes below the broker's Receive Maximum
 * ====================================================================== */

void ack_queue(char *topic, struct sbuf *payload)
{
	struct pending_ack *a = calloc(1, sizeof *a);

	if (!a || !topic) {
		free(a);
		free(topic);
		free(payload->p);
		log_at(LVL_ERROR, "out of memory queueing ack", NULL);
		return;
	}
	a->topic = topic;
	a->payload = payload->p;
	a->len = payload->len;
	a->queued_ms = tk_mono_ms();
	g.acks_queued++;
	if (g.ack_tail)
		g.ack_tail->next = a;
	else
		g.ack_head = a;
	g.ack_tail = a;
	g.n_pending++;
}

void ack_pop(void)
{
	struct pending_ack *a = g.ack_head;

	g.ack_head = a->next;
	if (!g.ack_head)
		g.ack_tail = NULL;
	g.n_pending--;
	g.acks_popped++;
	free(a->topic);
	free(a->payload);
	free(a);
}

void *slot_context(int idx, uint32_t gen)
{
	return (void *)(uintptr_t)(((uintptr_t)gen << 8) | (uintptr_t)idx);
}

/* Paho thread: a publish completed; free its slot and count it. */
void slot_complete(void *ctx, uint64_t *counter)
{
	uintptr_t v = (uintptr_t)ctx;
	int idx = (int)(v & 0xff);
	uint32_t gen = (uint32_t)(v >> 8);

	if (idx >= ACK_SLOTS)
		return;
	pthread_mutex_lock(&g.lock);
	if (g.slots[idx].in_use && (g.slots[idx].gen & (UINT32_MAX >> 8)) == gen) {
		g.slots[idx].in_use = 0;
		(*counter)++;
	}
	pthread_mutex_unlock(&g.lock);
	wake_main();
}

static void on_ack_ok(void *ctx, MQTTAsync_successData5 *resp)
{
	(void)resp;
	slot_complete(ctx, &g.acks_confirmed);
}

static void on_ack_fail(void *ctx, MQTTAsync_failureData5 *resp)
{
	(void)resp;
	/* Not fatal: the agent redelivers and gets a fresh ack. */
	slot_complete(ctx, &g.acks_failed);
}

void on_chunk_ok(void *ctx, MQTTAsync_successData5 *resp)
{
	(void)resp;
	slot_complete(ctx, &g.chunks_confirmed);
}

void on_chunk_fail(void *ctx, MQTTAsync_failureData5 *resp)
{
	(void)resp;
	/* Not fatal: the agent times out and asks to resume from this chunk. */
	slot_complete(ctx, &g.chunks_failed);
}

static int window_limit(void)
{
	int w = g.opt.ack_window;

	/* caller holds g.lock */
	if (g.recv_max > 0 && w > g.recv_max)
		w = g.recv_max;
	return w;
}

/* Main thread: take a window slot for one publish. Snapshot chunks may use
 * all but one slot of the window, so a long snapshot never holds up acks
 * (acks are flushed first, chunks fill what is left). Returns the slot
 * index and its generation in *gen, or -1 (not connected, window full). */
int slot_take(int is_chunk, uint32_t *gen)
{
	int i, used = 0, chunks = 0, free_idx = -1, limit;

	pthread_mutex_lock(&g.lock);
	for (i = 0; i < ACK_SLOTS; i++) {
		if (g.slots[i].in_use) {
			used++;
			chunks += g.slots[i].is_chunk;
		} else if (free_idx < 0) {
			free_idx = i;
		}
	}
	limit = window_limit();
	if (!g.connected || used >= limit || free_idx < 0 ||
	    (is_chunk && chunks >= (limit > 1 ? limit - 1 : 1))) {
		free_idx = -1;
	} else {
		g.slots[free_idx].in_use = 1;
		g.slots[free_idx].is_chunk = is_chunk;
		g.slots[free_idx].gen = (g.slots[free_idx].gen + 1) & (UINT32_MAX >> 8);
		g.slots[free_idx].sent_ms = tk_mono_ms();
		*gen = g.slots[free_idx].gen;
	}
	pthread_mutex_unlock(&g.lock);
	return free_idx;
}

/* Main thread: give back a slot whose publish was not started. */
void slot_release(int idx)
{
	pthread_mutex_lock(&g.lock);
	g.slots[idx].in_use = 0;
	pthread_mutex_unlock(&g.lock);
}

/* Main thread: send queued acks while the window has room. */
void acks_flush(void)
{
	while (g.ack_head) {
		MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
		MQTTAsync_message msg = MQTTAsync_message_initializer;
		struct pending_ack *a = g.ack_head;
		int free_idx, rc;
		uint32_t gen = 0;

		if (tk_mono_ms() - a->queued_ms > ACK_PENDING_MAX_AGE_MS ||
		    g.n_pending > ACK_PENDING_MAX) {
			g.c.acks_dropped++;
			ack_pop();
			continue;
		}
		free_idx = slot_take(0, &gen);
		if (free_idx < 0)
			return; /* woken again by a completion or a reconnect */

		msg.payload = a->payload;
		msg.payloadlen = (int)a->len;
		msg.qos = 1;
		ro.onSuccess5 = on_ack_ok;
		ro.onFailure5 = on_ack_fail;
		ro.context = slot_context(free_idx, gen);
		rc = MQTTAsync_sendMessage(g.client, a->topic, &msg, &ro);
		if (rc == MQTTASYNC_SUCCESS) {
			g.c.acks_sent++;
			ack_pop(); /* Paho copied topic and payload */
			continue;
		}
		slot_release(free_idx);
		if (rc == MQTTASYNC_DISCONNECTED)
			return; /* keep it for after the reconnect */
		log_at(LVL_WARN, "ack publish refused; dropped", "rc=%d err=\"%s\"", rc,
		       MQTTAsync_strerror(rc));
		g.c.acks_failed++;
		ack_pop();
	}
}

void slots_reclaim(void)
{
	int64_t now = tk_mono_ms();
	int i, n = 0;

	pthread_mutex_lock(&g.lock);
	for (i = 0; i < ACK_SLOTS; i++) {
		if (g.slots[i].in_use && now - g.slots[i].sent_ms > ACK_SLOT_STALE_MS) {
			g.slots[i].in_use = 0;
			n++;
		}
	}
	pthread_mutex_unlock(&g.lock);
	if (n)
		log_at(LVL_WARN, "publishes never completed; window slots reclaimed", "slots=%d",
		       n);
}

int slots_in_use(void)
{
	int i, n = 0;

	pthread_mutex_lock(&g.lock);
	for (i = 0; i < ACK_SLOTS; i++)
		n += g.slots[i].in_use;
	pthread_mutex_unlock(&g.lock);
	return n;
}
