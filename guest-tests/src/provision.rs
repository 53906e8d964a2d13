//! Provisioning: a cached trixie root with QEMU >= 10.1 and a guest kernel (+ headers and the
//! compiler it was built with), created from scratch on a Debian 12 host or adopted and verified
//! when it already exists.
//!
//! Cache layout (`$VUGPU_CACHE`, default `/var/cache/vugpu`):
//!
//! ```text
//! lock                      flock(2): one provisioning at a time
//! logs/                     debootstrap.log, apt-*.log, host-apt.log
//! state/kvm-verdict         remembered "KVM cannot run this guest kernel here" (run.rs)
//! build/                    module builds against a --kernel-build-dir (host toolchain)
//! root/                     debootstrap --variant=minbase trixie
//!   .vugpu/debootstrap.done marker: the only expensive step that is never repeated
//!   var/lib/vugpu/build/    incremental builds of guest-tests/kmod and guest-tests/user
//!   var/lib/vugpu/kselftest-harness/  the guest kernel's kselftest harness headers (kselftest.rs)
//!   var/lib/vugpu/kernels/  --build-kernel: kernel sources and build trees (kbuild.rs)
//!   run/vugpu-<pid>-<n>/    one directory per boot: sockets, initramfs, logs
//! ```
//!
//! Only the debootstrap step uses a marker. Everything else is verified on every call by looking
//! at the files it must have produced (binaries, headers, kernel config, QEMU's device list); apt
//! runs only when something is missing, or always (it is cheap when nothing changes) under
//! `vugpu-vm provision`.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use crate::kernel::{self, GuestKernel, KernelConfig, KernelError, ModuleBuild};
use crate::process::{self, find_in_path, ProcessError};
use crate::qemu::{self, QemuVersion};
use crate::root::{self, Root};

/// Default cache directory.
pub const DEFAULT_CACHE: &str = "/var/cache/vugpu";
/// Default Debian mirror (override with `VUGPU_MIRROR`).
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Debian release of the root.
const SUITE: &str = "trixie";
/// Where QEMU >= 10.1 and the 7.x kernels come from.
pub const BACKPORTS: &str = "trixie-backports";
/// Apt lists older than this are refreshed by `vugpu-vm provision`.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Bound for one debootstrap or apt step.
const STEP_LIMIT: Duration = Duration::from_secs(30 * 60);
/// Bound for short probes (QEMU --version, apt-cache).
const PROBE_LIMIT: Duration = Duration::from_secs(60);
/// Tools the root must have whatever the kernel: (package, file inside the root).
const BASE_TOOLS: &[(&str, &str)] = &[
    ("make", "/usr/bin/make"),
    ("gcc", "/usr/bin/gcc"),
    ("libc6-dev", "/usr/lib/x86_64-linux-gnu/libc.a"),
    ("busybox-static", "/usr/bin/busybox"),
    ("kmod", "/usr/bin/kmod"),
    // Unpacks the guest kernel's kselftest harness headers from its linux-source tarball
    // (kselftest.rs); minbase has no xz.
    ("xz-utils", "/usr/bin/xz"),
];

