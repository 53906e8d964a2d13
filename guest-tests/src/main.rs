//! `vugpu-vm`: provisions QEMU >= 10.1 and a guest kernel, boots guests with vugpu GPUs attached
//! over vfio-user, runs a KTAP suite or a command in them, and reports with a meaningful exit
//! code. See guest-tests/README.md.

/// Prints a runner message on stderr.
macro_rules! say {
    ($($t:tt)*) => {
        eprintln!("vugpu-vm: {}", format_args!($($t)*))
    };
}
pub(crate) use say;

mod cli;
mod ctl_agent;
mod hostonly;
mod hotplug;
mod initramfs;
mod junit;
mod kbuild;
mod kernel;
mod kselftest;
mod ktap;
mod process;
mod provision;
mod qemu;
mod report;
mod root;
mod run;
mod servers;
mod suite;
mod topology;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::cli::{Cli, EnvArgs, Sub};
use crate::initramfs::TestsDir;
use crate::kernel::{KernelConfig, ModuleBuild};
use crate::provision::{KernelChoice, ProvisionError, ProvisionOptions, QemuBinary, Toolchain};
use crate::run::{Mode, RunError, RunRequest};
use crate::suite::{Requested, Resolved, SuiteSpec};

/// Exit codes (documented in README.md and `--help`).
pub mod exit {
    /// Suite passed / command exited 0.
    pub const PASS: i32 = 0;
    /// A test failed, the plan did not match, or the suite script failed.
    pub const FAIL: i32 = 1;
    /// Bad command line.
    pub const USAGE: i32 = 2;
    /// The guest died (panic, oops, QEMU exit) before VUGPU-END (suite mode).
    pub const GUEST_DIED: i32 = 3;
    /// Nothing passed: every test skipped (each skip expected), or an empty plan.
    pub const SKIPPED: i32 = 4;
    /// A test skipped that the suite does not declare as an expected skip (or the suite
    /// cannot run on this kernel): not a pass.
    pub const UNEXPECTED_SKIP: i32 = 5;
    /// No VUGPU-END within --timeout.
    pub const TIMEOUT: i32 = 124;
    /// Host-side failure: provisioning, building, starting QEMU or a server.
    pub const INFRA: i32 = 125;
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error(transparent)]
    Run(#[from] RunError),
}

impl Error {
    fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Provision(_) | Error::Run(_) => exit::INFRA,
        }
    }
}

/// `--timeout` when neither the command line nor the suite says.
const DEFAULT_TIMEOUT_S: u64 = 300;

fn main() -> ExitCode {
    let cli = Cli::parse();
    process::catch_signals();
    let code = match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            say!("error: {e}");
            e.exit_code()
        }
    };
    let code = process::interrupted().map_or(code, |sig| 128 + sig);
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(255))
}

fn tests_dir(env: &EnvArgs) -> TestsDir {
    TestsDir {
        path: env
            .tests_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
    }
}

