//! Child processes: spawning so nothing outlives the runner, bounded waits with progress, graceful
//! termination, and log tails for failure reports.
//!
//! System calls go through rustix (death signal, SIGTERM) and signal-hook (the interrupt flag).
//! The one `unsafe` left is [`die_with_parent`]'s `Command::pre_exec`: std has no safe way to run
//! code between fork and exec, and `Command` has no death-signal option.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The signal (SIGINT, SIGTERM, SIGHUP) that asked the runner to stop, or 0.
static INTERRUPTED: AtomicUsize = AtomicUsize::new(0);

/// Turns SIGINT, SIGTERM and SIGHUP into a flag that the wait loops poll, so the runner stops
/// QEMU and the servers and reports instead of dying in the middle. (Children get the default
/// dispositions back at exec.) Through `signal-hook`, whose handler only stores to the atomic
/// (async-signal-safe) and is installed with SA_RESTART.
pub fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // Cannot fail for these signals (only the forbidden ones, SIGKILL/SIGSTOP/..., are refused).
        let _ = signal_hook::flag::register_usize(sig, &INTERRUPTED, sig.unsigned_abs() as usize);
    }
}

/// The signal that interrupted the runner, if any.
pub fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => None,
        s => i32::try_from(s).ok(),
    }
}

