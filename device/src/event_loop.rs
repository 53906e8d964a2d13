//! Event-loop glue (event-manager), and nothing else: which fd is ready, and what to call.
//!
//! One subscriber owns the listening socket, at most one client [`Session`] and the [`Gpu`];
//! the fds are told apart by typed [`Token`]s. (A single subscriber because accepting a client
//! must register the client's fd, and event-manager only lets a subscriber register its own
//! fds.) A second concurrent client is accepted and closed with a log line. When the client
//! hangs up, errs or violates the protocol, the session is dropped, the device is told
//! (`client_disconnected`: DMA maps and irq fds go, device state stays) and the server waits
//! for the next client — a restarted QEMU is served without restarting the server. SIGINT and
//! SIGTERM (through a signalfd), or any readable stop fd, end the loop; the socket file is removed
//! on the way out.
//!
//! The DMA engines' eventfd is the third source: it reports engine faults (turned into
//! config-space error bits and vector 0 by the device) and DMA messages the engines need for
//! fd-less windows. Those messages are sent here, between client requests — never while a
//! region reply is pending — and while waiting for their replies the session keeps answering
//! the client (`Session::dma_*_serving`), so a vCPU blocked in a trapped access cannot deadlock
//! with them. Only this loop acknowledges that eventfd, right before it drains both queues
//! (`Gpu::ack_engine_events`): a request queued while a client request is being handled keeps
//! the eventfd readable and is sent as soon as that request's reply is out. Requests whose
//! engine stopped waiting (reset, shutdown) are dropped unsent.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use rustix::event::{PollFd, PollFlags, Timespec};
use vugpu_backend::ClientId;
use vugpu_protocol::backend::DeviceBackend;
use vugpu_protocol::{DmaLayout, ProtocolError, ServerConfig, Session, Status};

use crate::engine::env::{MsgDmaRequest, MsgOp};

use crate::gpu::Gpu;

/// Event handling or a DMA message this long (µs) is logged as a warning: a stall worth a look.
const SLOW_US: u128 = 250_000;

/// What a ready fd is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Token {
    /// The listening socket.
    Listener = 1,
    /// The connected client.
    Session = 2,
    /// The stop fd: a signalfd (SIGINT/SIGTERM) or an eventfd.
    Stop = 3,
    /// The DMA engines' events (faults, DMA message requests).
    Engine = 4,
}

impl Token {
    fn from_data(data: u32) -> Option<Token> {
        [Token::Listener, Token::Session, Token::Stop, Token::Engine]
            .into_iter()
            .find(|t| *t as u32 == data)
    }
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be created.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The event loop failed.
    #[error("event loop: {0}")]
    EventManager(String),
    /// Signal handling could not be set up.
    #[error("cannot set up signal handling: {0}")]
    Signals(#[source] io::Error),
}

/// Counters of the server (for tests and logs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Clients served (sessions started).
    pub clients: u64,
    /// Connections refused because a client was already connected.
    pub refused: u64,
    /// Sessions that ended with a protocol error.
    pub session_errors: u64,
    /// DMA messages performed for the engines.
    pub engine_dma_messages: u64,
    /// DMA messages for the engines that failed.
    pub engine_dma_failures: u64,
}

/// The subscriber: listener + at most one session + the device.
pub struct Server {
    listener: UnixListener,
    session: Option<Session>,
    /// The session's span (`client{id=N}`, [`crate::log::client_span`]), entered while its
    /// messages are handled; `Span::none()` without a session.
    client: tracing::Span,
    gpu: Gpu,
    config: ServerConfig,
    dma_layout: DmaLayout,
    stop: Option<OwnedFd>,
    shutdown: bool,
    stats: ServerStats,
    /// An fd held in reserve (/dev/null): when the process is out of fds, closing it lets
    /// [`Server::accept`] take the waiting connection off the queue and refuse it, instead of
    /// leaving the listener readable and the loop spinning on EMFILE.
    reserve: Option<std::fs::File>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("connected", &self.session.is_some())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server for `gpu` on an already bound `listener`. When `stop` (a signalfd from
    /// [`shutdown_signalfd`], or an eventfd) becomes readable, [`run`] returns.
    pub fn new(
        listener: UnixListener,
        gpu: Gpu,
        config: ServerConfig,
        stop: Option<OwnedFd>,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Server {
            listener,
            session: None,
            client: tracing::Span::none(),
            gpu,
            config,
            // QEMU 11.1.3 speaks the specification's layout (verified with the real binary,
            // docs/hw-spec.md §6.8), not the one in QEMU 10.2's source.
            dma_layout: DmaLayout::Spec,
            stop,
            shutdown: false,
            stats: ServerStats::default(),
            reserve: open_reserve(),
        })
    }

