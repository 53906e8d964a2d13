/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vugpu_harness.h - what vugpu's guest test programs add to the kernel's
 * kselftest harness.
 *
 * The harness itself is the guest kernel's own
 * tools/testing/selftests/kselftest_harness.h (and the kselftest.h it
 * includes): it is not part of this repository; the runner finds it in the
 * guest kernel's source and the Makefile gets its directory as KSELFTEST_DIR.
 * Each test runs in a process of its own (a crash or a failed ASSERT loses
 * that test's result only), under a timeout, and reports ok / not ok /
 * "# SKIP reason" as TAP.  A program is one translation unit (the harness
 * header defines its registries): programs made of several files #include
 * them.
 *
 * This header adds:
 *   - every line on stdout, line-buffered, so the harness's lines, TH_LOG()
 *     and diag() keep their order and a test that dies loses no finished line;
 *   - EXPECT_THAT(cond, fmt, ...) and ASSERT_THAT(cond, fmt, ...):
 *     EXPECT_TRUE()/ASSERT_TRUE() with an explanation (TH_LOG); ASSERT ends
 *     the test (the harness aborts its process after the teardown);
 *   - SKIP_TEST(fmt, ...): SKIP(return, ...), except that a test that has
 *     already failed stays failed (a skip never hides a failure); SKIP_NOTE()
 *     the same without the return (for helpers that report to their caller);
 *   - FAIL_TEST(fmt, ...): a failure with its explanation, and go on;
 *   - diag(fmt, ...): "# " lines for information that is not a failure;
 *   - vugpu_harness_main(): the program's own "--name [value]" options go to
 *     a callback, everything else (-t NAME, -T NAME, -l, -h, ...) to the
 *     harness.
 */
#ifndef VUGPU_HARNESS_H
#define VUGPU_HARNESS_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TH_LOG_STREAM stdout
#include "kselftest_harness.h"

static void __attribute__((constructor)) vugpu_harness_line_buffered(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
}

#define EXPECT_THAT(cond, ...)							\
	do {									\
		EXPECT_TRUE(!!(cond)) TH_LOG(__VA_ARGS__);			\
	} while (0)

#define ASSERT_THAT(cond, ...)							\
	do {									\
		ASSERT_TRUE(!!(cond)) TH_LOG(__VA_ARGS__);			\
	} while (0)

/* The reason ends the result line: keep it on one line. */
static inline void vugpu_one_line(char *s)
{
	for (; *s; s++)
		if (*s == '\n' || *s == '\r')
			*s = ' ';
}

#define SKIP_TEST(...)								\
	do {									\
		if (_metadata->exit_code == KSFT_FAIL)				\
			return;							\
		SKIP(vugpu_one_line(_metadata->results->reason); return,	\
		     __VA_ARGS__);						\
	} while (0)

/* Records a failure with its explanation; the test goes on. */
#define FAIL_TEST(...)								\
	do {									\
		TH_LOG(__VA_ARGS__);						\
		_metadata->exit_code = KSFT_FAIL;				\
	} while (0)

/* Marks the test skipped (unless it failed) without leaving the function. */
#define SKIP_NOTE(...)								\
	do {									\
		if (_metadata->exit_code != KSFT_FAIL)				\
			SKIP(vugpu_one_line(_metadata->results->reason),	\
			     __VA_ARGS__);					\
	} while (0)

/* "# " diagnostic lines (one per line of the message). */
static inline void __attribute__((format(printf, 1, 2))) diag(const char *fmt, ...)
{
	char buf[2048], *line, *save = NULL;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		printf("# %s\n", line);
}

/*
 * A program option "--name" with its value (the next word, NULL if none):
 * returns how many words it took (1 or 2), or 0 if it is unknown or its value
 * is bad.
 */
typedef int (*vugpu_opt_fn)(const char *name, const char *value);

/*
 * Hands the program's options to @opt and collects the other words, starting
 * with argv[0], in a new argv for test_harness_run(); returns its length, or
 * -1 after a usage message for a bad option.
 */
static inline int vugpu_harness_opts(int argc, char **argv, vugpu_opt_fn opt, const char *usage,
				     char ***rest)
{
	int a, n = 0;

	*rest = calloc((size_t)argc + 1, sizeof(**rest));
	if (!*rest)
		return -1;
	(*rest)[n++] = argv[0];
	for (a = 1; a < argc; a++) {
		if (!strncmp(argv[a], "--", 2) && argv[a][2]) {
			int used = opt ? opt(argv[a], a + 1 < argc ? argv[a + 1] : NULL) : 0;

			if (used <= 0) {
				fprintf(stderr, "%s: bad option %s\nusage: %s %s [-h] [-l] [-t TEST]...\n",
					argv[0], argv[a], argv[0], usage);
				return -1;
			}
			a += used - 1;
		} else {
			(*rest)[n++] = argv[a];
		}
	}
	return n;
}

/* Parses the program's options, then runs the tests; exits (2 on bad usage). */
static inline int vugpu_harness_main(int argc, char **argv, vugpu_opt_fn opt, const char *usage)
{
	char **rest;
	int n = vugpu_harness_opts(argc, argv, opt, usage, &rest);

	return n < 0 ? 2 : test_harness_run(n, rest);
}

#endif /* VUGPU_HARNESS_H */
