//! The engine thread: poll the doorbell, fetch, execute, complete (hw-spec §6.2-§6.7).
//!
//! The thread owns no device state: it takes a job under the engine's lock (ring latched,
//! not halted, no error, `TAIL != HEAD`), runs it without the lock, and commits the result
//! under the lock again — unless a reset happened meanwhile (the epoch changed), in which case
//! the result is dropped. Between chunks it checks the abort flag a reset sets, so a reset waits
//! at most one chunk.
//!
//! Bus Master Enable (hw-spec §6.7): before it takes a descriptor, before the fetch and before
//! every chunk of data the thread checks the mirrored Command bit 2; while it is clear the
//! thread waits on the engine's condition variable (a reset still abandons the descriptor) and
//! [`super::EngineSet::wake_all`] wakes it when the bit is set.
//!
//! Translation faults (hw-spec §9.4): a chunk whose `VIRT` translation faults moved nothing;
//! the thread raises the fault ([`EngineEnv::raise`]: record, fault vector) and waits, still
//! executing the descriptor, until a `FAULT_REPLAY` replays it (the chunk is gated and
//! translated again) or cancels it (`TRANSLATION`), or a reset abandons it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::desc::{Addr, Aperture, DescError, Descriptor, Op, DESC_SIZE};
use super::env::{EngineEnv, FaultKind, FaultReport, MemFault, Reach, CHUNK};
use super::regs::{info, ErrorCode, DOORBELL_STRIDE, ENGINE_VECTOR_BASE, SLEEP_HINT};
use super::stats::{Counter, JobCounts};
use super::{Engine, EngineFault, Ring};
use crate::mmu::tlb::Scope;
use crate::mmu::Resume;

/// Spin iterations between two `sched_yield`s.
const SPIN_YIELD: u32 = 16;
/// A descriptor or a wait this long is logged (a stall worth a look, never an error).
const SLOW: Duration = Duration::from_millis(250);
/// Shortest sleep between polls after the spin window.
const MIN_SLEEP: Duration = Duration::from_micros(10);

/// A descriptor to run.
struct Job {
    ring: Ring,
    number: u32,
    epoch: u64,
}

/// The outcome of one descriptor.
enum Outcome {
    Done {
        counts: JobCounts,
        irq: bool,
        fence: Option<u64>,
    },
    Fault(EngineFault),
    Aborted,
}

/// The thread body.
pub(super) fn run(engine: &Engine, env: &EngineEnv) {
    let doorbell = DOORBELL_STRIDE * engine.index as u64;
    let timing = env.timing();
    loop {
        let Some(job) = next_job(engine, env, doorbell, timing) else {
            return;
        };
        let started = Instant::now();
        let outcome = execute(engine, env, &job);
        let took = started.elapsed();
        if took >= SLOW {
            tracing::info!(
                "engine {}: descriptor {} took {} ms",
                engine.index,
                job.number,
                took.as_millis()
            );
        }
        commit(engine, env, &job, outcome);
    }
}

