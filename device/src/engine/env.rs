//! What the engine threads share with the rest of the device ([`EngineEnv`]), and every memory
//! access the device makes (hw-spec §6.1, §6.7, §6.8, §6.9).
//!
//! The translation seam: every access (engine reads, writes and chunk copies, FENCE/TIMESTAMP
//! stores, the `VRAM_DATA` window) resolves `(aperture, address, length, access)` into pieces in
//! one place, `EngineEnv::resolve`: this GPU's VRAM; for a bus (SYS) address, a fabric member's
//! VRAM while its BAR2 decodes for this GPU's client, then the client's DMA_MAP windows. Every
//! piece is checked before any byte moves; a byte nothing covers is a bus error (`SYS_UNMAPPED`).
//! The device MMU (hw-spec §9) is a translation step in front of it ([`EngineEnv::translate`]):
//! a `VIRT` address becomes physical SYS/VRAM pieces, page by page, before anything is
//! resolved, and the page-table reads and fault records are themselves ordinary accesses
//! through the seam. A translated access holds an in-flight ticket from before its translation
//! until its last byte moved, which `TLB_INVALIDATE` waits for.
//!
//! `--inject vram-write-drop` lives here too: an engine's data write (a [`Dir::Data`] access:
//! COPY/FILL destinations, FENCE/TIMESTAMP stores, an ATOMIC's target and result) whose pieces
//! resolve to this GPU's own VRAM, through the VRAM aperture, its BAR2 bus address in the fabric
//! (SYS) or a `VIRT` translation to either, gets [`Piece::Dropped`] pieces instead: the access
//! completes normally and VRAM stays unchanged. The CPU's accesses (BAR2 mmap, the `VRAM_DATA`
//! window) and the MMU's fault records are not engine data writes and are not affected.
//!
//! Ownership and locking:
//! - The DMA space is behind an `RwLock`: engines hold it for reading only while they copy one
//!   chunk (at most [`CHUNK`] bytes) between directly mapped memory, or read or write one chunk of
//!   a file-accessed window (`pread`/`pwrite`); DMA_UNMAP takes it for writing, so it waits for
//!   that chunk and never returns while an engine uses the window.
//! - A file-accessed window (an fd not sealed against shrinking, see `vugpu_backend::FileSlice`)
//!   whose file the client shrank fails like unmapped memory (`SYS_UNMAPPED` at the first byte
//!   past the end of the file): the client can make the engine fault, never the server crash.
//! - An engine never holds the DMA space while it waits for a DMA message (fd-less window): the
//!   event loop, which performs the message, may need the write lock to serve a DMA_UNMAP.
//! - The fabric's member table is read-locked together with the DMA space, for the same chunk
//!   (while some GPU BAR decodes; otherwise one atomic load skips it): a config write that moves,
//!   resizes or disables a BAR waits for that chunk. VRAM is shared (`Arc`) with the fabric.
//! - Lock order: engine state → MMU record writer → DMA space → fabric → MSI-X → MMU state /
//!   TLB / in-flight → fault queue / trace. Nothing waits for an engine while holding the DMA
//!   space, the fabric or MSI-X; the MMU's state and TLB locks are never held across a memory
//!   access (see [`crate::mmu`]).
//!
//! Device Control, the Command register and the MSI-X control bits live in config space, which
//! the event loop owns; it mirrors them here after every config write and reset, and engines read
//! the mirrors. Command bit 2 (Bus Master Enable) gates every memory request an engine issues and
//! every MSI-X message (hw-spec §1.1, §3.1, §6.7).

use std::fs::File;
use std::io::{LineWriter, Write};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{
    Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak,
};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, VolatileMemory, VolatileSlice};
use vmm_sys_util::eventfd::EventFd;
use vugpu_backend::{
    DmaError, DmaLimits, DmaSpace, Fabric, FabricView, FileSlice, Iova, PeerId, Route, Segment,
    SharedPage, Vram, VramError, VramOffset,
};

use super::desc::{Addr, Aperture};
use super::peer_window::PeerWindows;
use super::regs::ErrorCode;
use crate::mmu::walk::{Access, WalkFault};
use crate::mmu::{FaultSink, Mmu, Resume, XlateError};
use crate::msix::Msix;
use crate::pci::function::COMMAND_BUS_MASTER;
use crate::pci::msix_cap::MsixControl;
use crate::pci::pcie::DeviceControl;

/// Largest piece of a copy or fill handled in one go (and the abort granularity).
pub const CHUNK: u64 = 1 << 20;
/// How long an engine waits for one DMA message before failing with `MSG_DMA_FAILED`.
pub const MSG_DMA_TIMEOUT: Duration = Duration::from_secs(30);

/// How engines poll their doorbell (hw-spec §6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollTiming {
    /// Spin on the doorbell this long after the last work.
    pub spin: Duration,
    /// Longest sleep between two polls once the spin window has passed.
    pub max_sleep: Duration,
}

impl Default for PollTiming {
    fn default() -> Self {
        PollTiming {
            spin: Duration::from_micros(50),
            max_sleep: Duration::from_micros(1000),
        }
    }
}

/// Why a memory access failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// SYS address not covered by a window.
    SysUnmapped,
    /// Window does not grant the access.
    SysPermission,
    /// VRAM offset past the end.
    VramRange,
    /// DMA message failed.
    MsgDma,
    /// A replayable translation fault (hw-spec §9.4): the engine records it and waits.
    Mmu {
        /// Why and where the walk stopped.
        fault: WalkFault,
        /// The access.
        access: Access,
    },
    /// A cancelled translation fault, or a VIRT access after the MMU was disabled
    /// (`TRANSLATION`).
    Translation,
    /// An engine read of poisoned VRAM (hw-spec §10).
    Poisoned,
    /// Abandoned because of a reset or shutdown (not an error).
    Aborted,
}

impl FaultKind {
    /// The `ERROR_CODE` reported for it (`None` for an abort).
    pub fn code(self) -> Option<ErrorCode> {
        match self {
            FaultKind::SysUnmapped => Some(ErrorCode::SysUnmapped),
            FaultKind::SysPermission => Some(ErrorCode::SysPermission),
            FaultKind::VramRange => Some(ErrorCode::VramRange),
            FaultKind::MsgDma => Some(ErrorCode::MsgDmaFailed),
            FaultKind::Mmu { .. } | FaultKind::Translation => Some(ErrorCode::Translation),
            FaultKind::Poisoned => Some(ErrorCode::Poisoned),
            FaultKind::Aborted => None,
        }
    }
}

/// A failed memory access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemFault {
    /// Why.
    pub kind: FaultKind,
    /// The first faulting byte (or the start of the failing message).
    pub at: Addr,
    /// The access was a write.
    pub write: bool,
}

/// How an access reached memory (for the trace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reach {
    /// At least one part went through DMA messages.
    pub msg: bool,
    /// A part was a GPU's VRAM reached through its BAR's bus address (the first such GPU).
    pub peer: Option<PeerId>,
    /// The access went through this peer window (hw-spec §6.10).
    pub window: Option<usize>,
    /// The physical address of the access's first byte (a `VIRT` address's translation).
    pub phys: Option<Addr>,
}

impl Reach {
    /// With `phys` set to the first segment's (physical) address.
    fn with_phys(mut self, segs: &[(Addr, u64)]) -> Reach {
        self.phys = segs.first().map(|s| s.0);
        self
    }

    /// Both reaches together.
    pub fn merge(self, other: Reach) -> Reach {
        Reach {
            msg: self.msg || other.msg,
            peer: self.peer.or(other.peer),
            window: self.window.or(other.window),
            phys: self.phys.or(other.phys),
        }
    }
}

/// One DMA message an engine asks the event loop to perform.
#[derive(Debug)]
pub enum MsgOp {
    /// DMA_READ of `len` bytes.
    Read {
        /// Client address.
        addr: u64,
        /// Bytes.
        len: usize,
    },
    /// DMA_WRITE.
    Write {
        /// Client address.
        addr: u64,
        /// Bytes.
        data: Vec<u8>,
    },
}

