/* SPDX-License-Identifier: Apache-2.0 */
/* json: placeholder (see json.h). */
#include "json.h"

#include "err.h"

int json__parse(const char *text, size_t len, const char *what, cJSON **out)
{
	const char *end = NULL;
	*out = cJSON_ParseWithLengthOpts(text, len, &end, 0);
	if (!*out)
		return err__set(SCRM_E_INVALID, "%s: not valid JSON", what);
	while (end < text + len && (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t'))
		end++;
	if (end != text + len) {
		cJSON_Delete(*out);
		*out = NULL;
		return err__set(SCRM_E_INVALID, "%s: trailing characters after the JSON value", what);
	}
	return SCRM_OK;
}
