//! The guest kernel's own tests, built from that kernel's own source: kselftest programs
//! (`tools/testing/selftests/DIR/NAME.c`, e.g. `mm/hmm-tests`) and test modules built out of
//! tree (`lib/NAME.c`, e.g. `lib/test_hmm`), for suites that declare them
//! (`# vugpu-vm: kernel-selftest mm/hmm-tests`, `# vugpu-vm: kernel-test-module lib/test_hmm`).
//! Nothing of those sources is changed: they are compiled as they are.
//!
//! Where the source comes from:
//! - Debian's kernel: `linux-source-X.Y` of exactly the kernel's Debian version (the version of
//!   `linux-headers-RELEASE`). A tree `--build-kernel` already unpacked for that version is used
//!   as it is; otherwise the package's tarball is unpacked once into
//!   `ROOT/var/lib/vugpu/ktests/src-<version>/` (from the installed `/usr/src` tarball when the
//!   installed `linux-source-X.Y` has that version, else from the `.deb` that `apt-get download
//!   linux-source-X.Y=VERSION` fetches; installing it could up- or downgrade the package
//!   `--build-kernel` uses).
//! - A `--build-kernel` kernel: the source it was built from (its tree's `source` link).
//! - `--kernel-build-dir DIR`: the tree's `source` link if it is an O= tree, else DIR itself;
//!   built with the host's tools.
//!
//! How they are built:
//! - the kernel's UAPI headers: `make -C SRC O=HDR ARCH=x86_64 headers` (a user's tree: `make
//!   -C DIR headers`, into DIR/usr/include);
//! - a selftest: `cc -static -O2 -Wall -U_FORTIFY_SOURCE -I SRC -I SRC/tools/testing/selftests
//!   -I SRC/tools/testing/selftests/DIR -isystem HDR/usr/include -isystem
//!   SRC/tools/include/uapi NAME.c EXTRA.c... -lrt -lpthread -lm`, run in the selftest's
//!   directory, where EXTRA.c are the sources DIR/Makefile adds to every program
//!   (`$(TEST_GEN_FILES): vm_util.c ...`) — the same flags the selftests' own Makefiles use;
//! - a module: lib/NAME.c and the headers it includes with `#include "..."` copied into a
//!   directory with a one-line Kbuild (`obj-m := NAME.o`), `make -C KDIR M=DIR CC=<the kernel's
//!   compiler> modules`. Its Kconfig symbol (from lib/Makefile) and that symbol's `depends on` /
//!   `select` (from lib/Kconfig*) must be enabled in the guest kernel, else the build stops and
//!   names what is missing.
//!
//! The cache (`ROOT/var/lib/vugpu/ktests/<release>-<hash>/`, without root
//! `$VUGPU_CACHE/build/ktests/<release>-<hash>/`) is keyed by the kernel release and the sha256
//! of every input file (and the build tree and compiler): a changed source rebuilds. Each use
//! refreshes the entry's marker; the 6 most recently used builds and the 2 most recently used
//! unpacked Debian sources are kept, older ones removed (unless another runner holds their lock).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::kbuild::{self, KbuildError};
use crate::kernel::{KernelConfig, ModuleBuild};
use crate::process;
use crate::provision::{secs, Env};

/// Cache directory inside the root.
pub const KTESTS_DIR: &str = "/var/lib/vugpu/ktests";
/// Marker of a finished build or unpack.
const DONE_MARKER: &str = ".vugpu-built";
/// Finished test builds kept (the least recently used beyond this are removed).
const KEEP_BUILDS: usize = 6;
/// Unpacked Debian sources kept (1.7 GB each).
const KEEP_SOURCES: usize = 2;
/// Bound for one compile or module build.
const BUILD_LIMIT: Duration = Duration::from_secs(15 * 60);
/// Bound for downloading and unpacking a source package.
const FETCH_LIMIT: Duration = Duration::from_secs(30 * 60);

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> KbuildError {
    let what = what.into();
    move |source| KbuildError::Io { what, source }
}

/// What a suite asks to have built.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// `DIR/NAME` under tools/testing/selftests.
    pub selftests: Vec<String>,
    /// `DIR/NAME` of a module source (`DIR/NAME.c`).
    pub modules: Vec<String>,
}

impl Wanted {
    /// Nothing to build.
    pub fn is_empty(&self) -> bool {
        self.selftests.is_empty() && self.modules.is_empty()
    }
}

/// What was built (host paths of private copies in the run directory).
#[derive(Clone, Debug, Default)]
pub struct Built {
    /// Programs for the guest's /bin.
    pub bins: Vec<PathBuf>,
    /// Modules for the guest's /lib/modules.
    pub modules: Vec<PathBuf>,
}

/// Where commands run: inside the root (paths as the root sees them) or on the host.
enum Place<'a> {
    Root(&'a crate::root::Root),
    Host,
}

impl Place<'_> {
    fn command(&self, argv: &[String]) -> Command {
        match self {
            Place::Root(r) => r.command(argv),
            Place::Host => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
        }
    }

    /// Host path of a path as commands see it.
    fn host(&self, p: &str) -> PathBuf {
        match self {
            Place::Root(r) => r.host_path(p),
            Place::Host => PathBuf::from(p),
        }
    }
}

