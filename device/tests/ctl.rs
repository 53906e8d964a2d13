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
    // Kept: the queue (4096 lines), the 64 KiB output buffer and the socket's buffer (a few
    // hundred KiB of ~150-byte lines); far fewer than the 40000 lines written.
    assert!(n < 12_000, "queue + buffers bound what was kept: {n} lines");
    let drop_line = text
        .lines()
        .find(|l| l.starts_with("{\"dropped\":"))
        .unwrap();
    let d: serde_json::Value = serde_json::from_str(drop_line).unwrap();
    assert!(d["dropped"].as_u64().unwrap() > 0);
    // The engines never waited for the reader, and stats still answers while it streams.
    assert_eq!(stats(&srv.socket)["engines"][0]["jobs"], rounds * 1000);
}

/// AER Uncorrectable Error Status (hw-spec §1.4) and its bits.
const AER_UNCOR_STATUS: u64 = 0x104;
const AER_UR: u32 = 1 << 20;
const AER_INTERNAL: u32 = 1 << 22;

fn inject(socket: &Path, words: &[&str]) {
    let mut all = vec!["inject"];
    all.extend_from_slice(words);
    let (ok, v) = ctl(socket, &all);
    assert!(ok, "{words:?}: {v}");
    assert!(v["ok"].is_string(), "{v}");
}

#[test]
fn inject_dma_error_fails_the_next_sys_descriptor_like_an_unsupported_request() {
    let srv = ServerProcess::spawn(&["--engines", "2"]);
    let mut r = Rig::new(srv.client(), 8 * MIB);
    r.enable(1);
    let data = SYS_IOVA + RING_AREA;
    r.sys_write(data, &[9u8; 4096]);
    inject(&srv.socket, &["dma-error", "engine=1"]);
    assert_eq!(stats(&srv.socket)["inject"]["dma_error_pending"][1], 1);
    // A VRAM-only descriptor does not use it up.
    r.submit(
        1,
        &[RawDescriptor::fill(vram(0), 4096, 5).with_flags(flags::IRQ)],
        Doorbell::Mmap,
    );
    assert_eq!(r.wait_vector(2, 5000), 1);
    r.submit(
        1,
        &[RawDescriptor::copy(sys(data), vram(0x4000), 4096)],
        Doorbell::Mmap,
    );
    assert_eq!(r.wait_vector(0, 5000), 1, "vector 0");
    assert_eq!(r.reg(1, offset::STATUS), 4, "ERROR");
    assert_eq!(r.reg(1, offset::ERROR_CODE), 5, "SYS_UNMAPPED");
    assert_eq!(r.reg64(1, offset::ERROR_ADDR_LO), data);
    assert_eq!(r.reg(1, offset::RING_HEAD), 1, "HEAD stays on it");
    assert_ne!(r.dev_reg(0xa0) & 2, 0, "ERR_CAUSE bit 1");
    assert_ne!(r.config32(AER_UNCOR_STATUS) & AER_UR, 0, "AER UR");
    assert_eq!(r.vram_read(0x4000, 4), vec![0; 4], "nothing moved");
    // Reset, and the same descriptor works: one error was armed.
    r.reset_engine(1);
    r.submit(
        1,
        &[RawDescriptor::copy(sys(data), vram(0x4000), 4096).with_flags(flags::IRQ)],
        Doorbell::Mmap,
    );
    assert_eq!(r.wait_vector(2, 5000), 1);
    assert_eq!(r.vram_read(0x4000, 4), vec![9; 4]);
    let v = stats(&srv.socket);
    assert_eq!(v["inject"]["dma_errors"], 1);
    assert_eq!(v["inject"]["dma_error_pending"][1], 0);
}

#[test]
fn inject_hang_stops_progress_until_the_engine_is_reset() {
    let srv = ServerProcess::spawn(&["--engines", "2"]);
    let mut r = Rig::new(srv.client(), 8 * MIB);
    r.enable(0);
    inject(&srv.socket, &["hang", "engine=0"]);
    r.submit(
        0,
        &[RawDescriptor::fill(vram(0), 64, 1).with_flags(flags::IRQ)],
        Doorbell::Register,
    );
    assert_eq!(r.wait_vector(1, 500), 0, "no completion");
    assert_eq!(r.reg(0, offset::RING_HEAD), 0, "no progress");
    assert_eq!(r.reg(0, offset::STATUS), 2, "RUNNING");
    assert_eq!(r.wait_vector(0, 10), 0, "and no error");
    let v = stats(&srv.socket);
    assert_eq!(v["inject"]["hang"], serde_json::json!([0]));
    assert_eq!(v["inject"]["hangs"], 1);
    // The engine reset is answered (the descriptor dropped) and ends the hang.
    let t = Instant::now();
    r.reset_engine(0);
    assert!(t.elapsed() < Duration::from_secs(2));
    r.submit(
        0,
        &[RawDescriptor::fill(vram(0), 64, 1).with_flags(flags::IRQ)],
        Doorbell::Register,
    );
    assert_eq!(r.wait_vector(1, 5000), 1);
    assert_eq!(r.vram_read(0, 4), vec![1, 0, 0, 0]);
    assert_eq!(stats(&srv.socket)["inject"]["hang"], serde_json::json!([]));
}

