//! Unit tests of the composed device through the `DeviceBackend` seam (no socket).

use std::os::fd::OwnedFd;

use vmm_sys_util::eventfd::EventFd;
use vugpu_protocol::backend::DmaProt;

use super::*;
use crate::pci::capability::{walk_extended, walk_standard, CapId};
use crate::regs::spec::offset as reg;

const MIB: u64 = 1 << 20;

fn gpu() -> Gpu {
    let mut cfg = GpuConfig::new(64 * MIB);
    cfg.serial = 0x1122_3344_5566_7788;
    Gpu::new(&cfg).unwrap()
}

/// The test's end of an interrupt eventfd.
struct TestEfd(OwnedFd);

impl TestEfd {
    /// Reads and resets the counter; fails (EAGAIN) when it is 0.
    fn read(&self) -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        rustix::io::read(&self.0, &mut b)?;
        Ok(u64::from_ne_bytes(b))
    }
}

/// A non-blocking eventfd: the test's end and the one handed to the device.
fn efd() -> (TestEfd, OwnedFd) {
    let e = rustix::event::eventfd(0, rustix::event::EventfdFlags::NONBLOCK).unwrap();
    let o = e.try_clone().unwrap();
    (TestEfd(e), o)
}

fn rd32(g: &mut Gpu, region: u32, off: u64) -> u32 {
    let mut b = [0u8; 4];
    g.region_read(region, off, &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn wr32(g: &mut Gpu, region: u32, off: u64, v: u32) {
    g.region_write(region, off, &v.to_le_bytes()).unwrap();
}

/// Command: Memory Space, and Bus Master Enable if `on` (a driver's pci_set_master).
fn bus_master(g: &mut Gpu, on: bool) {
    let command: u16 = if on { 0x6 } else { 0x2 };
    g.region_write(7, 0x04, &command.to_le_bytes()).unwrap();
}

fn assign(g: &mut Gpu, index: u32, start: u32, fds: Vec<Option<OwnedFd>>) {
    g.set_irqs(IrqSet {
        index,
        start,
        count: fds.len() as u32,
        action: IrqAction::Trigger,
        data: IrqData::Eventfds(fds),
    })
    .unwrap();
}

#[test]
fn regions_and_irqs_match_the_contract() {
    let g = gpu();
    assert_eq!(
        g.device_info(),
        DeviceInfo {
            reset: true,
            num_regions: 9,
            num_irqs: 5
        }
    );
    let r0 = g.region_info(0).unwrap();
    assert_eq!((r0.flags, r0.size), (7, 16 * MIB));
    let m0 = r0.mmap.unwrap();
    assert_eq!(m0.file_offset, 0);
    assert_eq!(
        m0.sparse_areas,
        vec![SparseArea {
            offset: 0x20_0000,
            size: 0x1000
        }],
        "only the doorbell page is mmappable (hw-spec §2)"
    );
    let r2 = g.region_info(2).unwrap();
    assert_eq!((r2.flags, r2.size), (7, 64 * MIB));
    let m = r2.mmap.unwrap();
    assert_eq!(m.file_offset, 0);
    assert!(m.sparse_areas.is_empty());
    for i in [1, 3, 4, 5, 6, 8] {
        let r = g.region_info(i).unwrap();
        assert_eq!((r.flags, r.size), (0, 0), "region {i}");
    }
    let r7 = g.region_info(7).unwrap();
    assert_eq!((r7.flags, r7.size), (3, 4096));
    assert!(g.region_info(9).is_err());
    assert_eq!(g.irq_info(0).unwrap().count, 0);
    assert_eq!(g.irq_info(1).unwrap().count, 0);
    assert_eq!(
        g.irq_info(2).unwrap(),
        IrqInfo {
            flags: 9,
            count: 16
        }
    );
    assert_eq!(g.irq_info(3).unwrap(), IrqInfo { flags: 1, count: 1 });
    assert_eq!(g.irq_info(4).unwrap().count, 0);
    assert!(g.irq_info(5).is_err());
}

#[test]
fn config_space_identity_and_capabilities() {
    let mut g = gpu();
    let mut cfg = vec![0u8; 4096];
    g.region_read(7, 0, &mut cfg).unwrap();
    assert_eq!(&cfg[0..4], &[0x34, 0x12, 0x47, 0x56]);
    assert_eq!(&cfg[8..12], &[0x01, 0x00, 0x02, 0x03]);
    assert_eq!(cfg[0x3d], 0, "Interrupt Pin");
    assert_eq!(u32::from_le_bytes(cfg[0x10..0x14].try_into().unwrap()), 0);
    assert_eq!(u32::from_le_bytes(cfg[0x18..0x1c].try_into().unwrap()), 0xc);
    let std: Vec<_> = walk_standard(&cfg)
        .iter()
        .map(|c| (c.offset, c.id))
        .collect();
    assert_eq!(
        std,
        vec![
            (0x40, CapId::Standard(0x01)),
            (0x50, CapId::Standard(0x11)),
            (0x60, CapId::Standard(0x10)),
        ]
    );
    let ext: Vec<_> = walk_extended(&cfg)
        .iter()
        .map(|c| (c.offset, c.id))
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
            (0x154, CapId::Extended { id: 3, version: 1 }),
        ]
    );
    assert_eq!(rd32(&mut g, 7, 0x158), 0x5566_7788);
    assert_eq!(rd32(&mut g, 7, 0x15c), 0x1122_3344);
    // ReBAR: 1 MiB .. 64 MiB.
    assert_eq!(rd32(&mut g, 7, 0x14c), 0x7f0);
}

#[test]
fn bar_sizing_through_config_writes() {
    let mut g = gpu();
    wr32(&mut g, 7, 0x10, u32::MAX);
    assert_eq!(rd32(&mut g, 7, 0x10), 0xff00_0000);
    wr32(&mut g, 7, 0x18, u32::MAX);
    wr32(&mut g, 7, 0x1c, u32::MAX);
    assert_eq!(rd32(&mut g, 7, 0x18), 0xfc00_000c);
    assert_eq!(rd32(&mut g, 7, 0x1c), 0xffff_ffff);
    for bar in [0x14, 0x20, 0x24, 0x30] {
        wr32(&mut g, 7, bar, u32::MAX);
        assert_eq!(rd32(&mut g, 7, bar), 0, "unimplemented {bar:#x}");
    }
}

#[test]
fn rebar_resize_changes_region_size() {
    let mut g = gpu();
    g.region_write(7, 0x148 + 9, &[2]).unwrap();
    assert_eq!(g.region_info(2).unwrap().size, 4 * MIB);
    wr32(&mut g, 7, 0x18, u32::MAX);
    assert_eq!(rd32(&mut g, 7, 0x18), 0xffc0_000c);
    let mut b = [0u8; 4];
    assert!(g.region_read(2, 4 * MIB, &mut b).is_err());
    g.reset().unwrap();
    assert_eq!(g.region_info(2).unwrap().size, 64 * MIB);
}

/// The server bounds every region access with `region_flags_size` (no allocation); it must say
/// exactly what `region_info` says, also after a Resizable BAR change.
#[test]
fn region_flags_size_agrees_with_region_info() {
    let mut g = gpu();
    let check = |g: &Gpu| {
        for index in 0..9 {
            let ri = g.region_info(index).unwrap();
            assert_eq!(
                g.region_flags_size(index).unwrap(),
                (ri.flags, ri.size),
                "region {index}"
            );
        }
        assert!(g.region_flags_size(9).is_err());
        assert!(g.region_flags_size(u32::MAX).is_err());
    };
    check(&g);
    g.region_write(7, 0x148 + 9, &[2]).unwrap();
    assert_eq!(g.region_flags_size(2).unwrap().1, 4 * MIB);
    check(&g);
}

