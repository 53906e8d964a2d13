//! One guest run: run directory, initramfs, GPU servers, QEMU, and the watch loop (console,
//! results channel, deadlines, KVM fallback). The verdict and report are in `report.rs`.
//!
//! Every wait is bounded: server sockets ([`crate::servers::SOCKET_WAIT`]), the KVM progress
//! probe ([`KVM_PROBE`]), the whole boot (`--timeout`), the power-off after `VUGPU-END`
//! ([`POWEROFF_WAIT`]). Whatever happens, QEMU and the servers are stopped before returning,
//! and they die with the runner if it is killed (PR_SET_PDEATHSIG).

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::exit;
use crate::initramfs::{self, Contents, InitramfsError, TestsDir};
use crate::process::{self, indent};
use crate::provision::{secs, Env, QemuBinary};
use crate::qemu::{self, Accel, AccelChoice, QemuConfig};
use crate::report::{report, Collector, Fed, Finish, Source};
use crate::servers::{ServerError, Servers};
use crate::suite::ExpectedSkip;
use crate::topology::{self, Peer, Topology, TopologyError, TopologySpec};

/// Under `--accel auto`, KVM must reach /init within this time or TCG takes over.
pub const KVM_PROBE: Duration = Duration::from_secs(60);
/// After `VUGPU-END`, QEMU must exit (guest power-off) within this time or it is killed.
pub const POWEROFF_WAIT: Duration = Duration::from_secs(15);
/// Run directories of dead runners older than this are removed.
const STALE_RUN_DIR: Duration = Duration::from_secs(24 * 3600);

/// What the guest runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `sh /suites/NAME.sh`, KTAP on stdout.
    Suite(String),
    /// `-- CMD`.
    Command(Vec<String>),
}

/// A run request (from the command line).
#[derive(Clone, Debug)]
pub struct RunRequest {
    /// What to run.
    pub mode: Mode,
    /// Number of GPUs.
    pub gpus: usize,
    /// The `vugpu` server binary.
    pub vugpu: PathBuf,
    /// Extra arguments for every server.
    pub server_args: Vec<String>,
    /// `--attach`: sockets of a running server, one per GPU (then no server is started).
    pub attach: Vec<PathBuf>,
    /// The suite declares `hotplug gpus`: QMP socket and the hotplug agent.
    pub hotplug: bool,
    /// PCIe topology.
    pub topology: Topology,
    /// P2P peer.
    pub peer: Peer,
    /// NVMe peer CMB size, MiB.
    pub cmb_mb: u32,
    /// Accelerator choice.
    pub accel: AccelChoice,
    /// Bound for one boot.
    pub timeout: Duration,
    /// Guest RAM, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub smp: u32,
    /// Guest RAM memfd sealed (QEMU's default; `--unsealed-ram` clears it).
    pub ram_sealed: bool,
    /// Extra kernel command line.
    pub append: String,
    /// guest-tests/.
    pub tests: TestsDir,
    /// Keep the run directory.
    pub keep: bool,
    /// Echo the console live on stderr.
    pub console: bool,
    /// Extra QEMU arguments.
    pub qemu_args: Vec<String>,
    /// Skips the suite expects on this kernel.
    pub expected_skips: Vec<ExpectedSkip>,
    /// `--junit FILE`.
    pub junit: Option<PathBuf>,
    /// `--guest-bin PATH`: extra executables for the guest's /bin.
    pub guest_bins: Vec<PathBuf>,
    /// What the run runs on.
    pub facts: RunFacts,
    /// The guest kernel's own tests the suite declares (built from its source).
    pub kernel_tests: crate::kselftest::Wanted,
    /// The guest kernel's config (what those tests' modules need is checked against it).
    pub kernel_config: Option<crate::kernel::KernelConfig>,
}

/// What a run runs on, reported in the KTAP header, the summary and the JUnit properties.
#[derive(Clone, Debug, Default)]
pub struct RunFacts {
    /// `uname -r` of the guest kernel.
    pub kernel_release: String,
    /// Its relevant options, `NAME=value ...`.
    pub kernel_options: String,
    /// QEMU version.
    pub qemu: String,
}

impl RunFacts {
    /// One line for the summary.
    pub fn line(&self, accel: Option<Accel>) -> String {
        format!(
            "kernel {} ({}), QEMU {}{}",
            self.kernel_release,
            self.kernel_options,
            self.qemu,
            accel.map(|a| format!(", accel {a}")).unwrap_or_default()
        )
    }
}

