//! Guest kernels built from Debian's `linux-source-X.Y` packages inside the trixie root
//! (`--build-kernel SPEC`, `vugpu-vm build-kernel SPEC`), and distro modules packed into the
//! initramfs with their dependencies (`--modules LIST`).
//!
//! A build is `make allnoconfig` (ARCH=x86_64) + the fragments in guest-tests/kernel/
//! (`vugpu.config`, plus `debug.config` for a `-debug` SPEC) merged with
//! `scripts/kconfig/merge_config.sh -n`, then `olddefconfig`; every option the fragments request
//! is then checked in the resulting `.config` (Kconfig silently drops an option whose
//! dependencies are missing), and only then `make -j2 bzImage modules` and `modules_install`
//! run, all inside the root with its gcc, so vugpu.ko is later built there with the same compiler.
//!
//! ```text
//! ROOT/var/lib/vugpu/kernels/
//!   src-<source version>/linux-source-X.Y/     the unpacked /usr/src/linux-source-X.Y.tar.xz
//!   src-<source version>/.vugpu-unpacked        marker: the unpack finished
//!   <source version>-<variant>-<hash>/          O= build tree (hash: sha256 of the merged fragment)
//!     vugpu-fragment.config                     the fragment exactly as merged
//!     config.log, build.log                     make output
//!     mod/lib/modules/<release>/                modules_install (test_hmm.ko, modules.dep)
//!     .vugpu-built                              marker: a finished build (an unfinished one is resumed)
//!   <name>.lock                                 flock while a tree is unpacked or built
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use crate::initramfs::TestsDir;
use crate::kernel::{GuestKernel, KernelConfig, KernelError, ModuleBuild};
use crate::process::{self, find_in_path, ProcessError};
use crate::provision::{self, secs, Env, ProvisionError};

/// Where the kernels live inside the root (the root's gcc builds them and vugpu.ko).
pub const KERNELS_DIR: &str = "/var/lib/vugpu/kernels";
/// Marker of a finished build, inside its build tree.
const BUILT_MARKER: &str = ".vugpu-built";
/// Marker of a finished unpack, inside the source directory.
const UNPACKED_MARKER: &str = ".vugpu-unpacked";
/// The merged fragment, inside the build tree.
const FRAGMENT_FILE: &str = "vugpu-fragment.config";
/// Finished builds kept (least recently used ones beyond this are removed).
const KEEP_BUILDS: usize = 4;
/// Bound for the whole `make bzImage modules` (2 busy cores, debug variant).
const BUILD_LIMIT: Duration = Duration::from_secs(120 * 60);
/// Bound for unpacking, configuring, installing modules.
const STEP_LIMIT: Duration = Duration::from_secs(30 * 60);
/// Bound for apt-cache and dpkg-query.
const PROBE_LIMIT: Duration = Duration::from_secs(60);
/// Parallel make jobs (override with VUGPU_KBUILD_JOBS).
const DEFAULT_JOBS: u32 = 2;
/// Tools a kernel build needs in the root, with the package providing each.
const BUILD_TOOLS: &[(&str, &str)] = &[
    ("bc", "/usr/bin/bc"),
    ("bison", "/usr/bin/bison"),
    ("flex", "/usr/bin/flex"),
    ("libelf-dev", "/usr/include/libelf.h"),
    ("xz-utils", "/usr/bin/xz"),
];

/// Errors building a kernel or packing modules.
#[derive(Debug, thiserror::Error)]
pub enum KbuildError {
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
    /// The built kernel is unusable.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// Options the fragments request did not survive Kconfig.
    #[error("kernel config {config}: Kconfig dropped options the fragments ({fragments}) request (a dependency is missing or the option does not exist in this kernel):\n{}", missing.iter().map(|m| format!("  {m}")).collect::<Vec<_>>().join("\n"))]
    ConfigDropped {
        /// The .config.
        config: PathBuf,
        /// Fragment files.
        fragments: String,
        /// What is wrong, one line each.
        missing: Vec<String>,
    },
    /// Anything else, explained.
    #[error("{0}")]
    Other(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> KbuildError {
    let what = what.into();
    move |source| KbuildError::Io { what, source }
}

/// Which kernel series to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Series {
    /// The `linux-source-X.Y` that trixie-backports' `linux-source` depends on.
    Newest,
    /// `linux-source-X.Y` (from trixie, trixie-security or trixie-backports, whichever apt
    /// prefers).
    Version(String),
}

/// `--build-kernel SPEC`: `6.12`, `6.12-debug`, `newest`, `newest-debug` (any `X.Y` with a
/// `linux-source-X.Y` package).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSpec {
    /// Series.
    pub series: Series,
    /// Debug variant (guest-tests/kernel/debug.config on top).
    pub debug: bool,
}

impl FromStr for KernelSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (base, debug) = match s.strip_suffix("-debug") {
            Some(b) => (b, true),
            None => (s, false),
        };
        let series = if base == "newest" {
            Series::Newest
        } else {
            let mut parts = base.split('.');
            let ok = matches!(
                (parts.next(), parts.next(), parts.next()),
                (Some(a), Some(b), None)
                    if !a.is_empty() && !b.is_empty()
                        && a.chars().all(|c| c.is_ascii_digit())
                        && b.chars().all(|c| c.is_ascii_digit())
            );
            if !ok {
                return Err(format!(
                    "bad kernel spec {s:?}: expected X.Y or newest, optionally with -debug \
                     (6.12, 6.12-debug, newest, newest-debug)"
                ));
            }
            Series::Version(base.to_string())
        };
        Ok(KernelSpec { series, debug })
    }
}

