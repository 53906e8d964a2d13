//! `vugpu serve` with several GPUs in one process (hw-spec §6.9, README): each socket serves its
//! own GPU, named in the log and the control socket, and the GPUs are peers of each other.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::rig::{pattern, sys, vram, Doorbell, Rig};
use common::{connect, temp_dir, wait_for, MIB};
use vugpu_device::ctl::ctl_path;
use vugpu_device::engine::desc::{flags, RawDescriptor};

const BAR1_BUS: u64 = 0x80_0000_0000;

fn spawn(dir: &Path, args: &[&str]) -> Child {
    let log = File::create(dir.join("stderr.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_vugpu"))
        .arg("serve")
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[test]
fn two_gpus_on_repeated_sockets_are_peers() {
    let dir = temp_dir("multi");
    let (s0, s1) = (dir.join("a.sock"), dir.join("b.sock"));
    let mut child = spawn(
        &dir,
        &[
            "--socket",
            s0.to_str().unwrap(),
            "--socket",
            s1.to_str().unwrap(),
            "--vram",
            "16M",
            "--engines",
            "1",
        ],
    );
    wait_for(&s0);
    wait_for(&s1);
    let mut r0 = Rig::new(connect(&s0), 4 * MIB);
    let mut r1 = Rig::new(connect(&s1), 4 * MIB);
    r1.c.region_write(7, 0x18, &(BAR1_BUS as u32).to_le_bytes())
        .unwrap();
    r1.c.region_write(7, 0x1c, &((BAR1_BUS >> 32) as u32).to_le_bytes())
        .unwrap();
    r0.enable(0);
    let a = pattern(21, 256 << 10);
    r0.vram_write(0, &a);
    r0.submit(
        0,
        &[RawDescriptor::copy(vram(0), sys(BAR1_BUS + MIB), 256 << 10).with_flags(flags::IRQ)],
        Doorbell::Mmap,
    );
    assert_eq!(r0.wait_vector(1, 10_000), 1);
    assert!(
        r1.vram_read(MIB, 256 << 10) == a,
        "gpu1 VRAM has gpu0's bytes"
    );
    let (v0, v1) = (common::ctl_stats(&s0), common::ctl_stats(&s1));
    assert_eq!(v0["device"]["name"], "gpu0");
    assert_eq!(v1["device"]["name"], "gpu1");
    assert_eq!(v0["p2p"][1]["peer"], "gpu1");
    assert_eq!(v0["p2p"][1]["written"], 256 << 10);
    assert_eq!(v1["p2p"][0]["peer_written"], 256 << 10);
    drop((r0, r1));
    // The server sees the hang-ups only once every copy of the client fds is closed: a test
    // running concurrently may fork and hold copies until it execs. Wait for both before
    // SIGTERM, which would otherwise stop the GPUs with their clients still attached.
    let log_path = dir.join("stderr.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&log_path)
        .unwrap()
        .matches(": client 1 disconnected")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the clients' hang-ups were never logged"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = common::terminate(&mut child);
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    for want in [
        "[Info] gpu{name=gpu0}: serving",
        "[Info] gpu{name=gpu1}: serving",
        "[Info] 2 GPUs in one fabric: gpu0, gpu1",
        "[Info] gpu{name=gpu1}:client{id=1}: client 1 connected",
        "[Info] gpu{name=gpu0}:client{id=1}: client 1 disconnected",
        "[Info] gpu{name=gpu0}: stopped after 1 clients",
    ] {
        assert!(log.contains(want), "{want:?} not in:\n{log}");
    }
    assert!(!s0.exists() && !s1.exists(), "sockets removed");
    assert!(!ctl_path(&s1).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn socket_dir_serves_n_gpus_and_a_bad_start_serves_none() {
    let dir = temp_dir("multi-dir");
    let mut child = spawn(
        &dir,
        &[
            "--socket-dir",
            dir.to_str().unwrap(),
            "--gpus",
            "3",
            "--vram",
            "1M",
            "--engines",
            "0",
        ],
    );
    for i in 0..3 {
        let s = dir.join(format!("gpu{i}.sock"));
        wait_for(&s);
        assert_eq!(common::ctl_stats(&s)["device"]["name"], format!("gpu{i}"));
        assert_eq!(common::ctl_stats(&s)["p2p"].as_array().unwrap().len(), 3);
    }
    assert!(common::terminate(&mut child).success());
    // A second server on the same directory must refuse before serving anything.
    std::fs::write(dir.join("gpu1.sock"), b"").unwrap();
    let child = spawn(
        &dir,
        &["--socket-dir", dir.to_str().unwrap(), "--gpus", "2"],
    );
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(!dir.join("gpu0.sock").exists(), "nothing left behind");
    let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    assert!(log.contains("gpu1.sock exists"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