/// The kernel source, the build tree modules are built against, and the compiler.
struct Source {
    /// Source tree (as commands see it).
    src: String,
    /// Build tree for modules (KDIR).
    kdir: String,
    /// The kernel's compiler, if known.
    cc: Option<String>,
    /// Where the UAPI headers are made: Some(O= dir) for a clean source, None for a user tree
    /// (`make -C KDIR headers`).
    separate_headers: bool,
    /// What it is, for messages.
    label: String,
}

fn root_out(place: &Place<'_>, argv: &[&str], what: &str) -> Result<String, KbuildError> {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    Ok(process::output(
        place.command(&argv),
        what,
        Duration::from_secs(120),
    )?)
}

/// `X.Y` of a release such as `7.3.4+deb13-amd64`.
pub fn series_of(release: &str) -> Option<String> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next().filter(|s| !s.is_empty())?;
    let minor = it.next().filter(|s| !s.is_empty())?;
    Some(format!("{major}.{minor}"))
}

/// The file name `apt-get download` gives a package version (`:` becomes `%3a`).
pub fn deb_file_name(pkg: &str, version: &str) -> String {
    format!("{pkg}_{}_all.deb", version.replace(':', "%3a"))
}

/// `X.Y` and the Debian version of the root's Debian kernel `release` (the version of
/// `linux-headers-RELEASE`).
fn debian_version(
    root: &crate::root::Root,
    release: &str,
) -> Result<(String, String), KbuildError> {
    let series = series_of(release)
        .ok_or_else(|| KbuildError::Other(format!("cannot tell X.Y of kernel {release}")))?;
    let headers = format!("linux-headers-{release}");
    let version = root_out(
        &Place::Root(root),
        &["dpkg-query", "-W", "-f=${Version}", &headers],
        "dpkg-query",
    )
    .map(|s| s.trim().to_string())
    .ok()
    .filter(|v| !v.is_empty())
    .ok_or_else(|| {
        KbuildError::Other(format!(
            "cannot tell the Debian version of kernel {release} ({headers} is not installed)"
        ))
    })?;
    Ok((series, version))
}

/// The kernel's kselftest harness (`tools/testing/selftests/kselftest_harness.h` and the
/// `kselftest.h` it includes), which guest-tests/user's programs are built on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Harness {
    /// The directory holding both headers, as build commands see it (the Makefile's
    /// `KSELFTEST_DIR`).
    pub dir: String,
    /// The first 12 hex digits of the sha256 of both headers: programs built on different
    /// headers go to different output directories.
    pub key: String,
    /// Where the headers come from, for messages.
    pub label: String,
}

/// The harness headers' names under `tools/testing/selftests`.
pub const HARNESS_HEADERS: [&str; 2] = ["kselftest_harness.h", "kselftest.h"];
/// Extracted harness headers inside the root: `HARNESS_DIR/<Debian version>/`.
pub const HARNESS_DIR: &str = "/var/lib/vugpu/kselftest-harness";

/// The guest kernel's own kselftest harness headers:
/// - a `--build-kernel` kernel or `--kernel-build-dir`: its source tree's;
/// - Debian's kernel: only the two headers, kept once in
///   `ROOT/var/lib/vugpu/kselftest-harness/<version>/`: copied from a tree of its
///   `linux-source-X.Y` version that is already unpacked (by `--build-kernel` or for a kernel
///   selftest), else extracted from the installed source tarball of that version or from the
///   package that `apt-get download` fetches (167 MB for 7.3, deleted after the extraction;
///   11-12 s here).
pub fn harness(env: &Env) -> Result<Harness, KbuildError> {
    let (place, dir, label) = match &env.kernel.modules {
        ModuleBuild::InRoot { kdir, .. } if !kdir.starts_with(kbuild::KERNELS_DIR) => {
            let root = env.root().ok_or_else(|| {
                KbuildError::Other("Debian's kernel is used from the root, which is missing".into())
            })?;
            let (dir, label) = debian_harness(root, &env.kernel.release)?;
            (Place::Root(root), dir, label)
        }
        ModuleBuild::Unavailable(why) => {
            return Err(KbuildError::Other(format!(
                "the test programs are built on the guest kernel's kselftest_harness.h, but its source is unavailable: {why}"
            )))
        }
        _ => {
            let (place, s) = source(env)?;
            (
                place,
                format!("{}/tools/testing/selftests", s.src),
                s.label,
            )
        }
    };
    let mut text = String::new();
    for h in HARNESS_HEADERS {
        let p = place.host(&format!("{dir}/{h}"));
        let data = fs::read(&p).map_err(io_err(format!(
            "read {} (the kselftest harness of {label})",
            p.display()
        )))?;
        text.push_str(&format!("{h} {}\n", kbuild::sha256_hex(&data)));
    }
    let key = kbuild::sha256_hex(text.as_bytes())[..12].to_string();
    Ok(Harness { dir, key, label })
}

/// The source tarball (path inside the root) of `pkg` (`linux-source-SERIES`) when exactly
/// `version` is installed in the root and its tarball is there.
fn installed_source(
    place: &Place,
    root: &crate::root::Root,
    pkg: &str,
    series: &str,
    version: &str,
) -> Option<String> {
    let status = root_out(
        place,
        &["dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Version}", pkg],
        "dpkg-query",
    )
    .unwrap_or_default();
    let tarball = format!("/usr/src/linux-source-{series}.tar.xz");
    (status.split_whitespace().collect::<Vec<_>>() == ["ii", version]
        && root.host_path(&tarball).is_file())
    .then_some(tarball)
}

