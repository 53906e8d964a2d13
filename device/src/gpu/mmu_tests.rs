//! The device MMU with running engines (hw-spec §9), through the `DeviceBackend` seam: VIRT
//! descriptors, faults that wait, replay, cancel, disable, resets, ATOMIC and TLB_INVALIDATE
//! waiting for a chunk in flight.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use vugpu_protocol::backend::DmaProt;

use super::*;
use crate::engine::desc::{flags, Addr, Aperture, RawDescriptor, CONTEXT_ALL};
use crate::engine::regs::{control as econtrol, info, offset as eoff, State};
use crate::mmu::fault_ring::{DB_FAULT_GET, DB_FAULT_PUT};
use crate::mmu::regs::{control, offset as moff, status, BASE as MMU};
use crate::mmu::walk::{index, pte};
use crate::mmu::Counter;

const MIB: u64 = 1 << 20;
/// Context table (VRAM), 4 entries.
const CTX_TABLE: u64 = 0x10_0000;
/// Fault ring (VRAM), 4 records.
const FAULT_RING: u64 = 0x11_0000;
/// Page tables of context 1 (VRAM): L3, L2, L1, L0.
const L3: u64 = 0x12_0000;
const L2: u64 = 0x12_1000;
const L1: u64 = 0x12_2000;
const L0: u64 = 0x12_3000;
/// Engine rings (VRAM), 16 slots each.
const RINGS: u64 = 0x13_0000;
const SLOTS: u32 = 16;
/// Data pages (VRAM).
const DATA: u64 = 0x100_0000;
/// The context used.
const CTX: u16 = 1;
/// A virtual address region (its L0 table covers 2 MiB from here).
const VA: u64 = 0x0000_4000_0000;
/// Guest RAM (SYS) and an fd-less window (DMA messages).
const RAM: u64 = 0x1_0000_0000;
const ROM: u64 = 0x5_0000_0000;