    /// The DMA_READ/DMA_WRITE payload layout used with clients (default: the specification's,
    /// which QEMU 11.1.3 speaks).
    pub fn set_dma_layout(&mut self, layout: DmaLayout) {
        self.dma_layout = layout;
    }

    /// Counters.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// The device.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// A shutdown signal arrived.
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown
    }

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    self.refuse_without_fds(&e);
                    return;
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    return;
                }
            };
            if self.session.is_some() {
                // The previous client may have hung up without us having seen it yet (a
                // restarted QEMU reconnects at once): finish it first.
                self.reap_hung_up_session(ops);
            }
            if self.session.is_some() {
                self.stats.refused += 1;
                tracing::warn!("refusing a second client: one client is already connected");
                drop(stream);
                continue;
            }
            if let Err(e) = stream.set_nonblocking(false) {
                tracing::warn!("cannot configure client socket: {e}");
                continue;
            }
            let client = peer_pid(&stream);
            let mut session = Session::new(stream, self.config.clone());
            session.set_dma_layout(self.dma_layout);
            if let Err(e) = ops.add(Events::with_data(
                &session,
                Token::Session as u32,
                EventSet::IN | EventSet::HANG_UP | EventSet::ERROR,
            )) {
                tracing::error!("cannot watch client socket: {e:?}");
                continue;
            }
            self.stats.clients += 1;
            self.client = crate::log::client_span(self.stats.clients);
            let _client = self.client.enter();
            self.gpu
                .client_connected(client.map(|pid| ClientId(u64::from(pid))));
            tracing::info!(
                "client {} connected (pid {})",
                self.stats.clients,
                client.map_or_else(|| "unknown".to_string(), |p| p.to_string())
            );
            self.session = Some(session);
        }
    }

    /// Out of fds: the reserve fd makes room to take the waiting connection off the queue and
    /// close it (the client sees its connection closed), so the listener stops being readable.
    fn refuse_without_fds(&mut self, e: &io::Error) {
        self.stats.refused += 1;
        tracing::warn!(
            "refusing a client: {e} (the process is out of file descriptors; see ulimit -n \
             and --max-dma-fds)"
        );
        self.reserve = None;
        match self.listener.accept() {
            Ok((stream, _)) => drop(stream),
            Err(e) => tracing::debug!("accept with the reserve fd failed: {e}"),
        }
        self.reserve = open_reserve();
    }

    fn end_session(&mut self, ops: &mut EventOps, why: &str) {
        let span = std::mem::replace(&mut self.client, tracing::Span::none());
        let _client = span.enter();
        if let Some(session) = self.session.take() {
            let _ = ops.remove(Events::empty(&session));
            tracing::info!(
                "client {} disconnected ({why}); {} messages handled",
                self.stats.clients,
                session.stats().total_messages()
            );
        }
        self.gpu.client_disconnected();
        let g = self.gpu.stats();
        let m = self.gpu.msix().stats();
        tracing::info!("device: {} DEVICE_RESETs, {} FLRs, {} SOFT_RESETs, {} MSI-X messages, {} held, {} suppressed",
            g.device_resets,
            g.flrs,
            g.soft_resets,
            m.sent,
            m.pended,
            m.suppressed
        );
    }

    /// If the current client has hung up, handle what it left in the socket and end it.
    fn reap_hung_up_session(&mut self, ops: &mut EventOps) {
        let Some(session) = self.session.as_ref() else {
            return;
        };
        let mut pfd = [PollFd::new(session, PollFlags::IN | PollFlags::RDHUP)];
        let ready = rustix::event::poll(&mut pfd, Some(&Timespec::default()));
        let hung_up = PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR;
        if !matches!(ready, Ok(n) if n > 0) || !pfd[0].revents().intersects(hung_up) {
            return;
        }
        // The peer is gone, so what is left to read is finite: drain it.
        let span = self.client.clone();
        let _client = span.enter();
        while let Some(session) = self.session.as_mut() {
            match session.handle_message(&mut self.gpu) {
                Ok(Status::Continue | Status::Idle) => {}
                Ok(Status::Closed) => self.end_session(ops, "closed"),
                Err(e) if e.is_fatal() => {
                    self.stats.session_errors += 1;
                    let why = format!("protocol error: {e}");
                    self.end_session(ops, &why);
                }
                Err(e) => tracing::debug!("request failed: {e}"),
            }
        }
    }

    fn serve_client(&mut self, ops: &mut EventOps, set: EventSet) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        if !set.contains(EventSet::IN) {
            self.end_session(ops, "hang-up");
            return;
        }
        loop {
            // Never a blocking read here: the readiness that woke us may be stale (a DMA wait
            // in `engine_dma` serves client requests and may have consumed the message), and
            // a blocking read would then stall every engine until the client's next message.
            match session.handle_ready_message(&mut self.gpu) {
                Ok(Status::Continue) => {}
                Ok(Status::Idle) => return,
                Ok(Status::Closed) => {
                    self.end_session(ops, "closed");
                    return;
                }
                Err(e) if e.is_fatal() => {
                    self.stats.session_errors += 1;
                    let why = format!("protocol error: {e}");
                    self.end_session(ops, &why);
                    return;
                }
                Err(e) => tracing::debug!("request failed: {e}"),
            }
            if !session.has_pending() {
                return;
            }
        }
    }

    /// Engine faults and DMA message requests: acknowledge the eventfd, then drain both queues
    /// (see [`Gpu::ack_engine_events`] for why this is the only place that acknowledges it).
    fn engine_events(&mut self, ops: &mut EventOps) {
        loop {
            self.gpu.ack_engine_events();
            let faults = self.gpu.process_engine_events();
            let Some(req) = self.gpu.next_msg_dma() else {
                if faults == 0 {
                    return;
                }
                continue;
            };
            self.engine_dma(ops, req);
        }
    }

    fn engine_dma(&mut self, ops: &mut EventOps, mut req: MsgDmaRequest) {
        if req.abandoned() {
            tracing::debug!("engine DMA message dropped: the engine stopped waiting for it");
            return;
        }
        let Some(session) = self.session.as_mut().filter(|s| s.is_negotiated()) else {
            self.stats.engine_dma_failures += 1;
            let _ = req.reply.send(Err("no client".into()));
            return;
        };
        self.stats.engine_dma_messages += 1;
        let started = std::time::Instant::now();
        let queued_us = started.duration_since(req.queued).as_micros();
        let (what, addr, len) = match &req.op {
            MsgOp::Read { addr, len } => ("DMA_READ", *addr, *len),
            MsgOp::Write { addr, data } => ("DMA_WRITE", *addr, data.len()),
        };
        // One message per call, so that a reset served while a message is in flight (the
        // session answers client requests while it waits) ends the request before the next
        // message: no new message after a reset (hw-spec §4).
        let read = matches!(req.op, MsgOp::Read { .. });
        let mut data = match &mut req.op {
            MsgOp::Read { len, .. } => vec![0u8; *len],
            MsgOp::Write { data, .. } => std::mem::take(data),
        };
        let result = session.dma_message_size().and_then(|piece| {
            let piece = piece.max(1);
            for (i, part) in data.chunks_mut(piece).enumerate() {
                if req.abandoned() {
                    return Ok(false);
                }
                let at = addr
                    .checked_add((i * piece) as u64)
                    .ok_or_else(|| ProtocolError::Invalid("DMA range overflows".into()))?;
                // A DMA_UNMAP (or a peer window closed, hw-spec §6.10) served while an earlier
                // piece was waited for may have removed the window: no message for it after the
                // unmap returned.
                if !self
                    .gpu
                    .msg_allowed(req.window, at, part.len() as u64, !read)
                {
                    return Err(ProtocolError::Invalid(format!(
                        "DMA window at {at:#x} unmapped while its messages were in flight"
                    )));
                }
                if read {
                    session.dma_read_serving(at, part, &mut self.gpu)?;
                } else {
                    session.dma_write_serving(at, part, &mut self.gpu)?;
                }
            }
            Ok(true)
        });
        let us = started.elapsed().as_micros();
        match result {
            Ok(true) => {
                if us + queued_us >= SLOW_US {
                    tracing::warn!(
                        "engine {what} {addr:#x}+{len:#x} in {us} us (queued {queued_us} us before)"
                    );
                } else {
                    tracing::debug!(
                        "engine {what} {addr:#x}+{len:#x} in {us} us (queued {queued_us} us before)"
                    );
                }
                if !read {
                    data.clear();
                }
                let _ = req.reply.send(Ok(data));
            }
            Ok(false) => tracing::debug!("engine {what} {addr:#x}+{len:#x} stopped after {us} us: the engine stopped waiting"
            ),
            Err(e) => {
                self.stats.engine_dma_failures += 1;
                tracing::warn!("engine {what} {addr:#x}+{len:#x} failed after {us} us: {e}"
                );
                let _ = req.reply.send(Err(e.to_string()));
                if e.is_fatal() {
                    self.stats.session_errors += 1;
                    let why = format!("protocol error during an engine DMA: {e}");
                    self.end_session(ops, &why);
                }
            }
        }
    }

    fn read_stop(&mut self) {
        if let Some(fd) = &self.stop {
            // One signalfd_siginfo (128 bytes) or one eventfd counter (8 bytes).
            let mut info = [0u8; 128];
            if matches!(rustix::io::read(fd, &mut info), Ok(n) if n > 0) {
                tracing::info!("shutdown requested");
                self.shutdown = true;
            }
        }
    }
}