/// Writes the JUnit file of a suite run; a write error is reported, not fatal.
#[allow(clippy::too_many_arguments)]
pub fn write_junit(
    path: &Path,
    suite: &str,
    report: Option<&crate::ktap::Report>,
    expected: &[ExpectedSkip],
    facts: &RunFacts,
    boot: Option<(&RunRequest, Accel)>,
    run_errors: Vec<String>,
    seconds: f64,
) {
    let mut properties = vec![
        ("vugpu.suite".to_string(), suite.to_string()),
        ("kernel.release".to_string(), facts.kernel_release.clone()),
        ("kernel.config".to_string(), facts.kernel_options.clone()),
        ("qemu.version".to_string(), facts.qemu.clone()),
    ];
    if let Some((req, accel)) = boot {
        properties.extend([
            ("accel".to_string(), accel.to_string()),
            ("gpus".to_string(), req.gpus.to_string()),
            ("topology".to_string(), req.topology.to_string()),
            ("peer".to_string(), req.peer.to_string()),
            ("memory_mib".to_string(), req.memory_mib.to_string()),
        ]);
    }
    for e in expected {
        properties.push((format!("expected-skip.{}", e.pattern), e.reason.clone()));
    }
    let facts = crate::junit::RunFacts {
        properties,
        run_errors,
        seconds,
    };
    let lookup = |name: &str| {
        expected
            .iter()
            .find(|e| e.matches(name))
            .map(|e| e.reason.clone())
    };
    match crate::junit::write(path, suite, report, &lookup, &facts) {
        Ok(()) => say!("JUnit written to {}", path.display()),
        Err(e) => say!("warning: cannot write JUnit to {}: {e}", path.display()),
    }
}

/// Errors that stop a run before the guest could report (host-side problems).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// File-system work failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: io::Error,
    },
    /// Building the initramfs failed.
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    /// Building the guest kernel's own tests failed.
    #[error("building the guest kernel's own tests: {0}")]
    KernelTests(#[from] crate::kbuild::KbuildError),
    /// A server failed to start.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The topology is invalid.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// QEMU failed to start the guest.
    #[error("QEMU failed before the guest produced any output ({status}):\n{stderr}")]
    QemuFailed {
        /// Exit status.
        status: String,
        /// Its stderr.
        stderr: String,
    },
    /// KVM was demanded and does not work.
    #[error("KVM cannot run this guest: {0} (use --accel tcg or --accel auto)")]
    Kvm(String),
    /// The run directory's sockets would exceed the UNIX socket path limit.
    #[error("run directory {0} is too deep for UNIX socket paths (108 bytes); use a shorter VUGPU_CACHE")]
    PathTooLong(PathBuf),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

enum Attempt {
    Done(Finish),
    KvmFailed(String),
}

enum Event {
    Console(String),
    Qemu(String),
    Result(String),
    Closed,
}

/// The per-run directory inside the root (in host-only mode: under the cache); removed on drop
/// unless kept.
struct RunDir {
    host: PathBuf,
    keep: bool,
}

impl RunDir {
    fn create(env: &Env) -> Result<RunDir, RunError> {
        let base = match env.root() {
            Some(root) => root.host_path("/run"),
            None => env.cache.join("run"),
        };
        fs::create_dir_all(&base).map_err(io_err(format!("create {}", base.display())))?;
        remove_stale(&base);
        let pid = std::process::id();
        for n in 0..1000u32 {
            let host = base.join(format!("vugpu-{pid}-{n}"));
            match fs::create_dir(&host) {
                Ok(()) => {
                    // gpuNN.sock is the longest socket name.
                    if host.join("gpu15.sock").as_os_str().len() >= 108 {
                        let _ = fs::remove_dir(&host);
                        return Err(RunError::PathTooLong(host));
                    }
                    return Ok(RunDir { host, keep: false });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(format!("create {}", host.display()))(e)),
            }
        }
        Err(RunError::Io {
            what: format!("create a run directory in {}", base.display()),
            source: io::Error::other("too many run directories for this pid"),
        })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.host);
        }
    }
}

/// Kept run directories (failed runs, `--keep`) of finished runners beyond this many are removed,
/// oldest first (`VUGPU_KEEP_RUNS` overrides it).
const KEPT_RUNS: usize = 10;

/// A run directory seen at start-up: path, whether its runner is alive, age.
struct SeenRun {
    path: PathBuf,
    alive: bool,
    age: Duration,
}