#[test]
fn bar2_region_access_is_vram() {
    let mut g = gpu();
    g.region_write(2, 0x1000, b"vram bytes").unwrap();
    let mut b = [0u8; 10];
    g.vram().read(VramOffset(0x1000), &mut b).unwrap();
    assert_eq!(&b, b"vram bytes");
    g.vram()
        .write_u32(VramOffset(64 * MIB - 4), 0xabad_cafe)
        .unwrap();
    assert_eq!(rd32(&mut g, 2, 64 * MIB - 4), 0xabad_cafe);
    assert!(g.region_write(2, 64 * MIB - 2, &[0; 4]).is_err());
    assert!(g.region_write(2, u64::MAX, &[0; 4]).is_err());
}

#[test]
fn register_file_through_bar0() {
    let mut g = gpu();
    assert_eq!(rd32(&mut g, 0, 0), 0x5647_5055);
    assert_eq!(rd32(&mut g, 0, 0x0c), 16);
    assert_eq!(rd32(&mut g, 0, 0x10), 64 << 20);
    g.vram().write_u32(VramOffset(0x40), 0x600d_f00d).unwrap();
    wr32(&mut g, 0, u64::from(reg::VRAM_INDEX_LO), 0x40);
    assert_eq!(rd32(&mut g, 0, u64::from(reg::VRAM_DATA)), 0x600d_f00d);
    wr32(&mut g, 0, u64::from(reg::VRAM_DATA), 0x1234);
    assert_eq!(g.vram().read_u32(VramOffset(0x44)).unwrap(), 0x1234);
    // Bad width, reserved area, straddling accesses.
    let mut b2 = [0u8; 2];
    g.region_read(0, 0, &mut b2).unwrap();
    assert_eq!(b2, [0xff; 2]);
    assert_eq!(g.register_stats().bad_accesses, 1);
    assert_eq!(rd32(&mut g, 0, 0x20_0000), 0, "reserved");
    let mut b8 = [0u8; 8];
    g.region_read(0, REGISTER_FILE_SIZE - 4, &mut b8).unwrap();
    assert_eq!(b8, [0xff; 8]);
    assert_eq!(g.stats().bad_bar0_accesses, 1);
}

#[test]
fn irq_trigger_fires_the_eventfd_and_counts() {
    let mut g = gpu();
    bus_master(&mut g, true);
    let (e3, f3) = efd();
    let (e5, f5) = efd();
    assign(&mut g, 2, 3, vec![Some(f3), None, Some(f5)]);
    wr32(&mut g, 0, u64::from(reg::IRQ_TRIGGER), 5);
    assert_eq!(e5.read().unwrap(), 1);
    assert!(e3.read().is_err(), "vector 3 not signalled");
    wr32(&mut g, 0, u64::from(reg::IRQ_TRIGGER), 3);
    assert_eq!(e3.read().unwrap(), 1);
    assert_eq!(
        rd32(&mut g, 0, u64::from(reg::IRQ_STATUS)),
        (1 << 3) | (1 << 5)
    );
    assert_eq!(rd32(&mut g, 0, u64::from(reg::IRQ_COUNT)), 2);
    // Vector 4 has no eventfd: PBA bit 4, delivered when assigned.
    wr32(&mut g, 0, u64::from(reg::IRQ_TRIGGER), 4);
    assert_eq!(rd32(&mut g, 0, MSIX_PBA_OFFSET as u64), 1 << 4);
    let (e4, f4) = efd();
    assign(&mut g, 2, 4, vec![Some(f4)]);
    assert_eq!(e4.read().unwrap(), 1);
    assert_eq!(rd32(&mut g, 0, MSIX_PBA_OFFSET as u64), 0);
    // Software trigger via SET_IRQS DATA_NONE and DATA_BOOL.
    g.set_irqs(IrqSet {
        index: 2,
        start: 5,
        count: 1,
        action: IrqAction::Trigger,
        data: IrqData::None,
    })
    .unwrap();
    assert_eq!(e5.read().unwrap(), 1);
    g.set_irqs(IrqSet {
        index: 2,
        start: 3,
        count: 3,
        action: IrqAction::Trigger,
        data: IrqData::Bool(vec![true, false, true]),
    })
    .unwrap();
    assert_eq!(e3.read().unwrap(), 1);
    assert_eq!(e5.read().unwrap(), 1);
    assert!(e4.read().is_err());
    // Disable-all form drops every eventfd.
    g.set_irqs(IrqSet {
        index: 2,
        start: 0,
        count: 0,
        action: IrqAction::Trigger,
        data: IrqData::None,
    })
    .unwrap();
    wr32(&mut g, 0, u64::from(reg::IRQ_TRIGGER), 5);
    assert!(e5.read().is_err());
}

#[test]
fn set_irqs_rejections() {
    let mut g = gpu();
    let (_e, f) = efd();
    let bad = |g: &mut Gpu, index, start, count, action, data| {
        g.set_irqs(IrqSet {
            index,
            start,
            count,
            action,
            data,
        })
        .unwrap_err()
    };
    assert!(matches!(
        bad(&mut g, 2, 15, 2, IrqAction::Trigger, IrqData::None),
        BackendError::Invalid(_)
    ));
    assert!(matches!(
        bad(&mut g, 2, u32::MAX, 2, IrqAction::Trigger, IrqData::None),
        BackendError::Invalid(_)
    ));
    assert!(matches!(
        bad(&mut g, 2, 0, 1, IrqAction::Mask, IrqData::None),
        BackendError::NotSupported(_)
    ));
    assert!(matches!(
        bad(
            &mut g,
            0,
            0,
            1,
            IrqAction::Trigger,
            IrqData::Eventfds(vec![Some(f)])
        ),
        BackendError::Invalid(_)
    ));
    assert!(matches!(
        bad(&mut g, 7, 0, 0, IrqAction::Trigger, IrqData::None),
        BackendError::Invalid(_)
    ));
    // A non-eventfd fd is refused and nothing is assigned.
    let (_e0, f0) = efd();
    let devnull: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    assert!(matches!(
        bad(
            &mut g,
            2,
            0,
            2,
            IrqAction::Trigger,
            IrqData::Eventfds(vec![Some(f0), Some(devnull)])
        ),
        BackendError::Invalid(_)
    ));
    assert!(!g.msix().has_notifier(0));
    // More data entries than vectors: refused, nothing assigned past the range.
    let (_e1, f1) = efd();
    let (_e2, f2) = efd();
    assert!(matches!(
        bad(
            &mut g,
            2,
            3,
            1,
            IrqAction::Trigger,
            IrqData::Eventfds(vec![Some(f1), Some(f2)])
        ),
        BackendError::Invalid(_)
    ));
    assert!(!g.msix().has_notifier(3) && !g.msix().has_notifier(4));
    assert!(matches!(
        bad(
            &mut g,
            2,
            0,
            2,
            IrqAction::Trigger,
            IrqData::Bool(vec![true])
        ),
        BackendError::Invalid(_)
    ));
    // INTx disable (sent by QEMU when MSI-X is enabled) is accepted.
    g.set_irqs(IrqSet {
        index: 0,
        start: 0,
        count: 0,
        action: IrqAction::Trigger,
        data: IrqData::None,
    })
    .unwrap();
}

#[test]
fn function_mask_in_config_space_holds_delivery() {
    let mut g = gpu();
    bus_master(&mut g, true);
    let (e, f) = efd();
    assign(&mut g, 2, 0, vec![Some(f)]);
    // Enable + Function Mask.
    g.region_write(7, 0x53, &[0xc0]).unwrap();
    wr32(&mut g, 0, u64::from(reg::IRQ_TRIGGER), 0);
    assert!(e.read().is_err());
    assert_eq!(rd32(&mut g, 0, MSIX_PBA_OFFSET as u64), 1);
    g.region_write(7, 0x53, &[0x80]).unwrap();
    assert_eq!(e.read().unwrap(), 1, "unmask delivers the pending message");
}

