//! DMA engines end to end through the in-repo client (hw-spec §5-§8): rings in guest RAM (a
//! memfd DMA_MAP'd with its fd), doorbells through the mmapped BAR0 page and through the
//! trapped RING_TAIL register, completions on MSI-X eventfds, errors in config space.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::rig::{pattern, sys, vram, Doorbell, Rig, RING_AREA, SYS_IOVA};
use common::{InProcServer, MIB};
use vm_memory::Bytes;
use vugpu_device::engine::desc::{flags, RawDescriptor};
use vugpu_device::engine::regs::{info, offset, ErrorCode, State};
use vugpu_device::gpu::GpuConfig;
use vugpu_protocol::backend::DmaUnmap;

/// Engine block counter offsets (hw-spec §8.1).
mod ctr {
    pub const JOBS: u32 = 0x40;
    pub const SYS_TO_VRAM: u32 = 0x48;
    pub const VRAM_TO_SYS: u32 = 0x50;
    pub const VRAM_TO_VRAM: u32 = 0x58;
    pub const SYS_TO_SYS: u32 = 0x60;
    pub const FILL: u32 = 0x68;
    pub const NS_REQ: u32 = 0x70;
    pub const NS_USED: u32 = 0x78;
    pub const RO_REQ: u32 = 0x80;
    pub const RO_USED: u32 = 0x88;
    pub const BYTES_NS: u32 = 0x90;
    pub const BYTES_RO: u32 = 0x98;
    pub const ERRORS: u32 = 0xa0;
    pub const IRQS: u32 = 0xa8;
}

const DATA: u64 = SYS_IOVA + RING_AREA;

/// Compares byte buffers, reporting the first difference instead of dumping them.
#[track_caller]
fn same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i:#x}: got {:#04x}, want {:#04x}",
            got[i], want[i]
        );
    }
}

fn rig(cfg: GpuConfig, sys_size: u64) -> (InProcServer, Rig) {
    let srv = InProcServer::start(cfg);
    let c = srv.client();
    (srv, Rig::new(c, sys_size))
}

fn default_rig() -> (InProcServer, Rig) {
    rig(GpuConfig::new(64 * MIB), 32 * MIB)
}

#[test]
fn copies_in_every_direction_through_the_mmapped_doorbell() {
    let (_srv, mut r) = default_rig();
    r.enable(0);
    let len = 3 * MIB + 123; // several chunks, odd length
    let a = pattern(1, len as usize);
    r.sys_write(DATA, &a);
    let b = pattern(2, 4096);
    r.vram_write(40 * MIB, &b);
    let descs = [
        RawDescriptor::copy(sys(DATA), vram(0x1001), len),
        RawDescriptor::copy(vram(0x1001), sys(DATA + 8 * MIB + 3), len),
        RawDescriptor::copy(vram(40 * MIB), vram(41 * MIB), 4096),
        RawDescriptor::copy(sys(DATA), sys(DATA + 20 * MIB), 4096).with_flags(flags::IRQ),
    ];
    r.submit(0, &descs, Doorbell::Mmap);
    assert_eq!(
        r.wait_vector(1, 10_000),
        1,
        "engine 0 completes on vector 1"
    );
    assert_eq!(r.reg(0, offset::RING_HEAD), 4);
    assert_eq!(r.reg(0, offset::STATUS), State::Idle as u32);
    same(&r.vram_read(0x1001, len as usize), &a, "sys->vram");
    same(
        &r.sys_read(DATA + 8 * MIB + 3, len as usize),
        &a,
        "vram->sys",
    );
    same(&r.vram_read(41 * MIB, 4096), &b, "vram->vram");
    same(&r.sys_read(DATA + 20 * MIB, 4096), &a[..4096], "sys->sys");
    // Nothing around the destinations was touched.
    assert_eq!(r.sys_read(DATA + 8 * MIB, 3), vec![0; 3]);
    assert_eq!(r.sys_read(DATA + 8 * MIB + 3 + len, 8), vec![0; 8]);
    assert_eq!(r.vram_read(0x1000, 1), vec![0]);
    // Statistics (§8.1).
    assert_eq!(r.reg64(0, ctr::JOBS), 4);
    assert_eq!(r.reg64(0, ctr::SYS_TO_VRAM), len);
    assert_eq!(r.reg64(0, ctr::VRAM_TO_SYS), len);
    assert_eq!(r.reg64(0, ctr::VRAM_TO_VRAM), 4096);
    assert_eq!(r.reg64(0, ctr::SYS_TO_SYS), 4096);
    assert_eq!(r.reg64(0, ctr::IRQS), 1);
    assert_eq!(r.reg64(0, ctr::ERRORS), 0);
    assert_eq!(r.wait_vector(0, 50), 0, "no error vector");
}