/// A DMA message request with the channel its result goes back on (the read data, or empty for
/// a write; `Err` with a reason on failure).
#[derive(Debug)]
pub struct MsgDmaRequest {
    /// What to do.
    pub op: MsgOp,
    /// Where the result goes (the engine may have given up: sending can fail, which is fine).
    pub reply: mpsc::SyncSender<Result<Vec<u8>, String>>,
    /// Alive while the engine waits for the result.
    waiter: Weak<()>,
    /// When the engine queued it (the event loop logs how long it waited to be sent).
    pub queued: Instant,
    /// The peer window it goes through (hw-spec §6.10); `None`: an fd-less DMA_MAP window.
    pub window: Option<usize>,
}

impl MsgDmaRequest {
    /// The engine stopped waiting (aborted by a reset, shut down or timed out): the message
    /// must not be sent. An engine drops its side before it reports the job finished, so once
    /// a reset has returned, every request of the aborted job reads as abandoned and no DMA
    /// message of it reaches the client after the reset.
    pub fn abandoned(&self) -> bool {
        self.waiter.strong_count() == 0
    }
}

/// An engine error for the device to report in config space and with vector 0 (hw-spec §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultReport {
    /// Engine index.
    pub engine: usize,
    /// `ERROR_CODE`.
    pub code: ErrorCode,
    /// Faulting address.
    pub addr: u64,
    /// The faulting access was a write.
    pub write: bool,
    /// No Snoop was used by the faulting transaction.
    pub no_snoop: bool,
    /// Relaxed Ordering was used by the faulting transaction.
    pub relaxed_ordering: bool,
}

/// State shared by the device (event loop) and its engine threads.
#[derive(Debug)]
pub struct EngineEnv {
    dma: RwLock<DmaSpace>,
    vram: Arc<Vram>,
    fabric: Arc<Fabric>,
    me: PeerId,
    name: String,
    doorbell: SharedPage,
    msix: Mutex<Msix>,
    msix_ctl: AtomicU8,
    dev_ctl: AtomicU16,
    command: AtomicU16,
    start: Instant,
    faults: Mutex<Vec<FaultReport>>,
    faults_pending: AtomicBool,
    events: EventFd,
    msg_tx: Sender<MsgDmaRequest>,
    trace: Option<Mutex<Trace>>,
    /// Trace lines not written because the trace reached its byte limit.
    trace_dropped: AtomicU64,
    /// Live trace subscribers of the control socket (`vugpu ctl SOCKET trace`, hw-spec §8.4).
    subscribers: Mutex<Vec<TraceSubscriber>>,
    /// `subscribers` is not empty (one load on the hot path).
    subscribed: AtomicBool,
    /// Lines subscribers' full queues dropped (all subscribers, ever).
    stream_dropped: AtomicU64,
    /// Injected faults (`vugpu ctl SOCKET inject`, hw-spec §10).
    inject: super::inject::Injected,
    shutdown: AtomicBool,
    timing: PollTiming,
    peer_windows: PeerWindows,
    mmu: Mmu,
    /// Serialises ATOMICs on memory the server does not map (read and write separately).
    atomic_lock: Mutex<()>,
    /// `--inject vram-write-drop`: engine data writes into this GPU's VRAM are lost.
    vram_write_drop: bool,
    /// Bytes those writes lost.
    vram_bytes_dropped: AtomicU64,
    /// The first loss was logged.
    drop_logged: AtomicBool,
}

/// One live trace subscriber: a bounded queue of lines; a line that finds it full is dropped
/// and counted (the subscriber's reader is slow), so a subscriber never grows the server.
#[derive(Debug)]
struct TraceSubscriber {
    tx: mpsc::SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

/// The receiving end of a live trace subscription (the control socket's side).
#[derive(Debug)]
pub struct TraceFeed {
    /// Trace lines, in order (each without its newline).
    pub rx: Receiver<String>,
    /// Lines dropped because the queue was full.
    pub dropped: Arc<AtomicU64>,
}

/// Most trace lines queued for one live subscriber.
pub const TRACE_FEED_LINES: usize = 4096;

/// The trace file and how much of its byte limit is used.
#[derive(Debug)]
struct Trace {
    out: LineWriter<File>,
    written: u64,
    max: u64,
    full: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The parts of an [`EngineEnv`].
#[derive(Debug)]
pub struct EnvParts {
    /// VRAM (shared with the fabric).
    pub vram: Arc<Vram>,
    /// The fabric this GPU is a member of.
    pub fabric: Arc<Fabric>,
    /// This GPU in the fabric.
    pub me: PeerId,
    /// The GPU's name (logs, trace, statistics).
    pub name: String,
    /// Doorbell page.
    pub doorbell: SharedPage,
    /// MSI-X state.
    pub msix: Msix,
    /// Initial Device Control.
    pub dev_ctl: DeviceControl,
    /// Initial Command register.
    pub command: u16,
    /// Trace file.
    pub trace: Option<File>,
    /// Most bytes written to the trace file (one final line noting the limit may pass it).
    pub trace_max_bytes: u64,
    /// What the client's DMA_MAPs may make the server hold.
    pub dma_limits: DmaLimits,
    /// Doorbell polling.
    pub timing: PollTiming,
    /// The device MMU (hw-spec §9).
    pub mmu: Mmu,
    /// `--inject vram-write-drop`: engine data writes into this GPU's VRAM complete but change
    /// nothing.
    pub vram_write_drop: bool,
}

/// What an access does with the pieces [`EngineEnv::resolve`] hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Reads (descriptor fetches, COPY sources, page tables, the `VRAM_DATA` window).
    Read,
    /// Writes that are not an engine's data: the `VRAM_DATA` window, MMU fault records.
    Write,
    /// An engine's data write: COPY/FILL destinations, FENCE/TIMESTAMP stores, an ATOMIC's
    /// target and result (what `--inject vram-write-drop` loses in this GPU's VRAM).
    Data,
}

impl Dir {
    fn writes(self) -> bool {
        self != Dir::Read
    }
}

/// One piece of an access (what the translation seam, [`EngineEnv::resolve`], hands out):
/// direct bytes (a mapped guest RAM window, this GPU's VRAM through its aperture, or a member
/// of the fabric's VRAM through its BAR: `peer`), a part of a file-accessed window, or a
/// message-only range.
enum Piece<'a> {
    Slice {
        slice: VolatileSlice<'a, ()>,
        peer: Option<PeerId>,
    },
    File(FileSlice<'a>),
    Msg {
        iova: u64,
        len: u64,
        window: Option<usize>,
    },
    /// This GPU's VRAM under `--inject vram-write-drop` (engine data writes only): the bytes
    /// are accepted and lost. `peer`: reached through its BAR (for the fabric's counters).
    Dropped {
        len: u64,
        peer: Option<PeerId>,
    },
}

impl Piece<'_> {
    fn len(&self) -> u64 {
        match self {
            Piece::Slice { slice, .. } => slice.len() as u64,
            Piece::File(f) => f.len(),
            Piece::Msg { len, .. } | Piece::Dropped { len, .. } => *len,
        }
    }
}

/// What an access holds while it uses its pieces: the DMA space and the fabric's member table,
/// read-locked (so DMA_UNMAP, a BAR move and a Memory Space Enable change wait for it). Lock
/// order: DMA space, then fabric.
struct Held<'a> {
    dma: Option<RwLockReadGuard<'a, DmaSpace>>,
    fabric: Option<FabricView<'a>>,
}

fn fault(kind: FaultKind, aperture: Aperture, addr: u64, write: bool) -> MemFault {
    MemFault {
        kind,
        at: Addr { aperture, addr },
        write,
    }
}

fn sys_fault(e: &DmaError, addr: u64, write: bool) -> MemFault {
    let (kind, at) = match *e {
        DmaError::PermissionDenied { iova, .. } => (FaultKind::SysPermission, iova.raw()),
        // A file-accessed window whose file the client shrank (or whose fd it broke) is
        // memory that is no longer there.
        DmaError::Unmapped { iova, .. }
        | DmaError::MessageOnly { iova }
        | DmaError::Truncated { iova }
        | DmaError::Append(iova)
        | DmaError::FileIo { iova, .. } => (FaultKind::SysUnmapped, iova.raw()),
        _ => (FaultKind::SysUnmapped, addr),
    };
    fault(kind, Aperture::Sys, at, write)
}