impl fmt::Display for KernelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.series {
            Series::Newest => write!(f, "newest")?,
            Series::Version(v) => write!(f, "{v}")?,
        }
        if self.debug {
            write!(f, "-debug")?;
        }
        Ok(())
    }
}

impl KernelSpec {
    /// `normal` or `debug` (part of the cache key).
    pub fn variant(&self) -> &'static str {
        if self.debug {
            "debug"
        } else {
            "normal"
        }
    }

    /// Fragment files under guest-tests/kernel/, merged in this order (later ones win).
    pub fn fragments(&self) -> Vec<&'static str> {
        let mut v = vec!["vugpu.config"];
        if self.debug {
            v.push("debug.config");
        }
        v
    }
}

/// A file or directory name made from a Debian version (`7.3.4-1~bpo13+1` -> `7.3.4-1_bpo13+1`):
/// only characters that are safe in make's paths.
pub fn path_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// SHA-256 of `data` in lower-case hex (the `sha2` crate; the same digits as `sha256sum`).
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The cache key of a build: the build tree's name, `<source version>-<variant>-<first 12 hex
/// digits of sha256(merged fragment)>`.
pub fn build_dir_name(source_version: &str, variant: &str, fragment_sha256: &str) -> String {
    format!(
        "{}-{variant}-{}",
        path_safe(source_version),
        &fragment_sha256[..fragment_sha256.len().min(12)]
    )
}

/// What a fragment asks for: option name (without `CONFIG_`) -> value, `None` for
/// `# CONFIG_X is not set`. Later lines win, as in merge_config.sh.
pub fn requested_options(fragment: &str) -> BTreeMap<String, Option<String>> {
    let mut m = BTreeMap::new();
    for line in fragment.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# CONFIG_") {
            if let Some(name) = rest.strip_suffix(" is not set") {
                m.insert(name.to_string(), None);
            }
        } else if let Some(rest) = line.strip_prefix("CONFIG_") {
            if let Some((name, value)) = rest.split_once('=') {
                m.insert(name.to_string(), Some(value.to_string()));
            }
        }
    }
    m
}

/// Requests of `fragment` that `config` does not satisfy, one description each.
pub fn verify_config(fragment: &str, config: &KernelConfig) -> Vec<String> {
    requested_options(fragment)
        .into_iter()
        .filter_map(|(name, want)| {
            let have = config.get(&name);
            let ok = match (&want, have) {
                (None, None | Some("n")) => true,
                (None, Some(_)) => false,
                (Some(w), Some(h)) => w == h,
                (Some(w), None) => w == "n",
            };
            if ok {
                return None;
            }
            let have = match have {
                None | Some("n") => "unset".to_string(),
                Some(v) => format!("={v}"),
            };
            Some(match want {
                None => format!("CONFIG_{name} must be unset (.config has {have})"),
                Some(w) => format!("CONFIG_{name}={w} (.config has {have})"),
            })
        })
        .collect()
}

/// `modules.dep` of a module tree: each module's path (relative to lib/modules/RELEASE) and its
/// dependencies (their paths), plus modules.builtin's names.
#[derive(Clone, Debug, Default)]
pub struct ModuleDeps {
    deps: BTreeMap<String, Vec<String>>,
    by_name: BTreeMap<String, String>,
    builtin: BTreeSet<String>,
}

/// A module's name from its path: `kernel/drivers/nvme/host/nvme-core.ko.xz` -> `nvme_core`
/// (the kernel treats `-` and `_` alike in module names).
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// `path` without a compression suffix (`.xz`, `.zst`, `.gz`).
fn uncompressed(path: &str) -> &str {
    [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|s| path.strip_suffix(s))
        .unwrap_or(path)
}

impl ModuleDeps {
    /// Parses `modules.dep` (`path: dep dep ...`) and `modules.builtin` (one path a line).
    pub fn parse(dep: &str, builtin: &str) -> Self {
        let mut m = ModuleDeps::default();
        for line in dep.lines() {
            let Some((module, deps)) = line.split_once(':') else {
                continue;
            };
            let module = module.trim().to_string();
            if module.is_empty() {
                continue;
            }
            m.by_name.insert(module_name(&module), module.clone());
            m.deps.insert(
                module,
                deps.split_whitespace().map(str::to_string).collect(),
            );
        }
        m.builtin = builtin
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(module_name)
            .collect();
        m
    }

    /// Whether `name` is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&name.replace('-', "_"))
    }

    /// Module paths to load, dependencies before their users, each once. Names built into the
    /// kernel are left out; an unknown name is an error naming it.
    pub fn load_order(&self, wanted: &[String]) -> Result<Vec<String>, String> {
        fn visit(
            m: &ModuleDeps,
            path: &str,
            seen: &mut BTreeSet<String>,
            stack: &mut Vec<String>,
            out: &mut Vec<String>,
        ) {
            if seen.contains(path) || stack.iter().any(|p| p == path) {
                return;
            }
            stack.push(path.to_string());
            for d in m.deps.get(path).map(Vec::as_slice).unwrap_or(&[]) {
                visit(m, d, seen, stack, out);
            }
            stack.pop();
            seen.insert(path.to_string());
            out.push(path.to_string());
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let mut unknown = Vec::new();
        for w in wanted {
            let name = w.replace('-', "_");
            match self.by_name.get(&name) {
                Some(path) => visit(self, path, &mut seen, &mut Vec::new(), &mut out),
                None if self.is_builtin(&name) => {}
                None => unknown.push(w.clone()),
            }
        }
        if unknown.is_empty() {
            Ok(out)
        } else {
            Err(unknown.join(", "))
        }
    }

    /// A `modules.dep` for just `paths` (uncompressed names), in the same format.
    pub fn subset_dep(&self, paths: &[String]) -> String {
        paths
            .iter()
            .map(|p| {
                let deps: Vec<&str> = self
                    .deps
                    .get(p)
                    .map(|d| d.iter().map(|x| uncompressed(x)).collect())
                    .unwrap_or_default();
                if deps.is_empty() {
                    format!("{}:\n", uncompressed(p))
                } else {
                    format!("{}: {}\n", uncompressed(p), deps.join(" "))
                }
            })
            .collect()
    }
}

