//! Host-only mode: with `--kernel`, `--kernel-build-dir` and `--qemu` all given, everything comes
//! from the host and nothing needs root. No trixie root is created or touched, apt, unshare and
//! chroot never run.
//!
//! - QEMU: `--qemu` (>= 10.1 with vfio-user-pci, checked like the host's QEMU in root mode);
//! - vugpu.ko: the host's `make` and the kernel's compiler against `--kernel-build-dir`;
//! - the test programs: the host's `make` and `cc` (make's default `CC`; gcc on Debian),
//!   statically linked (libc.a from libc6-dev);
//! - busybox: a statically linked busybox on the host (PATH, /bin, /usr/bin: busybox-static).
//!
//! The cache is `$VUGPU_CACHE`, else `$XDG_CACHE_HOME/vugpu`, else `~/.cache/vugpu`; builds and
//! run directories live under it (`build/`, `run/`).

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cli::EnvArgs;
use crate::kernel;
use crate::process::{self, find_in_path};
use crate::provision::{self, Env, KernelChoice, ProvisionError, ProvisionOptions, QemuBinary};
use crate::provision::{secs, Toolchain};

/// The Debian package of a static busybox.
const BUSYBOX_PACKAGE: &str = "busybox-static";
/// Bound for `cc -print-file-name`.
const PROBE_LIMIT: Duration = Duration::from_secs(60);

/// Whether the command line selects host-only mode: `--kernel`, `--kernel-build-dir` and
/// `--qemu` all given.
pub fn selected(env: &EnvArgs) -> bool {
    env.kernel.is_some() && env.kernel_build_dir.is_some() && env.qemu.is_some()
}

/// The cache directory of host-only mode from `VUGPU_CACHE`, `XDG_CACHE_HOME` and `HOME` (empty
/// values count as unset; a relative `XDG_CACHE_HOME` is ignored, as the XDG spec says).
pub fn cache_dir(
    vugpu_cache: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf, String> {
    let set = |v: Option<OsString>| v.filter(|s| !s.is_empty()).map(PathBuf::from);
    if let Some(c) = set(vugpu_cache) {
        return Ok(c);
    }
    if let Some(x) = set(xdg_cache_home).filter(|p| p.is_absolute()) {
        return Ok(x.join("vugpu"));
    }
    match set(home) {
        Some(h) => Ok(h.join(".cache/vugpu")),
        None => {
            Err("neither VUGPU_CACHE, XDG_CACHE_HOME nor HOME is set: no cache directory".into())
        }
    }
}

/// Why an ELF image cannot be the initramfs' busybox (which has no shared libraries), if it
/// cannot: not an x86-64 ELF, or dynamically linked (it has a `PT_INTERP` program header).
pub fn static_elf_problem(b: &[u8]) -> Option<String> {
    const PT_INTERP: u32 = 3;
    const EM_X86_64: u16 = 62;
    let u16_at = |o: usize| {
        b.get(o..o + 2)
            .and_then(|s| s.try_into().ok())
            .map(u16::from_le_bytes)
    };
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if !b.starts_with(b"\x7fELF") {
        return Some("not an ELF file".into());
    }
    // ELFCLASS64, little-endian, EM_X86_64.
    if b.get(4) != Some(&2) || b.get(5) != Some(&1) || u16_at(18) != Some(EM_X86_64) {
        return Some("not an x86-64 ELF (the guest is x86-64)".into());
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return Some("truncated ELF header".into());
    };
    let truncated = || Some("truncated program headers".to_string());
    let Ok(phoff) = usize::try_from(phoff) else {
        return truncated();
    };
    for i in 0..usize::from(phnum) {
        let Some(p_type) = u32_at(phoff + i * usize::from(phentsize)) else {
            return truncated();
        };
        if p_type == PT_INTERP {
            return Some("dynamically linked (it has a program interpreter)".into());
        }
    }
    None
}

/// Busybox candidates on the host: `busybox` on PATH, then /bin/busybox and /usr/bin/busybox
/// (each file once).
fn busybox_candidates() -> Vec<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut out = Vec::new();
    for p in std::env::split_paths(&path)
        .map(|d| d.join("busybox"))
        .chain(["/bin/busybox", "/usr/bin/busybox"].map(PathBuf::from))
    {
        if !p.is_absolute() || !p.is_file() {
            continue;
        }
        let real = p.canonicalize().unwrap_or_else(|_| p.clone());
        if !seen.contains(&real) {
            seen.push(real);
            out.push(p);
        }
    }
    out
}

