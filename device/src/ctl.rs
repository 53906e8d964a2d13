//! The control socket (hw-spec §8.2): `PATH.ctl` next to the vfio-user socket, answering
//! `stats` with the engines' state and counters as JSON.
//!
//! It runs on its own thread so that a slow or hostile local client can never delay the
//! vfio-user event loop. Clients are served concurrently, without blocking, at most
//! [`CtlLimits::max_clients`] at once (one more is answered `busy` and closed), and each
//! connection is bounded: one request line of at most [`MAX_REQUEST`] bytes,
//! [`CtlLimits::timeout`] for the whole exchange, one reply, close. A silent or slow client thus
//! holds one slot for at most the timeout and never delays the others. The reply reads the
//! engines through an [`EngineMonitor`] (atomics and short locks), never the socket or the
//! device model.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use crate::engine::peer_window::PeerWindowReport;
use crate::engine::{EngineMonitor, EngineReport, P2pReport};
use crate::mmu::MmuReport;

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 256;
/// Default time a client has for one exchange.
pub const CONN_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed accept (fd table full), so the thread does not spin.
const ACCEPT_BACKOFF_MS: u64 = 50;
/// Most bytes discarded after the reply.
const MAX_DRAIN: usize = 64 << 10;
/// Largest reply a client reads.
const MAX_REPLY: usize = 1 << 20;

/// The control socket path for a vfio-user socket path.
pub fn ctl_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".ctl");
    PathBuf::from(p)
}

#[derive(Debug, Serialize)]
struct DeviceReport {
    engines: usize,
    vectors: usize,
    irqs_sent: u64,
    bus_master: bool,
    name: String,
    vram_bytes_dropped: u64,
    /// DMA windows the client holds, those with an fd, and their bytes (resource limits).
    dma_windows: usize,
    dma_fd_windows: usize,
    dma_fd_bytes: u64,
    /// Trace lines dropped at `--trace-max-bytes`.
    trace_lines_dropped: u64,
    /// Log lines (of the whole process) dropped by `--log-rate-limit`.
    log_lines_dropped: u64,
}

#[derive(Debug, Serialize)]
struct StatsReply {
    engines: Vec<EngineReport>,
    device: DeviceReport,
    p2p: Vec<P2pReport>,
    peer_windows: Vec<PeerWindowReport>,
    mmu: MmuReport,
}

#[derive(Debug, Serialize)]
struct ErrorReply<'a> {
    error: &'a str,
}

