//! Shared test fixtures: a recording mock device and helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vugpu_protocol::backend::{
    irq_flags, region_flags, BackendError, BackendResult, DeviceBackend, DeviceInfo, DmaMapping,
    DmaUnmap, IrqAction, IrqData, IrqInfo, IrqSet, RegionInfo, RegionMmap, SparseArea,
};
use vugpu_protocol::{ProtocolError, ServerConfig, Session, SessionStats};

/// Create a memfd of `size` bytes filled with `fill(i)`.
pub fn memfd(size: usize, fill: impl Fn(usize) -> u8) -> OwnedFd {
    let fd = rustix::fs::memfd_create(c"vugpu-test", rustix::fs::MemfdFlags::CLOEXEC)
        .expect("memfd_create");
    let f = File::from(fd);
    let data: Vec<u8> = (0..size).map(fill).collect();
    f.write_all_at(&data, 0).expect("fill memfd");
    OwnedFd::from(f)
}

/// Read `len` bytes at `off` from an fd (pread).
pub fn pread(fd: &OwnedFd, off: u64, len: usize) -> Vec<u8> {
    let f = File::from(fd.try_clone().expect("dup"));
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, off).expect("pread");
    buf
}

/// Everything the mock saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    DmaMap {
        iova: u64,
        size: u64,
        file_offset: u64,
        read: bool,
        write: bool,
        /// First 8 bytes of the fd at file_offset, if an fd came.
        head: Option<Vec<u8>>,
    },
    DmaUnmap(DmaUnmap),
    SetIrqs {
        index: u32,
        start: u32,
        count: u32,
        action: IrqAction,
        data: IrqDataSummary,
    },
    Read {
        index: u32,
        offset: u64,
        len: usize,
    },
    Write {
        index: u32,
        offset: u64,
        data: Vec<u8>,
    },
    Reset,
    Disconnected,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IrqDataSummary {
    None,
    Bool(Vec<bool>),
    /// true = fd present, false = de-assign.
    Eventfds(Vec<bool>),
}

pub struct MockRegion {
    pub flags: u32,
    pub data: Vec<u8>,
    pub mmap: Option<(OwnedFd, u64, Vec<SparseArea>)>,
}

/// A recording device: 9 regions, 5 IRQ indexes.
pub struct MockDevice {
    pub regions: Vec<MockRegion>,
    pub irqs: Vec<IrqInfo>,
    pub reset: bool,
    pub log: Arc<Mutex<Vec<Event>>>,
    /// Eventfds currently assigned, by (index, sub-index).
    pub irq_fds: Arc<Mutex<HashMap<(u32, u32), OwnedFd>>>,
    /// Next dma_map fails with this error.
    pub fail_dma_map: Option<BackendError>,
}

pub const BAR0_SIZE: usize = 4096;
pub const VRAM_SIZE: usize = 16384;
pub const VRAM_FILE_OFFSET: u64 = 4096;
pub const CONFIG_SIZE: usize = 256;

impl MockDevice {
    pub fn new() -> MockDevice {
        let rw = region_flags::READ | region_flags::WRITE;
        let mut regions: Vec<MockRegion> = (0..9)
            .map(|_| MockRegion {
                flags: 0,
                data: Vec::new(),
                mmap: None,
            })
            .collect();
        // BAR0: registers, trapped.
        regions[0] = MockRegion {
            flags: rw,
            data: vec![0; BAR0_SIZE],
            mmap: None,
        };
        // BAR2: VRAM, mmappable with two sparse windows (pages 0 and 2).
        regions[2] = MockRegion {
            flags: rw,
            data: vec![0; VRAM_SIZE],
            mmap: Some((
                memfd(VRAM_FILE_OFFSET as usize + VRAM_SIZE, |i| (i / 4096) as u8),
                VRAM_FILE_OFFSET,
                vec![
                    SparseArea {
                        offset: 0,
                        size: 4096,
                    },
                    SparseArea {
                        offset: 8192,
                        size: 4096,
                    },
                ],
            )),
        };
        // BAR4: mmappable as a whole (no sparse cap).
        regions[4] = MockRegion {
            flags: rw,
            data: vec![0; 8192],
            mmap: Some((memfd(8192, |_| 0x44), 0, Vec::new())),
        };
        // Config space: read-only header bytes + writable rest.
        regions[7] = MockRegion {
            flags: rw,
            data: (0..CONFIG_SIZE).map(|i| i as u8).collect(),
            mmap: None,
        };
        // Region 6 (ROM): readable only.
        regions[6] = MockRegion {
            flags: region_flags::READ,
            data: vec![0xaa; 2048],
            mmap: None,
        };
        MockDevice {
            regions,
            irqs: vec![
                IrqInfo {
                    flags: irq_flags::EVENTFD | irq_flags::MASKABLE | irq_flags::AUTOMASKED,
                    count: 1,
                },
                IrqInfo {
                    flags: irq_flags::EVENTFD | irq_flags::NORESIZE,
                    count: 4,
                },
                IrqInfo {
                    flags: irq_flags::EVENTFD | irq_flags::NORESIZE,
                    count: 8,
                },
                IrqInfo {
                    flags: irq_flags::EVENTFD,
                    count: 1,
                },
                IrqInfo {
                    flags: irq_flags::EVENTFD,
                    count: 0,
                },
            ],
            reset: true,
            log: Arc::new(Mutex::new(Vec::new())),
            irq_fds: Arc::new(Mutex::new(HashMap::new())),
            fail_dma_map: None,
        }
    }