/// Which run directories to remove: those of finished runners older than a day, and beyond the
/// newest `keep` of finished runners.
fn stale_runs(mut seen: Vec<SeenRun>, keep: usize) -> Vec<PathBuf> {
    seen.retain(|r| !r.alive);
    seen.sort_by_key(|r| r.age);
    seen.into_iter()
        .enumerate()
        .filter(|(i, r)| *i >= keep || r.age > STALE_RUN_DIR)
        .map(|(_, r)| r.path)
        .collect()
}

/// Removes run directories of finished runners that are older than a day or beyond the newest
/// [`KEPT_RUNS`], so failed runs do not pile up.
fn remove_stale(base: &Path) {
    let Ok(rd) = fs::read_dir(base) else { return };
    let mut seen = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("vugpu-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        seen.push(SeenRun {
            path: e.path(),
            alive: Path::new(&format!("/proc/{pid}")).exists(),
            age: e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default(),
        });
    }
    let keep = std::env::var("VUGPU_KEEP_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(KEPT_RUNS);
    for p in stale_runs(seen, keep) {
        let _ = fs::remove_dir_all(p);
    }
}

/// Path QEMU uses for a host path in the run directory.
fn qemu_path(env: &Env, host: &Path) -> String {
    match env.qemu {
        QemuBinary::Host { .. } => host.to_string_lossy().into_owned(),
        QemuBinary::InRoot { .. } => env
            .root()
            .and_then(|root| root.inner_path(host))
            .unwrap_or_else(|| host.to_string_lossy().into_owned()),
    }
}

fn kvm_verdict_key(env: &Env) -> String {
    let host = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let (size, mtime) = fs::metadata(&env.kernel.image)
        .map(|m| (m.len(), m.mtime()))
        .unwrap_or_default();
    format!(
        "host={} kernel={} size={size} mtime={mtime}",
        host.trim(),
        env.kernel.image.display()
    )
}

fn kvm_verdict_path(env: &Env) -> PathBuf {
    env.cache.join("state/kvm-verdict")
}

/// Decides the first accelerator to try.
fn first_accel(env: &Env, choice: AccelChoice) -> Result<Accel, RunError> {
    match choice {
        AccelChoice::Tcg => Ok(Accel::Tcg),
        AccelChoice::Kvm => qemu::kvm_usable()
            .map(|()| Accel::Kvm)
            .map_err(RunError::Kvm),
        AccelChoice::Auto => {
            if let Err(why) = qemu::kvm_usable() {
                say!("KVM not available ({why}): using TCG");
                return Ok(Accel::Tcg);
            }
            let remembered = fs::read_to_string(kvm_verdict_path(env)).unwrap_or_default();
            if let Some(reason) = verdict_lookup(&remembered, &kvm_verdict_key(env)) {
                say!(
                    "using TCG: KVM failed before with this kernel here ({reason}); \
                     --accel kvm retries, {} remembers",
                    kvm_verdict_path(env).display()
                );
                return Ok(Accel::Tcg);
            }
            Ok(Accel::Kvm)
        }
    }
}

/// The remembered KVM failure for `key` in the verdict file's text (lines `key<TAB>reason`).
fn verdict_lookup<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(k, _)| *k == key)
        .map(|(_, r)| r)
}

/// The verdict file's text with `key` set to `reason` (or removed when `reason` is None).
fn verdict_update(text: &str, key: &str, reason: Option<&str>) -> String {
    let mut out: String = text
        .lines()
        .filter(|l| l.split_once('\t').is_some_and(|(k, _)| k != key))
        .map(|l| format!("{l}\n"))
        .collect();
    if let Some(r) = reason {
        out.push_str(&format!("{key}\t{}\n", r.replace(['\t', '\n'], " ")));
    }
    out
}

/// Records (or, with `None`, forgets) that KVM cannot run this kernel on this host.
fn remember_kvm(env: &Env, reason: Option<&str>) {
    let p = kvm_verdict_path(env);
    let old = fs::read_to_string(&p).unwrap_or_default();
    let new = verdict_update(&old, &kvm_verdict_key(env), reason);
    if new != old {
        if let Some(d) = p.parent() {
            let _ = fs::create_dir_all(d);
        }
        let _ = fs::write(&p, new);
    }
}

/// Runs the request; returns the process exit code.
pub fn run(env: &Env, req: &RunRequest) -> Result<i32, RunError> {
    let mut dir = RunDir::create(env)?;
    let result = run_in(env, req, &dir.host);
    if !matches!(result, Ok(exit::PASS)) || req.keep {
        dir.keep = true;
        say!("run directory kept: {}", dir.host.display());
    }
    result
}