#[test]
fn msix_dead_injection_suppresses_one_vector() {
    let mut cfg = GpuConfig::new(MIB);
    cfg.inject.msix_dead = vec![1];
    let mut g = Gpu::new(&cfg).unwrap();
    bus_master(&mut g, true);
    let (e0, f0) = efd();
    let (e1, f1) = efd();
    assign(&mut g, 2, 0, vec![Some(f0), Some(f1)]);
    wr32(&mut g, 0, u64::from(reg::IRQ_TRIGGER), 1);
    wr32(&mut g, 0, u64::from(reg::IRQ_TRIGGER), 0);
    assert_eq!(e0.read().unwrap(), 1);
    assert!(e1.read().is_err());
    assert_eq!(rd32(&mut g, 0, u64::from(reg::IRQ_COUNT)), 1);
    cfg.inject.msix_dead = vec![2, 16];
    assert!(matches!(Gpu::new(&cfg), Err(GpuError::BadInjection { .. })));
}

#[test]
fn flr_via_device_control_restores_power_on_state() {
    let mut g = gpu();
    let (e, f) = efd();
    assign(&mut g, 2, 0, vec![Some(f)]);
    g.vram().write_u32(VramOffset(0), 0x5a5a_5a5a).unwrap();
    wr32(&mut g, 0, u64::from(reg::SCRATCH0), 42);
    wr32(&mut g, 7, 0x04, 0x6);
    wr32(&mut g, 7, 0x10, 0xfe00_0000);
    g.region_write(7, 0x53, &[0x80]).unwrap();
    g.region_write(7, 0x68, &[0x00, 0x00]).unwrap();
    assert!(!g.device_control().no_snoop());
    wr32(&mut g, 0, u64::from(reg::IRQ_TRIGGER), 1); // pending: no fd for vector 1
                                                     // Initiate FLR.
    g.region_write(7, 0x69, &[0x80]).unwrap();
    assert_eq!(g.stats().flrs, 1);
    assert_eq!(rd32(&mut g, 0, u64::from(reg::SCRATCH0)), 0);
    assert_eq!(rd32(&mut g, 7, 0x04) & 0xffff, 0);
    assert_eq!(rd32(&mut g, 7, 0x10), 0);
    assert_eq!(rd32(&mut g, 7, 0x50) >> 16, 15, "MSI-X disabled");
    assert!(g.device_control().no_snoop() && g.device_control().relaxed_ordering());
    assert_eq!(rd32(&mut g, 0, MSIX_PBA_OFFSET as u64), 0);
    assert_eq!(rd32(&mut g, 0, u64::from(reg::IRQ_COUNT)), 0);
    assert_eq!(
        g.vram().read_u32(VramOffset(0)).unwrap(),
        0x5a5a_5a5a,
        "VRAM preserved"
    );
    // FLR cleared Bus Master Enable: the message is held until it is set again.
    wr32(&mut g, 0, u64::from(reg::IRQ_TRIGGER), 0);
    assert!(e.read().is_err(), "MSI-X sent without Bus Master Enable");
    assert_eq!(
        rd32(&mut g, 0, MSIX_PBA_OFFSET as u64),
        1,
        "held in the PBA"
    );
    g.region_write(7, 0x53, &[0x80]).unwrap();
    assert!(e.read().is_err(), "MSI-X Enable alone does not release it");
    assert_eq!(rd32(&mut g, 0, MSIX_PBA_OFFSET as u64), 1);
    bus_master(&mut g, true);
    assert_eq!(e.read().unwrap(), 1, "eventfds kept across FLR");
    assert_eq!(rd32(&mut g, 0, MSIX_PBA_OFFSET as u64), 0);
}

#[test]
fn device_reset_and_soft_reset() {
    let mut g = gpu();
    wr32(&mut g, 0, u64::from(reg::SCRATCH1), 7);
    wr32(&mut g, 7, 0x04, 0x2);
    wr32(&mut g, 0, u64::from(reg::SOFT_RESET), 0x1234);
    assert_eq!(
        rd32(&mut g, 0, u64::from(reg::SCRATCH1)),
        7,
        "wrong magic ignored"
    );
    wr32(&mut g, 0, u64::from(reg::SOFT_RESET), 0x5253_5421);
    assert_eq!(rd32(&mut g, 0, u64::from(reg::SCRATCH1)), 0);
    assert_eq!(
        rd32(&mut g, 7, 0x04) & 0xffff,
        2,
        "soft reset keeps config space"
    );
    assert_eq!(g.stats().soft_resets, 1);
    wr32(&mut g, 0, u64::from(reg::SCRATCH1), 7);
    g.reset().unwrap();
    assert_eq!(rd32(&mut g, 0, u64::from(reg::SCRATCH1)), 0);
    assert_eq!(rd32(&mut g, 7, 0x04) & 0xffff, 0);
    assert_eq!(rd32(&mut g, 0, u64::from(reg::STATUS)), 1);
}

fn memfd(len: u64) -> std::fs::File {
    let flags = rustix::fs::MemfdFlags::CLOEXEC;
    let f = std::fs::File::from(rustix::fs::memfd_create(c"gpu-test", flags).unwrap());
    f.set_len(len).unwrap();
    f
}

fn mapping(iova: u64, size: u64, fd: Option<OwnedFd>) -> DmaMapping {
    DmaMapping {
        iova,
        size,
        file_offset: 0,
        prot: DmaProt {
            read: true,
            write: true,
        },
        fd,
    }
}

#[test]
fn dma_map_unmap_errors_and_disconnect() {
    let mut g = gpu();
    let f = memfd(0x10000);
    g.dma_map(mapping(
        0x10000,
        0x10000,
        Some(f.try_clone().unwrap().into()),
    ))
    .unwrap();
    g.dma_map(mapping(0xfffc_0000, 0x40000, None)).unwrap();
    let e = g.dma_map(mapping(0x18000, 0x1000, None)).unwrap_err();
    assert_eq!(e.errno(), libc::EEXIST);
    let e = g
        .dma_map(mapping(
            0x40000,
            0x20000,
            Some(f.try_clone().unwrap().into()),
        ))
        .unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "past the end of the file");
    let e = g
        .dma_unmap(DmaUnmap::Range {
            iova: 0x10000,
            size: 0x1000,
        })
        .unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT);
    g.dma().write(Iova(0x10010), b"dma").unwrap();
    let mut b = [0u8; 3];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, 0x10).unwrap();
    assert_eq!(&b, b"dma");
    g.dma_unmap(DmaUnmap::Range {
        iova: 0xfffc_0000,
        size: 0x40000,
    })
    .unwrap();
    assert_eq!(g.dma().len(), 1);
    // Disconnect drops mappings and fds, keeps device state.
    let (e0, f0) = efd();
    assign(&mut g, 2, 0, vec![Some(f0)]);
    wr32(&mut g, 0, u64::from(reg::SCRATCH2), 9);
    g.client_disconnected();
    assert!(g.dma().is_empty());
    assert!(!g.msix().has_notifier(0));
    assert_eq!(rd32(&mut g, 0, u64::from(reg::SCRATCH2)), 9);
    wr32(&mut g, 0, u64::from(reg::IRQ_TRIGGER), 0);
    assert!(e0.read().is_err());
    g.dma_map(mapping(0x10000, 0x10000, Some(f.into())))
        .unwrap();
    g.dma_unmap(DmaUnmap::All).unwrap();
    assert!(g.dma().is_empty());
}

