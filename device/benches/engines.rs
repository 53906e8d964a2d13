//! DMA engine benchmarks (docs/benchmarks.md): copy bandwidth against plain memcpy of the same
//! sizes in the same run, peer-to-peer copies between two GPUs of one process against a local
//! VRAM copy, small-job rates through the mmapped doorbell and the trapped
//! RING_TAIL, and doorbell pickup latency with the engine spinning vs sleeping.
//!
//! The server runs in this process (event loop + engine threads) and is driven exactly as a
//! guest would drive it: descriptors written into DMA_MAP'd guest RAM, the tail stored into the
//! mmapped doorbell page, completion seen on the MSI-X eventfd or as a FENCE value in memory.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::rig::{sys, vram, Doorbell, Rig, RING_AREA, SYS_IOVA};
use common::{InProcServer, MIB};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vm_memory::{Bytes, MemoryRegionAddress};
use vugpu_device::engine::desc::{flags, RawDescriptor};
use vugpu_device::gpu::GpuConfig;

const DATA: u64 = SYS_IOVA + RING_AREA;
/// A FENCE target in guest RAM that no ring uses (engine 15's ring area; 4 engines here).
const FENCE_AT: u64 = SYS_IOVA + RING_AREA - 4096;
const SIZES: [u64; 4] = [4 << 10, 64 << 10, 1 << 20, 16 << 20];
/// A second window of system memory, backed by an unsealed memfd: the server reaches it with
/// pread/pwrite instead of a mapping (ARCHITECTURE.md §5), the price measured here.
const FILE_IOVA: u64 = 0x2_0000_0000;
const FILE_SIZE: u64 = 16 * MIB;

fn setup() -> (InProcServer, Rig, std::fs::File) {
    let srv = InProcServer::start(GpuConfig::new(64 * MIB));
    let c = srv.client();
    let mut r = Rig::new(c, 48 * MIB);
    r.enable(0);
    // Touch every page once so neither side pays first-touch faults in the measurements.
    r.sys_write(DATA, &vec![1u8; 40 * MIB as usize]);
    r.vram_write(0, &vec![2u8; 64 * MIB as usize]);
    let file = common::memfd(FILE_SIZE);
    std::os::unix::fs::FileExt::write_all_at(&file, &vec![4u8; FILE_SIZE as usize], 0).unwrap();
    r.c.dma_map(
        FILE_IOVA,
        FILE_SIZE,
        0,
        vugpu_protocol::backend::DmaProt {
            read: true,
            write: true,
        },
        Some(std::os::fd::AsFd::as_fd(&file)),
    )
    .unwrap();
    (srv, r, file)
}

/// Blocks until the eventfd fires.
fn wait_irq(r: &Rig, v: usize) {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let five_s = Timespec {
        tv_sec: 5,
        tv_nsec: 0,
    };
    loop {
        if r.vectors[v].read().is_ok() {
            return;
        }
        let mut p = [PollFd::new(&r.vectors[v], PollFlags::IN)];
        let _ = rustix::event::poll(&mut p, Some(&five_s));
    }
}

/// Spins until the FENCE value appears in guest RAM.
fn wait_fence(r: &Rig, value: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while r
        .sys
        .load::<u64>(MemoryRegionAddress(FENCE_AT - SYS_IOVA), Ordering::Acquire)
        .unwrap()
        != value
    {
        std::hint::spin_loop();
        assert!(Instant::now() < deadline, "fence {value} never arrived");
    }
}

fn copy_bandwidth(c: &mut Criterion) {
    let (_srv, mut r, _file) = setup();
    let mut fence = 0u64;
    let mut g = c.benchmark_group("copy_bandwidth");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size));
        let src = vec![3u8; size as usize];
        let mut dst = vec![0u8; size as usize];
        g.bench_with_input(BenchmarkId::new("memcpy", size), &size, |b, _| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
            })
        });
        for (name, src, dst) in [
            ("engine_sys_to_vram", sys(DATA), vram(0)),
            ("engine_vram_to_sys", vram(0), sys(DATA)),
            ("engine_unsealed_to_vram", sys(FILE_IOVA), vram(0)),
            ("engine_vram_to_unsealed", vram(0), sys(FILE_IOVA)),
        ] {
            g.bench_with_input(BenchmarkId::new(name, size), &size, |b, &n| {
                b.iter(|| {
                    fence += 1;
                    r.submit(
                        0,
                        &[
                            RawDescriptor::copy(src, dst, n),
                            RawDescriptor::fence(sys(FENCE_AT), fence),
                        ],
                        Doorbell::Mmap,
                    );
                    wait_fence(&r, fence);
                })
            });
        }
    }
    g.finish();
}

/// Bus address of the peer GPU's BAR2 in the peer-to-peer benchmark.
const PEER_BAR: u64 = 0x80_0000_0000;

