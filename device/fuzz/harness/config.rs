//! The `config_space` harness: a [`PciFunction`] alone, checked against the masks and
//! side effects of every register after each access.

use super::*;

/// What one [`config_space`] run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConfigStats {
    /// Writes accepted.
    pub writes: u64,
    /// Accesses refused (outside the 4 KiB).
    pub refused: u64,
    /// Reads.
    pub reads: u64,
    /// FLRs.
    pub flrs: u64,
    /// BAR resizes through Resizable BAR.
    pub resizes: u64,
    /// BAR sizing round trips checked.
    pub sizings: u64,
}

struct ConfigWorld {
    f: PciFunction,
    vram_size: u64,
    power_on: Vec<u8>,
    power_rw: Vec<u8>,
    /// Current RW mask per byte.
    rw: Vec<u8>,
    w1c: Vec<u8>,
    chains: (Vec<u16>, Vec<u16>),
    stats: ConfigStats,
}

const REBAR_CTL: usize = cap_offset::REBAR as usize + 8;
const PMCSR: usize = cap_offset::PM as usize + 4;

fn chains(cfg: &[u8]) -> (Vec<u16>, Vec<u16>) {
    (
        walk_standard(cfg).iter().map(|c| c.offset).collect(),
        walk_extended(cfg).iter().map(|c| c.offset).collect(),
    )
}

impl ConfigWorld {
    fn new(vram_log2: u32, vectors: u16) -> Option<Self> {
        let vram_size = 1u64 << vram_log2;
        let bars = vec![
            Bar::new(
                0,
                BarKind::Mem32 {
                    prefetchable: false,
                },
                BAR0_SIZE,
            )
            .ok()?,
            Bar::new(2, BarKind::Mem64 { prefetchable: true }, vram_size).ok()?,
        ];
        let caps: Vec<(u16, Box<dyn Capability>)> = vec![
            (cap_offset::PM, Box::new(PowerManagement)),
            (cap_offset::MSIX, Box::new(MsixCap::new(vectors)?)),
            (cap_offset::PCIE, Box::new(PciExpress)),
            (cap_offset::AER, Box::new(Aer)),
            (
                cap_offset::REBAR,
                Box::new(ResizableBar::new(2, vram_size)?),
            ),
            (
                cap_offset::DSN,
                Box::new(DeviceSerialNumber::new(0x1122_3344)),
            ),
        ];
        let f = PciFunction::new(&identity(), bars, caps).ok()?;
        let power_on = f.config().as_bytes().to_vec();
        let power_rw: Vec<u8> = (0..CONFIG_SIZE as u16)
            .map(|i| f.config().rw_mask(i, 1) as u8)
            .collect();
        let mut w1c = vec![0u8; CONFIG_SIZE as usize];
        let table = [
            (0x06usize, function::STATUS_W1C),
            (usize::from(cap_offset::PCIE) + 0x0a, pcie::DEV_STA_ERRORS),
            (usize::from(cap_offset::AER) + 0x04, aer::UNCOR_BITS),
            (usize::from(cap_offset::AER) + 0x10, aer::COR_BITS),
        ];
        for (off, bits) in table {
            for i in 0..4 {
                w1c[off + i] |= (bits >> (8 * i)) as u8;
            }
        }
        let chains = chains(&power_on);
        assert_eq!(chains.0, vec![0x40, 0x50, 0x60], "standard chain");
        assert_eq!(chains.1, vec![0x100, 0x148, 0x154], "extended chain");
        Some(ConfigWorld {
            f,
            vram_size,
            power_on,
            rw: power_rw.clone(),
            power_rw,
            w1c,
            chains,
            stats: ConfigStats::default(),
        })
    }

    fn bytes(&self) -> Vec<u8> {
        self.f.config().as_bytes().to_vec()
    }

    fn full_rw(&self) -> Vec<u8> {
        (0..CONFIG_SIZE as u16)
            .map(|i| self.f.config().rw_mask(i, 1) as u8)
            .collect()
    }

    fn rebar_size(cfg: &[u8]) -> u64 {
        MIB << ((cfg[REBAR_CTL + 1]) & 0x3f)
    }

    fn check_invariants(&self) {
        let cfg = self.bytes();
        assert_eq!(chains(&cfg), self.chains, "capability chains changed");
        assert_eq!(cfg[0x06] & 0x10, 0x10, "Capabilities List bit");
        assert_eq!(cfg[0x34], 0x40, "Capabilities Pointer");
        // BAR2 decodes what ReBAR selected, BAR0 its fixed size, and both stay well-formed.
        let sel = Self::rebar_size(&cfg);
        assert!(sel <= self.vram_size, "ReBAR selected {sel:#x}");
        assert_eq!(self.f.bar_size(2), sel, "BAR2 size vs ReBAR control");
        assert_eq!(self.f.bar_size(0), BAR0_SIZE, "BAR0 size");
        assert_eq!(cfg[0x10] & 0xf, 0, "BAR0 type bits");
        assert_eq!(cfg[0x18] & 0xf, 0xc, "BAR2 type bits");
        // Power state is D0 or D3hot.
        assert!(matches!(cfg[PMCSR] & 3, 0 | 3), "power state D1/D2");
    }

