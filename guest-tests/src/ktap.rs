//! KTAP v1 (and TAP 13/14) parsing of the guest's results channel, and the pass/fail verdict.
//!
//! The guest's suite script writes KTAP on stdout, which `/init` sends to the results channel
//! between the `VUGPU-BEGIN` and `VUGPU-END rc=N` markers. The grammar accepted here:
//!
//! ```text
//! KTAP version 1                  (or "TAP version 13/14"; a missing version line is a warning)
//! 1..N                            (plan; anywhere at its level; "1..0 # SKIP reason" allowed)
//! ok N name [# DIRECTIVE reason]  (DIRECTIVE: SKIP, TODO, XFAIL; TAP's "ok N - name" also works)
//! not ok N name
//! # diagnostic                    (kept as the output preceding the next result)
//!     KTAP version 1              (a subtest: deeper indentation, before its parent's result line)
//!     1..M
//!     ok 1 child
//! ok 1 parent
//! Bail out! reason
//! ```
//!
//! Any other line is kept as output of the test that follows it. Nesting is recognised by
//! indentation (KTAP uses four spaces per level; any deeper indentation opens a level).
//!
//! Counting: a test with subtests counts through its leaves; a parent that failed although none
//! of its children failed also counts as a failure. SKIP counts as skipped whether the line says
//! `ok` or `not ok`; TODO/XFAIL count as expected failures (neither pass nor failure).
//!
//! A skip is never a silent pass: the verdict takes the suite's expected skips, and any other skip
//! (or a `1..0 # SKIP` plan) makes the run [`Verdict::UnexpectedSkip`].
//!
//! The parser is the runner's own: the grammar is small and the verdict rules (plans, nesting,
//! expected skips) are the runner's, not a TAP library's.

use std::fmt;

/// Outcome of one test line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `ok` without a directive.
    Pass,
    /// `not ok` without a directive.
    Fail,
    /// `# SKIP` directive.
    Skip,
    /// `# TODO` or `# XFAIL` directive: a known failure.
    XFail,
}

/// One `ok`/`not ok` line with the subtests and output that preceded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestResult {
    /// Test number as written.
    pub number: u32,
    /// Description (may be empty).
    pub name: String,
    /// Outcome after applying the directive.
    pub outcome: Outcome,
    /// Directive reason (text after `# SKIP`), if any.
    pub reason: Option<String>,
    /// Subtests reported (indented) before this line.
    pub subtests: Vec<TestResult>,
    /// Lines (diagnostics and other output) between the previous result and this one.
    pub output: Vec<String>,
}

/// A parsed KTAP document (one nesting level at the top).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Version line (`KTAP version 1`, `TAP version 13`), if one was seen at the top level.
    pub version: Option<String>,
    /// Top-level plan count, if a plan line was seen.
    pub plan: Option<u32>,
    /// Top-level results in order.
    pub tests: Vec<TestResult>,
    /// Structural problems (plan mismatch, numbering, bail out), each a sentence. Any of these
    /// makes the run fail.
    pub problems: Vec<String>,
    /// Output after the last top-level result.
    pub trailing: Vec<String>,
    /// Reason of a top-level `1..0 # SKIP reason` plan: the whole document skipped.
    pub plan_skip: Option<String>,
}

/// Counts over the leaves of a report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Tests that passed.
    pub passed: usize,
    /// Tests that failed.
    pub failed: usize,
    /// Tests skipped.
    pub skipped: usize,
    /// Expected failures (TODO/XFAIL).
    pub xfail: usize,
    /// Slash-separated names of failed tests (`parent/child`).
    pub failures: Vec<String>,
    /// Skipped tests: (`parent/child`, reason).
    pub skips: Vec<(String, String)>,
}

/// Verdict of a suite run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every requirement met and at least one test passed.
    Pass,
    /// Nothing failed, but nothing passed either (all skipped, or an empty plan).
    AllSkipped,
    /// Nothing failed, but these skips (`path: reason`) are not expected.
    UnexpectedSkip(Vec<String>),
    /// Reasons why the run failed.
    Fail(Vec<String>),
}

