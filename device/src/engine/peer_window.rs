//! Peer windows (hw-spec §6.10): bus-address ranges the driver opens for its device towards a
//! peer the client never announced with DMA_MAP (an emulated device's MMIO BAR, e.g. an NVMe
//! CMB). A SYS access that neither a decoding GPU BAR of the fabric nor any DMA_MAP window
//! touches, and that lies entirely inside one enabled window granting it, is performed with
//! DMA_READ/DMA_WRITE messages (§6.8); the client executes them in the device's bus-master
//! address space. Anything else stays a bus error (`SYS_UNMAPPED`).
//!
//! The event loop owns the registers (BAR0 `0x0200-0x027f`); engines read the enabled windows
//! through [`PeerWindows::claim`] on the translation seam's error path only, so the common path
//! (every byte mapped) never looks at them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use serde::Serialize;
use vugpu_backend::{DmaSpace, FabricView, PeerId, Route};

/// Number of peer windows.
pub const WINDOWS: usize = 4;
/// BAR0 offset of window 0's registers.
pub const REGS_BASE: u64 = 0x0200;
/// Bytes between two windows' registers.
pub const REGS_STRIDE: u64 = 0x20;
/// End of the peer window register block.
pub const REGS_END: u64 = REGS_BASE + REGS_STRIDE * WINDOWS as u64;
/// Granularity of `BASE` and `SIZE`.
pub const PAGE: u64 = 0x1000;

/// `BASE_LO`: bits 31:12 of the base (bits 11:0 read 0).
pub const BASE_LO: u32 = 0x00;
/// `BASE_HI`.
pub const BASE_HI: u32 = 0x04;
/// `SIZE_LO`: bits 31:12 of the size (bits 11:0 read 0).
pub const SIZE_LO: u32 = 0x08;
/// `SIZE_HI`.
pub const SIZE_HI: u32 = 0x0c;
/// `CONTROL`.
pub const CONTROL: u32 = 0x10;

/// `CONTROL` bit 0: the window decodes.
pub const CONTROL_ENABLE: u32 = 1 << 0;
/// `CONTROL` bit 1: engines may read through it.
pub const CONTROL_READ: u32 = 1 << 1;
/// `CONTROL` bit 2: engines may write through it.
pub const CONTROL_WRITE: u32 = 1 << 2;
/// `CONTROL` bit 31 (RO): the last enable was refused (size 0 or `BASE + SIZE` past 2^64).
pub const CONTROL_REFUSED: u32 = 1 << 31;
const CONTROL_RW: u32 = CONTROL_ENABLE | CONTROL_READ | CONTROL_WRITE;
const LO_MASK: u32 = !(PAGE as u32 - 1);

/// The window and register offset of a BAR0 offset inside the block (`None` outside it).
pub fn decode_offset(offset: u64) -> Option<(usize, u32)> {
    if !(REGS_BASE..REGS_END).contains(&offset) {
        return None;
    }
    let rel = offset - REGS_BASE;
    let w = usize::try_from(rel / REGS_STRIDE).ok()?;
    let r = u32::try_from(rel % REGS_STRIDE).ok()?;
    Some((w, r))
}

/// An enabled window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First bus address.
    pub base: u64,
    /// Bytes (a non-zero multiple of [`PAGE`]; `base + size` does not overflow).
    pub size: u64,
    /// Reads allowed.
    pub read: bool,
    /// Writes allowed.
    pub write: bool,
}

impl Window {
    /// `[addr, addr + len)` lies inside, `len > 0`.
    fn holds(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        len > 0 && addr >= self.base && end <= self.base + self.size
    }

