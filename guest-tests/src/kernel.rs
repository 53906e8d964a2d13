//! Guest kernels: `.config` parsing, the options vugpu's tests need, release ordering, the
//! compiler a kernel was built with, and the user's own kernel (`--kernel`).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::process::find_in_path;

/// Options the tests exercise (the reason vugpu exists), each with why it is needed. A suite that
/// needs one declares it (`# vugpu-vm: kernel-config ...`); a kernel without them still runs the
/// suites that do not (e.g. Debian's 6.12, which lacks DEVICE_PRIVATE and PCI_P2PDMA, runs smoke
/// and dma).
pub const FEATURE_OPTIONS: &[(&str, &str)] = &[
    ("ZONE_DEVICE", "memremap_pages() of VRAM"),
    ("DEVICE_PRIVATE", "device-private memory and migrate_vma"),
    ("HMM_MIRROR", "hmm_range_fault() mirroring"),
    ("PCI_P2PDMA", "peer-to-peer DMA between BARs"),
];

/// Options every result reports (KTAP header, summary, JUnit properties), with the suite's own.
pub const REPORTED_OPTIONS: &[&str] = &[
    "ZONE_DEVICE",
    "DEVICE_PRIVATE",
    "HMM_MIRROR",
    "PCI_P2PDMA",
    "TEST_HMM",
    "GUP_TEST",
    "DEBUG_VM",
    "PCIEAER",
];

/// Options the runner itself needs to boot the guest and load the module.
pub const BOOT_OPTIONS: &[(&str, &str)] = &[
    ("BLK_DEV_INITRD", "initramfs support"),
    ("RD_GZIP", "the initramfs is gzip-compressed"),
    ("DEVTMPFS", "/init mounts devtmpfs"),
    ("SERIAL_8250_CONSOLE", "the console is ttyS0"),
    ("MODULES", "the suites insmod vugpu.ko"),
    ("PCI_MSI", "the GPU interrupts through MSI-X only"),
    ("BINFMT_ELF", "static ELF test programs"),
];

/// How the out-of-tree module is built for this kernel.
#[derive(Clone, Debug)]
pub enum ModuleBuild {
    /// Inside the root against Debian's headers.
    InRoot {
        /// KDIR as seen inside the root.
        kdir: String,
        /// The compiler command the kernel was built with.
        cc: Option<String>,
    },
    /// On the host against the user's build tree.
    Host {
        /// KDIR.
        kdir: PathBuf,
        /// The compiler command the kernel was built with.
        cc: Option<String>,
    },
    /// Not possible, with the reason.
    Unavailable(String),
}

/// The guest kernel.
#[derive(Clone, Debug)]
pub struct GuestKernel {
    /// Release string (`uname -r`).
    pub release: String,
    /// Image on the host.
    pub image: PathBuf,
    /// Config file on the host.
    pub config_path: PathBuf,
    /// Module build.
    pub modules: ModuleBuild,
    /// Host path of the kernel's own module tree (`lib/modules/RELEASE`, with modules.dep), for
    /// `--modules`; None when unknown (a user's `--kernel`).
    pub module_tree: Option<PathBuf>,
    /// Extra initramfs entries (archive path, content): `--modules` and their load order.
    pub initramfs_extra: Vec<(String, Vec<u8>)>,
}

/// Errors about a guest kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The config file could not be read.
    #[error("cannot read kernel config {path}: {source}")]
    ReadConfig {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The user's kernel (or its build tree) cannot be used.
    #[error("kernel: {0}")]
    Unusable(String),
    /// Required options are not built in.
    #[error("kernel {kernel} cannot run the vugpu tests; its config ({config}) lacks:\n{}\nBuild a kernel with these set to y (see guest-tests/README.md, \"Your own kernel\").",
        missing.iter().map(|(o, why, have)| format!("  CONFIG_{o}=y  ({why}; config has {have})")).collect::<Vec<_>>().join("\n"))]
    MissingOptions {
        /// Kernel image or release.
        kernel: String,
        /// Config file checked.
        config: PathBuf,
        /// (option, why, what the config has).
        missing: Vec<(String, String, String)>,
    },
}

