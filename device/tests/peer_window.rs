//! Peer windows (hw-spec §6.10) end to end through the in-repo client: a bus range the client
//! never DMA_MAPped (like an emulated NVMe CMB, which QEMU does not announce) is reached with
//! DMA_READ/DMA_WRITE messages once the driver opens a peer window over it, and is a bus error
//! (`SYS_UNMAPPED`) otherwise.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::rig::{pattern, sys, vram, Doorbell, Rig, RING_AREA, SYS_IOVA};
use common::{InProcServer, MIB};
use vugpu_device::ctl;
use vugpu_device::engine::desc::{flags, RawDescriptor};
use vugpu_device::engine::peer_window::{
    BASE_HI, BASE_LO, CONTROL, CONTROL_ENABLE, CONTROL_READ, CONTROL_REFUSED, CONTROL_WRITE,
    REGS_BASE, REGS_STRIDE, SIZE_HI, SIZE_LO,
};
use vugpu_device::engine::regs::{offset, ErrorCode};
use vugpu_device::gpu::{Gpu, GpuConfig};

const DATA: u64 = SYS_IOVA + RING_AREA;
/// Where the unannounced peer BAR sits (the guest `p2p` suite's CMB bus address).
const CMB: u64 = 0xe002_0000;
const CMB_SIZE: u64 = 256 * 1024;
const RW: u32 = CONTROL_ENABLE | CONTROL_READ | CONTROL_WRITE;

/// The peer's BAR: what the client executes DMA messages against (QEMU would use the device's
/// bus-master address space).
struct PeerBar {
    bytes: Arc<Mutex<Vec<u8>>>,
    writes: Arc<Mutex<Vec<(u64, usize)>>>,
}

impl vugpu_protocol::DmaHandler for PeerBar {
    fn dma_read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), i32> {
        let m = self.bytes.lock().unwrap();
        let a = addr.checked_sub(CMB).ok_or(libc::EFAULT)? as usize;
        buf.copy_from_slice(m.get(a..a + buf.len()).ok_or(libc::EFAULT)?);
        Ok(())
    }
    fn dma_write(&mut self, addr: u64, data: &[u8]) -> Result<(), i32> {
        self.writes.lock().unwrap().push((addr, data.len()));
        let mut m = self.bytes.lock().unwrap();
        let a = addr.checked_sub(CMB).ok_or(libc::EFAULT)? as usize;
        m.get_mut(a..a + data.len())
            .ok_or(libc::EFAULT)?
            .copy_from_slice(data);
        Ok(())
    }
}

fn win_reg(w: usize, reg: u32) -> u64 {
    REGS_BASE + REGS_STRIDE * w as u64 + u64::from(reg)
}

fn set_dev_reg(r: &mut Rig, off: u64, v: u32) {
    r.c.region_write(0, off, &v.to_le_bytes()).unwrap();
}

fn program(r: &mut Rig, w: usize, base: u64, size: u64, control: u32) {
    set_dev_reg(r, win_reg(w, BASE_LO), base as u32);
    set_dev_reg(r, win_reg(w, BASE_HI), (base >> 32) as u32);
    set_dev_reg(r, win_reg(w, SIZE_LO), size as u32);
    set_dev_reg(r, win_reg(w, SIZE_HI), (size >> 32) as u32);
    set_dev_reg(r, win_reg(w, CONTROL), control);
}

/// Serves DMA messages until engine 0 completes (vector 1) or fails (vector 0): true if it
/// completed.
fn pump(r: &mut Rig) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = r.c.serve_one(Duration::from_millis(5));
        if r.vectors[1].read().is_ok() {
            return true;
        }
        if r.vectors[0].read().is_ok() {
            return false;
        }
        assert!(Instant::now() < deadline, "engine never finished");
    }
}

/// Submits `descs` (the last one with IRQ) on engine 0 and expects `SYS_UNMAPPED` at `at`;
/// then resets the engine.
#[track_caller]
fn expect_unmapped(r: &mut Rig, descs: &[RawDescriptor], at: u64) {
    r.submit(0, descs, Doorbell::Mmap);
    assert!(!pump(r), "the access must fail");
    assert_eq!(r.reg(0, offset::ERROR_CODE), ErrorCode::SysUnmapped as u32);
    assert_eq!(r.reg64(0, offset::ERROR_ADDR_LO), at);
    // AER Unsupported Request, as for any bus error.
    assert_ne!(r.config32(0x104) & (1 << 20), 0);
    r.reset_engine(0);
}

