//! PCI Express capability (ID 0x10), version 2, Endpoint: hw-spec §1.3.
//!
//! ```text
//! +0x02 PCIe Capabilities   version 2, type 0 (Endpoint)
//! +0x04 Device Capabilities MPS 256 B, Role-Based Error Reporting (15), FLR capable (28)
//! +0x08 Device Control      RW 0-7, 11-14: reporting enables, Relaxed Ordering (4, reset 1),
//!                           MPS (5-7), No Snoop (11, reset 1), MRRS (12-14, reset 512 B);
//!                           bit 15 Initiate FLR: write 1 = FLR, reads 0
//! +0x0a Device Status       W1C 0-3 (CED, NFED, FED, URD); Transactions Pending (5) RO
//! +0x0c Link Capabilities   16 GT/s x16, no ASPM, port 0
//! +0x10 Link Control        RW 0-1, 3, 6 (stored only)
//! +0x12 Link Status         16 GT/s x16
//! +0x24 Device Capabilities 2  CTO ranges ABCD, CTO disable, AtomicOp completer 32/64/128 CAS,
//!                              10-bit tag completer
//! +0x28 Device Control 2    RW 0-4, 6, 12
//! +0x2c Link Capabilities 2 speeds 2.5-16 GT/s
//! +0x30 Link Control 2      Target Link Speed RW, reset 4
//! ```

use super::capability::{CapId, CapWrite, Capability};
use super::config_space::{ConfigSpace, ConfigSpaceError, Register};

/// PCIe Capabilities register value: version 2, Endpoint.
pub const PCIE_CAPS: u32 = 0x0002;
/// Device Capabilities.
pub const DEV_CAP: u32 = 0x1 | (1 << 15) | (1 << 28);
/// Device Control offset in the capability.
pub const DEV_CTL: u16 = 0x08;
/// Device Control: writable bits.
pub const DEV_CTL_RW: u32 = 0x78ff;
/// Device Control: Enable Relaxed Ordering.
pub const DEV_CTL_RELAXED_ORDERING: u16 = 1 << 4;
/// Device Control: Enable No Snoop.
pub const DEV_CTL_NO_SNOOP: u16 = 1 << 11;
/// Device Control: Initiate Function Level Reset.
pub const DEV_CTL_INITIATE_FLR: u16 = 1 << 15;
/// Device Control reset value: RO and No Snoop enabled, MRRS 512 B.
pub const DEV_CTL_RESET: u32 = 0x2810;
/// Device Status offset in the capability.
pub const DEV_STA: u16 = 0x0a;
/// Device Status: error-detected bits (W1C).
pub const DEV_STA_ERRORS: u32 = 0xf;
/// Device Status: Correctable Error Detected.
pub const DEV_STA_CED: u16 = 1 << 0;
/// Device Status: Non-Fatal Error Detected.
pub const DEV_STA_NFED: u16 = 1 << 1;
/// Device Status: Fatal Error Detected.
pub const DEV_STA_FED: u16 = 1 << 2;
/// Device Status: Unsupported Request Detected.
pub const DEV_STA_URD: u16 = 1 << 3;
/// Link Capabilities: 16 GT/s, x16.
pub const LINK_CAP: u32 = 0x4 | (16 << 4);
/// Link Control writable bits.
pub const LINK_CTL_RW: u32 = 0x4b;
/// Link Status: 16 GT/s, x16.
pub const LINK_STA: u32 = 0x4 | (16 << 4);
/// Device Capabilities 2.
pub const DEV_CAP2: u32 = 0xf | (1 << 4) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 16);
/// Device Control 2 writable bits.
pub const DEV_CTL2_RW: u32 = 0xf | (1 << 4) | (1 << 6) | (1 << 12);
/// Link Capabilities 2: 2.5, 5, 8, 16 GT/s.
pub const LINK_CAP2: u32 = 0x1e;
/// Link Control 2 reset: target 16 GT/s.
pub const LINK_CTL2_RESET: u32 = 0x4;
/// Link Control 2 writable bits: Target Link Speed.
pub const LINK_CTL2_RW: u32 = 0xf;

/// The PCI Express capability (Endpoint).
#[derive(Debug, Default)]
pub struct PciExpress;

