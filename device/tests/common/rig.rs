//! A client-side rig for the DMA engines: guest RAM (a memfd DMA_MAP'd with its fd), the
//! mmapped doorbell page and VRAM BAR, one eventfd per MSI-X vector, and helpers that program
//! engines and submit descriptors exactly as a guest driver would (hw-spec §6-§7).
#![allow(dead_code, clippy::unwrap_used)]

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestRegionMmap, MemoryRegionAddress, MmapRegion,
};
use vugpu_device::engine::desc::{Addr, Aperture, RawDescriptor, DESC_SIZE};
use vugpu_device::engine::regs::{control, offset, DOORBELL_OFFSET, DOORBELL_STRIDE};
use vugpu_protocol::backend::{DmaProt, IrqAction};
use vugpu_protocol::{Client, IrqSetArg};

use super::sealed_memfd;

/// Command register bits (hw-spec §1.1).
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;

/// IOVA of guest RAM.
pub const SYS_IOVA: u64 = 0x1_0000_0000;
/// Bytes of guest RAM reserved for rings at its start (64 KiB = 1024 slots per engine).
pub const RING_AREA: u64 = 16 * 64 * 1024;
/// Ring slots per engine.
pub const RING_SLOTS: u32 = 1024;

/// How the tail reaches the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doorbell {
    /// A store into the mmapped doorbell page (no message).
    Mmap,
    /// A trapped RING_TAIL register write.
    Register,
    /// A store into the page; then, if the engine's sleep hint says it sleeps, a RING_TAIL
    /// write to wake it (hw-spec §6.4).
    Hinted,
}

pub fn sys(addr: u64) -> Addr {
    Addr {
        aperture: Aperture::Sys,
        addr,
    }
}

pub fn vram(addr: u64) -> Addr {
    Addr {
        aperture: Aperture::Vram,
        addr,
    }
}

pub struct Rig {
    pub c: Client,
    pub sys_file: File,
    pub sys: GuestRegionMmap<()>,
    pub sys_size: u64,
    pub doorbell: GuestRegionMmap<()>,
    pub vram: GuestRegionMmap<()>,
    pub vectors: Vec<super::TestEventFd>,
    pub tails: Vec<u32>,
}

fn map(file: File, offset: u64, len: u64) -> GuestRegionMmap<()> {
    let region = MmapRegion::<()>::from_file(FileOffset::new(file, offset), len as usize).unwrap();
    GuestRegionMmap::new(region, GuestAddress(0)).unwrap()
}

impl Rig {
    /// Negotiated client `c`; enables Memory Space and Bus Master (as a driver's
    /// pci_enable_device + pci_set_master), maps `sys_size` bytes of guest RAM at SYS_IOVA
    /// (read-write, with fd), mmaps the doorbell page and VRAM, assigns an eventfd to every
    /// vector.
    pub fn new(mut c: Client, sys_size: u64) -> Rig {
        c.region_write(
            7,
            0x04,
            &(COMMAND_MEMORY | COMMAND_BUS_MASTER).to_le_bytes(),
        )
        .unwrap();
        // Sealed like QEMU's memory-backend-memfd: the server maps it (unsealed fds take the
        // pread/pwrite path, tests/unsealed_dma.rs).
        let sys_file = sealed_memfd(sys_size);
        c.dma_map(
            SYS_IOVA,
            sys_size,
            0,
            DmaProt {
                read: true,
                write: true,
            },
            Some(sys_file.as_fd()),
        )
        .unwrap();
        let sys = map(sys_file.try_clone().unwrap(), 0, sys_size);
        let r0 = c.region_info(0).unwrap();
        assert_eq!(r0.sparse_areas.len(), 1);
        let area = r0.sparse_areas[0];
        assert_eq!((area.offset, area.size), (DOORBELL_OFFSET, 0x1000));
        let doorbell = map(
            File::from(r0.fd.unwrap()),
            r0.info.offset + area.offset,
            area.size,
        );
        let r2 = c.region_info(2).unwrap();
        let vram = map(File::from(r2.fd.unwrap()), r2.info.offset, r2.info.size);
        let n = c.irq_info(2).unwrap().count;
        let vectors: Vec<super::TestEventFd> = (0..n).map(|_| super::eventfd()).collect();
        let owned: Vec<std::os::fd::OwnedFd> = vectors.iter().map(super::owned).collect();
        let fds: Vec<BorrowedFd<'_>> = owned.iter().map(|e| e.as_fd()).collect();
        c.set_irqs(2, 0, n, IrqAction::Trigger, IrqSetArg::Eventfds(&fds))
            .unwrap();
        Rig {
            c,
            sys_file,
            sys,
            sys_size,
            doorbell,
            vram,
            vectors,
            tails: vec![0; 16],
        }
    }

    /// DMA_MAPs `[iova, iova + size)` without an fd (like QEMU's BIOS ROM): the server reaches
    /// it only through DMA_READ/DMA_WRITE messages, which the client's DMA handler serves.
    pub fn map_fd_less(&mut self, iova: u64, size: u64, write: bool) {
        self.c
            .dma_map(iova, size, 0, DmaProt { read: true, write }, None)
            .unwrap();
    }

    pub fn reg(&mut self, engine: usize, off: u32) -> u32 {
        let mut b = [0u8; 4];
        self.c
            .region_read(0, engine_reg(engine, off), &mut b)
            .unwrap();
        u32::from_le_bytes(b)
    }

