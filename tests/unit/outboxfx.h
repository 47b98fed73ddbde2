/* SPDX-License-Identifier: Apache-2.0 */
/*
 * outboxfx: the fixture of the tests that drive the outbox alone — a fresh
 * temp dir with an outbox open on "<dir>/store" for device "pos-01". Include
 * after testutil.h and outbox.h; each test's setup names its temp dir.
 */
#ifndef SCRM_TESTS_UNIT_OUTBOXFX_H
#define SCRM_TESTS_UNIT_OUTBOXFX_H

#include <stdlib.h>

typedef struct fx {
	char *dir;   /* the test's temp dir */
	char *store; /* <dir>/store */
	char *db;    /* <dir>/store/outbox.db */
	outbox *ob;  /* open on store, device "pos-01" */
} fx;

static inline int outboxfx_setup(void **state, const char *name)
{
	fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	tu_store_paths(name, OUTBOX_FILE, &f->dir, &f->store, &f->db);
	assert_int_equal(outbox__open(f->store, "pos-01", 0, &f->ob), SCRM_OK);
	*state = f;
	return 0;
}

static inline int outboxfx_teardown(void **state)
{
	fx *f = *state;
	outbox__close(f->ob);
	tu_store_paths_free(f->dir, f->store, f->db);
	free(f);
	return 0;
}

#endif
