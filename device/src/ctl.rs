//! The control socket (hw-spec §8.2, §8.4, §10): `PATH.ctl` next to the vfio-user socket,
//! answering `stats` with the engines' state and counters as JSON, streaming the transaction
//! trace live to `trace` subscribers, and injecting faults (`inject ...`).
//!
//! A `trace` subscriber keeps its connection (no timeout) until it closes it; its lines wait in
//! a bounded queue ([`TRACE_FEED_LINES`]) and a bounded output buffer, and a line that finds the
//! queue full is dropped and counted (reported in the stream as `{"dropped":N}` and in
//! `stats`), so a slow reader never grows the server or slows the engines beyond one
//! `try_send`. At most half of the client slots (at least one) stream at once.
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
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use serde::Serialize;

use crate::engine::env::{TraceFeed, TRACE_FEED_LINES};
use crate::engine::inject::InjectReport;
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
/// Bytes of a trace subscriber's output buffer before the queue is left alone.
const STREAM_BUF: usize = 64 << 10;
/// How often subscribers' queues are looked at while any streams.
const STREAM_TICK_MS: u64 = 20;

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
    /// Live trace subscribers (`vugpu ctl SOCKET trace`).
    trace_subscribers: usize,
    /// Lines live subscribers' full queues dropped.
    trace_stream_dropped: u64,
}

#[derive(Debug, Serialize)]
struct StatsReply {
    engines: Vec<EngineReport>,
    device: DeviceReport,
    p2p: Vec<P2pReport>,
    peer_windows: Vec<PeerWindowReport>,
    mmu: MmuReport,
    inject: InjectReport,
}

#[derive(Debug, Serialize)]
struct ErrorReply<'a> {
    error: &'a str,
}

/// What a request line asks for.
#[derive(Debug)]
pub enum Answer {
    /// One reply line, then close.
    Reply(String),
    /// Stream the live trace until the client closes.
    Trace,
}

/// The answer to one request line (`trace` answers an error here: it is a stream).
pub fn answer(request: &str, monitor: &EngineMonitor) -> String {
    match respond(request, monitor) {
        Answer::Reply(r) => r,
        Answer::Trace => r#"{"error":"trace is a stream"}"#.to_string(),
    }
}

/// What to do for one request line.
pub fn respond(request: &str, monitor: &EngineMonitor) -> Answer {
    let request = request.trim();
    if request == "trace" {
        return Answer::Trace;
    }
    if let Some(rest) = request.strip_prefix("inject") {
        if rest.is_empty() || rest.starts_with(char::is_whitespace) {
            return Answer::Reply(crate::engine::inject_cmd::apply(rest.trim(), monitor));
        }
    }
    let reply = match request {
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
                    trace_subscribers: monitor.trace_subscribers(),
                    trace_stream_dropped: monitor.trace_stream_dropped(),
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
                inject: monitor.inject_report(),
            })
        }
        _ => serde_json::to_string(&ErrorReply {
            error: "unknown request (known: stats, trace, inject)",
        }),
    };
    Answer::Reply(reply.unwrap_or_else(|_| r#"{"error":"internal"}"#.to_string()))
}

/// A trace line (`<ns> gpu=<name> key=value ...`, hw-spec §8.3) as one JSON object: `ns` and
/// decimal values as numbers, everything else as strings, keys in line order.
pub fn trace_json(line: &str) -> String {
    fn value(v: &str) -> String {
        match v.parse::<u64>() {
            Ok(n) if !v.starts_with('0') || v == "0" => n.to_string(),
            _ => serde_json::Value::from(v).to_string(),
        }
    }
    let mut words = line.split(' ');
    let mut out = String::with_capacity(line.len() + 64);
    out.push('{');
    if let Some(ns) = words.next() {
        out.push_str("\"ns\":");
        out.push_str(&value(ns));
    }
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            continue;
        };
        out.push(',');
        out.push_str(&serde_json::Value::from(k).to_string());
        out.push(':');
        out.push_str(&value(v));
    }
    out.push('}');
    out
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
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
    /// What the thread takes, until [`CtlServer::serve`] starts it.
    pending: Option<Box<PendingCtl>>,
}

/// The listener, the thread's stop fd, the monitor and the limits of a bound control socket.
type PendingCtl = (UnixListener, OwnedFd, EngineMonitor, CtlLimits);

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
        let setup = || -> io::Result<(OwnedFd, OwnedFd)> {
            listener.set_nonblocking(true)?;
            let stop = rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
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
        let _ = rustix::io::write(&self.stop, &1u64.to_ne_bytes());
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
    /// A live trace subscriber (no deadline): lines from `feed` go out through `out`.
    Streaming(Box<Stream>),
    /// Finished (or failed): close.
    Done,
}

