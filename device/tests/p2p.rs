//! Peer-to-peer DMA between two GPUs of one process (hw-spec §6.9), through the in-repo client:
//! each GPU has its own server and client, the guest programs BAR2 with config writes, and GPU0's
//! engine copies to and from GPU1's bus address. Also the bus errors (Memory Space off, past the
//! resized BAR, a BAR at the top of the address space), the counters and the trace.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::rig::{pattern, sys, vram, Doorbell, Rig, COMMAND_BUS_MASTER, COMMAND_MEMORY};
use common::{InProcServer, MIB};
use vugpu_backend::Fabric;
use vugpu_device::engine::desc::{flags, RawDescriptor};
use vugpu_device::engine::regs::{info, offset, ErrorCode, State};
use vugpu_device::engine::{EngineMonitor, P2pReport};
use vugpu_device::gpu::{Gpu, GpuConfig};

/// Bus addresses the tests give the two BAR2s (16 MiB each, size aligned).
const BAR0_BUS: u64 = 0x40_0000_0000;
const BAR1_BUS: u64 = 0x80_0000_0000;
const VRAM: u64 = 16 * MIB;
/// Resizable BAR control, the byte holding BAR Size (hw-spec §1.4: capability at 0x148).
const REBAR_SIZE_BYTE: u64 = 0x148 + 8 + 1;

struct Pair {
    r: [Rig; 2],
    mon: [EngineMonitor; 2],
    // Dropped after the rigs (the clients), so each server sees its client go first.
    _srv: [InProcServer; 2],
}

fn config(name: &str, trace: Option<PathBuf>) -> GpuConfig {
    let mut cfg = GpuConfig::new(VRAM);
    cfg.name = name.into();
    cfg.engines = 2;
    cfg.trace = trace;
    cfg
}

/// Two GPUs in one fabric, each with its own client (Memory Space and Bus Master on, BAR2 not
/// yet programmed, so not decoding).
fn pair(trace: Option<PathBuf>) -> Pair {
    let fabric = Fabric::new(2);
    let g0 = Gpu::in_fabric(&config("gpu0", trace.clone()), &fabric).unwrap();
    let g1 = Gpu::in_fabric(&config("gpu1", trace), &fabric).unwrap();
    let mon = [g0.engine_monitor(), g1.engine_monitor()];
    let srv = [InProcServer::start_gpu(g0), InProcServer::start_gpu(g1)];
    let r = [
        Rig::new(srv[0].client(), 4 * MIB),
        Rig::new(srv[1].client(), 4 * MIB),
    ];
    Pair { r, mon, _srv: srv }
}

fn program_bar2(r: &mut Rig, base: u64) {
    r.c.region_write(7, 0x18, &(base as u32).to_le_bytes())
        .unwrap();
    r.c.region_write(7, 0x1c, &((base >> 32) as u32).to_le_bytes())
        .unwrap();
}

fn p2p_with(mon: &EngineMonitor, peer: &str) -> P2pReport {
    mon.p2p().into_iter().find(|p| p.peer == peer).unwrap()
}

#[track_caller]
fn same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i:#x}");
    }
}

/// Submits `d` with the IRQ flag on engine 0 and waits for its completion vector.
#[track_caller]
fn run_ok(r: &mut Rig, d: RawDescriptor) {
    r.submit(0, &[d.with_flags(flags::IRQ)], Doorbell::Mmap);
    assert_eq!(r.wait_vector(1, 10_000), 1, "completion");
    assert_eq!(r.reg(0, offset::STATUS), State::Idle as u32);
}

/// Submits `d` on engine 0 and expects a bus error (SYS_UNMAPPED) at `addr`; resets the engine.
#[track_caller]
fn run_bus_error(r: &mut Rig, d: RawDescriptor, addr: u64, write: bool) {
    r.submit(0, &[d], Doorbell::Mmap);
    assert_eq!(r.wait_vector(0, 10_000), 1, "vector 0 on error");
    assert_eq!(r.reg(0, offset::STATUS), State::Error as u32);
    assert_eq!(r.reg(0, offset::ERROR_CODE), ErrorCode::SysUnmapped as u32);
    assert_eq!(
        r.reg64(0, offset::ERROR_ADDR_LO),
        addr,
        "first faulting byte"
    );
    let inf = r.reg(0, offset::ERROR_INFO);
    assert_eq!(inf & info::WRITE != 0, write, "faulting side");
    // AER Uncorrectable Status: Unsupported Request (bit 20), as for any unmapped address.
    assert_ne!(r.config32(0x104) & (1 << 20), 0, "AER UR");
    r.c.region_write(7, 0x104, &u32::MAX.to_le_bytes()).unwrap();
    r.reset_engine(0);
}

