//! `vugpu ctl SOCKET stats|trace|inject` against a running `vugpu serve` (hw-spec §8.2, §8.4,
//! §10), with the real binary.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::rig::{sys, vram, Doorbell, Rig, RING_AREA, SYS_IOVA};
use common::{ServerProcess, MIB};
use vugpu_device::engine::desc::{flags, RawDescriptor};
use vugpu_device::engine::regs::offset;

fn ctl(socket: &Path, words: &[&str]) -> (bool, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_vugpu"))
        .arg("ctl")
        .arg(socket)
        .args(words)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{words:?}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

fn stats(socket: &Path) -> serde_json::Value {
    let (ok, v) = ctl(socket, &["stats"]);
    assert!(ok, "{v}");
    v
}

fn ctl_path(socket: &Path) -> std::path::PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".ctl");
    p.into()
}

/// Waits until `f` holds, at most 10 s.
fn until(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn ctl_stats_is_vugpu_stats_and_refuses_bad_requests() {
    let srv = ServerProcess::spawn(&["--engines", "2"]);
    let v = stats(&srv.socket);
    assert_eq!(v["device"]["engines"], 2);
    assert_eq!(v["engines"][1]["index"], 1);
    assert_eq!(v["device"]["trace_subscribers"], 0);
    assert_eq!(v["inject"]["removed"], false);
    // The control socket's own path works too; `vugpu stats` says the same.
    let (ok, w) = ctl(&ctl_path(&srv.socket), &["stats"]);
    assert!(ok);
    assert_eq!(w["device"]["name"], "gpu0");
    let old = Command::new(env!("CARGO_BIN_EXE_vugpu"))
        .args(["stats", "--socket"])
        .arg(&srv.socket)
        .output()
        .unwrap();
    let old: serde_json::Value = serde_json::from_slice(&old.stdout).unwrap();
    assert_eq!(old["device"]["engines"], 2);
    // Refusals exit 1 with the server's error.
    let (ok, e) = ctl(&srv.socket, &["reboot"]);
    assert!(!ok);
    assert!(e["error"].as_str().unwrap().contains("unknown request"));
    let (ok, e) = ctl(&srv.socket, &["inject", "hang", "engine=2"]);
    assert!(!ok);
    assert!(e["error"].as_str().unwrap().contains("no engine 2"), "{e}");
    let (ok, e) = ctl(&srv.socket, &["inject", "poison", "offset=0", "length=0"]);
    assert!(!ok, "{e}");
    let (ok, e) = ctl(&srv.socket, &["inject", "msix-drop", "vector=16"]);
    assert!(!ok, "{e}");
    // Nothing was armed by the refused requests.
    let v = stats(&srv.socket);
    assert_eq!(v["inject"]["hang"], serde_json::json!([]));
    assert_eq!(v["inject"]["poison"], serde_json::json!([]));
}

#[test]
fn ctl_trace_streams_json_lines_live() {
    let srv = ServerProcess::spawn(&["--engines", "2"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vugpu"))
        .arg("ctl")
        .arg(&srv.socket)
        .arg("trace")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let hello: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(hello["trace"], "gpu0");
    assert!(until(
        || stats(&srv.socket)["device"]["trace_subscribers"] == 1
    ));

    let mut r = Rig::new(srv.client(), 8 * MIB);
    r.enable(1);
    let data = SYS_IOVA + RING_AREA;
    r.sys_write(data, &[7u8; 4096]);
    r.submit(
        1,
        &[RawDescriptor::copy(sys(data), vram(0x2000), 4096).with_flags(flags::IRQ)],
        Doorbell::Mmap,
    );
    assert_eq!(r.wait_vector(2, 5000), 1);
    let mut got = Vec::new();
    for _ in 0..3 {
        let l = lines.next().unwrap().unwrap();
        got.push(serde_json::from_str::<serde_json::Value>(&l).unwrap());
    }
    assert_eq!(got[0]["op"], "FETCH");
    assert_eq!(got[0]["gpu"], "gpu0");
    assert_eq!(got[0]["eng"], 1);
    assert_eq!(got[0]["slot"], 0);
    assert!(got[0]["ns"].as_u64().unwrap() > 0);
    assert_eq!(got[1]["op"], "COPY");
    assert_eq!(got[1]["dir"], "read");
    assert_eq!(got[1]["target"], "sys");
    assert_eq!(got[1]["addr"], format!("{data:#x}"));
    assert_eq!(got[1]["size"], 4096);
    assert_eq!(got[2]["dir"], "write");
    assert_eq!(got[2]["target"], "vram");
    assert_eq!(got[2]["addr"], "0x2000");
    assert_eq!(got[2]["result"], "ok");

    // The subscriber goes away with its client.
    child.kill().unwrap();
    child.wait().unwrap();
    drop(lines);
    r.submit(1, &[RawDescriptor::default()], Doorbell::Mmap);
    assert!(until(
        || stats(&srv.socket)["device"]["trace_subscribers"] == 0
    ));
}

#[test]
fn ctl_trace_slow_reader_is_bounded_dropped_and_counted() {
    let srv = ServerProcess::spawn(&["--engines", "1", "--ctl-max-clients", "4"]);
    // A subscriber that never reads.
    let mut slow = UnixStream::connect(ctl_path(&srv.socket)).unwrap();
    slow.write_all(b"trace\n").unwrap();
    assert!(until(
        || stats(&srv.socket)["device"]["trace_subscribers"] == 1
    ));
    // At most half the slots stream: a second and third subscriber (of 4 slots) is refused.
    let mut second = UnixStream::connect(ctl_path(&srv.socket)).unwrap();
    second.write_all(b"trace\n").unwrap();
    let mut third = UnixStream::connect(ctl_path(&srv.socket)).unwrap();
    third.write_all(b"trace\n").unwrap();
    let mut busy = String::new();
    third.read_to_string(&mut busy).unwrap();
    assert!(busy.contains("too many trace subscribers"), "{busy}");
    drop(second);

    let mut r = Rig::new(srv.client(), 8 * MIB);
    r.enable(0);
    // 40 rounds of 1000 NOPs: 40000 FETCH lines, far more than the queue and buffers hold.
    let rounds = 40;
    for k in 1..=rounds {
        let descs = vec![RawDescriptor::default(); 1000];
        r.submit(0, &descs, Doorbell::Register);
        assert!(r.wait_head(0, k * 1000, 20_000), "round {k}");
    }
    assert_eq!(r.reg(0, offset::RING_HEAD), rounds * 1000);
    let v = stats(&srv.socket);
    let dropped = v["device"]["trace_stream_dropped"].as_u64().unwrap();
    assert!(
        dropped > 10_000,
        "a reader that does not read loses lines: {v}"
    );
    // What it gets when it finally reads: bounded, and the drop count in the stream.
    slow.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
        if got.len() > 64 << 20 {
            break;
        }
    }
    let text = String::from_utf8(got).unwrap();
    let n = text.lines().count();
    assert!(
        n < 4096 + 2000,
        "queue + buffer bound what was kept: {n} lines"
    );
    let drop_line = text
        .lines()
        .find(|l| l.starts_with("{\"dropped\":"))
        .unwrap();
    let d: serde_json::Value = serde_json::from_str(drop_line).unwrap();
    assert!(d["dropped"].as_u64().unwrap() > 0);
    // The engines never waited for the reader, and stats still answers while it streams.
    assert_eq!(stats(&srv.socket)["engines"][0]["jobs"], rounds * 1000);
}