/// The answer to one request line.
pub fn answer(request: &str, monitor: &EngineMonitor) -> String {
    let reply = match request.trim() {
        "stats" => {
            let engines = monitor.report();
            let (dma_windows, dma_fd_windows, dma_fd_bytes) = monitor.dma_held();
            serde_json::to_string(&StatsReply {
                device: DeviceReport {
                    name: monitor.name().to_string(),
                    vram_bytes_dropped: monitor.vram_bytes_dropped(),
                    dma_windows,
                    dma_fd_windows,
                    dma_fd_bytes,
                    trace_lines_dropped: monitor.trace_lines_dropped(),
                    log_lines_dropped: crate::log::suppressed(),
                    engines: engines.len(),
                    vectors: monitor.vectors(),
                    irqs_sent: monitor.irqs_sent(),
                    bus_master: monitor.bus_master(),
                },
                engines,
                p2p: monitor.p2p(),
                peer_windows: monitor.peer_windows(),
                mmu: monitor.mmu(),
            })
        }
        _ => serde_json::to_string(&ErrorReply {
            error: "unknown request (known: stats)",
        }),
    };
    reply.unwrap_or_else(|_| r#"{"error":"internal"}"#.to_string())
}

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Binding or starting failed.
    #[error("control socket {path}: {source}")]
    Setup {
        /// Path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A client-side exchange failed.
    #[error("control socket {path}: {source}")]
    Request {
        /// Path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The running control socket; dropping it stops the thread and removes the file.
#[derive(Debug)]
pub struct CtlServer {
    path: PathBuf,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
    /// What the thread takes, until [`CtlServer::serve`] starts it.
    pending: Option<Box<PendingCtl>>,
}

/// The listener, the thread's stop fd, the monitor and the limits of a bound control socket.
type PendingCtl = (UnixListener, EventFd, EngineMonitor, CtlLimits);

impl CtlServer {
    /// Binds `path` (which must not exist) and serves it from a new thread, giving each client
    /// [`CONN_TIMEOUT`].
    pub fn start(path: &Path, monitor: EngineMonitor) -> Result<CtlServer, CtlError> {
        Self::start_with(path, monitor, CtlLimits::default())
    }

    /// Like [`start`](Self::start), with these client limits.
    pub fn start_with(
        path: &Path,
        monitor: EngineMonitor,
        limits: CtlLimits,
    ) -> Result<CtlServer, CtlError> {
        let mut srv = Self::bind(path, monitor, limits)?;
        srv.serve()?;
        Ok(srv)
    }

    /// Binds `path` (which must not exist) without serving it yet: clients that connect wait in
    /// the listen backlog until [`serve`](Self::serve). (`vugpu serve` creates every fd it
    /// needs in between, so that clients flooding the socket at start cannot take them.)
    pub fn bind(
        path: &Path,
        monitor: EngineMonitor,
        limits: CtlLimits,
    ) -> Result<CtlServer, CtlError> {
        let err = |source| CtlError::Setup {
            path: path.to_path_buf(),
            source,
        };
        if path.symlink_metadata().is_ok() {
            return Err(err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists; is another vugpu serving it? remove it first",
            )));
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        let setup = || -> io::Result<(EventFd, EventFd)> {
            listener.set_nonblocking(true)?;
            let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
            let theirs = stop.try_clone()?;
            Ok((stop, theirs))
        };
        match setup() {
            Ok((stop, theirs)) => Ok(CtlServer {
                path: path.to_path_buf(),
                stop,
                thread: None,
                pending: Some(Box::new((listener, theirs, monitor, limits))),
            }),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                Err(err(e))
            }
        }
    }

    /// Starts serving from a new thread (once; later calls do nothing).
    pub fn serve(&mut self) -> Result<(), CtlError> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let (listener, theirs, monitor, limits) = *pending;
        let thread = std::thread::Builder::new()
            .name("vugpu-ctl".into())
            .spawn(move || {
                let _gpu = crate::log::gpu_span(monitor.name()).entered();
                serve(&listener, &theirs, &monitor, limits);
            })
            .map_err(|source| CtlError::Setup {
                path: self.path.clone(),
                source,
            })?;
        self.thread = Some(thread);
        Ok(())
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CtlServer {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Limits of the control socket's clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtlLimits {
    /// Time a client has for its whole exchange (request, reply, drain).
    pub timeout: Duration,
    /// Clients served at once; one more is answered `{"error":"busy"}` and closed.
    pub max_clients: usize,
}

impl Default for CtlLimits {
    fn default() -> Self {
        CtlLimits {
            timeout: CONN_TIMEOUT,
            max_clients: DEFAULT_MAX_CLIENTS,
        }
    }
}

/// Default of [`CtlLimits::max_clients`].
pub const DEFAULT_MAX_CLIENTS: usize = 8;

const BUSY: &[u8] = b"{\"error\":\"busy: too many control-socket clients\"}\n";

/// Where one client's exchange is.
enum Phase {
    /// Reading the request line.
    Reading(Vec<u8>),
    /// Writing the reply from this position.
    Writing(Vec<u8>, usize),
    /// Reply sent and our side shut down: discarding what the client still sends (bounded),
    /// so that closing does not reset the connection before it has read the reply.
    Draining(usize),
    /// Finished (or failed): close.
    Done,
}

/// One client, non-blocking, with a deadline for the whole exchange.
struct Conn {
    stream: UnixStream,
    deadline: Instant,
    phase: Phase,
}

impl Conn {
    fn events(&self) -> libc::c_short {
        match self.phase {
            Phase::Writing(..) => libc::POLLOUT,
            _ => libc::POLLIN,
        }
    }

    /// Makes what progress the socket allows.
    fn step(&mut self, monitor: &EngineMonitor) {
        loop {
            let next = match &mut self.phase {
                Phase::Reading(buf) => {
                    let mut chunk = [0u8; MAX_REQUEST + 1];
                    let room = MAX_REQUEST + 1 - buf.len();
                    let n = match (&self.stream).read(&mut chunk[..room]) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(_) => 0,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    if n > 0 && !buf.contains(&b'\n') && buf.len() <= MAX_REQUEST {
                        continue;
                    }
                    // A whole line, too much, or the end of the stream: answer what is there.
                    let mut reply = reply_to(buf, monitor).into_bytes();
                    reply.push(b'\n');
                    Phase::Writing(reply, 0)
                }
                Phase::Writing(out, pos) => match (&self.stream).write(&out[*pos..]) {
                    Ok(n) if *pos + n == out.len() => {
                        let _ = self.stream.shutdown(std::net::Shutdown::Write);
                        Phase::Draining(0)
                    }
                    Ok(n) => {
                        *pos += n;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(_) => Phase::Done,
                },
                Phase::Draining(drained) => {
                    let mut rest = [0u8; 4096];
                    match (&self.stream).read(&mut rest) {
                        Ok(n) if n > 0 && *drained + n < MAX_DRAIN => {
                            *drained += n;
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        _ => Phase::Done,
                    }
                }
                Phase::Done => return,
            };
            self.phase = next;
        }
    }
}

/// The reply to what a client sent (`buf` holds at most `MAX_REQUEST + 1` bytes).
fn reply_to(buf: &[u8], monitor: &EngineMonitor) -> String {
    if buf.len() > MAX_REQUEST && !buf.contains(&b'\n') {
        return r#"{"error":"request too long"}"#.to_string();
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(&[]);
    match std::str::from_utf8(line) {
        Ok(text) => answer(text, monitor),
        Err(_) => r#"{"error":"request is not UTF-8"}"#.to_string(),
    }
}

/// Serves clients, at most `limits.max_clients` at once, each within `limits.timeout`, until
/// `stop` is readable. Nothing a client does (silence, a slow read, a huge request, dying
/// halfway) holds more than its slot, its buffers and its timeout.
fn serve(listener: &UnixListener, stop: &EventFd, monitor: &EngineMonitor, limits: CtlLimits) {
    let mut conns: Vec<Conn> = Vec::new();
    let mut backoff_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        conns.retain(|c| !matches!(c.phase, Phase::Done) && c.deadline > now);
        let accepting = backoff_until.is_none_or(|t| t <= now);
        let mut fds = vec![
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if accepting {
                    listener.as_fd().as_raw_fd()
                } else {
                    -1
                },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        fds.extend(conns.iter().map(|c| libc::pollfd {
            fd: c.stream.as_raw_fd(),
            events: c.events(),
            revents: 0,
        }));
        let wake = conns
            .iter()
            .map(|c| c.deadline)
            .chain(backoff_until)
            .min()
            .map_or(-1, |t| {
                let ms = t.saturating_duration_since(now).as_millis() + 1;
                i32::try_from(ms).unwrap_or(i32::MAX)
            });
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds for the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wake) };
        if rc < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("control socket poll failed; stopping it");
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        for (c, pfd) in conns.iter_mut().zip(&fds[2..]) {
            if pfd.revents != 0 {
                c.step(monitor);
            }
        }
        // Slots of clients that finished are free for the ones waiting to be accepted.
        conns.retain(|c| !matches!(c.phase, Phase::Done));
        if fds[1].revents != 0 {
            backoff_until = accept_all(listener, &mut conns, limits);
        } else if !accepting {
            backoff_until = None;
        }
    }
}

/// Accepts every waiting client; `Some(until)` to pause accepting after a failure.
fn accept_all(
    listener: &UnixListener,
    conns: &mut Vec<Conn>,
    limits: CtlLimits,
) -> Option<Instant> {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                if conns.len() >= limits.max_clients {
                    // Best effort, never blocking: the busy reply fits any socket buffer. What
                    // the client already sent is read first (one bounded read), so that the
                    // close does not reset the connection before it reads the reply.
                    let _ = (&stream).write(BUSY);
                    let _ = stream.shutdown(std::net::Shutdown::Write);
                    let _ = (&stream).read(&mut [0u8; MAX_REQUEST + 1]);
                    tracing::debug!(
                        "control socket: {} clients already, one more refused",
                        conns.len()
                    );
                    continue;
                }
                conns.push(Conn {
                    stream,
                    deadline: Instant::now() + limits.timeout,
                    phase: Phase::Reading(Vec::new()),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) => {
                // EMFILE/ENFILE leave the connection queued and the listener readable: pause
                // accepting instead of spinning (the log line is rate limited too).
                tracing::warn!("control socket accept failed: {e}");
                return Some(Instant::now() + Duration::from_millis(ACCEPT_BACKOFF_MS));
            }
        }
    }
}

/// Sends one request line to the control socket at `path` and returns the reply.
pub fn request(path: &Path, line: &str) -> Result<String, CtlError> {
    let err = |source| CtlError::Request {
        path: path.to_path_buf(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(err)?;
    s.set_read_timeout(Some(CONN_TIMEOUT * 2)).map_err(err)?;
    s.set_write_timeout(Some(CONN_TIMEOUT)).map_err(err)?;
    s.write_all(line.as_bytes()).map_err(err)?;
    s.write_all(b"\n").map_err(err)?;
    let mut out = Vec::new();
    s.take(MAX_REPLY as u64)
        .read_to_end(&mut out)
        .map_err(err)?;
    String::from_utf8(out)
        .map(|t| t.trim_end().to_string())
        .map_err(|_| {
            err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply is not UTF-8",
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{Gpu, GpuConfig};

    #[test]
    fn answers_stats_and_rejects_the_rest() {
        let mut cfg = GpuConfig::new(1 << 20);
        cfg.engines = 2;
        let gpu = Gpu::new(&cfg).unwrap();
        let m = gpu.engine_monitor();
        let v: serde_json::Value = serde_json::from_str(&answer("stats\r", &m)).unwrap();
        assert_eq!(v["device"]["engines"], 2);
        assert_eq!(v["engines"][1]["state"], "DISABLED");
        assert_eq!(v["engines"][0]["bytes"]["fill"], 0);
        assert!(v["engines"][0]["error"].is_null());
        assert_eq!(v["device"]["name"], "gpu0");
        assert_eq!(v["device"]["vram_bytes_dropped"], 0);
        assert_eq!(
            v["p2p"][0]["peer"], "gpu0",
            "a GPU alone is its own only peer"
        );
        assert_eq!(v["p2p"][0]["written"], 0);
        // hw-spec §9.6: the MMU (present: 2 engines, 16 vectors).
        assert_eq!(v["mmu"]["present"], true);
        assert_eq!(v["mmu"]["enabled"], false);
        assert_eq!(v["mmu"]["waiting"], false);
        for k in [
            "fault_put",
            "fault_get",
            "faults",
            "faults_dropped",
            "replays",
            "cancels",
            "tlb_hits",
            "tlb_misses",
            "invalidations",
        ] {
            assert_eq!(v["mmu"][k], 0, "{k}");
        }
        let v: serde_json::Value = serde_json::from_str(&answer("reboot", &m)).unwrap();
        assert!(v["error"].as_str().unwrap().contains("unknown request"));
        assert_eq!(
            ctl_path(Path::new("/run/x/gpu.sock")),
            Path::new("/run/x/gpu.sock.ctl")
        );
    }

    #[test]
    fn serves_and_refuses_an_existing_path() {
        let gpu = Gpu::new(&GpuConfig::new(1 << 20)).unwrap();
        let dir = std::env::temp_dir().join(format!("vugpu-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("g.sock.ctl");
        let srv = CtlServer::start(&path, gpu.engine_monitor()).unwrap();
        assert!(CtlServer::start(&path, gpu.engine_monitor()).is_err());
        let reply = request(srv.path(), "stats").unwrap();
        assert!(reply.starts_with("{\"engines\":["), "{reply}");
        drop(srv);
        assert!(!path.exists(), "removed on drop");
        assert!(request(&path, "stats").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
