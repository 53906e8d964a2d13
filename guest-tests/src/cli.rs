//! Command line of `vugpu-vm`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::kbuild::KernelSpec;
use crate::qemu::AccelChoice;
use crate::topology::{Peer, Topology, MAX_GPUS};

/// Boots a Linux guest with vugpu GPUs attached over vfio-user and runs a test suite or a
/// command in it. Provisions QEMU >= 10.1 and a guest kernel on first use (cached under
/// $VUGPU_CACHE, default /var/cache/vugpu). Must run as root, except with --kernel,
/// --kernel-build-dir and --qemu together: then only the host's tools are used, no root is needed
/// and the cache is $VUGPU_CACHE, $XDG_CACHE_HOME/vugpu or ~/.cache/vugpu.
///
/// Exit codes: 0 pass; 1 a test failed (or the plan/rc was wrong, or a GPU was not bound); 2
/// usage error; 3 the guest died before reporting; 4 nothing passed (every skip expected); 5 a
/// test skipped that the suite does not list as an expected skip; 124 timeout; 125 host-side
/// error (provisioning, build, QEMU or server start). With `-- CMD`: CMD's own exit code, or
/// 124/125.
#[derive(Debug, Parser)]
#[command(
    name = "vugpu-vm",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// Subcommand (default: run a guest).
    #[command(subcommand)]
    pub sub: Option<Sub>,
    /// Run options.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Create or verify the cached environment (QEMU, kernel, headers, toolchain) and print it.
    /// Refreshes apt lists older than a day and re-runs the (cheap) apt installs.
    Provision(ProvisionArgs),
    /// Build a guest kernel from Debian's linux-source-X.Y (or take it from the cache) and print
    /// where it is: SPEC is 6.12, 6.12-debug, newest or newest-debug (see --build-kernel).
    /// Reinstalls the source package first if apt has a newer one.
    BuildKernel(BuildKernelArgs),
}

/// `build-kernel` options.
#[derive(Debug, Args)]
pub struct BuildKernelArgs {
    /// Which kernel: X.Y (a linux-source-X.Y package, e.g. 6.12) or newest (trixie-backports'
    /// newest), optionally with -debug.
    #[arg(value_name = "SPEC")]
    pub spec: KernelSpec,
    /// The guest-tests directory (kernel/ holds the config fragments).
    #[arg(long, value_name = "DIR")]
    pub tests_dir: Option<PathBuf>,
}

/// `provision` options.
#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// Run `apt-get update` in the root even if the lists are fresh.
    #[arg(long)]
    pub refresh: bool,
    /// Environment options.
    #[command(flatten)]
    pub env: EnvArgs,
}

/// Options that choose the environment.
#[derive(Debug, Args, Clone, Default)]
pub struct EnvArgs {
    /// Boot this kernel image (bzImage) instead of Debian's 7.x from trixie-backports.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Build tree of --kernel (prepared for out-of-tree modules); vugpu.ko is built against it
    /// with the host's make and compiler.
    #[arg(long, value_name = "DIR", requires = "kernel")]
    pub kernel_build_dir: Option<PathBuf>,
    /// .config of --kernel (default: DIR/.config of --kernel-build-dir, or config-VER next to a
    /// vmlinuz-VER image).
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub kernel_config: Option<PathBuf>,
    /// Build the guest kernel from Debian's linux-source-X.Y with guest-tests/kernel/*.config
    /// and boot it (cached by source version, variant and fragment): 6.12, 6.12-debug, newest,
    /// newest-debug.
    #[arg(long, value_name = "SPEC", conflicts_with = "kernel")]
    pub build_kernel: Option<KernelSpec>,
    /// Pack these kernel modules (comma-separated names, e.g. nvme) with their dependencies
    /// into the initramfs; /init loads them at boot. Debian's kernel: from linux-modules-KVER
    /// (installed on demand); --build-kernel: from its modules_install.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub modules: Vec<String>,
    /// Use this QEMU binary (host path; must be >= 10.1 with vfio-user-pci) instead of the host's
    /// qemu-system-x86_64 or the one in the trixie root. A binary under the trixie root (symlinks
    /// resolved, e.g. what scripts/build-qemu-hotplugfix makes) runs inside the root.
    #[arg(long, value_name = "PATH")]
    pub qemu: Option<PathBuf>,
    /// The guest-tests directory (kmod/, user/, suites/, initramfs/).
    #[arg(long, value_name = "DIR")]
    pub tests_dir: Option<PathBuf>,
}