fn usize_of(n: u64) -> usize {
    // Lengths here are at most CHUNK or a descriptor-sized constant.
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl EngineEnv {
    /// Builds the shared state; returns it with the receiving end of the DMA message channel
    /// (for the event loop).
    pub fn new(parts: EnvParts) -> std::io::Result<(EngineEnv, Receiver<MsgDmaRequest>)> {
        let (msg_tx, msg_rx) = mpsc::channel();
        let env = EngineEnv {
            dma: RwLock::new(DmaSpace::with_limits(parts.dma_limits)),
            vram: parts.vram,
            fabric: parts.fabric,
            me: parts.me,
            name: parts.name,
            doorbell: parts.doorbell,
            msix: Mutex::new(parts.msix),
            msix_ctl: AtomicU8::new(0),
            dev_ctl: AtomicU16::new(parts.dev_ctl.0),
            command: AtomicU16::new(parts.command),
            start: Instant::now(),
            faults: Mutex::new(Vec::new()),
            faults_pending: AtomicBool::new(false),
            events: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            msg_tx,
            trace: parts.trace.map(|f| {
                Mutex::new(Trace {
                    out: LineWriter::new(f),
                    written: 0,
                    max: parts.trace_max_bytes,
                    full: false,
                })
            }),
            trace_dropped: AtomicU64::new(0),
            subscribers: Mutex::new(Vec::new()),
            subscribed: AtomicBool::new(false),
            stream_dropped: AtomicU64::new(0),
            inject: super::inject::Injected::default(),
            shutdown: AtomicBool::new(false),
            timing: parts.timing,
            peer_windows: PeerWindows::new(),
            mmu: parts.mmu,
            atomic_lock: Mutex::new(()),
            vram_write_drop: parts.vram_write_drop,
            vram_bytes_dropped: AtomicU64::new(0),
            drop_logged: AtomicBool::new(false),
        };
        Ok((env, msg_rx))
    }

    /// VRAM.
    pub fn vram(&self) -> &Vram {
        &self.vram
    }

    /// The doorbell page.
    pub fn doorbell(&self) -> &SharedPage {
        &self.doorbell
    }

    /// The DMA space, for reading.
    pub fn dma(&self) -> RwLockReadGuard<'_, DmaSpace> {
        self.dma.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The DMA space, for writing (waits for engines' chunks in progress).
    pub fn dma_mut(&self) -> RwLockWriteGuard<'_, DmaSpace> {
        self.dma.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// MSI-X state.
    pub fn msix(&self) -> MutexGuard<'_, Msix> {
        lock(&self.msix)
    }

    /// Updates the MSI-X control mirror (Enable, Function Mask; Bus Master Enable comes from
    /// the Command mirror).
    pub fn set_msix_control(&self, ctl: MsixControl) {
        let v = u8::from(ctl.enabled) | (u8::from(ctl.function_mask) << 1);
        self.msix_ctl.store(v, Ordering::Release);
    }

    /// The MSI-X control mirror, with Bus Master Enable from the Command mirror.
    pub fn msix_control(&self) -> MsixControl {
        let v = self.msix_ctl.load(Ordering::Acquire);
        MsixControl {
            enabled: v & 1 != 0,
            function_mask: v & 2 != 0,
            bus_master: self.bus_master(),
        }
    }

    /// Updates the Command register mirror.
    pub fn set_command(&self, command: u16) {
        self.command.store(command, Ordering::SeqCst);
    }

    /// Command bit 2, Bus Master Enable: may the device issue memory requests (engine DMA,
    /// MSI-X messages).
    pub fn bus_master(&self) -> bool {
        self.command.load(Ordering::SeqCst) & COMMAND_BUS_MASTER != 0
    }

    /// Updates the Device Control mirror.
    pub fn set_device_control(&self, ctl: DeviceControl) {
        self.dev_ctl.store(ctl.0, Ordering::Release);
    }

    /// Device Control, as engines see it.
    pub fn device_control(&self) -> DeviceControl {
        DeviceControl(self.dev_ctl.load(Ordering::Acquire))
    }

    /// Nanoseconds since the device was created (the device clock).
    pub fn clock_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Signals MSI-X vector `vector`.
    ///
    /// The control bits are read with the MSI-X state locked: the event loop changes a mirror
    /// first and then, under the same lock, sends what it no longer holds, so a signal is
    /// either sent, or held and released by that pass (never held after it).
    pub fn signal(&self, vector: usize) {
        if self.inject.removed() {
            // A surprise-removed function sends nothing (hw-spec §10).
            return;
        }
        let mut msix = self.msix();
        let ctl = self.msix_control();
        msix.signal(vector, ctl);
    }

    /// The eventfd that becomes readable when faults or DMA messages wait for the event loop.
    pub fn events_fd(&self) -> &EventFd {
        &self.events
    }

    /// Queues a fault report for the event loop.
    ///
    /// Engines call this while they still hold their state lock, before the error becomes
    /// visible in STATUS: so a client that saw STATUS = ERROR finds the report queued, and the
    /// device drains the queue before answering any region access (hw-spec §5).
    pub fn report(&self, r: FaultReport) {
        lock(&self.faults).push(r);
        self.faults_pending.store(true, Ordering::Release);
        self.kick();
    }

    /// Fault reports are queued (cheap check before a region access).
    pub fn faults_pending(&self) -> bool {
        self.faults_pending.load(Ordering::Acquire)
    }

    /// Takes every queued fault report.
    pub fn take_faults(&self) -> Vec<FaultReport> {
        let mut q = lock(&self.faults);
        self.faults_pending.store(false, Ordering::Release);
        std::mem::take(&mut *q)
    }

    fn kick(&self) {
        let _ = self.events.write(1);
    }

    /// Clears the events eventfd (the event loop, before handling what is queued).
    pub fn clear_events(&self) {
        let _ = self.events.read();
    }

    /// Engines are shutting down.
    pub fn is_shutdown(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Tells engines to shut down.
    pub fn set_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
    }

    /// Doorbell polling parameters.
    pub fn timing(&self) -> PollTiming {
        self.timing
    }

    /// Tracing is on (a trace file, or a live subscriber).
    pub fn tracing(&self) -> bool {
        self.trace.is_some() || self.subscribed.load(Ordering::Relaxed)
    }

    /// Subscribes to the live trace: every later line is queued (at most `lines`; when the queue
    /// is full a line is dropped and counted). Dropping the feed unsubscribes.
    pub fn subscribe_trace(&self, lines: usize) -> TraceFeed {
        let (tx, rx) = mpsc::sync_channel(lines.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let mut subs = lock(&self.subscribers);
        subs.push(TraceSubscriber {
            tx,
            dropped: dropped.clone(),
        });
        self.subscribed.store(true, Ordering::Relaxed);
        TraceFeed { rx, dropped }
    }

    /// Live trace subscribers now.
    pub fn trace_subscribers(&self) -> usize {
        let mut subs = lock(&self.subscribers);
        // The feed holds the other reference to `dropped`: alone, the subscriber is gone.
        subs.retain(|s| Arc::strong_count(&s.dropped) > 1);
        if subs.is_empty() {
            self.subscribed.store(false, Ordering::Relaxed);
        }
        subs.len()
    }

    /// Lines live subscribers' full queues dropped.
    pub fn trace_stream_dropped(&self) -> u64 {
        self.stream_dropped.load(Ordering::Relaxed)
    }

    /// Hands a line to every live subscriber, forgetting those that went away.
    fn publish(&self, text: &str) {
        let mut subs = lock(&self.subscribers);
        subs.retain(|s| match s.tx.try_send(text.to_string()) {
            Ok(()) => true,
            Err(mpsc::TrySendError::Full(_)) => {
                s.dropped.fetch_add(1, Ordering::Relaxed);
                self.stream_dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::TrySendError::Disconnected(_)) => false,
        });
        if subs.is_empty() {
            self.subscribed.store(false, Ordering::Relaxed);
        }
    }

    /// Appends one line to the trace (no-op without `--trace`). Once the trace holds its byte
    /// limit (`--trace-max-bytes`), one line says so and later lines are only counted
    /// ([`trace_lines_dropped`](Self::trace_lines_dropped)): a guest cannot fill the disk.
    pub fn trace_line(&self, line: std::fmt::Arguments<'_>) {
        let ns = self.clock_ns();
        if self.subscribed.load(Ordering::Relaxed) {
            self.publish(&format!("{ns} gpu={} {line}", self.name));
        }
        if let Some(t) = &self.trace {
            let text = format!("{ns} gpu={} {line}\n", self.name);
            let mut t = lock(t);
            let len = text.len() as u64;
            if t.full || t.written.saturating_add(len) > t.max {
                self.trace_dropped.fetch_add(1, Ordering::Relaxed);
                if !t.full {
                    t.full = true;
                    let max = t.max;
                    let _ = writeln!(
                        t.out,
                        "{} gpu={} trace limit of {max} bytes reached: later lines are dropped \
                         and counted (vugpu stats: trace_lines_dropped)",
                        self.clock_ns(),
                        self.name
                    );
                }
                return;
            }
            t.written += len;
            let _ = t.out.write_all(text.as_bytes());
        }
    }

    /// Trace lines dropped at the trace's byte limit.
    pub fn trace_lines_dropped(&self) -> u64 {
        self.trace_dropped.load(Ordering::Relaxed)
    }

    /// The GPU's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fabric this GPU belongs to.
    pub fn fabric(&self) -> &Arc<Fabric> {
        &self.fabric
    }

    /// This GPU in the fabric.
    pub fn peer_id(&self) -> PeerId {
        self.me
    }

    /// The peer windows (hw-spec §6.10).
    pub fn peer_windows(&self) -> &PeerWindows {
        &self.peer_windows
    }

    /// Faults injected through the control socket (hw-spec §10).
    pub fn inject(&self) -> &super::inject::Injected {
        &self.inject
    }

    /// The device MMU (hw-spec §9).
    pub fn mmu(&self) -> &Mmu {
        &self.mmu
    }

    /// Bytes of engine data writes `--inject vram-write-drop` lost (0 without it).
    pub fn vram_bytes_dropped(&self) -> u64 {
        self.vram_bytes_dropped.load(Ordering::Relaxed)
    }

    /// An in-flight ticket for an access at `at` (VIRT only), which `TLB_INVALIDATE` waits for.
    fn ticket(&self, at: Addr) -> Option<crate::mmu::tlb::Ticket<'_>> {
        match at.aperture {
            Aperture::Virt(ctx) => Some(self.mmu.begin_access(ctx)),
            _ => None,
        }
    }

    /// The MMU step of the seam: `[at, at + len)` as physical (SYS/VRAM) pieces, in order. A
    /// physical address is itself; a `VIRT` one is translated page by page (hw-spec §9.2),
    /// reading page tables through the seam. A translation failure is a replayable fault
    /// ([`FaultKind::Mmu`] at the first faulting virtual byte).
    pub fn translate(
        &self,
        at: Addr,
        len: u64,
        access: Access,
        abort: &AtomicBool,
    ) -> Result<Segs, MemFault> {
        let Aperture::Virt(ctx) = at.aperture else {
            // No allocation on the physical path.
            return Ok(Segs::One([(at, len)]));
        };
        let mut mem = |pa: Addr| {
            let mut b = [0u8; 8];
            self.read_bytes(pa, &mut b, abort)
                .ok()
                .map(|_| u64::from_le_bytes(b))
        };
        self.mmu
            .translate(ctx, at.addr, len, access, &mut mem)
            .map(Segs::Many)
            .map_err(|e| match e {
                XlateError::Disabled => fault(
                    FaultKind::Translation,
                    at.aperture,
                    at.addr,
                    access.writes(),
                ),
                XlateError::Fault { va, fault: f } => {
                    if abort.load(Ordering::Acquire) {
                        return fault(FaultKind::Aborted, at.aperture, va, access.writes());
                    }
                    fault(
                        FaultKind::Mmu { fault: f, access },
                        at.aperture,
                        va,
                        access.writes(),
                    )
                }
            })
    }

    /// A replayable fault of `engine` (`f` from [`EngineEnv::translate`]): the record, the
    /// fault vector and the wait (hw-spec §9.4). Anything else: `Resume::Cancel`.
    pub fn raise(&self, engine: usize, f: &MemFault, abort: &AtomicBool) -> Resume {
        let (FaultKind::Mmu { fault: wf, access }, Aperture::Virt(ctx)) = (f.kind, f.at.aperture)
        else {
            return Resume::Cancel;
        };
        let sink = Sink { env: self, abort };
        let pending = crate::mmu::PendingFault {
            engine,
            ctx,
            va: f.at.addr,
            access,
            fault: wf,
        };
        self.mmu.raise(&sink, &pending, abort)
    }

    /// Takes what an access of these apertures needs (nothing for VRAM alone).
    fn hold(&self, sys: bool) -> Held<'_> {
        if sys {
            let dma = Some(self.dma());
            Held {
                dma,
                // While no GPU BAR decodes, skip the member table (the common case).
                fabric: self.fabric.routing().then(|| self.fabric.view()),
            }
        } else {
            Held {
                dma: None,
                fabric: None,
            }
        }
    }

    /// The translation seam: every memory access the device makes resolves `[at, at + len)`
    /// here into pieces it may touch, after checking all of it (hw-spec §6.1, §6.9).
    ///
    /// - VRAM aperture: this GPU's VRAM (`VRAM_RANGE` past its end).
    /// - SYS aperture (a bus address): first the fabric (a GPU's VRAM BAR that decodes, this
    ///   GPU's own included, wins over any DMA_MAP window, fd-less ones included), then the
    ///   client's DMA_MAP windows (mapped, file-accessed or message-only, with their
    ///   permissions). Bytes outside both are a bus error (`SYS_UNMAPPED` at the first such
    ///   byte), as before peers existed, unless the whole access (none of it in a BAR or a
    ///   window) lies in one peer window granting it: then it is one message-only piece
    ///   (hw-spec §6.10, [`super::peer_window`]).
    ///
    /// Under `--inject vram-write-drop`, a [`Dir::Data`] access's pieces in this GPU's VRAM
    /// (either way) become [`Piece::Dropped`].
    fn resolve<'h>(
        &'h self,
        held: &'h Held<'h>,
        at: Addr,
        len: u64,
        dir: Dir,
    ) -> Result<Vec<Piece<'h>>, MemFault> {
        let write = dir.writes();
        let mut pieces = self.resolve_phys(held, at, len, write)?;
        if dir == Dir::Data && self.vram_write_drop {
            for p in &mut pieces {
                if let Piece::Slice { slice, peer } = *p {
                    let own = match at.aperture {
                        Aperture::Vram => true,
                        _ => peer == Some(self.me),
                    };
                    if own {
                        *p = Piece::Dropped {
                            len: slice.len() as u64,
                            peer,
                        };
                    }
                }
            }
        }
        Ok(pieces)
    }

    /// [`resolve`](Self::resolve) before the injection.
    fn resolve_phys<'h>(
        &'h self,
        held: &'h Held<'h>,
        at: Addr,
        len: u64,
        write: bool,
    ) -> Result<Vec<Piece<'h>>, MemFault> {
        match at.aperture {
            Aperture::Vram => {
                let slice = self
                    .vram
                    .slice(VramOffset(at.addr), usize_of(len))
                    .map_err(|e| {
                        let addr = match e {
                            VramError::OutOfRange { .. } => at.addr.max(self.vram.size()),
                            _ => at.addr,
                        };
                        fault(FaultKind::VramRange, Aperture::Vram, addr, write)
                    })?;
                Ok(vec![Piece::Slice { slice, peer: None }])
            }
            Aperture::Sys => self
                .resolve_bus(held, at.addr, len, write)
                .or_else(|f| self.peer_window_piece(held, at.addr, len, write, f)),
            // Translated before it gets here (`translate`); never resolved as such.
            Aperture::Virt(_) => Err(fault(FaultKind::Translation, at.aperture, at.addr, write)),
        }
    }

    /// [`resolve`](Self::resolve) for each physical segment, in order.
    fn resolve_segs<'h>(
        &'h self,
        held: &'h Held<'h>,
        segs: &[(Addr, u64)],
        dir: Dir,
    ) -> Result<Vec<Piece<'h>>, MemFault> {
        match segs {
            [(at, len)] => self.resolve(held, *at, *len, dir),
            _ => {
                let mut out = Vec::new();
                for (at, len) in segs {
                    out.extend(self.resolve(held, *at, *len, dir)?);
                }
                Ok(out)
            }
        }
    }

    /// A bus error may still be an access through a peer window (hw-spec §6.10): then it is
    /// one message-only piece; otherwise the error stands.
    fn peer_window_piece<'h>(
        &'h self,
        held: &'h Held<'h>,
        addr: u64,
        len: u64,
        write: bool,
        f: MemFault,
    ) -> Result<Vec<Piece<'h>>, MemFault> {
        // No fabric view: no GPU BAR decodes (the fabric's fast path), so none can overlap.
        let Some(dma) = held.dma.as_deref() else {
            return Err(f);
        };
        if f.kind != FaultKind::SysUnmapped {
            return Err(f);
        }
        match self
            .peer_windows
            .claim(dma, held.fabric.as_ref(), self.me, addr, len, write)
        {
            Some(w) => Ok(vec![Piece::Msg {
                iova: addr,
                len,
                window: Some(w),
            }]),
            None => Err(f),
        }
    }

    fn resolve_bus<'h>(
        &'h self,
        held: &'h Held<'h>,
        addr: u64,
        len: u64,
        write: bool,
    ) -> Result<Vec<Piece<'h>>, MemFault> {
        let unmapped = |at: u64| fault(FaultKind::SysUnmapped, Aperture::Sys, at, write);
        let Some(dma) = held.dma.as_deref() else {
            return Err(unmapped(addr));
        };
        let Some(fabric) = held.fabric.as_ref().filter(|f| f.any_decoding()) else {
            // The common case: no GPU BAR decodes; only the DMA_MAP windows.
            return dma_pieces(dma, addr, len, write);
        };
        let end = addr.checked_add(len).ok_or_else(|| unmapped(addr))?;
        let mut pieces = Vec::new();
        let mut cur = addr;
        while cur < end {
            match fabric.route(self.me, cur) {
                Route::Peer {
                    peer,
                    offset,
                    avail,
                } => {
                    let n = avail.min(end - cur);
                    // In bounds: the fabric never lets a BAR decode more than its VRAM.
                    let slice = fabric
                        .slice(peer, offset, usize_of(n))
                        .map_err(|_| unmapped(cur))?;
                    pieces.push(Piece::Slice {
                        slice,
                        peer: Some(peer),
                    });
                    cur += n;
                }
                Route::Miss { next } => {
                    let stop = next.map_or(end, |n| n.min(end));
                    dma_pieces_into(dma, cur, stop - cur, write, &mut pieces)?;
                    cur = stop;
                }
            }
        }
        Ok(pieces)
    }

    /// How `pieces` reached memory; counts the bytes that went through the fabric.
    fn account(&self, pieces: &[Piece<'_>], write: bool) -> Reach {
        let mut reach = Reach::default();
        for p in pieces {
            match p {
                Piece::Msg { window, .. } => {
                    reach.msg = true;
                    reach.window = reach.window.or(*window);
                }
                Piece::Slice {
                    slice,
                    peer: Some(peer),
                } => {
                    reach.peer = reach.peer.or(Some(*peer));
                    self.fabric
                        .record(self.me, *peer, write, slice.len() as u64);
                }
                Piece::Dropped { len, peer } => {
                    if let Some(peer) = peer {
                        reach.peer = reach.peer.or(Some(*peer));
                        self.fabric.record(self.me, *peer, write, *len);
                    }
                    self.dropped(*len);
                }
                Piece::Slice { peer: None, .. } | Piece::File(_) => {}
            }
        }
        reach
    }

    /// Counts bytes `--inject vram-write-drop` lost; the first loss is logged.
    fn dropped(&self, len: u64) {
        self.vram_bytes_dropped.fetch_add(len, Ordering::Relaxed);
        if !self.drop_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "--inject vram-write-drop: engine writes into VRAM are being dropped \
                 (first: {len} bytes; the count is the stats' vram_bytes_dropped)"
            );
        }
    }

    /// Reads `buf.len()` bytes at `at` (descriptor fetches, bounce buffers, the VRAM window,
    /// page tables).
    pub fn read_bytes(
        &self,
        at: Addr,
        buf: &mut [u8],
        abort: &AtomicBool,
    ) -> Result<Reach, MemFault> {
        let _flight = self.ticket(at);
        let segs = self.translate(at, buf.len() as u64, Access::Read, abort)?;
        self.read_segs(at, &segs, buf, abort)
    }

    fn read_segs(
        &self,
        at: Addr,
        segs: &[(Addr, u64)],
        buf: &mut [u8],
        abort: &AtomicBool,
    ) -> Result<Reach, MemFault> {
        // Errors name a physical address.
        let at = segs.first().map_or(at, |s| s.0);
        let mut msgs = Vec::new();
        let reach = {
            let held = self.hold(any_sys(segs));
            let pieces = self.resolve_segs(&held, segs, Dir::Read)?;
            let mut off = 0usize;
            for p in &pieces {
                let n = usize_of(p.len());
                let dst = buf.get_mut(off..off + n).ok_or(fault(
                    FaultKind::SysUnmapped,
                    at.aperture,
                    at.addr,
                    false,
                ))?;
                match p {
                    Piece::Slice { slice, .. } => {
                        slice.copy_to(dst);
                    }
                    Piece::File(f) => f.read(0, dst).map_err(|e| sys_fault(&e, at.addr, false))?,
                    Piece::Msg { iova, window, .. } => msgs.push((*iova, off, n, *window)),
                    // Never for a read.
                    Piece::Dropped { .. } => {}
                }
                off += n;
            }
            self.account(&pieces, false).with_phys(segs)
        };
        for (iova, off, n, window) in msgs {
            let dst = buf.get_mut(off..off + n).ok_or(fault(
                FaultKind::MsgDma,
                Aperture::Sys,
                iova,
                false,
            ))?;
            self.msg_read(iova, dst, window, abort)?;
        }
        Ok(reach)
    }

    /// Writes `data` at `at` (the `VRAM_DATA` window, MMU fault records: not an engine's data,
    /// which is [`write_data`](Self::write_data)).
    pub fn write_bytes(
        &self,
        at: Addr,
        data: &[u8],
        abort: &AtomicBool,
    ) -> Result<Reach, MemFault> {
        self.write_as(at, data, Dir::Write, abort)
    }

    /// An engine's data write of `data` at `at` (a FILL chunk).
    pub fn write_data(&self, at: Addr, data: &[u8], abort: &AtomicBool) -> Result<Reach, MemFault> {
        self.write_as(at, data, Dir::Data, abort)
    }

    fn write_as(
        &self,
        at: Addr,
        data: &[u8],
        dir: Dir,
        abort: &AtomicBool,
    ) -> Result<Reach, MemFault> {
        let _flight = self.ticket(at);
        let segs = self.translate(at, data.len() as u64, Access::Write, abort)?;
        self.write_segs(at, &segs, data, dir, abort)
    }

    fn write_segs(
        &self,
        at: Addr,
        segs: &[(Addr, u64)],
        data: &[u8],
        dir: Dir,
        abort: &AtomicBool,
    ) -> Result<Reach, MemFault> {
        // Errors name a physical address.
        let at = segs.first().map_or(at, |s| s.0);
        let mut msgs = Vec::new();
        let reach = {
            let held = self.hold(any_sys(segs));
            let pieces = self.resolve_segs(&held, segs, dir)?;
            let mut off = 0usize;
            for p in &pieces {
                let n = usize_of(p.len());
                let src = data.get(off..off + n).ok_or(fault(
                    FaultKind::SysUnmapped,
                    at.aperture,
                    at.addr,
                    true,
                ))?;
                match p {
                    Piece::Slice { slice, .. } => {
                        slice.copy_from(src);
                    }
                    Piece::File(f) => f.write(0, src).map_err(|e| sys_fault(&e, at.addr, true))?,
                    Piece::Msg { iova, window, .. } => msgs.push((*iova, off, n, *window)),
                    Piece::Dropped { .. } => {}
                }
                off += n;
            }
            self.account(&pieces, true).with_phys(segs)
        };
        for (iova, off, n, window) in msgs {
            let src = data.get(off..off + n).ok_or(fault(
                FaultKind::MsgDma,
                Aperture::Sys,
                iova,
                true,
            ))?;
            self.msg_write(iova, src, window, abort)?;
        }
        Ok(reach)
    }

    /// Copies one chunk (`len <= CHUNK`) from `src` to `dst`. Both ranges are checked before a
    /// byte moves; directly reachable memory (mapped windows, this GPU's and peers' VRAM) is
    /// copied without a bounce buffer while the DMA space and the fabric are held for reading.
    /// Returns how each side was reached.
    ///
    /// A chunk touching a file-accessed window bounces through a buffer: all of `src` is read
    /// first, so a source file the client shrank fails the chunk before anything is written.
    pub fn copy_chunk(
        &self,
        src: Addr,
        dst: Addr,
        len: u64,
        abort: &AtomicBool,
    ) -> Result<(Reach, Reach), MemFault> {
        // One ticket: a descriptor's VIRT addresses are all of one context.
        let _flight = self.ticket(src).or_else(|| self.ticket(dst));
        // The whole chunk is translated before any byte moves (hw-spec §9.4).
        let ss = self.translate(src, len, Access::Read, abort)?;
        let ds = self.translate(dst, len, Access::Write, abort)?;
        {
            let held = self.hold(any_sys(&ss) || any_sys(&ds));
            let sp = self.resolve_segs(&held, &ss, Dir::Read)?;
            let dp = self.resolve_segs(&held, &ds, Dir::Data)?;
            let direct = sp
                .iter()
                .chain(dp.iter())
                .all(|p| matches!(p, Piece::Slice { .. } | Piece::Dropped { .. }));
            if direct {
                copy_pieces(&sp, &dp);
                return Ok((
                    self.account(&sp, false).with_phys(&ss),
                    self.account(&dp, true).with_phys(&ds),
                ));
            }
        }
        // Some part is file-accessed or message-only: bounce through a buffer (`pread`/`pwrite`
        // under the DMA space, as above), without holding the DMA space while messages are in
        // flight.
        let mut buf = vec![0u8; usize_of(len)];
        let r = self.read_segs(src, &ss, &mut buf, abort)?;
        let w = self.write_segs(dst, &ds, &buf, Dir::Data, abort)?;
        Ok((r, w))
    }

    /// One atomic 8-byte store (FENCE, TIMESTAMP) at the 8-byte aligned `at`, resolved like
    /// every other access; a file-accessed window gets one 8-byte `pwrite` (not atomic for an
    /// observer mapping the file), a message-only window an 8-byte DMA_WRITE.
    pub fn store_u64(&self, at: Addr, value: u64, abort: &AtomicBool) -> Result<Reach, MemFault> {
        if !at.addr.is_multiple_of(8) {
            return Err(self.misaligned(at));
        }
        let _flight = self.ticket(at);
        let segs = self.translate(at, 8, Access::Write, abort)?;
        // Pages are 4 KiB aligned: an aligned 8-byte store translates to one segment.
        let [(at, _)] = &*segs else {
            return Err(self.misaligned(at));
        };
        let at = *at;
        let misaligned = || self.misaligned(at);
        let mut msg_window = None;
        let reach = {
            let held = self.hold(at.aperture == Aperture::Sys);
            let pieces = self.resolve(&held, at, 8, Dir::Data)?;
            match pieces.as_slice() {
                [Piece::Dropped { .. }] => {}
                [Piece::Slice { slice, .. }] => slice
                    .store(value.to_le(), 0, std::sync::atomic::Ordering::Release)
                    .map_err(|_| misaligned())?,
                [Piece::File(f)] => f
                    .write(0, &value.to_le_bytes())
                    .map_err(|e| sys_fault(&e, at.addr, true))?,
                // Message-only: one DMA_WRITE below, without holding the DMA space.
                [Piece::Msg { window, .. }] => msg_window = *window,
                // Windows are page aligned and BARs at least 1 MiB: an aligned 8-byte store
                // lies in one piece.
                _ => return Err(misaligned()),
            }
            if matches!(pieces.as_slice(), [Piece::Msg { .. }]) {
                None
            } else {
                Some(self.account(&pieces, true).with_phys(&[(at, 8)]))
            }
        };
        match reach {
            Some(r) => Ok(r),
            None => {
                self.msg_write(at.addr, &value.to_le_bytes(), msg_window, abort)?;
                Ok(Reach {
                    msg: true,
                    peer: None,
                    window: msg_window,
                    phys: Some(at),
                })
            }
        }
    }

    fn misaligned(&self, at: Addr) -> MemFault {
        let (kind, addr) = match at.aperture {
            Aperture::Vram => (FaultKind::VramRange, at.addr.max(self.vram.size())),
            Aperture::Sys => (FaultKind::SysUnmapped, at.addr),
            Aperture::Virt(_) => (FaultKind::Translation, at.addr),
        };
        fault(kind, at.aperture, addr, true)
    }

    /// ATOMIC (hw-spec §9.5): adds `value` to the 8-byte aligned u64 at `at` and returns the
    /// old value. Memory the server maps (VRAM, peers' VRAM, sealed guest RAM) gets one host
    /// atomic instruction, atomic also for the CPU; a file-accessed or message-only window a
    /// read and a write under a device lock (atomic among the device's atomics only). The
    /// target needs read and write permission (and, through `VIRT`, the leaf's atomic rights).
    pub fn atomic_add(
        &self,
        at: Addr,
        value: u64,
        abort: &AtomicBool,
    ) -> Result<(u64, Reach), MemFault> {
        if !at.addr.is_multiple_of(8) {
            return Err(self.misaligned(at));
        }
        let _flight = self.ticket(at);
        let segs = self.translate(at, 8, Access::Atomic, abort)?;
        let [(pa, _)] = &*segs else {
            return Err(self.misaligned(at));
        };
        let pa = *pa;
        {
            let held = self.hold(pa.aperture == Aperture::Sys);
            let rp = self.resolve(&held, pa, 8, Dir::Read)?;
            let wp = self.resolve(&held, pa, 8, Dir::Data)?;
            if let ([Piece::Slice { slice, .. }], [Piece::Dropped { .. }]) =
                (rp.as_slice(), wp.as_slice())
            {
                // The add is lost: the old value, memory unchanged.
                let cell = slice
                    .get_atomic_ref::<std::sync::atomic::AtomicU64>(0)
                    .map_err(|_| self.misaligned(pa))?;
                let old = u64::from_le(cell.load(Ordering::SeqCst));
                self.account(&rp, false);
                return Ok((old, self.account(&wp, true).with_phys(&segs)));
            }
            if let [Piece::Slice { slice, .. }] = wp.as_slice() {
                let cell = slice
                    .get_atomic_ref::<std::sync::atomic::AtomicU64>(0)
                    .map_err(|_| self.misaligned(pa))?;
                let old = u64::from_le(cell.fetch_add(value.to_le(), Ordering::SeqCst));
                self.account(&rp, false);
                return Ok((old, self.account(&wp, true).with_phys(&segs)));
            }
        }
        let _one = lock(&self.atomic_lock);
        let mut b = [0u8; 8];
        let r = self.read_segs(pa, &segs, &mut b, abort)?;
        let old = u64::from_le_bytes(b);
        let w = self.write_segs(
            pa,
            &segs,
            &old.wrapping_add(value).to_le_bytes(),
            Dir::Data,
            abort,
        )?;
        Ok((old, r.merge(w)))
    }

    /// A dword of this GPU's VRAM for the `VRAM_DATA` window (hw-spec §3), through the seam.
    pub fn vram_read_u32(&self, offset: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        let at = Addr {
            aperture: Aperture::Vram,
            addr: offset,
        };
        self.read_bytes(at, &mut b, &AtomicBool::new(false)).ok()?;
        Some(u32::from_le_bytes(b))
    }

    /// Writes a dword of this GPU's VRAM for the `VRAM_DATA` window, through the seam.
    pub fn vram_write_u32(&self, offset: u64, value: u32) -> bool {
        let at = Addr {
            aperture: Aperture::Vram,
            addr: offset,
        };
        self.write_bytes(at, &value.to_le_bytes(), &AtomicBool::new(false))
            .is_ok()
    }

    fn msg_read(
        &self,
        iova: u64,
        buf: &mut [u8],
        window: Option<usize>,
        abort: &AtomicBool,
    ) -> Result<(), MemFault> {
        let data = self
            .msg_request(
                MsgOp::Read {
                    addr: iova,
                    len: buf.len(),
                },
                window,
                abort,
            )
            .map_err(|k| fault(k, Aperture::Sys, iova, false))?;
        if data.len() != buf.len() {
            return Err(fault(FaultKind::MsgDma, Aperture::Sys, iova, false));
        }
        buf.copy_from_slice(&data);
        if let Some(w) = window {
            self.peer_windows.record(w, false, buf.len() as u64);
        }
        Ok(())
    }

    fn msg_write(
        &self,
        iova: u64,
        data: &[u8],
        window: Option<usize>,
        abort: &AtomicBool,
    ) -> Result<(), MemFault> {
        self.msg_request(
            MsgOp::Write {
                addr: iova,
                data: data.to_vec(),
            },
            window,
            abort,
        )
        .map_err(|k| fault(k, Aperture::Sys, iova, true))?;
        if let Some(w) = window {
            self.peer_windows.record(w, true, data.len() as u64);
        }
        Ok(())
    }

    fn msg_request(
        &self,
        op: MsgOp,
        window: Option<usize>,
        abort: &AtomicBool,
    ) -> Result<Vec<u8>, FaultKind> {
        let (reply, rx) = mpsc::sync_channel(1);
        // Dropped on every return from here (the request then reads as abandoned).
        let waiting = Arc::new(());
        self.msg_tx
            .send(MsgDmaRequest {
                op,
                reply,
                waiter: Arc::downgrade(&waiting),
                queued: Instant::now(),
                window,
            })
            .map_err(|_| FaultKind::MsgDma)?;
        self.kick();
        let deadline = Instant::now() + MSG_DMA_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(10)) {
                Ok(Ok(data)) => return Ok(data),
                Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => return Err(FaultKind::MsgDma),
                Err(RecvTimeoutError::Timeout) => {
                    if abort.load(Ordering::Acquire) || self.is_shutdown() {
                        return Err(FaultKind::Aborted);
                    }
                    if Instant::now() > deadline {
                        return Err(FaultKind::MsgDma);
                    }
                }
            }
        }
    }
}

