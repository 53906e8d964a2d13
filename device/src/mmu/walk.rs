//! The context table and the 4-level page-table walk (hw-spec §9.2), as pure functions over a
//! memory reader.
//!
//! ```text
//! context entry (16 bytes):  0 VALID | 4:1 MBZ | 6:5 root aperture (0 SYS, 1 VRAM) | 11:7 MBZ
//!                            51:12 root table address | 63:52 MBZ | 127:64 MBZ
//! table entry (8 bytes):     0 VALID | 1 LEAF | 2 READ | 3 WRITE | 4 ATOMIC | 6:5 aperture
//!                            11:7 MBZ | 51:12 address | 55:52 MBZ | 63:56 software (ignored)
//! VA (48 bits):              47:39 level 3 | 38:30 level 2 | 29:21 level 1 | 20:12 level 0
//! ```
//!
//! The walker reads memory only through the `mem` closure it is given (8 bytes at an 8-byte
//! aligned physical address; `None` = the device cannot read it), and only at addresses the
//! entries above it name: the context table entry, then one entry per level. It never panics:
//! every address is computed with checked arithmetic, and an address that does not fit is a
//! `WALK_ERROR` like an unreadable one.

use crate::engine::desc::{Addr, Aperture};

/// Bytes of a context table entry.
pub const CTX_ENTRY_SIZE: u64 = 16;
/// A 4 KiB page.
pub const PAGE_4K: u64 = 1 << 12;
/// A 2 MiB page (a level-1 leaf).
pub const PAGE_2M: u64 = 1 << 21;
/// Virtual addresses are 48 bits.
pub const VA_BITS: u32 = 48;
/// The level reported for faults of the context entry (and of the address itself).
pub const CONTEXT_LEVEL: u8 = 4;
/// Table levels (3 = root).
pub const LEVELS: u8 = 4;
/// Entries per table.
pub const TABLE_ENTRIES: u64 = 512;
/// Bytes per table.
pub const TABLE_SIZE: u64 = TABLE_ENTRIES * 8;

/// Entry bits.
pub mod pte {
    /// Present.
    pub const VALID: u64 = 1 << 0;
    /// A leaf (level 0: must be 1; level 1: a 2 MiB page; levels 2-3: must be 0).
    pub const LEAF: u64 = 1 << 1;
    /// Reads allowed (leaf).
    pub const READ: u64 = 1 << 2;
    /// Writes allowed (leaf).
    pub const WRITE: u64 = 1 << 3;
    /// Atomics on a SYS target allowed (leaf).
    pub const ATOMIC: u64 = 1 << 4;
    /// Aperture field shift (bits 6:5).
    pub const APERTURE_SHIFT: u32 = 5;
    /// Aperture field mask (after the shift).
    pub const APERTURE_MASK: u64 = 0x3;
    /// Address bits 51:12.
    pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
    /// Bits that must be 0 (11:7, 55:52).
    pub const RESERVED: u64 = 0x00f0_0000_0000_0f80;
    /// Permission bits (must be 0 in a non-leaf entry).
    pub const PERMS: u64 = READ | WRITE | ATOMIC;
    /// Bits 63:56: software bits, ignored by the device.
    pub const SOFTWARE: u64 = 0xff00_0000_0000_0000;
}

/// Context entry bits (low qword; the high qword must be 0).
pub mod ctx {
    /// The context is valid.
    pub const VALID: u64 = 1 << 0;
    /// Bits that must be 0 (4:1, 11:7, 63:52).
    pub const RESERVED: u64 = 0xfff0_0000_0000_0f9e;
}

/// The kind of a device access (fault record `access`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// A read.
    Read = 0,
    /// A write.
    Write = 1,
    /// An atomic read-modify-write (ATOMIC's target).
    Atomic = 2,
}

impl Access {
    /// Is it a write (`ERROR_INFO` bit 2, DMA window permission)?
    pub fn writes(self) -> bool {
        self != Access::Read
    }

    /// Name for the trace.
    pub fn name(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Atomic => "atomic",
        }
    }
}

/// Fault record `reason` (hw-spec §9.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// An entry on the path is not VALID.
    NotPresent = 1,
    /// The leaf does not grant the access.
    Protection = 2,
    /// An entry violates the format.
    BadPte = 3,
    /// A table (or the context entry) could not be read.
    WalkError = 4,
    /// Context out of range, not valid, or malformed.
    BadContext = 5,
    /// Address bits 63:48 not 0.
    VaRange = 6,
}