/// Peer-to-peer (hw-spec §6.9): GPU A's engine copying into and out of GPU B's VRAM through B's
/// BAR2 bus address, both GPUs served by this process (one fabric), against a local VRAM -> VRAM
/// copy of the same size on the same engine in the same run.
fn p2p_copy(c: &mut Criterion) {
    let fabric = vugpu_backend::Fabric::new(2);
    let mut cfg = GpuConfig::new(64 * MIB);
    cfg.name = "gpu0".into();
    let a = vugpu_device::gpu::Gpu::in_fabric(&cfg, &fabric).unwrap();
    cfg.name = "gpu1".into();
    let b = vugpu_device::gpu::Gpu::in_fabric(&cfg, &fabric).unwrap();
    let (srv_a, srv_b) = (InProcServer::start_gpu(a), InProcServer::start_gpu(b));
    let mut r = Rig::new(srv_a.client(), 2 * MIB);
    let mut peer = Rig::new(srv_b.client(), 2 * MIB);
    peer.c
        .region_write(7, 0x18, &(PEER_BAR as u32).to_le_bytes())
        .unwrap();
    peer.c
        .region_write(7, 0x1c, &((PEER_BAR >> 32) as u32).to_le_bytes())
        .unwrap();
    r.enable(0);
    // Touch every page once so neither side pays first-touch faults in the measurements.
    r.vram_write(0, &vec![2u8; 64 * MIB as usize]);
    peer.vram_write(0, &vec![5u8; 64 * MIB as usize]);
    let mut fence = 0u64;
    let mut g = c.benchmark_group("p2p_copy");
    for size in [64 << 10, 1 << 20, 16 << 20] {
        g.throughput(Throughput::Bytes(size));
        for (name, src, dst) in [
            ("local_vram_to_vram", vram(0), vram(32 * MIB)),
            ("vram_to_peer_vram", vram(0), sys(PEER_BAR + 32 * MIB)),
            ("peer_vram_to_vram", sys(PEER_BAR), vram(32 * MIB)),
        ] {
            g.bench_with_input(BenchmarkId::new(name, size), &size, |bch, &n| {
                bch.iter(|| {
                    fence += 1;
                    r.submit(
                        0,
                        &[
                            RawDescriptor::copy(src, dst, n),
                            RawDescriptor::fence(sys(FENCE_AT), fence),
                        ],
                        Doorbell::Mmap,
                    );
                    wait_fence(&r, fence);
                })
            });
        }
    }
    g.finish();
    // Criterion's means swing with the host's load (2 shared cores): the ratios come from
    // interleaved runs instead, local / to peer / from peer one after the other, medians.
    for (size, rounds) in [(64u64 << 10, 300), (1 << 20, 150), (16 << 20, 40)] {
        let variants = [
            (vram(0), vram(32 * MIB)),
            (vram(0), sys(PEER_BAR + 32 * MIB)),
            (sys(PEER_BAR), vram(32 * MIB)),
        ];
        let mut times: [Vec<Duration>; 3] = Default::default();
        for _ in 0..rounds {
            for (k, &(src, dst)) in variants.iter().enumerate() {
                fence += 1;
                let t = Instant::now();
                r.submit(
                    0,
                    &[
                        RawDescriptor::copy(src, dst, size),
                        RawDescriptor::fence(sys(FENCE_AT), fence),
                    ],
                    Doorbell::Mmap,
                );
                wait_fence(&r, fence);
                times[k].push(t.elapsed());
            }
        }
        let gib_s = |v: &mut Vec<Duration>| {
            v.sort();
            size as f64 / v[v.len() / 2].as_secs_f64() / f64::from(1u32 << 30)
        };
        let [local, to, from] = times.each_mut().map(gib_s);
        eprintln!(
            "p2p interleaved {size} B x{rounds}: local VRAM->VRAM {local:.2} GiB/s, VRAM->peer \
             {to:.2} GiB/s (ratio {:.2}), peer->VRAM {from:.2} GiB/s (ratio {:.2})",
            to / local,
            from / local
        );
    }
}

/// How a driver learns about completion: polling a FENCE in memory vs the MSI-X eventfd.
fn completion(c: &mut Criterion) {
    let (_srv, mut r, _file) = setup();
    let mut fence = 0u64;
    let mut g = c.benchmark_group("completion");
    g.bench_function("nop_fence_poll", |b| {
        b.iter(|| {
            fence += 1;
            r.submit(
                0,
                &[RawDescriptor::fence(sys(FENCE_AT), fence)],
                Doorbell::Mmap,
            );
            wait_fence(&r, fence);
        })
    });
    g.bench_function("nop_msix_eventfd", |b| {
        b.iter(|| {
            r.submit(
                0,
                &[RawDescriptor::default().with_flags(flags::IRQ)],
                Doorbell::Mmap,
            );
            wait_irq(&r, 1);
        })
    });
    g.finish();
}

