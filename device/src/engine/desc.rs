//! DMA descriptors (hw-spec §7): the 64-byte format, decoded and validated as pure data.
//!
//! ```text
//! 0x00 u8  opcode        0 NOP, 1 COPY, 2 FILL, 3 FENCE, 4 TIMESTAMP, 5 ATOMIC,
//!                        6 TLB_INVALIDATE, 7 FAULT_REPLAY
//! 0x01 u8  flags         bit 0 IRQ, bit 1 NO_SNOOP, bit 2 RELAXED_ORDERING, 7:3 MBZ
//! 0x02 u8  src_aperture  0 SYS, 1 VRAM, 2 PEER (reserved), 3 VIRT, 4+ invalid (COPY, ATOMIC)
//! 0x03 u8  dst_aperture                                                  (all but NOP)
//! 0x04 u16 context       VIRT context; TLB_INVALIDATE / FAULT_REPLAY: 0xffff = all;
//!                        must be 0 otherwise (hw-spec §9.5)
//! 0x06 u16 reserved      MBZ
//! 0x08 u64 src
//! 0x10 u64 dst
//! 0x18 u64 length        COPY, FILL
//! 0x20 u64 value         FILL: pattern in 31:0 (63:32 MBZ); FENCE: value written
//! 0x28 u8[24] reserved   MBZ
//! ```
//!
//! [`Descriptor::decode`] turns the bytes into an [`Op`] only if every rule of the spec holds;
//! otherwise it says which rule failed ([`DescError`]), which the engine reports as
//! `BAD_OPCODE` or `BAD_DESCRIPTOR`.

/// Size of a descriptor in bytes.
pub const DESC_SIZE: usize = 64;
/// Largest COPY/FILL length (1 GiB).
pub const MAX_LENGTH: u64 = 0x4000_0000;
/// `FILL`: `dst` and `length` alignment.
pub const FILL_ALIGN: u64 = 4;
/// `FENCE`, `TIMESTAMP`, `ATOMIC`: alignment of the 8-byte stores.
pub const FENCE_ALIGN: u64 = 8;
/// `ATOMIC`: the only valid `length`.
pub const ATOMIC_LENGTH: u64 = 8;
/// `FAULT_REPLAY`: `value` bit 0, cancel instead of replay.
pub const REPLAY_CANCEL: u64 = 1;

/// Byte offsets of the fields (hw-spec §7).
pub mod field {
    /// `opcode` (u8).
    pub const OPCODE: usize = 0x00;
    /// `flags` (u8).
    pub const FLAGS: usize = 0x01;
    /// `src_aperture` (u8).
    pub const SRC_APERTURE: usize = 0x02;
    /// `dst_aperture` (u8).
    pub const DST_APERTURE: usize = 0x03;
    /// `context` (u16).
    pub const CONTEXT: usize = 0x04;
    /// Reserved (2 bytes, MBZ).
    pub const RSVD0: usize = 0x06;
    /// `src` (u64).
    pub const SRC: usize = 0x08;
    /// `dst` (u64).
    pub const DST: usize = 0x10;
    /// `length` (u64).
    pub const LENGTH: usize = 0x18;
    /// `value` (u64).
    pub const VALUE: usize = 0x20;
    /// Reserved (24 bytes, MBZ) to the end.
    pub const RSVD1: usize = 0x28;
}
/// TLB_INVALIDATE granularity.
const PAGE: u64 = 0x1000;

/// Opcodes.
pub mod opcode {
    /// No operation.
    pub const NOP: u8 = 0;
    /// Copy bytes.
    pub const COPY: u8 = 1;
    /// Fill with a 32-bit pattern.
    pub const FILL: u8 = 2;
    /// Write a 64-bit value.
    pub const FENCE: u8 = 3;
    /// Write the device clock.
    pub const TIMESTAMP: u8 = 4;
    /// 64-bit fetch-and-add (hw-spec §9.5).
    pub const ATOMIC: u8 = 5;
    /// Drop TLB entries and wait for the accesses that used them (hw-spec §9.3).
    pub const TLB_INVALIDATE: u8 = 6;
    /// Resume (or cancel) engines waiting on a translation fault (hw-spec §9.4).
    pub const FAULT_REPLAY: u8 = 7;
}