#[test]
fn err_irq_notifier() {
    let mut g = gpu();
    assert!(!g.signal_error());
    let (e, f) = efd();
    assign(&mut g, 3, 0, vec![Some(f)]);
    assert!(g.signal_error());
    assert_eq!(e.read().unwrap(), 1);
    g.set_irqs(IrqSet {
        index: 3,
        start: 0,
        count: 1,
        action: IrqAction::Trigger,
        data: IrqData::None,
    })
    .unwrap();
    assert_eq!(e.read().unwrap(), 1);
    g.set_irqs(IrqSet {
        index: 3,
        start: 0,
        count: 0,
        action: IrqAction::Trigger,
        data: IrqData::None,
    })
    .unwrap();
    assert!(!g.signal_error());
}

#[test]
fn bad_configs_are_refused() {
    let mut cfg = GpuConfig::new(MIB);
    cfg.msix_vectors = 0;
    assert!(matches!(Gpu::new(&cfg), Err(GpuError::BadVectors(0))));
    cfg.msix_vectors = 2049;
    assert!(matches!(Gpu::new(&cfg), Err(GpuError::BadVectors(2049))));
    let cfg = GpuConfig::new(3 * MIB);
    assert!(matches!(Gpu::new(&cfg), Err(GpuError::Vram(_))));
    let mut cfg = GpuConfig::new(MIB);
    cfg.msix_vectors = 4;
    assert!(matches!(
        Gpu::new(&cfg),
        Err(GpuError::TooFewVectors {
            engines: 4,
            vectors: 4
        })
    ));
    cfg.engines = 17;
    cfg.msix_vectors = 64;
    assert!(matches!(Gpu::new(&cfg), Err(GpuError::TooManyEngines(17))));
    cfg.engines = 0;
    cfg.msix_vectors = 1;
    assert!(
        Gpu::new(&cfg).is_ok(),
        "a GPU without engines needs only vector 0"
    );
    let mut cfg = GpuConfig::new(MIB);
    cfg.msix_vectors = 2048;
    let mut g = Gpu::new(&cfg).unwrap();
    assert_eq!(rd32(&mut g, 0, 0x0c), 2048);
}

mod engines {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::engine::desc::{Addr, Aperture, RawDescriptor};
    use crate::engine::regs::{control, offset as eoff, State};

    fn ereg(e: usize, off: u32) -> u64 {
        0x1000 + 0x100 * e as u64 + u64::from(off)
    }

    fn vram_at(addr: u64) -> Addr {
        Addr {
            aperture: Aperture::Vram,
            addr,
        }
    }

    #[test]
    fn discovery_registers_and_absent_engines() {
        let mut g = gpu();
        assert_eq!(rd32(&mut g, 0, 0x90), 4, "ENGINE_COUNT");
        assert_eq!(rd32(&mut g, 0, 0x08), 0x3f, "CAPS");
        assert_eq!(rd32(&mut g, 0, 0x04), 5, "VERSION 0.5");
        // Engine 4 does not exist: RsvdZ.
        wr32(&mut g, 0, ereg(4, eoff::RING_SIZE), 16);
        assert_eq!(rd32(&mut g, 0, ereg(4, eoff::RING_SIZE)), 0);
        // Bad widths in the engine area and the doorbell page are counted.
        let mut b = [0u8; 2];
        g.region_read(0, ereg(0, 0), &mut b).unwrap();
        assert_eq!(b, [0xff, 0xff]);
        g.region_write(0, 0x20_0002, &[1, 2, 3, 4]).unwrap();
        assert_eq!(g.stats().bad_bar0_accesses, 2);
        // Trapped doorbell accesses reach the page.
        wr32(&mut g, 0, 0x20_0040, 7);
        assert_eq!(rd32(&mut g, 0, ereg(1, eoff::RING_TAIL)), 7);
        assert_eq!(rd32(&mut g, 0, 0x20_0ffc), 0);
    }

