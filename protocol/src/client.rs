//! The client end: what QEMU's `vfio-user-pci` does, as a library.
//!
//! Used by device tests and by `vugpu probe`. Every request waits for its reply (unless sent
//! posted); server-to-client DMA_READ / DMA_WRITE requests that arrive meanwhile are served
//! through a user-supplied [`DmaHandler`] (answered `ENODEV` without one), so a server may
//! issue DMA while the client waits. [`Client::send_raw`] / [`Client::recv_raw`] give
//! conformance tests byte-level access.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use zerocopy::{FromBytes, IntoBytes};

use crate::backend::{DmaProt, DmaUnmap, IrqAction, SparseArea};
use crate::error::{ProtocolError, Result};
use crate::transport::{recv_message, send_message, RawMessage, RecvLimits};
use crate::wire::{
    dma_map_flags, dma_unmap_flags, flags, irq_set_flags, read_prefix, CapHeader, Capabilities,
    Command, DeviceInfoWire, DmaLayout, DmaMapWire, DmaUnmapWire, Header, IrqInfoWire, IrqSetWire,
    RegionAccessWire, RegionInfoWire, RegionIoFdsWire, SparseMmapHeader, VersionWire,
    WriteMultiEntry, Writer, CAP_ID_SPARSE_MMAP, DEFAULT_MAX_DATA_XFER_SIZE, DEFAULT_MAX_MSG_FDS,
};

mod inbound;

pub use inbound::DmaHandler;

/// Largest region-info argsz the client will ask for on a re-query.
const MAX_REGION_INFO_ARGSZ: u32 = 1 << 20;

/// What the client advertises and how it behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Advertised `max_data_xfer_size` (bounds DMA_READ/WRITE from the server).
    pub max_data_xfer_size: u32,
    /// Advertised `max_msg_fds` (also our receive limit).
    pub max_msg_fds: u32,
    /// Advertised `pgsizes`.
    pub pgsizes: u64,
    /// Advertised `max_dma_maps`.
    pub max_dma_maps: u32,
    /// Advertise `write_multiple` (QEMU does).
    pub write_multiple: bool,
    /// Advertise a `migration` object like QEMU (`pgsize` 4096, 256 MiB bitmap).
    pub migration: bool,
    /// How long to wait for each reply.
    pub reply_timeout: Duration,
    /// Layout of DMA_READ/DMA_WRITE requests we serve.
    pub dma_layout: DmaLayout,
}

impl Default for ClientConfig {
    /// The values QEMU 10.2/11.1 sends.
    fn default() -> Self {
        ClientConfig {
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER_SIZE,
            max_msg_fds: 16,
            pgsizes: 4096,
            max_dma_maps: 65535,
            write_multiple: true,
            migration: true,
            reply_timeout: Duration::from_secs(5),
            dma_layout: DmaLayout::default(),
        }
    }
}

/// The server's answer to VERSION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCaps {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// Effective `max_msg_fds` (spec default 1 when absent).
    pub max_msg_fds: u32,
    /// Effective `max_data_xfer_size` (spec default 1 MiB when absent).
    pub max_data_xfer_size: u32,
    /// Effective `pgsizes`.
    pub pgsizes: u64,
    /// Effective `max_dma_maps`.
    pub max_dma_maps: u32,
    /// Server accepts REGION_WRITE_MULTI.
    pub write_multiple: bool,
    /// Exactly what was sent (`None` = key absent).
    pub raw: Capabilities,
    /// Total size of the VERSION reply message.
    pub reply_size: usize,
}

/// The data part of a SET_IRQS request from the client side.
#[derive(Debug, Clone, Copy)]
pub enum IrqSetArg<'a> {
    /// `DATA_NONE`.
    None,
    /// `DATA_BOOL`, one entry per sub-index.
    Bool(&'a [bool]),
    /// `DATA_EVENTFD`: one fd per sub-index, or an empty slice to de-assign.
    Eventfds(&'a [BorrowedFd<'a>]),
}

