//! `vugpu serve` driven over its socket with the in-repo protocol client.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::os::fd::AsFd;

use common::*;
use vugpu_device::pci::capability::{walk_extended, walk_standard, CapId};
use vugpu_device::regs::spec::offset as reg;
use vugpu_protocol::backend::{DmaProt, DmaUnmap, IrqAction};
use vugpu_protocol::{IrqSetArg, ProtocolError};

const PBA: u64 = 0x10_8000;

#[test]
fn enumerate_regions_irqs_and_config_space() {
    let srv = ServerProcess::spawn(&["--vram", "64M", "--msix-vectors", "8", "--serial", "0x77"]);
    let mut c = srv.client();
    let info = c.device_info().unwrap();
    assert_eq!(info.flags, 0x3, "RESET | PCI");
    assert_eq!((info.num_regions, info.num_irqs), (9, 5));
    let expect: [(u64, u32); 9] = [
        (16 * MIB, 0xf),
        (0, 0),
        (64 * MIB, 7),
        (0, 0),
        (0, 0),
        (0, 0),
        (0, 0),
        (4096, 3),
        (0, 0),
    ];
    for (i, (size, flags)) in expect.iter().enumerate() {
        let r = c.region_info(i as u32).unwrap();
        assert_eq!((r.info.size, r.info.flags), (*size, *flags), "region {i}");
        assert_eq!(
            r.fd.is_some(),
            i == 0 || i == 2,
            "BAR0 and BAR2 carry an fd"
        );
        if i == 0 {
            // Only the doorbell page of BAR0 is mmappable (hw-spec §2); the MSI-X table and
            // PBA stay outside it.
            let areas: Vec<(u64, u64)> =
                r.sparse_areas.iter().map(|a| (a.offset, a.size)).collect();
            assert_eq!(areas, vec![(0x20_0000, 0x1000)]);
            assert_eq!(r.info.offset, 0, "doorbell page at file offset 0x200000");
        } else {
            assert!(r.sparse_areas.is_empty(), "whole-region mmap");
        }
    }
    let irqs: Vec<(u32, u32)> = (0..5)
        .map(|i| c.irq_info(i).map(|q| (q.count, q.flags)).unwrap())
        .collect();
    assert_eq!(irqs, vec![(0, 1), (0, 1), (8, 9), (1, 1), (0, 1)]);

    // The whole config space in ONE REGION_READ, then walk both chains.
    let mut cfg = vec![0u8; 4096];
    c.region_read(7, 0, &mut cfg).unwrap();
    assert_eq!(
        u32::from_le_bytes(cfg[0..4].try_into().unwrap()),
        0x5647_1234
    );
    assert_eq!(&cfg[9..12], &[0x00, 0x02, 0x03], "class 0x030200");
    assert_eq!(cfg[0x3d], 0, "Interrupt Pin 0");
    assert_eq!(
        u32::from_le_bytes(cfg[0x18..0x1c].try_into().unwrap()) & 0xf,
        0xc
    );
    let std: Vec<(u16, CapId)> = walk_standard(&cfg)
        .iter()
        .map(|f| (f.offset, f.id))
        .collect();
    assert_eq!(
        std,
        vec![
            (0x40, CapId::Standard(1)),
            (0x50, CapId::Standard(0x11)),
            (0x60, CapId::Standard(0x10))
        ]
    );
    let ext: Vec<(u16, CapId)> = walk_extended(&cfg)
        .iter()
        .map(|f| (f.offset, f.id))
        .collect();
    assert_eq!(
        ext,
        vec![
            (0x100, CapId::Extended { id: 1, version: 2 }),
            (
                0x148,
                CapId::Extended {
                    id: 0x15,
                    version: 1
                }
            ),
            (0x154, CapId::Extended { id: 3, version: 1 })
        ]
    );
    assert_eq!(
        u16::from_le_bytes([cfg[0x52], cfg[0x53]]) & 0x7ff,
        7,
        "8 vectors"
    );
    assert_eq!(cfg[0x158], 0x77, "serial");
    assert_eq!(rd32(&mut c, 0, 0), 0x5647_5055, "register file ID");
    // BAR sizing over the wire.
    wr32(&mut c, 7, 0x18, u32::MAX);
    wr32(&mut c, 7, 0x1c, u32::MAX);
    assert_eq!(rd32(&mut c, 7, 0x18), 0xfc00_000c);
    assert_eq!(rd32(&mut c, 7, 0x1c), u32::MAX);
}

