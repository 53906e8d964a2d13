//! Server-initiated DMA: DMA_READ / DMA_WRITE requests to the client and the wait for their
//! replies, queueing client requests that arrive meanwhile.

use std::os::fd::AsFd;
use std::time::Instant;

use super::Session;
use crate::error::{ProtocolError, Result};
use crate::transport::{recv_message, send_message, RawMessage};
use crate::wire::{flags, Command, DmaLayout, DmaRwHeader, Header, Writer};

/// Largest data payload of one server-initiated DMA_READ/DMA_WRITE message.
///
/// QEMU 11.1.3 loses the connection when a DMA_READ reply does not fit in its socket's send
/// buffer at once (measured: 192 KiB replies work, 224 KiB ones hang until our body timeout and
/// the session dies; the default AF_UNIX buffer is ~208 KiB). 64 KiB stays far below that on any
/// default configuration and costs little, since message DMA is the slow path anyway.
pub const DMA_MESSAGE_MAX_DATA: u32 = 64 * 1024;

impl Session {
    pub(super) fn next_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// Largest data payload of one DMA_READ/DMA_WRITE message with this client: the negotiated
    /// `max_data_xfer_size`, capped at [`DMA_MESSAGE_MAX_DATA`]. A caller that must be able to
    /// stop between messages issues pieces of at most this size, one call each.
    pub fn dma_message_size(&self) -> Result<usize> {
        self.dma_chunk()
    }

    pub(super) fn dma_chunk(&self) -> Result<usize> {
        if self.closed {
            return Err(ProtocolError::Disconnected);
        }
        let peer = self
            .peer
            .ok_or_else(|| ProtocolError::invalid("DMA before VERSION negotiation"))?;
        let chunk = peer
            .max_data_xfer_size
            .min(self.config.max_data_xfer_size)
            .clamp(1, DMA_MESSAGE_MAX_DATA);
        Ok(chunk as usize)
    }

    /// Read `buf.len()` bytes of client memory at `addr` with DMA_READ messages (split at the
    /// negotiated transfer size). Client requests arriving meanwhile are queued.
    pub fn dma_read(&mut self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let chunk = self.dma_chunk()?;
        addr.checked_add(buf.len() as u64)
            .ok_or_else(|| ProtocolError::invalid("DMA range overflows"))?;
        let mut a = addr;
        for part in buf.chunks_mut(chunk) {
            self.dma_read_one(a, part)?;
            a += part.len() as u64;
        }
        Ok(())
    }

    /// Write `data` to client memory at `addr` with DMA_WRITE messages (split at the
    /// negotiated transfer size). Client requests arriving meanwhile are queued.
    pub fn dma_write(&mut self, addr: u64, data: &[u8]) -> Result<()> {
        let chunk = self.dma_chunk()?;
        addr.checked_add(data.len() as u64)
            .ok_or_else(|| ProtocolError::invalid("DMA range overflows"))?;
        let mut a = addr;
        for part in data.chunks(chunk) {
            self.dma_write_one(a, part)?;
            a += part.len() as u64;
        }
        Ok(())
    }

    pub(super) fn send_dma_request(
        &mut self,
        cmd: Command,
        h: DmaRwHeader,
        data: &[u8],
    ) -> Result<u16> {
        let id = self.next_id();
        let mut body = Writer::with_capacity(16 + data.len() + 4);
        self.dma_layout.encode(h, data, &mut body)?;
        let body = body.into_vec();
        let size = u32::try_from(Header::SIZE + body.len())
            .map_err(|_| ProtocolError::invalid("DMA message too large"))?;
        let mut w = Writer::with_capacity(size as usize);
        w.put(&Header {
            msg_id: id,
            command: cmd as u16,
            size,
            flags: flags::TYPE_COMMAND,
            error: 0,
        });
        w.bytes(&body);
        self.fatal_guard(send_message(
            self.stream.as_fd(),
            &w.into_vec(),
            &[],
            self.config.body_timeout,
        ))?;
        self.stats.dma_messages += 1;
        Ok(id)
    }

