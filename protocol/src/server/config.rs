//! [`ServerConfig`]: the limits a server advertises and enforces.

use std::time::Duration;

use super::DEFAULT_MAX_DMA_MAPS;
use crate::error::{ProtocolError, Result};
use crate::validate::Limits;
use crate::wire::DEFAULT_MAX_DATA_XFER_SIZE;

/// Server limits and features. Advertised in the VERSION reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Largest data transfer accepted in one message (QEMU requires <= 64 MiB).
    pub max_data_xfer_size: u32,
    /// Most fds accepted on one message (QEMU requires <= 16).
    pub max_msg_fds: u32,
    /// Most DMA mappings accepted (QEMU: <= 65535).
    pub max_dma_maps: u32,
    /// DMA page size (a power of two, multiple of 4096 for QEMU).
    pub pgsize: u64,
    /// Advertise REGION_WRITE_MULTI (it is always accepted, see the crate docs).
    pub write_multiple: bool,
    /// Once a message's first byte has arrived, the rest must arrive within this time; also
    /// bounds every send.
    pub body_timeout: Duration,
    /// Most client requests queued during a [`Session::dma_read`](super::Session::dma_read) /
    /// `dma_write` wait (the `_serving` variants queue none); one more ends the session.
    pub max_pending_msgs: usize,
    /// Most payload bytes of those queued requests together; more ends the session.
    pub max_pending_bytes: usize,
    /// Most fds carried by those queued requests together; more ends the session.
    pub max_pending_fds: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER_SIZE,
            max_msg_fds: 16,
            max_dma_maps: DEFAULT_MAX_DMA_MAPS,
            pgsize: 4096,
            write_multiple: false,
            body_timeout: Duration::from_secs(5),
            max_pending_msgs: DEFAULT_MAX_PENDING_MSGS,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
            max_pending_fds: DEFAULT_MAX_PENDING_FDS,
        }
    }
}

/// Default of [`ServerConfig::max_pending_msgs`].
pub const DEFAULT_MAX_PENDING_MSGS: usize = 1024;
/// Default of [`ServerConfig::max_pending_bytes`] (16 MiB).
pub const DEFAULT_MAX_PENDING_BYTES: usize = 16 << 20;
/// Default of [`ServerConfig::max_pending_fds`].
pub const DEFAULT_MAX_PENDING_FDS: usize = 64;

impl ServerConfig {
    /// Check the values QEMU's client would reject (or that make no sense).
    pub fn validate(&self) -> Result<()> {
        if !(4096..=64 << 20).contains(&self.max_data_xfer_size) {
            return Err(ProtocolError::invalid(
                "max_data_xfer_size must be in 4 KiB..=64 MiB",
            ));
        }
        if self.max_msg_fds == 0 || self.max_msg_fds > 16 {
            return Err(ProtocolError::invalid("max_msg_fds must be in 1..=16"));
        }
        if self.max_dma_maps == 0 || self.max_dma_maps > DEFAULT_MAX_DMA_MAPS {
            return Err(ProtocolError::invalid("max_dma_maps must be in 1..=65535"));
        }
        if !self.pgsize.is_power_of_two() || self.pgsize < 4096 {
            return Err(ProtocolError::invalid(
                "pgsize must be a power of two >= 4096",
            ));
        }
        if self.body_timeout.is_zero() {
            return Err(ProtocolError::invalid("body_timeout must be > 0"));
        }
        Ok(())
    }

    /// A copy with every out-of-range value clamped into range.
    pub(super) fn sanitized(&self) -> ServerConfig {
        let pgsize = if self.pgsize.is_power_of_two() && self.pgsize >= 4096 {
            self.pgsize
        } else {
            4096
        };
        ServerConfig {
            max_data_xfer_size: self.max_data_xfer_size.clamp(4096, 64 << 20),
            max_msg_fds: self.max_msg_fds.clamp(1, 16),
            max_dma_maps: self.max_dma_maps.clamp(1, DEFAULT_MAX_DMA_MAPS),
            pgsize,
            write_multiple: self.write_multiple,
            body_timeout: if self.body_timeout.is_zero() {
                Duration::from_secs(5)
            } else {
                self.body_timeout
            },
            max_pending_msgs: self.max_pending_msgs,
            max_pending_bytes: self.max_pending_bytes,
            max_pending_fds: self.max_pending_fds,
        }
    }

    pub(super) fn limits(&self) -> Limits {
        Limits {
            max_data_xfer_size: self.max_data_xfer_size,
            max_msg_fds: self.max_msg_fds,
            pgsize: self.pgsize,
        }
    }
}
