//! `vugpu`: the vfio-user GPU server. Argument parsing and wiring only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vugpu_device::config::{check_socket_path, qemu_device_arg, ServeArgs};
use vugpu_device::ctl::{ctl_path, request, CtlServer};
use vugpu_device::event_loop::{self, Server, SocketFile};
use vugpu_device::gpu::Gpu;
use vugpu_device::log::{self, Level};
use vugpu_protocol::ServerConfig;

/// vugpu: an out-of-process PCIe GPU model that speaks vfio-user, for QEMU's vfio-user-pci.
#[derive(Debug, Parser)]
#[command(name = "vugpu", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve one GPU on a vfio-user UNIX socket until SIGINT/SIGTERM. Clients are served one at a
    /// time; a client that disconnects (or misbehaves) is dropped and the next one is accepted.
    Serve(ServeArgs),
    /// Connect to a running server as a client and print the device it exposes: protocol
    /// capabilities, device info, regions, IRQs and the decoded config space.
    Probe {
        /// The server's socket.
        socket: PathBuf,
    },
    /// Print the DMA engines' state and statistics (JSON) of the server on SOCKET, read from
    /// its control socket SOCKET.ctl.
    Stats {
        /// The server's vfio-user socket.
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
    },
    /// Print the QEMU `-device` argument that attaches the GPU served on SOCKET.
    QemuArgs {
        /// The server's socket.
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
    },
}

fn serve(args: &ServeArgs) -> Result<(), String> {
    log::set_level(args.log_level);
    log::start_clock();
    let cfg = args.gpu_config()?;
    check_socket_path(&args.socket)?;
    // Before any thread exists, so every thread keeps the signals blocked.
    let signals = event_loop::shutdown_signalfd()
        .map_err(|e| event_loop::ServeError::Signals(e).to_string())?;
    let gpu = Gpu::new(&cfg).map_err(|e| e.to_string())?;
    let _ctl = CtlServer::start(&ctl_path(&args.socket), gpu.engine_monitor())
        .map_err(|e| e.to_string())?;
    let (listener, _guard) = SocketFile::bind(&args.socket).map_err(|e| e.to_string())?;
    let mut server = Server::new(listener, gpu, ServerConfig::default(), Some(signals))
        .map_err(|e| e.to_string())?;
    server.set_dma_layout(args.dma_layout.into());
    vugpu_device::log!(
        Level::Info,
        "serving {:04x}:{:04x} with {} MiB VRAM, {} MSI-X vectors, {} DMA engines on {}",
        cfg.identity.vendor_id,
        cfg.identity.device_id,
        cfg.vram.size >> 20,
        cfg.msix_vectors,
        cfg.engines,
        args.socket.display()
    );
    let server = event_loop::run(server).map_err(|e| e.to_string())?;
    vugpu_device::log!(
        Level::Info,
        "stopped after {} clients",
        server.stats().clients
    );
    Ok(())
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
