//! QEMU: version and capability probing, accelerator choice, and the command line.
//!
//! The command line always backs guest RAM with a shared memfd (`memory-backend-memfd,share=on`),
//! so vfio-user DMA_MAP messages carry file descriptors. QEMU seals it against shrinking, so the
//! server mmaps it; `seal=off` (the runner's `--unsealed-ram`) makes the server reach guest RAM
//! with `pread`/`pwrite` instead (ARCHITECTURE.md §5), which the suites can then exercise. Two serial ports:
//! ttyS0 is the kernel console (QEMU's stdout, captured by the runner), ttyS1 is the results
//! channel (a UNIX socket the runner listens on), so kernel messages never interleave with KTAP.
//!
//! The KVM probe ([`kvm_usable`]) is the runner's one raw `ioctl`, and so `unsafe`: rustix's
//! `ioctl` is unsafe too, and kvm-ioctls would bring kvm-bindings for one argument-less call.

use std::fmt;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use crate::topology;

/// Oldest QEMU with the `vfio-user-pci` client device.
pub const MIN_VERSION: QemuVersion = QemuVersion {
    major: 10,
    minor: 1,
    micro: 0,
};

/// String QEMU prints when KVM cannot emulate an instruction (nested, PVM-style KVM).
pub const KVM_INTERNAL_ERROR: &str = "KVM internal error";

/// A QEMU version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct QemuVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Micro.
    pub micro: u32,
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// Parses `QEMU emulator version 11.1.3 (Debian ...)`.
pub fn parse_version(text: &str) -> Option<QemuVersion> {
    let rest = text.split("version ").nth(1)?;
    let word = rest.split_whitespace().next()?;
    let mut it = word.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>()
    });
    let major = it.next()?.ok()?;
    let minor = it.next().and_then(Result::ok).unwrap_or(0);
    let micro = it.next().and_then(Result::ok).unwrap_or(0);
    Some(QemuVersion {
        major,
        minor,
        micro,
    })
}

/// What `--version` says after `QEMU emulator version` on its first line, e.g. `11.1.3 (Debian
/// 1:11.1.3+ds-2~bpo13+1)`: the version and the package version, which tells builds of one
/// version apart (a rebuilt or patched QEMU carries its own, see scripts/build-qemu-hotplugfix).
pub fn banner(text: &str) -> Option<String> {
    let line = text.lines().next()?;
    let rest = line.split("version ").nth(1)?.trim();
    (!rest.is_empty()).then(|| rest.to_string())
}

/// Whether `-device help` output lists the vfio-user client.
pub fn lists_vfio_user(device_help: &str) -> bool {
    device_help.contains("name \"vfio-user-pci\"")
}

/// Accelerator actually used for one boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's binary translator.
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// The `--accel` choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM when /dev/kvm works (falling back to TCG if the guest dies under it), else TCG.
    #[default]
    Auto,
    /// KVM only; fail if it does not work.
    Kvm,
    /// TCG only.
    Tcg,
}

/// Checks that /dev/kvm can be opened and answers KVM_GET_API_VERSION.
pub fn kvm_usable() -> Result<(), String> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int; the fd is a valid
    // open /dev/kvm descriptor owned by `f` for the duration of the call.
    let v = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if v == 12 {
        Ok(())
    } else {
        Err(format!("/dev/kvm answered KVM_GET_API_VERSION with {v}"))
    }
}

/// Parses a memory size (`2G`, `2048M`, `2048`, in MiB when no suffix) into MiB.
pub fn parse_memory_mib(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'G' | 'g')) => (&s[..i], 1024),
        Some((i, 'M' | 'm')) => (&s[..i], 1),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad memory size {s:?} (use e.g. 2G or 2048M)"))?;
    let mib = n
        .checked_mul(mult)
        .ok_or_else(|| format!("memory size {s:?} too large"))?;
    if !(256..=1024 * 1024).contains(&mib) {
        return Err(format!("memory size {s:?} out of range (256M..1024G)"));
    }
    Ok(mib)
}

/// Everything that goes on one QEMU command line.
#[derive(Clone, Debug)]
pub struct QemuConfig {
    /// Accelerator.
    pub accel: Accel,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub smp: u32,
    /// Guest RAM memfd sealed against shrinking (QEMU's default): the server maps it.
    pub ram_sealed: bool,
    /// Kernel image as QEMU sees it.
    pub kernel: String,
    /// Initramfs as QEMU sees it.
    pub initrd: String,
    /// Kernel command line.
    pub append: String,
    /// Results channel socket (the runner listens) as QEMU sees it.
    pub results_socket: String,
    /// `-device` arguments from the topology (flag/value pairs).
    pub devices: Vec<String>,
    /// Extra raw arguments from the user.
    pub extra: Vec<String>,
}

/// The base kernel command line; the user's `--append` and the suite selection follow it.
pub const BASE_APPEND: &str = "console=ttyS0 panic=-1 panic_on_warn=1 oops=panic";