/// hw-spec §1.1, §3.1, §6.7: with Bus Master Enable cleared by a config write (a driver's
/// pci_clear_master) a doorbell starts nothing: no fetch, no byte written, no interrupt; an
/// MSI-X message is held in the PBA. Setting it again lets the job complete by itself and
/// delivers both messages.
#[test]
fn bus_master_enable_gates_jobs_and_holds_their_interrupts() {
    let (_srv, mut r) = default_rig();
    const PBA: u64 = 0x10_8000;
    const IRQ_TRIGGER: u64 = 0x80;
    const IRQ_COUNT: u64 = 0x88;
    r.enable(0);
    let len = 2 * MIB + 5; // three chunks
    let src = pattern(11, len as usize);
    r.sys_write(DATA, &src);
    let dst = DATA + 4 * MIB;
    r.set_bus_master(false);
    assert_eq!(r.config32(0x04) & 0x4, 0, "Command bit 2 clear");
    let sent = r.dev_reg(IRQ_COUNT);
    r.submit(
        0,
        &[
            RawDescriptor::copy(sys(DATA), sys(dst), len),
            RawDescriptor::fill(vram(0x2000), 64, 0x0f0f_0f0f).with_flags(flags::IRQ),
        ],
        Doorbell::Hinted,
    );
    // A vector without an engine, signalled while Bus Master Enable is clear: held.
    r.c.region_write(0, IRQ_TRIGGER, &10u32.to_le_bytes())
        .unwrap();
    assert_eq!(r.wait_vector(1, 100), 0, "completion interrupt without BME");
    assert_eq!(r.wait_vector(10, 1), 0, "MSI-X sent without BME");
    assert_eq!(
        r.reg(0, offset::RING_HEAD),
        0,
        "a descriptor ran without BME"
    );
    assert_eq!(r.reg(0, offset::STATUS), State::Running as u32);
    assert_eq!(r.reg64(0, ctr::JOBS), 0);
    assert_eq!(r.sys_read(dst, len as usize), vec![0; len as usize]);
    assert_eq!(r.vram_read(0x2000, 4), vec![0; 4]);
    assert_eq!(r.dev_reg(PBA), 1 << 10, "held in the PBA");
    assert_eq!(r.dev_reg(IRQ_COUNT), sent, "held messages are not counted");

    r.set_bus_master(true);
    assert_eq!(r.wait_vector(10, 5000), 1, "the held message is sent");
    assert_eq!(r.wait_vector(1, 5000), 1, "the job completes by itself");
    assert_eq!(r.reg(0, offset::RING_HEAD), 2);
    same(&r.sys_read(dst, len as usize), &src, "copy after BME");
    assert_eq!(r.vram_read(0x2000, 4), vec![0x0f; 4]);
    assert_eq!(r.dev_reg(PBA), 0);
    assert_eq!(r.dev_reg(IRQ_COUNT), sent + 2);
    assert_eq!(r.reg64(0, ctr::IRQS), 1);
    assert_eq!(r.wait_vector(0, 20), 0, "no error");
}

#[test]
fn trapped_ring_tail_and_a_ring_in_vram() {
    let (_srv, mut r) = default_rig();
    // Ring of 4 slots in VRAM at 1 MiB.
    let ring = MIB;
    r.set_reg(2, offset::RING_BASE_LO, ring as u32);
    r.set_reg(2, offset::RING_BASE_HI, 0);
    r.set_reg(2, offset::RING_SIZE, 4);
    r.set_reg(2, offset::RING_APERTURE, 1);
    r.set_reg(2, offset::CONTROL, 0b101);
    assert_eq!(r.reg(2, offset::STATUS), State::Idle as u32);
    let src = pattern(3, 1000);
    r.sys_write(DATA, &src);
    // 6 descriptors through a 4-slot ring: wraps.
    for (i, n) in [(0u32, 3u32), (3, 3)] {
        for k in 0..n {
            let d = RawDescriptor::copy(sys(DATA), vram(2 * MIB + u64::from(i + k) * 1024), 1000)
                .with_flags(flags::IRQ);
            r.vram_write(ring + u64::from((i + k) % 4) * 64, &d.to_bytes());
        }
        r.set_reg(2, offset::RING_TAIL, i + n);
        assert!(r.wait_head(2, i + n, 5000));
    }
    assert_eq!(
        r.reg(2, offset::RING_TAIL),
        6,
        "RING_TAIL is the doorbell word"
    );
    assert_eq!(
        r.doorbell
            .read_obj::<u32>(vm_memory::MemoryRegionAddress(2 * 0x40))
            .unwrap(),
        6
    );
    for k in 0..6 {
        same(&r.vram_read(2 * MIB + k * 1024, 1000), &src, "copy");
    }
    assert!(r.wait_vector(3, 1000) >= 1, "engine 2 -> vector 3");
    // Ring registers are latched while enabled: writes are ignored.
    r.set_reg(2, offset::RING_SIZE, 8);
    assert_eq!(r.reg(2, offset::RING_SIZE), 4);
}

#[test]
fn fill_fence_and_timestamp() {
    let (_srv, mut r) = default_rig();
    r.enable(1);
    let t0 = {
        let lo = r.dev_reg(0xa8);
        let hi = r.dev_reg(0xac);
        (u64::from(hi) << 32) | u64::from(lo)
    };
    r.submit(
        1,
        &[
            RawDescriptor::fill(sys(DATA + 4), 4 * MIB + 8, 0xdead_beef),
            RawDescriptor::fill(vram(64), 12, 0x0102_0304),
            RawDescriptor::timestamp(sys(DATA + 16 * MIB)),
            RawDescriptor::timestamp(vram(4096)),
            RawDescriptor::fence(sys(DATA + 16 * MIB + 8), 0x1122_3344_5566_7788),
            RawDescriptor::fence(vram(8192), 42).with_flags(flags::IRQ),
        ],
        Doorbell::Mmap,
    );
    assert_eq!(r.wait_vector(2, 10_000), 1);
    let filled = r.sys_read(DATA, 4 * MIB as usize + 16);
    assert_eq!(&filled[..4], &[0; 4]);
    assert!(filled[4..4 + 4 * MIB as usize + 8]
        .chunks(4)
        .all(|c| c == 0xdead_beefu32.to_le_bytes()));
    assert_eq!(&filled[4 * MIB as usize + 12..], &[0; 4]);
    assert_eq!(
        r.vram_read(64, 16),
        [4, 3, 2, 1, 4, 3, 2, 1, 4, 3, 2, 1, 0, 0, 0, 0]
    );
    let ts_sys = r.sys_u64(DATA + 16 * MIB);
    let ts_vram = u64::from_le_bytes(r.vram_read(4096, 8).try_into().unwrap());
    let t1 = {
        let lo = r.dev_reg(0xa8);
        let hi = r.dev_reg(0xac);
        (u64::from(hi) << 32) | u64::from(lo)
    };
    assert!(
        t0 <= ts_sys && ts_sys <= ts_vram && ts_vram <= t1,
        "{t0} {ts_sys} {ts_vram} {t1}"
    );
    assert_eq!(r.sys_u64(DATA + 16 * MIB + 8), 0x1122_3344_5566_7788);
    assert_eq!(
        u64::from_le_bytes(r.vram_read(8192, 8).try_into().unwrap()),
        42
    );
    assert_eq!(r.reg64(1, offset::LAST_FENCE_LO), 42);
    assert_eq!(r.reg64(1, ctr::FILL), 4 * MIB + 8 + 12);
    assert_eq!(r.reg64(1, ctr::JOBS), 6);
}

