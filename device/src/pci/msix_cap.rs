//! MSI-X capability (ID 0x11), hw-spec §1.2 and §2.
//!
//! ```text
//! +0x02 Message Control  bits 10:0 Table Size (N-1, RO), bit 14 Function Mask RW, bit 15 Enable RW
//! +0x04 Table            BIR (bits 2:0) | offset
//! +0x08 PBA              BIR (bits 2:0) | offset
//! ```
//! The table and PBA live in BAR0 (`MSIX_TABLE_OFFSET`, `MSIX_PBA_OFFSET`).

use super::capability::{CapId, CapWrite, Capability};
use super::config_space::{ConfigSpace, ConfigSpaceError, Register};
use super::function::COMMAND_BUS_MASTER;

/// Offset of the Command register in the header.
const COMMAND: u16 = 0x04;

/// Offset of the MSI-X table in BAR0.
pub const MSIX_TABLE_OFFSET: u32 = 0x0010_0000;
/// Offset of the PBA in BAR0.
pub const MSIX_PBA_OFFSET: u32 = 0x0010_8000;
/// Maximum number of vectors (the table must fit below the PBA).
pub const MAX_VECTORS: u16 = 2048;
/// Message Control offset in the capability.
pub const MESSAGE_CONTROL: u16 = 0x02;
/// Message Control: Function Mask.
pub const FUNCTION_MASK: u16 = 1 << 14;
/// Message Control: MSI-X Enable.
pub const ENABLE: u16 = 1 << 15;

/// What decides MSI-X delivery at the function level (hw-spec §3.1): Enable and Function Mask
/// from the capability, Bus Master Enable from the Command register (a message is a memory
/// write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsixControl {
    /// MSI-X Enable.
    pub enabled: bool,
    /// Function Mask: every vector masked.
    pub function_mask: bool,
    /// Command bit 2: messages may be sent (0 holds them all, like Function Mask).
    pub bus_master: bool,
}

/// The MSI-X capability for `vectors` vectors (1..=2048).
#[derive(Debug)]
pub struct MsixCap {
    vectors: u16,
}

impl MsixCap {
    /// A capability for `vectors` vectors; `None` if out of 1..=2048.
    pub fn new(vectors: u16) -> Option<Self> {
        (1..=MAX_VECTORS)
            .contains(&vectors)
            .then_some(MsixCap { vectors })
    }
}

impl Capability for MsixCap {
    fn name(&self) -> &'static str {
        "MSI-X"
    }
    fn id(&self) -> CapId {
        CapId::Standard(0x11)
    }
    fn size(&self) -> u16 {
        12
    }
    fn registers(&self) -> Vec<Register> {
        vec![
            Register::rw(
                "MSI-X Message Control",
                MESSAGE_CONTROL,
                2,
                u32::from(self.vectors - 1),
                u32::from(FUNCTION_MASK | ENABLE),
            ),
            Register::ro("MSI-X Table", 0x04, 4, MSIX_TABLE_OFFSET),
            Register::ro("MSI-X PBA", 0x08, 4, MSIX_PBA_OFFSET),
        ]
    }
    fn write(
        &self,
        cs: &mut ConfigSpace,
        base: u16,
        offset: u16,
        data: &[u8],
    ) -> Result<CapWrite, ConfigSpaceError> {
        let before = cs.get_u16(base + MESSAGE_CONTROL);
        cs.write(u64::from(offset), data)?;
        Ok(CapWrite {
            msix_control: cs.get_u16(base + MESSAGE_CONTROL) != before,
            ..CapWrite::default()
        })
    }
}

/// Reads Enable / Function Mask.
pub fn msix_control(cs: &ConfigSpace, base: u16) -> MsixControl {
    let ctl = cs.get_u16(base + MESSAGE_CONTROL);
    MsixControl {
        enabled: ctl & ENABLE != 0,
        function_mask: ctl & FUNCTION_MASK != 0,
        bus_master: cs.get_u16(COMMAND) & COMMAND_BUS_MASTER != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::capability::install_chain;

    #[test]
    fn registers_match_spec() {
        let mut cs = ConfigSpace::new();
        install_chain(&mut cs, vec![(0x50, Box::new(MsixCap::new(16).unwrap()))]).unwrap();
        assert_eq!(cs.get_u8(0x50), 0x11);
        assert_eq!(cs.get_u16(0x52), 15);
        assert_eq!(cs.get_u32(0x54), 0x0010_0000, "BIR 0");
        assert_eq!(cs.get_u32(0x58), 0x0010_8000, "BIR 0");
        let cap = MsixCap::new(16).unwrap();
        let w = cap.write(&mut cs, 0x50, 0x52, &[0xff, 0xff]).unwrap();
        assert!(w.msix_control);
        assert_eq!(cs.get_u16(0x52), 0xc00f, "table size RO");
        assert_eq!(
            msix_control(&cs, 0x50),
            MsixControl {
                enabled: true,
                function_mask: true,
                bus_master: false
            }
        );
        let w = cap.write(&mut cs, 0x50, 0x52, &[0xff, 0xff]).unwrap();
        assert!(!w.msix_control, "no change, no effect");
        cap.write(&mut cs, 0x50, 0x53, &[0x80]).unwrap();
        assert_eq!(
            msix_control(&cs, 0x50),
            MsixControl {
                enabled: true,
                function_mask: false,
                bus_master: false
            }
        );
        cs.set(COMMAND, 2, u32::from(COMMAND_BUS_MASTER));
        assert!(msix_control(&cs, 0x50).bus_master, "Command bit 2");
        cap.write(&mut cs, 0x50, 0x54, &[0xff; 8]).unwrap();
        assert_eq!(cs.get_u32(0x54), 0x0010_0000, "table offset RO");
    }

    #[test]
    fn vector_count_limits() {
        assert!(MsixCap::new(0).is_none());
        assert!(MsixCap::new(2049).is_none());
        let mut cs = ConfigSpace::new();
        install_chain(&mut cs, vec![(0x50, Box::new(MsixCap::new(2048).unwrap()))]).unwrap();
        assert_eq!(cs.get_u16(0x52) & 0x7ff, 2047);
    }
}
