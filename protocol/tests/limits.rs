//! Resource limits of a session (docs/reliability.md, "Resource limits"): each configured limit
//! is advertised in the VERSION reply where the protocol has a key for it, and hitting it gives
//! the exact errno (the session goes on) or ends the session, as the vfio-user specification
//! says for that limit.

mod common;

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use vugpu_protocol::transport::RawMessage;
use vugpu_protocol::wire::{flags, Command, Header, Writer};
use vugpu_protocol::{Client, ProtocolError, ServerConfig, Session};

fn frame(id: u16, cmd: Command, payload: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.put(&Header {
        msg_id: id,
        command: cmd as u16,
        size: (16 + payload.len()) as u32,
        flags: 0,
        error: 0,
    });
    w.bytes(payload);
    w.into_vec()
}

fn access(offset: u64, region: u32, count: u32, data: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(offset).u32(region).u32(count).bytes(data);
    w.into_vec()
}

fn dma_map(flags: u32, offset: u64, addr: u64, size: u64) -> Vec<u8> {
    let mut w = Writer::default();
    w.u32(32).u32(flags).u64(offset).u64(addr).u64(size);
    w.into_vec()
}

fn get_info() -> Vec<u8> {
    let mut w = Writer::default();
    w.u32(16).u32(0).u32(0).u32(0);
    w.into_vec()
}

/// A pipe: (read end, write end).
fn pipe() -> (OwnedFd, OwnedFd) {
    let (r, w) = std::io::pipe().expect("pipe");
    (r.into(), w.into())
}

/// True when every copy of the pipe's write end is closed (the read end sees EOF).
fn write_end_closed(r: &OwnedFd) -> bool {
    let mut f = std::fs::File::from(r.try_clone().expect("dup"));
    let mut b = [0u8; 1];
    matches!(f.read(&mut b), Ok(0))
}

struct Conn {
    c: Client,
    id: u16,
    server: Option<std::thread::JoinHandle<ServerRun>>,
}

impl Conn {
    fn new(config: ServerConfig) -> Conn {
        let (c, h) = spawn_server(MockDevice::new(), config);
        let mut c = Client::from_stream(c);
        c.negotiate().expect("negotiate");
        Conn {
            c,
            id: 1000,
            server: Some(h),
        }
    }

