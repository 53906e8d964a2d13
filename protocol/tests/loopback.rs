//! Client <-> Session over a socketpair with a recording mock device: every command, fd
//! passing (memfd for DMA_MAP, eventfds for SET_IRQS, the region mmap fd with sparse areas and
//! the argsz re-query), and server-initiated DMA in both payload layouts.

mod common;

use std::os::fd::AsFd;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use vugpu_protocol::backend::{region_flags, DmaProt, DmaUnmap, IrqAction};
use vugpu_protocol::wire::{Command, DeviceInfoWire, WriteMultiEntry};
use vugpu_protocol::{
    Client, ClientConfig, DmaHandler, DmaLayout, IrqSetArg, ProtocolError, ServerConfig, Session,
};

const RW: DmaProt = DmaProt {
    read: true,
    write: true,
};

fn connect(config: ServerConfig) -> (Client, std::thread::JoinHandle<ServerRun>, MockDevice) {
    let dev = MockDevice::new();
    let log = dev.log.clone();
    let fds = dev.irq_fds.clone();
    let (c, h) = spawn_server(dev, config);
    let mut client = Client::from_stream(c);
    client.negotiate().expect("negotiate");
    // A second handle on the shared recordings.
    let mut view = MockDevice::new();
    view.log = log;
    view.irq_fds = fds;
    (client, h, view)
}

fn finish(client: Client, h: std::thread::JoinHandle<ServerRun>) -> ServerRun {
    drop(client);
    let run = h.join().expect("server thread");
    assert!(run.result.is_ok(), "server ended with {:?}", run.result);
    run
}

fn events(view: &MockDevice) -> Vec<Event> {
    view.log.lock().expect("log").clone()
}

#[test]
fn version_negotiation_advertises_our_limits() {
    let (c, h) = spawn_server(
        MockDevice::new(),
        ServerConfig {
            write_multiple: true,
            ..ServerConfig::default()
        },
    );
    let mut client = Client::from_stream(c);
    let caps = client.negotiate().expect("negotiate");
    assert_eq!((caps.major, caps.minor), (0, 0));
    assert_eq!(caps.raw.max_msg_fds, Some(16));
    assert_eq!(caps.raw.max_data_xfer_size, Some(1 << 20));
    assert_eq!(caps.raw.pgsizes, Some(4096));
    assert_eq!(caps.raw.max_dma_maps, Some(65535));
    assert_eq!(caps.raw.write_multiple, Some(true));
    let run = finish(client, h);
    assert_eq!(run.stats.messages(Command::Version), 1);
    assert_eq!(
        run.dev.log.lock().expect("log").last(),
        Some(&Event::Disconnected)
    );
}

#[test]
fn write_multiple_is_not_advertised_unless_configured() {
    let (client, h, _) = connect(ServerConfig::default());
    assert_eq!(client.server_caps().expect("caps").raw.write_multiple, None);
    finish(client, h);
}

#[test]
fn dma_map_passes_memfd_and_unmap_forms() {
    let (mut client, h, view) = connect(ServerConfig::default());
    let ram = memfd(0x4000, |i| (i % 251) as u8);
    client
        .dma_map(0x10000, 0x2000, 0x1000, RW, Some(ram.as_fd()))
        .expect("map with fd");
    client
        .dma_map(
            0xfffc_0000,
            0x4_0000,
            0,
            DmaProt {
                read: true,
                write: false,
            },
            None,
        )
        .expect("map without fd");
    let echo = client
        .dma_unmap(DmaUnmap::Range {
            iova: 0x10000,
            size: 0x2000,
        })
        .expect("unmap");
    assert_eq!((echo.address, echo.size, echo.flags), (0x10000, 0x2000, 0));
    let echo = client.dma_unmap(DmaUnmap::All).expect("unmap all");
    assert_eq!(echo.flags, 1 << 1);
    let head: Vec<u8> = (0x1000..0x1008).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        events(&view),
        vec![
            Event::DmaMap {
                iova: 0x10000,
                size: 0x2000,
                file_offset: 0x1000,
                read: true,
                write: true,
                head: Some(head),
            },
            Event::DmaMap {
                iova: 0xfffc_0000,
                size: 0x4_0000,
                file_offset: 0,
                read: true,
                write: false,
                head: None,
            },
            Event::DmaUnmap(DmaUnmap::Range {
                iova: 0x10000,
                size: 0x2000
            }),
            Event::DmaUnmap(DmaUnmap::All),
        ]
    );
    let run = finish(client, h);
    assert_eq!(run.stats.messages(Command::DmaMap), 2);
    assert_eq!(run.stats.messages(Command::DmaUnmap), 2);
    assert_eq!(run.stats.error_replies, 0);
}