/// The `context` value naming every context (TLB_INVALIDATE, FAULT_REPLAY).
pub const CONTEXT_ALL: u16 = 0xffff;
/// Aperture 3: a device-virtual address (hw-spec §9.5).
pub const APERTURE_VIRT: u8 = 3;
/// The PEER aperture value: reserved, rejected like any unknown aperture (hw-spec §6.1).
pub const APERTURE_PEER: u8 = 2;

/// Descriptor flags.
pub mod flags {
    /// Interrupt on completion.
    pub const IRQ: u8 = 1 << 0;
    /// No Snoop requested.
    pub const NO_SNOOP: u8 = 1 << 1;
    /// Relaxed Ordering requested.
    pub const RELAXED_ORDERING: u8 = 1 << 2;
    /// Every defined flag.
    pub const ALL: u8 = IRQ | NO_SNOOP | RELAXED_ORDERING;
}

/// Where an address points (hw-spec §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aperture {
    /// System memory: a DMA address (IOVA).
    Sys,
    /// A byte offset into VRAM.
    Vram,
    /// A device-virtual address of this context (hw-spec §9): descriptors only, translated
    /// by the device MMU into SYS or VRAM before it reaches memory.
    Virt(u16),
}

impl Aperture {
    /// Decodes a physical aperture field (rings, tables, MMU registers); PEER (2), VIRT (3)
    /// and anything above are not accepted.
    pub fn from_raw(raw: u32) -> Option<Aperture> {
        match raw {
            0 => Some(Aperture::Sys),
            1 => Some(Aperture::Vram),
            _ => None,
        }
    }

    /// The encoding (as in `ERROR_INFO` bits 1:0).
    pub fn raw(self) -> u32 {
        match self {
            Aperture::Sys => 0,
            Aperture::Vram => 1,
            Aperture::Virt(_) => u32::from(APERTURE_VIRT),
        }
    }

    /// A device-virtual address.
    pub fn is_virt(self) -> bool {
        matches!(self, Aperture::Virt(_))
    }
}

/// An address qualified by its aperture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    /// Aperture.
    pub aperture: Aperture,
    /// Address inside it.
    pub addr: u64,
}

/// A validated operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Nothing.
    Nop,
    /// Copy `len` bytes.
    Copy {
        /// Source.
        src: Addr,
        /// Destination.
        dst: Addr,
        /// Bytes, 1..=MAX_LENGTH.
        len: u64,
    },
    /// Fill `len` bytes with the 32-bit pattern.
    Fill {
        /// Destination (4-byte aligned).
        dst: Addr,
        /// Bytes (multiple of 4, 4..=MAX_LENGTH).
        len: u64,
        /// Pattern, repeated little-endian.
        pattern: u32,
    },
    /// Write `value` with one 8-byte store.
    Fence {
        /// Destination (8-byte aligned).
        dst: Addr,
        /// Value.
        value: u64,
    },
    /// Write the device clock with one 8-byte store.
    Timestamp {
        /// Destination (8-byte aligned).
        dst: Addr,
    },
    /// 64-bit fetch-and-add at `dst`; the old value is stored at `result`.
    Atomic {
        /// The target (8-byte aligned).
        dst: Addr,
        /// Where the old value goes (8-byte aligned).
        result: Addr,
        /// The addend.
        value: u64,
    },
    /// Drop TLB entries (hw-spec §9.3).
    TlbInvalidate {
        /// One context, or every context (`None`).
        ctx: Option<u16>,
        /// First virtual address (4 KiB aligned).
        va: u64,
        /// Bytes (a multiple of 4 KiB; 0 = the whole context).
        len: u64,
    },
    /// Resume or cancel engines waiting on a fault (hw-spec §9.4).
    FaultReplay {
        /// One context, or every context (`None`).
        ctx: Option<u16>,
        /// Cancel instead of replay.
        cancel: bool,
    },
}

