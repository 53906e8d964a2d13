//! DMA copy engines (hw-spec §6-§8).
//!
//! Each engine is a thread ([`worker`]) plus its registers ([`Engine`], behind a mutex shared
//! with the event loop). The event loop reads and writes the registers through [`EngineSet`];
//! the thread polls the engine's doorbell word in the shared doorbell page, fetches descriptors
//! ([`desc`]) from its ring, and executes them against VRAM and the DMA space ([`env`]). Errors
//! stop the engine and are queued for the device to report (config space, vector 0); the
//! event loop also performs DMA messages for fd-less windows on the engines' behalf.
//!
//! Invariants:
//! - An engine executes one descriptor at a time, in ring order; `HEAD` advances only after the
//!   descriptor's writes are done.
//! - An engine issues memory requests only while Bus Master Enable (Command bit 2, mirrored in
//!   the [`EngineEnv`]) is set: it waits before a descriptor and before each chunk while it is
//!   clear, and [`EngineSet::wake_all`] lets it continue (hw-spec §6.7).
//! - A reset (engine, SOFT_RESET, FLR, DEVICE_RESET) returns only once the engine's thread has
//!   stopped touching memory: it raises the abort flag, bumps the epoch (so a result computed
//!   before the reset is dropped) and waits for the thread to leave its descriptor (at most one
//!   chunk of [`env::CHUNK`] bytes, or 10 ms for a DMA message wait).
//! - Dropping the [`EngineSet`] stops and joins every thread.

pub mod desc;
pub mod env;
pub mod inject;
pub mod inject_cmd;
pub mod peer_window;
pub mod regs;
pub mod stats;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use crate::regs::spec::{COUNTER_HI, COUNTER_SIZE};
use desc::Aperture;
use env::{EngineEnv, FaultReport};
use regs::{control, info, offset, ErrorCode, State, DOORBELL_STRIDE, MAX_RING_SIZE};
use stats::{EngineStats, StatsSnapshot, STATS_BASE, STATS_END};

/// A latched ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ring {
    base: u64,
    size: u32,
    aperture: Aperture,
}

/// An engine error (the `ERROR_*` registers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineFault {
    /// `ERROR_CODE`.
    pub code: ErrorCode,
    /// `ERROR_ADDR`.
    pub addr: u64,
    /// `ERROR_INFO`.
    pub info: u32,
    /// No Snoop / Relaxed Ordering used by the faulting transaction.
    pub attrs: (bool, bool),
}

/// Registers and execution state of one engine.
#[derive(Debug, Default)]
struct EngineState {
    base_lo: u32,
    base_hi: u32,
    size: u32,
    aperture: u32,
    control: u32,
    /// Latched while ENABLE is 1 and the ring registers were valid at enable.
    ring: Option<Ring>,
    head: u32,
    error: Option<EngineFault>,
    last_fence: u64,
    /// The thread is between taking a descriptor and committing it.
    executing: bool,
    /// Threads waiting for `executing` to become false.
    waiters: u32,
    /// Bumped by every reset.
    epoch: u64,
    /// Statistics `_LO` snapshot: (counter offset, high half).
    latch: Option<(u32, u32)>,
}

impl EngineState {
    fn runnable_ring(&self) -> Option<Ring> {
        if self.error.is_some() || self.control & control::HALT != 0 {
            return None;
        }
        self.ring
    }

    fn irq_enabled(&self) -> bool {
        self.control & control::IRQ_ENABLE != 0
    }

    fn set_error(&mut self, engine: usize, f: EngineFault) -> FaultReport {
        self.error = Some(f);
        worker::report_of(engine, &f)
    }

    fn state(&self, tail: u32) -> State {
        if self.error.is_some() {
            State::Error
        } else if self.executing {
            State::Running
        } else if self.ring.is_none() {
            State::Disabled
        } else if self.control & control::HALT != 0 {
            State::Halted
        } else if tail != self.head {
            State::Running
        } else {
            State::Idle
        }
    }

