//! The device MMU (hw-spec §9): contexts, 4-level page tables, a TLB, the fault ring, replay
//! and cancel.
//!
//! - [`walk`]: the context table and page-table formats and the walk (pure functions over a
//!   memory reader).
//! - [`tlb`]: the TLB and the accesses in flight that `TLB_INVALIDATE` waits for.
//! - [`fault_ring`]: the record format and the ring arithmetic.
//! - [`regs`]: the register block and its validation at `ENABLE`.
//!
//! [`Mmu`] ties them together. It sits in the [`EngineEnv`](crate::engine::env::EngineEnv),
//! whose translation seam calls [`Mmu::translate`] for a `VIRT` address in front of the usual
//! SYS/VRAM resolution (so bounds, permissions, peers and DMA messages work the same with and
//! without it); page-table and fault-record accesses are ordinary device accesses through that
//! seam. An engine whose access faults calls [`Mmu::raise`]: record, `FAULT_PUT`, fault vector,
//! then it waits until a `FAULT_REPLAY` ([`Mmu::replay`]), `MMU_CONTROL.ENABLE` 1→0, a reset or
//! shutdown ends the wait.
//!
//! Locks (inside the device's order "engine state → DMA space → fabric → MSI-X"): the record
//! writer lock is taken first and held while a record is written through the seam; the state
//! lock and the TLB lock are only ever held for bookkeeping, never while memory is accessed or
//! a DMA message is awaited (the event loop takes the state lock for register accesses and
//! must never wait behind an engine's memory access).

pub mod fault_ring;
pub mod regs;
pub mod tlb;
pub mod walk;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use vugpu_backend::SharedPage;

use crate::engine::desc::Addr;
use crate::regs::spec::{COUNTER_HI, COUNTER_SIZE};
use fault_ring::{Record, DB_FAULT_GET, DB_FAULT_PUT};
use regs::{control, offset, status, Config, Programmed};
use tlb::{InFlight, Scope, Ticket, Tlb};
use walk::{Access, Leaf, Reason, WalkFault};

/// Is the MMU present (CAPS bit 5) with `engines` engines and `vectors` MSI-X vectors: it
/// needs engines and its own vector, `1 + engines` (hw-spec §9).
pub fn present(engines: u32, vectors: u32) -> bool {
    engines > 0 && vectors >= engines + 2
}

/// Deliberate breakage for guest tests (`--inject`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MmuInject {
    /// `mmu-stale-tlb`: `TLB_INVALIDATE` completes but drops nothing (and waits for nothing).
    pub stale_tlb: bool,
    /// `mmu-no-fault-irq`: records are written, the fault vector is never signalled.
    pub no_fault_irq: bool,
    /// `mmu-ignore-atomic-perm`: atomics on SYS targets do not need the `ATOMIC` bit.
    pub ignore_atomic_perm: bool,
}

/// The statistics counters of hw-spec §9.1, in register order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// Records written.
    Faults = 0,
    /// Records dropped (ring full or unwritable).
    FaultsDropped,
    /// Waits ended by a replay.
    Replays,
    /// Waits ended by a cancel (`FAULT_REPLAY` cancel, or `ENABLE` 1→0).
    Cancels,
    /// Page translations found in the TLB.
    TlbHits,
    /// Page-table walks.
    TlbMisses,
    /// `TLB_INVALIDATE` descriptors executed.
    Invalidations,
}

/// Number of counters.
pub const COUNTERS: usize = Counter::Invalidations as usize + 1;

/// A translation fault an engine raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingFault {
    /// The engine.
    pub engine: usize,
    /// The context.
    pub ctx: u16,
    /// The first faulting virtual address.
    pub va: u64,
    /// The access.
    pub access: Access,
    /// Why, and where the walk stopped.
    pub fault: WalkFault,
}

/// How a fault wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Translate again.
    Replay,
    /// Stop with `TRANSLATION` (code 9).
    Cancel,
    /// A reset or shutdown abandoned the descriptor.
    Aborted,
}

/// Why a translation did not produce pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum XlateError {
    /// The MMU is not enabled (cleared after the descriptor was accepted).
    #[error("the MMU is disabled")]
    Disabled,
    /// A replayable fault at `va`.
    #[error("{fault} at {va:#x}")]
    Fault {
        /// The first faulting virtual address.
        va: u64,
        /// Why.
        fault: WalkFault,
    },
}