    fn send(&mut self, cmd: Command, payload: &[u8], fds: &[BorrowedFd<'_>]) -> u16 {
        self.id = self.id.wrapping_add(1);
        self.c
            .send_raw(&frame(self.id, cmd, payload), fds)
            .expect("send");
        self.id
    }

    /// Errno of the reply (0: success).
    fn errno_fds(&mut self, cmd: Command, payload: &[u8], fds: &[BorrowedFd<'_>]) -> i32 {
        let id = self.send(cmd, payload, fds);
        let r = self.c.recv_raw().expect("recv").expect("a reply");
        assert_eq!((r.header.msg_id, r.header.command), (id, cmd as u16));
        if r.header.is_error() {
            assert_eq!(r.header.size, 16);
            r.header.error as i32
        } else {
            0
        }
    }

    fn errno(&mut self, cmd: Command, payload: &[u8]) -> i32 {
        self.errno_fds(cmd, payload, &[])
    }

    fn in_sync(&mut self) {
        assert_eq!(self.errno(Command::DeviceGetInfo, &get_info()), 0);
    }

    /// The server closes the connection; its result.
    fn closed(mut self) -> ServerRun {
        loop {
            match self.c.recv_raw_timeout(Duration::from_secs(10)) {
                Ok(None) | Err(ProtocolError::Disconnected) => break,
                Ok(Some(_)) => {}
                Err(e) => panic!("expected EOF, got {e}"),
            }
        }
        self.server.take().expect("server").join().expect("join")
    }

    fn finish(mut self) -> ServerRun {
        let h = self.server.take().expect("server");
        drop(self);
        let run = h.join().expect("join");
        assert!(run.result.is_ok(), "{:?}", run.result);
        run
    }
}

#[test]
fn version_reply_advertises_the_configured_limits() {
    let (c, h) = spawn_server(
        MockDevice::new(),
        ServerConfig {
            max_data_xfer_size: 64 << 10,
            max_msg_fds: 4,
            max_dma_maps: 7,
            ..ServerConfig::default()
        },
    );
    let mut c = Client::from_stream(c);
    let caps = c.negotiate().expect("negotiate");
    assert_eq!(caps.raw.max_data_xfer_size, Some(64 << 10));
    assert_eq!(caps.raw.max_msg_fds, Some(4));
    assert_eq!(caps.raw.max_dma_maps, Some(7));
    assert_eq!(caps.pgsizes, 4096);
    drop(c);
    assert!(h.join().expect("join").result.is_ok());
}

#[test]
fn max_data_xfer_size_e2big_keeps_the_session_a_larger_message_ends_it() {
    let xfer = 8192u32;
    let mut c = Conn::new(ServerConfig {
        max_data_xfer_size: xfer,
        ..ServerConfig::default()
    });
    // Region 2 of the mock is 16 KiB: only the transfer limit can refuse these.
    assert_eq!(
        c.errno(Command::RegionRead, &access(0, 2, xfer + 1, &[])),
        libc::E2BIG
    );
    c.in_sync();
    assert_eq!(c.errno(Command::RegionRead, &access(0, 2, xfer, &[])), 0);
    let data = vec![0x5a; xfer as usize + 1];
    assert_eq!(
        c.errno(Command::RegionWrite, &access(0, 2, xfer + 1, &data)),
        libc::E2BIG
    );
    c.in_sync();
    // A message larger than any request can be (transfer + descriptors + slack) is not read:
    // the session ends (the spec: the stream cannot be resynchronised).
    let max = xfer + 16 + 16 + 8192;
    let mut w = Writer::default();
    w.put(&Header {
        msg_id: 7,
        command: Command::RegionWrite as u16,
        size: max + 1,
        flags: flags::TYPE_COMMAND,
        error: 0,
    });
    c.c.send_raw(&w.into_vec(), &[]).expect("send");
    let run = c.closed();
    assert!(
        matches!(run.result, Err(ProtocolError::MessageTooLarge { size, max: m }) if size == max + 1 && m == max),
        "{:?}",
        run.result
    );
}

#[test]
fn max_msg_fds_more_fds_end_the_session_and_every_fd_is_closed() {
    let mut c = Conn::new(ServerConfig {
        max_msg_fds: 4,
        ..ServerConfig::default()
    });
    let (r, w) = pipe();
    {
        // Exactly the limit: read, then refused by DMA_MAP's own rule (one fd): EINVAL.
        let fds: Vec<BorrowedFd<'_>> = (0..4).map(|_| w.as_fd()).collect();
        assert_eq!(
            c.errno_fds(Command::DmaMap, &dma_map(3, 0, 0, 4096), &fds),
            libc::EINVAL
        );
        c.in_sync();
        // One more than the limit: the session ends (fatal, EPROTO class; no reply).
        let fds: Vec<BorrowedFd<'_>> = (0..5).map(|_| w.as_fd()).collect();
        c.send(Command::DmaMap, &dma_map(3, 0, 0, 4096), &fds);
    }
    drop(w);
    let run = c.closed();
    assert!(
        matches!(
            run.result,
            Err(ProtocolError::TooManyFds { got: 5, max: 4 })
        ),
        "{:?}",
        run.result
    );
    assert!(
        write_end_closed(&r),
        "the server closed all 9 received copies"
    );
}

#[test]
fn max_dma_maps_enospc_keeps_the_session_and_unmap_frees_a_slot() {
    let mut c = Conn::new(ServerConfig {
        max_dma_maps: 3,
        ..ServerConfig::default()
    });
    let ram = memfd(0x10000, |_| 0);
    for i in 0..3u64 {
        assert_eq!(
            c.errno_fds(
                Command::DmaMap,
                &dma_map(3, i * 4096, i * 4096, 4096),
                &[ram.as_fd()]
            ),
            0
        );
    }
    assert_eq!(
        c.errno_fds(
            Command::DmaMap,
            &dma_map(3, 0x8000, 0x8000, 4096),
            &[ram.as_fd()]
        ),
        libc::ENOSPC
    );
    c.in_sync();
    let mut w = Writer::default();
    w.u32(24).u32(0).u64(4096).u64(4096);
    assert_eq!(c.errno(Command::DmaUnmap, &w.into_vec()), 0);
    assert_eq!(
        c.errno_fds(
            Command::DmaMap,
            &dma_map(3, 0x8000, 0x8000, 4096),
            &[ram.as_fd()]
        ),
        0
    );
    c.finish();
}

/// A session whose server thread calls the non-serving `dma_read` (which queues client
/// requests) once negotiated, against a client that floods requests instead of answering.
fn flood_during_dma_wait(
    config: ServerConfig,
    flood: impl FnOnce(&mut Client, &RawMessage),
) -> (ProtocolError, bool) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    let server = std::thread::spawn(move || {
        let mut s = Session::new(a, config);
        let mut dev = MockDevice::new();
        s.handle_message(&mut dev).expect("VERSION");
        let mut buf = [0u8; 16];
        let e = s
            .dma_read(0x1000, &mut buf)
            .expect_err("the flood ends the wait");
        // The session is over: nothing more is read.
        let over = matches!(
            s.handle_message(&mut dev),
            Ok(vugpu_protocol::Status::Closed)
        );
        (e, over)
    });
    let mut c = Client::from_stream(b);
    c.negotiate().expect("negotiate");
    let req = c.recv_raw().expect("recv").expect("the DMA_READ");
    assert_eq!(req.header.command, Command::DmaRead as u16);
    flood(&mut c, &req);
    server.join().expect("join")
}

#[test]
fn requests_queued_during_a_dma_wait_are_bounded_in_number_bytes_and_fds() {
    // Number: the 5th queued request ends the session.
    let (e, over) = flood_during_dma_wait(
        ServerConfig {
            max_pending_msgs: 4,
            ..ServerConfig::default()
        },
        |c, _| {
            for i in 0..5 {
                c.send_raw(&frame(i, Command::DeviceGetInfo, &get_info()), &[])
                    .expect("send");
            }
        },
    );
    assert!(
        matches!(e, ProtocolError::Violation(ref m) if m.contains("queued")),
        "{e:?}"
    );
    assert!(over);
    // Bytes: two 6 KiB writes fit in 12 KiB, the third does not.
    let (e, over) = flood_during_dma_wait(
        ServerConfig {
            max_pending_bytes: 12 << 10,
            ..ServerConfig::default()
        },
        |c, _| {
            let data = vec![1u8; 6 << 10];
            for i in 0..3 {
                let p = access(0, 2, data.len() as u32 - 16, &data[16..]);
                c.send_raw(&frame(i, Command::RegionWrite, &p), &[])
                    .expect("send");
            }
        },
    );
    assert!(matches!(e, ProtocolError::Violation(_)), "{e:?}");
    assert!(over);
    // Fds: 3 + 3 fit in 6, the next 3 do not; every queued fd is closed when the session ends.
    let (r, w) = pipe();
    let (e, over) = flood_during_dma_wait(
        ServerConfig {
            max_pending_fds: 6,
            ..ServerConfig::default()
        },
        |c, _| {
            for i in 0..3 {
                let fds = [w.as_fd(), w.as_fd(), w.as_fd()];
                c.send_raw(&frame(i, Command::DmaMap, &dma_map(3, 0, 0, 4096)), &fds)
                    .expect("send");
            }
        },
    );
    drop(w);
    assert!(matches!(e, ProtocolError::Violation(_)), "{e:?}");
    assert!(over);
    assert!(write_end_closed(&r), "queued fds were closed");
    // Under every limit the wait queues and then answers everything, in order.
    let (a, b) = UnixStream::pair().expect("socketpair");
    let server = std::thread::spawn(move || {
        let mut s = Session::new(a, ServerConfig::default());
        let mut dev = MockDevice::new();
        s.handle_message(&mut dev).expect("VERSION");
        let mut buf = [0u8; 4];
        s.dma_read(0x1000, &mut buf).expect("DMA_READ");
        assert_eq!(s.stats().queued_requests, 3);
        while s.has_pending() {
            s.handle_message(&mut dev).expect("queued request");
        }
        s.stats().clone()
    });
    let mut c = Client::from_stream(b);
    c.negotiate().expect("negotiate");
    let req = c.recv_raw().expect("recv").expect("the DMA_READ");
    for i in 0..3 {
        c.send_raw(&frame(i, Command::DeviceGetInfo, &get_info()), &[])
            .expect("send");
    }
    let mut reply = Writer::default();
    reply.put(&Header {
        msg_id: req.header.msg_id,
        command: Command::DmaRead as u16,
        size: 16 + 16 + 4,
        flags: flags::TYPE_REPLY,
        error: 0,
    });
    reply.u64(0x1000).u64(4).bytes(&[1, 2, 3, 4]);
    c.send_raw(&reply.into_vec(), &[]).expect("reply");
    for i in 0..3 {
        let r = c.recv_raw().expect("recv").expect("reply");
        assert_eq!(r.header.msg_id, i);
        assert!(!r.header.is_error());
    }
    let stats = server.join().expect("join");
    assert_eq!(stats.error_replies, 0);
}