/// Errors while provisioning.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// Not running as root.
    #[error("vugpu-vm must run as root (it uses debootstrap, chroot and mount namespaces); with `--kernel K --kernel-build-dir D --qemu Q` it runs without root, with the host's tools")]
    NotRoot,
    /// Host-only mode cannot work.
    #[error(
        "host-only mode (--kernel, --kernel-build-dir and --qemu: no root, the host's tools): {0}"
    )]
    HostOnly(String),
    /// File-system work failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: io::Error,
    },
    /// A helper command failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The kernel cannot be used.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The root exists but is unusable.
    #[error("root {path} is unusable: {why}; remove it (rm -rf --one-file-system {path}) and run `vugpu-vm provision`")]
    RootBroken {
        /// Root location.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Something is mounted inside a tree that must be removed.
    #[error("cannot remove unfinished root {path}: mounted inside it: {mounts}; unmount them first (umount -R ...)")]
    MountsInside {
        /// Root location.
        path: PathBuf,
        /// Mount points.
        mounts: String,
    },
    /// No usable QEMU.
    #[error("QEMU: {0}")]
    Qemu(String),
    /// No kernel could be chosen.
    #[error("kernel: {0}")]
    BadKernel(String),
    /// Something still missing after installation.
    #[error("after installation the root still lacks: {0}")]
    StillMissing(String),
    /// Building a kernel (`--build-kernel`) or packing modules (`--modules`) failed.
    #[error(transparent)]
    Kbuild(#[from] crate::kbuild::KbuildError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ProvisionError {
    let what = what.into();
    move |source| ProvisionError::Io { what, source }
}

/// Which kernel to boot.
#[derive(Clone, Debug)]
pub enum KernelChoice {
    /// Debian's newest 7.x from trixie-backports, in the root.
    Debian,
    /// The user's kernel.
    Custom {
        /// bzImage.
        image: PathBuf,
        /// Build tree for out-of-tree modules.
        build_dir: Option<PathBuf>,
        /// Its `.config` (default: BUILD_DIR/.config or config-* next to the image).
        config: Option<PathBuf>,
    },
}

/// Inputs.
#[derive(Clone, Debug)]
pub struct ProvisionOptions {
    /// Cache directory.
    pub cache: PathBuf,
    /// Debian mirror.
    pub mirror: String,
    /// `vugpu-vm provision`: refresh stale apt lists and rerun apt installs.
    pub explicit: bool,
    /// Force `apt-get update`.
    pub refresh: bool,
    /// Kernel to use.
    pub kernel: KernelChoice,
    /// A QEMU binary on the host chosen by the user.
    pub qemu: Option<PathBuf>,
    /// Host-only mode (`--kernel`, `--kernel-build-dir` and `--qemu` given): no root, no apt,
    /// everything from the host (see hostonly.rs).
    pub host_only: bool,
    /// Extra packages for the root (from guest-tests/{kmod,user}/apt-packages; `@KVER@` is
    /// replaced by the kernel release).
    pub extra_packages: Vec<String>,
}

/// Which QEMU runs the guest.
#[derive(Clone, Debug)]
pub enum QemuBinary {
    /// A host binary, run directly.
    Host {
        /// Path.
        path: PathBuf,
        /// What `--version` says (version and package version, see [`qemu::banner`]).
        banner: String,
    },
    /// A QEMU inside the root, run through chroot: the package's `qemu-system-x86_64`, or a
    /// binary under the root given with `--qemu` (scripts/build-qemu-hotplugfix puts one there).
    InRoot {
        /// What `--version` says.
        banner: String,
        /// The program as the root sees it (`qemu-system-x86_64`, found on the root's PATH, or
        /// an absolute path inside the root).
        program: String,
    },
}

/// The program name of the root's packaged QEMU.
pub const ROOT_QEMU: &str = "qemu-system-x86_64";

/// Where busybox and the tools that build the module and the test programs come from.
#[derive(Clone, Debug)]
pub enum Toolchain {
    /// The trixie root: builds run inside it, busybox is its busybox-static.
    Root(Root),
    /// The host's own tools (host-only mode): no root.
    Host {
        /// A statically linked busybox on the host.
        busybox: PathBuf,
    },
}

/// A verified environment.
#[derive(Clone, Debug)]
pub struct Env {
    /// Cache directory.
    pub cache: PathBuf,
    /// The root, or the host's tools.
    pub toolchain: Toolchain,
    /// QEMU.
    pub qemu: QemuBinary,
    /// Kernel.
    pub kernel: GuestKernel,
}

impl QemuBinary {
    /// Which QEMU this is, for the KTAP header, the summary and the JUnit properties: what
    /// `--version` says, and where the binary is unless it is the root's packaged one.
    pub fn label(&self) -> String {
        match self {
            QemuBinary::Host { path, banner, .. } => format!("{banner}, {}", path.display()),
            QemuBinary::InRoot {
                banner, program, ..
            } if program == ROOT_QEMU => banner.clone(),
            QemuBinary::InRoot {
                banner, program, ..
            } => format!("{banner}, {program} in the trixie root"),
        }
    }
}

/// The path inside the root of a `--qemu` binary that lives under the root (symlinks resolved),
/// or `None` for a host binary.
pub fn program_in_root(root: &Path, qemu: &Path) -> Option<String> {
    let root = fs::canonicalize(root).ok()?;
    let real = fs::canonicalize(qemu).ok()?;
    let rel = real.strip_prefix(&root).ok()?;
    Some(format!("/{}", rel.to_str()?))
}

impl Env {
    /// The trixie root, unless in host-only mode.
    pub fn root(&self) -> Option<&Root> {
        match &self.toolchain {
            Toolchain::Root(r) => Some(r),
            Toolchain::Host { .. } => None,
        }
    }

    /// The static busybox for the initramfs.
    pub fn busybox(&self) -> PathBuf {
        match &self.toolchain {
            Toolchain::Root(r) => r.host_path("/usr/bin/busybox"),
            Toolchain::Host { busybox } => busybox.clone(),
        }
    }

    /// One-line description.
    pub fn describe(&self) -> String {
        let q = match &self.qemu {
            QemuBinary::Host { .. } => format!("QEMU {}", self.qemu.label()),
            QemuBinary::InRoot { .. } => format!("QEMU {} (in the trixie root)", self.qemu.label()),
        };
        let host_only = match self.toolchain {
            Toolchain::Root(_) => "",
            Toolchain::Host { .. } => ", host tools only (no root)",
        };
        format!(
            "{q}, kernel {} ({}){host_only}",
            self.kernel.release,
            self.kernel.image.display()
        )
    }
}

/// Runs as root?
fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Takes the cache lock, saying so when another process holds it.
pub(crate) fn lock_cache(cache: &Path) -> Result<File, ProvisionError> {
    let path = cache.join("lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("open {}", path.display())))?;
    match f.try_lock() {
        Ok(()) => return Ok(f),
        Err(fs::TryLockError::WouldBlock) => {
            say!(
                "waiting for another vugpu-vm that is provisioning {} ...",
                cache.display()
            );
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(io_err(format!("lock {}", path.display()))(e));
        }
    }
    f.lock()
        .map_err(io_err(format!("lock {}", path.display())))?;
    Ok(f)
}

/// Formats a duration as seconds with one decimal.
pub fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

struct Provisioner<'a> {
    opts: &'a ProvisionOptions,
    root: Root,
    logs: PathBuf,
    lists_updated: bool,
    host_apt_updated: bool,
    start: Instant,
}

/// Provisions (or verifies) the environment.
pub fn provision(opts: &ProvisionOptions) -> Result<Env, ProvisionError> {
    if opts.host_only {
        return crate::hostonly::provision(opts);
    }
    if !is_root() {
        return Err(ProvisionError::NotRoot);
    }
    let logs = opts.cache.join("logs");
    fs::create_dir_all(&logs).map_err(io_err(format!("create {}", logs.display())))?;
    let _lock = lock_cache(&opts.cache)?;
    let mut p = Provisioner {
        opts,
        root: Root::new(opts.cache.join("root")),
        logs,
        lists_updated: false,
        host_apt_updated: false,
        start: Instant::now(),
    };
    p.host_prerequisites()?;
    let host_qemu = p.host_qemu()?;
    p.ensure_tree()?;
    p.configure_apt()?;
    // A QEMU under the root (`--qemu`) needs the root's libraries and firmware all the same.
    let need_root_qemu = !matches!(host_qemu, Some(QemuBinary::Host { .. }));
    let kver = p.ensure_packages(need_root_qemu)?;
    let qemu = match host_qemu {
        Some(q) => q,
        None => p.root_qemu()?,
    };
    let kernel = match &opts.kernel {
        KernelChoice::Debian => p.debian_kernel(kver.as_deref())?,
        KernelChoice::Custom {
            image,
            build_dir,
            config,
        } => kernel::custom_kernel(image, build_dir.as_deref(), config.as_deref())?,
    };
    if opts.explicit {
        say!("provisioned in {}", secs(p.start.elapsed()));
    }
    Ok(Env {
        cache: opts.cache.clone(),
        toolchain: Toolchain::Root(p.root),
        qemu,
        kernel,
    })
}

/// Installs `pkgs` in a provisioned root (`apt-get install -t trixie-backports`, then `apt-get
/// clean`), holding the cache lock like provisioning does. For packages only some runs need
/// (kernel sources and build tools for `--build-kernel`, linux-modules-KVER for `--modules`).
pub fn install_in_root(cache: &Path, root: &Root, pkgs: &[String]) -> Result<(), ProvisionError> {
    if pkgs.is_empty() {
        return Ok(());
    }
    let opts = ProvisionOptions {
        cache: cache.to_path_buf(),
        mirror: String::new(),
        explicit: false,
        refresh: false,
        kernel: KernelChoice::Debian,
        qemu: None,
        extra_packages: Vec::new(),
        host_only: false,
    };
    let logs = cache.join("logs");
    fs::create_dir_all(&logs).map_err(io_err(format!("create {}", logs.display())))?;
    let _lock = lock_cache(cache)?;
    let mut p = Provisioner {
        opts: &opts,
        root: root.clone(),
        logs,
        lists_updated: false,
        host_apt_updated: false,
        start: Instant::now(),
    };
    p.apt_update(false)?;
    p.apt_install(pkgs)
}

impl Provisioner<'_> {
    fn step_say(&self, msg: &str) {
        say!("[{:>5}] {msg}", secs(self.start.elapsed()));
    }

    /// Host tools needed for every run (util-linux's unshare, mount, coreutils' chroot, gzip).
    /// Essential on Debian, but checked, and installed with apt-get when missing.
    fn host_prerequisites(&mut self) -> Result<(), ProvisionError> {
        let mut need = Vec::new();
        for (prog, pkg) in [
            ("unshare", "util-linux"),
            ("mount", "mount"),
            ("chroot", "coreutils"),
            ("gzip", "gzip"),
        ] {
            if find_in_path(prog).is_none() {
                need.push(pkg);
            }
        }
        self.host_install(&need)
    }

    fn host_install(&mut self, pkgs: &[&str]) -> Result<(), ProvisionError> {
        if pkgs.is_empty() {
            return Ok(());
        }
        let log = self.logs.join("host-apt.log");
        if !self.host_apt_updated {
            self.step_say("host: apt-get update (something must be installed)");
            let mut c = Command::new("apt-get");
            c.args(["update", "-q"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .env("PATH", root::SYSTEM_PATH);
            process::run_logged(c, "host apt-get update", &log, STEP_LIMIT)?;
            self.host_apt_updated = true;
        }
        self.step_say(&format!("host: apt-get install {}", pkgs.join(" ")));
        let mut c = Command::new("apt-get");
        c.args(["install", "-y", "-q", "--no-install-recommends"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("PATH", root::SYSTEM_PATH);
        process::run_logged(c, "host apt-get install", &log, STEP_LIMIT)?;
        Ok(())
    }

    /// The host's QEMU if it is new enough and has vfio-user-pci; or the `--qemu` binary, which
    /// runs inside the root when it lives under it.
    fn host_qemu(&self) -> Result<Option<QemuBinary>, ProvisionError> {
        let (path, explicit) = match &self.opts.qemu {
            Some(p) => (p.clone(), true),
            None => match find_in_path("qemu-system-x86_64") {
                Some(p) => (p, false),
                None => return Ok(None),
            },
        };
        if let Some(program) = explicit
            .then(|| program_in_root(self.root.path(), &path))
            .flatten()
        {
            return match probe_qemu(|| self.root.command(&[program.as_str()])) {
                Ok((_, banner)) => Ok(Some(QemuBinary::InRoot { banner, program })),
                Err(why) => Err(ProvisionError::Qemu(format!(
                    "{} (run inside the root as {program}) cannot be used: {why}",
                    path.display()
                ))),
            };
        }
        match probe_qemu(|| Command::new(&path)) {
            Ok((_, banner)) => Ok(Some(QemuBinary::Host { path, banner })),
            Err(why) if explicit => Err(ProvisionError::Qemu(format!(
                "{} cannot be used: {why}",
                path.display()
            ))),
            Err(why) => {
                if self.opts.explicit {
                    say!(
                        "host QEMU {} not usable ({why}); using trixie-backports QEMU in the root",
                        path.display()
                    );
                }
                Ok(None)
            }
        }
    }

    fn root_qemu(&self) -> Result<QemuBinary, ProvisionError> {
        probe_qemu(|| self.root.command(&[ROOT_QEMU]))
            .map(|(_, banner)| QemuBinary::InRoot {
                banner,
                program: ROOT_QEMU.to_string(),
            })
            .map_err(|why| ProvisionError::Qemu(format!("QEMU in the root: {why}")))
    }

    fn marker(&self) -> PathBuf {
        self.root.host_path("/.vugpu/debootstrap.done")
    }

    /// Debootstraps the root, or adopts an existing finished one.
    fn ensure_tree(&mut self) -> Result<(), ProvisionError> {
        let path = self.root.path().to_path_buf();
        let marker = self.marker();
        if marker.exists() {
            if let Some(why) = tree_problem(&path) {
                return Err(ProvisionError::RootBroken { path, why });
            }
            return Ok(());
        }
        if path.exists() {
            match tree_problem(&path) {
                None => {
                    self.step_say(&format!(
                        "adopting existing root {} (finished debootstrap of {SUITE})",
                        path.display()
                    ));
                    write_marker(&marker)?;
                    return Ok(());
                }
                Some(why) => {
                    self.step_say(&format!(
                        "removing unfinished root {} ({why})",
                        path.display()
                    ));
                    let mounts = mounts_under(&path);
                    if !mounts.is_empty() {
                        return Err(ProvisionError::MountsInside {
                            path,
                            mounts: mounts.join(", "),
                        });
                    }
                    fs::remove_dir_all(&path)
                        .map_err(io_err(format!("remove {}", path.display())))?;
                }
            }
        }
        if find_in_path("debootstrap").is_none() {
            self.host_install(&["debootstrap"])?;
        }
        let t = Instant::now();
        self.step_say(&format!(
            "debootstrap --variant=minbase {SUITE} {} (about 30 s; log {})",
            path.display(),
            self.logs.join("debootstrap.log").display()
        ));
        let log = self.logs.join("debootstrap.log");
        let _ = fs::remove_file(&log);
        let path_str = path.to_string_lossy().into_owned();
        let c = root::private_namespace_command(&[
            "debootstrap",
            "--variant=minbase",
            SUITE,
            &path_str,
            &self.opts.mirror,
        ]);
        process::run_logged(c, "debootstrap", &log, STEP_LIMIT)?;
        if let Some(why) = tree_problem(&path) {
            return Err(ProvisionError::RootBroken { path, why });
        }
        write_marker(&marker)?;
        self.step_say(&format!("debootstrap done in {}", secs(t.elapsed())));
        Ok(())
    }

    /// Apt sources (trixie + updates + security + backports), no recommends, no daemons.
    /// Returns without touching anything that is already right.
    fn configure_apt(&mut self) -> Result<(), ProvisionError> {
        let mirror = self.opts.mirror.trim_end_matches('/');
        let security = match mirror.strip_suffix("/debian") {
            Some(base) => format!("{base}/debian-security"),
            None => "http://deb.debian.org/debian-security".to_string(),
        };
        let sources = format!(
            "deb {mirror} {SUITE} main\ndeb {mirror} {SUITE}-updates main\n\
             deb {security} {SUITE}-security main\ndeb {mirror} {BACKPORTS} main\n"
        );
        if write_if_changed(
            &self.root.host_path("/etc/apt/sources.list"),
            &sources,
            0o644,
        )? {
            // New sources: the lists must be fetched again.
            self.lists_updated = false;
            let lists = self.root.host_path("/var/lib/apt/lists");
            if let Ok(rd) = fs::read_dir(&lists) {
                for e in rd.flatten() {
                    if e.file_name().to_string_lossy().ends_with("InRelease") {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
        }
        write_if_changed(
            &self.root.host_path("/etc/apt/apt.conf.d/90vugpu"),
            "APT::Install-Recommends \"false\";\nAPT::Install-Suggests \"false\";\n",
            0o644,
        )?;
        write_if_changed(
            &self.root.host_path("/usr/sbin/policy-rc.d"),
            "#!/bin/sh\nexit 101\n",
            0o755,
        )?;
        Ok(())
    }

    /// Copies the host's resolver config into the root (apt needs DNS). Replaces a symlink
    /// instead of following it out of the root.
    fn resolver(&self) -> Result<(), ProvisionError> {
        let Ok(text) = fs::read_to_string("/etc/resolv.conf") else {
            return Ok(());
        };
        let dst = self.root.host_path("/etc/resolv.conf");
        if fs::symlink_metadata(&dst).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(&dst).map_err(io_err(format!("remove {}", dst.display())))?;
        }
        write_if_changed(&dst, &text, 0o644)?;
        Ok(())
    }

    fn lists_age(&self) -> Option<Duration> {
        let lists = self.root.host_path("/var/lib/apt/lists");
        let rd = fs::read_dir(lists).ok()?;
        rd.flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.contains(BACKPORTS) && n.ends_with("InRelease")
            })
            .filter_map(|e| e.metadata().ok()?.modified().ok())
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
            .min()
    }

    fn apt_update(&mut self, force: bool) -> Result<(), ProvisionError> {
        if self.lists_updated {
            return Ok(());
        }
        let stale = match self.lists_age() {
            None => true,
            Some(age) => self.opts.explicit && age > LISTS_MAX_AGE,
        };
        if !(force || stale) {
            return Ok(());
        }
        self.resolver()?;
        let t = Instant::now();
        self.step_say("root: apt-get update");
        let c = self.root.command(&["apt-get", "update", "-q"]);
        process::run_logged(
            c,
            "apt-get update (root)",
            &self.logs.join("apt-update.log"),
            STEP_LIMIT,
        )?;
        self.lists_updated = true;
        self.step_say(&format!("apt-get update done in {}", secs(t.elapsed())));
        Ok(())
    }

    fn apt_install(&mut self, pkgs: &[String]) -> Result<(), ProvisionError> {
        if pkgs.is_empty() {
            return Ok(());
        }
        self.resolver()?;
        let t = Instant::now();
        self.step_say(&format!(
            "root: apt-get install -t {BACKPORTS} {}",
            pkgs.join(" ")
        ));
        let mut argv: Vec<String> = ["apt-get", "install", "-y", "-q", "-t", BACKPORTS]
            .iter()
            .map(|s| s.to_string())
            .collect();
        argv.extend(pkgs.iter().cloned());
        let c = self.root.command(&argv);
        process::run_logged(
            c,
            "apt-get install (root)",
            &self.logs.join("apt-install.log"),
            STEP_LIMIT,
        )?;
        // Downloaded .debs are not needed again (~200 MB).
        let c = self.root.command(&["apt-get", "clean"]);
        process::run_logged(
            c,
            "apt-get clean (root)",
            &self.logs.join("apt-install.log"),
            STEP_LIMIT,
        )?;
        self.step_say(&format!("apt-get install done in {}", secs(t.elapsed())));
        Ok(())
    }

    /// Newest kernel release in trixie-backports (`linux-headers-amd64`'s dependency).
    fn resolve_newest_kernel(&mut self) -> Result<String, ProvisionError> {
        self.apt_update(false)?;
        let c = self.root.command(&[
            "apt-cache",
            "depends",
            "-t",
            BACKPORTS,
            "linux-headers-amd64",
        ]);
        let out = process::output(c, "apt-cache depends linux-headers-amd64", PROBE_LIMIT)?;
        out.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: linux-headers-"))
            .find(|v| v.ends_with("-amd64"))
            .map(str::to_string)
            .ok_or_else(|| {
                ProvisionError::BadKernel(format!(
                    "cannot find the newest kernel in {BACKPORTS} (apt-cache depends said: {})",
                    out.trim()
                ))
            })
    }

    /// Complete kernels installed in the root (image, config, headers), oldest first.
    fn installed_kernels(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.root.host_path("/usr/lib/modules"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|k| self.kernel_files_missing(k).is_empty())
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| kernel::compare_releases(a, b));
        v
    }

    fn kernel_image(&self, kver: &str) -> Option<PathBuf> {
        [
            format!("/usr/lib/modules/{kver}/vmlinuz"),
            format!("/boot/vmlinuz-{kver}"),
        ]
        .iter()
        .map(|p| self.root.host_path(p))
        .find(|p| p.is_file())
    }

    fn kernel_config(&self, kver: &str) -> Option<PathBuf> {
        [
            format!("/usr/lib/modules/{kver}/config"),
            format!("/boot/config-{kver}"),
        ]
        .iter()
        .map(|p| self.root.host_path(p))
        .find(|p| p.is_file())
    }

    /// Packages whose files are missing for kernel `kver`.
    fn kernel_files_missing(&self, kver: &str) -> Vec<String> {
        let mut missing = Vec::new();
        if self.kernel_image(kver).is_none() {
            missing.push(format!("linux-binary-{kver}"));
        }
        let build = self
            .root
            .host_path(&format!("/usr/lib/modules/{kver}/build/Makefile"));
        if self.kernel_config(kver).is_none() || !build.is_file() {
            missing.push(format!("linux-headers-{kver}"));
        }
        missing
    }

    /// Packages whose files are missing in the root.
    fn missing_packages(&self, need_qemu: bool, kver: Option<&str>) -> Vec<String> {
        let mut missing: Vec<String> = BASE_TOOLS
            .iter()
            .filter(|(pkg, file)| {
                let p = self.root.host_path(file);
                !p.is_file() || (*pkg == "busybox-static" && !is_static(&p))
            })
            .map(|(pkg, _)| (*pkg).to_string())
            .collect();
        if need_qemu && !self.root.host_path("/usr/bin/qemu-system-x86_64").is_file() {
            missing.push("qemu-system-x86".to_string());
        }
        if let Some(k) = kver {
            missing.extend(self.kernel_files_missing(k));
            if let Some(cfg) = self.kernel_config(k) {
                if let Some(pkg) = self.missing_compiler(&cfg) {
                    missing.push(pkg);
                }
            }
        }
        missing
    }

    /// The gcc package for the kernel's compiler, when its command is absent from the root.
    fn missing_compiler(&self, config: &Path) -> Option<String> {
        let cfg = KernelConfig::read(config).ok()?;
        let cmd = cfg.gcc_command()?;
        if self.root.host_path(&format!("/usr/bin/{cmd}")).exists() {
            return None;
        }
        kernel::gcc_package(&cmd)
    }

    fn extra_packages(&self, kver: Option<&str>) -> Vec<String> {
        self.opts
            .extra_packages
            .iter()
            .filter(|p| kver.is_some() || !p.contains("@KVER@"))
            .map(|p| p.replace("@KVER@", kver.unwrap_or_default()))
            .collect()
    }

    /// Extra packages not installed (one dpkg-query in the root).
    fn extra_missing(&self, extra: &[String]) -> Result<Vec<String>, ProvisionError> {
        if extra.is_empty() {
            return Ok(Vec::new());
        }
        let mut argv = vec![
            "dpkg-query".to_string(),
            "-W".to_string(),
            "-f=${Package} ${db:Status-Abbrev}\\n".to_string(),
        ];
        argv.extend(extra.iter().cloned());
        // dpkg-query exits 1 when a package is unknown; treat any failure as "all missing".
        let out = process::output(self.root.command(&argv), "dpkg-query", PROBE_LIMIT)
            .unwrap_or_default();
        Ok(extra
            .iter()
            .filter(|p| {
                !out.lines()
                    .any(|l| l.split_whitespace().collect::<Vec<_>>() == [p.as_str(), "ii"])
            })
            .cloned()
            .collect())
    }

    /// Installs what is missing (implicit) or everything (explicit). Returns the kernel release
    /// to use when the kernel is Debian's.
    fn ensure_packages(&mut self, need_qemu: bool) -> Result<Option<String>, ProvisionError> {
        let debian = matches!(self.opts.kernel, KernelChoice::Debian);
        if self.opts.explicit {
            self.apt_update(self.opts.refresh)?;
            let kver = if debian {
                let k = self.resolve_newest_kernel()?;
                self.step_say(&format!("newest kernel in {BACKPORTS}: {k}"));
                Some(k)
            } else {
                None
            };
            let mut pkgs: Vec<String> = BASE_TOOLS.iter().map(|(p, _)| p.to_string()).collect();
            if need_qemu {
                pkgs.push("qemu-system-x86".to_string());
            }
            if let Some(k) = &kver {
                pkgs.push(format!("linux-binary-{k}"));
                pkgs.push(format!("linux-headers-{k}"));
            }
            pkgs.extend(self.extra_packages(kver.as_deref()));
            self.apt_install(&pkgs)?;
            self.finish_packages(need_qemu, kver.as_deref())?;
            return Ok(kver);
        }
        // Implicit: verify, install only what is missing.
        let mut kver = if debian {
            self.installed_kernels().pop()
        } else {
            None
        };
        let extra = self.extra_packages(kver.as_deref());
        let mut missing = self.missing_packages(need_qemu, kver.as_deref());
        missing.extend(self.extra_missing(&extra)?);
        if debian && kver.is_none() {
            let k = self.resolve_newest_kernel()?;
            missing.push(format!("linux-binary-{k}"));
            missing.push(format!("linux-headers-{k}"));
            missing.extend(self.extra_missing(&self.extra_packages(Some(&k)))?);
            kver = Some(k);
        }
        if missing.is_empty() {
            return Ok(kver);
        }
        self.step_say(&format!("root is missing: {}", missing.join(" ")));
        self.apt_update(false)?;
        self.apt_install(&missing)?;
        self.finish_packages(need_qemu, kver.as_deref())?;
        Ok(kver)
    }

    /// Installs the kernel's compiler if needed, then verifies everything.
    fn finish_packages(
        &mut self,
        need_qemu: bool,
        kver: Option<&str>,
    ) -> Result<(), ProvisionError> {
        if let Some(k) = kver {
            if let Some(cfg) = self.kernel_config(k) {
                if let Some(pkg) = self.missing_compiler(&cfg) {
                    self.apt_install(&[pkg])?;
                }
            }
        }
        let mut missing = self.missing_packages(need_qemu, kver);
        missing.extend(self.extra_missing(&self.extra_packages(kver))?);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ProvisionError::StillMissing(missing.join(" ")))
        }
    }

    fn debian_kernel(&self, kver: Option<&str>) -> Result<GuestKernel, ProvisionError> {
        let kver = kver.ok_or_else(|| ProvisionError::BadKernel("no kernel installed".into()))?;
        let (Some(image), Some(config_path)) = (self.kernel_image(kver), self.kernel_config(kver))
        else {
            return Err(ProvisionError::StillMissing(format!("kernel {kver}")));
        };
        let config = KernelConfig::read(&config_path)?;
        config.check(kver, &config_path)?;
        Ok(GuestKernel {
            release: kver.to_string(),
            image,
            config_path,
            modules: ModuleBuild::InRoot {
                kdir: format!("/usr/lib/modules/{kver}/build"),
                cc: config.gcc_command(),
            },
            module_tree: Some(self.root.host_path(&format!("/usr/lib/modules/{kver}"))),
            initramfs_extra: Vec::new(),
        })
    }
}

/// Why the tree at `path` is not a finished debootstrap of trixie, if it is not.
fn tree_problem(path: &Path) -> Option<String> {
    if path.join("debootstrap").exists() {
        return Some("debootstrap did not finish (its work directory is still there)".into());
    }
    for f in [
        "usr/bin/apt-get",
        "usr/bin/dpkg",
        "var/lib/dpkg/status",
        "bin/sh",
    ] {
        if !path.join(f).exists() {
            return Some(format!("/{f} is missing"));
        }
    }
    let os = fs::read_to_string(path.join("etc/os-release")).unwrap_or_default();
    if !os.lines().any(|l| l == format!("VERSION_CODENAME={SUITE}")) {
        return Some(format!("it is not Debian {SUITE} (etc/os-release)"));
    }
    None
}

/// Mount points at or below `path` (from /proc/self/mountinfo).
fn mounts_under(path: &Path) -> Vec<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = path.to_string_lossy().into_owned();
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect()
}