/// Waits for a runnable job; `None` on shutdown.
fn next_job(
    engine: &Engine,
    env: &EngineEnv,
    doorbell: u64,
    timing: super::env::PollTiming,
) -> Option<Job> {
    let mut spun = false;
    let mut sleeping = false;
    let mut sleep = MIN_SLEEP;
    let hint = doorbell + SLEEP_HINT;
    let mut st = engine.lock();
    let mut epoch = st.epoch;
    loop {
        if env.is_shutdown() {
            return None;
        }
        if st.epoch != epoch {
            // A reset zeroed SLEEPING: start the spin/sleep cycle afresh, so that SLEEPING
            // is set again before the next sleep.
            epoch = st.epoch;
            spun = false;
            sleeping = false;
            sleep = MIN_SLEEP;
        }
        let removed = env.inject().removed();
        let Some(ring) = st.runnable_ring().filter(|_| !removed) else {
            // Disabled, halted, in error or surprise-removed (hw-spec §10): nothing to poll
            // until a register write.
            st = engine.wait(st);
            spun = false;
            continue;
        };
        let tail = env.doorbell().load_u32(doorbell).unwrap_or(st.head);
        if tail != st.head {
            let pending = tail.wrapping_sub(st.head);
            if pending > ring.size {
                let f = EngineFault {
                    code: ErrorCode::RingOverflow,
                    addr: u64::from(tail),
                    info: 0,
                    attrs: (false, false),
                };
                let report = st.set_error(engine.index, f);
                engine.stats.add(Counter::Errors, 1);
                env.report(report);
                continue;
            }
            if !env.bus_master() {
                // No memory request without Bus Master Enable: wait with the descriptors
                // pending (STATUS RUNNING) until it is set or a register changes.
                st = engine.wait(st);
                continue;
            }
            st.executing = true;
            if sleeping {
                env.doorbell().store_u32(hint, 0);
            }
            return Some(Job {
                ring,
                number: st.head,
                epoch: st.epoch,
            });
        }
        // Idle: spin (without the lock) for a while after work, then sleep between polls.
        if !spun && !timing.spin.is_zero() {
            spun = true;
            let head = st.head;
            let seen = engine.kicks.load(Ordering::Acquire);
            drop(st);
            // A spin window too long for the clock is capped at 1 s.
            let deadline = Instant::now()
                .checked_add(timing.spin)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            let mut n = 0u32;
            while Instant::now() < deadline
                && env.doorbell().load_u32(doorbell) == Some(head)
                && engine.kicks.load(Ordering::Acquire) == seen
                && !env.is_shutdown()
            {
                n = n.wrapping_add(1);
                if n.is_multiple_of(SPIN_YIELD) {
                    // Let other runnable threads of this CPU (the event loop, the client) run:
                    // on a small host a spinning engine must not delay the replies it waits
                    // for.
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            st = engine.lock();
            continue;
        }
        if !sleeping {
            // Tell the driver that a doorbell store alone may wait up to one poll interval
            // (hw-spec §6.4), then look once more: a tail stored before the driver could see
            // the hint is not missed (store hint / full fence / load tail here, store tail /
            // full fence / load hint in the driver).
            sleeping = true;
            env.doorbell().store_u32(hint, 1);
            std::sync::atomic::fence(Ordering::SeqCst);
            if env.doorbell().load_u32(doorbell) != Some(st.head) {
                continue;
            }
        }
        st = engine.wait_timeout(st, sleep);
        sleep = sleep.saturating_mul(2).min(timing.max_sleep.max(MIN_SLEEP));
    }
}

fn commit(engine: &Engine, env: &EngineEnv, job: &Job, outcome: Outcome) {
    let mut st = engine.lock();
    st.executing = false;
    let mut irq = false;
    if st.epoch == job.epoch {
        match outcome {
            Outcome::Done {
                counts,
                irq: want_irq,
                fence,
            } => {
                st.head = st.head.wrapping_add(1);
                if let Some(v) = fence {
                    st.last_fence = v;
                }
                engine.stats.record_job(&counts);
                irq = want_irq && st.irq_enabled();
            }
            Outcome::Fault(f) => {
                engine.stats.add(Counter::Errors, 1);
                // Queued before the lock is released, i.e. before STATUS can show ERROR.
                env.report(st.set_error(engine.index, f));
            }
            Outcome::Aborted => {}
        }
    }
    if irq {
        // Signalled before the lock is released (the lock order allows MSI-X under it): a
        // reset, which takes this lock, then either drops the completion (epoch above) or
        // finds its interrupt already sent, never one arriving after the reset returned.
        engine.stats.add(Counter::Irqs, 1);
        env.signal(ENGINE_VECTOR_BASE as usize + engine.index);
    }
    engine.notify_if_waited(&st);
    drop(st);
}

fn attrs(ns: bool, ro: bool) -> &'static str {
    match (ns, ro) {
        (false, false) => "-",
        (true, false) => "NS",
        (false, true) => "RO",
        (true, true) => "NS,RO",
    }
}

fn target(env: &EngineEnv, ap: Aperture, reach: Reach) -> std::borrow::Cow<'static, str> {
    match (ap, reach.msg, reach.peer) {
        (Aperture::Virt(c), _, _) => format!("virt:{c}").into(),
        (Aperture::Vram, _, _) => "vram".into(),
        (Aperture::Sys, _, None) if reach.window.is_some() => {
            format!("peer-win:{}", reach.window.unwrap_or(0)).into()
        }
        (Aperture::Sys, _, Some(peer)) => format!("peer:{}", env.fabric().name(peer)).into(),
        (Aperture::Sys, false, None) => "sys".into(),
        (Aperture::Sys, true, None) => "sys-msg".into(),
    }
}

/// Trace context of one descriptor.
struct Tx<'a> {
    env: &'a EngineEnv,
    engine: usize,
    slot: u32,
    op: &'static str,
    req: (bool, bool),
    used: (bool, bool),
}