#[test]
fn attributes_are_used_only_when_device_control_enables_them() {
    let (_srv, mut r) = default_rig();
    r.enable(0);
    let ns_ro = flags::NO_SNOOP | flags::RELAXED_ORDERING;
    // Reset value of Device Control enables both (hw-spec §1.3).
    assert_eq!(r.config32(0x68) & 0x810, 0x810);
    r.submit(
        0,
        &[
            RawDescriptor::copy(sys(DATA), vram(0), 4096).with_flags(ns_ro),
            RawDescriptor::copy(vram(0), vram(8192), 4096).with_flags(ns_ro),
            RawDescriptor::copy(sys(DATA), sys(DATA + MIB), 100)
                .with_flags(flags::NO_SNOOP | flags::IRQ),
        ],
        Doorbell::Mmap,
    );
    assert_eq!(r.wait_vector(1, 5000), 1);
    assert_eq!(r.reg64(0, ctr::NS_REQ), 3);
    assert_eq!(
        r.reg64(0, ctr::NS_USED),
        2,
        "VRAM-only copies never use attributes"
    );
    assert_eq!(r.reg64(0, ctr::RO_REQ), 2);
    assert_eq!(r.reg64(0, ctr::RO_USED), 1);
    assert_eq!(
        r.reg64(0, ctr::BYTES_NS),
        4096 + 200,
        "sys->sys counts read and write"
    );
    assert_eq!(r.reg64(0, ctr::BYTES_RO), 4096);
    // Disable both in Device Control (keep MRRS): requested but not used.
    let devctl = r.config32(0x68) as u16;
    r.set_config16(0x68, devctl & !0x0810);
    r.submit(
        0,
        &[RawDescriptor::copy(sys(DATA), vram(0), 4096).with_flags(ns_ro | flags::IRQ)],
        Doorbell::Mmap,
    );
    assert_eq!(r.wait_vector(1, 5000), 1);
    assert_eq!(r.reg64(0, ctr::NS_REQ), 4);
    assert_eq!(r.reg64(0, ctr::NS_USED), 2);
    assert_eq!(r.reg64(0, ctr::RO_REQ), 3);
    assert_eq!(r.reg64(0, ctr::RO_USED), 1);
    // Only No Snoop enabled.
    r.set_config16(0x68, (devctl & !0x0810) | 0x0800);
    r.submit(
        0,
        &[RawDescriptor::copy(vram(0), sys(DATA), 8).with_flags(ns_ro | flags::IRQ)],
        Doorbell::Mmap,
    );
    assert_eq!(r.wait_vector(1, 5000), 1);
    assert_eq!(r.reg64(0, ctr::NS_USED), 3);
    assert_eq!(r.reg64(0, ctr::RO_USED), 1);
}

/// AER Uncorrectable Status, Device Status and config Status after an error.
fn error_bits(r: &mut Rig) -> (u32, u16, u16) {
    let aer = r.config32(0x104);
    let devsta = (r.config32(0x68) >> 16) as u16;
    let status = (r.config32(0x04) >> 16) as u16;
    (aer, devsta, status)
}

fn clear_error_bits(r: &mut Rig) {
    r.c.region_write(7, 0x104, &u32::MAX.to_le_bytes()).unwrap();
    r.c.region_write(7, 0x6a, &0xffffu16.to_le_bytes()).unwrap();
    r.c.region_write(7, 0x06, &0xf900u16.to_le_bytes()).unwrap();
    r.c.region_write(0, 0xa0, &u32::MAX.to_le_bytes()).unwrap();
}