/// Options of a run.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run guest-tests/suites/NAME.sh in the guest and check its KTAP output.
    #[arg(long, value_name = "NAME", conflicts_with = "command")]
    pub suite: Option<String>,
    /// Number of vugpu GPUs to attach (default: what the suite declares; 0 with -- CMD).
    #[arg(long, value_parser = clap::value_parser!(u16).range(0..=MAX_GPUS as i64))]
    pub gpus: Option<u16>,
    /// Attach a GPU to the socket of an already running `vugpu serve` instead of starting a
    /// server (repeatable: one per GPU, gpu0 first; --gpus defaults to their number). The
    /// socket must be a vugpu server's (its SOCKET.ctl answers) and idle (one client at a
    /// time); the server is never stopped. Excludes --server-args.
    #[arg(long, value_name = "SOCKET", conflicts_with = "server_args")]
    pub attach: Vec<PathBuf>,
    /// The vugpu server binary (default: `vugpu` next to this executable).
    #[arg(long, value_name = "PATH")]
    pub vugpu: Option<PathBuf>,
    /// Extra arguments for every `vugpu serve` (shell-style words, e.g. "--inject msix-dead=3").
    #[arg(
        long,
        value_name = "ARGS",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub server_args: String,
    /// PCIe topology of the GPUs (default: the suite's, else rootports).
    #[arg(long, value_enum)]
    pub topology: Option<Topology>,
    /// An emulated P2P peer next to the GPUs (default: the suite's, else none).
    #[arg(long, value_enum)]
    pub peer: Option<Peer>,
    /// Controller Memory Buffer size of the nvme-cmb peer, MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub cmb_mb: u32,
    /// Accelerator: auto tries KVM and falls back to TCG when the guest dies or stalls under it.
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    pub accel: AccelChoice,
    /// Bound for one boot, in seconds (from QEMU start to VUGPU-END; default: the suite's
    /// declared `timeout`, else 300).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: Option<u64>,
    /// Guest RAM (e.g. 2G, 4096M; default: the suite's declared minimum, else 2G).
    #[arg(long)]
    pub memory: Option<String>,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub smp: u32,
    /// Back guest RAM with an unsealed memfd (`seal=off`): the server then reaches guest RAM
    /// with pread/pwrite instead of a mapping, the path it takes for any fd a client could
    /// shrink (slower; for testing that path).
    #[arg(long)]
    pub unsealed_ram: bool,
    /// Extra kernel command line (may be repeated).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub append: Vec<String>,
    /// Extra QEMU argument (may be repeated; one word each).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub qemu_arg: Vec<String>,
    /// Keep the run directory (initramfs, logs, sockets) even on success.
    #[arg(long)]
    pub keep: bool,
    /// Echo the guest console (kernel log) on stderr while it runs.
    #[arg(long)]
    pub console: bool,
    /// Put this host executable (statically linked: the guest has no libc) into the guest's
    /// /bin, e.g. your own test tool (may be repeated).
    #[arg(long, value_name = "PATH")]
    pub guest_bin: Vec<PathBuf>,
    /// Also write the suite's results as JUnit XML to FILE (what it ran on in <properties>).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Environment options.
    #[command(flatten)]
    pub env: EnvArgs,
    /// Command to run in the guest (after `--`); its output is streamed and its exit code
    /// becomes vugpu-vm's.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Splits shell-style words as `sh` does (the `shlex` crate, POSIX rules): whitespace separates,