impl Tx<'_> {
    /// The line of a failed transaction; none for one abandoned by a reset (hw-spec §8.3).
    /// `reach` covers the chunks before the failing one; a failed DMA message means the
    /// failing part is in an fd-less window.
    fn fault(&self, write: bool, at: Addr, size: u64, reach: Reach, f: &MemFault) {
        if f.kind == FaultKind::Aborted {
            return;
        }
        // A failed message may have gone through a peer window (hw-spec §6.10).
        let window = match f.kind {
            FaultKind::MsgDma => self.env.peer_windows().holding(f.at.addr, 1, f.write),
            _ => None,
        };
        let reach = Reach {
            msg: reach.msg || f.kind == FaultKind::MsgDma,
            peer: reach.peer,
            window: reach.window.or(window),
            phys: reach.phys,
        };
        if at.aperture.is_virt() {
            // hw-spec §9.6: the virtual line; then, if the translated access itself failed
            // (not its translation), the target's line at the failing physical byte.
            self.one_line(write, at, size, reach, false);
            if !f.at.aperture.is_virt() {
                self.one_line(write, f.at, size, reach, false);
            }
            return;
        }
        self.line(write, at, size, reach, false);
    }

    /// The line of a transaction; for a `VIRT` address, its `target=virt:<ctx>` line and then
    /// the target's own line at the physical address of its first byte (hw-spec §9.6).
    fn line(&self, write: bool, at: Addr, size: u64, reach: Reach, ok: bool) {
        self.one_line(write, at, size, reach, ok);
        if at.aperture.is_virt() {
            if let Some(p) = reach.phys {
                self.one_line(write, p, size, reach, ok);
            }
        }
    }

    fn one_line(&self, write: bool, at: Addr, size: u64, reach: Reach, ok: bool) {
        if !self.env.tracing() {
            return;
        }
        let (req, used) = if at.aperture == Aperture::Sys {
            (
                attrs(self.req.0, self.req.1),
                attrs(self.used.0, self.used.1),
            )
        } else {
            (attrs(self.req.0, self.req.1), "-")
        };
        self.env.trace_line(format_args!(
            "eng={} slot={} op={} dir={} target={} addr={:#x} size={} req={} used={} result={}",
            self.engine,
            self.slot,
            self.op,
            if write { "write" } else { "read" },
            target(self.env, at.aperture, reach),
            at.addr,
            size,
            req,
            used,
            if ok { "ok" } else { "fault" }
        ));
    }
}

fn mem_fault(f: MemFault, slot: u32, fetch: bool, attrs: (bool, bool)) -> Outcome {
    let Some(code) = f.kind.code() else {
        return Outcome::Aborted;
    };
    let mut i = f.at.aperture.raw() | (slot << info::SLOT_SHIFT);
    if f.write {
        i |= info::WRITE;
    }
    if fetch {
        i |= info::FETCH;
    }
    Outcome::Fault(EngineFault {
        code,
        addr: f.at.addr,
        info: i,
        attrs: if f.at.aperture == Aperture::Sys {
            attrs
        } else {
            (false, false)
        },
    })
}