impl Op {
    /// Name as in hw-spec and the trace.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Nop => "NOP",
            Op::Copy { .. } => "COPY",
            Op::Fill { .. } => "FILL",
            Op::Fence { .. } => "FENCE",
            Op::Timestamp { .. } => "TIMESTAMP",
            Op::Atomic { .. } => "ATOMIC",
            Op::TlbInvalidate { .. } => "TLB_INVALIDATE",
            Op::FaultReplay { .. } => "FAULT_REPLAY",
        }
    }

    /// Does the operation use the `VIRT` aperture (needs the MMU enabled)?
    pub fn uses_virt(&self) -> bool {
        match *self {
            Op::Copy { src, dst, .. } => src.aperture.is_virt() || dst.aperture.is_virt(),
            Op::Fill { dst, .. } | Op::Fence { dst, .. } | Op::Timestamp { dst } => {
                dst.aperture.is_virt()
            }
            Op::Atomic { dst, result, .. } => dst.aperture.is_virt() || result.aperture.is_virt(),
            Op::Nop | Op::TlbInvalidate { .. } | Op::FaultReplay { .. } => false,
        }
    }
}

/// A decoded descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// The operation.
    pub op: Op,
    /// Interrupt on completion.
    pub irq: bool,
    /// No Snoop requested.
    pub no_snoop: bool,
    /// Relaxed Ordering requested.
    pub relaxed_ordering: bool,
}

/// Why a descriptor was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DescError {
    /// Unknown opcode (`BAD_OPCODE`).
    #[error("unknown opcode {0}")]
    BadOpcode(u8),
    /// Undefined flag bits set.
    #[error("reserved flag bits {0:#x} set")]
    ReservedFlags(u8),
    /// A reserved byte is not zero.
    #[error("reserved byte at offset {0:#x} not zero")]
    ReservedBytes(usize),
    /// Aperture PEER or invalid.
    #[error("unsupported aperture {0}")]
    BadAperture(u8),
    /// Length zero, too large, or not a multiple of 4 for FILL.
    #[error("bad length {0:#x}")]
    BadLength(u64),
    /// Address not aligned as the opcode requires.
    #[error("misaligned address {0:#x}")]
    Misaligned(u64),
    /// `addr + length` overflows 64 bits.
    #[error("address range overflows")]
    Overflow,
    /// Source and destination overlap in the same aperture.
    #[error("source and destination overlap")]
    Overlap,
    /// FILL value bits 63:32 not zero.
    #[error("FILL value bits 63:32 not zero")]
    BadFillValue,
    /// A `context` in a descriptor that uses no VIRT aperture.
    #[error("context {0} without a VIRT aperture")]
    StrayContext(u16),
    /// A field this opcode requires to be 0 is not.
    #[error("field at offset {0:#x} must be 0 for this opcode")]
    NonZeroField(usize),
}

fn u64_at(b: &[u8; DESC_SIZE], off: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(v)
}

fn aperture(raw: u8, ctx: u16) -> Result<Aperture, DescError> {
    if raw == APERTURE_VIRT {
        return Ok(Aperture::Virt(ctx));
    }
    Aperture::from_raw(u32::from(raw)).ok_or(DescError::BadAperture(raw))
}

fn scope_ctx(ctx: u16) -> Option<u16> {
    (ctx != CONTEXT_ALL).then_some(ctx)
}

fn range_end(addr: u64, len: u64) -> Result<u64, DescError> {
    addr.checked_add(len).ok_or(DescError::Overflow)
}