/// The first statically linked x86-64 busybox among `candidates`, or why there is none.
fn pick_busybox(candidates: &[PathBuf]) -> Result<PathBuf, String> {
    let mut rejected = Vec::new();
    for c in candidates {
        match fs::read(c) {
            Ok(b) => match static_elf_problem(&b) {
                None => return Ok(c.clone()),
                Some(why) => rejected.push(format!("{}: {why}", c.display())),
            },
            Err(e) => rejected.push(format!("{}: {e}", c.display())),
        }
    }
    let found = if rejected.is_empty() {
        "no busybox on PATH, /bin or /usr/bin".to_string()
    } else {
        rejected.join("; ")
    };
    Err(format!(
        "a statically linked busybox for the initramfs ({found}) (package {BUSYBOX_PACKAGE})"
    ))
}

/// Whether the C compiler `cc` finds a static C library (`libc.a`).
fn has_libc_a(cc: &Path) -> bool {
    let mut c = Command::new(cc);
    c.arg("-print-file-name=libc.a");
    process::output(c, "cc -print-file-name=libc.a", PROBE_LIMIT)
        .map(|out| {
            let p = PathBuf::from(out.trim());
            p.is_absolute() && p.is_file()
        })
        .unwrap_or(false)
}

/// What the host lacks for host-only mode, each with the Debian package that provides it, and
/// the busybox when there is one.
fn missing_host_tools() -> (Vec<(String, &'static str)>, Option<PathBuf>) {
    let mut missing = Vec::new();
    for (prog, pkg, what) in [
        ("gzip", "gzip", "compresses the initramfs"),
        ("make", "make", "builds vugpu.ko and the test programs"),
        // make's default CC (guest-tests/user's `CC ?= gcc` does not override it).
        ("cc", "gcc", "compiles the test programs"),
    ] {
        if find_in_path(prog).is_none() {
            missing.push((format!("{prog}, which {what} (package {pkg})"), pkg));
        }
    }
    if let Some(cc) = find_in_path("cc") {
        if !has_libc_a(&cc) {
            missing.push((
                "libc.a, the static C library the test programs link against (package libc6-dev)"
                    .into(),
                "libc6-dev",
            ));
        }
    }
    let busybox = match pick_busybox(&busybox_candidates()) {
        Ok(b) => Some(b),
        Err(why) => {
            missing.push((why, BUSYBOX_PACKAGE));
            None
        }
    };
    (missing, busybox)
}

/// The error for what the host lacks: each item, then one `apt-get install` line.
fn lacks_message(missing: &[(String, &str)]) -> String {
    let mut pkgs: Vec<&str> = Vec::new();
    for (_, p) in missing {
        if !pkgs.contains(p) {
            pkgs.push(p);
        }
    }
    format!(
        "the host lacks:\n  {}\ninstall them (as root: apt-get install {}), or drop one of the three \
         options to use the trixie root's tools (as root)",
        missing
            .iter()
            .map(|(what, _)| what.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
        pkgs.join(" ")
    )
}

/// Verifies the host for host-only mode and returns the environment (no root, no apt).
pub fn provision(opts: &ProvisionOptions) -> Result<Env, ProvisionError> {
    let start = Instant::now();
    let (
        KernelChoice::Custom {
            image,
            build_dir: Some(build_dir),
            config,
        },
        Some(qemu_path),
    ) = (&opts.kernel, &opts.qemu)
    else {
        return Err(ProvisionError::HostOnly(
            "needs --kernel, --kernel-build-dir and --qemu".into(),
        ));
    };
    fs::create_dir_all(&opts.cache).map_err(|source| ProvisionError::Io {
        what: format!("create {}", opts.cache.display()),
        source,
    })?;
    let _lock = provision::lock_cache(&opts.cache)?;
    let (missing, busybox) = missing_host_tools();
    let Some(busybox) = busybox.filter(|_| missing.is_empty()) else {
        return Err(ProvisionError::HostOnly(lacks_message(&missing)));
    };
    let (_, banner) = provision::probe_qemu(|| Command::new(qemu_path)).map_err(|why| {
        ProvisionError::Qemu(format!("{} cannot be used: {why}", qemu_path.display()))
    })?;
    let kernel = kernel::custom_kernel(image, Some(build_dir), config.as_deref())?;
    if !opts.extra_packages.is_empty() {
        say!(
            "note: host-only mode installs nothing; the host must have {} (guest-tests/*/apt-packages)",
            opts.extra_packages.join(" ")
        );
    }
    if opts.explicit {
        say!(
            "verified the host's tools in {} (host-only: no root)",
            secs(start.elapsed())
        );
    }
    Ok(Env {
        cache: opts.cache.clone(),
        toolchain: Toolchain::Host { busybox },
        qemu: QemuBinary::Host {
            path: qemu_path.clone(),
            banner,
        },
        kernel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    use crate::cli::Cli;

    fn os(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    #[test]
    fn mode_needs_all_three_options() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["vugpu-vm"];
            argv.extend_from_slice(args);
            argv.extend_from_slice(&["--", "true"]);
            let cli = Cli::try_parse_from(argv).unwrap();
            selected(&cli.run.env)
        };
        let all = ["--kernel", "/k", "--kernel-build-dir", "/d", "--qemu", "/q"];
        assert!(parse(&all));
        assert!(!parse(&all[..4]), "no --qemu");
        assert!(!parse(&["--kernel", "/k", "--qemu", "/q"]), "no build dir");
        assert!(!parse(&["--qemu", "/q"]));
        assert!(!parse(&[]));
    }

    #[test]
    fn cache_dir_order() {
        assert_eq!(
            cache_dir(os("/c"), os("/x"), os("/h")),
            Ok(PathBuf::from("/c"))
        );
        assert_eq!(
            cache_dir(None, os("/x"), os("/h")),
            Ok(PathBuf::from("/x/vugpu"))
        );
        assert_eq!(
            cache_dir(os(""), os(""), os("/h")),
            Ok(PathBuf::from("/h/.cache/vugpu"))
        );
        // A relative XDG_CACHE_HOME is invalid and ignored.
        assert_eq!(
            cache_dir(None, os("rel"), os("/h")),
            Ok(PathBuf::from("/h/.cache/vugpu"))
        );
        assert!(cache_dir(None, None, None).is_err());
    }

    /// A minimal ELF64 x86-64 image with program headers of the given types.
    fn elf(machine: u16, types: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56 * types.len()];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            b[64 + 56 * i..68 + 56 * i].copy_from_slice(&t.to_le_bytes());
        }
        b
    }

    #[test]
    fn static_elf_check() {
        // PT_LOAD, PT_DYNAMIC (a static-pie has one), PT_GNU_STACK: static.
        assert_eq!(static_elf_problem(&elf(62, &[1, 2, 0x6474_e551])), None);
        let dynamic = static_elf_problem(&elf(62, &[6, 3, 1])).unwrap();
        assert!(dynamic.contains("dynamically linked"), "{dynamic}");
        assert!(static_elf_problem(&elf(183, &[1]))
            .unwrap()
            .contains("x86-64"));
        assert!(static_elf_problem(b"#!/bin/sh\n")
            .unwrap()
            .contains("not an ELF"));
        let mut cut = elf(62, &[1, 3]);
        cut.truncate(64 + 56);
        assert!(static_elf_problem(&cut).unwrap().contains("truncated"));
    }

    #[test]
    fn lacks_message_lists_packages_once() {
        let m = lacks_message(&[
            ("make, which builds (package make)".into(), "make"),
            ("libc.a (package libc6-dev)".into(), "libc6-dev"),
            ("busybox (package busybox-static)".into(), "busybox-static"),
            ("again (package make)".into(), "make"),
        ]);
        assert!(
            m.contains("apt-get install make libc6-dev busybox-static)"),
            "{m}"
        );
        assert!(m.contains("\n  libc.a (package libc6-dev)\n"), "{m}");
    }

    #[test]
    fn busybox_choice_names_the_package() {
        let d = std::env::temp_dir().join(format!("vugpu-hostonly-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        let dynamic = d.join("dyn");
        let good = d.join("static");
        fs::write(&dynamic, elf(62, &[6, 3, 1])).unwrap();
        fs::write(&good, elf(62, &[1])).unwrap();
        assert_eq!(pick_busybox(&[dynamic.clone(), good.clone()]), Ok(good));
        let e = pick_busybox(std::slice::from_ref(&dynamic)).unwrap_err();
        assert!(
            e.contains("dynamically linked") && e.contains("busybox-static"),
            "{e}"
        );
        assert!(pick_busybox(&[]).unwrap_err().contains("busybox-static"));
        fs::remove_dir_all(&d).unwrap();
    }
}
