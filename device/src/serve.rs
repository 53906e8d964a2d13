//! `vugpu serve`: one or several GPUs in this process, peers of each other.
//!
//! Every GPU joins one [`Fabric`] (so DMA to a peer's VRAM BAR reaches its VRAM directly,
//! hw-spec §6.9) and gets its own vfio-user socket, control socket, event loop thread and engine
//! threads; a stall or a misbehaving client of one GPU never holds up another's. The calling
//! thread only waits: for SIGINT/SIGTERM (the signalfd) or for an event loop that ended on its own
//! (an error), then stops every event loop and joins them.

use std::fs::Permissions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::thread::JoinHandle;

use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::process::{Resource, Rlimit};
use vugpu_backend::Fabric;
use vugpu_protocol::{DmaLayout, ServerConfig};

use crate::config::check_socket_path;
use crate::ctl::{ctl_path, CtlLimits, CtlServer};
use crate::event_loop::{self, Server, SocketFile};
use crate::gpu::{Gpu, GpuConfig};

/// What to serve: one GPU per socket.
#[derive(Debug, Clone)]
pub struct ServePlan {
    /// (configuration, socket) per GPU, gpu0 first.
    pub gpus: Vec<(GpuConfig, PathBuf)>,
    /// DMA_READ/DMA_WRITE payload layout.
    pub dma_layout: DmaLayout,
    /// vfio-user limits of every session.
    pub server_config: ServerConfig,
    /// Limits of the control sockets' clients.
    pub ctl: CtlLimits,
    /// Permission bits of the vfio-user and control sockets.
    pub socket_mode: u32,
}

/// One GPU's event loop, running.
struct Running {
    name: String,
    stop: OwnedFd,
    thread: JoinHandle<Result<Server, event_loop::ServeError>>,
    _ctl: CtlServer,
    _socket: SocketFile,
}

/// A non-blocking eventfd.
fn eventfd() -> Result<OwnedFd, String> {
    rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)
        .map_err(|e| e.to_string())
}

/// Adds 1 to an eventfd's counter.
fn signal(e: &OwnedFd) {
    let _ = rustix::io::write(e, &1u64.to_ne_bytes());
}

/// Fds one GPU may need besides its client's DMA fds and eventfds: sockets, VRAM and doorbell
/// memfds, engine eventfds, the trace, and slack.
const FDS_PER_GPU: u64 = 64;

/// Raises the soft RLIMIT_NOFILE so that every GPU's client can hold all the fds the limits
/// allow (`--max-dma-fds` DMA windows, one eventfd per MSI-X vector): one client's fds must
/// never make another GPU's accept fail with EMFILE (control-socket clients counted too). Warns
/// when the hard limit is too low.
fn raise_fd_limit(plan: &ServePlan) {
    let need: u64 = plan
        .gpus
        .iter()
        .map(|(cfg, _)| {
            cfg.dma_limits.max_fd_windows as u64
                + u64::from(cfg.msix_vectors)
                + plan.ctl.max_clients as u64
                + 2
                + FDS_PER_GPU
        })
        .sum::<u64>()
        + FDS_PER_GPU;
    let lim = rustix::process::getrlimit(Resource::Nofile);
    // `None` is RLIM_INFINITY.
    let cur = lim.current.unwrap_or(u64::MAX);
    if cur >= need {
        return;
    }
    let want = lim.maximum.map_or(need, |max| need.min(max));
    let new = Rlimit {
        current: Some(want),
        maximum: lim.maximum,
    };
    let ok = rustix::process::setrlimit(Resource::Nofile, new).is_ok();
    if !ok || want < need {
        tracing::warn!(
            "open-file limit {} is below the {need} fds the resource limits allow \
             (--max-dma-fds, --msix-vectors, GPUs): a client may exhaust it; raise ulimit -n \
             or lower --max-dma-fds",
            if ok { want } else { cur }
        );
    }
}

