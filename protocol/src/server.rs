//! The server end: one [`Session`] per connected client.
//!
//! A session reads one message at a time, decodes and validates it, calls the device through
//! [`DeviceBackend`], and sends exactly one reply (or none when the client set NO_REPLY) through
//! a single reply path where errors become errnos. Fatal errors (see
//! [`ProtocolError::is_fatal`]) end the session; the caller then calls
//! [`DeviceBackend::client_disconnected`].
//!
//! The session can also act as a requester: [`Session::dma_read`] / [`Session::dma_write`] send
//! DMA_READ / DMA_WRITE to the client and wait for the replies. Client requests that arrive in
//! the meantime are queued and handled, in order, by the next [`Session::handle_message`] calls
//! (check [`Session::has_pending`]: the socket may not be readable while requests are queued).

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use zerocopy::IntoBytes;

use crate::backend::{
    region_flags, BackendError, DeviceBackend, DmaUnmap, IrqData, IrqSet, SparseArea,
};
use crate::error::{ProtocolError, Result};
use crate::message::{IrqSetData, IrqSetRequest, Request};
use crate::transport::{recv_message, send_message, RawMessage, RecvLimits, SCM_MAX_FD};
use crate::validate::{check_irq_index, check_irq_range, check_region_index, check_region_range};
use crate::wire::{
    flags, Capabilities, Command, DeviceInfoWire, DmaLayout, Header, IrqInfoWire, RegionAccessWire,
    RegionInfoWire, RegionIoFdsWire, SparseMmapHeader, VersionWire, WriteMultiEntry, Writer,
    DEFAULT_MAX_DATA_XFER_SIZE,
};

mod serving;

mod config;
mod dma;

pub use config::{
    ServerConfig, DEFAULT_MAX_PENDING_BYTES, DEFAULT_MAX_PENDING_FDS, DEFAULT_MAX_PENDING_MSGS,
};
pub use dma::DMA_MESSAGE_MAX_DATA;

/// Spec default of `max_dma_maps` when not advertised.
const DEFAULT_MAX_DMA_MAPS: u32 = 65535;
/// Spec default of `pgsizes`.
const DEFAULT_PGSIZES: u64 = 4096;

/// Outcome of [`Session::handle_message`] and [`Session::handle_ready_message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The message was handled; keep going.
    Continue,
    /// The client closed the connection (cleanly, at a message boundary).
    Closed,
    /// Nothing was there to handle ([`Session::handle_ready_message`] only): no request was
    /// queued and no message had started to arrive.
    Idle,
}

/// Counters of one session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Messages received per command number (index = command, 0 = numbers we do not know).
    pub per_command: [u64; Command::MAX as usize + 1],
    /// Requests answered with an error reply.
    pub error_replies: u64,
    /// Requests that failed but carried NO_REPLY (so no error was sent).
    pub suppressed_errors: u64,
    /// Failures reported by the device backend (subset of the two above).
    pub backend_errors: u64,
    /// Replies that matched no outstanding request (dropped).
    pub stray_replies: u64,
    /// DMA_READ/DMA_WRITE messages sent.
    pub dma_messages: u64,
    /// Bytes moved by DMA_READ/DMA_WRITE.
    pub dma_bytes: u64,
    /// Client requests queued while waiting for a DMA reply.
    pub queued_requests: u64,
    /// The most recent request error, for diagnostics.
    pub last_error: Option<String>,
}

impl SessionStats {
    /// Messages received with command `cmd`.
    pub fn messages(&self, cmd: Command) -> u64 {
        self.per_command[cmd as usize]
    }

    /// All messages received.
    pub fn total_messages(&self) -> u64 {
        self.per_command.iter().sum()
    }
}

/// What the client told us in VERSION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Peer {
    max_data_xfer_size: u32,
}

/// One reply: payload after the header and at most one fd.
struct Reply {
    payload: Vec<u8>,
    fd: Option<OwnedFd>,
}

impl Reply {
    fn empty() -> Reply {
        Reply {
            payload: Vec::new(),
            fd: None,
        }
    }

