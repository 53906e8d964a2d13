//! Advanced Error Reporting extended capability (ID 0x0001, version 2), hw-spec §1.4.
//!
//! ```text
//! +0x04 Uncorrectable Error Status    W1C
//! +0x08 Uncorrectable Error Mask      RW
//! +0x0c Uncorrectable Error Severity  RW, reset 0x00462030
//! +0x10 Correctable Error Status      W1C
//! +0x14 Correctable Error Mask        RW, reset 0x00002000 (Advisory Non-Fatal masked)
//! +0x18 Advanced Error Caps/Control   First Error Pointer (4:0) RO; ECRC bits RO 0
//! +0x1c Header Log                    RO, 4 dwords
//! +0x2c..0x48 Root / TLP prefix log   RO 0 (endpoint)
//! ```

use super::capability::{CapId, Capability};
use super::config_space::{ConfigSpace, Register};

/// Uncorrectable errors implemented: DLP (4), SDES (5), Poisoned TLP (12), FCP (13), Completion
/// Timeout (14), Completer Abort (15), Unexpected Completion (16), Receiver Overflow (17),
/// Malformed TLP (18), ECRC (19), Unsupported Request (20), Uncorrectable Internal (22).
pub const UNCOR_BITS: u32 = 0x005f_f030;
/// Uncorrectable severity reset value.
pub const UNCOR_SEVERITY_RESET: u32 = 0x0046_2030;
/// Correctable errors implemented: RX (0), Bad TLP (6), Bad DLLP (7), REPLAY_NUM (8), Replay
/// Timer (12), Advisory Non-Fatal (13), Corrected Internal (14), Header Log Overflow (15).
pub const COR_BITS: u32 = 0x0000_f1c1;
/// Correctable mask reset value.
pub const COR_MASK_RESET: u32 = 0x0000_2000;
/// Uncorrectable Status offset.
pub const UNCOR_STATUS: u16 = 0x04;
/// Correctable Status offset.
pub const COR_STATUS: u16 = 0x10;
/// Advanced Error Capabilities and Control offset.
pub const CAP_CONTROL: u16 = 0x18;
/// Header Log offset.
pub const HEADER_LOG: u16 = 0x1c;
/// Uncorrectable: Completer Abort.
pub const UNCOR_COMPLETER_ABORT: u32 = 1 << 15;
/// Uncorrectable: Unsupported Request.
pub const UNCOR_UNSUPPORTED_REQUEST: u32 = 1 << 20;
/// Uncorrectable: Uncorrectable Internal Error.
pub const UNCOR_INTERNAL: u32 = 1 << 22;
/// Uncorrectable Mask offset.
pub const UNCOR_MASK: u16 = 0x08;

/// The AER capability.
#[derive(Debug, Default)]
pub struct Aer;

impl Capability for Aer {
    fn name(&self) -> &'static str {
        "Advanced Error Reporting"
    }
    fn id(&self) -> CapId {
        CapId::Extended {
            id: 0x0001,
            version: 2,
        }
    }
    fn size(&self) -> u16 {
        0x48
    }
    fn registers(&self) -> Vec<Register> {
        let mut regs = vec![
            Register::ro("AER Uncorrectable Status", UNCOR_STATUS, 4, 0).with_w1c(UNCOR_BITS),
            Register::rw("AER Uncorrectable Mask", 0x08, 4, 0, UNCOR_BITS),
            Register::rw(
                "AER Uncorrectable Severity",
                0x0c,
                4,
                UNCOR_SEVERITY_RESET,
                UNCOR_BITS,
            ),
            Register::ro("AER Correctable Status", COR_STATUS, 4, 0).with_w1c(COR_BITS),
            Register::rw("AER Correctable Mask", 0x14, 4, COR_MASK_RESET, COR_BITS),
            Register::ro("AER Capabilities and Control", CAP_CONTROL, 4, 0),
        ];
        for i in 0..4u16 {
            regs.push(Register::ro("AER Header Log", HEADER_LOG + 4 * i, 4, 0));
        }
        for off in (0x2c..0x48).step_by(4) {
            regs.push(Register::ro("AER (root/prefix log)", off, 4, 0));
        }
        regs
    }
}

/// Records an uncorrectable error (device side): sets the status bit; if no unmasked error was
/// pending, points First Error Pointer at it and stores the header log. Returns whether the error
/// is unmasked (i.e. would be signalled).
pub fn record_uncorrectable(cs: &mut ConfigSpace, base: u16, bit: u32, header: [u32; 4]) -> bool {
    let bit = bit & UNCOR_BITS;
    if bit == 0 {
        return false;
    }
    let status = cs.get_u32(base + UNCOR_STATUS);
    let mask = cs.get_u32(base + 0x08);
    if status & !mask == 0 && bit & !mask != 0 {
        let fep = bit.trailing_zeros();
        let ctl = cs.get_u32(base + CAP_CONTROL) & !0x1f;
        cs.set(base + CAP_CONTROL, 4, ctl | fep);
        for (i, dw) in header.iter().enumerate() {
            cs.set(base + HEADER_LOG + 4 * i as u16, 4, *dw);
        }
    }
    cs.set_bits(base + UNCOR_STATUS, 4, bit);
    bit & !mask != 0
}