/// A live trace subscription's connection state.
struct Stream {
    feed: TraceFeed,
    out: Vec<u8>,
    pos: usize,
    /// Drops already reported in the stream.
    reported: u64,
}

impl Stream {
    /// Moves queued lines into the output buffer (bounded), with a `{"dropped":N}` line
    /// first when the queue dropped lines since the last report.
    fn fill(&mut self) -> bool {
        if self.pos > 0 && self.pos == self.out.len() {
            self.out.clear();
            self.pos = 0;
        }
        let mut alive = true;
        while self.out.len() - self.pos < STREAM_BUF {
            let dropped = self.feed.dropped.load(std::sync::atomic::Ordering::Relaxed);
            if dropped != self.reported {
                self.reported = dropped;
                self.out
                    .extend_from_slice(format!("{{\"dropped\":{dropped}}}\n").as_bytes());
            }
            match self.feed.rx.try_recv() {
                Ok(line) => {
                    self.out.extend_from_slice(trace_json(&line).as_bytes());
                    self.out.push(b'\n');
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    alive = false;
                    break;
                }
            }
        }
        alive
    }
}

/// One client, non-blocking, with a deadline for the whole exchange.
struct Conn {
    stream: UnixStream,
    deadline: Instant,
    phase: Phase,
}

impl Conn {
    fn events(&self) -> PollFlags {
        match &self.phase {
            Phase::Writing(..) => PollFlags::OUT,
            Phase::Streaming(st) if st.pos < st.out.len() => PollFlags::OUT,
            _ => PollFlags::IN,
        }
    }

    fn streaming(&self) -> bool {
        matches!(self.phase, Phase::Streaming(_))
    }

