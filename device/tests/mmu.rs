//! The device MMU end to end through the in-repo client (hw-spec §9): page tables, context
//! table and fault ring in guest RAM, descriptors through the mmapped doorbell page, the fault
//! vector and FAULT_PUT/FAULT_GET in the doorbell page, replay and cancel with FAULT_REPLAY,
//! TLB_INVALIDATE, ATOMIC.
#![allow(clippy::unwrap_used)]

mod common;

use common::rig::{pattern, sys, vram, Doorbell, Rig, RING_AREA, SYS_IOVA};
use common::{InProcServer, MIB};
use vm_memory::{Bytes, MemoryRegionAddress};
use vugpu_device::engine::desc::{flags, Addr, Aperture, RawDescriptor, CONTEXT_ALL};
use vugpu_device::engine::regs::{info, offset, State};
use vugpu_device::gpu::GpuConfig;

/// MMU registers (hw-spec §9.1).
mod mmu {
    pub const CONTROL: u64 = 0x300;
    pub const STATUS: u64 = 0x304;
    pub const CTX_BASE_LO: u64 = 0x308;
    pub const CTX_BASE_HI: u64 = 0x30c;
    pub const CTX_COUNT: u64 = 0x310;
    pub const CTX_APERTURE: u64 = 0x314;
    pub const RING_BASE_LO: u64 = 0x318;
    pub const RING_BASE_HI: u64 = 0x31c;
    pub const RING_SIZE: u64 = 0x320;
    pub const RING_APERTURE: u64 = 0x324;
    pub const FAULT_PUT: u64 = 0x328;
    pub const FAULT_VECTOR: u64 = 0x330;
    pub const FAULTS: u64 = 0x340;
    pub const INVALIDATIONS: u64 = 0x370;
    pub const ENABLE: u32 = 1;
    pub const FAULT_IRQ: u32 = 2;
    pub const WAITING: u32 = 8;
}

const CAPS_MMU: u32 = 1 << 5;
const DATA: u64 = SYS_IOVA + RING_AREA;
/// Context table (8 entries), fault ring (8 records), page tables: all in guest RAM.
const CTX_TABLE: u64 = DATA;
const FAULT_RING: u64 = DATA + 0x1000;
const L3: u64 = DATA + 0x2000;
const L2: u64 = DATA + 0x3000;
const L1: u64 = DATA + 0x4000;
const L0: u64 = DATA + 0x5000;
/// Frames the pages map to.
const FRAMES: u64 = DATA + MIB;
const CTX: u16 = 3;
const VA: u64 = 0x0000_1234_4000_0000;
const VALID: u64 = 1;
const LEAF: u64 = 2;
const READ: u64 = 4;
const WRITE: u64 = 8;
const ATOMIC: u64 = 16;

fn idx(va: u64, level: u32) -> u64 {
    (va >> (12 + 9 * level)) & 0x1ff
}

fn virt(addr: u64) -> Addr {
    Addr {
        aperture: Aperture::Virt(CTX),
        addr,
    }
}

fn put64(r: &Rig, iova: u64, v: u64) {
    r.sys_write(iova, &v.to_le_bytes());
}

fn wr(r: &mut Rig, off: u64, v: u32) {
    r.c.region_write(0, off, &v.to_le_bytes()).unwrap();
}

/// Page `n` of the region -> `pa` (aperture bits from `pa`).
fn map(r: &Rig, n: u64, pa: Addr, perms: u64) {
    let va = VA + n * 0x1000;
    let ap = u64::from(pa.aperture.raw()) << 5;
    put64(r, L0 + idx(va, 0) * 8, VALID | LEAF | perms | ap | pa.addr);
}