/// Debian's kernel: (the directory with the harness headers inside the root, its label).
fn debian_harness(
    root: &crate::root::Root,
    release: &str,
) -> Result<(String, String), KbuildError> {
    let (series, version) = debian_version(root, release)?;
    let pkg = format!("linux-source-{series}");
    let name = format!("src-{}", kbuild::path_safe(&version));
    let label = format!("{pkg} {version}");
    let sub = format!("linux-source-{series}/tools/testing/selftests");
    let base = root.host_path(HARNESS_DIR);
    fs::create_dir_all(&base).map_err(io_err(format!("create {}", base.display())))?;
    let vname = kbuild::path_safe(&version);
    let _l = kbuild::lock(&base.join(format!("{vname}.lock")))?;
    let inner = format!("{HARNESS_DIR}/{vname}");
    let dir = base.join(&vname);
    let marker = dir.join(DONE_MARKER);
    if fs::read_to_string(&marker).is_ok_and(|t| t.trim() == version) {
        return Ok((inner, label));
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io_err(format!("remove {}", dir.display())))?;
    }
    fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    // A whole tree of the same version, unpacked by --build-kernel or for a kernel selftest:
    // copied (the tree may be pruned later, the copy is this directory's).
    let trees = [
        (
            root.host_path(&format!("{}/{name}/.vugpu-unpacked", kbuild::KERNELS_DIR)),
            root.host_path(&format!("{}/{name}/{sub}", kbuild::KERNELS_DIR)),
        ),
        (
            root.host_path(&format!("{KTESTS_DIR}/{name}/{DONE_MARKER}")),
            root.host_path(&format!("{KTESTS_DIR}/{name}/{sub}")),
        ),
    ];
    if let Some(from) = copy_harness_from_tree(&trees, &version, &dir)? {
        say!(
            "kselftest harness of {label} copied from {}",
            from.display()
        );
        return Ok((inner, label));
    }
    let place = Place::Root(root);
    let from_installed = installed_source(&place, root, &pkg, &series, &version).is_some();
    let t = Instant::now();
    if from_installed {
        say!("extracting the kselftest harness headers from the installed {label}");
    } else {
        say!(
            "fetching {label} (the guest kernel's source, ~170 MB, deleted afterwards) for its kselftest harness headers"
        );
    }
    let script = harness_extract_script(&series, &version, &inner, from_installed);
    let log = dir.join("extract.log");
    let c = place.command(&["sh".into(), "-c".into(), script]);
    if let Err(e) = process::run_logged(
        c,
        &format!("getting the harness of {label}"),
        &log,
        FETCH_LIMIT,
    ) {
        let _ = fs::remove_file(dir.join(deb_file_name(&pkg, &version)));
        return Err(KbuildError::Other(format!(
            "{e}\n(the guest test programs are built on the kselftest harness of the guest kernel {release}, Debian version {version}; {pkg}={version} must be downloadable from the configured mirror, see `apt-cache policy {pkg}` in the root)"
        )));
    }
    for h in HARNESS_HEADERS {
        let from = dir.join(&sub).join(h);
        fs::rename(&from, dir.join(h)).map_err(io_err(format!(
            "move {} (did {label} unpack?)",
            from.display()
        )))?;
    }
    let _ = fs::remove_dir_all(dir.join(format!("linux-source-{series}")));
    fs::write(&marker, format!("{version}\n"))
        .map_err(io_err(format!("write {}", marker.display())))?;
    say!(
        "kselftest harness of {label} extracted in {}",
        secs(t.elapsed())
    );
    Ok((inner, label))
}

/// Copies the harness headers into `dir` (and writes its marker) from the first of `trees`
/// — (marker file, tools/testing/selftests directory) — whose marker names `version` and that
/// has both headers; the directory copied from, or None if no tree qualifies.
pub fn copy_harness_from_tree(
    trees: &[(PathBuf, PathBuf)],
    version: &str,
    dir: &Path,
) -> Result<Option<PathBuf>, KbuildError> {
    for (unpacked, from) in trees {
        if fs::read_to_string(unpacked).is_ok_and(|t| t.trim() == version)
            && HARNESS_HEADERS.iter().all(|h| from.join(h).is_file())
        {
            for h in HARNESS_HEADERS {
                fs::copy(from.join(h), dir.join(h))
                    .map_err(io_err(format!("copy {}", from.join(h).display())))?;
            }
            let marker = dir.join(DONE_MARKER);
            fs::write(&marker, format!("{version}\n"))
                .map_err(io_err(format!("write {}", marker.display())))?;
            return Ok(Some(from.clone()));
        }
    }
    Ok(None)
}