#[test]
fn device_info_and_irq_info() {
    let (mut client, h, _) = connect(ServerConfig::default());
    let info = client.device_info().expect("info");
    assert_eq!(info.argsz, 16);
    assert_eq!(
        info.flags,
        DeviceInfoWire::FLAG_PCI | DeviceInfoWire::FLAG_RESET
    );
    assert_eq!((info.num_regions, info.num_irqs), (9, 5));
    let irq = client.irq_info(2).expect("msix info");
    assert_eq!((irq.index, irq.count), (2, 8));
    assert_eq!(irq.flags, 1 | 8);
    assert_eq!(client.irq_info(4).expect("req").count, 0);
    assert!(matches!(
        client.irq_info(5),
        Err(ProtocolError::Remote {
            errno: libc::EINVAL
        })
    ));
    finish(client, h);
}

#[test]
fn region_info_plain_whole_mmap_and_sparse_with_requery() {
    let (mut client, h, _) = connect(ServerConfig::default());
    // Trapped BAR: one query, no fd, no caps.
    let r0 = client.region_info(0).expect("bar0");
    assert_eq!(r0.queries, 1);
    assert_eq!(r0.info.size, BAR0_SIZE as u64);
    assert_eq!(r0.info.flags, region_flags::READ | region_flags::WRITE);
    assert!(r0.fd.is_none() && r0.sparse_areas.is_empty());
    // Whole-BAR mmap: fd in the first reply.
    let r4 = client.region_info(4).expect("bar4");
    assert_eq!(r4.queries, 1);
    assert_eq!(r4.info.flags & region_flags::MMAP, region_flags::MMAP);
    assert_eq!(r4.info.flags & region_flags::CAPS, 0);
    let fd4 = r4.fd.expect("bar4 fd");
    assert_eq!(pread(&fd4, 0, 4), vec![0x44; 4]);
    // Sparse mmap: first reply too small (argsz 32) -> re-query, then caps + fd.
    let r2 = client.region_info(2).expect("bar2");
    assert_eq!(r2.queries, 2);
    assert_eq!(r2.info.argsz, 32 + 8 + 8 + 2 * 16);
    assert_eq!(r2.info.cap_offset, 32);
    assert_eq!(
        r2.info.flags,
        region_flags::READ | region_flags::WRITE | region_flags::MMAP | region_flags::CAPS
    );
    assert_eq!(r2.info.offset, VRAM_FILE_OFFSET);
    assert_eq!(r2.sparse_areas.len(), 2);
    assert_eq!(r2.sparse_areas[1].offset, 8192);
    let fd2 = r2.fd.expect("bar2 fd");
    // The mmap fd is the device's memfd: page p of the file holds byte p.
    assert_eq!(pread(&fd2, VRAM_FILE_OFFSET + 8192, 2), vec![3, 3]);
    // Absent region: size 0, no flags.
    let r8 = client.region_info(8).expect("vga");
    assert_eq!((r8.info.size, r8.info.flags), (0, 0));
    assert!(matches!(
        client.region_info(9),
        Err(ProtocolError::Remote {
            errno: libc::EINVAL
        })
    ));
    let run = finish(client, h);
    assert_eq!(run.stats.messages(Command::DeviceGetRegionInfo), 6);
}

#[test]
fn region_io_fds_reports_none() {
    let (mut client, h, _) = connect(ServerConfig::default());
    let io = client.region_io_fds(0, 4).expect("io fds");
    assert_eq!((io.info.argsz, io.info.count, io.info.index), (16, 0, 0));
    assert!(io.sub_regions.is_empty() && io.fds.is_empty());
    assert!(matches!(
        client.region_io_fds(100, 0),
        Err(ProtocolError::Remote {
            errno: libc::EINVAL
        })
    ));
    finish(client, h);
}