/// Reads a module file, decompressing `.xz`, `.zst` and `.gz` with the host's tools (busybox's
/// insmod in the guest takes plain ELF only).
fn read_module(path: &Path) -> Result<Vec<u8>, KbuildError> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    let Some(tool) = tool else {
        return fs::read(path).map_err(io_err(format!("read {}", path.display())));
    };
    if find_in_path(tool).is_none() {
        return Err(KbuildError::Other(format!(
            "{} is compressed and `{tool}` is not on the host's PATH (install it)",
            path.display()
        )));
    }
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .stderr(Stdio::piped())
        .output()
        .map_err(io_err(format!("run {tool} -dc {}", path.display())))?;
    if !out.status.success() || !out.stdout.starts_with(b"\x7fELF") {
        return Err(KbuildError::Other(format!(
            "{tool} -dc {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// Initramfs entries for `wanted` modules and their dependencies from the module tree `tree`
/// (host path of lib/modules/RELEASE): each module (decompressed) under
/// `lib/modules/RELEASE/<its path>`, a `modules.dep` for them (busybox modprobe works), and
/// `etc/vugpu/modules`, the load order that /init insmods at boot.
pub fn pack_modules(
    tree: &Path,
    release: &str,
    wanted: &[String],
) -> Result<Vec<(String, Vec<u8>)>, KbuildError> {
    let dep_file = tree.join("modules.dep");
    let dep = fs::read_to_string(&dep_file).map_err(io_err(format!(
        "read {} (the kernel's module tree)",
        dep_file.display()
    )))?;
    let builtin = fs::read_to_string(tree.join("modules.builtin")).unwrap_or_default();
    let deps = ModuleDeps::parse(&dep, &builtin);
    let order = deps.load_order(wanted).map_err(|unknown| {
        KbuildError::Other(format!(
            "--modules: no module {unknown} for kernel {release} (not in {}, not built in)",
            dep_file.display()
        ))
    })?;
    for w in wanted {
        if deps.is_builtin(w) {
            say!("module {w} is built into {release}: nothing to load");
        }
    }
    let mut entries = Vec::new();
    let mut list = String::new();
    for p in &order {
        let data = read_module(&tree.join(p))?;
        let name = format!("lib/modules/{release}/{}", uncompressed(p));
        list.push_str(&format!("/{name}\n"));
        entries.push((name, data));
    }
    if !order.is_empty() {
        say!(
            "packing {} module(s) for {release}, loaded at boot in this order: {}",
            order.len(),
            order
                .iter()
                .map(|p| module_name(p))
                .collect::<Vec<_>>()
                .join(" ")
        );
        entries.push((
            format!("lib/modules/{release}/modules.dep"),
            deps.subset_dep(&order).into_bytes(),
        ));
        entries.push(("etc/vugpu/modules".to_string(), list.into_bytes()));
    }
    Ok(entries)
}

/// Takes an exclusive lock on `path` (created), saying when someone else holds it.
pub(crate) fn lock(path: &Path) -> Result<File, KbuildError> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err(format!("open {}", path.display())))?;
    if f.try_lock().is_err() {
        say!(
            "waiting for another vugpu-vm holding {} ...",
            path.display()
        );
        f.lock()
            .map_err(io_err(format!("lock {}", path.display())))?;
    }
    Ok(f)
}

/// A finished kernel build.
#[derive(Clone, Debug)]
pub struct BuiltKernel {
    /// The kernel as the runner uses it.
    pub kernel: GuestKernel,
    /// The build tree on the host.
    pub dir: PathBuf,
    /// `linux-source-X.Y` version.
    pub source_version: String,
    /// Wall time of this build (None: taken from the cache).
    pub built_in: Option<Duration>,
    /// CPU time (user + system) of this build's make processes.
    pub cpu: Option<Duration>,
}

/// The trixie root: building kernels and installing distro modules happen in it, so the
/// host-only mode (`--kernel` + `--kernel-build-dir` + `--qemu`, no root) cannot do them.
fn need_root(env: &Env) -> Result<&crate::root::Root, KbuildError> {
    env.root().ok_or_else(|| {
        KbuildError::Other(
            "--build-kernel and Debian's distro modules need the trixie root, which the host-only mode (--kernel, --kernel-build-dir and --qemu together) does not use; run as root without those options".into(),
        )
    })
}

fn root_output(env: &Env, argv: &[&str], what: &str) -> Result<String, KbuildError> {
    Ok(process::output(
        need_root(env)?.command(argv),
        what,
        PROBE_LIMIT,
    )?)
}

/// The installed version of a package in the root, if installed.
fn installed_version(env: &Env, pkg: &str) -> Option<String> {
    let out = root_output(
        env,
        &["dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Version}", pkg],
        "dpkg-query",
    )
    .ok()?;
    let mut w = out.split_whitespace();
    (w.next() == Some("ii")).then(|| w.next().map(str::to_string))?
}

/// X.Y of the newest `linux-source-X.Y` in trixie-backports.
fn newest_series(env: &Env) -> Result<String, KbuildError> {
    let out = root_output(
        env,
        &[
            "apt-cache",
            "depends",
            "-t",
            provision::BACKPORTS,
            "linux-source",
        ],
        "apt-cache depends linux-source",
    )?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: linux-source-"))
        .map(str::to_string)
        .next()
        .ok_or_else(|| {
            KbuildError::Other(format!(
                "cannot find the newest linux-source-X.Y in {} (apt-cache said: {})",
                provision::BACKPORTS,
                out.trim()
            ))
        })
}

/// Resolves the spec's series, installs `linux-source-X.Y` and the build tools when missing
/// (`update`: also when a newer version is available), returns (X.Y, installed version).
fn ensure_source(
    env: &Env,
    spec: &KernelSpec,
    update: bool,
) -> Result<(String, String), KbuildError> {
    let series = match &spec.series {
        Series::Version(v) => v.clone(),
        Series::Newest => {
            let s = newest_series(env)?;
            say!(
                "newest kernel source in {}: linux-source-{s}",
                provision::BACKPORTS
            );
            s
        }
    };
    let pkg = format!("linux-source-{series}");
    let root = need_root(env)?;
    let mut need: Vec<String> = BUILD_TOOLS
        .iter()
        .filter(|(_, f)| !root.host_path(f).exists())
        .map(|(p, _)| p.to_string())
        .collect();
    let tarball = format!("/usr/src/linux-source-{series}.tar.xz");
    if update
        || installed_version(env, &pkg).is_none()
        || !need_root(env)?.host_path(&tarball).is_file()
    {
        need.push(pkg.clone());
    }
    if !need.is_empty() {
        provision::install_in_root(&env.cache, need_root(env)?, &need).map_err(|e| {
            KbuildError::Other(format!(
                "installing {} in the root: {e}{}",
                need.join(" "),
                if need.contains(&pkg) {
                    format!(" (is there a {pkg} package? apt-cache search linux-source)")
                } else {
                    String::new()
                }
            ))
        })?;
    }
    let version = installed_version(env, &pkg)
        .ok_or_else(|| KbuildError::Other(format!("{pkg} is not installed in the root")))?;
    if !need_root(env)?.host_path(&tarball).is_file() {
        return Err(KbuildError::Other(format!(
            "{pkg} {version} has no {tarball}"
        )));
    }
    Ok((series, version))
}

/// Unpacks the source tarball once per source version; returns the tree's path inside the root.
fn ensure_unpacked(env: &Env, series: &str, version: &str) -> Result<String, KbuildError> {
    let kernels = need_root(env)?.host_path(KERNELS_DIR);
    fs::create_dir_all(&kernels).map_err(io_err(format!("create {}", kernels.display())))?;
    let name = format!("src-{}", path_safe(version));
    let _l = lock(&kernels.join(format!("{name}.lock")))?;
    let dir = kernels.join(&name);
    let inner_tree = format!("{KERNELS_DIR}/{name}/linux-source-{series}");
    let marker = dir.join(UNPACKED_MARKER);
    if fs::read_to_string(&marker).is_ok_and(|t| t.trim() == version) {
        return Ok(inner_tree);
    }
    if dir.exists() {
        say!("removing unfinished unpack {}", dir.display());
        fs::remove_dir_all(&dir).map_err(io_err(format!("remove {}", dir.display())))?;
    }
    fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    let t = Instant::now();
    say!(
        "unpacking linux-source-{series} {version} into {} (about a minute)",
        dir.display()
    );
    let c = need_root(env)?.command(&[
        "tar",
        "-xf",
        &format!("/usr/src/linux-source-{series}.tar.xz"),
        "-C",
        &format!("{KERNELS_DIR}/{name}"),
    ]);
    process::run_logged(
        c,
        "unpacking the kernel source",
        &dir.join("unpack.log"),
        STEP_LIMIT,
    )?;
    if !need_root(env)?
        .host_path(&format!("{inner_tree}/Makefile"))
        .is_file()
    {
        return Err(KbuildError::Other(format!(
            "the tarball of linux-source-{series} did not unpack to {inner_tree}"
        )));
    }
    fs::write(&marker, format!("{version}\n"))
        .map_err(io_err(format!("write {}", marker.display())))?;
    say!("unpacked in {}", secs(t.elapsed()));
    Ok(inner_tree)
}

/// The merged fragment for `spec` from guest-tests/kernel/.
pub fn fragment_text(tests: &TestsDir, spec: &KernelSpec) -> Result<String, KbuildError> {
    let mut text = String::new();
    for f in spec.fragments() {
        let p = tests.path.join("kernel").join(f);
        let t = fs::read_to_string(&p).map_err(io_err(format!("read {}", p.display())))?;
        text.push_str(&t);
        if !text.ends_with('\n') {
            text.push('\n');
        }
    }
    Ok(text)
}

/// CPU time (user + system) of the waited-for children so far.
fn children_cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeValLike;
    let Ok(ru) = getrusage(UsageWho::RUSAGE_CHILDREN) else {
        return Duration::ZERO;
    };
    let us = ru.user_time().num_microseconds() + ru.system_time().num_microseconds();
    Duration::from_micros(us.max(0).unsigned_abs())
}

fn jobs() -> u32 {
    std::env::var("VUGPU_KBUILD_JOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_JOBS)
}

/// The kernel of a finished build tree (host path `dir`, inner path `inner`).
fn built_kernel(dir: &Path, inner: &str) -> Result<GuestKernel, KbuildError> {
    let release = fs::read_to_string(dir.join("include/config/kernel.release"))
        .map_err(io_err(format!(
            "read {}/include/config/kernel.release",
            dir.display()
        )))?
        .trim()
        .to_string();
    let config_path = dir.join(".config");
    let cfg = KernelConfig::read(&config_path)?;
    cfg.check(&release, &config_path)?;
    let image = dir.join("arch/x86/boot/bzImage");
    if !image.is_file() {
        return Err(KbuildError::Other(format!(
            "{} is missing",
            image.display()
        )));
    }
    Ok(GuestKernel {
        module_tree: Some(dir.join("mod/lib/modules").join(&release)),
        release,
        image,
        config_path,
        modules: ModuleBuild::InRoot {
            kdir: inner.to_string(),
            cc: cfg.gcc_command(),
        },
        initramfs_extra: Vec::new(),
    })
}

/// Builds (or takes from the cache) the kernel for `spec`. `update`: reinstall the source
/// package when apt has a newer one (the `build-kernel` subcommand).
pub fn build(
    env: &Env,
    tests: &TestsDir,
    spec: &KernelSpec,
    update: bool,
) -> Result<BuiltKernel, KbuildError> {
    let (series, version) = ensure_source(env, spec, update)?;
    let fragment = fragment_text(tests, spec)?;
    let hash = sha256_hex(fragment.as_bytes());
    let name = build_dir_name(&version, spec.variant(), &hash);
    let kernels = need_root(env)?.host_path(KERNELS_DIR);
    fs::create_dir_all(&kernels).map_err(io_err(format!("create {}", kernels.display())))?;
    let dir = kernels.join(&name);
    let inner = format!("{KERNELS_DIR}/{name}");
    let _l = lock(&kernels.join(format!("{name}.lock")))?;
    let marker = dir.join(BUILT_MARKER);
    if marker.is_file() {
        // Used: refresh the marker's mtime (least recently used builds are pruned first).
        let _ = File::options()
            .append(true)
            .open(&marker)
            .and_then(|f| f.set_modified(SystemTime::now()));
        let kernel = built_kernel(&dir, &inner)?;
        say!(
            "kernel {} (--build-kernel {spec}: linux-source-{series} {version}, cached in {})",
            kernel.release,
            dir.display()
        );
        return Ok(BuiltKernel {
            kernel,
            dir,
            source_version: version,
            built_in: None,
            cpu: None,
        });
    }
    let src = ensure_unpacked(env, &series, &version)?;
    let resumed = dir.exists();
    fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    fs::write(dir.join(FRAGMENT_FILE), &fragment).map_err(io_err(format!(
        "write {}",
        dir.join(FRAGMENT_FILE).display()
    )))?;
    let t = Instant::now();
    let cpu0 = children_cpu();
    say!(
        "{} kernel {spec} (linux-source-{series} {version}, fragments {}) in {}; log {}",
        if resumed {
            "resuming the build of"
        } else {
            "building"
        },
        spec.fragments().join(" + "),
        dir.display(),
        dir.join("build.log").display()
    );
    // 1. allnoconfig + fragment, olddefconfig.
    let config_log = dir.join("config.log");
    let _ = fs::remove_file(&config_log);
    let script = "set -e; cd \"$1\"; export ARCH=x86_64; \
                  scripts/kconfig/merge_config.sh -n -O \"$2\" \"$2/vugpu-fragment.config\"; \
                  make -s O=\"$2\" olddefconfig";
    let c = need_root(env)?.command(&["sh", "-c", script, "sh", &src, &inner]);
    process::run_logged(c, "configuring the kernel", &config_log, STEP_LIMIT)?;
    // 2. Everything requested must have survived.
    let config_path = dir.join(".config");
    let cfg = KernelConfig::read(&config_path)?;
    let missing = verify_config(&fragment, &cfg);
    if !missing.is_empty() {
        return Err(KbuildError::ConfigDropped {
            config: config_path,
            fragments: spec
                .fragments()
                .iter()
                .map(|f| format!("guest-tests/kernel/{f}"))
                .collect::<Vec<_>>()
                .join(" + "),
            missing,
        });
    }
    // 3. Build and install the modules into the tree.
    let log = dir.join("build.log");
    let _ = fs::remove_file(&log);
    let j = format!("-j{}", jobs());
    let c = need_root(env)?.command(&[
        "make",
        "-C",
        &src,
        &format!("O={inner}"),
        "ARCH=x86_64",
        &j,
        "bzImage",
        "modules",
    ]);
    process::run_logged(c, "make bzImage modules", &log, BUILD_LIMIT)?;
    let modroot = dir.join("mod");
    if modroot.exists() {
        fs::remove_dir_all(&modroot).map_err(io_err(format!("remove {}", modroot.display())))?;
    }
    let c = need_root(env)?.command(&[
        "make",
        "-C",
        &src,
        &format!("O={inner}"),
        "ARCH=x86_64",
        &format!("INSTALL_MOD_PATH={inner}/mod"),
        "modules_install",
    ]);
    process::run_logged(c, "make modules_install", &log, STEP_LIMIT)?;
    let wall = t.elapsed();
    let cpu = children_cpu().saturating_sub(cpu0);
    let kernel = built_kernel(&dir, &inner)?;
    let size = fs::metadata(&kernel.image).map(|m| m.len()).unwrap_or(0);
    fs::write(
        &marker,
        format!(
            "spec={spec}\nsource=linux-source-{series} {version}\nrelease={}\nfragment_sha256={hash}\n\
             wall_seconds={:.0}\ncpu_seconds={:.0}\njobs={}\nbzimage_bytes={size}\n",
            kernel.release,
            wall.as_secs_f64(),
            cpu.as_secs_f64(),
            jobs()
        ),
    )
    .map_err(io_err(format!("write {}", marker.display())))?;
    say!(
        "built kernel {} in {} (CPU {}, -j{}); bzImage {:.1} MiB",
        kernel.release,
        secs(wall),
        secs(cpu),
        jobs(),
        size as f64 / (1024.0 * 1024.0)
    );
    prune(&kernels, &name);
    Ok(BuiltKernel {
        kernel,
        dir,
        source_version: version,
        built_in: Some(wall),
        cpu: Some(cpu),
    })
}

/// Removes finished builds beyond the [`KEEP_BUILDS`] most recently used (never `current`, never
/// one whose lock is held), then source trees that no remaining build tree (finished or not)
/// was made from.
fn prune(kernels: &Path, current: &str) {
    let Ok(rd) = fs::read_dir(kernels) else {
        return;
    };
    let mut builds: Vec<(SystemTime, String)> = Vec::new();
    let mut sources = Vec::new();
    let mut kept: Vec<String> = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !e.path().is_dir() {
            continue;
        }
        if name.starts_with("src-") {
            sources.push(name);
        } else if let Ok(m) = fs::metadata(e.path().join(BUILT_MARKER)) {
            builds.push((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), name));
        } else {
            // Unfinished (maybe being built right now by another runner): keeps its source.
            kept.push(name);
        }
    }
    builds.sort();
    builds.reverse();
    for (i, (_, name)) in builds.iter().enumerate() {
        if i < KEEP_BUILDS || name == current {
            kept.push(name.clone());
            continue;
        }
        if !remove_unlocked(kernels, name, "the least recently used kernel build") {
            kept.push(name.clone());
        }
    }
    for src in sources {
        let version = &src["src-".len()..];
        if kept.iter().any(|b| b.starts_with(&format!("{version}-"))) {
            continue;
        }
        remove_unlocked(kernels, &src, "the kernel source (no kept build uses it)");
    }
}