impl Descriptor {
    /// Decodes and validates the 64 bytes of a descriptor.
    pub fn decode(b: &[u8; DESC_SIZE]) -> Result<Descriptor, DescError> {
        let opcode = b[field::OPCODE];
        let fl = b[field::FLAGS];
        if fl & !flags::ALL != 0 {
            return Err(DescError::ReservedFlags(fl & !flags::ALL));
        }
        if let Some(i) = (field::RSVD0..field::SRC)
            .chain(field::RSVD1..DESC_SIZE)
            .find(|&i| b[i] != 0)
        {
            return Err(DescError::ReservedBytes(i));
        }
        let ctx = u16::from_le_bytes([b[field::CONTEXT], b[field::CONTEXT + 1]]);
        let src = u64_at(b, field::SRC);
        let dst = u64_at(b, field::DST);
        let len = u64_at(b, field::LENGTH);
        let value = u64_at(b, field::VALUE);
        let op = match opcode {
            opcode::NOP => Op::Nop,
            opcode::COPY => {
                let src = Addr {
                    aperture: aperture(b[field::SRC_APERTURE], ctx)?,
                    addr: src,
                };
                let dst = Addr {
                    aperture: aperture(b[field::DST_APERTURE], ctx)?,
                    addr: dst,
                };
                if len == 0 || len > MAX_LENGTH {
                    return Err(DescError::BadLength(len));
                }
                let src_end = range_end(src.addr, len)?;
                let dst_end = range_end(dst.addr, len)?;
                if src.aperture == dst.aperture && src.addr < dst_end && dst.addr < src_end {
                    return Err(DescError::Overlap);
                }
                Op::Copy { src, dst, len }
            }
            opcode::FILL => {
                let dst = Addr {
                    aperture: aperture(b[field::DST_APERTURE], ctx)?,
                    addr: dst,
                };
                if !(FILL_ALIGN..=MAX_LENGTH).contains(&len) || !len.is_multiple_of(FILL_ALIGN) {
                    return Err(DescError::BadLength(len));
                }
                if !dst.addr.is_multiple_of(FILL_ALIGN) {
                    return Err(DescError::Misaligned(dst.addr));
                }
                range_end(dst.addr, len)?;
                if value >> 32 != 0 {
                    return Err(DescError::BadFillValue);
                }
                Op::Fill {
                    dst,
                    len,
                    pattern: value as u32,
                }
            }
            opcode::FENCE | opcode::TIMESTAMP => {
                let dst = Addr {
                    aperture: aperture(b[field::DST_APERTURE], ctx)?,
                    addr: dst,
                };
                if !dst.addr.is_multiple_of(FENCE_ALIGN) {
                    return Err(DescError::Misaligned(dst.addr));
                }
                range_end(dst.addr, FENCE_ALIGN)?;
                if opcode == opcode::FENCE {
                    Op::Fence { dst, value }
                } else {
                    Op::Timestamp { dst }
                }
            }
            opcode::ATOMIC => {
                let dst = Addr {
                    aperture: aperture(b[field::DST_APERTURE], ctx)?,
                    addr: dst,
                };
                let result = Addr {
                    aperture: aperture(b[field::SRC_APERTURE], ctx)?,
                    addr: src,
                };
                if len != ATOMIC_LENGTH {
                    return Err(DescError::BadLength(len));
                }
                for a in [dst, result] {
                    if !a.addr.is_multiple_of(FENCE_ALIGN) {
                        return Err(DescError::Misaligned(a.addr));
                    }
                    range_end(a.addr, ATOMIC_LENGTH)?;
                }
                Op::Atomic { dst, result, value }
            }
            opcode::TLB_INVALIDATE => {
                if let Some(i) = [field::SRC_APERTURE, field::DST_APERTURE]
                    .into_iter()
                    .find(|&i| b[i] != 0)
                {
                    return Err(DescError::NonZeroField(i));
                }
                if !dst.is_multiple_of(PAGE) {
                    return Err(DescError::Misaligned(dst));
                }
                if !len.is_multiple_of(PAGE) {
                    return Err(DescError::BadLength(len));
                }
                range_end(dst, len)?;
                Op::TlbInvalidate {
                    ctx: scope_ctx(ctx),
                    va: dst,
                    len,
                }
            }
            opcode::FAULT_REPLAY => {
                let fields = [
                    (field::SRC_APERTURE, u64::from(b[field::SRC_APERTURE])),
                    (field::DST_APERTURE, u64::from(b[field::DST_APERTURE])),
                    (field::SRC, src),
                    (field::DST, dst),
                    (field::LENGTH, len),
                    (field::VALUE, value & !REPLAY_CANCEL),
                ];
                if let Some((i, _)) = fields.into_iter().find(|&(_, v)| v != 0) {
                    return Err(DescError::NonZeroField(i));
                }
                Op::FaultReplay {
                    ctx: scope_ctx(ctx),
                    cancel: value & REPLAY_CANCEL != 0,
                }
            }
            other => return Err(DescError::BadOpcode(other)),
        };
        let scoped = matches!(op, Op::TlbInvalidate { .. } | Op::FaultReplay { .. });
        if ctx != 0 && !scoped && !op.uses_virt() {
            return Err(DescError::StrayContext(ctx));
        }
        Ok(Descriptor {
            op,
            irq: fl & flags::IRQ != 0,
            no_snoop: fl & flags::NO_SNOOP != 0,
            relaxed_ordering: fl & flags::RELAXED_ORDERING != 0,
        })
    }
}

