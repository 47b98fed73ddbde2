/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Process-wide protections for programs that hold secrets. A core dump of
 * scrm-agent or scrmctl would write the device data key and decrypted
 * personal data (member names, birthdays) to disk, where they outlive the
 * process and escape the 0600 key file. The unit file says LimitCORE=0 too,
 * but the programs also run outside systemd (by hand, from the POS's own
 * service), so each one closes the door itself.
 */
#include "platform.h"

#include <errno.h>
#include <sys/resource.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

int platform__no_core_dumps(void)
{
	int rc = 0;
	/* hard limit too: nothing later in the process can raise it again */
	struct rlimit rl = {.rlim_cur = 0, .rlim_max = 0};
	if (setrlimit(RLIMIT_CORE, &rl) != 0)
		rc = -errno;
#ifdef __linux__
	/* Not dumpable: no core even when a core pattern pipes to a helper
	 * (which ignores RLIMIT_CORE), and no ptrace attach or
	 * /proc/<pid>/mem read by other processes of the same user. */
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 && rc == 0)
		rc = -errno;
#endif
	return rc;
}