impl MutEventSubscriber for Server {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.listener,
            Token::Listener as u32,
            EventSet::IN,
        )) {
            tracing::error!("cannot watch the listening socket: {e:?}");
            self.shutdown = true;
        }
        if let Some(fd) = &self.stop {
            if let Err(e) = ops.add(Events::with_data(fd, Token::Stop as u32, EventSet::IN)) {
                tracing::error!("cannot watch the stop fd: {e:?}");
            }
        }
        if let Err(e) = ops.add(Events::with_data(
            self.gpu.engine_events(),
            Token::Engine as u32,
            EventSet::IN,
        )) {
            tracing::error!("cannot watch the engine events: {e:?}");
            self.shutdown = true;
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let started = std::time::Instant::now();
        let token = Token::from_data(events.data());
        // The client's messages, and the engines' DMA messages to it, are handled in its span.
        let span = match token {
            Some(Token::Session | Token::Engine) => self.client.clone(),
            _ => tracing::Span::none(),
        };
        let _client = span.enter();
        self.dispatch(token, events, ops);
        let us = started.elapsed().as_micros();
        if us >= SLOW_US {
            // A stall worth a look: nothing else of this GPU is served meanwhile.
            tracing::warn!("handling {token:?} took {us} us");
        }
    }
}

impl Server {
    fn dispatch(&mut self, token: Option<Token>, events: Events, ops: &mut EventOps) {
        match token {
            Some(Token::Listener) => self.accept(ops),
            Some(Token::Session) => self.serve_client(ops, events.event_set()),
            Some(Token::Stop) => self.read_stop(),
            Some(Token::Engine) => self.engine_events(ops),
            None => {
                tracing::warn!("event for unknown token {}", events.data());
                let _ = ops.remove(events);
            }
        }
    }
}