#[test]
fn bad_address_halts_the_engine_and_reports_it() {
    let (_srv, mut r) = default_rig();
    r.enable(0);
    let unmapped = SYS_IOVA + 32 * MIB + 0x40; // just past guest RAM
    r.submit(
        0,
        &[
            RawDescriptor::copy(sys(DATA), vram(0), 16).with_flags(flags::IRQ),
            RawDescriptor::copy(sys(unmapped - 0x40), vram(0), 0x100)
                .with_flags(flags::RELAXED_ORDERING),
            RawDescriptor::copy(sys(DATA), vram(0), 16),
        ],
        Doorbell::Mmap,
    );
    assert_eq!(r.wait_vector(0, 5000), 1, "vector 0 on error");
    assert_eq!(r.reg(0, offset::STATUS), State::Error as u32);
    assert_eq!(r.reg(0, offset::ERROR_CODE), ErrorCode::SysUnmapped as u32);
    assert_eq!(
        r.reg64(0, offset::ERROR_ADDR_LO),
        SYS_IOVA + 32 * MIB,
        "first faulting byte"
    );
    let inf = r.reg(0, offset::ERROR_INFO);
    assert_eq!(inf & info::APERTURE_MASK, 0);
    assert_eq!(inf & (info::WRITE | info::FETCH), 0, "a read of the source");
    assert_eq!(inf >> 16, 1, "slot 1");
    assert_eq!(
        r.reg(0, offset::RING_HEAD),
        1,
        "faulting descriptor not completed"
    );
    assert_eq!(r.dev_reg(0xa0), 1, "ERR_CAUSE bit 0");
    let (aer, devsta, status) = error_bits(&mut r);
    assert_eq!(aer, 1 << 20, "Unsupported Request");
    assert_eq!(devsta & 0xf, 0b1010, "URD + non-fatal");
    assert_ne!(status & (1 << 13), 0, "Received Master Abort");
    assert_eq!(r.config32(0x118) & 0x1f, 20, "First Error Pointer");
    let hdr: Vec<u32> = (0..4).map(|i| r.config32(0x11c + 4 * i)).collect();
    assert_eq!(hdr[0], 0x2000_0001 | (1 << 13), "MRd, RO used");
    assert_eq!(hdr[2], 1);
    assert_eq!(hdr[3], (32 * MIB) as u32);
    // The doorbell is ignored while in error.
    let t = r.tails[0];
    r.submit(0, &[RawDescriptor::default()], Doorbell::Mmap);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(r.reg(0, offset::RING_HEAD), 1);
    assert_eq!(r.reg64(0, ctr::ERRORS), 1);
    // Engine reset recovers.
    r.set_reg(0, offset::CONTROL, 1 << 31);
    assert_eq!(r.reg(0, offset::STATUS), State::Disabled as u32);
    assert_eq!(r.reg(0, offset::ERROR_CODE), 0);
    assert_eq!(r.reg(0, offset::RING_HEAD), 0);
    assert_eq!(r.reg(0, offset::RING_TAIL), 0);
    assert_eq!(r.reg64(0, ctr::ERRORS), 1, "engine reset keeps statistics");
    let _ = t;
    r.tails[0] = 0;
    r.enable(0);
    let _ = r.vectors[1].read(); // the first descriptor's completion
    r.sys_write(DATA, b"recovered");
    r.submit(
        0,
        &[RawDescriptor::copy(sys(DATA), vram(100), 9).with_flags(flags::IRQ)],
        Doorbell::Mmap,
    );
    assert!(r.wait_vector(1, 5000) >= 1);
    assert_eq!(r.vram_read(100, 9), b"recovered");
    assert_eq!(r.reg(0, offset::STATUS), State::Idle as u32);
}

#[test]
fn each_error_class_sets_its_own_bits() {
    let (_srv, mut r) = default_rig();
    // A read-only window: writes to it are SYS_PERMISSION / Completer Abort.
    let ro_file = common::memfd(MIB);
    let ro_iova = 0x2_0000_0000;
    r.c.dma_map(
        ro_iova,
        MIB,
        0,
        vugpu_protocol::backend::DmaProt {
            read: true,
            write: false,
        },
        Some(std::os::fd::AsFd::as_fd(&ro_file)),
    )
    .unwrap();
    let vram_size = 64 * MIB;
    type Case = (RawDescriptor, ErrorCode, u64, u32, u32, u16);
    let cases: [Case; 5] = [
        // (descriptor, code, addr, aer bit, info bits, config status bit)
        (
            RawDescriptor::fill(sys(ro_iova + 64), 64, 1),
            ErrorCode::SysPermission,
            ro_iova + 64,
            1 << 15,
            info::WRITE,
            1 << 12,
        ),
        (
            RawDescriptor::copy(vram(vram_size - 4), sys(DATA), 8),
            ErrorCode::VramRange,
            vram_size,
            1 << 22,
            1,
            0,
        ),
        (
            RawDescriptor {
                opcode: 9,
                ..RawDescriptor::default()
            },
            ErrorCode::BadOpcode,
            Rig::ring_iova(0),
            0,
            0,
            0,
        ),
        (
            RawDescriptor::fence(sys(DATA + 4), 1),
            ErrorCode::BadDescriptor,
            Rig::ring_iova(0),
            0,
            0,
            0,
        ),
        (
            RawDescriptor::timestamp(vram(vram_size)),
            ErrorCode::VramRange,
            vram_size,
            1 << 22,
            1 | info::WRITE,
            0,
        ),
    ];
    for (i, (d, code, addr, aer_bit, inf, status_bit)) in cases.into_iter().enumerate() {
        r.reset_engine(0);
        clear_error_bits(&mut r);
        r.submit(0, &[d], Doorbell::Mmap);
        assert_eq!(r.wait_vector(0, 5000), 1, "case {i}");
        assert_eq!(r.reg(0, offset::STATUS), State::Error as u32, "case {i}");
        assert_eq!(r.reg(0, offset::ERROR_CODE), code as u32, "case {i}");
        assert_eq!(r.reg64(0, offset::ERROR_ADDR_LO), addr, "case {i}");
        assert_eq!(r.reg(0, offset::ERROR_INFO) & 0xffff, inf, "case {i}");
        let (aer, devsta, status) = error_bits(&mut r);
        assert_eq!(aer, aer_bit, "case {i}");
        let expect_devsta = match aer_bit {
            0 => 0,
            b if b == 1 << 22 => 0b100, // internal error: fatal by default severity
            _ => 0b010,
        };
        assert_eq!(devsta & 0x7, expect_devsta, "case {i}");
        assert_eq!(status & 0x3000, status_bit, "case {i}");
        assert_eq!(r.dev_reg(0xa0), 1, "case {i}");
    }
    // Nothing was written into the read-only window.
    let mut b = vec![0u8; MIB as usize];
    std::io::Read::read_exact(&mut &ro_file, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0));
}

