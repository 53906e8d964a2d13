//! The device MMU's cost (hw-spec §9): translations per second with TLB hits and with misses
//! (a 4-level walk through page tables in VRAM), alone (`EngineEnv::translate`) and as part of
//! a 64-byte read through the seam, against the same read with a physical VRAM address.
//! Single-threaded, directly against `EngineEnv`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vugpu_backend::{Fabric, SharedPage, Vram, VramOffset, VramOptions};
use vugpu_device::engine::desc::{Addr, Aperture};
use vugpu_device::engine::env::{EngineEnv, EnvParts, PollTiming};
use vugpu_device::mmu::regs::{control, offset as moff};
use vugpu_device::mmu::walk::{index, pte, Access};
use vugpu_device::mmu::{Mmu, MmuInject};
use vugpu_device::msix::Msix;
use vugpu_device::pci::pcie::DeviceControl;

const MIB: u64 = 1 << 20;
/// Pages mapped (4x the TLB).
const PAGES: u64 = 4096;
const VA: u64 = 0x0000_7000_0000_0000;
const CTX_TABLE: u64 = 0;
const L3: u64 = 0x1000;
const L2: u64 = 0x2000;
const L1: u64 = 0x3000;
/// 8 level-0 tables from here.
const L0: u64 = 0x4000;
const FRAMES: u64 = MIB;

fn vram(addr: u64) -> Addr {
    Addr {
        aperture: Aperture::Vram,
        addr,
    }
}

fn virt(addr: u64) -> Addr {
    Addr {
        aperture: Aperture::Virt(0),
        addr,
    }
}

fn env() -> EngineEnv {
    let fabric = Fabric::new(1);
    let v = std::sync::Arc::new(Vram::new(&VramOptions::memfd(16 * MIB)).unwrap());
    let me = fabric.join("gpu0", v.clone()).unwrap();
    let put = |at: u64, e: u64| v.write(VramOffset(at), &e.to_le_bytes()).unwrap();
    let table = |next: u64| pte::VALID | (1 << 5) | next;
    put(CTX_TABLE, 1 | (1 << 5) | L3);
    put(L3 + index(VA, 3) * 8, table(L2));
    put(L2 + index(VA, 2) * 8, table(L1));
    for p in 0..PAGES {
        let va = VA + p * 4096;
        let l0 = L0 + (p / 512) * 0x1000;
        put(L1 + index(va, 1) * 8, table(l0));
        // Frames repeat every 8 MiB.
        let frame = FRAMES + (p % 2048) * 4096;
        put(
            l0 + index(va, 0) * 8,
            pte::VALID | pte::LEAF | pte::READ | pte::WRITE | (1 << 5) | frame,
        );
    }
    let (env, _rx) = EngineEnv::new(EnvParts {
        vram: v,
        fabric,
        me,
        name: "gpu0".into(),
        doorbell: SharedPage::new(0x20_1000, 0x20_0000).unwrap(),
        msix: Msix::new(4, &[]),
        dev_ctl: DeviceControl(0),
        command: 0x6,
        trace: None,
        trace_max_bytes: u64::MAX,
        dma_limits: vugpu_backend::DmaLimits::default(),
        timing: PollTiming::default(),
        mmu: Mmu::new(true, 5, MmuInject::default()),
        vram_write_drop: false,
    })
    .unwrap();
    for (r, val) in [
        (moff::CTX_BASE_LO, CTX_TABLE as u32),
        (moff::CTX_COUNT, 1),
        (moff::CTX_APERTURE, 1),
        (moff::RING_BASE_LO, 0x10_0000 - 0x1000),
        (moff::RING_SIZE, 64),
        (moff::RING_APERTURE, 1),
        (moff::CONTROL, control::ENABLE),
    ] {
        env.mmu().write(r, val, env.doorbell());
    }
    assert!(env.mmu().enabled());
    env
}

fn mmu(c: &mut Criterion) {
    let abort = AtomicBool::new(false);
    let e = env();
    let mut g = c.benchmark_group("mmu");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("translate", "tlb_hit"), |b| {
        b.iter(|| {
            e.translate(black_box(virt(VA + 128)), 8, Access::Read, &abort)
                .unwrap()
        })
    });
    let mut p = 0u64;
    g.bench_function(BenchmarkId::new("translate", "tlb_miss"), |b| {
        // 4096 pages round robin through a 1024-entry FIFO TLB: every lookup misses.
        b.iter(|| {
            p = (p + 1) % PAGES;
            e.translate(black_box(virt(VA + p * 4096)), 8, Access::Read, &abort)
                .unwrap()
        })
    });
    g.bench_function(BenchmarkId::new("translate", "chunk_1MiB_tlb_hit"), |b| {
        // One engine chunk: 256 pages, all in the TLB.
        b.iter(|| {
            e.translate(black_box(virt(VA + MIB)), MIB, Access::Read, &abort)
                .unwrap()
        })
    });
    let mut buf = [0u8; 64];
    g.bench_function(BenchmarkId::new("read64", "vram_physical"), |b| {
        b.iter(|| {
            e.read_bytes(black_box(vram(FRAMES + 128)), &mut buf, &abort)
                .unwrap()
        })
    });
    g.bench_function(BenchmarkId::new("read64", "virt_tlb_hit"), |b| {
        b.iter(|| {
            e.read_bytes(black_box(virt(VA + 128)), &mut buf, &abort)
                .unwrap()
        })
    });
    g.bench_function(BenchmarkId::new("read64", "virt_tlb_miss"), |b| {
        b.iter(|| {
            p = (p + 1) % PAGES;
            e.read_bytes(black_box(virt(VA + p * 4096 + 128)), &mut buf, &abort)
                .unwrap()
        })
    });
    g.finish();
}

fn config() -> Criterion {
    // The log as `vugpu serve` sets it up (info, rate limited, stderr): the hot paths pay for
    // their disabled debug events and their spans as they do in the server.
    let _ = vugpu_device::log::init(
        vugpu_device::log::Level::Info,
        vugpu_device::log::DEFAULT_RATE,
        vugpu_device::log::DEFAULT_BURST,
    );
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = mmu
}
criterion_main!(benches);
