//! Results of a boot: collecting the lines between the markers, the verdict and exit code, and
//! the failure report (tails of the console, QEMU's stderr and the server logs).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::exit;
use crate::ktap::{self, Verdict};
use crate::process::{indent, tail_lines};
use crate::qemu::Accel;
use crate::run::{write_junit, Mode, RunRequest};
use crate::suite::ExpectedSkip;

/// Lines of console and server logs shown on failure.
const TAIL: usize = 40;

/// Where a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// ttyS0: kernel console and /init's messages.
    Console,
    /// ttyS1: the results channel.
    Results,
}

/// What a fed line meant.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    /// Not between the markers (or from the other source).
    Ignored,
    /// `VUGPU-BEGIN`.
    Begin,
    /// A result line.
    Line,
    /// `VUGPU-END rc=N`.
    End(i32),
}

/// Collects the lines between the markers. The source that shows `VUGPU-BEGIN` first is the
/// results source (the results channel normally; the console when /init had to fall back).
#[derive(Debug, Default)]
pub struct Collector {
    source: Option<Source>,
    /// Lines between the markers.
    pub lines: Vec<String>,
    /// Exit code from `VUGPU-END`.
    pub end: Option<i32>,
}

impl Collector {
    /// Feeds one line.
    pub fn feed(&mut self, src: Source, line: &str) -> Fed {
        let t = line.trim();
        if self.end.is_some() {
            return Fed::Ignored;
        }
        match self.source {
            None => {
                if t == "VUGPU-BEGIN" {
                    self.source = Some(src);
                    Fed::Begin
                } else {
                    Fed::Ignored
                }
            }
            Some(s) if s != src => Fed::Ignored,
            Some(_) => {
                if let Some(rest) = t.strip_prefix("VUGPU-END") {
                    let rc = rest
                        .trim()
                        .strip_prefix("rc=")
                        .and_then(|v| v.parse::<i32>().ok())
                        .unwrap_or(255);
                    self.end = Some(rc);
                    Fed::End(rc)
                } else {
                    self.lines.push(line.to_string());
                    Fed::Line
                }
            }
        }
    }

    /// Whether `VUGPU-BEGIN` was seen.
    pub fn begun(&self) -> bool {
        self.source.is_some()
    }
}

/// How a boot ended.
#[derive(Debug)]
pub enum Finish {
    /// `VUGPU-END` arrived.
    Completed {
        /// Exit status of the suite or command.
        rc: i32,
        /// Lines between the markers.
        lines: Vec<String>,
    },
    /// QEMU exited (or the guest stopped) without `VUGPU-END`.
    Died {
        /// What was seen.
        reason: String,
    },
    /// The deadline passed.
    TimedOut,
    /// The runner got this signal.
    Interrupted(i32),
}

/// Prints tails of the console, QEMU's stderr and each server log.
pub fn print_context(run_dir: &Path) {
    let show = |title: &str, path: &Path| {
        let lines = tail_lines(path, TAIL);
        if !lines.is_empty() {
            eprintln!(
                "--- last {} lines of {title} ({}):",
                lines.len(),
                path.display()
            );
            eprintln!("{}", indent(&lines));
        }
    };
    show("the console", &run_dir.join("console.log"));
    show("QEMU's stderr", &run_dir.join("qemu.log"));
    for l in server_logs(run_dir) {
        let name = l
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        show(&format!("the {name} server log"), &l);
    }
}

/// The server logs (`gpuK.log`) of a run directory, in order.
fn server_logs(run_dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = fs::read_dir(run_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n == crate::servers::LOG_NAME
                            || (n.starts_with("gpu") && n.ends_with(".log"))
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    logs.sort();
    logs
}

/// Most warning lines quoted per server.
const WARNINGS_SHOWN: usize = 5;

/// The warning and error lines of one server log (stalls the server noticed, failed DMA
/// messages, protocol errors): `(count, the first few)`.
pub fn server_warnings(log: &Path) -> (usize, Vec<String>) {
    let Ok(text) = fs::read_to_string(log) else {
        return (0, Vec::new());
    };
    let hits: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("[Warn]") || l.contains("[Error]"))
        .collect();
    let shown = hits
        .iter()
        .take(WARNINGS_SHOWN)
        .map(|l| l.to_string())
        .collect();
    (hits.len(), shown)
}

