//! PCI Express configuration space (4 KiB) as data.
//!
//! Every byte has a value, a read/write mask and a write-1-to-clear mask, plus its reset value.
//! A client write changes a byte as `value = (value & !rw) | (data & rw)` and then clears the
//! bits `data & w1c`; everything else is read-only. Reads of any width at any offset inside the
//! 4 KiB return the stored bytes. Registers are declared once ([`Register`]) by the header, BAR
//! and capability modules; the same table drives reset. Capabilities that need side effects
//! (FLR, BAR resize, power state checks) wrap the masked write (see `capability.rs`).

/// Size of PCI Express configuration space.
pub const CONFIG_SPACE_SIZE: usize = 4096;

/// Errors of configuration-space access and construction.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ConfigSpaceError {
    /// The access is not inside the 4 KiB.
    #[error("config space access of {len} bytes at {offset:#x} is outside the 4 KiB")]
    OutOfRange {
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
    },
    /// A register declaration overlaps an earlier one (a layout bug).
    #[error("register {name} at {offset:#x} overlaps an earlier register")]
    Overlap {
        /// Register name.
        name: &'static str,
        /// Offset.
        offset: u16,
    },
    /// A register declaration has a width other than 1, 2 or 4 (a layout bug).
    #[error("register {name} has invalid width {width}")]
    BadWidth {
        /// Register name.
        name: &'static str,
        /// Width in bytes.
        width: u8,
    },
}

/// One register: where, how wide, its reset value and which bits a client may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Register {
    /// Name for diagnostics.
    pub name: &'static str,
    /// Offset in config space.
    pub offset: u16,
    /// Width in bytes (1, 2 or 4).
    pub width: u8,
    /// Reset value.
    pub reset: u32,
    /// Bits a client write sets to the written value.
    pub rw: u32,
    /// Bits a client write of 1 clears.
    pub w1c: u32,
}

impl Register {
    /// A read-only register.
    pub const fn ro(name: &'static str, offset: u16, width: u8, reset: u32) -> Self {
        Register {
            name,
            offset,
            width,
            reset,
            rw: 0,
            w1c: 0,
        }
    }

    /// A register with read/write bits `rw` (others read-only).
    pub const fn rw(name: &'static str, offset: u16, width: u8, reset: u32, rw: u32) -> Self {
        Register {
            name,
            offset,
            width,
            reset,
            rw,
            w1c: 0,
        }
    }

    /// The same register moved by `base` bytes (capability-relative to absolute).
    pub const fn at(mut self, base: u16) -> Self {
        self.offset += base;
        self
    }

    /// Adds write-1-to-clear bits.
    pub const fn with_w1c(mut self, w1c: u32) -> Self {
        self.w1c = w1c;
        self
    }
}

/// The 4 KiB configuration space.
#[derive(Clone)]
pub struct ConfigSpace {
    value: Vec<u8>,
    reset: Vec<u8>,
    rw: Vec<u8>,
    w1c: Vec<u8>,
    defined: Vec<bool>,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace").finish_non_exhaustive()
    }
}

impl Default for ConfigSpace {
    fn default() -> Self {
        Self::new()
    }
}

fn range(offset: u64, len: usize) -> Result<std::ops::Range<usize>, ConfigSpaceError> {
    let err = ConfigSpaceError::OutOfRange { offset, len };
    let start = usize::try_from(offset).map_err(|_| err.clone())?;
    let end = start.checked_add(len).ok_or(err.clone())?;
    if end > CONFIG_SPACE_SIZE {
        return Err(err);
    }
    Ok(start..end)
}

impl ConfigSpace {
    /// All zeros, all read-only.
    pub fn new() -> Self {
        ConfigSpace {
            value: vec![0; CONFIG_SPACE_SIZE],
            reset: vec![0; CONFIG_SPACE_SIZE],
            rw: vec![0; CONFIG_SPACE_SIZE],
            w1c: vec![0; CONFIG_SPACE_SIZE],
            defined: vec![false; CONFIG_SPACE_SIZE],
        }
    }