/// Is the error fatal according to the Severity register.
pub fn is_fatal(cs: &ConfigSpace, base: u16, bit: u32) -> bool {
    cs.get_u32(base + 0x0c) & bit != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::capability::{install_chain, Capability};

    fn space() -> ConfigSpace {
        let mut cs = ConfigSpace::new();
        install_chain(&mut cs, vec![(0x100, Box::new(Aer))]).unwrap();
        cs
    }

    #[test]
    fn registers_match_spec() {
        let cs = space();
        assert_eq!(cs.get_u32(0x100), 0x0002_0001, "ID 1, v2, next 0");
        assert_eq!(cs.get_u32(0x10c), 0x0046_2030);
        assert_eq!(cs.get_u32(0x114), 0x0000_2000);
        assert_eq!(cs.get_u32(0x104), 0, "Uncorrectable Status");
        assert_eq!(cs.get_u32(0x108), 0, "Uncorrectable Mask");
        assert_eq!(cs.get_u32(0x110), 0, "Correctable Status");
        assert_eq!(cs.get_u32(0x118), 0, "First Error Pointer 0, no ECRC");
    }

    #[test]
    fn masks_and_w1c() {
        let mut cs = space();
        let aer = Aer;
        aer.write(&mut cs, 0x100, 0x108, &[0xff; 4]).unwrap();
        assert_eq!(cs.get_u32(0x108), UNCOR_BITS);
        aer.write(&mut cs, 0x100, 0x114, &[0xff; 4]).unwrap();
        assert_eq!(cs.get_u32(0x114), COR_BITS);
        aer.write(&mut cs, 0x100, 0x10c, &[0xff; 4]).unwrap();
        assert_eq!(
            cs.get_u32(0x10c),
            UNCOR_BITS,
            "Severity: implemented bits only"
        );
        aer.write(&mut cs, 0x100, 0x10c, &[0; 4]).unwrap();
        assert_eq!(cs.get_u32(0x10c), 0);
        aer.write(&mut cs, 0x100, 0x114, &[0; 4]).unwrap();
        assert_eq!(
            cs.get_u32(0x114),
            0,
            "Correctable Mask clears (Linux 7.3 does)"
        );
        aer.write(&mut cs, 0x100, 0x118, &[0xff; 4]).unwrap();
        assert_eq!(cs.get_u32(0x118), 0, "ECRC bits and FEP RO");
        aer.write(&mut cs, 0x100, 0x104, &[0xff; 4]).unwrap();
        assert_eq!(cs.get_u32(0x104), 0, "status is not writable to 1");
        cs.set_bits(0x110, 4, 0x41);
        aer.write(&mut cs, 0x100, 0x110, &[0x01, 0, 0, 0]).unwrap();
        assert_eq!(cs.get_u32(0x110), 0x40);
    }

    #[test]
    fn record_sets_status_pointer_and_log() {
        let mut cs = space();
        assert!(record_uncorrectable(
            &mut cs,
            0x100,
            UNCOR_UNSUPPORTED_REQUEST,
            [1, 2, 3, 4]
        ));
        assert_eq!(cs.get_u32(0x104), 1 << 20);
        assert_eq!(cs.get_u32(0x118) & 0x1f, 20);
        assert_eq!(cs.get_u32(0x11c), 1);
        assert_eq!(cs.get_u32(0x128), 4);
        // A second error keeps the first error's pointer and log.
        assert!(record_uncorrectable(
            &mut cs,
            0x100,
            UNCOR_COMPLETER_ABORT,
            [9; 4]
        ));
        assert_eq!(cs.get_u32(0x118) & 0x1f, 20);
        assert_eq!(cs.get_u32(0x11c), 1);
        assert!(!is_fatal(&cs, 0x100, UNCOR_UNSUPPORTED_REQUEST));
        // Masked errors set status but are not signalled.
        let mut cs = space();
        cs.set(0x108, 4, UNCOR_COMPLETER_ABORT);
        assert!(!record_uncorrectable(
            &mut cs,
            0x100,
            UNCOR_COMPLETER_ABORT,
            [0; 4]
        ));
        assert_eq!(cs.get_u32(0x104), UNCOR_COMPLETER_ABORT);
        assert!(
            !record_uncorrectable(&mut cs, 0x100, 1 << 31, [0; 4]),
            "unknown bit ignored"
        );
    }
}