#[test]
fn vram_bar_mmap_and_region_access_share_bytes() {
    let srv = ServerProcess::spawn(&["--vram", "64M"]);
    let mut c = srv.client();
    let r = c.region_info(2).unwrap();
    let fd = r.fd.expect("BAR2 fd");
    let bar = map_shared(std::fs::File::from(fd), r.info.size);
    // REGION_WRITE seen through the mmap.
    c.region_write(2, 0x10_0000, b"through the socket").unwrap();
    let mut b = [0u8; 18];
    vm_memory::Bytes::read_slice(&bar, &mut b, vm_memory::MemoryRegionAddress(0x10_0000)).unwrap();
    assert_eq!(&b, b"through the socket");
    // A store through the mmap seen by REGION_READ, at the last dword of the BAR.
    mmap_write(&bar, 64 * MIB - 4, &0xfeed_beefu32.to_le_bytes());
    assert_eq!(rd32(&mut c, 2, 64 * MIB - 4), 0xfeed_beef);
    // VRAM_DATA (device side) sees the mmap's bytes and writes back into them.
    mmap_write(&bar, 0x2000, &0x0bad_f00du32.to_le_bytes());
    wr32(&mut c, 0, u64::from(reg::VRAM_INDEX_LO), 0x2000);
    wr32(&mut c, 0, u64::from(reg::VRAM_INDEX_HI), 0);
    assert_eq!(rd32(&mut c, 0, u64::from(reg::VRAM_DATA)), 0x0bad_f00d);
    wr32(&mut c, 0, u64::from(reg::VRAM_DATA), 0x1234_5678);
    assert_eq!(mmap_read_u32(&bar, 0x2004), 0x1234_5678);
    // Out of the BAR: an error reply, and the session goes on.
    let mut b4 = [0u8; 4];
    assert!(c.region_read(2, 64 * MIB, &mut b4).is_err());
    assert_eq!(rd32(&mut c, 0, u64::from(reg::STATUS)), 1);
}

#[test]
fn irq_trigger_fires_the_assigned_eventfd() {
    let srv = ServerProcess::spawn(&["--msix-vectors", "4", "--engines", "3"]);
    let mut c = srv.client();
    let efds: Vec<_> = (0..4).map(|_| eventfd()).collect();
    let owned: Vec<_> = efds.iter().map(owned).collect();
    let borrowed: Vec<_> = owned.iter().map(|o| o.as_fd()).collect();
    c.set_irqs(2, 0, 4, IrqAction::Trigger, IrqSetArg::Eventfds(&borrowed))
        .unwrap();
    // The guest driver would enable MSI-X and Bus Master in config space.
    c.region_write(7, 0x53, &[0x80]).unwrap();
    c.region_write(7, 0x04, &[0x06, 0x00]).unwrap();
    for n in [2u32, 0, 3] {
        wr32(&mut c, 0, u64::from(reg::IRQ_TRIGGER), n);
        for (i, e) in efds.iter().enumerate() {
            let got = wait_event(e, if i as u32 == n { 2000 } else { 20 });
            assert_eq!(got, u64::from(i as u32 == n), "trigger {n}: vector {i}");
        }
    }
    assert_eq!(rd32(&mut c, 0, u64::from(reg::IRQ_COUNT)), 3);
    assert_eq!(rd32(&mut c, 0, u64::from(reg::IRQ_STATUS)), 0b1101);
    // De-assign vector 1 (no fds): the message is held in the PBA and delivered on re-assign.
    c.set_irqs(2, 1, 1, IrqAction::Trigger, IrqSetArg::Eventfds(&[]))
        .unwrap();
    wr32(&mut c, 0, u64::from(reg::IRQ_TRIGGER), 1);
    assert_eq!(rd32(&mut c, 0, PBA), 0b10);
    c.set_irqs(
        2,
        1,
        1,
        IrqAction::Trigger,
        IrqSetArg::Eventfds(&borrowed[1..2]),
    )
    .unwrap();
    assert_eq!(wait_event(&efds[1], 2000), 1);
    assert_eq!(rd32(&mut c, 0, PBA), 0);
    // Out-of-range vector: ignored, no interrupt.
    wr32(&mut c, 0, u64::from(reg::IRQ_TRIGGER), 4);
    assert!(efds.iter().all(|e| wait_event(e, 20) == 0));
    // Disable-all.
    c.set_irqs(2, 0, 0, IrqAction::Trigger, IrqSetArg::None)
        .unwrap();
    wr32(&mut c, 0, u64::from(reg::IRQ_TRIGGER), 0);
    assert_eq!(wait_event(&efds[0], 50), 0);
}