/// Removes `kernels/name` unless another runner holds `name.lock` (building or unpacking it);
/// returns whether it was removed.
fn remove_unlocked(kernels: &Path, name: &str, what: &str) -> bool {
    let lock_path = kernels.join(format!("{name}.lock"));
    let Ok(f) = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
    else {
        return false;
    };
    if f.try_lock().is_err() {
        return false;
    }
    say!("removing {what}: {name}");
    let _ = fs::remove_dir_all(kernels.join(name));
    let _ = fs::remove_file(&lock_path);
    true
}

/// `vugpu-vm build-kernel SPEC`: builds (or finds) the kernel and prints where it is.
pub fn print_build(env: &Env, tests: &TestsDir, spec: &KernelSpec) -> Result<(), KbuildError> {
    let b = build(env, tests, spec, true)?;
    let size = fs::metadata(&b.kernel.image).map(|m| m.len()).unwrap_or(0);
    println!("spec:     {spec}");
    println!("source:   {}", b.source_version);
    println!("release:  {}", b.kernel.release);
    println!("image:    {} ({size} bytes)", b.kernel.image.display());
    println!("config:   {}", b.kernel.config_path.display());
    println!("build:    {}", b.dir.display());
    if let Some(t) = &b.kernel.module_tree {
        println!("modules:  {}", t.display());
    }
    match (b.built_in, b.cpu) {
        (Some(w), Some(c)) => {
            println!("time:     {} wall, {} CPU (-j{})", secs(w), secs(c), jobs())
        }
        _ => {
            let marker = fs::read_to_string(b.dir.join(BUILT_MARKER)).unwrap_or_default();
            let get = |k: &str| {
                marker
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap_or("?")
                    .to_string()
            };
            println!(
                "time:     cached (built in {}s wall, {}s CPU, -j{})",
                get("wall_seconds="),
                get("cpu_seconds="),
                get("jobs=")
            );
        }
    }
    Ok(())
}