fn execute(engine: &Engine, env: &EngineEnv, job: &Job) -> Outcome {
    let slot = job.number & (job.ring.size - 1);
    let desc_at = Addr {
        aperture: job.ring.aperture,
        addr: job
            .ring
            .base
            .wrapping_add(u64::from(slot) * DESC_SIZE as u64),
    };
    let abort = &engine.abort;
    if env.inject().hung(engine.index) {
        // `inject hang` (hw-spec §10): the descriptor was taken and makes no progress.
        return hang(engine, env);
    }
    if let Err(f) = gate(engine, env, desc_at) {
        return mem_fault(f, slot, true, (false, false));
    }
    let mut raw = [0u8; DESC_SIZE];
    let fetch = poison_check(env, desc_at, DESC_SIZE as u64, false)
        .and_then(|()| env.read_bytes(desc_at, &mut raw, abort));
    let mut tx = Tx {
        env,
        engine: engine.index,
        slot,
        op: "FETCH",
        req: (false, false),
        used: (false, false),
    };
    match fetch {
        Ok(reach) => tx.line(false, desc_at, DESC_SIZE as u64, reach, true),
        Err(f) => {
            tx.fault(false, desc_at, DESC_SIZE as u64, Reach::default(), &f);
            return mem_fault(f, slot, true, (false, false));
        }
    }
    let desc = match Descriptor::decode(&raw) {
        Ok(d) => d,
        Err(e) => {
            let code = match e {
                DescError::BadOpcode(_) => ErrorCode::BadOpcode,
                _ => ErrorCode::BadDescriptor,
            };
            return Outcome::Fault(EngineFault {
                code,
                addr: desc_at.addr,
                info: job.ring.aperture.raw() | (slot << info::SLOT_SHIFT),
                attrs: (false, false),
            });
        }
    };
    if desc.op.uses_virt() && !env.mmu().enabled() {
        // VIRT while the MMU is disabled or absent (hw-spec §9.5).
        return Outcome::Fault(EngineFault {
            code: ErrorCode::BadDescriptor,
            addr: desc_at.addr,
            info: job.ring.aperture.raw() | (slot << info::SLOT_SHIFT),
            attrs: (false, false),
        });
    }
    let ctl = env.device_control();
    // A VIRT address may translate to SYS: it counts as one for the attributes (§7.1).
    let maybe_sys = |a: Addr| a.aperture != Aperture::Vram;
    let sys = match desc.op {
        Op::Nop | Op::TlbInvalidate { .. } | Op::FaultReplay { .. } => false,
        Op::Copy { src, dst, .. }
        | Op::Atomic {
            dst, result: src, ..
        } => maybe_sys(src) || maybe_sys(dst),
        Op::Fill { dst, .. } | Op::Fence { dst, .. } | Op::Timestamp { dst } => maybe_sys(dst),
    };
    let ns_used = desc.no_snoop && ctl.no_snoop() && sys;
    let ro_used = desc.relaxed_ordering && ctl.relaxed_ordering() && sys;
    tx.op = desc.op.name();
    tx.req = (desc.no_snoop, desc.relaxed_ordering);
    tx.used = (ns_used, ro_used);
    let mut counts = JobCounts {
        bytes: None,
        ns: (desc.no_snoop, ns_used),
        ro: (desc.relaxed_ordering, ro_used),
        sys_bytes: 0,
    };
    // Bytes of SYS transactions, by the physical aperture a side reached (§8.1, §9.5).
    let sys_len = |a: Addr, reach: Reach, n: u64| {
        if phys(a, reach) == Aperture::Sys {
            n
        } else {
            0
        }
    };
    if let Some((at, len, write)) = sys_side(&desc.op) {
        if env.inject().take_dma_error(engine.index) {
            // `inject dma-error` (hw-spec §10): the descriptor's first SYS transaction comes back
            // as an Unsupported Request; nothing moved.
            let f = MemFault {
                kind: FaultKind::SysUnmapped,
                at,
                write,
            };
            tx.fault(write, at, len, Reach::default(), &f);
            return mem_fault(f, slot, false, (ns_used, ro_used));
        }
    }
    let eng = (engine, env, &tx);
    let mut fence = None;
    let result: Result<(), MemFault> = match desc.op {
        Op::Nop => Ok(()),
        Op::Copy { src, dst, len } => copy(engine, env, &tx, src, dst, len).map(|(r, w)| {
            counts.bytes = Some((direction(phys(src, r), phys(dst, w)), len));
            counts.sys_bytes = sys_len(src, r, len) + sys_len(dst, w, len);
        }),
        Op::Fill { dst, len, pattern } => fill(engine, env, &tx, dst, len, pattern).map(|w| {
            counts.bytes = Some((Counter::Fill, len));
            counts.sys_bytes = sys_len(dst, w, len);
        }),
        Op::Fence { dst, value } => {
            let r = replaying(eng, dst, || env.store_u64(dst, value, abort));
            match &r {
                Ok(reach) => tx.line(true, dst, 8, *reach, true),
                Err(f) => tx.fault(true, dst, 8, Reach::default(), f),
            }
            fence = Some(value);
            r.map(|w| counts.sys_bytes = sys_len(dst, w, 8))
        }
        Op::Timestamp { dst } => {
            let r = replaying(eng, dst, || env.store_u64(dst, env.clock_ns(), abort));
            match &r {
                Ok(reach) => tx.line(true, dst, 8, *reach, true),
                Err(f) => tx.fault(true, dst, 8, Reach::default(), f),
            }
            r.map(|w| counts.sys_bytes = sys_len(dst, w, 8))
        }
        Op::Atomic { dst, result, value } => {
            let r = replaying(eng, dst, || {
                poison_check(env, dst, 8, true)?;
                env.atomic_add(dst, value, abort)
            });
            match r {
                Ok((old, reach)) => {
                    tx.line(true, dst, 8, reach, true);
                    let w = replaying(eng, result, || env.store_u64(result, old, abort));
                    match &w {
                        Ok(wr) => tx.line(true, result, 8, *wr, true),
                        Err(f) => tx.fault(true, result, 8, Reach::default(), f),
                    }
                    w.map(|wr| counts.sys_bytes = sys_len(dst, reach, 8) + sys_len(result, wr, 8))
                }
                Err(f) => {
                    tx.fault(true, dst, 8, Reach::default(), &f);
                    Err(f)
                }
            }
        }
        Op::TlbInvalidate { ctx, va, len } => {
            let range = (len != 0).then(|| (va, va + len));
            if env.mmu().invalidate(Scope { ctx, range }, abort) {
                Ok(())
            } else {
                Err(MemFault {
                    kind: FaultKind::Aborted,
                    at: desc_at,
                    write: false,
                })
            }
        }
        Op::FaultReplay { ctx, cancel } => {
            env.mmu().replay(ctx, cancel);
            Ok(())
        }
    };
    match result {
        Ok(()) => Outcome::Done {
            counts,
            irq: desc.irq,
            fence,
        },
        Err(f) => mem_fault(f, slot, false, (ns_used, ro_used)),
    }
}