/// The physical segments of an access ([`EngineEnv::translate`]): the address itself, or a
/// `VIRT` address's translation page by page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segs {
    /// A physical address: itself.
    One([(Addr, u64); 1]),
    /// A translated `VIRT` address.
    Many(Vec<(Addr, u64)>),
}

impl std::ops::Deref for Segs {
    type Target = [(Addr, u64)];

    fn deref(&self) -> &[(Addr, u64)] {
        match self {
            Segs::One(one) => one,
            Segs::Many(v) => v,
        }
    }
}

/// Does any physical segment need the DMA space (SYS)?
fn any_sys(segs: &[(Addr, u64)]) -> bool {
    segs.iter().any(|(a, _)| a.aperture == Aperture::Sys)
}

/// What a fault record needs from the device (one engine's access).
struct Sink<'a> {
    env: &'a EngineEnv,
    abort: &'a AtomicBool,
}

impl FaultSink for Sink<'_> {
    fn write_record(&self, at: Addr, bytes: &[u8]) -> Result<(), bool> {
        match self.env.write_bytes(at, bytes, self.abort) {
            Ok(_) => Ok(()),
            Err(f) => Err(f.kind == FaultKind::Aborted),
        }
    }
    fn signal(&self, vector: usize) {
        self.env.signal(vector);
    }
    fn clock_ns(&self) -> u64 {
        self.env.clock_ns()
    }
    fn shutting_down(&self) -> bool {
        self.env.is_shutdown()
    }
    fn doorbell(&self) -> &SharedPage {
        self.env.doorbell()
    }
    fn trace_fault(&self, engine: usize, rec: &crate::mmu::fault_ring::Record, written: bool) {
        if self.env.tracing() {
            self.env.trace_line(format_args!(
                "eng={engine} op=FAULT ctx={} access={} addr={:#x} level={} seq={} result={}{}",
                rec.context,
                rec.access.name(),
                rec.addr,
                rec.level,
                rec.seq,
                rec.reason.name(),
                if written { "" } else { ",dropped" }
            ));
        }
    }
}