/// Says how many warnings each server logged, quoting the first few: a pass with a stalled
/// model is worth knowing about.
fn report_server_warnings(run_dir: &Path) {
    for l in server_logs(run_dir) {
        let (n, shown) = server_warnings(&l);
        if n == 0 {
            continue;
        }
        let name = l
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        say!("{name} server logged {n} warning(s) ({}):", l.display());
        eprintln!("{}", indent(&shown));
    }
}

/// The line `suite_report_load` (suites/lib/suite.sh) prints: how many functions the driver bound.
const BOUND_LINE: &str = "# vugpu functions bound to the driver: ";

/// How many functions the suite says the driver bound, if it said so.
fn bound_reported(lines: &[String]) -> Option<usize> {
    lines.iter().find_map(|l| {
        l.trim()
            .strip_prefix(BOUND_LINE.trim_start())
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    })
}

/// One line per GPU that moved data to or from a peer, from the `gpuK.stats.json` files the run
/// saved (`vugpu stats`'s `p2p` list: bytes this GPU's engines read from / wrote to each peer).
pub fn p2p_traffic(run_dir: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = fs::read_dir(run_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(".stats.json"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut lines = Vec::new();
    for f in files {
        let Ok(v) = fs::read_to_string(&f)
            .map_err(|_| ())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).map_err(|_| ()))
        else {
            continue;
        };
        let gpu = f
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".stats.json"))
            .unwrap_or("?")
            .to_string();
        for e in v
            .get("p2p")
            .and_then(|p| p.as_array())
            .into_iter()
            .flatten()
        {
            let n = |k: &str| e.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
            let (read, written) = (n("read"), n("written"));
            if read + written > 0 {
                let peer = e.get("peer").and_then(|x| x.as_str()).unwrap_or("?");
                lines.push(format!(
                    "{gpu} -> {peer}: read {read} B, wrote {written} B (direct, in-process)"
                ));
            }
        }
    }
    lines
}

/// Exit code for a suite whose script exited with `rc` and printed `lines` with `gpus` GPUs
/// attached, the report and the verdict. Skips not in `expected` make it
/// [`Verdict::UnexpectedSkip`]; a driver bound to fewer or more functions than were attached
/// (or a suite that never says) fails it.
pub fn suite_outcome(
    lines: &[String],
    rc: i32,
    expected: &[ExpectedSkip],
    gpus: usize,
) -> (i32, ktap::Report, Verdict) {
    let report = ktap::parse(lines.iter().map(String::as_str));
    let mut verdict = report.verdict(rc, &|path: &str| expected.iter().any(|e| e.matches(path)));
    if gpus > 0 {
        let problem = match bound_reported(lines) {
            Some(n) if n == gpus => None,
            Some(n) => Some(format!(
                "the vugpu driver is bound to {n} function(s) but {gpus} GPU(s) are attached"
            )),
            None if report.plan_skip.is_some() => None,
            None => Some(format!(
                "the suite never reported how many vugpu functions the driver bound ({gpus} attached)"
            )),
        };
        if let Some(p) = problem {
            verdict = match verdict {
                Verdict::Fail(mut r) => {
                    r.push(p);
                    Verdict::Fail(r)
                }
                _ => Verdict::Fail(vec![p]),
            };
        }
    }
    let code = match verdict {
        Verdict::Pass => exit::PASS,
        Verdict::AllSkipped => exit::SKIPPED,
        Verdict::UnexpectedSkip(_) => exit::UNEXPECTED_SKIP,
        Verdict::Fail(_) => exit::FAIL,
    };
    (code, report, verdict)
}

/// Lists the skips that were expected, with the suite's reasons.
/// One line per (skip message, declared reason) with the tests it covers, so that forty
/// coherent-memory skips read as one line (JUnit keeps one entry per test).
fn say_expected_skips(report: &ktap::Report, expected: &[ExpectedSkip]) {
    for ((why, reason), paths) in group_expected_skips(report.summary().skips, expected) {
        say!(
            "  expected skip ({}): {why} ({reason}): {}",
            paths.len(),
            paths.join(", ")
        );
    }
}