/// Answer to DEVICE_GET_REGION_INFO, after any argsz re-query.
#[derive(Debug)]
pub struct RegionDescription {
    /// The fixed part of the final reply.
    pub info: RegionInfoWire,
    /// The mmap fd, if the server sent one.
    pub fd: Option<OwnedFd>,
    /// Sparse-mmap areas (empty when no sparse capability).
    pub sparse_areas: Vec<SparseArea>,
    /// Number of GET_REGION_INFO messages it took (2 when the first argsz was too small).
    pub queries: u32,
}

/// Answer to DEVICE_GET_REGION_IO_FDS.
#[derive(Debug)]
pub struct RegionIoFds {
    /// The fixed part.
    pub info: RegionIoFdsWire,
    /// Raw 40-byte sub-region descriptors.
    pub sub_regions: Vec<[u8; RegionIoFdsWire::SUB_REGION_SIZE]>,
    /// Fds that came with the reply.
    pub fds: Vec<OwnedFd>,
}

/// Client counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// DMA_READ requests served.
    pub dma_reads: u64,
    /// DMA_WRITE requests served.
    pub dma_writes: u64,
    /// Inbound requests answered with an error.
    pub inbound_errors: u64,
    /// Replies that matched nothing outstanding.
    pub stray_replies: u64,
}