    fn bytes(payload: Vec<u8>) -> Reply {
        Reply { payload, fd: None }
    }
}

/// One connected vfio-user client.
#[derive(Debug)]
pub struct Session {
    stream: UnixStream,
    config: ServerConfig,
    peer: Option<Peer>,
    stats: SessionStats,
    pending: VecDeque<RawMessage>,
    /// Payload bytes and fds of `pending`.
    pending_bytes: usize,
    pending_fds: usize,
    next_id: u16,
    dma_layout: DmaLayout,
    dma_timeout: Duration,
    dma_maps: u32,
    closed: bool,
}

impl AsFd for Session {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl AsRawFd for Session {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

impl Session {
    /// Wrap an accepted connection. Out-of-range config values are clamped (use
    /// [`ServerConfig::validate`] to reject them instead).
    pub fn new(stream: UnixStream, config: ServerConfig) -> Session {
        Session {
            stream,
            config: config.sanitized(),
            peer: None,
            stats: SessionStats::default(),
            pending: VecDeque::new(),
            pending_bytes: 0,
            pending_fds: 0,
            next_id: 0,
            dma_layout: DmaLayout::default(),
            dma_timeout: Duration::from_secs(5),
            dma_maps: 0,
            closed: false,
        }
    }

    /// Choose the DMA_READ/DMA_WRITE payload layout (default [`DmaLayout::Spec`], what QEMU 11.1.3 speaks).
    pub fn set_dma_layout(&mut self, layout: DmaLayout) {
        self.dma_layout = layout;
    }

    /// Time to wait for each DMA_READ/DMA_WRITE reply (default 5 s).
    pub fn set_dma_timeout(&mut self, timeout: Duration) {
        self.dma_timeout = timeout;
    }

    /// The effective configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// True once VERSION has been negotiated.
    pub fn is_negotiated(&self) -> bool {
        self.peer.is_some()
    }

    /// True when client requests received during a DMA wait are queued: call
    /// [`handle_message`](Self::handle_message) until this is false, even if the socket is
    /// not readable.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The oldest queued request, if any.
    fn pop_pending(&mut self) -> Option<RawMessage> {
        let m = self.pending.pop_front()?;
        self.pending_bytes -= m.body.len();
        self.pending_fds -= m.fds.len();
        Some(m)
    }

    /// Number of DMA mappings the client currently holds (as counted by the session).
    pub fn dma_map_count(&self) -> u32 {
        self.dma_maps
    }

    fn recv_limits(&self) -> RecvLimits {
        RecvLimits {
            max_size: self.config.limits().max_message_size(),
            max_fds: self.config.max_msg_fds as usize,
            body_timeout: self.config.body_timeout,
        }
    }

    /// Read and fully handle exactly one message (a queued one first), blocking until it
    /// arrives. `Ok(Closed)` when the client went away; `Err` for fatal errors. Either way the
    /// caller should then call [`DeviceBackend::client_disconnected`].
    pub fn handle_message<D: DeviceBackend + ?Sized>(&mut self, dev: &mut D) -> Result<Status> {
        self.handle_one(dev, None)
    }

    /// Like [`handle_message`](Self::handle_message), but never waits for a message to start:
    /// `Ok(Idle)` when none is queued and none has begun to arrive (a message that has begun is
    /// read in full, within the body timeout).
    ///
    /// This is the call for an event loop woken by socket readiness. The readiness may be stale:
    /// a DMA wait that serves client requests ([`Session::dma_read_serving`]) can consume the
    /// very message that made the socket readable, and a blocking read would then wait for the
    /// client's next message, which may never come while the client waits for the device.
    pub fn handle_ready_message<D: DeviceBackend + ?Sized>(
        &mut self,
        dev: &mut D,
    ) -> Result<Status> {
        self.handle_one(dev, Some(Instant::now()))
    }

