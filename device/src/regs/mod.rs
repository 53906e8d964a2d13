//! The BAR0 register file (hw-spec §3).
//!
//! Registers are 32-bit and accessed with aligned 4-byte accesses. Anything else (other widths,
//! unaligned offsets) reads `0xffff_ffff`, drops writes, and is counted — never a panic. Offsets
//! with no register are reserved: reads 0, writes ignored. Plain registers are stored through
//! their masks (`spec.rs`); `VRAM_DATA`, `SOFT_RESET`, `IRQ_TRIGGER` and `IRQ_COUNT` reach the
//! rest of the device through [`RegisterContext`], so the file is unit-testable with a fake.

pub mod spec;

use spec::{Kind, Reset, REGISTERS};

/// Bytes per register (the only access width the file accepts).
pub const REGISTER_WIDTH: usize = 4;
/// What a rejected access (bad width or alignment) reads.
pub const BAD_READ: u32 = u32::MAX;
/// What a `VRAM_DATA` read with the index out of range returns.
pub const VRAM_DATA_BAD: u32 = u32::MAX;

/// End of the register file inside BAR0.
pub const REGISTER_FILE_SIZE: u64 = 0x10_0000;

/// What the register file needs from the rest of the device.
pub trait RegisterContext {
    /// Reads a VRAM dword from the device's side; `None` if out of range.
    fn vram_read_u32(&mut self, offset: u64) -> Option<u32>;
    /// Writes a VRAM dword from the device's side; false if out of range.
    fn vram_write_u32(&mut self, offset: u64, value: u32) -> bool;
    /// Signals MSI-X vector `vector` (already checked `< num_vectors`).
    fn signal(&mut self, vector: u32);
    /// Messages signalled since reset.
    fn irq_count(&self) -> u64;
    /// The device clock in nanoseconds.
    fn clock_ns(&self) -> u64;
}

/// Parameters fixed by the device configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterParams {
    /// Number of MSI-X vectors.
    pub num_vectors: u32,
    /// VRAM size in bytes.
    pub vram_size: u64,
    /// Number of DMA engines.
    pub engines: u32,
}

/// Counters of rejected accesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegisterStats {
    /// Accesses with a bad width or alignment.
    pub bad_accesses: u64,
    /// `IRQ_TRIGGER` writes with an out-of-range vector.
    pub bad_irq_triggers: u64,
    /// `VRAM_DATA` accesses with the index out of range.
    pub vram_index_errors: u64,
}

/// What a write asks of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegisterWrite {
    /// `SOFT_RESET` was written with the magic value.
    pub soft_reset: bool,
}

/// The register file.
#[derive(Debug)]
pub struct RegisterFile {
    params: RegisterParams,
    values: Vec<u32>,
    stats: RegisterStats,
}

impl RegisterFile {
    /// The file at its reset values.
    pub fn new(params: RegisterParams) -> Self {
        let mut f = RegisterFile {
            params,
            values: vec![0; REGISTERS.len()],
            stats: RegisterStats::default(),
        };
        f.reset();
        f
    }

    /// Every register to its reset value (counters are kept: they are statistics).
    pub fn reset(&mut self) {
        for (v, r) in self.values.iter_mut().zip(REGISTERS) {
            *v = match r.reset {
                Reset::Value(x) => x,
                Reset::NumVectors => self.params.num_vectors,
                Reset::VramSizeLo => self.params.vram_size as u32,
                Reset::VramSizeHi => (self.params.vram_size >> 32) as u32,
                Reset::Caps => {
                    let engines = if self.params.engines > 0 {
                        spec::CAPS_DMA_ENGINES | spec::CAPS_DOORBELL_MMAP | spec::CAPS_PEER_WINDOWS
                    } else {
                        0
                    };
                    let mmu = if crate::mmu::present(self.params.engines, self.params.num_vectors) {
                        spec::CAPS_MMU
                    } else {
                        0
                    };
                    spec::CAPS_MSIX | spec::CAPS_VRAM_MMAP | engines | mmu
                }
                Reset::EngineCount => self.params.engines,
            };
        }
    }

