//! `desc_decode`: [`Descriptor::decode`] over arbitrary 64-byte descriptors, checked against a
//! reference decoder written from the hw-spec tables alone (§7, §9.5), which lists every rule a
//! descriptor breaks instead of stopping at the first:
//!
//! - the implementation accepts exactly the descriptors the reference accepts, with the same
//!   operation and flags;
//! - a refusal names one of the rules the reference found broken (with the same value), and the
//!   spec's order holds: reserved flags/bytes before the opcode (`BAD_DESCRIPTOR` even for an
//!   unknown opcode), `BAD_OPCODE` only for an unknown opcode;
//! - every accepted descriptor rebuilt with the [`RawDescriptor`] builders (what tests, tools
//!   and benchmarks use) decodes to the same descriptor, and `uses_virt` agrees with the
//!   apertures.
//!
//! The input is a ring of descriptors: every 64-byte chunk (the last one zero-padded), at most
//! 64 of them.

use vugpu_device::engine::desc::{
    Addr, Aperture, DescError, Descriptor, Op, RawDescriptor, DESC_SIZE,
};

/// What the `desc_decode` harness saw (for the deterministic test's coverage check).
#[derive(Debug, Default, Clone)]
pub struct DescStats {
    /// Accepted descriptors by opcode (0-7).
    pub accepted: [u64; 8],
    /// Refusals: reserved flags/bytes, unknown opcode, an opcode rule.
    pub reserved: u64,
    /// Unknown opcodes.
    pub bad_opcode: u64,
    /// Other rule violations.
    pub rules: u64,
}

/// The reference's verdict.
enum Verdict {
    Accept(Descriptor),
    /// Unknown opcode (only when no reserved bit or byte is set).
    BadOpcode(u8),
    /// Every rule broken, as the error the implementation would name for it.
    Broken(Vec<DescError>),
}

const MAX_LEN: u64 = 1 << 30;

fn le(b: &[u8; DESC_SIZE], off: usize, n: usize) -> u64 {
    b[off..off + n]
        .iter()
        .rev()
        .fold(0u64, |v, &x| (v << 8) | u64::from(x))
}

/// `a + n` does not fit in 64 bits.
fn overflows(a: u64, n: u64) -> bool {
    u128::from(a) + u128::from(n) > u128::from(u64::MAX)
}

/// §6.1 for a descriptor side: SYS, VRAM and VIRT (§9.5) valid; PEER (2) and 4+ not.
fn side(raw: u8, ctx: u16, addr: u64, broken: &mut Vec<DescError>) -> Option<Addr> {
    let aperture = match raw {
        0 => Aperture::Sys,
        1 => Aperture::Vram,
        3 => Aperture::Virt(ctx),
        _ => {
            broken.push(DescError::BadAperture(raw));
            return None;
        }
    };
    Some(Addr { aperture, addr })
}

fn aligned(addr: u64, to: u64, broken: &mut Vec<DescError>) {
    if !addr.is_multiple_of(to) {
        broken.push(DescError::Misaligned(addr));
    }
}

fn no_overflow(addr: u64, n: u64, broken: &mut Vec<DescError>) {
    if overflows(addr, n) {
        broken.push(DescError::Overflow);
    }
}