    fn validate_ring(&self) -> Result<Ring, EngineFault> {
        let base = (u64::from(self.base_hi) << 32) | u64::from(self.base_lo);
        let aperture = Aperture::from_raw(self.aperture);
        let size_ok = self.size.is_power_of_two() && self.size <= MAX_RING_SIZE;
        match aperture {
            Some(aperture) if size_ok && base.is_multiple_of(regs::RING_ALIGN) => Ok(Ring {
                base,
                size: self.size,
                aperture,
            }),
            _ => Err(EngineFault {
                code: ErrorCode::RingConfig,
                addr: base,
                info: self.aperture & info::APERTURE_MASK,
                attrs: (false, false),
            }),
        }
    }
}

/// One engine: registers shared with its thread.
#[derive(Debug)]
pub(crate) struct Engine {
    index: usize,
    state: Mutex<EngineState>,
    cv: Condvar,
    /// Set by resets and shutdown: abandon the descriptor at the next chunk boundary.
    abort: AtomicBool,
    /// Bumped by register writes, so a spinning thread notices them.
    kicks: AtomicU64,
    stats: EngineStats,
}

impl Engine {
    fn new(index: usize) -> Engine {
        Engine {
            index,
            state: Mutex::new(EngineState::default()),
            cv: Condvar::new(),
            abort: AtomicBool::new(false),
            kicks: AtomicU64::new(0),
            stats: EngineStats::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, EngineState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, g: MutexGuard<'a, EngineState>) -> MutexGuard<'a, EngineState> {
        self.cv.wait(g).unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_timeout<'a>(
        &self,
        g: MutexGuard<'a, EngineState>,
        d: Duration,
    ) -> MutexGuard<'a, EngineState> {
        match self.cv.wait_timeout(g, d) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        }
    }

    fn notify_if_waited(&self, st: &EngineState) {
        if st.waiters > 0 {
            self.cv.notify_all();
        }
    }

    /// Wakes the thread (register change).
    fn poke(&self) {
        self.kicks.fetch_add(1, Ordering::AcqRel);
        self.cv.notify_all();
    }

    /// Wakes the thread after a change made outside its lock (the shutdown and abort flags,
    /// Bus Master Enable). The thread checks such flags while holding its lock and then waits
    /// on the condvar (which releases it); a notification sent between the two would be lost
    /// and the thread would wait forever. Taking the lock first means the thread is either
    /// before its check (and sees the change) or already waiting.
    fn wake(&self) {
        drop(self.lock());
        self.poke();
    }

    /// Raises the abort flag for shutdown and wakes the thread (see [`Engine::wake`]).
    fn wake_for_shutdown(&self) {
        self.abort.store(true, Ordering::Release);
        self.wake();
    }

    fn doorbell_offset(&self) -> u64 {
        DOORBELL_STRIDE * self.index as u64
    }

    /// Stops the thread's current descriptor and restores the power-on registers.
    fn reset(&self, env: &EngineEnv, clear_stats: bool) {
        let mut st = self.lock();
        self.abort.store(true, Ordering::Release);
        st.epoch = st.epoch.wrapping_add(1);
        st.control = 0;
        st.ring = None;
        self.poke();
        // A descriptor waiting on a translation fault waits on the MMU (hw-spec §9.4).
        env.mmu().wake_waiters();
        while st.executing {
            st.waiters += 1;
            st = self.wait(st);
            st.waiters -= 1;
        }
        let epoch = st.epoch;
        *st = EngineState {
            epoch,
            ..EngineState::default()
        };
        env.doorbell().store_u32(self.doorbell_offset(), 0);
        env.doorbell()
            .store_u32(self.doorbell_offset() + regs::SLEEP_HINT, 0);
        if clear_stats {
            self.stats.clear();
        }
        // An injected hang ends with the reset (hw-spec §10).
        env.inject().end_hang(self.index);
        self.abort.store(false, Ordering::Release);
    }
}

/// The error registers as reported by the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ErrorReport {
    /// `ERROR_CODE`.
    pub code: u32,
    /// Its name.
    pub name: &'static str,
    /// `ERROR_ADDR`.
    pub addr: u64,
    /// `ERROR_INFO`.
    pub info: u32,
}