    /// One message; `first_deadline` bounds the wait for its first byte (`None`: forever).
    fn handle_one<D: DeviceBackend + ?Sized>(
        &mut self,
        dev: &mut D,
        first_deadline: Option<Instant>,
    ) -> Result<Status> {
        if self.closed {
            return Ok(Status::Closed);
        }
        let msg = match self.pop_pending() {
            Some(m) => m,
            None => match recv_message(self.stream.as_fd(), &self.recv_limits(), first_deadline) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.closed = true;
                    return Ok(Status::Closed);
                }
                Err(ProtocolError::WaitTimeout(_)) if first_deadline.is_some() => {
                    return Ok(Status::Idle);
                }
                Err(e) => {
                    self.closed = true;
                    return Err(e);
                }
            },
        };
        let r = self.process(msg, dev);
        if matches!(r, Err(ref e) if e.is_fatal()) {
            self.closed = true;
        }
        r
    }

    /// Handle messages until the client disconnects (`Ok`) or a fatal error (`Err`).
    pub fn run<D: DeviceBackend + ?Sized>(&mut self, dev: &mut D) -> Result<()> {
        loop {
            if self.handle_message(dev)? == Status::Closed {
                return Ok(());
            }
        }
    }

    fn count(&mut self, command: u16) {
        let i = if command <= Command::MAX {
            command as usize
        } else {
            0
        };
        self.stats.per_command[i] = self.stats.per_command[i].saturating_add(1);
    }

