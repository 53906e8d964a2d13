//! JUnit XML (`--junit FILE`): the suite's KTAP results in the format CI systems ingest.
//!
//! One `<testsuite>` per run, one `<testcase>` per KTAP leaf (`parent/child` names). A failed
//! test is `<failure>` with the output that preceded it; an expected skip is `<skipped>` with
//! its reason; an unexpected skip is a `<failure type="unexpected-skip">` (a skip is never a
//! silent pass); structural problems, a non-zero suite exit, a dead guest or a timeout are one
//! `<error>` test case named `(run)`. `<properties>` say what the run ran on.
//!
//! The XML is written here, not by an XML crate: the document has one fixed shape, and the
//! escaping also drops the control characters XML 1.0 forbids, which escaping functions leave in.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use crate::ktap::{Outcome, Report, TestResult};

/// What a run ran on and how it ended, for the `<properties>` and the `(run)` case.
#[derive(Clone, Debug, Default)]
pub struct RunFacts {
    /// (name, value) pairs: kernel release and options, QEMU, accelerator, GPUs ...
    pub properties: Vec<(String, String)>,
    /// Why the run failed outside any test (empty if it did not).
    pub run_errors: Vec<String>,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Escapes text for XML 1.0 (attribute- and content-safe); drops characters XML cannot carry.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\t' | '\n' | '\r' => o.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => o.push(c),
        }
    }
    o
}

struct Case {
    name: String,
    outcome: Outcome,
    reason: String,
    output: Vec<String>,
}

fn leaves(tests: &[TestResult], prefix: &str, out: &mut Vec<Case>) {
    for t in tests {
        let name = if t.name.is_empty() {
            format!("#{}", t.number)
        } else {
            t.name.clone()
        };
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if t.subtests.is_empty() {
            out.push(Case {
                name: path,
                outcome: t.outcome,
                reason: t.reason.clone().unwrap_or_default(),
                output: t.output.clone(),
            });
        } else {
            let before = out.len();
            leaves(&t.subtests, &path, out);
            let child_failed = out[before..].iter().any(|c| c.outcome == Outcome::Fail);
            if t.outcome == Outcome::Fail && !child_failed {
                out.push(Case {
                    name: path,
                    outcome: Outcome::Fail,
                    reason: String::new(),
                    output: t.output.clone(),
                });
            }
        }
    }
}

/// Renders the document.
pub fn render(
    suite: &str,
    report: Option<&Report>,
    expected_skip: &dyn Fn(&str) -> Option<String>,
    facts: &RunFacts,
) -> String {
    let mut cases = Vec::new();
    if let Some(r) = report {
        leaves(&r.tests, "", &mut cases);
    }
    let (mut failures, mut skipped) = (0, 0);
    let mut body = String::new();
    for c in &cases {
        let _ = write!(
            body,
            "    <testcase classname=\"vugpu.{}\" name=\"{}\"",
            esc(suite),
            esc(&c.name)
        );
        let out = esc(&c.output.join("\n"));
        match c.outcome {
            Outcome::Pass => body.push_str("/>\n"),
            Outcome::XFail => {
                skipped += 1;
                let _ = writeln!(
                    body,
                    ">\n      <skipped message=\"expected failure: {}\"/>\n    </testcase>",
                    esc(&c.reason)
                );
            }
            Outcome::Fail => {
                failures += 1;
                let _ = writeln!(
                    body,
                    ">\n      <failure message=\"not ok\" type=\"failure\">{out}</failure>\n    </testcase>"
                );
            }
            Outcome::Skip => match expected_skip(&c.name) {
                Some(why) => {
                    skipped += 1;
                    let _ = writeln!(
                        body,
                        ">\n      <skipped message=\"expected skip: {} ({})\"/>\n    </testcase>",
                        esc(&c.reason),
                        esc(&why)
                    );
                }
                None => {
                    failures += 1;
                    let _ = writeln!(
                        body,
                        ">\n      <failure message=\"unexpected skip: {}\" type=\"unexpected-skip\">{out}</failure>\n    </testcase>",
                        esc(&c.reason)
                    );
                }
            },
        }
    }
    let mut errors = 0;
    if !facts.run_errors.is_empty() {
        errors = 1;
        let _ = writeln!(
            body,
            "    <testcase classname=\"vugpu.{}\" name=\"(run)\">\n      <error message=\"{}\" type=\"run\">{}</error>\n    </testcase>",
            esc(suite),
            esc(&facts.run_errors[0]),
            esc(&facts.run_errors.join("\n"))
        );
    }
    let tests = cases.len() + errors;
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"vugpu-vm\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{:.3}\">",
        facts.seconds
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{:.3}\">",
        esc(suite),
        facts.seconds
    );
    x.push_str("    <properties>\n");
    for (k, v) in &facts.properties {
        let _ = writeln!(
            x,
            "      <property name=\"{}\" value=\"{}\"/>",
            esc(k),
            esc(v)
        );
    }
    x.push_str("    </properties>\n");
    x.push_str(&body);
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