/// The shell script (run in the root) that puts `linux-source-X.Y/tools/testing/selftests/`'s
/// two harness headers of Debian version `version` below `dir`: from the installed tarball, or
/// from the package `apt-get download` fetches, which it deletes afterwards. Only those two
/// members are written.
pub fn harness_extract_script(
    series: &str,
    version: &str,
    dir: &str,
    from_installed: bool,
) -> String {
    let members = HARNESS_HEADERS
        .iter()
        .map(|h| format!("'linux-source-{series}/tools/testing/selftests/{h}'"))
        .collect::<Vec<_>>()
        .join(" ");
    if from_installed {
        format!("set -e; cd '{dir}'; tar -xJf '/usr/src/linux-source-{series}.tar.xz' {members}")
    } else {
        let pkg = format!("linux-source-{series}");
        let deb = deb_file_name(&pkg, version);
        format!(
            "set -e; cd '{dir}'; apt-get download -q '{pkg}={version}'; \
             dpkg-deb --fsys-tarfile '{deb}' | tar -xO './usr/src/{pkg}.tar.xz' | tar -xJ {members}; \
             rm -f '{deb}'"
        )
    }
}

/// Debian's kernel: the source of exactly its version, unpacked once.
fn debian_source(
    env: &Env,
    root: &crate::root::Root,
    kdir: &str,
    cc: &Option<String>,
) -> Result<Source, KbuildError> {
    let place = Place::Root(root);
    let release = &env.kernel.release;
    let (series, version) = debian_version(root, release)?;
    let pkg = format!("linux-source-{series}");
    let name = format!("src-{}", kbuild::path_safe(&version));
    let tree_in = |dir: &str| format!("{dir}/{name}/linux-source-{series}");
    // A tree --build-kernel unpacked for the same version.
    let kb = tree_in(kbuild::KERNELS_DIR);
    if fs::read_to_string(
        root.host_path(&format!("{}/{name}/.vugpu-unpacked", kbuild::KERNELS_DIR)),
    )
    .is_ok_and(|t| t.trim() == version)
    {
        return Ok(Source {
            src: kb,
            kdir: kdir.to_string(),
            cc: cc.clone(),
            separate_headers: true,
            label: format!("{pkg} {version} (unpacked by --build-kernel)"),
        });
    }
    let base = root.host_path(KTESTS_DIR);
    fs::create_dir_all(&base).map_err(io_err(format!("create {}", base.display())))?;
    let _l = kbuild::lock(&base.join(format!("{name}.lock")))?;
    let dir = base.join(&name);
    let inner = tree_in(KTESTS_DIR);
    let marker = dir.join(DONE_MARKER);
    let label = format!("{pkg} {version}");
    if fs::read_to_string(&marker).is_ok_and(|t| t.trim() == version) {
        touch(&marker);
        return Ok(Source {
            src: inner,
            kdir: kdir.to_string(),
            cc: cc.clone(),
            separate_headers: true,
            label,
        });
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io_err(format!("remove {}", dir.display())))?;
    }
    fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    let t = Instant::now();
    let inner_dir = format!("{KTESTS_DIR}/{name}");
    let log = dir.join("unpack.log");
    let script = if let Some(tarball) = installed_source(&place, root, &pkg, &series, &version) {
        say!(
            "unpacking the installed {pkg} {version} (the guest kernel's source) into {}",
            dir.display()
        );
        format!("set -e; tar -xf '{tarball}' -C '{inner_dir}'")
    } else {
        say!(
            "fetching {pkg} {version} (the guest kernel's source, ~150 MB) with apt-get download and unpacking it into {}",
            dir.display()
        );
        let deb = deb_file_name(&pkg, &version);
        format!(
            "set -e; cd '{inner_dir}'; apt-get download -q '{pkg}={version}'; \
             dpkg-deb --fsys-tarfile '{deb}' | tar -xO './usr/src/linux-source-{series}.tar.xz' | tar -xJ; \
             rm -f '{deb}'"
        )
    };
    let c = place.command(&["sh".into(), "-c".into(), script]);
    if let Err(e) = process::run_logged(c, &format!("getting {pkg} {version}"), &log, FETCH_LIMIT) {
        return Err(KbuildError::Other(format!(
            "{e}\n(the guest kernel {release} is Debian version {version}; its source package {pkg}={version} must be downloadable from the configured mirror, see `apt-cache policy {pkg}` in the root)"
        )));
    }
    if !root.host_path(&format!("{inner}/Makefile")).is_file() {
        return Err(KbuildError::Other(format!(
            "{pkg} {version} did not unpack to {inner}"
        )));
    }
    fs::write(&marker, format!("{version}\n"))
        .map_err(io_err(format!("write {}", marker.display())))?;
    say!("{pkg} {version} unpacked in {}", secs(t.elapsed()));
    prune(&base, KEEP_SOURCES, |n| n.starts_with("src-"));
    Ok(Source {
        src: inner,
        kdir: kdir.to_string(),
        cc: cc.clone(),
        separate_headers: true,
        label,
    })
}

