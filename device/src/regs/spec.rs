//! The BAR0 register file of hw-spec §3, as data.

/// `ID` value: "UPGV".
pub const ID_VALUE: u32 = 0x5647_5055;
/// `VERSION` value: spec 0.5.
pub const VERSION_VALUE: u32 = 0x0000_0005;
/// `CAPS` bit 0: MSI-X.
pub const CAPS_MSIX: u32 = 1 << 0;
/// `CAPS` bit 1: VRAM BAR mmappable.
pub const CAPS_VRAM_MMAP: u32 = 1 << 1;
/// `CAPS` bit 2: DMA engines present.
pub const CAPS_DMA_ENGINES: u32 = 1 << 2;
/// `CAPS` bit 3: doorbell page mmappable.
pub const CAPS_DOORBELL_MMAP: u32 = 1 << 3;
/// `CAPS` bit 4: peer windows (hw-spec §6.10).
pub const CAPS_PEER_WINDOWS: u32 = 1 << 4;
/// `CAPS` bit 5: the device MMU (hw-spec §9; engines and a fault vector needed).
pub const CAPS_MMU: u32 = 1 << 5;
/// `STATUS` bit 0: READY.
pub const STATUS_READY: u32 = 1 << 0;
/// `STATUS` bit 1: VRAM_INDEX_ERR.
pub const STATUS_VRAM_INDEX_ERR: u32 = 1 << 1;
/// First `VERSION` with the engine registers (spec 0.2; drivers check it).
pub const VERSION_ENGINES: u32 = 0x0000_0002;
/// First `VERSION` with the device MMU (spec 0.4).
pub const VERSION_MMU: u32 = 0x0000_0004;
/// `IRQ_STATUS` has a bit for vectors below this.
pub const IRQ_STATUS_VECTORS: u32 = 32;
/// Bytes per 64-bit statistics counter (engine §8.1, MMU §9.1): `_LO` at +0 latches `_HI`.
pub const COUNTER_SIZE: u32 = 8;
/// Offset of a counter's `_HI` dword from its `_LO`.
pub const COUNTER_HI: u32 = 4;
/// `SOFT_RESET` magic: "!TSR".
pub const SOFT_RESET_MAGIC: u32 = 0x5253_5421;

/// Register offsets.
pub mod offset {
    /// `ID`.
    pub const ID: u32 = 0x0000;
    /// `VERSION`.
    pub const VERSION: u32 = 0x0004;
    /// `CAPS`.
    pub const CAPS: u32 = 0x0008;
    /// `NUM_VECTORS`.
    pub const NUM_VECTORS: u32 = 0x000c;
    /// `VRAM_SIZE_LO`.
    pub const VRAM_SIZE_LO: u32 = 0x0010;
    /// `VRAM_SIZE_HI`.
    pub const VRAM_SIZE_HI: u32 = 0x0014;
    /// `STATUS`.
    pub const STATUS: u32 = 0x0018;
    /// `SCRATCH0`.
    pub const SCRATCH0: u32 = 0x0020;
    /// `SCRATCH1`.
    pub const SCRATCH1: u32 = 0x0024;
    /// `SCRATCH2`.
    pub const SCRATCH2: u32 = 0x0028;
    /// `SCRATCH3`.
    pub const SCRATCH3: u32 = 0x002c;
    /// `VRAM_INDEX_LO`.
    pub const VRAM_INDEX_LO: u32 = 0x0030;
    /// `VRAM_INDEX_HI`.
    pub const VRAM_INDEX_HI: u32 = 0x0034;
    /// `VRAM_DATA`.
    pub const VRAM_DATA: u32 = 0x0038;
    /// `SOFT_RESET`.
    pub const SOFT_RESET: u32 = 0x0040;
    /// `IRQ_TRIGGER`.
    pub const IRQ_TRIGGER: u32 = 0x0080;
    /// `IRQ_STATUS`.
    pub const IRQ_STATUS: u32 = 0x0084;
    /// `IRQ_COUNT`.
    pub const IRQ_COUNT: u32 = 0x0088;
    /// `ENGINE_COUNT`.
    pub const ENGINE_COUNT: u32 = 0x0090;
    /// `DOORBELL_OFFSET`.
    pub const DOORBELL_OFFSET: u32 = 0x0094;
    /// `DOORBELL_STRIDE`.
    pub const DOORBELL_STRIDE: u32 = 0x0098;
    /// `ENGINE_VECTOR_BASE`.
    pub const ENGINE_VECTOR_BASE: u32 = 0x009c;
    /// `ERR_CAUSE`.
    pub const ERR_CAUSE: u32 = 0x00a0;
    /// `CLOCK_LO`.
    pub const CLOCK_LO: u32 = 0x00a8;
    /// `CLOCK_HI`.
    pub const CLOCK_HI: u32 = 0x00ac;
}

/// Where a register's reset value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// A constant.
    Value(u32),
    /// The number of MSI-X vectors.
    NumVectors,
    /// VRAM size, low dword.
    VramSizeLo,
    /// VRAM size, high dword.
    VramSizeHi,
    /// `CAPS`: depends on the number of engines.
    Caps,
    /// The number of DMA engines.
    EngineCount,
}

/// Registers with behaviour beyond stored bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Plain storage through the masks.
    Storage,
    /// `VRAM_DATA`: the indirect VRAM window.
    VramData,
    /// `SOFT_RESET`: write-only command.
    SoftReset,
    /// `IRQ_TRIGGER`: write-only command.
    IrqTrigger,
    /// `IRQ_COUNT`: read from the MSI-X counters.
    IrqCount,
    /// `CLOCK_LO`: the device clock; latches the high half into `CLOCK_HI`.
    ClockLo,
}