/// One engine as reported by the control socket (hw-spec §8.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineReport {
    /// Engine index.
    pub index: usize,
    /// STATUS state name.
    pub state: &'static str,
    /// `RING_HEAD`.
    pub head: u32,
    /// Doorbell `TAIL`.
    pub tail: u32,
    /// Counters.
    #[serde(flatten)]
    pub stats: StatsSnapshot,
    /// Error registers, if in ERROR.
    pub error: Option<ErrorReport>,
}

/// Read access to the engines for reporting (cheap to clone; usable from any thread).
#[derive(Debug, Clone)]
pub struct EngineMonitor {
    env: Arc<EngineEnv>,
    engines: Vec<Arc<Engine>>,
}

impl EngineMonitor {
    /// Every engine's state and counters.
    pub fn report(&self) -> Vec<EngineReport> {
        self.engines
            .iter()
            .map(|e| {
                let tail = self
                    .env
                    .doorbell()
                    .load_u32(e.doorbell_offset())
                    .unwrap_or(0);
                let st = e.lock();
                EngineReport {
                    index: e.index,
                    state: st.state(tail).name(),
                    head: st.head,
                    tail,
                    stats: e.stats.snapshot(),
                    error: st.error.map(|f| ErrorReport {
                        code: f.code as u32,
                        name: f.code.name(),
                        addr: f.addr,
                        info: f.info,
                    }),
                }
            })
            .collect()
    }

    /// MSI-X messages sent since reset.
    pub fn irqs_sent(&self) -> u64 {
        self.env.msix().stats().sent
    }

    /// Bytes of engine writes `--inject vram-write-drop` lost.
    pub fn vram_bytes_dropped(&self) -> u64 {
        self.env.vram_bytes_dropped()
    }

    /// Trace lines dropped at the trace's byte limit.
    pub fn trace_lines_dropped(&self) -> u64 {
        self.env.trace_lines_dropped()
    }

    /// Subscribes to the live trace (hw-spec §8.4).
    pub fn subscribe_trace(&self, lines: usize) -> env::TraceFeed {
        self.env.subscribe_trace(lines)
    }

    /// Live trace subscribers.
    pub fn trace_subscribers(&self) -> usize {
        self.env.trace_subscribers()
    }

    /// Lines live subscribers' full queues dropped.
    pub fn trace_stream_dropped(&self) -> u64 {
        self.env.trace_stream_dropped()
    }

    /// The injected faults (hw-spec §10).
    pub fn inject_report(&self) -> inject::InjectReport {
        let mut r = self.env.inject().report(self.engines.len());
        let msix = self.env.msix();
        r.msix_drop_pending = msix
            .drops_pending()
            .into_iter()
            .map(|(v, n)| [v as u64, u64::from(n)])
            .collect();
        r.msix_dropped = msix.stats().dropped;
        r
    }

    /// The client's DMA windows: (all, with an fd, bytes of those with an fd).
    pub fn dma_held(&self) -> (usize, usize, u64) {
        let d = self.env.dma();
        (d.len(), d.fd_windows(), d.fd_bytes())
    }

    /// Bus Master Enable (Command bit 2) as the engines see it.
    pub fn bus_master(&self) -> bool {
        self.env.bus_master()
    }

    /// Number of MSI-X vectors.
    pub fn vectors(&self) -> usize {
        self.env.msix().count()
    }

    /// The GPU's name.
    pub fn name(&self) -> &str {
        self.env.name()
    }

    /// The peer windows' registers and byte counters (hw-spec §6.10, §8.2).
    pub fn peer_windows(&self) -> Vec<peer_window::PeerWindowReport> {
        self.env.peer_windows().report()
    }

    /// The device MMU's state and counters (hw-spec §9.6).
    pub fn mmu(&self) -> crate::mmu::MmuReport {
        self.env.mmu().report(self.env.doorbell())
    }

