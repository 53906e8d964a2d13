//! Base Address Registers.
//!
//! ```text
//!  31                              4   3    2 1    0
//! +----------------------------------+----+------+---+
//! | base address (size-aligned)      | PF | type | 0 |   type 00 = 32-bit, 10 = 64-bit
//! +----------------------------------+----+------+---+   PF = prefetchable, bit 0 = memory
//! ```
//!
//! Sizing works through the masks: the address bits below the BAR size and the type bits are
//! read-only, so writing all ones reads back `!(size - 1) | type`. A 64-bit BAR uses the next
//! dword as the high half of the address; it is a plain address register whose writable bits are
//! the high half of `!(size - 1)`.

use super::config_space::{ConfigSpace, Register};

/// Offset of BAR0 in config space.
pub const BAR0_OFFSET: u16 = 0x10;
/// Number of BAR slots in a type 0 header.
pub const NUM_BARS: u8 = 6;

/// What kind of memory BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit address, one dword.
    Mem32 {
        /// Prefetchable.
        prefetchable: bool,
    },
    /// 64-bit address, two dwords (this slot and the next).
    Mem64 {
        /// Prefetchable.
        prefetchable: bool,
    },
}

/// Errors in a BAR declaration.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BarError {
    /// Size is not a power of two of at least 16 bytes, or too big for the BAR's width.
    #[error("BAR{index}: invalid size {size:#x}")]
    InvalidSize {
        /// BAR index.
        index: u8,
        /// Size.
        size: u64,
    },
    /// The index (or the high half of a 64-bit BAR) is past BAR5.
    #[error("BAR{0}: invalid index")]
    InvalidIndex(u8),
}

/// One implemented BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// Slot index (0-5).
    pub index: u8,
    /// Kind.
    pub kind: BarKind,
    /// Size in bytes at reset.
    pub size: u64,
}

impl Bar {
    /// Validates and creates a BAR.
    pub fn new(index: u8, kind: BarKind, size: u64) -> Result<Self, BarError> {
        let slots = match kind {
            BarKind::Mem32 { .. } => 1,
            BarKind::Mem64 { .. } => 2,
        };
        if index + slots > NUM_BARS {
            return Err(BarError::InvalidIndex(index));
        }
        let bar = Bar { index, kind, size };
        bar.check_size(size)?;
        Ok(bar)
    }

    fn check_size(&self, size: u64) -> Result<(), BarError> {
        let max = match self.kind {
            BarKind::Mem32 { .. } => 1 << 31,
            BarKind::Mem64 { .. } => 1 << 63,
        };
        if !size.is_power_of_two() || size < 16 || size > max {
            return Err(BarError::InvalidSize {
                index: self.index,
                size,
            });
        }
        Ok(())
    }

    /// Config-space offset of the (low) dword.
    pub fn offset(&self) -> u16 {
        BAR0_OFFSET + 4 * u16::from(self.index)
    }

    /// The read-only type bits of the low dword.
    pub fn type_bits(&self) -> u32 {
        match self.kind {
            BarKind::Mem32 { prefetchable } => u32::from(prefetchable) << 3,
            BarKind::Mem64 { prefetchable } => 0b100 | (u32::from(prefetchable) << 3),
        }
    }

    /// Is this a 64-bit BAR.
    pub fn is_64bit(&self) -> bool {
        matches!(self.kind, BarKind::Mem64 { .. })
    }

    fn masks(&self, size: u64) -> (u32, u32) {
        let mask = !(size - 1);
        ((mask as u32) & 0xffff_fff0, (mask >> 32) as u32)
    }

    /// The registers of this BAR, sized at `self.size`.
    pub fn registers(&self) -> Vec<Register> {
        let (lo, hi) = self.masks(self.size);
        let mut regs = vec![Register::rw("BAR", self.offset(), 4, self.type_bits(), lo)];
        if self.is_64bit() {
            regs.push(Register::rw("BAR (high)", self.offset() + 4, 4, 0, hi));
        }
        regs
    }

    /// Changes the decoded size (Resizable BAR): the masks follow `size`, and address bits that
    /// became read-only read as zero.
    pub fn apply_size(&self, cs: &mut ConfigSpace, size: u64) -> Result<(), BarError> {
        self.check_size(size)?;
        let (lo, hi) = self.masks(size);
        let off = self.offset();
        cs.set_rw_mask(off, 4, lo);
        let low = cs.get_u32(off);
        cs.set(off, 4, (low & lo) | self.type_bits());
        if self.is_64bit() {
            cs.set_rw_mask(off + 4, 4, hi);
            let high = cs.get_u32(off + 4);
            cs.set(off + 4, 4, high & hi);
        }
        Ok(())
    }

