//! The `gpu_regions` harness: a [`Gpu`] with engine threads, client memory the harness can
//! check byte by byte, a fake client for DMA messages, and the invariants checked after every
//! operation and at the end.

use super::*;

mod ops;

/// What one [`gpu_regions`] run did (the `cargo test` run asserts the inputs reach the device).
#[derive(Debug, Default, Clone, Copy)]
pub struct RegionStats {
    /// Operations executed, by kind.
    pub ops: [u64; OP_KINDS],
    /// Operations the device refused with an error.
    pub refused: u64,
    /// Descriptors the engines completed.
    pub jobs: u64,
    /// Engine errors reported by the device.
    pub engine_errors: u64,
    /// DMA messages the fake client served.
    pub messages: u64,
    /// Interrupts seen on assigned eventfds.
    pub irqs: u64,
    /// DMA windows mapped.
    pub maps: u64,
    /// Device MMU page translations (TLB hits and walks).
    pub translations: u64,
    /// Device MMU fault records written.
    pub mmu_faults: u64,
}

/// Number of operation kinds of [`gpu_regions`].
pub const OP_KINDS: usize = 16;

/// Guest RAM A: a 192 KiB file whose middle 64 KiB is the canonical read-write window.
const A_LEN: u64 = 0x30000;
const A_FILE_OFF: u64 = 0x10000;
const A_SIZE: u64 = 0x10000;
const A_IOVA: u64 = 0x1_0000_0000;
/// B: a 16 KiB read-only window right after A (an access can span both).
const B_LEN: u64 = 0x4000;
const B_IOVA: u64 = A_IOVA + A_SIZE;
/// C: a 64 KiB message-only read-write window right after B.
const C_SIZE: u64 = 0x10000;
const C_IOVA: u64 = B_IOVA + B_LEN;
/// D: a read-only message-only window like QEMU's BIOS ROM.
const D_IOVA: u64 = 0xfffc_0000;
const D_SIZE: u64 = 0x40000;
/// S: a 64 KiB scratch file for fuzzed DMA_MAPs.
const S_LEN: u64 = 0x10000;
/// Where fuzzed maps go by default.
const F_IOVA: u64 = 0x2_0000_0000;

const ENGINES: usize = 4;
/// The device MMU's virtual region (its level-0 table maps `MMU_PAGES` pages from here).
const MMU_VA: u64 = 0x0000_0040_0000_0000;
const MMU_PAGES: u64 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backing {
    /// Client file `files[i]` at a file offset.
    File(usize, u64),
    /// Message-only.
    Msg,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    iova: u64,
    size: u64,
    read: bool,
    write: bool,
    backing: Backing,
}

impl Window {
    fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.iova
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= self.iova + self.size)
    }
}

/// One client file: its bytes as the harness expects them wherever the device may not write.
struct ClientFile {
    file: File,
    /// Expected content of pages that are not in a writable window.
    expected: Vec<u8>,
    /// Writable windows currently covering each page.
    writable: Vec<u32>,
}

impl ClientFile {
    fn new(len: u64, seed: u8, sealed: bool) -> Option<Self> {
        let file = memfd(len, sealed)?;
        let expected: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        file.write_all_at(&expected, 0).ok()?;
        Some(ClientFile {
            file,
            expected,
            writable: vec![0; (len / PAGE) as usize],
        })
    }

    fn len(&self) -> u64 {
        self.expected.len() as u64
    }

    fn pages(&self, off: u64, size: u64) -> std::ops::Range<usize> {
        let first = (off / PAGE) as usize;
        let last = (off.saturating_add(size).div_ceil(PAGE) as usize).min(self.writable.len());
        first.min(last)..last
    }

    fn expose(&mut self, off: u64, size: u64) {
        for p in self.pages(off, size) {
            self.writable[p] += 1;
        }
    }

