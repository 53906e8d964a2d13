//! The server survives clients that leave, misbehave or come two at a time, and refuses bad
//! command lines cleanly.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use common::*;
use vugpu_device::gpu::GpuConfig;
use vugpu_device::regs::spec::offset as reg;
use vugpu_protocol::backend::{DmaProt, IrqAction};
use vugpu_protocol::IrqSetArg;

#[test]
fn second_client_after_disconnect_finds_the_device_state() {
    let srv = ServerProcess::spawn(&[]);
    {
        let mut c = srv.client();
        wr32(&mut c, 0, u64::from(reg::SCRATCH1), 0x1111);
        c.region_write(2, 0x40, b"kept").unwrap();
    }
    let mut c = srv.client();
    assert_eq!(rd32(&mut c, 0, u64::from(reg::SCRATCH1)), 0x1111);
    let mut b = [0u8; 4];
    c.region_read(2, 0x40, &mut b).unwrap();
    assert_eq!(&b, b"kept");
    drop(c);
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("client 2 connected"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn garbage_then_a_good_client() {
    let srv = ServerProcess::spawn(&[]);
    // Pure garbage before VERSION.
    {
        let mut s = UnixStream::connect(&srv.socket).unwrap();
        s.write_all(&[0xffu8; 64]).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }
    // A negotiated client sending a header that claims a huge size, then a truncated body.
    {
        let mut c = srv.client();
        let mut hdr = Vec::new();
        hdr.extend_from_slice(&7u16.to_le_bytes()); // id
        hdr.extend_from_slice(&9u16.to_le_bytes()); // REGION_READ
        hdr.extend_from_slice(&u32::MAX.to_le_bytes()); // size
        hdr.extend_from_slice(&0u32.to_le_bytes()); // flags
        hdr.extend_from_slice(&0u32.to_le_bytes()); // error
        let _ = c.send_raw(&hdr, &[]);
        let _ = c.recv_raw();
    }
    // Half a message, then hang up.
    {
        let mut s = UnixStream::connect(&srv.socket).unwrap();
        s.write_all(&[1, 0, 1, 0, 0x40]).unwrap();
    }
    let mut c = srv.client();
    assert_eq!(rd32(&mut c, 0, 0), 0x5647_5055);
    drop(c);
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_second_concurrent_client_is_refused() {
    let srv = ServerProcess::spawn(&[]);
    let mut first = srv.client();
    let mut second = UnixStream::connect(&srv.socket).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        second.read(&mut buf).unwrap_or(0),
        0,
        "closed by the server"
    );
    assert_eq!(
        rd32(&mut first, 0, 0),
        0x5647_5055,
        "first client unaffected"
    );
    drop(first);
    let (_, log) = srv.stop();
    assert!(log.contains("refusing a second client"), "{log}");
}

#[test]
fn disconnect_drops_dma_maps_and_irq_fds() {
    let srv = InProcServer::start(GpuConfig::new(MIB));
    let ram = memfd(0x10_0000);
    let e = eventfd();
    {
        let mut c = srv.client();
        c.dma_map(
            0,
            0x10_0000,
            0,
            DmaProt {
                read: true,
                write: true,
            },
            Some(ram.as_fd()),
        )
        .unwrap();
        let o = owned(&e);
        c.set_irqs(
            2,
            0,
            1,
            IrqAction::Trigger,
            IrqSetArg::Eventfds(&[o.as_fd()]),
        )
        .unwrap();
        // Bus Master Enable (Command bit 2): MSI-X messages are memory writes.
        wr32(&mut c, 7, 0x04, 0x6);
        wr32(&mut c, 0, u64::from(reg::IRQ_TRIGGER), 0);
        assert_eq!(wait_event(&e, 2000), 1);
    }
    // A new client: the old DMA window and eventfd are gone.
    let mut c = srv.client();
    wr32(&mut c, 0, u64::from(reg::IRQ_TRIGGER), 0);
    assert_eq!(wait_event(&e, 50), 0, "old client's eventfd dropped");
    c.dma_map(
        0,
        0x10_0000,
        0,
        DmaProt {
            read: true,
            write: true,
        },
        Some(ram.as_fd()),
    )
    .unwrap();
    let server = srv.stop();
    assert_eq!(server.gpu().dma().len(), 1, "only the new client's window");
    assert_eq!(server.gpu().stats().disconnects, 1);
    assert_eq!(server.stats().clients, 2);
    assert!(server.gpu().msix().is_pending(0));
}

fn vugpu(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vugpu"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_rejects_bad_input_cleanly() {
    let (code, _, err) = vugpu(&["serve", "--socket", "/nonexistent-vugpu/dir/s.sock"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("directory /nonexistent-vugpu/dir does not exist"),
        "{err}"
    );

    let dir = temp_dir("cli");
    let existing = dir.join("taken.sock");
    std::fs::write(&existing, b"").unwrap();
    let (code, _, err) = vugpu(&["serve", "--socket", existing.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("exists; is another vugpu serving it? remove it first"),
        "{err}"
    );
    assert!(existing.exists(), "an existing file is never removed");

    let sock = dir.join("s.sock");
    let s = sock.to_str().unwrap();
    for bad in [
        vec!["--vram", "3M"],
        vec!["--vram", "512K"],
        vec!["--vram", "lots"],
        vec!["--msix-vectors", "0"],
        vec!["--msix-vectors", "4096"],
        vec!["--vendor-id", "0xfffff"],
        vec!["--inject", "msix-dead=x"],
        vec!["--inject", "nonsense"],
    ] {
        let mut args = vec!["serve", "--socket", s];
        args.extend(bad.iter());
        let (code, _, err) = vugpu(&args);
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert!(err.contains("error"), "{bad:?}: {err}");
        assert!(!err.contains("panicked"), "{bad:?}: {err}");
    }
    let (code, _, err) = vugpu(&[
        "serve",
        "--socket",
        s,
        "--msix-vectors",
        "4",
        "--inject",
        "msix-dead=4",
    ]);
    // Options that contradict each other are a configuration error: exit 2.
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("only 4 MSI-X vectors"), "{err}");
    assert!(!sock.exists(), "nothing left behind");

    let (code, _, err) = vugpu(&["probe", dir.join("nobody.sock").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("probe"), "{err}");

    let (code, out, _) = vugpu(&[
        "qemu-args",
        "--socket",
        "/run/vugpu/gpu0.sock",
        "--format",
        "lines",
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().last(),
        Some(
            r#"{"bus":"rp0","driver":"vfio-user-pci","id":"gpu0","socket":{"path":"/run/vugpu/gpu0.sock","type":"unix"}}"#
        )
    );
    assert!(
        out.contains("memory-backend-memfd,id=mem,size=2048M,share=on\n"),
        "{out}"
    );
    let (code, _, err) = vugpu(&[
        "qemu-args",
        "--socket",
        "/run/vugpu/gpu0.sock",
        "--memory",
        "1K",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`memory`"), "{err}");
    let (code, out, _) = vugpu(&["serve", "--help"]);
    assert_eq!(code, 0);
    for opt in [
        "--socket",
        "--vram",
        "--vram-file",
        "--msix-vectors",
        "--vendor-id",
        "--device-id",
        "--subsystem-vendor-id",
        "--subsystem-id",
        "--serial",
        "--inject",
        "--log-level",
    ] {
        assert!(out.contains(opt), "--help lacks {opt}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn probe_prints_the_device() {
    let srv = ServerProcess::spawn(&["--vram", "16G"]);
    let (code, out, err) = vugpu(&["probe", srv.socket.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for needle in [
        "9 regions, 5 irq indexes",
        "region 2: size 0x400000000 flags 0x7 [RWM] mmap fd yes",
        "irq 2: count 16 flags 0x9",
        "ID 1234:5647 rev 01 class 030200",
        "BAR0: memory 32-bit non-prefetchable at 0x0, size 0x1000000",
        "BAR2: memory 64-bit prefetchable at 0x0, size 0x400000000",
        "0x11 MSI-X",
        "Resizable BAR",
        "current 16384M",
        "Device Serial Number",
    ] {
        assert!(
            out.contains(needle),
            "probe output lacks {needle:?}:\n{out}"
        );
    }
}
