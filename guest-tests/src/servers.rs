//! The `vugpu serve` process: one process serves every GPU of a run (so that they are peers in
//! one fabric, hw-spec §6.9), each GPU on its own UNIX socket in the run directory; the process
//! logs to `vugpu.log` (each line names its GPU).

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

/// One GPU of the server.
pub struct Server {
    /// GPU id (`gpu0`).
    pub id: String,
    /// Socket on the host.
    pub socket: PathBuf,
}

/// The server process of a run and its GPUs; stopped on drop.
#[derive(Default)]
pub struct Servers {
    list: Vec<Server>,
    child: Option<Child>,
    /// Log file of the process (`vugpu.log`).
    pub log: PathBuf,
    exit: Option<ExitStatus>,
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

    /// The server process, if it exited since the last call: (name, status, log).
    pub fn newly_exited(&mut self) -> Vec<(String, ExitStatus, PathBuf)> {
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
        if self.exit.is_some() || self.child.is_none() {
            return Vec::new();
        }
        let mut saved = Vec::new();
        for s in &self.list {
            let mut c = Command::new(binary);
            c.args(["stats", "--socket"]).arg(&s.socket);
            if let Ok(json) = process::output(c, "vugpu stats", Duration::from_secs(5)) {
                let path = run_dir.join(format!("{}.stats.json", s.id));
                if fs::write(&path, json).is_ok() {
                    saved.push(path);
                }
            }
        }
        saved
    }

    /// Stops the server (SIGTERM, then SIGKILL after 3 s) and removes the sockets.
    pub fn stop(&mut self) {
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
