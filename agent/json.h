/* SPDX-License-Identifier: Apache-2.0 */
/* json: strict parsing of outside input (placeholder until the json module lands). */
#ifndef SCRM_JSON_H
#define SCRM_JSON_H
#include <cjson/cJSON.h>
#include <stddef.h>
int json__parse(const char *text, size_t len, const char *what, cJSON **out);
#endif