#[test]
fn ring_config_and_overflow_errors() {
    let (_srv, mut r) = default_rig();
    r.set_reg(3, offset::RING_BASE_LO, 0x1020); // not 64-byte aligned
    r.set_reg(3, offset::RING_SIZE, 16);
    r.set_reg(3, offset::CONTROL, 1);
    assert_eq!(r.wait_vector(0, 5000), 1);
    assert_eq!(r.reg(3, offset::ERROR_CODE), ErrorCode::RingConfig as u32);
    assert_eq!(r.reg64(3, offset::ERROR_ADDR_LO), 0x1020);
    assert_eq!(r.dev_reg(0xa0), 1 << 3);
    assert_eq!(r.config32(0x104), 0, "not a PCIe error");
    r.set_reg(3, offset::CONTROL, 1 << 31);
    r.set_reg(3, offset::RING_SIZE, 3);
    r.set_reg(3, offset::CONTROL, 1);
    assert_eq!(r.reg(3, offset::ERROR_CODE), ErrorCode::RingConfig as u32);
    // Overflow: TAIL - HEAD > RING_SIZE.
    r.reset_engine(3);
    r.ring(3, 2000, Doorbell::Mmap);
    assert!(r.wait_state(3, State::Error as u32, 5000));
    assert_eq!(r.reg(3, offset::ERROR_CODE), ErrorCode::RingOverflow as u32);
    assert_eq!(r.reg64(3, offset::ERROR_ADDR_LO), 2000);
}

#[test]
fn halt_disable_and_concurrent_engines() {
    let (_srv, mut r) = default_rig();
    for e in 0..4 {
        r.enable(e);
    }
    let src: Vec<Vec<u8>> = (0..4).map(|e| pattern(10 + e, MIB as usize)).collect();
    for (e, s) in src.iter().enumerate() {
        r.sys_write(DATA + e as u64 * 2 * MIB, s);
    }
    for e in 0..4usize {
        let base = DATA + e as u64 * 2 * MIB;
        let descs: Vec<RawDescriptor> = (0..8u64)
            .map(|k| {
                let d = RawDescriptor::copy(sys(base), vram((e as u64 * 8 + k) * MIB), MIB);
                if k == 7 {
                    d.with_flags(flags::IRQ)
                } else {
                    d
                }
            })
            .collect();
        r.submit(e, &descs, Doorbell::Mmap);
    }
    for e in 0..4usize {
        assert_eq!(r.wait_vector(e + 1, 20_000), 1, "engine {e}");
    }
    for e in 0..4u64 {
        for k in 0..8 {
            same(
                &r.vram_read((e * 8 + k) * MIB, MIB as usize),
                &src[e as usize],
                &format!("engine {e} copy {k}"),
            );
        }
    }
    // HALT stops fetching; clearing it resumes.
    r.set_reg(0, offset::CONTROL, 0b111);
    assert!(r.wait_state(0, State::Halted as u32, 1000));
    r.submit(
        0,
        &[RawDescriptor::default().with_flags(flags::IRQ)],
        Doorbell::Mmap,
    );
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(r.reg(0, offset::RING_HEAD), 8);
    r.set_reg(0, offset::CONTROL, 0b101);
    assert_eq!(r.wait_vector(1, 5000), 1);
    assert_eq!(r.reg(0, offset::RING_HEAD), 9);
    // Disable: DISABLED, head kept.
    r.set_reg(0, offset::CONTROL, 0);
    assert!(r.wait_state(0, State::Disabled as u32, 1000));
    assert_eq!(r.reg(0, offset::RING_HEAD), 9);
}

#[test]
fn flr_and_soft_reset_stop_busy_engines() {
    let (srv, mut r) = default_rig();
    for e in 0..2 {
        r.enable(e);
        // Lots of work: 1000 x 1 MiB VRAM copies.
        let descs: Vec<RawDescriptor> = (0..1000u64)
            .map(|k| {
                RawDescriptor::copy(
                    vram((k % 8) * MIB),
                    vram((16 + e as u64 * 8 + k % 8) * MIB),
                    MIB,
                )
            })
            .collect();
        r.submit(e, &descs, Doorbell::Mmap);
    }
    std::thread::sleep(Duration::from_millis(5));
    // SOFT_RESET: returns only once the engines stopped; everything at reset values.
    r.c.region_write(0, 0x40, &0x5253_5421u32.to_le_bytes())
        .unwrap();
    for e in 0..2 {
        assert_eq!(r.reg(e, offset::STATUS), State::Disabled as u32);
        assert_eq!(r.reg(e, offset::RING_HEAD), 0);
        assert_eq!(r.reg(e, offset::RING_TAIL), 0);
        assert_eq!(r.reg64(e, ctr::JOBS), 0, "SOFT_RESET clears statistics");
    }
    let jobs_before: u32 = 0;
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        r.reg(0, offset::RING_HEAD),
        jobs_before,
        "nothing runs after the reset"
    );
    // FLR while busy.
    r.tails = vec![0; 16];
    r.enable(0);
    let descs: Vec<RawDescriptor> = (0..500u64)
        .map(|k| RawDescriptor::copy(vram((k % 8) * MIB), vram((16 + k % 8) * MIB), MIB))
        .collect();
    r.submit(0, &descs, Doorbell::Mmap);
    let devctl = r.config32(0x68) as u16;
    r.set_config16(0x68, devctl | 0x8000);
    assert_eq!(r.reg(0, offset::STATUS), State::Disabled as u32);
    assert_eq!(r.reg(0, offset::RING_BASE_LO), 0);
    let server = srv.stop();
    assert_eq!(server.gpu().stats().flrs, 1);
    assert_eq!(server.gpu().stats().soft_resets, 1);
}