    pub fn reg64(&mut self, engine: usize, off: u32) -> u64 {
        let lo = self.reg(engine, off);
        let hi = self.reg(engine, off + 4);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    pub fn set_reg(&mut self, engine: usize, off: u32, v: u32) {
        self.c
            .region_write(0, engine_reg(engine, off), &v.to_le_bytes())
            .unwrap();
    }

    pub fn dev_reg(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.c.region_read(0, off, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    pub fn config32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.c.region_read(7, off, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    pub fn set_config16(&mut self, off: u64, v: u16) {
        self.c.region_write(7, off, &v.to_le_bytes()).unwrap();
    }

    /// Sets or clears Bus Master Enable (Command bit 2), keeping Memory Space on.
    pub fn set_bus_master(&mut self, on: bool) {
        let bm = if on { COMMAND_BUS_MASTER } else { 0 };
        self.set_config16(0x04, COMMAND_MEMORY | bm);
    }

    /// IOVA of engine `e`'s ring (in guest RAM).
    pub fn ring_iova(e: usize) -> u64 {
        SYS_IOVA + e as u64 * u64::from(RING_SLOTS) * DESC_SIZE as u64
    }

    /// Programs and enables engine `e` with its ring in guest RAM and completion interrupts on.
    pub fn enable(&mut self, e: usize) {
        let base = Self::ring_iova(e);
        self.set_reg(e, offset::RING_BASE_LO, base as u32);
        self.set_reg(e, offset::RING_BASE_HI, (base >> 32) as u32);
        self.set_reg(e, offset::RING_SIZE, RING_SLOTS);
        self.set_reg(e, offset::RING_APERTURE, 0);
        self.set_reg(e, offset::CONTROL, control::ENABLE | control::IRQ_ENABLE);
        self.tails[e] = self.reg(e, offset::RING_HEAD);
    }

    /// Engine reset, then enable again.
    pub fn reset_engine(&mut self, e: usize) {
        self.set_reg(e, offset::CONTROL, control::RESET);
        self.tails[e] = 0;
        self.enable(e);
    }

    /// Writes `descs` into engine `e`'s ring after the current tail and publishes the new tail.
    pub fn submit(&mut self, e: usize, descs: &[RawDescriptor], how: Doorbell) {
        let mut tail = self.tails[e];
        for d in descs {
            let slot = u64::from(tail % RING_SLOTS);
            let at = Self::ring_iova(e) - SYS_IOVA + slot * DESC_SIZE as u64;
            self.sys
                .write_slice(&d.to_bytes(), MemoryRegionAddress(at))
                .unwrap();
            tail = tail.wrapping_add(1);
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        self.tails[e] = tail;
        self.ring(e, tail, how);
    }

    /// Publishes `tail` for engine `e`.
    pub fn ring(&mut self, e: usize, tail: u32, how: Doorbell) {
        match how {
            Doorbell::Mmap => self
                .doorbell
                .store(
                    tail,
                    MemoryRegionAddress(DOORBELL_STRIDE * e as u64),
                    std::sync::atomic::Ordering::Release,
                )
                .unwrap(),
            Doorbell::Register => self.set_reg(e, offset::RING_TAIL, tail),
            Doorbell::Hinted => {
                let db = DOORBELL_STRIDE * e as u64;
                self.doorbell
                    .store(
                        tail,
                        MemoryRegionAddress(db),
                        std::sync::atomic::Ordering::Release,
                    )
                    .unwrap();
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                let sleeping: u32 = self
                    .doorbell
                    .load(
                        MemoryRegionAddress(db + 4),
                        std::sync::atomic::Ordering::Acquire,
                    )
                    .unwrap();
                if sleeping != 0 {
                    self.set_reg(e, offset::RING_TAIL, tail);
                }
            }
        }
    }

    /// Waits until vector `v` fires; returns the eventfd count (0 on timeout).
    pub fn wait_vector(&self, v: usize, ms: u64) -> u64 {
        super::wait_event(&self.vectors[v], ms)
    }

    /// Polls RING_HEAD (trapped) until it reaches `head` or `ms` pass.
    pub fn wait_head(&mut self, e: usize, head: u32, ms: u64) -> bool {
        let deadline = Instant::now() + Duration::from_millis(ms);
        loop {
            if self.reg(e, offset::RING_HEAD) == head {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Polls STATUS until it is `state` or `ms` pass.
    pub fn wait_state(&mut self, e: usize, state: u32, ms: u64) -> bool {
        let deadline = Instant::now() + Duration::from_millis(ms);
        loop {
            if self.reg(e, offset::STATUS) == state {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn sys_write(&self, iova: u64, data: &[u8]) {
        self.sys
            .write_slice(data, MemoryRegionAddress(iova - SYS_IOVA))
            .unwrap();
    }

    pub fn sys_read(&self, iova: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.sys
            .read_slice(&mut b, MemoryRegionAddress(iova - SYS_IOVA))
            .unwrap();
        b
    }

    pub fn sys_u64(&self, iova: u64) -> u64 {
        self.sys
            .load(
                MemoryRegionAddress(iova - SYS_IOVA),
                std::sync::atomic::Ordering::Acquire,
            )
            .unwrap()
    }

    pub fn vram_write(&self, off: u64, data: &[u8]) {
        self.vram
            .write_slice(data, MemoryRegionAddress(off))
            .unwrap();
    }

    pub fn vram_read(&self, off: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.vram
            .read_slice(&mut b, MemoryRegionAddress(off))
            .unwrap();
        b
    }
}

pub fn engine_reg(engine: usize, off: u32) -> u64 {
    0x1000 + 0x100 * engine as u64 + u64::from(off)
}

/// Deterministic pseudo-random bytes (xorshift).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