    /// A writable window went away: from now on the device must leave these pages alone.
    fn conceal(&mut self, off: u64, size: u64) {
        for p in self.pages(off, size) {
            self.writable[p] = self.writable[p].saturating_sub(1);
            if self.writable[p] == 0 {
                let start = p * PAGE as usize;
                let buf = &mut self.expected[start..start + PAGE as usize];
                let _ = self.file.read_exact_at(buf, start as u64);
            }
        }
    }

    /// The guest (harness) writes its own memory.
    fn guest_write(&mut self, off: u64, data: &[u8]) {
        let Some(end) = off.checked_add(data.len() as u64) else {
            return;
        };
        if end > self.len() || self.file.write_all_at(data, off).is_err() {
            return;
        }
        self.expected[off as usize..end as usize].copy_from_slice(data);
    }

    /// Checks every page outside a writable window; returns the first differing offset.
    fn check(&self) -> Option<u64> {
        let mut now = vec![0u8; self.expected.len()];
        if self.file.read_exact_at(&mut now, 0).is_err() {
            return Some(u64::MAX);
        }
        for (p, &w) in self.writable.iter().enumerate() {
            if w != 0 {
                continue;
            }
            let r = p * PAGE as usize..(p + 1) * PAGE as usize;
            if let Some(i) = now[r.clone()]
                .iter()
                .zip(&self.expected[r.clone()])
                .position(|(a, b)| a != b)
            {
                return Some((r.start + i) as u64);
            }
        }
        None
    }
}

struct World {
    gpu: Gpu,
    files: Vec<ClientFile>,
    windows: Vec<Window>,
    /// Content of the canonical message window C.
    c_mem: Vec<u8>,
    doorbell: Option<GuestRegionMmap<()>>,
    vectors: Vec<Option<EventFd>>,
    err_fd: Option<EventFd>,
    /// Interrupt fds the device must never signal again (revoked or refused).
    dead_fds: Vec<EventFd>,
    rings: [Option<(u8, u64, u32)>; ENGINES],
    vram_size: u64,
    num_vectors: u16,
    power_on_config: Vec<u8>,
    msg_bytes: usize,
    stats: RegionStats,
}

fn ereg(e: usize, off: u32) -> u64 {
    ENGINE_BASE + ENGINE_STRIDE * e as u64 + u64::from(off)
}

impl World {
    fn new(ctl: u8) -> Option<World> {
        let vram_size = if ctl & 1 == 0 { MIB } else { 2 * MIB };
        let mut cfg = GpuConfig::new(vram_size);
        cfg.vram = VramOptions::memfd(vram_size);
        cfg.engines = ENGINES;
        cfg.msix_vectors = (ENGINES as u16 + 1) + u16::from((ctl >> 1) & 7);
        cfg.engine_timing = PollTiming {
            spin: if ctl & 0x10 != 0 {
                Duration::from_micros(20)
            } else {
                Duration::ZERO
            },
            max_sleep: Duration::from_micros(200),
        };
        // The per-transaction trace formats hostile addresses too; nobody reads it here.
        if ctl & 0x20 != 0 {
            cfg.trace = Some("/dev/null".into());
        }
        cfg.err_irq = ctl & 0x40 != 0;
        let gpu = Gpu::new(&cfg).ok()?;
        let power_on_config = gpu.pci().config().as_bytes().to_vec();
        let files = vec![
            ClientFile::new(A_LEN, 0x11, true)?,
            ClientFile::new(B_LEN, 0x22, false)?,
            ClientFile::new(S_LEN, 0x33, true)?,
        ];
        let num_vectors = cfg.msix_vectors;
        let mut w = World {
            gpu,
            files,
            windows: Vec::new(),
            c_mem: (0..C_SIZE).map(|i| (i as u8) ^ 0x5a).collect(),
            doorbell: None,
            vectors: (0..num_vectors).map(|_| None).collect(),
            err_fd: None,
            dead_fds: Vec::new(),
            rings: [None; ENGINES],
            vram_size,
            num_vectors,
            power_on_config,
            msg_bytes: 0,
            stats: RegionStats::default(),
        };
        w.doorbell = w.map_doorbell();
        for canon in 0..4 {
            w.map_canonical(canon);
        }
        w.enable_bus_master();
        Some(w)
    }