#[test]
fn dma_unmap_waits_for_the_engine_and_later_accesses_fault() {
    let (_srv, mut r) = default_rig();
    // A second window the engine streams into; it is unmapped mid-flight.
    let win_file = common::memfd(8 * MIB);
    let win = 0x3_0000_0000u64;
    r.c.dma_map(
        win,
        8 * MIB,
        0,
        vugpu_protocol::backend::DmaProt {
            read: true,
            write: true,
        },
        Some(std::os::fd::AsFd::as_fd(&win_file)),
    )
    .unwrap();
    r.enable(0);
    let descs: Vec<RawDescriptor> = (0..800u64)
        .map(|k| RawDescriptor::fill(sys(win + (k % 8) * MIB), MIB, k as u32 + 1))
        .collect();
    r.submit(0, &descs, Doorbell::Mmap);
    std::thread::sleep(Duration::from_millis(10));
    r.c.dma_unmap(DmaUnmap::Range {
        iova: win,
        size: 8 * MIB,
    })
    .unwrap();
    // After the unmap returned, the file is never written again.
    let snapshot = {
        let mut b = vec![0u8; 8 * MIB as usize];
        std::os::unix::fs::FileExt::read_exact_at(&win_file, &mut b, 0).unwrap();
        b
    };
    assert!(r.wait_state(0, State::Error as u32, 10_000));
    assert_eq!(r.reg(0, offset::ERROR_CODE), ErrorCode::SysUnmapped as u32);
    let head = r.reg(0, offset::RING_HEAD);
    assert!(head < 800, "the unmap happened mid-stream (head {head})");
    std::thread::sleep(Duration::from_millis(20));
    let mut after = vec![0u8; 8 * MIB as usize];
    std::os::unix::fs::FileExt::read_exact_at(&win_file, &mut after, 0).unwrap();
    assert!(after == snapshot, "no write after DMA_UNMAP returned");
}

#[test]
fn fd_less_window_through_dma_messages_in_spec_layout() {
    fd_less_window_through_dma_messages(vugpu_protocol::DmaLayout::Spec);
}

#[test]
fn fd_less_window_through_dma_messages_in_qemu_10_2_layout() {
    fd_less_window_through_dma_messages(vugpu_protocol::DmaLayout::Qemu);
}

/// Client memory behind an fd-less window: served through DMA_READ/DMA_WRITE messages.
struct MsgMem {
    base: u64,
    bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl vugpu_protocol::DmaHandler for MsgMem {
    fn dma_read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), i32> {
        let m = self.bytes.lock().unwrap();
        let a = addr.checked_sub(self.base).ok_or(libc::EFAULT)? as usize;
        buf.copy_from_slice(m.get(a..a + buf.len()).ok_or(libc::EFAULT)?);
        Ok(())
    }
    fn dma_write(&mut self, addr: u64, data: &[u8]) -> Result<(), i32> {
        let mut m = self.bytes.lock().unwrap();
        let a = addr.checked_sub(self.base).ok_or(libc::EFAULT)? as usize;
        m.get_mut(a..a + data.len())
            .ok_or(libc::EFAULT)?
            .copy_from_slice(data);
        Ok(())
    }
}

fn fd_less_window_through_dma_messages(layout: vugpu_protocol::DmaLayout) {
    use std::sync::{Arc, Mutex};
    let srv = InProcServer::start_with_layout(GpuConfig::new(64 * MIB), layout);
    let stream = std::os::unix::net::UnixStream::connect(&srv.socket).unwrap();
    let mut c = vugpu_protocol::Client::with_config(
        stream,
        vugpu_protocol::ClientConfig {
            dma_layout: layout,
            ..Default::default()
        },
    );
    c.negotiate().unwrap();
    let mut r = Rig::new(c, 32 * MIB);
    let base = 0x4_0000_0000u64;
    let size = 4 * MIB;
    let orig = pattern(77, size as usize);
    let bytes = Arc::new(Mutex::new(orig.clone()));
    r.c.set_dma_handler(Box::new(MsgMem {
        base,
        bytes: bytes.clone(),
    }));
    r.map_fd_less(base, size, true);
    r.enable(0);
    // msg window -> VRAM (2.5 MiB: several chunks and messages), VRAM -> msg window, a fence
    // into the msg window, and a copy spanning guest RAM (fd) into... VRAM.
    let len = 2 * MIB + MIB / 2;
    r.submit(
        0,
        &[
            RawDescriptor::copy(sys(base + 1), vram(0), len),
            RawDescriptor::copy(vram(0), sys(base + 3 * MIB), 1000),
            RawDescriptor::fence(sys(base + 8), 0xfeed_f00d_dead_beef),
            RawDescriptor::copy(sys(base + 16), sys(DATA), 4096).with_flags(flags::IRQ),
        ],
        Doorbell::Mmap,
    );
    // The test client serves DMA messages only while it is inside a call: pump them, and
    // meanwhile do trapped reads too (they must be answered while the server waits for DMA).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = r.c.serve_one(Duration::from_millis(5));
        if r.vectors[1].read().is_ok() {
            break;
        }
        let _ = r.reg(0, offset::STATUS);
        assert!(Instant::now() < deadline, "engine never completed");
    }
    let m = bytes.lock().unwrap().clone();
    same(
        &r.vram_read(0, len as usize),
        &orig[1..1 + len as usize],
        "msg -> vram",
    );
    same(
        &m[3 * MIB as usize..3 * MIB as usize + 1000],
        &orig[1..1001],
        "vram -> msg",
    );
    assert_eq!(
        u64::from_le_bytes(m[8..16].try_into().unwrap()),
        0xfeed_f00d_dead_beef
    );
    same(&r.sys_read(DATA, 4096), &orig[16..16 + 4096], "msg -> sys");
    assert!(r.c.stats().dma_reads > 0 && r.c.stats().dma_writes > 0);
    // A message the client refuses (outside its memory): MSG_DMA_FAILED -> UR.
    r.map_fd_less(0x5_0000_0000, MIB, true);
    r.submit(
        0,
        &[RawDescriptor::copy(sys(0x5_0000_0000), vram(0), 16)],
        Doorbell::Mmap,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while r.vectors[0].read().is_err() {
        let _ = r.c.serve_one(Duration::from_millis(5));
        assert!(Instant::now() < deadline, "no error vector");
    }
    assert_eq!(r.reg(0, offset::ERROR_CODE), ErrorCode::MsgDmaFailed as u32);
    assert_eq!(r.reg64(0, offset::ERROR_ADDR_LO), 0x5_0000_0000);
    assert_eq!(r.config32(0x104), 1 << 20);
}