/// What a fault needs from the rest of the device (the engine environment).
pub trait FaultSink {
    /// Writes a record's bytes at `at` through the seam; `Err(true)` if the engine was told to
    /// abandon its descriptor meanwhile, `Err(false)` if the memory is not reachable.
    fn write_record(&self, at: Addr, bytes: &[u8]) -> Result<(), bool>;
    /// Signals MSI-X vector `vector`.
    fn signal(&self, vector: usize);
    /// The device clock.
    fn clock_ns(&self) -> u64;
    /// The device is shutting down.
    fn shutting_down(&self) -> bool;
    /// The doorbell page (`FAULT_PUT`, `FAULT_GET`).
    fn doorbell(&self) -> &SharedPage;
    /// A trace line for a fault record (`result` is the reason).
    fn trace_fault(&self, engine: usize, rec: &Record, written: bool);
}

#[derive(Debug, Clone, Copy)]
struct Waiter {
    id: u64,
    ctx: u16,
    resume: Option<Resume>,
}

#[derive(Debug, Default)]
struct State {
    regs: Programmed,
    config: Option<Config>,
    config_error: bool,
    overflow: bool,
    /// Bumped by every enable, disable and reset: a fault raised under an older one is void.
    generation: u64,
    put: u32,
    waiters: Vec<Waiter>,
    next_waiter: u64,
    /// Statistics `_LO` snapshot: (register offset, high half).
    latch: Option<(u32, u32)>,
}

impl State {
    fn waiting(&self) -> bool {
        self.waiters.iter().any(|w| w.resume.is_none())
    }
}

/// The MMU's state for `vugpu stats` (hw-spec §9.6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MmuReport {
    /// CAPS bit 5.
    pub present: bool,
    /// `MMU_STATUS.ENABLED`.
    pub enabled: bool,
    /// `MMU_STATUS.WAITING`.
    pub waiting: bool,
    /// `FAULT_PUT`.
    pub fault_put: u32,
    /// `FAULT_GET`.
    pub fault_get: u32,
    /// Records written.
    pub faults: u64,
    /// Records dropped.
    pub faults_dropped: u64,
    /// Waits ended by a replay.
    pub replays: u64,
    /// Waits ended by a cancel.
    pub cancels: u64,
    /// TLB hits.
    pub tlb_hits: u64,
    /// Page-table walks.
    pub tlb_misses: u64,
    /// `TLB_INVALIDATE` descriptors executed.
    pub invalidations: u64,
}