    /// Memory Space and Bus Master Enable, as a driver sets them at probe and after a reset
    /// (engines and MSI-X issue nothing without Bus Master Enable, hw-spec §1.1); fuzzed
    /// config writes may clear it again.
    fn enable_bus_master(&mut self) {
        assert!(
            self.write(region::CONFIG, 0x04, &[0x06, 0x00]),
            "Command write refused"
        );
    }

    /// Maps the doorbell page the way QEMU maps the sparse area of BAR0.
    fn map_doorbell(&self) -> Option<GuestRegionMmap<()>> {
        let info = self.gpu.region_info(region::BAR0).ok()?;
        let mmap = info.mmap?;
        let area = mmap.sparse_areas.first()?;
        assert_eq!(area.offset, DOORBELL_OFFSET, "doorbell sparse area");
        assert_eq!(area.size, DOORBELL_SIZE, "doorbell sparse area size");
        let file = File::from(mmap.fd.try_clone_to_owned().ok()?);
        let off = mmap.file_offset.checked_add(area.offset)?;
        let region = MmapRegion::<()>::from_file(FileOffset::new(file, off), area.size as usize);
        GuestRegionMmap::new(region.ok()?, GuestAddress(0))
    }

    fn timed<T>(&mut self, what: &str, f: impl FnOnce(&mut Gpu) -> T) -> T {
        let t = Instant::now();
        let r = f(&mut self.gpu);
        let took = t.elapsed();
        assert!(took < OP_LIMIT, "{what} took {took:?}");
        r
    }

    fn read(&mut self, index: u32, offset: u64, len: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let r = self.timed("region read", |g| g.region_read(index, offset, &mut buf));
        match r {
            Ok(()) => Some(buf),
            Err(_) => {
                self.stats.refused += 1;
                None
            }
        }
    }

    fn write(&mut self, index: u32, offset: u64, data: &[u8]) -> bool {
        let r = self.timed("region write", |g| g.region_write(index, offset, data));
        if r.is_err() {
            self.stats.refused += 1;
        }
        r.is_ok()
    }

