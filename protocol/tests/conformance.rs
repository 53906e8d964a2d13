//! Raw bytes in, exact errno out: one block of negative tests per command, plus the framing
//! rules (message before VERSION, NO_REPLY with an error, truncated body, oversize message,
//! too many fds, VERSION reply never longer than the request).

mod common;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;
use vugpu_protocol::backend::BackendError;
use vugpu_protocol::transport::RawMessage;
use vugpu_protocol::wire::{flags, Capabilities, Command, Header, VersionWire, Writer};
use vugpu_protocol::{Client, ProtocolError, ServerConfig};

const EINVAL: i32 = libc::EINVAL;

/// The VERSION request QEMU sends (compact JSON, reference/vfio-user.md §1.4): 199 bytes.
const QEMU_CAPS: &str = r#"{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}}"#;
/// The key order seen from QEMU 11.1 (ENVIRONMENT.md).
const QEMU_11_CAPS: &str = r#"{"capabilities":{"pgsizes":4096,"max_msg_fds":16,"max_dma_maps":65535,"max_data_xfer_size":1048576,"migration":{"max_bitmap_size":268435456,"pgsize":4096},"write_multiple":true}}"#;

struct Raw {
    c: Client,
    id: u16,
    server: Option<JoinHandle<ServerRun>>,
}

fn frame(id: u16, cmd: u16, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.put(&Header {
        msg_id: id,
        command: cmd,
        size: (16 + payload.len()) as u32,
        flags,
        error: 0,
    });
    w.bytes(payload);
    w.into_vec()
}

fn version_payload(major: u16, minor: u16, json: Option<&str>) -> Vec<u8> {
    let mut w = Writer::default();
    VersionWire { major, minor }.encode(json, &mut w);
    w.into_vec()
}

impl Raw {
    fn new_with(dev: MockDevice, config: ServerConfig) -> Raw {
        let (c, h) = spawn_server(dev, config);
        Raw {
            c: Client::from_stream(c),
            id: 100,
            server: Some(h),
        }
    }

    fn new() -> Raw {
        Raw::new_with(MockDevice::new(), ServerConfig::default())
    }

    /// Negotiated session.
    fn ready() -> Raw {
        let mut r = Raw::new();
        r.c.negotiate().expect("negotiate");
        r
    }