#[test]
fn gpu0_engine_copies_into_and_out_of_gpu1_vram() {
    let mut p = pair(None);
    program_bar2(&mut p.r[1], BAR1_BUS);
    p.r[0].enable(0);
    // Several chunks, odd length and offset: VRAM of gpu0 -> gpu1's BAR.
    let len = 2 * MIB + 777;
    let a = pattern(5, len as usize);
    p.r[0].vram_write(0x10, &a);
    run_ok(
        &mut p.r[0],
        RawDescriptor::copy(vram(0x10), sys(BAR1_BUS + 0x3003), len),
    );
    same(&p.r[1].vram_read(0x3003, len as usize), &a, "gpu1 VRAM");
    // The reverse: gpu1's BAR -> gpu0's guest RAM and VRAM.
    let b = pattern(6, 4096);
    p.r[1].vram_write(VRAM - 4096, &b);
    let dst = common::rig::SYS_IOVA + 2 * MIB;
    run_ok(
        &mut p.r[0],
        RawDescriptor::copy(sys(BAR1_BUS + VRAM - 4096), sys(dst), 4096),
    );
    same(&p.r[0].sys_read(dst, 4096), &b, "gpu0 guest RAM");
    run_ok(
        &mut p.r[0],
        RawDescriptor::copy(sys(BAR1_BUS + VRAM - 4096), vram(8 * MIB), 4096),
    );
    same(&p.r[0].vram_read(8 * MIB, 4096), &b, "gpu0 VRAM");
    // FENCE and FILL into the peer.
    run_ok(
        &mut p.r[0],
        RawDescriptor::fence(sys(BAR1_BUS + 0x100), 0x1122_3344_5566_7788),
    );
    assert_eq!(
        p.r[1].vram_read(0x100, 8),
        0x1122_3344_5566_7788u64.to_le_bytes()
    );
    run_ok(
        &mut p.r[0],
        RawDescriptor::fill(sys(BAR1_BUS + 0x200), 64, 0xa5a5_5a5a),
    );
    assert_eq!(p.r[1].vram_read(0x200, 4), 0xa5a5_5a5au32.to_le_bytes());
    // Counters: gpu0 wrote len + 8 + 64 into gpu1 and read 2 * 4096 from it.
    let out = p2p_with(&p.mon[0], "gpu1");
    assert_eq!(out.written, len + 8 + 64);
    assert_eq!(out.read, 2 * 4096);
    let inb = p2p_with(&p.mon[1], "gpu0");
    assert_eq!((inb.peer_written, inb.peer_read), (len + 8 + 64, 2 * 4096));
    assert_eq!((inb.written, inb.read), (0, 0), "gpu1 itself moved nothing");
    assert_eq!(p2p_with(&p.mon[0], "gpu0").written, 0, "no loopback");
}

#[test]
fn gpu1_engine_copies_into_gpu0_vram() {
    let mut p = pair(None);
    program_bar2(&mut p.r[0], BAR0_BUS);
    p.r[1].enable(0);
    let a = pattern(9, 64 << 10);
    p.r[1].vram_write(0, &a);
    run_ok(
        &mut p.r[1],
        RawDescriptor::copy(vram(0), sys(BAR0_BUS + 5 * MIB), 64 << 10),
    );
    same(&p.r[0].vram_read(5 * MIB, 64 << 10), &a, "gpu0 VRAM");
    assert_eq!(p2p_with(&p.mon[1], "gpu0").written, 64 << 10);
}

#[test]
fn memory_space_off_makes_the_peer_bar_a_bus_error() {
    let mut p = pair(None);
    program_bar2(&mut p.r[1], BAR1_BUS);
    p.r[0].enable(0);
    p.r[1].set_config16(0x04, COMMAND_BUS_MASTER);
    let before = p.r[1].vram_read(0, 256);
    run_bus_error(
        &mut p.r[0],
        RawDescriptor::copy(vram(0), sys(BAR1_BUS), 256),
        BAR1_BUS,
        true,
    );
    assert_eq!(p.r[1].vram_read(0, 256), before, "nothing written");
    // Memory Space on again: the same copy goes through.
    p.r[1].set_config16(0x04, COMMAND_MEMORY | COMMAND_BUS_MASTER);
    p.r[0].vram_write(0, &[7u8; 256]);
    run_ok(
        &mut p.r[0],
        RawDescriptor::copy(vram(0), sys(BAR1_BUS), 256),
    );
    assert_eq!(p.r[1].vram_read(0, 256), vec![7u8; 256]);
}

