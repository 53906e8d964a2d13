//! `vugpu stats` and the control socket (hw-spec §8.2), and the transaction trace (§8.3), with
//! the real binary.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::rig::{sys, vram, Doorbell, Rig, RING_AREA, SYS_IOVA};
use common::{ServerProcess, MIB};
use vugpu_device::engine::desc::{flags, RawDescriptor};

fn stats(socket: &std::path::Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_vugpu"))
        .args(["stats", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn stats_command_control_socket_and_trace() {
    let dir = common::temp_dir("trace");
    let trace = dir.join("engines.trace");
    let srv = ServerProcess::spawn(&["--engines", "2", "--trace", trace.to_str().unwrap()]);
    let ctl = {
        let mut p = srv.socket.as_os_str().to_owned();
        p.push(".ctl");
        std::path::PathBuf::from(p)
    };
    assert!(ctl.exists(), "PATH.ctl is created with the server socket");
    let mut r = Rig::new(srv.client(), 8 * MIB);
    r.enable(1);
    let data = SYS_IOVA + RING_AREA;
    r.sys_write(data, &[7u8; 4096]);
    r.submit(
        1,
        &[
            RawDescriptor::copy(sys(data), vram(0), 4096).with_flags(flags::NO_SNOOP),
            RawDescriptor::copy(vram(0), sys(data + 8192), 4096)
                .with_flags(flags::IRQ | flags::RELAXED_ORDERING),
        ],
        Doorbell::Mmap,
    );
    assert_eq!(r.wait_vector(2, 5000), 1);
    // Engine 0 fails on an unmapped address.
    r.enable(0);
    r.submit(
        0,
        &[RawDescriptor::copy(sys(0x10), vram(0), 8)],
        Doorbell::Mmap,
    );
    assert_eq!(r.wait_vector(0, 5000), 1);

    let v = stats(&srv.socket);
    let engines = v["engines"].as_array().unwrap();
    assert_eq!(engines.len(), 2);
    assert_eq!(v["device"]["engines"], 2);
    assert_eq!(v["device"]["vectors"], 16);
    assert_eq!(v["device"]["bus_master"], true, "the rig set Command bit 2");
    let e1 = &engines[1];
    assert_eq!(e1["index"], 1);
    assert_eq!(e1["state"], "IDLE");
    assert_eq!(e1["head"], 2);
    assert_eq!(e1["tail"], 2);
    assert_eq!(e1["jobs"], 2);
    assert_eq!(e1["bytes"]["sys_to_vram"], 4096);
    assert_eq!(e1["bytes"]["vram_to_sys"], 4096);
    assert_eq!(e1["no_snoop"]["requested"], 1);
    assert_eq!(e1["no_snoop"]["used"], 1);
    assert_eq!(e1["no_snoop"]["bytes"], 4096);
    assert_eq!(e1["relaxed_ordering"]["used"], 1);
    assert_eq!(e1["irqs"], 1);
    assert!(e1["error"].is_null());
    let e0 = &engines[0];
    assert_eq!(e0["state"], "ERROR");
    assert_eq!(e0["errors"], 1);
    assert_eq!(e0["error"]["code"], 5);
    assert_eq!(e0["error"]["name"], "SYS_UNMAPPED");
    assert_eq!(e0["error"]["addr"], 0x10);

    // Robustness: unknown requests, oversized requests, a silent client.
    let ask = |bytes: &[u8]| {
        let mut s = UnixStream::connect(&ctl).unwrap();
        s.write_all(bytes).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(ask(b"bogus\n").contains("unknown request"));
    assert!(ask(&[b'x'; 4000]).contains("too long"));
    assert!(ask(b"\xff\xfe\n").contains("not UTF-8"));
    let silent = UnixStream::connect(&ctl).unwrap();
    let t = Instant::now();
    let v = stats(&srv.socket);
    assert_eq!(v["engines"][1]["jobs"], 2);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "a silent client is timed out"
    );
    drop(silent);

    // Bus Master Enable cleared: reported, and why engine 1 now sits RUNNING with work pending.
    r.set_bus_master(false);
    r.submit(
        1,
        &[RawDescriptor::fill(vram(0x1000), 64, 1)],
        Doorbell::Mmap,
    );
    let v = stats(&srv.socket);
    assert_eq!(v["device"]["bus_master"], false);
    assert_eq!(v["engines"][1]["state"], "RUNNING");
    assert_eq!(v["engines"][1]["head"], 2);
    r.set_bus_master(true);
    assert!(r.wait_head(1, 3, 5000));

    // The trace: fetches, reads and writes with attributes (§8.3).
    let text = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines
        .iter()
        .any(|l| l.contains("eng=1 slot=0 op=FETCH dir=read target=sys")));
    assert!(lines.iter().any(|l| l.contains(&format!(
        "eng=1 slot=0 op=COPY dir=read target=sys addr={data:#x} size=4096 req=NS used=NS result=ok"
    ))));
    assert!(lines.iter().any(|l| l.contains(
        "eng=1 slot=0 op=COPY dir=write target=vram addr=0x0 size=4096 req=NS used=- result=ok"
    )));
    assert!(lines
        .iter()
        .any(|l| l.contains("eng=1 slot=1 op=COPY dir=write target=sys")
            && l.contains("req=RO used=RO")));
    assert!(lines.iter().any(|l| l.contains(
        "eng=0 slot=0 op=COPY dir=read target=sys addr=0x10 size=8 req=- used=- result=fault"
    )));
    for l in &lines {
        let ns = l.split(' ').next().unwrap();
        assert!(ns.parse::<u64>().is_ok(), "{l}");
    }
    drop(r);
    let (status, _log) = srv.stop();
    assert!(status.success());
    assert!(!ctl.exists(), "PATH.ctl is removed on exit");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_refuses_too_few_vectors_for_the_engines() {
    let dir = common::temp_dir("vec");
    let out = Command::new(env!("CARGO_BIN_EXE_vugpu"))
        .args(["serve", "--msix-vectors", "3", "--socket"])
        .arg(dir.join("s.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a configuration error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--msix-vectors >= 5"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
