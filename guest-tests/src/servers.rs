//! The `vugpu serve` process: one process serves every GPU of a run (so that they are peers in
//! one fabric, hw-spec §6.9), each GPU on its own UNIX socket in the run directory; the process
//! logs to `vugpu.log` (each line names its GPU).
//!
//! With `--attach SOCKET` the runner starts no server: it checks that each socket belongs to a
//! running, idle `vugpu serve` ([`Servers::attach`]) and leaves that server alone afterwards
//! (never stops it, never removes its sockets).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::process::{self, indent, tail_lines};
use crate::topology::gpu_id;

/// Longest wait for one server's socket to appear.
pub const SOCKET_WAIT: Duration = Duration::from_secs(15);

/// Errors starting servers.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The binary does not exist.
    #[error("vugpu server binary {0} not found; build it (cargo build -p vugpu-device) or pass --vugpu PATH")]
    NoBinary(PathBuf),
    /// Starting failed.
    #[error("cannot start {id} ({binary}): {source}")]
    Spawn {
        /// GPU id.
        id: String,
        /// Binary.
        binary: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The server exited before listening.
    #[error(
        "{id} server exited ({status}) before creating {socket}; last lines of its log:\n{tail}"
    )]
    EarlyExit {
        /// GPU id.
        id: String,
        /// Exit status.
        status: ExitStatus,
        /// Socket path.
        socket: PathBuf,
        /// Log tail.
        tail: String,
    },
    /// The socket never appeared.
    #[error("{id} server did not create {socket} within {}s; last lines of its log:\n{tail}", waited.as_secs())]
    NoSocket {
        /// GPU id.
        id: String,
        /// Socket path.
        socket: PathBuf,
        /// Time waited.
        waited: Duration,
        /// Log tail.
        tail: String,
    },
    /// `--attach`: nothing at that path.
    #[error("--attach {0}: no such socket (start the server first: vugpu serve --socket {0})")]
    AttachMissing(PathBuf),
    /// `--attach`: the path is not a UNIX socket.
    #[error("--attach {0}: not a UNIX socket")]
    AttachNotSocket(PathBuf),
    /// `--attach`: the socket file exists but nothing listens on it.
    #[error("--attach {path}: nothing listens on this socket ({source}); the server that created it is gone")]
    AttachDead {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// `--attach`: no vugpu control socket answers next to it.
    #[error("--attach {path}: not a vugpu server: its control socket {ctl} {why}")]
    AttachNotVugpu {
        /// Socket path.
        path: PathBuf,
        /// The control socket path.
        ctl: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// `--attach`: the server closed the probe connection at once: it serves another client.
    #[error("--attach {0}: the server is busy: it already serves a client (a vugpu socket accepts one client at a time; stop the other QEMU first)")]
    AttachBusy(PathBuf),
    /// `--attach`: one socket given twice.
    #[error("--attach {0} given twice: each GPU needs its own socket")]
    AttachTwice(PathBuf),
    /// Log file problem.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: io::Error,
    },
}

/// One GPU of the server.
pub struct Server {
    /// GPU id (`gpu0`).
    pub id: String,
    /// Socket on the host.
    pub socket: PathBuf,
}

/// The server process of a run and its GPUs; stopped on drop (unless attached).
#[derive(Default)]
pub struct Servers {
    list: Vec<Server>,
    child: Option<Child>,
    /// Log file of the process (`vugpu.log`).
    pub log: PathBuf,
    exit: Option<ExitStatus>,
    /// `--attach`: the pids of the user's server processes (from SO_PEERCRED), watched but
    /// never stopped.
    attached: Vec<u32>,
    attached_gone: bool,
}

/// How long the busy probe waits for the server to close the connection.
pub const BUSY_PROBE: Duration = Duration::from_millis(1500);
/// Bound of one control-socket exchange.
const CTL_TIMEOUT: Duration = Duration::from_secs(3);

/// The control socket of a vugpu socket (`PATH.ctl`, device/src/ctl.rs).
pub fn ctl_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".ctl");
    PathBuf::from(p)
}

/// One control-socket request (`stats`): the reply line.
pub fn ctl_request(ctl: &Path, request: &str) -> io::Result<String> {
    let mut s = UnixStream::connect(ctl)?;
    s.set_read_timeout(Some(CTL_TIMEOUT))?;
    s.set_write_timeout(Some(CTL_TIMEOUT))?;
    s.write_all(format!("{request}\n").as_bytes())?;
    let mut reply = String::new();
    s.take(1 << 20).read_to_string(&mut reply)?;
    Ok(reply.trim().to_string())
}