/// The device MMU.
#[derive(Debug)]
pub struct Mmu {
    present: bool,
    fault_vector: u32,
    inject: MmuInject,
    enabled: AtomicBool,
    state: Mutex<State>,
    cv: Condvar,
    writer: Mutex<()>,
    tlb: Mutex<Tlb>,
    inflight: InFlight,
    stats: [AtomicU64; COUNTERS],
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Mmu {
    /// An MMU (`present`: CAPS bit 5) whose fault vector is `fault_vector`.
    pub fn new(present: bool, fault_vector: u32, inject: MmuInject) -> Mmu {
        Mmu {
            present,
            fault_vector,
            inject,
            enabled: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            writer: Mutex::new(()),
            tlb: Mutex::new(Tlb::new()),
            inflight: InFlight::default(),
            stats: Default::default(),
        }
    }

    /// CAPS bit 5.
    pub fn present(&self) -> bool {
        self.present
    }

    /// The MMU translates now.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// The injections in force.
    pub fn inject(&self) -> MmuInject {
        self.inject
    }

    fn count(&self, c: Counter, n: u64) {
        self.stats[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// A statistics counter.
    pub fn counter(&self, c: Counter) -> u64 {
        self.stats[c as usize].load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// A register read (`reg` relative to the block's base). Reads 0 without the MMU.
    pub fn read(&self, reg: u32, doorbell: &SharedPage) -> u32 {
        if !self.present {
            return 0;
        }
        let mut st = self.lock();
        if let Some(v) = st.regs.read_latched(reg) {
            return v;
        }
        match reg {
            offset::CONTROL => st.regs.control,
            offset::STATUS => {
                let mut s = 0;
                if st.config.is_some() {
                    s |= status::ENABLED;
                }
                if st.config_error {
                    s |= status::CONFIG_ERROR;
                }
                if st.overflow {
                    s |= status::FAULT_OVERFLOW;
                }
                if st.waiting() {
                    s |= status::WAITING;
                }
                s
            }
            offset::FAULT_PUT => st.put,
            offset::FAULT_GET => doorbell.load_u32(DB_FAULT_GET).unwrap_or(0),
            offset::FAULT_VECTOR => self.fault_vector,
            o if (offset::STATS..offset::STATS_END).contains(&o) => {
                let i = ((o - offset::STATS) / COUNTER_SIZE) as usize;
                let v = self.stats[i].load(Ordering::Relaxed);
                if o % COUNTER_SIZE == 0 {
                    st.latch = Some((o, (v >> 32) as u32));
                    v as u32
                } else {
                    match st.latch.take() {
                        Some((lo, hi)) if lo + COUNTER_HI == o => hi,
                        _ => (v >> 32) as u32,
                    }
                }
            }
            _ => 0,
        }
    }

    /// A register write. Returns false for a write that was ignored and counts as a bad
    /// register access (a latched register written while enabled).
    pub fn write(&self, reg: u32, value: u32, doorbell: &SharedPage) -> bool {
        if !self.present {
            return true;
        }
        let mut st = self.lock();
        let enabled = st.config.is_some();
        match reg {
            offset::CONTROL => {
                let new = value & control::RW;
                if !enabled && new & control::ENABLE != 0 {
                    match st.regs.validate() {
                        Ok(cfg) => {
                            st.config = Some(cfg);
                            st.config_error = false;
                            st.generation += 1;
                            st.put = 0;
                            doorbell.store_u32(DB_FAULT_PUT, 0);
                            doorbell.store_u32(DB_FAULT_GET, 0);
                            self.flush_tlb();
                            self.enabled.store(true, Ordering::Release);
                            st.regs.control = new;
                        }
                        Err(e) => {
                            tracing::debug!("MMU enable refused: {e} (MMU_STATUS.CONFIG_ERROR)");
                            st.config_error = true;
                            st.regs.control = new & !control::ENABLE;
                        }
                    }
                } else if enabled && new & control::ENABLE == 0 {
                    self.disable(&mut st);
                    st.regs.control = new;
                } else {
                    st.regs.control = new;
                }
                true
            }
            offset::STATUS => {
                if value & status::FAULT_OVERFLOW != 0 {
                    st.overflow = false;
                }
                true
            }
            offset::FAULT_GET => {
                doorbell.store_u32(DB_FAULT_GET, value);
                true
            }
            r if st.regs.read_latched(r).is_some() => st.regs.write_latched(r, value, enabled),
            _ => true,
        }
    }

    /// `ENABLE` 1→0: the TLB is flushed and every waiting engine is cancelled.
    fn disable(&self, st: &mut State) {
        st.config = None;
        st.generation += 1;
        self.enabled.store(false, Ordering::Release);
        self.flush_tlb();
        let mut n = 0;
        for w in st.waiters.iter_mut().filter(|w| w.resume.is_none()) {
            w.resume = Some(Resume::Cancel);
            n += 1;
        }
        self.count(Counter::Cancels, n);
        self.cv.notify_all();
    }

    fn flush_tlb(&self) {
        lock(&self.tlb).invalidate(Scope::ALL);
    }

    /// FLR, SOFT_RESET, DEVICE_RESET (after the engines stopped): registers to their reset
    /// values, TLB flushed; statistics kept.
    pub fn reset(&self) {
        let mut st = self.lock();
        let generation = st.generation + 1;
        let next_waiter = st.next_waiter;
        for w in st.waiters.iter_mut().filter(|w| w.resume.is_none()) {
            w.resume = Some(Resume::Aborted);
        }
        let waiters = std::mem::take(&mut st.waiters);
        *st = State {
            generation,
            next_waiter,
            waiters,
            ..State::default()
        };
        self.enabled.store(false, Ordering::Release);
        self.flush_tlb();
        self.cv.notify_all();
    }

    /// Wakes engines waiting on a fault so they look at their abort flag (resets, shutdown).
    pub fn wake_waiters(&self) {
        let _st = self.lock();
        self.cv.notify_all();
    }

    /// An access of context `ctx` starts: [`Mmu::invalidate`] waits for it.
    pub fn begin_access(&self, ctx: u16) -> Ticket<'_> {
        self.inflight.begin(ctx)
    }

    /// The invalidation waits (tests).
    pub fn invalidations_waiting(&self) -> usize {
        self.inflight.waiting()
    }

    /// Translates `[va, va + len)` of context `ctx` for `access`, page by page (each page with
    /// its own leaf), into physical pieces (contiguous pages merged). Page tables are read with
    /// `mem` (8 bytes at an 8-byte aligned address, `None` if unreadable).
    pub fn translate(
        &self,
        ctx: u16,
        va: u64,
        len: u64,
        access: Access,
        mem: &mut dyn FnMut(Addr) -> Option<u64>,
    ) -> Result<Vec<(Addr, u64)>, XlateError> {
        let Some(cfg) = self.lock().config else {
            return Err(XlateError::Disabled);
        };
        // An access past the end of the 64-bit space starts above 2^48: VA_RANGE at its start.
        let end = va.checked_add(len).ok_or(XlateError::Fault {
            va,
            fault: WalkFault {
                reason: Reason::VaRange,
                level: walk::CONTEXT_LEVEL,
            },
        })?;
        let mut out: Vec<(Addr, u64)> = Vec::with_capacity(1);
        let push = |out: &mut Vec<(Addr, u64)>, leaf: &Leaf, cur: u64| {
            let n = (leaf.va + leaf.size).min(end) - cur;
            let pa = leaf.pa_of(cur);
            match out.last_mut() {
                Some((last, l))
                    if last.aperture == pa.aperture
                        && last.addr.checked_add(*l) == Some(pa.addr) =>
                {
                    *l += n;
                }
                _ => out.push((pa, n)),
            }
            cur + n
        };
        let ignore = self.inject.ignore_atomic_perm;
        let mut cur = va;
        while cur < end {
            // The pages the TLB holds, under one lock (a chunk is up to 256 pages).
            let (context, generation) = {
                let t = lock(&self.tlb);
                let mut hits = 0;
                while cur < end {
                    match t.lookup(ctx, cur).filter(|l| l.grants(access, ignore)) {
                        Some(leaf) => {
                            cur = push(&mut out, &leaf, cur);
                            hits += 1;
                        }
                        None => break,
                    }
                }
                self.count(Counter::TlbHits, hits);
                (t.context(ctx), t.generation())
            };
            if cur >= end {
                break;
            }
            let leaf = self
                .walk(&cfg, ctx, cur, access, context, generation, mem)
                .map_err(|fault| XlateError::Fault { va: cur, fault })?;
            cur = push(&mut out, &leaf, cur);
        }
        Ok(out)
    }

    /// A TLB miss: walks the tables for one page (a cached leaf without the permission is
    /// walked again: the driver may have upgraded the entry, which needs no invalidation) and
    /// caches the leaf unless an invalidation happened since `generation`.
    #[allow(clippy::too_many_arguments)]
    fn walk(
        &self,
        cfg: &Config,
        ctx: u16,
        va: u64,
        access: Access,
        context: Option<walk::Context>,
        generation: u64,
        mem: &mut dyn FnMut(Addr) -> Option<u64>,
    ) -> Result<Leaf, WalkFault> {
        self.count(Counter::TlbMisses, 1);
        let context = match context {
            Some(c) => c,
            None => {
                let c = walk::read_context(&cfg.contexts, ctx, mem)?;
                lock(&self.tlb).insert_context(ctx, c, generation);
                c
            }
        };
        let leaf = walk::walk(context.root, va, mem)?;
        if !leaf.grants(access, self.inject.ignore_atomic_perm) {
            return Err(WalkFault {
                reason: Reason::Protection,
                level: leaf.level,
            });
        }
        lock(&self.tlb).insert(ctx, leaf, generation);
        Ok(leaf)
    }

    /// `TLB_INVALIDATE`: drops what `scope` covers, then waits until every access of the
    /// scope's context(s) that began before has finished (hw-spec §9.3). Returns false if
    /// `abort` ended the wait (a reset).
    pub fn invalidate(&self, scope: Scope, abort: &AtomicBool) -> bool {
        self.count(Counter::Invalidations, 1);
        if self.inject.stale_tlb {
            return true;
        }
        lock(&self.tlb).invalidate(scope);
        self.inflight.wait_older(scope.ctx, abort)
    }

    /// `FAULT_REPLAY`: engines waiting on `ctx` (every context: `None`) replay or are
    /// cancelled. Returns how many.
    pub fn replay(&self, ctx: Option<u16>, cancel: bool) -> usize {
        let mut st = self.lock();
        let resume = if cancel {
            Resume::Cancel
        } else {
            Resume::Replay
        };
        let mut n = 0;
        for w in st
            .waiters
            .iter_mut()
            .filter(|w| w.resume.is_none() && ctx.is_none_or(|c| c == w.ctx))
        {
            w.resume = Some(resume);
            n += 1;
        }
        let c = if cancel {
            Counter::Cancels
        } else {
            Counter::Replays
        };
        self.count(c, n as u64);
        if n > 0 {
            self.cv.notify_all();
        }
        n
    }

    /// A fault of `engine`'s access at `va` of `ctx`: writes the record (or drops it, ring
    /// full or unreachable: `FAULT_OVERFLOW`), publishes `FAULT_PUT`, signals the fault vector
    /// and waits for the outcome (hw-spec §9.4).
    pub fn raise(&self, sink: &dyn FaultSink, f: &PendingFault, abort: &AtomicBool) -> Resume {
        let PendingFault {
            engine,
            ctx,
            va,
            access,
            fault,
        } = *f;
        let writer = lock(&self.writer);
        let (cfg, generation, put) = {
            let st = self.lock();
            let Some(cfg) = st.config else {
                return Resume::Cancel;
            };
            (cfg, st.generation, st.put)
        };
        let get = sink.doorbell().load_u32(DB_FAULT_GET).unwrap_or(0);
        let rec = Record {
            addr: va,
            context: ctx,
            engine: engine as u8,
            access,
            reason: fault.reason,
            level: fault.level,
            timestamp: sink.clock_ns(),
            seq: self.counter(Counter::Faults) as u32,
        };
        let written = if cfg.ring.full(put, get) {
            false
        } else {
            match sink.write_record(cfg.ring.slot_addr(put), &rec.to_bytes()) {
                Ok(()) => true,
                Err(true) => return Resume::Aborted,
                Err(false) => false,
            }
        };
        let id = {
            let mut st = self.lock();
            if abort.load(Ordering::Acquire) || sink.shutting_down() {
                return Resume::Aborted;
            }
            if st.generation != generation {
                // Disabled (or re-enabled with a new ring) while the record was written.
                return Resume::Cancel;
            }
            if written {
                st.put = put.wrapping_add(1);
                sink.doorbell().store_u32(DB_FAULT_PUT, st.put);
                self.count(Counter::Faults, 1);
            } else {
                st.overflow = true;
                self.count(Counter::FaultsDropped, 1);
            }
            let id = st.next_waiter;
            st.next_waiter += 1;
            st.waiters.push(Waiter {
                id,
                ctx,
                resume: None,
            });
            let irq = st.regs.control & control::FAULT_IRQ != 0 && !self.inject.no_fault_irq;
            drop(st);
            sink.trace_fault(engine, &rec, written);
            if irq {
                sink.signal(self.fault_vector as usize);
            }
            id
        };
        drop(writer);
        let mut st = self.lock();
        let resume = loop {
            let Some(i) = st.waiters.iter().position(|w| w.id == id) else {
                break Resume::Aborted;
            };
            if abort.load(Ordering::Acquire) || sink.shutting_down() {
                st.waiters.swap_remove(i);
                break Resume::Aborted;
            }
            if let Some(r) = st.waiters[i].resume {
                st.waiters.swap_remove(i);
                break r;
            }
            st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
        };
        drop(st);
        resume
    }

    /// The state for `vugpu stats`.
    pub fn report(&self, doorbell: &SharedPage) -> MmuReport {
        let st = self.lock();
        MmuReport {
            present: self.present,
            enabled: st.config.is_some(),
            waiting: st.waiting(),
            fault_put: st.put,
            fault_get: doorbell.load_u32(DB_FAULT_GET).unwrap_or(0),
            faults: self.counter(Counter::Faults),
            faults_dropped: self.counter(Counter::FaultsDropped),
            replays: self.counter(Counter::Replays),
            cancels: self.counter(Counter::Cancels),
            tlb_hits: self.counter(Counter::TlbHits),
            tlb_misses: self.counter(Counter::TlbMisses),
            invalidations: self.counter(Counter::Invalidations),
        }
    }
}

#[cfg(test)]
mod tests;
