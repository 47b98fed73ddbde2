/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Randomness: one process-wide mbedTLS CTR-DRBG, seeded from the OS entropy
 * source on first use and reseeded by mbedTLS on its own interval. A mutex
 * serialises callers; event ids need a handful of bytes, so contention is
 * negligible next to the fsync each capture waits for. A fork is noticed
 * by a pthread_atfork handler, not by asking getpid() on every call (a
 * system call per event id, 2% of a batch import's CPU).
 */
#include "platform.h"

#include <errno.h>
#include <pthread.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>

static pthread_mutex_t rng_mu = PTHREAD_MUTEX_INITIALIZER;
static mbedtls_entropy_context entropy;
static mbedtls_ctr_drbg_context drbg;
static int seeded;
static volatile int forked; /* set in a child by the atfork handler */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void in_child(void)
{
	forked = 1;
}

static void register_atfork(void)
{
	pthread_atfork(NULL, NULL, in_child);
}

int platform__random(void *buf, size_t n)
{
	static const unsigned char pers[] = "scrm-agent";
	int rc = 0;

	pthread_once(&atfork_once, register_atfork);
	pthread_mutex_lock(&rng_mu);
	/* A fork copies the DRBG state: parent and child would then draw the
	 * same bytes (same event ids in the same millisecond). Reseed in any
	 * process that did not seed it itself. */
	if (forked) {
		forked = 0;
		if (seeded) {
			mbedtls_ctr_drbg_free(&drbg);
			mbedtls_entropy_free(&entropy);
			seeded = 0;
		}
	}
	if (!seeded) {
		mbedtls_entropy_init(&entropy);
		mbedtls_ctr_drbg_init(&drbg);
		if (mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy,
					  pers, sizeof(pers) - 1) != 0) {
			mbedtls_ctr_drbg_free(&drbg);
			mbedtls_entropy_free(&entropy);
			rc = -EIO;
			goto out;
		}
		seeded = 1;
	}
	while (n > 0) {
		size_t chunk = n > MBEDTLS_CTR_DRBG_MAX_REQUEST ? MBEDTLS_CTR_DRBG_MAX_REQUEST : n;
		if (mbedtls_ctr_drbg_random(&drbg, buf, chunk) != 0) {
			rc = -EIO;
			goto out;
		}
		buf = (unsigned char *)buf + chunk;
		n -= chunk;
	}
out:
	pthread_mutex_unlock(&rng_mu);
	return rc;
}
