//! The `mmu_walk` harness: the device MMU's translation (context table, 4-level walk, TLB)
//! over garbage tables, contexts and addresses (hw-spec §9.2, §9.3).
//!
//! The input builds a small physical memory of 4 KiB pages (SYS and VRAM, at small, top-of-
//! 52-bit and arbitrary addresses) whose entries are mostly pointers to other pages with
//! fuzzed flag bits (so walks go deep) and otherwise raw 64-bit garbage, a context table in one
//! of them, and an MMU enabled on it with a fuzzed `MMU_CTX_COUNT`. Then a sequence of
//! translations (fuzzed context, address built from populated indices or raw, length, access),
//! invalidations of fuzzed scopes, and entry rewrites (each followed by a full invalidation).
//!
//! Invariants: no panic; every memory read the walker issues is 8-byte aligned, and reads of
//! anything not mapped get nothing (`WALK_ERROR`), never memory; at most 6 reads per page (the
//! context entry and one entry per level); the result of every translation (pieces, or the first
//! faulting address with its reason and level) equals an independent reference walk written
//! from the spec; the pieces cover exactly the requested length.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

use vugpu_backend::SharedPage;
use vugpu_device::engine::desc::{Addr, Aperture};
use vugpu_device::mmu::regs::{control, offset as moff};
use vugpu_device::mmu::tlb::Scope;
use vugpu_device::mmu::walk::{Access, Reason, WalkFault};
use vugpu_device::mmu::{Mmu, MmuInject, XlateError};

use super::Input;

const PAGE: u64 = 4096;
const ADDR_BITS: u64 = 0x000f_ffff_ffff_f000;

/// What the harness saw (the deterministic `cargo test` run checks that inputs reach deep).
#[derive(Debug, Default, Clone, Copy)]
pub struct MmuStats {
    /// Translations that produced pieces.
    pub ok: u64,
    /// Faults by reason (index = reason code, 1-6).
    pub faults: [u64; 7],
    /// Successful translations through a 2 MiB page.
    pub huge: u64,
    /// Invalidations.
    pub invalidations: u64,
}

/// Physical memory: mapped pages of 512 words.
#[derive(Default)]
struct Memory {
    pages: HashMap<(u32, u64), Vec<u64>>,
}

impl Memory {
    fn word(&self, at: Addr) -> Option<u64> {
        let page = self
            .pages
            .get(&(at.aperture.raw(), at.addr & !(PAGE - 1)))?;
        page.get(((at.addr % PAGE) / 8) as usize).copied()
    }

    fn set(&mut self, page: Addr, index: usize, v: u64) {
        if let Some(p) = self.pages.get_mut(&(page.aperture.raw(), page.addr)) {
            if let Some(w) = p.get_mut(index % 512) {
                *w = v;
            }
        }
    }
}

fn ap(bits: u64) -> Option<Aperture> {
    match bits & 3 {
        0 => Some(Aperture::Sys),
        1 => Some(Aperture::Vram),
        _ => None,
    }
}

/// The reference walk of one page, written from hw-spec §9.2 without the device's code:
/// the physical address of `va` and the bytes left in its page, or (reason, level).
fn reference(
    mem: &Memory,
    table: (Addr, u32),
    ctx: u16,
    va: u64,
    access: Access,
    ignore_atomic: bool,
) -> Result<(Addr, u64), (Reason, u8)> {
    if u32::from(ctx) >= table.1 {
        return Err((Reason::BadContext, 4));
    }
    let entry = table
        .0
        .addr
        .checked_add(16 * u64::from(ctx))
        .and_then(|a| Some((a, a.checked_add(8)?)));
    let read = |aperture, addr| mem.word(Addr { aperture, addr });
    let (lo, hi) = match entry {
        Some((a, b)) => match (read(table.0.aperture, a), read(table.0.aperture, b)) {
            (Some(lo), Some(hi)) => (lo, hi),
            _ => return Err((Reason::WalkError, 4)),
        },
        None => return Err((Reason::WalkError, 4)),
    };
    let reserved_ctx = 0b1_1110 | (0x1f << 7) | (0xfff << 52);
    if lo & 1 == 0 || lo & reserved_ctx != 0 || hi != 0 {
        return Err((Reason::BadContext, 4));
    }
    let Some(mut t_ap) = ap(lo >> 5) else {
        return Err((Reason::BadContext, 4));
    };
    if va >= 1 << 48 {
        return Err((Reason::VaRange, 4));
    }
    let mut t = lo & ADDR_BITS;
    for level in (0..4u8).rev() {
        let i = (va >> (12 + 9 * u32::from(level))) & 511;
        let Some(e) = read(t_ap, t + i * 8) else {
            return Err((Reason::WalkError, level));
        };
        if e & 1 == 0 {
            return Err((Reason::NotPresent, level));
        }
        let bad = Err((Reason::BadPte, level));
        if e & ((0x1f << 7) | (0xf << 52)) != 0 {
            return bad;
        }
        let Some(e_ap) = ap(e >> 5) else {
            return bad;
        };
        let addr = e & ADDR_BITS;
        if e & 2 != 0 {
            if level >= 2 {
                return bad;
            }
            let size = if level == 0 { PAGE } else { 2 << 20 };
            if !addr.is_multiple_of(size) {
                return bad;
            }
            let (r, w, a) = (e & 4 != 0, e & 8 != 0, e & 16 != 0);
            let ok = match access {
                Access::Read => r,
                Access::Write => w,
                Access::Atomic => r && w && (a || ignore_atomic || e_ap == Aperture::Vram),
            };
            if !ok {
                return Err((Reason::Protection, level));
            }
            let off = va % size;
            return Ok((
                Addr {
                    aperture: e_ap,
                    addr: addr + off,
                },
                size - off,
            ));
        }
        if level == 0 || e & 0x1c != 0 {
            return bad;
        }
        t = addr;
        t_ap = e_ap;
    }
    Err((Reason::BadPte, 0))
}

