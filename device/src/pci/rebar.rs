//! Resizable BAR extended capability (ID 0x0015, version 1), hw-spec §1.4.
//!
//! ```text
//! +0x04 Capability  bit (n + 4) set: BAR size 2^n MiB supported (1 MiB .. max)
//! +0x08 Control     bits 2:0 BAR Index (RO), 7:5 Number of Resizable BARs (RO, 1),
//!                   13:8 BAR Size (RW: n = 2^n MiB; unsupported values are ignored)
//! ```
//! A size change is reported to the function, which moves the BAR's sizing mask.

use super::capability::{CapId, CapWrite, Capability};
use super::config_space::{ConfigSpace, ConfigSpaceError, Register};

/// Capability register offset.
pub const REBAR_CAP: u16 = 0x04;
/// Control register offset.
pub const REBAR_CTL: u16 = 0x08;
/// Control: BAR Size field.
pub const REBAR_CTL_SIZE: u32 = 0x3f00;
const MIB: u64 = 1 << 20;

/// One resizable BAR.
#[derive(Debug)]
pub struct ResizableBar {
    bar: u8,
    max_log2_mib: u32,
}

impl ResizableBar {
    /// BAR `bar` resizable from 1 MiB to `max_size` (a power of two, 1 MiB .. 128 TiB).
    pub fn new(bar: u8, max_size: u64) -> Option<Self> {
        if bar > 5 || !max_size.is_power_of_two() || max_size < MIB {
            return None;
        }
        let max_log2_mib = (max_size / MIB).trailing_zeros();
        (max_log2_mib <= 27).then_some(ResizableBar { bar, max_log2_mib })
    }

    fn supported(&self) -> u32 {
        (0..=self.max_log2_mib).fold(0, |acc, n| acc | (1 << (n + 4)))
    }

    /// The size selected in Control, in bytes.
    pub fn selected_size(cs: &ConfigSpace, base: u16) -> u64 {
        let n = (cs.get_u32(base + REBAR_CTL) & REBAR_CTL_SIZE) >> 8;
        MIB << n
    }
}

impl Capability for ResizableBar {
    fn name(&self) -> &'static str {
        "Resizable BAR"
    }
    fn id(&self) -> CapId {
        CapId::Extended {
            id: 0x0015,
            version: 1,
        }
    }
    fn size(&self) -> u16 {
        0x0c
    }
    fn registers(&self) -> Vec<Register> {
        let ctl = u32::from(self.bar) | (1 << 5) | (self.max_log2_mib << 8);
        vec![
            Register::ro("ReBAR Capability", REBAR_CAP, 4, self.supported()),
            Register::rw("ReBAR Control", REBAR_CTL, 4, ctl, REBAR_CTL_SIZE),
        ]
    }
    fn write(
        &self,
        cs: &mut ConfigSpace,
        base: u16,
        offset: u16,
        data: &[u8],
    ) -> Result<CapWrite, ConfigSpaceError> {
        let old = cs.get_u32(base + REBAR_CTL);
        cs.write(u64::from(offset), data)?;
        let new = cs.get_u32(base + REBAR_CTL);
        let n = (new & REBAR_CTL_SIZE) >> 8;
        if n > self.max_log2_mib {
            cs.set(base + REBAR_CTL, 4, old);
            return Ok(CapWrite::default());
        }
        Ok(CapWrite {
            bar_resize: (new != old).then_some((self.bar, MIB << n)),
            ..CapWrite::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::capability::install_chain;

    fn space(max: u64) -> (ConfigSpace, ResizableBar) {
        let mut cs = ConfigSpace::new();
        install_chain(
            &mut cs,
            vec![(0x100, Box::new(ResizableBar::new(2, max).unwrap()))],
        )
        .unwrap();
        (cs, ResizableBar::new(2, max).unwrap())
    }

    #[test]
    fn advertises_1mib_to_vram_size() {
        let (cs, _) = space(16 << 30);
        assert_eq!(cs.get_u32(0x100) & 0xffff, 0x15);
        // 1 MiB (bit 4) .. 16 GiB = 2^14 MiB (bit 18).
        assert_eq!(cs.get_u32(0x104), 0x0007_fff0);
        assert_eq!(
            cs.get_u32(0x108),
            0x0000_0e22,
            "index 2, 1 BAR, size 16 GiB"
        );
        assert_eq!(ResizableBar::selected_size(&cs, 0x100), 16 << 30);
        let (cs, _) = space(MIB);
        assert_eq!(cs.get_u32(0x104), 0x10);
        assert_eq!(cs.get_u32(0x108), 0x22);
    }

    #[test]
    fn size_changes_and_unsupported_sizes() {
        let (mut cs, cap) = space(256 * MIB);
        let w = cap.write(&mut cs, 0x100, 0x109, &[0x04]).unwrap();
        assert_eq!(w.bar_resize, Some((2, 16 * MIB)));
        assert_eq!(ResizableBar::selected_size(&cs, 0x100), 16 * MIB);
        let w = cap.write(&mut cs, 0x100, 0x109, &[0x09]).unwrap();
        assert_eq!(w.bar_resize, None, "512 MiB unsupported: ignored");
        assert_eq!(ResizableBar::selected_size(&cs, 0x100), 16 * MIB);
        let w = cap
            .write(&mut cs, 0x100, 0x108, &[0xff, 0x00, 0, 0])
            .unwrap();
        assert_eq!(w.bar_resize, Some((2, MIB)));
        assert_eq!(cs.get_u32(0x108), 0x22, "index and count RO");
        let w = cap
            .write(&mut cs, 0x100, 0x108, &[0x22, 0x00, 0, 0])
            .unwrap();
        assert_eq!(w.bar_resize, None, "same size: no change");
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(ResizableBar::new(6, MIB).is_none());
        assert!(ResizableBar::new(2, 3 * MIB).is_none());
        assert!(ResizableBar::new(2, MIB / 2).is_none());
        assert!(ResizableBar::new(2, MIB << 28).is_none());
        assert!(ResizableBar::new(2, MIB << 27).is_some());
    }
}
