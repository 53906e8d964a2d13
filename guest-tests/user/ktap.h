/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ktap.h - a header-only KTAP (version 1) emitter for the vugpu guest tests.
 *
 * Usage:
 *
 *	static void test_foo(struct ktap_test *t, void *ctx)
 *	{
 *		if (!have_thing)
 *			KTAP_SKIP(t, "no thing: %s", why);	// returns
 *		KTAP_EXPECT(t, a == b, "a %d b %d", a, b);	// records, goes on
 *		KTAP_ASSERT(t, fd >= 0, "open: %s", strerror(errno)); // records, returns
 *	}
 *	static const struct ktap_case cases[] = { KTAP_CASE(test_foo), ... };
 *	ktap_print_header(KTAP_ARRAY_SIZE(cases));
 *	ktap_run(cases, KTAP_ARRAY_SIZE(cases), 1, ctx, &totals);
 *
 * Every case yields exactly one result line, "ok N - name", "not ok N - name"
 * or "ok N - name # SKIP reason"; the reasons for a failure are printed as
 * "# " diagnostic lines before the result line.  A case that neither fails
 * nor skips passes; a case cannot pass by skipping.  Numbering can start
 * anywhere so that a shell suite can splice the results into its own
 * document.
 */
#ifndef VUGPU_KTAP_H
#define VUGPU_KTAP_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define KTAP_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Short file names in failure messages (gcc >= 12, clang >= 9). */
#ifdef __FILE_NAME__
#define KTAP_FILE __FILE_NAME__
#else
#define KTAP_FILE __FILE__
#endif

struct ktap_test {
	const char *name;
	unsigned int failures;	/* failed EXPECT/ASSERTs */
	bool skipped;
	char skip_reason[256];
};

struct ktap_case {
	const char *name;
	void (*fn)(struct ktap_test *t, void *ctx);
};

struct ktap_totals {
	unsigned int pass, fail, skip;
};

#define KTAP_CASE(f) { .name = #f, .fn = f }

static inline void ktap_print_header(unsigned int planned)
{
	printf("KTAP version 1\n1..%u\n", planned);
	fflush(stdout);
}

/* "# ..." diagnostic line (one per call; embedded newlines are split). */
static inline void __attribute__((format(printf, 1, 2))) ktap_diag(const char *fmt, ...)
{
	char buf[1024], *line, *save = NULL;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		printf("# %s\n", line);
	fflush(stdout);
}

static inline void __attribute__((format(printf, 4, 5)))
ktap_fail_at(struct ktap_test *t, const char *file, int line, const char *fmt, ...)
{
	char buf[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	t->failures++;
	ktap_diag("%s: FAIL (%s:%d): %s", t->name, file, line, buf);
}

static inline void __attribute__((format(printf, 2, 3)))
ktap_skip(struct ktap_test *t, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(t->skip_reason, sizeof(t->skip_reason), fmt, ap);
	va_end(ap);
	/* The directive ends the line: keep the reason on one line. */
	for (char *p = t->skip_reason; *p; p++)
		if (*p == '\n' || *p == '#')
			*p = ' ';
	t->skipped = true;
}

/* Record a failure and continue. */
#define KTAP_EXPECT(t, cond, ...)						\
	do {									\
		if (!(cond))							\
			ktap_fail_at((t), KTAP_FILE, __LINE__, __VA_ARGS__);	\
	} while (0)

/* Record a failure and leave the test function. */
#define KTAP_ASSERT(t, cond, ...)						\
	do {									\
		if (!(cond)) {							\
			ktap_fail_at((t), KTAP_FILE, __LINE__, __VA_ARGS__);	\
			return;							\
		}								\
	} while (0)

/* Give up on the test with a reason (not a pass). */
#define KTAP_SKIP(t, ...)							\
	do {									\
		ktap_skip((t), __VA_ARGS__);					\
		return;								\
	} while (0)

/* Runs @n cases numbered from @first; returns the number of failures. */
static inline unsigned int ktap_run(const struct ktap_case *cases, unsigned int n,
				    unsigned int first, void *ctx, struct ktap_totals *tot)
{
	unsigned int i, failed = 0;

	for (i = 0; i < n; i++) {
		struct ktap_test t = { .name = cases[i].name };

		cases[i].fn(&t, ctx);
		fflush(stdout);
		if (t.failures) {
			/* A failure wins over a later skip: never hide it. */
			printf("not ok %u - %s\n", first + i, t.name);
			tot->fail++;
			failed++;
		} else if (t.skipped) {
			printf("ok %u - %s # SKIP %s\n", first + i, t.name, t.skip_reason);
			tot->skip++;
		} else {
			printf("ok %u - %s\n", first + i, t.name);
			tot->pass++;
		}
		fflush(stdout);
	}
	return failed;
}

static inline void ktap_print_totals(const struct ktap_totals *tot)
{
	printf("# totals: pass:%u fail:%u skip:%u\n", tot->pass, tot->fail, tot->skip);
	fflush(stdout);
}

#endif /* VUGPU_KTAP_H */
