#![allow(dead_code)] // Each fuzz target uses one of the two harnesses.

//! Fuzz harness bodies, shared by the cargo-fuzz targets (`fuzz_targets/*.rs`) and by the
//! deterministic `cargo test` run (`tests/fuzz_harness.rs`), so CI exercises them on stable.
//!
//! - [`decode`]: header, request, VERSION JSON, DMA layouts, sparse-mmap and region-cap parsers
//!   on arbitrary bytes, checking the invariants decoders promise.
//! - [`session`]: arbitrary bytes (optionally after a valid VERSION, with fds attached, and with
//!   a server-initiated DMA in the middle) fed to a real [`Session`] over a socketpair with a
//!   device that asserts every validation promise of `DeviceBackend`. Must never panic or hang.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vugpu_protocol::backend::{
    region_flags, BackendError, BackendResult, DeviceBackend, DeviceInfo, DmaMapping, DmaUnmap,
    IrqData, IrqInfo, IrqSet, RegionInfo, RegionMmap, SparseArea,
};
use vugpu_protocol::client::parse_region_caps;
use vugpu_protocol::message::{IrqSetData, Request};
use vugpu_protocol::transport::send_message;
use vugpu_protocol::validate::Limits;
use vugpu_protocol::wire::{
    read_prefix, Capabilities, Command, DmaLayout, Header, RegionInfoWire, SparseMmapHeader,
    VersionWire, Writer,
};
use vugpu_protocol::{ServerConfig, Session, SessionStats, Status};

const MAX_XFER: u32 = 64 << 10;

fn dev_null_fds(n: u8) -> Vec<OwnedFd> {
    (0..n)
        .filter_map(|_| File::open("/dev/null").ok().map(OwnedFd::from))
        .collect()
}

/// Decoders on arbitrary bytes. The first byte selects limits and attached fds.
pub fn decode(data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_data_xfer_size: 4096 << (ctl & 7),
        max_msg_fds: 16,
        pgsize: 4096,
    };
    if let Ok(h) = Header::decode(rest) {
        // The header's byte view is the bytes it was decoded from.
        let mut w = Writer::default();
        w.put(&h);
        assert_eq!(rest.get(..Header::SIZE), Some(&w.into_vec()[..]));
        let body = rest.get(Header::SIZE..).unwrap_or(&[]).to_vec();
        let fds = dev_null_fds((ctl >> 3) & 3);
        if let Ok(req) = Request::decode(&h, body, fds, &limits) {
            check_request(&req, &limits);
        }
    }
    let _ = Capabilities::parse_json(rest);
    if let Ok((_, Some(json))) = VersionWire::decode(rest) {
        assert!(!json.contains(&0));
        if let Ok(c) = Capabilities::parse_json(json) {
            // Our own encoding of what we parsed must parse back to the same thing.
            let again = Capabilities::parse_json(c.to_json().as_bytes());
            assert_eq!(
                again.ok().map(|mut a| {
                    a.twin_socket = c.twin_socket;
                    a
                }),
                Some(c)
            );
        }
    }
    for layout in [DmaLayout::Spec, DmaLayout::Qemu] {
        if let Ok((h, tail)) = layout.decode(rest) {
            assert_eq!(tail.len() + layout.prefix_len(), rest.len());
            let mut w = Writer::default();
            if layout.encode(h, &[], &mut w).is_ok() {
                assert_eq!(w.len(), layout.prefix_len() + layout.trailer_len());
                // Re-encoding the decoded prefix gives back the received bytes.
                assert_eq!(
                    rest.get(..layout.prefix_len()),
                    w.into_vec().get(..layout.prefix_len())
                );
            }
        }
    }
    if let Some(areas) = SparseMmapHeader::decode_areas(rest) {
        assert!(areas.len() * SparseMmapHeader::AREA_SIZE <= rest.len());
    }
    if let Some((info, _)) = read_prefix::<RegionInfoWire>(rest) {
        if let Ok(areas) = parse_region_caps(&info, rest) {
            assert!(areas.len() * SparseMmapHeader::AREA_SIZE <= rest.len());
        }
    }
}