/// The RING_TAIL stall the guest `dma` suite found: jobs submitted with a trapped RING_TAIL
/// write whose source is an fd-less window (QEMU's BIOS ROM). While it waits, the client sends
/// nothing but DMA replies (like a guest driver waiting for the interrupt), so every DMA message
/// must be sent without any further client message: no job may stall.
#[test]
fn trapped_ring_tail_jobs_on_an_fd_less_window_never_stall() {
    use std::sync::{Arc, Mutex};

    let (_srv, mut r) = rig(GpuConfig::new(64 * MIB), 4 * MIB);
    let rom = 0xfffc_0000u64;
    let size = 0x4_0000u64;
    let orig = pattern(5, size as usize);
    r.c.set_dma_handler(Box::new(MsgMem {
        base: rom,
        bytes: Arc::new(Mutex::new(orig.clone())),
    }));
    r.map_fd_less(rom, size, false);
    r.enable(0);
    let jobs = 400u64;
    for i in 0..jobs {
        let off = (i * 0x2f3d) % (size - 128);
        let len = 100 + i % 16;
        let dst = 0x1000 * (i % 64);
        let d = RawDescriptor::copy(sys(rom + off), vram(dst), len).with_flags(flags::IRQ);
        r.submit(0, &[d], Doorbell::Register);
        let deadline = Instant::now() + Duration::from_secs(3);
        while r.vectors[1].read().is_err() {
            let _ = r.c.serve_one(Duration::from_millis(1));
            assert!(
                Instant::now() < deadline,
                "job {i} stalled: its DMA message was never sent"
            );
        }
        same(
            &r.vram_read(dst, len as usize),
            &orig[off as usize..(off + len) as usize],
            "rom -> vram",
        );
    }
    assert_eq!(r.reg(0, offset::RING_HEAD), jobs as u32);
    assert_eq!(r.reg64(0, ctr::ERRORS), 0);
}

/// hw-spec §4: a DMA message already sent when an engine reset arrives may still be executed,
/// but no new message is sent after the reset. One 256 KiB read from an fd-less window takes
/// four 64 KiB DMA_READ messages; the reset arrives while the first is unanswered.
#[test]
fn no_dma_message_is_sent_after_an_engine_reset() {
    use std::sync::{Arc, Mutex};
    use vugpu_device::engine::regs::control;
    use vugpu_protocol::wire::{Command, DmaLayout};

    let (_srv, mut r) = rig(GpuConfig::new(64 * MIB), 4 * MIB);
    let rom = 0xfffc_0000u64;
    let size = 0x4_0000u64;
    let orig = pattern(9, size as usize);
    r.c.set_dma_handler(Box::new(MsgMem {
        base: rom,
        bytes: Arc::new(Mutex::new(orig.clone())),
    }));
    r.map_fd_less(rom, size, false);
    r.enable(0);
    r.submit(
        0,
        &[RawDescriptor::copy(sys(rom), vram(0), size)],
        Doorbell::Mmap,
    );
    let first = r.c.recv_raw().unwrap().unwrap();
    assert_eq!(first.header.command, Command::DmaRead as u16);
    let (h, _) = DmaLayout::Spec.decode(&first.body).unwrap();
    assert_eq!((h.address, h.count), (rom, 64 * 1024));
    // The reset is answered while the server waits for the DMA reply.
    r.set_reg(0, offset::CONTROL, control::RESET);
    assert_eq!(r.reg(0, offset::STATUS), State::Disabled as u32);
    // The late reply to the message that was in flight...
    r.c.send_raw(&common::dma_read_reply(&first, &orig[..64 * 1024]), &[])
        .unwrap();
    // ...and nothing after it.
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        let _ = r.c.serve_one(Duration::from_millis(10));
    }
    assert_eq!(
        r.c.stats().dma_reads,
        0,
        "DMA_READ sent after the engine reset"
    );
    // The engine works again after the reset.
    r.tails[0] = 0;
    r.enable(0);
    r.submit(
        0,
        &[RawDescriptor::copy(sys(rom + 8), vram(0x1000), 64).with_flags(flags::IRQ)],
        Doorbell::Register,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while r.vectors[1].read().is_err() {
        let _ = r.c.serve_one(Duration::from_millis(1));
        assert!(Instant::now() < deadline, "no completion after the reset");
    }
    same(&r.vram_read(0x1000, 64), &orig[8..72], "rom -> vram");
}

