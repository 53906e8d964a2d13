//! The GPU: PCI function + register file + MSI-X + VRAM + DMA space, behind the protocol's
//! `DeviceBackend` seam.
//!
//! Regions (VFIO PCI numbering): 0 BAR0 registers (16 MiB, trapped except the doorbell page,
//! which is one sparse mmap area), 1 none, 2 BAR2 VRAM
//! (mmappable memfd, whole region, also served by REGION_READ/WRITE), 3-5 none (BAR2 is 64-bit),
//! 6 no ROM, 7 config space (4 KiB), 8 no VGA. IRQ indexes: 0 INTx and 1 MSI unsupported (count 0),
//! 2 MSI-X (count = vectors, EVENTFD | NORESIZE), 3 ERR (count 1, so QEMU wires AER), 4 REQ none.
//!
//! Resets (hw-spec §4): DEVICE_RESET and FLR restore the power-on state of config space, the
//! register file and MSI-X table/PBA; SOFT_RESET keeps config space. VRAM, DMA mappings and the
//! client's interrupt fds survive every reset; a client disconnect drops the mappings and fds.
//!
//! DMA engines ([`crate::engine`]) run on their own threads and share VRAM, the DMA space,
//! MSI-X and the doorbell page through an [`EngineEnv`]. Their errors come back as fault reports
//! that [`Gpu::process_engine_events`] turns into config-space error bits and vector 0
//! (hw-spec §5); their DMA messages for fd-less windows are handed to the event loop
//! ([`Gpu::next_msg_dma`]).

use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, MutexGuard, RwLockReadGuard};

use vmm_sys_util::eventfd::EventFd;
use vugpu_backend::{
    BarDecode, ClientId, DmaError, DmaLimits, DmaPermissions, DmaSpace, Fabric, FabricError, Iova,
    PeerId, SharedPage, Vram, VramError, VramOffset, VramOptions, WindowBacking,
};
use vugpu_protocol::backend::{
    irq_flags, region_flags, BackendError, BackendResult, DeviceBackend, DeviceInfo, DmaMapping,
    DmaUnmap, IrqAction, IrqData, IrqInfo, IrqSet, RegionInfo, RegionMmap, SparseArea,
};

use crate::engine::env::{EngineEnv, EnvParts, FaultReport, MsgDmaRequest, MsgOp, PollTiming};
use crate::engine::regs::{
    self as eregs, ErrorCode, DOORBELL_OFFSET, DOORBELL_SIZE, ENGINE_BASE, ENGINE_END, MAX_ENGINES,
};
use crate::engine::{peer_window, EngineMonitor, EngineSet};

use crate::irq::{EventFdNotifier, Notifier};
use crate::mmu::{self, Mmu, MmuInject};
use crate::msix::Msix;
use crate::pci::aer::{self, Aer};
use crate::pci::bar::{Bar, BarKind};
use crate::pci::capability::{CapWrite, Capability};
use crate::pci::dsn::DeviceSerialNumber;
use crate::pci::msix_cap::{
    self, MsixCap, MsixControl, MAX_VECTORS, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET,
};
use crate::pci::pcie::{self, DeviceControl, PciExpress};
use crate::pci::pm::PowerManagement;
use crate::pci::rebar::ResizableBar;
use crate::pci::{function, PciError, PciFunction, PciIdentity};
use crate::regs::{
    spec, RegisterContext, RegisterFile, RegisterParams, RegisterStats, REGISTER_FILE_SIZE,
};

/// Default Vendor ID (no in-tree Linux driver binds 0x1234:0x5647).
pub const DEFAULT_VENDOR_ID: u16 = 0x1234;
/// Default Device ID ("GV").
pub const DEFAULT_DEVICE_ID: u16 = 0x5647;
/// Default Subsystem Vendor ID.
pub const DEFAULT_SUBSYSTEM_VENDOR_ID: u16 = 0x1234;
/// Default Subsystem ID.
pub const DEFAULT_SUBSYSTEM_ID: u16 = 0x0001;
/// Revision ID.
pub const REVISION: u8 = 0x01;
/// Class code: 3D controller (0x03_02), prog-if 0.
pub const CLASS_CODE: u32 = 0x03_02_00;
/// Default number of MSI-X vectors.
pub const DEFAULT_MSIX_VECTORS: u16 = 16;
/// Default number of DMA engines.
pub const DEFAULT_ENGINES: usize = 4;
/// Default byte limit of the `--trace` file (1 GiB).
pub const DEFAULT_TRACE_MAX_BYTES: u64 = 1 << 30;
/// BAR0 size.
pub const BAR0_SIZE: u64 = 16 << 20;
/// Config space region size.
pub const CONFIG_SIZE: u64 = 4096;
/// Config-space offset of BAR2 (low dword; the high dword follows).
const BAR2_OFFSET: u16 = 0x18;
/// End of the PBA window in BAR0.
pub const MSIX_PBA_END: u64 = MSIX_PBA_OFFSET as u64 + 0x1000;

/// Capability offsets (hw-spec §1.2, §1.4).
pub mod cap_offset {
    /// Power Management.
    pub const PM: u16 = 0x40;
    /// MSI-X.
    pub const MSIX: u16 = 0x50;
    /// PCI Express.
    pub const PCIE: u16 = 0x60;
    /// AER.
    pub const AER: u16 = 0x100;
    /// Resizable BAR.
    pub const REBAR: u16 = 0x148;
    /// Device Serial Number.
    pub const DSN: u16 = 0x154;
}