    fn process<D: DeviceBackend + ?Sized>(
        &mut self,
        msg: RawMessage,
        dev: &mut D,
    ) -> Result<Status> {
        let h = msg.header;
        if h.is_reply() {
            // Nothing is outstanding here (DMA waits consume their own replies): a late reply
            // after a timeout. Its body was read in full, so the stream stays in sync.
            self.stats.stray_replies += 1;
            tracing::debug!(
                id = h.msg_id,
                "stray reply to command {} dropped",
                h.command
            );
            return Ok(Status::Continue);
        }
        self.count(h.command);
        tracing::debug!(
            id = h.msg_id,
            size = h.size,
            "request {}",
            CommandName(h.command)
        );
        let result = if !h.is_command() || h.is_error() || h.flags & !flags::KNOWN != 0 {
            Err(ProtocolError::invalid(format!(
                "bad header flags {:#x} on a request",
                h.flags
            )))
        } else if self.peer.is_none() && h.command != Command::Version as u16 {
            let e = ProtocolError::NotNegotiated(h.command);
            if !h.no_reply() {
                // Best effort: the session ends regardless.
                let _ = self.send_error(&h, e.errno());
            }
            return Err(e);
        } else {
            let limits = self.config.limits();
            Request::decode(&h, msg.body, msg.fds, &limits)
                .and_then(|req| self.dispatch(&h, req, dev))
        };
        match result {
            Ok(reply) => {
                if !h.no_reply() {
                    self.send_reply(&h, &reply.payload, reply.fd.as_ref())?;
                }
            }
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                if matches!(e, ProtocolError::Backend(_)) {
                    self.stats.backend_errors += 1;
                }
                self.stats.last_error = Some(e.to_string());
                tracing::debug!(
                    id = h.msg_id,
                    "request {} failed: {e}",
                    CommandName(h.command)
                );
                if h.no_reply() {
                    self.stats.suppressed_errors += 1;
                } else {
                    self.stats.error_replies += 1;
                    self.send_error(&h, e.errno())?;
                }
            }
        }
        Ok(Status::Continue)
    }

    fn send_reply(&mut self, req: &Header, payload: &[u8], fd: Option<&OwnedFd>) -> Result<()> {
        let size = u32::try_from(Header::SIZE + payload.len())
            .map_err(|_| ProtocolError::invalid("reply too large"))?;
        let mut w = Writer::with_capacity(size as usize);
        w.put(&Header {
            msg_id: req.msg_id,
            command: req.command,
            size,
            flags: flags::TYPE_REPLY,
            error: 0,
        });
        w.bytes(payload);
        let fds: Vec<BorrowedFd<'_>> = fd.iter().map(|f| f.as_fd()).collect();
        send_message(
            self.stream.as_fd(),
            &w.into_vec(),
            &fds,
            self.config.body_timeout,
        )
    }

    fn send_error(&mut self, req: &Header, errno: i32) -> Result<()> {
        let h = Header {
            msg_id: req.msg_id,
            command: req.command,
            size: Header::SIZE as u32,
            flags: flags::TYPE_REPLY | flags::ERROR,
            error: u32::try_from(errno).unwrap_or(libc::EINVAL as u32),
        };
        send_message(
            self.stream.as_fd(),
            h.as_bytes(),
            &[],
            self.config.body_timeout,
        )
    }

    fn dispatch<D: DeviceBackend + ?Sized>(
        &mut self,
        h: &Header,
        req: Request,
        dev: &mut D,
    ) -> Result<Reply> {
        match req {
            Request::Version { version, caps } => self.version(h, version, &caps),
            Request::DmaMap(mapping) => {
                if self.dma_maps >= self.config.max_dma_maps {
                    return Err(ProtocolError::TooManyMappings(self.config.max_dma_maps));
                }
                dev.dma_map(mapping)?;
                self.dma_maps += 1;
                Ok(Reply::empty())
            }
            Request::DmaUnmap { wire, unmap } => {
                dev.dma_unmap(unmap)?;
                self.dma_maps = match unmap {
                    DmaUnmap::All => 0,
                    DmaUnmap::Range { .. } => self.dma_maps.saturating_sub(1),
                };
                Ok(Reply::bytes(wire.as_bytes().to_vec()))
            }
            Request::DeviceGetInfo { .. } => {
                let info = dev.device_info();
                let reply = DeviceInfoWire {
                    argsz: DeviceInfoWire::SIZE as u32,
                    flags: DeviceInfoWire::FLAG_PCI
                        | if info.reset {
                            DeviceInfoWire::FLAG_RESET
                        } else {
                            0
                        },
                    num_regions: info.num_regions,
                    num_irqs: info.num_irqs,
                };
                Ok(Reply::bytes(reply.as_bytes().to_vec()))
            }
            Request::RegionInfo { argsz, index } => region_info_reply(dev, argsz, index),
            Request::RegionIoFds { index, .. } => {
                check_region_index(&dev.device_info(), index)?;
                let reply = RegionIoFdsWire {
                    argsz: RegionIoFdsWire::SIZE as u32,
                    flags: 0,
                    index,
                    count: 0,
                };
                Ok(Reply::bytes(reply.as_bytes().to_vec()))
            }
            Request::IrqInfo { index, .. } => {
                check_irq_index(&dev.device_info(), index)?;
                let info = dev.irq_info(index)?;
                let reply = IrqInfoWire {
                    argsz: IrqInfoWire::SIZE as u32,
                    flags: info.flags,
                    index,
                    count: info.count,
                };
                Ok(Reply::bytes(reply.as_bytes().to_vec()))
            }
            Request::SetIrqs(r) => {
                set_irqs(dev, r)?;
                Ok(Reply::empty())
            }
            Request::RegionRead(a) => {
                let (flags, size) = region_flags_size(dev, a.region)?;
                check_region_range(a.region, flags, size, a.offset, u64::from(a.count), false)?;
                // The reply is the access descriptor followed by the data, read in place.
                let mut out = vec![0u8; RegionAccessWire::SIZE + a.count as usize];
                let (head, data) = out.split_at_mut(RegionAccessWire::SIZE);
                head.copy_from_slice(a.as_bytes());
                if !data.is_empty() {
                    dev.region_read(a.region, a.offset, data)?;
                }
                Ok(Reply::bytes(out))
            }
            Request::RegionWrite { access: a, data } => {
                let (flags, size) = region_flags_size(dev, a.region)?;
                check_region_range(a.region, flags, size, a.offset, u64::from(a.count), true)?;
                if !data.is_empty() {
                    dev.region_write(a.region, a.offset, &data)?;
                }
                Ok(Reply::bytes(a.as_bytes().to_vec()))
            }
            Request::RegionWriteMulti(entries) => {
                write_multi(dev, &entries)?;
                Ok(Reply::bytes((entries.len() as u64).as_bytes().to_vec()))
            }
            Request::Reset => {
                dev.reset()?;
                Ok(Reply::empty())
            }
        }
    }

    fn version(&mut self, h: &Header, version: VersionWire, caps: &Capabilities) -> Result<Reply> {
        if self.peer.is_some() {
            return Err(ProtocolError::invalid("VERSION already negotiated"));
        }
        if version.major != 0 {
            return Err(ProtocolError::NotSupported(format!(
                "major version {}",
                version.major
            )));
        }
        let max_xfer = caps
            .max_data_xfer_size
            .unwrap_or(DEFAULT_MAX_DATA_XFER_SIZE);
        if max_xfer == 0 {
            return Err(ProtocolError::invalid("client max_data_xfer_size 0"));
        }
        let limit = (h.size as usize).saturating_sub(Header::SIZE + VersionWire::SIZE);
        let json = self.fitting_capabilities(limit);
        let mut w = Writer::default();
        VersionWire { major: 0, minor: 0 }.encode(json.as_deref(), &mut w);
        self.peer = Some(Peer {
            max_data_xfer_size: max_xfer,
        });
        Ok(Reply::bytes(w.into_vec()))
    }

    /// Our capabilities as JSON of at most `limit - 1` bytes (+ NUL), dropping optional keys
    /// in order of least harm: keys equal to their spec default, then `write_multiple`, then
    /// the others (a smaller request leaves us no choice); `None` if even `{}` does not fit.
    fn fitting_capabilities(&self, limit: usize) -> Option<String> {
        let c = &self.config;
        let mut caps = Capabilities {
            max_msg_fds: Some(c.max_msg_fds),
            max_data_xfer_size: Some(c.max_data_xfer_size),
            pgsizes: Some(c.pgsize),
            max_dma_maps: Some(c.max_dma_maps),
            write_multiple: c.write_multiple.then_some(true),
            ..Capabilities::default()
        };
        type Step = fn(&mut Capabilities);
        let steps: [(bool, Step); 7] = [
            (c.max_dma_maps == DEFAULT_MAX_DMA_MAPS, |c| {
                c.max_dma_maps = None
            }),
            (c.pgsize == DEFAULT_PGSIZES, |c| c.pgsizes = None),
            (c.max_data_xfer_size == DEFAULT_MAX_DATA_XFER_SIZE, |c| {
                c.max_data_xfer_size = None
            }),
            (true, |c| c.write_multiple = None),
            (true, |c| c.max_dma_maps = None),
            (true, |c| c.pgsizes = None),
            (true, |c| c.max_data_xfer_size = None),
        ];
        let fits = |c: &Capabilities| c.to_json().len() < limit;
        if fits(&caps) {
            return Some(caps.to_json());
        }
        for (applies, step) in steps {
            if applies {
                step(&mut caps);
                if fits(&caps) {
                    return Some(caps.to_json());
                }
            }
        }
        // max_msg_fds last. Its absence means 1 to a spec client but 8 to QEMU, so it may only
        // be dropped when we accept at least 8.
        if c.max_msg_fds >= 8 {
            caps.max_msg_fds = None;
            if fits(&caps) {
                return Some(caps.to_json());
            }
        }
        None
    }
}