/// Thousands of random descriptors with random addresses against a DMA space with holes: the
/// server stays up, the engines report errors and recover, and no byte outside what the client
/// mapped writable changes (hw-spec §5 last paragraph).
#[test]
fn hostile_random_descriptors_never_escape_the_mapped_windows() {
    use vugpu_device::engine::regs::control;
    use vugpu_protocol::backend::DmaProt;

    let mut cfg = GpuConfig::new(16 * MIB);
    cfg.engines = 2;
    let srv = InProcServer::start(cfg);
    let mut c = srv.client();
    // Guest RAM file of 8 MiB: [0, 4M) mapped RW at SYS_IOVA (rings + data), [5M, 6M) mapped
    // read-only at SYS_IOVA + 5M; [4M, 5M) and [6M, 8M) never mapped (guards).
    let file = common::memfd(8 * MIB);
    let guard_fill = pattern(99, 8 * MIB as usize);
    std::os::unix::fs::FileExt::write_all_at(&file, &guard_fill, 0).unwrap();
    let ro_iova = SYS_IOVA + 5 * MIB;
    c.dma_map(
        ro_iova,
        MIB,
        5 * MIB,
        DmaProt {
            read: true,
            write: false,
        },
        Some(std::os::fd::AsFd::as_fd(&file)),
    )
    .unwrap();
    // Rig maps its own RW guest RAM at SYS_IOVA: 4 MiB.
    let mut r = Rig::new(c, 4 * MIB);
    let vram_size = 16 * MIB;
    for e in 0..2 {
        r.enable(e);
    }
    let mut rng = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let interesting = [
        SYS_IOVA,
        SYS_IOVA + 4 * MIB,
        ro_iova,
        ro_iova + MIB,
        SYS_IOVA + 8 * MIB,
        0,
        vram_size,
        u64::MAX,
        1 << 63,
    ];
    let started = Instant::now();
    let total = 3000u32;
    let mut errors = 0;
    let mut done = 0u32;
    while done < total {
        let e = (next() % 2) as usize;
        let batch = 1 + (next() % 24) as u32;
        let descs: Vec<RawDescriptor> = (0..batch)
            .map(|_| {
                let pick = |x: u64, n: u64| {
                    let base = interesting[(x % interesting.len() as u64) as usize];
                    base.wrapping_add(n % (2 * MIB)).wrapping_sub(MIB)
                };
                let (a, b, l) = (next(), next(), next());
                let mut d = RawDescriptor {
                    opcode: (a % 7) as u8,
                    flags: if a & 0x100 != 0 {
                        (b >> 8) as u8
                    } else {
                        (b >> 8) as u8 & 7
                    },
                    src_aperture: ((a >> 12) % 3) as u8,
                    dst_aperture: ((a >> 16) % 3) as u8,
                    src: pick(a >> 20, b),
                    dst: pick(b >> 20, a),
                    length: match l % 4 {
                        0 => l % 64,
                        1 => l % (3 * MIB),
                        2 => (l % 64) * 4,
                        _ => l >> (l % 64),
                    },
                    value: if a & 0x200 != 0 { l } else { l & 0xffff_ffff },
                    context: 0,
                };
                if d.src_aperture == 1 {
                    d.src %= vram_size + MIB;
                }
                if d.dst_aperture == 1 {
                    d.dst %= vram_size + MIB;
                }
                if a & 0x3f == 0 {
                    d.dst &= !7;
                }
                d
            })
            .collect();
        let how = if next() % 4 == 0 {
            Doorbell::Register
        } else {
            Doorbell::Mmap
        };
        r.submit(e, &descs, how);
        let target = r.tails[e];
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = r.reg(e, offset::STATUS);
            if st == State::Error as u32 {
                errors += 1;
                r.set_reg(e, offset::CONTROL, control::RESET);
                r.tails[e] = 0;
                r.enable(e);
                break;
            }
            if r.reg(e, offset::RING_HEAD) == target && st != State::Running as u32 {
                break;
            }
            assert!(Instant::now() < deadline, "engine {e} stuck in state {st}");
            std::thread::sleep(Duration::from_micros(200));
        }
        done += batch;
    }
    assert!(errors > 50, "random input must hit errors ({errors})");
    // Guards and the read-only window are untouched.
    let mut now = vec![0u8; 8 * MIB as usize];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut now, 0).unwrap();
    same(&now, &guard_fill, "the whole unmapped/read-only file");
    // The server is alive and the engines still work.
    r.sys_write(DATA, b"still alive");
    let _ = r.vectors[1].read();
    r.submit(
        0,
        &[RawDescriptor::copy(sys(DATA), vram(0), 11).with_flags(flags::IRQ)],
        Doorbell::Mmap,
    );
    assert!(r.wait_vector(1, 5000) >= 1);
    assert_eq!(r.vram_read(0, 11), b"still alive");
    let server = srv.stop();
    assert!(server.gpu().stats().engine_errors >= errors);
    eprintln!(
        "{total} random descriptors, {errors} engine errors, {:?}",
        started.elapsed()
    );
}

#[test]
fn sleeping_hint_follows_the_engine_and_hinted_submission_wakes_it() {
    let (_srv, mut r) = default_rig();
    let hint = |r: &Rig, e: u64| -> u32 {
        r.doorbell
            .load(
                vm_memory::MemoryRegionAddress(0x40 * e + 4),
                std::sync::atomic::Ordering::Acquire,
            )
            .unwrap()
    };
    r.enable(0);
    // Idle longer than the spin window: the engine sleeps and says so.
    let deadline = Instant::now() + Duration::from_secs(5);
    while hint(&r, 0) != 1 {
        assert!(Instant::now() < deadline, "SLEEPING never set");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(hint(&r, 1), 0, "a disabled engine does not poll");
    // Hinted submission: store TAIL, see SLEEPING, write RING_TAIL: completes at once.
    r.sys_write(DATA, b"hinted");
    r.submit(
        0,
        &[RawDescriptor::copy(sys(DATA), vram(0), 6).with_flags(flags::IRQ)],
        Doorbell::Hinted,
    );
    assert_eq!(r.wait_vector(1, 5000), 1);
    assert_eq!(r.vram_read(0, 6), b"hinted");
    // A long job: the engine is busy, SLEEPING is 0.
    let descs: Vec<RawDescriptor> = (0..200u64)
        .map(|k| RawDescriptor::copy(vram((k % 4) * MIB), vram((8 + k % 4) * MIB), MIB))
        .collect();
    r.submit(0, &descs, Doorbell::Mmap);
    std::thread::sleep(Duration::from_millis(2));
    if r.reg(0, offset::STATUS) == State::Running as u32 {
        assert_eq!(hint(&r, 0), 0);
    }
    // Engine reset clears both words.
    r.set_reg(0, offset::CONTROL, 1 << 31);
    assert_eq!(hint(&r, 0), 0);
    assert_eq!(r.reg(0, offset::RING_TAIL), 0);
}
