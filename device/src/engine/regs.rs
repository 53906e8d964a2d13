//! Engine register blocks, doorbell page and error codes (hw-spec §6.3, §6.4, §6.6).
//!
//! ```text
//! BAR0 0x1000 + 0x100 * i:
//! +0x00 RING_BASE_LO  RW   +0x04 RING_BASE_HI RW   +0x08 RING_SIZE RW (16:0)  +0x0c RING_APERTURE RW (1:0)
//! +0x10 RING_HEAD     RO   +0x14 RING_TAIL    RW (= doorbell word)
//! +0x18 CONTROL       RW   0 ENABLE, 1 HALT, 2 IRQ_ENABLE, 31 RESET (WO)
//! +0x1c STATUS        RO   3:0 DISABLED 0 / IDLE 1 / RUNNING 2 / HALTED 3 / ERROR 4
//! +0x20 ERROR_CODE    RO   +0x24/+0x28 ERROR_ADDR_LO/HI RO   +0x2c ERROR_INFO RO
//! +0x30/+0x34 LAST_FENCE_LO/HI RO
//! +0x40..+0xaf        64-bit statistics counters (stats.rs)
//! ```

/// Most engines a device can have.
pub const MAX_ENGINES: usize = 16;
/// BAR0 offset of engine 0's block.
pub const ENGINE_BASE: u64 = 0x1000;
/// Bytes per engine block.
pub const ENGINE_STRIDE: u64 = 0x100;
/// End of the engine blocks in BAR0.
pub const ENGINE_END: u64 = ENGINE_BASE + ENGINE_STRIDE * MAX_ENGINES as u64;
/// BAR0 offset of the doorbell page.
pub const DOORBELL_OFFSET: u64 = 0x20_0000;
/// Size of the doorbell page.
pub const DOORBELL_SIZE: u64 = 0x1000;
/// Bytes between two doorbell words.
pub const DOORBELL_STRIDE: u64 = 0x40;
/// Offset of the engine's sleep hint (device-written) from its doorbell word.
pub const SLEEP_HINT: u64 = 0x4;
/// First MSI-X vector of the engines (engine i: vector `ENGINE_VECTOR_BASE + i`).
pub const ENGINE_VECTOR_BASE: u32 = 1;
/// Ring base alignment (bytes).
pub const RING_ALIGN: u64 = 64;
/// Largest ring (slots).
pub const MAX_RING_SIZE: u32 = 65536;

/// Register offsets inside an engine block.
pub mod offset {
    /// `RING_BASE_LO`.
    pub const RING_BASE_LO: u32 = 0x00;
    /// `RING_BASE_HI`.
    pub const RING_BASE_HI: u32 = 0x04;
    /// `RING_SIZE`.
    pub const RING_SIZE: u32 = 0x08;
    /// `RING_APERTURE`.
    pub const RING_APERTURE: u32 = 0x0c;
    /// `RING_HEAD`.
    pub const RING_HEAD: u32 = 0x10;
    /// `RING_TAIL`.
    pub const RING_TAIL: u32 = 0x14;
    /// `CONTROL`.
    pub const CONTROL: u32 = 0x18;
    /// `STATUS`.
    pub const STATUS: u32 = 0x1c;
    /// `ERROR_CODE`.
    pub const ERROR_CODE: u32 = 0x20;
    /// `ERROR_ADDR_LO`.
    pub const ERROR_ADDR_LO: u32 = 0x24;
    /// `ERROR_ADDR_HI`.
    pub const ERROR_ADDR_HI: u32 = 0x28;
    /// `ERROR_INFO`.
    pub const ERROR_INFO: u32 = 0x2c;
    /// `LAST_FENCE_LO`.
    pub const LAST_FENCE_LO: u32 = 0x30;
    /// `LAST_FENCE_HI`.
    pub const LAST_FENCE_HI: u32 = 0x34;
}