/// One register of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterSpec {
    /// Offset in BAR0.
    pub offset: u32,
    /// Name as in hw-spec.
    pub name: &'static str,
    /// Access as in hw-spec (documentation; behaviour comes from the masks and kind).
    pub access: &'static str,
    /// Bits a write stores.
    pub rw: u32,
    /// Bits a write of 1 clears.
    pub w1c: u32,
    /// Reset value.
    pub reset: Reset,
    /// Behaviour.
    pub kind: Kind,
}

const fn reg(
    offset: u32,
    name: &'static str,
    access: &'static str,
    rw: u32,
    w1c: u32,
    reset: Reset,
    kind: Kind,
) -> RegisterSpec {
    RegisterSpec {
        offset,
        name,
        access,
        rw,
        w1c,
        reset,
        kind,
    }
}

use Kind::*;
use Reset::*;

/// hw-spec §3, sorted by offset.
pub const REGISTERS: &[RegisterSpec] = &[
    reg(offset::ID, "ID", "RO", 0, 0, Value(ID_VALUE), Storage),
    reg(
        offset::VERSION,
        "VERSION",
        "RO",
        0,
        0,
        Value(VERSION_VALUE),
        Storage,
    ),
    reg(offset::CAPS, "CAPS", "RO", 0, 0, Caps, Storage),
    reg(
        offset::NUM_VECTORS,
        "NUM_VECTORS",
        "RO",
        0,
        0,
        NumVectors,
        Storage,
    ),
    reg(
        offset::VRAM_SIZE_LO,
        "VRAM_SIZE_LO",
        "RO",
        0,
        0,
        VramSizeLo,
        Storage,
    ),
    reg(
        offset::VRAM_SIZE_HI,
        "VRAM_SIZE_HI",
        "RO",
        0,
        0,
        VramSizeHi,
        Storage,
    ),
    reg(
        offset::STATUS,
        "STATUS",
        "RO/W1C",
        0,
        STATUS_VRAM_INDEX_ERR,
        Value(STATUS_READY),
        Storage,
    ),
    reg(
        offset::SCRATCH0,
        "SCRATCH0",
        "RW",
        u32::MAX,
        0,
        Value(0),
        Storage,
    ),
    reg(
        offset::SCRATCH1,
        "SCRATCH1",
        "RW",
        u32::MAX,
        0,
        Value(0),
        Storage,
    ),
    reg(
        offset::SCRATCH2,
        "SCRATCH2",
        "RW",
        u32::MAX,
        0,
        Value(0),
        Storage,
    ),
    reg(
        offset::SCRATCH3,
        "SCRATCH3",
        "RW",
        u32::MAX,
        0,
        Value(0),
        Storage,
    ),
    reg(
        offset::VRAM_INDEX_LO,
        "VRAM_INDEX_LO",
        "RW",
        0xffff_fffc,
        0,
        Value(0),
        Storage,
    ),
    reg(
        offset::VRAM_INDEX_HI,
        "VRAM_INDEX_HI",
        "RW",
        u32::MAX,
        0,
        Value(0),
        Storage,
    ),
    reg(
        offset::VRAM_DATA,
        "VRAM_DATA",
        "RW",
        0,
        0,
        Value(0),
        VramData,
    ),
    reg(
        offset::SOFT_RESET,
        "SOFT_RESET",
        "WO",
        0,
        0,
        Value(0),
        SoftReset,
    ),
    reg(
        offset::IRQ_TRIGGER,
        "IRQ_TRIGGER",
        "WO",
        0,
        0,
        Value(0),
        IrqTrigger,
    ),
    reg(
        offset::IRQ_STATUS,
        "IRQ_STATUS",
        "W1C",
        0,
        u32::MAX,
        Value(0),
        Storage,
    ),
    reg(
        offset::IRQ_COUNT,
        "IRQ_COUNT",
        "RO",
        0,
        0,
        Value(0),
        IrqCount,
    ),
    reg(
        offset::ENGINE_COUNT,
        "ENGINE_COUNT",
        "RO",
        0,
        0,
        EngineCount,
        Storage,
    ),
    reg(
        offset::DOORBELL_OFFSET,
        "DOORBELL_OFFSET",
        "RO",
        0,
        0,
        Value(crate::engine::regs::DOORBELL_OFFSET as u32),
        Storage,
    ),
    reg(
        offset::DOORBELL_STRIDE,
        "DOORBELL_STRIDE",
        "RO",
        0,
        0,
        Value(crate::engine::regs::DOORBELL_STRIDE as u32),
        Storage,
    ),
    reg(
        offset::ENGINE_VECTOR_BASE,
        "ENGINE_VECTOR_BASE",
        "RO",
        0,
        0,
        Value(crate::engine::regs::ENGINE_VECTOR_BASE),
        Storage,
    ),
    reg(
        offset::ERR_CAUSE,
        "ERR_CAUSE",
        "W1C",
        0,
        u32::MAX,
        Value(0),
        Storage,
    ),
    reg(offset::CLOCK_LO, "CLOCK_LO", "RO", 0, 0, Value(0), ClockLo),
    reg(offset::CLOCK_HI, "CLOCK_HI", "RO", 0, 0, Value(0), Storage),
];

/// The register at `offset`, if any.
pub fn lookup(offset: u32) -> Option<(usize, &'static RegisterSpec)> {
    let i = REGISTERS.binary_search_by_key(&offset, |r| r.offset).ok()?;
    REGISTERS.get(i).map(|r| (i, r))
}