fn run_in(env: &Env, req: &RunRequest, run_dir: &Path) -> Result<i32, RunError> {
    let t_build = Instant::now();
    let initrd = build_initramfs(env, req, run_dir)?;
    say!("initramfs ready in {}", secs(t_build.elapsed()));
    let kernel = kernel_for_qemu(env, run_dir)?;
    let mut accel = first_accel(env, req.accel)?;
    let t_run = Instant::now();
    let finish = loop {
        let t = Instant::now();
        say!(
            "booting {} with {} GPU(s), topology {}, accel {accel}, timeout {}s (run dir {})",
            env.kernel.release,
            req.gpus,
            req.topology,
            req.timeout.as_secs(),
            run_dir.display()
        );
        match attempt(env, req, run_dir, &kernel, &initrd, accel)? {
            Attempt::Done(f) => {
                if accel == Accel::Kvm && matches!(f, Finish::Completed { .. }) {
                    remember_kvm(env, None);
                }
                match f {
                    Finish::Completed { .. } => {
                        say!("boot-to-poweroff {} ({accel})", secs(t.elapsed()))
                    }
                    _ => say!("guest stopped after {} ({accel})", secs(t.elapsed())),
                }
                break f;
            }
            Attempt::KvmFailed(reason) if req.accel == AccelChoice::Auto => {
                say!("KVM cannot run this guest ({reason}); falling back to TCG");
                remember_kvm(env, Some(&reason));
                accel = Accel::Tcg;
            }
            Attempt::KvmFailed(reason) => return Err(RunError::Kvm(reason)),
        }
    };
    let code = report(req, &finish, run_dir, accel, t_run.elapsed());
    if req.hotplug {
        // The server-side checks of each unplug / re-plug (the guest checks its own side).
        let failed = crate::hotplug::failures(run_dir);
        if !failed.is_empty() {
            say!("hotplug: {} server-side check(s) failed:", failed.len());
            for f in &failed {
                say!("  - {f}");
            }
            if code == exit::PASS {
                return Ok(exit::FAIL);
            }
        }
    }
    Ok(code)
}

fn kernel_for_qemu(env: &Env, run_dir: &Path) -> Result<String, RunError> {
    match env.qemu {
        QemuBinary::Host { .. } => Ok(env.kernel.image.to_string_lossy().into_owned()),
        QemuBinary::InRoot { .. } => {
            if let Some(inner) = env.root().and_then(|r| r.inner_path(&env.kernel.image)) {
                return Ok(inner);
            }
            let copy = run_dir.join("bzImage");
            fs::copy(&env.kernel.image, &copy).map_err(io_err(format!(
                "copy {} into the run directory",
                env.kernel.image.display()
            )))?;
            Ok(qemu_path(env, &copy))
        }
    }
}

fn build_initramfs(env: &Env, req: &RunRequest, run_dir: &Path) -> Result<String, RunError> {
    let initramfs::Built {
        mut modules,
        mut bins,
    } = initramfs::build(env, &req.tests, run_dir)?;
    if !req.kernel_tests.is_empty() {
        let cfg = req.kernel_config.clone().unwrap_or_default();
        let k = crate::kselftest::build(env, &req.kernel_tests, &cfg, run_dir)?;
        modules.extend(k.modules);
        bins.extend(k.bins);
    }
    bins.extend(req.guest_bins.iter().cloned());
    let mut suites: Vec<PathBuf> = req
        .tests
        .suites()
        .iter()
        .map(|s| req.tests.path.join("suites").join(format!("{s}.sh")))
        .collect();
    suites.sort();
    let suite_lib = req.tests.suite_lib()?;
    let mut vars = vec![
        ("VUGPU_GPUS".to_string(), req.gpus.to_string()),
        ("VUGPU_TOPOLOGY".to_string(), req.topology.to_string()),
        ("VUGPU_PEER".to_string(), req.peer.to_string()),
        (
            "VUGPU_SERVER_ARGS".to_string(),
            initramfs::shell_quote(&req.server_args),
        ),
        ("VUGPU_KERNEL".to_string(), env.kernel.release.clone()),
        (
            "VUGPU_KCONFIG".to_string(),
            req.facts.kernel_options.clone(),
        ),
        ("VUGPU_QEMU".to_string(), req.facts.qemu.clone()),
    ];
    if modules
        .iter()
        .any(|m| m.file_name().is_some_and(|n| n == "vugpu.ko"))
    {
        vars.push((
            "VUGPU_MODULE".to_string(),
            "/lib/modules/vugpu.ko".to_string(),
        ));
    }
    let contents = Contents {
        init: req.tests.init(),
        busybox: env.busybox(),
        modules,
        bins,
        suites,
        suite_lib,
        cmd: match &req.mode {
            Mode::Command(c) => Some(c.clone()),
            Mode::Suite(_) => None,
        },
        env: vars,
        extra: env.kernel.initramfs_extra.clone(),
    };
    let out = run_dir.join("initramfs.cpio.gz");
    let size = initramfs::write(&contents, &out)?;
    say!(
        "initramfs {} KiB: {} module(s), {} program(s), {} suite(s), {} suite lib file(s)",
        size / 1024,
        contents.modules.len(),
        contents.bins.len(),
        contents.suites.len(),
        contents.suite_lib.len()
    );
    Ok(qemu_path(env, &out))
}

