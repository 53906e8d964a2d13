//! The fault ring (hw-spec §9.4): 32-byte records, free-running `FAULT_PUT`/`FAULT_GET`.
//!
//! ```text
//! 0x00 u64 addr       first faulting virtual address
//! 0x08 u16 context
//! 0x0a u8  engine
//! 0x0b u8  access     0 read, 1 write, 2 atomic
//! 0x0c u8  reason     1 NOT_PRESENT .. 6 VA_RANGE
//! 0x0d u8  level      0-3, 4 = context entry / address
//! 0x0e u16 reserved
//! 0x10 u64 timestamp  device clock
//! 0x18 u32 seq        FAULTS before this record (low 32 bits)
//! 0x1c u32 reserved
//! ```

use crate::engine::desc::Addr;

use super::walk::{Access, Reason};

/// Bytes per record.
pub const RECORD_SIZE: u64 = 32;
/// Largest ring (records).
pub const MAX_RING_SIZE: u32 = 65536;
/// Byte offsets of the record's fields.
pub mod field {
    /// `addr` (u64).
    pub const ADDR: usize = 0x00;
    /// `context` (u16).
    pub const CONTEXT: usize = 0x08;
    /// `engine` (u8).
    pub const ENGINE: usize = 0x0a;
    /// `access` (u8).
    pub const ACCESS: usize = 0x0b;
    /// `reason` (u8).
    pub const REASON: usize = 0x0c;
    /// `level` (u8).
    pub const LEVEL: usize = 0x0d;
    /// `timestamp` (u64).
    pub const TIMESTAMP: usize = 0x10;
    /// `seq` (u32).
    pub const SEQ: usize = 0x18;
}
/// Doorbell page offset of `FAULT_PUT` (device-written).
pub const DB_FAULT_PUT: u64 = 0x800;
/// Doorbell page offset of `FAULT_GET` (driver-written).
pub const DB_FAULT_GET: u64 = 0x804;

/// One fault record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// First faulting virtual address.
    pub addr: u64,
    /// Context.
    pub context: u16,
    /// Engine index.
    pub engine: u8,
    /// Access kind.
    pub access: Access,
    /// Why.
    pub reason: Reason,
    /// Where the walk stopped.
    pub level: u8,
    /// Device clock.
    pub timestamp: u64,
    /// The fault's number.
    pub seq: u32,
}

impl Record {
    /// The 32 bytes in memory.
    pub fn to_bytes(&self) -> [u8; RECORD_SIZE as usize] {
        let mut b = [0u8; RECORD_SIZE as usize];
        b[field::ADDR..field::ADDR + 8].copy_from_slice(&self.addr.to_le_bytes());
        b[field::CONTEXT..field::CONTEXT + 2].copy_from_slice(&self.context.to_le_bytes());
        b[field::ENGINE] = self.engine;
        b[field::ACCESS] = self.access as u8;
        b[field::REASON] = self.reason as u8;
        b[field::LEVEL] = self.level;
        b[field::TIMESTAMP..field::TIMESTAMP + 8].copy_from_slice(&self.timestamp.to_le_bytes());
        b[field::SEQ..field::SEQ + 4].copy_from_slice(&self.seq.to_le_bytes());
        b
    }
}

/// A latched fault ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ring {
    /// Base (32-byte aligned, SYS or VRAM).
    pub base: Addr,
    /// Records (a power of two, 1-65536).
    pub size: u32,
}

impl Ring {
    /// Is the ring full for `put`/`get`? A `get` the driver moved past `put` (a difference
    /// larger than the ring) counts as full: the device never overwrites a record it cannot
    /// prove consumed.
    pub fn full(&self, put: u32, get: u32) -> bool {
        put.wrapping_sub(get) >= self.size
    }

    /// Where record number `n` goes (`base + 32 * (n mod size)`; no overflow: validated at
    /// enable that the whole ring fits).
    pub fn slot_addr(&self, n: u32) -> Addr {
        Addr {
            aperture: self.base.aperture,
            addr: self
                .base
                .addr
                .wrapping_add(u64::from(n & (self.size - 1)) * RECORD_SIZE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::desc::Aperture;

    #[test]
    fn record_layout() {
        let r = Record {
            addr: 0x1122_3344_5566_7788,
            context: 0xabcd,
            engine: 3,
            access: Access::Atomic,
            reason: Reason::Protection,
            level: 1,
            timestamp: 0x0102_0304_0506_0708,
            seq: 0xdead_beef,
        };
        let b = r.to_bytes();
        assert_eq!(&b[0..8], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[8..10], &[0xcd, 0xab]);
        assert_eq!((b[0x0a], b[0x0b], b[0x0c], b[0x0d]), (3, 2, 2, 1));
        assert_eq!(&b[0x0e..0x10], &[0, 0], "reserved");
        assert_eq!(&b[0x10..0x18], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[0x18..0x1c], &0xdead_beefu32.to_le_bytes());
        assert_eq!(&b[0x1c..0x20], &[0; 4], "reserved");
    }

    #[test]
    fn ring_math() {
        let ring = Ring {
            base: Addr {
                aperture: Aperture::Vram,
                addr: 0x1000,
            },
            size: 4,
        };
        assert!(!ring.full(0, 0));
        assert!(!ring.full(3, 0));
        assert!(ring.full(4, 0));
        assert!(ring.full(1, 2), "get past put counts as full");
        assert!(!ring.full(2, u32::MAX), "free-running across the wrap");
        assert!(ring.full(3, u32::MAX));
        assert_eq!(ring.slot_addr(5).addr, 0x1000 + 32);
        assert_eq!(ring.slot_addr(u32::MAX).addr, 0x1000 + 3 * 32);
    }
}