    /// Makes what progress the socket allows.
    fn step(&mut self, monitor: &EngineMonitor, streams: usize, slots: usize) {
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
                    match reply_to(buf, monitor) {
                        Answer::Reply(r) => {
                            let mut reply = r.into_bytes();
                            reply.push(b'\n');
                            Phase::Writing(reply, 0)
                        }
                        Answer::Trace if streams >= (slots / 2).max(1) => Phase::Writing(
                            b"{\"error\":\"busy: too many trace subscribers\"}\n".to_vec(),
                            0,
                        ),
                        Answer::Trace => {
                            let feed = monitor.subscribe_trace(TRACE_FEED_LINES);
                            let hello = format!(
                                "{{\"trace\":{},\"queue_lines\":{TRACE_FEED_LINES}}}\n",
                                serde_json::Value::from(monitor.name())
                            );
                            // No deadline while it streams: it ends when the client closes.
                            self.deadline = far_future();
                            Phase::Streaming(Box::new(Stream {
                                feed,
                                out: hello.into_bytes(),
                                pos: 0,
                                reported: 0,
                            }))
                        }
                    }
                }
                Phase::Streaming(st) => {
                    if !st.fill() {
                        Phase::Done
                    } else if st.pos < st.out.len() {
                        match (&self.stream).write(&st.out[st.pos..]) {
                            Ok(n) if n > 0 => {
                                st.pos += n;
                                continue;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                            _ => Phase::Done,
                        }
                    } else {
                        // Nothing to send: whatever the client sends is discarded; its end
                        // (or an error) ends the subscription.
                        let mut rest = [0u8; 512];
                        match (&self.stream).read(&mut rest) {
                            Ok(n) if n > 0 => continue,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                            _ => Phase::Done,
                        }
                    }
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

/// A deadline that never comes (a streaming client).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// The reply to what a client sent (`buf` holds at most `MAX_REQUEST + 1` bytes).
fn reply_to(buf: &[u8], monitor: &EngineMonitor) -> Answer {
    if buf.len() > MAX_REQUEST && !buf.contains(&b'\n') {
        return Answer::Reply(r#"{"error":"request too long"}"#.to_string());
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(&[]);
    match std::str::from_utf8(line) {
        Ok(text) => respond(text, monitor),
        Err(_) => Answer::Reply(r#"{"error":"request is not UTF-8"}"#.to_string()),
    }
}

/// Serves clients, at most `limits.max_clients` at once, each within `limits.timeout`, until
/// `stop` is readable. Nothing a client does (silence, a slow read, a huge request, dying
/// halfway) holds more than its slot, its buffers and its timeout.
fn serve(listener: &UnixListener, stop: &OwnedFd, monitor: &EngineMonitor, limits: CtlLimits) {
    let mut conns: Vec<Conn> = Vec::new();
    let mut backoff_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        conns.retain(|c| !matches!(c.phase, Phase::Done) && c.deadline > now);
        let accepting = backoff_until.is_none_or(|t| t <= now);
        let streams = conns.iter().filter(|c| c.streaming()).count();
        let mut wake = conns
            .iter()
            .map(|c| c.deadline)
            .chain(backoff_until)
            .min()
            .map(|t| t.saturating_duration_since(now) + Duration::from_millis(1));
        if streams > 0 && wake.is_none_or(|w| w > Duration::from_millis(STREAM_TICK_MS)) {
            // Subscribers' queues are not pollable: look at them every tick.
            wake = Some(Duration::from_millis(STREAM_TICK_MS));
        }
        let wake = wake.map(|w| Timespec {
            tv_sec: i64::try_from(w.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(w.subsec_nanos()),
        });
        // The stop fd, the listener unless accepting pauses, then one per client.
        let mut fds = Vec::with_capacity(conns.len() + 2);
        fds.push(PollFd::new(stop, PollFlags::IN));
        if accepting {
            fds.push(PollFd::new(listener, PollFlags::IN));
        }
        let first_conn = fds.len();
        fds.extend(conns.iter().map(|c| PollFd::new(&c.stream, c.events())));
        match rustix::event::poll(&mut fds, wake.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                tracing::error!("control socket poll failed ({e}); stopping it");
                return;
            }
        }
        if !fds[0].revents().is_empty() {
            return;
        }
        let listener_ready = accepting && !fds[1].revents().is_empty();
        let ready: Vec<bool> = fds[first_conn..]
            .iter()
            .map(|p| !p.revents().is_empty())
            .collect();
        drop(fds);
        let mut streams = streams;
        for (c, ready) in conns.iter_mut().zip(ready) {
            if ready || c.streaming() {
                let was = c.streaming();
                c.step(monitor, streams - usize::from(was), limits.max_clients);
                if !was && c.streaming() {
                    streams += 1;
                }
            }
        }
        // Slots of clients that finished are free for the ones waiting to be accepted.
        conns.retain(|c| !matches!(c.phase, Phase::Done));
        if listener_ready {
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

/// The control socket of `socket`: itself if it ends in `.ctl`, else `socket.ctl`.
pub fn resolve(socket: &Path) -> PathBuf {
    if socket.extension().is_some_and(|e| e == "ctl") {
        socket.to_path_buf()
    } else {
        ctl_path(socket)
    }
}

/// `vugpu ctl SOCKET WORDS...`: sends the request; `trace` copies the stream to `out` line by
/// line until the server ends it (or the process is interrupted), anything else prints the
/// reply. Err: the socket cannot be reached, or the reply is an `{"error":...}`.
pub fn run_cli(socket: &Path, words: &[String], out: &mut impl Write) -> Result<(), String> {
    let path = resolve(socket);
    let line = words.join(" ");
    if line.len() > MAX_REQUEST || line.contains('\n') {
        return Err(format!(
            "request longer than {MAX_REQUEST} bytes or multi-line"
        ));
    }
    if line.trim() == "trace" {
        return stream(&path, out).map_err(|e| e.to_string());
    }
    let reply = request(&path, &line).map_err(|e| e.to_string())?;
    let _ = writeln!(out, "{reply}");
    if reply.starts_with("{\"error\"") {
        return Err(format!("{}: {line}: refused", path.display()));
    }
    Ok(())
}

/// Subscribes to the live trace at `path` and copies it to `out`.
fn stream(path: &Path, out: &mut impl Write) -> Result<(), CtlError> {
    let err = |source| CtlError::Request {
        path: path.to_path_buf(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(err)?;
    s.set_write_timeout(Some(CONN_TIMEOUT)).map_err(err)?;
    s.write_all(b"trace\n").map_err(err)?;
    let mut r = io::BufReader::new(s);
    let mut line = String::new();
    let mut first = true;
    loop {
        line.clear();
        if io::BufRead::read_line(&mut r, &mut line).map_err(err)? == 0 {
            return Ok(());
        }
        if first && line.starts_with("{\"error\"") {
            return Err(err(io::Error::other(line.trim_end().to_string())));
        }
        first = false;
        out.write_all(line.as_bytes()).map_err(err)?;
        out.flush().map_err(err)?;
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