/// Spawns a thread that reads lines from `r`, appends them to `log` and sends them as events.
fn reader<R: Read + Send + 'static>(
    r: R,
    log: PathBuf,
    tx: Sender<Event>,
    make: fn(String) -> Event,
) {
    thread::spawn(move || {
        let mut logf = File::create(&log).ok();
        let mut br = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match br.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Some(f) = logf.as_mut() {
                        let _ = f.write_all(&buf);
                    }
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .replace('\r', "");
                    if tx.send(make(line)).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Event::Closed);
    });
}

/// Accepts QEMU's connection to the results socket (until `stop`), then reads it.
fn results_reader(
    listener: UnixListener,
    log: PathBuf,
    tx: Sender<Event>,
    stop: Arc<AtomicBool>,
    reply: crate::ctl_agent::ReplyStream,
) {
    thread::spawn(move || {
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break Some(s),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if stop.load(Ordering::Relaxed) {
                        break None;
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                Err(_) => break None,
            }
        };
        match stream {
            Some(s) if s.set_nonblocking(false).is_ok() => {
                // The guest's requests (src/ctl_agent.rs) are answered on the same line.
                if let Ok(w) = s.try_clone() {
                    *reply
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(w);
                }
                reader(s, log, tx, Event::Result);
            }
            _ => {
                let _ = tx.send(Event::Closed);
            }
        }
    });
}

/// The path QEMU uses for GPU `k`'s socket. A socket in the run directory, or anywhere QEMU
/// sees the host's paths, is used as it is; an `--attach` socket outside the root of a QEMU that
/// runs inside it is bind-mounted (in QEMU's private mount namespace only) onto an empty file
/// `attachK.sock` in the run directory, recorded in `binds`.
fn attached_socket_path(
    env: &Env,
    run_dir: &Path,
    socket: &Path,
    k: usize,
    binds: &mut Vec<(PathBuf, String)>,
) -> Result<String, RunError> {
    let (QemuBinary::InRoot { .. }, Some(root)) = (&env.qemu, env.root()) else {
        return Ok(qemu_path(env, socket));
    };
    let real = fs::canonicalize(socket).unwrap_or_else(|_| socket.to_path_buf());
    if let Some(inner) = root.inner_path(&real) {
        return Ok(inner);
    }
    let target = run_dir.join(format!("attach{k}.sock"));
    File::create(&target).map_err(io_err(format!("create {}", target.display())))?;
    let inner = qemu_path(env, &target);
    binds.push((real, inner.clone()));
    Ok(inner)
}

fn qemu_command(env: &Env, args: &[String], binds: &[(PathBuf, String)]) -> Command {
    match (&env.qemu, env.root()) {
        (QemuBinary::Host { path, .. }, _) => {
            let mut c = Command::new(path);
            c.args(args);
            c
        }
        (QemuBinary::InRoot { program, .. }, Some(root)) => {
            let mut argv = vec![program.clone()];
            argv.extend(args.iter().cloned());
            root.command_with_binds(&argv, binds)
        }
        // Not produced by provisioning (host-only mode always has a host QEMU): the name on PATH.
        (QemuBinary::InRoot { .. }, None) => {
            let mut c = Command::new("qemu-system-x86_64");
            c.args(args);
            c
        }
    }
}

/// Alarming console lines worth quoting when the guest dies.
fn alarm(line: &str) -> bool {
    [
        "Kernel panic",
        "BUG:",
        "Oops:",
        "WARNING:",
        "general protection fault",
        "Call Trace:",
    ]
    .iter()
    .any(|k| line.contains(k))
}

