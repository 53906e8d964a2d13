//! The translation seam's cost (docs/benchmarks.md): one engine's memory accesses issued
//! directly against `EngineEnv`, single-threaded, no doorbell or fence: a descriptor fetch
//! (64-byte read from guest RAM), a FENCE store into guest RAM, and chunk copies between guest RAM
//! and VRAM, each with no GPU BAR decoding (the common case) and with a peer's BAR decoding
//! elsewhere on the bus (the fabric walk), and a chunk copy into a peer's VRAM.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vugpu_backend::{
    BarDecode, ClientId, DmaPermissions, Fabric, Iova, SharedPage, Vram, VramOptions,
};
use vugpu_device::engine::desc::{Addr, Aperture};
use vugpu_device::engine::env::{EngineEnv, EnvParts, PollTiming};
use vugpu_device::msix::Msix;
use vugpu_device::pci::pcie::DeviceControl;

const MIB: u64 = 1 << 20;
const SYS: u64 = 0x1_0000_0000;
const PEER: u64 = 0x80_0000_0000;

fn sys(addr: u64) -> Addr {
    Addr {
        aperture: Aperture::Sys,
        addr,
    }
}

fn vram(addr: u64) -> Addr {
    Addr {
        aperture: Aperture::Vram,
        addr,
    }
}

fn sealed_memfd(len: u64) -> std::fs::File {
    use rustix::fs::{MemfdFlags, SealFlags};
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    let f = std::fs::File::from(rustix::fs::memfd_create(c"bench", flags).unwrap());
    f.set_len(len).unwrap();
    rustix::fs::fcntl_add_seals(&f, SealFlags::SHRINK).unwrap();
    f
}

/// One GPU's engine environment with 16 MiB of guest RAM mapped at `SYS`; with `peer`, a second
/// fabric member whose 16 MiB BAR decodes at `PEER`.
fn env(peer: bool) -> (EngineEnv, Arc<Fabric>) {
    let fabric = Fabric::new(2);
    let v = Arc::new(Vram::new(&VramOptions::memfd(16 * MIB)).unwrap());
    let me = fabric.join("gpu0", v.clone()).unwrap();
    fabric.set_client(me, Some(ClientId(1))).unwrap();
    if peer {
        let pv = Arc::new(Vram::new(&VramOptions::memfd(16 * MIB)).unwrap());
        let p = fabric.join("gpu1", pv).unwrap();
        fabric.set_client(p, Some(ClientId(1))).unwrap();
        fabric.set_bar(p, BarDecode::new(PEER, 16 * MIB)).unwrap();
    }
    let (env, _rx) = EngineEnv::new(EnvParts {
        vram: v,
        fabric: fabric.clone(),
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
        mmu: vugpu_device::mmu::Mmu::new(true, 5, vugpu_device::mmu::MmuInject::default()),
        vram_write_drop: false,
    })
    .unwrap();
    let ram = sealed_memfd(16 * MIB);
    env.dma_mut()
        .map(
            Iova(SYS),
            16 * MIB,
            0,
            DmaPermissions::READ_WRITE,
            Some(ram.into()),
        )
        .unwrap();
    (env, fabric)
}

fn seam(c: &mut Criterion) {
    let abort = AtomicBool::new(false);
    let mut g = c.benchmark_group("seam");
    for (label, peer) in [("alone", false), ("peer_decoding", true)] {
        let (e, _f) = env(peer);
        // Touch every page once.
        e.copy_chunk(vram(0), sys(SYS), MIB, &abort).unwrap();
        e.copy_chunk(sys(SYS), vram(0), MIB, &abort).unwrap();
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("fetch64", label), |b| {
            let mut buf = [0u8; 64];
            b.iter(|| {
                e.read_bytes(black_box(sys(SYS + 128)), &mut buf, &abort)
                    .unwrap()
            })
        });
        g.bench_function(BenchmarkId::new("fence_store", label), |b| {
            b.iter(|| e.store_u64(black_box(sys(SYS + 4096)), 7, &abort).unwrap())
        });
        for size in [64u64, 4096, MIB] {
            g.throughput(Throughput::Bytes(size));
            g.bench_function(
                BenchmarkId::new(format!("sys_to_vram_{label}"), size),
                |b| {
                    b.iter(|| {
                        e.copy_chunk(sys(SYS), vram(2 * MIB), black_box(size), &abort)
                            .unwrap()
                    })
                },
            );
        }
        if peer {
            for size in [64u64, 4096, MIB] {
                g.throughput(Throughput::Bytes(size));
                g.bench_function(BenchmarkId::new("vram_to_peer", size), |b| {
                    b.iter(|| {
                        e.copy_chunk(vram(0), sys(PEER + MIB), black_box(size), &abort)
                            .unwrap()
                    })
                });
                g.bench_function(BenchmarkId::new("vram_to_vram", size), |b| {
                    b.iter(|| {
                        e.copy_chunk(vram(0), vram(4 * MIB), black_box(size), &abort)
                            .unwrap()
                    })
                });
            }
        }
    }
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
    targets = seam
}
criterion_main!(benches);