fn direction(src: Aperture, dst: Aperture) -> Counter {
    match (src, dst) {
        (Aperture::Sys, Aperture::Vram) => Counter::SysToVram,
        (Aperture::Vram, Aperture::Sys) => Counter::VramToSys,
        (Aperture::Vram, Aperture::Vram) => Counter::VramToVram,
        _ => Counter::SysToSys,
    }
}

/// The physical aperture of a side: itself, or for `VIRT` what its first byte translated to
/// (the statistics' direction, hw-spec §9.5).
fn phys(a: Addr, reach: Reach) -> Aperture {
    match a.aperture {
        Aperture::Virt(_) => reach.phys.map_or(Aperture::Sys, |p| p.aperture),
        ap => ap,
    }
}

/// One memory request of a descriptor (a chunk, a store, an atomic) with the gate of §6.7
/// before it, and, if its translation faults (hw-spec §9.4), the fault raised and the wait for
/// replay (gate and translate again), cancel (`TRANSLATION`) or a reset (abandoned).
fn replaying<T>(
    (engine, env, _tx): (&Engine, &EngineEnv, &Tx<'_>),
    at: Addr,
    mut op: impl FnMut() -> Result<T, MemFault>,
) -> Result<T, MemFault> {
    loop {
        gate(engine, env, at)?;
        match op() {
            Err(f) if matches!(f.kind, FaultKind::Mmu { .. }) => {
                match env.raise(engine.index, &f, &engine.abort) {
                    Resume::Replay => {}
                    Resume::Cancel => {
                        return Err(MemFault {
                            kind: FaultKind::Translation,
                            ..f
                        })
                    }
                    Resume::Aborted => {
                        return Err(MemFault {
                            kind: FaultKind::Aborted,
                            ..f
                        })
                    }
                }
            }
            r => return r,
        }
    }
}

fn offset(a: Addr, off: u64) -> Addr {
    Addr {
        aperture: a.aperture,
        addr: a.addr + off,
    }
}

/// Before a memory request of a descriptor: a reset (or shutdown) abandons the descriptor
/// here; while Bus Master Enable is clear the engine waits here (hw-spec §6.7).
fn gate(engine: &Engine, env: &EngineEnv, at: Addr) -> Result<(), MemFault> {
    let aborted = || MemFault {
        kind: FaultKind::Aborted,
        at,
        write: false,
    };
    if engine.abort.load(Ordering::Acquire) || env.inject().removed() {
        // A surprise-removed function (hw-spec §10) abandons its descriptor here.
        return Err(aborted());
    }
    if env.bus_master() {
        return Ok(());
    }
    // Resets set `abort` under this lock and then poke; Bus Master Enable is set before a
    // wake-up that takes this lock: neither can slip between the checks and the wait.
    let mut st = engine.lock();
    loop {
        if engine.abort.load(Ordering::Acquire) || env.is_shutdown() {
            return Err(aborted());
        }
        if env.bus_master() {
            return Ok(());
        }
        st = engine.wait(st);
    }
}

/// `inject hang`: waits, executing the descriptor, until a reset (or shutdown) abandons it.
fn hang(engine: &Engine, env: &EngineEnv) -> Outcome {
    env.inject().count_hang();
    tracing::warn!("engine {}: hung by injection until reset", engine.index);
    let mut st = engine.lock();
    while !engine.abort.load(Ordering::Acquire) && !env.is_shutdown() {
        st = engine.wait(st);
    }
    drop(st);
    Outcome::Aborted
}

/// `inject poison` (hw-spec §10): an engine read of VRAM (the VRAM aperture) that touches a
/// poisoned range fails at its first poisoned byte. `rmw`: the read of an ATOMIC, which
/// reports a write.
fn poison_check(env: &EngineEnv, at: Addr, len: u64, rmw: bool) -> Result<(), MemFault> {
    if at.aperture != Aperture::Vram {
        return Ok(());
    }
    match env.inject().poisoned(at.addr, len) {
        None => Ok(()),
        Some(addr) => Err(MemFault {
            kind: FaultKind::Poisoned,
            at: Addr {
                aperture: Aperture::Vram,
                addr,
            },
            write: rmw,
        }),
    }
}

/// The first SYS transaction of a descriptor: (address, transaction size, write).
fn sys_side(op: &Op) -> Option<(Addr, u64, bool)> {
    let is_sys = |a: Addr| a.aperture == Aperture::Sys;
    match *op {
        Op::Copy { src, len, .. } if is_sys(src) => Some((src, len, false)),
        Op::Copy { dst, len, .. } | Op::Fill { dst, len, .. } if is_sys(dst) => {
            Some((dst, len, true))
        }
        Op::Fence { dst, .. } | Op::Timestamp { dst } | Op::Atomic { dst, .. } if is_sys(dst) => {
            Some((dst, 8, true))
        }
        _ => None,
    }
}

/// COPY in chunks; one trace line per side.
fn copy(
    engine: &Engine,
    env: &EngineEnv,
    tx: &Tx<'_>,
    src: Addr,
    dst: Addr,
    len: u64,
) -> Result<(Reach, Reach), MemFault> {
    let abort = &engine.abort;
    let (mut rr, mut wr) = (Reach::default(), Reach::default());
    let mut off = 0;
    while off < len {
        let n = (len - off).min(CHUNK);
        // Descriptor validation guarantees `addr + len` does not overflow.
        let chunk = replaying((engine, env, tx), src, || {
            poison_check(env, offset(src, off), n, false)?;
            env.copy_chunk(offset(src, off), offset(dst, off), n, abort)
        });
        match chunk {
            Ok((r, w)) => {
                rr = rr.merge(r);
                wr = wr.merge(w);
            }
            Err(f) => {
                if f.write {
                    tx.line(false, src, len, rr, true);
                    tx.fault(true, dst, len, wr, &f);
                } else {
                    tx.fault(false, src, len, rr, &f);
                }
                return Err(f);
            }
        }
        off += n;
    }
    tx.line(false, src, len, rr, true);
    tx.line(true, dst, len, wr, true);
    Ok((rr, wr))
}

/// FILL in chunks from one pattern buffer (dst and chunk offsets are multiples of 4).
fn fill(
    engine: &Engine,
    env: &EngineEnv,
    tx: &Tx<'_>,
    dst: Addr,
    len: u64,
    pattern: u32,
) -> Result<Reach, MemFault> {
    let abort = &engine.abort;
    let first = len.min(CHUNK) as usize;
    let buf: Vec<u8> = pattern
        .to_le_bytes()
        .iter()
        .copied()
        .cycle()
        .take(first)
        .collect();
    let mut wr = Reach::default();
    let mut off = 0;
    while off < len {
        let n = (len - off).min(CHUNK) as usize;
        // In bounds: n <= min(len, CHUNK) = buf.len().
        let chunk = replaying((engine, env, tx), dst, || {
            env.write_data(offset(dst, off), &buf[..n], abort)
        });
        match chunk {
            Ok(r) => wr = wr.merge(r),
            Err(f) => {
                tx.fault(true, dst, len, wr, &f);
                return Err(f);
            }
        }
        off += n as u64;
    }
    tx.line(true, dst, len, wr, true);
    Ok(wr)
}

/// Builds the fault report of an engine error.
pub(super) fn report_of(engine: usize, f: &EngineFault) -> FaultReport {
    FaultReport {
        engine,
        code: f.code,
        addr: f.addr,
        write: f.info & info::WRITE != 0,
        no_snoop: f.attrs.0,
        relaxed_ordering: f.attrs.1,
    }
}