    /// Declares a register: sets its value and reset value, and its masks.
    pub fn define(&mut self, reg: &Register) -> Result<(), ConfigSpaceError> {
        if !matches!(reg.width, 1 | 2 | 4) {
            return Err(ConfigSpaceError::BadWidth {
                name: reg.name,
                width: reg.width,
            });
        }
        let r = range(u64::from(reg.offset), usize::from(reg.width))?;
        if self.defined[r.clone()].iter().any(|&d| d) {
            return Err(ConfigSpaceError::Overlap {
                name: reg.name,
                offset: reg.offset,
            });
        }
        for (i, pos) in r.enumerate() {
            let shift = 8 * i;
            self.value[pos] = (reg.reset >> shift) as u8;
            self.reset[pos] = (reg.reset >> shift) as u8;
            self.rw[pos] = (reg.rw >> shift) as u8;
            self.w1c[pos] = (reg.w1c >> shift) as u8;
            self.defined[pos] = true;
        }
        Ok(())
    }

    /// Client read of any width inside the 4 KiB.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), ConfigSpaceError> {
        let r = range(offset, data.len())?;
        data.copy_from_slice(&self.value[r]);
        Ok(())
    }

    /// Client write of any width inside the 4 KiB, through the masks.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ConfigSpaceError> {
        let r = range(offset, data.len())?;
        for (pos, &d) in r.zip(data) {
            let rw = self.rw[pos];
            let mut v = (self.value[pos] & !rw) | (d & rw);
            v &= !(d & self.w1c[pos]);
            self.value[pos] = v;
        }
        Ok(())
    }

    /// The whole space.
    pub fn as_bytes(&self) -> &[u8] {
        &self.value
    }

    /// Device-side read of `width` (1, 2 or 4) bytes; 0 outside the space.
    pub fn get(&self, offset: u16, width: u8) -> u32 {
        let start = usize::from(offset);
        (0..usize::from(width.min(4))).fold(0u32, |acc, i| {
            let b = self.value.get(start + i).copied().unwrap_or(0);
            acc | (u32::from(b) << (8 * i))
        })
    }

    /// Device-side read of a byte.
    pub fn get_u8(&self, offset: u16) -> u8 {
        self.get(offset, 1) as u8
    }

    /// Device-side read of a word.
    pub fn get_u16(&self, offset: u16) -> u16 {
        self.get(offset, 2) as u16
    }

    /// Device-side read of a dword.
    pub fn get_u32(&self, offset: u16) -> u32 {
        self.get(offset, 4)
    }

    /// Device-side store that ignores the masks (hardware updating its own status).
    pub fn set(&mut self, offset: u16, width: u8, value: u32) {
        let start = usize::from(offset);
        for i in 0..usize::from(width.min(4)) {
            if let Some(b) = self.value.get_mut(start + i) {
                *b = (value >> (8 * i)) as u8;
            }
        }
    }

    /// Device-side setting of bits (e.g. an error status bit).
    pub fn set_bits(&mut self, offset: u16, width: u8, bits: u32) {
        let v = self.get(offset, width) | bits;
        self.set(offset, width, v);
    }

    /// Changes the read/write mask of a register (BAR resize).
    pub fn set_rw_mask(&mut self, offset: u16, width: u8, rw: u32) {
        let start = usize::from(offset);
        for i in 0..usize::from(width.min(4)) {
            if let Some(b) = self.rw.get_mut(start + i) {
                *b = (rw >> (8 * i)) as u8;
            }
        }
    }

    /// The read/write mask of a register.
    pub fn rw_mask(&self, offset: u16, width: u8) -> u32 {
        let start = usize::from(offset);
        (0..usize::from(width.min(4))).fold(0u32, |acc, i| {
            let b = self.rw.get(start + i).copied().unwrap_or(0);
            acc | (u32::from(b) << (8 * i))
        })
    }

    /// Restores every byte to its reset value (masks are left to their owners).
    pub fn reset(&mut self) {
        self.value.copy_from_slice(&self.reset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> ConfigSpace {
        let mut cs = ConfigSpace::new();
        cs.define(&Register::ro("id", 0, 4, 0x5647_1234)).unwrap();
        cs.define(&Register::rw("cmd", 4, 2, 0, 0x0546)).unwrap();
        cs.define(&Register::ro("status", 6, 2, 0x0010).with_w1c(0xf900))
            .unwrap();
        cs.define(&Register::rw("cls", 0x0c, 1, 0, 0xff)).unwrap();
        cs
    }

    #[test]
    fn reads_any_width_and_offset() {
        let cs = space();
        let mut b = [0u8; 4];
        cs.read(0, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0x5647_1234);
        let mut b = [0u8; 1];
        cs.read(3, &mut b).unwrap();
        assert_eq!(b[0], 0x56);
        let mut b = [0u8; 3];
        cs.read(1, &mut b).unwrap();
        assert_eq!(b, [0x12, 0x47, 0x56]);
        let mut all = vec![0u8; CONFIG_SPACE_SIZE];
        cs.read(0, &mut all).unwrap();
        assert_eq!(&all[0..4], &[0x34, 0x12, 0x47, 0x56]);
        let mut b = [0u8; 2];
        cs.read(4094, &mut b).unwrap();
    }

    #[test]
    fn rejects_access_outside_4k() {
        let mut cs = space();
        let mut b = [0u8; 2];
        assert!(matches!(
            cs.read(4095, &mut b),
            Err(ConfigSpaceError::OutOfRange { .. })
        ));
        assert!(cs.write(4096, &[1]).is_err());
        assert!(cs.write(u64::MAX, &[1]).is_err());
        let mut big = vec![0u8; CONFIG_SPACE_SIZE + 1];
        assert!(cs.read(0, &mut big).is_err());
    }

    #[test]
    fn write_respects_rw_mask() {
        let mut cs = space();
        cs.write(0, &[0xff; 4]).unwrap();
        assert_eq!(cs.get_u32(0), 0x5647_1234, "RO register unchanged");
        cs.write(4, &[0xff, 0xff]).unwrap();
        assert_eq!(cs.get_u16(4), 0x0546);
        cs.write(4, &[0x00]).unwrap();
        assert_eq!(cs.get_u16(4), 0x0500, "byte write changes only its byte");
        // Undefined bytes are read-only zero.
        cs.write(0x100, &[0xff; 8]).unwrap();
        assert_eq!(cs.get_u32(0x100), 0);
    }

    #[test]
    fn w1c_clears_only_written_ones() {
        let mut cs = space();
        cs.set_bits(6, 2, 0x2100);
        assert_eq!(cs.get_u16(6), 0x2110);
        cs.write(6, &[0x00, 0x01]).unwrap();
        assert_eq!(cs.get_u16(6), 0x2010, "bit 8 cleared, bit 13 kept");
        cs.write(6, &[0xff, 0xff]).unwrap();
        assert_eq!(cs.get_u16(6), 0x0010, "RO bit 4 survives all-ones");
    }

    #[test]
    fn reset_restores_values() {
        let mut cs = space();
        cs.write(4, &[0x06, 0x05]).unwrap();
        cs.write(0x0c, &[0x40]).unwrap();
        cs.reset();
        assert_eq!(cs.get_u16(4), 0);
        assert_eq!(cs.get_u8(0x0c), 0);
        assert_eq!(cs.get_u32(0), 0x5647_1234);
    }

    #[test]
    fn rejects_bad_declarations() {
        let mut cs = space();
        assert!(matches!(
            cs.define(&Register::ro("x", 2, 2, 0)),
            Err(ConfigSpaceError::Overlap { .. })
        ));
        assert!(matches!(
            cs.define(&Register::ro("x", 0x40, 3, 0)),
            Err(ConfigSpaceError::BadWidth { .. })
        ));
        assert!(matches!(
            cs.define(&Register::ro("x", 4094, 4, 0)),
            Err(ConfigSpaceError::OutOfRange { .. })
        ));
    }

    #[test]
    fn rw_mask_can_change() {
        let mut cs = space();
        cs.set_rw_mask(4, 2, 0x0006);
        cs.write(4, &[0xff, 0xff]).unwrap();
        assert_eq!(cs.get_u16(4), 0x0006);
        assert_eq!(cs.rw_mask(4, 2), 0x0006);
        // Device-side accessors never panic outside the space.
        assert_eq!(cs.get_u32(4094), 0);
        cs.set(4095, 4, 0xffff_ffff);
        assert_eq!(cs.get_u8(4095), 0xff);
    }
}