fn check_request(req: &Request, limits: &Limits) {
    match req {
        Request::RegionRead(a) => assert!(a.count <= limits.max_data_xfer_size),
        Request::RegionWrite { access, data } => {
            assert!(access.count <= limits.max_data_xfer_size);
            assert_eq!(data.len(), access.count as usize);
        }
        Request::RegionWriteMulti(v) => {
            assert!(!v.is_empty() && v.len() <= 200);
            assert!(v.iter().all(|e| (1..=8).contains(&e.count)));
        }
        Request::DmaMap(m) => {
            assert!(m.size > 0);
            assert!(m.iova.checked_add(m.size).is_some());
            assert!(m.iova.is_multiple_of(4096) && m.size.is_multiple_of(4096));
        }
        Request::DmaUnmap {
            unmap: DmaUnmap::Range { iova, size },
            ..
        } => {
            assert!(*size > 0 && iova.checked_add(*size).is_some());
        }
        Request::SetIrqs(r) => {
            let n = r.wire.count as usize;
            match &r.data {
                IrqSetData::None => {}
                IrqSetData::Bool(b) => assert_eq!(b.len(), n),
                IrqSetData::Eventfds(f) => assert!(f.is_empty() || f.len() == n),
            }
            if n == 0 {
                assert_eq!(r.wire.start, 0);
            }
        }
        _ => {}
    }
}

/// A device that asserts the server kept every promise of [`DeviceBackend`].
pub struct FuzzDevice {
    regions: Vec<(u32, Vec<u8>, bool, Vec<SparseArea>)>,
    irqs: Vec<IrqInfo>,
    mmap_file: Option<File>,
    maps: usize,
}

impl FuzzDevice {
    /// 9 regions (BAR0 trapped, BAR2 sparse mmap, BAR4 whole mmap, ROM, config), 5 IRQs.
    pub fn new() -> FuzzDevice {
        let rw = region_flags::READ | region_flags::WRITE;
        let mut regions: Vec<(u32, Vec<u8>, bool, Vec<SparseArea>)> =
            (0..9).map(|_| (0, Vec::new(), false, Vec::new())).collect();
        regions[0] = (rw, vec![0; 4096], false, Vec::new());
        regions[2] = (
            rw,
            vec![0; 65536],
            true,
            vec![
                SparseArea {
                    offset: 0,
                    size: 4096,
                },
                SparseArea {
                    offset: 8192,
                    size: 8192,
                },
            ],
        );
        regions[4] = (rw, vec![0; 8192], true, Vec::new());
        regions[6] = (region_flags::READ, vec![0xaa; 1024], false, Vec::new());
        regions[7] = (rw, (0..=255).collect(), false, Vec::new());
        FuzzDevice {
            regions,
            irqs: [1, 4, 8, 1, 0]
                .iter()
                .map(|&count| IrqInfo { flags: 1, count })
                .collect(),
            mmap_file: File::open("/dev/null").ok(),
            maps: 0,
        }
    }

    /// The region, after asserting the access lies inside it and within the transfer limit.
    fn region(
        &self,
        index: u32,
        offset: u64,
        len: usize,
    ) -> &(u32, Vec<u8>, bool, Vec<SparseArea>) {
        let r = &self.regions[index as usize];
        assert!(len as u64 <= u64::from(MAX_XFER));
        let end = offset
            .checked_add(len as u64)
            .expect("server let an overflow through");
        assert!(end <= r.1.len() as u64, "access outside the region");
        r
    }
}

impl Default for FuzzDevice {
    fn default() -> Self {
        FuzzDevice::new()
    }
}