fn attempt(
    env: &Env,
    req: &RunRequest,
    run_dir: &Path,
    kernel: &str,
    initrd: &str,
    accel: Accel,
) -> Result<Attempt, RunError> {
    let results_sock = run_dir.join("results.sock");
    let _ = fs::remove_file(&results_sock);
    let listener = UnixListener::bind(&results_sock)
        .map_err(io_err(format!("bind {}", results_sock.display())))?;
    listener
        .set_nonblocking(true)
        .map_err(io_err("results socket"))?;
    let mut servers = if req.attach.is_empty() {
        Servers::start(&req.vugpu, req.gpus, run_dir, &req.server_args)?
    } else {
        Servers::attach(&req.attach)?
    };
    let mut binds = Vec::new();
    let mut sockets = Vec::new();
    let host_sockets: Vec<PathBuf> = servers.iter().map(|s| s.socket.clone()).collect();
    for (k, s) in servers.iter().enumerate() {
        sockets.push(attached_socket_path(
            env, run_dir, &s.socket, k, &mut binds,
        )?);
    }
    let devices = topology::device_args(&TopologySpec {
        topology: req.topology,
        gpu_sockets: sockets,
        peer: req.peer,
        cmb_mb: req.cmb_mb,
        peer_namespaces: peer_namespaces(env, req, run_dir)?,
    })?;
    let mut append = format!("{} vugpu_vm.accel={accel}", qemu::BASE_APPEND);
    if let Mode::Suite(name) = &req.mode {
        append.push_str(&format!(" vugpu.suite={name}"));
    }
    if !req.append.trim().is_empty() {
        append.push(' ');
        append.push_str(req.append.trim());
    }
    let mut extra = req.qemu_args.clone();
    let qmp_sock = run_dir.join("qmp.sock");
    if req.hotplug {
        let _ = fs::remove_file(&qmp_sock);
        extra.push("-qmp".into());
        extra.push(format!(
            "unix:{},server=on,wait=off",
            qemu_path(env, &qmp_sock)
        ));
    }
    // The server's counts before QEMU connects, once its threads are all up (the hotplug agent's
    // reference).
    let gpu_ids: Vec<String> = servers.iter().map(|s| s.id.clone()).collect();
    let server_before = servers.pid().and_then(|pid| {
        let s = crate::hotplug::ServerSample::when_up(pid, &gpu_ids, Duration::from_secs(10))?;
        Some((pid, s))
    });
    let cfg = QemuConfig {
        accel,
        memory_mib: req.memory_mib,
        smp: req.smp,
        ram_sealed: req.ram_sealed,
        kernel: kernel.to_string(),
        initrd: initrd.to_string(),
        append,
        results_socket: qemu_path(env, &results_sock),
        devices,
        extra,
    };
    let args = qemu::args(&cfg);
    let _ = fs::write(
        run_dir.join("qemu.cmdline"),
        format!("qemu-system-x86_64 {}\n", initramfs::shell_quote(&args)),
    );
    let mut cmd = qemu_command(env, &args, &binds);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    process::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(io_err("start QEMU"))?;
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    if let Some(out) = child.stdout.take() {
        reader(out, run_dir.join("console.log"), tx.clone(), Event::Console);
    }
    if let Some(err) = child.stderr.take() {
        reader(err, run_dir.join("qemu.log"), tx.clone(), Event::Qemu);
    }
    let reply: crate::ctl_agent::ReplyStream = Arc::default();
    results_reader(
        listener,
        run_dir.join("results.log"),
        tx,
        stop.clone(),
        reply.clone(),
    );
    let mut w = Watch {
        ctl: Some(crate::ctl_agent::Agent::new(
            req.vugpu.clone(),
            host_sockets,
            reply,
            run_dir.join(crate::ctl_agent::LOG_NAME),
        )),
        ..Watch::default()
    };
    if req.hotplug {
        w.hotplug = Some(crate::hotplug::Agent::start(crate::hotplug::AgentConfig {
            qmp: qmp_sock.clone(),
            devices: crate::hotplug::gpu_devices(&args),
            server: server_before,
            ctl: servers
                .iter()
                .map(|s| (s.id.clone(), crate::servers::ctl_path(&s.socket)))
                .collect(),
            log: run_dir.join(crate::hotplug::LOG_NAME),
        }));
    }
    let outcome = watch(req, &mut child, &rx, &mut servers, accel, &mut w);
    if let Some(agent) = w.hotplug.take() {
        // QEMU may still run (the guest powers off); the agent's pending requests finish first.
        agent.finish();
    }
    stop.store(true, Ordering::Relaxed);
    if let Ok(None) = child.try_wait() {
        process::terminate(&mut child, Duration::from_secs(3));
    }
    // The GPUs' counters as the run left them (P2P traffic per peer among them).
    servers.save_stats(&req.vugpu, run_dir);
    servers.stop();
    drain(&rx, 3usize.saturating_sub(w.closed), Duration::from_secs(2));
    let _ = fs::remove_file(&results_sock);
    outcome
}