impl Capability for PciExpress {
    fn name(&self) -> &'static str {
        "PCI Express"
    }
    fn id(&self) -> CapId {
        CapId::Standard(0x10)
    }
    fn size(&self) -> u16 {
        0x3c
    }
    fn registers(&self) -> Vec<Register> {
        vec![
            Register::ro("PCIe Capabilities", 0x02, 2, PCIE_CAPS),
            Register::ro("Device Capabilities", 0x04, 4, DEV_CAP),
            Register::rw("Device Control", DEV_CTL, 2, DEV_CTL_RESET, DEV_CTL_RW),
            Register::ro("Device Status", DEV_STA, 2, 0).with_w1c(DEV_STA_ERRORS),
            Register::ro("Link Capabilities", 0x0c, 4, LINK_CAP),
            Register::rw("Link Control", 0x10, 2, 0, LINK_CTL_RW),
            Register::ro("Link Status", 0x12, 2, LINK_STA),
            Register::ro("Slot Capabilities", 0x14, 4, 0),
            Register::ro("Slot Control", 0x18, 2, 0),
            Register::ro("Slot Status", 0x1a, 2, 0),
            Register::ro("Root Control", 0x1c, 2, 0),
            Register::ro("Root Capabilities", 0x1e, 2, 0),
            Register::ro("Root Status", 0x20, 4, 0),
            Register::ro("Device Capabilities 2", 0x24, 4, DEV_CAP2),
            Register::rw("Device Control 2", 0x28, 2, 0, DEV_CTL2_RW),
            Register::ro("Device Status 2", 0x2a, 2, 0),
            Register::ro("Link Capabilities 2", 0x2c, 4, LINK_CAP2),
            Register::rw("Link Control 2", 0x30, 2, LINK_CTL2_RESET, LINK_CTL2_RW),
            Register::ro("Link Status 2", 0x32, 2, 0),
            Register::ro("Slot Capabilities 2", 0x34, 4, 0),
            Register::ro("Slot Control 2", 0x38, 2, 0),
            Register::ro("Slot Status 2", 0x3a, 2, 0),
        ]
    }
    fn write(
        &self,
        cs: &mut ConfigSpace,
        base: u16,
        offset: u16,
        data: &[u8],
    ) -> Result<CapWrite, ConfigSpaceError> {
        // Initiate FLR is bit 7 of the Device Control high byte; it is not stored (reads 0).
        let flr_byte = base + DEV_CTL + 1;
        let flr = flr_byte
            .checked_sub(offset)
            .and_then(|i| data.get(usize::from(i)))
            .is_some_and(|b| b & 0x80 != 0);
        cs.write(u64::from(offset), data)?;
        Ok(CapWrite {
            flr,
            ..CapWrite::default()
        })
    }
}

/// Device Control as the model reads it on every transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceControl(pub u16);

impl DeviceControl {
    /// Enable Relaxed Ordering (bit 4).
    pub fn relaxed_ordering(self) -> bool {
        self.0 & DEV_CTL_RELAXED_ORDERING != 0
    }
    /// Enable No Snoop (bit 11).
    pub fn no_snoop(self) -> bool {
        self.0 & DEV_CTL_NO_SNOOP != 0
    }
    /// Max_Payload_Size in bytes.
    pub fn max_payload_size(self) -> u32 {
        128 << ((self.0 >> 5) & 7).min(5)
    }
    /// Max_Read_Request_Size in bytes.
    pub fn max_read_request_size(self) -> u32 {
        128 << ((self.0 >> 12) & 7).min(5)
    }
}

/// Reads Device Control.
pub fn device_control(cs: &ConfigSpace, base: u16) -> DeviceControl {
    DeviceControl(cs.get_u16(base + DEV_CTL))
}

