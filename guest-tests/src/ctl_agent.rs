//! Control-socket requests driven by the guest: a test asks the runner to inject a fault into
//! its GPU at the right moment (hw-spec §10) and waits for the answer.
//!
//! The guest writes one KTAP diagnostic line on the results channel (ttyS1):
//!
//! ```text
//! # vugpu-vm ctl: gpu0 inject dma-error engine=1
//! ```
//!
//! and the runner runs `vugpu ctl <gpu0's socket> inject dma-error engine=1` (no shell: the words
//! are arguments), then writes the reply back into the same serial line, which the guest reads
//! from /dev/ttyS1 (raw, no echo):
//!
//! ```text
//! vugpu-vm ctl: {"ok":"dma-error engine=1"}
//! ```
//!
//! (`{"error":"..."}` when the server refused or could not be reached). Only `inject ...` and
//! `stats` are accepted. Every request and reply is one line in `RUN/ctl.log`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

/// Prefix of a request line (after optional indentation).
pub const REQUEST: &str = "# vugpu-vm ctl: ";
/// Prefix of the runner's answer on the guest's side of the results channel.
pub const REPLY: &str = "vugpu-vm ctl: ";
/// The agent's log in the run directory.
pub const LOG_NAME: &str = "ctl.log";
/// Longest request accepted (the control socket's own limit).
const MAX_REQUEST: usize = 256;

/// The runner's end of the results channel, for answers (set once QEMU connected).
pub type ReplyStream = Arc<Mutex<Option<UnixStream>>>;

/// A guest request: the GPU index and the control-socket request words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `gpuN`.
    pub gpu: usize,
    /// `inject ...` or `stats`.
    pub words: Vec<String>,
}

/// Parses a results-channel line; `None` if it is no ctl request.
pub fn parse_request(line: &str) -> Option<Result<Request, String>> {
    let rest = line.trim_start().strip_prefix(REQUEST)?.trim();
    let mut w = rest.split_whitespace();
    let gpu = w
        .next()
        .and_then(|g| g.strip_prefix("gpu"))
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        .and_then(|n| n.parse::<usize>().ok());
    let words: Vec<String> = w.map(String::from).collect();
    let ok = match words.first().map(String::as_str) {
        Some("inject") => words.len() >= 2,
        Some("stats") => words.len() == 1,
        _ => false,
    };
    Some(match gpu {
        Some(gpu) if ok && rest.len() <= MAX_REQUEST => Ok(Request { gpu, words }),
        _ => Err(format!(
            "bad ctl request {rest:?} (gpuN inject ... | gpuN stats)"
        )),
    })
}

/// Performs guest requests against the servers' control sockets.
pub struct Agent {
    vugpu: PathBuf,
    sockets: Vec<PathBuf>,
    reply: ReplyStream,
    log: PathBuf,
}

impl Agent {
    /// An agent for the GPUs on `sockets` (gpu0 first), answering through `reply`.
    pub fn new(vugpu: PathBuf, sockets: Vec<PathBuf>, reply: ReplyStream, log: PathBuf) -> Agent {
        Agent {
            vugpu,
            sockets,
            reply,
            log,
        }
    }

    /// Handles one results-channel line if it is a request (a bad one is answered too, so the
    /// guest never waits for nothing).
    pub fn handle_line(&self, line: &str) {
        let Some(req) = parse_request(line) else {
            return;
        };
        let answer = match req {
            Ok(r) => self.perform(&r),
            Err(why) => serde_json::json!({ "error": why }).to_string(),
        };
        self.note(&format!("{} -> {answer}", line.trim()));
        let mut guard = self.reply.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = guard.as_mut() {
            if let Err(e) = s.write_all(format!("{REPLY}{answer}\n").as_bytes()) {
                self.note(&format!("cannot answer the guest: {e}"));
            }
        }
    }

    fn perform(&self, r: &Request) -> String {
        let Some(socket) = self.sockets.get(r.gpu) else {
            return serde_json::json!({ "error": format!("no gpu{}", r.gpu) }).to_string();
        };
        let out = Command::new(&self.vugpu)
            .arg("ctl")
            .arg(socket)
            .args(&r.words)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) => {
                let text = String::from_utf8_lossy(&o.stdout);
                match text.lines().next().map(str::trim) {
                    Some(l) if l.starts_with('{') => l.to_string(),
                    _ => serde_json::json!({
                        "error": format!(
                            "vugpu ctl: {}",
                            String::from_utf8_lossy(&o.stderr).trim()
                        )
                    })
                    .to_string(),
                }
            }
            Err(e) => {
                serde_json::json!({ "error": format!("cannot run vugpu ctl: {e}") }).to_string()
            }
        }
    }

    fn note(&self, text: &str) {
        say!("ctl: {text}");
        if let Ok(mut l) = OpenOptions::new().create(true).append(true).open(&self.log) {
            let _ = writeln!(l, "{text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(
            parse_request("# vugpu-vm ctl: gpu0 inject dma-error engine=1"),
            Some(Ok(Request {
                gpu: 0,
                words: vec!["inject".into(), "dma-error".into(), "engine=1".into()]
            }))
        );
        assert_eq!(
            parse_request("  # vugpu-vm ctl: gpu12 stats"),
            Some(Ok(Request {
                gpu: 12,
                words: vec!["stats".into()]
            }))
        );
        for bad in [
            "# vugpu-vm ctl: gpu0 trace",
            "# vugpu-vm ctl: gpu0 inject",
            "# vugpu-vm ctl: gpu0 stats now",
            "# vugpu-vm ctl: peer0 stats",
            "# vugpu-vm ctl: gpu stats",
            "# vugpu-vm ctl: ",
        ] {
            assert!(parse_request(bad).unwrap().is_err(), "{bad}");
        }
        assert_eq!(parse_request("ok 1 - insmod_vugpu"), None);
    }

    #[test]
    fn answers_through_the_stream_even_without_a_server() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let dir = std::env::temp_dir().join(format!("vugpu-ctl-agent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let agent = Agent::new(
            PathBuf::from("/nonexistent/vugpu"),
            vec![dir.join("gpu0.sock")],
            Arc::new(Mutex::new(Some(a))),
            dir.join(LOG_NAME),
        );
        agent.handle_line("# vugpu-vm ctl: gpu0 inject hang engine=0");
        agent.handle_line("# vugpu-vm ctl: gpu3 stats");
        agent.handle_line("# vugpu-vm ctl: gpu0 reboot");
        agent.handle_line("ok 2 - not a request");
        drop(agent);
        let mut got = String::new();
        std::io::Read::read_to_string(&mut b, &mut got).unwrap();
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines.len(), 3, "{got}");
        assert!(lines.iter().all(|l| l.starts_with(REPLY)));
        assert!(lines[0].contains("cannot run vugpu ctl"), "{}", lines[0]);
        assert!(lines[1].contains("no gpu3"));
        assert!(lines[2].contains("bad ctl request"));
        let log = std::fs::read_to_string(dir.join(LOG_NAME)).unwrap();
        assert_eq!(log.lines().count(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
