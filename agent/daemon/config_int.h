/* SPDX-License-Identifier: Apache-2.0 */
/*
 * config_int.h: what config.c (the key table, loading, checks) and
 * config_remote.c (central's config.set: the overlay, proposals, probation,
 * the comparisons that decide how a change takes effect) share.
 */
#ifndef SCRM_CONFIG_INT_H
#define SCRM_CONFIG_INT_H

#include "config.h"

#include <stddef.h>
#include <stdint.h>

struct cJSON;

enum ctype { C_STR, C_INT, C_BOOL };

struct ckey {
	const char *key;
	enum ctype type;
	size_t off;
	const char *dflt_str; /* C_STR default, NULL = none */
	int64_t dflt, min, max;
	int required;
	int cls;    /* enum config__class: how a change takes effect */
	int remote; /* 1: central may set it (config.set) */
	const char *doc;
};

/* The key table (config.c, from config_keys.def's rows). */
extern const struct ckey config__keys[];
extern const size_t config__n_keys;

/* Parse a config text strictly (core/json), and apply a parsed root over
 * the defaults with every check (config__parse's two halves). */
int config__parse_text(const char *text, size_t len, struct cJSON **root);
int config__apply_root(const struct cJSON *root, const char *text, size_t len, config *cfg);

#endif
