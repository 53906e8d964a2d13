//! `vugpu`: the vfio-user GPU server. Argument parsing and wiring only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vugpu_device::config::{qemu_device_arg, ServeArgs};
use vugpu_device::ctl::{ctl_path, request};
use vugpu_device::event_loop;
use vugpu_device::log;
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
    /// accepted.
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
    /// Print the QEMU `-device` argument that attaches the GPU served on SOCKET.
    QemuArgs {
        /// The server's socket.
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
    },
}

fn serve(args: &ServeArgs) -> Result<(), String> {
    log::init(args.log_level, args.log_rate_limit, args.log_burst).map_err(|e| e.to_string())?;
    let plan = ServePlan {
        gpus: args
            .gpu_configs()?
            .into_iter()
            .zip(args.sockets())
            .collect(),
        dma_layout: args.dma_layout.into(),
        server_config: args.server_config(),
        ctl: args.ctl_limits(),
    };
    // Before any thread exists, so every thread keeps the signals blocked.
    let signals = event_loop::shutdown_signalfd()
        .map_err(|e| event_loop::ServeError::Signals(e).to_string())?;
    vugpu_device::serve::serve(&plan, signals)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Serve(args) => serve(args),
        Command::Probe { socket } => vugpu_device::probe::probe(socket)
            .map(|report| print!("{report}"))
            .map_err(|e| format!("probe {}: {e}", socket.display())),
        Command::Stats { socket } => request(&ctl_path(socket), "stats")
            .map(|reply| println!("{reply}"))
            .map_err(|e| e.to_string()),
        Command::Ctl { socket, request } => {
            vugpu_device::ctl::run_cli(socket, request, &mut std::io::stdout().lock())
        }
        Command::HwHeader => {
            print!("{}", vugpu_device::hw_header::generate().text);
            Ok(())
        }
        Command::QemuArgs { socket } => {
            println!("{}", qemu_device_arg(socket));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vugpu: error: {e}");
            ExitCode::FAILURE
        }
    }
}