fn provision_options(
    env: &EnvArgs,
    tests: &TestsDir,
    explicit: bool,
    refresh: bool,
) -> Result<ProvisionOptions, ProvisionError> {
    let kernel = match &env.kernel {
        None => KernelChoice::Debian,
        Some(image) => KernelChoice::Custom {
            image: image.clone(),
            build_dir: env.kernel_build_dir.clone(),
            config: env.kernel_config.clone(),
        },
    };
    let host_only = hostonly::selected(env);
    let cache = if host_only {
        hostonly::cache_dir(
            std::env::var_os("VUGPU_CACHE"),
            std::env::var_os("XDG_CACHE_HOME"),
            std::env::var_os("HOME"),
        )
        .map_err(ProvisionError::HostOnly)?
    } else {
        std::env::var_os("VUGPU_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(provision::DEFAULT_CACHE))
    };
    Ok(ProvisionOptions {
        cache,
        mirror: std::env::var("VUGPU_MIRROR").unwrap_or_else(|_| provision::DEFAULT_MIRROR.into()),
        explicit,
        refresh,
        kernel,
        qemu: env.qemu.clone(),
        host_only,
        extra_packages: tests.apt_packages(),
    })
}

/// `--attach` sockets as absolute paths (the runner works from other directories).
fn attach_sockets(attach: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    attach
        .iter()
        .map(|p| {
            std::path::absolute(p)
                .map_err(|e| Error::Usage(format!("--attach {}: {e}", p.display())))
        })
        .collect()
}

/// The GPU count asked for, given `n` `--attach` sockets and `--gpus`: with sockets, one GPU
/// per socket, and `--gpus` must agree.
fn attach_gpus(n: usize, gpus: Option<u16>) -> Result<Option<u16>, String> {
    if n == 0 {
        return Ok(gpus);
    }
    let n16 = u16::try_from(n)
        .ok()
        .filter(|&v| usize::from(v) <= topology::MAX_GPUS)
        .ok_or_else(|| format!("{n} --attach sockets; at most {} GPUs", topology::MAX_GPUS))?;
    match gpus {
        Some(g) if g != n16 => Err(format!(
            "--gpus {g} but {n} --attach socket(s): each attached GPU is one socket"
        )),
        _ => Ok(Some(n16)),
    }
}

fn real_main(cli: Cli) -> Result<i32, Error> {
    if let Some(Sub::BuildKernel(b)) = &cli.sub {
        let env_args = EnvArgs {
            tests_dir: b.tests_dir.clone(),
            ..EnvArgs::default()
        };
        let tests = tests_dir(&env_args);
        let env = provision::provision(&provision_options(&env_args, &tests, false, false)?)?;
        kbuild::print_build(&env, &tests, &b.spec).map_err(ProvisionError::from)?;
        return Ok(exit::PASS);
    }
    if let Some(Sub::Provision(p)) = cli.sub {
        let tests = tests_dir(&p.env);
        let mut env = provision::provision(&provision_options(&p.env, &tests, true, p.refresh)?)?;
        kbuild::prepare(
            &mut env,
            &tests,
            p.env.build_kernel.as_ref(),
            &p.env.modules,
        )?;
        println!("cache:   {}", env.cache.display());
        match &env.toolchain {
            Toolchain::Root(root) => println!("root:    {}", root.path().display()),
            Toolchain::Host { busybox } => println!(
                "root:    none (host-only: the host's make and cc, busybox {})",
                busybox.display()
            ),
        }
        match &env.qemu {
            QemuBinary::Host { .. } => println!("qemu:    {} (host)", env.qemu.label()),
            QemuBinary::InRoot { .. } => println!("qemu:    {} (in the root)", env.qemu.label()),
        }
        println!("kernel:  {}", env.kernel.release);
        println!("image:   {}", env.kernel.image.display());
        println!("config:  {}", env.kernel.config_path.display());
        let kconfig = KernelConfig::read(&env.kernel.config_path).map_err(ProvisionError::from)?;
        for (opt, why) in kernel::FEATURE_OPTIONS {
            let have = kconfig.get(opt).unwrap_or("n");
            println!("feature: CONFIG_{opt}={have} ({why})");
        }
        match &env.kernel.modules {
            ModuleBuild::InRoot { kdir, cc } => println!(
                "modules: built in the root against {kdir} with {}",
                cc.as_deref().unwrap_or("the default compiler")
            ),
            ModuleBuild::Host { kdir, cc } => println!(
                "modules: built on the host against {} with {}",
                kdir.display(),
                cc.as_deref().unwrap_or("the default compiler")
            ),
            ModuleBuild::Unavailable(why) => println!("modules: unavailable: {why}"),
        }
        // The test programs' kselftest harness, fetched now so that a run needs no network.
        if !matches!(env.kernel.modules, ModuleBuild::Unavailable(_)) {
            let h = kselftest::harness(&env).map_err(ProvisionError::from)?;
            println!("harness: kselftest_harness.h of {} in {}", h.label, h.dir);
        }
        return Ok(exit::PASS);
    }
    let r = cli.run;
    let tests = tests_dir(&r.env);
    let mode = match (&r.suite, r.command.is_empty()) {
        (Some(s), true) => Mode::Suite(s.clone()),
        (None, false) => Mode::Command(r.command.clone()),
        (None, true) => {
            return Err(Error::Usage(
                "nothing to run: give --suite NAME or -- CMD [ARGS...] (see --help)".into(),
            ))
        }
        (Some(_), false) => {
            return Err(Error::Usage("--suite and -- CMD exclude each other".into()))
        }
    };
    if let Mode::Suite(name) = &mode {
        let suites = tests.suites();
        if !suites.contains(name) {
            return Err(Error::Usage(format!(
                "unknown suite {name:?}: {}",
                if suites.is_empty() {
                    format!(
                        "no suites in {}/suites (use --tests-dir)",
                        tests.path.display()
                    )
                } else {
                    format!("available: {}", suites.join(", "))
                }
            )));
        }
    }
    let attach = attach_sockets(&r.attach)?;
    // Fail fast on a wrong path; the server itself is checked right before each boot.
    servers::check_attach_paths(&attach).map_err(RunError::from)?;
    let requested = Requested {
        gpus: attach_gpus(attach.len(), r.gpus).map_err(Error::Usage)?,
        topology: r.topology,
        peer: r.peer,
        memory_mib: r
            .memory
            .as_deref()
            .map(qemu::parse_memory_mib)
            .transpose()
            .map_err(Error::Usage)?,
    };
    let spec = match &mode {
        Mode::Suite(name) => {
            Some(SuiteSpec::load(&tests.path, name).map_err(|e| Error::Usage(e.to_string()))?)
        }
        Mode::Command(_) => None,
    };
    let boot = match &spec {
        Some(s) => s.resolve(&requested).map_err(Error::Usage)?,
        None => Resolved {
            gpus: requested.gpus.unwrap_or(0),
            topology: requested.topology.unwrap_or_default(),
            peer: requested.peer.unwrap_or_default(),
            memory_mib: requested.memory_mib.unwrap_or(suite::DEFAULT_MEMORY_MIB),
        },
    };
    let server_args = cli::split_words(&r.server_args)
        .map_err(|e| Error::Usage(format!("--server-args: {e}")))?;
    if let Some(s) = spec
        .as_ref()
        .filter(|s| !attach.is_empty() && !s.server_args.is_empty())
    {
        say!(
            "note: suite {} declares server arguments `{}`; with --attach the running server's own arguments apply",
            s.name,
            s.server_args.join(" ")
        );
    }
    // The suite's declared server arguments first; an option the command line gives wins.
    let server_args = match &spec {
        Some(s) => suite::merge_server_args(&s.server_args, &server_args),
        None => server_args,
    };
    let vugpu = match &r.vugpu {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("vugpu")))
            .unwrap_or_else(|| PathBuf::from("vugpu")),
    };
    for b in &r.guest_bin {
        if !b.is_file() {
            return Err(Error::Usage(format!(
                "--guest-bin {}: no such file",
                b.display()
            )));
        }
    }
    if boot.gpus > 0 && attach.is_empty() && !vugpu.is_file() {
        return Err(RunError::Server(servers::ServerError::NoBinary(vugpu)).into());
    }
    // The servers are started from the run directory: a relative path must not depend on that.
    let vugpu = std::path::absolute(&vugpu).unwrap_or(vugpu);
    let mut env = provision::provision(&provision_options(&r.env, &tests, false, false)?)?;
    // Distro modules: what --modules asks for plus what the suite declares.
    let mut modules = r.env.modules.clone();
    for m in spec.iter().flat_map(|s| &s.modules) {
        if !modules.contains(m) {
            modules.push(m.clone());
        }
    }
    kbuild::prepare(&mut env, &tests, r.env.build_kernel.as_ref(), &modules)?;
    say!("{}", env.describe());
    let kconfig = KernelConfig::read(&env.kernel.config_path).map_err(ProvisionError::from)?;
    let mut watched: Vec<String> = kernel::REPORTED_OPTIONS
        .iter()
        .map(|o| o.to_string())
        .collect();
    if let Some(s) = &spec {
        for o in &s.kernel_config {
            if !watched.contains(o) {
                watched.push(o.clone());
            }
        }
    }
    let facts = run::RunFacts {
        kernel_release: env.kernel.release.clone(),
        kernel_options: kconfig.summary(&watched),
        qemu: env.qemu.label(),
    };
    let expected_skips = spec
        .as_ref()
        .map(|s| s.expected_on(&kconfig))
        .unwrap_or_default();
    if let Some(s) = &spec {
        let missing = s.missing_config(&kconfig);
        if !missing.is_empty() {
            let why = format!(
                "suite {} cannot run on kernel {}: its config lacks {} (declared with `vugpu-vm: kernel-config`); nothing was run",
                s.name,
                env.kernel.release,
                missing.join(" ")
            );
            say!("{why}");
            if let Some(path) = &r.junit {
                run::write_junit(path, &s.name, None, &[], &facts, None, vec![why], 0.0);
            }
            return Ok(exit::UNEXPECTED_SKIP);
        }
    }
    let req = RunRequest {
        mode,
        gpus: usize::from(boot.gpus),
        vugpu,
        // The attached server's arguments are not ours to know (or to merge).
        server_args: if attach.is_empty() {
            server_args
        } else {
            Vec::new()
        },
        attach,
        hotplug: spec.as_ref().is_some_and(|s| s.hotplug),
        topology: boot.topology,
        peer: boot.peer,
        cmb_mb: r.cmb_mb,
        accel: r.accel,
        timeout: Duration::from_secs(
            r.timeout
                .or(spec.as_ref().and_then(|s| s.timeout_s))
                .unwrap_or(DEFAULT_TIMEOUT_S),
        ),
        memory_mib: boot.memory_mib,
        smp: r.smp,
        ram_sealed: !r.unsealed_ram,
        append: r.append.join(" "),
        tests,
        keep: r.keep,
        console: r.console,
        qemu_args: r.qemu_arg,
        expected_skips,
        junit: r.junit,
        guest_bins: r.guest_bin,
        facts,
        kernel_tests: spec
            .as_ref()
            .map(|s| s.kernel_tests.clone())
            .unwrap_or_default(),
        kernel_config: Some(kconfig),
    };
    Ok(run::run(&env, &req)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_sets_the_gpu_count() {
        assert_eq!(attach_gpus(0, None), Ok(None));
        assert_eq!(attach_gpus(0, Some(3)), Ok(Some(3)));
        assert_eq!(attach_gpus(2, None), Ok(Some(2)));
        assert_eq!(attach_gpus(2, Some(2)), Ok(Some(2)));
        let e = attach_gpus(2, Some(1)).unwrap_err();
        assert!(e.contains("--gpus 1") && e.contains("2 --attach"), "{e}");
        assert!(attach_gpus(topology::MAX_GPUS + 1, None).is_err());
    }

    #[test]
    fn attach_paths_become_absolute() {
        let a =
            attach_sockets(&[PathBuf::from("x/gpu0.sock"), PathBuf::from("/r/g.sock")]).unwrap();
        assert!(a[0].is_absolute() && a[0].ends_with("x/gpu0.sock"));
        assert_eq!(a[1], PathBuf::from("/r/g.sock"));
    }
}
