//! An independent client: rust-vmm's `vfio_user` 0.1.7 `Client` against our server.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use common::*;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_user::Client as VfioUserClient;
use vugpu_device::gpu::GpuConfig;
use vugpu_device::pci::capability::{walk_extended, walk_standard};
use vugpu_device::regs::spec::offset as reg;

fn read32(c: &mut VfioUserClient, region: u32, off: u64) -> u32 {
    let mut b = [0u8; 4];
    c.region_read(region, off, &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn write32(c: &mut VfioUserClient, region: u32, off: u64, v: u32) {
    c.region_write(region, off, &v.to_le_bytes()).unwrap();
}

#[test]
fn rust_vmm_client_drives_the_gpu() {
    let mut cfg = GpuConfig::new(32 * MIB);
    cfg.msix_vectors = 4;
    cfg.engines = 3;
    let srv = InProcServer::start(cfg);
    let mut c = VfioUserClient::new(&srv.socket).unwrap();

    // Regions as listed by the independent client.
    let bar0 = c.region(0).unwrap();
    assert_eq!(bar0.size, 16 * MIB);
    let bar2 = c.region(2).unwrap();
    assert_eq!(bar2.size, 32 * MIB);
    assert_ne!(bar2.flags & VFIO_REGION_INFO_FLAG_MMAP, 0);
    assert_eq!(c.region(7).unwrap().size, 4096);
    for i in [1, 3, 4, 5, 6, 8] {
        assert_eq!(c.region(i).unwrap().size, 0, "region {i}");
    }
    assert_eq!(c.get_irq_info(2).unwrap().count, 4);
    assert_eq!(c.get_irq_info(3).unwrap().count, 1);

    // Config space in one read; both capability chains walk.
    let mut cfgspace = vec![0u8; 4096];
    c.region_read(7, 0, &mut cfgspace).unwrap();
    assert_eq!(&cfgspace[0..4], &[0x34, 0x12, 0x47, 0x56]);
    assert_eq!(walk_standard(&cfgspace).len(), 3);
    assert_eq!(walk_extended(&cfgspace).len(), 3);

    // mmap the VRAM BAR from the fd the client received; REGION_WRITEs show through it.
    let file = c
        .region(2)
        .unwrap()
        .file_offset
        .as_ref()
        .expect("BAR2 fd")
        .file()
        .try_clone()
        .unwrap();
    let bar = map_shared(file, 32 * MIB);
    c.region_write(2, 0x1000, b"independent").unwrap();
    let mut b = [0u8; 11];
    vm_memory::Bytes::read_slice(&bar, &mut b, vm_memory::MemoryRegionAddress(0x1000)).unwrap();
    assert_eq!(&b, b"independent");
    mmap_write(&bar, 0x3000, &0x5151_5151u32.to_le_bytes());
    assert_eq!(read32(&mut c, 2, 0x3000), 0x5151_5151);

    // MSI-X vectors fire on the eventfds handed over with SET_IRQS.
    let efds: Vec<_> = (0..4).map(|_| eventfd()).collect();
    let raw: Vec<_> = efds.iter().map(|e| e.as_raw_fd()).collect();
    c.set_irqs(
        2,
        VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        0,
        4,
        &raw,
    )
    .unwrap();
    // MSI-X messages are memory writes: Bus Master Enable (Command bit 2) first.
    write32(&mut c, 7, 0x04, 0x6);
    write32(&mut c, 0, u64::from(reg::IRQ_TRIGGER), 1);
    write32(&mut c, 0, u64::from(reg::IRQ_TRIGGER), 3);
    assert_eq!(wait_event(&efds[1], 2000), 1);
    assert_eq!(wait_event(&efds[3], 2000), 1);
    assert_eq!(wait_event(&efds[0], 20), 0);

    // DMA_MAP a memfd.
    let ram = memfd(0x40_0000);
    c.dma_map(0, 0x8000_0000, 0x40_0000, ram.as_raw_fd())
        .unwrap();

    // Reset restores registers.
    write32(&mut c, 0, u64::from(reg::SCRATCH0), 0x77);
    c.reset().unwrap();
    assert_eq!(read32(&mut c, 0, u64::from(reg::SCRATCH0)), 0);
    assert_eq!(read32(&mut c, 0, u64::from(reg::ID)), 0x5647_5055);

    // The independent client's DMA_MAP reached the device (its client ignores replies, so look
    // at the device itself while the client is still connected).
    let server = srv.stop();
    let windows: Vec<_> = server.gpu().dma().windows().collect();
    assert_eq!(windows.len(), 1);
    assert_eq!(
        (windows[0].iova.raw(), windows[0].size),
        (0x8000_0000, 0x40_0000)
    );
    assert_eq!(server.gpu().stats().device_resets, 1);
    drop(c);
}

#[test]
fn malformed_bytes_then_the_independent_client_is_served() {
    let srv = ServerProcess::spawn(&[]);
    {
        let mut s = UnixStream::connect(&srv.socket).unwrap();
        // A VERSION header whose size is smaller than a header, then noise.
        let mut bytes = vec![0u8; 16];
        bytes[2] = 1;
        bytes[4] = 8;
        bytes.extend_from_slice(&[0xee; 100]);
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut sink);
    }
    let mut c = VfioUserClient::new(&srv.socket).unwrap();
    assert_eq!(read32(&mut c, 0, 0), 0x5647_5055);
    drop(c);
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("client 2 connected"), "{log}");
}