/// A rig with the MMU enabled: context 3's tables in guest RAM, an 8-record fault ring.
fn setup() -> (InProcServer, Rig) {
    let srv = InProcServer::start(GpuConfig::new(64 * MIB));
    let mut r = Rig::new(srv.client(), 32 * MIB);
    assert_ne!(r.dev_reg(0x08) & CAPS_MMU, 0, "CAPS bit 5");
    assert_eq!(r.dev_reg(0x04), 5, "VERSION 0.5");
    put64(&r, CTX_TABLE + 16 * u64::from(CTX), VALID | L3);
    put64(&r, L3 + idx(VA, 3) * 8, VALID | L2);
    put64(&r, L2 + idx(VA, 2) * 8, VALID | L1);
    put64(&r, L1 + idx(VA, 1) * 8, VALID | L0);
    for (off, v) in [
        (mmu::CTX_BASE_LO, CTX_TABLE as u32),
        (mmu::CTX_BASE_HI, (CTX_TABLE >> 32) as u32),
        (mmu::CTX_COUNT, 8),
        (mmu::CTX_APERTURE, 0),
        (mmu::RING_BASE_LO, FAULT_RING as u32),
        (mmu::RING_BASE_HI, (FAULT_RING >> 32) as u32),
        (mmu::RING_SIZE, 8),
        (mmu::RING_APERTURE, 0),
        (mmu::CONTROL, mmu::ENABLE | mmu::FAULT_IRQ),
    ] {
        wr(&mut r, off, v);
    }
    assert_eq!(r.dev_reg(mmu::STATUS), 1, "ENABLED");
    r.enable(0);
    r.enable(1);
    (srv, r)
}

fn doorbell_u32(r: &Rig, off: u64) -> u32 {
    r.doorbell.read_obj(MemoryRegionAddress(off)).unwrap()
}

#[test]
fn replayable_fault_through_the_protocol() {
    let (_srv, mut r) = setup();
    let fault_vector = r.dev_reg(mmu::FAULT_VECTOR) as usize;
    assert_eq!(fault_vector, 5, "1 + ENGINE_COUNT");
    let src = pattern(7, 0x3000);
    r.sys_write(FRAMES, &src[..0x1000]);
    map(&r, 0, sys(FRAMES), READ | WRITE);
    // A 3-page copy from VIRT into VRAM; pages 1-2 are not mapped yet.
    r.submit(
        0,
        &[RawDescriptor::copy(virt(VA), vram(0x8000), 0x3000).with_flags(flags::IRQ)],
        Doorbell::Hinted,
    );
    assert!(r.wait_vector(fault_vector, 5000) >= 1, "the fault vector");
    assert_eq!(doorbell_u32(&r, 0x800), 1, "FAULT_PUT in the doorbell page");
    assert_eq!(r.dev_reg(mmu::FAULT_PUT), 1);
    assert_ne!(r.dev_reg(mmu::STATUS) & mmu::WAITING, 0);
    assert_eq!(r.reg(0, offset::STATUS), State::Running as u32);
    let rec = r.sys_read(FAULT_RING, 32);
    assert_eq!(
        u64::from_le_bytes(rec[0..8].try_into().unwrap()),
        VA + 0x1000
    );
    assert_eq!(u16::from_le_bytes([rec[8], rec[9]]), CTX);
    assert_eq!((rec[10], rec[11], rec[12], rec[13]), (0, 0, 1, 0));
    // The driver consumes the record (FAULT_GET in the mmapped page), maps both pages, replays.
    r.doorbell
        .write_obj(1u32, MemoryRegionAddress(0x804))
        .unwrap();
    r.sys_write(FRAMES + 0x1000, &src[0x1000..]);
    map(&r, 1, sys(FRAMES + 0x1000), READ);
    map(&r, 2, sys(FRAMES + 0x2000), READ);
    r.submit(
        1,
        &[RawDescriptor::fault_replay(CTX, false)],
        Doorbell::Hinted,
    );
    assert_eq!(r.wait_vector(1, 5000), 1, "the copy completes");
    assert_eq!(r.vram_read(0x8000, 0x3000), src);
    assert_eq!(r.dev_reg(mmu::STATUS) & mmu::WAITING, 0);
    assert_eq!(r.dev_reg(mmu::FAULTS), 1);
    assert_eq!(r.wait_vector(0, 20), 0, "no error");
}

#[test]
fn cancelled_fault_is_a_translation_error_without_aer() {
    let (_srv, mut r) = setup();
    r.submit(
        0,
        &[RawDescriptor::fence(virt(VA + 0x18), 5)],
        Doorbell::Hinted,
    );
    assert!(r.wait_vector(5, 5000) >= 1);
    r.submit(
        1,
        &[RawDescriptor::fault_replay(CONTEXT_ALL, true)],
        Doorbell::Hinted,
    );
    assert_eq!(r.wait_vector(0, 5000), 1, "vector 0");
    assert_eq!(r.reg(0, offset::STATUS), State::Error as u32);
    assert_eq!(r.reg(0, offset::ERROR_CODE), 9);
    assert_eq!(r.reg64(0, offset::ERROR_ADDR_LO), VA + 0x18);
    let i = r.reg(0, offset::ERROR_INFO);
    assert_eq!(i & 3, 3);
    assert_ne!(i & info::WRITE, 0);
    assert_eq!(r.dev_reg(0xa0), 1, "ERR_CAUSE");
    assert_eq!(r.config32(0x104), 0, "AER Uncorrectable Status");
    assert_eq!(r.config32(0x68) >> 16, 0, "PCIe Device Status");
    assert_eq!(r.config32(0x04) >> 16 & 0xf900, 0, "config Status");
}