/// The pieces of `[addr, addr + len)` in the client's DMA_MAP windows, appended to `out`.
fn dma_pieces_into<'h>(
    dma: &'h DmaSpace,
    addr: u64,
    len: u64,
    write: bool,
    out: &mut Vec<Piece<'h>>,
) -> Result<(), MemFault> {
    dma.resolve_each(Iova(addr), len, write, |s| {
        out.push(match s {
            Segment::Mapped { slice, .. } => Piece::Slice { slice, peer: None },
            Segment::File { slice, .. } => Piece::File(slice),
            Segment::Message { iova, len } => Piece::Msg {
                iova: iova.raw(),
                len,
                window: None,
            },
        })
    })
    .map_err(|e| sys_fault(&e, addr, write))
}

/// [`dma_pieces_into`] a new list.
fn dma_pieces<'h>(
    dma: &'h DmaSpace,
    addr: u64,
    len: u64,
    write: bool,
) -> Result<Vec<Piece<'h>>, MemFault> {
    let mut out = Vec::with_capacity(1);
    dma_pieces_into(dma, addr, len, write, &mut out)?;
    Ok(out)
}

/// Copies between two piece lists of equal total length (all direct slices; dropped
/// destination pieces take their bytes and keep nothing).
fn copy_pieces(src: &[Piece<'_>], dst: &[Piece<'_>]) {
    fn slices<'a>(ps: &[Piece<'a>]) -> Vec<(Option<VolatileSlice<'a, ()>>, usize)> {
        ps.iter()
            .filter_map(|p| match p {
                Piece::Slice { slice, .. } => Some((Some(*slice), slice.len())),
                Piece::Dropped { len, .. } => Some((None, usize_of(*len))),
                Piece::File(_) | Piece::Msg { .. } => None,
            })
            .collect()
    }
    let (src, dst) = (slices(src), slices(dst));
    let (mut i, mut io, mut j, mut jo) = (0usize, 0usize, 0usize, 0usize);
    while let (Some((s, slen)), Some((d, dlen))) = (src.get(i), dst.get(j)) {
        let n = (slen - io).min(dlen - jo);
        if let (Some(s), Some(d)) = (s, d) {
            if let (Ok(a), Ok(b)) = (s.subslice(io, n), d.subslice(jo, n)) {
                a.copy_to_volatile_slice(b);
            }
        }
        io += n;
        jo += n;
        if io == *slen {
            i += 1;
            io = 0;
        }
        if jo == *dlen {
            j += 1;
            jo = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use vugpu_backend::{BarDecode, ClientId, DmaPermissions, VramOptions};

    use super::*;

    const MIB: u64 = 1 << 20;

    /// gpu0's environment and a fabric where gpu1 (16 MiB) may decode; both served to one
    /// client. Guest RAM: 1 MiB at 16 MiB.
    fn env() -> (EngineEnv, Arc<Fabric>, PeerId) {
        env_with(false)
    }

    /// [`env`], with or without `--inject vram-write-drop`.
    fn env_with(vram_write_drop: bool) -> (EngineEnv, Arc<Fabric>, PeerId) {
        let fabric = Fabric::new(2);
        let v = Arc::new(Vram::new(&VramOptions::memfd(4 * MIB)).unwrap());
        let me = fabric.join("gpu0", v.clone()).unwrap();
        let pv = Arc::new(Vram::new(&VramOptions::memfd(16 * MIB)).unwrap());
        let peer = fabric.join("gpu1", pv).unwrap();
        for p in [me, peer] {
            fabric.set_client(p, Some(ClientId(1))).unwrap();
        }
        let (env, _rx) = EngineEnv::new(EnvParts {
            vram: v,
            fabric: fabric.clone(),
            me,
            name: "gpu0".into(),
            doorbell: SharedPage::new(0x20_1000, 0x20_0000).unwrap(),
            msix: Msix::new(4, &[]),
            dev_ctl: DeviceControl(0),
            command: 0x6,
            trace: None,
            trace_max_bytes: u64::MAX,
            dma_limits: DmaLimits::default(),
            timing: PollTiming::default(),
            mmu: Mmu::new(true, 5, crate::mmu::MmuInject::default()),
            vram_write_drop,
        })
        .unwrap();
        let ram = vugpu_backend::Vram::new(&VramOptions::memfd(MIB)).unwrap();
        // A sealed memfd of the right size: reuse a VRAM file (sealed against shrinking).
        let fd = ram.as_fd().try_clone_to_owned().unwrap();
        env.dma_mut()
            .map(Iova(16 * MIB), MIB, 0, DmaPermissions::READ_WRITE, Some(fd))
            .unwrap();
        (env, fabric, peer)
    }

    fn sys(addr: u64) -> Addr {
        Addr {
            aperture: Aperture::Sys,
            addr,
        }
    }

    #[track_caller]
    fn unmapped_at(r: Result<Reach, MemFault>, at: u64) {
        let f = r.unwrap_err();
        assert_eq!((f.kind, f.at.addr), (FaultKind::SysUnmapped, at));
    }

    #[test]
    fn wrapping_accesses_fault_without_touching_memory() {
        let (e, fabric, peer) = env();
        let no = AtomicBool::new(false);
        let mut buf = [0u8; 16];
        unmapped_at(e.read_bytes(sys(u64::MAX - 7), &mut buf, &no), u64::MAX - 7);
        fabric
            .set_bar(peer, BarDecode::new(u64::MAX - 32 * MIB + 1, 16 * MIB))
            .unwrap();
        unmapped_at(e.read_bytes(sys(u64::MAX - 7), &mut buf, &no), u64::MAX - 7);
        unmapped_at(e.write_bytes(sys(u64::MAX), &buf, &no), u64::MAX);
        // The last decodable BAR: its last bytes work, one past is a bus error, and a range
        // running off its end faults at the first byte past it before anything is written.
        let last = u64::MAX - 16 * MIB + 1 - 16;
        e.write_bytes(sys(last), &[7u8; 16], &no).unwrap();
        unmapped_at(e.write_bytes(sys(last + 8), &buf, &no), last + 16);
        e.read_bytes(sys(last), &mut buf, &no).unwrap();
        assert_eq!(buf, [7u8; 16], "the straddling write changed nothing");
        unmapped_at(e.store_u64(sys(last + 16), 1, &no), last + 16);
        assert!(e
            .copy_chunk(sys(last), sys(u64::MAX - 15), 16, &no)
            .is_err());
    }

    #[test]
    fn bus_walk_crosses_from_guest_ram_into_a_peer_bar() {
        let (e, fabric, peer) = env();
        let no = AtomicBool::new(false);
        // gpu1's BAR right after guest RAM: one access covers both.
        fabric
            .set_bar(peer, BarDecode::new(32 * MIB, 16 * MIB))
            .unwrap();
        unmapped_at(e.write_bytes(sys(17 * MIB - 8), &[1u8; 16], &no), 17 * MIB);
        fabric
            .set_bar(peer, BarDecode::new(16 * MIB, 16 * MIB))
            .unwrap();
        // Now the BAR covers the guest RAM window too and wins over it.
        let r = e.write_bytes(sys(16 * MIB), &[2u8; 8], &no).unwrap();
        assert_eq!(r.peer, Some(peer));
        assert_eq!(fabric.traffic_from(e.peer_id())[1].written, 8);
        // A member without a client is not routed: back to the guest RAM window.
        fabric.set_client(peer, None).unwrap();
        let r = e.write_bytes(sys(16 * MIB), &[2u8; 8], &no).unwrap();
        assert_eq!(r.peer, None);
        // The VRAM window registers go through the seam too.
        assert!(e.vram_write_u32(4 * MIB - 4, 9));
        assert_eq!(e.vram_read_u32(4 * MIB - 4), Some(9));
        assert_eq!(e.vram_read_u32(4 * MIB), None);
        assert!(!e.vram_write_u32(u64::MAX - 1, 9));
    }

    fn vram(addr: u64) -> Addr {
        Addr {
            aperture: Aperture::Vram,
            addr,
        }
    }

    /// `--inject vram-write-drop`: an engine COPY SYS→VRAM (and every other engine write into
    /// this GPU's VRAM, also through its BAR) completes and leaves VRAM unchanged; without it,
    /// VRAM changes. The CPU's window and reads are not affected.
    #[test]
    fn vram_write_drop_loses_engine_writes_into_vram_only() {
        for drop in [false, true] {
            let (e, fabric, peer) = env_with(drop);
            let no = AtomicBool::new(false);
            let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8 + 1).collect();
            e.write_bytes(sys(16 * MIB), &data, &no).unwrap();
            // COPY SYS→VRAM.
            e.copy_chunk(sys(16 * MIB), vram(MIB), 4096, &no).unwrap();
            let mut got = vec![0u8; 4096];
            e.read_bytes(vram(MIB), &mut got, &no).unwrap();
            if drop {
                assert_eq!(got, vec![0u8; 4096], "VRAM unchanged");
            } else {
                assert_eq!(got, data, "VRAM written");
            }
            // FILL, FENCE and ATOMIC on VRAM.
            e.write_data(vram(2 * MIB), &[0xa5; 64], &no).unwrap();
            e.store_u64(vram(2 * MIB + 64), 7, &no).unwrap();
            let (old, _) = e.atomic_add(vram(2 * MIB + 64), 5, &no).unwrap();
            let mut b = [0u8; 72];
            e.read_bytes(vram(2 * MIB), &mut b, &no).unwrap();
            let word = u64::from_le_bytes(b[64..].try_into().unwrap());
            if drop {
                assert_eq!((b[0], old, word), (0, 0, 0));
            } else {
                assert_eq!((b[0], old, word), (0xa5, 7, 12));
            }
            // Through this GPU's own BAR2 bus address (SYS): dropped too; a peer's VRAM is not
            // this GPU's.
            fabric
                .set_bar(e.peer_id(), BarDecode::new(64 * MIB, 4 * MIB))
                .unwrap();
            fabric
                .set_bar(peer, BarDecode::new(128 * MIB, 16 * MIB))
                .unwrap();
            let r = e.copy_chunk(sys(16 * MIB), sys(64 * MIB), 16, &no).unwrap();
            assert_eq!(r.1.peer, Some(e.peer_id()));
            e.copy_chunk(sys(16 * MIB), sys(128 * MIB), 16, &no)
                .unwrap();
            let mut b = [0u8; 16];
            e.read_bytes(vram(0), &mut b, &no).unwrap();
            assert_eq!(b[0], if drop { 0 } else { 1 });
            e.read_bytes(sys(128 * MIB), &mut b, &no).unwrap();
            assert_eq!(b[0], 1, "a peer's VRAM is written either way");
            // COPY VRAM→SYS reads VRAM as it is.
            e.vram_write_u32(3 * MIB, 0x1234_5678);
            e.copy_chunk(vram(3 * MIB), sys(16 * MIB + 8192), 4, &no)
                .unwrap();
            let mut b = [0u8; 4];
            e.read_bytes(sys(16 * MIB + 8192), &mut b, &no).unwrap();
            assert_eq!(u32::from_le_bytes(b), 0x1234_5678);
            // The VRAM_DATA window and other device writes (fault records) still work.
            assert!(e.vram_write_u32(4 * MIB - 4, 9));
            assert_eq!(e.vram_read_u32(4 * MIB - 4), Some(9));
            e.write_bytes(vram(8), &[3u8; 8], &no).unwrap();
            e.read_bytes(vram(8), &mut b, &no).unwrap();
            assert_eq!(b, [3u8; 4]);
            let lost = 4096 + 64 + 8 + 8 + 16;
            assert_eq!(e.vram_bytes_dropped(), if drop { lost } else { 0 });
        }
    }
}
