//! The TLB (hw-spec §9.3) and the tracking of accesses in flight that `TLB_INVALIDATE` waits for.
//!
//! The TLB caches leaf translations (4 KiB and 2 MiB, [`TLB_ENTRIES`] of them, tagged by
//! context, first in first out) and context entries ([`CTX_ENTRIES`]). Not-present and faulting
//! lookups are never cached. Every invalidation bumps a generation: a walk that started before
//! it does not insert its (possibly stale) result afterwards, so an invalidation that raced with
//! a walk cannot leave the old translation behind.
//!
//! [`InFlight`] numbers every translated access (an engine chunk, an atomic) from before its
//! translation until its last byte moved. An invalidation drops the entries, then waits until
//! every access of the context that began before it has finished: after that no access uses a
//! translation it dropped (an over-approximation of "the accesses that used a dropped entry":
//! it also waits for accesses of the context that used other entries, at most one chunk each).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::walk::{Context, Leaf, PAGE_2M, PAGE_4K};

/// Leaf translations the TLB holds.
pub const TLB_ENTRIES: usize = 1024;
/// Context entries the TLB holds.
pub const CTX_ENTRIES: usize = 1024;

/// Which translations an invalidation drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// One context, or every context (and every cached context entry).
    pub ctx: Option<u16>,
    /// `[start, end)` of virtual addresses; `None`: the whole context (its cached context entry
    /// included).
    pub range: Option<(u64, u64)>,
}

impl Scope {
    /// Everything.
    pub const ALL: Scope = Scope {
        ctx: None,
        range: None,
    };

    fn covers(&self, ctx: u16, va: u64, size: u64) -> bool {
        if self.ctx.is_some_and(|c| c != ctx) {
            return false;
        }
        match self.range {
            None => true,
            Some((start, end)) => va < end && va.saturating_add(size) > start,
        }
    }

    fn drops_context(&self, ctx: u16) -> bool {
        match self.ctx {
            None => true,
            Some(c) => c == ctx && self.range.is_none(),
        }
    }
}

/// Key of a cached leaf: context, page base, page size.
type Key = (u16, u64, u64);

/// The translation cache.
#[derive(Debug, Default)]
pub struct Tlb {
    leaves: HashMap<Key, Leaf>,
    order: VecDeque<Key>,
    contexts: HashMap<u16, Context>,
    generation: u64,
}

impl Tlb {
    /// Empty.
    pub fn new() -> Tlb {
        Tlb::default()
    }

    /// The generation a walk starting now must present to [`Tlb::insert`].
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The cached leaf covering `va` of `ctx`.
    pub fn lookup(&self, ctx: u16, va: u64) -> Option<Leaf> {
        [PAGE_4K, PAGE_2M]
            .into_iter()
            .find_map(|size| self.leaves.get(&(ctx, va & !(size - 1), size)).copied())
    }

    /// Caches a leaf found by a walk that started at `generation` (ignored if an invalidation
    /// happened since).
    pub fn insert(&mut self, ctx: u16, leaf: Leaf, generation: u64) {
        if generation != self.generation {
            return;
        }
        let key = (ctx, leaf.va, leaf.size);
        if self.leaves.insert(key, leaf).is_none() {
            self.order.push_back(key);
        }
        while self.leaves.len() > TLB_ENTRIES {
            match self.order.pop_front() {
                Some(k) => {
                    self.leaves.remove(&k);
                }
                None => break,
            }
        }
        // Keys of invalidated entries linger in `order`; keep it bounded.
        if self.order.len() > 2 * TLB_ENTRIES {
            let leaves = &self.leaves;
            self.order.retain(|k| leaves.contains_key(k));
        }
    }

    /// The cached entry of context `ctx`.
    pub fn context(&self, ctx: u16) -> Option<Context> {
        self.contexts.get(&ctx).copied()
    }

    /// Caches a context entry read by a walk that started at `generation`.
    pub fn insert_context(&mut self, ctx: u16, c: Context, generation: u64) {
        if generation != self.generation {
            return;
        }
        if self.contexts.len() >= CTX_ENTRIES && !self.contexts.contains_key(&ctx) {
            self.contexts.clear();
        }
        self.contexts.insert(ctx, c);
    }

