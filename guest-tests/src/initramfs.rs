//! The guest's initramfs: busybox-static, `/init`, the vugpu module, the userspace tests and the
//! suite scripts, written as a newc cpio archive and gzip-compressed.
//!
//! ```text
//! /init                       guest-tests/initramfs/init (contract in README.md)
//! /bin/busybox                busybox-static from the root (host-only mode: the host's static
//!                             busybox); /init installs the applet links
//! /bin/<test>                 every executable that `make -C guest-tests/user OUT=...` produced
//! /lib/modules/<name>.ko      every module `make -C guest-tests/kmod KDIR=...` produced (vugpu.ko)
//! /suites/<name>.sh           guest-tests/suites/*.sh
//! /suites/lib/<path>          every file under guest-tests/suites/lib/ (sourced by the suites)
//! /etc/vugpu/env              VUGPU_GPUS=..., sourced by /init (exported to suites)
//! /etc/vugpu/cmd              the `-- CMD` command line, shell-quoted
//! /dev/console                so the kernel can open a console before devtmpfs is mounted
//! ```
//!
//! The module and the tests build incrementally in persistent trees (sources are synced into
//! them, touching only files whose content changed, so `make` rebuilds only what changed).
//!
//! The newc writer is ours (about 100 lines of headers for files, directories and device nodes
//! with explicit modes: less than a dependency); shell quoting comes from `shlex`.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::kernel::ModuleBuild;
use crate::process::{self, ProcessError};
use crate::provision::{secs, Env};

/// Bound for one `make`.
const BUILD_LIMIT: Duration = Duration::from_secs(15 * 60);
/// Files larger than this are refused (a cpio newc entry holds at most 4 GiB; an initramfs
/// this large is a mistake anyway).
const MAX_FILE: u64 = 512 * 1024 * 1024;

/// The `/init` shipped with the runner, used when guest-tests/initramfs/init is not found.
pub const EMBEDDED_INIT: &str = include_str!("../initramfs/init");

/// Errors building the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// File-system work failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: io::Error,
    },
    /// A build failed.
    #[error(transparent)]
    Build(#[from] ProcessError),
    /// An entry cannot be represented.
    #[error("cannot put {0} into the initramfs")]
    BadEntry(String),
    /// The kernel's kselftest harness the test programs are built on is unavailable.
    #[error(transparent)]
    Harness(#[from] Box<crate::kbuild::KbuildError>),
    /// A build that needs the trixie root, in host-only mode.
    #[error("{0} must be built in the trixie root, but host-only mode has none")]
    NoRoot(&'static str),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> InitramfsError {
    let what = what.into();
    move |source| InitramfsError::Io { what, source }
}

/// A newc ("070701") cpio writer.
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
    dirs: BTreeSet<String>,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            ino: 0,
            written: 0,
            dirs: BTreeSet::new(),
        }
    }

    fn header(&mut self, name: &str, mode: u32, size: u32, rdev: (u32, u32)) -> io::Result<()> {
        if name.is_empty() || name.starts_with('/') || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad cpio name {name:?}"),
            ));
        }
        self.ino += 1;
        let namesize = u32::try_from(name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name too long"))?;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let h = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0
        );
        self.put(h.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    /// Adds a directory (and its missing parents).
    pub fn dir(&mut self, name: &str) -> io::Result<()> {
        let mut path = String::new();
        for part in name.split('/').filter(|p| !p.is_empty()) {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(part);
            if self.dirs.insert(path.clone()) {
                let p = path.clone();
                self.header(&p, 0o040755, 0, (0, 0))?;
            }
        }
        Ok(())
    }

    fn parent(&mut self, name: &str) -> io::Result<()> {
        match name.rsplit_once('/') {
            Some((dir, _)) => self.dir(dir),
            None => Ok(()),
        }
    }

    /// Adds a regular file with `perm` (e.g. 0o755).
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.parent(name)?;
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
        self.header(name, 0o100000 | (perm & 0o7777), size, (0, 0))?;
        self.put(data)?;
        self.pad()
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.parent(name)?;
        self.header(name, 0o020000 | (perm & 0o7777), 0, (major, minor))
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, (0, 0))?;
        // The kernel reads the archive in 512-byte blocks happily without further padding.
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Quotes words for `sh` (the `shlex` crate). A NUL byte, which no shell word can carry, is
/// dropped (no caller passes one: words come from argv, the environment, or [`split_words`],
/// which refuses them), so quoting cannot fail.
///
/// [`split_words`]: crate::cli::split_words
pub fn shell_quote(words: &[String]) -> String {
    let words: Vec<String> = words.iter().map(|w| w.replace('\0', "")).collect();
    shlex::try_join(words.iter().map(String::as_str)).unwrap_or_default()
}