impl Reason {
    /// Name as in hw-spec (trace, logs).
    pub fn name(self) -> &'static str {
        match self {
            Reason::NotPresent => "NOT_PRESENT",
            Reason::Protection => "PROTECTION",
            Reason::BadPte => "BAD_PTE",
            Reason::WalkError => "WALK_ERROR",
            Reason::BadContext => "BAD_CONTEXT",
            Reason::VaRange => "VA_RANGE",
        }
    }
}

/// Why a translation failed, and where the walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{} at level {level}", reason.name())]
pub struct WalkFault {
    /// Why.
    pub reason: Reason,
    /// Table level 0-3, or [`CONTEXT_LEVEL`] for the context entry / the address.
    pub level: u8,
}

fn stop(reason: Reason, level: u8) -> WalkFault {
    WalkFault { reason, level }
}

/// Where the context table lives (latched at `MMU_CONTROL.ENABLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextTable {
    /// Base (16-byte aligned).
    pub base: Addr,
    /// Entries, 1-4096.
    pub count: u32,
}

/// A valid context entry: where its root table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// The level-3 table (4 KiB aligned, SYS or VRAM).
    pub root: Addr,
}

/// A leaf translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    /// Virtual address of the page's first byte.
    pub va: u64,
    /// Physical address of the page's first byte (SYS or VRAM).
    pub pa: Addr,
    /// Page size: [`PAGE_4K`] or [`PAGE_2M`].
    pub size: u64,
    /// `READ`.
    pub read: bool,
    /// `WRITE`.
    pub write: bool,
    /// `ATOMIC`.
    pub atomic: bool,
    /// The level of the leaf (0 or 1).
    pub level: u8,
}

impl Leaf {
    /// Does the leaf grant `access`? (Atomics: `READ` and `WRITE`, and `ATOMIC` for a SYS
    /// target unless `ignore_atomic` is set: the `mmu-ignore-atomic-perm` injection.)
    pub fn grants(&self, access: Access, ignore_atomic: bool) -> bool {
        match access {
            Access::Read => self.read,
            Access::Write => self.write,
            Access::Atomic => {
                self.read
                    && self.write
                    && (self.atomic || ignore_atomic || self.pa.aperture != Aperture::Sys)
            }
        }
    }

    /// The physical address of `va` (inside the page).
    pub fn pa_of(&self, va: u64) -> Addr {
        Addr {
            aperture: self.pa.aperture,
            addr: self.pa.addr + (va - self.va),
        }
    }
}

fn aperture_of(bits: u64) -> Option<Aperture> {
    match (bits >> pte::APERTURE_SHIFT) & pte::APERTURE_MASK {
        0 => Some(Aperture::Sys),
        1 => Some(Aperture::Vram),
        _ => None,
    }
}

/// Reads and checks the entry of context `ctx` (hw-spec §9.2). Every failure is at
/// [`CONTEXT_LEVEL`]: `BAD_CONTEXT` (out of range, not VALID, reserved bits, bad aperture) or
/// `WALK_ERROR` (unreadable).
pub fn read_context(
    table: &ContextTable,
    ctx: u16,
    mem: &mut dyn FnMut(Addr) -> Option<u64>,
) -> Result<Context, WalkFault> {
    let lvl = CONTEXT_LEVEL;
    if u32::from(ctx) >= table.count {
        return Err(stop(Reason::BadContext, lvl));
    }
    let at = table
        .base
        .addr
        .checked_add(u64::from(ctx) * CTX_ENTRY_SIZE)
        .ok_or(stop(Reason::WalkError, lvl))?;
    let hi_at = at.checked_add(8).ok_or(stop(Reason::WalkError, lvl))?;
    let read = |mem: &mut dyn FnMut(Addr) -> Option<u64>, addr| {
        mem(Addr {
            aperture: table.base.aperture,
            addr,
        })
        .ok_or(stop(Reason::WalkError, lvl))
    };
    let lo = read(mem, at)?;
    let hi = read(mem, hi_at)?;
    if lo & ctx::VALID == 0 || lo & ctx::RESERVED != 0 || hi != 0 {
        return Err(stop(Reason::BadContext, lvl));
    }
    let aperture = aperture_of(lo).ok_or(stop(Reason::BadContext, lvl))?;
    Ok(Context {
        root: Addr {
            aperture,
            addr: lo & pte::ADDR_MASK,
        },
    })
}

