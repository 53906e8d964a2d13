//! Interop with an independent implementation: the rust-vmm `vfio_user` 0.1.7 crate's Client
//! against our Session with the mock device.
//!
//! Quirks of that client (reference/vfio-user.md §6): it proposes version 0.1 (we answer 0.0),
//! advertises `max_msg_fds: 1`, always maps READ|WRITE, reads fixed-size replies, and its
//! `DmaUnmapFlags` bit values are wrong, so its unmap-all is not used here.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use common::*;
use vugpu_protocol::backend::{region_flags, DeviceBackend, DmaUnmap, IrqAction};
use vugpu_protocol::wire::Command;
use vugpu_protocol::{ServerConfig, Session};

fn socket_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("vugpu-interop-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

#[test]
fn rust_vmm_client_against_our_session() {
    let path = socket_path("a");
    let listener = UnixListener::bind(&path).expect("bind");
    let mut dev = MockDevice::new();
    let log = dev.log.clone();
    let irq_fds = dev.irq_fds.clone();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut session = Session::new(stream, ServerConfig::default());
        let r = session.run(&mut dev);
        dev.client_disconnected();
        (r, session.stats().clone())
    });

    // Connects, negotiates and reads every region's info (incl. the argsz re-query).
    let mut client = vfio_user::Client::new(&path).expect("rust-vmm client connects");
    let _ = std::fs::remove_file(&path);

    let bar2 = client.region(2).expect("bar2").clone_view();
    assert_eq!(bar2.0, VRAM_SIZE as u64);
    assert_eq!(
        bar2.1 & (region_flags::MMAP | region_flags::CAPS),
        region_flags::MMAP | region_flags::CAPS
    );
    assert_eq!(bar2.2, Some(VRAM_FILE_OFFSET));
    assert_eq!(bar2.3, vec![(0, 4096), (8192, 4096)]);
    let bar4 = client.region(4).expect("bar4").clone_view();
    assert_eq!(bar4.2, Some(0), "whole-BAR mmap fd arrives without caps");
    assert!(bar4.3.is_empty());
    let bar0 = client.region(0).expect("bar0").clone_view();
    assert_eq!(bar0.2, None);

    // Region access.
    let mut cfg = [0u8; 8];
    client.region_read(7, 8, &mut cfg).expect("config read");
    assert_eq!(cfg, [8, 9, 10, 11, 12, 13, 14, 15]);
    client.region_write(0, 0x10, &[1, 2, 3, 4]).expect("write");
    let mut back = [0u8; 4];
    client.region_read(0, 0x10, &mut back).expect("read back");
    assert_eq!(back, [1, 2, 3, 4]);

    // DMA map with a memfd, then unmap the range.
    let ram = memfd(0x2000, |i| (i & 0xff) as u8);
    client
        .dma_map(0x1000, 0x4000_0000, 0x1000, ram.as_raw_fd())
        .expect("dma map");
    client.dma_unmap(0x4000_0000, 0x1000).expect("dma unmap");

    // IRQs: info, then MSI-X vectors 0..2 with eventfds.
    let info = client.get_irq_info(2).expect("irq info");
    assert_eq!((info.index, info.count), (2, 8));
    let e0 = eventfd();
    let e1 = eventfd();
    client
        .set_irqs(2, 4 | 32, 0, 2, &[e0.as_raw_fd(), e1.as_raw_fd()])
        .expect("set irqs");
    {
        let map = irq_fds.lock().expect("fds");
        signal(map.get(&(2, 1)).expect("vector 1"));
    }
    assert_eq!(eventfd_count(&e1), Some(1));

    client.reset().expect("reset");
    client.shutdown().expect("shutdown");
    drop(client);

    let (result, stats) = server.join().expect("server");
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(stats.error_replies, 0, "last error: {:?}", stats.last_error);
    // 9 regions, one of them asked twice.
    assert_eq!(stats.messages(Command::DeviceGetRegionInfo), 10);
    let events = log.lock().expect("log").clone();
    assert!(events.contains(&Event::DmaMap {
        iova: 0x4000_0000,
        size: 0x1000,
        file_offset: 0x1000,
        read: true,
        write: true,
        head: Some((0..8).collect()),
    }));
    assert!(events.contains(&Event::DmaUnmap(DmaUnmap::Range {
        iova: 0x4000_0000,
        size: 0x1000
    })));
    assert!(events.contains(&Event::SetIrqs {
        index: 2,
        start: 0,
        count: 2,
        action: IrqAction::Trigger,
        data: IrqDataSummary::Eventfds(vec![true, true]),
    }));
    assert!(events.contains(&Event::Reset));
    assert_eq!(events.last(), Some(&Event::Disconnected));
}

/// (size, flags, mmap file offset, sparse areas) of a rust-vmm region.
trait View {
    fn clone_view(&self) -> (u64, u32, Option<u64>, Vec<(u64, u64)>);
}

impl View for vfio_user::Region {
    fn clone_view(&self) -> (u64, u32, Option<u64>, Vec<(u64, u64)>) {
        (
            self.size,
            self.flags,
            self.file_offset.as_ref().map(|f| f.start()),
            self.sparse_areas
                .iter()
                .map(|a| (a.offset, a.size))
                .collect(),
        )
    }
}
