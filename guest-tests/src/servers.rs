//! The `vugpu serve` processes, one per GPU, each on its own UNIX socket in the run directory.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileTypeExt;
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
    /// Log file problem.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: io::Error,
    },
}

/// One running server.
pub struct Server {
    /// GPU id (`gpu0`).
    pub id: String,
    /// Socket on the host.
    pub socket: PathBuf,
    /// Log file.
    pub log: PathBuf,
    child: Child,
    exit: Option<ExitStatus>,
}

/// All servers of a run; stopped on drop.
#[derive(Default)]
pub struct Servers {
    list: Vec<Server>,
}

/// The command line of server `k` (without the program).
pub fn server_args(socket: &Path, extra: &[String]) -> Vec<String> {
    let mut a = vec![
        "serve".to_string(),
        "--socket".to_string(),
        socket.to_string_lossy().into_owned(),
    ];
    a.extend(extra.iter().cloned());
    a
}

impl Servers {
    /// Starts `count` servers with sockets `run_dir/gpuK.sock` and logs `run_dir/gpuK.log`,
    /// waiting (bounded) for each socket.
    pub fn start(
        binary: &Path,
        count: usize,
        run_dir: &Path,
        extra: &[String],
    ) -> Result<Servers, ServerError> {
        let mut servers = Servers::default();
        if count == 0 {
            return Ok(servers);
        }
        if !binary.is_file() {
            return Err(ServerError::NoBinary(binary.to_path_buf()));
        }
        for k in 0..count {
            let id = gpu_id(k);
            let socket = run_dir.join(format!("{id}.sock"));
            let log = run_dir.join(format!("{id}.log"));
            let _ = fs::remove_file(&socket);
            let out = File::create(&log).map_err(|source| ServerError::Io {
                what: format!("create {}", log.display()),
                source,
            })?;
            let err = out.try_clone().map_err(|source| ServerError::Io {
                what: format!("dup {}", log.display()),
                source,
            })?;
            let mut c = Command::new(binary);
            c.args(server_args(&socket, extra))
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
            servers.list.push(Server {
                id,
                socket,
                log,
                child,
                exit: None,
            });
        }
        let start = Instant::now();
        for s in &mut servers.list {
            loop {
                if fs::metadata(&s.socket).is_ok_and(|m| m.file_type().is_socket()) {
                    break;
                }
                if let Ok(Some(status)) = s.child.try_wait() {
                    s.exit = Some(status);
                    return Err(ServerError::EarlyExit {
                        id: s.id.clone(),
                        status,
                        socket: s.socket.clone(),
                        tail: indent(&tail_lines(&s.log, 40)),
                    });
                }
                if start.elapsed() > SOCKET_WAIT || process::interrupted().is_some() {
                    return Err(ServerError::NoSocket {
                        id: s.id.clone(),
                        socket: s.socket.clone(),
                        waited: SOCKET_WAIT,
                        tail: indent(&tail_lines(&s.log, 40)),
                    });
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(servers)
    }

    /// Servers that exited since the last call, with their status.
    pub fn newly_exited(&mut self) -> Vec<(String, ExitStatus, PathBuf)> {
        let mut v = Vec::new();
        for s in &mut self.list {
            if s.exit.is_none() {
                if let Ok(Some(status)) = s.child.try_wait() {
                    s.exit = Some(status);
                    v.push((s.id.clone(), status, s.log.clone()));
                }
            }
        }
        v
    }

    /// The servers.
    pub fn iter(&self) -> impl Iterator<Item = &Server> {
        self.list.iter()
    }

    /// Stops every server (SIGTERM, then SIGKILL after 3 s) and removes the sockets.
    pub fn stop(&mut self) {
        for s in &mut self.list {
            if s.exit.is_none() {
                s.exit = process::terminate(&mut s.child, Duration::from_secs(3));
            }
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
    fn args_put_socket_first_then_extras() {
        let a = server_args(
            Path::new("/r/run/vugpu-1/gpu0.sock"),
            &["--inject".to_string(), "msix-dead=3".to_string()],
        );
        assert_eq!(
            a,
            [
                "serve",
                "--socket",
                "/r/run/vugpu-1/gpu0.sock",
                "--inject",
                "msix-dead=3"
            ]
        );
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
