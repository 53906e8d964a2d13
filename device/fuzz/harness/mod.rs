#![allow(dead_code)] // Each fuzz target uses one of the harnesses.

//! Fuzz harness bodies, shared by the cargo-fuzz targets (`fuzz_targets/*.rs`) and by the
//! deterministic `cargo test` run (`tests/fuzz_harness.rs`), so CI exercises them on stable.
//!
//! - [`gpu_regions`]: a whole [`Gpu`] (small VRAM, a few engine threads, a DMA space with
//!   memfd-backed and message-only windows) driven through the client-facing `DeviceBackend`
//!   methods and the mmapped doorbell page by a sequence of operations decoded from the input:
//!   region accesses of any index/offset/length, SET_IRQS, DMA_MAP/UNMAP, every reset,
//!   engine rings with descriptors written into mapped memory, doorbells, and a fake client that
//!   answers the engines' DMA messages. Invariants: no panic; every operation returns promptly;
//!   client memory outside the currently writable DMA windows never changes (guard pages beside
//!   the windows, read-only windows, windows after their DMA_UNMAP returned); DMA messages only
//!   for mapped message-only windows with the right permission; revoked or refused interrupt fds
//!   never fire; resets restore the documented state; the device keeps answering.
//! - [`config_space`]: a [`PciFunction`] alone under arbitrary config reads and writes of every
//!   width and offset, with device-side error reports mixed in. Invariants: read-only bits never
//!   change, RW bits take the written value, W1C bits clear exactly the written ones, BAR sizing
//!   round-trips (including after Resizable BAR changes), FLR restores power-on, the capability
//!   chains stay as built, out-of-range accesses fail whole.
//!
//! - [`mmu_walk`]: the device MMU's translation alone (context table, 4-level walk, TLB) over
//!   garbage tables, contexts and addresses, checked against a reference walk (`mmu.rs`).
//! - [`desc_decode`]: the engine's descriptor decoder over arbitrary descriptor rings, checked
//!   against a reference decoder written from the hw-spec tables (`desc.rs`).
//!
//! Layout: this file holds the input decoder and helpers; [`gpu`] the device world and its
//! invariants, `gpu/ops.rs` the operations decoded from the input; [`config`] the
//! config-space harness.

mod config;
mod desc;
mod gpu;
mod mmu;

// Each fuzz target uses one of the two.
#[allow(unused_imports)]
pub use config::{config_space, ConfigStats};
#[allow(unused_imports)]
pub use desc::{desc_decode, DescStats};
#[allow(unused_imports)]
pub use gpu::{gpu_regions, RegionStats};
#[allow(unused_imports)]
pub use mmu::{mmu_walk, MmuStats};

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestRegionMmap, MemoryRegionAddress, MmapRegion,
};
use vugpu_backend::{VramOptions, WindowBacking};
use vugpu_device::engine::desc::{flags as dflags, opcode, DESC_SIZE, MAX_LENGTH};
use vugpu_device::engine::env::{MsgOp, PollTiming, CHUNK};
use vugpu_device::engine::regs::{
    control, offset as eoff, DOORBELL_OFFSET, DOORBELL_SIZE, DOORBELL_STRIDE, ENGINE_BASE,
    ENGINE_STRIDE, SLEEP_HINT,
};
use vugpu_device::gpu::{
    cap_offset, irq_index, region, Gpu, GpuConfig, BAR0_SIZE, CONFIG_SIZE, MSIX_PBA_END,
};
use vugpu_device::pci::aer::{self, Aer};
use vugpu_device::pci::bar::{Bar, BarKind};
use vugpu_device::pci::capability::{walk_extended, walk_standard, Capability};
use vugpu_device::pci::dsn::DeviceSerialNumber;
use vugpu_device::pci::function::{self, PciFunction, PciIdentity};
use vugpu_device::pci::msix_cap::{MsixCap, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET};
use vugpu_device::pci::pcie::{self, PciExpress};
use vugpu_device::pci::pm::PowerManagement;
use vugpu_device::pci::rebar::ResizableBar;
use vugpu_device::regs::spec::{self, offset as reg};
use vugpu_protocol::backend::{
    DeviceBackend, DmaMapping, DmaProt, DmaUnmap, IrqAction, IrqData, IrqSet,
};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
/// Longest a single operation may take before it counts as a hang.
const OP_LIMIT: Duration = Duration::from_secs(5);
/// Most DMA message bytes the fake client serves per input (then it answers with errors).
const MSG_BUDGET: usize = 8 << 20;

