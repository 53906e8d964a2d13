//! Resource limits of `vugpu serve`, set with its flags and hit by a client of the real binary
//! (docs/reliability.md, "Resource limits"): exact errnos, the session survives where the
//! specification says it does, and everything the client made the server hold is given back.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::rig::{vram, Doorbell, Rig};
use common::{sealed_memfd, ServerProcess, MIB};
use vugpu_device::engine::desc::{flags, RawDescriptor};
use vugpu_protocol::backend::{DmaProt, DmaUnmap};
use vugpu_protocol::ProtocolError;

const RW: DmaProt = DmaProt {
    read: true,
    write: true,
};

fn stats(socket: &Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_vugpu"))
        .args(["stats", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Polls the server's stats until `done` holds (10 s at most).
fn stats_until(socket: &Path, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = stats(socket);
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "never reached: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Open fds of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Waits (5 s at most) until the process has `want` fds open; returns the last count. (The
/// control-socket thread closes a `vugpu stats` connection a moment after the reply.)
fn fds_settle(pid: u32, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = fd_count(pid);
        if n == want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn errno<T: std::fmt::Debug>(r: Result<T, ProtocolError>) -> i32 {
    match r {
        Err(ProtocolError::Remote { errno }) => errno,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

fn ctl_of(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".ctl");
    PathBuf::from(p)
}

#[test]
fn dma_map_limits_from_the_command_line_enospc_and_all_given_back() {
    let srv = ServerProcess::spawn(&[
        "--max-dma-maps",
        "4",
        "--max-dma-fds",
        "2",
        "--max-dma-bytes",
        "64K",
        "--max-data-xfer-size",
        "64K",
        "--max-msg-fds",
        "4",
    ]);
    let pid = srv.child.id();
    // A first client comes and goes before the count, so that everything the server creates
    // once it runs (the event loop's epoll fd, ...) is counted.
    drop(srv.client());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !srv.log().contains(" disconnected (") {
        assert!(Instant::now() < deadline, "{}", srv.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    let idle = fd_count(pid);
    let ram = sealed_memfd(MIB);
    {
        let mut c = srv.client();
        let caps = c.server_caps().unwrap().clone();
        assert_eq!(
            (caps.max_dma_maps, caps.max_data_xfer_size, caps.max_msg_fds),
            (4, 64 << 10, 4),
            "the VERSION reply advertises the flags"
        );
        // Bytes: 16K + 48K fit in 64K, 4K more does not.
        c.dma_map(0, 16 << 10, 0, RW, Some(ram.as_fd())).unwrap();
        assert_eq!(
            errno(c.dma_map(0x10_0000, 52 << 10, 0, RW, Some(ram.as_fd()))),
            libc::ENOSPC
        );
        c.dma_map(0x10_0000, 48 << 10, 0, RW, Some(ram.as_fd()))
            .unwrap();
        // Fds: a third window with an fd is refused however small; fd-less ones cost none.
        assert_eq!(
            errno(c.dma_map(0x20_0000, 4096, 0, RW, Some(ram.as_fd()))),
            libc::ENOSPC
        );
        c.dma_map(0x30_0000, 1 << 30, 0, RW, None).unwrap();
        c.dma_map(0x8000_0000, 1 << 30, 0, RW, None).unwrap();
        // Windows: the fifth is refused by the session (the negotiated max_dma_maps).
        assert_eq!(
            errno(c.dma_map(0x1_0000_0000, 4096, 0, RW, None)),
            libc::ENOSPC
        );
        // Transfers: one byte over max_data_xfer_size is E2BIG, the session goes on.
        let mut big = vec![0u8; (64 << 10) + 1];
        assert_eq!(errno(c.region_read(2, 0, &mut big)), libc::E2BIG);
        let v = stats(&srv.socket);
        assert_eq!(v["device"]["dma_windows"], 4);
        assert_eq!(v["device"]["dma_fd_windows"], 2);
        assert_eq!(v["device"]["dma_fd_bytes"], 64 << 10);
        assert_eq!(
            fds_settle(pid, idle + 3),
            idle + 3,
            "two window fds and the session"
        );
        // Unmapping gives the budget back.
        c.dma_unmap(DmaUnmap::Range {
            iova: 0,
            size: 16 << 10,
        })
        .unwrap();
        c.dma_map(0x20_0000, 16 << 10, 0, RW, Some(ram.as_fd()))
            .unwrap();
    }
    // The client is gone: its windows and fds too, and the next client gets the full budget.
    stats_until(&srv.socket, |v| v["device"]["dma_windows"] == 0);
    assert_eq!(
        fds_settle(pid, idle),
        idle,
        "every fd the client left is closed"
    );
    let mut c = srv.client();
    c.dma_map(0, 16 << 10, 0, RW, Some(ram.as_fd())).unwrap();
    c.dma_map(0x10_0000, 48 << 10, 0, RW, Some(ram.as_fd()))
        .unwrap();
    drop(c);
    let (status, _) = srv.stop();
    assert!(status.success());
}

#[test]
fn trace_and_log_volume_are_capped_and_what_was_dropped_is_counted() {
    let dir = common::temp_dir("limits-trace");
    let trace = dir.join("t.trace");
    let srv = ServerProcess::spawn(&[
        "--engines",
        "1",
        "--trace",
        trace.to_str().unwrap(),
        "--trace-max-bytes",
        "4K",
        "--log-rate-limit",
        "5",
        "--log-burst",
        "5",
    ]);
    // Trace: 100 FILLs write far more than 4 KiB of lines.
    let mut r = Rig::new(srv.client(), 4 * MIB);
    r.enable(0);
    let mut descs: Vec<RawDescriptor> = (0..100)
        .map(|i| RawDescriptor::fill(vram(i * 64), 64, 0x1111_1111))
        .collect();
    descs[99] = descs[99].with_flags(flags::IRQ);
    r.submit(0, &descs, Doorbell::Mmap);
    assert_eq!(r.wait_vector(1, 10_000), 1);
    let text = std::fs::read_to_string(&trace).unwrap();
    let last = text.lines().last().unwrap();
    assert!(last.contains("trace limit of 4096 bytes reached"), "{last}");
    assert!(
        text.len() as u64 <= 4096 + last.len() as u64 + 1,
        "{}",
        text.len()
    );
    let lines_written = text.lines().count() as u64 - 1;
    let v = stats(&srv.socket);
    let dropped = v["device"]["trace_lines_dropped"].as_u64().unwrap();
    assert!(
        dropped > 0 && lines_written + dropped >= 100,
        "{lines_written} written, {dropped} dropped"
    );

    // Log: 50 refused second clients are 50 warnings; at 5 lines a second with a burst of
    // 5, almost all are dropped and counted.
    let started = Instant::now();
    for _ in 0..50 {
        drop(UnixStream::connect(&srv.socket).unwrap());
    }
    let refused = |log: &str| log.matches("refusing a second client").count() as u64;
    let v = stats_until(&srv.socket, |v| {
        refused(&srv.log()) + v["device"]["log_lines_dropped"].as_u64().unwrap() >= 50
    });
    let printed = refused(&srv.log());
    let allowed = 5 + 5 * started.elapsed().as_secs() + 5;
    assert!(
        printed <= allowed,
        "{printed} lines printed, {allowed} allowed"
    );
    assert!(v["device"]["log_lines_dropped"].as_u64().unwrap() >= 50 - printed);
    // Once the bucket refills, the next line says how many were dropped (1 s = 5 tokens).
    std::thread::sleep(Duration::from_millis(1100));
    drop(r);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !srv.log().contains("log lines dropped by the rate limit") {
        assert!(Instant::now() < deadline, "{}", srv.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, _) = srv.stop();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// One exchange with the control socket (20 s at most: a test failure, never a hang).
fn ask(ctl: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(ctl).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn control_socket_clients_are_served_concurrently_and_bounded_in_number() {
    // A client has a minute: a silent one would hold a one-at-a-time server that long.
    let srv = ServerProcess::spawn(&["--ctl-timeout-ms", "60000", "--ctl-max-clients", "2"]);
    let ctl = ctl_of(&srv.socket);
    let silent = UnixStream::connect(&ctl).unwrap();
    assert!(
        ask(&ctl, b"stats\n").contains("\"engines\""),
        "answered beside a silent client"
    );
    // Two silent clients fill the two slots (the asker's slot was freed when it closed,
    // before they connected): the next client is refused at once, before it sends anything.
    let silent2 = UnixStream::connect(&ctl).unwrap();
    let mut third = UnixStream::connect(&ctl).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut out = String::new();
    third.read_to_string(&mut out).unwrap();
    assert!(out.contains("busy"), "{out}");
    // Their slots come back when they go.
    drop(silent);
    drop(silent2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ask(&ctl, b"stats\n").contains("\"engines\"") {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, _) = srv.stop();
    assert!(status.success());
}

#[test]
fn control_socket_clients_are_bounded_in_time_and_size() {
    let srv = ServerProcess::spawn(&["--ctl-timeout-ms", "200"]);
    let ctl = ctl_of(&srv.socket);
    // A request longer than 256 bytes is answered with an error, not read on (what follows
    // is discarded, up to 64 KiB).
    assert!(ask(&ctl, &[b'x'; 60_000]).contains("request too long"));
    // A client that sends nothing is closed by the server at the timeout (it never has to
    // close itself).
    let mut silent = UnixStream::connect(&ctl).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = Vec::new();
    silent.read_to_end(&mut out).unwrap();
    assert!(out.is_empty(), "no reply without a request");
    assert!(ask(&ctl, b"stats\n").contains("\"engines\""));
    // A client that asks and never reads: the reply waits in the socket buffer until the
    // timeout closes the connection; the next client is answered meanwhile.
    let lazy = UnixStream::connect(&ctl).unwrap();
    (&lazy).write_all(b"stats\n").unwrap();
    assert!(ask(&ctl, b"stats\n").contains("\"engines\""));
    drop(lazy);
    let (status, _) = srv.stop();
    assert!(status.success());
}

/// `vugpu serve` with an open-file limit of `nofile` (soft and hard), logging every line.
fn spawn_with_nofile(nofile: u64, extra: &[&str]) -> (std::process::Child, PathBuf, PathBuf) {
    use std::os::unix::process::CommandExt;
    let dir = common::temp_dir("nofile");
    let socket = dir.join("gpu.sock");
    let log = dir.join("stderr.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vugpu"));
    cmd.arg("serve")
        .arg("--socket")
        .arg(&socket)
        .args(["--engines", "1", "--log-rate-limit", "0"])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let lim = rustix::process::Rlimit {
        current: Some(nofile),
        maximum: Some(nofile),
    };
    // SAFETY: the hook only makes the setrlimit system call (async-signal-safe, no allocation)
    // with `lim`, copied into the closure. (`pre_exec` is unsafe whatever the hook does.)
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::setrlimit(rustix::process::Resource::Nofile, lim)?;
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    common::wait_for(&socket);
    (child, socket, log)
}

#[test]
fn out_of_fds_the_server_refuses_clients_without_spinning_and_recovers() {
    let (mut child, socket, log) = spawn_with_nofile(
        48,
        &["--ctl-max-clients", "1024", "--ctl-timeout-ms", "60000"],
    );
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !read_log().contains("open-file limit 48 is below") {
        assert!(
            Instant::now() < deadline,
            "no warning at start: {}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let idle = fd_count(child.id());
    // Fill the server's fd table with idle control-socket clients (each holds one fd there).
    let ctl = ctl_of(&socket);
    let held: Vec<UnixStream> = (0..60)
        .map(|_| UnixStream::connect(&ctl).unwrap())
        .collect();
    while !read_log().contains("control socket accept failed") {
        assert!(
            Instant::now() < deadline,
            "never out of fds: {}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // A vfio-user client now: refused (its connection is closed), not left queued.
    let refused =
        vugpu_protocol::Client::connect(&socket).and_then(|mut c| c.negotiate().map(|_| ()));
    assert!(refused.is_err(), "a client was served without fds");
    while !read_log().contains("refusing a client: Too many open files") {
        assert!(Instant::now() < deadline, "{}", read_log());
        std::thread::sleep(Duration::from_millis(10));
    }
    // One second out of fds: the threads whose accept fails must not spin (a spinning one
    // logs a line per attempt, hundreds of thousands a second; --log-rate-limit 0 prints all).
    let before = read_log();
    std::thread::sleep(Duration::from_secs(1));
    let after = read_log();
    let new = &after[before.len()..];
    let ctl_fails = new.matches("control socket accept failed").count();
    let loop_fails = new.matches("accept failed").count() - ctl_fails;
    assert!(
        ctl_fails <= 40,
        "{ctl_fails} failed control-socket accepts in 1 s"
    );
    assert!(
        loop_fails <= 2,
        "{loop_fails} failed event-loop accepts in 1 s"
    );
    // The fds come back: the server closes the control clients' fds when it sees them hang up
    // (asynchronously, on its control threads), then the next client works. A client that
    // arrives before that may find no room for its eventfds (SCM_RIGHTS truncated: disconnected).
    drop(held);
    let back = Instant::now() + Duration::from_secs(30);
    while fd_count(child.id()) > idle {
        assert!(
            Instant::now() < back,
            "the server kept {} fds after its control clients left (idle {idle})",
            fd_count(child.id())
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut r = Rig::new(common::connect(&socket), 4 * MIB);
    r.enable(0);
    r.submit(
        0,
        &[RawDescriptor::fill(vram(0), 64, 0x5a5a_5a5a).with_flags(flags::IRQ)],
        Doorbell::Mmap,
    );
    assert_eq!(r.wait_vector(1, 10_000), 1);
    assert_eq!(r.vram_read(0, 4), [0x5a; 4]);
    drop(r);
    common::sigterm(&child);
    assert!(child.wait().unwrap().success());
}