    #[test]
    fn engine_runs_a_vram_ring_and_errors_reach_config_space() {
        let mut g = gpu();
        bus_master(&mut g, true);
        let ring = 0x10_0000u64;
        let d = RawDescriptor::fill(vram_at(0x20_0000), 64, 0xa5a5_a5a5);
        g.vram().write(VramOffset(ring), &d.to_bytes()).unwrap();
        let bad = RawDescriptor::fill(vram_at(64 * MIB - 4), 8, 0);
        g.vram()
            .write(VramOffset(ring + 64), &bad.to_bytes())
            .unwrap();
        wr32(&mut g, 0, ereg(0, eoff::RING_BASE_LO), ring as u32);
        wr32(&mut g, 0, ereg(0, eoff::RING_SIZE), 2);
        wr32(&mut g, 0, ereg(0, eoff::RING_APERTURE), 1);
        wr32(&mut g, 0, ereg(0, eoff::CONTROL), control::ENABLE);
        wr32(&mut g, 0, ereg(0, eoff::RING_TAIL), 2);
        let deadline = Instant::now() + Duration::from_secs(5);
        while rd32(&mut g, 0, ereg(0, eoff::STATUS)) != State::Error as u32 {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(rd32(&mut g, 0, ereg(0, eoff::RING_HEAD)), 1);
        assert_eq!(
            g.vram().read_u32(VramOffset(0x20_003c)).unwrap(),
            0xa5a5_a5a5
        );
        // Queued before STATUS showed ERROR; any region access (or the event loop) reports it.
        let mut b = [0u8; 4];
        g.region_read(7, 0x104, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 1 << 22, "internal error");
        assert_eq!(g.process_engine_events(), 0, "already reported");
        assert_eq!(rd32(&mut g, 0, 0xa0), 1, "ERR_CAUSE");
        assert!(g.msix().is_pending(0), "vector 0 held (no eventfd)");
        assert_eq!(g.stats().engine_errors, 1);
        // FLR: engines back to power-on, config error bits cleared.
        g.region_write(7, 0x69, &[0x80]).unwrap();
        assert_eq!(
            rd32(&mut g, 0, ereg(0, eoff::STATUS)),
            State::Disabled as u32
        );
        assert_eq!(rd32(&mut g, 0, ereg(0, eoff::ERROR_CODE)), 0);
        assert_eq!(g.pci().config().get_u32(0x104), 0);
    }

    /// Is `fd` readable within `ms` milliseconds.
    fn readable(fd: &EventFd, ms: u64) -> bool {
        // vmm-sys-util's EventFd has no `AsFd`: its own (epoll) poll helper takes it as it is.
        let ctx = vmm_sys_util::poll::PollContext::<u32>::new().unwrap();
        ctx.add(fd, 0).unwrap();
        let events = ctx
            .wait_timeout(std::time::Duration::from_millis(ms))
            .unwrap();
        events.iter_readable().count() == 1
    }

    /// The RING_TAIL stall (found by the guest `dma` suite): a job submitted with a trapped
    /// RING_TAIL write whose engine asks for a DMA message (fd-less window) while the event loop
    /// is still inside that region access. Handling a region access must never consume the
    /// engine eventfd, or the queued message waits for an unrelated engine event.
    #[test]
    fn region_accesses_never_consume_a_dma_message_wakeup() {
        use crate::engine::env::MsgOp;
        let mut g = gpu();
        bus_master(&mut g, true);
        // The BIOS ROM window QEMU maps without an fd.
        let rom = 0xfffc_0000u64;
        g.dma_map(mapping(rom, 0x40000, None)).unwrap();
        let ring = 0x10_0000u64;
        let src = Addr {
            aperture: Aperture::Sys,
            addr: rom + 0x23fa6,
        };
        let d = RawDescriptor::copy(src, vram_at(0x1000), 100);
        g.vram().write(VramOffset(ring), &d.to_bytes()).unwrap();
        wr32(&mut g, 0, ereg(0, eoff::RING_BASE_LO), ring as u32);
        wr32(&mut g, 0, ereg(0, eoff::RING_SIZE), 2);
        wr32(&mut g, 0, ereg(0, eoff::RING_APERTURE), 1);
        wr32(&mut g, 0, ereg(0, eoff::CONTROL), control::ENABLE);
        // The event loop is not running: nothing but region accesses touches the eventfd.
        wr32(&mut g, 0, ereg(0, eoff::RING_TAIL), 1);
        assert!(
            readable(g.engine_events(), 5000),
            "the engine's DMA message request must leave the eventfd readable"
        );
        // More trapped accesses while the request waits: engine registers (the path that
        // reports engine faults on the spot), the trapped doorbell, config space.
        wr32(&mut g, 0, ereg(0, eoff::RING_TAIL), 1);
        wr32(&mut g, 0, 0x20_0000, 1);
        let _ = rd32(&mut g, 0, ereg(0, eoff::STATUS));
        let _ = rd32(&mut g, 7, 0x104);
        assert_eq!(g.process_engine_events(), 0);
        assert!(
            readable(g.engine_events(), 0),
            "a region access consumed the wakeup of a queued DMA message"
        );
        // What the event loop then does: acknowledge, drain.
        g.ack_engine_events();
        assert!(!readable(g.engine_events(), 0));
        let req = g.next_msg_dma().expect("the request is queued");
        assert!(!req.abandoned());
        assert!(matches!(req.op, MsgOp::Read { addr, len: 100 } if addr == src.addr));
        req.reply.send(Ok((0..100).collect())).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while rd32(&mut g, 0, ereg(0, eoff::RING_HEAD)) != 1 {
            assert!(Instant::now() < deadline, "the job never finished");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut got = [0u8; 100];
        g.vram().read(VramOffset(0x1000), &mut got).unwrap();
        assert!(got.iter().enumerate().all(|(i, b)| usize::from(*b) == i));
        assert!(g.next_msg_dma().is_none());
    }

    /// Found by the `gpu_regions` fuzz target (IRQ_COUNT 1 right after an FLR): an engine
    /// advanced HEAD, released its lock and only then signalled the completion vector, so a
    /// reset served in between returned first and the interrupt (and IRQS counter) of the old
    /// job landed after it. The completion and its interrupt must be one step under the
    /// engine lock: while the interrupt cannot be sent (MSI-X held here), nobody may see HEAD
    /// move.
    #[test]
    fn completion_interrupt_is_sent_before_head_is_visible() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        use vm_memory::{Bytes, FileOffset, GuestAddress, GuestRegionMmap, MmapRegion};

        let mut g = gpu();
        bus_master(&mut g, true);
        let ring = 0x10_0000u64;
        let nop = RawDescriptor::default().with_flags(crate::engine::desc::flags::IRQ);
        g.vram().write(VramOffset(ring), &nop.to_bytes()).unwrap();
        wr32(&mut g, 0, ereg(0, eoff::RING_BASE_LO), ring as u32);
        wr32(&mut g, 0, ereg(0, eoff::RING_SIZE), 2);
        wr32(&mut g, 0, ereg(0, eoff::RING_APERTURE), 1);
        let ctl = control::ENABLE | control::IRQ_ENABLE;
        wr32(&mut g, 0, ereg(0, eoff::CONTROL), ctl);
        // The doorbell page as a client maps it: a tail store needs no call into the device.
        let info = g.region_info(0).unwrap();
        let mmap = info.mmap.unwrap();
        let file = std::fs::File::from(mmap.fd.try_clone_to_owned().unwrap());
        let region = MmapRegion::<()>::from_file(FileOffset::new(file, 0x20_0000), 4096).unwrap();
        let db = GuestRegionMmap::new(region, GuestAddress(0)).unwrap();
        let monitor = g.engine_monitor();
        let released = Arc::new(AtomicBool::new(false));
        let early = Arc::new(AtomicBool::new(false));
        let (r, e) = (released.clone(), early.clone());
        let watcher = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if monitor.report()[0].head == 1 {
                    e.store(!r.load(Ordering::SeqCst), Ordering::SeqCst);
                    return true;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            false
        });
        let held = g.msix();
        db.write_obj(1u32, vm_memory::MemoryRegionAddress(0))
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        released.store(true, Ordering::SeqCst);
        drop(held);
        assert!(watcher.join().unwrap(), "the NOP never completed");
        assert!(
            !early.load(Ordering::SeqCst),
            "HEAD advanced before the completion interrupt was signalled"
        );
        assert!(
            g.msix().is_pending(1),
            "vector 1 signalled (held: no eventfd)"
        );
    }

    /// Found by the `gpu_regions` fuzz target: an engine resolved its access against an fd-less
    /// window and queued a DMA message; the client unmapped the window before the event loop
    /// took the request. The message must not be sent after DMA_UNMAP returned: the request is
    /// failed instead and the engine stops with MSG_DMA_FAILED.
    #[test]
    fn no_dma_message_for_a_window_unmapped_while_queued() {
        let mut g = gpu();
        bus_master(&mut g, true);
        let rom = 0xfffc_0000u64;
        let mut m = mapping(rom, 0x40000, None);
        m.prot.write = false;
        g.dma_map(m).unwrap();
        let ring = 0x10_0000u64;
        let src = Addr {
            aperture: Aperture::Sys,
            addr: rom + 0x100,
        };
        let d = RawDescriptor::copy(src, vram_at(0x1000), 64);
        g.vram().write(VramOffset(ring), &d.to_bytes()).unwrap();
        wr32(&mut g, 0, ereg(0, eoff::RING_BASE_LO), ring as u32);
        wr32(&mut g, 0, ereg(0, eoff::RING_SIZE), 2);
        wr32(&mut g, 0, ereg(0, eoff::RING_APERTURE), 1);
        wr32(&mut g, 0, ereg(0, eoff::CONTROL), control::ENABLE);
        wr32(&mut g, 0, ereg(0, eoff::RING_TAIL), 1);
        assert!(
            readable(g.engine_events(), 5000),
            "the DMA_READ request is queued"
        );
        assert!(g.msg_dma_allowed(rom + 0x100, 64, false));
        assert!(
            !g.msg_dma_allowed(rom + 0x100, 64, true),
            "read-only window"
        );
        assert!(
            !g.msg_dma_allowed(rom + 0x3ffc0, 0x80, false),
            "past the window"
        );
        g.dma_unmap(DmaUnmap::Range {
            iova: rom,
            size: 0x40000,
        })
        .unwrap();
        assert!(!g.msg_dma_allowed(rom + 0x100, 64, false));
        g.ack_engine_events();
        assert!(g.next_msg_dma().is_none(), "message for an unmapped window");
        let deadline = Instant::now() + Duration::from_secs(5);
        while rd32(&mut g, 0, ereg(0, eoff::STATUS)) != State::Error as u32 {
            assert!(Instant::now() < deadline, "the engine never failed the job");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            rd32(&mut g, 0, ereg(0, eoff::ERROR_CODE)),
            8,
            "MSG_DMA_FAILED"
        );
        assert_eq!(rd32(&mut g, 0, ereg(0, eoff::RING_HEAD)), 0);
    }