#[test]
fn set_irqs_all_forms_with_working_eventfds() {
    let (mut client, h, view) = connect(ServerConfig::default());
    let e0 = eventfd();
    let e1 = eventfd();
    // MSI-X vectors 2 and 3.
    client
        .set_irqs(
            2,
            2,
            2,
            IrqAction::Trigger,
            IrqSetArg::Eventfds(&[e0.as_fd(), e1.as_fd()]),
        )
        .expect("assign");
    // The device signals vector 3: the client's eventfd sees it.
    {
        let map = view.irq_fds.lock().expect("fds");
        signal(map.get(&(2, 3)).expect("vector 3 assigned"));
    }
    assert_eq!(eventfd_count(&e1), Some(1));
    assert_eq!(eventfd_count(&e0), None);
    // De-assign vector 2 (QEMU sends DATA_EVENTFD without fds).
    client
        .set_irqs(2, 2, 1, IrqAction::Trigger, IrqSetArg::Eventfds(&[]))
        .expect("de-assign");
    assert!(!view.irq_fds.lock().expect("fds").contains_key(&(2, 2)));
    // Bool, mask/unmask, software trigger, disable.
    client
        .set_irqs(
            2,
            0,
            3,
            IrqAction::Trigger,
            IrqSetArg::Bool(&[true, false, true]),
        )
        .expect("bool");
    client
        .set_irqs(0, 0, 1, IrqAction::Mask, IrqSetArg::None)
        .expect("mask");
    let resample = eventfd();
    client
        .set_irqs(
            0,
            0,
            1,
            IrqAction::Unmask,
            IrqSetArg::Eventfds(&[resample.as_fd()]),
        )
        .expect("unmask fd");
    client
        .set_irqs(2, 0, 0, IrqAction::Trigger, IrqSetArg::None)
        .expect("disable");
    assert!(!view
        .irq_fds
        .lock()
        .expect("fds")
        .keys()
        .any(|(i, _)| *i == 2));
    // Range beyond the index's count.
    assert!(matches!(
        client.set_irqs(2, 7, 2, IrqAction::Trigger, IrqSetArg::None),
        Err(ProtocolError::Remote {
            errno: libc::EINVAL
        })
    ));
    let ev = events(&view);
    assert_eq!(
        ev,
        vec![
            Event::SetIrqs {
                index: 2,
                start: 2,
                count: 2,
                action: IrqAction::Trigger,
                data: IrqDataSummary::Eventfds(vec![true, true]),
            },
            Event::SetIrqs {
                index: 2,
                start: 2,
                count: 1,
                action: IrqAction::Trigger,
                data: IrqDataSummary::Eventfds(vec![false]),
            },
            Event::SetIrqs {
                index: 2,
                start: 0,
                count: 3,
                action: IrqAction::Trigger,
                data: IrqDataSummary::Bool(vec![true, false, true]),
            },
            Event::SetIrqs {
                index: 0,
                start: 0,
                count: 1,
                action: IrqAction::Mask,
                data: IrqDataSummary::None,
            },
            Event::SetIrqs {
                index: 0,
                start: 0,
                count: 1,
                action: IrqAction::Unmask,
                data: IrqDataSummary::Eventfds(vec![true]),
            },
            Event::SetIrqs {
                index: 2,
                start: 0,
                count: 0,
                action: IrqAction::Trigger,
                data: IrqDataSummary::None,
            },
        ]
    );
    finish(client, h);
}

