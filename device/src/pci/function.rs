//! A PCI Express function: type 0 header + BARs + capabilities over one [`ConfigSpace`].
//!
//! ```text
//! 0x00 Vendor ID (RO)        0x02 Device ID (RO)
//! 0x04 Command (RW 0x0546)   0x06 Status (bit 4 RO 1; W1C 0xf900)
//! 0x08 Revision | Class code (RO)
//! 0x0c Cache Line (RW)  0x0d Latency (RO 0)  0x0e Header Type (RO 0)  0x0f BIST (RO 0)
//! 0x10..0x27 BARs (see bar.rs)
//! 0x2c Subsystem Vendor ID / Subsystem ID (RO)
//! 0x30 Expansion ROM (RO 0: no ROM)   0x34 Capabilities Pointer (RO)
//! 0x3c Interrupt Line (RW)  0x3d Interrupt Pin (RO 0)
//! ```

use super::bar::{Bar, BarError};
use super::capability::{install_chain, CapError, CapId, CapWrite, Capability, PlacedCap};
use super::config_space::{ConfigSpace, ConfigSpaceError, Register};

/// Command register: writable bits (Memory Space, Bus Master, Parity Error Response, SERR#,
/// Interrupt Disable).
pub const COMMAND_RW: u32 = 0x0546;
/// Cache Line Size writable bits (stored, no effect).
pub const CACHE_LINE_SIZE_RW: u32 = 0xff;
/// Command: Memory Space Enable.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command: Bus Master Enable.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Status: Capabilities List.
pub const STATUS_CAP_LIST: u32 = 1 << 4;
/// Command: SERR# Enable.
pub const COMMAND_SERR: u16 = 1 << 8;
/// Status: Received Target Abort.
pub const STATUS_RECEIVED_TARGET_ABORT: u32 = 1 << 12;
/// Status: Received Master Abort.
pub const STATUS_RECEIVED_MASTER_ABORT: u32 = 1 << 13;
/// Status: Signaled System Error.
pub const STATUS_SIGNALED_SYSTEM_ERROR: u32 = 1 << 14;
/// Status: write-1-to-clear error bits (8, 11-15).
pub const STATUS_W1C: u32 = 0xf900;

/// The identity fields of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIdentity {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Subsystem Vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code (class << 16 | subclass << 8 | prog-if).
    pub class_code: u32,
}