    fn rd32(&mut self, index: u32, offset: u64) -> Option<u32> {
        let b = self.read(index, offset, 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn wr32(&mut self, index: u32, offset: u64, v: u32) -> bool {
        self.write(index, offset, &v.to_le_bytes())
    }

    // --- DMA windows -------------------------------------------------------------------------

    fn canonical(i: u8) -> (u64, u64, u64, DmaProt, Option<usize>) {
        let rw = DmaProt {
            read: true,
            write: true,
        };
        let ro = DmaProt {
            read: true,
            write: false,
        };
        match i {
            0 => (A_IOVA, A_SIZE, A_FILE_OFF, rw, Some(0)),
            1 => (B_IOVA, B_LEN, 0, ro, Some(1)),
            2 => (C_IOVA, C_SIZE, 0, rw, None),
            _ => (D_IOVA, D_SIZE, 0, ro, None),
        }
    }

    fn map_canonical(&mut self, i: u8) {
        let (iova, size, off, prot, file) = Self::canonical(i);
        self.map(iova, size, off, prot, file, 0);
    }

    /// DMA_MAP; `file` indexes `files`; `weird` selects a non-memfd fd instead (1: /dev/null,
    /// 2: an eventfd, 3: a directory).
    fn map(
        &mut self,
        iova: u64,
        size: u64,
        file_offset: u64,
        prot: DmaProt,
        file: Option<usize>,
        weird: u8,
    ) {
        let fd = match (weird, file) {
            (1, _) => File::open("/dev/null").ok().map(OwnedFd::from),
            (2, _) => EventFd::new(rustix::event::EventfdFlags::empty())
                .ok()
                .and_then(|e| owned_dup(&e)),
            (3, _) => File::open("/").ok().map(OwnedFd::from),
            (_, Some(f)) => owned_dup(&self.files[f].file),
            (_, None) => None,
        };
        let real_file = if weird == 0 { file } else { None };
        let fd_given = fd.is_some();
        let r = self.timed("dma_map", |g| {
            g.dma_map(DmaMapping {
                iova,
                size,
                file_offset,
                prot,
                fd,
            })
        });
        let overlaps = self
            .windows
            .iter()
            .any(|w| iova < w.iova + w.size && w.iova < iova + size);
        match r {
            Ok(()) => {
                assert!(
                    !overlaps,
                    "DMA_MAP {iova:#x}+{size:#x} accepted over a window"
                );
                assert!(
                    prot.read || prot.write,
                    "DMA_MAP without permissions accepted"
                );
                assert!(
                    weird == 0 || !fd_given,
                    "DMA_MAP accepted a non-memfd fd ({weird})"
                );
                let backing = match real_file {
                    Some(f) if fd_given => {
                        let cf = &self.files[f];
                        assert!(
                            file_offset.checked_add(size).is_some_and(|e| e <= cf.len()),
                            "DMA_MAP past the end of the file accepted"
                        );
                        Backing::File(f, file_offset)
                    }
                    _ => Backing::Msg,
                };
                if let Backing::File(f, off) = backing {
                    if prot.write {
                        self.files[f].expose(off, size);
                    }
                }
                self.windows.push(Window {
                    iova,
                    size,
                    read: prot.read,
                    write: prot.write,
                    backing,
                });
                self.stats.maps += 1;
            }
            Err(_) => {
                self.stats.refused += 1;
                // Refusals that must not happen for a plain, valid, non-overlapping message
                // window.
                assert!(
                    overlaps || fd_given || !(prot.read || prot.write),
                    "DMA_MAP of a message-only window {iova:#x}+{size:#x} refused"
                );
            }
        }
        self.check_windows();
    }

    fn drop_window(&mut self, i: usize) {
        let w = self.windows.swap_remove(i);
        if let (Backing::File(f, off), true) = (w.backing, w.write) {
            self.files[f].conceal(off, w.size);
        }
    }

    fn unmap(&mut self, unmap: DmaUnmap) {
        let r = self.timed("dma_unmap", |g| g.dma_unmap(unmap));
        match unmap {
            DmaUnmap::All => {
                assert!(r.is_ok(), "DMA_UNMAP all refused");
                while !self.windows.is_empty() {
                    self.drop_window(0);
                }
            }
            DmaUnmap::Range { iova, size } => {
                let found = self
                    .windows
                    .iter()
                    .position(|w| w.iova == iova && w.size == size);
                match (found, r) {
                    (Some(i), Ok(())) => self.drop_window(i),
                    (None, Err(_)) => self.stats.refused += 1,
                    (f, r) => panic!("DMA_UNMAP {iova:#x}+{size:#x}: model {f:?}, device {r:?}"),
                }
            }
        }
        self.check_windows();
    }

    fn disconnect(&mut self) {
        self.timed("client_disconnected", |g| g.client_disconnected());
        while !self.windows.is_empty() {
            self.drop_window(0);
        }
        for v in 0..self.vectors.len() {
            self.revoke_vector(v);
        }
        self.revoke_err();
        self.check_windows();
    }

    /// The device's DMA space matches the model.
    fn check_windows(&self) {
        let dma = self.gpu.dma();
        let mut dev: Vec<_> = dma.windows().collect();
        dev.sort_by_key(|w| w.iova.raw());
        let mut model = self.windows.clone();
        model.sort_by_key(|w| w.iova);
        assert_eq!(dev.len(), model.len(), "DMA windows: {dev:?} vs {model:?}");
        for (d, m) in dev.iter().zip(&model) {
            assert_eq!((d.iova.raw(), d.size), (m.iova, m.size), "window");
            assert_eq!((d.perms.read, d.perms.write), (m.read, m.write), "perms");
            let msg = d.backing == WindowBacking::MessageOnly;
            assert_eq!(msg, m.backing == Backing::Msg, "backing of {:#x}", m.iova);
        }
    }

    /// Guest write of its own memory at a SYS address (inside one window of the model).
    fn guest_write_sys(&mut self, addr: u64, data: &[u8]) -> bool {
        let len = data.len() as u64;
        let Some(w) = self.windows.iter().find(|w| w.contains(addr, len)).copied() else {
            return false;
        };
        match w.backing {
            Backing::File(f, off) => {
                self.files[f].guest_write(off + (addr - w.iova), data);
            }
            Backing::Msg if w.iova == C_IOVA && w.size == C_SIZE => {
                let o = (addr - C_IOVA) as usize;
                self.c_mem[o..o + data.len()].copy_from_slice(data);
            }
            Backing::Msg => return false,
        }
        true
    }

    /// Guest write at `aperture:addr` (VRAM through BAR2, SYS into its own memory).
    fn guest_write(&mut self, aperture: u8, addr: u64, data: &[u8]) -> bool {
        if aperture == 1 {
            addr.checked_add(data.len() as u64)
                .is_some_and(|e| e <= self.vram_size)
                && self.write(region::BAR2, addr, data)
        } else {
            self.guest_write_sys(addr, data)
        }
    }

    // --- The fake client's side of DMA messages ----------------------------------------------

    /// Answers every queued DMA message as QEMU would, checking that the device only asks for
    /// what the client mapped.
    fn serve_messages(&mut self) {
        while let Some(mut req) = self.gpu.next_msg_dma() {
            if req.abandoned() {
                continue;
            }
            let (addr, len, write) = match &req.op {
                MsgOp::Read { addr, len } => (*addr, *len, false),
                MsgOp::Write { addr, data } => (*addr, data.len(), true),
            };
            assert!(len > 0, "empty DMA message at {addr:#x}");
            let w = self
                .windows
                .iter()
                .find(|w| w.contains(addr, len as u64))
                .copied();
            let Some(w) = w else {
                panic!(
                    "DMA message ({write}) {addr:#x}+{len:#x} outside every mapped window {:x?}",
                    self.windows
                );
            };
            assert_eq!(
                w.backing,
                Backing::Msg,
                "DMA message for an fd-backed window"
            );
            assert!(
                if write { w.write } else { w.read },
                "DMA message ({write}) {addr:#x}+{len:#x} not permitted by its window"
            );
            self.msg_bytes += len;
            if self.msg_bytes > MSG_BUDGET {
                let _ = req.reply.send(Err("fuzz client budget exhausted".into()));
                continue;
            }
            self.stats.messages += 1;
            let canonical_c = w.iova == C_IOVA && w.size == C_SIZE;
            let reply = match &mut req.op {
                MsgOp::Read { .. } => {
                    if canonical_c {
                        let o = (addr - C_IOVA) as usize;
                        self.c_mem[o..o + len].to_vec()
                    } else {
                        (0..len).map(|i| (addr as usize + i) as u8).collect()
                    }
                }
                MsgOp::Write { data, .. } => {
                    if canonical_c {
                        let o = (addr - C_IOVA) as usize;
                        self.c_mem[o..o + len].copy_from_slice(data);
                    }
                    Vec::new()
                }
            };
            let _ = req.reply.send(Ok(reply));
        }
    }

    fn pump(&mut self) {
        self.serve_messages();
        self.timed("process_engine_events", |g| g.process_engine_events());
        for e in self.vectors.iter().flatten() {
            if eventfd_fired(e) {
                self.stats.irqs += 1;
            }
        }
    }

    fn engines_busy(&self) -> bool {
        self.gpu
            .engine_monitor()
            .report()
            .iter()
            .any(|r| r.state == "RUNNING")
    }

    /// Lets the engines run for up to `budget`, serving their DMA messages.
    fn settle(&mut self, budget: Duration) {
        let deadline = Instant::now() + budget;
        loop {
            self.pump();
            if !self.engines_busy() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        self.pump();
    }

    fn count_jobs(&mut self) {
        let r = self.gpu.engine_monitor().report();
        self.stats.jobs += r.iter().map(|e| e.stats.jobs).sum::<u64>();
    }

    fn revoke_vector(&mut self, v: usize) {
        if let Some(e) = self.vectors.get_mut(v).and_then(Option::take) {
            let _ = eventfd_fired(&e);
            self.dead_fds.push(e);
        }
    }

    fn revoke_err(&mut self) {
        if let Some(e) = self.err_fd.take() {
            let _ = eventfd_fired(&e);
            self.dead_fds.push(e);
        }
    }

    // --- Resets ------------------------------------------------------------------------------

    fn check_power_on(&mut self, what: &str) {
        let cfg = self.gpu.pci().config().as_bytes().to_vec();
        if let Some(i) = cfg
            .iter()
            .zip(&self.power_on_config)
            .position(|(a, b)| a != b)
        {
            panic!(
                "{what}: config byte {i:#x} is {:#04x}, power-on {:#04x}",
                cfg[i], self.power_on_config[i]
            );
        }
        self.check_register_reset(what);
        self.enable_bus_master();
    }

    fn check_register_reset(&mut self, what: &str) {
        let expect = [
            (reg::ID, spec::ID_VALUE),
            (reg::VERSION, spec::VERSION_VALUE),
            (reg::NUM_VECTORS, u32::from(self.num_vectors)),
            (reg::VRAM_SIZE_LO, self.vram_size as u32),
            (reg::STATUS, spec::STATUS_READY),
            (reg::SCRATCH0, 0),
            (reg::VRAM_INDEX_LO, 0),
            (reg::IRQ_STATUS, 0),
            (reg::IRQ_COUNT, 0),
            (reg::ENGINE_COUNT, ENGINES as u32),
            (reg::ERR_CAUSE, 0),
        ];
        // The device MMU's registers (hw-spec §9.1): disabled, unconfigured.
        for off in [0x300u64, 0x304, 0x308, 0x310, 0x320, 0x328] {
            let got = self.rd32(region::BAR0, off);
            assert_eq!(got, Some(0), "{what}: MMU register {off:#x}");
        }
        for (off, v) in expect {
            let got = self.rd32(region::BAR0, u64::from(off));
            assert_eq!(got, Some(v), "{what}: register {off:#x}");
        }
        for e in 0..ENGINES {
            for off in [
                eoff::RING_HEAD,
                eoff::RING_TAIL,
                eoff::CONTROL,
                eoff::STATUS,
            ] {
                let got = self.rd32(region::BAR0, ereg(e, off));
                assert_eq!(got, Some(0), "{what}: engine {e} register {off:#x}");
            }
        }
        if let Some(db) = &self.doorbell {
            for off in (0..DOORBELL_SIZE).step_by(4) {
                let v = db.load::<u32>(MemoryRegionAddress(off), Ordering::Acquire);
                assert_eq!(v.ok(), Some(0), "{what}: doorbell page word {off:#x}");
            }
        }
        self.rings = [None; ENGINES];
    }

    fn reset(&mut self, kind: u8) {
        self.count_jobs();
        match kind % 5 {
            0 => {
                let r = self.timed("DEVICE_RESET", |g| g.reset());
                assert!(r.is_ok(), "DEVICE_RESET refused");
                self.check_power_on("DEVICE_RESET");
            }
            1 => {
                // FLR: Initiate Function Level Reset in PCIe Device Control.
                let off = u64::from(cap_offset::PCIE) + 8;
                assert!(self.write(region::CONFIG, off, &[0x10, 0xa8]), "FLR write");
                self.check_power_on("FLR");
            }
            2 => {
                // SOFT_RESET keeps config space (except what engine errors may report).
                let before = self.gpu.pci().config().as_bytes().to_vec();
                assert!(self.wr32(
                    region::BAR0,
                    u64::from(reg::SOFT_RESET),
                    spec::SOFT_RESET_MAGIC
                ));
                let after = self.gpu.pci().config().as_bytes().to_vec();
                for (i, (a, b)) in after.iter().zip(&before).enumerate() {
                    let error_bits = matches!(i, 0x06 | 0x07 | 0x6a | 0x6b)
                        || (0x104..0x108).contains(&i)
                        || (0x118..0x12c).contains(&i);
                    assert!(
                        error_bits || a == b,
                        "SOFT_RESET changed config byte {i:#x}"
                    );
                }
                self.check_register_reset("SOFT_RESET");
            }
            3 => {
                // One engine's CONTROL.RESET.
                let e = usize::from(kind >> 3) % ENGINES;
                assert!(self.wr32(region::BAR0, ereg(e, eoff::CONTROL), control::RESET));
                for off in [
                    eoff::RING_HEAD,
                    eoff::CONTROL,
                    eoff::STATUS,
                    eoff::ERROR_CODE,
                ] {
                    let got = self.rd32(region::BAR0, ereg(e, off));
                    assert_eq!(got, Some(0), "engine {e} reset: register {off:#x}");
                }
                self.rings[e] = None;
            }
            _ => self.disconnect(),
        }
    }

    /// The device still answers and its memory promises held.
    fn finish(mut self) -> RegionStats {
        self.settle(Duration::from_millis(20));
        // Still answering: identity, a scratch round trip, every region's info.
        let id = self.rd32(region::CONFIG, 0);
        assert_eq!(id, Some(0x5647_1234), "config identity");
        assert_eq!(
            self.rd32(region::BAR0, u64::from(reg::ID)),
            Some(spec::ID_VALUE)
        );
        assert!(self.wr32(region::BAR0, u64::from(reg::SCRATCH3), 0x1234_abcd));
        assert_eq!(
            self.rd32(region::BAR0, u64::from(reg::SCRATCH3)),
            Some(0x1234_abcd)
        );
        for i in 0..region::COUNT {
            assert!(self.gpu.region_info(i).is_ok(), "region_info({i})");
        }
        self.count_jobs();
        self.stats.engine_errors = self.gpu.stats().engine_errors;
        let mmu = self.gpu.engine_monitor().mmu();
        self.stats.translations = mmu.tlb_hits + mmu.tlb_misses;
        self.stats.mmu_faults = mmu.faults;
        // Stop the engines (joins their threads), then look at client memory.
        let World {
            gpu,
            files,
            dead_fds,
            mut stats,
            vectors,
            ..
        } = self;
        drop(gpu);
        for (i, f) in files.iter().enumerate() {
            if let Some(off) = f.check() {
                panic!("client file {i} changed at {off:#x} outside every writable window");
            }
        }
        for (i, e) in dead_fds.iter().enumerate() {
            assert!(!eventfd_fired(e), "revoked/refused interrupt fd {i} fired");
        }
        stats.irqs += vectors
            .iter()
            .flatten()
            .filter(|e| eventfd_fired(e))
            .count() as u64;
        stats
    }
}

/// Drives a whole device with the operations encoded in `data`. Panics on a broken invariant.
pub fn gpu_regions(data: &[u8]) -> RegionStats {
    let mut inp = Input::new(data);
    let ctl = inp.u8();
    let Some(mut w) = World::new(ctl) else {
        // Out of fds or memory in the fuzzing process: nothing to test.
        return RegionStats::default();
    };
    let mut ops = 0;
    while !inp.is_empty() && ops < 512 {
        w.step(&mut inp);
        ops += 1;
    }
    w.finish()
}
