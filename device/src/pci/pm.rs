//! Power Management capability (ID 0x01), hw-spec §1.2.
//!
//! ```text
//! +0x02 PMC    version 3; no D1/D2; no PME
//! +0x04 PMCSR  bits 1:0 PowerState RW (D0 = 0, D3hot = 3; D1/D2 writes ignored),
//!              bit 3 No_Soft_Reset RO 1 (D3hot -> D0 keeps the device state)
//! +0x06 PMCSR_BSE, +0x07 Data: 0
//! ```

use super::capability::{CapId, CapWrite, Capability};
use super::config_space::{ConfigSpace, ConfigSpaceError, Register};

/// PMC: version 3 (PCI PM 1.2).
pub const PMC: u32 = 0x0003;
/// PMCSR offset in the capability.
pub const PMCSR: u16 = 0x04;
/// PMCSR power-state field.
pub const PMCSR_POWER_STATE: u32 = 0x3;
/// PMCSR No_Soft_Reset.
pub const PMCSR_NO_SOFT_RESET: u32 = 1 << 3;

/// The Power Management capability.
#[derive(Debug, Default)]
pub struct PowerManagement;

impl Capability for PowerManagement {
    fn name(&self) -> &'static str {
        "Power Management"
    }
    fn id(&self) -> CapId {
        CapId::Standard(0x01)
    }
    fn size(&self) -> u16 {
        8
    }
    fn registers(&self) -> Vec<Register> {
        vec![
            Register::ro("PMC", 0x02, 2, PMC),
            Register::rw("PMCSR", PMCSR, 2, PMCSR_NO_SOFT_RESET, PMCSR_POWER_STATE),
            Register::ro("PMCSR_BSE", 0x06, 1, 0),
            Register::ro("PM Data", 0x07, 1, 0),
        ]
    }
    fn write(
        &self,
        cs: &mut ConfigSpace,
        base: u16,
        offset: u16,
        data: &[u8],
    ) -> Result<CapWrite, ConfigSpaceError> {
        let old = cs.get_u16(base + PMCSR);
        cs.write(u64::from(offset), data)?;
        let state = u32::from(cs.get_u16(base + PMCSR)) & PMCSR_POWER_STATE;
        if state == 1 || state == 2 {
            // D1/D2 are not supported: the write of the field is ignored.
            cs.set(base + PMCSR, 2, u32::from(old));
        }
        Ok(CapWrite::default())
    }
}

/// The current power state (0 = D0, 3 = D3hot).
pub fn power_state(cs: &ConfigSpace, base: u16) -> u8 {
    (u32::from(cs.get_u16(base + PMCSR)) & PMCSR_POWER_STATE) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::capability::install_chain;

    fn space() -> ConfigSpace {
        let mut cs = ConfigSpace::new();
        install_chain(&mut cs, vec![(0x40, Box::new(PowerManagement))]).unwrap();
        cs
    }

    #[test]
    fn registers_match_spec() {
        let cs = space();
        assert_eq!(cs.get_u8(0x40), 0x01);
        assert_eq!(cs.get_u16(0x42), 0x0003, "version 3, no D1/D2, no PME");
        assert_eq!(cs.get_u16(0x44), 0x0008, "D0, No_Soft_Reset");
    }

    #[test]
    fn power_state_d0_d3hot_only() {
        let mut cs = space();
        let pm = PowerManagement;
        pm.write(&mut cs, 0x40, 0x44, &[0xff, 0xff]).unwrap();
        assert_eq!(cs.get_u16(0x44), 0x000b, "D3hot; other bits RO");
        assert_eq!(power_state(&cs, 0x40), 3);
        pm.write(&mut cs, 0x40, 0x44, &[0x01]).unwrap();
        assert_eq!(power_state(&cs, 0x40), 3, "D1 ignored");
        pm.write(&mut cs, 0x40, 0x44, &[0x02]).unwrap();
        assert_eq!(power_state(&cs, 0x40), 3, "D2 ignored");
        pm.write(&mut cs, 0x40, 0x44, &[0x00]).unwrap();
        assert_eq!(power_state(&cs, 0x40), 0);
        pm.write(&mut cs, 0x40, 0x42, &[0xff, 0xff]).unwrap();
        assert_eq!(cs.get_u16(0x42), 0x0003, "PMC is RO");
    }
}