    fn send(&mut self, cmd: u16, flags: u32, payload: &[u8], fds: &[BorrowedFd<'_>]) -> u16 {
        self.id = self.id.wrapping_add(1);
        let id = self.id;
        self.c
            .send_raw(&frame(id, cmd, flags, payload), fds)
            .expect("send");
        id
    }

    fn reply(&mut self) -> RawMessage {
        self.c.recv_raw().expect("recv").expect("a reply, not EOF")
    }

    /// Send and return the errno of the reply (0 for success), checking the echo rules.
    fn errno_fds(&mut self, cmd: u16, payload: &[u8], fds: &[BorrowedFd<'_>]) -> i32 {
        let id = self.send(cmd, 0, payload, fds);
        let r = self.reply();
        assert_eq!(r.header.msg_id, id, "msg id echoed");
        assert_eq!(r.header.command, cmd, "command echoed");
        assert!(r.header.is_reply());
        if r.header.is_error() {
            assert_eq!(r.header.flags, flags::TYPE_REPLY | flags::ERROR);
            assert_eq!(r.header.size, 16, "error replies are header-only");
            assert!(r.body.is_empty() && r.fds.is_empty());
            r.header.error as i32
        } else {
            0
        }
    }

    fn errno(&mut self, cmd: Command, payload: &[u8]) -> i32 {
        self.errno_fds(cmd as u16, payload, &[])
    }

    /// The session still answers: GET_INFO succeeds with the next reply.
    fn in_sync(&mut self) {
        let mut w = Writer::default();
        w.u32(16).u32(0).u32(0).u32(0);
        assert_eq!(self.errno(Command::DeviceGetInfo, &w.into_vec()), 0);
    }

    /// Expect the server to close the connection and return its result.
    fn closed(mut self) -> ServerRun {
        loop {
            match self.c.recv_raw_timeout(Duration::from_secs(10)) {
                Ok(None) | Err(ProtocolError::Disconnected) => break,
                Ok(Some(_)) => continue,
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

fn u32s(v: &[u32]) -> Vec<u8> {
    let mut w = Writer::default();
    for x in v {
        w.u32(*x);
    }
    w.into_vec()
}

fn dma_map_payload(argsz: u32, flags: u32, offset: u64, addr: u64, size: u64) -> Vec<u8> {
    let mut w = Writer::default();
    w.u32(argsz).u32(flags).u64(offset).u64(addr).u64(size);
    w.into_vec()
}

fn dma_unmap_payload(argsz: u32, flags: u32, addr: u64, size: u64) -> Vec<u8> {
    let mut w = Writer::default();
    w.u32(argsz).u32(flags).u64(addr).u64(size);
    w.into_vec()
}

fn access(offset: u64, region: u32, count: u32, data: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(offset).u32(region).u32(count).bytes(data);
    w.into_vec()
}

fn set_irqs(argsz: u32, flags: u32, index: u32, start: u32, count: u32, data: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u32(argsz)
        .u32(flags)
        .u32(index)
        .u32(start)
        .u32(count)
        .bytes(data);
    w.into_vec()
}

fn region_info(argsz: u32, index: u32) -> Vec<u8> {
    let mut w = Writer::default();
    w.u32(argsz).u32(0).u32(index).u32(0).u64(0).u64(0);
    w.into_vec()
}

// ---------------------------------------------------------------- framing / VERSION

#[test]
fn command_before_version_is_answered_then_closed() {
    let mut r = Raw::new();
    let e = r.errno(Command::DeviceGetInfo, &u32s(&[16, 0, 0, 0]));
    assert_eq!(e, EINVAL);
    let run = r.closed();
    assert!(matches!(run.result, Err(ProtocolError::NotNegotiated(4))));
    assert_eq!(
        run.dev.log.lock().expect("log").as_slice(),
        &[Event::Disconnected]
    );
}

#[test]
fn qemu_version_request_gets_a_reply_no_longer_than_it() {
    for caps in [QEMU_CAPS, QEMU_11_CAPS] {
        let mut r = Raw::new_with(
            MockDevice::new(),
            ServerConfig {
                write_multiple: true,
                ..ServerConfig::default()
            },
        );
        let payload = version_payload(0, 0, Some(caps));
        assert_eq!(16 + payload.len(), 199);
        let id = r.send(Command::Version as u16, 0, &payload, &[]);
        let rep = r.reply();
        assert_eq!(rep.header.msg_id, id);
        assert!(!rep.header.is_error());
        assert!(rep.header.size as usize <= 16 + payload.len());
        assert_eq!(rep.body.last(), Some(&0), "NUL-terminated");
        let (v, j) = VersionWire::decode(&rep.body).expect("decodes");
        assert_eq!((v.major, v.minor), (0, 0));
        let c = Capabilities::parse_json(j.expect("json")).expect("parses");
        // Everything fits in 199 bytes.
        assert_eq!(c.max_msg_fds, Some(16));
        assert_eq!(c.max_data_xfer_size, Some(1 << 20));
        assert_eq!(c.pgsizes, Some(4096));
        assert_eq!(c.max_dma_maps, Some(65535));
        assert_eq!(c.write_multiple, Some(true));
        r.in_sync();
        r.finish();
    }
}

#[test]
fn version_reply_never_longer_than_request_at_any_size() {
    // Pad a minimal JSON with spaces to every request size from 20 to 240 bytes.
    for total in 20usize..=240 {
        let mut r = Raw::new_with(
            MockDevice::new(),
            ServerConfig {
                write_multiple: true,
                max_dma_maps: 1000,
                ..ServerConfig::default()
            },
        );
        let base = "{}";
        let payload = if total < 20 + base.len() + 1 {
            version_payload(0, 0, None)
                .into_iter()
                .chain(std::iter::repeat_n(0, total - 20))
                .collect()
        } else {
            let pad = " ".repeat(total - 20 - base.len() - 1);
            version_payload(0, 0, Some(&format!("{{{pad}}}")))
        };
        assert_eq!(16 + payload.len(), total);
        r.send(Command::Version as u16, 0, &payload, &[]);
        let rep = r.reply();
        assert!(!rep.header.is_error(), "size {total}");
        assert!(
            rep.header.size as usize <= total,
            "reply {} > request {total}",
            rep.header.size
        );
        let (_, j) = VersionWire::decode(&rep.body).expect("decodes");
        if let Some(j) = j {
            let c = Capabilities::parse_json(j).expect("valid JSON");
            // max_msg_fds is the last key to go.
            if c != Capabilities::default() {
                assert_eq!(c.max_msg_fds, Some(16), "size {total}");
            }
        }
        r.finish();
    }
}

#[test]
fn version_errors() {
    let mut r = Raw::new();
    assert_eq!(
        r.errno(Command::Version, &version_payload(1, 0, Some("{}"))),
        libc::ENOTSUP
    );
    assert_eq!(r.errno(Command::Version, &[0, 0, 0]), EINVAL);
    // Not NUL-terminated.
    let mut p = version_payload(0, 0, None);
    p.extend_from_slice(b"{}");
    assert_eq!(r.errno(Command::Version, &p), EINVAL);
    for bad in [
        "{",
        "[]",
        r#"{"capabilities":[]}"#,
        r#"{"capabilities":{"max_msg_fds":"16"}}"#,
        r#"{"capabilities":{"max_data_xfer_size":0}}"#,
    ] {
        assert_eq!(
            r.errno(Command::Version, &version_payload(0, 0, Some(bad))),
            EINVAL,
            "{bad}"
        );
    }
    // A higher minor is answered with ours (0).
    let id = r.send(
        Command::Version as u16,
        0,
        &version_payload(0, 7, Some(r#"{"capabilities":{"unknown_key":1}}"#)),
        &[],
    );
    let rep = r.reply();
    assert_eq!(rep.header.msg_id, id);
    let (v, _) = VersionWire::decode(&rep.body).expect("version");
    assert_eq!((v.major, v.minor), (0, 0));
    // Only once.
    assert_eq!(
        r.errno(Command::Version, &version_payload(0, 0, None)),
        EINVAL
    );
    r.in_sync();
    r.finish();
}

#[test]
fn version_with_fd_is_refused_and_the_fd_closed() {
    let mut r = Raw::new();
    let (rd, wr) = pipe();
    assert_eq!(
        r.errno_fds(
            Command::Version as u16,
            &version_payload(0, 0, None),
            &[wr.as_fd()]
        ),
        EINVAL
    );
    drop(wr);
    // The server dropped its copy: the read end sees EOF.
    let mut f = File::from(rd);
    let mut b = [0u8; 1];
    assert_eq!(f.read(&mut b).expect("read"), 0);
    r.c.negotiate().expect("negotiate still possible");
    r.finish();
}

fn pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe2")
}

#[test]
fn header_rules() {
    let mut r = Raw::ready();
    // ERROR flag or unknown flag bits on a command.
    let id = r.send(
        Command::DeviceGetInfo as u16,
        flags::ERROR,
        &u32s(&[16, 0, 0, 0]),
        &[],
    );
    let rep = r.reply();
    assert_eq!((rep.header.msg_id, rep.header.error as i32), (id, EINVAL));
    let id = r.send(
        Command::DeviceGetInfo as u16,
        1 << 8,
        &u32s(&[16, 0, 0, 0]),
        &[],
    );
    let rep = r.reply();
    assert_eq!((rep.header.msg_id, rep.header.error as i32), (id, EINVAL));
    // Type nibble 2 (neither command nor reply).
    let id = r.send(Command::DeviceGetInfo as u16, 2, &u32s(&[16, 0, 0, 0]), &[]);
    let rep = r.reply();
    assert_eq!((rep.header.msg_id, rep.header.error as i32), (id, EINVAL));
    // A reply from the client matches nothing: dropped silently.
    r.send(Command::DmaRead as u16, flags::TYPE_REPLY, &[0; 20], &[]);
    r.in_sync();
    // Unknown commands, with bodies: ENOSYS and the body is consumed.
    assert_eq!(r.errno_fds(0, &[1, 2, 3], &[]), libc::ENOSYS);
    assert_eq!(r.errno_fds(19, &[0; 100], &[]), libc::ENOSYS);
    assert_eq!(r.errno_fds(0xffff, &[], &[]), libc::ENOSYS);
    r.in_sync();
    let run = r.finish();
    assert_eq!(run.stats.stray_replies, 1);
    assert_eq!(run.stats.per_command[0], 3);
}

#[test]
fn unsupported_commands_consume_their_bodies() {
    let mut r = Raw::ready();
    for cmd in [
        Command::DirtyPages,
        Command::DeviceFeature,
        Command::MigDataRead,
        Command::MigDataWrite,
    ] {
        assert_eq!(r.errno(cmd, &[0xee; 300]), libc::ENOTSUP, "{cmd:?}");
        assert_eq!(r.errno(cmd, &[]), libc::ENOTSUP, "{cmd:?}");
        r.in_sync();
    }
    // DMA_READ/WRITE go server -> client only.
    assert_eq!(r.errno(Command::DmaRead, &[0; 16]), EINVAL);
    assert_eq!(r.errno(Command::DmaWrite, &[0; 20]), EINVAL);
    r.in_sync();
    r.finish();
}

#[test]
fn no_reply_errors_are_counted_not_sent() {
    let mut r = Raw::ready();
    // Out-of-range posted write, bad command, unsupported command: all with NO_REPLY.
    r.send(
        Command::RegionWrite as u16,
        flags::NO_REPLY,
        &access(BAR0_SIZE as u64, 0, 4, &[1, 2, 3, 4]),
        &[],
    );
    r.send(77, flags::NO_REPLY, &[1; 9], &[]);
    r.send(Command::MigDataRead as u16, flags::NO_REPLY, &[1; 8], &[]);
    // A good posted write is applied and not answered.
    r.send(
        Command::RegionWrite as u16,
        flags::NO_REPLY,
        &access(0, 0, 2, &[7, 8]),
        &[],
    );
    // The very next message on the wire is the reply to this read.
    let id = r.send(Command::RegionRead as u16, 0, &access(0, 0, 2, &[]), &[]);
    let rep = r.reply();
    assert_eq!(rep.header.msg_id, id);
    assert_eq!(&rep.body[16..], &[7, 8]);
    let run = r.finish();
    assert_eq!(run.stats.suppressed_errors, 3);
    assert_eq!(run.stats.error_replies, 0);
}

#[test]
fn oversize_message_closes_the_session() {
    let mut r = Raw::ready();
    let max = ServerConfig::default().max_data_xfer_size + 16 + 16 + 8192;
    // Only a header claiming max + 1 bytes: the server must not wait for (or allocate) it.
    let mut w = Writer::default();
    w.put(&Header {
        msg_id: 1,
        command: Command::RegionWrite as u16,
        size: max + 1,
        flags: 0,
        error: 0,
    });
    r.c.send_raw(&w.into_vec(), &[]).expect("send");
    let run = r.closed();
    assert!(matches!(
        run.result,
        Err(ProtocolError::MessageTooLarge { size, .. }) if size == max + 1
    ));
    // A REGION_WRITE of exactly max_data_xfer_size is fine.
    let mut r = Raw::ready();
    let data = vec![0u8; 1 << 20];
    let p = access(0, 2, 1 << 20, &data);
    // Region 2 is 16 KiB: the range check fails, but the message is accepted and drained.
    assert_eq!(r.errno(Command::RegionWrite, &p), EINVAL);
    r.in_sync();
    r.finish();
}

#[test]
fn undersize_header_closes_the_session() {
    let mut r = Raw::ready();
    let mut w = Writer::default();
    w.put(&Header {
        msg_id: 1,
        command: 4,
        size: 8,
        flags: 0,
        error: 0,
    });
    r.c.send_raw(&w.into_vec(), &[]).expect("send");
    let run = r.closed();
    assert!(matches!(run.result, Err(ProtocolError::Violation(_))));
}

#[test]
fn truncated_body_times_out_and_closes() {
    let mut r = Raw::new_with(
        MockDevice::new(),
        ServerConfig {
            body_timeout: Duration::from_millis(200),
            ..ServerConfig::default()
        },
    );
    r.c.negotiate().expect("negotiate");
    let full = frame(
        5,
        Command::DmaMap as u16,
        0,
        &dma_map_payload(32, 3, 0, 0, 4096),
    );
    r.c.send_raw(&full[..30], &[]).expect("send part");
    let run = r.closed();
    assert!(matches!(run.result, Err(ProtocolError::Timeout(_))));
}

#[test]
fn partial_header_times_out_too() {
    let mut r = Raw::new_with(
        MockDevice::new(),
        ServerConfig {
            body_timeout: Duration::from_millis(200),
            ..ServerConfig::default()
        },
    );
    r.c.send_raw(&[1, 0, 1], &[]).expect("send");
    let run = r.closed();
    assert!(matches!(run.result, Err(ProtocolError::Timeout(_))));
}

#[test]
fn too_many_fds_closes_the_session() {
    let mut r = Raw::ready();
    let e = eventfd();
    let fds: Vec<BorrowedFd<'_>> = (0..17).map(|_| e.as_fd()).collect();
    r.send(
        Command::DeviceSetIrqs as u16,
        0,
        &set_irqs(20, 4 | 32, 2, 0, 17, &[]),
        &fds,
    );
    let run = r.closed();
    assert!(matches!(
        run.result,
        Err(ProtocolError::TooManyFds { got: 17, max: 16 })
    ));
}

// ---------------------------------------------------------------- DMA_MAP / DMA_UNMAP

#[test]
fn dma_map_errors() {
    let mut r = Raw::new_with(
        MockDevice::new(),
        ServerConfig {
            max_dma_maps: 2,
            ..ServerConfig::default()
        },
    );
    r.c.negotiate().expect("negotiate");
    let m = Command::DmaMap;
    let mut short = dma_map_payload(32, 3, 0, 0, 4096);
    short.pop();
    assert_eq!(r.errno(m, &short), EINVAL);
    let mut long = dma_map_payload(32, 3, 0, 0, 4096);
    long.push(0);
    assert_eq!(r.errno(m, &long), EINVAL);
    assert_eq!(r.errno(m, &dma_map_payload(40, 3, 0, 0, 4096)), EINVAL);
    assert_eq!(r.errno(m, &dma_map_payload(32, 1 << 2, 0, 0, 4096)), EINVAL);
    assert_eq!(r.errno(m, &dma_map_payload(32, 3, 0, 0, 0)), EINVAL);
    assert_eq!(
        r.errno(m, &dma_map_payload(32, 3, 0, 0x1000, 0x800)),
        EINVAL
    );
    assert_eq!(
        r.errno(m, &dma_map_payload(32, 3, 0, 0x800, 0x1000)),
        EINVAL
    );
    assert_eq!(
        r.errno(m, &dma_map_payload(32, 3, 0, u64::MAX - 0xfff, 0x2000)),
        EINVAL
    );
    let ram = memfd(0x4000, |_| 0);
    let e2 = ram.try_clone().expect("dup");
    // Two fds, misaligned file offset, offset + size overflow.
    assert_eq!(
        r.errno_fds(
            m as u16,
            &dma_map_payload(32, 3, 0, 0, 4096),
            &[ram.as_fd(), e2.as_fd()]
        ),
        EINVAL
    );
    assert_eq!(
        r.errno_fds(
            m as u16,
            &dma_map_payload(32, 3, 0x10, 0, 4096),
            &[ram.as_fd()]
        ),
        EINVAL
    );
    assert_eq!(
        r.errno_fds(
            m as u16,
            &dma_map_payload(32, 3, u64::MAX - 0xfff, 0, 0x2000),
            &[ram.as_fd()]
        ),
        EINVAL
    );
    // Limit of 2 mappings: the third is ENOSPC; unmapping one frees a slot.
    assert_eq!(r.errno(m, &dma_map_payload(32, 3, 0, 0, 4096)), 0);
    assert_eq!(r.errno(m, &dma_map_payload(32, 1, 0, 0x1000, 4096)), 0);
    assert_eq!(
        r.errno(m, &dma_map_payload(32, 2, 0, 0x2000, 4096)),
        libc::ENOSPC
    );
    assert_eq!(
        r.errno(Command::DmaUnmap, &dma_unmap_payload(24, 0, 0, 4096)),
        0
    );
    assert_eq!(r.errno(m, &dma_map_payload(32, 2, 0, 0x2000, 4096)), 0);
    r.finish();
}

#[test]
fn dma_map_backend_errno_passes_through() {
    let mut dev = MockDevice::new();
    dev.fail_dma_map = Some(BackendError::Exists("overlap".into()));
    let mut r = Raw::new_with(dev, ServerConfig::default());
    r.c.negotiate().expect("negotiate");
    assert_eq!(
        r.errno(Command::DmaMap, &dma_map_payload(32, 3, 0, 0, 4096)),
        libc::EEXIST
    );
    let run = r.finish();
    assert_eq!(run.stats.backend_errors, 1);
}

#[test]
fn dma_unmap_errors_and_echo() {
    let mut r = Raw::ready();
    let u = Command::DmaUnmap;
    assert_eq!(r.errno(u, &dma_unmap_payload(24, 1 << 2, 0, 4096)), EINVAL);
    assert_eq!(
        r.errno(u, &dma_unmap_payload(24, 1, 0, 4096)),
        libc::ENOTSUP
    );
    // GET_DIRTY_PAGE_INFO with its bitmap struct appended: still ENOTSUP, body consumed.
    let mut p = dma_unmap_payload(40, 1, 0, 4096);
    p.extend_from_slice(&[0; 16]);
    assert_eq!(r.errno(u, &p), libc::ENOTSUP);
    assert_eq!(r.errno(u, &dma_unmap_payload(24, 2, 0x1000, 0)), EINVAL);
    assert_eq!(r.errno(u, &dma_unmap_payload(24, 2, 0, 0x1000)), EINVAL);
    assert_eq!(r.errno(u, &dma_unmap_payload(24, 0, 0x1000, 0)), EINVAL);
    assert_eq!(r.errno(u, &dma_unmap_payload(24, 0, u64::MAX, 2)), EINVAL);
    assert_eq!(r.errno(u, &dma_unmap_payload(32, 0, 0, 4096)), EINVAL);
    assert_eq!(r.errno(u, &dma_unmap_payload(24, 0, 0, 4096)[..20]), EINVAL);
    let e = eventfd();
    assert_eq!(
        r.errno_fds(u as u16, &dma_unmap_payload(24, 0, 0, 4096), &[e.as_fd()]),
        EINVAL
    );
    // Success echoes the entry.
    let p = dma_unmap_payload(24, 2, 0, 0);
    let id = r.send(u as u16, 0, &p, &[]);
    let rep = r.reply();
    assert_eq!(rep.header.msg_id, id);
    assert_eq!(rep.body, p);
    let run = r.finish();
    assert_eq!(
        run.dev.log.lock().expect("log").first(),
        Some(&Event::DmaUnmap(vugpu_protocol::backend::DmaUnmap::All))
    );
}

// ---------------------------------------------------------------- info queries

#[test]
fn info_query_errors() {
    let mut r = Raw::ready();
    assert_eq!(
        r.errno(Command::DeviceGetInfo, &u32s(&[8, 0, 0, 0])),
        EINVAL
    );
    assert_eq!(r.errno(Command::DeviceGetInfo, &u32s(&[16, 0, 0])), EINVAL);
    assert_eq!(
        r.errno(Command::DeviceGetInfo, &u32s(&[16, 0, 0, 0, 0])),
        EINVAL
    );
    let e = eventfd();
    assert_eq!(
        r.errno_fds(
            Command::DeviceGetInfo as u16,
            &u32s(&[16, 0, 0, 0]),
            &[e.as_fd()]
        ),
        EINVAL
    );
    // IRQ info.
    assert_eq!(
        r.errno(Command::DeviceGetIrqInfo, &u32s(&[16, 0, 5, 0])),
        EINVAL
    );
    assert_eq!(
        r.errno(Command::DeviceGetIrqInfo, &u32s(&[12, 0, 0, 0])),
        EINVAL
    );
    assert_eq!(
        r.errno(Command::DeviceGetIrqInfo, &u32s(&[16, 0, 0])),
        EINVAL
    );
    assert_eq!(r.errno(Command::DeviceGetIrqInfo, &u32s(&[16, 0, 4, 0])), 0);
    // Region IO fds.
    assert_eq!(
        r.errno(Command::DeviceGetRegionIoFds, &u32s(&[16, 0, 9, 0])),
        EINVAL
    );
    assert_eq!(
        r.errno(Command::DeviceGetRegionIoFds, &u32s(&[16, 1, 0, 0])),
        EINVAL
    );
    assert_eq!(
        r.errno(Command::DeviceGetRegionIoFds, &u32s(&[8, 0, 0, 0])),
        EINVAL
    );
    // Region info.
    let ri = Command::DeviceGetRegionInfo;
    assert_eq!(r.errno(ri, &region_info(32, 9)), EINVAL);
    assert_eq!(r.errno(ri, &region_info(32, u32::MAX)), EINVAL);
    assert_eq!(r.errno(ri, &region_info(31, 0)), EINVAL);
    assert_eq!(r.errno(ri, &region_info(32, 0)[..28]), EINVAL);
    r.in_sync();
    r.finish();
}

#[test]
fn region_info_reply_honours_argsz() {
    let mut r = Raw::ready();
    let full = 32 + 16 + 32;
    for argsz in 32u32..=100 {
        let id = r.send(
            Command::DeviceGetRegionInfo as u16,
            0,
            &region_info(argsz, 2),
            &[],
        );
        let rep = r.reply();
        assert_eq!(rep.header.msg_id, id);
        assert!(!rep.header.is_error());
        assert!(rep.body.len() <= argsz as usize, "reply fits argsz {argsz}");
        let reply_argsz = u32::from_ne_bytes(rep.body[0..4].try_into().expect("4"));
        let cap_offset = u32::from_ne_bytes(rep.body[12..16].try_into().expect("4"));
        assert_eq!(reply_argsz, full, "argsz = full size");
        assert_eq!(
            cap_offset, 32,
            "QEMU requires cap_offset >= 32 when CAPS is set"
        );
        if (argsz as usize) < full as usize {
            assert_eq!(rep.body.len(), 32, "truncated to the fixed part");
            assert!(rep.fds.is_empty(), "no fd in a truncated reply");
        } else {
            assert_eq!(rep.body.len(), full as usize);
            assert_eq!(rep.fds.len(), 1, "exactly one fd");
        }
    }
    r.finish();
}

// ---------------------------------------------------------------- SET_IRQS

#[test]
fn set_irqs_errors() {
    let mut r = Raw::ready();
    let s = Command::DeviceSetIrqs;
    const NONE: u32 = 1;
    const BOOL: u32 = 2;
    const EVFD: u32 = 4;
    const MASK: u32 = 8;
    const TRIG: u32 = 32;
    assert_eq!(
        r.errno(s, &set_irqs(20, NONE | BOOL | TRIG, 2, 0, 1, &[])),
        EINVAL
    );
    assert_eq!(
        r.errno(s, &set_irqs(20, NONE | MASK | TRIG, 2, 0, 1, &[])),
        EINVAL
    );
    assert_eq!(r.errno(s, &set_irqs(20, NONE, 2, 0, 1, &[])), EINVAL);
    assert_eq!(r.errno(s, &set_irqs(20, TRIG, 2, 0, 1, &[])), EINVAL);
    assert_eq!(
        r.errno(s, &set_irqs(20, NONE | TRIG | 64, 2, 0, 1, &[])),
        EINVAL
    );
    assert_eq!(r.errno(s, &set_irqs(20, NONE | TRIG, 5, 0, 1, &[])), EINVAL);
    assert_eq!(r.errno(s, &set_irqs(20, NONE | TRIG, 2, 7, 2, &[])), EINVAL);
    assert_eq!(
        r.errno(s, &set_irqs(20, NONE | TRIG, 2, u32::MAX, 2, &[])),
        EINVAL
    );
    // IRQ index with count 0 (REQ): any vector is out of range.
    assert_eq!(r.errno(s, &set_irqs(20, NONE | TRIG, 4, 0, 1, &[])), EINVAL);
    // count 0 is only the disable form.
    assert_eq!(r.errno(s, &set_irqs(20, NONE | TRIG, 2, 1, 0, &[])), EINVAL);
    assert_eq!(r.errno(s, &set_irqs(20, EVFD | TRIG, 2, 0, 0, &[])), EINVAL);
    assert_eq!(r.errno(s, &set_irqs(20, NONE | MASK, 2, 0, 0, &[])), EINVAL);
    assert_eq!(r.errno(s, &set_irqs(20, NONE | TRIG, 4, 0, 0, &[])), 0);
    // argsz must match the payload.
    assert_eq!(r.errno(s, &set_irqs(24, NONE | TRIG, 2, 0, 1, &[])), EINVAL);
    assert_eq!(
        r.errno(s, &set_irqs(20, NONE | TRIG, 2, 0, 1, &[0; 4])),
        EINVAL
    );
    assert_eq!(
        r.errno(s, &set_irqs(20, NONE | TRIG, 2, 0, 1, &[])[..16]),
        EINVAL
    );
    // DATA_BOOL: exactly count bytes.
    assert_eq!(
        r.errno(s, &set_irqs(22, BOOL | TRIG, 2, 0, 3, &[1, 0])),
        EINVAL
    );
    assert_eq!(
        r.errno(s, &set_irqs(23, BOOL | TRIG, 2, 0, 3, &[1, 0, 1])),
        0
    );
    // DATA_EVENTFD: fds == count or 0; no data bytes.
    let a = eventfd();
    let b = eventfd();
    assert_eq!(
        r.errno_fds(
            s as u16,
            &set_irqs(20, EVFD | TRIG, 2, 0, 2, &[]),
            &[a.as_fd()]
        ),
        EINVAL
    );
    assert_eq!(
        r.errno_fds(
            s as u16,
            &set_irqs(20, EVFD | TRIG, 2, 0, 1, &[]),
            &[a.as_fd(), b.as_fd()]
        ),
        EINVAL
    );
    assert_eq!(
        r.errno_fds(
            s as u16,
            &set_irqs(24, EVFD | TRIG, 2, 0, 1, &[0; 4]),
            &[a.as_fd()]
        ),
        EINVAL
    );
    // fds with DATA_NONE / DATA_BOOL.
    assert_eq!(
        r.errno_fds(
            s as u16,
            &set_irqs(20, NONE | TRIG, 2, 0, 1, &[]),
            &[a.as_fd()]
        ),
        EINVAL
    );
    assert_eq!(
        r.errno_fds(
            s as u16,
            &set_irqs(21, BOOL | TRIG, 2, 0, 1, &[1]),
            &[a.as_fd()]
        ),
        EINVAL
    );
    assert_eq!(
        r.errno_fds(
            s as u16,
            &set_irqs(20, EVFD | TRIG, 2, 6, 2, &[]),
            &[a.as_fd(), b.as_fd()]
        ),
        0
    );
    assert_eq!(r.errno(s, &set_irqs(20, EVFD | TRIG, 2, 0, 8, &[])), 0);
    let run = r.finish();
    let sets = run
        .dev
        .log
        .lock()
        .expect("log")
        .iter()
        .filter(|e| matches!(e, Event::SetIrqs { .. }))
        .count();
    assert_eq!(sets, 4, "only the valid requests reached the device");
}

// ---------------------------------------------------------------- region access

#[test]
fn region_access_errors() {
    let mut r = Raw::ready();
    let rd = Command::RegionRead;
    let wr = Command::RegionWrite;
    assert_eq!(r.errno(rd, &access(0, 9, 4, &[])), EINVAL);
    assert_eq!(r.errno(rd, &access(0, u32::MAX, 4, &[])), EINVAL);
    assert_eq!(
        r.errno(rd, &access(BAR0_SIZE as u64 - 3, 0, 4, &[])),
        EINVAL
    );
    assert_eq!(r.errno(rd, &access(u64::MAX - 1, 0, 4, &[])), EINVAL);
    assert_eq!(r.errno(rd, &access(0, 0, (1 << 20) + 1, &[])), libc::E2BIG);
    assert_eq!(r.errno(rd, &access(0, 0, u32::MAX, &[])), libc::E2BIG);
    assert_eq!(r.errno(rd, &access(0, 0, 4, &[])[..15]), EINVAL);
    assert_eq!(r.errno(rd, &access(0, 0, 4, &[0])), EINVAL);
    // Absent region (size 0, no flags).
    assert_eq!(r.errno(rd, &access(0, 8, 1, &[])), EINVAL);
    // Write: count must equal the data.
    assert_eq!(r.errno(wr, &access(0, 0, 4, &[1, 2, 3])), EINVAL);
    assert_eq!(r.errno(wr, &access(0, 0, 2, &[1, 2, 3])), EINVAL);
    assert_eq!(r.errno(wr, &access(0, 6, 1, &[1])), EINVAL);
    assert_eq!(r.errno(wr, &access(4094, 0, 4, &[1, 2, 3, 4])), EINVAL);
    let e = eventfd();
    assert_eq!(
        r.errno_fds(wr as u16, &access(0, 0, 1, &[1]), &[e.as_fd()]),
        EINVAL
    );
    // Valid edge: last bytes of a region.
    assert_eq!(r.errno(rd, &access(BAR0_SIZE as u64 - 4, 0, 4, &[])), 0);
    r.in_sync();
    let run = r.finish();
    let writes = run
        .dev
        .log
        .lock()
        .expect("log")
        .iter()
        .filter(|e| matches!(e, Event::Write { .. }))
        .count();
    assert_eq!(writes, 0);
}

fn multi(entries: &[(u64, u32, u32)], wr_cnt: u64) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(wr_cnt);
    for (off, region, count) in entries {
        w.u64(*off).u32(*region).u32(*count).bytes(&[0x5a; 8]);
    }
    w.into_vec()
}

#[test]
fn region_write_multi_errors() {
    let mut r = Raw::ready();
    let m = Command::RegionWriteMulti;
    assert_eq!(r.errno(m, &multi(&[], 0)), EINVAL);
    let many: Vec<(u64, u32, u32)> = (0..201).map(|i| (i * 8, 0, 8)).collect();
    assert_eq!(r.errno(m, &multi(&many, 201)), EINVAL);
    assert_eq!(r.errno(m, &multi(&many[..200], 200)), 0);
    assert_eq!(r.errno(m, &multi(&[(0, 0, 4)], 2)), EINVAL);
    assert_eq!(r.errno(m, &multi(&[(0, 0, 4), (8, 0, 4)], 1)), EINVAL);
    assert_eq!(r.errno(m, &multi(&[(0, 0, 9)], 1)), EINVAL);
    assert_eq!(r.errno(m, &multi(&[(0, 0, 0)], 1)), EINVAL);
    assert_eq!(r.errno(m, &[1, 0, 0]), EINVAL);
    // One bad entry: nothing is written (validated before any write).
    assert_eq!(r.errno(m, &multi(&[(0x100, 0, 4), (0, 9, 4)], 2)), EINVAL);
    assert_eq!(
        r.errno(m, &multi(&[(0x100, 0, 4), (BAR0_SIZE as u64 - 2, 0, 4)], 2)),
        EINVAL
    );
    let id = r.send(m as u16, 0, &multi(&[(0x100, 0, 4), (0x108, 0, 8)], 2), &[]);
    let rep = r.reply();
    assert_eq!(rep.header.msg_id, id);
    assert_eq!(rep.body, 2u64.to_ne_bytes());
    let run = r.finish();
    let writes: Vec<u64> = run
        .dev
        .log
        .lock()
        .expect("log")
        .iter()
        .filter_map(|e| match e {
            Event::Write { offset, .. } => Some(*offset),
            _ => None,
        })
        .collect();
    assert_eq!(writes.len(), 202);
    assert_eq!(&writes[200..], &[0x100, 0x108]);
}

#[test]
fn reset_errors() {
    let mut r = Raw::ready();
    assert_eq!(r.errno(Command::DeviceReset, &[0]), EINVAL);
    let e = eventfd();
    assert_eq!(
        r.errno_fds(Command::DeviceReset as u16, &[], &[e.as_fd()]),
        EINVAL
    );
    assert_eq!(r.errno(Command::DeviceReset, &[]), 0);
    let run = r.finish();
    assert_eq!(
        run.dev.log.lock().expect("log").as_slice(),
        &[Event::Reset, Event::Disconnected]
    );
}