#[test]
fn peer_window_reaches_an_unannounced_bar_with_dma_messages() {
    let gpu = Gpu::new(&GpuConfig::new(64 * MIB)).unwrap();
    let monitor = gpu.engine_monitor();
    let srv = InProcServer::start_gpu(gpu);
    let mut r = Rig::new(srv.client(), 32 * MIB);
    let orig = pattern(5, CMB_SIZE as usize);
    let bytes = Arc::new(Mutex::new(vec![0u8; CMB_SIZE as usize]));
    let writes = Arc::new(Mutex::new(Vec::new()));
    r.c.set_dma_handler(Box::new(PeerBar {
        bytes: bytes.clone(),
        writes: writes.clone(),
    }));
    r.sys_write(DATA, &orig);
    r.enable(0);

    // No window: a bus error, as before peer windows existed.
    let len = 150 * 1024;
    let to_cmb = RawDescriptor::copy(sys(DATA), sys(CMB + 0x1000), len).with_flags(flags::IRQ);
    expect_unmapped(&mut r, &[to_cmb], CMB + 0x1000);
    assert!(writes.lock().unwrap().is_empty());

    // Open window 1 over the BAR: system -> peer, peer -> VRAM, a FENCE into the peer.
    program(&mut r, 1, CMB, CMB_SIZE, RW);
    assert_eq!(r.dev_reg(win_reg(1, BASE_LO)), CMB as u32);
    assert_eq!(r.dev_reg(win_reg(1, SIZE_LO)), CMB_SIZE as u32);
    assert_eq!(r.dev_reg(win_reg(1, CONTROL)), RW);
    r.submit(
        0,
        &[
            RawDescriptor::copy(sys(DATA), sys(CMB + 0x1000), len),
            RawDescriptor::copy(sys(CMB + 0x1000), vram(0x10_0000), len),
            RawDescriptor::fence(sys(CMB), 0x1122_3344_5566_7788).with_flags(flags::IRQ),
        ],
        Doorbell::Mmap,
    );
    assert!(pump(&mut r), "error {:#x}", r.reg(0, offset::ERROR_CODE));
    let m = bytes.lock().unwrap().clone();
    let l = len as usize;
    assert!(m[0x1000..0x1000 + l] == orig[..l], "system -> peer bytes");
    assert!(r.vram_read(0x10_0000, l) == orig[..l], "peer -> VRAM bytes");
    assert_eq!(
        u64::from_le_bytes(m[..8].try_into().unwrap()),
        0x1122_3344_5566_7788
    );
    // Chunked like any fd-less window: 64 KiB messages, then the 8-byte fence.
    let w = writes.lock().unwrap().clone();
    assert_eq!(
        w,
        vec![
            (CMB + 0x1000, 0x1_0000),
            (CMB + 0x1_1000, 0x1_0000),
            (CMB + 0x2_1000, l - 0x2_0000),
            (CMB, 8)
        ]
    );

    // Counted per window (vugpu stats), bytes of the messages that succeeded.
    let w1 = &monitor.peer_windows()[1];
    assert_eq!((w1.read, w1.written), (len, len + 8));
    assert_eq!((w1.base, w1.size, w1.control), (CMB, CMB_SIZE, RW));
    let stats: serde_json::Value = serde_json::from_str(&ctl::answer("stats", &monitor)).unwrap();
    assert_eq!(stats["peer_windows"][1]["written"], len + 8);
    assert_eq!(stats["peer_windows"].as_array().unwrap().len(), 4);

    // An access crossing the window's end, or starting before it: a bus error at its start.
    expect_unmapped(
        &mut r,
        &[RawDescriptor::copy(sys(DATA), sys(CMB + CMB_SIZE - 8), 16).with_flags(flags::IRQ)],
        CMB + CMB_SIZE - 8,
    );
    expect_unmapped(
        &mut r,
        &[RawDescriptor::copy(sys(CMB - 8), vram(0), 16).with_flags(flags::IRQ)],
        CMB - 8,
    );

    // Read-only: reads pass, writes are bus errors.
    set_dev_reg(&mut r, win_reg(1, CONTROL), CONTROL_ENABLE | CONTROL_READ);
    r.submit(
        0,
        &[RawDescriptor::copy(sys(CMB + 0x1000), vram(0), 64).with_flags(flags::IRQ)],
        Doorbell::Mmap,
    );
    assert!(pump(&mut r));
    expect_unmapped(
        &mut r,
        &[RawDescriptor::copy(vram(0), sys(CMB + 0x1000), 64).with_flags(flags::IRQ)],
        CMB + 0x1000,
    );

    // BASE and SIZE are locked while enabled; disabled: a bus error again.
    set_dev_reg(&mut r, win_reg(1, BASE_LO), 0);
    assert_eq!(r.dev_reg(win_reg(1, BASE_LO)), CMB as u32);
    set_dev_reg(&mut r, win_reg(1, CONTROL), 0);
    expect_unmapped(
        &mut r,
        &[RawDescriptor::copy(sys(CMB), vram(0), 64).with_flags(flags::IRQ)],
        CMB,
    );

    // A window wrapping the address space is refused and stays disabled.
    program(&mut r, 2, u64::MAX - 0xfff, 0x1000, RW);
    assert_eq!(
        r.dev_reg(win_reg(2, CONTROL)),
        CONTROL_READ | CONTROL_WRITE | CONTROL_REFUSED
    );

    // DMA_MAP windows win: a peer window over guest RAM changes nothing there.
    program(&mut r, 0, SYS_IOVA, 32 * MIB, RW);
    let n = writes.lock().unwrap().len();
    r.vram_write(0, &orig[..4096]);
    r.submit(
        0,
        &[RawDescriptor::copy(vram(0), sys(DATA + MIB), 4096).with_flags(flags::IRQ)],
        Doorbell::Mmap,
    );
    assert!(pump(&mut r));
    assert!(r.sys_read(DATA + MIB, 4096) == orig[..4096]);
    assert_eq!(
        writes.lock().unwrap().len(),
        n,
        "no message for mapped memory"
    );

    // SOFT_RESET (like FLR) closes every window.
    program(&mut r, 1, CMB, CMB_SIZE, RW);
    set_dev_reg(&mut r, 0x40, 0x5253_5421);
    for reg in [BASE_LO, BASE_HI, SIZE_LO, SIZE_HI, CONTROL] {
        assert_eq!(r.dev_reg(win_reg(1, reg)), 0);
    }
    r.enable(0);
    expect_unmapped(
        &mut r,
        &[RawDescriptor::copy(sys(CMB), vram(0), 64).with_flags(flags::IRQ)],
        CMB,
    );

    // So does an FLR (PCIe Device Control bit 15).
    program(&mut r, 2, CMB, CMB_SIZE, RW);
    assert_eq!(r.dev_reg(win_reg(2, CONTROL)), RW);
    let devctl = r.config32(0x68) as u16;
    r.set_config16(0x68, devctl | 0x8000);
    for reg in [BASE_LO, BASE_HI, SIZE_LO, SIZE_HI, CONTROL] {
        assert_eq!(r.dev_reg(win_reg(2, reg)), 0);
    }
    assert!(monitor.peer_windows().iter().all(|w| w.control == 0));
}

/// A message the peer refuses (nothing decodes there) is `MSG_DMA_FAILED`, as for an fd-less
/// window.
#[test]
fn a_refused_peer_window_message_is_msg_dma_failed() {
    let srv = InProcServer::start(GpuConfig::new(64 * MIB));
    let mut r = Rig::new(srv.client(), 32 * MIB);
    r.c.set_dma_handler(Box::new(PeerBar {
        bytes: Arc::new(Mutex::new(vec![0u8; 4096])),
        writes: Arc::new(Mutex::new(Vec::new())),
    }));
    r.enable(0);
    program(&mut r, 3, CMB, 0x10_0000, RW);
    r.submit(
        0,
        &[RawDescriptor::copy(sys(CMB + 0x8000), vram(0), 16).with_flags(flags::IRQ)],
        Doorbell::Mmap,
    );
    assert!(!pump(&mut r));
    assert_eq!(r.reg(0, offset::ERROR_CODE), ErrorCode::MsgDmaFailed as u32);
    assert_eq!(r.reg64(0, offset::ERROR_ADDR_LO), CMB + 0x8000);
    assert_eq!(r.config32(0x104), 1 << 20);
}
