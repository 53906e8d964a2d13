//! Device Serial Number extended capability (ID 0x0003, version 1): a read-only 64-bit serial.

use super::capability::{CapId, Capability};
use super::config_space::Register;

/// The DSN capability.
#[derive(Debug)]
pub struct DeviceSerialNumber {
    serial: u64,
}

impl DeviceSerialNumber {
    /// A capability reporting `serial`.
    pub fn new(serial: u64) -> Self {
        DeviceSerialNumber { serial }
    }
}

impl Capability for DeviceSerialNumber {
    fn name(&self) -> &'static str {
        "Device Serial Number"
    }
    fn id(&self) -> CapId {
        CapId::Extended {
            id: 0x0003,
            version: 1,
        }
    }
    fn size(&self) -> u16 {
        0x0c
    }
    fn registers(&self) -> Vec<Register> {
        vec![
            Register::ro("DSN low", 0x04, 4, self.serial as u32),
            Register::ro("DSN high", 0x08, 4, (self.serial >> 32) as u32),
        ]
    }
}

/// A stable serial derived from a string (FNV-1a 64), e.g. the socket path.
pub fn serial_from(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::capability::install_chain;
    use crate::pci::config_space::ConfigSpace;

    #[test]
    fn serial_is_read_only() {
        let mut cs = ConfigSpace::new();
        let dsn = DeviceSerialNumber::new(0x0123_4567_89ab_cdef);
        install_chain(&mut cs, vec![(0x100, Box::new(dsn))]).unwrap();
        assert_eq!(cs.get_u32(0x100), 0x0001_0003);
        assert_eq!(cs.get_u32(0x104), 0x89ab_cdef);
        assert_eq!(cs.get_u32(0x108), 0x0123_4567);
        let dsn = DeviceSerialNumber::new(0);
        dsn.write(&mut cs, 0x100, 0x104, &[0; 8]).unwrap();
        assert_eq!(cs.get_u32(0x104), 0x89ab_cdef);
    }

    #[test]
    fn derived_serial_is_stable() {
        assert_eq!(serial_from("/tmp/a.sock"), serial_from("/tmp/a.sock"));
        assert_ne!(serial_from("/tmp/a.sock"), serial_from("/tmp/b.sock"));
    }
}