/// The expected result of a translation of `[va, va + len)`, page by page.
fn expected(
    mem: &Memory,
    table: (Addr, u32),
    ctx: u16,
    va: u64,
    len: u64,
    access: Access,
    ignore_atomic: bool,
) -> Result<Vec<(Addr, u64)>, XlateError> {
    let Some(end) = va.checked_add(len) else {
        // Bytes past 2^64 are past 2^48: the first one is `va` itself.
        return Err(XlateError::Fault {
            va,
            fault: WalkFault {
                reason: Reason::VaRange,
                level: 4,
            },
        });
    };
    let mut out: Vec<(Addr, u64)> = Vec::new();
    let mut cur = va;
    while cur < end {
        let (pa, left) =
            reference(mem, table, ctx, cur, access, ignore_atomic).map_err(|(reason, level)| {
                XlateError::Fault {
                    va: cur,
                    fault: WalkFault { reason, level },
                }
            })?;
        let n = left.min(end - cur);
        match out.last_mut() {
            Some((a, l))
                if a.aperture == pa.aperture && a.addr.checked_add(*l) == Some(pa.addr) =>
            {
                *l += n
            }
            _ => out.push((pa, n)),
        }
        cur += n;
    }
    Ok(out)
}

/// Runs one input.
pub fn mmu_walk(data: &[u8]) -> MmuStats {
    let mut input = Input::new(data);
    let mut stats = MmuStats::default();
    let flags = input.u8();
    let ignore_atomic = flags & 1 != 0;
    let mmu = Mmu::new(
        true,
        5,
        MmuInject {
            ignore_atomic_perm: ignore_atomic,
            ..MmuInject::default()
        },
    );
    let Ok(db) = SharedPage::new(0x20_1000, 0x20_0000) else {
        return stats;
    };
    // Pages.
    let n = 1 + usize::from(input.below(12));
    let mut pages: Vec<Addr> = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let aperture = if input.u8() & 1 == 0 {
            Aperture::Sys
        } else {
            Aperture::Vram
        };
        let addr = match input.u8() % 4 {
            0 | 1 => PAGE * (i + 1),
            2 => ADDR_BITS - PAGE * i,
            _ => input.u64() & !(PAGE - 1),
        };
        pages.push(Addr { aperture, addr });
    }
    let mut mem = Memory::default();
    for p in &pages {
        mem.pages.insert((p.aperture.raw(), p.addr), vec![0; 512]);
    }
    // Populated indices per page (addresses are built from them).
    let mut used: Vec<Vec<u64>> = vec![Vec::new(); n];
    let entry = |input: &mut Input<'_>, pages: &[Addr]| -> u64 {
        let kind = input.u8();
        if kind.is_multiple_of(4) {
            return input.value64();
        }
        let target = pages[usize::from(input.u8()) % pages.len()];
        let f = input.u8();
        let mut e = u64::from(f & 0x1e) | u64::from(f & 0x80 == 0 || f & 1 != 0);
        let aperture = if f & 0x20 != 0 {
            u64::from(input.u8() & 3)
        } else {
            u64::from(target.aperture.raw())
        };
        e |= aperture << 5;
        let mut addr = target.addr & ADDR_BITS;
        if f & 0x40 != 0 {
            // A 2 MiB-aligned frame (a possible level-1 leaf), or a reserved bit.
            if kind & 0x80 != 0 {
                addr &= !((2 << 20) - 1);
            } else {
                e |= 1 << [7, 9, 11, 52, 55][usize::from(kind >> 4) % 5];
            }
        }
        e | addr | (u64::from(kind & 0x70) << 52)
    };
    for _ in 0..input.below(64) {
        let p = usize::from(input.u8()) % n;
        let i = u64::from(input.u16() % 512);
        let v = entry(&mut input, &pages);
        mem.set(pages[p], i as usize, v);
        used[p].push(i);
    }
    // The context table is page 0: context entries (2 words each) pointing at pages.
    let table = pages[0];
    for _ in 0..1 + input.below(6) {
        let c = u64::from(input.below(8));
        let target = pages[usize::from(input.u8()) % n];
        let f = input.u8();
        let lo = match f % 8 {
            0 => input.value64(),
            _ => 1 | (u64::from(target.aperture.raw()) << 5) | (target.addr & ADDR_BITS),
        };
        let hi = if f & 0x80 != 0 { input.value64() } else { 0 };
        mem.set(table, (2 * c) as usize, lo);
        mem.set(table, (2 * c + 1) as usize, hi);
    }
    let count = match input.u8() % 4 {
        0 => u32::from(input.u16()),
        _ => 1 + u32::from(input.below(8)),
    };
    for (r, v) in [
        (moff::CTX_BASE_LO, table.addr as u32),
        (moff::CTX_BASE_HI, (table.addr >> 32) as u32),
        (moff::CTX_COUNT, count),
        (moff::CTX_APERTURE, table.aperture.raw()),
        (moff::RING_SIZE, 1),
        (moff::CONTROL, control::ENABLE),
    ] {
        mmu.write(r, v, &db);
    }
    let enabled = mmu.enabled();
    let no = AtomicBool::new(false);
    let mut ops = 0;
    while !input.is_empty() && ops < 64 {
        ops += 1;
        match input.u8() % 8 {
            0 => {
                // Rewrite an entry, then invalidate everything (the driver's duty).
                let p = usize::from(input.u8()) % n;
                let i = u64::from(input.u16() % 512);
                let v = entry(&mut input, &pages);
                mem.set(pages[p], i as usize, v);
                used[p].push(i);
                mmu.invalidate(Scope::ALL, &no);
                stats.invalidations += 1;
            }
            1 => {
                // An invalidation of a fuzzed scope (memory unchanged: results stay the same).
                let ctx = (input.u8() & 1 == 0).then(|| u16::from(input.below(8)));
                let start = input.value64() & !(PAGE - 1);
                let range = (input.u8() & 1 == 0)
                    .then(|| (start, start.saturating_add(PAGE * u64::from(input.u8()))));
                mmu.invalidate(Scope { ctx, range }, &no);
                stats.invalidations += 1;
            }
            _ => {
                let ctx = match input.u8() % 8 {
                    0 => input.u16(),
                    _ => u16::from(input.below(8)),
                };
                let va = match input.u8() % 4 {
                    0 => input.value64(),
                    _ => {
                        let mut va = 0;
                        for level in (0..4u32).rev() {
                            let p = usize::from(input.u8()) % n;
                            let i = match used[p].as_slice() {
                                [] => u64::from(input.u16() % 512),
                                u => u[usize::from(input.u8()) % u.len()],
                            };
                            va |= i << (12 + 9 * level);
                        }
                        va | u64::from(input.u16() % 4096)
                    }
                };
                let len = match input.u8() % 4 {
                    0 => 1 + u64::from(input.u16()),
                    1 => 1 + u64::from(input.u32() % (4 << 20)),
                    _ => 1 + u64::from(input.u8()),
                };
                let access = match input.u8() % 3 {
                    0 => Access::Read,
                    1 => Access::Write,
                    _ => Access::Atomic,
                };
                let mut reads = 0u64;
                let mut reader = |at: Addr| {
                    assert_eq!(at.addr % 8, 0, "unaligned table read at {at:?}");
                    assert!(!at.aperture.is_virt(), "a virtual table address");
                    reads += 1;
                    mem.word(at)
                };
                let got = mmu.translate(ctx, va, len, access, &mut reader);
                let pages_spanned = va.saturating_add(len).div_ceil(PAGE) - va / PAGE;
                assert!(reads <= 6 * pages_spanned.max(1), "{reads} reads");
                if !enabled {
                    assert_eq!(got, Err(XlateError::Disabled));
                    continue;
                }
                let want = expected(&mem, (table, count), ctx, va, len, access, ignore_atomic);
                assert_eq!(got, want, "ctx {ctx} va {va:#x} len {len:#x} {access:?}");
                match got {
                    Ok(segs) => {
                        stats.ok += 1;
                        assert_eq!(segs.iter().map(|s| s.1).sum::<u64>(), len);
                        if let Ok((_, left)) =
                            reference(&mem, (table, count), ctx, va, access, ignore_atomic)
                        {
                            if left > PAGE {
                                stats.huge += 1;
                            }
                        }
                    }
                    Err(XlateError::Fault { fault, .. }) => {
                        stats.faults[fault.reason as usize] += 1;
                    }
                    Err(XlateError::Disabled) => {}
                }
            }
        }
    }
    stats
}
