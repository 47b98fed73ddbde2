/* SPDX-License-Identifier: Apache-2.0 */
/*
 * uri: a broker URL as written in a config or on a command line
 * (mqtts://host:port, or mqtt:// for plaintext) turned into the URI Paho
 * takes (ssl://, tcp://). The daemon's broker.uri and scrm-fleet's --broker
 * read the same schemes through it. No Paho here, so config parsing and its
 * tests need not link the MQTT client.
 */
#ifndef SCRM_URI_H
#define SCRM_URI_H

enum uri__result { URI_OK = 0, URI_NOMEM = -1, URI_SCHEME = 1, URI_NO_HOST = 2 };

/* mqtts:// and ssl:// → ssl://; mqtt:// and tcp:// → tcp:// with
 * *plaintext = 1. URI_OK with *out owned by the caller (free); otherwise
 * *out = NULL and *scheme (if not NULL) points at the scheme matched
 * (URI_NO_HOST: nothing after it). */
int uri__paho(const char *url, char **out, int *plaintext, const char **scheme);

#endif
