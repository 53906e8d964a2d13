//! Hot-unplug and re-plug of GPUs through QMP, driven by the guest (`# vugpu-vm: hotplug`).
//!
//! A suite that declares `hotplug` boots with a QMP socket (`RUN/qmp.sock`) and asks the runner
//! for each step with a KTAP diagnostic line on the results channel:
//!
//! ```text
//! # vugpu-vm hotplug: unplug gpu0     -> QMP device_del gpu0, wait for DEVICE_DELETED
//! # vugpu-vm hotplug: replug gpu0     -> QMP device_add with gpu0's original -device JSON
//! ```
//!
//! The guest sees the result through PCI (the function disappears, then comes back and binds);
//! the runner checks the server's side: after an unplug the server process must be back to the
//! open fds, guest-RAM mappings and threads it had before any client connected (the session and
//! every DMA map are gone) and the GPU's control socket must report no DMA window held; after a
//! re-plug it must have more fds again and report DMA windows (a new session with its maps;
//! without a control socket, more guest-RAM mappings). Each step is one line in `RUN/hotplug.log` and on stderr; a failed check fails the
//! run (exit 1).
//! Steps run on their own thread, in order, so the watch loop keeps reading the console.

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The agent's log in the run directory; failed checks start with `FAILED: `.
pub const LOG_NAME: &str = "hotplug.log";

/// The failed checks recorded in the run directory's hotplug log.
pub fn failures(run_dir: &Path) -> Vec<String> {
    fs::read_to_string(run_dir.join(LOG_NAME))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("FAILED: "))
        .map(String::from)
        .collect()
}

/// Prefix of a request line (after optional indentation).
pub const REQUEST: &str = "# vugpu-vm hotplug: ";
/// Bound for QEMU's QMP socket to accept, for a command's reply, and for DEVICE_DELETED.
const QMP_WAIT: Duration = Duration::from_secs(60);
/// Bound for the server to drop (or take) the session's fds after an unplug (re-plug).
const SERVER_WAIT: Duration = Duration::from_secs(15);

/// What the guest asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `device_del` of this GPU id.
    Unplug(String),
    /// `device_add` of this GPU id, as it was on the command line.
    Replug(String),
}

/// Parses a results-channel line; `None` if it is no hotplug request.
pub fn parse_request(line: &str) -> Option<Result<Request, String>> {
    let rest = line.trim_start().strip_prefix(REQUEST)?;
    let mut w = rest.split_whitespace();
    let r = match (w.next(), w.next(), w.next()) {
        (Some("unplug"), Some(id), None) if valid_id(id) => Ok(Request::Unplug(id.into())),
        (Some("replug"), Some(id), None) if valid_id(id) => Ok(Request::Replug(id.into())),
        _ => Err(format!("bad hotplug request {:?}", rest.trim())),
    };
    Some(r)
}

fn valid_id(id: &str) -> bool {
    id.strip_prefix("gpu")
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// The `-device` JSON objects of the GPUs in QEMU's arguments, by id.
pub fn gpu_devices(qemu_args: &[String]) -> Vec<(String, Value)> {
    qemu_args
        .windows(2)
        .filter(|w| w[0] == "-device")
        .filter_map(|w| serde_json::from_str::<Value>(&w[1]).ok())
        .filter(|v| v["driver"] == "vfio-user-pci")
        .filter_map(|v| Some((v["id"].as_str()?.to_string(), v)))
        .collect()
}

/// Server-side counts of one process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerSample {
    /// Open fds.
    pub fds: usize,
    /// Mappings of memfds (guest RAM, and the VRAM) in /proc/PID/maps.
    pub memfd_maps: usize,
    /// Threads (/proc/PID/task).
    pub threads: usize,
    /// Resident set in KiB (VmRSS), reported only: it moves with the allocator.
    pub rss_kib: u64,
}

impl ServerSample {
    /// Samples process `pid`.
    pub fn of(pid: u32) -> Option<ServerSample> {
        let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
        let maps = fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        let threads = fs::read_dir(format!("/proc/{pid}/task")).ok()?.count();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        Some(ServerSample {
            fds,
            memfd_maps: maps.lines().filter(|l| l.contains("/memfd:")).count(),
            threads,
            rss_kib: vm_rss_kib(&status).unwrap_or(0),
        })
    }

