/* SPDX-License-Identifier: Apache-2.0 */
/*
 * delivery_test: the delivery state machine (agent/daemon/delivery.c) in small
 * deterministic scenarios, over the simulator's in-memory outbox
 * (tests/sim/memoutbox.c) with a fake publisher and clock: go-back on
 * reconnect, resend_from for the current round only, acks whose delete
 * fails, `base` and `after` never claiming a pending event, the window
 * limit, max_payload setting an event aside — and the regression for issue
 * 11 hole 7: a failed read of the oldest pending seq on the ack path must
 * leave the window untouched (before the fix, every batch in flight then
 * counted as done). The random schedules are tests/sim/sim_delivery.c.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "delivery.h"
#include "err.h"
#include "log.h"
#include "memoutbox.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PUB 64

/* One published batch, as central would read it. */
typedef struct pub {
	char batch[64];
	int64_t base, after, first, last;
	int n;
	size_t bytes;
	char *payload;
} pub;

typedef struct fx {
	memoutbox ob;
	delivery d;
	delivery__io io;
	int64_t now;
	pub pubs[MAX_PUB];
	int npub;
	int publish_fails;
} fx;

static int64_t i64(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	assert_true(cJSON_IsNumber(v));
	return (int64_t)v->valuedouble;
}

static int io_publish(void *ctx, const char *payload, size_t len)
{
	fx *f = ((memoutbox *)ctx)->hook_ctx;
	if (f->publish_fails > 0) {
		f->publish_fails--;
		return err__set(SCRM_E_IO, "publish: test failure");
	}
	assert_true(f->npub < MAX_PUB);
	pub *p = &f->pubs[f->npub++];
	cJSON *o = cJSON_ParseWithLength(payload, len);
	assert_non_null(o);
	snprintf(p->batch, sizeof(p->batch), "%s", cJSON_GetObjectItemCaseSensitive(o, "batch")->valuestring);
	p->base = i64(o, "base");
	p->after = i64(o, "after");
	const cJSON *events = cJSON_GetObjectItemCaseSensitive(o, "events");
	p->n = cJSON_GetArraySize(events);
	assert_true(p->n > 0);
	p->first = i64(cJSON_GetArrayItem(events, 0), "seq");
	p->last = i64(cJSON_GetArrayItem(events, p->n - 1), "seq");
	p->bytes = len;
	p->payload = strndup(payload, len);
	cJSON_Delete(o);
	/* the claims central relies on, checked on every batch */
	int64_t oldest = memoutbox__oldest_pending(&f->ob, 1);
	assert_true(p->base <= p->first);
	assert_true(oldest == 0 || oldest >= p->base);
	assert_int_equal(memoutbox__pending_between(&f->ob, p->after, p->first), 0);
	assert_true(f->d.nwin < f->d.set.window);
	return SCRM_OK;
}

static int64_t io_mono(void *ctx)
{
	return ((fx *)((memoutbox *)ctx)->hook_ctx)->now;
}

static int64_t io_wall(void *ctx)
{
	return 1764000000000LL + io_mono(ctx);
}

static int io_batch_id(void *ctx, int64_t wall_ms, char out[37])
{
	fx *f = ((memoutbox *)ctx)->hook_ctx;
	(void)wall_ms;
	snprintf(out, 37, "0193b3c2-7d4e-7a01-9c3e-%012d", f->npub + 1000 * (int)f->d.n_redeliveries);
	return SCRM_OK;
}

static fx *fx_new(int window, size_t batch_max_events, size_t max_payload)
{
	fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	log__set_level(-1); /* the injected errors would log */
	memoutbox__init(&f->ob, "9f1c0d1e-6a43-4b7e-9a51-0c2d9e8f7a6b");
	f->ob.hook_ctx = f;
	memoutbox__io(&f->ob, &f->io);
	f->io.publish = io_publish;
	f->io.mono_ms = io_mono;
	f->io.wall_ms = io_wall;
	f->io.batch_id = io_batch_id;
	delivery__settings set = {.window = window, .batch_max_events = batch_max_events, .batch_max_bytes = 65536,
				  .max_payload = max_payload, .ack_timeout_ms = 30000};
	delivery__init(&f->d, &f->io, &set);
	return f;
}

static void fx_free(fx *f)
{
	for (int i = 0; i < f->npub; i++)
		free(f->pubs[i].payload);
	delivery__free(&f->d);
	memoutbox__free(&f->ob);
	free(f);
}