    /// A DMA message request of a job that a reset aborted is abandoned: the event loop must
    /// not send it after the reset (no DMA from a job the driver has reset).
    #[test]
    fn reset_abandons_a_queued_dma_message() {
        let mut g = gpu();
        bus_master(&mut g, true);
        let rom = 0xfffc_0000u64;
        g.dma_map(mapping(rom, 0x40000, None)).unwrap();
        let ring = 0x10_0000u64;
        let d = RawDescriptor::copy(
            vram_at(0),
            Addr {
                aperture: Aperture::Sys,
                addr: rom,
            },
            64,
        );
        g.vram().write(VramOffset(ring), &d.to_bytes()).unwrap();
        wr32(&mut g, 0, ereg(0, eoff::RING_BASE_LO), ring as u32);
        wr32(&mut g, 0, ereg(0, eoff::RING_SIZE), 2);
        wr32(&mut g, 0, ereg(0, eoff::RING_APERTURE), 1);
        wr32(&mut g, 0, ereg(0, eoff::CONTROL), control::ENABLE);
        wr32(&mut g, 0, ereg(0, eoff::RING_TAIL), 1);
        assert!(readable(g.engine_events(), 5000));
        // CONTROL.RESET while the engine waits for its DMA_WRITE.
        wr32(&mut g, 0, ereg(0, eoff::CONTROL), control::RESET);
        g.ack_engine_events();
        let req = g.next_msg_dma().expect("the request is queued");
        assert!(req.abandoned(), "the reset ended the wait");
        assert_eq!(
            rd32(&mut g, 0, ereg(0, eoff::STATUS)),
            State::Disabled as u32
        );
    }
}

/// hw-spec §1.1, §6.7: Bus Master Enable gates the engines: no descriptor starts and no chunk
/// moves while it is clear; the engine continues by itself when it is set; a reset abandons a
/// descriptor paused between chunks.
mod bus_master_gating {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::engine::desc::{Addr, Aperture, RawDescriptor};
    use crate::engine::env::{MsgDmaRequest, MsgOp};
    use crate::engine::regs::{control, offset as eoff, State};

    const ROM: u64 = 0x5_0000_0000;
    const RING: u64 = 0x10_0000;
    const DST: u64 = 0x20_0000;

    fn ereg(off: u32) -> u64 {
        0x1000 + u64::from(off)
    }

    /// One engine whose ring (VRAM) holds a 2-chunk COPY from an fd-less window to VRAM: every
    /// chunk is a DMA message request the test answers, so it sees each chunk start.
    fn two_chunk_copy() -> Gpu {
        let mut cfg = GpuConfig::new(64 * MIB);
        cfg.engines = 1;
        let mut g = Gpu::new(&cfg).unwrap();
        g.dma_map(mapping(ROM, 2 * MIB, None)).unwrap();
        let d = RawDescriptor::copy(
            Addr {
                aperture: Aperture::Sys,
                addr: ROM,
            },
            Addr {
                aperture: Aperture::Vram,
                addr: DST,
            },
            2 * MIB,
        );
        g.vram().write(VramOffset(RING), &d.to_bytes()).unwrap();
        wr32(&mut g, 0, ereg(eoff::RING_BASE_LO), RING as u32);
        wr32(&mut g, 0, ereg(eoff::RING_SIZE), 2);
        wr32(&mut g, 0, ereg(eoff::RING_APERTURE), 1);
        wr32(&mut g, 0, ereg(eoff::CONTROL), control::ENABLE);
        g
    }