/// A parsed kernel `.config`.
#[derive(Clone, Debug, Default)]
pub struct KernelConfig {
    values: BTreeMap<String, String>,
}

impl KernelConfig {
    /// Parses `CONFIG_X=value` lines (and `# CONFIG_X is not set`, recorded as `n`).
    pub fn parse(text: &str) -> Self {
        let mut values = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("# CONFIG_") {
                if let Some(name) = rest.strip_suffix(" is not set") {
                    values.insert(name.to_string(), "n".to_string());
                }
            } else if let Some(rest) = line.strip_prefix("CONFIG_") {
                if let Some((name, value)) = rest.split_once('=') {
                    values.insert(name.to_string(), value.to_string());
                }
            }
        }
        KernelConfig { values }
    }

    /// Reads and parses a config file.
    pub fn read(path: &Path) -> Result<Self, KernelError> {
        std::fs::read_to_string(path)
            .map(|t| Self::parse(&t))
            .map_err(|source| KernelError::ReadConfig {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Value of `CONFIG_<name>` (without quotes handling), if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Options from `required` that are not `y`, with what the config has instead.
    pub fn missing(&self, required: &[(&str, &str)]) -> Vec<(String, String, String)> {
        required
            .iter()
            .filter(|(name, _)| self.get(name) != Some("y"))
            .map(|(name, why)| {
                (
                    (*name).to_string(),
                    (*why).to_string(),
                    match self.get(name) {
                        None | Some("n") => "it unset".to_string(),
                        Some(v) => format!("={v}"),
                    },
                )
            })
            .collect()
    }

    /// `NAME=value` for each option (`NAME=n` when unset), space-separated.
    pub fn summary(&self, options: &[String]) -> String {
        options
            .iter()
            .map(|o| format!("{o}={}", self.get(o).unwrap_or("n")))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Checks [`BOOT_OPTIONS`] (what every run needs); suites check their own needs.
    pub fn check(&self, kernel: &str, config: &Path) -> Result<(), KernelError> {
        let missing = self.missing(BOOT_OPTIONS);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(KernelError::MissingOptions {
                kernel: kernel.to_string(),
                config: config.to_path_buf(),
                missing,
            })
        }
    }

    /// The C compiler command the kernel was built with (first word of `CONFIG_CC_VERSION_TEXT`,
    /// e.g. `x86_64-linux-gnu-gcc-14`), if it was gcc.
    pub fn gcc_command(&self) -> Option<String> {
        if self.get("CC_IS_GCC") != Some("y") && self.get("CC_IS_GCC").is_some() {
            return None;
        }
        let text = self.get("CC_VERSION_TEXT")?.trim_matches('"');
        let cmd = text.split_whitespace().next()?;
        cmd.contains("gcc").then(|| cmd.to_string())
    }
}

/// Debian package providing a gcc command such as `x86_64-linux-gnu-gcc-14` (`gcc-14`).
pub fn gcc_package(command: &str) -> Option<String> {
    let idx = command.find("gcc")?;
    let pkg = &command[idx..];
    (pkg.len() > 4 && pkg.as_bytes()[3] == b'-').then(|| pkg.to_string())
}

/// Orders kernel releases such as `7.2.12+deb13-amd64` by dpkg's version rules (the
/// `debversion` crate: epoch, then upstream part, then the part after the last `-`; digit runs
/// compare as numbers, letters before other characters, `~` before anything, even the end). A
/// release that cannot be a version string (a space, a `/`) sorts before every version, by plain
/// byte order.
pub fn compare_releases(a: &str, b: &str) -> Ordering {
    use debversion::Version;
    match (Version::parse_lenient(a), Version::parse_lenient(b)) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => Ordering::Greater,
        (Err(_), Ok(_)) => Ordering::Less,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// The user's kernel: find its config and release, check it, and decide how to build modules.
pub fn custom_kernel(
    image: &Path,
    build_dir: Option<&Path>,
    config: Option<&Path>,
) -> Result<GuestKernel, KernelError> {
    let image = image
        .canonicalize()
        .map_err(|e| KernelError::Unusable(format!("{}: {e}", image.display())))?;
    if !image.is_file() {
        return Err(KernelError::Unusable(format!(
            "{} is not a file",
            image.display()
        )));
    }
    // /boot/vmlinuz-VER + /boot/config-VER, or /usr/lib/modules/VER/{vmlinuz,config}.
    let sibling = image.file_name().and_then(|n| {
        let n = n.to_string_lossy();
        match n.strip_prefix("vmlinuz-") {
            Some(suffix) => Some(image.with_file_name(format!("config-{suffix}"))),
            None => (n == "vmlinuz").then(|| image.with_file_name("config")),
        }
    });
    let config_path = config
        .map(Path::to_path_buf)
        .or_else(|| build_dir.map(|d| d.join(".config")).filter(|p| p.is_file()))
        .or_else(|| sibling.filter(|p| p.is_file()))
        .ok_or_else(|| {
            KernelError::Unusable(format!(
                "cannot find the config of {}: pass --kernel-config FILE or --kernel-build-dir DIR",
                image.display()
            ))
        })?;
    let release = build_dir
        .and_then(|d| fs::read_to_string(d.join("include/config/kernel.release")).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| fs::read(&image).ok().and_then(|b| bzimage_release(&b)))
        .unwrap_or_else(|| "custom".to_string());
    let cfg = KernelConfig::read(&config_path)?;
    cfg.check(&release, &config_path)?;
    let modules = match build_dir {
        None => ModuleBuild::Unavailable(
            "no --kernel-build-dir given, so vugpu.ko cannot be built for this kernel".into(),
        ),
        Some(d) => {
            let prepared = d.join("scripts/mod/modpost").is_file()
                && d.join("include/generated/autoconf.h").is_file();
            if !prepared {
                return Err(KernelError::Unusable(format!(
                    "{} is not a prepared kernel build tree (no scripts/mod/modpost or \
                     include/generated/autoconf.h); run `make modules_prepare` (or build the kernel) there",
                    d.display()
                )));
            }
            let cc = cfg.gcc_command();
            if find_in_path("make").is_none() {
                return Err(KernelError::Unusable(
                    "building modules for --kernel-build-dir needs `make` on the host".into(),
                ));
            }
            if let Some(cc) = &cc {
                if find_in_path(cc).is_none() {
                    return Err(KernelError::Unusable(format!(
                        "the kernel was built with {cc}, which is not on the host's PATH"
                    )));
                }
            }
            ModuleBuild::Host {
                kdir: d
                    .canonicalize()
                    .map_err(|e| KernelError::Unusable(format!("{}: {e}", d.display())))?,
                cc,
            }
        }
    };
    Ok(GuestKernel {
        release,
        image,
        config_path,
        modules,
        module_tree: None,
        initramfs_extra: Vec::new(),
    })
}

/// The release string stored in a bzImage's setup header (`kernel_version` field).
pub fn bzimage_release(image: &[u8]) -> Option<String> {
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let off = u16::from_le_bytes([*image.get(0x20e)?, *image.get(0x20f)?]) as usize;
    let start = off.checked_add(0x200)?;
    let tail = image.get(start..)?;
    let end = tail.iter().take(256).position(|&b| b == 0 || b == b' ')?;
    let s = std::str::from_utf8(&tail[..end]).ok()?;
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "\
CONFIG_CC_VERSION_TEXT=\"x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0\"
CONFIG_CC_IS_GCC=y
CONFIG_ZONE_DEVICE=y
CONFIG_DEVICE_PRIVATE=y
CONFIG_HMM_MIRROR=y
CONFIG_PCI_P2PDMA=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_RD_GZIP=y
CONFIG_DEVTMPFS=y
# CONFIG_DEVTMPFS_MOUNT is not set
CONFIG_SERIAL_8250_CONSOLE=y
CONFIG_MODULES=y
CONFIG_PCI_MSI=y
CONFIG_BINFMT_ELF=y
";

    #[test]
    fn debian_config_passes() {
        let c = KernelConfig::parse(DEBIAN);
        assert!(c.check("7.2", Path::new("config")).is_ok());
        assert_eq!(c.get("DEVTMPFS_MOUNT"), Some("n"));
        assert_eq!(c.gcc_command().as_deref(), Some("x86_64-linux-gnu-gcc-14"));
    }

    #[test]
    fn lts_without_device_private_boots_but_lacks_features() {
        let text = DEBIAN
            .replace(
                "CONFIG_DEVICE_PRIVATE=y\n",
                "# CONFIG_DEVICE_PRIVATE is not set\n",
            )
            .replace("CONFIG_PCI_P2PDMA=y\n", "");
        let c = KernelConfig::parse(&text);
        assert!(c.check("6.12.107", Path::new("/boot/config")).is_ok());
        let m: Vec<String> = c
            .missing(FEATURE_OPTIONS)
            .into_iter()
            .map(|m| m.0)
            .collect();
        assert_eq!(m, vec!["DEVICE_PRIVATE", "PCI_P2PDMA"]);
        assert_eq!(
            c.summary(&[
                "DEVICE_PRIVATE".into(),
                "HMM_MIRROR".into(),
                "GUP_TEST".into()
            ]),
            "DEVICE_PRIVATE=n HMM_MIRROR=y GUP_TEST=n"
        );
        let no_msi = KernelConfig::parse(&DEBIAN.replace("CONFIG_PCI_MSI=y\n", ""));
        let err = no_msi
            .check("6.12.107", Path::new("/boot/config"))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("CONFIG_PCI_MSI=y"), "{msg}");
        assert!(msg.contains("6.12.107"), "{msg}");
    }

    #[test]
    fn module_is_not_builtin() {
        let c = KernelConfig::parse(&DEBIAN.replace("CONFIG_HMM_MIRROR=y", "CONFIG_HMM_MIRROR=m"));
        let m = c.missing(FEATURE_OPTIONS);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].2, "=m");
    }

    #[test]
    fn clang_kernel_has_no_gcc() {
        let c = KernelConfig::parse(
            "CONFIG_CC_IS_GCC=n\nCONFIG_CC_IS_CLANG=y\nCONFIG_CC_VERSION_TEXT=\"clang 19\"\n",
        );
        assert_eq!(c.gcc_command(), None);
    }

    #[test]
    fn gcc_packages() {
        assert_eq!(
            gcc_package("x86_64-linux-gnu-gcc-14").as_deref(),
            Some("gcc-14")
        );
        assert_eq!(gcc_package("gcc-12").as_deref(), Some("gcc-12"));
        assert_eq!(gcc_package("gcc"), None);
    }

    #[test]
    fn release_order() {
        assert_eq!(
            compare_releases("7.2.12+deb13-amd64", "7.2.9+deb13-amd64"),
            Ordering::Greater
        );
        assert_eq!(compare_releases("6.12.107", "7.2.1"), Ordering::Less);
        assert_eq!(compare_releases("7.2.12", "7.2.12"), Ordering::Equal);
        assert_eq!(compare_releases("7.2", "7.2.1"), Ordering::Less);
        let mut v = vec!["7.10.1", "7.2.13", "7.2.9"];
        v.sort_by(|a, b| compare_releases(a, b));
        assert_eq!(v, vec!["7.2.9", "7.2.13", "7.10.1"]);
    }

    /// dpkg's documented ordering (deb-version(7), Debian Policy 5.6.12) and the kernel
    /// releases the runner sorts.
    const DPKG_ORDERED: &[&str] = &[
        "0",
        "0.9",
        "1.0~~",
        "1.0~~a",
        "1.0~",
        "1.0~rc1",
        "1.0",
        "1.0-1",
        "1.0-1+b1",
        "1.0-2",
        "1.0a",
        "1.0a+",
        "1.0a.",
        "1.0.1",
        "1.00.2",
        "1.10",
        "6.12.118+deb13-amd64",
        "7.2.9+deb13-amd64",
        "7.2.12+deb13-amd64",
        "7.3.0~rc7-amd64",
        "7.3.4-1~bpo13+1",
        "7.3.4-1",
        "7.3.4+deb13-amd64",
        "7.3.4+deb13-cloud-amd64",
        "1:0.1",
        "1:1.0~rc1",
        "2:0",
    ];

    #[test]
    fn release_order_follows_dpkg_rules() {
        for (i, a) in DPKG_ORDERED.iter().enumerate() {
            for (j, b) in DPKG_ORDERED.iter().enumerate() {
                assert_eq!(compare_releases(a, b), i.cmp(&j), "{a} vs {b}");
            }
        }
        // Letters alone still compare as dpkg does; a string no version can be (a space, a `/`)
        // sorts before every version, among such strings by byte order.
        assert_eq!(compare_releases("custom", "0"), Ordering::Greater);
        assert_eq!(compare_releases("my kernel", "0"), Ordering::Less);
        assert_eq!(compare_releases("0", "a/b"), Ordering::Greater);
        assert_eq!(compare_releases("b c", "a c"), Ordering::Greater);
    }

    /// The same pairs through `dpkg --compare-versions` itself (the runner needs a Debian host:
    /// it provisions with debootstrap, so dpkg is there).
    #[test]
    fn release_order_agrees_with_dpkg() {
        let dpkg = find_in_path("dpkg").expect("dpkg on the host (the runner needs a Debian host)");
        for w in DPKG_ORDERED.windows(2) {
            for (a, op, b) in [(w[0], "lt", w[1]), (w[1], "gt", w[0]), (w[0], "eq", w[0])] {
                let ok = std::process::Command::new(&dpkg)
                    .args(["--compare-versions", a, op, b])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "dpkg --compare-versions {a} {op} {b} is false");
            }
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vugpu-kernel-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn bzimage_release_from_header() {
        let mut img = vec![0u8; 0x1000];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        let s = b"7.2.12+deb13-amd64 (debian-kernel@lists.debian.org) #1";
        img[0x500..0x500 + s.len()].copy_from_slice(s);
        assert_eq!(bzimage_release(&img).as_deref(), Some("7.2.12+deb13-amd64"));
        assert_eq!(bzimage_release(&img[..0x300]), None);
        img[0x202] = b'X';
        assert_eq!(bzimage_release(&img), None);
    }

    #[test]
    fn custom_kernel_needs_a_config() {
        let d = tmp("ck");
        let img = d.join("bzImage");
        fs::write(&img, b"not really a kernel").unwrap();
        let e = custom_kernel(&img, None, None).unwrap_err();
        assert!(e.to_string().contains("--kernel-config"), "{e}");
        let cfg = d.join("config");
        fs::write(&cfg, "CONFIG_MODULES=y\n").unwrap();
        let e = custom_kernel(&img, None, Some(&cfg)).unwrap_err();
        assert!(e.to_string().contains("CONFIG_PCI_MSI=y"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn custom_kernel_without_build_dir_has_no_modules() {
        let d = tmp("ck2");
        let img = d.join("vmlinuz-7.2.0-test");
        fs::write(&img, b"x").unwrap();
        let all: String = FEATURE_OPTIONS
            .iter()
            .chain(BOOT_OPTIONS)
            .map(|(o, _)| format!("CONFIG_{o}=y\n"))
            .collect();
        fs::write(d.join("config-7.2.0-test"), all).unwrap();
        let k = custom_kernel(&img, None, None).unwrap();
        assert!(matches!(k.modules, ModuleBuild::Unavailable(_)));
        let e = custom_kernel(&img, Some(&d), None).unwrap_err();
        assert!(e.to_string().contains("modules_prepare"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }
}