/// The guest kernel's source, wherever it comes from.
fn source(env: &Env) -> Result<(Place<'_>, Source), KbuildError> {
    match &env.kernel.modules {
        ModuleBuild::InRoot { kdir, cc } => {
            let root = env.root().ok_or_else(|| {
                KbuildError::Other("a kernel built in the root needs the root".into())
            })?;
            if kdir.starts_with(kbuild::KERNELS_DIR) {
                // --build-kernel: the O= tree's `source` link names the source it was built from.
                let link = root.host_path(&format!("{kdir}/source"));
                let src = fs::read_link(&link)
                    .map_err(io_err(format!("read the link {}", link.display())))?;
                let src = src.to_string_lossy().into_owned();
                let label = format!("{src} (the source it was built from)");
                Ok((
                    Place::Root(root),
                    Source {
                        src,
                        kdir: kdir.clone(),
                        cc: cc.clone(),
                        separate_headers: true,
                        label,
                    },
                ))
            } else {
                let s = debian_source(env, root, kdir, cc)?;
                Ok((Place::Root(root), s))
            }
        }
        ModuleBuild::Host { kdir, cc } => {
            let src = fs::read_link(kdir.join("source"))
                .ok()
                .map(|p| if p.is_relative() { kdir.join(p) } else { p })
                .filter(|p| p.join("Makefile").is_file())
                .unwrap_or_else(|| kdir.clone());
            let src = src.to_string_lossy().into_owned();
            Ok((
                Place::Host,
                Source {
                    label: format!("{src} (--kernel-build-dir)"),
                    src,
                    kdir: kdir.to_string_lossy().into_owned(),
                    cc: cc.clone(),
                    separate_headers: false,
                },
            ))
        }
        ModuleBuild::Unavailable(why) => Err(KbuildError::Other(format!(
            "the guest kernel's own tests cannot be built: {why}"
        ))),
    }
}

/// The extra sources a selftest directory's Makefile adds to every program
/// (`$(TEST_GEN_FILES): a.c b.c`).
pub fn extra_sources(makefile: &str) -> Vec<String> {
    for line in makefile.lines() {
        if let Some(rest) = line.trim().strip_prefix("$(TEST_GEN_FILES):") {
            return rest
                .split_whitespace()
                .filter(|w| w.ends_with(".c"))
                .map(str::to_string)
                .collect();
        }
    }
    Vec::new()
}

/// The headers a C file includes with quotes (`#include "x.h"`).
pub fn local_includes(c: &str) -> Vec<String> {
    c.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l.strip_prefix('#')?.trim_start().strip_prefix("include")?;
            let rest = rest.trim_start().strip_prefix('"')?;
            rest.split_once('"').map(|(h, _)| h.to_string())
        })
        .filter(|h| !h.contains('/'))
        .collect()
}

/// The Kconfig symbol that builds `NAME.o` in a directory's Makefile (`obj-$(CONFIG_X) +=`).
pub fn kconfig_symbol(makefile: &str, name: &str) -> Option<String> {
    let obj = format!("{name}.o");
    makefile.lines().find_map(|l| {
        let (lhs, rhs) = l.split_once("+=")?;
        if !rhs.split_whitespace().any(|w| w == obj) {
            return None;
        }
        let sym = lhs
            .trim()
            .strip_prefix("obj-$(CONFIG_")?
            .strip_suffix(')')?;
        Some(sym.to_string())
    })
}

/// The symbols a Kconfig entry needs for sure: `depends on A && B` (only pure conjunctions)
/// and `select C` (without `if`), from the `config SYM` block.
pub fn kconfig_needs(kconfig: &str, sym: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in kconfig.lines() {
        let t = line.trim();
        if let Some(s) = t.strip_prefix("config ").or(t.strip_prefix("menuconfig ")) {
            inside = s.trim() == sym;
            continue;
        }
        if !inside {
            continue;
        }
        if t.starts_with("endmenu") || t.starts_with("menu ") || t.starts_with("if ") {
            break;
        }
        if let Some(dep) = t.strip_prefix("depends on ") {
            if dep.contains("||") || dep.contains('!') || dep.contains('=') {
                continue;
            }
            for w in dep.split("&&") {
                let w = w.trim().trim_matches(|c| c == '(' || c == ')').trim();
                if !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    out.push(w.to_string());
                }
            }
        } else if let Some(sel) = t.strip_prefix("select ") {
            if !sel.contains(" if ") {
                out.push(sel.trim().to_string());
            }
        }
    }
    out
}

/// Checks that the guest kernel can take module DIR/NAME: its own symbol's dependencies.
fn check_module_config(
    release: &str,
    src_host: &Path,
    dir: &str,
    name: &str,
    config: &KernelConfig,
) -> Result<(), KbuildError> {
    let makefile = fs::read_to_string(src_host.join(dir).join("Makefile")).unwrap_or_default();
    let Some(sym) = kconfig_symbol(&makefile, name) else {
        return Ok(());
    };
    let mut needs = BTreeSet::new();
    if let Ok(rd) = fs::read_dir(src_host.join(dir)) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("Kconfig") {
                let text = fs::read_to_string(e.path()).unwrap_or_default();
                needs.extend(kconfig_needs(&text, &sym));
            }
        }
    }
    let missing: Vec<String> = needs
        .iter()
        .filter(|s| !matches!(config.get(s), Some("y") | Some("m")))
        .map(|s| format!("CONFIG_{s}"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(KbuildError::Other(format!(
            "{dir}/{name}.ko cannot work on kernel {release}: CONFIG_{sym} needs {} (not enabled in its config)",
            missing.join(" ")
        )))
    }
}