/// Copies the tree `src` into `dst`, rewriting only files whose content differs (so mtimes of
/// unchanged files stay and `make` stays incremental), and deleting files that a previous sync
/// created but `src` no longer has (recorded in `dst/.vugpu-synced`). Build outputs are kept.
pub fn sync_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let manifest = dst.join(".vugpu-synced");
    let old: BTreeSet<String> = fs::read_to_string(&manifest)
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default();
    let mut now = BTreeSet::new();
    fn walk(base: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
        for e in fs::read_dir(base.join(rel))? {
            let e = e?;
            let name = e.file_name();
            let r = rel.join(&name);
            let ft = e.file_type()?;
            let n = name.to_string_lossy();
            if n.starts_with('.') || is_build_output(&n) {
                continue;
            }
            if ft.is_dir() {
                walk(base, &r, out)?;
            } else if ft.is_file() {
                out.push(r);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(src, Path::new(""), &mut files)?;
    for rel in files {
        let from = src.join(&rel);
        let to = dst.join(&rel);
        let data = fs::read(&from)?;
        if fs::read(&to).ok().as_deref() != Some(&data[..]) {
            if let Some(d) = to.parent() {
                fs::create_dir_all(d)?;
            }
            fs::write(&to, &data)?;
        }
        let mode = fs::metadata(&from)?.permissions().mode();
        fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
        now.insert(rel.to_string_lossy().into_owned());
    }
    for gone in old.difference(&now) {
        let _ = fs::remove_file(dst.join(gone));
    }
    fs::create_dir_all(dst)?;
    let mut m: String = now.iter().map(|s| format!("{s}\n")).collect();
    if m.is_empty() {
        m.push('\n');
    }
    fs::write(manifest, m)
}

/// Build products that must not be copied from a source tree someone built in by hand (they
/// would look newer than the sources in the mirror).
fn is_build_output(name: &str) -> bool {
    matches!(name, "Module.symvers" | "modules.order" | "out")
        || [".o", ".ko", ".mod", ".mod.c", ".a", ".cmd"]
            .iter()
            .any(|e| name.ends_with(e))
}

/// Guest-side sources (the repository's guest-tests directory).
#[derive(Clone, Debug)]
pub struct TestsDir {
    /// guest-tests/.
    pub path: PathBuf,
}

impl TestsDir {
    fn part(&self, name: &str) -> Option<PathBuf> {
        let p = self.path.join(name);
        p.join("Makefile").is_file().then_some(p)
    }

    /// Names of the suites (the regular files guest-tests/suites/*.sh, without `.sh`; nothing
    /// below suites/, so suites/lib/ is not a suite), sorted.
    pub fn suites(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.path.join("suites"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_file())
                    .filter_map(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .strip_suffix(".sh")
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The files the suites source: every file under guest-tests/suites/lib/ (recursively;
    /// names starting with `.` are left out), as (path relative to lib/, host path), sorted.
    /// No lib/ directory is no files; a lib/ that cannot be read is an error.
    pub fn suite_lib(&self) -> Result<Vec<(String, PathBuf)>, InitramfsError> {
        fn walk(
            dir: &Path,
            rel: &str,
            out: &mut Vec<(String, PathBuf)>,
        ) -> Result<(), InitramfsError> {
            let rd = fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))?;
            for e in rd {
                let e = e.map_err(io_err(format!("read {}", dir.display())))?;
                let path = e.path();
                let name = e
                    .file_name()
                    .into_string()
                    .map_err(|_| InitramfsError::BadEntry(path.display().to_string()))?;
                if name.starts_with('.') {
                    continue;
                }
                let r = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let ft = e
                    .file_type()
                    .map_err(io_err(format!("{}", path.display())))?;
                if ft.is_dir() {
                    walk(&path, &r, out)?;
                } else if path.is_file() {
                    out.push((r, path));
                }
            }
            Ok(())
        }
        let lib = self.path.join("suites/lib");
        let mut v = Vec::new();
        if lib.is_dir() {
            walk(&lib, "", &mut v)?;
        }
        v.sort();
        Ok(v)
    }

    /// The /init script (guest-tests/initramfs/init, or the embedded copy).
    pub fn init(&self) -> Vec<u8> {
        fs::read(self.path.join("initramfs/init"))
            .unwrap_or_else(|_| EMBEDDED_INIT.as_bytes().to_vec())
    }

    /// Extra apt packages requested by guest-tests/{kmod,user}/apt-packages.
    pub fn apt_packages(&self) -> Vec<String> {
        ["kmod", "user"]
            .iter()
            .filter_map(|d| fs::read_to_string(self.path.join(d).join("apt-packages")).ok())
            .flat_map(|t| {
                t.lines()
                    .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Holds an exclusive lock on a build tree for the duration of a build.
fn lock_tree(dir: &Path) -> Result<File, InitramfsError> {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    let lock = dir.with_file_name(name);
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(io_err(format!("open {}", lock.display())))?;
    if f.try_lock().is_err() {
        say!(
            "waiting for another vugpu-vm building in {} ...",
            dir.display()
        );
        f.lock()
            .map_err(io_err(format!("lock {}", lock.display())))?;
    }
    Ok(f)
}

fn files_in(dir: &Path, pred: impl Fn(&Path, &fs::Metadata) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && pred(p, &m)))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Parts of guest-tests mirrored into build trees (with their relative layout, since the
/// Makefiles refer to each other, e.g. user/ includes ../kmod/vugpu_uapi.h).
const MIRRORED: &[&str] = &["kmod", "user"];

/// What the guest-side builds produced.
#[derive(Debug, Default)]
pub struct Built {
    /// Kernel modules.
    pub modules: Vec<PathBuf>,
    /// Test programs.
    pub bins: Vec<PathBuf>,
}

fn mirror(tests: &TestsDir, dst: &Path) -> Result<(), InitramfsError> {
    for part in MIRRORED {
        let src = tests.path.join(part);
        if src.is_dir() {
            let to = dst.join(part);
            sync_tree(&src, &to).map_err(io_err(format!(
                "copy {} to {}",
                src.display(),
                to.display()
            )))?;
        }
    }
    Ok(())
}

fn release_dir_name(release: &str) -> String {
    release
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-+_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Builds guest-tests/kmod for the guest kernel and guest-tests/user (static programs), in
/// mirrored trees; parts without a Makefile are skipped with a message.
pub fn build(env: &Env, tests: &TestsDir, run_dir: &Path) -> Result<Built, InitramfsError> {
    let mut built = Built::default();
    let has_kmod = tests.part("kmod").is_some();
    let has_user = tests.part("user").is_some();
    if !has_kmod {
        say!(
            "note: {} has no Makefile yet: the initramfs has no vugpu.ko",
            tests.path.join("kmod").display()
        );
    }
    if !has_user {
        say!(
            "note: {} has no Makefile yet: the initramfs has no test programs",
            tests.path.join("user").display()
        );
    }
    if !has_kmod && !has_user {
        return Ok(built);
    }
    // The root's mirror: user programs always build here; the module too for Debian's kernel.
    // In host-only mode a mirror in the cache, built with the host's tools.
    let inner_src = "/var/lib/vugpu/src";
    let src = match env.root() {
        Some(root) => root.host_path(inner_src),
        None => env.cache.join("build/host-src"),
    };
    fs::create_dir_all(&src).map_err(io_err(format!("create {}", src.display())))?;
    let _lock = lock_tree(&src)?;
    mirror(tests, &src)?;
    if has_kmod {
        let release = &env.kernel.release;
        let log = run_dir.join("build-kmod.log");
        // The per-kernel module tree's lock, held until its build is done.
        let mut _kmod_lock = None;
        let (dir, cmd) = match &env.kernel.modules {
            ModuleBuild::Unavailable(why) => {
                say!("note: {why}; the initramfs has no vugpu.ko");
                (None, None)
            }
            ModuleBuild::InRoot { kdir, cc } => {
                let root = env.root().ok_or(InitramfsError::NoRoot("vugpu.ko"))?;
                // One module tree per kernel build tree: kbuild's incremental build does not
                // notice that KDIR changed when two builds share a source tree (6.12 and
                // 6.12-debug), and would link objects compiled for the other config.
                let key =
                    release_dir_name(kdir.rsplit('/').find(|c| !c.is_empty()).unwrap_or(kdir));
                let tree = format!("/var/lib/vugpu/build/kmod-{key}");
                let host_tree = root.host_path(&tree);
                fs::create_dir_all(&host_tree)
                    .map_err(io_err(format!("create {}", host_tree.display())))?;
                _kmod_lock = Some(lock_tree(&host_tree)?);
                mirror(tests, &host_tree)?;
                let inner = format!("{tree}/kmod");
                let mut argv = vec![
                    "make".to_string(),
                    "-C".into(),
                    inner.clone(),
                    format!("KDIR={kdir}"),
                ];
                if let Some(cc) = cc {
                    argv.push(format!("CC={cc}"));
                }
                (Some(root.host_path(&inner)), Some(root.command(&argv)))
            }
            ModuleBuild::Host { kdir, cc } => {
                let tree = env
                    .cache
                    .join("build")
                    .join(format!("src-{}", release_dir_name(release)));
                fs::create_dir_all(&tree).map_err(io_err(format!("create {}", tree.display())))?;
                mirror(tests, &tree)?;
                let dir = tree.join("kmod");
                let mut c = Command::new("make");
                c.arg("-C")
                    .arg(&dir)
                    .arg(format!("KDIR={}", kdir.display()));
                if let Some(cc) = cc {
                    c.arg(format!("CC={cc}"));
                }
                (Some(dir), Some(c))
            }
        };
        if let (Some(dir), Some(cmd)) = (dir, cmd) {
            let t = Instant::now();
            process::run_logged(cmd, "building guest-tests/kmod", &log, BUILD_LIMIT)?;
            built.modules = files_in(&dir, |p, _| p.extension().is_some_and(|e| e == "ko"));
            if built.modules.is_empty() {
                return Err(InitramfsError::BadEntry(format!(
                    "no .ko after building guest-tests/kmod (see {})",
                    log.display()
                )));
            }
            say!(
                "built {} for {release} in {}",
                built
                    .modules
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect::<Vec<_>>()
                    .join(", "),
                secs(t.elapsed())
            );
        }
    }
    let has_user = has_user
        && match &env.kernel.modules {
            ModuleBuild::Unavailable(why) => {
                say!(
                    "note: the test programs are built on the guest kernel's kselftest_harness.h, \
                     but its source is unavailable ({why}); the initramfs has no test programs"
                );
                false
            }
            _ => true,
        };
    if has_user {
        // The programs are built on the guest kernel's kselftest_harness.h; one output directory
        // per harness, so that runs with different kernels do not rebuild each other's.
        let harness = crate::kselftest::harness(env).map_err(Box::new)?;
        let inner_out = format!("/var/lib/vugpu/build/user-out-{}", harness.key);
        let out = match env.root() {
            Some(root) => root.host_path(&inner_out),
            None => env
                .cache
                .join(format!("build/host-user-out-{}", harness.key)),
        };
        fs::create_dir_all(&out).map_err(io_err(format!("create {}", out.display())))?;
        let t = Instant::now();
        let cmd = match env.root() {
            Some(root) => root.command(&[
                "make".to_string(),
                "-C".into(),
                format!("{inner_src}/user"),
                format!("OUT={inner_out}"),
                format!("KSELFTEST_DIR={}", harness.dir),
            ]),
            None => {
                let mut c = Command::new("make");
                c.arg("-C")
                    .arg(src.join("user"))
                    .arg(format!("OUT={}", out.display()))
                    .arg(format!("KSELFTEST_DIR={}", harness.dir));
                c
            }
        };
        process::run_logged(
            cmd,
            "building guest-tests/user",
            &run_dir.join("build-user.log"),
            BUILD_LIMIT,
        )?;
        built.bins = files_in(&out, |_, m| m.permissions().mode() & 0o111 != 0);
        say!(
            "built {} test program(s) on the kselftest harness of {} in {}",
            built.bins.len(),
            harness.label,
            secs(t.elapsed())
        );
    }
    // Take private copies while the tree is locked: another run may rebuild it right after.
    built.modules = snapshot(&built.modules, &run_dir.join("artifacts/modules"))?;
    built.bins = snapshot(&built.bins, &run_dir.join("artifacts/bin"))?;
    Ok(built)
}

/// Copies `files` into `dir`; returns the copies.
fn snapshot(files: &[PathBuf], dir: &Path) -> Result<Vec<PathBuf>, InitramfsError> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    files
        .iter()
        .map(|f| {
            let to = dir.join(file_name(f)?);
            fs::copy(f, &to).map_err(io_err(format!("copy {}", f.display())))?;
            Ok(to)
        })
        .collect()
}

/// What goes into one initramfs.
#[derive(Clone, Debug, Default)]
pub struct Contents {
    /// /init.
    pub init: Vec<u8>,
    /// busybox-static on the host.
    pub busybox: PathBuf,
    /// Kernel modules for /lib/modules.
    pub modules: Vec<PathBuf>,
    /// Test programs for /bin.
    pub bins: Vec<PathBuf>,
    /// Suite scripts for /suites.
    pub suites: Vec<PathBuf>,
    /// Files for /suites/lib: (path relative to lib/, host file).
    pub suite_lib: Vec<(String, PathBuf)>,
    /// `-- CMD` words.
    pub cmd: Option<Vec<String>>,
    /// Variables for /etc/vugpu/env.
    pub env: Vec<(String, String)>,
    /// Further entries (archive path, content), e.g. `--modules` under
    /// /lib/modules/RELEASE/ and their load order /etc/vugpu/modules.
    pub extra: Vec<(String, Vec<u8>)>,
}

fn add_host_file<W: Write>(
    w: &mut CpioWriter<W>,
    name: &str,
    host: &Path,
    perm: u32,
) -> Result<(), InitramfsError> {
    let len = fs::metadata(host)
        .map_err(io_err(format!("{}", host.display())))?
        .len();
    if len > MAX_FILE {
        return Err(InitramfsError::BadEntry(format!(
            "{} ({len} bytes, too large)",
            host.display()
        )));
    }
    let data = fs::read(host).map_err(io_err(format!("read {}", host.display())))?;
    w.file(name, perm, &data)
        .map_err(io_err(format!("write initramfs entry {name}")))
}

fn file_name(p: &Path) -> Result<String, InitramfsError> {
    p.file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .ok_or_else(|| InitramfsError::BadEntry(p.display().to_string()))
}

/// Writes the archive for `c` to `out` through `gzip -1`.
pub fn write(c: &Contents, out: &Path) -> Result<u64, InitramfsError> {
    let file = File::create(out).map_err(io_err(format!("create {}", out.display())))?;
    let mut gz = Command::new("gzip");
    gz.args(["-1", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(file)
        .stderr(Stdio::inherit());
    process::die_with_parent(&mut gz);
    let mut child = gz.spawn().map_err(io_err("start gzip"))?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| InitramfsError::BadEntry("gzip stdin".into()))?;
    let result = write_cpio(c, io::BufWriter::new(stdin));
    let status = child.wait().map_err(io_err("wait for gzip"))?;
    result?;
    if !status.success() {
        return Err(InitramfsError::BadEntry(format!("gzip failed ({status})")));
    }
    fs::metadata(out)
        .map(|m| m.len())
        .map_err(io_err(format!("{}", out.display())))
}

fn write_cpio<W: Write>(c: &Contents, out: W) -> Result<(), InitramfsError> {
    let mut w = CpioWriter::new(out);
    let e = |what: &str| io_err(format!("write initramfs entry {what}"));
    for d in [
        "bin",
        "sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "root",
        "etc/vugpu",
        "lib/modules",
        "suites",
    ] {
        w.dir(d).map_err(e(d))?;
    }
    w.char_dev("dev/console", 0o600, 5, 1)
        .map_err(e("dev/console"))?;
    w.file("init", 0o755, &c.init).map_err(e("init"))?;
    add_host_file(&mut w, "bin/busybox", &c.busybox, 0o755)?;
    for m in &c.modules {
        add_host_file(&mut w, &format!("lib/modules/{}", file_name(m)?), m, 0o644)?;
    }
    for b in &c.bins {
        add_host_file(&mut w, &format!("bin/{}", file_name(b)?), b, 0o755)?;
    }
    for s in &c.suites {
        add_host_file(&mut w, &format!("suites/{}", file_name(s)?), s, 0o755)?;
    }
    for (rel, host) in &c.suite_lib {
        add_host_file(&mut w, &format!("suites/lib/{rel}"), host, 0o644)?;
    }
    let env: String = c
        .env
        .iter()
        .map(|(k, v)| format!("{k}={}\n", shell_quote(std::slice::from_ref(v))))
        .collect();
    w.file("etc/vugpu/env", 0o644, env.as_bytes())
        .map_err(e("etc/vugpu/env"))?;
    for (name, data) in &c.extra {
        w.file(name, 0o644, data).map_err(e(name))?;
    }
    if let Some(cmd) = &c.cmd {
        let line = format!("{}\n", shell_quote(cmd));
        w.file("etc/vugpu/cmd", 0o644, line.as_bytes())
            .map_err(e("etc/vugpu/cmd"))?;
    }
    w.finish().map_err(e("trailer"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal newc reader for the tests: (name, mode, rdevmajor, data).
    fn read_cpio(mut b: &[u8]) -> Vec<(String, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut off = 0usize;
        loop {
            assert_eq!(&b[..6], b"070701", "magic at {off}");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let mode = field(1);
            let size = field(6) as usize;
            let rmaj = field(9);
            let namesize = field(11) as usize;
            let name = std::str::from_utf8(&b[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            let mut p = 110 + namesize;
            p += (4 - (off + p) % 4) % 4;
            let data = b[p..p + size].to_vec();
            p += size;
            p += (4 - (off + p) % 4) % 4;
            if name == "TRAILER!!!" {
                return out;
            }
            out.push((name, mode, rmaj, data));
            b = &b[p..];
            off += p;
        }
    }

    #[test]
    fn cpio_roundtrip_with_padding() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("etc/vugpu/cmd", 0o644, b"uname -r\n").unwrap();
        w.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.dir("etc").unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let e = read_cpio(&bytes);
        let names: Vec<&str> = e.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "etc",
                "etc/vugpu",
                "etc/vugpu/cmd",
                "init",
                "dev",
                "dev/console"
            ]
        );
        assert_eq!(e[0].1, 0o040755);
        assert_eq!(e[2].3, b"uname -r\n");
        assert_eq!(e[3].1, 0o100755);
        assert_eq!(e[5].1, 0o020600);
        assert_eq!(e[5].2, 5);
    }

    #[test]
    fn cpio_rejects_absolute_names() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("/init", 0o755, b"").is_err());
    }

    #[test]
    fn quoting() {
        let q = |v: &[&str]| shell_quote(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(q(&["uname", "-r"]), "uname -r");
        assert_eq!(
            q(&["sh", "-c", "cat /sys/bus/pci/devices/*/vendor"]),
            "sh -c 'cat /sys/bus/pci/devices/*/vendor'"
        );
        assert_eq!(q(&["echo", "it's", ""]), "echo \"it's\" ''");
        assert_eq!(q(&["a'b\"c"]), "\"a'b\\\"c\"");
    }

    #[test]
    fn quoting_survives_sh() {
        let words: Vec<String> = [
            "printf", "%s|", "a b", "it's", "$HOME", "*", "", "a'b\"c", "`x`", "\\", "#",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = Command::new("sh")
            .args(["-c", &shell_quote(&words)])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "a b|it's|$HOME|*||a'b\"c|`x`|\\|#|"
        );
    }

    #[test]
    fn sync_keeps_unchanged_mtimes_and_removes_deleted() {
        let base = std::env::temp_dir().join(format!("vugpu-sync-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let (src, dst) = (base.join("src"), base.join("dst"));
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("a.c"), "a").unwrap();
        fs::write(src.join("sub/b.c"), "b").unwrap();
        sync_tree(&src, &dst).unwrap();
        fs::write(dst.join("a.o"), "obj").unwrap();
        let m1 = fs::metadata(dst.join("a.c")).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        fs::remove_file(src.join("sub/b.c")).unwrap();
        sync_tree(&src, &dst).unwrap();
        assert_eq!(
            fs::metadata(dst.join("a.c")).unwrap().modified().unwrap(),
            m1
        );
        assert!(!dst.join("sub/b.c").exists());
        assert!(dst.join("a.o").exists(), "build outputs are kept");
        fs::write(src.join("a.c"), "a2").unwrap();
        sync_tree(&src, &dst).unwrap();
        assert_eq!(fs::read_to_string(dst.join("a.c")).unwrap(), "a2");
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn archive_has_the_contract_layout() {
        let base = std::env::temp_dir().join(format!("vugpu-cpio-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        let bb = base.join("busybox");
        fs::write(&bb, "bb").unwrap();
        let ko = base.join("vugpu.ko");
        fs::write(&ko, "ko").unwrap();
        let suite = base.join("smoke.sh");
        fs::write(&suite, "echo").unwrap();
        let lib = base.join("suite.sh");
        fs::write(&lib, "suite_end() { :; }").unwrap();
        let c = Contents {
            init: b"#!/bin/busybox sh\n".to_vec(),
            busybox: bb,
            modules: vec![ko],
            bins: vec![],
            suites: vec![suite],
            suite_lib: vec![("suite.sh".into(), lib)],
            cmd: Some(vec!["uname".into(), "-r".into()]),
            env: vec![("VUGPU_GPUS".into(), "2".into())],
            extra: vec![("etc/vugpu/modules".into(), b"/lib/modules/x.ko\n".to_vec())],
        };
        let mut buf = Vec::new();
        write_cpio(&c, &mut buf).unwrap();
        let e = read_cpio(&buf);
        let get = |n: &str| e.iter().find(|x| x.0 == n).map(|x| x.3.clone());
        assert_eq!(get("lib/modules/vugpu.ko").unwrap(), b"ko");
        assert_eq!(get("suites/smoke.sh").unwrap(), b"echo");
        assert_eq!(get("suites/lib/suite.sh").unwrap(), b"suite_end() { :; }");
        let mode = |n: &str| e.iter().find(|x| x.0 == n).map(|x| x.1);
        assert_eq!(mode("suites/lib"), Some(0o040755), "directory entry first");
        assert_eq!(mode("suites/lib/suite.sh"), Some(0o100644));
        assert_eq!(get("etc/vugpu/cmd").unwrap(), b"uname -r\n");
        assert_eq!(get("etc/vugpu/env").unwrap(), b"VUGPU_GPUS=2\n");
        assert_eq!(get("etc/vugpu/modules").unwrap(), b"/lib/modules/x.ko\n");
        assert!(get("init").is_some());
        assert!(get("bin/busybox").is_some());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn suites_are_top_level_scripts_and_lib_is_packed_whole() {
        let base = std::env::temp_dir().join(format!("vugpu-suites-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let suites = base.join("suites");
        fs::create_dir_all(suites.join("lib/sub")).unwrap();
        fs::create_dir_all(suites.join("dir.sh")).unwrap();
        fs::write(suites.join("smoke.sh"), "s").unwrap();
        fs::write(suites.join("dma.sh"), "d").unwrap();
        fs::write(suites.join("README"), "r").unwrap();
        fs::write(suites.join("lib/suite.sh"), "lib").unwrap();
        fs::write(suites.join("lib/helpers.awk"), "awk").unwrap();
        fs::write(suites.join("lib/sub/more.sh"), "more").unwrap();
        fs::write(suites.join("lib/.suite.sh.swp"), "swap").unwrap();
        let t = TestsDir { path: base.clone() };
        assert_eq!(t.suites(), ["dma", "smoke"]);
        let lib = t.suite_lib().unwrap();
        let names: Vec<&str> = lib.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(names, ["helpers.awk", "sub/more.sh", "suite.sh"]);
        assert_eq!(lib[2].1, suites.join("lib/suite.sh"));

        let bb = base.join("busybox");
        fs::write(&bb, "bb").unwrap();
        let c = Contents {
            busybox: bb,
            suites: vec![suites.join("dma.sh")],
            suite_lib: lib,
            ..Contents::default()
        };
        let mut buf = Vec::new();
        write_cpio(&c, &mut buf).unwrap();
        let e = read_cpio(&buf);
        let get = |n: &str| e.iter().find(|x| x.0 == n).map(|x| x.3.clone());
        assert_eq!(get("suites/dma.sh").unwrap(), b"d");
        assert_eq!(get("suites/lib/suite.sh").unwrap(), b"lib");
        assert_eq!(get("suites/lib/helpers.awk").unwrap(), b"awk");
        assert_eq!(get("suites/lib/sub/more.sh").unwrap(), b"more");
        assert!(e.iter().any(|x| x.0 == "suites/lib/sub" && x.1 == 0o040755));
        assert!(get("suites/lib/.suite.sh.swp").is_none());

        // No lib/ is no files; the repository's own suites have a lib.
        fs::remove_dir_all(suites.join("lib")).unwrap();
        assert!(t.suite_lib().unwrap().is_empty());
        let repo = TestsDir {
            path: Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf(),
        };
        assert!(repo
            .suite_lib()
            .unwrap()
            .iter()
            .any(|(r, _)| r == "suite.sh"));
        assert!(!repo.suites().iter().any(|s| s == "lib"));
        fs::remove_dir_all(&base).unwrap();
    }
}