/// Region indexes.
pub mod region {
    /// BAR0: registers.
    pub const BAR0: u32 = 0;
    /// BAR2: VRAM.
    pub const BAR2: u32 = 2;
    /// Expansion ROM.
    pub const ROM: u32 = 6;
    /// Config space.
    pub const CONFIG: u32 = 7;
    /// VGA.
    pub const VGA: u32 = 8;
    /// Number of regions.
    pub const COUNT: u32 = 9;
}

/// IRQ indexes.
pub mod irq_index {
    /// INTx.
    pub const INTX: u32 = 0;
    /// MSI.
    pub const MSI: u32 = 1;
    /// MSI-X.
    pub const MSIX: u32 = 2;
    /// Error (AER) notification.
    pub const ERR: u32 = 3;
    /// Device request.
    pub const REQ: u32 = 4;
    /// Number of IRQ indexes.
    pub const COUNT: u32 = 5;
}

/// Fault injection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Injections {
    /// These MSI-X vectors are never signalled.
    pub msix_dead: Vec<u16>,
    /// Config-space dwords (dword-aligned offsets below 4096) whose stored value no client write
    /// changes: a register stuck at its value, for proving that guest write/read-back checks
    /// fail. Side effects of the write (FLR, BAR resize, MSI-X control) still happen.
    pub cfg_stuck: Vec<u16>,
    /// Deliberate MMU breakage (`mmu-stale-tlb`, `mmu-no-fault-irq`, `mmu-ignore-atomic-perm`).
    pub mmu: MmuInject,
    /// `vram-write-drop`: the engines' writes into this GPU's VRAM (COPY/FILL/FENCE/TIMESTAMP/
    /// ATOMIC destinations, through any aperture) complete but leave VRAM unchanged; the CPU's
    /// accesses (BAR2, `VRAM_DATA`) still work.
    pub vram_write_drop: bool,
}

/// How to build a [`Gpu`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuConfig {
    /// Name in logs, the trace, statistics and the fabric (`gpu0`, `gpu1`, ...).
    pub name: String,
    /// VRAM size and backing.
    pub vram: VramOptions,
    /// Number of MSI-X vectors (1..=2048).
    pub msix_vectors: u16,
    /// IDs.
    pub identity: PciIdentity,
    /// Device Serial Number.
    pub serial: u64,
    /// Fault injection.
    pub inject: Injections,
    /// Number of DMA engines (0-16); needs `msix_vectors >= engines + 1`.
    pub engines: usize,
    /// How engines poll their doorbell.
    pub engine_timing: PollTiming,
    /// Append a line per engine memory transaction to this file.
    pub trace: Option<PathBuf>,
    /// Signal the ERR irq (index 3) on unmasked AER errors (QEMU stops the VM on it).
    pub err_irq: bool,
    /// What one client's DMA_MAPs may make the server hold (windows, fds, bytes).
    pub dma_limits: DmaLimits,
    /// Most bytes written to the trace file; lines beyond are counted, not written.
    pub trace_max_bytes: u64,
}

impl GpuConfig {
    /// Defaults of hw-spec §1 with `vram_size` bytes of memfd VRAM.
    pub fn new(vram_size: u64) -> Self {
        GpuConfig {
            name: "gpu0".to_string(),
            vram: VramOptions::memfd(vram_size),
            msix_vectors: DEFAULT_MSIX_VECTORS,
            identity: PciIdentity {
                vendor_id: DEFAULT_VENDOR_ID,
                device_id: DEFAULT_DEVICE_ID,
                subsystem_vendor_id: DEFAULT_SUBSYSTEM_VENDOR_ID,
                subsystem_id: DEFAULT_SUBSYSTEM_ID,
                revision: REVISION,
                class_code: CLASS_CODE,
            },
            serial: 0,
            inject: Injections::default(),
            engines: DEFAULT_ENGINES,
            engine_timing: PollTiming::default(),
            trace: None,
            err_irq: false,
            dma_limits: DmaLimits::default(),
            trace_max_bytes: DEFAULT_TRACE_MAX_BYTES,
        }
    }
}