/// How often a long step prints that it is still running.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// Errors running a helper command.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// Description of the command.
        what: String,
        /// Cause.
        source: io::Error,
    },
    /// The program ran and failed.
    #[error("{what} failed ({status}); last lines of {}:\n{tail}", log.display())]
    Failed {
        /// Description of the command.
        what: String,
        /// Exit status.
        status: ExitStatus,
        /// Its log.
        log: PathBuf,
        /// Last lines of the log.
        tail: String,
    },
    /// The program did not finish in time and was killed.
    #[error("{what} did not finish within {}s and was killed; log: {}", limit.as_secs(), log.display())]
    TimedOut {
        /// Description of the command.
        what: String,
        /// Bound.
        limit: Duration,
        /// Its log.
        log: PathBuf,
    },
    /// The runner was asked to stop.
    #[error("{what} interrupted by signal {signal}")]
    Interrupted {
        /// Description of the command.
        what: String,
        /// The signal.
        signal: i32,
    },
    /// I/O on the log file.
    #[error("log file {}: {source}", path.display())]
    Log {
        /// Log path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

/// Makes the child receive SIGKILL when the runner dies, so no QEMU or server outlives it even
/// when the runner itself is killed. Must be called on a command spawned from the main thread
/// (the signal follows the thread that forked).
pub fn die_with_parent(cmd: &mut Command) {
    use rustix::process::{set_parent_process_death_signal, Signal};
    // SAFETY: the closure runs in the forked child before exec and only makes the prctl(2)
    // system call, which is async-signal-safe; it allocates nothing and touches no memory shared
    // with the parent. (`pre_exec` is unsafe whatever the hook does: there is no safe way to run
    // code between fork and exec, and Command has no death-signal option.)
    unsafe {
        cmd.pre_exec(|| {
            set_parent_process_death_signal(Some(Signal::KILL))?;
            Ok(())
        });
    }
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILL. Returns the exit status.
pub fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    // The child is not reaped yet (try_wait returned None), so its pid still names it.
    let pid = rustix::process::Pid::from_child(child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let end = Instant::now() + grace;
    while Instant::now() < end {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    child.wait().ok()
}

/// The last `n` lines of a text file (lossy UTF-8; empty when unreadable). Reads at most the
/// last 256 KiB.
pub fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(256 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut lines: Vec<String> = Vec::new();
    let mut reader = BufReader::new(f);
    let mut buf = Vec::new();
    while let Ok(k) = reader.read_until(b'\n', &mut buf) {
        if k == 0 {
            break;
        }
        let line = String::from_utf8_lossy(&buf);
        lines.push(line.trim_end_matches(['\n', '\r']).to_string());
        buf.clear();
        if lines.len() > 4 * n.max(1) {
            lines.drain(..lines.len() - n);
        }
    }
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

/// Indents lines for a report.
pub fn indent(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `cmd` to completion with stdout and stderr appended to `log`, printing a heartbeat with
/// the log's last line every 15 s, killing it after `limit`.
pub fn run_logged(
    mut cmd: Command,
    what: &str,
    log: &Path,
    limit: Duration,
) -> Result<(), ProcessError> {
    let log_err = |source| ProcessError::Log {
        path: log.to_path_buf(),
        source,
    };
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(log_err)?;
    let err = out.try_clone().map_err(log_err)?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        what: what.to_string(),
        source,
    })?;
    let start = Instant::now();
    let mut next_beat = start + HEARTBEAT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                return Err(ProcessError::Failed {
                    what: what.to_string(),
                    status,
                    log: log.to_path_buf(),
                    tail: indent(&tail_lines(log, 25)),
                })
            }
            Ok(None) => {}
            Err(source) => {
                return Err(ProcessError::Spawn {
                    what: what.to_string(),
                    source,
                })
            }
        }
        if let Some(signal) = interrupted() {
            terminate(&mut child, Duration::from_secs(5));
            return Err(ProcessError::Interrupted {
                what: what.to_string(),
                signal,
            });
        }
        let now = Instant::now();
        if now.duration_since(start) > limit {
            terminate(&mut child, Duration::from_secs(5));
            return Err(ProcessError::TimedOut {
                what: what.to_string(),
                limit,
                log: log.to_path_buf(),
            });
        }
        if now >= next_beat {
            let last = tail_lines(log, 1).pop().unwrap_or_default();
            let last: String = last.chars().take(100).collect();
            crate::say!(
                "  ... {what}: {}s ({})",
                now.duration_since(start).as_secs(),
                last.trim()
            );
            next_beat = now + HEARTBEAT;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Finds a program in PATH or the system directories ([`crate::root::SYSTEM_PATH`]).
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(std::env::split_paths(crate::root::SYSTEM_PATH))
        .map(|d| d.join(name))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Runs `cmd` and returns its stdout when it exits successfully within `limit`.
pub fn output(mut cmd: Command, what: &str, limit: Duration) -> Result<String, ProcessError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        what: what.to_string(),
        source,
    })?;
    // Read both pipes on threads so a chatty child cannot block on a full pipe.
    let out = child.stdout.take();
    let errp = child.stderr.take();
    let read_all = |r: Option<Box<dyn io::Read + Send>>| {
        thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let t_out = read_all(out.map(|o| Box::new(o) as Box<dyn io::Read + Send>));
    let t_err = read_all(errp.map(|e| Box::new(e) as Box<dyn io::Read + Send>));
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > limit => {
                terminate(&mut child, Duration::from_secs(2));
                return Err(ProcessError::TimedOut {
                    what: what.to_string(),
                    limit,
                    log: PathBuf::from("(captured)"),
                });
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(source) => {
                return Err(ProcessError::Spawn {
                    what: what.to_string(),
                    source,
                })
            }
        }
    };
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        let mut lines: Vec<String> = stderr.lines().map(str::to_string).collect();
        lines.extend(stdout.lines().map(str::to_string));
        let keep = lines.len().saturating_sub(25);
        Err(ProcessError::Failed {
            what: what.to_string(),
            status,
            log: PathBuf::from("(captured output)"),
            tail: indent(&lines[keep..]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_of_file() {
        let dir = std::env::temp_dir().join(format!("vugpu-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("log");
        let text: String = (0..100).map(|i| format!("line {i}\r\n")).collect();
        std::fs::write(&f, text).unwrap();
        assert_eq!(tail_lines(&f, 2), vec!["line 98", "line 99"]);
        assert!(tail_lines(&dir.join("missing"), 3).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn output_captures_and_reports_failure() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo hi"]);
        assert_eq!(output(c, "echo", Duration::from_secs(10)).unwrap(), "hi\n");
        let mut c = Command::new("sh");
        c.args(["-c", "echo bad >&2; exit 3"]);
        let e = output(c, "fail", Duration::from_secs(10)).unwrap_err();
        assert!(e.to_string().contains("bad"), "{e}");
    }

    #[test]
    fn output_is_bounded() {
        let mut c = Command::new("sleep");
        c.arg("30");
        let t = Instant::now();
        let e = output(c, "sleep", Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, ProcessError::TimedOut { .. }));
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}