    /// Peer-to-peer traffic between this GPU and every member of its fabric (itself included:
    /// DMA to its own BAR's bus address), hw-spec §8.2.
    pub fn p2p(&self) -> Vec<P2pReport> {
        let fabric = self.env.fabric();
        let me = self.env.peer_id();
        fabric
            .traffic_from(me)
            .into_iter()
            .zip(fabric.traffic_to(me))
            .map(|(out, inb)| P2pReport {
                peer: out.peer,
                read: out.read,
                written: out.written,
                peer_read: inb.read,
                peer_written: inb.written,
            })
            .collect()
    }
}

/// Peer-to-peer bytes between this GPU and one member of its fabric (hw-spec §8.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct P2pReport {
    /// The member's name.
    pub peer: String,
    /// Bytes this GPU's engines read from the member's VRAM.
    pub read: u64,
    /// Bytes this GPU's engines wrote into the member's VRAM.
    pub written: u64,
    /// Bytes the member's engines read from this GPU's VRAM.
    pub peer_read: u64,
    /// Bytes the member's engines wrote into this GPU's VRAM.
    pub peer_written: u64,
}

/// The engines of a device and their threads.
#[derive(Debug)]
pub struct EngineSet {
    env: Arc<EngineEnv>,
    engines: Vec<Arc<Engine>>,
    threads: Vec<JoinHandle<()>>,
    bad_writes: u64,
}

impl EngineSet {
    /// Creates `count` engines and starts their threads.
    pub fn start(env: Arc<EngineEnv>, count: usize) -> std::io::Result<EngineSet> {
        let mut set = EngineSet {
            env,
            engines: Vec::with_capacity(count),
            threads: Vec::with_capacity(count),
            bad_writes: 0,
        };
        for i in 0..count {
            let engine = Arc::new(Engine::new(i));
            let (e, env) = (engine.clone(), set.env.clone());
            let t = std::thread::Builder::new()
                .name(format!("vugpu-engine-{i}"))
                .spawn(move || {
                    let _gpu = crate::log::gpu_span(env.name()).entered();
                    worker::run(&e, &env);
                })?;
            set.engines.push(engine);
            set.threads.push(t);
        }
        Ok(set)
    }

    /// Number of engines.
    pub fn count(&self) -> usize {
        self.engines.len()
    }

    /// Register writes that were ignored (ring registers written while enabled).
    pub fn bad_writes(&self) -> u64 {
        self.bad_writes
    }

    /// A reporting handle.
    pub fn monitor(&self) -> EngineMonitor {
        EngineMonitor {
            env: self.env.clone(),
            engines: self.engines.clone(),
        }
    }