fn small_jobs(c: &mut Criterion) {
    let (_srv, mut r, _file) = setup();
    let mut fence = 0u64;
    let mut g = c.benchmark_group("small_jobs");
    let batch = 256u64;
    g.throughput(Throughput::Elements(batch));
    g.bench_function("copy64_batch256_mmap", |b| {
        b.iter(|| {
            fence += 1;
            let mut descs: Vec<RawDescriptor> = (0..batch - 1)
                .map(|k| RawDescriptor::copy(sys(DATA + k * 64), vram(k * 64), 64))
                .collect();
            descs.push(RawDescriptor::fence(sys(FENCE_AT), fence));
            r.submit(0, &descs, Doorbell::Mmap);
            wait_fence(&r, fence);
        })
    });
    g.throughput(Throughput::Elements(1));
    for (name, how) in [
        ("copy64_one_per_doorbell_mmap", Doorbell::Mmap),
        ("copy64_one_per_doorbell_register", Doorbell::Register),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                fence += 1;
                r.submit(
                    0,
                    &[
                        RawDescriptor::copy(sys(DATA), vram(0), 64),
                        RawDescriptor::fence(sys(FENCE_AT), fence),
                    ],
                    how,
                );
                wait_fence(&r, fence);
            })
        });
    }
    g.finish();
}

/// Doorbell-to-completion latency of one FENCE: back to back (the engine spins), and after an
/// idle gap of 5-7 ms, far longer than the spin window (the engine sleeps between polls, up to
/// `--engine-poll-us`), through the mmapped page or the trapped RING_TAIL (which wakes the
/// engine at once, after a socket round trip).
fn wakeup(c: &mut Criterion) {
    let (_srv, mut r, _file) = setup();
    let mut fence = 0u64;
    let mut g = c.benchmark_group("wakeup");
    g.bench_function("back_to_back_mmap", |b| {
        b.iter(|| {
            fence += 1;
            r.submit(
                0,
                &[RawDescriptor::fence(sys(FENCE_AT), fence)],
                Doorbell::Mmap,
            );
            wait_fence(&r, fence);
        })
    });
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    // 5-7 ms, uniformly spread so the submission does not phase-lock with the engine's polls.
    let mut idle_gap = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        Duration::from_micros(5000 + rng % 2000)
    };
    for (name, how) in [
        ("after_idle_mmap", Doorbell::Mmap),
        ("after_idle_register", Doorbell::Register),
        ("after_idle_hinted", Doorbell::Hinted),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    std::thread::sleep(idle_gap());
                    fence += 1;
                    let t = Instant::now();
                    r.submit(0, &[RawDescriptor::fence(sys(FENCE_AT), fence)], how);
                    wait_fence(&r, fence);
                    total += t.elapsed();
                }
                total
            })
        });
    }
    g.finish();
    // Distribution of the pickup latency (criterion reports means): 200 samples per mode.
    for (name, idle, how) in [
        ("back_to_back_mmap", false, Doorbell::Mmap),
        ("after_idle_mmap", true, Doorbell::Mmap),
        ("after_idle_register", true, Doorbell::Register),
        ("after_idle_hinted", true, Doorbell::Hinted),
        ("back_to_back_hinted", false, Doorbell::Hinted),
    ] {
        let mut samples: Vec<Duration> = (0..200)
            .map(|_| {
                if idle {
                    std::thread::sleep(idle_gap());
                }
                fence += 1;
                let t = Instant::now();
                r.submit(0, &[RawDescriptor::fence(sys(FENCE_AT), fence)], how);
                wait_fence(&r, fence);
                t.elapsed()
            })
            .collect();
        samples.sort();
        let p = |q: usize| samples[(samples.len() - 1) * q / 100];
        eprintln!(
            "wakeup percentiles {name}: p50 {:?} p90 {:?} p99 {:?} max {:?}",
            p(50),
            p(90),
            p(99),
            samples[samples.len() - 1]
        );
    }
    // CPU the server burns while idle: engines disabled vs all four enabled (polling).
    for enabled in [false, true] {
        for e in 0..4 {
            if enabled {
                r.enable(e);
            } else {
                r.set_reg(e, vugpu_device::engine::regs::offset::CONTROL, 0);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        let before = cpu_time();
        std::thread::sleep(Duration::from_secs(2));
        let used = cpu_time() - before;
        eprintln!(
            "idle server CPU with engines {}: {:.2}% of one core",
            if enabled {
                "enabled (4 polling)"
            } else {
                "disabled"
            },
            used.as_secs_f64() / 2.0 * 100.0
        );
    }
}

/// CPU time of this process (the bench thread sleeps, so this is the server's threads).
fn cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeValLike;
    let Ok(u) = getrusage(UsageWho::RUSAGE_SELF) else {
        return Duration::ZERO;
    };
    let us = u.user_time().num_microseconds() + u.system_time().num_microseconds();
    Duration::from_micros(us.max(0).unsigned_abs())
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
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = copy_bandwidth, p2p_copy, completion, small_jobs, wakeup
}
criterion_main!(benches);