#[test]
fn invalidate_and_atomic_through_the_protocol() {
    let (_srv, mut r) = setup();
    map(&r, 0, sys(FRAMES), READ | WRITE | ATOMIC);
    map(&r, 1, vram(0x1_0000), READ | WRITE);
    put64(&r, FRAMES + 0x20, 100);
    r.submit(
        0,
        &[
            RawDescriptor::atomic(virt(VA + 0x20), virt(VA + 0x1008), 23),
            RawDescriptor::fence(virt(VA + 0x1010), 0xfeed),
            RawDescriptor::tlb_invalidate(CTX, VA + 0x1000, 0x1000),
        ]
        .map(|d| d.with_flags(flags::IRQ)),
        Doorbell::Hinted,
    );
    assert!(r.wait_head(0, 3, 5000));
    assert_eq!(r.sys_u64(FRAMES + 0x20), 123);
    let v = r.vram_read(0x1_0008, 16);
    assert_eq!(u64::from_le_bytes(v[0..8].try_into().unwrap()), 100);
    assert_eq!(u64::from_le_bytes(v[8..16].try_into().unwrap()), 0xfeed);
    assert_eq!(r.dev_reg(mmu::INVALIDATIONS), 1);
    // Page 1 unmapped after the invalidation: the next access faults.
    put64(&r, L0 + idx(VA + 0x1000, 0) * 8, 0);
    r.submit(
        0,
        &[
            RawDescriptor::tlb_invalidate(CTX, VA + 0x1000, 0x1000),
            RawDescriptor::fence(virt(VA + 0x1010), 1),
        ],
        Doorbell::Hinted,
    );
    assert!(r.wait_vector(5, 5000) >= 1);
    assert!(r.wait_head(0, 4, 1000));
    assert_ne!(r.dev_reg(mmu::STATUS) & mmu::WAITING, 0);
}

/// hw-spec §9.5: ATOMIC on memory the server maps is one host atomic instruction, so a CPU
/// adding to the same u64 at the same time loses no update (a read and a write would).
#[test]
fn atomic_is_atomic_against_the_cpu() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use vm_memory::{GuestMemoryRegion, VolatileMemory};

    let (_srv, mut r) = setup();
    const N: u64 = 1000;
    const CPU_ADDS: u64 = 10_000;
    let target = FRAMES + 0x40;
    let descs: Vec<RawDescriptor> = (0..N)
        .map(|i| RawDescriptor::atomic(sys(target), vram(0x2_0000 + 8 * i), 1))
        .collect();
    // The CPU's own mapping of guest RAM (as a guest's).
    let cpu_map = common::map_shared(r.sys_file.try_clone().unwrap(), r.sys_size);
    let slice = cpu_map
        .as_volatile_slice()
        .unwrap()
        .offset(usize::try_from(target - SYS_IOVA).unwrap())
        .unwrap();
    let cell: &AtomicU64 = slice.get_atomic_ref(0).unwrap();
    // The CPU adds for as long as the device runs its atomics, so the two always overlap.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let cpu_adds = std::thread::scope(|s| {
        let cpu = s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) || n < CPU_ADDS {
                cell.fetch_add(1, Ordering::SeqCst);
                n += 1;
            }
            n
        });
        r.submit(0, &descs, Doorbell::Hinted);
        let done = r.wait_head(0, N as u32, 20_000);
        stop.store(true, Ordering::Release);
        let n = cpu.join().unwrap();
        assert!(done, "the atomics did not complete");
        n
    });
    assert_eq!(r.sys_u64(target), N + cpu_adds, "an update was lost");
    // Every ATOMIC saw a distinct old value.
    let mut olds: Vec<u64> = (0..N)
        .map(|i| {
            let b = r.vram_read(0x2_0000 + 8 * i, 8);
            u64::from_le_bytes(b.try_into().unwrap())
        })
        .collect();
    olds.sort_unstable();
    olds.dedup();
    assert_eq!(olds.len() as u64, N);
}
