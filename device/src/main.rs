//! `vugpu`: the vfio-user GPU server. Argument parsing and wiring only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use vugpu_device::config::ServeArgs;
use vugpu_device::config_file::{ensure_private_dir, resolve};
use vugpu_device::ctl::{ctl_path, request};
use vugpu_device::event_loop;
use vugpu_device::log;
use vugpu_device::qemu_args::QemuArgs;
use vugpu_device::serve::ServePlan;

/// vugpu: an out-of-process PCIe GPU model that speaks vfio-user, for QEMU's vfio-user-pci.
#[derive(Debug, Parser)]
#[command(name = "vugpu", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve one GPU per vfio-user UNIX socket until SIGINT/SIGTERM; several GPUs in one process
    /// are peers (DMA to a peer's VRAM BAR goes straight to its VRAM). Each socket serves one
    /// client at a time; a client that disconnects (or misbehaves) is dropped and the next one is
    /// accepted. Options come from the command line and --config FILE.toml (command line >
    /// [[gpu]] table > top level of the file > default). Without a socket option the sockets are
    /// $XDG_RUNTIME_DIR/vugpu/gpuK.sock (else /run/vugpu/gpuK.sock; the directory is created
    /// with mode 0700). Exit codes: 0 after SIGINT/SIGTERM, 1 on a runtime error, 2 on a usage
    /// or configuration error.
    Serve(Box<ServeArgs>),
    /// Connect to a running server as a client and print the device it exposes: protocol
    /// capabilities, device info, regions, IRQs and the decoded config space.
    Probe {
        /// The server's socket.
        socket: PathBuf,
    },
    /// Print the DMA engines' state and statistics (JSON) of the server on SOCKET, read from
    /// its control socket SOCKET.ctl (the same as `vugpu ctl SOCKET stats`).
    Stats {
        /// The server's vfio-user socket.
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
    },
    /// Talk to a running server's control socket (hw-spec §8.2, §8.4, §10): `stats` (JSON, as
    /// `vugpu stats`), `trace` (the live transaction trace as JSON lines, until interrupted),
    /// `inject FAULT [KEY=VALUE...]` (dma-error engine=N [count=K], hang engine=N,
    /// poison offset=O length=L, msix-drop vector=V [count=K], remove, clear).
    Ctl {
        /// The server's vfio-user socket (or its control socket, PATH.ctl).
        socket: PathBuf,
        /// The request.
        #[arg(required = true, num_args = 1.., trailing_var_arg = true)]
        request: Vec<String>,
    },
    /// Print the C header of the hardware contract (guest-tests/kmod/vugpu_hw.h), generated
    /// from the model's register map.
    HwHeader,
    /// Print the QEMU arguments that attach the GPUs in a PCIe topology: the guest RAM backend
    /// vfio-user needs (`-object memory-backend-memfd,...,share=on` named by `-machine
    /// q35,memory-backend=mem`: DMA_MAP messages must carry fds the server can map), the ports
    /// and the `vfio-user-pci` devices, exactly as `vugpu-vm` builds them for the same topology.
    QemuArgs(QemuArgs),
}

/// Why a command failed.
enum Failure {
    /// Bad command line or configuration: exit 2.
    Usage(String),
    /// Exit 1.
    Runtime(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Failure {
        Failure::Runtime(e)
    }
}

fn serve(matches: &clap::ArgMatches) -> Result<(), Failure> {
    let resolved = resolve(matches).map_err(|e| Failure::Usage(e.to_string()))?;
    let args = &resolved.process;
    log::init(args.log_level, args.log_rate_limit, args.log_burst)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    if let Some(dir) = &resolved.default_dir {
        ensure_private_dir(dir)?;
    }
    let plan = ServePlan {
        gpus: resolved.gpus,
        dma_layout: args.dma_layout.into(),
        server_config: args.server_config(),
        ctl: args.ctl_limits(),
        socket_mode: args.socket_mode,
    };
    // Before any thread exists, so every thread keeps the signals blocked.
    let signals = event_loop::shutdown_signalfd()
        .map_err(|e| event_loop::ServeError::Signals(e).to_string())?;
    Ok(vugpu_device::serve::serve(&plan, signals)?)
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match &cli.command {
        Command::Serve(_) => match matches.subcommand_matches("serve") {
            Some(m) => serve(m),
            None => Err(Failure::Usage("no serve options".into())),
        },
        Command::Probe { socket } => vugpu_device::probe::probe(socket)
            .map(|report| print!("{report}"))
            .map_err(|e| Failure::Runtime(format!("probe {}: {e}", socket.display()))),
        Command::Stats { socket } => request(&ctl_path(socket), "stats")
            .map(|reply| println!("{reply}"))
            .map_err(|e| Failure::Runtime(e.to_string())),
        Command::Ctl { socket, request } => {
            vugpu_device::ctl::run_cli(socket, request, &mut std::io::stdout().lock())
                .map_err(Failure::Runtime)
        }
        Command::HwHeader => {
            print!("{}", vugpu_device::hw_header::generate().text);
            Ok(())
        }
        Command::QemuArgs(q) => q
            .render()
            .map(|text| print!("{text}"))
            .map_err(|e| Failure::Usage(e.to_string())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("vugpu: error: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("vugpu: error: {e}");
            ExitCode::FAILURE
        }
    }
}