/// Groups the expected skips by their message and the suite's declared reason, in first-seen
/// order; skips the suite does not expect are left out.
fn group_expected_skips(
    skips: Vec<(String, String)>,
    expected: &[ExpectedSkip],
) -> Vec<((String, String), Vec<String>)> {
    let mut groups: Vec<((String, String), Vec<String>)> = Vec::new();
    for (path, why) in skips {
        let Some(e) = expected.iter().find(|e| e.matches(&path)) else {
            continue;
        };
        let key = (why, e.reason.clone());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, paths)) => paths.push(path),
            None => groups.push((key, vec![path])),
        }
    }
    groups
}

/// Prints the outcome (and writes `--junit`) and returns the exit code.
pub fn report(
    req: &RunRequest,
    finish: &Finish,
    run_dir: &Path,
    accel: Accel,
    elapsed: Duration,
) -> i32 {
    let ran_on = req.facts.line(Some(accel));
    let mut junit_report = None;
    let mut run_errors = Vec::new();
    let code = match (finish, &req.mode) {
        (Finish::Completed { rc, lines }, Mode::Suite(name)) => {
            let (code, report, verdict) = suite_outcome(lines, *rc, &req.expected_skips, req.gpus);
            let summary = report.summary();
            if report.version.is_none() && !lines.is_empty() {
                say!("warning: suite {name} printed no KTAP version line");
            }
            match &verdict {
                Verdict::Pass => {
                    say!("suite {name}: PASS ({summary}) on {ran_on}");
                    say_expected_skips(&report, &req.expected_skips);
                }
                Verdict::AllSkipped => {
                    say!(
                        "suite {name}: NOTHING PASSED ({summary}) on {ran_on}; exit code {}",
                        exit::SKIPPED
                    );
                    say_expected_skips(&report, &req.expected_skips);
                }
                Verdict::UnexpectedSkip(skips) => {
                    say!(
                        "suite {name}: FAIL, {} unexpected skip(s) ({summary}) on {ran_on}; exit code {}",
                        skips.len(),
                        exit::UNEXPECTED_SKIP
                    );
                    for s in skips {
                        say!("  - unexpected skip: {s}");
                    }
                    say_expected_skips(&report, &req.expected_skips);
                    say!("  (a suite lists the skips it expects with `# vugpu-vm: expect-skip NAME: REASON`)");
                }
                Verdict::Fail(reasons) => {
                    say!("suite {name}: FAIL ({summary}) on {ran_on}");
                    for r in reasons {
                        say!("  - {r}");
                    }
                    run_errors = reasons
                        .iter()
                        .filter(|r| !r.contains(" failed: "))
                        .cloned()
                        .collect();
                    for (path, t) in report.failed_tests().iter().take(20) {
                        let out: Vec<String> =
                            t.output.iter().rev().take(15).rev().cloned().collect();
                        if !out.is_empty() {
                            eprintln!("--- output before \"not ok {path}\":");
                            eprintln!("{}", indent(&out));
                        }
                    }
                }
            }
            junit_report = Some(report);
            code
        }
        (Finish::Completed { rc, .. }, Mode::Command(_)) => {
            if *rc != 0 {
                say!("command exited with rc={rc}");
            }
            (*rc).clamp(0, 255)
        }
        (Finish::Died { reason }, mode) => {
            say!("guest died: {reason} (on {ran_on})");
            run_errors.push(format!("guest died: {reason}"));
            if matches!(mode, Mode::Suite(_)) {
                exit::GUEST_DIED
            } else {
                exit::INFRA
            }
        }
        (Finish::Interrupted(sig), _) => {
            say!("interrupted by signal {sig}; QEMU and the servers were stopped");
            run_errors.push(format!("interrupted by signal {sig}"));
            128 + sig
        }
        (Finish::TimedOut, _) => {
            say!(
                "timeout: no VUGPU-END within {}s (raise --timeout?)",
                req.timeout.as_secs()
            );
            run_errors.push(format!(
                "timeout: no VUGPU-END within {}s",
                req.timeout.as_secs()
            ));
            exit::TIMEOUT
        }
    };
    if let (Some(path), Mode::Suite(name)) = (&req.junit, &req.mode) {
        write_junit(
            path,
            name,
            junit_report.as_ref(),
            &req.expected_skips,
            &req.facts,
            Some((req, accel)),
            run_errors,
            elapsed.as_secs_f64(),
        );
    }
    for l in p2p_traffic(run_dir) {
        say!("p2p: {l}");
    }
    if code == exit::PASS {
        report_server_warnings(run_dir);
    } else {
        print_context(run_dir);
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_skips_grouped_by_message_and_reason() {
        let exp = |pattern: &str, reason: &str| ExpectedSkip {
            pattern: pattern.into(),
            unless: None,
            reason: reason.into(),
        };
        let expected = [exp("*_coherent.*", "no SPM"), exp("*.gup", "no GUP_TEST")];
        let skips = vec![
            ("s/a_coherent.x".to_string(), "not available".to_string()),
            ("s/a.gup".to_string(), "needs GUP".to_string()),
            ("s/unlisted".to_string(), "why".to_string()),
            ("s/b_coherent.y".to_string(), "not available".to_string()),
        ];
        let g = group_expected_skips(skips, &expected);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].0, ("not available".to_string(), "no SPM".to_string()));
        assert_eq!(g[0].1, ["s/a_coherent.x", "s/b_coherent.y"]);
        assert_eq!(g[1].1, ["s/a.gup"]);
    }

    #[test]
    fn collector_takes_lines_between_markers_from_the_first_source() {
        let mut c = Collector::default();
        assert_eq!(c.feed(Source::Console, "[ 0.1] boot"), Fed::Ignored);
        assert_eq!(c.feed(Source::Results, "VUGPU-BEGIN"), Fed::Begin);
        assert_eq!(c.feed(Source::Console, "VUGPU-END rc=9"), Fed::Ignored);
        assert_eq!(c.feed(Source::Results, "KTAP version 1"), Fed::Line);
        assert_eq!(c.feed(Source::Results, "VUGPU-END rc=3"), Fed::End(3));
        assert_eq!(c.feed(Source::Results, "late"), Fed::Ignored);
        assert_eq!(c.lines, vec!["KTAP version 1"]);
        assert_eq!(c.end, Some(3));
    }

    #[test]
    fn collector_console_fallback_and_bad_rc() {
        let mut c = Collector::default();
        assert_eq!(c.feed(Source::Console, "VUGPU-BEGIN\r"), Fed::Begin);
        assert_eq!(c.feed(Source::Results, "ok 1 x"), Fed::Ignored);
        assert_eq!(c.feed(Source::Console, "VUGPU-END rc=oops"), Fed::End(255));
    }

    #[test]
    fn server_warnings_are_counted_and_quoted() {
        let dir = std::env::temp_dir().join(format!("vugpu-report-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("gpu0.log");
        let mut text = String::from("vugpu 0.1 [Info] serving\n");
        for i in 0..7 {
            text.push_str(&format!(
                "vugpu 1.{i} [Warn] handling Some(Session) took 5000000 us\n"
            ));
        }
        text.push_str("vugpu 9.0 [Error] something\n");
        fs::write(&log, text).unwrap();
        let (n, shown) = server_warnings(&log);
        assert_eq!(n, 8);
        assert_eq!(shown.len(), WARNINGS_SHOWN);
        assert!(shown[0].contains("1.0 [Warn]"));
        assert_eq!(server_logs(&dir), vec![log.clone()]);
        assert_eq!(server_warnings(&dir.join("missing.log")), (0, Vec::new()));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn suite_exit_codes() {
        let l = |s: &str| s.lines().map(str::to_string).collect::<Vec<_>>();
        let out = |s: &str, rc: i32| suite_outcome(&l(s), rc, &[], 0).0;
        assert_eq!(out("KTAP version 1\n1..1\nok 1 a", 0), exit::PASS);
        assert_eq!(out("KTAP version 1\n1..1\nnot ok 1 a", 0), exit::FAIL);
        assert_eq!(
            out("KTAP version 1\n1..1\nok 1 a # SKIP no gpu", 0),
            exit::UNEXPECTED_SKIP
        );
        assert_eq!(out("KTAP version 1\n1..1\nok 1 a", 1), exit::FAIL);
        assert_eq!(out("KTAP version 1\n1..2\nok 1 a", 0), exit::FAIL);
        assert_eq!(suite_outcome(&[], 0, &[], 0).0, exit::FAIL);
    }

    #[test]
    fn an_undeclared_skip_fails_and_a_declared_one_passes() {
        let l = |s: &str| s.lines().map(str::to_string).collect::<Vec<_>>();
        let text = l("KTAP version 1\n1..3\nok 1 a\nok 2 hmm_gup_test # SKIP no GUP_TEST\nok 3 c # SKIP not enough VRAM");
        let gup = ExpectedSkip {
            pattern: "hmm_gup_test".into(),
            unless: Some("CONFIG_GUP_TEST".into()),
            reason: "needs GUP_TEST".into(),
        };
        let (code, _, v) = suite_outcome(&text, 0, std::slice::from_ref(&gup), 0);
        assert_eq!(code, exit::UNEXPECTED_SKIP);
        assert_eq!(
            v,
            Verdict::UnexpectedSkip(vec!["c: not enough VRAM".into()])
        );
        let any_c = ExpectedSkip {
            pattern: "c".into(),
            unless: None,
            reason: "small BAR".into(),
        };
        assert_eq!(suite_outcome(&text, 0, &[gup, any_c], 0).0, exit::PASS);
        // Every skip expected but nothing passed: still not a pass.
        let all = ExpectedSkip {
            pattern: "*".into(),
            unless: None,
            reason: "r".into(),
        };
        let skipped = l("KTAP version 1\n1..1\nok 1 a # SKIP x");
        assert_eq!(
            suite_outcome(&skipped, 0, std::slice::from_ref(&all), 0).0,
            exit::SKIPPED
        );
        let whole = l("KTAP version 1\n1..0 # SKIP no engines");
        assert_eq!(suite_outcome(&whole, 0, &[], 1).0, exit::UNEXPECTED_SKIP);
        assert_eq!(suite_outcome(&whole, 0, &[all], 1).0, exit::SKIPPED);
    }

    #[test]
    fn a_missing_gpu_fails_the_run() {
        let l = |s: &str| s.lines().map(str::to_string).collect::<Vec<_>>();
        let ok = |bound: &str| {
            l(&format!(
                "KTAP version 1\n1..1\n# vugpu functions bound to the driver: {bound} attached\nok 1 insmod_vugpu"
            ))
        };
        assert_eq!(suite_outcome(&ok("2 of 2"), 0, &[], 2).0, exit::PASS);
        let (code, _, v) = suite_outcome(&ok("1 of 2"), 0, &[], 2);
        assert_eq!(code, exit::FAIL);
        assert_eq!(
            v,
            Verdict::Fail(vec![
                "the vugpu driver is bound to 1 function(s) but 2 GPU(s) are attached".into()
            ])
        );
        let silent = l("KTAP version 1\n1..1\nok 1 a");
        let (code, _, v) = suite_outcome(&silent, 0, &[], 1);
        assert_eq!(code, exit::FAIL);
        assert!(format!("{v:?}").contains("never reported"), "{v:?}");
        // With no GPU attached nothing is required.
        assert_eq!(suite_outcome(&silent, 0, &[], 0).0, exit::PASS);
    }

    #[test]
    fn p2p_traffic_lines_from_saved_stats() {
        let dir = std::env::temp_dir().join(format!("vugpu-p2pstats-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("gpu0.stats.json"),
            r#"{"p2p":[{"peer":"gpu0","read":0,"written":0},{"peer":"gpu1","read":4096,"written":1048576}]}"#,
        )
        .unwrap();
        fs::write(dir.join("gpu1.stats.json"), "not json").unwrap();
        assert_eq!(
            p2p_traffic(&dir),
            vec!["gpu0 -> gpu1: read 4096 B, wrote 1048576 B (direct, in-process)".to_string()]
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