#[test]
fn accesses_past_the_resized_bar_are_bus_errors() {
    let mut p = pair(None);
    program_bar2(&mut p.r[1], BAR1_BUS);
    // Resize gpu1's BAR2 to 1 MiB (BAR Size 0); its address stays (size aligned).
    p.r[1].c.region_write(7, REBAR_SIZE_BYTE, &[0]).unwrap();
    p.r[0].enable(0);
    p.r[0].vram_write(0, &[3u8; 64]);
    run_ok(
        &mut p.r[0],
        RawDescriptor::copy(vram(0), sys(BAR1_BUS + MIB - 32), 32),
    );
    assert_eq!(p.r[1].vram_read(MIB - 32, 32), vec![3u8; 32]);
    let before = p.r[1].vram_read(MIB - 16, 64);
    // Straddling the end: nothing of the chunk is written; the fault names the first byte past.
    run_bus_error(
        &mut p.r[0],
        RawDescriptor::copy(vram(0), sys(BAR1_BUS + MIB - 16), 32),
        BAR1_BUS + MIB,
        true,
    );
    assert_eq!(p.r[1].vram_read(MIB - 16, 64), before);
    // Reading past it too.
    run_bus_error(
        &mut p.r[0],
        RawDescriptor::copy(sys(BAR1_BUS + MIB), vram(0), 8),
        BAR1_BUS + MIB,
        false,
    );
    // Back to 16 MiB: the whole VRAM decodes again.
    p.r[1].c.region_write(7, REBAR_SIZE_BYTE, &[4]).unwrap();
    run_ok(
        &mut p.r[0],
        RawDescriptor::copy(vram(0), sys(BAR1_BUS + VRAM - 64), 64),
    );
}

#[test]
fn a_peer_bar_wins_over_an_fd_less_window_and_sends_no_message() {
    let mut p = pair(None);
    program_bar2(&mut p.r[1], BAR1_BUS);
    // QEMU announces other devices' BARs as fd-less windows; this client serves no DMA
    // message, so a copy that took that path would fail.
    p.r[0].map_fd_less(BAR1_BUS, VRAM, true);
    p.r[0].enable(0);
    let a = pattern(11, 8192);
    p.r[0].vram_write(0, &a);
    run_ok(
        &mut p.r[0],
        RawDescriptor::copy(vram(0), sys(BAR1_BUS + 4096), 8192),
    );
    same(&p.r[1].vram_read(4096, 8192), &a, "gpu1 VRAM");
    let Pair { r, _srv, .. } = p;
    drop(r);
    let [s0, _s1] = _srv;
    assert_eq!(s0.stop().stats().engine_dma_messages, 0);
}

#[test]
fn own_bar_bus_address_loops_back_to_own_vram() {
    let mut p = pair(None);
    program_bar2(&mut p.r[0], BAR0_BUS);
    p.r[0].enable(0);
    let a = pattern(12, 4096);
    p.r[0].vram_write(0, &a);
    run_ok(
        &mut p.r[0],
        RawDescriptor::copy(vram(0), sys(BAR0_BUS + 3 * MIB), 4096),
    );
    same(&p.r[0].vram_read(3 * MIB, 4096), &a, "own VRAM");
    let me = p2p_with(&p.mon[0], "gpu0");
    assert_eq!((me.written, me.peer_written), (4096, 4096));
}

