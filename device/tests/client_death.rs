//! The client dies during every kind of wait (docs/reliability.md, "Client death during
//! waits"): while a DMA message to it is outstanding, while an engine is in the middle of a
//! copy, while a reset is being served, while the control socket reads its request. Each case
//! reaches its wait through a deterministic hook (the DMA message arriving at the client, the
//! first chunk of a copy visible in VRAM), never a sleep. Against the real `vugpu serve`
//! binary, the server must end the session, give back every window and fd (its /proc fd count
//! returns to what it was before the client), stay up, and serve the next client, which works.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::rig::{sys, vram, Doorbell, Rig, RING_AREA, SYS_IOVA};
use common::{frame, ServerProcess, MIB};
use vugpu_device::engine::desc::{flags, RawDescriptor};
use vugpu_protocol::wire::Command as Cmd;

/// Guest RAM of the rigs.
const SYS_SIZE: u64 = 4 * MIB;

fn stats(socket: &Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_vugpu"))
        .args(["stats", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn ctl_of(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".ctl");
    PathBuf::from(p)
}

/// Sessions the server has ended so far.
fn sessions_ended(srv: &ServerProcess) -> usize {
    srv.log().matches(" disconnected (").count()
}

/// A server with one engine, and its fd count with no client. A first client comes and goes
/// before the count, so that everything the server creates once it runs (the event loop's
/// epoll fd, ...) is counted.
fn server() -> (ServerProcess, usize) {
    let srv = ServerProcess::spawn(&["--engines", "1"]);
    drop(srv.client());
    let deadline = Instant::now() + Duration::from_secs(10);
    while sessions_ended(&srv) < 1 {
        assert!(Instant::now() < deadline, "{}", srv.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    let idle = fd_count(srv.child.id());
    (srv, idle)
}

/// The client is gone: the server ends the session (log), holds no window and no fd of it,
/// and is still running. Waits at most 10 s for the event loop to notice.
fn given_back(srv: &mut ServerProcess, idle: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = stats(&srv.socket);
        let fds = fd_count(srv.child.id());
        let ended = sessions_ended(srv) >= 2;
        if ended && v["device"]["dma_windows"] == 0 && fds == idle {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "windows {} fds {fds} (idle {idle}), log:\n{}",
            v["device"]["dma_windows"],
            srv.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(srv.child.try_wait().unwrap().is_none(), "the server is up");
}

/// The next client works: engine 0 (reset first: it may have stopped in error) copies guest
/// RAM to VRAM and back and interrupts.
fn next_client_works(srv: &ServerProcess) {
    let mut r = Rig::new(srv.client(), SYS_SIZE);
    r.reset_engine(0);
    let data = SYS_IOVA + RING_AREA;
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    r.sys_write(data, &pattern);
    r.submit(
        0,
        &[
            RawDescriptor::copy(sys(data), vram(0x10_0000), 8192),
            RawDescriptor::copy(vram(0x10_0000), sys(data + 0x10000), 8192).with_flags(flags::IRQ),
        ],
        Doorbell::Mmap,
    );
    assert_eq!(r.wait_vector(1, 10_000), 1, "completion interrupt");
    assert_eq!(r.sys_read(data + 0x10000, 8192), pattern);
}

/// Hands `theirs` (a copy of the client's socket) to a child process, runs `rest` (which
/// closes every other copy), and SIGKILLs the child: the connection ends because a process
/// died, as when QEMU is killed.
fn die_as_a_process(theirs: OwnedFd, rest: impl FnOnce()) {
    let mut child = Command::new("sleep")
        .arg("600")
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    rest();
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn client_dies_while_a_dma_message_to_it_is_outstanding() {
    let (mut srv, idle) = server();
    let mut r = Rig::new(srv.client(), SYS_SIZE);
    // An fd-less window like QEMU's BIOS ROM: the engine reaches it with DMA_READ messages.
    let rom = 0xfffc_0000u64;
    r.map_fd_less(rom, 0x4_0000, false);
    r.enable(0);
    r.submit(
        0,
        &[RawDescriptor::copy(sys(rom), vram(0), 64).with_flags(flags::IRQ)],
        Doorbell::Mmap,
    );
    // The hook: the DMA_READ is here and unanswered; the event loop waits for its reply.
    let req = r.c.recv_raw().unwrap().unwrap();
    assert_eq!(req.header.command, Cmd::DmaRead as u16);
    let theirs = r.c.as_fd().try_clone_to_owned().unwrap();
    die_as_a_process(theirs, || drop(r));
    given_back(&mut srv, idle);
    // The engine stops with the message error at the ROM address (hw-spec §6.8).
    let v = stats(&srv.socket);
    assert_eq!(v["engines"][0]["state"], "ERROR", "{v}");
    assert_eq!(v["engines"][0]["error"]["name"], "MSG_DMA_FAILED", "{v}");
    assert_eq!(v["engines"][0]["error"]["addr"], rom, "{v}");
    next_client_works(&srv);
    let (status, _) = srv.stop();
    assert!(status.success());
}

#[test]
fn client_dies_while_an_engine_is_mid_copy() {
    let (mut srv, idle) = server();
    let mut r = Rig::new(srv.client(), SYS_SIZE);
    // A copy of 1 MiB + 4 KiB: its first chunk (1 MiB, the CHUNK size) is the last MiB of the
    // mapped guest RAM, its second is in an fd-less window right after it.
    let end = SYS_IOVA + SYS_SIZE;
    r.map_fd_less(end, 0x1_0000, false);
    let first: Vec<u8> = (0..MIB as u32).map(|i| (i % 251) as u8).collect();
    r.sys_write(end - MIB, &first);
    r.enable(0);
    r.submit(
        0,
        &[RawDescriptor::copy(sys(end - MIB), vram(0), MIB + 4096).with_flags(flags::IRQ)],
        Doorbell::Mmap,
    );
    // The hook: the second chunk's DMA_READ, sent only after the first chunk was written.
    let req = r.c.recv_raw().unwrap().unwrap();
    assert_eq!(req.header.command, Cmd::DmaRead as u16);
    assert_eq!(r.vram_read(0, 4096), first[..4096], "the copy is under way");
    assert_eq!(
        r.vram_read(MIB - 4096, 4096),
        first[first.len() - 4096..],
        "its first chunk is done"
    );
    drop(r);
    given_back(&mut srv, idle);
    // The engine stops at the second chunk, with the message error at its address.
    let v = stats(&srv.socket);
    assert_eq!(v["engines"][0]["state"], "ERROR", "{v}");
    assert_eq!(v["engines"][0]["error"]["name"], "MSG_DMA_FAILED", "{v}");
    assert_eq!(v["engines"][0]["error"]["addr"], end, "{v}");
    assert_eq!(v["engines"][0]["jobs"], 0, "the copy did not complete: {v}");
    next_client_works(&srv);
    let (status, _) = srv.stop();
    assert!(status.success());
}

#[test]
fn client_dies_while_a_reset_is_in_progress() {
    let (mut srv, idle) = server();
    let mut r = Rig::new(srv.client(), SYS_SIZE);
    let rom = 0xfffc_0000u64;
    r.map_fd_less(rom, 0x4_0000, false);
    r.enable(0);
    r.submit(
        0,
        &[RawDescriptor::copy(sys(rom), vram(0), 64).with_flags(flags::IRQ)],
        Doorbell::Mmap,
    );
    // The engine waits for a DMA_READ reply; the client asks for a device reset instead (the
    // server serves it inside that wait: the reset must stop the waiting engine) and is gone
    // before the reset's reply is sent.
    let req = r.c.recv_raw().unwrap().unwrap();
    assert_eq!(req.header.command, Cmd::DmaRead as u16);
    let id = r.c.next_msg_id();
    r.c.send_raw(&frame(id, Cmd::DeviceReset as u16, 0, &[]), &[])
        .unwrap();
    drop(r);
    given_back(&mut srv, idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !srv.log().contains("DEVICE_RESETs")
        || stats(&srv.socket)["engines"][0]["state"] != "DISABLED"
    {
        assert!(
            Instant::now() < deadline,
            "{}\n{}",
            stats(&srv.socket),
            srv.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(srv.log().contains("1 DEVICE_RESETs"), "{}", srv.log());
    next_client_works(&srv);
    let (status, _) = srv.stop();
    assert!(status.success());
}

#[test]
fn client_dies_while_the_control_socket_reads_it() {
    let (mut srv, idle) = server();
    let ctl = ctl_of(&srv.socket);
    // Half a request, then the socket closes.
    let mut s = UnixStream::connect(&ctl).unwrap();
    s.write_all(b"sta").unwrap();
    drop(s);
    // Half a request, then the process holding the socket is killed.
    let s = UnixStream::connect(&ctl).unwrap();
    (&s).write_all(b"st").unwrap();
    let theirs = s.as_fd().try_clone_to_owned().unwrap();
    die_as_a_process(theirs, || drop(s));
    // A whole request whose asker is gone before the reply (the reply's write fails).
    let mut s = UnixStream::connect(&ctl).unwrap();
    s.write_all(b"stats\n").unwrap();
    drop(s);
    // The control socket still answers; no fd stays open.
    let mut s = UnixStream::connect(&ctl).unwrap();
    s.write_all(b"stats\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.contains("\"engines\""), "{out}");
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fd_count(srv.child.id()) != idle {
        assert!(
            Instant::now() < deadline,
            "fds {}",
            fd_count(srv.child.id())
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(srv.child.try_wait().unwrap().is_none());
    next_client_works(&srv);
    let (status, _) = srv.stop();
    assert!(status.success());
}
