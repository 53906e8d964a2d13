//! MMU registers (hw-spec §9.1, BAR0 `0x0300-0x03ff`): offsets, bits, the programmed values
//! and their validation at `MMU_CONTROL.ENABLE` 0→1.
//!
//! ```text
//! 0x300 MMU_CONTROL        RW  0 ENABLE, 1 FAULT_IRQ
//! 0x304 MMU_STATUS         RO/W1C 0 ENABLED, 1 CONFIG_ERROR, 2 FAULT_OVERFLOW (W1C), 3 WAITING
//! 0x308/0x30c MMU_CTX_BASE_LO/HI (3:0 RO 0)   0x310 MMU_CTX_COUNT   0x314 MMU_CTX_APERTURE
//! 0x318/0x31c FAULT_RING_BASE_LO/HI (4:0 RO 0) 0x320 FAULT_RING_SIZE 0x324 FAULT_RING_APERTURE
//! 0x328 FAULT_PUT RO   0x32c FAULT_GET RW   0x330 FAULT_VECTOR RO
//! 0x340-0x377 64-bit statistics (FAULTS, FAULTS_DROPPED, REPLAYS, CANCELS, TLB_HITS,
//!             TLB_MISSES, INVALIDATIONS)
//! ```

use crate::engine::desc::{Addr, Aperture};

use super::fault_ring::{self, Ring};
use super::walk::ContextTable;

/// BAR0 offset of the block.
pub const BASE: u64 = 0x0300;
/// End of the block.
pub const END: u64 = 0x0400;
/// Most contexts.
pub const MAX_CONTEXTS: u32 = 4096;

/// Register offsets inside the block (relative to [`BASE`]).
pub mod offset {
    /// `MMU_CONTROL`.
    pub const CONTROL: u32 = 0x00;
    /// `MMU_STATUS`.
    pub const STATUS: u32 = 0x04;
    /// `MMU_CTX_BASE_LO`.
    pub const CTX_BASE_LO: u32 = 0x08;
    /// `MMU_CTX_BASE_HI`.
    pub const CTX_BASE_HI: u32 = 0x0c;
    /// `MMU_CTX_COUNT`.
    pub const CTX_COUNT: u32 = 0x10;
    /// `MMU_CTX_APERTURE`.
    pub const CTX_APERTURE: u32 = 0x14;
    /// `FAULT_RING_BASE_LO`.
    pub const RING_BASE_LO: u32 = 0x18;
    /// `FAULT_RING_BASE_HI`.
    pub const RING_BASE_HI: u32 = 0x1c;
    /// `FAULT_RING_SIZE`.
    pub const RING_SIZE: u32 = 0x20;
    /// `FAULT_RING_APERTURE`.
    pub const RING_APERTURE: u32 = 0x24;
    /// `FAULT_PUT`.
    pub const FAULT_PUT: u32 = 0x28;
    /// `FAULT_GET`.
    pub const FAULT_GET: u32 = 0x2c;
    /// `FAULT_VECTOR`.
    pub const FAULT_VECTOR: u32 = 0x30;
    /// First statistics counter.
    pub const STATS: u32 = 0x40;
    /// End of the statistics counters.
    pub const STATS_END: u32 = 0x78;
}

/// `MMU_CONTROL` bits.
pub mod control {
    /// Translate; 0→1 latches and validates.
    pub const ENABLE: u32 = 1 << 0;
    /// Signal the fault vector for new records.
    pub const FAULT_IRQ: u32 = 1 << 1;
    /// Stored bits.
    pub const RW: u32 = ENABLE | FAULT_IRQ;
}

/// `MMU_STATUS` bits.
pub mod status {
    /// The MMU translates.
    pub const ENABLED: u32 = 1 << 0;
    /// The last `ENABLE` 0→1 was refused.
    pub const CONFIG_ERROR: u32 = 1 << 1;
    /// A record was dropped (W1C).
    pub const FAULT_OVERFLOW: u32 = 1 << 2;
    /// An engine waits on a fault.
    pub const WAITING: u32 = 1 << 3;
}

