//! Serving the server's DMA_READ / DMA_WRITE requests on the client side, the way QEMU's
//! `vfio_user_pci_process_req` does (fds refused with EINVAL, other commands ENOSYS, counts above
//! our `max_data_xfer_size` E2BIG).

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use super::Client;
use crate::error::{ProtocolError, Result};
use crate::transport::{recv_message, send_message, RawMessage};
use crate::wire::{flags, Command, DmaLayout, Header, Writer};

/// Serves DMA_READ / DMA_WRITE requests from the server (client memory access).
pub trait DmaHandler {
    /// Fill `buf` from client memory at `addr`; `Err(errno)` on failure.
    fn dma_read(&mut self, addr: u64, buf: &mut [u8]) -> std::result::Result<(), i32>;
    /// Store `data` into client memory at `addr`; `Err(errno)` on failure.
    fn dma_write(&mut self, addr: u64, data: &[u8]) -> std::result::Result<(), i32>;
}

impl Client {
    /// Wait up to `timeout` for one inbound server request and serve it. Returns false on
    /// timeout. A reply arriving here matches nothing and is counted as stray.
    pub fn serve_one(&mut self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        match recv_message(self.stream.as_fd(), &self.recv_limits(), Some(deadline)) {
            Ok(Some(m)) => {
                if m.header.is_reply() {
                    self.stats.stray_replies += 1;
                } else {
                    self.serve_inbound(m)?;
                }
                Ok(true)
            }
            Ok(None) => Err(ProtocolError::Disconnected),
            Err(ProtocolError::WaitTimeout(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(super) fn serve_inbound(&mut self, m: RawMessage) -> Result<()> {
        let h = m.header;
        let result = self.inbound_result(&m);
        if h.no_reply() {
            if result.is_err() {
                self.stats.inbound_errors += 1;
            }
            return Ok(());
        }
        let mut w = Writer::default();
        match result {
            Ok(payload) => {
                w.put(&Header {
                    msg_id: h.msg_id,
                    command: h.command,
                    size: u32::try_from(Header::SIZE + payload.len()).unwrap_or(u32::MAX),
                    flags: flags::TYPE_REPLY,
                    error: 0,
                });
                w.bytes(&payload);
            }
            Err(errno) => {
                self.stats.inbound_errors += 1;
                w.put(&Header {
                    msg_id: h.msg_id,
                    command: h.command,
                    size: Header::SIZE as u32,
                    flags: flags::TYPE_REPLY | flags::ERROR,
                    error: u32::try_from(errno).unwrap_or(libc::EINVAL as u32),
                });
            }
        }
        send_message(
            self.stream.as_fd(),
            &w.into_vec(),
            &[],
            self.config.reply_timeout,
        )
    }

    /// Serve one inbound request the way QEMU's `vfio_user_pci_process_req` does.
    fn inbound_result(&mut self, m: &RawMessage) -> std::result::Result<Vec<u8>, i32> {
        if !m.fds.is_empty() {
            return Err(libc::EINVAL);
        }
        let layout = self.config.dma_layout;
        let is_read = match Command::try_from(m.header.command) {
            Ok(Command::DmaRead) => true,
            Ok(Command::DmaWrite) => false,
            _ => return Err(libc::ENOSYS),
        };
        // Both layouts have a 16-byte fixed part (QEMU: 12 + 4 bytes of padding).
        if m.body.len() < 16 {
            return Err(libc::EINVAL);
        }
        let (h, rest) = layout.decode(&m.body).map_err(|_| libc::EINVAL)?;
        let max = u64::from(self.config.max_data_xfer_size);
        if is_read {
            if h.count > max {
                return Err(libc::E2BIG);
            }
            if layout == DmaLayout::Spec && m.body.len() != 16 {
                return Err(libc::EINVAL);
            }
            let handler = self.dma.as_mut().ok_or(libc::ENODEV)?;
            let mut buf = vec![0u8; h.count as usize];
            handler.dma_read(h.address, &mut buf)?;
            self.stats.dma_reads += 1;
            let mut w = Writer::with_capacity(16 + buf.len() + 4);
            layout.encode(h, &buf, &mut w).map_err(|_| libc::EINVAL)?;
            Ok(w.into_vec())
        } else {
            let avail = (m.body.len() - 16) as u64;
            let ok = match layout {
                DmaLayout::Qemu => h.count <= avail,
                DmaLayout::Spec => h.count == avail,
            };
            if !ok {
                return Err(libc::E2BIG);
            }
            let data = rest.get(..h.count as usize).ok_or(libc::EINVAL)?;
            let handler = self.dma.as_mut().ok_or(libc::ENODEV)?;
            handler.dma_write(h.address, data)?;
            self.stats.dma_writes += 1;
            let mut w = Writer::default();
            layout.encode_write_reply(h, &mut w);
            Ok(w.into_vec())
        }
    }
}