/// A vfio-user client connection.
pub struct Client {
    stream: UnixStream,
    config: ClientConfig,
    next_id: u16,
    server: Option<ServerCaps>,
    dma: Option<Box<dyn DmaHandler + Send>>,
    stats: ClientStats,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("stream", &self.stream)
            .field("config", &self.config)
            .field("server", &self.server)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl AsFd for Client {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl AsRawFd for Client {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

impl Client {
    /// Connect to a server socket (no negotiation yet).
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        Ok(Client::from_stream(UnixStream::connect(path)?))
    }

    /// Use an already connected stream with the default (QEMU-like) configuration.
    pub fn from_stream(stream: UnixStream) -> Client {
        Client::with_config(stream, ClientConfig::default())
    }

    /// Use an already connected stream.
    pub fn with_config(stream: UnixStream, config: ClientConfig) -> Client {
        Client {
            stream,
            config,
            next_id: 0,
            server: None,
            dma: None,
            stats: ClientStats::default(),
        }
    }

    /// Install the handler that serves the server's DMA_READ / DMA_WRITE requests.
    pub fn set_dma_handler(&mut self, handler: Box<dyn DmaHandler + Send>) {
        self.dma = Some(handler);
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// The server's capabilities, once negotiated.
    pub fn server_caps(&self) -> Option<&ServerCaps> {
        self.server.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The message id the next request will use.
    pub fn next_msg_id(&self) -> u16 {
        self.next_id
    }

    fn alloc_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    fn recv_limits(&self) -> RecvLimits {
        let xfer = self.config.max_data_xfer_size.max(
            self.server
                .as_ref()
                .map_or(DEFAULT_MAX_DATA_XFER_SIZE, |s| s.max_data_xfer_size),
        );
        RecvLimits {
            max_size: xfer
                .saturating_add(16 + 16)
                .saturating_add(MAX_REGION_INFO_ARGSZ),
            max_fds: self.config.max_msg_fds as usize,
            body_timeout: self.config.reply_timeout,
        }
    }

    /// The capabilities JSON this client sends.
    pub fn capabilities_json(&self) -> String {
        let c = &self.config;
        Capabilities {
            max_msg_fds: Some(c.max_msg_fds),
            max_data_xfer_size: Some(c.max_data_xfer_size),
            pgsizes: Some(c.pgsizes),
            max_dma_maps: Some(c.max_dma_maps),
            migration_pgsize: c.migration.then_some(4096),
            migration_max_bitmap_size: c.migration.then_some(256 << 20),
            write_multiple: c.write_multiple.then_some(true),
            twin_socket: false,
        }
        .to_json()
    }

    /// VERSION with this client's capabilities (major 0, minor 0, like QEMU).
    pub fn negotiate(&mut self) -> Result<ServerCaps> {
        let json = self.capabilities_json();
        self.negotiate_with(0, 0, Some(&json))
    }

    /// VERSION with an explicit version and JSON text (conformance tests).
    pub fn negotiate_with(
        &mut self,
        major: u16,
        minor: u16,
        json: Option<&str>,
    ) -> Result<ServerCaps> {
        let mut w = Writer::default();
        VersionWire { major, minor }.encode(json, &mut w);
        let reply = self.request(Command::Version, &w.into_vec(), &[])?;
        let (v, j) = VersionWire::decode(&reply.body)?;
        let raw = match j {
            Some(j) => Capabilities::parse_json(j)?,
            None => Capabilities::default(),
        };
        let caps = ServerCaps {
            major: v.major,
            minor: v.minor,
            max_msg_fds: raw.max_msg_fds.unwrap_or(DEFAULT_MAX_MSG_FDS),
            max_data_xfer_size: raw.max_data_xfer_size.unwrap_or(DEFAULT_MAX_DATA_XFER_SIZE),
            pgsizes: raw.pgsizes.unwrap_or(4096),
            max_dma_maps: raw.max_dma_maps.unwrap_or(65535),
            write_multiple: raw.write_multiple.unwrap_or(false),
            raw,
            reply_size: Header::SIZE + reply.body.len(),
        };
        if caps.major != major || caps.minor > minor {
            return Err(ProtocolError::Violation(format!(
                "server answered version {}.{} to {major}.{minor}",
                caps.major, caps.minor
            )));
        }
        self.server = Some(caps.clone());
        Ok(caps)
    }

    fn encode(&mut self, cmd: Command, payload: &[u8], extra_flags: u32) -> Result<(u16, Vec<u8>)> {
        let id = self.alloc_id();
        let size = u32::try_from(Header::SIZE + payload.len())
            .map_err(|_| ProtocolError::invalid("message too large"))?;
        let mut w = Writer::with_capacity(size as usize);
        w.put(&Header {
            msg_id: id,
            command: cmd as u16,
            size,
            flags: flags::TYPE_COMMAND | extra_flags,
            error: 0,
        });
        w.bytes(payload);
        Ok((id, w.into_vec()))
    }

    /// Send a command and wait for its reply (serving inbound DMA meanwhile). An error reply
    /// becomes [`ProtocolError::Remote`].
    pub fn request(
        &mut self,
        cmd: Command,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<RawMessage> {
        let (id, bytes) = self.encode(cmd, payload, 0)?;
        send_message(self.stream.as_fd(), &bytes, fds, self.config.reply_timeout)?;
        let reply = self.wait_reply(id)?;
        if reply.header.command != cmd as u16 {
            return Err(ProtocolError::Violation(format!(
                "reply to {cmd:?} carries command {}",
                reply.header.command
            )));
        }
        if reply.header.is_error() {
            return Err(ProtocolError::Remote {
                errno: i32::try_from(reply.header.error).unwrap_or(libc::EIO),
            });
        }
        Ok(reply)
    }

    /// Send a command with NO_REPLY set and do not wait.
    pub fn post(&mut self, cmd: Command, payload: &[u8], fds: &[BorrowedFd<'_>]) -> Result<u16> {
        let (id, bytes) = self.encode(cmd, payload, flags::NO_REPLY)?;
        send_message(self.stream.as_fd(), &bytes, fds, self.config.reply_timeout)?;
        Ok(id)
    }

    fn wait_reply(&mut self, id: u16) -> Result<RawMessage> {
        let deadline = Instant::now() + self.config.reply_timeout;
        loop {
            let m = recv_message(self.stream.as_fd(), &self.recv_limits(), Some(deadline))?
                .ok_or(ProtocolError::Disconnected)?;
            if m.header.is_reply() {
                if m.header.msg_id == id {
                    return Ok(m);
                }
                self.stats.stray_replies += 1;
                continue;
            }
            self.serve_inbound(m)?;
        }
    }

    /// Send raw bytes with fds (conformance tests). No framing is added.
    pub fn send_raw(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
        send_message(self.stream.as_fd(), bytes, fds, self.config.reply_timeout)
    }

    /// Receive the next message whatever it is, waiting up to the reply timeout. `Ok(None)`
    /// when the server closed the connection at a message boundary.
    pub fn recv_raw(&mut self) -> Result<Option<RawMessage>> {
        self.recv_raw_timeout(self.config.reply_timeout)
    }

    /// [`recv_raw`](Self::recv_raw) with an explicit timeout.
    pub fn recv_raw_timeout(&mut self, timeout: Duration) -> Result<Option<RawMessage>> {
        let deadline = Instant::now() + timeout;
        recv_message(self.stream.as_fd(), &self.recv_limits(), Some(deadline))
    }

    /// DMA_MAP a window, optionally backed by `fd` at `file_offset`.
    pub fn dma_map(
        &mut self,
        iova: u64,
        size: u64,
        file_offset: u64,
        prot: DmaProt,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<()> {
        let mut flags = 0;
        if prot.read {
            flags |= dma_map_flags::READ;
        }
        if prot.write {
            flags |= dma_map_flags::WRITE;
        }
        let msg = DmaMapWire {
            argsz: DmaMapWire::SIZE as u32,
            flags,
            offset: file_offset,
            address: iova,
            size,
        };
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        self.request(Command::DmaMap, msg.as_bytes(), &fds)?;
        Ok(())
    }

    /// DMA_UNMAP a window or everything; returns the echoed entry.
    pub fn dma_unmap(&mut self, unmap: DmaUnmap) -> Result<DmaUnmapWire> {
        let (flags, address, size) = match unmap {
            DmaUnmap::All => (dma_unmap_flags::ALL, 0, 0),
            DmaUnmap::Range { iova, size } => (0, iova, size),
        };
        let sent = DmaUnmapWire {
            argsz: DmaUnmapWire::SIZE as u32,
            flags,
            address,
            size,
        };
        let reply = self.request(Command::DmaUnmap, sent.as_bytes(), &[])?;
        let echo = reply_fixed::<DmaUnmapWire>(&reply.body, "short DMA_UNMAP reply")?;
        Ok(echo)
    }

    /// DEVICE_GET_INFO.
    pub fn device_info(&mut self) -> Result<DeviceInfoWire> {
        let msg = DeviceInfoWire {
            argsz: DeviceInfoWire::SIZE as u32,
            ..DeviceInfoWire::default()
        };
        let reply = self.request(Command::DeviceGetInfo, msg.as_bytes(), &[])?;
        reply_fixed::<DeviceInfoWire>(&reply.body, "short DEVICE_GET_INFO reply")
    }

    fn region_info_once(
        &mut self,
        index: u32,
        argsz: u32,
    ) -> Result<(RegionInfoWire, Vec<u8>, Vec<OwnedFd>)> {
        let msg = RegionInfoWire {
            argsz,
            index,
            ..RegionInfoWire::default()
        };
        let reply = self.request(Command::DeviceGetRegionInfo, msg.as_bytes(), &[])?;
        if reply.body.len() > argsz as usize {
            return Err(ProtocolError::Violation(format!(
                "GET_REGION_INFO reply of {} bytes for argsz {argsz}",
                reply.body.len()
            )));
        }
        if reply.fds.len() > 1 {
            return Err(ProtocolError::Violation(
                "more than one fd in region info".into(),
            ));
        }
        let info = reply_fixed::<RegionInfoWire>(&reply.body, "short GET_REGION_INFO reply")?;
        Ok((info, reply.body, reply.fds))
    }

    /// DEVICE_GET_REGION_INFO, re-asking with a larger argsz when the server needs it (as
    /// QEMU does), and parsing the sparse-mmap capability.
    pub fn region_info(&mut self, index: u32) -> Result<RegionDescription> {
        let mut argsz = RegionInfoWire::SIZE as u32;
        let mut queries = 0;
        loop {
            queries += 1;
            let (info, body, fds) = self.region_info_once(index, argsz)?;
            if info.argsz > argsz {
                drop(fds);
                if queries > 1 || info.argsz > MAX_REGION_INFO_ARGSZ {
                    return Err(ProtocolError::Violation(format!(
                        "region info keeps growing: argsz {}",
                        info.argsz
                    )));
                }
                argsz = info.argsz;
                continue;
            }
            let sparse_areas = parse_region_caps(&info, &body)?;
            return Ok(RegionDescription {
                info,
                fd: fds.into_iter().next(),
                sparse_areas,
                queries,
            });
        }
    }

    /// DEVICE_GET_REGION_IO_FDS with a buffer for `max_sub_regions` descriptors.
    pub fn region_io_fds(&mut self, index: u32, max_sub_regions: u32) -> Result<RegionIoFds> {
        let argsz = (RegionIoFdsWire::SIZE as u32).saturating_add(
            max_sub_regions.saturating_mul(RegionIoFdsWire::SUB_REGION_SIZE as u32),
        );
        let msg = RegionIoFdsWire {
            argsz,
            flags: 0,
            index,
            count: 0,
        };
        let reply = self.request(Command::DeviceGetRegionIoFds, msg.as_bytes(), &[])?;
        let (info, rest) = read_prefix::<RegionIoFdsWire>(&reply.body)
            .ok_or_else(|| ProtocolError::Violation("short GET_REGION_IO_FDS reply".into()))?;
        let subs = rest
            .chunks_exact(RegionIoFdsWire::SUB_REGION_SIZE)
            .take(info.count as usize)
            .filter_map(|b| b.try_into().ok())
            .collect();
        Ok(RegionIoFds {
            info,
            sub_regions: subs,
            fds: reply.fds,
        })
    }

    /// DEVICE_GET_IRQ_INFO.
    pub fn irq_info(&mut self, index: u32) -> Result<IrqInfoWire> {
        let msg = IrqInfoWire {
            argsz: IrqInfoWire::SIZE as u32,
            flags: 0,
            index,
            count: 0,
        };
        let reply = self.request(Command::DeviceGetIrqInfo, msg.as_bytes(), &[])?;
        reply_fixed::<IrqInfoWire>(&reply.body, "short DEVICE_GET_IRQ_INFO reply")
    }

    /// DEVICE_SET_IRQS in any form. The disable form is `(index, 0, 0, Trigger, None)`.
    pub fn set_irqs(
        &mut self,
        index: u32,
        start: u32,
        count: u32,
        action: IrqAction,
        data: IrqSetArg<'_>,
    ) -> Result<()> {
        let action_bit = match action {
            IrqAction::Mask => irq_set_flags::ACTION_MASK,
            IrqAction::Unmask => irq_set_flags::ACTION_UNMASK,
            IrqAction::Trigger => irq_set_flags::ACTION_TRIGGER,
        };
        let (data_bit, tail, fds): (u32, Vec<u8>, &[BorrowedFd<'_>]) = match data {
            IrqSetArg::None => (irq_set_flags::DATA_NONE, Vec::new(), &[]),
            IrqSetArg::Bool(b) => (
                irq_set_flags::DATA_BOOL,
                b.iter().map(|x| u8::from(*x)).collect(),
                &[],
            ),
            IrqSetArg::Eventfds(f) => (irq_set_flags::DATA_EVENTFD, Vec::new(), f),
        };
        let argsz = u32::try_from(IrqSetWire::SIZE + tail.len())
            .map_err(|_| ProtocolError::invalid("too many bools"))?;
        let mut w = Writer::with_capacity(argsz as usize);
        w.put(&IrqSetWire {
            argsz,
            flags: data_bit | action_bit,
            index,
            start,
            count,
        });
        w.bytes(&tail);
        self.request(Command::DeviceSetIrqs, &w.into_vec(), fds)?;
        Ok(())
    }

    /// REGION_READ of `buf.len()` bytes.
    pub fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let count =
            u32::try_from(buf.len()).map_err(|_| ProtocolError::invalid("read too large"))?;
        let msg = RegionAccessWire {
            offset,
            region: index,
            count,
        };
        let reply = self.request(Command::RegionRead, msg.as_bytes(), &[])?;
        let (a, data) = read_prefix::<RegionAccessWire>(&reply.body)
            .ok_or_else(|| ProtocolError::Violation("short REGION_READ reply".into()))?;
        if a.count != count || data.len() != buf.len() {
            return Err(ProtocolError::Violation(format!(
                "REGION_READ reply with {} bytes for {count}",
                data.len()
            )));
        }
        buf.copy_from_slice(data);
        Ok(())
    }

    fn region_write_msg(index: u32, offset: u64, data: &[u8]) -> Result<Vec<u8>> {
        let count =
            u32::try_from(data.len()).map_err(|_| ProtocolError::invalid("write too large"))?;
        let mut w = Writer::with_capacity(RegionAccessWire::SIZE + data.len());
        w.put(&RegionAccessWire {
            offset,
            region: index,
            count,
        });
        w.bytes(data);
        Ok(w.into_vec())
    }

    /// Non-posted REGION_WRITE.
    pub fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        let payload = Self::region_write_msg(index, offset, data)?;
        self.request(Command::RegionWrite, &payload, &[])?;
        Ok(())
    }

    /// Posted REGION_WRITE (NO_REPLY): returns once sent.
    pub fn region_write_posted(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        let payload = Self::region_write_msg(index, offset, data)?;
        self.post(Command::RegionWrite, &payload, &[])?;
        Ok(())
    }

    /// REGION_WRITE_MULTI; `posted` sets NO_REPLY like QEMU does.
    pub fn region_write_multi(&mut self, entries: &[WriteMultiEntry], posted: bool) -> Result<()> {
        let mut w = Writer::with_capacity(8 + entries.len() * WriteMultiEntry::SIZE);
        w.u64(entries.len() as u64).put(entries);
        let payload = w.into_vec();
        if posted {
            self.post(Command::RegionWriteMulti, &payload, &[])?;
            return Ok(());
        }
        let reply = self.request(Command::RegionWriteMulti, &payload, &[])?;
        let n = read_prefix::<u64>(&reply.body).map(|(n, _)| n);
        if n != Some(entries.len() as u64) {
            return Err(ProtocolError::Violation(format!(
                "REGION_WRITE_MULTI reply count {n:?}"
            )));
        }
        Ok(())
    }

    /// DEVICE_RESET.
    pub fn reset(&mut self) -> Result<()> {
        self.request(Command::DeviceReset, &[], &[])?;
        Ok(())
    }

    /// Close the write side (the server sees EOF at a message boundary).
    pub fn shutdown(&self) -> Result<()> {
        self.stream.shutdown(std::net::Shutdown::Both)?;
        Ok(())
    }
}

/// The fixed structure at the start of a reply body.
fn reply_fixed<T: FromBytes>(body: &[u8], what: &str) -> Result<T> {
    read_prefix(body)
        .map(|(t, _)| t)
        .ok_or_else(|| ProtocolError::Violation(what.into()))
}

/// Walk the capability chain of a region-info reply (`body` starts with the fixed part) and
/// collect the sparse-mmap areas. Offsets must advance and stay inside `body`.
pub fn parse_region_caps(info: &RegionInfoWire, body: &[u8]) -> Result<Vec<SparseArea>> {
    let mut areas = Vec::new();
    if info.flags & crate::backend::region_flags::CAPS == 0 {
        return Ok(areas);
    }
    let mut next = info.cap_offset as usize;
    let mut prev = 0usize;
    let bad = |m: &str| ProtocolError::Violation(format!("region capability chain: {m}"));
    while next != 0 {
        if next < RegionInfoWire::SIZE || next <= prev {
            return Err(bad("offset does not advance past the info struct"));
        }
        let cap = body
            .get(next..)
            .ok_or_else(|| bad("offset outside the reply"))?;
        let (h, rest) = read_prefix::<CapHeader>(cap).ok_or_else(|| bad("truncated header"))?;
        if h.id == CAP_ID_SPARSE_MMAP {
            if h.version != 1 {
                return Err(bad("sparse mmap version"));
            }
            areas.extend(SparseMmapHeader::decode_areas(rest).ok_or_else(|| bad("areas"))?);
        }
        prev = next;
        next = h.next as usize;
    }
    Ok(areas)
}
