//! `vugpu serve --config FILE.toml` as a process: several GPUs with their own settings from one
//! file, the command line over the file, errors with exit code 2 that name the file line and key,
//! and the default socket directory (docs/configuration.md).
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{temp_dir, wait_for};
use vugpu_device::ctl::ctl_path;

fn spawn(dir: &Path, env: &[(&str, &Path)], args: &[&str]) -> Child {
    let log = File::create(dir.join("stderr.log")).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_vugpu"));
    c.arg("serve").args(args).stdout(Stdio::null()).stderr(log);
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

const TWO_GPUS: &str = r#"
socket-mode = "0660"
msix-vectors = 8
engines = 1

[[gpu]]
socket = "a.sock"
vram = "2M"
engines = 3

[[gpu]]
socket = "b.sock"
vram = "4M"
msix-vectors = 4
"#;

#[test]
fn two_gpus_from_a_file_each_with_its_settings() {
    let dir = temp_dir("cfg-two");
    let file = dir.join("vugpu.toml");
    std::fs::write(&file, TWO_GPUS).unwrap();
    let mut child = spawn(&dir, &[], &["--config", file.to_str().unwrap()]);
    // Relative sockets are relative to the file.
    let (a, b) = (dir.join("a.sock"), dir.join("b.sock"));
    wait_for(&a);
    wait_for(&b);
    let (sa, sb) = (common::ctl_stats(&a), common::ctl_stats(&b));
    assert_eq!(sa["device"]["name"], "gpu0");
    assert_eq!(sb["device"]["name"], "gpu1");
    assert_eq!(
        (&sa["device"]["engines"], &sa["device"]["vectors"]),
        (&3.into(), &8.into())
    );
    assert_eq!(
        (&sb["device"]["engines"], &sb["device"]["vectors"]),
        (&1.into(), &4.into())
    );
    assert_eq!(sa["p2p"].as_array().unwrap().len(), 2, "peers");
    for s in [&a, &b] {
        assert_eq!(mode(s), 0o660, "{}", s.display());
        assert_eq!(mode(&ctl_path(s)), 0o660, "{}", s.display());
    }
    assert!(common::terminate(&mut child).success());
    let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    assert!(
        log.contains(&format!(
            "gpu{{name=gpu0}}: serving 1234:5647 with 2 MiB VRAM, 8 MSI-X vectors, 3 DMA engines on {}",
            a.display()
        )),
        "{log}"
    );
    assert!(
        log.contains(
            "gpu{name=gpu1}: serving 1234:5647 with 4 MiB VRAM, 4 MSI-X vectors, 1 DMA engines"
        ),
        "{log}"
    );

    // The command line overrides the file for every GPU, and its sockets replace the file's.
    let (x, y) = (dir.join("x.sock"), dir.join("y.sock"));
    let mut child = spawn(
        &dir,
        &[],
        &[
            "--config",
            file.to_str().unwrap(),
            "--socket",
            x.to_str().unwrap(),
            "--socket",
            y.to_str().unwrap(),
            "--engines",
            "2",
            "--socket-mode",
            "0600",
        ],
    );
    wait_for(&x);
    wait_for(&y);
    for s in [&x, &y] {
        assert_eq!(common::ctl_stats(s)["device"]["engines"], 2);
        assert_eq!(mode(s), 0o600);
    }
    assert_eq!(
        common::ctl_stats(&y)["device"]["vectors"],
        4,
        "the table's other keys stay"
    );
    assert!(!a.exists());
    assert!(common::terminate(&mut child).success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_file_exits_2_naming_line_and_key_and_serves_nothing() {
    let dir = temp_dir("cfg-bad");
    let file = dir.join("bad.toml");
    for (text, want) in [
        (
            "[[gpu]]\nsocket = \"a.sock\"\nvrm = \"2M\"\n",
            ":3:1: `vrm`: unknown key",
        ),
        (
            "[[gpu]]\nsocket = \"a.sock\"\nengines = \"2\"\n",
            ":3:11: `engines`: expected an integer, found a string",
        ),
        (
            "[[gpu]]\nsocket = \"a.sock\"\n\nvram = \"3M\"\n",
            ":4:8: `vram`: invalid value '3M'",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = spawn(&dir, &[], &["--config", file.to_str().unwrap()])
            .wait_with_output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
        assert!(
            log.contains(&format!("{}{want}", file.display())),
            "{text}: {log}"
        );
        assert!(!dir.join("a.sock").exists(), "{text}");
    }
    let out = spawn(
        &dir,
        &[],
        &["--config", dir.join("missing.toml").to_str().unwrap()],
    )
    .wait_with_output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_a_socket_the_default_directory() {
    let dir = temp_dir("cfg-xdg");
    let run = dir.join("xdg");
    std::fs::create_dir(&run).unwrap();
    let mut child = spawn(
        &dir,
        &[("XDG_RUNTIME_DIR", &run)],
        &["--gpus", "2", "--vram", "1M"],
    );
    let sock = run.join("vugpu/gpu1.sock");
    wait_for(&sock);
    assert_eq!(common::ctl_stats(&sock)["device"]["name"], "gpu1");
    assert_eq!(mode(&run.join("vugpu")), 0o700, "created private");
    assert!(common::terminate(&mut child).success());
    let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    assert!(
        log.contains(&format!("on {}", run.join("vugpu/gpu0.sock").display())),
        "{log}"
    );
    // A directory others may write to is refused.
    std::fs::set_permissions(run.join("vugpu"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = spawn(&dir, &[("XDG_RUNTIME_DIR", &run)], &["--vram", "1M"])
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    assert!(log.contains("is not private"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