    /// Drops what `scope` covers; returns how many leaves were dropped.
    pub fn invalidate(&mut self, scope: Scope) -> usize {
        self.generation = self.generation.wrapping_add(1);
        let before = self.leaves.len();
        self.leaves
            .retain(|&(ctx, va, size), _| !scope.covers(ctx, va, size));
        self.contexts.retain(|&ctx, _| !scope.drops_context(ctx));
        if self.leaves.is_empty() {
            self.order.clear();
        }
        before - self.leaves.len()
    }

    /// Leaves held.
    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    /// No leaf held.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }
}

#[derive(Debug, Default)]
struct FlightState {
    next: u64,
    /// Ticket -> context of the access.
    active: BTreeMap<u64, u16>,
    /// Invalidations waiting (for tests and `vugpu stats`).
    waiting: usize,
}

/// Translated accesses in flight.
#[derive(Debug, Default)]
pub struct InFlight {
    state: Mutex<FlightState>,
    cv: Condvar,
}

/// One access in flight; finished when dropped.
#[derive(Debug)]
pub struct Ticket<'a> {
    owner: &'a InFlight,
    id: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut st = self.owner.lock();
        st.active.remove(&self.id);
        if st.waiting > 0 {
            self.owner.cv.notify_all();
        }
    }
}

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, FlightState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An access of `ctx` starts (before it translates).
    pub fn begin(&self, ctx: u16) -> Ticket<'_> {
        let mut st = self.lock();
        let id = st.next;
        st.next += 1;
        st.active.insert(id, ctx);
        Ticket { owner: self, id }
    }

    /// Waits until every access of `ctx` (every context: `None`) that began before this call
    /// has finished, or `abort` is raised (checked every 10 ms). Returns false if aborted.
    pub fn wait_older(&self, ctx: Option<u16>, abort: &AtomicBool) -> bool {
        let mut st = self.lock();
        let limit = st.next;
        st.waiting += 1;
        let ok = loop {
            let busy = st
                .active
                .range(..limit)
                .any(|(_, &c)| ctx.is_none_or(|w| w == c));
            if !busy {
                break true;
            }
            if abort.load(Ordering::Acquire) {
                break false;
            }
            st = match self.cv.wait_timeout(st, Duration::from_millis(10)) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        };
        st.waiting -= 1;
        ok
    }

    /// Invalidations waiting for accesses now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    /// Accesses in flight now.
    pub fn active(&self) -> usize {
        self.lock().active.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::mpsc;
    use std::sync::Arc;

    use super::*;
    use crate::engine::desc::{Addr, Aperture};

    fn leaf(va: u64, size: u64) -> Leaf {
        Leaf {
            va,
            pa: Addr {
                aperture: Aperture::Sys,
                addr: 0x10_0000_0000 + va,
            },
            size,
            read: true,
            write: true,
            atomic: false,
            level: if size == PAGE_4K { 0 } else { 1 },
        }
    }

    #[test]
    fn hit_miss_and_context_tags() {
        let mut t = Tlb::new();
        let g = t.generation();
        t.insert(1, leaf(0x5000, PAGE_4K), g);
        t.insert(1, leaf(0x20_0000, PAGE_2M), g);
        assert_eq!(t.lookup(1, 0x5fff).unwrap().va, 0x5000);
        assert!(t.lookup(1, 0x6000).is_none(), "miss next to a 4 KiB page");
        assert_eq!(t.lookup(1, 0x3f_ffff).unwrap().size, PAGE_2M);
        assert!(t.lookup(2, 0x5000).is_none(), "tagged by context");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn invalidate_by_range_context_and_all() {
        let mut t = Tlb::new();
        let g = t.generation();
        for ctx in [1u16, 2] {
            for p in 0..4u64 {
                t.insert(ctx, leaf(p * PAGE_4K, PAGE_4K), g);
            }
            t.insert(ctx, leaf(PAGE_2M, PAGE_2M), g);
            t.insert_context(
                ctx,
                Context {
                    root: Addr {
                        aperture: Aperture::Sys,
                        addr: 0x1000,
                    },
                },
                g,
            );
        }
        // A range: pages 1-2 of context 1, and the 2 MiB page it overlaps by one byte.
        let n = t.invalidate(Scope {
            ctx: Some(1),
            range: Some((PAGE_4K, 3 * PAGE_4K)),
        });
        assert_eq!(n, 2);
        assert!(t.lookup(1, 0).is_some() && t.lookup(1, 3 * PAGE_4K).is_some());
        assert!(t.lookup(1, PAGE_4K).is_none() && t.lookup(1, 2 * PAGE_4K).is_none());
        assert!(t.context(1).is_some(), "a range keeps the context entry");
        assert_eq!(
            t.invalidate(Scope {
                ctx: Some(1),
                range: Some((2 * PAGE_2M - 1, 2 * PAGE_2M)),
            }),
            1,
            "the 2 MiB page overlapping the range's first byte"
        );
        // A whole context drops its context entry too.
        assert_eq!(
            t.invalidate(Scope {
                ctx: Some(1),
                range: None
            }),
            2
        );
        assert!(t.context(1).is_none() && t.context(2).is_some());
        assert_eq!(t.len(), 5, "context 2 untouched");
        // Everything.
        assert_eq!(t.invalidate(Scope::ALL), 5);
        assert!(t.is_empty() && t.context(2).is_none());
        // Nothing held: nothing dropped (no walk, no cost).
        assert_eq!(t.invalidate(Scope::ALL), 0);
    }

    #[test]
    fn a_walk_older_than_an_invalidation_is_not_cached() {
        let mut t = Tlb::new();
        let g = t.generation();
        t.invalidate(Scope::ALL);
        t.insert(1, leaf(0, PAGE_4K), g);
        assert!(t.lookup(1, 0).is_none());
        t.insert(1, leaf(0, PAGE_4K), t.generation());
        assert!(t.lookup(1, 0).is_some());
    }

    #[test]
    fn capacity_is_bounded_fifo() {
        let mut t = Tlb::new();
        let g = t.generation();
        for p in 0..(TLB_ENTRIES as u64 + 10) {
            t.insert(0, leaf(p * PAGE_4K, PAGE_4K), g);
        }
        assert_eq!(t.len(), TLB_ENTRIES);
        assert!(t.lookup(0, 0).is_none(), "the oldest went first");
        assert!(t.lookup(0, (TLB_ENTRIES as u64 + 9) * PAGE_4K).is_some());
    }

    /// An invalidation waits for an access of its context that began before it, and only for
    /// that: deterministic (channels, no sleeps).
    #[test]
    fn invalidation_waits_for_older_accesses_only() {
        let f = Arc::new(InFlight::default());
        let no = AtomicBool::new(false);
        let old = f.begin(3);
        let other_ctx = f.begin(4);
        // Another context's access does not hold an invalidation of context 3... once the
        // access of context 3 is done.
        let (tx, rx) = mpsc::channel();
        let f2 = f.clone();
        let t = std::thread::spawn(move || {
            let no = AtomicBool::new(false);
            let r = f2.wait_older(Some(3), &no);
            tx.send(r).unwrap();
        });
        // Wait (deterministically) until the invalidation is waiting.
        while f.waiting() == 0 {
            std::thread::yield_now();
        }
        // A new access of context 3 begins after the invalidation: not waited for.
        let newer = f.begin(3);
        assert!(
            rx.try_recv().is_err(),
            "finished while an older access flies"
        );
        drop(old);
        assert!(rx.recv().unwrap());
        t.join().unwrap();
        drop(newer);
        // Every context: waits for context 4's access too; abort ends the wait.
        let abort = AtomicBool::new(true);
        assert!(!f.wait_older(None, &abort));
        drop(other_ctx);
        assert!(f.wait_older(None, &no));
        assert_eq!(f.active(), 0);
    }
}