/// The spec's reading of 64 bytes.
fn reference(b: &[u8; DESC_SIZE]) -> Verdict {
    let opcode = b[0];
    let fl = b[1];
    let (src_ap, dst_ap) = (b[2], b[3]);
    let ctx = le(b, 4, 2) as u16;
    let (src, dst, len, value) = (le(b, 8, 8), le(b, 0x10, 8), le(b, 0x18, 8), le(b, 0x20, 8));

    // §7: flags 7:3 and the reserved bytes first, for every opcode.
    let mut broken = Vec::new();
    if fl >> 3 != 0 {
        broken.push(DescError::ReservedFlags(fl & 0xf8));
    }
    for i in [6, 7].into_iter().chain(0x28..DESC_SIZE) {
        if b[i] != 0 {
            broken.push(DescError::ReservedBytes(i));
        }
    }
    if !broken.is_empty() {
        return Verdict::Broken(broken);
    }
    if opcode > 7 {
        return Verdict::BadOpcode(opcode);
    }

    let op = match opcode {
        0 => Some(Op::Nop),
        1 => {
            let s = side(src_ap, ctx, src, &mut broken);
            let d = side(dst_ap, ctx, dst, &mut broken);
            if len == 0 || len > MAX_LEN {
                broken.push(DescError::BadLength(len));
            }
            no_overflow(src, len, &mut broken);
            no_overflow(dst, len, &mut broken);
            // Same aperture (and so the same context): the ranges must not overlap.
            if src_ap == dst_ap {
                let (s0, d0, n) = (u128::from(src), u128::from(dst), u128::from(len));
                if s0 < d0 + n && d0 < s0 + n {
                    broken.push(DescError::Overlap);
                }
            }
            s.zip(d).map(|(src, dst)| Op::Copy { src, dst, len })
        }
        2 => {
            let d = side(dst_ap, ctx, dst, &mut broken);
            if !(4..=MAX_LEN).contains(&len) || !len.is_multiple_of(4) {
                broken.push(DescError::BadLength(len));
            }
            aligned(dst, 4, &mut broken);
            no_overflow(dst, len, &mut broken);
            if value >> 32 != 0 {
                broken.push(DescError::BadFillValue);
            }
            d.map(|dst| Op::Fill {
                dst,
                len,
                pattern: (value & 0xffff_ffff) as u32,
            })
        }
        3 | 4 => {
            let d = side(dst_ap, ctx, dst, &mut broken);
            aligned(dst, 8, &mut broken);
            no_overflow(dst, 8, &mut broken);
            d.map(|dst| {
                if opcode == 3 {
                    Op::Fence { dst, value }
                } else {
                    Op::Timestamp { dst }
                }
            })
        }
        5 => {
            let d = side(dst_ap, ctx, dst, &mut broken);
            let r = side(src_ap, ctx, src, &mut broken);
            if len != 8 {
                broken.push(DescError::BadLength(len));
            }
            for a in [dst, src] {
                aligned(a, 8, &mut broken);
                no_overflow(a, 8, &mut broken);
            }
            d.zip(r)
                .map(|(dst, result)| Op::Atomic { dst, result, value })
        }
        6 => {
            for i in [2, 3] {
                if b[i] != 0 {
                    broken.push(DescError::NonZeroField(i));
                }
            }
            aligned(dst, 0x1000, &mut broken);
            if !len.is_multiple_of(0x1000) {
                broken.push(DescError::BadLength(len));
            }
            no_overflow(dst, len, &mut broken);
            Some(Op::TlbInvalidate {
                ctx: (ctx != 0xffff).then_some(ctx),
                va: dst,
                len,
            })
        }
        _ => {
            for (off, v) in [
                (2, u64::from(src_ap)),
                (3, u64::from(dst_ap)),
                (0x08, src),
                (0x10, dst),
                (0x18, len),
                (0x20, value >> 1),
            ] {
                if v != 0 {
                    broken.push(DescError::NonZeroField(off));
                }
            }
            Some(Op::FaultReplay {
                ctx: (ctx != 0xffff).then_some(ctx),
                cancel: value & 1 == 1,
            })
        }
    };
    // §9.5: `context` only with a VIRT side (of the apertures this opcode uses) or as the scope
    // of TLB_INVALIDATE / FAULT_REPLAY.
    let virt_side = match opcode {
        1 | 5 => src_ap == 3 || dst_ap == 3,
        2..=4 => dst_ap == 3,
        _ => false,
    };
    if ctx != 0 && !virt_side && opcode != 6 && opcode != 7 {
        broken.push(DescError::StrayContext(ctx));
    }
    match op {
        Some(op) if broken.is_empty() => Verdict::Accept(Descriptor {
            op,
            irq: fl & 1 != 0,
            no_snoop: fl & 2 != 0,
            relaxed_ordering: fl & 4 != 0,
        }),
        _ => {
            assert!(!broken.is_empty());
            Verdict::Broken(broken)
        }
    }
}