fn write_marker(marker: &Path) -> Result<(), ProvisionError> {
    if let Some(dir) = marker.parent() {
        fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    }
    fs::write(marker, format!("{SUITE}\n")).map_err(io_err(format!("write {}", marker.display())))
}

/// Writes `text` when the file differs; returns whether it wrote.
fn write_if_changed(path: &Path, text: &str, mode: u32) -> Result<bool, ProvisionError> {
    if fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    }
    fs::write(path, text).map_err(io_err(format!("write {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", path.display())))?;
    Ok(true)
}

/// A statically linked ELF has no program interpreter string.
fn is_static(path: &Path) -> bool {
    fs::read(path)
        .map(|b| b.starts_with(b"\x7fELF") && !b.windows(14).any(|w| w == b"/lib64/ld-linu"))
        .unwrap_or(false)
}

/// Runs `<qemu> --version` and `-device help` (`make` builds the base command); the version and
/// what `--version` says (see [`qemu::banner`]) when it is usable.
pub(crate) fn probe_qemu(make: impl Fn() -> Command) -> Result<(QemuVersion, String), String> {
    let mut cmd = make();
    cmd.arg("--version");
    let text = process::output(cmd, "qemu --version", PROBE_LIMIT).map_err(|e| e.to_string())?;
    let version = qemu::parse_version(&text)
        .ok_or_else(|| format!("cannot parse version from {:?}", text.trim()))?;
    if version < qemu::MIN_VERSION {
        return Err(format!(
            "version {version} is older than {} (no vfio-user-pci)",
            qemu::MIN_VERSION
        ));
    }
    let mut help = make();
    help.args(["-machine", "none", "-device", "help"]);
    let devices =
        process::output(help, "qemu -device help", PROBE_LIMIT).map_err(|e| e.to_string())?;
    if !qemu::lists_vfio_user(&devices) {
        return Err(format!("QEMU {version} has no vfio-user-pci device"));
    }
    let banner = qemu::banner(&text).unwrap_or_else(|| version.to_string());
    Ok((version, banner))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vugpu-prov-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn qemu_under_the_root_runs_inside_it() {
        let d = tmp("inroot");
        let root = d.join("root");
        let bin = root.join("opt/q/qemu-system-x86_64");
        fs::create_dir_all(bin.parent().unwrap()).unwrap();
        fs::write(&bin, "").unwrap();
        let link = d.join("qemu-fix");
        std::os::unix::fs::symlink(root.join("opt/q"), &link).unwrap();
        let host = d.join("host-qemu");
        fs::write(&host, "").unwrap();
        assert_eq!(
            program_in_root(&root, &bin).as_deref(),
            Some("/opt/q/qemu-system-x86_64")
        );
        assert_eq!(
            program_in_root(&root, &link.join("qemu-system-x86_64")).as_deref(),
            Some("/opt/q/qemu-system-x86_64")
        );
        assert_eq!(program_in_root(&root, &host), None);
        assert_eq!(program_in_root(&root, &d.join("missing")), None);
        let q = QemuBinary::InRoot {
            banner: "11.1.3 (Debian 2~bpo13+1 +hotplugfix)".into(),
            program: "/opt/q/qemu-system-x86_64".into(),
        };
        assert_eq!(
            q.label(),
            "11.1.3 (Debian 2~bpo13+1 +hotplugfix), /opt/q/qemu-system-x86_64 in the trixie root"
        );
        let q = QemuBinary::InRoot {
            banner: "11.1.3 (Debian 1:11.1.3+ds-2~bpo13+1)".into(),
            program: ROOT_QEMU.into(),
        };
        assert_eq!(q.label(), "11.1.3 (Debian 1:11.1.3+ds-2~bpo13+1)");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn unfinished_tree_detected() {
        let d = tmp("tree");
        assert!(tree_problem(&d).is_some());
        for f in [
            "usr/bin/apt-get",
            "usr/bin/dpkg",
            "var/lib/dpkg/status",
            "bin/sh",
        ] {
            let p = d.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, "").unwrap();
        }
        fs::create_dir_all(d.join("etc")).unwrap();
        fs::write(
            d.join("etc/os-release"),
            "NAME=x\nVERSION_CODENAME=bookworm\n",
        )
        .unwrap();
        assert!(tree_problem(&d).unwrap().contains("trixie"));
        fs::write(
            d.join("etc/os-release"),
            "NAME=x\nVERSION_CODENAME=trixie\n",
        )
        .unwrap();
        assert_eq!(tree_problem(&d), None);
        fs::create_dir_all(d.join("debootstrap")).unwrap();
        assert!(tree_problem(&d).unwrap().contains("did not finish"));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn write_if_changed_only_writes_differences() {
        let d = tmp("wic");
        let f = d.join("a/b.conf");
        assert!(write_if_changed(&f, "x\n", 0o644).unwrap());
        assert!(!write_if_changed(&f, "x\n", 0o644).unwrap());
        assert!(write_if_changed(&f, "y\n", 0o644).unwrap());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn static_detection() {
        let d = tmp("static");
        let f = d.join("bin");
        fs::write(&f, b"\x7fELF....../lib64/ld-linux-x86-64.so.2...").unwrap();
        assert!(!is_static(&f));
        fs::write(&f, b"\x7fELF.......").unwrap();
        assert!(is_static(&f));
        fs::remove_dir_all(&d).unwrap();
    }
}