impl DeviceBackend for FuzzDevice {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            reset: true,
            num_regions: self.regions.len() as u32,
            num_irqs: self.irqs.len() as u32,
        }
    }

    fn region_info(&self, index: u32) -> BackendResult<RegionInfo<'_>> {
        let r = &self.regions[index as usize];
        let mmap = match (&self.mmap_file, r.2) {
            (Some(f), true) => Some(RegionMmap {
                fd: f.as_fd(),
                file_offset: 0x1000,
                sparse_areas: r.3.clone(),
            }),
            _ => None,
        };
        Ok(RegionInfo {
            flags: r.0,
            size: r.1.len() as u64,
            mmap,
        })
    }

    fn irq_info(&self, index: u32) -> BackendResult<IrqInfo> {
        Ok(self.irqs[index as usize])
    }

    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> BackendResult<()> {
        let r = self.region(index, offset, data.len());
        assert!(r.0 & region_flags::READ != 0);
        let o = offset as usize;
        data.copy_from_slice(&r.1[o..o + data.len()]);
        Ok(())
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> BackendResult<()> {
        let flags = self.region(index, offset, data.len()).0;
        assert!(flags & region_flags::WRITE != 0);
        if index == 7 && offset < 4 {
            return Err(BackendError::Invalid("read-only id".into()));
        }
        let o = offset as usize;
        self.regions[index as usize].1[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn dma_map(&mut self, m: DmaMapping) -> BackendResult<()> {
        assert!(m.size > 0 && m.iova.is_multiple_of(4096) && m.size.is_multiple_of(4096));
        assert!(m.iova.checked_add(m.size).is_some());
        if m.iova == 0x6000 {
            return Err(BackendError::Exists("overlap".into()));
        }
        self.maps += 1;
        Ok(())
    }

    fn dma_unmap(&mut self, unmap: DmaUnmap) -> BackendResult<()> {
        match unmap {
            DmaUnmap::All => self.maps = 0,
            DmaUnmap::Range { .. } => {
                if self.maps == 0 {
                    return Err(BackendError::NotFound("no mapping".into()));
                }
                self.maps -= 1;
            }
        }
        Ok(())
    }

    fn set_irqs(&mut self, s: IrqSet) -> BackendResult<()> {
        let info = self.irqs[s.index as usize];
        if s.count == 0 {
            assert_eq!(s.start, 0);
        } else {
            let end = s.start.checked_add(s.count).expect("irq range overflow");
            assert!(end <= info.count, "irq range outside the index");
        }
        match &s.data {
            IrqData::None => {}
            IrqData::Bool(b) => assert_eq!(b.len(), s.count as usize),
            IrqData::Eventfds(f) => assert_eq!(f.len(), s.count as usize),
        }
        Ok(())
    }

    fn reset(&mut self) -> BackendResult<()> {
        Ok(())
    }

    fn client_disconnected(&mut self) {
        self.maps = 0;
    }
}

fn version_message() -> Vec<u8> {
    let json = r#"{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":65536}}"#;
    let mut body = Writer::default();
    VersionWire { major: 0, minor: 0 }.encode(Some(json), &mut body);
    let body = body.into_vec();
    let mut w = Writer::default();
    w.put(&Header {
        msg_id: 0,
        command: Command::Version as u16,
        size: (Header::SIZE + body.len()) as u32,
        flags: 0,
        error: 0,
    });
    w.bytes(&body);
    w.into_vec()
}

/// Feed bytes to a real session. First byte: bits 0-1 = fds attached (0-3) to the first
/// fuzzed byte, bit 2 = send a valid VERSION first, bit 3 = spec DMA layout, bit 4 = server DMA
/// after the first message, bit 5 = advertise write_multiple, bit 6 = the DMA serves client
/// requests while it waits.
/// Returns the session's counters (for coverage checks in tests).
pub fn session(data: &[u8]) -> SessionStats {
    let Some((&ctl, input)) = data.split_first() else {
        return SessionStats::default();
    };
    let Ok((client, server)) = UnixStream::pair() else {
        return SessionStats::default();
    };
    let Ok(drain) = client.try_clone() else {
        return SessionStats::default();
    };
    // The VERSION goes alone, so the fds ride with the first fuzzed message (a DMA_MAP with
    // its fd after negotiation, as QEMU sends it).
    let version = if ctl & 4 != 0 {
        version_message()
    } else {
        Vec::new()
    };
    let bytes = input.to_vec();
    let fds = dev_null_fds(ctl & 3);
    let writer = std::thread::spawn(move || {
        let b: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        let t = Duration::from_secs(5);
        if version.is_empty() || send_message(client.as_fd(), &version, &[], t).is_ok() {
            let _ = send_message(client.as_fd(), &bytes, &b, t);
        }
        let _ = client.shutdown(std::net::Shutdown::Write);
    });
    let reader = std::thread::spawn(move || {
        let mut drain = drain;
        let _ = drain.set_read_timeout(Some(Duration::from_secs(10)));
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = drain.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    });
    let config = ServerConfig {
        max_data_xfer_size: MAX_XFER,
        max_dma_maps: 4,
        write_multiple: ctl & 0x20 != 0,
        body_timeout: Duration::from_millis(50),
        ..ServerConfig::default()
    };
    let mut s = Session::new(server, config);
    s.set_dma_layout(if ctl & 8 != 0 {
        DmaLayout::Spec
    } else {
        DmaLayout::Qemu
    });
    s.set_dma_timeout(Duration::from_millis(50));
    let mut dev = FuzzDevice::new();
    if ctl & 0x10 != 0 {
        if let Ok(Status::Continue) = s.handle_message(&mut dev) {
            let mut buf = [0u8; 100];
            if ctl & 0x40 != 0 {
                let _ = s.dma_read_serving(0x1000, &mut buf, &mut dev);
                let _ = s.dma_write_serving(0x2000, &buf, &mut dev);
            } else {
                let _ = s.dma_read(0x1000, &mut buf);
                let _ = s.dma_write(0x2000, &buf);
            }
        }
    }
    if ctl & 0x80 != 0 {
        // The event loop's way: never wait for a message to start (bounded, for slow writers).
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match s.handle_ready_message(&mut dev) {
                Ok(Status::Continue) => {}
                Ok(Status::Idle) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(200));
                }
                _ => break,
            }
        }
    }
    let _ = s.run(&mut dev);
    dev.client_disconnected();
    let stats = s.stats().clone();
    drop(s);
    let _ = writer.join();
    let _ = reader.join();
    stats
}