// ---------------------------------------------------------------------------------------------
// Input decoding
// ---------------------------------------------------------------------------------------------

/// The fuzz input as a stream of numbers (zeros once exhausted).
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// A number below `n` (1..=256).
    fn below(&mut self, n: u16) -> u8 {
        (u16::from(self.u8()) % n.max(1)) as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }

    /// An interesting 32-bit value.
    fn value32(&mut self) -> u32 {
        match self.u8() % 8 {
            0 => 0,
            1 => u32::MAX,
            2 => 1 << (self.u8() % 32),
            3 => u32::from(self.u8()),
            4 => 0x8000_0000 | u32::from(self.u8()),
            _ => self.u32(),
        }
    }

    /// An interesting 64-bit value.
    fn value64(&mut self) -> u64 {
        match self.u8() % 8 {
            0 => 0,
            1 => u64::MAX,
            2 => 1 << (self.u8() % 64),
            3 => u64::from(self.u8()),
            4 => u64::MAX - u64::from(self.u8()),
            _ => self.u64(),
        }
    }

    /// A signed small displacement applied to `base`.
    fn near(&mut self, base: u64) -> u64 {
        match self.u8() % 6 {
            0 | 1 => base,
            2 => base.wrapping_add(u64::from(self.u8()) * 8),
            3 => base.wrapping_add(u64::from(self.u16())),
            4 => base.wrapping_sub(u64::from(self.u8()) + 1),
            _ => base.wrapping_add(u64::from(self.u8() % 64)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by both harnesses
// ---------------------------------------------------------------------------------------------

/// A memfd of `len` bytes; `sealed` adds F_SEAL_SHRINK | F_SEAL_GROW as QEMU's
/// memory-backend-memfd does (the server maps such a file; an unsealed one it reads and writes
/// with pread/pwrite), so both access paths are fuzzed.
fn memfd(len: u64, sealed: bool) -> Option<File> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    let f = File::from(rustix::fs::memfd_create(c"vugpu-fuzz", flags).ok()?);
    f.set_len(len).ok()?;
    if sealed {
        rustix::fs::fcntl_add_seals(&f, SealFlags::SHRINK | SealFlags::GROW).ok()?;
    }
    Some(f)
}

fn owned_dup(fd: &impl AsFd) -> Option<OwnedFd> {
    fd.as_fd().try_clone_to_owned().ok()
}

/// The fuzzed client's end of an eventfd.
#[derive(Debug)]
struct EventFd(OwnedFd);

impl EventFd {
    fn new(flags: rustix::event::EventfdFlags) -> std::io::Result<EventFd> {
        Ok(EventFd(rustix::event::eventfd(0, flags)?))
    }

    /// Reads and resets the counter; fails (EAGAIN) while it is 0 on a non-blocking one.
    fn read(&self) -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        rustix::io::read(&self.0, &mut b)?;
        Ok(u64::from_ne_bytes(b))
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

fn eventfd_fired(e: &EventFd) -> bool {
    e.read().is_ok()
}

fn identity() -> PciIdentity {
    PciIdentity {
        vendor_id: 0x1234,
        device_id: 0x5647,
        subsystem_vendor_id: 0x1234,
        subsystem_id: 0x0001,
        revision: 0x01,
        class_code: 0x03_02_00,
    }
}