/// Namespaces of the NVMe peer and the size of each backing file (sparse, in the run directory).
const PEER_NAMESPACES: usize = 2;
const PEER_NAMESPACE_BYTES: u64 = 64 << 20;

/// Creates the NVMe peer's namespace backing files (zeroed, sparse); their paths as QEMU sees them.
fn peer_namespaces(env: &Env, req: &RunRequest, run_dir: &Path) -> Result<Vec<String>, RunError> {
    if req.peer != Peer::NvmeCmb {
        return Ok(Vec::new());
    }
    (1..=PEER_NAMESPACES)
        .map(|nsid| {
            let f = run_dir.join(format!("peer0-ns{nsid}.img"));
            File::create(&f)
                .and_then(|file| file.set_len(PEER_NAMESPACE_BYTES))
                .map_err(io_err(format!("create {}", f.display())))?;
            Ok(qemu_path(env, &f))
        })
        .collect()
}

/// Consumes remaining events until every reader closed or `limit` passed.
fn drain(rx: &Receiver<Event>, open: usize, limit: Duration) {
    let end = Instant::now() + limit;
    let mut closed = 0;
    while closed < open {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Closed) => closed += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
}

#[derive(Default)]
struct Watch {
    hotplug: Option<crate::hotplug::Agent>,
    /// Answers the guest's control-socket requests (src/ctl_agent.rs).
    ctl: Option<crate::ctl_agent::Agent>,
    collector: Collector,
    console_lines: usize,
    alarms: Vec<String>,
    qemu_stderr: Vec<String>,
    init_started: bool,
    closed: usize,
}

impl Watch {
    fn handle(&mut self, ev: Event, req: &RunRequest, out: &mut impl Write) {
        match ev {
            Event::Console(line) => {
                self.console_lines += 1;
                if req.console {
                    eprintln!("{line}");
                }
                if line.contains("vugpu-init: started") {
                    self.init_started = true;
                }
                if alarm(&line) && self.alarms.len() < 12 {
                    self.alarms.push(line.clone());
                }
                self.feed(Source::Console, &line, out);
            }
            Event::Qemu(line) => {
                if self.qemu_stderr.len() < 200 {
                    self.qemu_stderr.push(line);
                }
            }
            Event::Result(line) => {
                if let Some(agent) = &self.ctl {
                    agent.handle_line(&line);
                }
                if let Some(agent) = &self.hotplug {
                    match crate::hotplug::parse_request(&line) {
                        Some(Ok(r)) => agent.request(r),
                        Some(Err(why)) => agent.fail(why),
                        None => {}
                    }
                }
                self.feed(Source::Results, &line, out)
            }
            Event::Closed => self.closed += 1,
        }
    }