/// Makes sure the Debian kernel's modules are installed (linux-modules-KVER) with a modules.dep.
fn ensure_debian_modules(env: &Env, tree: &Path) -> Result<(), KbuildError> {
    let release = &env.kernel.release;
    if !tree.join("kernel").is_dir() {
        let pkg = format!("linux-modules-{release}");
        say!("--modules: installing {pkg} in the root (about 110 MB, once)");
        provision::install_in_root(&env.cache, need_root(env)?, std::slice::from_ref(&pkg))
            .map_err(|e| KbuildError::Other(format!("installing {pkg}: {e}")))?;
    }
    if !tree.join("modules.dep").is_file() {
        let c = need_root(env)?.command(&["depmod", release.as_str()]);
        process::output(c, "depmod", STEP_LIMIT)?;
    }
    Ok(())
}

/// Applies `--build-kernel` and `--modules` to a provisioned environment: replaces the kernel
/// with the built one, and fills the kernel's extra initramfs entries with the modules.
pub fn prepare(
    env: &mut Env,
    tests: &TestsDir,
    build_kernel: Option<&KernelSpec>,
    modules: &[String],
) -> Result<(), ProvisionError> {
    if let Some(spec) = build_kernel {
        env.kernel = build(env, tests, spec, false)?.kernel;
    }
    let wanted: Vec<String> = modules
        .iter()
        .flat_map(|m| m.split(','))
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let Some(tree) = env.kernel.module_tree.clone() else {
        return Err(KbuildError::Other(format!(
            "--modules: kernel {} has no known module tree (use Debian's kernel or --build-kernel)",
            env.kernel.release
        ))
        .into());
    };
    if build_kernel.is_none() && env.root().and_then(|r| r.inner_path(&tree)).is_some() {
        ensure_debian_modules(env, &tree)?;
    }
    env.kernel.initramfs_extra = pack_modules(&tree, &env.kernel.release, &wanted)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parsing() {
        let p = |s: &str| s.parse::<KernelSpec>();
        assert_eq!(
            p("6.12").unwrap(),
            KernelSpec {
                series: Series::Version("6.12".into()),
                debug: false
            }
        );
        assert_eq!(
            p("6.12-debug").unwrap(),
            KernelSpec {
                series: Series::Version("6.12".into()),
                debug: true
            }
        );
        assert_eq!(p("newest").unwrap().series, Series::Newest);
        assert!(p("newest-debug").unwrap().debug);
        assert_eq!(p("7.3").unwrap().to_string(), "7.3");
        assert_eq!(p("newest-debug").unwrap().to_string(), "newest-debug");
        for bad in [
            "", "6", "6.12.1", "6.x", "latest", "6.12-dbg", "-debug", "6..12", "debug",
        ] {
            assert!(p(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(p("6.12").unwrap().fragments(), ["vugpu.config"]);
        assert_eq!(
            p("6.12-debug").unwrap().fragments(),
            ["vugpu.config", "debug.config"]
        );
        assert_eq!(p("newest-debug").unwrap().variant(), "debug");
    }

    #[test]
    fn cache_key() {
        let h = sha256_hex(b"abc");
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            build_dir_name("7.3.4-1~bpo13+1", "debug", &h),
            "7.3.4-1_bpo13+1-debug-ba7816bf8f01"
        );
        assert_eq!(
            build_dir_name("6.12.118-1", "normal", &h),
            "6.12.118-1-normal-ba7816bf8f01"
        );
        // Any change of the fragment is a new key.
        let h2 = sha256_hex(b"abc\n");
        assert_ne!(
            build_dir_name("6.12.118-1", "normal", &h),
            build_dir_name("6.12.118-1", "normal", &h2)
        );
        assert_eq!(path_safe("a b/c:d~e"), "a_b_c_d_e");
    }

    #[test]
    fn the_repository_fragments_parse() {
        let tests = TestsDir {
            path: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        };
        let spec: KernelSpec = "6.12-debug".parse().unwrap();
        let text = fragment_text(&tests, &spec).unwrap();
        let req = requested_options(&text);
        // What the runner checks in every kernel must be requested, built in.
        for (o, _) in crate::kernel::FEATURE_OPTIONS
            .iter()
            .chain(crate::kernel::BOOT_OPTIONS)
        {
            assert_eq!(req.get(*o), Some(&Some("y".to_string())), "{o}");
        }
        assert_eq!(req.get("TEST_HMM"), Some(&Some("m".to_string())));
        assert_eq!(req.get("BLK_DEV_NVME"), Some(&Some("y".to_string())));
        // debug.config wins over vugpu.config.
        assert_eq!(
            req.get("LOCALVERSION"),
            Some(&Some("\"-vugpu-debug\"".to_string()))
        );
        assert_eq!(req.get("DEBUG_PAGEALLOC_ENABLE_DEFAULT"), Some(&None));
    }

    #[test]
    fn config_verification_names_what_was_dropped() {
        let fragment = "CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_S=\"x\"\n\
                        CONFIG_D=y\n# a comment\nCONFIG_D=m\n";
        let good = KernelConfig::parse(
            "CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_S=\"x\"\nCONFIG_D=m\n",
        );
        assert!(verify_config(fragment, &good).is_empty());
        let bad = KernelConfig::parse("CONFIG_B=y\nCONFIG_C=y\nCONFIG_S=\"y\"\nCONFIG_D=m\n");
        let v = verify_config(fragment, &bad);
        assert_eq!(v.len(), 4, "{v:?}");
        assert!(
            v.iter().any(|m| m == "CONFIG_A=y (.config has unset)"),
            "{v:?}"
        );
        assert!(
            v.iter().any(|m| m == "CONFIG_B=m (.config has =y)"),
            "{v:?}"
        );
        assert!(
            v.iter().any(|m| m.starts_with("CONFIG_C must be unset")),
            "{v:?}"
        );
        assert!(v.iter().any(|m| m.starts_with("CONFIG_S=\"x\"")), "{v:?}");
        let e = KbuildError::ConfigDropped {
            config: PathBuf::from("/k/.config"),
            fragments: "guest-tests/kernel/vugpu.config".into(),
            missing: v,
        };
        assert!(e.to_string().contains("  CONFIG_A=y"), "{e}");
    }

    #[test]
    fn prune_keeps_the_most_recently_used_and_their_sources() {
        let k = std::env::temp_dir().join(format!("vugpu-kbuild-prune-{}", std::process::id()));
        let _ = fs::remove_dir_all(&k);
        let t0 = SystemTime::now() - Duration::from_secs(3600);
        // Six finished builds of two sources, oldest first, plus an unfinished one of a third.
        let names = [
            "1.0-1-normal-aaa",
            "1.0-1-debug-bbb",
            "2.0-1-normal-ccc",
            "2.0-1-debug-ddd",
            "2.0-1-normal-eee",
            "2.0-1-normal-fff",
        ];
        for (i, n) in names.iter().enumerate() {
            fs::create_dir_all(k.join(n)).unwrap();
            let m = k.join(n).join(BUILT_MARKER);
            fs::write(&m, "x").unwrap();
            File::options()
                .append(true)
                .open(&m)
                .unwrap()
                .set_modified(t0 + Duration::from_secs(60 * i as u64))
                .unwrap();
        }
        fs::create_dir_all(k.join("3.0-1-normal-ggg")).unwrap();
        for s in ["src-1.0-1", "src-2.0-1", "src-3.0-1", "src-4.0-1"] {
            fs::create_dir_all(k.join(s)).unwrap();
        }
        prune(&k, "1.0-1-normal-aaa");
        let left = |n: &str| k.join(n).exists();
        assert!(left("1.0-1-normal-aaa"), "the current build stays");
        assert!(!left("1.0-1-debug-bbb"), "the least recently used goes");
        for n in &names[2..] {
            assert!(left(n), "{n}");
        }
        assert!(left("3.0-1-normal-ggg"), "unfinished builds are not pruned");
        assert!(left("src-1.0-1") && left("src-2.0-1") && left("src-3.0-1"));
        assert!(!left("src-4.0-1"), "a source no build uses goes");
        fs::remove_dir_all(&k).unwrap();
    }

    const DEP: &str = "\
kernel/drivers/nvme/host/nvme.ko.xz: kernel/drivers/nvme/host/nvme-core.ko.xz kernel/drivers/nvme/common/nvme-keyring.ko.xz kernel/drivers/nvme/common/nvme-auth.ko.xz
kernel/drivers/nvme/host/nvme-core.ko.xz: kernel/drivers/nvme/common/nvme-keyring.ko.xz kernel/drivers/nvme/common/nvme-auth.ko.xz
kernel/drivers/nvme/common/nvme-auth.ko.xz: kernel/drivers/nvme/common/nvme-keyring.ko.xz
kernel/drivers/nvme/common/nvme-keyring.ko.xz:
kernel/lib/test_hmm.ko:
kernel/a/loop1.ko: kernel/a/loop2.ko
kernel/a/loop2.ko: kernel/a/loop1.ko
";

    #[test]
    fn modules_dep_load_order() {
        let d = ModuleDeps::parse(DEP, "kernel/drivers/block/loop.ko\n");
        let order = d.load_order(&["nvme".into()]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/nvme/common/nvme-keyring.ko.xz",
                "kernel/drivers/nvme/common/nvme-auth.ko.xz",
                "kernel/drivers/nvme/host/nvme-core.ko.xz",
                "kernel/drivers/nvme/host/nvme.ko.xz",
            ]
        );
        // Names match with - or _, each module once, requests in order.
        let order = d
            .load_order(&["test-hmm".into(), "nvme_core".into(), "nvme".into()])
            .unwrap();
        assert_eq!(order.len(), 5);
        assert_eq!(order[0], "kernel/lib/test_hmm.ko");
        assert_eq!(order[4], "kernel/drivers/nvme/host/nvme.ko.xz");
        // Built in: nothing to load; unknown: named.
        assert_eq!(
            d.load_order(&["loop".into()]).unwrap(),
            Vec::<String>::new()
        );
        assert!(d.is_builtin("loop"));
        assert_eq!(
            d.load_order(&["nvme".into(), "nope".into(), "x".into()])
                .unwrap_err(),
            "nope, x"
        );
        // A cycle does not loop forever.
        assert_eq!(d.load_order(&["loop1".into()]).unwrap().len(), 2);
        let sub = d.subset_dep(&d.load_order(&["nvme_auth".into()]).unwrap());
        assert_eq!(
            sub,
            "kernel/drivers/nvme/common/nvme-keyring.ko:\n\
             kernel/drivers/nvme/common/nvme-auth.ko: kernel/drivers/nvme/common/nvme-keyring.ko\n"
        );
        assert_eq!(module_name("kernel/x/nvme-core.ko.zst"), "nvme_core");
    }

    #[test]
    fn pack_decompresses_and_writes_the_load_order() {
        if find_in_path("xz").is_none() {
            return;
        }
        let base = std::env::temp_dir().join(format!("vugpu-kbuild-pack-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let tree = base.join("lib/modules/7.3.0-test");
        fs::create_dir_all(tree.join("kernel/m")).unwrap();
        fs::write(
            tree.join("modules.dep"),
            "kernel/m/a.ko.xz: kernel/m/b.ko\nkernel/m/b.ko:\n",
        )
        .unwrap();
        fs::write(tree.join("kernel/m/b.ko"), b"\x7fELFb").unwrap();
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf '\\177ELFa' | xz -c > {}",
                tree.join("kernel/m/a.ko.xz").display()
            ))
            .status()
            .unwrap();
        assert!(st.success());
        let e = pack_modules(&tree, "7.3.0-test", &["a".into()]).unwrap();
        let get = |n: &str| e.iter().find(|x| x.0 == n).map(|x| x.1.clone());
        assert_eq!(
            get("lib/modules/7.3.0-test/kernel/m/a.ko").unwrap(),
            b"\x7fELFa"
        );
        assert_eq!(
            get("lib/modules/7.3.0-test/kernel/m/b.ko").unwrap(),
            b"\x7fELFb"
        );
        assert_eq!(
            get("etc/vugpu/modules").unwrap(),
            b"/lib/modules/7.3.0-test/kernel/m/b.ko\n/lib/modules/7.3.0-test/kernel/m/a.ko\n"
        );
        assert_eq!(
            get("lib/modules/7.3.0-test/modules.dep").unwrap(),
            b"kernel/m/b.ko:\nkernel/m/a.ko: kernel/m/b.ko\n"
        );
        assert!(pack_modules(&tree, "7.3.0-test", &["zz".into()])
            .unwrap_err()
            .to_string()
            .contains("no module zz"));
        fs::remove_dir_all(&base).unwrap();
    }
}