#[test]
fn bars_at_the_top_of_the_address_space() {
    let mut p = pair(None);
    p.r[0].enable(0);
    // A BAR whose last byte is the last byte of the 64-bit space does not decode.
    let top = 0u64.wrapping_sub(VRAM);
    program_bar2(&mut p.r[1], top);
    assert_eq!(p.r[1].config32(0x1c), (top >> 32) as u32, "programmed");
    run_bus_error(
        &mut p.r[0],
        RawDescriptor::copy(vram(0), sys(top), 64),
        top,
        true,
    );
    // One BAR lower it decodes, up to its last byte.
    let below = top - VRAM;
    program_bar2(&mut p.r[1], below);
    p.r[0].vram_write(0, &[9u8; 64]);
    run_ok(
        &mut p.r[0],
        RawDescriptor::copy(vram(0), sys(below + VRAM - 64), 64),
    );
    assert_eq!(p.r[1].vram_read(VRAM - 64, 64), vec![9u8; 64]);
    // Straddling its end: a bus error at the first byte past it (the top BAR's first byte).
    run_bus_error(
        &mut p.r[0],
        RawDescriptor::copy(vram(0), sys(below + VRAM - 32), 64),
        top,
        true,
    );
    // An address + length that wraps is refused before any access.
    p.r[0].submit(
        0,
        &[RawDescriptor::copy(vram(0), sys(u64::MAX - 8), 64)],
        Doorbell::Mmap,
    );
    assert_eq!(p.r[0].wait_vector(0, 10_000), 1);
    assert_eq!(
        p.r[0].reg(0, offset::ERROR_CODE),
        ErrorCode::BadDescriptor as u32
    );
}

#[test]
fn moving_the_peer_bar_while_a_copy_runs_stays_in_bounds() {
    let mut p = pair(None);
    program_bar2(&mut p.r[1], BAR1_BUS);
    p.r[0].enable(0);
    let a = pattern(13, VRAM as usize);
    p.r[0].vram_write(0, &a);
    p.r[1].vram_write(0, &vec![0u8; VRAM as usize]);
    let len = VRAM;
    for round in 0..4u64 {
        // Copy the whole VRAM into the peer, and move the peer's BAR while it runs.
        p.r[0].submit(
            0,
            &[RawDescriptor::copy(vram(0), sys(BAR1_BUS), len).with_flags(flags::IRQ)],
            Doorbell::Mmap,
        );
        std::thread::sleep(Duration::from_micros(200 * round));
        program_bar2(&mut p.r[1], BAR1_BUS + 0x100_0000_0000);
        let deadline = Instant::now() + Duration::from_secs(10);
        let state = loop {
            let s = p.r[0].reg(0, offset::STATUS);
            if s == State::Idle as u32 || s == State::Error as u32 {
                break s;
            }
            assert!(Instant::now() < deadline, "copy never ended");
            std::thread::sleep(Duration::from_millis(1));
        };
        // Whatever was written went into gpu1's VRAM, whole chunks of the copy, in order.
        let got = p.r[1].vram_read(0, len as usize);
        let done = if state == State::Error as u32 {
            assert_eq!(
                p.r[0].reg(0, offset::ERROR_CODE),
                ErrorCode::SysUnmapped as u32
            );
            let at = p.r[0].reg64(0, offset::ERROR_ADDR_LO);
            assert!(
                at >= BAR1_BUS && (at - BAR1_BUS).is_multiple_of(MIB),
                "{at:#x}"
            );
            at - BAR1_BUS
        } else {
            len
        };
        same(&got[..done as usize], &a[..done as usize], "chunks written");
        assert!(
            got[done as usize..].iter().all(|&b| b == 0),
            "nothing past the fault"
        );
        // Put things back for the next round.
        let _ = p.r[0].wait_vector(0, 0);
        let _ = p.r[0].wait_vector(1, 0);
        p.r[0].reset_engine(0);
        program_bar2(&mut p.r[1], BAR1_BUS);
        p.r[1].vram_write(0, &vec![0u8; VRAM as usize]);
    }
    // The server still serves both devices.
    assert_eq!(p.r[1].config32(0x18) & !0xf, BAR1_BUS as u32);
}

#[test]
fn trace_lines_name_the_gpu_and_the_peer() {
    let dir = common::temp_dir("p2p-trace");
    let trace = dir.join("trace.txt");
    let mut p = pair(Some(trace.clone()));
    program_bar2(&mut p.r[1], BAR1_BUS);
    p.r[0].enable(0);
    run_ok(
        &mut p.r[0],
        RawDescriptor::copy(vram(0), sys(BAR1_BUS + 64), 64),
    );
    let text = std::fs::read_to_string(&trace).unwrap();
    let want = format!(
        "gpu=gpu0 eng=0 slot=0 op=COPY dir=write target=peer:gpu1 addr={:#x} size=64",
        BAR1_BUS + 64
    );
    assert!(text.lines().any(|l| l.contains(&want)), "{text}");
    assert!(text
        .lines()
        .any(|l| l.contains("gpu=gpu0 eng=0 slot=0 op=COPY dir=read target=vram")));
    let _ = std::fs::remove_dir_all(&dir);
}