#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    Version(&'a str),
    Plan { count: u32, skip: Option<&'a str> },
    Result(RawResult<'a>),
    BailOut(&'a str),
    Other,
}

#[derive(Debug, PartialEq, Eq)]
struct RawResult<'a> {
    ok: bool,
    number: u32,
    name: &'a str,
    directive: Option<(Directive, &'a str)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Directive {
    Skip,
    Todo,
    XFail,
}

fn classify(content: &str) -> Line<'_> {
    if let Some(v) = content
        .strip_prefix("KTAP version ")
        .or_else(|| content.strip_prefix("TAP version "))
    {
        if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()) {
            return Line::Version(content);
        }
    }
    if let Some(rest) = content.strip_prefix("1..") {
        let (num, tail) = split_digits(rest);
        if let Ok(count) = num.parse::<u32>() {
            let tail = tail.trim();
            if tail.is_empty() {
                return Line::Plan { count, skip: None };
            }
            if let Some(d) = tail.strip_prefix('#') {
                let d = d.trim_start();
                if d.len() >= 4 && d[..4].eq_ignore_ascii_case("skip") {
                    return Line::Plan {
                        count,
                        skip: Some(d[4..].trim()),
                    };
                }
                return Line::Plan { count, skip: None };
            }
        }
    }
    if let Some(reason) = content.strip_prefix("Bail out!") {
        return Line::BailOut(reason.trim());
    }
    let (ok, rest) = if let Some(r) = content.strip_prefix("not ok") {
        (false, r)
    } else if let Some(r) = content.strip_prefix("ok") {
        (true, r)
    } else {
        return Line::Other;
    };
    if !rest.starts_with([' ', '\t']) {
        return Line::Other;
    }
    let (num, tail) = split_digits(rest.trim_start());
    let Ok(number) = num.parse::<u32>() else {
        return Line::Other;
    };
    if !(tail.is_empty() || tail.starts_with([' ', '\t'])) {
        return Line::Other;
    }
    let (name, directive) = split_directive(tail);
    let name = name.trim();
    let name = name.strip_prefix("- ").unwrap_or(name).trim();
    Line::Result(RawResult {
        ok,
        number,
        name,
        directive,
    })
}

