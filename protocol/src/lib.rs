//! vfio-user wire protocol: messages, framing, server and client ends.
//!
//! # What is implemented
//!
//! The vfio-user protocol **version 0.1** as specified in QEMU's `docs/interop/vfio-user.rst`
//! (checked against QEMU 10.2.2; QEMU 11.1 was not readable, see
//! `shared/reference/vfio-user.md` §0), in the dialect spoken by QEMU's `vfio-user-pci` client:
//! VERSION, DMA_MAP/UNMAP (incl. unmap-all), DEVICE_GET_INFO, DEVICE_GET_REGION_INFO with the
//! sparse-mmap capability and one mmap fd, DEVICE_GET_REGION_IO_FDS (always zero sub-regions),
//! DEVICE_GET_IRQ_INFO, DEVICE_SET_IRQS (every action and data type), REGION_READ/WRITE
//! (posted or not), REGION_WRITE_MULTI, DEVICE_RESET, and server-initiated DMA_READ/DMA_WRITE.
//! DIRTY_PAGES, DEVICE_FEATURE and MIG_DATA_READ/WRITE are answered `ENOTSUP`; unknown
//! commands `ENOSYS`.
//!
//! # Layout
//!
//! - [`wire`]: plain `#[repr(C)]` structures with derived zerocopy byte views and compile-time
//!   size assertions against the spec (host byte order, as the spec says);
//! - [`message`]: typed [`message::Request`]s that own their fds, decoded with structural checks;
//! - [`validate`]: limits and device-dependent range checks (all arithmetic checked);
//! - [`transport`]: `recvmsg`/`sendmsg` with SCM_RIGHTS and `MSG_CMSG_CLOEXEC` (through `rustix`:
//!   the crate has no `unsafe` code);
//! - [`server`]: [`Session`], one connected client, dispatching to [`backend::DeviceBackend`];
//! - [`client`]: a complete [`Client`] (device tests, `vugpu probe`);
//! - [`error`]: [`ProtocolError`] and its single errno mapping ([`ProtocolError::errno`]).
//!
//! # Security boundary
//!
//! Every size, count, index, offset and flag from the peer is validated before anything is
//! allocated or the device is called. A message larger than the negotiated maximum, a
//! truncated message (bounded by `ServerConfig::body_timeout` once its first byte arrived),
//! more fds than `max_msg_fds`, or anything before VERSION ends the session; every other error
//! is answered with an errno (or counted, for NO_REPLY messages) and the stream stays in sync
//! because bodies are always consumed in full.
//!
//! # QEMU quirks handled
//!
//! - The VERSION reply must not be longer than QEMU's request (QEMU does not drain an
//!   oversized reply): optional keys are dropped until it fits; `max_msg_fds` is always sent
//!   when possible (QEMU assumes 8, not the spec's 1, when it is absent).
//! - GET_REGION_INFO honours the client's `argsz`: a too-small request gets the fixed part with
//!   `argsz` = full size, no fd, and `cap_offset` = 32 (QEMU rejects a CAPS reply with a smaller
//!   offset), so QEMU re-asks.
//! - SET_IRQS with DATA_EVENTFD and no fds de-assigns (QEMU's encoding of fd -1).
//! - DMA_READ/DMA_WRITE use the spec's layout by default (data at payload offset 16), which is
//!   what QEMU 11.1.3 speaks (verified in a guest); QEMU 10.2's `VFIOUserDMARW` struct puts the
//!   data at offset 12 with a 32-bit count, and [`DmaLayout::Qemu`] selects that. Each DMA message
//!   carries at most 64 KiB: QEMU 11.1.3 drops the connection when a DMA_READ reply exceeds its
//!   socket send buffer.
//! - REGION_WRITE_MULTI is accepted even when `write_multiple` is not advertised, because
//!   QEMU's `VFIO_PROXY_USE_MULTI` (0x16) overlaps `FORCE_QUEUED` and `x-send-queued=on` makes it
//!   send them anyway; dropping posted writes would be worse than accepting them.
//! - Client requests that arrive while the server waits for a DMA reply are queued and handled
//!   afterwards in order (`Session::dma_read`/`dma_write`), or handled at once
//!   (`Session::dma_read_serving`/`dma_write_serving`), which avoids stalling QEMU: it serves
//!   DMA messages under the BQL that a vCPU waiting for a region reply holds. A late DMA reply
//!   (after the timeout) is dropped as stray.
//!
//! # Non-goals
//!
//! Migration (v1 dirty pages and v2 DEVICE_FEATURE/MIG_DATA), ioeventfd/ioregionfd sub-regions,
//! twin sockets, vIOMMU-sized DMA tables, non-UNIX transports, and more than one client per
//! session. The server is single-threaded per session: the caller owns the event loop.

pub mod backend;
pub mod client;
pub mod error;
pub mod message;
pub mod server;
pub mod transport;
pub mod validate;
pub mod wire;

pub use client::{Client, ClientConfig, DmaHandler, IrqSetArg, RegionDescription, ServerCaps};
pub use error::{ProtocolError, Result};
pub use server::{ServerConfig, Session, SessionStats, Status};
pub use wire::DmaLayout;
