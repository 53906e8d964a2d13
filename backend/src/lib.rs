//! Where vugpu's bytes live: VRAM storage and the guest DMA address space.
//!
//! Two address spaces and the routing between GPUs are modelled here, and nothing else (no message
//! parsing, no device logic):
//!
//! - **VRAM** ([`Vram`]): the GPU's local memory. It is a shared file (an anonymous `memfd` by
//!   default, or a file, e.g. on hugetlbfs) mapped `MAP_SHARED` into the server. The same file is
//!   handed to the client for the VRAM BAR mmap, so a guest store through the BAR and a device-side
//!   access through [`Vram::read`]/[`Vram::write`] touch the same page. The file is sized with
//!   `ftruncate`, so untouched VRAM costs no RAM. Offsets are typed ([`VramOffset`]).
//! - **DMA space** ([`DmaSpace`]): what the client exported with DMA_MAP. Every window is a file
//!   the server maps (`MAP_SHARED`, with the client's permissions; only files sealed against
//!   shrinking, which cannot make the server's accesses raise SIGBUS), a file the server reads and
//!   writes with `pread`/`pwrite` (every other fd: a client that shrinks it makes accesses fail
//!   cleanly, [`FileSlice`]), or a message-only window (no fd: reachable only with
//!   DMA_READ/DMA_WRITE messages, which is the device's business, not this crate's). Addresses are
//!   typed ([`Iova`]). [`DmaSpace::resolve`] splits an access into per-window [`Segment`]s (direct
//!   slices, file slices or message-only ranges) after checking all of it.
//! - **Peer-to-peer routing** ([`Fabric`]): the GPUs served by one process, each with its VRAM
//!   (shared) and where its VRAM BAR decodes on the bus; a device access to a bus address inside
//!   a member's BAR reaches that member's VRAM directly ([`FabricView::route`]).
//! - **Shared pages** ([`SharedPage`]): a page of a sealed memfd that the client mmaps as part of
//!   a register BAR (the doorbell page); the device polls it with atomic loads.
//!
//! Every access to mapped memory goes through vm-memory's bounds-checked accessors, every access
//! to an unmapped client file through `pread`/`pwrite`; every rejection is a typed error
//! ([`VramError`], [`DmaError`]). Nothing here panics on peer-controlled input; a client that
//! shrinks a file it DMA_MAP'd makes the server's accesses to it fail, never raise SIGBUS.

#![deny(missing_docs)]

mod addr;
mod dma_file;
mod dma_space;
mod p2p;
mod shared_page;
#[cfg(test)]
mod test_fds;
mod vram;

pub use addr::{Iova, VramOffset};
pub use dma_file::FileSlice;
pub use dma_space::{
    DmaError, DmaLimits, DmaPermissions, DmaSpace, DmaWindow, Segment, WindowBacking,
    DEFAULT_MAX_FD_BYTES, DEFAULT_MAX_FD_WINDOWS,
};
pub use p2p::{BarDecode, ClientId, Fabric, FabricError, FabricView, PeerId, PeerTraffic, Route};
pub use shared_page::{SharedPage, PAGE_SIZE as SHARED_PAGE_SIZE};
pub use vram::{Vram, VramError, VramOptions};