fn split_digits(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

/// Splits `" name # SKIP reason"` into the name and the first recognised directive.
fn split_directive(tail: &str) -> (&str, Option<(Directive, &str)>) {
    let padded_start = if tail.starts_with('#') { 0 } else { 1 };
    let mut search_from = 0;
    while let Some(pos) = tail[search_from..].find('#') {
        let at = search_from + pos;
        let before_ok = at == 0 || tail[..at].ends_with([' ', '\t']);
        let after = tail[at + 1..].trim_start();
        if before_ok {
            for (word, d) in [
                ("SKIP", Directive::Skip),
                ("TODO", Directive::Todo),
                ("XFAIL", Directive::XFail),
            ] {
                let matches = after.len() >= word.len()
                    && after[..word.len()].eq_ignore_ascii_case(word)
                    && after[word.len()..]
                        .chars()
                        .next()
                        .is_none_or(|c| !c.is_ascii_alphanumeric());
                if matches {
                    let name = if at >= padded_start { &tail[..at] } else { "" };
                    return (name, Some((d, after[word.len()..].trim())));
                }
            }
        }
        search_from = at + 1;
    }
    (tail, None)
}

fn indent_of(line: &str) -> usize {
    let mut n = 0;
    for c in line.chars() {
        match c {
            ' ' => n += 1,
            '\t' => n += 8 - n % 8,
            _ => break,
        }
    }
    n
}

#[derive(Default)]
struct Level {
    indent: usize,
    version: Option<String>,
    plan: Option<u32>,
    results: Vec<TestResult>,
    pending_output: Vec<String>,
    /// Children closed since the last result at this level.
    pending_children: Vec<TestResult>,
    problems: Vec<String>,
}

impl Level {
    fn new(indent: usize) -> Self {
        Level {
            indent,
            ..Level::default()
        }
    }

    /// Checks the plan against the results; `what` names the level in messages.
    fn close(&mut self, what: &str) {
        match self.plan {
            None if self.results.is_empty() => {}
            None => self.problems.push(format!(
                "{what}: no plan line (1..N) for {} results",
                self.results.len()
            )),
            Some(n) if n as usize != self.results.len() => self.problems.push(format!(
                "{what}: plan says 1..{n} but {} results were reported",
                self.results.len()
            )),
            Some(_) => {}
        }
    }
}

/// Parses KTAP text (the lines between the markers).
pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Report {
    let mut stack: Vec<Level> = Vec::new();
    let mut problems = Vec::new();
    let mut plan_skip = None;
    for raw in lines {
        let line = raw.trim_end_matches(['\r', '\n']).trim_end();
        let content = line.trim_start();
        let kind = classify(content);
        if matches!(kind, Line::Other) || content.is_empty() {
            if let Some(top) = stack.last_mut() {
                top.pending_output.push(line.to_string());
            } else if !content.is_empty() {
                // Output before the first KTAP line: keep it with the first level.
                let mut lvl = Level::new(indent_of(line));
                lvl.pending_output.push(line.to_string());
                stack.push(lvl);
                // The level's indent is fixed by its first KTAP line below.
                if let Some(top) = stack.last_mut() {
                    top.indent = usize::MAX;
                }
            }
            continue;
        }
        let indent = indent_of(line);
        // A placeholder level created by leading output takes the indent of the first KTAP line.
        if let Some(top) = stack.last_mut() {
            if top.indent == usize::MAX {
                top.indent = indent;
            }
        }
        if stack.is_empty() {
            stack.push(Level::new(indent));
        }
        // Close deeper levels.
        while stack.len() > 1 && stack.last().is_some_and(|l| indent < l.indent) {
            let Some(mut done) = stack.pop() else { break };
            let depth = stack.len();
            done.close(&format!("subtest level {depth}"));
            let Some(parent) = stack.last_mut() else {
                break;
            };
            parent.problems.append(&mut done.problems);
            parent.pending_output.append(&mut done.pending_output);
            parent.pending_children.append(&mut done.results);
        }
        if stack.last().is_some_and(|l| indent > l.indent) {
            stack.push(Level::new(indent));
        }
        let stack_depth = stack.len();
        let Some(top) = stack.last_mut() else {
            continue;
        };
        match kind {
            Line::Version(v) => {
                if top.version.is_some() || top.plan.is_some() || !top.results.is_empty() {
                    top.problems.push(format!("unexpected version line: {v}"));
                } else {
                    top.version = Some(v.to_string());
                }
            }
            Line::Plan { count, skip } => {
                if top.plan.is_some() {
                    top.problems.push(format!("second plan line: 1..{count}"));
                } else {
                    top.plan = Some(count);
                    if let Some(reason) = skip {
                        top.pending_output.push(format!("# plan skipped: {reason}"));
                        if stack_depth == 1 {
                            plan_skip = Some(reason.trim().to_string());
                        }
                    }
                }
            }
            Line::BailOut(reason) => {
                problems.push(format!("Bail out! {reason}"));
            }
            Line::Result(r) => {
                let expected = top.results.len() + 1;
                if r.number as usize != expected {
                    top.problems.push(format!(
                        "test \"{}\" has number {} where {} was expected",
                        r.name, r.number, expected
                    ));
                }
                let (outcome, reason) = match r.directive {
                    Some((Directive::Skip, reason)) => (Outcome::Skip, Some(reason.to_string())),
                    Some((Directive::Todo | Directive::XFail, reason)) => {
                        (Outcome::XFail, Some(reason.to_string()))
                    }
                    None if r.ok => (Outcome::Pass, None),
                    None => (Outcome::Fail, None),
                };
                top.results.push(TestResult {
                    number: r.number,
                    name: r.name.to_string(),
                    outcome,
                    reason,
                    subtests: std::mem::take(&mut top.pending_children),
                    output: std::mem::take(&mut top.pending_output),
                });
            }
            Line::Other => {}
        }
    }
    // Close everything.
    while stack.len() > 1 {
        let Some(mut done) = stack.pop() else { break };
        let depth = stack.len();
        done.close(&format!("subtest level {depth}"));
        if !done.results.is_empty() {
            problems.push(format!(
                "{} subtest results at level {depth} have no parent result line",
                done.results.len()
            ));
        }
        if let Some(parent) = stack.last_mut() {
            parent.problems.append(&mut done.problems);
            parent.pending_output.append(&mut done.pending_output);
        }
    }
    let Some(mut top) = stack.pop() else {
        return Report {
            problems: vec!["no KTAP output".to_string()],
            ..Report::default()
        };
    };
    if top.plan.is_none() {
        top.problems.push("no plan line (1..N)".to_string());
    } else {
        top.close("top level");
    }
    if !top.pending_children.is_empty() {
        top.problems.push(format!(
            "{} subtest results have no parent result line",
            top.pending_children.len()
        ));
    }
    problems.append(&mut top.problems);
    Report {
        version: top.version,
        plan: top.plan,
        tests: top.results,
        problems,
        trailing: top.pending_output,
        plan_skip,
    }
}

impl Report {
    /// Counts leaves (see the module documentation).
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        count(&self.tests, "", &mut s);
        s
    }

    /// Failed tests (leaves, and parents that failed without a failing child) with their paths.
    pub fn failed_tests(&self) -> Vec<(String, &TestResult)> {
        let mut out = Vec::new();
        collect_failed(&self.tests, "", &mut out);
        out
    }

    /// The verdict for a suite whose script exited with `rc`.
    pub fn verdict(&self, rc: i32, expected_skip: &dyn Fn(&str) -> bool) -> Verdict {
        let s = self.summary();
        let mut reasons = Vec::new();
        if rc != 0 {
            reasons.push(format!("suite script exited with rc={rc}"));
        }
        reasons.extend(self.problems.iter().cloned());
        if s.failed > 0 {
            reasons.push(format!("{} failed: {}", s.failed, s.failures.join(", ")));
        }
        let mut unexpected: Vec<String> = s
            .skips
            .iter()
            .filter(|(path, _)| !expected_skip(path))
            .map(|(path, why)| format!("{path}: {why}"))
            .collect();
        if let Some(why) = &self.plan_skip {
            if !expected_skip("*") {
                unexpected.push(format!("the whole suite (1..0): {why}"));
            }
        }
        if !reasons.is_empty() {
            reasons.extend(unexpected.iter().map(|u| format!("unexpected skip: {u}")));
            Verdict::Fail(reasons)
        } else if !unexpected.is_empty() {
            Verdict::UnexpectedSkip(unexpected)
        } else if s.passed == 0 {
            Verdict::AllSkipped
        } else {
            Verdict::Pass
        }
    }
}