/// The BAR0 register offset inside the block, for an offset in `[BASE, END)`.
pub fn decode_offset(bar_offset: u64) -> Option<u32> {
    (BASE..END)
        .contains(&bar_offset)
        .then(|| (bar_offset - BASE) as u32)
}

/// What the driver programmed (the latched registers read back as written).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Programmed {
    /// `MMU_CONTROL` (ENABLE reads 1 only while enabled).
    pub control: u32,
    /// `MMU_CTX_BASE`.
    pub ctx_base: u64,
    /// `MMU_CTX_COUNT`.
    pub ctx_count: u32,
    /// `MMU_CTX_APERTURE`.
    pub ctx_aperture: u32,
    /// `FAULT_RING_BASE`.
    pub ring_base: u64,
    /// `FAULT_RING_SIZE`.
    pub ring_size: u32,
    /// `FAULT_RING_APERTURE`.
    pub ring_aperture: u32,
}

/// The configuration latched at `ENABLE` 0→1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The context table.
    pub contexts: ContextTable,
    /// The fault ring.
    pub ring: Ring,
}

/// Why an `ENABLE` was refused (`CONFIG_ERROR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `MMU_CTX_COUNT` not in 1-4096.
    #[error("MMU_CTX_COUNT {0} not in 1-4096")]
    ContextCount(u32),
    /// An aperture other than SYS or VRAM.
    #[error("aperture {0} is neither SYS nor VRAM")]
    Aperture(u32),
    /// `FAULT_RING_SIZE` not a power of two in 1-65536.
    #[error("FAULT_RING_SIZE {0} not a power of two in 1-65536")]
    RingSize(u32),
    /// The table or the ring runs past the end of the 64-bit address space.
    #[error("{0} runs past the end of the address space")]
    Wraps(&'static str),
}

fn aperture(raw: u32) -> Result<Aperture, ConfigError> {
    Aperture::from_raw(raw).ok_or(ConfigError::Aperture(raw))
}

impl Programmed {
    /// Register write to a latched register (`reg` relative to [`BASE`]); ignored while
    /// enabled. Returns false if it was ignored.
    pub fn write_latched(&mut self, reg: u32, value: u32, enabled: bool) -> bool {
        if enabled {
            return false;
        }
        let lo = |old: u64, v: u32| (old & !0xffff_ffff) | u64::from(v);
        let hi = |old: u64, v: u32| (old & 0xffff_ffff) | (u64::from(v) << 32);
        match reg {
            offset::CTX_BASE_LO => self.ctx_base = lo(self.ctx_base, value & !0xf),
            offset::CTX_BASE_HI => self.ctx_base = hi(self.ctx_base, value),
            offset::CTX_COUNT => self.ctx_count = value,
            offset::CTX_APERTURE => self.ctx_aperture = value & 0x3,
            offset::RING_BASE_LO => self.ring_base = lo(self.ring_base, value & !0x1f),
            offset::RING_BASE_HI => self.ring_base = hi(self.ring_base, value),
            offset::RING_SIZE => self.ring_size = value,
            offset::RING_APERTURE => self.ring_aperture = value & 0x3,
            _ => return false,
        }
        true
    }

    /// Reads a latched register.
    pub fn read_latched(&self, reg: u32) -> Option<u32> {
        Some(match reg {
            offset::CTX_BASE_LO => self.ctx_base as u32,
            offset::CTX_BASE_HI => (self.ctx_base >> 32) as u32,
            offset::CTX_COUNT => self.ctx_count,
            offset::CTX_APERTURE => self.ctx_aperture,
            offset::RING_BASE_LO => self.ring_base as u32,
            offset::RING_BASE_HI => (self.ring_base >> 32) as u32,
            offset::RING_SIZE => self.ring_size,
            offset::RING_APERTURE => self.ring_aperture,
            _ => return None,
        })
    }