/// Errors building a [`Gpu`].
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// `--inject msix-dead=N` names a vector the device does not have.
    #[error("msix-dead={vector}: the device has only {vectors} MSI-X vectors")]
    BadInjection {
        /// Requested vector.
        vector: u16,
        /// Vectors.
        vectors: u16,
    },
    /// `--inject cfg-stuck=OFFSET` is not a dword-aligned config-space offset.
    #[error("cfg-stuck={0:#x}: not a dword-aligned offset below 0x1000")]
    BadConfigInjection(u16),
    /// Vector count outside 1..=2048.
    #[error("invalid MSI-X vector count {0}: must be 1..=2048")]
    BadVectors(u16),
    /// The config-space layout could not be built.
    #[error("config space: {0}")]
    Pci(#[from] PciError),
    /// VRAM could not be created.
    #[error(transparent)]
    Vram(#[from] VramError),
    /// VRAM size not supported by the Resizable BAR capability.
    #[error("VRAM size {0:#x} not supported (1 MiB .. 128 TiB, power of two)")]
    VramSize(u64),
    /// More engines than the device supports.
    #[error("{0} DMA engines requested; at most {MAX_ENGINES}")]
    TooManyEngines(usize),
    /// Not enough MSI-X vectors for the engines.
    #[error("{engines} DMA engines need at least {} MSI-X vectors (vector 0 + one per engine); --msix-vectors is {vectors}", engines + 1)]
    TooFewVectors {
        /// Engines.
        engines: usize,
        /// Vectors.
        vectors: u16,
    },
    /// The doorbell page could not be created.
    #[error("cannot create the doorbell page: {0}")]
    Doorbell(#[source] VramError),
    /// Engine threads or their event fd could not be created.
    #[error("cannot start the DMA engines: {0}")]
    Engines(#[source] std::io::Error),
    /// The GPU could not join the fabric.
    #[error(transparent)]
    Fabric(#[from] FabricError),
    /// The trace file could not be opened.
    #[error("cannot open trace file {path}: {source}")]
    Trace {
        /// Path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Device-level counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GpuStats {
    /// Function Level Resets.
    pub flrs: u64,
    /// DEVICE_RESETs.
    pub device_resets: u64,
    /// SOFT_RESETs.
    pub soft_resets: u64,
    /// BAR0 accesses that straddle two areas (registers, MSI-X table, PBA, reserved).
    pub bad_bar0_accesses: u64,
    /// Client disconnects.
    pub disconnects: u64,
    /// Engine errors reported (vector 0).
    pub engine_errors: u64,
    /// Engine errors that set an AER Uncorrectable Status bit.
    pub aer_errors: u64,
}

/// The GPU model.
#[derive(Debug)]
pub struct Gpu {
    pci: PciFunction,
    regs: RegisterFile,
    err_notifier: Option<Box<dyn Notifier>>,
    env: Arc<EngineEnv>,
    engines: EngineSet,
    msg_rx: Receiver<MsgDmaRequest>,
    vectors: u16,
    err_irq: bool,
    cfg_stuck: Vec<u16>,
    stats: GpuStats,
}

/// The register file's view of the rest of the device.
struct RegCtx<'a> {
    env: &'a EngineEnv,
    ctl: MsixControl,
}

impl RegisterContext for RegCtx<'_> {
    fn vram_read_u32(&mut self, offset: u64) -> Option<u32> {
        self.env.vram_read_u32(offset)
    }
    fn vram_write_u32(&mut self, offset: u64, value: u32) -> bool {
        self.env.vram_write_u32(offset, value)
    }
    fn signal(&mut self, vector: u32) {
        self.env.msix().signal(vector as usize, self.ctl);
    }
    fn irq_count(&self) -> u64 {
        self.env.msix().stats().sent
    }
    fn clock_ns(&self) -> u64 {
        self.env.clock_ns()
    }
}

/// Which part of BAR0 an access falls in.
enum Bar0Area {
    Registers,
    Mmu(u32),
    PeerWindow(usize, u32),
    Engine(usize, u32),
    Table(usize),
    Pba(usize),
    Doorbell(u64),
    Reserved,
    Straddle,
}

fn bar0_area(offset: u64, len: usize) -> Bar0Area {
    let Some(end) = u64::try_from(len).ok().and_then(|l| offset.checked_add(l)) else {
        return Bar0Area::Straddle;
    };
    let table = u64::from(MSIX_TABLE_OFFSET);
    let pba = u64::from(MSIX_PBA_OFFSET);
    let doorbell_end = DOORBELL_OFFSET + DOORBELL_SIZE;
    let areas = [
        (0, ENGINE_BASE),
        (ENGINE_BASE, ENGINE_END),
        (ENGINE_END, REGISTER_FILE_SIZE),
        (table, pba),
        (pba, MSIX_PBA_END),
        (MSIX_PBA_END, DOORBELL_OFFSET),
        (DOORBELL_OFFSET, doorbell_end),
        (doorbell_end, BAR0_SIZE),
    ];
    let Some(i) = areas.iter().position(|&(s, e)| offset >= s && offset < e) else {
        return Bar0Area::Straddle;
    };
    if end > areas[i].1 {
        return Bar0Area::Straddle;
    }
    match i {
        0 => match (
            peer_window::decode_offset(offset),
            mmu::regs::decode_offset(offset),
        ) {
            (Some((w, reg)), _) => Bar0Area::PeerWindow(w, reg),
            (None, Some(reg)) => Bar0Area::Mmu(reg),
            (None, None) => Bar0Area::Registers,
        },
        2 => Bar0Area::Registers,
        1 => match eregs::decode_engine_offset(offset) {
            Some((e, off)) => Bar0Area::Engine(e, off),
            None => Bar0Area::Straddle,
        },
        3 => Bar0Area::Table((offset - table) as usize),
        4 => Bar0Area::Pba((offset - pba) as usize),
        6 => Bar0Area::Doorbell(offset - DOORBELL_OFFSET),
        _ => Bar0Area::Reserved,
    }
}

/// A 4-byte aligned dword access (engine registers, doorbell page).
fn dword(offset: u64, len: usize) -> Option<()> {
    (len == 4 && offset.is_multiple_of(4)).then_some(())
}

fn dword_value(offset: u64, data: &[u8]) -> Option<u32> {
    dword(offset, data.len())?;
    <[u8; 4]>::try_from(data).ok().map(u32::from_le_bytes)
}

/// The AER header log of a failing engine request (hw-spec §5): a 4-DW memory request TLP.
fn tlp_header(f: &FaultReport) -> [u32; 4] {
    let mut dw0: u32 = if f.write { 0x6000_0001 } else { 0x2000_0001 };
    if f.relaxed_ordering {
        dw0 |= 1 << 13;
    }
    if f.no_snoop {
        dw0 |= 1 << 12;
    }
    [
        dw0,
        0x0000_00ff | ((f.engine as u32 & 0xff) << 8),
        (f.addr >> 32) as u32,
        (f.addr as u32) & !3,
    ]
}

fn invalid(msg: impl Into<String>) -> BackendError {
    BackendError::Invalid(msg.into())
}

impl Gpu {
    /// Builds the device in its power-on state, alone in a fabric of its own (its own BAR is
    /// still routed, hw-spec §6.9).
    pub fn new(config: &GpuConfig) -> Result<Self, GpuError> {
        Self::in_fabric(config, &Fabric::new(1))
    }

    /// Builds the device in its power-on state as a member of `fabric`: DMA to the bus address
    /// of another member's VRAM BAR reaches that member's VRAM directly (hw-spec §6.9).
    pub fn in_fabric(config: &GpuConfig, fabric: &Arc<Fabric>) -> Result<Self, GpuError> {
        let vectors = config.msix_vectors;
        let msix_cap = MsixCap::new(vectors).ok_or(GpuError::BadVectors(vectors))?;
        for &dead in &config.inject.msix_dead {
            if dead >= vectors {
                return Err(GpuError::BadInjection {
                    vector: dead,
                    vectors,
                });
            }
        }
        if let Some(&off) = config
            .inject
            .cfg_stuck
            .iter()
            .find(|&&off| off % 4 != 0 || off >= 4096)
        {
            return Err(GpuError::BadConfigInjection(off));
        }
        if config.engines > MAX_ENGINES {
            return Err(GpuError::TooManyEngines(config.engines));
        }
        if usize::from(vectors) < config.engines + 1 {
            return Err(GpuError::TooFewVectors {
                engines: config.engines,
                vectors,
            });
        }
        let vram = Arc::new(Vram::new(&config.vram)?);
        let rebar = ResizableBar::new(2, vram.size()).ok_or(GpuError::VramSize(vram.size()))?;
        let bars = vec![
            Bar::new(
                0,
                BarKind::Mem32 {
                    prefetchable: false,
                },
                BAR0_SIZE,
            )
            .map_err(PciError::from)?,
            Bar::new(2, BarKind::Mem64 { prefetchable: true }, vram.size())
                .map_err(PciError::from)?,
        ];
        let caps: Vec<(u16, Box<dyn Capability>)> = vec![
            (cap_offset::PM, Box::new(PowerManagement)),
            (cap_offset::MSIX, Box::new(msix_cap)),
            (cap_offset::PCIE, Box::new(PciExpress)),
            (cap_offset::AER, Box::new(Aer)),
            (cap_offset::REBAR, Box::new(rebar)),
            (
                cap_offset::DSN,
                Box::new(DeviceSerialNumber::new(config.serial)),
            ),
        ];
        let pci = PciFunction::new(&config.identity, bars, caps)?;
        debug_assert!(MAX_VECTORS as usize * 16 <= (MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET) as usize);
        let trace = match &config.trace {
            None => None,
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| GpuError::Trace {
                        path: path.clone(),
                        source,
                    })?,
            ),
        };
        let doorbell = SharedPage::new(DOORBELL_OFFSET + DOORBELL_SIZE, DOORBELL_OFFSET)
            .map_err(GpuError::Doorbell)?;
        let regs = RegisterFile::new(RegisterParams {
            num_vectors: u32::from(vectors),
            vram_size: vram.size(),
            engines: config.engines as u32,
        });
        let me = fabric.join(&config.name, vram.clone())?;
        let (env, msg_rx) = EngineEnv::new(EnvParts {
            vram,
            fabric: fabric.clone(),
            me,
            name: config.name.clone(),
            doorbell,
            msix: Msix::new(vectors, &config.inject.msix_dead),
            dev_ctl: pcie::device_control(pci.config(), cap_offset::PCIE),
            command: pci.command(),
            trace,
            trace_max_bytes: config.trace_max_bytes,
            dma_limits: config.dma_limits,
            timing: config.engine_timing,
            mmu: Mmu::new(
                mmu::present(config.engines as u32, u32::from(vectors)),
                1 + config.engines as u32,
                config.inject.mmu,
            ),
            vram_write_drop: config.inject.vram_write_drop,
        })
        .map_err(GpuError::Engines)?;
        let env = Arc::new(env);
        env.set_msix_control(msix_cap::msix_control(pci.config(), cap_offset::MSIX));
        let engines = EngineSet::start(env.clone(), config.engines).map_err(GpuError::Engines)?;
        Ok(Gpu {
            pci,
            regs,
            err_notifier: None,
            env,
            engines,
            msg_rx,
            vectors,
            err_irq: config.err_irq,
            cfg_stuck: config.inject.cfg_stuck.clone(),
            stats: GpuStats::default(),
        })
    }

    /// The PCI function (config space).
    pub fn pci(&self) -> &PciFunction {
        &self.pci
    }

    /// VRAM.
    pub fn vram(&self) -> &Vram {
        self.env.vram()
    }

    /// The DMA address space (held for reading: engines keep running, DMA_MAP/UNMAP wait).
    pub fn dma(&self) -> RwLockReadGuard<'_, DmaSpace> {
        self.env.dma()
    }

    /// MSI-X state (locked: engine threads wait while it is held).
    pub fn msix(&self) -> MutexGuard<'_, Msix> {
        self.env.msix()
    }

    /// Reporting access to the DMA engines (for the control socket).
    pub fn engine_monitor(&self) -> EngineMonitor {
        self.engines.monitor()
    }

    /// The eventfd that is readable when engine faults or DMA messages wait for
    /// [`Gpu::process_engine_events`] / [`Gpu::next_msg_dma`].
    pub fn engine_events(&self) -> &EventFd {
        self.env.events_fd()
    }

    /// Acknowledges the [`engine_events`](Self::engine_events) eventfd.
    ///
    /// Only the event loop may call this, and only right before it drains both queues
    /// ([`process_engine_events`](Self::process_engine_events), then
    /// [`next_msg_dma`](Self::next_msg_dma) until empty): engines queue first and signal
    /// after, so every item queued before the acknowledgement is drained and every later one
    /// leaves the eventfd readable. Nothing reached from a client request acknowledges it: a
    /// trapped RING_TAIL write used to, and when the engine it woke queued a DMA message in
    /// that instant, the wakeup was consumed and the message waited for the next engine event.
    pub fn ack_engine_events(&self) {
        self.env.clear_events();
    }

    /// The next DMA message an engine waits for (the event loop performs it with the session).
    ///
    /// An engine resolves its access against the DMA space and then queues the message; a
    /// DMA_UNMAP served in between (the queue may wait while the event loop answers client
    /// requests) removes the window without touching the queue. Such a request is failed here
    /// (the engine stops with `MSG_DMA_FAILED`, as if the client had refused it) and never
    /// handed out: no DMA message for a window after its DMA_UNMAP returned.
    pub fn next_msg_dma(&self) -> Option<MsgDmaRequest> {
        loop {
            let req = self.msg_rx.try_recv().ok()?;
            let (addr, len, write) = match &req.op {
                MsgOp::Read { addr, len } => (*addr, *len, false),
                MsgOp::Write { addr, data } => (*addr, data.len(), true),
            };
            if req.abandoned() || self.msg_allowed(req.window, addr, len as u64, write) {
                return Some(req);
            }
            let _ = req.reply.send(Err(format!(
                "DMA window at {addr:#x}+{len:#x} unmapped before its message was sent"
            )));
        }
    }

    /// May a DMA message for `[addr, addr + len)` be sent now: through peer window `window`
    /// (hw-spec §6.10) if it is one, else through a message-only DMA window.
    pub fn msg_allowed(&self, window: Option<usize>, addr: u64, len: u64, write: bool) -> bool {
        match window {
            Some(w) => self.env.peer_windows().allows(w, addr, len, write),
            None => self.msg_dma_allowed(addr, len, write),
        }
    }

    /// Is `[addr, addr + len)` inside one message-only (fd-less) DMA window that grants the
    /// access: may a DMA message for it be sent now.
    pub fn msg_dma_allowed(&self, addr: u64, len: u64, write: bool) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        self.dma().find(Iova(addr)).is_some_and(|w| {
            let allowed = if write { w.perms.write } else { w.perms.read };
            // `iova + size` does not overflow: DMA_MAP refuses such windows.
            allowed && w.backing == WindowBacking::MessageOnly && end <= w.iova.raw() + w.size
        })
    }

    /// Reports queued engine errors (hw-spec §5): config-space error bits, `ERR_CAUSE`,
    /// vector 0. Returns how many were handled. Leaves the engine eventfd alone (see
    /// [`ack_engine_events`](Self::ack_engine_events)), so it is safe from any region access.
    pub fn process_engine_events(&mut self) -> usize {
        let faults = self.env.take_faults();
        for f in &faults {
            self.report_engine_fault(f);
        }
        faults.len()
    }

    fn report_engine_fault(&mut self, f: &FaultReport) {
        self.stats.engine_errors += 1;
        let bit = match f.code {
            ErrorCode::SysUnmapped | ErrorCode::MsgDmaFailed => {
                Some(aer::UNCOR_UNSUPPORTED_REQUEST)
            }
            ErrorCode::SysPermission => Some(aer::UNCOR_COMPLETER_ABORT),
            ErrorCode::VramRange | ErrorCode::Poisoned => Some(aer::UNCOR_INTERNAL),
            _ => None,
        };
        if let Some(bit) = bit {
            self.stats.aer_errors += 1;
            let header = if bit == aer::UNCOR_INTERNAL {
                [0; 4]
            } else {
                tlp_header(f)
            };
            let serr = self.pci.command() & function::COMMAND_SERR != 0;
            let cs = self.pci.config_mut();
            let unmasked = aer::record_uncorrectable(cs, cap_offset::AER, bit, header);
            let mut dev_sta = if aer::is_fatal(cs, cap_offset::AER, bit) {
                pcie::DEV_STA_FED
            } else {
                pcie::DEV_STA_NFED
            };
            let mut status = 0;
            if bit == aer::UNCOR_UNSUPPORTED_REQUEST {
                dev_sta |= pcie::DEV_STA_URD;
                status |= function::STATUS_RECEIVED_MASTER_ABORT;
            } else if bit == aer::UNCOR_COMPLETER_ABORT {
                status |= function::STATUS_RECEIVED_TARGET_ABORT;
            }
            if unmasked && serr {
                status |= function::STATUS_SIGNALED_SYSTEM_ERROR;
            }
            pcie::report_error(cs, cap_offset::PCIE, dev_sta);
            if status != 0 {
                cs.set_bits(0x06, 2, status);
            }
            if unmasked && self.err_irq {
                self.signal_error();
            }
        }
        // f.engine < MAX_ENGINES (16): the shift stays inside the u32.
        self.regs.set_bits(spec::offset::ERR_CAUSE, 1 << f.engine);
        self.env.signal(0);
    }

    /// Device counters.
    pub fn stats(&self) -> GpuStats {
        self.stats
    }

    /// Register-file counters.
    pub fn register_stats(&self) -> RegisterStats {
        self.regs.stats()
    }

    /// PCIe Device Control, as read on every DMA transaction (No Snoop / Relaxed Ordering).
    pub fn device_control(&self) -> DeviceControl {
        pcie::device_control(self.pci.config(), cap_offset::PCIE)
    }

    /// MSI-X Enable, Function Mask and Bus Master Enable, as config space has them now.
    fn msix_control(&self) -> MsixControl {
        msix_cap::msix_control(self.pci.config(), cap_offset::MSIX)
    }

    /// Copies Device Control, Command and the MSI-X control bits to where the engines read
    /// them, and tells the fabric where BAR2 decodes now.
    fn mirror_config(&self) {
        self.env.set_device_control(self.device_control());
        self.env.set_command(self.pci.command());
        self.env.set_msix_control(self.msix_control());
        // Never larger than VRAM (Resizable BAR offers only sizes up to it): cannot fail.
        let _ = self
            .env
            .fabric()
            .set_bar(self.env.peer_id(), self.bar2_decode());
    }

    /// Where BAR2 decodes on the bus: its programmed address and current (resized) size while
    /// Memory Space Enable is set; `None` while it is clear, the BAR is unassigned (address 0)
    /// or its last byte would be the last byte of the 64-bit space (hw-spec §6.9).
    pub fn bar2_decode(&self) -> Option<BarDecode> {
        if self.pci.command() & function::COMMAND_MEMORY == 0 {
            return None;
        }
        let cs = self.pci.config();
        let lo = u64::from(cs.get_u32(BAR2_OFFSET) & !0xf);
        let hi = u64::from(cs.get_u32(BAR2_OFFSET + 4));
        BarDecode::new((hi << 32) | lo, self.pci.bar_size(2))
    }

    /// A client connected: peer-to-peer routing connects this GPU only with GPUs served to the
    /// same client (`client`, e.g. its pid; `None` if unknown: no peer routing), hw-spec §6.9.
    pub fn client_connected(&mut self, client: Option<ClientId>) {
        let _ = self.env.fabric().set_client(self.env.peer_id(), client);
    }

    /// The GPU's name.
    pub fn name(&self) -> &str {
        self.env.name()
    }

    /// This GPU in its fabric.
    pub fn peer_id(&self) -> PeerId {
        self.env.peer_id()
    }

    /// Function Level Reset / DEVICE_RESET: power-on state; VRAM, DMA maps and client fds kept.
    fn function_reset(&mut self) {
        self.engines.reset_all();
        self.env.mmu().reset();
        // Faults reported before the reset describe state that no longer exists.
        self.env.take_faults();
        self.pci.reset();
        self.regs.reset();
        self.env.peer_windows().reset();
        self.env.msix().reset();
        self.mirror_config();
    }

    /// SOFT_RESET: register file, engines and PBA; config space kept.
    fn soft_reset(&mut self) {
        self.stats.soft_resets += 1;
        self.engines.reset_all();
        self.env.mmu().reset();
        self.env.take_faults();
        self.regs.reset();
        self.env.peer_windows().reset();
        self.env.msix().soft_reset();
    }

    /// Signals the ERR (AER) notifier if the client assigned one.
    pub fn signal_error(&mut self) -> bool {
        self.err_notifier
            .as_ref()
            .is_some_and(|n| n.notify().is_ok())
    }

    fn bar0_read(&mut self, offset: u64, data: &mut [u8]) {
        match bar0_area(offset, data.len()) {
            Bar0Area::Registers => {
                let ctl = self.msix_control();
                let mut ctx = RegCtx {
                    env: &self.env,
                    ctl,
                };
                self.regs.read(offset, data, &mut ctx);
            }
            Bar0Area::PeerWindow(w, reg) => match dword(offset, data.len()) {
                Some(()) => {
                    let v = self.env.peer_windows().read(w, reg);
                    data.copy_from_slice(&v.to_le_bytes());
                }
                None => {
                    self.stats.bad_bar0_accesses += 1;
                    data.fill(0xff);
                }
            },
            Bar0Area::Mmu(reg) => match dword(offset, data.len()) {
                Some(()) => {
                    let v = self.env.mmu().read(reg, self.env.doorbell());
                    data.copy_from_slice(&v.to_le_bytes());
                }
                None => {
                    self.stats.bad_bar0_accesses += 1;
                    data.fill(0xff);
                }
            },
            Bar0Area::Engine(e, off) => match dword(offset, data.len()) {
                Some(()) => {
                    let v = self.engines.read(e, off).unwrap_or(0);
                    data.copy_from_slice(&v.to_le_bytes());
                }
                None => {
                    self.stats.bad_bar0_accesses += 1;
                    data.fill(0xff);
                }
            },
            Bar0Area::Table(off) => self.env.msix().table_read(off, data),
            Bar0Area::Pba(off) => self.env.msix().pba_read(off, data),
            Bar0Area::Doorbell(off) => match dword(offset, data.len()) {
                Some(()) => {
                    let v = self.env.doorbell().load_u32(off).unwrap_or(u32::MAX);
                    data.copy_from_slice(&v.to_le_bytes());
                }
                None => {
                    self.stats.bad_bar0_accesses += 1;
                    data.fill(0xff);
                }
            },
            Bar0Area::Reserved => data.fill(0),
            Bar0Area::Straddle => {
                self.stats.bad_bar0_accesses += 1;
                data.fill(0xff);
            }
        }
    }

    fn bar0_write(&mut self, offset: u64, data: &[u8]) {
        let ctl = self.msix_control();
        match bar0_area(offset, data.len()) {
            Bar0Area::Registers => {
                let mut ctx = RegCtx {
                    env: &self.env,
                    ctl,
                };
                if self.regs.write(offset, data, &mut ctx).soft_reset {
                    self.soft_reset();
                }
            }
            Bar0Area::PeerWindow(w, reg) => match dword_value(offset, data) {
                Some(v) => self.env.peer_windows().write(w, reg, v),
                None => self.stats.bad_bar0_accesses += 1,
            },
            Bar0Area::Mmu(reg) => match dword_value(offset, data) {
                Some(v) => {
                    self.env.mmu().write(reg, v, self.env.doorbell());
                }
                None => self.stats.bad_bar0_accesses += 1,
            },
            Bar0Area::Engine(e, off) => match dword_value(offset, data) {
                Some(v) => {
                    self.engines.write(e, off, v);
                    self.process_engine_events();
                }
                None => self.stats.bad_bar0_accesses += 1,
            },
            Bar0Area::Table(off) => self.env.msix().table_write(off, data, ctl),
            Bar0Area::Doorbell(off) => match dword_value(offset, data) {
                Some(v) => {
                    self.engines.doorbell_write(off, v);
                }
                None => self.stats.bad_bar0_accesses += 1,
            },
            Bar0Area::Pba(_) | Bar0Area::Reserved => {}
            Bar0Area::Straddle => self.stats.bad_bar0_accesses += 1,
        }
    }

    fn config_write(&mut self, offset: u64, data: &[u8]) -> BackendResult<()> {
        let before = self.msix_control();
        let stuck: Vec<(u16, u32)> = self
            .cfg_stuck
            .iter()
            .map(|&off| (off, self.pci.config().get_u32(off)))
            .collect();
        let outcome: CapWrite = self
            .pci
            .write(offset, data)
            .map_err(|e| BackendError::Fault(e.to_string()))?;
        for (off, value) in stuck {
            self.pci.config_mut().set(off, 4, value);
        }
        if outcome.flr {
            self.stats.flrs += 1;
            self.function_reset();
        } else {
            // Mirrors first: an engine that signals from now on sees the new bits, and one
            // that signalled before is held in the PBA, which the pass below releases.
            self.mirror_config();
            let ctl = self.msix_control();
            if ctl != before {
                self.env.msix().control_changed(ctl);
            }
            if ctl.bus_master && !before.bus_master {
                // Engines waiting for Bus Master Enable continue (hw-spec §6.7).
                self.engines.wake_all();
            }
        }
        Ok(())
    }

    fn vram_bar_check(&self, offset: u64, len: usize) -> BackendResult<VramOffset> {
        let size = self.pci.bar_size(2);
        let end = u64::try_from(len).ok().and_then(|l| offset.checked_add(l));
        match end {
            Some(end) if end <= size => Ok(VramOffset(offset)),
            _ => Err(BackendError::Fault(format!(
                "BAR2 access of {len} bytes at {offset:#x} outside the {size:#x}-byte BAR"
            ))),
        }
    }

    fn set_msix_irqs(&mut self, irqs: IrqSet) -> BackendResult<()> {
        let ctl = self.msix_control();
        let start = irqs.start as usize;
        match irqs.data {
            IrqData::None if irqs.count == 0 => self.env.msix().clear_notifiers(),
            IrqData::None => {
                let mut msix = self.env.msix();
                for v in start..start + irqs.count as usize {
                    msix.signal(v, ctl);
                }
            }
            IrqData::Bool(flags) => {
                let mut msix = self.env.msix();
                for (i, fire) in flags.into_iter().enumerate() {
                    if fire {
                        msix.signal(start + i, ctl);
                    }
                }
            }
            IrqData::Eventfds(fds) => {
                // Validate every fd before assigning any: a refused request changes nothing.
                let notifiers = fds
                    .into_iter()
                    .map(|fd| {
                        fd.map(|fd| {
                            EventFdNotifier::new(fd)
                                .map(|n| Box::new(n) as Box<dyn Notifier>)
                                .map_err(|e| invalid(e.to_string()))
                        })
                        .transpose()
                    })
                    .collect::<BackendResult<Vec<_>>>()?;
                let mut msix = self.env.msix();
                for (i, n) in notifiers.into_iter().enumerate() {
                    msix.set_notifier(start + i, n, ctl);
                }
            }
        }
        Ok(())
    }

    fn set_err_irqs(&mut self, irqs: IrqSet) -> BackendResult<()> {
        match irqs.data {
            IrqData::None if irqs.count == 0 => self.err_notifier = None,
            IrqData::None => {
                self.signal_error();
            }
            IrqData::Bool(flags) => {
                if flags.first() == Some(&true) {
                    self.signal_error();
                }
            }
            IrqData::Eventfds(mut fds) => {
                let fd = fds.pop().flatten();
                self.err_notifier = match fd {
                    None => None,
                    Some(fd) => Some(Box::new(
                        EventFdNotifier::new(fd).map_err(|e| invalid(e.to_string()))?,
                    )),
                };
            }
        }
        Ok(())
    }
}