#[test]
fn region_read_write_posted_and_multi() {
    let (mut client, h, view) = connect(ServerConfig {
        write_multiple: true,
        ..ServerConfig::default()
    });
    let mut cfg = [0u8; CONFIG_SIZE];
    client.region_read(7, 0, &mut cfg).expect("config read");
    assert_eq!(cfg[0x10], 0x10);
    client.region_write(0, 8, &[1, 2, 3, 4]).expect("write");
    client.region_write_posted(0, 12, &[5, 6]).expect("posted");
    client
        .region_write_multi(
            &[
                WriteMultiEntry {
                    offset: 0x20,
                    region: 0,
                    count: 4,
                    data: [9, 9, 9, 9, 0, 0, 0, 0],
                },
                WriteMultiEntry {
                    offset: 0x30,
                    region: 0,
                    count: 8,
                    data: [1, 2, 3, 4, 5, 6, 7, 8],
                },
            ],
            true,
        )
        .expect("multi posted");
    client
        .region_write_multi(
            &[WriteMultiEntry {
                offset: 0x40,
                region: 0,
                count: 1,
                data: [7; 8],
            }],
            false,
        )
        .expect("multi");
    let mut back = [0u8; 0x41];
    client.region_read(0, 0, &mut back).expect("read back");
    assert_eq!(&back[8..14], &[1, 2, 3, 4, 5, 6]);
    assert_eq!(&back[0x20..0x24], &[9, 9, 9, 9]);
    assert_eq!(&back[0x30..0x38], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(back[0x40], 7);
    // A device refusal becomes its errno; the session goes on.
    assert!(matches!(
        client.region_write(7, 0, &[0, 0]),
        Err(ProtocolError::Remote {
            errno: libc::EINVAL
        })
    ));
    // Read-only region refuses writes before the device sees them.
    assert!(matches!(
        client.region_write(6, 0, &[1]),
        Err(ProtocolError::Remote {
            errno: libc::EINVAL
        })
    ));
    let mut rom = [0u8; 16];
    client.region_read(6, 2032, &mut rom).expect("rom tail");
    assert_eq!(rom, [0xaa; 16]);
    let writes = events(&view)
        .into_iter()
        .filter(|e| matches!(e, Event::Write { .. }))
        .count();
    assert_eq!(writes, 6); // 1 + 1 posted + 2 multi + 1 multi + the refused config write
    let run = finish(client, h);
    assert_eq!(run.stats.messages(Command::RegionWriteMulti), 2);
    assert_eq!(run.stats.messages(Command::RegionRead), 3);
    assert_eq!(run.stats.backend_errors, 1);
    assert_eq!(run.stats.error_replies, 2);
}

#[test]
fn reset_and_disconnect() {
    let (mut client, h, view) = connect(ServerConfig::default());
    client.reset().expect("reset");
    let run = finish(client, h);
    assert_eq!(events(&view), vec![Event::Reset, Event::Disconnected]);
    assert_eq!(run.stats.messages(Command::DeviceReset), 1);
}

/// Client memory for DMA tests.
#[derive(Clone)]
struct GuestMem(Arc<Mutex<Vec<u8>>>);

impl DmaHandler for GuestMem {
    fn dma_read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), i32> {
        let m = self.0.lock().map_err(|_| libc::EIO)?;
        let a = addr as usize;
        let src = m.get(a..a + buf.len()).ok_or(libc::EFAULT)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn dma_write(&mut self, addr: u64, data: &[u8]) -> Result<(), i32> {
        let mut m = self.0.lock().map_err(|_| libc::EIO)?;
        let a = addr as usize;
        let dst = m.get_mut(a..a + data.len()).ok_or(libc::EFAULT)?;
        dst.copy_from_slice(data);
        Ok(())
    }
}

fn dma_roundtrip(layout: DmaLayout) {
    let (c, s) = std::os::unix::net::UnixStream::pair().expect("pair");
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let mut dev = MockDevice::new();
        let log = dev.log.clone();
        let mut session = Session::new(s, ServerConfig::default());
        session.set_dma_layout(layout);
        session.handle_message(&mut dev).expect("version");
        go_rx.recv().expect("go");
        // 10000 bytes with a 4096-byte client limit: three messages each way.
        let pattern: Vec<u8> = (0..10000).map(|i| (i % 253) as u8).collect();
        session.dma_write(0x1000, &pattern).expect("dma write");
        // The posted write the client sent first was queued, not lost.
        assert!(session.has_pending());
        let mut back = vec![0u8; 10000];
        session.dma_read(0x1000, &mut back).expect("dma read");
        assert_eq!(back, pattern);
        // An access outside client memory comes back as the client's errno.
        let mut bad = [0u8; 8];
        let e = session.dma_read(0x10_0000, &mut bad).expect_err("fault");
        assert!(matches!(
            e,
            ProtocolError::Remote {
                errno: libc::EFAULT
            }
        ));
        let stats = session.stats().clone();
        session.run(&mut dev).expect("run");
        (stats, log)
    });
    let mem = GuestMem(Arc::new(Mutex::new(vec![0u8; 0x8000])));
    let mut client = Client::with_config(
        c,
        ClientConfig {
            max_data_xfer_size: 4096,
            dma_layout: layout,
            ..ClientConfig::default()
        },
    );
    client.set_dma_handler(Box::new(mem.clone()));
    client.negotiate().expect("negotiate");
    client.region_write_posted(0, 0, &[0xab]).expect("posted");
    go_tx.send(()).expect("go");
    // 3 writes + 3 reads + 1 failing read.
    for _ in 0..7 {
        assert!(client.serve_one(Duration::from_secs(5)).expect("serve"));
    }
    // The queued posted write is handled after the DMA, and the session still answers.
    let mut b = [0u8; 1];
    client.region_read(0, 0, &mut b).expect("read");
    assert_eq!(b, [0xab]);
    let expect: Vec<u8> = (0..10000).map(|i| (i % 253) as u8).collect();
    assert_eq!(
        &mem.0.lock().expect("mem")[0x1000..0x1000 + 10000],
        &expect[..]
    );
    assert_eq!(client.stats().dma_writes, 3);
    assert_eq!(client.stats().dma_reads, 3);
    assert_eq!(client.stats().inbound_errors, 1);
    drop(client);
    let (stats, log) = server.join().expect("server");
    assert_eq!(stats.dma_messages, 7);
    assert_eq!(stats.dma_bytes, 20000);
    assert_eq!(stats.queued_requests, 1);
    let writes: Vec<Event> = log
        .lock()
        .expect("log")
        .iter()
        .filter(|e| matches!(e, Event::Write { .. }))
        .cloned()
        .collect();
    assert_eq!(
        writes,
        vec![Event::Write {
            index: 0,
            offset: 0,
            data: vec![0xab]
        }]
    );
}