    /// Counters.
    pub fn stats(&self) -> RegisterStats {
        self.stats
    }

    /// Sets bits of a storage register from the device side (e.g. `ERR_CAUSE`).
    pub fn set_bits(&mut self, offset: u32, bits: u32) {
        let v = self.value(offset);
        self.store(offset, v | bits);
    }

    /// The current value of a storage register (0 for other offsets).
    pub fn peek(&self, offset: u32) -> u32 {
        self.value(offset)
    }

    fn value(&self, offset: u32) -> u32 {
        spec::lookup(offset)
            .and_then(|(i, _)| self.values.get(i).copied())
            .unwrap_or(0)
    }

    fn store(&mut self, offset: u32, value: u32) {
        if let Some((i, _)) = spec::lookup(offset) {
            if let Some(v) = self.values.get_mut(i) {
                *v = value;
            }
        }
    }

    fn decode(&mut self, offset: u64, len: usize) -> Option<u32> {
        let ok = len == REGISTER_WIDTH
            && offset.is_multiple_of(REGISTER_WIDTH as u64)
            && offset
                .checked_add(4)
                .is_some_and(|end| end <= REGISTER_FILE_SIZE);
        if !ok {
            self.stats.bad_accesses += 1;
            return None;
        }
        u32::try_from(offset).ok()
    }

    fn vram_index(&self) -> u64 {
        (u64::from(self.value(spec::offset::VRAM_INDEX_HI)) << 32)
            | u64::from(self.value(spec::offset::VRAM_INDEX_LO) & !3)
    }

    fn vram_access(&mut self, ok: bool) {
        if ok {
            let next = self.vram_index().wrapping_add(4);
            self.store(spec::offset::VRAM_INDEX_LO, next as u32);
            self.store(spec::offset::VRAM_INDEX_HI, (next >> 32) as u32);
        } else {
            self.stats.vram_index_errors += 1;
            let s = self.value(spec::offset::STATUS);
            self.store(spec::offset::STATUS, s | spec::STATUS_VRAM_INDEX_ERR);
        }
    }

