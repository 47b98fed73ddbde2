/* SPDX-License-Identifier: Apache-2.0 */
/* uuid: UUIDv7 generation (see uuid.h). */
#include "uuid.h"

#include "platform.h"

#include <string.h>

int uuid__v7(int64_t unix_ms, char out[37])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char b[16];
	int rc = platform__random(b + 6, 10);
	if (rc != 0)
		return rc;
	uint64_t ms = (uint64_t)(unix_ms < 0 ? 0 : unix_ms);
	for (int i = 0; i < 6; i++)
		b[i] = (unsigned char)(ms >> (40 - 8 * i));
	b[6] = (unsigned char)(0x70 | (b[6] & 0x0f)); /* version 7 */
	b[8] = (unsigned char)(0x80 | (b[8] & 0x3f)); /* variant 10 */
	char *o = out;
	for (int i = 0; i < 16; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			*o++ = '-';
		*o++ = hex[b[i] >> 4];
		*o++ = hex[b[i] & 15];
	}
	*o = '\0';
	return 0;
}

int uuid__valid(const char *s)
{
	if (strlen(s) != 36)
		return 0;
	for (int i = 0; i < 36; i++) {
		char c = s[i];
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (c != '-')
				return 0;
		} else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
			return 0;
		}
	}
	return 1;
}