    fn feed(&mut self, src: Source, line: &str, out: &mut impl Write) {
        match self.collector.feed(src, line) {
            Fed::Line => {
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            Fed::Ignored if src == Source::Results => {
                // Output outside the markers on the results channel (should not happen).
                say!("guest: {line}");
            }
            _ => {}
        }
    }
}

fn watch(
    req: &RunRequest,
    child: &mut Child,
    rx: &Receiver<Event>,
    servers: &mut Servers,
    accel: Accel,
    w: &mut Watch,
) -> Result<Attempt, RunError> {
    let start = Instant::now();
    let deadline = start + req.timeout;
    let probe = start + KVM_PROBE.min(req.timeout);
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut ended_at: Option<Instant> = None;
    loop {
        if let Some(sig) = process::interrupted() {
            return Ok(Attempt::Done(Finish::Interrupted(sig)));
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(ev) => {
                w.handle(ev, req, &mut out);
                // Handle bursts without re-checking the clock for every line.
                while let Ok(ev) = rx.try_recv() {
                    w.handle(ev, req, &mut out);
                }
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
        if accel == Accel::Kvm {
            if let Some(l) = w
                .qemu_stderr
                .iter()
                .find(|l| l.contains(qemu::KVM_INTERNAL_ERROR))
            {
                return Ok(Attempt::KvmFailed(l.trim().to_string()));
            }
            if !w.init_started && !w.collector.begun() && Instant::now() > probe {
                return Ok(Attempt::KvmFailed(format!(
                    "the guest did not reach /init within {}s",
                    KVM_PROBE.min(req.timeout).as_secs()
                )));
            }
        }
        if w.collector.end.is_some() && ended_at.is_none() {
            ended_at = Some(Instant::now());
        }
        for (id, status, log) in servers.newly_exited() {
            say!(
                "warning: {id} server exited ({status}) while the guest runs; log {}",
                log.display()
            );
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Collect what the readers still have (QEMU is gone, so they reach EOF).
            let end = Instant::now() + Duration::from_secs(2);
            while w.closed < 3 && Instant::now() < end {
                if let Ok(ev) = rx.recv_timeout(Duration::from_millis(50)) {
                    w.handle(ev, req, &mut out);
                }
            }
            if accel == Accel::Kvm
                && w.qemu_stderr
                    .iter()
                    .any(|l| l.contains(qemu::KVM_INTERNAL_ERROR))
            {
                return Ok(Attempt::KvmFailed(qemu::KVM_INTERNAL_ERROR.to_string()));
            }
            if let Some(rc) = w.collector.end {
                return Ok(Attempt::Done(Finish::Completed {
                    rc,
                    lines: std::mem::take(&mut w.collector.lines),
                }));
            }
            if w.console_lines == 0 {
                return Err(RunError::QemuFailed {
                    status: status.to_string(),
                    stderr: indent(&w.qemu_stderr),
                });
            }
            let mut reason = format!("QEMU exited ({status}) before VUGPU-END");
            if !w.alarms.is_empty() {
                reason.push_str("; the console says:\n");
                reason.push_str(&indent(&w.alarms));
            }
            return Ok(Attempt::Done(Finish::Died { reason }));
        }
        if let Some(t) = ended_at {
            if t.elapsed() > POWEROFF_WAIT {
                say!(
                    "warning: the guest reported VUGPU-END but did not power off within {}s; killing QEMU",
                    POWEROFF_WAIT.as_secs()
                );
                let rc = w.collector.end.unwrap_or(255);
                return Ok(Attempt::Done(Finish::Completed {
                    rc,
                    lines: std::mem::take(&mut w.collector.lines),
                }));
            }
        }
        if Instant::now() > deadline {
            return Ok(Attempt::Done(Finish::TimedOut));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_dirs_of_live_processes_are_kept() {
        let base = std::env::temp_dir().join(format!("vugpu-stale-{}", std::process::id()));
        let me = base.join(format!("vugpu-{}-0", std::process::id()));
        fs::create_dir_all(&me).unwrap();
        remove_stale(&base);
        assert!(me.exists());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn kvm_verdicts_are_per_key() {
        let t = verdict_update("", "host=a kernel=/k1", Some("KVM internal error"));
        let t = verdict_update(&t, "host=a kernel=/k2", Some("no progress\tin 60s"));
        assert_eq!(
            verdict_lookup(&t, "host=a kernel=/k1"),
            Some("KVM internal error")
        );
        assert_eq!(
            verdict_lookup(&t, "host=a kernel=/k2"),
            Some("no progress in 60s")
        );
        assert_eq!(verdict_lookup(&t, "host=b kernel=/k1"), None);
        let t = verdict_update(&t, "host=a kernel=/k1", None);
        assert_eq!(verdict_lookup(&t, "host=a kernel=/k1"), None);
        assert!(verdict_lookup(&t, "host=a kernel=/k2").is_some());
        // The old single-entry format is ignored rather than misread.
        assert_eq!(
            verdict_lookup("host=a kernel=/k1\nreason\n", "host=a kernel=/k1"),
            None
        );
    }

    #[test]
    fn alarms() {
        assert!(alarm(
            "[ 3.1] Kernel panic - not syncing: panic_on_warn set ..."
        ));
        assert!(alarm("[ 3.0] WARNING: CPU: 0 PID: 1 at mm/memremap.c:1"));
        assert!(!alarm("[ 0.0] Linux version 7.2.12"));
    }

    #[test]
    fn kept_runs_are_bounded() {
        let r = |n: &str, alive: bool, secs: u64| SeenRun {
            path: PathBuf::from(n),
            alive,
            age: Duration::from_secs(secs),
        };
        let seen = vec![
            r("old", false, 2 * 24 * 3600),
            r("a", false, 10),
            r("live", true, 3 * 24 * 3600),
            r("b", false, 20),
            r("c", false, 30),
        ];
        let mut gone = stale_runs(seen, 2);
        gone.sort();
        assert_eq!(gone, vec![PathBuf::from("c"), PathBuf::from("old")]);
        assert!(stale_runs(vec![r("a", false, 5)], 10).is_empty());
    }
}