/// Writes the document to `path`.
pub fn write(
    path: &Path,
    suite: &str,
    report: Option<&Report>,
    expected_skip: &dyn Fn(&str) -> Option<String>,
    facts: &RunFacts,
) -> io::Result<()> {
    std::fs::write(path, render(suite, report, expected_skip, facts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ktap;

    #[test]
    fn cases_failures_and_skips() {
        let r = ktap::parse(
            "KTAP version 1\n1..4\nok 1 a\n# boom <x>\nnot ok 2 b\nok 3 c # SKIP no GUP_TEST\nok 4 d # SKIP no VRAM\n"
                .lines(),
        );
        let facts = RunFacts {
            properties: vec![("kernel.release".into(), "7.3.4+deb13-amd64".into())],
            run_errors: vec![],
            seconds: 1.5,
        };
        let x = render(
            "dma",
            Some(&r),
            &|n: &str| (n == "c").then(|| "needs GUP_TEST".to_string()),
            &facts,
        );
        assert!(
            x.contains("tests=\"4\" failures=\"2\" errors=\"0\" skipped=\"1\""),
            "{x}"
        );
        assert!(
            x.contains("<testcase classname=\"vugpu.dma\" name=\"a\"/>"),
            "{x}"
        );
        assert!(x.contains("# boom &lt;x&gt;</failure>"), "{x}");
        assert!(
            x.contains("expected skip: no GUP_TEST (needs GUP_TEST)"),
            "{x}"
        );
        assert!(x.contains("type=\"unexpected-skip\""), "{x}");
        assert!(x.contains("<property name=\"kernel.release\" value=\"7.3.4+deb13-amd64\"/>"));
        assert!(x.contains("time=\"1.500\""));
    }

    #[test]
    fn run_errors_and_escaping() {
        let facts = RunFacts {
            properties: vec![],
            run_errors: vec!["guest died: Kernel panic \u{1}".into()],
            seconds: 0.0,
        };
        let x = render("s&\"'", None, &|_: &str| None, &facts);
        assert!(x.contains("name=\"(run)\""), "{x}");
        assert!(x.contains("errors=\"1\""), "{x}");
        assert!(x.contains("s&amp;&quot;&apos;"), "{x}");
        assert!(!x.contains('\u{1}'));
    }

    #[test]
    fn parent_failure_without_failing_child_is_a_case() {
        let r = ktap::parse("1..1\n    1..1\n    ok 1 x\nnot ok 1 p\n".lines());
        let x = render("s", Some(&r), &|_: &str| None, &RunFacts::default());
        assert!(x.contains("name=\"p/x\"/>"), "{x}");
        assert!(x.contains("name=\"p\">"), "{x}");
        assert!(x.contains("failures=\"1\""), "{x}");
    }
}