    /// The size currently decoded, read back from the mask.
    pub fn current_size(&self, cs: &ConfigSpace) -> u64 {
        let lo = u64::from(cs.rw_mask(self.offset(), 4));
        let mask = if self.is_64bit() {
            (u64::from(cs.rw_mask(self.offset() + 4, 4)) << 32) | lo
        } else {
            lo | 0xffff_ffff_0000_0000
        };
        (!mask).wrapping_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn install(bars: &[Bar]) -> ConfigSpace {
        let mut cs = ConfigSpace::new();
        for b in bars {
            for r in b.registers() {
                cs.define(&r).unwrap();
            }
        }
        cs
    }

    fn sizing_read(cs: &mut ConfigSpace, off: u16) -> u32 {
        cs.write(u64::from(off), &[0xff; 4]).unwrap();
        cs.get_u32(off)
    }

    #[test]
    fn bar0_32bit_16mib_non_prefetchable() {
        let bar = Bar::new(
            0,
            BarKind::Mem32 {
                prefetchable: false,
            },
            16 * MIB,
        )
        .unwrap();
        let mut cs = install(&[bar]);
        assert_eq!(cs.get_u32(0x10), 0, "memory, 32-bit, non-prefetchable");
        assert_eq!(sizing_read(&mut cs, 0x10), 0xff00_0000);
        cs.write(0x10, &0xfe00_0000u32.to_le_bytes()).unwrap();
        assert_eq!(cs.get_u32(0x10), 0xfe00_0000);
        cs.write(0x10, &0x1234_5678u32.to_le_bytes()).unwrap();
        assert_eq!(
            cs.get_u32(0x10),
            0x1200_0000,
            "low bits of the address are RO 0"
        );
        assert_eq!(bar.current_size(&cs), 16 * MIB);
    }

    #[test]
    fn bar2_64bit_prefetchable_pair() {
        let bar = Bar::new(2, BarKind::Mem64 { prefetchable: true }, 16 << 30).unwrap();
        let mut cs = install(&[bar]);
        assert_eq!(cs.get_u32(0x18), 0b1100, "type bits: 64-bit + prefetchable");
        assert_eq!(
            sizing_read(&mut cs, 0x18),
            0x0000_000c,
            "16 GiB: low dword all RO"
        );
        assert_eq!(
            sizing_read(&mut cs, 0x1c),
            0xffff_fffc,
            "high half of the mask"
        );
        assert_eq!(bar.current_size(&cs), 16 << 30);

        let small = Bar::new(2, BarKind::Mem64 { prefetchable: true }, 256 * MIB).unwrap();
        let mut cs = install(&[small]);
        assert_eq!(sizing_read(&mut cs, 0x18), 0xf000_000c);
        assert_eq!(sizing_read(&mut cs, 0x1c), 0xffff_ffff);
        cs.write(0x18, &[0; 4]).unwrap();
        cs.write(0x1c, &[0x80, 0, 0, 0]).unwrap();
        assert_eq!(cs.get_u32(0x18), 0xc);
        assert_eq!(cs.get_u32(0x1c), 0x80);
    }

    #[test]
    fn apply_size_moves_the_mask() {
        let bar = Bar::new(2, BarKind::Mem64 { prefetchable: true }, 1 << 30).unwrap();
        let mut cs = install(&[bar]);
        cs.write(0x18, &0x4000_0000u32.to_le_bytes()).unwrap();
        bar.apply_size(&mut cs, 2 * MIB).unwrap();
        assert_eq!(bar.current_size(&cs), 2 * MIB);
        assert_eq!(sizing_read(&mut cs, 0x18), 0xffe0_000c);
        bar.apply_size(&mut cs, 1 << 30).unwrap();
        cs.write(0x18, &0x1234_5678u32.to_le_bytes()).unwrap();
        assert_eq!(cs.get_u32(0x18), 0x0000_000c);
        assert!(bar.apply_size(&mut cs, 3 * MIB).is_err());
    }

    #[test]
    fn rejects_bad_bars() {
        assert!(Bar::new(5, BarKind::Mem64 { prefetchable: true }, MIB).is_err());
        assert!(Bar::new(
            6,
            BarKind::Mem32 {
                prefetchable: false
            },
            MIB
        )
        .is_err());
        assert!(Bar::new(
            0,
            BarKind::Mem32 {
                prefetchable: false
            },
            3 * MIB
        )
        .is_err());
        assert!(Bar::new(
            0,
            BarKind::Mem32 {
                prefetchable: false
            },
            8
        )
        .is_err());
        assert!(Bar::new(
            0,
            BarKind::Mem32 {
                prefetchable: false
            },
            1 << 32
        )
        .is_err());
        assert!(Bar::new(
            0,
            BarKind::Mem64 {
                prefetchable: false
            },
            1 << 32
        )
        .is_ok());
    }
}