/// The same descriptor through the builders.
fn rebuild(d: &Descriptor) -> RawDescriptor {
    let raw = match d.op {
        Op::Nop => RawDescriptor::default(),
        Op::Copy { src, dst, len } => RawDescriptor::copy(src, dst, len),
        Op::Fill { dst, len, pattern } => RawDescriptor::fill(dst, len, pattern),
        Op::Fence { dst, value } => RawDescriptor::fence(dst, value),
        Op::Timestamp { dst } => RawDescriptor::timestamp(dst),
        Op::Atomic { dst, result, value } => RawDescriptor::atomic(dst, result, value),
        Op::TlbInvalidate { ctx, va, len } => {
            RawDescriptor::tlb_invalidate(ctx.unwrap_or(0xffff), va, len)
        }
        Op::FaultReplay { ctx, cancel } => {
            RawDescriptor::fault_replay(ctx.unwrap_or(0xffff), cancel)
        }
    };
    let flags = u8::from(d.irq) | u8::from(d.no_snoop) << 1 | u8::from(d.relaxed_ordering) << 2;
    raw.with_flags(flags)
}

fn check(b: &[u8; DESC_SIZE], stats: &mut DescStats) {
    let got = Descriptor::decode(b);
    match (reference(b), got) {
        (Verdict::Accept(want), Ok(d)) => {
            assert_eq!(d, want, "decoded differently from the spec: {b:02x?}");
            stats.accepted[usize::from(b[0])] += 1;
            let again = Descriptor::decode(&rebuild(&d).to_bytes());
            assert_eq!(again, Ok(d), "builders disagree with the decoder: {b:02x?}");
            let virt = |a: Addr| matches!(a.aperture, Aperture::Virt(_));
            let uses = match d.op {
                Op::Copy { src, dst, .. } => virt(src) || virt(dst),
                Op::Atomic { dst, result, .. } => virt(dst) || virt(result),
                Op::Fill { dst, .. } | Op::Fence { dst, .. } | Op::Timestamp { dst } => virt(dst),
                _ => false,
            };
            assert_eq!(d.op.uses_virt(), uses, "{b:02x?}");
        }
        (Verdict::BadOpcode(op), Err(e)) => {
            assert_eq!(e, DescError::BadOpcode(op), "{b:02x?}");
            stats.bad_opcode += 1;
        }
        (Verdict::Broken(broken), Err(e)) => {
            assert!(
                broken.contains(&e),
                "refused with {e:?}, the spec's broken rules are {broken:?}: {b:02x?}"
            );
            if matches!(e, DescError::ReservedFlags(_) | DescError::ReservedBytes(_)) {
                stats.reserved += 1;
            } else {
                stats.rules += 1;
            }
        }
        (Verdict::Accept(want), Err(e)) => {
            panic!("refused with {e:?}, the spec accepts it as {want:?}: {b:02x?}")
        }
        (Verdict::BadOpcode(op), Ok(d)) => {
            panic!("accepted unknown opcode {op} as {d:?}: {b:02x?}")
        }
        (Verdict::Broken(broken), Ok(d)) => {
            panic!("accepted as {d:?}, the spec's broken rules are {broken:?}: {b:02x?}")
        }
    }
}

/// Every 64-byte chunk of `data` (at most 64, the last zero-padded) as a descriptor.
pub fn desc_decode(data: &[u8]) -> DescStats {
    let mut stats = DescStats::default();
    for chunk in data.chunks(DESC_SIZE).take(64) {
        let mut b = [0u8; DESC_SIZE];
        b[..chunk.len()].copy_from_slice(chunk);
        check(&b, &mut stats);
    }
    stats
}