    /// A read of `data.len()` bytes at `offset` (inside the register file).
    pub fn read(&mut self, offset: u64, data: &mut [u8], ctx: &mut dyn RegisterContext) {
        let Some(off) = self.decode(offset, data.len()) else {
            // Every byte of BAD_READ (the access may be any width).
            data.fill(BAD_READ.to_le_bytes()[0]);
            return;
        };
        let value = match spec::lookup(off) {
            None => 0,
            Some((i, r)) => match r.kind {
                Kind::Storage => self.values.get(i).copied().unwrap_or(0),
                Kind::SoftReset | Kind::IrqTrigger => 0,
                Kind::IrqCount => ctx.irq_count() as u32,
                Kind::ClockLo => {
                    let ns = ctx.clock_ns();
                    self.store(spec::offset::CLOCK_HI, (ns >> 32) as u32);
                    ns as u32
                }
                Kind::VramData => {
                    let v = ctx.vram_read_u32(self.vram_index());
                    self.vram_access(v.is_some());
                    v.unwrap_or(VRAM_DATA_BAD)
                }
            },
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A write of `data` at `offset` (inside the register file).
    pub fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        ctx: &mut dyn RegisterContext,
    ) -> RegisterWrite {
        let mut out = RegisterWrite::default();
        let Some(off) = self.decode(offset, data.len()) else {
            return out;
        };
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return out;
        };
        let value = u32::from_le_bytes(bytes);
        let Some((i, r)) = spec::lookup(off) else {
            return out;
        };
        match r.kind {
            Kind::Storage => {
                if let Some(v) = self.values.get_mut(i) {
                    *v = ((*v & !r.rw) | (value & r.rw)) & !(value & r.w1c);
                }
            }
            Kind::IrqCount | Kind::ClockLo => {}
            Kind::SoftReset => out.soft_reset = value == spec::SOFT_RESET_MAGIC,
            Kind::IrqTrigger => {
                if value < self.params.num_vectors {
                    if value < spec::IRQ_STATUS_VECTORS {
                        let s = self.value(spec::offset::IRQ_STATUS);
                        self.store(spec::offset::IRQ_STATUS, s | (1 << value));
                    }
                    ctx.signal(value);
                } else {
                    self.stats.bad_irq_triggers += 1;
                }
            }
            Kind::VramData => {
                let ok = ctx.vram_write_u32(self.vram_index(), value);
                self.vram_access(ok);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::spec::offset::*;
    use super::*;

    struct Fake {
        vram: Vec<u8>,
        signals: Vec<u32>,
    }

    impl RegisterContext for Fake {
        fn vram_read_u32(&mut self, offset: u64) -> Option<u32> {
            let o = usize::try_from(offset).ok()?;
            let b = self.vram.get(o..o.checked_add(4)?)?;
            Some(u32::from_le_bytes(b.try_into().ok()?))
        }
        fn vram_write_u32(&mut self, offset: u64, value: u32) -> bool {
            let Some(o) = usize::try_from(offset).ok() else {
                return false;
            };
            match self.vram.get_mut(o..o + 4) {
                Some(b) => {
                    b.copy_from_slice(&value.to_le_bytes());
                    true
                }
                None => false,
            }
        }
        fn signal(&mut self, vector: u32) {
            self.signals.push(vector);
        }
        fn irq_count(&self) -> u64 {
            self.signals.len() as u64
        }
        fn clock_ns(&self) -> u64 {
            0x1_2345_6789
        }
    }

    fn setup() -> (RegisterFile, Fake) {
        let f = RegisterFile::new(RegisterParams {
            num_vectors: 40,
            vram_size: 0x4_0000_0000,
            engines: 4,
        });
        (
            f,
            Fake {
                vram: vec![0; 64],
                signals: vec![],
            },
        )
    }

    fn rd(f: &mut RegisterFile, c: &mut Fake, off: u32) -> u32 {
        let mut b = [0u8; 4];
        f.read(u64::from(off), &mut b, c);
        u32::from_le_bytes(b)
    }

    fn wr(f: &mut RegisterFile, c: &mut Fake, off: u32, v: u32) -> RegisterWrite {
        f.write(u64::from(off), &v.to_le_bytes(), c)
    }

    #[test]
    fn table_is_sorted_and_unique() {
        assert!(REGISTERS.windows(2).all(|w| w[0].offset < w[1].offset));
        assert!(REGISTERS.iter().all(|r| r.offset % 4 == 0));
    }

    #[test]
    fn identification_registers() {
        let (mut f, mut c) = setup();
        assert_eq!(rd(&mut f, &mut c, ID), 0x5647_5055);
        assert_eq!(rd(&mut f, &mut c, VERSION), 5);
        assert_eq!(rd(&mut f, &mut c, CAPS), 0x3f);
        assert_eq!(rd(&mut f, &mut c, NUM_VECTORS), 40);
        assert_eq!(rd(&mut f, &mut c, VRAM_SIZE_LO), 0);
        assert_eq!(rd(&mut f, &mut c, VRAM_SIZE_HI), 4);
        assert_eq!(rd(&mut f, &mut c, STATUS), 1);
        wr(&mut f, &mut c, ID, 0);
        wr(&mut f, &mut c, STATUS, 0xffff_ffff);
        assert_eq!(rd(&mut f, &mut c, ID), 0x5647_5055, "RO");
        assert_eq!(rd(&mut f, &mut c, STATUS), 1, "READY is RO");
    }

    #[test]
    fn scratch_and_reserved() {
        let (mut f, mut c) = setup();
        for off in [0x20, 0x24, 0x28, 0x2c] {
            wr(&mut f, &mut c, off, 0xa5a5_0000 | off);
            assert_eq!(rd(&mut f, &mut c, off), 0xa5a5_0000 | off);
        }
        wr(&mut f, &mut c, 0x1c, 0xffff_ffff);
        assert_eq!(rd(&mut f, &mut c, 0x1c), 0, "reserved reads 0");
        assert_eq!(rd(&mut f, &mut c, 0xf_fffc), 0);
        assert_eq!(f.stats().bad_accesses, 0);
    }

    #[test]
    fn bad_width_and_alignment_are_counted() {
        let (mut f, mut c) = setup();
        let mut b2 = [0u8; 2];
        f.read(0, &mut b2, &mut c);
        assert_eq!(b2, [0xff, 0xff]);
        let mut b4 = [0u8; 4];
        f.read(0x22, &mut b4, &mut c);
        assert_eq!(b4, [0xff; 4]);
        let mut b8 = [0u8; 8];
        f.read(0x20, &mut b8, &mut c);
        assert_eq!(b8, [0xff; 8]);
        f.write(0x20, &[1], &mut c);
        f.write(0x21, &[1, 2, 3, 4], &mut c);
        f.write(0x20, &[1; 8], &mut c);
        f.write(REGISTER_FILE_SIZE - 2, &[1; 4], &mut c);
        f.read(u64::MAX - 3, &mut b4, &mut c);
        f.read(0, &mut [], &mut c);
        assert_eq!(rd(&mut f, &mut c, 0x20), 0, "dropped writes");
        assert_eq!(f.stats().bad_accesses, 9);
    }

    #[test]
    fn vram_window_reads_writes_and_advances() {
        let (mut f, mut c) = setup();
        c.vram[8..12].copy_from_slice(&0x1122_3344u32.to_le_bytes());
        wr(&mut f, &mut c, VRAM_INDEX_LO, 8 | 3);
        assert_eq!(rd(&mut f, &mut c, VRAM_INDEX_LO), 8, "bits 1:0 ignored");
        assert_eq!(rd(&mut f, &mut c, VRAM_DATA), 0x1122_3344);
        assert_eq!(rd(&mut f, &mut c, VRAM_INDEX_LO), 12);
        wr(&mut f, &mut c, VRAM_DATA, 0xcafe_f00d);
        assert_eq!(&c.vram[12..16], &0xcafe_f00du32.to_le_bytes());
        assert_eq!(rd(&mut f, &mut c, VRAM_INDEX_LO), 16);
    }

    #[test]
    fn vram_window_out_of_range() {
        let (mut f, mut c) = setup();
        wr(&mut f, &mut c, VRAM_INDEX_LO, 64);
        assert_eq!(rd(&mut f, &mut c, VRAM_DATA), 0xffff_ffff);
        wr(&mut f, &mut c, VRAM_DATA, 1);
        assert_eq!(rd(&mut f, &mut c, VRAM_INDEX_LO), 64, "no advance");
        assert_eq!(rd(&mut f, &mut c, STATUS), 3, "VRAM_INDEX_ERR set");
        wr(&mut f, &mut c, VRAM_INDEX_HI, 0xffff_ffff);
        wr(&mut f, &mut c, VRAM_INDEX_LO, 0xffff_fffc);
        assert_eq!(rd(&mut f, &mut c, VRAM_DATA), 0xffff_ffff);
        assert_eq!(f.stats().vram_index_errors, 3);
        wr(&mut f, &mut c, STATUS, 2);
        assert_eq!(rd(&mut f, &mut c, STATUS), 1, "W1C");
    }

    #[test]
    fn irq_trigger_status_and_count() {
        let (mut f, mut c) = setup();
        wr(&mut f, &mut c, IRQ_TRIGGER, 3);
        wr(&mut f, &mut c, IRQ_TRIGGER, 35);
        wr(&mut f, &mut c, IRQ_TRIGGER, 40);
        wr(&mut f, &mut c, IRQ_TRIGGER, u32::MAX);
        assert_eq!(c.signals, vec![3, 35]);
        assert_eq!(
            rd(&mut f, &mut c, IRQ_STATUS),
            1 << 3,
            "only vectors < 32 have a bit"
        );
        assert_eq!(rd(&mut f, &mut c, IRQ_COUNT), 2);
        assert_eq!(rd(&mut f, &mut c, IRQ_TRIGGER), 0, "WO reads 0");
        assert_eq!(f.stats().bad_irq_triggers, 2);
        wr(&mut f, &mut c, IRQ_STATUS, 1 << 3);
        assert_eq!(rd(&mut f, &mut c, IRQ_STATUS), 0);
        wr(&mut f, &mut c, IRQ_COUNT, 0);
        assert_eq!(rd(&mut f, &mut c, IRQ_COUNT), 2, "RO");
    }

    #[test]
    fn engine_discovery_registers() {
        let (mut f, mut c) = setup();
        assert_eq!(rd(&mut f, &mut c, ENGINE_COUNT), 4);
        assert_eq!(rd(&mut f, &mut c, DOORBELL_OFFSET), 0x20_0000);
        assert_eq!(rd(&mut f, &mut c, DOORBELL_STRIDE), 0x40);
        assert_eq!(rd(&mut f, &mut c, ENGINE_VECTOR_BASE), 1);
        let mut none = RegisterFile::new(RegisterParams {
            num_vectors: 1,
            vram_size: 1 << 20,
            engines: 0,
        });
        assert_eq!(
            rd(&mut none, &mut c, CAPS),
            3,
            "no engine bits without engines"
        );
        // The MMU needs its fault vector: 1 + ENGINE_COUNT < NUM_VECTORS.
        for (vectors, caps) in [(5, 0x1f), (6, 0x3f)] {
            let mut f = RegisterFile::new(RegisterParams {
                num_vectors: vectors,
                vram_size: 1 << 20,
                engines: 4,
            });
            assert_eq!(rd(&mut f, &mut c, CAPS), caps, "{vectors} vectors");
        }
    }

    #[test]
    fn err_cause_and_clock() {
        let (mut f, mut c) = setup();
        f.set_bits(ERR_CAUSE, 1 << 2);
        f.set_bits(ERR_CAUSE, 1);
        assert_eq!(rd(&mut f, &mut c, ERR_CAUSE), 5);
        wr(&mut f, &mut c, ERR_CAUSE, 4);
        assert_eq!(rd(&mut f, &mut c, ERR_CAUSE), 1, "W1C");
        assert_eq!(rd(&mut f, &mut c, CLOCK_HI), 0, "nothing latched yet");
        assert_eq!(rd(&mut f, &mut c, CLOCK_LO), 0x2345_6789);
        assert_eq!(rd(&mut f, &mut c, CLOCK_HI), 1, "latched by CLOCK_LO");
        wr(&mut f, &mut c, CLOCK_LO, 0);
        f.reset();
        assert_eq!(rd(&mut f, &mut c, ERR_CAUSE), 0);
        assert_eq!(rd(&mut f, &mut c, CLOCK_HI), 0);
    }

    #[test]
    fn soft_reset_magic_only() {
        let (mut f, mut c) = setup();
        assert!(!wr(&mut f, &mut c, SOFT_RESET, 1).soft_reset);
        assert!(wr(&mut f, &mut c, SOFT_RESET, 0x5253_5421).soft_reset);
        assert_eq!(rd(&mut f, &mut c, SOFT_RESET), 0);
        wr(&mut f, &mut c, SCRATCH0, 7);
        wr(&mut f, &mut c, VRAM_INDEX_LO, 64);
        rd(&mut f, &mut c, VRAM_DATA);
        f.reset();
        assert_eq!(rd(&mut f, &mut c, SCRATCH0), 0);
        assert_eq!(rd(&mut f, &mut c, STATUS), 1);
        assert_eq!(rd(&mut f, &mut c, VRAM_INDEX_LO), 0);
    }
}