    fn next_request(g: &Gpu, ms: u64) -> Option<MsgDmaRequest> {
        let deadline = Instant::now() + Duration::from_millis(ms);
        loop {
            if let Some(r) = g.next_msg_dma() {
                return Some(r);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn expect_read(req: &MsgDmaRequest, at: u64) {
        assert!(
            matches!(req.op, MsgOp::Read { addr, len } if addr == at && len as u64 == MIB),
            "{:?}",
            req.op
        );
    }

    /// Nothing moves: no request, HEAD 0, STATUS RUNNING (a descriptor is pending or paused).
    fn assert_stalled(g: &mut Gpu, what: &str) {
        assert!(next_request(g, 100).is_none(), "{what}: a chunk started");
        assert_eq!(rd32(g, 0, ereg(eoff::RING_HEAD)), 0, "{what}: HEAD");
        assert_eq!(
            rd32(g, 0, ereg(eoff::STATUS)),
            State::Running as u32,
            "{what}: STATUS"
        );
    }

    /// Starts the descriptor with Bus Master Enable set, answers its first chunk after
    /// clearing it, and waits until that chunk is in VRAM.
    fn pause_after_first_chunk(g: &mut Gpu) {
        bus_master(g, true);
        let first = next_request(g, 5000).expect("first chunk");
        expect_read(&first, ROM);
        bus_master(g, false);
        first.reply.send(Ok(vec![0xab; MIB as usize])).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while g.vram().read_u32(VramOffset(DST + MIB - 4)).unwrap() != 0xabab_abab {
            assert!(Instant::now() < deadline, "the first chunk never landed");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn no_descriptor_starts_and_no_chunk_moves_without_it() {
        let mut g = two_chunk_copy();
        // Power-on Command is 0: the doorbell alone starts nothing, not even the fetch.
        assert_eq!(g.pci().command() & 0x4, 0);
        wr32(&mut g, 0, ereg(eoff::RING_TAIL), 1);
        assert_stalled(&mut g, "power-on");
        pause_after_first_chunk(&mut g);
        assert_stalled(&mut g, "between chunks");
        assert_eq!(
            g.vram().read_u32(VramOffset(DST + MIB)).unwrap(),
            0,
            "second chunk written"
        );
        // Set again: the engine continues by itself (no doorbell).
        bus_master(&mut g, true);
        let second = next_request(&g, 5000).expect("second chunk after Bus Master Enable");
        expect_read(&second, ROM + MIB);
        second.reply.send(Ok(vec![0xcd; MIB as usize])).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while rd32(&mut g, 0, ereg(eoff::RING_HEAD)) != 1 {
            assert!(Instant::now() < deadline, "the job never finished");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            g.vram().read_u32(VramOffset(DST + 2 * MIB - 4)).unwrap(),
            0xcdcd_cdcd
        );
        assert_eq!(rd32(&mut g, 0, ereg(eoff::STATUS)), State::Idle as u32);
    }

    #[test]
    fn a_reset_abandons_a_paused_descriptor() {
        let mut g = two_chunk_copy();
        wr32(&mut g, 0, ereg(eoff::RING_TAIL), 1);
        pause_after_first_chunk(&mut g);
        let t = Instant::now();
        wr32(&mut g, 0, ereg(eoff::CONTROL), control::RESET);
        assert!(t.elapsed() < Duration::from_secs(1), "the reset waited");
        assert_eq!(rd32(&mut g, 0, ereg(eoff::STATUS)), State::Disabled as u32);
        assert_eq!(rd32(&mut g, 0, ereg(eoff::RING_HEAD)), 0);
        bus_master(&mut g, true);
        assert!(
            next_request(&g, 100).is_none(),
            "the abandoned descriptor went on"
        );
        assert_eq!(g.vram().read_u32(VramOffset(DST + MIB)).unwrap(), 0);
    }

    /// FLR clears Bus Master Enable (Command resets to 0) and SOFT_RESET keeps it (§4).
    #[test]
    fn flr_clears_it_and_soft_reset_keeps_it() {
        let mut g = two_chunk_copy();
        bus_master(&mut g, true);
        wr32(&mut g, 0, 0x40, 0x5253_5421);
        assert_ne!(g.pci().command() & 0x4, 0, "SOFT_RESET keeps config space");
        g.region_write(7, 0x69, &[0x80]).unwrap();
        assert_eq!(g.pci().command() & 0x4, 0, "FLR clears Command");
        // Program again after the FLR: nothing runs until the bit is set.
        let d = RawDescriptor::fill(
            Addr {
                aperture: Aperture::Vram,
                addr: DST,
            },
            64,
            0x1234_5678,
        );
        g.vram().write(VramOffset(RING), &d.to_bytes()).unwrap();
        wr32(&mut g, 0, ereg(eoff::RING_BASE_LO), RING as u32);
        wr32(&mut g, 0, ereg(eoff::RING_SIZE), 2);
        wr32(&mut g, 0, ereg(eoff::RING_APERTURE), 1);
        wr32(&mut g, 0, ereg(eoff::CONTROL), control::ENABLE);
        wr32(&mut g, 0, ereg(eoff::RING_TAIL), 1);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(rd32(&mut g, 0, ereg(eoff::RING_HEAD)), 0);
        assert_eq!(rd32(&mut g, 0, ereg(eoff::STATUS)), State::Running as u32);
        bus_master(&mut g, true);
        let deadline = Instant::now() + Duration::from_secs(5);
        while rd32(&mut g, 0, ereg(eoff::RING_HEAD)) != 1 {
            assert!(Instant::now() < deadline, "the FILL never ran");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(g.vram().read_u32(VramOffset(DST)).unwrap(), 0x1234_5678);
    }
}

/// hw-spec §6.3: an engine in ERROR keeps its first error; ENABLE 0->1 with bad ring registers
/// neither overwrites the error registers nor reports (ERRORS, ERR_CAUSE, vector 0) again.
#[test]
fn enable_while_in_error_keeps_the_first_error() {
    let mut cfg = GpuConfig::new(64 * MIB);
    cfg.engines = 1;
    let mut g = Gpu::new(&cfg).unwrap();
    bus_master(&mut g, true);
    let (e0, f0) = efd();
    assign(&mut g, 2, 0, vec![Some(f0)]);
    wr32(&mut g, 0, 0x1000, 0x40);
    wr32(&mut g, 0, 0x1008, 3);
    wr32(&mut g, 0, 0x1018, 1);
    assert_eq!(rd32(&mut g, 0, 0x101c), 4, "ERROR");
    assert_eq!(rd32(&mut g, 0, 0x1020), 1, "RING_CONFIG");
    assert_eq!(e0.read().unwrap(), 1, "vector 0");
    assert_eq!(rd32(&mut g, 0, 0xa0), 1, "ERR_CAUSE");
    wr32(&mut g, 0, 0xa0, 1);
    // Disable, other bad ring registers, enable again: still the first error, not reported.
    wr32(&mut g, 0, 0x1018, 0);
    wr32(&mut g, 0, 0x1000, 0x80);
    wr32(&mut g, 0, 0x100c, 3);
    wr32(&mut g, 0, 0x1018, 1);
    assert_eq!(rd32(&mut g, 0, 0x101c), 4, "still ERROR");
    assert_eq!(rd32(&mut g, 0, 0x1020), 1);
    assert_eq!(
        rd32(&mut g, 0, 0x1024),
        0x40,
        "ERROR_ADDR of the first error"
    );
    assert_eq!(rd32(&mut g, 0, 0x102c), 0, "ERROR_INFO of the first error");
    assert_eq!(rd32(&mut g, 0, 0x10a0), 1, "ERRORS");
    assert_eq!(rd32(&mut g, 0, 0xa0), 0, "ERR_CAUSE not set again");
    assert!(e0.read().is_err(), "vector 0 not signalled again");
    assert_eq!(g.stats().engine_errors, 1);
    // An engine reset leaves ERROR; the bad registers are then refused as usual.
    wr32(&mut g, 0, 0x1018, 1 << 31);
    assert_eq!(rd32(&mut g, 0, 0x101c), 0, "DISABLED");
}

/// hw-spec §6.4: a reset zeroes SLEEPING; the engine must set it again before it next sleeps,
/// or a driver following the recommended submission skips the RING_TAIL wake-up.
mod sleeping_hint {
    use std::time::Duration;

    use super::*;

    fn one_engine() -> Gpu {
        let mut cfg = GpuConfig::new(64 * MIB);
        cfg.engines = 1;
        Gpu::new(&cfg).unwrap()
    }

    /// A 16-slot ring at VRAM 0, enabled: the engine idles, spins, then sleeps.
    fn enable(g: &mut Gpu) {
        wr32(g, 0, 0x1000, 0);
        wr32(g, 0, 0x1004, 0);
        wr32(g, 0, 0x1008, 16);
        wr32(g, 0, 0x100c, 1);
        wr32(g, 0, 0x1018, 1);
    }

    fn sleeping_after(g: &mut Gpu, reset: impl Fn(&mut Gpu)) -> u32 {
        enable(g);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(rd32(g, 0, 0x20_0004), 1, "SLEEPING before the reset");
        reset(g);
        assert_eq!(rd32(g, 0, 0x20_0004), 0, "the reset zeroes SLEEPING");
        enable(g);
        // Default spin window 50 µs: long past it, the engine sleeps again.
        std::thread::sleep(Duration::from_millis(30));
        rd32(g, 0, 0x20_0004)
    }

    #[test]
    fn set_again_after_an_engine_reset() {
        let mut g = one_engine();
        assert_eq!(sleeping_after(&mut g, |g| wr32(g, 0, 0x1018, 1 << 31)), 1);
    }

    #[test]
    fn set_again_after_soft_reset() {
        let mut g = one_engine();
        assert_eq!(sleeping_after(&mut g, |g| wr32(g, 0, 0x40, 0x5253_5421)), 1);
    }
}

/// hw-spec §8.3: a failed DMA message is traced as `target=sys-msg`, not `sys`.
#[test]
fn failed_dma_message_is_traced_as_sys_msg() {
    use std::time::{Duration, Instant};

    use crate::engine::desc::{Addr, Aperture, RawDescriptor};

    let dir = std::env::temp_dir().join(format!("vugpu-gpu-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("engines.trace");
    let mut cfg = GpuConfig::new(64 * MIB);
    cfg.engines = 1;
    cfg.trace = Some(trace.clone());
    let mut g = Gpu::new(&cfg).unwrap();
    bus_master(&mut g, true);
    g.dma_map(mapping(0x5_0000_0000, MIB, None)).unwrap();
    let ring = 0x10_0000u64;
    let d = RawDescriptor::copy(
        Addr {
            aperture: Aperture::Sys,
            addr: 0x5_0000_0000,
        },
        Addr {
            aperture: Aperture::Vram,
            addr: 0,
        },
        16,
    );
    g.vram().write(VramOffset(ring), &d.to_bytes()).unwrap();
    wr32(&mut g, 0, 0x1000, ring as u32);
    wr32(&mut g, 0, 0x1008, 2);
    wr32(&mut g, 0, 0x100c, 1);
    wr32(&mut g, 0, 0x1018, 1);
    wr32(&mut g, 0, 0x1014, 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(req) = g.next_msg_dma() {
            let _ = req.reply.send(Err("refused".into()));
            break;
        }
        assert!(Instant::now() < deadline, "no DMA message request");
        std::thread::sleep(Duration::from_millis(1));
    }
    while rd32(&mut g, 0, 0x101c) != 4 {
        assert!(Instant::now() < deadline, "engine never stopped");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(rd32(&mut g, 0, 0x1020), 8, "MSG_DMA_FAILED");
    let text = std::fs::read_to_string(&trace).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        text.contains(
            "op=COPY dir=read target=sys-msg addr=0x500000000 size=16 req=- used=- result=fault"
        ),
        "{text}"
    );
}

/// Reads `width` bytes of config space (what QEMU reads through region 7).
fn cfg_read(g: &mut Gpu, off: u16, width: usize) -> u32 {
    let mut b = [0u8; 4];
    g.region_read(7, u64::from(off), &mut b[..width]).unwrap();
    u32::from_le_bytes(b)
}

fn cfg_write(g: &mut Gpu, off: u16, width: usize, v: u32) {
    g.region_write(7, u64::from(off), &v.to_le_bytes()[..width])
        .unwrap();
}

/// One register the guest OS owns: its reset value (hw-spec §1) and a value a kernel, BIOS or
/// port service driver might leave in it.
struct OsOwned {
    name: &'static str,
    off: u16,
    width: usize,
    reset: u32,
    os_value: u32,
}

/// The registers guest tests no longer assert (guest-tests/README.md, "What guest tests may
/// assert"): the kernel may write them at boot (Debian 7.3's AER driver clears the Correctable
/// Mask, for one). Their reset values are checked here, through the config region as QEMU sees
/// it, with the composed device's capability offsets.
fn os_owned_registers() -> Vec<OsOwned> {
    use cap_offset::{AER, MSIX, PCIE, PM, REBAR};
    let reg = |name, off, width, reset, os_value| OsOwned {
        name,
        off,
        width,
        reset,
        os_value,
    };
    vec![
        reg("Command", 0x04, 2, 0, 0x0546),
        reg("Cache Line Size", 0x0c, 1, 0, 0x10),
        reg("Interrupt Line", 0x3c, 1, 0, 0x0b),
        reg("BAR0", 0x10, 4, 0, 0xfe00_0000),
        reg("BAR2 low", 0x18, 4, 0xc, 0x8000_000c),
        reg("BAR2 high", 0x1c, 4, 0, 0x1),
        reg("PMCSR: D0, No_Soft_Reset", PM + 4, 2, 0x0008, 0x000b),
        reg(
            "MSI-X Message Control: off, unmasked",
            MSIX + 2,
            2,
            15,
            0xc00f,
        ),
        reg(
            "Device Control: RO, NS, MRRS 512 B",
            PCIE + 8,
            2,
            0x2810,
            0x002f,
        ),
        reg("Link Control", PCIE + 0x10, 2, 0, 0x0043),
        reg("Device Control 2", PCIE + 0x28, 2, 0, 0x0045),
        reg("Link Control 2: target 16 GT/s", PCIE + 0x30, 2, 4, 1),
        reg("AER Uncorrectable Mask", AER + 0x08, 4, 0, 0x0040_0000),
        reg(
            "AER Uncorrectable Severity",
            AER + 0x0c,
            4,
            0x0046_2030,
            0x0006_2030,
        ),
        reg("AER Correctable Mask", AER + 0x14, 4, 0x2000, 0),
        reg(
            "Resizable BAR Control: 64 MiB",
            REBAR + 8,
            4,
            0x0622,
            0x0222,
        ),
    ]
}

/// Error status a device sets and software clears: 0 at reset.
const STATUS_REGISTERS: [(&str, u16, usize); 4] = [
    ("Status error bits", 0x06, 2),
    ("Device Status", cap_offset::PCIE + 0x0a, 2),
    ("AER Uncorrectable Status", cap_offset::AER + 0x04, 4),
    ("AER Correctable Status", cap_offset::AER + 0x10, 4),
];

fn assert_reset_values(g: &mut Gpu, when: &str) {
    for r in os_owned_registers() {
        assert_eq!(
            cfg_read(g, r.off, r.width),
            r.reset,
            "{} ({:#x}) {when}",
            r.name,
            r.off
        );
    }
    for (name, off, width) in STATUS_REGISTERS {
        let v = cfg_read(g, off, width);
        let v = if off == 0x06 { v & 0xf900 } else { v };
        assert_eq!(v, 0, "{name} ({off:#x}) {when}");
    }
    let vram = u64::from(rd32(g, 0, u64::from(reg::VRAM_SIZE_LO)))
        | u64::from(rd32(g, 0, u64::from(reg::VRAM_SIZE_HI))) << 32;
    assert_eq!(
        g.region_info(2).unwrap().size,
        vram,
        "BAR2 decodes all of VRAM_SIZE {when}"
    );
}

/// Writes what an OS might and checks each write took (else the reset check proves nothing).
fn write_os_values(g: &mut Gpu) {
    for r in os_owned_registers() {
        cfg_write(g, r.off, r.width, r.os_value);
        assert_eq!(cfg_read(g, r.off, r.width), r.os_value, "{} took", r.name);
    }
    // An engine error sets the status registers (hw-spec §5).
    let cs = g.pci.config_mut();
    aer::record_uncorrectable(cs, cap_offset::AER, aer::UNCOR_UNSUPPORTED_REQUEST, [0; 4]);
    cs.set_bits(cap_offset::AER + 0x10, 4, 1);
    pcie::report_error(cs, cap_offset::PCIE, pcie::DEV_STA_URD | pcie::DEV_STA_NFED);
    cs.set_bits(0x06, 2, function::STATUS_RECEIVED_MASTER_ABORT);
    for (name, off, width) in STATUS_REGISTERS {
        assert_ne!(cfg_read(g, off, width) & !0x10, 0, "{name} set");
    }
}

#[test]
fn os_owned_registers_reset_to_spec_values() {
    let mut g = gpu();
    assert_reset_values(&mut g, "at power-on");

    write_os_values(&mut g);
    assert_eq!(g.region_info(2).unwrap().size, 4 * MIB, "ReBAR took");
    // SOFT_RESET keeps config space (hw-spec §4): the OS's values stay.
    wr32(&mut g, 0, u64::from(reg::SOFT_RESET), 0x5253_5421);
    for r in os_owned_registers() {
        assert_eq!(
            cfg_read(&mut g, r.off, r.width),
            r.os_value,
            "{} across SOFT_RESET",
            r.name
        );
    }
    // FLR (Initiate FLR alone: the OS's Device Control value is in the same register).
    cfg_write(&mut g, cap_offset::PCIE + 8, 2, 0x8000);
    assert_eq!(g.stats().flrs, 1);
    assert_reset_values(&mut g, "after FLR");

    write_os_values(&mut g);
    g.reset().unwrap();
    assert_reset_values(&mut g, "after DEVICE_RESET");
}

/// `--inject cfg-stuck=OFFSET`: the broken device scripts/test-all runs the smoke suite against
/// (its write/read-back checks must fail on it).
#[test]
fn cfg_stuck_injection_drops_writes_to_one_dword() {
    let mut cfg = GpuConfig::new(MIB);
    cfg.inject.cfg_stuck = vec![cap_offset::AER + 0x14];
    let mut g = Gpu::new(&cfg).unwrap();
    let cor_mask = cap_offset::AER + 0x14;
    cfg_write(&mut g, cor_mask, 4, 0);
    assert_eq!(cfg_read(&mut g, cor_mask, 4), 0x2000, "dword write dropped");
    cfg_write(&mut g, cor_mask + 1, 1, 0x01);
    assert_eq!(cfg_read(&mut g, cor_mask, 4), 0x2000, "byte write dropped");
    // A wide write over its neighbours still reaches them.
    g.region_write(7, u64::from(cap_offset::AER + 0x0c), &[0; 12])
        .unwrap();
    assert_eq!(cfg_read(&mut g, cap_offset::AER + 0x0c, 4), 0, "Severity");
    assert_eq!(cfg_read(&mut g, cor_mask, 4), 0x2000);
    cfg_write(&mut g, cap_offset::AER + 0x08, 4, aer::UNCOR_BITS);
    assert_eq!(cfg_read(&mut g, cap_offset::AER + 0x08, 4), aer::UNCOR_BITS);
    // Offsets the device cannot honour are refused at start.
    cfg.inject.cfg_stuck = vec![0x115];
    assert!(matches!(
        Gpu::new(&cfg),
        Err(GpuError::BadConfigInjection(0x115))
    ));
    cfg.inject.cfg_stuck = vec![0x1000];
    assert!(Gpu::new(&cfg).is_err());
}