/// single quotes are literal, double quotes allow `\"`, `\\`, `\$` and `` \` ``, a backslash
/// outside quotes escapes the next character, and a `#` starting a word comments out the rest of
/// the line.
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    if s.contains('\0') {
        return Err(format!("NUL byte in {s:?}"));
    }
    shlex::split(s).ok_or_else(|| format!("unterminated quote or trailing backslash in {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vugpu-vm").chain(args.iter().copied()))
    }

    #[test]
    fn command_after_double_dash() {
        let c = parse(&[
            "--gpus",
            "1",
            "--",
            "sh",
            "-c",
            "cat /sys/bus/pci/devices/*/vendor",
        ])
        .unwrap();
        assert_eq!(c.run.gpus, Some(1));
        assert_eq!(
            c.run.command,
            ["sh", "-c", "cat /sys/bus/pci/devices/*/vendor"]
        );
        assert!(c.sub.is_none());
    }

    #[test]
    fn suite_and_defaults() {
        let c = parse(&["--suite", "smoke"]).unwrap();
        assert_eq!(c.run.suite.as_deref(), Some("smoke"));
        // Unset: the suite's declaration decides.
        assert_eq!(c.run.gpus, None);
        assert_eq!(c.run.topology, None);
        assert_eq!(c.run.peer, None);
        assert_eq!(c.run.memory, None);
        assert_eq!(c.run.junit, None);
        assert_eq!(c.run.accel, AccelChoice::Auto);
        assert_eq!(c.run.timeout, None);
        assert_eq!(c.run.smp, 2);
        let c = parse(&["--suite", "smoke", "--junit", "/tmp/j.xml"]).unwrap();
        assert_eq!(c.run.junit, Some(PathBuf::from("/tmp/j.xml")));
    }

    #[test]
    fn suite_conflicts_with_command() {
        assert!(parse(&["--suite", "smoke", "--", "true"]).is_err());
    }

    #[test]
    fn server_args_may_start_with_dashes() {
        let c = parse(&[
            "--gpus",
            "2",
            "--server-args",
            "--inject msix-dead=3",
            "--suite",
            "x",
        ])
        .unwrap();
        assert_eq!(
            split_words(&c.run.server_args).unwrap(),
            ["--inject", "msix-dead=3"]
        );
    }

    #[test]
    fn enums_and_limits() {
        let c = parse(&[
            "--topology",
            "switch",
            "--peer",
            "nvme-cmb",
            "--accel",
            "tcg",
            "--",
            "true",
        ])
        .unwrap();
        assert_eq!(c.run.topology, Some(Topology::Switch));
        assert_eq!(c.run.peer, Some(Peer::NvmeCmb));
        assert_eq!(c.run.accel, AccelChoice::Tcg);
        assert!(parse(&["--gpus", "17", "--", "true"]).is_err());
        assert!(parse(&["--topology", "ring", "--", "true"]).is_err());
        assert!(parse(&["--timeout", "0", "--", "true"]).is_err());
    }

    #[test]
    fn kernel_build_dir_requires_kernel() {
        assert!(parse(&["--kernel-build-dir", "/x", "--", "true"]).is_err());
        let c = parse(&["--kernel", "/k", "--kernel-build-dir", "/x", "--", "true"]).unwrap();
        assert_eq!(c.run.env.kernel_build_dir, Some(PathBuf::from("/x")));
    }

    #[test]
    fn provision_subcommand() {
        let c = parse(&["provision", "--refresh"]).unwrap();
        match c.sub {
            Some(Sub::Provision(p)) => assert!(p.refresh),
            _ => panic!("not provision"),
        }
        let c = parse(&["provision", "--kernel", "/k"]).unwrap();
        assert!(matches!(
            c.sub,
            Some(Sub::Provision(ProvisionArgs {
                env: EnvArgs {
                    kernel: Some(_),
                    ..
                },
                ..
            }))
        ));
    }

    #[test]
    fn build_kernel_and_modules() {
        let c = parse(&[
            "--build-kernel",
            "6.12-debug",
            "--modules",
            "nvme,test_hmm",
            "--",
            "true",
        ])
        .unwrap();
        assert_eq!(c.run.env.build_kernel.unwrap().to_string(), "6.12-debug");
        assert_eq!(c.run.env.modules, ["nvme", "test_hmm"]);
        assert!(parse(&["--build-kernel", "6.x", "--", "true"]).is_err());
        assert!(parse(&["--build-kernel", "newest", "--kernel", "/k", "--", "true"]).is_err());
        let c = parse(&["build-kernel", "newest"]).unwrap();
        assert!(
            matches!(c.sub, Some(Sub::BuildKernel(b)) if b.spec.series == crate::kbuild::Series::Newest)
        );
        assert!(parse(&["build-kernel"]).is_err());
    }

    #[test]
    fn attach_is_repeatable_and_excludes_server_args() {
        let c = parse(&[
            "--attach",
            "/run/a.sock",
            "--attach",
            "b.sock",
            "--suite",
            "dma",
        ])
        .unwrap();
        assert_eq!(
            c.run.attach,
            [PathBuf::from("/run/a.sock"), PathBuf::from("b.sock")]
        );
        assert_eq!(c.run.gpus, None);
        let c = parse(&["--suite", "smoke"]).unwrap();
        assert!(c.run.attach.is_empty());
        assert!(parse(&[
            "--attach",
            "/a",
            "--server-args",
            "--vram 1G",
            "--suite",
            "smoke"
        ])
        .is_err());
        assert!(parse(&["--attach", "--suite", "smoke"]).is_err());
    }

    #[test]
    fn words() {
        assert_eq!(split_words("").unwrap(), Vec::<String>::new());
        assert_eq!(split_words("  a  b ").unwrap(), ["a", "b"]);
        assert_eq!(
            split_words(r#"--name 'x y' "a \"q\"" c\ d ''"#).unwrap(),
            ["--name", "x y", "a \"q\"", "c d", ""]
        );
        assert!(split_words("'open").is_err());
        assert!(split_words("\"open").is_err());
        assert!(split_words("end\\").is_err());
        assert!(split_words("a\0b").is_err());
        assert_eq!(split_words("a # b").unwrap(), ["a"]);
        assert_eq!(split_words("a#b").unwrap(), ["a#b"]);
    }
}