    fn dma_read_one(&mut self, addr: u64, part: &mut [u8]) -> Result<()> {
        let want = DmaRwHeader {
            address: addr,
            count: part.len() as u64,
        };
        let id = self.send_dma_request(Command::DmaRead, want, &[])?;
        let reply = self.await_reply(id, Command::DmaRead)?;
        let (got, rest) = self.dma_layout.decode(&reply.body)?;
        if got != want {
            return Err(ProtocolError::invalid(format!(
                "DMA_READ reply for {:#x}+{:#x}, asked {:#x}+{:#x}",
                got.address, got.count, addr, want.count
            )));
        }
        let data = rest
            .get(..part.len())
            .ok_or_else(|| ProtocolError::invalid("DMA_READ reply shorter than its count"))?;
        if rest.len() > part.len() + self.dma_layout.trailer_len() {
            return Err(ProtocolError::invalid(
                "DMA_READ reply longer than its count",
            ));
        }
        part.copy_from_slice(data);
        self.stats.dma_bytes += part.len() as u64;
        Ok(())
    }

    fn dma_write_one(&mut self, addr: u64, part: &[u8]) -> Result<()> {
        let want = DmaRwHeader {
            address: addr,
            count: part.len() as u64,
        };
        let id = self.send_dma_request(Command::DmaWrite, want, part)?;
        let reply = self.await_reply(id, Command::DmaWrite)?;
        // QEMU answers header-only; a spec client echoes address and count (count may be
        // 4 or 8 bytes, see the spec's table). Accept either, but check what is present.
        if !reply.body.is_empty() {
            let (got, _) = DmaLayout::Spec
                .decode(&reply.body)
                .or_else(|_| DmaLayout::Qemu.decode(&reply.body))?;
            if got.address != addr || got.count != want.count {
                return Err(ProtocolError::invalid(
                    "DMA_WRITE reply does not echo the request",
                ));
            }
        }
        self.stats.dma_bytes += part.len() as u64;
        Ok(())
    }

    pub(super) fn fatal_guard<T>(&mut self, r: Result<T>) -> Result<T> {
        if matches!(r, Err(ref e) if e.is_fatal()) {
            self.closed = true;
        }
        r
    }

    /// Read messages until the reply to (`id`, `cmd`) arrives; queue client requests.
    pub(super) fn await_reply(&mut self, id: u16, cmd: Command) -> Result<RawMessage> {
        let deadline = Instant::now() + self.dma_timeout;
        loop {
            let limits = self.recv_limits();
            let m = match recv_message(self.stream.as_fd(), &limits, Some(deadline)) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.closed = true;
                    return Err(ProtocolError::Disconnected);
                }
                Err(e @ ProtocolError::WaitTimeout(_)) => {
                    // Nothing consumed: a late reply will be dropped as stray.
                    return Err(e);
                }
                Err(e) => {
                    return self.fatal_guard(Err(e));
                }
            };
            if m.header.is_reply() {
                if m.header.msg_id == id && m.header.command == cmd as u16 {
                    if !m.fds.is_empty() {
                        return Err(ProtocolError::invalid("fds on a DMA reply"));
                    }
                    if m.header.is_error() {
                        return Err(ProtocolError::Remote {
                            errno: i32::try_from(m.header.error).unwrap_or(libc::EIO),
                        });
                    }
                    return Ok(m);
                }
                self.stats.stray_replies += 1;
                continue;
            }
            let c = &self.config;
            if self.pending.len() >= c.max_pending_msgs
                || self.pending_bytes.saturating_add(m.body.len()) > c.max_pending_bytes
                || self.pending_fds.saturating_add(m.fds.len()) > c.max_pending_fds
            {
                // The client floods us while it owes a reply: nothing it sends now can be
                // answered, and holding all of it has no bound.
                self.closed = true;
                return Err(ProtocolError::Violation(format!(
                    "more than {} requests, {} bytes or {} fds queued during a DMA wait",
                    c.max_pending_msgs, c.max_pending_bytes, c.max_pending_fds
                )));
            }
            self.stats.queued_requests += 1;
            self.pending_bytes += m.body.len();
            self.pending_fds += m.fds.len();
            self.pending.push_back(m);
        }
    }
}
