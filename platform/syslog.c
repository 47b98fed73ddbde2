/* SPDX-License-Identifier: Apache-2.0 */
/* syslog: the optional second log sink (log.syslog), isolated so that
 * <syslog.h>'s LOG_INFO / LOG_DEBUG macros never meet the agent's own. */
#include "platform.h"

#include <syslog.h>

void platform__syslog_open(int on, const char *ident)
{
	if (on)
		openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
	else
		closelog();
}

void platform__syslog(int level, const char *line)
{
	static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
	syslog(prio[level & 3], "%s", line);
}