    fn grants(&self, write: bool) -> bool {
        if write {
            self.write
        } else {
            self.read
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Programmed {
    base: u64,
    size: u64,
    control: u32,
}

/// One window's state for `vugpu stats` (hw-spec §8.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerWindowReport {
    /// Window index.
    pub index: usize,
    /// `BASE` as programmed.
    pub base: u64,
    /// `SIZE` as programmed.
    pub size: u64,
    /// `CONTROL` as read.
    pub control: u32,
    /// Bytes engines read through the window (since the server started).
    pub read: u64,
    /// Bytes engines wrote through the window.
    pub written: u64,
}

/// The window table: registers (event loop) and enabled windows (engines).
#[derive(Debug, Default)]
pub struct PeerWindows {
    regs: Mutex<[Programmed; WINDOWS]>,
    active: RwLock<[Option<Window>; WINDOWS]>,
    any: AtomicBool,
    read: [AtomicU64; WINDOWS],
    written: [AtomicU64; WINDOWS],
}

impl PeerWindows {
    /// All windows disabled.
    pub fn new() -> Self {
        PeerWindows::default()
    }

    fn regs(&self) -> MutexGuard<'_, [Programmed; WINDOWS]> {
        self.regs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_active(&self, w: usize, window: Option<Window>) {
        let mut a = self.active.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = a.get_mut(w) {
            *slot = window;
        }
        self.any
            .store(a.iter().any(Option::is_some), Ordering::Release);
    }

    /// The enabled window `w`.
    pub fn window(&self, w: usize) -> Option<Window> {
        let a = self.active.read().unwrap_or_else(PoisonError::into_inner);
        a.get(w).copied().flatten()
    }

    /// Register read (`reg` inside window `w`'s block).
    pub fn read(&self, w: usize, reg: u32) -> u32 {
        let regs = self.regs();
        let Some(p) = regs.get(w) else {
            return 0;
        };
        match reg {
            BASE_LO => p.base as u32,
            BASE_HI => (p.base >> 32) as u32,
            SIZE_LO => p.size as u32,
            SIZE_HI => (p.size >> 32) as u32,
            CONTROL => p.control,
            _ => 0,
        }
    }

    /// Register write. `BASE` and `SIZE` are locked while the window is enabled; `CONTROL`
    /// validates at `ENABLE` 0→1 (refused: stays disabled, `REFUSED` set).
    pub fn write(&self, w: usize, reg: u32, value: u32) {
        let mut regs = self.regs();
        let Some(p) = regs.get_mut(w) else {
            return;
        };
        let enabled = p.control & CONTROL_ENABLE != 0;
        let lo = |old: u64, v: u32| (old & !0xffff_ffff) | u64::from(v & LO_MASK);
        let hi = |old: u64, v: u32| (old & 0xffff_ffff) | (u64::from(v) << 32);
        match reg {
            BASE_LO if !enabled => p.base = lo(p.base, value),
            BASE_HI if !enabled => p.base = hi(p.base, value),
            SIZE_LO if !enabled => p.size = lo(p.size, value),
            SIZE_HI if !enabled => p.size = hi(p.size, value),
            CONTROL => {
                let bits = value & CONTROL_RW;
                let window = (bits & CONTROL_ENABLE != 0)
                    .then_some(Window {
                        base: p.base,
                        size: p.size,
                        read: bits & CONTROL_READ != 0,
                        write: bits & CONTROL_WRITE != 0,
                    })
                    .filter(|win| win.size != 0 && win.base.checked_add(win.size).is_some());
                p.control = match window {
                    Some(_) => bits,
                    None if bits & CONTROL_ENABLE != 0 => {
                        (bits & !CONTROL_ENABLE) | CONTROL_REFUSED
                    }
                    None => bits,
                };
                self.set_active(w, window);
            }
            _ => {}
        }
    }

    /// Every window back to its reset state (registers 0, disabled); counters are kept.
    pub fn reset(&self) {
        let mut regs = self.regs();
        *regs = [Programmed::default(); WINDOWS];
        for w in 0..WINDOWS {
            self.set_active(w, None);
        }
    }

    /// Any window is enabled (cheap).
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// The window through which `[addr, addr + len)` is reached, if it is: inside one enabled
    /// window that grants the access, and no byte of it decoded by a GPU BAR of the fabric (for
    /// requester `me`) or covered by a DMA_MAP window (those win, hw-spec §6.10).
    pub fn claim(
        &self,
        dma: &DmaSpace,
        fabric: Option<&FabricView<'_>>,
        me: PeerId,
        addr: u64,
        len: u64,
        write: bool,
    ) -> Option<usize> {
        if !self.any() {
            return None;
        }
        let end = addr.checked_add(len)?;
        let w = self.holding(addr, len, write)?;
        // `None`: no GPU BAR decodes anywhere in the fabric.
        let decoded = fabric.is_some_and(|fabric| match fabric.route(me, addr) {
            Route::Peer { .. } => true,
            Route::Miss { next } => next.is_some_and(|n| n < end),
        });
        let mapped = dma.windows().any(|d| {
            let d_end = d.iova.raw().saturating_add(d.size);
            d.iova.raw() < end && addr < d_end
        });
        (!decoded && !mapped).then_some(w)
    }

    /// The enabled window holding all of `[addr, addr + len)` and granting the access.
    pub fn holding(&self, addr: u64, len: u64, write: bool) -> Option<usize> {
        let a = self.active.read().unwrap_or_else(PoisonError::into_inner);
        a.iter()
            .position(|win| win.is_some_and(|win| win.holds(addr, len) && win.grants(write)))
    }

    /// May a DMA message for `[addr, addr + len)` still be sent through window `w`.
    pub fn allows(&self, w: usize, addr: u64, len: u64, write: bool) -> bool {
        self.window(w)
            .is_some_and(|win| win.holds(addr, len) && win.grants(write))
    }

    /// Counts bytes moved through window `w`.
    pub fn record(&self, w: usize, write: bool, bytes: u64) {
        let c = if write { &self.written } else { &self.read };
        if let Some(c) = c.get(w) {
            c.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Every window's registers and counters.
    pub fn report(&self) -> Vec<PeerWindowReport> {
        let regs = self.regs();
        regs.iter()
            .enumerate()
            .map(|(i, p)| PeerWindowReport {
                index: i,
                base: p.base,
                size: p.size,
                control: p.control,
                read: self.read.get(i).map_or(0, |c| c.load(Ordering::Relaxed)),
                written: self.written.get(i).map_or(0, |c| c.load(Ordering::Relaxed)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(pw: &PeerWindows, w: usize, base: u64, size: u64, control: u32) {
        pw.write(w, BASE_LO, base as u32);
        pw.write(w, BASE_HI, (base >> 32) as u32);
        pw.write(w, SIZE_LO, size as u32);
        pw.write(w, SIZE_HI, (size >> 32) as u32);
        pw.write(w, CONTROL, control);
    }

    const RW: u32 = CONTROL_ENABLE | CONTROL_READ | CONTROL_WRITE;

    /// The guest driver's header (`vugpu_hw.h`) has the same layout.
    #[test]
    fn the_driver_header_agrees() {
        let header = include_str!("../../../guest-tests/kmod/vugpu_hw.h");
        let define = |name: &str| -> u64 {
            let line = header
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some(name))
                .unwrap_or_else(|| panic!("{name} missing from vugpu_hw.h"));
            let rest = line
                .split_whitespace()
                .skip(2)
                .collect::<Vec<_>>()
                .join(" ");
            let v = rest.split("/*").next().unwrap_or("").trim();
            let num = |t: &str| {
                let t = t.trim_end_matches(['U', 'L']);
                match t.strip_prefix("0x") {
                    Some(h) => u64::from_str_radix(h, 16).unwrap(),
                    None => t.parse().unwrap(),
                }
            };
            match v.strip_prefix("(1U << ") {
                Some(shift) => 1 << num(shift.trim_end_matches(')')),
                None => num(v),
            }
        };
        assert_eq!(define("VUGPU_PEER_WIN_COUNT"), WINDOWS as u64);
        assert_eq!(define("VUGPU_PEER_WIN_REGS_BASE"), REGS_BASE);
        assert_eq!(define("VUGPU_PEER_WIN_REGS_STRIDE"), REGS_STRIDE);
        assert_eq!(define("VUGPU_PEER_WIN_ALIGN"), PAGE);
        for (name, reg) in [
            ("VUGPU_PEER_WIN_BASE_LO", BASE_LO),
            ("VUGPU_PEER_WIN_BASE_HI", BASE_HI),
            ("VUGPU_PEER_WIN_SIZE_LO", SIZE_LO),
            ("VUGPU_PEER_WIN_SIZE_HI", SIZE_HI),
            ("VUGPU_PEER_WIN_CONTROL", CONTROL),
            ("VUGPU_PEER_WIN_ENABLE", CONTROL_ENABLE),
            ("VUGPU_PEER_WIN_READ", CONTROL_READ),
            ("VUGPU_PEER_WIN_WRITE", CONTROL_WRITE),
            ("VUGPU_PEER_WIN_REFUSED", CONTROL_REFUSED),
            (
                "VUGPU_CAPS_PEER_WINDOWS",
                crate::regs::spec::CAPS_PEER_WINDOWS,
            ),
            ("VUGPU_VERSION_VALUE", crate::regs::spec::VERSION_VALUE),
        ] {
            assert_eq!(define(name), u64::from(reg), "{name}");
        }
    }

    #[test]
    fn decodes_the_block() {
        assert_eq!(decode_offset(0x1fc), None);
        assert_eq!(decode_offset(0x200), Some((0, BASE_LO)));
        assert_eq!(decode_offset(0x230), Some((1, CONTROL)));
        assert_eq!(decode_offset(0x27c), Some((3, 0x1c)));
        assert_eq!(decode_offset(0x280), None);
    }

    #[test]
    fn registers_read_back_page_aligned_and_lock_while_enabled() {
        let pw = PeerWindows::new();
        program(&pw, 2, 0x1_e002_0fff, 0x2_0123, RW);
        assert_eq!(pw.read(2, BASE_LO), 0xe002_0000);
        assert_eq!(pw.read(2, BASE_HI), 1);
        assert_eq!(pw.read(2, SIZE_LO), 0x2_0000);
        assert_eq!(pw.read(2, CONTROL), RW);
        assert_eq!(
            pw.window(2),
            Some(Window {
                base: 0x1_e002_0000,
                size: 0x2_0000,
                read: true,
                write: true
            })
        );
        // Locked while enabled.
        pw.write(2, BASE_LO, 0);
        pw.write(2, SIZE_HI, 5);
        assert_eq!(pw.read(2, BASE_LO), 0xe002_0000);
        assert_eq!(pw.read(2, SIZE_HI), 0);
        // Permissions change live.
        pw.write(2, CONTROL, CONTROL_ENABLE | CONTROL_READ);
        assert!(pw.allows(2, 0x1_e002_0000, 8, false));
        assert!(!pw.allows(2, 0x1_e002_0000, 8, true));
        pw.write(2, CONTROL, 0);
        assert_eq!(pw.window(2), None);
        assert!(!pw.any());
        assert_eq!(pw.read(2, 0x14), 0);
    }

    #[test]
    fn only_whole_accesses_inside_an_enabled_window_with_permission() {
        let pw = PeerWindows::new();
        program(&pw, 0, 0xe002_0000, 0x4000, RW);
        assert_eq!(pw.holding(0xe002_0000, 0x4000, true), Some(0));
        assert_eq!(pw.holding(0xe002_3fff, 1, false), Some(0));
        // Crossing either end, empty, before.
        assert_eq!(pw.holding(0xe002_3fff, 2, true), None);
        assert_eq!(pw.holding(0xe001_ffff, 2, true), None);
        assert_eq!(pw.holding(0xe002_0000, 0, true), None);
        assert_eq!(pw.holding(0xe002_4000, 1, true), None);
        assert_eq!(pw.holding(u64::MAX, 2, true), None);
        // Permissions.
        pw.write(0, CONTROL, CONTROL_ENABLE | CONTROL_WRITE);
        assert_eq!(pw.holding(0xe002_0000, 8, false), None);
        assert_eq!(pw.holding(0xe002_0000, 8, true), Some(0));
        // Disabled.
        pw.write(0, CONTROL, CONTROL_READ | CONTROL_WRITE);
        assert_eq!(pw.holding(0xe002_0000, 8, true), None);
    }

    #[test]
    fn refuses_empty_and_wrapping_windows() {
        let pw = PeerWindows::new();
        program(&pw, 1, 0xe000_0000, 0, RW);
        assert_eq!(pw.window(1), None);
        assert_eq!(
            pw.read(1, CONTROL),
            CONTROL_READ | CONTROL_WRITE | CONTROL_REFUSED
        );
        // base + size = 2^64: refused; one page less: fine, and the last byte is reachable.
        let top = u64::MAX - PAGE + 1;
        pw.write(1, CONTROL, 0);
        program(&pw, 1, top, PAGE, RW);
        assert_eq!(pw.window(1), None);
        assert_ne!(pw.read(1, CONTROL) & CONTROL_REFUSED, 0);
        pw.write(1, CONTROL, 0);
        assert_eq!(pw.read(1, CONTROL), 0);
        program(&pw, 1, top - PAGE, PAGE, RW);
        assert!(pw.window(1).is_some());
        assert_eq!(pw.holding(top - 1, 1, true), Some(1));
        assert_eq!(pw.holding(top - 1, 2, true), None);
        // Huge size wrapping.
        pw.write(1, CONTROL, 0);
        program(&pw, 1, PAGE, !(PAGE - 1), RW);
        assert_eq!(pw.window(1), None);
    }

    /// DMA_MAP windows and decoding GPU BARs win: a peer window claims only accesses none of
    /// whose bytes they touch.
    #[test]
    fn claims_only_what_no_window_or_bar_touches() {
        use std::sync::Arc;
        use vugpu_backend::{BarDecode, ClientId, DmaPermissions, Fabric, Iova, Vram, VramOptions};
        const MIB: u64 = 1 << 20;
        let fabric = Fabric::new(2);
        let vram = |n| Arc::new(Vram::new(&VramOptions::memfd(n)).unwrap());
        let me = fabric.join("gpu0", vram(MIB)).unwrap();
        let peer = fabric.join("gpu1", vram(MIB)).unwrap();
        for p in [me, peer] {
            fabric.set_client(p, Some(ClientId(1))).unwrap();
        }
        // gpu1's BAR2 at 0xd000_0000, an fd-less DMA window at 0xc000_0000.
        fabric
            .set_bar(peer, BarDecode::new(0xd000_0000, MIB))
            .unwrap();
        let mut dma = DmaSpace::new();
        let rw = DmaPermissions {
            read: true,
            write: true,
        };
        dma.map(Iova(0xc000_0000), MIB, 0, rw, None).unwrap();
        let pw = PeerWindows::new();
        // One window over all of it.
        program(&pw, 0, 0xc000_0000, 0x2000_0000, RW);
        let view = fabric.view();
        let claim = |addr, len| pw.claim(&dma, Some(&view), me, addr, len, true);
        assert_eq!(claim(0xd800_0000, 0x1000), Some(0), "nothing else there");
        assert_eq!(
            claim(0xc010_0000, 0x1000),
            Some(0),
            "right after the DMA window"
        );
        assert_eq!(claim(0xc000_0000, 8), None, "inside the DMA window");
        assert_eq!(claim(0xc00f_fff8, 16), None, "partly in the DMA window");
        assert_eq!(claim(0xd000_0000, 8), None, "inside the peer's BAR");
        assert_eq!(claim(0xcfff_fff8, 16), None, "running into the peer's BAR");
        assert_eq!(claim(0xdfff_fff8, 16), None, "past the window's end");
        assert_eq!(claim(u64::MAX - 7, 16), None, "wrapping");
        drop(view);
        // Without a client the BAR does not decode: the window takes it.
        fabric.set_client(peer, None).unwrap();
        let view = fabric.view();
        assert_eq!(
            pw.claim(&dma, Some(&view), me, 0xd000_0000, 8, true),
            Some(0)
        );
        // Without a fabric view (no GPU BAR decodes anywhere) the window alone decides.
        assert_eq!(pw.claim(&dma, None, me, 0xd000_0000, 8, true), Some(0));
        // Disabled: nothing.
        pw.write(0, CONTROL, 0);
        assert_eq!(pw.claim(&dma, Some(&view), me, 0xd800_0000, 8, true), None);
    }

    #[test]
    fn reset_clears_registers_keeps_counters() {
        let pw = PeerWindows::new();
        program(&pw, 3, 0xe000_0000, PAGE, RW);
        pw.record(3, true, 100);
        pw.record(3, false, 7);
        pw.reset();
        assert!(!pw.any());
        assert_eq!(pw.window(3), None);
        for reg in [BASE_LO, BASE_HI, SIZE_LO, SIZE_HI, CONTROL] {
            assert_eq!(pw.read(3, reg), 0);
        }
        let r = &pw.report()[3];
        assert_eq!((r.read, r.written, r.base, r.control), (7, 100, 0, 0));
    }
}