/// `CONTROL` bits.
pub mod control {
    /// Fetch and execute.
    pub const ENABLE: u32 = 1 << 0;
    /// Stop at the next descriptor boundary.
    pub const HALT: u32 = 1 << 1;
    /// Completion interrupts.
    pub const IRQ_ENABLE: u32 = 1 << 2;
    /// Engine reset (write-only).
    pub const RESET: u32 = 1 << 31;
    /// Bits that are stored.
    pub const RW: u32 = ENABLE | HALT | IRQ_ENABLE;
}

/// `STATUS` state values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum State {
    /// Not enabled.
    Disabled = 0,
    /// Enabled, ring empty.
    Idle = 1,
    /// Working.
    Running = 2,
    /// Stopped by HALT.
    Halted = 3,
    /// Stopped by an error.
    Error = 4,
}

impl State {
    /// Name (control socket).
    pub fn name(self) -> &'static str {
        match self {
            State::Disabled => "DISABLED",
            State::Idle => "IDLE",
            State::Running => "RUNNING",
            State::Halted => "HALTED",
            State::Error => "ERROR",
        }
    }
}

/// `ERROR_CODE` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    /// Bad ring registers at enable.
    RingConfig = 1,
    /// `TAIL - HEAD > RING_SIZE`.
    RingOverflow = 2,
    /// Unknown opcode.
    BadOpcode = 3,
    /// Malformed descriptor.
    BadDescriptor = 4,
    /// SYS address not mapped.
    SysUnmapped = 5,
    /// SYS access not permitted.
    SysPermission = 6,
    /// VRAM offset out of range.
    VramRange = 7,
    /// DMA message failed.
    MsgDmaFailed = 8,
    /// A translation fault was cancelled (hw-spec §9.4).
    Translation = 9,
    /// An engine read poisoned VRAM (hw-spec §10, `inject poison`).
    Poisoned = 10,
}

impl ErrorCode {
    /// Name as in hw-spec.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::RingConfig => "RING_CONFIG",
            ErrorCode::RingOverflow => "RING_OVERFLOW",
            ErrorCode::BadOpcode => "BAD_OPCODE",
            ErrorCode::BadDescriptor => "BAD_DESCRIPTOR",
            ErrorCode::SysUnmapped => "SYS_UNMAPPED",
            ErrorCode::SysPermission => "SYS_PERMISSION",
            ErrorCode::VramRange => "VRAM_RANGE",
            ErrorCode::MsgDmaFailed => "MSG_DMA_FAILED",
            ErrorCode::Translation => "TRANSLATION",
            ErrorCode::Poisoned => "POISONED",
        }
    }
}

/// `ERROR_INFO` fields.
pub mod info {
    /// Bits 1:0: aperture of `ERROR_ADDR` (3: VIRT, a `TRANSLATION` error).
    pub const APERTURE_MASK: u32 = 0x3;
    /// Bit 2: the faulting access was a write.
    pub const WRITE: u32 = 1 << 2;
    /// Bit 3: fault during descriptor fetch.
    pub const FETCH: u32 = 1 << 3;
    /// Bits 31:16: ring slot.
    pub const SLOT_SHIFT: u32 = 16;
}

/// Splits a BAR0 offset into (engine index, offset in the block) when it is in the engine area.
pub fn decode_engine_offset(bar_offset: u64) -> Option<(usize, u32)> {
    if !(ENGINE_BASE..ENGINE_END).contains(&bar_offset) {
        return None;
    }
    let rel = bar_offset - ENGINE_BASE;
    Some(((rel / ENGINE_STRIDE) as usize, (rel % ENGINE_STRIDE) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(decode_engine_offset(0x1000), Some((0, 0)));
        assert_eq!(decode_engine_offset(0x11fc), Some((1, 0xfc)));
        assert_eq!(decode_engine_offset(0x1fff), Some((15, 0xff)));
        assert_eq!(decode_engine_offset(0x2000), None);
        assert_eq!(decode_engine_offset(0xfff), None);
        assert_eq!(ENGINE_END, 0x2000);
        assert!(DOORBELL_STRIDE * MAX_ENGINES as u64 <= DOORBELL_SIZE);
        assert_eq!(ErrorCode::MsgDmaFailed as u32, 8);
        assert_eq!(State::Error as u32, 4);
    }
}