/// Builds what `wanted` names for the guest kernel (or takes it from the cache) and copies the
/// results into `run_dir/artifacts/ktests`.
pub fn build(
    env: &Env,
    wanted: &Wanted,
    config: &KernelConfig,
    run_dir: &Path,
) -> Result<Built, KbuildError> {
    if wanted.is_empty() {
        return Ok(Built::default());
    }
    let t = Instant::now();
    let (place, s) = source(env)?;
    let src_host = place.host(&s.src);
    // Inputs: every file the builds read from the source, hashed into the cache key.
    let mut key = format!(
        "release={}\nkdir={}\ncc={:?}\nsrc={}\n",
        env.kernel.release, s.kdir, s.cc, s.label
    );
    let mut inputs: Vec<PathBuf> = Vec::new();
    let mut programs = Vec::new();
    for st in &wanted.selftests {
        let (dir, name) = st.rsplit_once('/').unwrap_or(("", st.as_str()));
        let sdir = src_host.join("tools/testing/selftests").join(dir);
        let main = sdir.join(format!("{name}.c"));
        if !main.is_file() {
            return Err(KbuildError::Other(format!(
                "{} has no tools/testing/selftests/{st}.c (source {})",
                env.kernel.release, s.label
            )));
        }
        let extra = extra_sources(&fs::read_to_string(sdir.join("Makefile")).unwrap_or_default());
        inputs.push(main);
        inputs.extend(extra.iter().map(|e| sdir.join(e)));
        for h in ["kselftest_harness.h", "kselftest.h"] {
            inputs.push(src_host.join("tools/testing/selftests").join(h));
        }
        programs.push((dir.to_string(), name.to_string(), extra));
    }
    let mut mods = Vec::new();
    for m in &wanted.modules {
        let (dir, name) = m.rsplit_once('/').unwrap_or(("", m.as_str()));
        let c = src_host.join(dir).join(format!("{name}.c"));
        let text = fs::read_to_string(&c).map_err(|e| {
            KbuildError::Other(format!(
                "{m}.c in the source of {} ({}): {e}",
                env.kernel.release, s.label
            ))
        })?;
        check_module_config(&env.kernel.release, &src_host, dir, name, config)?;
        let headers = local_includes(&text);
        inputs.push(c);
        inputs.extend(headers.iter().map(|h| src_host.join(dir).join(h)));
        mods.push((dir.to_string(), name.to_string(), headers));
    }
    for p in &inputs {
        let data = fs::read(p).map_err(io_err(format!("read {}", p.display())))?;
        key.push_str(&format!(
            "{} {}\n",
            p.strip_prefix(&src_host).unwrap_or(p).display(),
            kbuild::sha256_hex(&data)
        ));
    }
    let hash = kbuild::sha256_hex(key.as_bytes());
    let name = format!("{}-{}", kbuild::path_safe(&env.kernel.release), &hash[..12]);
    let base_cmd = match &place {
        Place::Root(_) => KTESTS_DIR.to_string(),
        Place::Host => env
            .cache
            .join("build/ktests")
            .to_string_lossy()
            .into_owned(),
    };
    let base = place.host(&base_cmd);
    fs::create_dir_all(&base).map_err(io_err(format!("create {}", base.display())))?;
    let _l = kbuild::lock(&base.join(format!("{name}.lock")))?;
    let out_cmd = format!("{base_cmd}/{name}");
    let out = base.join(&name);
    let marker = out.join(DONE_MARKER);
    let products: Vec<PathBuf> = programs
        .iter()
        .map(|(_, n, _)| out.join(n))
        .chain(
            mods.iter()
                .map(|(_, n, _)| out.join(format!("mod-{n}/{n}.ko"))),
        )
        .collect();
    let cached = marker.is_file() && products.iter().all(|p| p.is_file());
    if cached {
        touch(&marker);
        say!(
            "kernel tests {} for {} cached in {}",
            wanted_list(wanted),
            env.kernel.release,
            out.display()
        );
    } else {
        if out.exists() {
            fs::remove_dir_all(&out).map_err(io_err(format!("remove {}", out.display())))?;
        }
        fs::create_dir_all(&out).map_err(io_err(format!("create {}", out.display())))?;
        fs::write(out.join("inputs"), &key).map_err(io_err("write the input list"))?;
        let log = out.join("build.log");
        say!(
            "building {} from {} for {} in {} (log {})",
            wanted_list(wanted),
            s.label,
            env.kernel.release,
            out.display(),
            log.display()
        );
        let arg = |v: &[&str]| -> Vec<String> { v.iter().map(|s| s.to_string()).collect() };
        if !programs.is_empty() {
            // The kernel's UAPI headers.
            let hdr = if s.separate_headers {
                let h = format!("{out_cmd}/hdr");
                let c = place.command(&arg(&[
                    "make",
                    "-s",
                    "-C",
                    &s.src,
                    &format!("O={h}"),
                    "ARCH=x86_64",
                    "headers",
                ]));
                process::run_logged(c, "make headers", &log, BUILD_LIMIT)?;
                format!("{h}/usr/include")
            } else {
                let c = place.command(&arg(&["make", "-s", "-C", &s.kdir, "headers"]));
                process::run_logged(c, "make headers", &log, BUILD_LIMIT)?;
                format!("{}/usr/include", s.kdir)
            };
            let cc = match &place {
                Place::Root(_) => "gcc",
                Place::Host => "cc",
            };
            for (dir, n, extra) in &programs {
                let sdir = format!("{}/tools/testing/selftests/{dir}", s.src);
                let mut argv = arg(&[
                    "sh",
                    "-c",
                    "cd \"$1\" && shift && exec \"$@\"",
                    "sh",
                    &sdir,
                    cc,
                    "-static",
                    "-Wall",
                    "-O2",
                    "-U_FORTIFY_SOURCE",
                    "-I",
                    &s.src,
                    "-I",
                    &format!("{}/tools/testing/selftests", s.src),
                    "-I",
                    &sdir,
                    "-isystem",
                    &hdr,
                    "-isystem",
                    &format!("{}/tools/include/uapi", s.src),
                    &format!("{n}.c"),
                ]);
                argv.extend(extra.iter().cloned());
                argv.extend(arg(&[
                    "-lrt",
                    "-lpthread",
                    "-lm",
                    "-o",
                    &format!("{out_cmd}/{n}"),
                ]));
                process::run_logged(
                    place.command(&argv),
                    &format!("compiling {dir}/{n}"),
                    &log,
                    BUILD_LIMIT,
                )?;
            }
        }
        for (dir, n, headers) in &mods {
            let mdir = out.join(format!("mod-{n}"));
            fs::create_dir_all(&mdir).map_err(io_err(format!("create {}", mdir.display())))?;
            for f in std::iter::once(format!("{n}.c")).chain(headers.iter().cloned()) {
                let from = src_host.join(dir).join(&f);
                fs::copy(&from, mdir.join(&f))
                    .map_err(io_err(format!("copy {}", from.display())))?;
            }
            fs::write(mdir.join("Kbuild"), format!("obj-m := {n}.o\n"))
                .map_err(io_err("write Kbuild"))?;
            let mut argv = arg(&["make", "-C", &s.kdir, &format!("M={out_cmd}/mod-{n}")]);
            if let Some(cc) = &s.cc {
                argv.push(format!("CC={cc}"));
            }
            argv.push("modules".into());
            process::run_logged(
                place.command(&argv),
                &format!("building {dir}/{n}.ko out of tree"),
                &log,
                BUILD_LIMIT,
            )?;
        }
        for p in &products {
            if !p.is_file() {
                return Err(KbuildError::Other(format!(
                    "{} missing after the build (see {})",
                    p.display(),
                    log.display()
                )));
            }
        }
        fs::write(
            &marker,
            format!(
                "release={}\nsource={}\nseconds={:.0}\n",
                env.kernel.release,
                s.label,
                t.elapsed().as_secs_f64()
            ),
        )
        .map_err(io_err(format!("write {}", marker.display())))?;
        say!(
            "built {} for {} in {}",
            wanted_list(wanted),
            env.kernel.release,
            secs(t.elapsed())
        );
        prune(&base, KEEP_BUILDS, |n| !n.starts_with("src-"));
    }
    // Private copies: another run may rebuild the cache entry.
    let art = run_dir.join("artifacts/ktests");
    fs::create_dir_all(&art).map_err(io_err(format!("create {}", art.display())))?;
    let mut built = Built::default();
    for p in products {
        let file = p.file_name().map(|f| f.to_owned()).unwrap_or_default();
        let to = art.join(&file);
        fs::copy(&p, &to).map_err(io_err(format!("copy {}", p.display())))?;
        if to.extension().is_some_and(|e| e == "ko") {
            built.modules.push(to);
        } else {
            built.bins.push(to);
        }
    }
    Ok(built)
}