/// Serves `plan` until `signals` (a signalfd from [`event_loop::shutdown_signalfd`], created
/// before any thread) reports SIGINT or SIGTERM, or an event loop fails.
pub fn serve(plan: &ServePlan, signals: OwnedFd) -> Result<(), String> {
    for (_, socket) in &plan.gpus {
        check_socket_path(socket)?;
    }
    raise_fd_limit(plan);
    let fabric = Fabric::new(plan.gpus.len());
    // Every GPU joins the fabric before any socket exists (a client sees the whole fabric), and
    // all are built before any event loop starts: a GPU that cannot start stops the whole
    // server before any client is served.
    let gpus = plan
        .gpus
        .iter()
        .map(|(cfg, _)| Gpu::in_fabric(cfg, &fabric).map_err(|e| format!("{}: {e}", cfg.name)))
        .collect::<Result<Vec<_>, _>>()?;
    // Every fd the server needs exists before a control socket accepts its first client: a
    // local process flooding it at start cannot make the start fail with EMFILE.
    let exited = eventfd()?;
    let mut built = Vec::new();
    for ((cfg, socket), gpu) in plan.gpus.iter().zip(gpus) {
        let ctl_socket = ctl_path(socket);
        let ctl = CtlServer::bind(&ctl_socket, gpu.engine_monitor(), plan.ctl)
            .map_err(|e| e.to_string())?;
        // It accepts no client before `ctl.serve()` below, after this.
        std::fs::set_permissions(&ctl_socket, Permissions::from_mode(plan.socket_mode))
            .map_err(|e| format!("chmod {}: {e}", ctl_socket.display()))?;
        let (listener, guard) =
            SocketFile::bind_mode(socket, Some(plan.socket_mode)).map_err(|e| e.to_string())?;
        let stop = eventfd()?;
        let mut server = Server::new(
            listener,
            gpu,
            plan.server_config.clone(),
            Some(stop.try_clone().map_err(|e| e.to_string())?),
        )
        .map_err(|e| e.to_string())?;
        server.set_dma_layout(plan.dma_layout);
        let server = event_loop::prepare(server).map_err(|e| e.to_string())?;
        let done = exited.try_clone().map_err(|e| e.to_string())?;
        built.push((cfg, socket, server, stop, ctl, guard, done));
    }
    for (_, _, _, _, ctl, _, _) in &mut built {
        ctl.serve().map_err(|e| e.to_string())?;
    }
    let mut running = Vec::new();
    for (cfg, socket, server, stop, ctl, guard, done) in built {
        let _gpu = crate::log::gpu_span(&cfg.name).entered();
        tracing::info!(
            "serving {:04x}:{:04x} with {} MiB VRAM, {} MSI-X vectors, {} DMA engines on {}",
            cfg.identity.vendor_id,
            cfg.identity.device_id,
            cfg.vram.size >> 20,
            cfg.msix_vectors,
            cfg.engines,
            socket.display()
        );
        let thread = std::thread::Builder::new()
            .name(format!("vugpu-{}", cfg.name))
            .spawn(move || {
                let r = event_loop::run_prepared(server);
                signal(&done);
                r
            })
            .map_err(|e| e.to_string())?;
        running.push(Running {
            name: cfg.name.clone(),
            stop,
            thread,
            _ctl: ctl,
            _socket: guard,
        });
    }
    if running.len() > 1 {
        let names: Vec<&str> = running.iter().map(|r| r.name.as_str()).collect();
        tracing::info!("{} GPUs in one fabric: {}", running.len(), names.join(", "));
    }
    wait_readable(&signals, &exited);
    for r in &running {
        signal(&r.stop);
    }
    let mut failed = Vec::new();
    for r in running {
        let _gpu = crate::log::gpu_span(&r.name).entered();
        match r.thread.join() {
            Ok(Ok(server)) => tracing::info!("stopped after {} clients", server.stats().clients),
            Ok(Err(e)) => failed.push(format!("{}: {e}", r.name)),
            Err(_) => failed.push(format!("{}: event loop panicked", r.name)),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

/// Blocks until one of the fds is readable.
fn wait_readable(a: &OwnedFd, b: &OwnedFd) {
    loop {
        let mut fds = [PollFd::new(a, PollFlags::IN), PollFd::new(b, PollFlags::IN)];
        match rustix::event::poll(&mut fds, None) {
            Err(rustix::io::Errno::INTR) | Ok(0) => {}
            _ => return,
        }
    }
}