impl DeviceBackend for Gpu {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            reset: true,
            num_regions: region::COUNT,
            num_irqs: irq_index::COUNT,
        }
    }

    fn region_flags_size(&self, index: u32) -> BackendResult<(u32, u64)> {
        let rw = region_flags::READ | region_flags::WRITE;
        Ok(match index {
            region::BAR0 => (rw | region_flags::MMAP, BAR0_SIZE),
            region::BAR2 => (rw | region_flags::MMAP, self.pci.bar_size(2)),
            region::CONFIG => (rw, CONFIG_SIZE),
            1 | 3..=5 | region::ROM | region::VGA => (0, 0),
            _ => return Err(invalid(format!("no region {index}"))),
        })
    }

    fn region_info(&self, index: u32) -> BackendResult<RegionInfo<'_>> {
        let (flags, size) = self.region_flags_size(index)?;
        let mmap = match index {
            region::BAR0 => Some(RegionMmap {
                fd: self.env.doorbell().as_fd(),
                file_offset: 0,
                sparse_areas: vec![SparseArea {
                    offset: DOORBELL_OFFSET,
                    size: DOORBELL_SIZE,
                }],
            }),
            region::BAR2 => Some(RegionMmap {
                fd: self.vram().as_fd(),
                file_offset: 0,
                sparse_areas: Vec::new(),
            }),
            _ => None,
        };
        Ok(RegionInfo { flags, size, mmap })
    }

    fn irq_info(&self, index: u32) -> BackendResult<IrqInfo> {
        Ok(match index {
            irq_index::INTX | irq_index::MSI | irq_index::REQ => IrqInfo {
                flags: irq_flags::EVENTFD,
                count: 0,
            },
            irq_index::MSIX => IrqInfo {
                flags: irq_flags::EVENTFD | irq_flags::NORESIZE,
                count: u32::from(self.vectors),
            },
            irq_index::ERR => IrqInfo {
                flags: irq_flags::EVENTFD,
                count: 1,
            },
            _ => return Err(invalid(format!("no IRQ index {index}"))),
        })
    }

    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> BackendResult<()> {
        if self.env.inject().removed() {
            // Surprise removal (hw-spec §10): nothing answers; the host reads all ones.
            data.fill(0xff);
            return Ok(());
        }
        if self.env.faults_pending() {
            self.process_engine_events();
        }
        match index {
            region::BAR0 => {
                self.bar0_read(offset, data);
                Ok(())
            }
            region::BAR2 => {
                let off = self.vram_bar_check(offset, data.len())?;
                self.env
                    .vram()
                    .read(off, data)
                    .map_err(|e| BackendError::Fault(e.to_string()))
            }
            region::CONFIG => self
                .pci
                .read(offset, data)
                .map_err(|e| BackendError::Fault(e.to_string())),
            _ => Err(invalid(format!("region {index} is not readable"))),
        }
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> BackendResult<()> {
        if self.env.inject().removed() {
            // Surprise removal (hw-spec §10): writes go nowhere.
            return Ok(());
        }
        if self.env.faults_pending() {
            self.process_engine_events();
        }
        match index {
            region::BAR0 => {
                self.bar0_write(offset, data);
                Ok(())
            }
            region::BAR2 => {
                let off = self.vram_bar_check(offset, data.len())?;
                self.env
                    .vram()
                    .write(off, data)
                    .map_err(|e| BackendError::Fault(e.to_string()))
            }
            region::CONFIG => self.config_write(offset, data),
            _ => Err(invalid(format!("region {index} is not writable"))),
        }
    }

    fn dma_map(&mut self, mapping: DmaMapping) -> BackendResult<()> {
        let perms = DmaPermissions {
            read: mapping.prot.read,
            write: mapping.prot.write,
        };
        self.env
            .dma_mut()
            .map(
                Iova(mapping.iova),
                mapping.size,
                mapping.file_offset,
                perms,
                mapping.fd,
            )
            .map_err(|e| match e {
                DmaError::Overlap { .. } => BackendError::Exists(e.to_string()),
                DmaError::TooManyWindows(_)
                | DmaError::TooManyFdWindows(_)
                | DmaError::TooManyBytes { .. } => BackendError::NoSpace(e.to_string()),
                DmaError::Map { .. } => BackendError::NoMemory(e.to_string()),
                _ => BackendError::Invalid(e.to_string()),
            })?;
        Ok(())
    }

    fn dma_unmap(&mut self, unmap: DmaUnmap) -> BackendResult<()> {
        match unmap {
            DmaUnmap::Range { iova, size } => self
                .env
                .dma_mut()
                .unmap(Iova(iova), size)
                .map(|_| ())
                .map_err(|e| BackendError::NotFound(e.to_string())),
            DmaUnmap::All => {
                self.env.dma_mut().unmap_all();
                Ok(())
            }
        }
    }

    fn set_irqs(&mut self, irqs: IrqSet) -> BackendResult<()> {
        let info = self.irq_info(irqs.index)?;
        let in_range = irqs
            .start
            .checked_add(irqs.count)
            .is_some_and(|end| end <= info.count);
        let disable = irqs.start == 0 && irqs.count == 0;
        if !in_range && !disable {
            return Err(invalid(format!(
                "IRQ index {} has {} vectors; {}+{} requested",
                irqs.index, info.count, irqs.start, irqs.count
            )));
        }
        // One entry per sub-index (the protocol server guarantees it; a longer list would
        // otherwise reach vectors outside `start..start + count`).
        let entries = match &irqs.data {
            IrqData::None => None,
            IrqData::Bool(b) => Some(b.len()),
            IrqData::Eventfds(f) => Some(f.len()),
        };
        if entries.is_some_and(|n| n != irqs.count as usize) {
            return Err(invalid(format!(
                "IRQ index {}: {} data entries for {} vectors",
                irqs.index,
                entries.unwrap_or(0),
                irqs.count
            )));
        }
        if irqs.action != IrqAction::Trigger {
            return Err(BackendError::NotSupported(format!(
                "{:?} on IRQ index {}",
                irqs.action, irqs.index
            )));
        }
        match irqs.index {
            irq_index::MSIX => self.set_msix_irqs(irqs),
            irq_index::ERR => self.set_err_irqs(irqs),
            // INTx, MSI, REQ have no vectors: only the disable form reaches here; nothing to do.
            _ => Ok(()),
        }
    }

    fn reset(&mut self) -> BackendResult<()> {
        if self.env.inject().removed() {
            // A removed function is not there to reset (hw-spec §10).
            return Ok(());
        }
        self.stats.device_resets += 1;
        self.function_reset();
        Ok(())
    }

    fn client_disconnected(&mut self) {
        self.stats.disconnects += 1;
        let _ = self.env.fabric().set_client(self.env.peer_id(), None);
        self.env.dma_mut().unmap_all();
        self.env.msix().clear_notifiers();
        self.err_notifier = None;
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // The fabric keeps the VRAM; it must no longer route the BAR of a device that is gone.
        let _ = self.env.fabric().set_bar(self.env.peer_id(), None);
        let _ = self.env.fabric().set_client(self.env.peer_id(), None);
    }
}

#[cfg(test)]
mod mmu_tests;
#[cfg(test)]
mod tests;