/// Builds descriptor bytes (for tests, benchmarks and tools; the guest driver does the same in C).
#[derive(Debug, Clone, Copy, Default)]
pub struct RawDescriptor {
    /// Opcode.
    pub opcode: u8,
    /// Flags.
    pub flags: u8,
    /// Source aperture.
    pub src_aperture: u8,
    /// Destination aperture.
    pub dst_aperture: u8,
    /// Context (bytes 0x04-0x05).
    pub context: u16,
    /// Source address.
    pub src: u64,
    /// Destination address.
    pub dst: u64,
    /// Length.
    pub length: u64,
    /// Value.
    pub value: u64,
}

impl RawDescriptor {
    /// The 64 bytes.
    pub fn to_bytes(&self) -> [u8; DESC_SIZE] {
        let mut b = [0u8; DESC_SIZE];
        b[field::OPCODE] = self.opcode;
        b[field::FLAGS] = self.flags;
        b[field::SRC_APERTURE] = self.src_aperture;
        b[field::DST_APERTURE] = self.dst_aperture;
        b[field::CONTEXT..field::RSVD0].copy_from_slice(&self.context.to_le_bytes());
        b[field::SRC..field::DST].copy_from_slice(&self.src.to_le_bytes());
        b[field::DST..field::LENGTH].copy_from_slice(&self.dst.to_le_bytes());
        b[field::LENGTH..field::VALUE].copy_from_slice(&self.length.to_le_bytes());
        b[field::VALUE..field::RSVD1].copy_from_slice(&self.value.to_le_bytes());
        b
    }

    /// A COPY.
    pub fn copy(src: Addr, dst: Addr, length: u64) -> Self {
        RawDescriptor {
            opcode: opcode::COPY,
            src_aperture: src.aperture.raw() as u8,
            dst_aperture: dst.aperture.raw() as u8,
            src: src.addr,
            dst: dst.addr,
            length,
            ..Self::default()
        }
        .with_context_of(&[src, dst])
    }

    /// A FILL.
    pub fn fill(dst: Addr, length: u64, pattern: u32) -> Self {
        RawDescriptor {
            opcode: opcode::FILL,
            dst_aperture: dst.aperture.raw() as u8,
            dst: dst.addr,
            length,
            value: u64::from(pattern),
            ..Self::default()
        }
        .with_context_of(&[dst])
    }

    /// A FENCE.
    pub fn fence(dst: Addr, value: u64) -> Self {
        RawDescriptor {
            opcode: opcode::FENCE,
            dst_aperture: dst.aperture.raw() as u8,
            dst: dst.addr,
            value,
            ..Self::default()
        }
        .with_context_of(&[dst])
    }

    /// A TIMESTAMP.
    pub fn timestamp(dst: Addr) -> Self {
        RawDescriptor {
            opcode: opcode::TIMESTAMP,
            dst_aperture: dst.aperture.raw() as u8,
            dst: dst.addr,
            ..Self::default()
        }
        .with_context_of(&[dst])
    }

    /// An ATOMIC fetch-and-add of `value` at `dst`, the old value stored at `result`.
    pub fn atomic(dst: Addr, result: Addr, value: u64) -> Self {
        RawDescriptor {
            opcode: opcode::ATOMIC,
            src_aperture: result.aperture.raw() as u8,
            dst_aperture: dst.aperture.raw() as u8,
            src: result.addr,
            dst: dst.addr,
            length: 8,
            value,
            ..Self::default()
        }
        .with_context_of(&[dst, result])
    }

    /// A TLB_INVALIDATE of `context` ([`CONTEXT_ALL`]: every context), `len` bytes from `va`
    /// (0: the whole context).
    pub fn tlb_invalidate(context: u16, va: u64, len: u64) -> Self {
        RawDescriptor {
            opcode: opcode::TLB_INVALIDATE,
            context,
            dst: va,
            length: len,
            ..Self::default()
        }
    }

    /// A FAULT_REPLAY of `context` ([`CONTEXT_ALL`]: every context); `cancel` cancels.
    pub fn fault_replay(context: u16, cancel: bool) -> Self {
        RawDescriptor {
            opcode: opcode::FAULT_REPLAY,
            context,
            value: u64::from(cancel),
            ..Self::default()
        }
    }