    /// The counts of server `pid` before any client, once it is fully up: every GPU's event-loop
    /// thread (`vugpu-gpuK`, spawned last for each GPU, after the control-socket threads: see
    /// device/src/serve.rs) exists, at most `limit` after the call. The sockets exist before
    /// those threads start: sampled as soon as the socket appeared, a loaded machine gave 5
    /// threads instead of 7 and every unplug's exact thread check then failed. After `limit`
    /// the server is sampled as it is (the checks then say what differs).
    pub fn when_up(pid: u32, gpu_ids: &[String], limit: Duration) -> Option<ServerSample> {
        let end = Instant::now() + limit;
        loop {
            let names = thread_names(pid);
            let up = gpu_ids
                .iter()
                .all(|id| names.iter().any(|n| *n == format!("vugpu-{id}")));
            if up || names.is_empty() || Instant::now() > end {
                return ServerSample::of(pid);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The same fds, memfd maps and threads (a session's resources all given back).
    pub fn same_resources(&self, o: &ServerSample) -> bool {
        (self.fds, self.memfd_maps, self.threads) == (o.fds, o.memfd_maps, o.threads)
    }

    /// Fewer fds and memfd maps than `o`, and no more threads (one of several sessions went).
    pub fn dropped_from(&self, o: &ServerSample) -> bool {
        self.fds < o.fds && self.memfd_maps < o.memfd_maps && self.threads <= o.threads
    }

    fn brief(&self) -> String {
        format!(
            "{} fds, {} memfd maps, {} threads, RSS {} KiB",
            self.fds, self.memfd_maps, self.threads, self.rss_kib
        )
    }
}

/// The names of process `pid`'s threads (`/proc/PID/task/TID/comm`, at most 15 bytes each).
pub fn thread_names(pid: u32) -> Vec<String> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim_end().to_string())
        .collect()
}

/// `VmRSS:` of a /proc/PID/status text, in KiB.
fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The DMA windows a GPU's session holds, as its control socket reports them (`stats`,
/// device/src/ctl.rs: `device.dma_windows`, `device.dma_fd_windows`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaHeld {
    /// DMA_MAP windows.
    pub windows: u64,
    /// Those that came with an fd (mapped by the server).
    pub fd_windows: u64,
}

impl DmaHeld {
    /// From a `stats` reply; `None` if it is not one.
    pub fn from_stats(json: &str) -> Option<DmaHeld> {
        let v: Value = serde_json::from_str(json).ok()?;
        let d = v.get("device")?;
        Some(DmaHeld {
            windows: d.get("dma_windows")?.as_u64()?,
            fd_windows: d.get("dma_fd_windows")?.as_u64()?,
        })
    }

    /// Asks GPU `id`'s control socket; `None` if the GPU has none, `Err` if it does not answer.
    fn query(ctl: &[(String, PathBuf)], id: &str) -> Option<Result<DmaHeld, String>> {
        let (_, path) = ctl.iter().find(|(g, _)| g == id)?;
        Some(
            crate::servers::ctl_request(path, "stats")
                .map_err(|e| format!("{}: {e}", path.display()))
                .and_then(|r| {
                    DmaHeld::from_stats(&r)
                        .ok_or_else(|| format!("{}: not a stats reply", path.display()))
                }),
        )
    }

    fn brief(held: &Option<Result<DmaHeld, String>>) -> String {
        match held {
            None => "not watched".into(),
            Some(Ok(h)) => format!("{} ({} with an fd)", h.windows, h.fd_windows),
            Some(Err(e)) => format!("unknown ({e})"),
        }
    }
}

/// A QMP connection.
struct Qmp {
    w: UnixStream,
    r: BufReader<UnixStream>,
    events: Vec<Value>,
}

impl Qmp {
    fn connect(path: &Path) -> io::Result<Qmp> {
        let end = Instant::now() + QMP_WAIT;
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > end => return Err(e),
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        };
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut q = Qmp {
            w: s.try_clone()?,
            r: BufReader::new(s),
            events: Vec::new(),
        };
        // The greeting, then capabilities negotiation.
        q.read_until(|v| v.get("QMP").is_some(), QMP_WAIT)?;
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn read_until(&mut self, want: impl Fn(&Value) -> bool, limit: Duration) -> io::Result<Value> {
        let end = Instant::now() + limit;
        let mut line = String::new();
        loop {
            if let Some(i) = self.events.iter().position(&want) {
                return Ok(self.events.remove(i));
            }
            if Instant::now() > end {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer from QMP",
                ));
            }
            match self.r.read_line(&mut line) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "QMP closed")),
                Ok(_) => {
                    if let Ok(v) = serde_json::from_str::<Value>(line.trim()) {
                        self.events.push(v);
                    }
                    line.clear();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn execute(&mut self, cmd: &str, args: Value) -> io::Result<Value> {
        let msg = json!({ "execute": cmd, "arguments": args });
        self.w.write_all(format!("{msg}\n").as_bytes())?;
        let v = self.read_until(
            |v| v.get("return").is_some() || v.get("error").is_some(),
            QMP_WAIT,
        )?;
        match v.get("error") {
            Some(e) => Err(io::Error::other(format!("{cmd}: {e}"))),
            None => Ok(v),
        }
    }
}