/// The reserve fd of [`Server`] (`None` if even that cannot be opened).
fn open_reserve() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// The pid of the process at the other end of a UNIX stream (SO_PEERCRED), which identifies the
/// client for peer-to-peer routing (hw-spec §6.9).
///
/// Through `nix`: rustix's `socket_peercred` stores the pid in a non-zero `Pid`, but the kernel
/// reports 0 for a peer outside this process's pid namespace.
fn peer_pid(stream: &std::os::unix::net::UnixStream) -> Option<u32> {
    let cred =
        nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials).ok()?;
    (cred.pid() > 0).then(|| cred.pid().unsigned_abs())
}

/// Blocks SIGINT and SIGTERM for this thread (and threads it spawns later) and returns a
/// signalfd that reports them. Call before spawning threads.
///
/// Through `nix` (rustix has no signalfd); the signalfd is handed back as a plain [`OwnedFd`] (a
/// close-on-exec duplicate sharing its non-blocking file description), read as bytes by the loop.
pub fn shutdown_signalfd() -> io::Result<OwnedFd> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
    sfd.as_fd().try_clone_to_owned()
}

/// Removes the socket file when dropped.
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl SocketFile {
    /// Binds `path` (which must not exist) and returns the listener and the guard. The socket
    /// is bound and listening under a temporary name first and then linked to `path`, so a
    /// client that waits for `path` to appear never gets ECONNREFUSED; an existing `path` is
    /// never replaced.
    pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), ServeError> {
        SocketFile::bind_mode(path, None)
    }

    /// [`SocketFile::bind`], with the socket's permission bits set to `mode` (when given)
    /// before it appears at `path`.
    pub fn bind_mode(
        path: &Path,
        mode: Option<u32>,
    ) -> Result<(UnixListener, SocketFile), ServeError> {
        let err = |source| ServeError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let name = path
            .file_name()
            .ok_or_else(|| err(io::Error::new(io::ErrorKind::InvalidInput, "no file name")))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(err)?;
        if let Some(mode) = mode {
            use std::os::unix::fs::PermissionsExt;
            if let Err(e) = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)) {
                let _ = std::fs::remove_file(&tmp);
                return Err(err(e));
            }
        }
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        linked.map_err(err)?;
        Ok((listener, SocketFile(path.to_path_buf())))
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A server with its event manager, every fd of the loop created ([`prepare`]), ready to
/// [`run_prepared`] on another thread.
pub struct Prepared {
    em: EventManager<Server>,
    id: event_manager::SubscriberId,
    name: String,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Creates the event manager (its epoll fd) and registers the server's fds.
pub fn prepare(server: Server) -> Result<Prepared, ServeError> {
    let name = server.gpu().name().to_string();
    let mut em =
        EventManager::<Server>::new().map_err(|e| ServeError::EventManager(format!("{e:?}")))?;
    let id = em.add_subscriber(server);
    Ok(Prepared { em, id, name })
}

/// Runs the server until its stop fd is readable (forever without one); returns the server, so
/// callers (tests) can inspect the device.
pub fn run(server: Server) -> Result<Server, ServeError> {
    run_prepared(prepare(server)?)
}

/// [`run`] for a server made ready with [`prepare`].
pub fn run_prepared(p: Prepared) -> Result<Server, ServeError> {
    let Prepared { mut em, id, name } = p;
    let _gpu = crate::log::gpu_span(&name).entered();
    loop {
        match em.run() {
            Ok(_) => {}
            Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(ServeError::EventManager(format!("{e:?}"))),
        }
        let done = em
            .subscriber_mut(id)
            .map_err(|e| ServeError::EventManager(format!("{e:?}")))?
            .shutdown_requested();
        if done {
            break;
        }
    }
    em.remove_subscriber(id)
        .map_err(|e| ServeError::EventManager(format!("{e:?}")))
}
