/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz: the libFuzzer entry point every harness defines, and a helper to
 * stop on a broken invariant. With SCRM_FUZZ=ON libFuzzer calls the entry
 * point; otherwise driver.c does, once per input file.
 */
#ifndef SCRM_TESTS_FUZZ_H
#define SCRM_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An invariant does not hold: print it and abort (libFuzzer saves the input
 * as a crash; the plain driver fails its ctest). */
#define FUZZ_CHECK(cond, ...)                                                 \
	do {                                                                  \
		if (!(cond)) {                                                \
			fprintf(stderr, "fuzz invariant failed: %s: ", #cond); \
			fprintf(stderr, __VA_ARGS__);                         \
			fputc('\n', stderr);                                  \
			abort();                                              \
		}                                                             \
	} while (0)

#endif