/// The pid of the process at the other end of a UNIX stream (SO_PEERCRED through `nix`: rustix's
/// `socket_peercred` keeps the pid in a non-zero type, and the kernel reports 0 for a peer in
/// another pid namespace).
fn peer_pid(stream: &UnixStream) -> Option<u32> {
    let cred =
        nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials).ok()?;
    (cred.pid() > 0).then(|| cred.pid().unsigned_abs())
}

/// The cheap `--attach` checks, done before anything is built: each path is a UNIX socket, and
/// none is given twice.
pub fn check_attach_paths(sockets: &[PathBuf]) -> Result<(), ServerError> {
    for (k, socket) in sockets.iter().enumerate() {
        if sockets[..k].contains(socket) {
            return Err(ServerError::AttachTwice(socket.clone()));
        }
        let meta = fs::metadata(socket).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ServerError::AttachMissing(socket.to_path_buf()),
            _ => ServerError::Io {
                what: format!("--attach {}", socket.display()),
                source: e,
            },
        })?;
        if !meta.file_type().is_socket() {
            return Err(ServerError::AttachNotSocket(socket.to_path_buf()));
        }
    }
    Ok(())
}

/// Checks that `socket` belongs to a running vugpu server that serves no client right now;
/// returns the server's pid.
///
/// 1. It must be a UNIX socket that accepts connections. 2. `SOCKET.ctl` must answer `stats` with vugpu's JSON (a
///    `device` object): a plain vfio-user server has no control socket. 3. A connection to
///    `socket` must stay open for [`BUSY_PROBE`]: a vugpu server that already has a client
///    accepts and closes a second one at once. The probe connection sends nothing; when it
///    closes, the server ends that empty session as it does for any client that hangs up.
pub fn check_attach(socket: &Path) -> Result<u32, ServerError> {
    check_attach_paths(&[socket.to_path_buf()])?;
    let mut probe = UnixStream::connect(socket).map_err(|source| ServerError::AttachDead {
        path: socket.to_path_buf(),
        source,
    })?;
    let ctl = ctl_path(socket);
    let not_vugpu = |why: String| ServerError::AttachNotVugpu {
        path: socket.to_path_buf(),
        ctl: ctl.clone(),
        why,
    };
    let reply =
        ctl_request(&ctl, "stats").map_err(|e| not_vugpu(format!("does not answer ({e})")))?;
    let json: serde_json::Value = serde_json::from_str(&reply)
        .map_err(|_| not_vugpu(format!("answers {:?}, not JSON", truncate(&reply, 80))))?;
    if !json.get("device").is_some_and(serde_json::Value::is_object) {
        return Err(not_vugpu(format!(
            "answers without a \"device\" object: {}",
            truncate(&reply, 80)
        )));
    }
    let pid = peer_pid(&probe).unwrap_or(0);
    probe
        .set_read_timeout(Some(BUSY_PROBE))
        .map_err(|source| ServerError::Io {
            what: format!("--attach {}: probe", socket.display()),
            source,
        })?;
    let mut b = [0u8; 1];
    match probe.read(&mut b) {
        // Closed at once (or reset): the server refused us, it has a client.
        Ok(0) => Err(ServerError::AttachBusy(socket.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
            Err(ServerError::AttachBusy(socket.to_path_buf()))
        }
        // Still open: a session waits for our VERSION. A server never speaks first.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(pid)
        }
        Ok(_) => Err(not_vugpu(
            "is vugpu's, but the vfio-user socket spoke first (not a vfio-user server)".into(),
        )),
        Err(e) => Err(ServerError::Io {
            what: format!("--attach {}: probe", socket.display()),
            source: e,
        }),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// Log file name of the server process in the run directory.
pub const LOG_NAME: &str = "vugpu.log";

/// The server's command line (without the program): one `--socket` per GPU, then the extras.
pub fn server_args(sockets: &[PathBuf], extra: &[String]) -> Vec<String> {
    let mut a = vec!["serve".to_string()];
    for s in sockets {
        a.push("--socket".to_string());
        a.push(s.to_string_lossy().into_owned());
    }
    a.extend(extra.iter().cloned());
    a
}

/// What names the server process in messages.
fn process_id(n: usize) -> String {
    if n == 1 {
        "gpu0".to_string()
    } else {
        format!("vugpu serve (gpu0-gpu{})", n - 1)
    }
}

impl Servers {
    /// Starts one server process for `count` GPUs with sockets `run_dir/gpuK.sock` and the log
    /// `run_dir/vugpu.log`, waiting (bounded) for every socket.
    pub fn start(
        binary: &Path,
        count: usize,
        run_dir: &Path,
        extra: &[String],
    ) -> Result<Servers, ServerError> {
        let mut servers = Servers::default();
        servers.log = run_dir.join(LOG_NAME);
        if count == 0 {
            return Ok(servers);
        }
        if !binary.is_file() {
            return Err(ServerError::NoBinary(binary.to_path_buf()));
        }
        for k in 0..count {
            let id = gpu_id(k);
            let socket = run_dir.join(format!("{id}.sock"));
            let _ = fs::remove_file(&socket);
            servers.list.push(Server { id, socket });
        }
        let id = process_id(count);
        let log = servers.log.clone();
        let out = File::create(&log).map_err(|source| ServerError::Io {
            what: format!("create {}", log.display()),
            source,
        })?;
        let err = out.try_clone().map_err(|source| ServerError::Io {
            what: format!("dup {}", log.display()),
            source,
        })?;
        let sockets: Vec<PathBuf> = servers.list.iter().map(|s| s.socket.clone()).collect();
        let mut c = Command::new(binary);
        c.args(server_args(&sockets, extra))
            .current_dir(run_dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        process::die_with_parent(&mut c);
        let child = c.spawn().map_err(|source| ServerError::Spawn {
            id: id.clone(),
            binary: binary.to_path_buf(),
            source,
        })?;
        servers.child = Some(child);
        let start = Instant::now();
        for socket in sockets {
            loop {
                if fs::metadata(&socket).is_ok_and(|m| m.file_type().is_socket()) {
                    break;
                }
                if let Some(Ok(Some(status))) = servers.child.as_mut().map(Child::try_wait) {
                    servers.exit = Some(status);
                    return Err(ServerError::EarlyExit {
                        id,
                        status,
                        socket,
                        tail: indent(&tail_lines(&log, 40)),
                    });
                }
                if start.elapsed() > SOCKET_WAIT || process::interrupted().is_some() {
                    return Err(ServerError::NoSocket {
                        id,
                        socket,
                        waited: SOCKET_WAIT,
                        tail: indent(&tail_lines(&log, 40)),
                    });
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(servers)
    }

    /// `--attach`: the GPUs are served by the user's running server(s) on `sockets` (each
    /// checked with [`check_attach`]); nothing is started, and nothing is stopped or removed
    /// later.
    pub fn attach(sockets: &[PathBuf]) -> Result<Servers, ServerError> {
        let mut servers = Servers::default();
        check_attach_paths(sockets)?;
        // The busy probes wait in parallel (each waits BUSY_PROBE when the server is idle).
        let pids: Vec<Result<u32, ServerError>> = thread::scope(|sc| {
            let handles: Vec<_> = sockets
                .iter()
                .map(|s| sc.spawn(move || check_attach(s)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(ServerError::AttachNotSocket(PathBuf::new())))
                })
                .collect()
        });
        for (k, (socket, pid)) in sockets.iter().zip(pids).enumerate() {
            let pid = pid?;
            say!(
                "{}: attaching to {} (vugpu serve, pid {pid})",
                gpu_id(k),
                socket.display()
            );
            if !servers.attached.contains(&pid) {
                servers.attached.push(pid);
            }
            servers.list.push(Server {
                id: gpu_id(k),
                socket: socket.clone(),
            });
        }
        Ok(servers)
    }

    /// The server process's pid (the attached one's, or the one started), if any.
    pub fn pid(&self) -> Option<u32> {
        self.attached
            .first()
            .copied()
            .or_else(|| self.child.as_ref().map(Child::id))
    }

    /// Whether the GPUs are served by a server the user started (`--attach`).
    pub fn is_attached(&self) -> bool {
        !self.attached.is_empty()
    }

    /// The server process, if it exited since the last call: (name, status, log).
    pub fn newly_exited(&mut self) -> Vec<(String, ExitStatus, PathBuf)> {
        if self.is_attached() {
            if !self.attached_gone {
                if let Some(pid) = self
                    .attached
                    .iter()
                    .find(|p| !Path::new(&format!("/proc/{p}")).exists())
                {
                    self.attached_gone = true;
                    say!("warning: the attached vugpu serve (pid {pid}) is gone");
                }
            }
            return Vec::new();
        }
        if self.exit.is_none() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.exit = Some(status);
                return vec![(process_id(self.list.len()), status, self.log.clone())];
            }
        }
        Vec::new()
    }

    /// The GPUs.
    pub fn iter(&self) -> impl Iterator<Item = &Server> {
        self.list.iter()
    }

    /// Saves each GPU's statistics (`vugpu stats`, JSON) as `gpuK.stats.json` next to the
    /// sockets, while the server still runs; returns the files written.
    pub fn save_stats(&self, binary: &Path, run_dir: &Path) -> Vec<PathBuf> {
        if self.exit.is_some() || (self.child.is_none() && !self.is_attached()) {
            return Vec::new();
        }
        let mut saved = Vec::new();
        for s in &self.list {
            let json = if self.is_attached() {
                // The user's server: its control socket directly (no binary needed).
                ctl_request(&ctl_path(&s.socket), "stats").ok()
            } else {
                let mut c = Command::new(binary);
                c.args(["stats", "--socket"]).arg(&s.socket);
                process::output(c, "vugpu stats", Duration::from_secs(5)).ok()
            };
            if let Some(json) = json {
                let path = run_dir.join(format!("{}.stats.json", s.id));
                if fs::write(&path, json).is_ok() {
                    saved.push(path);
                }
            }
        }
        saved
    }

    /// Stops the server (SIGTERM, then SIGKILL after 3 s) and removes the sockets; an attached
    /// server is left alone.
    pub fn stop(&mut self) {
        if self.is_attached() {
            return;
        }
        if self.exit.is_none() {
            if let Some(child) = self.child.as_mut() {
                self.exit = process::terminate(child, Duration::from_secs(3));
            }
        }
        for s in &self.list {
            let _ = fs::remove_file(&s.socket);
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_put_sockets_first_then_extras() {
        let a = server_args(
            &[
                PathBuf::from("/r/run/vugpu-1/gpu0.sock"),
                PathBuf::from("/r/run/vugpu-1/gpu1.sock"),
            ],
            &["--inject".to_string(), "msix-dead=3".to_string()],
        );
        assert_eq!(
            a,
            [
                "serve",
                "--socket",
                "/r/run/vugpu-1/gpu0.sock",
                "--socket",
                "/r/run/vugpu-1/gpu1.sock",
                "--inject",
                "msix-dead=3"
            ]
        );
        assert_eq!(process_id(1), "gpu0");
        assert_eq!(process_id(3), "vugpu serve (gpu0-gpu2)");
    }

    #[test]
    fn missing_binary_is_a_clear_error() {
        let e = Servers::start(Path::new("/nonexistent/vugpu"), 1, Path::new("/tmp"), &[])
            .err()
            .unwrap();
        assert!(e.to_string().contains("--vugpu"), "{e}");
    }

    #[test]
    fn zero_servers_need_no_binary() {
        assert!(Servers::start(Path::new("/nonexistent"), 0, Path::new("/tmp"), &[]).is_ok());
    }

    #[test]
    fn early_exit_reports_log() {
        let dir = std::env::temp_dir().join(format!("vugpu-srv-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("fake-vugpu");
        fs::write(&fake, "#!/bin/sh\necho \"bad option $4\" >&2\nexit 2\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let e = Servers::start(&fake, 1, &dir, &["--bogus".to_string()])
            .err()
            .unwrap();
        let msg = e.to_string();
        assert!(msg.contains("bad option --bogus"), "{msg}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A fake server in a thread: a vfio-user socket that accepts and then either holds every
    /// connection (`busy` false) or closes it at once (`busy` true), and optionally a control
    /// socket that answers every request with `ctl_reply`.
    fn fake_attach_target(dir: &Path, busy: bool, ctl_reply: Option<&'static str>) -> PathBuf {
        use std::os::unix::net::UnixListener;
        let sock = dir.join("gpu0.sock");
        let l = UnixListener::bind(&sock).unwrap();
        thread::spawn(move || {
            let mut held = Vec::new();
            for c in l.incoming().flatten() {
                if !busy {
                    held.push(c);
                }
            }
        });
        if let Some(reply) = ctl_reply {
            let cl = UnixListener::bind(ctl_path(&sock)).unwrap();
            thread::spawn(move || {
                for mut c in cl.incoming().flatten() {
                    let mut line = [0u8; 64];
                    let _ = c.read(&mut line);
                    let _ = c.write_all(reply.as_bytes());
                }
            });
        }
        sock
    }

    fn attach_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vugpu-att-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    const STATS: &str = r#"{"engines":[],"device":{"engines":2,"name":"gpu0"}}"#;

    #[test]
    fn attach_checks_missing_and_non_sockets() {
        let dir = attach_dir("missing");
        let e = Servers::attach(&[dir.join("nope.sock")]).err().unwrap();
        assert!(matches!(e, ServerError::AttachMissing(_)), "{e}");
        assert!(e.to_string().contains("vugpu serve --socket"), "{e}");
        fs::write(dir.join("file"), "x").unwrap();
        let e = Servers::attach(&[dir.join("file")]).err().unwrap();
        assert!(matches!(e, ServerError::AttachNotSocket(_)), "{e}");
        // A socket file nobody listens on (its server died): no control socket either.
        let stale = dir.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let e = Servers::attach(&[stale]).err().unwrap();
        assert!(matches!(e, ServerError::AttachDead { .. }), "{e}");
        assert!(
            e.to_string().contains("server that created it is gone"),
            "{e}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn attach_refuses_a_server_without_vugpus_control_socket() {
        let dir = attach_dir("plain");
        let sock = fake_attach_target(&dir, false, None);
        let e = Servers::attach(&[sock]).err().unwrap();
        assert!(e.to_string().contains("not a vugpu server"), "{e}");
        let dir2 = attach_dir("garbage");
        let sock = fake_attach_target(&dir2, false, Some("hello\n"));
        let e = Servers::attach(&[sock]).err().unwrap();
        assert!(e.to_string().contains("not JSON"), "{e}");
        let dir3 = attach_dir("nodevice");
        let sock = fake_attach_target(&dir3, false, Some("{\"error\":\"x\"}\n"));
        let e = Servers::attach(&[sock]).err().unwrap();
        assert!(e.to_string().contains("device"), "{e}");
        for d in [dir, dir2, dir3] {
            fs::remove_dir_all(&d).unwrap();
        }
    }

    #[test]
    fn attach_refuses_a_busy_server() {
        let dir = attach_dir("busy");
        let sock = fake_attach_target(&dir, true, Some(STATS));
        let e = Servers::attach(&[sock]).err().unwrap();
        assert!(matches!(e, ServerError::AttachBusy(_)), "{e}");
        assert!(e.to_string().contains("one client at a time"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn attach_to_an_idle_server_and_leave_it_alone() {
        let dir = attach_dir("idle");
        let sock = fake_attach_target(&dir, false, Some(STATS));
        let e = Servers::attach(&[sock.clone(), sock.clone()])
            .err()
            .unwrap();
        assert!(matches!(e, ServerError::AttachTwice(_)), "{e}");
        let mut s = Servers::attach(std::slice::from_ref(&sock)).unwrap();
        assert!(s.is_attached());
        assert_eq!(
            s.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
            ["gpu0"]
        );
        // Its pid is ours (the fake server is a thread of this process): alive.
        assert!(s.newly_exited().is_empty());
        assert!(!s.attached_gone);
        let saved = s.save_stats(Path::new("/nonexistent/vugpu"), &dir);
        assert_eq!(saved, [dir.join("gpu0.stats.json")]);
        assert_eq!(fs::read_to_string(&saved[0]).unwrap(), STATS);
        s.stop();
        drop(s);
        // Never removed: the server is the user's.
        assert!(sock.exists() && ctl_path(&sock).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn socket_is_waited_for_and_server_stopped() {
        let dir = std::env::temp_dir().join(format!("vugpu-srv2-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("fake-vugpu");
        // The fake server only sleeps; the test binds the socket on its behalf after a delay.
        fs::write(&fake, "#!/bin/sh\nexec sleep 30\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let sock = dir.join("gpu0.sock");
        let sock2 = sock.clone();
        let binder = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            std::os::unix::net::UnixListener::bind(&sock2).unwrap()
        });
        let t = Instant::now();
        let mut s = Servers::start(&fake, 1, &dir, &[]).unwrap();
        let _listener = binder.join().unwrap();
        assert!(t.elapsed() >= Duration::from_millis(150));
        assert!(s.newly_exited().is_empty());
        s.stop();
        assert!(!sock.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