fn rd(g: &mut Gpu, off: u64) -> u32 {
    let mut b = [0u8; 4];
    g.region_read(0, off, &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn wr(g: &mut Gpu, off: u64, v: u32) {
    g.region_write(0, off, &v.to_le_bytes()).unwrap();
}

fn ereg(e: usize, off: u32) -> u64 {
    0x1000 + 0x100 * e as u64 + u64::from(off)
}

fn mreg(off: u32) -> u64 {
    MMU + u64::from(off)
}

fn vram(addr: u64) -> Addr {
    Addr {
        aperture: Aperture::Vram,
        addr,
    }
}

fn sys(addr: u64) -> Addr {
    Addr {
        aperture: Aperture::Sys,
        addr,
    }
}

fn virt(addr: u64) -> Addr {
    Addr {
        aperture: Aperture::Virt(CTX),
        addr,
    }
}

fn put64(g: &Gpu, at: u64, v: u64) {
    g.vram().write(VramOffset(at), &v.to_le_bytes()).unwrap();
}

fn get64(g: &Gpu, at: u64) -> u64 {
    let mut b = [0u8; 8];
    g.vram().read(VramOffset(at), &mut b).unwrap();
    u64::from_le_bytes(b)
}

fn memfd(len: u64) -> std::fs::File {
    let flags = rustix::fs::MemfdFlags::CLOEXEC;
    let f = std::fs::File::from(rustix::fs::memfd_create(c"mmu-test", flags).unwrap());
    f.set_len(len).unwrap();
    f
}

/// A GPU with 2 engines (vectors 0-2 engines, 3 the fault vector), bus mastering, the MMU
/// enabled with context 1's tables in VRAM (nothing mapped yet) and both engines' rings in
/// VRAM. `inject` breaks the MMU deliberately.
fn setup(inject: MmuInject) -> Gpu {
    setup_traced(inject, None)
}

fn setup_traced(inject: MmuInject, trace: Option<std::path::PathBuf>) -> Gpu {
    let mut cfg = GpuConfig::new(64 * MIB);
    cfg.engines = 2;
    cfg.inject.mmu = inject;
    cfg.trace = trace;
    let mut g = Gpu::new(&cfg).unwrap();
    g.region_write(7, 0x04, &0x6u16.to_le_bytes()).unwrap();
    // Context 1 -> L3 (VRAM); the upper levels point down to L0.
    put64(&g, CTX_TABLE + 16, 1 | (1 << 5) | L3);
    put64(&g, L3 + index(VA, 3) * 8, pte::VALID | (1 << 5) | L2);
    put64(&g, L2 + index(VA, 2) * 8, pte::VALID | (1 << 5) | L1);
    put64(&g, L1 + index(VA, 1) * 8, pte::VALID | (1 << 5) | L0);
    for (off, v) in [
        (moff::CTX_BASE_LO, CTX_TABLE as u32),
        (moff::CTX_COUNT, 4),
        (moff::CTX_APERTURE, 1),
        (moff::RING_BASE_LO, FAULT_RING as u32),
        (moff::RING_SIZE, 4),
        (moff::RING_APERTURE, 1),
        (moff::CONTROL, control::ENABLE | control::FAULT_IRQ),
    ] {
        wr(&mut g, mreg(off), v);
    }
    assert_eq!(rd(&mut g, mreg(moff::STATUS)), status::ENABLED);
    for e in 0..2 {
        let ring = RINGS + e as u64 * 0x1000;
        wr(&mut g, ereg(e, eoff::RING_BASE_LO), ring as u32);
        wr(&mut g, ereg(e, eoff::RING_SIZE), SLOTS);
        wr(&mut g, ereg(e, eoff::RING_APERTURE), 1);
        wr(&mut g, ereg(e, eoff::CONTROL), econtrol::ENABLE);
    }
    g
}

/// Maps page `n` of the region (VA + n * 4 KiB) to `pa` with `perms`.
fn map4k(g: &Gpu, n: u64, pa: Addr, perms: u64) {
    let va = VA + n * 0x1000;
    put64(
        g,
        L0 + index(va, 0) * 8,
        pte::VALID | pte::LEAF | perms | (u64::from(pa.aperture.raw()) << 5) | pa.addr,
    );
}

const RW: u64 = pte::READ | pte::WRITE;

/// Queues `d` on engine `e` (its ring's next slot) and rings the trapped doorbell.
fn submit(g: &mut Gpu, e: usize, d: RawDescriptor) {
    let tail = rd(g, ereg(e, eoff::RING_TAIL));
    let slot = u64::from(tail % SLOTS);
    g.vram()
        .write(
            VramOffset(RINGS + e as u64 * 0x1000 + slot * 64),
            &d.to_bytes(),
        )
        .unwrap();
    wr(g, ereg(e, eoff::RING_TAIL), tail.wrapping_add(1));
}

/// Polls `cond` (register reads, memory) until it holds; fails after 5 s.
fn until(g: &mut Gpu, what: &str, mut cond: impl FnMut(&mut Gpu) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond(g) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn wait_head(g: &mut Gpu, e: usize, head: u32) {
    until(g, "HEAD", |g| rd(g, ereg(e, eoff::RING_HEAD)) == head);
}

fn waiting(g: &mut Gpu) -> bool {
    rd(g, mreg(moff::STATUS)) & status::WAITING != 0
}

/// The 32-byte fault record `n` of the ring.
fn record(g: &Gpu, n: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    g.vram()
        .read(VramOffset(FAULT_RING + (n % 4) * 32), &mut b)
        .unwrap();
    b
}

#[test]
fn virt_descriptors_reach_memory_through_the_page_tables() {
    let mut g = setup(MmuInject::default());
    // Pages 0-1 -> VRAM DATA + 2 pages apart (not contiguous), page 2 -> DATA + 8 KiB.
    map4k(&g, 0, vram(DATA + 0x4000), RW);
    map4k(&g, 1, vram(DATA), RW);
    map4k(&g, 2, vram(DATA + 0x2000), RW);
    let src: Vec<u8> = (0..0x1000u32).map(|i| (i * 7) as u8).collect();
    g.vram().write(VramOffset(DATA + 0x10_0000), &src).unwrap();
    // A copy spanning pages 0 and 1 (split by the translation), a fill of page 2, a fence
    // and a timestamp through VIRT.
    submit(
        &mut g,
        0,
        RawDescriptor::copy(vram(DATA + 0x10_0000), virt(VA + 0x800), 0x1000),
    );
    submit(
        &mut g,
        0,
        RawDescriptor::fill(virt(VA + 0x2000), 0x100, 0xa5a5_5a5a),
    );
    submit(&mut g, 0, RawDescriptor::fence(virt(VA + 0x2ff8), 0x1122));
    submit(&mut g, 0, RawDescriptor::timestamp(virt(VA + 0x2ff0)));
    wait_head(&mut g, 0, 4);
    let mut a = vec![0u8; 0x800];
    g.vram().read(VramOffset(DATA + 0x4800), &mut a).unwrap();
    assert_eq!(a, src[..0x800], "first half in page 0's frame");
    g.vram().read(VramOffset(DATA), &mut a).unwrap();
    assert_eq!(a, src[0x800..], "second half in page 1's frame");
    assert_eq!(
        g.vram().read_u32(VramOffset(DATA + 0x20fc)).unwrap(),
        0xa5a5_5a5a
    );
    assert_eq!(get64(&g, DATA + 0x2ff8), 0x1122);
    assert_ne!(get64(&g, DATA + 0x2ff0), 0, "timestamp");
    assert_eq!(rd(&mut g, ereg(0, eoff::ERROR_CODE)), 0);
    let m = g.env.mmu();
    assert!(m.counter(Counter::TlbMisses) >= 3, "a walk per page");
    assert!(m.counter(Counter::TlbHits) >= 1, "page 2 again");
    // The statistics registers (§9.1): TLB_MISSES at 0x368.
    assert_eq!(
        u64::from(rd(&mut g, mreg(0x68))),
        g.env.mmu().counter(Counter::TlbMisses)
    );
    // The copy counts in the direction its VIRT side translated to.
    assert_eq!(rd(&mut g, ereg(0, 0x58)), 0x1000, "BYTES_VRAM_TO_VRAM");
}

#[test]
fn a_fault_waits_until_replay_translates_again() {
    let mut g = setup(MmuInject::default());
    map4k(&g, 0, vram(DATA), RW);
    g.vram().write(VramOffset(DATA), &[0x5a; 0x1000]).unwrap();
    // Copy 2 pages; page 1 is not mapped yet.
    submit(
        &mut g,
        0,
        RawDescriptor::copy(virt(VA), vram(DATA + MIB), 0x2000).with_flags(flags::IRQ),
    );
    until(&mut g, "WAITING", waiting);
    assert_eq!(rd(&mut g, ereg(0, eoff::STATUS)), State::Running as u32);
    assert_eq!(rd(&mut g, ereg(0, eoff::RING_HEAD)), 0);
    // The record: the first faulting byte, context, engine 0, read, NOT_PRESENT at level 0.
    let r = record(&g, 0);
    assert_eq!(u64::from_le_bytes(r[0..8].try_into().unwrap()), VA + 0x1000);
    assert_eq!(u16::from_le_bytes([r[8], r[9]]), CTX);
    assert_eq!((r[0x0a], r[0x0b], r[0x0c], r[0x0d]), (0, 0, 1, 0));
    assert_eq!(
        u32::from_le_bytes(r[0x18..0x1c].try_into().unwrap()),
        0,
        "seq"
    );
    assert_ne!(u64::from_le_bytes(r[0x10..0x18].try_into().unwrap()), 0);
    assert_eq!(g.env.doorbell().load_u32(DB_FAULT_PUT), Some(1));
    assert_eq!(rd(&mut g, mreg(moff::FAULT_PUT)), 1);
    assert!(g.msix().is_pending(3), "the fault vector, 1 + ENGINE_COUNT");
    assert_eq!(rd(&mut g, mreg(moff::FAULT_VECTOR)), 3);
    // The chunk was translated as a whole before anything moved.
    assert_eq!(g.vram().read_u32(VramOffset(DATA + MIB)).unwrap(), 0);
    // A replay without a fix faults again: a second record.
    g.env.doorbell().store_u32(DB_FAULT_GET, 1);
    submit(&mut g, 1, RawDescriptor::fault_replay(CTX, false));
    wait_head(&mut g, 1, 1);
    until(&mut g, "a second record", |g| {
        rd(g, mreg(moff::FAULT_PUT)) == 2
    });
    assert!(waiting(&mut g));
    assert_eq!(record(&g, 1)[0x18], 1, "seq 1");
    // The driver maps the page and replays all contexts: the copy completes.
    map4k(&g, 1, vram(DATA + 0x1000), RW);
    g.vram()
        .write(VramOffset(DATA + 0x1000), &[0x6b; 0x1000])
        .unwrap();
    submit(&mut g, 1, RawDescriptor::fault_replay(CONTEXT_ALL, false));
    wait_head(&mut g, 0, 1);
    assert!(!waiting(&mut g));
    assert_eq!(
        g.vram().read_u32(VramOffset(DATA + MIB)).unwrap(),
        0x5a5a_5a5a
    );
    assert_eq!(
        g.vram().read_u32(VramOffset(DATA + MIB + 0x1ffc)).unwrap(),
        0x6b6b_6b6b
    );
    assert_eq!(rd(&mut g, ereg(0, eoff::ERROR_CODE)), 0);
    let m = g.env.mmu();
    assert_eq!(
        (m.counter(Counter::Faults), m.counter(Counter::Replays)),
        (2, 2)
    );
}

#[test]
fn cancel_stops_the_engine_with_translation_and_no_aer() {
    let mut g = setup(MmuInject::default());
    submit(&mut g, 0, RawDescriptor::fill(virt(VA + 0x40), 64, 1));
    until(&mut g, "WAITING", waiting);
    assert_eq!(record(&g, 0)[0x0b], 1, "a write");
    submit(&mut g, 1, RawDescriptor::fault_replay(CTX, true));
    until(&mut g, "ERROR", |g| {
        rd(g, ereg(0, eoff::STATUS)) == State::Error as u32
    });
    assert_eq!(rd(&mut g, ereg(0, eoff::ERROR_CODE)), 9, "TRANSLATION");
    assert_eq!(rd(&mut g, ereg(0, eoff::ERROR_ADDR_LO)), (VA + 0x40) as u32);
    assert_eq!(
        rd(&mut g, ereg(0, eoff::ERROR_ADDR_HI)),
        ((VA + 0x40) >> 32) as u32
    );
    let i = rd(&mut g, ereg(0, eoff::ERROR_INFO));
    assert_eq!(i & info::APERTURE_MASK, 3, "VIRT");
    assert_ne!(i & info::WRITE, 0);
    assert_eq!(i & info::FETCH, 0);
    assert_eq!(rd(&mut g, 0xa0), 1, "ERR_CAUSE");
    assert!(g.msix().is_pending(0), "vector 0");
    let cs = g.pci().config();
    assert_eq!(cs.get_u32(0x104), 0, "no AER uncorrectable status");
    assert_eq!(cs.get_u16(0x6a), 0, "no PCIe Device Status bits");
    assert_eq!(cs.get_u16(0x06) & 0xf900, 0, "no config Status error bits");
    assert_eq!(g.env.mmu().counter(Counter::Cancels), 1);
}

#[test]
fn disabling_the_mmu_cancels_and_resets_abandon_the_wait() {
    let mut g = setup(MmuInject::default());
    submit(&mut g, 0, RawDescriptor::fence(virt(VA), 1));
    until(&mut g, "WAITING", waiting);
    wr(&mut g, mreg(moff::CONTROL), 0);
    until(&mut g, "ERROR", |g| {
        rd(g, ereg(0, eoff::STATUS)) == State::Error as u32
    });
    assert_eq!(rd(&mut g, ereg(0, eoff::ERROR_CODE)), 9);
    // With the MMU disabled VIRT is refused at decode.
    wr(&mut g, ereg(0, eoff::CONTROL), econtrol::RESET);
    wr(&mut g, ereg(0, eoff::RING_BASE_LO), RINGS as u32);
    wr(&mut g, ereg(0, eoff::RING_SIZE), SLOTS);
    wr(&mut g, ereg(0, eoff::RING_APERTURE), 1);
    wr(&mut g, ereg(0, eoff::CONTROL), econtrol::ENABLE);
    submit(&mut g, 0, RawDescriptor::fence(virt(VA), 1));
    until(&mut g, "ERROR", |g| {
        rd(g, ereg(0, eoff::STATUS)) == State::Error as u32
    });
    assert_eq!(rd(&mut g, ereg(0, eoff::ERROR_CODE)), 4, "BAD_DESCRIPTOR");
    // An engine reset abandons a waiting descriptor (no error).
    wr(&mut g, mreg(moff::CONTROL), control::ENABLE);
    submit(&mut g, 1, RawDescriptor::fence(virt(VA), 1));
    until(&mut g, "WAITING", waiting);
    wr(&mut g, ereg(1, eoff::CONTROL), econtrol::RESET);
    assert_eq!(rd(&mut g, ereg(1, eoff::STATUS)), State::Disabled as u32);
    assert_eq!(rd(&mut g, ereg(1, eoff::ERROR_CODE)), 0);
    assert!(!waiting(&mut g));
    // SOFT_RESET: every MMU register back to reset, statistics kept.
    wr(&mut g, ereg(1, eoff::RING_BASE_LO), (RINGS + 0x1000) as u32);
    wr(&mut g, ereg(1, eoff::RING_SIZE), SLOTS);
    wr(&mut g, ereg(1, eoff::RING_APERTURE), 1);
    wr(&mut g, ereg(1, eoff::CONTROL), econtrol::ENABLE);
    submit(&mut g, 1, RawDescriptor::fence(virt(VA), 1));
    until(&mut g, "WAITING", waiting);
    let faults = g.env.mmu().counter(Counter::Faults);
    wr(&mut g, 0x40, 0x5253_5421);
    assert_eq!(rd(&mut g, ereg(1, eoff::STATUS)), State::Disabled as u32);
    assert_eq!(rd(&mut g, mreg(moff::STATUS)), 0);
    assert_eq!(rd(&mut g, mreg(moff::CONTROL)), 0);
    assert_eq!(rd(&mut g, mreg(moff::CTX_COUNT)), 0);
    assert_eq!(rd(&mut g, mreg(moff::FAULT_PUT)), 0);
    assert_eq!(u64::from(rd(&mut g, mreg(moff::STATS))), faults);
}

#[test]
fn atomic_needs_the_atomic_bit_on_sys_only() {
    let mut g = setup(MmuInject::default());
    let f = memfd(MIB);
    g.dma_map(DmaMapping {
        iova: RAM,
        size: MIB,
        file_offset: 0,
        prot: DmaProt {
            read: true,
            write: true,
        },
        fd: Some(f.try_clone().unwrap().into()),
    })
    .unwrap();
    // Page 0 -> VRAM (no ATOMIC bit needed), page 1 -> SYS without ATOMIC, page 2 -> SYS with.
    map4k(&g, 0, vram(DATA), RW);
    map4k(&g, 1, sys(RAM), RW);
    map4k(&g, 2, sys(RAM + 0x1000), RW | pte::ATOMIC);
    put64(&g, DATA + 8, 40);
    submit(
        &mut g,
        0,
        RawDescriptor::atomic(virt(VA + 8), vram(DATA + 0x100), 2),
    );
    wait_head(&mut g, 0, 1);
    assert_eq!((get64(&g, DATA + 8), get64(&g, DATA + 0x100)), (42, 40));
    // SYS with ATOMIC: a host atomic on the mapped memfd.
    use std::os::unix::fs::FileExt;
    f.write_all_at(&u64::MAX.to_le_bytes(), 0x1010).unwrap();
    submit(
        &mut g,
        0,
        RawDescriptor::atomic(virt(VA + 0x2010), virt(VA + 0x10), 3),
    );
    wait_head(&mut g, 0, 2);
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, 0x1010).unwrap();
    assert_eq!(u64::from_le_bytes(b), 2, "wrapped");
    assert_eq!(get64(&g, DATA + 0x10), u64::MAX, "old value through VIRT");
    // SYS without ATOMIC: PROTECTION, access atomic.
    submit(
        &mut g,
        0,
        RawDescriptor::atomic(virt(VA + 0x1000), vram(DATA + 0x100), 1),
    );
    until(&mut g, "WAITING", waiting);
    let r = record(&g, 0);
    assert_eq!(
        (r[0x0b], r[0x0c], r[0x0d]),
        (2, 2, 0),
        "atomic, PROTECTION, L0"
    );
    // Granting it and replaying completes the atomic.
    map4k(&g, 1, sys(RAM), RW | pte::ATOMIC);
    submit(&mut g, 1, RawDescriptor::fault_replay(CTX, false));
    wait_head(&mut g, 0, 3);
    f.read_exact_at(&mut b, 0).unwrap();
    assert_eq!(u64::from_le_bytes(b), 1);

    // The injection allows it without the bit.
    let mut g = setup(MmuInject {
        ignore_atomic_perm: true,
        ..MmuInject::default()
    });
    g.dma_map(DmaMapping {
        iova: RAM,
        size: MIB,
        file_offset: 0,
        prot: DmaProt {
            read: true,
            write: true,
        },
        fd: Some(memfd(MIB).into()),
    })
    .unwrap();
    map4k(&g, 1, sys(RAM), RW);
    submit(
        &mut g,
        0,
        RawDescriptor::atomic(virt(VA + 0x1000), vram(DATA + 0x100), 1),
    );
    wait_head(&mut g, 0, 1);
    assert!(!waiting(&mut g));
}

/// hw-spec §9.3: TLB_INVALIDATE completes only after the access that used a dropped
/// translation finished. The access is a chunk reading an fd-less window through VIRT: it is
/// in flight until the test answers its DMA message, so the order is forced, not timed.
#[test]
fn invalidation_waits_for_a_chunk_in_flight() {
    let mut g = setup(MmuInject::default());
    g.dma_map(DmaMapping {
        iova: ROM,
        size: MIB,
        file_offset: 0,
        prot: DmaProt {
            read: true,
            write: false,
        },
        fd: None,
    })
    .unwrap();
    map4k(&g, 0, sys(ROM), pte::READ);
    submit(&mut g, 0, RawDescriptor::copy(virt(VA), vram(DATA), 0x1000));
    let req = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(r) = g.next_msg_dma() {
                break r;
            }
            assert!(Instant::now() < deadline, "no DMA message");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    // The chunk is in flight; the driver unmaps the page and invalidates.
    map4k(&g, 0, sys(0), 0);
    put64(&g, L0 + index(VA, 0) * 8, 0);
    submit(&mut g, 1, RawDescriptor::tlb_invalidate(CTX, VA, 0x1000));
    until(&mut g, "the invalidation to wait", |g| {
        g.env.mmu().invalidations_waiting() == 1
    });
    assert_eq!(
        rd(&mut g, ereg(1, eoff::RING_HEAD)),
        0,
        "completed with a chunk in flight"
    );
    req.reply.send(Ok(vec![0x77; 0x1000])).unwrap();
    wait_head(&mut g, 0, 1);
    wait_head(&mut g, 1, 1);
    assert_eq!(g.vram().read_u32(VramOffset(DATA)).unwrap(), 0x7777_7777);
    assert_eq!(g.env.mmu().counter(Counter::Invalidations), 1);
    // The translation is gone: the same copy faults now.
    submit(&mut g, 0, RawDescriptor::copy(virt(VA), vram(DATA), 0x1000));
    until(&mut g, "WAITING", waiting);
}

/// `mmu-stale-tlb`: the invalidation completes but the old translation is still used.
#[test]
fn stale_tlb_injection_keeps_using_the_old_translation() {
    let mut g = setup(MmuInject {
        stale_tlb: true,
        ..MmuInject::default()
    });
    map4k(&g, 0, vram(DATA), RW);
    submit(&mut g, 0, RawDescriptor::fence(virt(VA), 1));
    wait_head(&mut g, 0, 1);
    put64(&g, L0 + index(VA, 0) * 8, 0);
    submit(&mut g, 0, RawDescriptor::tlb_invalidate(CONTEXT_ALL, 0, 0));
    submit(&mut g, 0, RawDescriptor::fence(virt(VA), 2));
    wait_head(&mut g, 0, 3);
    assert_eq!(get64(&g, DATA), 2, "written through the stale entry");
    assert!(!waiting(&mut g));
}

/// hw-spec §9.6: an `op=FAULT` line per record, and a `target=virt:<ctx>` line before the
/// target's own line of every translated access.
#[test]
fn faults_and_translated_accesses_are_traced() {
    let dir = std::env::temp_dir().join(format!("vugpu-mmu-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("mmu.trace");
    let mut g = setup_traced(MmuInject::default(), Some(trace.clone()));
    submit(&mut g, 0, RawDescriptor::fence(virt(VA + 0x1008), 7));
    until(&mut g, "WAITING", waiting);
    map4k(&g, 1, vram(DATA + 0x3000), RW);
    submit(&mut g, 1, RawDescriptor::fault_replay(CTX, false));
    wait_head(&mut g, 0, 1);
    // A cancelled one: only its virtual line, with result=fault.
    submit(&mut g, 0, RawDescriptor::fence(virt(VA + 0x2000), 7));
    until(&mut g, "WAITING", waiting);
    submit(&mut g, 1, RawDescriptor::fault_replay(CTX, true));
    until(&mut g, "ERROR", |g| {
        rd(g, ereg(0, eoff::STATUS)) == State::Error as u32
    });
    drop(g);
    let text = std::fs::read_to_string(&trace).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let lines: Vec<&str> = text.lines().collect();
    let fault = lines
        .iter()
        .position(|l| {
            l.contains("eng=0 op=FAULT ctx=1 access=write addr=0x40001008 level=0 seq=0 result=NOT_PRESENT")
        })
        .unwrap_or_else(|| panic!("{text}"));
    let virt_line = lines
        .iter()
        .position(|l| {
            l.contains(
                "op=FENCE dir=write target=virt:1 addr=0x40001008 size=8 req=- used=- result=ok",
            )
        })
        .unwrap_or_else(|| panic!("{text}"));
    assert!(fault < virt_line);
    assert!(
        lines[virt_line + 1].contains(
            "op=FENCE dir=write target=vram addr=0x1003008 size=8 req=- used=- result=ok"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "op=FENCE dir=write target=virt:1 addr=0x40002000 size=8 req=- used=- result=fault"
        ),
        "{text}"
    );
}

/// `mmu-no-fault-irq`: the record and FAULT_PUT are there, the fault vector is not signalled.
#[test]
fn no_fault_irq_injection_keeps_the_fault_vector_quiet() {
    let mut g = setup(MmuInject {
        no_fault_irq: true,
        ..MmuInject::default()
    });
    submit(&mut g, 0, RawDescriptor::fence(virt(VA), 1));
    until(&mut g, "WAITING", waiting);
    assert_eq!(rd(&mut g, mreg(moff::FAULT_PUT)), 1);
    assert_eq!(record(&g, 0)[0x0c], 1, "NOT_PRESENT recorded");
    assert!(!g.msix().is_pending(3), "the fault vector was signalled");
    // Without the injection the same fault signals it (setup() enables FAULT_IRQ).
    let mut g = setup(MmuInject::default());
    submit(&mut g, 0, RawDescriptor::fence(virt(VA), 1));
    until(&mut g, "WAITING", waiting);
    assert!(g.msix().is_pending(3));
}
