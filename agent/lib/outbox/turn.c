/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outbox turn: a till waiting for the write lock goes before the daemon's
 * next write transaction.
 *
 * SQLite's write lock has no queue: a till that finds it taken polls
 * (busy_wait, every 100 us), and the daemon acknowledging a backlog in
 * chunks (deliver.c) took it back between two chunks before the till's
 * next poll, again and again; a fixed pause between chunks made the drain
 * slower for every chunk and still lost the race on a loaded CPU. Instead
 * every POS handle stamps one shared word, <dir>/outbox.turn (a page
 * mapped by every process of the store, mode 0660 like the database), with
 * the monotonic time of each poll, and clears it once it holds the lock;
 * the daemon, between two chunks, waits while the stamp is fresh (at most
 * TURN_MAX_US: a till that died mid-wait costs one such wait). The capture
 * paths clear the stamp (append.c, ledger.c); a POS handle that waited for
 * one of the rare other writes (migration, erasure, recovery) leaves it to
 * go stale within TURN_FRESH_US. The word is a hint, never a lock: without
 * it (a read-only directory) everything works as before, only with the
 * fixed pause.
 */
#include "outbox_int.h"

#include "platform.h"

#include <stdio.h>
#include <stdlib.h>

/* A stamp older than this is no till's (busy_wait polls every 100 us,
 * then every 500 us after the first millisecond). */
#define TURN_FRESH_US 1000
/* The longest the daemon waits for tills between two chunks. */
#define TURN_MAX_US 20000

void outbox__turn_open(outbox *ob)
{
	char path[4200];
	if (snprintf(path, sizeof(path), "%s/%s", ob->dir, OUTBOX_TURN_FILE) < (int)sizeof(path))
		ob->turn = platform__shared_word(path, 0660);
}

void outbox__turn_close(outbox *ob)
{
	platform__shared_word_close(ob->turn);
	ob->turn = NULL;
}

void outbox__turn_wait(outbox *ob, int64_t now_us)
{
	if (!ob->turn || ob->daemon)
		return;
	__atomic_store_n(ob->turn, now_us, __ATOMIC_RELAXED);
	ob->waited = 1;
}

void outbox__turn_taken(outbox *ob)
{
	if (!ob->waited)
		return;
	ob->waited = 0;
	/* Another till still polling stamps it again within 100 us. */
	if (ob->turn)
		__atomic_store_n(ob->turn, 0, __ATOMIC_RELAXED);
}

void outbox__yield_to_tills(outbox *ob)
{
	if (!ob->turn) {
		platform__sleep_us(ACK_YIELD_US);
		return;
	}
	const int64_t start = platform__mono_us();
	for (;;) {
		const int64_t stamp = __atomic_load_n(ob->turn, __ATOMIC_RELAXED), now = platform__mono_us();
		if (stamp == 0 || now - stamp > TURN_FRESH_US || now - start > TURN_MAX_US)
			return;
		platform__sleep_us(50);
	}
}