fn path_of(prefix: &str, t: &TestResult) -> String {
    let name = if t.name.is_empty() {
        format!("#{}", t.number)
    } else {
        t.name.clone()
    };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

fn count(tests: &[TestResult], prefix: &str, s: &mut Summary) {
    for t in tests {
        let path = path_of(prefix, t);
        if t.subtests.is_empty() {
            match t.outcome {
                Outcome::Pass => s.passed += 1,
                Outcome::Skip => {
                    s.skipped += 1;
                    s.skips.push((path, t.reason.clone().unwrap_or_default()));
                }
                Outcome::XFail => s.xfail += 1,
                Outcome::Fail => {
                    s.failed += 1;
                    s.failures.push(path);
                }
            }
        } else {
            let before = s.failed;
            count(&t.subtests, &path, s);
            if t.outcome == Outcome::Fail && s.failed == before {
                s.failed += 1;
                s.failures.push(path);
            }
        }
    }
}

fn collect_failed<'r>(
    tests: &'r [TestResult],
    prefix: &str,
    out: &mut Vec<(String, &'r TestResult)>,
) {
    for t in tests {
        let path = path_of(prefix, t);
        let before = out.len();
        collect_failed(&t.subtests, &path, out);
        if t.outcome == Outcome::Fail && out.len() == before {
            out.push((path, t));
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )?;
        if self.xfail > 0 {
            write!(f, ", {} expected failures", self.xfail)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No skip is expected.
    const NONE: fn(&str) -> bool = |_| false;
    /// Every skip is expected.
    const ALL: fn(&str) -> bool = |_| true;

    fn p(text: &str) -> Report {
        parse(text.lines())
    }

    #[test]
    fn simple_pass() {
        let r = p("KTAP version 1\n1..2\nok 1 first\nok 2 second\n");
        assert_eq!(r.version.as_deref(), Some("KTAP version 1"));
        assert_eq!(r.plan, Some(2));
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.summary().passed, 2);
        assert_eq!(r.verdict(0, &NONE), Verdict::Pass);
    }

    #[test]
    fn failure_is_named_and_fails() {
        let r = p("KTAP version 1\n1..3\nok 1 a\n# boom at step 3\nnot ok 2 b\nok 3 c\n");
        let s = r.summary();
        assert_eq!((s.passed, s.failed, s.skipped), (2, 1, 0));
        assert_eq!(s.failures, vec!["b".to_string()]);
        assert_eq!(r.tests[1].output, vec!["# boom at step 3".to_string()]);
        assert!(matches!(r.verdict(0, &NONE), Verdict::Fail(_)));
    }

    #[test]
    fn skip_directive_counts_as_skip_not_pass() {
        let r = p("KTAP version 1\n1..2\nok 1 a # SKIP no device\nnot ok 2 b # skip why\n");
        let s = r.summary();
        assert_eq!((s.passed, s.failed, s.skipped), (0, 0, 2));
        assert_eq!(r.tests[0].reason.as_deref(), Some("no device"));
        assert_eq!(r.tests[0].name, "a");
        assert_eq!(r.verdict(0, &ALL), Verdict::AllSkipped);
        assert_eq!(
            r.verdict(0, &NONE),
            Verdict::UnexpectedSkip(vec!["a: no device".into(), "b: why".into()])
        );
        assert_eq!(
            r.verdict(0, &|p: &str| p == "a"),
            Verdict::UnexpectedSkip(vec!["b: why".into()])
        );
    }

    #[test]
    fn mixed_skip_and_pass_passes_only_when_the_skip_is_expected() {
        let r = p("KTAP version 1\n1..2\nok 1 a # SKIP x\nok 2 b\n");
        assert_eq!(r.verdict(0, &|p: &str| p == "a"), Verdict::Pass);
        assert_eq!(
            r.verdict(0, &NONE),
            Verdict::UnexpectedSkip(vec!["a: x".into()])
        );
        assert_eq!(r.summary().skipped, 1);
    }

    #[test]
    fn empty_plan_is_all_skipped_or_unexpected() {
        let r = p("KTAP version 1\n1..0 # SKIP no tests here\n");
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.plan_skip.as_deref(), Some("no tests here"));
        assert_eq!(r.verdict(0, &ALL), Verdict::AllSkipped);
        assert!(matches!(r.verdict(0, &NONE), Verdict::UnexpectedSkip(_)));
    }

    #[test]
    fn plan_mismatch_fails() {
        let r = p("KTAP version 1\n1..3\nok 1 a\nok 2 b\n");
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(matches!(r.verdict(0, &NONE), Verdict::Fail(_)));
    }

    #[test]
    fn missing_plan_fails() {
        let r = p("KTAP version 1\nok 1 a\n");
        assert!(matches!(r.verdict(0, &NONE), Verdict::Fail(_)));
    }

    #[test]
    fn plan_at_end_is_accepted() {
        let r = p("TAP version 13\nok 1 a\nok 2 b\n1..2\n");
        assert_eq!(r.verdict(0, &NONE), Verdict::Pass);
    }

    #[test]
    fn nonzero_rc_fails_even_if_all_ok() {
        let r = p("KTAP version 1\n1..1\nok 1 a\n");
        assert!(matches!(r.verdict(1, &NONE), Verdict::Fail(_)));
    }

    #[test]
    fn no_output_fails() {
        let r = p("");
        assert!(matches!(r.verdict(0, &NONE), Verdict::Fail(_)));
    }

    #[test]
    fn bad_numbering_fails() {
        let r = p("KTAP version 1\n1..2\nok 1 a\nok 3 b\n");
        assert!(!r.problems.is_empty());
    }

    #[test]
    fn bail_out_fails() {
        let r = p("KTAP version 1\n1..1\nBail out! module did not load\n");
        assert!(r.problems.iter().any(|x| x.contains("module did not load")));
    }

    #[test]
    fn tap_dash_and_todo() {
        let r = p("TAP version 14\n1..2\nok 1 - dashed name\nnot ok 2 known # TODO later\n");
        assert_eq!(r.tests[0].name, "dashed name");
        assert_eq!(r.tests[1].outcome, Outcome::XFail);
        assert_eq!(r.verdict(0, &NONE), Verdict::Pass);
    }

    #[test]
    fn hash_inside_name_is_not_a_directive() {
        let r = p("KTAP version 1\n1..1\nok 1 issue#12 fixed # SKIPPED_THING\n");
        assert_eq!(r.tests[0].outcome, Outcome::Pass);
        assert_eq!(r.tests[0].name, "issue#12 fixed # SKIPPED_THING");
    }

    #[test]
    fn nameless_skip() {
        let r = p("KTAP version 1\n1..1\nok 1 # SKIP nothing\n");
        assert_eq!(r.tests[0].outcome, Outcome::Skip);
        assert_eq!(r.tests[0].name, "");
    }

    const NESTED: &str = "\
KTAP version 1
1..2
    KTAP version 1
    # Subtest: hmm
    1..3
    ok 1 open
    # migrate failed: -EIO
    not ok 2 migrate
    ok 3 close # SKIP not supported
not ok 1 hmm
    KTAP version 1
    1..1
    ok 1 enumerate
ok 2 pci
";

    #[test]
    fn nested_subtests_attach_to_parent() {
        let r = p(NESTED);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.tests.len(), 2);
        assert_eq!(r.tests[0].subtests.len(), 3);
        assert_eq!(r.tests[1].subtests.len(), 1);
        let s = r.summary();
        assert_eq!((s.passed, s.failed, s.skipped), (2, 1, 1));
        assert_eq!(s.failures, vec!["hmm/migrate".to_string()]);
        assert_eq!(s.skips.len(), 1);
        assert!(s.skips[0].0.starts_with("hmm/"), "{:?}", s.skips);
        let failed = r.failed_tests();
        assert_eq!(failed.len(), 1);
        assert_eq!(
            failed[0].1.output,
            vec!["    # migrate failed: -EIO".to_string()]
        );
    }

    #[test]
    fn nested_plan_mismatch_is_a_problem() {
        let r = p("KTAP version 1\n1..1\n    1..2\n    ok 1 x\nok 1 parent\n");
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    }

    #[test]
    fn parent_failure_without_failing_child_counts() {
        let r = p("KTAP version 1\n1..1\n    1..1\n    ok 1 x\nnot ok 1 parent\n");
        let s = r.summary();
        assert_eq!((s.passed, s.failed), (1, 1));
        assert_eq!(s.failures, vec!["parent".to_string()]);
    }

    #[test]
    fn leading_noise_and_crlf_are_tolerated() {
        let r = p("random boot noise\r\nKTAP version 1\r\n1..1\r\nok 1 a\r\n");
        assert_eq!(r.verdict(0, &NONE), Verdict::Pass);
        assert_eq!(r.tests[0].output, vec!["random boot noise".to_string()]);
    }

    #[test]
    fn kselftest_harness_output() {
        let text = "\
TAP version 13
1..2
# Starting 2 tests from 1 test cases.
#  RUN           hmm.open ...
#            OK  hmm.open
ok 1 hmm.open
#  RUN           hmm.gup ...
#      SKIP      GUP_TEST not set
#            OK  hmm.gup
ok 2 hmm.gup # SKIP GUP_TEST not set
# PASSED: 2 / 2 tests passed.
# Totals: pass:1 fail:0 xfail:0 xpass:0 skip:1 error:0
";
        let r = p(text);
        assert_eq!(r.verdict(0, &|p: &str| p == "hmm.gup"), Verdict::Pass);
        assert!(matches!(r.verdict(0, &NONE), Verdict::UnexpectedSkip(_)));
        let s = r.summary();
        assert_eq!((s.passed, s.skipped), (1, 1));
        assert_eq!(
            s.skips,
            vec![("hmm.gup".to_string(), "GUP_TEST not set".to_string())]
        );
        assert_eq!(r.trailing.len(), 2);
    }

    #[test]
    fn not_a_result_line() {
        assert_eq!(classify("okay then"), Line::Other);
        assert_eq!(classify("ok"), Line::Other);
        assert_eq!(classify("ok 12abc"), Line::Other);
        assert_eq!(classify("1..x"), Line::Other);
    }
}