/// The table index of `va` at `level` (0-3).
pub fn index(va: u64, level: u8) -> u64 {
    (va >> (PAGE_4K.trailing_zeros() + TABLE_ENTRIES.trailing_zeros() * u32::from(level)))
        & (TABLE_ENTRIES - 1)
}

/// Walks the four levels from `root` for `va` (bits 63:48 must be 0: else `VA_RANGE` at
/// [`CONTEXT_LEVEL`]). Permissions are not checked here ([`Leaf::grants`]).
pub fn walk(
    root: Addr,
    va: u64,
    mem: &mut dyn FnMut(Addr) -> Option<u64>,
) -> Result<Leaf, WalkFault> {
    if va >> VA_BITS != 0 {
        return Err(stop(Reason::VaRange, CONTEXT_LEVEL));
    }
    let mut table = root;
    for level in (0..LEVELS).rev() {
        // The table address has bits 11:0 clear and at most 52 bits: no overflow.
        let at = Addr {
            aperture: table.aperture,
            addr: table.addr | (index(va, level) * 8),
        };
        let e = mem(at).ok_or(stop(Reason::WalkError, level))?;
        if e & pte::VALID == 0 {
            return Err(stop(Reason::NotPresent, level));
        }
        let bad = stop(Reason::BadPte, level);
        if e & pte::RESERVED != 0 {
            return Err(bad);
        }
        let aperture = aperture_of(e).ok_or(bad)?;
        let addr = e & pte::ADDR_MASK;
        let leaf = e & pte::LEAF != 0;
        match (level, leaf) {
            (0, true) | (1, true) => {
                let size = if level == 0 { PAGE_4K } else { PAGE_2M };
                if addr & (size - 1) != 0 {
                    return Err(bad);
                }
                return Ok(Leaf {
                    va: va & !(size - 1),
                    pa: Addr { aperture, addr },
                    size,
                    read: e & pte::READ != 0,
                    write: e & pte::WRITE != 0,
                    atomic: e & pte::ATOMIC != 0,
                    level,
                });
            }
            (0, false) | (2 | 3, true) => return Err(bad),
            _ => {
                if e & pte::PERMS != 0 {
                    return Err(bad);
                }
                table = Addr { aperture, addr };
            }
        }
    }
    // Level 0 always returns above.
    Err(stop(Reason::BadPte, 0))
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use super::*;

    /// Sparse fake memory: 8-byte words by (aperture, address); records every read.
    #[derive(Default)]
    pub(crate) struct Mem {
        pub words: HashMap<(u32, u64), u64>,
        pub reads: Vec<Addr>,
    }

    impl Mem {
        pub fn set(&mut self, at: Addr, v: u64) {
            self.words.insert((at.aperture.raw(), at.addr), v);
        }
        pub fn reader(&mut self) -> impl FnMut(Addr) -> Option<u64> + '_ {
            move |at| {
                self.reads.push(at);
                self.words.get(&(at.aperture.raw(), at.addr)).copied()
            }
        }
    }

    pub(crate) fn sys(addr: u64) -> Addr {
        Addr {
            aperture: Aperture::Sys,
            addr,
        }
    }

    pub(crate) fn vram(addr: u64) -> Addr {
        Addr {
            aperture: Aperture::Vram,
            addr,
        }
    }

    /// A table entry pointing at `next` (non-leaf).
    pub(crate) fn table_entry(next: Addr) -> u64 {
        pte::VALID | (u64::from(next.aperture.raw()) << 5) | next.addr
    }

    /// A leaf entry.
    pub(crate) fn leaf_entry(pa: Addr, perms: u64) -> u64 {
        pte::VALID | pte::LEAF | perms | (u64::from(pa.aperture.raw()) << 5) | pa.addr
    }

    /// Tables at 0x1000 (L3), 0x2000 (L2), 0x3000 (L1), 0x4000 (L0) in SYS; maps `va` (4 KiB).
    pub(crate) fn four_levels(m: &mut Mem, va: u64, leaf: u64) {
        m.set(sys(0x1000 + index(va, 3) * 8), table_entry(sys(0x2000)));
        m.set(sys(0x2000 + index(va, 2) * 8), table_entry(sys(0x3000)));
        m.set(sys(0x3000 + index(va, 1) * 8), table_entry(vram(0x4000)));
        m.set(vram(0x4000 + index(va, 0) * 8), leaf);
    }

    fn walk_in(m: &mut Mem, va: u64) -> Result<Leaf, WalkFault> {
        let mut r = m.reader();
        walk(sys(0x1000), va, &mut r)
    }

    const VA: u64 = 0x0000_7f12_3456_7000;
    const RW: u64 = pte::READ | pte::WRITE;

    #[test]
    fn a_4k_page_through_both_apertures() {
        let mut m = Mem::default();
        four_levels(
            &mut m,
            VA,
            leaf_entry(sys(0xabc_d000), RW) | (0xffu64 << 56),
        );
        let l = walk_in(&mut m, VA + 0x123).unwrap();
        assert_eq!(l.pa, sys(0xabc_d000));
        assert_eq!((l.va, l.size, l.level), (VA, PAGE_4K, 0));
        assert!(l.read && l.write && !l.atomic);
        assert_eq!(l.pa_of(VA + 0x123), sys(0xabc_d123));
        assert_eq!(m.reads.len(), 4, "one read per level");
        assert_eq!(
            m.reads[3].aperture,
            Aperture::Vram,
            "the L0 table is in VRAM"
        );
    }

    #[test]
    fn a_2m_page_at_level_1() {
        let mut m = Mem::default();
        let va = 0x4000_0000 + 3 * PAGE_2M;
        m.set(sys(0x1000 + index(va, 3) * 8), table_entry(sys(0x2000)));
        m.set(sys(0x2000 + index(va, 2) * 8), table_entry(sys(0x3000)));
        m.set(
            sys(0x3000 + index(va, 1) * 8),
            leaf_entry(vram(0x60_0000), pte::READ),
        );
        let l = walk_in(&mut m, va + 0x1_2345).unwrap();
        assert_eq!((l.va, l.size, l.level), (va, PAGE_2M, 1));
        assert_eq!(l.pa_of(va + 0x1_2345), vram(0x61_2345));
        // Misaligned 2 MiB leaf: BAD_PTE at level 1.
        m.set(
            sys(0x3000 + index(va, 1) * 8),
            leaf_entry(vram(0x60_1000), pte::READ),
        );
        assert_eq!(walk_in(&mut m, va), Err(stop(Reason::BadPte, 1)));
    }

    #[test]
    fn not_present_at_every_level() {
        for level in 0..=3u8 {
            let mut m = Mem::default();
            four_levels(&mut m, VA, leaf_entry(sys(0x9000), RW));
            let tables = [vram(0x4000), sys(0x3000), sys(0x2000), sys(0x1000)];
            let t = tables[usize::from(level)];
            // Software bits and everything else are ignored when VALID is 0.
            m.set(
                Addr {
                    aperture: t.aperture,
                    addr: t.addr + index(VA, level) * 8,
                },
                !pte::VALID,
            );
            assert_eq!(
                walk_in(&mut m, VA),
                Err(stop(Reason::NotPresent, level)),
                "{level}"
            );
        }
    }

    #[test]
    fn bad_pte_for_every_rule() {
        let l0 = vram(0x4000 + index(VA, 0) * 8);
        let l1 = sys(0x3000 + index(VA, 1) * 8);
        let l2 = sys(0x2000 + index(VA, 2) * 8);
        let l3 = sys(0x1000 + index(VA, 3) * 8);
        let good_leaf = leaf_entry(sys(0x9000), RW);
        let cases: [(Addr, u64, u8); 9] = [
            (l0, good_leaf | (1 << 7), 0),                   // reserved 11:7
            (l0, good_leaf | (1 << 52), 0),                  // reserved 55:52
            (l0, good_leaf & !pte::LEAF, 0),                 // level 0 must be a leaf
            (l0, good_leaf | (2 << 5), 0),                   // aperture 3
            (l1, table_entry(vram(0x4000)) | pte::READ, 1),  // perms in a non-leaf
            (l2, table_entry(sys(0x3000)) | pte::LEAF, 2),   // leaf at level 2
            (l3, table_entry(sys(0x2000)) | pte::LEAF, 3),   // leaf at level 3
            (l3, table_entry(sys(0x2000)) | (2 << 5), 3),    // aperture 2
            (l2, table_entry(sys(0x3000)) | pte::ATOMIC, 2), // ATOMIC in a non-leaf
        ];
        for (i, (at, v, level)) in cases.into_iter().enumerate() {
            let mut m = Mem::default();
            four_levels(&mut m, VA, good_leaf);
            m.set(at, v);
            assert_eq!(
                walk_in(&mut m, VA),
                Err(stop(Reason::BadPte, level)),
                "case {i}"
            );
        }
    }

    #[test]
    fn walk_error_and_va_range() {
        let mut m = Mem::default();
        four_levels(&mut m, VA, leaf_entry(sys(0x9000), RW));
        // The L1 entry points at a table nothing backs.
        m.set(sys(0x3000 + index(VA, 1) * 8), table_entry(sys(0x7_7000)));
        assert_eq!(walk_in(&mut m, VA), Err(stop(Reason::WalkError, 0)));
        m.reads.clear();
        assert_eq!(
            walk_in(&mut m, 1 << 48),
            Err(stop(Reason::VaRange, CONTEXT_LEVEL))
        );
        assert!(m.reads.is_empty(), "no table read for a bad address");
        // An unreadable root.
        let mut r = m.reader();
        assert_eq!(
            walk(sys(0x55_5000), VA, &mut r),
            Err(stop(Reason::WalkError, 3))
        );
    }

    #[test]
    fn permissions() {
        let l = |perms: u64, pa: Addr| Leaf {
            va: 0,
            pa,
            size: PAGE_4K,
            read: perms & pte::READ != 0,
            write: perms & pte::WRITE != 0,
            atomic: perms & pte::ATOMIC != 0,
            level: 0,
        };
        let ro = l(pte::READ, sys(0));
        assert!(ro.grants(Access::Read, false));
        assert!(!ro.grants(Access::Write, false));
        assert!(!ro.grants(Access::Atomic, false));
        let wo = l(pte::WRITE, sys(0));
        assert!(!wo.grants(Access::Read, false) && wo.grants(Access::Write, false));
        // Atomics on SYS need ATOMIC; on VRAM they do not.
        assert!(!l(RW, sys(0)).grants(Access::Atomic, false));
        assert!(l(RW | pte::ATOMIC, sys(0)).grants(Access::Atomic, false));
        assert!(l(RW, vram(0)).grants(Access::Atomic, false));
        assert!(!l(pte::READ | pte::ATOMIC, sys(0)).grants(Access::Atomic, false));
        // The injection ignores only the ATOMIC bit.
        assert!(l(RW, sys(0)).grants(Access::Atomic, true));
        assert!(!l(pte::READ, sys(0)).grants(Access::Atomic, true));
    }

    #[test]
    fn context_entries() {
        let table = ContextTable {
            base: vram(0x10_0000),
            count: 4,
        };
        let mut m = Mem::default();
        let ok = ctx::VALID | 0x1000; // root in SYS (aperture 0)
        m.set(vram(0x10_0000 + 16), ok);
        m.set(vram(0x10_0000 + 24), 0);
        let mut r = m.reader();
        assert_eq!(
            read_context(&table, 1, &mut r),
            Ok(Context { root: sys(0x1000) })
        );
        let bad = |e: Reason| Err(stop(e, CONTEXT_LEVEL));
        assert_eq!(read_context(&table, 4, &mut r), bad(Reason::BadContext));
        // Entry 0 is unreadable (nothing stored).
        assert_eq!(read_context(&table, 0, &mut r), bad(Reason::WalkError));
        drop(r);
        for (lo, hi) in [
            (ok & !ctx::VALID, 0),
            (ok | (1 << 3), 0),
            (ok | (1 << 60), 0),
            (ok | (2 << 5), 0),
            (ok, 1),
        ] {
            m.set(vram(0x10_0000 + 16), lo);
            m.set(vram(0x10_0000 + 24), hi);
            let mut r = m.reader();
            assert_eq!(
                read_context(&table, 1, &mut r),
                bad(Reason::BadContext),
                "{lo:#x} {hi:#x}"
            );
        }
        // A table at the end of the address space: the entry address overflows.
        let top = ContextTable {
            base: sys(u64::MAX - 15),
            count: 4096,
        };
        let mut r = m.reader();
        assert_eq!(read_context(&top, 2, &mut r), bad(Reason::WalkError));
    }
}
