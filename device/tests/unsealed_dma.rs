//! A client that shrinks a file it DMA_MAP'd cannot crash the server (ARCHITECTURE.md §5).
//!
//! A window whose fd is not sealed against shrinking is read and written with pread/pwrite, never
//! mapped: after the client truncates the file, an engine access to it stops the engine with
//! `SYS_UNMAPPED` (hw-spec §6.6) at the first byte past the end of the file, and the server keeps
//! serving. A sealed memfd (QEMU's `memory-backend-memfd`) is mapped, and the client cannot
//! shrink it. The server runs as a child process: a SIGBUS would kill it, not the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use common::rig::{pattern, sys, vram, Doorbell, Rig, COMMAND_BUS_MASTER, COMMAND_MEMORY};
use common::{memfd, sealed_memfd, InProcServer, ServerProcess, MIB};
use vugpu_backend::WindowBacking;
use vugpu_device::engine::desc::RawDescriptor;
use vugpu_device::engine::regs::{info, offset, ErrorCode, State};
use vugpu_device::gpu::GpuConfig;
use vugpu_device::regs::spec::offset as reg;
use vugpu_protocol::backend::{DmaProt, DmaUnmap};

/// IOVA of the extra window under test (guest RAM of the rig is at 4 GiB).
const WIN: u64 = 0x2_0000_0000;
const WIN_SIZE: u64 = 2 * MIB;
const RW: DmaProt = DmaProt {
    read: true,
    write: true,
};

/// Runs `descs` on engine 0 and waits until it is idle with every one completed.
fn run_ok(r: &mut Rig, descs: &[RawDescriptor]) {
    let head = r.tails[0].wrapping_add(descs.len() as u32);
    r.submit(0, descs, Doorbell::Hinted);
    assert!(r.wait_head(0, head, 10_000), "descriptors completed");
    assert_eq!(r.reg(0, offset::STATUS), State::Idle as u32);
}

/// Runs one descriptor on engine 0, expects it to fault with `SYS_UNMAPPED` at `addr`, then
/// resets the engine.
fn run_faulting(r: &mut Rig, desc: RawDescriptor, addr: u64, write: bool) {
    r.submit(0, &[desc], Doorbell::Hinted);
    assert!(r.wait_state(0, State::Error as u32, 10_000), "engine error");
    assert_eq!(r.reg(0, offset::ERROR_CODE), ErrorCode::SysUnmapped as u32);
    assert_eq!(
        r.reg64(0, offset::ERROR_ADDR_LO),
        addr,
        "first faulting byte"
    );
    let inf = r.reg(0, offset::ERROR_INFO);
    assert_eq!(inf & info::APERTURE_MASK, 0, "SYS aperture");
    assert_eq!(inf & info::WRITE != 0, write, "access direction");
    assert_eq!(inf & info::FETCH, 0, "not a descriptor fetch");
    assert!(r.wait_vector(0, 5000) >= 1, "error vector");
    r.reset_engine(0);
}

fn read_file(f: &File, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, off).unwrap();
    b
}