    /// Validates the programmed values (`ENABLE` 0→1).
    pub fn validate(&self) -> Result<Config, ConfigError> {
        if !(1..=MAX_CONTEXTS).contains(&self.ctx_count) {
            return Err(ConfigError::ContextCount(self.ctx_count));
        }
        let ctx_aperture = aperture(self.ctx_aperture)?;
        let ring_aperture = aperture(self.ring_aperture)?;
        if !self.ring_size.is_power_of_two() || self.ring_size > fault_ring::MAX_RING_SIZE {
            return Err(ConfigError::RingSize(self.ring_size));
        }
        let fits = |base: u64, bytes: u64| base.checked_add(bytes).is_some();
        if !fits(self.ctx_base, u64::from(self.ctx_count) * 16) {
            return Err(ConfigError::Wraps("the context table"));
        }
        if !fits(
            self.ring_base,
            u64::from(self.ring_size) * fault_ring::RECORD_SIZE,
        ) {
            return Err(ConfigError::Wraps("the fault ring"));
        }
        Ok(Config {
            contexts: ContextTable {
                base: Addr {
                    aperture: ctx_aperture,
                    addr: self.ctx_base,
                },
                count: self.ctx_count,
            },
            ring: Ring {
                base: Addr {
                    aperture: ring_aperture,
                    addr: self.ring_base,
                },
                size: self.ring_size,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Programmed {
        let mut p = Programmed::default();
        for (r, v) in [
            (offset::CTX_BASE_LO, 0x1234_5678),
            (offset::CTX_BASE_HI, 1),
            (offset::CTX_COUNT, 16),
            (offset::CTX_APERTURE, 1),
            (offset::RING_BASE_LO, 0xffff_ffff),
            (offset::RING_SIZE, 64),
        ] {
            assert!(p.write_latched(r, v, false));
        }
        p
    }

    #[test]
    fn latched_registers_mask_and_validate() {
        let mut p = good();
        assert_eq!(p.read_latched(offset::CTX_BASE_LO), Some(0x1234_5670));
        assert_eq!(p.read_latched(offset::RING_BASE_LO), Some(0xffff_ffe0));
        let c = p.validate().unwrap();
        assert_eq!(c.contexts.base.addr, 0x1_1234_5670);
        assert_eq!(c.contexts.base.aperture, Aperture::Vram);
        assert_eq!((c.contexts.count, c.ring.size), (16, 64));
        assert!(!p.write_latched(offset::CTX_COUNT, 2, true), "locked");
        assert_eq!(p.read_latched(offset::CTX_COUNT), Some(16));
        for (r, v, e) in [
            (offset::CTX_COUNT, 0, ConfigError::ContextCount(0)),
            (offset::CTX_COUNT, 4097, ConfigError::ContextCount(4097)),
            (offset::CTX_APERTURE, 2, ConfigError::Aperture(2)),
            (offset::RING_APERTURE, 3, ConfigError::Aperture(3)),
            (offset::RING_SIZE, 0, ConfigError::RingSize(0)),
            (offset::RING_SIZE, 3, ConfigError::RingSize(3)),
            (offset::RING_SIZE, 131072, ConfigError::RingSize(131072)),
        ] {
            let mut q = good();
            q.write_latched(r, v, false);
            assert_eq!(q.validate(), Err(e), "{r:#x}={v:#x}");
        }
        for (lo, hi, what) in [
            (
                offset::CTX_BASE_LO,
                offset::CTX_BASE_HI,
                "the context table",
            ),
            (offset::RING_BASE_LO, offset::RING_BASE_HI, "the fault ring"),
        ] {
            let mut q = good();
            q.write_latched(lo, 0xffff_ff00, false);
            q.write_latched(hi, u32::MAX, false);
            assert_eq!(q.validate(), Err(ConfigError::Wraps(what)));
        }
        p.write_latched(offset::RING_SIZE, 65536, false);
        p.write_latched(offset::CTX_COUNT, 4096, false);
        assert!(p.validate().is_ok());
        assert_eq!(decode_offset(0x300), Some(0));
        assert_eq!(decode_offset(0x3fc), Some(0xfc));
        assert_eq!(decode_offset(0x400), None);
    }
}
