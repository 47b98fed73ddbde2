/* SPDX-License-Identifier: Apache-2.0 */
/*
 * err: scrm_strerror() generated from the one SCRM_ERRORS list, and the
 * thread-local detail message.
 */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char errmsg[512];

const char *scrm_strerror(int err)
{
	switch (err) {
#define SCRM__STR(name, val, text)                                            \
	case val:                                                             \
		return text;
		SCRM_ERRORS(SCRM__STR)
#undef SCRM__STR
	}
	return "unknown error";
}

const char *scrm_errmsg(void)
{
	return errmsg;
}

const char *scrm_version(void)
{
	return SCRM_VERSION_STRING;
}

int err__set(int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(errmsg, sizeof(errmsg), fmt, ap);
	va_end(ap);
	return code;
}

void err__clear(void)
{
	errmsg[0] = '\0';
}