    /// Reads the register at `off` of engine `index`; `None` if there is no such engine.
    pub fn read(&self, index: usize, off: u32) -> Option<u32> {
        let e = self.engines.get(index)?;
        let tail = || {
            self.env
                .doorbell()
                .load_u32(e.doorbell_offset())
                .unwrap_or(0)
        };
        let mut st = e.lock();
        let err = st.error;
        Some(match off {
            offset::RING_BASE_LO => st.base_lo,
            offset::RING_BASE_HI => st.base_hi,
            offset::RING_SIZE => st.size,
            offset::RING_APERTURE => st.aperture,
            offset::RING_HEAD => st.head,
            offset::RING_TAIL => tail(),
            offset::CONTROL => st.control,
            offset::STATUS => st.state(tail()) as u32,
            offset::ERROR_CODE => err.map_or(0, |f| f.code as u32),
            offset::ERROR_ADDR_LO => err.map_or(0, |f| f.addr as u32),
            offset::ERROR_ADDR_HI => err.map_or(0, |f| (f.addr >> 32) as u32),
            offset::ERROR_INFO => err.map_or(0, |f| f.info),
            offset::LAST_FENCE_LO => st.last_fence as u32,
            offset::LAST_FENCE_HI => (st.last_fence >> 32) as u32,
            o if (STATS_BASE..STATS_END).contains(&o) => {
                let v = e
                    .stats
                    .get(((o - STATS_BASE) / COUNTER_SIZE) as usize)
                    .unwrap_or(0);
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
        })
    }

    /// Writes the register at `off` of engine `index` (no-op without such an engine). A
    /// RING_CONFIG error is queued for the device like any other engine error.
    pub fn write(&mut self, index: usize, off: u32, value: u32) {
        let Some(e) = self.engines.get(index).cloned() else {
            return;
        };
        if off == offset::CONTROL && value & control::RESET != 0 {
            e.reset(&self.env, false);
            return;
        }
        {
            let mut st = e.lock();
            let enabled = st.control & control::ENABLE != 0;
            match off {
                offset::RING_BASE_LO
                | offset::RING_BASE_HI
                | offset::RING_SIZE
                | offset::RING_APERTURE
                    if enabled =>
                {
                    self.bad_writes += 1;
                }
                offset::RING_BASE_LO => st.base_lo = value,
                offset::RING_BASE_HI => st.base_hi = value,
                offset::RING_SIZE => st.size = value & 0x1_ffff,
                offset::RING_APERTURE => st.aperture = value & info::APERTURE_MASK,
                offset::RING_TAIL => {
                    self.env.doorbell().store_u32(e.doorbell_offset(), value);
                }
                offset::CONTROL => {
                    let new = value & control::RW;
                    // An engine in ERROR keeps its first error: ENABLE 0->1 neither validates
                    // nor reports (hw-spec §6.3); only a reset leaves ERROR.
                    if !enabled && new & control::ENABLE != 0 && st.error.is_none() {
                        match st.validate_ring() {
                            Ok(ring) => st.ring = Some(ring),
                            Err(f) => {
                                e.stats.add(stats::Counter::Errors, 1);
                                self.env.report(st.set_error(index, f));
                            }
                        }
                    }
                    if new & control::ENABLE == 0 {
                        st.ring = None;
                    }
                    st.control = new;
                }
                _ => return,
            }
        }
        e.poke();
    }

    /// A trapped write to the doorbell page at `off`: stores it and wakes the owning engine.
    pub fn doorbell_write(&self, off: u64, value: u32) -> bool {
        if !self.env.doorbell().store_u32(off, value) {
            return false;
        }
        if off.is_multiple_of(DOORBELL_STRIDE) {
            if let Some(e) = self.engines.get((off / DOORBELL_STRIDE) as usize) {
                e.poke();
            }
        }
        true
    }

    /// Wakes every engine thread: Bus Master Enable was set, engines waiting for it continue.
    pub fn wake_all(&self) {
        for e in &self.engines {
            e.wake();
        }
    }

    /// Resets every engine (SOFT_RESET, FLR, DEVICE_RESET): counters cleared, doorbell page
    /// zeroed.
    pub fn reset_all(&self) {
        for e in &self.engines {
            e.reset(&self.env, true);
        }
        self.env.doorbell().clear();
    }
}

impl Drop for EngineSet {
    fn drop(&mut self) {
        self.env.set_shutdown();
        for e in &self.engines {
            e.wake_for_shutdown();
        }
        self.env.mmu().wake_waiters();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `gpu_regions` fuzz target (a libFuzzer timeout: `EngineSet::drop` joined an
    /// engine thread forever). The thread's side is played here: it holds its lock, has seen no
    /// shutdown yet, and is about to wait. The shutdown wakeup sent meanwhile must still reach
    /// it; it used to be sent without the lock and was lost.
    #[test]
    fn shutdown_wakeup_reaches_a_thread_between_its_check_and_its_wait() {
        let engine = Arc::new(Engine::new(0));
        let st = engine.lock();
        let other = engine.clone();
        let waker = std::thread::spawn(move || other.wake_for_shutdown());
        // Let the waker run while "the thread" is still between its check and its wait.
        std::thread::sleep(Duration::from_millis(50));
        let (st, timeout) = engine.cv.wait_timeout(st, Duration::from_secs(10)).unwrap();
        drop(st);
        assert!(!timeout.timed_out(), "the shutdown wakeup was lost");
        assert!(engine.abort.load(Ordering::Acquire));
        waker.join().unwrap();
    }
}