fn region_flags_size<D: DeviceBackend + ?Sized>(dev: &D, index: u32) -> Result<(u32, u64)> {
    check_region_index(&dev.device_info(), index)?;
    Ok(dev.region_flags_size(index)?)
}

/// Build the GET_REGION_INFO reply, honouring the client's `argsz`.
fn region_info_reply<D: DeviceBackend + ?Sized>(dev: &D, argsz: u32, index: u32) -> Result<Reply> {
    check_region_index(&dev.device_info(), index)?;
    let ri = dev.region_info(index)?;
    let mut flags = ri.flags & (region_flags::READ | region_flags::WRITE);
    let (offset, areas, fd): (u64, &[SparseArea], Option<BorrowedFd<'_>>) = match &ri.mmap {
        Some(m) => {
            flags |= region_flags::MMAP;
            (m.file_offset, &m.sparse_areas, Some(m.fd))
        }
        None => (0, &[], None),
    };
    for a in areas {
        let end = a
            .offset
            .checked_add(a.size)
            .ok_or_else(|| ProtocolError::invalid("device sparse area overflows"))?;
        if end > ri.size {
            return Err(ProtocolError::Backend(BackendError::Io(format!(
                "sparse area {:#x}+{:#x} outside region {index}",
                a.offset, a.size
            ))));
        }
    }
    let caps_len = if areas.is_empty() {
        0
    } else {
        SparseMmapHeader::cap_len(areas.len())
            .ok_or_else(|| ProtocolError::invalid("too many sparse areas"))?
    };
    let full = RegionInfoWire::SIZE + caps_len;
    let full32 =
        u32::try_from(full).map_err(|_| ProtocolError::invalid("region info too large"))?;
    if caps_len > 0 {
        flags |= region_flags::CAPS;
    }
    let info = RegionInfoWire {
        argsz: full32,
        flags,
        index,
        cap_offset: if caps_len > 0 {
            RegionInfoWire::SIZE as u32
        } else {
            0
        },
        size: ri.size,
        offset,
    };
    let mut w = Writer::with_capacity(full);
    w.put(&info);
    if full > argsz as usize {
        // Too small: the fixed part only, argsz = what is needed, no fd (QEMU re-asks).
        return Ok(Reply::bytes(w.into_vec()));
    }
    if !areas.is_empty() {
        SparseMmapHeader::encode_cap(areas, 0, &mut w);
    }
    let fd = fd
        .map(|f| f.try_clone_to_owned())
        .transpose()
        .map_err(|e| BackendError::NoMemory(format!("cannot duplicate the region fd: {e}")))?;
    Ok(Reply {
        payload: w.into_vec(),
        fd,
    })
}