    /// The context of the first VIRT address among `addrs` in bytes 0x04-0x05.
    fn with_context_of(mut self, addrs: &[Addr]) -> Self {
        if let Some(c) = addrs.iter().find_map(|a| match a.aperture {
            Aperture::Virt(c) => Some(c),
            _ => None,
        }) {
            self.context = c;
        }
        self
    }

    /// With these flags added.
    pub fn with_flags(mut self, flags: u8) -> Self {
        self.flags |= flags;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYS: Aperture = Aperture::Sys;
    const VRAM: Aperture = Aperture::Vram;

    fn at(aperture: Aperture, addr: u64) -> Addr {
        Addr { aperture, addr }
    }

    fn decode(r: RawDescriptor) -> Result<Descriptor, DescError> {
        Descriptor::decode(&r.to_bytes())
    }

    #[test]
    fn spec_7_layout_round_trips() {
        let b = RawDescriptor::copy(at(SYS, 0x1122_3344_5566_7788), at(VRAM, 0x40), 0x1000)
            .with_flags(flags::IRQ | flags::NO_SNOOP)
            .to_bytes();
        assert_eq!(b[0], 1);
        assert_eq!(b[1], 0b011);
        assert_eq!((b[2], b[3]), (0, 1));
        assert_eq!(&b[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[0x18..0x20], &0x1000u64.to_le_bytes());
        let d = Descriptor::decode(&b).unwrap();
        assert!(d.irq && d.no_snoop && !d.relaxed_ordering);
        assert_eq!(
            d.op,
            Op::Copy {
                src: at(SYS, 0x1122_3344_5566_7788),
                dst: at(VRAM, 0x40),
                len: 0x1000
            }
        );
    }

    #[test]
    fn every_opcode_decodes() {
        let nop = decode(RawDescriptor::default().with_flags(flags::IRQ)).unwrap();
        assert_eq!(nop.op, Op::Nop);
        assert!(nop.irq);
        assert_eq!(
            decode(RawDescriptor::fill(at(VRAM, 8), 16, 0xdead_beef))
                .unwrap()
                .op,
            Op::Fill {
                dst: at(VRAM, 8),
                len: 16,
                pattern: 0xdead_beef
            }
        );
        assert_eq!(
            decode(RawDescriptor::fence(at(SYS, 0x10), u64::MAX))
                .unwrap()
                .op,
            Op::Fence {
                dst: at(SYS, 0x10),
                value: u64::MAX
            }
        );
        assert_eq!(
            decode(RawDescriptor::timestamp(at(VRAM, 0))).unwrap().op,
            Op::Timestamp { dst: at(VRAM, 0) }
        );
        // Unused fields are ignored: NOP with garbage addresses and a bad aperture.
        let mut r = RawDescriptor {
            src: 7,
            dst: 9,
            length: 3,
            src_aperture: 9,
            ..RawDescriptor::default()
        };
        assert_eq!(decode(r).unwrap().op, Op::Nop);
        r.opcode = opcode::FENCE;
        r.dst = 8;
        r.dst_aperture = 0;
        assert!(decode(r).is_ok(), "FENCE ignores src/length/src_aperture");
    }

    #[test]
    fn rejects_unknown_opcode() {
        for op in [8u8, 0x7f, 0xff] {
            let r = RawDescriptor {
                opcode: op,
                ..RawDescriptor::default()
            };
            assert_eq!(decode(r), Err(DescError::BadOpcode(op)));
        }
    }

    #[test]
    fn rejects_reserved_flags_and_bytes() {
        assert_eq!(
            decode(RawDescriptor::default().with_flags(0x80)),
            Err(DescError::ReservedFlags(0x80))
        );
        for i in (6..8).chain(0x28..64) {
            let mut b = RawDescriptor::default().to_bytes();
            b[i] = 1;
            assert_eq!(
                Descriptor::decode(&b),
                Err(DescError::ReservedBytes(i)),
                "{i:#x}"
            );
        }
    }

    #[test]
    fn rejects_peer_and_invalid_apertures() {
        let mut r = RawDescriptor::copy(at(SYS, 0), at(VRAM, 0), 8);
        r.src_aperture = 2;
        assert_eq!(decode(r), Err(DescError::BadAperture(2)));
        let mut r = RawDescriptor::fence(at(SYS, 0), 1);
        r.dst_aperture = 4;
        assert_eq!(decode(r), Err(DescError::BadAperture(4)));
    }

    #[test]
    fn rejects_bad_lengths() {
        for len in [0, MAX_LENGTH + 1, u64::MAX] {
            assert_eq!(
                decode(RawDescriptor::copy(at(SYS, 0), at(VRAM, 0), len)),
                Err(DescError::BadLength(len))
            );
        }
        assert!(decode(RawDescriptor::copy(at(SYS, 0), at(VRAM, 0), MAX_LENGTH)).is_ok());
        for len in [0, 2, 6, MAX_LENGTH + 4] {
            assert_eq!(
                decode(RawDescriptor::fill(at(SYS, 0), len, 0)),
                Err(DescError::BadLength(len))
            );
        }
    }

    #[test]
    fn rejects_misaligned_and_overflowing_addresses() {
        assert_eq!(
            decode(RawDescriptor::fill(at(SYS, 2), 4, 0)),
            Err(DescError::Misaligned(2))
        );
        assert_eq!(
            decode(RawDescriptor::fence(at(VRAM, 4), 0)),
            Err(DescError::Misaligned(4))
        );
        assert_eq!(
            decode(RawDescriptor::timestamp(at(SYS, 12))),
            Err(DescError::Misaligned(12))
        );
        assert_eq!(
            decode(RawDescriptor::copy(at(SYS, u64::MAX - 2), at(VRAM, 0), 4)),
            Err(DescError::Overflow)
        );
        assert_eq!(
            decode(RawDescriptor::copy(at(SYS, 0), at(VRAM, u64::MAX), 1)),
            Err(DescError::Overflow)
        );
        assert_eq!(
            decode(RawDescriptor::fence(at(SYS, u64::MAX - 7), 0)),
            Err(DescError::Overflow)
        );
        assert_eq!(
            decode(RawDescriptor::fill(at(VRAM, u64::MAX - 3), 8, 0)),
            Err(DescError::Overflow)
        );
        // Unaligned COPY is fine.
        assert!(decode(RawDescriptor::copy(at(SYS, 3), at(VRAM, 5), 7)).is_ok());
    }

    #[test]
    fn rejects_overlap_in_the_same_aperture_only() {
        assert_eq!(
            decode(RawDescriptor::copy(at(VRAM, 0x100), at(VRAM, 0x1ff), 0x100)),
            Err(DescError::Overlap)
        );
        assert_eq!(
            decode(RawDescriptor::copy(at(SYS, 0x1ff), at(SYS, 0x100), 0x100)),
            Err(DescError::Overlap)
        );
        assert!(decode(RawDescriptor::copy(at(VRAM, 0x100), at(VRAM, 0x200), 0x100)).is_ok());
        assert!(decode(RawDescriptor::copy(at(SYS, 0x100), at(VRAM, 0x100), 0x100)).is_ok());
    }

    #[test]
    fn rejects_fill_value_high_bits() {
        let mut r = RawDescriptor::fill(at(SYS, 0), 4, 0);
        r.value = 1 << 32;
        assert_eq!(decode(r), Err(DescError::BadFillValue));
    }

    const V: Aperture = Aperture::Virt(7);

    #[test]
    fn virt_aperture_carries_the_context() {
        let r = RawDescriptor::copy(at(V, 0x1000), at(VRAM, 0), 64);
        let b = r.to_bytes();
        assert_eq!((b[2], b[4], b[5]), (3, 7, 0));
        assert_eq!(
            decode(r).unwrap().op,
            Op::Copy {
                src: at(V, 0x1000),
                dst: at(VRAM, 0),
                len: 64
            }
        );
        assert!(decode(r).unwrap().op.uses_virt());
        // Overlap is checked on virtual addresses within the context.
        assert_eq!(
            decode(RawDescriptor::copy(at(V, 0x1000), at(V, 0x1010), 64)),
            Err(DescError::Overlap)
        );
        for d in [
            RawDescriptor::fill(at(V, 8), 8, 1),
            RawDescriptor::fence(at(V, 8), 1),
            RawDescriptor::timestamp(at(V, 8)),
        ] {
            assert!(decode(d).unwrap().op.uses_virt());
        }
        // A context without a VIRT aperture is refused; bytes 6-7 stay reserved.
        let mut r = RawDescriptor::copy(at(SYS, 0), at(VRAM, 0), 64);
        r.context = 1;
        assert_eq!(decode(r), Err(DescError::StrayContext(1)));
        let nop = RawDescriptor {
            context: 2,
            ..RawDescriptor::default()
        };
        assert_eq!(decode(nop), Err(DescError::StrayContext(2)));
        let mut b = RawDescriptor::fence(at(V, 8), 1).to_bytes();
        b[6] = 1;
        assert_eq!(Descriptor::decode(&b), Err(DescError::ReservedBytes(6)));
    }

    #[test]
    fn atomic_rules() {
        let ok = RawDescriptor::atomic(at(V, 0x40), at(SYS, 0x80), 5);
        assert_eq!(
            decode(ok).unwrap().op,
            Op::Atomic {
                dst: at(V, 0x40),
                result: at(SYS, 0x80),
                value: 5
            }
        );
        let mut r = ok;
        r.length = 4;
        assert_eq!(decode(r), Err(DescError::BadLength(4)));
        assert_eq!(
            decode(RawDescriptor::atomic(at(SYS, 0x44), at(SYS, 0x80), 1)),
            Err(DescError::Misaligned(0x44))
        );
        assert_eq!(
            decode(RawDescriptor::atomic(at(SYS, 0x40), at(VRAM, 0x84), 1)),
            Err(DescError::Misaligned(0x84))
        );
        assert_eq!(
            decode(RawDescriptor::atomic(at(SYS, u64::MAX - 7), at(VRAM, 0), 1)),
            Err(DescError::Overflow)
        );
        assert!(!decode(RawDescriptor::atomic(at(SYS, 0), at(VRAM, 0), 1))
            .unwrap()
            .op
            .uses_virt());
    }

    #[test]
    fn invalidate_and_replay_rules() {
        assert_eq!(
            decode(RawDescriptor::tlb_invalidate(CONTEXT_ALL, 0x2000, 0x3000))
                .unwrap()
                .op,
            Op::TlbInvalidate {
                ctx: None,
                va: 0x2000,
                len: 0x3000
            }
        );
        assert_eq!(
            decode(RawDescriptor::tlb_invalidate(3, 0, 0)).unwrap().op,
            Op::TlbInvalidate {
                ctx: Some(3),
                va: 0,
                len: 0
            }
        );
        assert_eq!(
            decode(RawDescriptor::tlb_invalidate(3, 0x800, 0)),
            Err(DescError::Misaligned(0x800))
        );
        assert_eq!(
            decode(RawDescriptor::tlb_invalidate(3, 0, 0x800)),
            Err(DescError::BadLength(0x800))
        );
        assert_eq!(
            decode(RawDescriptor::tlb_invalidate(3, u64::MAX - 0xfff, 0x2000)),
            Err(DescError::Overflow)
        );
        let mut r = RawDescriptor::tlb_invalidate(3, 0, 0);
        r.dst_aperture = 1;
        assert_eq!(decode(r), Err(DescError::NonZeroField(3)));
        assert_eq!(
            decode(RawDescriptor::fault_replay(CONTEXT_ALL, true))
                .unwrap()
                .op,
            Op::FaultReplay {
                ctx: None,
                cancel: true
            }
        );
        assert_eq!(
            decode(RawDescriptor::fault_replay(9, false)).unwrap().op,
            Op::FaultReplay {
                ctx: Some(9),
                cancel: false
            }
        );
        for (field, mut r) in [
            (0x20, RawDescriptor::fault_replay(1, false)),
            (0x18, RawDescriptor::fault_replay(1, false)),
            (0x10, RawDescriptor::fault_replay(1, false)),
            (0x08, RawDescriptor::fault_replay(1, false)),
            (2, RawDescriptor::fault_replay(1, false)),
        ] {
            match field {
                0x20 => r.value = 2,
                0x18 => r.length = 1,
                0x10 => r.dst = 1,
                0x08 => r.src = 1,
                _ => r.src_aperture = 1,
            }
            assert_eq!(decode(r), Err(DescError::NonZeroField(field)), "{field:#x}");
        }
    }
}