static void capture(fx *f, int n, int kind)
{
	for (int i = 0; i < n; i++)
		assert_true(memoutbox__capture(&f->ob, kind, NULL, 1764000000000LL + f->now, f->now, 1,
					       "{\"ref\":\"0000000000000000\",\"order_id\":\"A-1\"}", MO_INTACT) > 0);
}

static void up(fx *f)
{
	delivery__link(&f->d, 0, "reconnect");
	delivery__link(&f->d, 1, "subscribed");
}

/* Central's ack, through the daemon's parser. */
static void ack(fx *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void ack(fx *f, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	ack__msg a;
	assert_int_equal(ack__parse(buf, strlen(buf), &a), SCRM_OK);
	delivery__on_ack(&f->d, &a);
	ack__free(&a);
}

static int in_flight(const fx *f, const char *batch)
{
	for (int i = 0; i < f->d.nwin; i++)
		if (strcmp(f->d.win[i].id, batch) == 0)
			return 1;
	return 0;
}

/* Issue 11, hole 7. Batches 1-2, 3-4, 5-6 in flight; central acks 3-4
 * while the oldest pending seq cannot be read. The old retire() took the
 * failed read for "outbox empty" and retired all three batches, though 1-2
 * and 5-6 were never acknowledged; now only the acked batch leaves, and no
 * batch goes out until the oldest pending seq is known again. */
static void hole7_failed_oldest_read_leaves_the_window(void **state)
{
	(void)state;
	fx *f = fx_new(4, 2, 0);
	capture(f, 6, MO_PURCHASE);
	up(f);
	assert_int_equal(f->npub, 3);
	assert_int_equal(f->d.nwin, 3);
	char b1[64], b3[64];
	snprintf(b1, sizeof(b1), "%s", f->pubs[0].batch);
	snprintf(b3, sizeof(b3), "%s", f->pubs[2].batch);

	f->ob.fail_next[MO_OP_OLDEST] = 3; /* retire's read, pump's, the next pump's */
	ack(f, "{\"v\":1,\"batch\":\"%s\",\"acked\":[[3,4]]}", f->pubs[1].batch);
	assert_int_equal(f->d.nwin, 2);
	assert_true(in_flight(f, b1));
	assert_true(in_flight(f, b3));
	assert_int_equal(f->ob.n_pending, 4);
	/* base unknown: nothing is published, even with room and new events */
	capture(f, 2, MO_PURCHASE);
	assert_int_equal(delivery__pump(&f->d), SCRM_E_IO);
	assert_int_equal(f->npub, 3);
	/* readable again: 7-8 goes, with base 1 (1-2 never acknowledged) */
	assert_int_equal(delivery__pump(&f->d), SCRM_OK);
	assert_int_equal(f->npub, 4);
	assert_int_equal(f->pubs[3].first, 7);
	assert_int_equal(f->pubs[3].base, 1);

	/* the unacknowledged batches go again at their deadline */
	f->now += 30000;
	delivery__tick(&f->d);
	assert_int_equal(f->pubs[4].first, 1);
	assert_int_equal(f->pubs[4].base, 1);
	assert_int_equal(f->pubs[4].after, 0);
	fx_free(f);
}

/* The read of pump itself failing: nothing is published until it works. */
static void failed_read_publishes_nothing(void **state)
{
	(void)state;
	fx *f = fx_new(4, 2, 0);
	capture(f, 4, MO_PURCHASE);
	f->ob.fail_next[MO_OP_OLDEST] = 3; /* both go-backs' reads and pump's */
	up(f);
	assert_int_equal(f->npub, 0);
	assert_false(f->d.base_known);
	f->ob.fail_next[MO_OP_READ] = 1;
	assert_int_equal(delivery__pump(&f->d), SCRM_E_IO);
	assert_int_equal(f->npub, 0);
	assert_int_equal(f->d.nwin, 0);
	assert_int_equal(delivery__pump(&f->d), SCRM_OK);
	assert_int_equal(f->npub, 2);
	assert_int_equal(f->pubs[0].base, 1);
	fx_free(f);
}

static void go_back_on_reconnect_resends_from_the_oldest(void **state)
{
	(void)state;
	fx *f = fx_new(8, 3, 0);
	capture(f, 9, MO_PURCHASE);
	up(f);
	assert_int_equal(f->npub, 3);
	ack(f, "{\"v\":1,\"batch\":\"%s\",\"acked\":[[1,3]]}", f->pubs[0].batch);
	assert_int_equal(f->d.nwin, 2);
	delivery__link(&f->d, 0, "connection_lost");
	assert_int_equal(f->d.nwin, 0);
	assert_int_equal(delivery__pump(&f->d), SCRM_OK); /* down: nothing goes */
	assert_int_equal(f->npub, 3);
	up(f);
	assert_int_equal(f->npub, 5);
	assert_int_equal(f->pubs[3].first, 4);
	assert_int_equal(f->pubs[3].base, 4);
	assert_int_equal(f->pubs[3].after, 3); /* first - 1 at the start of a round */
	assert_int_equal(f->pubs[4].first, 7);
	assert_int_equal(f->pubs[4].after, 6);
	assert_string_not_equal(f->pubs[3].batch, f->pubs[1].batch); /* a new batch id */
	fx_free(f);
}

static void resend_from_acts_only_for_the_current_round(void **state)
{
	(void)state;
	fx *f = fx_new(4, 2, 0);
	capture(f, 6, MO_PURCHASE);
	up(f);
	assert_int_equal(f->npub, 3);
	/* central lost 1-2: the ack of 3-4 asks for a resend from 1 */
	ack(f, "{\"v\":1,\"batch\":\"%s\",\"acked\":[],\"resend_from\":1}", f->pubs[1].batch);
	assert_int_equal(f->d.n_redeliveries, 1);
	assert_int_equal(f->npub, 6);
	assert_int_equal(f->pubs[3].first, 1);
	assert_int_equal(f->pubs[3].base, 1);
	/* the old round's 5-6 gets the same answer: no second go-back */
	ack(f, "{\"v\":1,\"batch\":\"%s\",\"acked\":[],\"resend_from\":1}", f->pubs[2].batch);
	assert_int_equal(f->d.n_redeliveries, 1);
	assert_int_equal(f->npub, 6);
	assert_int_equal(f->d.nwin, 3);
	/* a resend_from past what this round sent asks for nothing it has */
	ack(f, "{\"v\":1,\"batch\":\"%s\",\"acked\":[[1,2]]}", f->pubs[3].batch);
	assert_int_equal(f->d.nwin, 2);
	ack(f, "{\"v\":1,\"batch\":\"%s\",\"acked\":[],\"resend_from\":9}", f->pubs[5].batch);
	assert_int_equal(f->d.n_redeliveries, 1);
	assert_int_equal(f->d.nwin, 2);
	assert_int_equal(f->npub, 6);
	fx_free(f);
}

static void failed_delete_leaves_the_window(void **state)
{
	(void)state;
	fx *f = fx_new(4, 2, 0);
	capture(f, 6, MO_PURCHASE);
	up(f);
	struct delivery__batch before[DELIVERY_MAX_WINDOW];
	int n = f->d.nwin;
	memcpy(before, f->d.win, sizeof(before));
	f->ob.fail_next[MO_OP_ACK] = 1;
	ack(f, "{\"v\":1,\"batch\":\"%s\",\"acked\":[[1,2]],\"resend_from\":3}", f->pubs[0].batch);
	assert_int_equal(f->d.nwin, n);
	assert_memory_equal(f->d.win, before, sizeof(before[0]) * (size_t)n);
	assert_int_equal(f->ob.n_pending, 6);
	assert_int_equal(f->d.n_ack_errors, 1);
	assert_int_equal(f->npub, 3);
	/* the same ack again, or the deadline, settles it */
	ack(f, "{\"v\":1,\"batch\":\"%s\",\"acked\":[[1,2]]}", f->pubs[0].batch);
	assert_int_equal(f->ob.n_pending, 4);
	assert_int_equal(f->d.nwin, 2);
	fx_free(f);
}

/* base: the oldest unacknowledged seq, whatever order the acks come in and
 * whatever was evicted. */
static void base_never_above_a_pending_event(void **state)
{
	(void)state;
	fx *f = fx_new(4, 1, 0);
	up(f);
	capture(f, 1, MO_PURCHASE);
	delivery__pump(&f->d); /* 1 */
	capture(f, 1, MO_PURCHASE);
	delivery__pump(&f->d); /* 2 */
	capture(f, 1, MO_PURCHASE);
	delivery__pump(&f->d); /* 3 */
	assert_int_equal(f->npub, 3);
	assert_int_equal(f->pubs[2].base, 1);
	/* 3 and 1 acked, 2 not: base stays 2 */
	ack(f, "{\"v\":1,\"batch\":\"%s\",\"acked\":[[3,3]]}", f->pubs[2].batch);
	ack(f, "{\"v\":1,\"batch\":\"%s\",\"acked\":[[1,1]]}", f->pubs[0].batch);
	assert_int_equal(f->d.nwin, 1);
	capture(f, 1, MO_PURCHASE);
	delivery__pump(&f->d);
	assert_int_equal(f->pubs[3].first, 4);
	assert_int_equal(f->pubs[3].base, 2);
	/* everything acked, the outbox read empty: base is the batch's first */
	ack(f, "{\"v\":1,\"batch\":\"x\",\"acked\":[[1,4]]}");
	assert_int_equal(f->d.nwin, 0);
	assert_int_equal(f->d.base, 0);
	capture(f, 2, MO_PURCHASE);
	delivery__pump(&f->d);
	assert_int_equal(f->pubs[4].base, 5);
	assert_int_equal(f->pubs[5].base, 5); /* 5 in flight, not acked */
	fx_free(f);
}

/* Another process captures between delivery's read of the oldest pending
 * seq (the outbox was empty) and its batch read. */
static int capture_during_read(void *ctx, int op)
{
	fx *f = ctx;
	if (op == MO_OP_READ && f->ob.n_ledger == 0)
		capture(f, 2, MO_PURCHASE);
	return 0;
}

/* The outbox read empty, then events came: the first batch's base is its
 * first seq, the next ones' the first of the oldest batch in flight. */
static void base_counts_batches_in_flight(void **state)
{
	(void)state;
	fx *f = fx_new(4, 1, 0);
	f->ob.fault = capture_during_read;
	up(f);
	assert_int_equal(f->d.base, 0);
	assert_int_equal(f->npub, 2);
	assert_int_equal(f->pubs[0].base, 1);
	assert_int_equal(f->pubs[1].first, 2);
	assert_int_equal(f->pubs[1].base, 1); /* 1 is in flight, not acknowledged */
	fx_free(f);
}

/* An event put back from a quarantined file below what this round sent
 * (protocol.md "Recovered events") still goes out: with nothing in flight
 * the oldest pending seq is read again and a new round starts. */
static void recovered_event_below_the_round_goes_out(void **state)
{
	(void)state;
	fx *f = fx_new(4, 1, 0);
	capture(f, 4, MO_PURCHASE);
	assert_int_equal(memoutbox__hide(&f->ob, 2), 0);
	up(f);
	assert_int_equal(f->npub, 3); /* 1, 3, 4 */
	ack(f, "{\"v\":1,\"batch\":\"x\",\"acked\":[[1,1],[3,4]]}");
	assert_int_equal(f->d.nwin, 0);
	assert_int_equal(memoutbox__recover_all(&f->ob), 1);
	assert_int_equal(delivery__pump(&f->d), SCRM_OK);
	assert_int_equal(f->npub, 4);
	assert_int_equal(f->pubs[3].first, 2);
	assert_int_equal(f->pubs[3].after, 1);
	assert_non_null(strstr(f->pubs[3].payload, "\"recovered\":true"));
	fx_free(f);
}

/* after: nothing pending between it and the first seq; seqs evicted in
 * between are stepped over, pending ones never. */
static void after_never_covers_a_pending_event(void **state)
{
	(void)state;
	fx *f = fx_new(1, 1, 0);
	capture(f, 1, MO_PURCHASE);
	capture(f, 2, MO_RECO_SHOWN); /* 2, 3 */
	capture(f, 1, MO_MEMBER_SCAN); /* 4 */
	capture(f, 1, MO_PURCHASE);    /* 5 */
	up(f);
	assert_int_equal(f->npub, 1);
	assert_int_equal(memoutbox__evict(&f->ob, 3), 3); /* 2, 3 and 4: browsing, then scans */
	ack(f, "{\"v\":1,\"batch\":\"%s\",\"acked\":[[1,1]]}", f->pubs[0].batch);
	assert_int_equal(f->npub, 2);
	assert_int_equal(f->pubs[1].first, 5);
	assert_int_equal(f->pubs[1].after, 1); /* 2..4 will never come */
	assert_int_equal(f->pubs[1].base, 5);
	/* at the start of a round, after is the first seq - 1 */
	delivery__go_back(&f->d, "flush_command");
	delivery__pump(&f->d);
	assert_int_equal(f->pubs[2].first, 5);
	assert_int_equal(f->pubs[2].after, 4);
	fx_free(f);
}

static void window_limits_batches_in_flight(void **state)
{
	(void)state;
	fx *f = fx_new(3, 2, 0);
	capture(f, 20, MO_PURCHASE);
	up(f);
	assert_int_equal(f->npub, 3);
	assert_int_equal(f->d.nwin, 3);
	assert_int_equal(delivery__pump(&f->d), SCRM_OK);
	assert_int_equal(f->npub, 3);
	ack(f, "{\"v\":1,\"batch\":\"%s\",\"acked\":[[1,2]]}", f->pubs[0].batch);
	assert_int_equal(f->npub, 4);
	assert_int_equal(f->d.nwin, 3);
	assert_int_equal(f->pubs[3].first, 7);
	/* a smaller window keeps what is in flight, sends nothing more */
	delivery__settings set = f->d.set;
	set.window = 1;
	delivery__configure(&f->d, &set);
	ack(f, "{\"v\":1,\"batch\":\"%s\",\"acked\":[[3,4]]}", f->pubs[1].batch);
	assert_int_equal(f->d.nwin, 2);
	assert_int_equal(f->npub, 4);
	fx_free(f);
}

/* An event larger than the broker takes even alone goes as a marker; the
 * next ones are not held up. */
static void max_payload_sets_an_event_aside(void **state)
{
	(void)state;
	fx *f = fx_new(4, 10, 1024);
	char body[2100];
	memcpy(body, "{\"ref\":\"0000000000000000\",\"pad\":\"", 33);
	memset(body + 33, 'a', 2000);
	memcpy(body + 2033, "\"}", 3);
	capture(f, 1, MO_PURCHASE);
	assert_true(memoutbox__capture(&f->ob, MO_PURCHASE, NULL, 1764000000000LL, 0, 1, body, MO_INTACT) == 2);
	capture(f, 1, MO_PURCHASE);
	assert_true(memoutbox__capture(&f->ob, MO_RETURN, NULL, 1764000000000LL, 0, 1, "{}", MO_DAMAGED_BODY) == 4);
	up(f);
	assert_true(f->npub >= 1);
	for (int i = 0; i < f->npub; i++)
		assert_true(f->pubs[i].bytes <= 1024);
	char all[8192] = "";
	for (int i = 0; i < f->npub; i++)
		strncat(all, f->pubs[i].payload, sizeof(all) - strlen(all) - 1);
	assert_non_null(strstr(all, "{\"id\":\"")); /* a marker keeps the event's header */
	assert_non_null(strstr(all, "\"seq\":2,"));
	assert_non_null(strstr(all, "\"set_aside\":{\"reason\":\"too_big\""));
	assert_non_null(strstr(all, "\"set_aside\":{\"reason\":\"unreadable\""));
	assert_null(strstr(all, "aaaa")); /* the body stays on the device */
	assert_int_equal(f->pubs[0].first, 1);
	assert_int_equal(f->pubs[f->npub - 1].last, 4);
	assert_int_equal(f->ob.n_set_aside, 2);
	/* a marker stays pending until central acknowledges it */
	assert_int_equal(f->ob.n_pending, 4);
	ack(f, "{\"v\":1,\"batch\":\"x\",\"acked\":[[1,4]]}");
	assert_int_equal(f->ob.n_pending, 0);
	assert_int_equal(f->d.nwin, 0);
	fx_free(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(hole7_failed_oldest_read_leaves_the_window),
		cmocka_unit_test(failed_read_publishes_nothing),
		cmocka_unit_test(go_back_on_reconnect_resends_from_the_oldest),
		cmocka_unit_test(resend_from_acts_only_for_the_current_round),
		cmocka_unit_test(failed_delete_leaves_the_window),
		cmocka_unit_test(base_never_above_a_pending_event),
		cmocka_unit_test(base_counts_batches_in_flight),
		cmocka_unit_test(recovered_event_below_the_round_goes_out),
		cmocka_unit_test(after_never_covers_a_pending_event),
		cmocka_unit_test(window_limits_batches_in_flight),
		cmocka_unit_test(max_payload_sets_an_event_aside),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
