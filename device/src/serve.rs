//! `vugpu serve`: one or several GPUs in this process, peers of each other.
//!
//! Every GPU joins one [`Fabric`] (so DMA to a peer's VRAM BAR reaches its VRAM directly,
//! hw-spec §6.9) and gets its own vfio-user socket, control socket, event loop thread and engine
//! threads; a stall or a misbehaving client of one GPU never holds up another's. The calling
//! thread only waits: for SIGINT/SIGTERM (the signalfd) or for an event loop that ended on its own
//! (an error), then stops every event loop and joins them.

use std::fs::Permissions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;
use vugpu_backend::Fabric;
use vugpu_protocol::{DmaLayout, ServerConfig};

use crate::config::check_socket_path;
use crate::ctl::{ctl_path, CtlLimits, CtlServer};
use crate::event_loop::{self, Server, SocketFile};
use crate::gpu::{Gpu, GpuConfig};
use crate::log::Level;

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
    stop: EventFd,
    thread: JoinHandle<Result<Server, event_loop::ServeError>>,
    _ctl: CtlServer,
    _socket: SocketFile,
}

fn dup(e: &EventFd) -> io::Result<OwnedFd> {
    // SAFETY: into_raw_fd hands over a fresh duplicate that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(e.try_clone()?.into_raw_fd()) })
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
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the call to write.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur >= need {
        return;
    }
    let want = need.min(lim.rlim_max);
    let new = libc::rlimit {
        rlim_cur: want,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: `new` is a valid rlimit for the call to read.
    let ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0;
    if !ok || want < need {
        crate::log!(
            Level::Warn,
            "open-file limit {} is below the {need} fds the resource limits allow \
             (--max-dma-fds, --msix-vectors, GPUs): a client may exhaust it; raise ulimit -n \
             or lower --max-dma-fds",
            if ok { want } else { lim.rlim_cur }
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
    let exited = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|e| e.to_string())?;
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
        let stop =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|e| e.to_string())?;
        let mut server = Server::new(
            listener,
            gpu,
            plan.server_config.clone(),
            Some(dup(&stop).map_err(|e| e.to_string())?),
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
        crate::log::set_thread_gpu(&cfg.name);
        crate::log!(
            Level::Info,
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
                let _ = done.write(1);
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
    crate::log::set_thread_gpu("");
    if running.len() > 1 {
        let names: Vec<&str> = running.iter().map(|r| r.name.as_str()).collect();
        crate::log!(
            Level::Info,
            "{} GPUs in one fabric: {}",
            running.len(),
            names.join(", ")
        );
    }
    wait_readable(&signals, &exited);
    for r in &running {
        let _ = r.stop.write(1);
    }
    let mut failed = Vec::new();
    for r in running {
        crate::log::set_thread_gpu(&r.name);
        match r.thread.join() {
            Ok(Ok(server)) => crate::log!(
                Level::Info,
                "stopped after {} clients",
                server.stats().clients
            ),
            Ok(Err(e)) => failed.push(format!("{}: {e}", r.name)),
            Err(_) => failed.push(format!("{}: event loop panicked", r.name)),
        }
    }
    crate::log::set_thread_gpu("");
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

/// Blocks until one of the fds is readable.
fn wait_readable(a: &OwnedFd, b: &EventFd) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: a.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: b.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds for the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc > 0 || (rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted) {
            return;
        }
    }
}