/// The CPU model under TCG: QEMU's `max` without the "fast string" features (ERMS, FSRM, FSRS).
/// With them the guest kernel clears and copies pages and user memory with `rep movsb` /
/// `rep stosb`, which TCG executes a byte per iteration; without them it uses `rep movsq` /
/// `rep stosq` or unrolled 8-byte moves. Measured with QEMU 11.1.3 on Debian's 7.3.4 kernel (2
/// vCPUs, 4 GiB, one boot of `--suite hmm` each): hmm-tests against test_hmm.ko 109.3 s with `max`,
/// 43.5 s without them (its benchmark_thp_migration 95.5 s and 35.6 s, against the test's own
/// 120 s limit); the whole suite 206 s and 100 s. Under KVM the host CPU is passed through.
pub const TCG_CPU: &str = "max,erms=off,fsrm=off,fsrs=off";

/// Builds the argument vector (without the program name).
pub fn args(c: &QemuConfig) -> Vec<String> {
    let (accel, cpu) = match c.accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg", TCG_CPU),
    };
    let machine = topology::machine_arg(Some(accel));
    let mut a: Vec<String> = [
        "-machine",
        &machine,
        "-cpu",
        cpu,
        "-smp",
        &c.smp.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Shared with `vugpu qemu-args` (vugpu_device::topology).
    a.extend(topology::memory_args(c.memory_mib, c.ram_sealed));
    a.extend(
        [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-chardev",
            &format!("socket,id=results,path={}", c.results_socket),
            "-serial",
            "chardev:results",
            "-kernel",
            &c.kernel,
            "-initrd",
            &c.initrd,
            "-append",
            &c.append,
            "-no-reboot",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a.extend(c.devices.iter().cloned());
    a.extend(c.extra.iter().cloned());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let v =
            parse_version("QEMU emulator version 11.1.3 (Debian 1:11.1.3+ds-1~bpo13+1)\nCopyright")
                .unwrap();
        assert_eq!(v.to_string(), "11.1.3");
        assert!(v >= MIN_VERSION);
        let old =
            parse_version("QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u12)").unwrap();
        assert!(old < MIN_VERSION);
        let rc = parse_version("QEMU emulator version 10.1.0-rc2").unwrap();
        assert!(rc >= MIN_VERSION);
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn banners() {
        assert_eq!(
            banner("QEMU emulator version 11.1.3 (Debian 2~bpo13+1 +hotplugfix)\nCopyright")
                .as_deref(),
            Some("11.1.3 (Debian 2~bpo13+1 +hotplugfix)")
        );
        assert_eq!(
            banner("QEMU emulator version 10.2.2\n").as_deref(),
            Some("10.2.2")
        );
        assert_eq!(banner("garbage"), None);
        assert_eq!(banner(""), None);
    }

    #[test]
    fn vfio_user_listing() {
        assert!(lists_vfio_user(
            "name \"vfio-pci\", bus PCI\nname \"vfio-user-pci\", bus PCI, desc \"VFIO over socket\"\n"
        ));
        assert!(!lists_vfio_user("name \"vfio-pci\", bus PCI\n"));
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_mib("2G"), Ok(2048));
        assert_eq!(parse_memory_mib("1536M"), Ok(1536));
        assert_eq!(parse_memory_mib("4096"), Ok(4096));
        assert!(parse_memory_mib("12").is_err());
        assert!(parse_memory_mib("lots").is_err());
        assert!(parse_memory_mib("99999999999999G").is_err());
    }

    fn cfg(accel: Accel) -> QemuConfig {
        QemuConfig {
            accel,
            memory_mib: 2048,
            smp: 2,
            ram_sealed: true,
            kernel: "/k".into(),
            initrd: "/run/vugpu-1/initramfs.cpio.gz".into(),
            append: "console=ttyS0 x".into(),
            results_socket: "/run/vugpu-1/results.sock".into(),
            devices: vec!["-device".into(), "pcie-root-port,id=rp0".into()],
            extra: vec!["-s".into()],
        }
    }

    fn value_of<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn tcg_command_line() {
        let a = args(&cfg(Accel::Tcg));
        assert_eq!(
            value_of(&a, "-machine"),
            ["q35,accel=tcg,memory-backend=mem"]
        );
        assert_eq!(value_of(&a, "-cpu"), ["max,erms=off,fsrm=off,fsrs=off"]);
        assert_eq!(value_of(&a, "-m"), ["2048M"]);
        assert_eq!(
            value_of(&a, "-object"),
            ["memory-backend-memfd,id=mem,size=2048M,share=on"]
        );
        assert_eq!(value_of(&a, "-serial"), ["stdio", "chardev:results"]);
        assert_eq!(
            value_of(&a, "-chardev"),
            ["socket,id=results,path=/run/vugpu-1/results.sock"]
        );
        assert!(a.contains(&"-no-reboot".to_string()));
        assert_eq!(value_of(&a, "-device"), ["pcie-root-port,id=rp0"]);
        assert_eq!(a.last().map(String::as_str), Some("-s"));
    }

    #[test]
    fn kvm_command_line() {
        let a = args(&cfg(Accel::Kvm));
        assert_eq!(
            value_of(&a, "-machine"),
            ["q35,accel=kvm,memory-backend=mem"]
        );
        assert_eq!(value_of(&a, "-cpu"), ["host"]);
    }

    #[test]
    fn unsealed_guest_ram() {
        let mut c = cfg(Accel::Tcg);
        c.ram_sealed = false;
        assert_eq!(
            value_of(&args(&c), "-object"),
            ["memory-backend-memfd,id=mem,size=2048M,share=on,seal=off"]
        );
    }
}
