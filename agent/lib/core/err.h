/* SPDX-License-Identifier: Apache-2.0 */
/*
 * err: the per-thread detail message behind scrm_errmsg(), set where a
 * failure is detected so the caller learns which field was wrong and why.
 */
#ifndef SCRM_ERR_H
#define SCRM_ERR_H

#include <scrm/scrm.h>

/* Record code + formatted detail for this thread; returns code. */
int err__set(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Clear the detail at the start of an API call. */
void err__clear(void);

#endif
