/* SPDX-License-Identifier: Apache-2.0 */
/* uri: broker URL → Paho URI (see uri.h). */
#include "uri.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int uri__paho(const char *url, char **out, int *plaintext, const char **scheme)
{
	static const struct {
		const char *from, *to;
		int plain;
	} schemes[] = {
		{"mqtts://", "ssl://", 0}, {"ssl://", "ssl://", 0}, {"mqtt://", "tcp://", 1}, {"tcp://", "tcp://", 1},
	};
	*out = NULL;
	for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
		size_t n = strlen(schemes[i].from);
		if (strncmp(url, schemes[i].from, n) != 0)
			continue;
		if (scheme)
			*scheme = schemes[i].from;
		if (!url[n])
			return URI_NO_HOST;
		size_t need = strlen(schemes[i].to) + strlen(url + n) + 1;
		if (!(*out = malloc(need)))
			return URI_NOMEM;
		snprintf(*out, need, "%s%s", schemes[i].to, url + n);
		*plaintext = schemes[i].plain;
		return URI_OK;
	}
	return URI_SCHEME;
}