/// The runner's side of hotplug: a thread that performs the guest's requests in order.
pub struct Agent {
    tx: Option<Sender<Request>>,
    thread: Option<JoinHandle<()>>,
    log: PathBuf,
}

/// What the agent needs.
pub struct AgentConfig {
    /// QEMU's QMP socket (host path).
    pub qmp: PathBuf,
    /// The GPUs' `-device` JSON by id.
    pub devices: Vec<(String, Value)>,
    /// The server process, if known, and its counts before QEMU connected.
    pub server: Option<(u32, ServerSample)>,
    /// The GPUs' control sockets (`SOCKET.ctl`, host paths) by id, for the DMA windows the
    /// server holds; a GPU without one is not checked that way.
    pub ctl: Vec<(String, PathBuf)>,
    /// `hotplug.log` in the run directory.
    pub log: PathBuf,
}

impl Agent {
    /// Starts the agent thread.
    pub fn start(cfg: AgentConfig) -> Agent {
        let (tx, rx) = mpsc::channel();
        let log = cfg.log.clone();
        let thread = thread::spawn(move || agent(cfg, rx));
        Agent {
            tx: Some(tx),
            thread: Some(thread),
            log,
        }
    }

    /// Queues a request (from a results-channel line).
    pub fn request(&self, r: Request) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(r);
        }
    }

    /// Records a failure seen outside the agent (a bad request line).
    pub fn fail(&self, why: String) {
        say!("hotplug: {why}");
        if let Ok(mut l) = OpenOptions::new().create(true).append(true).open(&self.log) {
            let _ = writeln!(l, "FAILED: {why}");
        }
    }

    /// Waits for the agent to finish what was asked (each wait is bounded; with QEMU gone, QMP
    /// fails at once).
    pub fn finish(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn agent(cfg: AgentConfig, rx: Receiver<Request>) {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cfg.log)
        .ok();
    let mut note = |failed: bool, text: String| {
        say!("hotplug: {text}");
        if let Some(l) = log.as_mut() {
            let _ = writeln!(l, "{}{text}", if failed { "FAILED: " } else { "" });
        }
    };
    let mut qmp: Option<Qmp> = None;
    let mut before: Option<ServerSample> = None;
    let (mut unplugs, mut replugs) = (0usize, 0usize);
    while let Ok(req) = rx.recv() {
        if qmp.is_none() {
            match Qmp::connect(&cfg.qmp) {
                Ok(q) => qmp = Some(q),
                Err(e) => {
                    note(true, format!("cannot use QMP {}: {e}", cfg.qmp.display()));
                    return;
                }
            }
        }
        let Some(q) = qmp.as_mut() else { return };
        let sample = || cfg.server.and_then(|(pid, _)| ServerSample::of(pid));
        match req {
            Request::Unplug(id) => {
                let t = Instant::now();
                before = sample();
                // After the fd sample: the control connection is an fd of the server too.
                let held_before = DmaHeld::query(&cfg.ctl, &id);
                if let Err(e) = q.execute("device_del", json!({ "id": id })) {
                    note(true, format!("device_del {id}: {e}"));
                    continue;
                }
                let deleted = q.read_until(
                    |v| v["event"] == "DEVICE_DELETED" && v["data"]["device"] == id.as_str(),
                    QMP_WAIT,
                );
                if let Err(e) = deleted {
                    note(
                        true,
                        format!(
                            "{id}: no DEVICE_DELETED within {}s ({e})",
                            QMP_WAIT.as_secs()
                        ),
                    );
                    continue;
                }
                unplugs += 1;
                let dt = t.elapsed();
                let Some((pid, base)) = cfg.server else {
                    note(
                        false,
                        format!(
                            "unplug {unplugs}: {id} deleted after {dt:.1?} (server not watched)"
                        ),
                    );
                    continue;
                };
                // Only this GPU's session goes: with one GPU the server is back to its counts
                // before QEMU connected; with more, others keep theirs, so it must only drop.
                let single = cfg.devices.len() == 1;
                let end = Instant::now() + SERVER_WAIT;
                let after = loop {
                    let s = ServerSample::of(pid);
                    let done = s.is_some_and(|s| {
                        if single {
                            s.same_resources(&base)
                        } else {
                            before.is_some_and(|b| s.dropped_from(&b))
                        }
                    });
                    if done || Instant::now() > end {
                        break s;
                    }
                    thread::sleep(Duration::from_millis(50));
                };
                // The session is gone: the GPU holds no DMA window.
                let held = DmaHeld::query(&cfg.ctl, &id);
                let text = format!(
                    "unplug {unplugs}: {id} deleted after {dt:.1?}; server {} -> {} (before any client: {}); DMA windows {} -> {}",
                    before.map_or("?".into(), |b| b.brief()),
                    after.map_or("?".into(), |a| a.brief()),
                    base.brief(),
                    DmaHeld::brief(&held_before),
                    DmaHeld::brief(&held)
                );
                let ok = after.is_some_and(|a| {
                    if single {
                        a.same_resources(&base)
                    } else {
                        before.is_some_and(|b| a.dropped_from(&b))
                    }
                }) && !matches!(&held, Some(Err(_)))
                    && !matches!(&held, Some(Ok(h)) if h.windows != 0);
                note(!ok, text);
            }
            Request::Replug(id) => {
                let Some((_, dev)) = cfg.devices.iter().find(|(d, _)| *d == id) else {
                    note(
                        true,
                        format!("replug {id}: no such GPU on the command line"),
                    );
                    continue;
                };
                let t = Instant::now();
                if let Err(e) = q.execute("device_add", dev.clone()) {
                    note(true, format!("device_add {id}: {e}"));
                    continue;
                }
                replugs += 1;
                let dt = t.elapsed();
                let Some((pid, base)) = cfg.server else {
                    note(
                        false,
                        format!("replug {replugs}: {id} added in {dt:.1?} (server not watched)"),
                    );
                    continue;
                };
                // device_add returns once QEMU realized the device: connected, negotiated and
                // DMA-mapped. The server may still be registering the session: wait for it.
                let end = Instant::now() + SERVER_WAIT;
                let now = loop {
                    let s = ServerSample::of(pid);
                    let want = before.unwrap_or(base);
                    if s.is_some_and(|s| s.fds >= want.fds && s.memfd_maps >= want.memfd_maps)
                        || Instant::now() > end
                    {
                        break s;
                    }
                    thread::sleep(Duration::from_millis(50));
                };
                // The new session's DMA maps: the GPU holds windows again. Whether the server
                // also mmaps them depends on the guest RAM (sealed memfds are mapped, unsealed
                // ones are reached with pread/pwrite), so with the control socket's count the
                // memfd mappings are only reported; without it they are the evidence.
                let held = DmaHeld::query(&cfg.ctl, &id);
                let ok = now.is_some_and(|s| s.fds > base.fds)
                    && match &held {
                        Some(Ok(h)) => h.windows > 0,
                        Some(Err(_)) => false,
                        None => now.is_some_and(|s| s.memfd_maps > base.memfd_maps),
                    };
                note(
                    !ok,
                    format!(
                        "replug {replugs}: {id} added in {dt:.1?}; server {} (before the unplug: {}); DMA windows {}",
                        now.map_or("?".into(), |s| s.brief()),
                        before.map_or("?".into(), |b| b.brief()),
                        DmaHeld::brief(&held)
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(
            parse_request("# vugpu-vm hotplug: unplug gpu0"),
            Some(Ok(Request::Unplug("gpu0".into())))
        );
        assert_eq!(
            parse_request("  # vugpu-vm hotplug: replug gpu12"),
            Some(Ok(Request::Replug("gpu12".into())))
        );
        assert!(parse_request("# vugpu-vm hotplug: unplug peer0")
            .unwrap()
            .is_err());
        assert!(parse_request("# vugpu-vm hotplug: eject gpu0")
            .unwrap()
            .is_err());
        assert!(parse_request("# vugpu-vm hotplug: unplug gpu0 now")
            .unwrap()
            .is_err());
        assert_eq!(parse_request("ok 1 - insmod_vugpu"), None);
    }

    #[test]
    fn devices_from_qemu_args() {
        let args: Vec<String> = [
            "-device",
            "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1",
            "-device",
            r#"{"bus":"rp0","driver":"vfio-user-pci","id":"gpu0","socket":{"path":"/r/gpu0.sock","type":"unix"}}"#,
            "-kernel",
            "{\"driver\":\"vfio-user-pci\"}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let d = gpu_devices(&args);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].0, "gpu0");
        assert_eq!(d[0].1["socket"]["path"], "/r/gpu0.sock");
    }

    #[test]
    fn samples_this_process() {
        let s = ServerSample::of(std::process::id()).unwrap();
        assert!(s.fds >= 3);
        assert!(s.threads >= 1);
        assert!(s.rss_kib > 0);
        assert_eq!(ServerSample::of(u32::MAX), None);
    }

    #[test]
    fn baseline_waits_for_the_servers_threads() {
        let me = std::process::id();
        let (tx, rx) = mpsc::channel::<()>();
        let t = thread::Builder::new()
            .name("vugpu-gpu7".into())
            .spawn(move || {
                let _ = rx.recv();
            })
            .unwrap();
        // A thread names itself once it runs (std sets the name from inside the new thread).
        let t0 = Instant::now();
        let s = ServerSample::when_up(me, &["gpu7".into()], Duration::from_secs(5)).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(thread_names(me).iter().any(|n| n == "vugpu-gpu7"));
        assert!(s.threads >= 2);
        // Absent: sampled after the limit, not before.
        let t0 = Instant::now();
        assert!(ServerSample::when_up(me, &["gpu99".into()], Duration::from_millis(300)).is_some());
        assert!(t0.elapsed() >= Duration::from_millis(300));
        // A thread that starts late is waited for.
        let (tx2, rx2) = mpsc::channel::<()>();
        let late = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            thread::Builder::new()
                .name("vugpu-gpu8".into())
                .spawn(move || {
                    let _ = rx2.recv();
                })
                .unwrap()
        });
        let t0 = Instant::now();
        ServerSample::when_up(me, &["gpu8".into()], Duration::from_secs(5)).unwrap();
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        assert!(waited < Duration::from_secs(4), "{waited:?}");
        drop((tx, tx2));
        t.join().unwrap();
        late.join().unwrap().join().unwrap();
        assert!(thread_names(u32::MAX).is_empty());
    }

    #[test]
    fn dma_windows_from_stats() {
        let stats = r#"{"engines":[],"device":{"engines":4,"dma_windows":8,"dma_fd_windows":5,"dma_fd_bytes":2147483648},"p2p":[]}"#;
        assert_eq!(
            DmaHeld::from_stats(stats),
            Some(DmaHeld {
                windows: 8,
                fd_windows: 5
            })
        );
        assert_eq!(DmaHeld::from_stats(r#"{"device":{"dma_windows":8}}"#), None);
        assert_eq!(DmaHeld::from_stats(r#"{"error":"unknown request"}"#), None);
        assert_eq!(DmaHeld::from_stats("not json"), None);
        // A GPU without a control socket is not checked; one that does not answer is an error.
        assert_eq!(DmaHeld::query(&[], "gpu0"), None);
        let missing = [(
            "gpu0".to_string(),
            PathBuf::from("/nonexistent/gpu0.sock.ctl"),
        )];
        assert!(matches!(DmaHeld::query(&missing, "gpu0"), Some(Err(_))));
        assert_eq!(DmaHeld::query(&missing, "gpu1"), None);
    }

    #[test]
    fn sample_comparisons() {
        let base = ServerSample {
            fds: 20,
            memfd_maps: 2,
            threads: 3,
            rss_kib: 9000,
        };
        let session = ServerSample {
            fds: 43,
            memfd_maps: 7,
            threads: 4,
            rss_kib: 12000,
        };
        // RSS does not count; a thread left behind does.
        assert!(ServerSample {
            rss_kib: 11000,
            ..base
        }
        .same_resources(&base));
        assert!(!ServerSample { threads: 4, ..base }.same_resources(&base));
        assert!(!ServerSample { fds: 21, ..base }.same_resources(&base));
        assert!(base.dropped_from(&session));
        assert!(!ServerSample { threads: 5, ..base }.dropped_from(&session));
        assert!(!session.dropped_from(&session));
        assert_eq!(vm_rss_kib("Name:\tx\nVmRSS:\t  1234 kB\n"), Some(1234));
        assert_eq!(vm_rss_kib("Name:\tx\n"), None);
    }
}