    fn record(&self, e: Event) {
        self.log.lock().expect("log").push(e);
    }
}

impl Default for MockDevice {
    fn default() -> Self {
        MockDevice::new()
    }
}

impl DeviceBackend for MockDevice {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            reset: self.reset,
            num_regions: self.regions.len() as u32,
            num_irqs: self.irqs.len() as u32,
        }
    }

    fn region_info(&self, index: u32) -> BackendResult<RegionInfo<'_>> {
        let r = self
            .regions
            .get(index as usize)
            .ok_or_else(|| BackendError::Invalid("index".into()))?;
        Ok(RegionInfo {
            flags: r.flags,
            size: r.data.len() as u64,
            mmap: r.mmap.as_ref().map(|(fd, off, areas)| RegionMmap {
                fd: fd.as_fd(),
                file_offset: *off,
                sparse_areas: areas.clone(),
            }),
        })
    }

    fn irq_info(&self, index: u32) -> BackendResult<IrqInfo> {
        self.irqs
            .get(index as usize)
            .copied()
            .ok_or_else(|| BackendError::Invalid("irq".into()))
    }

    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> BackendResult<()> {
        self.record(Event::Read {
            index,
            offset,
            len: data.len(),
        });
        let r = &self.regions[index as usize];
        let o = offset as usize;
        data.copy_from_slice(&r.data[o..o + data.len()]);
        Ok(())
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> BackendResult<()> {
        self.record(Event::Write {
            index,
            offset,
            data: data.to_vec(),
        });
        if index == 7 && offset == 0 {
            return Err(BackendError::Invalid("vendor id is read-only".into()));
        }
        let r = &mut self.regions[index as usize];
        let o = offset as usize;
        r.data[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn dma_map(&mut self, m: DmaMapping) -> BackendResult<()> {
        if let Some(e) = self.fail_dma_map.take() {
            return Err(e);
        }
        let head = m.fd.as_ref().map(|fd| pread(fd, m.file_offset, 8));
        self.record(Event::DmaMap {
            iova: m.iova,
            size: m.size,
            file_offset: m.file_offset,
            read: m.prot.read,
            write: m.prot.write,
            head,
        });
        Ok(())
    }

    fn dma_unmap(&mut self, unmap: DmaUnmap) -> BackendResult<()> {
        self.record(Event::DmaUnmap(unmap));
        Ok(())
    }

    fn set_irqs(&mut self, irqs: IrqSet) -> BackendResult<()> {
        let data = match &irqs.data {
            IrqData::None => IrqDataSummary::None,
            IrqData::Bool(b) => IrqDataSummary::Bool(b.clone()),
            IrqData::Eventfds(f) => {
                IrqDataSummary::Eventfds(f.iter().map(|x| x.is_some()).collect())
            }
        };
        self.record(Event::SetIrqs {
            index: irqs.index,
            start: irqs.start,
            count: irqs.count,
            action: irqs.action,
            data,
        });
        if let IrqData::Eventfds(fds) = irqs.data {
            let mut map = self.irq_fds.lock().expect("irq fds");
            for (i, fd) in fds.into_iter().enumerate() {
                let key = (irqs.index, irqs.start + i as u32);
                match fd {
                    Some(fd) => {
                        map.insert(key, fd);
                    }
                    None => {
                        map.remove(&key);
                    }
                }
            }
        } else if irqs.count == 0 {
            self.irq_fds
                .lock()
                .expect("irq fds")
                .retain(|(i, _), _| *i != irqs.index);
        }
        Ok(())
    }

    fn reset(&mut self) -> BackendResult<()> {
        self.record(Event::Reset);
        Ok(())
    }

    fn client_disconnected(&mut self) {
        self.record(Event::Disconnected);
        self.irq_fds.lock().expect("irq fds").clear();
    }
}

/// Signal an eventfd the way a device does.
pub fn signal(fd: &OwnedFd) {
    use std::io::Write;
    let mut f = File::from(fd.try_clone().expect("dup"));
    f.write_all(&1u64.to_ne_bytes()).expect("eventfd write");
}

pub struct ServerRun {
    pub result: Result<(), ProtocolError>,
    pub stats: SessionStats,
    pub dev: MockDevice,
}

/// Run a session over a socketpair in a thread; returns the client end.
pub fn spawn_server(
    mut dev: MockDevice,
    config: ServerConfig,
) -> (UnixStream, JoinHandle<ServerRun>) {
    let (c, s) = UnixStream::pair().expect("socketpair");
    let h = std::thread::spawn(move || {
        let mut session = Session::new(s, config);
        let result = session.run(&mut dev);
        dev.client_disconnected();
        ServerRun {
            result,
            stats: session.stats().clone(),
            dev,
        }
    });
    (c, h)
}

/// Raw fd number of a borrowed fd (for debug output).
pub fn raw<F: AsRawFd>(f: &F) -> i32 {
    f.as_raw_fd()
}

/// A non-blocking eventfd.
pub fn eventfd() -> OwnedFd {
    use rustix::event::EventfdFlags;
    rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC).expect("eventfd")
}

/// Read an eventfd's counter; `None` if it was not signalled.
pub fn eventfd_count(fd: &OwnedFd) -> Option<u64> {
    use std::io::Read;
    let mut f = File::from(fd.try_clone().expect("dup"));
    let mut b = [0u8; 8];
    match f.read(&mut b) {
        Ok(8) => Some(u64::from_ne_bytes(b)),
        _ => None,
    }
}