    /// A client write, with the per-byte promises of the masks checked.
    fn write(&mut self, offset: u64, data: &[u8]) {
        let before = self.bytes();
        let rw_before = self.rw.clone();
        let r = self.f.write(offset, data);
        let in_range = offset
            .checked_add(data.len() as u64)
            .is_some_and(|e| e <= CONFIG_SIZE);
        let Ok(outcome) = r else {
            assert!(
                !in_range,
                "in-range write of {} at {offset:#x} refused",
                data.len()
            );
            assert_eq!(self.bytes(), before, "refused write changed config space");
            self.stats.refused += 1;
            return;
        };
        assert!(in_range, "write of {} at {offset:#x} accepted", data.len());
        self.stats.writes += 1;
        let after = self.bytes();
        // Only BAR masks move (Resizable BAR); every 64th write checks that for all 4 KiB.
        if self.stats.writes.is_multiple_of(64) {
            self.rw = self.full_rw();
            for (pos, (a, b)) in self.rw.iter().zip(&rw_before).enumerate() {
                assert!(
                    a == b || (0x10..0x28).contains(&pos),
                    "RW mask of {pos:#x} moved"
                );
            }
        } else {
            for pos in 0x10..0x28u16 {
                self.rw[usize::from(pos)] = self.f.config().rw_mask(pos, 1) as u8;
            }
        }
        let rw_after = &self.rw;
        let start = offset as usize;
        let range = start..start + data.len();
        let resized = rw_after[0x10..0x28] != rw_before[0x10..0x28];
        if resized {
            self.stats.resizes += 1;
        }
        // FLR: reported exactly when Initiate FLR was written as 1.
        let flr_byte = usize::from(cap_offset::PCIE) + 9;
        let flr = range.contains(&flr_byte) && data[flr_byte - start] & 0x80 != 0;
        assert_eq!(outcome.flr, flr, "FLR outcome for a write at {offset:#x}");
        let msix = usize::from(cap_offset::MSIX) + 2;
        assert_eq!(
            outcome.msix_control,
            before[msix..msix + 2] != after[msix..msix + 2],
            "MSI-X control outcome"
        );
        let rebar_changed = before[REBAR_CTL + 1] & 0x3f != after[REBAR_CTL + 1] & 0x3f;
        assert_eq!(
            outcome.bar_resize.is_some(),
            rebar_changed,
            "BAR resize outcome"
        );
        if let Some((bar, size)) = outcome.bar_resize {
            assert_eq!((bar, size), (2, Self::rebar_size(&after)));
        }
        // Outside the write: only BAR2's address bits may move (a resize masks them).
        let outside_same = before[..range.start] == after[..range.start]
            && before[range.end..] == after[range.end..];
        for pos in (0..range.start).chain(range.end..CONFIG_SIZE as usize) {
            if outside_same {
                break;
            }
            if before[pos] != after[pos] {
                assert!(
                    resized && (0x18..0x20).contains(&pos),
                    "byte {pos:#x} outside a write at {offset:#x}+{} changed",
                    data.len()
                );
            }
        }
        for (pos, &d) in range.clone().zip(data) {
            let (b, a) = (before[pos], after[pos]);
            let rw = rw_before[pos];
            let w1c = self.w1c[pos];
            let ro = !(rw | w1c);
            if resized && (0x18..0x20).contains(&pos) {
                // The mask moved: the value must fit the new mask (type bits are RO).
                let type_bits = if pos == 0x18 { 0xf } else { 0 };
                assert_eq!(a & !rw_after[pos] & !type_bits, 0, "BAR2 byte {pos:#x}");
                continue;
            }
            assert_eq!(a & ro, b & ro, "RO bits of byte {pos:#x} changed");
            assert_eq!(a & w1c, b & w1c & !d, "W1C bits of byte {pos:#x}");
            let special = pos == PMCSR || (REBAR_CTL..REBAR_CTL + 4).contains(&pos);
            if !special {
                assert_eq!(a & rw, d & rw, "RW bits of byte {pos:#x}");
            } else {
                // Either the written value or (refused D1/D2 / unsupported size) the old one.
                assert!(a & rw == d & rw || a & rw == b & rw, "byte {pos:#x}");
            }
        }
        if flr {
            self.stats.flrs += 1;
            self.reset();
        }
    }

    fn reset(&mut self) {
        self.f.reset();
        self.rw = self.full_rw();
        assert_eq!(self.bytes(), self.power_on, "reset: config space");
        assert_eq!(self.rw, self.power_rw, "reset: RW masks");
    }