/// Sets Device Status error bits (device side, e.g. on a bad DMA).
pub fn report_error(cs: &mut ConfigSpace, base: u16, bits: u16) {
    cs.set_bits(base + DEV_STA, 2, u32::from(bits) & DEV_STA_ERRORS);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::capability::install_chain;

    fn space() -> ConfigSpace {
        let mut cs = ConfigSpace::new();
        install_chain(&mut cs, vec![(0x60, Box::new(PciExpress))]).unwrap();
        cs
    }

    #[test]
    fn registers_match_spec_1_3() {
        let cs = space();
        assert_eq!(cs.get_u16(0x60), 0x0010, "ID 0x10, next 0");
        assert_eq!(cs.get_u16(0x62), 0x0002);
        assert_eq!(cs.get_u32(0x64), 0x1000_8001);
        assert_eq!(cs.get_u16(0x68), 0x2810);
        assert_eq!(cs.get_u16(0x6a), 0);
        assert_eq!(cs.get_u32(0x6c), 0x0000_0104);
        assert_eq!(cs.get_u16(0x72), 0x0104);
        assert_eq!(cs.get_u32(0x84), 0x0001_039f);
        assert_eq!(cs.get_u32(0x8c), 0x1e);
        assert_eq!(cs.get_u16(0x90), 4);
        assert_eq!(cs.get_u16(0x92), 0);
        let dc = device_control(&cs, 0x60);
        assert!(dc.no_snoop() && dc.relaxed_ordering());
        assert_eq!(dc.max_read_request_size(), 512);
        assert_eq!(dc.max_payload_size(), 128);
    }

    #[test]
    fn device_control_masks_and_accessor() {
        let mut cs = space();
        let cap = PciExpress;
        let w = cap.write(&mut cs, 0x60, 0x68, &[0xff, 0x7f]).unwrap();
        assert!(!w.flr);
        assert_eq!(cs.get_u16(0x68), 0x78ff, "bits 8-10 RO 0");
        cap.write(&mut cs, 0x60, 0x68, &[0x00, 0x00]).unwrap();
        let dc = device_control(&cs, 0x60);
        assert!(!dc.no_snoop() && !dc.relaxed_ordering());
        cap.write(&mut cs, 0x60, 0x68, &[0x10, 0x08]).unwrap();
        let dc = device_control(&cs, 0x60);
        assert!(dc.no_snoop() && dc.relaxed_ordering());
    }

    #[test]
    fn initiate_flr_is_reported_and_reads_zero() {
        let mut cs = space();
        let cap = PciExpress;
        let w = cap.write(&mut cs, 0x60, 0x68, &[0x10, 0x88]).unwrap();
        assert!(w.flr);
        assert_eq!(cs.get_u16(0x68) & 0x8000, 0);
        let w = cap.write(&mut cs, 0x60, 0x69, &[0x80]).unwrap();
        assert!(w.flr, "byte write of the high byte");
        let w = cap.write(&mut cs, 0x60, 0x68, &[0xff]).unwrap();
        assert!(!w.flr, "low byte only");
        let w = cap
            .write(&mut cs, 0x60, 0x64, &[0, 0, 0, 0, 0, 0x80, 0, 0])
            .unwrap();
        assert!(w.flr, "wide write covering Device Control");
    }

    #[test]
    fn device_status_w1c() {
        let mut cs = space();
        report_error(&mut cs, 0x60, DEV_STA_URD | DEV_STA_CED | 0x20);
        assert_eq!(cs.get_u16(0x6a), 0x9, "only error bits set by the device");
        PciExpress.write(&mut cs, 0x60, 0x6a, &[0x08, 0]).unwrap();
        assert_eq!(cs.get_u16(0x6a), 0x1);
        PciExpress
            .write(&mut cs, 0x60, 0x6a, &[0xff, 0xff])
            .unwrap();
        assert_eq!(cs.get_u16(0x6a), 0);
    }

    #[test]
    fn link_and_control2_masks() {
        let mut cs = space();
        let cap = PciExpress;
        cap.write(&mut cs, 0x60, 0x70, &[0xff, 0xff]).unwrap();
        assert_eq!(cs.get_u16(0x70), 0x4b);
        cap.write(&mut cs, 0x60, 0x88, &[0xff, 0xff]).unwrap();
        assert_eq!(cs.get_u16(0x88), 0x105f);
        cap.write(&mut cs, 0x60, 0x90, &[0xf2, 0xff]).unwrap();
        assert_eq!(cs.get_u16(0x90), 0x2);
        cap.write(&mut cs, 0x60, 0x6c, &[0; 4]).unwrap();
        assert_eq!(cs.get_u32(0x6c), LINK_CAP, "Link Capabilities RO");
    }
}