/// Refreshes a marker's mtime: the entry was used.
fn touch(marker: &Path) {
    let _ = fs::File::options()
        .append(true)
        .open(marker)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
}

/// Removes finished entries of `base` that `pick` selects beyond the `keep` most recently used
/// (by their marker's mtime), unless another runner holds their lock.
fn prune(base: &Path, keep: usize, pick: impl Fn(&str) -> bool) {
    let Ok(rd) = fs::read_dir(base) else {
        return;
    };
    let mut done: Vec<(std::time::SystemTime, String)> = rd
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| pick(n))
        .filter_map(|n| {
            let m = fs::metadata(base.join(&n).join(DONE_MARKER)).ok()?;
            Some((m.modified().ok()?, n))
        })
        .collect();
    done.sort();
    done.reverse();
    for (_, name) in done.into_iter().skip(keep) {
        let lock_path = base.join(format!("{name}.lock"));
        let Ok(f) = fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        else {
            continue;
        };
        if f.try_lock().is_err() {
            continue;
        }
        say!("removing the least recently used kernel-test cache entry {name}");
        let _ = fs::remove_dir_all(base.join(&name));
        let _ = fs::remove_file(&lock_path);
    }
}

fn wanted_list(w: &Wanted) -> String {
    w.selftests
        .iter()
        .cloned()
        .chain(w.modules.iter().map(|m| format!("{m}.ko")))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harness_copied_only_from_a_tree_of_the_same_version() {
        let base = std::env::temp_dir().join(format!("vugpu-harness-copy-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let tree = |n: &str, version: &str, headers: &[&str]| {
            let sel = base.join(n).join("sel");
            fs::create_dir_all(&sel).unwrap();
            fs::write(base.join(n).join("marker"), format!("{version}\n")).unwrap();
            for h in headers {
                fs::write(sel.join(h), format!("{n} {h}")).unwrap();
            }
            (base.join(n).join("marker"), sel)
        };
        let other = tree("other", "1.0-1", &HARNESS_HEADERS);
        let partial = tree("partial", "2.0-1", &["kselftest.h"]);
        let good = tree("good", "2.0-1", &HARNESS_HEADERS);
        let dir = base.join("out");
        fs::create_dir_all(&dir).unwrap();
        assert_eq!(
            copy_harness_from_tree(&[other.clone(), partial.clone()], "2.0-1", &dir).unwrap(),
            None
        );
        assert!(!dir.join(DONE_MARKER).exists());
        let from = copy_harness_from_tree(&[other, partial, good.clone()], "2.0-1", &dir).unwrap();
        assert_eq!(from, Some(good.1));
        for h in HARNESS_HEADERS {
            assert_eq!(
                fs::read_to_string(dir.join(h)).unwrap(),
                format!("good {h}")
            );
        }
        assert_eq!(
            fs::read_to_string(dir.join(DONE_MARKER)).unwrap(),
            "2.0-1\n"
        );
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn harness_script_extracts_only_the_two_headers() {
        let members = "'linux-source-7.3/tools/testing/selftests/kselftest_harness.h' \
                       'linux-source-7.3/tools/testing/selftests/kselftest.h'";
        let s = harness_extract_script("7.3", "7.3.4-1~bpo13+1", "/h/7.3.4", true);
        assert_eq!(
            s,
            format!("set -e; cd '/h/7.3.4'; tar -xJf '/usr/src/linux-source-7.3.tar.xz' {members}")
        );
        let s = harness_extract_script("7.3", "1:7.3.4-1", "/h/x", false);
        assert!(
            s.contains("apt-get download -q 'linux-source-7.3=1:7.3.4-1'"),
            "{s}"
        );
        assert!(s.contains(&format!("| tar -xJ {members};")), "{s}");
        // The package is deleted after the extraction (its file name as apt-get writes it).
        assert!(
            s.ends_with("rm -f 'linux-source-7.3_1%3a7.3.4-1_all.deb'"),
            "{s}"
        );
    }

    #[test]
    fn prune_keeps_the_most_recently_used() {
        let base = std::env::temp_dir().join(format!("vugpu-ktests-prune-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        for (i, n) in ["a", "b", "c", "src-1", "unfinished"].iter().enumerate() {
            fs::create_dir_all(base.join(n)).unwrap();
            if *n != "unfinished" {
                let m = base.join(n).join(DONE_MARKER);
                fs::write(&m, "x").unwrap();
                let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1000 + i as u64);
                fs::File::options()
                    .append(true)
                    .open(&m)
                    .unwrap()
                    .set_modified(t)
                    .unwrap();
            }
        }
        prune(&base, 2, |n| !n.starts_with("src-"));
        let left: BTreeSet<String> = fs::read_dir(&base)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let want: BTreeSet<String> = ["b", "c", "src-1", "unfinished"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(left, want);
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn series_and_deb_names() {
        assert_eq!(series_of("7.3.4+deb13-amd64").as_deref(), Some("7.3"));
        assert_eq!(series_of("6.12.118-vugpu").as_deref(), Some("6.12"));
        assert_eq!(series_of("x"), None);
        assert_eq!(
            deb_file_name("linux-source-7.3", "7.3.4-1~bpo13+1"),
            "linux-source-7.3_7.3.4-1~bpo13+1_all.deb"
        );
        assert_eq!(deb_file_name("p", "1:2.0"), "p_1%3a2.0_all.deb");
    }

    #[test]
    fn makefile_and_source_scans() {
        let mk = "TEST_GEN_FILES = cow\n$(TEST_GEN_PROGS): vm_util.c x.c\n$(TEST_GEN_FILES): vm_util.c hugepage_settings.c\n";
        assert_eq!(extra_sources(mk), vec!["vm_util.c", "hugepage_settings.c"]);
        assert!(extra_sources("all:\n").is_empty());
        let c = "#include <linux/mm.h>\n# include \"test_hmm_uapi.h\"\n#include \"../x/y.h\"\n";
        assert_eq!(local_includes(c), vec!["test_hmm_uapi.h"]);
        let lib = "obj-$(CONFIG_TEST_FOO) += test_foo.o\nobj-$(CONFIG_TEST_HMM) += test_hmm.o\n";
        assert_eq!(kconfig_symbol(lib, "test_hmm").as_deref(), Some("TEST_HMM"));
        assert_eq!(kconfig_symbol(lib, "test_bar"), None);
    }

    #[test]
    fn kconfig_needs_of_one_entry() {
        let k = "config TEST_HMM\n\ttristate \"x\"\n\tdepends on TRANSPARENT_HUGEPAGE\n\
                 \tdepends on DEVICE_PRIVATE && ARCH_HAS_PTE_SPECIAL\n\tdepends on A || B\n\
                 \tselect HMM_MIRROR\n\tselect MMU_NOTIFIER\n\tselect Z if Y\n\thelp\n\t  text\n\n\
                 config OTHER\n\tselect NOPE\n";
        assert_eq!(
            kconfig_needs(k, "TEST_HMM"),
            vec![
                "TRANSPARENT_HUGEPAGE",
                "DEVICE_PRIVATE",
                "ARCH_HAS_PTE_SPECIAL",
                "HMM_MIRROR",
                "MMU_NOTIFIER"
            ]
        );
        assert!(kconfig_needs(k, "MISSING").is_empty());
    }
}