#[test]
fn shrunk_unsealed_window_faults_the_engine_not_the_server() {
    let mut srv = ServerProcess::spawn(&["--vram", "64M"]);
    let mut r = Rig::new(srv.client(), 4 * MIB);
    let win = memfd(WIN_SIZE);
    r.c.dma_map(WIN, WIN_SIZE, 0, RW, Some(win.as_fd()))
        .unwrap();
    r.enable(0);

    // The window works while the file is whole: VRAM -> window -> VRAM.
    let len = MIB + 17;
    let a = pattern(5, len as usize);
    r.vram_write(0, &a);
    run_ok(
        &mut r,
        &[
            RawDescriptor::copy(vram(0), sys(WIN + 3), len),
            RawDescriptor::copy(sys(WIN + 3), vram(4 * MIB), len),
        ],
    );
    assert_eq!(read_file(&win, 3, len as usize), a, "in the client's file");
    assert_eq!(r.vram_read(4 * MIB, len as usize), a, "back in VRAM");

    // The client shrinks its file to nothing behind the server's back.
    win.set_len(0).unwrap();
    run_faulting(
        &mut r,
        RawDescriptor::copy(vram(0), sys(WIN + 0x100), 4096),
        WIN + 0x100,
        true,
    );
    assert_eq!(
        win.metadata().unwrap().len(),
        0,
        "the device did not grow the file back"
    );
    run_faulting(
        &mut r,
        RawDescriptor::copy(sys(WIN + 0x40), vram(0), 64),
        WIN + 0x40,
        false,
    );
    run_faulting(&mut r, RawDescriptor::fence(sys(WIN + 8), 7), WIN + 8, true);
    assert_eq!(
        r.vram_read(0, 64),
        &a[..64],
        "the faulting read wrote nothing"
    );

    // Shrunk to 1 MiB: a copy across the new end faults at the exact first missing byte, and
    // nothing of it is written.
    win.set_len(MIB).unwrap();
    run_faulting(
        &mut r,
        RawDescriptor::copy(vram(0), sys(WIN + MIB - 4096), 8192),
        WIN + MIB,
        true,
    );
    assert_eq!(read_file(&win, MIB - 4096, 4096), vec![0; 4096]);
    assert_eq!(win.metadata().unwrap().len(), MIB);
    // What is left of the window still works.
    run_ok(
        &mut r,
        &[RawDescriptor::copy(vram(0), sys(WIN + 0x1000), 4096)],
    );
    assert_eq!(read_file(&win, 0x1000, 4096), &a[..4096]);

    // The server is alive and serving: registers, DMA_UNMAP of the broken window, device reset,
    // and new work through the rig's own window.
    assert!(
        srv.child.try_wait().unwrap().is_none(),
        "server died: {}",
        srv.log()
    );
    assert_eq!(r.dev_reg(u64::from(reg::ID)), 0x5647_5055);
    r.c.dma_unmap(DmaUnmap::Range {
        iova: WIN,
        size: WIN_SIZE,
    })
    .unwrap();
    r.c.region_write(0, u64::from(reg::SCRATCH0), &0x77u32.to_le_bytes())
        .unwrap();
    r.c.reset().unwrap();
    assert_eq!(r.dev_reg(u64::from(reg::SCRATCH0)), 0, "device reset");
    r.set_config16(0x04, COMMAND_MEMORY | COMMAND_BUS_MASTER);
    r.tails = vec![0; 16];
    r.enable(0);
    let data = common::rig::SYS_IOVA + common::rig::RING_AREA;
    r.sys_write(data, b"still serving");
    run_ok(&mut r, &[RawDescriptor::copy(sys(data), vram(200), 13)]);
    assert_eq!(r.vram_read(200, 13), b"still serving");

    drop(r);
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn sealed_window_is_mapped_and_cannot_be_shrunk() {
    let srv = InProcServer::start(GpuConfig::new(64 * MIB));
    let mut r = Rig::new(srv.client(), 4 * MIB);
    let win = sealed_memfd(WIN_SIZE);
    r.c.dma_map(WIN, WIN_SIZE, 0, RW, Some(win.as_fd()))
        .unwrap();
    r.enable(0);
    assert!(win.set_len(0).is_err(), "F_SEAL_SHRINK");
    let a = pattern(9, 3 * 4096 + 5);
    r.vram_write(0, &a);
    run_ok(
        &mut r,
        &[
            RawDescriptor::copy(vram(0), sys(WIN + 5), a.len() as u64),
            RawDescriptor::copy(sys(WIN + 5), vram(MIB), a.len() as u64),
            RawDescriptor::fence(sys(WIN + WIN_SIZE - 8), 0x1122_3344_5566_7788),
        ],
    );
    assert_eq!(read_file(&win, 5, a.len()), a);
    assert_eq!(r.vram_read(MIB, a.len()), a);
    assert_eq!(
        read_file(&win, WIN_SIZE - 8, 8),
        0x1122_3344_5566_7788u64.to_le_bytes()
    );
    // The end of the window is the end of the file: one byte further is unmapped.
    run_faulting(
        &mut r,
        RawDescriptor::copy(vram(0), sys(WIN + WIN_SIZE - 4), 8),
        WIN + WIN_SIZE,
        true,
    );

    // The device chose the access method from the seals: both the rig's guest RAM and this
    // window are sealed (as QEMU's are), so both are mapped.
    let server = srv.stop();
    let backings: Vec<_> = server
        .gpu()
        .dma()
        .windows()
        .map(|w| (w.iova.raw(), w.backing))
        .collect();
    assert_eq!(
        backings,
        [
            (common::rig::SYS_IOVA, WindowBacking::Mapped),
            (WIN, WindowBacking::Mapped)
        ]
    );
    drop(r);
}

#[test]
fn dma_map_past_the_end_of_the_file_is_refused() {
    let srv = InProcServer::start(GpuConfig::new(64 * MIB));
    let mut c = srv.client();
    for f in [memfd(MIB), sealed_memfd(MIB)] {
        let e = c.dma_map(WIN, 2 * MIB, 0, RW, Some(f.as_fd())).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "{e}");
        let e = c.dma_map(WIN, MIB, 4096, RW, Some(f.as_fd())).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "{e}");
        c.dma_map(WIN, MIB, 0, RW, Some(f.as_fd())).unwrap();
        c.dma_unmap(DmaUnmap::Range {
            iova: WIN,
            size: MIB,
        })
        .unwrap();
    }
}