/// Errors building a function (layout bugs or bad parameters).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PciError {
    /// A BAR is invalid.
    #[error(transparent)]
    Bar(#[from] BarError),
    /// A capability cannot be placed.
    #[error(transparent)]
    Cap(#[from] CapError),
    /// A register overlaps another.
    #[error(transparent)]
    Config(#[from] ConfigSpaceError),
}

/// One PCI Express function's configuration space.
#[derive(Debug)]
pub struct PciFunction {
    cs: ConfigSpace,
    caps: Vec<PlacedCap>,
    bars: Vec<Bar>,
}

fn header_registers(id: &PciIdentity, cap_ptr: u8) -> Vec<Register> {
    let status = if cap_ptr != 0 { STATUS_CAP_LIST } else { 0 };
    vec![
        Register::ro("Vendor ID", 0x00, 2, u32::from(id.vendor_id)),
        Register::ro("Device ID", 0x02, 2, u32::from(id.device_id)),
        Register::rw("Command", 0x04, 2, 0, COMMAND_RW),
        Register::ro("Status", 0x06, 2, status).with_w1c(STATUS_W1C),
        Register::ro(
            "Revision / Class",
            0x08,
            4,
            u32::from(id.revision) | ((id.class_code & 0xff_ffff) << 8),
        ),
        Register::rw("Cache Line Size", 0x0c, 1, 0, CACHE_LINE_SIZE_RW),
        Register::ro("Latency Timer", 0x0d, 1, 0),
        Register::ro("Header Type", 0x0e, 1, 0),
        Register::ro("BIST", 0x0f, 1, 0),
        Register::ro("CardBus CIS", 0x28, 4, 0),
        Register::ro(
            "Subsystem Vendor ID",
            0x2c,
            2,
            u32::from(id.subsystem_vendor_id),
        ),
        Register::ro("Subsystem ID", 0x2e, 2, u32::from(id.subsystem_id)),
        Register::ro("Expansion ROM", 0x30, 4, 0),
        Register::ro("Capabilities Pointer", 0x34, 1, u32::from(cap_ptr)),
        Register::rw("Interrupt Line", 0x3c, 1, 0, 0xff),
        Register::ro("Interrupt Pin", 0x3d, 1, 0),
        Register::ro("Min_Gnt", 0x3e, 1, 0),
        Register::ro("Max_Lat", 0x3f, 1, 0),
    ]
}

impl PciFunction {
    /// Builds the function: header, BARs, then the capabilities at their offsets.
    pub fn new(
        identity: &PciIdentity,
        bars: Vec<Bar>,
        caps: Vec<(u16, Box<dyn Capability>)>,
    ) -> Result<Self, PciError> {
        let mut cs = ConfigSpace::new();
        for bar in &bars {
            for reg in bar.registers() {
                cs.define(&reg)?;
            }
        }
        let (caps, head) = install_chain(&mut cs, caps)?;
        for reg in header_registers(identity, head) {
            cs.define(&reg)?;
        }
        Ok(PciFunction { cs, caps, bars })
    }

    /// The configuration space.
    pub fn config(&self) -> &ConfigSpace {
        &self.cs
    }

    /// The configuration space, for device-side updates (status bits).
    pub fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.cs
    }

    /// Client read of any width inside 4 KiB.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), ConfigSpaceError> {
        self.cs.read(offset, data)
    }

    /// Client write: each part goes to the capability that owns it (or the plain masked write);
    /// BAR resizes are applied here. FLR and MSI-X control changes are returned to the caller.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<CapWrite, ConfigSpaceError> {
        // Validate the whole range first: nothing is written if any byte is outside.
        self.cs.read(offset, &mut vec![0u8; data.len()])?;
        let mut outcome = CapWrite::default();
        let mut done = 0usize;
        while done < data.len() {
            // In range: offset + done < 4096.
            let pos = (offset as usize + done) as u16;
            let rest = data.len() - done;
            let (seg_len, owner) = match self.caps.iter().find(|c| c.contains(pos)) {
                Some(c) => (usize::from(c.end() - pos).min(rest), Some(c)),
                None => {
                    let next = self
                        .caps
                        .iter()
                        .filter(|c| c.offset > pos)
                        .map(|c| c.offset)
                        .min()
                        .unwrap_or(4096);
                    (usize::from(next - pos).min(rest), None)
                }
            };
            let seg = &data[done..done + seg_len];
            match owner {
                Some(c) => {
                    outcome = outcome.merge(c.cap.write(&mut self.cs, c.offset, pos, seg)?)
                }
                None => self.cs.write(u64::from(pos), seg)?,
            }
            done += seg_len;
        }
        if let Some((index, size)) = outcome.bar_resize {
            if let Some(bar) = self.bars.iter().find(|b| b.index == index) {
                // The capability only reports sizes it validated; a failure leaves the BAR as is.
                let _ = bar.apply_size(&mut self.cs, size);
            }
        }
        Ok(outcome)
    }

    /// Power-on state: every register to its reset value, BARs to their reset sizes.
    pub fn reset(&mut self) {
        self.cs.reset();
        for bar in &self.bars {
            let _ = bar.apply_size(&mut self.cs, bar.size);
        }
    }

    /// Offset of the first capability with this ID.
    pub fn cap_offset(&self, id: CapId) -> Option<u16> {
        self.caps
            .iter()
            .find(|c| c.cap.id() == id)
            .map(|c| c.offset)
    }

    /// The size BAR `index` currently decodes (0 if unimplemented).
    pub fn bar_size(&self, index: u8) -> u64 {
        self.bars
            .iter()
            .find(|b| b.index == index)
            .map_or(0, |b| b.current_size(&self.cs))
    }

    /// The Command register.
    pub fn command(&self) -> u16 {
        self.cs.get_u16(0x04)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::bar::BarKind;
    use crate::pci::pcie::PciExpress;
    use crate::pci::pm::PowerManagement;
    use crate::pci::rebar::ResizableBar;

    const MIB: u64 = 1 << 20;

    fn function() -> PciFunction {
        let id = PciIdentity {
            vendor_id: 0x1234,
            device_id: 0x5647,
            subsystem_vendor_id: 0x1234,
            subsystem_id: 1,
            revision: 1,
            class_code: 0x030200,
        };
        let bars = vec![
            Bar::new(
                0,
                BarKind::Mem32 {
                    prefetchable: false,
                },
                16 * MIB,
            )
            .unwrap(),
            Bar::new(2, BarKind::Mem64 { prefetchable: true }, 256 * MIB).unwrap(),
        ];
        let caps: Vec<(u16, Box<dyn Capability>)> = vec![
            (0x40, Box::new(PowerManagement)),
            (0x60, Box::new(PciExpress)),
            (0x100, Box::new(ResizableBar::new(2, 256 * MIB).unwrap())),
        ];
        PciFunction::new(&id, bars, caps).unwrap()
    }

    #[test]
    fn header_fields() {
        let f = function();
        let cs = f.config();
        assert_eq!(cs.get_u32(0), 0x5647_1234);
        assert_eq!(cs.get_u32(0x08), 0x0302_0001);
        assert_eq!(cs.get_u16(0x06), 0x0010);
        assert_eq!(cs.get_u8(0x34), 0x40);
        assert_eq!(cs.get_u8(0x3d), 0, "Interrupt Pin 0");
        assert_eq!(cs.get_u32(0x2c), 0x0001_1234);
        assert_eq!(cs.get_u8(0x41), 0x60, "PM -> PCIe");
    }

    #[test]
    fn command_and_status_masks() {
        let mut f = function();
        f.write(0x04, &[0xff, 0xff]).unwrap();
        assert_eq!(f.command(), 0x0546);
        f.config_mut().set_bits(0x06, 2, 0x2000);
        f.write(0x06, &[0x00, 0x20]).unwrap();
        assert_eq!(f.config().get_u16(0x06), 0x0010);
        f.write(0x30, &[0xff; 4]).unwrap();
        assert_eq!(f.config().get_u32(0x30), 0, "no ROM: sizing reads 0");
        f.write(0x3c, &[0x0b, 0xff]).unwrap();
        assert_eq!(f.config().get_u16(0x3c), 0x000b);
    }

    #[test]
    fn rebar_size_change_moves_bar2_mask() {
        let mut f = function();
        assert_eq!(f.bar_size(2), 256 * MIB);
        let w = f.write(0x109, &[0x04]).unwrap();
        assert_eq!(w.bar_resize, Some((2, 16 * MIB)));
        assert_eq!(f.bar_size(2), 16 * MIB);
        f.write(0x18, &[0xff; 4]).unwrap();
        assert_eq!(f.config().get_u32(0x18), 0xff00_000c);
        f.reset();
        assert_eq!(f.bar_size(2), 256 * MIB);
        f.write(0x18, &[0xff; 4]).unwrap();
        assert_eq!(f.config().get_u32(0x18), 0xf000_000c);
    }

    #[test]
    fn wide_write_is_split_between_owners() {
        let mut f = function();
        // One write from 0x40 to 0x70 covering PM, a gap and PCIe Device Control with FLR.
        let mut data = vec![0xffu8; 0x30];
        data[0x69 - 0x40] = 0x80;
        let w = f.write(0x40, &data).unwrap();
        assert!(w.flr);
        assert_eq!(f.config().get_u16(0x44) & 3, 3, "PM got its part");
        assert_eq!(f.config().get_u8(0x41), 0x60, "next pointer RO");
    }

    #[test]
    fn write_outside_is_rejected_whole() {
        let mut f = function();
        assert!(f.write(4090, &[0xff; 8]).is_err());
        assert!(f.write(u64::MAX, &[1]).is_err());
        let mut b = [0u8; 4];
        assert!(f.read(4093, &mut b).is_err());
    }

    #[test]
    fn reset_restores_everything() {
        let mut f = function();
        f.write(0x04, &[0x06, 0x00]).unwrap();
        f.write(0x10, &0xfe00_0000u32.to_le_bytes()).unwrap();
        f.write(0x68, &[0x00, 0x00]).unwrap();
        f.reset();
        assert_eq!(f.command(), 0);
        assert_eq!(f.config().get_u32(0x10), 0);
        assert_eq!(f.config().get_u16(0x68), 0x2810);
    }
}