#[test]
fn dma_read_write_qemu_layout() {
    dma_roundtrip(DmaLayout::Qemu);
}

#[test]
fn dma_read_write_spec_layout() {
    dma_roundtrip(DmaLayout::Spec);
}

#[test]
fn dma_to_a_client_without_handler_fails_cleanly() {
    let (c, s) = std::os::unix::net::UnixStream::pair().expect("pair");
    let server = std::thread::spawn(move || {
        let mut dev = MockDevice::new();
        let mut session = Session::new(s, ServerConfig::default());
        session.handle_message(&mut dev).expect("version");
        let e = session.dma_write(0, &[1, 2, 3]).expect_err("no handler");
        assert!(matches!(
            e,
            ProtocolError::Remote {
                errno: libc::ENODEV
            }
        ));
    });
    let mut client = Client::from_stream(c);
    client.negotiate().expect("negotiate");
    assert!(client.serve_one(Duration::from_secs(5)).expect("serve"));
    server.join().expect("server");
}

#[test]
fn dma_timeout_does_not_desync() {
    let (c, s) = std::os::unix::net::UnixStream::pair().expect("pair");
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let mut dev = MockDevice::new();
        let mut session = Session::new(s, ServerConfig::default());
        session.set_dma_timeout(Duration::from_millis(100));
        session.handle_message(&mut dev).expect("version");
        let mut b = [0u8; 4];
        let e = session.dma_read(0, &mut b).expect_err("timeout");
        assert!(matches!(e, ProtocolError::WaitTimeout(_)));
        assert!(!e.is_fatal());
        go_tx.send(()).expect("go");
        // The late reply arrives now and is dropped as stray; the session keeps working.
        session.run(&mut dev).expect("run");
        session.stats().stray_replies
    });
    let mem = GuestMem(Arc::new(Mutex::new(vec![7u8; 64])));
    let mut client = Client::from_stream(c);
    client.set_dma_handler(Box::new(mem));
    client.negotiate().expect("negotiate");
    go_rx.recv().expect("server timed out");
    assert!(client
        .serve_one(Duration::from_secs(5))
        .expect("late serve"));
    let mut b = [0u8; 4];
    client.region_read(0, 0, &mut b).expect("still in sync");
    drop(client);
    assert_eq!(server.join().expect("server"), 1);
}

/// QEMU 11.1.3 drops the connection when a DMA_READ reply exceeds its socket send buffer
/// (~208 KiB), so even with a 1 MiB negotiated transfer size every DMA message carries at most
/// `DMA_MESSAGE_MAX_DATA` bytes.
#[test]
fn dma_messages_stay_below_the_socket_buffer() {
    use vugpu_protocol::server::DMA_MESSAGE_MAX_DATA;
    const LEN: usize = 200 * 1024;
    let (c, s) = std::os::unix::net::UnixStream::pair().expect("pair");
    let server = std::thread::spawn(move || {
        let mut dev = MockDevice::new();
        let mut session = Session::new(s, ServerConfig::default());
        session.handle_message(&mut dev).expect("version");
        let pattern: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        session.dma_write(0, &pattern).expect("dma write");
        let mut back = vec![0u8; LEN];
        session.dma_read(0, &mut back).expect("dma read");
        assert_eq!(back, pattern);
        session.stats().dma_messages
    });
    let mem = GuestMem(Arc::new(Mutex::new(vec![0u8; LEN])));
    let mut client = Client::from_stream(c);
    client.set_dma_handler(Box::new(mem.clone()));
    let caps = client.negotiate().expect("negotiate");
    assert_eq!(caps.raw.max_data_xfer_size, Some(1 << 20));
    let per_message = DMA_MESSAGE_MAX_DATA as usize;
    let messages = LEN.div_ceil(per_message);
    assert!(per_message <= 64 * 1024);
    for _ in 0..2 * messages {
        assert!(client.serve_one(Duration::from_secs(5)).expect("serve"));
    }
    assert_eq!(client.stats().dma_writes as usize, messages);
    assert_eq!(client.stats().dma_reads as usize, messages);
    assert_eq!(server.join().expect("server") as usize, 2 * messages);
}