fn set_irqs<D: DeviceBackend + ?Sized>(dev: &mut D, r: IrqSetRequest) -> Result<()> {
    let w = r.wire;
    check_irq_index(&dev.device_info(), w.index)?;
    let info = dev.irq_info(w.index)?;
    check_irq_range(w.index, &info, w.start, w.count)?;
    let data = match r.data {
        IrqSetData::None => IrqData::None,
        IrqSetData::Bool(b) => IrqData::Bool(b),
        IrqSetData::Eventfds(fds) if fds.is_empty() => {
            // count <= the device's own vector count, checked above.
            IrqData::Eventfds((0..w.count).map(|_| None).collect())
        }
        IrqSetData::Eventfds(fds) => IrqData::Eventfds(fds.into_iter().map(Some).collect()),
    };
    dev.set_irqs(IrqSet {
        index: w.index,
        start: w.start,
        count: w.count,
        action: r.action,
        data,
    })?;
    Ok(())
}

fn write_multi<D: DeviceBackend + ?Sized>(dev: &mut D, entries: &[WriteMultiEntry]) -> Result<()> {
    // Validate every entry before performing any write.
    let info = dev.device_info();
    for e in entries {
        check_region_index(&info, e.region)?;
        let (flags, size) = dev.region_flags_size(e.region)?;
        check_region_range(e.region, flags, size, e.offset, u64::from(e.count), true)?;
    }
    for e in entries {
        let data = e
            .data
            .get(..e.count as usize)
            .ok_or_else(|| ProtocolError::invalid("write-multi count"))?;
        dev.region_write(e.region, e.offset, data)?;
    }
    Ok(())
}

// Our largest max_msg_fds must fit in one SCM_RIGHTS message.
const _: () = assert!(SCM_MAX_FD >= 16);

/// A command number as its name in log lines (`RegionRead`), or the number if unknown.
struct CommandName(u16);

impl std::fmt::Display for CommandName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match Command::try_from(self.0) {
            Ok(c) => write!(f, "{c:?}"),
            Err(_) => write!(f, "command {}", self.0),
        }
    }
}