#[test]
fn msix_dead_injection_suppresses_one_vector() {
    let srv = ServerProcess::spawn(&[
        "--msix-vectors",
        "4",
        "--engines",
        "3",
        "--inject",
        "msix-dead=2",
    ]);
    let mut c = srv.client();
    let efds: Vec<_> = (0..4).map(|_| eventfd()).collect();
    let owned: Vec<_> = efds.iter().map(owned).collect();
    let borrowed: Vec<_> = owned.iter().map(|o| o.as_fd()).collect();
    c.set_irqs(2, 0, 4, IrqAction::Trigger, IrqSetArg::Eventfds(&borrowed))
        .unwrap();
    c.region_write(7, 0x04, &[0x06, 0x00]).unwrap();
    wr32(&mut c, 0, u64::from(reg::IRQ_TRIGGER), 2);
    wr32(&mut c, 0, u64::from(reg::IRQ_TRIGGER), 3);
    assert_eq!(wait_event(&efds[3], 2000), 1, "healthy vector fires");
    assert_eq!(wait_event(&efds[2], 100), 0, "dead vector never fires");
    assert_eq!(rd32(&mut c, 0, u64::from(reg::IRQ_COUNT)), 1);
    assert_eq!(rd32(&mut c, 0, PBA), 0, "not even pending");
}

#[test]
fn dma_map_errors_and_device_reset() {
    let srv = ServerProcess::spawn(&[]);
    let mut c = srv.client();
    let ram = memfd(0x20_0000);
    let rw = DmaProt {
        read: true,
        write: true,
    };
    c.dma_map(0x1_0000_0000, 0x20_0000, 0, rw, Some(ram.as_fd()))
        .unwrap();
    c.dma_map(
        0xfffc_0000,
        0x4_0000,
        0,
        DmaProt {
            read: true,
            write: false,
        },
        None,
    )
    .unwrap();
    let errno = |r: Result<(), ProtocolError>| match r {
        Err(ProtocolError::Remote { errno }) => errno,
        other => panic!("expected an error reply, got {other:?}"),
    };
    assert_eq!(
        errno(c.dma_map(0x1_0010_0000, 0x1000, 0, rw, None)),
        libc::EEXIST
    );
    assert_eq!(
        errno(c.dma_map(0x2_0000_0000, 0x40_0000, 0, rw, Some(ram.as_fd()))),
        libc::EINVAL,
        "window past the end of the memfd"
    );
    assert_eq!(
        errno(
            c.dma_unmap(DmaUnmap::Range {
                iova: 0x1_0000_0000,
                size: 0x1000
            })
            .map(|_| ())
        ),
        libc::ENOENT
    );
    c.dma_unmap(DmaUnmap::Range {
        iova: 0xfffc_0000,
        size: 0x4_0000,
    })
    .unwrap();

    // DEVICE_RESET restores registers and config space; VRAM survives.
    wr32(&mut c, 0, u64::from(reg::SCRATCH0), 0xdead);
    wr32(&mut c, 7, 0x04, 0x6);
    wr32(&mut c, 7, 0x10, 0xfe00_0000);
    c.region_write(2, 0, &[0xa5; 4]).unwrap();
    c.reset().unwrap();
    assert_eq!(rd32(&mut c, 0, u64::from(reg::SCRATCH0)), 0);
    assert_eq!(rd32(&mut c, 7, 0x04) & 0xffff, 0);
    assert_eq!(rd32(&mut c, 7, 0x10), 0);
    assert_eq!(rd32(&mut c, 0, u64::from(reg::STATUS)), 1);
    assert_eq!(
        rd32(&mut c, 2, 0),
        0xa5a5_a5a5,
        "VRAM preserved across reset"
    );
    // FLR through PCIe Device Control does the same.
    wr32(&mut c, 0, u64::from(reg::SCRATCH3), 3);
    c.region_write(7, 0x69, &[0x80]).unwrap();
    assert_eq!(rd32(&mut c, 0, u64::from(reg::SCRATCH3)), 0);
    assert_eq!(rd32(&mut c, 7, 0x68) & 0xffff, 0x2810);
}