    fn read(&mut self, offset: u64, len: usize) {
        let mut buf = vec![0u8; len];
        let r = self.f.read(offset, &mut buf);
        let in_range = offset
            .checked_add(len as u64)
            .is_some_and(|e| e <= CONFIG_SIZE);
        assert_eq!(r.is_ok(), in_range, "read of {len} at {offset:#x}");
        if in_range {
            let start = offset as usize;
            assert_eq!(&buf[..], &self.bytes()[start..start + len]);
            self.stats.reads += 1;
        } else {
            self.stats.refused += 1;
        }
    }

    fn dword(&self, off: usize) -> u32 {
        let b = self.bytes();
        u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }

    /// BAR sizing as firmware does it: save, write all-ones, read the mask, restore.
    fn sizing(&mut self, bar: usize) {
        let off = 0x10 + 4 * bar;
        let saved = self.dword(off);
        self.write(off as u64, &[0xff; 4]);
        let got = self.dword(off);
        let size = self.f.bar_size(2);
        let expect = match bar {
            0 => !(BAR0_SIZE as u32 - 1) & 0xffff_fff0,
            2 => ((!(size - 1)) as u32 & 0xffff_fff0) | 0xc,
            3 => (!(size - 1) >> 32) as u32,
            _ => 0,
        };
        assert_eq!(got, expect, "BAR{bar} sizing read");
        self.write(off as u64, &saved.to_le_bytes());
        assert_eq!(self.dword(off), saved, "BAR{bar} restore");
        self.stats.sizings += 1;
    }

    /// Device-side error reports, as the GPU does on an engine fault.
    fn report_error(&mut self, inp: &mut Input<'_>) {
        let cs = self.f.config_mut();
        match inp.u8() % 4 {
            0 => {
                let bit = 1u32 << (inp.u8() % 32);
                let hdr = [inp.u32(), inp.u32(), inp.u32(), inp.u32()];
                aer::record_uncorrectable(cs, cap_offset::AER, bit, hdr);
            }
            1 => pcie::report_error(cs, cap_offset::PCIE, inp.u16()),
            2 => cs.set_bits(
                0x06,
                2,
                function::STATUS_RECEIVED_MASTER_ABORT | function::STATUS_SIGNALED_SYSTEM_ERROR,
            ),
            _ => cs.set_bits(cap_offset::AER + 0x10, 4, aer::COR_BITS & inp.u32()),
        }
    }

    fn step(&mut self, inp: &mut Input<'_>) {
        match inp.u8() % 8 {
            0..=2 => {
                let off = match inp.u8() % 8 {
                    0 => u64::from(inp.u8()),
                    1 => 0x100 + u64::from(inp.u8() % 0x60),
                    2 => u64::from(cap_offset::PCIE) + u64::from(inp.u8() % 0x3c),
                    3 => inp.value64(),
                    4 => CONFIG_SIZE - u64::from(inp.u8() % 9),
                    5 => REBAR_CTL as u64 + u64::from(inp.u8() % 4),
                    _ => u64::from(inp.u16() % 4096),
                };
                let len = match inp.u8() % 8 {
                    0..=2 => 1 << (inp.u8() % 3),
                    3 => 3,
                    4 => 8,
                    5 => usize::from(inp.u8() % 64),
                    6 => usize::from(inp.u16() % 4100),
                    _ => 4,
                };
                let data = match inp.u8() % 3 {
                    0 => vec![0xff; len],
                    _ => inp.bytes(len),
                };
                self.write(off, &data);
            }
            3 => {
                let off = match inp.u8() % 4 {
                    0 => inp.value64(),
                    _ => u64::from(inp.u16() % 4100),
                };
                let len = match inp.u8() % 4 {
                    0 => usize::from(inp.u16() % 4100),
                    k => 1 << k,
                };
                self.read(off, len);
            }
            4 => self.report_error(inp),
            5 => {
                let bar = usize::from(inp.u8() % 6);
                self.sizing(bar);
            }
            6 => {
                // Resizable BAR: select a size (valid or not) by writing the control byte.
                let n = inp.u8() % 40;
                self.write(REBAR_CTL as u64 + 1, &[n]);
            }
            _ => self.reset(),
        }
        self.check_invariants();
    }
}

/// Arbitrary config-space traffic against the PCI function alone. Panics on a broken invariant.
pub fn config_space(data: &[u8]) -> ConfigStats {
    let mut inp = Input::new(data);
    let vram_log2 = 20 + u32::from(inp.u8() % 28);
    let vectors = 1 + inp.u16() % 2048;
    let Some(mut w) = ConfigWorld::new(vram_log2, vectors) else {
        panic!("function with 2^{vram_log2} bytes of VRAM and {vectors} vectors not built");
    };
    w.check_invariants();
    let mut ops = 0;
    while !inp.is_empty() && ops < 256 {
        w.step(&mut inp);
        ops += 1;
    }
    w.stats
}