#[test]
fn inject_poison_fails_engine_reads_not_cpu_reads() {
    let srv = ServerProcess::spawn(&["--engines", "1"]);
    let mut r = Rig::new(srv.client(), 8 * MIB);
    r.enable(0);
    r.vram_write(0x10000, &[0x5a; 0x2000]);
    inject(&srv.socket, &["poison", "offset=0x10800", "length=0x100"]);
    let dst = SYS_IOVA + RING_AREA;
    // A copy that ends before the range works.
    r.submit(
        0,
        &[RawDescriptor::copy(vram(0x10000), sys(dst), 0x800).with_flags(flags::IRQ)],
        Doorbell::Mmap,
    );
    assert_eq!(r.wait_vector(1, 5000), 1);
    r.submit(
        0,
        &[RawDescriptor::copy(vram(0x10000), sys(dst), 0x1000)],
        Doorbell::Mmap,
    );
    assert_eq!(r.wait_vector(0, 5000), 1);
    assert_eq!(r.reg(0, offset::ERROR_CODE), 10, "POISONED");
    assert_eq!(r.reg64(0, offset::ERROR_ADDR_LO), 0x10800);
    assert_eq!(r.reg(0, offset::ERROR_INFO) & 3, 1, "VRAM");
    assert_ne!(r.config32(AER_UNCOR_STATUS) & AER_INTERNAL, 0);
    // The CPU still reads the bytes through the BAR.
    assert_eq!(r.vram_read(0x10800, 4), vec![0x5a; 4]);
    // Writes succeed and do not clear it.
    r.reset_engine(0);
    r.submit(
        0,
        &[RawDescriptor::fill(vram(0x10800), 0x100, 7).with_flags(flags::IRQ)],
        Doorbell::Mmap,
    );
    assert_eq!(r.wait_vector(1, 5000), 1);
    r.submit(
        0,
        &[RawDescriptor::copy(vram(0x108f0), sys(dst), 0x20)],
        Doorbell::Mmap,
    );
    assert_eq!(r.wait_vector(0, 5000), 1);
    assert_eq!(r.reg64(0, offset::ERROR_ADDR_LO), 0x108f0);
    // `clear` ends it.
    inject(&srv.socket, &["clear"]);
    r.reset_engine(0);
    r.submit(
        0,
        &[RawDescriptor::copy(vram(0x10800), sys(dst), 0x100).with_flags(flags::IRQ)],
        Doorbell::Mmap,
    );
    assert_eq!(r.wait_vector(1, 5000), 1);
    assert_eq!(r.sys_read(dst, 4), vec![7, 0, 0, 0]);
    let v = stats(&srv.socket);
    assert_eq!(v["inject"]["poison_hits"], 2);
    assert_eq!(v["inject"]["poison"], serde_json::json!([]));
}

#[test]
fn inject_msix_drop_loses_messages_not_completions() {
    let srv = ServerProcess::spawn(&["--engines", "2"]);
    let mut r = Rig::new(srv.client(), 8 * MIB);
    r.enable(1);
    inject(&srv.socket, &["msix-drop", "vector=2", "count=2"]);
    let irq_count = r.dev_reg(0x88);
    for k in 1..=2 {
        r.submit(
            1,
            &[RawDescriptor::default().with_flags(flags::IRQ)],
            Doorbell::Mmap,
        );
        assert!(r.wait_head(1, k, 5000));
        assert_eq!(r.wait_vector(2, 200), 0, "message {k} lost");
    }
    r.submit(
        1,
        &[RawDescriptor::default().with_flags(flags::IRQ)],
        Doorbell::Mmap,
    );
    assert_eq!(r.wait_vector(2, 5000), 1, "the third arrives");
    assert_eq!(
        r.dev_reg(0x88),
        irq_count + 1,
        "IRQ_COUNT counts what was sent"
    );
    let v = stats(&srv.socket);
    assert_eq!(v["engines"][1]["irqs"], 3, "IRQS counts before the loss");
    assert_eq!(v["inject"]["msix_dropped"], 2);
    assert_eq!(v["inject"]["msix_drop_pending"], serde_json::json!([]));
}

#[test]
fn inject_remove_makes_the_function_answer_all_ones() {
    let srv = ServerProcess::spawn(&["--engines", "2"]);
    let mut r = Rig::new(srv.client(), 8 * MIB);
    r.enable(0);
    assert_eq!(r.dev_reg(0), 0x5647_5055);
    inject(&srv.socket, &["remove"]);
    assert_eq!(r.dev_reg(0), 0xffff_ffff, "ID");
    assert_eq!(r.config32(0), 0xffff_ffff, "vendor/device");
    assert_eq!(r.reg(0, offset::STATUS), 0xffff_ffff);
    r.set_reg(0, offset::CONTROL, 0);
    r.set_config16(0x04, 0);
    assert_eq!(r.config32(0x04), 0xffff_ffff, "writes dropped");
    // Engines start nothing: a doorbell store through the mapped page goes unseen.
    r.submit(
        0,
        &[RawDescriptor::fill(vram(0), 64, 3).with_flags(flags::IRQ)],
        Doorbell::Mmap,
    );
    assert_eq!(r.wait_vector(1, 300), 0);
    assert_eq!(r.vram_read(0, 4), vec![0; 4]);
    // DEVICE_RESET does nothing; the control socket still answers; clear does not undo it.
    r.c.reset().unwrap();
    inject(&srv.socket, &["clear"]);
    assert_eq!(r.dev_reg(0), 0xffff_ffff);
    assert_eq!(stats(&srv.socket)["inject"]["removed"], true);
}
